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

The same holds for the families with parameters of their own (ordinal thresholds, the NB dispersion,
the multinomial's vector η): their per-record derivatives in those parameters are linear in log f too,
so each family names the methods that return them (`record_terms`) and WeightedFamily scales those as
it scales ℓ; their per-unit sums take w_j through GLMData.level2. The weighting is written here once.
"""

from __future__ import annotations

import numpy as np
from .special_functions import gammaln

from .family import Family


class _Values(tuple):
    """(ℓ, ℓ', W, κ3) of weighted records, with the unweighted values kept (`raw`) for the Taylor
    series: logit's κ4 = W(1 − 6W/n) is not linear in W, so it is computed from the raw values."""

    raw: tuple = ()


def scaled(v, w: np.ndarray):
    """A per-record value times its record's weight: arrays (N,) or (N, ...) (a vector η's derivatives),
    or any per-record term that knows how to scale itself (multinomial.Curvature); None stays None."""
    if v is None:
        return None
    if isinstance(v, np.ndarray) and v.ndim > 1:
        return v * w.reshape((-1,) + (1,) * (v.ndim - 1))
    return v * w


def _weighted(raw: tuple, w: np.ndarray) -> _Values:
    out = _Values(scaled(v, w) for v in raw)
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
        value = getattr(self.base, name)
        if name in getattr(self.base, "record_terms", ()):
            return self._scaling(value)
        return value

    def _scaling(self, method):
        """A family's own per-record terms (record_terms), scaled by the record weights: one array or
        a tuple of them."""
        w = self.w

        def call(*args, **kwargs):
            out = method(*args, **kwargs)
            return tuple(scaled(v, w) for v in out) if isinstance(out, tuple) else scaled(out, w)

        return call

    def derivatives(self, eta, y=None, n=None):
        return tuple(scaled(v, self.w) for v in self.base.derivatives(eta, y, n))

    def evaluate(self, eta, y=None, n=None, second: bool = True):
        return _weighted(self.base.evaluate(eta, y, n, second=second), self.w)

    def taylor(self, ev, d, n):
        return _weighted(self.base.taylor(ev.raw, d, n), self.w)

    def loglik_terms(self, eta, y=None, n=None):
        return self.w * self.base.loglik_terms(eta, y, n)

    def constant(self, y, n) -> float:
        """Σ w_i c_i (family.py's constants, record by record; a family with its own gives them per
        record as constant_terms)."""
        if hasattr(self.base, "constant_terms"):
            return float(self.w @ self.base.constant_terms(y, n))
        if self.base.name == "binomial":
            return float(np.sum(self.w * (gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1))))
        if self.base.name == "poisson":
            return float(-np.sum(self.w * gammaln(y + 1)))
        return 0.0

