"""PQL for ordinal and multinomial outcomes (--estimation pql, HLM 7's method; engine/categorical_pql.py):
the working variates and weights against their definitions, M = 2 against Bernoulli PQL, the fits against
an independent implementation of the same iteration in R (tests/data/categorical_pql/*.json, made by
tests/reference_scripts/categorical_pql.R: its own working vectors and its own ML/REML of the working model,
iterated to 1e-10), and the CLI's text, JSON, residual files and refusals."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

from conftest import DATA, ROOT, hlmcli
from hlmcli.engine.categorical_pql import CategoricalPQLData, fit

C = DATA / "categorical_pql"
O = DATA / "ordinal"
M = DATA / "multinomial"
REF = {f["name"] + "/" + f["method"] + "/" + f["link"]: f
       for f in (json.loads(path.read_text()) for path in sorted(C.glob("*-*-*.json")))}
SCHEMA = json.loads((ROOT / "hlmcli" / "schema" / "fit-2.json").read_text())
WINE = [O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "-1", "rating = b0 + b1*warm + b2*contact",
        "-2", "b0 = g00 + u0", "-2", "b1 = g10", "-2", "b2 = g20", "--family", "ordinal", "--estimation", "pql"]
SIM = [M / "sim_l1.csv", M / "sim_l2.csv", "--id", "school", "-1", "choice = b0 + b1*x", "-2", "b0 = g00 + g01*w + u0",
       "-2", "b1 = g10", "--family", "multinomial", "--estimation", "pql"]


def design(name):
    """(codes, L, B, offsets, random columns, categories) of a reference data set, units in id order; the
    fixed effects as the R script orders them (intercept, level-2 predictors, then the level-1 slopes')."""
    if name == "wine":
        d = pd.read_csv(O / "wine_l1.csv").sort_values("judge", kind="stable")
        ids, y, cols, rnd = d.judge.values, d.rating.values, [d.warm.values, d.contact.values], [0]
    elif name == "soup":
        d = pd.read_csv(O / "soup_l1.csv").merge(pd.read_csv(O / "soup_l2.csv"), on="resp")
        d = d.sort_values("resp", kind="stable")
        ids, y, cols, rnd = d.resp.values, d.sureness.values, [d.test.values, d.male.values], [0]
    elif name in ("contraception", "contraception3"):
        d = pd.read_csv(C / "contraception_l1.csv").sort_values("district", kind="stable")
        y = d.livch.values if name == "contraception" else d.livch3.values
        ids, cols = d.district.values, [d.age.values, d.urban.values]
        rnd = [0, 2] if name == "contraception" else [0]
    else:  # sim: choice ~ w (level 2) + x, g00, g01, g10
        d = pd.read_csv(M / "sim_l1.csv").merge(pd.read_csv(M / "sim_l2.csv"), on="school")
        d = d.sort_values("school", kind="stable")
        ids, y, cols, rnd = d.school.values, d.choice.values, [d.w.values, d.x.values], [0]
    L = np.column_stack([np.ones(len(d))] + cols)
    units, offs = np.unique(ids, return_index=True)
    B = np.broadcast_to(np.eye(L.shape[1]), (units.size, L.shape[1], L.shape[1])).copy()
    return y.astype(np.int64), L, B, np.append(offs, len(d)), np.array(rnd), int(y.max())


def engine_fit(name, kind, method="REML", link="logit"):
    y, L, B, offs, rnd, ncat = design(name)
    return fit(CategoricalPQLData(kind, ncat, y, L, B, offs, rnd, link), reml=method == "REML")


def check_against_r(res, ref):
    """Estimates and τ to 1e-6 (relative to max(1, |value|)), model-based SEs to 1e-6 relative."""
    assert res.converged and res.check is not None and res.check.passed, res.failed
    assert res.gamma == pytest.approx(ref["gamma"], rel=1e-6, abs=1e-6)
    assert res.tau == pytest.approx(np.array(ref["tau"]).reshape(res.tau.shape), rel=1e-6, abs=1e-6)
    assert np.sqrt(np.diag(res.cov)) == pytest.approx(ref["se"], rel=1e-6)


# ------------------------------------------------------------------ the linearisation

def _dense_working(kind, ncat, codes, eta, link="logit"):
    """z and W per record from the definitions: μ, D = ∂μ/∂η' by central differences of μ, Σ the
    indicators' covariance, z = η + D⁻¹(y − μ), W = D'Σ⁻¹D (no closed forms)."""
    from scipy.special import expit, ndtr

    F = expit if link == "logit" else ndtr

    def mu(e):
        if kind == "ordinal":
            return F(e)
        p = np.exp(np.append(e, 0.0))
        return (p / p.sum())[:-1]

    m1 = ncat - 1
    Z, Ws = [], []
    for y, e in zip(codes, eta):
        m = mu(e)
        D = np.column_stack([(mu(e + h) - mu(e - h)) / 2e-6 for h in np.eye(m1) * 1e-6])
        if kind == "ordinal":
            ind = (y <= np.arange(1, m1 + 1)).astype(float)
            S = np.array([[m[min(a, b)] * (1 - m[max(a, b)]) for b in range(m1)] for a in range(m1)])
        else:
            ind = (y == np.arange(1, m1 + 1)).astype(float)
            S = np.diag(m) - np.outer(m, m)
        Z.append(e + np.linalg.solve(D, ind - m))
        Ws.append(D.T @ np.linalg.solve(S, D))
    return np.array(Z), np.array(Ws)


@pytest.mark.parametrize("kind,link", [("ordinal", "logit"), ("ordinal", "probit"), ("multinomial", "logit")])
def test_working_variates_match_their_definition(kind, link):
    rng = np.random.default_rng(3)
    ncat, n = 4, 12
    codes = np.tile(np.arange(1, ncat + 1), n // ncat)
    eta = rng.normal(size=(n, ncat - 1))
    if kind == "ordinal":
        eta = np.sort(0.7 * eta, axis=1) + 0.5 * np.arange(ncat - 1) - 0.5  # ordered cumulative predictors
    L = np.ones((n, 1))
    d = CategoricalPQLData(kind, ncat, codes, L, np.ones((1, 1, 1)), np.array([0, n]), np.array([0]), link)
    z, W = d.working_variates(eta)
    z0, W0 = _dense_working(kind, ncat, codes, eta, link)
    assert z == pytest.approx(z0, rel=1e-7, abs=1e-7)
    assert W == pytest.approx(W0, rel=1e-7, abs=1e-9)


def _bernoulli_pair(kind):
    """A small random-intercept-and-slope binary data set, fitted by Bernoulli PQL and by `kind` with M = 2."""
    from hlmcli.engine.family import family
    from hlmcli.engine.hglm import GLMData, pql

    rng = np.random.default_rng(11)
    J, nj = 25, 10
    N = J * nj
    unit = np.repeat(np.arange(J), nj)
    x, w = rng.normal(size=N), rng.normal(size=J)
    L = np.column_stack([np.ones(N), x])
    B = np.zeros((J, 2, 3))
    B[:, 0, 0], B[:, 0, 1], B[:, 1, 2] = 1.0, w, 1.0
    u = rng.normal(size=(J, 2)) * [0.9, 0.5]
    eta = 0.2 + 0.5 * w[unit] + 0.7 * x + u[unit, 0] + u[unit, 1] * x
    y = (rng.random(N) < 1 / (1 + np.exp(-eta))).astype(float)
    offs, rnd = np.arange(0, N + 1, nj), np.array([0, 1])
    bern = pql(GLMData(family("bernoulli"), L, B, offs, rnd, y), population_average=False)
    two = fit(CategoricalPQLData(kind, 2, np.where(y == 1, 1, 2), L, B, offs, rnd))
    return bern, two


@pytest.mark.parametrize("kind", ["ordinal", "multinomial"])
def test_two_categories_are_bernoulli_pql(kind):
    """M = 2: both working models are Bernoulli's on 1{Y = 1} (same start, same z and W), so the fit is
    Bernoulli PQL's to rounding: γ, τ, SEs and EB effects."""
    bern, two = _bernoulli_pair(kind)
    assert bern.converged and two.converged and two.check.passed
    assert two.macro_iterations == bern.macro_iterations
    assert two.gamma == pytest.approx(bern.gamma, rel=1e-10, abs=1e-12)
    assert two.tau == pytest.approx(bern.tau, rel=1e-10, abs=1e-12)
    assert two.cov == pytest.approx(bern.cov, rel=1e-9)
    assert two.b == pytest.approx(bern.b, rel=1e-9, abs=1e-12)


# ------------------------------------------------------------------ against the independent R iteration

@pytest.mark.parametrize("key", ["wine/ML/logit", "wine/REML/probit", "sim/ML/logit"])
def test_engine_matches_r(key):
    ref = REF[key]
    check_against_r(engine_fit(ref["name"], ref["family"], ref["method"], ref["link"]), ref)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["soup/REML/logit", "contraception/REML/logit", "contraception3/REML/logit"])
def test_engine_matches_r_larger_data(key):
    """Soup (1,847 records, 6 categories), Contraception's children (1,934 women in 60 districts; 4 ordered
    categories with a random urban slope; 3 categories as a multinomial)."""
    ref = REF[key]
    check_against_r(engine_fit(ref["name"], ref["family"], ref["method"], ref["link"]), ref)


# ------------------------------------------------------------------ the command line

def test_cli_ordinal_pql(tmp_path):
    """wine by restricted PQL, as a user types it: the JSON against R's iteration (γ, the thresholds
    δ(m) = c_m − c_{m−1} as HLM 7's THRESHOLD m, τ), the fixed point checked, no deviance; the text says so;
    the EB residual file is written."""
    ref = REF["wine/REML/logit"]
    res2 = tmp_path / "eb.csv"
    proc = hlmcli("fit", *WINE, "--format", "json", "--residuals-l2", res2, "-o", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "fit.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["estimation"] == "pql" and doc["method"] == "REML" and doc["converged"]
    assert doc["fixed_point"]["checked"] and doc["fixed_point"]["passed"]
    assert doc["deviance"] is None and "population_average" not in doc
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"][:3], rel=1e-6, abs=1e-6)
    assert [f["se"] for f in doc["fixed_effects"]] == pytest.approx(ref["se"][:3], rel=1e-6)
    cuts = np.array(ref["gamma"][3:])
    assert [t["name"] for t in doc["thresholds"]] == ["THRESHOLD2", "THRESHOLD3", "THRESHOLD4"]
    assert [t["estimate"] for t in doc["thresholds"]] == pytest.approx(np.diff(np.r_[0.0, cuts]), rel=1e-6, abs=1e-6)
    assert doc["tau"][0][0] == pytest.approx(np.ravel(ref["tau"])[0], rel=1e-6)
    eb = pd.read_csv(res2)
    assert len(eb) == 9 and "u_INTRCPT1" in eb.columns
    text = hlmcli("fit", *WINE)
    assert text.returncode == 0, text.stderr
    for s in ("restricted PQL, level-1 scale fixed at 1", "PQL converged to a fixed point (checked)",
              "For  THRESHOLD2, δ(2)", "Deviance: none", "no R package fits an ordinal mixed model by PQL"):
        assert s in text.stdout, s


def test_cli_multinomial_pql(tmp_path):
    """The simulated schools by restricted PQL, one call: γ of both logits and τ over them against R's
    iteration (JSON), the text's claims (fixed point checked, no deviance), the level-1 residual file."""
    ref = REF["sim/REML/logit"]
    proc = hlmcli("fit", *SIM, "--json-out", tmp_path / "fit.json", "--residuals-l1", tmp_path / "r1.csv")
    assert proc.returncode == 0, proc.stderr
    for s in ("restricted PQL, level-1 scale fixed at 1", "PQL converged to a fixed point (checked)",
              "Category 1 (log-odds against category 3)", "Deviance: none"):
        assert s in proc.stdout, s
    assert "NOT" not in proc.stdout
    doc = json.loads((tmp_path / "fit.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["estimation"] == "pql" and doc["converged"] and doc["fixed_point"]["passed"]
    assert doc["deviance"] is None and doc["certificate"] is None
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-6, abs=1e-6)
    assert np.array(doc["tau"]) == pytest.approx(np.array(ref["tau"]).reshape(2, 2), rel=1e-6, abs=1e-6)
    r1 = pd.read_csv(tmp_path / "r1.csv")
    assert {"eta_1", "eta_2", "p_1", "p_2", "p_3"} <= set(r1.columns) and len(r1) == 240
    proc = hlmcli("compare", tmp_path / "fit.json", tmp_path / "fit.json")  # no deviance: refused in one line
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "PQL has no deviance" in proc.stderr


def test_pql_claims_no_fixed_point_it_did_not_reach(tmp_path):
    """One macro iteration (macroit:1): not converged, so exit 3 with the reason and no output written."""
    cmd = tmp_path / "m.hlm"
    cmd.write_text("#WHLM CMD FILE\nnonlin:ordinal,5\nmacroit:1,y\nlevel1:RATING=INTRCPT1+WARM+CONTACT\n"
                   "level2:INTRCPT1=INTRCPT2+random/\nlevel2:WARM=INTRCPT2/\nlevel2:CONTACT=INTRCPT2/\n")
    out = tmp_path / "fit.txt"
    proc = hlmcli("fit", O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "--model", cmd, "-o", out)
    assert proc.returncode == 3, proc.stderr
    assert "did not converge in 1" in proc.stderr and not out.exists()


def test_pql_has_no_deviance_to_compare(tmp_path):
    proc = hlmcli("fit", *SIM, "--compare-deviance", "500", "--compare-params", "2")
    assert proc.returncode == 2 and "PQL has none" in proc.stderr and "Traceback" not in proc.stderr
