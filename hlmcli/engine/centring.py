"""Internal centring: the same two-level model on cross-products of centred columns, so that large
means (years, Julian dates, predictors of 1e5 ± 1) cannot spoil the deviance or the collinearity
check.

Why: the per-unit products Σ x x' of a column with mean m and spread s hold m²/s² times more than
the model needs, and every later difference (the whitening of X, y'V⁻¹y − c'γ̂) gives those digits
back as rounding error: 1e5 ± 10 costs 8 of the 16 digits, a Julian date ± 100 more than 8.

The map, exact in real arithmetic. Let c be the grand means of the level-1 columns (c_0 = 0 for
the intercept) and L = L̃E with L̃ = L − 1c' and E = I + e_0c'. Then
  - fixed part: X_j = L_jB_j = L̃_j(EB_j). A column x_a·w (level-1 predictor a, level-2 column w)
    becomes x̃_a·w + c_a·w·1; when the intercept equation holds the same w, the term c_a·w·1 is
    that column times c_a, so X̃ = XT with T = I − c_a e_{k'}e_k' removes it exactly (the entry of
    EB is c_a·w − c_a·w = 0 in floating point too). A level-2 column w of equation a with an
    intercept is first centred at its mean over units in the same way (x_a·w = x_a·w̃ + m·x_a).
    T is unit upper triangular (an intercept column precedes the columns it absorbs), so the
    whitening that follows stays triangular and log|det T| = 0: the REML deviance is unchanged.
  - random part: with a random intercept and unstructured τ, a random column x_a becomes x̃_a by
    Z̃ = ZA (A = I − c_a e_0e_a'), a reparametrisation of τ (τ = Aτ̃A'). Otherwise a random column
    is left uncentred (c_a = 0), as centring it would change the model (a diagonal τ, or no
    random intercept to absorb the shift).
  - outcome: y (already shifted by its grand mean when the model has γ00) is residualised on X_c
    record by record, ỹ = y − X_c b₀, so y'V⁻¹y − c'γ̂ does not cancel what the fixed part explains
    (a level-2 predictor of 1e5 that moves y by 1e6 between units would otherwise cost 12 digits).
    Then γ_c = γ̃ + b₀.
The estimation works on these statistics and maps its answer back with T, A and b₀ (estimation.fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sufficient import ModelStats, model_stats


@dataclass(frozen=True)
class Centred:
    """The model on centred columns: X_c = XT, Z_c = ZA, y unchanged."""

    stats: ModelStats  # of L̃ and ỹ
    T: np.ndarray  # (p, p) unit upper triangular
    A: np.ndarray  # (q, q)
    b0: np.ndarray  # (p,) y = ỹ + X_c b₀


# Centring pays for itself only when a column's mean is far from zero in units of its spread: the products
# lose about 2·log10(|mean|/sd) digits. Below this ratio they keep at least 12 of 16 digits (the deviance to
# about 1e-12 relative), as the engine always did, and the records need not be passed over a second time.
SCALE_RATIO = 100.0


def needs_centring(L_sums: np.ndarray, L_squares: np.ndarray, n: float, W: list[np.ndarray],
                   sizes: np.ndarray) -> bool:
    """Whether some fixed-effect factor has |mean| > SCALE_RATIO · sd: a level-1 column (from its total Σx and
    Σx² over the records) or a level-2 column (weighted by the records of each unit)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = L_sums[1:] / n
        sd = np.sqrt(np.maximum(L_squares[1:] / n - mean**2, 0.0))
        if np.any(np.abs(mean) > SCALE_RATIO * sd):
            return True
        weights = sizes / sizes.sum()
        for Wq in W:
            cols = Wq[:, 1:]
            if cols.size == 0:
                continue
            m = weights @ cols
            v = weights @ (cols - m) ** 2
            if np.any(np.abs(m) > SCALE_RATIO * np.sqrt(v)):
                return True
    return False


def column_centres(L_means: np.ndarray, random: np.ndarray, unstructured: bool) -> np.ndarray:
    """c for L̃ = L − 1c': every level-1 column's grand mean, except the intercept, and except a
    random column when no random intercept (with unstructured τ) can absorb its shift."""
    c = np.array(L_means, dtype=float, copy=True)
    c[0] = 0.0
    random = np.asarray(random, dtype=bool)
    if not (random[0] and unstructured):
        c[random] = 0.0
    c[~np.isfinite(c)] = 0.0
    return c


def _rows(B: np.ndarray) -> np.ndarray:
    """For each fixed column k, the one level-1 column a with X_k = L_a·w (−1 if none or several)."""
    nz = np.any(B != 0.0, axis=0)  # (K, p)
    rows = np.full(B.shape[2], -1)
    for k in range(B.shape[2]):
        a = np.flatnonzero(nz[:, k])
        if a.size == 1:
            rows[k] = a[0]
    return rows


def _residual(y: np.ndarray, X: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y − Xb with the products and the sum in extended precision (np.longdouble, 64-bit mantissa on
    x86): when the fitted values are large (1e9 for an outcome the predictors move that far) a
    double's rounding of them, about 1e-7 each, would be part of every residual."""
    acc = np.asarray(y, dtype=np.longdouble).copy()
    for k in range(X.shape[1]):
        acc -= X[:, k].astype(np.longdouble) * np.longdouble(b[k])
    return acc.astype(float)


def centred_model(L: np.ndarray, y: np.ndarray, offsets: np.ndarray, B: np.ndarray, random: np.ndarray,
                  unstructured: bool, weights=None, w2=None) -> Centred:
    """The model y = LBγ + Zu + r (y as the fit sees it: shifted by its grand mean when the model
    has γ00) on centred columns and a residualised outcome, from the records."""
    from .sufficient import unit_cross_products

    J, K, p = B.shape
    random = np.asarray(random, dtype=bool)
    c = column_centres(L.mean(axis=0), random, unstructured)
    rows = _rows(B)
    T1 = np.eye(p)
    Bt = np.array(B, dtype=float, copy=True)
    intercept_of = {}
    for k in range(p):
        a = rows[k]
        if a >= 0 and np.all(B[:, a, k] == 1.0) and a not in intercept_of:
            intercept_of[a] = k
    # level-2 columns centred at their mean over units, absorbed by their equation's intercept
    for k in range(p):
        a = rows[k]
        k0 = intercept_of.get(a)
        if a < 0 or k0 is None or k0 == k:
            continue
        m = float(Bt[:, a, k].mean())
        if m != 0.0:
            Bt[:, a, k] -= m
            T1[k0, k] = -m
    # level-1 columns centred at c, absorbed by the intercept equation's column of the same w
    E = np.eye(K)
    E[0, :] += c
    Bh = np.einsum("ab,jbp->jap", E, Bt)
    T2 = np.eye(p)
    for k in range(p):
        a = rows[k]
        if a <= 0 or c[a] == 0.0:
            continue
        for k2 in range(p):
            if rows[k2] == 0 and np.array_equal(Bt[:, 0, k2], Bt[:, a, k]):
                T2[k2, k] = -c[a]
                Bh[:, 0, k] = 0.0
                break
    r = np.flatnonzero(random)
    A = np.eye(r.size)
    if r.size and r[0] == 0:
        A[0, :] = -c[r]
        A[0, 0] = 1.0
    Lc = L - c[None, :]
    Lc[:, 0] = L[:, 0]
    unit = np.repeat(np.arange(J), np.diff(offsets))
    Xc = np.zeros((Lc.shape[0], p))  # X_c = L̃B̂ record by record, one level-1 column at a time (never N×K×p)
    for k in range(K):
        used = np.flatnonzero(np.any(Bh[:, k, :] != 0.0, axis=0))
        if used.size:
            Xc[:, used] += Lc[:, k:k + 1] * Bh[:, k, used][unit]
    b0 = np.zeros(p)
    if p:
        # normal equations on the centred columns (any b₀ keeps the map exact; this one only has to
        # make ỹ small), then one step of refinement on the extended-precision residual
        XtX = Xc.T @ Xc
        b0 = np.linalg.lstsq(XtX, Xc.T @ y, rcond=None)[0]
        b0 = b0 + np.linalg.lstsq(XtX, Xc.T @ _residual(y, Xc, b0), rcond=None)[0]
        if not np.all(np.isfinite(b0)):
            b0 = np.zeros(p)
    yc = _residual(y, Xc, b0)
    unit_c = unit_cross_products(Lc, yc, offsets, center_y=False, weights=weights)
    return Centred(model_stats(unit_c, Bh, random, w2), T1 @ T2, A, b0)
