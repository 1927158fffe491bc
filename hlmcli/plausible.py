"""Plausible values and multiply imputed data: one fit per outcome (or per data set), combined with
Rubin's rules.

- Point estimate: the mean of the M estimates, q̄.
- Within-imputation variance ū (mean of the M covariance matrices), between-imputation variance
  b = Σ(q_m − q̄)(q_m − q̄)'/(M − 1), total T = ū + (1 + 1/M)b.
- Per coefficient: riv = (1 + 1/M)b/ū (relative increase in variance), λ = (1 + 1/M)b/T,
  Barnard–Rubin (1999) d.f. ν = ν_old·ν_obs/(ν_old + ν_obs) with ν_old = (M − 1)/λ²,
  ν_obs = (ν_com + 1)/(ν_com + 3)·ν_com·(1 − λ), ν_com the complete-data d.f. (HLM's approx.
  d.f. of that γ), and the fraction of missing information fmi = (riv + 2/(ν + 3))/(riv + 1).
  λ is floored at 1e-4 as mice::pool does, so ν stays finite when b = 0.
- Variance components (σ², τ), the deviance and the reliabilities are averaged over the M fits.

The plausible values share one design: the per-unit cross-products of every outcome are computed in
one pass (sufficient.unit_cross_products_many), so ten plausible values cost one read of the data.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import replace

import numpy as np
from scipy import special

from .errors import ModelError

RULE = ("Rubin's rules: mean of the estimates; total variance = within + (1 + 1/M)·between; "
        "Barnard-Rubin d.f. (complete-data d.f. = HLM's approx. d.f.); fraction of missing information as mice::pool; "
        "variance components averaged")


def outcome_columns(value: str, names: list[str]) -> list[str]:
    """PV1,PV2,... (a list) or a pattern such as 'PV*MATH' (matched case-insensitively, in file order)."""
    by_lower = {n.lower(): n for n in names}
    if any(ch in value for ch in "*?["):
        found = [n for n in names if fnmatch.fnmatchcase(n.lower(), value.lower())]
        if not found:
            raise ModelError(f"--plausible-values {value}: no level-1 variable matches the pattern")
    else:
        found = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if part.lower() not in by_lower:
                raise ModelError(f"--plausible-values: {part} is not a level-1 variable")
            found.append(by_lower[part.lower()])
    if len(found) < 2:
        raise ModelError(f"--plausible-values {value}: found {len(found)} outcome column(s); combining needs at least 2")
    if len(set(found)) != len(found):
        raise ModelError(f"--plausible-values {value}: a column is named twice")
    return found


def analyse_plausible(spec, archive, outcomes: list[str], df_method: str = "hlm", weights=None) -> list:
    """One Analysis per outcome column, sharing the design, the weights and L'L."""
    from . import design as design_stage
    from .pipeline import analyse_stats, check_estimable, has_overall_intercept
    from .sufficient import unit_cross_products_many

    base = replace(spec, outcome=outcomes[0])
    for o in outcomes:
        if any(t.name.lower() == o.lower() for t in spec.level1):
            raise ModelError(f"{o} is a plausible value of the outcome and also a level-1 predictor; remove it")
    first_missing = np.isnan(archive.level1_column(outcomes[0]))
    for o in outcomes[1:]:
        if not np.array_equal(np.isnan(archive.level1_column(o)), first_missing):
            raise ModelError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                             "plausible values must be complete on the same records")
    design = design_stage.make_design(base, archive)
    check_estimable(design)
    resolved = None
    if weights is not None and weights.any:
        from .weights import resolve

        resolved = resolve(weights, archive, design)
    pos = design.record_positions
    Y = np.column_stack([archive.level1_column(o) if pos is None else archive.level1_column(o)[pos] for o in outcomes])
    units = unit_cross_products_many(design.L, Y, design.offsets, has_overall_intercept(design),
                                     None if resolved is None else resolved.w1)
    out = []
    for m, o in enumerate(outcomes):
        d = design if m == 0 else replace(design, spec=replace(base, outcome=o), y=np.ascontiguousarray(Y[:, m]))
        w = None if resolved is None else replace(resolved, notes=[])
        # every outcome has the same Z, so the previous optimum (standardised scale) is a close start
        start = out[-1].result.certificate.G if out and out[-1].result.converged else None
        out.append(analyse_stats(d, units[m], df_method, w, start=start))
    return out


def rubin(estimates: np.ndarray, covariances: np.ndarray, dfcom: np.ndarray) -> dict:
    """Rubin's rules for M fits of p coefficients: estimates (M, p), covariances (M, p, p), complete-data d.f. (p,)."""
    est = np.asarray(estimates, dtype=float)
    M = est.shape[0]
    if M < 2:
        raise ModelError("combining needs at least two fits")
    qbar = est.mean(axis=0)
    ubar = np.asarray(covariances, dtype=float).mean(axis=0)
    dev = est - qbar
    b = dev.T @ dev / (M - 1)
    t = ubar + (1 + 1 / M) * b
    u_k, b_k, t_k = np.diag(ubar), np.diag(b), np.diag(t)
    riv = (1 + 1 / M) * b_k / u_k
    lam = np.maximum((1 + 1 / M) * b_k / t_k, 1e-4)
    dfcom = np.asarray(dfcom, dtype=float)
    dfold = (M - 1) / lam ** 2
    dfobs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
    df = dfold * dfobs / (dfold + dfobs)
    fmi = (riv + 2 / (df + 3)) / (riv + 1)
    se = np.sqrt(t_k)
    tstat = qbar / se
    p = 2.0 * special.stdtr(df, -np.abs(tstat))
    return {"m": M, "estimate": qbar, "within": u_k, "between": b_k, "total": t_k, "se": se, "t": tstat,
            "df": df, "p": p, "riv": riv, "lambda": lam, "fmi": fmi, "total_covariance": t}


def combine(analyses: list, labels: list[str] | None = None) -> dict:
    """The combined results of M analyses: model-based and robust fixed-effect tables and averaged
    variance components (JSON-ready)."""
    a0 = analyses[0]
    d = a0.design
    df = a0.fixed.df
    est = np.array([a.fixed.gamma for a in analyses])
    tables = {}
    for kind, attr in (("model", "cov"), ("robust", "robust_cov")):
        r = rubin(est, np.array([getattr(a.fixed, attr) for a in analyses]), df)
        rows = []
        for k, f in enumerate(d.fixed):
            rows.append({"coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
                         **{key: float(r[key][k]) for key in ("estimate", "se", "t", "df", "p", "within", "between",
                                                               "total", "riv", "lambda", "fmi")},
                         "df_complete": float(df[k])})
        tables[kind] = {"fixed_effects": rows, "total_covariance": r["total_covariance"].tolist()}
    names = d.spec.coefficient_names()
    rand_q = [int(q) for q in a0.stats.random]
    tau = np.mean([a.result.tau for a in analyses], axis=0)
    return {
        "m": len(analyses), "rule": RULE, "outcomes": labels or [a.design.spec.outcome for a in analyses],
        "fixed_effects": tables["model"]["fixed_effects"], "fixed_effects_robust": tables["robust"]["fixed_effects"],
        "gamma_covariance": tables["model"]["total_covariance"],
        "gamma_robust_covariance": tables["robust"]["total_covariance"],
        "sigma2": float(np.mean([a.result.sigma2 for a in analyses])),
        "tau": tau.tolist(), "random_coefficients": [names[q] for q in rand_q],
        "reliability": {names[q]: float(np.mean([a.variance.reliability[k] for a in analyses]))
                        for k, q in enumerate(rand_q)},
        "deviance": float(np.mean([a.result.deviance for a in analyses])),
        "deviances": [float(a.result.deviance) for a in analyses],
        "n_params": a0.result.n_params, "method": a0.result.method,
        "converged": all(a.result.converged for a in analyses),
    }


def combined_json(analyses: list, meta: dict, source: str, full_output: bool, labels=None) -> dict:
    from . import __version__
    from .report import fit_json, model_record

    a0 = analyses[0]
    c = combine(analyses, labels)
    out = {"schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
           "data_source": meta.get("data_source"), "kind": "combined", "combining": {
               "source": source, "m": c["m"], "outcomes": c["outcomes"], "rule": RULE},
           "n_level1": a0.design.n, "n_level2": a0.design.n_units, "model": model_record(a0.design.spec, meta),
           "weights": a0.weights.to_json() if a0.weights is not None else None}
    out.update({k: v for k, v in c.items() if k not in ("m", "rule", "outcomes")})
    out["fits"] = [fit_json(a, meta) for a in analyses]
    return out


def combined_text(analyses: list, meta: dict, sym, source: str, full_output: bool, labels=None) -> str:
    from . import __version__
    from .report import _table, fit_text, hlm_name, hlm_p, model_summary
    from .weights import weighting_lines

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
    w(f"Problem Title: {meta.get('title') or 'no title'}")
    w("")
    w(f" The data source for this run  = {meta.get('data_source')}")
    w(f" The maximum number of level-1 units = {d.n}")
    w(f" The maximum number of level-2 units = {d.n_units}")
    w("")
    w(f" Method of estimation: {'restricted maximum likelihood' if c['method'] == 'REML' else 'full maximum likelihood'}")
    out += weighting_lines(a0.weights)
    w("")
    w(f" The {'outcome variables are ' if labels is None else 'data sets are'}  {', '.join(c['outcomes'] if labels else [hlm_name(o) for o in c['outcomes']])}")
    w("")
    out += model_summary(d.spec, sym)
    w("")
    w(" Combining rule: " + RULE)
    names = c["random_coefficients"]
    w("")
    w(f" {sym.sigma2} (average over the fits) = {c['sigma2']:12.5f}")
    w("")
    w(f"{sym.tau} (average over the fits)")
    labels = [f"{hlm_name(n)}" for n in names]
    lw = max(len(x) for x in labels) if labels else 0
    for k, lab in enumerate(labels):
        w(f"{lab:>{lw}} " + " ".join(f"{v:13.5f}" for v in c["tau"][k]))
    for kind in ("fixed_effects", "fixed_effects_robust"):
        w("")
        w("Final estimation of fixed effects, combined over the fits")
        if kind.endswith("robust"):
            w("(with robust standard errors)")
            if a0.weights is not None:
                w("(sandwich clustered on level-2 units: the standard errors to report with sampling weights)")
        rows = []
        prev = None
        for row, f in zip(c[kind], d.fixed):
            if f.q != prev:
                rows.append([f"For {hlm_name(f.coefficient)}"])
                prev = f.q
            rows.append([f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}", f"{row['estimate']:.6f}", f"{row['se']:.6f}",
                         f"{row['t']:.3f}", f"{row['df']:.2f}", hlm_p(row['p']), f"{row['fmi']:.3f}"])
        out += _table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value", "FMI"],
                      rows, [30, 12, 14, 9, 12, 8, 6])
    w("(d.f.: Barnard-Rubin, from HLM's approx. d.f.; FMI: fraction of missing information)")
    w("")
    w("Final estimation of variance components (average over the fits)")
    rows = []
    for k, n in enumerate(names):
        v = c["tau"][k][k]
        rows.append([f"{hlm_name(n)}", f"{math.sqrt(max(v, 0)):.5f}", f"{v:.5f}"])
    rows.append(["level-1, r", f"{math.sqrt(c['sigma2']):.5f}", f"{c['sigma2']:.5f}"])
    out += _table(["Random Effect", "Standard Deviation", "Variance Component"], rows, [26, 18, 18])
    w("")
    w(f" Deviance (average over the fits) = {c['deviance']:.6f}")
    w(f" Number of estimated parameters   = {c['n_params']}")
    text = "\n".join(line.rstrip() for line in out) + "\n"
    if full_output:
        for m, a in enumerate(analyses, start=1):
            text += f"\n{'=' * 78}\nFit {m} of {c['m']}: {c['outcomes'][m - 1]}\n{'=' * 78}\n"
            text += fit_text(a, meta, sym)
    return text
