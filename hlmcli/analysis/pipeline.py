"""The stages in order: archive + spec -> design -> sufficient statistics -> fit -> inference.

The CLI and scripts call `analyse`; each stage stays a pure function of typed data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import design as design_stage
from . import inference
from ..io.archive import Archive
from ..language.model import ModelSpec
from ..errors import ModelError
from ..engine.certificate import rank_tolerance
from ..engine.estimation import FitResult, TauStructure, fit
from ..engine.sufficient import ModelStats, UnitStats, model_stats, unit_cross_products


@dataclass
class Analysis:
    spec: ModelSpec
    design: design_stage.Design
    unit: UnitStats
    stats: ModelStats
    result: FitResult
    fixed: inference.FixedTable
    ols: inference.UnitOLS
    variance: inference.VarianceTests
    se_sigma2: float | None = None
    se_tau: np.ndarray | None = None
    satterthwaite: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    weights: object = None  # weights.Weights of a pseudo-likelihood fit, or None
    df_rule: str = "hlm"  # the Approx. d.f. of the fixed effects: "hlm" (HLM 7's rule) or "hlm6"


def analyse(spec: ModelSpec, archive: Archive, df_method: str = "hlm", weights=None) -> Analysis:
    """weights: a weights.WeightSpec (level-1/level-2 columns and normalisation) or None."""
    design = design_stage.make_design(spec, archive)
    check_estimable(design)
    resolved = None
    if weights is not None and weights.any:
        from ..data.weights import resolve

        resolved = resolve(weights, archive, design)
    unit = unit_cross_products(design.L, design.y, design.offsets, center_y=design_stage.has_overall_intercept(design),
                               weights=None if resolved is None else resolved.w1)
    return analyse_stats(design, unit, df_method, resolved, centred=centred_statistics(design, unit, resolved)
                         if centring_needed(design, unit) else None)


def centring_needed(design, unit: UnitStats) -> bool:
    """Whether the records must be centred for the deviance to keep its digits (centring.needs_centring):
    decided from the per-unit products already made, so well-scaled data cost no second pass."""
    from ..engine.centring import needs_centring

    totals_sum = unit.LL[:, 0, :].sum(axis=0)  # Σ over records of each level-1 column (row 0 is the intercept)
    totals_sq = np.einsum("jaa->a", unit.LL)
    return needs_centring(totals_sum, totals_sq, float(unit.n.sum()), design.W, unit.n.astype(float))


def centred_statistics(design, unit: UnitStats, weights=None):
    """The model on internally centred columns and a residualised outcome (centring.py), from the
    records, so large means spoil neither the deviance nor the collinearity check."""
    from ..engine.centring import centred_model

    unstructured = getattr(design.spec.options, "tau", "unstructured") == "unstructured"
    return centred_model(design.L, design.y - unit.y_shift, design.offsets, design.block_design(), design.random,
                         unstructured, weights=None if weights is None else weights.w1,
                         w2=None if weights is None else weights.w2)


def analyse_stats(design, unit: UnitStats, df_method: str = "hlm", weights=None, start=None,
                  centred=None, sigma2: float | None = None) -> Analysis:
    """The fit and its inference from a design and its per-unit cross-products (weights: a
    weights.Weights, already applied to `unit` at level 1; centred: centred_statistics, when the
    records are at hand; sigma2: the level-1 variance held at this value, not estimated, as in a
    V-known model on records scaled by their known standard deviations)."""
    spec = design.spec
    stats = model_stats(unit, design.block_design(), design.random, None if weights is None else weights.w2)
    design_stage.check_collinearity(design, stats.XX, None if centred is None else centred.stats.XX)
    if design.n <= stats.p + 1:
        raise ModelError(f"only {design.n} records for {stats.p} fixed effects; the model needs more data")
    if sigma2 is None:  # a known level-1 variance needs no residual variation to estimate it
        check_residual_variation(stats, spec)
        check_within_unit_variation(stats if centred is None else centred.stats, spec)
    structure = TauStructure(spec.options.tau)
    method = spec.method
    if weights is not None and method.upper() == "REML":
        # a restricted pseudo-likelihood is not defined: its answer would move with the scale of the
        # level-2 weights (tested), so a weighted fit is full pseudo-ML, as WeMix and Stata's mixed
        method = "ML"
        weights.notes.append("REML was asked for; with sampling weights the fit is full pseudo-maximum likelihood "
                             "(a restricted pseudo-likelihood would depend on the weights' scale)")
    try:
        result = fit(stats, method, max_iterations=spec.options.max_iterations, structure=structure, start=start,
                     centred=centred, sigma2=sigma2)
    except (FloatingPointError, np.linalg.LinAlgError) as exc:
        raise ModelError(f"the model cannot be fitted to these data ({exc}); check for an outcome that the "
                         "predictors determine exactly, or remove random effects") from None
    result.boundary = boundary_notes(result, spec)
    fixed = inference.fixed_effects(design, unit, stats, result)
    ols = inference.unit_ols(design, unit, stats, result)
    variance = inference.variance_tests(design, ols, result.tau, stats)
    analysis = Analysis(spec, design, unit, stats, result, fixed, ols, variance)
    analysis.weights = weights
    if result.method == "ML" and weights is None:  # model-based; not valid under sampling weights
        analysis.se_sigma2, analysis.se_tau = inference.variance_standard_errors(stats, result)
    if df_method == "satterthwaite" and weights is not None:
        raise ModelError("Satterthwaite d.f. are not defined for a pseudo-likelihood fit with sampling weights; use --df hlm")
    if df_method == "satterthwaite":
        analysis.satterthwaite = inference.satterthwaite_df(stats, unit, result)
    if df_method == "hlm6":
        analysis.fixed.df = inference.hlm6_fixed_df(design)
        analysis.df_rule = "hlm6"
    return analysis


def check_residual_variation(stats, spec: ModelSpec) -> None:
    """σ² is not estimable when the fixed effects reproduce the outcome exactly (a constant outcome
    in an intercept-only model, or y an exact linear function of the predictors)."""
    beta = np.linalg.lstsq(stats.XX, stats.Xy, rcond=None)[0] if stats.p else np.zeros(0)
    rss = stats.yy - float(beta @ stats.Xy) if stats.p else stats.yy
    if not rss > 1e-12 * max(stats.yy, 1e-300) or stats.yy == 0:
        raise ModelError(f"{spec.outcome} is reproduced exactly by the fixed effects (no residual variation), so "
                         "the level-1 variance cannot be estimated; check that the outcome is not constant or a "
                         "copy of a predictor")


def check_within_unit_variation(stats, spec: ModelSpec) -> None:
    """σ² = 0 and a likelihood without a maximum when, within every unit, the outcome is an exact
    linear function of the level-1 predictors (unitsolve.within_unit_rss): refused before fitting,
    as the search could only end at the noise limit."""
    from ..engine.unitsolve import exact_within, within_unit_rss

    if not stats.q:
        return
    ZB = np.concatenate([stats.ZX, stats.Zy[:, :, None]], axis=2)
    BB = np.block([[stats.XX, stats.Xy[:, None]], [stats.Xy[None, :], np.array([[stats.yy]])]])
    refusal = exact_within(within_unit_rss(stats.ZZ, ZB, BB, stats.w2), stats.yy, spec.outcome)
    if refusal:
        raise ModelError(refusal)


def check_estimable(design: design_stage.Design) -> None:
    """Refuse, in one line, models whose variance components cannot be estimated from these data."""
    spec = design.spec
    J, N = design.n_units, design.n
    q = int(np.sum(design.random))
    if J < 2:
        raise ModelError(f"the data have {J} level-2 unit{'s' if J != 1 else ''} after deletion; a two-level model "
                         "needs at least 2 units to estimate a level-2 variance (use a one-level regression)")
    from .identifiability import check_units

    check_units(J, q)
    if N <= J * q:
        raise ModelError(f"{N} records for {J} units with {q} random effect{'s' if q != 1 else ''} each: the level-1 "
                         f"variance cannot be separated from the level-2 ones (lme4 refuses this too); "
                         "remove random effects or use data with more records per unit")
    outcome = spec.outcome.lower()
    for t in spec.level1:
        if t.name.lower() == outcome:
            raise ModelError(f"{spec.outcome} is the outcome and also a level-1 predictor; remove it from the right-hand side")
    for q_, eq in enumerate(spec.equations):
        for t in (eq.predictors if eq is not None else ()):
            if t.unit_mean and t.name.lower() == outcome:
                raise ModelError(f"mean({t.name}) in the equation for b{q_} is the unit mean of the outcome, which makes the "
                                 "model circular; use a level-2 variable measured apart from the outcome")


def boundary_notes(result: FitResult, spec: ModelSpec) -> list[str]:
    """Plain-words notes when τ is singular at the certified optimum: judged on the standardised
    scale the certificate used (certificate.RANK_TOL), so they do not depend on the data's units."""
    cert = result.certificate
    if cert.rank == cert.q:
        return []
    names = [idx[0] for idx, _ in spec.random(2)]
    G = cert.G
    d = np.diag(G)
    tol = rank_tolerance(np.linalg.eigvalsh(G))
    notes = []
    for k, q in enumerate(names):
        if d[k] <= tol:
            notes.append(f"boundary fit: the variance of u{q} is estimated as zero")
    for a in range(len(names)):
        for b in range(a):
            if d[a] > tol and d[b] > tol:
                sub = G[np.ix_([b, a], [b, a])]
                if np.linalg.eigvalsh(sub)[0] <= tol:
                    corr = result.tau[a, b] / np.sqrt(result.tau[a, a] * result.tau[b, b])
                    notes.append(f"boundary fit: the correlation of u{names[b]} and u{names[a]} is estimated as {corr:+.0f}")
    if not notes:
        notes.append("boundary fit: τ is singular (a combination of the random effects has zero variance)")
    return notes


def tests_of_gamma(hypotheses, gamma, cov, robust_cov, prior_deviance=None, prior_params=None,
                   deviance=None, n_params=None, robust_only: bool = False,
                   no_robust: str | None = None) -> dict:
    """Wald tests of linear hypotheses on γ (model-based and robust covariance), and the likelihood-ratio
    test of this fit's deviance against a prior model's: the entries 'hypothesis_tests' and
    'deviance_test' of the extras, shared by the linear and the HGLM analyses.
    robust_only (a pseudo-likelihood fit with sampling weights): the model-based covariance assumes the
    weights carry no information, so only the sandwich test is given (the model entry is null) and a
    likelihood-ratio test is refused (weights.NO_LIKELIHOOD_RATIO).
    no_robust (a fit with no sandwich covariance, e.g. HMLM's structured fit): why; the robust entry is null and
    the entry's 'covariance' says the test is model-based."""
    ex: dict = {}
    if robust_only and prior_deviance is not None:
        from ..data.weights import NO_LIKELIHOOD_RATIO

        raise ModelError(NO_LIKELIHOOD_RATIO)
    tests = []
    for h in hypotheses:
        C = np.array(h.rows, dtype=float)
        d = np.array(h.rhs, dtype=float) if h.rhs else np.zeros(C.shape[0])
        if C.shape[1] != gamma.size:
            raise ModelError(f"{h.label}: the contrast has {C.shape[1]} entries but the model has {gamma.size} γs")
        if np.linalg.matrix_rank(C) < C.shape[0]:
            raise ModelError(f"{h.label}: the restrictions are linearly dependent; drop the redundant ones")
        entry = {"label": h.label, "contrast": C.tolist(), "rhs": d.tolist()}
        for kind, V in (("model", cov), ("robust", robust_cov)):
            if (kind == "model" and robust_only) or (kind == "robust" and no_robust):
                entry[kind] = {"chi2": None, "df": None, "p": None}
                continue
            chi2, df, p = inference.wald_test(C, gamma, V, d)
            entry[kind] = {"chi2": chi2, "df": df, "p": p}
        if robust_only:
            entry["covariance"] = "robust (sandwich, clustered on level-2 units): sampling weights"
        elif no_robust:
            entry["covariance"] = f"model-based: {no_robust}"
        tests.append(entry)
    if tests:
        ex["hypothesis_tests"] = tests
    if prior_deviance is not None:
        if prior_params is None:
            raise ModelError("a prior deviance needs the prior model's number of parameters (--compare-params or df:)")
        if prior_params < n_params:
            chi2, df, p = inference.deviance_test(prior_deviance, prior_params, deviance, n_params)
        else:
            chi2, df, p = inference.deviance_test(deviance, n_params, prior_deviance, prior_params)
        ex["deviance_test"] = {"prior_deviance": prior_deviance, "prior_params": prior_params,
                               "chi2": chi2, "df": df, "p": p}
    return ex


def add_extras(analysis: Analysis, hypotheses=(), prior_deviance=None, prior_params=None,
               homogeneity: bool = False, full_output: bool = False, ols_units: int = 10) -> None:
    """The numbers researchers compute after the main tables; stored JSON-ready in analysis.extras."""
    a = analysis
    r, fx = a.result, a.fixed
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in a.stats.random]
    ex: dict = {}
    if rand_q == [0]:
        ex["icc"] = float(r.tau[0, 0] / (r.tau[0, 0] + r.sigma2))
    ranges = []
    for k, q in enumerate(rand_q):
        at = [i for i, f in enumerate(a.design.fixed) if f.q == q and f.s == 0]
        g = float(fx.gamma[at[0]]) if at else 0.0  # 'bq = uq' has mean 0
        half = 1.96 * float(np.sqrt(max(r.tau[k, k], 0.0)))
        label = a.design.fixed[at[0]].label if at else None
        ranges.append({"coefficient": names[q], "gamma": label, "estimate": g, "low": g - half, "high": g + half,
                       "at_zero_level2_predictors": bool(a.spec.equation((q,)).predictors)})
    ex["plausible_ranges"] = ranges
    ex.update(tests_of_gamma(hypotheses, fx.gamma, fx.cov, fx.robust_cov, prior_deviance, prior_params,
                             r.deviance, r.n_params, robust_only=a.weights is not None))
    if homogeneity:
        H, df, p, used, left_out = inference.homogeneity_test(a.unit)
        ex["homogeneity"] = {"H": H, "df": df, "p": p, "units_used": used, "units_left_out": left_out}
    if full_output:
        ex["full_output"] = inference.least_squares(a.design, a.unit, a.stats, ols_units)
    a.extras.update(ex)

