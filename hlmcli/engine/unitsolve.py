"""The one per-unit solve: everything the likelihood, its gradient, the information, Satterthwaite,
empirical Bayes and the robust SEs need at given (σ², τ), computed once, vectorised over units.

Model for unit j: y_j = X_jγ + Z_ju_j + r_j, u_j ~ N(0, τ), r_j ~ N(0, σ²I). Write G = τ/σ² = ΛΛ'
(Λ any square factor, not necessarily triangular) and A_j = Z_j'Z_j. With

    M_j = I + Λ'A_jΛ,   K_j = Λ M_j⁻¹ Λ' = G(I + A_jG)⁻¹,   H_j = I − A_jK_j = (I + A_jG)⁻¹,

the Woodbury identity gives σ²V_j⁻¹ = I − Z_jK_jZ_j', and the determinant lemma log|V_j/σ²| = log|M_j|.
Every product with V_j⁻¹ therefore reduces to q×q algebra on the cross-products Z'Z, Z'X, Z'y:

    σ²Z_j'V_j⁻¹Z_j = H_jA_j,   σ²Z_j'V_j⁻¹X_j = H_j Z_j'X_j,   σ²X'V⁻¹X = X'X − Σ_j (Z_j'X_j)'K_j(Z_j'X_j) =: P.

GLS: γ̂ = P⁻¹c, c = X'y − Σ (Z_j'X_j)'K_jZ_j'y_j; the weighted residual sum of squares
rss = e'(σ²V⁻¹)e = y'(σ²V⁻¹)y − c'γ̂.

Deviances (−2 log-likelihood), with σ² profiled (σ̂² = rss/ν, ν = N − p for REML, N for ML):

    d(G) = Σ_j log|M_j| + ν(1 + log 2π + log σ̂²) [+ log|P| for REML].

Gradient with respect to G (symmetric convention d(G + E) ≈ d(G) + tr(ΓE)), from
∂log|I + ZGZ'| = tr(Z'Ṽ⁻¹Z ∂G), ∂rss = −tr(v v' ∂G) with v_j = H_j Z_j'e_j, and
∂log|P| = −tr(Σ_j H_jR_jH_j' ∂G) with R_j = Z_j'X_j P⁻¹ (Z_j'X_j)':

    Γ = Σ_j H_jA_j − (1/σ²) Σ_j v_jv_j' [− Σ_j H_jR_jH_j' for REML],

where σ² is σ̂² when profiled, or the given value for the unprofiled deviance. The chain rule for
G = ΛΛ' gives ∂d/∂Λ = 2ΓΛ.

Second derivatives (the certificate's and the Newton steps' face Hessian, curvature_G), from the same
solve. Write W_j = V_j/σ² = I + Z_jGZ_j', Q_j = H_jA_j = Z_j'W_j⁻¹Z_j (symmetric), U_j = H_jZ_j'X_j =
Z_j'W_j⁻¹X_j (q×p), and ∂_E for the derivative along a symmetric direction E of G. Then
∂_E W_j⁻¹ = −W_j⁻¹Z_jEZ_j'W_j⁻¹, so ∂_F Q_j = −Q_jFQ_j, ∂_F U_j = −Q_jFU_j, ∂_F P = −Σ_j U_j'FU_j =: −C_F, and

    ∂²_EF Σ log|M_j| = −Σ_j tr(Q_jEQ_jF).

rss(G) = min_γ Σ (y_j − X_jγ)'W_j⁻¹(y_j − X_jγ); by the envelope theorem ∂_E rss = −Σ_j v_j'Ev_j with
v_j = Z_j'W_j⁻¹e_j at γ̂, and along F, ∂_F v_j = −Q_jFv_j − U_j∂_Fγ̂ with ∂_Fγ̂ = −P⁻¹b_F, b_F = Σ_j U_j'Fv_j
(differentiate Pγ̂ = c), so

    ∂²_EF rss = 2 Σ_j v_j'EQ_jFv_j − 2 b_E'P⁻¹b_F.

For REML, ∂_E log|P| = −tr(P⁻¹C_E) and ∂_F C_E = −Σ_j (U_j'FQ_jEU_j + U_j'EQ_jFU_j), so with
R̃_j = U_jP⁻¹U_j' (= H_jR_jH_j' above)

    ∂²_EF log|P| = −tr(P⁻¹C_FP⁻¹C_E) + Σ_j tr(R̃_jEQ_jF) + tr(R̃_jFQ_jE).

The profiled deviance has ν log rss, whose second derivative is ν(∂²rss/rss − ∂rss ∂rss'/rss²); with
σ² given, rss/σ² contributes ∂²rss/σ². Every sum over units is w_j-weighted in a weighted fit. On a face
of the PSD cone with coordinates x (certificate.Face), G(x) is quadratic, so the face Hessian is
D²d[∂_iG, ∂_kG] + tr(Γ ∂²_ikG). Cost: one gradient's per-unit algebra plus n² products over (q², J)
for n face coordinates, against 2n solves and gradients for central differences of the gradient.

Sampling weights (multilevel pseudo-ML; Pfeffermann et al. 1998, Rabe-Hesketh & Skrondal 2006).
With level-1 weights w_i|j and level-2 weights w_j the pseudo-log-likelihood is
Σ_j w_j log ∫ Π_i f(y_ij | u)^{w_i|j} φ(u; τ) du. For the normal model the integrand is a Gaussian
in u whose algebra is the above with W_j = diag(w_i|j) inside every cross-product (A_j = Z_j'W_jZ_j,
Z_j'W_jX_j, Z_j'W_jy_j, X_j'W_jX_j, y_j'W_jy_j) and n_j = Σ_i w_i|j, so

    −2 log PL = Σ_j w_j log|M_j| + N_w log(2πσ²) + rss/σ²,   N_w = Σ_j w_j n_j,

with P, c, y'(σ²V⁻¹)y, rss and every sum over units in Γ taken w_j-weighted (sufficient.py builds
the weighted cross-products; here only the sums over units change). ν = N_w (ML) or N_w − p.
With all weights 1 (stats.w2 None) nothing differs from the unweighted formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .objective import SolveCache, factor, like, one_block
from .sufficient import ModelStats

LOG_2PI = float(np.log(2 * np.pi))

# One tolerance for every per-unit OLS: Z_j'Z_j is singular when its smallest eigenvalue is below
# this fraction of its largest (scale-free, and well above rounding noise in a q×q product).
OLS_RANK_TOL = 1e-10


def cmm(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Products of many small matrices stored component-first, X (a,b,J) @ Y (b,c,J) -> (a,c,J).

    Each component is a contiguous vector over units, so q³ vector operations replace J tiny
    matrix products: for random-effect dimensions this is far faster than batched matmul."""
    a, b, J = X.shape
    c = Y.shape[1]
    out = np.empty((a, c, J))
    for i in range(a):
        for k in range(c):
            acc = X[i, 0] * Y[0, k]
            for m in range(1, b):
                acc += X[i, m] * Y[m, k]
            out[i, k] = acc
    return out


def cmv(X: np.ndarray, v: np.ndarray) -> np.ndarray:
    """X (a,b,J) @ v (b,J) -> (a,J)."""
    out = X[:, 0] * v[0]
    for m in range(1, X.shape[1]):
        out += X[:, m] * v[m]
    return out


def spd_inverse_logdet(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of symmetric positive definite matrices stored component-first,
    M (q,q,J): a Cholesky written out over the q(q+1)/2 entries, vectorised across units.
    Raises LinAlgError if some M_j is not positive definite."""
    q, _, J = M.shape
    L = [[None] * q for _ in range(q)]
    logdet = np.zeros(J)
    for i in range(q):
        for j in range(i + 1):
            s = M[i, j].copy()
            for k in range(j):
                s -= L[i][k] * L[j][k]
            if i == j:
                if not np.all(s > 0):
                    raise np.linalg.LinAlgError("matrix is not positive definite")
                L[i][i] = np.sqrt(s)
                logdet += np.log(s)
            else:
                L[i][j] = s / L[j][j]
    Li = [[None] * q for _ in range(q)]  # the inverse of the triangular factor
    for i in range(q):
        Li[i][i] = 1.0 / L[i][i]
        for j in range(i):
            s = L[i][j] * Li[j][j]
            for k in range(j + 1, i):
                s = s + L[i][k] * Li[k][j]
            Li[i][j] = -s / L[i][i]
    inv = np.empty((q, q, J))
    for a in range(q):
        for b in range(a + 1):
            s = Li[a][a] * Li[a][b]
            for k in range(a + 1, q):
                s = s + Li[k][a] * Li[k][b]
            inv[a, b] = inv[b, a] = s
    return inv, logdet


def sandwich(lam: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Λ'A_jΛ for every unit, A component-first (q,q,J), as two BLAS products."""
    LA = np.tensordot(lam, A, axes=([0], [0]))  # (q, q, J): Λ'A
    return np.ascontiguousarray(np.tensordot(LA, lam, axes=([1], [0])).transpose(0, 2, 1))


def _pairs(q: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(q) for b in range(a, q)]


@dataclass
class UnitSolve:
    """The per-unit algebra at one relative covariance G = ΛΛ', and the GLS fit it implies.

    Arrays are component-first ((q, q, J), (q, J)) as the vectorised algebra wants them; the
    `*_units` properties give unit-first views for code that prefers them."""

    stats: ModelStats
    lam: np.ndarray  # (q, q) a factor of G
    G: np.ndarray  # (q, q) τ/σ²
    K: np.ndarray  # (q, q, J)
    logdet: np.ndarray  # (J,) log|M_j| = log|V_j/σ²|
    P: np.ndarray  # (p, p) σ²X'V⁻¹X
    cholP: np.ndarray  # its Cholesky factor
    c: np.ndarray  # (p,)
    s: float  # y'(σ²V⁻¹)y
    gamma: np.ndarray  # (p,) GLS estimate
    rss: float  # e'(σ²V⁻¹)e at γ̂

    # ---------------------------------------------------------------- derived per-unit pieces
    @property
    def q(self) -> int:
        return self.G.shape[0]

    @property
    def H(self) -> np.ndarray:
        """(I + A_jG)⁻¹ = I − A_jK_j, component-first."""
        H = -cmm(self.stats.ZZc, self.K)
        for a in range(self.q):
            H[a, a] += 1.0
        return H

    @property
    def K_units(self) -> np.ndarray:
        return self.K.transpose(2, 0, 1)

    def Ze(self, gamma: np.ndarray | None = None) -> np.ndarray:
        """Z_j'e_j (q, J) with e = y − Xγ (γ̂ by default)."""
        g = self.gamma if gamma is None else gamma
        return self.stats.Zyc - np.stack([self.stats.ZXt[a] @ g for a in range(self.q)])

    def v(self) -> np.ndarray:
        """σ²Z_j'V_j⁻¹e_j = H_jZ_j'e_j (q, J)."""
        return cmv(self.H, self.Ze())

    def Pinv(self) -> np.ndarray:
        p = self.P.shape[0]
        return np.linalg.solve(self.cholP.T, np.linalg.solve(self.cholP, np.eye(p)))

    def unit_sum(self, x: np.ndarray) -> np.ndarray:
        """Σ_j x_j over the last (unit) axis, each unit counted w_j times in a weighted fit."""
        w = self.stats.w2
        return x.sum(axis=-1) if w is None else x @ w

    def log_det_P(self) -> float:
        return 2.0 * float(np.log(np.diag(self.cholP)).sum())

    # ---------------------------------------------------------------- likelihood pieces
    def dof(self, reml: bool) -> float:
        return self.stats.N - self.stats.p if reml else self.stats.N

    def sigma2_hat(self, reml: bool) -> float:
        return self.rss / self.dof(reml)

    def profiled_deviance(self, reml: bool) -> float:
        nu = self.dof(reml)
        d = float(self.unit_sum(self.logdet)) + nu * (1.0 + LOG_2PI + np.log(self.rss / nu))
        return d + self.log_det_P() if reml else d

    def rounding_noise(self, reml: bool) -> float:
        """How far rounding can move the profiled deviance: rss = y'y − Σ(Z'y)'K(Z'y) − c'γ̂ loses the
        digits its terms share, and ν·log(rss) carries that relative error; the log-determinants add theirs.
        A decrease smaller than this cannot be verified by evaluating the deviance."""
        eps = np.finfo(float).eps
        nu = self.dof(reml)
        yy = self.stats.yy  # s = y'y − Σ Z'y'KZ'y and rss = s − c'γ̂: both differences can cancel
        cancel = (abs(yy) + abs(yy - self.s) + abs(float(self.c @ self.gamma))) / self.rss
        logdets = float(np.abs(self.logdet).sum()) + (abs(self.log_det_P()) if reml else 0.0)
        return 8.0 * eps * (nu * cancel + logdets + nu * abs(np.log(self.rss / nu)))

    def deviance(self, sigma2: float, reml: bool) -> float:
        """The deviance at this G and a given σ² (γ at its GLS value), as lmerTest's devfun_vp."""
        N, p = self.stats.N, self.stats.p
        d = float(self.unit_sum(self.logdet)) + self.rss / sigma2 + N * (LOG_2PI + np.log(sigma2))
        if reml:
            d += self.log_det_P() - p * (LOG_2PI + np.log(sigma2))
        return d

    def gradient_G(self, reml: bool, sigma2: float | None = None) -> np.ndarray:
        """Γ = ∂d/∂G (symmetric convention), σ² profiled unless given (see the module docstring)."""
        st, q = self.stats, self.q
        s2 = self.sigma2_hat(reml) if sigma2 is None else sigma2
        H = self.H
        v = cmv(H, self.Ze())
        vw = v if st.w2 is None else v * st.w2
        Gamma = self.unit_sum(cmm(H, st.ZZc)) - (vw @ v.T) / s2
        if reml:
            Pinv = self.Pinv()
            J = st.J
            R = np.empty((q, q, J))
            if st.ZXouter is not None:
                for k, (a, b) in enumerate(_pairs(q)):
                    R[a, b] = R[b, a] = st.ZXouter[k] @ Pinv.ravel()
            else:
                ZP = [st.ZXt[a] @ Pinv for a in range(q)]
                for a, b in _pairs(q):
                    R[a, b] = R[b, a] = np.einsum("jp,jp->j", ZP[a], st.ZXt[b])
            Gamma -= self.unit_sum(cmm(cmm(H, R), H.transpose(1, 0, 2)))
        return 0.5 * (Gamma + Gamma.T)

    def curvature_G(self, reml: bool, directions, sigma2: float | None = None) -> np.ndarray:
        """D²d(G)[E_i, E_k] for symmetric directions E_1..E_n (q×q): the deviance's second derivatives
        in G, σ² profiled unless given, from this solve alone (derivation in the module docstring).
        Returns the symmetric n×n matrix."""
        st, q = self.stats, self.q
        n = len(directions)
        E = np.asarray(directions, float).reshape(n, q, q)
        w = st.w2
        H = self.H
        Q = cmm(H, st.ZZc)  # H_jA_j = σ²Z_j'V_j⁻¹Z_j, symmetric per unit
        v = cmv(H, self.Ze())  # (q, J)
        U = np.stack([sum(H[a, m][:, None] * st.ZXt[m] for m in range(q)) for a in range(q)])  # (q, J, p): H_jZ_j'X_j
        QE = np.tensordot(E, Q, axes=([1], [1])).transpose(0, 2, 1, 3)  # Q_jE_i, (n, q, q, J)
        Ev = np.tensordot(E, v, axes=([2], [0]))  # E_iv_j, (n, q, J)
        QEv = np.einsum("abj,nbj->naj", Q, Ev)  # Q_jE_iv_j
        Ew = Ev if w is None else Ev * w
        flat = lambda x: x.reshape(n, -1)
        # Σ_j tr(Q_jE_iQ_jE_k) and Σ_j v_j'E_iQ_jE_kv_j, each one product over (component, unit)
        trQEQE = flat(QE if w is None else QE * w) @ flat(QE.transpose(0, 2, 1, 3)).T
        vEQEv = flat(Ew) @ flat(QEv).T
        grad_rss = -np.einsum("naj,aj->n", Ew, v)  # ∂rss[E_i] = −Σ_j v_j'E_iv_j
        b = np.einsum("naj,ajp->np", Ew, U)  # Σ_j U_j'E_iv_j
        Pinv = self.Pinv()
        hess_rss = 2.0 * vEQEv - 2.0 * b @ Pinv @ b.T
        if sigma2 is None:
            nu = self.dof(reml)
            out = -trQEQE + nu * (hess_rss / self.rss - np.outer(grad_rss, grad_rss) / self.rss ** 2)
        else:
            out = -trQEQE + hess_rss / sigma2
        if reml:
            p = self.P.shape[0]
            UU = np.empty((q, q, p, p))  # Σ_j U_j[a]'U_j[b] (weighted), so Σ_j U_j'E_iU_j = Σ_ab E_i[a,b] UU[a,b]
            Rt = np.empty((q, q, st.J))  # U_jP⁻¹U_j'
            for a, c in _pairs(q):
                Uc = U[c] if w is None else U[c] * w[:, None]
                UU[a, c] = U[a].T @ Uc
                UU[c, a] = UU[a, c].T
                Rt[a, c] = Rt[c, a] = np.einsum("jp,jp->j", U[a] @ Pinv, U[c])
            PC = Pinv @ np.tensordot(E, UU, axes=([1, 2], [0, 1]))  # P⁻¹C_i, C_i = −∂P[E_i]
            trPCPC = np.einsum("iab,kba->ik", PC, PC)
            RtE = np.tensordot(E, Rt, axes=([1], [1])).transpose(0, 2, 1, 3)  # R̃_jE_i
            if w is not None:
                RtE = RtE * w
            trEQER = flat(RtE.transpose(0, 2, 1, 3)) @ flat(QE).T  # Σ_j tr(R̃_jE_iQ_jE_k)
            out += -trPCPC + trEQER + trEQER.T
        return 0.5 * (out + out.T)

    # ---------------------------------------------------------------- quantities for inference
    def XVe_units(self) -> np.ndarray:
        """σ²X_j'V_j⁻¹e_j per unit (J, p): the scores of γ, for the cluster-robust sandwich (in a
        weighted fit, unit j's pseudo-score is w_j times this over σ²)."""
        st = self.stats
        Xe = st.Xy_units - st.XX_units @ self.gamma
        KZe = cmv(self.K, self.Ze())
        return Xe - np.einsum("qjp,qj->jp", st.ZXt, KZe)

    def posterior(self, sigma2: float) -> tuple[np.ndarray, np.ndarray]:
        """E(u_j | y) = G H_j Z_j'e_j and Var(u_j | y, γ) = σ²K_j, unit-first (J, q) and (J, q, q)."""
        u = (self.G @ self.v()).T
        return u, sigma2 * self.K_units

    def ZVZ_units(self, sigma2: float) -> np.ndarray:
        """Z_j'V_j⁻¹Z_j per unit (J, q, q)."""
        return (cmm(self.H, self.stats.ZZc) / sigma2).transpose(2, 0, 1)


def unit_solve(stats: ModelStats, lam: np.ndarray) -> UnitSolve:
    """Solve every unit at G = ΛΛ'. Raises FloatingPointError when X'V⁻¹X is not positive definite
    or the weighted residual sum of squares is not positive (the model is degenerate there)."""
    q, p = stats.q, stats.p
    lam = np.asarray(lam, dtype=float)
    M = sandwich(lam, stats.ZZc)
    for a in range(q):
        M[a, a] += 1.0
    Minv, logdets = spd_inverse_logdet(M)
    K = sandwich(lam.T, Minv)
    Kw = K if stats.w2 is None else K * stats.w2  # each unit's term counted w_j times
    KZy = cmv(Kw, stats.Zyc)
    # Σ_j ZX_j'K_jZX_j as q² weighted cross-products (BLAS), never forming K_jZX_j per unit
    P = stats.XX.copy()
    for k, (a, b) in enumerate(_pairs(q)):
        if stats.ZXouter is not None:
            block = (Kw[a, b] @ stats.ZXouter[k]).reshape(p, p)
        else:
            block = (stats.ZXt[a] * Kw[a, b][:, None]).T @ stats.ZXt[b]
        P -= block if a == b else block + block.T
    P = 0.5 * (P + P.T)
    c = stats.Xy - sum(stats.ZXt[a].T @ KZy[a] for a in range(q))
    s = stats.yy - float(np.vdot(stats.Zyc, KZy))
    cholP, gamma, rss = gls(P, c, s)
    return UnitSolve(stats, lam, lam @ lam.T, K, logdets, P, cholP, c, s, gamma, rss)


def gls(P: np.ndarray, c: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray, float]:
    """γ = P⁻¹c by Cholesky and the residual sum of squares s − c'γ, from the profiled normal
    equations (P = X'V⁻¹X, c = X'V⁻¹y, s = y'V⁻¹y): refused unless P ≻ 0 and the RSS > 0."""
    try:
        cholP = np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        raise FloatingPointError("X'V⁻¹X is not positive definite") from None
    gamma = np.linalg.solve(cholP.T, np.linalg.solve(cholP, c))
    rss = s - float(c @ gamma)
    if not rss > 0:
        raise FloatingPointError("the residual sum of squares is not positive")
    return cholP, gamma, rss


# ---------------------------------------------------------------- per-unit OLS, one routine

@dataclass
class UnitOLSFit:
    ok: np.ndarray  # bool (J,): n_j > k and Z_j'Z_j non-singular
    beta: np.ndarray  # (J, k), nan where not ok
    inv: np.ndarray  # (J, k, k) (Z_j'Z_j)⁻¹, nan where not ok
    rss: np.ndarray  # (J,) residual sum of squares, nan where not ok or not asked for


def unit_ols(ZZ: np.ndarray, Zy: np.ndarray, n: np.ndarray, yy: np.ndarray | None = None) -> UnitOLSFit:
    """OLS of y_j on Z_j in every unit from the cross-products (unit-first ZZ (J,k,k), Zy (J,k)).

    A unit counts when it has more records than columns and Z_j'Z_j is non-singular, judged by
    OLS_RANK_TOL on the ratio of its extreme eigenvalues."""
    J, k = Zy.shape
    eig = np.linalg.eigvalsh(ZZ) if J else np.zeros((0, k))
    ok = (n > k) & (eig[:, 0] > OLS_RANK_TOL * np.maximum(eig[:, -1], 1e-300)) if J else np.zeros(0, bool)
    beta = np.full((J, k), np.nan)
    inv = np.full((J, k, k), np.nan)
    rss = np.full(J, np.nan)
    if ok.any():
        inv[ok] = np.linalg.inv(ZZ[ok])
        beta[ok] = np.einsum("jab,jb->ja", inv[ok], Zy[ok])
        if yy is not None:
            rss[ok] = yy[ok] - np.einsum("jk,jk->j", beta[ok], Zy[ok])
    return UnitOLSFit(ok, beta, inv, rss)


# ---------------------------------------------------------------- the objective the search minimises

class ProfiledDeviance:
    """The two-level profiled (RE)ML deviance as an objective.DevianceObjective over one block G = τ/σ²
    (on the statistics given, the search's standardised ones), counting the solves. A point is (G,)
    or the bare matrix G; the gradient comes back in the same form. With sigma2 given, the deviance
    at that fixed level-1 variance instead (σ² not profiled; PQL's working model has σ² = 1): then
    G = τ/σ² with the given σ²."""

    def __init__(self, stats: ModelStats, reml: bool, sigma2: float | None = None):
        self.stats, self.reml, self.count, self.sigma2 = stats, reml, 0, sigma2
        self._cache = SolveCache()

    def solve(self, lam: np.ndarray) -> UnitSolve:
        return self._cache.get(np.asarray(lam, float), self._solve)

    def _solve(self, lam: np.ndarray) -> UnitSolve:
        self.count += 1
        return unit_solve(self.stats, lam)

    def deviance_of(self, us: UnitSolve) -> float:
        return us.profiled_deviance(self.reml) if self.sigma2 is None else us.deviance(self.sigma2, self.reml)

    def gradient_of(self, us: UnitSolve) -> np.ndarray:
        return us.gradient_G(self.reml, sigma2=self.sigma2)

    def at(self, point, factors=None):
        G = one_block(point)
        try:
            us = self.solve(factor(G) if factors is None else one_block(factors))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, like(point, np.zeros_like(G))
        return self.deviance_of(us), like(point, self.gradient_of(us))

    def curvature(self, point, directions):
        """D²d[E_i, E_k] at G for the symmetric directions E_i (UnitSolve.curvature_G), or None where
        the model cannot be evaluated."""
        try:
            us = self.solve(factor(one_block(point)))
        except (FloatingPointError, np.linalg.LinAlgError):
            return None
        return us.curvature_G(self.reml, directions, sigma2=self.sigma2)

    def value(self, point) -> float:
        try:
            return self.deviance_of(self.solve(factor(one_block(point))))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    def noise(self, point) -> float:
        G = one_block(point)
        try:
            us = self.solve(factor(G))
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0
        if self.sigma2 is None:
            return us.rounding_noise(self.reml)
        # σ² fixed: rss/σ² carries the absolute rounding of the differences that make rss
        eps = np.finfo(float).eps
        yy = self.stats.yy
        cancel = abs(yy) + abs(yy - us.s) + abs(float(us.c @ us.gamma))
        logdets = float(np.abs(us.logdet).sum()) + (abs(us.log_det_P()) if self.reml else 0.0)
        counted = 8.0 * eps * (cancel / self.sigma2 + logdets)
        # PQL's working models (the only fits with σ² fixed) can have large weights, so I + Z'WZ·G is
        # ill conditioned per unit and its solves lose more digits than the terms above count (seen:
        # 1e-6 deviance units of noise where they count 1e-9). Measured as well: the second
        # difference of the deviance over ±1e-12 relative changes of G, whose exact value is
        # negligible, so what is left is rounding.
        return max(counted, self.measured_noise(G, self.deviance_of(us)))

    def measured_noise(self, G: np.ndarray, dev: float, k: int = 3) -> float:
        """max |d(G + δE) + d(G − δE) − 2d(G)| / 2 over k fixed pseudo-random symmetric E, δ = 1e-12
        relative: the gradient's term cancels and the curvature's is ~1e-24, so this is the
        deviance's rounding noise as it is evaluated."""
        rng = np.random.default_rng(0)
        delta = 1e-12 * max(float(np.max(np.abs(G))), 1e-300)
        diag = np.count_nonzero(G - np.diag(np.diag(G))) == 0
        worst = 0.0
        for _ in range(k):
            E = rng.normal(size=G.shape)
            E = np.diag(np.diag(E)) * (np.diag(G) > 0) if diag else E + E.T
            vp, vm = self.value(G + delta * E), self.value(G - delta * E)
            if np.isfinite(vp) and np.isfinite(vm):
                worst = max(worst, 0.5 * abs(vp + vm - 2.0 * dev))
        return worst


# ---------------------------------------------------------------- σ² = 0: the outcome exact within units

# The within-unit residual is zero when it is within the rounding of the cross-products it is made from:
# y'y minus the projections, so a few ulps of y'y (measured: 0 to 0.9·eps·y'y for exact data, 56·eps·y'y
# for an outcome constant within units up to noise of SD 1e-6, whose likelihood does have a maximum).
EXACT_WITHIN_ULPS = 8.0


def exact_within(rss_within: float, yy: float, outcome: str) -> str | None:
    """The one-line refusal when the within-unit residual (within_unit_rss) is zero to the rounding of
    y'y (the outcome's sum of squares it was computed from), else None."""
    if rss_within > EXACT_WITHIN_ULPS * np.finfo(float).eps * abs(yy):
        return None
    return (f"{outcome} is an exact linear function of the level-1 predictors within every level-2 unit (no residual "
            "variation within units), so σ² would be 0 and the likelihood has no maximum; check that the outcome is "
            "not computed from the predictors, or make fixed the level-1 coefficients that vary between units")


def within_unit_rss(ZZ: np.ndarray, ZB: np.ndarray, BB: np.ndarray, unit_weight: np.ndarray | None = None) -> float:
    """min over γ and each unit's own b_j of Σ_j c_j‖y_j − B_jγ − Z_jb_j‖², the residual when every unit
    has its own coefficients on its random columns Z and the other columns B = [… | y] (y last) have
    common ones: from the per-unit cross-products ZZ (J,q,q), ZB = Z_j'[B_j | y_j] (J,q,m), and
    BB = Σ_j c_j [B | y]'[B | y] (m,m), c_j = unit_weight (1 when None). Projecting Z_j out of each
    unit, [B | y]'(I − Z_j(Z_j'Z_j)⁺Z_j')[B | y] summed is the normal equations' matrix of the
    remaining regression, whose residual is s − c'A⁺c. When it is 0 the likelihood has no maximum:
    σ² → 0 with τ taking up the units' exact coefficients sends it to +∞ (log|V| → −∞ while the
    residual stays in the range of Z_jτZ_j')."""
    J, q, _ = ZZ.shape
    Zp = np.zeros_like(ZZ)
    if J and q:
        w, E = np.linalg.eigh(ZZ)
        keep = w > OLS_RANK_TOL * np.maximum(w[:, -1:], 1e-300)
        inv = np.where(keep, 1.0 / np.where(keep, w, 1.0), 0.0)
        Zp = np.einsum("jak,jk,jbk->jab", E, inv, E)  # (Z_j'Z_j)⁺
    m = BB.shape[0]
    cZB = ZB if unit_weight is None else ZB * np.asarray(unit_weight, float)[:, None, None]
    # Σ_j c_j ZB_j'(Z_j'Z_j)⁺ZB_j as one (m × Jq)(Jq × m) product: a four-operand einsum loops in C
    # without BLAS (22 ms at J = 10,000)
    W = BB - cZB.reshape(-1, m).T @ (Zp @ ZB).reshape(-1, m)
    W = 0.5 * (W + W.T)
    A, b, s = W[:-1, :-1], W[:-1, -1], float(W[-1, -1])
    if A.size:
        coef = np.linalg.lstsq(A, b, rcond=1e-12)[0]
        s -= float(b @ coef)
    return max(s, 0.0)
