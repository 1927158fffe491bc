"""The coefficient tree of a model's equations, shared by the two-level design and the engine of three or
more levels (nested.py, which re-exports it). Kept apart so that a two-level fit, which reads the tree as
its W (data/design.py), does not import the nested engine (about 17 ms of CPU at start-up)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Coefficient:
    """One coefficient of a level-d equation: its predictor column at level d (None = the
    intercept), its own equation at level d+1 (`terms`, empty for the top level's coefficients,
    the fixed effects) and whether it has a random effect at level d+1."""
    col: int | None
    terms: tuple["Coefficient", ...] = ()
    random: bool = False
