"""V-known models (HLM 7's V-known; meta-analysis, two-stage models): each record's level-1 variance is
known, Var(r_ij) = V_ij (an estimate's sampling variance), and only τ and γ are estimated.

Dividing record ij by √V_ij gives y_ij/√V_ij = (L_ij/√V_ij)B_jγ + (Z_ij/√V_ij)u_j + e_ij with
Var(e_ij) = 1: the two-level model of the one engine on scaled records, with σ² held at 1 (the
profiled-deviance search, the certificate, the GLS and the empirical Bayes estimates unchanged; τ and
the coefficients keep their scale, as the scaling is of the rows). The Jacobian of the scaling puts
Σ log V_ij back into the deviance, which is then −2 log L of the data as given:
    ML:   Σ_j log|V_j + Z_jτZ_j'| + e'V⁻¹e + N log 2π,
    REML: the same + log|X'V⁻¹X| − p log 2π   (X'V⁻¹X is unchanged by the scaling).
metafor's rma prints the REML log-likelihood with ½ log|X'X| added (its REMLf); the report says so.

With one record per unit (a meta-analysis: the unit's estimate d_j and its variance V_j) a unit's
OLS estimate is d_j itself with variance V_j, so HLM's χ² of the random effects and the reliabilities
are those of the known variances (a unit needs n_j ≥ k records, not n_j > k, as σ² is known).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..data import design as design_stage
from ..engine.sufficient import unit_cross_products
from ..errors import DataError, ModelError
from ..io.archive import unknown_column
from . import inference
from .pipeline import Analysis, analyse_stats

OPTION = "--known-variance"


def known_variances(archive, design, column: str) -> np.ndarray:
    """V of each record the design kept: a level-1 column, or a level-2 one given to each record of its
    unit (one record per unit). Refused in one line when missing, not positive or not a variable."""
    names1, names2 = list(archive.level1_names), list(archive.level2_names)
    if column in names1:
        v = archive.level1_column(column)
        v = v if design.record_positions is None else v[design.record_positions]
    elif column in names2:
        v = np.repeat(archive.level2_column(column)[design.unit_positions], design.sizes)
    else:
        raise unknown_column(archive, column, DataError(
            f"{OPTION} {column}: no such variable in the level-1 or level-2 file; the variables are "
            f"{', '.join(names1 + [n for n in names2 if n not in names1])}"))
    v = np.asarray(v, dtype=float)
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:
        raise DataError(f"{OPTION} {column}: {bad.size} of the records used have no value of {column}; drop them "
                        "(e.g. mdm build --missing now) or give each a known variance")
    low = np.flatnonzero(v <= 0)
    if low.size:
        raise DataError(f"{OPTION} {column}: {low.size} value(s) are zero or negative (the first {v[low[0]]:g}); a "
                        "known sampling variance must be positive")
    return v


def analyse_known_variance(spec, archive, column: str, df_method: str = "hlm") -> Analysis:
    """The certified V-known fit: τ and γ by REML or ML, σ² fixed at 1 on the records scaled by √V."""
    design = design_stage.make_design(spec, archive)
    J = design.n_units
    if J < 2:
        raise ModelError(f"{OPTION}: {J} level-2 unit; τ needs at least 2")
    v = known_variances(archive, design, column)
    scale = 1.0 / np.sqrt(v)
    L = np.asfortranarray(design.L * scale[:, None])
    unit = unit_cross_products(L, design.y * scale, design.offsets, center_y=False)
    a = analyse_stats(design, unit, df_method, None, centred=None, sigma2=1.0)
    a.result.deviance = float(a.result.deviance + np.log(v).sum())
    # a unit's OLS needs as many records as random coefficients (σ² is known): n_j ≥ k, so count n_j + 1
    # where unit_ols asks n_j > k
    counted = replace(unit, records=unit.count + 1.0)
    a.ols = inference.unit_ols(design, counted, a.stats, a.result)
    a.variance = inference.variance_tests(design, a.ols, a.result.tau, a.stats)
    if a.result.method == "ML":
        a.se_sigma2, a.se_tau = inference.variance_standard_errors(a.stats, a.result, sigma2_known=True)
    record = {"column": column, "records": int(v.size), "sum_log_v": float(np.log(v).sum())}
    if a.result.method == "REML":  # metafor's REML log-likelihood adds ½ log|X'X| (its REMLf)
        X = design.fixed_matrix()
        record["metafor_reml_loglik"] = float(-a.result.deviance / 2 + 0.5 * np.linalg.slogdet(X.T @ X)[1])
    a.extras["known_variance"] = record
    return a
