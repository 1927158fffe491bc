"""Stage 9, cli: thin click commands that wire the stages together."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

# The per-unit algebra is thousands of small BLAS calls; threads only add synchronisation, and
# collapse when the cores are busy (measured on 2 cores under load: a 1,000,000-row fit 2.4 s
# with threaded OpenBLAS, 0.29 s with one thread). Set before numpy loads; a user's value wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import click  # noqa: E402

from . import __version__
from .errors import EXIT_DATA, EXIT_USAGE, HlmError


def _stderr(message: str) -> None:
    click.echo(message, err=True)


def user_errors(func):
    """Turn every HlmError into one line on stderr and its exit code; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except HlmError as exc:
            _stderr(f"hlmcli: error: {exc}")
            if getattr(exc, "detail", None):  # a syntax error's equation with a caret under the place
                _stderr(exc.detail)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _stderr("hlmcli: interrupted; no output file was changed")
            sys.exit(130)
        except MemoryError:
            _stderr("hlmcli: error: out of memory; use a smaller model or a machine with more memory")
            sys.exit(EXIT_DATA)
        except OSError as exc:
            name = exc.filename or ""
            _stderr(f"hlmcli: error: {name}: {exc.strerror or exc}; check the path and permissions".replace(": : ", ": "))
            sys.exit(EXIT_DATA)
        except Exception as exc:  # a bug of ours: still one line, details on request
            if os.environ.get("HLMCLI_DEBUG"):
                raise
            _stderr(f"hlmcli: internal error: {type(exc).__name__}: {exc}; rerun with HLMCLI_DEBUG=1 and report it")
            sys.exit(EXIT_DATA)

    return wrapper


def _split_names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n for n in value.replace(";", ",").replace(" ", ",").split(",") if n)
    return names


class _Progress:
    """Stage progress on a terminal; silent when stderr is not a TTY or with --quiet."""

    def __init__(self, quiet: bool, steps: int):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            self.bar = click.progressbar(length=steps, label="building archive", file=sys.stderr)
            self.bar.__enter__()

    def __call__(self, name: str) -> None:
        if self.bar is not None:
            self.bar.label = name
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


class OneLineErrors(click.Group):
    """Usage errors as one line too, like every other error (exit 2)."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            return super().main(args=args, prog_name=prog_name or "hlmcli", standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _stderr("hlmcli: aborted")
            sys.exit(130)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "hlmcli"
            _stderr(f"hlmcli: usage error: {exc.format_message()}; see '{where} --help'")
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            _stderr(f"hlmcli: error: {exc.format_message()}")
            sys.exit(exc.exit_code)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hlmcli")
def main():
    """Two-level hierarchical linear models, the way HLM 7 fits them."""


@main.group()
def mdm():
    """Build and inspect archives (HLM's MDM files)."""


_build_options = [
    click.option("--id", "id_", help="Unit id column, in both files."),
    click.option("--id1", help="Unit id column in the level-1 file (if named differently)."),
    click.option("--id2", help="Unit id column in the level-2 file (if named differently)."),
    click.option("--l1-vars", help="Level-1 variables to keep, comma-separated (default: all)."),
    click.option("--l2-vars", help="Level-2 variables to keep, comma-separated (default: all)."),
    click.option("--missing", type=click.Choice(["now", "analysis"]), default="analysis", show_default=True,
                 help="Drop level-1 records with missing values now (at build) or per model at analysis."),
    click.option("--drop-unmatched", is_flag=True, help="Drop level-1 records whose unit has no level-2 record."),
    click.option("--format", "file_format", help="Input format: csv, sas, spss or stata (default: by extension)."),
    click.option("--delimiter", help="CSV delimiter (default: sniffed). Use '\\t' for tab."),
]


def build_options(func):
    for option in reversed(_build_options):
        func = option(func)
    return func


def make_build_options(id_, id1, id2, l1_vars, l2_vars, missing, drop_unmatched):
    from .archive import BuildOptions
    from .errors import DataError

    id1 = id1 or id_
    id2 = id2 or id_
    if not id1 or not id2:
        raise DataError("no unit id column given; pass --id NAME (or --id1 and --id2)")
    return BuildOptions(id1=id1, id2=id2, keep1=_split_names(l1_vars), keep2=_split_names(l2_vars),
                        missing=missing, drop_unmatched=drop_unmatched)


@mdm.command("build")
@click.argument("level1_file", required=False, type=click.Path())
@click.argument("level2_file", required=False, type=click.Path())
@build_options
@click.option("--template", type=click.Path(), help="Build from an HLM 7 MDM template (.mdmt).")
@click.option("-o", "--output", type=click.Path(), help="Archive to write (.mdm).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@user_errors
def mdm_build(level1_file, level2_file, id_, id1, id2, l1_vars, l2_vars, missing, drop_unmatched,
              file_format, delimiter, template, output, quiet):
    """Merge a level-1 and a level-2 file into an archive."""
    from .archive import BuildOptions, build_from_files, write_archive
    from .errors import DataError
    from .files import refuse_overwriting_inputs

    if template:
        if level1_file or level2_file:
            raise DataError(f"{template}: give either a template or two data files, not both")
        from .mdmt import parse_template

        tpl = parse_template(template)
        level1_file, level2_file, file_format = tpl.level1_file, tpl.level2_file, file_format or tpl.format
        options = BuildOptions(id1=tpl.id1, id2=tpl.id2, keep1=tpl.level1_vars or None,
                               keep2=tpl.level2_vars or None, missing=tpl.missing, drop_unmatched=drop_unmatched)
        if output is None:
            name = tpl.mdm_name or Path(template).with_suffix(".mdm").name
            output = str(Path(template).parent / Path(name.replace("\\", "/")).name)
    else:
        if not level1_file or not level2_file:
            raise click.UsageError("give LEVEL1_FILE and LEVEL2_FILE (they may be the same file), or --template")
        options = make_build_options(id_, id1, id2, l1_vars, l2_vars, missing, drop_unmatched)
    if output is None:
        raise click.UsageError("give -o/--output, the archive to write")
    refuse_overwriting_inputs(output, [level1_file, level2_file, template])
    progress = _Progress(quiet, 4)
    try:
        archive = build_from_files(level1_file, level2_file, options, file_format, delimiter,
                                   warn=(lambda m: None) if quiet else (lambda m: _stderr(f"hlmcli: warning: {m}")),
                                   progress=progress)
        write_archive(archive, output)
    finally:
        progress.close()
    if not quiet:
        _stderr(f"hlmcli: wrote {output}: {archive.n_level1} level-1 records in {archive.n_units} units")


@mdm.command("info")
@click.argument("archive_file", type=click.Path())
@click.option("--unit", help="Also show one unit: its number of records and level-2 values.")
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@user_errors
def mdm_info(archive_file, unit, out_format):
    """Print what an archive holds: HLM 7's MDM statistics."""
    from .archive import changed_sources, load_archive
    from .errors import DataError
    from .report import archive_info, archive_info_text, dumps_json

    archive = load_archive(archive_file)
    if unit is not None and unit not in archive.unit_ids:
        raise DataError(f"{archive_file}: no unit '{unit}' in the archive; ids look like {', '.join(archive.unit_ids[:3])}")
    for path in changed_sources(archive):
        _stderr(f"hlmcli: warning: {path} changed since this archive was built; rebuild it with 'hlmcli mdm build'")
    info = archive_info(archive, unit)
    click.echo(dumps_json(info) if out_format == "json" else archive_info_text(info), nl=False)


# ---------------------------------------------------------------- models and fits

def _load_data(data, build_opts: dict, cache_dir, quiet: bool):
    """One archive, or two data files through the cache. Returns (archive, data source text)."""
    from .archive import MAGIC, changed_sources, load_archive
    from .cache import cached_archive

    warn = (lambda m: None) if quiet else (lambda m: _stderr(f"hlmcli: warning: {m}"))
    if len(data) == 1:
        path = data[0]
        if not str(path).lower().endswith(".mdm") and Path(path).exists():
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    raise click.UsageError(f"{path} is not an archive; give an .mdm file, or the level-1 and level-2 files with --id")
        archive = load_archive(path)
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(path).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(path).name
    if len(data) == 2:
        options = make_build_options(**build_opts)
        archive, _status = cached_archive(data[0], data[1], options, cache_dir=cache_dir, warn=warn)
        return archive, f"{Path(data[0]).name} and {Path(data[1]).name}"
    raise click.UsageError("give one archive (.mdm) or two data files (level-1 and level-2)")


_model_options = [
    click.argument("data", nargs=-1, required=True, type=click.Path()),
    click.option("-1", "--level1", "level1", help="Level-1 equation, e.g. 'MATHACH = b0 + b1*group(SES) + r'."),
    click.option("-2", "--level2", "level2", multiple=True, help="A level-2 equation, e.g. 'b0 = g00 + g01*SECTOR + u0'. Repeat."),
    click.option("--model", "model_file", type=click.Path(), help="Model file: equations, or an HLM 7 .hlm command file."),
    click.option("--ml", is_flag=True, default=None, help="Full maximum likelihood (default: REML)."),
    click.option("--ascii", "ascii_only", is_flag=True, help="B/G/U instead of Greek letters."),
    click.option("--id", "id_", help="Unit id column (when DATA is two files)."),
    click.option("--id1", help="Unit id column of the level-1 file."),
    click.option("--id2", help="Unit id column of the level-2 file."),
    click.option("--missing", type=click.Choice(["now", "analysis"]), default="analysis", show_default=True,
                 help="When DATA is two files: when to drop records with missing values."),
    click.option("--drop-unmatched", is_flag=True, help="When DATA is two files: drop level-1 records with no level-2 unit."),
    click.option("--cache-dir", type=click.Path(file_okay=False), help="Where cached archives go (default: beside the data)."),
]


def _keep_hglm(ctx, param, value):
    ctx.meta.setdefault("hglm", {})[param.name] = value
    return value


# HGLM options (spec.py, hglm_run.py): collected into ctx.meta so the commands' signatures stay as they are
_hglm_options = [
    click.option("--family", type=click.Choice(["normal", "bernoulli", "binomial", "poisson"]), default=None,
                 expose_value=False, callback=_keep_hglm, help="Level-1 distribution (default normal; logit link for "
                 "bernoulli/binomial, log link for poisson)."),
    click.option("--trials", default=None, expose_value=False, callback=_keep_hglm,
                 help="Binomial: the number-of-trials variable."),
    click.option("--exposure", default=None, expose_value=False, callback=_keep_hglm,
                 help="Poisson: the exposure variable (log exposure is an offset)."),
    click.option("--overdispersion", is_flag=True, default=None, expose_value=False, callback=_keep_hglm,
                 help="Binomial/Poisson under PQL: estimate the level-1 scale instead of fixing it at 1."),
    click.option("--estimation", type=click.Choice(["pql", "laplace", "agq"]), default=None, expose_value=False,
                 callback=_keep_hglm, help="HGLM estimation: pql (default), laplace or agq (exact ML)."),
    click.option("--quadrature-points", type=click.IntRange(1), default=None, expose_value=False, callback=_keep_hglm,
                 help="AGQ: quadrature points per random effect (default 7)."),
]


def model_options(func):
    for option in reversed(_model_options + _hglm_options):
        func = option(func)
    return func


def _hglm_changes(level1):
    """The HGLM settings from the command line and from HLM 7's printed level-1 block."""
    from .spec import hlm_block

    given = dict(click.get_current_context().meta.get("hglm", {}))
    fam = None
    if level1:
        level1, fam, _exposure = hlm_block(level1)
        if fam is not None and given.get("family") not in (None, fam.value):
            from .errors import ModelError

            raise ModelError(f"the level-1 block is a {fam.value} model but --family is {given['family']}")
    changes = {k: v for k, v in given.items() if v is not None}
    if fam is not None:
        changes.setdefault("family", fam.value)
    if changes.get("estimation") == "agq" and "quadrature_points" not in changes:
        changes["quadrature_points"] = 7
    return level1, changes


def _spec(archive, level1, level2, model_file, ml, extra=None):
    from dataclasses import replace

    from .design import variables_of
    from .equations import RunOptions, spec_from_inputs

    level1, hglm_changes = _hglm_changes(level1)
    spec = spec_from_inputs(level1, list(level2), model_file, variables_of(archive), RunOptions())
    changes = dict(extra or {})
    changes.update(hglm_changes)
    if ml is not None:
        changes["method"] = "ML" if ml else "REML"
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        spec = replace(spec, options=replace(spec.options, **changes))
    return spec


def _use_ascii(flag: bool) -> bool:
    if flag:
        return True
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
    return "utf" not in encoding


def _build_opts(id_, id1, id2, missing, drop_unmatched):
    return {"id_": id_, "id1": id1, "id2": id2, "l1_vars": None, "l2_vars": None,
            "missing": missing, "drop_unmatched": drop_unmatched}


@main.command("model")
@model_options
@user_errors
def model_cmd(data, level1, level2, model_file, ml, ascii_only, id_, id1, id2, missing, drop_unmatched, cache_dir):
    """Print the model as HLM 7 writes it, and its lme4 formula, without fitting."""
    from .report import Symbols, lme4_formula, model_summary

    archive, _ = _load_data(data, _build_opts(id_, id1, id2, missing, drop_unmatched), cache_dir, quiet=False)
    spec = _spec(archive, level1, level2, model_file, ml)
    if spec.options.family != "normal":
        from .hglm_run import estimation_text, glmer_call, hglm_model_summary

        lines = hglm_model_summary(spec, Symbols(_use_ascii(ascii_only)))
        lines += ["", f"Method of estimation: {estimation_text(spec.options)}", "", "The same model in R (lme4)",
                  f" {glmer_call(spec, archive.id_names[0])}"]
        click.echo("\n".join(lines))
        return
    lines = model_summary(spec, Symbols(_use_ascii(ascii_only)))
    formula, notes = lme4_formula(spec, archive.id_names[0])
    lines += ["", f"Method of estimation: {'restricted maximum likelihood' if spec.method == 'REML' else 'full maximum likelihood'}",
              "", "The same model in R (lme4)", f" {formula}"] + [f"   {n}" for n in notes]
    click.echo("\n".join(lines))


@main.command("fit")
@model_options
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(), help="Write the output here (atomically) instead of stdout.")
@click.option("--title", help="Problem title for the output.")
@click.option("--timestamp", is_flag=True, help="Add the date and time to the text output (off: output is reproducible).")
@click.option("--df", "df_method", type=click.Choice(["hlm", "satterthwaite"]), default="hlm", show_default=True,
              help="d.f. of the fixed effects: HLM 7's rule, or Satterthwaite's as lmerTest.")
@click.option("--strict", is_flag=True, help="Exit 3 on a boundary fit too.")
@click.option("--tau", "tau_structure", type=click.Choice(["unstructured", "diagonal"]), default=None,
              help="Covariance of the random effects: unstructured (default) or diagonal (independent effects).")
@click.option("--max-iterations", type=click.IntRange(1), help="Iteration limit (HLM's numit).")
@click.option("--test", "tests", multiple=True, help="Wald test of fixed effects, e.g. 'g01 = 0, g11 = 0'. Repeat for more tests.")
@click.option("--compare-deviance", type=float, help="Deviance of a prior model, for a likelihood-ratio test.")
@click.option("--compare-params", type=int, help="Number of parameters of that prior model.")
@click.option("--residuals-l1", type=click.Path(), help="Write the level-1 residual file (.csv, .sav, .dta).")
@click.option("--residuals-l2", type=click.Path(), help="Write the level-2 residual file (.csv, .sav, .dta).")
@click.option("--test-homogeneity", is_flag=True, default=None, help="Test homogeneity of level-1 variance (HLM's homvar).")
@click.option("--full-output", is_flag=True, default=None, help="Add unit OLS regressions and least-squares estimates.")
@click.option("--ols-units", type=click.IntRange(0), help="Units whose OLS regressions --full-output prints (default 10).")
@click.option("-q", "--quiet", is_flag=True, help="No warnings on stderr.")
@user_errors
def fit_cmd(data, level1, level2, model_file, ml, ascii_only, id_, id1, id2, missing, drop_unmatched, cache_dir,
            out_format, output, title, timestamp, df_method, strict, tau_structure, max_iterations, tests, compare_deviance,
            compare_params, residuals_l1, residuals_l2, test_homogeneity, full_output, ols_units, quiet):
    """Fit a two-level model and print HLM 7's tables (text) or a stable JSON document."""
    from .errors import EXIT_NOT_CONVERGED
    from .files import atomic_write_text, refuse_overwriting_inputs
    from .hypotheses import parse_test
    from .pipeline import add_extras, analyse
    from .report import Symbols, dumps_json, fit_json, fit_text

    sources = list(data) + [model_file]
    for path in (output, residuals_l1, residuals_l2):
        if path:
            refuse_overwriting_inputs(path, sources)
    archive, source_text = _load_data(data, _build_opts(id_, id1, id2, missing, drop_unmatched), cache_dir, quiet)
    spec = _spec(archive, level1, level2, model_file, ml, {
        "title": title, "max_iterations": max_iterations, "prior_deviance": compare_deviance, "tau": tau_structure,
        "prior_params": compare_params, "residuals_l1": residuals_l1, "residuals_l2": residuals_l2,
        "homogeneity": test_homogeneity, "full_output": full_output, "ols_units": ols_units,
    })
    if spec.options.family != "normal":
        unsupported = [name for name, on in (("--test", tests), ("--df satterthwaite", df_method != "hlm"),
                                             ("--compare-deviance", compare_deviance is not None),
                                             ("--test-homogeneity", test_homogeneity), ("--full-output", full_output),
                                             ("--tau diagonal", spec.options.tau == "diagonal"),
                                             ("--strict", strict)) if on]
        if unsupported:
            from .errors import ModelError

            raise ModelError(f"{', '.join(unsupported)}: not available for a {spec.options.family} outcome (HGLM) yet")
        return _fit_hglm(spec, archive, source_text, level1, level2, model_file, out_format, output, ascii_only, sources)
    hypotheses = list(spec.options.hypotheses) + [parse_test(t, spec) for t in tests]
    analysis = analyse(spec, archive, df_method)
    opts = spec.options
    add_extras(analysis, hypotheses, opts.prior_deviance, opts.prior_params, opts.homogeneity,
               opts.full_output, opts.ols_units)
    if opts.residuals_l1 or opts.residuals_l2:
        from .inference import empirical_bayes
        from .residual_files import level1_table, level2_table, write_table

        eb = empirical_bayes(analysis.unit, analysis.stats, analysis.result)
        for path in (opts.residuals_l1, opts.residuals_l2):
            if path:
                refuse_overwriting_inputs(path, sources)
        if opts.residuals_l2:
            write_table(level2_table(analysis, eb), opts.residuals_l2)
        if opts.residuals_l1:
            write_table(level1_table(analysis, eb), opts.residuals_l1)
    meta = {"data_source": source_text, "title": opts.title, "id_name": archive.id_names[0],
            "model_given": {"level1": level1, "level2": list(level2),
                            "model_file": Path(model_file).name if model_file else None},
            "command_file": Path(model_file).name if model_file and str(model_file).lower().endswith(".hlm") else None}
    if timestamp:
        from datetime import datetime, timezone

        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if out_format == "json":
        text = dumps_json(fit_json(analysis, meta))
    else:
        text = fit_text(analysis, meta, Symbols(_use_ascii(ascii_only) if not output else ascii_only))
    if output:
        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)
    result = analysis.result
    if not result.converged:
        _stderr("hlmcli: warning: the optimum is not certified: " + "; ".join(result.certificate.failed))
        sys.exit(EXIT_NOT_CONVERGED)
    if result.boundary and not quiet:
        for note in result.boundary:
            _stderr(f"hlmcli: warning: {note}")
    if strict and result.boundary:
        sys.exit(EXIT_NOT_CONVERGED)


def _fit_hglm(spec, archive, source_text, level1, level2, model_file, out_format, output, ascii_only, sources):
    """fit for a binary, binomial or count outcome (hglm_run.py)."""
    from .errors import EXIT_NOT_CONVERGED
    from .files import atomic_write_text
    from .hglm_run import analyse_hglm, hglm_json, hglm_text, write_residuals
    from .report import Symbols, dumps_json

    a = analyse_hglm(spec, archive, level1)
    meta = {"data_source": source_text, "title": spec.options.title, "id_name": archive.id_names[0],
            "model_given": {"level1": level1, "level2": list(level2),
                            "model_file": Path(model_file).name if model_file else None}}
    write_residuals(a, sources)
    text = dumps_json(hglm_json(a, meta)) if out_format == "json" else \
        hglm_text(a, meta, Symbols(_use_ascii(ascii_only) if not output else ascii_only))
    if output:
        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)
    if not a.converged:
        what = "PQL did not converge in its macro iterations" if a.pql is not None else \
            "the optimum is not certified: " + "; ".join(a.ml.certificate.failed)
        _stderr("hlmcli: warning: " + what)
        sys.exit(EXIT_NOT_CONVERGED)


@main.command("compare")
@click.argument("fit_a", type=click.Path())
@click.argument("fit_b", type=click.Path())
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@user_errors
def compare_cmd(fit_a, fit_b, out_format):
    """Compare two saved JSON fits (A the simpler): deviance test and variance explained."""
    from .compare import compare_fits, compare_text, read_fit
    from .report import dumps_json

    result = compare_fits(read_fit(fit_a), read_fit(fit_b), Path(fit_a).name, Path(fit_b).name)
    click.echo(dumps_json(result) if out_format == "json" else compare_text(result), nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
