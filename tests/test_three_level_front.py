"""The three-level front end without a fit: the π/β/γ parser (with a Hypothesis fuzz), HLM3 command files,
the archive's checks, centring at each level (checked by hand on a tiny data set), and the HLM3 report
written from a hand-made NestedFit."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlmcli.io.archive import load_archive, write_archive
from hlmcli.io.archive_levels import BuildOptions3, build_from_files3
from hlmcli.data.design import variables_of
from hlmcli.data.design_levels import design3
from hlmcli.language.equations_levels import (Centering, RunOptions, Variables, build_spec3, classify, parse_hlm3_file,
                               spec3_from_inputs)
from hlmcli.errors import DataError, HlmError, ModelError
from hlmcli.engine.nested import NestedFit
from hlmcli.report.report_levels import Symbols3, fit_json3, fit_text3, lme4_formula3, model_summary

V = Variables((("YEAR", "GRADE", "MATH"), ("FEMALE", "BLACK"), ("LOWINC", "MOBILITY")))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True)


# ---------------------------------------------------------------- equations

def test_greek_ascii_and_printed_forms_are_one_model():
    greek = build_spec3("MATH = π0 + π1*YEAR + e", ["π0 = β00 + β01*FEMALE + r0", "π1 = β10 + r1"],
                        ["β00 = γ000 + γ001*LOWINC + u00", "β10 = γ100 + u10"], V)
    ascii_ = build_spec3("MATH = p0 + p1*YEAR + e", ["p0 = b00 + b01*FEMALE + r0", "p1 = b10 + r1"],
                         ["b00 = g000 + g001*LOWINC + u00", "b10 = g100 + u10"], V)
    printed = build_spec3("MATHijk = P0jk + P1jk*(YEARijk) + Eijk", ["P0 = B00 + B01*(FEMALE) + R0", "P1 = B10 + R1"],
                          ["B00 = G000 + G001(LOWINC) + U00", "B10k = G100 + U10k"], V)
    assert greek == ascii_ == printed
    assert [f.idx for f in greek.fixed()] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    assert [i for i, _ in greek.random(2)] == [(0,), (1,)] and [i for i, _ in greek.random(3)] == [(0, 0), (1, 0)]
    assert not greek.equation((0, 1)).random  # β01 = γ010 by default: fixed


def test_defaults_follow_hlm3():
    spec = build_spec3("MATH = p0 + p1*YEAR + e", [], [], V)
    assert spec.equation((0,)).random and not spec.equation((1,)).random  # π0 = β00 + r0; π1 = β10
    assert spec.equation((0, 0)).random and not spec.equation((1, 0)).random  # β00 = γ000 + u00; β10 = γ100


def test_centring_functions():
    spec = build_spec3("MATH = p0 + p1*group(YEAR) + p2*grand(GRADE) + e",
                       ["p0 = b00 + b01*group(FEMALE) + b02*mean(YEAR) + r0"],
                       ["b00 = g000 + g001*grand(LOWINC) + g002*mean(FEMALE) + u00"], V)
    assert [t.centering for t in spec.level1] == [Centering.GROUP, Centering.GRAND]
    x1, x2 = spec.equation((0,)).predictors
    assert (x1.centering, x1.mean_of, x2.mean_of) == (Centering.GROUP, None, 1)
    w1, w2 = spec.equation((0, 0)).predictors
    assert (w1.centering, w2.mean_of) == (Centering.GRAND, 2)


@pytest.mark.parametrize("level1,level2,level3,words", [
    ("MATH = p0 + p1*YEAR + e", ["p1 = b00 + r1"], [], "b00 belongs to π0"),
    ("MATH = p0 + e", [], ["b20 = g200 + u20"], "not in the level-1 equation"),
    ("MATH = p0 + e", [], ["b01 = g010"], "β01 is not in the level-2 equation of π0"),
    ("MATH = p0 + e", ["p0 = b00 + r0", "p0 = b00 + r0"], [], "already has a level-2 equation"),
    ("MATH = p0 + p2*YEAR + e", [], [], "without gaps"),
    ("MATH = p0 + e", ["p0 = b00 + r1"], [], "the residual of π0 is r0"),
    ("MATH = p0 + e", [], ["b00 = g000 + g001*group(LOWINC) + u00"], "group() centring has no meaning at level 3"),
    ("MATH = p0 + e", [], ["b00 = g000 + g001*FEMALE + u00"], "FEMALE is a level-2 variable"),
    ("MATH = p0 + e", ["p0 = b00 + b01*mean(LOWINC) + r0"], [], "lower level"),
    ("MATH = p0 + e", ["b00 = g000 + u00"], [], "pass it with -3"),
    ("MATH = p0 + e + p1*YEAR", [], [], "put e last"),
    ("MATH = b0 + e", [], [], "two-level form"),
    ("MATH = p0 + b00 + e", [], [], "level-2 coefficient"),
])
def test_equation_errors_name_the_equation(level1, level2, level3, words):
    with pytest.raises(ModelError) as err:
        build_spec3(level1, level2, level3, V)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_pasted_output_and_blocks():
    text = ("Summary of the model specified\nLevel-1 Model\n    Y = P0 + P1*(YEAR) + E\nLevel-2 Model\n"
            "    P0 = B00 + B01*(FEMALE) + R0\n    P1 = B10 + R1\nLevel-3 Model\n    B00 = G000 + G001(MOBILITY) + U00\n"
            "    B01 = G010\n    B10 = G100 + U10\nMixed Model\n MATH = G000 + ...\nThe outcome variable is MATH")
    l1, l2, l3 = classify(text.splitlines())
    assert l1 == "MATH =  P0 + P1*(YEAR) + E" and len(l2) == 2 and len(l3) == 3
    spec = spec3_from_inputs(text, [], [], None, V, RunOptions())
    assert spec.outcome == "MATH" and spec.equation((0, 0)).predictors[0].name == "MOBILITY"


def test_hlm3_command_file(tmp_path):
    path = tmp_path / "m.hlm"
    path.write_text("#WHLM CMD FILE\nnonlin:n\nnumit:50\nlevel1:MATH=INTRCPT1+YEAR,1+RANDOM\n"
                    "level2:INTRCPT1=INTRCPT2+FEMALE,2+random/\nlevel3:INTRCPT2=INTRCPT3+LOWINC,2+random/\n"
                    "level3:FEMALE=INTRCPT3/\nlevel2:YEAR=INTRCPT2+random/\nlevel3:INTRCPT2=INTRCPT3+random/\n"
                    "fixtau2:3\nfixtau3:3\nlevel3weight:none\nresfil3:n\ntitle:test\n")
    spec = parse_hlm3_file(path, V)
    expected = build_spec3("MATH = p0 + p1*group(YEAR) + e", ["p0 = b00 + b01*grand(FEMALE) + r0", "p1 = b10 + r1"],
                           ["b00 = g000 + g001*grand(LOWINC) + u00", "b01 = g010", "b10 = g100 + u10"], V,
                           RunOptions(max_iterations=50, title="test"))
    assert spec == expected
    path.write_text("level1:MATH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nlevel3:LOWINC=INTRCPT3/\n")
    with pytest.raises(ModelError, match="not a term of the level2 line"):
        parse_hlm3_file(path, V)
    path.write_text("level1:MATH=INTRCPT1+RANDOM\nlevel3weight:LOWINC\n")
    with pytest.raises(ModelError, match="not supported for three-level models yet"):
        parse_hlm3_file(path, V)


TEMPLATES = ["MATH = p0 + p1*YEAR + e", "p0 = b00 + b01*group(FEMALE) + r0", "b00 = g000 + g001*grand(LOWINC) + u00",
             "B10 = G100 + G101(MOBILITY) + U10", "π1 = β10 + β11*mean(YEAR) + r1", "MATHijk = π0jk + eijk"]
ALPHABET = "pbgruePBGRUE0123456789*+-=()., _jkiYEARMATHFEMLOWINCmeangroupdπβγ×·−\t\n\x00"


@FUZZ
@given(st.sampled_from(TEMPLATES), st.lists(st.tuples(st.integers(0, 60), st.sampled_from(ALPHABET)), max_size=6),
       st.sampled_from([1, 2, 3]))
def test_fuzz_parser_raises_only_one_line_errors(template, edits, slot):
    text = list(template)
    for pos, ch in edits:
        if text and pos % 3 == 0:
            del text[pos % len(text)]
        else:
            text.insert(pos % (len(text) + 1), ch)
    eq = "".join(text)
    args = {1: (eq, [], []), 2: ("MATH = p0 + p1*YEAR + e", [eq], []), 3: ("MATH = p0 + p1*YEAR + e", [], [eq])}[slot]
    try:
        build_spec3(*args, V)
    except HlmError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.text(alphabet=ALPHABET, max_size=200))
def test_fuzz_blocks(text):
    try:
        spec3_from_inputs(text, [], [], None, V, RunOptions())
    except HlmError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- a tiny archive, centring by hand

@pytest.fixture
def tiny(tmp_path):
    """2 schools; school A has children 1 (2 records) and 2 (1 record), school B child 3 (3 records)."""
    pd.DataFrame({"S": ["A", "A", "A", "B", "B", "B"], "C": [1, 1, 2, 3, 3, 3], "X": [1.0, 3.0, 5.0, 0.0, 1.0, 2.0],
                  "Y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}).to_csv(tmp_path / "l1.csv", index=False)
    pd.DataFrame({"C": [3, 1, 2], "S": ["B", "A", "A"], "W": [10.0, 2.0, 4.0]}).to_csv(tmp_path / "l2.csv", index=False)
    pd.DataFrame({"S": ["B", "A"], "Z": [7.0, 1.0]}).to_csv(tmp_path / "l3.csv", index=False)
    files = [tmp_path / f"l{k}.csv" for k in (1, 2, 3)]
    archive = build_from_files3(files, BuildOptions3("C", "S"))
    write_archive(archive, tmp_path / "t.mdm")
    return load_archive(tmp_path / "t.mdm", 3), files


def test_archive_order_and_links(tiny):
    a, _ = tiny
    # level-3 units in level-3 file order (B, A); level-2 units grouped under them
    assert a.unit3_ids == ["B", "A"] and a.unit2_ids == ["3", "1", "2"]
    assert list(a.offsets3) == [0, 1, 3] and list(a.offsets2) == [0, 3, 5, 6]
    assert list(a.level1[a.level1_names.index("Y")]) == [4.0, 5.0, 6.0, 1.0, 2.0, 3.0]
    assert a.level2_names == ["W"] and a.level3_names == ["Z"]


def test_centring_by_hand(tiny):
    a, _ = tiny
    spec = build_spec3("Y = p0 + p1*group(X) + p2*grand(X) + e",
                       ["p0 = b00 + b01*group(W) + b02*grand(W) + b03*mean(X) + r0"],
                       ["b00 = g000 + g001*grand(Z) + g002*mean(W) + g003*mean(X) + u00"], variables_of(a))
    d = design3(spec, a).data
    # records in order: child 3 (X 0,1,2), child 1 (X 1,3), child 2 (X 5); mean X over records = 2
    np.testing.assert_allclose(d.A[:, 0], [-1, 0, 1, -1, 1, 0])  # group: child means 1, 2, 5
    np.testing.assert_allclose(d.A[:, 1], [-2, -1, 0, -1, 1, 3])  # grand
    # level 2 (children 3, 1, 2): W 10, 2, 4; school means B 10, A 3; grand mean 16/3; mean(X) 1, 2, 5
    np.testing.assert_allclose(d.X2[:, 0], [0, -1, 1])
    np.testing.assert_allclose(d.X2[:, 1], [10 - 16 / 3, 2 - 16 / 3, 4 - 16 / 3])
    np.testing.assert_allclose(d.X2[:, 2], [1, 2, 5])
    # level 3 (B, A): Z 7, 1 (grand mean 4); mean(W) 10, 3; mean(X) over records 1, 3
    np.testing.assert_allclose(d.W3, [[3, 10, 1], [-3, 3, 3]])
    assert list(d.unit2) == [0, 0, 0, 1, 1, 2] and list(d.unit3) == [0, 1, 1]
    assert [b.level3_cols for b in d.layout.pis[0].betas] == [(None, 0, 1, 2), (None,), (None,), (None,)]


def test_level2_unit_in_two_level3_units(tmp_path):
    pd.DataFrame({"S": ["A", "B"], "C": [1, 1], "Y": [1.0, 2.0]}).to_csv(tmp_path / "l1.csv", index=False)
    pd.DataFrame({"C": [1]}).to_csv(tmp_path / "l2.csv", index=False)
    pd.DataFrame({"S": ["A", "B"]}).to_csv(tmp_path / "l3.csv", index=False)
    with pytest.raises(DataError, match="level-2 unit 1 .* two level-3 units"):
        build_from_files3([tmp_path / f"l{k}.csv" for k in (1, 2, 3)], BuildOptions3("C", "S"))


def test_one_file_for_all_levels(tmp_path, tiny):
    """HLM3 templates written by Stata's hlm wrapper name one file for all three levels."""
    a, files = tiny
    one = pd.read_csv(files[0]).merge(pd.read_csv(files[1]), on=["C", "S"]).merge(pd.read_csv(files[2]), on="S")
    one.to_csv(tmp_path / "one.csv", index=False)
    b = build_from_files3([tmp_path / "one.csv"] * 3, BuildOptions3("C", "S"))
    assert b.level3_names == ["Z"] and b.level2_names == ["W"] and sorted(b.level1_names) == ["X", "Y"]
    assert b.n_level2 == 3 and b.n_level3 == 2 and b.n_level1 == 6


# ---------------------------------------------------------------- the report, from a hand-made fit

def test_report_from_a_hand_made_fit(tiny):
    a, _ = tiny
    spec = build_spec3("Y = p0 + p1*X + e", ["p1 = b10 + r1"], ["b10 = g100 + u10"], variables_of(a))
    d = design3(spec, a)
    cert = SimpleNamespace(certified=True, ranks=(2, 2), qs=(2, 2), tolerance=1e-6, hessian_eigenvalue=0.5,
                           failed=[], to_json=lambda: {"certified": True})
    fit = NestedFit(method="ML", gamma=np.array([1.5, 0.25]), cov_gamma=np.diag([0.04, 0.01]),
                    cov_gamma_robust=np.diag([0.09, 0.0025]), df_gamma=np.array([1.0, 1.0]), sigma2=0.5,
                    tau_pi=np.array([[1.0, 0.2], [0.2, 0.16]]), tau_beta=np.array([[0.25, 0.0], [0.0, 0.04]]),
                    deviance=20.0, n_params=9, reliability_pi=np.array([0.5, 0.25]), reliability_beta=np.array([0.6, 0.3]),
                    chi2_pi=[{"chi2": 3.0, "df": 2, "p": 0.2231, "n_units": 3}] * 2,
                    chi2_beta=[{"chi2": 4.0, "df": 1, "p": 0.0455, "n_units": 2}] * 2,
                    eb_pi=np.zeros((3, 2)), eb_pi_var=np.zeros((3, 2, 2)), eb_beta=np.zeros((2, 2)),
                    eb_beta_var=np.zeros((2, 2, 2)), certificate=cert, converged=True, iterations=7, message="")
    meta = {"data_source": "t.mdm", "id2": "C", "id3": "S"}
    text = fit_text3(d, fit, meta, Symbols3(False))
    # t = 1.5 / 0.2 = 7.5 (model-based) and 1.5 / 0.3 = 5.0 (robust); τπ correlation 0.2 / (1 * 0.4) = 0.5
    assert "INTRCPT3, γ000               1.500000       0.200000     7.500" in text
    assert "INTRCPT3, γ000               1.500000       0.300000     5.000" in text
    assert "INTRCPT1,π0   1.000   0.500" in text
    assert "Iterations stopped at the optimum (checked: no change of σ2, τπ and τβ lowers the deviance)" in text and "full maximum likelihood" in text
    assert "Y ~ 1 + X + (1 + X | S) + (1 + X | S:C)" in text
    doc = fit_json3(d, fit, meta)
    assert doc["schema"] == 3 and [f["gamma"] for f in doc["fixed_effects"]] == ["γ000", "γ100"]
    assert doc["fixed_effects"][1]["robust_se"] == pytest.approx(0.05)
    assert doc["tau_pi"]["correlation"][0][1] == pytest.approx(0.5)
    uncertified = SimpleNamespace(**{**cert.__dict__, "certified": False, "failed": ["face decrement 1E-2 > tolerance"]})
    fit.certificate, fit.converged = uncertified, False
    text = fit_text3(d, fit, meta, Symbols3(True))
    assert text.startswith("WARNING: the optimum is NOT certified") and "face decrement 1E-2" in text
    assert "G000" in text and "tau(pi)" in text


def test_model_summary_and_formula_with_centring():
    spec = build_spec3("MATH = p0 + p1*group(YEAR) + e", ["p0 = b00 + b01*grand(FEMALE) + r0", "p1 = b10 + r1"],
                       ["b00 = g000 + g001*LOWINC + u00", "b10 = g100 + u10"], V)
    lines = model_summary(spec, Symbols3(False))
    assert "    MATHijk = π0jk + π1jk*(YEARijk - YEAR•jk) + eijk" in lines
    assert "    π0jk = β00k + β01k*(FEMALEjk - FEMALE••) + r0jk" in lines
    assert "    β00k = γ000 + γ001*(LOWINCk) + u00k" in lines
    formula, notes = lme4_formula3(spec, "CHILDID", "SCHOOLID")
    assert formula == ("MATH ~ 1 + LOWINC + FEMALE_grand + YEAR_gc + (1 + YEAR_gc | SCHOOLID) + "
                       "(1 + YEAR_gc | SCHOOLID:CHILDID)")
    assert any(n.startswith("YEAR_gc = YEAR - ") for n in notes)


HLM3 = ("#WHLM CMD FILE\nnonlin:n\nnumit:100\nlevel1:MATH=INTRCPT1+YEAR,1+RANDOM\n"
        "level2:INTRCPT1=INTRCPT2+FEMALE,2+random/\nlevel3:INTRCPT2=INTRCPT3+LOWINC,2+random/\nlevel3:FEMALE=INTRCPT3/\n"
        "level2:YEAR=INTRCPT2+random/\nlevel3:INTRCPT2=INTRCPT3+random/\nfixtau3:3\nresfil3:n\ntitle:x\n")


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(HLM3)), st.sampled_from(ALPHABET + ":/,\n")), min_size=1, max_size=8))
def test_fuzz_hlm3_command_files(edits):
    import tempfile

    text = list(HLM3)
    for pos, ch in edits:
        if pos % 2:
            text.insert(pos % (len(text) + 1), ch)
        elif text:
            del text[pos % len(text)]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.hlm")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("".join(text))
        try:
            parse_hlm3_file(path, V)
        except HlmError as exc:
            assert "\n" not in str(exc)


def test_cache_notices_changed_sources(tmp_path):
    from hlmcli.io.cache import cached_archive

    pd.DataFrame({"S": [1, 1, 2], "C": [1, 2, 3], "Y": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "l1.csv", index=False)
    pd.DataFrame({"C": [1, 2, 3], "S": [1, 1, 2]}).to_csv(tmp_path / "l2.csv", index=False)
    pd.DataFrame({"S": [1, 2], "Z": [0.5, 1.5]}).to_csv(tmp_path / "l3.csv", index=False)
    files = [tmp_path / f"l{k}.csv" for k in (1, 2, 3)]
    options = BuildOptions3("C", "S")
    _, first = cached_archive(files, options, cache_dir=tmp_path / "c")
    _, again = cached_archive(files, options, cache_dir=tmp_path / "c")
    pd.DataFrame({"S": [1, 2], "Z": [0.5, 2.5]}).to_csv(tmp_path / "l3.csv", index=False)
    archive, changed = cached_archive(files, options, cache_dir=tmp_path / "c")
    assert (first, again, changed) == ("built", "reused", "built")
    assert list(archive.level3[0]) == [0.5, 2.5]


def test_the_printed_model_reads_back_as_the_same_model():
    """`hlmcli model` output (HLM3's form, centring as differences from means) pasted back in."""
    spec = build_spec3("MATH = p0 + p1*group(YEAR) + p2*grand(GRADE) + e",
                       ["p0 = b00 + b01*group(FEMALE) + b02*grand(BLACK) + r0", "p1 = b10 + r1"],
                       ["b00 = g000 + g001*grand(LOWINC) + u00", "b10 = g100 + g101*MOBILITY + u10"], V)
    for ascii_only in (False, True):
        printed = "\n".join(model_summary(spec, Symbols3(ascii_only)))
        assert spec3_from_inputs(printed, [], [], None, V, RunOptions()) == spec


def test_analysis_time_deletion_drops_records_and_empty_units(tmp_path):
    """--missing analysis: records missing a variable of the model are dropped when it is fitted; a child
    left with no records, and a school left with no children, drop out; means are over what is used."""
    pd.DataFrame({"S": ["A", "A", "A", "B"], "C": [1, 1, 2, 3], "X": [1.0, 3.0, 5.0, 7.0],
                  "Y": [1.0, None, 3.0, None]}).to_csv(tmp_path / "l1.csv", index=False)
    pd.DataFrame({"C": [1, 2, 3], "S": ["A", "A", "B"]}).to_csv(tmp_path / "l2.csv", index=False)
    pd.DataFrame({"S": ["A", "B"]}).to_csv(tmp_path / "l3.csv", index=False)
    a = build_from_files3([tmp_path / f"l{k}.csv" for k in (1, 2, 3)], BuildOptions3("C", "S"))
    spec = build_spec3("Y = p0 + p1*grand(X) + e", [], [], variables_of(a))
    d = design3(spec, a)
    assert (d.n, d.n2, d.n3, d.n_deleted, d.units2_deleted, d.units3_deleted) == (2, 2, 1, 2, 1, 1)
    np.testing.assert_allclose(d.data.A[:, 0], [-2.0, 2.0])  # X of the records used: 1 and 5, mean 3
    assert d.unit2_ids == ["1", "2"] and d.unit3_ids == ["A"]
