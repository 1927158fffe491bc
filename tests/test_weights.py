"""Sampling weights: multilevel pseudo-ML against WeMix 4.0.4 (tests/data/weights/README.md), the
weights' checks and normalisations, and the unweighted path left exactly as it was."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hlmcli.io.archive import BuildOptions, build_from_files
from hlmcli.data.design import variables_of
from hlmcli.language.equations import RunOptions, spec_from_inputs
from hlmcli.errors import DataError, ModelError
from hlmcli.analysis.pipeline import analyse
from hlmcli.data.weights import WeightSpec

WDATA = Path(__file__).resolve().parent / "data" / "weights"
LABELS = ["γ00", "γ01", "γ10"]
TOL = 1e-4  # the bar: relative, estimates and SEs (the fits below agree to ~1e-8)


@pytest.fixture(scope="module")
def hsbw(tmp_path_factory):
    """The weights data with all-ones columns added (ONE, TWO) for WeMix's unweighted run."""
    d = tmp_path_factory.mktemp("hsbw")
    l1 = pd.read_csv(WDATA / "hsbw_l1.csv")
    l1["ONE"] = 1.0
    l2 = pd.read_csv(WDATA / "hsbw_l2.csv")
    l2["TWO"] = 1.0
    l1.to_csv(d / "l1.csv", index=False)
    l2.to_csv(d / "l2.csv", index=False)
    return build_from_files(d / "l1.csv", d / "l2.csv", BuildOptions(id1="ID", id2="ID"))


def _spec(archive, method="ML"):
    spec = spec_from_inputs("MATHACH = b0 + b1*SES + r", ["b0 = g00 + g01*SECTOR + u0", "b1 = g10"], None,
                            variables_of(archive), RunOptions())
    return replace(spec, options=replace(spec.options, method=method))


CASES = {"unweighted": WeightSpec("ONE", "TWO", "none"), "raw": WeightSpec("W1", "W2", "none"),
         "norm_cluster": WeightSpec("W1", "W2", "cluster")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_wemix(hsbw, case):
    ref = json.loads((WDATA / f"hsbw_ri_{case}.json").read_text())["reference"]
    a = analyse(_spec(hsbw), hsbw, weights=CASES[case])
    assert a.result.converged
    for k, g in enumerate(LABELS):
        e = ref["fixed"][g]
        assert abs(a.fixed.gamma[k] - e["est"]) <= TOL * abs(e["est"]), g
        assert abs(a.fixed.robust_se[k] - e["se"]) <= TOL * e["se"], g
    vc = ref["variance_components"]
    assert abs(a.result.sigma2 - vc["residual"]["sigma2"]) <= TOL * vc["residual"]["sigma2"]
    assert abs(a.result.tau[0, 0] - vc["ID"]["tau"][0][0]) <= TOL * vc["ID"]["tau"][0][0]
    # the pseudo-deviance is WeMix's -2 lnl, every constant included
    assert abs(a.result.deviance - ref["deviance"]) <= 1e-7 * ref["deviance"]


def test_all_ones_weights_reproduce_the_unweighted_fit(hsbw):
    plain = analyse(_spec(hsbw), hsbw)
    ones = analyse(_spec(hsbw), hsbw, weights=CASES["unweighted"])
    assert np.allclose(ones.fixed.gamma, plain.fixed.gamma, rtol=1e-8)
    assert np.allclose(ones.fixed.se, plain.fixed.se, rtol=1e-7)
    assert abs(ones.result.deviance - plain.result.deviance) < 1e-6
    # the weighted sandwich is HLM's CR0 sandwich times J/(J-1), as WeMix
    J = plain.design.n_units
    assert np.allclose(ones.fixed.robust_se, plain.fixed.robust_se * np.sqrt(J / (J - 1)), rtol=1e-7)
    assert plain.weights is None and plain.stats.w2 is None


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_level2_weight_scale_changes_no_estimate(hsbw, method):
    raw = analyse(_spec(hsbw, method), hsbw, weights=WeightSpec(None, "W2", "none"))
    norm = analyse(_spec(hsbw, method), hsbw, weights=WeightSpec(None, "W2", "cluster"))
    assert np.allclose(raw.fixed.gamma, norm.fixed.gamma, rtol=1e-7)
    assert np.allclose(raw.fixed.robust_se, norm.fixed.robust_se, rtol=1e-6)
    assert np.isclose(raw.result.sigma2, norm.result.sigma2, rtol=1e-7)
    # a weighted fit is always full pseudo-ML (a restricted pseudo-likelihood would move with the scale)
    assert raw.result.method == "ML"
    assert any("REML" in n for n in raw.weights.notes) == (method == "REML")


def test_normalisations(hsbw):
    from hlmcli.data.design import make_design
    from hlmcli.data.weights import resolve

    d = make_design(_spec(hsbw), hsbw)
    sizes = np.diff(d.offsets)
    c = resolve(WeightSpec("W1", "W2", "cluster"), hsbw, d)
    assert np.allclose(np.add.reduceat(c.w1, d.offsets[:-1]), sizes)
    assert np.isclose(c.w2.sum(), d.n_units)
    t = resolve(WeightSpec("W1", "W2", "total"), hsbw, d)
    assert np.isclose(t.w1.sum(), d.n) and np.isclose(t.w2.sum(), d.n_units)
    n = resolve(WeightSpec("W1", "W2", "none"), hsbw, d)
    assert np.allclose(n.w1, hsbw.level1_column("W1"))


def _with(tmp_path, col, level, row, value):
    l1 = pd.read_csv(WDATA / "hsbw_l1.csv")
    l2 = pd.read_csv(WDATA / "hsbw_l2.csv")
    t = l1 if level == 1 else l2
    t[col] = t[col].astype(float)
    t.loc[row, col] = value
    l1.to_csv(tmp_path / "l1.csv", index=False)
    l2.to_csv(tmp_path / "l2.csv", index=False)
    return build_from_files(tmp_path / "l1.csv", tmp_path / "l2.csv", BuildOptions(id1="ID", id2="ID"))


@pytest.mark.parametrize("level,value,word", [(1, -1.0, "negative"), (1, np.nan, "missing"), (1, 0.0, "zero"),
                                               (2, 0.0, "zero"), (2, -2.0, "negative")])
def test_bad_weights_are_refused_with_file_column_and_row(tmp_path, level, value, word):
    arch = _with(tmp_path, "W1" if level == 1 else "W2", level, 3, value)
    with pytest.raises(ModelError) as e:
        analyse(_spec(arch), arch, weights=WeightSpec("W1", "W2", "cluster"))
    msg = str(e.value)
    assert word in msg and ("W1" if level == 1 else "W2") in msg
    assert ("l1.csv" if level == 1 else "l2.csv") in msg
    unit = pd.read_csv(WDATA / f"hsbw_l{level}.csv").ID[3]
    assert f"unit {unit}" in msg  # the row's unit
    if level == 1:
        assert "record 4 of unit 1224" in msg


@pytest.mark.parametrize("level", [1, 2])
def test_an_infinite_weight_is_refused_where_it_enters(tmp_path, level):
    """Infinite values are refused when the archive is built, with file, column and line."""
    col = "W1" if level == 1 else "W2"
    with pytest.raises(DataError) as e:
        _with(tmp_path, col, level, 3, np.inf)
    msg = str(e.value)
    assert col in msg and ("l1.csv" if level == 1 else "l2.csv") in msg and "line 5" in msg and "infinite" in msg


@pytest.mark.parametrize("level", [1, 2])
def test_a_zero_weight_is_refused_at_either_level_with_one_rule(tmp_path, level):
    """One rule at both levels (a zero weight adds nothing to the pseudo-likelihood but would still count
    in n_j and J): refused with the same words, under every normalisation."""
    col = "W1" if level == 1 else "W2"
    arch = _with(tmp_path, col, level, 0, 0.0)
    for normalize in ("none", "cluster"):
        with pytest.raises(ModelError) as e:
            analyse(_spec(arch), arch, weights=WeightSpec("W1" if level == 1 else None, col if level == 2 else None,
                                                          normalize))
        assert f"column {col}: the weight of " in str(e.value)
        assert "is zero (0); weights must be positive numbers at every level" in str(e.value)
        assert "drop it from the data" in str(e.value)


def test_weight_at_the_wrong_level_is_named(hsbw):
    with pytest.raises(ModelError, match="W2 is a level-2 variable"):
        analyse(_spec(hsbw), hsbw, weights=WeightSpec("W2", None))


def test_satterthwaite_refused_with_weights(hsbw):
    with pytest.raises(ModelError, match="Satterthwaite"):
        analyse(_spec(hsbw), hsbw, df_method="satterthwaite", weights=CASES["raw"])


# ---------------------------------------------------------------- the command line

from conftest import hlmcli  # noqa: E402

CLI_MODEL = ["-1", "MATHACH = b0 + b1*SES + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10", "--ascii"]


@pytest.fixture(scope="module")
def wfiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("wcli")
    for f in ("hsbw_l1.csv", "hsbw_l2.csv"):
        (d / f).write_text((WDATA / f).read_text())
    return d


def test_cli_weights_text_json_and_hlm_keys(wfiles):
    ref = json.loads((WDATA / "hsbw_ri_norm_cluster.json").read_text())["reference"]
    args = ["fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", *CLI_MODEL, "--weight1", "W1", "--weight2", "W2"]
    text = hlmcli(*args, cwd=wfiles, check=True).stdout
    assert "Weighting Specification" in text
    assert " Level 1          yes       W1            yes" in text
    assert " Level 2          yes       W2            yes" in text
    assert "robust standard errors (sandwich, clustered on level-2 units)" in text
    assert "the standard errors to report with sampling weights" in text
    assert "full maximum likelihood" in text and "REML was asked for" in text
    assert "pseudo-likelihood quantities: not for likelihood-ratio tests" in text
    # the lme4 call is not offered as the same fit: lmer has no sampling weights, and the fit is ML
    assert "REML = TRUE" not in text and "lmer has no sampling weights" in text and "WeMix::mix" in text
    doc = json.loads(hlmcli(*args, "--format", "json", cwd=wfiles, check=True).stdout)
    assert doc["weights"]["level1"] == "W1" and doc["weights"]["level2"] == "W2"
    assert doc["weights"]["normalize"] == "cluster" and doc["method"] == "ML"
    for row in doc["fixed_effects"]:
        e = ref["fixed"][row["gamma"]]
        assert abs(row["estimate"] - e["est"]) <= TOL * abs(e["est"])
        assert abs(row["robust_se"] - e["se"]) <= TOL * e["se"]
    # the same through an HLM 7 command file
    (wfiles / "w.hlm").write_text("level1:MATHACH=INTRCPT1+SES+RANDOM\nlevel2:INTRCPT1=INTRCPT2+SECTOR+random/\n"
                                  "level2:SES=INTRCPT2/\nlevel1weight:W1\nlevel2weight:W2\nmlf:y\n")
    doc2 = json.loads(hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", "--model", "w.hlm", "--format", "json",
                             cwd=wfiles, check=True).stdout)
    assert [r["robust_se"] for r in doc2["fixed_effects"]] == pytest.approx([r["robust_se"] for r in doc["fixed_effects"]], rel=1e-8)
    raw = json.loads(hlmcli(*args, "--normalize", "none", "--format", "json", cwd=wfiles, check=True).stdout)
    rref = json.loads((WDATA / "hsbw_ri_raw.json").read_text())["reference"]
    assert raw["fixed_effects"][2]["robust_se"] == pytest.approx(rref["fixed"]["γ10"]["se"], rel=TOL)


def test_cli_refuses_normalize_without_weights_and_names_bad_weights(wfiles):
    p = hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", *CLI_MODEL, "--normalize", "total", cwd=wfiles)
    assert p.returncode != 0 and "--normalize needs --weight1 or --weight2" in p.stderr
    p = hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", *CLI_MODEL, "--weight1", "SES", cwd=wfiles)
    assert p.returncode != 0 and "hsbw_l1.csv: column SES" in p.stderr and "negative" in p.stderr


# ---------------------------------------------------------------- tests of a weighted (pseudo-likelihood) fit

WARGS = ["fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", *CLI_MODEL, "--weight1", "W1", "--weight2", "W2"]


def test_weighted_fit_refuses_a_likelihood_ratio_test_and_points_to_wald(wfiles):
    p = hlmcli(*WARGS, "--compare-deviance", "47000", "--compare-params", "3", cwd=wfiles)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1
    assert "--compare-deviance" in p.stderr and "pseudo-likelihood" in p.stderr
    assert "no chi-square distribution" in p.stderr and "--test" in p.stderr
    # the same request from an HLM 7 command file (deviance:, df:) is refused too
    (wfiles / "wdev.hlm").write_text("level1:MATHACH=INTRCPT1+SES+RANDOM\nlevel2:INTRCPT1=INTRCPT2+SECTOR+random/\n"
                                     "level2:SES=INTRCPT2/\nlevel1weight:W1\nlevel2weight:W2\nmlf:y\n"
                                     "deviance:47000\ndf:3\n")
    p = hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", "--model", "wdev.hlm", cwd=wfiles)
    assert p.returncode == 1 and "wdev.hlm: deviance:" in p.stderr and "pseudo-likelihood" in p.stderr
    # unweighted, the same option still gives the likelihood-ratio test
    ok = hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", *CLI_MODEL, "--ml", "--compare-deviance", "47000",
                "--compare-params", "3", cwd=wfiles, check=True)
    assert "Variance-Covariance components test" in ok.stdout


def test_weighted_wald_test_uses_the_robust_covariance(wfiles):
    """The χ² of 'g01 = 0, g10 = 0' by hand, from the printed γs and robust covariance (the sandwich
    whose SEs match WeMix, test_matches_wemix): (Cγ)'(C V_robust C')⁻¹(Cγ) on 2 d.f."""
    from scipy import stats as sps

    doc = json.loads(hlmcli(*WARGS, "--test", "g01 = 0, g10 = 0", "--format", "json", cwd=wfiles, check=True).stdout)
    gamma = np.array([f["estimate"] for f in doc["fixed_effects"]])
    V = np.array(doc["gamma_robust_covariance"])
    C = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    chi2 = float((C @ gamma) @ np.linalg.solve(C @ V @ C.T, C @ gamma))
    test = doc["hypothesis_tests"][0]
    assert test["robust"]["chi2"] == pytest.approx(chi2, rel=1e-10)
    assert test["robust"]["df"] == 2
    assert test["robust"]["p"] == pytest.approx(sps.chi2.sf(chi2, 2), rel=1e-8, abs=1e-300)
    # the model-based covariance ignores the weights' information: no test from it
    assert test["model"] == {"chi2": None, "df": None, "p": None}
    # one g10 alone: its robust z² = (γ/robust SE)², the t-ratio of the robust table squared
    doc1 = json.loads(hlmcli(*WARGS, "--test", "g10 = 0", "--format", "json", cwd=wfiles, check=True).stdout)
    g10 = doc1["fixed_effects"][2]
    assert doc1["hypothesis_tests"][0]["robust"]["chi2"] == pytest.approx((g10["estimate"] / g10["robust_se"]) ** 2,
                                                                           rel=1e-10)
    text = hlmcli(*WARGS, "--test", "g01 = 0, g10 = 0", cwd=wfiles, check=True).stdout
    block = text[text.index("Results of General Linear Hypothesis Testing"):]
    assert "robust: Chi-square statistic" in block and "model-based:" not in block
    assert f"{chi2:.6f}" in block and "robust covariance only" in block


def test_compare_refuses_weighted_fits_and_says_why(wfiles):
    small = wfiles / "w_small.json"
    big = wfiles / "w_big.json"
    hlmcli("fit", "hsbw_l1.csv", "hsbw_l2.csv", "--id", "ID", "-1", "MATHACH = b0 + b1*SES + r", "-2", "b0 = g00 + u0",
           "-2", "b1 = g10", "--weight1", "W1", "--weight2", "W2", "--format", "json", "-o", small, cwd=wfiles, check=True)
    hlmcli(*WARGS, "--format", "json", "-o", big, cwd=wfiles, check=True)
    p = hlmcli("compare", small, big, cwd=wfiles)
    assert p.returncode == 1 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert "w_small.json is a weighted fit" in p.stderr and "pseudo-likelihood" in p.stderr and "--test" in p.stderr
