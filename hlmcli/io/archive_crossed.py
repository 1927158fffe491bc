"""The archive of a cross-classified model (HLM 7's HCM2 MDM): a level-1 file whose records carry a row
id and a column id, a row file (one record per row unit) and a column file (one per column unit).

`hlmcli mdm build L1 ROWS COLS --row-id A --col-id B -o X.mdm` merges them. The file is archive.py's
container (prefix, checksum, JSON header, raw arrays) with `"kind": "cross-classified"` in the header
and its own arrays: level1 (variables × records), rows (variables × row units), cols (variables ×
column units), and each record's row and column unit (row_of, col_of, int64). Ids of any type are
kept as text, as the files spell them ("007" stays "007"; a number-typed 7.0 is "7"). The nested
loaders refuse it in one line (archive.read_archive_file), and this loader refuses a nested archive.

Checked at build, each a one-line error naming file, column and line: a missing id, an id repeated in
the row or column file, a record whose row or column id is not in its file (or dropped with
--drop-unmatched, counted), a variable in two files, an infinite value, a missing row or column
value (HLM needs complete data above level 1). Row or column units without records are left out
and counted in the notes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, first_few
from .archive import (FORMAT_VERSION, CorruptArchive, Source, describe_source, framed, peek_header,
                      read_archive_file)
from .files import atomic_write

if TYPE_CHECKING:
    from .readers import Table

KIND = "cross-classified"
ROLES = ("level-1", "row", "column")


@dataclass
class CrossedArchive:
    """Merged HCM2 data: level-1 records with their row and column unit, the row and column variables."""

    level1_names: list[str]
    level1: np.ndarray  # variables × records
    row_names: list[str]
    rows: np.ndarray  # variables × row units
    col_names: list[str]
    cols: np.ndarray  # variables × column units
    row_ids: list[str]
    col_ids: list[str]
    row_of: np.ndarray  # each record's row unit (0..J-1)
    col_of: np.ndarray  # each record's column unit (0..K-1)
    row_id: str  # the id columns, as the level-1 file spells them
    col_id: str
    missing: str = "analysis"
    sources: list[Source] = field(default_factory=list)
    value_labels: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_records(self) -> int:
        return int(self.level1.shape[1])

    def table(self):
        """The records as one table (each with its row's and column's variables and both ids as text),
        the table the cross-classified design reads from a data file."""
        import pandas as pd

        from .readers import Table

        data = {n: self.level1[i] for i, n in enumerate(self.level1_names)}
        data[self.row_id] = np.asarray(self.row_ids, dtype=object)[self.row_of]
        data[self.col_id] = np.asarray(self.col_ids, dtype=object)[self.col_of]
        data.update({n: self.rows[i][self.row_of] for i, n in enumerate(self.row_names)})
        data.update({n: self.cols[i][self.col_of] for i, n in enumerate(self.col_names)})
        return Table(self.path or Path("archive"), "mdm", pd.DataFrame(data), dict(self.value_labels))


# ---------------------------------------------------------------- merging

def _where(table: Table, pos: int) -> str:
    return f"line {pos + 2}" if table.format == "csv" else f"row {pos + 1}"


def id_texts(table: Table, column: str) -> np.ndarray:
    """A column of ids as text, whatever its type (a whole number stored as 7.0 is '7'); a missing id is
    an error naming file, column and line."""
    import pandas as pd

    series = table.data[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        whole = np.all(values[~missing] == np.round(values[~missing]))
        text = np.array([("" if m else str(int(v)) if whole else repr(float(v))) for v, m in zip(values, missing)],
                        dtype=object)
    else:
        text = series.astype(object).where(series.notna(), "").astype(str).str.strip().to_numpy(dtype=object)
        missing = text == ""
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise DataError(f"{table.path}: column {column}, {_where(table, pos)}: the id is missing; give every record "
                        "an id")
    return text


def _variables(table: Table, exclude: set[str], keep, option: str, warn) -> tuple[list[str], np.ndarray]:
    """The variables kept from one file: those named (with `option`), or every numeric column but the ids
    (a text column is left out with a warning)."""
    from .readers import find_column, is_text_column, numeric_column

    if keep is not None:
        names = [find_column(table, n, "variable") for n in keep]
        if any(n.lower() in exclude for n in names):
            raise DataError(f"{table.path}: {option} names an id column; ids are stored apart from the variables")
    else:
        text: list = []
        names = [c for c in table.data.columns if c.lower() not in exclude and not is_text_column(table, c, text)]
        if text:
            warn(f"{table.path.name}: text column(s) {first_few(text)} are labels, not numbers, and are left out of "
                 f"the variables; name them with {option} only if they hold numbers")
    values = np.array([numeric_column(table, n) for n in names], dtype=np.float64).reshape(len(names), -1)
    for k, name in enumerate(names):
        bad = np.flatnonzero(np.isinf(values[k]))
        if bad.size:
            raise DataError(f"{table.path}: column {name}, {_where(table, int(bad[0]))}: the value is infinite; fix it, "
                            f"or leave {name} out with {option}")
    return names, values


def _units(table: Table, column: str, what: str, names: list[str], values: np.ndarray) -> dict[str, int]:
    """{id: position} of a row or column file: one record per unit, complete values."""
    ids = id_texts(table, column)
    seen: dict[str, int] = {}
    for pos, unit in enumerate(ids):
        if unit in seen:
            raise DataError(f"{table.path}: column {column}, {_where(table, pos)}: {what} id {unit} appears again "
                            f"(first at {_where(table, seen[unit])}); the {what} file holds one record per {what} unit")
        seen[unit] = pos
    for k, name in enumerate(names):
        bad = np.flatnonzero(np.isnan(values[k]))
        if bad.size:
            raise DataError(f"{table.path}: column {name}, {_where(table, int(bad[0]))}: the value is missing for {what} "
                            f"unit {ids[bad[0]]}; HLM needs complete {what} data, so fill it in or leave {name} out")
    return seen


def merge_crossed_tables(level1: Table, rows: Table, cols: Table, row_id: str, col_id: str, keeps=(None, None, None),
                         missing: str = "analysis", drop_unmatched: bool = False,
                         warn=lambda m: None) -> CrossedArchive:
    """The archive of HCM2's three tables (`row_id`, `col_id`: the id columns, spelled alike in the
    level-1 file and in the row or column file)."""
    from .readers import find_column

    r1, c1 = find_column(level1, row_id, "row id"), find_column(level1, col_id, "column id")
    if r1 == c1:
        raise DataError(f"{level1.path}: --row-id and --col-id name the same column {r1}; give the row factor's and "
                        "the column factor's id columns")
    rr, cc = find_column(rows, row_id, "row id"), find_column(cols, col_id, "column id")
    ids1 = {r1.lower(), c1.lower()}
    n1, v1 = _variables(level1, ids1, keeps[0], "--l1-vars", warn)
    nr, vr = _variables(rows, {rr.lower()}, keeps[1], "--l2-vars (the row file's variables)", warn)
    nc, vc = _variables(cols, {cc.lower()}, keeps[2], "--l3-vars (the column file's variables)", warn)
    owner: dict[str, Table] = {}
    for table, names in ((level1, n1), (rows, nr), (cols, nc)):
        for n in names:
            if n.lower() in owner or n.lower() in ids1:
                raise DataError(f"{table.path}: variable {n} is also in {owner.get(n.lower(), level1).path}; a variable "
                                "belongs to one file, so rename it or leave it out (--l1-vars, --l2-vars, --l3-vars)")
            owner[n.lower()] = table
    row_pos = _units(rows, rr, "row", nr, vr)
    col_pos = _units(cols, cc, "column", nc, vc)
    rec_rows, rec_cols = id_texts(level1, r1), id_texts(level1, c1)
    keep = np.ones(rec_rows.size, dtype=bool)
    notes: dict = {}
    for ids, pos, table, column, what in ((rec_rows, row_pos, rows, r1, "row"), (rec_cols, col_pos, cols, c1, "column")):
        unknown = np.array([u not in pos for u in ids], dtype=bool)
        if unknown.any():
            first = int(np.flatnonzero(unknown)[0])
            if not drop_unmatched:
                raise DataError(f"{level1.path}: column {column}, {_where(level1, first)}: {what} id {ids[first]} is not "
                                f"in {table.path}; add its record there, or pass --drop-unmatched to leave such records out")
            notes[f"records_without_{what}"] = int(unknown.sum())
            warn(f"{level1.path.name}: {int(unknown.sum())} record(s) whose {what} id is not in {table.path.name} left "
                 f"out (first at {_where(level1, first)})")
            keep &= ~unknown
    if missing == "now":
        complete = ~np.isnan(v1).any(axis=0) if v1.size else np.ones_like(keep)
        if (keep & ~complete).any():
            notes["records_with_missing_values"] = int((keep & ~complete).sum())
        keep &= complete
    if not keep.any():
        raise DataError(f"{level1.path}: no level-1 record is left to analyse; check the ids and --missing")
    rec_rows, rec_cols, v1 = rec_rows[keep], rec_cols[keep], v1[:, keep]
    out = []  # per factor: (ids in the file's order, used units only, values, each record's code)
    for ids, pos, values, what in ((rec_rows, row_pos, vr, "row"), (rec_cols, col_pos, vc, "column")):
        used = sorted({pos[u] for u in ids})
        order = {p: j for j, p in enumerate(used)}
        unit_ids = list(pos)  # file order: pos's keys in insertion order
        if len(used) < len(unit_ids):
            notes[f"{what}_units_without_records"] = len(unit_ids) - len(used)
        codes = np.fromiter((order[pos[u]] for u in ids), dtype=np.int64, count=ids.size)
        out.append(([unit_ids[p] for p in used], values[:, used], codes))
    labels = {k: v for t in (level1, rows, cols) for k, v in t.value_labels.items()}
    (row_ids, rows_v, row_of), (col_ids, cols_v, col_of) = out
    return CrossedArchive(n1, v1, nr, rows_v, nc, cols_v, row_ids, col_ids, row_of, col_of, r1, c1, missing,
                          value_labels=labels, notes=notes)


def build_crossed_from_files(paths, row_id: str, col_id: str, keeps=(None, None, None), missing: str = "analysis",
                             drop_unmatched: bool = False, fmt: str | None = None, delimiter: str | None = None,
                             warn=lambda m: None, progress=None) -> CrossedArchive:
    """Read HCM2's three files (level-1, row, column) and merge them."""
    from .readers import read_table

    step = progress or (lambda name: None)
    tables = []
    for path, ids in zip(paths, ((row_id, col_id), (row_id,), (col_id,))):
        step(f"reading {Path(path).name}")
        tables.append(read_table(path, fmt, delimiter, string_columns=ids))
    for table in tables:
        if table.format == "csv" and table.encoding:
            warn(f"{table.path.name}: not valid UTF-8, so the whole file was decoded as {table.encoding}")
    step("merging")
    archive = merge_crossed_tables(*tables, row_id, col_id, keeps, missing, drop_unmatched, warn)
    step("hashing sources")
    archive.sources = [describe_source(p, role, t) for p, role, t in zip(paths, ROLES, tables)]
    return archive


# ---------------------------------------------------------------- writing and loading

_ARRAYS = ("level1", "rows", "cols", "row_of", "col_of")


def crossed_archive_bytes(a: CrossedArchive) -> list[bytes]:
    """The file (archive.py's format 3 container, a cross-classified header), as chunks to write."""
    arrays = [a.level1.astype("<f8", copy=False), a.rows.astype("<f8", copy=False), a.cols.astype("<f8", copy=False),
              a.row_of.astype("<i8", copy=False), a.col_of.astype("<i8", copy=False)]
    header = {
        "tool": "hlmcli", "format_version": FORMAT_VERSION, "kind": KIND, "levels": KIND,
        "level1_names": a.level1_names, "row_names": a.row_names, "col_names": a.col_names,
        "row_ids": a.row_ids, "col_ids": a.col_ids, "row_id": a.row_id, "col_id": a.col_id,
        "missing": a.missing, "value_labels": a.value_labels, "notes": a.notes,
        "sources": [s.__dict__ for s in a.sources],
        "arrays": [{"name": n, "dtype": x.dtype.str, "shape": list(x.shape)} for n, x in zip(_ARRAYS, arrays)],
    }
    return framed(header, arrays)


def write_crossed_archive(a: CrossedArchive, path: str | os.PathLike) -> None:
    atomic_write(path, crossed_archive_bytes(a))


def is_crossed_archive(path) -> bool:
    """Whether `path` is an archive whose header says cross-classified (the header alone, which the load
    that follows reuses: archive.peek_header; the load checks the checksum). Only a regular file is
    opened; what anything else is gets reported, in one line, by the reader that takes the path next."""
    header = peek_header(path)
    return header is not None and header.get("kind") == KIND


def load_crossed_archive(path, verify: bool = False) -> CrossedArchive:
    """The cross-classified archive at `path`, checked (checksum, and that the header describes it)."""
    path, header, arrays, damaged = read_archive_file(path, KIND, verify)
    if header.get("kind") != KIND:
        raise DataError(f"{path}: a nested archive, not a cross-classified one; build HCM2's archive with "
                        "'hlmcli mdm build LEVEL1 ROWS COLS --row-id A --col-id B'")
    try:
        a = CrossedArchive(header["level1_names"], arrays["level1"], header["row_names"], arrays["rows"],
                           header["col_names"], arrays["cols"], header["row_ids"], header["col_ids"],
                           arrays["row_of"], arrays["col_of"], header["row_id"], header["col_id"], header["missing"],
                           [Source(**s) for s in header["sources"]], header["value_labels"], header["notes"], path)
    except (ValueError, KeyError, TypeError):
        raise damaged from None
    n = a.level1.shape[1] if a.level1.ndim == 2 else -1
    J, K = len(a.row_ids), len(a.col_ids)
    if (a.level1.ndim != 2 or a.level1.shape[0] != len(a.level1_names) or a.rows.shape != (len(a.row_names), J)
            or a.cols.shape != (len(a.col_names), K) or a.row_of.shape != (n,) or a.col_of.shape != (n,)
            or (n and (a.row_of.min() < 0 or a.row_of.max() >= J or a.col_of.min() < 0 or a.col_of.max() >= K))):
        raise damaged
    return a


def crossed_info(a: CrossedArchive) -> dict:
    """HLM 7's MDM statistics of an HCM2 archive (mdm info): level-1, row and column descriptive
    statistics, the number of units and of records per unit."""
    from .archive import summarize

    def spread(counts):
        return {"min": int(counts.min()), "max": int(counts.max()), "mean": float(counts.mean())}

    return {
        "kind": KIND, "archive": a.path.name if a.path else None,
        "id": {"row": a.row_id, "column": a.col_id}, "missing": a.missing,
        "n_level1": a.n_records, "n_rows": len(a.row_ids), "n_columns": len(a.col_ids),
        "n_cells": int(np.unique(a.row_of * len(a.col_ids) + a.col_of).size),
        "records_per_row": spread(np.bincount(a.row_of, minlength=len(a.row_ids))),
        "records_per_column": spread(np.bincount(a.col_of, minlength=len(a.col_ids))),
        "sources": [{"role": s.role, "file": s.name, "format": s.format, "encoding": s.encoding, "size": s.size,
                     "sha256": s.sha256} for s in a.sources],
        "notes": a.notes,
        "level1": [v.__dict__ for v in summarize(a.level1, a.level1_names)],
        "row": [v.__dict__ for v in summarize(a.rows, a.row_names)],
        "column": [v.__dict__ for v in summarize(a.cols, a.col_names)],
        "value_labels": a.value_labels,
    }


def crossed_unit(a: CrossedArchive, unit: str) -> dict:
    """One row or column unit for `mdm info --unit`: its records and values (rows looked up first)."""
    for what, ids, codes, names, values in (("row", a.row_ids, a.row_of, a.row_names, a.rows),
                                            ("column", a.col_ids, a.col_of, a.col_names, a.cols)):
        if unit in ids:
            k = ids.index(unit)
            return {"id": unit, "factor": what, "n": int((codes == k).sum()),
                    "values": {n: float(values[i, k]) for i, n in enumerate(names)}}
    raise DataError(f"{a.path.name if a.path else 'the archive'}: no row or column unit '{unit}'; row ids look like "
                    f"{', '.join(a.row_ids[:2])}, column ids like {', '.join(a.col_ids[:2])}")


__all__ = ["CrossedArchive", "CorruptArchive", "build_crossed_from_files", "crossed_info", "crossed_unit",
           "is_crossed_archive", "load_crossed_archive", "merge_crossed_tables", "write_crossed_archive"]
