"""Stage 7, inference: SEs, d.f., p-values, χ² tests, reliabilities and unit-level estimates.

Every formula follows HLM 7's HLM2 output (see the man page). All functions are pure: arrays in,
arrays out, computed from the per-unit cross-products and the estimation result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.design import Design
from ..engine.estimation import FitResult
from ..engine.sandwich import weighted_sandwich
from ..engine import unitsolve
from ..engine.special_functions import special  # the compiled t and χ² tails, without the package
from ..engine.sufficient import ModelStats, UnitStats


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
            out.append(J - len(design.spec.equation((f.q,)).predictors) - 1)
        else:
            out.append(N - J * R - F)
    return np.array(out, dtype=float)


def hlm6_fixed_df(design: Design) -> np.ndarray:
    """HLM 5/6's Approx. d.f.: J - S_q - 1 for γs of random coefficients (as HLM 7), N - F for the γs of
    fixed coefficients, F counting every γ (Snijders & Bosker's example 4.2: 2287 - 2 = 2285; HLM 7 prints
    N - J·R - F = 2155 there)."""
    df = hlm_fixed_df(design)
    for i, f in enumerate(design.fixed):
        if not design.random[f.q]:
            df[i] = design.n - len(design.fixed)
    return df


def prior_deviance_as_printed_here(deviance: float, prior_version: str | None, method: str) -> float:
    """A prior model's deviance as this program prints it. HLM 5 and 6 print the ML deviance ln 2π below
    -2 log L (bdf's empty model: 16251.380618 printed, 16253.218495 = -2 log L); their REML deviance and
    HLM 7's deviances are -2 log L."""
    if prior_version == "hlm6" and method.upper() == "ML":
        return deviance + float(np.log(2 * np.pi))
    return deviance


def fixed_effects(design: Design, unit: UnitStats, stats: ModelStats, result: FitResult) -> FixedTable:
    us = result.solve
    w = us.XVe_units()  # σ²·X_j'V_j⁻¹e_j
    Pinv = us.Pinv()
    if stats.weighted:
        robust = weighted_sandwich(w, stats.w2, Pinv)
    else:
        robust = Pinv @ (w.T @ w) @ Pinv  # the CR0 cluster sandwich (σ² cancels)
    cov = result.cov_gamma
    with np.errstate(invalid="ignore"):  # a negative variance (rounding, a degenerate fit) is NaN, not a warning
        se, robust_se = np.sqrt(np.diag(cov)), np.sqrt(np.diag(robust))
    return FixedTable(gamma=unit.on_outcome_scale(us.gamma), se=se,
                      robust_se=robust_se, df=hlm_fixed_df(design), cov=cov, robust_cov=robust)


# ---------------------------------------------------------------- per-unit OLS: χ² and reliability

@dataclass
class UnitOLS:
    sufficient: np.ndarray  # bool (J,)
    beta: np.ndarray  # (J, q): OLS of ỹ_j on the random columns (nan where not computable)
    var: np.ndarray  # (J, q, q): σ²(Z_j'Z_j)⁻¹
    fitted: np.ndarray  # (J, q): Σ_s γ_qs W_sj for random q


def unit_ols(design: Design, unit: UnitStats, stats: ModelStats, result: FitResult) -> UnitOLS:
    """OLS of ỹ_j (y minus the fixed coefficients' contributions at γ̂) on the random level-1 columns."""
    gamma = result.solve.gamma
    r = stats.random
    coef = np.einsum("jkp,p->jk", stats.B, gamma)  # each unit's level-2 prediction of every β_q
    fixed = np.ones(unit.LL.shape[1], dtype=bool)
    fixed[r] = False
    fixed_cols = np.flatnonzero(fixed)  # np.setdiff1d's answer, without its import of numpy.ma (15 ms)
    Zy_adj = stats.Zy - np.einsum("jaf,jf->ja", unit.LL[:, r][:, :, fixed_cols], coef[:, fixed_cols])
    fit = unitsolve.unit_ols(stats.ZZ, Zy_adj, unit.count)
    return UnitOLS(sufficient=fit.ok, beta=fit.beta, var=result.sigma2 * fit.inv, fitted=coef[:, r])


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
    df = np.array([J_s - len(design.spec.equation((q,)).predictors) - 1 for q in r], dtype=float)
    tdiag = np.diag(tau)
    reliability = (tdiag / (tdiag + vdiag)).mean(axis=0) if J_s else np.full(len(r), np.nan)
    return VarianceTests(chi2=chi2, df=df, p=special.chdtrc(df, chi2), reliability=reliability, n_sufficient=J_s)


# ---------------------------------------------------------------- ML standard errors of σ² and τ

def _tau_basis(q: int, structure=None) -> list[tuple[int, int, np.ndarray]]:
    """The free entries of τ (all of the lower triangle, or the diagonal alone) as symmetric E_ab."""
    diagonal = structure is not None and structure.value == "diagonal"
    out = []
    for a in range(q):
        for b in range(a + 1):
            if diagonal and a != b:
                continue
            E = np.zeros((q, q))
            E[a, b] = E[b, a] = 1.0
            out.append((a, b, E))
    return out


def variance_information(stats: ModelStats, result: FitResult) -> np.ndarray:
    """Expected (Fisher) information of (σ², τ lower triangle) under full ML:
    I_ab = ½ Σ_j tr(V_j⁻¹ ∂V_j/∂θ_a V_j⁻¹ ∂V_j/∂θ_b), from the per-unit solve (∂V/∂σ² = I,
    ∂V/∂τ_ab = Z E_ab Z')."""
    us = result.solve
    s2 = result.sigma2
    A, K = stats.ZZ, us.K_units
    KA = np.matmul(K, A)
    AKA = np.matmul(A, KA)
    S = (A - AKA) / s2  # Z'V⁻¹Z per unit
    ZV2Z = (A - 2 * AKA + np.matmul(AKA, KA)) / s2 ** 2
    trV2 = (stats.n - 2 * np.trace(KA, axis1=1, axis2=2) + np.einsum("jab,jba->j", KA, KA)) / s2 ** 2
    basis = _tau_basis(stats.q, result.structure)
    m = 1 + len(basis)
    info = np.zeros((m, m))
    info[0, 0] = 0.5 * trV2.sum()
    SE = [np.matmul(S, E) for _, _, E in basis]
    for i, (_, _, E) in enumerate(basis, start=1):
        info[0, i] = info[i, 0] = 0.5 * np.einsum("jab,ba->", ZV2Z, E)
        for k in range(1, i + 1):
            info[i, k] = info[k, i] = 0.5 * np.einsum("jab,jba->", SE[i - 1], SE[k - 1])
    return info


def variance_standard_errors(stats: ModelStats, result: FitResult,
                             sigma2_known: bool = False) -> tuple[float | None, np.ndarray]:
    """(SE of σ², SEs of τ) under ML; sigma2_known (a V-known model): σ²'s row and column of the
    information are dropped, as σ² is not estimated, and its SE is None."""
    info = variance_information(stats, result)
    cov = np.linalg.pinv(info[1:, 1:] if sigma2_known else info)
    se = np.sqrt(np.clip(np.diag(cov), 0, None))
    if sigma2_known:
        se = np.concatenate([[np.nan], se])
    q = stats.q
    se_tau = np.zeros((q, q))
    for i, (a, b, _) in enumerate(_tau_basis(q, result.structure), start=1):
        se_tau[a, b] = se_tau[b, a] = se[i]
    return (None if sigma2_known else float(se[0])), se_tau


# ---------------------------------------------------------------- Satterthwaite d.f. (as lmerTest)

LMERTEST_EIGEN_TOL = 1e-8  # lmerTest drops Hessian eigenvalues at or below this (as_lmerModLT's tol)


def satterthwaite_df(stats: ModelStats, unit: UnitStats, result: FitResult,
                     gamma_map: np.ndarray | None = None) -> np.ndarray:
    """Per-γ Satterthwaite d.f. as lmerTest computes them, in coordinates free of the predictors'
    location and scale.

    lmerTest works in its variance parameters φ = (θ, σ): θ the lower triangle of lme4's Cholesky
    factor of τ/σ² (one entry per term for independent effects), and differentiates the fit's own
    deviance, REML or ML, at fixed σ (unitsolve.UnitSolve.deviance). With Φ(φ) = σ²P⁻¹ = Cov(γ̂),
    H the Hessian of that deviance, A = 2H⁺ (eigenvalues ≤ 1e-8 dropped) and g = ∂Φ_kk/∂φ:
        d.f._k = 2Φ_kk² / (g'Ag).
    In the interior this is the same in any parametrisation linear in θ, but at a boundary the
    Cholesky factor of a singular τ is not a smooth function of τ's coordinates: θ of an uncentred
    year and θ of the centred year then see different Hessians (an uncentred year gave d.f. of
    0.0003 where the centred one gives lmerTest's 150). So θ is taken in the coordinates the search
    ran in (estimation.fit: random columns centred at their grand mean when the intercept is random
    and scaled to unit RMS, X orthonormalised, both fixed by the data, not by how the user coded
    a predictor), and γ_k = t_k'(γ̃ + b) with t_k row k of T = (T⁻¹)⁻¹, so Φ_kk = t_k'Φ̃t_k. For a
    centred predictor this is lmerTest's own computation on the centred data.
    At a boundary the zero column of Λ drops out by itself: the deviance is even in it, so Φ's
    derivative along it vanishes. H comes from central differences of the analytic gradient
    (∂d/∂Λ = 2ΓΛ, ∂d/∂σ = (2/σ)(ν − rss/σ²)); g from central differences of Φ."""
    from ..engine.estimation import TauStructure
    from ..engine.search import chol_psd

    reml = result.method == "REML"
    work, G, contrasts = _search_coordinates(stats, result)
    if gamma_map is not None:
        contrasts = gamma_map @ contrasts
    q = work.q
    idx = (np.arange(q), np.arange(q)) if result.structure is TauStructure.DIAGONAL else np.tril_indices(q)
    lam0 = chol_psd(G)
    x0 = np.concatenate([lam0[idx], [np.sqrt(result.sigma2)]])
    nu = work.N - work.p if reml else work.N
    col_scale = np.sqrt(work.N / np.maximum(np.diagonal(work.ZZ, axis1=1, axis2=2).sum(axis=0), 1e-300))
    steps = np.array([1e-4 * max(abs(x0[i]), 1e-2 * col_scale[idx[1][i]]) for i in range(x0.size - 1)]
                     + [1e-4 * x0[-1]])

    def at(x):
        lam = np.zeros((q, q))
        lam[idx] = x[:-1]
        return unitsolve.unit_solve(work, lam), lam, x[-1] ** 2

    def gradient(x):
        us, lam, s2 = at(x)
        g_lam = (2.0 * us.gradient_G(reml, sigma2=s2) @ lam)[idx]
        return np.concatenate([g_lam, [2.0 / x[-1] * (nu - us.rss / s2)]])

    def var_gamma(x):
        """Var(γ_k) for every k: diag(T Φ̃ T')."""
        us, _, s2 = at(x)
        return np.einsum("ka,ab,kb->k", contrasts, s2 * us.Pinv(), contrasts)

    m = x0.size
    hess = np.zeros((m, m))
    jac = np.zeros((contrasts.shape[0], m))
    for i in range(m):
        xp, xm = x0.copy(), x0.copy()
        xp[i] += steps[i]
        xm[i] -= steps[i]
        hess[:, i] = (gradient(xp) - gradient(xm)) / (2 * steps[i])
        jac[:, i] = (var_gamma(xp) - var_gamma(xm)) / (2 * steps[i])
    return _satterthwaite(0.5 * (hess + hess.T), jac, var_gamma(x0))


def _search_coordinates(stats: ModelStats, result: FitResult) -> tuple:
    """(the statistics, G = τ/σ² and T, with γ = T(γ̃ + b)) in the coordinates the search ran in
    (see satterthwaite_df); G diagonal for a diagonal τ."""
    from ..engine.estimation import TauStructure

    G = result.tau / result.sigma2
    contrasts = np.eye(stats.p)
    work = stats
    if result.standardised is not None:
        work, A_map, Tinv, _ = result.standardised
        Ai = np.linalg.inv(A_map)
        G = Ai @ G @ Ai.T
        contrasts = np.linalg.inv(Tinv)  # row k: γ_k = t_k'(γ̃ + b)
    G = 0.5 * (G + G.T)
    if result.structure is TauStructure.DIAGONAL:
        G = np.diag(np.diag(G))
    return work, G, contrasts


def satterthwaite_from_hessian(hess: np.ndarray, jac: np.ndarray, Phi: np.ndarray) -> np.ndarray:
    """_satterthwaite, for the engines whose variance parameters are not a two-level unit solve's (crossed)."""
    return _satterthwaite(hess, jac, Phi)


def _satterthwaite(hess: np.ndarray, jac: np.ndarray, Phi: np.ndarray) -> np.ndarray:
    """d.f._k = 2Φ_kk² / (g_k'Ag_k), A = 2H⁺ with H's eigenvalues at or below lmerTest's tolerance dropped;
    NaN where g_k'Ag_k is not positive."""
    w, V = np.linalg.eigh(hess)
    pos = w > LMERTEST_EIGEN_TOL
    A = 2.0 * (V[:, pos] / w[pos]) @ V[:, pos].T
    out = []
    for k in range(jac.shape[0]):
        g = jac[k]
        denom = float(g @ A @ g)
        out.append(2 * Phi[k] ** 2 / denom if denom > 0 else np.nan)
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
    u, post_var = result.solve.posterior(result.sigma2)
    coef = unit.on_outcome_scale(np.einsum("jkp,p->jk", stats.B, result.solve.gamma))
    eb = coef.copy()
    eb[:, stats.random] += u
    marginal = result.tau[None, :, :] - post_var  # Var(û_j) = T - Var(u_j | y)
    maha = np.full(stats.J, np.nan)
    try:
        maha = np.einsum("ja,ja->j", u, np.linalg.solve(marginal, u[..., None])[..., 0])
    except np.linalg.LinAlgError:
        pass
    return UnitEstimates(u=u, u_var=post_var, fitted=coef, eb=eb, mahalanobis=maha)


# ---------------------------------------------------------------- tests beyond the tables

def homogeneity_test(unit: UnitStats) -> tuple[float, int, float, int, int]:
    """H = Σ d_j², d_j = (ln s_j² - pooled) / √(2/f_j), over units with f_j = n_j - Q - 1 > 0 whose
    level-1 OLS is estimable (one rank rule, unitsolve.unit_ols) and whose residual variance is
    positive. Returns (H, d.f., p, units used, units left out)."""
    K = unit.LL.shape[1]
    fit = unitsolve.unit_ols(unit.LL, unit.Ly, unit.count, unit.yy)
    f = unit.count - K
    s2 = np.where(fit.ok, fit.rss / np.where(f > 0, f, 1), np.nan)
    good = fit.ok & (s2 > 0)
    fj, logs = f[good], np.log(s2[good])
    used = int(good.sum())
    if used < 2:
        return float("nan"), 0, float("nan"), used, int(unit.count.size - used)
    pooled = (fj * logs).sum() / fj.sum()
    d = (logs - pooled) / np.sqrt(2.0 / fj)
    H = float((d ** 2).sum())
    dfree = used - 1
    return H, dfree, float(special.chdtrc(dfree, H)), used, int(unit.count.size - used)


def wald_test(C: np.ndarray, gamma: np.ndarray, cov: np.ndarray, rhs: np.ndarray | None = None) -> tuple[float, int, float]:
    """Wald χ² of Cγ = rhs: (Cγ - rhs)'(C V C')⁻¹(Cγ - rhs) on rows(C) d.f."""
    Cg = C @ gamma - (0.0 if rhs is None else rhs)
    chi2 = float(Cg @ np.linalg.solve(C @ cov @ C.T, Cg))
    df = C.shape[0]
    return chi2, df, float(special.chdtrc(df, chi2))


def deviance_test(d_restricted: float, p_restricted: int, d_full: float, p_full: int) -> tuple[float, int, float]:
    """Likelihood-ratio χ² of a restricted model against a fuller one. Refuses what cannot be a
    test: no extra parameters, or a fuller model that fits worse (beyond rounding, 1e-9 relative)."""
    from ..errors import ModelError

    chi2 = d_restricted - d_full
    df = p_full - p_restricted
    if not (np.isfinite(d_restricted) and np.isfinite(d_full)):
        raise ModelError("a deviance in the test is not a finite number; give the deviances as printed by the fits")
    if df <= 0:
        raise ModelError(f"the models have {p_restricted} and {p_full} parameters: a deviance test needs the fuller "
                         "model to have more; check the parameter counts")
    if chi2 < -1e-9 * max(abs(d_full), 1.0):
        raise ModelError(f"the model with more parameters has the larger deviance ({d_full:.6f} > {d_restricted:.6f}), "
                         "so the models are not nested or a fit is not at its optimum; no test is possible")
    chi2 = max(chi2, 0.0)
    return chi2, df, float(special.chdtrc(df, chi2))


def information_criteria(deviance: float, n_fixed: int, n_variance: int, n_records: int) -> tuple[float, float]:
    """AIC and BIC as lme4's AIC() and BIC(): every fixed effect and variance parameter counts
    (under REML too), and BIC's n is the number of level-1 records."""
    k = n_fixed + n_variance
    return deviance + 2.0 * k, deviance + k * float(np.log(n_records))


def mixture_p(chi2: float, df: int) -> float:
    """50:50 mixture of χ²(df-1) and χ²(df) (Stram & Lee 1994) for a test that puts one variance on its boundary."""
    lower = special.chdtrc(df - 1, chi2) if df > 1 else float(chi2 <= 0)
    return float(0.5 * lower + 0.5 * special.chdtrc(df, chi2))


def least_squares(design: Design, unit: UnitStats, stats: ModelStats, n_units: int) -> dict:
    """HLM's full output: OLS of the first units, OLS of the fixed effects, and least-squares σ², T."""
    K = unit.LL.shape[1]
    names = design.spec.coefficient_names()
    per_unit = []
    f_all = unit.count - K
    ols = unitsolve.unit_ols(unit.LL, unit.Ly, unit.count, unit.yy)
    ok, betas = ols.ok, ols.beta
    s2 = np.where(ok, ols.rss / np.where(f_all > 0, f_all, 1), np.nan)
    sufficient = np.flatnonzero(ok)
    betas_out = unit.on_outcome_scale(betas)
    # as HLM: the first n_units units whose OLS can be computed (a unit with fewer records than
    # coefficients, or a singular X_j'X_j, is skipped, not listed)
    for j in np.flatnonzero(ok)[:n_units]:
        per_unit.append({"unit": design.unit_ids[j], "n": int(unit.count[j]), "ok": bool(np.isfinite(s2[j])),
                         "coefficients": dict(zip(names, [float(x) for x in betas_out[j]])),
                         "residual_variance": float(s2[j])})
    # OLS of the fixed effects, ignoring the nesting
    gamma_ols = np.linalg.solve(stats.XX, stats.Xy)
    rss = stats.yy - gamma_ols @ stats.Xy
    sigma2_ols = rss / (stats.N - stats.p)
    se_ols = np.sqrt(np.diag(sigma2_ols * np.linalg.inv(stats.XX)))
    gamma_out = unit.on_outcome_scale(gamma_ols)
    # least-squares σ² (pooled within units) and T (spread of unit OLS estimates beyond their sampling error)
    idx = np.array(sufficient, dtype=int)
    f = unit.count[idx] - K
    sigma2_ls = float((s2[idx] * f).sum() / f.sum()) if idx.size else float("nan")
    r = stats.random
    tau_ls = np.full((len(r), len(r)), np.nan)
    if idx.size > 1:
        coef = np.einsum("jkp,p->jk", stats.B, gamma_ols)
        dev = (betas[idx] - coef[idx])[:, r]
        inv = ols.inv[idx][:, r][:, :, r]
        tau_ls = dev.T @ dev / (idx.size - 1) - sigma2_ls * inv.mean(axis=0)
        w, v = np.linalg.eigh(tau_ls)
        tau_ls = (v * np.clip(w, 0, None)) @ v.T
    return {"ols_units": per_unit, "units_with_ols": int(idx.size),
            "gamma_ols": [{"gamma": f.label, "coefficient": f.coefficient, "predictor": f.predictor,
                           "estimate": float(g), "se": float(s)} for f, g, s in zip(design.fixed, gamma_out, se_ols)],
            "sigma2_ols": float(sigma2_ols), "sigma2_least_squares": sigma2_ls, "tau_least_squares": tau_ls.tolist()}
