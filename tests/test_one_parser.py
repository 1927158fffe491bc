"""One equation parser for any number of levels: the notation follows the number of levels (β/γ with r/u
for two, π/β/γ with e/r/u for three, π/β/γ/δ with e/r/u/v for four), subscripts follow HLM 7's comma
rule, and HLM2 and HLM3 command files are read through the same level lines. Expected values are the
models as written by hand."""

from __future__ import annotations

import pytest

from hlmcli.errors import ModelError
from hlmcli.language.equations import build_spec
from hlmcli.language.model import Level2Equation, Term
from hlmcli.language.equations_levels import Variables, build_levels_spec, build_spec3
from hlmcli.language.hlmfile import level_equation, level_terms
from hlmcli.language.hypotheses import parse_test
from hlmcli.spec import coefficient_label, gamma_label

X = tuple(f"X{k}" for k in range(1, 12))
V2 = Variables((("Y",) + X, ("W",)))
V3 = Variables((("Y",) + X, ("W",), ("Z",)))
V4 = Variables((("Y",) + X, ("W",), ("Z",), ("S",)))


def _level1(letter: str, n: int, residual: str) -> str:
    return f"Y = {letter}0 + " + " + ".join(f"{letter}{k}*X{k}" for k in range(1, n + 1)) + f" + {residual}"


def test_ten_level1_predictors_at_every_number_of_levels():
    # π10 has one subscript, so its digits are one number (the four-level parser read p10 as π1,0)
    two = build_spec(_level1("b", 11, "r"), ["b10 = g10,0 + g10,1*W + u10"], V2)
    assert len(two.level1) == 11 and two.level2[10] == Level2Equation((Term("W", 2),), True)
    three = build_spec3(_level1("p", 11, "e"), ["p10 = b10,0 + r10"], [], V3)
    assert three.equation((10,)).random and [i for i, _ in three.random(2)] == [(0,), (10,)]
    four = build_levels_spec([[_level1("π", 11, "e")], ["π10 = β10,0 + r10"], [], []], V4)
    assert [i for i, _ in four.random(2)] == [(0,), (10,)] and len(four.fixed()) == 12


def test_notation_follows_the_number_of_levels():
    with pytest.raises(ModelError, match="two-level form"):
        build_spec3("Y = b0 + e", [], [], V3)
    with pytest.raises(ModelError, match="g00 is a level-2 coefficient"):
        build_spec("Y = b0 + g00 + r", [], V2)
    with pytest.raises(ModelError, match="nothing is random at level 4"):
        build_levels_spec([["Y = p0 + e"], [], [], ["g000 = d0000"]], V4)
    # HLM's printed subscripts are a tail of ijkl for the model's levels
    assert build_spec("Yij = β0j + rij", [], V2) == build_spec("Y = b0 + r", [], V2)
    with pytest.raises(ModelError):
        build_spec("Y = b0jj + r", [], V2)


def test_one_label_function_with_hlm7_comma_rule():
    assert gamma_label(1, 10) == "γ1,10" and gamma_label(11, 0, "g") == "g11,0" and gamma_label(1, 2) == "γ12"
    assert coefficient_label("δ", (0, 0, 10, 1)) == "δ0,0,10,1" and coefficient_label("u", (0, 1)) == "u01"


def test_hlm_level_lines_are_equations_in_the_notation_of_their_levels():
    terms, names, intercept, random = level_terms("INTRCPT2+W,2+random/", "m.hlm: line 3", 2, 3)
    assert (terms, names, intercept, random) == (["grand(W)"], ["W"], True, True)
    assert level_equation((1,), terms, intercept, random, 2, 3) == "p1 = b1,0 + b1,1*grand(W) + r1"
    assert level_equation((1,), terms, intercept, random, 2, 2) == "b1 = g1,0 + g1,1*grand(W) + u1"
    assert level_equation("Y", ["group(X1)"], True, False, 1, 2) == "Y = b0 + b1*group(X1) + r"
    with pytest.raises(ModelError, match="',1' on W is not known at level 2"):
        level_terms("INTRCPT2+W,1", "m.hlm: line 3", 2, 2)


def test_one_test_reader_at_every_number_of_levels():
    """--test reads the labels as printed (HLM 7's comma rule, Greek or ASCII) by one reader for two, three
    and four levels; the rows are placed by hand in the engine's order of the fixed effects."""
    two = build_spec(_level1("b", 11, "r"), ["b10 = g10,0 + g10,1*W + u10"], V2)  # γ00 ... γ10,0 γ10,1 γ11,0
    three = build_spec3(_level1("p", 11, "e"), ["p10 = b10,0 + r10"], [], V3)  # γ000 ... γ11,0,0
    four = build_levels_spec([[_level1("π", 11, "e")], ["π10 = β10,0 + r10"], [], []], V4)  # δ0000 ... δ11,0,0,0
    h = parse_test("γ10,1 − 2*g10,0 = 1.5, g00 = 0", two)
    assert h.rows == (tuple(-2.0 if k == 10 else 1.0 if k == 11 else 0.0 for k in range(13)),
                      tuple(1.0 if k == 0 else 0.0 for k in range(13))) and h.rhs == (1.5, 0.0)
    assert parse_test("γ10,0,0 - G11,0,0 = 0", three).rows == (tuple({10: 1.0, 11: -1.0}.get(k, 0.0) for k in range(12)),)
    assert parse_test("δ11,0,0,0 = 2", four).rows == (tuple(float(k == 11) for k in range(12)),)
    with pytest.raises(ModelError, match="has no γ05; its γs are g00, g10, "):  # HLM2's words at two levels
        parse_test("g05 = 0", two)
    with pytest.raises(ModelError, match="cannot read 'g012'; write terms like g01"):
        parse_test("g012 = 0", two)
    with pytest.raises(ModelError, match="cannot read 'g0000'; this 3-level model's fixed effects are g000, g100"):
        parse_test("g0000 = 0", three)
    # an infinite multiplier and a subscript of thousands of digits are unreadable at every number of levels
    for spec, label in ((two, "g00"), (three, "g000"), (four, "d0000")):
        with pytest.raises(ModelError, match="cannot read '1e999"):
            parse_test(f"1e999*{label} = 0", spec)
        with pytest.raises(ModelError, match="cannot read"):
            parse_test(label[0] + "1," * (len(label) - 2) + "1" * 5000 + " = 0", spec)


def test_an_equation_in_a_model_file_is_named_by_file_and_line(tmp_path):
    """A wrong equation in a model file of equations names the file and its line, at two and three levels
    (the message quoted the equation only), and a syntax error keeps its caret."""
    from hlmcli.language.equations import RunOptions, spec_from_inputs
    from hlmcli.language.equations_levels import RunOptions, spec_from_inputs_levels

    two = tmp_path / "two.txt"
    two.write_text("# HSB\nY = b0 + b1*X1 + r\n\nb0 = g00 + u0\nb1 = g10 + g11*NOSUCH\n")
    with pytest.raises(ModelError, match=rf"^{two}, line 5: in 'b1 = g10 \+ g11\*NOSUCH': unknown variable"):
        spec_from_inputs(None, [], str(two), V2, RunOptions())
    two.write_text("Y = b0 + b1*X1 +\nb0 = g00 + u0\n")
    with pytest.raises(ModelError, match=rf"^{two}, line 1: in 'Y = b0 \+ b1\*X1 \+' at character") as err:
        spec_from_inputs(None, [], str(two), V2, RunOptions())
    assert err.value.detail.endswith("^")
    three = tmp_path / "three.txt"
    three.write_text("Y = p0 + e\np0 = b00 + r0\nb00 = g000 + g001*NOSUCH + u00  # level 3\n")
    with pytest.raises(ModelError, match=rf"^{three}, line 3: in 'b00 = g000 \+ g001\*NOSUCH \+ u00'"):
        spec_from_inputs_levels([[], [], []], str(three), V3, RunOptions())


def test_an_hlm_command_file_line_is_named_when_its_equation_is_wrong(tmp_path):
    """An unknown variable on a level2: line names the command file and that line (the message quoted
    only the equation it was translated to)."""
    from hlmcli.language.equations import parse_hlm_file

    cmd = tmp_path / "m.hlm"
    cmd.write_text("#WHLM CMD FILE\nlevel1:Y=INTRCPT1+X1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n"
                   "level2:X1=INTRCPT2+NOSUCH/\n")
    with pytest.raises(ModelError, match=rf"^{cmd}, line 4: in 'b1 = g1,0 \+ g1,1\*NOSUCH': unknown variable"):
        parse_hlm_file(cmd, V2)


def test_an_hlm3_command_file_line_is_named_when_its_equation_is_wrong(tmp_path):
    """The same at three levels: an unknown variable on a level3: line names the file and that line."""
    from hlmcli.language.equations_levels import parse_hlm3_file

    cmd = tmp_path / "m3.hlm"
    cmd.write_text("#WHLM CMD FILE\nlevel1:Y=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n"
                   "level3:INTRCPT2=INTRCPT3+NOSUCH+random/\n")
    with pytest.raises(ModelError, match=rf"^{cmd}: line 4: in '.*NOSUCH.*': unknown variable"):
        parse_hlm3_file(cmd, V3)
