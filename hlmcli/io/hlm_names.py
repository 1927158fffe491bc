"""HLM 7's column names for the residual files (`--hlm-names`), so SPSS syntax written for HLM 7's
residual files runs on ours.

HLM names a level-2 column by a two-letter prefix and the coefficient's name, cut to 8 characters
(SPSS's old limit): EBINTRCP, EBSES (EB residuals û), OLINTRCP (OLS residuals: the unit's OLS
coefficient minus its fitted value), FVINTRCP (fitted values, the level-2 prediction), ECINTRCP (EB
coefficients = FV + EB), PV0_0 (posterior variance of û0), then MDIST, the Mahalanobis distance.
The level-1 file has L1RESID and FITVAL. Every column also gets a label saying what it is (written
as SPSS variable labels in .sav files). README.md's section on residual files lists the names that
could not be confirmed against a file written by HLM 7.
"""

from __future__ import annotations

HLM_WIDTH = 8


def hlm_name(name: str) -> str:
    return name.upper()[:HLM_WIDTH]


def _unique(names: list[str]) -> list[str]:
    """Names cut to 8 characters can collide (SESxMEAN1, SESxMEAN2): later ones end in a digit."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 1
        while candidate in seen:
            tail = str(k)
            candidate = name[:HLM_WIDTH - len(tail)] + tail
            k += 1
        seen.add(candidate)
        out.append(candidate)
    return out


def level2_columns(table, coefficient_names: list[str], id_name: str):
    """The level-2 residual table (residual_files.level2_table or the HGLM one) with HLM 7's names
    and order: id, NJ, MDIST, EB..., OL..., FV..., EC..., PVk_k, level-2 variables. Returns the
    table and {column: label}."""
    import numpy as np
    import pandas as pd

    random = [n for n in coefficient_names if f"u_{n}" in table.columns]
    cols: dict[str, object] = {}
    labels: dict[str, str] = {}

    def put(name: str, values, label: str) -> None:
        cols[name] = values
        labels[name] = label

    put(hlm_name(id_name), table["id"], f"Level-2 unit id ({id_name})")
    put("NJ", table["nj"], "Number of level-1 records in the unit")
    if "mdist" in table.columns:
        put("MDIST", table["mdist"], "Mahalanobis distance of the unit's EB residuals")
    for n in random:
        put(f"EB{n}", table[f"u_{n}"], f"EB residual of {n}")
    for n in random:
        if f"ols_{n}" in table.columns:  # OLS residual: the unit's OLS coefficient minus its fitted value
            put(f"OL{n}", np.asarray(table[f"ols_{n}"], dtype=float) - np.asarray(table[f"fitted_{n}"], dtype=float),
                f"OLS residual of {n}")
    for n in coefficient_names:
        put(f"FV{n}", table[f"fitted_{n}"], f"Fitted value of {n} (level-2 prediction)")
    for n in coefficient_names:
        put(f"EC{n}", table[f"eb_{n}"], f"EB estimate of {n}")
    for k, n in enumerate(random):
        put(f"PV{k}_{k}", table[f"postvar_{n}"], f"Posterior variance of the EB residual of {n}")
    made = {"id", "nj", "mdist"} | {c for c in table.columns if c.split("_", 1)[0] in ("u", "ols", "fitted", "eb", "postvar")
                                     and c.split("_", 1)[-1] in coefficient_names}
    for c in table.columns:
        if c not in made:
            put(c, table[c], f"Level-2 variable {c}")
    return _finish(cols, labels, pd)


def level1_columns(table, id_name: str):
    """The level-1 residual table with HLM 7's names: id, L1RESID, FITVAL, then the rest (the outcome,
    the predictors, the record's row in the source, kept columns), each cut to 8 characters."""
    import pandas as pd

    cols: dict[str, object] = {}
    labels: dict[str, str] = {}
    known = {"id": (hlm_name(id_name), f"Level-2 unit id ({id_name})"),
             "residual": ("L1RESID", "Level-1 residual (outcome minus fitted value)"),
             "fitted": ("FITVAL", "Fitted value (with the unit's EB coefficients)"),
             "eta": ("ETA", "Linear predictor (link scale, with the unit's EB effects)"),
             "row": ("ROW", "Record's row in the level-1 source file (1 = first)")}
    order = [c for c in ("id", "residual", "fitted", "eta") if c in table.columns] + \
        [c for c in table.columns if c not in ("id", "residual", "fitted", "eta")]
    for c in order:
        name, label = known.get(c, (c, f"Variable {c}"))
        cols[name] = table[c]
        labels[name] = label
    return _finish(cols, labels, pd)


def _finish(cols, labels, pd):
    names = _unique([hlm_name(c) for c in cols])
    frame = pd.DataFrame({new: cols[old] for new, old in zip(names, cols)})
    return frame, {new: labels[old] for new, old in zip(names, cols)}
