"""The Python API: hlmcli.fit on paths, DataFrames and archives; Results against lme4 (seed 000) and
the reference optimum; the CLI's text and JSON byte for byte; residual files that merge back."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import hlmcli
from conftest import HSB_MODELS, REFERENCE, SAMPLE, hlmcli as run_cli

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
SEED000_L2 = ["b0 = g00 + g01*MEANSES + g02*SECTOR + u0", "b1 = g10 + g11*MEANSES + g12*SECTOR"]


@pytest.fixture(scope="module")
def frames():
    """Seed 000's data: cses = SES - MEANSES (MEANSES from the school file, as the seed computes it)."""
    students = pd.read_csv(HSB1)
    schools = pd.read_csv(HSB2)
    merged = students.merge(schools[["ID", "MEANSES"]], on="ID")
    students["CSES"] = merged["SES"] - merged["MEANSES"]
    return students, schools


def test_import_stays_light():
    code = "import sys, hlmcli; print(sorted(m for m in ('pandas', 'numpy', 'scipy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert callable(hlmcli.fit) and hlmcli.Results.__name__ == "Results"


def test_dataframes_reproduce_lme4_in_seed_000(frames):
    """Seed 000, Mod5: lmer(MATHACH ~ cses*MEANSES + cses*SECTOR + (1|SCHOOL)), REML and ML."""
    students, schools = frames
    res = hlmcli.fit(students, schools, id="ID", level1_eq="MATHACH = b0 + b1*CSES + r", level2_eqs=SEED000_L2,
                     method="REML")
    lme4 = {"(Intercept)": 12.1138, "CSES": 2.9358, "MEANSES": 5.3429, "SECTOR": 1.2146,
            "MEANSES:CSES": 1.0441, "SECTOR:CSES": -1.6421}  # lme4's cses:MEANSES, named as hlmcli's formula
    fx = res.fixed_effects.set_index("term")
    for term, value in lme4.items():
        assert abs(fx.loc[term, "estimate"] - value) < 6e-5, term
    ses = {"(Intercept)": 0.1986, "CSES": 0.1507, "MEANSES": 0.3690, "SECTOR": 0.3061}
    for term, value in ses.items():
        assert abs(fx.loc[term, "se"] - value) < 6e-5, term
    assert abs(res.tau.loc["INTRCPT1", "INTRCPT1"] - 2.375) < 6e-4
    assert abs(res.sigma2 - 36.766) < 6e-4
    assert abs(res.deviance - 46504.8) < 0.06  # "REML criterion at convergence"
    ml = hlmcli.fit(students, schools, id="ID", level1_eq="MATHACH = b0 + b1*CSES + r", level2_eqs=SEED000_L2,
                    method="ML")
    # anova(Mod5, Mod4): npar 8, AIC 46513.44, BIC 46568.48, deviance 46497.44
    assert abs(ml.deviance - 46497.44) < 0.006
    assert abs(ml.aic - 46513.44) < 0.006 and abs(ml.bic - 46568.48) < 0.006


def test_predict_reproduces_seed_000_dummy_data(frames):
    students, schools = frames
    res = hlmcli.fit(students, schools, id="ID", level1_eq="MATHACH = b0 + b1*CSES + r", level2_eqs=SEED000_L2)
    new = pd.DataFrame({"CSES": [-3.65, -3.64, -3.63, -3.62, -3.61, -3.60], "SECTOR": 0, "MEANSES": -0.317})
    seed = [0.9125066, 0.9385548, 0.9646030, 0.9906512, 1.0166994, 1.0427476]
    assert np.allclose(res.predict(new), seed, atol=5e-4)


def test_one_dataframe_for_both_levels_and_paths_give_the_reference(frames):
    students, schools = frames
    one = students.merge(schools, on="ID")
    l1, l2 = HSB_MODELS["hsb_m4"]
    ref = REFERENCE["hsb_m4"]["optimum"]
    for res in (hlmcli.fit(one, None, id="ID", level1_eq=l1, level2_eqs=l2),
                hlmcli.fit(HSB1, HSB2, id="ID", level1_eq=l1, level2_eqs=l2)):
        assert abs(res.deviance - ref["deviance"]) < 1e-4
        assert np.allclose(res.fixed_effects["estimate"], [f["estimate"] for f in ref["fixed"]], rtol=1e-6)
        assert np.allclose(res.fixed_effects["robust_se"], [f["robust_se"] for f in ref["fixed"]], rtol=1e-5)
        assert np.allclose(res.tau.to_numpy(), ref["tau"], rtol=1e-4)
        assert abs(res.sigma2 - ref["sigma2"]) < 1e-5 * ref["sigma2"]
        assert list(res.variance_components["label"]) == ["u0", "u1", "r"]


def test_summary_and_json_are_the_clis(hsb_archive):
    l1, l2 = HSB_MODELS["hsb_m4"]
    res = hlmcli.fit(hsb_archive, level1_eq=l1, level2_eqs=l2)
    cli_args = ["fit", hsb_archive, "-1", l1, "-2", l2[0], "-2", l2[1]]
    assert res.summary() == run_cli(*cli_args, check=True).stdout
    assert res.to_json() == run_cli(*cli_args, "--format", "json", check=True).stdout
    assert json.loads(res.to_json())["deviance"] == res.deviance


def test_random_effects_are_the_one_way_shrinkage_formula():
    """EB mean = γ + λ_j(ȳ_j − γ), λ_j = τ/(τ + σ²/n_j); posterior variance (1/τ + n_j/σ²)⁻¹;
    with τ, σ², γ from the reference optimum and ȳ_j from the raw CSV."""
    ref = REFERENCE["hsb_m1"]["optimum"]
    tau, s2, g = ref["tau"][0][0], ref["sigma2"], ref["fixed"][0]["estimate"]
    res = hlmcli.fit(HSB1, HSB2, id="ID", level1_eq="MATHACH = b0 + r", level2_eqs=["b0 = g00 + u0"])
    re = res.random_effects()
    assert len(re) == 160 and re.index.name == "ID" and re.index.dtype == np.int64  # the file's integer ids
    ybar = pd.read_csv(HSB1).groupby("ID")["MATHACH"].mean().reindex(re.index)
    lam = tau / (tau + s2 / re["n"])
    assert np.allclose(re["ols_INTRCPT1"], ybar, atol=1e-10)
    assert np.allclose(re["eb_INTRCPT1"], g + lam * (ybar - g), atol=1e-5)
    assert np.allclose(re["postvar_INTRCPT1"], 1 / (1 / tau + re["n"] / s2), atol=1e-5)
    # a known unit's prediction is its EB mean; an unknown one gets γ
    new = pd.DataFrame({"ID": ["1224", "no-such-school"]})
    with pytest.warns(UserWarning, match="units the fit has not seen get the fixed-effects prediction"):
        assert np.allclose(res.predict(new), [re.loc[1224, "eb_INTRCPT1"], res.fixed_effects["estimate"][0]])


def test_residual_file_keeps_row_order_and_text_columns(tmp_path):
    """A shuffled level-1 file with a text student id: the residual file comes back in the file's
    order, and merges on the id to give the same outcome."""
    data = pd.read_csv(HSB1)
    data.insert(0, "STUDENT", [f"s{k:05d}" for k in range(len(data))])
    data = data.sample(frac=1.0, random_state=7).reset_index(drop=True)
    l1_path = tmp_path / "shuffled.csv"
    data.to_csv(l1_path, index=False)
    out1, out2 = tmp_path / "r1.csv", tmp_path / "r2.csv"
    l1, l2 = HSB_MODELS["hsb_m3"]
    archive = tmp_path / "shuffled.mdm"  # the archive holds numbers only, so the text id stays out of it
    run_cli("mdm", "build", l1_path, HSB2, "--id", "ID", "--l1-vars", "MINORITY,FEMALE,SES,MATHACH", "-o", archive,
            check=True)
    proc = run_cli("fit", archive, "-1", l1, "-2", l2[0], "-2", l2[1],
                   "--residuals-l1", out1, "--residuals-l2", out2, "--keep", "STUDENT,SIZE", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    r1 = pd.read_csv(out1, dtype={"STUDENT": str, "id": str})
    assert list(r1["row"]) == list(range(1, len(data) + 1))
    assert list(r1["STUDENT"]) == list(data["STUDENT"])
    merged = data.merge(r1[["STUDENT", "fitted", "residual"]], on="STUDENT")
    assert np.allclose(merged["fitted"] + merged["residual"], merged["MATHACH"])
    sizes = pd.read_csv(HSB2, dtype={"ID": str}).set_index("ID")["SIZE"]
    assert np.array_equal(r1["SIZE"].to_numpy(), sizes.reindex(r1["id"]).to_numpy())
    r2 = pd.read_csv(out2, dtype={"id": str})
    assert len(r2) == 160 and "SIZE" in r2.columns
    bad = run_cli("fit", archive, "-1", l1, "-2", l2[0], "--residuals-l1", tmp_path / "x.csv", "--keep", "NOPE")
    assert bad.returncode == 1 and "--keep NOPE" in bad.stderr and bad.stderr.count("\n") == 1


def test_json_out_is_the_same_json(hsb_archive, tmp_path):
    args = ["fit", hsb_archive, "-1", "MATHACH = b0 + r"]
    proc = run_cli(*args, "--json-out", tmp_path / "m.json", check=True)
    assert proc.stdout == run_cli(*args, check=True).stdout
    assert (tmp_path / "m.json").read_text(encoding="utf-8") == run_cli(*args, "--format", "json", check=True).stdout
    assert run_cli(*args, "--keep", "SIZE").returncode == 2


def test_bad_inputs_are_one_line_errors(frames):
    from hlmcli.errors import DataError, HlmError

    students, schools = frames
    with pytest.raises(DataError, match="newdata has no column 'SECTOR'"):
        hlmcli.fit(students, schools, level1_eq="MATHACH = b0 + r",
                   level2_eqs=["b0 = g00 + g01*SECTOR + u0"]).predict(pd.DataFrame({"x": [1]}))
    with pytest.raises(HlmError, match="method must be"):
        hlmcli.fit(students, schools, level1_eq="MATHACH = b0 + r", method="OLS")
    with pytest.raises(DataError, match="not an archive"):
        hlmcli.fit(HSB1)


@pytest.mark.parametrize("columns,words", [
    (["ID", "MATHACH", "MATHACH"], ["level-1 DataFrame", "column 'MATHACH' is named twice", "columns 2 and 3"]),
    (["ID", "MATHACH", "mathach"], ["level-1 DataFrame", "'MATHACH' and 'mathach'", "differ only in case"]),
    (["ID", "MATHACH", 7], ["level-1 DataFrame", "column 3 is named 7 (int), not text"]),
    (["ID", "MATHACH", ("a", "b")], ["column 3 is named ('a', 'b') (tuple), not text"]),
])
def test_dataframe_column_names_are_checked(frames, columns, words):
    from hlmcli.errors import DataError

    students, schools = frames
    bad = students[["ID", "MATHACH", "SES"]].copy()
    bad.columns = columns
    with pytest.raises(DataError) as err:
        hlmcli.fit(bad, schools, level1_eq="MATHACH = b0 + r", level2_eqs=["b0 = g00 + u0"])
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_predict_checks_newdata_column_names(frames):
    from hlmcli.errors import DataError

    students, schools = frames
    res = hlmcli.fit(students, schools, level1_eq="MATHACH = b0 + b1*SES + r", level2_eqs=["b0 = g00 + u0", "b1 = g10"])
    new = pd.DataFrame([[0.5, 0.7]], columns=["SES", "ses"])
    with pytest.raises(DataError, match="newdata: columns 'SES' and 'ses'"):
        res.predict(new)
    with pytest.raises(DataError, match="newdata: column 1 is named 0"):
        res.predict(pd.DataFrame([[0.5]]))


def test_link_of_a_canonical_family_is_refused_not_ignored():
    """link= chooses an ordinal model's cumulative link; for a count outcome it would do nothing (the log
    link is fixed), so it is refused in one line as the command line refuses --link, not fitted as log."""
    from conftest import DATA
    from hlmcli.errors import ModelError

    h3 = DATA / "hglm3"
    with pytest.raises(ModelError, match=r"^link='probit' chooses the cumulative link of family='ordinal'"):
        hlmcli.fit(h3 / "grouse_l1.csv", h3 / "grouse_l2.csv", id="BROOD", level1_eq="TICKS = b0",
                   level2_eqs=["b0 = g00 + u0"], family="poisson", estimation="laplace", link="probit")
