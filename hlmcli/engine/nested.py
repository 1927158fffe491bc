"""Nested linear models of any number of levels (HLM 7's HLM3, HLM4, ...): the nested per-unit
solve, the profiled ML/REML deviance, its gradient, the EB means and the scores, as pure
functions of arrays.

Model, K levels. Level 1: Y = Σ_p π_p a_p + e, e ~ N(0, σ²); each coefficient of a level-ℓ
equation is modelled at level ℓ+1 by its own equation, with a random effect at level ℓ+1 or not;
the level-K coefficients are the fixed effects. In matrix form, for the records of one top unit,

    y = Xγ + Z2 b2 + Z3 b3 + … + ZK bK + e,   bℓ ~ N(0, τℓ) per level-ℓ unit,

where each column is a path through the equations: a fixed column is the product of the
predictors on the path from a level-1 coefficient to a level-K one, and a random column at level
ℓ the product of those from a level-1 coefficient to a level-(ℓ−1) coefficient that has a random
effect. Three levels (HLM3's π/β/γ): τπ = τ2, τβ = τ3; four levels add τγ = τ4 and the δ's.
Write Gℓ = τℓ/σ² = ΛℓΛℓ' (any square factors).

The nested Woodbury solve, one level at a time. Let Rℓ = I + Σ_{m≤ℓ} Zm Gm Zm' (block diagonal
over level-ℓ units; R1 = I) and, for a level-ℓ unit, Wℓ = C'R_{ℓ−1}⁻¹C over the columns not yet
absorbed, C = [Zℓ | Zℓ+1 … ZK | X | y] (at level 2, W2 = C'C per level-2 unit). With S = Wℓ[Zℓ,Zℓ],

    M = I + Λℓ'SΛℓ,   Kℓ = ΛℓM⁻¹Λℓ',   log|Rℓ| = Σ_{children} log|R_{ℓ−1}| + log|M|,
    C'Rℓ⁻¹C = Wℓ[C',C'] − Wℓ[Zℓ,C']'Kℓ Wℓ[Zℓ,C'] (C' = the columns after Zℓ),

and summing C'Rℓ⁻¹C over the level-ℓ units of a level-(ℓ+1) unit gives Wℓ+1. After level K the
sums over all units hold P = σ²X'V⁻¹X, c = σ²X'V⁻¹y and s = σ²y'V⁻¹y: γ̂ = P⁻¹c, rss = s − c'γ̂.
Everything is q×q algebra per unit, vectorised over units (component-first arrays as in
unitsolve.py): the cost is linear in N, and no N×N or unit-sized matrix is ever formed.
(Three levels, HLM3: W3 = Σ_j∈k B_j'(σ²V2_j⁻¹)B_j per level-3 unit k with B = [Z3 | X | y], the
level-2 step K2_j = Λ2M_j⁻¹Λ2' and the level-3 step K3_k = Λ3M_k⁻¹Λ3'; the solve is linear in N.)

Deviance (lme4's), σ² profiled: ν = N (ML) or N − p (REML), σ̂² = rss/ν,

    d = Σ_ℓ Σ_units log|Mℓ| + ν(1 + log 2π + log σ̂²) [+ log|P| for REML].

Gradient. With Ṽ = V/σ² = R_K, ∂log|Ṽ|/∂Gℓ = Σ_units Zℓ'Ṽ⁻¹Zℓ, ∂rss/∂Gℓ = −Σ vv' with
v = Zℓ'Ṽ⁻¹e, and ∂log|P|/∂Gℓ = −Σ Qℓ P⁻¹ Qℓ' with Qℓ = Zℓ'Ṽ⁻¹X, so for each block

    Γℓ = Σ Zℓ'Ṽ⁻¹Zℓ − (1/σ̂²) Σ vℓvℓ' [− Σ Qℓ P⁻¹ Qℓ' for REML],

the two-level formula (unitsolve.py) once Zℓ'Ṽ⁻¹[Zℓ | X | y] is known per level-ℓ unit. It
follows downwards from the same Woodbury step: with Tℓ = Zℓ'Rℓ⁻¹[Zℓ | C'] = Hℓ Wℓ[Zℓ, ·],
Hℓ = I − SKℓ, each higher level m replaces R_{m−1} by R_m within the level-m unit above:

    Zℓ'R_m⁻¹D = Zℓ'R_{m−1}⁻¹D − (Zℓ'R_{m−1}⁻¹Zm) Km (Zm'R_{m−1}⁻¹D),

where Zm'R_{m−1}⁻¹D is Wm's Zm rows for D among the columns past Zm, and for D = Zℓ the
transpose of Tℓ's own Zm block; after m = K, Tℓ = Zℓ'Ṽ⁻¹[Zℓ | X | y]. (Three levels: T2's Z3 block is the
three-level T_j = H2_j(Z2_j'Z3_j), and Z2'Ṽ⁻¹Z2 = H2A − T K3 T'.)

The search works on standardised columns formed record by record (reduce_standardised); the
solve is the same algebra on either set of cross-products (reduce_nested gives the user's own).

Empirical Bayes: E(bℓ | y) = Gℓ vℓ, Var(bℓ | y, γ̂) = σ²(Gℓ − Gℓ(Zℓ'Ṽ⁻¹Zℓ)Gℓ) (= σ²K_K at the top).

Sampling weights: multilevel pseudo-ML (Rabe-Hesketh & Skrondal 2006; WeMix's mix(), whose linear
models use this closed form). The weights are conditional: w_i|j for a record in its level-2 unit,
w_u|v for a level-ℓ unit u in its level-(ℓ+1) unit v, w_u at the top. The pseudo-likelihood is the
nested integral with each conditional contribution raised to its weight,

    L2_j(b3…) = ∫ Π_i f(y_i | b2, b3, …)^{w_i|j} φ(b2; τ2) db2,
    Lℓ_u(bℓ+1…) = ∫ Π_{c ∈ u} L(ℓ−1)_c^{w_c|u} φ(bℓ; τℓ) dbℓ,   log PL = Σ_top w_u log LK_u.

Closed form. f(y|b)^w = (2πσ²)^{−w/2} exp(−w r²/2σ²): a power of a Gaussian factor multiplies its
quadratic form in the random effects by w, so every integral above stays Gaussian. At level 2,
Π_i f^{w_i|j} = (2πσ²)^{−n_w/2} exp(−‖W1^½(y − Xγ − Σ Zb)‖²/2σ²), W1 = diag(w_i|j): the unweighted
integral with the cross-products C'W1C in place of C'C. Its log is −½[n_w log 2πσ² + log|M_j| +
Q_j(b3, …)/σ²], with Q_j the quadratic that C'R2⁻¹C (from C'W1C) defines. Raised to w_j|k and
multiplied over j ∈ k, the exponent in b3 is −Σ_j w_j|k Q_j/2σ²: the level-3 integral is the unweighted
one with W3 = Σ_j w_j|k (C'R2⁻¹C)_j, and so on up. Hence, by induction over the levels:
- the solve above unchanged, except that every sum of a unit's C'RC into its parent is taken with
  the unit's conditional weight (W1 inside the level-2 cross-products);
- each log|M_u| is multiplied by every weight from u to the top, ω_u = w_u|v·ω_v (a power w_c of a
  child's integral multiplies all the log-determinants beneath it by w_c);
- σ²'s exponent collects N_w = Σ_i Ω_i, Ω_i = w_i|j·ω_j, the records' unconditional weights;

    −2 log PL = Σ_ℓ Σ_u ω_u log|Mℓ,u| + N_w log 2πσ² + rss/σ²,   σ̂² = rss/N_w,

where rss = s − c'γ̂ is min_{γ,b} Σ_i Ω_i r_i² + σ² Σ_u ω_u b_u'τ⁻¹b_u (WeMix's weighted penalised sum
of squares, Ω and Ψ there). For integer weights PL is the likelihood of the data with each record and
unit replicated w times (a replicated unit drawing its own random effects), which carries the
gradient, EB and score formulas over: a sum over level-ℓ units counts unit u ω_u times, while a
unit's own pieces (its Kℓ, its Wℓ) come from the weighted solve. REML (not in WeMix) is read the same
way: ν = N_w − p and log|P| of the weighted P. With every weight 1 nothing differs from above.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .moments import LevelsSummary, Moments, mapped_means, mapped_products, records_summary
from .objective import BlockDeviance
from .unitsolve import LOG_2PI, cmm, cmv, factor, gls, spd_inverse_logdet
from .coefficients import Coefficient

__all__ = ["Coefficient", "LevelsData", "LevelsSummary", "LevelsStats", "LevelsSolve", "Beta", "Pi", "NestedLayout",
           "NestedData", "NestedFit", "NestedStats", "NestedSolve", "as_levels", "as_summary", "reduce_nested",
           "reduce_levels", "levels_solve", "nested_solve", "deviance_nested", "deviance_levels",
           "COEFFICIENT_NAMES", "NestedDeviance"]

# the coefficients of the level-1, 2, 3, ... equations of a model of three or more levels (HLM3, HLM4):
# the random effects at level ℓ are on the level-(ℓ−1) coefficients, τ_ℓ is named after them
COEFFICIENT_NAMES = ("pi", "beta", "gamma", "delta", "epsilon")


# ---------------------------------------------------------------- the interface, any number of levels

@dataclass(frozen=True)
class LevelsData:
    """K ≥ 3 levels. predictors[0] (N, P1) are the level-1 predictors, predictors[ℓ−1] (Jℓ, Pℓ)
    the level-ℓ ones; parents[0] (N,) is each record's level-2 unit, parents[ℓ−1] (Jℓ,) each
    level-ℓ unit's level-(ℓ+1) unit, all 0-based and nondecreasing; layout the level-1 equation.
    weights: None (unweighted) or K sampling weights, weights[0] (N,) per record, weights[ℓ−1] (Jℓ,)
    per level-ℓ unit, each conditional on the unit above (w_i|j, w_j|k, …, w_k at the top), positive
    and already normalised; None for one level means weights 1 there (see `Weighting`)."""
    y: np.ndarray
    predictors: tuple
    parents: tuple
    layout: tuple  # of Coefficient
    weights: tuple | None = None

    @property
    def n_levels(self) -> int:
        return len(self.predictors)


# ---------------------------------------------------------------- three levels (HLM3's names)

@dataclass(frozen=True)
class Beta:
    """One level-2 coefficient β_pq."""
    level2_col: int | None  # column of NestedData.X2, None = the intercept (1)
    level3_cols: tuple[int | None, ...]  # columns of NestedData.W3 in its level-3 equation, None = intercept
    random: bool  # has u_pq


@dataclass(frozen=True)
class Pi:
    """One level-1 coefficient π_p."""
    level1_col: int | None  # column of NestedData.A, None = the intercept (1)
    betas: tuple[Beta, ...]
    random: bool  # has r_p


@dataclass(frozen=True)
class NestedLayout:
    """gamma order: for p in pis, for beta in p.betas, for s in beta.level3_cols -> γ_pqs.
    tau_pi order: the random π's in order; tau_beta order: the random β's in (p, q) order."""
    pis: tuple[Pi, ...]


@dataclass(frozen=True)
class NestedData:
    y: np.ndarray  # (N,) outcome
    A: np.ndarray  # (N, P1) level-1 predictors (centred as the model says)
    X2: np.ndarray  # (J2, P2) level-2 predictors
    W3: np.ndarray  # (J3, P3) level-3 predictors
    unit2: np.ndarray  # (N,) level-2 unit of each record, 0..J2-1, nondecreasing
    unit3: np.ndarray  # (J2,) level-3 unit of each level-2 unit, 0..J3-1, nondecreasing
    layout: NestedLayout


def as_levels(data) -> LevelsData:
    """The K-level form of three-level data (the γ order, τ orders and units are the same); K-level
    data and per-unit summaries (moments.LevelsSummary) are passed on."""
    if isinstance(data, (LevelsData, LevelsSummary)):
        return data
    layout = tuple(Coefficient(pi.level1_col,
                               tuple(Coefficient(b.level2_col, tuple(Coefficient(s) for s in b.level3_cols), b.random)
                                     for b in pi.betas), pi.random)
                   for pi in data.layout.pis)
    return LevelsData(data.y, (data.A, data.X2, data.W3), (data.unit2, data.unit3), layout)


@dataclass
class NestedFit:
    method: str  # "ML" or "REML"
    gamma: np.ndarray  # (p,)
    cov_gamma: np.ndarray  # (p, p) model-based
    cov_gamma_robust: np.ndarray  # (p, p) CR0 sandwich clustered at the top level
    df_gamma: np.ndarray  # (p,) HLM d.f. (see nested_fit.hlm_df)
    sigma2: float
    tau_pi: np.ndarray  # (q2, q2)
    tau_beta: np.ndarray  # (q3, q3)
    deviance: float  # −2 log L (ML) or the REML criterion, lme4's conventions
    n_params: int  # 1 + Σ qℓ(qℓ+1)/2, plus p under ML (HLM's count)
    reliability_pi: np.ndarray  # (q2,)
    reliability_beta: np.ndarray  # (q3,)
    chi2_pi: list[dict]  # per random π: chi2, df, p, n_units
    chi2_beta: list[dict]  # per random β: chi2, df, p, n_units
    eb_pi: np.ndarray  # (J2, q2)
    eb_pi_var: np.ndarray  # (J2, q2, q2)
    eb_beta: np.ndarray  # (J3, q3)
    eb_beta_var: np.ndarray  # (J3, q3, q3)
    certificate: object
    converged: bool  # True only with a certificate
    iterations: int
    message: str
    boundary: list[str] = field(default_factory=list)
    solve: object | None = None  # the LevelsSolve at the answer, in the standardised coordinates
    standardisation: object | None = None  # nested.Standardisation: the map back to the user's columns
    evaluations: int = 0
    start: str = ""
    # every level, 2..K (the fields above are levels 2 and 3 of these)
    taus: tuple = ()
    reliabilities: tuple = ()
    chi2: tuple = ()
    eb: tuple = ()
    eb_var: tuple = ()
    diagonal: tuple = ()  # per level 2..K: τℓ restricted to a diagonal matrix (lme4's ||)
    df_method: str = "hlm"  # how df_gamma was computed: "hlm" (nested_fit.hlm_df) or "satterthwaite"
    fixed_map: np.ndarray | None = None  # --constrain: H of γ = Hδ (the fit ran on X·H); None unconstrained

    @property
    def n_levels(self) -> int:
        return len(self.taus) + 1


# ---------------------------------------------------------------- columns of the model

@dataclass(frozen=True)
class Columns:
    """Every column of the model as a path of (level, predictor column) pairs from a level-1
    coefficient upwards; its level-1 coefficient (`root`) decides its level-1 factor.
    z[i]: the random columns at level i+2 (each a path through levels 1..i+1), in depth-first order;
    x: the fixed columns (paths through levels 1..K), in depth-first order, which is the γ order;
    x_random: for each fixed column, the levels (2..K) at which a coefficient on its path is random."""
    z: tuple
    x: list
    z_root: tuple
    x_root: list
    x_random: list
    x_path_nodes: list  # for each fixed column, the Coefficient nodes on its path (level 1 .. K)

    @property
    def qs(self) -> tuple:
        return tuple(len(z) for z in self.z)


def columns_of(layout, n_levels: int) -> Columns:
    z = [[] for _ in range(n_levels - 1)]
    zr = [[] for _ in range(n_levels - 1)]
    x, xr, xrand, xnodes = [], [], [], []

    def walk(node, depth, path, nodes, root, rand):
        path = path + ((depth, node.col),)
        nodes = nodes + (node,)
        if depth == n_levels:
            x.append(path)
            xr.append(root)
            xrand.append(rand)
            xnodes.append(nodes)
            return
        if node.random:
            z[depth - 1].append(path)
            zr[depth - 1].append(root)
            rand = rand + (depth + 1,)
        for t in node.terms:
            walk(t, depth + 1, path, nodes, root, rand)

    for ip, node in enumerate(layout):
        walk(node, 1, (), (), ip, ())
    return Columns(tuple(z), x, tuple(zr), xr, xrand, xnodes)


# ---------------------------------------------------------------- the reduction (once)

@dataclass
class LevelsStats:
    """Per-unit cross-products: everything the likelihood needs after one pass over the records.
    Arrays are component-first (…, J). Columns: [Z2 | Z3 | … | ZK | X | y]."""
    N: int
    n2: np.ndarray  # (J2,) records per level-2 unit
    parents: tuple  # parents[i] (J_{i+2},): each level-(i+2) unit's unit one level up (i ≥ 0)
    starts: tuple  # starts[i] (J_{i+3},): first level-(i+2) unit of each level-(i+3) unit
    qs: tuple  # (q2, …, qK)
    p: int
    ZZ2: np.ndarray  # (q2, q2, J2)  Z2_j'Z2_j
    Z2B: np.ndarray  # (q2, nb, J2)  Z2_j'B_j, B = [Z3 … ZK | X | y]
    BB: np.ndarray  # (nb, nb, J3)  Σ_j∈k B_j'B_j
    yy: float  # y'y
    DD: np.ndarray | None = None  # (P+1, P+1, J2) cross-products of [a_0..a_{P-1}, y] (for χ² tests)
    F: np.ndarray | None = None  # (m, J2) per-level-2-unit factor of each column of [Z2|…|X|y]
    D_index: np.ndarray | None = None  # (m,) the level-1 column of each
    weighting: "Weighting | None" = None  # sampling weights (None: unweighted)

    @property
    def n_weighted(self) -> float:
        """N_w = Σ_i Ω_i, the records' unconditional weights (N when unweighted)."""
        return float(self.N) if self.weighting is None else self.weighting.n_weighted

    @property
    def n_levels(self) -> int:
        return len(self.qs) + 1

    @property
    def J2(self) -> int:
        return self.n2.size

    @property
    def J3(self) -> int:
        return self.starts[0].size

    @property
    def q2(self) -> int:
        return self.qs[0]

    @property
    def q3(self) -> int:
        return self.qs[1]

    @property
    def unit3(self) -> np.ndarray:
        return self.parents[0]

    @property
    def starts3(self) -> np.ndarray:
        return self.starts[0]

    def J(self, level: int) -> int:
        return self.J2 if level == 2 else self.starts[level - 3].size

    def ancestor(self, level: int, up: int) -> np.ndarray:
        """The level-`up` unit of each level-`level` unit (level ≥ 2)."""
        a = np.arange(self.J(level))
        for m in range(level, up):
            a = self.parents[m - 2][a]
        return a

    @property
    def nb(self) -> int:
        return sum(self.qs[1:]) + self.p + 1


NestedStats = LevelsStats



@dataclass(frozen=True)
class Weighting:
    """Sampling weights of a K-level fit (module docstring, "Sampling weights"): per level ℓ = 2..K
    each unit's weight given its parent (`conditional`, w_u|parent; at the top w_u) and the product
    up to the top (`unconditional`, ω_u = w_u|parent ⋯ w_top); `record` the level-1 w_i|j (None:
    all 1); `omega` each record's Ω_i = w_i|j·ω_j."""
    record: np.ndarray | None
    conditional: tuple
    unconditional: tuple
    omega: np.ndarray
    records_per_unit: np.ndarray  # (J2,) records (not weights) of each level-2 unit

    @property
    def n_weighted(self) -> float:
        return float(self.omega.sum())

    @property
    def n_records(self) -> int:
        return int(self.omega.size)


def weighting_of(data: LevelsData) -> Weighting | None:
    """The Weighting of LevelsData.weights (None when it has none), each weight checked: one per
    record or unit, finite and positive (a record's may be 0 if its unit's sum is not; ValueError
    saying which otherwise)."""
    if not isinstance(data, LevelsData) or data.weights is None:
        return None
    K = data.n_levels
    if len(data.weights) != K:
        raise ValueError(f"weights must give one array (or None) per level, {K} in all")
    parents = [np.asarray(p, dtype=np.int64) for p in data.parents]
    sizes = [parents[0].size] + [p.size for p in parents[1:]] + [int(parents[-1].max()) + 1]
    ws = []
    for level, (w, n) in enumerate(zip(data.weights, sizes), start=1):
        if w is None:
            ws.append(None if level == 1 else np.ones(n))
            continue
        w = np.asarray(w, dtype=float)
        if w.shape != (n,):
            raise ValueError(f"the level-{level} weights must have one entry per level-{level} "
                             f"{'record' if level == 1 else 'unit'} ({n})")
        if not np.all(np.isfinite(w) & ((w >= 0) if level == 1 else (w > 0))):
            raise ValueError(f"the level-{level} weights must be finite and positive")
        if level == 1 and np.any(np.bincount(parents[0], weights=w, minlength=sizes[1]) <= 0):
            raise ValueError("every level-2 unit needs a positive sum of level-1 weights")
        ws.append(w)
    conditional = tuple(ws[1:])
    unconditional = [None] * (K - 1)
    unconditional[-1] = conditional[-1]
    for level in range(K - 1, 1, -1):  # ω_u = w_u|parent · ω_parent
        unconditional[level - 2] = conditional[level - 2] * unconditional[level - 1][parents[level - 1]]
    omega = unconditional[0][parents[0]]
    if ws[0] is not None:
        omega = omega * ws[0]
    return Weighting(ws[0], conditional, tuple(unconditional), omega,
                     np.bincount(parents[0], minlength=sizes[1]).astype(float))


def summary_of(data) -> LevelsSummary:
    """as_summary, keeping sampling weights (a WeightedSummary when the data have them)."""
    return _summary(data)[0]


def _weighted_moments(columns, unit: np.ndarray, J: int, w: np.ndarray) -> Moments:
    """Per level-2 unit the weighted moments of `columns` (records sorted by unit): n_j = Σ_i w_i,
    mean_j = Σ_i w_i v_i / n_j, C_j = Σ_i w_i (v_i − mean_j)(v_i − mean_j)' (two passes, so C does not
    cancel). With them moments.mapped_products gives Σ_i w_i c_i c_i' for any column map: the
    level-1 weights inside every level-2 cross-product (module docstring, "Sampling weights")."""
    V = np.column_stack([np.asarray(c, dtype=np.float64) for c in columns])
    starts = _offsets(unit, J)[:-1]
    n = np.add.reduceat(w, starts)
    mean = np.add.reduceat(V * w[:, None], starts, axis=0) / n[:, None]
    D = V - mean[unit]
    fix = np.add.reduceat(D * w[:, None], starts, axis=0) / n[:, None]  # the two-pass correction
    mean += fix
    D -= fix[unit]
    C = np.add.reduceat(D[:, :, None] * (D * w[:, None])[:, None, :], starts, axis=0)
    return Moments(n, mean, 0.5 * (C + C.transpose(0, 2, 1)))


@dataclass(frozen=True)
class WeightedSummary(LevelsSummary):
    """A LevelsSummary of weighted data: the level-1 weights inside its moments, the weights of the
    levels above in `weighting`."""
    weighting: Weighting | None = None


def _summary(data):
    """(the summary, the Weighting or None): as_summary, with the level-1 weights inside the
    per-unit moments and the Weighting carried along when the data have weights."""
    if isinstance(data, WeightedSummary):
        return as_summary(data), data.weighting
    weighting = weighting_of(data)
    if weighting is None:
        return as_summary(data), None
    s = as_summary(replace(data, weights=None))
    m = s.moments
    if weighting.record is not None:
        unit2 = np.asarray(data.parents[0], dtype=np.intp)
        A = np.asarray(data.predictors[0], dtype=np.float64)
        m = _weighted_moments([A[:, k] for k in range(A.shape[1])] + [np.asarray(data.y, dtype=np.float64)], unit2,
                              m.J, weighting.record)
    return WeightedSummary(m, s.upper, s.unit_parents, s.layout, weighting), weighting


def _offsets(sorted_ids: np.ndarray, n_units: int) -> np.ndarray:
    counts = np.bincount(sorted_ids, minlength=n_units)
    return np.concatenate([[0], np.cumsum(counts)])


def _validate(data: LevelsData) -> None:
    """The array contract of LevelsData; a violation is a ValueError saying which array and why."""
    y = np.asarray(data.y)
    K = data.n_levels
    if K < 3 or len(data.parents) != K - 1:
        raise ValueError("a nested model needs predictors for K ≥ 3 levels and K − 1 parent arrays")
    N = y.shape[0] if y.ndim == 1 else 0
    if y.ndim != 1 or N == 0:
        raise ValueError("y must be a non-empty vector")
    n_units = [N]
    for i, par in enumerate(data.parents):
        par = np.asarray(par)
        name = "unit2" if i == 0 else f"unit{i + 2}"
        if par.shape != (n_units[-1],):
            raise ValueError(f"{name} must have one entry per level-{i + 1} {'record' if i == 0 else 'unit'} "
                             f"({n_units[-1]})")
        if par.size == 0 or par.min() < 0 or np.any(np.diff(par) < 0):
            raise ValueError(f"{name} must be nondecreasing level-{i + 2} unit numbers 0..J-1 "
                             "(records sorted by unit)")
        n_units.append(int(par.max()) + 1)
    if int(np.asarray(data.parents[0]).max()) + 1 != np.asarray(data.parents[1]).shape[0]:
        raise ValueError("unit2 must number the level-2 units 0..J2-1 (one entry of unit3 per level-2 unit)")
    for level, (arr, J) in enumerate(zip(data.predictors, n_units), start=1):
        arr = np.asarray(arr)
        name = "A" if level == 1 else f"X{level}"
        if arr.ndim != 2 or arr.shape[0] != J:
            raise ValueError(f"{name} must have one row per level-{level} {'record' if level == 1 else 'unit'} ({J})")
    for name, arr in [("y", y)] + [("A" if i == 0 else f"X{i + 1}", a) for i, a in enumerate(data.predictors)]:
        if not np.all(np.isfinite(np.asarray(arr, dtype=float))):
            raise ValueError(f"{name} has missing or infinite values")

    def check(node, depth, where):
        width = np.asarray(data.predictors[depth - 1]).shape[1]
        if node.col is not None and not 0 <= node.col < width:
            raise ValueError(f"{where}: level-{depth} column {node.col} is not a column of the level-{depth} predictors")
        if depth < K:
            if not node.terms and not node.random:
                if depth == 1:
                    raise ValueError(f"{where} has neither level-2 coefficients nor a random effect")
                raise ValueError(f"{where}: a level-{depth} coefficient is neither fixed nor random (leave it out)")
            for t in node.terms:
                check(t, depth + 1, where)
        elif node.terms or node.random:
            raise ValueError(f"{where}: a level-{K} coefficient can have no equation or random effect")

    for ip, node in enumerate(data.layout):
        check(node, 1, f"pi {ip}")


def as_summary(data) -> LevelsSummary:
    """The per-level-2-unit summary of any nested data (moments.LevelsSummary): records in memory
    (LevelsData, NestedData) are checked and summarised by moments.records_summary, the one
    statistics pass; a summary from the stream or Dask engine is checked and passed on."""
    if isinstance(data, LevelsSummary):
        _validate_summary(data)
        return data
    data = as_levels(data)
    _validate(data)
    n2 = np.bincount(np.asarray(data.parents[0], dtype=np.int64), minlength=np.asarray(data.parents[1]).shape[0])
    if np.any(n2 == 0):
        raise ValueError("a level-2 unit has no records")
    return records_summary(data.y, data.predictors[0], np.asarray(data.parents[0], dtype=np.intp),
                           tuple(data.predictors[1:]), tuple(data.parents[1:]), data.layout)


def _validate_summary(s: LevelsSummary) -> None:
    """The array contract of LevelsSummary (as _validate's for records)."""
    K = s.n_levels
    if K < 3 or len(s.unit_parents) != K - 2:
        raise ValueError("a nested model needs predictors for K ≥ 3 levels and K − 2 unit parent arrays")
    m = s.moments
    J = [m.J]
    for i, par in enumerate(s.unit_parents):
        par = np.asarray(par)
        if par.shape != (J[-1],) or par.size == 0 or par.min() < 0 or np.any(np.diff(par) < 0):
            raise ValueError(f"unit{i + 3} must be nondecreasing level-{i + 3} unit numbers, one per level-{i + 2} unit")
        J.append(int(par.max()) + 1)
    for level, (arr, n) in enumerate(zip(s.upper, J), start=2):
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[0] != n or not np.all(np.isfinite(arr)):
            raise ValueError(f"X{level} must have one finite row per level-{level} unit ({n})")
    if not (np.all(np.isfinite(m.mean)) and np.all(np.isfinite(m.C))):
        raise ValueError("the level-1 moments have missing or infinite values")
    if np.any(m.n <= 0):
        raise ValueError("a level-2 unit has no records")


def _unit_maps(data):
    """maps[ℓ] (ℓ = 2..K): the level-ℓ unit of each level-2 unit (maps[2] = identity)."""
    parents = [np.asarray(p, dtype=np.int64) for p in data.parents]
    J2 = parents[1].size
    maps = {2: np.arange(J2)}
    for level in range(3, data.n_levels + 1):
        maps[level] = parents[level - 2][maps[level - 1]]
    return parents, maps


def _level_factor(data, path, maps, J2: int) -> np.ndarray:
    """The product of a path's predictors at levels ≥ 2, per level-2 unit (the intercept is 1)."""
    out = np.ones(J2)
    for level, col in path[1:]:
        if col is not None:
            out = out * np.asarray(data.predictors[level - 1], dtype=float)[maps[level], col]
    return out


def _structure(s: LevelsSummary):
    """(columns, J2, starts): the model's columns and, per level ℓ = 3..K, the first level-(ℓ−1)
    unit of each level-ℓ unit; refuses a level-ℓ unit with no units below it."""
    K = s.n_levels
    starts = []
    for level in range(3, K + 1):
        par = np.asarray(s.parents[level - 2], dtype=np.int64)
        off = _offsets(par, int(par.max()) + 1)
        if np.any(np.diff(off) == 0):
            raise ValueError(f"a level-{level} unit has no level-{level - 1} units")
        starts.append(off[:-1])
    return columns_of(s.layout, K), s.moments.J, starts


def _maps_of(s: LevelsSummary, paths, with_y: bool):
    """The affine maps (B0, B1) of moments.mapped_products for the model columns `paths` (and the
    outcome last): a column a_root·f_j is f_j in its root's row of B1 (B0 for the intercept)."""
    _, maps = _unit_maps(s)
    J2 = s.moments.J
    P1 = s.moments.P - 1
    k = len(paths) + int(with_y)
    B0, B1 = np.zeros((k, J2)), np.zeros((P1 + 1, k, J2))
    for c, path in enumerate(paths):
        f = _level_factor(s, path, maps, J2)
        root = path[0][1]
        if root is None:
            B0[c] = f
        else:
            B1[root, c] = f
    if with_y:
        B1[P1, k - 1] = 1.0
    return B0, B1


def _transform(B0: np.ndarray, B1: np.ndarray, T: np.ndarray):
    """The maps of the columns [c]·T (new column e = Σ_c T[c, e] c)."""
    return np.einsum("ce,cj->ej", T, B0), np.einsum("pcj,ce->pej", B1, T)


def reduce_levels(data) -> LevelsStats:
    """The per-unit cross-products of the user's columns [Z2 | … | ZK | X | y] from the summary:
    first those of [a_0..a_{P-1}, y] per level-2 unit (P = number of π's), from which every column
    of the model, a_p times a level-2-unit factor, follows by scaling."""
    s, weighting = _summary(data)
    K = s.n_levels
    cols, J2, starts = _structure(s)
    P = len(s.layout)
    _, DD = mapped_products(s.moments, *_maps_of(s, [((1, node.col),) for node in s.layout], True))
    paths = [p for z in cols.z for p in z] + cols.x
    roots = [r for zr in cols.z_root for r in zr] + cols.x_root
    _, maps = _unit_maps(s)
    factors = [_level_factor(s, path, maps, J2) for path in paths] + [np.ones(J2)]
    dindex = np.array(roots + [P], dtype=int)
    F = np.array(factors)
    qs = cols.qs
    q2, p = qs[0], len(cols.x)
    m = F.shape[0]
    CC = DD[dindex[:, None], dindex[None, :]] * F[:, None, :] * F[None, :, :]  # (m, m, J2)
    ZZ2 = np.ascontiguousarray(CC[:q2, :q2])
    Z2B = np.ascontiguousarray(CC[:q2, q2:])
    # Σ_{j∈k} w_j|k B_j'W1B_j: each level-2 unit's products counted with its conditional weight
    Bj = CC[q2:, q2:] if weighting is None else CC[q2:, q2:] * weighting.conditional[0]
    BB = np.add.reduceat(Bj, starts[0], axis=2) if J2 else np.zeros((m - q2, m - q2, 0))
    del CC
    if weighting is None:
        return LevelsStats(s.N, s.moments.n.astype(float), tuple(s.parents[1:]), tuple(starts), qs, p, ZZ2, Z2B,
                           np.ascontiguousarray(BB), float(DD[P, P].sum()), DD, F, dindex)
    # weighted: y'y is Σ_i Ω_i y_i² (each level-2 unit's sum times its unconditional weight)
    return LevelsStats(weighting.n_records, weighting.records_per_unit, tuple(s.parents[1:]), tuple(starts), qs, p,
                       ZZ2, Z2B, np.ascontiguousarray(BB), float(DD[P, P] @ weighting.unconditional[0]), DD, F, dindex,
                       weighting)


def reduce_nested(data) -> LevelsStats:
    """reduce_levels for NestedData (three levels), LevelsData or a LevelsSummary."""
    return reduce_levels(data)


@dataclass(frozen=True)
class Standardisation:
    """The internal coordinates of the search: Z̃ℓ = ZℓAℓ per level, X̃ = XTX (orthogonal columns
    of unit root-mean-square: TX = √N·R⁻¹ from X = QR), ỹ = y − Xb (b the OLS fit, so the outcome's
    sums of squares do not cancel). τℓ = σ²AℓG̃ℓAℓ', γ = TXγ̃ + b, and
    log|X'V⁻¹X| = log|X̃'V⁻¹X̃| − 2 log|det TX| (the REML shift)."""
    As: tuple
    TX: np.ndarray
    b: np.ndarray

    @property
    def A2(self) -> np.ndarray:
        return self.As[0]

    @property
    def A3(self) -> np.ndarray:
        return self.As[1]

    @property
    def log_det_TX(self) -> float:
        return float(np.linalg.slogdet(self.TX)[1])


def _centre_scale(m: Moments, B0: np.ndarray, B1: np.ndarray, intercept: int | None) -> np.ndarray:
    """T with [c]·T centred at the grand mean (when an all-ones column is among the columns, as a
    reparametrisation) and scaled to unit spread; each column's mean and spread come from the
    per-unit moments without forming raw sums of squares (moments.mapped_means), so a predictor
    whose mean dwarfs its spread loses only eps·mean/spread, not its square."""
    k = B0.shape[0]
    T = np.eye(k)
    if k == 0:
        return T
    mean, centred, raw = mapped_means(m, B0, B1)
    N = float(m.n.sum())
    for c in range(k):
        if c == intercept:
            continue
        if intercept is not None:
            T[intercept, c] = -mean[c]
            sd = float(np.sqrt(centred[c] / N))
        else:
            sd = float(np.sqrt(raw[c] / N))
        if not sd > 0:
            sd = max(float(np.sqrt(raw[c] / N)), 1e-300)
        T[:, c] /= sd
    return T


def _orthonormalise(m: Moments, B0: np.ndarray, B1: np.ndarray, intercept: int | None) -> np.ndarray:
    """R⁻¹ with X·R⁻¹ orthonormal, X the columns (B0, B1): centred and scaled columns first, then
    Cholesky QR twice, each Gram matrix formed afresh from the moments of the transformed columns
    (moments.mapped_products), so the second pass corrects the first as it does on records.
    A Gram matrix from any per-unit summary fixes the singular values of X only to about √eps of
    the largest, so centred and scaled columns with a condition number past 1e7 (correlations
    within 1e-14 of ±1) cannot be told from linearly dependent ones: FloatingPointError."""
    p = B0.shape[0]
    if p == 0:
        return np.zeros((0, 0))
    T1 = _centre_scale(m, B0, B1, intercept)

    def gram(T):
        return mapped_products(m, *_transform(B0, B1, T))[1].sum(axis=2)

    dependent = FloatingPointError("the fixed-effect columns are linearly dependent")
    Rinv = T1
    for _ in range(2):
        try:
            L = np.linalg.cholesky(gram(Rinv))
        except np.linalg.LinAlgError:
            raise dependent from None
        d = np.diag(L)
        if not d.min() > 1e-7 * d.max():
            raise dependent
        Rinv = Rinv @ np.linalg.inv(L).T  # R⁻¹ for R = L'
    if not np.allclose(gram(Rinv), np.eye(p), atol=1e-10):
        raise dependent
    return Rinv


def reduce_standardised(data, diagonal=(), fixed_map: np.ndarray | None = None) -> tuple[LevelsStats, Standardisation]:
    """The per-unit cross-products of the standardised columns [Z̃2 | … | Z̃K | X̃ | ỹ] from the summary:
    the transforms are applied to each unit's affine map of its records before any product
    (moments.mapped_products), never to cross-products already formed, which would cancel digits
    quadratically in a predictor's mean/spread. diagonal[ℓ−2]: τℓ is diagonal, so its columns are
    scaled only: centring a slope's column on the intercept's would mix the random effects, which a
    diagonal τ does not allow (it is no reparametrisation then). fixed_map: H of --constrain (γ = Hδ,
    engine/constraints.py): the fixed columns are X·H, formed on the same affine maps (_transform), so
    the search, the certificate and the solve are the constrained model's and TX, b are of δ."""
    s, weighting = _summary(data)
    cols, J2, starts = _structure(s)
    m = s.moments
    N = float(m.n.sum())

    def intercept(paths):
        return next((k for k, path in enumerate(paths) if all(c is None for _, c in path)), None)

    zmaps = [_maps_of(s, z, False) for z in cols.z]
    diagonal = tuple(diagonal) + (False,) * (len(cols.z) - len(tuple(diagonal)))
    As = tuple(_centre_scale(m, B0, B1, None if diag else intercept(z))
               for (B0, B1), z, diag in zip(zmaps, cols.z, diagonal))
    B0x, B1x = _maps_of(s, cols.x, False)
    p = len(cols.x)
    x_intercept = intercept(cols.x)
    if fixed_map is not None:
        B0x, B1x = _transform(B0x, B1x, fixed_map)
        p = fixed_map.shape[1]
        # the all-ones column survives only as a δ whose column of H is that γ alone
        unit = [k for k in range(p) if x_intercept is not None
                and np.array_equal(fixed_map[:, k], np.eye(len(cols.x))[x_intercept])]
        x_intercept = unit[0] if unit else None
    Rinv = _orthonormalise(m, B0x, B1x, x_intercept)
    TX = np.sqrt(N) * Rinv
    # b: the OLS fit of y on X through the orthonormal X·R⁻¹, refined once on its residual
    # (corrected semi-normal equations: as accurate as the QR of the records)
    P1 = m.P - 1
    b = np.zeros(p)
    for _ in range(2):
        r0 = -np.einsum("c,cj->j", b, B0x)
        r1 = -np.einsum("c,pcj->pj", b, B1x)
        r1[P1] += 1.0
        q0, q1 = _transform(B0x, B1x, Rinv)
        _, S = mapped_products(m, np.vstack([q0, r0]), np.concatenate([q1, r1[:, None]], axis=1))
        b = b + Rinv @ S[:p, p].sum(axis=1)
    r0 = -np.einsum("c,cj->j", b, B0x)
    r1 = -np.einsum("c,pcj->pj", b, B1x)
    r1[P1] += 1.0
    parts = [_transform(B0, B1, A) for (B0, B1), A in zip(zmaps, As)] + [_transform(B0x, B1x, TX),
                                                                          (r0[None], r1[:, None])]
    B0 = np.vstack([x for x, _ in parts])
    B1 = np.concatenate([x for _, x in parts], axis=1)
    _, C = mapped_products(m, B0, B1)
    qs = cols.qs
    q2 = qs[0]
    ZZ2 = np.ascontiguousarray(C[:q2, :q2])
    Z2B = np.ascontiguousarray(C[:q2, q2:])
    if weighting is None:
        BB = np.ascontiguousarray(np.add.reduceat(C[q2:, q2:], starts[0], axis=2))
        stats = LevelsStats(s.N, m.n.astype(float), tuple(s.parents[1:]), tuple(starts), qs, p, ZZ2, Z2B, BB,
                            float(C[-1, -1].sum()))
    else:  # Σ_{j∈k} w_j|k B_j'W1B_j, and ỹ'ỹ as Σ_i Ω_i ỹ_i²
        BB = np.ascontiguousarray(np.add.reduceat(C[q2:, q2:] * weighting.conditional[0], starts[0], axis=2))
        stats = LevelsStats(weighting.n_records, weighting.records_per_unit, tuple(s.parents[1:]), tuple(starts), qs,
                            p, ZZ2, Z2B, BB, float(C[-1, -1] @ weighting.unconditional[0]), weighting=weighting)
    return stats, Standardisation(As, TX, b)


# ---------------------------------------------------------------- the solve at (G2, …, GK)

def _sandwich(lam: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Λ'A_jΛ for every unit, component-first: vec(Λ'AΛ) = (Λ⊗Λ)' vec(A), one BLAS product over
    the contiguous (q², J) array, no transposed copies."""
    q = lam.shape[0]
    J = A.shape[2]
    out = np.kron(lam, lam).T @ np.ascontiguousarray(A).reshape(q * q, J)
    return out.reshape(q, q, J)


def _quad(U: np.ndarray, K: np.ndarray, V: np.ndarray | None = None) -> np.ndarray:
    """U_j'K_jV_j for U (q,a,J), K (q,q,J), V (q,b,J) -> (a,b,J) (symmetric when V is U)."""
    KV = cmm(K, U if V is None else V)
    a = U.shape[1]
    b = KV.shape[1]
    out = np.empty((a, b, U.shape[2]))
    if V is None:
        for i in range(a):
            for k in range(i, b):
                out[i, k] = np.einsum("qj,qj->j", U[:, i], KV[:, k])
                out[k, i] = out[i, k]
    else:
        for i in range(a):
            for k in range(b):
                out[i, k] = np.einsum("qj,qj->j", U[:, i], KV[:, k])
    return out


def _quad_sum(U: np.ndarray, K: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Σ_{j∈k} U_j'K_jU_j for U (q,a,J), K (q,q,J) symmetric, summed over the unit segments that
    begin at `starts` -> (a,a,len(starts)): the a(a+1)/2 distinct products as multiply-adds into
    one contiguous buffer, then one segment sum."""
    q, a, J = U.shape
    KU = cmm(K, U)
    pairs = [(i, k) for i in range(a) for k in range(i, a)]
    prod = np.empty((len(pairs), J))
    tmp = np.empty(J)
    for r, (i, k) in enumerate(pairs):
        np.multiply(U[0, i], KU[0, k], out=prod[r])
        for c in range(1, q):
            np.multiply(U[c, i], KU[c, k], out=tmp)
            prod[r] += tmp
    S = np.add.reduceat(prod, starts, axis=1)
    out = np.empty((a, a, len(starts)))
    for r, (i, k) in enumerate(pairs):
        out[i, k] = out[k, i] = S[r]
    return out


def _absorb(lam: np.ndarray, ZZ: np.ndarray):
    """M = I + Λ'ZZΛ per unit: K = ΛM⁻¹Λ' and log|M|."""
    q = lam.shape[0]
    M = _sandwich(lam, ZZ)
    for a in range(q):
        M[a, a] += 1.0
    Minv, logdet = spd_inverse_logdet(M)
    return _sandwich(lam.T, Minv), logdet


def _cmm(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """cmm that allows an empty inner or outer dimension."""
    if X.shape[1] == 0 or X.shape[0] == 0 or Y.shape[1] == 0:
        return np.zeros((X.shape[0], Y.shape[1], X.shape[2]))
    return cmm(X, Y)


def _tail(A: np.ndarray, C: np.ndarray) -> np.ndarray:
    """A (a, p+1, J) with its [X|y] columns combined by C (p+1, t) -> (a, t, J)."""
    return np.tensordot(A, C, axes=([1], [0])).transpose(0, 2, 1)


@dataclass
class LevelsSolve:
    """The nested per-unit algebra at Gℓ = ΛℓΛℓ' (ℓ = 2..K), and the GLS fit it implies."""
    stats: LevelsStats
    lams: tuple  # Λ2 … ΛK
    Ks: tuple  # Kℓ (qℓ, qℓ, Jℓ)
    logdets: tuple  # log|Mℓ| (Jℓ,)
    Ws: tuple  # Wℓ (nbℓ, nbℓ, Jℓ), ℓ = 3..K: columns [Zℓ … ZK | X | y] of R_{ℓ−1}⁻¹
    P: np.ndarray
    cholP: np.ndarray
    c: np.ndarray
    s: float
    gamma: np.ndarray
    rss: float

    @property
    def Gs(self) -> tuple:
        return tuple(lam @ lam.T for lam in self.lams)

    # three-level names
    lam2 = property(lambda self: self.lams[0])
    lam3 = property(lambda self: self.lams[1])
    K2 = property(lambda self: self.Ks[0])
    K3 = property(lambda self: self.Ks[1])
    W = property(lambda self: self.Ws[0])
    G2 = property(lambda self: self.Gs[0])
    G3 = property(lambda self: self.Gs[1])

    def dof(self, reml: bool) -> float:
        N = self.stats.n_weighted
        return N - self.stats.p if reml else N

    def unit_weights(self, level: int) -> np.ndarray | None:
        """ω_u of the level-ℓ units (how many times each counts in a sum over the level), None = all 1."""
        wt = self.stats.weighting
        return None if wt is None else wt.unconditional[level - 2]

    def sigma2_hat(self, reml: bool) -> float:
        return self.rss / self.dof(reml)

    def log_det_P(self) -> float:
        return 2.0 * float(np.log(np.diag(self.cholP)).sum())

    def logdet_V(self) -> float:
        wt = self.stats.weighting
        if wt is None:
            return float(sum(ld.sum() for ld in self.logdets))
        return float(sum(ld @ w for ld, w in zip(self.logdets, wt.unconditional)))

    def profiled_deviance(self, reml: bool) -> float:
        nu = self.dof(reml)
        d = self.logdet_V() + nu * (1.0 + LOG_2PI + np.log(self.rss / nu))
        return d + self.log_det_P() if reml else d

    def deviance(self, sigma2: float, reml: bool) -> float:
        """At this G and a given σ² (γ at its GLS value), as lmerTest's devfun_vp."""
        N, p = self.stats.n_weighted, self.stats.p
        d = self.logdet_V() + self.rss / sigma2 + N * (LOG_2PI + np.log(sigma2))
        if reml:
            d += self.log_det_P() - p * (LOG_2PI + np.log(sigma2))
        return d

    def rounding_noise(self, reml: bool, sigma2: float | None = None) -> float:
        """How far rounding can move the profiled deviance (as UnitSolve.rounding_noise), or the
        deviance at a fixed σ² (rss/σ² then carries the cancellation once, not ν times its log)."""
        eps = np.finfo(float).eps
        nu = self.dof(reml)
        cancel = (abs(self.stats.yy) + abs(self.stats.yy - self.s) + abs(float(self.c @ self.gamma))) / self.rss
        wt = self.stats.weighting
        logdets = float(sum(np.abs(ld).sum() if wt is None else np.abs(ld) @ w
                            for ld, w in zip(self.logdets, (None,) * len(self.logdets) if wt is None
                                             else wt.unconditional)))
        logdets += abs(self.log_det_P()) if reml else 0.0
        if sigma2 is not None:
            return 8.0 * eps * (cancel * self.rss / sigma2 + logdets)
        return 8.0 * eps * (nu * cancel + logdets + nu * abs(np.log(self.rss / nu)))

    def Pinv(self) -> np.ndarray:
        p = self.P.shape[0]
        return np.linalg.solve(self.cholP.T, np.linalg.solve(self.cholP, np.eye(p)))

    # ------------------------------------------------------------ per-unit pieces for Γ, EB, inference
    def pieces(self, level: int, tail: np.ndarray):
        """(Zℓ'Ṽ⁻¹Zℓ (q,q,Jℓ), Zℓ'Ṽ⁻¹[X|y]·tail (q,t,Jℓ)) per level-ℓ unit: the downward recursion
        of the module docstring. `tail` (p+1, t) combines the [X|y] columns first (the residual
        e = [X|y](−γ̂, 1) alone for ML), so the higher levels carry t columns, not p + 1."""
        st = self.stats
        qs = st.qs
        K = st.n_levels
        q = qs[level - 2]
        higher = sum(qs[level - 1:])
        if level == 2:
            Szz, Szh, Sxy = st.ZZ2, st.Z2B[:, :higher], st.Z2B[:, higher:]
        else:
            W = self.Ws[level - 3]
            Szz, Szh, Sxy = W[:q, :q], W[:q, q:q + higher], W[:q, q + higher:]
        H = -_cmm(Szz, self.Ks[level - 2])
        for a in range(q):
            H[a, a] += 1.0
        own = _cmm(H, Szz)
        T = _cmm(H, Szh)
        E = _cmm(H, _tail(Sxy, tail))
        for m in range(level + 1, K + 1):
            qm = qs[m - 2]
            if qm == 0:
                continue
            anc = st.ancestor(level, m)
            Tm, T = T[:, :qm], T[:, qm:]
            TK = _cmm(Tm, self.Ks[m - 2][:, :, anc])
            own -= _cmm(TK, Tm.transpose(1, 0, 2))
            Wm = self.Ws[m - 3]
            hm = sum(qs[m - 1:])
            if T.shape[1]:
                T = T - _cmm(TK, Wm[:qm, qm:qm + hm][:, :, anc])
            E = E - _cmm(TK, _tail(Wm[:qm, qm + hm:], tail)[:, :, anc])
        return own, E

    def level3_pieces(self):
        """(Z3'Ṽ⁻¹Z3, Z3'Ṽ⁻¹[X|y]) per level-3 unit (three-level name)."""
        return self.pieces(3, np.eye(self.stats.p + 1))

    def level2_pieces(self):
        """(Z2'Ṽ⁻¹Z2, Z2'Ṽ⁻¹[X|y]) per level-2 unit (three-level name)."""
        return self.pieces(2, np.eye(self.stats.p + 1))

    def _tail_matrix(self, reml: bool) -> np.ndarray:
        p = self.stats.p
        ge = np.append(-self.gamma, 1.0)[:, None]
        if not reml:
            return ge
        return np.hstack([np.vstack([np.eye(p), np.zeros((1, p))]), ge])

    def gradients(self, reml: bool, sigma2: float | None = None) -> tuple:
        """(Γ2, …, ΓK) = ∂d/∂(G2, …, GK), symmetric convention, σ² profiled unless given (module
        docstring). Only sums over units enter Γ: the residual is contracted first, and the
        p-sized pieces are formed only for REML."""
        st = self.stats
        p = st.p
        s2 = self.sigma2_hat(reml) if sigma2 is None else sigma2
        Pinv = self.Pinv() if reml else None
        tail = self._tail_matrix(reml)
        out = []
        for level, q in enumerate(st.qs, start=2):
            if q == 0:
                out.append(np.zeros((0, 0)))
                continue
            own, E = self.pieces(level, tail)
            w = self.unit_weights(level)
            v = E[:, -1]
            vw = v if w is None else v * w
            G = (own.sum(axis=2) if w is None else own @ w) - (vw @ v.T) / s2
            if reml:
                Q = E[:, :p]
                Qw = Q if w is None else Q * w
                G -= np.tensordot(np.tensordot(Qw, Pinv, axes=([1], [0])).transpose(0, 2, 1), Q,
                                  axes=([1, 2], [1, 2]))
            out.append(0.5 * (G + G.T))
        return tuple(out)

    def posterior_levels(self, sigma2: float) -> tuple:
        """EB per level ℓ = 2..K: ((E bℓ (Jℓ,qℓ), Var bℓ (Jℓ,qℓ,qℓ)), …), given γ̂."""
        st = self.stats
        tail = self._tail_matrix(False)
        out = []
        for level, (q, G) in enumerate(zip(st.qs, self.Gs), start=2):
            J = st.J(level)
            if q == 0:
                out.append((np.zeros((J, 0)), np.zeros((J, 0, 0))))
                continue
            own, E = self.pieces(level, tail)
            mean = (G @ E[:, -1]).T
            if level == st.n_levels:
                var = sigma2 * self.Ks[-1].transpose(2, 0, 1)
            else:
                var = sigma2 * (G[None] - np.einsum("ab,bcj,cd->jad", G, own, G))
            out.append((mean, 0.5 * (var + var.transpose(0, 2, 1))))
        return tuple(out)

    def posterior(self, sigma2: float):
        """Three levels: (E r_j, Var r_j, E u_k, Var u_k)."""
        (rm, rv), (um, uv) = self.posterior_levels(sigma2)[:2]
        return rm, rv, um, uv

    def scores(self) -> np.ndarray:
        """σ²X_k'V_k⁻¹e_k per top unit (J_K, p): the scores of γ for the sandwich."""
        st = self.stats
        qK, p = st.qs[-1], st.p
        W = self.Ws[-1]
        Wx = W[qK:, qK:]  # (p+1, p+1, J_K)
        s = Wx[:p, p].T - np.einsum("abj,b->ja", Wx[:p, :p], self.gamma)
        if qK:
            WB = W[:qK, qK:]
            e = WB[:, p] - np.einsum("qpj,p->qj", WB[:, :p], self.gamma)
            s -= np.einsum("qpj,qj->jp", WB[:, :p], cmv(self.Ks[-1], e))
        return s

    scores3 = scores


NestedSolve = LevelsSolve


def levels_solve(stats: LevelsStats, lams) -> LevelsSolve:
    """Solve every unit at Gℓ = ΛℓΛℓ'. Raises FloatingPointError when P is not positive definite
    or rss is not positive (the model is degenerate there)."""
    qs, p = stats.qs, stats.p
    K = stats.n_levels
    lams = tuple(np.asarray(lam, dtype=float).reshape(q, q) for lam, q in zip(lams, qs))
    wt = stats.weighting
    # each unit's contribution to its parent's sums counts w_u|parent times (module docstring)
    cw = (None,) * (K - 1) if wt is None else wt.conditional
    q2 = qs[0]
    if q2:
        K2, logdet2 = _absorb(lams[0], stats.ZZ2)
        W = stats.BB - _quad_sum(stats.Z2B, K2 if cw[0] is None else K2 * cw[0], stats.starts[0])
    else:
        K2, logdet2 = np.zeros((0, 0, stats.J2)), np.zeros(stats.J2)
        W = stats.BB
    Ks, logdets, Ws = [K2], [logdet2], []
    for level in range(3, K + 1):
        q = qs[level - 2]
        Ws.append(W)
        J = W.shape[2]
        if q:
            Kl, ld = _absorb(lams[level - 2], W[:q, :q])
        else:
            Kl, ld = np.zeros((0, 0, J)), np.zeros(J)
        Ks.append(Kl)
        logdets.append(ld)
        w = cw[level - 2]
        if level < K:
            nxt = stats.starts[level - 2]
            W = np.add.reduceat(W[q:, q:] if w is None else W[q:, q:] * w, nxt, axis=2)
            if q:
                W = W - _quad_sum(Ws[-1][:q, q:], Kl if w is None else Kl * w, nxt)
        else:
            tot = W[q:, q:] - _quad(W[:q, q:], Kl) if q else W
            tot = tot.sum(axis=2) if w is None else tot @ w
    tot = 0.5 * (tot + tot.T)
    P, c, s = tot[:p, :p], tot[:p, p], float(tot[p, p])
    cholP, gamma, rss = gls(P, c, s)
    return LevelsSolve(stats, lams, tuple(Ks), tuple(logdets), tuple(Ws), P, cholP, c, s, gamma, rss)


def nested_solve(stats: LevelsStats, *lams) -> LevelsSolve:
    """levels_solve with the factors as separate arguments (three levels: Λ2, Λ3)."""
    if len(lams) == 1 and isinstance(lams[0], (tuple, list)):
        lams = tuple(lams[0])
    return levels_solve(stats, lams)



class NestedDeviance(BlockDeviance):
    """The profiled (RE)ML deviance over (G2, …, GK) as an objective.DevianceObjective, on the
    statistics given (the search's standardised ones). sigma2: σ² profiled (None) or fixed at that
    value (an HGLM's working model, nested_glmm.py; G = τ/σ² then)."""

    def __init__(self, stats: LevelsStats, reml: bool, sigma2: float | None = None):
        super().__init__(reml)
        self.stats, self.sigma2 = stats, sigma2

    def _solve(self, lams) -> LevelsSolve:
        return levels_solve(self.stats, lams)

    def deviance_of(self, us: LevelsSolve) -> float:
        return us.profiled_deviance(self.reml) if self.sigma2 is None else us.deviance(self.sigma2, self.reml)

    def at(self, Gs, factors=None):
        if self.sigma2 is None:
            return super().at(Gs, factors)
        try:
            us = self.solve(tuple(factor(G) for G in Gs) if factors is None else tuple(factors))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, tuple(np.zeros_like(G) for G in Gs)
        return self.deviance_of(us), us.gradients(self.reml, self.sigma2)

    def value(self, Gs) -> float:
        if self.sigma2 is None:
            return super().value(Gs)
        try:
            return self.deviance_of(self.solve(tuple(factor(G) for G in Gs)))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    def noise(self, Gs) -> float:
        if self.sigma2 is None:
            return super().noise(Gs)
        try:
            return self.solve(tuple(factor(G) for G in Gs)).rounding_noise(self.reml, self.sigma2)
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0


def deviance_levels(data, sigma2: float, taus, reml: bool = False) -> float:
    """The ML or REML deviance (lme4's conventions, γ at its GLS value) at given σ² and τℓ (PSD,
    singular allowed), e.g. to judge another program's estimates."""
    stats = data if isinstance(data, LevelsStats) else reduce_nested(data)
    try:
        us = levels_solve(stats, tuple(factor(np.asarray(t, float) / sigma2) for t in taus))
    except (FloatingPointError, np.linalg.LinAlgError):
        return float("inf")
    return us.deviance(sigma2, reml)


def deviance_nested(data, sigma2: float, tau_pi: np.ndarray, tau_beta: np.ndarray, reml: bool = False) -> float:
    """deviance_levels at three levels (τπ, τβ)."""
    return deviance_levels(data, sigma2, (tau_pi, tau_beta), reml)
