"""HLM 7's printed HGLM results and the HGLM JSON document (schema 2), from an analysis made by
analysis/hglm_run.py: the model with its link, the fit's status, the fixed effects with odds or event
rate ratios, the variance components, the deviance when there is one, and the same model in R."""

from __future__ import annotations

import math
import re

import numpy as np
from ..engine.special_functions import special

from ..analysis import inference
from ..analysis.hglm_run import HGLMAnalysis, information_criteria
from ..engine.hglm import PQLResult
from ..version import __version__
from ..spec import gamma_label
from .report import (coef_label, constraint_note, data_hash, extras_text, hlm_name, hlm_p, lme4_formula, model_record, model_summary,
                     printable, problem_lines, r_terms, random_label, tau_lines, text_table)
from .terms import with_terms
from . import report_negbin as negbin
from . import report_ordinal as ordinal


# ---------------------------------------------------------------- the model

def link_lines(spec, sym) -> list[str]:
    """HLM 7's level-1 block for the family (hglm-hlm3-weights.md §1)."""
    b, y = sym.beta, spec.outcome.upper()[:8]
    phi = "phi" if sym.ascii else "φ"
    lam = "lambda" if sym.ascii else "λ"
    eta = "eta" if sym.ascii else "η"
    fam = spec.options.family
    if fam == "ordinal":
        return ordinal.link_lines(spec, sym)
    if fam == "multinomial":  # the M − 1 logits against the last category (report_multinomial.py)
        return [f"    Prob[{y}ij = m|{b}j] = {phi}mij, m = 1, ..., M (M the reference category)",
                f"    log[{phi}mij/{phi}Mij] = {eta}mij, m = 1, ..., M - 1",
                f"    (each {eta}mij has the equations below, with its own {b}(m) and u(m))"]
    if fam == "bernoulli":
        top = [f"    Prob({y}ij=1|{b}j) = {phi}ij", f"    log[{phi}ij/(1 - {phi}ij)] = {eta}ij"]
    elif fam == "binomial":
        top = [f"    E({y}ij|{b}j) = mij*{phi}ij", f"    Var({y}ij|{b}j) = mij*{phi}ij(1 - {phi}ij)",
               f"    log[{phi}ij/(1 - {phi}ij)] = {eta}ij", f"    (mij = {spec.options.trials.upper()[:8]}, the number of trials)"]
    else:
        m = "mij*" if spec.options.exposure else ""
        top = [f"    E({y}ij|{b}j) = {m}{lam}ij", f"    log[{lam}ij] = {eta}ij"]
        if spec.options.exposure:
            top.append(f"    (mij = {spec.options.exposure.upper()[:8]}, the exposure; log mij is an offset)")
    return top


def hglm_model_summary(spec, sym) -> list[str]:
    lines = model_summary(spec, sym)
    out = []
    head = f"    {hlm_name(spec.outcome)}ij = "
    eta = "eta" if sym.ascii else "η"
    in_l1 = False
    for line in lines:
        if line == "Level-1 Model":
            in_l1 = True
        elif line == "Level-2 Model":
            in_l1 = False
        if in_l1 and line.startswith(head):
            out += link_lines(spec, sym)
            rhs = line[len(head):]
            out.append(f"    {eta}ij = " + re.sub(r"\s*\+\s*rij$", "", rhs))
            continue
        if line.startswith("     + ") and line.rstrip().endswith("rij"):
            line = re.sub(r"\s*\+\s*rij$", "", line)
            if line.strip() == "+":
                continue
        if line.startswith(head):
            line = f"    {eta}ij = " + line[len(head):]
        out.append(line)
    return out


def glmer_call(spec, id_name: str, nodes: int | None = None) -> str:
    if spec.options.family == "ordinal":
        return ordinal.clmm_call(spec, id_name, nodes)
    if spec.options.family == "negbinomial":
        return negbin.glmmtmb_call(spec, id_name, lme4_formula)
    formula, _ = lme4_formula(spec, id_name)
    opts = spec.options
    lhs, rhs = formula.split(" ~ ", 1)
    if opts.family == "binomial":
        lhs = f"cbind({lhs}, {opts.trials} - {lhs})"
    if opts.exposure:
        rhs = rhs.replace(" + (", f" + offset(log({opts.exposure})) + (", 1)
    nagq = {"pql": "", "laplace": ", nAGQ = 1", "agq": f", nAGQ = {nodes or opts.quadrature_points or 25}"}[opts.estimation]
    fam = "binomial" if opts.family in ("bernoulli", "binomial") else "poisson"
    return f"glmer({lhs} ~ {rhs}, family = {fam}{nagq})"


def glmmpql_call(spec, id_name: str) -> tuple[str, str | None]:
    """PQL's counterpart in R, MASS::glmmPQL (glmer is Laplace or AGQ), and a note when it is not this fit.

    glmmPQL runs nlme::lme on the working variate with method "ML" and a free residual scale, so it is
    full PQL with the level-1 scale estimated: hlmcli's --ml --overdispersion."""
    fixed, rand = r_terms(spec)
    opts = spec.options
    lhs = spec.outcome
    if opts.family == "binomial":
        lhs = f"cbind({lhs}, {opts.trials} - {lhs})"
    rhs = " + ".join(fixed + ([f"offset(log({opts.exposure}))"] if opts.exposure else []))
    if not rand:
        random = f"~ 1 | {id_name}"  # not reached: an HGLM has a random effect
    elif opts.tau == "diagonal":
        random = f"list({id_name} = pdDiag(~ {' + '.join(rand if '1' in rand else ['0'] + rand)}))"
    else:
        random = f"~ {' + '.join(rand if '1' in rand else ['0'] + rand)} | {id_name}"
    fam = "binomial" if opts.family in ("bernoulli", "binomial") else "poisson"
    call = f"MASS::glmmPQL({lhs} ~ {rhs}, random = {random}, family = {fam}, data = d)"
    give = (["--ml"] if spec.method == "REML" else []) + \
        (["--overdispersion"] if not opts.overdispersion and opts.family != "bernoulli" else [])
    note = None
    if give:
        note = f"glmmPQL is full PQL with a free level-1 scale: give {' '.join(give)} for its model"
    if opts.family == "bernoulli":
        note = (note + "; " if note else "") + "it estimates a level-1 scale for a 0/1 outcome too, which hlmcli holds at 1"
    return call, note


ORDINAL_PQL_R = "none: no R package fits an ordinal mixed model by PQL (ordinal::clmm fits it by ML: --estimation laplace)"


def r_call_lines(spec, id_name: str, nodes: int | None = None) -> list[str]:
    """The "same model in R" block: glmmPQL for PQL, glmer for Laplace and AGQ."""
    if spec.options.estimation == "pql" and spec.options.family == "ordinal":
        return ["The same model in R", f" {ORDINAL_PQL_R}"]
    if spec.options.estimation == "pql":
        call, note = glmmpql_call(spec, id_name)
        return ["The same model in R (MASS)", f" {call}"] + ([f"   {note}"] if note else [])
    package = {"ordinal": "ordinal", "negbinomial": "glmmTMB"}.get(spec.options.family, "lme4")
    note = (["   glmmTMB fits it by Laplace only (no adaptive quadrature)"]
            if package == "glmmTMB" and spec.options.estimation == "agq" else [])
    return [f"The same model in R ({package})", f" {glmer_call(spec, id_name, nodes)}"] + note


def pql_status(p: PQLResult) -> str:
    """The PQL claim, printed only when the fixed-point check passed."""
    if p.converged and p.check is not None:
        return "PQL converged to a fixed point (checked): " + p.check.describe()
    return "PQL is NOT at a checked fixed point: " + "; ".join(p.failed)


def estimation_text(opts, nodes: int | None = None) -> str:
    if opts.estimation == "pql":
        kind = "restricted" if opts.method == "REML" else "full"
        od = ", level-1 scale estimated (over-dispersion)" if opts.overdispersion else ", level-1 scale fixed at 1"
        return f"penalized quasi-likelihood ({kind} PQL{od})"
    if opts.estimation == "laplace":
        return "full maximum likelihood, Laplace approximation"
    if not opts.quadrature_points:
        if nodes is None:
            return ("full maximum likelihood, adaptive Gauss-Hermite quadrature, points per random effect chosen "
                    "adaptively (from 7, until the deviance at the optimum changes by at most 1e-6 relative)")
        return (f"full maximum likelihood, adaptive Gauss-Hermite quadrature with {nodes} points per random effect "
                "(chosen adaptively)")
    return f"full maximum likelihood, adaptive Gauss-Hermite quadrature with {opts.quadrature_points} points per random effect"


# ---------------------------------------------------------------- the tables and the JSON document

def fixed_json(a: HGLMAnalysis, gamma, cov, rcov, df) -> list[dict]:
    fam = a.data.family
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):  # a negative variance of an uncertified fit is NaN
        se = np.sqrt(np.diag(cov))
        rse = np.sqrt(np.diag(rcov)) if rcov is not None else np.full_like(se, np.nan)
        t, rt = gamma / se, gamma / rse
    p, rp = inference.two_sided_p(t, df), inference.two_sided_p(rt, df)
    for k, f in enumerate(a.design.fixed):
        term = a.spec.fixed_predictor((f.q, f.s))
        tq = special.stdtrit(df[k], 0.975)
        out.append({
            "coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
            "centering": term.centering if term else None,
            "estimate": float(gamma[k]), "se": float(se[k]), "t": float(t[k]), "df": float(df[k]), "p": float(p[k]),
            "robust_se": float(rse[k]), "robust_t": float(rt[k]), "robust_p": float(rp[k]),
            fam.ratio_name: float(np.exp(gamma[k])),
            "ci_low": float(np.exp(gamma[k] - tq * se[k])), "ci_high": float(np.exp(gamma[k] + tq * se[k])),
            "robust_ci_low": float(np.exp(gamma[k] - tq * rse[k])), "robust_ci_high": float(np.exp(gamma[k] + tq * rse[k])),
        })
    return out


def _pql_json(a: HGLMAnalysis) -> dict:
    """A PQL fit's own keys: its iterations, the fixed-point check, and the population-average model."""
    out = {"macro_iterations": a.pql.macro_iterations, "micro_iterations": a.pql.micro_iterations,
           "fixed_point": a.pql.check.to_json() if a.pql.check is not None else {"checked": False, "passed": False,
                                                                                 "failed": list(a.pql.failed)}}
    if a.pql.pa_gamma is not None:
        out["population_average"] = {
            "definition": "GEE with the linearised marginal working covariance σ²W⁻¹ + ZτZ', τ and σ² held at the "
                          "unit-specific PQL estimates (Raudenbush & Bryk 2002, ch. 10)",
            "iterations": a.pql.pa_iterations,
            "fixed_effects": fixed_json(a, a.pql.pa_gamma, a.pql.pa_cov, a.pql.pa_robust_cov, a.df)}
    elif a.pql.pa_failed:
        out["population_average"] = {"error": a.pql.pa_failed}
    return out


def _variance_components_json(a: HGLMAnalysis, names, rand_q, sd) -> list[dict]:
    """The variance components with their χ² tests, then level 1's when its scale is estimated (over-dispersion)."""
    vt = a.variance
    comps = [{"effect": names[q], "label": f"u{q}", "sd": float(sd[k]), "variance": float(a.tau[k, k]),
              "df": float(vt.df[k]), "chi2": float(vt.chi2[k]), "p": float(vt.p[k])} for k, q in enumerate(rand_q)]
    if a.sigma2 is not None:
        comps.append({"effect": "level-1", "label": "r", "sd": math.sqrt(a.sigma2), "variance": a.sigma2,
                      "df": None, "chi2": None, "p": None})
    return comps


def hglm_json(a: HGLMAnalysis, meta: dict) -> dict:
    """The HGLM JSON document (schema 2, hlmcli/schema/fit-2.json)."""
    d, opts = a.design, a.spec.options
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = a.tau / np.outer(sd, sd)
    vt = a.variance
    criteria = information_criteria(a) if a.ml else None
    comps = _variance_components_json(a, names, rand_q, sd)
    out = {
        "schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
        "data_source": meta.get("data_source"), "outcome": a.spec.outcome,
        "family": opts.family, "link": a.data.family.link, "estimation": a.estimation,
        "quadrature_points": a.nodes if a.estimation == "agq" else (1 if a.estimation == "laplace" else None),
        "method": a.spec.method if a.estimation == "pql" else "ML",
        "trials": opts.trials, "exposure": opts.exposure, "overdispersion": opts.overdispersion,
        "n_level1": d.n, "n_level2": d.n_units, "n_deleted": d.n_deleted, "units_deleted": d.units_deleted,
        "converged": a.converged, "iterations": a.pql.macro_iterations if a.pql is not None else a.ml.iterations,
        "df_method": "hlm", "model": model_record(a.spec, meta), "data_hash": data_hash(d),
        "random_coefficients": [names[q] for q in rand_q],
        "tau": a.tau.tolist(), "se_tau": None, "se_sigma2": None, "tau_correlation": corr.tolist(),
        "units_with_sufficient_data": vt.n_sufficient,
        "reliability": {names[q]: float(vt.reliability[k]) for k, q in enumerate(rand_q)},
        "fixed_effects": fixed_json(a, a.gamma, a.cov, a.robust_cov, a.df),
        "gamma_covariance": a.cov.tolist(), "gamma_robust_covariance": a.robust_cov.tolist(),
        "variance_components": comps,
        "sigma2": a.sigma2,
        "deviance": a.ml.deviance if a.ml else None,
        "deviance_note": None if a.ml else "PQL maximises a quasi-likelihood: there is no deviance to compare models with",
        "n_params": a.ml.n_params if a.ml else None,
        "loglik": -a.ml.deviance / 2 if a.ml else None,
        "aic": criteria[0] if a.ml else None, "bic": criteria[1] if a.ml else None,
        "start": "pql" if a.ml else None,
        "loglik_constant": a.data.const,
        "lme4_formula": glmer_call(a.spec, meta.get("id_name", "ID"), a.nodes or None),
        "r_call": (ORDINAL_PQL_R if a.estimation == "pql" and ordinal.is_ordinal(a)
                   else glmmpql_call(a.spec, meta.get("id_name", "ID"))[0] if a.estimation == "pql"
                   else glmer_call(a.spec, meta.get("id_name", "ID"), a.nodes or None)),
        "centering_means": d.centering_means,
    }
    if a.pql is not None:
        out.update(_pql_json(a))
    if getattr(a, "weights", None) is not None:  # the pseudo-likelihood's weights (engine/hglm_weights.py)
        out["weights"] = a.weights.to_json()
        out["covariance_note"] = WEIGHTED_COVARIANCE
    out["certificate"] = a.ml.certificate.to_json() if a.ml is not None else None
    if a.ml is not None:
        if a.ml.quadrature is not None:
            out["quadrature_check"] = a.ml.quadrature.to_json()
        out["starts"] = a.ml.starts  # searches run (ml_fit): the lowest optimum is reported
    out["tau_structure"] = "diagonal" if opts.tau == "diagonal" else "unstructured"
    out["boundary"] = bool(a.notes)  # as the linear engine's JSON: a flag and its notes
    out["boundary_notes"] = list(a.notes)
    out["separation"] = {"mode": opts.separation, "held": list(a.warnings)}
    for key in ("hypothesis_tests", "deviance_test", "constraints", "constraint_test"):
        if key in a.extras:
            out[key] = a.extras[key]
    if ordinal.is_ordinal(a):
        out = ordinal.add_json(a, out)
    if negbin.is_negbin(a):
        out = negbin.add_json(a, out)
    return with_terms(out)


def hglm_text(a: HGLMAnalysis, meta: dict, sym) -> str:
    """HLM 7's printed HGLM results.

    Layout sources. Verified against real HLM 7 output (HLM2.EXE 7.01, linear model,
    http://www.edmeasurement.net/8268/mr_uncond.html and .../mr-cond3.html): the "Final Results -
    Iteration N" header, τ and τ (as correlations) with "INTRCPT1,β0" labels, the reliability table,
    "Final estimation of fixed effects" with "For INTRCPT1, β0" group rows and the columns Fixed
    Effect / Coefficient / Standard error / t-ratio / Approx. d.f. / p-value, its "(with robust
    standard errors)" twin, and "Final estimation of variance components" (Random Effect / Standard
    Deviation / Variance Component / d.f. / χ2 / p-value). The HGLM level-1 block (Prob(Y=1|β) = φ,
    log[φ/(1 - φ)] = η, η = β0 + ...) is as in HLM's output quoted in N. Sarkisian's SC708 class
    notes (https://docslib.org/doc/13693439/class-notes-non-continuous-dependent-variables).
    Not verified against printed HLM 7 HGLM output (none could be found): the HGLM table titles
    "(Unit-specific model)", "(Unit-specific model with robust standard errors)", "Results for
    Population-average Model" / "(Population-average model)", and the Odds Ratio (Event Rate Ratio)
    table with its Confidence Interval column; these follow the HLM 7 manual's description
    (shared/docs/hglm-hlm3-weights.md, marked [M] there) in the verified linear table format.
    """
    d = a.design
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    out: list[str] = []
    w = out.append
    out += _hglm_header_lines(a, meta, sym)
    out += _hglm_status_lines(a, sym)
    for note in a.notes + a.warnings:
        w(note)
    if a.sigma2 is not None:
        w("")
        w(f" {sym.sigma2} = {a.sigma2:12.5f}")
    out += tau_lines(sym, names, rand_q, a.tau, None, a.variance.reliability)
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    out += _fixed_effect_lines(a, sym, "Unit-specific model", a.gamma, a.cov, a.robust_cov)
    w("")
    w("Final estimation of variance components")
    rows = [[random_label(d, q, sym), f"{sd[k]:.5f}", f"{a.tau[k, k]:.5f}", f"{a.variance.df[k]:.0f}",
             f"{a.variance.chi2[k]:.5f}", hlm_p(a.variance.p[k])] for k, q in enumerate(rand_q)]
    if a.sigma2 is not None:
        rows.append(["level-1, r", f"{math.sqrt(a.sigma2):.5f}", f"{a.sigma2:.5f}", "", "", ""])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"],
                      rows, [26, 18, 18, 6, 12, 8])
    if negbin.is_negbin(a):
        out += negbin.theta_lines(a, sym)
    w("")
    out += _hglm_deviance_lines(a, sym)
    if "constraints" in a.extras:
        out += constraint_note(a.extras["constraints"], sym, r_call=True)[1:]
    out += extras_text(a.extras, sym)
    if a.pql is not None and a.pql.pa_failed:
        w("")
        w(f"Results for Population-average Model: none; {a.pql.pa_failed}")
    if a.pql is not None and a.pql.pa_gamma is not None:
        w("")
        w("Results for Population-average Model")
        out += _fixed_effect_lines(a, sym, "Population-average model", a.pql.pa_gamma, a.pql.pa_cov,
                                   a.pql.pa_robust_cov)
    w("")
    for line in r_call_lines(a.spec, meta.get("id_name", "ID"), a.nodes or None):
        w(line)
    if getattr(a, "weights", None) is not None:
        if ordinal.is_ordinal(a) or negbin.is_negbin(a):
            # both multiply each record's log-likelihood by its weight, whole or not
            tool = "clmm" if ordinal.is_ordinal(a) else "glmmTMB"
            w(f"   with sampling weights: {tool}'s weights= equal --weight1 used as given (--normalize none);")
            w(f"   {tool} has no level-2 weights")
        else:
            w("   with sampling weights: glmer's weights= equal --weight1 only for whole-number weights used as given")
            w("   (--normalize none; glmer rounds others in its likelihood); glmer has no level-2 weights")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


# With sampling weights the Hessian of the pseudo-log-likelihood is not the information of the sample
# (the weights inflate it), so the "model-based" covariance is labelled as what it is.
WEIGHTED_COVARIANCE = ("sampling weights: the model-based covariance is the inverse Hessian of the pseudo-log-likelihood "
                       "(it ignores the weights' sampling information); the robust one, the sandwich of the weighted "
                       "unit scores clustered on level-2 units (J/(J-1)), is the one to report")


def _hglm_header_lines(a: HGLMAnalysis, meta: dict, sym) -> list[str]:
    """The warning when not converged, the run's specifications and the model, as HLM 7 prints them."""
    opts = a.spec.options
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
        w(f" The maximum number of micro iterations = {opts.microit}")
        w(f" The maximum number of macro iterations = {opts.macroit}")
    w("")
    w(f" Method of estimation: {estimation_text(opts, a.nodes or None)}")
    if ordinal.is_ordinal(a):
        w(ordinal.distribution_line(a))
    elif negbin.is_negbin(a):
        w(negbin.distribution_line(a))
    else:
        w(f" Distribution at Level-1: {opts.family}" + (f", trials {opts.trials}" if opts.trials else "")
          + (f", exposure {opts.exposure}" if opts.exposure else ""))
    w("")
    w(f" The outcome variable is  {hlm_name(a.spec.outcome)}")
    w("")
    out += hglm_model_summary(a.spec, sym)
    if d.n_deleted:
        w("")
        w(f"Run-time deletion has reduced the number of level-1 records to {d.n} ({d.n_deleted} deleted)")
    out += weighting_header(a)
    w("")
    return out


def weighting_header(a) -> list[str]:
    """The Weighting Specification of a pseudo-likelihood fit (none without weights)."""
    if getattr(a, "weights", None) is None:
        return []
    from ..data.weights import weighting_lines

    return [line.replace("multilevel pseudo-maximum likelihood", "multilevel pseudo-maximum likelihood, "
                         + ("Laplace" if a.estimation == "laplace" else "adaptive quadrature"))
            for line in weighting_lines(a.weights)]


def weighted_se_line(a, robust: bool) -> list[str]:
    """What each fixed-effect table's SEs are in a pseudo-likelihood fit (none without weights)."""
    if getattr(a, "weights", None) is None:
        return []
    return ["(sandwich of the weighted unit scores, clustered on level-2 units: the standard errors to report)" if robust
            else "(model-based: the inverse Hessian of the pseudo-likelihood, which ignores the weights' information)"]


def _hglm_status_lines(a: HGLMAnalysis, sym) -> list[str]:
    """How the fit ended: PQL's iterations, or the Laplace/AGQ certificate, starts and quadrature check."""
    out: list[str] = []
    w = out.append
    if a.pql is not None:
        w(f"Final Results - Iteration {a.pql.macro_iterations} (macro iterations)"
          + ("" if a.converged else "  NOT CONVERGED"))
        w("")
        w(pql_status(a.pql))
    else:
        w(f"Final Results - Iteration {a.ml.iterations} ({'Laplace' if a.estimation == 'laplace' else 'AGQ'})")
        w("")
        if a.converged:
            from ..engine.certificate import stopping_line

            if negbin.is_negbin(a):  # log θ is one of the parameters the certificate checks (engine/negbin.py)
                w(stopping_line(f"γ, θ and {sym.tau}" if not sym.ascii else "gamma, theta and tau"))
            else:
                w(stopping_line(f"γ and {sym.tau}" if not sym.ascii else "gamma and tau"))
        else:
            w("NOT certified: " + a.ml.certificate.describe())
        w(f"Starts tried: {a.ml.starts} (the lowest local optimum is reported)")
        quad = a.ml.quadrature
        if quad is not None:
            w(f"Quadrature: {quad.describe()}")
            if not quad.accurate:
                w("WARNING: the quadrature accuracy check " + ("failed" if quad.change is not None else "could not be made")
                  + (" within the budget" if quad.adaptive else "") + "; the deviance may be off by more than 1e-6 relative"
                  + ("" if quad.adaptive else ": raise --quadrature-points"))
    return out


def _fixed_effect_lines(a: HGLMAnalysis, sym, model: str, gamma, cov, rcov) -> list[str]:
    """The fixed effects with model-based and robust standard errors, each followed by its odds
    (event rate) ratios with confidence intervals."""
    d = a.design
    ratio = "Odds Ratio" if a.data.family.link == "logit" else "Event Rate Ratio"
    if ordinal.is_ordinal(a):
        ratio = ordinal.RATIO_NAMES[a.link][1]  # probit: none
    out: list[str] = []
    w = out.append
    tied = set(a.extras.get("constraints", {}).get("involved", ()))  # --constrain: marked *
    for robust in (False, True):
        c = rcov if robust else cov
        if c is None:
            continue
        se = np.sqrt(np.diag(c))
        t = gamma / se
        p = inference.two_sided_p(t, a.df)
        w("")
        w("Final estimation of fixed effects:")
        w(f"({model}" + (" with robust standard errors)" if robust else ")"))
        out += weighted_se_line(a, robust)
        rows, ratio_rows = [], []
        for k, f in enumerate(d.fixed):
            if k == 0 or d.fixed[k - 1].q != f.q:
                rows.append([f"For {coef_label(d, f.q, sym)}"])
                ratio_rows.append(rows[-1])
            mark = "*" if gamma_label(f.q, f.s, "g") in tied else ""
            label = f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}{mark}"
            rows.append([label, f"{gamma[k]:.6f}", f"{se[k]:.6f}", f"{t[k]:.3f}", f"{a.df[k]:.0f}", hlm_p(p[k])])
            tq = special.stdtrit(a.df[k], 0.975)
            ratio_rows.append([label, f"{gamma[k]:.6f}", f"{np.exp(gamma[k]):.6f}",
                               f"({np.exp(gamma[k] - tq * se[k]):.3f},{np.exp(gamma[k] + tq * se[k]):.3f})"])
        if ordinal.is_ordinal(a):  # the thresholds δ(m), after γ
            rows += ordinal.threshold_rows(a, robust, sym)
        out.extend(text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                              rows, [30, 12, 14, 9, 12, 8]))
        if tied:
            out += constraint_note(a.extras["constraints"], sym)
        if ratio is None:  # probit: exp(γ) is no ratio of anything
            continue
        w("")
        out.extend(text_table(["Fixed Effect", "Coefficient", ratio, "Confidence Interval"], ratio_rows, [30, 12, 16, 22]))
    return out


def _hglm_deviance_lines(a: HGLMAnalysis, sym) -> list[str]:
    """The deviance, parameter count and AIC/BIC of a Laplace or AGQ fit; PQL has none."""
    out: list[str] = []
    w = out.append
    if a.ml is not None:
        weighted = getattr(a, "weights", None) is not None
        w("Statistics for the current model")
        label = "Pseudo-deviance" if weighted else "Deviance"
        w(f" {label:<31}= {a.ml.deviance:.6f}")
        w(f" Number of estimated parameters = {a.ml.n_params}")
        aic, bic = information_criteria(a)
        w(f" AIC = {aic:.6f}, BIC = {bic:.6f} (as lme4: every fixed effect and variance parameter counted)")
        if weighted:
            w(" (with sampling weights these are pseudo-likelihood quantities: not for likelihood-ratio tests)")
        what = "weighted pseudo-log-likelihood" if weighted else "full log-likelihood"
        w(f" (-2 x the {what}, every constant included)" if sym.ascii else
          f" (−2 × the {what}, every constant included)")
    else:
        w("Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test;")
        w("use --estimation laplace or agq for a deviance.")
    return out
