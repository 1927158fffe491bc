"""`hlmcli fit --engine dask` for a two-level HGLM by PQL, Laplace or AGQ: the records persisted on the
cluster as partitions of whole units, then the blocked fit maps each pass over them
(data/hglm_sources.DaskBlocks, engine/hglm_blocks.py).

Passes over the level-1 files: the Dask engine's per-unit moments (the design, its centring and the
units, as for a linear model); the records per partition (one pass over the id column, for each
partition's first row in its file, so that a bad value is named by file, column and row as the
stream path names it); then the records read once more, each partition's kept records formed into
design rows by the stream path's design_rows, shuffled once so that each partition holds whole units
(partition_by_unit), sorted within a unit in file order, and persisted. Every pass of the fit then
runs on the workers; only per-unit results come back.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .hglm_stream import blocked_design, design_rows, fit_blocked, fit_blocks, level1_centers, record_columns


def fit_hglm_dask(spec, summary, level1, id_name: str, where, delimiter=None, tests=(), progress: bool = False):
    """The command line's HGLM by --engine dask (`where`: a dask_engine.Scheduler), ended as the
    stream path's (fit_blocked)."""
    from pathlib import Path

    return fit_blocked(spec, lambda: analyse_hglm_dask(spec, summary, str(level1), id_name, where, delimiter,
                                                       progress), Path(str(level1)).name, tests)


def analyse_hglm_dask(spec, summary, path: str, id_name: str, where, delimiter=None, progress: bool = False):
    """The HGLMAnalysis of `spec` from the Dask engine's summary and the records of the level-1 files
    at `path` (a Parquet folder or file, or a CSV glob) on the scheduler `where`. Every computation keeps
    to where.deadline, counted from where.started (the whole command's, the moments' pass included), and
    ends past it with the linear path's one line (exit 1); `progress` shows distributed's bar for the two
    passes that read the records (the ids, then the records into partitions), as the linear path shows
    it for its one pass; the fit's passes over the persisted partitions are not shown."""
    from ..data.dask_engine import Scheduler, compute_within, session

    where = where if isinstance(where, Scheduler) else Scheduler(where or None)
    design, fam, B, rnd = blocked_design(spec, summary)

    def compute(tasks, progress_here=False):
        return compute_within(where, tasks, progress and progress_here)

    with session(where, path):
        errors: list = []
        ddf = unit_partitions(spec, design, summary, path, id_name, fam, delimiter, compute, errors)
        ddf = ddf.persist()  # the records' pass starts on the cluster; the partitions' errors share its tasks
        first_error(compute(errors, True))
        from ..data.hglm_sources import DaskBlocks

        source = DaskBlocks(ddf, fam, B, rnd, compute=lambda tasks, progress=False: compute(tasks, progress))
        check_sizes(source, design, path, compute)
        return fit_blocks(spec, design, source)


def unit_partitions(spec, design, summary, path: str, id_name: str, fam, delimiter=None, compute=None,
                    errors: list | None = None):
    """The design's records as a Dask DataFrame of spill columns (unit, l0 .., y, trials, offset) whose
    partitions hold whole units in unit order, each unit's records in file order. `compute(tasks,
    progress)`: as DaskBlocks takes it (default dask.compute).

    A bad value (an outcome that is not a count, trials below it) stops the fit with its file, column
    and row. Without `errors`, a partition raises it on its worker, and with bad values in several
    partitions the one reported is whichever worker fails first. With `errors` (a list), each input
    partition hands its first bad value's line (or None) to a delayed appended there, in file order,
    and an empty frame to the shuffle: computed with the records' pass (the same tasks, not a second
    pass), first_error then reports the first bad partition in file order, every run the same."""
    import dask
    import pandas as pd
    from dask import delayed

    from ..data.dask_engine import level1_files, read_dataset
    from ..data.hglm_sources import partition_by_unit

    model, extra = record_columns(spec)
    files = level1_files(path)
    lengths, parts = [], []
    for f in files:  # each file read on its own: a partition's rows are counted within its file
        ids = read_dataset(f, id_name, [], delimiter).to_delayed()
        lengths.append([delayed(len)(p) for p in ids])
        parts.append(read_dataset(f, id_name, model + extra, delimiter).to_delayed())
    compute = compute or (lambda tasks, progress=False: dask.compute(*tasks))
    flat = iter(compute([n for file_lengths in lengths for n in file_lengths], True))
    lengths = [[next(flat) for _ in file_lengths] for file_lengths in lengths]
    # once in the graph, not once per partition's task
    where_unit = delayed({u: j for j, u in enumerate(design.unit_ids)}, traverse=False)
    centers = delayed(level1_centers(spec, design, summary), traverse=False)
    K = len(spec.level1) + 1
    names = ["unit", "order"] + [f"l{k}" for k in range(K)] + ["y"] + (["trials"] if spec.options.trials else []) \
        + (["offset"] if spec.options.exposure else [])
    meta = pd.DataFrame({n: pd.Series(dtype=np.int64 if n in ("unit", "order") else np.float64) for n in names})
    records, order = [], 0
    for f, counts, file_parts in zip(files, lengths, parts):
        first = 0
        for n, part in zip(counts, file_parts):
            args = (part, spec, centers, fam, where_unit, id_name, model, extra, f, first, order, names)
            if errors is None:
                records.append(delayed(_records)(*args))
            else:
                frame_and_error = delayed(_records_or_error, nout=2)(*args)
                records.append(frame_and_error[0])
                errors.append(frame_and_error[1])
            first += n
            order += n
    import dask.dataframe as dd

    ddf = partition_by_unit(dd.from_delayed(records, meta=meta, verify_meta=False), units=design.n_units)
    return ddf.map_partitions(_file_order, meta=meta.drop(columns="order"))


def check_sizes(source, design, path, compute=None) -> None:
    """The persisted partitions hold each unit's records as the first pass counted them (a file that
    changed between the passes would give another fit)."""
    import dask
    from dask import delayed

    tasks = [delayed(_sizes)(p, j0) for p, j0 in zip(source.parts, source.j0)]
    sizes = compute(tasks) if compute is not None else dask.compute(*tasks)
    if not np.array_equal(np.concatenate(sizes), design.sizes):
        raise DataError(f"{path}: the files changed between the passes over them (the records of their units "
                        "differ); fit again")


def first_error(found) -> None:
    """The first bad value in file order among the partitions' (unit_partitions' `errors`), as one line."""
    bad = next((line for line in found if line is not None), None)
    if bad is not None:
        raise DataError(bad)


def _records_or_error(pdf, spec, centers, fam, where_unit, id_name, model, extra, path, first, order, names):
    """On a worker: _records and None, or an empty frame and the line of the partition's bad value."""
    import pandas as pd

    try:
        return _records(pdf, spec, centers, fam, where_unit, id_name, model, extra, path, first, order, names), None
    except DataError as exc:
        empty = {n: np.empty(0, dtype=np.int64 if n in ("unit", "order") else np.float64) for n in names}
        return pd.DataFrame(empty, columns=names), str(exc)


def _sizes(pdf, j0: int) -> np.ndarray:
    return np.bincount(pdf["unit"].to_numpy() - j0)


def _file_order(pdf):
    """A partition of whole units, each unit's records in file order (the shuffle keeps no order)."""
    return pdf.sort_values(["unit", "order"], kind="stable").drop(columns="order")


def _records(pdf, spec, centers, fam, where_unit, id_name, model, extra, path, first, order, names):
    """On a worker: one partition's kept records as spill rows (design_rows), with the unit's position
    and the record's position over all files (to keep file order within a unit after the shuffle)."""
    import pandas as pd

    from ..data.dask_engine import unit_ids
    from ..data.streaming import id_text

    col = {c: pdf[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in model + extra}
    j = np.array([where_unit.get(u, -1) for u in id_text(unit_ids(pdf, id_name).to_numpy())], dtype=np.int64)
    keep = j >= 0
    for c in model:
        keep &= ~np.isnan(col[c])
    at = np.flatnonzero(keep)
    block = design_rows(spec, centers, fam, j[keep], {c: v[keep] for c, v in col.items()}, first + at, path)
    out = {"unit": j[keep], "order": order + at}
    for k, n in enumerate(names[2:], start=1):
        out[n] = block[:, k]
    return pd.DataFrame(out, columns=names)
