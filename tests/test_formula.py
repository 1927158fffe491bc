"""The lme4 formula as a second way in (hlmcli/language/formula.py): each formula's equations written out by hand
from HLM's rules, the refusals, and the round trip equations -> formula -> equations."""

from __future__ import annotations

import pytest

pytest.importorskip("formulae")

from hlmcli.language.equations import build_spec  # noqa: E402
from hlmcli.language.equations_levels import Variables  # noqa: E402
from hlmcli.errors import ModelError  # noqa: E402
from hlmcli.language.formula import formula_of, grouping, split_bars, translate  # noqa: E402

HSB = {"MATHACH": 1, "SES": 1, "FEMALE": 1, "MINORITY": 1, "SECTOR": 2, "MEANSES": 2, "HIMINTY": 2}
EG = {"MATH": 1, "YEAR": 1, "FEMALE": 2, "BLACK": 2, "LOWINC": 3, "MOBILITY": 3}

TWO_LEVEL = [
    ("MATHACH ~ 1 + (1 | ID)", ["MATHACH = b0 + r"], ["b0 = g00 + u0"], "unstructured"),
    ("MATHACH ~ MEANSES + (1 | ID)", ["MATHACH = b0 + r"], ["b0 = g00 + g01*MEANSES + u0"], "unstructured"),
    ("MATHACH ~ group(SES) + (group(SES) | ID)", ["MATHACH = b0 + b1*group(SES) + r"],
     ["b0 = g00 + u0", "b1 = g10 + u1"], "unstructured"),
    # HLM 7's model 4: the cross-level interaction is γ11
    ("MATHACH ~ SECTOR*group(SES) + (group(SES) | ID)", ["MATHACH = b0 + b1*group(SES) + r"],
     ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*SECTOR + u1"], "unstructured"),
    ("MATHACH ~ SES + (1 + SES || ID)", ["MATHACH = b0 + b1*SES + r"], ["b0 = g00 + u0", "b1 = g10 + u1"], "diagonal"),
    ("MATHACH ~ SES + (1 | ID) + (0 + SES | ID)", ["MATHACH = b0 + b1*SES + r"], ["b0 = g00 + u0", "b1 = g10 + u1"],
     "diagonal"),
    ("MATHACH ~ 0 + SES + (0 + SES | ID)", ["MATHACH = b1*SES + r"], ["b1 = g10 + u1"], "unstructured"),
    ("MATHACH ~ grand(SES) + mean(SES) + (1 | ID)", ["MATHACH = b0 + b1*grand(SES) + r"],
     ["b0 = g00 + g01*mean(SES) + u0"], "unstructured"),
    ("MATHACH ~ SES + (0 + SES | ID)", ["MATHACH = b0 + b1*SES + r"], ["b0 = g00", "b1 = g10 + u1"], "unstructured"),
]


@pytest.mark.parametrize("formula, level1, level2, tau", TWO_LEVEL)
def test_two_level_formulas(formula, level1, level2, tau):
    m = translate(formula, HSB.get)
    assert m.ids == ("ID",)
    assert m.equations == (tuple(level1), tuple(level2))
    assert m.tau == tau


THREE_LEVEL = [
    # Raudenbush & Bryk's unconditional growth model (Table 8.2)
    ("MATH ~ YEAR + (YEAR | SCHOOLID/CHILDID)",
     [["MATH = p0 + p1*YEAR + e"], ["p0 = b00 + r0", "p1 = b10 + r1"], ["b00 = g000 + u00", "b10 = g100 + u10"]]),
    ("MATH ~ YEAR*FEMALE + LOWINC + YEAR:LOWINC + (YEAR | SCHOOLID:CHILDID) + (1 | SCHOOLID)",
     [["MATH = p0 + p1*YEAR + e"], ["p0 = b00 + b01*FEMALE + r0", "p1 = b10 + b11*FEMALE + r1"],
      ["b00 = g000 + g001*LOWINC + u00", "b01 = g010", "b10 = g100 + g101*LOWINC", "b11 = g110"]]),
]


@pytest.mark.parametrize("formula, equations", THREE_LEVEL)
def test_three_level_formulas(formula, equations):
    m = translate(formula, EG.get)
    assert m.ids == ("CHILDID", "SCHOOLID")
    assert m.equations == tuple(tuple(e) for e in equations)
    assert grouping(formula) == ("CHILDID", "SCHOOLID")


@pytest.mark.parametrize("formula, words", [
    ("MATHACH ~ SES + (1 | ID) + (1 | SCHOOL)", "crossed"),
    ("MATHACH ~ SES*FEMALE + (1 | ID)", "two level-1 variables"),
    ("MATHACH ~ SES + (SECTOR | ID)", "does not vary within"),
    ("MATHACH ~ log(SES) + (1 | ID)", "make other transformations"),
    ("MATHACH ~ SES + (1 | ID", "not closed"),
    ("MATHACH ~ SES", "no random term"),
    ("MATHACH ~ NOSUCH + (1 | ID)", "not a column"),
    ("MATHACH ~ SES + FEMALE + (1 + SES | ID) + (0 + FEMALE | ID)", "blocks of several bars"),
    ("log(MATHACH) ~ SES + (1 | ID)", "must be a column name"),
    ("MATH ~ YEAR + (1 | SCHOOLID:CHILDID)", "no random term for SCHOOLID"),
    # HLM keeps a coefficient's intercept when its equation has a predictor
    ("MATHACH ~ SES:SECTOR + (1 | ID)", "without that equation's intercept"),
    ("MATHACH ~ 0 + SECTOR + (1 | ID)", "without that equation's intercept"),
])
def test_refusals_are_one_line(formula, words):
    with pytest.raises(ModelError) as err:
        translate(formula, {**EG, **HSB}.get)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_bars_inside_calls_are_not_random_terms():
    assert split_bars("X + (1 + X | ID)") == ("X", [("1 + X", "ID", False)])
    assert split_bars("(1 || S) + W") == ("W", [("1", "S", True)])


@pytest.mark.parametrize("formula, level1, level2, tau", TWO_LEVEL)
def test_round_trip_through_the_equations(formula, level1, level2, tau):
    """formula -> equations -> spec -> formula -> the same equations."""
    variables = Variables((tuple(n for n, lv in HSB.items() if lv == 1), tuple(n for n, lv in HSB.items() if lv == 2)))
    m = translate(formula, HSB.get)
    spec = build_spec(m.equations[0][0], list(m.equations[1]), variables)
    if tau == "diagonal":
        from dataclasses import replace

        spec = replace(spec, options=replace(spec.options, tau="diagonal"))
    again = translate(formula_of(spec, "ID"), HSB.get)
    assert again.equations == m.equations and again.tau == m.tau


# ---------------------------------------------------------------- end to end, as a user types it

import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from conftest import HSB_MODELS, SAMPLE  # noqa: E402

from hlmcli.cli import main  # noqa: E402

HSB_FILES = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"]
EG_FILES = [SAMPLE / "eg" / "eg_l1.csv", SAMPLE / "eg" / "eg_l2.csv", SAMPLE / "eg" / "eg_l3.csv"]
# HLM 7's four HSB models as formulas, written by hand from the equations in conftest.HSB_MODELS
HSB_FORMULAS = {
    "hsb_m1": "MATHACH ~ 1 + (1 | ID)",
    "hsb_m2": "MATHACH ~ MEANSES + (1 | ID)",
    "hsb_m3": "MATHACH ~ group(SES) + (group(SES) | ID)",
    "hsb_m4": "MATHACH ~ SECTOR*group(SES) + (group(SES) | ID)",
}


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def equations_args(level1, level2, level3=()):
    out = ["-1", level1]
    for eq in level2:
        out += ["-2", eq]
    for eq in level3:
        out += ["-3", eq]
    return out


@pytest.mark.parametrize("name", sorted(HSB_FORMULAS))
def test_formula_and_equations_give_the_same_json(name):
    rc_f, by_formula = cli("fit", *HSB_FILES, "--formula", HSB_FORMULAS[name], "--format", "json")
    rc_e, by_equations = cli("fit", *HSB_FILES, "--id", "ID", *equations_args(*HSB_MODELS[name]), "--format", "json")
    assert rc_f == rc_e == 0, by_formula
    assert by_formula == by_equations


def test_three_level_formula_gives_the_same_json():
    rc_f, by_formula = cli("fit", *EG_FILES, "--formula", "MATH ~ YEAR + (YEAR | SCHOOLID/CHILDID)", "--format", "json")
    rc_e, by_equations = cli("fit", *EG_FILES, "--id2", "CHILDID", "--id3", "SCHOOLID",
                             *equations_args("MATH = p0 + p1*YEAR + e", ["p0 = b00 + r0", "p1 = b10 + r1"],
                                             ["b00 = g000 + u00", "b10 = g100 + u10"]), "--format", "json")
    assert rc_f == rc_e == 0, by_formula
    assert by_formula == by_equations


def test_three_level_formula_with_uncorrelated_effects_is_tau_diagonal():
    # (x || S/C): a diagonal τ at both levels, the same fit as the equations with --tau diagonal (whose numbers
    # are checked against lmer's || fits in test_levels_stats.py)
    rc_f, by_formula = cli("fit", *EG_FILES, "--formula", "MATH ~ YEAR + (YEAR || SCHOOLID/CHILDID)", "--format", "json")
    rc_e, by_equations = cli("fit", *EG_FILES, "--id2", "CHILDID", "--id3", "SCHOOLID",
                             *equations_args("MATH = p0 + p1*YEAR + e", ["p0 = b00 + r0", "p1 = b10 + r1"],
                                             ["b00 = g000 + u00", "b10 = g100 + u10"]), "--tau", "diagonal",
                             "--format", "json")
    assert rc_f == rc_e == 0, by_formula
    assert by_formula == by_equations
    assert '"tau_structure": [\n  "diagonal",\n  "diagonal"\n ]' in by_formula


@pytest.fixture(scope="module")
def one_file(tmp_path_factory):
    """HSB's two files joined into one, as an lme4 user keeps them, with a binary outcome added."""
    import pandas as pd

    level1, level2 = (pd.read_csv(p) for p in HSB_FILES)
    joined = level1.merge(level2, on="ID")
    joined["HIGH"] = (joined["MATHACH"] > 13).astype(int)
    path = tmp_path_factory.mktemp("one") / "hsb.csv"
    joined.to_csv(path, index=False)
    level1.assign(HIGH=joined["HIGH"]).to_csv(path.with_name("hsb1.csv"), index=False)
    return path


def test_bernoulli_formula_gives_the_same_json(one_file):
    two_files = [one_file.with_name("hsb1.csv"), HSB_FILES[1]]
    rc_f, by_formula = cli("fit", *two_files, "--formula", "HIGH ~ SECTOR + group(SES) + (1 | ID)",
                           "--family", "bernoulli", "--format", "json")
    rc_e, by_equations = cli("fit", *two_files, "--id", "ID", "-1", "HIGH = b0 + b1*group(SES)",
                             "-2", "b0 = g00 + g01*SECTOR + u0", "--family", "bernoulli", "--format", "json")
    assert rc_f == rc_e == 0, by_formula
    assert by_formula == by_equations


def test_one_file_holding_both_levels(one_file):
    """Level-2 variables are those constant within units; the fit equals the two-file fit."""
    rc_one, one = cli("fit", one_file, "--formula", HSB_FORMULAS["hsb_m4"], "--format", "json")
    rc_two, two = cli("fit", *HSB_FILES, "--formula", HSB_FORMULAS["hsb_m4"], "--format", "json")
    assert rc_one == rc_two == 0, one
    a, b = json.loads(one), json.loads(two)
    assert a["deviance"] == pytest.approx(b["deviance"], rel=1e-12)
    for x, y in zip(a["fixed_effects"], b["fixed_effects"]):
        assert x["estimate"] == pytest.approx(y["estimate"], rel=1e-10)


def test_model_prints_a_formula_that_pastes_back():
    rc, text = cli("model", *HSB_FILES, "--id", "ID", *equations_args(*HSB_MODELS["hsb_m4"]))
    assert rc == 0, text
    printed = text.split("The same model for hlmcli --formula\n")[1].strip()
    assert printed == "MATHACH ~ 1 + SECTOR + group(SES) + SECTOR:group(SES) + (1 + group(SES) | ID)"
    assert cli("fit", *HSB_FILES, "--formula", printed, "--format", "json")[1] == \
        cli("fit", *HSB_FILES, "--formula", HSB_FORMULAS["hsb_m4"], "--format", "json")[1]


def test_formula_beside_equations_is_a_usage_error():
    rc, text = cli("fit", *HSB_FILES, "--formula", HSB_FORMULAS["hsb_m1"], "-1", "MATHACH = b0 + r")
    assert rc == 2 and "not both" in text


def test_crossed_formula_with_two_files_is_refused_in_one_line():
    """Crossed factors are fitted from one data file (tests/test_crossed.py); two files are a usage error."""
    rc, text = cli("fit", *HSB_FILES, "--formula", "MATHACH ~ SES + (1 | ID) + (1 | SECTOR)")
    assert rc == 2 and "crossed" in text and "one data file" in text and len(text.strip().splitlines()) == 1
