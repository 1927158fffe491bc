"""The three-level commands behind cli.py: `mdm build L1 L2 L3`, `mdm info`, `model` and `fit` on three files
or a three-level archive. cli.py decides which path a command takes and calls in here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import DataError, HlmError, ModelError


class _Usage(HlmError):
    exit_code = 2


def options3(id_, id1, id2, id3, l1_vars, l2_vars, l3_vars, missing, drop_unmatched):
    from .archive3 import BuildOptions3
    from .cli import _split_names

    if id_ or id1:
        raise click.UsageError("three data files make a three-level model, which takes --id2 (the level-2 unit id) "
                               "and --id3 (the level-3 unit id), not --id or --id1")
    if not id2 or not id3:
        from .errors import OptionError

        raise OptionError("a three-level build needs --id2 NAME (the level-2 unit id, e.g. CHILDID) and --id3 NAME "
                        "(the level-3 unit id, e.g. SCHOOLID)")
    return BuildOptions3(id2=id2, id3=id3, keep1=_split_names(l1_vars), keep2=_split_names(l2_vars),
                         keep3=_split_names(l3_vars), missing=missing, drop_unmatched=drop_unmatched)


def is_three_level(data, more: dict) -> bool:
    """Three data files, or one archive whose header says three levels; -3 or --id3 alone do not decide."""
    if len(data) == 3:
        return True
    if len(data) == 1 and str(data[0]) != "-" and Path(data[0]).is_file():
        from .archive3 import archive_levels

        return archive_levels(data[0]) == 3
    if len(data) == 2 and (more.get("level3") or more.get("id3")):
        raise _Usage("a three-level model needs three data files (level 1, 2 and 3) or a three-level archive")
    return False


def build3(files, template, options, file_format, delimiter, output, quiet, force, allow_outside, stderr, progress):
    """`hlmcli mdm build L1 L2 L3 --id2 ... --id3 ...` or an HLM3 template."""
    from .archive3 import build_from_files3, write_archive3
    from .files import check_regular, refuse_overwriting_inputs

    for source in files:
        if str(source) != "-":
            check_regular(source, "data file")
    refuse_overwriting_inputs(output, list(files) + [template])
    warn = (lambda m: None) if quiet else (lambda m: stderr(f"hlmcli: warning: {m}"))
    archive = build_from_files3(files, options, file_format, delimiter, warn=warn, progress=progress)
    write_archive3(archive, output)
    if not quiet:
        stderr(f"hlmcli: wrote {output}: {archive.n_level1} level-1 records in {archive.n_level2} level-2 units "
               f"in {archive.n_level3} level-3 units")


def load3(data, build_opts: dict, cache_dir, warn):
    from .archive3 import cached_archive3, load_archive3
    from .readers import normalise_delimiter

    if len(data) == 1:
        from .archive import changed_sources

        archive = load_archive3(data[0])
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(data[0]).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(data[0]).name
    if "-" in data:
        raise click.UsageError("standard input ('-') cannot be one of the three data files; give their paths")
    opts = dict(build_opts)
    fmt, delimiter = opts.pop("file_format", None), opts.pop("delimiter", None)
    options = options3(**opts)
    archive, _ = cached_archive3(list(data), options, fmt=fmt, delimiter=normalise_delimiter(delimiter),
                                 cache_dir=cache_dir, warn=warn)
    return archive, ", ".join(Path(p).name for p in data)


def spec3(archive, level1, level2, level3, model_file, reml, title=None, max_iterations=None,
          residuals_l2=None, residuals_l3=None, allow_outside=False):
    from dataclasses import replace

    from .design3 import variables3_of
    from .equations3 import RunOptions3, spec3_from_inputs

    from .cli import formula_equations

    variables = variables3_of(archive)
    level1, level2, level3, formula_tau = formula_equations(variables, level1, level2, level3 or ())
    if formula_tau:
        raise _Usage("uncorrelated random effects (|| or one bar per effect) are not available for three-level models yet")
    spec = spec3_from_inputs(level1, list(level2), list(level3 or ()), model_file, variables, RunOptions3(),
                             allow_outside)
    changes = {k: v for k, v in (("title", title), ("max_iterations", max_iterations), ("residuals_l2", residuals_l2),
                                 ("residuals_l3", residuals_l3)) if v is not None}
    if reml:
        changes["method"] = "REML"
    return replace(spec, options=replace(spec.options, **changes)) if changes else spec


def refuse_unsupported(pairs) -> None:
    """Options that have no three-level meaning yet: one line naming them."""
    given = [name for name, on in pairs if on]
    if given:
        raise _Usage(f"{', '.join(given)}: not available for three-level models yet; drop "
                     f"{'it' if len(given) == 1 else 'them'} (three-level fits give HLM3's tables, JSON and EB residual files)")


def _hglm_given() -> list[str]:
    given = click.get_current_context().meta.get("hglm", {})
    return [f"--{k.replace('_', '-')}" for k, v in given.items() if v is not None and not (k == "family" and v == "normal")]


def model3(data, level1, level2, model_file, ascii_only, build_opts, cache_dir, more, stderr, use_ascii):
    from .report import printable
    from .report3 import Symbols3, lme4_formula3, model_summary3

    refuse_unsupported([(x, True) for x in _hglm_given()])
    archive, _ = load3(data, build_opts, cache_dir, lambda m: stderr(f"hlmcli: warning: {m}"))
    spec = spec3(archive, level1, level2, more.get("level3"), model_file, more.get("reml"),
                 allow_outside=bool(more.get("allow_outside")))
    lines = model_summary3(spec, Symbols3(use_ascii(ascii_only)))
    formula, notes = lme4_formula3(spec, *archive.id_names)
    method = "restricted maximum likelihood" if spec.method == "REML" else "full maximum likelihood"
    lines += ["", f"Method of estimation: {method}", "", "The same model in R (lme4)", f" {formula}"] + [f"   {n}" for n in notes]
    click.echo("\n".join(printable(line) for line in lines))


def _model_given(*args):
    from .cli import model_given

    return model_given(*args)


def fit3(data, level1, level2, model_file, ascii_only, build_opts, cache_dir, out_format, output, json_out, keep,
         title, timestamp, df_method, strict, tau_structure, max_iterations, tests, compare_deviance, compare_params,
         residuals_l1, residuals_l2, test_homogeneity, full_output, ols_units, quiet, weight1, weight2, normalize,
         plausible_values, imputed, more, stderr, use_ascii):
    """`hlmcli fit` for a three-level model: HLM3's text, or the JSON document of schema 3."""
    from datetime import datetime, timezone

    from .design3 import design3
    from .errors import EXIT_NOT_CONVERGED
    from .files import atomic_write_text, refuse_clobber, refuse_overwriting_inputs
    from .nested import fit_nested
    from .report3 import Symbols3, fit_json3_text, fit_text3, level2_residuals, level3_residuals
    from .residual_files import write_table

    refuse_unsupported([
        ("--test", bool(tests)), (f"--df {df_method}", df_method != "hlm"), ("--compare-deviance", compare_deviance is not None),
        ("--compare-params", compare_params is not None), ("--test-homogeneity", bool(test_homogeneity)),
        ("--full-output", bool(full_output)), ("--ols-units", ols_units is not None),
        ("--tau diagonal", tau_structure == "diagonal"), ("--weight1", bool(weight1)), ("--weight2", bool(weight2)),
        ("--normalize", bool(normalize)), ("--plausible-values", bool(plausible_values)), ("--imputed", bool(imputed)),
        ("--allow-unequal-imputations", bool(more.get("allow_unequal_imputations"))),
        ("--residuals-l1", bool(residuals_l1)), ("--keep", bool(keep)),
        (f"--format {out_format}", out_format not in ("text", "json")),
        (f"--engine {more.get('engine')}", more.get("engine", "memory") != "memory"),
        ("--scheduler", bool(more.get("scheduler"))),
    ] + [(x, True) for x in _hglm_given()])
    if more.get("ml") and more.get("reml"):
        raise click.UsageError("give --ml or --reml, not both")
    residuals_l3 = more.get("residuals_l3")
    sources = list(data) + [model_file]
    for path in (output, residuals_l2, residuals_l3, json_out):
        if path:
            refuse_overwriting_inputs(path, sources)
    warn = (lambda m: None) if quiet else (lambda m: stderr(f"hlmcli: warning: {m}"))
    archive, source_text = load3(data, build_opts, cache_dir, warn)
    spec = spec3(archive, level1, level2, more.get("level3"), model_file, more.get("reml"), title=title,
                 max_iterations=max_iterations, residuals_l2=residuals_l2, residuals_l3=residuals_l3,
                 allow_outside=bool(more.get("allow_outside")))
    design = design3(spec, archive)
    from .identifiability import check_three_level

    check_three_level(design.data, spec.coefficient_names(), spec.level2_names)
    fit = fit_nested(design.data, reml=spec.method == "REML", max_iterations=spec.options.max_iterations)
    failures = [] if fit.converged else ["the optimum is not certified: " + "; ".join(getattr(fit.certificate, "failed", []) or [fit.message])]
    if strict and fit.boundary:
        failures += list(fit.boundary)
    status = EXIT_NOT_CONVERGED if failures else 0
    write_files = status == 0 or more.get("keep_failed_output")
    meta = {"data_source": source_text, "title": spec.options.title, "id2": archive.id_names[0], "id3": archive.id_names[1],
            "model_given": _model_given(level1, level2, model_file, list(more.get("level3") or ())),
            "command_file": Path(model_file).name if model_file and str(model_file).lower().endswith(".hlm") else None}
    if timestamp:
        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if write_files:
        for path, typed, table in ((spec.options.residuals_l2, residuals_l2, level2_residuals),
                                   (spec.options.residuals_l3, residuals_l3, level3_residuals)):
            if path:
                refuse_overwriting_inputs(path, sources)
                if not typed:
                    refuse_clobber(path, more.get("force"), Path(model_file).name)
                write_table(table(design, fit, archive), path)
    text = fit_json3_text(design, fit, meta) if out_format == "json" else \
        fit_text3(design, fit, meta, Symbols3(use_ascii(ascii_only) if not output else ascii_only))
    if json_out and write_files:
        atomic_write_text(json_out, fit_json3_text(design, fit, meta))
    if output and write_files:
        atomic_write_text(output, text)
    elif not output:
        click.echo(text, nl=False)
    if not quiet:
        for message in failures + ([] if strict else list(fit.boundary or [])):
            stderr(f"hlmcli: warning: {message}")
        if output and not write_files:
            stderr(f"hlmcli: {output} not written because the fit is not certified; "
                   "pass --keep-failed-output to write it anyway")
    if status:
        sys.exit(status)


def unsupported_command(name: str):
    raise ModelError(f"'hlmcli {name}' is not available for three-level models yet; use 'hlmcli fit' "
                     "(text or --format json) and the EB residual files (--residuals-l2, --residuals-l3)")
