"""V-known models (--known-variance V): metafor::rma's REML and ML fits of dat.bcg (log risk ratios, with and
without the moderators ablat and year) and of the teacher-expectancy studies (Raudenbush 1985, with and without
WEEKS; τ = 0 on the boundary with WEEKS), and nlme::lme with varFixed(~V) and σ fixed at 1 for several records
per unit (HSB). References: tests/data/vknown/, made by tests/reference_scripts/vknown_metafor.R."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hlmcli
from hlmcli.errors import DataError, ModelError
from conftest import DATA, SAMPLE, hlmcli as run_cli

V = DATA / "vknown"
RMA = json.loads((V / "metafor_rma.json").read_text())
NLME = json.loads((V / "hsb_varfixed_nlme.json").read_text())
CASES = {"bcg": ("bcg.csv", "trial", []), "bcg_mods": ("bcg.csv", "trial", ["ablat", "year"]),
         "expectancy": ("expectancy.csv", "study", []), "expectancy_mods": ("expectancy.csv", "study", ["weeks"])}


def split(name: str):
    """The meta-analysis as two files: the estimates with their variances (level 1, one record per study)
    and the studies' moderators (level 2)."""
    data = pd.read_csv(V / name)
    idn = data.columns[0]
    return data[[idn, "yi", "vi"]], data.drop(columns=["yi", "vi"])


def fit_case(case: str, method: str) -> dict:
    file, idn, mods = CASES[case]
    level2 = "b0 = g00 + " + "".join(f"g0{k}*{m} + " for k, m in enumerate(mods, 1)) + "u0"
    return hlmcli.fit(*split(file), id=idn, level1_eq="yi = b0 + r", level2_eqs=[level2], method=method,
                      known_variance="vi").to_dict()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["REML", "ML"])
def test_matches_metafor_rma(case, method):
    doc = fit_case(case, method)
    ref = RMA[f"{case}_{method}"]
    assert doc["converged"] and doc["certificate"]["certified"]
    assert doc["tau"][0][0] == pytest.approx(ref["tau2"], rel=1e-6, abs=1e-10)
    beta = np.atleast_1d(ref["beta"])
    se = np.atleast_1d(ref["se"])
    for f, b, s in zip(doc["fixed_effects"], beta, se):
        assert f["estimate"] == pytest.approx(b, rel=1e-6, abs=1e-9)
        assert f["se"] == pytest.approx(s, rel=1e-6)
    loglik = doc["known_variance"]["metafor_reml_loglik"] if method == "REML" else doc["loglik"]
    assert loglik == pytest.approx(ref["logLik"], abs=1e-6)
    if method == "ML":  # model-based SEs of τ are given under ML, as for other linear fits
        assert doc["se_tau"][0][0] == pytest.approx(ref["se_tau2"], rel=1e-6)
    assert doc["n_params"] == len(beta) * (method == "ML") + 1 and doc["sigma2"] == 1.0
    assert "icc" not in doc
    if case == "expectancy_mods":  # τ = 0: the boundary, said, and the χ² is then metafor's QE
        assert doc["boundary"] and doc["tau"][0][0] == 0.0
        (component, _) = doc["variance_components"]
        assert component["chi2"] == pytest.approx(ref["QE"], rel=1e-9) and component["df"] == ref["QEdf"]


def test_chi2_is_the_known_variance_statistic_by_hand():
    """HLM's χ² of u0 with known level-1 variances: Σ (d_j − W_jγ̂)² / V_j over the studies, on J − S − 1 d.f."""
    doc = fit_case("bcg_mods", "REML")
    data = pd.read_csv(V / "bcg.csv")
    g = [f["estimate"] for f in doc["fixed_effects"]]
    fitted = g[0] + g[1] * data["ablat"] + g[2] * data["year"]
    (component, level1) = doc["variance_components"]
    assert component["chi2"] == pytest.approx(float((((data["yi"] - fitted) ** 2) / data["vi"]).sum()), rel=1e-10)
    assert component["df"] == 13 - 2 - 1 and level1["variance"] == 1.0


def test_several_records_per_unit_match_nlme_and_glmmtmb():
    """HSB, V = 30 + 10·FEMALE known for each pupil. ML: nlme's lme(..., weights = varFixed(~V), sigma = 1) and
    glmmTMB's dispformula = ~ 0 + offset(log(V)) agree, and so do we (SEs: nlme's, (X'V⁻¹X)⁻¹). REML: glmmTMB's
    (nlme's fixed-sigma REML is another criterion; see the reference script)."""
    l1 = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")
    l1["V"] = 30 + 10 * l1["FEMALE"]
    l2 = pd.read_csv(SAMPLE / "hsb" / "hsb2.csv")
    for method in ("REML", "ML"):
        doc = hlmcli.fit(l1, l2, id="ID", level1_eq="MATHACH = b0 + b1*group(SES) + r",
                         level2_eqs=["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + u1"], method=method,
                         known_variance="V").to_dict()
        assert doc["converged"]
        est = {f["gamma"]: f for f in doc["fixed_effects"]}
        refs = [NLME[method]["glmmtmb"]] + ([NLME[method]] if method == "ML" else [])
        for ref in refs:
            assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
            for gamma, b in zip(("γ00", "γ10", "γ01"), ref["fixef"]):
                assert est[gamma]["estimate"] == pytest.approx(b, rel=1e-5)
            assert np.allclose(doc["tau"], ref["tau"], rtol=1e-5)
        if method == "ML":
            for gamma, s in zip(("γ00", "γ10", "γ01"), NLME["ML"]["se"]):
                assert est[gamma]["se"] == pytest.approx(s, rel=1e-5)


def test_cli_v_known_fit(tmp_path):
    """As a user types it: the estimates file and the studies file, the table says σ² is not estimated."""
    l1, l2 = split("bcg.csv")
    l1.to_csv(tmp_path / "est.csv", index=False)
    l2.to_csv(tmp_path / "studies.csv", index=False)
    proc = run_cli("fit", tmp_path / "est.csv", tmp_path / "studies.csv", "--id", "trial", "-1", "yi = b0 + r",
                   "-2", "b0 = g00 + g01*ablat + u0", "--known-variance", "vi", "--ml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    from hlmcli.report.schemas import first_error

    doc = json.loads(proc.stdout)
    assert first_error(doc, "fit") is None and doc["known_variance"]["column"] == "vi"
    text = run_cli("fit", tmp_path / "est.csv", tmp_path / "studies.csv", "--id", "trial", "-1", "yi = b0 + r",
                   "-2", "b0 = g00 + u0", "--known-variance", "vi").stdout
    assert "σ2 = 1 (not estimated: each record's level-1 variance is vi, known)" in text
    assert "no change of τ lowers the deviance" in text and "metafor::rma(yi = yi, vi = vi" in text
    assert f"{RMA['bcg_REML']['tau2']:.5f}" in text


def test_variance_in_the_level2_file_is_given_to_each_record():
    data = pd.read_csv(V / "bcg.csv")
    doc = hlmcli.fit(data[["trial", "yi"]], data.drop(columns="yi"), id="trial", level1_eq="yi = b0 + r",
                     level2_eqs=["b0 = g00 + u0"], known_variance="vi").to_dict()
    assert doc["tau"][0][0] == pytest.approx(RMA["bcg_REML"]["tau2"], rel=1e-6)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.assign(vi=d["vi"].where(d.index != 3)), "have no value of vi"),
    (lambda d: d.assign(vi=d["vi"].where(d.index != 3, -0.1)), "zero or negative"),
])
def test_bad_variances_are_refused_in_one_line(change, message):
    l1, l2 = split("bcg.csv")
    with pytest.raises(DataError, match=message) as err:
        hlmcli.fit(change(l1), l2, id="trial", level1_eq="yi = b0 + r", level2_eqs=["b0 = g00 + u0"],
                   known_variance="vi")
    assert str(err.value).startswith("--known-variance vi: ") and "\n" not in str(err.value)


def test_unknown_column_and_conflicting_options_are_refused():
    l1, l2 = split("bcg.csv")
    with pytest.raises(DataError, match="no such variable"):
        hlmcli.fit(l1, l2, id="trial", level1_eq="yi = b0 + r", level2_eqs=["b0 = g00 + u0"], known_variance="se")
    with pytest.raises(ModelError, match="--test-homogeneity with --known-variance: not available"):
        hlmcli.fit(l1, l2, id="trial", level1_eq="yi = b0 + r", level2_eqs=["b0 = g00 + u0"], known_variance="vi",
                   test_homogeneity=True)
    with pytest.raises(ModelError, match="nothing is random at level 2"):
        hlmcli.fit(l1, l2, id="trial", level1_eq="yi = b0 + r", level2_eqs=["b0 = g00"], known_variance="vi")


def test_hlm_file_varianceknown_points_to_the_option(tmp_path):
    from hlmcli.api import load_data, make_spec

    archive, _, _ = load_data(*split("bcg.csv"), id="trial")
    path = tmp_path / "m.hlm"
    path.write_text("level1:YI=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nvarianceknown:vi\n")
    with pytest.raises(ModelError, match="not documented.*--known-variance vi"):
        make_spec(archive, None, (), model=path)


def test_paper_tables_refuse_what_they_do_not_show(tmp_path):
    """--format csv and `hlmcli table` would print σ² = 1 as if estimated: refused in one line, exit 1."""
    l1, l2 = split("bcg.csv")
    l1.to_csv(tmp_path / "est.csv", index=False)
    l2.to_csv(tmp_path / "studies.csv", index=False)
    args = ("fit", tmp_path / "est.csv", tmp_path / "studies.csv", "--id", "trial", "-1", "yi = b0 + r", "-2",
            "b0 = g00 + u0", "--known-variance", "vi")
    proc = run_cli(*args, "--format", "csv")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "paper tables do not show" in proc.stderr
    from hlmcli.report.tables import side_by_side_text

    doc = fit_case("bcg", "REML")
    with pytest.raises(ModelError, match="paper tables do not show that its level-1 variances are known"):
        side_by_side_text([doc, doc], ["a", "b"], "markdown")
