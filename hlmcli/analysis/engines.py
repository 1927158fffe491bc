"""Fits whose records are summarised per unit before the model sees them: --engine stream and
--engine dask, and fits from a statistics archive (mdm build --engine stream).

Each engine ends in the same place: unit ids, per-unit moments of the level-1 columns
(moments.Moments) and the level-2 values; from there design.design_from_moments and
pipeline.analyse_stats give the same Analysis, tables, certificate and JSON as the in-memory engine.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.archive import unhashed_source
from ..data.design import design_from_moments
from ..errors import DataError, ModelError
from ..engine.moments import Moments, digest_of


@dataclass
class Frame:
    """What a fit needs to know of the data besides the moments (the archive's role in Results)."""

    level1_names: list[str]
    level2_names: list[str]
    id_names: tuple[str, str]
    sources: list = field(default_factory=list)
    id_kind: str = "string"
    same_file: bool = False

    @property
    def level1_id(self) -> str:
        """The unit id as the level-1 file spells it (as Archive.level1_id)."""
        return self.id_names[0]

    n_levels = 2  # as Archive.n_levels and Archive.names: the variables of each level (design.variables_of)

    def names(self, level: int) -> list[str]:
        return self.level1_names if level == 1 else self.level2_names


@dataclass
class Summary:
    """Per-unit moments of `names` for `unit_ids` (level-2 order), and the level-2 values."""

    unit_ids: list[str]
    names: list[str]
    moments: Moments
    level2: dict
    n_deleted: int = 0
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------- level 2 and matching

def read_level2(path, id2: str, fmt=None, delimiter=None):
    """The level-2 file (one row per unit: small) through the in-memory reader. Returns (ids, {name: values})."""
    from ..io.readers import find_column, is_text_column, numeric_column, read_table, unit_codes

    table = read_table(path, fmt, delimiter, string_columns=(id2,))
    idcol = find_column(table, id2, "unit id")
    codes, ids, _kind = unit_codes(table, idcol)
    if len(ids) != len(codes):
        counts = np.bincount(codes)
        dups = [ids[i] for i in np.flatnonzero(counts > 1)][:5]
        raise DataError(f"{table.path}: column {idcol}: unit id(s) appear more than once ({', '.join(dups)}); "
                        "the level-2 file needs exactly one row per unit")
    values = {c: numeric_column(table, c)[np.argsort(codes)] for c in table.data.columns
              if c != idcol and not is_text_column(table, c, None)}
    order_ids = [ids[c] for c in np.sort(codes)]
    return order_ids, values, idcol


def match_units(unit_ids: list[str], m: Moments, ids2: list[str], level2: dict, level1_path, level2_path,
                drop_unmatched: bool, warn) -> tuple[list[str], Moments, dict, dict]:
    """Units in level-2 file order, as the archive keeps them; unmatched level-1 units refused or dropped."""
    where = level2_positions(unit_ids, ids2)
    notes = {"dropped_unmatched": 0, "units_without_records": 0}
    if (where < 0).any():
        missing = [unit_ids[k] for k in np.flatnonzero(where < 0)]
        records = int(m.n[where < 0].sum())
        if not drop_unmatched:
            raise DataError(f"{level1_path}: level-1 records in {len(missing)} unit(s) have no level-2 record in "
                            f"{level2_path} (ids {', '.join(missing[:5])}); add them there or pass --drop-unmatched")
        notes["dropped_unmatched"] = records
        warn(f"dropped the level-1 records of {len(missing)} unit(s) not in {Path(level2_path).name} "
             f"(ids {', '.join(missing[:5])})")
    have = np.flatnonzero(where >= 0)
    order = have[np.argsort(where[have], kind="stable")]
    pos2 = where[order]
    absent = len(ids2) - pos2.size
    if absent:
        notes["units_without_records"] = absent
        warn(f"{absent} level-2 unit(s) in {Path(level2_path).name} have no level-1 records and are left out")
    return ([unit_ids[k] for k in order], m.take(order), {k: np.asarray(v)[pos2] for k, v in level2.items()}, notes)


def level2_positions(unit_ids, ids2) -> np.ndarray:
    """Each unit's row in the level-2 file, -1 if none: {id: row}.get(unit) for every unit, with the
    last row of an id given twice, as a dict built in file order keeps it. A hash index over the ids
    as Python objects (the same hashing and equality, so 1 never matches "1") does it in C."""
    import pandas as pd

    index = pd.Index(ids2, dtype=object)
    rows = None
    repeated = index.duplicated(keep="last")
    if repeated.any():
        rows = np.flatnonzero(~repeated)
        index = index[~repeated]
    where = np.asarray(index.get_indexer(pd.Index(unit_ids, dtype=object)), dtype=np.int64)
    if rows is not None:
        where = np.where(where >= 0, rows[where], -1)
    return where


def level2_from_same_file(unit_ids, m: Moments, names: list[str], level2_names: list[str], path) -> dict:
    """One file for both levels: a level-2 variable is a column constant within each unit, so its
    value is the unit's mean and its within-unit co-moment must vanish."""
    out = {}
    for name in level2_names:
        k = names.index(name)
        scale = max(1.0, float(np.abs(m.mean[:, k]).max()))
        spread = np.sqrt(np.clip(m.C[:, k, k], 0, None) / np.where(m.n > 0, m.n, 1))
        bad = np.flatnonzero(spread > 1e-9 * scale)
        if bad.size:
            raise DataError(f"{path}: column {name} varies within unit {unit_ids[bad[0]]}; a level-2 variable must be "
                            "constant within each unit")
        out[name] = m.mean[:, k].copy()
    return out


# ---------------------------------------------------------------- the engines' passes

def model_columns(spec) -> tuple[list[str], list[str]]:
    """(level-1 columns the model reads: outcome, predictors, unit means; level-2 variables it uses)."""
    l1 = [spec.outcome] + [t.name for t in spec.level1]
    l1 += [t.name for t in spec.predictors(2) if t.unit_mean]
    l2 = [t.name for t in spec.predictors(2) if not t.unit_mean]
    return list(dict.fromkeys(l1)), list(dict.fromkeys(l2))


# The command-line flags the summarised engines are asked about, as features of the capabilities table.
_FLAG_FEATURES = {"--residuals-l1": "residuals", "--residuals-l2": "residuals", "--keep": "keep",
                  "--weight1": "weights", "--weight2": "weights", "--plausible-values": "plausible_values",
                  "--imputed": "plausible_values", "--missing now": "missing_now"}


def refuse_unsupported(spec, engine: str, **options) -> None:
    """One line for what the summarised engines cannot do (capabilities.py, README 'What hlmcli fits')."""
    from ..capabilities import check as check_capabilities
    from ..spec import FitOptions, OutputOptions

    extra = tuple(dict.fromkeys(_FLAG_FEATURES[name] for name, on in options.items() if on))
    try:
        weights = {f"weight{k}": "given" for k in (1, 2) if options.get(f"--weight{k}")}  # named in the refusal
        check_capabilities(spec, FitOptions(engine="stream" if engine.startswith("stream") else engine, **weights),
                           OutputOptions(), "stream" if engine.startswith("stream") else engine, extra=extra)
    except ModelError as exc:
        if str(exc).startswith("--engine"):
            raise
        raise type(exc)(f"--engine {engine}: {exc}") from None  # a refusal stays one (exit 2)


# ---------------------------------------------------------------- the statistics archive

SSM_MAGIC = b"HLMCSSM\x1a"
_SSM_PREFIX = struct.Struct("<8sIIQ32s")


def is_stats_archive(path) -> bool:
    import os

    if not os.path.isfile(path):  # a FIFO or a device would block or never end: check_regular names it later
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SSM_MAGIC)) == SSM_MAGIC
    except OSError:
        return False


def write_stats_archive(summary: Summary, frame: Frame, path) -> None:
    """Per-unit statistics of every level-1 variable (HLM's SSM idea): J × P² numbers whatever N is.
    Layout as the record archive: prefix (magic, version, header length, SHA-256 of the file with
    the checksum zeroed), a JSON header, then little-endian float64 arrays n, mean, C, level-2."""
    import hashlib

    from ..io.files import atomic_write

    m = summary.moments
    l2 = np.vstack([summary.level2[k] for k in frame.level2_names]) if frame.level2_names else np.zeros((0, m.J))
    header = {"level1_names": summary.names, "level2_names": frame.level2_names, "unit_ids": summary.unit_ids,
              "id_names": list(frame.id_names), "id_kind": frame.id_kind, "notes": summary.notes,
              "J": m.J, "P": m.P, "sources": [s.__dict__ for s in frame.sources]}
    text = json.dumps(header, sort_keys=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    body = [text] + [np.ascontiguousarray(a, dtype="<f8").tobytes() for a in (m.n, m.mean, m.C, l2)]
    prefix = _SSM_PREFIX.pack(SSM_MAGIC, 1, 0, len(text), b"\0" * 32)
    h = hashlib.sha256(prefix)
    for b in body:
        h.update(b)
    atomic_write(path, [_SSM_PREFIX.pack(SSM_MAGIC, 1, 0, len(text), h.digest())] + body)


def load_stats_archive(path) -> tuple[Summary, Frame]:
    import hashlib

    from ..io.archive import Source

    raw = Path(path).read_bytes()
    if len(raw) < _SSM_PREFIX.size:
        raise DataError(f"{path}: the statistics archive is truncated; rebuild it with 'hlmcli mdm build --engine stream'")
    magic, version, _r, hlen, digest = _SSM_PREFIX.unpack_from(raw)
    h = hashlib.sha256(_SSM_PREFIX.pack(magic, version, _r, hlen, b"\0" * 32))
    h.update(raw[_SSM_PREFIX.size:])
    if version != 1 or h.digest() != digest:
        raise DataError(f"{path}: the statistics archive is damaged (checksum mismatch); rebuild it with "
                        "'hlmcli mdm build --engine stream'")
    start = _SSM_PREFIX.size
    header = json.loads(raw[start:start + hlen])
    J, P, L2 = header["J"], header["P"], len(header["level2_names"])
    arrays = np.frombuffer(raw, dtype="<f8", offset=start + hlen)
    sizes = [J, J * P, J * P * P, L2 * J]
    if arrays.size != sum(sizes):
        raise DataError(f"{path}: the statistics archive is damaged (wrong size); rebuild it")
    parts = np.split(arrays, np.cumsum(sizes)[:-1])
    m = Moments(parts[0].copy(), parts[1].reshape(J, P).copy(), parts[2].reshape(J, P, P).copy())
    l2 = parts[3].reshape(L2, J)
    summary = Summary(header["unit_ids"], header["level1_names"], m,
                      {k: l2[i].copy() for i, k in enumerate(header["level2_names"])}, 0, header["notes"])
    frame = Frame(header["level1_names"], header["level2_names"], tuple(header["id_names"]),
                  [Source(**s) for s in header["sources"]], header["id_kind"])
    return summary, frame


# ---------------------------------------------------------------- from the files to a Summary

def frame_of_files(level1, level2, id1, id2, fmt=None, delimiter=None):
    """The columns of both files (the level-2 file read whole: one row per unit) without reading the records."""
    from ..io.files import same_file
    from ..data.streaming import file_columns

    if "-" in (str(level1), str(level2)):
        raise DataError("standard input cannot be streamed; give the file's path, or use --engine memory")
    cols = file_columns(level1, fmt, delimiter)
    id1 = cols.find(id1, "unit id")
    same = same_file(level1, level2)
    if same:
        names = [c for c in cols.names if c != id1]
        frame = Frame(names, names, (id1, id1), [unhashed_source("level-1", level1), unhashed_source("level-2", level2)],
                      same_file=True)
        return frame, cols, None
    ids2, values, idcol2 = read_level2(level2, id2, fmt, delimiter)
    frame = Frame([c for c in cols.names if c != id1], list(values), (id1, idcol2),
                  [unhashed_source("level-1", level1), unhashed_source("level-2", level2)])
    return frame, cols, (ids2, values)


def frame_of_dask(level1, level2, id1, id2, fmt=None, delimiter=None):
    """The columns of the level-1 dataset (from its first file) and the level-2 file (read whole)."""
    from ..data.dask_engine import is_parquet, level1_files
    from ..data.streaming import file_columns

    first = level1_files(str(level1))[0]
    if os.path.isfile(str(level2)) and os.path.samefile(first, level2):
        raise DataError(f"{level2}: --engine dask needs a separate level-2 file (one row per unit); give one, "
                        "or use --engine stream")
    cols = file_columns(first, "parquet" if is_parquet(level1) else (fmt or "csv"), delimiter)
    id1 = cols.find(id1, "unit id")
    ids2, values, idcol2 = read_level2(level2, id2, None, None)
    frame = Frame([c for c in cols.names if c != id1], list(values), (id1, idcol2),
                  [unhashed_source("level-1", level1), unhashed_source("level-2", level2)])
    cols.path = Path(str(level1))
    return frame, cols, (ids2, values)


def summarise(frame: Frame, cols, level2_data, names: list[str], level2_names: list[str], engine: str,
              drop_unmatched: bool, warn, scheduler=None, drop_missing: bool = True, progress: bool = False,
              paths=None) -> Summary:
    """One pass over the level-1 records by the chosen engine, matched to the level-2 units."""
    l1 = list(dict.fromkeys(names + (level2_names if frame.same_file else [])))
    if engine == "dask":
        from ..data.dask_engine import dask_moments

        unit_ids, m, read, deleted = dask_moments(paths[0], frame.id_names[0], l1, scheduler, progress=progress,
                                                  delimiter=cols.delimiter)
    else:
        from ..data.streaming import stream_moments

        unit_ids, m, read, deleted = stream_moments(cols, frame.id_names[0], l1, drop_missing=drop_missing,
                                                    progress=progress)
    notes = {"level1_records_read": int(read)}
    if frame.same_file:
        level2 = level2_from_same_file(unit_ids, m, l1, level2_names, cols.path)
    else:
        ids2, values = level2_data
        unit_ids, m, level2, more = match_units(unit_ids, m, ids2, {k: values[k] for k in level2_names},
                                                cols.path, paths[1] if paths else "", drop_unmatched, warn)
        notes.update(more)
        for k in level2_names:
            bad = np.flatnonzero(np.isnan(level2[k]) & (m.n > 0))
            if bad.size:
                raise DataError(f"{paths[1] if paths else 'level-2 file'}: column {k} is missing for unit {unit_ids[bad[0]]}; "
                                "HLM needs complete level-2 data, so fill it in")
    return Summary(unit_ids, l1, m, level2, deleted, notes)


def analyse_summary(spec, summary: Summary, df_method: str = "hlm", constraints=None):
    """constraints (--constrain): the fit on the block design B_jH (constrained.fit_constrained); the
    per-unit moments of the level-1 columns do not see H."""
    from ..data.data_checks import check_linear_outcome_moments
    from .pipeline import analyse_stats, check_estimable

    if spec.outcome in summary.names:  # σ² = 0 is refused here as in the in-memory engine (design.make_design)
        m, k = summary.moments, summary.names.index(spec.outcome)
        check_linear_outcome_moments(spec, m.n, m.mean[:, k], m.C[:, k, k])
    design, unit = design_from_moments(spec, summary.unit_ids, summary.names, summary.moments, summary.level2,
                                       summary.n_deleted,
                                       digest_of(summary.unit_ids, summary.moments, outcome_column(spec, summary)))
    check_estimable(design)
    if constraints is not None:
        from .constrained import fit_constrained

        return fit_constrained(design, unit, constraints, df_method)
    return analyse_stats(design, unit, df_method)


# ---------------------------------------------------------------- the command line

def summary_for_fit(data, engine: str, scheduler, ids: tuple[str, str], drop_unmatched: bool, missing: str,
                    file_format, delimiter, spec_of, unsupported: dict, warn, progress: bool = False):
    """The per-unit summary a summarised fit reads: from a statistics archive (one path) or from two data
    files by the stream or dask engine. `spec_of(frame)` makes the model from the data's columns (the
    caller's one path to a ModelSpec), checked here against the capabilities table.
    Returns (spec, summary, frame, data source text)."""
    from ..errors import UsageError

    if len(data) == 1:
        if not is_stats_archive(data[0]):
            raise UsageError(f"--engine {engine} reads two data files (level-1 and level-2), or a statistics "
                             "archive from 'hlmcli mdm build --engine stream'")
        summary, frame = load_stats_archive(data[0])
        spec = spec_of(frame)
        refuse_unsupported(spec, engine if engine != "memory" else "stream (a statistics archive)", **unsupported)
        names, _ = model_columns(spec)
        missing_names = [n for n in names if n not in summary.names]
        if missing_names:
            raise ModelError(f"{data[0]}: no level-1 variable {missing_names[0]} in the statistics archive")
        return spec, _restrict(summary, names), frame, Path(data[0]).name
    if len(data) != 2:
        raise UsageError("give one statistics archive or two data files (level-1 and level-2)")
    from ..io.files import check_regular

    if engine == "memory":
        engine = "stream"
    for path in data if engine == "stream" else data[1:]:  # the dask level-1 data are a folder or a glob
        check_regular(path, "data file")
    if engine == "dask":
        frame, cols, level2_data = frame_of_dask(data[0], data[1], ids[0], ids[1], file_format, delimiter)
    else:
        frame, cols, level2_data = frame_of_files(data[0], data[1], ids[0], ids[1], file_format, delimiter)
    spec = spec_of(frame)
    refuse_unsupported(spec, engine, **unsupported, **{"--missing now": missing == "now"})
    names, l2names = model_columns(spec)
    summary = summarise(frame, cols, level2_data, names, l2names, engine, drop_unmatched, warn,
                        scheduler=scheduler, progress=progress, paths=data)
    return spec, summary, frame, f"{Path(data[0]).name} and {Path(data[1]).name}"


def analyse_summary_with_extras(spec, summary: Summary, df_method: str = "hlm", tests=(), constraints=()):
    """analyse_summary and the extras the options ask for (tests, deviance test, homogeneity, full output;
    with --constrain, its tests of the free γs and the likelihood-ratio test of the ties, as in memory)."""
    from ..language.hypotheses import parse_test
    from .pipeline import add_extras

    o = spec.options
    hypotheses = list(o.hypotheses) + [parse_test(t, spec) for t in tests]
    if constraints:
        from .constrained import constrained_tests, linear_constraint_test, parse_constraints

        parsed = parse_constraints(constraints, spec)
        analysis = analyse_summary(spec, summary, df_method, parsed)
        add_extras(analysis, (), None, None, o.homogeneity, o.full_output, o.ols_units)
        analysis.extras.update(constrained_tests(analysis, parsed, hypotheses, o.prior_deviance, o.prior_params))
        analysis.extras["constraint_test"] = linear_constraint_test(
            analysis, spec, parsed, lambda s: analyse_summary(s, summary, constraints=parsed).result,
            lambda s: analyse_summary(s, summary).result)
        return analysis
    analysis = analyse_summary(spec, summary, df_method)
    add_extras(analysis, hypotheses, o.prior_deviance, o.prior_params, o.homogeneity, o.full_output, o.ols_units)
    return analysis


def _restrict(summary: Summary, names: list[str]) -> Summary:
    idx = [summary.names.index(n) for n in names]
    m = summary.moments
    return Summary(summary.unit_ids, names, Moments(m.n, m.mean[:, idx], m.C[:, idx][:, :, idx]), summary.level2,
                   summary.n_deleted, summary.notes)


def cli_build(level1_file, level2_file, options, file_format, delimiter, output, quiet, warn,
              progress: bool = False) -> tuple[int, int]:
    """`hlmcli mdm build --engine stream`: one pass, a statistics archive. Returns (records, units)."""
    frame, cols, level2_data = frame_of_files(level1_file, level2_file, options.id1, options.id2, file_format, delimiter)
    if options.keep1 is not None:
        names = [cols.find(n, "level-1 variable") for n in options.keep1]
    else:
        names = [n for n in frame.level1_names if n not in (frame.level2_names if frame.same_file else [])]
    if frame.same_file:
        raise DataError(f"{level1_file}: a statistics archive needs a separate level-2 file; give one, or use "
                        "--engine memory")
    if options.keep2 is not None:
        frame.level2_names = [n for n in frame.level2_names if n.lower() in {k.lower() for k in options.keep2}]
    frame.level1_names = names
    summary = summarise(frame, cols, level2_data, names, frame.level2_names, "stream", options.drop_unmatched, warn,
                        drop_missing=options.missing == "now", paths=(level1_file, level2_file), progress=progress)
    if (summary.moments.n == 0).any():
        keep = np.flatnonzero(summary.moments.n > 0)
        summary = Summary([summary.unit_ids[j] for j in keep], summary.names, summary.moments.take(keep),
                          {k: v[keep] for k, v in summary.level2.items()}, summary.n_deleted, summary.notes)
    summary.notes["dropped_missing"] = summary.n_deleted
    write_stats_archive(summary, frame, output)
    return int(summary.moments.n.sum()), summary.moments.J


def stats_archive_info(path) -> dict:
    """What `hlmcli mdm info` shows of a statistics archive: sizes, and each variable's N, mean and SD
    (level 1 from the merged moments; level 2 over units)."""
    from ..engine.moments import grand

    summary, frame = load_stats_archive(path)
    m = summary.moments
    N, mean, C = grand(m)
    level1 = [{"name": k, "n": int(N), "mean": float(mean[i]), "sd": float(np.sqrt(C[i, i] / (N - 1))) if N > 1 else None}
              for i, k in enumerate(summary.names)]
    level2 = [{"name": k, "n": int(v.size), "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if v.size > 1 else None}
              for k, v in summary.level2.items()]
    return {"archive": Path(path).name, "kind": "statistics (per-unit count, mean and centred cross-products)",
            "id": {"level1": frame.id_names[0], "level2": frame.id_names[1]}, "n_level1": int(N),
            "n_level2": m.J, "notes": summary.notes, "level1": level1, "level2": level2}


def stats_archive_info_text(info: dict) -> str:
    lines = [f"{info['archive']}: a statistics archive ({info['n_level1']} level-1 records in {info['n_level2']} units; "
             f"id {info['id']['level1']})", "", "LEVEL-1 DESCRIPTIVE STATISTICS",
             f"{'VARIABLE NAME':>16}{'N':>12}{'MEAN':>14}{'SD':>14}"]
    for level in ("level1", "level2"):
        if level == "level2":
            lines += ["", "LEVEL-2 DESCRIPTIVE STATISTICS", f"{'VARIABLE NAME':>16}{'N':>12}{'MEAN':>14}{'SD':>14}"]
        for v in info[level]:
            sd = "" if v["sd"] is None else f"{v['sd']:14.5f}"
            lines.append(f"{v['name']:>16}{v['n']:>12}{v['mean']:14.5f}{sd}")
    return "\n".join(lines) + "\n"


def outcome_column(spec, summary) -> int | None:
    """The outcome's column in the summary's moments (the data fingerprint hashes it alone)."""
    return summary.names.index(spec.outcome) if spec.outcome in summary.names else None
