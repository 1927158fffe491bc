"""HLM's own iteration for a two-level linear model fitted by full ML: its starting values and its EM step.

This is a record of how HLM 5/6 reach the numbers they print, not an estimator: HLM stops EM on a small change in
the log-likelihood, often far from the optimum (on Singer & Willett's Table 3.3 after 1493 iterations, with tau11
22% above the optimum on the boundary). Nothing here certifies anything; the optimum comes from estimation.fit.

Starting values (HLM prints them as "STARTING VALUES"; reproduced on mlmRev's Early data):
  sigma2(0) = sum_j RSS_j / sum_j (n_j - K), pooled over the units whose level-1 OLS is computable (n_j > K,
  L_j'L_j of full rank);
  tau(0)    = (1/J') sum_j r_j r_j' - sigma2(0) * mean_j (L_j'L_j)^-1, random rows and columns only, where r_j holds
  unit j's OLS coefficients minus their OLS regression on that coefficient's level-2 predictors (divisor J', the
  number of computable units, not J' - 1);
  if tau(0) is not positive definite HLM uses 0.2 * diag((1/J') sum_j r_j r_j') ("New Tau(0)", fixtau:3).

EM step (Laird, Lange & Stram 1987, ML): with gamma the GLS estimate at (sigma2, tau), u*_j the posterior means
of the random effects and C_j = tau - tau Z_j'V_j^-1 Z_j tau their posterior covariances,
  tau'    = (1/J) sum_j (u*_j u*_j' + C_j)
  sigma2' = (1/N) sum_j (|e*_j|^2 + tr(Z_j'Z_j C_j)),   e*_j = y_j - X_j gamma - Z_j u*_j,
the second written as (1/N)(sum |e*_j|^2 + sigma2 * sum_j (n_j - sigma2 tr V_j^-1)), which needs only the
sufficient statistics.
"""
from __future__ import annotations

import numpy as np

from .sufficient import ModelStats


def starting_values(n: np.ndarray, LL: np.ndarray, Ly: np.ndarray, yy: np.ndarray, W: list[np.ndarray],
                    random: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """HLM's (sigma2(0), tau(0) as used, tau(0) as first computed) from the per-unit level-1 cross-products;
    W[q] is coefficient q's level-2 design (J, S_q + 1) and random the boolean mask of random coefficients."""
    J, K = LL.shape[0], LL.shape[1]
    ok = np.array([n[j] > K and np.linalg.matrix_rank(LL[j]) == K for j in range(J)])
    beta = np.array([np.linalg.solve(LL[j], Ly[j]) for j in np.flatnonzero(ok)])
    rss = yy[ok] - np.einsum('jk,jk->j', beta, Ly[ok])
    sigma2 = float(rss.sum() / (n[ok] - K).sum())
    rnd = np.flatnonzero(random)
    r = np.empty((beta.shape[0], rnd.size))
    for k, q in enumerate(rnd):
        Wq = W[q][ok]
        r[:, k] = beta[:, q] - Wq @ np.linalg.lstsq(Wq, beta[:, q], rcond=None)[0]
    D = r.T @ r / beta.shape[0]
    V = np.linalg.inv(LL[ok])[:, rnd][:, :, rnd].mean(axis=0)
    tau = D - sigma2 * V
    if np.linalg.eigvalsh(tau).min() > 0:
        return sigma2, tau, tau
    return sigma2, 0.2 * np.diag(np.diag(D)), tau


def em_step(stats: ModelStats, sigma2: float, tau: np.ndarray) -> tuple[float, np.ndarray]:
    """One ML EM step from (sigma2, tau), gamma by GLS at (sigma2, tau)."""
    A, ZX, Zy, n = stats.ZZ, stats.ZX, stats.Zy, stats.n
    G = tau / sigma2
    H = np.linalg.inv(np.eye(stats.q) + A @ G)         # (I + Z'Z G)^-1
    K = G @ H                                            # V_j^-1 = (I - Z_j K_j Z_j') / sigma2
    KZX = K @ ZX
    P = stats.XX - np.einsum('jqp,jqr->pr', ZX, KZX)     # sigma2 X'V^-1 X
    c = stats.Xy - np.einsum('jqp,jq->p', ZX, np.einsum('jab,jb->ja', K, Zy))
    gamma = np.linalg.solve(P, c)
    Ze = Zy - ZX @ gamma                                 # Z_j'(y_j - X_j gamma)
    KZe = np.einsum('jab,jb->ja', K, Ze)
    ustar = np.einsum('jab,jb->ja', H, Ze) @ tau.T / sigma2   # tau Z'V^-1 e
    ee = stats.yy - 2 * gamma @ stats.Xy + gamma @ stats.XX @ gamma
    rr = ee - 2 * np.sum(Ze * KZe) + np.sum(KZe * np.einsum('jab,jb->ja', A, KZe))   # sum |e*_j|^2
    ZVZ = H @ A / sigma2                                 # Z'V^-1 Z
    trV = (n - np.einsum('jab,jba->j', K, A)) / sigma2   # tr V^-1
    tau_new = (ustar.T @ ustar + stats.J * tau - np.einsum('ab,jbc,cd->ad', tau, ZVZ, tau)) / stats.J
    sigma2_new = (rr + sigma2 * np.sum(n - sigma2 * trV)) / stats.N
    return float(sigma2_new), (tau_new + tau_new.T) / 2


def em_path(stats: ModelStats, sigma2: float, tau: np.ndarray, iterations: int):
    """Yield (k, sigma2, tau) after each of `iterations` EM steps; HLM prints the point of step k as
    "ITERATION k" and, as "likelihood at iteration k", the log-likelihood of step k - 1 (k = 1: the start)."""
    for k in range(1, iterations + 1):
        sigma2, tau = em_step(stats, sigma2, tau)
        yield k, sigma2, tau


def reml_em_step(stats: ModelStats, sigma2: float, tau: np.ndarray) -> tuple[float, np.ndarray]:
    """One REML EM step (Dempster, Rubin & Tsutakawa 1981): the ML step's expectations taken with γ integrated
    out (flat prior), so the posterior of u_j gains the uncertainty of γ̂ and that of the residuals its own.
    With F_j = tau Z_j'V_j^-1 X_j and Cov(γ̂) = (X'V^-1 X)^-1 = sigma2 P^-1:
      Var(u_j | y) = C_j + F_j Cov(γ̂) F_j'
      tr Var(e | y) = sigma2 N - sigma2^2 (sum_j tr V_j^-1 - tr(Cov(γ̂) sum_j X_j'V_j^-2 X_j)),
    where sigma2^2 sum_j X_j'V_j^-2 X_j = 2P - X'X + sum_j ZX_j'K_j A_j K_j ZX_j, as V_j^-1 = (I - Z_j K_j Z_j')/sigma2.
    This is the REML step recorded in tests/data/published/hlm_iterations.json: it reproduces HLM 6.04's sigma2
    on HSB's unconditional model after HLM's 4 steps but tau only to 3 of its 5 printed decimals (and the stop rule
    below ends this path at step 3)."""
    A, ZX, Zy, n = stats.ZZ, stats.ZX, stats.Zy, stats.n
    G = tau / sigma2
    H = np.linalg.inv(np.eye(stats.q) + A @ G)
    K = G @ H
    KZX = K @ ZX
    P = stats.XX - np.einsum('jqp,jqr->pr', ZX, KZX)
    Pinv = np.linalg.inv(P)
    c = stats.Xy - np.einsum('jqp,jq->p', ZX, np.einsum('jab,jb->ja', K, Zy))
    gamma = Pinv @ c
    Ze = Zy - ZX @ gamma
    KZe = np.einsum('jab,jb->ja', K, Ze)
    ustar = np.einsum('jab,jb->ja', H, Ze) @ tau.T / sigma2
    ee = stats.yy - 2 * gamma @ stats.Xy + gamma @ stats.XX @ gamma
    rr = ee - 2 * np.sum(Ze * KZe) + np.sum(KZe * np.einsum('jab,jb->ja', A, KZe))
    ZVZ = H @ A / sigma2
    trV = (n - np.einsum('jab,jba->j', K, A)) / sigma2
    F = np.einsum('ab,jbp->jap', tau, H @ ZX) / sigma2     # tau Z_j'V_j^-1 X_j; Z'V^-1 X = H ZX / sigma2
    extra = sigma2 * np.einsum('jap,pr,jbr->ab', F, Pinv, F)
    tau_new = (ustar.T @ ustar + stats.J * tau - np.einsum('ab,jbc,cd->ad', tau, ZVZ, tau) + extra) / stats.J
    KAK = np.einsum('jqp,jqr->pr', KZX, np.einsum('jab,jbp->jap', A, KZX))
    tr_e = sigma2 * np.sum(n - sigma2 * trV) + sigma2 * np.trace(Pinv @ (2 * P - stats.XX + KAK))
    sigma2_new = (rr + tr_e) / stats.N
    return float(sigma2_new), (tau_new + tau_new.T) / 2


HLM6_RELATIVE_STOP = 1e-8


def hlm6_run(stats: ModelStats, sigma2: float, tau: np.ndarray, loglik, reml: bool, limit: int):
    """HLM 5/6's iteration from its start (sigma2, tau): EM steps until HLM 6's stop rule or `limit` steps.
    loglik(sigma2, tau) is the log-likelihood as HLM prints it. HLM's iteration k holds the log-likelihoods of
    the points of steps k - 1 and k - 2 (step 0: the start) and stops at the first k with
    |l(k-1) - l(k-2)| < 1e-8 |l(k-1)|, printing the point of step k (Singer & Willett's Table 3.3 to every
    printed digit after 1493 steps; hlm_iterations.json). Returns (k, sigma2, tau, stopped by the rule)."""
    step = reml_em_step if reml else em_step
    previous = loglik(sigma2, tau)
    sigma2, tau = step(stats, sigma2, tau)
    for k in range(2, limit + 1):
        current = loglik(sigma2, tau)
        sigma2, tau = step(stats, sigma2, tau)
        if abs(current - previous) < HLM6_RELATIVE_STOP * abs(current):
            return k, sigma2, tau, True
        previous = current
    return limit, sigma2, tau, False
