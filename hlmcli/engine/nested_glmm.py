"""Binary, binomial and count outcomes at three or more levels (HLM3's HGLM): PQL around the nested
linear engine (nested.py, nested_fit.py), as pure functions of arrays.

Model. η = Xγ + Z2b2 + Z3b3 (+ … + offset), bℓ ~ N(0, τℓ) per level-ℓ unit, the family's canonical
link (family.py); the columns are the nested engine's (nested.columns_of: every column a product of
the predictors on a path through the equations).

PQL (Breslow & Clayton 1993; Raudenbush & Bryk 2002 ch. 10), as hglm.pql at two levels: macro
iterations linearise around η = Xγ + Σ Zℓb̂ℓ (fixed plus EB), working variate z = η − offset + ℓ'/W,
weights W (family.derivatives); each inner fit is the nested linear model z = Xγ + Σ Zℓbℓ + e,
e ~ N(0, σ²W⁻¹), fitted by nested_fit.fit_nested, σ² fixed at 1 (or profiled with over-dispersion).

The known weights enter through the nested engine's level-1 sampling weights. A level-1 weight w
makes a record's Gaussian factor (2πσ²)^(−w/2) exp(−w r²/2σ²) (nested.py, "Sampling weights"), whose
exponent is that of N(0, σ²/w); the two differ only in the constant ½Σ log w and in the count of
records multiplying log σ² (Σw in place of N). So the weights are scaled to sum to N, w = cW with
c = N/ΣW: the weighted fit is then the likelihood of z ~ N(Xγ + Zb, σ'²/w) up to a constant, and
σ²/W = cσ²/w gives σ'² = cσ²; σ² fixed at 1 is σ'² fixed at c, and with over-dispersion
σ̂² = σ̂'²/c. τ is the same on both scales. Full PQL (ML) by default as HLM3, restricted (REML) on request.

The fixed-point check is the two-level one (hglm.FixedPointCheck, hglm.FIXED_POINT_FACTOR): at the
final η the model is linearised again and refitted from the engine's own starts; the last macro
iteration's (γ, τ) must lie above that refit's certified optimum, in the refit's deviance, by at
most what the two certificates can tell apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .estimation import tol_decrement
from .family import Family
from .hglm import FIXED_POINT_FACTOR, FixedPointCheck, fixed_point_verdict
from .nested import LevelsData, NestedFit, columns_of
from .nested import NestedDeviance as Objective
from .nested_fit import fit_nested
from .unitsolve import factor


@dataclass(frozen=True)
class LevelsGLMData:
    """A K-level HGLM's data: the nested engine's LevelsData (y the outcome: 0/1, successes or counts),
    the family, the trials of a binomial outcome and the offset (log exposure) of a count, or None."""
    data: LevelsData
    family: Family
    trials: np.ndarray | None = None
    offset: np.ndarray | None = None


@dataclass(frozen=True)
class RecordColumns:
    """The model's columns record by record: X (N, p) and, per level 2..K, Zℓ (N, qℓ) and each
    record's level-ℓ unit (N,)."""
    X: np.ndarray
    Z: tuple
    units: tuple

    def eta(self, gamma: np.ndarray, eb=None, offset: np.ndarray | None = None) -> np.ndarray:
        """Xγ + Σ Zℓ bℓ[unit] (+ offset); eb: per level 2..K the (Jℓ, qℓ) random effects, or None."""
        eta = self.X @ gamma
        if eb is not None:
            for Z, b, unit in zip(self.Z, eb, self.units):
                if Z.shape[1]:
                    eta += np.einsum("ia,ia->i", Z, b[unit])
        return eta if offset is None else eta + offset


def record_columns(data: LevelsData) -> RecordColumns:
    """Each column of the model as the product of the predictors on its path (nested.columns_of), per
    record: the predictor of level d is read at the record's level-d unit."""
    K = data.n_levels
    units = [np.arange(np.asarray(data.y).size)]
    for parent in data.parents:
        units.append(np.asarray(parent, dtype=np.intp)[units[-1]])
    preds = [np.asarray(p, dtype=float) for p in data.predictors]
    N = units[0].size

    def column(path) -> np.ndarray:
        v = np.ones(N)
        for depth, col in path:
            if col is not None:
                v = v * preds[depth - 1][units[depth - 1], col]
        return v

    cols = columns_of(data.layout, K)
    X = np.column_stack([column(p) for p in cols.x]) if cols.x else np.zeros((N, 0))
    Z = tuple(np.column_stack([column(p) for p in z]) if z else np.zeros((N, 0)) for z in cols.z)
    return RecordColumns(X, Z, tuple(units[1:]))


@dataclass
class LevelsPQLResult:
    """A K-level PQL fit: the last inner fit (a NestedFit on the working model: γ, its covariance, τ
    per level, EB, the certificate) and the loop around it. sigma2 is 1, or the over-dispersion
    scale; the inner fit's own sigma2 is on the normalised scale of its weights (module docstring)."""
    fit: NestedFit
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray
    taus: tuple
    sigma2: float
    eb: tuple
    eb_var: tuple
    eta: np.ndarray
    macro_iterations: int
    converged: bool
    reml: bool
    overdispersion: bool
    check: FixedPointCheck | None = None
    failed: list[str] = field(default_factory=list)


def working_data(glm: LevelsGLMData, eta: np.ndarray) -> tuple[LevelsData, float]:
    """The linearised model at η: (LevelsData with the working variate as outcome and the normalised
    working weights as level-1 weights, the normalising factor c = N/ΣW)."""
    d = glm.data
    y = np.asarray(d.y, dtype=float)
    dl, W, _ = glm.family.derivatives(eta, y, glm.trials)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = eta - (glm.offset if glm.offset is not None else 0.0) + dl / W
    if not (np.all(np.isfinite(z)) and np.all(W > 0)):
        raise FloatingPointError("a working weight vanished (a fitted probability or rate at 0 or 1)")
    c = W.size / float(W.sum())
    K = d.n_levels
    return replace(d, y=z, weights=(W * c,) + (None,) * (K - 1)), c


def inner_fit(glm: LevelsGLMData, eta: np.ndarray, reml: bool, overdispersion: bool, diagonal, max_iterations: int,
              fixed_map=None):
    """(the certified nested fit of the working model at η, its normalising factor c); fixed_map: H of
    --constrain (γ = Hδ): the working model fitted on X·H, given back in every γ by fit_nested."""
    wd, c = working_data(glm, eta)
    return fit_nested(wd, reml, max_iterations, diagonal, sigma2=None if overdispersion else c,
                      fixed_map=fixed_map), c


def _relative_G(fit: NestedFit, c_fit: float, c_to: float, overdispersion: bool) -> tuple:
    """The fit's τℓ/σ'² on the normalised scale of another working model (factor c_to: σ'² = c_to·σ²)."""
    sigma2 = fit.sigma2 / c_fit if overdispersion else 1.0  # σ² of the working model
    return tuple(t / (c_to * sigma2) for t in fit.taus)


def fixed_point_excess(last: NestedFit, c_last: float, refit: NestedFit, c_refit: float, reml: bool,
                       overdispersion: bool) -> tuple[float, float]:
    """hglm.fixed_point_excess for the nested working model: how far `last` is above `refit`'s
    certified optimum in the refit's deviance (the rise of γ off its GLS value at the last G
    included), and the tolerance for it (FIXED_POINT_FACTOR × the certificates' tolerance)."""
    us1, tr = refit.solve, refit.standardisation
    obj = Objective(us1.stats, reml, None if overdispersion else refit.sigma2)
    Gs0 = []
    for A, G in zip(tr.As, _relative_G(last, c_last, c_refit, overdispersion)):
        Ainv = np.linalg.inv(A)
        G0 = Ainv @ G @ Ainv.T
        Gs0.append(0.5 * (G0 + G0.T))
    try:
        us0 = obj.solve(tuple(factor(G) for G in Gs0))
    except (FloatingPointError, np.linalg.LinAlgError):
        return np.inf, 0.0
    gamma = last.gamma
    if getattr(last, "fixed_map", None) is not None:  # --constrain: the standardisation is of δ (γ = Hδ, H of full rank)
        gamma = np.linalg.lstsq(last.fixed_map, gamma, rcond=None)[0]
    dg = np.linalg.solve(tr.TX, gamma - tr.b) - us0.gamma  # γ̃ = TX⁻¹(γ − b)
    s2 = refit.sigma2
    rise = float(dg @ us0.P @ dg) / s2
    Gs1 = tuple(lam @ lam.T for lam in us1.lams)
    d1 = obj.deviance_of(us1)
    excess = obj.deviance_of(us0) + rise - d1
    tol = FIXED_POINT_FACTOR * max(refit.certificate.tolerance, last.certificate.tolerance,
                                   tol_decrement(d1, obj.noise(Gs1)))
    return float(excess), float(tol)


def _check_fixed_point(last, c_last, refit, c_refit, reml, overdispersion) -> FixedPointCheck:
    se = np.sqrt(np.clip(np.diag(refit.cov_gamma), 0.0, None))
    dg = float(np.max(np.abs(refit.gamma - last.gamma) / (np.abs(refit.gamma) + se + 1e-300)))
    G0 = _relative_G(last, c_last, 1.0, overdispersion)
    G1 = _relative_G(refit, c_refit, 1.0, overdispersion)
    dt = max((float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b))))) for a, b in zip(G0, G1) if b.size),
             default=0.0)
    excess, tol = fixed_point_excess(last, c_last, refit, c_refit, reml, overdispersion)
    return fixed_point_verdict(refit, excess, tol, dg, dt, "relative")


def pql_levels(glm: LevelsGLMData, reml: bool = False, overdispersion: bool = False, macroit: int = 100,
               stopmacro: float = 1e-8, diagonal=False, max_iterations: int = 1000,
               check: bool = True, fixed_map=None) -> LevelsPQLResult:
    """PQL macro iterations around the certified nested fit (module docstring); converged only when η
    settles (max|Δη| ≤ stopmacro·(1 + max|η|)) and the fixed point passes its check. fixed_map: H of
    --constrain: every working model fitted on X·H (η = XHδ + Zb is the constrained model's)."""
    fam, d = glm.family, glm.data
    y = np.asarray(d.y, dtype=float)
    cols = record_columns(d)
    off = glm.offset if glm.offset is not None else 0.0
    eta = fam.start(y, glm.trials, glm.offset) + off
    converged, failed = False, []
    r = c = r_prev = c_prev = None
    change = np.inf
    for it in range(1, macroit + 1):
        try:
            r_new, c_new = inner_fit(glm, eta, reml, overdispersion, diagonal, max_iterations, fixed_map)
        except (FloatingPointError, np.linalg.LinAlgError) as exc:
            raise FloatingPointError(f"the linearised model cannot be fitted at macro iteration {it} ({exc})") from None
        r_prev, c_prev, r, c = r, c, r_new, c_new
        new = cols.eta(r.gamma, r.eb, glm.offset)
        if not np.all(np.isfinite(new)):
            failed.append(f"the linear predictor is not finite at macro iteration {it}")
            break
        change = float(np.max(np.abs(new - eta)))
        eta = new
        if change <= stopmacro * (1.0 + float(np.max(np.abs(eta)))):
            converged = True
            break
    if not converged and not failed and r_prev is not None and r_prev.converged and r.converged and \
            np.less_equal(*fixed_point_excess(r_prev, c_prev, r, c, reml, overdispersion)):
        converged = True  # as hglm.pql: rounding noise along a weakly determined direction; checked below
    if not converged and not failed:
        failed.append(f"the macro iterations did not converge in {macroit} (largest change of η {change:.1E})")
    fp = None
    if converged and check:
        refit, c_refit = inner_fit(glm, eta, reml, overdispersion, diagonal, max_iterations, fixed_map)
        fp = _check_fixed_point(r, c, refit, c_refit, reml, overdispersion)
        failed += fp.failed
        converged = fp.passed
        r, c = refit, c_refit
    elif not r.converged:
        failed.append("the last inner fit is not certified: " + "; ".join(r.certificate.failed))
        converged = False
    sigma2 = r.sigma2 / c if overdispersion else 1.0
    return LevelsPQLResult(fit=r, gamma=r.gamma, cov=r.cov_gamma, robust_cov=r.cov_gamma_robust, taus=r.taus,
                           sigma2=sigma2, eb=r.eb, eb_var=r.eb_var, eta=eta, macro_iterations=it,
                           converged=converged, reml=reml, overdispersion=overdispersion, check=fp, failed=failed)
