"""`hlmcli explain` on published HLM output whose data are public. The printed numbers (with their sources)
are in tests/data/published/hlm_published.json; they are laid out here as HLM 6 prints them (the layout the
parser reads). The expected deviances come from R (tests/reference_scripts/published_hlm.R: lme4 with tight
control, and a dense evaluation of the deviance at HLM's printed σ² and τ), stored in r_reference.json."""

from __future__ import annotations

import json
import math

import pytest

from hlmcli.io.hlm_output import parse_hlm_output

from conftest import DATA, hlmcli

PUB = DATA / "published"
PUBLISHED = json.loads((PUB / "hlm_published.json").read_text())
R = json.loads((PUB / "r_reference.json").read_text())
EARLY = [PUB / "early_l1.csv", PUB / "early_l2.csv"]
BDF = [PUB / "bdf_l1.csv", PUB / "bdf_l2.csv"]


def _fixed_block(title: str, rows: list) -> list[str]:
    out = [f" {title}", " " + "-" * 76,
           "                                       Standard             Approx.",
           "    Fixed Effect         Coefficient   Error      T-ratio   d.f.     P-value", " " + "-" * 76]
    coef = None
    for c, predictor, gamma, est, se, t, df in rows:
        if c != coef:
            coef = c
            b = "B" + gamma[1]
            out.append(f" For {(c if c == 'INTRCPT1' else c + ' slope') + ',':>14} {b}")
        out.append(f"    {predictor + ',':>13} {gamma}      {est:>12.6f}   {se:.6f}   {t:>8.3f}   {df:>8}    0.000")
    return out + [" " + "-" * 76]


def hlm6_text(case: dict) -> str:
    """HLM 6's text output (HLM2.EXE layout) holding the published numbers of one example."""
    lines = []
    if case.get("hlm_version"):
        lines.append(f"Module:      HLM2.EXE ({case['hlm_version']})")
    method = {"ML": "full maximum likelihood", "REML": "restricted maximum likelihood"}[case["method"]]
    lines += [" SPECIFICATIONS FOR THIS HLM2 RUN", f" Method of estimation: {method}", ""]
    start = case.get("starting_values")
    labels = case.get("tau_labels", [])
    if start:
        lines += [" STARTING VALUES", " ---------------", f"sigma(0)_squared = {start['sigma2']:12.5f}", " Tau(0)"]
        lines += [f" {lab},B{i} " + " ".join(f"{v:12.5f}" for v in row) for i, (lab, row) in enumerate(zip(labels, start["tau"]))]
        lines.append(" New Tau(0)")
        lines += [f" {lab},B{i} " + " ".join(f"{v:12.5f}" for v in row) for i, (lab, row) in enumerate(zip(labels, start["new_tau"]))]
        lines += [" Estimation of fixed effects", "(Based on starting values of covariance components)"]
        lines += _fixed_block("", start["fixed"])[1:]
        lines.append("")
    if "sigma2" in case:
        lines += [f" Sigma_squared = {case['sigma2']:12.5f}", "", " Tau"]
        lines += [f" {lab:>8},B{i} " + " ".join(f"{v:12.5f}" for v in row) for i, (lab, row) in enumerate(zip(labels, case["tau"]))]
        if case.get("reliability"):
            lines += ["", " Standard Errors of Tau"]  # a block of the same shape that is not τ
            lines += [f" {lab:>8},B{i} " + " ".join(f"{1.0:12.5f}" for _ in row) for i, (lab, row) in enumerate(zip(labels, case["tau"]))]
            lines += [" " + "-" * 52, "  Random level-1 coefficient   Reliability estimate", " " + "-" * 52]
            lines += [f"  {lab}, B{i}          {case['reliability'][lab]:.3f}" for i, lab in enumerate(labels)]
            lines.append(" " + "-" * 52)
    if case.get("fixed"):
        lines += _fixed_block("Final estimation of fixed effects:", case["fixed"])
    if case.get("fixed_robust"):
        lines += _fixed_block("Final estimation of fixed effects", case["fixed_robust"])
        lines[-len(case["fixed_robust"]) - 6] += "\n (with robust standard errors)"
    if case.get("varcomp"):
        lines += [" Final estimation of variance components:", " " + "-" * 76]
        for i, (lab, v) in enumerate(case["varcomp"].items()):
            lines.append(f" {lab}, U{i}  {v['sd']:12.5f} {v['variance']:12.5f} {v['df']:6} {v['chi2']:12.5f}    0.000")
        lines.append(f" level-1,      R  {math.sqrt(case['sigma2']):12.5f} {case['sigma2']:12.5f}")
    if "deviance" in case:
        lines += [" Statistics for current covariance components model", " " + "-" * 50,
                  f" Deviance                       = {case['deviance']:.6f}",
                  f" Number of estimated parameters = {case['n_params']}"]
    return "\n".join(lines) + "\n"


def _fit(tmp_path, data, case, *extra):
    model = case["model"]
    args = ["fit", *data, "--id", extra[0], "-1", model["level1"]]
    for eq in model["level2"]:
        args += ["-2", eq]
    proc = hlmcli(*args, "--ml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "fit.json"
    path.write_text(proc.stdout)
    return path


def _explain(tmp_path, fit, data, case, id_):
    out = tmp_path / "hlm.txt"
    out.write_text(hlm6_text(case))
    proc = hlmcli("explain", fit, out, *data, "--id", id_, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_layout_reads_back():
    """The HLM 6 text built from the published numbers reads back to them (starting values and the standard
    errors of τ are not taken for the final τ)."""
    case = PUBLISHED["singer_willett_3_3"]
    out = parse_hlm_output(hlm6_text(case))
    assert out.version == "6.06" and out.method == "ML"
    assert out.sigma2 == case["sigma2"] and out.tau == case["tau"] and out.tau_labels == case["tau_labels"]
    assert out.reliability == case["reliability"] and out.fixed == []
    sb = parse_hlm_output(hlm6_text(PUBLISHED["snijders_bosker_4_1"]))
    assert sb.deviance == 16251.380618 and [r.se for r in sb.fixed_robust] == [0.426363]


def test_singer_willett_table_3_3_stopped_early(tmp_path):
    """HLM 6.06's τ11 = 12.29264 (correlation −0.930) against the boundary optimum (correlation −1): the
    deviance at HLM's printed values is 2369.984292, 0.043678 above the optimum's 2369.940614 (R)."""
    case, ref = PUBLISHED["singer_willett_3_3"], R["singer_willett_3_3"]
    fit = _fit(tmp_path, EARLY, case, "ID")
    doc = json.loads(fit.read_text())
    assert doc["deviance"] == pytest.approx(ref["deviance_lme4"], abs=1e-6)
    assert doc["tau"][1][1] == pytest.approx(ref["tau"][1][1], rel=1e-4)
    r = _explain(tmp_path, fit, EARLY, case, "ID")
    assert r["deviance_optimum"] == pytest.approx(ref["deviance_dense_at_optimum"], abs=1e-6)
    assert r["deviance_at_hlm_estimates"] == pytest.approx(ref["deviance_dense_at_hlm"], abs=1e-6)
    assert r["deviance_gap"] == pytest.approx(ref["deviance_dense_at_hlm"] - ref["deviance_dense_at_optimum"], abs=2e-6)
    assert r["consistent_with_early_stop"] is True
    assert any("stopped early" in f for f in r["findings"]) and not any("None" in f for f in r["findings"])
    t = ref["tau"]
    assert t[0][1] / math.sqrt(t[0][0] * t[1][1]) == pytest.approx(-1, abs=1e-4)  # lme4's optimum: correlation −1
    assert any("boundary" in f and "-1" in f for f in r["findings"])
    tau11 = next(t for t in r["tau"] if t["entry"] == "tau[TIME,TIME]")
    assert tau11["hlm"] == 12.29264 and tau11["relative"] == pytest.approx(12.29264 / ref["tau"][1][1] - 1, abs=1e-4)


def test_snijders_bosker_4_1_ln_2pi_offset(tmp_path):
    """HLM printed the ML deviance 16251.380618; −2 log L at its printed σ² and τ is 16253.218496 (R, dense),
    at the optimum 16253.218495 (lme4): the printed value is ln 2π low, and HLM reached the optimum."""
    case, ref = PUBLISHED["snijders_bosker_4_1"], R["snijders_bosker_4_1"]
    fit = _fit(tmp_path, BDF, case, "SCHOOL")
    r = _explain(tmp_path, fit, BDF, case, "SCHOOL")
    assert r["deviance_optimum"] == pytest.approx(ref["deviance_lme4"], abs=1e-6)
    assert r["deviance_at_hlm_estimates"] == pytest.approx(ref["deviance_dense_at_hlm"], abs=1e-6)
    assert r.get("ln_2pi_offset") is True and r["same_likelihood"] is True
    assert r["printed_minus_evaluated"] == pytest.approx(-math.log(2 * math.pi), abs=2e-6)
    assert any("ln 2π" in f for f in r["findings"]) and any("reached the optimum" in f for f in r["findings"])
    # the page prints the robust table only: HLM's γ00 and robust SE against the fit's (lme4: 40.364088)
    g00 = r["fixed_effects"][0]
    assert g00["se_kind"] == "robust" and g00["hlm"] == 40.364049
    assert g00["fit"] == pytest.approx(ref["fixef"], abs=1e-6)
    assert g00["fit_robust_se"] == pytest.approx(0.426363, abs=1e-6)
    text = hlmcli("explain", fit, tmp_path / "hlm.txt", *BDF, "--id", "SCHOOL").stdout
    assert "16251.380618" in text and "ln 2π" in text and "robust SEs" in text


def test_snijders_bosker_4_2_fixed_slope_df(tmp_path):
    """HLM 5/6 gave the fixed IQ slope N − F = 2287 − 2 = 2285 d.f.; HLM 7 and hlmcli N − J·R − F = 2155."""
    case, ref = PUBLISHED["snijders_bosker_4_2"], R["snijders_bosker_4_2"]
    fit = _fit(tmp_path, BDF, case, "SCHOOL")
    r = _explain(tmp_path, fit, BDF, case, "SCHOOL")
    assert r["df_rule"] == "hlm6"
    slope = next(f for f in r["fixed_effects"] if f["gamma"] in ("γ10", "G10"))
    # HLM 7: N − J·R − F with R = 1 random coefficient and F = 1 γ of a fixed coefficient
    assert slope["hlm_df"] == ref["n"] - 2 and slope["fit_df"] == ref["n"] - ref["units"] * 1 - 1
    assert any("2285" in f for f in r["findings"])


HLM602_PB = """Module:      HLM2 (6.02) beta
Method of estimation: restricted maximum likelihood
 Final estimation of fixed effects:
 ----------------------------------------------------------------------------
 For       INTRCPT1, P0
    INTRCPT2, B00          12.000000   0.250000    48.000       159    0.000
 For   FEMALE slope, P1
    INTRCPT2, B10          -1.250000   0.500000
                                                   -2.500       159    0.013
 ----------------------------------------------------------------------------
"""


def test_reads_hlm6_p_and_b_notation_and_wrapped_rows():
    """HLM 6.02 (udel's HSB output) labels a two-level model's coefficients P and B; a row may wrap."""
    out = parse_hlm_output(HLM602_PB)
    assert out.version == "6.02" and out.method == "REML"
    assert [(r.coefficient, r.gamma, r.estimate, r.se, r.t, r.df) for r in out.fixed] == [
        ("INTRCPT1", "B00", 12.0, 0.25, 48.0, 159), ("FEMALE", "B10", -1.25, 0.5, -2.5, 159)]
