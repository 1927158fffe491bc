"""Output of a three-level HGLM (PQL or Laplace, with sampling weights: the pseudo-likelihood), pure functions of a DesignLevels, its NestedFit and HGLMLevels: HLM3's
three-level layout with HLM 7's HGLM parts (the level-1 distribution and link, the macro iterations,
the unit-specific fixed effects each followed by its odds or event-rate ratios, no deviance for PQL)."""

from __future__ import annotations

import math

import numpy as np

from ..engine.certificate import stopping_line
from ..version import __version__
from .report import df_text, hlm_name, hlm_p, printable, text_table
from .report_levels import (Symbols3, beta_label as _beta_label, certificate_text3, correlation as _corr, fit_json3,
                            lme4_formula3, model_summary, pi_label as _pi_label, random_betas as _random_betas,
                            random_pis as _random_pis, structure_notes, two_sided_p as _two_sided_p)


# the two tables' labels with sampling weights (model-based, robust)
WEIGHTED_SE = ("(model-based: the inverse Hessian of the pseudo-likelihood, which ignores the weights' information)",
               "(sandwich of the weighted level-3 unit scores, J3/(J3-1): the standard errors to report)")


def estimation_line(h) -> str:
    if h.estimation == "laplace":
        return "Laplace approximation to the likelihood (maximum likelihood, as glmer's nAGQ = 1)"
    if h.estimation == "agq":
        return f"adaptive Gauss-Hermite quadrature ({h.nodes} points, the same at both levels; nested, maximum likelihood)"
    kind = "restricted" if h.reml else "full"
    od = ", level-1 scale estimated (over-dispersion)" if h.overdispersion else ", level-1 scale fixed at 1"
    return f"penalized quasi-likelihood ({kind} PQL{od})"


def quadrature_line(q) -> str:
    """The nested AGQ's quadrature check (hglm.QuadratureCheck). More points are advised only when a check
    with the next K was made and failed: past the last K the budget can check (nested_agq.QUAD_BUDGET),
    more points given would go unchecked too."""
    advice = not (q.accurate or q.adaptive) and q.check_points is not None
    return ("Quadrature: " + q.describe().replace("per random effect", "at each level")
            + ("; raise --quadrature-points" if advice else ""))


def agq_points_line(hglm: dict) -> str:
    """How the combined AGQ fits' one number of points was set (analysis/hglm_levels._same_points)."""
    n = hglm["quadrature_points"]
    refitted = hglm["quadrature_refitted"]
    how = ("as given by --quadrature-points" if hglm["quadrature_points_given"] else
           "chosen by each fit's accuracy check" if not refitted else
           f"the most any fit's accuracy check chose; refitted with it: {', '.join(refitted)}")
    check = ("" if hglm["quadrature_accurate"] else
             "; its accuracy is not checked (no larger number of points fits the budget)"
             if not hglm.get("quadrature_checked", True) else
             "; NOT accurate for every fit (see each fit's quadrature check): raise --quadrature-points")
    return f" Quadrature points: {n} for every fit ({how}){check}"


def glmer_call(design, h, meta: dict, diagonal) -> str:
    """The same model in R: lme4's glmer (its Laplace fit) with the family and offset; PQL itself is
    MASS::glmmPQL (which estimates the level-1 scale)."""
    formula, _notes = lme4_formula3(design.spec, meta.get("id2", "ID2"), meta.get("id3", "ID3"), diagonal or False)
    lhs, rhs = (x.strip() for x in formula.split("~", 1))
    if h.family == "binomial":
        lhs = f"cbind({lhs}, {h.trials} - {lhs})"
    if h.exposure:
        rhs += f" + offset(log({h.exposure}))"
    return f"glmer({lhs} ~ {rhs}, family = {'poisson' if h.family == 'poisson' else 'binomial'})"


def level1_link_lines(summary: list[str], outcome: str, h, sym) -> list[str]:
    """HLM 7's level-1 block of an HGLM in place of the linear one: the sampling model, the link and the
    linear predictor η (no level-1 residual e)."""
    out = []
    sub = "ijk"
    name = hlm_name(outcome)
    for line in summary:
        head = line.lstrip()
        if head.startswith(f"{name}{sub} = "):
            pad = line[: len(line) - len(head)]
            eta_rhs = head.split(" = ", 1)[1]
            eta_rhs = eta_rhs.rsplit(" + ", 1)[0] if eta_rhs.endswith(f"{sym.e}{sub}") else eta_rhs
            if h.link == "logit":
                if h.family == "binomial":
                    out.append(f"{pad}{name}{sub} ~ Binomial({h.trials}{sub}, φ{sub})")
                else:
                    out.append(f"{pad}Prob({name}{sub} = 1|π{sub[1:]}) = φ{sub}")
                out.append(f"{pad}log[φ{sub}/(1 - φ{sub})] = η{sub}")
            else:
                out.append(f"{pad}E({name}{sub}|π{sub[1:]}) = " + (f"{h.exposure}{sub}·λ{sub}" if h.exposure else f"λ{sub}"))
                out.append(f"{pad}log[λ{sub}] = η{sub}")
            out.append(f"{pad}η{sub} = {eta_rhs}")
        else:
            out.append(line)
    return out


def hglm_text3(design, fit, meta: dict, sym: Symbols3, h) -> str:
    spec = design.spec
    out: list[str] = []
    w = out.append
    laplace = h.estimation in ("laplace", "agq")  # the ML fits (AGQ: engine/nested_agq.py)
    agq = h.estimation == "agq"
    if not fit.converged:
        w(f"WARNING: the {'AGQ' if agq else 'Laplace'} fit is NOT at a certified optimum; the numbers below are where the search stopped."
          if laplace else
          "WARNING: PQL did NOT converge to a checked fixed point; the numbers below are from its last iteration.")
        w("")
    w(f"hlmcli {__version__}: hierarchical generalized linear models, three levels (HLM3)")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    out += ["", "Specifications for this nonlinear HLM3 run", "", f"Problem Title: {meta.get('title') or 'no title'}",
            "", f" The data source for this run  = {meta.get('data_source')}"]
    if meta.get("command_file"):
        w(f" The command file for this run = {meta['command_file']}")
    for level, n in enumerate((design.n, design.n2, design.n3), start=1):
        w(f" The maximum number of level-{level} units = {n}")
    if not laplace:
        w(" The maximum number of macro iterations = 100")
    w("")
    w(f" Method of estimation: {estimation_line(h)}")
    weighted = getattr(h, "weights", None) is not None
    out += list(meta.get("weighting_lines") or [])  # sampling weights (weights.levels_weighting_lines)
    dist = h.family + (f", trials {h.trials}" if h.trials else "") + (f", exposure {h.exposure}" if h.exposure else "")
    w(f" Distribution at Level-1: {dist} ({h.link} link)")
    w("")
    w(f" The outcome variable is  {hlm_name(spec.outcome)}")
    w("")
    out += level1_link_lines(model_summary(spec, sym), spec.outcome, h, sym)
    out += structure_notes(fit, "τ" if not sym.ascii else "tau")
    if design.n_deleted:
        out += ["", f"Run-time deletion has reduced the number of level-1 records to {design.n} "
                    f"({design.n_deleted} deleted)"]
    w("")
    if laplace:
        w(f"Final Results - Iteration {fit.iterations} (Newton iterations from a PQL start"
          + (", through the Laplace optimum)" if agq else ")")
          + ("" if fit.converged else "  NOT CONVERGED"))
    else:
        w(f"Final Results - Iteration {h.macro_iterations} (macro iterations)" + ("" if fit.converged else "  NOT CONVERGED"))
    w("")
    if h.check is not None and h.check.passed:
        w("PQL converged to its fixed point: " + h.check.describe())
    for f in h.failed:
        w(f"NOT converged: {f}")
    if laplace:
        if fit.certificate.certified:
            w(stopping_line("γ, τπ or τβ") + ": " + fit.certificate.describe())
        if agq and h.quadrature is not None:
            w(quadrature_line(h.quadrature))
    elif fit.certificate.certified:
        w("The last linearised model is at its certified optimum over τπ and τβ"
          + (" and σ²" if h.overdispersion else " (σ² fixed at 1)"))
    else:
        out.extend(certificate_text3(fit, sym))
    out += list(fit.boundary)
    if h.overdispersion:
        w("")
        w(f" {sym.sigma2} = {fit.sigma2:12.5f} (over-dispersion scale)")
    rp, rb = _random_pis(spec), _random_betas(spec)

    def matrix(title, labels, m, fmt):
        lw = max(len(x) for x in labels)
        w("")
        w(title)
        for k, lab in enumerate(labels):
            w(f"{lab:>{lw}} " + " ".join(fmt.format(v) for v in m[k]))

    if rp:
        lab_pi = [f"{hlm_name(spec.coefficient_names()[p])},{sym.p(p)}" for p in rp]
        matrix(f" {sym.tau_pi}", lab_pi, fit.tau_pi, "{:13.5f}")
        if len(rp) > 1:
            matrix(f" {sym.tau_pi} (as correlations)", lab_pi, _corr(fit.tau_pi), "{:7.3f}")
    if rb:
        lab_b = [f"{hlm_name(spec.coefficient_names()[p])}/{hlm_name(spec.term_names((p,))[q])},{sym.b(p, q)}"
                 for p, q in rb]
        matrix(f" {sym.tau_beta}", lab_b, fit.tau_beta, "{:13.5f}")
        if len(rb) > 1:
            matrix(f" {sym.tau_beta} (as correlations)", lab_b, _corr(fit.tau_beta), "{:7.3f}")
    gammas = spec.fixed()
    ratio = "Odds Ratio" if h.link == "logit" else "Event Rate Ratio"
    from ..engine.special_functions import special

    for robust in (False, True):
        se = np.sqrt(np.diag(fit.cov_gamma_robust if robust else fit.cov_gamma))
        t = fit.gamma / se
        pv = _two_sided_p(t, fit.df_gamma)
        w("")
        w("Final estimation of fixed effects:")
        w("(Unit-specific model" + (" with robust standard errors, clustered on level-3 units)" if robust else ")"))
        if weighted:
            w(WEIGHTED_SE[robust])
        rows, ratio_rows = [], []
        for k, g in enumerate(gammas):
            (p, q, s_), (_, level2, level3) = g.idx, g.names
            if k == 0 or gammas[k - 1].idx[0] != p:
                rows.append([f"For {_pi_label(spec, p, sym)}"])
                ratio_rows.append(rows[-1])
            if k == 0 or gammas[k - 1].idx[:2] != (p, q):
                rows.append([f"   For {hlm_name(level2)}, {sym.b(p, q)}"])
                ratio_rows.append(rows[-1])
            mark = "*" if k in meta.get("tied", ()) else ""  # --constrain: the note follows the tables
            label = f"      {hlm_name(level3)}, {sym.g(p, q, s_)}{mark}"
            rows.append([label, f"{fit.gamma[k]:.6f}", f"{se[k]:.6f}", f"{t[k]:.3f}", df_text(fit.df_gamma[k]),
                         hlm_p(pv[k])])
            tq = float(special.stdtrit(fit.df_gamma[k], 0.975))
            ratio_rows.append([label, f"{fit.gamma[k]:.6f}", f"{np.exp(fit.gamma[k]):.6f}",
                               f"({np.exp(fit.gamma[k] - tq * se[k]):.3f},{np.exp(fit.gamma[k] + tq * se[k]):.3f})"])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                          rows, [30, 12, 14, 9, 12, 8])
        w("")
        out += text_table(["Fixed Effect", "Coefficient", ratio, "Confidence Interval"], ratio_rows, [30, 12, 16, 22])
    w("")
    w("Final estimation of level-2 and level-3 variance components")
    rows = []
    sd = np.sqrt(np.clip(np.diag(fit.tau_pi), 0, None))
    for k, p in enumerate(rp):
        rows.append([_pi_label(spec, p, sym, sym.r), f"{sd[k]:.5f}", f"{fit.tau_pi[k, k]:.5f}"])
    sd = np.sqrt(np.clip(np.diag(fit.tau_beta), 0, None))
    for k, (p, q) in enumerate(rb):
        rows.append([_beta_label(spec, p, q, sym, sym.u), f"{sd[k]:.5f}", f"{fit.tau_beta[k, k]:.5f}"])
    if h.overdispersion:
        rows.append([f"level-1, {sym.e}", f"{math.sqrt(fit.sigma2):.5f}", f"{fit.sigma2:.5f}"])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component"], rows, [30, 18, 18])
    w("")
    if agq:
        w(f"Deviance = {fit.deviance:.6f} (adaptive quadrature, {h.nodes} points at each level, -2 log L)")
        w(f"Number of estimated parameters = {fit.n_params}")
        w(f"Laplace deviance at its own optimum = {h.laplace_deviance:.6f}")
        w("")
        w("The same model in R (lme4's glmer fits it by Laplace only: its nAGQ > 1 needs a single scalar random effect)")
    elif laplace and weighted:
        out += _pseudo_deviance_lines(fit)
    elif laplace:
        w(f"Deviance = {fit.deviance:.6f} (Laplace, -2 log L as glmer's nAGQ = 1)")
        w(f"Number of estimated parameters = {fit.n_params}")
        w("")
        w("The same model in R (lme4's glmer, whose default nAGQ = 1 is this Laplace fit)")
    else:
        w("Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test.")
        w("")
        w("The same model in R (lme4's glmer fits it by Laplace; MASS::glmmPQL by PQL with a free level-1 scale)")
    w(f" {glmer_call(design, h, meta, getattr(fit, 'diagonal', None) and any(fit.diagonal))}")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


def _pseudo_deviance_lines(fit) -> list[str]:
    """The deviance block of a fit with sampling weights: a pseudo-deviance, and when glmer is the same fit."""
    return [f"Pseudo-deviance = {fit.deviance:.6f} (Laplace, -2 x the weighted pseudo-log-likelihood)",
            " (a pseudo-likelihood quantity: not for likelihood-ratio tests)",
            f"Number of estimated parameters = {fit.n_params}", "",
            "The same model in R (lme4's glmer, whose default nAGQ = 1 is this Laplace fit; with weights = --weight1",
            " it equals this fit only for whole-number level-1 weights used as given (--normalize none) and no",
            " level-2 or level-3 weights: glmer has none)"]


def hglm_json3(design, fit, meta: dict, h) -> dict:
    """The schema-3 document with the HGLM's parts: `hglm` (family, link, PQL and its fixed-point check),
    each fixed effect's odds or rate ratio, no deviance (PQL has none)."""
    doc = fit_json3(design, fit, meta)
    key = "odds_ratio" if h.link == "logit" else "rate_ratio"
    for f in doc["fixed_effects"]:
        f[key] = float(np.exp(f["estimate"]))
    laplace = h.estimation in ("laplace", "agq")
    doc.update({"deviance": float(fit.deviance) if laplace else None,
                "loglik": -float(fit.deviance) / 2 if laplace else None, "hglm": h.to_json(),
                "r_call": glmer_call(design, h, meta, getattr(fit, "diagonal", None) and any(fit.diagonal))})
    return doc
