"""Binary, binomial and count outcomes at three levels by Laplace (exact ML, glmer's nAGQ = 1), as
pure functions of arrays.

Model. η_i = x_i'γ + a_i'u2_j + b_i'u3_k (+ offset), with a_i = Λ2'z2_i, b_i = Λ3'z3_i, u ~ N(0, I)
(b2 = Λ2u2 ~ N(0, τπ) per level-2 unit j, b3 = Λ3u3 ~ N(0, τβ) per level-3 unit k, the canonical
link). The columns are the nested engine's (nested_glmm.record_columns).

The joint log density of one level-3 unit's effects, f(u) = Σℓ_i(η_i) − ½Σ_j|u2_j|² − ½|u3_k|², has
the negative Hessian H = I + Z̃'WZ̃ (z̃_i = (a_i in j's block, b_i in the border)), which is
arrowhead-shaped: diagonal blocks Hjj = I + Σ_{i∈j}W_i a_ia_i', border Hj3 = Σ_{i∈j}W_i a_ib_i',
corner H33 = I + Σ_{i∈k}W_i b_ib_i'. With Pj = Hjj⁻¹Hj3 and the Schur complement
S_k = H33 − Σ_{j∈k} Hj3'Pj,

    log|H| = Σ_j log|Hjj| + log|S_k|,   H⁻¹: (H⁻¹)33 = S⁻¹, (H⁻¹)j3 = −PjS⁻¹,
    (H⁻¹)jj = Hjj⁻¹ + PjS⁻¹Pj',

so a Newton step for the modes and the determinant cost O(records) (no dense J2 × J2 matrix):
δ3 = S⁻¹(g3 − Σ_j Pj'g2_j), δ2_j = Hjj⁻¹g2_j − Pjδ3. The Laplace deviance is glmer's (nAGQ = 1):

    d(γ, Λ2, Λ3) = −2Σℓ(η̂) + Σ|û2|² + Σ|û3|² + Σ_j log|Hjj| + Σ_k log|S_k|.

Exact gradient (as hglm.Conditional at K = 1, with the arrowhead H⁻¹). Per record
c_i = z̃_i'H⁻¹z̃_i = a_i'Hjj⁻¹a_i + e_i'S⁻¹e_i with e_i = b_i − Pj'a_i, r_i = κ3_i c_i (κ3 = ∂W/∂η),
v = H⁻¹Z̃'r (one arrowhead solve) and s_i = z̃_i'v. The envelope theorem on û, dû from the
implicit function theorem on Z̃'ℓ'(η̂) = û, and d log|H| = tr(H⁻¹dH) give

    ∂d/∂γ  = X'(r − Ws − 2ℓ'),
    ∂d/∂Λ2 = Σ_i z2_i (2W_i m2_i + (r_i − W_is_i − 2ℓ'_i)û2_j + ℓ'_i v2_j)',  m2_i = Hjj⁻¹a_i − PjS⁻¹e_i,
    ∂d/∂Λ3 = Σ_i z3_i (2W_i m3_i + (r_i − W_is_i − 2ℓ'_i)û3_k + ℓ'_i v3_k)',  m3_i = S⁻¹e_i,

(m_i = H⁻¹z̃_i restricted to the block of that Λ: the term 2tr(H⁻¹Z̃'W dZ̃)). tests/test_hglm3_laplace.py
checks it against differences of the deviance.

Search and certificate as the two-level Laplace (hglm.ml_fit): θ = the lower triangles of Λ2 and Λ3
(their diagonals for a diagonal τ) and γ, unconstrained; from PQL's estimates (nested_glmm.pql_levels:
the caller's, or run here), Newton on a difference Hessian of the exact gradient (L-BFGS first when
the start is poor), then certified over the two PSD blocks (τπ, τβ) with γ profiled out
(certificate.certify_blocks; the face Hessian from the (θ, γ) Hessian by the Schur complement and the
chain rule through θ(G) at a positive definite point; at a singular block, differences of the profiled
deviance). The certificate is local and the search has one start (hglm.ml_fit also tries the GLM's
starts and τ = 0, for rare events with several local minima). SEs of γ as glmer's: cov = 2H⁻¹ from
that Hessian; robust SEs the CR0 sandwich of the level-3 units' exact scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import lbfgsb
from .certificate import BlockFace, certify_blocks
from .hglm import MODE_DECREMENT, chain_to_face, difference_hessian, damped_newton, lower_phi
from .nested_glmm import LevelsGLMData, record_columns

TOL = 1e-6  # the certificate's tolerance, deviance units (as hglm.ml_fit)


def _inv(M):
    return np.linalg.inv(M)


class NestedLaplace:
    """The three-level Laplace deviance at (γ, Λ2, Λ3) and its exact gradient (module docstring),
    the modes warm-started from the last b̂ = Λû. Records sorted by level-2 unit, level-2 units by
    level-3 unit (nested.LevelsData)."""

    def __init__(self, glm: LevelsGLMData):
        d = glm.data
        if d.n_levels != 3:
            raise ValueError("NestedLaplace is for three levels")
        cols = record_columns(d)
        self.family, self.trials = glm.family, glm.trials
        self.y = np.asarray(d.y, dtype=float)
        self.X, (self.Z2, self.Z3) = cols.X, cols.Z
        self.j = np.asarray(cols.units[0], dtype=np.intp)  # record → level-2 unit
        self.k = np.asarray(cols.units[1], dtype=np.intp)  # record → level-3 unit
        self.k2 = np.asarray(d.parents[1], dtype=np.intp)  # level-2 unit → level-3 unit
        self.N, self.p = self.X.shape
        self.q2, self.q3 = self.Z2.shape[1], self.Z3.shape[1]
        self.J2, self.J3 = self.k2.size, int(self.k2.max()) + 1
        self.start2 = np.flatnonzero(np.r_[True, np.diff(self.j) != 0])
        self.start3 = np.flatnonzero(np.r_[True, np.diff(self.k) != 0])
        self.start23 = np.flatnonzero(np.r_[True, np.diff(self.k2) != 0])
        if self.start2.size != self.J2 or self.start3.size != self.J3 or self.start23.size != self.J3:
            raise ValueError("every level-2 and level-3 unit needs records, sorted by unit")
        self.offset = glm.offset
        self.const = self.family.constant(self.y, self.trials)
        self.xg_off = None
        self.u2 = np.zeros((self.J2, self.q2))
        self.u3 = np.zeros((self.J3, self.q3))
        self.b2 = np.zeros((self.J2, self.q2))
        self.b3 = np.zeros((self.J3, self.q3))
        self.count = 0
        self._memo = None
        # the weights of the log-determinants: Σ_j α_j log|Hjj| + Σ_k β_k log|S_k| (None: all 1; sampling
        # weights set them, nested_laplace_weights.py)
        self.alpha = self.beta = None
        self.robust_factor = 1.0  # the sandwich's small-sample factor: CR0

    # ------------------------------------------------------------------ per-unit sums
    def _s2(self, v):
        return np.add.reduceat(v, self.start2, axis=0)

    def _s3(self, v):
        return np.add.reduceat(v, self.start3, axis=0)

    def _s23(self, v):
        return np.add.reduceat(v, self.start23, axis=0)

    def _cross(self, A, B, w, s):
        """Per unit Σ w_i A_i B_i' (units by the summation s)."""
        return s(np.einsum("ia,ib,i->iab", A, B, w))

    def _parts(self, A, B, W):
        """The arrowhead pieces: Hjj⁻¹ (J2,q2,q2), P (J2,q2,q3), S (J3,q3,q3), log|H| per level-3 unit."""
        Hjj = self._cross(A, A, W, self._s2) + np.eye(self.q2)
        Hj3 = self._cross(A, B, W, self._s2)
        H33 = self._cross(B, B, W, self._s3) + np.eye(self.q3)
        Hinv = _inv(Hjj) if self.q2 else Hjj
        P = Hinv @ Hj3
        S = H33 - self._s23(np.einsum("jab,jac->jbc", Hj3, P)) if self.J2 else H33
        ld2 = np.linalg.slogdet(Hjj)[1] if self.q2 else np.zeros(self.J2)
        ld3 = np.linalg.slogdet(S)[1] if self.q3 else np.zeros(self.J3)
        if self.alpha is not None:
            ld2, ld3 = self.alpha * ld2, self.beta * ld3
        return Hinv, P, S, self._s23(ld2) + ld3

    def _solve(self, Hinv, P, Sinv, g2, g3):
        """H⁻¹(g2, g3) by the arrowhead's Schur complement (module docstring)."""
        h2 = np.einsum("jab,jb->ja", Hinv, g2)
        d3 = np.einsum("kab,kb->ka", Sinv, g3 - self._s23(np.einsum("jab,ja->jb", P, g2)))
        return h2 - np.einsum("jab,jb->ja", P, d3[self.k2]), d3

    def modes(self, gamma, L2, L3, tol=1e-10, maxit=100):
        """Newton for every level-3 unit's (û3, û2) at once, step halving per level-3 unit on its
        penalised log-likelihood. Returns (A, B, û2, û3, η, (ℓ, ℓ', W, κ3), arrowhead parts)."""
        self.count += 1
        A, B = self.Z2 @ L2, self.Z3 @ L3
        base = self.X @ gamma
        if self.offset is not None:
            base = base + self.offset
        u2 = self.b2 @ np.linalg.pinv(L2).T if self.q2 else self.u2
        u3 = self.b3 @ np.linalg.pinv(L3).T if self.q3 else self.u3

        def state(u2, u3):
            eta = base + np.einsum("ia,ia->i", A, u2[self.j]) + np.einsum("ia,ia->i", B, u3[self.k])
            ev = self.family.evaluate(eta, self.y, self.trials)
            pl = self._s3(ev[0]) - 0.5 * self._s23(np.sum(u2 * u2, axis=1)) - 0.5 * np.sum(u3 * u3, axis=1)
            return eta, ev, pl

        eta, ev, pl = state(u2, u3)
        # whether Newton's step fell below tol (the modes found); False after maxit passes without it, which
        # laplace_levels reads at its final point: the deviance and its gradient assume exact modes
        self.modes_found = False
        for _ in range(maxit):
            ll, dl, W, _ = ev
            Hinv, P, S, _ld = self._parts(A, B, W)
            g2 = self._s2(A * dl[:, None]) - u2
            g3 = self._s3(B * dl[:, None]) - u3
            d2, d3 = self._solve(Hinv, P, _inv(S), g2, g3)
            if max(np.max(np.abs(d2), initial=0.0), np.max(np.abs(d3), initial=0.0)) < tol:
                self.modes_found = True
                break
            # or the log-posterior can rise by no more than its Newton decrement ½ g'H⁻¹g, at most
            # hglm.MODE_DECREMENT per level-3 unit (a rare-event unit's step can stay near 1e-9 at its mode)
            self.modes_found = bool(0.5 * (np.sum(g2 * d2) + np.sum(g3 * d3)) <= MODE_DECREMENT * self.J3)
            t = np.ones(self.J3)
            for _h in range(40):
                n2, n3 = u2 + t[self.k2][:, None] * d2, u3 + t[:, None] * d3
                etan, evn, pln = state(n2, n3)
                worse = ~(pln >= pl - 1e-12 * np.abs(pl))
                if not worse.any():
                    break
                t = np.where(worse, 0.5 * t, t)
            u2, u3, eta, ev, pl = n2, n3, etan, evn, pln
        self.u2, self.u3 = u2, u3
        self.b2, self.b3 = u2 @ L2.T, u3 @ L3.T
        parts = self._parts(A, B, ev[2])
        return A, B, u2, u3, eta, ev, parts

    def evaluate(self, gamma, L2, L3, grad: bool = True):
        """The deviance, and with grad (∂d/∂γ, ∂d/∂Λ2, ∂d/∂Λ3), exactly (module docstring)."""
        key = (np.asarray(gamma, float).tobytes(), L2.tobytes(), L3.tobytes(), grad)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        A, B, u2, u3, eta, (ll, dl, W, k3), (Hinv, P, S, ld) = self.modes(gamma, L2, L3)
        dev = float(-2.0 * (np.sum(ll) + self.const) + np.sum(u2 * u2) + np.sum(u3 * u3) + np.sum(ld))
        if not grad:
            out = dev
        else:
            Sinv = _inv(S)
            Hj, Pj, Sk = Hinv[self.j], P[self.j], Sinv[self.k]
            ha = np.einsum("iab,ib->ia", Hj, A)  # Hjj⁻¹a_i
            e = B - np.einsum("iab,ia->ib", Pj, A)  # b_i − Pj'a_i
            se = np.einsum("iab,ib->ia", Sk, e)  # S⁻¹e_i
            if self.alpha is None:
                c = np.einsum("ia,ia->i", A, ha) + np.einsum("ia,ia->i", e, se)
            else:  # α_j log|Hjj| + β_k log|S_k| = β_k log|H_k| + (α_j − β_k) log|Hjj| (nested_laplace_weights.py)
                al, be = self.alpha[self.j], self.beta[self.k]
                c = al * np.einsum("ia,ia->i", A, ha) + be * np.einsum("ia,ia->i", e, se)
                ha, se = al[:, None] * ha, be[:, None] * se
            r = k3 * c
            v2, v3 = self._solve(Hinv, P, Sinv, self._s2(A * r[:, None]), self._s3(B * r[:, None]))
            s = np.einsum("ia,ia->i", A, v2[self.j]) + np.einsum("ia,ia->i", B, v3[self.k])
            w = r - W * s - 2.0 * dl
            g_gamma = self.X.T @ w
            m2 = ha - np.einsum("iab,ib->ia", Pj, se)
            M2 = 2.0 * W[:, None] * m2 + w[:, None] * u2[self.j] + dl[:, None] * v2[self.j]
            M3 = 2.0 * W[:, None] * se + w[:, None] * u3[self.k] + dl[:, None] * v3[self.k]
            out = dev, g_gamma, self.Z2.T @ M2, self.Z3.T @ M3
            # each level-3 unit's share (d is a sum over them: H is block diagonal across them)
            self.unit_parts = (self._s3(self.X * w[:, None]), self._s3(np.einsum("ia,ib->iab", self.Z2, M2)),
                               self._s3(np.einsum("ia,ib->iab", self.Z3, M3)))
        self._memo = (key, out)
        return out

    def unit_scores(self, gamma, L2, L3, diagonal=(False, False)) -> np.ndarray:
        """Each level-3 unit's score ∂log L_k/∂(θ, γ) = −½∂d_k/∂(θ, γ), (J3, n_θ + p)."""
        self._memo = None
        self.evaluate(gamma, L2, L3)
        sg, s2, s3 = self.unit_parts
        i2, i3 = _tri(self.q2, diagonal[0]), _tri(self.q3, diagonal[1])
        return -0.5 * np.column_stack([s2[:, i2[0], i2[1]], s3[:, i3[0], i3[1]], sg])

    def posterior(self, gamma, L2, L3):
        """(b̂2, Var b2, b̂3, Var b3) at the modes: b̂ = Λû, Var ≈ Λ(H⁻¹)blockΛ' (the joint posterior's
        diagonal blocks: (H⁻¹)jj = Hjj⁻¹ + PjS⁻¹Pj', (H⁻¹)33 = S⁻¹)."""
        A, B, u2, u3, eta, ev, (Hinv, P, S, _) = self.modes(gamma, L2, L3)
        Sinv = _inv(S)
        V2 = Hinv + P @ Sinv[self.k2] @ P.transpose(0, 2, 1)
        return (u2 @ L2.T, L2 @ V2 @ L2.T, u3 @ L3.T, L3 @ Sinv @ L3.T, eta)


# ====================================================================== the search and the certificate

def _tri(q, diagonal: bool = False):
    """The positions of θ in Λ: its lower triangle, or its diagonal for a diagonal τ."""
    return (np.arange(q), np.arange(q)) if diagonal else np.tril_indices(q)


def _pack(gamma, L2, L3, diagonal=(False, False)):
    return np.concatenate([L2[_tri(L2.shape[0], diagonal[0])], L3[_tri(L3.shape[0], diagonal[1])], gamma])


def _unpack(x, q2, q3, diagonal=(False, False)):
    i2, i3 = _tri(q2, diagonal[0]), _tri(q3, diagonal[1])
    n2, n3 = i2[0].size, i3[0].size
    L2, L3 = np.zeros((q2, q2)), np.zeros((q3, q3))
    L2[i2] = x[:n2]
    L3[i3] = x[n2:n2 + n3]
    return x[n2 + n3:], L2, L3


def _psd_chol(G):
    """A lower-triangular factor of a PSD G (Cholesky, or from the eigen factor by QR when singular)."""
    G = 0.5 * (G + G.T)
    if G.shape[0] == 0:
        return G
    try:
        return np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        w, V = np.linalg.eigh(G)
        F = V * np.sqrt(np.clip(w, 0.0, None))
        R = np.linalg.qr(F.T, mode="r")
        L = R.T
        return L * np.where(np.diag(L) < 0, -1.0, 1.0)[None, :]


class Profiled:
    """certificate.DevianceObjective over (τπ, τβ) (σ² is 1: G = τ) with γ profiled out: Newton steps
    in γ with the exact ∂d/∂γ and the γ block of the deviance Hessian at the optimum; Γℓ = ∂d/∂Gℓ from
    ∂d/∂Λℓ through the Cholesky derivative dΛ = ΛΦ(Λ⁻¹dGΛ⁻ᵀ) at a positive definite block, by
    one-sided differences of the profiled deviance at a singular one."""

    def __init__(self, cond: NestedLaplace, gamma, Hgg, diagonal=(False, False)):
        self.cond, self.gamma, self.Hgg, self.diagonal = cond, gamma.copy(), Hgg, diagonal

    def _profile(self, L2, L3):
        gamma = self.gamma.copy()
        for it in range(8):
            out = self.cond.evaluate(gamma, L2, L3)
            step = np.linalg.solve(self.Hgg, out[1])
            if np.max(np.abs(step), initial=0.0) < 1e-11 or it == 7:
                break
            gamma = gamma - step
        self.last_gamma = gamma
        return out

    def _factor(self, G, diagonal: bool):
        return np.diag(np.sqrt(np.clip(np.diag(G), 0.0, None))) if diagonal else _psd_chol(G)

    def value(self, Gs) -> float:
        if any(np.linalg.eigvalsh(0.5 * (G + G.T))[0] < -1e-12 for G in Gs if G.size):
            return np.inf
        return self._profile(*(self._factor(G, d) for G, d in zip(Gs, self.diagonal)))[0]

    def noise(self, Gs) -> float:
        return 0.0

    def at(self, Gs, factors=None):
        Gs = tuple(0.5 * (G + G.T) for G in Gs)
        if any(G.size and np.linalg.eigvalsh(G)[0] < -1e-12 for G in Gs):
            return np.inf, tuple(np.zeros_like(G) for G in Gs)
        Ls = tuple(self._factor(G, d) for G, d in zip(Gs, self.diagonal))
        dev, _, gL2, gL3 = self._profile(*Ls)
        Gams = []
        for b, (G, L, D) in enumerate(zip(Gs, Ls, (gL2, gL3))):
            q = G.shape[0]
            if q == 0:
                Gams.append(np.zeros((0, 0)))
            elif np.linalg.eigvalsh(G)[0] > 1e-8 * max(1.0, float(np.abs(G).max())):
                Pm = lower_phi(L.T @ (np.diag(np.diag(D)) if self.diagonal[b] else np.tril(D)))
                Li = np.linalg.inv(L)
                Gam = Li.T @ (0.5 * (Pm + Pm.T)) @ Li
                Gams.append(0.5 * (Gam + Gam.T))
            else:
                Gams.append(self._singular_gradient(Gs, b, dev))
            self._profile(*Ls)
        return dev, tuple(Gams)


    def _singular_gradient(self, Gs, b: int, dev: float) -> np.ndarray:
        """Γ = ∂d/∂G of a singular block b by differences along directions that stay in the PSD cone.
        A step along E_ac (a ≠ c) leaves the cone at a singular G (G ± hE_ac is indefinite when G's null
        space meets e_a or e_c), where the deviance is not defined; the steps along vv' are PSD for any v,
        and d/dh d(G + hvv') = v'Γv. So Γ_aa is the derivative along e_ae_a', and Γ_ac a quarter of the
        difference between the derivatives along (e_a + e_c)(e_a + e_c)' and (e_a − e_c)(e_a − e_c)'.
        Each derivative is central where G − hvv' is still PSD, else one-sided of second order,
        (4d(h) − d(2h) − 3d(0))/2h."""
        G = Gs[b]
        q = G.shape[0]
        h = 1e-5 * max(1.0, float(np.abs(G).max()))

        def along(v):
            V = np.outer(v, v)

            def f(t):
                Gt = list(Gs)
                Gt[b] = G + t * V
                return self.value(tuple(Gt))

            if np.linalg.eigvalsh(G - h * V)[0] >= 0:
                return (f(h) - f(-h)) / (2 * h)
            return (4.0 * f(h) - f(2 * h) - 3.0 * dev) / (2 * h)

        Gam = np.zeros((q, q))
        eye = np.eye(q)
        for a in range(q):
            Gam[a, a] = along(eye[a])
            if not self.diagonal[b]:  # a diagonal τ's deviance reads diag(G) only: Γ_ac = 0
                for c in range(a):
                    Gam[a, c] = Gam[c, a] = 0.25 * (along(eye[a] + eye[c]) - along(eye[a] - eye[c]))
        return Gam


def _escape(obj: Profiled, Gs, cert, dev: float):
    """The restart point of an uncertified boundary optimum: (Gs, γ) a step along the certificate's
    descent direction, lower than `dev`, moved just inside the cone (1e-4 of the block's scale on its
    diagonal); None when that step does not lower the deviance."""
    block, D = cert.descent
    G_new = list(Gs)
    G_new[block] = Gs[block] + cert.descent_step * D
    if not obj.value(tuple(G_new)) < dev - TOL:
        return None
    gamma = obj.last_gamma.copy()
    q = G_new[block].shape[0]
    G_new[block] = G_new[block] + 1e-4 * max(1.0, float(np.abs(G_new[block]).max())) * np.eye(q)
    return tuple(G_new), gamma


@dataclass
class NestedLaplaceResult:
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray  # CR0 sandwich clustered on level-3 units
    taus: tuple  # (τπ, τβ)
    deviance: float
    eb: tuple  # (b̂2 (J2, q2), b̂3 (J3, q3))
    eb_var: tuple
    eta: np.ndarray
    iterations: int
    evaluations: int
    certificate: object  # certificate.BlockCertificate
    converged: bool
    n_params: int
    hessian: np.ndarray | None = None
    failed: list[str] = field(default_factory=list)


def laplace_levels(glm: LevelsGLMData, start=None, diagonal=(False, False), cond: NestedLaplace | None = None
                   ) -> NestedLaplaceResult:
    """Laplace ML of a three-level HGLM, certified over (τπ, τβ) PSD, or non-negative diagonal where
    `diagonal` says so (module docstring). `start`: an object with gamma and taus (a PQL fit), or None to
    run full PQL for it. `cond`: the deviance to minimise, NestedLaplace(glm) when None (with sampling
    weights nested_laplace_weights.WeightedNestedLaplace, whose robust covariance takes its robust_factor)."""
    from .nested_glmm import pql_levels

    cond = NestedLaplace(glm) if cond is None else cond
    q2, q3, p = cond.q2, cond.q3, cond.p
    if start is None:
        try:
            start = pql_levels(glm, reml=False, stopmacro=1e-4, check=False)
        except (FloatingPointError, np.linalg.LinAlgError):
            start = None
    diagonal = tuple(bool(d) for d in diagonal)
    i2, i3 = _tri(q2, diagonal[0]), _tri(q3, diagonal[1])
    fac = Profiled(cond, np.zeros(p), None, diagonal)._factor
    if start is not None and np.all(np.isfinite(start.gamma)):
        x = _pack(np.asarray(start.gamma, float), fac(start.taus[0], diagonal[0]), fac(start.taus[1], diagonal[1]),
                  diagonal)
    else:
        x = _pack(np.zeros(p), 0.5 * np.eye(q2), 0.5 * np.eye(q3), diagonal)
    nt = x.size - p

    def fg(x):
        gamma, L2, L3 = _unpack(x, q2, q3, diagonal)
        try:
            dev, gg, g2, g3 = cond.evaluate(gamma, L2, L3)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(x)
        if not np.isfinite(dev):
            return np.inf, np.zeros_like(x)
        return dev, np.concatenate([g2[i2], g3[i3], gg])

    def grad(x):
        return fg(x)[1]

    iters = 0
    for attempt in range(4):
        f, g = fg(x)
        H0 = difference_hessian(grad, x, g0=g, h=1e-6)
        x, f, g, n1, ok = damped_newton(fg, x, f, g, H0, 50, 1e-6)
        iters += n1
        if not ok:
            res = lbfgsb.minimize(fg, x, maxiter=1000, ftol=1e-14, gtol=1e-7)
            x = res.x
            f, g = fg(x)
            iters += int(res.nit)
        Hs = difference_hessian(grad, x, h=1e-5)
        x1 = x
        x, f, g, n2, ok = damped_newton(fg, x, f, g, Hs, 30, 1e-11)
        iters += n2
        if np.max(np.abs(x - x1)) > 1e-5 * (1.0 + np.max(np.abs(x))):
            Hs = difference_hessian(grad, x, h=1e-5)
            x, f, g, n3, ok = damped_newton(fg, x, f, g, Hs, 30, 1e-11)
            iters += n3
        gamma, L2, L3 = _unpack(x, q2, q3, diagonal)
        # Λ's diagonal non-negative (a column's sign flips with its u): flip the θ entries and the Hessian
        sgn = np.ones(x.size)
        off = 0
        for L, idx in ((L2, i2), (L3, i3)):
            flip = np.where(np.diag(L) < 0, -1.0, 1.0)
            sgn[off:off + idx[0].size] = flip[idx[1]]
            off += idx[0].size
        x, g, Hs = x * sgn, g * sgn, Hs * np.outer(sgn, sgn)
        gamma, L2, L3 = _unpack(x, q2, q3, diagonal)
        f, _ = fg(x)
        Gs = (L2 @ L2.T, L3 @ L3.T)
        Hgg = Hs[nt:, nt:]
        obj = Profiled(cond, gamma, Hgg, diagonal)
        face = BlockFace(Gs, diagonal=diagonal)
        names = ("tau_pi", "tau_beta")
        if face.ranks == (q2, q3):
            dev, Gams = obj.at(Gs)
            sol = np.linalg.solve(Hgg, np.column_stack([Hs[nt:, :nt], g[nt:]]))
            Hp = Hs[:nt, :nt] - Hs[:nt, nt:] @ sol[:, :nt]
            gp = g[:nt] - Hs[:nt, nt:] @ sol[:, nt]
            x0 = face.x0()

            def theta(xv):
                G2, G3 = face.G(xv)
                return np.concatenate([fac(G2, diagonal[0])[i2], fac(G3, diagonal[1])[i3]])

            gf, Hf = chain_to_face(theta, x0, face.size, nt, gp, Hp)
            cert = certify_blocks(obj, Gs, TOL, face_data=(face, x0, 0.5 * (Hf + Hf.T), gf, dev, Gams), diagonal=diagonal,
                                  names=names)
        else:
            cert = certify_blocks(obj, Gs, TOL, diagonal=diagonal, names=names)
        # Not a minimum: in Cholesky coordinates the search cannot leave a zero column of Λ by itself
        # (its gradient there is 0 whatever the deviance does), so restart it from the lower point along
        # the certificate's descent into the cone, just inside it (as hglm.ml_fit does at two levels)
        restart = None if cert.certified or cert.descent is None or attempt == 3 else _escape(obj, Gs, cert, f)
        if restart is None:
            break
        x = _pack(restart[1], fac(restart[0][0], diagonal[0]), fac(restart[0][1], diagonal[1]), diagonal)
    f, _ = fg(x)
    # cov(γ): the γ block of 2H⁻¹ as glmer; robust: the γ block of the CR0 sandwich A⁻¹(Σ_k s_ks_k')A⁻¹ over
    # (θ, γ), A = H/2 the Hessian of −log L, s_k level-3 unit k's exact score (as hglm._covariances)
    try:
        Ainv = 2.0 * np.linalg.inv(Hs)
        S = cond.unit_scores(gamma, L2, L3, diagonal)
        cov, robust = Ainv[nt:, nt:], (Ainv @ (S.T @ S) @ Ainv)[nt:, nt:]
        robust = robust * cond.robust_factor
    except np.linalg.LinAlgError:
        cov = robust = np.full((p, p), np.nan)
    b2, V2, b3, V3, eta = cond.posterior(gamma, L2, L3)
    if not getattr(cond, "modes_found", True):
        cert.failed.append("the modes were not found (Newton's step did not fall below its tolerance): "
                           "the Laplace deviance there is not verified")
        cert.certified = False
    failed = list(cert.failed)
    n_params = p + nt
    return NestedLaplaceResult(gamma=gamma, cov=0.5 * (cov + cov.T), robust_cov=0.5 * (robust + robust.T), taus=Gs,
                               deviance=float(f), eb=(b2, b3),
                               eb_var=(V2, V3), eta=eta, iterations=iters, evaluations=cond.count,
                               certificate=cert, converged=bool(cert.certified), n_params=n_params, hessian=Hs,
                               failed=failed)
