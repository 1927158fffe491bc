"""Variance structures the design cannot identify, refused before fitting in one line saying why.

The deviance of such a model is flat along some direction of (σ², τ): a search would stop at an
arbitrary point of that ridge (for example split two variances 50/50) and print it as an answer.
What is refused here is what the design alone shows:
  * every level-3 unit holds a single level-2 unit while both levels have random effects: a unit's
    level-2 and level-3 effects then enter every record only through their sum;
  * fewer units than random effects at a level: τ (q×q) would be estimated from fewer than q
    unit-level vectors, so some direction of τ has no information;
  * two random columns that are both constant within every unit (e.g. a random slope on a
    predictor constant within every unit, beside the random intercept): within each unit they are
    one column, and only how the variance of a unit's mean changes with the predictor across units
    separates their variances (two-level fits refuse this already, design.check_random_slopes).
Flat directions that only the fitted deviance shows are the certificate's (certificate.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError


def check_units(J: int, q: int, level: int = 2) -> None:
    if q and J < q:
        raise ModelError(f"{J} level-{level} unit{'s' if J != 1 else ''} for {q} random effects at level {level}: "
                         f"their {q}x{q} τ cannot be estimated from fewer units than random effects; remove random "
                         "effects or use data with more units")


def check_single_level2_units(units3_of_level2: np.ndarray, level2_random: bool, level3_random: bool) -> None:
    """units3_of_level2: the level-3 unit of each level-2 unit."""
    if not (level2_random and level3_random) or units3_of_level2.size == 0:
        return
    counts = np.bincount(units3_of_level2)
    if np.all(counts[counts > 0] == 1):
        raise ModelError("every level-3 unit holds a single level-2 unit, so a unit's level-2 and level-3 random "
                         "effects enter the data only through their sum and their variances cannot be told apart; "
                         "fit a two-level model (level-1 records within the level-3 units), or remove the level-2 "
                         "or the level-3 random effects")


def constant_within_units(Z: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Which columns of Z (records × columns, records grouped by unit from `starts`) are constant
    within every unit."""
    out = np.zeros(Z.shape[1], bool)
    for k in range(Z.shape[1]):
        z = Z[:, k]
        spread = np.maximum.reduceat(z, starts) - np.minimum.reduceat(z, starts)
        out[k] = bool(np.all(spread <= 1e-12 * max(1.0, float(np.abs(z).max()))))
    return out


def check_random_columns(Z: np.ndarray, starts: np.ndarray, names: list[str], level: int = 2) -> None:
    """Refuse two random columns (records × columns) that are both constant within every unit of this level."""
    const = np.flatnonzero(constant_within_units(Z, starts))
    if const.size >= 2:
        refuse_constant_pair(names[const[0]], names[const[1]], level)


def refuse_constant_pair(a: str, b: str, level: int) -> None:
    """The refusal of check_random_columns for the random effects of a and b."""
    raise ModelError(f"the random effects of {a} and {b} are both constant within every level-{level} unit, so "
                     f"within each unit they are one column, and their variances could be told apart only by how "
                     f"the variance of a unit's mean changes with {b}; remove the random effect of {b} (use {b} "
                     "as a fixed predictor)")


def constant_within_units_moments(n: np.ndarray, mean: np.ndarray, C: np.ndarray, units: np.ndarray,
                                  J: int) -> np.ndarray:
    """constant_within_units from per-level-2-unit moments of the columns (n (J2,), mean (J2, k),
    the diagonal C (J2, k)), pooled into the units `units` (J2,) 0..J−1 by Chan et al.'s update:
    a column is constant within a unit when its pooled spread √(C/n) is zero up to rounding."""
    out = np.zeros(mean.shape[1], bool)
    N = np.bincount(units, weights=n, minlength=J)
    for k in range(mean.shape[1]):
        mu = np.bincount(units, weights=n * mean[:, k], minlength=J) / N
        d = mean[:, k] - mu[units]
        pooled = np.bincount(units, weights=C[:, k] + n * d * d, minlength=J)
        scale = max(1.0, float(np.max(np.abs(mean[:, k]) + np.sqrt(np.clip(C[:, k], 0, None) / n))))
        out[k] = bool(np.all(np.sqrt(np.clip(pooled, 0, None) / N) <= 1e-12 * scale))
    return out


def _check_three_level_moments(data, coefficient_names: list[str], level2_names) -> None:
    """check_three_level for a moments.LevelsSummary (the stream and Dask engines)."""
    layout = data.layout
    m = data.moments
    unit3 = np.asarray(data.unit_parents[0])
    X2 = np.asarray(data.upper[0])

    def moments_of(col, factor):  # the column a_col·factor per level-2 unit: its mean and C_kk
        if col is None:
            return factor * 1.0, np.zeros(m.J)
        return factor * m.mean[:, col], factor * factor * m.C[:, col, col]

    r2 = [p for p, node in enumerate(layout) if node.random]
    r3 = [(p, b.col, q) for p, node in enumerate(layout) for q, b in enumerate(node.terms) if b.random]
    check_single_level2_units(unit3, bool(r2), bool(r3))
    check_units(int(unit3.max()) + 1 if unit3.size else 0, len(r3), 3)
    check_units(unit3.size, len(r2), 2)
    for level, cols, names, units in (
            (2, [(layout[p].col, np.ones(m.J)) for p in r2], [coefficient_names[p] for p in r2], np.arange(m.J)),
            (3, [(layout[p].col, np.ones(m.J) if c is None else X2[:, c]) for p, c, _ in r3],
             [f"{coefficient_names[p]}/{level2_names(p)[q]}" for p, _, q in r3], unit3)):
        if len(cols) < 2:
            continue
        parts = [moments_of(c, f) for c, f in cols]
        const = np.flatnonzero(constant_within_units_moments(
            m.n, np.column_stack([a for a, _ in parts]), np.column_stack([b for _, b in parts]), units,
            int(units.max()) + 1))
        if const.size >= 2:
            refuse_constant_pair(names[const[0]], names[const[1]], level)


def check_three_level(data, coefficient_names: list[str], level2_names) -> None:
    """The checks above for a three-level model (nested.NestedData; names as ModelSpec's
    coefficient_names() and term_names((p,))); per-unit summaries are checked on their moments."""
    if hasattr(data, "moments"):
        return _check_three_level_moments(data, coefficient_names, level2_names)
    pis = data.layout.pis
    unit2 = np.asarray(data.unit2)
    unit3 = np.asarray(data.unit3)
    A = np.asarray(data.A)
    X2 = np.asarray(data.X2)

    def a(p):
        col = pis[p].level1_col
        return np.ones(unit2.size) if col is None else A[:, col]

    r2 = [p for p, pi in enumerate(pis) if pi.random]
    r3 = [(p, b.level2_col, q) for p, pi in enumerate(pis) for q, b in enumerate(pi.betas) if b.random]
    check_single_level2_units(unit3, bool(r2), bool(r3))
    check_units(int(unit3.max()) + 1 if unit3.size else 0, len(r3), 3)
    check_units(unit3.size, len(r2), 2)
    starts2 = np.flatnonzero(np.r_[True, np.diff(unit2) != 0])
    if len(r2) >= 2:
        Z2 = np.column_stack([a(p) for p in r2])
        check_random_columns(Z2, starts2, [coefficient_names[p] for p in r2], 2)
    if len(r3) >= 2:
        rec3 = unit3[unit2]
        starts3 = np.flatnonzero(np.r_[True, np.diff(rec3) != 0])
        Z3 = np.column_stack([a(p) * (1.0 if c is None else X2[unit2, c]) for p, c, _ in r3])
        names = [f"{coefficient_names[p]}/{level2_names(p)[q]}" for p, _, q in r3]
        check_random_columns(Z3, starts3, names, 3)
