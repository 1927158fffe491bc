"""A multinomial outcome's HLM 7-style HGLM text and JSON document (report_hglm.py hands these fits here).

Printed parametrisation (HLM 7's, Raudenbush & Bryk 2002 §10.6; analysis/multinomial_run.py): categories
1..M, the last the reference, log[φ_m/φ_M] = η_m for m = 1..M−1, each with its own γ and random effects; τ
over the random effects of all the logits. Each fixed effect is printed once per logit ("Category m"),
with its odds ratio exp(γ) (the odds of category m against the reference) and confidence interval.
"""

from __future__ import annotations

import math

import numpy as np
from ..engine.special_functions import special

from ..analysis import inference
from ..analysis.hglm_run import information_criteria
from ..version import __version__
from .report import (coef_label, data_hash, extras_text, hlm_name, hlm_p, model_record, printable, problem_lines,
                     text_table)
from .report_hglm import (WEIGHTED_COVARIANCE, estimation_text, hglm_model_summary, pql_status, weighted_se_line,
                          weighting_header)
from .terms import with_terms

CONVENTION = ("HLM 7: log[P(Y = m | u)/P(Y = M | u)] = η_m = x'γ_m + z'u_m, m = 1..M−1, the last category M the "
              "reference; τ covers the random effects of all the logits, in category-major order")


R_NOTE = "none: lme4 has no multinomial family, and no R package at hand fits a mixed multinomial logit by ML"


def is_multinomial(a) -> bool:
    return getattr(a.spec.options, "family", None) == "multinomial"


def _cat(c) -> str:
    return f"{c:g}"


def distribution_line(a) -> str:
    cats = ", ".join(_cat(c) for c in a.categories)
    return (f" Distribution at Level-1: multinomial, {a.categories.size} categories ({cats}); reference category "
            f"{_cat(a.categories[-1])}")


def _labels(a, sym) -> list[str]:
    """τ's rows: each random coefficient of each logit, 'INTRCPT1,β0(1)'."""
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(a.design.random)]
    return [f"{hlm_name(names[q])},{sym.beta}{q}({_cat(c)})" for c in a.categories[:-1] for q in rand_q]


def _fixed_rows(a, robust: bool):
    """(category, fixed term, k, estimate, se, t, df, p) per γ, category-major."""
    c = a.robust_cov if robust else a.cov
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(np.diag(c))
        t = a.gamma / se
    p = inference.two_sided_p(t, a.df)
    pf = len(a.design.fixed)
    for k in range(a.gamma.size):
        yield a.categories[k // pf], a.design.fixed[k % pf], k, a.gamma[k], se[k], t[k], a.df[k], p[k]


def multinomial_text(a, meta: dict, sym) -> str:
    """HLM 7's printed HGLM results, with τ over all logits and the fixed effects per category."""
    out = _header_lines(a, meta, sym) + _tau_lines(a, sym)
    for robust in (False, True):
        out += _fixed_lines(a, sym, robust)
    out += _variance_lines(a, sym)
    out += extras_text(a.extras, sym)
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


def _header_lines(a, meta: dict, sym) -> list[str]:
    """The warning when not certified, the run's specifications, the model, and how the fit ended."""
    d = a.design
    out: list[str] = []
    w = out.append
    if not a.converged:
        w("WARNING: " + ("PQL did NOT converge; the numbers below are from its last iteration." if a.pql is not None
                         else "the optimum is NOT certified; the numbers below may not be at the optimum."))
        w("")
    w(f"hlmcli {__version__}: hierarchical generalized linear models, two levels (HLM2)")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    w("")
    w("Specifications for this nonlinear HLM2 run")
    w("")
    out += problem_lines(meta, d)
    if a.pql is not None:
        w(f" The maximum number of micro iterations = {a.spec.options.microit}")
        w(f" The maximum number of macro iterations = {a.spec.options.macroit}")
    w("")
    w(f" Method of estimation: {estimation_text(a.spec.options)}")
    w(distribution_line(a))
    w("")
    w(f" The outcome variable is  {hlm_name(a.spec.outcome)}")
    w("")
    out += hglm_model_summary(a.spec, sym)
    if d.n_deleted:
        w("")
        w(f"Run-time deletion has reduced the number of level-1 records to {d.n} ({d.n_deleted} deleted)")
    out += weighting_header(a)
    w("")
    if a.pql is not None:  # PQL (engine/categorical_pql.py): its claim only when the fixed-point check passed
        w(f"Final Results - Iteration {a.pql.macro_iterations} (macro iterations)"
          + ("" if a.converged else "  NOT CONVERGED"))
        w("")
        w(pql_status(a.pql))
        out += [note for note in a.notes]
        return out
    w(f"Final Results - Iteration {a.ml.iterations} (Laplace)")
    w("")
    if a.converged:
        from ..engine.certificate import stopping_line

        w(stopping_line("gamma and tau" if sym.ascii else f"γ and {sym.tau}"))
    else:
        w("NOT certified: " + a.ml.certificate.describe())
    w(f"Starts tried: {a.ml.starts} (the lowest local optimum is reported)")
    for note in a.notes:
        w(note)
    return out


def _tau_lines(a, sym) -> list[str]:
    """τ over the random effects of all the logits, and as correlations."""
    out: list[str] = []
    w = out.append
    labels = _labels(a, sym)
    lw = max(len(x) for x in labels)
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    w("")
    w(sym.tau)
    for k, lab in enumerate(labels):
        w(f"{lab:>{lw}} " + " ".join(f"{v:13.5f}" for v in a.tau[k]))
    w("")
    w(f"{sym.tau} (as correlations)")
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = a.tau / np.outer(sd, sd)
    for k, lab in enumerate(labels):
        w(f"{lab:>{lw}} " + " ".join(f"{v:7.3f}" for v in corr[k]))
    return out


def _fixed_lines(a, sym, robust: bool) -> list[str]:
    """The fixed effects of every logit (model-based or robust SEs), then their odds ratios."""
    d = a.design
    ref = _cat(a.categories[-1])
    out: list[str] = []
    w = out.append
    w("")
    w("Final estimation of fixed effects:")
    w("(Unit-specific model" + (" with robust standard errors)" if robust else ")"))
    out += weighted_se_line(a, robust)
    rows, ratio_rows = [], []
    last = (None, None)
    for cat, f, k, g, se, t, df, p in _fixed_rows(a, robust):
        if cat != last[0]:
            head = [f"Category {_cat(cat)} (log-odds against category {ref})"]
            rows.append(head)
            ratio_rows.append(head)
        if (cat, f.q) != last:
            rows.append([f" For {coef_label(d, f.q, sym)}"])
            ratio_rows.append(rows[-1])
            last = (cat, f.q)
        label = f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}"
        rows.append([label, f"{g:.6f}", f"{se:.6f}", f"{t:.3f}", f"{df:.0f}", hlm_p(p)])
        tq = special.stdtrit(df, 0.975)
        ratio_rows.append([label, f"{g:.6f}", f"{np.exp(g):.6f}",
                           f"({np.exp(g - tq * se):.3f},{np.exp(g + tq * se):.3f})"])
    out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                      rows, [30, 12, 14, 9, 12, 8])
    w("")
    out += text_table(["Fixed Effect", "Coefficient", "Odds Ratio", "Confidence Interval"], ratio_rows,
                      [30, 12, 16, 22])
    return out


def _variance_lines(a, sym) -> list[str]:
    """The variance components of every logit (no χ² tests), and the deviance."""
    out: list[str] = []
    w = out.append
    labels = _labels(a, sym)
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    w("")
    w("Final estimation of variance components")
    vrows = [[lab.replace(f",{sym.beta}", f", {sym.u}"), f"{sd[k]:.5f}", f"{a.tau[k, k]:.5f}"]
             for k, lab in enumerate(labels)]
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component"], vrows, [26, 18, 18])
    w("(no chi-square tests or reliabilities: HLM's come from a scalar working model per record, and a "
      "multinomial outcome has M - 1 correlated ones)")
    w("")
    if a.ml is None:
        w("Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test;")
        w("use --estimation laplace for a deviance.")
        return out
    weighted = getattr(a, "weights", None) is not None
    w("Statistics for the current model")
    label = "Pseudo-deviance" if weighted else "Deviance"
    w(f" {label:<31}= {a.ml.deviance:.6f}")
    w(f" Number of estimated parameters = {a.ml.n_params}")
    aic, bic = information_criteria(a)
    w(f" AIC = {aic:.6f}, BIC = {bic:.6f} (every fixed effect and variance parameter counted)")
    if weighted:
        w(" (with sampling weights these are pseudo-likelihood quantities: not for likelihood-ratio tests)")
    what = "weighted pseudo-log-likelihood" if weighted else "full log-likelihood"
    w(f" (-2 x the {what}, every constant included)" if sym.ascii else f" (−2 × the {what}, every constant included)")
    return out


def multinomial_json(a, meta: dict) -> dict:
    """The HGLM JSON document (schema 2) of a multinomial fit: one fixed-effect row per logit and γ (with its
    `category`), τ over all the logits' random effects, the categories and the reference."""
    d, opts = a.design, a.spec.options
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = a.tau / np.outer(sd, sd)
    fixed = []
    robust = list(_fixed_rows(a, True))
    for (cat, f, k, g, se, t, df, p), (_, _, _, _, rse, rt, _, rp) in zip(_fixed_rows(a, False), robust):
        term = a.spec.fixed_predictor((f.q, f.s))
        tq = special.stdtrit(df, 0.975)
        fixed.append({"category": float(cat), "coefficient": f.coefficient, "predictor": f.predictor,
                      "gamma": f.label, "centering": term.centering if term else None,
                      "estimate": float(g), "se": float(se), "t": float(t), "df": float(df), "p": float(p),
                      "robust_se": float(rse), "robust_t": float(rt), "robust_p": float(rp),
                      "odds_ratio": float(np.exp(g)), "ci_low": float(np.exp(g - tq * se)),
                      "ci_high": float(np.exp(g + tq * se)), "robust_ci_low": float(np.exp(g - tq * rse)),
                      "robust_ci_high": float(np.exp(g + tq * rse))})
    cats = a.categories[:-1]
    random = [f"{names[q]}({_cat(c)})" for c in cats for q in rand_q]
    comps = [{"effect": random[k], "label": f"u{q}({_cat(c)})", "category": float(c), "sd": float(sd[k]),
              "variance": float(a.tau[k, k]), "df": None, "chi2": None, "p": None}
             for k, (c, q) in enumerate((c, q) for c in cats for q in rand_q)]
    aic, bic = information_criteria(a) if a.ml is not None else (None, None)
    ml = a.ml
    out = {
        "schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
        "data_source": meta.get("data_source"), "outcome": a.spec.outcome,
        "family": "multinomial", "link": "logit", "estimation": a.estimation,
        "quadrature_points": 1 if ml is not None else None, "method": "ML" if ml is not None else a.spec.method,
        "trials": None, "exposure": None, "overdispersion": False,
        "n_level1": d.n, "n_level2": d.n_units, "n_deleted": d.n_deleted, "units_deleted": d.units_deleted,
        "converged": a.converged, "iterations": ml.iterations if ml is not None else a.pql.macro_iterations,
        "df_method": "hlm",
        "model": model_record(a.spec, meta), "data_hash": data_hash(d),
        "categories": [float(c) for c in a.categories], "reference_category": float(a.categories[-1]),
        "parametrisation": CONVENTION,
        "random_coefficients": random,
        "tau": a.tau.tolist(), "se_tau": None, "se_sigma2": None, "tau_correlation": corr.tolist(),
        "units_with_sufficient_data": int(d.n_units), "reliability": {},
        "variance_tests": "none: HLM's chi-square tests and reliabilities come from a scalar working model per record",
        "fixed_effects": fixed,
        "gamma_covariance": a.cov.tolist(), "gamma_robust_covariance": a.robust_cov.tolist(),
        "variance_components": comps, "sigma2": None,
        "deviance": ml.deviance if ml is not None else None,
        "deviance_note": None if ml is not None else "PQL maximises a quasi-likelihood: there is no deviance to compare "
                                                     "models with",
        "n_params": ml.n_params if ml is not None else None, "loglik": -ml.deviance / 2 if ml is not None else None,
        "aic": aic, "bic": bic, "start": "glm" if ml is not None else None, "loglik_constant": 0.0,
        "lme4_formula": R_NOTE, "r_call": R_NOTE,
        "centering_means": d.centering_means,
        "certificate": ml.certificate.to_json() if ml is not None else None,
        "tau_structure": "diagonal" if opts.tau == "diagonal" else "unstructured",
        "boundary": bool(a.notes), "boundary_notes": list(a.notes),
    }
    if ml is not None:
        out["starts"] = ml.starts
    else:  # PQL: its iterations and the fixed-point check, as report_hglm's PQL keys
        out["macro_iterations"], out["micro_iterations"] = a.pql.macro_iterations, a.pql.micro_iterations
        out["fixed_point"] = (a.pql.check.to_json() if a.pql.check is not None
                              else {"checked": False, "passed": False, "failed": list(a.pql.failed)})
    if getattr(a, "weights", None) is not None:  # the pseudo-likelihood's weights (engine/hglm_weights.py)
        out["weights"] = a.weights.to_json()
        out["covariance_note"] = WEIGHTED_COVARIANCE
    for key in ("hypothesis_tests", "deviance_test"):
        if key in a.extras:
            out[key] = a.extras[key]
    return with_terms(out)  # terms named per logit: '1:x' (terms.fixed_names)
