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
    gamma: np.ndarray  # for y centered at its mean (inference adds the shift back to γ00)
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


def _sandwich(lam: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Λ'A_jΛ for every unit, A component-first (q,q,J), as two BLAS products."""
    LA = np.tensordot(lam, A, axes=([0], [0]))  # (q, q, J): Λ'A
    return np.ascontiguousarray(np.tensordot(LA, lam, axes=([1], [0])).transpose(0, 2, 1))


def evaluate(theta: np.ndarray, stats: ModelStats, reml: bool, want_gradient: bool = True) -> Evaluation:
    q, p, N = stats.q, stats.p, stats.N
    J = stats.J
    lam = theta_to_lambda(np.asarray(theta, dtype=float), q)
    G = lam @ lam.T
    A = stats.ZZc  # (q, q, J)
    Zt = stats.ZXt  # (q, J, p)
    Zy = stats.Zyc  # (q, J)
    # M_j = I + Λ'A_jΛ; K_j = Λ M_j⁻¹ Λ'
    M = _sandwich(lam, A)
    for a in range(q):
        M[a, a] += 1.0
    Minv, logdets = spd_inverse_logdet(M)
    logdet = float(logdets.sum())
    K = _sandwich(lam.T, Minv)
    KZy = cmv(K, Zy)
    # Σ_j ZX_j'K_jZX_j as q² weighted cross-products (BLAS), never forming K_jZX_j per unit
    pairs = [(a, b) for a in range(q) for b in range(a, q)]
    P = stats.XX.copy()
    for k, (a, b) in enumerate(pairs):
        if stats.ZXouter is not None:
            block = (K[a, b] @ stats.ZXouter[k]).reshape(p, p)
        else:
            block = (Zt[a] * K[a, b][:, None]).T @ Zt[b]
        P -= block if a == b else block + block.T
    P = 0.5 * (P + P.T)
    c = stats.Xy - sum(Zt[a].T @ KZy[a] for a in range(q))
    s = stats.yy - float(np.vdot(Zy, KZy))
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
        H = -cmm(A, K)  # (I + A G)⁻¹ = I - A K
        for a in range(q):
            H[a, a] += 1.0
        e = Zy - np.stack([Zt[a] @ gamma for a in range(q)])
        v = cmv(H, e)
        Gamma = cmm(H, A).sum(axis=2) - (dof / rss) * (v @ v.T)
        if reml:
            # Σ_j H_j ZX_j P⁻¹ ZX_j' H_j': first R_j = ZX_j P⁻¹ ZX_j' (q×q), then H R H'
            Pinv = np.linalg.solve(cholP.T, np.linalg.solve(cholP, np.eye(p)))
            R = np.empty((q, q, J))
            if stats.ZXouter is not None:
                for k, (a, b) in enumerate(pairs):
                    R[a, b] = R[b, a] = stats.ZXouter[k] @ Pinv.ravel()
            else:
                ZP = [Zt[a] @ Pinv for a in range(q)]
                for a, b in pairs:
                    R[a, b] = R[b, a] = np.einsum("jp,jp->j", ZP[a], Zt[b])
            Gamma -= cmm(cmm(H, R), H.transpose(1, 0, 2)).sum(axis=2)
        Gamma = 0.5 * (Gamma + Gamma.T)
        grad = (2.0 * Gamma @ lam)[np.tril_indices(q)]
    return Evaluation(float(deviance), grad, gamma, float(sigma2), G, K.transpose(2, 0, 1), P, float(rss))


def _projected_gradient(theta: np.ndarray, grad: np.ndarray, lower: np.ndarray) -> np.ndarray:
    g = grad.copy()
    at_bound = (theta <= lower + 1e-12) & (g > 0)
    g[at_bound] = 0.0
    return g


def _hessian(theta: np.ndarray, grad: np.ndarray, stats: ModelStats, reml: bool, free: np.ndarray) -> np.ndarray:
    """Hessian over the free θs by forward differences of the analytic gradient: one evaluation per
    parameter; its O(h) error only slows Newton's quadratic convergence to a fast linear one."""
    k = theta.size
    Hm = np.zeros((k, k))
    for i in np.flatnonzero(free):
        h = 1e-6 * max(1.0, abs(theta[i]))
        tp = theta.copy()
        tp[i] += h
        Hm[:, i] = (evaluate(tp, stats, reml).gradient - grad) / h
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
                                options={"maxiter": max_iterations - iterations, "ftol": 1e-7, "gtol": 1e-2, "maxcor": 20})
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
        Hf = _hessian(theta, ev.gradient, stats, reml, free)
        gf = ev.gradient[free]
        try:
            step = np.linalg.solve(Hf, gf)
            decrement = float(gf @ step)
        except np.linalg.LinAlgError:
            break
        if not np.isfinite(decrement) or decrement < 0:
            break
        if decrement < 1e-20:  # quadratic convergence: one step past 1e-10 lands here
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
