"""`hlmcli fit --engine stream` for a two-level HGLM by PQL, Laplace or AGQ: the records spilled once
to a unit-sorted Parquet file, then the fit passes over it (engine/hglm_blocks.py). PQL is hglm.pql
itself: each macro iteration, the fixed-point refit and the population-average model need only
per-unit cross-products of the working model, summed over each block's whole units.

Passes over the level-1 file: the stream engine's per-unit moments (the design, its centring and
the units, as for a linear model: engines.summarise); then one more pass that writes each record's
design row (centred as the design says), outcome, trials and log exposure into buckets of units on
disk, and each bucket, sorted by unit (stably: a unit's records keep their file order), becomes
row groups of the spill file. Memory: one chunk of the file or one bucket, plus the per-unit
state. The spill file is deleted when the fit ends.

Checks as in memory where they need one record at a time (the family's outcome values, trials and
exposure, with file, column and record); the in-memory fit's checks over all records at once
(separation by a level-1 predictor, column scales) are not run: a separated coefficient leaves the
search uncertified (exit 3) rather than wrong.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..data.design import design_from_moments
from ..engine.moments import digest_of
from .engines import outcome_column
from ..errors import DataError, ModelError

BUCKET_UNITS = 20_000  # units per bucket of the external sort, and per row group of the spill file


def fit_hglm_stream(spec, summary, level1, id_name: str, file_format=None, delimiter=None, tests=()):
    """The command line's streamed HGLM: the fit, a numerical breakdown as one line, and the extras
    (Wald tests, the likelihood-ratio test against a prior deviance), as api.analyse_model does."""
    from ..data.streaming import file_columns

    cols = file_columns(level1, file_format, delimiter)
    return fit_blocked(spec, lambda: analyse_hglm_stream(spec, summary, cols, id_name), cols.path.name, tests)


def fit_blocked(spec, analyse, name: str, tests=()):
    """A blocked HGLM as the command line ends it: `analyse()` (the stream or Dask path's HGLMAnalysis)
    with numpy's numerical failures as one line naming the file `name`, then the extras."""
    import warnings

    from ..language.hypotheses import parse_test
    from .hglm_run import boundary_notes, hglm_extras

    o = spec.options
    hypotheses = list(o.hypotheses) + [parse_test(t, spec) for t in tests]
    try:
        with warnings.catch_warnings():  # numpy's overflow warnings would break the one line
            warnings.simplefilter("ignore", RuntimeWarning)
            a = analyse()
    except (FloatingPointError, np.linalg.LinAlgError, OverflowError) as exc:
        if os.environ.get("HLMCLI_DEBUG"):
            raise
        raise ModelError(f"{name}: the model cannot be fitted to these data "
                         f"({' '.join(str(exc).split())[:100]}); check extreme values, and predictors that "
                         "separate the outcome, or remove random effects") from None
    a.extras = hglm_extras(a, hypotheses, o.prior_deviance, o.prior_params)
    a.notes = boundary_notes(a)
    return a


def analyse_hglm_stream(spec, summary, cols, id_name: str, tmp_dir=None):
    """The HGLMAnalysis of `spec` from the stream engine's summary and one more pass over `cols` (the
    level-1 file's streaming.Columns, its unit id column `id_name`)."""
    from ..data.hglm_sources import ParquetBlocks

    design, fam, B, rnd = blocked_design(spec, summary)
    work = Path(tempfile.mkdtemp(prefix="hlmcli-spill-", dir=tmp_dir))
    try:
        path = work / "records.parquet"
        spill_records(spec, design, summary, cols, id_name, fam, path, work)
        return fit_blocks(spec, design, ParquetBlocks(path, fam, B, rnd))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def blocked_design(spec, summary):
    """The design of a blocked HGLM from the summarising pass (checked as in memory), its family, the
    level-2 design per unit (B) and the random level-1 coefficients."""
    from .hglm_run import check_fixed_rank, check_options
    from .identifiability import check_units
    from .pipeline import check_estimable
    from ..engine.family import family as get_family

    check_options(spec.options)
    design, _unit = design_from_moments(spec, summary.unit_ids, summary.names, summary.moments, summary.level2,
                                        summary.n_deleted,
                                        digest_of(summary.unit_ids, summary.moments, outcome_column(spec, summary)))
    check_estimable(design)
    if not design.random.any():
        raise ModelError("an HGLM needs at least one random effect (add u0 to the equation for b0)")
    check_fixed_rank(design, _unit.LL)
    check_units(design.n_units, int(design.random.sum()))
    return design, get_family(spec.options.family), design.block_design(), np.flatnonzero(design.random)


def fit_blocks(spec, design, source):
    """The HGLMAnalysis from a source of blocks of whole units (a spill file, Dask partitions): every
    pass over the records happens here, while the source exists."""
    from ..engine.hglm import working_model
    from ..engine.hglm_blocks import BlockedGLMData
    from . import inference
    from .hglm_run import HGLMAnalysis, likelihood_fit

    opts = spec.options
    data = BlockedGLMData(source)
    diagonal = opts.tau == "diagonal"
    if opts.estimation == "pql":
        res = p_res = _pql_over_blocks(data, spec, diagonal)
        m_res, nodes, sigma2 = None, 0, p_res.sigma2 if opts.overdispersion else None
    else:
        res = m_res = likelihood_fit(data, opts, diagonal)
        p_res, nodes, sigma2 = None, m_res.nodes, None
    stats, unit = working_model(data, res.eta)
    data.const  # the report's log-likelihood constant: read while the source is there
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=res.gamma), sigma2=sigma2 if sigma2 is not None else 1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, res.tau, stats)
    return HGLMAnalysis(spec, design, data, opts.estimation, nodes, p_res, m_res, res.gamma, res.cov,
                        res.robust_cov, res.tau, sigma2, inference.hlm_fixed_df(design), variance,
                        res.converged, res.b, res.b_var)


def _pql_over_blocks(data, spec, diagonal: bool):
    """hglm.pql itself over the spilled blocks, as analyse_hglm calls it in memory: the macro
    iterations' working models, the fixed-point refit and the population-average model each read
    the blocks' per-unit cross-products (BlockedGLMData.working_model), η kept as its parameters."""
    from ..engine.hglm import pql

    o = spec.options
    return pql(data, reml=spec.method == "REML", overdispersion=o.overdispersion, macroit=o.macroit,
               microit=o.microit, stopmacro=o.stopmacro, stopmicro=o.stopmicro, diagonal=diagonal)


def spill_records(spec, design, summary, cols, id_name: str, fam, path, work: Path) -> None:
    """The second pass: the records of the design's units, as the design's rows, into the spill file."""
    from ..data.hglm_sources import SpillWriter
    from ..data.streaming import batches, id_text

    opts = spec.options

    model, extra = record_columns(spec)
    read = [cols.find(c, "level-1 variable") for c in model + extra]
    where_unit = {u: j for j, u in enumerate(design.unit_ids)}
    centers = level1_centers(spec, design, summary)
    K = len(spec.level1) + 1
    n_buckets = max(1, -(-design.n_units // BUCKET_UNITS))
    width = K + 2 + len(extra)  # unit, L, y, trials/exposure
    handles = {}
    try:
        for ids, values, first in batches(cols, id_name, read):
            col = dict(zip(model + extra, values))
            keep = np.ones(len(ids), dtype=bool)
            for c in model:
                keep &= ~np.isnan(col[c])
            codes = ids.dictionary_encode()
            dict_units = np.array([where_unit.get(u, -1) for u in id_text(codes.dictionary.to_pylist())], dtype=np.int64)
            j = dict_units[codes.indices.to_numpy(zero_copy_only=False)] if len(dict_units) else np.full(len(ids), -1)
            keep &= j >= 0
            rows = first + np.flatnonzero(keep)
            j = j[keep]
            block = design_rows(spec, centers, fam, j, {c: v[keep] for c, v in col.items()}, rows, cols.path)
            bucket = j // BUCKET_UNITS
            for b in np.unique(bucket):
                if b not in handles:
                    handles[b] = open(work / f"bucket{b}.bin", "ab")
                np.ascontiguousarray(block[bucket == b]).tofile(handles[b])
    finally:
        for h in handles.values():
            h.close()
    writer = SpillWriter(path, K, bool(opts.trials), bool(opts.exposure))
    try:
        for b in range(n_buckets):
            f = work / f"bucket{b}.bin"
            if not f.exists():
                raise DataError(f"{cols.path}: the file changed between the passes over it (units {b * BUCKET_UNITS + 1} "
                                "on have no records now); fit again")
            rec = np.fromfile(f, dtype=float).reshape(-1, width)
            os.remove(f)
            rec = rec[np.argsort(rec[:, 0], kind="stable")]
            sizes = np.bincount(rec[:, 0].astype(np.int64) - b * BUCKET_UNITS)
            want = design.sizes[b * BUCKET_UNITS:(b + 1) * BUCKET_UNITS]
            if sizes.size != want.size or np.any(sizes != want):
                raise DataError(f"{cols.path}: the file changed between the passes over it (the records of its "
                                "units differ); fit again")
            t = rec[:, K + 2] if opts.trials else None
            off = rec[:, K + 2 + (1 if opts.trials else 0)] if opts.exposure else None
            writer.write(sizes, rec[:, 1:K + 1], rec[:, K + 1], t, off)
    finally:
        writer.close()


def record_columns(spec) -> tuple[list, list]:
    """The level-1 columns a blocked HGLM reads: those the summarising pass deleted records with a
    missing value over, and trials and exposure."""
    from .engines import model_columns

    o = spec.options
    return model_columns(spec)[0], [c for c in (o.trials, o.exposure) if c]


def design_rows(spec, centers, fam, j, col: dict, rows, path) -> np.ndarray:
    """Kept records as spill rows: unit (design position j), the centred level-1 design (intercept
    first), outcome, then trials and log exposure when the model has them; the family's outcome,
    trials and exposure checked first, naming `path`, the column and the 1-based row (`rows`: the
    0-based rows in the file). The stream and Dask paths both form their records here."""
    opts = spec.options
    y = col[spec.outcome]
    trials = col[opts.trials] if opts.trials else None
    exposure = col[opts.exposure] if opts.exposure else None
    for name, v in ((opts.trials, trials), (opts.exposure, exposure)):
        if v is not None and np.isnan(v).any():
            k = int(np.flatnonzero(np.isnan(v))[0])
            raise DataError(f"{path}, column {name}, row {int(rows[k]) + 1}: missing value")
    fam.check(y, trials, exposure, {"file": Path(path).name, "outcome": spec.outcome, "trials": opts.trials,
                                    "exposure": opts.exposure, "rows": rows})
    K = len(spec.level1) + 1
    extra = [v for v in (trials, exposure) if v is not None]
    block = np.empty((j.size, K + 2 + len(extra)))
    block[:, 0] = j
    block[:, 1] = 1.0
    for k, t in enumerate(spec.level1, start=1):
        block[:, 1 + k] = col[t.name] - centers[k - 1][j]
    block[:, K + 1] = y
    for k, v in enumerate(extra):
        block[:, K + 2 + k] = np.log(v) if v is exposure else v
    return block


def level1_centers(spec, design, summary) -> list:
    """What centring subtracts from each level-1 predictor, per design unit (group: the unit's own
    mean over its kept records; grand: the records' mean; none: 0), as design_from_moments uses."""
    from ..engine.moments import grand

    positions = design.unit_positions
    m = summary.moments
    out = []
    for t in spec.level1:
        k = summary.names.index(t.name)
        if t.centering == "group":
            out.append(m.mean[positions, k])
        elif t.centering == "grand":
            out.append(np.full(design.n_units, float(grand(m)[1][k])))
        else:
            out.append(np.zeros(design.n_units))
    return out
