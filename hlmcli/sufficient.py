"""Stage 5, sufficient statistics: per-unit cross-products, computed once in a vectorised pass.

Everything the likelihood, the robust SEs, the χ² tests and the reliabilities need is a function
of these, so after this stage no computation touches the N records again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnitStats:
    """Per-unit cross-products of the level-1 design L (N x K) and the outcome y."""

    n: np.ndarray  # (J,) records per unit
    LL: np.ndarray  # (J, K, K)  L_j'L_j
    Ly: np.ndarray  # (J, K)     L_j'y_j
    yy: np.ndarray  # (J,)       y_j'y_j
    y_shift: float  # y was centered at this value first, so sums of squares do not cancel


def unit_cross_products(L: np.ndarray, y: np.ndarray, offsets: np.ndarray) -> UnitStats:
    N, K = L.shape
    starts = offsets[:-1]
    shift = float(y.mean())
    yc = y - shift
    J = starts.size
    LL = np.empty((J, K, K))
    Ly = np.empty((J, K))
    columns = [L[:, a] for a in range(K)]
    ones = [a for a in range(K) if a == 0 and np.all(columns[0] == 1.0)]
    for a in range(K):
        for b in range(a, K):
            if a in ones:
                prod = columns[b]
            elif b in ones:
                prod = columns[a]
            else:
                prod = columns[a] * columns[b]
            LL[:, a, b] = LL[:, b, a] = np.add.reduceat(prod, starts)
        Ly[:, a] = np.add.reduceat(yc if a in ones else columns[a] * yc, starts)
    yy = np.add.reduceat(yc * yc, starts)
    return UnitStats(n=np.diff(offsets).astype(np.float64), LL=LL, Ly=Ly, yy=yy, y_shift=shift)


@dataclass(frozen=True)
class ModelStats:
    """The cross-products of the mixed model y = Xγ + Zu + r, per unit where the likelihood needs them."""

    N: int
    n: np.ndarray  # (J,) records per unit
    ZZ: np.ndarray  # (J, q, q)
    Zy: np.ndarray  # (J, q)
    ZX: np.ndarray  # (J, q, p)
    XX: np.ndarray  # (p, p) total
    Xy: np.ndarray  # (p,) total
    yy: float  # total
    B: np.ndarray  # (J, K, p), X_j = L_j B_j
    random: np.ndarray  # indices of the random columns of L
    ZXt: np.ndarray  # (q, J, p): ZX with the random-effect index first, each slice contiguous
    ZZc: np.ndarray  # (q, q, J): Z'Z component-first, for the estimation's vectorised algebra
    Zyc: np.ndarray  # (q, J)
    ZXouter: np.ndarray | None  # (q(q+1)/2, J, p²): vec(ZX_j[a]' ZX_j[b]) for a ≤ b, when it fits in memory

    @property
    def J(self) -> int:
        return self.ZZ.shape[0]

    @property
    def p(self) -> int:
        return self.XX.shape[0]

    @property
    def q(self) -> int:
        return self.ZZ.shape[1]


def model_stats(unit: UnitStats, B: np.ndarray, random_mask: np.ndarray) -> ModelStats:
    r = np.flatnonzero(random_mask)
    LB = np.matmul(unit.LL, B)  # (J, K, p)
    ZX = LB[:, r, :]
    XX = np.einsum("jkp,jkr->pr", B, LB)
    Xy = np.einsum("jkp,jk->p", B, unit.Ly)
    return ModelStats(
        N=int(unit.n.sum()), n=unit.n, ZZ=np.ascontiguousarray(unit.LL[:, r][:, :, r]), Zy=np.ascontiguousarray(unit.Ly[:, r]),
        ZX=np.ascontiguousarray(ZX), XX=(XX + XX.T) / 2, Xy=Xy, yy=float(unit.yy.sum()), B=B, random=r,
        ZXt=np.ascontiguousarray(np.transpose(ZX, (1, 0, 2))),
        ZZc=np.ascontiguousarray(np.transpose(unit.LL[:, r][:, :, r], (1, 2, 0))),
        Zyc=np.ascontiguousarray(unit.Ly[:, r].T),
        ZXouter=_outer_products(ZX),
    )


OUTER_LIMIT_BYTES = 256 * 2**20


def _outer_products(ZX: np.ndarray) -> np.ndarray | None:
    """Per-unit ZX_j[a]ᵀZX_j[b] flattened, so Σ_j ZX_j'K_jZX_j becomes q(q+1)/2 matrix-vector products."""
    J, q, p = ZX.shape
    pairs = [(a, b) for a in range(q) for b in range(a, q)]
    if len(pairs) * J * p * p * 8 > OUTER_LIMIT_BYTES:
        return None
    out = np.empty((len(pairs), J, p * p))
    for k, (a, b) in enumerate(pairs):
        out[k] = (ZX[:, a, :, None] * ZX[:, b, None, :]).reshape(J, p * p)
    return out
