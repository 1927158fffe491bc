"""Sampling weights and plausible values for two-level HGLMs.

Weights (Laplace and AGQ: multilevel pseudo-maximum likelihood, engine/hglm_weights.py), against
- glmer with whole-number level-1 weights used as given (--normalize none), and glmmTMB with weights
  scaled to n_j (tests/reference_scripts/hglm_weights_glmer.R; glmer rounds non-integer Bernoulli weights
  in its likelihood, see that script), stored in tests/data/hglm_weights/glmer_refs.json;
- an independent pseudo-likelihood with level-1 and level-2 weights (tests/hglm_pseudo.py: Brent modes,
  scipy.integrate.quad, maximised by BFGS and Nelder-Mead in tests/reference_scripts/hglm_weights_pseudo.py),
  stored in pseudo_refs.json, and evaluated afresh at hlmcli's optimum here.
Plausible values: Rubin's rules recomputed here from the formulas and each fit's own numbers, and each
fit against glmer's fit of that plausible value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

import hlmcli
from conftest import DATA, hlmcli as run_cli
from hglm_pseudo import model_cov, pseudo_deviance, sandwich, scaled_weights

D = DATA / "hglm_weights"
FILES = [D / "contraw_l1.csv", D / "contraw_l2.csv"]
RI = ["b0 = g00 + u0", "b1 = g10", "b2 = g20"]
RS = ["b0 = g00 + u0", "b1 = g10 + u1", "b2 = g20"]
LEVEL1 = "USE = b0 + b1*URBAN + b2*AGE"
CLI_MODEL = ["--id", "DISTRICT", "-1", LEVEL1, *[a for eq in RI for a in ("-2", eq)], "--family", "bernoulli"]
GLMER = json.loads((D / "glmer_refs.json").read_text())


def pseudo(name: str) -> dict:
    return json.loads((D / "pseudo_refs.json").read_text())[name]


def _fit(level2=RI, level1=LEVEL1, **kw):
    return hlmcli.fit(*FILES, id="DISTRICT", level1_eq=level1, level2_eqs=level2, family="bernoulli", **kw).analysis


_fits: dict = {}


def fit(name: str):
    """The fits the tests share, each made once."""
    if name not in _fits:
        _fits[name] = {
            "ri_w1i_laplace": lambda: _fit(estimation="laplace", weight1="W1I", normalize="none"),
            "ri_w1i_agq25": lambda: _fit(estimation="agq", quadrature_points=25, weight1="W1I", normalize="none"),
            "rs_w1i_laplace": lambda: _fit(RS, estimation="laplace", weight1="W1I", normalize="none"),
            "ri_w1_tmb": lambda: _fit(estimation="laplace", weight1="W1"),
            "rs_w1_tmb": lambda: _fit(RS, estimation="laplace", weight1="W1"),
            "w12_laplace": lambda: _fit(estimation="laplace", weight1="W1", weight2="W2"),
            # 25 points: the adaptive choice (7 here) is accurate to 1e-6 relative, 2e-3 in this deviance
            "w12_agq": lambda: _fit(estimation="agq", quadrature_points=25, weight1="W1", weight2="W2"),
        }[name]()
    return _fits[name]


def matches(a, ref: dict, est_tol: float, se_tol: float | None = None) -> None:
    """Deviance to 1e-6 (absolute), γ and τ to est_tol (relative), model-based SEs to se_tol."""
    assert a.converged and a.ml.certificate.certified
    assert a.ml.deviance == pytest.approx(ref["deviance"], abs=1e-6)
    assert a.gamma == pytest.approx(list(ref["fixef"].values()), rel=est_tol)
    assert a.tau == pytest.approx(np.array(ref["tau"]), rel=est_tol, abs=est_tol * 1e-2)
    if se_tol is not None:
        assert np.sqrt(np.diag(a.cov)) == pytest.approx(list(ref["se"].values()), rel=se_tol)


# ---------------------------------------------------------------- level-1 weights against glmer and glmmTMB

@pytest.mark.slow  # the default run's check: test_capabilities.py's weights cells (check_weights_cell)
def test_laplace_with_whole_number_level1_weights_is_glmers():
    matches(fit("ri_w1i_laplace"), GLMER["ri_w1i_laplace"], 1e-5, 1e-4)


@pytest.mark.slow  # as above
def test_agq_with_whole_number_level1_weights_is_glmers():
    a = fit("ri_w1i_agq25")
    assert a.ml.nodes == 25
    matches(a, GLMER["ri_w1i_agq25"], 1e-5, 1e-4)


@pytest.mark.slow
def test_laplace_random_slope_with_level1_weights_is_glmers():
    matches(fit("rs_w1i_laplace"), GLMER["rs_w1i_laplace"], 1e-4, 1e-3)


@pytest.mark.slow
def test_scaled_level1_weights_match_glmmtmb():
    """W1 scaled to n_j (not whole numbers): glmmTMB's Laplace, whose binomial likelihood is continuous in
    the weights (its optimizer stops about 2e-5 short in the smallest γ)."""
    matches(fit("ri_w1_tmb"), GLMER["ri_w1_tmb"], 1e-4)
    matches(fit("rs_w1_tmb"), GLMER["rs_w1_tmb"], 1e-4)


# ---------------------------------------------------------------- level-1 and level-2 weights: the independent code

def _independent(a, laplace: bool) -> float:
    """The pseudo-deviance of tests/hglm_pseudo.py at the fit's (γ, τ), weights scaled there from the rule."""
    return _independent_at(a.gamma, float(a.tau[0, 0]), laplace)


def _independent_data():
    """(X, y, unit, w1, w2) of the W1-and-W2 model, weights scaled by tests/hglm_pseudo.py from the rule."""
    frame = pd.read_csv(FILES[0]).merge(pd.read_csv(FILES[1]), on="DISTRICT").sort_values("DISTRICT", kind="stable")
    w1, w2 = scaled_weights(frame, "DISTRICT", "W1", "W2", "cluster")
    unit = np.searchsorted(np.unique(frame.DISTRICT), frame.DISTRICT)
    X = np.column_stack([np.ones(len(frame)), frame.URBAN, frame.AGE])
    return X, frame.USE.to_numpy(float), unit, w1, w2


def _independent_at(gamma, tau: float, laplace: bool) -> float:
    return pseudo_deviance(gamma, tau, *_independent_data(), laplace)


@pytest.mark.parametrize("name,laplace", [("w12_agq", False),
                                          pytest.param("w12_laplace", True, marks=pytest.mark.slow)])  # fast: end to end
def test_level1_and_level2_weights_match_the_independent_pseudo_likelihood(name, laplace):
    a = fit(name)
    ref = pseudo("laplace" if laplace else "exact")
    assert a.converged and a.ml.certificate.certified
    # the same function: the independent code at hlmcli's point gives hlmcli's deviance
    assert _independent(a, laplace) == pytest.approx(a.ml.deviance, abs=1e-6)
    # the same optimum: BFGS and Nelder-Mead on the independent code found no lower point
    assert a.ml.deviance == pytest.approx(ref["deviance"], abs=1e-6)
    assert a.gamma == pytest.approx(ref["gamma"], rel=1e-4)
    assert a.tau[0, 0] == pytest.approx(ref["tau"], rel=1e-4)


def test_the_sandwich_is_the_weighted_unit_scores():
    """All weights 1 (a constant weight column, --normalize none) is the unweighted fit, and its sandwich
    is the unweighted cluster sandwich (CR0, checked against R in test_hglm.py) times J/(J − 1), the
    weighted fits' small-sample factor; the model-based covariance is unchanged."""
    plain = _fit(["b0 = g00 + u0"], "USE = b0 + b1*URBAN", estimation="laplace")
    frame1, frame2 = pd.read_csv(FILES[0]), pd.read_csv(FILES[1])
    frame2["ONE"] = 1.0
    w = hlmcli.fit(frame1, frame2, id="DISTRICT", level1_eq="USE = b0 + b1*URBAN", level2_eqs=["b0 = g00 + u0"],
                   family="bernoulli", estimation="laplace", weight2="ONE", normalize="none").analysis
    J = w.design.n_units
    assert w.gamma == pytest.approx(plain.gamma, rel=1e-7)
    assert w.ml.deviance == pytest.approx(plain.ml.deviance, abs=1e-8)
    assert w.cov == pytest.approx(plain.cov, rel=1e-5)
    assert w.robust_cov == pytest.approx(plain.robust_cov * J / (J - 1), rel=1e-5)


@pytest.mark.slow  # about 2 s; the default run's sandwich check: the test above
@pytest.mark.parametrize("name,w1,w2", [("ri_w1_tmb", "W1", None), ("w12_laplace", "W1", "W2")])
def test_robust_ses_are_the_independent_sandwich(name, w1, w2):
    """The sandwich of the independent code's unit terms w_j log I_j (tests/hglm_pseudo.py: scores and
    Hessian by differences; it reproduces hglm_robust_sandwich.R's numDeriv reference for the unweighted
    contra model to 1e-6), with J/(J − 1): hlmcli's robust SEs to 1e-5."""
    a = fit(name)
    X, y, unit, s1, s2 = _independent_data()
    V = sandwich(a.gamma, float(a.tau[0, 0]), X, y, unit, s1 if w1 else np.ones_like(s1), s2 if w2 else np.ones_like(s2))
    assert np.sqrt(np.diag(a.robust_cov)) == pytest.approx(np.sqrt(np.diag(V))[:3], rel=1e-5)


# ---------------------------------------------------------------- the command line

def test_weighted_fit_end_to_end(tmp_path):
    """One command: the JSON (against the independent pseudo-likelihood) and the text it prints."""
    from hlmcli.report.schemas import first_error

    proc = run_cli("fit", *FILES, *CLI_MODEL, "--estimation", "laplace", "--weight1", "W1", "--weight2", "W2",
                   "--test", "g10 = 0", "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Weighting Specification" in out and "pseudo-maximum likelihood, Laplace" in out
    assert "Pseudo-deviance" in out and "the inverse Hessian of the pseudo-likelihood" in out
    assert "glmer rounds others" in out
    doc = json.loads((tmp_path / "fit.json").read_text())
    assert first_error(doc, "fit") is None
    ref = pseudo("laplace")
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    gamma = [f["estimate"] for f in doc["fixed_effects"]]
    assert _independent_at(gamma, doc["tau"][0][0], True) == pytest.approx(doc["deviance"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-4)
    assert doc["weights"]["level1"] == "W1" and doc["weights"]["level2"] == "W2"
    assert doc["weights"]["normalize"] == "cluster" and doc["weights"]["level2_summary"]["sum"] == pytest.approx(60)
    assert "pseudo-log-likelihood" in doc["covariance_note"]
    (test,) = doc["hypothesis_tests"]  # with sampling weights: the robust Wald test only
    g10 = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ10")
    assert test["model"]["chi2"] is None and test["robust"]["chi2"] == pytest.approx(g10["robust_t"] ** 2, rel=1e-10)


@pytest.mark.parametrize("args,why", [
    (["--weight1", "W1"], "sampling weights in PQL"),  # PQL, the default
    (["--estimation", "laplace", "--weight1", "W1", "--compare-deviance", "2500", "--compare-params", "3"],
     "no likelihood-ratio test"),
])
def test_weighted_refusals_are_one_line(args, why):
    proc = run_cli("fit", *FILES, *CLI_MODEL, *args)
    assert proc.returncode in (1, 2) and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- plausible values

PV_ARGS = ["--id", "DISTRICT", "-1", "PV1 = b0 + b1*URBAN + b2*AGE", *[a for eq in RI for a in ("-2", eq)],
           "--family", "bernoulli", "--plausible-values", "PV*"]


def rubin_by_hand(est: np.ndarray, cov: np.ndarray, dfcom: np.ndarray) -> dict:
    """Rubin (1987) with Barnard & Rubin's (1999) d.f., written out per coefficient."""
    M = est.shape[0]
    qbar = est.mean(axis=0)
    ubar = np.array([np.mean([cov[m][k][k] for m in range(M)]) for k in range(est.shape[1])])
    b = np.array([np.sum((est[:, k] - qbar[k]) ** 2) / (M - 1) for k in range(est.shape[1])])
    t = ubar + (1 + 1 / M) * b
    lam = np.maximum((1 + 1 / M) * b / t, 1e-4)
    nu_old = (M - 1) / lam ** 2
    nu_obs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
    nu = nu_old * nu_obs / (nu_old + nu_obs)
    se = np.sqrt(t)
    return {"estimate": qbar, "se": se, "df": nu, "p": 2 * special.stdtr(nu, -np.abs(qbar / se))}


def assert_rubin_tables(doc: dict, rel: float, fits: list[dict] | None = None) -> None:
    """A combined document's model-based and robust γ tables against Rubin's rules by hand
    (rubin_by_hand) from the fits' own estimates and covariances (its own "fits" unless given), with the
    fits' d.f. as ν_com."""
    fits = doc["fits"] if fits is None else fits
    est = np.array([[f["estimate"] for f in fit["fixed_effects"]] for fit in fits])
    dfcom = np.array([f["df"] for f in fits[0]["fixed_effects"]])
    for key, cov_key in (("fixed_effects", "gamma_covariance"), ("fixed_effects_robust", "gamma_robust_covariance")):
        want = rubin_by_hand(est, np.array([fit[cov_key] for fit in fits]), dfcom)
        for k, row in enumerate(doc[key]):
            for name in ("estimate", "se", "df", "p"):
                assert row[name] == pytest.approx(want[name][k], rel=rel), (key, name, k)

def _check_combined(doc: dict) -> None:
    from hlmcli.report.schemas import first_error

    assert first_error(doc, "combined") is None
    fits = doc["fits"]
    assert_rubin_tables(doc, rel=1e-10)
    tau = np.mean([fit["tau"] for fit in fits], axis=0)
    assert np.array(doc["tau"]) == pytest.approx(tau, rel=1e-12)
    assert doc["reliability"]["INTRCPT1"] == pytest.approx(np.mean([f["reliability"]["INTRCPT1"] for f in fits]))


@pytest.mark.slow
def test_plausible_values_laplace_each_fit_is_glmers_and_combined_by_rubin():
    proc = run_cli("fit", *FILES, *PV_ARGS, "--estimation", "laplace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _check_combined(doc)
    for m, f in enumerate(doc["fits"], start=1):
        # glmmTMB reaches the optimum (deviance 1e-6); glmer's bobyqa stops up to a few 1e-6 above it (PV1:
        # 4.4e-6, also with nloptwrap), so its estimates agree to 1e-4 and its deviance is never below ours
        tmb, ref = GLMER["pv_tmb"][f"PV{m}"], GLMER["pv"][f"PV{m}"]
        assert f["outcome"] == f"PV{m}" and f["deviance"] == pytest.approx(tmb["deviance"], abs=1e-6)
        assert f["deviance"] <= ref["deviance"] + 1e-8
        assert [g["estimate"] for g in f["fixed_effects"]] == pytest.approx(list(ref["fixef"].values()), rel=1e-4)
        # SEs: the Hessian of the independent Laplace deviance (glmer's vcov() is wrong for PV4, see the R script)
        frame = pd.read_csv(FILES[0]).sort_values("DISTRICT", kind="stable")
        unit = np.searchsorted(np.unique(frame.DISTRICT), frame.DISTRICT)
        X = np.column_stack([np.ones(len(frame)), frame.URBAN, frame.AGE])
        gamma = [g["estimate"] for g in f["fixed_effects"]]
        V = model_cov(gamma, f["tau"][0][0], X, frame[f"PV{m}"].to_numpy(float), unit, np.ones(len(frame)),
                      np.ones(60))
        assert [g["se"] for g in f["fixed_effects"]] == pytest.approx(np.sqrt(np.diag(V))[:3], rel=1e-5)
    assert doc["deviance"] == pytest.approx(np.mean([GLMER["pv_tmb"][f"PV{m}"]["deviance"] for m in range(1, 6)]),
                                            abs=1e-6)


def test_imputed_files_with_weights_combined(tmp_path):
    """--imputed: a second level-1 file (PV2 as the outcome column), weighted Laplace; the D1 test, and the text
    with each fit's own (--full-output) from the same command."""
    l1 = pd.read_csv(FILES[0])
    l1["USE"] = l1["PV2"]
    other = tmp_path / "imp2.csv"
    l1.to_csv(other, index=False)
    proc = run_cli("fit", *FILES, *CLI_MODEL, "--estimation", "laplace", "--weight1", "W1I",
                   "--normalize", "none", "--imputed", other, "--test", "g10 = 0", "--full-output",
                   "--json-out", tmp_path / "c.json", "--ascii")
    assert proc.returncode == 0, proc.stderr
    assert all(b < 128 for b in proc.stdout.encode())  # --ascii: pure ASCII, the combining rule included
    doc = json.loads((tmp_path / "c.json").read_text())
    text = proc.stdout
    assert "Results combined over 2 imputed data sets" in text and "Pseudo-deviance (average over the fits)" in text
    assert "Fit 2 of 2: " in text and text.count("Weighting Specification") == 3
    _check_combined(doc)
    assert doc["combining"]["source"] == "imputed data sets" and doc["weights"]["level1"] == "W1I"
    (test,) = doc["hypothesis_tests"]
    assert test["model"] is None and test["robust"]["F"] > 0  # sampling weights: robust only
    assert doc["deviance"] == pytest.approx(np.mean(doc["deviances"]), rel=1e-12)


def test_combined_refusals_are_one_line():
    for args, why in ((["--family", "bernoulli", "--residuals-l2", "r2.csv"], "not available for combined fits"),):
        proc = run_cli("fit", *FILES, *PV_ARGS[:-4], *args, "--estimation", "laplace", "--plausible-values", "PV1,PV2")
        assert proc.returncode in (1, 2) and why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, \
            proc.stderr


# ---------------------------------------------------------------- the capabilities table's cells (test_capabilities.py)

def check_weights_cell(kind: str) -> None:
    """The weights cell of the HGLM Laplace and AGQ columns: glmer with whole-number level-1 weights
    (deviance, γ, τ and the model-based SEs)."""
    extra = ["--estimation", "laplace"] if kind == "laplace" else ["--estimation", "agq", "--quadrature-points", "25"]
    proc = run_cli("fit", *FILES, *CLI_MODEL, *extra, "--weight1", "W1I", "--normalize", "none", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ref = GLMER["ri_w1i_laplace" if kind == "laplace" else "ri_w1i_agq25"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(list(ref["fixef"].values()), rel=1e-5)
    assert [f["se"] for f in doc["fixed_effects"]] == pytest.approx(list(ref["se"].values()), rel=1e-4)
    assert doc["tau"][0][0] == pytest.approx(ref["tau"][0][0], rel=1e-5)
    assert doc["weights"]["level1"] == "W1I" and doc["weights"]["normalize"] == "none"


def check_plausible_values_cell(kind: str) -> None:
    """The plausible-values cell of the HGLM columns: two plausible values, Rubin's rules by hand."""
    extra = {"pql": [], "laplace": ["--estimation", "laplace"],
             "agq": ["--estimation", "agq", "--quadrature-points", "7"]}[kind]
    proc = run_cli("fit", *FILES, *PV_ARGS[:-1], "PV1,PV2", *extra, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _check_combined(doc)
    assert doc["estimation"] == kind and len(doc["fits"]) == 2 and doc["combining"]["outcomes"] == ["PV1", "PV2"]
    assert doc["sigma2"] is None  # a 0/1 outcome has no level-1 variance
    if kind == "pql":  # no deviance to average, and the fits' own fixed-point checks
        assert doc["deviance"] is None and doc["method"] == "REML"
        assert all(f["estimation"] == "pql" and f["fixed_point"]["passed"] for f in doc["fits"])
    else:
        assert doc["deviance"] == pytest.approx(np.mean([f["deviance"] for f in doc["fits"]]), rel=1e-12)


# ---------------------------------------------------------------- three levels (PQL)

H3 = DATA / "hglm3"
GROUSE_PV_MODEL = ["--id2", "BROOD", "--id3", "LOCATION", "-1", "PV1 = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
                   "-3", "b00 = g000 + g001*CHEIGHT + u00", "-3", "b01 = g010", "-3", "b02 = g020", "--family", "poisson"]


def grouse_pv_files(d: Path, m: int = 3) -> list[Path]:
    """grouseticks with m plausible values of TICKS (TICKS plus a whole number in -2..2, floored at 0)."""
    rng = np.random.default_rng(7)
    l1 = pd.read_csv(H3 / "grouse_l1.csv")
    for k in range(1, m + 1):
        l1[f"PV{k}"] = np.maximum(l1.TICKS + rng.integers(-2, 3, len(l1)), 0)
    l1.to_csv(d / "g1.csv", index=False)
    for k in (2, 3):
        (d / f"g{k}.csv").write_text((H3 / f"grouse_l{k}.csv").read_text())
    return [d / "g1.csv", d / "g2.csv", d / "g3.csv"]


def _check_combined_levels(doc: dict, fits: list[dict]) -> None:
    """A combined K-level document against Rubin's rules recomputed from the fits' documents `fits`."""
    from hlmcli.report.schemas import first_error_file

    assert first_error_file(doc, "combined-levels.json") is None
    assert_rubin_tables(doc, rel=1e-9, fits=fits)
    assert doc["deviance"] is None and doc["hglm"]["estimation"] == "pql"


def test_three_level_pql_plausible_values(tmp_path):
    files = grouse_pv_files(tmp_path, 2)
    proc = run_cli("fit", *files, *GROUSE_PV_MODEL, "--plausible-values", "PV1,PV2", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _check_combined_levels(doc, doc["fits"])
    assert all(f["hglm"]["fixed_point"]["passed"] for f in doc["fits"])


@pytest.mark.slow
def test_three_level_pql_plausible_values_from_separate_fits(tmp_path):
    """Rubin's rules recomputed from three separate fits (the API, one plausible value each), and the
    imputed-files path (the same data sets as files) giving the same combined numbers."""
    files = grouse_pv_files(tmp_path, 3)
    proc = run_cli("fit", *files, *GROUSE_PV_MODEL, "--plausible-values", "PV*", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    separate = [hlmcli.fit(files[0], files[1], level3=files[2], id2="BROOD", id3="LOCATION", level1_eq=f"PV{k} = p0",
                           level2_eqs=["p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0"],
                           level3_eqs=["b00 = g000 + g001*CHEIGHT + u00", "b01 = g010", "b02 = g020"],
                           family="poisson", warn=lambda m: None).to_dict() for k in (1, 2, 3)]
    _check_combined_levels(doc, separate)
    l1 = pd.read_csv(files[0])
    imputed = []
    for k in (1, 2, 3):
        path = tmp_path / f"imp{k}.csv"
        l1.assign(TICKS=l1[f"PV{k}"]).to_csv(path, index=False)
        imputed.append(path)
    model = [a if a != "PV1 = p0" else "TICKS = p0" for a in GROUSE_PV_MODEL]
    proc = run_cli("fit", imputed[0], *files[1:], *model, "--imputed", f"{imputed[1]},{imputed[2]}", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    other = json.loads(proc.stdout)
    assert [r["estimate"] for r in other["fixed_effects_robust"]] == pytest.approx(
        [r["estimate"] for r in doc["fixed_effects_robust"]], rel=1e-10)
