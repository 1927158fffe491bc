"""Tables for papers: broom's tidy CSV against the reference optimum, the four HSB models side by
side (and the LaTeX compiles when a LaTeX engine is installed), escaping by the libraries."""

from __future__ import annotations

import io
import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from conftest import REFERENCE, SAMPLE, hlmcli

pytest.importorskip("jinja2")
pytest.importorskip("tabulate")

from hlmcli.report.tables import latex_document, side_by_side_text  # noqa: E402

MODELS = ["m1_empty", "m2_means", "m3_random_coef", "m4_slopes"]
CASES = ["hsb_m1", "hsb_m2", "hsb_m3", "hsb_m4"]


@pytest.fixture(scope="module")
def saved_fits(hsb_archive, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fits")
    paths = []
    for m in MODELS:
        out = folder / f"{m}.json"
        hlmcli("fit", hsb_archive, "--model", SAMPLE / "models" / f"{m}.txt", "--format", "json", "-o", out, check=True)
        paths.append(out)
    return paths


@pytest.mark.parametrize("fmt", ["markdown", "latex", "html"])
def test_fit_tables_in_each_format(hsb_archive, fmt):
    out = hlmcli("fit", hsb_archive, "--model", SAMPLE / "models" / "m4_slopes.txt", "--format", fmt, check=True).stdout
    for text in ("SECTOR:SES (group-centred)", "11.394", "Chi-square", "Deviance", "46638.60", "0.784"):
        assert text in out


def test_four_hsb_models_side_by_side(saved_fits):
    proc = hlmcli("table", *saved_fits, "--format", "csv", check=True)
    table = pd.read_csv(io.StringIO(proc.stdout), dtype=str, keep_default_na=False)
    assert list(table.columns) == [" "] + MODELS
    rows = table.set_index(" ")
    for m, case in zip(MODELS, CASES):
        ref = REFERENCE[case]["optimum"]
        intercept = rows.loc["(Intercept)", m]
        assert intercept == f"{ref['fixed'][0]['estimate']:.3f}"
        se_row = table.index[table[" "] == "(Intercept)"][0] + 1
        assert table.loc[se_row, m] == f"({ref['fixed'][0]['se']:.3f})"
        assert rows.loc["Var: Residual", m] == f"{ref['sigma2']:.3f}"
        assert rows.loc["Deviance", m] == f"{ref['deviance']:.2f}"
        q = len(ref["tau"])
        k = len(ref["fixed"]) + q * (q + 1) // 2 + 1  # lme4's count: γs, τ's distinct elements, σ²
        assert rows.loc["AIC", m] == f"{ref['deviance'] + 2 * k:.2f}"
        assert rows.loc["BIC", m] == f"{ref['deviance'] + k * np.log(7185):.2f}"
        assert rows.loc["N", m] == "7185" and rows.loc["J", m] == "160"
    assert rows.loc["SECTOR:SES (group-centred)", "m1_empty"] == ""
    assert rows.loc["Var: SES (group-centred)", "m3_random_coef"] != ""
    tau = REFERENCE["hsb_m4"]["optimum"]["tau"]
    assert rows.loc["Cov: INTRCPT1, SES (group-centred)", "m4_slopes"] == f"{tau[0][1]:.3f}"
    assert rows.loc["Cor: INTRCPT1, SES (group-centred)", "m4_slopes"] == f"{tau[0][1] / np.sqrt(tau[0][0] * tau[1][1]):.3f}"
    assert rows.loc["Optimum", "m1_empty"] == "certified" and rows.loc["Method", "m4_slopes"] == "REML"


def test_four_hsb_models_latex_compiles(saved_fits, tmp_path):
    out = tmp_path / "models.tex"
    hlmcli("table", *saved_fits, "--format", "latex", "-o", out, check=True)
    tex = out.read_text()
    assert tex.startswith("\\begin{tabular}{lrrrr}") and tex.rstrip().endswith("\\end{tabular}")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert " & m1\\_empty & m2\\_means & m3\\_random\\_coef & m4\\_slopes \\\\" in tex
    body = [line for line in tex.splitlines() if line.endswith("\\\\")]
    assert all(line.count("&") == 4 for line in body)
    # header, 5 terms with SE rows, 3 variances and τ's covariance and correlation, 7 statistics
    assert len(body) == 1 + 2 * 5 + 3 + 2 + 7
    engine = shutil.which("pdflatex")
    if engine is None:
        pytest.skip("no LaTeX engine installed; structure checked only")
    doc = tmp_path / "doc.tex"
    doc.write_text(latex_document(tex))
    kpse = subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True)
    if not kpse.stdout.strip():
        pytest.skip("booktabs is not installed for the LaTeX engine; structure checked only")
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "doc.pdf").exists()


def test_escaping_comes_from_the_libraries(saved_fits):
    fits = [json.loads(p.read_text()) for p in saved_fits[:2]]
    names = ["a_b & <c>", "50% #1"]
    latex = side_by_side_text(fits, names, "latex")
    assert "a\\_b \\& \\textless{}c\\textgreater{}" in latex and "50\\% \\#1" in latex
    html = side_by_side_text(fits, names, "html")
    assert "a_b &amp; &lt;c&gt;" in html and "<c>" not in html
    md = side_by_side_text(fits, names, "markdown")
    assert md.splitlines()[0].count("|") == 4


def test_table_usage_errors(saved_fits, tmp_path):
    bad = hlmcli("table", *saved_fits, "--names", "a,b")
    assert bad.returncode == 2 and "2 names for 4 fits" in bad.stderr
    (tmp_path / "x.json").write_text("{}")
    bad = hlmcli("table", tmp_path / "x.json")
    assert bad.returncode == 1 and "not an hlmcli JSON fit" in bad.stderr


def test_missing_extras_give_the_install_hint(saved_fits, monkeypatch):
    import sys

    from hlmcli.errors import HlmError

    fits = [json.loads(p.read_text()) for p in saved_fits[:1]]
    monkeypatch.setitem(sys.modules, "jinja2", None)
    monkeypatch.setitem(sys.modules, "tabulate", None)
    for fmt in ("latex", "html", "markdown"):
        with pytest.raises(HlmError, match=r"pip install '\.\[tables\]'"):
            side_by_side_text(fits, ["m1"], fmt)
    assert side_by_side_text(fits, ["m1"], "csv").startswith(" ,m1")


def test_markdown_escapes_names(saved_fits, hsb_archive, tmp_path):
    """A '|' in a name would split its cell (every row must keep one cell per column), and * _ ` < >
    would become emphasis, code or HTML: names are escaped with CommonMark's backslash."""
    import re

    fits = [json.loads(p.read_text()) for p in saved_fits[:2]]
    md = side_by_side_text(fits, ["a|b", "x*y_z <i>"], "markdown")
    lines = md.splitlines()
    assert lines[0].split("|")[1:] and "a\\|b" in lines[0] and "x\\*y\\_z \\<i\\>" in lines[0]
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in lines]
    assert set(cells) == {4}, cells  # a label column and two models: four unescaped bars on every row
    # end to end: a saved fit whose file name holds a bar and an underscore
    odd = tmp_path / "m|1_a.json"
    odd.write_text(saved_fits[0].read_text())
    out = hlmcli("table", odd, saved_fits[1], "--format", "markdown", check=True).stdout
    assert "m\\|1\\_a" in out.splitlines()[0]
    assert {len(re.findall(r"(?<!\\)\|", line)) for line in out.splitlines()} == {4}

    # numbers are hlmcli's own and stay as they are
    fit_md = hlmcli("fit", hsb_archive, "--model", SAMPLE / "models" / "m4_slopes.txt", "--format", "markdown",
                    check=True).stdout
    assert "| <0.001 |" in fit_md.replace("  ", " ") or " <0.001 " in fit_md
    assert "SECTOR:SES (group-centred) (g11)" in fit_md and "\\" not in fit_md.split("Random effect")[0]
