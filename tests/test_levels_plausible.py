"""Plausible values and imputed data sets for models of three and more levels (plausible_levels.py):
each fit is the nested fit of that outcome on its own, the combination is Rubin's rules computed here
by hand (the formulas of Rubin 1987 and Barnard & Rubin 1999; plausible.py's own implementation is
checked against mice and mitml in test_plausible.py), and D1 for one restriction is the square of
the combined t-ratio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hlmcli.io.archive_levels import BuildOptions3, build_from_files3
from hlmcli.data.design import variables_of
from hlmcli.data.design_levels import design3
from hlmcli.language.equations_levels import RunOptions, spec3_from_inputs
from hlmcli.errors import ModelError
from hlmcli.engine.nested import as_levels
from hlmcli.engine.nested_fit import fit_nested
from hlmcli.analysis.plausible_levels import combine_levels, combined_tests_levels, outcome_data, same_records

TDATA = Path(__file__).resolve().parent / "data" / "three_level"
MODEL = ("STRENGTH = p0 + e", ["p0 = b00 + r0"], ["b00 = g000 + u00"])


def pastes_files(directory: Path) -> list[Path]:
    """lme4's Pastes with three plausible values of the outcome (STRENGTH plus fixed deterministic
    noise), a level-1 predictor X and weights at every level (W1, W2, W3; W2I an integer level-2
    weight), as three CSV files."""
    l1 = pd.read_csv(TDATA / "pastes_l1.csv")
    rng = np.random.default_rng(20)
    for m in (1, 2, 3):
        l1[f"PV{m}"] = np.round(l1["STRENGTH"] + rng.normal(scale=0.8, size=len(l1)), 3)
    l1["X"] = np.round(rng.normal(size=len(l1)), 3)
    l1["W1"] = 1.0 + (np.arange(len(l1)) % 3)
    l2 = pd.read_csv(TDATA / "pastes_l2.csv")
    l2["W2"] = 1.0 + 0.5 * (l2["SAMPLE"] % 2)
    l2["W2I"] = 1 + (l2["SAMPLE"] % 3 == 0)
    l3 = pd.read_csv(TDATA / "pastes_l3.csv")
    l3["W3"] = 1.0 + (l3["BATCH"] % 4)
    paths = [directory / f"pastes_l{k}.csv" for k in (1, 2, 3)]
    for frame, path in zip((l1, l2.drop(columns="CASK"), l3), paths):
        frame.to_csv(path, index=False)
    return paths


@pytest.fixture(scope="module")
def pastes(tmp_path_factory):
    paths = pastes_files(tmp_path_factory.mktemp("pastes_pv"))
    archive = build_from_files3(paths, BuildOptions3(id2="SAMPLE", id3="BATCH"))
    spec = spec3_from_inputs(MODEL[0].replace("STRENGTH", "PV1") + "", MODEL[1], MODEL[2], None,
                             variables_of(archive), RunOptions())
    return archive, spec, design3(spec, archive)


def test_rubin_over_separate_fits(pastes):
    archive, spec, design = pastes
    outcomes = ["PV1", "PV2", "PV3"]
    datas = outcome_data(as_levels(design.data), archive, design.record_positions, outcomes, spec.level1)
    fits = [fit_nested(d) for d in datas]
    assert all(f.converged for f in fits)
    # each data set is that outcome's own model: the same arrays as its design alone
    for o, d in zip(outcomes[1:], datas[1:]):
        alone = as_levels(design3(spec3_from_inputs(MODEL[0].replace("STRENGTH", o), MODEL[1], MODEL[2], None,
                                                    variables_of(archive), RunOptions()), archive).data)
        assert np.array_equal(alone.y, d.y) and all(np.array_equal(a, b) for a, b in zip(alone.parents, d.parents))
    c = combine_levels(fits, ["γ000"], outcomes)
    M = 3
    est = np.array([f.gamma[0] for f in fits])
    u = np.mean([f.cov_gamma[0, 0] for f in fits])
    b = est.var(ddof=1)
    t = u + (1 + 1 / M) * b
    lam = (1 + 1 / M) * b / t
    dfcom = fits[0].df_gamma[0]
    nu_old = (M - 1) / lam ** 2
    nu_obs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
    row = c["fixed_effects"][0]
    assert row["estimate"] == pytest.approx(est.mean(), rel=1e-14)
    assert row["se"] == pytest.approx(np.sqrt(t), rel=1e-12)
    assert row["df"] == pytest.approx(nu_old * nu_obs / (nu_old + nu_obs), rel=1e-12)
    ur = np.mean([f.cov_gamma_robust[0, 0] for f in fits])
    assert c["fixed_effects_robust"][0]["se"] == pytest.approx(np.sqrt(ur + (1 + 1 / M) * b), rel=1e-12)
    assert c["sigma2"] == pytest.approx(np.mean([f.sigma2 for f in fits]), rel=1e-14)
    for level in (2, 3):
        assert c["taus"][level - 2][0][0] == pytest.approx(np.mean([f.taus[level - 2][0, 0] for f in fits]), rel=1e-14)
    assert c["deviance"] == pytest.approx(np.mean([f.deviance for f in fits]), rel=1e-14)
    # D1 for one restriction γ000 = 60 is the square of the combined t-ratio for γ000 − 60
    h = type("H", (), {"label": "g000 = 60", "rows": [[1.0]], "rhs": [60.0]})()
    d1 = combined_tests_levels(fits, [h])[0]
    assert d1["model"]["F"] == pytest.approx(((est.mean() - 60) / np.sqrt(t)) ** 2, rel=1e-10)


def test_plausible_values_missing_on_different_records_are_refused(pastes):
    archive, spec, design = pastes
    col = archive.levels[0].values[archive.names(1).index("PV2")]
    saved = col[4]
    col[4] = np.nan
    try:
        with pytest.raises(ModelError, match="PV1 and PV2 are missing on different records"):
            outcome_data(as_levels(design.data), archive, design.record_positions, ["PV1", "PV2"], spec.level1)
    finally:
        col[4] = saved


def test_imputed_data_sets_with_other_units_are_refused(pastes):
    archive, spec, design = pastes
    same_records([design, design], ["a", "b"])
    other = design3(spec, archive)
    other.unit_ids = (["elsewhere", *other.unit_ids[0][1:]], *other.unit_ids[1:])  # a level-2 unit elsewhere
    with pytest.raises(ModelError, match="b: the fit uses 60 level-1 records, but a uses 60 in other units"):
        same_records([design, other], ["a", "b"])
