"""Fits of three and four levels through the API and `Results` (levels_results.py): HLM3 .hlm files by
model=, REML, the accessors against lme4 (tests/data/three_level/pastes_*.json, made by
tests/reference_scripts/three_level_lme4.R), and --test's labels with HLM 7's comma rule."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

import hlmcli
from conftest import DATA
from hlmcli.language.model import Fixed
from hlmcli.errors import ModelError
from hlmcli.language.hypotheses import parse_test
from hlmcli.levels_results import label_of

T3 = DATA / "three_level"
PASTES = dict(level1=T3 / "pastes_l1.csv", level2=T3 / "pastes_l2.csv", level3=T3 / "pastes_l3.csv", id2="SAMPLE",
              id3="BATCH", warn=lambda m: None)
HLM3 = "level1:STRENGTH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nlevel3:INTRCPT2=INTRCPT3+random/\n"


def _ref(name: str) -> dict:
    return json.loads((T3 / f"{name}.json").read_text())["reference"]


@pytest.mark.parametrize("method", ["ML", "REML"])
def test_an_hlm3_command_file_by_model_matches_lme4(tmp_path, method):
    (tmp_path / "pastes.hlm").write_text(HLM3)
    res = hlmcli.fit(**PASTES, model=tmp_path / "pastes.hlm", method=method)
    ref = _ref(f"pastes_{method.lower()}")
    assert res.method == method and res.converged and res.n_levels == 3
    assert res.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    row = res.fixed_effects.iloc[0]
    assert row["term"] == "(Intercept)" and row["label"] == "γ000"
    assert row["estimate"] == pytest.approx(ref["fixed"]["γ000"]["est"], rel=1e-6)
    assert row["se"] == pytest.approx(ref["fixed"]["γ000"]["se"], rel=1e-5)
    vc = ref["variance_components"]
    assert res.tau[2].iloc[0, 0] == pytest.approx(vc["BATCH:SAMPLE"]["tau"][0][0], rel=1e-5)
    assert res.tau[3].iloc[0, 0] == pytest.approx(vc["BATCH"]["tau"][0][0], rel=1e-5)
    assert res.sigma2 == pytest.approx(vc["residual"]["sigma2"], rel=1e-5)
    assert res.loglik == pytest.approx(-ref["deviance"] / 2, rel=1e-8)
    assert res.to_dict()["model"]["given"]["model_file"] == "pastes.hlm"
    # the same model given as equations is the same fit
    eqs = hlmcli.fit(**PASTES, level1_eq="STRENGTH = π0 + e", level2_eqs=["π0 = β00 + r0"],
                     level3_eqs=["β00 = γ000 + u00"], method=method)
    assert eqs.to_dict()["fixed_effects"] == res.to_dict()["fixed_effects"]


def test_results_of_three_levels_tidy_and_random_effects():
    res = hlmcli.fit(**PASTES, level1_eq="STRENGTH = π0 + e", level2_eqs=["π0 = β00 + r0"],
                     level3_eqs=["β00 = γ000 + u00"], tests=["g000 = 60"])
    ref = _ref("pastes_ml")
    tidy = res.tidy()
    assert list(tidy.effect) == ["fixed", "ran_pars", "ran_pars", "ran_pars"]
    assert tidy.loc[0, "estimate"] == pytest.approx(ref["fixed"]["γ000"]["est"], rel=1e-6)
    (test,) = res.to_dict()["hypothesis_tests"]  # Wald by hand: ((γ - 60) / se)²
    f = res.fixed_effects.iloc[0]
    assert test["model"]["chi2"] == pytest.approx(((f["estimate"] - 60) / f["se"]) ** 2, rel=1e-10)
    assert "Results of General Linear Hypothesis Testing: g000 = 60" in res.summary()
    assert len(res.random_effects(2)) == 30 and len(res.random_effects(3)) == 10
    with pytest.raises(ModelError, match="level must be 2 ... 3"):
        res.random_effects(4)
    with pytest.raises(ModelError, match="residuals_level1"):
        res.predict()
    assert math.isclose(res.aic, ref["deviance"] + 2 * 4, rel_tol=1e-8)  # γ000, two τ, σ²: lme4's AIC


def _spec(*idx):
    return SimpleNamespace(n_levels=len(idx[0]), fixed=lambda: [Fixed(i, ()) for i in idx])


def test_test_labels_as_printed_with_hlm7s_comma_rule():
    spec = _spec((0, 0, 0), (1, 0, 0), (1, 10, 0), (11, 0, 0))
    assert [label_of(f.idx, 3) for f in spec.fixed()] == ["γ000", "γ100", "γ1,10,0", "γ11,0,0"]
    h = parse_test("γ1,10,0 = 0, g11,0,0 - g100 = 1, 2*g000 = 0", spec)
    assert h.rows == ((0, 0, 1, 0), (0, -1, 0, 1), (2, 0, 0, 0)) and h.rhs == (0, 1, 0)
    with pytest.raises(ModelError, match="this model has no g110; its fixed effects are g000, g100, g1,10,0, g11,0,0"):
        parse_test("g110 = 0", spec)
    four = _spec((0, 0, 0, 0), (0, 0, 0, 1))
    assert parse_test("δ0001 = 0", four).rows == ((0, 1),)
    with pytest.raises(ModelError, match="cannot read 'g000'"):
        parse_test("g000 = 0", four)


def test_level1_file_read_from_the_files_given_when_the_cache_recorded_relative_paths(tmp_path, monkeypatch):
    """A cached three-level archive built from relative names in one folder, then fitted by absolute
    paths from another: residuals_level1(order="source") reads the files given now (it said the level-1
    file 'is not there any more')."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for k in (1, 2, 3):
        shutil.copyfile(DATA / "three_level" / f"eg_l{k}.csv", data / f"eg_l{k}.csv")
    cache = tmp_path / "cache"
    model = dict(id2="CHILDID", id3="SCHOOLID", level1_eq="MATH = p0 + e", level2_eqs=["p0 = b00 + r0"],
                 level3_eqs=["b00 = g000 + u00"], cache_dir=str(cache))
    monkeypatch.chdir(data)
    hlmcli.fit("eg_l1.csv", "eg_l2.csv", level3="eg_l3.csv", **model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = hlmcli.fit(str(data / "eg_l1.csv"), str(data / "eg_l2.csv"), level3=str(data / "eg_l3.csv"), **model)
    table = res.residuals_level1(order="source")
    assert list(table["row"][:3]) == [1, 2, 3] and len(table) == res.to_dict()["n_level1"]
