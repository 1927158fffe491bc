"""Sampling weights and plausible values for the three-level HGLM by Laplace (engine/nested_laplace_weights.py,
analysis/hglm_levels.py).

References:
1. An independent pseudo-likelihood written here (DensePseudo): each level-3 unit's random effects in one
   dense vector, the weighted joint mode by dense Newton, and the Laplace approximation of
   Σ_k w_k log ∫ φ(u3) Π_j [∫ φ(u2) exp(Σ_i w_i ℓ_i) du2]^{w_j} du3 from the inner integrals' Laplace terms
   (log|A_j| weighted by w_j) and the outer curvature log|S_k| = log|H_k| − Σ_j log(w_j A_j) from the dense
   Hessian H_k of the weighted joint log density; the weights scaled by the "cluster" rule written out
   here again. At our estimates its deviance must be ours and its gradient zero; its SEs (the inverse
   difference Hessian, and the sandwich of the level-3 units' difference scores with J/(J − 1)) ours; and
   (slow) scipy's BFGS from zero must find our optimum.
2. lme4::glmer and glmmTMB with whole-number level-1 weights as weights= (a 0/1 outcome's binomial
   likelihood with prior weight w is w·log f) and the per-plausible-value fits, on the simulated data and
   on a public data set, lme4's grouseticks with three plausible values of TICKS (slow)
   (tests/reference_scripts/hglm3_weights_glmer.R, tests/data/hglm3_weights/glmer_refs.json).
3. Hand computations: all weights 1 give the unweighted fit; whole-number weights at all three levels
   give the fit of the replicated records and units (slow); Rubin's rules and D1 recomputed from the fits.
The data: tests/reference_scripts/hglm3_weights_data.py (349 pupils, 69 classes, 24 schools).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

D = DATA / "hglm3_weights"
FILES = [D / f"bern_l{k}.csv" for k in (1, 2, 3)]
MODEL = ["--id2", "CLASS", "--id3", "SCHOOL", "-1", "Y = p0 + p1*X", "-2", "p0 = b00 + b01*W + r0", "-2", "p1 = b10",
         "-3", "b00 = g000 + g001*Z + u00", "-3", "b01 = g010", "-3", "b10 = g100", "--family", "bernoulli",
         "--estimation", "laplace"]
WEIGHTS = ["--weight1", "W1", "--weight2", "W2", "--weight3", "W3"]
REF = json.loads((D / "glmer_refs.json").read_text())
R_NAMES = ["(Intercept)", "Z", "W", "X"]  # γ000, γ001, γ010, γ100


def _frame() -> pd.DataFrame:
    l1 = pd.read_csv(FILES[0], dtype={"CLASS": str})
    l2 = pd.read_csv(FILES[1], dtype={"CLASS": str, "SCHOOL": str})
    l3 = pd.read_csv(FILES[2], dtype={"SCHOOL": str})
    return l1.merge(l2, on="CLASS").merge(l3, on="SCHOOL")


class DensePseudo:
    """The Laplace pseudo-deviance from the merged records (module docstring), parameters
    x = (σ2, σ3, γ000, γ001, γ010, γ100) with τπ = σ2², τβ = σ3²."""

    def __init__(self, frame: pd.DataFrame, y: str = "Y", w=("W1", "W2", "W3"), cluster: bool = True):
        self.units = []
        w3 = frame.groupby("SCHOOL", sort=True)[w[2]].first()
        if cluster:  # level-3 weights to sum to J3
            w3 = w3 * (len(w3) / w3.sum())
        for school, rec in frame.groupby("SCHOOL", sort=True):
            classes = list(dict.fromkeys(rec.CLASS))
            w2 = rec.groupby("CLASS", sort=False)[w[1]].first().reindex(classes).to_numpy(float)
            if cluster:  # level-2 weights to sum to the school's number of classes
                w2 = w2 * (len(classes) / w2.sum())
            j = np.array([classes.index(c) for c in rec.CLASS])
            w1 = rec[w[0]].to_numpy(float)
            if cluster:  # level-1 weights to sum to each class's number of records
                sums, counts = np.bincount(j, weights=w1), np.bincount(j)
                w1 = w1 * (counts / sums)[j]
            X = np.column_stack([np.ones(len(rec)), rec.Z, rec.W, rec.X])
            self.units.append(dict(X=X, y=rec[y].to_numpy(float), j=j, m=len(classes), w1=w1, w2=w2,
                                   w3=float(w3[school])))
        self.J3 = len(self.units)

    @staticmethod
    def unit_loglik(u, x) -> float:
        """log of level-3 unit u's pseudo-likelihood, Laplace-approximated, without the factor w3."""
        s2, s3, gamma = x[0], x[1], np.asarray(x[2:])
        m, j, w1, w2 = u["m"], u["j"], u["w1"], u["w2"]
        Z = np.zeros((len(j), m + 1))
        Z[np.arange(len(j)), j] = s2
        Z[:, m] = s3
        c = w1 * w2[j]  # each record's weight in the joint log density F
        prior = np.r_[w2, 1.0]  # −½ Σ_j w_j u2_j² − ½ u3²
        base = u["X"] @ gamma
        v = np.zeros(m + 1)

        def F(v):
            eta = base + Z @ v
            return float(np.sum(c * (u["y"] * eta - np.logaddexp(0.0, eta))) - 0.5 * np.sum(prior * v * v))

        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-(base + Z @ v)))
            g = Z.T @ (c * (u["y"] - p)) - prior * v
            H = np.diag(prior) + Z.T @ ((c * p * (1 - p))[:, None] * Z)
            step = np.linalg.solve(H, g)
            t, f0 = 1.0, F(v)
            while F(v + t * step) < f0 - 1e-13 and t > 1e-8:
                t /= 2
            v = v + t * step
            if np.max(np.abs(t * step)) < 1e-13:
                break
        p = 1.0 / (1.0 + np.exp(-(base + Z @ v)))
        W = p * (1 - p)
        H = np.diag(prior) + Z.T @ ((c * W)[:, None] * Z)
        logA = np.log1p(s2 ** 2 * np.bincount(j, weights=w1 * W, minlength=m))  # A_j = 1 + σ2² Σ_i w_i W_i
        logS = np.linalg.slogdet(H)[1] - np.sum(np.log(w2) + logA)  # H's Schur complement on u3
        return F(v) - 0.5 * np.sum(w2 * logA) - 0.5 * logS

    def deviance(self, x) -> float:
        return -2.0 * sum(u["w3"] * self.unit_loglik(u, x) for u in self.units)

    def scores(self, x, h=1e-5) -> np.ndarray:
        """Each level-3 unit's weighted score w_k ∂log L_k/∂x, by central differences."""
        S = np.zeros((self.J3, len(x)))
        for a in range(len(x)):
            e = np.zeros(len(x))
            e[a] = h
            S[:, a] = [u["w3"] * (self.unit_loglik(u, x + e) - self.unit_loglik(u, x - e)) / (2 * h)
                       for u in self.units]
        return S

    def hessian(self, x, h=1e-3) -> np.ndarray:
        n = len(x)
        f0 = self.deviance(x)
        H = np.zeros((n, n))
        E = np.eye(n) * h
        for a in range(n):
            H[a, a] = (self.deviance(x + E[a]) - 2 * f0 + self.deviance(x - E[a])) / h ** 2
            for b in range(a):
                H[a, b] = H[b, a] = (self.deviance(x + E[a] + E[b]) - self.deviance(x + E[a] - E[b])
                                     - self.deviance(x - E[a] + E[b]) + self.deviance(x - E[a] - E[b])) / (4 * h * h)
        return H


def _point(doc: dict) -> np.ndarray:
    return np.r_[np.sqrt(doc["tau_pi"]["matrix"][0][0]), np.sqrt(doc["tau_beta"]["matrix"][0][0]),
                 [f["estimate"] for f in doc["fixed_effects"]]]


@pytest.fixture(scope="module")
def weighted(tmp_path_factory):
    """The weighted fit as a user types it, with a Wald test and --json-out: (JSON, text)."""
    out = tmp_path_factory.mktemp("w3") / "fit.json"
    proc = hlmcli("fit", *FILES, *MODEL, *WEIGHTS, "--test", "g001 = 0", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_weighted_fit_against_the_independent_pseudo_likelihood(weighted):
    """Our pseudo-deviance is the independent one at our estimates (1e-9), and they are its optimum: its
    gradient there (central differences of the level-3 units' terms) is zero to 1e-4, which at its
    curvature moves no estimate by more than ~1e-6."""
    doc, _ = weighted
    assert doc["converged"] and doc["certificate"]["certified"]
    dense = DensePseudo(_frame())
    x = _point(doc)
    assert dense.deviance(x) == pytest.approx(doc["deviance"], rel=1e-9)
    assert np.max(np.abs(-2.0 * dense.scores(x).sum(axis=0))) < 1e-4


@pytest.mark.slow
def test_weighted_standard_errors_against_the_independent_pseudo_likelihood(weighted):
    """Our model-based SEs (the inverse Hessian of the pseudo-likelihood) and sandwich SEs (the level-3
    units' weighted scores, J3/(J3 − 1)) against the independent ones from its difference Hessian and
    difference scores (1e-3); a Newton step of that Hessian moves our estimates by less than 1e-5. (3 s.)"""
    doc, _ = weighted
    dense = DensePseudo(_frame())
    x = _point(doc)
    H = dense.hessian(x)
    S = dense.scores(x)
    assert np.max(np.abs(np.linalg.solve(H, -2.0 * S.sum(axis=0)))) < 1e-5
    Ainv = np.linalg.inv(H / 2)
    robust = dense.J3 / (dense.J3 - 1) * Ainv @ S.T @ S @ Ainv
    se = [f["se"] for f in doc["fixed_effects"]]
    rse = [f["robust_se"] for f in doc["fixed_effects"]]
    assert se == pytest.approx(np.sqrt(np.diag(Ainv))[2:], rel=1e-3)
    assert rse == pytest.approx(np.sqrt(np.diag(robust))[2:], rel=1e-3)


def test_weighted_fit_as_typed(weighted):
    """The report says what the fit is: the weights and their scaling, the pseudo-deviance, which SEs to
    report; a Wald test with the robust covariance only; the weights in the JSON."""
    doc, text = weighted
    assert doc["weights"]["normalize"] == "cluster" and [v["variable"] for v in doc["weights"]["levels"]] == \
        ["W1", "W2", "W3"]
    assert doc["weights"]["levels"][2]["summary"]["sum"] == pytest.approx(24.0, rel=1e-12)
    for line in ("Weighting Specification", " Level 3          yes       W3            yes",
                 f"Pseudo-deviance = {doc['deviance']:.6f}", "not for likelihood-ratio tests",
                 "(sandwich of the weighted level-3 unit scores, J3/(J3-1): the standard errors to report)",
                 "(model-based: the inverse Hessian of the pseudo-likelihood"):
        assert line in text, line
    assert "Deviance = " not in text
    test = doc["hypothesis_tests"][0]
    assert test["model"]["chi2"] is None and test["robust"]["chi2"] == pytest.approx(
        (doc["fixed_effects"][1]["estimate"] / doc["fixed_effects"][1]["robust_se"]) ** 2, rel=1e-9)


@pytest.mark.slow
def test_independent_maximisation():
    """scipy's BFGS on the independent pseudo-deviance, from γ = 0 and σ = 1, reaches our optimum: deviance
    1e-6, estimates 1e-4. (About 20 s.)"""
    from scipy.optimize import minimize

    proc = hlmcli("fit", *FILES, *MODEL, *WEIGHTS, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    dense = DensePseudo(_frame())
    res = minimize(lambda z: dense.deviance(np.r_[np.exp(z[:2]), z[2:]]), np.zeros(6), method="BFGS",
                   options={"gtol": 1e-8})
    x = np.r_[np.exp(res.x[:2]), res.x[2:]]
    assert doc["deviance"] <= res.fun + 1e-9 * abs(res.fun)
    assert doc["deviance"] == pytest.approx(res.fun, rel=1e-6)
    assert _point(doc) == pytest.approx(x, abs=1e-4)


def _r_matches(doc: dict, ref: dict, names=R_NAMES) -> None:
    """One fit against glmer and glmmTMB: the deviance within 1e-6 of the better one's and not above it;
    γ to 1e-4 of max(|γ|, SE) of that one; the SEs to 1e-3 of glmmTMB's (TMB's exact Hessian)."""
    g, t = ref["glmer"], ref["glmmTMB"]
    best = g if g["deviance"] <= t["deviance"] else t
    assert doc["deviance"] <= best["deviance"] + 1e-9 * abs(best["deviance"])
    assert doc["deviance"] == pytest.approx(best["deviance"], rel=1e-6, abs=0)
    for f, name in zip(doc["fixed_effects"], names, strict=True):
        assert abs(f["estimate"] - best["gamma"][name]) <= 1e-4 * max(abs(best["gamma"][name]), t["se"][name]), name
        assert f["se"] == pytest.approx(t["se"][name], rel=1e-3), name


def test_whole_number_level1_weights_against_glmer():
    """--weight1 W1I --normalize none: glmer's and glmmTMB's weights= fits."""
    proc = hlmcli("fit", *FILES, *MODEL, "--weight1", "W1I", "--normalize", "none", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["certificate"]["certified"]
    _r_matches(doc, REF["weighted_W1I"])


@pytest.fixture(scope="module")
def plausible(tmp_path_factory):
    """--plausible-values PV1,PV2,PV3 with two --test, as typed: (JSON, text)."""
    out = tmp_path_factory.mktemp("pv3") / "pv.json"
    model = [a if a != "Y = p0 + p1*X" else "PV1 = p0 + p1*X" for a in MODEL]
    proc = hlmcli("fit", *FILES, *model, "--plausible-values", "PV1,PV2,PV3", "--test", "g010 = 0, g100 = 0",
                  "--test", "g001 = 0", "--json-out", out, "--full-output")
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_all_weights_one_is_the_unweighted_fit(plausible):
    """Weights of 1 at every level give the unweighted fit (the first plausible value's, Y = PV1), to
    rounding."""
    proc = hlmcli("fit", *FILES, *MODEL, "--weight1", "ONE1", "--weight2", "ONE2", "--weight3", "ONE3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc, plain = json.loads(proc.stdout), plausible[0]["fits"][0]
    assert doc["deviance"] == pytest.approx(plain["deviance"], rel=1e-12)
    for key in ("estimate", "se", "robust_se"):
        want = [f[key] for f in plain["fixed_effects"]]
        # the robust SEs differ by the weighted fits' factor J3/(J3 − 1) only
        factor = np.sqrt(24 / 23) if key == "robust_se" else 1.0
        assert [f[key] for f in doc["fixed_effects"]] == pytest.approx(np.array(want) * factor, rel=1e-9), key
    for key in ("tau_pi", "tau_beta"):
        assert np.array(doc[key]["matrix"]) == pytest.approx(np.array(plain[key]["matrix"]), rel=1e-9), key


def test_plausible_values_rubin_and_d1_by_hand(plausible):
    """Each plausible value's fit against glmer and glmmTMB; Rubin's rules (model-based and robust) and
    the D1 tests recomputed from the fits' own numbers (1e-9); the averaged deviance; the text."""
    from test_hglm_weights import assert_rubin_tables
    from hlmcli.report.schemas import first_error_file

    doc, text = plausible
    assert first_error_file(doc, "combined-levels.json") is None
    fits = doc["fits"]
    for fit, pv in zip(fits, ("PV1", "PV2", "PV3")):
        assert fit["certificate"]["certified"]
        _r_matches(fit, REF[pv])
    assert_rubin_tables(doc, rel=1e-9)
    assert_d1_tests(doc)
    assert doc["deviance"] == pytest.approx(np.mean([f["deviance"] for f in fits]), rel=1e-12)
    assert doc["hglm"]["estimation"] == "laplace" and doc["weights"] is None
    tau = np.mean([f["tau_beta"]["matrix"] for f in fits], axis=0)
    assert np.array(doc["taus"][1]) == pytest.approx(tau, rel=1e-12)
    for line in ("Results combined over 3 plausible values", f"Deviance (average over the fits) = {doc['deviance']:.6f}",
                 "Laplace approximation to the likelihood", "combined over the fits: g001 = 0", "Fit 3 of 3: PV3"):
        assert line in text, line
    assert "(average over the fits) =      1.00000" not in text  # no level-1 variance for a 0/1 outcome


@pytest.mark.slow
def test_weighted_plausible_values(tmp_path):
    """Plausible values with weights at all three levels: each fit is the weighted one of its outcome
    (the first against the weighted fit of Y = PV1), the D1 test robust only, the pseudo-deviance."""
    model = [a if a != "Y = p0 + p1*X" else "PV1 = p0 + p1*X" for a in MODEL]
    proc = hlmcli("fit", *FILES, *model, *WEIGHTS, "--plausible-values", "PV1,PV2,PV3", "--test", "g001 = 0",
                  "--json-out", tmp_path / "pv.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "pv.json").read_text())
    one = json.loads(hlmcli("fit", *FILES, *MODEL, *WEIGHTS, "--format", "json").stdout)
    assert doc["fits"][0]["deviance"] == pytest.approx(one["deviance"], rel=1e-12)
    assert doc["weights"]["normalize"] == "cluster" and doc["hypothesis_tests"][0]["model"] is None
    assert "Pseudo-deviance (average over the fits)" in proc.stdout and "Weighting Specification" in proc.stdout


def _replicated(tmp_path) -> list:
    """The files with each record repeated W1I times, each class (with its records, under a new id) W2I
    times and each school (with its classes) W3I times: WeMix's definition of whole-number weights."""
    l1 = pd.read_csv(FILES[0], dtype={"CLASS": str})
    l2 = pd.read_csv(FILES[1], dtype={"CLASS": str, "SCHOOL": str})
    l3 = pd.read_csv(FILES[2], dtype={"SCHOOL": str})
    l1 = l1.loc[l1.index.repeat(l1.W1I)]
    r3 = l3.loc[l3.index.repeat(l3.W3I)].copy()
    r3["NEW3"] = r3.SCHOOL + "_" + r3.groupby("SCHOOL").cumcount().astype(str)
    r2 = l2.loc[l2.index.repeat(l2.W2I)].copy()
    r2["NEW2"] = r2.CLASS + "_" + r2.groupby("CLASS").cumcount().astype(str)
    r2 = r2.merge(r3[["SCHOOL", "NEW3"]], on="SCHOOL")
    r2["NEW2"] = r2.NEW2 + "_" + r2.NEW3
    r1 = l1.merge(r2[["CLASS", "NEW2"]], on="CLASS")
    paths = [tmp_path / f"rep{k}.csv" for k in (1, 2, 3)]
    r1.drop(columns="CLASS").rename(columns={"NEW2": "CLASS"}).to_csv(paths[0], index=False)
    r2.drop(columns=["CLASS", "SCHOOL"]).rename(columns={"NEW2": "CLASS", "NEW3": "SCHOOL"}).to_csv(paths[1], index=False)
    r3.drop(columns="SCHOOL").rename(columns={"NEW3": "SCHOOL"}).to_csv(paths[2], index=False)
    return paths


@pytest.mark.slow
def test_whole_number_weights_at_three_levels_are_replication(tmp_path):
    """--weight1 W1I --weight2 W2I --weight3 W3I --normalize none: the unweighted fit of the replicated
    files (deviance to 1e-9, γ and τ to 1e-6, the model-based SEs to 1e-5)."""
    proc = hlmcli("fit", *FILES, *MODEL, "--weight1", "W1I", "--weight2", "W2I", "--weight3", "W3I", "--normalize",
                  "none", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rep = hlmcli("fit", *_replicated(tmp_path), *MODEL, "--format", "json")
    assert rep.returncode == 0, rep.stderr
    ref = json.loads(rep.stdout)
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-9)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx([f["estimate"] for f in ref["fixed_effects"]],
                                                                          rel=1e-6)
    # the SEs come from a difference Hessian of the exact gradient (steps 1e-5): good to ~1e-6 in each fit
    assert [f["se"] for f in doc["fixed_effects"]] == pytest.approx([f["se"] for f in ref["fixed_effects"]], rel=1e-5)
    for key in ("tau_pi", "tau_beta"):
        assert np.array(doc[key]["matrix"]) == pytest.approx(np.array(ref[key]["matrix"]), rel=1e-6), key


def test_refusals():
    """A likelihood-ratio test of a weighted fit, and weights with PQL, each refused in one line."""
    proc = hlmcli("fit", *FILES, *MODEL, "--weight1", "W1", "--compare-deviance", "300", "--compare-params", "4")
    assert proc.returncode == 1 and "no likelihood-ratio test is possible" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    pql = [a if a != "laplace" else "pql" for a in MODEL]
    proc = hlmcli("fit", *FILES, *pql, "--weight1", "W1")
    assert proc.returncode == 2 and "how HLM 7 weights it is not documented" in proc.stderr, proc.stderr


def test_search_restarts_from_a_false_boundary():
    """restart_l*.csv: the first Newton search ends at τπ = 0, where the Cholesky coordinates have no
    gradient into the cone; the certificate finds the descent and the search restarts inside the cone,
    to glmer's and glmmTMB's optimum (τπ = 0.064), certified. (The weighted fits share this search.)"""
    files = [D / f"restart_l{k}.csv" for k in (1, 2, 3)]
    proc = hlmcli("fit", *files, *MODEL, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["certificate"]["certified"] and doc["certificate"]["rank"] == [1, 1]
    _r_matches(doc, REF["restart"])
    ref = REF["restart"]["glmmTMB"]["tau"]
    assert doc["tau_pi"]["matrix"][0][0] == pytest.approx(ref["CLASS:SCHOOL"], rel=1e-4)
    assert doc["tau_beta"]["matrix"][0][0] == pytest.approx(ref["SCHOOL"], rel=1e-4)


def test_api_takes_the_weights_of_every_level(weighted):
    """hlmcli.fit(..., weight1=, weight2=, weight3=) is the command line's fit; weight3 on a two-level model
    is refused in one line."""
    import hlmcli as api
    from hlmcli.errors import ModelError

    doc, _ = weighted
    res = api.fit(*FILES[:2], level3=FILES[2], id2="CLASS", id3="SCHOOL", level1_eq="Y = p0 + p1*X",
                  level2_eqs=["p0 = b00 + b01*W + r0", "p1 = b10"], level3_eqs=["b00 = g000 + g001*Z + u00", "b01 = g010",
                                                                           "b10 = g100"],
                  family="bernoulli", estimation="laplace", weight1="W1", weight2="W2", weight3="W3", warn=lambda m: None)
    mine = res.to_dict()
    assert mine["deviance"] == doc["deviance"] and mine["fixed_effects"] == doc["fixed_effects"]
    assert mine["weights"] == doc["weights"]
    with pytest.raises(ModelError, match="weight3 and weight4 are for three- and four-level models"):
        api.fit(*FILES[:2], id="CLASS", level1_eq="Y = b0", level2_eqs=["b0 = g00 + u0"], weight3="W3")


@pytest.mark.slow
def test_plausible_values_of_a_public_data_set(tmp_path):
    """lme4's grouseticks with three plausible values of TICKS (hglm3_grouse_pv_data.py), Poisson by Laplace:
    each fit against glmer and glmmTMB (deviance 1e-6); Rubin's rules by hand; --imputed with the same
    three data sets as files gives the same combined numbers."""
    from test_hglm_weights import rubin_by_hand

    h3 = DATA / "hglm3"
    files = [D / "grouse_pv_l1.csv", h3 / "grouse_l2.csv", h3 / "grouse_l3.csv"]
    model = ["--id2", "BROOD", "--id3", "LOCATION", "-1", "PV1 = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
             "-3", "b00 = g000 + g001*CHEIGHT + u00", "-3", "b01 = g010", "-3", "b02 = g020", "--family", "poisson",
             "--estimation", "laplace"]
    proc = hlmcli("fit", *files, *model, "--plausible-values", "PV1,PV2,PV3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for fit, pv in zip(doc["fits"], ("PV1", "PV2", "PV3")):
        assert fit["certificate"]["certified"]
        _r_matches(fit, REF[f"grouse_{pv}"], ["(Intercept)", "CHEIGHT", "YEAR96", "YEAR97"])
    est = np.array([[f["estimate"] for f in fit["fixed_effects"]] for fit in doc["fits"]])
    dfcom = np.array([f["df"] for f in doc["fits"][0]["fixed_effects"]])
    want = rubin_by_hand(est, np.array([fit["gamma_robust_covariance"] for fit in doc["fits"]]), dfcom)
    for k, row in enumerate(doc["fixed_effects_robust"]):
        for name in ("estimate", "se", "df", "p"):
            assert row[name] == pytest.approx(want[name][k], rel=1e-9), (name, k)
    l1 = pd.read_csv(files[0], dtype={"INDEX": str, "BROOD": str})
    imputed = []
    for k in (1, 2, 3):
        imputed.append(tmp_path / f"imp{k}.csv")
        l1.assign(TICKS=l1[f"PV{k}"]).to_csv(imputed[-1], index=False)
    typed = [a if a != "PV1 = p0" else "TICKS = p0" for a in model]
    proc = hlmcli("fit", imputed[0], *files[1:], *typed, "--imputed", f"{imputed[1]},{imputed[2]}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout)
    for key in ("fixed_effects", "fixed_effects_robust"):
        assert [r["se"] for r in other[key]] == pytest.approx([r["se"] for r in doc[key]], rel=1e-10)
    assert other["deviance"] == pytest.approx(doc["deviance"], rel=1e-12)


def assert_d1_tests(doc: dict, both_columns: tuple = (2, 3)) -> None:
    """The combined document's two --test lines (two γs = 0, by default γ010 and γ100 of four, then the
    second γ alone) against D1 by hand (test_plausible.d1_by_hand) from its fits, model-based and robust;
    for one γ, D1 is the square of the combined table's t-ratio."""
    from test_plausible import d1_by_hand

    fits = doc["fits"]
    both, one = doc["hypothesis_tests"]
    C = np.eye(len(doc["fixed_effects"]))[list(both_columns)]
    for kind, cov in (("model", "gamma_covariance"), ("robust", "gamma_robust_covariance")):
        F, nu, p, r = d1_by_hand(fits, C, cov)
        assert both[kind]["F"] == pytest.approx(F, rel=1e-9) and both[kind]["df1"] == 2
        assert both[kind]["df2"] == pytest.approx(nu, rel=1e-9) and both[kind]["riv"] == pytest.approx(r, rel=1e-9)
        assert both[kind]["p"] == pytest.approx(p, rel=1e-6)
    assert one["model"]["F"] == pytest.approx(doc["fixed_effects"][1]["t"] ** 2, rel=1e-9)
