"""Separation of a binary, binomial or count outcome by one fixed-effect column, found before fitting.

A column x of the fixed design X (a level-1 predictor, a level-2 predictor repeated over the
unit's records, or a cross-level product) separates the outcome when a threshold c puts every
record on one side with the outcome at its limit:
  * logit link: every record with x > c is all successes and every record with x < c all failures
    (or the mirror image), records at x = c being anything. Then η moves along x − c without
    bound: each record's likelihood rises or stays, so the ML (and PQL) estimate of x's coefficient
    is ±∞ (Albert & Anderson 1984). Complete separation: no record at c; quasi-complete: some.
  * log link: every record with x > c (or x < c) has y = 0 and none lies on the other side of c:
    the rate beyond c tends to 0, the coefficient to −∞ (+∞ for x < c). A record with y > 0 must lie
    at c (along the direction its η would rise, and y·η − e^η falls for large η).
A record with 0 < y < n (binomial) is neither all successes nor all failures, so it must lie at c.
The random effects cannot absorb this: the direction raises the conditional likelihood for every
value of u, so the marginal likelihood rises along it too.

The one-column test is exact (comparisons of the column's values, no tolerance). Separation by a
combination of columns is found by a linear programme (Konis 2007, as R's detectseparation):
maximise Σ_i s_i x_i'β over β in [−1, 1]^p (columns scaled to max |x| = 1), s_i = +1 for all
successes, −1 for all failures, subject to s_i x_i'β ≥ 0, and x_i'β = 0 for records that are
neither (for counts: s_i = −1 where y = 0, x_i'β = 0 where y > 0). The optimum is 0 exactly when no
direction separates; a positive optimum is accepted only when the direction it returns is verified
on the data (every constraint holds within 1e-9 of the largest margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..lazy import lazy_function

linprog = lazy_function("scipy.optimize", "linprog")

# --separation fit: the separated coefficient is held where it moves the linear predictor of the
# records beyond the threshold by at most this much (a fitted probability within e^-15 ≈ 3e-7 of
# its limit, or a rate e^-15 times smaller); the others are then fitted as glmer's would end.
BOUND_ETA = 15.0


@dataclass
class Separation:
    column: int  # index in the fixed design
    threshold: float  # c
    sign: float  # +1: the coefficient tends to +∞; −1: to −∞
    records: np.ndarray  # the records beyond the threshold, where the outcome is at its limit
    complete: bool  # no record at the threshold (then --separation fit is not offered)
    spread: float  # the largest |x − c| among those records

    @property
    def bound(self) -> float:
        """The value the coefficient is held at under --separation fit (BOUND_ETA)."""
        return self.sign * BOUND_ETA / self.spread


def find_separation(X: np.ndarray, y: np.ndarray, trials: np.ndarray | None, link: str) -> list[Separation]:
    """Every column of X after the intercept (column 0) that separates the outcome, as above."""
    out = []
    if link == "logit":
        n = 1.0 if trials is None else trials
        succ, fail = y >= n, y <= 0  # all successes / all failures
    else:
        succ, fail = None, y <= 0
    for k in range(1, X.shape[1]):
        x = X[:, k]
        if x.min() == x.max():
            continue
        for sgn in (1.0, -1.0):
            v = sgn * x
            if link == "logit":
                # c with every record that is not all successes at or below c, and every record that
                # is not all failures at or above c: the coefficient of v can grow without bound
                if (~succ).any() and (~fail).any():
                    lo, hi = float(v[~succ].max()), float(v[~fail].min())
                    if lo <= hi:
                        c = lo if np.any(v > lo) else hi
                        moved = np.flatnonzero(v != c)  # every one at its limit
                        out.append(Separation(k, sgn * c, sgn, moved, complete=lo < hi,
                                              spread=float(np.max(np.abs(v[moved] - c)))))
                        break
            else:
                # every positive count at the smallest v, c: beyond it all are zeros. (A positive count
                # below c would be pushed up along the direction, and y·η − e^η is not monotone.)
                if (~fail).any():
                    c = float(v[~fail].max())
                    beyond = np.flatnonzero(v > c)
                    if beyond.size and c == float(v.min()):
                        out.append(Separation(k, sgn * c, -sgn, beyond, complete=False,
                                              spread=float(np.max(v[beyond] - c))))
                        break
    return out


def find_combination(X: np.ndarray, y: np.ndarray, trials: np.ndarray | None, link: str):
    """A direction β (in X's units) that separates the outcome, with the records it moves, or None.
    Called when no single column separates, so β involves two or more columns."""
    N, p = X.shape
    if p < 2:
        return None
    if link == "logit":
        n = 1.0 if trials is None else trials
        s = np.where(y >= n, 1.0, np.where(y <= 0, -1.0, 0.0))
    else:
        s = np.where(y <= 0, -1.0, 0.0)
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    pure, mixed = s != 0, s == 0
    if not pure.any():
        return None
    A_ub = -(s[pure, None] * Xs[pure])  # s_i x_i'β ≥ 0
    A_eq = Xs[mixed] if mixed.any() else None
    res = linprog(-(s[pure] @ Xs[pure]), A_ub=A_ub, b_ub=np.zeros(int(pure.sum())), A_eq=A_eq,
                  b_eq=np.zeros(int(mixed.sum())) if mixed.any() else None, bounds=[(-1, 1)] * p, method="highs")
    if res.status != 0 or -res.fun <= 1e-9 * N:
        return None
    beta = res.x
    margin = s * (Xs @ beta)
    top = float(np.max(np.abs(Xs @ beta)))
    if top <= 0 or np.any(margin[pure] < -1e-9 * top) or np.any(np.abs(Xs[mixed] @ beta) > 1e-9 * top):
        return None
    moved = np.flatnonzero(margin > 1e-6 * top)
    return (beta / scale, moved) if moved.size else None
