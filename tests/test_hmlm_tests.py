"""HMLM's tests on the structured fit: --test (Wald χ² of γ), --compare-deviance, `hlmcli compare` of two HMLM
fits, and plausible values combined by Rubin's rules, all of the structured model the user asked for, not of
the homogeneous model printed first.

References (tests/data/hmlm/hmlm_tests_nlme.json, made by tests/reference_scripts/hmlm_tests_nlme.R): nlme's
ML fits of Early (with missing occasions, COG ~ AGE·TRT, a random intercept) with σ² by occasion, AR(1),
homogeneous, and gls's unrestricted Δ; their fixef, vcov, logLik d.f. and anova() between two structures.
The Wald χ² is computed here by hand from nlme's fixef and vcov. Plausible values: tests/data/hmlm/early_pv1.csv
is early1.csv with PV1..PV3 = COG + N(0, 3²) noise (numpy seed 1, rounded to 3 decimals); Rubin's rules by hand
(test_hglm_weights.assert_rubin_tables) from each fit's structured γ and covariance.

Standard errors of the covariance parameters (τ00, σ², σ²_t, ρ, Δ_st): nlme's apVar carried to these parameters
by the delta method (tests/data/hmlm/hmlm_apvar_nlme.json, tests/reference_scripts/hmlm_apvar_nlme.R), with
apVar's Hessian taken by numDeriv's Richardson extrapolation of nlme's own log-likelihood function: they agree
to 2e-6 (nlme's estimates agree to 2.5e-6). nlme's default apVar (its fdHess, steps of relative size 6e-6) is
stored too and differs by up to 6.6% (AR(1), ML) from both: the inaccuracy is fdHess's, so it is not the
reference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hlmcli.errors import DataError
from conftest import hlmcli as run_cli
from test_hmlm import D

NLME = json.loads((D / "hmlm_tests_nlme.json").read_text())
APVAR = json.loads((D / "hmlm_apvar_nlme.json").read_text())
OURS = ["γ00", "γ01", "γ10", "γ11"]
R_INDEX = {"γ00": 0, "γ10": 1, "γ01": 2, "γ11": 3}  # nlme's (Intercept), AGE, TRT, AGE:TRT
EQS = ["-1", "COG = b0 + b1*AGE + r", "-2", "b0 = g00 + g01*TRT + u0", "-2", "b1 = g10 + g11*TRT"]
FILES = [D / "early1.csv", D / "early2.csv", "--id", "ID"]


def structured_fit(structure: str, path, *more):
    proc = run_cli("fit", *FILES, *EQS, "--ml", "--level1-covariance", structure, "--occasion", "OCC",
                   "--json-out", path, *more)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(path.read_text())


def wald_by_hand(ref: dict, gammas: list[str], rhs=None) -> float:
    """(Cγ - d)'(C V C')⁻¹(Cγ - d) from nlme's fixef and vcov."""
    C = np.zeros((len(gammas), 4))
    for row, g in enumerate(gammas):
        C[row, R_INDEX[g]] = 1.0
    r = C @ np.array(ref["fixef"]) - (0.0 if rhs is None else np.array(rhs))
    return float(r @ np.linalg.solve(C @ np.array(ref["vcov"]) @ C.T, r))


@pytest.fixture(scope="module")
def heterogeneous(tmp_path_factory):
    """σ² by occasion (ML) with two Wald tests and a deviance test against nlme's unrestricted fit: one call."""
    prior = NLME["unrestricted"]
    return structured_fit("heterogeneous", tmp_path_factory.mktemp("het") / "het.json",
                          "--test", "g01 = 0, g11 = 0", "--test", "g10 = -20",
                          "--compare-deviance", repr(prior["deviance"]), "--compare-params", str(prior["df"]))


def test_wald_and_deviance_tests_are_the_structured_models(heterogeneous):
    """--test: the Wald χ² of the heterogeneous model's γ with its model-based covariance, nlme's by hand to
    1e-6; no robust test (no sandwich), said so. --compare-deviance: nlme's anova() of heterogeneous against
    unrestricted (χ² to 1e-6), the parameters counted as nlme does (4 γ + τ00 + 3 σ²_t = 8). The top level
    (the homogeneous model) carries neither test."""
    proc, doc = heterogeneous
    ref = NLME["heterogeneous"]
    v = doc["level1_covariance"]
    assert v["deviance"] == pytest.approx(ref["deviance"], abs=1e-6) and v["n_params"] == ref["df"]
    assert "hypothesis_tests" not in doc and "deviance_test" not in doc
    (both, one) = v["hypothesis_tests"]
    assert both["model"]["chi2"] == pytest.approx(wald_by_hand(ref, ["γ01", "γ11"]), rel=1e-6)
    assert both["model"]["df"] == 2
    assert one["model"]["chi2"] == pytest.approx(wald_by_hand(ref, ["γ10"], [-20.0]), rel=1e-6)
    assert both["robust"]["chi2"] is None and "no sandwich" in both["covariance"]
    t = v["deviance_test"]
    lr = next(a for a in NLME["anova"] if a["models"] == ["heterogeneous", "unrestricted"])
    assert t["chi2"] == pytest.approx(lr["chi2"], abs=1e-6) and t["df"] == lr["df"] == 2
    assert t["p"] == pytest.approx(lr["p"], rel=1e-5)
    text = proc.stdout.split("Tests of the heterogeneous model")[1]
    assert f"{both['model']['chi2']:.6f}" in text and f"{t['chi2']:.6f}" in text and "no sandwich" in text
    # lmer's formula printed after the structured model's tests is the homogeneous model's, and says so
    assert "The homogeneous model in R (lme4" in text and "The same model in R" not in text


def check_variance_parameters(v: dict, key: str) -> None:
    """The table of τ's and Δ's parameters against nlme's apVar (Richardson Hessian), estimates and SEs to
    1e-5 relative."""
    ref = APVAR[f"{key}_richardson"]
    table = v["variance_parameters"]
    assert [p["estimate"] for p in table] == pytest.approx(ref["estimate"], rel=1e-5)
    assert [p["se"] for p in table] == pytest.approx(ref["se"], rel=1e-5)


def test_standard_errors_of_the_covariance_parameters(heterogeneous):
    """σ² by occasion, ML: τ00, σ²_1..σ²_3 and their SEs against nlme's apVar; printed in the text."""
    proc, doc = heterogeneous
    v = doc["level1_covariance"]
    assert [p["parameter"] for p in v["variance_parameters"]] == ["tau00", "sigma2_1", "sigma2_2", "sigma2_3"]
    check_variance_parameters(v, "heterogeneous_ML")
    assert f"{v['variance_parameters'][3]['se']:.5f}" in proc.stdout.split("Covariance parameters")[1]


@pytest.mark.slow
@pytest.mark.parametrize("key", sorted(k for k in APVAR if not k.endswith("richardson")))
def test_standard_errors_of_the_covariance_parameters_every_structure(key):
    """Every structure, ML and REML (the REML deviance's Hessian, as apVar's REML log-likelihood). (1 s each)"""
    import hlmcli

    structure, method = key.split("_")
    doc = hlmcli.fit(D / "early1.csv", D / "early2.csv", id="ID", level1_eq=EQS[1], level2_eqs=[EQS[3], EQS[5]],
                     method=method, level1_covariance=structure, occasion="OCC").to_dict()
    check_variance_parameters(doc["level1_covariance"], key)


def test_compare_tests_the_structured_deviances(heterogeneous, tmp_path):
    """`hlmcli compare` of the heterogeneous and the unrestricted fit (ML): nlme's anova() χ² to 1e-6 and
    nlme's parameter counts (8, T(T+1)/2 + 4 = 10); the files' homogeneous deviances are not used. Refused (the
    same documents altered): a REML fit against an ML one, fits of different records, REML fits of different
    fixed effects, a structured fit whose optimum was not checked."""
    _, het = heterogeneous
    het_path = tmp_path / "het.json"
    het_path.write_text(json.dumps(het))
    _, un = structured_fit("unrestricted", tmp_path / "un.json", "-q")
    proc = run_cli("compare", het_path, tmp_path / "un.json", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    lr = next(a for a in NLME["anova"] if a["models"] == ["heterogeneous", "unrestricted"])
    assert r["chi2"] == pytest.approx(lr["chi2"], abs=1e-6) and r["df"] == lr["df"]
    assert (r["n_params_a"], r["n_params_b"]) == (NLME["heterogeneous"]["df"], NLME["unrestricted"]["df"])
    assert r["deviance_b"] == pytest.approx(NLME["unrestricted"]["deviance"], abs=1e-6)
    assert r["structures"] == ["heterogeneous", "unrestricted"] and r["p_mixture"] is None
    from hlmcli.report.compare import compare_fits

    with pytest.raises(DataError, match="is REML and .* is ML"):
        compare_fits(dict(het, method="REML"), un, "a.json", "b.json")
    with pytest.raises(DataError, match="different records"):
        compare_fits(dict(het, data_hash="0" * 16), un, "a.json", "b.json")
    reml = lambda doc, **more: dict(doc, method="REML", **more)  # noqa: E731
    with pytest.raises(DataError, match="different fixed effects .* REML deviances"):
        compare_fits(reml(het), reml(un, fixed_effects=un["fixed_effects"][:3]), "a.json", "b.json")
    failed = dict(het, level1_covariance=dict(het["level1_covariance"], check={"converged": False}))
    with pytest.raises(DataError, match="a.json is not a certified optimum"):
        compare_fits(failed, un, "a.json", "b.json")


def test_plausible_values_combine_the_structured_fits(tmp_path):
    """Three plausible values, σ² by occasion: one structured fit per PV (each one's own document under
    "fits"; the text under --ascii pure ASCII, its combining rule included), Rubin's rules on their γ and model-based covariance by hand, Δ and τ averaged; --test by D1 on
    the structured γ (model-based only)."""
    from test_hglm_weights import assert_rubin_tables

    proc = run_cli("fit", D / "early_pv1.csv", D / "early2.csv", "--id", "ID", *EQS, "--ml",
                   "--level1-covariance", "heterogeneous", "--occasion", "OCC", "--plausible-values", "PV1,PV2,PV3",
                   "--test", "g01 = 0, g11 = 0", "--ascii", "--json-out", tmp_path / "pv.json")
    assert proc.returncode == 0, proc.stderr
    assert "Combining rule: " in proc.stdout and all(b < 128 for b in proc.stdout.encode())  # --ascii: pure ASCII
    doc = json.loads((tmp_path / "pv.json").read_text())
    c = doc["level1_covariance"]
    fits = [f["level1_covariance"] for f in doc["fits"]]
    assert [f["outcome"] for f in doc["fits"]] == ["PV1", "PV2", "PV3"] and c["m"] == 3
    assert all(f["check"]["converged"] for f in fits) and c["converged"]
    assert len({round(f["deviance"], 6) for f in fits}) == 3  # three different fits
    for f in fits:
        f["gamma_robust_covariance"] = f["gamma_covariance"]
    assert_rubin_tables({"fixed_effects": c["fixed_effects"], "fixed_effects_robust": c["fixed_effects"]},
                        rel=1e-10, fits=fits)
    assert np.array(c["delta"]) == pytest.approx(np.mean([f["delta"] for f in fits], axis=0), rel=1e-12)
    assert np.array(c["tau"]) == pytest.approx(np.mean([f["tau"] for f in fits], axis=0), rel=1e-12)
    assert c["deviance"] == pytest.approx(np.mean([f["deviance"] for f in fits]), rel=1e-12)
    (h,) = c["hypothesis_tests"]
    assert h["statistic"] == "D1" and h["robust"] is None and h["model"]["df1"] == 2
    assert "hypothesis_tests" not in doc
    from hlmcli.errors import ModelError
    from hlmcli.report.tables import combined_table

    with pytest.raises(ModelError, match="the paper tables do not show its structured within-person covariance"):
        combined_table(doc, "csv")  # its top-level tables are the homogeneous model's


def test_hmlm2_refuses_plausible_values(tmp_path):
    """At three levels (HMLM2) plausible values are refused in one line (exit 2): Rubin's rules would combine the
    homogeneous HLM3 model's numbers, not the structured fits'."""
    from test_hmlm import EG_MODEL, eg_files

    proc = run_cli("fit", *eg_files(tmp_path), *EG_MODEL, "--occasion", "OCC", "--level1-covariance", "homogeneous",
                   "--plausible-values", "MATH,YEAR")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "at three levels (HMLM2) Rubin's rules" in proc.stderr


# ---------------------------------------------------------------- HMLM2: persons within level-3 units

# nlme's lme with two grouping levels (tests/reference_scripts/hmlm2_tests_nlme.R) on eg15.csv's 15 schools and on
# its first 4 (the fast test): fixef, vcov, logLik d.f., anova() against the homogeneous model, and the SEs of
# both levels' τ and Δ's parameters from apVar with a Richardson Hessian.
NLME2 = json.loads((D / "hmlm2_tests_nlme.json").read_text())


def eg_subset(directory, n_schools: int | None):
    """eg15.csv's first n schools as the three files of test_hmlm.eg_files."""
    import pandas as pd

    from test_hmlm import eg_files

    paths = eg_files(directory)
    if n_schools is not None:
        keep = pd.read_csv(paths[2])["SCHOOL"].iloc[:n_schools]
        children = pd.read_csv(paths[1])
        children = children[children["SCHOOL"].isin(keep)]
        level1 = pd.read_csv(paths[0])
        level1[level1["CHILD"].isin(children["CHILD"])].to_csv(paths[0], index=False)
        children.to_csv(paths[1], index=False)
        pd.DataFrame({"SCHOOL": keep}).to_csv(paths[2], index=False)
    return paths


def check_hmlm2(proc, v: dict, ref: dict, lr: dict, rel: float) -> None:
    """An HMLM2 record against nlme: parameter count (logLik's d.f.), deviance, the two Wald tests by hand from
    fixef and vcov (γ100 = 0; γ000 = 0 with γ100 = 0.7), the deviance test against the homogeneous fit (anova's
    χ²), the covariance parameters and their SEs; and the tests printed under the structured model."""
    assert v["levels"] == 3 and v["check"]["converged"] and v["n_params"] == ref["df"]
    assert v["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    g, V = np.array(ref["fixef"]), np.array(ref["vcov"])
    one, two = v["hypothesis_tests"]
    assert one["model"]["chi2"] == pytest.approx(g[1] ** 2 / V[1, 1], rel=rel) and one["model"]["df"] == 1
    r = g - [0.0, 0.7]
    assert two["model"]["chi2"] == pytest.approx(float(r @ np.linalg.solve(V, r)), rel=rel) and two["model"]["df"] == 2
    assert one["robust"]["chi2"] is None
    d = v["deviance_test"]
    assert d["chi2"] == pytest.approx(lr["chi2"], abs=1e-5) and d["df"] == lr["df"]
    table = v["variance_parameters"]
    assert [p["parameter"] for p in table] == ref["parameters"]
    assert [p["estimate"] for p in table] == pytest.approx(ref["estimate"], rel=rel)
    assert [p["se"] for p in table] == pytest.approx(ref["se"], rel=rel)
    text = proc.stdout.split("Tests of the " + v["structure"] + " model")[1]
    assert f"{one['model']['chi2']:.6f}" in text and f"{d['chi2']:.6f}" in text


def hmlm2_fit(directory, n_schools, structure, data_key):
    from test_hmlm import EG_MODEL

    hom = NLME2[data_key]["homogeneous"]
    out = directory / f"{structure}.json"
    proc = run_cli("fit", *eg_subset(directory, n_schools), *EG_MODEL, "--level1-covariance", structure, "--occasion",
                   "OCC", "--test", "g100 = 0", "--test", "g000 = 0, g100 = 0.7", "--compare-deviance",
                   repr(hom["deviance"]), "--compare-params", str(hom["df"]), "--json-out", out, "--ascii")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_hmlm2_tests_standard_errors_and_compare_of_the_structured_fit(tmp_path):
    """HMLM2 (AR(1) within children, the first 4 schools, ML as HLM3's default), one fit as a user types it:
    --test, --compare-deviance and the covariance parameters' SEs against nlme (above; its fit here is a proper
    optimum, 1e-11 from this one in deviance); the text is pure ASCII under --ascii. `hlmcli compare` of the
    homogeneous HLM3 model (the document's top level, the one engine's certified fit) against the structured one:
    anova()'s χ² and nlme's parameter counts (7 and 8)."""
    proc, out = hmlm2_fit(tmp_path, 4, "ar1", "eg4")
    assert all(b < 128 for b in proc.stdout.encode())
    doc = json.loads(out.read_text())
    check_hmlm2(proc, doc["level1_covariance"], NLME2["eg4"]["ar1"], NLME2["eg4"]["anova"][0], 1e-5)
    homogeneous = tmp_path / "homogeneous.json"
    homogeneous.write_text(json.dumps({k: v for k, v in doc.items() if k != "level1_covariance"}))
    proc = run_cli("compare", homogeneous, out, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    lr = NLME2["eg4"]["anova"][0]
    assert r["chi2"] == pytest.approx(lr["chi2"], abs=1e-5) and r["df"] == lr["df"]
    assert (r["n_params_a"], r["n_params_b"]) == (NLME2["eg4"]["homogeneous"]["df"], NLME2["eg4"]["ar1"]["df"])
    assert r["structures"] == ["homogeneous", "ar1"] and r["variance_reduction"] == [] and r["p_mixture"] is None
    assert r["aic_b"] == pytest.approx(NLME2["eg4"]["ar1"]["deviance"] + 2 * 8, abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["heterogeneous", "ar1"])
def test_hmlm2_tests_and_standard_errors_every_structure(structure, tmp_path):
    """The same checks on the 15 schools, σ² by occasion and AR(1) (about 5 s each). nlme's AR(1) fit ends with
    nlminb's singular convergence 5e-8 above this optimum in deviance (optim fails), where ρ and τ are flat: its
    numbers are held to 1e-4 there."""
    proc, out = hmlm2_fit(tmp_path, None, structure, "eg15")
    ref = NLME2["eg15"]
    lr = next(a for a in ref["anova"] if a["models"] == ["homogeneous", structure])
    v = json.loads(out.read_text())["level1_covariance"]
    if structure == "ar1":
        assert ref[structure]["deviance"] - 1e-7 < v["deviance"] <= ref[structure]["deviance"]
        v = dict(v, deviance=ref[structure]["deviance"])
    check_hmlm2(proc, v, ref[structure], lr, 1e-4 if structure == "ar1" else 1e-5)

def test_occasion_indices_of_ten_or_more_are_named_and_labelled_apart():
    """Unrestricted Δ with T = 10: Δ_{10,1} was named delta_101 and every row of occasion 10 printed as
    Δ(OCC=1,OCC=10) (the label read one digit per index). From 10 on an underscore sets the indices apart;
    the one-digit names stay as they were."""
    from types import SimpleNamespace

    from hlmcli.analysis.hmlm import variance_parameter_table
    from hlmcli.engine.hmlm import Parameters
    from hlmcli.report.report import Symbols, text_table
    from hlmcli.report.report_hmlm import _variance_parameter_lines

    par = Parameters("unrestricted", 10, 1)
    k = par.n_tau + par.n_delta
    fit = SimpleNamespace(converged=True, hessian=np.eye(k), theta=np.linspace(0.5, 1.5, k), parameters=par)
    names = [p["parameter"] for p in variance_parameter_table(fit)]
    assert names[:4] == ["tau00", "delta_11", "delta_21", "delta_22"]
    assert names[-10:] == [f"delta_10_{t}" for t in range(1, 11)] and len(set(names)) == k
    v = {"variance_parameters": variance_parameter_table(fit)}
    lines = _variance_parameter_lines(v, Symbols(False), [f"OCC={t}" for t in range(1, 11)], text_table)
    assert [line.split()[0] for line in lines if line.startswith("Δ(OCC=10")] == \
        [f"Δ(OCC=10,OCC={t})" for t in range(1, 11)]
    assert any(line.startswith("Δ(OCC=2,OCC=1) ") for line in lines)
