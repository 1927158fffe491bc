"""Stage 2, the archive (our MDM): merge the tables of K ≥ 2 levels, store them checksummed, load them back.

One archive type for any number of levels: `Archive(levels=[LevelData(names, values, ids, offsets)])`,
level 1 first. One merge for any number of levels (merge.py; which table holds which level is its
data); the file format, the loader and the cache (cache.py) are one.

File layout (format 3, all little-endian):
  prefix  56 bytes: magic b"HLMCMDM\\x1a", format version (u32), reserved (u32),
                    header length (u64), SHA-256 of the whole file with these 32 bytes zeroed
  header  UTF-8 JSON, padded with spaces to a multiple of 8 bytes: "levels" K, per level its names
          (level{k}_names), size (n_level{k}) and unit ids (unit{k}_ids, k ≥ 2), the id names, the
          sources, notes, and the byte offset and shape of each array
  arrays  float64 level1 … levelK (variables, units of that level; records at level 1, sorted by
          unit), int64 offsets2 … offsetsK (J_k + 1: the level-(k−1) units of level-k unit j are
          offsetsk[j]:offsetsk[j+1])

Arrays are raw float64 so a load is one read plus zero-copy views, and the JSON header stays
readable with any tool. The checksum covers the whole file, prefix included (format 1 left the
prefix out, so a lowered header length went unnoticed), and the header must describe exactly the
bytes that follow it, so a damaged file is never read past its prefix. Format 2 had a header of its
own for two levels (level1_names, level2_names, unit_ids, offsets, id_names of both files); format 2
archives are still read (load_archive converts their header), format 1 ones are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, HlmError, text_column_error
from .files import atomic_write, sha256_file

if TYPE_CHECKING:
    from .readers import Table

FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)  # format 2: the same container, a two-level header of its own
MAGIC = b"HLMCMDM\x1a"
PREFIX = struct.Struct("<8sIIQ32s")


@dataclass(frozen=True)
class Source:
    """A file the archive was built from, with what is needed to notice it changed."""

    role: str  # "level-1" or "level-2"
    name: str
    path: str
    size: int
    mtime_ns: int
    sha256: str
    format: str
    encoding: str | None


@dataclass
class LevelData:
    """One level: its variables (variables, units of the level; records at level 1), the units' ids
    (None at level 1) and, for each unit, the range of its children one level down (None at level 1)."""

    names: list[str]
    values: np.ndarray
    ids: list[str] | None = None
    offsets: np.ndarray | None = None


@dataclass
class Archive:
    """Merged data of K ≥ 2 levels: levels[k − 1] is level k; level-1 records sorted by level-2 unit,
    level-k units by their level-(k+1) unit. The two-level names (level1, level2, unit_ids, offsets, ...)
    read levels 1 and 2; level3_names, unit3_ids, offsets3, n_level3 ... read any level."""

    levels: list[LevelData]
    id_kind: str
    id_names: tuple  # the unit ids of levels 2..K, as each level's own file spells them
    missing: str  # "now" or "analysis": when records with missing values are dropped
    sources: list[Source] = field(default_factory=list)
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    path: Path | None = None
    level1_id: str = ""  # the level-2 id as the level-1 file spells it (--id1 at two levels)
    format_version: int = FORMAT_VERSION  # of the file it was loaded from (a build: the format it writes)

    def __post_init__(self):
        if not self.level1_id:
            self.level1_id = self.id_names[0]

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def n(self, level: int) -> int:
        return int(self.levels[level - 1].values.shape[1])

    def names(self, level: int) -> list[str]:
        return self.levels[level - 1].names

    def parent(self, level: int) -> np.ndarray:
        """The level-(ℓ+1) unit of each level-ℓ unit (records at ℓ = 1)."""
        off = self.levels[level].offsets
        return np.repeat(np.arange(off.size - 1), np.diff(off))

    # the two-level names
    @property
    def level1(self) -> np.ndarray:
        return self.levels[0].values

    @property
    def level2(self) -> np.ndarray:
        return self.levels[1].values

    @property
    def level1_names(self) -> list[str]:
        return self.levels[0].names

    @property
    def level2_names(self) -> list[str]:
        return self.levels[1].names

    @property
    def unit_ids(self) -> list[str]:
        return self.levels[1].ids

    @property
    def offsets(self) -> np.ndarray:
        """Records of level-2 unit j are offsets[j]:offsets[j+1]."""
        return self.levels[1].offsets

    @property
    def n_level1(self) -> int:
        return int(self.levels[0].values.shape[1])

    @property
    def n_units(self) -> int:
        return len(self.levels[1].ids)

    @property
    def unit_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def unit_index(self) -> np.ndarray:
        """Each record's level-2 unit number (0..J-1)."""
        return np.repeat(np.arange(self.n_units), self.unit_sizes)

    @property
    def unit2_of_record(self) -> np.ndarray:
        return self.parent(1)

    @property
    def unit3_of_unit2(self) -> np.ndarray:
        return self.parent(2)

    def level1_column(self, name: str) -> np.ndarray:
        return self.level1[self.level1_names.index(name)]

    def level2_column(self, name: str) -> np.ndarray:
        return self.level2[self.level2_names.index(name)]

    # any level: level3_names, level3, unit3_ids, offsets3, n_level3, ... (and level 2's the same way)
    _NAMED = re.compile(r"^(?:level(\d+)_names|level(\d+)|unit(\d+)_ids|offsets(\d+)|n_level(\d+))$")

    def __getattr__(self, name: str):
        m = Archive._NAMED.match(name)
        if not m or "levels" not in self.__dict__:
            raise AttributeError(name)
        k = int(next(g for g in m.groups() if g is not None))
        if not 1 <= k <= len(self.levels):
            raise AttributeError(name)
        lv = self.levels[k - 1]
        return (lv.names, lv.values, lv.ids, lv.offsets, int(lv.values.shape[1]))[
            next(i for i, g in enumerate(m.groups()) if g is not None)]


@dataclass(frozen=True)
class BuildOptions:
    id1: str
    id2: str
    keep1: tuple[str, ...] | None = None
    keep2: tuple[str, ...] | None = None
    missing: str = "analysis"
    drop_unmatched: bool = False
    n_levels = 2

    def as_dict(self) -> dict:
        return {"id1": self.id1, "id2": self.id2, "keep1": self.keep1, "keep2": self.keep2,
                "missing": self.missing, "drop_unmatched": self.drop_unmatched}


def build_archive(level1: Table, level2: Table, options: BuildOptions, same_file: bool = False,
                  warn=lambda message: None) -> Archive:
    """Merge two tables (the same table when `same_file`) into an Archive. Raises DataError on anything
    a user must fix."""
    from .merge import MergeSpec, merge_levels

    spec = MergeSpec(link1=options.id1, ids=(options.id2,), keeps=(options.keep1, options.keep2),
                     missing=options.missing, drop_unmatched=options.drop_unmatched)
    return archive_from_merge(merge_levels([level1, level1 if same_file else level2], spec, warn), options.missing)


def archive_from_merge(merged: dict, missing: str) -> Archive:
    """The Archive of merge.merge_levels' pieces."""
    levels = [LevelData(names, values) if ids is None else LevelData(names, values, ids, offsets)
              for names, values, ids, offsets in merged["levels"]]
    return Archive(levels, id_kind=merged["id_kind"], id_names=merged["id_names"], missing=missing,
                   value_labels=merged["value_labels"], notes=merged["notes"], level1_id=merged["level1_id"])


def unhashed_source(role: str, path) -> Source:
    """A source file as the summarised engines record it: size and time only (hashing a file larger
    than memory would cost a second pass)."""
    p = Path(path)
    try:
        st = p.stat()
        size, mtime = (st.st_size, st.st_mtime_ns) if p.is_file() else (0, 0)
    except OSError:  # a glob
        size, mtime = 0, 0
    return Source(role=role, name=p.name, path=str(p), size=size, mtime_ns=mtime, sha256="", format="", encoding=None)


def describe_source(path: str | os.PathLike, role: str, table: Table) -> Source:
    if str(path) == "-":  # standard input: no file to stat or rehash later
        from .readers import stdin_bytes

        raw = stdin_bytes()
        return Source(role=role, name="<stdin>", path="-", size=len(raw), mtime_ns=0,
                      sha256=hashlib.sha256(raw).hexdigest(), format=table.format, encoding=table.encoding)
    path = Path(path)
    stat = path.stat()
    return Source(role=role, name=path.name, path=str(path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                  sha256=sha256_file(path), format=table.format, encoding=table.encoding)


# ---------------------------------------------------------------- writing and loading

def _array_names(K: int) -> list[str]:
    return [f"level{k}" for k in range(1, K + 1)] + [f"offsets{k}" for k in range(2, K + 1)]


def archive_bytes(archive: Archive) -> list[bytes]:
    """The file of an archive of any number of levels (format 3), as chunks to write."""
    K = archive.n_levels
    arrays = ([lv.values.astype("<f8", copy=False) for lv in archive.levels]
              + [lv.offsets.astype("<i8", copy=False) for lv in archive.levels[1:]])
    header = {
        "tool": "hlmcli", "format_version": FORMAT_VERSION, "levels": K,
        "id_kind": archive.id_kind, "id_names": list(archive.id_names), "level1_id": archive.level1_id,
        "missing": archive.missing, "value_labels": archive.value_labels, "notes": archive.notes,
        "sources": [s.__dict__ for s in archive.sources],
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(_array_names(K), arrays)],
    }
    for k, lv in enumerate(archive.levels, 1):
        header[f"level{k}_names"] = lv.names
        header[f"n_level{k}"] = int(lv.values.shape[1])
        if k > 1:
            header[f"unit{k}_ids"] = lv.ids
    return framed(header, arrays)


def framed(header: dict, arrays) -> list[bytes]:
    """An archive's bytes, in pieces: the prefix (magic, version, header length and the SHA-256 of all that
    follows, taken with the digest field zero), the JSON header padded to 8 bytes, then each array's raw
    bytes. One framing for nested and cross-classified archives."""
    text = json.dumps(header, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    body = [text] + [np.ascontiguousarray(a).tobytes() for a in arrays]
    digest = hashlib.sha256(PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), bytes(32)))
    for chunk in body:
        digest.update(chunk)
    return [PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), digest.digest())] + body


def unknown_column(archive, name: str, error: HlmError) -> HlmError:
    """What to raise when a model or an option names a column that is not a variable: `error`, unless
    the build left `name` out because its file holds it as text. Every failed lookup of a column a
    model or an option names ends here, so each gets the same one line. `archive`: an Archive, or
    anything with its names (a streamed Frame: no text columns recorded, so `error`)."""
    levels = (getattr(archive, "notes", None) or {}).get("text_column_levels") or {}
    level = next((int(k) for n, k in levels.items() if n.lower() == name.lower()), None)
    if level is None:
        return error
    file = next((s.name for s in getattr(archive, "sources", None) or () if s.role == f"level-{level}"),
                f"the level-{level} file")
    return text_column_error(name, file)


def write_archive(archive: Archive, path: str | os.PathLike, mode: int | None = None) -> None:
    atomic_write(path, archive_bytes(archive), mode=mode)


class CorruptArchive(DataError):
    """The file is not an archive of ours, or its checksum does not match."""


_WRONG_LEVELS = {
    2: "a three-level archive; this command takes two-level data "
       "(three-level archives work with 'hlmcli mdm info', 'model' and 'fit')",
    3: "a two-level archive; give three data files or a three-level archive for a three-level model",
}


def _wrong_levels(found, wanted: int) -> str:
    if {found, wanted} == {2, 3}:
        return _WRONG_LEVELS[wanted]
    return (f"an archive of {found} levels; this command needs {wanted}-level data (give {wanted} data files or a "
            f"{wanted}-level archive)")


# The last header read by peek_header: a one-file command asks what the file is (cross-classified? how
# many levels?) before it loads it, and the JSON header (every unit's id) is parsed once for all of them.
_PEEKED: list = []


def _stat_key(st: os.stat_result) -> tuple:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def peek_header(path) -> dict | None:
    """The JSON header of the archive at `path` (the full load checks the checksum), or None when it is
    not a readable archive of ours (the loader then gives its own message). Only a regular file is
    opened: a FIFO or a device would block or never end. Remembered for the load that follows, which
    takes it only if the file's header bytes are the ones parsed here."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (os.fspath(path), _stat_key(st))
        if _PEEKED and _PEEKED[0][0] == key:
            return _PEEKED[0][2]
        with open(path, "rb") as handle:
            prefix = handle.read(PREFIX.size)
            if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
                return None
            _, version, _, header_len, _ = PREFIX.unpack(prefix)
            if version not in READABLE_VERSIONS or header_len > (1 << 30):
                return None
            raw = handle.read(header_len)
        header = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(header, dict):
        return None
    _PEEKED[:] = [(key, prefix + raw, header)]
    return header


def _peeked(path, head) -> dict | None:
    """peek_header's parse of this file's header, if `head` (the mapped prefix and header) is what it
    parsed; a file rewritten in between is parsed again. Taken once: the archive built from it owns
    its lists from then on."""
    if _PEEKED and _PEEKED[0][0][0] == os.fspath(path) and _PEEKED[0][1] == head:
        return _PEEKED.pop()[2]
    return None


def peek_levels(path) -> int:
    """The number of levels, from the header alone (the full load checks the checksum); 2 for anything
    unreadable, so the loader gives its own message."""
    header = peek_header(path)
    try:
        return int(header.get("levels", 2)) if header is not None else 2
    except (ValueError, TypeError):
        return 2


def _described_size(body, header_len: int) -> int | None:
    """The file size the header describes (prefix, header, arrays; prefix and header only when the file
    ends inside the header), or None when the header cannot be read: tells a truncated file from
    otherwise damaged bytes, on the error path only."""
    try:
        if header_len > len(body):
            return PREFIX.size + header_len
        header = json.loads(bytes(body[:header_len]).decode("utf-8"))
        return PREFIX.size + header_len + sum(np.dtype(a["dtype"]).itemsize * int(np.prod(a["shape"], dtype=np.int64))
                                              for a in header["arrays"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _file_bytes(path: Path, size: int):
    """The file's bytes, memory-mapped read-only on POSIX: the arrays are zero-copy views either way, and a
    map spares a 1,000,000-row fit reading 32 MB into a fresh buffer (about 15 ms of CPU and more on a busy
    machine), and pages of columns the model does not use are never read. hlmcli replaces archives by
    rename (files.atomic_write), so a map keeps seeing the file it opened. Windows locks a mapped file
    against that rename, and empty files cannot be mapped: those are read."""
    if os.name != "posix" or size < PREFIX.size:
        return path.read_bytes()
    import mmap

    with open(path, "rb") as handle:
        try:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system without mmap, or a file emptied since the stat
            handle.seek(0)
            return handle.read()


def read_archive_file(path: str | os.PathLike, levels: int | str | None = 2,
                      verify: bool = False) -> tuple[Path, dict, dict, CorruptArchive]:
    """Read and verify an archive file (of `levels` levels; None: any): (path, JSON header, arrays by
    name as zero-copy views, the error to raise when the header does not describe the contents;
    levels="cross-classified": archive_crossed.py's archive, which every other caller refuses). The
    whole-file checksum is computed unless verified.py knows this very file was verified in full
    before; `verify` always computes it."""
    from . import verified
    from .files import check_regular

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: no such archive; build it with 'hlmcli mdm build'")
    check_regular(path, "archive")
    before = os.stat(path)
    raw = _file_bytes(path, before.st_size)
    after = os.stat(path)
    rebuild = "rebuild it with 'hlmcli mdm build'"
    if len(raw) < PREFIX.size or raw[:8] != MAGIC:
        raise CorruptArchive(f"{path}: not an hlmcli archive; build one with 'hlmcli mdm build'")
    _, version, reserved, header_len, checksum = PREFIX.unpack_from(raw)
    if version not in READABLE_VERSIONS:
        raise CorruptArchive(f"{path}: archive format version {version}, this hlmcli reads {READABLE_VERSIONS[0]} "
                             f"to {FORMAT_VERSION}; {rebuild}")
    body = memoryview(raw)[PREFIX.size:]
    head = bytes(memoryview(raw)[:PREFIX.size + min(header_len, len(body))])
    if verify or not verified.known(path, before, after, head):
        digest = hashlib.sha256(PREFIX.pack(MAGIC, version, reserved, header_len, bytes(32)))
        digest.update(body)
        if digest.digest() != checksum:
            described = _described_size(body, header_len)
            if described is not None and described > len(raw):  # cut short (a copy or a disk that filled up)
                at_least = "" if header_len <= len(body) else "at least "
                raise CorruptArchive(f"{path}: the archive is truncated: the file has {len(raw)} bytes, its header "
                                     f"describes {at_least}{described}; {rebuild}")
            raise CorruptArchive(f"{path}: checksum mismatch, the archive is damaged; {rebuild}")
        verified.remember(path, before, after, head)
    damaged = CorruptArchive(f"{path}: the archive header does not describe its contents; {rebuild}")
    if header_len > len(body) or header_len % 8:
        raise damaged
    try:
        header = _peeked(path, head) if len(head) == PREFIX.size + header_len else None
        if header is None:
            header = json.loads(bytes(body[:header_len]).decode("utf-8"))
        crossed = isinstance(header, dict) and header.get("kind") == "cross-classified"
        if crossed != (levels == "cross-classified"):  # archive_crossed.py's archives and nested ones
            raise DataError(f"{path}: " + ("a cross-classified (HCM2) archive: fit it with --formula or HCM2's "
                                           "equations (-1, -2 with --row-id/--col-id)" if crossed else
                                           "a nested archive, not a cross-classified one; build HCM2's archive with "
                                           "'hlmcli mdm build LEVEL1 ROWS COLS --row-id A --col-id B'"))
        if isinstance(header, dict) and levels is not None and header.get("levels", 2) != levels:
            raise DataError(f"{path}: {_wrong_levels(header.get('levels', 2), levels)}")
        arrays = {}
        offset = header_len
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            if dtype.str not in ("<f8", "<i8") or not all(isinstance(n, int) and n >= 0 for n in spec["shape"]):
                raise damaged
            count = int(np.prod(spec["shape"], dtype=np.int64)) if spec["shape"] else 1
            if offset + count * dtype.itemsize > len(body):
                raise damaged
            arr = np.frombuffer(body, dtype=dtype, count=count, offset=offset).reshape(spec["shape"])
            offset += arr.nbytes
            arrays[spec["name"]] = arr
        if offset != len(body):
            raise damaged
        if version == 2 and "levels" not in header:  # format 2's two-level header, in format 3's names
            header = {**header, "levels": 2, "level2_names": header["level2_names"], "unit2_ids": header["unit_ids"],
                      "id_names": header["id_names"][1:], "level1_id": header["id_names"][0]}
            arrays["offsets2"] = arrays.pop("offsets")
        header = {**header, "format_version": version}  # the prefix's, which the reader went by
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise damaged from None
    return path, header, arrays, damaged


def load_archive(path: str | os.PathLike, levels: int | None = 2, verify: bool = False) -> Archive:
    """The archive at `path`, checked; `levels`: the number of levels the caller needs (None: any);
    `verify`: hash the whole file even if it was verified before (io/verified.py)."""
    path, header, arrays, damaged = read_archive_file(path, levels, verify)
    try:
        K = int(header.get("levels", 2))
        lvs = [LevelData(header["level1_names"], arrays["level1"])]
        for k in range(2, K + 1):
            lvs.append(LevelData(header[f"level{k}_names"], arrays[f"level{k}"], header[f"unit{k}_ids"],
                                 arrays[f"offsets{k}"]))
        archive = Archive(lvs, header["id_kind"], tuple(header["id_names"]), header["missing"],
                          [Source(**s) for s in header["sources"]], header["value_labels"], header["notes"], path,
                          header.get("level1_id") or header["id_names"][0], header["format_version"])
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise damaged from None
    if K < 2 or len(archive.id_names) != K - 1:
        raise damaged
    for k, lv in enumerate(archive.levels, 1):
        if lv.values.ndim != 2 or lv.values.shape[0] != len(lv.names):
            raise damaged
        if k > 1:
            J, below = len(lv.ids), archive.levels[k - 2].values.shape[1]
            off = lv.offsets
            if (lv.values.shape[1] != J or off.shape != (J + 1,) or off[0] != 0 or off[-1] != below
                    or np.any(np.diff(off) < 0)):
                raise damaged
    return archive


def changed_sources(archive: Archive) -> list[str]:
    """Sources that still exist where they were but whose content differs from when the archive was built."""
    changed = []
    for src in archive.sources:
        p = Path(src.path)
        if src.path == "-" or not p.is_file():
            continue
        st = p.stat()
        if st.st_size == src.size and st.st_mtime_ns == src.mtime_ns:
            continue
        if st.st_size != src.size or sha256_file(p) != src.sha256:
            changed.append(src.path)
    return changed


# ---------------------------------------------------------------- statistics for `mdm info`

@dataclass(frozen=True)
class VariableSummary:
    name: str
    n: int
    mean: float
    sd: float
    minimum: float
    maximum: float


def summarize(values: np.ndarray, names: list[str]) -> list[VariableSummary]:
    out = []
    for name, col in zip(names, values):
        ok = col[~np.isnan(col)]
        n = ok.size
        mean = float(ok.mean()) if n else float("nan")
        sd = float(ok.std(ddof=1)) if n > 1 else float("nan")
        out.append(VariableSummary(name, n, mean, sd, float(ok.min()) if n else float("nan"),
                                   float(ok.max()) if n else float("nan")))
    return out


# ---------------------------------------------------------------- from files

def build_from_files(level1_path, level2_path, options: BuildOptions, fmt: str | None = None,
                     delimiter: str | None = None, warn=lambda message: None, progress=None) -> Archive:
    """Read both files and merge them. `progress(step_name)` is called once per stage."""
    from .files import same_file
    from .readers import read_table

    step = progress or (lambda name: None)
    same = str(level1_path) == str(level2_path) == "-" or (
        "-" not in (str(level1_path), str(level2_path)) and same_file(level1_path, level2_path))
    step(f"reading {Path(level1_path).name}")
    # one file for both levels: both ids as text, as two files would read them ("007" stays "007")
    ids = tuple(dict.fromkeys((options.id1, options.id2))) if same else (options.id1,)
    level1 = read_table(level1_path, fmt, delimiter, string_columns=ids)
    if same:
        level2 = level1
    else:
        step(f"reading {Path(level2_path).name}")
        level2 = read_table(level2_path, fmt, delimiter, string_columns=(options.id2,))
    for table in (level1, level2) if not same else (level1,):
        if table.format == "csv" and table.encoding:
            warn(f"{table.path.name}: not valid UTF-8, so the whole file was decoded as {table.encoding}")
    step("merging")
    archive = build_archive(level1, level2, options, same_file=same, warn=warn)
    step("hashing sources")
    first = describe_source(level1_path, "level-1", level1)
    second = Source(**{**first.__dict__, "role": "level-2"}) if same else describe_source(level2_path, "level-2", level2)
    archive.sources = [first, second]
    return archive
