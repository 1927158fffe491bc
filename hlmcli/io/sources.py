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
    for k, (role, id_name) in enumerate((("level-1", archive.id_names[0]), ("level-2", archive.id_names[1]))):
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
