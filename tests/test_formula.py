"""The lme4 formula as a second way in (hlmcli/formula.py): each formula's equations written out by hand
from HLM's rules, the refusals, and the round trip equations -> formula -> equations."""

from __future__ import annotations

import pytest

pytest.importorskip("formulae")

from hlmcli.equations import Variables, build_spec  # noqa: E402
from hlmcli.errors import ModelError  # noqa: E402
from hlmcli.formula import formula_of, grouping, split_bars, translate  # noqa: E402

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
     ["b0 = g00 + g01*mean(SES) + u0", "b1 = g10"], "unstructured"),
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
    variables = Variables(tuple(n for n, lv in HSB.items() if lv == 1), tuple(n for n, lv in HSB.items() if lv == 2))
    m = translate(formula, HSB.get)
    spec = build_spec(m.equations[0][0], list(m.equations[1]), variables)
    if tau == "diagonal":
        from dataclasses import replace

        spec = replace(spec, options=replace(spec.options, tau="diagonal"))
    again = translate(formula_of(spec, "ID"), HSB.get)
    assert again.equations == m.equations and again.tau == m.tau
