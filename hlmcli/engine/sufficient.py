"""Stage 5, sufficient statistics: per-unit cross-products, computed once in a vectorised pass.

Everything the likelihood, the robust SEs, the χ² tests and the reliabilities need is a function
of these, so after this stage no computation touches the N records again.
"""

from __future__ import annotations

import functools
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
    records: np.ndarray | None = None  # (J,) records per unit when n holds level-1 weight sums

    @property
    def count(self) -> np.ndarray:
        """Records per unit (n itself unless level-1 weights made n the weight sums)."""
        return self.n if self.records is None else self.records

    def on_outcome_scale(self, values: np.ndarray, intercept: int | None = 0) -> np.ndarray:
        """The one place that undoes the centring of y: the shift goes back into the intercept
        (index `intercept` of the last axis: γ00 among the γs, β0 among a unit's coefficients).
        With no intercept y was not centred (y_shift is 0)."""
        out = np.array(values, dtype=float, copy=True)
        if self.y_shift and intercept is not None:
            out[..., intercept] += self.y_shift
        return out


def unit_cross_products(L: np.ndarray, y: np.ndarray, offsets: np.ndarray, center_y: bool = True,
                        weights: np.ndarray | None = None) -> UnitStats:
    """Per-unit cross-products; y is centred at its mean first when the model can absorb the shift
    in its intercept (center_y), which keeps y'y from cancelling against the fitted part.

    With level-1 weights w (N,) every product carries them (L_j'W_jL_j, L_j'W_jy_j, y_j'W_jy_j) and
    n_j becomes Σ_i w_i|j: the per-unit pseudo-likelihood has exactly the unweighted algebra on
    these (see unitsolve.py); `records` keeps the record counts."""
    N, K = L.shape
    shift = float(y.mean()) if center_y else 0.0
    columns = [L[:, a] for a in range(K)]
    ones = [a for a in range(K) if a == 0 and np.all(columns[0] == 1.0)]
    if weights is not None:
        return _weighted_cross_products(columns, y - shift, offsets, shift, np.asarray(weights, dtype=float), ones)
    return cross_products_of_columns(columns[1:] if ones else columns, y, offsets, shift, intercept=bool(ones))


def cross_products_of_columns(columns, y: np.ndarray, offsets: np.ndarray, shift: float, intercept: bool) -> UnitStats:
    """UnitStats of L = [1 (if intercept), columns...] and y - shift through the one statistics
    function of the engines (moments.chunk_moments), so the in-memory, streaming and Dask engines
    compute the same numbers the same way."""
    from .moments import chunk_moments, cross_products

    J = offsets.size - 1
    codes = np.repeat(np.arange(J), np.diff(offsets))
    m = chunk_moments(list(columns) + [y], codes, J)
    centers = np.zeros(m.P)
    centers[-1] = shift
    return unit_stats_from_products(*cross_products(m, centers, intercept), shift)


def unit_stats_from_products(n: np.ndarray, S: np.ndarray, shift: float, records=None) -> UnitStats:
    """Split the per-unit cross-products S of [L, y] (outcome last) into UnitStats."""
    K = S.shape[1] - 1
    return UnitStats(n=np.asarray(n, dtype=np.float64), LL=np.ascontiguousarray(S[:, :K, :K]),
                     Ly=np.ascontiguousarray(S[:, :K, K]), yy=np.ascontiguousarray(S[:, K, K]), y_shift=shift,
                     records=records)


def unit_cross_products_many(L: np.ndarray, Y: np.ndarray, offsets: np.ndarray, center_y: bool = True,
                             weights: np.ndarray | None = None) -> list[UnitStats]:
    """unit_cross_products for several outcomes Y (N, M) on one design (plausible values): L'L and
    the weight sums once, then L'y and y'y of every outcome in one vectorised pass over Y."""
    first = unit_cross_products(L, Y[:, 0], offsets, center_y, weights)
    M = Y.shape[1]
    if M == 1:
        return [first]
    starts = offsets[:-1]
    shifts = Y.mean(axis=0) if center_y else np.zeros(M)
    Yc = Y[:, 1:] - shifts[1:]
    WYc = Yc if weights is None else Yc * np.asarray(weights, dtype=float)[:, None]
    K = L.shape[1]
    Ly = np.empty((starts.size, K, M - 1))
    for a in range(K):
        col = L[:, a]
        Ly[:, a, :] = np.add.reduceat(WYc if np.all(col == 1.0) else col[:, None] * WYc, starts, axis=0)
    yy = np.add.reduceat(WYc * Yc, starts, axis=0)
    out = [first]
    for m in range(1, M):
        out.append(UnitStats(n=first.n, LL=first.LL, Ly=np.ascontiguousarray(Ly[:, :, m - 1]), yy=yy[:, m - 1].copy(),
                             y_shift=float(shifts[m]), records=first.records))
    return out


def _weighted_cross_products(columns, yc, offsets, shift, w, ones) -> UnitStats:
    starts = offsets[:-1]
    K, J = len(columns), starts.size
    wcols = [w if a in ones else w * columns[a] for a in range(K)]
    LL = np.empty((J, K, K))
    Ly = np.empty((J, K))
    for a in range(K):
        for b in range(a, K):
            prod = wcols[a] if b in ones else wcols[a] * columns[b]
            LL[:, a, b] = LL[:, b, a] = np.add.reduceat(prod, starts)
        Ly[:, a] = np.add.reduceat(wcols[a] * yc, starts)
    wy = w * yc
    yy = np.add.reduceat(wy * yc, starts)
    return UnitStats(n=np.add.reduceat(w, starts), LL=LL, Ly=Ly, yy=yy, y_shift=shift,
                     records=np.diff(offsets).astype(np.float64))


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
    XX_units: np.ndarray  # (J, p, p) X_j'X_j, for the robust scores
    Xy_units: np.ndarray  # (J, p) X_j'y_j
    w2: np.ndarray | None = None  # (J,) level-2 weights of a weighted (pseudo-likelihood) fit; None = unweighted

    @functools.cached_property
    def ZXouter(self) -> np.ndarray | None:
        """(q(q+1)/2, J, p²): vec(ZX_j[a]' ZX_j[b]) for a ≤ b, when it fits in memory; made on first
        use, as only the statistics the search runs on need it."""
        return _outer_products(self.ZX)

    @property
    def weighted(self) -> bool:
        return self.w2 is not None

    def unit_sum(self, x: np.ndarray) -> np.ndarray:
        """Σ_j x_j over units (axis 0), each unit counted w_j times in a weighted fit."""
        return x.sum(axis=0) if self.w2 is None else np.tensordot(self.w2, x, axes=(0, 0))

    @property
    def J(self) -> int:
        return self.ZZ.shape[0]

    @property
    def p(self) -> int:
        return self.XX.shape[0]

    @property
    def q(self) -> int:
        return self.ZZ.shape[1]


def model_stats(unit: UnitStats, B: np.ndarray, random_mask: np.ndarray, w2: np.ndarray | None = None) -> ModelStats:
    """The model's cross-products. With level-2 weights w2 (a weighted fit; ones when only level-1
    weights are given) the totals are w_j-weighted sums and N = Σ_j w_j n_j, n_j the level-1
    weight sums: each unit's pseudo-log-likelihood counts w_j times."""
    r = np.flatnonzero(random_mask)
    LB = np.matmul(unit.LL, B)  # (J, K, p)
    ZX = LB[:, r, :]
    XX_units = np.matmul(np.swapaxes(B, 1, 2), LB)
    Xy_units = np.einsum("jkp,jk->jp", B, unit.Ly)
    if w2 is None:
        N, XX, Xy, yy = int(unit.n.sum()), XX_units.sum(axis=0), Xy_units.sum(axis=0), float(unit.yy.sum())
    else:
        w2 = np.asarray(w2, dtype=float)
        N = float(w2 @ unit.n)
        XX = np.tensordot(w2, XX_units, axes=(0, 0))
        Xy, yy = w2 @ Xy_units, float(w2 @ unit.yy)
    return _assemble(N, unit.n, np.ascontiguousarray(unit.LL[:, r][:, :, r]),
                     np.ascontiguousarray(unit.Ly[:, r]), np.ascontiguousarray(ZX), (XX + XX.T) / 2,
                     Xy, yy, B, r, XX_units, Xy_units, w2)


def _assemble(N, n, ZZ, Zy, ZX, XX, Xy, yy, B, r, XX_units, Xy_units, w2=None) -> ModelStats:
    return ModelStats(
        N=N, n=n, ZZ=ZZ, Zy=Zy, ZX=ZX, XX=XX, Xy=Xy, yy=yy, B=B, random=r,
        ZXt=np.ascontiguousarray(np.transpose(ZX, (1, 0, 2))),
        ZZc=np.ascontiguousarray(np.transpose(ZZ, (1, 2, 0))),
        Zyc=np.ascontiguousarray(Zy.T),
        XX_units=XX_units, Xy_units=Xy_units, w2=w2,
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


def reparametrise(stats: ModelStats, A: np.ndarray, Tinv: np.ndarray, b: np.ndarray) -> ModelStats:
    """The same model with the random-effect columns Z replaced by Z̃ = ZA (A invertible, q×q), the
    fixed-effect columns X by X̃ = XT (T = Tinv⁻¹) and the outcome by ỹ = y − X̃b.

    The likelihood is unchanged when τ = Aτ̃A' (Zu = Z̃ũ with u = Aũ). GLS is equivariant under the
    other two (γ = T(γ̃ + b)); σ²V⁻¹ and the residuals e = ỹ − X̃γ̃ are unchanged, so the ML deviance
    is unchanged and the REML deviance moves by 2 log|det T| through log|X'V⁻¹X|. The estimation
    works in these coordinates (standardised Z, whitened X, residualised y) and maps back exactly:
    then P = X'X − Σ(Z'X)'K(Z'X) and rss = y'V⁻¹y − c'γ̂ cancel only as far as the model forces."""
    T = np.linalg.inv(Tinv)
    ZZ = A.T @ stats.ZZ @ A  # stacked matmul over units (einsum is many times slower here)
    ZZ = 0.5 * (ZZ + np.swapaxes(ZZ, 1, 2))
    XX = T.T @ stats.XX @ T
    XX = 0.5 * (XX + XX.T)
    ZX = A.T @ stats.ZX @ T
    XX_units = T.T @ stats.XX_units @ T
    Xy_units = stats.Xy_units @ T - XX_units @ b
    TXy = T.T @ stats.Xy
    Xy = TXy - XX @ b
    Zy = stats.Zy @ A - ZX @ b
    yy = float(stats.yy - 2.0 * b @ TXy + b @ XX @ b)
    return _assemble(stats.N, stats.n, np.ascontiguousarray(ZZ), np.ascontiguousarray(Zy), np.ascontiguousarray(ZX),
                     XX, Xy, yy, stats.B @ T, stats.random, XX_units, Xy_units, stats.w2)
