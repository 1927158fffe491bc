"""Archives of K levels (HLM 7's HLM4 MDM for K = 4): level-1 records in level-2 units in ... level-K units.

The container is the two- and three-level one (magic, format version, whole-file SHA-256, JSON header,
raw little-endian arrays) with "levels": K in its header and the three-level keys continued level by
level, so a three-level archive is this format at K = 3 and loads here unchanged:

  level1 … levelK         float64 (variables, units of that level; records at level 1)
  offsets2 … offsetsK     int64 (J_ℓ + 1): the level-(ℓ−1) units of level-ℓ unit k are offsetsℓ[k]:offsetsℓ[k+1]
  header: level{ℓ}_names, n_level{ℓ}, unit{ℓ}_ids (ℓ ≥ 2), id_names (the ids of levels 2..K), ...

Which files carry which ids (K ≥ 4 builds): the level-1 file carries the level-2 id; the level-ℓ file
(1 < ℓ < K) carries the level-ℓ id and the level-(ℓ+1) id of its unit; the level-K file the level-K id.
Each level's ids are unique over the whole data (a unit under two parents is refused), as HLM's MDM
requires. Each level comes from its own file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .archive import (_PREFIX, FORMAT_VERSION, MAGIC, CorruptArchive, Source, _first_few, _is_text, _refuse_infinite,
                      read_archive_file)
from .errors import DataError
from .files import atomic_write, sha256_file


@dataclass(frozen=True)
class BuildOptionsLevels:
    ids: tuple[str, ...]  # the unit ids of levels 2..K
    keeps: tuple  # per level 1..K: variables to keep, or None for all
    missing: str = "analysis"
    drop_unmatched: bool = False

    @property
    def n_levels(self) -> int:
        return len(self.ids) + 1

    def as_dict(self) -> dict:
        return {"levels": self.n_levels, "ids": list(self.ids), "keeps": [list(k) if k else None for k in self.keeps],
                "missing": self.missing, "drop_unmatched": self.drop_unmatched}


@dataclass
class LevelData:
    """One level: its variables (variables, units), the units' ids (None at level 1) and, for each
    unit, the range of its children one level down (offsets, None at level 1)."""
    names: list[str]
    values: np.ndarray
    ids: list[str] | None = None
    offsets: np.ndarray | None = None


@dataclass
class ArchiveLevels:
    levels: list[LevelData]
    id_kind: str
    id_names: tuple  # the unit ids of levels 2..K
    missing: str
    sources: list[Source] = field(default_factory=list)
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    path: Path | None = None

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


# ---------------------------------------------------------------- building (K ≥ 4, one file per level)

def _ids(table, column: str):
    from .readers import unit_codes

    codes, names, kind = unit_codes(table, column)
    return np.asarray(names, dtype=object)[codes], kind


def build_archive_levels(tables, options: BuildOptionsLevels, warn=lambda m: None) -> ArchiveLevels:
    """Merge K tables, one per level, into an archive. DataError on anything to fix."""
    from .readers import find_column, numeric_column

    K = options.n_levels
    if options.missing not in ("now", "analysis"):
        raise DataError(f"--missing must be 'now' or 'analysis', not '{options.missing}'")
    folded = [i.lower() for i in options.ids]
    if len(set(folded)) != len(folded):
        raise DataError("--id2 ... --id" + str(K) + " must name different columns (one unit id per level)")
    ids_cols = set(folded)
    text_columns: list[str] = []
    keeps = []
    for level, table in enumerate(tables, 1):
        req = options.keeps[level - 1]
        if req is not None:
            keeps.append([find_column(table, n, f"level-{level} variable") for n in req])
        else:
            keeps.append([c for c in table.data.columns
                          if c.lower() not in ids_cols and not _is_text(table, c, text_columns)])
    if text_columns:
        warn(f"text column(s) {_first_few(dict.fromkeys(text_columns))} are labels, not numbers, and are left out "
             "of the variables; name them with --l1-vars ... only if they hold numbers")
    all_names = [n for k in keeps for n in k]
    low = [n.lower() for n in all_names]
    dup = sorted({n for n in all_names if low.count(n.lower()) > 1})
    if dup:
        raise DataError(f"variable '{dup[0]}' is in more than one level; leave it out of all but one with "
                        "--l1-vars ... --l" + str(K) + "-vars")
    notes: dict = {"level1_records_read": int(len(tables[0].data)), "dropped_unmatched": 0, "dropped_missing": 0}
    inf_notes: dict = {}
    kinds = []
    # top down: each level's ids (unique) and the position of its parent one level up
    ids_of, values_of, parent_of = {}, {}, {}
    for level in range(K, 1, -1):
        t = tables[level - 1]
        id_name = options.ids[level - 2]
        col = find_column(t, id_name, f"level-{level} unit id")
        ids, kind = _ids(t, col)
        kinds.append(kind)
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        if (counts > 1).any():
            dups = list(uniq[counts > 1])
            raise DataError(f"{t.path}: column {col}: {len(dups)} level-{level} id(s) appear more than once "
                            f"({_first_few(dups)}); the level-{level} file needs exactly one row per level-{level} unit")
        vals = np.vstack([numeric_column(t, c) for c in keeps[level - 1]]) if keeps[level - 1] else np.empty((0, len(ids)))
        _refuse_infinite(t, keeps[level - 1], vals, False, warn, inf_notes)
        if level < K:
            up_name = options.ids[level - 1]
            up_col = find_column(t, up_name, f"level-{level + 1} unit id (each level-{level} unit's level-{level + 1} unit)")
            up_ids, _ = _ids(t, up_col)
            pos = {u: k for k, u in enumerate(ids_of[level + 1])}
            parent = np.array([pos.get(u, -1) for u in up_ids], dtype=np.int64)
            lost = parent < 0
            if lost.any():
                missing_ids = sorted(set(up_ids[lost]))
                if not options.drop_unmatched:
                    raise DataError(f"{t.path}: {int(lost.sum())} level-{level} unit(s) belong to level-{level + 1} "
                                    f"unit(s) not in {tables[level].path} ({up_name} {_first_few(missing_ids)}); add "
                                    "them there or pass --drop-unmatched")
                warn(f"dropped {int(lost.sum())} level-{level} unit(s) whose level-{level + 1} unit is not in "
                     f"{tables[level].path.name} ({up_name} {_first_few(missing_ids)})")
                ids, vals, parent = ids[~lost], vals[:, ~lost], parent[~lost]
            parent_of[level] = parent
        ids_of[level], values_of[level] = ids, vals
    t1 = tables[0]
    col2 = find_column(t1, options.ids[0], "level-2 unit id")
    rec2, _ = _ids(t1, col2)
    pos2 = {u: j for j, u in enumerate(ids_of[2])}
    unit = np.array([pos2.get(u, -1) for u in rec2], dtype=np.int64)
    unmatched = unit < 0
    if unmatched.any():
        missing_ids = list(dict.fromkeys(rec2[unmatched]))
        if not options.drop_unmatched:
            raise DataError(f"{t1.path}: {int(unmatched.sum())} level-1 records in {len(missing_ids)} level-2 unit(s) have "
                            f"no level-2 record in {tables[1].path} ({options.ids[0]} {_first_few(missing_ids)}); add them "
                            "there or pass --drop-unmatched")
        notes["dropped_unmatched"] = int(unmatched.sum())
        warn(f"dropped {int(unmatched.sum())} level-1 records whose level-2 unit is not in {tables[1].path.name} "
             f"({options.ids[0]} {_first_few(missing_ids)})")
    l1 = np.vstack([numeric_column(t1, c) for c in keeps[0]]) if keeps[0] else np.empty((0, len(unit)))
    _refuse_infinite(t1, keeps[0], l1, options.missing == "now", warn, inf_notes)
    notes.update(inf_notes)
    keep_rows = ~unmatched
    if options.missing == "now" and keeps[0]:
        has_missing = np.isnan(l1).any(axis=0) & keep_rows
        notes["dropped_missing"] = int(has_missing.sum())
        keep_rows &= ~has_missing
    l1, unit = l1[:, keep_rows], unit[keep_rows]
    if unit.size == 0:
        raise DataError(f"{t1.path}: no level-1 records are left after matching and deletion; check the id columns")
    # bottom up: units without children are left out; then order each level by its parent (stable)
    child = unit
    present = {}
    for level in range(2, K + 1):
        has = np.bincount(child, minlength=len(ids_of[level])) > 0
        if not has.all():
            absent = list(ids_of[level][~has])
            notes[f"level{level}_units_left_out"] = len(absent)
            what = "level-1 records" if level == 2 else f"level-{level - 1} units"
            warn(f"{len(absent)} level-{level} unit(s) have no {what} and are left out (ids {_first_few(absent)})")
        present[level] = has
        if level < K:
            child = parent_of[level][has]
    # new numbering, top down: level-K units in file order; level-ℓ units by parent, then file order
    order = {K: np.flatnonzero(present[K])}
    new = {}
    for level in range(K, 1, -1):
        new[level] = np.full(len(ids_of[level]), -1, dtype=np.int64)
        if level < K:
            kept = np.flatnonzero(present[level])
            order[level] = kept[np.argsort(new[level + 1][parent_of[level][kept]], kind="stable")]
        new[level][order[level]] = np.arange(order[level].size)
    unit = new[2][unit]
    o1 = np.argsort(unit, kind="stable")
    unit, l1 = unit[o1], l1[:, o1]
    levels = [LevelData(list(keeps[0]), np.ascontiguousarray(l1, dtype=np.float64))]
    child_units = unit
    for level in range(2, K + 1):
        vals = values_of[level][:, order[level]]
        uids = [str(u) for u in ids_of[level][order[level]]]
        t = tables[level - 1]
        for k, name in enumerate(keeps[level - 1]):
            bad = np.flatnonzero(np.isnan(vals[k]))
            if bad.size:
                raise DataError(f"{t.path}: column {name} is missing for level-{level} unit {uids[bad[0]]}"
                                f"{f' and {bad.size - 1} more' if bad.size > 1 else ''}; HLM needs complete "
                                f"level-{level} data, so fill it in or leave {name} out with --l{level}-vars")
        offsets = np.concatenate(([0], np.cumsum(np.bincount(child_units, minlength=len(uids))))).astype(np.int64)
        levels.append(LevelData(list(keeps[level - 1]), np.ascontiguousarray(vals, dtype=np.float64), uids, offsets))
        if level < K:
            child_units = new[level + 1][parent_of[level][order[level]]]
    labels = {}
    for table, cols in zip(tables, keeps):
        for c in cols:
            if c in table.value_labels:
                labels[c] = table.value_labels[c]
    id_names = tuple(find_column(tables[level - 1], options.ids[level - 2], f"level-{level} unit id")
                     for level in range(2, K + 1))
    return ArchiveLevels(levels, kinds[0] if len(set(kinds)) == 1 else "string", id_names, options.missing,
                         value_labels=labels, notes=notes)


def build_from_files_levels(paths, options: BuildOptionsLevels, fmt=None, delimiter=None, warn=lambda m: None,
                            progress=None) -> ArchiveLevels:
    """Read the K files (one per level) and merge them."""
    from .archive import describe_source
    from .files import same_file
    from .readers import read_table

    step = progress or (lambda name: None)
    K = options.n_levels
    if len(paths) != K:
        raise DataError(f"a {K}-level archive is built from {K} files (one per level), not {len(paths)}")
    if any(str(p) == "-" for p in paths):
        raise DataError(f"{K}-level archives are built from files, not standard input; give the {K} paths")
    for i in range(K):
        for j in range(i):
            if same_file(paths[i], paths[j]):
                raise DataError(f"{paths[i]}: the same file for levels {j + 1} and {i + 1}; a {K}-level archive takes "
                                "one file per level")
    tables = []
    for p in paths:
        step(f"reading {Path(p).name}")
        t = read_table(p, fmt, delimiter, string_columns=tuple(options.ids))
        if t.format == "csv" and t.encoding:
            warn(f"{t.path.name}: not valid UTF-8, so the whole file was decoded as {t.encoding}")
        tables.append(t)
    step("merging")
    archive = build_archive_levels(tables, options, warn=warn)
    step("hashing sources")
    archive.sources = [describe_source(p, f"level-{k}", t) for k, (p, t) in enumerate(zip(paths, tables), 1)]
    return archive


# ---------------------------------------------------------------- writing and loading

def _array_names(K: int) -> list[str]:
    return [f"level{k}" for k in range(1, K + 1)] + [f"offsets{k}" for k in range(2, K + 1)]


def archive_levels_bytes(archive: ArchiveLevels) -> list[bytes]:
    K = archive.n_levels
    arrays = ([lv.values.astype("<f8", copy=False) for lv in archive.levels]
              + [lv.offsets.astype("<i8", copy=False) for lv in archive.levels[1:]])
    header = {
        "tool": "hlmcli", "format_version": FORMAT_VERSION, "levels": K,
        "id_kind": archive.id_kind, "id_names": list(archive.id_names), "missing": archive.missing,
        "value_labels": archive.value_labels, "notes": archive.notes,
        "sources": [s.__dict__ for s in archive.sources],
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(_array_names(K), arrays)],
    }
    for k, lv in enumerate(archive.levels, 1):
        header[f"level{k}_names"] = lv.names
        header[f"n_level{k}"] = int(lv.values.shape[1])
        if k > 1:
            header[f"unit{k}_ids"] = lv.ids
    text = json.dumps(header, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    body = [text] + [np.ascontiguousarray(a).tobytes() for a in arrays]
    digest = hashlib.sha256(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), bytes(32)))
    for chunk in body:
        digest.update(chunk)
    return [_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), digest.digest())] + body


def write_archive_levels(archive: ArchiveLevels, path, mode: int | None = None) -> None:
    atomic_write(path, archive_levels_bytes(archive), mode=mode)


def load_archive_levels(path, levels: int) -> ArchiveLevels:
    path, header, arrays, damaged = read_archive_file(path, levels)
    try:
        lvs = [LevelData(header["level1_names"], arrays["level1"])]
        for k in range(2, levels + 1):
            lvs.append(LevelData(header[f"level{k}_names"], arrays[f"level{k}"], header[f"unit{k}_ids"],
                                 arrays[f"offsets{k}"]))
        a = ArchiveLevels(lvs, header["id_kind"], tuple(header["id_names"]), header["missing"],
                          [Source(**s) for s in header["sources"]], header["value_labels"], header["notes"], path)
    except (CorruptArchive, DataError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    if len(a.id_names) != levels - 1:
        raise damaged
    for k, lv in enumerate(a.levels, 1):
        if lv.values.ndim != 2 or lv.values.shape[0] != len(lv.names):
            raise damaged
        if k > 1:
            J, below = len(lv.ids), a.levels[k - 2].values.shape[1]
            off = lv.offsets
            if (lv.values.shape[1] != J or off.shape != (J + 1,) or off[0] != 0 or off[-1] != below
                    or np.any(np.diff(off) < 0)):
                raise damaged
    return a


# ---------------------------------------------------------------- the cache (as cache.py, K sources)

def cached_archive_levels(paths, options: BuildOptionsLevels, fmt=None, delimiter=None, cache_dir=None,
                          warn=lambda m: None) -> tuple[ArchiveLevels, str]:
    """`hlmcli fit L1 … LK`: load the cached archive for these sources and options, else build it."""
    from .cache import _source_mode, cache_dir_for, secure_cache_dir
    from .files import check_regular, remove_stale_temporaries

    K = options.n_levels
    for p in paths:
        check_regular(p, "data file")
    folder = secure_cache_dir(cache_dir_for(cache_dir))
    remove_stale_temporaries(folder)
    hashes = tuple(sha256_file(p) for p in paths)
    material = {"format_version": FORMAT_VERSION, "levels": K, "sources": list(hashes),
                "options": options.as_dict(), "format": fmt, "delimiter": delimiter}
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]
    target = folder / f"{key}.mdm"
    status = "built"
    if os.path.lexists(target):
        try:
            check_regular(target, "cached archive")
            archive = load_archive_levels(target, K)
            if tuple(s.sha256 for s in archive.sources) == hashes:
                try:
                    os.utime(target)
                except OSError:
                    pass
                return archive, "reused"
            status = "rebuilt (the cached archive was built from other data)"
            warn(f"{target}: cached archive does not match the input files; rebuilding it")
        except CorruptArchive:
            status = "rebuilt (the cached archive was damaged)"
            warn(f"{target}: cached archive failed its checksum; rebuilding it")
        except DataError as exc:
            status = "rebuilt (the cached archive was unusable)"
            warn(f"{exc}; rebuilding it")
        if os.path.islink(target) or not os.path.isfile(target):
            raise DataError(f"{target}: not a regular file in the cache folder; remove it")
    archive = build_from_files_levels(paths, options, fmt, delimiter, warn=warn)
    if tuple(s.sha256 for s in archive.sources) != hashes:
        raise DataError(f"{paths[0]}: the data changed while it was being read; run the command again")
    write_archive_levels(archive, target, mode=_source_mode(*paths))
    archive.path = target
    return archive, status


# ---------------------------------------------------------------- `mdm info`

def archive_levels_info(archive: ArchiveLevels) -> dict:
    """HLM 7's MDM statistics for every level."""
    from . import __version__
    from .archive import summarize

    K = archive.n_levels
    info = {
        "schema": 1, "tool": "hlmcli", "version": __version__, "levels": K,
        "archive": archive.path.name if archive.path else None, "format_version": FORMAT_VERSION,
        "id": {**{f"level{k}": archive.id_names[k - 2] for k in range(2, K + 1)}, "kind": archive.id_kind},
        "missing": archive.missing,
        **{f"n_level{k}": archive.n(k) for k in range(1, K + 1)},
        "units_per_unit": {f"level{k}": {"min": int(np.diff(archive.levels[k - 1].offsets).min()),
                                         "max": int(np.diff(archive.levels[k - 1].offsets).max()),
                                         "mean": float(np.diff(archive.levels[k - 1].offsets).mean())}
                           for k in range(2, K + 1)},
        "sources": [{"role": s.role, "file": s.name, "format": s.format, "encoding": s.encoding,
                     "size": s.size, "sha256": s.sha256} for s in archive.sources],
        "notes": archive.notes,
        **{f"level{k}": [v.__dict__ for v in summarize(archive.levels[k - 1].values, archive.names(k))]
           for k in range(1, K + 1)},
        "value_labels": archive.value_labels,
    }
    return info


def archive_levels_info_text(info: dict) -> str:
    from .report import _num, printable

    K = info["levels"]
    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''} ({K} levels, HLM{K})".rstrip())
    w("")
    for s in info["sources"]:
        enc = f", encoding {s['encoding']}" if s["encoding"] else ""
        w(f"  {s['role']} file: {s['file']} ({s['format']}{enc}, {s['size']} bytes, sha256 {s['sha256'][:16]})")
    ids = ", ".join(f"{info['id'][f'level{k}']} (level-{k})" for k in range(2, K + 1))
    w(f"  unit ids: {ids}, stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    for key, value in info["notes"].items():
        if key != "level1_records_read" and value:
            w(f"  {key.replace('_', ' ')}: {value}")
    w(f"  level-1 records: {info['n_level1']}")
    for k in range(2, K + 1):
        w(f"  level-{k} units:   {info[f'n_level{k}']}")
    for k in range(2, K + 1):
        u = info["units_per_unit"][f"level{k}"]
        what = "records" if k == 2 else f"level-{k - 1} units"
        w(f"  {what} per level-{k} unit: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    for k in range(1, K + 1):
        w("")
        w(f"          LEVEL-{k} DESCRIPTIVE STATISTICS")
        w("")
        w(f"{'VARIABLE NAME':>16} {'N':>9} {'MEAN':>12} {'SD':>12} {'MINIMUM':>12} {'MAXIMUM':>12}")
        for v in info[f"level{k}"]:
            w(f"{v['name']:>16} {v['n']:>9d} {_num(v['mean'])} {_num(v['sd'])} {_num(v['minimum'])} {_num(v['maximum'])}")
    if info["value_labels"]:
        w("")
        w("  value labels:")
        for name, labels in info["value_labels"].items():
            w(f"    {name}: " + ", ".join(f"{k} = {v}" for k, v in labels.items()))
    return "\n".join(printable(line) for line in out) + "\n"
