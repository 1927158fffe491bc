"""Heterogeneous level-1 variance (HLM 7's heterol1var; --level1-variance X1,X2):
    Var(r_ij) = σ²_ij,   log σ²_ij = α0 + α1·X1_ij + ... + αk·Xk_ij.

At given α1..αk write h_ij = exp(Σ α_m X_mij). Record ij divided by √h_ij is the two-level model with one
level-1 variance σ² = exp(α0), so the one engine (profiled deviance over τ, γ by GLS, σ² profiled, the
certificate) fits it; the scaling's Jacobian puts Σ log h_ij back, so the deviance of the data as given is

    d(α) = d_scaled(α) + Σ_ij α'X_ij,

for REML as for ML (X'V⁻¹X is unchanged by scaling rows). d(α) is the deviance profiled over σ², τ and γ;
it is minimised over α1..αk by Newton steps on central differences (in units of each predictor's standard
deviation), and the optimum is claimed only when the inner fit is certified, the Hessian of d(α) is positive
definite and the decrease Newton still predicts, ½g'H⁻¹g, is below ALPHA_TOL.

Standard errors of α0..αk: the inverse of half the Hessian of the deviance over (α0, α) with τ and γ profiled
(d̃(α0, α) = min over τ at σ² = exp(α0)): the observed information of a profile likelihood, which gives the
same α block as the full observed information (glmmTMB's SEs of its dispersion model). The likelihood-ratio
test against homogeneous variance compares d(α̂) with d(0) on k d.f. (REML deviances are comparable here: the
fixed effects are the same).
"""

from __future__ import annotations

import numpy as np

from ..data import design as design_stage
from ..engine.estimation import TauStructure, fit
from ..engine.sufficient import model_stats, unit_cross_products
from ..errors import DataError, ModelError
from ..io.archive import unknown_column
from . import inference
from .pipeline import Analysis, analyse_stats, check_estimable

OPTION = "--level1-variance"
ALPHA_TOL = 1e-7  # deviance units: the decrease in d(α) Newton may still predict at a claimed optimum
_STEP = 1e-3  # central-difference step in standardised α (α times the predictor's standard deviation)


def variance_predictors(archive, design, names) -> np.ndarray:
    """(N, k): each record's value of every variance predictor, a level-1 column or a level-2 one given to
    each record of its unit; refused in one line when missing, constant or not a variable."""
    names1, names2 = list(archive.level1_names), list(archive.level2_names)
    cols = []
    for name in names:
        if name in names1:
            x = archive.level1_column(name)
            x = x if design.record_positions is None else x[design.record_positions]
        elif name in names2:
            x = np.repeat(archive.level2_column(name)[design.unit_positions], design.sizes)
        else:
            raise unknown_column(archive, name, DataError(f"{OPTION} {name}: no such variable in the level-1 or level-2 file"))
        x = np.asarray(x, dtype=float)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{OPTION} {name}: {int((~np.isfinite(x)).sum())} of the records used have no value of "
                            f"{name}; drop them (e.g. mdm build --missing now)")
        if np.ptp(x) == 0:
            raise ModelError(f"{OPTION} {name}: {name} is constant over the records used, so its coefficient is "
                             "the intercept α0 of log σ²; remove it")
        cols.append(x)
    X = np.column_stack(cols)
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(X)), X])) < X.shape[1] + 1:
        raise ModelError(f"{OPTION} {','.join(names)}: the variance predictors are collinear (with the intercept "
                         "α0 too); drop one")
    return X


class _Profile:
    """d(α) and d̃(α0, α): fits of the model on records scaled by exp(-½α'X), warm-started."""

    def __init__(self, design, X: np.ndarray, method: str, structure: TauStructure, max_iterations: int):
        self.design, self.X, self.method, self.structure = design, X, method, structure
        self.max_iterations = max_iterations
        self.B = design.block_design()
        self.start = None
        self.count = 0

    def unit(self, alpha: np.ndarray):
        s = np.exp(-0.5 * (self.X @ alpha))
        return unit_cross_products(np.asfortranarray(self.design.L * s[:, None]), self.design.y * s,
                                   self.design.offsets, center_y=False)

    def fit(self, alpha: np.ndarray, sigma2: float | None = None):
        self.count += 1
        stats = model_stats(self.unit(alpha), self.B, self.design.random)
        result = fit(stats, self.method, max_iterations=self.max_iterations, structure=self.structure,
                     start=self.start, sigma2=sigma2)
        if result.converged and sigma2 is None:
            self.start = result.certificate.G
        return result, float(result.deviance + (self.X @ alpha).sum())

    def __call__(self, alpha: np.ndarray) -> float:
        return self.fit(alpha)[1]


def _derivatives(f, z: np.ndarray, h: float, f0: float | None = None):
    """Central-difference gradient and Hessian of f at z (step h in every coordinate)."""
    k = z.size
    f0 = f(z) if f0 is None else f0
    g, H = np.zeros(k), np.zeros((k, k))
    plus, minus = np.zeros(k), np.zeros(k)
    for i in range(k):
        e = np.zeros(k)
        e[i] = h
        plus[i], minus[i] = f(z + e), f(z - e)
        g[i] = (plus[i] - minus[i]) / (2 * h)
        H[i, i] = (plus[i] - 2 * f0 + minus[i]) / h ** 2
    for i in range(k):
        for j in range(i):
            ei, ej = np.zeros(k), np.zeros(k)
            ei[i], ej[j] = h, h
            H[i, j] = H[j, i] = (f(z + ei + ej) - f(z + ei - ej) - f(z - ei + ej) + f(z - ei - ej)) / (4 * h * h)
    return g, 0.5 * (H + H.T)


def minimise_alpha(profile: _Profile, scale: np.ndarray, max_steps: int = 50):
    """Newton on d(α) in standardised coordinates z = α·sd(X) from z = 0 (homogeneous variance), halving
    steps that do not lower d. Returns (α̂, d(α̂), gradient, Hessian, predicted decrease, steps)."""
    k = scale.size
    z = np.zeros(k)
    f = lambda zz: profile(zz / scale)  # noqa: E731
    d = f(z)
    g = H = None
    decrement = np.inf
    for step in range(max_steps):
        g, H = _derivatives(f, z, _STEP, d)
        w = np.linalg.eigvalsh(H)
        if w[0] > 0:
            dz = -np.linalg.solve(H, g)
            decrement = 0.5 * float(g @ -dz)
        else:  # not convex here: a gradient step, scaled by the largest curvature
            dz = -g / max(abs(w[-1]), 1.0)
            decrement = np.inf
        if decrement <= ALPHA_TOL:
            return z / scale, d, g, H, decrement, step
        t = 1.0
        while t > 1e-6:
            trial = f(z + t * dz)
            if trial < d:
                z, d = z + t * dz, trial
                break
            t /= 2
        else:
            return z / scale, d, g, H, decrement, step
    return z / scale, d, g, H, decrement, max_steps


def alpha_covariance(profile: _Profile, alpha: np.ndarray, sigma2: float, scale: np.ndarray) -> np.ndarray:
    """Cov(α0, α) = 2 H⁻¹, H the central-difference Hessian of d̃(α0, α) = min over τ of the deviance at
    σ² = exp(α0), in coordinates (α0, α·sd)."""
    full = np.concatenate([[1.0], scale])

    def f(z):
        a = z / full
        return profile.fit(a[1:], sigma2=float(np.exp(a[0])))[1]

    z0 = np.concatenate([[np.log(sigma2)], alpha]) * full
    _, H = _derivatives(f, z0, _STEP)
    cov = 2.0 * np.linalg.pinv(H)
    return cov / np.outer(full, full)


def analyse_heterogeneous(spec, archive, names, df_method: str = "hlm") -> Analysis:
    """The certified fit with log σ²_ij = α0 + α'X_ij, the α table and the test against homogeneous σ²."""
    design = design_stage.make_design(spec, archive)
    check_estimable(design)
    X = variance_predictors(archive, design, names)
    method = spec.method.upper()
    structure = TauStructure(spec.options.tau)
    profile = _Profile(design, X, method, structure, spec.options.max_iterations)
    homogeneous, _ = profile.fit(np.zeros(X.shape[1]))
    if not homogeneous.converged:
        raise ModelError(f"{OPTION}: the model with one level-1 variance (the start) has no certified optimum; fit "
                         "it without --level1-variance first")
    scale = X.std(axis=0)
    alpha, deviance, g, H, decrement, steps = minimise_alpha(profile, scale)
    s = np.exp(-0.5 * (X @ alpha))
    unit = unit_cross_products(np.asfortranarray(design.L * s[:, None]), design.y * s, design.offsets,
                               center_y=False)
    a = analyse_stats(design, unit, df_method, None, start=profile.start)
    a.result.deviance = float(a.result.deviance + (X @ alpha).sum())
    # the ML SEs of σ² and τ from the scaled model hold α fixed, which the information between τ and α
    # (nonzero: ½ tr(V⁻¹ZEZ'V⁻¹ diag(h·x))) would make too small: σ²'s is α0's, in the α table; τ's are not given
    a.se_sigma2 = a.se_tau = None
    k = X.shape[1]
    a.result.n_params += k
    failed = []
    if not np.linalg.eigvalsh(H)[0] > 0:
        failed.append("the deviance is not convex in α at the point reached (its Hessian is not positive definite)")
    if not decrement <= ALPHA_TOL:
        failed.append(f"Newton still predicts a decrease of {decrement:.1E} in the deviance by changing α "
                      f"(tolerance {ALPHA_TOL:.0E})")
    if failed:
        a.result.converged = False
        a.result.certificate.certified = False
        a.result.certificate.failed.extend(failed)
    sigma2 = a.result.sigma2
    cov = alpha_covariance(profile, alpha, sigma2, scale) if not failed else np.full((k + 1, k + 1), np.nan)
    coef = np.concatenate([[np.log(sigma2)], alpha])
    with np.errstate(invalid="ignore"):
        se = np.sqrt(np.diag(cov))
    z = coef / se
    from ..engine.special_functions import special

    p = special.erfc(np.abs(z) / np.sqrt(2.0))
    chi2, df, p_lr = inference.deviance_test(float(homogeneous.deviance), homogeneous.n_params,
                                             a.result.deviance, a.result.n_params)
    a.extras["level1_variance"] = {
        "predictors": list(names),
        "alpha": [{"label": f"α{m}", "predictor": "INTRCPT1" if m == 0 else names[m - 1], "estimate": float(coef[m]),
                   "se": float(se[m]), "z": float(z[m]), "p": float(p[m])} for m in range(k + 1)],
        "covariance": cov.tolist(),
        "newton": {"steps": int(steps), "gradient": [float(v) for v in g], "decrement": float(decrement),
                   "tolerance": ALPHA_TOL, "fits": profile.count},
        "test": {"deviance_homogeneous": float(homogeneous.deviance), "params_homogeneous": int(homogeneous.n_params),
                 "deviance": float(a.result.deviance), "params": int(a.result.n_params), "chi2": float(chi2),
                 "df": int(df), "p": float(p_lr)},
    }
    return a
