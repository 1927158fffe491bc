"""The stages in order: archive + spec -> design -> sufficient statistics -> fit -> inference.

The CLI and scripts call `analyse`; each stage stays a pure function of typed data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import design as design_stage
from . import inference
from .archive import Archive
from .equations import ModelSpec
from .errors import ModelError
from .estimation import FitResult, fit
from .sufficient import ModelStats, UnitStats, model_stats, unit_cross_products


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


def analyse(spec: ModelSpec, archive: Archive, df_method: str = "hlm") -> Analysis:
    design = design_stage.make_design(spec, archive)
    unit = unit_cross_products(design.L, design.y, design.offsets)
    stats = model_stats(unit, design.block_design(), design.random)
    design_stage.check_collinearity(design, stats.XX)
    if design.n <= stats.p + 1:
        raise ModelError(f"only {design.n} records for {stats.p} fixed effects; the model needs more data")
    result = fit(stats, spec.method, max_iterations=spec.options.max_iterations)
    result.boundary = boundary_notes(result.tau, spec)
    fixed = inference.fixed_effects(design, unit, stats, result)
    ols = inference.unit_ols(design, unit, stats, result)
    variance = inference.variance_tests(design, ols, result.tau, stats)
    analysis = Analysis(spec, design, unit, stats, result, fixed, ols, variance)
    if result.method == "ML":
        analysis.se_sigma2, analysis.se_tau = inference.variance_standard_errors(stats, result)
    if df_method == "satterthwaite":
        analysis.satterthwaite = inference.satterthwaite_df(stats, unit, result)
    return analysis


def boundary_notes(tau: np.ndarray, spec: ModelSpec) -> list[str]:
    """Plain-words notes when T is singular at the optimum."""
    names = [n for n, r in zip(range(len(spec.level2)), spec.random) if r]
    notes = []
    d = np.diag(tau)
    scale = max(float(np.max(np.abs(d))), 1e-300)
    for k, q in enumerate(names):
        if d[k] <= 1e-8 * scale:
            notes.append(f"boundary fit: the variance of u{q} is estimated as zero")
    for a in range(len(names)):
        for b in range(a):
            if d[a] > 1e-8 * scale and d[b] > 1e-8 * scale:
                corr = tau[a, b] / np.sqrt(d[a] * d[b])
                if abs(corr) > 1 - 1e-6:
                    notes.append(f"boundary fit: the correlation of u{names[b]} and u{names[a]} is estimated as {corr:+.0f}")
    if not notes and len(names) > 1:
        eig = np.linalg.eigvalsh(tau)
        if eig[0] <= 1e-8 * eig[-1]:
            notes.append("boundary fit: τ is singular (a combination of the random effects has zero variance)")
    return notes


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
        g = float(fx.gamma[[i for i, f in enumerate(a.design.fixed) if f.q == q and f.s == 0][0]])
        half = 1.96 * float(np.sqrt(max(r.tau[k, k], 0.0)))
        ranges.append({"coefficient": names[q], "gamma": g, "low": g - half, "high": g + half,
                       "at_zero_level2_predictors": bool(a.spec.level2[q].predictors)})
    ex["plausible_ranges"] = ranges
    tests = []
    for h in hypotheses:
        C = np.array(h.rows, dtype=float)
        d = np.array(h.rhs, dtype=float) if h.rhs else np.zeros(C.shape[0])
        if C.shape[1] != fx.gamma.size:
            raise ModelError(f"{h.label}: the contrast has {C.shape[1]} entries but the model has {fx.gamma.size} γs")
        if np.linalg.matrix_rank(C) < C.shape[0]:
            raise ModelError(f"{h.label}: the restrictions are linearly dependent; drop the redundant ones")
        entry = {"label": h.label, "contrast": C.tolist(), "rhs": d.tolist()}
        for kind, cov in (("model", fx.cov), ("robust", fx.robust_cov)):
            chi2, df, p = inference.wald_test(C, fx.gamma, cov, d)
            entry[kind] = {"chi2": chi2, "df": df, "p": p}
        tests.append(entry)
    if tests:
        ex["hypothesis_tests"] = tests
    if prior_deviance is not None:
        if prior_params is None:
            raise ModelError("a prior deviance needs the prior model's number of parameters (--compare-params or df:)")
        if prior_params < r.n_params:
            chi2, df, p = inference.deviance_test(prior_deviance, prior_params, r.deviance, r.n_params)
        else:
            chi2, df, p = inference.deviance_test(r.deviance, r.n_params, prior_deviance, prior_params)
        ex["deviance_test"] = {"prior_deviance": prior_deviance, "prior_params": prior_params,
                               "chi2": chi2, "df": df, "p": p}
    if homogeneity:
        H, df, p, used = inference.homogeneity_test(a.unit)
        ex["homogeneity"] = {"H": H, "df": df, "p": p, "units_used": used}
    if full_output:
        ex["full_output"] = inference.least_squares(a.design, a.unit, a.stats, ols_units)
    a.extras.update(ex)

