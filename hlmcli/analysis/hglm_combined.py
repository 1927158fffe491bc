"""Plausible values and multiply imputed data sets for two-level HGLMs (PQL, Laplace, AGQ): one complete-
data fit per outcome column or data set (the family's analysis: hglm_run.analyse_hglm, or the ordinal,
negative binomial and multinomial runs, with the sampling weights when given), combined by plausible.py's
rules exactly as the linear fits are: Rubin's rules on γ with the model-based and the robust covariances,
Barnard-Rubin d.f. from HLM's approx. d.f., D1 for --test, and τ, the reliabilities (and σ² with
over-dispersion, the deviance of Laplace and AGQ) averaged over the fits.

A family's own parameters are combined by the same rules: the ordinal thresholds δ(m) (complete-data d.f.
γ00's, as each fit's table gives them), the NB dispersion on the scale it is estimated and its SE is
computed, log θ (its combined θ is exp of that), and the multinomial's γ of every logit (one row each,
with its category). Pure functions of archives, specs and fits: no reading or printing.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from ..errors import ModelError
from .plausible import RULE, combined_tests, rubin


def family_analysis(spec):
    """The analysis of the spec's family: (spec, archive, level1_text, weights) -> HGLMAnalysis."""
    family = spec.options.family
    if family == "ordinal":
        from .ordinal_run import analyse_ordinal

        return analyse_ordinal
    if family == "negbinomial":
        from .negbin_run import analyse_negbin

        return analyse_negbin
    if family == "multinomial":
        from .multinomial_run import analyse_multinomial

        return analyse_multinomial
    from .hglm_run import analyse_hglm

    return analyse_hglm


def analyse_hglm_plausible(spec, archive, outcomes: list[str], level1_text=None, weights=None) -> list:
    """One HGLMAnalysis per plausible value of the outcome, each on the same records (a plausible value
    missing on other records than the first is refused, as the linear path refuses it)."""
    analyse_hglm = family_analysis(spec)

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
    return family_analysis(spec)(spec, archive, level1_text, weights)


def as_linear_fields(a) -> SimpleNamespace:
    """The fields plausible.combined_tests reads (a.fixed.gamma, .cov, .robust_cov), from an HGLMAnalysis."""
    return SimpleNamespace(fixed=SimpleNamespace(gamma=a.gamma, cov=a.cov, robust_cov=a.robust_cov))


def combined_tests_hglm(analyses: list, hypotheses) -> list[dict]:
    """--test combined over the fits by D1 (plausible.combined_tests): robust only with sampling weights; a
    multinomial fit's hypotheses tested within each logit (multinomial_run.per_logit)."""
    if hasattr(analyses[0], "n_logits"):
        from .multinomial_run import per_logit

        hypotheses = per_logit(hypotheses, analyses[0].categories)
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
    pf = len(d.fixed)
    categories = getattr(a0, "categories", None) if hasattr(a0, "n_logits") else None
    tables = {}
    for kind, attr in (("model", "cov"), ("robust", "robust_cov")):
        r = rubin(est, np.array([getattr(a, attr) for a in analyses]), df)
        rows = []
        for k in range(est.shape[1]):  # a multinomial fit: every logit's γ in turn, with its category
            f = d.fixed[k % pf]
            row = {"coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
                   **_rubin_row(r, k), "df_complete": float(df[k]), ratio: float(np.exp(r["estimate"][k]))}
            if categories is not None:
                row["category"] = float(categories[k // pf])
            rows.append(row)
        tables[kind] = (rows, r["total_covariance"].tolist())
    names = a0.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    random = [names[q] for q in rand_q]
    if categories is not None:  # τ over every logit's random effects
        random = [f"{names[q]}({c:g})" for c in categories[:-1] for q in rand_q]
    reliability = {} if a0.variance is None else {
        names[q]: float(np.mean([a.variance.reliability[k] for a in analyses])) for k, q in enumerate(rand_q)}
    likelihood = a0.ml is not None
    sigma2 = [a.sigma2 for a in analyses]
    return {
        "m": len(analyses), "rule": RULE, "outcomes": labels or [a.spec.outcome for a in analyses],
        "fixed_effects": tables["model"][0], "fixed_effects_robust": tables["robust"][0],
        "gamma_covariance": tables["model"][1], "gamma_robust_covariance": tables["robust"][1],
        "sigma2": None if any(s is None for s in sigma2) else float(np.mean(sigma2)),
        "tau": np.mean([a.tau for a in analyses], axis=0).tolist(),
        "random_coefficients": random,
        "reliability": reliability,
        "own_parameters": _own_combined(analyses),
        "reference_category": None if categories is None else float(categories[-1]),
        "deviance": float(np.mean([a.ml.deviance for a in analyses])) if likelihood else None,
        "deviances": [float(a.ml.deviance) for a in analyses] if likelihood else [],
        "n_params": int(a0.ml.n_params) if likelihood else None,
        "method": a0.spec.method if a0.estimation == "pql" else "ML",
        "converged": all(bool(a.converged) for a in analyses),
    }


_RUBIN_KEYS = ("estimate", "se", "t", "df", "p", "within", "between", "total", "riv", "lambda", "fmi")


def _rubin_row(r: dict, k: int) -> dict:
    return {key: float(r[key][k]) for key in _RUBIN_KEYS}


def own_parameters(a):
    """(kind, names, estimates, model-based covariance, robust covariance) of a family's parameters beside
    γ, on the scale the fit estimates them and gives their covariances: the ordinal thresholds δ(m), the NB
    dispersion's log θ; None for the other families."""
    if hasattr(a, "delta"):
        return ("thresholds", [f"δ({m})" for m in range(2, 2 + a.delta.size)], np.asarray(a.delta),
                np.asarray(a.delta_cov), np.asarray(a.delta_robust_cov))
    if hasattr(a, "log_theta_se"):
        return ("dispersion", ["log θ"], np.array([np.log(a.theta)]), np.array([[a.log_theta_se ** 2]]),
                np.array([[a.log_theta_robust_se ** 2]]))
    return None


def _own_combined(analyses: list) -> dict | None:
    """Rubin's rules on the family's own parameters (own_parameters), complete-data d.f. γ00's (the
    thresholds' d.f. in each fit's table); the NB dispersion also as θ = exp(combined log θ)."""
    parts = [own_parameters(a) for a in analyses]
    if parts[0] is None:
        return None
    kind, names = parts[0][0], parts[0][1]
    est = np.array([p[2] for p in parts])
    dfcom = np.full(len(names), float(analyses[0].df[0]))
    out = {"kind": kind}
    for key, col in (("rows", 3), ("rows_robust", 4)):
        r = rubin(est, np.array([p[col] for p in parts]), dfcom)
        out[key] = [{"name": n, **_rubin_row(r, k), "df_complete": float(dfcom[k])} for k, n in enumerate(names)]
    if kind == "dispersion":
        out["theta"] = float(np.exp(out["rows"][0]["estimate"]))
    return out
