"""Sources of blocks of whole units for the blocked HGLM fit (engine/hglm_blocks.py): the records
spilled once to a unit-sorted Parquet file and read back one row group per pass step, and the
same records persisted as a Dask DataFrame whose partitions hold whole units.

The spill file's layout: one row group per block, the units of a block whole and in order; columns
l0 .. l{K-1} (the level-1 design, intercept first, centred as the model says), y, and trials and
offset (log exposure) when the model has them. Memory while fitting: one block's records plus
the per-unit state (B, J × K × p; the modes, J × q), whatever the number of records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..engine.hglm import GLMData
from ..errors import DataError, install_hint

UNITS_PER_BLOCK = 20_000  # ~2M records a block at 100 records a unit: ~0.3 GB of working arrays


def _pyarrow():
    """pyarrow, or one line saying how to install it."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DataError("the streamed HGLM spills its records to Parquet through pyarrow; "
                        + install_hint("parquet")) from None
    return pa, None


def _columns(K: int, trials: bool, offset: bool) -> list[str]:
    return [f"l{k}" for k in range(K)] + ["y"] + (["trials"] if trials else []) + (["offset"] if offset else [])


class SpillWriter:
    """Writes blocks of whole units, in unit order, as one row group each (close() when done)."""

    def __init__(self, path, K: int, trials: bool = False, offset: bool = False):
        pa, _ = _pyarrow()
        import pyarrow.parquet as pq

        self.path, self.K, self.has_trials, self.has_offset = Path(path), K, trials, offset
        self.names = _columns(K, trials, offset)
        schema = pa.schema([(name, pa.float64()) for name in self.names] + [("unit", pa.int64())])
        self.writer = pq.ParquetWriter(str(self.path), schema, compression="none")
        self.units = 0

    def write(self, sizes: np.ndarray, L: np.ndarray, y: np.ndarray, trials=None, offset=None) -> None:
        """One block: `sizes` records per unit (each ≥ 1), the rows of those units in order."""
        pa, _ = _pyarrow()
        sizes = np.asarray(sizes, dtype=np.int64)
        if np.any(sizes < 1) or int(sizes.sum()) != L.shape[0]:
            raise ValueError("a spilled block needs whole units with at least one record each")
        cols = [L[:, k] for k in range(self.K)] + [y]
        cols += [trials] if self.has_trials else []
        cols += [offset] if self.has_offset else []
        cols.append(np.repeat(np.arange(self.units, self.units + sizes.size, dtype=np.int64), sizes))
        self.writer.write_table(pa.table([pa.array(np.ascontiguousarray(c)) for c in cols], names=self.names + ["unit"]),
                                row_group_size=L.shape[0])
        self.units += sizes.size

    def close(self) -> None:
        self.writer.close()


def spill(data: GLMData, path, units: int = UNITS_PER_BLOCK) -> None:
    """A GLMData in memory written as a spill file (tests, and a fit that spills what it has read)."""
    w = SpillWriter(path, data.K, data.trials is not None, data.offset is not None)
    try:
        for j0 in range(0, data.J, units):
            j1 = min(data.J, j0 + units)
            r0, r1 = int(data.offs[j0]), int(data.offs[j1])
            w.write(np.diff(data.offs[j0:j1 + 1]), data.L[r0:r1], data.y[r0:r1],
                    None if data.trials is None else data.trials[r0:r1],
                    None if data.offset is None else data.offset[r0:r1])
    finally:
        w.close()


def block_of_table(columns: dict, family, B: np.ndarray, rnd: np.ndarray, j0: int, K: int) -> GLMData:
    """A GLMData of one block from its columns (numpy arrays by spill-file name)."""
    unit = np.asarray(columns["unit"])
    starts = np.flatnonzero(np.diff(unit)) + 1
    offs = np.concatenate(([0], starts, [unit.size])).astype(np.int64)
    if int(unit[0]) != j0 or offs.size - 1 != int(unit[-1]) - j0 + 1:
        raise DataError("the spill file's units are not whole and in order within its blocks; it is damaged: "
                        "delete it and fit again")
    L = np.column_stack([np.asarray(columns[f"l{k}"], dtype=float) for k in range(K)])
    return GLMData(family, L, B[j0:j0 + offs.size - 1], offs, rnd, np.asarray(columns["y"], dtype=float),
                   columns.get("trials"), columns.get("offset"))


class ParquetBlocks:
    """The spill file as a source of blocks: every pass reads it one row group (block) at a time."""

    def __init__(self, path, family, B: np.ndarray, rnd):
        _pyarrow()
        import pyarrow.parquet as pq

        self.path, self.family, self.B, self.rnd = str(path), family, B, np.asarray(rnd)
        meta = pq.ParquetFile(self.path).metadata
        self.names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        self.K = sum(1 for n in self.names if n.startswith("l") and n[1:].isdigit())
        self.J = B.shape[0]
        self.template = next(self._blocks())[1]

    def _blocks(self):
        import pyarrow.parquet as pq

        f = pq.ParquetFile(self.path)
        j0 = 0
        for i in range(f.num_row_groups):
            t = f.read_row_group(i)
            cols = {name: t.column(name).to_numpy() for name in t.column_names}
            d = block_of_table(cols, self.family, self.B, self.rnd, j0, self.K)
            yield j0, d
            j0 += d.J
        if j0 != self.J:
            raise DataError(f"{self.path}: the spill file holds {j0} units, the model {self.J}; delete it and fit again")

    def map(self, fn):
        return [fn(j0, d) for j0, d in self._blocks()]


class DaskBlocks:
    """A Dask DataFrame of the spill columns whose partitions each hold whole units in unit order
    (units do not span partitions): persisted once, then every pass maps the block function over
    the partitions on the workers and gathers the per-block results (sums and per-unit rows).
    `compute(tasks, progress)`: how a list of delayed tasks is computed (the command line's keeps to
    --deadline and shows --progress's bar for the first pass, which reads the records: dask_engine.
    compute_within); by default dask.compute on `scheduler`."""

    def __init__(self, ddf, family, B: np.ndarray, rnd, scheduler=None, compute=None):
        import dask

        self.family, self.B, self.rnd, self.scheduler = family, B, np.asarray(rnd), scheduler
        self.compute = compute or (lambda tasks, progress=False: dask.compute(*tasks, scheduler=scheduler))
        self.K = sum(1 for n in ddf.columns if n.startswith("l") and n[1:].isdigit())
        self.parts = ddf.persist(scheduler=scheduler).to_delayed()
        firsts = self.compute([dask.delayed(_unit_range)(p) for p in self.parts], progress=True)
        self.j0 = [int(a) for a, _ in firsts]
        ends = [int(b) + 1 for _, b in firsts]
        if self.j0[0] != 0 or any(e != s for e, s in zip(ends[:-1], self.j0[1:])):
            raise DataError("the Dask partitions do not hold whole units in order; repartition by unit first "
                            "(partition_by_unit)")
        self.ends = ends
        self.J = ends[-1]
        if self.J != B.shape[0]:
            raise DataError(f"the Dask partitions hold {self.J} units, the model {B.shape[0]}")
        self.template = block_of_table(_cols(self.compute([self.parts[0]])[0]), family, B, self.rnd, 0, self.K)

    def map(self, fn):
        import dask

        tasks = [dask.delayed(_partition_pass)(p, j0, self.family, self.B[j0:j1], self.rnd, self.K, fn)
                 for p, j0, j1 in zip(self.parts, self.j0, self.ends)]
        return list(self.compute(tasks))


def _cols(pdf) -> dict:
    return {c: pdf[c].to_numpy() for c in pdf.columns}


def _unit_range(pdf):
    u = pdf["unit"].to_numpy()
    return int(u[0]), int(u[-1])


def _partition_pass(pdf, j0, family, B_from, rnd, K, fn):
    """On a worker: the partition as a block (B_from: the rows of B of its units) and fn on it."""
    return fn(j0, _block_at(pdf, j0, family, B_from, rnd, K))


def _block_at(pdf, j0, family, B_from, rnd, K):
    cols = _cols(pdf)
    cols["unit"] = cols["unit"] - j0
    return block_of_table(cols, family, B_from, rnd, 0, K)


def partition_by_unit(ddf, units_per_partition: int = UNITS_PER_BLOCK, units: int | None = None):
    """Records with a `unit` column (0 .. J − 1) in any partition: shuffled once so that each
    partition holds whole units, sorted by unit (dask's set_index on the unit, divisions at every
    units_per_partition units). `units`: J when known (else one more pass finds it)."""
    J = units if units is not None else int(ddf["unit"].max().compute()) + 1
    divisions = list(range(0, J, units_per_partition)) + [J - 1]
    out = ddf.set_index("unit", divisions=divisions, sort=True).reset_index()
    return out.map_partitions(lambda pdf: pdf.sort_values("unit", kind="stable"))
