"""HLM's residual files (resfil1 / resfil2): unit-level and record-level estimates, as CSV, .sav or .dta."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ..lazy import lazy

pd = lazy("pandas")

from ..errors import DataError
from .files import atomic_write_text, write_with


def level2_table(analysis, eb) -> pd.DataFrame:
    a = analysis
    d = a.design
    names = d.spec.coefficient_names()
    rand_q = [int(q) for q in a.stats.random]
    cols: dict[str, object] = {"id": d.unit_ids, "nj": a.unit.count.astype(int)}
    ols = a.unit.on_outcome_scale(a.ols.beta, rand_q.index(0) if 0 in rand_q else None)
    for k, q in enumerate(rand_q):
        cols[f"u_{names[q]}"] = eb.u[:, k]
        cols[f"postvar_{names[q]}"] = eb.u_var[:, k, k]
        cols[f"ols_{names[q]}"] = ols[:, k]
    for q, name in enumerate(names):
        cols[f"fitted_{name}"] = eb.fitted[:, q]
        cols[f"eb_{name}"] = eb.eb[:, q]
    cols["mdist"] = eb.mahalanobis
    for name, values in d.level2_values.items():
        cols[name] = values
    return pd.DataFrame(cols)


def level1_table(analysis, eb) -> pd.DataFrame:
    a = analysis
    d = a.design
    unit = np.repeat(np.arange(d.n_units), d.sizes)
    fitted = np.einsum("nk,nk->n", d.L, eb.eb[unit])
    cols: dict[str, object] = {"id": np.array(d.unit_ids, dtype=object)[unit], "fitted": fitted,
                               "residual": d.y - fitted, d.spec.outcome: d.y}
    for k, term in enumerate(d.spec.level1, start=1):
        cols[term.name if term.centering == "none" else f"{term.name}_{term.centering}"] = d.L[:, k]
    used2 = dict.fromkeys(t.name for t in d.spec.predictors(2) if not t.unit_mean)  # model order (a set's varies)
    for name in used2:
        cols[name] = d.level2_values[name][unit]
    return pd.DataFrame(cols)


def write_table(frame: pd.DataFrame, path: str | os.PathLike, labels: dict[str, str] | None = None) -> None:
    """`labels`: {column: label}, written as SPSS variable labels in a .sav file (and as Stata's in .dta)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ("", ".csv", ".txt"):
        atomic_write_text(path, frame.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
        return
    if suffix not in (".sav", ".dta"):
        raise DataError(f"{path}: residual files can be .csv, .sav or .dta; change the extension")
    import pyreadstat

    frame = frame.copy()
    id_column = "id" if "id" in frame.columns else frame.columns[0]  # HLM names: the id's own name, first
    frame[id_column] = frame[id_column].astype(str)
    write = pyreadstat.write_sav if suffix == ".sav" else pyreadstat.write_dta
    column_labels = [labels.get(c, "") for c in frame.columns] if labels else None
    write_with(path, lambda tmp: write(frame, tmp, column_labels=column_labels))
