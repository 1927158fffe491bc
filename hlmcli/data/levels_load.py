"""The loading of a model of three or four levels, below both the commands (levels.py) and the Python
API (api.py): the build options, the archive (read, or built through the cache from one file per level),
the spec from equations or a model file, and the model's level-1 moments of --engine stream/dask."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import HlmError


class LevelsUsage(HlmError):
    """A usage problem of a model of three or four levels (exit 2, as click's usage errors)."""
    exit_code = 2


def options3(id_, id1, id2, id3, l1_vars, l2_vars, l3_vars, missing, drop_unmatched):
    from ..io.archive_levels import BuildOptions3
    from ..language.names import split_names

    if id_ or id1:
        raise click.UsageError("three data files make a three-level model, which takes --id2 (the level-2 unit id) "
                               "and --id3 (the level-3 unit id), not --id or --id1")
    if not id2 or not id3:
        from ..errors import OptionError

        raise OptionError("a three-level build needs --id2 NAME (the level-2 unit id, e.g. CHILDID) and --id3 NAME "
                          "(the level-3 unit id, e.g. SCHOOLID)")
    return BuildOptions3(id2=id2, id3=id3, keep1=split_names(l1_vars), keep2=split_names(l2_vars),
                         keep3=split_names(l3_vars), missing=missing, drop_unmatched=drop_unmatched)


def archive_n_levels(path) -> int:
    from ..io.archive import peek_levels

    return peek_levels(path)


def build_options_levels(ids, keeps, missing, drop_unmatched, n_files: int):
    from ..io.archive_levels import BuildOptionsLevels
    from ..language.names import split_names

    if len(ids) != n_files - 1 or not all(ids):
        from ..errors import OptionError

        need = " ".join(f"--id{k} NAME" for k in range(2, n_files + 1))
        raise OptionError(f"a {n_files}-level build needs {need} (the unit id of each level above the first)")
    return BuildOptionsLevels(tuple(ids), tuple(split_names(k) for k in keeps), missing, drop_unmatched)


def ids_and_keeps(build_opts: dict, K: int):
    ids = [build_opts.get(f"id{k}") for k in range(2, K + 1)]
    keeps = [build_opts.get(f"l{k}_vars") for k in range(1, K + 1)]
    return ids, keeps


_KEYS3 = ("id_", "id1", "id2", "id3", "l1_vars", "l2_vars", "l3_vars", "missing", "drop_unmatched")


def load_levels(data, build_opts: dict, cache_dir, warn, n_levels: int | None = None):
    """The archive of a model of three or four levels and the text naming its source: one archive read
    (`n_levels`: the number of levels the caller needs; None: the archive's), or one file per level built
    through the cache. Three levels have their own build (level files may share a file) and HLM3's
    option messages (options3); four and more, build_options_levels."""
    from ..io.archive import changed_sources
    from ..io.archive import load_archive
    from ..io.cache import cached_archive
    from ..io.readers import normalise_delimiter

    if len(data) == 1:
        archive = load_archive(data[0], n_levels or archive_n_levels(data[0]))
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(data[0]).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(data[0]).name
    K = len(data)
    if "-" in data:
        raise click.UsageError(f"standard input ('-') cannot be one of the {'three ' if K == 3 else ''}data files; "
                               "give their paths")
    if K == 3:
        options = options3(**{k: build_opts.get(k) for k in _KEYS3})
    else:
        if K > 4:
            raise click.UsageError(f"{K} data files: hlmcli fits models of up to four levels (one file per level)")
        if build_opts.get("id_") or build_opts.get("id1"):
            raise click.UsageError(f"{K} data files make a {K}-level model, which takes --id2 ... --id{K}, not --id or "
                                   "--id1")
        ids, keeps = ids_and_keeps(build_opts, K)
        options = build_options_levels(ids, keeps, build_opts.get("missing", "analysis"),
                                       build_opts.get("drop_unmatched", False), K)
    archive, _ = cached_archive(data, options, fmt=build_opts.get("file_format"),
                                delimiter=normalise_delimiter(build_opts.get("delimiter")), cache_dir=cache_dir,
                                warn=warn)
    return archive, ", ".join(Path(p).name for p in data)


def spec_levels(archive, equations, model_file, reml, title=None, max_iterations=None, residuals=(),
                allow_outside=False, formula_equations=None):
    """The spec of a model of the archive's K levels (three or four) from its equations (one list per
    level), a model file, or at three levels an HLM 7 command file; ML unless `reml`. `residuals`: the
    residual files of levels 2..K given on the command line (they win over a command file's).
    `formula_equations(variables, level1, level2, level3)`: the command line's --formula as equations
    and τ's structure (cli.options.formula_equations), when there is one (three levels)."""
    from dataclasses import replace

    from .design import variables_of
    from ..language.equations_levels import RunOptions, spec_from_inputs_levels

    K = archive.n_levels
    variables = variables_of(archive)
    equations = [list(e) for e in equations] + [[] for _ in range(K - len(equations))]
    formula_tau = None
    if formula_equations is not None and K == 3:
        level1, level2, level3, formula_tau = formula_equations(variables, equations[0][0] if equations[0] else None,
                                                                equations[1], equations[2])
        equations = [[level1] if level1 else [], list(level2), list(level3)]
    spec = spec_from_inputs_levels(equations, model_file, variables, RunOptions(), allow_outside)
    changes = {k: v for k, v in (("title", title), ("max_iterations", max_iterations)) if v is not None}
    residuals = tuple(residuals) + (None,) * (K - 1 - len(residuals))
    if any(residuals):
        given = spec.options.residuals + (None,) * (K - 1 - len(spec.options.residuals))
        changes["residuals"] = tuple(r or g for r, g in zip(residuals, given))
    if reml:
        changes["method"] = "REML"
    if formula_tau:  # (x || g) at every level: a diagonal τ, as --tau diagonal
        from ..spec import TauStructure

        changes["tau"] = TauStructure.DIAGONAL.value
    return replace(spec, options=replace(spec.options, **changes)) if changes else spec


def summarised_level1(archive, spec, l1, warn):
    """The per-level-2-unit moments of the model's level-1 variables (None in memory)."""
    if l1 is None:
        return None
    from .design_levels import level1_variables

    return l1.moments(archive, level1_variables(spec), warn)
