"""The linear engine on the paths where a local certificate, a location-dependent computation or an
uncentred cross-product used to mislead: the global check across faces, collinearity judged on
centred columns, Satterthwaite d.f. free of a predictor's location, and the deviance of data with
large means.

References (tests/data/linear_gaps/, made by tests/reference_scripts/linear_gaps_*.{py,R}):
lme4.json from lme4 / lmerTest with tightened optimizers, exact.json from rational arithmetic.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, hlmcli, rel

GAPS = DATA / "linear_gaps"
LME4 = json.loads((GAPS / "lme4.json").read_text())
EXACT = json.loads((GAPS / "exact.json").read_text())

GLOBAL = [GAPS / "global_l1.csv", GAPS / "global_l2.csv", "--id", "id", "-1", "y = b0 + b1*year + b2*x + r",
          "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "-2", "b2 = g20 + u2", "--ml"]
BIGMEAN_EQS = ["-1", "y = b0 + b1*x1 + b2*date + r", "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + g11*w"]
BIGMEAN = [GAPS / "bigmean_l1.csv", GAPS / "bigmean_l2.csv", "--id", "id", *BIGMEAN_EQS]


def fit_json(*args):
    proc = hlmcli("fit", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), proc.stderr


# ---------------------------------------------------------------- 1. the global check

def test_a_certified_local_minimum_above_tau_zero_is_left_for_tau_zero():
    """J = 3, q = 3, ML, uncentred year: a rank-2 τ at 90.295208 is a genuine local minimum (the
    local certificate held there), but τ = 0 gives 90.293312: the OLS deviance, in exact rational
    arithmetic, and lme4's Nelder–Mead optimum."""
    fit, err = fit_json(*GLOBAL)
    assert fit["converged"]
    assert rel(fit["deviance"], EXACT["global"]["ml_deviance_tau0"]) < 1e-10
    assert rel(fit["deviance"], LME4["global"]["ols_ml_deviance"]) < 1e-10
    assert fit["deviance"] <= LME4["global"]["criterion"] + 1e-9
    assert np.abs(np.array(fit["tau"])).max() == 0.0
    assert "variance of u0 is estimated as zero" in err
    text = hlmcli("fit", *GLOBAL).stdout
    assert "at the optimum (checked: " in text and "90.293312" in text


def test_lower_faces_are_the_candidates_the_check_tries():
    from hlmcli.engine.estimation import lower_faces

    G = np.diag([3.0, 2.0, 0.0])
    faces = lower_faces(G, diagonal=False, rank=2)
    assert [np.linalg.matrix_rank(F) for F in faces] == [0, 1]
    assert np.allclose(faces[1], np.diag([3.0, 0.0, 0.0]))
    diag = lower_faces(G, diagonal=True, rank=2)
    assert sorted(tuple(np.diag(F)) for F in diag) == [(0, 0, 0), (0, 2, 0), (3, 0, 0)]
    assert [np.linalg.matrix_rank(F) for F in lower_faces(np.eye(3), False, 3)] == [0]  # interior: τ = 0 only


# ---------------------------------------------------------------- 2 and 4. large means

@pytest.mark.parametrize("method", ["REML", "ML"])
def test_large_mean_predictors_are_fitted_and_the_deviance_is_exact(method):
    """x1 = 1e5 ± 10, a Julian date, w = 1e5 ± 1 and x1·w (about 1e10): once refused as "a linear
    combination of the intercept" (and lme4 fails on the raw columns: "Downdated VtV is not positive
    definite"). The deviance matches rational arithmetic at lme4's optimum (fitted on centred
    columns, the same criterion) to 1e-12, and the estimates match lme4."""
    fit, _ = fit_json(*BIGMEAN, *(["--ml"] if method == "ML" else []))
    ref, exact = LME4["bigmean"][method], EXACT["bigmean"][method]
    assert fit["converged"]
    assert rel(fit["deviance"], exact["deviance"]) < 1e-12
    assert fit["deviance"] <= ref["criterion"] + 1e-9 and rel(fit["deviance"], ref["criterion"]) < 1e-10
    assert rel(fit["sigma2"], ref["sigma2"]) < 1e-6
    assert rel(fit["tau"][0][0], ref["tau"]["id"][0][0]) < 1e-6
    gammas = {f["gamma"]: f["estimate"] for f in fit["fixed_effects"]}
    # the slopes are the same parameters on centred columns; the others move with the centring
    assert rel(gammas["γ11"], ref["fixef"]["wc:x1c"]) < 1e-6
    assert rel(gammas["γ20"], ref["fixef"]["datec"]) < 1e-6


def _with_column(tmp_path, name, values_of):
    """bigmean's level-1 file with one more column computed from each record."""
    lines = (GAPS / "bigmean_l1.csv").read_text().splitlines()
    head = lines[0].split(",")
    out = [lines[0] + "," + name]
    for line in lines[1:]:
        rec = dict(zip(head, line.split(",")))
        out.append(line + "," + repr(values_of(rec)))
    path = tmp_path / "l1.csv"
    path.write_text("\n".join(out) + "\n")
    return [path, GAPS / "bigmean_l2.csv", "--id", "id"]


def test_a_true_combination_with_large_means_is_still_refused(tmp_path):
    data = _with_column(tmp_path, "x2", lambda r: 3.0 * float(r["x1"]) - 7.0)
    proc = hlmcli("fit", *data, "-1", "y = b0 + b1*x1 + b2*x2 + r", "-2", "b0 = g00 + u0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "γ20 (INTRCPT2 for x2) is a linear combination of γ00 (INTRCPT2 for INTRCPT1), γ10" in proc.stderr


def test_a_constant_column_is_a_combination_of_the_intercept(tmp_path):
    data = _with_column(tmp_path, "k", lambda r: 2460311.5)
    proc = hlmcli("fit", *data, "-1", "y = b0 + b1*x1 + b2*k + r", "-2", "b0 = g00 + u0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "γ20 (INTRCPT2 for k) is constant, a multiple of γ00 (INTRCPT2 for INTRCPT1)" in proc.stderr


def test_residual_shares_do_not_depend_on_location_or_scale():
    """1 − R² of each column from the Gram matrix: the same for x and 1e6·x + 2460311 (hand-made
    columns: x2 is x1 plus a little noise, so 1 − R² is small but clearly positive). A mean that
    large against the spread of the column judged would cost that Gram matrix its digits (the
    reported noise says so); the fit judges internally centred columns (centring.py)."""
    from hlmcli.data.design import COLLINEAR_TOL, residual_shares

    rng = np.random.default_rng(1)
    x1 = rng.standard_normal(200)
    x2 = x1 + 1e-3 * rng.standard_normal(200)
    base = np.column_stack([np.ones(200), x1, x2])
    moved = np.column_stack([np.ones(200), 1e6 * x1 + 2460311.0, 1e-3 * x2 - 0.005])
    s0, _, _ = residual_shares(base.T @ base, 0)
    s1, noise, constant = residual_shares(moved.T @ moved, 0)
    r2 = np.corrcoef(x1, x2)[0, 1] ** 2
    assert s0[2] == pytest.approx(1 - r2, rel=1e-9)
    assert s1[2] == pytest.approx(1 - r2, rel=1e-6)
    assert noise[2] < 1e-3 * s1[2] and s1[2] > COLLINEAR_TOL and not constant.any()
    far = np.column_stack([np.ones(200), x1, x2 + 1e5])
    s2, noise2, _ = residual_shares(far.T @ far, 0)
    assert noise2[2] > 1e-6  # 1e5 against a spread of 1: the Gram matrix kept about 6 digits of x2's variation


# ---------------------------------------------------------------- 3. Satterthwaite at a boundary

def test_satterthwaite_df_at_a_boundary_do_not_depend_on_centring():
    """A REML fit with correlation −1 and a random year slope. lmerTest's own d.f. of the year's
    slope move with the centring (58.73 uncentred, 85.82 centred: the Cholesky factor of a singular
    τ is not smooth in τ's coordinates); hlmcli's are 85.82 either way, lmerTest's centred answer,
    and the uncentred intercept's d.f. are lmerTest's for that contrast of the centred fit."""
    ref = LME4["satt"]
    out = {}
    for year in ("year", "yearc"):
        fit, err = fit_json(GAPS / "satt_l1.csv", GAPS / "satt_l2.csv", "--id", "id", "-1", f"y = b0 + b1*{year} + r",
                            "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "--df", "satterthwaite")
        assert fit["converged"] and "correlation of u0 and u1 is estimated as -1" in err
        assert rel(fit["deviance"], ref[year]["criterion"]) < 1e-10
        out[year] = [f["df"] for f in fit["fixed_effects"]]
    assert rel(out["year"][1], out["yearc"][1]) < 1e-8
    assert rel(out["yearc"][1], ref["yearc"]["satterthwaite_df"]["yearc"]) < 1e-6
    assert rel(out["yearc"][0], ref["yearc"]["satterthwaite_df"]["(Intercept)"]) < 1e-6
    assert rel(out["year"][0], ref["yearc"]["uncentred_intercept_df"]) < 1e-6


def test_satterthwaite_df_of_a_rank2_ml_fit_do_not_depend_on_centring():
    """Stress case 399 (benchmarks/stress.py: J = 4, q = 3, ML, a year of mean 2000 and SD 10 with a
    random slope; the optimum has a rank-2 τ and a weakly determined direction). The Newton steps on
    the face used to stop where the next decrease fell below the deviance's rounding noise, so the
    centred and uncentred fits ended 1e-6 apart along that direction and the d.f. moved by 5.8e-6;
    the optimum is now pinned down on the gradient, and the d.f. agree to 1e-6 (invariance: centring
    the year is an exact reparametrisation, as every equation has an intercept)."""
    from hlmcli.engine.centring import centred_model
    from hlmcli.engine.estimation import fit
    from hlmcli.analysis.inference import satterthwaite_df
    from hlmcli.engine.sufficient import model_stats, unit_cross_products

    raw = np.loadtxt(GAPS / "case399_l1.csv", delimiter=",", skiprows=1)
    unit, year, x, y = raw.T
    offsets = np.r_[0, np.flatnonzero(np.diff(unit)) + 1, unit.size]
    J = offsets.size - 1
    B = np.repeat(np.eye(3)[None], J, axis=0)
    random = np.ones(3, bool)
    df = []
    for yr in (year, year - year.mean()):
        L = np.column_stack([np.ones_like(yr), yr, x])
        ucp = unit_cross_products(L, y, offsets)
        stats = model_stats(ucp, B, random)
        res = fit(stats, "ML", centred=centred_model(L, y - ucp.y_shift, offsets, B, random, True))
        assert res.converged and res.certificate.rank == 2
        df.append(satterthwaite_df(stats, ucp, res))
    assert np.all(np.abs(df[0][1:] - df[1][1:]) <= 1e-6 * np.abs(df[1][1:])), df
