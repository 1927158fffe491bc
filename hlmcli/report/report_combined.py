"""The documents of fits combined over plausible values or imputed data sets by Rubin's rules
(analysis/plausible.py, plausible_levels.py): the two-level text and JSON, and the text of a K-level
combined document."""

from __future__ import annotations

import math

from ..analysis.plausible import RULE, combine, rule_text
from ..data.weights import weighting_lines
from ..spec import gamma_label
from ..version import __version__
from .report import fit_json, fit_text, hlm_name, hlm_p, model_record, model_summary, printable, problem_lines, text_table
from .terms import with_terms


def combined_json(analyses: list, meta: dict, source: str, full_output: bool, labels=None, tests=None,
                  structured=None) -> dict:
    """The combined JSON document of two-level fits (schema 2, kind "combined"), each fit's own under "fits";
    structured: HMLM's structured fits combined (analysis/hmlm.combine_structured)."""
    a0 = analyses[0]
    c = combine(analyses, labels)
    out = {"schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
           "data_source": meta.get("data_source"), "kind": "combined", "combining": {
               "source": source, "m": c["m"], "outcomes": c["outcomes"], "rule": RULE},
           "n_level1": a0.design.n, "n_level2": a0.design.n_units, "model": model_record(a0.design.spec, meta),
           "weights": a0.weights.to_json() if a0.weights is not None else None}
    out.update({k: v for k, v in c.items() if k not in ("m", "rule", "outcomes")})
    if tests:
        out["hypothesis_tests"] = tests
    if structured is not None:
        out["level1_covariance"] = structured
    out["fits"] = [fit_json(a, meta) for a in analyses]
    return with_terms(out)


def _combined_fixed_lines(c: dict, d, sym, weighted: bool) -> list[str]:
    """The combined fixed effects (plausible.combine's tables), model-based then robust, with each γ's FMI."""
    out: list[str] = []
    w = out.append
    tied = set(c.get("constraints", {}).get("involved", ()))  # --constrain: marked *
    for kind in ("fixed_effects", "fixed_effects_robust"):
        w("")
        w("Final estimation of fixed effects, combined over the fits")
        if kind.endswith("robust"):
            w("(with robust standard errors)")
            if weighted:
                w("(sandwich clustered on level-2 units: the standard errors to report with sampling weights)")
        rows = []
        prev = None
        for row, f in zip(c[kind], d.fixed):
            if f.q != prev:
                rows.append([f"For {hlm_name(f.coefficient)}"])
                prev = f.q
            mark = "*" if gamma_label(f.q, f.s, "g") in tied else ""
            rows.append([f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}{mark}", f"{row['estimate']:.6f}", f"{row['se']:.6f}",
                         f"{row['t']:.3f}", f"{row['df']:.2f}", hlm_p(row['p']), f"{row['fmi']:.3f}"])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value", "FMI"],
                          rows, [30, 12, 14, 9, 12, 8, 6])
        if "constraints" in c:
            from .report import constraint_note

            out += constraint_note(c["constraints"], sym)
    return out


def _d1_test_lines(tests: list, notes: bool = True) -> list[str]:
    """The D1 test of each hypothesis combined over the fits (plausible.combined_tests); `notes`: with the
    notes on the robust-only tests of weighted fits and on D1's reference."""
    out: list[str] = []
    w = out.append
    for h in tests or []:
        w("")
        w(f"Results of General Linear Hypothesis Testing, combined over the fits: {h['label']}")
        for kind, title in (("model", "model-based"), ("robust", "robust")):
            r = h[kind]
            if r is None:
                continue
            df2 = "infinite" if r["df2"] is None else f"{r['df2']:.2f}"
            w(f" {title:>12}: D1 F statistic = {r['F']:.6f}, d.f. = {r['df1']}, {df2}, p-value = {hlm_p(r['p'])}")
        if notes and h["model"] is None:
            w(" (sampling weights: the test uses the robust covariance only)")
    if notes and tests:
        w(" (D1: Li, Raghunathan & Rubin 1991, F reference with their d.f., as mitml::testModels)")
    return out


def combined_text(analyses: list, meta: dict, sym, source: str, full_output: bool, labels=None, tests=None,
                  structured=None) -> str:
    """HLM-style text of combined two-level fits; each fit's own text after it with --full-output;
    structured: HMLM's structured fits combined, printed after the homogeneous ones (as a single fit)."""
    a0 = analyses[0]
    d = a0.design
    c = combine(analyses, labels)
    out: list[str] = []
    w = out.append
    if not c["converged"]:
        w("WARNING: the optimum of at least one fit is NOT certified (see each fit with --full-output).")
        w("")
    w(f"hlmcli {__version__}: hierarchical linear models, two levels (HLM2)")
    w("")
    w(f"Results combined over {c['m']} {source}")
    w("")
    out += problem_lines(meta, d)
    w("")
    w(f" Method of estimation: {'restricted maximum likelihood' if c['method'] == 'REML' else 'full maximum likelihood'}")
    out += weighting_lines(a0.weights)
    w("")
    w(f" The {'outcome variables are ' if labels is None else 'data sets are'}  {', '.join(c['outcomes'] if labels else [hlm_name(o) for o in c['outcomes']])}")
    w("")
    out += model_summary(d.spec, sym)
    w("")
    w(" Combining rule: " + rule_text(RULE, sym.ascii))
    names = c["random_coefficients"]
    w("")
    w(f" {sym.sigma2} (average over the fits) = {c['sigma2']:12.5f}")
    w("")
    w(f"{sym.tau} (average over the fits)")
    labels = [f"{hlm_name(n)}" for n in names]
    lw = max(len(x) for x in labels) if labels else 0
    for k, lab in enumerate(labels):
        w(f"{lab:>{lw}} " + " ".join(f"{v:13.5f}" for v in c["tau"][k]))
    out += _combined_fixed_lines(c, a0.design, sym, a0.weights is not None)
    w("(d.f.: Barnard-Rubin, from HLM's approx. d.f.; FMI: fraction of missing information)")
    w("")
    w("Final estimation of variance components (average over the fits)")
    rows = []
    for k, n in enumerate(names):
        v = c["tau"][k][k]
        rows.append([f"{hlm_name(n)}", f"{math.sqrt(max(v, 0)):.5f}", f"{v:.5f}"])
    rows.append(["level-1, r", f"{math.sqrt(c['sigma2']):.5f}", f"{c['sigma2']:.5f}"])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component"], rows, [26, 18, 18])
    w("")
    w(f" Deviance (average over the fits) = {c['deviance']:.6f}")
    w(f" Number of estimated parameters   = {c['n_params']}")
    if "constraint_test" in c:
        w("")
        w(f"Test of the constraints ({', '.join(c['constraints']['restrictions'])}): {c['constraint_test']['note']}")
    out += _d1_test_lines(tests or [])
    if structured is not None:
        from .report_hmlm import combined_level1_covariance_lines

        out += combined_level1_covariance_lines(structured, sym, hlm_p, text_table)
        out += _d1_test_lines(structured.get("hypothesis_tests") or [], notes=False)
        for h in structured.get("hypothesis_tests") or []:
            w(f" ({h['label']}: {h['covariance']})")
    text = "\n".join(line.rstrip() for line in out) + "\n"
    if full_output:
        for m, a in enumerate(analyses, start=1):
            text += f"\n{'=' * 78}\nFit {m} of {c['m']}: {c['outcomes'][m - 1]}\n{'=' * 78}\n"
            text += fit_text(a, meta, sym)
    return text


def combined_text_levels(doc: dict, model_lines: list[str], weighting_lines: list[str], sym_sigma2: str,
                         fit_texts: list[str] | None = None, kind: str = "hierarchical linear models",
                         method: str | None = None) -> str:
    """HLM-style text of a combined K-level document: the combined fixed effects (model-based and robust),
    the averaged variance components and reliabilities, D1 tests; each fit's own text after it when given.
    `kind` and `method` name a three-level HGLM's models and estimation (report_hglm_levels)."""
    K = doc["levels"]
    out: list[str] = []
    w = out.append
    if not doc["converged"]:
        w("WARNING: the optimum of at least one fit is NOT certified (see each fit with --full-output).")
        w("")
    w(f"hlmcli {__version__}: {kind}, {K} levels (HLM{K})")
    if doc.get("timestamp"):
        w(f"Date: {doc['timestamp']}")
    w("")
    w(f"Results combined over {doc['combining']['m']} {doc['combining']['source']}")
    w("")
    w(f"Problem Title: {doc.get('title') or 'no title'}")
    w("")
    w(f" The data source for this run  = {doc.get('data_source')}")
    for key, n in doc["n_units"].items():
        w(f" The maximum number of level-{key[5:]} units = {n}")
    w("")
    w(" Method of estimation: " + (method or ('restricted maximum likelihood' if doc['method'] == 'REML'
                                              else 'full maximum likelihood')))
    out += weighting_lines
    w("")
    w(f" The {'outcome variables are' if doc['combining']['source'] == 'plausible values' else 'data sets are'}  "
      f"{', '.join(doc['combining']['outcomes'])}")
    w("")
    out += model_lines
    w("")
    ascii_only = sym_sigma2 == "sigma^2"  # the levels' symbols under --ascii
    w(" Combining rule: " + rule_text(RULE, ascii_only))
    w("")
    out += _sigma2_lines(doc, sym_sigma2) + _level_tau_lines(doc)
    for kind in ("fixed_effects", "fixed_effects_robust"):
        w("")
        w("Final estimation of fixed effects, combined over the fits")
        if kind.endswith("robust"):
            w(f"(with robust standard errors, clustered on level-{K} units"
              + ("; the standard errors to report with sampling weights)" if doc["weights"] else ")"))
        rows = [[_ascii_coefficient(r["gamma"]) if ascii_only else r["gamma"], f"{r['estimate']:.6f}", f"{r['se']:.6f}", f"{r['t']:.3f}", f"{r['df']:.2f}",
                 hlm_p(r["p"]), f"{r['fmi']:.3f}"] for r in doc[kind]]
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value", "FMI"],
                          rows, [30, 12, 14, 9, 12, 8, 6])
    w("(d.f.: Barnard-Rubin, from HLM's approx. d.f.; FMI: fraction of missing information)")
    w("")
    if doc["deviance"] is None:  # a three-level HGLM by PQL
        w(" Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test.")
    else:
        w(f" {'Pseudo-deviance' if doc['weights'] else 'Deviance'} (average over the fits) = {doc['deviance']:.6f}")
        w(f" Number of estimated parameters   = {doc['n_params']}")
    out += _d1_test_lines(doc.get("hypothesis_tests") or [], notes=False)
    text = "\n".join(printable(line.rstrip()) for line in out) + "\n"
    for m, t in enumerate(fit_texts or [], start=1):
        text += f"\n{'=' * 78}\nFit {m} of {doc['combining']['m']}: {doc['combining']['outcomes'][m - 1]}\n{'=' * 78}\n" + t
    return text


def _ascii_coefficient(label: str) -> str:
    """γ000 as G000 (δ0000 as D0000), as the single fit's text prints it under --ascii (SymbolsLevels.coef)."""
    from ..language.lexer import COEF_LETTERS, GREEK

    return "".join(COEF_LETTERS[GREEK.index(c)].upper() if c in GREEK else c for c in label)


def _sigma2_lines(doc: dict, sym_sigma2: str) -> list[str]:
    """σ² averaged over the fits; none for an HGLM without over-dispersion (its level-1 variance is fixed
    by the mean)."""
    hglm = doc.get("hglm")
    if hglm is not None and not hglm.get("overdispersion"):
        return []
    return [f" {sym_sigma2} (average over the fits) = {doc['sigma2']:12.5f}" + (" (over-dispersion scale)" if hglm else "")]


def _level_tau_lines(doc: dict) -> list[str]:
    """Each level's τ averaged over the fits, with the averaged reliabilities (a K-level combined document)."""
    out: list[str] = []
    for level, (tau, rel) in enumerate(zip(doc["taus"], doc["reliabilities"]), start=2):
        if not tau:
            continue
        labels = _random_labels(doc["fits"][0], level)
        out += ["", f" Level-{level} tau (average over the fits)"]
        lw = max(len(x) for x in labels)
        for k, lab in enumerate(labels):
            # a Laplace fit has no reliabilities (they are the linear or linearised model's)
            out.append(f"{lab:>{lw}} " + " ".join(f"{v:13.5f}" for v in tau[k])
                       + (f"   reliability {rel[k]:.3f}" if len(rel) > k else ""))
    return out


def _random_labels(fit_doc: dict, level: int) -> list[str]:
    """The random effects of a level as a fit document names them (schema 3 or 4)."""
    block = fit_doc["random_effects"][level - 2] if "random_effects" in fit_doc else \
        fit_doc["tau_pi" if level == 2 else "tau_beta"]
    return [f"{c},{lab}" for c, lab in zip(block["coefficients"], block["labels"])]


def combined_d1_lines(tests: list, notes: bool = True) -> list[str]:
    """The D1 lines of combined fits, for the other combined reports (report_hglm_combined.py)."""
    return _d1_test_lines(tests, notes)
