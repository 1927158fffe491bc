"""Estimation for binary, binomial and count outcomes (two-level HGLM).

Data (GLMData): the level-1 design L (N×K, intercept first), the block design B (J×K×p) with
X_j = L_jB_j as in the linear engine, the random columns of L, the outcome, trials and offset.
All per-record work is a few passes over N-vectors; per-unit sums use np.add.reduceat, and the
per-unit q×q algebra is batched over units: there is no Python loop over units.

Conditional model: η_j = X_jγ + Z_jb_j (+ offset), b_j = Λu_j, u_j ~ N(0, I), τ = ΛΛ'.

PQL (Breslow & Clayton 1993; Raudenbush & Bryk 2002 ch. 10). Macro iterations linearise around
the current η = Xγ + Zb̂ (fixed plus EB random effects): working variate z = η − offset + ℓ'/W,
weights W (family.py). Micro iterations fit the linear mixed model z = Xγ + Zb + e,
e ~ N(0, σ²W⁻¹), by weighting the per-unit cross-products (√W L, √W z) and reusing the linear
engine's per-unit solve (unitsolve.py): σ² is fixed at 1, or profiled with --overdispersion.
REML by default (restricted PQL), ML with --ml (full PQL). Converged when
max|Δη| ≤ stopmacro·(1 + max|η|).

Population-average model (PA): η = Xγ (+ offset), with the linearised marginal working
covariance V_j = σ²W_j⁻¹ + Z_jτZ_j', τ and σ² held at their PQL values; γ iterated to a fixed
point of the GLS on the working variate (a GEE with that working covariance). Model-based SEs
(ΣX'V⁻¹X)⁻¹, robust SEs the CR0 sandwich on level-2 units.

Laplace (exact ML): for each unit the mode û_j of ℓ_j(u) − ½|u|² (Newton, vectorised), and

    d(γ, Λ) = −2Σℓ(û) + Σ|û_j|² + Σ log|H_j|,   H_j = I + Λ'Z_j'W_jZ_jΛ,

the same function glmer(nAGQ = 1) minimises. Its exact gradient (envelope theorem on û, plus
the dependence of W on η through κ3 = ∂W/∂η, canonical links):
with c_i = κ3_i z_i'ΛH⁻¹Λ'z_i, g_j = Z_j'ℓ', m_j = H_j⁻¹Λ'Z_j'c, A_j = Z_j'W_jZ_j,

    ∂d/∂γ = −2X'ℓ' + X'c − Σ_j X_j'W_jZ_jΛ m_j,
    ∂d/∂Λ = Σ_j [−2g_jû_j' + 2A_jΛH_j⁻¹ + (Z_j'c)û_j' + g_jm_j' − (A_jΛm_j)û_j'].

Adaptive Gauss–Hermite quadrature (AGQ, K points per dimension, product rule for q = 2, 3):
with R_j R_j' = H_j⁻¹ and (z_k, w_k) the rule for the standard normal,

    ∫ e^{ℓ_j(u)} φ_q(u) du ≈ |R_j| Σ_k w_k exp(ℓ_j(û_j + R_jz_k) − ½|û_j + R_jz_k|² + ½|z_k|²),

which is Laplace at K = 1 and glmer(nAGQ = K) at q = 1. The AGQ gradient is by central
differences (documented; AGQ is for small and medium data).

Standard errors of γ for Laplace and AGQ: as glmer, from the inverse of the Hessian of the
deviance in (θ, γ) (θ the lower triangle of Λ), by central differences of the gradient;
cov = 2H⁻¹.

The ML fits carry the optimality certificate of the linear engine (certificate.certify) over PSD
τ: the objective's at(G) profiles γ out (Newton steps at fixed G) and returns the Laplace or AGQ
deviance and Γ = ∂d/∂G. For Laplace, Γ = sym(½ ∂d/∂Λ · Λ⁻¹) with Λ a square factor of G (exact,
γ at its optimum so the γ part vanishes); at a singular G and for AGQ, Γ is by central differences
of the profiled deviance in the entries of G (documented, numerical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from .certificate import Certificate, certify
from .estimation import fit as linear_fit
from .family import Family
from .sufficient import model_stats, unit_cross_products
from .unitsolve import unit_solve

LOG_2PI = math.log(2 * math.pi)


class NotConverged(Exception):
    """PQL reached its iteration limit (the CLI exits 3)."""


@dataclass
class GLMData:
    family: Family
    L: np.ndarray  # (N, K)
    B: np.ndarray  # (J, K, p)
    offs: np.ndarray  # (J+1,)
    rnd: np.ndarray  # random columns of L (q,)
    y: np.ndarray
    trials: np.ndarray | None = None
    offset: np.ndarray | None = None  # log exposure

    def __post_init__(self):
        self.L = np.ascontiguousarray(self.L, dtype=float)
        self.N, self.K = self.L.shape
        self.J, _, self.p = self.B.shape
        self.q = len(self.rnd)
        self.starts = self.offs[:-1]
        self.unit = np.repeat(np.arange(self.J), np.diff(self.offs))
        self.Z = np.ascontiguousarray(self.L[:, self.rnd])
        self.const = self.family.constant(self.y, self.trials)

    # -------------------------------------------------------------- per-unit sums
    def usum(self, v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, self.starts, axis=0)

    def eta(self, gamma: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """Linear predictor per record, offset included."""
        beta = np.einsum("jkp,p->jk", self.B, gamma)
        if b is not None:
            beta[:, self.rnd] += b
        e = self.rowdot(self.L, beta)
        return e + self.offset if self.offset is not None else e

    def rowdot(self, M: np.ndarray, per_unit: np.ndarray) -> np.ndarray:
        """Σ_k M[i, k]·per_unit[unit(i), k] per record, one column at a time (faster than a gather of rows)."""
        e = M[:, 0] * per_unit[:, 0][self.unit]
        for k in range(1, M.shape[1]):
            e += M[:, k] * per_unit[:, k][self.unit]
        return e

    def quad(self, S: np.ndarray) -> np.ndarray:
        """z_i'S_jz_i per record for per-unit symmetric S (J, q, q)."""
        Z = self.Z
        h = Z[:, 0] * Z[:, 0] * S[:, 0, 0][self.unit]
        for a in range(self.q):
            for c in range(a + 1):
                if a or c:
                    h += (1.0 if a == c else 2.0) * Z[:, a] * Z[:, c] * S[:, a, c][self.unit]
        return h

    def Lv(self, v: np.ndarray) -> np.ndarray:
        """Per-unit L_j'v_j, (J, K)."""
        return self.usum(self.L * v[:, None])

    def Xv(self, v: np.ndarray) -> np.ndarray:
        return np.einsum("jkp,jk->p", self.B, self.Lv(v))

    def _weighted_cross(self, M: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per-unit M_j'W_jM_j, (J, k, k), for the record-level columns M (N, k)."""
        k = M.shape[1]
        out = np.empty((self.J, k, k))
        for a in range(k):
            Ma = M[:, a] * w
            for c in range(a, k):
                out[:, a, c] = out[:, c, a] = np.add.reduceat(Ma * M[:, c], self.starts)
        return out

    def LWL(self, w: np.ndarray) -> np.ndarray:
        return self._weighted_cross(self.L, w)

    def ZWZ(self, w: np.ndarray) -> np.ndarray:
        return self._weighted_cross(self.Z, w)

    def Zv(self, v: np.ndarray) -> np.ndarray:
        return self.usum(self.Z * v[:, None])

    def loglik_units(self, eta: np.ndarray) -> np.ndarray:
        return np.add.reduceat(self.family.loglik_terms(eta, self.y, self.trials), self.starts)


# ====================================================================== PQL and the PA model

def weighted_stats(data: GLMData, z: np.ndarray, w: np.ndarray, with_unit: bool = False):
    """The cross-products of the working model z = Xγ + Zb + e, Var(e) = σ²W⁻¹: those of √W·L and √W·z."""
    s = np.sqrt(w)
    unit = unit_cross_products(data.L * s[:, None], z * s, data.offs, center_y=False)
    stats = model_stats(unit, data.B, np.isin(np.arange(data.K), data.rnd))
    return (stats, unit) if with_unit else stats


def working_model(data: GLMData, eta: np.ndarray):
    """(stats, unit stats) of the working model linearised at η (offset included)."""
    dl, W, _ = data.family.derivatives(eta, data.y, data.trials)
    z = eta - (data.offset if data.offset is not None else 0.0) + dl / W
    return weighted_stats(data, z, W, with_unit=True)


def _fixed_sigma_fit(stats, reml: bool, lam0: np.ndarray, maxiter: int, tol: float):
    """τ of the weighted LMM with σ² = 1: L-BFGS-B over the lower triangle of Λ (τ = ΛΛ')."""
    q = stats.q
    tril = np.tril_indices(q)

    def fun(th):
        lam = np.zeros((q, q))
        lam[tril] = th
        try:
            us = unit_solve(stats, lam)
        except (FloatingPointError, np.linalg.LinAlgError):
            return 1e300, np.zeros_like(th)
        d = us.deviance(1.0, reml)
        Gam = us.gradient_G(reml, sigma2=1.0)
        return d, (2.0 * Gam @ lam)[tril]

    bounds = [(0.0, None) if i == j else (None, None) for i, j in zip(*tril)]
    res = minimize(fun, lam0[tril], jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": maxiter, "ftol": tol * 1e-6, "gtol": tol * 1e-4})
    lam = np.zeros((q, q))
    lam[tril] = res.x
    return lam, res.nit


@dataclass
class PQLResult:
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray
    tau: np.ndarray
    sigma2: float
    b: np.ndarray  # (J, q) EB random effects
    b_var: np.ndarray  # (J, q, q) their posterior variances
    eta: np.ndarray
    macro_iterations: int
    micro_iterations: int
    converged: bool
    reml: bool
    overdispersion: bool
    pa_gamma: np.ndarray | None = None
    pa_cov: np.ndarray | None = None
    pa_robust_cov: np.ndarray | None = None
    pa_iterations: int = 0
    solve: object = None


def pql(data: GLMData, reml: bool = True, overdispersion: bool = False, macroit: int = 100,
        microit: int = 100, stopmacro: float = 1e-8, stopmicro: float = 1e-8, population_average: bool = True) -> PQLResult:
    fam = data.family
    eta = fam.start(data.y, data.trials, data.offset) + (data.offset if data.offset is not None else 0.0)
    lam = 0.5 * np.eye(data.q)
    micro = 0
    converged = False
    sigma2 = 1.0
    for it in range(1, macroit + 1):
        dl, W, _ = fam.derivatives(eta, data.y, data.trials)
        z = eta - (data.offset if data.offset is not None else 0.0) + dl / W
        stats = weighted_stats(data, z, W)
        if overdispersion:
            r = linear_fit(stats, "REML" if reml else "ML", max_iterations=microit)
            sigma2 = float(r.sigma2)
            tau = r.tau
            lam = np.linalg.cholesky(tau / sigma2 + 1e-300 * np.eye(data.q)) if np.all(np.linalg.eigvalsh(tau) > 0) \
                else _psd_factor(tau / sigma2)
            micro += r.iterations
        else:
            lam, nit = _fixed_sigma_fit(stats, reml, lam, microit, stopmicro)
            micro += nit
        us = unit_solve(stats, lam)
        b, bvar = us.posterior(sigma2)
        new = data.eta(us.gamma, b)
        change = float(np.max(np.abs(new - eta)))
        eta = new
        if change <= stopmacro * (1.0 + float(np.max(np.abs(eta)))):
            converged = True
            break
    # the final linearised model, at the converged η
    dl, W, _ = fam.derivatives(eta, data.y, data.trials)
    z = eta - (data.offset if data.offset is not None else 0.0) + dl / W
    stats = weighted_stats(data, z, W)
    us = unit_solve(stats, lam)
    Pinv = us.Pinv()
    scores = us.XVe_units()
    res = PQLResult(gamma=us.gamma, cov=sigma2 * Pinv, robust_cov=Pinv @ (scores.T @ scores) @ Pinv,
                    tau=sigma2 * (lam @ lam.T), sigma2=sigma2, b=b, b_var=bvar, eta=eta, macro_iterations=it,
                    micro_iterations=micro, converged=converged, reml=reml, overdispersion=overdispersion, solve=us)
    if population_average:
        _population_average(data, res, lam, macroit, stopmacro)
    return res


def _psd_factor(G):
    w, V = np.linalg.eigh(0.5 * (G + G.T))
    return V * np.sqrt(np.clip(w, 0, None))


def _population_average(data: GLMData, res: PQLResult, lam: np.ndarray, maxit: int, tol: float) -> None:
    fam = data.family
    gamma = res.gamma.copy()
    for it in range(1, maxit + 1):
        eta = data.eta(gamma, None)
        dl, W, _ = fam.derivatives(eta, data.y, data.trials)
        z = eta - (data.offset if data.offset is not None else 0.0) + dl / W
        us = unit_solve(weighted_stats(data, z, W), lam)
        step = us.gamma - gamma
        gamma = us.gamma
        if np.max(np.abs(step)) <= tol * (1.0 + np.max(np.abs(gamma))):
            break
    Pinv = us.Pinv()
    s = us.XVe_units()
    res.pa_gamma, res.pa_cov = gamma, res.sigma2 * Pinv
    res.pa_robust_cov = Pinv @ (s.T @ s) @ Pinv
    res.pa_iterations = it


# ====================================================================== Laplace and AGQ

def _bsolve(H, v):
    return np.linalg.solve(H, v[..., None])[..., 0]


class Conditional:
    """Modes û_j and the Laplace/AGQ deviance at (γ, Λ), warm-started from the last b̂ = Λû."""

    def __init__(self, data: GLMData, nodes: int = 1):
        self.data = data
        self.b = np.zeros((data.J, data.q))
        self.nodes = nodes
        if nodes > 1:
            z, w = np.polynomial.hermite_e.hermegauss(nodes)
            w = w / math.sqrt(2 * math.pi)
            grids = np.meshgrid(*([z] * data.q), indexing="ij")
            wg = np.meshgrid(*([w] * data.q), indexing="ij")
            self.z = np.stack([g.ravel() for g in grids], axis=1)  # (K^q, q)
            self.logw = np.sum(np.log(np.stack([g.ravel() for g in wg], axis=1)), axis=1)
        self.count = 0

    def modes(self, gamma, lam, tol=1e-10, maxit=60):
        """Newton for û_j in every unit at once, with per-unit step halving. Returns û, η and the
        per-record (ℓ, ℓ', W, κ3) at η, each family evaluation shared by the step test and the next step."""
        d = self.data
        q = d.q
        self.count += 1
        u = self.b @ np.linalg.pinv(lam).T
        eta0 = d.eta(gamma, None)

        def state(u):
            eta = eta0 + d.rowdot(d.Z, u @ lam.T)
            ev = d.family.evaluate(eta, d.y, d.trials)
            pl = np.add.reduceat(ev[0], d.starts) - 0.5 * np.sum(u * u, axis=1)
            return eta, pl, ev

        eta, pl, ev = state(u)
        for _ in range(maxit):
            _, dl, W, _ = ev
            g = d.Zv(dl)
            A = d.ZWZ(W)
            H = np.einsum("ab,jbc,cd->jad", lam.T, A, lam) + np.eye(q)
            grad = g @ lam - u
            step = _bsolve(H, grad)
            if np.max(np.abs(step)) < tol:
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

    def laplace_pieces(self, gamma, lam):
        d = self.data
        u, eta = self.modes(gamma, lam)
        llt, dl, W, k3 = self.last
        A = d.ZWZ(W)
        H = np.einsum("ab,jbc,cd->jad", lam.T, A, lam) + np.eye(d.q)
        sign, logdet = np.linalg.slogdet(H)
        ll = np.add.reduceat(llt, d.starts)
        return u, eta, dl, W, k3, A, H, logdet, ll

    def deviance(self, gamma, lam):
        if self.nodes == 1:
            u, eta, dl, W, k3, A, H, logdet, ll = self.laplace_pieces(gamma, lam)
            return float(-2.0 * (ll.sum() + self.data.const) + np.sum(u * u) + logdet.sum())
        return self.agq_deviance(gamma, lam)

    def agq_deviance(self, gamma, lam):
        d = self.data
        u, eta, dl, W, k3, A, H, logdet, ll = self.laplace_pieces(gamma, lam)
        R = np.linalg.cholesky(np.linalg.inv(H))  # (J, q, q)
        terms = []
        for zk, lw in zip(self.z, self.logw):
            uk = u + np.einsum("jab,b->ja", R, zk)
            etak = eta + d.rowdot(d.Z, (uk - u) @ lam.T)
            terms.append(lw + d.loglik_units(etak) - 0.5 * np.sum(uk * uk, axis=1) + 0.5 * zk @ zk)
        T = np.stack(terms)
        mx = T.max(axis=0)
        logI = -0.5 * logdet + mx + np.log(np.exp(T - mx).sum(axis=0))
        return float(-2.0 * (logI.sum() + d.const))

    def gradient(self, gamma, lam):
        """(deviance, ∂d/∂γ, ∂d/∂Λ) for Laplace (module docstring)."""
        d = self.data
        u, eta, dl, W, k3, A, H, logdet, ll = self.laplace_pieces(gamma, lam)
        dev = float(-2.0 * (ll.sum() + d.const) + np.sum(u * u) + logdet.sum())
        Hinv = np.linalg.inv(H)
        S = np.einsum("ab,jbc,dc->jad", lam, Hinv, lam)  # ΛH⁻¹Λ'
        h = d.quad(S)
        c = k3 * h
        Zc = d.Zv(c)
        g = d.Zv(dl)
        m = np.einsum("jab,jb->ja", Hinv, Zc @ lam)
        # X_j'W_jZ_jΛm_j = Σ_j B_j' L_j'W_jZ_j Λ m_j
        LWZ = d.LWL(W)[:, :, d.rnd]  # (J, K, q)
        v = np.einsum("jkq,jq->jk", LWZ, m @ lam.T)
        ggam = -2.0 * d.Xv(dl) + d.Xv(c) - np.einsum("jkp,jk->p", d.B, v)
        AL = np.einsum("jab,bc->jac", A, lam)
        glam = (-2.0 * np.einsum("ja,jb->ab", g, u) + 2.0 * np.einsum("jab,jbc->ac", AL, Hinv)
                + np.einsum("ja,jb->ab", Zc, u) + np.einsum("ja,jb->ab", g, m)
                - np.einsum("ja,jb->ab", np.einsum("jab,jb->ja", AL, m), u))
        return dev, ggam, glam


def _unpack(x, p, q):
    lam = np.zeros((q, q))
    lam[np.tril_indices(q)] = x[:q * (q + 1) // 2]
    return x[q * (q + 1) // 2:], lam


@dataclass
class MLResult:
    method: str  # laplace | agq
    nodes: int
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray | None
    tau: np.ndarray
    deviance: float
    b: np.ndarray
    b_var: np.ndarray
    eta: np.ndarray
    iterations: int
    evaluations: int
    certificate: Certificate
    converged: bool
    n_params: int
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _num_grad(f, x, h=1e-5):
    g = np.empty_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = h * max(1.0, abs(x[i]))
        g[i] = (f(x + e) - f(x - e)) / (2 * e[i])
    return g


def ml_fit(data: GLMData, nodes: int = 1, start: PQLResult | None = None, maxiter: int = 500) -> MLResult:
    """Laplace (nodes = 1) or AGQ (nodes > 1) maximum likelihood, certified over PSD τ."""
    q, p = data.q, data.p
    nt = q * (q + 1) // 2
    if start is None:
        start = pql(data, reml=False, population_average=False)
    lam0 = np.linalg.cholesky(start.tau + 1e-8 * np.eye(q)) if np.all(np.linalg.eigvalsh(start.tau) > 1e-10) else np.diag(np.sqrt(np.clip(np.diag(start.tau), 1e-4, None)))
    cond = Conditional(data, nodes)
    x0 = np.concatenate([lam0[np.tril_indices(q)], start.gamma])
    cond.b = start.b.copy()

    def f_lap(x):
        gamma, lam = _unpack(x, p, q)
        dev, gg, gl = cond.gradient(gamma, lam)
        return dev, np.concatenate([gl[np.tril_indices(q)], gg])

    def f_val(x):
        gamma, lam = _unpack(x, p, q)
        return cond.deviance(gamma, lam)

    if nodes == 1:
        fun = f_lap
    else:
        # AGQ starts from the Laplace optimum, where it is close; its gradient is numerical
        lap = ml_fit(data, 1, start, maxiter)
        x0 = np.concatenate([lap.theta, lap.gamma])
        cond.b = lap.b.copy()
        fun = lambda x: (f_val(x), _num_grad(f_val, x, 1e-6))  # noqa: E731
    bounds = [(0.0, None) if i == j else (None, None) for i, j in zip(*np.tril_indices(q))] + [(None, None)] * p
    # a loose search: the Newton polish below finishes the job quadratically
    opts = {"maxiter": maxiter, "ftol": 1e-12, "gtol": 1e-5, "maxcor": 20} if nodes == 1 else \
        {"maxiter": min(maxiter, 100), "ftol": 1e-13, "gtol": 1e-6, "maxcor": 20}
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
    x = res.x
    # Newton polish on the interior with a central-difference Hessian of the gradient, computed
    # once (the steps are tiny by now); diagonal entries of Λ at zero stay there
    grad_fn = (lambda x: f_lap(x)[1]) if nodes == 1 else (lambda x: _num_grad(f_val, x, 1e-5))
    Hs = _hessian(grad_fn, x)
    diag = np.isin(np.arange(x.size), _diag_idx(q))
    f_and_g = f_lap if nodes == 1 else fun
    fx, g = f_and_g(x)
    for _ in range(10):
        free = ~(diag & (x <= 1e-10) & (g > 0))
        try:
            step = np.zeros_like(x)
            step[free] = -np.linalg.solve(Hs[np.ix_(free, free)], g[free])
        except np.linalg.LinAlgError:
            break
        xn = x + step
        xn[diag] = np.maximum(xn[diag], 0.0)
        fn, gn = f_and_g(xn)
        if fn <= fx + 1e-12 * abs(fx):
            x, fx, g = xn, fn, gn
        else:
            break
        if np.max(np.abs(step)) < 1e-10:
            break
    if np.max(np.abs(x - res.x)) > 1e-4:  # moved far in the polish: refresh the Hessian for the SEs
        Hs = _hessian(grad_fn, x)
    gamma, lam = _unpack(x, p, q)
    dev = f_val(x)
    try:
        cov_all = 2.0 * np.linalg.inv(Hs)
        cov = cov_all[nt:, nt:]
    except np.linalg.LinAlgError:
        cov = np.full((p, p), np.nan)
    u, eta = cond.modes(gamma, lam)
    b = u @ lam.T
    _, _, _, W, _, A, H, _, _ = cond.laplace_pieces(gamma, lam)
    bvar = np.einsum("ab,jbc,dc->jad", lam, np.linalg.inv(H), lam)
    tau = lam @ lam.T
    Hgg = Hs[nt:, nt:] if np.all(np.isfinite(Hs)) else None
    # the decrease still available must be below 1e-6 deviance units (Laplace, analytic gradient) or
    # 1e-5 (AGQ, whose Γ comes from central differences of a γ-profiled deviance: the finer level is noise)
    cert = certify(_ProfiledML(data, cond, gamma, Hgg, nodes),
                   tau, False, (1e-6 if nodes == 1 else 1e-5) * max(1.0, 1e-6 * abs(dev)))
    return MLResult(method="laplace" if nodes == 1 else "agq", nodes=nodes, gamma=gamma, cov=cov, robust_cov=None,
                    tau=tau, deviance=dev, b=b, b_var=bvar, eta=eta, iterations=int(res.nit),
                    evaluations=cond.count, certificate=cert, converged=bool(cert.certified),
                    n_params=p + nt, theta=x[:nt])


def _diag_idx(q):
    rows, cols = np.tril_indices(q)
    return [k for k, (i, j) in enumerate(zip(rows, cols)) if i == j]


def _hessian(grad_fn, x, h=1e-5):
    n = x.size
    Hm = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h * max(1.0, abs(x[i]))
        Hm[:, i] = (grad_fn(x + e) - grad_fn(x - e)) / (2 * e[i])
    return 0.5 * (Hm + Hm.T)


class _ProfiledML:
    """The objective the certificate needs: at(G) -> (deviance profiled over γ, Γ = ∂d/∂G)."""

    def __init__(self, data, cond, gamma, Hgg, nodes):
        self.data, self.cond, self.gamma, self.nodes = data, cond, gamma.copy(), nodes
        # a fixed Newton matrix for γ at fixed Λ: the γ block of the deviance Hessian at the optimum
        self.Hg = Hgg

    def _profile(self, lam):
        """γ minimising the deviance at this Λ (fixed-Hessian Newton from the optimum's γ), and for
        Laplace the (deviance, ∂d/∂Λ) evaluated there."""
        gamma = self.gamma.copy()
        last = None
        for k in range(5):
            if self.nodes == 1:
                dev, gg, glam = self.cond.gradient(gamma, lam)
                last = (dev, glam)
            else:
                gg = _num_grad(lambda g_: self.cond.deviance(g_, lam), gamma, 1e-6)  # noqa: E731
            if self.Hg is None or k == 4:
                break
            step = np.linalg.solve(self.Hg, gg)
            if np.max(np.abs(step)) < 1e-10:
                break
            gamma = gamma - step
            last = None
        return gamma, last

    def value(self, G):
        lam = _psd_factor(G)
        gamma, last = self._profile(lam)
        return last[0] if last is not None else self.cond.deviance(gamma, lam)

    def at(self, G):
        G = 0.5 * (G + G.T)
        if np.linalg.eigvalsh(G)[0] < -1e-12:
            return np.inf, np.zeros_like(G)
        if self.nodes == 1 and np.linalg.eigvalsh(G)[0] > 1e-8 * max(1.0, np.abs(G).max()):
            lam = np.linalg.cholesky(G)
            gamma, last = self._profile(lam)
            dev, glam = last if last is not None else self.cond.gradient(gamma, lam)[0::2]
            Gam = 0.5 * glam @ np.linalg.inv(lam)
            return dev, 0.5 * (Gam + Gam.T)
        lam = _psd_factor(G)
        dev = self.value(G)
        q = G.shape[0]
        Gam = np.zeros((q, q))
        h = 1e-5 * max(1.0, float(np.abs(G).max()))
        for a in range(q):
            for c in range(a + 1):
                E = np.zeros((q, q))
                E[a, c] = E[c, a] = 1.0
                fp = self.value(G + h * E)
                fm = self.value(G - h * E) if np.linalg.eigvalsh(G - h * E)[0] >= 0 else None
                dd = (fp - fm) / (2 * h) if fm is not None else (fp - dev) / h
                Gam[a, c] = Gam[c, a] = dd if a == c else dd / 2
        return dev, Gam
