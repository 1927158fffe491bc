"""One design builder for any number of levels (design_levels.frame): the two-level design of the records,
the two-level design from per-unit moments and the nested design of three levels are projections of it.
Expected values are computed here by hand from the archive's raw columns (numpy, unit by unit)."""

from __future__ import annotations

import numpy as np
import pytest

from hlmcli.data.design import design_from_moments, make_design, variables_of
from hlmcli.engine.moments import Moments
from hlmcli.errors import ModelError
from hlmcli.language.equations import build_spec

LEVEL1 = "MATHACH = b0 + b1*group(SES) + b2*grand(FEMALE) + r"
LEVEL2 = ["b0 = g00 + g01*SECTOR + g02*mean(SES) + u0", "b1 = g10 + g11*grand(MEANSES) + u1", "b2 = g20"]


def _by_hand(archive):
    """The model's columns built from the raw archive, unit by unit."""
    col = archive.level1_column
    unit = archive.unit_index
    n = np.bincount(unit)
    ses_mean = np.array([col("SES")[unit == j].mean() for j in range(archive.n_units)])
    female = col("FEMALE")
    meanses = archive.level2_column("MEANSES")
    return {"SES_group": col("SES") - ses_mean[unit], "FEMALE_grand": female - female.mean(), "mean_SES": ses_mean,
            "MEANSES_grand": meanses - meanses.mean(), "n": n, "female_mean": female.mean(),
            "meanses_mean": meanses.mean()}


def _moments(archive, names):
    """Per-unit moments (n, mean, centred cross-products) of the level-1 columns `names`, by hand."""
    unit = archive.unit_index
    X = np.column_stack([archive.level1_column(k) for k in names])
    J = archive.n_units
    n = np.bincount(unit, minlength=J).astype(float)
    mean = np.array([X[unit == j].mean(axis=0) for j in range(J)])
    C = np.array([(X[unit == j] - mean[j]).T @ (X[unit == j] - mean[j]) for j in range(J)])
    return Moments(n, mean, C)


def test_records_and_moments_designs_are_one_layout(hsb_loaded):
    archive = hsb_loaded
    spec = build_spec(LEVEL1, LEVEL2, variables_of(archive))
    hand = _by_hand(archive)
    d = make_design(spec, archive)
    np.testing.assert_allclose(d.L[:, 1], hand["SES_group"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.L[:, 2], hand["FEMALE_grand"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(d.sizes, hand["n"])
    sector = archive.level2_column("SECTOR")
    np.testing.assert_allclose(d.W[0], np.column_stack([np.ones(d.n_units), sector, hand["mean_SES"]]), atol=1e-12)
    np.testing.assert_allclose(d.W[1], np.column_stack([np.ones(d.n_units), hand["MEANSES_grand"]]), atol=1e-12)
    assert d.W[2].shape == (d.n_units, 1)
    assert [f.label for f in d.fixed] == ["γ00", "γ01", "γ02", "γ10", "γ11", "γ20"]
    assert [f.predictor for f in d.fixed] == ["INTRCPT2", "SECTOR", "mean(SES)", "INTRCPT2", "MEANSES", "INTRCPT2"]
    assert d.centering_means == pytest.approx({"FEMALE (level 1)": hand["female_mean"],
                                               "MEANSES (level 2)": hand["meanses_mean"]}, rel=1e-14)

    # the stream and Dask engines' design: the same layout from per-unit moments
    names = ["MATHACH", "SES", "FEMALE"]
    level2 = {k: archive.level2_column(k) for k in archive.level2_names}
    dm, _unit = design_from_moments(spec, list(archive.unit_ids), names, _moments(archive, names), level2)
    assert dm.n == d.n and dm.unit_ids == d.unit_ids and [f.label for f in dm.fixed] == [f.label for f in d.fixed]
    for Wm, W in zip(dm.W, d.W):
        np.testing.assert_allclose(Wm, W, rtol=1e-13, atol=1e-13)
    assert dm.centering_means == pytest.approx(d.centering_means, rel=1e-13)


def test_a_random_slope_on_a_predictor_constant_within_units_is_refused_from_records_and_moments(hsb_loaded):
    archive = hsb_loaded
    spec = build_spec("MATHACH = b0 + b1*SES + r", ["b0 = g00 + u0", "b1 = g10 + u1"], variables_of(archive))
    names = ["MATHACH", "SES"]
    m = _moments(archive, names)
    flat = Moments(m.n, m.mean, m.C * np.array([[1.0, 0.0], [0.0, 0.0]]))  # SES constant within every unit
    level2 = {k: archive.level2_column(k) for k in archive.level2_names}
    with pytest.raises(ModelError, match=r"^b1 \(SES\) cannot have a random slope: SES is constant within every unit"):
        design_from_moments(spec, list(archive.unit_ids), names, flat, level2)
    design_from_moments(spec, list(archive.unit_ids), names, m, level2)  # varying within units: accepted


def _three_level_archive():
    """A small three-level archive made in memory: 40 level-2 units of 1..12 records in 6 level-3 units,
    a missing YEAR in one record (deleted) and a level-2 unit whose only record is deleted."""
    from hlmcli.io.archive import Archive, LevelData

    rng = np.random.default_rng(7)
    n2 = rng.integers(1, 13, 40)
    n2[5] = 1
    n3 = np.array([5, 9, 6, 7, 8, 5])
    N = int(n2.sum())
    year = rng.normal(3.0, 2.0, N).round(3)
    year[3] = np.nan
    year[int(n2[:5].sum())] = np.nan  # level-2 unit 5's only record
    l1 = LevelData(["MATH", "YEAR"], np.vstack([rng.normal(50, 10, N).round(2), year]))
    l2 = LevelData(["FEMALE"], rng.integers(0, 2, (1, 40)).astype(float), [f"c{j}" for j in range(40)],
                   np.concatenate(([0], np.cumsum(n2))))
    l3 = LevelData(["LOWINC"], rng.uniform(0, 100, (1, 6)).round(1), [f"s{k}" for k in range(6)],
                   np.concatenate(([0], np.cumsum(n3))))
    return Archive([l1, l2, l3], "text", ("CHILDID", "SCHOOLID"), "analysis")


def test_the_three_level_design_is_the_levels_design_in_hlm3_names():
    """design3 is DesignLevels (its data in the three-level engine's form); the deletion and the centring
    of every level by hand: group(YEAR) about each child's records, mean(YEAR) per child, group(FEMALE)
    about each school's children, grand(LOWINC) over the schools."""
    from hlmcli.data.design_levels import DesignLevels, design3, design_levels
    from hlmcli.language.equations_levels import build_spec3

    archive = _three_level_archive()
    spec = build_spec3("MATH = p0 + p1*group(YEAR) + e", ["p0 = b00 + b01*mean(YEAR) + b02*group(FEMALE) + r0", "p1 = b10"],
                       ["b00 = g000 + g001*grand(LOWINC) + u00", "b01 = g010", "b02 = g020", "b10 = g100"],
                       variables_of(archive))
    d3, dk = design3(spec, archive), design_levels(spec, archive)
    year = archive.levels[0].values[1]
    keep = ~np.isnan(year)
    child = archive.parent(1)[keep]
    kept2 = np.unique(child)
    assert type(d3) is DesignLevels and d3.n_deleted == 2 and (d3.units2_deleted, d3.units3_deleted) == (1, 0)
    assert (d3.n, d3.n2, d3.n3) == (int(keep.sum()), 39, 6) == (dk.n, dk.J(2), dk.J(3))
    assert d3.unit2_ids == dk.unit_ids[0] == [f"c{j}" for j in kept2]
    np.testing.assert_array_equal(d3.level2_positions, kept2)
    renum = np.searchsorted(kept2, child)
    child_mean = np.bincount(renum, weights=year[keep]) / np.bincount(renum)
    np.testing.assert_allclose(d3.data.A[:, 0], year[keep] - child_mean[renum], rtol=0, atol=1e-12)
    school = archive.parent(2)[kept2]
    female = archive.levels[1].values[0][kept2]
    school_mean = np.bincount(school, weights=female) / np.bincount(school)
    np.testing.assert_allclose(d3.data.X2, np.column_stack([child_mean, female - school_mean[school]]), atol=1e-12)
    lowinc = archive.levels[2].values[0]
    np.testing.assert_allclose(d3.data.W3[:, 0], lowinc - lowinc.mean(), atol=1e-12)
    np.testing.assert_array_equal(d3.data.unit2, renum)
    np.testing.assert_array_equal(d3.data.unit3, school)
    assert d3.centering_means == pytest.approx({"LOWINC (level 3)": lowinc.mean()}, rel=1e-14)
