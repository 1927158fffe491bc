"""Linear hypotheses on the fixed effects: '--test "γ01 = 0, γ11 = 0"' and HLM 7's gammaG: contrast lines."""

from __future__ import annotations

import math
import re

from .equations import Hypothesis, ModelSpec, gamma_labels, normalise
from ..errors import ModelError
from ..spec import gamma_label


_TERM = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)?\s*\*?\s*g(?:(\d)(\d)|(\d+),(\d+))\s*$", re.I)


_LABEL_COMMA = re.compile(r"g(\d+),(\d+)", re.I)


def parse_test(text: str, spec: ModelSpec) -> Hypothesis:
    """'γ01 = 0, γ11 - γ01 = 0' -> a Hypothesis with one row per restriction."""
    labels = gamma_labels(spec)
    rows, rhs = [], []
    # a comma inside a label (γ1,10, as printed) is not one between restrictions: mark it first
    norm = _LABEL_COMMA.sub(r"g\1;\2", normalise(text))
    for restriction in [r for r in norm.split(",") if r.strip()]:
        restriction = restriction.replace(";", ",")
        if restriction.count("=") != 1:
            raise ModelError(f"--test '{text}': each restriction needs one '=', e.g. 'g01 = 0'")
        left, right = restriction.split("=")
        try:
            value = float(right.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ModelError(f"--test '{text}': the right side of '{restriction.strip()}' must be a finite number")
        row = [0.0] * len(labels)
        pieces = re.findall(r"[+-]?[^+-]+", left.replace(" ", ""))
        if not pieces:
            raise ModelError(f"--test '{text}': '{restriction.strip()}' has nothing to test")
        for piece in pieces:
            m = _TERM.match(piece)
            if not m:
                raise ModelError(f"--test '{text}': cannot read '{piece}'; write terms like g01, 2*g11 or -g02")
            sign = -1.0 if m.group(1) == "-" else 1.0
            mult = float(m.group(2)) if m.group(2) else 1.0
            if not math.isfinite(mult) or len(m.group(5) or "") > 4 or len(m.group(6) or "") > 4:
                raise ModelError(f"--test '{text}': cannot read '{piece}'; write terms like g01, 2*g11 or -g02")
            q = int(m.group(3) or m.group(5))
            s = int(m.group(4) or m.group(6))
            if (q, s) not in labels:
                known = ", ".join(gamma_label(a, b, "g") for a, b in labels)
                raise ModelError(f"--test '{text}': this model has no {gamma_label(q, s)}; its γs are {known}")
            row[labels.index((q, s))] += sign * mult
        rows.append(tuple(row))
        rhs.append(value)
    if not rows:
        raise ModelError(f"--test '{text}': no restrictions given; write e.g. --test 'g01 = 0, g11 = 0'")
    return Hypothesis(label=text.strip(), rows=tuple(rows), rhs=tuple(rhs))
