"""Cross-classified fits combined over plausible values or imputed data sets: one certified fit per
outcome column (--plausible-values) or data set (--imputed), pooled by Rubin's rules (plausible.rubin,
the nested fits' rules; D1 for --test, plausible.d1_test).

The complete-data d.f. ν_com of each fixed effect: with --df satterthwaite, the mean over the M fits
of its Satterthwaite d.f. (they differ a little between fits, as the variance components do), and the
Barnard-Rubin ν; without --df, ν_com = ∞, so ν = (M − 1)/λ² (Rubin 1987, mice's barnard.rubin with
dfcom = Inf), which gives the fraction of missing information; the d.f. and p-values are then left out,
as a single crossed fit leaves them out (HCM2's own d.f. rule is not published). σ², each factor's τ
and the deviance are averaged over the fits."""

from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .plausible import d1_test, rubin

RULE = ("Rubin's rules: mean of the estimates; total variance = within + (1 + 1/M)·between; Barnard-Rubin d.f. "
        "from the mean Satterthwaite d.f. (--df satterthwaite; otherwise complete-data d.f. infinite, and no d.f. or "
        "p-values are printed); fraction of missing information as mice::pool; variance components averaged")


def same_crossed_records(analyses: list, labels: list[str]) -> None:
    """Imputed data sets differ in imputed values only: the same number of records in the same groups of
    each factor (group ids and sizes)."""
    def sizes(a) -> list[dict]:
        return [dict(zip(t.labels, np.bincount(t.codes, minlength=len(t.labels)).tolist())) for t in a.design.terms]

    n0, s0 = analyses[0].fit.n, sizes(analyses[0])
    for a, label in zip(analyses[1:], labels[1:]):
        if a.fit.n != n0 or sizes(a) != s0:
            raise ModelError(f"{label}: the fit uses {a.fit.n} records in groups {dict(zip(a.fit.factors, a.fit.n_groups))}"
                             f", but {labels[0]} uses {n0} in "
                             f"{dict(zip(analyses[0].fit.factors, analyses[0].fit.n_groups))} (or other group sizes); "
                             "imputed data sets must hold the same records; fix the files, or pass "
                             "--allow-unequal-imputations to combine them anyway")


def combine_crossed(analyses: list) -> dict:
    """Rubin's rules over M cross-classified fits: the pooled fixed effects (with ν, p when the fits
    have Satterthwaite's d.f.), the averaged variance components and deviance."""
    a0 = analyses[0]
    for a in analyses[1:]:
        if a.design.fixed_names != a0.design.fixed_names or a.fit.factors != a0.fit.factors:
            raise ModelError("the fits to combine are not of one model (their fixed effects or factors differ)")
    with_df = a0.df is not None
    est = np.array([a.fit.gamma for a in analyses])
    covs = np.array([a.fit.gamma_cov for a in analyses])
    dfcom = np.mean([a.df for a in analyses], axis=0) if with_df else np.full(est.shape[1], np.inf)
    r = rubin(est, covs, dfcom)
    rows = []
    for k, name in enumerate(a0.design.fixed_names):
        row = {"label": f"THETA{k}", "name": name, "term": "(Intercept)" if name == "INTRCPT" else name,
               **{key: float(r[key][k]) for key in ("estimate", "se", "t", "within", "between", "total", "riv",
                                                     "lambda", "fmi")},
               "df": float(r["df"][k]) if with_df else None, "p_value": float(r["p"][k]) if with_df else None,
               "df_complete": float(dfcom[k]) if with_df else None}
        rows.append(row)
    random = []
    for b, (factor, cols) in enumerate(zip(a0.fit.factors, a0.fit.columns)):
        tau = np.mean([a.fit.taus[b] for a in analyses], axis=0)
        random.append({"factor": factor, "groups": int(a0.fit.n_groups[b]), "coefficients": list(cols),
                       "matrix": tau.tolist()})
    return {"m": len(analyses), "rule": RULE, "fixed_effects": rows, "gamma_covariance": r["total_covariance"].tolist(),
            "sigma2": float(np.mean([a.fit.sigma2 for a in analyses])), "random_effects": random,
            "deviance": float(np.mean([a.fit.deviance for a in analyses])),
            "deviances": [float(a.fit.deviance) for a in analyses], "n_params": int(a0.n_params),
            "method": a0.fit.method, "df_method": a0.df_method, "converged": all(a.certified for a in analyses)}


def combined_crossed_tests(analyses: list, hypotheses) -> list[dict]:
    """--test on combined crossed fits: each hypothesis by D1 over the model-based covariances (a
    crossed fit has no cluster for a sandwich, so the robust entry is null)."""
    est = np.array([a.fit.gamma for a in analyses])
    covs = np.array([a.fit.gamma_cov for a in analyses])
    out = []
    for h in hypotheses:
        C = np.array(h.rows, dtype=float)
        rhs = np.array(h.rhs, dtype=float)
        if np.linalg.matrix_rank(C) < C.shape[0]:
            raise ModelError(f"{h.label}: the restrictions are linearly dependent; drop the redundant ones")
        out.append({"label": h.label, "contrast": C.tolist(), "rhs": rhs.tolist(), "statistic": "D1",
                    "model": d1_test(C, rhs, est, covs), "robust": None})
    return out
