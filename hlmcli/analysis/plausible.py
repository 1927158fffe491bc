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
from ..engine.special_functions import special

from ..errors import ModelError
from ..io.archive import unknown_column

RULE = ("Rubin's rules: mean of the estimates; total variance = within + (1 + 1/M)·between; "
        "Barnard-Rubin d.f. (complete-data d.f. = HLM's approx. d.f.); fraction of missing information as mice::pool; "
        "variance components averaged")


def rule_text(rule: str, ascii_only: bool) -> str:
    """A combining rule as printed: under --ascii its product dot (·) as '*', so the text is pure ASCII."""
    return rule.replace("·", "*") if ascii_only else rule


def outcome_columns(value: str, names: list[str], archive=None) -> list[str]:
    """PV1,PV2,... (a list) or a pattern such as 'PV*MATH' (matched case-insensitively, in file order);
    `archive`, where the names come from one, names a text column as such."""
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
                raise unknown_column(archive, part, ModelError(f"--plausible-values: {part} is not a level-1 variable"))
            found.append(by_lower[part.lower()])
    if len(found) < 2:
        raise ModelError(f"--plausible-values {value}: found {len(found)} outcome column(s); combining needs at least 2")
    if len(set(found)) != len(found):
        raise ModelError(f"--plausible-values {value}: a column is named twice")
    return found


def check_outcomes(spec, archive, outcomes: list[str]) -> None:
    """Plausible values are outcomes only, missing on the same records."""
    for o in outcomes:
        if any(t.name.lower() == o.lower() for t in spec.level1):
            raise ModelError(f"{o} is a plausible value of the outcome and also a level-1 predictor; remove it")
    first_missing = np.isnan(archive.level1_column(outcomes[0]))
    for o in outcomes[1:]:
        if not np.array_equal(np.isnan(archive.level1_column(o)), first_missing):
            raise ModelError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                             "plausible values must be complete on the same records")


def analyse_plausible(spec, archive, outcomes: list[str], df_method: str = "hlm", weights=None,
                      constraints=None) -> list:
    """One Analysis per outcome column, sharing the design, the weights and L'L; constraints
    (constrained.Constraints): each fit on X·H, given back in every γ (constrained.fit_constrained)."""
    from ..data import design as design_stage
    from .pipeline import analyse_stats, check_estimable
    from ..engine.sufficient import unit_cross_products_many

    base = replace(spec, outcome=outcomes[0])
    check_outcomes(spec, archive, outcomes)
    design = design_stage.make_design(base, archive)
    check_estimable(design)
    resolved = None
    if weights is not None and weights.any:
        from ..data.weights import resolve

        resolved = resolve(weights, archive, design)
    pos = design.record_positions
    Y = np.column_stack([archive.level1_column(o) if pos is None else archive.level1_column(o)[pos] for o in outcomes])
    units = unit_cross_products_many(design.L, Y, design.offsets, design_stage.has_overall_intercept(design),
                                     None if resolved is None else resolved.w1)
    out = []
    for m, o in enumerate(outcomes):
        d = design if m == 0 else replace(design, spec=replace(base, outcome=o), y=np.ascontiguousarray(Y[:, m]))
        w = None if resolved is None else replace(resolved, notes=[])
        # every outcome has the same Z, so the previous optimum (standardised scale) is a close start
        start = out[-1].result.certificate.G if out and out[-1].result.converged else None
        if constraints is not None:
            from .constrained import fit_constrained

            out.append(fit_constrained(d, units[m], constraints, df_method, weights=w))
        else:
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
    with np.errstate(invalid="ignore"):  # ν_com = ∞: ν is Rubin's (1987) ν_old, as mice's barnard.rubin
        dfobs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
        df = np.where(np.isinf(dfcom), dfold, dfold * dfobs / (dfold + dfobs))
    fmi = (riv + 2 / (df + 3)) / (riv + 1)
    se = np.sqrt(t_k)
    tstat = qbar / se
    p = 2.0 * special.stdtr(df, -np.abs(tstat))
    return {"m": M, "estimate": qbar, "within": u_k, "between": b_k, "total": t_k, "se": se, "t": tstat,
            "df": df, "p": p, "riv": riv, "lambda": lam, "fmi": fmi, "total_covariance": t}


def d1_test(C: np.ndarray, rhs: np.ndarray, estimates: np.ndarray, covariances: np.ndarray) -> dict:
    """The multivariate Wald test of Cγ = rhs combined over M fits: D1 of Li, Raghunathan & Rubin (1991),
    as mitml::testModels(method = "D1") computes it.

    With Q_m = Cγ_m − rhs, Ū = mean of C V_m C', B = the (M − 1)-divisor covariance of the Q_m and
    k = rows(C): r = (1 + 1/M)·tr(B Ū⁻¹)/k (the average relative increase in variance),
    D1 = Q̄'((1 + r)Ū)⁻¹Q̄/k, referred to F(k, ν) with t = k(M − 1) and
    ν = 4 + (t − 4)(1 + (1 − 2/t)/r)² when t > 4, else t(1 + 1/k)(1 + 1/r)²/2.
    That ν is Reiter's (2007) small-sample ν with infinite complete-data d.f., which is right here:
    each fit's own Wald test is a χ² test (HLM's), not an F test. For k = 1, D1 is the square of
    the t-ratio of the combined table (T = Ū + (1 + 1/M)B). When the fits agree exactly (B = 0),
    ν is infinite and D1·k is χ²(k)."""
    C = np.atleast_2d(np.asarray(C, dtype=float))
    est = np.asarray(estimates, dtype=float)
    M, k = est.shape[0], C.shape[0]
    Q = est @ C.T - np.asarray(rhs, dtype=float)
    qbar = Q.mean(axis=0)
    ubar = np.mean([C @ V @ C.T for V in np.asarray(covariances, dtype=float)], axis=0)
    dev = Q - qbar
    b = dev.T @ dev / (M - 1)
    r = float((1 + 1 / M) * np.trace(np.linalg.solve(ubar, b)) / k)
    f = float(qbar @ np.linalg.solve((1 + r) * ubar, qbar) / k)
    t = k * (M - 1)
    if r <= 0:
        nu = math.inf
    elif t > 4:
        nu = 4 + (t - 4) * (1 + (1 - 2 / t) / r) ** 2
    else:
        nu = t * (1 + 1 / k) * (1 + 1 / r) ** 2 / 2
    p = float(special.chdtrc(k, k * f)) if math.isinf(nu) else float(special.fdtrc(k, nu, f))
    return {"F": f, "df1": k, "df2": nu if math.isfinite(nu) else None, "p": p, "riv": r}


def contrast(h, p: int) -> tuple[np.ndarray, np.ndarray]:
    """A hypothesis's rows C and right side d over p γs, checked for D1: one entry per γ, independent rows."""
    C = np.array(h.rows, dtype=float)
    d = np.array(h.rhs, dtype=float) if h.rhs else np.zeros(C.shape[0])
    if C.shape[1] != p:
        raise ModelError(f"{h.label}: the contrast has {C.shape[1]} entries but the model has {p} γs")
    if np.linalg.matrix_rank(C) < C.shape[0]:
        raise ModelError(f"{h.label}: the restrictions are linearly dependent; drop the redundant ones")
    return C, d


def combined_tests(analyses: list, hypotheses, robust_only: bool = False, constraints=None) -> list[dict]:
    """--test on combined fits: each hypothesis by D1, with the model-based and the robust covariances
    (robust only for a weighted fit: the model-based covariance ignores the weights' information).
    constraints: the fits are constrained (γ = Hδ), so each Cγ = d is tested as (CH)δ = d on the free
    γs, whose covariances are not singular along the restrictions (constrained.free_hypotheses)."""
    free = None
    if constraints is not None:
        from .constrained import free_hypotheses

        free = list(constraints.basis.free)
        typed, hypotheses = list(hypotheses), free_hypotheses(constraints, hypotheses)
    est = np.array([a.fixed.gamma if free is None else a.fixed.gamma[free] for a in analyses])

    def covariances(attr):
        covs = np.array([getattr(a.fixed, attr) for a in analyses])
        return covs if free is None else covs[:, free][:, :, free]

    out = []
    for i, h in enumerate(hypotheses):
        C, d = contrast(h, est.shape[1])
        entry = {"label": h.label, "contrast": C.tolist() if free is None else [list(r) for r in typed[i].rows],
                 "rhs": d.tolist(), "statistic": "D1"}
        for kind, attr in (("model", "cov"), ("robust", "robust_cov")):
            if kind == "model" and robust_only:
                entry[kind] = None
                continue
            entry[kind] = d1_test(C, d, est, covariances(attr))
        out.append(entry)
    return out


def same_records(analyses: list, labels: list[str]) -> None:
    """Imputed data sets differ in imputed values only: the same records in the same units. A file
    with fewer records (a deleted or lost block) would be combined as if it were another draw."""
    def sizes(design) -> dict:  # unit id -> records used; the files' row order may differ
        return dict(zip(design.unit_ids, np.diff(design.offsets).tolist()))

    d0 = analyses[0].design
    for a, label in zip(analyses[1:], labels[1:]):
        d = a.design
        if d.n != d0.n or d.n_units != d0.n_units or sizes(d) != sizes(d0):
            raise ModelError(f"{label}: the fit uses {d.n} level-1 records in {d.n_units} units, but {labels[0]} "
                             f"uses {d0.n} in {d0.n_units}{'' if d.n != d0.n or d.n_units != d0.n_units else ' (other units or unit sizes)'}; "
                             "imputed data sets must hold the same records; fix the files, or pass "
                             "--allow-unequal-imputations to combine them anyway")


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
        **constraint_records(a0),
    }


def constraint_records(a0) -> dict:
    """Constrained fits (--constrain): the restrictions, as each fit has them, and no test of the ties:
    each fit's likelihood-ratio statistic is not combined (a deviance difference has no Rubin's rule)."""
    record = a0.extras.get("constraints")
    if record is None:
        return {}
    return {"constraints": record,
            "constraint_test": {"chi2": None, "df": record["n_restrictions"], "p": None, "refitted_ml": False,
                                "note": "no test: the likelihood-ratio tests of the ties are not combined over the "
                                        "fits (a deviance difference has no Rubin's rule); --test gives D1 Wald "
                                        "tests of the free fixed effects"}}
