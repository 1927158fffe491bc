"""Stage 6, estimation: the profiled (RE)ML deviance, its analytic gradient, and the optimizer.

Parameterisation (as in lme4): T = σ² ΛΛ', Λ lower triangular, θ = its lower-triangle entries.
For unit j with A = Z'Z, G = ΛΛ', K = Λ(I + Λ'AΛ)⁻¹Λ' and H = (I + AG)⁻¹ = I - AK:
  σ²·V⁻¹ = I - Z K Z',   log|V/σ²| = log|I + Λ'AΛ|.
γ and σ² are profiled out, so the optimizer sees only θ (q(q+1)/2 numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from .sufficient import ModelStats

LOG_2PI = float(np.log(2 * np.pi))


@dataclass
class Evaluation:
    """Everything computed at one θ, reused by inference."""

    deviance: float
    gradient: np.ndarray
    gamma: np.ndarray
    sigma2: float
    G: np.ndarray  # T / σ²
    K: np.ndarray  # (J, q, q)
    P: np.ndarray  # X'V⁻¹X · σ²
    rss: float


@dataclass
class FitResult:
    method: str
    gamma: np.ndarray  # on the shifted outcome scale removed: see `gamma` after unshift
    cov_gamma: np.ndarray
    sigma2: float
    tau: np.ndarray
    deviance: float
    n_params: int
    iterations: int
    converged: bool
    gradient_norm: float
    newton_decrement: float
    theta: np.ndarray
    boundary: list[str] = field(default_factory=list)
    message: str = ""
    evaluation: Evaluation | None = None


def theta_to_lambda(theta: np.ndarray, q: int) -> np.ndarray:
    lam = np.zeros((q, q))
    lam[np.tril_indices(q)] = theta
    return lam


def diagonal_positions(q: int) -> np.ndarray:
    rows, cols = np.tril_indices(q)
    return np.flatnonzero(rows == cols)


def evaluate(theta: np.ndarray, stats: ModelStats, reml: bool, want_gradient: bool = True) -> Evaluation:
    q, p, N = stats.q, stats.p, stats.N
    lam = theta_to_lambda(np.asarray(theta, dtype=float), q)
    G = lam @ lam.T
    A = stats.ZZ
    # M_j = I + Λ'A_jΛ, batched; its Cholesky gives log-determinants and K_j.
    M = np.eye(q) + np.matmul(lam.T, np.matmul(A, lam))
    chol = np.linalg.cholesky(M)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum()
    Minv_lamT = np.linalg.solve(M, np.broadcast_to(lam.T, M.shape))
    K = np.matmul(lam, Minv_lamT)
    K = 0.5 * (K + np.swapaxes(K, 1, 2))
    KZX = np.matmul(K, stats.ZX)  # (J, q, p)
    KZy = np.einsum("jab,jb->ja", K, stats.Zy)
    P = stats.XX - np.einsum("jqp,jqr->pr", stats.ZX, KZX)
    P = 0.5 * (P + P.T)
    c = stats.Xy - np.einsum("jqp,jq->p", stats.ZX, KZy)
    s = stats.yy - float(np.einsum("jq,jq->", stats.Zy, KZy))
    try:
        cholP = np.linalg.cholesky(P)
    except np.linalg.LinAlgError:
        raise FloatingPointError("X'V⁻¹X is not positive definite") from None
    gamma = np.linalg.solve(cholP.T, np.linalg.solve(cholP, c))
    rss = s - float(c @ gamma)
    if not rss > 0:
        raise FloatingPointError("the residual sum of squares is not positive")
    dof = N - p if reml else N
    sigma2 = rss / dof
    deviance = logdet + dof * (1.0 + LOG_2PI + np.log(sigma2))
    if reml:
        deviance += 2.0 * np.log(np.diag(cholP)).sum()
    grad = np.zeros(0)
    if want_gradient:
        H = np.eye(q) - np.matmul(A, K)  # (I + A G)⁻¹
        e = stats.Zy - np.einsum("jqp,p->jq", stats.ZX, gamma)
        v = np.einsum("jab,jb->ja", H, e)
        Gamma = np.matmul(H, A).sum(axis=0) - (dof / rss) * (v.T @ v)
        if reml:
            HB = np.matmul(H, stats.ZX)  # (J, q, p)
            Pinv = np.linalg.solve(cholP.T, np.linalg.solve(cholP, np.eye(p)))
            Gamma -= np.einsum("jap,pr,jbr->ab", HB, Pinv, HB)
        Gamma = 0.5 * (Gamma + Gamma.T)
        grad = (2.0 * Gamma @ lam)[np.tril_indices(q)]
    return Evaluation(float(deviance), grad, gamma, float(sigma2), G, K, P, float(rss))


def _projected_gradient(theta: np.ndarray, grad: np.ndarray, lower: np.ndarray) -> np.ndarray:
    g = grad.copy()
    at_bound = (theta <= lower + 1e-12) & (g > 0)
    g[at_bound] = 0.0
    return g


def _hessian(theta: np.ndarray, stats: ModelStats, reml: bool, free: np.ndarray) -> np.ndarray:
    """Hessian over the free θs by central differences of the analytic gradient (O(J q³) per call)."""
    k = theta.size
    Hm = np.zeros((k, k))
    for i in np.flatnonzero(free):
        h = 1e-5 * max(1.0, abs(theta[i]))
        tp, tm = theta.copy(), theta.copy()
        tp[i] += h
        tm[i] -= h
        Hm[:, i] = (evaluate(tp, stats, reml).gradient - evaluate(tm, stats, reml).gradient) / (2 * h)
    Hm = 0.5 * (Hm + Hm.T)
    return Hm[np.ix_(free, free)]


def _start(stats: ModelStats) -> np.ndarray:
    """θ at T/σ² = diag(1 / mean Z'Z diagonal) scaled: a unit-free start away from T = 0,
    which is a stationary point of the profiled deviance for any data."""
    q = stats.q
    scale = np.sqrt(np.maximum(np.mean(np.diagonal(stats.ZZ, axis1=1, axis2=2), axis=0), 1e-12))
    mean_n = stats.N / stats.J
    lam = np.diag(np.sqrt(mean_n) / scale * 0.5)
    return lam[np.tril_indices(q)]


def fit(stats: ModelStats, method: str = "REML", max_iterations: int = 1000) -> FitResult:
    reml = method.upper() == "REML"
    q = stats.q
    diag = diagonal_positions(q)
    lower = np.full(q * (q + 1) // 2, -np.inf)
    lower[diag] = 0.0
    bounds = [(0.0, None) if i in diag else (None, None) for i in range(lower.size)]

    def fun(theta):
        try:
            ev = evaluate(theta, stats, reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(theta)
        return ev.deviance, ev.gradient

    iterations = 0
    best = None
    for start in (_start(stats), None):
        if start is None:
            # A second start only when the first ends on the boundary: boundary optima are where
            # quasi-Newton methods most often stop short.
            if best is None or not np.any(best.x[diag] <= 1e-8) or iterations >= max_iterations:
                break
            start = best.x.copy()
            start[diag] = np.maximum(start[diag], 0.1 * np.abs(_start(stats)[diag]))
        res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": max_iterations - iterations, "ftol": 1e-15, "gtol": 1e-9, "maxcor": 20})
        iterations += int(res.nit)
        if best is None or res.fun < best.fun - 1e-10:
            best = res
    theta = best.x.copy()
    ev = evaluate(theta, stats, reml)

    # Newton polish on the free parameters, with a backtracking line search: a few steps take
    # L-BFGS-B's answer to the optimum to machine precision, and give the decrement as proof.
    decrement = np.nan
    for _ in range(min(20, max(0, max_iterations - iterations))):
        free = ~((theta <= lower + 1e-10) & (ev.gradient > 0))
        if not free.any():
            decrement = 0.0
            break
        Hf = _hessian(theta, stats, reml, free)
        gf = ev.gradient[free]
        try:
            step = np.linalg.solve(Hf, gf)
            decrement = float(gf @ step)
        except np.linalg.LinAlgError:
            break
        if not np.isfinite(decrement) or decrement < 0:
            break
        if decrement < 1e-12:
            break
        t = 1.0
        improved = False
        while t > 1e-6:
            cand = theta.copy()
            cand[free] -= t * step
            cand = np.maximum(cand, lower)
            try:
                ev_c = evaluate(cand, stats, reml)
            except (FloatingPointError, np.linalg.LinAlgError):
                t /= 2
                continue
            if ev_c.deviance <= ev.deviance + 1e-12 * abs(ev.deviance):
                theta, ev, improved = cand, ev_c, True
                break
            t /= 2
        iterations += 1
        if not improved:
            break

    pg = _projected_gradient(theta, ev.gradient, lower)
    grad_norm = float(np.max(np.abs(pg))) if pg.size else 0.0
    converged = bool(np.isfinite(ev.deviance) and (
        (np.isfinite(decrement) and decrement < 1e-6) or grad_norm < 1e-6))
    n_params = 1 + q * (q + 1) // 2 + (0 if reml else stats.p)
    return FitResult(
        method="REML" if reml else "ML", gamma=ev.gamma, cov_gamma=ev.sigma2 * np.linalg.inv(ev.P),
        sigma2=ev.sigma2, tau=ev.sigma2 * ev.G, deviance=ev.deviance, n_params=n_params,
        iterations=iterations, converged=converged, gradient_norm=grad_norm,
        newton_decrement=float(decrement) if np.isfinite(decrement) else float("nan"),
        theta=theta, message=str(best.message), evaluation=ev,
    )


def deviance_at(sigma2: float, tau: np.ndarray, stats: ModelStats, method: str = "REML") -> float:
    """The (RE)ML deviance at given σ² and τ (not profiled), e.g. to judge another program's estimates."""
    reml = method.upper() == "REML"
    q, p, N = stats.q, stats.p, stats.N
    G = np.asarray(tau, dtype=float) / sigma2
    A = stats.ZZ
    IAG = np.eye(q) + np.matmul(A, G)
    sign, logdet = np.linalg.slogdet(IAG)
    if np.any(sign <= 0):
        return float("inf")
    K = np.matmul(G, np.linalg.inv(IAG))
    KZX = np.matmul(K, stats.ZX)
    P = stats.XX - np.einsum("jqp,jqr->pr", stats.ZX, KZX)
    KZy = np.einsum("jab,jb->ja", K, stats.Zy)
    c = stats.Xy - np.einsum("jqp,jq->p", stats.ZX, KZy)
    s = stats.yy - float(np.einsum("jq,jq->", stats.Zy, KZy))
    gamma = np.linalg.solve(P, c)
    rss = s - float(c @ gamma)
    dev = logdet.sum() + N * np.log(sigma2) + rss / sigma2
    if reml:
        dev += np.linalg.slogdet(P)[1] - p * np.log(sigma2) + (N - p) * LOG_2PI
    else:
        dev += N * LOG_2PI
    return float(dev)
