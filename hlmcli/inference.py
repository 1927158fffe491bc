"""Stage 7, inference: SEs, d.f., p-values, χ² tests, reliabilities and unit-level estimates.

Every formula follows HLM 7's HLM2 output (see the man page). All functions are pure: arrays in,
arrays out, computed from the per-unit cross-products and the estimation result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special  # lighter than scipy.stats, which the CLI would import on every run

from .design import Design
from .estimation import FitResult
from .sufficient import ModelStats, UnitStats


@dataclass
class FixedTable:
    gamma: np.ndarray
    se: np.ndarray
    robust_se: np.ndarray
    df: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray

    @property
    def t(self) -> np.ndarray:
        return self.gamma / self.se

    @property
    def robust_t(self) -> np.ndarray:
        return self.gamma / self.robust_se

    @property
    def p(self) -> np.ndarray:
        return two_sided_p(self.t, self.df)

    @property
    def robust_p(self) -> np.ndarray:
        return two_sided_p(self.robust_t, self.df)


def two_sided_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    return 2.0 * special.stdtr(df, -np.abs(t))


def hlm_fixed_df(design: Design) -> np.ndarray:
    """HLM 7's Approx. d.f.: J - S_q - 1 for γs of random coefficients, N - J·R - F for fixed ones."""
    J, N = design.n_units, design.n
    R = int(design.random.sum())
    F = sum(1 for f in design.fixed if not design.random[f.q])
    out = []
    for f in design.fixed:
        if design.random[f.q]:
            out.append(J - (design.W[f.q].shape[1] - 1) - 1)
        else:
            out.append(N - J * R - F)
    return np.array(out, dtype=float)


def unit_xx_xy(unit: UnitStats, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit X_j'X_j and X_j'y_j from the level-1 cross-products."""
    XX = np.matmul(np.swapaxes(B, 1, 2), np.matmul(unit.LL, B))
    Xy = np.einsum("jkp,jk->jp", B, unit.Ly)
    return XX, Xy


def fixed_effects(design: Design, unit: UnitStats, stats: ModelStats, result: FitResult) -> FixedTable:
    ev = result.evaluation
    gamma = ev.gamma
    XX_j, Xy_j = unit_xx_xy(unit, stats.B)
    Xe = Xy_j - np.einsum("jpr,r->jp", XX_j, gamma)
    Ze = stats.Zy - np.einsum("jqp,p->jq", stats.ZX, gamma)
    KZe = np.einsum("jab,jb->ja", ev.K, Ze)
    w = Xe - np.einsum("jqp,jq->jp", stats.ZX, KZe)  # σ²·X_j'V_j⁻¹e_j
    Pinv = np.linalg.inv(ev.P)
    robust = Pinv @ (w.T @ w) @ Pinv  # the CR0 cluster sandwich (σ² cancels)
    cov = result.cov_gamma
    shifted = gamma.copy()
    shifted[0] += unit.y_shift  # γ00 back on the outcome's own scale
    return FixedTable(gamma=shifted, se=np.sqrt(np.diag(cov)), robust_se=np.sqrt(np.diag(robust)),
                      df=hlm_fixed_df(design), cov=cov, robust_cov=robust)


# ---------------------------------------------------------------- per-unit OLS: χ² and reliability

@dataclass
class UnitOLS:
    sufficient: np.ndarray  # bool (J,)
    beta: np.ndarray  # (J, q): OLS of ỹ_j on the random columns (nan where not computable)
    var: np.ndarray  # (J, q, q): σ²(Z_j'Z_j)⁻¹
    fitted: np.ndarray  # (J, q): Σ_s γ_qs W_sj for random q


def unit_ols(design: Design, unit: UnitStats, stats: ModelStats, result: FitResult) -> UnitOLS:
    """OLS of ỹ_j (y minus the fixed coefficients' contributions at γ̂) on the random level-1 columns."""
    gamma = result.evaluation.gamma
    r = stats.random
    J, q = stats.J, stats.q
    coef = np.einsum("jkp,p->jk", stats.B, gamma)  # each unit's level-2 prediction of every β_q
    fixed_cols = np.setdiff1d(np.arange(unit.LL.shape[1]), r)
    Zy_adj = stats.Zy - np.einsum("jaf,jf->ja", unit.LL[:, r][:, :, fixed_cols], coef[:, fixed_cols])
    A = stats.ZZ
    eig = np.linalg.eigvalsh(A)
    scale = np.maximum(eig[:, -1], 1e-300)
    sufficient = (unit.n > q) & (eig[:, 0] > 1e-10 * scale)
    beta = np.full((J, q), np.nan)
    var = np.full((J, q, q), np.nan)
    if sufficient.any():
        Ainv = np.linalg.inv(A[sufficient])
        beta[sufficient] = np.einsum("jab,jb->ja", Ainv, Zy_adj[sufficient])
        var[sufficient] = result.sigma2 * Ainv
    fitted = coef[:, r]
    return UnitOLS(sufficient=sufficient, beta=beta, var=var, fitted=fitted)


@dataclass
class VarianceTests:
    chi2: np.ndarray
    df: np.ndarray
    p: np.ndarray
    reliability: np.ndarray
    n_sufficient: int


def variance_tests(design: Design, ols: UnitOLS, tau: np.ndarray, stats: ModelStats) -> VarianceTests:
    s = ols.sufficient
    r = stats.random
    dev = ols.beta[s] - ols.fitted[s]
    vdiag = np.diagonal(ols.var[s], axis1=1, axis2=2)
    chi2 = (dev ** 2 / vdiag).sum(axis=0)
    J_s = int(s.sum())
    df = np.array([J_s - (design.W[q].shape[1] - 1) - 1 for q in r], dtype=float)
    tdiag = np.diag(tau)
    reliability = (tdiag / (tdiag + vdiag)).mean(axis=0) if J_s else np.full(len(r), np.nan)
    return VarianceTests(chi2=chi2, df=df, p=special.chdtrc(df, chi2), reliability=reliability, n_sufficient=J_s)


# ---------------------------------------------------------------- ML standard errors of σ² and τ

def _tau_basis(q: int) -> list[tuple[int, int, np.ndarray]]:
    out = []
    for a in range(q):
        for b in range(a + 1):
            E = np.zeros((q, q))
            E[a, b] = E[b, a] = 1.0
            out.append((a, b, E))
    return out


def variance_information(stats: ModelStats, result: FitResult) -> np.ndarray:
    """Expected (Fisher) information of θ = (σ², τ lower triangle) under full ML."""
    ev = result.evaluation
    s2 = result.sigma2
    A, K = stats.ZZ, ev.K
    KA = np.matmul(K, A)
    AKA = np.matmul(A, KA)
    S = (A - AKA) / s2  # Z'V⁻¹Z per unit
    ZV2Z = (A - 2 * AKA + np.matmul(AKA, KA)) / s2 ** 2
    trV2 = (stats.n - 2 * np.trace(KA, axis1=1, axis2=2) + np.einsum("jab,jba->j", KA, KA)) / s2 ** 2
    basis = _tau_basis(stats.q)
    m = 1 + len(basis)
    info = np.zeros((m, m))
    info[0, 0] = 0.5 * trV2.sum()
    SE = [np.matmul(S, E) for _, _, E in basis]
    for i, (_, _, E) in enumerate(basis, start=1):
        info[0, i] = info[i, 0] = 0.5 * np.einsum("jab,ba->", ZV2Z, E)
        for k in range(1, i + 1):
            info[i, k] = info[k, i] = 0.5 * np.einsum("jab,jba->", SE[i - 1], SE[k - 1])
    return info


def variance_standard_errors(stats: ModelStats, result: FitResult) -> tuple[float, np.ndarray]:
    cov = np.linalg.inv(variance_information(stats, result))
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    q = stats.q
    se_tau = np.zeros((q, q))
    for i, (a, b, _) in enumerate(_tau_basis(q), start=1):
        se_tau[a, b] = se_tau[b, a] = se[i]
    return float(se[0]), se_tau


# ---------------------------------------------------------------- Satterthwaite d.f. (as lmerTest)

def _reml_gradient(sigma2: float, tau: np.ndarray, stats: ModelStats, XX_j: np.ndarray, Xy_j: np.ndarray,
                   yy_j: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Gradient of the REML deviance in (σ², τ lower triangle), and Φ = (X'V⁻¹X)⁻¹ with its derivatives'
    ingredients. Analytic; O(J q² p) per call."""
    q = stats.q
    A = stats.ZZ
    G = tau / sigma2
    Hinv = np.eye(q) + np.matmul(A, G)
    H = np.linalg.inv(Hinv)  # (I + AG)⁻¹
    K = np.matmul(G, H)
    K = 0.5 * (K + np.swapaxes(K, 1, 2))
    ZVX = np.matmul(H, stats.ZX) / sigma2  # Z'V⁻¹X
    XVX = (stats.XX - np.einsum("jqp,jqr->pr", stats.ZX, np.matmul(K, stats.ZX))) / sigma2
    Phi = np.linalg.inv(XVX)
    XVy = (stats.Xy - np.einsum("jqp,jq->p", stats.ZX, np.einsum("jab,jb->ja", K, stats.Zy))) / sigma2
    gamma = Phi @ XVy
    Ze = stats.Zy - np.einsum("jqp,p->jq", stats.ZX, gamma)
    ee = yy_j - 2 * Xy_j @ gamma + np.einsum("p,jpr,r->j", gamma, XX_j, gamma)
    KZe = np.einsum("jab,jb->ja", K, Ze)
    KA = np.matmul(K, A)
    ZVe = np.einsum("jab,jb->ja", H, Ze) / sigma2
    # X'V⁻²X and e'V⁻²e per unit, for the σ² direction
    ZXK = np.matmul(K, stats.ZX)
    XV2X = (XX_j - 2 * np.matmul(np.swapaxes(stats.ZX, 1, 2), ZXK)
            + np.matmul(np.swapaxes(ZXK, 1, 2), np.matmul(A, ZXK))).sum(axis=0) / sigma2 ** 2
    eV2e = (ee - 2 * np.einsum("ja,ja->j", Ze, KZe) + np.einsum("ja,jab,jb->j", KZe, A, KZe)).sum() / sigma2 ** 2
    trVinv = (stats.n - np.trace(KA, axis1=1, axis2=2)).sum() / sigma2
    S = (A - np.matmul(A, KA)) / sigma2
    grads = [trVinv - np.trace(Phi @ XV2X) - eV2e]
    dXVX = [XV2X]
    for _, _, E in _tau_basis(q):
        M = np.einsum("jap,ab,jbr->pr", ZVX, E, ZVX)
        dXVX.append(M)
        grads.append(np.einsum("jab,ba->", S, E) - np.trace(Phi @ M) - np.einsum("ja,ab,jb->", ZVe, E, ZVe))
    return np.array(grads), Phi, dXVX


def satterthwaite_df(stats: ModelStats, unit: UnitStats, result: FitResult) -> np.ndarray:
    """Per-γ Satterthwaite d.f.: 2(c'Φc)² / (g'Ag), A = 2·H⁻¹ from the REML deviance's Hessian in
    (σ², τ), g = ∂(c'Φc)/∂θ. The Hessian is central differences of the analytic gradient."""
    XX_j, Xy_j = unit_xx_xy(unit, stats.B)
    yy_j = unit.yy
    basis = _tau_basis(stats.q)
    theta0 = np.array([result.sigma2] + [result.tau[a, b] for a, b, _ in basis])

    def grad_at(theta):
        tau = np.zeros((stats.q, stats.q))
        for i, (a, b, _) in enumerate(basis, start=1):
            tau[a, b] = tau[b, a] = theta[i]
        return _reml_gradient(theta[0], tau, stats, XX_j, Xy_j, yy_j)

    _, Phi, dXVX = grad_at(theta0)
    m = theta0.size
    hess = np.zeros((m, m))
    for i in range(m):
        h = 1e-4 * max(abs(theta0[i]), 1e-3 * abs(theta0[0]))
        tp, tm = theta0.copy(), theta0.copy()
        tp[i] += h
        tm[i] -= h
        hess[:, i] = (grad_at(tp)[0] - grad_at(tm)[0]) / (2 * h)
    hess = 0.5 * (hess + hess.T)
    A = 2.0 * np.linalg.pinv(hess)
    out = []
    for k in range(stats.p):
        var = Phi[k, k]
        g = np.array([-(Phi @ D @ Phi)[k, k] for D in dXVX])
        denom = g @ A @ g
        out.append(2 * var ** 2 / denom if denom > 0 else np.nan)
    return np.array(out)


# ---------------------------------------------------------------- empirical Bayes

@dataclass
class UnitEstimates:
    u: np.ndarray  # (J, q) posterior means of the random effects
    u_var: np.ndarray  # (J, q, q) posterior variances (HLM's "posterior variance" of u_j)
    fitted: np.ndarray  # (J, Q+1) Σ γ̂ W for every coefficient
    eb: np.ndarray  # (J, Q+1) fitted + u for random coefficients
    mahalanobis: np.ndarray  # (J,) u_j' Var(u_j)⁻¹ u_j with Var(u_j) = T - posterior var


def empirical_bayes(unit: UnitStats, stats: ModelStats, result: FitResult) -> UnitEstimates:
    ev = result.evaluation
    gamma = ev.gamma
    Ze = stats.Zy - np.einsum("jqp,p->jq", stats.ZX, gamma)
    tau = result.tau
    # E[u_j | y] = T Z'V⁻¹e = σ²G·(Z'e - A K Z'e)/σ² = G H Z'e
    H = np.eye(stats.q) - np.matmul(stats.ZZ, ev.K)
    u = np.einsum("ab,jbc,jc->ja", ev.G, H, Ze)
    post_var = result.sigma2 * ev.K  # Var(u_j | y, γ) = σ² K_j
    coef = np.einsum("jkp,p->jk", stats.B, gamma)
    coef[:, 0] += unit.y_shift  # γ00 back on the outcome's scale
    eb = coef.copy()
    eb[:, stats.random] += u
    marginal = tau[None, :, :] - post_var  # Var(û_j) = T - Var(u_j | y)
    maha = np.full(stats.J, np.nan)
    try:
        maha = np.einsum("ja,ja->j", u, np.linalg.solve(marginal, u[..., None])[..., 0])
    except np.linalg.LinAlgError:
        pass
    return UnitEstimates(u=u, u_var=post_var, fitted=coef, eb=eb, mahalanobis=maha)


# ---------------------------------------------------------------- tests beyond the tables

def homogeneity_test(unit: UnitStats) -> tuple[float, int, float, int]:
    """H = Σ d_j², d_j = (ln s_j² - pooled) / √(2/f_j), over units with f_j = n_j - Q - 1 > 0."""
    K = unit.LL.shape[1]
    f = unit.n - K
    ok = f > 0
    LL, Ly, yy = unit.LL[ok], unit.Ly[ok], unit.yy[ok]
    beta = np.linalg.solve(LL, Ly[..., None])[..., 0]
    rss = yy - np.einsum("jk,jk->j", beta, Ly)
    s2 = rss / f[ok]
    good = s2 > 0
    fj, logs = f[ok][good], np.log(s2[good])
    pooled = (fj * logs).sum() / fj.sum()
    d = (logs - pooled) / np.sqrt(2.0 / fj)
    H = float((d ** 2).sum())
    dfree = int(good.sum()) - 1
    return H, dfree, float(special.chdtrc(dfree, H)), int(good.sum())


def wald_test(C: np.ndarray, gamma: np.ndarray, cov: np.ndarray, rhs: np.ndarray | None = None) -> tuple[float, int, float]:
    """Wald χ² of Cγ = rhs: (Cγ - rhs)'(C V C')⁻¹(Cγ - rhs) on rows(C) d.f."""
    Cg = C @ gamma - (0.0 if rhs is None else rhs)
    chi2 = float(Cg @ np.linalg.solve(C @ cov @ C.T, Cg))
    df = C.shape[0]
    return chi2, df, float(special.chdtrc(df, chi2))


def deviance_test(d_restricted: float, p_restricted: int, d_full: float, p_full: int) -> tuple[float, int, float]:
    chi2 = d_restricted - d_full
    df = p_full - p_restricted
    return chi2, df, float(special.chdtrc(df, chi2)) if df > 0 else float("nan")


def mixture_p(chi2: float, df: int) -> float:
    """50:50 mixture of χ²(df-1) and χ²(df) (Stram & Lee 1994) for a test that puts one variance on its boundary."""
    lower = special.chdtrc(df - 1, chi2) if df > 1 else float(chi2 <= 0)
    return float(0.5 * lower + 0.5 * special.chdtrc(df, chi2))


def least_squares(design: Design, unit: UnitStats, stats: ModelStats, n_units: int) -> dict:
    """HLM's full output: OLS of the first units, OLS of the fixed effects, and least-squares σ², T."""
    K = unit.LL.shape[1]
    names = design.spec.coefficient_names()
    per_unit = []
    f_all = unit.n - K
    eig = np.linalg.eigvalsh(unit.LL)
    ok = (f_all > 0) & (eig[:, 0] > 1e-12 * np.maximum(eig[:, -1], 1e-300))
    betas = np.full((stats.J, K), np.nan)
    s2 = np.full(stats.J, np.nan)
    if ok.any():
        betas[ok] = np.linalg.solve(unit.LL[ok], unit.Ly[ok][..., None])[..., 0]
        s2[ok] = (unit.yy[ok] - np.einsum("jk,jk->j", betas[ok], unit.Ly[ok])) / f_all[ok]
    sufficient = np.flatnonzero(ok)
    betas_out = betas.copy()
    betas_out[:, 0] += unit.y_shift
    for j in range(min(n_units, stats.J)):
        per_unit.append({"unit": design.unit_ids[j], "n": int(unit.n[j]), "ok": bool(np.isfinite(s2[j])),
                         "coefficients": dict(zip(names, [float(x) for x in betas_out[j]])),
                         "residual_variance": float(s2[j])})
    # OLS of the fixed effects, ignoring the nesting
    gamma_ols = np.linalg.solve(stats.XX, stats.Xy)
    rss = stats.yy - gamma_ols @ stats.Xy
    sigma2_ols = rss / (stats.N - stats.p)
    se_ols = np.sqrt(np.diag(sigma2_ols * np.linalg.inv(stats.XX)))
    gamma_out = gamma_ols.copy()
    gamma_out[0] += unit.y_shift
    # least-squares σ² (pooled within units) and T (spread of unit OLS estimates beyond their sampling error)
    idx = np.array(sufficient, dtype=int)
    f = unit.n[idx] - K
    sigma2_ls = float((s2[idx] * f).sum() / f.sum()) if idx.size else float("nan")
    r = stats.random
    tau_ls = np.full((len(r), len(r)), np.nan)
    if idx.size > 1:
        coef = np.einsum("jkp,p->jk", stats.B, gamma_ols)
        dev = (betas[idx] - coef[idx])[:, r]
        inv = np.linalg.inv(unit.LL[idx])[:, r][:, :, r]
        tau_ls = dev.T @ dev / (idx.size - 1) - sigma2_ls * inv.mean(axis=0)
        w, v = np.linalg.eigh(tau_ls)
        tau_ls = (v * np.clip(w, 0, None)) @ v.T
    return {"ols_units": per_unit, "units_with_ols": int(idx.size),
            "gamma_ols": [{"gamma": f.label, "coefficient": f.coefficient, "predictor": f.predictor,
                           "estimate": float(g), "se": float(s)} for f, g, s in zip(design.fixed, gamma_out, se_ols)],
            "sigma2_ols": float(sigma2_ols), "sigma2_least_squares": sigma2_ls, "tau_least_squares": tau_ls.tolist()}
