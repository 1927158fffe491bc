"""The merges of K ≥ 3 levels (HLM 7's HLM3 and HLM4 MDM): level-1 records in level-2 units in ... level-K
units, into the one archive type of archive.py (same format, loader and cache as two levels).

Which files carry which ids, three levels (issue 13): the level-1 file carries the level-2 id and, usually,
the level-3 id; the level-2 file carries the level-2 id and the level-3 id, or the level-2 id alone when
the level-1 file gives the link; the level-3 file carries the level-3 id; one file may serve several
levels. Level-2 ids must be unique over the whole data, as HLM3's MDM requires.

Which files carry which ids (K ≥ 4 builds): the level-1 file carries the level-2 id; the level-ℓ file
(1 < ℓ < K) carries the level-ℓ id and the level-(ℓ+1) id of its unit; the level-K file the level-K id.
Each level's ids are unique over the whole data (a unit under two parents is refused), as HLM's MDM
requires. Each level comes from its own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .archive import Archive, LevelData, refuse_infinite
from ..errors import DataError, first_few
from .files import atomic_write


@dataclass(frozen=True)
class BuildOptions3:
    id2: str
    id3: str
    keep1: tuple[str, ...] | None = None
    keep2: tuple[str, ...] | None = None
    keep3: tuple[str, ...] | None = None
    missing: str = "analysis"
    drop_unmatched: bool = False
    n_levels = 3

    def as_dict(self) -> dict:
        return {"levels": 3, "id2": self.id2, "id3": self.id3, "keep1": self.keep1, "keep2": self.keep2,
                "keep3": self.keep3, "missing": self.missing, "drop_unmatched": self.drop_unmatched}


@dataclass(frozen=True)
class BuildOptionsLevels:  # K ≥ 4 levels, one file per level (three levels: BuildOptions3)
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


# ---------------------------------------------------------------- building three levels (shared files allowed)

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


def _refuse_repeated_ids(table, column: str, ids: np.ndarray, level: int) -> None:
    """A level-ℓ file has one row per level-ℓ unit."""
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        dups = list(uniq[counts > 1])
        raise DataError(f"{table.path}: column {column}: {len(dups)} level-{level} id(s) appear more than once "
                        f"({first_few(dups)}); the level-{level} file needs exactly one row per level-{level} unit")


def _refuse_missing_unit_values(table, names, values: np.ndarray, unit_ids, level: int) -> None:
    """HLM needs complete data above level 1: a missing level-ℓ value is refused, naming the unit."""
    for k, name in enumerate(names):
        bad = np.flatnonzero(np.isnan(values[k]))
        if bad.size:
            raise DataError(f"{table.path}: column {name} is missing for level-{level} unit {unit_ids[bad[0]]}"
                            f"{f' and {bad.size - 1} more' if bad.size > 1 else ''}; HLM needs complete level-{level} "
                            f"data, so fill it in or leave {name} out with --l{level}-vars")


def _value_labels(tables, keeps) -> dict[str, dict[str, str]]:
    """The value labels (SPSS, Stata, SAS) of the variables kept, from the file each came from."""
    return {c: table.value_labels[c] for table, cols in zip(tables, keeps) for c in cols if c in table.value_labels}


def build_archive3(t1, t2, t3, options: BuildOptions3, warn=lambda m: None) -> Archive:
    """Merge three tables (they may be the same table) into an Archive3. DataError on anything to fix."""
    from .readers import find_column

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
    keep1, keep2, keep3 = _variables3(t1, t2, t3, options, id2_in2, id3_in3, warn)
    notes: dict = {"level1_records_read": int(len(t1.data)), "dropped_unmatched": 0, "dropped_missing": 0,
                   "level2_units_without_records": 0, "level3_units_without_units": 0}
    inf_notes: dict = {}
    ids3, kind3, l3_values = _level3_units3(t1, t2, t3, options, id3_in3, keep3, inf_notes, warn)
    pos3 = {uid: k for k, uid in enumerate(ids3)}
    ids2, kind2, l2_values, parent, parent3 = _level2_units3(t1, t2, t3, options, (id2_in1, id2_in2, id3_in1, id3_in2),
                                                             keep2, pos3, notes, inf_notes, warn)
    pos2 = {uid: j for j, uid in enumerate(ids2)}
    l1_values, unit = _level1_records3(t1, t2, options, (id2_in1, id3_in1, id3_in2), keep1, pos2, parent, notes,
                                       inf_notes, warn)
    archive = _ordered_archive3((t1, t2, t3), (keep1, keep2, keep3), (l1_values, l2_values, l3_values), unit, parent3,
                                ids2, ids3, kind2 if kind2 == kind3 else "string", (id2_in2, id3_in3), options, notes,
                                warn)
    archive.level1_id = id2_in1
    return archive


def _level1_records3(t1, t2, options: BuildOptions3, id_columns, keep1, pos2, parent, notes, inf_notes, warn):
    """The level-1 records matched to their level-2 units; the level-3 id, when given, must agree with the link."""
    id2_in1, id3_in1, id3_in2 = id_columns
    rec2, _ = _ids(t1, id2_in1)
    if id3_in1 is not None and id3_in2 is not None:
        rec3, _ = _ids(t1, id3_in1)
        bad = np.flatnonzero([parent.get(a, b) != b for a, b in zip(rec2, rec3)])
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{t1.path}: line {i + 2}: record of level-2 unit {rec2[i]} says {options.id3} {rec3[i]}, "
                            f"but {t2.path.name} puts that unit in {parent[rec2[i]]}; fix the ids so they agree"
                            + (f" ({bad.size - 1} more such records)" if bad.size > 1 else ""))
    return _match_records(t1, t2, rec2, pos2, options.id2, keep1, options, notes, inf_notes, warn)


def _match_records(t1, t2, rec2, pos2, id2: str, keep1, options, notes, inf_notes, warn):
    """The level-1 values and level-2 unit of each record kept: records of unknown units refused (or
    dropped with --drop-unmatched), and with --missing now records with a missing value dropped."""
    from .readers import numeric_column

    as_missing = options.missing == "now"
    unit = np.array([pos2.get(u, -1) for u in rec2], dtype=np.int64)
    unmatched = unit < 0
    if unmatched.any():
        missing_ids = list(dict.fromkeys(rec2[unmatched]))
        if not options.drop_unmatched:
            raise DataError(f"{t1.path}: {int(unmatched.sum())} level-1 records in {len(missing_ids)} level-2 unit(s) have "
                            f"no level-2 record in {t2.path} ({id2} {first_few(missing_ids)}); add them there "
                            "or pass --drop-unmatched")
        notes["dropped_unmatched"] = int(unmatched.sum())
        warn(f"dropped {int(unmatched.sum())} level-1 records whose level-2 unit is not in {t2.path.name} "
             f"({id2} {first_few(missing_ids)})")
    l1_values = np.vstack([numeric_column(t1, c) for c in keep1]) if keep1 else np.empty((0, len(unit)))
    refuse_infinite(t1, keep1, l1_values, as_missing, warn, inf_notes)
    notes.update(inf_notes)
    keep_rows = ~unmatched
    if as_missing and keep1:
        has_missing = np.isnan(l1_values).any(axis=0) & keep_rows
        notes["dropped_missing"] = int(has_missing.sum())
        keep_rows &= ~has_missing
    l1_values, unit = l1_values[:, keep_rows], unit[keep_rows]
    if unit.size == 0:
        raise DataError(f"{t1.path}: no level-1 records are left after matching and deletion; check the id columns")
    return l1_values, unit


def _level3_units3(t1, t2, t3, options: BuildOptions3, id3_in3: str, keep3, inf_notes, warn):
    """The level-3 units, one row each (collapsed from a file shared with a lower level)."""
    from .readers import numeric_column

    ids3, kind3 = _ids(t3, id3_in3)
    if t2 is t3 or t1 is t3:
        ids3, l3_values, _ = _collapse(t3, ids3, keep3, 3, options.id3)
    else:
        l3_values = np.vstack([numeric_column(t3, c) for c in keep3]) if keep3 else np.empty((0, len(ids3)))
        refuse_infinite(t3, keep3, l3_values, False, warn, inf_notes, level=3)
        _refuse_repeated_ids(t3, id3_in3, ids3, 3)
    return ids3, kind3, l3_values



def _level2_units3(t1, t2, t3, options: BuildOptions3, id_columns, keep2, pos3, notes, inf_notes, warn):
    """The level-2 units: one row each, and the level-3 unit each belongs to (from the level-2 file's
    level-3 id, else from the level-1 records). Returns (ids2, id kind, values, parent id, parent position)."""
    from .readers import numeric_column

    id2_in1, id2_in2, id3_in1, id3_in2 = id_columns
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
    if t1 is t2:
        ids2, l2_values, _ = _collapse(t2, ids2, keep2, 2, options.id2)
    else:
        l2_values = np.vstack([numeric_column(t2, c) for c in keep2]) if keep2 else np.empty((0, len(ids2)))
        refuse_infinite(t2, keep2, l2_values, False, warn, inf_notes, level=2)
        _refuse_repeated_ids(t2, id2_in2, ids2, 2)
    no_parent = [u for u in ids2 if u not in parent]
    if no_parent:  # only possible when the link comes from the level-1 file
        keep_rows = np.array([u in parent for u in ids2])
        ids2, l2_values = ids2[keep_rows], l2_values[:, keep_rows]
        notes["level2_units_without_records"] += len(no_parent)
        warn(f"{len(no_parent)} level-2 unit(s) in {t2.path.name} have no level-1 records and are left out "
             f"(ids {first_few(no_parent)})")
    parent3 = np.array([pos3.get(parent[u], -1) for u in ids2], dtype=np.int64)
    if (parent3 < 0).any():
        lost = sorted({parent[u] for u, p in zip(ids2, parent3) if p < 0})
        if not options.drop_unmatched:
            raise DataError(f"{t2.path}: {int((parent3 < 0).sum())} level-2 unit(s) belong to level-3 unit(s) not in "
                            f"{t3.path} ({options.id3} {first_few(lost)}); add them there or pass --drop-unmatched")
        warn(f"dropped {int((parent3 < 0).sum())} level-2 unit(s) whose level-3 unit is not in {t3.path.name} "
             f"({options.id3} {first_few(lost)})")
        ok = parent3 >= 0
        ids2, l2_values, parent3 = ids2[ok], l2_values[:, ok], parent3[ok]
    return ids2, kind2, l2_values, parent, parent3




def _variables3(t1, t2, t3, options: BuildOptions3, id2_in2: str, id3_in3: str, warn):
    """The variables of each level (keep1, keep2, keep3). A shared file: a variable belongs to the
    highest level it is constant in, unless named for a lower one; a text column is left out with a warning."""
    from .readers import find_column, is_text_column, numeric_column

    ids_cols = {options.id2.lower(), options.id3.lower()}
    same12, same23 = t1 is t2, t2 is t3
    text_columns: list[str] = []

    def keep_for(table, requested, level, exclude):
        if requested is not None:
            return [find_column(table, n, f"level-{level} variable") for n in requested]
        return [c for c in table.data.columns if c.lower() not in ids_cols | exclude and not is_text_column(table, c, text_columns)]

    def named(table, requested):  # a variable named for a lower level stays there (as at two levels)
        return {n.lower() for n in requested or () if _has_column(table, n)}

    keep3 = keep_for(t3, options.keep3, 3, (named(t2, options.keep2) if same23 else set())
                     | (named(t1, options.keep1) if t1 is t3 else set()))
    if same23 and options.keep3 is None:
        ids3_all, _ = _ids(t3, id3_in3)
        keep3 = [c for c in keep3 if _constant(numeric_column(t3, c), ids3_all)]
    keep2 = keep_for(t2, options.keep2, 2, ({c.lower() for c in keep3} if same23 else set())
                     | (named(t1, options.keep1) if same12 else set()))
    if same12 and options.keep2 is None:
        ids2_all, _ = _ids(t2, id2_in2)
        keep2 = [c for c in keep2 if _constant(numeric_column(t2, c), ids2_all)]
    exclude1 = ({c.lower() for c in keep2} if same12 else set()) | ({c.lower() for c in keep3} if t1 is t3 else set())
    keep1 = keep_for(t1, options.keep1, 1, exclude1)
    if text_columns:
        warn(f"text column(s) {first_few(dict.fromkeys(text_columns))} are labels, not numbers, and are left out "
             "of the variables; name them with --l1-vars/--l2-vars/--l3-vars only if they hold numbers")
    all_names = keep1 + keep2 + keep3
    folded = [n.lower() for n in all_names]
    dup = sorted({n for n in all_names if folded.count(n.lower()) > 1})
    if dup:
        raise DataError(f"variable '{dup[0]}' is in more than one level; leave it out of all but one with "
                        "--l1-vars/--l2-vars/--l3-vars")
    return keep1, keep2, keep3


def _ordered_archive3(tables, keeps, values, unit, parent3, ids2, ids3, id_kind, id_names, options, notes, warn):
    """Leave out level-2 units without records and level-3 units without level-2 units, put the units in
    archive order (level-3 file order, then level-2 file order within), refuse missing level-2/3 values."""
    t1, t2, t3 = tables
    keep1, keep2, keep3 = keeps
    l1_values, l2_values, l3_values = values
    present2 = np.bincount(unit, minlength=len(ids2)) > 0
    if not present2.all():
        absent = list(ids2[~present2])
        notes["level2_units_without_records"] += len(absent)
        warn(f"{len(absent)} level-2 unit(s) have no level-1 records and are left out (ids {first_few(absent)})")
    present3 = np.bincount(parent3[present2], minlength=len(ids3)) > 0
    if not present3.all():
        absent = list(ids3[~present3])
        notes["level3_units_without_units"] = len(absent)
        warn(f"{len(absent)} level-3 unit(s) have no level-2 units with records and are left out (ids {first_few(absent)})")
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
    _refuse_missing_unit_values(t2, keep2, l2_values, unit2_ids, 2)
    _refuse_missing_unit_values(t3, keep3, l3_values, unit3_ids, 3)
    offsets2 = np.concatenate(([0], np.cumsum(np.bincount(unit, minlength=len(unit2_ids))))).astype(np.int64)
    offsets3 = np.concatenate(([0], np.cumsum(np.bincount(unit3_of_2, minlength=len(unit3_ids))))).astype(np.int64)
    labels = _value_labels(tables, keeps)
    return Archive(
        [LevelData(list(keep1), np.ascontiguousarray(l1_values, dtype=np.float64)),
         LevelData(list(keep2), np.ascontiguousarray(l2_values, dtype=np.float64), unit2_ids, offsets2),
         LevelData(list(keep3), np.ascontiguousarray(l3_values, dtype=np.float64), unit3_ids, offsets3)],
        id_kind=id_kind, id_names=id_names, missing=options.missing,
        value_labels=labels, notes=notes,
    )


def _constant(values: np.ndarray, ids: np.ndarray) -> bool:
    """Constant within every unit. A unit with some records missing and others not is not (as at two
    levels): such a column stays at level 1, where _collapse would otherwise refuse it as varying."""
    order, codes = np.unique(ids.astype(str), return_inverse=True)
    ok = ~np.isnan(values)
    lo = np.full(order.size, np.inf)
    hi = np.full(order.size, -np.inf)
    np.minimum.at(lo, codes[ok], values[ok])
    np.maximum.at(hi, codes[ok], values[ok])
    mixed = (np.bincount(codes[~ok], minlength=order.size) > 0) & np.isfinite(lo)
    return not np.any((hi > lo) | mixed)


def build_from_files3(paths, options: BuildOptions3, fmt=None, delimiter=None, warn=lambda m: None,
                      progress=None) -> Archive:
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


# ---------------------------------------------------------------- building (K ≥ 4, one file per level)


def build_archive_levels(tables, options: BuildOptionsLevels, warn=lambda m: None) -> Archive:
    """Merge K tables, one per level, into an archive. DataError on anything to fix."""
    from .readers import find_column, numeric_column

    K = options.n_levels
    if options.missing not in ("now", "analysis"):
        raise DataError(f"--missing must be 'now' or 'analysis', not '{options.missing}'")
    folded = [i.lower() for i in options.ids]
    if len(set(folded)) != len(folded):
        raise DataError("--id2 ... --id" + str(K) + " must name different columns (one unit id per level)")
    keeps = _variables_levels(tables, options, set(folded), warn)
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
        _refuse_repeated_ids(t, col, ids, level)
        vals = np.vstack([numeric_column(t, c) for c in keeps[level - 1]]) if keeps[level - 1] else np.empty((0, len(ids)))
        refuse_infinite(t, keeps[level - 1], vals, False, warn, inf_notes, level)
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
                                    f"unit(s) not in {tables[level].path} ({up_name} {first_few(missing_ids)}); add "
                                    "them there or pass --drop-unmatched")
                warn(f"dropped {int(lost.sum())} level-{level} unit(s) whose level-{level + 1} unit is not in "
                     f"{tables[level].path.name} ({up_name} {first_few(missing_ids)})")
                ids, vals, parent = ids[~lost], vals[:, ~lost], parent[~lost]
            parent_of[level] = parent
        ids_of[level], values_of[level] = ids, vals
    t1 = tables[0]
    col2 = find_column(t1, options.ids[0], "level-2 unit id")
    rec2, _ = _ids(t1, col2)
    pos2 = {u: j for j, u in enumerate(ids_of[2])}
    l1, unit = _match_records(t1, tables[1], rec2, pos2, options.ids[0], keeps[0], options, notes, inf_notes, warn)
    levels = _ordered_levels(tables, options, keeps, l1, unit, ids_of, values_of, parent_of, notes, warn)
    labels = _value_labels(tables, keeps)
    id_names = tuple(find_column(tables[level - 1], options.ids[level - 2], f"level-{level} unit id")
                     for level in range(2, K + 1))
    return Archive(levels, kinds[0] if len(set(kinds)) == 1 else "string", id_names, options.missing,
                   value_labels=labels, notes=notes, level1_id=col2)


def _variables_levels(tables, options: BuildOptionsLevels, ids_cols: set, warn) -> list[list[str]]:
    """The variables of each level: those named, else every numeric column that is not a unit id."""
    from .readers import find_column, is_text_column

    K = options.n_levels
    text_columns: list[str] = []
    keeps = []
    for level, table in enumerate(tables, 1):
        req = options.keeps[level - 1]
        if req is not None:
            keeps.append([find_column(table, n, f"level-{level} variable") for n in req])
        else:
            keeps.append([c for c in table.data.columns
                          if c.lower() not in ids_cols and not is_text_column(table, c, text_columns)])
    if text_columns:
        warn(f"text column(s) {first_few(dict.fromkeys(text_columns))} are labels, not numbers, and are left out "
             "of the variables; name them with --l1-vars ... only if they hold numbers")
    all_names = [n for k in keeps for n in k]
    low = [n.lower() for n in all_names]
    dup = sorted({n for n in all_names if low.count(n.lower()) > 1})
    if dup:
        raise DataError(f"variable '{dup[0]}' is in more than one level; leave it out of all but one with "
                        "--l1-vars ... --l" + str(K) + "-vars")
    return keeps


def _ordered_levels(tables, options: BuildOptionsLevels, keeps, l1, unit, ids_of, values_of, parent_of, notes, warn):
    """Bottom up, units without children are left out; top down, each level's units are numbered by their
    parent's number, then file order (stable). Returns the LevelData of levels 1..K."""
    K = options.n_levels
    # bottom up: units without children are left out; then order each level by its parent (stable)
    child = unit
    present = {}
    for level in range(2, K + 1):
        has = np.bincount(child, minlength=len(ids_of[level])) > 0
        if not has.all():
            absent = list(ids_of[level][~has])
            notes[f"level{level}_units_left_out"] = len(absent)
            what = "level-1 records" if level == 2 else f"level-{level - 1} units"
            warn(f"{len(absent)} level-{level} unit(s) have no {what} and are left out (ids {first_few(absent)})")
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
        _refuse_missing_unit_values(t, keeps[level - 1], vals, uids, level)
        offsets = np.concatenate(([0], np.cumsum(np.bincount(child_units, minlength=len(uids))))).astype(np.int64)
        levels.append(LevelData(list(keeps[level - 1]), np.ascontiguousarray(vals, dtype=np.float64), uids, offsets))
        if level < K:
            child_units = new[level + 1][parent_of[level][order[level]]]
    return levels



def build_from_files_levels(paths, options: BuildOptionsLevels, fmt=None, delimiter=None, warn=lambda m: None,
                            progress=None) -> Archive:
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


# ---------------------------------------------------------------- any number of levels

def build_from_paths(paths, options, fmt=None, delimiter=None, warn=lambda m: None, progress=None) -> Archive:
    """The one way to build an archive from data files, for any number of levels: `options` says how
    many (BuildOptions: two files, BuildOptions3: three, BuildOptionsLevels: one file per level)."""
    from .archive import build_from_files

    if options.n_levels == 2:
        return build_from_files(paths[0], paths[1], options, fmt, delimiter, warn=warn, progress=progress)
    build = build_from_files3 if isinstance(options, BuildOptions3) else build_from_files_levels
    return build(paths, options, fmt, delimiter, warn=warn, progress=progress)
