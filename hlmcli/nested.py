"""Three-level linear models (HLM 7's HLM3): the nested per-unit solve, the profiled ML/REML
deviance, its gradient, the certified fit and the inference, as pure functions of arrays.

Model (HLM3's notation). Level 1: Y = Σ_p π_p a_p + e, e ~ N(0, σ²). Level 2: π_p = Σ_q β_pq X_q
+ r_p. Level 3: β_pq = Σ_s γ_pqs W_s + u_pq. In matrix form, for the records of level-3 unit k,

    y = Xγ + Z2 r + Z3 u + e,   r_j ~ N(0, τπ) per level-2 unit j,   u_k ~ N(0, τβ),

with fixed column a_p·X_q·W_s for γ_pqs, random level-2 column a_p for r_p, random level-3 column
a_p·X_q for u_pq. Write G2 = τπ/σ² = Λ2Λ2', G3 = τβ/σ² = Λ3Λ3' (any square factors).

The nested Woodbury solve. Let B = [Z3 | X | y] (the columns that are not absorbed at level 2).
Within level-2 unit j, with A_j = Z2_j'Z2_j,

    M_j = I + Λ2'A_jΛ2,   K2_j = Λ2M_j⁻¹Λ2',   σ²V2_j⁻¹ = I − Z2_jK2_jZ2_j',   log|V2_j/σ²| = log|M_j|,

so the "V2⁻¹-weighted" cross-products of B are W_j = B_j'B_j − (Z2_j'B_j)'K2_j(Z2_j'B_j). Summed over
the level-2 units of level-3 unit k they give W_k; its Z3 block S_k = Z3'(σ²V2⁻¹)Z3 plays the role
of Z'Z one level up:

    M_k = I + Λ3'S_kΛ3,   K3_k = Λ3M_k⁻¹Λ3',
    σ²V_k⁻¹ = R⁻¹ − R⁻¹Z3K3_kZ3'R⁻¹ (R = V2/σ²),   log|V_k/σ²| = Σ_j∈k log|M_j| + log|M_k|.

Then [X|y]'(σ²V⁻¹)[X|y] = Σ_k W_k[Xy,Xy] − W_k[Z3,Xy]'K3_kW_k[Z3,Xy], which holds P = σ²X'V⁻¹X,
c = σ²X'V⁻¹y and s = σ²y'V⁻¹y: γ̂ = P⁻¹c and rss = s − c'γ̂. Everything is q×q algebra per unit
(vectorised over units, component-first arrays as in unitsolve.py): the cost is linear in N, and
no N×N or level-3-sized matrix is ever formed.

Deviance (lme4's), σ² profiled: ν = N (ML) or N − p (REML), σ̂² = rss/ν,

    d = Σ_j log|M_j| + Σ_k log|M_k| + ν(1 + log 2π + log σ̂²) [+ log|P| for REML].

Gradient. With Ṽ = V/σ² = I + Z2G2Z2' + Z3G3Z3' (Z2 block-diagonal over level-2 units, Z3 over
level-3 units), ∂log|Ṽ|/∂G = Σ (diagonal blocks of Z'Ṽ⁻¹Z), ∂rss/∂G = −Σ v v' with v = Z'Ṽ⁻¹e
per unit, and ∂log|P|/∂G = −Σ (diagonal blocks of Z'Ṽ⁻¹X P⁻¹ X'Ṽ⁻¹Z) (P here in σ² units), so for
each block (level ℓ = 2 over level-2 units j, ℓ = 3 over level-3 units k)

    Γℓ = Σ Zℓ'Ṽ⁻¹Zℓ − (1/σ̂²) Σ vℓvℓ' [− Σ Qℓ P⁻¹ Qℓ' for REML],   Qℓ = Zℓ'Ṽ⁻¹X,

exactly the two-level formula (unitsolve.py) once the per-unit pieces are known. At level 3,
with H3_k = I − S_kK3_k: Z3'Ṽ⁻¹Z3 = H3_kS_k and Z3'Ṽ⁻¹[X|y] = H3_kW_k[Z3,Xy]. At level 2, with
H2_j = I − A_jK2_j and T_j = H2_j(Z2_j'Z3_j) (= Z2_j'R⁻¹Z3_j):

    Z2_j'Ṽ⁻¹Z2_j = H2_jA_j − T_jK3_kT_j',   Z2_j'Ṽ⁻¹[X|y] = H2_j(Z2_j'[X|y]) − T_jK3_kW_k[Z3,Xy].

The search works on standardised columns formed record by record (reduce_standardised); the
solve is the same algebra on either set of cross-products (reduce_nested gives the user's own).

Empirical Bayes: E(r_j | y) = G2 v2_j, Var(r_j | y, γ̂) = σ²(G2 − G2(Z2_j'Ṽ⁻¹Z2_j)G2);
E(u_k | y) = G3 v3_k, Var(u_k | y, γ̂) = σ²K3_k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .unitsolve import LOG_2PI, cmm, cmv, spd_inverse_logdet

__all__ = ["Beta", "Pi", "NestedLayout", "NestedData", "NestedFit", "NestedStats", "NestedSolve",
           "reduce_nested", "nested_solve", "deviance_nested", "fit_nested"]


# ---------------------------------------------------------------- the interface

@dataclass(frozen=True)
class Beta:
    """One level-2 coefficient β_pq."""
    level2_col: int | None  # column of NestedData.X2, None = the intercept (1)
    level3_cols: tuple[int | None, ...]  # columns of NestedData.W3 in its level-3 equation, None = intercept
    random: bool  # has u_pq


@dataclass(frozen=True)
class Pi:
    """One level-1 coefficient π_p."""
    level1_col: int | None  # column of NestedData.A, None = the intercept (1)
    betas: tuple[Beta, ...]
    random: bool  # has r_p


@dataclass(frozen=True)
class NestedLayout:
    """gamma order: for p in pis, for beta in p.betas, for s in beta.level3_cols -> γ_pqs.
    tau_pi order: the random π's in order; tau_beta order: the random β's in (p, q) order."""
    pis: tuple[Pi, ...]


@dataclass(frozen=True)
class NestedData:
    y: np.ndarray  # (N,) outcome
    A: np.ndarray  # (N, P1) level-1 predictors (centred as the model says)
    X2: np.ndarray  # (J2, P2) level-2 predictors
    W3: np.ndarray  # (J3, P3) level-3 predictors
    unit2: np.ndarray  # (N,) level-2 unit of each record, 0..J2-1, nondecreasing
    unit3: np.ndarray  # (J2,) level-3 unit of each level-2 unit, 0..J3-1, nondecreasing
    layout: NestedLayout


@dataclass
class NestedFit:
    method: str  # "ML" or "REML"
    gamma: np.ndarray  # (p,)
    cov_gamma: np.ndarray  # (p, p) model-based
    cov_gamma_robust: np.ndarray  # (p, p) CR0 sandwich clustered at level 3
    df_gamma: np.ndarray  # (p,) HLM3 d.f. (see hlm3_df)
    sigma2: float
    tau_pi: np.ndarray  # (q2, q2)
    tau_beta: np.ndarray  # (q3, q3)
    deviance: float  # −2 log L (ML) or the REML criterion, lme4's conventions
    n_params: int  # 1 + q2(q2+1)/2 + q3(q3+1)/2, plus p under ML (HLM's count)
    reliability_pi: np.ndarray  # (q2,)
    reliability_beta: np.ndarray  # (q3,)
    chi2_pi: list[dict]  # per random π: chi2, df, p, n_units
    chi2_beta: list[dict]  # per random β: chi2, df, p, n_units
    eb_pi: np.ndarray  # (J2, q2)
    eb_pi_var: np.ndarray  # (J2, q2, q2)
    eb_beta: np.ndarray  # (J3, q3)
    eb_beta_var: np.ndarray  # (J3, q3, q3)
    certificate: object
    converged: bool  # True only with a certificate
    iterations: int
    message: str
    boundary: list[str] = field(default_factory=list)
    solve: object | None = None  # the NestedSolve at the answer, in the standardised coordinates
    standardisation: object | None = None  # nested.Standardisation: the map back to the user's columns
    evaluations: int = 0
    start: str = ""


# ---------------------------------------------------------------- columns of the model

@dataclass(frozen=True)
class _Columns:
    """Every column of the model as a level-1 column a_p (index into [a_0..a_{P-1}, y]) times a
    per-level-2-unit factor: Z2 (r_p), Z3 (u_pq), X (γ_pqs), then y."""
    z2: list  # p
    z3: list  # (p, level2_col)
    x: list  # (p, level2_col, level3_col, beta index in random-β order or None)
    x_beta: list  # (p, index of the β within pi.betas) for each γ
    n_beta: int


def _columns(layout: NestedLayout) -> _Columns:
    z2, z3, x, xb = [], [], [], []
    rb = 0
    for ip, pi in enumerate(layout.pis):
        if pi.random:
            z2.append(ip)
        for iq, beta in enumerate(pi.betas):
            idx = None
            if beta.random:
                z3.append((ip, beta.level2_col))
                idx = rb
                rb += 1
            for s in beta.level3_cols:
                x.append((ip, beta.level2_col, s, idx))
                xb.append((ip, iq))
    return _Columns(z2, z3, x, xb, rb)


# ---------------------------------------------------------------- the reduction (once)

@dataclass
class NestedStats:
    """Per-unit cross-products: everything the likelihood needs after one pass over the records.
    Arrays are component-first (…, J)."""
    N: int
    n2: np.ndarray  # (J2,) records per level-2 unit
    unit3: np.ndarray  # (J2,)
    starts3: np.ndarray  # (J3,) first level-2 unit of each level-3 unit
    q2: int
    q3: int
    p: int
    ZZ2: np.ndarray  # (q2, q2, J2)  Z2_j'Z2_j
    Z2B: np.ndarray  # (q2, nb, J2)  Z2_j'B_j, B = [Z3 | X | y]
    BB: np.ndarray  # (nb, nb, J3)  Σ_j∈k B_j'B_j
    yy: float  # y'y
    DD: np.ndarray | None = None  # (P+1, P+1, J2) cross-products of [a_0..a_{P-1}, y] (for χ² tests)
    F: np.ndarray | None = None  # (m, J2) per-level-2-unit factor of each column of [Z2|Z3|X|y]
    D_index: np.ndarray | None = None  # (m,) the level-1 column of each

    @property
    def J2(self) -> int:
        return self.n2.size

    @property
    def J3(self) -> int:
        return self.starts3.size

    @property
    def nb(self) -> int:
        return self.q3 + self.p + 1


def _offsets(sorted_ids: np.ndarray, n_units: int) -> np.ndarray:
    counts = np.bincount(sorted_ids, minlength=n_units)
    return np.concatenate([[0], np.cumsum(counts)])


def _validate(data: NestedData) -> None:
    """The array contract of NestedData; a violation is a ValueError saying which array and why."""
    y, A = np.asarray(data.y), np.asarray(data.A)
    X2, W3 = np.asarray(data.X2), np.asarray(data.W3)
    unit2, unit3 = np.asarray(data.unit2), np.asarray(data.unit3)
    N, J2 = y.shape[0], unit3.shape[0]
    if y.ndim != 1 or N == 0:
        raise ValueError("y must be a non-empty vector")
    if A.ndim != 2 or A.shape[0] != N or unit2.shape != (N,):
        raise ValueError(f"A must have N = {N} rows and unit2 N entries")
    if X2.ndim != 2 or X2.shape[0] != J2:
        raise ValueError(f"X2 must have one row per level-2 unit ({J2})")
    if J2 == 0 or unit2.min() < 0 or unit2.max() >= J2 or np.any(np.diff(unit2) < 0):
        raise ValueError("unit2 must be nondecreasing level-2 unit numbers 0..J2-1 (records sorted by unit)")
    J3 = int(unit3.max()) + 1
    if unit3.min() < 0 or np.any(np.diff(unit3) < 0):
        raise ValueError("unit3 must be nondecreasing level-3 unit numbers 0..J3-1")
    if W3.ndim != 2 or W3.shape[0] != J3:
        raise ValueError(f"W3 must have one row per level-3 unit ({J3})")
    for name, arr in (("y", y), ("A", A), ("X2", X2), ("W3", W3)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} has missing or infinite values")
    for ip, pi in enumerate(data.layout.pis):
        if pi.level1_col is not None and not 0 <= pi.level1_col < A.shape[1]:
            raise ValueError(f"pi {ip}: level-1 column {pi.level1_col} is not a column of A")
        if not pi.betas and not pi.random:
            raise ValueError(f"pi {ip} has neither level-2 coefficients nor a random effect")
        for beta in pi.betas:
            if beta.level2_col is not None and not 0 <= beta.level2_col < X2.shape[1]:
                raise ValueError(f"pi {ip}: level-2 column {beta.level2_col} is not a column of X2")
            if not beta.level3_cols and not beta.random:
                raise ValueError(f"pi {ip}: a level-2 coefficient is neither fixed nor random (leave it out)")
            for s in beta.level3_cols:
                if s is not None and not 0 <= s < W3.shape[1]:
                    raise ValueError(f"pi {ip}: level-3 column {s} is not a column of W3")


def reduce_nested(data: NestedData) -> NestedStats:
    """One vectorised pass over the records: the cross-products of [a_0..a_{P-1}, y] per level-2
    unit (P = number of π's), from which every column of the model, a_p times a level-2-unit
    factor, follows by scaling (never a Python loop over units)."""
    cols = _columns(data.layout)
    _validate(data)
    y = np.asarray(data.y, dtype=float)
    N = y.size
    unit2 = np.asarray(data.unit2, dtype=np.int64)
    unit3 = np.asarray(data.unit3, dtype=np.int64)
    J2 = unit3.size
    J3 = int(unit3.max()) + 1 if J2 else 0
    off2 = _offsets(unit2, J2)
    n2 = np.diff(off2).astype(float)
    if np.any(n2 == 0):
        raise ValueError("a level-2 unit has no records")
    starts2 = off2[:-1]
    off3 = _offsets(unit3, J3)
    if np.any(np.diff(off3) == 0):
        raise ValueError("a level-3 unit has no level-2 units")
    starts3 = off3[:-1]
    P = len(data.layout.pis)
    level1 = [np.ones(N) if pi.level1_col is None else np.asarray(data.A[:, pi.level1_col], dtype=float)
              for pi in data.layout.pis] + [y]
    is_one = [pi.level1_col is None for pi in data.layout.pis] + [False]
    DD = np.empty((P + 1, P + 1, J2))
    for a in range(P + 1):
        for b in range(a, P + 1):
            if is_one[a] and is_one[b]:
                DD[a, b] = n2
            else:
                prod = level1[b] if is_one[a] else (level1[a] if is_one[b] else level1[a] * level1[b])
                DD[a, b] = np.add.reduceat(prod, starts2)
            DD[b, a] = DD[a, b]

    X2 = np.asarray(data.X2, dtype=float)
    W3 = np.asarray(data.W3, dtype=float)
    one2 = np.ones(J2)
    x2 = lambda c: one2 if c is None else X2[:, c]  # noqa: E731
    w3 = lambda s: one2 if s is None else W3[unit3, s]  # noqa: E731
    factors = ([one2 for _ in cols.z2] + [x2(c) for _, c in cols.z3]
               + [x2(c) * w3(s) for _, c, s, _ in cols.x] + [one2])
    dindex = np.array(list(cols.z2) + [p for p, _ in cols.z3] + [p for p, *_ in cols.x] + [P], dtype=int)
    F = np.array(factors) if factors else np.zeros((0, J2))
    q2, q3, p = len(cols.z2), len(cols.z3), len(cols.x)
    m = q2 + q3 + p + 1
    CC = DD[dindex[:, None], dindex[None, :]] * F[:, None, :] * F[None, :, :]  # (m, m, J2)
    ZZ2 = np.ascontiguousarray(CC[:q2, :q2])
    Z2B = np.ascontiguousarray(CC[:q2, q2:])
    BB = np.add.reduceat(CC[q2:, q2:], starts3, axis=2) if J2 else np.zeros((m - q2, m - q2, 0))
    del CC
    return NestedStats(N, n2, unit3, starts3, q2, q3, p, ZZ2, Z2B, np.ascontiguousarray(BB),
                       float(y @ y), DD, F, dindex)


@dataclass(frozen=True)
class Standardisation:
    """The internal coordinates of the search: Z̃2 = Z2A2, Z̃3 = Z3A3, X̃ = XTX (orthogonal columns
    of unit root-mean-square: TX = √N·R⁻¹ from X = QR), ỹ = y − Xb (b the OLS fit, so the outcome's
    sums of squares do not cancel). τπ = σ²A2G̃2A2', τβ = σ²A3G̃3A3', γ = TXγ̃ + b, and
    log|X'V⁻¹X| = log|X̃'V⁻¹X̃| − 2 log|det TX| (the REML shift)."""
    A2: np.ndarray
    A3: np.ndarray
    TX: np.ndarray
    b: np.ndarray

    @property
    def log_det_TX(self) -> float:
        return float(np.linalg.slogdet(self.TX)[1])


def _centre_scale(C: np.ndarray, intercept: int | None) -> np.ndarray:
    """T with C·T centred at the grand mean (when an all-ones column is among C's, as a
    reparametrisation) and scaled to unit spread, each column from the records themselves, so a
    predictor whose mean dwarfs its spread loses only eps·mean/spread, not its square."""
    k = C.shape[1]
    T = np.eye(k)
    for c in range(k):
        if c == intercept:
            continue
        col = C[:, c]
        if intercept is not None:
            m = float(col.mean())
            T[intercept, c] = -m
            sd = float(np.sqrt(np.mean((col - m) ** 2)))
        else:
            sd = float(np.sqrt(np.mean(col * col)))
        if not sd > 0:
            sd = max(float(np.sqrt(np.mean(col * col))), 1e-300)
        T[:, c] /= sd
    return T


def _orthonormalise(X: np.ndarray, intercept: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Q (orthonormal columns) and R⁻¹ with X·R⁻¹ = Q. Centred and scaled columns first, then
    Cholesky QR twice (two p×p Gram matrices: fast, and accurate while the centred columns'
    condition number is below about 1e7); Householder QR, backward stable whatever the
    collinearity, when that fails. Raises FloatingPointError for linearly dependent columns."""
    N, p = X.shape
    if p == 0:
        return X, np.zeros((0, 0))
    T1 = _centre_scale(X, intercept)
    try:
        Q = X @ T1
        Rinv = T1
        for _ in range(2):
            L = np.linalg.cholesky(Q.T @ Q)
            Li = np.linalg.inv(L).T  # R⁻¹ for R = L'
            Q = Q @ Li
            Rinv = Rinv @ Li
        if not (np.all(np.isfinite(Q)) and np.allclose(Q.T @ Q, np.eye(p), atol=1e-10)):
            raise np.linalg.LinAlgError
        return Q, Rinv
    except np.linalg.LinAlgError:
        Q, R = np.linalg.qr(X @ T1)
        d = np.abs(np.diag(R))
        if not d.min() > 1e-13 * d.max():
            raise FloatingPointError("the fixed-effect columns are linearly dependent") from None
        return Q, T1 @ np.linalg.inv(R)


def reduce_standardised(data: NestedData) -> tuple["NestedStats", Standardisation]:
    """The per-unit cross-products of the standardised columns [Z̃2 | Z̃3 | X̃ | ỹ], formed record by
    record (the transform is applied to the records, before any product: centring cross-products
    afterwards would cancel digits quadratically in a predictor's mean/spread)."""
    cols = _columns(data.layout)
    _validate(data)
    pis = data.layout.pis
    y = np.asarray(data.y, dtype=float)
    N = y.size
    unit2 = np.asarray(data.unit2, dtype=np.int64)
    unit3 = np.asarray(data.unit3, dtype=np.int64)
    J2 = unit3.size
    J3 = int(unit3.max()) + 1
    k_rec = unit3[unit2]
    A = np.asarray(data.A, dtype=float)
    X2 = np.asarray(data.X2, dtype=float)
    W3 = np.asarray(data.W3, dtype=float)
    a = lambda p: None if pis[p].level1_col is None else A[:, pis[p].level1_col]  # noqa: E731
    x2 = lambda c: None if c is None else X2[unit2, c]  # noqa: E731
    w3 = lambda s: None if s is None else W3[k_rec, s]  # noqa: E731

    def prod(*vs):
        out = np.ones(N)
        for v in vs:
            if v is not None:
                out = out * v
        return out
    q2, q3, p = len(cols.z2), len(cols.z3), len(cols.x)
    Z2 = np.column_stack([prod(a(ip)) for ip in cols.z2]) if q2 else np.zeros((N, 0))
    Z3 = np.column_stack([prod(a(ip), x2(c)) for ip, c in cols.z3]) if q3 else np.zeros((N, 0))
    X = np.column_stack([prod(a(ip), x2(c), w3(s)) for ip, c, s, _ in cols.x]) if p else np.zeros((N, 0))
    i2 = next((k for k, ip in enumerate(cols.z2) if pis[ip].level1_col is None), None)
    i3 = next((k for k, (ip, c) in enumerate(cols.z3) if pis[ip].level1_col is None and c is None), None)
    i0 = next((k for k, (ip, c, s, _) in enumerate(cols.x) if pis[ip].level1_col is None and c is None and s is None),
              None)
    A2, A3 = _centre_scale(Z2, i2), _centre_scale(Z3, i3)
    Q, Rinv = _orthonormalise(X, i0)
    TX = np.sqrt(N) * Rinv
    Qy = Q.T @ y
    b = Rinv @ Qy
    C = np.ascontiguousarray(np.column_stack([Z2 @ A2, Z3 @ A3, Q * np.sqrt(N), y - Q @ Qy]).T)  # rows = columns
    del Q
    del Z2, Z3, X
    m = C.shape[0]
    off2 = _offsets(unit2, J2)
    starts2 = off2[:-1]
    starts3_rec = off2[_offsets(unit3, J3)[:-1]]
    n2 = np.diff(off2).astype(float)
    ZZ2 = np.empty((q2, q2, J2))
    Z2B = np.empty((q2, m - q2, J2))
    BB = np.empty((m - q2, m - q2, J3))
    for i in range(m):
        for k in range(i, m):
            if k < q2 or i < q2:
                v = np.add.reduceat(C[i] * C[k], starts2)
                if k < q2:
                    ZZ2[i, k] = ZZ2[k, i] = v
                else:
                    Z2B[i, k - q2] = v
            else:
                BB[i - q2, k - q2] = BB[k - q2, i - q2] = np.add.reduceat(C[i] * C[k], starts3_rec)
    yc = C[-1]
    starts3 = _offsets(unit3, J3)[:-1]
    stats = NestedStats(N, n2, unit3, starts3, q2, q3, p, ZZ2, Z2B, BB, float(yc @ yc))
    return stats, Standardisation(A2, A3, TX, b)


# ---------------------------------------------------------------- the solve at (G2, G3)

def _sandwich(lam: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Λ'A_jΛ for every unit, component-first: vec(Λ'AΛ) = (Λ⊗Λ)' vec(A), one BLAS product over
    the contiguous (q², J) array, no transposed copies."""
    q = lam.shape[0]
    J = A.shape[2]
    out = np.kron(lam, lam).T @ np.ascontiguousarray(A).reshape(q * q, J)
    return out.reshape(q, q, J)


def _quad(U: np.ndarray, K: np.ndarray, V: np.ndarray | None = None) -> np.ndarray:
    """U_j'K_jV_j for U (q,a,J), K (q,q,J), V (q,b,J) -> (a,b,J) (symmetric when V is U)."""
    KV = cmm(K, U if V is None else V)
    a = U.shape[1]
    b = KV.shape[1]
    out = np.empty((a, b, U.shape[2]))
    if V is None:
        for i in range(a):
            for k in range(i, b):
                out[i, k] = np.einsum("qj,qj->j", U[:, i], KV[:, k])
                out[k, i] = out[i, k]
    else:
        for i in range(a):
            for k in range(b):
                out[i, k] = np.einsum("qj,qj->j", U[:, i], KV[:, k])
    return out


def _quad_sum(U: np.ndarray, K: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Σ_{j∈k} U_j'K_jU_j for U (q,a,J), K (q,q,J) symmetric, summed over the unit segments that
    begin at `starts` -> (a,a,len(starts)): the a(a+1)/2 distinct products as multiply-adds into
    one contiguous buffer, then one segment sum."""
    q, a, J = U.shape
    KU = cmm(K, U)
    pairs = [(i, k) for i in range(a) for k in range(i, a)]
    prod = np.empty((len(pairs), J))
    tmp = np.empty(J)
    for r, (i, k) in enumerate(pairs):
        np.multiply(U[0, i], KU[0, k], out=prod[r])
        for c in range(1, q):
            np.multiply(U[c, i], KU[c, k], out=tmp)
            prod[r] += tmp
    S = np.add.reduceat(prod, starts, axis=1)
    out = np.empty((a, a, len(starts)))
    for r, (i, k) in enumerate(pairs):
        out[i, k] = out[k, i] = S[r]
    return out


def _absorb(lam: np.ndarray, ZZ: np.ndarray):
    """M = I + Λ'ZZΛ per unit: K = ΛM⁻¹Λ' and log|M|."""
    q = lam.shape[0]
    M = _sandwich(lam, ZZ)
    for a in range(q):
        M[a, a] += 1.0
    Minv, logdet = spd_inverse_logdet(M)
    return _sandwich(lam.T, Minv), logdet


@dataclass
class NestedSolve:
    """The nested per-unit algebra at G2 = Λ2Λ2', G3 = Λ3Λ3', and the GLS fit it implies."""
    stats: NestedStats
    lam2: np.ndarray
    lam3: np.ndarray
    K2: np.ndarray  # (q2, q2, J2)
    K3: np.ndarray  # (q3, q3, J3)
    logdet2: np.ndarray  # (J2,)
    logdet3: np.ndarray  # (J3,)
    W: np.ndarray  # (nb, nb, J3) Σ_j∈k B'(σ²V2⁻¹)B
    P: np.ndarray
    cholP: np.ndarray
    c: np.ndarray
    s: float
    gamma: np.ndarray
    rss: float

    @property
    def G2(self) -> np.ndarray:
        return self.lam2 @ self.lam2.T

    @property
    def G3(self) -> np.ndarray:
        return self.lam3 @ self.lam3.T

    def dof(self, reml: bool) -> float:
        return self.stats.N - self.stats.p if reml else self.stats.N

    def sigma2_hat(self, reml: bool) -> float:
        return self.rss / self.dof(reml)

    def log_det_P(self) -> float:
        return 2.0 * float(np.log(np.diag(self.cholP)).sum())

    def logdet_V(self) -> float:
        return float(self.logdet2.sum() + self.logdet3.sum())

    def profiled_deviance(self, reml: bool) -> float:
        nu = self.dof(reml)
        d = self.logdet_V() + nu * (1.0 + LOG_2PI + np.log(self.rss / nu))
        return d + self.log_det_P() if reml else d

    def deviance(self, sigma2: float, reml: bool) -> float:
        """At this G and a given σ² (γ at its GLS value), as lmerTest's devfun_vp."""
        N, p = self.stats.N, self.stats.p
        d = self.logdet_V() + self.rss / sigma2 + N * (LOG_2PI + np.log(sigma2))
        if reml:
            d += self.log_det_P() - p * (LOG_2PI + np.log(sigma2))
        return d

    def rounding_noise(self, reml: bool) -> float:
        """How far rounding can move the profiled deviance (as UnitSolve.rounding_noise)."""
        eps = np.finfo(float).eps
        nu = self.dof(reml)
        cancel = (abs(self.stats.yy) + abs(self.stats.yy - self.s) + abs(float(self.c @ self.gamma))) / self.rss
        logdets = float(np.abs(self.logdet2).sum() + np.abs(self.logdet3).sum())
        logdets += abs(self.log_det_P()) if reml else 0.0
        return 8.0 * eps * (nu * cancel + logdets + nu * abs(np.log(self.rss / nu)))

    def Pinv(self) -> np.ndarray:
        p = self.P.shape[0]
        return np.linalg.solve(self.cholP.T, np.linalg.solve(self.cholP, np.eye(p)))

    # ------------------------------------------------------------ per-unit pieces for Γ, EB, inference
    def level3_pieces(self):
        """(Z3'Ṽ⁻¹Z3 (q3,q3,J3), Z3'Ṽ⁻¹[X|y] (q3,p+1,J3)) per level-3 unit."""
        q3 = self.stats.q3
        S = self.W[:q3, :q3]
        WB = self.W[:q3, q3:]
        H3 = -cmm(S, self.K3)
        for a in range(q3):
            H3[a, a] += 1.0
        return cmm(H3, S), cmm(H3, WB)

    def level2_pieces(self):
        """(Z2'Ṽ⁻¹Z2 (q2,q2,J2), Z2'Ṽ⁻¹[X|y] (q2,p+1,J2)) per level-2 unit."""
        st = self.stats
        q2, q3 = st.q2, st.q3
        H2 = -cmm(st.ZZ2, self.K2)
        for a in range(q2):
            H2[a, a] += 1.0
        ZVZ = cmm(H2, st.ZZ2)
        ZVB = cmm(H2, st.Z2B[:, q3:])
        if q3:
            T = cmm(H2, st.Z2B[:, :q3])  # Z2'R⁻¹Z3
            K3e = self.K3[:, :, st.unit3]
            TK = cmm(T, K3e)
            ZVZ -= cmm(TK, T.transpose(1, 0, 2))
            ZVB -= cmm(TK, self.W[:q3, q3:][:, :, st.unit3])
        return ZVZ, ZVB

    def gradients(self, reml: bool, sigma2: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Γ2, Γ3) = ∂d/∂(G2, G3), symmetric convention, σ² profiled unless given (module docstring).

        Only sums over units enter Γ, so the residual is contracted first (v = Z'Ṽ⁻¹[X|y]·(−γ̂, 1))
        and Σ_j terms are taken as BLAS contractions over (component, unit) axes: the per-unit
        work at level 2 is a few q×q products, and the p-sized pieces are formed only for REML."""
        st = self.stats
        q2, q3, p = st.q2, st.q3, st.p
        s2 = self.sigma2_hat(reml) if sigma2 is None else sigma2
        Pinv = self.Pinv() if reml else None
        ge = np.append(-self.gamma, 1.0)

        def blocksum(X, Y):  # Σ_j X_j Y_j' for component-first X (a,b,J), Y (c,b,J)
            return np.tensordot(X, Y, axes=([1, 2], [1, 2]))

        G3 = np.zeros((0, 0))
        if q3:
            S = self.W[:q3, :q3]
            WB = self.W[:q3, q3:]  # (q3, p+1, J3)
            H3 = -cmm(S, self.K3)
            for a in range(q3):
                H3[a, a] += 1.0
            We = np.tensordot(WB, ge, axes=([1], [0]))  # W_k[Z3, e] (q3, J3)
            v3 = cmv(H3, We)
            G3 = np.tensordot(H3, S, axes=([1, 2], [0, 2])) - (v3 @ v3.T) / s2
            if reml:
                Q3 = cmm(H3, WB[:, :p])
                G3 -= blocksum(np.tensordot(Q3, Pinv, axes=([1], [0])).transpose(0, 2, 1), Q3)
            G3 = 0.5 * (G3 + G3.T)
        G2 = np.zeros((0, 0))
        if q2:
            A = st.ZZ2
            H2 = -cmm(A, self.K2)
            for a in range(q2):
                H2[a, a] += 1.0
            ZXy = st.Z2B[:, q3:]
            f = cmv(H2, np.tensordot(ZXy, ge, axes=([1], [0])))  # H2 Z2'e (q2, J2)
            G2 = np.tensordot(H2, A, axes=([1, 2], [0, 2]))
            if q3:
                T = cmm(H2, st.Z2B[:, :q3])  # Z2'R⁻¹Z3 (q2, q3, J2)
                K3e = self.K3[:, :, st.unit3]
                TK = cmm(T, K3e)
                G2 -= blocksum(TK, T)
                w = cmv(self.K3, We)[:, st.unit3]  # K3_k W_k[Z3, e] per level-2 unit
                v2 = f - cmv(T, w)
            else:
                v2 = f
            G2 -= (v2 @ v2.T) / s2
            if reml:
                Q2 = cmm(H2, ZXy[:, :p])
                if q3:
                    Q2 -= cmm(TK, WB[:, :p][:, :, st.unit3])
                G2 -= blocksum(np.tensordot(Q2, Pinv, axes=([1], [0])).transpose(0, 2, 1), Q2)
            G2 = 0.5 * (G2 + G2.T)
        return G2, G3

    def posterior(self, sigma2: float):
        """EB: (E r_j (J2,q2), Var r_j (J2,q2,q2), E u_k (J3,q3), Var u_k (J3,q3,q3)), given γ̂."""
        st = self.stats
        res = []
        for level, q, G in ((2, st.q2, self.G2), (3, st.q3, self.G3)):
            J = st.J2 if level == 2 else st.J3
            if q == 0:
                res += [np.zeros((J, 0)), np.zeros((J, 0, 0))]
                continue
            ZVZ, ZVB = self.level2_pieces() if level == 2 else self.level3_pieces()
            v = ZVB[:, st.p] - np.einsum("qpj,p->qj", ZVB[:, : st.p], self.gamma)
            mean = (G @ v).T
            if level == 3:
                var = sigma2 * self.K3.transpose(2, 0, 1)
            else:
                var = sigma2 * (G[None] - np.einsum("ab,bcj,cd->jad", G, ZVZ, G))
            res += [mean, 0.5 * (var + var.transpose(0, 2, 1))]
        return tuple(res)

    def scores3(self) -> np.ndarray:
        """σ²X_k'V_k⁻¹e_k per level-3 unit (J3, p): the scores of γ for the sandwich."""
        st = self.stats
        q3, p = st.q3, st.p
        Wx = self.W[q3:, q3:]  # (p+1, p+1, J3)
        s = Wx[:p, p].T - np.einsum("abj,b->ja", Wx[:p, :p], self.gamma)
        if q3:
            WB = self.W[:q3, q3:]
            e3 = WB[:, p] - np.einsum("qpj,p->qj", WB[:, :p], self.gamma)
            s -= np.einsum("qpj,qj->jp", WB[:, :p], cmv(self.K3, e3))
        return s


def nested_solve(stats: NestedStats, lam2: np.ndarray, lam3: np.ndarray) -> NestedSolve:
    """Solve every unit at G2 = Λ2Λ2', G3 = Λ3Λ3'. Raises FloatingPointError when P is not positive
    definite or rss is not positive (the model is degenerate there)."""
    q2, q3, p = stats.q2, stats.q3, stats.p
    lam2 = np.asarray(lam2, dtype=float).reshape(q2, q2)
    lam3 = np.asarray(lam3, dtype=float).reshape(q3, q3)
    if q2:
        K2, logdet2 = _absorb(lam2, stats.ZZ2)
        W = stats.BB - _quad_sum(stats.Z2B, K2, stats.starts3)
    else:
        K2, logdet2 = np.zeros((0, 0, stats.J2)), np.zeros(stats.J2)
        W = stats.BB
    if q3:
        K3, logdet3 = _absorb(lam3, W[:q3, :q3])
        tot = W[q3:, q3:].sum(axis=2) - _quad(W[:q3, q3:], K3).sum(axis=2)
    else:
        K3, logdet3 = np.zeros((0, 0, stats.J3)), np.zeros(stats.J3)
        tot = W.sum(axis=2)
    tot = 0.5 * (tot + tot.T)
    P, c, s = tot[:p, :p], tot[:p, p], float(tot[p, p])
    try:
        cholP = np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        raise FloatingPointError("X'V⁻¹X is not positive definite") from None
    gamma = np.linalg.solve(cholP.T, np.linalg.solve(cholP, c))
    rss = s - float(c @ gamma)
    if not rss > 0:
        raise FloatingPointError("the residual sum of squares is not positive")
    return NestedSolve(stats, lam2, lam3, K2, K3, logdet2, logdet3, W, P, cholP, c, s, gamma, rss)


def _factor(G: np.ndarray) -> np.ndarray:
    """A square factor Λ with ΛΛ' = G for PSD G (singular allowed)."""
    G = np.asarray(G, dtype=float)
    if G.size == 0:
        return G.reshape(0, 0)
    w, V = np.linalg.eigh(0.5 * (G + G.T))
    return V * np.sqrt(np.clip(w, 0.0, None))


def deviance_nested(data: NestedData, sigma2: float, tau_pi: np.ndarray, tau_beta: np.ndarray,
                    reml: bool = False) -> float:
    """The ML or REML deviance (lme4's conventions, γ at its GLS value) at given σ², τπ, τβ (PSD,
    singular allowed), e.g. to judge another program's estimates."""
    stats = data if isinstance(data, NestedStats) else reduce_nested(data)
    try:
        us = nested_solve(stats, _factor(np.asarray(tau_pi, float) / sigma2),
                          _factor(np.asarray(tau_beta, float) / sigma2))
    except (FloatingPointError, np.linalg.LinAlgError):
        return float("inf")
    return us.deviance(sigma2, reml)


def fit_nested(data: NestedData, reml: bool = False, max_iterations: int = 1000) -> NestedFit:
    """The certified (RE)ML fit over PSD τπ × PSD τβ; see nested_fit.py."""
    from .nested_fit import fit_nested as _fit
    return _fit(data, reml=reml, max_iterations=max_iterations)
