"""Multinomial outcomes: the two-level baseline-category logit model, fitted by Laplace (hglm.py's search,
certificate and covariances, over a vector linear predictor per record).

Model (HLM 7's, Raudenbush & Bryk 2002 §10.6): categories 1..M, the last the reference,

    log(P(Y_ij = m | b_j) / P(Y_ij = M | b_j)) = η_ijm = x_ij'γ_m + z_ij'b_jm,   m = 1..M−1,

each logit with its own γ_m (the same level-1 and level-2 equations) and its own random effects b_jm;
b_j = (b_j1, ..., b_j,M−1) ~ N(0, τ), τ of size (M−1)q, so the effects of one unit are correlated across
the logits. Parameters: γ = (γ_1, ..., γ_{M−1}) and b_j in that category-major order; b_j = Λu_j.

Per record, with p = softmax(η, 0) (p_m = e^η_m / (1 + Σ e^η), the reference's logit 0) and y the
indicator of the observed category among 1..M−1 (all 0 for the reference):

    ℓ = y'η − log(1 + Σ_m e^η_m),   ℓ_η = y − p,   W = −ℓ_ηη = diag(p) − pp',
    ∂W_ab/∂η_c = δ_ab W_ac − W_ac p_b − p_a W_bc.

ℓ is concave in η (W is a covariance matrix), so each unit's mode is unique.

Laplace: per unit, f_j(u) = Σ_i ℓ_i(η_i) − ½|u|² with η_i = η0_i + Z_i'Λu, Z_i = I_{M−1} ⊗ z_i (Q × (M−1),
Q = (M−1)q); Newton for û_j with H_j = I + Λ'A_jΛ, A_j = Σ_i Z_iW_iZ_i' (block (a, b) = Σ_i W_i,ab z_iz_i');
d = −2Σ_j [ℓ_j(û_j) − ½|û_j|² − ½ log|H_j|].

Exact gradient (hglm.py's derivation with a vector η per record). −½ d log|H| has, besides the terms in dΛ,
−½ tr(ΛH⁻¹Λ' dA) = Σ_i c_i'dη̂_i with, for Ψ = −½H⁻¹ and E_i = Z_i'ΛΨΛ'Z_i ((M−1)², E_ab = z_i'(ΛΨΛ')_ab z_i),

    c_i,c = Σ_ab E_ab ∂W_ab/∂η_c = [W_i (diag E_i − 2E_i p_i)]_c     (E and W symmetric).

dη̂_i = X_i dγ + Z_i'(dΛ û + Λ dû), and the implicit function theorem on ∇f(û) = 0 gives
H dû = dΛ'ĝ − Λ'Σ_i Z_iW_i(X_i dγ + Z_i'dΛ û), ĝ = Σ_i Z_iℓ_η,i. So with m = H⁻¹(ḡ + Λ'Σ_i Z_ic_i), ḡ = Λ'ĝ − û
(0 at the mode), r_i = Z_i'Λm, per unit

    ∂log I/∂γ_m = Σ_i x_i (ℓ_η,i + c_i − W_i r_i)_m,
    ∂log I/∂Λ = 2AΛΨ + (ĝ + Σ_i Z_ic_i)û' + ĝm' − (AΛm)û',

as hglm.py's, and ∂d = −2Σ_j ∂log I_j. tests/test_multinomial.py checks it against differences of the
deviance, and the deviance against numerical integration in R (tests/reference_scripts/multinomial_ghq.R).

With M = 2 this is the Bernoulli Laplace fit (the test checks it).

Sampling weights (hglm_weights.py): every per-record term is linear in log f, so a record of weight
w_i has ℓ, ℓ_η, W and ∂W all times w_i; W travels as a Curvature (p and the weight), which scales like
the arrays, and the per-unit sums of the deviance and its gradient take w_j.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .hglm import MODE_DECREMENT, Conditional, GLMData, ml_fit


class Curvature:
    """W = s·(diag(p) − pp') per record (s the record's weight, 1 without weights), kept as p and s:
    never formed as an (N, M−1, M−1) array."""

    def __init__(self, p: np.ndarray, s: np.ndarray | None = None):
        self.p, self.s = p, s

    def __mul__(self, w: np.ndarray) -> "Curvature":
        return Curvature(self.p, w if self.s is None else self.s * w)

    def entry(self, a: int, c: int) -> np.ndarray:
        """W_ac per record."""
        p = self.p
        w = (p[:, a] if a == c else 0.0) - p[:, a] * p[:, c]
        return w if self.s is None else w * self.s

    def times(self, v: np.ndarray) -> np.ndarray:
        """W v per record, (N, M−1)."""
        p = self.p
        t = p[:, 0] * v[:, 0]
        for m in range(1, p.shape[1]):
            t += p[:, m] * v[:, m]
        if self.s is not None:
            t = t * self.s
        out = np.empty(p.shape, order="F")
        for m in range(p.shape[1]):
            out[:, m] = p[:, m] * ((v[:, m] if self.s is None else v[:, m] * self.s) - t)
        return out


class MultinomialFamily:
    """The per-record kernel of the baseline-category logits for one data set (the codes y 1..M fixed)."""

    name = "multinomial"
    link = "logit"
    ratio_name = "odds_ratio"

    def __init__(self, ncat: int, y: np.ndarray):
        self.ncat = int(ncat)
        self.y = np.asarray(y, dtype=np.int64)  # 1..M, M the reference
        self.Y = np.asfortranarray(self.y[:, None] == np.arange(1, self.ncat)[None, :], dtype=float)  # (N, M−1)

    # Per-record arrays are (N, M−1) in column-major order and worked on a column at a time: reductions
    # over a short trailing axis are several times slower in numpy than M − 1 passes over columns.
    def probabilities(self, eta: np.ndarray):
        """(p (N, M−1), log(1 + Σ e^η)) without overflow: the log-sum-exp shifted by max(0, max η)."""
        m1 = eta.shape[1]
        mx = np.maximum(eta[:, 0], 0.0)
        for m in range(1, m1):
            np.maximum(mx, eta[:, m], out=mx)
        p = np.empty(eta.shape, order="F")
        s = np.exp(-mx)
        for m in range(m1):
            p[:, m] = np.exp(eta[:, m] - mx)
            s += p[:, m]
        for m in range(m1):
            p[:, m] /= s
        return p, mx + np.log(s)

    def evaluate(self, eta: np.ndarray, y=None, n=None, second: bool = True):
        """(ℓ (N,), ℓ_η = y − p (N, M−1), W = −ℓ_ηη as a Curvature)."""
        p, lse = self.probabilities(eta)
        ll = -lse
        for m in range(eta.shape[1]):
            ll += self.Y[:, m] * eta[:, m]
        return ll, self.Y - p, Curvature(p)

    def constant(self, y=None, n=None) -> float:
        return 0.0

    def loglik_terms(self, eta, y=None, n=None):
        return self.evaluate(eta)[0]


class MultinomialData(GLMData):
    """GLMData whose linear predictor has M − 1 columns: p and q count all the logits' γ and random
    effects ((M−1)·pf and (M−1)·qf; the search, certificate and covariances see one vector and one τ);
    pf and qf are one logit's."""

    def __post_init__(self):
        super().__post_init__()
        self.m1 = self.family.ncat - 1
        self.pf, self.qf = self.p, self.q
        self.p, self.q = self.m1 * self.pf, self.m1 * self.qf

    def eta(self, gamma, b):
        """η (N, M−1) at γ (category-major) and b (J, Q) or None."""
        g = np.asarray(gamma, float).reshape(self.m1, self.pf)
        out = np.empty((self.N, self.m1), order="F")
        for m in range(self.m1):
            beta = np.einsum("jkp,p->jk", self.B, g[m])
            if b is not None:
                beta[:, self.rnd] += b[:, m * self.qf:(m + 1) * self.qf]
            out[:, m] = self.rowdot(self.LT, beta)
        return out

    def zdot(self, v: np.ndarray) -> np.ndarray:
        """Z_i'v_j per record (N, M−1) for per-unit v (J, Q)."""
        qf = self.qf
        out = np.empty((self.N, self.m1), order="F")
        for m in range(self.m1):
            out[:, m] = self.rowdot(self.ZT, v[:, m * qf:(m + 1) * qf])
        return out

    def zsum(self, v: np.ndarray) -> np.ndarray:
        """Σ_i Z_iv_i per unit (J, Q) for per-record v (N, M−1)."""
        return np.concatenate([self.Zv(v[:, m]) for m in range(self.m1)], axis=1)

    def xsum(self, v: np.ndarray, per_unit: bool = False) -> np.ndarray:
        """Σ_i X_i'v_i (p,), or per unit (J, p), for per-record v (N, M−1)."""
        if per_unit:
            return np.concatenate([np.einsum("jkp,jk->jp", self.B, self.Lv(v[:, m])) for m in range(self.m1)], axis=1)
        return np.concatenate([self.Xv(v[:, m]) for m in range(self.m1)])

    def a_matrix(self, W: Curvature) -> np.ndarray:
        """A_j = Σ_i Z_iW_iZ_i' (J, Q, Q), block (a, b) = Z_j' diag(W_ab) Z_j."""
        qf, m1 = self.qf, self.m1
        A = np.empty((self.J, self.q, self.q))
        for a in range(m1):
            for c in range(a, m1):
                blk = self.ZWZ(W.entry(a, c))
                A[:, a * qf:(a + 1) * qf, c * qf:(c + 1) * qf] = blk
                if c != a:
                    A[:, c * qf:(c + 1) * qf, a * qf:(a + 1) * qf] = blk.transpose(0, 2, 1)
        return A

    def e_matrix(self, S: np.ndarray) -> np.ndarray:
        """E_i = Z_i'S_jZ_i per record (N, M−1, M−1) for per-unit symmetric S (J, Q, Q)."""
        qf, m1, ZT, unit = self.qf, self.m1, self.ZT, self.unit
        E = np.empty((self.N, m1, m1), order="F")
        for a in range(m1):
            for c in range(a, m1):
                blk = S[:, a * qf:(a + 1) * qf, c * qf:(c + 1) * qf]
                h = np.zeros(self.N)
                for k in range(qf):
                    for l in range(qf):
                        h += ZT[k] * ZT[l] * blk[:, k, l][unit]
                E[:, a, c] = E[:, c, a] = h
        return E

    def loglik_units(self, eta: np.ndarray) -> np.ndarray:
        return self.usum(self.family.evaluate(eta)[0])

    def _glm_loglik(self, gamma) -> float:
        """Σ_j w_j ℓ_j of the model without random effects (w_j = 1 without level-2 weights)."""
        return self.unit_total(self.loglik_units(self.eta(gamma, None)))

    def conditional(self, nodes: int = 1):
        if nodes != 1:
            raise ValueError("multinomial: Laplace only")
        return MultinomialConditional(self)

    def glm_gamma(self, maxit: int = 100) -> np.ndarray:
        """γ of the multinomial logit model without random effects: Newton with its exact Hessian
        −Σ X_i'W_iX_i (block (a, b) = B'LWL(W_ab)B) and step halving, from γ = 0."""
        if getattr(self, "_glm", None) is not None:
            return self._glm.copy()
        pf, m1 = self.pf, self.m1
        gamma = np.zeros(self.p)
        ll = self._glm_loglik(gamma)
        for _ in range(maxit):
            _, l1, W = self.family.evaluate(self.eta(gamma, None))
            g = self.xsum(self.level2(l1))
            H = np.empty((self.p, self.p))
            for a in range(m1):
                for c in range(a, m1):
                    blk = np.einsum("jkp,jkl,jlr->pr", self.B, self.LWL(self.level2(W.entry(a, c))), self.B)
                    H[a * pf:(a + 1) * pf, c * pf:(c + 1) * pf] = blk
                    H[c * pf:(c + 1) * pf, a * pf:(a + 1) * pf] = blk.T
            step = np.linalg.lstsq(H + 1e-10 * np.trace(H) * np.eye(self.p), g, rcond=None)[0]
            t = 1.0
            while t > 1e-8:
                new = self._glm_loglik(gamma + t * step)
                if np.isfinite(new) and new >= ll:
                    break
                t *= 0.5
            else:
                break
            gamma, done = gamma + t * step, new - ll < 1e-13 * (1.0 + abs(ll))
            ll = new
            if done:
                break
        self._glm = gamma
        return gamma.copy()


class MultinomialConditional(Conditional):
    """The Laplace deviance of the multinomial model at (γ, Λ) and its exact gradient (module docstring)."""

    # the difference Hessian's Taylor shortcut is for a scalar η (hglm.py): here every evaluation is exact
    taylor = property(lambda self: False, lambda self, value: None)

    def __init__(self, data: MultinomialData):
        super().__init__(data, 1)

    def modes(self, gamma, lam, tol=1e-10, maxit=60):
        """Newton for û_j in every unit at once, with per-unit step halving (hglm.Conditional.modes
        with the vector η). Keeps (ℓ, ℓ_η, W) at η̂ in self.last."""
        d, fam = self.data, self.data.family
        self.count += 1
        u = self.b @ np.linalg.pinv(lam).T
        eta0 = d.eta(gamma, None)

        def state(u):
            eta = eta0 + d.zdot(u @ lam.T)
            ev = fam.evaluate(eta)
            return eta, d.usum(ev[0]) - 0.5 * np.sum(u * u, axis=1), ev

        eta, pl, ev = state(u)
        I = np.eye(d.q)
        # the units whose Newton step is still above tol: after maxit passes their û is no mode (read by
        # hglm._ml_fit_one at the final point, as for hglm.Conditional)
        self.unsolved = np.zeros(d.J, bool)
        for _ in range(maxit):
            _, l1, W = ev
            H = np.einsum("ba,jbc,cd->jad", lam, d.a_matrix(W), lam) + I
            rhs = d.zsum(l1) @ lam - u
            step = np.linalg.solve(H, rhs[..., None])[..., 0]
            stepping = np.max(np.abs(step), axis=1) >= tol
            # unsolved: still stepping with a Newton decrement above hglm.MODE_DECREMENT (Conditional.modes)
            self.unsolved = stepping & ~(0.5 * np.sum(rhs * step, axis=1) <= MODE_DECREMENT)
            if not stepping.any():
                break
            t = np.ones(d.J)
            for _h in range(30):
                un = u + t[:, None] * step
                etan, pln, evn = state(un)
                worse = pln < pl - 1e-12 * np.abs(pl)
                if not worse.any():
                    break
                t = np.where(worse, t * 0.5, t)
            u, eta, pl, ev = un, etan, pln, evn
        self.b = u @ lam.T
        self.last = ev
        return u, eta

    def _evaluate(self, gamma, lam, grad):
        d, fam = self.data, self.data.family
        u, eta = self.modes(gamma, lam)
        ll, l1, W = self.last
        p = W.p
        A = d.a_matrix(W)
        H = np.einsum("ba,jbc,cd->jad", lam, A, lam) + np.eye(d.q)
        C = np.linalg.cholesky(H)
        logdet = 2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum(axis=1)
        # with level-2 weights −2 Σ_j w_j log I_j (hglm_weights.py)
        dev = -2.0 * d.unit_total(d.usum(ll) - 0.5 * np.sum(u * u, axis=1) - 0.5 * logdet)
        if not grad:
            return dev
        Hinv = np.linalg.inv(H)
        Psi = -0.5 * Hinv
        E = d.e_matrix(lam @ Psi @ lam.T)
        v = np.empty(p.shape, order="F")  # diag(E) − 2Ep
        for a in range(d.m1):
            v[:, a] = E[:, a, a] - 2.0 * sum(E[:, a, b] * p[:, b] for b in range(d.m1))
        c = W.times(v)
        ghat = d.zsum(l1)
        Zc = d.zsum(c)
        gbar = ghat @ lam - u
        m = np.einsum("jab,jb->ja", Hinv, gbar + Zc @ lam)
        Lm = m @ lam.T
        r = d.zdot(Lm)
        vg = l1 + c - W.times(r)
        ggam = d.xsum(d.level2(vg))
        AL = A @ lam
        ALm = np.einsum("jab,jb->ja", A, Lm)
        if self.keep_units or d.w2 is not None:
            # each unit's scores, times w_j when weighted: summed for the gradient, kept for the sandwich
            sg = d.xsum(vg, per_unit=True)
            sl = (2.0 * np.einsum("jab,jbc->jac", AL, Psi) + np.einsum("ja,jb->jab", ghat + Zc, u)
                  + np.einsum("ja,jb->jab", ghat, m) - np.einsum("ja,jb->jab", ALm, u))
            if d.w2 is not None:
                sg, sl = sg * d.w2[:, None], sl * d.w2[:, None, None]
            if self.keep_units:
                self.unit_scores = (sg, sl)
            if d.w2 is not None:
                return dev, -2.0 * ggam, -2.0 * sl.sum(axis=0)
        glam = (2.0 * np.einsum("jab,jbc->ac", AL, Psi) + (ghat + Zc).T @ u + ghat.T @ m - ALm.T @ u)
        return dev, -2.0 * ggam, -2.0 * glam

    def posterior(self, gamma, lam):
        """b̂ = Λû and Var(b | y) ≈ ΛH⁻¹Λ' per unit, at the mode."""
        d = self.data
        u, _ = self.modes(gamma, lam)
        H = np.einsum("ba,jbc,cd->jad", lam, d.a_matrix(self.last[2]), lam) + np.eye(d.q)
        return u @ lam.T, np.einsum("ab,jbc,dc->jad", lam, np.linalg.inv(H), lam)


def fit(data: MultinomialData, diagonal: bool = False):
    """Laplace from the multinomial GLM without random effects, with hglm.ml_fit's starts (τ = I and ¼I,
    and τ = 0 compared, then the lower faces of a boundary optimum) and certificate."""
    x0 = data.glm_gamma()
    start = SimpleNamespace(gamma=x0, tau=np.eye(data.q), b=np.zeros((data.J, data.q)))
    return ml_fit(data, 1, start, diagonal=diagonal)
