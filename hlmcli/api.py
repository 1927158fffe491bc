"""The Python API: `hlmcli.fit(...)` runs the same stages as `hlmcli fit` and returns `Results`.

    import hlmcli
    res = hlmcli.fit("hsb1.csv", "hsb2.csv", id="ID",
                     level1_eq="MATHACH = b0 + b1*group(SES) + r",
                     level2_eqs=["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*SECTOR + u1"])
    res.fixed_effects            # a DataFrame
    res.random_effects()         # EB, OLS and posterior variances per school
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence, Union

import pandas as pd

from .errors import DataError, ModelError
from .results import Results

DataLike = Union[str, os.PathLike, pd.DataFrame]


def _is_archive(path) -> bool:
    from .archive import MAGIC

    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def load_data(level1: DataLike, level2: DataLike | None = None, id: str | None = "ID", *, id1: str | None = None,
              id2: str | None = None, missing: str = "analysis", drop_unmatched: bool = False,
              file_format: str | None = None, delimiter: str | None = None, cache_dir: str | os.PathLike | None = None,
              warn: Callable[[str], None] = lambda m: None):
    """(archive, data source text, SourceFrames or None) from an archive path, two data files (through
    the same cache as the CLI), or DataFrames (one DataFrame alone holds both levels)."""
    from .archive import BuildOptions, build_archive, changed_sources, load_archive
    from .readers import Table, read_table
    from .sources import SourceFrames

    options = BuildOptions(id1=id1 or id, id2=id2 or id, missing=missing, drop_unmatched=drop_unmatched)
    frames_given = isinstance(level1, pd.DataFrame) or isinstance(level2, pd.DataFrame)
    if not frames_given and level2 is None:
        if not _is_archive(level1):
            raise DataError(f"{level1}: not an archive; give an .mdm file, or the level-1 and level-2 files (or DataFrames)")
        archive = load_archive(level1)
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(level1).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(level1).name, None
    if not frames_given:
        from .cache import cached_archive

        archive, _status = cached_archive(level1, level2, options, file_format, delimiter, cache_dir=cache_dir, warn=warn)
        return archive, f"{Path(level1).name} and {Path(level2).name}", None
    if not options.id1 or not options.id2:
        raise DataError("no unit id column given; pass id='NAME' (or id1= and id2=)")

    def table(data, role: str, id_name: str) -> Table:
        if isinstance(data, pd.DataFrame):
            check_frame_columns(data, f"the {role} DataFrame")
            return Table(Path(f"the {role} DataFrame"), "dataframe", data.reset_index(drop=True))
        return read_table(data, file_format, delimiter, string_columns=(id_name,))

    t1 = table(level1, "level-1", options.id1)
    same = level2 is None or level2 is level1
    t2 = t1 if same else table(level2, "level-2", options.id2)
    archive = build_archive(t1, t2, options, same_file=same, warn=warn)
    from .readers import find_column

    frames = SourceFrames(t1.data, t2.data, find_column(t1, options.id1, "unit id"), find_column(t2, options.id2, "unit id"),
                          same, str(t1.path), str(t2.path))
    source = "a DataFrame" if same else f"{'a DataFrame' if isinstance(level1, pd.DataFrame) else Path(level1).name} and " \
             f"{'a DataFrame' if isinstance(level2, pd.DataFrame) else Path(level2).name}"
    return archive, source, frames


def check_frame_columns(frame: pd.DataFrame, what: str) -> None:
    """Column names as a data file would have them: text, each once (up to case, as names match
    case-insensitively). A DataFrame allows any hashable name and repeated names; the stages do not."""
    from .readers import refuse_duplicate_names

    for k, name in enumerate(frame.columns, start=1):
        if not isinstance(name, str):
            raise DataError(f"{what}: column {k} is named {name!r} ({type(name).__name__}), not text; "
                            "give every column a text name, e.g. frame.columns = frame.columns.map(str)")
    refuse_duplicate_names(what, frame.columns)


def make_spec(archive, level1_eq: str | None, level2_eqs: Sequence[str] = (), model: str | os.PathLike | None = None,
              method: str | None = None, **options):
    """A ModelSpec from equations or a model file; `options` override RunOptions fields (None = keep)."""
    from .design import variables_of
    from .equations import RunOptions, spec_from_inputs

    if isinstance(level2_eqs, str):
        level2_eqs = [level2_eqs]
    spec = spec_from_inputs(level1_eq, list(level2_eqs), str(model) if model else None, variables_of(archive), RunOptions())
    changes = {k: v for k, v in options.items() if v is not None}
    if method is not None:
        method = method.upper()
        if method not in ("REML", "ML"):
            raise ModelError(f"method must be 'REML' or 'ML', not '{method}'")
        changes["method"] = method
    if changes:
        spec = replace(spec, options=replace(spec.options, **changes))
    return spec


def analyse_with_extras(spec, archive, df_method: str = "hlm", tests: Sequence[str] = ()):
    """The fit and every extra the options ask for: what `hlmcli fit` computes."""
    from .hypotheses import parse_test
    from .pipeline import add_extras, analyse

    if df_method not in ("hlm", "hlm6", "satterthwaite"):
        raise ModelError(f"df must be 'hlm', 'hlm6' or 'satterthwaite', not '{df_method}'")
    hypotheses = list(spec.options.hypotheses) + [parse_test(t, spec) for t in tests]
    analysis = analyse(spec, archive, df_method)
    o = spec.options
    add_extras(analysis, hypotheses, o.prior_deviance, o.prior_params, o.homogeneity, o.full_output, o.ols_units)
    return analysis


def fit(level1: DataLike, level2: DataLike | None = None, id: str | None = "ID",
        level1_eq: str | None = None, level2_eqs: Sequence[str] = (), method: str | None = None, *,
        model: str | os.PathLike | None = None, id1: str | None = None, id2: str | None = None,
        missing: str = "analysis", drop_unmatched: bool = False, df: str = "hlm",
        max_iterations: int | None = None, title: str | None = None, tests: Sequence[str] = (),
        compare_deviance: float | None = None, compare_params: int | None = None,
        test_homogeneity: bool | None = None, full_output: bool | None = None, ols_units: int | None = None,
        file_format: str | None = None, delimiter: str | None = None,
        cache_dir: str | os.PathLike | None = None, warn: Callable[[str], None] | None = None) -> Results:
    """Fit a two-level model, as `hlmcli fit` does, and return its Results.

    level1, level2: paths to data files (CSV, SAS, SPSS, Stata) or pandas DataFrames; or `level1`
        an archive (.mdm) and `level2` None; or one DataFrame holding both levels (level-2
        variables are then those constant within units).
    id (or id1/id2): the unit id column. level1_eq, level2_eqs: the equations, as `-1`/`-2`;
    or `model`, an equations file or HLM 7 `.hlm` file. method: "REML" or "ML" (default REML,
    or what a `.hlm` file says).
    The other keywords mirror the CLI's options: df ("hlm" or "satterthwaite"), max_iterations,
    title, tests (e.g. ["g01 = 0, g11 = 0"]), compare_deviance/compare_params, test_homogeneity,
    full_output, ols_units, missing ("now"/"analysis"), drop_unmatched, file_format, delimiter,
    cache_dir. `warn` receives warnings (default: Python's warnings module).
    Raises hlmcli.errors.DataError or ModelError with a one-line message on bad input.
    """
    import warnings

    say = warn or (lambda m: warnings.warn(m, stacklevel=3))
    archive, source, frames = load_data(level1, level2, id, id1=id1, id2=id2, missing=missing,
                                        drop_unmatched=drop_unmatched, file_format=file_format,
                                        delimiter=delimiter, cache_dir=cache_dir, warn=say)
    spec = make_spec(archive, level1_eq, level2_eqs, model, method, title=title, max_iterations=max_iterations,
                     prior_deviance=compare_deviance, prior_params=compare_params, homogeneity=test_homogeneity,
                     full_output=full_output, ols_units=ols_units)
    analysis = analyse_with_extras(spec, archive, df, tests)
    meta = {"data_source": source, "title": spec.options.title, "id_name": archive.id_names[0],
            "model_given": {"level1": level1_eq, "level2": list(level2_eqs),
                            "model_file": Path(model).name if model else None},
            "command_file": Path(model).name if model and str(model).lower().endswith(".hlm") else None, "warn": say}
    if frames is None and level2 is not None:
        meta["source_files"] = (str(level1), str(level2))
    results = Results(analysis, archive, meta, frames)
    if not analysis.result.converged:
        say("the estimation did not converge; the results are not at the optimum")
    return results
