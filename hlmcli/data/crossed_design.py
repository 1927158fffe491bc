"""The arrays of a cross-classified model from one table of records: the outcome, the fixed-effect
columns, and per random term its groups and random columns (engine.crossed.CrossedTerm).

A record with a missing value in any column the model uses is left out of the analysis (HLM 7's
"delete missing data when running analyses"); how many were left out is reported. A grouping factor
written A:B is the combination of the two id columns (as lme4's interaction of factors). HLM 7's own
layout, a level-1 file with row and column ids beside a row file and a column file, is merged into one
table first (merge_crossed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..engine.crossed import CrossedTerm
from ..errors import DataError, ModelError
from ..io.readers import Table, find_column, numeric_column, unit_codes
from ..language.formula import CrossedFormula

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class CrossedDesign:
    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple
    terms: list
    outcome: str
    n_read: int   # records in the file
    n_dropped: int  # left out for missing values
    rows: np.ndarray | None = None  # each used record's 0-based row in the table read (for residual files, the hash)
    table: Table | None = None  # the table read (merged for HCM2's layout): --keep's columns come from it


def _product(table: Table, names: tuple, cache: dict) -> np.ndarray:
    out = np.ones(len(table.data))
    for name in names:
        if name == "1":
            continue
        if name not in cache:
            cache[name] = numeric_column(table, find_column(table, name, "predictor"))
        out = out * cache[name]
    return out


def design(table: Table, model: CrossedFormula) -> CrossedDesign:
    """The model's arrays from the table (records with a missing value in a used column left out)."""
    cache: dict[str, np.ndarray] = {}
    y = numeric_column(table, find_column(table, model.outcome, "outcome"))
    X = np.column_stack([_product(table, t, cache) for t in model.fixed]) if model.fixed else np.zeros((len(y), 0))
    names = tuple("INTRCPT" if t == ("1",) else ":".join(t) for t in model.fixed)
    Zs = [np.column_stack([_product(table, c, cache) for c in bar.columns]) for bar in model.bars]
    ok = np.isfinite(y) & np.all(np.isfinite(X), axis=1)
    for Z in Zs:
        ok &= np.all(np.isfinite(Z), axis=1)
    ids: dict[str, np.ndarray] = {}
    for bar in model.bars:
        for name in bar.factor:
            if name not in ids:
                col = find_column(table, name, "grouping factor")
                series = table.data[col]
                missing = series.isna().to_numpy() | (series.astype(str).str.strip() == "").to_numpy()
                ids[name] = missing
                ok &= ~missing
    n_read = len(y)
    if not ok.any():
        raise DataError(f"{table.path}: every record has a missing value in a column the model uses "
                        f"({', '.join(model.columns)}); check the columns")
    sub = Table(table.path, table.format, table.data.loc[ok].reset_index(drop=True), table.value_labels,
                table.encoding, table.delimiter)
    terms = []
    for bar, Z in zip(model.bars, Zs):
        parts = [unit_codes(sub, find_column(sub, name, "grouping factor")) for name in bar.factor]
        if len(parts) == 1:
            codes, labels, _ = parts[0]
        else:  # A:B: each distinct combination is a group
            keys = np.column_stack([p[0] for p in parts])
            uniq, codes = np.unique(keys, axis=0, return_inverse=True)
            labels = [":".join(p[1][k] for p, k in zip(parts, row)) for row in uniq]
        cols = tuple("INTRCPT" if c == ("1",) else ":".join(c) for c in bar.columns)
        terms.append(CrossedTerm(bar.name, np.asarray(codes, np.int64).ravel(), Z[ok], cols, tuple(labels)))
    identifiable(terms)
    X = X[ok]
    if X.shape[1] and np.linalg.matrix_rank(X) < X.shape[1]:
        raise ModelError("the fixed-effect predictors are collinear (one is a combination of the others); drop one")
    return CrossedDesign(y[ok], X, names, terms, model.outcome, n_read, int(n_read - ok.sum()),
                         np.flatnonzero(ok), table)


def _id_text(table: Table, column: str) -> pd.Series:
    series = table.data[column]
    text = series.astype(str).str.strip()
    missing = series.isna() | (text == "")
    if missing.any():
        pos = int(np.flatnonzero(missing.to_numpy())[0])
        where = f"line {pos + 2}" if table.format == "csv" else f"row {pos + 1}"
        raise DataError(f"{table.path}: column {column}, {where}: the id is missing; give every record an id")
    return text


def merge_crossed(level1: Table, rows: Table, cols: Table, row_id: str, col_id: str) -> Table:
    """HLM 7's HCM2 layout as one table: each level-1 record with the variables of its row (from the
    row file, by `row_id`) and of its column (from the column file, by `col_id`). An id missing from
    its file, an id repeated in it, or a variable name in two files is a one-line error."""
    merged = level1.data.copy()
    r1, c1 = (find_column(level1, name, what) for name, what in ((row_id, "row id"), (col_id, "column id")))
    merged[r1], merged[c1] = _id_text(level1, r1), _id_text(level1, c1)
    for table, id_name, key, what in ((rows, row_id, r1, "row"), (cols, col_id, c1, "column")):
        col = find_column(table, id_name, f"{what} id")
        ids = _id_text(table, col)
        dup = ids.duplicated()
        if dup.any():
            pos = int(np.flatnonzero(dup.to_numpy())[0])
            raise DataError(f"{table.path}: {what} id {ids.iloc[pos]} appears twice (line {pos + 2}); the {what} file "
                            f"holds one record per {what}")
        clash = [c for c in table.data.columns if c != col and c.lower() in {m.lower() for m in merged.columns}]
        if clash:
            raise DataError(f"{table.path}: the {what} file's variable {clash[0]} is also in {level1.path} or the other "
                            "file; rename one of them")
        unknown = ~merged[key].isin(set(ids))
        if unknown.any():
            pos = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataError(f"{level1.path}: line {pos + 2}: {what} id {merged[key].iloc[pos]} is not in {table.path}; "
                            f"add its record there")
        extra = table.data.drop(columns=[col]).assign(**{key: ids.to_numpy()})
        merged = merged.merge(extra, on=key, how="left", validate="many_to_one", sort=False)
    return Table(level1.path, level1.format, merged.reset_index(drop=True), level1.value_labels, level1.encoding,
                 level1.delimiter)


def identifiable(terms) -> None:
    """Refuse, before fitting, the random intercepts the data cannot tell apart from another term, along
    which the deviance is exactly flat (σ² is profiled, so the face Hessian's zero eigenvalue can hide in
    rounding): a factor with one group (its intercept is the fixed intercept's), a factor whose every group
    holds one record (its intercept is the level-1 residual), two factors that group the records alike."""
    with_intercept = [t for t in terms if "INTRCPT" in t.columns]
    for t in with_intercept:
        if t.J == 1:
            raise ModelError(f"the grouping factor {t.factor} has one group, so the variance of its random intercept "
                             f"cannot be estimated (it is the fixed intercept); drop (1 | {t.factor})")
        if np.bincount(t.codes, minlength=t.J).max() == 1:
            raise ModelError(f"every group of {t.factor} holds one record, so its random intercept cannot be told apart "
                             f"from the level-1 residual; drop (1 | {t.factor})")
    for i, a in enumerate(with_intercept):
        for b in with_intercept[i + 1:]:
            if a.J == b.J and len(np.unique(a.codes.astype(np.int64) * b.J + b.codes)) == a.J:
                raise ModelError(f"the grouping factors {a.factor} and {b.factor} group the records alike, so their "
                                 f"random intercepts cannot be told apart; keep one of them")


def check_hcm2_predictors(table: Table, hcm2) -> None:
    """HCM2's γ multiply row predictors and its β column predictors (language/hcm2.py): each must be
    constant within the units of its factor, or the equations say something the data do not (a
    level-1 variable belongs in the level-1 equation)."""
    for kind, factor, what in (("gamma", hcm2.row, "row"), ("beta", hcm2.col, "column")):
        names = [t.predictor for t in hcm2.terms if t.kind == kind]
        if not names:
            continue
        codes, labels, _ = unit_codes(table, find_column(table, factor, f"{what} id"))
        for name in dict.fromkeys(names):
            x = numeric_column(table, find_column(table, name, "predictor"))
            ok = np.isfinite(x)
            lo = np.full(len(labels), np.inf)
            hi = np.full(len(labels), -np.inf)
            np.minimum.at(lo, codes[ok], x[ok])
            np.maximum.at(hi, codes[ok], x[ok])
            bad = np.flatnonzero(hi > lo)
            if bad.size:
                raise ModelError(f"{kind}*({name}): {name} varies within {what} unit {labels[bad[0]]} of {factor}, so it "
                                 f"is not a {what} predictor; a level-1 variable goes into the level-1 equation "
                                 f"(p1*({name}))" + (", a column predictor takes beta" if kind == "gamma" else
                                                     ", a row predictor takes gamma"))
