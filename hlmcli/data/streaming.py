"""Streaming on one machine: CSV and Parquet read in chunks through pyarrow, summarised per unit.

Memory is bounded by the chunk size plus the per-unit statistics (J × P² numbers), never by the
number of records. Each chunk goes through moments.chunk_moments, the same function as the
in-memory engine, and the chunks are merged per unit with Chan et al.'s update, so a unit's
records may be anywhere in the file.

Ids are kept exactly as written: CSV ids are read as text (stripped of padding, as the in-memory
reader does), integer ids of a Parquet file are written in decimal.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, install_hint
from ..engine.moments import Moments, chunk_moments, merge

CHUNK_BYTES = 16 << 20  # CSV block size: 16 MiB of text per chunk (64 MiB: same speed, 0.3 GiB more memory at 10M rows)
PARQUET_BATCH = 1 << 20  # records per Parquet batch


def progress_wanted(quiet: bool) -> bool:
    """Show progress on stderr: on a terminal unless -q; HLMCLI_PROGRESS=1 forces it on (for logs and
    tests), HLMCLI_PROGRESS=0 off."""
    forced = os.environ.get("HLMCLI_PROGRESS", "")
    if quiet or forced == "0":
        return False
    return forced == "1" or sys.stderr.isatty()


class ChunkProgress:
    """One line on stderr, rewritten per chunk: chunks and records read, and how far into the file.
    A CSV chunk is CHUNK_BYTES of text (pyarrow's block size, ending on a line break), so chunks ×
    CHUNK_BYTES bounds the bytes read; a Parquet file is counted by row groups' records instead."""

    def __init__(self, path, parquet: bool):
        self.path, self.parquet = str(path), parquet
        try:
            self.size = os.path.getsize(path)
        except OSError:  # standard input, a pipe
            self.size = None
        self.chunks = self.records = 0

    def __call__(self, records: int) -> None:
        self.chunks += 1
        self.records += records
        where = ""
        if self.size and not self.parquet:
            done = min(self.chunks * CHUNK_BYTES, self.size)
            where = f", {_mib(done)} of {_mib(self.size)} ({100 * done // self.size}%)"
        sys.stderr.write(f"\rhlmcli: reading {self.path}: chunk {self.chunks}, {self.records:,} records{where}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.chunks:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise DataError("the stream and dask engines read through pyarrow; " + install_hint("parquet")) from None
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa, pc


def _is_parquet(path, fmt: str | None) -> bool:
    from ..io.readers import detect_format

    return detect_format(path, fmt) == "parquet"


@dataclass
class Accumulator:
    """Per-unit moments of the records seen so far, units numbered in order of first appearance."""

    P: int
    ids: list = field(default_factory=list)
    index: dict = field(default_factory=dict)
    n: np.ndarray = None
    mean: np.ndarray = None
    C: np.ndarray = None

    def __post_init__(self):
        self.n, self.mean, self.C = np.zeros(1024), np.zeros((1024, self.P)), np.zeros((1024, self.P, self.P))

    def codes_of(self, names) -> np.ndarray:
        out = np.empty(len(names), dtype=np.intp)
        for k, name in enumerate(names):
            j = self.index.get(name)
            if j is None:
                j = self.index[name] = len(self.ids)
                self.ids.append(name)
            out[k] = j
        if len(self.ids) > self.n.size:
            size = max(2 * self.n.size, len(self.ids))
            for attr in ("n", "mean", "C"):
                old = getattr(self, attr)
                new = np.zeros((size,) + old.shape[1:])
                new[: old.shape[0]] = old
                setattr(self, attr, new)
        return out

    def add(self, where: np.ndarray, m: Moments) -> None:
        merged = merge(Moments(self.n[where], self.mean[where], self.C[where]), m)
        self.n[where], self.mean[where], self.C[where] = merged.n, merged.mean, merged.C

    def result(self) -> tuple[list[str], Moments]:
        J = len(self.ids)
        return list(self.ids), Moments(self.n[:J].copy(), self.mean[:J].copy(), self.C[:J].copy())


def id_text(values) -> list[str]:
    """Ids as the in-memory reader writes them: text stripped, integers in decimal, other numbers by repr.
    A NumPy array of text, integers or integral floats is converted as a whole (the Dask engine's
    million-unit key arrays); anything else goes through the loop below, which defines the spelling."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        if values.dtype.kind == "U":
            return np.char.strip(values).tolist()  # str.strip's whitespace (Py_UNICODE_ISSPACE)
        if values.dtype.kind in "iu":
            return list(map(str, values.tolist()))
        if values.dtype == np.float64:
            # str(int(f)) for integral f; |f| < 2**63 so the int64 cast is exact (others: the loop)
            if bool(np.all(np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0 ** 63))):
                return list(map(str, values.astype(np.int64).tolist()))
        values = values.tolist()
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(v.strip())
        elif isinstance(v, (int, np.integer)):
            out.append(str(int(v)))
        else:
            f = float(v)
            out.append(str(int(f)) if f == round(f) else repr(f))
    return out


@dataclass
class Columns:
    """The columns of a file as written (stripped names), and the file's own spelling for a name."""

    path: Path
    names: list[str]
    raw: dict  # stripped name -> name in the file
    delimiter: str | None = None

    def find(self, name: str, what: str) -> str:
        if name in self.raw:
            return name
        hits = [c for c in self.names if c.lower() == name.lower()]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DataError(f"{self.path}: columns {', '.join(hits)} differ only in case; rename one so '{name}' is unambiguous")
        from ..errors import OptionError

        raise (OptionError if what.endswith("unit id") else DataError)(
            f"{self.path}: no {what} column '{name}' (columns are: {', '.join(self.names[:12])}); check the name")


def file_columns(path, fmt: str | None = None, delimiter: str | None = None) -> Columns:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file; check the path")
    if _is_parquet(path, fmt):
        _pyarrow()
        import pyarrow.parquet as pq

        try:
            names = list(pq.read_schema(path).names)
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise DataError(f"{path}: not a readable Parquet file ({str(exc)[:160]})") from None
        from ..io.readers import refuse_duplicate_names

        refuse_duplicate_names(path, names)
        return Columns(path, [n.strip() for n in names], {n.strip(): n for n in names})
    from ..io.readers import sniff_delimiter, normalise_delimiter

    opener = open
    if path.suffix.lower() == ".gz":
        import gzip

        opener = gzip.open
    with opener(path, "rb") as handle:
        head = handle.read(1 << 16)
        while b"\n" not in head:  # a header longer than one read (thousands of columns): read on to its end
            more = handle.read(1 << 16)
            if not more:
                break
            head += more
        head = head.decode("utf-8", errors="replace")
    if not head.strip():
        raise DataError(f"{path}: the file is empty; give a file with a header and data rows")
    sep = normalise_delimiter(delimiter) or sniff_delimiter(head)
    if sep == "\\t":
        sep = "\t"
    if sep == " ":
        raise DataError(f"{path}: space-delimited text cannot be streamed; convert it to CSV or Parquet, or use --engine memory")
    header = next(csv.reader(io.StringIO(head.splitlines()[0]), delimiter=sep))
    from ..io.readers import refuse_duplicate_names

    refuse_duplicate_names(path, header)
    return Columns(path, [h.strip() for h in header], {h.strip(): h for h in header}, sep)


def _open_batches(cols: Columns, raw: list[str], text: list[str]):
    """A reader of the file's columns `raw` (as the file spells them) chunk by chunk: those in `text`
    as strings (CSV), the others as float64."""
    pa, _ = _pyarrow()
    if cols.delimiter is None:
        import pyarrow.parquet as pq

        return pq.ParquetFile(cols.path).iter_batches(batch_size=PARQUET_BATCH, columns=list(dict.fromkeys(raw)))
    from pyarrow import csv as pacsv

    from ..io.readers import CSV_MISSING

    types = {c: pa.string() if c in text else pa.float64() for c in raw}
    try:
        return pacsv.open_csv(
            cols.path, read_options=pacsv.ReadOptions(block_size=CHUNK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter=cols.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=list(dict.fromkeys(raw)), column_types=types,
                                                 null_values=CSV_MISSING, strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{cols.path}: {_arrow_message(exc)}") from None


def id_links(cols: Columns, child: str, parent: str) -> dict[str, list[str]]:
    """One pass over two id columns: each `child` id (as text, as the in-memory reader writes it) and the
    distinct `parent` ids of its records, in order of first appearance. A record missing either id is
    refused, naming it."""
    pa, pc = _pyarrow()
    links: dict[str, list[str]] = {}
    first = 0
    reader = _open_batches(cols, [cols.raw[child], cols.raw[parent]], [cols.raw[child], cols.raw[parent]])
    while True:
        try:
            batch = next(reader)
        except StopIteration:
            return links
        except pa.ArrowInvalid as exc:
            raise DataError(f"{cols.path}: {_arrow_message(exc)}") from None
        columns = []
        for name in (child, parent):
            col = batch.column(cols.raw[name])
            if col.null_count:
                pos = first + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"{cols.path}: column {name}, record {pos + 1}: the unit id is missing; give every "
                                "record an id")
            columns.append(col)
        pairs = pa.table({"a": columns[0], "b": columns[1]}).group_by(["a", "b"]).aggregate([])
        for a, b in zip(id_text(pairs.column("a").to_pylist()), id_text(pairs.column("b").to_pylist())):
            found = links.setdefault(a, [])
            if b not in found:
                found.append(b)
        first += batch.num_rows


def batches(cols: Columns, id_name: str | None, names: list[str]):
    """Yield (ids or None, [float64 arrays], first record number) chunk by chunk."""
    pa, pc = _pyarrow()
    wanted = ([id_name] if id_name else []) + list(names)
    raw = [cols.raw[c] for c in wanted]
    first = 0
    reader = _open_batches(cols, raw, [cols.raw[id_name]] if id_name else [])
    while True:
        try:
            batch = next(reader)
        except StopIteration:
            return
        except pa.ArrowInvalid as exc:
            raise DataError(f"{cols.path}: {_arrow_message(exc)}") from None
        ids = batch.column(raw[0]) if id_name else None
        values = []
        for c in names:
            col = batch.column(cols.raw[c])
            if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_boolean(col.type)):
                raise DataError(f"{cols.path}: column {c} is not numeric ({col.type}); leave it out of the model or the variables")
            values.append(col.cast(pa.float64()).to_numpy(zero_copy_only=False))
        yield ids, values, first
        first += batch.num_rows


def _arrow_message(exc) -> str:
    text = str(exc).splitlines()[0]
    return (f"cannot be read as numbers ({text[:200]}); fix the value, or leave the column out of the model "
            "or the variables")


def stream_moments(cols: Columns, id_name: str, names: list[str], drop_missing: bool = True,
                   progress: bool = False, by_unit: bool = False):
    """One pass over a file: per-unit moments of `names` (records with a missing value in any of
    them are deleted, as the in-memory engine's run-time deletion does). Returns (unit ids in
    order of first appearance, Moments, number of records read, number deleted), and with `by_unit`
    the number deleted in each unit that had any ({unit id: count}). With `progress`, a line on
    stderr counts the chunks read."""
    shown = ChunkProgress(cols.path, cols.delimiter is None) if progress else None
    try:
        out = _stream_moments(cols, id_name, names, drop_missing, shown)
        return out if by_unit else out[:4]
    finally:
        if shown is not None:
            shown.close()


def _stream_moments(cols: Columns, id_name: str, names: list[str], drop_missing: bool, shown):
    pa, pc = _pyarrow()
    acc = Accumulator(len(names))
    read = deleted = 0
    deleted_in: dict[int, int] = {}  # unit number -> records deleted, for units that had any
    for ids, values, first in batches(cols, id_name, names):
        read += len(ids)
        if shown is not None:
            shown(len(ids))
        if ids.null_count:
            pos = first + int(np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{cols.path}: column {id_name}, record {pos + 1}: the unit id is missing; give every record an id")
        encoded = pc.dictionary_encode(ids)
        local = encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp)
        # every unit is registered, even one whose records are all deleted (it counts as a unit deleted)
        where = acc.codes_of(id_text(encoded.dictionary.to_pylist()))
        keep = np.ones(len(ids), dtype=bool)
        for c, v in zip(names, values):
            bad = np.isinf(v)
            if bad.any():
                pos = first + int(np.flatnonzero(bad)[0])
                raise DataError(f"{cols.path}: column {c}, record {pos + 1}: the value is infinite; fix it or leave {c} out")
            keep &= ~np.isnan(v)
        if not keep.all():
            if not drop_missing:
                c = next(c for c, v in zip(names, values) if np.isnan(v).any())
                raise DataError(f"{cols.path}: column {c} has missing values; a statistics archive deletes such records "
                                "at build, so pass --missing now (or fit from the files with --engine stream, which "
                                "deletes per model)")
            deleted += int((~keep).sum())
            counts = np.bincount(local[~keep], minlength=where.size)
            for k in np.flatnonzero(counts):
                deleted_in[int(where[k])] = deleted_in.get(int(where[k]), 0) + int(counts[k])
            local = local[keep]
            values = [v[keep] for v in values]
        m = chunk_moments(values, local, len(where))
        if np.unique(where).size != where.size:
            # ids that differ only by padding are one unit: merge their parts one by one
            for k in range(where.size):
                acc.add(where[k:k + 1], m.take(np.array([k])))
        else:
            acc.add(where, m)
    unit_ids, m = acc.result()
    pa.default_memory_pool().release_unused()  # the chunks' buffers: the fit that follows needs the room
    return unit_ids, m, read, deleted, {unit_ids[j]: c for j, c in sorted(deleted_in.items())}
