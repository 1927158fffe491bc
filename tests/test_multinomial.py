"""Multinomial outcomes (--family multinomial): the per-record kernel and the exact gradient of the Laplace
deviance against differences; the fit against an independent R implementation of the Laplace formula and
against numerical integration (tests/data/multinomial/ghq_reference.json, made by
tests/reference_scripts/multinomial_ghq.R); M = 2 against the Bernoulli fit; τ = 0 against the plain
multinomial logit; the CLI's text, JSON and refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, ROOT, hlmcli
from hlmcli.engine.multinomial import MultinomialData, MultinomialFamily, fit

M = DATA / "multinomial"
REF = json.loads((M / "ghq_reference.json").read_text())
SIM = [M / "sim_l1.csv", M / "sim_l2.csv", "--id", "school", "-1", "choice = b0 + b1*x", "-2", "b0 = g00 + g01*w + u0",
       "-2", "b1 = g10", "--family", "multinomial"]


def engine_data(slope=False, ncat=3, y=None):
    """The engine's data for the simulated set: per logit η = γ0 + γ1 w + γ2 x + u (with slope, x's
    coefficient random too), the order of the R script's γ."""
    d = pd.read_csv(M / "sim_l1.csv").merge(pd.read_csv(M / "sim_l2.csv"), on="school")
    d = d.sort_values("school", kind="stable")
    L = np.column_stack([np.ones(len(d)), d.x.values])
    units, offs = np.unique(d.school.values, return_index=True)
    w = d.w.values[offs]
    B = np.zeros((units.size, 2, 3))
    B[:, 0, 0], B[:, 0, 1], B[:, 1, 2] = 1.0, w, 1.0
    y = d.choice.values if y is None else y
    rnd = np.array([0, 1]) if slope else np.array([0])
    return MultinomialData(MultinomialFamily(ncat, y), L, B, np.append(offs, len(d)), rnd, y.astype(float))


@pytest.fixture(scope="module")
def laplace():
    data = engine_data()
    return data, fit(data)


# ------------------------------------------------------------------ the kernel and the gradient

def test_record_derivatives_by_differences():
    """ℓ_η = y − p and W = diag(p) − pp' against central differences of ℓ, at large |η| too (no overflow)."""
    fam = MultinomialFamily(4, np.array([1, 2, 3, 4, 4]))
    eta = np.array([[0.3, -1.2, 2.0], [800.0, 1.0, -3.0], [-900.0, -2.0, 0.5], [0.0, 0.0, 0.0], [-1.0, 3.0, 2.5]])
    ll, l1, W = fam.evaluate(eta)
    assert np.all(np.isfinite(ll)) and ll[1] == pytest.approx(-799.0 - np.log1p(np.exp(-797.0)), abs=1e-12)
    h = 1e-6
    for m in range(3):
        e = np.zeros(3)
        e[m] = h
        assert (fam.evaluate(eta + e)[0] - fam.evaluate(eta - e)[0]) / (2 * h) == pytest.approx(l1[:, m], abs=1e-7)
        dp = (fam.evaluate(eta + e)[2].p - fam.evaluate(eta - e)[2].p) / (2 * h)
        assert dp == pytest.approx(W.times(np.tile(e / h, (5, 1))), abs=1e-7)  # W's column m
        assert dp[:, m] == pytest.approx(W.entry(m, m), abs=1e-7)


@pytest.mark.parametrize("slope", [False, True])
def test_exact_gradient_by_differences(slope):
    """∂d/∂γ and ∂d/∂Λ (module docstring of engine/multinomial.py) against central differences of the
    Laplace deviance, with a random intercept (τ 2×2) and with a random slope too (τ 4×4)."""
    data = engine_data(slope)
    cond = data.conditional()
    rng = np.random.default_rng(3)
    gamma = np.array([0.1, 0.4, 0.5, -0.8, 0.0, -0.4])
    lam = np.tril(rng.uniform(0.2, 0.6, (data.q, data.q)))
    _, gg, gl = cond.gradient(gamma, lam)
    h = 1e-4  # the modes' warm starts leave ~1e-11 of noise in the deviance: smaller steps see it
    for i in range(gamma.size):
        e = np.zeros(gamma.size)
        e[i] = h
        num = (cond.deviance(gamma + e, lam) - cond.deviance(gamma - e, lam)) / (2 * h)
        assert num == pytest.approx(gg[i], rel=1e-6, abs=1e-6)
    for a, c in zip(*np.tril_indices(data.q)):
        E = np.zeros_like(lam)
        E[a, c] = h
        num = (cond.deviance(gamma, lam + E) - cond.deviance(gamma, lam - E)) / (2 * h)
        assert num == pytest.approx(gl[a, c], rel=1e-6, abs=1e-6)


# ------------------------------------------------------------------ against the references

def test_deviance_formula_matches_r_at_a_probe_point():
    """The Laplace deviance at a fixed (γ, Λ) away from the optimum equals the R script's own evaluation."""
    pr = REF["probe"]
    data = engine_data()
    c = pr["par_lower_cholesky"]
    lam = np.array([[c[0], 0.0], [c[1], c[2]]])
    assert data.conditional().deviance(np.array(pr["par_gamma"]), lam) == pytest.approx(pr["laplace"], abs=1e-8)


def test_laplace_fit_matches_r(laplace):
    """The certified Laplace optimum equals the R script's (its nlminb + BFGS search of its own Laplace formula):
    deviance to 1e-6, γ and τ to 1e-5 (they agree to 4e-7 and 3e-6); and it lies within the Laplace error of
    the GHQ (25² points) optimum."""
    _, res = laplace
    r = REF["laplace"]
    assert res.converged and res.certificate.certified
    assert res.deviance == pytest.approx(r["deviance"], abs=1e-6)
    assert res.gamma == pytest.approx(r["gamma"], rel=1e-5)
    assert res.tau.ravel() == pytest.approx(r["tau"], rel=1e-5)
    q = REF["agq"]
    assert abs(res.deviance - q["deviance"]) < 0.5  # the Laplace approximation's size on these data
    assert res.gamma == pytest.approx(q["gamma"], abs=0.05)


@pytest.mark.parametrize("slope", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_two_categories_are_the_bernoulli_fit(slope):
    """With M = 2 the baseline-category logit is the Bernoulli logit of category 1 against 2: the same
    Laplace optimum, τ and standard errors as hglm's Bernoulli fit (random intercept; and slope, slow)."""
    from hlmcli.engine.family import Family
    from hlmcli.engine.hglm import GLMData, ml_fit

    base = engine_data()
    y2 = np.where(base.family.y == 1, 1, 2)
    multi = engine_data(slope=slope, ncat=2, y=y2)
    bern = GLMData(Family("bernoulli", "logit"), multi.L, multi.B, multi.offs, multi.rnd, (y2 == 1).astype(float))
    a, b = fit(multi), ml_fit(bern, 1)
    assert a.converged and b.converged
    assert a.deviance == pytest.approx(b.deviance, abs=1e-8)
    assert a.gamma == pytest.approx(b.gamma, rel=1e-6, abs=1e-8)
    assert a.tau == pytest.approx(b.tau, rel=1e-5, abs=1e-8)
    assert np.sqrt(np.diag(a.cov)) == pytest.approx(np.sqrt(np.diag(b.cov)), rel=1e-5)


def test_no_unit_variance_is_a_certified_boundary():
    """Every unit holds the same records, so the units vary less than any τ > 0 allows: τ = 0 certified on
    the boundary (the lower-face check), and the deviance there is the plain multinomial logit's, found here
    by scipy from its own likelihood."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(11)
    J, m = 20, 8
    x1 = rng.normal(size=m)
    y1 = np.array([1, 2, 3, 1, 1, 3, 2, 3])
    x, y = np.tile(x1, J), np.tile(y1, J)
    L = np.column_stack([np.ones(J * m), x])
    B = np.zeros((J, 2, 2))
    B[:, 0, 0] = B[:, 1, 1] = 1.0

    def nll(v):
        e = np.column_stack([v[0] + v[1] * x, v[2] + v[3] * x, np.zeros(J * m)])
        return -np.sum(e[np.arange(J * m), y - 1] - np.log(np.exp(e).sum(axis=1)))

    glm = minimize(nll, np.zeros(4), method="BFGS", options={"gtol": 1e-10})
    data = MultinomialData(MultinomialFamily(3, y), L, B, np.arange(0, J * m + 1, m), np.array([0]), y.astype(float))
    res = fit(data)
    assert res.converged and res.certificate.certified and res.certificate.rank == 0
    assert np.all(res.tau == 0.0)
    assert res.deviance == pytest.approx(2 * glm.fun, abs=1e-6)
    assert res.gamma == pytest.approx(np.array(glm.x)[[0, 1, 2, 3]], rel=1e-5)


def test_separation_is_refused_not_certified(tmp_path):
    """Category 1 exactly when x > 0.5: the likelihood rises without bound along γ_1 (no finite optimum), so
    the fit is refused in one line naming the effects, not printed as certified. At 12,000 records (the
    subsample shortcut of find_separation) the same direction is found, and data that are not separated pass."""
    import hlmcli as api
    from hlmcli.analysis.multinomial_run import find_separation
    from hlmcli.errors import DataError

    rng = np.random.default_rng(4)
    x = rng.normal(size=240)
    y = np.where(x > 0.5, 1, rng.choice([2, 3], size=240))
    frame = pd.DataFrame({"id": np.repeat(np.arange(30), 8), "y": y, "x": x.round(3)})
    with pytest.raises(DataError, match=r"the fixed effects γ00 \(category 1\), γ10 \(category 1\) separate the categories"):
        api.fit(frame, id="id", level1_eq="y = b0 + b1*x", level2_eqs=["b0 = g00 + u0", "b1 = g10"],
                family="multinomial", estimation="laplace")
    x = rng.normal(size=12_000)
    X = np.column_stack([np.ones_like(x), x])
    y = np.where(x > 0.5, 1, rng.choice([2, 3], size=x.size))
    beta, moved = find_separation(X, y, 3)
    assert beta[1] > 0 and np.all(x[moved] != 0.5) and moved.size > 0
    assert find_separation(X, rng.choice([1, 2, 3], size=x.size), 3) is None


# ------------------------------------------------------------------ the command line

def test_cli_json_and_text(tmp_path):
    """One Laplace fit as a user types it: the JSON (schema 2) matches the R reference, names each logit's γ
    and carries one Wald test per logit."""
    import jsonschema

    proc = hlmcli("fit", *SIM, "--estimation", "laplace", "--format", "json", "--test", "g10 = 0")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema.validate(doc, json.loads((ROOT / "hlmcli" / "schema" / "fit-2.json").read_text()))
    r = REF["laplace"]
    assert doc["family"] == "multinomial" and doc["categories"] == [1, 2, 3] and doc["reference_category"] == 3
    assert doc["deviance"] == pytest.approx(r["deviance"], abs=1e-6) and doc["certificate"]["certified"]
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(r["gamma"], rel=1e-4)
    assert [f["term"] for f in doc["fixed_effects"]] == ["1:(Intercept)", "1:w", "1:x", "2:(Intercept)", "2:w", "2:x"]
    assert doc["fixed_effects"][2]["odds_ratio"] == pytest.approx(np.exp(r["gamma"][2]), rel=1e-4)
    assert np.ravel(doc["tau"]) == pytest.approx(r["tau"], rel=1e-4)
    assert doc["random_coefficients"] == ["INTRCPT1(1)", "INTRCPT1(2)"] and doc["n_params"] == 9
    tests = doc["hypothesis_tests"]  # one Wald test per logit: (γ10/se)² of each
    assert [t["label"] for t in tests] == ["g10 = 0 (category 1)", "g10 = 0 (category 2)"]
    for t, f in zip(tests, (doc["fixed_effects"][2], doc["fixed_effects"][5])):
        assert t["model"]["chi2"] == pytest.approx((f["estimate"] / f["se"]) ** 2, rel=1e-9)


def test_text_prints_hlm7_blocks(laplace):
    """The text, from the API on the same data: the level-1 block, τ over both logits with correlations, the
    fixed effects per category with odds ratios, and the certified status."""
    import hlmcli as api

    res = api.fit(M / "sim_l1.csv", M / "sim_l2.csv", id="school", level1_eq="choice = b0 + b1*x",
                  level2_eqs=["b0 = g00 + g01*w + u0", "b1 = g10"], family="multinomial", estimation="laplace")
    t = res.summary()
    for s in ("Distribution at Level-1: multinomial, 3 categories (1, 2, 3); reference category 3",
              "log[φmij/φMij] = ηmij, m = 1, ..., M - 1", "INTRCPT1,β0(2)", "τ (as correlations)",
              "Category 1 (log-odds against category 3)", "Category 2 (log-odds against category 3)",
              "Odds Ratio", "Iterations stopped at the optimum", "INTRCPT1, u0(2)"):
        assert s in t, s
    dev = float(t.split("Deviance                       = ")[1].split()[0])
    assert dev == pytest.approx(REF["laplace"]["deviance"], abs=1e-6)
    pred = res.predict(pd.read_csv(M / "sim_l1.csv").merge(pd.read_csv(M / "sim_l2.csv")).head(4))
    r1 = res.residuals_level1()
    assert pred.shape == (4, 2) and pred == pytest.approx(r1[["eta_1", "eta_2"]].values[:4], rel=1e-10)
    assert r1[["p_1", "p_2", "p_3"]].sum(axis=1).values == pytest.approx(1.0)


def test_bad_codes_are_refused(tmp_path):
    """A non-integer code (the CLI, one line naming file, column and row), and a category of
    nonlin:multinomial,NCAT that no record has (a .hlm file, through the API); the right NCAT fits.
    AGQ is refused by the capabilities table (tests/test_capabilities.py); PQL: test_categorical_pql.py."""
    import hlmcli as api
    from hlmcli.errors import DataError

    l1 = pd.read_csv(M / "sim_l1.csv")
    l1["choice"] = l1["choice"].astype(float)
    l1.loc[4, "choice"] = 1.5
    l1.to_csv(tmp_path / "bad.csv", index=False)
    proc = hlmcli("fit", tmp_path / "bad.csv", *SIM[1:], "--estimation", "laplace")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "bad.csv, column choice, row 5: the value 1.5 is not a whole-number category code" in proc.stderr
    cmd = tmp_path / "m.hlm"
    text = ("#WHLM CMD FILE\nnonlin:multinomial,%d\nlevel1:CHOICE=INTRCPT1+X+RANDOM\n"
            "level2:INTRCPT1=INTRCPT2+W+random/\nlevel2:X=INTRCPT2/\n")
    cmd.write_text(text % 4)
    with pytest.raises(DataError, match="column choice: no record has category 4 of nonlin:multinomial,4"):
        api.fit(M / "sim_l1.csv", M / "sim_l2.csv", id="school", model=cmd, estimation="laplace")
    cmd.write_text(text % 3)
    res = api.fit(M / "sim_l1.csv", M / "sim_l2.csv", id="school", model=cmd, estimation="laplace")
    assert res.deviance == pytest.approx(REF["laplace"]["deviance"], abs=1e-6)


def test_a_mode_search_that_runs_out_of_passes_leaves_the_fit_uncertified(laplace, monkeypatch):
    """The multinomial mode solve says which units' Newton step is still above its tolerance (hglm's fit
    reads it at the final point): none at the certified fit, every moved unit after one pass from zero; and
    a fit whose final mode solve runs out of passes is not certified (it was: nothing read the state)."""
    from hlmcli.engine.multinomial import MultinomialConditional

    data, res = laplace
    assert res.certificate.certified
    cond = data.conditional(1)
    cond.modes(res.gamma, res.lam)
    assert not cond.unsolved.any()
    cond.b = np.zeros_like(cond.b)
    cond.modes(res.gamma, res.lam, maxit=1)
    assert cond.unsolved.sum() > 0
    posterior = MultinomialConditional.posterior

    def short(self, gamma, lam):  # the final point's posterior, then a mode solve cut to one pass from zero
        out = posterior(self, gamma, lam)
        self.b = np.zeros_like(self.b)
        self.modes(gamma, lam, maxit=1)
        return out

    monkeypatch.setattr(MultinomialConditional, "posterior", short)
    out = fit(data)
    assert not out.certificate.certified
    assert any("was not found" in f for f in out.certificate.failed)
