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
    result = fit(stats, spec.method, max_iterations=max(spec.options.max_iterations, 1000))
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
