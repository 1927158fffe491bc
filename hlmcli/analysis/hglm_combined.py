"""Plausible values and multiply imputed data sets for two-level HGLMs (PQL, Laplace, AGQ): one complete-
data fit per outcome column or data set (hglm_run.analyse_hglm, with the sampling weights when given),
combined by plausible.py's rules exactly as the linear fits are: Rubin's rules on γ with the
model-based and the robust covariances, Barnard-Rubin d.f. from HLM's approx. d.f., D1 for --test, and
τ, the reliabilities (and σ² with over-dispersion, the deviance of Laplace and AGQ) averaged over the
fits. Pure functions of archives, specs and fits: no reading or printing.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from ..errors import ModelError
from .plausible import RULE, combined_tests, rubin


def analyse_hglm_plausible(spec, archive, outcomes: list[str], level1_text=None, weights=None) -> list:
    """One HGLMAnalysis per plausible value of the outcome, each on the same records (a plausible value
    missing on other records than the first is refused, as the linear path refuses it)."""
    from .hglm_run import analyse_hglm

    for o in outcomes:
        if any(t.name.lower() == o.lower() for t in spec.level1):
            raise ModelError(f"{o} is a plausible value of the outcome and also a level-1 predictor; remove it")
    first = np.isnan(archive.level1_column(outcomes[0]))
    for o in outcomes[1:]:
        if not np.array_equal(np.isnan(archive.level1_column(o)), first):
            raise ModelError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                             "plausible values must be complete on the same records")
    return [analyse_hglm(replace(spec, outcome=o), archive, level1_text, weights) for o in outcomes]


def analyse_hglm_one(spec, archive, level1_text=None, weights=None):
    """The fit of one imputed data set."""
    from .hglm_run import analyse_hglm

    return analyse_hglm(spec, archive, level1_text, weights)


def as_linear_fields(a) -> SimpleNamespace:
    """The fields plausible.combined_tests reads (a.fixed.gamma, .cov, .robust_cov), from an HGLMAnalysis."""
    return SimpleNamespace(fixed=SimpleNamespace(gamma=a.gamma, cov=a.cov, robust_cov=a.robust_cov))


def combined_tests_hglm(analyses: list, hypotheses) -> list[dict]:
    """--test combined over the fits by D1 (plausible.combined_tests): robust only with sampling weights."""
    return combined_tests([as_linear_fields(a) for a in analyses], hypotheses,
                          robust_only=analyses[0].weights is not None)


def combine_hglm(analyses: list, labels: list[str] | None = None) -> dict:
    """The combined results of M HGLM fits (JSON-ready), keyed as plausible.combine's: Rubin's tables
    (model-based and robust) with each γ's exp(estimate), τ, reliabilities, σ² (over-dispersion only,
    else None) and the deviance (Laplace and AGQ; None for PQL, which has none) averaged."""
    if len(analyses) < 2:
        raise ModelError("combining needs at least two fits")
    a0 = analyses[0]
    d = a0.design
    df = np.asarray(a0.df, dtype=float)
    est = np.array([a.gamma for a in analyses])
    ratio = a0.data.family.ratio_name
    tables = {}
    for kind, attr in (("model", "cov"), ("robust", "robust_cov")):
        r = rubin(est, np.array([getattr(a, attr) for a in analyses]), df)
        rows = [{"coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
                 **{key: float(r[key][k]) for key in ("estimate", "se", "t", "df", "p", "within", "between", "total",
                                                       "riv", "lambda", "fmi")},
                 "df_complete": float(df[k]), ratio: float(np.exp(r["estimate"][k]))}
                for k, f in enumerate(d.fixed)]
        tables[kind] = (rows, r["total_covariance"].tolist())
    names = a0.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    likelihood = a0.ml is not None
    sigma2 = [a.sigma2 for a in analyses]
    return {
        "m": len(analyses), "rule": RULE, "outcomes": labels or [a.spec.outcome for a in analyses],
        "fixed_effects": tables["model"][0], "fixed_effects_robust": tables["robust"][0],
        "gamma_covariance": tables["model"][1], "gamma_robust_covariance": tables["robust"][1],
        "sigma2": None if any(s is None for s in sigma2) else float(np.mean(sigma2)),
        "tau": np.mean([a.tau for a in analyses], axis=0).tolist(),
        "random_coefficients": [names[q] for q in rand_q],
        "reliability": {names[q]: float(np.mean([a.variance.reliability[k] for a in analyses]))
                        for k, q in enumerate(rand_q)},
        "deviance": float(np.mean([a.ml.deviance for a in analyses])) if likelihood else None,
        "deviances": [float(a.ml.deviance) for a in analyses] if likelihood else [],
        "n_params": int(a0.ml.n_params) if likelihood else None,
        "method": a0.spec.method if a0.estimation == "pql" else "ML",
        "converged": all(bool(a.converged) for a in analyses),
    }
