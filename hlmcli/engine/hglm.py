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

Laplace (exact ML): for each unit the mode û_j of f_j(u) = ℓ_j(u) − ½|u|² (Newton, vectorised),
H_j = I + Λ'Z_j'W_jZ_jΛ = −∇²f_j(û_j), and

    d(γ, Λ) = −2Σℓ(û) + Σ|û_j|² + Σ log|H_j|,

the same function glmer(nAGQ = 1) minimises.

Adaptive Gauss–Hermite quadrature (AGQ, K points per dimension, product rule for q = 2, 3):
with H_j = C_jC_j' (Cholesky), R_j = C_j⁻ᵀ (so R_jR_j' = H_j⁻¹), (z_k, w_k) the rule for the
standard normal and u_k = û_j + R_jz_k,

    log I_j = −½ log|H_j| + log Σ_k w_k exp(f_j(u_k) + ½|z_k|²),   d = −2Σ_j log I_j,

which is Laplace at K = 1 and glmer(nAGQ = K) at q = 1.

Exact gradient (both; Laplace is K = 1, z = 0). Differentiate log I_j in a parameter φ with û, H
and R as functions of it. With π_k the normalised node weights (softmax of the terms above),
∇f_k = Λ'Z'ℓ'(η_k) − u_k, ḡ = Σπ_k∇f_k, M = Σπ_k z_k∇f_k':
  * the R term: Σπ_k∇f_k'dR z_k = tr(dR M), and dR = −R dC' R, dC = CΦ(C⁻¹dHC⁻ᵀ) (Φ: lower
    triangle, diagonal halved) give tr(dR M) = −⟨dH, R S R'⟩ with S = sym(Φ(C'RMR));
  * so d log I = ⟨Ψ, dH⟩ + Σπ_k ∂_φ f(u_k) + ḡ'dû with Ψ = −½H⁻¹ − RSR';
  * dH = dΛ'AΛ + Λ'A dΛ + Λ'Z' diag(κ3 dη̂) ZΛ (A = Z'WZ, κ3 = ∂W/∂η, canonical links), and
    dη̂ = X dγ + Z dΛ û + ZΛ dû; the implicit function theorem on ∇f(û) = 0 gives
    dû = H⁻¹(−Λ'Z'WX dγ + dΛ'Z'ℓ̂' − Λ'A dΛ û).
Collecting, with c_i = κ3_i z_i'ΛΨΛ'z_i, m = H⁻¹(ḡ + Λ'Z'c), ĝ = Z'ℓ'(η̂), per unit:

    ∂log I/∂γ = Σπ_k X'ℓ'_k + X'c − X'WZΛm,
    ∂log I/∂Λ = 2AΛΨ + Σπ_k (Z'ℓ'_k)u_k' + (Z'c)û' + ĝm' − (AΛm)û',

and ∂d = −2Σ_j ∂log I_j. At K = 1 (∇f(û) = 0, Ψ = −½H⁻¹) this is the Laplace gradient
(envelope theorem on û plus W's dependence on η). tests/test_hglm.py checks both against
differences of the deviance to 1e-7.

Search (ml_fit): θ = the lower triangle of Λ (its diagonal for a diagonal τ) and γ, unconstrained
(a column of Λ may change sign: τ does not see it). Newton with a forward-difference Hessian of
the exact gradient taken at the PQL start (Laplace) or Laplace's Hessian (AGQ), then a fresh
Hessian near the optimum and Newton to a predicted decrease below 1e-11. Inside the difference
Hessian the family's per-record values come by Taylor series from the last exact point
(Conditional.taylor), exact to far below the difference step's own error.

Standard errors of γ for Laplace and AGQ: as glmer, from the inverse of that Hessian of the
deviance in (θ, γ); cov = 2H⁻¹.

The ML fits carry the optimality certificate of the linear engine (certificate.certify) over PSD
τ, tolerance 1e-6 deviance units for both: the objective's at(G) profiles γ out (Newton steps at
fixed G) and returns the deviance and Γ = ∂d/∂G = Λ⁻ᵀ sym(Φ(Λ'D))Λ⁻¹ for the Cholesky factor Λ
of G and D = ∂d/∂Λ (exact). At a positive definite τ the face Hessian comes from the (θ, γ)
Hessian by the Schur complement and the chain rule through θ(G) (_certify_ml); at a singular τ
the certificate works on the face of τ's rank with the exact gradient (_boundary_point): the
factor of τ with exact zero columns at the vanishing pivots, γ re-profiled, and the same Schur
complement and chain rule; the derivative into the cone comes from the exact gradient just inside
it. When it finds a lower point, the search restarts from there (in Cholesky coordinates a zero
column has zero gradient, so the search alone could not leave it).

Start (ml_start): full PQL, or, when it breaks down (rare events), a plain GLM's γ with τ = ¼I.
Then ml_fit also searches from a GLM's γ with τ = ¼I and τ = I (glmmTMB's start) and compares
τ = 0, and reports and certifies only the lowest optimum: the certificate is local, and on rare
events the Laplace deviance has several local minima (τ = 0 and a large τ).

AGQ's number of points (agq_fit): adaptive by default, K = 7, 9, 11, 15, ... until the deviance at
the optimum changes by at most 1e-6 relative to the next K (then refitted there), within 2000 nodes
per unit; the check is reported with the fit (QuadratureCheck).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace

import numpy as np

from . import lbfgsb
from .certificate import Certificate, Face, certify
from .estimation import TauStructure
from .search import lower_faces, poor_model
from .estimation import fit as linear_fit
from .family import Family
from .hglm_weights import WeightedFamily
from .sufficient import model_stats, unit_cross_products
from .unitsolve import factor, unit_solve

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
    w1: np.ndarray | None = None  # level-1 sampling weights (scaled), per record: hglm_weights.py
    w2: np.ndarray | None = None  # level-2 sampling weights (scaled), per unit

    def __post_init__(self):
        if self.w1 is not None and not isinstance(self.family, WeightedFamily):
            self.family = WeightedFamily(self.family, self.w1)
        self.L = np.ascontiguousarray(self.L, dtype=float)
        self.N, self.K = self.L.shape
        self.J, _, self.p = self.B.shape
        self.q = len(self.rnd)
        self.starts = self.offs[:-1]
        self.unit = np.repeat(np.arange(self.J), np.diff(self.offs))
        self.Z = np.ascontiguousarray(self.L[:, self.rnd])
        # column-major copies: every per-record pass below reads one contiguous column at a time
        self.LT = np.ascontiguousarray(self.L.T)
        self.ZT = np.ascontiguousarray(self.Z.T)
        self.const = self.family.constant(self.y, self.trials)
        if self.w2 is not None:
            # Σ_j w_j Σ_i w_{i|j} c_i: each unit's integral carries its records' constants, and counts w_j times
            base = self.family.base if isinstance(self.family, WeightedFamily) else self.family
            w = self.level2(np.ones(self.N) if self.w1 is None else self.w1)
            self.const = WeightedFamily(base, w).constant(self.y, self.trials)

    # -------------------------------------------------------------- per-unit sums
    def usum(self, v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, self.starts, axis=0)

    def eta(self, gamma: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """Linear predictor per record, offset included."""
        beta = np.einsum("jkp,p->jk", self.B, gamma)
        if b is not None:
            beta[:, self.rnd] += b
        e = self.rowdot(self.LT, beta)
        return e + self.offset if self.offset is not None else e

    def rowdot(self, MT: np.ndarray, per_unit: np.ndarray) -> np.ndarray:
        """Σ_k M[i, k]·per_unit[unit(i), k] per record from the columns MT = M' (faster than a gather of rows)."""
        e = MT[0] * per_unit[:, 0][self.unit]
        for k in range(1, MT.shape[0]):
            e += MT[k] * per_unit[:, k][self.unit]
        return e

    def quad(self, S: np.ndarray) -> np.ndarray:
        """z_i'S_jz_i per record for per-unit symmetric S (J, q, q)."""
        ZT = self.ZT
        h = ZT[0] * ZT[0] * S[:, 0, 0][self.unit]
        for a in range(self.q):
            for c in range(a + 1):
                if a or c:
                    h += (1.0 if a == c else 2.0) * ZT[a] * ZT[c] * S[:, a, c][self.unit]
        return h

    def _cols_v(self, MT: np.ndarray, v: np.ndarray) -> np.ndarray:
        out = np.empty((self.J, MT.shape[0]))
        for k in range(MT.shape[0]):
            out[:, k] = np.add.reduceat(MT[k] * v, self.starts)
        return out

    def Lv(self, v: np.ndarray) -> np.ndarray:
        """Per-unit L_j'v_j, (J, K)."""
        return self._cols_v(self.LT, v)

    def Zv(self, v: np.ndarray) -> np.ndarray:
        return self._cols_v(self.ZT, v)

    def Xv(self, v: np.ndarray) -> np.ndarray:
        return np.einsum("jkp,jk->p", self.B, self.Lv(v))

    def _weighted_cross(self, MT: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Per-unit M_j'W_jM_j, (J, k, k), from the record-level columns MT = M' (k, N)."""
        k = MT.shape[0]
        out = np.empty((self.J, k, k))
        for a in range(k):
            Ma = MT[a] * w
            for c in range(a, k):
                out[:, a, c] = out[:, c, a] = np.add.reduceat(Ma * MT[c], self.starts)
        return out

    def LWL(self, w: np.ndarray) -> np.ndarray:
        return self._weighted_cross(self.LT, w)

    def ZWZ(self, w: np.ndarray) -> np.ndarray:
        return self._weighted_cross(self.ZT, w)

    def loglik_units(self, eta: np.ndarray) -> np.ndarray:
        return np.add.reduceat(self.family.loglik_terms(eta, self.y, self.trials), self.starts)

    def level2(self, v: np.ndarray) -> np.ndarray:
        """Per-record values (N,) or (N, ...) times their unit's level-2 weight w_j (unchanged without
        level-2 weights): Σ_i of the result is Σ_j w_j Σ_{i∈j}, and its per-unit sums are w_j's scores."""
        if self.w2 is None:
            return v
        w = self.w2[self.unit]
        return v * w.reshape((-1,) + (1,) * (np.ndim(v) - 1))

    def unit_total(self, v: np.ndarray) -> float:
        """Σ_j w_j v_j of per-unit values (Σ_j v_j without level-2 weights)."""
        return float(np.sum(v) if self.w2 is None else self.w2 @ v)

    def unweighted_at_level2(self) -> "GLMData":
        """The same data with the level-2 weights moved into the records' (w_{i|j}·w_j): the model
        without random effects (τ = 0) has this likelihood, which the GLM start maximises."""
        if self.w2 is None:
            return self
        base = self.family.base if isinstance(self.family, WeightedFamily) else self.family
        w1 = (np.ones(self.N) if self.w1 is None else self.w1) * self.w2[self.unit]
        return GLMData(base, self.L, self.B, self.offs, self.rnd, self.y, self.trials, self.offset, w1=w1)

    def conditional(self, nodes: int = 1) -> "Conditional":
        """The Laplace/AGQ objective of these data (a family with parameters of its own, as the
        ordinal thresholds, brings its own: ordinal.py)."""
        return Conditional(self, nodes)


# ====================================================================== PQL and the PA model

def weighted_stats(data: GLMData, z: np.ndarray, w: np.ndarray, with_unit: bool = False):
    """The cross-products of the working model z = Xγ + Zb + e, Var(e) = σ²W⁻¹: those of √W·L and √W·z."""
    s = np.sqrt(w)
    unit = unit_cross_products(data.L * s[:, None], z * s, data.offs, center_y=False)
    stats = model_stats(unit, data.B, np.isin(np.arange(data.K), data.rnd))
    return (stats, unit) if with_unit else stats


def working_model(data: GLMData, eta: np.ndarray):
    """(stats, unit stats) of the working model linearised at η (offset included). Weights that
    underflow to 0 give a non-finite z, and the fit of these stats then fails (pql reports it)."""
    if hasattr(data, "working_model"):  # blocks of whole units (hglm_blocks.py): their unit stats joined
        return data.working_model(eta)
    dl, W, _ = data.family.derivatives(eta, data.y, data.trials)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = eta - (data.offset if data.offset is not None else 0.0) + dl / W
    return weighted_stats(data, z, W, with_unit=True)


def start_eta(data):
    """PQL's first linear predictor: the family's start from the outcome, offset included (blocks of
    whole units keep it as a marker, hglm_blocks.LinearPredictor)."""
    if hasattr(data, "start_eta"):
        return data.start_eta()
    return data.family.start(data.y, data.trials, data.offset) + (data.offset if data.offset is not None else 0.0)


def eta_change(data, new, old) -> tuple[bool, float, float]:
    """(new η finite, max|new − old|, max|new|) over the records: PQL's convergence test."""
    if hasattr(data, "eta_change"):
        return data.eta_change(new, old)
    if not np.all(np.isfinite(new)):
        return False, np.inf, np.inf
    return True, float(np.max(np.abs(new - old))), float(np.max(np.abs(new)))


# The fixed-point check (pql) is judged in the deviance of the linearised model at the final η:
# the last macro iteration's (γ, τ) may lie above that model's certified optimum by at most what the
# two certificates can tell apart. Each inner fit is certified to within δ of its optimum, i.e. within
# √δ standard errors in every direction (the deviance rises by s² at s SEs); two points each within
# √δ of one optimum lie within (2√δ)² = 4δ of each other in deviance. δ is the larger certificate
# tolerance (search.tol_decrement, which counts the deviance's measured rounding noise when σ² is
# fixed: Objective.noise). A finer bound on τ itself
# could not be verified along a weakly determined direction (τ moves a long way for a tiny change of
# deviance there); a coarser one would hide a saddle like bacteria's τ = 0 (5.05 deviance units
# above the refit).
FIXED_POINT_FACTOR = 4.0


def inner_fit(stats, reml: bool, overdispersion: bool, diagonal: bool, maxiter: int, start_G=None):
    """The linearised model's fit: the linear engine's search and certificate over PSD τ
    (estimation.fit), with σ² = 1 or, with over-dispersion, profiled. start_G (τ/σ² in the user's
    coordinates) is mapped to the standardised scale of these stats and is the only start;
    without it the engine's own starts are used."""
    from .estimation import standardising_map

    structure = TauStructure.DIAGONAL if diagonal else TauStructure.UNSTRUCTURED
    start = None
    if start_G is not None:
        Ainv = np.linalg.inv(standardising_map(stats, structure))
        start = Ainv @ start_G @ Ainv.T
        start = np.diag(np.diag(start)) if diagonal else 0.5 * (start + start.T)
    return linear_fit(stats, "REML" if reml else "ML", max_iterations=max(maxiter, 1000), structure=structure,
                      start=start, sigma2=None if overdispersion else 1.0)


@dataclass
class FixedPointCheck:
    """Re-linearised at the final η and refitted from the engine's own starts: how far γ and τ moved."""
    passed: bool
    gamma_change: float  # max_k |Δγ_k| / (|γ_k| + se_k)
    tau_change: float  # max |ΔG̃| / max(1, max|G̃|)
    deviance_excess: float  # the last (γ, τ) above the refit's optimum, in the linearised model's deviance
    tolerance: float  # on deviance_excess (deviance units): FIXED_POINT_FACTOR × the certificates' tolerance
    certified: bool  # the refit's certificate
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (f"the last macro iteration is {self.deviance_excess:.1E} above the re-linearised model's optimum "
                f"(tolerance {self.tolerance:.1E} deviance units); largest change of γ {self.gamma_change:.1E} "
                f"(relative to |γ| + SE), of τ {self.tau_change:.1E} (relative, standardised)")

    def to_json(self) -> dict:
        return {"checked": True, "passed": self.passed, "deviance_excess": self.deviance_excess,
                "tolerance": self.tolerance, "gamma_change": self.gamma_change, "tau_change": self.tau_change,
                "inner_fit_certified": self.certified, "failed": list(self.failed)}


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
    converged: bool  # the macro iterations converged and the fixed point is checked
    reml: bool
    overdispersion: bool
    pa_gamma: np.ndarray | None = None
    pa_cov: np.ndarray | None = None
    pa_robust_cov: np.ndarray | None = None
    pa_iterations: int = 0
    solve: object = None
    check: FixedPointCheck | None = None
    failed: list[str] = field(default_factory=list)  # why not converged, one reason each
    pa_failed: str | None = None  # why the population-average model is missing


def fixed_point_excess(last, refit, overdispersion: bool) -> tuple[float, float]:
    """How far the inner fit `last` is above the certified optimum of `refit` (another working
    model's fit) in the refit's deviance, and the tolerance for it (FIXED_POINT_FACTOR). Evaluated
    on the refit's standardised statistics: with G = τ/σ² the profiled deviance d(G) there, plus the
    rise from γ off its GLS value at G, (γ − γ̂(G))'P(γ − γ̂(G))/σ² (exact for σ² fixed; to second
    order with over-dispersion, σ² profiled)."""
    from .search import tol_decrement
    from .unitsolve import ProfiledDeviance
    from .unitsolve import factor

    std, A, Tinv, b = refit.standardised
    obj = ProfiledDeviance(std, refit.method == "REML", None if overdispersion else 1.0)
    Ainv = np.linalg.inv(A)
    G0 = Ainv @ (last.tau / last.sigma2) @ Ainv.T
    G0 = np.diag(np.diag(G0)) if last.structure is TauStructure.DIAGONAL else 0.5 * (G0 + G0.T)
    try:
        us0 = obj.solve(factor(G0))
    except (FloatingPointError, np.linalg.LinAlgError):
        return np.inf, 0.0
    dg = Tinv @ last.gamma - b - us0.gamma  # γ̃ = T⁻¹γ − b on the standardised scale
    rise = float(dg @ us0.P @ dg) / float(refit.sigma2)
    G1 = refit.certificate.G
    d1 = obj.value(G1)
    excess = obj.deviance_of(us0) + rise - d1
    tol = FIXED_POINT_FACTOR * max(refit.certificate.tolerance, last.certificate.tolerance, tol_decrement(d1, obj.noise(G1)))
    return float(excess), float(tol)


def _check_fixed_point(last, refit, overdispersion: bool) -> FixedPointCheck:
    """Compare the inner fit of the last macro iteration with the refit at its η (see FIXED_POINT_FACTOR)."""
    se = np.sqrt(np.clip(np.diag(refit.cov_gamma), 0.0, None))
    dg = float(np.max(np.abs(refit.gamma - last.gamma) / (np.abs(refit.gamma) + se + 1e-300)))
    G1 = refit.certificate.G
    # the two standardised scales differ (A is made from each fit's own weights): compare τ/σ² on
    # the refit's scale, mapping the last fit's τ through the refit's map
    Ainv = np.linalg.inv(refit.standardised[1])
    G0 = Ainv @ (last.tau / last.sigma2) @ Ainv.T
    dt = float(np.max(np.abs(G1 - G0)) / max(1.0, float(np.max(np.abs(G1)))))
    excess, tol = fixed_point_excess(last, refit, overdispersion)
    return fixed_point_verdict(refit, excess, tol, dg, dt, "relative, standardised")


def fixed_point_verdict(refit, excess: float, tol: float, dg: float, dt: float, tau_scale: str) -> FixedPointCheck:
    """The check's verdict from the refit at the final η and the measured moves (two and three levels):
    passed when the refit is certified and the last estimates lie within `tol` of its optimum."""
    failed = []
    if not refit.converged:
        failed.append("the inner fit at the final η is not certified: " + "; ".join(refit.certificate.failed))
    if not excess <= tol:
        failed.append(f"re-linearised at the final η, the last estimates are {excess:.1E} deviance units above the "
                      f"refit's optimum (tolerance {tol:.1E}): γ moves by {dg:.1E} of (|γ| + SE), τ by {dt:.1E} "
                      f"({tau_scale})")
    return FixedPointCheck(passed=not failed, gamma_change=dg, tau_change=dt, deviance_excess=excess, tolerance=tol,
                           certified=bool(refit.converged), failed=failed)


def pql(data: GLMData, reml: bool = True, overdispersion: bool = False, macroit: int = 100,
        microit: int = 100, stopmacro: float = 1e-8, stopmicro: float = 1e-8, population_average: bool = True,
        diagonal: bool = False, check: bool = True) -> PQLResult:
    """PQL macro iterations, each inner fit certified over PSD τ (inner_fit), warm-started from the
    last τ. With check, at the end the model is re-linearised at the final η and refitted from the
    engine's own starts; converged only if that refit is certified and the last estimates are at its
    optimum within what the certificates can tell apart (FIXED_POINT_FACTOR, FixedPointCheck).
    stopmicro is kept for the command-file keyword; the inner fit's own tolerance is the certificate's."""
    eta = start_eta(data)
    micro = 0
    converged = False
    G = None
    failed: list[str] = []
    r = r_prev = None
    for it in range(1, macroit + 1):
        try:
            stats = working_model(data, eta)[0]
            r_new = inner_fit(stats, reml, overdispersion, diagonal, microit, G)
        except (FloatingPointError, np.linalg.LinAlgError) as exc:
            # the working model cannot be fitted (weights that vanish, X'WX singular): a numerical
            # breakdown, which the CLI reports in one line (data_checks.fit_or_refuse), never a crash
            raise FloatingPointError(f"the linearised model cannot be fitted at macro iteration {it} ({exc})") from None
        micro += r_new.iterations
        r_prev, r = r, r_new
        G = r.tau / r.sigma2
        b, _ = r.solve.posterior(r.sigma2)
        new = data.eta(r.gamma, b)
        finite, change, size = eta_change(data, new, eta)
        if not finite:
            failed.append(f"the linear predictor is not finite at macro iteration {it}")
            break
        eta = new
        if change <= stopmacro * (1.0 + size):
            converged = True
            break
    if not converged and not failed and r_prev is not None and r_prev.converged and r.converged and \
            np.less_equal(*fixed_point_excess(r_prev, r, overdispersion)):
        # η still moves by more than stopmacro, but the fit at the η that r_prev made is r_prev again
        # within what the certificates can tell apart: rounding noise along a weakly determined
        # direction moves each inner optimum a little. The check below refits afresh and judges it.
        converged = True
    if not converged and not failed:
        failed.append(f"the macro iterations did not converge in {macroit} (largest change of η {change:.1E})")
    fp = None
    if converged:  # every η accepted above passed eta_change's finiteness test
        # the fixed point itself: re-linearise at the final η and refit afresh
        stats = working_model(data, eta)[0]
        refit = inner_fit(stats, reml, overdispersion, diagonal, microit) if check else r
        if check:
            fp = _check_fixed_point(r, refit, overdispersion)
            failed += fp.failed
            converged = fp.passed
        r = refit
    elif not r.converged:
        failed.append("the last inner fit is not certified: " + "; ".join(r.certificate.failed))
    us, sigma2 = r.solve, float(r.sigma2)
    b, bvar = us.posterior(sigma2)
    Pinv = us.Pinv()
    scores = us.XVe_units()
    lam = _psd_lower(r.tau / sigma2)
    res = PQLResult(gamma=r.gamma, cov=sigma2 * Pinv, robust_cov=Pinv @ (scores.T @ scores) @ Pinv,
                    tau=r.tau, sigma2=sigma2, b=b, b_var=bvar, eta=eta, macro_iterations=it,
                    micro_iterations=micro, converged=converged, reml=reml, overdispersion=overdispersion, solve=us,
                    check=fp, failed=failed)
    if population_average:
        try:
            _population_average(data, res, lam, macroit, stopmacro)
        except (FloatingPointError, np.linalg.LinAlgError) as exc:
            # the unit-specific answer stands; only the population-average tables are left out
            res.pa_gamma = None
            res.pa_failed = f"the population-average model cannot be fitted ({exc})"
    return res


def _population_average(data: GLMData, res: PQLResult, lam: np.ndarray, maxit: int, tol: float) -> None:
    """The population-average model's γ at τ/σ² = ΛΛ' held (lam), and its two covariances.

    Over blocks of whole units (hglm_blocks.py) with no per-record array: at η = Xγ (+ offset) the
    GLS step solves (Σ_j X_j'V_j⁻¹X_j)γ = Σ_j X_j'V_j⁻¹z_j with V_j = σ²(W_j⁻¹ + Z_jGZ_j'), and by
    Woodbury X_j'V_j⁻¹X_j = σ⁻²(X_j'W_jX_j − X_j'W_jZ_j(G⁻¹ + Z_j'W_jZ_j)⁻¹Z_j'W_jX_j), likewise
    with z_j: only each unit's cross-products of (√W L, √W z), X_j = L_jB_j, enter, as in the
    unit-specific model. working_model gives exactly these (one pass; per-block sums over whole
    units), and the CR0 scores X_j'V_j⁻¹e_j are per-unit too (unitsolve.XVe_units)."""
    gamma = res.gamma.copy()
    for it in range(1, maxit + 1):
        us = unit_solve(working_model(data, data.eta(gamma, None))[0], lam)
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


def lower_phi(P):
    """Φ(P): the lower triangle of P with its diagonal halved (batched). For M = CC' (C lower),
    dC = CΦ(C⁻¹dMC⁻ᵀ); Φ is its own adjoint as an elementwise mask."""
    out = np.tril(P)
    q = P.shape[-1]
    out[..., range(q), range(q)] *= 0.5
    return out



def newton_ascent(ll_grad, x: np.ndarray, maxit: int, step_of) -> np.ndarray:
    """max ℓ of a model without random effects (the start of the families with extra fixed parameters,
    ordinal.py and negbin.py): Newton steps on a difference Hessian of the exact gradient, halved until
    ℓ does not fall; stops when a step gains less than 1e-12·(1 + |ℓ|). ll_grad(x) -> (ℓ, ∇ℓ), ∇ℓ None
    where ℓ is undefined; step_of(H, g): the family's Newton step."""
    p = len(x)
    f, g = ll_grad(x)
    for _ in range(maxit):
        H = np.empty((p, p))
        for i in range(p):
            e = np.zeros(p)
            e[i] = 1e-6
            gp = ll_grad(x + e)[1]
            H[:, i] = (gp - g) / 1e-6 if gp is not None else 0.0
        H = 0.5 * (H + H.T)
        step = step_of(H, g)
        t = 1.0
        while t > 1e-8:
            fn, gn = ll_grad(x + t * step)
            if np.isfinite(fn) and fn >= f:
                break
            t *= 0.5
        else:
            break
        done = fn - f < 1e-12 * (1.0 + abs(f))
        x, f, g = x + t * step, fn, gn
        if done:
            break
    return x


class Conditional:
    """The Laplace/AGQ deviance at (γ, Λ) and its exact gradient (module docstring), with the
    modes û_j warm-started from the last b̂ = Λû."""

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
        else:
            self.z, self.logw = np.zeros((1, data.q)), np.zeros(1)
        self.count = 0
        # For the difference Hessian only: the family's values at a record's η + δ from those at the
        # last exactly evaluated η (self.base) by Taylor series, while max|δ| ≤ TAYLOR_STEP.
        self.taylor = False
        self.base = None
        self.keep_units = False

    def modes(self, gamma, lam, tol=1e-10, maxit=60):
        """Newton for û_j in every unit at once, with per-unit step halving. Returns û and η, and
        keeps the per-record (ℓ, ℓ', W, κ3) at η in self.last, each family evaluation shared by the
        step test and the next step."""
        d = self.data
        q = d.q
        self.count += 1
        u = self.b @ np.linalg.pinv(lam).T
        eta0 = d.eta(gamma, None)

        def state(u):
            eta = eta0 + d.rowdot(d.ZT, u @ lam.T)
            ev = None
            if self.taylor and self.base is not None:
                delta = eta - self.base[0]
                if np.max(np.abs(delta)) <= TAYLOR_STEP:
                    ev = d.family.taylor(self.base[1], delta, d.trials)
            if ev is None:
                ev = d.family.evaluate(eta, d.y, d.trials)
                if not self.taylor:
                    self.base = (eta, ev)
            pl = d.usum(ev[0]) - 0.5 * np.sum(u * u, axis=1)
            return eta, pl, ev

        eta, pl, ev = state(u)
        stalled = np.zeros(d.J, bool)
        # the units whose û is not a verified mode: stalled ones, and after maxit passes those whose
        # last step was still above tol (read by _ml_fit_one: such modes are not certified)
        self.unsolved = stalled
        for _ in range(maxit):
            _, dl, W, _ = ev
            g = d.Zv(dl)
            A = d.ZWZ(W)
            H = np.einsum("ba,jbc,cd->jad", lam, A, lam) + np.eye(q)
            rhs = g @ lam - u
            step = _bsolve(H, rhs)
            # converged units stay where they are: each unit's Newton path is its own, so the modes
            # do not depend on which other units share the pass (hglm_blocks.py)
            done = (np.max(np.abs(step), axis=1) < tol) | stalled
            # a unit's û is a verified mode when the log-posterior can rise by no more than its Newton
            # decrement ½ rhs'H⁻¹rhs ≤ MODE_DECREMENT: a rare-event unit whose step stays near 1e-9 (its ℓ
            # changes below rounding) is at its mode to that precision; a stalled unit far from it is not
            decrement = 0.5 * np.sum(rhs * step, axis=1)
            self.unsolved = (~done | stalled) & ~(decrement <= MODE_DECREMENT)
            if done.all():
                break
            step[done] = 0.0
            t = np.ones(d.J)
            for _h in range(30):
                un = u + t[:, None] * step
                etan, pln, evn = state(un)
                worse = pln < pl - 1e-12 * np.abs(pl)
                if not worse.any():
                    break
                t = np.where(worse, t * 0.5, t)
            else:
                # no step of 2⁻³⁰ or more raises these units' ℓ: their ℓ is rounding noise along Newton's
                # direction (a count of 2⁵³ with η ≈ 30 makes yη and n·b(η) cancel to ±64). Another pass
                # would repeat the same 30 halvings from the same point, so they stay where they are; the
                # modes are then not exact and the certificate says so (not certified, exit 3)
                stalled |= worse
                if stalled.all() or done[~stalled].all():
                    self.unsolved = stalled & ~(decrement <= MODE_DECREMENT)
                    break
                un = u + np.where(stalled, 0.0, t)[:, None] * step
                etan, pln, evn = state(un)
            u, eta, pl, ev = un, etan, pln, evn
        self.b = u @ lam.T
        self.last = ev
        return u, eta

    def evaluate(self, gamma, lam, grad: bool = True):
        """The deviance, and with grad (∂d/∂γ, ∂d/∂Λ) exactly (module docstring, "AGQ gradient").
        The last exact result is kept: the certificate asks again at the optimum."""
        key = (np.asarray(gamma, float).tobytes(), np.asarray(lam, float).tobytes(), grad)
        if not self.taylor and getattr(self, "_memo", (None,))[0] == key:
            return self._memo[1]
        out = self._evaluate(gamma, lam, grad)
        if not self.taylor:
            self._memo = (key, out)
        return out

    def _evaluate(self, gamma, lam, grad):
        d, fam = self.data, self.data.family
        q, rnd = d.q, d.rnd
        u, eta = self.modes(gamma, lam)
        llt, dl, W, k3 = self.last
        if grad:
            LWL = d.LWL(W)
            A = LWL[:, rnd][:, :, rnd]
        else:
            A = d.ZWZ(W)
        H = np.einsum("ba,jbc,cd->jad", lam, A, lam) + np.eye(q)
        C = np.linalg.cholesky(H)
        logdet = 2.0 * np.log(np.diagonal(C, axis1=1, axis2=2)).sum(axis=1)
        nk = len(self.logw)
        XL = U = R = None
        if self.nodes == 1:
            T = (d.usum(llt) - 0.5 * np.sum(u * u, axis=1))[None]
            if grad:
                XL, U = d.Lv(dl)[None], u[None]
        else:
            R = np.linalg.inv(C).transpose(0, 2, 1)  # C⁻ᵀ: RR' = H⁻¹
            T = np.empty((nk, d.J))
            if grad:
                XL, U = np.empty((nk, d.J, d.K)), np.empty((nk, d.J, q))
            # per record z_i'ΛR_j, so that each node's η is η̂ + M z_k (no per-node gathers)
            LR = lam @ R
            M = np.empty((d.N, q))
            for b in range(q):
                M[:, b] = d.rowdot(d.ZT, LR[:, :, b])
            for k, (zk, lw) in enumerate(zip(self.z, self.logw)):
                uk = u + np.einsum("jab,b->ja", R, zk)
                lk, dlk, _, _ = fam.evaluate(eta + M @ zk, d.y, d.trials, second=False)
                T[k] = lw + d.usum(lk) - 0.5 * np.sum(uk * uk, axis=1) + 0.5 * float(zk @ zk)
                if grad:
                    XL[k], U[k] = d.Lv(dlk), uk
        mx = T.max(axis=0)
        E = np.exp(T - mx)
        s = E.sum(axis=0)
        # with level-2 weights w_j: −2(Σ_j w_j log I_j + Σ w_i c_i), hglm_weights.py
        log_i = mx + np.log(s) - 0.5 * logdet
        dev = float(-2.0 * ((np.sum(log_i) if d.w2 is None else float(d.w2 @ log_i)) + d.const))
        if not grad:
            return dev
        pi = E / s  # the nodes' posterior weights, (nodes, J)
        Gk = XL[:, :, rnd]  # Z_j'ℓ'(η_k)
        F = np.einsum("kja,ab->kjb", Gk, lam) - U  # ∇f_j(u_k) = Λ'Z_j'ℓ'_k − u_k
        gbar = np.einsum("kj,kja->ja", pi, F)
        Hinv = np.linalg.inv(H)
        if R is None:
            Psi = -0.5 * Hinv
        else:
            M = np.einsum("kj,ka,kjb->jab", pi, self.z, F)
            N = R @ M @ R
            S = lower_phi(np.einsum("jba,jbc->jac", C, N))
            S = 0.5 * (S + S.transpose(0, 2, 1))
            Psi = -0.5 * Hinv - R @ S @ R.transpose(0, 2, 1)
        c = k3 * d.quad(lam @ Psi @ lam.T)
        Lc = d.Lv(c)
        Zc = Lc[:, rnd]
        m = np.einsum("jab,jb->ja", Hinv, gbar + Zc @ lam)
        ghat = d.Zv(dl) if self.nodes > 1 else Gk[0]
        dgam = np.einsum("kj,kjl->jl", pi, XL) + Lc - np.einsum("jlq,jq->jl", LWL[:, :, rnd], m @ lam.T)
        ggam = np.einsum("jkp,jk->p", d.B, dgam)
        AL = A @ lam
        if self.keep_units or d.w2 is not None:
            # each unit's ∂log I_j/∂γ and ∂log I_j/∂Λ (the sum over j below, unsummed), times w_j when
            # weighted: the scores of w_j log I_j, summed for the gradient and kept for the sandwich
            sg = np.einsum("jkp,jk->jp", d.B, dgam)
            sl = (2.0 * np.einsum("jab,jbc->jac", AL, Psi) + np.einsum("kj,kja,kjb->jab", pi, Gk, U)
                  + np.einsum("ja,jb->jab", Zc, u)
                  + np.einsum("ja,jb->jab", ghat, m) - np.einsum("ja,jb->jab", np.einsum("jab,jb->ja", AL, m), u))
            if d.w2 is not None:
                sg, sl = sg * d.w2[:, None], sl * d.w2[:, None, None]
            if self.keep_units:
                self.unit_scores = (sg, sl)
        # what a family with parameters of its own needs for their gradient (ordinal.py)
        self.parts = SimpleNamespace(pi=pi, Psi=Psi, m=m, R=R, u=u, eta=eta)
        if d.w2 is not None:
            return dev, -2.0 * sg.sum(axis=0), -2.0 * sl.sum(axis=0)
        glam = (2.0 * np.einsum("jab,jbc->ac", AL, Psi) + np.einsum("kj,kja,kjb->ab", pi, Gk, U)
                + Zc.T @ u + ghat.T @ m - np.einsum("jab,jb->ja", AL, m).T @ u)
        return dev, -2.0 * ggam, -2.0 * glam

    def deviance(self, gamma, lam):
        return self.evaluate(gamma, lam, grad=False)

    def gradient(self, gamma, lam):
        """(deviance, ∂d/∂γ, ∂d/∂Λ)."""
        return self.evaluate(gamma, lam, grad=True)

    def posterior(self, gamma, lam):
        """b̂ = Λû and Var(b | y) ≈ ΛH⁻¹Λ' per unit, at the mode."""
        d = self.data
        u, _ = self.modes(gamma, lam)
        H = np.einsum("ba,jbc,cd->jad", lam, d.ZWZ(self.last[2]), lam) + np.eye(d.q)
        return u @ lam.T, np.einsum("ab,jbc,dc->jad", lam, np.linalg.inv(H), lam)


def _theta_index(q: int, diagonal: bool):
    """Positions in Λ of the parameters θ: its lower triangle, or its diagonal for a diagonal τ."""
    rows, cols = np.tril_indices(q)
    keep = rows == cols if diagonal else np.ones(rows.size, bool)
    return rows[keep], cols[keep]


def _unpack(x, q, idx):
    lam = np.zeros((q, q))
    lam[idx] = x[:idx[0].size]
    return x[idx[0].size:], lam


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
    hessian: np.ndarray | None = None  # of the deviance in (θ, γ), at the answer
    diagonal: bool = False
    lam: np.ndarray | None = None  # the factor of τ the deviance was evaluated with
    quadrature: "QuadratureCheck | None" = None  # AGQ: the points used and the accuracy check
    starts: int = 1  # starts of the search tried (ml_fit); the lowest optimum is the answer
    others: list = field(default_factory=list)  # the higher local optima found (distinct deviances)


TAYLOR_STEP = 1e-4
# The largest Newton decrement ½ g'H⁻¹g (log-likelihood units) at which a unit's û counts as its mode: the
# Laplace deviance is then within 2·MODE_DECREMENT of its value at the exact mode (Conditional.modes)
MODE_DECREMENT = 1e-10


def difference_hessian(grad_fn, x, g0=None, h=1e-5, cond=None):
    """Central (or, given g0 = grad_fn(x), forward) differences of the analytic gradient; with cond,
    its family values come by Taylor series from those at x (Conditional.taylor)."""
    if cond is not None:
        cond.taylor = True
        try:
            return difference_hessian(grad_fn, x, g0, h)
        finally:
            cond.taylor = False
    n = x.size
    Hm = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = h * max(1.0, abs(x[i]))
        Hm[:, i] = (grad_fn(x + e) - g0) / e[i] if g0 is not None else (grad_fn(x + e) - grad_fn(x - e)) / (2 * e[i])
    return 0.5 * (Hm + Hm.T)


def _newton_step(H, g):
    """−H⁻¹g, with H's eigenvalues made positive (a descent direction far from the optimum)."""
    w, V = np.linalg.eigh(H)
    top = max(float(np.abs(w).max()), 1e-300)
    w = np.maximum(np.abs(w), 1e-8 * top)
    return -V @ ((V.T @ g) / w)


# A matrix H that needed a damped step, or whose quadratic model predicted the decrease poorly
# (search.poor_model), this
# many steps in a row is replaced (refresh): from a far start the first Hessian can be so unlike the
# one near the optimum that Newton with it crawls (47 steps seen from glmer's start at 100,000 rows,
# 50 steps and a fall back to L-BFGS from τ = I, where a fresh matrix finishes in a few).
REFRESH_AFTER = 1


def damped_newton(fg, x, f, g, H, maxit, tol, refresh=None):
    """Damped Newton with a matrix H (Armijo backtracking); stops when the decrease the quadratic
    model still predicts, ½g'H⁻¹g, is below tol. With refresh(x, g) given, H is recomputed there
    after REFRESH_AFTER poor steps in a row (a full step whose decrease agrees with the model keeps
    H, so a search from a good start takes the same steps as with a fixed H). Returns (x, f, g,
    iterations, ok)."""
    poor, fresh = 0, False
    for it in range(1, maxit + 1):
        step = _newton_step(H, g)
        slope = float(g @ step)
        if -0.5 * slope <= tol:
            return x, f, g, it - 1, True
        t = 1.0
        while t > 1e-8:
            fn, gn = fg(x + t * step)
            if np.isfinite(fn) and fn <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            if refresh is None or fresh:
                return x, f, g, it, False
            H, poor, fresh = refresh(x, g), 0, True  # no descent along H's step: a fresh matrix, once here
            continue
        fresh = False
        predicted = -(t * slope + 0.5 * t * t * float(step @ H @ step))
        poor = poor + 1 if t < 1.0 or poor_model(f - fn, predicted) else 0
        x, f, g = x + t * step, fn, gn
        if refresh is not None and poor >= REFRESH_AFTER:
            H, poor, fresh = refresh(x, g), 0, True
    return x, f, g, maxit, -0.5 * float(g @ _newton_step(H, g)) <= tol


# PQL only supplies the start of the ML search, so a loose macro tolerance does (Newton finishes)
START_TOL = 1e-4


def ml_start(data: GLMData, macroit: int = 100, diagonal: bool = False):
    """The start of the Laplace search: full PQL, or, when PQL fails on these data (rare events:
    EB effects of units without a success run off until W = φ(1 − φ) underflows to 0 and the working
    variate divides by it), a plain GLM's γ with τ = ¼I. The Newton and L-BFGS stages of ml_fit do
    not need a close start, only a finite one."""
    try:
        with np.errstate(divide="raise", invalid="raise"):
            res = pql(data, reml=False, population_average=False, macroit=macroit, stopmacro=START_TOL,
                      diagonal=diagonal, check=False)
        if np.all(np.isfinite(res.gamma)) and np.all(np.isfinite(res.tau)) and np.all(np.isfinite(res.b)):
            return res
    except (FloatingPointError, np.linalg.LinAlgError, ZeroDivisionError):
        pass
    return SimpleNamespace(gamma=_glm_gamma(data), tau=0.25 * np.eye(data.q), b=np.zeros((data.J, data.q)))


def _glm_gamma(data: GLMData, maxit: int = 100) -> np.ndarray:
    """γ of the GLM without random effects: Newton with step halving on the log-likelihood (a
    near-separated predictor only makes its coefficient large, which is a start all the same)."""
    if hasattr(data, "glm_gamma"):  # a family with parameters of its own fits its own GLM (ordinal.py)
        return data.glm_gamma()
    if data.w2 is not None:
        return _glm_gamma(data.unweighted_at_level2(), maxit)
    gamma = np.zeros(data.p)
    ll = _glm_loglik(data, gamma)
    for _ in range(maxit):
        g, H = _glm_score_information(data, gamma)
        step = np.linalg.lstsq(H + 1e-10 * np.trace(H) * np.eye(data.p), g, rcond=None)[0]
        t = 1.0
        while t > 1e-6:
            new = _glm_loglik(data, gamma + t * step)
            if np.isfinite(new) and new >= ll:
                break
            t *= 0.5
        else:
            break
        gamma, done = gamma + t * step, new - ll < 1e-10 * (1.0 + abs(ll))
        ll = new
        if done:
            break
    return gamma


def _glm_loglik(data, gamma: np.ndarray) -> float:
    """Σ ℓ_i(γ) of the GLM without random effects (blocks of whole units: the sum of theirs)."""
    if hasattr(data, "reduce"):
        return float(data.reduce(partial(_glm_loglik, gamma=gamma)))
    return float(np.sum(data.loglik_units(data.eta(gamma, None))))


def _glm_score_information(data, gamma: np.ndarray):
    """(X'ℓ', X'WX) of the GLM without random effects at γ (blocks: the sums of theirs)."""
    if hasattr(data, "reduce"):
        parts = data.reduce(lambda d: np.concatenate([np.ravel(a) for a in _glm_score_information(d, gamma)]))
        return parts[:data.p], parts[data.p:].reshape(data.p, data.p)
    dl, W, _ = data.family.derivatives(data.eta(gamma, None), data.y, data.trials)
    return data.Xv(dl), np.einsum("jkp,jkl,jlr->pr", data.B, data.LWL(W), data.B)


def deviance_without_random_effects(data: GLMData, gamma: np.ndarray) -> float:
    """The Laplace/AGQ deviance at τ = 0 (the GLM's): with Λ = 0 the modes are 0 and log|H| = 0, so it
    is −2 (Σ_j w_j ℓ_j(γ) + Σ_i c_i), the family constant c_i included as Conditional's deviance
    includes it (without it a binomial deviance sits 2·Σ log C(n, y) too high, and a lower τ = 0 is
    missed; a Poisson one too low, and needless searches start)."""
    if hasattr(data, "reduce"):  # blocks of whole units (hglm_blocks.py): the sum of theirs
        return data.reduce(partial(deviance_without_random_effects, gamma=gamma))
    ll0 = data.loglik_units(data.eta(gamma, None))
    return -2.0 * (float(np.sum(ll0) if data.w2 is None else data.w2 @ ll0) + data.const)


def ml_fit(data: GLMData, nodes: int = 1, start: PQLResult | None = None, maxiter: int = 100,
           diagonal: bool = False, init: MLResult | None = None) -> MLResult:
    """Laplace (nodes = 1) or AGQ (nodes > 1) maximum likelihood, certified over PSD τ (or over
    non-negative diagonal τ when diagonal), at the lowest of several local optima.

    The certificate is local, and on rare events the Laplace deviance has several local minima (one
    at τ = 0 or a low rank, another at a large τ). So the search runs from each start glmer and
    glmmTMB use: the given start (PQL), a plain GLM's γ with τ = ¼I and with τ = I, and from τ = 0
    itself (the GLM's point, where the Laplace deviance is the GLM's: with Λ = 0 the modes are 0 and
    log|H| = 0), and at a boundary optimum of rank r ≥ 2 from its lower-rank faces; the lowest deviance wins and only that optimum is reported and certified. AGQ
    starts from each distinct Laplace optimum (its own surface may rank them differently).
    `init` (AGQ refitted with more points from an AGQ fit) keeps the one start: there the earlier
    fit already chose among the optima."""
    if init is not None:
        return _ml_fit_one(data, nodes, start, maxiter, diagonal, init)
    if start is None:
        start = ml_start(data, diagonal=diagonal)
    if nodes > 1:
        lap = ml_fit(data, 1, start, maxiter, diagonal)
        fits = [_ml_fit_one(data, nodes, start, maxiter, diagonal, o) for o in [lap, *lap.others]]
        starts = lap.starts
    else:
        q = data.q
        gamma_glm = _glm_gamma(data)
        b0 = np.zeros((data.J, q))
        candidates = [start]
        for scale in (0.25, 1.0):
            s = SimpleNamespace(gamma=gamma_glm, tau=scale * np.eye(q), b=b0)
            if not any(_same_start(s, c) for c in candidates):
                candidates.append(s)
        fits = []
        for s in candidates:
            try:
                fit = _ml_fit_one(data, 1, s, maxiter, diagonal, known=tuple(fits))
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                if not fits and s is candidates[-1]:
                    raise
                continue
            if fit is not None:
                fits.append(fit)
        # τ = 0: the GLM's deviance. Below every optimum found, the search restarts just inside the
        # cone from there (a zero Λ has zero gradient in Cholesky coordinates: it cannot start at 0)
        dev0 = deviance_without_random_effects(data, gamma_glm)
        tol = 1e-6 * max(1.0, 1e-6 * abs(dev0))
        starts = len(candidates) + 1
        if dev0 < min(f.deviance for f in fits) - tol:
            s = SimpleNamespace(gamma=gamma_glm, tau=1e-4 * np.eye(q), b=b0)
            fits.append(_ml_fit_one(data, 1, s, maxiter, diagonal))
            starts += 1
        # the lower faces of a boundary optimum, as the linear engine's global check
        # (search.lower_faces): at rank r with 2 ≤ r < q, its best rank-k approximations,
        # k = 1..r−1 (τ = 0 is compared above); a search from just inside each, with the lowest wins
        best = min(fits, key=lambda f: f.deviance)
        rank = best.certificate.rank
        for G in lower_faces(best.tau, diagonal, rank)[1:] if 2 <= rank < q else []:
            s = SimpleNamespace(gamma=best.gamma, tau=G + 1e-6 * max(1.0, float(np.abs(G).max())) * np.eye(q),
                                b=best.b)
            try:
                fits.append(_ml_fit_one(data, 1, s, maxiter, diagonal))
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                continue
            starts += 1
    fits.sort(key=lambda f: f.deviance)
    best = fits[0]
    tol = 1e-6 * max(1.0, 1e-6 * abs(best.deviance))
    others = []
    for f in fits[1:]:
        if f.deviance > best.deviance + tol and all(abs(f.deviance - o.deviance) > tol for o in others):
            others.append(f)
    best.others = others
    best.starts = starts
    return best


def _same_start(a, b) -> bool:
    return (np.shape(a.gamma) == np.shape(b.gamma) and np.allclose(a.gamma, b.gamma, rtol=1e-8, atol=1e-10)
            and np.allclose(a.tau, b.tau, rtol=1e-8, atol=1e-10))


# A later start of ml_fit whose search, once near an optimum (stage 1: decrement ≤ 1e-6), is at an
# optimum already found, within the deviance tolerance of ml_fit and SAME_OPTIMUM (relative) in γ and
# τ, is not polished, certified and given SEs a second time: finishing it could lower its deviance by
# about that decrement only, so it cannot become the lowest optimum nor a distinct higher one.
SAME_OPTIMUM = 1e-2


def _at_known(known, q, idx):
    """stop(x, f) for _search: true at an optimum of `known` (MLResults), as SAME_OPTIMUM says."""
    def stop(x, f):
        gamma, lam = _unpack(x, q, idx)
        tau = lam @ lam.T
        tol = 1e-6 * max(1.0, 1e-6 * abs(f))
        for k in known:
            if abs(f - k.deviance) <= tol and \
                    np.max(np.abs(gamma - k.gamma)) <= SAME_OPTIMUM * (1.0 + np.max(np.abs(k.gamma))) and \
                    np.max(np.abs(tau - k.tau)) <= SAME_OPTIMUM * (1.0 + np.max(np.abs(k.tau))):
                return True
        return False
    return stop


def _ml_fit_one(data: GLMData, nodes: int = 1, start: PQLResult | None = None, maxiter: int = 100,
                diagonal: bool = False, init: MLResult | None = None, known=()) -> MLResult | None:
    """One search (and its certificate) from one start: ml_fit's building block. None when the search
    reaches an optimum of `known` (fits from earlier starts; see SAME_OPTIMUM)."""
    q, p = data.q, data.p
    idx = _theta_index(q, diagonal)
    nt = idx[0].size
    if start is None:
        start = ml_start(data, diagonal=diagonal)
    cond = data.conditional(nodes)
    H0 = None
    if nodes > 1:
        # AGQ starts from the Laplace optimum (or from `init`, an AGQ fit with fewer points), where it
        # is close, with that fit's Hessian
        lap = init if init is not None else _ml_fit_one(data, 1, start, maxiter, diagonal)
        x0 = np.concatenate([lap.theta, lap.gamma])
        cond.b = lap.b.copy()
        H0 = lap.hessian
        cond.count = lap.evaluations
    else:
        tau0 = np.diag(np.diag(start.tau)) if diagonal else start.tau
        lam0 = np.linalg.cholesky(tau0 + 1e-8 * np.eye(q)) if np.all(np.linalg.eigvalsh(tau0) > 1e-10) \
            else np.diag(np.sqrt(np.clip(np.diag(tau0), 1e-4, None)))
        x0 = np.concatenate([lam0[idx], start.gamma])
        cond.b = start.b.copy()

    def fg(x):
        gamma, lam = _unpack(x, q, idx)
        try:
            dev, gg, gl = cond.gradient(gamma, lam)
        except (np.linalg.LinAlgError, FloatingPointError):
            return np.inf, np.zeros_like(x)
        return dev, np.concatenate([gl[idx], gg])

    def grad(x):
        return fg(x)[1]

    iters = 0
    x = x0
    stop = _at_known(known, q, idx) if known else None
    for attempt in range(4):
        found = _search(fg, grad, x, H0, cond, stop if attempt == 0 else None)
        if found is None:
            return None
        x, f, g, Hs, n = found
        iters += n
        gamma, lam, x, g, Hs = _sign_convention(x, g, Hs, q, p, idx)
        # at the answer, central differences (the search's forward differences are 1e-5 off in the SEs)
        Hs = difference_hessian(grad, x, h=1e-5, cond=cond)
        H_se, sel = Hs, idx
        tol = 1e-6 * max(1.0, 1e-6 * abs(f))
        dev = f
        theta = x[:nt]  # the search's own point: AGQ starts there (a zero column of Λ would pin it)
        boundary = None
        if Face(lam @ lam.T, diagonal).r < q and np.all(np.isfinite(Hs)):
            boundary = _boundary_point(data, cond, gamma, lam, f, idx, diagonal, tol, Hs[nt:, nt:])
        if boundary is None:
            cert = _certify_ml(data, cond, x, g, Hs, nt, idx, nodes, diagonal, tol)
            break
        # the boundary point itself (τ exactly singular, γ re-profiled), with its certificate; its
        # γ block of the inverse (face, γ) Hessian gives the SEs (the zero columns do not couple to γ)
        gamma_b, lam_b, dev_b, cert, H_b, fidx, escape = boundary
        if cert.certified or escape is None or attempt == 3:
            if dev_b <= f + tol:
                gamma, lam, dev, H_se, sel = gamma_b, lam_b, dev_b, H_b, fidx
            break
        # Not a minimum: in Cholesky coordinates the search cannot leave a zero column by itself (its
        # gradient there is 0 whatever the deviance does), so restart it from the lower point the
        # certificate found, just inside the cone.
        G_new, gamma_new = escape
        G_new = G_new + 1e-4 * max(1.0, float(np.abs(G_new).max())) * np.eye(q)
        lam_new = np.linalg.cholesky(np.diag(np.diag(G_new)) if diagonal else G_new)
        x = np.concatenate([lam_new[idx], gamma_new])
        H0 = None
    cov, robust = _covariances(cond, gamma, lam, H_se, sel, p)
    b, bvar = cond.posterior(gamma, lam)
    unsolved = getattr(cond, "unsolved", None)
    if unsolved is not None and unsolved.any():
        # the deviance and its gradient assume û_j is each unit's mode (∂f_j/∂u = 0); a unit whose
        # Newton search stalled or ran out of passes leaves both unverified, whatever the certificate saw
        cert.failed.append(f"the mode of {int(unsolved.sum())} unit(s) was not found (Newton's line search "
                           "failed or ran out of passes): the Laplace/AGQ deviance there is not verified")
        cert.certified = False
    eta = data.eta(gamma, b)
    tau = lam @ lam.T
    return MLResult(method="laplace" if nodes == 1 else "agq", nodes=nodes, gamma=gamma, cov=cov, robust_cov=robust,
                    tau=tau, deviance=dev, b=b, b_var=bvar, eta=eta, iterations=iters,
                    evaluations=cond.count, certificate=cert, converged=bool(cert.certified),
                    n_params=p + nt, theta=theta, hessian=Hs, diagonal=diagonal, lam=lam)


# Adaptive quadrature: K from QUAD_START up the sequence until the deviance at the optimum changes by
# at most QUAD_TOL (relative) to the next K. A fit uses at most QUAD_BUDGET nodes (K^q) per unit; the
# check, one evaluation of the deviance at the optimum, at most CHECK_BUDGET.
QUAD_START = 7
QUAD_TOL = 1e-6
QUAD_BUDGET = 2000
CHECK_BUDGET = 4000
QUAD_SEQUENCE = (7, 9, 11, 15, 21, 31, 41, 51, 61, 81, 101)


@dataclass
class QuadratureCheck:
    points: int  # K, per random effect
    adaptive: bool  # K chosen by the rule above (or given by the user)
    check_points: int | None  # K' of the re-evaluation at the optimum
    deviance_check: float | None  # the deviance at the optimum with K' points
    change: float | None  # |d(K') − d(K)| / max(1, |d(K)|)
    tolerance: float
    accurate: bool
    budget: int  # the largest K the budget allows for this q

    def describe(self) -> str:
        how = "chosen adaptively" if self.adaptive else "as given"
        if self.check_points is None:
            return f"{self.points} points per random effect ({how}); no accuracy check within the budget"
        return (f"{self.points} points per random effect ({how}); at the optimum the deviance with "
                f"{self.check_points} points differs by {self.change:.1E} relative (tolerance {self.tolerance:.0E})")

    def to_json(self) -> dict:
        return {"points": self.points, "adaptive": self.adaptive, "check_points": self.check_points,
                "deviance_check": self.deviance_check, "relative_change": self.change,
                "tolerance": self.tolerance, "accurate": self.accurate, "max_points": self.budget}


def _quad_next(K: int) -> int | None:
    """The next K of the sequence (a user's K may lie between its entries)."""
    return next((k for k in QUAD_SEQUENCE if k > K), None)


def _deviance_at(data, res: MLResult, K: int) -> float:
    cond = data.conditional(K)
    cond.b = res.b.copy()
    return cond.deviance(res.gamma, res.lam)


def agq_fit(data: GLMData, nodes: int | None = None, start=None, diagonal: bool = False) -> MLResult:
    """AGQ with K = nodes, or adaptively (nodes None): fit at K = 7, raise K at that optimum until the
    deviance changes by at most QUAD_TOL relative to the next K, refit there, and repeat the check at
    the new optimum, within QUAD_BUDGET nodes per unit. Either way the result carries the check: the
    deviance at the optimum re-evaluated with the next K of the sequence (res.quadrature)."""
    q = data.q
    adaptive = nodes is None
    K = QUAD_START if adaptive else nodes
    res = ml_fit(data, K, start, diagonal=diagonal)

    def rel(a, b):
        return abs(a - b) / max(1.0, abs(b))

    while True:
        Kn = _quad_next(K)
        check = (None, None, None)
        if Kn is None or Kn ** q > CHECK_BUDGET:
            break
        dn = _deviance_at(data, res, Kn)
        check = (Kn, dn, rel(dn, res.deviance))
        if check[2] <= QUAD_TOL or not adaptive or Kn ** q > QUAD_BUDGET:
            break
        # the deviance at this point settles at some K' ≥ Kn (or the budget stops it): refit there
        K2, d2 = Kn, dn
        while (K3 := _quad_next(K2)) is not None and K3 ** q <= QUAD_BUDGET:
            d3 = _deviance_at(data, res, K3)
            if rel(d3, d2) <= QUAD_TOL:
                break
            K2, d2 = K3, d3
        starts = res.starts
        res = ml_fit(data, K2, start, diagonal=diagonal, init=res)
        res.starts = starts
        K = K2
    top = max([k for k in QUAD_SEQUENCE if k ** q <= QUAD_BUDGET], default=QUAD_START)
    Kn, dn, change = check
    res.quadrature = QuadratureCheck(points=K, adaptive=adaptive, check_points=Kn, deviance_check=dn, change=change,
                                     tolerance=QUAD_TOL, accurate=change is not None and change <= QUAD_TOL,
                                     budget=top)
    return res


def _covariances(cond, gamma, lam, H, sel, p):
    """cov(γ): the γ block of 2H⁻¹, H the deviance Hessian in (θ, γ), as glmer. Robust: the γ block of
    the cluster sandwich A⁻¹(Σ_j s_js_j')A⁻¹ over all parameters (θ, γ), A = H/2 the Hessian of
    −log L and s_j = ∂log I_j/∂(θ, γ) unit j's exact score (Conditional with keep_units), CR0 as
    R's sandwich package. At a singular τ, θ is the face's free entries of Λ (the zero columns
    have zero scores)."""
    try:
        Hinv = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        nan = np.full((p, p), np.nan)
        return nan, nan
    nt = sel[0].size
    cond.keep_units, cond._memo = True, (None,)
    try:
        cond.gradient(gamma, lam)
    finally:
        cond.keep_units = False
    sg, sl = cond.unit_scores
    S = np.column_stack([sl[:, sel[0], sel[1]], sg])
    Ainv = 2.0 * Hinv
    robust = (Ainv @ (S.T @ S) @ Ainv)[nt:, nt:]
    d = cond.data
    if getattr(d, "w1", None) is not None or getattr(d, "w2", None) is not None:
        # sampling weights: the scores are w_j·s_j (Conditional), and the sandwich takes the small-sample
        # factor J/(J−1) of the weighted linear fits (engine/sandwich.py, as WeMix)
        robust = robust * (d.J / (d.J - 1.0))
    return Ainv[nt:, nt:], robust


def _search(fg, grad, x, H0, cond, stop=None):
    """Λ's columns may change sign freely (τ = ΛΛ' does not see it), so the search is unconstrained.
    Stage 1: Newton with one Hessian (forward differences at the start, or Laplace's for AGQ);
    stage 2: a central-difference Hessian near the optimum, Newton to the end with it, and that
    Hessian also gives the standard errors and the certificate's face Hessian.
    Returns (x, f, g, Hessian, iterations), or None when stop(x, f) is true after stage 1."""
    f, g = fg(x)
    if H0 is None:
        H0 = difference_hessian(grad, x, g0=g, h=1e-6, cond=cond)
    iters = 0
    x, f, g, n1, ok = damped_newton(fg, x, f, g, H0, 50, 1e-6,
                              refresh=lambda y, gy: difference_hessian(grad, y, g0=gy, h=1e-6, cond=cond))
    iters += n1
    if not ok:  # a poor start: L-BFGS, then the Newton stages
        res = lbfgsb.minimize(fg, x, maxiter=500, ftol=1e-13, gtol=1e-6)
        x = res.x
        f, g = fg(x)
        iters += int(res.nit)
    if stop is not None and stop(x, f):
        return None
    Hs = difference_hessian(grad, x, g0=g, h=1e-6, cond=cond)
    x1 = x
    x, f, g, n2, ok = damped_newton(fg, x, f, g, Hs, 20, 1e-11)
    iters += n2
    if np.max(np.abs(x - x1)) > 1e-5 * (1.0 + np.max(np.abs(x))):  # moved: refresh the Hessian for the SEs
        Hs = difference_hessian(grad, x, g0=g, h=1e-6, cond=cond)
        x, f, g, n3, ok = damped_newton(fg, x, f, g, Hs, 20, 1e-11)
        iters += n3
    return x, f, g, Hs, iters


def _sign_convention(x, g, Hs, q, p, idx):
    """Λ's diagonal non-negative (a column's sign flips with its u): (γ, Λ, x, g, Hessian)."""
    gamma, lam = _unpack(x, q, idx)
    flip = np.where(np.diag(lam) < 0, -1.0, 1.0)
    if np.any(flip < 0):
        lam = lam * flip[None, :]
        sgn = np.concatenate([flip[idx[1]], np.ones(p)])
        x = np.concatenate([lam[idx], gamma])
        g, Hs = g * sgn, Hs * np.outer(sgn, sgn)
    return gamma, lam, x, g, Hs


def _chol_theta(G, idx):
    return np.linalg.cholesky(0.5 * (G + G.T))[idx]


def _certify_ml(data, cond, x, g, Hs, nt, idx, nodes, diagonal, tol) -> Certificate:
    """The linear engine's certificate over PSD τ (certificate.certify) for the deviance with γ
    profiled out. At a positive definite τ its face Hessian comes from the (θ, γ) Hessian already
    computed: the Schur complement Hθθ − HθγHγγ⁻¹Hγθ is the Hessian of the γ-profiled deviance
    (implicit function theorem), and the face coordinates s enter through θ(s) = chol(G(s)):
    ∇²_s = J'H_pJ + Σ_k g_p,k ∇²θ_k, with J and ∇²θ_k by differences of that smooth map (no
    deviance evaluations). At a singular τ: _boundary_point, or, without a clean pivot pattern, the
    certificate differentiates the profiled deviance itself."""
    q = data.q
    gamma, lam = _unpack(x, q, idx)
    G = lam @ lam.T
    Hgg = Hs[nt:, nt:] if np.all(np.isfinite(Hs)) else None
    obj = _ProfiledML(data, cond, gamma, Hgg, diagonal, lam)
    face = Face(G, diagonal)
    if face.r < q or Hgg is None:
        return certify(obj, G, diagonal, tol)
    dev, Gamma = obj.at(G)
    xf = face.x0()
    gf = face.gradient(Gamma, xf)
    sol = np.linalg.solve(Hgg, np.column_stack([Hs[nt:, :nt], g[nt:]]))
    Hp = Hs[:nt, :nt] - Hs[:nt, nt:] @ sol[:, :nt]
    gp = g[:nt] - Hs[:nt, nt:] @ sol[:, nt]
    n = face.size
    h = 1e-4
    J = np.empty((nt, n))
    T2 = np.zeros((nt, n, n))
    th0 = _chol_theta(face.G(xf), idx)
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        tp, tm = _chol_theta(face.G(xf + e), idx), _chol_theta(face.G(xf - e), idx)
        J[:, i] = (tp - tm) / (2 * h)
        T2[:, i, i] = (tp - 2 * th0 + tm) / h ** 2
        for k in range(i):
            e2 = np.zeros(n)
            e2[k] = h
            t = (_chol_theta(face.G(xf + e + e2), idx) - _chol_theta(face.G(xf + e - e2), idx)
                 - _chol_theta(face.G(xf - e + e2), idx) + _chol_theta(face.G(xf - e - e2), idx)) / (4 * h * h)
            T2[:, i, k] = T2[:, k, i] = t
    Hf = J.T @ Hp @ J + np.einsum("k,kab->ab", gp, T2)
    return certify(obj, G, diagonal, tol, face_data=(face, xf, 0.5 * (Hf + Hf.T), gf, dev, Gamma))


def _psd_lower(G):
    """A lower-triangular factor of a PSD G (Cholesky where it exists; else from an eigen factor by QR)."""
    try:
        return np.linalg.cholesky(G)
    except np.linalg.LinAlgError:
        F = factor(G)
        r = np.linalg.qr(F.T, mode="r")  # F = (QR)' ... G = FF' = R'R: R' is lower triangular
        L = r.T
        return L * np.where(np.diag(L) < 0, -1.0, 1.0)[None, :]


class _ProfiledML:
    """The objective the certificate needs: at(G) -> (deviance profiled over γ, Γ = ∂d/∂G), with
    Λ the lower-triangular factor of G, as in the search."""

    def __init__(self, data, cond, gamma, Hgg, diagonal, lam=None):
        self.data, self.cond, self.gamma, self.lam = data, cond, gamma.copy(), lam
        self.idx = _theta_index(data.q, diagonal)
        # a fixed Newton matrix for γ at fixed Λ: the γ block of the deviance Hessian at the optimum
        self.Hg = Hgg

    def _profile(self, lam):
        """γ minimising the deviance at this Λ (fixed-Hessian Newton from the optimum's γ) and the
        (deviance, ∂d/∂Λ) there."""
        gamma = self.gamma.copy()
        for k in range(6):
            dev, gg, glam = self.cond.gradient(gamma, lam)
            if self.Hg is None or k == 5:
                break
            step = np.linalg.solve(self.Hg, gg)
            if np.max(np.abs(step)) < 1e-10:
                break
            gamma = gamma - step
        self.last_gamma = gamma
        return dev, glam

    def profile(self, lam):
        """(γ, deviance) at this Λ with γ profiled out."""
        dev, _ = self._profile(lam)
        return self.last_gamma.copy(), dev

    def value(self, G):
        return self._profile(_psd_lower(0.5 * (G + G.T)))[0]

    def at(self, G):
        G = 0.5 * (G + G.T)
        if np.linalg.eigvalsh(G)[0] < -1e-12:
            return np.inf, np.zeros_like(G)
        q = G.shape[0]
        if np.linalg.eigvalsh(G)[0] > 1e-8 * max(1.0, np.abs(G).max()):
            # exact: dΛ = ΛΦ(Λ⁻¹dGΛ⁻ᵀ) for the Cholesky factor, so Γ = Λ⁻ᵀ sym(Φ(Λ'D))Λ⁻¹ with D
            # the lower triangle of ∂d/∂Λ (the diagonal of it for a diagonal τ)
            lam = np.linalg.cholesky(G)
            if self.lam is not None and np.allclose(lam, self.lam, rtol=0.0, atol=1e-14):
                lam = self.lam  # the optimum itself (its evaluation is kept)
            dev, glam = self._profile(lam)
            D = np.zeros((q, q))
            D[self.idx] = glam[self.idx]
            P = lower_phi(lam.T @ D)
            Li = np.linalg.inv(lam)
            Gam = Li.T @ (0.5 * (P + P.T)) @ Li
            return dev, 0.5 * (Gam + Gam.T)
        dev = self.value(G)
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


# ====================================================================== the certificate at a singular τ

def _null_pivots(G, n_null):
    """The pivots of G's natural-order Cholesky factorisation whose Schur complement vanishes (G of
    rank q − n_null): there the lower-triangular factor has a zero column, as the search's Λ has in
    the limit. None when the count does not come out as n_null (then no clean pivot pattern)."""
    q = G.shape[0]
    L = np.zeros((q, q))
    null = []
    top = max(float(np.max(np.diag(G))), 1e-300)
    for k in range(q):
        dk = G[k, k] - L[k, :k] @ L[k, :k]
        if dk <= 1e-8 * top:
            null.append(k)
            continue
        L[k, k] = math.sqrt(dk)
        L[k + 1:, k] = (G[k + 1:, k] - L[k + 1:, :k] @ L[k, :k]) / L[k, k]
    return null if len(null) == n_null else None


def _pivot_factor(G, null):
    """The lower-triangular factor of the PSD G with zero columns at the pivots `null`: smooth in G
    on the face of G's rank (the search's parametrisation, Λ lower triangular, at its boundary)."""
    q = G.shape[0]
    L = np.zeros((q, q))
    for k in range(q):
        if k in null:
            continue
        L[k, k] = math.sqrt(max(G[k, k] - L[k, :k] @ L[k, :k], 0.0))
        L[k + 1:, k] = (G[k + 1:, k] - L[k + 1:, :k] @ L[k, :k]) / L[k, k]
    return L


def _boundary_point(data, cond, gamma, lam, f_search, idx, diagonal, tol, Hgg):
    """The certificate at a singular τ, with the quadrature-consistent gradient.

    The search's Λ is lower triangular with some columns ≈ 0. Project G = ΛΛ' onto its rank-r face
    (certificate.Face), factor it with exact zero columns at the vanishing pivots (_pivot_factor) and
    re-profile γ. On the face the deviance is a smooth function of the remaining entries θ_f of Λ, with
    the exact gradient of Conditional (Laplace and AGQ alike): its (θ_f, γ) Hessian by central
    differences of that gradient, γ profiled by the Schur complement, and the chain rule through the
    smooth map x ↦ θ_f(G(x)) from the face coordinates give the face gradient and Hessian, as
    _certify_ml does at a positive definite τ. (Differences of the deviance itself in G, one-sided at
    the boundary, are what wrongly left true optima uncertified: their O(h) error alone exceeds the
    tolerance.)

    Into the cone: the derivative of the profiled deviance along G + tP (P = V₀EV₀', E ⪰ 0 over the
    null space) at t → 0⁺, from the exact ∂d/∂Λ at the positive definite G + t₀P, t₀ tiny, through
    dΛ = ΛΦ(Λ⁻¹PΛ⁻ᵀ) (the Cholesky derivative). The deviance is even in a zero column of Λ (its
    sign flips with u, and the product rule is symmetric), so this derivative is finite and O(t₀)
    from its limit. Polarisation over E gives the null-space block of Γ; certify() then scans the
    deviance along its most negative direction, as for the linear engine.

    Returns (γ, Λ, deviance, certificate, the (θ_f, γ) Hessian, θ_f's positions in Λ, escape) or None
    when no clean pivot pattern exists; escape = (G, γ), a lower point to restart the search from,
    when the certificate fails."""
    q = data.q
    p = data.p
    G = lam @ lam.T
    face = Face(G, diagonal)
    x0 = face.x0()
    Gr = face.G(x0)
    null = _null_pivots(Gr, q - face.r)
    if null is None:
        return None
    # Order the random effects so that the vanishing pivots come last: then the factor's free entries
    # are exactly as many as the face's dimension. The order matters to AGQ's product rule only
    # when two or more columns are left (a one-column factor is unique up to sign).
    perm = np.array([k for k in range(q) if k not in null] + list(null))
    if np.any(perm != np.arange(q)) and not diagonal:
        if cond.nodes > 1 and face.r > 1:
            return None
        inv = np.argsort(perm)
        rows, cols = np.tril_indices(q)
        keep = cols < face.r
        fidx = (perm[rows[keep]], cols[keep])
        null_p = list(range(face.r, q))

        def face_factor(Gm):
            return _pivot_factor(Gm[np.ix_(perm, perm)], null_p)[inv]
    else:
        keep = ~np.isin(idx[1], null)
        fidx = (idx[0][keep], idx[1][keep])

        def face_factor(Gm):
            return _pivot_factor(Gm, null)
    nf = fidx[0].size
    if nf != face.size:
        return None
    Lr = face_factor(Gr)
    obj = _ProfiledML(data, cond, gamma, Hgg, diagonal)
    gamma_r, dev = obj.profile(Lr)

    def grad(y):
        lam_y = np.zeros((q, q))
        lam_y[fidx] = y[:nf]
        _, gg, gl = cond.gradient(y[nf:], lam_y)
        return np.concatenate([gl[fidx], gg])

    y0 = np.concatenate([Lr[fidx], gamma_r])
    g0 = grad(y0)
    H = difference_hessian(grad, y0, h=1e-5, cond=cond)
    Hgg_r = H[nf:, nf:]
    sol = np.linalg.solve(Hgg_r, np.column_stack([H[nf:, :nf], g0[nf:]]))
    Hp = H[:nf, :nf] - H[:nf, nf:] @ sol[:, :nf]
    gp = g0[:nf] - H[:nf, nf:] @ sol[:, nf]
    # chain rule from the face coordinates x to θ_f(x) (a smooth map: no deviance evaluations)
    gf, Hf = chain_to_face(lambda xv: face_factor(face.G(xv))[fidx], x0, face.size, nf, gp, Hp)
    # the null-space block of Γ by one-sided exact derivatives (polarisation over E)
    M = _cone_slopes(obj, face, Gr, idx, q)
    Gamma = face.V0 @ M @ face.V0.T
    obj.gamma = gamma_r
    cert = certify(obj, Gr, diagonal, tol, face_data=(face, x0, 0.5 * (Hf + Hf.T), gf, dev, Gamma))
    if not np.all(np.isfinite(M)):
        cert.failed.append("the derivative into the cone could not be evaluated")
    if dev > f_search + tol:
        cert.failed.append(f"the boundary point's deviance is {dev - f_search:.1E} above the search's point")
    cert.certified = not cert.failed
    escape = None
    if not cert.certified and dev <= f_search + tol:
        escape = _escape_point(obj, cert, face, x0, Gr, Hf, gf, dev, tol)
    return gamma_r, Lr, dev, cert, H, fidx, escape


def chain_to_face(theta, x0, n: int, nf: int, gp, Hp, h: float = 1e-4):
    """The face gradient and Hessian from those in θ_f (gp, Hp), by the chain rule through the smooth
    map x ↦ θ_f(x) from the face coordinates (central differences of θ_f: no deviance evaluations)."""
    J = np.empty((nf, n))
    T2 = np.zeros((nf, n, n))
    th0 = theta(x0)
    for i in range(n):
        e = np.zeros(n)
        e[i] = h
        tp, tm = theta(x0 + e), theta(x0 - e)
        J[:, i] = (tp - tm) / (2 * h)
        T2[:, i, i] = (tp - 2 * th0 + tm) / h ** 2
        for k in range(i):
            e2 = np.zeros(n)
            e2[k] = h
            t = (theta(x0 + e + e2) - theta(x0 + e - e2) - theta(x0 - e + e2) + theta(x0 - e - e2)) / (4 * h * h)
            T2[:, i, k] = T2[:, k, i] = t
    gf = J.T @ gp
    Hf = J.T @ Hp @ J + np.einsum("k,kab->ab", gp, T2)
    return gf, Hf


def _cone_slopes(obj, face, Gr, idx, q: int) -> np.ndarray:
    """The null-space block M of Γ (Γ = V₀MV₀') from one-sided exact derivatives into the cone at
    G + t₀P, t₀ tiny, polarised over E (see _boundary_point)."""
    m = q - face.r
    scale = max(1.0, float(np.abs(Gr).max()))
    t0 = 1e-8 * scale

    def slope(E):
        P = face.V0 @ E @ face.V0.T
        Gt = Gr + t0 * P
        try:
            L = np.linalg.cholesky(0.5 * (Gt + Gt.T))
        except np.linalg.LinAlgError:
            return np.nan
        _, glam = obj._profile(L)
        Li = np.linalg.inv(L)
        dL = L @ lower_phi(Li @ P @ Li.T)
        D = np.zeros((q, q))
        D[idx] = glam[idx]
        return float(np.sum(D * dL))

    base = slope(np.eye(m))
    M = np.zeros((m, m))
    for a in range(m):
        Ea = np.eye(m)
        Ea[a, a] += 1.0
        M[a, a] = slope(Ea) - base
        for c in range(a):
            Eac = np.eye(m)
            Eac[a, c] = Eac[c, a] = 0.5
            M[a, c] = M[c, a] = slope(Eac) - base
    return M


def _escape_point(obj, cert, face, x0, Gr, Hf, gf, dev: float, tol: float):
    """Where to restart the search from an uncertified boundary point: along the descent into the
    cone, or a Newton step on the face. Returns (G, γ), or None."""
    if cert.descent is not None:
        G_new = Gr + cert.descent_step * cert.descent
    else:
        step = _newton_step(0.5 * (Hf + Hf.T), gf)
        t, G_new = 1.0, None
        while t > 1e-6:
            if face.feasible(x0 + t * step) and obj.value(face.G(x0 + t * step)) < dev - tol:
                G_new = face.G(x0 + t * step)
                break
            t *= 0.5
    if G_new is None:
        return None
    obj.value(G_new)
    return G_new, obj.last_gamma.copy()
