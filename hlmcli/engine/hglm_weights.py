"""Sampling weights in the two-level HGLM likelihood: multilevel pseudo-maximum likelihood
(Pfeffermann et al. 1998; Rabe-Hesketh & Skrondal 2006), as WeMix's mix() for binary outcomes.

With w_{i|j} the level-1 weights (conditional on the unit, already scaled: data/weights.py) and w_j
the level-2 weights, the pseudo-log-likelihood is

    ℓ_w(γ, τ) = Σ_j w_j log ∫ exp(Σ_i w_{i|j} log f(y_ij | u_j)) φ(u_j; τ) du_j.

Level 1: each record's log f enters multiplied by w_{i|j}, and so do its derivatives ℓ', W = −ℓ'' and
κ3 = ∂W/∂η, since all four are linear in log f. A Family whose per-record values are multiplied by
the weights (WeightedFamily) therefore turns the unit integrals of hglm.py (their modes, Laplace,
adaptive quadrature, exact gradients, PQL's working model used as the start) into those of ℓ_w
without another line of their algebra. Level 2: the unit integrals' logarithms and their gradients
are summed with the weights w_j (hglm.Conditional), and the cluster sandwich uses the weighted unit
scores w_j·s_j. Level-2 weights that are all equal change no estimate and no sandwich SE.
"""

from __future__ import annotations

import numpy as np
from .special_functions import gammaln

from .family import Family


class _Values(tuple):
    """(ℓ, ℓ', W, κ3) of weighted records, with the unweighted values kept (`raw`) for the Taylor
    series: logit's κ4 = W(1 − 6W/n) is not linear in W, so it is computed from the raw values."""

    raw: tuple = ()


def _weighted(raw: tuple, w: np.ndarray) -> _Values:
    out = _Values(None if v is None else v * w for v in raw)
    out.raw = raw
    return out


class WeightedFamily:
    """A Family whose log-likelihood terms and their η-derivatives are multiplied by record weights
    `w` (the level-1 sampling weights); every other attribute is the family's own (its name, link,
    fitted mean, checks)."""

    def __init__(self, base: Family, w: np.ndarray) -> None:
        self.base = base
        self.w = np.ascontiguousarray(w, dtype=float)

    def __getattr__(self, name):
        return getattr(self.base, name)

    def derivatives(self, eta, y, n):
        return tuple(v * self.w for v in self.base.derivatives(eta, y, n))

    def evaluate(self, eta, y, n, second: bool = True):
        return _weighted(self.base.evaluate(eta, y, n, second=second), self.w)

    def taylor(self, ev, d, n):
        return _weighted(self.base.taylor(ev.raw, d, n), self.w)

    def loglik_terms(self, eta, y, n):
        return self.w * self.base.loglik_terms(eta, y, n)

    def constant(self, y, n) -> float:
        """Σ w_i c_i (family.py's constants, record by record)."""
        if self.base.name == "binomial":
            return float(np.sum(self.w * (gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1))))
        if self.base.name == "poisson":
            return float(-np.sum(self.w * gammaln(y + 1)))
        return 0.0

