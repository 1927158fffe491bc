"""Plausible values and multiply imputed data sets for models of three and more levels: one certified
nested fit per outcome column (or per data set), combined by plausible.py's rules, the same functions
as two levels: Rubin's rules with Barnard-Rubin d.f. from HLM's approx. d.f. (plausible.rubin), the
D1 test of a hypothesis (plausible.combined_tests), variance components, reliabilities and the
deviance averaged over the fits. Pure functions of designs, fits and arrays: no reading or printing.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np

from ..errors import ModelError
from .plausible import RULE, combined_tests, rubin


def outcome_data(data, archive, record_positions, outcomes: list[str], level1_terms=()) -> list:
    """One LevelsData per plausible value: the design's data with each outcome column in turn (the
    records a design keeps are those complete on the first; the others must be missing on exactly the
    same records, since every fit must use the same records and units)."""
    names = archive.names(1)
    by_lower = {n.lower(): n for n in names}
    for o in outcomes:
        if any(t.name.lower() == o.lower() for t in level1_terms):
            raise ModelError(f"{o} is a plausible value of the outcome and also a level-1 predictor; remove it")
    columns = [archive.levels[0].values[names.index(by_lower[o.lower()])] for o in outcomes]
    first = np.isnan(columns[0])
    for o, col in zip(outcomes[1:], columns[1:]):
        if not np.array_equal(np.isnan(col), first):
            raise ModelError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                             "plausible values must be complete on the same records")
    pos = record_positions if record_positions is not None else np.arange(columns[0].size)
    return [replace(data, y=np.ascontiguousarray(col[pos], dtype=np.float64)) for col in columns]


def unit_sizes(design) -> tuple:
    """Per level 2..K: unit id -> the number of level-(ℓ−1) members the fit uses (records at level 2)."""
    from ..engine.nested import as_levels

    parents = as_levels(design.data).parents
    ids = design.unit_ids if hasattr(design, "unit_ids") else (design.unit2_ids, design.unit3_ids)
    return tuple(dict(zip(level_ids, np.bincount(np.asarray(par), minlength=len(level_ids)).tolist()))
                 for level_ids, par in zip(ids, parents))


def same_records(designs: list, labels: list[str]) -> None:
    """Imputed data sets differ in imputed values only: the same records in the same units at every level."""
    d0 = designs[0]
    s0 = unit_sizes(d0)
    for d, label in zip(designs[1:], labels[1:]):
        if d.n != d0.n or unit_sizes(d) != s0:
            raise ModelError(f"{label}: the fit uses {d.n} level-1 records, but {labels[0]} uses {d0.n}"
                             f"{'' if d.n != d0.n else ' in other units or unit sizes'}; imputed data sets must "
                             "hold the same records in the same units; fix the files, or pass "
                             "--allow-unequal-imputations to combine them anyway")


def _as_analysis(fit):
    """The two fields plausible.combined_tests reads, from a NestedFit."""
    return SimpleNamespace(fixed=SimpleNamespace(gamma=fit.gamma, cov=fit.cov_gamma, robust_cov=fit.cov_gamma_robust))


def combine_levels(fits: list, gamma_labels: list[str], outcomes: list[str]) -> dict:
    """The combined results of M nested fits (JSON-ready): model-based and robust fixed-effect tables by
    Rubin's rules (complete-data d.f. = HLM's approx. d.f. of each γ), and σ², each level's τ, its
    reliabilities and the deviance averaged over the fits."""
    if len(fits) < 2:
        raise ModelError("combining needs at least two fits")
    f0 = fits[0]
    est = np.array([f.gamma for f in fits])
    df = np.asarray(f0.df_gamma, dtype=float)
    tables = {}
    for kind, attr in (("model", "cov_gamma"), ("robust", "cov_gamma_robust")):
        r = rubin(est, np.array([getattr(f, attr) for f in fits]), df)
        rows = [{"gamma": label, **{key: float(r[key][k]) for key in ("estimate", "se", "t", "df", "p", "within",
                                                                       "between", "total", "riv", "lambda", "fmi")},
                 "df_complete": float(df[k])} for k, label in enumerate(gamma_labels)]
        tables[kind] = (rows, r["total_covariance"].tolist())
    K = f0.n_levels
    return {
        "m": len(fits), "rule": RULE, "outcomes": list(outcomes),
        "fixed_effects": tables["model"][0], "fixed_effects_robust": tables["robust"][0],
        "gamma_covariance": tables["model"][1], "gamma_robust_covariance": tables["robust"][1],
        "sigma2": float(np.mean([f.sigma2 for f in fits])),
        "taus": [np.mean([f.taus[level - 2] for f in fits], axis=0).tolist() for level in range(2, K + 1)],
        "reliabilities": [np.mean([f.reliabilities[level - 2] for f in fits], axis=0).tolist()
                          for level in range(2, K + 1)],
        "deviance": float(np.mean([f.deviance for f in fits])),
        "deviances": [float(f.deviance) for f in fits],
        "n_params": int(f0.n_params), "method": f0.method,
        "converged": all(f.converged for f in fits),
    }


def combined_tests_levels(fits: list, hypotheses, robust_only: bool = False) -> list[dict]:
    """Each hypothesis (rows of a contrast C and its right-hand side) by D1 over the fits, with the
    model-based and the robust covariances (robust only with sampling weights): plausible.combined_tests."""
    return combined_tests([_as_analysis(f) for f in fits], hypotheses, robust_only=robust_only)


# ---------------------------------------------------------------- the combined documents

SCHEMA_COMBINED_LEVELS = 4


def combined_json_levels(n_units: dict, fits: list, fit_docs: list, meta: dict, source: str, outcomes: list[str],
                         tests=None, weights=None) -> dict:
    """The combined JSON document (schema 4, kind "combined", hlmcli/schema/combined-levels.json):
    the combined tables and averages, and each fit's own document (`fit_docs`) under "fits"."""
    from ..version import __version__

    labels = [f.get("label", f.get("gamma")) for f in fit_docs[0]["fixed_effects"]]
    c = combine_levels(fits, labels, outcomes)
    out = {"schema": SCHEMA_COMBINED_LEVELS, "levels": fits[0].n_levels, "tool": "hlmcli", "version": __version__,
           "title": meta.get("title"), "data_source": meta.get("data_source"), "kind": "combined",
           "combining": {"source": source, "m": c["m"], "outcomes": c["outcomes"], "rule": RULE},
           "n_units": n_units, "weights": weights.to_json() if weights is not None else None}
    if meta.get("timestamp"):
        out["timestamp"] = meta["timestamp"]
    out.update({k: v for k, v in c.items() if k not in ("m", "rule", "outcomes")})
    if tests:
        out["hypothesis_tests"] = tests
    out["fits"] = list(fit_docs)
    return out
