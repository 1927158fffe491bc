"""A negative binomial fit's parts of the HGLM text and JSON (report_hglm.py calls them): the
distribution, the dispersion θ (Var = μ + μ²/θ, glmmTMB's nbinom2) with its standard errors, and the
same model in R (glmmTMB)."""

from __future__ import annotations

import math


def is_negbin(a) -> bool:
    return getattr(a.spec.options, "family", None) == "negbinomial"


def distribution_line(a) -> str:
    opts = a.spec.options
    return (" Distribution at Level-1: negative binomial (NB2, Var = mu + mu^2/theta), log link"
            + (f", exposure {opts.exposure}" if opts.exposure else ""))


def theta_lines(a, sym) -> list[str]:
    """θ with its SE (delta method from log θ, the scale the search and the covariances use)."""
    th = "theta" if sym.ascii else "θ"
    return ["", "Final estimation of the dispersion (Var = mu + mu^2/theta)" if sym.ascii else
            "Final estimation of the dispersion (Var = μ + μ²/θ)",
            f" {th} = {a.theta:12.6f}   standard error {a.theta_se:.6f}   "
            f"(log {th} = {math.log(a.theta):.6f}, standard error {a.log_theta_se:.6f})"]


def glmmtmb_call(spec, id_name: str, lme4_formula) -> str:
    formula, _ = lme4_formula(spec, id_name)
    lhs, rhs = formula.split(" ~ ", 1)
    if spec.options.exposure:
        rhs = rhs.replace(" + (", f" + offset(log({spec.options.exposure})) + (", 1)
    return f"glmmTMB::glmmTMB({lhs} ~ {rhs}, family = glmmTMB::nbinom2, data = d)"


def add_json(a, out: dict) -> dict:
    """The dispersion's keys: θ, its SE (model-based and robust, delta method) and log θ's."""
    out["dispersion"] = {"parameter": "theta", "variance_function": "mu + mu^2/theta", "estimate": a.theta,
                         "se": a.theta_se, "robust_se": a.theta * a.log_theta_robust_se,
                         "log_estimate": math.log(a.theta), "log_se": a.log_theta_se,
                         "log_robust_se": a.log_theta_robust_se}
    out["start"] = "glm"
    return out
