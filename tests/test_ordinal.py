"""Ordinal outcomes (--family ordinal): the cumulative link model's per-record derivatives and exact
gradient, its Laplace and AGQ fits against ordinal::clmm (tests/data/ordinal/clmm_reference.json, made
by tests/reference_scripts/ordinal_clmm.R, with clmm's optimizer tightened and its AGQ deviance checked
by numerical integration in R), the CLI's text and JSON, and the refusal of bad category codes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, ROOT, hlmcli
from hlmcli.engine.ordinal import LINKS, OrdinalData, OrdinalFamily, fit

O = DATA / "ordinal"
REF = json.loads((O / "clmm_reference.json").read_text())["fits"]
WINE = [O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "-1", "rating = b0 + b1*warm + b2*contact",
        "-2", "b0 = g00 + u0", "-2", "b1 = g10", "-2", "b2 = g20", "--family", "ordinal"]


def ref(data, link, nagq):
    return next(f for f in REF if (f["data"], f["link"], f["nAGQ"]) == (data, link, nagq))


def engine_data(name, link, slope=False):
    """The engine's data for wine (rating ~ warm + contact + (1|judge)) or soup (sureness ~ test + male +
    (1|resp)), male a level-2 predictor; with slope, warm's coefficient random too."""
    if name == "wine":
        d = pd.read_csv(O / "wine_l1.csv").sort_values("judge", kind="stable")
        ids, y, X = d.judge.values, d.rating.values, [d.warm.values, d.contact.values]
    else:
        d = pd.read_csv(O / "soup_l1.csv").merge(pd.read_csv(O / "soup_l2.csv"), on="resp")
        d = d.sort_values("resp", kind="stable")
        ids, y, X = d.resp.values, d.sureness.values, [d.test.values, d.male.values]
    L = np.column_stack([np.ones(len(d))] + X)
    units, offs = np.unique(ids, return_index=True)
    B = np.zeros((units.size, 3, 3))
    B[:, [0, 1, 2], [0, 1, 2]] = 1.0
    rnd = np.array([0, 1]) if slope else np.array([0])
    ncat = int(y.max())
    return OrdinalData(OrdinalFamily(link, ncat, y), L, B, np.append(offs, len(d)), rnd, y.astype(float))


def to_clmm(params, pf):
    """(θ, β) of clmm from the engine's (γ, c): θ_m = γ00 + c_m, β = −γ's slopes."""
    g, c = params[:pf], params[pf:]
    return np.concatenate([[g[0]], g[0] + c]), -g[1:]


def from_clmm(r):
    th = np.array(r["theta"])
    return np.concatenate([[th[0]], -np.array(r["beta"]), th[1:] - th[0]]), np.array([[np.sqrt(r["tau"])]])


# ------------------------------------------------------------------ the per-record kernel

@pytest.mark.parametrize("link", LINKS)
def test_record_derivatives_by_differences(link):
    """ℓ_η, W = −ℓ_ηη, κ3 = ∂W/∂η and the threshold parts against central differences, every category."""
    y = np.array([1, 2, 3, 4, 2, 4, 1, 3])
    fam = OrdinalFamily(link, 4, y)
    fam.set_cuts([0.7, 1.9])
    eta = np.array([-1.3, 0.2, 2.5, -0.4, 1.1, 3.0, -2.2, 0.0])
    h = 1e-5
    ll, l1, W, k3 = fam.evaluate(eta)
    num = [(fam.evaluate(eta + h)[i] - fam.evaluate(eta - h)[i]) / (2 * h) for i in range(3)]
    assert num[0] == pytest.approx(l1, rel=1e-7, abs=1e-9)
    assert -num[1] == pytest.approx(W, rel=1e-7, abs=1e-9)
    assert num[2] == pytest.approx(k3, rel=1e-6, abs=1e-8)
    assert np.all(W > 0)  # log-concave links: ℓ concave in η
    la, lb, lea, leb, Wa, Wb = fam.threshold_parts(eta)
    for m, (upper, lower) in enumerate([(y == 2, y == 3), (y == 3, y == 4)]):
        cp, cm = np.array([0.7, 1.9]), np.array([0.7, 1.9])
        cp[m] += h
        cm[m] -= h
        parts = []
        for c in (cp, cm):
            fam.set_cuts(c)
            parts.append(fam.evaluate(eta))
        fam.set_cuts([0.7, 1.9])
        dl = (parts[0][0] - parts[1][0]) / (2 * h)
        dl1 = (parts[0][1] - parts[1][1]) / (2 * h)
        dW = (parts[0][2] - parts[1][2]) / (2 * h)
        assert dl == pytest.approx(np.where(upper, la, 0) + np.where(lower, lb, 0), rel=1e-6, abs=1e-8)
        assert dl1 == pytest.approx(np.where(upper, lea, 0) + np.where(lower, leb, 0), rel=1e-6, abs=1e-8)
        assert dW == pytest.approx(np.where(upper, Wa, 0) + np.where(lower, Wb, 0), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("link,nodes,slope", [("logit", 1, False), ("cloglog", 5, False), ("probit", 1, True),
                                              ("logit", 3, True)])
def test_exact_gradient_by_differences(link, nodes, slope):
    """The Laplace/AGQ deviance's gradient in (γ, thresholds, Λ) against central differences."""
    data = engine_data("wine", link, slope)
    cond = data.conditional(nodes)
    x = np.array([-1.3, -2.5, -1.5, 2.9, 5.6, 7.4])
    lam = np.array([[1.1, 0.0], [0.3, 0.5]]) if slope else np.array([[1.1]])
    _, gg, gl = cond.gradient(x, lam)
    h = 1e-6
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h
        assert (cond.deviance(x + e, lam) - cond.deviance(x - e, lam)) / (2 * h) == pytest.approx(gg[i], abs=2e-6)
    for a, b in zip(*np.tril_indices(lam.shape[0])):
        E = np.zeros_like(lam)
        E[a, b] = h
        assert (cond.deviance(x, lam + E) - cond.deviance(x, lam - E)) / (2 * h) == pytest.approx(gl[a, b], abs=2e-6)


def test_unordered_thresholds_are_infinite_deviance():
    data = engine_data("wine", "logit")
    assert data.conditional(1).deviance(np.array([-1.3, -2.5, -1.5, 2.9, 2.0, 7.4]), np.array([[1.0]])) == np.inf


# ------------------------------------------------------------------ against clmm

def test_deviance_at_clmm_optimum_matches():
    """Our Laplace and AGQ deviance at clmm's own estimates equals clmm's deviance (the objective itself)."""
    for r in (ref("wine", "logit", 1), ref("wine", "probit", 10), ref("wine", "cloglog", 10)):
        data = engine_data("wine", r["link"])
        x, lam = from_clmm(r)
        assert data.conditional(r["nAGQ"]).deviance(x, lam) == pytest.approx(r["deviance"], abs=1e-7), r["link"]


def test_wine_laplace_matches_clmm():
    r = ref("wine", "logit", 1)
    res = fit(engine_data("wine", "logit"), "laplace")
    assert res.converged and res.certificate.certified
    assert res.deviance == pytest.approx(r["deviance"], abs=1e-6) and res.deviance <= r["deviance"] + 1e-9
    theta, beta = to_clmm(res.gamma, 3)
    assert theta == pytest.approx(r["theta"], rel=1e-5) and beta == pytest.approx(r["beta"], rel=1e-5)
    assert res.tau[0, 0] == pytest.approx(r["tau"], rel=1e-4)
    assert res.n_params == r["logLik_df"]


@pytest.mark.slow
@pytest.mark.parametrize("r", REF, ids=lambda r: f"{r['data']}-{r['link']}-{r['nAGQ']}")
def test_every_clmm_reference(r):
    """Every reference fit: deviance to 1e-6 (and never above clmm's), θ and β to 5e-5 relative (clmm's own
    optimum is that close), τ to 1e-4, AGQ standard errors to 1e-4. clmm's Laplace SEs come from a
    difference Hessian of its own (they differ from ours by up to 1e-2 relative on wine), so only AGQ's
    are compared."""
    data = engine_data(r["data"], r["link"])
    nodes = r["nAGQ"]
    res = fit(data, "laplace" if nodes == 1 else "agq", nodes if nodes > 1 else None)
    assert res.converged
    assert res.deviance == pytest.approx(r["deviance"], abs=1e-6) and res.deviance <= r["deviance"] + 1e-8
    theta, beta = to_clmm(res.gamma, data.pf)
    assert theta == pytest.approx(r["theta"], rel=5e-5, abs=1e-5)
    assert beta == pytest.approx(r["beta"], rel=5e-5, abs=1e-5)
    assert res.tau[0, 0] == pytest.approx(r["tau"], rel=1e-4)
    if nodes > 1:
        se = np.sqrt(np.diag(res.cov))
        D = np.zeros((data.p, data.p))  # (γ, c) -> (θ, β): θ_1 = γ00, θ_m = γ00 + c_m, β = −γ slopes
        D[0, 0] = 1.0
        for m in range(data.ncut):
            D[1 + m, 0] = D[1 + m, data.pf + m] = 1.0
        for k in range(1, data.pf):
            D[data.ncut + k, k] = -1.0
        se = np.sqrt(np.diag(D @ res.cov @ D.T))
        assert se == pytest.approx(np.concatenate([r["se_theta"], r["se_beta"]]), rel=1e-4)
        # R's numerical integration of the same model at clmm's optimum (cloglog: clm's F)
        assert r["integrated_deviance"] == pytest.approx(r["deviance"], abs=1e-5)


# ------------------------------------------------------------------ the command line

def test_cli_text_and_json(tmp_path):
    """One AGQ fit as a user types it: the JSON validates against the schema and matches clmm (nAGQ = 10).
    The CSV puts HLM 7's parameters under broom's column names, so a `convention` column says, row by row,
    how each reads against clmm (and broom's tidy of it); following it recovers clmm's θ and β."""
    import io

    import jsonschema

    r = ref("wine", "logit", 10)
    proc = hlmcli("fit", *WINE, "--estimation", "agq", "--quadrature-points", "10", "--format", "csv",
                  "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    t = pd.read_csv(io.StringIO(proc.stdout))
    fixed = t[t.effect == "fixed"].set_index("hlm.label")
    assert list(fixed.convention) == ["HLM 7: gamma00 = clmm theta_1 (the first threshold)"] + \
        ["HLM 7: gamma = -(clmm beta)"] * 2 + ["HLM 7: delta(m) = clmm theta_m - theta_(m-1)"] * 3
    theta = fixed.estimate["γ00"] + np.concatenate([[0.0], np.cumsum(fixed.estimate[["δ(2)", "δ(3)", "δ(4)"]])])
    assert theta == pytest.approx(r["theta"], rel=1e-5)
    assert -fixed.estimate[["γ10", "γ20"]].to_numpy() == pytest.approx(r["beta"], rel=1e-5)
    assert t[t.effect == "ran_pars"].convention.isna().all()
    doc = json.loads((tmp_path / "fit.json").read_text())
    jsonschema.validate(doc, json.loads((ROOT / "hlmcli" / "schema" / "fit-2.json").read_text()))
    assert doc["family"] == "ordinal" and doc["link"] == "logit" and doc["categories"] == [1, 2, 3, 4, 5]
    assert doc["deviance"] == pytest.approx(r["deviance"], abs=1e-6)
    assert doc["clmm"]["theta"] == pytest.approx(r["theta"], rel=1e-5)
    assert [t["threshold"] for t in doc["thresholds"]] == ["δ(2)", "δ(3)", "δ(4)"]
    assert [t["estimate"] for t in doc["thresholds"]] == pytest.approx(np.diff(r["theta"]), rel=1e-5)
    assert doc["fixed_effects"][1]["estimate"] == pytest.approx(-r["beta"][0], rel=1e-5)
    assert doc["n_params"] == 7 and "odds_ratio" in doc["fixed_effects"][0]
    assert doc["r_call"] == "ordinal::clmm(factor(rating, ordered = TRUE) ~ warm + contact + (1 | judge), data = d, nAGQ = 10)"


def test_cli_probit_text():
    r = ref("wine", "probit", 1)
    proc = hlmcli("fit", *WINE, "--estimation", "laplace", "--link", "probit")
    assert proc.returncode == 0, proc.stderr
    t = proc.stdout
    for s in ("Distribution at Level-1: ordinal, 5 categories (1, 2, 3, 4, 5), probit link",
              "Prob[RATINGij <= m|βj] = φ'mij", "Φ⁻¹[φ'mij] = η'mij", "For  THRESHOLD4, δ(4)",
              'link = "probit"', "Iterations stopped at the optimum"):
        assert s in t, s
    assert "Odds Ratio" not in t  # exp(γ) of a probit model is no ratio
    dev = float(t.split("Deviance                       = ")[1].split()[0])
    assert dev == pytest.approx(r["deviance"], abs=1e-6)


def test_bad_codes_are_refused(tmp_path):
    """Non-integer codes and codes outside nonlin:ordinal,NCAT refused in one line (PQL: test_categorical_pql.py)."""
    l1 = pd.read_csv(O / "wine_l1.csv")
    l1["rating"] = l1["rating"].astype(float)
    l1.loc[6, "rating"] = 2.5
    l1.to_csv(tmp_path / "bad.csv", index=False)
    args = [tmp_path / "bad.csv", O / "wine_l2.csv", *WINE[2:], "--estimation", "laplace"]
    proc = hlmcli("fit", *args)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "bad.csv, column rating, row 7: the value 2.5 is not a whole-number category code" in proc.stderr
    cmd = tmp_path / "wine.hlm"
    cmd.write_text("#WHLM CMD FILE\nnonlin:ordinal,4\nlevel1:RATING=INTRCPT1+WARM+CONTACT+RANDOM\n"
                   "level2:INTRCPT1=INTRCPT2+random/\nlevel2:WARM=INTRCPT2/\nlevel2:CONTACT=INTRCPT2/\n")
    proc = hlmcli("fit", O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "--model", cmd, "--estimation",
                  "laplace")
    assert proc.returncode == 1 and "column rating, row " in proc.stderr
    assert "the value 5 is not a category 1 to 4 of nonlin:ordinal,4" in proc.stderr
    cmd.write_text(cmd.read_text().replace("nonlin:ordinal,4", "nonlin:ordinal,5"))  # the right NCAT fits
    proc = hlmcli("fit", O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "--model", cmd, "--estimation",
                  "laplace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deviance"] == pytest.approx(ref("wine", "logit", 1)["deviance"], abs=1e-6)


def test_no_unit_variance_is_a_certified_boundary():
    """Data made without a random intercept: τ = 0, certified on the boundary (Laplace and AGQ), and the
    deviance there is the plain cumulative logit model's, found here by scipy from its own likelihood.
    (AGQ shares the boundary certificate; its run is in the slow set.)"""
    from scipy.optimize import minimize
    from scipy.special import expit

    rng = np.random.default_rng(5)
    J, m = 40, 10
    x = rng.normal(size=J * m)
    y = 1 + np.searchsorted([-1.0, 0.2, 1.5], 0.7 * x + rng.logistic(size=J * m))
    L = np.column_stack([np.ones(J * m), x])
    B = np.zeros((J, 2, 2))
    B[:, 0, 0] = B[:, 1, 1] = 1.0

    def nll(v):  # clm's model: P(Y <= j) = expit(θ_j − βx)
        th = np.concatenate([[-np.inf], np.cumsum(np.concatenate([[v[0]], np.exp(v[1:3])])), [np.inf]])
        return -np.sum(np.log(expit(th[y] - v[3] * x) - expit(th[y - 1] - v[3] * x)))

    glm = minimize(nll, np.array([-1.0, 0.0, 0.0, 0.5]), method="BFGS", options={"gtol": 1e-10})
    for est in ("laplace",):
        data = OrdinalData(OrdinalFamily("logit", 4, y), L, B, np.arange(0, J * m + 1, m), np.array([0]), y.astype(float))
        res = fit(data, est)
        assert res.converged and res.certificate.rank == 0 and res.tau[0, 0] == 0.0
        assert res.deviance == pytest.approx(2 * glm.fun, abs=1e-6)
        assert res.gamma[1] == pytest.approx(-glm.x[3], rel=1e-5)


def test_separation_option_is_refused_not_ignored():
    """The ordinal fit has no separation search, so --separation would do nothing: refused by name (exit 2)."""
    from hlmcli.cli.flags import ConflictingOptions, check_model_options

    with pytest.raises(ConflictingOptions, match="^--separation is for binary, binomial and count outcomes"):
        check_model_options({"--separation", "--family"}, family="ordinal", estimation="laplace", full_output=False,
                            prior_deviance=False)
    check_model_options({"--separation"}, family="bernoulli", estimation="laplace", full_output=False,
                        prior_deviance=False)


def test_equation_graph_axis_names_the_cumulative_probability():
    """η of an ordinal model is the lowest category's cumulative link (it falls as ratings rise): the
    equation graph's axis says so for every link (it read 'Predicted rating, log-odds', and nothing for
    probit), as a saved fit's categories give it."""
    from hlmcli.report.plots import link_scale

    for link, name in (("logit", "log-odds"), ("probit", "probit"), ("cloglog", "cloglog")):
        fit = {"family": "ordinal", "link": link, "outcome": "rating", "categories": [1.0, 2.0, 3.0, 4.0, 5.0]}
        assert link_scale(fit) == f"{name} of P[rating ≤ 1]"
    assert link_scale({"family": "poisson", "link": "log"}) == "log rate"
