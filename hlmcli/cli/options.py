"""What the command line was given, as values the commands share: lists of names, the equations a
--formula stands for, and the model as the user gave it (for the JSON). The command modules (cli.py,
levels.py) take them from here, so that neither imports the other for them."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..language.names import split_names  # noqa: F401  (the commands take it from here)


def formula_equations(variables, level1, level2, level3=()):
    """The equations, and τ's structure if the formula sets it, from --formula when it was given."""
    ctx = click.get_current_context(silent=True)
    formula = ctx.meta.get("formula") if ctx else None
    if formula is None:
        return level1, level2, level3, None
    from ..language.formula import translate

    m = translate(formula, variables.level_of, getattr(variables, "unknown", None))
    eqs = [list(e) for e in m.equations] + [[]] * (3 - len(m.equations))
    if ctx.meta.get("hglm", {}).get("family") not in (None, "normal"):
        eqs[0][0] = re.sub(r"\s*\+\s*[re]$", "", eqs[0][0])  # an HGLM's level-1 equation has no residual term
    ctx.meta["formula_given"] = (eqs[0][0], list(eqs[1]), list(eqs[2]))
    return eqs[0][0], list(eqs[1]), list(eqs[2]), (m.tau if m.tau == "diagonal" else None)


def model_given(level1, level2, model_file, level3=None) -> dict:
    """The model as the user gave it, for the JSON; a formula is recorded as the equations it stands for,
    so that a formula and its equations give the same document."""
    ctx = click.get_current_context(silent=True)
    made = ctx.meta.get("formula_given") if ctx else None
    if made:
        level1, level2, level3 = made[0], made[1], (made[2] if level3 is not None else None)
    out = {"level1": level1, "level2": list(level2)}
    if level3 is not None:
        out["level3"] = list(level3)
    out["model_file"] = Path(model_file).name if model_file else None
    return out
