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


# The linear programme reports a separating direction when its optimum exceeds LP_SEPARATED·N; the
# GLM's score certifies that none exists when it bounds that optimum below OVERLAP_MARGIN of this.
LP_SEPARATED = 1e-9
OVERLAP_MARGIN = 0.1


def _limits(y, trials, link):
    """s_i = +1 (all successes), −1 (all failures, or a zero count), 0 (neither)."""
    if link == "logit":
        n = 1.0 if trials is None else trials
        return np.where(y >= n, 1.0, np.where(y <= 0, -1.0, 0.0))
    return np.where(y <= 0, -1.0, 0.0)


def overlap_certified(Xs: np.ndarray, y: np.ndarray, trials: np.ndarray | None, link: str, maxit: int = 30) -> bool:
    """True when the GLM without random effects (logit: binomial; otherwise Poisson with the log link)
    has a finite maximum on the scaled columns Xs, which proves that the linear programme of
    find_combination has no separating direction.

    Why (Stiemke's lemma, the alternative to the LP): at a maximum the score r = Σ_i (y_i − μ_i)x_i is 0,
    and y_i − μ_i has the sign s_i of every record at its limit (y = n: n(1 − p) > 0; y = 0: −μ < 0),
    so r = Σ_pure λ_i s_i x_i + Σ_mixed (y_i − μ_i)x_i with λ_i = |y_i − μ_i| > 0. For any β the LP
    allows (|β_k| ≤ 1, s_ix_i'β ≥ 0, x_i'β = 0 on the mixed records), r'β = Σ_pure λ_i s_ix_i'β ≥
    λ_min·(the LP's objective), so the objective is at most ‖r‖₁/λ_min, evaluated at the last Newton
    iterate (rounding included). Below OVERLAP_MARGIN·LP_SEPARATED·N the LP cannot report separation,
    and it need not run (at 100,000 records it took more CPU than the Laplace fit). When Newton does
    not get there (nearly separated data: λ_min tiny, or an estimate running off), False: the LP decides."""
    N, p = Xs.shape
    s = _limits(y, trials, link)
    pure = s != 0
    n = 1.0 if trials is None else trials
    gamma = np.zeros(p)

    def state(g):
        eta = Xs @ g
        if link == "logit":
            mu = n / (1.0 + np.exp(-eta))
            ll = float(np.sum(y * eta - n * np.logaddexp(0.0, eta)))
            w = mu * (1.0 - mu / n)
        else:
            mu = np.exp(eta)
            ll = float(np.sum(y * eta - mu))
            w = mu
        return ll, mu, w

    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        ll, mu, w = state(gamma)
        for _ in range(maxit):
            resid = y - mu
            lam = np.abs(resid[pure])
            if not np.all(np.isfinite(resid)) or lam.size == 0:
                return False
            r = (Xs * resid[:, None]).sum(axis=0)  # numpy's pairwise sums: rounding O(ε log N)
            lam_min = float(lam.min())
            # ‖r‖₁ plus bounds on the rounding of its p sums and of μ (|x_ik| ≤ 1 after scaling)
            eps = np.finfo(float).eps
            bound = float(np.abs(r).sum()) + p * eps * ((64.0 + 2.0 * np.log2(N)) * float(np.abs(resid).sum())
                                                       + 8.0 * float(np.abs(mu).sum()))
            if lam_min > 0 and np.all(np.sign(resid[pure]) == s[pure]) and \
                    bound <= OVERLAP_MARGIN * LP_SEPARATED * N * lam_min:
                return True
            info = (Xs * w[:, None]).T @ Xs
            try:
                step = np.linalg.solve(info, r)
            except np.linalg.LinAlgError:
                return False
            t = 1.0
            while t > 1e-6:
                new = state(gamma + t * step)
                if np.isfinite(new[0]) and new[0] >= ll:
                    break
                t *= 0.5
            else:
                return False
            gamma = gamma + t * step
            ll, mu, w = new
    return False


def find_combination(X: np.ndarray, y: np.ndarray, trials: np.ndarray | None, link: str):
    """A direction β (in X's units) that separates the outcome, with the records it moves, or None.
    Called when no single column separates, so β involves two or more columns."""
    N, p = X.shape
    if p < 2:
        return None
    s = _limits(y, trials, link)
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    pure, mixed = s != 0, s == 0
    if not pure.any():
        return None
    if overlap_certified(Xs, y, trials, link):
        return None
    A_ub = -(s[pure, None] * Xs[pure])  # s_i x_i'β ≥ 0
    A_eq = Xs[mixed] if mixed.any() else None
    res = linprog(-(s[pure] @ Xs[pure]), A_ub=A_ub, b_ub=np.zeros(int(pure.sum())), A_eq=A_eq,
                  b_eq=np.zeros(int(mixed.sum())) if mixed.any() else None, bounds=[(-1, 1)] * p, method="highs")
    if res.status != 0 or -res.fun <= LP_SEPARATED * N:
        return None
    beta = res.x
    margin = s * (Xs @ beta)
    top = float(np.max(np.abs(Xs @ beta)))
    if top <= 0 or np.any(margin[pure] < -1e-9 * top) or np.any(np.abs(Xs[mixed] @ beta) > 1e-9 * top):
        return None
    moved = np.flatnonzero(margin > 1e-6 * top)
    return (beta / scale, moved) if moved.size else None
