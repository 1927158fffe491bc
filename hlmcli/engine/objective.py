"""What the search (search.py) and the certificate (certificate.py) ask of a model: one protocol.

A linear mixed model of any number of levels has one relative covariance block per level above the
first, Gℓ = τℓ/σ² (PSD, or non-negative diagonal for a diagonal τℓ). With γ and σ² profiled out, the
(RE)ML deviance is a function d(G2, …, GK) of those blocks alone, and the search and the certificate
only ever need three things from it at a point Gs = (G2, …, GK):

- `value(Gs)`: d(Gs), or +inf where the model cannot be evaluated (X'V⁻¹X singular, rss ≤ 0);
- `at(Gs, factors=None)`: (d, Γs) with Γℓ = ∂d/∂Gℓ in the symmetric convention
  d(Gs + E) ≈ d(Gs) + Σℓ tr(ΓℓEℓ), the blocks' shapes; `factors`, when given, are Λℓ with ΛℓΛℓ' = Gℓ
  (the L-BFGS-B search over Λ has them) and the model solves at those instead of re-factoring Gs,
  which would only change the rounding; (+inf, zeros) where value is +inf;
- `noise(Gs)`: how far rounding can move d at Gs (deviance units), so that no decrease smaller than
  the model's own precision is asked for or claimed (search.tol_decrement, certificate.check_precision).

The chain rule then gives everything else: ∂d/∂Λℓ = 2ΓℓΛℓ for the search, the gradient on a face of
the PSD cone from Γ (certificate.Face), its Hessian by central differences of that gradient, or
analytically where the objective gives `curvature(Gs, directions)`, its second derivatives in G
(the two-level profiled deviance: unitsolve.UnitSolve.curvature_G).

Implementations: the two-level profiled deviance (unitsolve.ProfiledDeviance, one block) and the
nested deviance (nested.NestedDeviance, a block per level 2..K); a family plugs in as another
objective over the same blocks. A one-block objective may also be written over the bare matrix G
(HGLM's Laplace deviance, unitsolve.ProfiledDeviance); `OneBlock` lifts it to the tuple form.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class DevianceObjective(Protocol):
    """The profiled deviance over a tuple of PSD blocks (module docstring)."""

    def value(self, Gs) -> float: ...

    def at(self, Gs, factors=None) -> tuple[float, tuple]: ...

    def noise(self, Gs) -> float: ...


class OneBlock:
    """A DevianceObjective over 1-tuples (G,) from an objective written over the bare matrix G."""

    def __init__(self, objective):
        self.objective = objective

    def value(self, Gs) -> float:
        return self.objective.value(Gs[0])

    def at(self, Gs, factors=None):
        dev, Gamma = self.objective.at(Gs[0]) if factors is None else self.objective.at(Gs[0], factors[0])
        return dev, (Gamma,)

    def noise(self, Gs) -> float:
        return self.objective.noise(Gs[0])

    def curvature(self, Gs, directions):
        """The inner objective's second derivatives in G along `directions`, or None without them."""
        inner = getattr(self.objective, "curvature", None)
        return None if inner is None else inner(Gs[0], directions)


def one_block(point) -> np.ndarray:
    """G from a one-block point given either as (G,) or as G itself."""
    return point[0] if isinstance(point, tuple) else point


def like(point, G):
    """G in the form `point` was given in: (G,) for a tuple, G for a matrix."""
    return (G,) if isinstance(point, tuple) else G


class SolveCache:
    """The last few solves of an objective, keyed on the exact bits of the factors they were made at:
    the search asks for the value, the gradient and the rounding noise at the same point, and the
    certificate again where the search ended."""

    def __init__(self, size: int = 4):
        self.size, self.entries = size, []

    def get(self, lams, solve):
        """The solve at factors `lams` (an array or a tuple of them), from `solve(lams)` when not kept."""
        key = tuple(np.asarray(lam, float).tobytes() for lam in (lams if isinstance(lams, tuple) else (lams,)))
        for k, us in self.entries:
            if k == key:
                return us
        us = solve(lams)
        self.entries = [(key, us)] + self.entries[:self.size - 1]
        return us


def factor(G: np.ndarray) -> np.ndarray:
    """A square factor Λ with ΛΛ' = G for a PSD G (singular allowed): V·sqrt(max(λ, 0))."""
    G = np.asarray(G, dtype=float)
    if G.size == 0:
        return G.reshape(0, 0)
    w, V = np.linalg.eigh(0.5 * (G + G.T))
    return V * np.sqrt(np.clip(w, 0.0, None))


class BlockDeviance:
    """value, at and noise over a tuple of blocks for a model whose solve at factors (Λ1, …, Λk),
    `_solve(lams)`, gives profiled_deviance(reml), gradients(reml) (a Γ per block) and
    rounding_noise(reml); the last few solves kept, the solves counted. The nested and the crossed
    deviance are this with their own solve."""

    def __init__(self, reml: bool):
        self.reml, self.count = reml, 0
        self._cache = SolveCache()

    def _solve(self, lams):
        raise NotImplementedError

    def solve(self, *lams):
        if len(lams) == 1 and isinstance(lams[0], (tuple, list)):
            lams = tuple(lams[0])
        return self._cache.get(tuple(lams), self._counted)

    def _counted(self, lams):
        self.count += 1
        return self._solve(lams)

    def at(self, Gs, factors=None):
        try:
            us = self.solve(tuple(factor(G) for G in Gs) if factors is None else tuple(factors))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, tuple(np.zeros_like(G) for G in Gs)
        return us.profiled_deviance(self.reml), us.gradients(self.reml)

    def value(self, Gs) -> float:
        try:
            return self.solve(tuple(factor(G) for G in Gs)).profiled_deviance(self.reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    def noise(self, Gs) -> float:
        try:
            return self.solve(tuple(factor(G) for G in Gs)).rounding_noise(self.reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0
