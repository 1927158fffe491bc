"""Each plot is drawn, and holds what it should: its lines, points, arrows and axis labels, with the
plotted numbers checked against lme4 (seed 000), the reference optimum and the raw data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

import hlmcli
from conftest import HSB_MODELS, REFERENCE, SAMPLE, hlmcli as run_cli
from hlmcli.report.plots import equation_lines

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
EQUATION = ("MATHACH = b0 + b1*group(SES) + r",
            ["b0 = g00 + g01*SECTOR + g02*MEANSES + u0", "b1 = g10 + g11*SECTOR + g12*MEANSES"])


@pytest.fixture(scope="module")
def seed000():
    return hlmcli.fit(HSB1, HSB2, id="ID", level1_eq=EQUATION[0], level2_eqs=EQUATION[1])


@pytest.fixture(scope="module")
def oneway():
    return hlmcli.fit(HSB1, HSB2, id="ID", level1_eq="MATHACH = b0 + r", level2_eqs=["b0 = g00 + u0"])


@pytest.fixture(scope="module")
def m4():
    l1, l2 = HSB_MODELS["hsb_m4"]
    return hlmcli.fit(HSB1, HSB2, id="ID", level1_eq=l1, level2_eqs=l2)


def test_equation_graph_has_a_line_per_sector_and_meanses_quartile(seed000, tmp_path):
    fig = seed000.plot("equation", tmp_path / "eq.png", by=["SECTOR", "MEANSES"])
    (ax,) = fig.axes
    assert len(ax.get_lines()) == 4
    assert ax.get_xlabel() == "SES (group-centred)" and ax.get_ylabel() == "Predicted MATHACH"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    q1, q3 = np.quantile(pd.read_csv(HSB2)["MEANSES"], [0.25, 0.75])  # quartiles over schools
    assert labels[0] == f"SECTOR = 0, MEANSES = {q1:.3g} (low, 25th pct.)"
    assert labels[3] == f"SECTOR = 1, MEANSES = {q3:.3g} (high, 75th pct.)"
    # each line is γ's straight line: intercept and slope at its SECTOR and MEANSES
    g = seed000.fixed_effects.set_index("term")["estimate"]
    for line, (sector, meanses) in zip(ax.get_lines(), [(0, q1), (0, q3), (1, q1), (1, q3)]):
        x, y = line.get_data()
        b0 = g["(Intercept)"] + g["SECTOR"] * sector + g["MEANSES"] * meanses
        b1 = g["SES_gc"] + g["SECTOR:SES_gc"] * sector + g["MEANSES:SES_gc"] * meanses
        assert np.allclose(y, b0 + b1 * x)
    # the x range is that of group-centred SES in the data
    data = pd.read_csv(HSB1)
    cses = data["SES"] - data.groupby("ID")["SES"].transform("mean")
    x = ax.get_lines()[0].get_xdata()
    assert np.isclose(x.min(), cses.min()) and np.isclose(x.max(), cses.max())
    assert (tmp_path / "eq.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_equation_lines_default_to_the_equations_predictors(seed000):
    xlabel, xs, lines = equation_lines(seed000)
    assert xlabel == "SES (group-centred)" and len(lines) == 4 and xs.size == 50


def test_shrinkage_plot_arrows_from_ols_to_eb_for_160_schools(oneway, tmp_path):
    fig = oneway.plot("shrinkage", tmp_path / "s.svg")
    (ax,) = fig.axes
    ols, eb, gline = ax.get_lines()
    ref = REFERENCE["hsb_m1"]["optimum"]
    tau, s2, g = ref["tau"][0][0], ref["sigma2"], ref["fixed"][0]["estimate"]
    data = pd.read_csv(HSB1, dtype={"ID": str})
    by_school = data.groupby("ID", sort=False)["MATHACH"].agg(["mean", "size"])
    n, ybar = by_school["size"].to_numpy(), by_school["mean"].to_numpy()
    assert np.allclose(ols.get_xdata(), n) and np.allclose(ols.get_ydata(), ybar)
    assert np.allclose(eb.get_ydata(), g + tau / (tau + s2 / n) * (ybar - g), atol=1e-5)
    assert np.allclose(gline.get_ydata(), g, atol=1e-5)
    assert len(ax.texts) == 160  # one arrow per school
    assert ax.get_xlabel() == "Unit size (level-1 records)" and ax.get_ylabel() == "MATHACH: intercept"
    assert ax.get_title() == "Shrinking from the BLUE to the BLUP"
    assert (tmp_path / "s.svg").read_text().lstrip().startswith("<?xml")


def test_units_caterpillar_and_diagnostics(m4, tmp_path):
    fig = m4.plot("units", sample=25, seed=3)
    assert len(fig.axes[0].get_lines()) == 25 and fig.axes[0].get_ylabel() == "EB-fitted MATHACH"
    assert len(m4.plot("units").axes[0].get_lines()) == 160
    fig = m4.plot("caterpillar", coef="SES")
    ax = fig.axes[0]
    y = ax.get_lines()[0].get_ydata()
    assert len(y) == 160 and np.all(np.diff(y) >= 0)
    assert np.allclose(np.sort(m4.random_effects()["u_SES"]), y)
    assert ax.get_ylabel() == "EB residual u (SES) ± 1.96 SD"
    fig = m4.plot("diagnostics", tmp_path / "d.pdf")
    assert [a.get_xlabel() for a in fig.axes] == ["Fitted MATHACH (EB)", "Normal quantile", "χ² quantile (2 d.f.)"]
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 7185
    assert (tmp_path / "d.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_command_writes_each_format_and_refuses_others(tmp_path):
    base = ["plot", "shrinkage", HSB1, HSB2, "--id", "ID", "-1", "MATHACH = b0 + r", "--cache-dir", tmp_path / "c"]
    # .svg and .pdf: test_outputs.py's test_plots_are_byte_identical_across_runs writes each (twice)
    for ext in ("png",):
        proc = run_cli(*base, "-o", tmp_path / f"s.{ext}")
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / f"s.{ext}").stat().st_size > 1000
    bad = run_cli(*base, "-o", tmp_path / "s.gif")
    assert bad.returncode == 1 and ".png, .svg or .pdf" in bad.stderr
    bad = run_cli("plot", "equation", HSB1, HSB2, "--id", "ID", "-1", "MATHACH = b0 + r", "-o", tmp_path / "e.png",
                  "--cache-dir", tmp_path / "c")
    assert bad.returncode == 1 and "no level-1 predictor" in bad.stderr


def test_missing_matplotlib_gives_the_install_hint(oneway, monkeypatch):
    import sys

    from hlmcli.errors import HlmError

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(HlmError, match=r"pip install '\.\[plot\]'"):
        oneway.plot("shrinkage")


def test_equation_graph_from_a_saved_json_fit_matches_the_one_from_data(seed000, tmp_path):
    fit = tmp_path / "fit.json"
    fit.write_text(seed000.to_json(), encoding="utf-8")
    ref_fig = seed000.plot("equation", by=["SECTOR", "MEANSES"])
    ref_lines = ref_fig.axes[0].get_lines()
    x = ref_lines[0].get_xdata()
    q1, q3 = np.quantile(pd.read_csv(HSB2)["MEANSES"], [0.25, 0.75])
    out = tmp_path / "eq.png"
    proc = run_cli("plot", "equation", fit, "--by", "SECTOR=0,1", "--by", f"MEANSES={float(q1)!r},{float(q3)!r}",
                   f"--x-range={float(x.min())!r},{float(x.max())!r}", "-o", out)
    assert proc.returncode == 0, proc.stderr
    from hlmcli.report.plots import plot_equation_from_fit
    import json

    fig = plot_equation_from_fit(json.loads(fit.read_text()), None, "SES", {"SECTOR": [0, 1], "MEANSES": [q1, q3]},
                                 (x.min(), x.max()))
    lines = fig.axes[0].get_lines()
    assert len(lines) == 4
    for a, b in zip(lines, ref_lines):
        assert np.allclose(a.get_ydata(), b.get_ydata())
    bad = run_cli("plot", "shrinkage", fit, "-o", tmp_path / "s.png")
    assert bad.returncode == 2 and "needs the data" in bad.stderr


def test_eb_against_ols_with_the_45_degree_line(oneway, tmp_path):
    """HSB's one-way model: the OLS intercept is the school's mean and the EB intercept shrinks it to
    γ00 by λ = τ / (τ + σ²/n) (reference optimum of hsb_m1); the SVG is byte-identical run to run."""
    fig = oneway.plot("eb-ols", tmp_path / "a.svg")
    oneway.plot("eb-ols", tmp_path / "b.svg")
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()
    (ax,) = fig.axes
    points, diagonal = ax.get_lines()
    ref = REFERENCE["hsb_m1"]["optimum"]
    tau, s2, g = ref["tau"][0][0], ref["sigma2"], ref["fixed"][0]["estimate"]
    data = pd.read_csv(HSB1, dtype={"ID": str})
    by_school = data.groupby("ID", sort=False)["MATHACH"].agg(["mean", "size"])
    n, ybar = by_school["size"].to_numpy(), by_school["mean"].to_numpy()
    assert np.allclose(points.get_xdata(), ybar) and np.allclose(points.get_ydata(), g + tau / (tau + s2 / n) * (ybar - g), atol=1e-5)
    assert np.allclose(diagonal.get_xdata(), diagonal.get_ydata())  # EB = OLS
    assert diagonal.get_xdata()[0] == min(ybar.min(), points.get_ydata().min())
    assert ax.get_xlabel() == "OLS estimate of the intercept" and ax.get_ylabel() == "EB estimate of the intercept"
    assert [t.get_text() for t in fig.texts] == ["160 units"]


def test_eb_against_ols_leaves_out_units_without_ols_and_says_so():
    """A school cut to one record has no OLS slope: it is not drawn, and the caption counts it."""
    records, schools = pd.read_csv(HSB1), pd.read_csv(HSB2)
    first = records["ID"].iloc[0]
    records = records[(records["ID"] != first) | ~records["ID"].duplicated()]
    l1, l2 = HSB_MODELS["hsb_m3"]
    fig = hlmcli.fit(records, schools, id="ID", level1_eq=l1, level2_eqs=l2).plot("eb-ols", coef="SES")
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 159
    assert [t.get_text() for t in fig.texts] == ["159 units; 1 left out (their OLS cannot be computed)"]
