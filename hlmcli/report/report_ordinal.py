"""An ordinal outcome's parts of HLM 7's HGLM text and of the JSON (report_hglm.py calls them): the
level-1 block, the thresholds δ(m) after γ, the R call, and the JSON's thresholds and clmm block.

Printed parametrisation (HLM 7's, Raudenbush & Bryk 2002 §10.5): F⁻¹(P(Y ≤ m | u)) = η + δ(2) + ... + δ(m),
η = x'γ + z'u, γ00 the first threshold; ordinal::clmm's θ_m − x'β is the same model with θ_m = γ00 +
δ(2) + ... + δ(m) and β = −γ (analysis/ordinal_run.py)."""

from __future__ import annotations

import numpy as np

from ..analysis import inference

RATIO_NAMES = {"logit": ("odds_ratio", "Odds Ratio"), "cloglog": ("hazard_ratio", "Hazard Ratio"), "probit": (None, None)}


def is_ordinal(a) -> bool:
    return hasattr(a, "delta")


def link_lines(spec, sym) -> list[str]:
    """HLM 7's ordinal level-1 block, with the link's function of the cumulative probability."""
    b, y = sym.beta, spec.outcome.upper()[:8]
    phi = "phi'" if sym.ascii else "φ'"
    eta = "eta'" if sym.ascii else "η'"
    d = "d" if sym.ascii else "δ"
    link = spec.options.link or "logit"
    f = {"logit": f"log[{phi}mij/(1 - {phi}mij)]", "probit": f"Phi^-1[{phi}mij]" if sym.ascii else f"Φ⁻¹[{phi}mij]",
         "cloglog": f"log[-log(1 - {phi}mij)]"}[link]
    first = "gamma00" if sym.ascii else "γ00"
    return [f"    Prob[{y}ij <= m|{b}j] = {phi}mij", f"    {f} = {eta}mij",
            f"    {eta}mij = {'eta' if sym.ascii else 'η'}ij + {d}(2) + ... + {d}(m)  ({d}(1) = 0: {first} is the "
            "first threshold)"]


def clmm_call(spec, id_name: str, nodes: int | None = None) -> str:
    """The same model in R: ordinal::clmm."""
    from .report import r_terms

    fixed, rand = r_terms(spec)
    opts = spec.options
    rhs = " + ".join([t for t in fixed if t != "1"] or ["1"])
    random = f"(1 | {id_name})" if rand == ["1"] else f"({' + '.join(rand)} | {id_name})"
    nagq = "" if opts.estimation in ("laplace", "pql") else f", nAGQ = {nodes or opts.quadrature_points or 10}"
    link = opts.link or "logit"
    # clmm's random-effect fits take "loglog" for the F(x) = 1 − exp(−exp(x)) that clm calls cloglog
    # (tests/reference_scripts/ordinal_clmm.R shows it by numerical integration)
    link_arg = "" if link == "logit" else f', link = "{"loglog" if link == "cloglog" else link}"'
    return f"ordinal::clmm(factor({spec.outcome}, ordered = TRUE) ~ {rhs} + {random}, data = d{link_arg}{nagq})"


def distribution_line(a) -> str:
    return (f" Distribution at Level-1: ordinal, {a.categories.size} categories "
            f"({', '.join(f'{c:g}' for c in a.categories)}), {a.link} link")


def threshold_rows(a, robust: bool, sym) -> list[list[str]]:
    """HLM 7's fixed-effect rows of the thresholds, after γ's (no ratio rows: exp(δ) compares two
    cumulative odds, not two groups). d.f. as γ00's."""
    from .report import hlm_p

    c = a.delta_robust_cov if robust else a.delta_cov
    se = np.sqrt(np.diag(c))
    t = a.delta / se
    df = a.df[0]
    p = inference.two_sided_p(t, np.full(t.shape, df))
    d = "d" if sym.ascii else "δ"
    return [[f"For  THRESHOLD{m}, {d}({m})", f"{a.delta[k]:.6f}", f"{se[k]:.6f}", f"{t[k]:.3f}", f"{df:.0f}", hlm_p(p[k])]
            for k, m in enumerate(range(2, 2 + a.delta.size))]


def add_json(a, out: dict) -> dict:
    """The ordinal keys of the JSON: the ratio named for the link, the categories, the thresholds with
    both covariances' SEs, and the same fit in clmm's parametrisation."""
    ratio_key = RATIO_NAMES[a.link][0]
    old = a.data.family.ratio_name
    for row in out["fixed_effects"]:
        value = row.pop(old, None)
        if ratio_key is None:
            for k in ("ci_low", "ci_high", "robust_ci_low", "robust_ci_high"):
                row.pop(k, None)
        else:
            row[ratio_key] = value
    df = float(a.df[0])
    cols = []
    for robust in (False, True):
        se = np.sqrt(np.diag(a.delta_robust_cov if robust else a.delta_cov))
        cols.append((se, a.delta / se, inference.two_sided_p(a.delta / se, np.full(se.shape, df))))
    out["categories"] = [float(c) for c in a.categories]
    out["thresholds"] = [{"threshold": f"δ({m})", "name": f"THRESHOLD{m}", "estimate": float(a.delta[k]),
                          "se": float(cols[0][0][k]), "t": float(cols[0][1][k]), "df": df, "p": float(cols[0][2][k]),
                          "robust_se": float(cols[1][0][k]), "robust_t": float(cols[1][1][k]),
                          "robust_p": float(cols[1][2][k])} for k, m in enumerate(range(2, 2 + a.delta.size))]
    out["threshold_covariance"] = a.delta_cov.tolist()
    theta = a.gamma[0] + np.concatenate([[0.0], np.cumsum(a.delta)])
    out["clmm"] = {"convention": "link P(Y <= m) = theta_m - x'beta - u: theta_m = γ00 + δ(2) + ... + δ(m), "
                                 "beta = -γ (the slopes)",
                   "theta": theta.tolist(), "beta": (-a.gamma[1:]).tolist()}
    out["parametrisation"] = ("HLM 7: link P(Y <= m | u) = η + δ(2) + ... + δ(m), η = γ00 + x'γ + u; a positive γ "
                              "makes the lower categories more likely")
    out["start"] = "glm" if a.ml is not None else None  # PQL starts from the data (engine/categorical_pql.py)
    return out
