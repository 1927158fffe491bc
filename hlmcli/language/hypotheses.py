"""Linear hypotheses on the fixed effects: '--test "γ01 = 0, γ11 = 0"' and HLM 7's gammaG: contrast lines.

One reader for every number of levels (ModelSpec): a two-level model's γqs, a three-level model's γpqs
and a four-level model's δpqst, each typed as every output prints it (spec.coefficient_label:
HLM 7's subscripts, run together while each has one digit, else separated by commas: g1,10 and g1,10,0),
in Greek or in ASCII.
"""

from __future__ import annotations

import math
import re

from .equations import normalise
from .model import Hypothesis, fixed_effect_labels
from .lexer import COEF_LETTERS, GREEK, coefficient_letters
from ..errors import ModelError
from ..spec import coefficient_label


_NUMBER = r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?"
_MAX_DIGITS = 4  # a subscript is a count of predictors: longer ones are typing errors (and int() of thousands of digits fails)


class _Words:
    """How the messages name the fixed effects. Two-level models keep HLM2's words (γs; an unknown label in
    Greek; examples g01, g11); three and four levels list the model's own labels in ASCII, as typed."""

    def __init__(self, labels: list[tuple[int, ...]], K: int):
        self.letter = coefficient_letters(K)[-1]
        self.known = ", ".join(coefficient_label(self.letter, idx) for idx in labels)
        if K == 2:
            self.example, self.examples = "g01 = 0", "g01 = 0, g11 = 0"
            self.hint, self.plural = "write terms like g01, 2*g11 or -g02", "γs"
        else:
            first = coefficient_label(self.letter, labels[0]) if labels else self.letter
            self.example = self.examples = f"{first} = 0"
            self.hint, self.plural = f"this {K}-level model's fixed effects are {self.known}", "fixed effects"
        self.K = K

    def missing(self, idx: tuple[int, ...]) -> str:
        greek = GREEK[COEF_LETTERS.index(self.letter)]
        return coefficient_label(greek if self.K == 2 else self.letter, idx)


def _ascii(text: str) -> str:
    """Greek letters to their ASCII forms (γ -> g, δ -> d, ...), Unicode operators to ASCII, one space between words."""
    text = normalise(text)
    for k, g in enumerate(GREEK):
        text = text.replace(g, COEF_LETTERS[k]).replace(g.upper(), COEF_LETTERS[k])
    return " ".join(text.split())


def parse_test(text: str, spec) -> Hypothesis:
    """'γ01 = 0, γ11 - γ01 = 0' (two levels), 'γ000 = 0, g100 - g010 = 0' (three), 'δ0001 = 0' (four) ->
    a Hypothesis with one row per restriction over the model's fixed effects, in the engine's order."""
    labels = fixed_effect_labels(spec)
    K = spec.n_levels
    words = _Words(labels, K)
    letter = words.letter
    # a comma inside a label (g1,10 or g1,10,0, as printed) is not one between restrictions: mark it first
    comma_label = re.compile(rf"([{letter}{letter.upper()}])(\d+(?:\s*,\s*\d+){{{K - 1}}})(?!\d)")
    norm = comma_label.sub(lambda m: m.group(1) + re.sub(r"\s*,\s*", ";", m.group(2)), _ascii(text))
    term = re.compile(rf"^([+-]?)({_NUMBER})?\*?([a-z])(\d+(?:,\d+)*)$", re.I)
    rows, rhs = [], []
    for restriction in [r.replace(";", ",") for r in norm.split(",") if r.strip()]:
        if restriction.count("=") != 1:
            raise ModelError(f"--test '{text}': each restriction needs one '=', e.g. '{words.example}'")
        left, right = restriction.split("=")
        try:
            value = float(right.strip())
        except ValueError:  # γs on the right ('g10 = g20'): moved to the left, the right side 0
            value = math.nan
            if re.search(rf"[{letter}{letter.upper()}]\d", right):
                value = 0.0
                for piece in re.findall(r"[+-]?[^+-]+", right.replace(" ", "")):
                    try:
                        value += float(piece)  # a number stays on the right
                    except ValueError:
                        left += ("+" + piece[1:]) if piece.startswith("-") else ("-" + piece.lstrip("+"))
        if not math.isfinite(value):
            raise ModelError(f"--test '{text}': the right side of '{restriction.strip()}' must be a finite number")
        row = [0.0] * len(labels)
        pieces = re.findall(r"[+-]?[^+-]+", left.replace(" ", ""))
        if not pieces:
            raise ModelError(f"--test '{text}': '{restriction.strip()}' has nothing to test")
        for piece in pieces:
            m = term.match(piece)
            digits = m.group(4).split(",") if m and "," in m.group(4) else list(m.group(4)) if m else []
            mult = float(m.group(2)) if m and m.group(2) else 1.0
            if (not m or m.group(3).lower() != letter or len(digits) != K or not math.isfinite(mult)
                    or any(len(d) > _MAX_DIGITS for d in digits)):
                raise ModelError(f"--test '{text}': cannot read '{piece}'; {words.hint}")
            idx = tuple(map(int, digits))
            if idx not in labels:
                raise ModelError(f"--test '{text}': this model has no {words.missing(idx)}; its {words.plural} are "
                                 f"{words.known}")
            row[labels.index(idx)] += (-1.0 if m.group(1) == "-" else 1.0) * mult
        rows.append(tuple(row))
        rhs.append(value)
    if not rows:
        raise ModelError(f"--test '{text}': no restrictions given; write e.g. --test '{words.examples}'")
    return Hypothesis(label=text.strip(), rows=tuple(rows), rhs=tuple(rhs))
