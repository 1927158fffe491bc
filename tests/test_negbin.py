"""Negative binomial (NB2) two-level models by Laplace, against glmmTMB's nbinom2
(tests/reference_scripts/negbin_glmmtmb.R, tests/data/negbin/glmmtmb_reference.json): deviance to
1e-6, estimates (γ, τ, θ) to 1e-4, SEs to 1e-3; the θ gradient against differences of the deviance;
the certificate covering θ; the CLI end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hlmcli.engine.negbin import NegBinData, NegBinFamily, fit

DATA = Path(__file__).parent / "data" / "negbin"
REF = json.loads((DATA / "glmmtmb_reference.json").read_text())


def build(name, uid, y, l2cols=(), l1cols=(), exposure=None, centre=()):
    """The engine's arrays for a random-intercept model: level-2 columns predict β0, level-1 columns
    have fixed slopes (grand-mean centred where named)."""
    l1 = pd.read_csv(DATA / f"{name}_l1.csv")
    l2 = pd.read_csv(DATA / f"{name}_l2.csv").set_index(uid)
    ids = l1[uid].to_numpy()
    offs = np.r_[0, np.flatnonzero(np.diff(ids)) + 1, len(ids)]
    cols = [np.ones(len(l1))] + [l1[c].to_numpy(float) - (l1[c].mean() if c in centre else 0.0) for c in l1cols]
    L = np.column_stack(cols)
    J, p = len(offs) - 1, 1 + len(l2cols) + len(l1cols)
    B = np.zeros((J, L.shape[1], p))
    B[:, 0, 0] = 1.0
    for k, c in enumerate(l2cols):
        B[:, 0, 1 + k] = l2.loc[ids[offs[:-1]], c].to_numpy(float)
    for k in range(len(l1cols)):
        B[:, 1 + k, 1 + len(l2cols) + k] = 1.0
    yv = l1[y].to_numpy(float)
    off = np.log(l1[exposure].to_numpy(float)) if exposure else None
    return NegBinData(NegBinFamily(yv), L, B, offs, np.array([0]), yv, None, off)


CASES = {
    "salamanders": lambda: build("salamanders", "site", "count", ["mined"]),
    "owls": lambda: build("owls", "nest", "negotiation", l1cols=["food"], exposure="broodsize"),
    "grouseticks": lambda: build("grouseticks", "brood", "ticks", ["year96", "year97"], ["height"], centre=("height",)),
}


@pytest.fixture(scope="module")
def fits():
    return {}


def fitted(fits, name):
    if name not in fits:
        data = CASES[name]()
        fits[name] = (data, fit(data, "laplace"))
    return fits[name]


def check_against_glmmtmb(data, res, ref):
    assert res.deviance == pytest.approx(ref["deviance"], abs=1e-6)
    # glmmTMB stops with a gradient of ~1e-4 (its max_gradient): ours may only be lower
    assert res.deviance <= ref["deviance"] + 1e-9
    pf = data.pf
    np.testing.assert_allclose(res.gamma[:pf], ref["gamma"], rtol=1e-4, atol=1e-5)
    assert np.exp(res.gamma[pf]) == pytest.approx(ref["theta"], rel=1e-4)
    assert res.tau[0, 0] == pytest.approx(ref["tau"], rel=1e-4)
    se = np.sqrt(np.diag(res.cov))
    np.testing.assert_allclose(se[:pf], ref["gamma_se"], rtol=1e-3)
    assert se[pf] == pytest.approx(ref["log_theta_se"], rel=1e-3)
    # the certificate covers τ, γ and log θ (p counts it)
    assert res.converged and res.certificate.certified
    assert res.hessian.shape[0] == data.p + 1


@pytest.mark.parametrize("name", ["salamanders", "owls"])
def test_matches_glmmtmb(fits, name):
    data, res = fitted(fits, name)
    check_against_glmmtmb(data, res, REF[name])


@pytest.mark.slow
def test_matches_glmmtmb_grouseticks(fits):
    data, res = fitted(fits, "grouseticks")
    check_against_glmmtmb(data, res, REF["grouseticks"])


@pytest.mark.parametrize("nodes", [1, 5])
def test_theta_gradient_is_the_derivative_of_the_deviance(nodes):
    """∂d/∂log θ from the Conditional against central differences of the deviance (Laplace and AGQ)."""
    data = CASES["salamanders"]()
    cond = data.conditional(nodes)
    x = np.array([-1.4, 2.2, np.log(0.7)])
    lam = np.array([[0.5]])
    _, g, glam = cond.gradient(x, lam)
    h = 1e-5
    for k in range(data.p):
        e = np.zeros(data.p)
        e[k] = h
        fd = (cond.deviance(x + e, lam) - cond.deviance(x - e, lam)) / (2 * h)
        assert g[k] == pytest.approx(fd, rel=1e-6, abs=1e-6)
    fd = (cond.deviance(x, lam + h) - cond.deviance(x, lam - h)) / (2 * h)
    assert glam[0, 0] == pytest.approx(fd, rel=1e-6, abs=1e-6)


def test_kernel_is_the_nb2_log_likelihood():
    """ℓ per record (with the constant) equals the NB2 probability written out, log[Γ(y + θ)/(Γ(θ) y!)
    (θ/(θ + μ))^θ (μ/(θ + μ))^y], and ℓ_η, W, κ3 are its η derivatives."""
    y = np.array([0.0, 1.0, 3.0, 17.0, 250.0])
    fam = NegBinFamily(y)
    fam.set_log_theta(np.log(0.8))
    eta = np.array([-3.0, 0.2, 1.0, 2.5, 6.0])
    ll, dl, W, k3 = fam.evaluate(eta)
    from scipy.special import gammaln

    mu, th = np.exp(eta), 0.8
    direct = gammaln(y + th) - gammaln(th) - gammaln(y + 1) + th * np.log(th / (th + mu)) + y * np.log(mu / (th + mu))
    np.testing.assert_allclose(ll - gammaln(y + 1), direct, rtol=1e-12)
    h = 1e-6
    up, down = fam.evaluate(eta + h), fam.evaluate(eta - h)
    values = lambda ev: (ev[0], ev[1], -ev[2])  # ℓ, ℓ_η, ℓ_ηη
    for v, hi, lo in zip((dl, -W, -k3), values(up), values(down)):  # each the η derivative of the last
        np.testing.assert_allclose(v, (hi - lo) / (2 * h), rtol=1e-6)


def _exact(y: int, eta: float, theta: float):
    """ℓ + lgamma(y + 1) and θ ∂ℓ/∂θ of NB2 in 60-digit decimal arithmetic, from the definition (whole y):
    log Γ(y + θ)/Γ(θ) = Σ_{k<y} log(θ + k), ℓ = Σ_{k<y} log(θ + k) + θ log θ + yη − (y + θ) log(θ + μ),
    ∂ℓ/∂θ = Σ_{k<y} 1/(θ + k) + log θ + 1 − log(θ + μ) − (y + θ)/(θ + μ)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        t, e = Decimal(theta), Decimal(eta)
        mu = e.exp()
        ll = sum(((t + k).ln() for k in range(y)), Decimal(0)) + t * t.ln() + y * e - (y + t) * (t + mu).ln()
        dl = (sum((1 / (t + k) for k in range(y)), Decimal(0)) + t.ln() + 1 - (t + mu).ln() - (y + t) / (t + mu))
        return float(ll), float(t * dl)


@pytest.mark.parametrize("theta", [0.8, 37.2, 1e8])
def test_kernel_keeps_its_precision_at_large_theta(theta):
    """ℓ and ℓ_φ against 60-digit values: to 1e-13 relative (plus 1e-15 absolute) at every θ. At θ = 1e8
    the lgamma form (lgamma(y + θ) − lgamma(θ) + θ log θ − (y + θ) log(θ + μ)) loses ~1e-7 per record;
    y = 1500 takes the Stirling branch (counts of 1000 and more), the rest the term-by-term sums."""
    y = np.array([0, 1, 2, 5, 17, 1500])
    eta = np.array([-3.0, 0.2, 1.0, 2.5, 3.0, 7.2])
    fam = NegBinFamily(y.astype(float))
    fam.set_log_theta(np.log(theta))
    ll = fam.evaluate(eta)[0]
    lphi = fam.theta_parts(eta, second=False)
    want = [_exact(int(v), float(e), float(np.exp(np.log(theta)))) for v, e in zip(y, eta)]
    np.testing.assert_allclose(ll, [w[0] for w in want], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(lphi, [w[1] for w in want], rtol=1e-11, atol=1e-12)


def test_agq_deviance_is_the_integral():
    """The AGQ deviance (15 points) at a fixed (γ, θ, τ) equals −2 Σ_j log ∫ Π_i NB(y_ij | μ_ij(u)) φ(u; 0, τ) du
    computed by scipy's adaptive quadrature per unit, to 1e-6: an independent reference for AGQ."""
    from scipy.integrate import quad
    from scipy.special import gammaln

    data = CASES["salamanders"]()
    x = np.array([-1.45, 2.25, np.log(0.64)])
    lam = np.array([[0.52]])
    dev = data.conditional(15).deviance(x, lam)
    th, tau = 0.64, 0.52 ** 2
    y = data.y
    eta0 = data.eta(x, None)
    total = 0.0
    for j in range(data.J):
        sl = slice(data.offs[j], data.offs[j + 1])
        yj, ej = y[sl], eta0[sl]
        c = np.sum(gammaln(yj + th) - gammaln(th) - gammaln(yj + 1) + th * np.log(th))

        def log_f(u):
            return c + np.sum(yj * (ej + u) - (yj + th) * np.logaddexp(np.log(th), ej + u)) - u * u / (2 * tau)

        shift = max((log_f(u) for u in np.linspace(-4, 4, 161)))
        val, _ = quad(lambda u: np.exp(log_f(u) - shift), -np.inf, np.inf, epsabs=0, epsrel=1e-12, limit=200)
        total += shift + np.log(val) - 0.5 * np.log(2 * np.pi * tau)
    assert dev == pytest.approx(-2 * total, abs=1e-6)


# ---------------------------------------------------------------- the CLI, as a user types it

OWLS = [DATA / "owls_l1.csv", DATA / "owls_l2.csv", "--id", "nest", "-1", "negotiation = b0 + b1*food",
        "-2", "b0 = g00 + u0", "-2", "b1 = g10", "--family", "negbinomial", "--exposure", "broodsize"]


def test_cli_json_and_text(tmp_path):
    """One Laplace fit (Owls, with exposure): the JSON validates against the schema and matches glmmTMB,
    with θ; the text names the distribution, θ, and the certificate's parameters γ, θ and τ; `table` shows θ."""
    import jsonschema

    from conftest import hlmcli

    ref = REF["owls"]
    proc = hlmcli("fit", *OWLS, "--estimation", "laplace", "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "fit.json").read_text())
    root = Path(__file__).parents[1]
    jsonschema.validate(doc, json.loads((root / "hlmcli" / "schema" / "fit-2.json").read_text()))
    assert doc["family"] == "negbinomial" and doc["link"] == "log" and doc["converged"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-4)
    assert [f["se"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma_se"], rel=1e-3)
    assert doc["dispersion"]["estimate"] == pytest.approx(ref["theta"], rel=1e-4)
    assert doc["dispersion"]["log_se"] == pytest.approx(ref["log_theta_se"], rel=1e-3)
    assert doc["dispersion"]["se"] == pytest.approx(ref["theta"] * ref["log_theta_se"], rel=1e-3)
    assert doc["tau"][0][0] == pytest.approx(ref["tau"], rel=1e-4)
    assert doc["n_params"] == 4  # γ00, γ10, τ, θ: as glmmTMB's df
    assert doc["aic"] == pytest.approx(ref["deviance"] + 8, abs=1e-6)
    assert doc["certificate"]["certified"]
    out = proc.stdout
    assert "Distribution at Level-1: negative binomial (NB2, Var = mu + mu^2/theta), log link, exposure broodsize" in out
    assert "checked: no change of γ, θ and τ lowers the deviance" in out
    assert f"θ = {ref['theta']:12.6f}" in out
    assert "glmmTMB::glmmTMB(negotiation ~ 1 + food + offset(log(broodsize)) + (1 | nest), family = glmmTMB::nbinom2" in out
    table = hlmcli("table", tmp_path / "fit.json")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "Dispersion theta" in line)
    assert f"{ref['theta']:.3f}" in row


def test_cli_refusals(tmp_path):
    """PQL (the default estimation) and --overdispersion are refused in one line with the reason; a count
    that is not a whole number is refused naming file, column and row."""
    from conftest import hlmcli

    proc = hlmcli("fit", *OWLS)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "PQL's working model needs a variance function known up to a scale" in proc.stderr
    proc = hlmcli("fit", *OWLS, "--estimation", "laplace", "--overdispersion")
    assert proc.returncode == 2 and "estimates its own dispersion" in proc.stderr
    lines = (DATA / "owls_l1.csv").read_text().splitlines()
    cells = lines[4].split(",")
    cells[1] = "2.5"
    lines[4] = ",".join(cells)
    bad = tmp_path / "owls_l1.csv"
    bad.write_text("\n".join(lines) + "\n")
    proc = hlmcli("fit", bad, *OWLS[1:], "--estimation", "laplace")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "owls_l1.csv, column negotiation, row 4: the count 2.5 is negative or not a whole number" in proc.stderr


def test_api_shows_theta():
    import hlmcli as api

    res = api.fit(DATA / "owls_l1.csv", DATA / "owls_l2.csv", id="nest", level1_eq="negotiation = b0 + b1*food",
                  level2_eqs=["b0 = g00 + u0", "b1 = g10"], family="negbinomial", exposure="broodsize",
                  estimation="laplace")
    assert res.to_dict()["dispersion"]["estimate"] == pytest.approx(REF["owls"]["theta"], rel=1e-4)
