"""Three-level archives (HLM 7's HLM3 MDM): level-1 records in level-2 units in level-3 units.

The two-level archive (archive.py) is left exactly as it is: same files, same bytes, same cache keys.
A three-level archive uses the same container (magic, format version, whole-file SHA-256, JSON header,
raw little-endian arrays) with "levels": 3 in its header and three more arrays:

  level1   float64 (variables, records)       records sorted by level-2 unit
  level2   float64 (variables, level-2 units) level-2 units sorted by level-3 unit
  level3   float64 (variables, level-3 units)
  offsets2 int64   (J2 + 1)  records of level-2 unit j are offsets2[j]:offsets2[j+1]
  offsets3 int64   (J3 + 1)  level-2 units of level-3 unit k are offsets3[k]:offsets3[k+1]

Which files carry which ids (issue 13): the level-1 file carries the level-2 id and, usually, the
level-3 id; the level-2 file carries the level-2 id and the level-3 id, or the level-2 id alone when
the level-1 file gives the link; the level-3 file carries the level-3 id. Level-2 ids must be unique
over the whole data (a level-2 id under two level-3 units is refused), as HLM3's MDM requires.
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

LEVELS = 3


@dataclass(frozen=True)
class BuildOptions3:
    id2: str
    id3: str
    keep1: tuple[str, ...] | None = None
    keep2: tuple[str, ...] | None = None
    keep3: tuple[str, ...] | None = None
    missing: str = "analysis"
    drop_unmatched: bool = False

    def as_dict(self) -> dict:
        return {"levels": 3, "id2": self.id2, "id3": self.id3, "keep1": self.keep1, "keep2": self.keep2,
                "keep3": self.keep3, "missing": self.missing, "drop_unmatched": self.drop_unmatched}


@dataclass
class Archive3:
    level1_names: list[str]
    level2_names: list[str]
    level3_names: list[str]
    level1: np.ndarray  # (variables, records)
    level2: np.ndarray  # (variables, J2)
    level3: np.ndarray  # (variables, J3)
    unit2_ids: list[str]
    unit3_ids: list[str]
    offsets2: np.ndarray  # (J2 + 1,)
    offsets3: np.ndarray  # (J3 + 1,)
    id_kind: str
    id_names: tuple[str, str]  # (level-2 id, level-3 id)
    missing: str
    sources: list[Source] = field(default_factory=list)
    value_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    path: Path | None = None

    levels = 3

    @property
    def n_level1(self) -> int:
        return int(self.level1.shape[1])

    @property
    def n_level2(self) -> int:
        return len(self.unit2_ids)

    @property
    def n_level3(self) -> int:
        return len(self.unit3_ids)

    @property
    def unit2_of_record(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_level2), np.diff(self.offsets2))

    @property
    def unit3_of_unit2(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_level3), np.diff(self.offsets3))


# ---------------------------------------------------------------- building

def _ids(table, column: str):
    from .readers import unit_codes

    codes, names, kind = unit_codes(table, column)
    return np.asarray(names, dtype=object)[codes], kind


def _has_column(table, name: str) -> str | None:
    hits = [c for c in table.data.columns if c.lower() == name.lower()]
    return hits[0] if hits else None


def _collapse(table, key_ids: np.ndarray, names: list[str], level: int, id_name: str):
    """A file shared with a lower level: one row per unit, each kept variable constant within it."""
    from .readers import numeric_column

    order, first = np.unique(key_ids.astype(str), return_index=True)
    codes = np.searchsorted(order, key_ids.astype(str))
    values = np.vstack([numeric_column(table, c) for c in names]) if names else np.empty((0, len(key_ids)))
    for k, name in enumerate(names):
        v = values[k]
        lo = np.full(order.size, np.inf)
        hi = np.full(order.size, -np.inf)
        ok = ~np.isnan(v)
        np.minimum.at(lo, codes[ok], v[ok])
        np.maximum.at(hi, codes[ok], v[ok])
        nan_count = np.bincount(codes[~ok], minlength=order.size)
        bad = np.flatnonzero((hi > lo) | ((nan_count > 0) & np.isfinite(lo)))
        if bad.size:
            raise DataError(f"{table.path}: column {name} varies within {id_name} {order[bad[0]]}; a level-{level} "
                            f"variable must be constant within each level-{level} unit, so leave it out with --l{level}-vars")
    keep = np.sort(first)
    return key_ids[keep], values[:, keep], keep


def build_archive3(t1, t2, t3, options: BuildOptions3, warn=lambda m: None) -> Archive3:
    """Merge three tables (they may be the same table) into an Archive3. DataError on anything to fix."""
    from .readers import find_column, numeric_column

    if options.missing not in ("now", "analysis"):
        raise DataError(f"--missing must be 'now' or 'analysis', not '{options.missing}'")
    if options.id2.lower() == options.id3.lower():
        raise DataError(f"--id2 and --id3 both name {options.id2}; the level-2 and level-3 unit ids must be different columns")
    id3_in3 = find_column(t3, options.id3, "level-3 unit id")
    id2_in2 = find_column(t2, options.id2, "level-2 unit id")
    id3_in2 = _has_column(t2, options.id3)
    id2_in1 = find_column(t1, options.id2, "level-2 unit id")
    id3_in1 = _has_column(t1, options.id3)
    if id3_in2 is None and id3_in1 is None:
        raise DataError(f"{t2.path}: no column {options.id3}, and {t1.path} has none either; one of them must link "
                        f"each level-2 unit to its level-3 unit, so add the {options.id3} column")
    ids_cols = {options.id2.lower(), options.id3.lower()}
    same12, same23 = t1 is t2, t2 is t3
    text_columns: list[str] = []

    def keep_for(table, requested, level, exclude):
        if requested is not None:
            return [find_column(table, n, f"level-{level} variable") for n in requested]
        return [c for c in table.data.columns if c.lower() not in ids_cols | exclude and not _is_text(table, c, text_columns)]

    # Variables of each level. A shared file: a variable belongs to the highest level it is constant in.
    keep3 = keep_for(t3, options.keep3, 3, set())
    if same23 and options.keep3 is None:
        ids3_all, _ = _ids(t3, id3_in3)
        keep3 = [c for c in keep3 if _constant(numeric_column(t3, c), ids3_all)]
    keep2 = keep_for(t2, options.keep2, 2, {c.lower() for c in keep3} if same23 else set())
    if same12 and options.keep2 is None:
        ids2_all, _ = _ids(t2, id2_in2)
        keep2 = [c for c in keep2 if _constant(numeric_column(t2, c), ids2_all)]
    exclude1 = ({c.lower() for c in keep2} if same12 else set()) | ({c.lower() for c in keep3} if t1 is t3 else set())
    keep1 = keep_for(t1, options.keep1, 1, exclude1)
    if text_columns:
        warn(f"text column(s) {_first_few(dict.fromkeys(text_columns))} are labels, not numbers, and are left out "
             "of the variables; name them with --l1-vars/--l2-vars/--l3-vars only if they hold numbers")
    all_names = keep1 + keep2 + keep3
    folded = [n.lower() for n in all_names]
    dup = sorted({n for n in all_names if folded.count(n.lower()) > 1})
    if dup:
        raise DataError(f"variable '{dup[0]}' is in more than one level; leave it out of all but one with "
                        "--l1-vars/--l2-vars/--l3-vars")
    notes: dict = {"level1_records_read": int(len(t1.data)), "dropped_unmatched": 0, "dropped_missing": 0,
                   "level2_units_without_records": 0, "level3_units_without_units": 0}
    inf_notes: dict = {}
    as_missing = options.missing == "now"

    # Level 3: one row per unit.
    ids3, kind3 = _ids(t3, id3_in3)
    if same23 or t1 is t3:
        ids3, l3_values, _ = _collapse(t3, ids3, keep3, 3, options.id3)
    else:
        l3_values = np.vstack([numeric_column(t3, c) for c in keep3]) if keep3 else np.empty((0, len(ids3)))
        _refuse_infinite(t3, keep3, l3_values, False, warn, inf_notes)
        uniq, counts = np.unique(ids3.astype(str), return_counts=True)
        if (counts > 1).any():
            dups = list(uniq[counts > 1])
            raise DataError(f"{t3.path}: column {id3_in3}: {len(dups)} level-3 id(s) appear more than once "
                            f"({_first_few(dups)}); the level-3 file needs exactly one row per level-3 unit")
    pos3 = {uid: k for k, uid in enumerate(ids3)}

    # Level 2: one row per unit, and its level-3 unit.
    ids2, kind2 = _ids(t2, id2_in2)
    link_table, link_id2, link_id3 = (t2, ids2, None) if id3_in2 else (t1, None, None)
    if id3_in2:
        link_id3 = _ids(t2, id3_in2)[0]
    else:
        link_id2 = _ids(t1, id2_in1)[0]
        link_id3 = _ids(t1, id3_in1)[0]
    parent: dict[str, str] = {}
    for a, b in zip(link_id2, link_id3):
        prev = parent.setdefault(a, b)
        if prev != b:
            raise DataError(f"{link_table.path}: level-2 unit {a} ({options.id2}) appears under two level-3 units, "
                            f"{prev} and {b} ({options.id3}); a level-2 unit belongs to one level-3 unit, so give "
                            "level-2 units ids that are unique across level-3 units")
    if same12:
        ids2, l2_values, _ = _collapse(t2, ids2, keep2, 2, options.id2)
    else:
        l2_values = np.vstack([numeric_column(t2, c) for c in keep2]) if keep2 else np.empty((0, len(ids2)))
        _refuse_infinite(t2, keep2, l2_values, False, warn, inf_notes)
        uniq, counts = np.unique(ids2.astype(str), return_counts=True)
        if (counts > 1).any():
            dups = list(uniq[counts > 1])
            raise DataError(f"{t2.path}: column {id2_in2}: {len(dups)} level-2 id(s) appear more than once "
                            f"({_first_few(dups)}); the level-2 file needs exactly one row per level-2 unit")
    no_parent = [u for u in ids2 if u not in parent]
    if no_parent:  # only possible when the link comes from the level-1 file
        keep_rows = np.array([u in parent for u in ids2])
        ids2, l2_values = ids2[keep_rows], l2_values[:, keep_rows]
        notes["level2_units_without_records"] += len(no_parent)
        warn(f"{len(no_parent)} level-2 unit(s) in {t2.path.name} have no level-1 records and are left out "
             f"(ids {_first_few(no_parent)})")
    parent3 = np.array([pos3.get(parent[u], -1) for u in ids2], dtype=np.int64)
    if (parent3 < 0).any():
        lost = sorted({parent[u] for u, p in zip(ids2, parent3) if p < 0})
        if not options.drop_unmatched:
            raise DataError(f"{t2.path}: {int((parent3 < 0).sum())} level-2 unit(s) belong to level-3 unit(s) not in "
                            f"{t3.path} ({options.id3} {_first_few(lost)}); add them there or pass --drop-unmatched")
        warn(f"dropped {int((parent3 < 0).sum())} level-2 unit(s) whose level-3 unit is not in {t3.path.name} "
             f"({options.id3} {_first_few(lost)})")
        ok = parent3 >= 0
        ids2, l2_values, parent3 = ids2[ok], l2_values[:, ok], parent3[ok]
    pos2 = {uid: j for j, uid in enumerate(ids2)}

    # Level 1: match records to level-2 units; the level-3 id, when given, must agree with the link.
    rec2, _ = _ids(t1, id2_in1)
    unit = np.array([pos2.get(u, -1) for u in rec2], dtype=np.int64)
    if id3_in1 is not None and id3_in2 is not None:
        rec3, _ = _ids(t1, id3_in1)
        bad = np.flatnonzero([parent.get(a, b) != b for a, b in zip(rec2, rec3)])
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{t1.path}: line {i + 2}: record of level-2 unit {rec2[i]} says {options.id3} {rec3[i]}, "
                            f"but {t2.path.name} puts that unit in {parent[rec2[i]]}; fix the ids so they agree"
                            + (f" ({bad.size - 1} more such records)" if bad.size > 1 else ""))
    unmatched = unit < 0
    if unmatched.any():
        missing_ids = list(dict.fromkeys(rec2[unmatched]))
        if not options.drop_unmatched:
            raise DataError(f"{t1.path}: {int(unmatched.sum())} level-1 records in {len(missing_ids)} level-2 unit(s) have "
                            f"no level-2 record in {t2.path} ({options.id2} {_first_few(missing_ids)}); add them there "
                            "or pass --drop-unmatched")
        notes["dropped_unmatched"] = int(unmatched.sum())
        warn(f"dropped {int(unmatched.sum())} level-1 records whose level-2 unit is not in {t2.path.name} "
             f"({options.id2} {_first_few(missing_ids)})")
    l1_values = np.vstack([numeric_column(t1, c) for c in keep1]) if keep1 else np.empty((0, len(unit)))
    _refuse_infinite(t1, keep1, l1_values, as_missing, warn, inf_notes)
    notes.update(inf_notes)
    keep_rows = ~unmatched
    if as_missing and keep1:
        has_missing = np.isnan(l1_values).any(axis=0) & keep_rows
        notes["dropped_missing"] = int(has_missing.sum())
        keep_rows &= ~has_missing
    l1_values, unit = l1_values[:, keep_rows], unit[keep_rows]
    if unit.size == 0:
        raise DataError(f"{t1.path}: no level-1 records are left after matching and deletion; check the id columns")

    # Level-2 units without records and level-3 units without level-2 units are left out.
    present2 = np.bincount(unit, minlength=len(ids2)) > 0
    if not present2.all():
        absent = list(ids2[~present2])
        notes["level2_units_without_records"] += len(absent)
        warn(f"{len(absent)} level-2 unit(s) have no level-1 records and are left out (ids {_first_few(absent)})")
    present3 = np.bincount(parent3[present2], minlength=len(ids3)) > 0
    if not present3.all():
        absent = list(ids3[~present3])
        notes["level3_units_without_units"] = len(absent)
        warn(f"{len(absent)} level-3 unit(s) have no level-2 units with records and are left out (ids {_first_few(absent)})")
    renum3 = np.cumsum(present3) - 1
    # level-2 order: by level-3 unit (level-3 file order), then level-2 file order
    kept2 = np.flatnonzero(present2)
    order2 = kept2[np.argsort(renum3[parent3[kept2]], kind="stable")]
    new2 = np.full(len(ids2), -1, dtype=np.int64)
    new2[order2] = np.arange(order2.size)
    unit = new2[unit]
    order1 = np.argsort(unit, kind="stable")
    unit, l1_values = unit[order1], l1_values[:, order1]
    unit3_of_2 = renum3[parent3[order2]]
    l2_values, l3_values = l2_values[:, order2], l3_values[:, present3]
    unit2_ids, unit3_ids = [str(u) for u in ids2[order2]], [str(u) for u in ids3[present3]]
    for level, (table, names, values, uids) in enumerate(((t2, keep2, l2_values, unit2_ids), (t3, keep3, l3_values, unit3_ids)), 2):
        for k, name in enumerate(names):
            bad = np.flatnonzero(np.isnan(values[k]))
            if bad.size:
                raise DataError(f"{table.path}: column {name} is missing for level-{level} unit {uids[bad[0]]}"
                                f"{f' and {bad.size - 1} more' if bad.size > 1 else ''}; HLM needs complete level-{level} "
                                f"data, so fill it in or leave {name} out with --l{level}-vars")
    offsets2 = np.concatenate(([0], np.cumsum(np.bincount(unit, minlength=len(unit2_ids))))).astype(np.int64)
    offsets3 = np.concatenate(([0], np.cumsum(np.bincount(unit3_of_2, minlength=len(unit3_ids))))).astype(np.int64)
    labels = {}
    for table, cols in ((t1, keep1), (t2, keep2), (t3, keep3)):
        for c in cols:
            if c in table.value_labels:
                labels[c] = table.value_labels[c]
    return Archive3(
        level1_names=list(keep1), level2_names=list(keep2), level3_names=list(keep3),
        level1=np.ascontiguousarray(l1_values, dtype=np.float64), level2=np.ascontiguousarray(l2_values, dtype=np.float64),
        level3=np.ascontiguousarray(l3_values, dtype=np.float64), unit2_ids=unit2_ids, unit3_ids=unit3_ids,
        offsets2=offsets2, offsets3=offsets3, id_kind=kind2 if kind2 == kind3 else "string",
        id_names=(id2_in2, id3_in3), missing=options.missing, value_labels=labels, notes=notes,
    )


def _constant(values: np.ndarray, ids: np.ndarray) -> bool:
    order, codes = np.unique(ids.astype(str), return_inverse=True)
    ok = ~np.isnan(values)
    lo = np.full(order.size, np.inf)
    hi = np.full(order.size, -np.inf)
    np.minimum.at(lo, codes[ok], values[ok])
    np.maximum.at(hi, codes[ok], values[ok])
    return not np.any(hi > lo)


def build_from_files3(paths, options: BuildOptions3, fmt=None, delimiter=None, warn=lambda m: None, progress=None) -> Archive3:
    """Read the three files (some may be the same file) and merge them."""
    from .archive import describe_source
    from .files import same_file
    from .readers import read_table

    step = progress or (lambda name: None)
    if any(str(p) == "-" for p in paths):
        raise DataError("three-level archives are built from files, not standard input; give the three paths")
    tables = []
    strings = (options.id2, options.id3)
    for k, p in enumerate(paths):
        shared = next((tables[i] for i in range(k) if same_file(paths[i], p)), None)
        if shared is not None:
            tables.append(shared)
            continue
        step(f"reading {Path(p).name}")
        t = read_table(p, fmt, delimiter, string_columns=strings)
        if t.format == "csv" and t.encoding:
            warn(f"{t.path.name}: not valid UTF-8, so the whole file was decoded as {t.encoding}")
        tables.append(t)
    step("merging")
    archive = build_archive3(*tables, options, warn=warn)
    step("hashing sources")
    archive.sources = [describe_source(p, f"level-{k}", t) for k, (p, t) in enumerate(zip(paths, tables), 1)]
    return archive


# ---------------------------------------------------------------- writing and loading

_ARRAYS = ("level1", "level2", "level3", "offsets2", "offsets3")


def archive3_bytes(archive: Archive3) -> list[bytes]:
    arrays = [archive.level1.astype("<f8", copy=False), archive.level2.astype("<f8", copy=False),
              archive.level3.astype("<f8", copy=False), archive.offsets2.astype("<i8", copy=False),
              archive.offsets3.astype("<i8", copy=False)]
    header = {
        "tool": "hlmcli", "format_version": FORMAT_VERSION, "levels": LEVELS,
        "level1_names": archive.level1_names, "level2_names": archive.level2_names,
        "level3_names": archive.level3_names, "n_level1": archive.n_level1, "n_level2": archive.n_level2,
        "n_level3": archive.n_level3, "unit2_ids": archive.unit2_ids, "unit3_ids": archive.unit3_ids,
        "id_kind": archive.id_kind, "id_names": list(archive.id_names), "missing": archive.missing,
        "value_labels": archive.value_labels, "notes": archive.notes,
        "sources": [s.__dict__ for s in archive.sources],
        "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in zip(_ARRAYS, arrays)],
    }
    text = json.dumps(header, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    body = [text] + [np.ascontiguousarray(a).tobytes() for a in arrays]
    digest = hashlib.sha256(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), bytes(32)))
    for chunk in body:
        digest.update(chunk)
    return [_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(text), digest.digest())] + body


def write_archive3(archive: Archive3, path, mode: int | None = None) -> None:
    atomic_write(path, archive3_bytes(archive), mode=mode)


def archive_levels(path) -> int:
    """2 or 3, from the header alone (the full load checks the checksum); 2 for anything unreadable,
    so the two-level loader gives its own message."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or prefix[:8] != MAGIC:
                return 2
            _, version, _, header_len, _ = _PREFIX.unpack(prefix)
            if version != FORMAT_VERSION or header_len > (1 << 30):
                return 2
            header = json.loads(handle.read(header_len).decode("utf-8"))
        return int(header.get("levels", 2)) if isinstance(header, dict) else 2
    except (OSError, ValueError, TypeError):
        return 2


def load_archive3(path) -> Archive3:
    path, header, arrays, damaged = read_archive_file(path, LEVELS)
    try:
        a = Archive3(
            level1_names=header["level1_names"], level2_names=header["level2_names"], level3_names=header["level3_names"],
            level1=arrays["level1"], level2=arrays["level2"], level3=arrays["level3"],
            unit2_ids=header["unit2_ids"], unit3_ids=header["unit3_ids"], offsets2=arrays["offsets2"],
            offsets3=arrays["offsets3"], id_kind=header["id_kind"], id_names=tuple(header["id_names"]),
            missing=header["missing"], sources=[Source(**s) for s in header["sources"]],
            value_labels=header["value_labels"], notes=header["notes"], path=path,
        )
    except (CorruptArchive, DataError):
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise damaged from None
    J2, J3 = len(a.unit2_ids), len(a.unit3_ids)
    if (a.level1.ndim != 2 or a.level1.shape[0] != len(a.level1_names) or a.level2.shape != (len(a.level2_names), J2)
            or a.level3.shape != (len(a.level3_names), J3) or a.offsets2.shape != (J2 + 1,) or a.offsets3.shape != (J3 + 1,)
            or a.offsets2[0] != 0 or a.offsets2[-1] != a.level1.shape[1] or np.any(np.diff(a.offsets2) < 0)
            or a.offsets3[0] != 0 or a.offsets3[-1] != J2 or np.any(np.diff(a.offsets3) < 0)):
        raise damaged
    return a


# ---------------------------------------------------------------- the cache (as cache.py, three sources)

def cached_archive3(paths, options: BuildOptions3, fmt=None, delimiter=None, cache_dir=None,
                    warn=lambda m: None) -> tuple[Archive3, str]:
    """`hlmcli fit L1 L2 L3`: load the cached archive for these sources and options, else build it."""
    from .cache import (_source_mode, cache_dir_for, remove_stale_cache_temporaries, reused_archive, secure_cache_dir,
                        store_archive)
    from .files import check_regular

    for p in paths:
        check_regular(p, "data file")
    folder = secure_cache_dir(cache_dir_for(cache_dir))
    remove_stale_cache_temporaries(folder)
    hashes = tuple(sha256_file(p) for p in paths)
    material = {"format_version": FORMAT_VERSION, "levels": LEVELS, "sources": list(hashes),
                "options": options.as_dict(), "format": fmt, "delimiter": delimiter}
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]
    target = folder / f"{key}.mdm"
    status = "built"
    if os.path.lexists(target):
        try:
            check_regular(target, "cached archive")
            archive = load_archive3(target)
            if tuple(s.sha256 for s in archive.sources) == hashes:
                reused_archive(folder, target)
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
    archive = build_from_files3(paths, options, fmt, delimiter, warn=warn)
    if tuple(s.sha256 for s in archive.sources) != hashes:
        raise DataError(f"{paths[0]}: the data changed while it was being read; run the command again")
    store_archive(folder, target, lambda: write_archive3(archive, target, mode=_source_mode(*paths)))
    archive.path = target
    return archive, status


# ---------------------------------------------------------------- `mdm info`

def archive3_info(archive: Archive3, unit: str | None = None) -> dict:
    """HLM 7's MDM statistics for all three levels (same keys as the two-level document, plus level3)."""
    from . import __version__
    from .archive import summarize

    n2 = np.diff(archive.offsets2)
    n3 = np.diff(archive.offsets3)
    info = {
        "schema": 1, "tool": "hlmcli", "version": __version__, "levels": 3,
        "archive": archive.path.name if archive.path else None, "format_version": FORMAT_VERSION,
        # as the two-level document (mdm-info-1.json): the id linking level-1 records to level-2 units,
        # the level-2 unit id, plus the level-3 unit id
        "id": {"level1": archive.id_names[0], "level2": archive.id_names[0], "level3": archive.id_names[1],
               "kind": archive.id_kind},
        "missing": archive.missing,
        "n_level1": archive.n_level1, "n_level2": archive.n_level2, "n_level3": archive.n_level3,
        "records_per_unit": {"min": int(n2.min()), "max": int(n2.max()), "mean": float(n2.mean())},
        "units_per_level3_unit": {"min": int(n3.min()), "max": int(n3.max()), "mean": float(n3.mean())},
        "sources": [{"role": s.role, "file": s.name, "format": s.format, "encoding": s.encoding,
                     "size": s.size, "sha256": s.sha256} for s in archive.sources],
        "notes": archive.notes,
        "level1": [v.__dict__ for v in summarize(archive.level1, archive.level1_names)],
        "level2": [v.__dict__ for v in summarize(archive.level2, archive.level2_names)],
        "level3": [v.__dict__ for v in summarize(archive.level3, archive.level3_names)],
        "value_labels": archive.value_labels,
    }
    if unit is not None:
        if unit in archive.unit3_ids:
            k = archive.unit3_ids.index(unit)
            lo, hi = archive.offsets3[k], archive.offsets3[k + 1]
            info["unit"] = {"id": unit, "level": 3, "n": int(archive.offsets2[hi] - archive.offsets2[lo]),
                            "n_level2": int(hi - lo),
                            "level3": {n: float(archive.level3[i, k]) for i, n in enumerate(archive.level3_names)}}
        else:
            j = archive.unit2_ids.index(unit)
            info["unit"] = {"id": unit, "level": 2, "n": int(n2[j]),
                            "level2": {n: float(archive.level2[i, j]) for i, n in enumerate(archive.level2_names)}}
    return info


def archive3_info_text(info: dict) -> str:
    from .report import _num, printable

    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''} (three levels, HLM3)".rstrip())
    w("")
    for s in info["sources"]:
        enc = f", encoding {s['encoding']}" if s["encoding"] else ""
        w(f"  {s['role']} file: {s['file']} ({s['format']}{enc}, {s['size']} bytes, sha256 {s['sha256'][:16]})")
    w(f"  unit ids: {info['id']['level2']} (level-2), {info['id']['level3']} (level-3), stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    notes = info["notes"]
    for key, text in (("dropped_missing", "level-1 records dropped for missing values"),
                      ("dropped_unmatched", "level-1 records dropped with no level-2 unit"),
                      ("level2_units_without_records", "level-2 units left out (no level-1 records)"),
                      ("level3_units_without_units", "level-3 units left out (no level-2 units)")):
        if notes.get(key):
            w(f"  {text}: {notes[key]}")
    w(f"  level-1 records: {info['n_level1']}")
    w(f"  level-2 units:   {info['n_level2']}")
    w(f"  level-3 units:   {info['n_level3']}")
    r, u = info["records_per_unit"], info["units_per_level3_unit"]
    w(f"  records per level-2 unit: {r['min']} to {r['max']} (mean {r['mean']:.1f})")
    w(f"  level-2 units per level-3 unit: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    for level, title in (("level1", "LEVEL-1"), ("level2", "LEVEL-2"), ("level3", "LEVEL-3")):
        w("")
        w(f"          {title} DESCRIPTIVE STATISTICS")
        w("")
        w(f"{'VARIABLE NAME':>16} {'N':>9} {'MEAN':>12} {'SD':>12} {'MINIMUM':>12} {'MAXIMUM':>12}")
        for v in info[level]:
            w(f"{v['name']:>16} {v['n']:>9d} {_num(v['mean'])} {_num(v['sd'])} {_num(v['minimum'])} {_num(v['maximum'])}")
    if info["value_labels"]:
        w("")
        w("  value labels:")
        for name, labels in info["value_labels"].items():
            w(f"    {name}: " + ", ".join(f"{k} = {v}" for k, v in labels.items()))
    if "unit" in info:
        un = info["unit"]
        w("")
        if un["level"] == 3:
            w(f"  level-3 unit {un['id']}: {un['n_level2']} level-2 units, {un['n']} level-1 records")
            values = un["level3"]
        else:
            w(f"  level-2 unit {un['id']}: {un['n']} level-1 records")
            values = un["level2"]
        for name, value in values.items():
            w(f"    {name} = {value:.6g}")
    return "\n".join(printable(line) for line in out) + "\n"
