"""Stage 1, readers: a data file (CSV, SAS, SPSS, Stata) to a DataFrame plus what the file said about itself."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ..lazy import lazy

pd = lazy("pandas")

from ..errors import DataError, OptionError, install_hint

# Names users may give to --format, including HLM 7's `rawdattype` words.
FORMAT_ALIASES = {
    "csv": "csv", "ascii": "csv", "txt": "csv", "tsv": "csv", "dat": "csv",
    "sas": "sas", "sas7bdat": "sas",
    "spss": "spss", "sav": "spss", "zsav": "spss",
    "stata": "stata", "dta": "stata",
    "parquet": "parquet", "pq": "parquet",
    "excel": "excel", "xlsx": "excel",
}
_EXTENSIONS = {
    ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".dat": "csv",
    ".sas7bdat": "sas", ".sav": "spss", ".zsav": "spss", ".dta": "stata",
    ".parquet": "parquet", ".pq": "parquet", ".xlsx": "excel",
}
# Optional readers: the extra to install, and the module it brings.
_EXTRAS = {"parquet": ("parquet", "pyarrow"), "excel": ("excel", "openpyxl")}
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
STDIN = "-"
# Strings that mean "missing" in a text file, as SAS, SPSS, Stata and R write them.
CSV_MISSING = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", ".", "#N/A"]
_SNIFF_DELIMITERS = ",;\t| "


@dataclass
class Table:
    """One source file as read: its columns, value labels, and how it was read."""

    path: Path
    format: str
    data: pd.DataFrame
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    encoding: str | None = None
    delimiter: str | None = None


def normalise_delimiter(value: str | None) -> str | None:
    """--delimiter as typed: tab, '\\t', a real tab, comma, ... or any single character."""
    if value is None or value == "":
        return None
    sep = _DELIMITER_NAMES.get(value.lower(), value)
    if len(sep) != 1 or sep in "\"\r\n" or sep.isalnum():
        raise DataError(f"--delimiter '{value}' is not a delimiter; give one character such as ',' or ';', "
                        "or tab, comma, semicolon, pipe or space")
    return sep


def detect_format(path: str | os.PathLike, override: str | None = None) -> str:
    if override:
        fmt = FORMAT_ALIASES.get(override.lower())
        if fmt is None:
            raise DataError(f"{path}: unknown --format '{override}'; use csv, sas, spss, stata, parquet or excel")
        return fmt
    if str(path) == STDIN:
        return "csv"
    suffix = Path(path).suffix.lower()
    if suffix == ".gz":
        suffix = Path(Path(path).stem).suffix.lower()
        if _EXTENSIONS.get(suffix) != "csv":
            raise DataError(f"{path}: only gzip-compressed CSV (.csv.gz) is read; decompress the file first")
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the file format from the extension '{suffix or '(none)'}'; "
            "use .csv, .csv.gz, .sas7bdat, .sav, .zsav, .dta, .parquet or .xlsx, or give --format csv|sas|spss|stata"
        )
    return fmt


def _check_readable(path: Path) -> None:
    from .files import check_regular

    check_regular(path, "data file")  # folders, FIFOs, devices and symlink loops, before any read
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot be read (permission denied); fix its permissions")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; give a file with a header and data rows")


def read_table(path: str | os.PathLike, fmt: str | None = None, delimiter: str | None = None,
               string_columns: tuple[str, ...] = ()) -> Table:
    """Read one data file. `string_columns` (matched case-insensitively) are kept as text, e.g. ids."""
    kind = detect_format(path, fmt)
    if str(path) == STDIN:
        if kind != "csv":
            raise DataError("-: standard input is read as CSV; give the file's path for other formats")
        table = _read_csv(Path(STDIN), normalise_delimiter(delimiter), string_columns, stdin_bytes())
        table.path = Path("<stdin>")
        return _nonempty(table)
    path = Path(path)
    _check_readable(path)
    if kind == "csv":
        table = _read_csv(path, normalise_delimiter(delimiter), string_columns)
    elif kind in _EXTRAS:
        table = _read_optional(path, kind, string_columns)
    else:
        table = _read_binary(path, kind)
    return _nonempty(table)


_STDIN_CACHE: list[bytes] = []


def stdin_bytes() -> bytes:
    """Standard input, read once (a file given as '-' for both levels is read one time)."""
    import sys

    if not _STDIN_CACHE:
        _STDIN_CACHE.append(sys.stdin.buffer.read())
    if not _STDIN_CACHE[0]:
        raise DataError("-: standard input is empty; pipe a CSV file with a header and data rows")
    return _STDIN_CACHE[0]


def _nonempty(table: Table) -> Table:
    path = table.path
    if table.data.shape[0] == 0:
        raise DataError(f"{path}: the file has a header but no data rows; give a file with data")
    return table


def sniff_delimiter(sample: str) -> str:
    first = sample.splitlines()[0] if sample else ""
    try:
        return csv.Sniffer().sniff(sample, delimiters=_SNIFF_DELIMITERS).delimiter
    except csv.Error:
        for cand in ",;\t|":
            if cand in first:
                return cand
        if len(first.split()) > 1:
            return " "
        return ","


def _read_optional(path: Path, kind: str, string_columns: tuple[str, ...]) -> Table:
    extra, module = _EXTRAS[kind]
    try:
        __import__(module)
    except ImportError:
        raise DataError(f"{path}: reading {kind} files needs {module}; {install_hint(extra)}") from None
    wanted = {c.lower() for c in string_columns}
    try:
        if kind == "parquet":
            data = pd.read_parquet(path)
        else:
            data = pd.read_excel(path, sheet_name=0, engine="openpyxl")
    except Exception as exc:  # the readers raise many kinds of errors on damaged files
        raise DataError(f"{path}: not a readable {kind} file ({_short(exc)[:200]}); check the file or --format") from None
    data.columns = [str(c).strip() for c in data.columns]
    refuse_duplicate_names(path, data.columns)
    for c in data.columns:
        if c.lower() in wanted and not pd.api.types.is_numeric_dtype(data[c].dtype):
            data[c] = data[c].astype(str)
    return Table(path=path, format=kind, data=data)


def _decode(path: Path, raw: bytes) -> tuple[str, str]:
    """The whole file as text, and the encoding used: UTF-8 if all of it is, else cp1252, else Latin-1
    (which decodes every byte). Deciding on the whole file, not its head, means a Latin-1 byte after
    64 KB cannot crash the read."""
    if raw.startswith(b"\xef\xbb\xbf"):
        try:
            return raw[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            raw = raw[3:]
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    for encoding in ("cp1252", "latin-1"):  # recorded in the sources; the build warns that it was used
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte")  # pragma: no cover


def _read_csv(path: Path, delimiter: str | None, string_columns: tuple[str, ...], raw: bytes | None = None) -> Table:
    import gzip

    raw = path.read_bytes() if raw is None else raw
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"{path}: damaged gzip file ({_short(exc)}); check the file") from None
    if b"\x00" in raw[: 1 << 16]:
        raise DataError(f"{path}: this is a binary file, not CSV text; give its real format with --format "
                        "(or rawdattype: in a template), e.g. spss for a .sav file")
    text, encoding = _decode(path, raw)
    text_head = head_sample(text)
    if not text_head.strip():
        raise DataError(f"{path}: the file is empty; give a file with a header and data rows")
    sep = delimiter if delimiter else sniff_delimiter(text_head)
    if sep == "\\t":
        sep = "\t"
    header = next(csv.reader([text_head.splitlines()[0]], delimiter=sep))
    header = [h.strip() for h in header]
    refuse_duplicate_names(path, header)
    wanted = {c.lower() for c in string_columns}
    dtypes = {h: str for h in header if h.lower() in wanted}
    _check_ragged(path, raw, sep, len(header))
    try:
        data = pd.read_csv(
            io.StringIO(text), sep=r"\s+" if sep == " " else sep, engine="c" if sep != " " else "python",
            dtype=dtypes or None, na_values=CSV_MISSING, keep_default_na=False,
            skipinitialspace=True,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; give a file with a header and data rows") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as exc:
        raise DataError(f"{path}: malformed CSV ({_short(exc)[:200]}); make every row have as many fields as the header") from None
    data.columns = [str(c).strip() for c in data.columns]
    note = None if encoding.startswith("utf-8") else encoding
    return Table(path=path, format="csv", data=data, encoding=note, delimiter=sep)


def head_sample(text: str, size: int = 1 << 16) -> str:
    """The whole first line (a header may be longer than `size`: 10,000 columns are) and up to
    `size` characters after it: what the delimiter is sniffed from and the header parsed from."""
    end = text.find("\n")
    return text[: size if end < 0 else max(size, end + 1 + size)]


def refuse_duplicate_names(path, names) -> None:
    """A column named twice (pandas would read the second as 'X.1' and a model would silently use
    the first), or two names that differ only in case (names are matched case-insensitively, as in
    HLM): refused, naming the column. Empty names (a trailing delimiter) are left to the reader."""
    seen: dict[str, tuple[int, str]] = {}
    for k, name in enumerate(names, start=1):
        name = str(name).strip()
        if not name:
            continue
        key = name.lower()
        if key in seen:
            first, spelled = seen[key]
            if spelled == name:
                raise DataError(f"{path}: column '{name}' is named twice (columns {first} and {k}); "
                                "rename one so that every column has its own name")
            raise DataError(f"{path}: columns '{spelled}' and '{name}' (columns {first} and {k}) differ only in case, "
                            "and names are matched without regard to case; rename one")
        seen[key] = (k, name)


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())


def _check_ragged(path: Path, raw: bytes, sep: str, n_fields: int) -> None:
    """Name the first line whose field count differs from the header's (pandas pads short rows silently)."""
    if sep == " " or b'"' in raw or len(sep) != 1:
        return  # quoted fields may hold delimiters; pandas' own check applies
    buf = np.frombuffer(raw, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    ends = newlines if (buf.size and buf[-1] == 10) else np.append(newlines, buf.size)
    starts = np.concatenate(([0], ends[:-1] + 1))
    nonblank = ends - starts > (buf[np.maximum(ends - 1, 0)] == 13).astype(np.int64)
    counts = np.add.reduceat((buf == ord(sep)).astype(np.int64), starts) if starts.size else np.array([])
    counts = np.where(ends > starts, counts, 0)
    bad = np.flatnonzero(nonblank & (counts != n_fields - 1))
    if bad.size:
        line = int(bad[0]) + 1
        raise DataError(
            f"{path}: line {line} has {int(counts[bad[0]]) + 1} fields but the header has {n_fields}; "
            "fix that row (every row needs one value per column, empty for missing)"
        )


def _read_binary(path: Path, kind: str) -> Table:
    import pyreadstat

    readers = {"sas": pyreadstat.read_sas7bdat, "spss": pyreadstat.read_sav, "stata": pyreadstat.read_dta}
    # user_missing=False (the default) turns SPSS user-defined missing values and
    # SAS/Stata special missing values (.A-.Z) into NaN, as HLM 7 treats them.
    encoding_note = None
    try:
        data, meta = readers[kind](str(path))
    except pyreadstat.ReadstatError as exc:
        if "encoding" in str(exc).lower() or "unicode" in str(exc).lower():
            data, meta = readers[kind](str(path), encoding="latin1")
            encoding_note = "latin1 (the file's own encoding could not be decoded)"
        else:
            raise DataError(f"{path}: not a readable {kind.upper()} file ({_short(exc)}); check the file or --format") from None
    except Exception as exc:  # pyreadstat raises plain errors on some damaged files
        raise DataError(f"{path}: not a readable {kind.upper()} file ({_short(exc)}); check the file or --format") from None
    labels = {
        str(col): {_label_key(k): str(v) for k, v in mapping.items()}
        for col, mapping in (meta.variable_value_labels or {}).items()
    }
    encoding = encoding_note or getattr(meta, "file_encoding", None)
    data.columns = [str(c) for c in data.columns]
    refuse_duplicate_names(path, data.columns)
    return Table(path=path, format=kind, data=data, value_labels=labels, encoding=encoding)


def _label_key(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def numeric_column(table: Table, column: str) -> np.ndarray:
    """A column as float64; a value that is not a number is an error naming the row."""
    series = table.data[column]
    if pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64)
    converted = pd.to_numeric(series, errors="coerce")
    bad = converted.isna() & series.notna()
    if table.format == "csv":
        bad &= ~series.astype(str).str.strip().isin(CSV_MISSING)
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        where = f"line {pos + 2}" if table.format == "csv" else f"row {pos + 1}"
        raise DataError(
            f"{table.path}: column {column}, {where}: '{series.iloc[pos]}' is not a number; "
            f"fix the value, or leave {column} out of the variables to keep"
        )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def unit_codes(table: Table, column: str) -> tuple[np.ndarray, list[str], str]:
    """Each record's unit as a code into a list of distinct ids, kept as text exactly as given
    (leading zeros too), and whether the file held them as numbers or as text."""
    series = table.data[column]
    where = (lambda pos: f"line {pos + 2}") if table.format == "csv" else (lambda pos: f"row {pos + 1}")
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = np.isnan(values)
        kind = "integer" if np.all(values[~missing] == np.round(values[~missing])) else "number"
    else:
        values = series.astype(object)
        missing = (pd.isna(values) | (values.astype(str).str.strip() == "")).to_numpy()
        kind = "string"
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise DataError(f"{table.path}: column {column}, {where(pos)}: the unit id is missing; give every record an id")
    codes, uniques = pd.factorize(values, sort=False)
    if kind == "integer":
        names = [str(int(v)) for v in uniques]
    elif kind == "number":
        names = [repr(float(v)) for v in uniques]
    else:
        names = [str(v).strip() for v in uniques]
        if len(set(names)) != len(names):  # ids that differ only by padding are one unit
            remap, names = pd.factorize(np.array(names, dtype=object))
            codes = remap[codes]
            names = list(names)
    return np.asarray(codes, dtype=np.int64), names, kind


def find_column(table: Table, name: str, what: str) -> str:
    """The file's own spelling of `name`, matched case-insensitively (HLM upper-cases names)."""
    if name in table.data.columns:
        return name
    matches = [c for c in table.data.columns if c.lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise DataError(f"{table.path}: columns {', '.join(matches)} differ only in case; rename one so '{name}' is unambiguous")
    cols = ", ".join(list(table.data.columns)[:12])
    raise (OptionError if what.endswith("unit id") else DataError)(
        f"{table.path}: no {what} column '{name}' (columns are: {cols}); check the name")


def is_text_column(table: Table, column: str, text_columns: list | None) -> bool:
    """A column none of whose values is a number (e.g. gender F/M) is a label, not a variable: left out
    of the default variables instead of aborting the build. A column of numbers with a stray word in it
    is still an error naming the row, and so is a text column named with --l1-vars/--l2-vars."""
    series = table.data[column]
    if pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        return False
    if pd.to_numeric(series, errors="coerce").notna().any():
        return False
    if series.isna().all():
        return False
    if text_columns is not None and column not in text_columns:
        text_columns.append(column)
    return True


def check_frame_columns(frame: pd.DataFrame, what: str) -> None:
    """Column names as a data file would have them: text, each once (up to case, as names match
    case-insensitively). A DataFrame allows any hashable name and repeated names; the stages do not."""
    for k, name in enumerate(frame.columns, start=1):
        if not isinstance(name, str):
            raise DataError(f"{what}: column {k} is named {name!r} ({type(name).__name__}), not text; "
                            "give every column a text name, e.g. frame.columns = frame.columns.map(str)")
    refuse_duplicate_names(what, frame.columns)
