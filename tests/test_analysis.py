"""After the first table: hypothesis tests, model comparison, ICC, plausible values, residual files,
homogeneity of level-1 variance, full output, and the Makefile example. Each is checked against an
independent computation in the test or a published number."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyreadstat
import pytest
from scipy import stats

from conftest import HSB_MODELS, SAMPLE, hlmcli


_fits: dict = {}


def fit_json(archive, model, *extra):
    """The fit's JSON, a fresh dict each time. A command asked twice runs once: the output is a pure
    function of the archive and the arguments, and each CLI call costs a Python start-up."""
    l1, l2 = HSB_MODELS[model]
    args = ["fit", archive, "-1", l1]
    for e in l2:
        args += ["-2", e]
    key = tuple(map(str, [*args, *extra]))
    if key not in _fits:
        proc = hlmcli(*args, "--format", "json", *extra)
        assert proc.returncode == 0, proc.stderr
        _fits[key] = proc.stdout
    return json.loads(_fits[key])


# ---------------------------------------------------------------- 1. multivariate hypothesis tests

def wald(C, gamma, cov):
    C, g, V = np.asarray(C, float), np.asarray(gamma, float), np.asarray(cov, float)
    d = C @ g
    return float(d @ np.linalg.inv(C @ V @ C.T) @ d)


def test_wald_tests_model_based_and_robust(hsb_archive):
    fit = fit_json(hsb_archive, "hsb_m4", "--test", "γ01 = 0, γ11 = 0", "--test", "g01 - g11 = 0", "--test", "g11 = 0")
    gamma = [f["estimate"] for f in fit["fixed_effects"]]
    first, second, single = fit["hypothesis_tests"]
    C = [[0, 1, 0, 0], [0, 0, 0, 1]]
    assert first["model"]["df"] == 2 and first["robust"]["df"] == 2
    assert first["model"]["chi2"] == pytest.approx(wald(C, gamma, fit["gamma_covariance"]), rel=1e-10)
    assert first["robust"]["chi2"] == pytest.approx(wald(C, gamma, fit["gamma_robust_covariance"]), rel=1e-10)
    assert first["model"]["p"] == pytest.approx(stats.chi2.sf(first["model"]["chi2"], 2), rel=1e-10)
    # one restriction: the Wald χ² is the square of the difference's z (computed here by hand)
    V = np.array(fit["gamma_covariance"])
    z = (gamma[1] - gamma[3]) / np.sqrt(V[1, 1] + V[3, 3] - 2 * V[1, 3])
    assert second["model"]["chi2"] == pytest.approx(z ** 2, rel=1e-10)
    # a single γ: χ² equals the t-ratio squared from the fixed-effects table
    assert single["model"]["chi2"] == pytest.approx(fit["fixed_effects"][3]["t"] ** 2, rel=1e-10)
    assert single["robust"]["chi2"] == pytest.approx(fit["fixed_effects"][3]["robust_t"] ** 2, rel=1e-10)


def test_hypotheses_from_an_hlm_command_file(hsb_archive, tmp_path):
    path = tmp_path / "m4.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+SES,1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+SECTOR+random/\n"
                    "level2:SES=INTRCPT2+SECTOR+random/\nhypoth:y\ngamma1:0,1,0,0\ngamma1:0,0,0,1\n")
    fit = json.loads(hlmcli("fit", hsb_archive, "--model", path, "--format", "json").stdout)
    inline = fit_json(hsb_archive, "hsb_m4", "--test", "g01 = 0, g11 = 0")
    assert fit["hypothesis_tests"][0]["model"]["chi2"] == pytest.approx(inline["hypothesis_tests"][0]["model"]["chi2"], rel=1e-12)
    text = hlmcli("fit", hsb_archive, "--model", path).stdout
    assert "Results of General Linear Hypothesis Testing" in text and "robust" in text


def test_unknown_gamma_in_a_test_is_a_clear_error(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--test", "g05 = 0")
    assert proc.returncode == 1 and "has no γ05" in proc.stderr


# ---------------------------------------------------------------- 2. model comparison

def test_compare_refuses_reml_fits_with_different_fixed_effects(hsb_archive, tmp_path):
    for m in ("hsb_m1", "hsb_m2"):
        (tmp_path / f"{m}.json").write_text(json.dumps(fit_json(hsb_archive, m)))
    proc = hlmcli("compare", tmp_path / "hsb_m1.json", tmp_path / "hsb_m2.json")
    assert proc.returncode == 1 and "refit both with --ml" in proc.stderr


def _save(tmp_path, name, proc):
    assert proc.returncode == 0, proc.stderr
    (tmp_path / name).write_text(proc.stdout)
    return tmp_path / name


def test_compare_refuses_different_centering_under_reml(hsb_archive, tmp_path):
    """group(SES) with a fixed slope against raw SES with a random slope is not a valid REML test."""
    a = _save(tmp_path, "a.json", hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*group(SES) + r", "--format", "json"))
    b = _save(tmp_path, "b.json", hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*SES + r", "-2", "b1 = g10 + u1",
                                         "--format", "json"))
    proc = hlmcli("compare", a, b)
    assert proc.returncode == 1 and "centring included" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_compare_refuses_fits_of_different_data(hsb_archive, popular_archive, tmp_path):
    a = _save(tmp_path, "a.json", hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--format", "json", "--ml"))
    # the same model on the records with SES > 0 only: different data, same names
    b = _save(tmp_path, "b.json", hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*FEMALE + r", "--format", "json", "--ml"))
    data = json.loads(b.read_text())
    data["data_hash"] = "0" * 64
    b.write_text(json.dumps(data))
    proc = hlmcli("compare", a, b)
    assert proc.returncode == 1 and "different records" in proc.stderr


def test_compare_refuses_zero_df_and_negative_chi2(hsb_archive, tmp_path):
    a = _save(tmp_path, "a.json", hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--format", "json", "--ml"))
    proc = hlmcli("compare", a, a)
    assert proc.returncode == 1 and "needs the fuller model to have more" in proc.stderr
    b = json.loads(hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*group(SES) + r", "--format", "json", "--ml").stdout)
    b["deviance"] = json.loads(a.read_text())["deviance"] + 5.0  # a fuller model that fits worse
    (tmp_path / "b.json").write_text(json.dumps(b))
    proc = hlmcli("compare", a, tmp_path / "b.json")
    assert proc.returncode == 1 and "larger deviance" in proc.stderr


def test_fit_refuses_an_impossible_prior_deviance(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--compare-deviance", "10", "--compare-params", "1")
    assert proc.returncode == 1 and "larger deviance" in proc.stderr
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--compare-deviance", "50000", "--compare-params", "2")
    assert proc.returncode == 1 and "needs the fuller model to have more" in proc.stderr


def test_compare_ml_deviance_test_and_variance_reduction(hsb_archive, tmp_path):
    a, b = fit_json(hsb_archive, "hsb_m1", "--ml"), fit_json(hsb_archive, "hsb_m2", "--ml")
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = json.loads(hlmcli("compare", tmp_path / "a.json", tmp_path / "b.json", "--format", "json").stdout)
    assert out["chi2"] == pytest.approx(a["deviance"] - b["deviance"], rel=1e-12)
    assert out["df"] == b["n_params"] - a["n_params"] == 1
    assert out["p"] == pytest.approx(stats.chi2.sf(out["chi2"], 1))
    red = {v["component"]: v["proportion_reduction"] for v in out["variance_reduction"]}
    assert red["INTRCPT1"] == pytest.approx((a["tau"][0][0] - b["tau"][0][0]) / a["tau"][0][0])
    assert red["level-1"] == pytest.approx((a["sigma2"] - b["sigma2"]) / a["sigma2"])


def test_seed_variance_explained_by_meanses(hsb_archive):
    """Seed 003: (8.614 - 2.639) / 8.614 = 0.694 of the between-school variance, from the REML fits."""
    a, b = fit_json(hsb_archive, "hsb_m1"), fit_json(hsb_archive, "hsb_m2")
    assert round((a["tau"][0][0] - b["tau"][0][0]) / a["tau"][0][0], 3) == 0.694


def test_random_slope_test_offers_the_mixture_p(hsb_archive, tmp_path):
    fixed = fit_json(hsb_archive, "hsb_m3")  # random slope; same fixed effects as the model below
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*group(SES) + r", "-2", "b1 = g10", "--format", "json")
    a = json.loads(proc.stdout)
    (tmp_path / "a.json").write_text(proc.stdout)
    (tmp_path / "b.json").write_text(json.dumps(fixed))
    out = json.loads(hlmcli("compare", tmp_path / "a.json", tmp_path / "b.json", "--format", "json").stdout)
    assert out["df"] == 2  # τ11 and τ01
    chi2 = a["deviance"] - fixed["deviance"]
    assert out["chi2"] == pytest.approx(chi2, rel=1e-12)
    assert out["p_mixture"] == pytest.approx(0.5 * stats.chi2.sf(chi2, 1) + 0.5 * stats.chi2.sf(chi2, 2), rel=1e-12)
    # lmerTest's ranova gives LRT 9.7617 on 2 d.f. for this pair (seed 003)
    assert out["chi2"] == pytest.approx(9.7617, abs=2e-3)
    text = hlmcli("compare", tmp_path / "a.json", tmp_path / "b.json").stdout
    assert "naive chi-square" in text and "50:50 mixture" in text


def test_deviance_test_inside_fit(hsb_archive):
    empty = fit_json(hsb_archive, "hsb_m1")
    fit = fit_json(hsb_archive, "hsb_m3", "--compare-deviance", str(empty["deviance"]), "--compare-params", "2")
    t = fit["deviance_test"]
    assert t["chi2"] == pytest.approx(empty["deviance"] - fit["deviance"]) and t["df"] == 2


# ---------------------------------------------------------------- 3. ICC and plausible values

def test_icc_of_the_empty_model(hsb_archive):
    fit = fit_json(hsb_archive, "hsb_m1")
    assert round(fit["icc"], 3) == 0.180  # seed 003: 8.614 / (8.614 + 39.148)
    assert "icc" not in fit_json(hsb_archive, "hsb_m3")


def test_plausible_value_range_of_the_ses_slope(hsb_archive):
    """Seed 003 gives 0.557 to 3.823 from rounded inputs, 2.19 ± 1.96·√0.694; the unrounded
    γ10 = 2.1932 moves both ends by 0.003."""
    fit = fit_json(hsb_archive, "hsb_m3")
    ses = [r for r in fit["plausible_ranges"] if r["coefficient"] == "SES"][0]
    half = 1.96 * np.sqrt(fit["tau"][1][1])
    assert ses["low"] == pytest.approx(fit["fixed_effects"][1]["estimate"] - half, rel=1e-12)
    # "gamma" is the γ's label here as in fixed_effects; its value is "estimate"
    assert ses["gamma"] == fit["fixed_effects"][1]["gamma"] == "γ10" and ses["estimate"] == fit["fixed_effects"][1]["estimate"]
    assert abs(ses["low"] - 0.557) < 0.005 and abs(ses["high"] - 3.823) < 0.005


# ---------------------------------------------------------------- 4. residual files

LME4_RANEF = {  # seed 000, "Ranking": ranef() of lmer(MATHACH ~ 1 + (1 | SCHOOL)) for the first 20 schools
    "1224": -2.6639348, "1288": 0.7394098, "1296": -4.5684656, "1308": 2.9485171, "1317": 0.4939461,
    "1358": -1.2425116, "1374": -2.5023497, "1433": 6.2682432, "1436": 4.9621083, "1461": 3.6965749,
    "1462": -1.9832816, "1477": 1.4828017, "1499": -4.5835763, "1637": -4.8042049, "1906": 3.0819229,
    "1909": 1.5368925, "1942": 4.7323026, "1946": 0.2431299, "2030": -0.5095143, "2208": 2.5728142,
}


def test_eb_intercepts_match_lme4_ranef(hsb_archive, tmp_path):
    out = tmp_path / "l2.csv"
    assert hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--residuals-l2", out).returncode == 0
    table = pd.read_csv(out, dtype={"id": str}).set_index("id")
    for school, value in LME4_RANEF.items():
        assert round(table.loc[school, "u_INTRCPT1"], 4) == round(value, 4)
    assert len(table) == 160
    assert np.allclose(table["eb_INTRCPT1"], table["fitted_INTRCPT1"] + table["u_INTRCPT1"])
    # OLS intercept of an empty model is the school mean, computed here from the raw CSV
    means = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv", dtype={"ID": str}).groupby("ID")["MATHACH"].mean()
    assert np.allclose(table.loc[means.index, "ols_INTRCPT1"], means.to_numpy())


def test_residual_files_in_spss_and_stata(hsb_archive, tmp_path):
    l1, l2 = HSB_MODELS["hsb_m4"]
    args = ["fit", hsb_archive, "-1", l1, "-2", l2[0], "-2", l2[1]]
    assert hlmcli(*args, "--residuals-l2", tmp_path / "r2.sav", "--residuals-l1", tmp_path / "r1.dta").returncode == 0
    r2, _ = pyreadstat.read_sav(str(tmp_path / "r2.sav"))
    r1, _ = pyreadstat.read_dta(str(tmp_path / "r1.dta"))
    assert len(r2) == 160 and len(r1) == 7185
    assert {"u_INTRCPT1", "u_SES", "postvar_SES", "mdist", "SECTOR", "MEANSES"} <= set(r2.columns)
    assert np.allclose(r1["fitted"] + r1["residual"], r1["MATHACH"])
    csv = tmp_path / "r2.csv"
    hlmcli(*args, "--residuals-l2", csv)
    assert np.allclose(pd.read_csv(csv)["u_SES"], r2["u_SES"])


def test_residual_file_names_from_an_hlm_file(hsb_archive, tmp_path):
    path = tmp_path / "m.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nresfil2:y\n"
                    f"resfil2name:{tmp_path / 'res2.csv'}\n")
    assert hlmcli("fit", hsb_archive, "--model", path).returncode == 0
    assert len(pd.read_csv(tmp_path / "res2.csv")) == 160


# ---------------------------------------------------------------- 5. homogeneity of level-1 variance

def test_homogeneity_against_direct_per_unit_ols(hsb_archive):
    fit = fit_json(hsb_archive, "hsb_m3", "--test-homogeneity")
    data = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")
    logs, dofs = [], []
    for _, g in data.groupby("ID", sort=False):
        ses = g["SES"].to_numpy() - g["SES"].mean()
        X = np.column_stack([np.ones(len(g)), ses])
        y = g["MATHACH"].to_numpy()
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        f = len(g) - 2
        if f > 0:
            logs.append(np.log(((y - X @ beta) ** 2).sum() / f))
            dofs.append(f)
    logs, dofs = np.array(logs), np.array(dofs)
    d = (logs - (dofs * logs).sum() / dofs.sum()) / np.sqrt(2 / dofs)
    H = fit["homogeneity"]
    assert H["H"] == pytest.approx((d ** 2).sum(), rel=1e-9)
    assert H["df"] == len(logs) - 1


# ---------------------------------------------------------------- 6. full output

def test_full_output_ols_of_the_first_units(hsb_archive):
    l1, l2 = HSB_MODELS["hsb_m3"]
    proc = hlmcli("fit", hsb_archive, "-1", l1, "-2", l2[0], "-2", l2[1], "--full-output", "--ols-units", "3",
                  "--format", "json")
    full = json.loads(proc.stdout)["full_output"]
    assert [u["unit"] for u in full["ols_units"]] == ["1224", "1288", "1296"]
    g = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv").query("ID == 1288")
    slope, intercept = np.polyfit(g["SES"] - g["SES"].mean(), g["MATHACH"], 1)
    assert full["ols_units"][1]["coefficients"]["SES"] == pytest.approx(slope, rel=1e-9)
    assert full["ols_units"][1]["coefficients"]["INTRCPT1"] == pytest.approx(intercept, rel=1e-9)
    text = hlmcli("fit", hsb_archive, "-1", l1, "-2", l2[0], "-2", l2[1], "--full-output").stdout
    assert "Level-1 OLS regression for level-2 unit 1224" in text and "Least Squares Estimates" in text
    assert text.index("Least Squares Estimates") < text.index("Final Results")
    # the plain stopping line, and with --full-output what was checked, in deviance units
    stop = text.index("Iterations stopped at the optimum (checked: no change of σ2 and τ lowers the deviance)\n")
    assert text[stop:].splitlines()[1].startswith(" Checked: with τ positive definite, the deviance can fall by less than")


def test_full_output_and_homogeneity_from_an_hlm_file(hsb_archive, tmp_path):
    path = tmp_path / "m.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+SES,1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n"
                    "level2:SES=INTRCPT2+random/\nfulloutput:y\nlev1ols:2\nhomvar:y\n")
    fit = json.loads(hlmcli("fit", hsb_archive, "--model", path, "--format", "json").stdout)
    assert len(fit["full_output"]["ols_units"]) == 2
    direct = fit_json(hsb_archive, "hsb_m3", "--test-homogeneity")
    assert fit["homogeneity"]["H"] == pytest.approx(direct["homogeneity"]["H"], rel=1e-12)


def test_residual_file_type_from_an_hlm_file(hsb_archive, tmp_path):
    path = tmp_path / "m.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nresfil2:y\nresfiltype:stata\n")
    assert hlmcli("fit", hsb_archive, "--model", path, cwd=tmp_path).returncode == 0
    table, _ = pyreadstat.read_dta(str(tmp_path / "resfil2.dta"))
    assert len(table) == 160


# ---------------------------------------------------------------- 7. the Makefile example

@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_example_plans_every_step(tmp_path):
    """The fast check (make -n, which runs nothing): each target's command, in an order make accepts. The
    commands themselves are each tested elsewhere; test_makefile_example (slow) runs them all."""
    work = tmp_path / "sample_data"
    shutil.copytree(SAMPLE, work, ignore=shutil.ignore_patterns(".hlmcli-cache", "results", "*.mdm"))
    plan = subprocess.run(["make", "-n", "-C", str(work), "HLMCLI=hlmcli"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    steps = [line for line in plan.stdout.splitlines() if line.startswith("hlmcli ")]
    assert steps[0] == "hlmcli mdm build hsb/hsb1.csv hsb/hsb2.csv --id ID -o hsb.mdm --quiet"
    for m in ("m1_empty", "m2_means", "m3_random_coef", "m4_slopes"):
        assert f"hlmcli fit hsb.mdm --model models/{m}.txt -o results/{m}.txt" in steps
        assert f"hlmcli fit hsb.mdm --model models/{m}.txt --format json -o results/{m}.json" in steps
    ml = [i for i, line in enumerate(steps) if " --ml " in line]
    compare = next(i for i, line in enumerate(steps) if line.startswith("hlmcli compare "))
    assert len(ml) == 2 and max(ml) < compare  # the two ML fits come before the comparison that reads them
    assert steps[-1].startswith("hlmcli table ") and len(steps) == 13


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_example(tmp_path):
    work = tmp_path / "sample_data"
    shutil.copytree(SAMPLE, work, ignore=shutil.ignore_patterns(".hlmcli-cache", "results", "*.mdm"))
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or "hlmcli"
    env = {**os.environ, "HLMCLI": exe}
    run = lambda *a: subprocess.run(["make", "-C", str(work), f"HLMCLI={exe}", *a], capture_output=True, text=True, env=env)
    first = run()
    assert first.returncode == 0, first.stderr
    for m in ("m1_empty", "m2_means", "m3_random_coef", "m4_slopes"):
        assert json.loads((work / "results" / f"{m}.json").read_text())["converged"]
        assert "Final estimation of fixed effects" in (work / "results" / f"{m}.txt").read_text()
    compare = (work / "results" / "compare_m3_m4.txt").read_text()
    # lme4 reaches ML deviance 46633.881 for model 4 (an interior optimum, correlation 0.82), so the
    # comparison with model 3 is chi-square 77.10 and the slope variance falls by 0.646 (the issue)
    assert "Deviance B = 46633.88" in compare and "Chi-square statistic = 77.09" in compare
    assert "SES: 0.67824 -> 0.23984  0.646" in compare and "AIC A =" in compare
    assert run("-q").returncode == 0  # up to date: a second make does nothing
    second = run()
    assert "hlmcli" not in second.stdout
    os.utime(work / "hsb" / "hsb1.csv")
    assert run("-q").returncode == 1
    before = (work / "hsb.mdm").stat().st_mtime_ns
    third = run()
    assert third.returncode == 0 and "mdm build" in third.stdout and "compare" in third.stdout
    assert (work / "hsb.mdm").stat().st_mtime_ns > before
