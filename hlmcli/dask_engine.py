"""--engine dask: per-partition statistics on a dask.distributed cluster, combined by a tree reduction.

Each partition (a Parquet file or row group, a CSV block) is summarised by moments.chunk_moments,
the same function as the in-memory and streaming engines, keyed by unit id; the summaries are
merged a few at a time (moments.merge_keyed, Chan et al.'s update) up a tree, so a unit may have
records in any number of partitions and no worker ever holds more than a partition and a few
summaries. Only the reduced statistics (J × P² numbers) come back to the client, which runs the
optimisation, the certificate and the tables as the in-memory engine does.

Needs the optional extra: pip install 'hlmcli[dask]'.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from .errors import DataError
from .moments import KeyedMoments, chunk_moments, merge_keyed

FAN_IN = 8  # summaries merged per node of the reduction tree
CONNECT_TIMEOUT = "20s"  # to reach a --scheduler


def _dask():
    try:
        import dask  # noqa: F401
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401
    except ImportError:
        raise DataError("--engine dask needs Dask: pip install 'hlmcli[dask]'") from None
    import dask.dataframe as dd

    return dd


def is_parquet(path: str) -> bool:
    p = str(path).rstrip("/")
    if os.path.isdir(p):
        return True
    return p.lower().endswith((".parquet", ".pq"))


def _files(path: str) -> list[str]:
    if os.path.isdir(path):
        found = sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True)) or sorted(
            glob.glob(os.path.join(path, "**", "*"), recursive=True))
        found = [f for f in found if os.path.isfile(f)]
    else:
        found = sorted(glob.glob(path))
    if not found:
        raise DataError(f"{path}: no file matches; give a Parquet folder, a glob such as 'l1/*.parquet', or CSV files")
    return found


def dask_frame(level1, level2, id1, id2, fmt=None, delimiter=None):
    """The columns of the level-1 dataset (from its first file) and the level-2 file (read whole)."""
    from .engines import Frame, _source, read_level2
    from .streaming import file_columns

    first = _files(str(level1))[0]
    if os.path.isfile(str(level2)) and os.path.samefile(first, level2):
        raise DataError(f"{level2}: --engine dask needs a separate level-2 file (one row per unit); give one, "
                        "or use --engine stream")
    cols = file_columns(first, "parquet" if is_parquet(level1) else (fmt or "csv"), delimiter)
    id1 = cols.find(id1, "unit id")
    ids2, values, idcol2 = read_level2(level2, id2, None, None)
    frame = Frame([c for c in cols.names if c != id1], list(values), (id1, idcol2),
                  [_source("level-1", level1), _source("level-2", level2)])
    cols.path = Path(str(level1))
    return frame, cols, (ids2, values)


def partition_moments(pdf, id_name: str, names: list[str]):
    """One partition's summary: (KeyedMoments with ids as sorted keys, records read, records deleted).
    Integer ids stay integers until the end (sorting them is cheap); text ids are stripped."""
    import pandas as pd

    ids = pdf[id_name]
    if ids.isna().any():
        raise DataError(f"column {id_name}: a unit id is missing; give every record an id")
    if pd.api.types.is_float_dtype(ids.dtype) and np.all(ids.to_numpy() == np.round(ids.to_numpy())):
        ids = ids.astype(np.int64)
    if not pd.api.types.is_numeric_dtype(ids.dtype):
        ids = ids.astype(str).str.strip()
    codes, uniq = pd.factorize(ids.to_numpy(), sort=True)
    values = [pdf[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in names]
    keep = np.ones(len(pdf), dtype=bool)
    for c, v in zip(names, values):
        if np.isinf(v).any():
            raise DataError(f"column {c}: a value is infinite; fix it or leave {c} out of the model")
        keep &= ~np.isnan(v)
    deleted = int((~keep).sum())
    if deleted:
        codes = codes[keep]
        values = [v[keep] for v in values]
    keys = np.asarray(uniq)
    if keys.dtype == object:
        keys = keys.astype(str)
    return KeyedMoments(keys, chunk_moments(values, codes, len(keys))), len(pdf), deleted


def combine(parts):
    """A node of the tree reduction."""
    return merge_keyed([p[0] for p in parts]), sum(p[1] for p in parts), sum(p[2] for p in parts)


def read_dataset(path: str, id_name: str, names: list[str], delimiter=None):
    dd = _dask()
    columns = list(dict.fromkeys([id_name] + names))
    if is_parquet(path):
        return dd.read_parquet(_files(path) if not os.path.isdir(path) else path, columns=columns)
    from .readers import CSV_MISSING

    return dd.read_csv(_files(path), usecols=columns, dtype={id_name: str, **{c: "float64" for c in names}},
                       na_values=CSV_MISSING, keep_default_na=False, sep=delimiter or ",", blocksize="64MB")


def tree(summaries, fan_in: int = FAN_IN):
    """Merge the partitions' summaries fan_in at a time until one is left (Dask runs each level in parallel)."""
    from dask import delayed

    level = list(summaries)
    while True:
        level = [delayed(combine)(level[i:i + fan_in]) for i in range(0, len(level), fan_in)]
        if len(level) == 1:
            return level[0]


def _read_error(path, exc) -> DataError:
    text = " ".join(str(exc).split())
    text = text.split("Original Message: ")[-1][:240]
    return DataError(f"{path}: {text}; check the files (every column the model uses must hold numbers)")


def dask_moments(path, id_name: str, names: list[str], scheduler=None, progress: bool = False, delimiter=None):
    """Per-unit moments of `names` over a Parquet dataset or CSV glob, on a cluster. Returns
    (unit ids as text, Moments, records read, records deleted)."""
    import contextlib
    import logging
    import sys

    from dask import delayed
    from distributed import Client, LocalCluster

    from .streaming import id_text

    try:
        ddf = read_dataset(str(path), id_name, names, delimiter)
        summaries = [delayed(partition_moments)(part, id_name, names) for part in ddf.to_delayed()]
    except DataError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as exc:  # Dask reads a sample to learn the columns' types
        raise _read_error(path, exc) from None
    final = tree(summaries)
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise DataError(f"--scheduler {scheduler}: no Dask scheduler answers there ({exc}); check the address") from None
    else:
        cluster = LocalCluster(n_workers=min(2, os.cpu_count() or 1), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        future = client.compute(final)
        if progress:
            from distributed import progress as bar

            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the tables
                bar(future)
        keyed, read, deleted = future.result()
    except DataError:
        raise
    except ImportError as exc:  # raised on a worker that has no hlmcli
        raise DataError(f"--engine dask: a worker cannot import what it needs ({exc}); install "
                        "'hlmcli[dask]' on every worker") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:  # unreadable file, a value that is not a number
        raise _read_error(path, exc) from None
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return id_text(keyed.keys.tolist()), keyed.moments, read, deleted
