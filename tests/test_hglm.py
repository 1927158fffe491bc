"""Binary, binomial and count outcomes (issue 11) against R's numbers in tests/data/hglm/refs
(lme4 1.1.31 glmer, glmmTMB 1.1.5, nlme/glmmTMB-based PQL, the population-average GEE; each file
names the call that made it)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import DATA, hlmcli

H = DATA / "hglm"
MODELS = {
    "contra": ["-1", "USE = b0 + b1*URBAN + b2*AGE + b3*LC1 + b4*LC2 + b5*LC3", "-2", "b0 = g00 + u0",
               "--id", "DISTRICT", "--family", "bernoulli"],
    "cbpp": ["-1", "INCID = b0 + b1*P2 + b2*P3 + b3*P4", "-2", "b0 = g00 + u0", "--id", "HERD",
             "--family", "binomial", "--trials", "SIZE"],
    "mmmec": ["-1", "DEATHS = b0 + b1*UVB", "-2", "b0 = g00 + u0", "--id", "REGION",
              "--family", "poisson", "--exposure", "EXPECTED"],
}
METHOD_ARGS = {"pql_reml": [], "pql_ml": ["--ml"], "pql_ml_od": ["--ml", "--overdispersion"],
               "laplace": ["--estimation", "laplace"], "agq25": ["--estimation", "agq", "--quadrature-points", "25"]}


def ref(name, method):
    return json.loads((H / "refs" / f"{name}_ri_{method}.json").read_text())["reference"]


_cache: dict = {}


def fit(name, method, *extra):
    key = (name, method, extra)
    if key not in _cache:
        proc = hlmcli("fit", H / f"{name}_l1.csv", H / f"{name}_l2.csv", *MODELS[name], *METHOD_ARGS[method], *extra,
                      "--format", "json")
        assert proc.returncode == 0, proc.stderr
        _cache[key] = json.loads(proc.stdout)
    return _cache[key]


def close(a, b, tol):
    return abs(a - b) <= tol * max(abs(b), 1e-2)


def check_fixed(fixed, reference, tol, robust=False):
    for f, (label, r) in zip(fixed, reference["fixed"].items()):
        assert f["gamma"] == label
        assert close(f["estimate"], r["est"], tol), (label, f["estimate"], r["est"])
        assert close(f["se"], r["se"], tol), (label, f["se"], r["se"])
        if robust:
            assert close(f["robust_se"], r["robust_se"], tol), (label, f["robust_se"], r["robust_se"])


def ref_tau(r):
    return [v for v in r["variance_components"].values() if isinstance(v, dict)][0]["tau"][0][0]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["pql_reml", "pql_ml"])
def test_pql_and_population_average_match_r(name, method):
    out = fit(name, method)
    r = ref(name, method)
    check_fixed(out["fixed_effects"], r, 1e-4, robust=True)
    assert close(out["tau"][0][0], ref_tau(r), 1e-4)
    assert out["deviance"] is None and out["sigma2"] is None and "quasi-likelihood" in out["deviance_note"]
    assert out["estimation"] == "pql" and out["method"] == ("REML" if method == "pql_reml" else "ML")
    pa = ref(name, "pa_" + method[4:])
    check_fixed(out["population_average"]["fixed_effects"], pa, 1e-4, robust=True)
    ratio = "odds_ratio" if name != "mmmec" else "rate_ratio"
    f = out["fixed_effects"][1]
    assert math.isclose(f[ratio], math.exp(f["estimate"])) and f["ci_low"] < f[ratio] < f["ci_high"]


@pytest.mark.parametrize("name", ["cbpp", "mmmec"])
def test_overdispersed_pql_matches_r(name):
    out = fit(name, "pql_ml_od")
    r = ref(name, "pql_ml_od")
    check_fixed(out["fixed_effects"], r, 1e-4)
    assert close(out["tau"][0][0], ref_tau(r), 1e-4)
    assert close(out["sigma2"], r["variance_components"]["level1_scale_sigma2"], 1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_laplace_matches_glmer_and_glmmtmb(name):
    out = fit(name, "laplace")
    g, t = ref(name, "laplace"), ref(name, "tmb")
    assert out["certificate"]["certified"]
    assert math.isclose(out["loglik_constant"], g["loglik_constant"], rel_tol=1e-12, abs_tol=1e-9)
    # at least as low as glmer, whose bobyqa stops slightly short (cbpp: 3.1e-6 relative above us);
    # glmmTMB reaches the same optimum as we do
    assert out["deviance"] <= g["deviance"] + 1e-9
    assert (g["deviance"] - out["deviance"]) / g["deviance"] < 5e-6
    assert math.isclose(out["deviance"], t["deviance"], rel_tol=1e-6)
    check_fixed(out["fixed_effects"], t, 1e-4)
    assert close(out["tau"][0][0], ref_tau(t), 1e-4)
    # glmer's own estimates, to the precision its optimizer reached
    for f, r in zip(out["fixed_effects"], g["fixed"].values()):
        assert abs(f["estimate"] - r["est"]) < 0.1 * r["se"]


@pytest.mark.parametrize("name", MODELS)
def test_agq25_matches_glmer(name):
    out = fit(name, "agq25")
    r = ref(name, "agq25")
    assert out["certificate"]["certified"] and out["quadrature_points"] == 25
    assert math.isclose(out["deviance"], r["deviance"], rel_tol=1e-6)
    assert out["deviance"] <= r["deviance"] * (1 + 1e-9)
    check_fixed(out["fixed_effects"], r, 1e-4)
    assert close(out["tau"][0][0], ref_tau(r), 1e-4)


# ---------------------------------------------------------------- AGQ with q = 2, 3 against scipy.integrate

def _small_data(q, seed=3, J=3):
    from hlmcli.engine.family import BERNOULLI
    from hlmcli.engine.hglm import GLMData

    rng = np.random.default_rng(seed)
    n = 8
    x = rng.normal(size=(J * n, 2))
    L = np.column_stack([np.ones(J * n), x])
    unit = np.repeat(np.arange(J), n)
    b = rng.normal(scale=0.7, size=(J, 3))
    eta = -0.3 + 0.8 * x[:, 0] - 0.5 * x[:, 1] + np.einsum("nk,nk->n", L, b[unit])
    y = (rng.random(J * n) < 1 / (1 + np.exp(-eta))).astype(float)
    B = np.broadcast_to(np.eye(3), (J, 3, 3)).copy()
    offs = np.arange(0, J * n + 1, n)
    return GLMData(BERNOULLI, L, B, offs, np.arange(q), y)


def _direct_deviance(data, gamma, tau):
    """−2 log ∫ Π p(y|b) N(b; 0, τ) db per unit, by scipy.integrate.cubature (adaptive Genz–Malik
    cubature on [−8, 8]^q, vectorised over points; it agrees with nested scipy.integrate.nquad to
    3e-10 here at a tenth of the time)."""
    from scipy import integrate

    q = data.q
    Ti = np.linalg.inv(tau)
    norm = -0.5 * (q * math.log(2 * math.pi) + math.log(np.linalg.det(tau)))
    total = 0.0
    eta0 = data.eta(gamma, None)
    for j in range(data.J):
        s = slice(data.offs[j], data.offs[j + 1])
        Z, y, e0 = data.Z[s], data.y[s], eta0[s]

        def f(b):  # b: (points, q)
            eta = e0[None, :] + b @ Z.T
            return np.exp(np.sum(y * eta - np.logaddexp(0, eta), axis=1) - 0.5 * np.einsum("na,ab,nb->n", b, Ti, b) + norm)

        res = integrate.cubature(f, [-8.0] * q, [8.0] * q, rtol=1e-10 if q < 3 else 1e-9, atol=0.0)
        assert res.status == "converged"
        total += -2 * math.log(float(res.estimate))
    return total


@pytest.mark.parametrize("q", [2, 3])
def test_agq_product_rule_matches_direct_integration(q):
    from hlmcli.engine.hglm import Conditional

    data = _small_data(q, J=3 if q == 2 else 1)
    gamma = np.array([-0.2, 0.6, -0.4])
    tau = np.array([[0.5, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]])[:q, :q]
    lam = np.linalg.cholesky(tau)
    direct = _direct_deviance(data, gamma, tau)
    agq = Conditional(data, 12 if q == 2 else 8).deviance(gamma, lam)
    lap = Conditional(data, 1).deviance(gamma, lam)
    assert abs(agq - direct) < 1e-5 * abs(direct)
    assert abs(lap - direct) > abs(agq - direct)  # quadrature improves on Laplace


def test_laplace_gradient_is_exact():
    from hlmcli.engine.hglm import Conditional

    data = _small_data(2)
    cond = Conditional(data, 1)
    gamma = np.array([-0.2, 0.6, -0.4])
    lam = np.array([[0.7, 0.0], [0.2, 0.5]])
    _, gg, gl = cond.gradient(gamma, lam)
    h = 1e-6
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        num = (cond.deviance(gamma + e, lam) - cond.deviance(gamma - e, lam)) / (2 * h)
        assert abs(num - gg[i]) < 1e-5 * max(1, abs(num))
    for a, c in [(0, 0), (1, 0), (1, 1), (0, 1)]:
        E = np.zeros((2, 2))
        E[a, c] = h
        num = (cond.deviance(gamma, lam + E) - cond.deviance(gamma, lam - E)) / (2 * h)
        assert abs(num - gl[a, c]) < 1e-5 * max(1, abs(num))


# ---------------------------------------------------------------- the model as users write it

def test_hlm7_printed_block_pastes_verbatim():
    block = "Prob(USE=1|β) = φ\nlog[φ/(1-φ)] = η\nη = β0 + β1*URBAN + β2*AGE + β3*LC1 + β4*LC2 + β5*LC3"
    proc = hlmcli("fit", H / "contra_l1.csv", H / "contra_l2.csv", "-1", block, "-2", "b0 = g00 + u0", "--id", "DISTRICT",
                  "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["family"] == "bernoulli"
    assert out["fixed_effects"] == fit("contra", "pql_reml")["fixed_effects"]
    block = "E(DEATHS|β) = mλ; log[λ] = η; η = β0 + β1*UVB"
    proc = hlmcli("model", H / "mmmec_l1.csv", H / "mmmec_l2.csv", "-1", block, "-2", "b0 = g00 + u0", "--id", "REGION",
                  "--exposure", "EXPECTED", "--estimation", "laplace")
    assert proc.returncode == 0, proc.stderr
    assert "log[λij] = ηij" in proc.stdout
    assert "glmer(DEATHS ~ 1 + UVB + offset(log(EXPECTED)) + (1 | REGION), family = poisson, nAGQ = 1)" in proc.stdout


def test_hlm_command_file(tmp_path):
    path = tmp_path / "cbpp.hlm"
    path.write_text("#WHLM CMD FILE\nnonlin:binomial,SIZE\nfixsigma2:1.000000\nmacroit:100,y\nmicroit:14\n"
                    "stopmacro:0.00000001\nstopmicro:0.000001\nlevel1:INCID=INTRCPT1+P2+P3+P4+RANDOM\n"
                    "level2:INTRCPT1=INTRCPT2+random/\nlevel2:P2=INTRCPT2/\nlevel2:P3=INTRCPT2/\nlevel2:P4=INTRCPT2/\nmlf:y\n")
    proc = hlmcli("fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "--model", path, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["family"] == "binomial" and out["trials"] == "SIZE" and out["sigma2"] is None
    check_fixed(out["fixed_effects"], ref("cbpp", "pql_ml"), 1e-4)
    # without fixsigma2, HLM 7's command file means over-dispersion
    path.write_text(path.read_text().replace("fixsigma2:1.000000\n", ""))
    out = json.loads(hlmcli("fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "--model", path,
                            "--format", "json", check=True).stdout)
    assert close(out["sigma2"], ref("cbpp", "pql_ml_od")["variance_components"]["level1_scale_sigma2"], 1e-4)
    # one macro iteration cannot converge: exit 3
    path.write_text(path.read_text().replace("macroit:100,y", "macroit:1,y"))
    proc = hlmcli("fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "--model", path)
    assert proc.returncode == 3 and "did not converge" in proc.stderr


def test_text_output_has_the_hglm_tables():
    proc = hlmcli("fit", H / "mmmec_l1.csv", H / "mmmec_l2.csv", *MODELS["mmmec"])
    assert proc.returncode == 0, proc.stderr
    t = proc.stdout
    for s in ("E(DEATHSij|βj) = mij*λij", "Event Rate Ratio", "Confidence Interval", "(Unit-specific model)",
              "with robust standard errors", "Results for Population-average Model", "Deviance: none",
              "Final estimation of variance components"):
        assert s in t, s
    proc = hlmcli("fit", H / "mmmec_l1.csv", H / "mmmec_l2.csv", *MODELS["mmmec"], "--estimation", "laplace")
    assert "Deviance                       = 2250.3999" in proc.stdout and "Population-average" not in proc.stdout
    for s in ("Final estimation of fixed effects:", "(Unit-specific model with robust standard errors)",
              "For INTRCPT1, β0", "    INTRCPT2, γ00", "Final Results - Iteration"):
        assert s in proc.stdout, s


# ---------------------------------------------------------------- bad input: one line, exit 1

def _bad(tmp_path, rows, args, header="ID,Y,X,T"):
    l1 = tmp_path / "l1.csv"
    l1.write_text(header + "\n" + "\n".join(rows) + "\n")
    l2 = tmp_path / "l2.csv"
    l2.write_text("ID\n1\n2\n")
    proc = hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X", "-2", "b0 = g00 + u0", *args)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1
    return proc.stderr


GOOD = ["1,0,0.1,3", "1,1,0.5,3", "1,1,-0.2,3", "2,0,0.3,3", "2,1,-0.4,3", "2,0,0.9,3"]


def test_bad_outcomes_are_refused(tmp_path):
    rows = GOOD[:4] + ["2,2,-0.4,3"] + GOOD[5:]
    err = _bad(tmp_path, rows, ["--family", "bernoulli"])
    assert "l1.csv, column Y, row 5" in err and "not 0 or 1" in err
    rows = GOOD[:2] + ["1,-1,-0.2,3"] + GOOD[3:]
    assert "column Y, row 3" in _bad(tmp_path, rows, ["--family", "poisson"])
    rows = GOOD[:1] + ["1,1.5,0.5,3"] + GOOD[2:]
    assert "column Y, row 2" in _bad(tmp_path, rows, ["--family", "poisson"])
    rows = GOOD[:3] + ["2,4,0.3,3"] + GOOD[4:]
    err = _bad(tmp_path, rows, ["--family", "binomial", "--trials", "T"])
    assert "column Y, row 4" in err and "more than" in err
    rows = GOOD[:5] + ["2,0,0.9,0"]
    assert "column T, row 6" in _bad(tmp_path, rows, ["--family", "poisson", "--exposure", "T"])
    rows = ["1,0,0.1,3", "1,1,0.5,3", "1,0,-0.2,3", "2,0,0.3,3", "2,1,0.4,3", "2,1,0.9,3"]
    err = _bad(tmp_path, rows, ["--family", "bernoulli"])
    assert "column X" in err and "perfectly separates" in err


def test_r_under_a_nonnormal_family_is_refused():
    args = list(MODELS["mmmec"])
    args[1] = "DEATHS = b0 + b1*UVB + r"
    proc = hlmcli("fit", H / "mmmec_l1.csv", H / "mmmec_l2.csv", *args)
    assert proc.returncode == 1 and "has no residual r" in proc.stderr


def test_laplace_two_random_effects_matches_glmer():
    """A random intercept and slope (tests/reference_scripts/hglm_slope_glmer.R made the numbers)."""
    g = json.loads((H / "slope_laplace.json").read_text())
    proc = hlmcli("fit", H / "slope_l1.csv", H / "slope_l2.csv", "--id", "id", "-1", "y = b0 + b1*x",
                  "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + u1", "--family", "bernoulli",
                  "--estimation", "laplace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["certificate"]["certified"]
    assert out["deviance"] <= g["deviance"] + 1e-9
    assert math.isclose(out["deviance"], g["deviance"], rel_tol=1e-6)
    est = {f["gamma"]: f for f in out["fixed_effects"]}
    for label, name in (("γ00", "(Intercept)"), ("γ01", "w"), ("γ10", "x")):
        assert abs(est[label]["estimate"] - g["fixef"][name]) < 1e-3 * g["se"][name] * 10
        assert math.isclose(est[label]["se"], g["se"][name], rel_tol=2e-2)
    assert np.allclose(out["tau"], g["tau"], rtol=1e-2, atol=1e-3)


def test_agq_two_random_effects_from_the_command_line():
    proc = hlmcli("fit", H / "slope_l1.csv", H / "slope_l2.csv", "--id", "id", "-1", "y = b0 + b1*x",
                  "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + u1", "--family", "bernoulli",
                  "--estimation", "agq", "--quadrature-points", "5", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    g = json.loads((H / "slope_laplace.json").read_text())
    assert out["certificate"]["certified"] and out["quadrature_points"] == 5
    assert abs(out["deviance"] - g["deviance"]) < 1e-3 * g["deviance"]  # close to Laplace, not equal
    assert out["deviance"] != pytest.approx(g["deviance"], rel=1e-7)


# ---------------------------------------------------------------- exact AGQ gradient, options

@pytest.mark.parametrize("q,nodes", [(1, 7), (2, 3)])
def test_agq_gradient_is_exact(q, nodes, monkeypatch):
    """The analytic AGQ gradient (modes, H and its Cholesky factor differentiated) against central
    differences of the AGQ deviance, with the modes solved to rounding so the differences are clean."""
    from hlmcli.engine import hglm

    tight = hglm.Conditional.modes
    monkeypatch.setattr(hglm.Conditional, "modes", lambda self, g, l: tight(self, g, l, tol=1e-14))
    data = _small_data(q)
    cond = hglm.Conditional(data, nodes)
    gamma = np.array([-0.2, 0.6, -0.4])
    lam = np.array([[0.7, 0.0], [0.2, 0.5]])[:q, :q]
    _, gg, gl = cond.gradient(gamma, lam)
    h = 1e-5
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        num = (cond.deviance(gamma + e, lam) - cond.deviance(gamma - e, lam)) / (2 * h)
        assert abs(num - gg[i]) < 1e-7 * max(1, abs(num))
    for a in range(q):
        for c in range(q):
            E = np.zeros((q, q))
            E[a, c] = h
            num = (cond.deviance(gamma, lam + E) - cond.deviance(gamma, lam - E)) / (2 * h)
            assert abs(num - gl[a, c]) < 1e-7 * max(1, abs(num))


def test_diagonal_tau_laplace_matches_glmer():
    """--tau diagonal by Laplace against glmer with (1 | D) + (0 + URBAN | D), PIRLS to 1e-12
    (tests/reference_scripts/hglm_diagonal_glmer.R made the numbers)."""
    g = json.loads((H / "contra_diag_laplace.json").read_text())
    proc = hlmcli("fit", H / "contra_l1.csv", H / "contra_l2.csv", "-1", "USE = b0 + b1*URBAN + b2*AGE",
                  "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "--id", "DISTRICT", "--family", "bernoulli",
                  "--estimation", "laplace", "--tau", "diagonal", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["certificate"]["certified"] and out["tau_structure"] == "diagonal"
    assert math.isclose(out["deviance"], g["deviance"], rel_tol=1e-9)
    assert out["tau"][0][1] == 0.0 and out["n_params"] == 5
    for f, name in zip(out["fixed_effects"], ("(Intercept)", "URBAN", "AGE")):
        assert close(f["estimate"], g["fixef"][name], 1e-4) and close(f["se"], g["se"][name], 1e-4)
    assert np.allclose(np.diag(out["tau"]), g["tau"], rtol=1e-4)


def test_diagonal_tau_pql_matches_nlme():
    """--tau diagonal --ml PQL against the macro iterations written out around nlme::lme with pdDiag
    (tests/reference_scripts/hglm_diagonal_pql.R)."""
    r = json.loads((H / "contra_diag_pql_ml.json").read_text())
    out = json.loads(hlmcli("fit", H / "contra_l1.csv", H / "contra_l2.csv", "-1", "USE = b0 + b1*URBAN + b2*AGE",
                            "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "--id", "DISTRICT", "--family", "bernoulli",
                            "--tau", "diagonal", "--ml", "--format", "json", check=True).stdout)
    for f, name in zip(out["fixed_effects"], ("(Intercept)", "URBAN", "AGE")):
        assert close(f["estimate"], r["fixef"][name], 1e-6) and close(f["se"], r["se"][name], 1e-6)
    assert out["tau"][0][1] == 0.0 and np.allclose(np.diag(out["tau"]), r["tau"], rtol=1e-6)


def test_hypothesis_and_deviance_tests():
    base = ["fit", H / "mmmec_l1.csv", H / "mmmec_l2.csv", *MODELS["mmmec"], "--estimation", "laplace"]
    out = json.loads(hlmcli(*base, "--test", "g10 = 0", "--compare-deviance", "2300", "--compare-params", "2",
                            "--format", "json", check=True).stdout)
    f = out["fixed_effects"][1]
    t = out["hypothesis_tests"][0]
    # one restriction: the Wald χ² is t², with the model-based and the robust SE
    assert math.isclose(t["model"]["chi2"], (f["estimate"] / f["se"]) ** 2, rel_tol=1e-9)
    assert math.isclose(t["robust"]["chi2"], (f["estimate"] / f["robust_se"]) ** 2, rel_tol=1e-9)
    d = out["deviance_test"]
    assert math.isclose(d["chi2"], 2300 - out["deviance"], rel_tol=1e-12) and d["df"] == out["n_params"] - 2
    assert d["df"] == 1 and math.isclose(d["p"], math.erfc(math.sqrt(d["chi2"] / 2)), rel_tol=1e-9)  # χ²₁ tail
    text = hlmcli(*base, "--test", "g10 = 0", check=True).stdout
    assert "Results of General Linear Hypothesis Testing: g10 = 0" in text


@pytest.mark.parametrize("args,why", [
    (["--compare-deviance", "2300", "--compare-params", "2"], "PQL has none"),
    (["--df", "satterthwaite"], "Satterthwaite"),
    (["--test-homogeneity"], "fixed by the mean"),
    (["--full-output"], "normal outcome"),
    (["--weight1", "UVB"], "sampling weights"),
])
def test_options_without_hglm_meaning_are_refused(args, why):
    proc = hlmcli("fit", H / "mmmec_l1.csv", H / "mmmec_l2.csv", *MODELS["mmmec"], *args)
    assert proc.returncode == 2 and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_strict_refuses_a_boundary_fit(tmp_path):
    """Two units with no between-unit variation: τ = 0, a boundary fit (exit 3 under --strict only)."""
    l1 = tmp_path / "l1.csv"
    rows = [f"{j},{y},{x}" for j in (1, 2) for y, x in ((0, 0.1), (1, 0.5), (1, -0.2), (0, 0.3), (1, 0.4), (0, -0.9))]
    l1.write_text("ID,Y,X\n" + "\n".join(rows) + "\n")
    l2 = tmp_path / "l2.csv"
    l2.write_text("ID\n1\n2\n")
    args = ["fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X", "-2", "b0 = g00 + u0", "--family", "bernoulli",
            "--estimation", "laplace", "--format", "json"]
    out = json.loads(hlmcli(*args, check=True).stdout)
    assert out["tau"][0][0] < 1e-8 and out["boundary"] and "boundary fit" in out["boundary_notes"][0]
    proc = hlmcli(*args, "--strict")
    assert proc.returncode == 3 and "--strict: boundary fit" in proc.stderr


@pytest.mark.slow
def test_laplace_at_a_rank2_tau_also_searches_its_rank1_face():
    """q = 3, Laplace's optimum at a rank-2 τ: the global check searches from its rank-1 face too, as
    the linear engine's (one more start than the four of ml_fit), and the optimum stays glmer's or
    lower (refs/q3rank2_stress_hglm_ref.json, benchmarks/stress_hglm_ref.R)."""
    H = DATA / "hglm"
    ref = json.loads((H / "refs" / "q3rank2_stress_hglm_ref.json").read_text())["glmer_laplace"]
    proc = hlmcli("fit", H / "q3rank2_l1.csv", H / "q3rank2_l2.csv", "-1", "Y = b0 + b1*X1 + b2*X2",
                  "-2", "b0 = g00 + g01*W + u0", "-2", "b1 = g10 + u1", "-2", "b2 = g20 + u2", "--id", "ID",
                  "--family", "bernoulli", "--estimation", "laplace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["certificate"]["rank"] == 2 and out["starts"] == 5
    assert out["deviance"] <= ref["deviance"] + 1e-6 * ref["deviance"]


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_deviance_at_zero_tau_is_the_laplace_deviance_there(family):
    """ml_fit compares the optimum found with τ = 0 (the GLM): that deviance must be the Laplace
    deviance at Λ = 0 itself, family constant included (log C(n, y) for the binomial, −log y! for the
    Poisson), or a lower τ = 0 is missed (binomial) or needless searches start (Poisson)."""
    from hlmcli.engine.family import BINOMIAL, POISSON
    from hlmcli.engine.hglm import GLMData, deviance_without_random_effects

    rng = np.random.default_rng(7)
    J, n = 6, 5
    x = rng.normal(size=J * n)
    L = np.column_stack([np.ones(J * n), x])
    B = np.broadcast_to(np.eye(2), (J, 2, 2)).copy()
    offs = np.arange(0, J * n + 1, n)
    if family == "binomial":
        trials = rng.integers(2, 9, size=J * n).astype(float)
        y = np.floor(trials * rng.random(J * n))
        data = GLMData(BINOMIAL, L, B, offs, np.arange(1), y, trials)
    else:
        y = rng.poisson(3.0, size=J * n).astype(float)
        data = GLMData(POISSON, L, B, offs, np.arange(1), y)
    gamma = np.array([0.2, -0.4])
    eta = L @ gamma
    if family == "binomial":  # the binomial log-likelihood written out, by hand
        from math import lgamma
        p = 1 / (1 + np.exp(-eta))
        ll = sum(lgamma(t + 1) - lgamma(k + 1) - lgamma(t - k + 1) + k * math.log(pi) + (t - k) * math.log(1 - pi)
                 for k, t, pi in zip(y, trials, p))
    else:
        from math import lgamma
        mu = np.exp(eta)
        ll = sum(k * math.log(m) - m - lgamma(k + 1) for k, m in zip(y, mu))
    laplace = data.conditional(1).deviance(gamma, np.zeros((1, 1)))
    laplace = laplace[0] if isinstance(laplace, tuple) else laplace
    assert math.isclose(deviance_without_random_effects(data, gamma), -2 * ll, rel_tol=1e-12)
    assert math.isclose(float(laplace), -2 * ll, rel_tol=1e-12)


def test_a_unit_whose_likelihood_is_rounding_noise_stops_its_mode_search(monkeypatch):
    """A binomial record of 2^53 successes in 2^53 trials at η ≈ 34 (test_hglm_input's extreme_count data, seed
    1116): yη and n·b(η) cancel to ±64, so no Newton step raises that unit's ℓ and every mode solve used to
    repeat 60 passes × 30 halvings (16 s of CPU for 15 records). The unit now stays where it stands after one
    failed line search; the other units' modes are the ones solved without it (each unit's Newton is its own)."""
    from hlmcli.engine.family import BINOMIAL
    from hlmcli.engine.hglm import Conditional, GLMData

    x = np.array([-0.6348840494292676, -1.9122207517140442, -0.368098214683529, 1.0279449740820619,
                  2.0436999260814295, 1.9845217280315859, -0.7705647967956608, 0.008326658993070515,
                  -2.703292863347189, -0.1391489536268772, 0.45834990797075303, -0.297696144884344,
                  -3.2490158291005797, -1.6785769206317878])
    y = np.array([1, 0, 1, 2, 3, 5, 2, 0, 0, 0, 2.0 ** 53, 2, 1, 2], float)
    trials = np.array([4, 1, 7, 3, 4, 5, 4, 2, 5, 3, 2.0 ** 53, 7, 5, 7], float)
    w = np.array([0.2965471515447379, 0.665037315600235, 0.7607272913363522])
    offs = np.array([0, 6, 10, 14])  # the data set's first three units (the fourth's one record is not needed)
    L = np.column_stack([np.ones(14), x])
    B = np.array([[[1.0, wj, 0.0], [0.0, 0.0, 1.0]] for wj in w])
    gamma, lam = np.array([-44.614, 93.123, 16.622]), np.array([[0.5]])
    calls = []
    evaluate = type(BINOMIAL).evaluate
    monkeypatch.setattr(type(BINOMIAL), "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    cond = Conditional(GLMData(BINOMIAL, L, B, offs, np.arange(1), y, trials))
    u, _ = cond.modes(gamma, lam)
    assert len(calls) <= 60  # was 1801 = 1 + 60 passes × 30 halvings
    assert u[2, 0] == 0.0  # the start (b = 0), where the failed search left it
    assert cond.unsolved.tolist() == [False, False, True]  # what the fit's certificate reads
    rest = Conditional(GLMData(BINOMIAL, L[:10], B[:2], offs[:3], np.arange(1), y[:10], trials[:10])).modes(gamma, lam)[0]
    np.testing.assert_array_equal(u[:2], rest)
    # a fourth unit of one such record, started at η = 0: Newton climbs for some passes before its ℓ turns to
    # noise and it stalls too; the third unit must stay stalled (and unsolved) through that later failure
    L4 = np.column_stack([np.ones(15), np.r_[x, 0.0]])
    B4 = np.concatenate([B, [[[1.0, 44.614 / 93.123, 0.0], [0.0, 0.0, 1.0]]]])
    cond = Conditional(GLMData(BINOMIAL, L4, B4, np.r_[offs, 15], np.arange(1), np.r_[y, 2.0 ** 53],
                               np.r_[trials, 2.0 ** 53]))
    u4, _ = cond.modes(gamma, lam)
    assert cond.unsolved.tolist() == [False, False, True, True] and u4[2, 0] == 0.0 and u4[3, 0] > 1.0
    np.testing.assert_array_equal(u4[:2], rest)


def test_a_fit_whose_modes_are_not_all_solved_is_not_certified(monkeypatch):
    """The Laplace deviance and its gradient assume û_j is each unit's mode. When the mode search leaves
    a unit unsolved (its line search stalled, or maxit passes ran out) at the optimum, the fit must not
    be certified, whatever the certificate's checks of the deviance saw: the same fit certifies
    without the unsolved unit."""
    from hlmcli.engine.hglm import Conditional, ml_fit

    data = _small_data(1, seed=5, J=6)
    assert ml_fit(data).certificate.certified
    modes = Conditional.modes

    def one_unsolved(self, gamma, lam, *a, **k):
        out = modes(self, gamma, lam, *a, **k)
        self.unsolved = np.arange(self.data.J) == 2
        return out

    monkeypatch.setattr(Conditional, "modes", one_unsolved)
    fit = ml_fit(data)
    assert not fit.certificate.certified and not fit.converged
    assert any("mode of 1 unit(s) was not found" in f for f in fit.certificate.failed)
