"""The model language: every input form gives one specification and one design; every error is named."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

from hlmcli.data.design import make_design, variables_of
from hlmcli.language.model import Level2Equation, ModelSpec, RunOptions, Term
from hlmcli.language.equations_levels import Variables
from hlmcli.language.equations import (build_spec, parse_hlm_file,
                              spec_from_inputs)
from hlmcli.errors import ModelError
from hlmcli.report.report import Symbols, lme4_formula, model_summary

from conftest import HSB_MODELS, REFERENCE, SAMPLE, hlmcli


def _small_archive(tmp_path, level1: str, level2: str):
    from click.testing import CliRunner

    from hlmcli.io.archive import load_archive
    from hlmcli.cli import main

    (tmp_path / "a.csv").write_text(level1)
    (tmp_path / "b.csv").write_text(level2)
    r = CliRunner().invoke(main, ["mdm", "build", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--id", "id",
                                  "-o", str(tmp_path / "a.mdm")])
    assert r.exit_code == 0, r.output
    return load_archive(tmp_path / "a.mdm")


def spec_from_reference(case: dict) -> tuple:
    """The reference file's own description of a model, as (outcome, level1, level2) of plain tuples."""
    m = case["model"]
    level1 = tuple((v.upper(), c) for v, c in m["level1"])
    level2 = tuple((tuple((v.upper(), c) for v, c in eq["predictors"]), eq["random"]) for eq in m["level2"])
    return m["outcome"].upper(), level1, level2


def as_tuples(spec: ModelSpec) -> tuple:
    return (spec.outcome.upper(), tuple((t.name.upper(), t.centering) for t in spec.level1),
            tuple((tuple((t.name.upper(), t.centering) for t in eq.predictors), eq.random) for eq in spec.level2))


# The same four HSB models in every written form users bring.
FORMS = {
    "hsb_m1": {
        "greek": ("MATHACH = β0 + r", ["β0 = γ00 + u0"]),
        "hlm_printed": ("MATHACHij = β0j + rij", ["β0j = γ00 + u0j"]),
        "defaults": ("MATHACH = b0 + r", []),
        "hlm_file": "level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n",
    },
    "hsb_m2": {
        "greek": ("MATHACH = β0 + r", ["β0 = γ00 + γ01×MEANSES + u0"]),
        "hlm_printed": ("MATHACHij = β0j + rij", ["β0j = γ00 + γ01*(MEANSESj) + u0j"]),
        "upper": ("MATHACH = B0 + R", ["B0 = G00 + G01*meanses + U0"]),
        "hlm_file": "level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+MEANSES+random/\n",
    },
    "hsb_m3": {
        "greek": ("MATHACH = β0 + β1·group(SES) + r", ["β0 = γ00 + u0", "β1 = γ10 + u1"]),
        "hlm_printed": ("MATHACHij = β0j + β1j*(SESij - SES•j) + rij", ["β0j = γ00 + u0j", "β1j = γ10 + u1j"]),
        "dot_form": ("MATHACH = b0 + b1*(SES - SES.j) + r", ["b1 = g10 + u1"]),
        "hlm_file": "level1:MATHACH=INTRCPT1+SES,1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nlevel2:SES=INTRCPT2+random/\n",
    },
    "hsb_m4": {
        "greek": ("MATHACH = β0 + β1*group(SES) + r", ["β0 = γ00 + γ01*SECTOR + u0", "β1 = γ10 + γ11*SECTOR + u1"]),
        "hlm_printed": ("MATHACHij = β0j + β1j*(SESij - SES•j) + rij",
                        ["β0j = γ00 + γ01*(SECTORj) + u0j", "β1j = γ10 + γ11*(SECTORj) + u1j"]),
        "hlm_file": ("level1:MATHACH=INTRCPT1+SES,1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+SECTOR+random/\n"
                     "level2:SES=INTRCPT2+SECTOR+random/\n"),
    },
}


@pytest.mark.parametrize("case", list(HSB_MODELS))
def test_every_form_gives_the_reference_spec_and_design(case, hsb_loaded, tmp_path):
    variables = variables_of(hsb_loaded)
    expected = spec_from_reference(REFERENCE[case])
    ascii_l1, ascii_l2 = HSB_MODELS[case]
    specs = {"ascii": build_spec(ascii_l1, ascii_l2, variables)}
    model_file = tmp_path / "m.txt"
    model_file.write_text("# a model file\n" + ascii_l1 + "\n\n" + "\n".join(f"{e}   # level 2" for e in ascii_l2) + "\n")
    specs["model_file"] = spec_from_inputs(None, [], str(model_file), variables, RunOptions())
    for form, value in FORMS[case].items():
        if form == "hlm_file":
            path = tmp_path / "m.hlm"
            path.write_text("#WHLM CMD FILE\nnonlin:n\nnumit:100\n" + value + "mlf:n\n")
            specs[form] = parse_hlm_file(path, variables)
        else:
            specs[form] = build_spec(value[0], value[1], variables)
    base = make_design(specs["ascii"], hsb_loaded)
    for form, spec in specs.items():
        assert as_tuples(spec) == expected, form
        d = make_design(spec, hsb_loaded)
        assert np.array_equal(d.L, base.L) and all(np.array_equal(a, b) for a, b in zip(d.W, base.W)), form
        assert np.array_equal(d.fixed_matrix(), base.fixed_matrix()), form


def test_popular2_hlm_file_parses_as_stated(popular_loaded):
    spec = parse_hlm_file(SAMPLE / "popular2" / "popular.hlm", variables_of(popular_loaded))
    assert spec.outcome == "popular"
    assert spec.level1 == (Term("extrav", 1), Term("sex", 1))
    assert spec.level2 == (Level2Equation((Term("texp", 2),), True), Level2Equation((), True), Level2Equation((), False))
    assert spec.method == "ML"
    assert spec.options.max_iterations == 100 and spec.options.stopval == 1e-6


def _html_model_lines() -> list[str]:
    raw = (SAMPLE.parent / "tests" / "data" / "PopularHLM7_output.html").read_text(encoding="latin-1")
    start = raw.index("<h4>Level-1 Model</h4>")
    end = raw.index("Final Results")
    text = re.sub(r"<br\s*/?>|</h4>|<h4>|<h3>", "\n", raw[start:end])
    text = html.unescape(re.sub(r"<[^>]+>", "", text)).replace("\xa0", " ")
    return [re.sub(r"\s+", "", line) for line in text.splitlines() if line.strip()]


def test_printed_summary_matches_hlm7_popular2(popular_loaded):
    spec = parse_hlm_file(SAMPLE / "popular2" / "popular.hlm", variables_of(popular_loaded))
    ours = [re.sub(r"\s+", "", l) for l in model_summary(spec, Symbols(False)) if l.strip()]
    theirs = _html_model_lines()
    assert ours[1:] == theirs[: len(ours) - 1]  # ours starts with "Summary of the model specified"


def test_ascii_summary_and_centering_notes(hsb_loaded):
    spec = build_spec(*HSB_MODELS["hsb_m4"], variables_of(hsb_loaded))
    lines = model_summary(spec, Symbols(True))
    assert "    MATHACHij = B0j + B1j*(SESij - SES.j) + rij" in lines
    assert "    B1j = G10 + G11*(SECTORj) + U1j" in lines
    assert "SES has been centered around the group mean." in lines
    assert not any(ch in "".join(lines) for ch in "βγ")


def test_lme4_formula(hsb_loaded):
    spec = build_spec(*HSB_MODELS["hsb_m4"], variables_of(hsb_loaded))
    formula, notes = lme4_formula(spec, "ID")
    assert formula == "MATHACH ~ 1 + SECTOR + SES_gc + SECTOR:SES_gc + (1 + SES_gc | ID)"
    assert "SES_gc = SES - ave(SES, ID)" in notes


def test_model_command_end_to_end(hsb_archive):
    proc = hlmcli("model", hsb_archive, "-1", "MATHACH = β0 + β1*group(SES) + r", "-2", "β0 = γ00 + γ01*SECTOR + u0",
                  "--level2", "β1 = γ10 + γ11*SECTOR + u1", check=True)
    assert "Mixed Model" in proc.stdout and "(1 + SES_gc | ID)" in proc.stdout
    assert "β1j = γ10 + γ11*(SECTORj) + u1j" in proc.stdout


def test_contextual_mean_and_grand_centering(hsb_loaded):
    v = variables_of(hsb_loaded)
    spec = build_spec("MATHACH = b0 + b1*group(SES) + r", ["b0 = g00 + g01*grand(mean(SES)) + g02*grand(SECTOR) + u0"], v)
    d = make_design(spec, hsb_loaded)
    # hand computation: unit means of SES from the raw level-1 column, centered over units
    ses = hsb_loaded.level1_column("SES")
    means = np.add.reduceat(ses, hsb_loaded.offsets[:-1]) / hsb_loaded.unit_sizes
    assert np.allclose(d.W[0][:, 1], means - means.mean(), atol=1e-14)
    sector = hsb_loaded.level2_column("SECTOR")
    assert np.allclose(d.W[0][:, 2], sector - sector.mean())
    # group-mean centered SES sums to zero within each unit
    assert np.allclose(np.add.reduceat(d.L[:, 1], d.offsets[:-1]), 0, atol=1e-10)


def test_grand_mean_at_level1_is_over_records(hsb_loaded):
    spec = build_spec("MATHACH = b0 + b1*(SES - SES..) + r", [], variables_of(hsb_loaded))
    d = make_design(spec, hsb_loaded)
    ses = hsb_loaded.level1_column("SES")
    assert np.allclose(d.L[:, 1], ses - ses.mean())


def test_missing_values_are_deleted_before_centering(tmp_path):
    a = _small_archive(tmp_path, "id,x,y\n1,1,2\n1,,3\n1,3,4\n2,3,5\n2,5,4\n", "id,w\n1,0\n2,1\n")
    d = make_design(build_spec("y = b0 + b1*group(x) + r", [], variables_of(a)), a)
    assert d.n == 4 and d.n_deleted == 1
    assert list(d.L[:, 1]) == [-1.0, 1.0, -1.0, 1.0]  # means over the records used: 2 and 4


# ---------------------------------------------------------------- errors, each with its message

def err(hsb_loaded, l1, l2=()):
    with pytest.raises(ModelError) as info:
        spec = build_spec(l1, list(l2), variables_of(hsb_loaded))
        make_design(spec, hsb_loaded)
    return str(info.value)


def test_unknown_variable_lists_close_matches(hsb_loaded):
    msg = err(hsb_loaded, "MATHACH = b0 + b1*SESS + r")
    assert "unknown variable 'SESS'" in msg and "SES (level 1)" in msg


def test_level2_variable_at_level1_names_its_file(hsb_loaded):
    msg = err(hsb_loaded, "MATHACH = b0 + b1*SECTOR + r")
    assert "SECTOR is a level-2 variable (in hsb2.csv)" in msg


def test_level1_variable_at_level2(hsb_loaded):
    msg = err(hsb_loaded, "MATHACH = b0 + r", ["b0 = g00 + g01*SES + u0"])
    assert "SES is a level-1 variable (in hsb1.csv)" in msg and "mean(SES)" in msg


def test_coefficient_index_mismatch(hsb_loaded):
    assert "b2 has no term in the level-1 equation" in err(hsb_loaded, "MATHACH = b0 + b1*SES + r", ["b2 = g20 + u2"])
    assert "g01 belongs to b0" in err(hsb_loaded, "MATHACH = b0 + b1*SES + r", ["b1 = g10 + g01*SECTOR + u1"])
    assert "the random effect of b1 is u1" in err(hsb_loaded, "MATHACH = b0 + b1*SES + r", ["b1 = g10 + u0"])


def test_duplicate_level2_equation(hsb_loaded):
    msg = err(hsb_loaded, "MATHACH = b0 + r", ["b0 = g00 + u0", "b0 = g00 + g01*SECTOR + u0"])
    assert "b0 already has a level-2 equation" in msg


def test_random_slope_of_within_constant_predictor(tmp_path):
    a = _small_archive(tmp_path, "id,x,y\n1,1,2\n1,1,3\n2,3,5\n2,3,4\n3,2,1\n3,2,2\n", "id,w\n1,0\n2,1\n3,0\n")
    with pytest.raises(ModelError, match=r"b1 \(x\) cannot have a random slope: x is constant within every unit"):
        make_design(build_spec("y = b0 + b1*x + r", ["b1 = g10 + u1"], variables_of(a)), a)


def test_collinear_predictors_are_named(tmp_path):
    from hlmcli.analysis.pipeline import analyse

    rows = "\n".join(f"{j},{(i * 7 + j) % 5},{i + j}" for j in range(1, 6) for i in range(4))
    a = _small_archive(tmp_path, "id,x,y\n" + rows + "\n", "id,w,v\n1,0,0\n2,1,2\n3,0,0\n4,1,2\n5,2,4\n")
    spec = build_spec("y = b0 + r", ["b0 = g00 + g01*w + g02*v + u0"], variables_of(a))
    with pytest.raises(ModelError, match=r"collinear: γ02 \(v for INTRCPT1\) is a linear combination of .*γ01 \(w"):
        analyse(spec, a)


def test_within_constant_predictor_with_its_group_centered_twin(tmp_path):
    from hlmcli.analysis.pipeline import analyse

    rows = "\n".join(f"{j},{j % 3},{i + j}" for j in range(1, 6) for i in range(4))
    a = _small_archive(tmp_path, "id,x,y\n" + rows + "\n", "id,w\n1,0\n2,1\n3,0\n4,1\n5,2\n")
    spec = build_spec("y = b0 + b1*x + b2*group(x) + r", [], variables_of(a))
    with pytest.raises(ModelError, match=r"γ20 \(INTRCPT2 for x\) has a column of zeros"):
        analyse(spec, a)


def test_syntax_error_shows_a_caret(hsb_loaded):
    with pytest.raises(ModelError) as info:
        build_spec("MATHACH = b0 + b1*SES + + r", [], variables_of(hsb_loaded))
    assert "at character 25: empty term" in str(info.value)  # the second "+"
    assert info.value.detail.splitlines()[1].index("^") - 4 == 24


def test_hlm_file_unsupported_key_is_refused(hsb_loaded, tmp_path):
    path = tmp_path / "x.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nvarianceknown:V\n")
    with pytest.raises(ModelError, match="line 2: 'varianceknown:V' is not supported"):
        parse_hlm_file(path, variables_of(hsb_loaded))
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nnonlin:multinomial,12\n")  # HLM 7: 3 to 9 categories
    with pytest.raises(ModelError, match="nonlin:multinomial,12: .* 3 to 9"):
        parse_hlm_file(path, variables_of(hsb_loaded))
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nfrobnicate:y\n")
    with pytest.raises(ModelError, match="the key 'frobnicate' is not supported"):
        parse_hlm_file(path, variables_of(hsb_loaded))


def test_hlm_file_weights_are_read(hsb_loaded, tmp_path):
    path = tmp_path / "x.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nlevel1weight:WT\nlevel2weight:none\n")
    spec = parse_hlm_file(path, variables_of(hsb_loaded))
    assert (spec.options.weight1, spec.options.weight2) == ("WT", None)


def test_hlm_file_gui_keys_are_accepted(hsb_loaded, tmp_path):
    path = tmp_path / "x.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nfixtau:3\naccel:5\nlev1ols:10\noutput:C:\\x\\hlm2.html\n"
                    "title:My run\ndeviance:47000\ndf:2\nhomvar:y\n")
    spec = parse_hlm_file(path, variables_of(hsb_loaded))
    assert spec.options.title == "My run" and spec.options.prior_deviance == 47000 and spec.options.homogeneity


def test_names_colliding_by_case_are_an_error(tmp_path):

    v = Variables((("ses", "SES", "y"), ("w",)))
    with pytest.raises(ModelError, match="differ only in case"):
        build_spec("y = b0 + b1*Ses + r", [], v)


def test_model_errors_exit_1_with_one_line(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*SESS + r")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("hlmcli: error:") and "Traceback" not in proc.stderr
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*SES + + r")
    assert proc.returncode == 1
    first, *rest = proc.stderr.splitlines()
    assert "at character 25" in first and rest[-1].strip() == "^"


def test_one_spec_class_whose_defaults_follow_the_number_of_levels():
    """Two and three levels build the same ModelSpec; REML/100 iterations at two and ML/1000 at three come
    from the number of levels (HLM2's and HLM3's defaults), and level2 is a view of the tree, not a field."""
    from dataclasses import fields

    from hlmcli.language.equations_levels import build_spec3

    two = build_spec("Y = b0 + b1*X + r", ["b0 = g00 + g01*mean(X) + u0"],
                     Variables((("Y", "X"), ("W",))))
    three = build_spec3("Y = p0 + p1*X + e", [], [], Variables((("Y", "X"), ("W",), ("Z",))))
    assert type(two) is type(three) is ModelSpec and (two.n_levels, three.n_levels) == (2, 3)
    assert (two.method, two.options.max_iterations) == ("REML", 100)
    assert (three.method, three.options.max_iterations) == ("ML", 1000)
    assert RunOptions().method is None and "level2" not in {f.name for f in fields(ModelSpec)}
    assert two.level2[0].predictors == (Term("X", 2, mean_of=1),) and two.level2[0].predictors[0].unit_mean
    with pytest.raises(AttributeError):
        three.level2


def test_fixed_effect_labels_are_the_designs_without_a_level1_intercept(hsb_loaded):
    """Without b0 the γs are γ10, γ11 (the design's); the two-level label list once counted a γ00 too, so
    --test 'g11 = 0' was refused with 'the contrast has 3 entries but the model has 2 γs'."""
    from hlmcli.language.hypotheses import parse_test
    from hlmcli.language.model import fixed_effect_labels

    spec = build_spec("MATHACH = b1*group(SES) + r", ["b1 = g10 + g11*SECTOR + u1"], variables_of(hsb_loaded))
    assert fixed_effect_labels(spec) == [(1, 0), (1, 1)]
    assert [(f.q, f.s) for f in make_design(spec, hsb_loaded).fixed] == [(1, 0), (1, 1)]
    assert parse_test("g11 = 0", spec).rows == ((0.0, 1.0),)


def test_a_test_may_name_gammas_on_the_right(hsb_loaded):
    """--test 'g10 = g11' is the restriction γ10 − γ11 = 0, as --constrain reads it (it was refused: "the right
    side must be a finite number"); numbers on the right stay there: 'g10 = -g11 + 1' is γ10 + γ11 = 1."""
    from hlmcli.language.hypotheses import parse_test

    spec = build_spec("MATHACH = b1*group(SES) + r", ["b1 = g10 + g11*SECTOR + u1"], variables_of(hsb_loaded))
    h = parse_test("g10 = g11, g10 = -g11 + 1, 2*g10 = 3*g11", spec)
    assert h.rows == ((1.0, -1.0), (1.0, 1.0), (2.0, -3.0)) and h.rhs == (0.0, 1.0, 0.0)
    with pytest.raises(ModelError, match="finite number"):
        parse_test("g10 = nan", spec)
