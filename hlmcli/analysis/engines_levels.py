"""Fits of three and four levels whose level-1 records are summarised per level-2 unit before the
model sees them: --engine stream and --engine dask.

The files of levels 2..K (one row per unit: small) are read whole and merged by the archive
builder exactly as for --engine memory, with one stand-in record per level-2 unit of the level-2
file in place of the level-1 file. The level-1 file is read once, chunk by chunk (streaming.py)
or per partition (dask_engine.py), into per-level-2-unit moments of the model's level-1 variables
(moments.chunk_moments, merged by Chan et al.'s update, so a unit's records may lie in any chunks
or partitions); design_levels turns them into the model's LevelsSummary, and nested_fit fits it
with the search and certificate of --engine memory (nested.py: the likelihood needs nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError, first_few
from ..spec import Engine


@dataclass
class Level1File:
    """The level-1 data of a summarised fit: where they are and how to read them."""

    path: str
    engine: str  # "stream" or "dask"
    id2: str  # the level-2 id as the file spells it
    names: list  # its level-1 variables (the id columns left out)
    columns: object = None  # streaming.Columns (stream engine)
    delimiter: str | None = None
    level2_path: str = ""
    drop_unmatched: bool = False
    scheduler: object = None  # dask_engine.Scheduler, an address, or None (a LocalCluster)
    progress: bool = False

    def moments(self, archive, names: list[str], warn=lambda m: None):
        """The one pass over the records: level1_moments of `names` (the model's level-1 variables)."""
        return level1_moments(archive, self, names, self.level2_path, self.drop_unmatched, warn, self.scheduler,
                              self.progress)


def load_summarised(data, build_opts: dict, fit, warn, K: int, progress: bool = False):
    """(the archive of the upper files, its source text, the level-1 file whose records are read
    later, once, for the model's variables) for --engine stream/dask, from the files and the build options
    as the commands and the API take them (levels_load.py)."""
    from ..data.levels_load import LevelsUsage, build_options_levels, ids_and_keeps, options3

    engine = Engine(fit.engine).value
    if len(data) == 1:
        raise LevelsUsage(f"--engine {engine} reads the data files, one per level; an archive is already built in "
                          "memory, so drop --engine")
    if K == 3:
        options = options3(**{k: build_opts.get(k) for k in ("id_", "id1", "id2", "id3", "l1_vars", "l2_vars",
                                                               "l3_vars", "missing", "drop_unmatched")})
    else:
        ids, keeps = ids_and_keeps(build_opts, K)
        options = build_options_levels(ids, keeps, build_opts.get("missing", "analysis"),
                                       build_opts.get("drop_unmatched", False), K)
    scheduler = build_opts.get("dask_scheduler") or fit.scheduler
    archive, l1 = summarised(list(data), options, engine, build_opts.get("file_format"), build_opts.get("delimiter"),
                             warn, scheduler, progress)
    return archive, ", ".join(Path(str(p)).name for p in data), l1


def summarised(paths, options, engine: str, fmt=None, delimiter=None, warn=lambda m: None, scheduler=None,
               progress: bool = False):
    """--engine stream/dask at three or more levels: (the archive of the upper files with one stand-in
    record per level-2 unit, the Level1File whose records are read later, once, for the model's
    level-1 variables). `options`: BuildOptions3 or BuildOptionsLevels, as for the memory engine."""
    from ..io.archive_levels import BuildOptions3

    ids = (options.id2, options.id3) if isinstance(options, BuildOptions3) else tuple(options.ids)
    keep1 = options.keep1 if isinstance(options, BuildOptions3) else options.keeps[0]
    l1 = level1_file(paths[0], engine, ids[0], ids, keep1, fmt, delimiter)
    l1.level2_path, l1.drop_unmatched, l1.scheduler, l1.progress = str(paths[1]), bool(options.drop_unmatched), \
        scheduler, progress
    return upper_archive(list(paths), options, l1, fmt, delimiter, warn), l1


def level1_file(path, engine: str, id2: str, id_names, keep1, fmt=None, delimiter=None) -> Level1File:
    """The level-1 file's columns, read from its header only."""
    from ..data.streaming import file_columns

    if str(path) == "-":
        raise DataError("standard input cannot be streamed; give the level-1 file's path, or use --engine memory")
    if engine == "dask":
        from ..data.dask_engine import is_parquet, level1_files

        cols = file_columns(level1_files(str(path))[0], "parquet" if is_parquet(str(path)) else (fmt or "csv"), delimiter)
    else:
        cols = file_columns(path, fmt, delimiter)
    id_col = cols.find(id2, "unit id")
    low = {i.lower() for i in id_names}
    names = ([cols.find(n, "level-1 variable") for n in keep1] if keep1 is not None
             else [c for c in cols.names if c.lower() not in low])
    return Level1File(str(path), engine, id_col, names, cols, cols.delimiter)


def upper_archive(paths, options, level1: Level1File, fmt=None, delimiter=None, warn=lambda m: None):
    """The archive of levels 2..K built by the memory engine's builder from the upper files and one
    stand-in record per level-2 unit of the level-2 file (so no unit is left out for lack of
    records here: that is decided when the level-1 moments are matched). Its level 1 carries the
    level-1 file's variable names (for the model's equations), with no values."""
    import pandas as pd

    from ..io.archive import LevelData
    from ..io.archive_levels import BuildOptions3, build_archive3, build_archive_levels
    from ..io.files import check_regular, same_file
    from ..io.readers import Table, find_column, read_table

    K = len(paths)
    three = isinstance(options, BuildOptions3)
    ids = (options.id2, options.id3) if three else tuple(options.ids)
    if options.missing == "now":
        raise UsageError("--missing now deletes records with any missing value while building an archive in memory; "
                         f"--engine {level1.engine} deletes, per model, the records missing a variable the model uses")
    for p in paths[1:]:
        check_regular(p, "data file")
        if level1.engine == "stream" and same_file(paths[0], p):
            raise DataError(f"{p}: --engine {level1.engine} reads the level-1 file in chunks and the files of the "
                            "levels above whole, so they must be separate files; give one per level, or use "
                            "--engine memory")
    tables: list = []
    for p in paths[1:]:
        shared = next((t for q, t in zip(paths[1:], tables) if same_file(q, p)), None)
        tables.append(shared if shared is not None else read_table(p, fmt, delimiter, string_columns=ids))
    t2 = tables[0]
    id2_in2 = find_column(t2, ids[0], "level-2 unit id")
    if three and not any(c.lower() == ids[1].lower() for c in t2.data.columns):
        if not any(c.lower() == ids[1].lower() for c in level1.columns.names):
            raise DataError(f"{t2.path}: no column {ids[1]}; --engine {level1.engine} links each level-2 unit to its "
                            f"level-3 unit through the level-2 file or the level-1 file, so add the {ids[1]} column "
                            "there")
        t2 = tables[0] = _linked_by_level1(t2, id2_in2, level1, ids, warn)
    stand_in = Table(path=Path(paths[0]), format="csv",
                     data=pd.DataFrame({level1.id2: t2.data[id2_in2].to_numpy(dtype=object)}))
    if three:
        opts = replace(options, keep1=[])
        archive = build_archive3(stand_in, *tables, opts, warn=warn)
    else:
        opts = replace(options, keeps=([],) + tuple(options.keeps[1:]))
        archive = build_archive_levels([stand_in] + tables, opts, warn=warn)
    upper = {n.lower() for k in range(2, archive.n_levels + 1) for n in archive.names(k)}
    both = [n for n in level1.names if n.lower() in upper]
    if both:
        raise DataError(f"variable '{both[0]}' is in more than one level; leave it out of all but one with "
                        f"--l1-vars ... --l{K}-vars")
    archive.levels[0] = LevelData(list(level1.names), np.full((len(level1.names), archive.n(1)), np.nan))
    archive.notes["level1_records_read"] = None  # the stand-in records are not the file's
    from ..io.archive import unhashed_source

    archive.sources = [unhashed_source(f"level-{k}", p) for k, p in enumerate(paths, 1)]
    return archive


def _linked_by_level1(t2, id2_in2: str, level1: Level1File, ids, warn):
    """The level-2 table with each unit's level-3 id taken from the level-1 file's records (one pass over
    its two id columns, by the stream or the Dask engine), as the memory engine's builder takes it when the level-2 file has none: a unit
    under two level-3 units is refused, a unit with no records left out with the builder's warning."""
    from dataclasses import replace as with_data

    from ..data.streaming import id_links
    from ..io.readers import unit_codes

    id3 = level1.columns.find(ids[1], "level-3 unit id")
    if level1.engine == "dask":  # one pass over the two id columns on the cluster, before the moments' pass
        from ..data.dask_engine import dask_id_links

        links = dask_id_links(level1.path, level1.id2, id3, level1.scheduler, level1.delimiter)
    else:
        links = id_links(level1.columns, level1.id2, id3)
    for unit, parents in links.items():
        if len(parents) > 1:
            raise DataError(f"{level1.path}: level-2 unit {unit} ({ids[0]}) appears under two level-3 units, "
                            f"{parents[0]} and {parents[1]} ({ids[1]}); a level-2 unit belongs to one level-3 unit, so "
                            "give level-2 units ids that are unique across level-3 units")
    codes, names, _ = unit_codes(t2, id2_in2)
    rows = np.asarray(names, dtype=object)[codes]  # each row's level-2 id, as the archive writes it
    parent = [links.get(u, [None])[0] for u in rows]
    linked = np.array([p is not None for p in parent], dtype=bool)
    if not linked.all():
        absent = list(rows[~linked])
        warn(f"{len(absent)} level-2 unit(s) in {t2.path.name} have no level-1 records and are left out "
             f"(ids {first_few(absent)})")
    data = t2.data[linked].copy()
    data[ids[1]] = [p for p in parent if p is not None]
    return with_data(t2, data=data)


def level1_moments(archive, level1: Level1File, names: list[str], level2_path, drop_unmatched: bool, warn,
                   scheduler=None, progress: bool = False):
    """One pass over the level-1 records: moments of `names` per level-2 unit, aligned with the
    archive's stand-in records (design_levels.Level1Moments). Records of a unit the archive does not
    have are refused, or dropped with --drop-unmatched; units with no records are left out, as the
    memory engine's builder leaves them out."""
    from ..data.design_levels import Level1Moments
    from ..engine.moments import Moments

    if level1.engine == "dask":
        from ..data.dask_engine import dask_moments

        unit_ids, m, _read, deleted, deleted_in = dask_moments(level1.path, level1.id2, names, scheduler,
                                                               progress=progress, by_unit=True,
                                                               delimiter=level1.delimiter)
    else:
        from ..data.streaming import stream_moments

        unit_ids, m, _read, deleted, deleted_in = stream_moments(level1.columns, level1.id2, names, progress=progress,
                                                                 by_unit=True)
    ids2 = archive.levels[1].ids
    position = {u: j for j, u in enumerate(ids2)}
    where = np.array([position.get(u, -1) for u in unit_ids], dtype=np.int64)
    if (where < 0).any():
        lost = [unit_ids[k] for k in np.flatnonzero(where < 0)]
        if not drop_unmatched:
            raise DataError(f"{level1.path}: level-1 records in {len(lost)} level-2 unit(s) have no level-2 record in "
                            f"{level2_path} ({archive.id_names[0]} {first_few(lost)}); add them there or pass "
                            "--drop-unmatched")
        warn(f"dropped the level-1 records of {len(lost)} level-2 unit(s) not in {Path(str(level2_path)).name} "
             f"({archive.id_names[0]} {first_few(lost)})")
        # as the memory engine, which drops these records while building: their missing values delete nothing
        deleted -= sum(deleted_in.get(u, 0) for u in lost)
    J2 = len(ids2)
    P = m.P
    n, mean, C = np.zeros(J2), np.zeros((J2, P)), np.zeros((J2, P, P))
    have = np.flatnonzero(where >= 0)
    n[where[have]], mean[where[have]], C[where[have]] = m.n[have], m.mean[have], m.C[have]
    seen = np.zeros(J2, dtype=bool)
    seen[where[have]] = True
    if not seen.all():
        absent = [ids2[j] for j in np.flatnonzero(~seen)]
        warn(f"{len(absent)} level-2 unit(s) have no level-1 records and are left out (ids {first_few(absent)})")
    rows = archive.parent(1)  # the stand-in records, one per level-2 unit
    return Level1Moments(list(names), Moments(n[rows], mean[rows], C[rows]), int(deleted))
