"""One statistics pass: per-unit moments of the records, and the algebra that turns them into any model's cross-products.

A chunk of records (in memory, a streamed batch, a Dask partition) is summarised per unit by
(n_j, m_j, C_j): the record count, the mean vector and the centred co-moment matrix
C_j = Σ_i (v_ij - m_j)(v_ij - m_j)' of the raw columns v = [level-1 variables..., outcome].
`chunk_moments` is that one function; the in-memory engine (sufficient.unit_cross_products), the
streaming reader and the Dask engine all call it.

Why centred moments and not raw sums Σv, Σvv': raw sums of data with a large mean cancel
(Σx² - (Σx)²/n loses every digit the mean has beyond the spread), while (n, m, C) combine without
cancellation by the parallel update of Chan, Golub & LeVeque (1979): for two parts a, b of a unit,

    n = n_a + n_b,  δ = m_b - m_a,  m = m_a + δ n_b/n,  C = C_a + C_b + δδ' n_a n_b / n,

so records of one unit may be spread over any number of chunks or partitions, in any order.

Any centering is then algebra on (n, m, C). With L_k = v_k - c_k (c_k = m_jk for group-mean
centering, the grand mean for grand-mean centering, 0 for none) and d_k = m_jk - c_k,

    Σ_i L_k L_l = C_kl + n d_k d_l,   Σ_i L_k = n d_k,

which is exact when d is small (group centering: d = 0) and never subtracts two large sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np



@dataclass(frozen=True)
class Moments:
    """Per-unit (n, mean, centred co-moment) of P columns, for J units (n may be 0 in a merge)."""

    n: np.ndarray  # (J,) records
    mean: np.ndarray  # (J, P)
    C: np.ndarray  # (J, P, P)  Σ (v - mean)(v - mean)'

    @property
    def J(self) -> int:
        return int(self.n.size)

    @property
    def P(self) -> int:
        return int(self.mean.shape[1])

    def take(self, index: np.ndarray) -> "Moments":
        return Moments(self.n[index], self.mean[index], self.C[index])


def chunk_moments(columns, codes: np.ndarray, J: int) -> Moments:
    """The statistics of one chunk of records: per-unit (n, mean, C) of `columns` (P arrays of N
    values, no NaN) for records whose unit is codes[i] in 0..J-1, in any order. Two passes over
    the chunk (means, then centred products) with the corrected two-pass mean, so C does not
    cancel; units with no record get zeros. Records grouped by unit (the usual layout, and the
    in-memory archive's) take a faster path with the same arithmetic in the same order."""
    codes = np.asarray(codes, dtype=np.intp)
    columns = [np.asarray(c, dtype=np.float64) for c in columns]
    P = len(columns)
    counts = np.bincount(codes, minlength=J)
    n = counts.astype(np.float64)
    grouped = codes.size > 0 and not np.any(codes[1:] < codes[:-1])
    if grouped and codes.size > BLOCK_RECORDS:
        return _grouped_blocks(columns, counts, n, J)
    if grouped:  # sums by reduceat over each unit's run, means spread back by repeat
        present = np.flatnonzero(counts)
        runs = counts[present]
        starts = np.concatenate(([0], np.cumsum(runs)[:-1]))

        def unit_sum(values):
            out = np.zeros(J)
            out[present] = np.add.reduceat(values, starts)
            return out

        def spread(per_unit):
            return np.repeat(per_unit[present], runs)
    else:
        def unit_sum(values):
            return np.bincount(codes, weights=values, minlength=J)

        def spread(per_unit):
            return per_unit[codes]
    safe = np.where(n > 0, n, 1.0)
    mean = np.empty((J, P))
    centred = []
    for a, col in enumerate(columns):
        m = unit_sum(col) / safe
        d = col - spread(m)
        # the correction of the two-pass algorithm: Σd is the rounding error of the first pass
        fix = unit_sum(d) / safe
        mean[:, a] = m + fix
        d -= spread(fix)
        centred.append(d)
    C = np.empty((J, P, P))
    for a in range(P):
        for b in range(a, P):
            C[:, a, b] = C[:, b, a] = unit_sum(centred[a] * centred[b])
    return Moments(n, mean, C)


# Records per block of whole units in _grouped_blocks: the block's columns and their temporaries
# (a few arrays of this many doubles) stay in the processor's cache instead of streaming N-long
# arrays through memory once per operation.
BLOCK_RECORDS = 1 << 15


def _grouped_blocks(columns, counts: np.ndarray, n: np.ndarray, J: int) -> Moments:
    """chunk_moments for records grouped by unit, one block of whole units at a time: every unit's
    sums are the same reduceat over the same run of records as in the one-pass form, so the result
    is the same to the last bit; only the temporaries are block-sized."""
    P = len(columns)
    present = np.flatnonzero(counts)
    runs = counts[present]
    ends = np.cumsum(runs)
    mean = np.zeros((J, P))
    C = np.zeros((J, P, P))
    k0 = 0
    while k0 < present.size:
        r0 = int(ends[k0 - 1]) if k0 else 0
        k1 = max(int(np.searchsorted(ends, r0 + BLOCK_RECORDS, side="right")), k0 + 1)
        r1 = int(ends[k1 - 1])
        units, rb = present[k0:k1], runs[k0:k1]
        sb = np.concatenate(([0], np.cumsum(rb)[:-1]))
        nb = n[units]
        centred = []
        for a, col in enumerate(columns):
            v = col[r0:r1]
            m = np.add.reduceat(v, sb) / nb
            d = v - np.repeat(m, rb)
            fix = np.add.reduceat(d, sb) / nb  # the two-pass correction, as in chunk_moments
            mean[units, a] = m + fix
            d -= np.repeat(fix, rb)
            centred.append(d)
        for a in range(P):
            for b in range(a, P):
                C[units, a, b] = C[units, b, a] = np.add.reduceat(centred[a] * centred[b], sb)
        k0 = k1
    return Moments(n, mean, C)


def merge(a: Moments, b: Moments) -> Moments:
    """Two summaries of the same J units (aligned), combined by Chan et al.'s parallel update."""
    n = a.n + b.n
    safe = np.where(n > 0, n, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.n / safe)[:, None]
    C = a.C + b.C + (a.n * b.n / safe)[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return Moments(n, mean, C)


@dataclass(frozen=True)
class KeyedMoments:
    """Moments of the units named by `keys` (sorted, distinct): what a partition or chunk hands on,
    so summaries of different partitions combine whichever units they hold."""

    keys: np.ndarray  # (J,) unit ids, sorted
    moments: Moments


def keyed_chunk_moments(keys: np.ndarray, columns) -> KeyedMoments:
    """chunk_moments for records labelled by their unit ids (text or integers)."""
    uniq, codes = np.unique(keys, return_inverse=True)
    return KeyedMoments(uniq, chunk_moments(columns, codes.reshape(-1), uniq.size))


def merge_keyed(parts) -> KeyedMoments:
    """Combine any number of KeyedMoments (a node of the tree reduction): the union of their units,
    each unit's parts merged pairwise in the order given."""
    parts = [p for p in parts if p is not None]
    if len(parts) == 1:
        return parts[0]
    keys = np.unique(np.concatenate([p.keys for p in parts]))
    P = parts[0].moments.P
    J = keys.size
    total = Moments(np.zeros(J), np.zeros((J, P)), np.zeros((J, P, P)))
    for p in parts:
        where = np.searchsorted(keys, p.keys)
        here = total.take(where)
        merged = merge(here, p.moments)
        total.n[where], total.mean[where], total.C[where] = merged.n, merged.mean, merged.C
    return KeyedMoments(keys, total)


def grand(m: Moments) -> tuple[float, np.ndarray, np.ndarray]:
    """(N, mean, C) of all records together: the units merged pairwise (a balanced tree, so the
    rounding grows like log J), used for grand means and for the overall variance."""
    n, mean, C = m.n, m.mean, m.C
    while n.size > 1:
        if n.size % 2:
            n, mean, C = (np.append(n, 0.0), np.vstack([mean, np.zeros((1, mean.shape[1]))]),
                          np.concatenate([C, np.zeros((1,) + C.shape[1:])]))
        merged = merge(Moments(n[0::2], mean[0::2], C[0::2]), Moments(n[1::2], mean[1::2], C[1::2]))
        n, mean, C = merged.n, merged.mean, merged.C
    return float(n[0]), mean[0].copy(), C[0].copy()


def cross_products(m: Moments, centers: np.ndarray, intercept: bool = True):
    """Raw cross-products of the shifted columns [1, v - c] per unit from (n, mean, C).

    centers: (J, P) or (P,) the value c subtracted from each column (a unit's mean, a grand mean, 0).
    Returns (n, S) with S (J, P+1, P+1) = Σ_i [1, v_i - c][1, v_i - c]' (or (J, P, P) without the
    intercept row). Σ (v_k - c_k)(v_l - c_l) = C_kl + n d_k d_l with d = m - c (module docstring)."""
    d = m.mean - np.broadcast_to(centers, m.mean.shape)
    inner = m.C + m.n[:, None, None] * d[:, :, None] * d[:, None, :]
    if not intercept:
        return m.n, inner
    J, P = d.shape
    S = np.empty((J, P + 1, P + 1))
    S[:, 0, 0] = m.n
    S[:, 0, 1:] = S[:, 1:, 0] = m.n[:, None] * d
    S[:, 1:, 1:] = inner
    return m.n, S


def digest_of(unit_ids: list[str], m: Moments, outcome: int | None = None) -> str:
    """A fingerprint of the data a fit from moments used: the units, their record counts and the
    moments of the outcome (column `outcome`; all columns when None). As the in-memory engine's hash of
    the outcome and the units, it does not depend on the predictors read, so two models of the same
    records (compare, --compare-deviance) carry the same fingerprint; records dropped for a missing
    predictor change the counts and so the fingerprint. (The in-memory engine hashes the records
    themselves, so the two kinds of fingerprint differ.)"""
    import hashlib

    h = hashlib.sha256(b"moments\x1f")
    h.update("\x1f".join(unit_ids).encode("utf-8"))
    parts = (m.n, m.mean, m.C) if outcome is None else (m.n, m.mean[:, outcome], m.C[:, outcome, outcome])
    for a in parts:
        h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- nested models (three and more levels)

@dataclass(frozen=True)
class LevelsSummary:
    """The data of a nested linear model of K ≥ 3 levels with its records summarised per level-2 unit.

    Why this is all the likelihood needs: every column of the model (nested.py's docstring) is a
    level-1 coefficient's predictor a_p times a product f_j of predictors of levels ≥ 2, which is
    constant within the level-2 unit j. So any column, and any linear combination of columns the
    search uses (centred, scaled, orthonormalised, the outcome residualised), is on the records of
    unit j an affine map c_i = B0_j + B1_j'v_i of the level-1 values v_i = [a_1 … a_P, y], and

        Σ_i c_i c_i' = n_j μ_j μ_j' + B1_j' C_j B1_j,   μ_j = B0_j + B1_j' m_j,

    with (n_j, m_j, C_j) the unit's moments (module docstring): no sum over records is formed after
    the summary, and no two large sums are subtracted (a centred column enters through its small
    μ_j and C_j). The deviance, its gradient, the EB means, the χ² tests and the reliabilities all
    follow from these per-unit cross-products and the nesting (nested.reduce_levels).

    moments: per level-2 unit (J2), columns [level-1 predictors as the model centres them, outcome];
    upper[ℓ−2]: the level-ℓ predictors (Jℓ, Pℓ), ℓ = 2..K; unit_parents[ℓ−2] (Jℓ,): the level-(ℓ+1)
    unit of each level-ℓ unit (ℓ = 2..K−1), nondecreasing; layout: the level-1 equation (nested.Coefficient)."""

    moments: Moments
    upper: tuple
    unit_parents: tuple
    layout: tuple

    @property
    def n_levels(self) -> int:
        return len(self.upper) + 1

    @property
    def N(self) -> int:
        return int(round(float(self.moments.n.sum())))

    @property
    def predictors(self) -> tuple:
        """As LevelsData.predictors for the levels ≥ 2; level 1 has only its column count (no records)."""
        return (np.zeros((0, self.moments.P - 1)),) + tuple(self.upper)

    @property
    def parents(self) -> tuple:
        """As LevelsData.parents for the levels ≥ 2; the records' level-2 units are not kept."""
        return (np.zeros(0, dtype=np.int64),) + tuple(self.unit_parents)


def records_summary(y, level1, unit2, upper, unit_parents, layout) -> LevelsSummary:
    """The LevelsSummary of records in memory: chunk_moments of [level-1 predictors, y] by level-2
    unit (`unit2`, 0..J2−1), the one statistics pass the stream and Dask engines make chunk by chunk."""
    level1 = np.asarray(level1, dtype=np.float64)
    J2 = int(np.asarray(upper[0]).shape[0])
    columns = [level1[:, k] for k in range(level1.shape[1])] + [np.asarray(y, dtype=np.float64)]
    return LevelsSummary(chunk_moments(columns, unit2, J2), tuple(upper), tuple(unit_parents), tuple(layout))


def _unit_means(m: Moments, B0: np.ndarray, B1: np.ndarray) -> np.ndarray:
    """μ = B0 + B1'm per unit (k, J)."""
    return B0 + (B1 * m.mean.T[:, None, :]).sum(axis=0)


def _C_times(m: Moments, B1: np.ndarray) -> np.ndarray:
    """C_jB1_j per unit (P, k, J), C symmetric, as P² multiply-adds over contiguous (k, J) arrays."""
    Ct = np.ascontiguousarray(m.C.transpose(1, 2, 0))
    CB = np.empty_like(B1)
    for p in range(B1.shape[0]):
        CB[p] = (Ct[p][:, None, :] * B1).sum(axis=0)
    return CB


def mapped_products(m: Moments, B0: np.ndarray, B1: np.ndarray):
    """Per unit, the columns c_i = B0_j + B1_j'v_i of its records: their means μ (k, J) and raw
    cross-products Σ_i c_i c_i' = n μμ' + B1'CB1 (k, k, J), component-first (LevelsSummary).
    B0: (k, J), B1: (P, k, J) with P the moments' columns."""
    mu = _unit_means(m, B0, B1)
    CB = _C_times(m, B1)
    k, J = B0.shape
    S = np.empty((k, k, J))
    for a in range(k):
        for b in range(a, k):
            S[a, b] = S[b, a] = (B1[:, a] * CB[:, b]).sum(axis=0) + m.n * mu[a] * mu[b]
    return mu, S


def mapped_means(m: Moments, B0: np.ndarray, B1: np.ndarray):
    """For each column c = B0 + B1'v (as mapped_products): its mean over all records and
    Σ_i (c_i − mean)² = Σ_j n_j (μ_j − mean)² + B1_j'C_jB1_j, and Σ_i c_i², without the cross-products."""
    mu = _unit_means(m, B0, B1)
    N = float(m.n.sum())
    mean = (mu * m.n).sum(axis=1) / N
    d = mu - mean[:, None]
    within = (B1 * _C_times(m, B1)).sum(axis=(0, 2))
    return mean, (m.n * d * d).sum(axis=1) + within, (m.n * mu * mu).sum(axis=1) + within
