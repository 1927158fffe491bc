"""HLM 7's HMLM tables for a structured within-person covariance (analysis/hmlm.py): Δ, the implied
marginal covariance, the fixed effects under that structure, the check of its optimum, and the comparison
with the homogeneous model printed above them."""

from __future__ import annotations

import numpy as np

_TITLE = {"unrestricted": "Unrestricted model (Δ free; the random effects are part of Δ)",
          "homogeneous": "Homogeneous σ² model (Δ = σ² I), by the HMLM engine",
          "heterogeneous": "Heterogeneous σ² model (Δ = diag(σ²_1, ..., σ²_T))",
          "ar1": "First-order autoregressive model (Δ_st = σ² ρ^|s-t|, s, t the occasion indices)"}


def _matrix_lines(name: str, m, labels) -> list[str]:
    m = np.asarray(m, dtype=float)
    out = [f" {name}", " " * 12 + "".join(f"{lab:>14}" for lab in labels)]
    for lab, row in zip(labels, m):
        out.append(f" {lab:>10} " + "".join(f"{v:14.5f}" for v in row))
    return out


def structured_model_lines(v: dict, sym, hlm_name, hlm_p, text_table, extras_text) -> list[str]:
    """The structured model's block (level1_covariance_lines) and its own --test and --compare-deviance
    (analysis/hmlm.structured_tests), at two levels and three: extras_text is report.extras_text."""
    out = level1_covariance_lines(v, sym, hlm_name, hlm_p, text_table)
    if "hypothesis_tests" in v or "deviance_test" in v:
        out += ["", f"Tests of the {v['structure']} model"] + extras_text(
            {k: v[k] for k in ("deviance_test", "hypothesis_tests") if k in v}, sym)
    return out


def level1_covariance_lines(v: dict, sym, hlm_name, hlm_p, text_table) -> list[str]:
    """The block printed after the homogeneous model's tables (report.fit_text)."""
    title = _TITLE[v["structure"]]
    if sym.ascii:
        title = title.replace("Δ", "Delta").replace("σ²", "sigma2").replace("ρ", "rho")
    delta = "Delta" if sym.ascii else "Δ"
    labels = [f"{v['occasion']}={t:g}" for t in v["occasions"]]
    out = ["", "-" * 78, f"HMLM: {title}", f" Occasions: {v['occasion']} = "
           + ", ".join(f"{t:g}" for t in v["occasions"]) + f" (T = {len(v['occasions'])}); {v['method']}"]
    c = v["check"]
    if c["converged"]:
        out.append(f" Optimum checked locally: the deviance's Hessian over the variance parameters is positive "
                   f"definite and Newton predicts a decrease below {1e-8:.0E} (not a global certificate)")
    else:
        out += [" The point reached is NOT a checked optimum:"] + [f" - {f}" for f in c["failed"]]
    out.append("")
    out += _matrix_lines(f"{delta} (within-person covariance)", v["delta"], labels)
    if v.get("rho") is not None:
        out.append(f" {'rho' if sym.ascii else 'ρ'} = {v['rho']:.5f}, {sym.sigma2} = {v['sigma2']:.5f}")
    if v["tau"]:
        out.append("")
        out += _matrix_lines(sym.tau + (" (persons)" if v.get("levels") == 3 else ""), v["tau"],
                             [f"{'r' if v.get('levels') == 3 else 'u'}{k}" for k in range(len(v["tau"]))])
    if v.get("tau_level3"):
        out.append("")
        out += _matrix_lines(sym.tau + " (level-3 units)", v["tau_level3"], [f"u{k}" for k in range(len(v["tau_level3"]))])
    out += _variance_parameter_lines(v, sym, labels, text_table)
    out.append("")
    out += _matrix_lines("Marginal covariance Z tau Z' + " + delta + " (Z at each occasion's mean)",
                         v["marginal"], labels)
    out += ["", "Final estimation of fixed effects (" + v["structure"] + ")"]
    gamma = lambda f: f["gamma"].replace("γ", sym.gamma)  # noqa: E731  (--ascii: G00)
    rows = [[f"{hlm_name(f['coefficient'])}, {hlm_name(f['predictor'])}, {gamma(f)}" if f["coefficient"] else
             gamma(f), f"{f['estimate']:.6f}",
             f"{f['se']:.6f}", f"{f['t']:.3f}", f"{f['df']:.0f}", hlm_p(f["p"])] for f in v["fixed_effects"]]
    out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "d.f.", "p-value"], rows,
                      [30, 12, 14, 9, 6, 8])
    out += ["", f" Deviance = {v['deviance']:.6f}, number of estimated parameters = {v['n_params']}"]
    t = v.get("test")
    if t:
        out += ["", "Summary of Model Fit",
                f" 1. Homogeneous {sym.sigma2}    parameters = {t['params_homogeneous']:3d}   deviance = "
                f"{t['deviance_homogeneous']:.6f}",
                f" 2. {v['structure']:<15} parameters = {t['params']:3d}   deviance = {t['deviance']:.6f}"]
        if t["df"] > 0:
            out.append(f" Model 1 vs Model 2: {sym.chi2} statistic = {t['chi2']:.5f}, d.f. = {t['df']}, "
                       f"p-value = {hlm_p(t['p'])}")
        else:
            out.append(" (the models are not nested by their parameter counts: no likelihood-ratio test)")
    else:
        out.append(f" (the one engine's deviance of this model: {v['homogeneous_engine_deviance']:.6f})")
    call = _NLME[v["structure"]].format(occ=v["occasion"], method="ML" if v["method"] == "ML" else "REML")
    if v.get("levels") == 3:
        call = call.replace("random = <random>", "random = list(<level-3 id> = ..., <person id> = ...)").replace(
            "| <id>", "| <level-3 id>/<person id>")
    out += ["", " In R: " + call]
    return out


_NLME = {"unrestricted": "nlme::gls(<fixed>, correlation = corSymm(form = ~ {occ} | <id>), weights = varIdent(form = "
                         "~ 1 | {occ}), method = \"{method}\") ({occ} as occasion indices 1..T)",
         "homogeneous": "nlme::lme(<fixed>, random = <random>, method = \"{method}\")",
         "heterogeneous": "nlme::lme(<fixed>, random = <random>, weights = varIdent(form = ~ 1 | {occ}), "
                          "method = \"{method}\")",
         "ar1": "nlme::lme(<fixed>, random = <random>, correlation = corAR1(form = ~ {occ} | <id>), method = "
                "\"{method}\") ({occ} as occasion indices 1..T)"}


def combined_level1_covariance_lines(c: dict, sym, hlm_p, text_table) -> list[str]:
    """The structured fits combined over plausible values or data sets (analysis/hmlm.combine_structured):
    Δ, τ and the marginal covariance averaged, the γ table by Rubin's rules, the average deviance."""
    title = _TITLE[c["structure"]]
    delta = "Delta" if sym.ascii else "Δ"
    if sym.ascii:
        title = title.replace("Δ", "Delta").replace("σ²", "sigma2").replace("ρ", "rho")
    labels = [f"{c['occasion']}={t:g}" for t in c["occasions"]]
    out = ["", "-" * 78, f"HMLM: {title}, combined over the {c['m']} fits",
           f" Occasions: {c['occasion']} = " + ", ".join(f"{t:g}" for t in c["occasions"])
           + f" (T = {len(c['occasions'])}); {c['method']}"]
    if not c["converged"]:
        out.append(" At least one fit's point is NOT a checked optimum (see each fit with --full-output)")
    out.append("")
    out += _matrix_lines(f"{delta} (within-person covariance, average over the fits)", c["delta"], labels)
    if c.get("rho") is not None:
        out.append(f" {'rho' if sym.ascii else 'ρ'} = {c['rho']:.5f}, {sym.sigma2} = {c['sigma2']:.5f} (averages)")
    if c["tau"]:
        out.append("")
        out += _matrix_lines(sym.tau + " (average over the fits)", c["tau"], [f"u{k}" for k in range(len(c["tau"]))])
    out.append("")
    out += _matrix_lines("Marginal covariance Z tau Z' + " + delta + " (average over the fits)", c["marginal"], labels)
    out += ["", f"Final estimation of fixed effects ({c['structure']}), combined over the fits"]
    rows = [[f["gamma"].replace("γ", sym.gamma), f"{f['estimate']:.6f}", f"{f['se']:.6f}", f"{f['t']:.3f}", f"{f['df']:.2f}",
             hlm_p(f["p"]), f"{f['fmi']:.3f}"] for f in c["fixed_effects"]]
    out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value", "FMI"],
                      rows, [30, 12, 14, 9, 12, 8, 6])
    out.append("(model-based standard errors: the structured fits have no sandwich covariance; d.f.: Barnard-Rubin)")
    out += ["", f" Deviance (average over the fits) = {c['deviance']:.6f}, number of estimated parameters = "
                f"{c['n_params']}"]
    return out



def _variance_parameter_lines(v: dict, sym, labels, text_table) -> list[str]:
    """τ's and Δ's parameters with their standard errors (analysis/hmlm.variance_parameter_table)."""
    table = v.get("variance_parameters")
    if not table:
        return []
    delta, rho = ("Delta", "rho") if sym.ascii else ("Δ", "ρ")

    def pair(rest: str) -> list[int]:  # "21" or, from index 10 on, "10_1" (analysis/hmlm.variance_parameter_table)
        return [int(i) for i in rest.split("_")] if "_" in rest else [int(i) for i in rest]

    def label(name: str) -> str:
        if name.startswith("tau3_"):  # HMLM2's level-3 units
            return f"{sym.tau}{name[5:]} (level-3 units)"
        if name.startswith("tau"):
            return sym.tau + name[3:]
        if name.startswith("delta_"):
            s, t = pair(name[6:])
            return f"{delta}({labels[s - 1]},{labels[t - 1]})"
        if name.startswith("sigma2_"):
            return f"{sym.sigma2}({labels[int(name[7:]) - 1]})"
        return sym.sigma2 if name == "sigma2" else rho

    rows = [[label(p["parameter"]), f"{p['estimate']:.5f}", f"{p['se']:.5f}"] for p in table]
    return ["", " Covariance parameters (standard errors by the delta method from the deviance's Hessian)"] + \
        text_table(["Parameter", "Estimate", "Standard error"], rows, [26, 14, 16])
