"""The one merge of K ≥ 2 tables (level-1 records in level-2 units in ... level-K units) into the
arrays of an archive (archive.py wraps them into an Archive).

Which table holds which level is data: `tables[k-1]` holds level k (one table may hold several
levels: a shared file); each level k ≥ 2 has its id column in its own table; the link of a level-k
unit to its level-(k+1) unit comes from the highest table at or below level k that carries both ids
(its own table first, else a lower one, as HLM3's MDM allows the level-1 file to give it); a table
shared with lower levels gives one row per unit, each kept variable constant within the unit.
Higher ids carried in lower tables must agree with the links. Each level's ids are unique over the
whole data (a unit under two parents is refused), as HLM's MDM requires. HLM needs complete data
above level 1, so an infinite or missing value there is refused (never turned into a deletion).

The notes' keys are those each number of levels has always written (so an archive's bytes do not
change): two levels count the level-2 units left out as units_without_records, three levels as
level2_units_without_records and level3_units_without_units, four and more as levelk_units_left_out
when there are any.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError, first_few


@dataclass(frozen=True)
class MergeSpec:
    """What a build asks for, whatever the number of levels."""

    link1: str  # the level-1 table's column of the level-2 id (two levels: --id1)
    ids: tuple[str, ...]  # the unit id of levels 2..K, as given
    keeps: tuple  # per level 1..K: the variables named, or None for the default
    missing: str = "analysis"
    drop_unmatched: bool = False

    @property
    def n_levels(self) -> int:
        return len(self.ids) + 1


def _where(table, pos: int) -> str:
    return f"line {pos + 2}" if table.format == "csv" else f"row {pos + 1}"


def _vars_options(K: int) -> str:
    return "/".join(f"--l{k}-vars" for k in range(1, K + 1))


def refuse_infinite(table, names: list[str], values: np.ndarray, as_missing: bool, warn, notes: dict,
                    level: int = 1) -> None:
    """Inf, 1e999 or Infinity would pass the build and break the fit: refused here, with file, column and
    row; with --missing now a level-1 one is treated as missing (and reported). Only a level-1 value can
    be missing (a record is dropped): above level 1 HLM needs complete data, so an infinite value there is
    refused whatever --missing says, and the refusal does not offer --missing now."""
    for k, name in enumerate(names):
        bad = np.flatnonzero(np.isinf(values[k]))
        if not bad.size:
            continue
        pos = int(bad[0])
        where = _where(table, pos)
        if level > 1 or not as_missing:
            what = (f"{table.path}: column {name}, {where}: the value is infinite ({values[k][pos]:g})"
                    f"{f' and {bad.size - 1} more' if bad.size > 1 else ''}; fix it")
            if level > 1:
                raise DataError(f"{what}, or leave {name} out with --l{level}-vars if the model does not use it "
                                f"(HLM needs complete level-{level} data, so --missing now does not apply)")
            raise DataError(f"{what}, leave {name} out with --l1-vars/--l2-vars if the model does not use it, or pass "
                            "--missing now to treat infinite values as missing")
        values[k][bad] = np.nan
        notes.setdefault("infinite_as_missing", {})[name] = int(bad.size)
        warn(f"{table.path.name}: column {name}: {bad.size} infinite value(s) (first at {where}) treated as missing")


def _ids(table, column: str):
    from .readers import unit_codes

    codes, names, kind = unit_codes(table, column)
    return np.asarray(names, dtype=object)[codes], kind


def _has_column(table, name: str) -> str | None:
    hits = [c for c in table.data.columns if c.lower() == name.lower()]
    return hits[0] if hits else None


def _varying(values: np.ndarray, ids: np.ndarray):
    """The positions (in sorted order of the ids) of the units a column is not constant within. A unit
    with some records missing and others not is not constant (as at two levels)."""
    order, codes = np.unique(ids.astype(str), return_inverse=True)
    ok = ~np.isnan(values)
    lo = np.full(order.size, np.inf)
    hi = np.full(order.size, -np.inf)
    np.minimum.at(lo, codes[ok], values[ok])
    np.maximum.at(hi, codes[ok], values[ok])
    mixed = (np.bincount(codes[~ok], minlength=order.size) > 0) & np.isfinite(lo)
    return order, np.flatnonzero((hi > lo) | mixed)


def _collapse(table, key_ids: np.ndarray, values: np.ndarray, names: list[str], level: int, id_name: str):
    """A table shared with a lower level: one row per unit (first-appearance order), each kept variable
    constant within it."""
    for k, name in enumerate(names):
        order, bad = _varying(values[k], key_ids)
        if bad.size:
            raise DataError(f"{table.path}: column {name} varies within {id_name} {order[bad[0]]}; a level-{level} "
                            f"variable must be constant within each level-{level} unit, so leave it out with --l{level}-vars")
    first = np.unique(key_ids.astype(str), return_index=True)[1]
    keep = np.sort(first)
    return key_ids[keep], values[:, keep]


def _refuse_repeated_ids(table, column: str, ids: np.ndarray, level: int) -> None:
    """A level-ℓ table of its own has one row per level-ℓ unit."""
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


def _childless_what(level: int) -> str:
    return "level-1 records" if level == 2 else f"level-{level - 1} units with records"


def merge_levels(tables, spec: MergeSpec, warn=lambda m: None) -> dict:
    """Merge K tables (`tables[k-1]` holds level k; the same table may hold several levels). Returns the
    pieces of an archive: levels [(names, values, ids, offsets)], id_kind, id_names, level1_id,
    value_labels, notes. DataError on anything a user must fix."""
    from .readers import find_column, numeric_column

    K = spec.n_levels
    if spec.missing not in ("now", "analysis"):
        raise DataError(f"--missing must be 'now' or 'analysis', not '{spec.missing}'")
    for b in range(1, K - 1):
        for a in range(b):
            if spec.ids[a].lower() == spec.ids[b].lower():
                raise DataError(f"--id{a + 2} and --id{b + 2} both name {spec.ids[b]}; the level-{a + 2} and "
                                f"level-{b + 2} unit ids must be different columns")
    t1 = tables[0]
    unit_id = (lambda level: "unit id") if K == 2 else (lambda level: f"level-{level} unit id")  # two levels: one id
    link1 = find_column(t1, spec.link1, unit_id(2))
    col = {level: find_column(tables[level - 1], spec.ids[level - 2], unit_id(level)) for level in range(2, K + 1)}
    link = _links(tables, spec, col, link1)
    keeps, text_columns, text_levels = _variables(tables, spec, col, link1, warn)

    notes: dict = {"level1_records_read": int(len(t1.data)), "dropped_unmatched": 0, "dropped_missing": 0}
    childless = dict.fromkeys(range(2, K + 1), 0)
    kinds, ids_of, values_of, parent_of, parent_id = {}, {}, {}, {}, {}
    for level in range(K, 1, -1):  # top down: each level's units, their values and their parent's position
        t = tables[level - 1]
        ids, kinds[level] = _ids(t, col[level])
        if level < K:
            parent_id[level] = _parents(tables, spec, level, link[level], ids)
        keep = keeps[level - 1]
        vals = np.vstack([numeric_column(t, c) for c in keep]) if keep else np.empty((0, len(ids)))
        refuse_infinite(t, keep, vals, False, warn, {}, level)
        if any(tables[j] is t for j in range(level - 1)):
            ids, vals = _collapse(t, ids, vals, keep, level, spec.ids[level - 2])
        else:
            _refuse_repeated_ids(t, col[level], ids, level)
        if level < K:
            ids, vals, parent_of[level] = _link_up(tables, spec, level, ids, vals, parent_id[level], ids_of[level + 1],
                                                   childless, warn)
        ids_of[level], values_of[level] = ids, vals

    rec2, kind1 = _ids(t1, link1)
    _refuse_disagreeing_ids(tables, spec, link, link1, rec2, parent_id)
    l1, unit = _match_records(tables, spec, rec2, {u: j for j, u in enumerate(ids_of[2])}, keeps[0], notes, warn)
    levels = _ordered_levels(tables, keeps, l1, unit, ids_of, values_of, parent_of, childless, warn)

    if K == 2:
        notes["units_without_records"] = childless[2]
    elif K == 3:
        notes["level2_units_without_records"] = childless[2]
        notes["level3_units_without_units"] = childless[3]
    else:
        notes.update({f"level{k}_units_left_out": n for k, n in childless.items() if n})
    if K == 2 and text_columns:
        notes["text_columns"] = text_columns
    if text_columns:  # which file held each (Archive.unknown_column names it when a model or option asks for one)
        notes["text_column_levels"] = {c: level for level in range(K, 0, -1) for c in text_levels[level]}
    kind_list = [kinds[k] for k in range(2, K + 1)] + ([kind1] if K == 2 else [])
    return {"levels": levels, "id_kind": kind_list[0] if len(set(kind_list)) == 1 else "string",
            "id_names": tuple(col[k] for k in range(2, K + 1)), "level1_id": link1,
            "value_labels": {c: t.value_labels[c] for t, cols in zip(tables, keeps) for c in cols if c in t.value_labels},
            "notes": notes}


def _links(tables, spec: MergeSpec, col: dict, link1: str) -> dict:
    """Where each level-k unit's level-(k+1) unit comes from: (table index, column of the level-k id,
    column of the level-(k+1) id), from the level's own table, else the highest lower table with both."""
    K = spec.n_levels
    link = {}
    for level in range(2, K):
        up = spec.ids[level - 1]
        for j in range(level - 1, -1, -1):
            t = tables[j]
            here = col[level] if j == level - 1 else (link1 if j == 0 and level == 2 else _has_column(t, spec.ids[level - 2]))
            there = _has_column(t, up)
            if here and there:
                link[level] = (j, here, there)
                break
        else:
            lower = [str(tables[j].path) for j in range(level - 2, -1, -1)]
            raise DataError(f"{tables[level - 1].path}: no column {up}, and {', '.join(lower)} "
                            f"{'has' if len(lower) == 1 else 'have'} none either; one of them must link each "
                            f"level-{level} unit to its level-{level + 1} unit, so add the {up} column")
    return link


def _parents(tables, spec: MergeSpec, level: int, link, own_ids) -> dict:
    """{level-k id: level-(k+1) id} from the link's rows; a unit under two parents is refused."""
    j, here, there = link
    t = tables[j]
    below = own_ids if j == level - 1 else _ids(t, here)[0]
    above = _ids(t, there)[0]
    parent: dict = {}
    for a, b in zip(below, above):
        prev = parent.setdefault(a, b)
        if prev != b:
            raise DataError(f"{t.path}: level-{level} unit {a} ({spec.ids[level - 2]}) appears under two "
                            f"level-{level + 1} units, {prev} and {b} ({spec.ids[level - 1]}); a level-{level} unit "
                            f"belongs to one level-{level + 1} unit, so give level-{level} units ids that are unique "
                            f"across level-{level + 1} units")
    return parent


def _link_up(tables, spec: MergeSpec, level: int, ids, vals, parent: dict, ids_above, childless: dict, warn):
    """Each level-k unit's position among the level-(k+1) units: units absent from a link taken from a
    lower table have no records and are left out; units of unknown parents are refused (or dropped with
    --drop-unmatched)."""
    t = tables[level - 1]
    no_parent = [u for u in ids if u not in parent]
    if no_parent:  # only possible when the link comes from a lower table
        keep_rows = np.array([u in parent for u in ids])
        ids, vals = ids[keep_rows], vals[:, keep_rows]
        childless[level] += len(no_parent)
        warn(f"{len(no_parent)} level-{level} unit(s) in {t.path.name} have no {_childless_what(level)} and are "
             f"left out (ids {first_few(no_parent)})")
    pos = {u: k for k, u in enumerate(ids_above)}
    up = np.array([pos.get(parent[u], -1) for u in ids], dtype=np.int64)
    lost = up < 0
    if lost.any():
        name, above = spec.ids[level - 1], tables[level]
        lost_ids = sorted({parent[u] for u in ids[lost]})
        if not spec.drop_unmatched:
            raise DataError(f"{t.path}: {int(lost.sum())} level-{level} unit(s) belong to level-{level + 1} unit(s) "
                            f"not in {above.path} ({name} {first_few(lost_ids)}); add them there or pass --drop-unmatched")
        warn(f"dropped {int(lost.sum())} level-{level} unit(s) whose level-{level + 1} unit is not in "
             f"{above.path.name} ({name} {first_few(lost_ids)})")
        ids, vals, up = ids[~lost], vals[:, ~lost], up[~lost]
    return ids, vals, up


def _refuse_disagreeing_ids(tables, spec: MergeSpec, link: dict, link1: str, rec2, parent_id: dict) -> None:
    """A higher id carried in a lower table must agree with the links: a level-j table's rows name their
    level-(j+1) unit, whose level-m unit (m ≥ j+2) the links decide."""
    K = spec.n_levels
    for j in range(1, K - 1):
        t = tables[j - 1]
        if j > 1 and t is tables[j - 2]:
            continue  # its rows were checked as records of the level below
        if j == 1:
            xs = rec2
        elif link[j][0] == j - 1:
            xs = _ids(t, link[j][2])[0]
        else:
            continue
        for m in range(j + 2, K + 1):
            column = _has_column(t, spec.ids[m - 2])
            if column is None:
                continue
            ys = _ids(t, column)[0]
            got = [_ancestor(x, j + 1, m, parent_id) for x in xs]
            bad = np.flatnonzero([z is not None and z != y for z, y in zip(got, ys)])
            if bad.size:
                i = int(bad[0])
                source = tables[link[m - 1][0]].path.name
                that = "that unit" if m == j + 2 else f"that unit's level-{m - 1} unit"
                raise DataError(f"{t.path}: line {i + 2}: record of level-{j + 1} unit {xs[i]} says {spec.ids[m - 2]} "
                                f"{ys[i]}, but {source} puts {that} in {got[i]}; fix the ids so they agree"
                                + (f" ({bad.size - 1} more such records)" if bad.size > 1 else ""))


def _ancestor(unit, level: int, to_level: int, parent_id: dict):
    for k in range(level, to_level):
        unit = parent_id[k].get(unit)
        if unit is None:
            return None
    return unit


def _match_records(tables, spec: MergeSpec, rec2, pos2: dict, keep1, notes: dict, warn):
    """The level-1 values and level-2 unit of each record kept: records of unknown units refused (or
    dropped with --drop-unmatched), and with --missing now records with a missing value dropped."""
    from .readers import numeric_column

    t1, t2 = tables[0], tables[1]
    as_missing = spec.missing == "now"
    unit = np.array([pos2.get(u, -1) for u in rec2], dtype=np.int64)
    unmatched = unit < 0
    if unmatched.any():
        missing_ids = list(dict.fromkeys(rec2[unmatched]))
        if not spec.drop_unmatched:
            raise DataError(f"{t1.path}: {int(unmatched.sum())} level-1 records in {len(missing_ids)} level-2 unit(s) "
                            f"have no level-2 record in {t2.path} ({spec.link1} {first_few(missing_ids)}); add them "
                            "there or pass --drop-unmatched")
        notes["dropped_unmatched"] = int(unmatched.sum())
        warn(f"dropped {int(unmatched.sum())} level-1 records whose level-2 unit is not in {t2.path.name} "
             f"({spec.link1} {first_few(missing_ids)})")
    l1_values = np.vstack([numeric_column(t1, c) for c in keep1]) if keep1 else np.empty((0, len(unit)))
    infinite: dict = {}
    refuse_infinite(t1, keep1, l1_values, as_missing, warn, infinite)
    notes.update(infinite)
    keep_rows = ~unmatched
    if as_missing and keep1:
        has_missing = np.isnan(l1_values).any(axis=0) & keep_rows
        notes["dropped_missing"] = int(has_missing.sum())
        keep_rows &= ~has_missing
    l1_values, unit = l1_values[:, keep_rows], unit[keep_rows]
    if unit.size == 0:
        raise DataError(f"{t1.path}: no level-1 records are left after matching and deletion; check the id columns "
                        "and missing values")
    return l1_values, unit


def _variables(tables, spec: MergeSpec, col: dict, link1: str, warn) -> tuple[list[list[str]], list[str], dict]:
    """The variables of each level. Named ones stay at the level they are named for; by default every
    numeric column that is not a unit id, and in a table shared with the level below only those constant
    within that level's units (the highest level first, so a variable goes to the highest level it is
    constant in). A text column is left out with a warning. Returns (variables per level, text columns,
    text columns per level)."""
    from .readers import find_column, is_text_column, numeric_column

    K = spec.n_levels
    if K == 2:  # two levels: each table leaves out its own id column only
        id_columns = {1: {link1.lower()}, 2: {spec.ids[0].lower()}}
    else:
        id_columns = dict.fromkeys(range(1, K + 1), {i.lower() for i in spec.ids} | {link1.lower()})
    text = {level: [] for level in range(1, K + 1)}
    keeps: dict = {}
    for level in range(K, 0, -1):
        t, requested = tables[level - 1], spec.keeps[level - 1]
        if requested is not None:
            keeps[level] = [find_column(t, n, f"level-{level} variable") for n in requested]
            continue
        exclude = set(id_columns[level])
        for h in range(level + 1, K + 1):  # taken by a higher level of the same table
            if tables[h - 1] is t:
                exclude |= {c.lower() for c in keeps[h]}
        for low in range(1, level):  # named for a lower level of the same table
            if tables[low - 1] is t:
                exclude |= {n.lower() for n in spec.keeps[low - 1] or () if _has_column(t, n)}
        keep = [c for c in t.data.columns if c.lower() not in exclude and not is_text_column(t, c, text[level])]
        if level > 1 and tables[level - 2] is t:
            ids = _ids(t, col[level])[0]
            keep = [c for c in keep if not _varying(numeric_column(t, c), ids)[1].size]
        keeps[level] = keep
    out = [keeps[level] for level in range(1, K + 1)]
    text_columns = list(dict.fromkeys(c for level in range(1, K + 1) for c in text[level]))
    if text_columns:
        warn(f"text column(s) {first_few(text_columns)} are labels, not numbers, and are left out of the "
             f"variables; name them with {_vars_options(K)} only if they hold numbers")
    level_of: dict = {}
    for level, names in enumerate(out, 1):
        for n in names:
            level_of.setdefault(n.lower(), set()).add(level)
    across = sorted(n for names in out for n in names if len(level_of[n.lower()]) > 1)
    if across:
        raise DataError(f"variable '{across[0]}' is in more than one level; leave it out of all but one with "
                        f"{_vars_options(K)}")
    for level, names in enumerate(out, 1):
        folded = [n.lower() for n in names]
        dup = sorted({n for n in names if folded.count(n.lower()) > 1})
        if dup:
            raise DataError(f"{tables[level - 1].path}: variables {', '.join(dup)} differ only in case; rename one")
    return out, text_columns, text


def _ordered_levels(tables, keeps, l1, unit, ids_of, values_of, parent_of, childless: dict, warn):
    """Bottom up, units without children are left out; top down, each level's units are numbered by their
    parent's number, then file order (stable); a missing value above level 1 is refused. Returns the
    (names, values, ids, offsets) of levels 1..K."""
    K = len(tables)
    child = unit
    present = {}
    for level in range(2, K + 1):
        has = np.bincount(child, minlength=len(ids_of[level])) > 0
        if not has.all():
            absent = list(ids_of[level][~has])
            childless[level] += len(absent)
            warn(f"{len(absent)} level-{level} unit(s) in {tables[level - 1].path.name} have no "
                 f"{_childless_what(level)} and are left out (ids {first_few(absent)})")
        present[level] = has
        if level < K:
            child = parent_of[level][has]
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
    levels = [(list(keeps[0]), np.ascontiguousarray(l1, dtype=np.float64), None, None)]
    child_units = unit
    for level in range(2, K + 1):
        vals = values_of[level][:, order[level]]
        uids = [str(u) for u in ids_of[level][order[level]]]
        _refuse_missing_unit_values(tables[level - 1], keeps[level - 1], vals, uids, level)
        offsets = np.concatenate(([0], np.cumsum(np.bincount(child_units, minlength=len(uids))))).astype(np.int64)
        levels.append((list(keeps[level - 1]), np.ascontiguousarray(vals, dtype=np.float64), uids, offsets))
        if level < K:
            child_units = new[level + 1][parent_of[level][order[level]]]
    return levels
