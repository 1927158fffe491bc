"""The documents of two-level HGLM fits combined over plausible values or imputed data sets by Rubin's
rules (analysis/hglm_combined.py): the combined JSON (schema 2, kind "combined", with the family) and
HLM-style text, as report_combined.py writes them for the normal model."""

from __future__ import annotations

import math

from ..analysis.hglm_combined import combine_hglm
from ..analysis.plausible import RULE, rule_text
from ..version import __version__
from .report import hlm_name, hlm_p, model_record, printable, problem_lines, text_table
from .report_combined import combined_d1_lines
from .report_hglm import estimation_text, hglm_model_summary, hglm_json
from .terms import with_terms


def combined_json_hglm(analyses: list, meta: dict, source: str, labels=None, tests=None) -> dict:
    """The combined JSON document of HGLM fits: the linear combined document's keys (schema 2) with the
    family, link and estimation, each fit's own HGLM document under "fits"."""
    a0 = analyses[0]
    opts = a0.spec.options
    c = combine_hglm(analyses, labels)
    out = {"schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
           "data_source": meta.get("data_source"), "kind": "combined", "combining": {
               "source": source, "m": c["m"], "outcomes": c["outcomes"], "rule": RULE},
           "family": opts.family, "link": a0.data.family.link, "estimation": a0.estimation,
           "quadrature_points": a0.nodes if a0.estimation == "agq" else (1 if a0.estimation == "laplace" else None),
           "trials": opts.trials, "exposure": opts.exposure, "overdispersion": opts.overdispersion,
           "n_level1": a0.design.n, "n_level2": a0.design.n_units, "model": model_record(a0.spec, meta),
           "weights": a0.weights.to_json() if a0.weights is not None else None}
    out.update({k: v for k, v in c.items() if k not in ("m", "rule", "outcomes")})
    if out["deviance"] is None:
        out["deviance_note"] = "PQL maximises a quasi-likelihood: there is no deviance to average"
    if tests:
        out["hypothesis_tests"] = tests
    out["fits"] = [_fit_json(a, meta) for a in analyses]
    return with_terms(out)


def _fit_json(a, meta: dict) -> dict:
    """One fit's own document (a multinomial fit has its own layout)."""
    if hasattr(a, "n_logits"):
        from .report_multinomial import multinomial_json

        return multinomial_json(a, meta)
    return hglm_json(a, meta)


def _fit_text(a, meta: dict, sym) -> str:
    if hasattr(a, "n_logits"):
        from .report_multinomial import multinomial_text

        return multinomial_text(a, meta, sym)
    from .report_hglm import hglm_text

    return hglm_text(a, meta, sym)


def _fixed_lines(c: dict, d, sym, weighted: bool) -> list[str]:
    out: list[str] = []
    w = out.append
    for kind in ("fixed_effects", "fixed_effects_robust"):
        w("")
        w("Final estimation of fixed effects, combined over the fits")
        w("(Unit-specific model" + (" with robust standard errors)" if kind.endswith("robust") else ")"))
        if weighted:
            w("(sandwich of the weighted unit scores, clustered on level-2 units: the standard errors to report)"
              if kind.endswith("robust") else
              "(model-based: the inverse Hessian of the pseudo-likelihood, which ignores the weights' information)")
        rows, prev, cat = [], None, None
        for k, row in enumerate(c[kind]):
            f = d.fixed[k % len(d.fixed)]
            if row.get("category") is not None and row["category"] != cat:  # a multinomial fit's logits in turn
                cat, prev = row["category"], None
                rows.append([f"Category {cat:g} (log-odds against category {c['reference_category']:g})"])
            if f.q != prev:
                rows.append([f"For {hlm_name(f.coefficient)}"])
                prev = f.q
            rows.append([f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}", f"{row['estimate']:.6f}", f"{row['se']:.6f}",
                         f"{row['t']:.3f}", f"{row['df']:.2f}", hlm_p(row['p']), f"{row['fmi']:.3f}"])
        own = c.get("own_parameters")
        for row in (own or {}).get("rows_robust" if kind.endswith("robust") else "rows", []):
            name = row["name"] if not sym.ascii else row["name"].replace("δ", "d").replace("θ", "theta")
            label = f"For  THRESHOLD{name[2:-1]}, {name}" if own["kind"] == "thresholds" else f"Dispersion, {name}"
            rows.append([label, f"{row['estimate']:.6f}", f"{row['se']:.6f}", f"{row['t']:.3f}", f"{row['df']:.2f}",
                         hlm_p(row['p']), f"{row['fmi']:.3f}"])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value", "FMI"],
                          rows, [30, 12, 14, 9, 12, 8, 6])
    return out


def combined_text_hglm(analyses: list, meta: dict, sym, source: str, labels=None, tests=None,
                       full_output: bool = False) -> str:
    """HLM-style text of combined two-level HGLM fits; each fit's own text after it with --full-output."""
    from ..data.weights import weighting_lines

    a0 = analyses[0]
    d, opts = a0.design, a0.spec.options
    c = combine_hglm(analyses, labels)
    out: list[str] = []
    w = out.append
    if not c["converged"]:
        w("WARNING: at least one fit is NOT " + ("at a checked PQL fixed point." if a0.pql is not None
                                                  else "certified at its optimum."))
        w("")
    w(f"hlmcli {__version__}: hierarchical generalized linear models, two levels (HLM2)")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    w("")
    w(f"Results combined over {c['m']} {source}")
    w("")
    out += problem_lines(meta, d)
    w("")
    w(f" Method of estimation: {estimation_text(opts, a0.nodes or None)}")
    if a0.estimation == "agq":
        w(f" Quadrature points per random effect: {', '.join(str(a.nodes) for a in analyses)} (each fit's own)")
    w(f" Distribution at Level-1: {opts.family}" + (f", trials {opts.trials}" if opts.trials else "")
      + (f", exposure {opts.exposure}" if opts.exposure else ""))
    out += weighting_lines(a0.weights)
    w("")
    w(f" The {'outcome variables are ' if labels is None else 'data sets are'}  "
      f"{', '.join(c['outcomes'] if labels else [hlm_name(o) for o in c['outcomes']])}")
    w("")
    out += hglm_model_summary(a0.spec, sym)
    w("")
    w(" Combining rule: " + rule_text(RULE, sym.ascii))
    if c["sigma2"] is not None:
        w("")
        w(f" {sym.sigma2} (average over the fits) = {c['sigma2']:12.5f}")
    names = c["random_coefficients"]
    w("")
    w(f"{sym.tau} (average over the fits)")
    lw = max(len(hlm_name(n)) for n in names)
    for k, n in enumerate(names):
        w(f"{hlm_name(n):>{lw}} " + " ".join(f"{v:13.5f}" for v in c["tau"][k])
          + (f"   reliability {c['reliability'][n]:.3f}" if n in c["reliability"] else ""))
    out += _fixed_lines(c, d, sym, a0.weights is not None)
    w("(d.f.: Barnard-Rubin, from HLM's approx. d.f.; FMI: fraction of missing information)")
    w("")
    w("Final estimation of variance components (average over the fits)")
    rows = [[hlm_name(n), f"{math.sqrt(max(c['tau'][k][k], 0)):.5f}", f"{c['tau'][k][k]:.5f}"]
            for k, n in enumerate(names)]
    if c["sigma2"] is not None:
        rows.append(["level-1, r", f"{math.sqrt(c['sigma2']):.5f}", f"{c['sigma2']:.5f}"])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component"], rows, [26, 18, 18])
    w("")
    if c["deviance"] is None:
        w(" Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test.")
    else:
        label = "Pseudo-deviance" if a0.weights is not None else "Deviance"
        w(f" {label} (average over the fits) = {c['deviance']:.6f}")
        w(f" Number of estimated parameters   = {c['n_params']}")
    own = c.get("own_parameters")
    if own is not None and own["kind"] == "dispersion":
        th = "theta" if sym.ascii else "θ"
        w(f" Dispersion {th} = exp(combined log {th}) = {own['theta']:.6f}")
    out += combined_d1_lines(tests or [])
    text = "\n".join(printable(line.rstrip()) for line in out) + "\n"
    if full_output:
        for m, a in enumerate(analyses, start=1):
            text += f"\n{'=' * 78}\nFit {m} of {c['m']}: {c['outcomes'][m - 1]}\n{'=' * 78}\n" + _fit_text(a, meta, sym)
    return text
