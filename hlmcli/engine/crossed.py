"""Cross-classified (and any multi-factor) linear mixed models: the profiled deviance as lme4 computes
it, by a blocked Cholesky factor, searched and certified over one PSD block per grouping factor.

The model. y = Xγ + Σ_b Z_b u_b + r, with u_bj ~ N(0, τ_b) for group j of factor b (HLM 7's HCM2:
rows and columns), r ~ N(0, σ²I). With G_b = τ_b/σ² = Λ_bΛ_b' and Λ = blockdiag_b(I_{J_b} ⊗ Λ_b):

    M = Λ'Z'ZΛ + I,   K = [[M, Λ'Z'X], [X'ZΛ, X'X]],   pwrss = y'Py (penalised residual sum of squares)
    ML:   d = log|M| + n(1 + log 2π + log(pwrss/n))
    REML: d = log|M| + log|X'V⁻¹X| + (n−p)(1 + log 2π + log(pwrss/(n−p)))

(|V| = |I + ZΛΛ'Z'| = |M|; X'V⁻¹X is K's Schur complement of M; lme4's "Computational methods", eq. 34
and 42.) The factor of K is blocked as MixedModels.jl does: the factor with the most random effects
first, whose block of M is block-diagonal (J₁ blocks of q₁ × q₁), so its Cholesky is J₁ small ones;
the other factors together form one dense block, reached through the Schur complement
S = M_RR − A'A with A = L₁₁⁻¹M_1R, which keeps Z₁'Z_R's sparsity; then [X y] as a last dense block.
This is exact (no fill-reducing approximation is involved) and the sparsity pattern is fixed once per
fit: only the numbers in A change with Λ. Nested factors are a special case (A has one entry per row).

The gradient, in G_b with the symmetric convention (d(G + E) ≈ d + tr(Γ_b E)):

    Γ_b = Σ_j [Z'PZ]_{bj,bj} − ν/pwrss · Σ_j u_bj u_bj',   u = Z'Py,  Py = y − Xγ̂ − ZΛû (the residual)

with P = V⁻¹ − V⁻¹X(X'V⁻¹X)⁻¹X'V⁻¹, ν = n − p (REML); for ML, P is V⁻¹ and ν = n. It stays valid
on the boundary (Λ_b singular), which the certificate needs. Z'PZ comes from K itself:
P = I − W̃K⁻¹W̃' with W̃ = [ZΛ, X] (the mixed-model equations with a flat prior on γ), so
Z'PZ = Z'Z − (W̃'Z)'K⁻¹(W̃'Z), and only the sums over j of its diagonal blocks are formed, each as
a block-trace through the same blocked factor (for ML only M's part of it: V⁻¹ = I − ZΛM⁻¹Λ'Z').

The search and the certificate are the nested ones (search.search, certify_nested): one PSD
block per factor, a diagonal τ_b where asked, started from the one-factor models' estimates
(one_factor_starts) and, where the dense block is large, Newton steps from there (newton_start).
With every block 1 × 1 (random intercepts) the products over C_1R's pattern are reweighted per Λ
rather than formed by sparse products (CrossedStats.scalar_pairs). Coordinates are standardised
first as for nested models: each factor's random columns centred (when it has an intercept) and
scaled to unit spread, X orthonormalised, y residualised on X and scaled; every map back to the
user's scale is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..lazy import lazy

sparse = lazy("scipy.sparse")
linalg = lazy("scipy.linalg")

from ..errors import ModelError
from .objective import BlockDeviance
from .unitsolve import EXACT_WITHIN_ULPS

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class CrossedTerm:
    """One grouping factor: its name, each record's group (codes 0..J−1), the random columns Z
    (n, q) and their names, and the group labels."""
    factor: str
    codes: np.ndarray
    Z: np.ndarray
    columns: tuple
    labels: tuple

    @property
    def J(self) -> int:
        return len(self.labels)

    @property
    def q(self) -> int:
        return self.Z.shape[1]


def _standardiser(Z: np.ndarray) -> np.ndarray:
    """T with Z·T centred (slopes, when column 0 is an intercept) and of unit RMS per column; u = T ũ."""
    q = Z.shape[1]
    T = np.eye(q)
    intercept = q > 0 and np.all(Z[:, 0] == 1.0)
    for k in range(q):
        col = Z[:, k]
        m = float(col.mean()) if (intercept and k > 0) else 0.0
        s = float(np.sqrt(np.mean((col - m) ** 2)))
        s = s if s > 0 else 1.0
        T[:, k] = 0.0
        T[k, k] = 1.0 / s
        if m:
            T[0, k] = -m / s
    return T


def _block_diag_sparse(blocks: np.ndarray):
    """A (J, a, b) stack as a sparse block-diagonal (J·a) × (J·b) matrix."""
    J, a, b = blocks.shape
    rows = (np.arange(J)[:, None, None] * a + np.arange(a)[None, :, None]) + np.zeros((1, 1, b), int)
    cols = (np.arange(J)[:, None, None] * b + np.arange(b)[None, None, :]) + np.zeros((1, a, 1), int)
    return sparse.csr_matrix((blocks.ravel(), (rows.ravel(), cols.ravel())), shape=(J * a, J * b))


def _z_sparse(codes: np.ndarray, Z: np.ndarray, J: int):
    """The n × (J·q) random-effects design of one factor, columns group-major (j·q + k)."""
    n, q = Z.shape
    rows = np.repeat(np.arange(n), q)
    cols = (codes[:, None] * q + np.arange(q)[None, :]).ravel()
    return sparse.csr_matrix((Z.ravel(), (rows, cols)), shape=(n, J * q))


def _tri(L, B, lower: bool = True, trans: str = "N"):
    """L⁻¹B (Lᵀ⁻¹B with trans="T") for a triangular L. Small systems go through numpy's solve: scipy's
    triangular solve costs milliseconds a call when OpenBLAS threads wait on a busy machine."""
    if trans == "T":
        L, lower = L.T, not lower
    if L.shape[0] <= 256:
        return np.linalg.solve(L, B)
    return linalg.solve_triangular(L, B, lower=lower, check_finite=False)


def _tri_inverse(L) -> np.ndarray:
    """L⁻¹ of a lower-triangular L (LAPACK's trtri, n³/3 flops; small ones through numpy, as in _tri)."""
    n = L.shape[0]
    if n <= 256:
        return np.linalg.solve(L, np.eye(n))
    inv, info = linalg.lapack.dtrtri(L, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError("singular triangular factor")
    return np.tril(inv)


def _block_gram_sum(Y, Y2, q: int) -> np.ndarray:
    """Σ_j Y_j'Y2_j over the column groups j (q columns each) of two conformable matrices (dense or
    sparse): the sum of the diagonal blocks of Y'Y2."""
    out = np.empty((q, q))
    for k in range(q):
        a = Y[:, k::q]
        for m in range(q):
            b = Y2[:, m::q]
            out[k, m] = float(a.multiply(b).sum()) if sparse.issparse(a) else float(np.einsum("ij,ij->", a, b))
    return out


def _rmul(M: np.ndarray, lams, Js) -> np.ndarray:
    """M · blockdiag_b(I_{J_b} ⊗ Λ_b) for a dense M whose columns are the dense factors' (group-major)."""
    out = np.empty_like(M)
    lo = 0
    for lam, J in zip(lams, Js):
        q = lam.shape[0]
        hi = lo + J * q
        if q == 1:  # a scalar block: a scaling, not a batch of 1 × 1 products
            np.multiply(M[:, lo:hi], lam[0, 0], out=out[:, lo:hi])
        else:
            out[:, lo:hi] = (M[:, lo:hi].reshape(M.shape[0], J, q) @ lam).reshape(M.shape[0], J * q)
        lo = hi
    return out


def _spd_inverse_lower(L) -> np.ndarray:
    """S⁻¹ for S = LL' from its Cholesky factor L (LAPACK's potri, 2n³/3 flops): its lower triangle and
    diagonal only (potri leaves the strict upper triangle as L's, i.e. 0); read through _symmetric_at."""
    inv, info = linalg.lapack.dpotri(L, lower=1, overwrite_c=0)
    if info != 0:
        raise np.linalg.LinAlgError("singular Cholesky factor")
    return inv


def _symmetric(low: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose lower triangle and diagonal are low's (strict upper triangle 0)."""
    out = np.tril(low)
    out += out.T
    out[np.diag_indices_from(out)] *= 0.5
    return out


def _symmetric_at(low: np.ndarray, rows, cols) -> np.ndarray:
    """Entries (rows, cols) of the symmetric matrix stored in low's lower triangle and diagonal."""
    return low[np.maximum(rows, cols), np.minimum(rows, cols)]


def _inner_sparse_gram(Sinv: np.ndarray, T, q: int) -> np.ndarray:
    """Σ_j T_j'S⁻¹T_j over the column groups j (q columns each) of a sparse T: the sum of the diagonal
    blocks of T'S⁻¹T, as ⟨S⁻¹, T_k T_m'⟩ with T_k = T[:, k::q]. Only S⁻¹'s entries on the pattern of
    T_k T_m' are read (Sinv: S⁻¹'s lower triangle, _spd_inverse_lower), so no dense product with S⁻¹
    is formed."""
    T = T.tocsc()
    out = np.empty((q, q))
    for k in range(q):
        for m in range(k, q):
            N = (T[:, k::q] @ T[:, m::q].T).tocoo()
            out[k, m] = out[m, k] = float(_symmetric_at(Sinv, N.row, N.col) @ N.data)
    return out


class CrossedStats:
    """Everything a solve needs that does not depend on Λ: the cross-products of the standardised
    columns, formed once per fit (the blocked pattern included)."""

    def __init__(self, y: np.ndarray, X: np.ndarray, terms: list[CrossedTerm]):
        n, p = X.shape
        self.n, self.p = n, p
        # X = QR; y residualised on X and scaled by c
        Q, R = np.linalg.qr(X)
        if p and np.min(np.abs(np.diag(R))) <= 1e-10 * max(1.0, float(np.max(np.abs(np.diag(R))))):
            raise ModelError("the fixed-effect predictors are collinear (one is a combination of the others); "
                             "drop one of them")
        self.R, self.Qty = R, Q.T @ y
        e = y - Q @ self.Qty
        self.c = float(np.sqrt(np.mean(e ** 2))) or 1.0
        self.Qx, self.y = Q, e / self.c
        self.T = [_standardiser(t.Z) for t in terms]
        self._pattern(terms, [_z_sparse(t.codes, t.Z @ T, t.J) for t, T in zip(terms, self.T)])

    def subset(self, keep) -> "CrossedStats":
        """The same standardised data with only the factors `keep` (indices into terms): the model on
        the face where every other factor's τ is 0 (V = I + Σ_keep Z_bG_bZ_b', the other blocks of M
        are I and add nothing to log|M|), so its profiled deviance is the full one's there, computed
        with the smaller pattern (one factor left: M block-diagonal, no dense Schur complement)."""
        out = object.__new__(CrossedStats)
        for name in ("n", "p", "R", "Qty", "c", "Qx", "y"):
            setattr(out, name, getattr(self, name))
        out.T = [self.T[b] for b in keep]
        out._pattern([self.terms[b] for b in keep], [self.Zs[b] for b in keep])
        return out

    def _pattern(self, terms: list, Zs: list) -> None:
        """The cross-products of the standardised columns and the blocked pattern (Zs: each factor's
        standardised design, from _z_sparse)."""
        n, p, Q = self.n, self.p, self.Qx
        self.terms = terms
        # the factor with the most random effects is the block-diagonal one
        self.order = sorted(range(len(terms)), key=lambda b: -terms[b].J * terms[b].q)
        self.Zs = Zs
        first, rest = self.order[0], self.order[1:]
        t1 = terms[first]
        self.q1, self.J1 = t1.q, t1.J
        self.qR = [terms[b].q for b in rest]
        self.JR = [terms[b].J for b in rest]
        self.cuts = np.cumsum([0] + [terms[b].J * terms[b].q for b in rest])
        self.Q2 = int(self.cuts[-1])
        W = np.column_stack([Q, self.y])
        Z1 = Zs[first]
        ZR = sparse.hstack([Zs[b] for b in rest], format="csr") if rest else sparse.csr_matrix((n, 0))
        C11 = (Z1.T @ Z1).tocsr()
        # C11 is block diagonal: its J₁ blocks, (J₁, q₁, q₁)
        q1 = self.q1
        dense_blocks = np.zeros((self.J1, q1, q1))
        C11c = C11.tocoo()
        dense_blocks[C11c.row // q1, C11c.row % q1, C11c.col % q1] = C11c.data
        self.C11 = dense_blocks
        self.C1R = (Z1.T @ ZR).tocsr()
        self.CRR = (ZR.T @ ZR).toarray()
        self.Z1W = np.asarray(Z1.T @ W).reshape(self.J1, q1, p + 1)
        self.ZRW = np.asarray(ZR.T @ W)
        self.WW = W.T @ W
        self.yy = float(self.y @ self.y)
        # constant pieces of the gradient: X'Z_b (p, J_b q_b), and Σ_j of Z_b'Z_b's diagonal blocks
        self.XZ = [np.asarray(Z.T @ Q).T for Z in Zs]
        self.C_own = {}
        for i, b in enumerate(rest):
            lo, hi, qb = self.cuts[i], self.cuts[i + 1], terms[b].q
            Cbb = self.CRR[lo:hi, lo:hi]
            self.C_own[b] = np.array([[np.trace(Cbb[k::qb, m::qb]) for m in range(qb)] for k in range(qb)])

    @property
    def qs(self) -> tuple:
        return tuple(t.q for t in self.terms)

    def scalar_pairs(self):
        """When every block is 1 × 1 (random intercepts): the pattern of C_R1C_1R's lower triangle, as
        (flat, val, group) over the triples (j, k ≥ l) with C_1R[j, k]·C_1R[j, l] ≠ 0: flat = l·Q2 + k
        (entry (k, l) of a column-major Q2 × Q2 array),
        val = C_1R[j, k]·C_1R[j, l] (twice off the diagonal, for the upper triangle), group = j. Then for
        any weights w and a symmetric Σ stored in its lower triangle,
        ⟨Σ, C_R1 diag(w) C_1R⟩ = Σ_j w_j · bincount(group, Σ_F[flat]·val)_j (Σ_F: Σ raveled column-major),
        so the sparse product's pattern is found once per fit and each Λ only reweights it. None
        otherwise."""
        if not hasattr(self, "_scalar_pairs"):
            self._scalar_pairs = None
            if self.q1 == 1 and all(q == 1 for q in self.qR) and self.Q2:
                C = self.C1R.copy()  # a copy: sorting C1R in place would reorder its products' sums
                C.sum_duplicates()
                C.sort_indices()
                counts = np.diff(C.indptr)
                ends = np.repeat(C.indptr[1:], counts)  # per stored entry, the end of its row
                pos = np.arange(C.nnz)
                run = ends - pos  # entry p pairs with itself and every later entry of its row
                first = np.repeat(pos, run)
                starts = np.cumsum(run) - run
                second = first + (np.arange(first.size) - np.repeat(starts, run))
                k_lo, k_hi = C.indices[first], C.indices[second]  # sorted rows: k_hi ≥ k_lo
                val = C.data[first] * C.data[second]
                val[first != second] *= 2.0
                group = np.repeat(np.arange(self.J1), counts)[first]
                self._scalar_pairs = (k_lo.astype(np.int64) * self.Q2 + k_hi, val, group)
                self.C1R_sorted = C  # C_1R in canonical form (the scalar paths read its entries)
                self.c1r_rows = np.repeat(np.arange(self.J1), counts)  # each entry's row
        return self._scalar_pairs

    def lam_columns(self, lams_R) -> np.ndarray:
        """For 1 × 1 dense blocks, blockdiag_b(λ_b I_{J_b}) as its diagonal (Q2,)."""
        return np.concatenate([np.full(J, float(lam[0, 0])) for J, lam in zip(self.JR, lams_R)])

    def lam_R(self, lams_R):
        """blockdiag over the dense factors of I_J ⊗ Λ_b, sparse (Q2 × Q2)."""
        if not lams_R:
            return sparse.csr_matrix((0, 0))
        return sparse.block_diag([sparse.kron(sparse.identity(J, format="csr"), sparse.csr_matrix(lam))
                                  for J, lam in zip(self.JR, lams_R)], format="csr")


class CrossedSolve:
    """The blocked Cholesky factor of K (and of [X y]'s part) at one Λ, and what follows from it."""

    def __init__(self, st: CrossedStats, lams):
        self.st = st
        self._gradient_cache: dict = {}
        lams = [np.asarray(lam, float) for lam in lams]
        self.lams = lams
        p, q1 = st.p, st.q1
        lam1 = lams[st.order[0]]
        lamsR = [lams[b] for b in st.order[1:]]
        M11 = lam1.T[None] @ st.C11 @ lam1[None] + np.eye(q1)[None]
        L11 = np.linalg.cholesky(M11)
        self.L11 = L11
        D1blocks = np.linalg.solve(L11, np.broadcast_to(lam1.T, L11.shape))  # L11⁻¹Λ₁'
        self.D1 = _block_diag_sparse(D1blocks)
        self.DR = st.lam_R(lamsR)
        Q2 = st.Q2
        self.lamsR = lamsR
        pairs = st.scalar_pairs() if Q2 else None
        self.d1 = D1blocks[:, 0, 0] if pairs is not None else None  # L11⁻¹Λ₁' = diag(d1)
        if Q2 and not any(np.any(lam) for lam in lamsR):
            # every dense factor's τ 0 (the lower faces' τ = 0): A = 0 and S = I exactly, as is its factor
            self.A = sparse.csr_matrix(st.C1R.shape)
            self.LR = np.eye(Q2)
        elif pairs is not None:
            # every block 1 × 1: A = diag(d1)·C_1R·diag(λ_col), and A'A = Λ_R C_R1 diag(d1²) C_1R Λ_R is the
            # fixed pattern of C_R1C_1R reweighted (CrossedStats.scalar_pairs), formed without a sparse product
            d1, lam_col = self.d1, st.lam_columns(lamsR)
            C = st.C1R_sorted
            self.A = sparse.csr_matrix((C.data * d1[st.c1r_rows] * lam_col[C.indices], C.indices, C.indptr),
                                       shape=C.shape)
            flat, val, group = pairs
            S = np.bincount(flat, weights=val * (d1 * d1)[group], minlength=Q2 * Q2).reshape(Q2, Q2)
            S = S + S.T  # the upper triangle, off-diagonal entries doubled: 2·C_R1 diag(d1²) C_1R
            S *= -0.5
            S += st.CRR
            S *= lamsR[0][0, 0] ** 2 if len(lamsR) == 1 else np.outer(lam_col, lam_col)
            S[np.diag_indices(Q2)] += 1.0
            self.LR = np.linalg.cholesky(S)
        elif Q2:
            self.A = (self.D1 @ st.C1R @ self.DR).tocsr()  # L11⁻¹ M_1R
            S = _rmul(_rmul(st.CRR, lamsR, st.JR).T, lamsR, st.JR)  # Λ_R'C_RRΛ_R (C_RR symmetric)
            S += np.eye(Q2)
            S -= (self.A.T @ self.A).toarray()
            self.LR = np.linalg.cholesky(0.5 * (S + S.T))
        else:
            self.A = (self.D1 @ st.C1R @ self.DR).tocsr()  # L11⁻¹ M_1R
            self.LR = np.zeros((0, 0))
        # [X y]: B1 = L11⁻¹Λ₁'Z₁'W, BR = LR⁻¹(Λ_R'Z_R'W − A'B1)
        self.B1 = np.asarray(self.D1 @ st.Z1W.reshape(-1, p + 1))
        if Q2:
            self.BR = _tri(self.LR, _rmul(st.ZRW.T, lamsR, st.JR).T - self.A.T @ self.B1, lower=True)
        else:
            self.BR = np.zeros((0, p + 1))
        SW = st.WW - self.B1.T @ self.B1 - self.BR.T @ self.BR
        self.LW = np.linalg.cholesky(0.5 * (SW + SW.T))
        self.pwrss = float(self.LW[p, p] ** 2)
        self.logdet_M = 2.0 * float(np.log(np.diagonal(L11, axis1=1, axis2=2)).sum()) + \
            2.0 * float(np.log(np.diag(self.LR)).sum())
        self.logdet_X = 2.0 * float(np.log(np.diag(self.LW)[:p]).sum())
        # γ̃ and û by back-substitution, then the residual Py = y − Xγ̃ − ZΛû
        RX = self.LW[:p, :p]
        self.gamma = _tri(RX.T, self.LW[p, :p], lower=False) if p else np.zeros(0)
        uR = _tri(self.LR.T, self.BR[:, p] - self.BR[:, :p] @ self.gamma, lower=False) if Q2 \
            else np.zeros(0)
        rhs1 = (self.B1[:, p] - self.B1[:, :p] @ self.gamma - self.A @ uR).reshape(st.J1, q1)
        u1 = np.linalg.solve(np.transpose(L11, (0, 2, 1)), rhs1[..., None])[..., 0]
        self.u1, self.uR = u1.ravel(), uR
        b1 = (u1 @ lam1.T).ravel()
        bR = _rmul(uR[None, :], [lam.T for lam in lamsR], st.JR)[0] if Q2 else np.zeros(0)  # Λ_R û_R
        first = st.order[0]
        fit = st.Qx @ self.gamma + st.Zs[first] @ b1
        self.b = {first: b1}
        for i, b in enumerate(st.order[1:]):
            piece = bR[st.cuts[i]:st.cuts[i + 1]]
            self.b[b] = piece
            fit = fit + st.Zs[b] @ piece
        self.resid = st.y - fit

    def dof(self, reml: bool) -> int:
        return self.st.n - self.st.p if reml else self.st.n

    def profiled_deviance(self, reml: bool) -> float:
        nu = self.dof(reml)
        d = self.logdet_M + nu * (1.0 + LOG_2PI + np.log(self.pwrss / nu))
        return d + self.logdet_X if reml else d

    def sigma2_hat(self, reml: bool) -> float:
        return self.pwrss / self.dof(reml)

    def rounding_noise(self, reml: bool) -> float:
        """How far rounding can move the profiled deviance: the cancellation in pwrss (y'y against
        what the fit removes) and the log-determinants' sums, at machine precision."""
        eps = np.finfo(float).eps
        nu = self.dof(reml)
        logdets = 2.0 * float(np.abs(np.log(np.diagonal(self.L11, axis1=1, axis2=2))).sum()) + \
            2.0 * float(np.abs(np.log(np.diag(self.LR))).sum())
        logdets += abs(self.logdet_X) if reml else 0.0
        return 8.0 * eps * (nu * self.st.yy / self.pwrss + logdets + nu * abs(np.log(self.pwrss / nu)))

    # ------------------------------------------------------------ the gradient (module docstring)
    def gradients(self, reml: bool) -> tuple:
        if reml not in self._gradient_cache:  # the search asks again at the same point (Newton, the certificate)
            self._gradient_cache[reml] = self._gradients(reml)
        return self._gradient_cache[reml]

    def _gradients(self, reml: bool) -> tuple:
        st = self.st
        p, Q2, q1 = st.p, st.Q2, st.q1
        nu = self.dof(reml)
        # S⁻¹ once (potri, 2n³/3): with Y = LR⁻¹T every block-trace below is Σ_j Y_j'Y_j = Σ_j (T'S⁻¹T)_jj,
        # read from S⁻¹ on T's pattern (no product of a dense inverse by a sparse matrix), and the REML
        # terms BRX'Y = (LR⁻ᵀBRX)'T need only p triangular solves
        Sinv = _spd_inverse_lower(self.LR) if Q2 else np.zeros((0, 0))  # lower triangle only
        RX = self.LW[:p, :p]
        BRX = self.BR[:, :p]
        V = _tri(self.LR, BRX, lower=True, trans="T") if (Q2 and reml and p) else None  # LR⁻ᵀBRX
        # The dense factors' T = Λ_R'C_RR − A'L11⁻¹Λ₁'C_1R satisfies TΛ_R = S − I (A = L11⁻¹Λ₁'C_1RΛ_R), so
        # T'S⁻¹T = Λ_R⁻ᵀ(S − 2I + S⁻¹)Λ_R⁻¹ and V'T = (LR·BRX − V)'Λ_R⁻¹ (S·V = LR·BRX): no product with T;
        # used when every Λ_b there is well away from singular (the difference loses about eps/λ²
        # relative), else T is formed.
        lamsR = [self.lams[b] for b in st.order[1:]]
        invs = None
        if Q2 and all(np.linalg.svd(lam, compute_uv=False).min() > 1e-3 for lam in lamsR):
            invs = [np.linalg.inv(lam) for lam in lamsR]
        B1X = self.B1[:, :p]  # (J1q1, p): L_W1' rows for X
        out: dict[int, np.ndarray] = {}
        # the block-diagonal factor: R = [Λ₁'C₁₁; Λ_R'C_R1; X'Z₁]
        first = st.order[0]
        Y1 = np.linalg.solve(self.L11, self.lams[first].T[None] @ st.C11)  # L11⁻¹Λ₁'C₁₁ blocks, (J1, q1, q1)
        Y1s = _block_diag_sparse(Y1)
        own = st.C11.sum(axis=0) - np.einsum("jak,jal->kl", Y1, Y1)
        scalar = Q2 and st.scalar_pairs() is not None
        if scalar:
            # every block 1 × 1: with c_j = C11_j and M11_j = 1 + λ₁²c_j = L11_j², L11⁻¹Λ₁' = diag(λ₁/L11_j)
            # and Y1 = diag(λ₁c_j/L11_j), so A'Y1 = Λ_R'C_R1·diag(λ₁²c_j/M11_j) and
            # T = Λ_R'C_R1·diag(1 − λ₁²c_j/M11_j) = Λ_R'C_R1·diag(1/M11_j): Σ_j T_j'S⁻¹T_j = ⟨Λ_RS⁻¹Λ_R,
            # C_R1 diag(1/M11_j²) C_1R⟩, read from S⁻¹'s lower triangle on the fixed pattern of C_R1C_1R
            # (CrossedStats.scalar_pairs), reweighted at each Λ; likewise T'V = diag(1/M11_j)C_1RΛ_R V
            lam_col = st.lam_columns(lamsR)
            m11 = 1.0 + self.lams[first][0, 0] ** 2 * st.C11[:, 0, 0]  # M11_j = L11_j²
            flat, val, group = st.scalar_pairs()
            scaled = Sinv if len(lamsR) == 1 else Sinv * np.outer(lam_col, lam_col)  # Λ_R S⁻¹ Λ_R
            entries = np.asfortranarray(scaled).ravel(order="F")[flat]  # potri's output is column-major
            per_group = np.bincount(group, weights=entries * val, minlength=st.J1)
            trace = float(per_group @ (1.0 / m11 ** 2))
            own -= trace * lamsR[0][0, 0] ** 2 if len(lamsR) == 1 else trace
            C, d1 = st.C1R_sorted, self.d1  # L11⁻¹Λ₁' = diag(d1)
            y1 = C.data * d1[st.c1r_rows]  # the entries of L11⁻¹Λ₁'C_1R
            y1_squares = np.bincount(C.indices, weights=y1 * y1, minlength=Q2)
            y1_X = np.asarray(C.T @ (d1[:, None] * B1X)) if (reml and p) else None
        elif Q2:
            T = (self.DR.T @ st.C1R.T - self.A.T @ Y1s).tocsr()  # (Q2, J1q1), sparse
            own -= _inner_sparse_gram(Sinv, T, q1)
        if reml and p:
            corr = st.XZ[first] - np.asarray((Y1s.T @ B1X)).T
            if scalar:
                corr -= (np.asarray(st.C1R_sorted @ (lam_col[:, None] * V)) / m11[:, None]).T  # (T'V)'
            elif Q2:
                corr -= np.asarray(T.T @ V).T
            YX = _tri(RX, corr, lower=True)
            own -= _block_gram_sum(YX, YX, q1)
        out[first] = own
        # the dense factors: R = [Λ₁'C_1b; Λ_R'C_Rb; X'Z_b]
        for i, b in enumerate(st.order[1:]):
            lo, hi = st.cuts[i], st.cuts[i + 1]
            qb, Jb = st.terms[b].q, st.terms[b].J
            Y1b = None if scalar and invs is not None else (self.D1 @ st.C1R[:, lo:hi]).tocsc()  # L11⁻¹Λ₁'C_1b
            if scalar:  # its columns' sums of squares, from C_1R's entries scaled by row
                own = st.C_own[b] - float(y1_squares[lo:hi].sum())
            else:
                own = st.C_own[b] - _block_gram_sum(Y1b, Y1b, qb)
            if invs is not None:
                # Σ_j of the diagonal blocks of S (rows of LR), of S⁻¹, and of −2I
                Lb = self.LR[lo:hi].reshape(Jb, qb, Q2)
                groups = np.arange(Jb)
                inv_blocks = Sinv[lo:hi, lo:hi].reshape(Jb, qb, Jb, qb)[groups, :, groups, :].sum(axis=0)
                Eb = np.einsum("jkc,jmc->km", Lb, Lb) - 2.0 * Jb * np.eye(qb) + _symmetric(inv_blocks)
                own -= invs[i].T @ Eb @ invs[i]
            else:
                T = np.asarray(self.DR.T @ st.CRR[:, lo:hi]) - np.asarray((self.A.T @ Y1b).todense())
                own -= _block_gram_sum(T, _symmetric(Sinv) @ T, qb)
            if reml and p:
                if invs is not None:
                    # V'T_b = ((S − I)V)_b' Λ_b⁻¹ per group, with S·V = LR·BRX
                    VT = _rmul(((self.LR[lo:hi] @ BRX) - V[lo:hi]).T, [invs[i]], [Jb])
                else:
                    VT = V.T @ T
                Y1bX = y1_X[lo:hi] if Y1b is None else np.asarray(Y1b.T @ B1X)
                corr = st.XZ[b] - Y1bX.T - VT
                YX = _tri(RX, corr, lower=True)
                own -= _block_gram_sum(YX, YX, qb)
            out[b] = own
        grads = []
        for b, t in enumerate(st.terms):
            U = np.asarray(st.Zs[b].T @ self.resid).reshape(t.J, t.q)
            G = out[b] - (nu / self.pwrss) * (U.T @ U)
            grads.append(0.5 * (G + G.T))
        return tuple(grads)


    def gradients_at(self, reml: bool, s2: float) -> tuple:
        """The gradient in each G_b of the deviance at a fixed σ² = s2 (standardised scale), not profiled:
        d = log|M| (+ log|X'V⁻¹X|) + ν log(2π s2) + pwrss/s2, whose pwrss term gives −(1/s2)Σ_j u_bj u_bj'
        where the profiled one has −(ν/pwrss)Σ_j u_bj u_bj' (the module docstring)."""
        nu = self.dof(reml)
        out = []
        for b, (G, t) in enumerate(zip(self.gradients(reml), self.st.terms)):
            U = np.asarray(self.st.Zs[b].T @ self.resid).reshape(t.J, t.q)
            UU = U.T @ U
            out.append(G + (nu / self.pwrss - 1.0 / s2) * UU)
        return tuple(out)

    def deviance_at(self, reml: bool, s2: float) -> float:
        """The deviance at a fixed σ² = s2 (standardised scale), γ profiled out as lme4's deviance function
        of (θ, σ) (lmerTest's devfun_vp)."""
        d = self.logdet_M + self.dof(reml) * (LOG_2PI + np.log(s2)) + self.pwrss / s2
        return d + self.logdet_X if reml else d

    def gamma_covariance_std(self, s2: float) -> np.ndarray:
        """Cov(γ̃) = s2 (RX'RX)⁻¹ on the standardised scale (γ̃ the coefficients of the orthonormal X)."""
        p = self.st.p
        Rinv = _tri_inverse(self.LW[:p, :p])  # RX lower: (RX RX')⁻¹ = RX⁻ᵀRX⁻¹
        return s2 * (Rinv.T @ Rinv)

    def posterior_blocks(self) -> dict:
        """Per factor b, the (J_b, q_b, q_b) diagonal blocks of Λ M⁻¹ Λ' (standardised scale): times σ²,
        the conditional variance of each group's random effects given the data, γ̂ and the variance
        parameters (lme4's condVar). With L = [[L11, 0], [A', LR]], M⁻¹ = L⁻ᵀL⁻¹ has the blocks
        (M⁻¹)_RR = LR⁻ᵀLR⁻¹ and (M⁻¹)_11 = L11⁻ᵀ(I + A LR⁻ᵀLR⁻¹ A')L11⁻¹."""
        st = self.st
        Q2, q1, J1 = st.Q2, st.q1, st.J1
        first = st.order[0]
        W = np.linalg.inv(self.L11)  # (J1, q1, q1), each L11_j⁻¹
        blk1 = np.einsum("jab,jac->jbc", W, W)
        out = {}
        if Q2:
            Linv = _tri_inverse(self.LR)
            B = np.asarray(self.A @ Linv.T).T.reshape(Q2, J1, q1)  # LR⁻¹A', columns by group of factor 1
            C = np.einsum("rja,jab->rjb", B, W)
            blk1 = blk1 + np.einsum("rja,rjb->jab", C, C)
            for i, b in enumerate(st.order[1:]):
                lo, hi, qb, Jb = st.cuts[i], st.cuts[i + 1], st.terms[b].q, st.terms[b].J
                Lb = Linv[:, lo:hi].reshape(Q2, Jb, qb)
                lam = self.lams[b]
                out[b] = lam[None] @ np.einsum("rja,rjb->jab", Lb, Lb) @ lam.T[None]
        lam1 = self.lams[first]
        out[first] = lam1[None] @ blk1 @ lam1.T[None]
        return out


# ---------------------------------------------------------------- the fit

class Objective(BlockDeviance):
    """The profiled deviance over (G_1, …, G_K), one block per factor: an objective.DevianceObjective
    (value, at, noise) for search.search and certificate.certify_blocks."""

    # the lower faces' Newton (search.best_lower_face) updates its difference Hessian by secants
    secant_faces = True

    def __init__(self, stats: CrossedStats, reml: bool):
        super().__init__(reml)
        self.stats = stats

    def _solve(self, lams) -> CrossedSolve:
        return CrossedSolve(self.stats, lams)

    def lower_face_objective(self, Gs):
        """The objective search.best_lower_face searches the face through Gs with: where some factors'
        τ is 0 there (and some not), the deviance of the model without them (FaceObjective), the same
        function on that face at a fraction of the cost; otherwise this one."""
        zero = tuple(not np.any(G) for G in Gs)
        if not any(zero) or all(zero):
            return self
        return FaceObjective(self, tuple(b for b, z in enumerate(zero) if not z))


class FaceObjective(Objective):
    """The profiled deviance on a face where the factors outside `keep` have τ = 0, over the full tuple
    of blocks: solved by the model of the factors in `keep` alone (CrossedStats.subset), which is exact
    there. Its solves are counted in the full objective's evaluations too. The gradient in a dropped
    block is not formed (NaN): the face has no coordinates in it (certificate.Face of a zero block),
    and the certificate at any point the search continues from uses the full objective. A point whose
    dropped blocks are not exactly 0 is solved by the full model."""

    def __init__(self, full: Objective, keep: tuple):
        super().__init__(full.stats.subset(keep), full.reml)
        self.full, self.keep = full, keep
        self.secant_faces = full.secant_faces

    def _counted(self, lams):
        self.full.count += 1
        return super()._counted(lams)

    def _solve(self, lams):
        if any(np.any(lam) for b, lam in enumerate(lams) if b not in self.keep):
            return CrossedSolve(self.full.stats, lams)
        return _FaceSolve(CrossedSolve(self.stats, [lams[b] for b in self.keep]), self.keep, lams)


class _FaceSolve:
    """A solve of the kept factors' model, read as the full model's on the face (FaceObjective)."""

    def __init__(self, solve: CrossedSolve, keep: tuple, lams):
        self.solve, self.keep, self.shapes = solve, keep, [np.shape(lam) for lam in lams]

    def profiled_deviance(self, reml: bool) -> float:
        return self.solve.profiled_deviance(reml)

    def rounding_noise(self, reml: bool) -> float:
        return self.solve.rounding_noise(reml)

    def gradients(self, reml: bool) -> tuple:
        kept = dict(zip(self.keep, self.solve.gradients(reml)))
        return tuple(kept[b] if b in kept else np.full(shape, np.nan) for b, shape in enumerate(self.shapes))


def _factor(G):
    from .unitsolve import factor
    return factor(G)


@dataclass
class CrossedFit:
    """A certified (or not) cross-classified fit on the user's scale."""
    method: str
    factors: tuple            # grouping factor names, in the order given
    columns: tuple            # per factor, the names of its random columns
    n_groups: tuple           # J per factor
    fixed_names: tuple
    gamma: np.ndarray
    gamma_cov: np.ndarray     # model-based covariance of γ̂: σ²(X'V⁻¹X)⁻¹
    sigma2: float
    taus: tuple               # τ_b per factor
    deviance: float
    n: int
    certificate: object
    iterations: int
    evaluations: int
    start: str
    message: str
    G: tuple = field(repr=False, default=())          # standardised G at the answer
    ranef: tuple = field(repr=False, default=())      # per factor (J, q) conditional modes (EB), user's scale
    labels: tuple = field(repr=False, default=())

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(np.diag(self.gamma_cov))

    @property
    def n_parameters(self) -> int:
        """Covariance parameters (τ's free entries and σ²) plus fixed effects, as deviance tables count."""
        p = len(self.gamma) if self.n_free is None else self.n_free
        return p + 1 + sum(_n_free(t, d) for t, d in zip(self.taus, self.diagonal))

    diagonal: tuple = ()
    n_free: int | None = None  # --constrain: the free fixed effects δ (γ = Hδ); None: every γ is free
    stats: object = field(repr=False, default=None)    # CrossedStats: the standardised data (inference reads it)
    solve: object = field(repr=False, default=None)    # CrossedSolve at the answer

    def posterior_variances(self) -> tuple:
        """Per factor, (J, q, q): the conditional variance of each group's random effects given the data,
        γ̂, τ and σ² (lme4's condVar), on the user's scale: σ² T Λ(M⁻¹)_jjΛ' T'."""
        blocks = self.solve.posterior_blocks()
        return tuple(self.sigma2 * (T[None] @ blocks[b] @ T.T[None]) for b, T in enumerate(self.stats.T))


def one_factor_starts(obj: Objective, qs, diagonal, max_iterations: int) -> tuple:
    """A start per factor from the model with that factor alone (its τ where every other τ is 0, by the
    whole search on the one-factor solve, which is block-diagonal: milliseconds against a crossed
    solve's tenth of a second at InstEval's size; L-BFGS-B alone can stop at a false τ = 0 there).
    Each factor's variance is near what it is in the crossed model when the factors are not confounded,
    so the crossed L-BFGS-B starts near the optimum. A factor whose one-factor τ is singular starts from
    it plus identity/400 (L-BFGS-B over Λ cannot leave a zero column of Λ)."""
    from .nested_fit import search
    out = []
    for b, (q, d) in enumerate(zip(qs, diagonal)):
        single = Objective(obj.stats.subset((b,)), obj.reml)
        G = search(single, (q,), max_iterations, (d,))[0]
        obj.count += single.count  # every solve is counted
        G = G[0]
        if not np.all(np.isfinite(G)):
            G = 0.25 * np.eye(q)
        elif np.linalg.eigvalsh(G)[0] <= 1e-4 * max(1.0, float(np.trace(G))):
            G = G + 0.0025 * np.eye(q)
        out.append(G)
    return tuple(out)


# the one-factor starts pay only where a crossed solve costs far more than the one-factor solves (about
# 40 of them): its dense Schur complement (Q2 × Q2, Q2³/3 flops a factorisation) is large
ONE_FACTOR_STARTS_MIN_DENSE = 256

NEWTON_START_STEPS = 8
# newton_start's one crossed difference Hessian, after this many steps: the first step (one-factor
# Hessian) and one BFGS update bring InstEval to about 1e-4 of the optimum, where one Hessian then
# converges quadratically (8 crossed solves; 9 with it after the first step, 9 with none)
NEWTON_START_REFRESH = 2


def newton_start(obj: Objective, Gs, diagonal, gtol: float, max_steps: int = NEWTON_START_STEPS):
    """From the one-factor starts to the crossed optimum by Newton steps in L-BFGS-B's own coordinates
    θ (the blocks' lower-triangular factors, or the square roots of a diagonal block's variances),
    until the largest gradient entry is at most gtol: L-BFGS-B's own test of the projected gradient,
    made at the same point (same bits, so the same cached solve) and the same formula, so that it
    stops at once from here.

    The Hessian: the one-factor models' to start with (one_factor_hessian: no crossed solve), updated
    by BFGS from the gradients' change along each step (search.secant_update), and once, after
    NEWTON_START_REFRESH steps, forward differences of the crossed model's analytic gradient (one
    crossed solve per coordinate) instead of more difference Hessians. On InstEval this takes 8 crossed
    solves where L-BFGS-B from the same starts took 9 and ended where the face Newton then needed two
    central-difference Hessians (8 solves: one to step on, a fresh one to stop on) instead of one.

    Only a search aid: the answer is still L-BFGS-B's from here, polished by the face Newton and
    certified on a fresh central-difference Hessian at the final point, as from any start. It stops at
    a step that does not lower the deviance (allowed to rise within the rounding noise when the
    predicted decrease is below it, as search.newton_on_face), at a Hessian that is not positive
    definite, and at a start on the boundary (a zero diagonal: the face Newton's business). Every point
    is evaluated at the factor L-BFGS-B re-derives from G (chol_psd). Returns (Gs, steps)."""
    from .search import FactorCoordinates, chol_psd, secant_update, tol_decrement
    coords = FactorCoordinates([G.shape[0] for G in Gs], diagonal)
    idx, cuts = coords.idx, coords.cuts
    on_diagonal = np.concatenate([r == c for i in idx for r, c in [i]])

    def evaluate(theta):
        G = tuple(lam @ lam.T for lam in coords.lams(theta))
        ls = tuple(chol_psd(Gb) for Gb in G)
        dev, gams = obj.at(G, factors=ls)
        return G, coords.of_factors(ls), float(dev), coords.gradient(gams, ls)

    def hessian(theta, g):
        H = np.empty((theta.size, theta.size))
        for k in range(theta.size):
            t = theta.copy()
            t[k] += 1e-5 * max(abs(float(theta[k])), 1e-3)
            _, t, d_k, g_k = evaluate(t)
            if not np.isfinite(d_k):
                return None
            H[:, k] = (g_k - g) / (t[k] - theta[k])
        return 0.5 * (H + H.T)

    theta0 = coords.theta(Gs)
    if theta0.size == 0 or np.any(theta0[on_diagonal] <= 0.0):
        return tuple(Gs), 0
    G, theta, dev, g = evaluate(theta0)
    if not (np.isfinite(dev) and np.all(np.isfinite(g))):
        return tuple(Gs), 0
    tol = tol_decrement(dev, obj.noise(G))
    H = one_factor_hessian(obj, theta, idx, cuts)
    steps = 0
    while H is not None and steps < max_steps and float(np.abs(g).max()) > gtol:
        w, E = np.linalg.eigh(H)
        if w[0] <= 0.0:
            break
        step = -(E @ ((E.T @ g) / w))
        predicted = -0.5 * float(g @ step)
        slack = tol if predicted <= tol else 0.0  # a step within the rounding noise: the gradient's word
        t, moved = 1.0, None
        while t > 1e-6:
            trial = theta + t * step
            if np.all(trial[on_diagonal] > 0.0):
                G_t, th_t, d_t, g_t = evaluate(trial)
                if np.isfinite(d_t) and d_t <= dev + (slack if t == 1.0 else 0.0):
                    moved = (G_t, th_t, d_t, g_t)
                    break
            t *= 0.5
        if moved is None:
            break
        steps += 1
        # once (NEWTON_START_REFRESH): the one-factor Hessian leaves out the factors' interaction, and
        # BFGS from it alone creeps
        refresh = steps == NEWTON_START_REFRESH
        H = hessian(moved[1], moved[3]) if refresh else secant_update(H, moved[1] - theta, moved[3] - g)
        G, theta, dev, g = moved
    return G, steps


def one_factor_hessian(obj: Objective, theta, idx, cuts):
    """A first Hessian for newton_start at no crossed solve: blockdiag_b of the one-factor model's
    Hessian in block b's coordinates (forward differences of its analytic gradient, each a
    block-diagonal solve of milliseconds), the factors' interaction left out. When the factors are not
    confounded, each factor's curvature is near its one-factor curvature, and newton_start's first
    step only has to bring the search near enough for a crossed Hessian to take over."""
    from .search import chol_psd
    blocks = []
    for b, (i, t) in enumerate(zip(idx, np.split(theta, cuts))):
        single = Objective(obj.stats.subset((b,)), obj.reml)
        q = obj.stats.terms[b].q

        def grad(tb):
            lam = np.zeros((q, q))
            lam[i] = tb
            lam = chol_psd(lam @ lam.T)
            g = single.at((lam @ lam.T,), factors=(lam,))[1][0]
            return (2.0 * g @ lam)[i], lam[i]

        g0, t0 = grad(t)
        Hb = np.empty((t.size, t.size))
        for k in range(t.size):
            tk = t0.copy()
            tk[k] += 1e-5 * max(abs(float(t0[k])), 1e-3)
            gk, tk = grad(tk)
            Hb[:, k] = (gk - g0) / (tk[k] - t0[k])
        obj.count += single.count  # every solve is counted
        blocks.append(0.5 * (Hb + Hb.T))
    if not all(np.all(np.isfinite(Hb)) for Hb in blocks):
        return None
    H = np.zeros((theta.size, theta.size))
    for lo, Hb in zip(np.concatenate([[0], cuts]).astype(int), blocks):
        H[lo:lo + len(Hb), lo:lo + len(Hb)] = Hb
    return H


def _search(obj: Objective, qs, max_iterations: int, diagonal):
    """nested_fit.search's plan (identity/4), or, for several factors and a large dense block, from the
    one-factor starts (one_factor_starts)."""
    from .nested_fit import NESTED_LBFGS, tau_names
    from .search import Plan, search as one_search
    if len(qs) < 2 or obj.stats.Q2 < ONE_FACTOR_STARTS_MIN_DENSE:
        from .nested_fit import search
        return search(obj, qs, max_iterations, diagonal)
    starts, steps = newton_start(obj, one_factor_starts(obj, qs, diagonal, max_iterations), diagonal,
                                 NESTED_LBFGS.gtol)
    plan = Plan([("one-factor fits", starts)],
                boundary_starts=[("identity*10", tuple(2.5 * np.eye(q) for q in qs))], tolerances=NESTED_LBFGS)
    found = one_search(obj, plan, diagonal, max(1, max_iterations - steps), tau_names(len(qs) + 1))
    return found.Gs, found.deviance, found.certificate, found.iterations + steps, found.message, found.start


def _n_free(tau, diagonal) -> int:
    q = tau.shape[0]
    return q if diagonal else q * (q + 1) // 2


def fit_crossed(y, X, fixed_names, terms: list[CrossedTerm], method: str = "REML", max_iterations: int = 1000,
                diagonal=None) -> CrossedFit:
    """Minimise the profiled deviance over one PSD block per factor and certify the answer."""
    from .nested_fit import diagonal_blocks
    y = np.asarray(y, float)
    X = np.asarray(X, float)
    reml = method.upper() == "REML"
    if len(terms) < 1:
        raise ModelError("a mixed model needs at least one grouping factor")
    st = CrossedStats(y, X, terms)
    n, p = X.shape
    if n - p <= 0:
        raise ModelError(f"{n} records cannot estimate {p} fixed effects and σ²")
    # y an exact linear function of the fixed effects' columns: σ² → 0 with τ = 0 sends the likelihood to
    # +∞, so there is no optimum to certify (the rule of unitsolve.exact_within, with no random columns)
    rss = float(np.sum((y - st.Qx @ st.Qty) ** 2))
    if rss <= EXACT_WITHIN_ULPS * np.finfo(float).eps * float(y @ y):
        raise ModelError("the outcome is an exact linear function of the fixed effects' predictors (no residual "
                         "variation), so σ² would be 0 and the likelihood has no maximum; check that the outcome is "
                         "not constant or computed from the predictors")
    obj = Objective(st, reml)
    qs = tuple(t.q for t in terms)
    diag = diagonal_blocks(diagonal, len(terms))
    Gs, dev_std, cert, iterations, message, start = _search(obj, qs, max_iterations, diag)
    us = obj.solve(tuple(_factor(G) for G in Gs))
    c2 = st.c ** 2
    nu = us.dof(reml)
    sigma2 = c2 * us.sigma2_hat(reml)
    R = st.R
    deviance = us.profiled_deviance(reml) + nu * np.log(c2)
    if reml and p:
        deviance += 2.0 * float(np.log(np.abs(np.diag(R))).sum())
    # γ = R⁻¹(Q'y + c·γ̃); cov γ̂ = σ² R⁻¹ (RX RX')⁻¹ R⁻ᵀ
    gamma = np.linalg.solve(R, st.Qty + st.c * us.gamma)
    RX = us.LW[:p, :p]
    Rinv = np.linalg.inv(R)
    A = _tri(RX, Rinv.T, lower=True)  # RX⁻¹R⁻ᵀ
    cov = sigma2 * (A.T @ A)
    taus, ranef = [], []
    for b, (t, T, G) in enumerate(zip(terms, st.T, Gs)):
        taus.append(sigma2 * T @ G @ T.T)
        ranef.append(st.c * us.b[b].reshape(t.J, t.q) @ T.T)
    return CrossedFit(method="REML" if reml else "ML", factors=tuple(t.factor for t in terms),
                      columns=tuple(t.columns for t in terms), n_groups=tuple(t.J for t in terms),
                      fixed_names=tuple(fixed_names), gamma=gamma, gamma_cov=cov, sigma2=sigma2, taus=tuple(taus),
                      deviance=float(deviance), n=n, certificate=cert, iterations=iterations, evaluations=obj.count,
                      start=start, message=message, G=tuple(Gs), ranef=tuple(ranef),
                      labels=tuple(t.labels for t in terms), diagonal=diag, stats=st, solve=us)
