"""Tables for papers against references: broom.mixed's tidy() of the same HSB models in lme4 (term
names with their centring, sd__ and cor__ rows), LaTeX that sets every character as written (checked by
a tokeniser, and compiled where a LaTeX engine is installed), and the table options (--se, --stars,
--caption, --notes) of `fit --format ...` and `hlmcli table`."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import DATA, REFERENCE, SAMPLE, hlmcli

pytest.importorskip("jinja2")
pytest.importorskip("tabulate")

from hlmcli.report.tables import TableOptions, combined_table, fit_table, latex_document, side_by_side_text, tidy  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
# broom.mixed::tidy(lmer(...), conf.int = TRUE) of HSB (tests/reference_scripts/broom_tidy_hsb.R)
BROOM = pd.read_csv(DATA / "tables" / "broom_tidy_hsb.csv", keep_default_na=False, na_values=[""])
BROOM_COLUMNS = ["effect", "group", "term", "estimate", "std.error", "statistic", "df", "p.value", "conf.low", "conf.high"]
GRAND = ["-1", "MATHACH = b0 + b1*grand(SES) + r", "-2", "b0 = g00 + g01*MEANSES + u0", "-2", "b1 = g10 + u1"]


def golden(name: str) -> dict:
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


def check_against_broom(table: pd.DataFrame, model: str) -> None:
    ref = BROOM[BROOM["model"] == model].reset_index(drop=True)
    assert list(table.columns[:10]) == BROOM_COLUMNS
    assert list(table["term"]) == list(ref["term"])
    assert list(table["effect"]) == list(ref["effect"])
    assert list(table["group"].fillna("")) == list(ref["group"].fillna(""))
    # lme4's optimum (bobyqa, max|gradient| 2.5e-6) is ~1.5e-7 relative from the certified one
    assert np.allclose(table["estimate"], ref["estimate"], rtol=1e-5, atol=0)
    fixed = ref["effect"] == "fixed"
    assert np.allclose(table.loc[fixed, "std.error"], ref.loc[fixed, "std.error"], rtol=1e-5)
    assert np.allclose(table.loc[fixed, "statistic"], ref.loc[fixed, "statistic"], rtol=1e-5)
    assert table.loc[~fixed, ["std.error", "statistic", "p.value"]].isna().all().all()  # broom: NA for ran_pars


def test_tidy_csv_is_broom_mixed_with_sd_and_cor_rows(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "--model", SAMPLE / "models" / "m4_slopes.txt", "--format", "csv", check=True)
    table = pd.read_csv(io.StringIO(proc.stdout))
    check_against_broom(table, "m4")
    fixed = table[table["effect"] == "fixed"]
    # df and the interval are HLM's: t(158) quantile (broom's Wald interval for lmer is the normal's)
    assert list(fixed["df"]) == [158] * 4
    t = stats.t.ppf(0.975, 158)
    assert np.allclose(fixed["conf.low"], fixed["estimate"] - t * fixed["std.error"], rtol=1e-9)
    assert np.allclose(fixed["p.value"], 2 * stats.t.sf(np.abs(fixed["statistic"]), 158), rtol=1e-6)
    assert set(fixed["se.type"]) == {"model"}
    ref = REFERENCE["hsb_m4"]["optimum"]
    assert np.allclose(fixed["robust.std.error"], [f["robust_se"] for f in ref["fixed"]], rtol=1e-5)
    ran = table[table["effect"] == "ran_pars"].set_index("term")
    assert np.isclose(ran.loc["cor__(Intercept).SES_gc", "estimate"],
                      ref["tau"][0][1] / math.sqrt(ref["tau"][0][0] * ref["tau"][1][1]), rtol=1e-6)
    assert np.isclose(ran.loc["sd__Observation", "estimate"] ** 2, ref["sigma2"], rtol=1e-6)
    assert np.isclose(ran.loc["sd__SES_gc", "chi2"], ref["varcomp"][1]["chi2"], rtol=1e-5)
    assert list(fixed["hlm.label"]) == ["γ00", "γ01", "γ10", "γ11"]


# ------------------------------------------------------------------ LaTeX

_TEXT_MODE_GLYPHS = set("<>|")  # OT1 sets these as ¡ ¿ — in text mode


def latex_problems(tex: str) -> list[str]:
    """What pdflatex would not set as written: < > | in text mode (OT1 prints ¡ ¿ —), _ ^ # outside
    math, an unescaped %, non-ASCII characters, unbalanced braces or $, and tabular rows whose
    number of & differs from the column specification."""
    problems, math_mode, depth, i = [], False, 0, 0
    while i < len(tex):
        c = tex[i]
        if c == "\\":
            i += len(re.match(r"\\([A-Za-z]+|.)", tex[i:], re.S).group(0))
            continue
        if c == "$":
            math_mode = not math_mode
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                problems.append(f"unbalanced '}}' at {i}")
        elif c == "%":
            problems.append(f"unescaped % at {i}")
        elif not math_mode and c in _TEXT_MODE_GLYPHS:
            problems.append(f"'{c}' in text mode at {i}: {tex[max(0, i - 20):i + 20]!r}")
        elif not math_mode and c in "_^#":
            problems.append(f"'{c}' outside math at {i}")
        elif ord(c) > 127:
            problems.append(f"non-ASCII {c!r} at {i}")
        i += 1
    if math_mode or depth:
        problems.append("unbalanced $ or braces at the end")
    for spec, body in re.findall(r"\\begin\{tabular\}\{([a-z]+)\}(.*?)\\end\{tabular\}", tex, re.S):
        for row in body.split("\\\\")[:-1]:
            row = re.sub(r"\\(toprule|midrule|bottomrule)", "", row)
            if row.strip() and len(re.findall(r"(?<!\\)&", row)) != len(spec) - 1:
                problems.append(f"row with the wrong number of cells: {row.strip()!r}")
    return problems


def compile_latex(tex: str, folder: Path) -> None:
    """pdflatex the table in a minimal document, where a LaTeX engine with booktabs is installed."""
    engine = shutil.which("pdflatex")
    if engine is None or not subprocess.run(["kpsewhich", "booktabs.sty"], capture_output=True, text=True).stdout.strip():
        return  # the tokeniser's check stands
    (folder / "doc.tex").write_text(latex_document(tex))
    proc = subprocess.run([engine, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(folder / "doc.pdf"), "-"], capture_output=True, text=True).stdout
        assert "¡" not in text and "<0.001" in text.replace(" ", "")


def test_latex_tokeniser_catches_what_pdflatex_misprints():
    assert latex_problems("a & <0.001 \\\\") and latex_problems("x_1") and latex_problems("50%")
    assert latex_problems("\\begin{tabular}{lr}\na & b & c \\\\\n\\end{tabular}")
    assert not latex_problems("$<$0.001 \\textless{} a\\_b 50\\% \\begin{tabular}{lr}\na & b \\\\\n\\end{tabular}")


def test_grand_centred_fit_latex_json_and_tidy(hsb_archive, tmp_path):
    """One fit, grand-centred SES: its LaTeX with stars, caption and notes sets as written; its JSON
    names the terms as the lme4 formula does, and its tidy table is broom.mixed's."""
    out = tmp_path / "grand.json"
    tex = hlmcli("fit", hsb_archive, *GRAND, "--format", "latex", "--stars", "--caption", "HSB & <grand>",
                 "--notes", "Data: 50% of #1 | ~x^2", "--json-out", out, check=True).stdout
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert [f["term"] for f in doc["fixed_effects"]] == ["(Intercept)", "MEANSES", "SES_grand"]
    assert doc["lme4_formula"] == "MATHACH ~ 1 + MEANSES + SES_grand + (1 + SES_grand | ID)"
    check_against_broom(tidy(doc), "grand")
    assert np.isclose(doc["deviance"], BROOM[BROOM["model"] == "grand"]["REMLcrit"].iloc[0], rtol=1e-9)

    assert latex_problems(tex) == []
    assert "<0.001" not in tex.replace("$<$0.001", "") and "$<$0.001" in tex
    assert "\\caption{HSB \\& \\textless{}grand\\textgreater{}}" in tex
    assert "SES (grand-centred) (g10) & 2.190*** &" in tex and "SES (grand-centred), u1 &" in tex
    # τ's covariance and correlation row, against lme4's SDs and correlation
    ref = BROOM[(BROOM["model"] == "grand")].set_index("term")["estimate"]
    cov = ref["cor__(Intercept).SES_grand"] * ref["sd__(Intercept)"] * ref["sd__SES_grand"]
    row = f"INTRCPT1, SES (grand-centred) (covariance) &  & {cov:.3f} &  &  &  & {ref['cor__(Intercept).SES_grand']:.3f} \\\\"
    assert row in tex
    assert "* p \\textless{} 0.05, ** p \\textless{} 0.01, *** p \\textless{} 0.001." in tex
    assert "Data: 50\\% of \\#1 \\textbar{} \\textasciitilde{}x\\textasciicircum{}2" in tex
    assert "Optimum & certified \\\\" in tex
    compile_latex(tex, tmp_path)


@pytest.mark.parametrize("name", ["pin_hsb_m4_reml.json", "weights_hsbw.json", "hglm_contra_agq.json",
                                  "hglm_cbpp_pql.json", "hglm_mmmec_laplace.json", "plausible_values.json"])
def test_every_latex_output_sets_as_written(name, tmp_path):
    doc = golden(name)
    options = TableOptions(stars=True, caption="A & B", notes=("p<0.05",))
    if doc.get("kind") == "combined":
        outputs = [combined_table(doc, "latex"), combined_table(doc, "latex", options)]
    else:
        outputs = [fit_table(doc, "latex"), fit_table(doc, "latex", options),
                   side_by_side_text([doc, doc], ["a_1", "b<2>"], "latex", options)]
    for tex in outputs:
        assert latex_problems(tex) == [], tex
    assert "$<$0.001" in outputs[0]
    compile_latex(outputs[1], tmp_path)


# ------------------------------------------------------------------ standard errors, rows, options

def test_weighted_fit_reports_robust_standard_errors_by_default():
    doc = golden("weights_hsbw.json")
    f = doc["fixed_effects"][0]
    md = fit_table(doc, "markdown")
    def cell(value: float, text: str) -> bool:
        return re.search(rf"\|\s*{value:.3f}\s*\|", text) is not None

    assert "Robust SE" in md.splitlines()[0] and cell(f["robust_se"], md) and not cell(f["se"], md)
    assert "robust (sandwich, clustered on level-2 units) (the default for a weighted fit)" in md
    model = fit_table(doc, "markdown", TableOptions(se="model"))
    assert cell(f["se"], model) and "default for a weighted fit" not in model
    table = tidy(doc)
    fixed = table[table["effect"] == "fixed"]
    assert set(fixed["se.type"]) == {"robust"}
    assert np.allclose(fixed["std.error"], [g["robust_se"] for g in doc["fixed_effects"]])
    assert np.allclose(fixed["statistic"], [g["robust_t"] for g in doc["fixed_effects"]])


def test_hglm_tidy_has_no_residual_row_and_exponentiates():
    doc = golden("hglm_contra_agq.json")
    table = tidy(doc)
    assert list(table[table["effect"] == "ran_pars"]["term"]) == ["sd__(Intercept)"]
    assert table["group"].iloc[-1] == "DISTRICT"
    fixed = table[table["effect"] == "fixed"]
    assert np.allclose(fixed["odds.ratio"], np.exp(fixed["estimate"]))
    assert np.allclose(fixed["odds.ratio"], [f["odds_ratio"] for f in doc["fixed_effects"]])
    assert np.isclose(table["estimate"].iloc[-1] ** 2, doc["tau"][0][0])


def test_table_command_options_and_glance_rows(tmp_path):
    paths = []
    for name in ("pin_hsb_m4_reml.json", "weights_hsbw.json"):
        paths.append(tmp_path / name)
        paths[-1].write_text((GOLDEN / name).read_text(encoding="utf-8"), encoding="utf-8")
    md = hlmcli("table", *paths, "--names", "m4,weighted", "--stars", "--caption", "Two fits",
                "--notes", "Source: HSB.", check=True).stdout
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()
            if line.startswith("|")}
    m4, w = golden("pin_hsb_m4_reml.json"), golden("weights_hsbw.json")
    assert md.startswith("Table: Two fits\n")
    assert rows["Standard errors"] == ["model", "robust"]
    assert rows["SES (group-centred)"][0] == "2.803***" and rows["SES"][1].startswith(f"{w['fixed_effects'][2]['estimate']:.3f}")
    se_row = md.splitlines()[[i for i, line in enumerate(md.splitlines()) if line.startswith("| (Intercept)")][0] + 1]
    assert f"({w['fixed_effects'][0]['robust_se']:.3f})" in se_row and f"({m4['fixed_effects'][0]['se']:.3f})" in se_row
    assert rows["Cor: INTRCPT1, SES (group-centred)"] == [f"{m4['tau_correlation'][0][1]:.3f}", ""]
    assert rows["Optimum"] == ["certified", "certified"] and rows["Method"] == ["REML", "ML"]
    assert rows["N"] == ["7185", "7185"] and rows["J"] == ["160", "160"]
    # the notes are Markdown-escaped: a leading '* ' would start a list, '**' emphasis
    assert "\\* p \\< 0.05, \\*\\* p \\< 0.01, \\*\\*\\* p \\< 0.001." in md and md.rstrip().endswith("Source: HSB.")
    from click.testing import CliRunner

    from hlmcli.cli import main

    bad = CliRunner().invoke(main, ["fit", str(paths[0]), "--stars"])  # refused before any reading
    assert bad.exit_code == 2 and "--format csv, markdown, latex or html" in bad.output


def test_tables_of_a_three_level_fit_read_its_levels():
    """A three-level fit's tables (levels_results.table_view): its γs, one lme4 group per level, J per level."""
    doc = golden("pin_eg_context_json.json")  # a three-level fit
    t = tidy(doc)
    fixed = t[t.effect == "fixed"]
    assert list(fixed["estimate"]) == [f["estimate"] for f in doc["fixed_effects"]]
    assert list(fixed["hlm.label"]) == [f["gamma"] for f in doc["fixed_effects"]]
    groups = set(t.loc[t.effect == "ran_pars", "group"])
    assert groups == {"SCHOOLID:CHILDID", "SCHOOLID", "Residual"}
    assert "J (level 3)" in side_by_side_text([doc], ["a"], "csv") and "J (level 3)" in fit_table(doc, "latex")
