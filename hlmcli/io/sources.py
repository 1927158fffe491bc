"""The user's own rows behind an archive: which source row each archive record came from, and the
source columns (text too) that residual files carry with --keep.

The archive stores records sorted by unit (a stable sort in level-2 file order), so the source row of
every record can be recomputed from the level-1 file: match ids to units, drop what the build dropped,
and sort stably by unit. The count is checked, so a file that no longer matches is never misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ..lazy import lazy

pd = lazy("pandas")

from ..errors import DataError


@dataclass
class SourceFrames:
    """The level-1 and level-2 source tables (the same table when one file holds both levels)."""

    level1: pd.DataFrame
    level2: pd.DataFrame
    id1: str
    id2: str
    same: bool = False
    level1_name: str = "the level-1 file"
    level2_name: str = "the level-2 file"


def frames_from_archive(archive, paths: tuple[str, str] | None = None) -> SourceFrames:
    """Read the files an archive was built from (`paths`, the level-1 and level-2 files the user
    gave, else the paths the archive recorded, else beside the archive); DataError if they are
    gone or their content differs from what the archive was built from."""
    from .files import sha256_file
    from .readers import find_column, read_table

    roles = {s.role: s for s in archive.sources}
    if "level-1" not in roles or "level-2" not in roles:
        raise DataError("this archive does not name its source files, so rows and columns cannot be taken from them")
    tables = {}
    for k, (role, id_name) in enumerate((("level-1", archive.level1_id), ("level-2", archive.id_names[0]))):
        src = roles[role]
        candidates = ([Path(paths[k])] if paths else []) + [Path(src.path)]
        if archive.path is not None:
            candidates.append(Path(archive.path).parent / src.name)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(f"{src.path}: the {role} file this archive was built from is not there any more; "
                            "put it back or rebuild the archive")
        if found.stat().st_size != src.size or sha256_file(found) != src.sha256:
            raise DataError(f"{found}: differs from the {role} file the archive was built from; rebuild it with 'hlmcli mdm build'")
        table = read_table(found, src.format, string_columns=(id_name,))
        tables[role] = (table, find_column(table, id_name, "unit id"))
    same = roles["level-1"].sha256 == roles["level-2"].sha256 and roles["level-1"].path == roles["level-2"].path
    (t1, id1), (t2, id2) = tables["level-1"], tables["level-2"]
    return SourceFrames(t1.data, t2.data, id1, id2, same, roles["level-1"].name, roles["level-2"].name)


def ids_as_archive_text(frame: pd.DataFrame, column: str, name: str) -> np.ndarray:
    """Each row's unit id as the archive's text (the readers' own conversion, so they always agree)."""
    from .readers import Table, unit_codes

    codes, names, _ = unit_codes(Table(Path(name), "dataframe", frame), column)
    return np.array(names, dtype=object)[codes]


def record_source_rows(archive, frames: SourceFrames) -> np.ndarray:
    """For each archive record (in archive order), its 0-based row in the level-1 source."""
    from .readers import Table, numeric_column

    from .readers import unit_codes

    codes, names, _ = unit_codes(Table(Path(frames.level1_name), "dataframe", frames.level1), frames.id1)
    position = {uid: j for j, uid in enumerate(archive.unit_ids)}
    unit = np.array([position.get(uid, -1) for uid in names], dtype=np.int64)[codes]  # one lookup per unit
    keep = unit >= 0
    if archive.missing == "now":
        table = Table(Path(frames.level1_name), "dataframe", frames.level1)
        for name in archive.level1_names:
            if name in frames.level1.columns:
                keep &= ~np.isnan(numeric_column(table, name))
    rows = np.flatnonzero(keep)
    order = rows[np.argsort(unit[keep], kind="stable")]
    if order.size != archive.n_level1 or np.any(np.diff(unit[order]) < 0):
        raise DataError(f"{frames.level1_name}: its rows no longer match the archive ({order.size} rows for "
                        f"{archive.n_level1} records); rebuild the archive")
    return order


def resolve_columns(frames: SourceFrames, keep: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """Each requested name as (level, the file's spelling, name); an unknown name is a DataError."""
    out = []
    for name in keep:
        hits = []
        for level, frame in (("level-1", frames.level1), ("level-2", frames.level2)):
            match = [c for c in frame.columns if c == name] or [c for c in frame.columns if c.lower() == name.lower()]
            if match:
                hits.append((level, match[0], name))
        if not hits:
            cols = ", ".join(list(dict.fromkeys(list(frames.level1.columns) + list(frames.level2.columns)))[:12])
            raise DataError(f"--keep {name}: no such column in {frames.level1_name} or {frames.level2_name} "
                            f"(columns are: {cols}); check the name")
        out.append(hits[0])  # the level-1 spelling first: at level 1 it varies within units
    return out


def level2_rows(frames: SourceFrames, unit_ids: list[str]) -> np.ndarray:
    """For each unit id, its row in the level-2 source (the first row of the unit when one file holds both)."""
    ids = ids_as_archive_text(frames.level2, frames.id2, frames.level2_name)
    first: dict[str, int] = {}
    for k, uid in enumerate(ids):
        first.setdefault(uid, k)
    return np.array([first[u] for u in unit_ids], dtype=np.int64)


# ---------------------------------------------------------------- any number of levels

@dataclass
class LevelFrames:
    """The source tables of an archive of K levels, level 1 first (one table may serve several levels),
    and each table's row of every archive unit of its level (records at level 1)."""

    frames: list  # per level 1..K: the DataFrame of that level's file
    names: list[str]  # per level: the file's name, for messages
    rows: list  # per level: the source row (0-based) of each archive unit of that level, in archive order


def level_frames(archive, paths=None) -> LevelFrames:
    """Read the files an archive of any number of levels was built from (`paths`, the files the user gave,
    else the paths the archive recorded, else beside the archive); DataError if one is gone or differs.
    A file serving several levels is read once."""
    from .files import sha256_file
    from .readers import read_table

    roles = {s.role: s for s in archive.sources}
    K = archive.n_levels
    if any(f"level-{k}" not in roles for k in range(1, K + 1)):
        raise DataError("this archive does not name its source files, so rows and columns cannot be taken from them")
    ids = (archive.level1_id, *archive.id_names)
    frames, names, read = [], [], {}
    for k in range(1, K + 1):
        src = roles[f"level-{k}"]
        candidates = ([Path(paths[k - 1])] if paths else []) + [Path(src.path)]
        if archive.path is not None:
            candidates.append(Path(archive.path).parent / src.name)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(f"{src.path}: the level-{k} file this archive was built from is not there any more; "
                            "put it back or rebuild the archive")
        key = (str(found.resolve()), src.sha256)
        if key not in read:
            if found.stat().st_size != src.size or sha256_file(found) != src.sha256:
                raise DataError(f"{found}: differs from the level-{k} file the archive was built from; rebuild it "
                                "with 'hlmcli mdm build'")
            read[key] = read_table(found, src.format, string_columns=ids).data
        frames.append(read[key])
        names.append(src.name)
    rows = [_record_rows(archive, frames[0], names[0])]
    for k in range(2, K + 1):
        rows.append(_unit_rows(frames[k - 1], _column(frames[k - 1], ids[k - 1]), names[k - 1],
                               archive.levels[k - 1].ids, k))
    return LevelFrames(frames, names, rows)


def _column(frame, name: str) -> str:
    hits = [c for c in frame.columns if c == name] or [c for c in frame.columns if c.lower() == name.lower()]
    if not hits:
        raise DataError(f"no column {name} in a source file of the archive; rebuild the archive")
    return hits[0]


def _record_rows(archive, frame, name: str) -> np.ndarray:
    """record_source_rows of the level-1 file (levels 1 and 2 are linked as at two levels)."""
    return record_source_rows(archive, SourceFrames(frame, frame, _column(frame, archive.level1_id), "", level1_name=name))


def _unit_rows(frame, column: str, name: str, unit_ids: list[str], level: int) -> np.ndarray:
    """The row of each level-`level` unit in its file: its only row, or its first where the file also
    holds a lower level (ids are unique over the whole data, as the builder checked)."""
    first: dict[str, int] = {}
    for k, uid in enumerate(ids_as_archive_text(frame, column, name)):
        first.setdefault(uid, k)
    try:
        return np.array([first[u] for u in unit_ids], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{name}: level-{level} unit {exc.args[0]} of the archive is not in the file any more; "
                        "rebuild the archive") from None


def keep_columns(archive, sources: LevelFrames, keep, level: int, units: np.ndarray) -> dict:
    """The --keep columns of the level-`level` residual file, whose rows are the archive's units `units`
    of that level (records at level 1): {name: values}. A column is taken from the file of the table's
    level or the nearest above it, through each unit's ancestor there; else from the nearest file below,
    as the unit's value where it is constant within the unit, empty where it varies (as at two levels).
    An unknown name is a DataError naming the files."""
    K = archive.n_levels
    ancestors = {level: np.asarray(units)}
    for m in range(level + 1, K + 1):
        ancestors[m] = archive.parent(m - 1)[ancestors[m - 1]]
    order = list(range(level, K + 1)) + list(range(level - 1, 0, -1))
    out = {}
    for name in keep:
        found = None
        for m in order:
            frame = sources.frames[m - 1]
            match = [c for c in frame.columns if c == name] or [c for c in frame.columns if c.lower() == name.lower()]
            if match:
                found = (m, match[0])
                break
        if found is None:
            files = list(dict.fromkeys(sources.names))
            cols = list(dict.fromkeys(c for f in sources.frames for c in f.columns))
            raise DataError(f"--keep {name}: no such column in {', '.join(files)} (columns are: {', '.join(cols[:12])}); "
                            "check the name")
        m, column = found
        values = sources.frames[m - 1][column].to_numpy()
        if m >= level:
            out[name] = values[sources.rows[m - 1][ancestors[m]]]
            continue
        # a lower level's column: each level-`level` unit's value where its level-m units agree
        below = np.arange(archive.n(m))
        for step in range(m, level):
            below = archive.parent(step)[below]
        per_unit = (pd.Series(values[sources.rows[m - 1]]).groupby(below, sort=False)
                    .agg(lambda v: v.iloc[0] if v.nunique(dropna=False) == 1 else None))
        out[name] = per_unit.reindex(ancestors[level]).to_numpy()
    return out
