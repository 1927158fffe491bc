"""The arrays of a cross-classified model from one table of records: the outcome, the fixed-effect
columns, and per random term its groups and random columns (engine.crossed.CrossedTerm).

A record with a missing value in any column the model uses is left out of the analysis (HLM 7's
"delete missing data when running analyses"); how many were left out is reported. A grouping factor
written A:B is the combination of the two id columns (as lme4's interaction of factors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.crossed import CrossedTerm
from ..errors import DataError, ModelError
from ..io.readers import Table, find_column, numeric_column, unit_codes
from ..language.formula import CrossedFormula


@dataclass
class CrossedDesign:
    y: np.ndarray
    X: np.ndarray
    fixed_names: tuple
    terms: list
    outcome: str
    n_read: int   # records in the file
    n_dropped: int  # left out for missing values


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
    X = X[ok]
    if X.shape[1] and np.linalg.matrix_rank(X) < X.shape[1]:
        raise ModelError("the fixed-effect predictors are collinear (one is a combination of the others); drop one")
    return CrossedDesign(y[ok], X, names, terms, model.outcome, n_read, int(n_read - ok.sum()))
