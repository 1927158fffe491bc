"""Stage 9, cli: thin click commands that wire the stages together."""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

# The per-unit algebra is thousands of small BLAS calls; threads only add synchronisation, and
# collapse when the cores are busy (measured on 2 cores under load: a 1,000,000-row fit 2.4 s
# with threaded OpenBLAS, 0.29 s with one thread). Set before numpy loads; a user's value wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import click  # noqa: E402

from ..errors import EXIT_CODES_HELP, EXIT_DATA, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, HlmError
from .help import EXAMPLES, GroupedCommand
from .options import formula_equations, model_given, split_names
from ..spec import FamilyName, FitOptions, OutputOptions
from ..version import __version__


def _stderr(message: str) -> None:
    from ..report.report import printable  # names from data files may hold terminal escape sequences

    click.echo("\n".join(printable(line) for line in str(message).split("\n")), err=True)


def user_errors(func):
    """Turn every HlmError into one line on stderr and its exit code; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from ..io.files import output_transaction

        try:
            # every file the command writes is staged and put in place only if it succeeds (files.py)
            ctx = click.get_current_context(silent=True)
            with output_transaction(no_follow=bool(ctx is not None and ctx.meta.get("no_follow"))):
                return func(*args, **kwargs)
        except HlmError as exc:
            _stderr(f"hlmcli: error: {exc}")
            if getattr(exc, "detail", None):  # a syntax error's equation with a caret under the place
                _stderr(exc.detail)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _stderr("hlmcli: interrupted; no output file was changed")
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            _stderr("hlmcli: error: out of memory; use a smaller model or a machine with more memory")
            sys.exit(EXIT_DATA)
        except click.exceptions.ClickException:
            raise  # usage errors: OneLineErrors prints them with exit 2
        except RecursionError:
            _stderr("hlmcli: error: the input is nested too deeply to read; simplify it")
            sys.exit(EXIT_DATA)
        except OSError as exc:
            name = exc.filename or ""
            _stderr(f"hlmcli: error: {name}: {exc.strerror or exc}; check the path and permissions".replace(": : ", ": "))
            sys.exit(EXIT_DATA)
        except Exception as exc:  # a bug of ours: still one line, details on request
            if os.environ.get("HLMCLI_DEBUG"):
                raise
            _stderr(f"hlmcli: internal error: {type(exc).__name__}: {_one_line(exc)}; this is a bug in hlmcli, "
                    "please rerun with HLMCLI_DEBUG=1 and report it with the traceback")
            sys.exit(EXIT_INTERNAL)

    return wrapper


def _given_options() -> set[str]:
    """The long names of the options typed on the command line (not defaults), for flags.py."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    typed = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {o for p in ctx.command.params if ctx.get_parameter_source(p.name) in typed for o in p.opts
            if o.startswith("--")}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


class _UsageProblem(HlmError):
    """A usage error found inside a command (exit 2, one line)."""

    exit_code = EXIT_USAGE


def _keep_no_follow(ctx, param, value):
    ctx.meta["no_follow"] = value
    return value


# on every command that writes files; read by user_errors (files.output_transaction)
no_follow_option = click.option("--no-follow", is_flag=True, expose_value=False, callback=_keep_no_follow,
                                help="Refuse an output path that is a symbolic link (default: write to the link's target).")


def _dask_scheduler(more: dict):
    """--scheduler, --timeout and --deadline as one dask_engine.Scheduler (None for the other engines)."""
    given = [name for name, key in (("--timeout", "dask_timeout"), ("--deadline", "dask_deadline"))
             if more.get(key) is not None]
    if more.get("engine") != "dask":  # --scheduler alone: flags.check_fit_options
        if given:
            raise click.UsageError(f"{', '.join(given)}: for --engine dask only (the time allowed to its scheduler); "
                                   "give --engine dask too, or drop it")
        return None
    if more.get("dask_timeout") is not None and more.get("scheduler") is None:
        raise click.UsageError("--timeout is the time to connect to --scheduler, and none is given (the default "
                               "LocalCluster runs here); give --scheduler, or drop --timeout")
    from ..data.dask_engine import CONNECT_TIMEOUT, Scheduler, check_seconds, parse_address

    if more.get("scheduler") is not None:
        parse_address(more["scheduler"])
    timeout = check_seconds("--timeout", more.get("dask_timeout"))
    return Scheduler(more.get("scheduler"), CONNECT_TIMEOUT if timeout is None else timeout,
                     check_seconds("--deadline", more.get("dask_deadline")))


def paper_table_options(f):
    """--se, --stars, --caption, --notes: what the paper tables (csv, markdown, latex, html) show."""
    for decorator in reversed([
        click.option("--se", "table_se", type=click.Choice(["auto", "model", "robust"]), default="auto", show_default=True,
                     help="Tables: the standard errors shown (auto: robust for weighted fits, model-based otherwise)."),
        click.option("--stars", "table_stars", is_flag=True, help="Tables: mark p < 0.05, 0.01, 0.001 with *, **, ***."),
        click.option("--caption", "table_caption", help="Tables: a caption above the table."),
        click.option("--notes", "table_notes", multiple=True, help="Tables: a note under the table; repeat for more."),
    ]):
        f = decorator(f)
    return f


def _table_options(more: dict, out_format: str):
    """TableOptions from the paper-table options (taken out of `more`); refused with text or JSON."""
    from ..report.tables import TableOptions

    given = {k: more.pop(k, None) for k in ("table_se", "table_stars", "table_caption", "table_notes")}
    options = TableOptions(se=given["table_se"] or "auto", stars=bool(given["table_stars"]),
                           caption=given["table_caption"], notes=tuple(given["table_notes"] or ()))
    if out_format in ("text", "json") and options != TableOptions():
        raise _UsageProblem("--se, --stars, --caption and --notes shape the paper tables; add --format csv, markdown, "
                            "latex or html")
    return options


def _progress_wanted(quiet: bool) -> bool:
    from ..data.streaming import progress_wanted

    return progress_wanted(quiet)


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
    """Usage errors as one line too, like every other error (exit 2); subcommands' options in groups."""

    command_class = GroupedCommand
    group_class = type  # subgroups (mdm, cache) are OneLineErrors too, so their commands are grouped

    def main(self, args=None, prog_name=None, **extra):
        if not os.environ.get("HLMCLI_DEBUG"):
            # numpy's floating-point RuntimeWarnings (an overflowing exp in a confidence bound, a sqrt of a
            # negative variance at an uncertified point) are not messages for the user: what a number means is
            # said by the output itself (inf, "not certified"), and stderr keeps to hlmcli's one-line messages
            import warnings

            warnings.filterwarnings("ignore", category=RuntimeWarning)
        try:
            return super().main(args=args, prog_name=prog_name or "hlmcli", standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _stderr("hlmcli: aborted")
            sys.exit(EXIT_INTERRUPTED)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "hlmcli"
            _stderr(f"hlmcli: usage error: {exc.format_message()}; see '{where} --help'")
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            _stderr(f"hlmcli: error: {exc.format_message()}")
            sys.exit(exc.exit_code)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="hlmcli")
def main():
    """Two-, three- and four-level hierarchical linear models, the way HLM 7 (HLM2, HLM3, HLM4) fits them."""
    from ..io import verified

    verified.configure(_verified_records_folder)


def _verified_records_folder():
    """Where loads record the files they verified in full (io/verified.py): the command's --cache-dir
    if it was given, else the default cache folder; never somewhere the user did not point."""
    from ..io.cache import default_cache_dir, secure_cache_dir

    ctx = click.get_current_context(silent=True)
    given = ctx.params.get("cache_dir") if ctx is not None else None
    return secure_cache_dir(Path(given) if given else default_cache_dir())


@main.group()
def mdm():
    """Build and inspect archives (HLM's MDM files)."""


_build_options = [
    click.option("--id", "id_", help="Unit id column, in both files."),
    click.option("--id1", help="Unit id column in the level-1 file (if named differently)."),
    click.option("--id2", help="Unit id column in the level-2 file (if named differently); with three files, the level-2 unit id."),
    click.option("--id3", help="Three files: the level-3 unit id column (in the level-3 file, and in the level-1 or level-2 file)."),
    click.option("--l1-vars", help="Level-1 variables to keep, comma-separated (default: all)."),
    click.option("--l2-vars", help="Level-2 variables to keep, comma-separated (default: all)."),
    click.option("--l3-vars", help="Three files: level-3 variables to keep, comma-separated (default: all)."),
    click.option("--id4", help="Four files: the level-4 unit id column (in the level-4 and level-3 files)."),
    click.option("--l4-vars", help="Four files: level-4 variables to keep, comma-separated (default: all)."),
    click.option("--missing", type=click.Choice(["now", "analysis"]), default="analysis", show_default=True,
                 help="Drop level-1 records with missing values now (at build) or per model at analysis."),
    click.option("--drop-unmatched", is_flag=True, help="Drop level-1 records whose unit has no level-2 record."),
    click.option("--format", "file_format", help="Input format: csv, sas, spss, stata, parquet or excel (default: by extension)."),
    click.option("--delimiter", help="CSV delimiter (default: sniffed): one character, or tab, '\\t', comma, semicolon, pipe, space."),
]


def build_options(func):
    for option in reversed(_build_options):
        func = option(func)
    return func


def make_build_options(id_, id1, id2, l1_vars, l2_vars, missing, drop_unmatched):
    from ..io.archive import BuildOptions
    from ..errors import OptionError

    id1 = id1 or id_
    id2 = id2 or id_
    if not id1 or not id2:
        raise OptionError("no unit id column given; pass --id NAME (or --id1 and --id2)")
    return BuildOptions(id1=id1, id2=id2, keep1=split_names(l1_vars), keep2=split_names(l2_vars),
                        missing=missing, drop_unmatched=drop_unmatched)


@mdm.command("build", epilog=EXAMPLES["mdm build"])
@click.argument("level1_file", required=False, type=click.Path())
@click.argument("level2_file", required=False, type=click.Path())
@click.argument("level3_file", required=False, type=click.Path())
@click.argument("level4_file", required=False, type=click.Path())
@build_options
@click.option("--template", type=click.Path(), help="Build from an HLM 7 MDM template (.mdmt).")
@click.option("-o", "--output", type=click.Path(), help="Archive to write (.mdm).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
@click.option("--force", is_flag=True, help="Overwrite an existing file named by the template's mdmname:.")
@click.option("--allow-outside", is_flag=True, help="Let the template's mdmname: point outside the template's folder.")
@click.option("--engine", type=click.Choice(["memory", "stream"]), default="memory", show_default=True,
              help="stream: one chunked pass (pyarrow) writing per-unit statistics, in bounded memory.")
@click.option("--row-id", help="Cross-classified (HCM2): LEVEL1 ROWS COLS; the row factor's id column, in the level-1 "
              "and row files (--l2-vars: the row file's variables).")
@click.option("--col-id", help="Cross-classified (HCM2): the column factor's id column, in the level-1 and column files "
              "(--l3-vars: the column file's variables).")
@no_follow_option
@user_errors
def mdm_build(level1_file, level2_file, level3_file, level4_file, id_, id1, id2, id3, id4, l1_vars, l2_vars, l3_vars,
              l4_vars, missing, drop_unmatched, file_format, delimiter, template, output, quiet, force, allow_outside,
              engine="memory", row_id=None, col_id=None):
    """Merge a level-1 and a level-2 file (a level-3 file: HLM3; and a level-4 file: HLM4; a level-1, a row
    and a column file with --row-id and --col-id: HCM2) into an archive."""
    from ..io.archive import BuildOptions, write_archive
    from ..io.archive_levels import build_from_paths
    from ..errors import DataError
    from ..io.files import check_outputs, check_regular, commit_outputs

    from .flags import check_build_options

    check_build_options(_given_options(), bool(template))
    if row_id or col_id:  # HLM 7's HCM2 layout: cli/crossed.py
        from .crossed import build_crossed_command

        return build_crossed_command([f for f in (level1_file, level2_file, level3_file, level4_file) if f], row_id,
                                     col_id, (l1_vars, l2_vars, l3_vars), missing, drop_unmatched, file_format,
                                     delimiter, output, quiet, _given_options(), _stderr, _Progress)
    if level4_file or id4 or l4_vars:
        from ..data.levels_load import build_options_levels

        if not (level1_file and level2_file and level3_file and level4_file) or template or id_ or id1:
            raise click.UsageError("a four-level build takes LEVEL1_FILE LEVEL2_FILE LEVEL3_FILE LEVEL4_FILE with "
                                   "--id2, --id3 and --id4")
        files = [level1_file, level2_file, level3_file, level4_file]
        options = build_options_levels((id2, id3, id4), (l1_vars, l2_vars, l3_vars, l4_vars), missing, drop_unmatched, 4)
    elif template:
        if level1_file or level2_file:
            raise DataError(f"{template}: give either a template or two data files, not both")
        from ..language.mdmt import parse_template

        tpl = parse_template(template)
        if tpl.level3_file is not None:
            from ..io.archive_levels import BuildOptions3

            files = [tpl.level1_file, tpl.level2_file, tpl.level3_file]
            options = BuildOptions3(id2=tpl.id2, id3=tpl.id3, keep1=tpl.level1_vars or None,
                                    keep2=tpl.level2_vars or None, keep3=tpl.level3_vars or None, missing=tpl.missing,
                                    drop_unmatched=drop_unmatched)
        else:
            files = [tpl.level1_file, tpl.level2_file]
            options = BuildOptions(id1=tpl.id1, id2=tpl.id2, keep1=tpl.level1_vars or None,
                                   keep2=tpl.level2_vars or None, missing=tpl.missing, drop_unmatched=drop_unmatched)
        file_format = file_format or tpl.format
        if output is None:  # a name from the template: beside it, never leaving its folder, never overwriting
            from pathlib import PureWindowsPath

            from ..io.files import output_from_file, refuse_clobber

            name = tpl.mdm_name or Path(template).with_suffix(".mdm").name
            if PureWindowsPath(name).drive:  # D:\\...\\x.mdm, written by HLM 7 on Windows: its base name
                name = PureWindowsPath(name).name
            output = str(output_from_file(template, name, "mdmname", allow_outside))
            refuse_clobber(output, force, Path(template).name)
    elif level3_file or id3 or l3_vars:
        if not (level1_file and level2_file and level3_file):
            raise click.UsageError("a three-level build takes LEVEL1_FILE LEVEL2_FILE LEVEL3_FILE with --id2 and --id3")
        from ..data.levels_load import options3

        files = [level1_file, level2_file, level3_file]
        options = options3(id_, id1, id2, id3, l1_vars, l2_vars, l3_vars, missing, drop_unmatched)
    else:
        if not level1_file or not level2_file:
            raise click.UsageError("give LEVEL1_FILE and LEVEL2_FILE (they may be the same file), or --template")
        files = [level1_file, level2_file]
        options = make_build_options(id_, id1, id2, l1_vars, l2_vars, missing, drop_unmatched)
    K = options.n_levels
    if output is None:
        raise click.UsageError("give -o/--output, the archive to write")
    if engine != "memory" and K > 2:
        raise click.UsageError(f"--engine stream builds two-level archives only; {K}-level archives are built in memory")
    for source in files:
        if str(source) != "-":  # '-' is standard input
            check_regular(source, "data file")
    check_outputs([("-o", output)], files + [template])
    warn = (lambda m: None) if quiet else (lambda m: _stderr(f"hlmcli: warning: {m}"))
    if engine == "stream":
        from ..analysis.engines import cli_build

        records, units = cli_build(files[0], files[1], options, file_format, delimiter, output, quiet, warn=warn,
                                   progress=_progress_wanted(quiet))
        commit_outputs()
        if not quiet:
            _stderr(f"hlmcli: wrote {output}: per-unit statistics of {records} level-1 records in {units} units")
        return
    progress = _Progress(quiet, K + 2)  # reading each file, merging, hashing
    try:
        archive = build_from_paths(files, options, file_format, delimiter, warn=warn, progress=progress)
        write_archive(archive, output)
    finally:
        progress.close()
    commit_outputs()
    if not quiet:
        counts = " in ".join([f"{archive.n(1)} level-1 records"] + [f"{archive.n(k)} level-{k} units"
                                                                    for k in range(2, K + 1)])
        _stderr(f"hlmcli: wrote {output}: {counts}")


@mdm.command("info")
@click.argument("archive_file", type=click.Path())
@click.option("--unit", help="Also show one unit: its number of records and level-2 values.")
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--verify", is_flag=True, help="Compute the archive's whole-file checksum even if this file was "
              "verified before (a load otherwise trusts a file whose size, times, inode and header are unchanged).")
@user_errors
def mdm_info(archive_file, unit, out_format, verify):
    """Print what an archive holds: HLM 7's MDM statistics."""
    from ..io.archive import changed_sources, load_archive
    from ..report.report import archive_info, archive_info_text, dumps_json

    from ..analysis.engines import is_stats_archive

    if is_stats_archive(archive_file):
        from ..analysis.engines import stats_archive_info, stats_archive_info_text

        info = stats_archive_info(archive_file)
        click.echo(dumps_json(info) if out_format == "json" else stats_archive_info_text(info), nl=False)
        return
    from ..io.archive_crossed import is_crossed_archive

    if is_crossed_archive(archive_file):  # HCM2's archive: cli/crossed.py
        from .crossed import crossed_info_command

        return crossed_info_command(archive_file, unit, out_format, verify, _stderr)
    archive = load_archive(archive_file, levels=None, verify=verify)
    info = archive_info(archive, unit)  # before the warnings: an unknown unit is the one error
    for path in changed_sources(archive):
        _stderr(f"hlmcli: warning: {path} changed since this archive was built; rebuild it with 'hlmcli mdm build'")
    click.echo(dumps_json(info) if out_format == "json" else archive_info_text(info), nl=False)
    if verify:
        _stderr(f"hlmcli: {archive_file}: checksum verified (SHA-256 of the whole file)")


# ---------------------------------------------------------------- models and fits

def _load_data(data, build_opts: dict, cache_dir, quiet: bool):
    """One archive, or two data files through the cache. Returns (archive, data source text)."""
    from ..io.archive import MAGIC, changed_sources, load_archive
    from ..io.cache import cached_archive

    warn = (lambda m: None) if quiet else (lambda m: _stderr(f"hlmcli: warning: {m}"))
    if len(data) == 1:
        path = data[0]
        from ..io.files import check_regular

        if str(path) == "-":
            raise click.UsageError("an archive cannot be read from standard input; give the .mdm file's path")
        check_regular(path, "archive")  # before opening it: a FIFO would block, /dev/zero never end
        if not str(path).lower().endswith(".mdm") and Path(path).exists():
            with open(path, "rb") as handle:
                if handle.read(len(MAGIC)) != MAGIC:
                    raise click.UsageError(f"{path} is not an archive; give an .mdm file, or the level-1 and level-2 files with --id")
        archive = load_archive(path)
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(path).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(path).name
    if len(data) == 2:
        if "-" in data:
            raise click.UsageError("standard input ('-') can be read by 'hlmcli mdm build' only; build an archive first")
        build_opts = dict(build_opts)
        fmt, delimiter = build_opts.pop("file_format", None), build_opts.pop("delimiter", None)
        options = make_build_options(**build_opts)
        from ..io.readers import normalise_delimiter

        archive, _status = cached_archive(data[:2], options, fmt=fmt, delimiter=normalise_delimiter(delimiter),
                                          cache_dir=cache_dir, warn=warn)
        return archive, f"{Path(data[0]).name} and {Path(data[1]).name}"
    raise click.UsageError("give one archive (.mdm) or two data files (level-1 and level-2)")


_model_options = [
    click.argument("data", nargs=-1, required=True, type=click.Path()),
    click.option("-1", "--level1", "level1", help="Level-1 equation, e.g. 'MATHACH = b0 + b1*group(SES) + r'."),
    click.option("-2", "--level2", "level2", multiple=True, help="A level-2 equation, e.g. 'b0 = g00 + g01*SECTOR + u0' "
                 "(three levels: 'p0 = b00 + b01*FEMALE + r0'). Repeat."),
    click.option("-3", "--level3", "level3", multiple=True,
                 help="Three levels: a level-3 equation, e.g. 'b00 = g000 + g001*LOWINC + u00'. Repeat."),
    click.option("-4", "--level4", "level4", multiple=True,
                 help="Four levels: a level-4 equation, e.g. 'g000 = d0000 + d0001*URBAN + v000'. Repeat."),
    click.option("--model", "model_file", type=click.Path(), help="Model file: equations, or an HLM 7 .hlm command file."),
    click.option("--formula", default=None, expose_value=False, callback=lambda ctx, p, v: ctx.meta.__setitem__("formula", v),
                 help="The model as an lme4 formula instead of equations, e.g. 'MATHACH ~ SECTOR*group(SES) + "
                 "(group(SES) | ID)'; (…|S/C) nests C in S (three levels), || makes τ diagonal. DATA may then be one "
                 "file holding both levels. Needs the [formula] extra."),
    click.option("--ml", is_flag=True, default=None, help="Full maximum likelihood (default: REML)."),
    click.option("--ascii", "ascii_only", is_flag=True, help="B/G/U instead of Greek letters."),
    click.option("--id", "id_", help="Unit id column (when DATA is two files)."),
    click.option("--id1", help="Unit id column of the level-1 file."),
    click.option("--id2", help="Unit id column of the level-2 file; with three files, the level-2 unit id."),
    click.option("--id3", help="When DATA is three files: the level-3 unit id."),
    click.option("--l3-vars", help="When DATA is three files: level-3 variables to keep, comma-separated (default: all)."),
    click.option("--id4", help="When DATA is four files: the level-4 unit id."),
    click.option("--l4-vars", help="When DATA is four files: level-4 variables to keep, comma-separated (default: all)."),
    click.option("--missing", type=click.Choice(["now", "analysis"]), default="analysis", show_default=True,
                 help="When DATA is data files: drop records with missing values now (at build) or per model at analysis."),
    click.option("--drop-unmatched", is_flag=True, help="When DATA is data files: drop level-1 records with no unit in the file above."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Where cached archives go (default: $HLMCLI_CACHE_DIR, else the platform's cache folder: "
                 "$XDG_CACHE_HOME/hlmcli or ~/.cache/hlmcli; ~/Library/Caches/hlmcli on macOS; %LOCALAPPDATA%\\hlmcli\\Cache on Windows)."),
    click.option("--l1-vars", help="When DATA is two files: level-1 variables to keep, comma-separated (default: all)."),
    click.option("--l2-vars", help="When DATA is two files: level-2 variables to keep, comma-separated (default: all)."),
    click.option("--delimiter", help="When DATA is two CSV files: the delimiter (default: sniffed); tab or '\\t' for tab."),
    click.option("--data-format", "file_format",
                 help="When DATA is two files: their format, csv, sas, spss, stata, parquet or excel (default: by extension)."),
    click.option("--reml", is_flag=True, default=None, help="Restricted maximum likelihood, overriding a .hlm file's mlf:y "
                 "(three levels: ML is the default, as in HLM3)."),
    click.option("--allow-outside", is_flag=True,
                 help="Let output names in a .hlm file (resfil1name:, resfil2name:) point outside its folder."),
]


def _keep_hglm(ctx, param, value):
    ctx.meta.setdefault("hglm", {})[param.name] = value
    return value


# HGLM options (spec.py, hglm_run.py): collected into ctx.meta so the commands' signatures stay as they are
_hglm_options = [
    click.option("--family", type=click.Choice(["normal", "bernoulli", "binomial", "poisson", "ordinal", "negbinomial",
                                                      "multinomial"]),
                 default=None, expose_value=False, callback=_keep_hglm, help="Level-1 distribution (default normal; "
                 "logit link for bernoulli/binomial, log link for poisson; ordinal: cumulative link over the "
                 "categories of the outcome's integer codes; negbinomial: NB2 counts, Var = mu + mu^2/theta, log "
                 "link, theta estimated, --estimation laplace or agq; multinomial: baseline-category logits, the "
                 "last category the reference, --estimation pql or laplace. Ordinal and multinomial PQL, HLM 7's "
                 "method: the M - 1 logits linearised jointly (working weights D'Sigma^-1 D), restricted PQL "
                 "unless --ml, level-1 scale fixed at 1, no population-average model)."),
    click.option("--link", type=click.Choice(["logit", "probit", "cloglog"]), default=None, expose_value=False,
                 callback=_keep_hglm, help="--family ordinal: the cumulative link (default logit)."),
    click.option("--trials", default=None, expose_value=False, callback=_keep_hglm,
                 help="Binomial: the number-of-trials variable."),
    click.option("--exposure", default=None, expose_value=False, callback=_keep_hglm,
                 help="Poisson or negbinomial: the exposure variable (log exposure is an offset)."),
    click.option("--overdispersion", is_flag=True, default=None, expose_value=False, callback=_keep_hglm,
                 help="Binomial/Poisson under PQL: estimate the level-1 scale instead of fixing it at 1."),
    click.option("--estimation", type=click.Choice(["pql", "laplace", "agq"]), default=None, expose_value=False,
                 callback=_keep_hglm, help="HGLM estimation: pql (default), laplace or agq (exact ML)."),
    click.option("--quadrature-points", type=click.IntRange(1), default=None, expose_value=False, callback=_keep_hglm,
                 help="AGQ: quadrature points per random effect (default: adaptive, from 7 until the deviance changes "
                 "by at most 1e-6 relative; at most 100). Three levels: the same N at both levels (nested, N^2 "
                 "evaluations per record; at most 50)."),
    click.option("--separation", type=click.Choice(["refuse", "fit"]), default=None, expose_value=False,
                 callback=_keep_hglm, help="Binary, binomial and count outcomes: a predictor that separates the "
                 "outcome quasi-completely is refused (default), or with 'fit' held at a bound with a warning."),
]


def model_options(func, leave_out=()):
    for option in reversed(_model_options + _hglm_options):
        if _declared_name(option) not in leave_out:
            func = option(func)
    return func


def _declared_name(option) -> str:
    """The longest name an option decorator declares (its decorated stand-in's one parameter)."""
    return max(option(lambda: None).__click_params__[0].opts, key=len)


# plot prints no equations: --ascii is not offered
_PLOT_LEAVES_OUT = ("--ascii",)


def _fit_options(ml=None, reml=None, **given):
    """FitOptions from the command line: the given options and the HGLM options kept in ctx.meta."""
    from ..api import fit_options

    if ml and reml:
        raise click.UsageError("give --ml or --reml, not both")
    method = "REML" if reml else ("ML" if ml else ("REML" if ml is False else None))
    hglm = dict(click.get_current_context().meta.get("hglm", {}))
    return fit_options(method=method, **hglm, **given)


def _formula_front(data, level1, level2, model_file, id_, id2, more):
    """--formula: refuse it beside equations, take the unit ids from its grouping factors, and let one data
    file hold both levels. The equations themselves are made from it where the variables' levels are known
    (_spec, levels_load.spec_levels)."""
    formula = click.get_current_context().meta.get("formula")
    if formula is None:
        return data, id_, id2, more
    if level1 or level2 or more.get("level3") or model_file:
        raise _UsageProblem("give the model as --formula or as equations (-1/-2/-3, --model), not both")
    from ..language.formula import grouping

    ids = grouping(formula)
    if len(ids) == 1:
        if id_ and id_ != ids[0]:
            raise _UsageProblem(f"--id {id_} differs from the formula's grouping factor {ids[0]}; drop --id")
        id_ = ids[0]
        if len(data) == 1 and not _looks_like_archive(data[0]):
            data = (data[0], data[0])  # one file holding both levels: level-2 variables are constant within units
    else:
        if len(data) not in (1, 3):
            raise _UsageProblem(f"the formula has three levels ({ids[1]}/{ids[0]}): give three data files or a "
                                "three-level archive")
        id2 = id2 or ids[0]
        more = {**more, "id3": more.get("id3") or ids[1]}
    return data, id_, id2, more


def _looks_like_archive(path) -> bool:
    from ..io.archive import MAGIC

    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or be read from
            return False
        with open(path, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _spec(archive, level1, level2, model_file, ml, extra=None, reml=None, allow_outside=False, fit=None):
    """The model of a command: api.model_spec, the one reader of equations, model files and fit options
    (equations made from --formula when it was given)."""
    from dataclasses import replace

    from ..api import model_spec
    from ..data.design import variables_of
    from ..spec import TauStructure

    extra = dict(extra or {})
    tau = extra.pop("tau", None)
    fit = fit or _fit_options(ml, reml, tau=tau)
    level1, level2, _, formula_tau = formula_equations(variables_of(archive), level1, level2)
    if formula_tau and fit.tau is None:
        fit = replace(fit, tau=TauStructure(formula_tau))
    return model_spec(archive, level1, list(level2), model_file, fit, allow_outside, **extra)


def _use_ascii(flag: bool) -> bool:
    if flag:
        return True
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower()
    return "utf" not in encoding


def _build_opts3(id_, id1, id2, missing, drop_unmatched, id3=None, l1_vars=None, l2_vars=None, l3_vars=None,
                 file_format=None, delimiter=None, **_ignored):
    return {"id_": id_, "id1": id1, "id2": id2, "id3": id3, "l1_vars": l1_vars, "l2_vars": l2_vars, "l3_vars": l3_vars,
            "missing": missing, "drop_unmatched": drop_unmatched, "file_format": file_format, "delimiter": delimiter}


def _build_opts(id_, id1, id2, missing, drop_unmatched, l1_vars=None, l2_vars=None, file_format=None, delimiter=None,
                **_ignored):
    return {"id_": id_, "id1": id1, "id2": id2, "l1_vars": l1_vars, "l2_vars": l2_vars,
            "missing": missing, "drop_unmatched": drop_unmatched, "file_format": file_format, "delimiter": delimiter}


@main.command("model")
@model_options
@user_errors
def model_cmd(data, level1, level2, model_file, ml, ascii_only, id_, id1, id2, missing, drop_unmatched, cache_dir, **more):
    """Print the model as HLM 7 writes it, and its lme4 formula, without fitting."""
    from ..report.report import Symbols, lme4_formula, model_summary

    from .levels import is_many_levels
    if is_many_levels(data, more):
        from .levels import model_levels

        return model_levels(data, level1, level2, model_file, ascii_only,
                            {**_build_opts3(id_, id1, id2, missing, drop_unmatched, **more), **more}, cache_dir, more,
                            _stderr, _use_ascii)
    data, id_, id2, more = _formula_front(data, level1, level2, model_file, id_, id2, more)

    from .levels import is_three_level
    if is_three_level(data, more):
        from .levels import model3

        return model3(data, level1, level2, model_file, ascii_only,
                      _build_opts3(id_, id1, id2, missing, drop_unmatched, **more), cache_dir, {**more, "ml": ml},
                      _stderr, _use_ascii)

    from .flags import check_archive_options, check_model_options

    given = _given_options()
    check_archive_options(given, Path(data[0]).name if len(data) == 1 else None)
    archive, _ = _load_data(data, _build_opts(id_, id1, id2, missing, drop_unmatched, **more), cache_dir, quiet=False)
    spec = _spec(archive, level1, level2, model_file, ml, reml=more["reml"], allow_outside=more["allow_outside"])
    o = spec.options
    check_model_options(given, family=o.family, estimation=o.estimation if o.family != "normal" else None,
                        full_output=bool(o.full_output), prior_deviance=o.prior_deviance is not None)
    if spec.options.family != "normal":
        from ..report.report_hglm import estimation_text, hglm_model_summary, r_call_lines

        lines = hglm_model_summary(spec, Symbols(_use_ascii(ascii_only)))
        lines += ["", f"Method of estimation: {estimation_text(spec.options)}"]
        if spec.options.separation == "fit":
            lines.append("Separation: a separated coefficient is held at a bound, with a warning (--separation fit)")
        lines.append("")
        lines += r_call_lines(spec, archive.level1_id)
        click.echo("\n".join(lines))
        return
    lines = model_summary(spec, Symbols(_use_ascii(ascii_only)))
    formula, notes = lme4_formula(spec, archive.level1_id)
    lines += ["", f"Method of estimation: {'restricted maximum likelihood' if spec.method == 'REML' else 'full maximum likelihood'}",
              "", "The same model in R (lme4)", f" {formula}"] + [f"   {n}" for n in notes]
    from ..language.formula import formula_of

    own = formula_of(spec, archive.level1_id)
    if own:
        lines += ["", "The same model for hlmcli --formula", f" {own}"]
    from ..report.report import printable

    click.echo("\n".join(printable(line) for line in lines))


@main.command("fit", epilog=EXAMPLES["fit"] + "\n" + EXIT_CODES_HELP)
@model_options
@click.option("--format", "out_format", type=click.Choice(["text", "json", "csv", "markdown", "latex", "html"]), default="text",
              show_default=True, help="HLM 7's text, JSON, or the tables for papers (csv: broom's tidy columns).")
@click.option("-o", "--output", type=click.Path(), help="Write the output here (atomically) instead of stdout.")
@click.option("--json-out", type=click.Path(), help="Also write the JSON to this file, from the same fit.")
@paper_table_options
@click.option("--keep", help="Source columns (text too) to carry into the residual files, comma-separated.")
@click.option("--title", help="Problem title for the output.")
@click.option("--timestamp", is_flag=True, help="Add the date and time to the text output (off: output is reproducible).")
@click.option("--df", "df_method", type=click.Choice(["hlm", "hlm6", "satterthwaite"]), default="hlm", show_default=True,
              help="d.f. of the fixed effects: HLM 7's rule, HLM 5/6's (fixed slopes get N - F), or Satterthwaite's as lmerTest.")
@click.option("--strict", is_flag=True, help="Exit 3 on a boundary fit too.")
@click.option("--tau", "tau_structure", type=click.Choice(["unstructured", "diagonal"]), default=None,
              help="Covariance of the random effects: unstructured (default) or diagonal (independent effects).")
@click.option("--max-iterations", type=click.IntRange(1), help="Iteration limit (HLM's numit).")
@click.option("--emulate", type=click.Choice(["hlm6", "hlm7"]), default=None,
              help="hlm6: also run HLM 5/6's EM path (its start, EM step and stop rule, as reconstructed from published "
              "HLM 6 output; limit --max-iterations, default 10000) and print its estimates beside the certified "
              "optimum, with the deviance gap; never an optimum. Two-level linear fits in memory. hlm7: refused (HLM 7's "
              "accelerated iteration is not reproduced).")
@click.option("--row-id", help="Cross-classified (--formula with crossed factors), HLM 7's HCM2 layout LEVEL1 ROWS COLS: "
              "the row factor's id column, in the level-1 file and the row file.")
@click.option("--col-id", help="Cross-classified, HCM2 layout: the column factor's id column, in the level-1 file and "
              "the column file.")
@click.option("--test", "tests", multiple=True, help="Wald test of fixed effects, e.g. 'g01 = 0, g11 = 0'. Repeat for more tests.")
@click.option("--constrain", "constraints", multiple=True,
              help="Constrain fixed effects to be equal (HLM 7's constrain), e.g. 'g10 = g20': fitted as one γ, "
              "with the likelihood-ratio test of the constraint (by ML). Repeat for more.")
@click.option("--known-variance", metavar="V",
              help="V-known model (HLM 7's V-known, meta-analysis): V holds each record's known level-1 (sampling) "
              "variance; τ and γ are estimated by REML or ML.")
@click.option("--level1-variance", metavar="X1,X2",
              help="Heterogeneous level-1 variance (HLM 7's heterol1var): log σ²ij = α0 + α1*X1 + ..., with the α "
              "table and the likelihood-ratio test against one σ².")
@click.option("--level1-covariance", type=click.Choice(["unrestricted", "homogeneous", "heterogeneous", "ar1"]),
              help="HMLM (repeated measures): the within-person covariance over the occasions of --occasion: "
              "unrestricted (no random effects), homogeneous σ², heterogeneous σ² by occasion, or ar1 (first-order "
              "autoregressive in the occasion index), with the likelihood-ratio test against homogeneous σ². "
              "--test and --compare-deviance use the structured fit, and --plausible-values/--imputed at two levels.")
@click.option("--occasion", metavar="VAR", help="HMLM: the level-1 variable holding each record's occasion "
              "(its distinct values, in increasing order, are occasions 1..T).")
@click.option("--compare-deviance", type=float, help="Deviance of a prior model, for a likelihood-ratio test.")
@click.option("--compare-params", type=int, help="Number of parameters of that prior model.")
@click.option("--prior-version", type=click.Choice(["hlm6", "hlm7"]), default=None,
              help="The program that printed the prior deviance: hlm6 (HLM 5/6 print the ML deviance ln 2π low; it is added back) or hlm7.")
@click.option("--hlm-names", is_flag=True, default=None, expose_value=False,
              callback=lambda ctx, p, v: ctx.meta.__setitem__("hlm_names", bool(v)),
              help="Residual files with HLM 7's column names (EBINTRCP, OLINTRCP, FVINTRCP, MDIST, L1RESID, FITVAL, "
              "...; 8 characters) and, in .sav, SPSS variable labels.")
@click.option("--residuals-l1", type=click.Path(), help="Write the level-1 residual file (.csv, .sav, .dta).")
@click.option("--residuals-l2", type=click.Path(), help="Write the level-2 residual file (.csv, .sav, .dta); "
              "cross-classified: the first (row) factor's.")
@click.option("--residuals-l3", type=click.Path(), help="Three levels: write the level-3 residual file (.csv, .sav, .dta); "
              "cross-classified: the second (column) factor's.")
@click.option("--residuals-l4", type=click.Path(), help="Four levels: write the level-4 residual file (.csv, .sav, .dta); "
              "cross-classified: the third factor's.")
@click.option("--test-homogeneity", is_flag=True, default=None, help="Test homogeneity of level-1 variance (HLM's homvar).")
@click.option("--full-output", is_flag=True, default=None, help="Add unit OLS regressions and least-squares estimates.")
@click.option("--ols-units", type=click.IntRange(0), help="How many units' OLS regressions --full-output prints (default 10): the first units whose OLS can be computed, as HLM counts them.")
@click.option("-q", "--quiet", is_flag=True, help="No warnings on stderr (the exit code still tells).")
@click.option("--keep-failed-output", is_flag=True, help="Write -o and residual files even when the fit is not certified (exit 3).")
@click.option("--force", is_flag=True, help="Overwrite existing files whose names come from a .hlm file (resfil1name:, ...).")
@click.option("--weight1", help="Level-1 sampling weight variable (HLM's level1weight:).")
@click.option("--weight2", help="Level-2 sampling weight variable (HLM's level2weight:).")
@click.option("--weight3", help="Level-3 sampling weight variable, three- and four-level models (HLM3's level3weight:).")
@click.option("--weight4", help="Level-4 sampling weight variable, four-level models.")
@click.option("--normalize", type=click.Choice(["none", "cluster", "total"]), default=None,
              help="Weight normalisation (default cluster: level-1 weights to n_j in each unit, level-2 weights to J; at "
                   "three levels each level's weights to the number of its units within each unit above, level-3 "
                   "weights to J3, for linear and HGLM (Laplace) fits alike).")
@click.option("--plausible-values", help="Outcome columns to fit one by one and combine: PV1,PV2,... or a pattern such as 'PV*MATH'.")
@click.option("--imputed", multiple=True, help="Further level-1 files (or archives), one per imputation; repeat or comma-separate.")
@click.option("--allow-unequal-imputations", is_flag=True,
              help="Combine imputed data sets even when their records differ (refused by default).")
@click.option("--engine", type=click.Choice(["memory", "stream", "dask"]), default="memory", show_default=True,
              help="memory: records in memory; stream: one chunked pass (pyarrow), bounded memory; dask: a Dask cluster.")
@click.option("--scheduler", metavar="ADDRESS", help="--engine dask: a dask.distributed scheduler (default: a LocalCluster).")
@click.option("--timeout", "dask_timeout", type=float, metavar="SECONDS",
              help="--scheduler: seconds for each step of connecting and finding a worker (default 30).")
@click.option("--deadline", "dask_deadline", type=float, metavar="SECONDS",
              help="--engine dask: seconds the whole computation may take (default: no limit).")
@no_follow_option
@user_errors
def fit_cmd(**params):
    """Fit a two-, three- or four-level model and print HLM 7's tables (text) or a stable JSON document."""
    from ..io.files import check_outputs

    r = fit_request(params)
    formula = click.get_current_context().meta.get("formula")
    from .crossed import hcm2_request

    hcm2 = hcm2_request(r.data, r.model, r.more, formula)  # HCM2's equations, or a cross-classified archive
    if hcm2 is not None:
        formula = hcm2.formula
    if formula:  # crossed grouping factors: the cross-classified engine (cli/crossed.py)
        from ..language.formula import crossed

        model = crossed(formula)
        if model is not None:
            from .crossed import fit_crossed_command

            return fit_crossed_command(r.data, formula, model, r.fit, r.out,
                                       {**r.build, "row_id": r.more.get("row_id"), "col_id": r.more.get("col_id"),
                                        "allow_unequal": r.more.get("allow_unequal_imputations")},
                                       _given_options(), lambda s: click.echo(s, nl=False), _stderr, hcm2=hcm2)
    if r.more.get("row_id") or r.more.get("col_id"):
        raise _UsageProblem("--row-id and --col-id name the crossed factors of a cross-classified model: give "
                            "--formula with a random term for each, e.g. 'Y ~ X + (1 | ROW) + (1 | COL)'")
    _dask_scheduler(params)  # the dask options are checked (and refused without --engine dask) before any reading
    from .levels import is_many_levels, is_three_level

    many = is_many_levels(r.data, params)
    data, id_, id2, more = (r.data, r.build["id_"], r.build["id2"], dict(params)) if many else \
        _formula_front(r.data, r.model["level1"], r.model["level2"], r.model["model_file"], r.build["id_"],
                       r.build["id2"], dict(params))
    build = {**r.build, "id_": id_, "id2": id2, "id3": more.get("id3")}
    fit, out = r.fit, r.out
    if many or is_three_level(data, more):
        build["dask_scheduler"] = _dask_scheduler(params)  # --engine dask of three or four levels
        from .flags import check_fit_options
        from .levels import fit_levels

        if fit.prior_version:
            raise _UsageProblem("--prior-version is for two-level fits in memory without plausible values or imputations")
        if fit.normalize and not (fit.weight1 or fit.weight2 or fit.weight3 or fit.weight4):
            raise click.UsageError("--normalize needs sampling weights: --weight1 ... --weight4")
        check_fit_options(_given_options(), archive=Path(data[0]).name if len(data) == 1 else None,
                          engine=fit.engine.value, hlm_file=False, out_format=out.out_format,
                          outputs=bool(out.output or out.json_out or out.residuals_l1 or out.residuals_l2
                                       or out.residuals_l3 or out.residuals_l4))
        return fit_levels(data, {**r.model, "allow_outside": more["allow_outside"],
                                 "allow_unequal_imputations": more.get("allow_unequal_imputations")}, fit, out, build,
                          build["cache_dir"], _stderr, _use_ascii, finish)
    level1, level2, model_file = r.model["level1"], r.model["level2"], r.model["model_file"]
    if r.model["level3"] or out.residuals_l3:
        raise _UsageProblem("-3/--level3 and --residuals-l3 are for three-level models: give three data files or a "
                            "three-level archive")
    if fit.weight3 or fit.weight4:
        raise _UsageProblem("--weight3 and --weight4 are for three- and four-level models; a two-level model takes "
                            "--weight1 and --weight2")
    prior_version = fit.prior_version
    if prior_version and (fit.engine != "memory" or fit.plausible_values or fit.imputed):
        raise _UsageProblem("--prior-version is for two-level fits in memory without plausible values or imputations")

    from .flags import check_fit_options, check_model_options

    given = _given_options()
    check_fit_options(given, archive=Path(data[0]).name if len(data) == 1 else None, engine=fit.engine.value,
                      hlm_file=bool(model_file and str(model_file).lower().endswith(".hlm")), out_format=out.out_format,
                      outputs=bool(out.output or out.json_out or out.residuals_l1 or out.residuals_l2))
    sources = list(data) + [model_file]
    check_outputs([("-o", out.output), ("--json-out", out.json_out), ("--residuals-l1", out.residuals_l1),
                   ("--residuals-l2", out.residuals_l2)], sources)
    from ..analysis.engines import is_stats_archive

    build2 = _build_opts(**build)
    if fit.engine != "memory" or (len(data) == 1 and is_stats_archive(data[0])):
        from ..capabilities import refuse

        for feature, asked in (("constrain", fit.constraints), ("known_variance", fit.known_variance),
                               ("level1_variance", fit.level1_variance),
                               ("level1_covariance", fit.level1_covariance), ("emulate", fit.emulate)):
            if asked:
                refuse(feature, _summarised_kind(fit))
        if prior_version:
            raise _UsageProblem("--prior-version is for two-level fits in memory (not a statistics archive or --engine)")
        return _fit_summarised(data, level1, level2, model_file, params["ml"], more, params["tau_structure"],
                               fit.df_method, fit.tests, out.title, fit.max_iterations, fit.compare_deviance,
                               fit.compare_params, fit.test_homogeneity, fit.full_output, fit.ols_units,
                               replace(out, residuals_l1=None, residuals_l2=None, keep=(), force=False), build2,
                               {"--residuals-l1": out.residuals_l1, "--residuals-l2": out.residuals_l2,
                                "--keep": params["keep"], "--weight1": fit.weight1, "--weight2": fit.weight2,
                                "--plausible-values": fit.plausible_values, "--imputed": fit.imputed},
                               scheduler=_dask_scheduler(more), constraints=fit.constraints)
    if fit.normalize and not (fit.weight1 or fit.weight2):
        raise click.UsageError("--normalize needs --weight1 or --weight2")
    archive, source_text = _load_data(data, build2, build["cache_dir"], out.quiet)
    spec = _spec(archive, level1, level2, model_file, None, fit=fit, allow_outside=more["allow_outside"],
                 extra={"title": out.title, "residuals_l1": out.residuals_l1, "residuals_l2": out.residuals_l2})
    o = spec.options
    check_model_options(given, family=o.family, estimation=o.estimation if o.family != "normal" else None,
                        full_output=bool(o.full_output), prior_deviance=o.prior_deviance is not None)
    from ..api import weight_spec
    from ..capabilities import check as check_capabilities
    from ..language.hypotheses import parse_test

    if prior_version and o.family != "normal":
        raise _UsageProblem("--prior-version is for normal outcomes: HGLM deviances are not compared with HLM 5/6's")
    if prior_version and o.prior_deviance is None:
        raise _UsageProblem("--prior-version says which program printed --compare-deviance; give --compare-deviance too")
    if (fit.plausible_values or fit.imputed) and o.family != "normal":
        # --full-output of combined HGLM fits prints each fit's own tables (not HLM2's unit regressions)
        check_capabilities(replace(spec, options=replace(o, full_output=None)), replace(fit, full_output=None), out)
    else:
        check_capabilities(spec, fit, out)
    if weight_spec(spec, fit).any and o.prior_deviance is not None:
        _refuse_weighted_likelihood_ratio(fit.compare_deviance, model_file)
    hypotheses = list(o.hypotheses) + [parse_test(t, spec) for t in fit.tests]
    if fit.plausible_values or fit.imputed:
        _fit_combined(archive, source_text, spec, data, model_file, level1, level2, out.out_format, out.output,
                      out.timestamp, fit.df_method, out.ascii_only, weight_spec(spec, fit), fit.plausible_values,
                      fit.imputed, fit.full_output, build2, build["cache_dir"], out.quiet, out.keep_failed_output,
                      hypotheses=hypotheses, json_out=out.json_out, allow_unequal=more["allow_unequal_imputations"],
                      table_options=out.table, hmlm=(fit.level1_covariance, fit.occasion), constrain=fit.constraints)
        return
    from ..api import analyse_model
    from ..results import Results

    analysis = analyse_model(spec, archive, fit, level1)
    warn = (lambda m: None) if out.quiet else (lambda m: _stderr(f"hlmcli: warning: {m}"))
    results = Results(analysis, archive, {"warn": warn, "source_files": tuple(data) if len(data) == 2 else None})
    finish(results, out, sources, source_text=source_text, level1=level1, level2=level2, model_file=model_file)


@dataclass(frozen=True)
class FitRequest:
    """`hlmcli fit`'s options as objects: the data files, the model as given, what is estimated
    (FitOptions), what is written (OutputOptions), how the data are read (build: ids, variables kept,
    missing values, file format, cache) and the few switches left (more)."""

    data: tuple
    model: dict
    fit: FitOptions
    out: OutputOptions
    build: dict
    more: dict


_MODEL_KEYS = ("level1", "level2", "level3", "level4", "model_file")
_BUILD_KEYS = ("id_", "id1", "id2", "id3", "id4", "l1_vars", "l2_vars", "l3_vars", "l4_vars", "missing",
               "drop_unmatched", "file_format", "delimiter", "cache_dir")


def fit_request(params: dict) -> FitRequest:
    """The click parameters of `fit` turned at once into the options objects."""
    p = dict(params)
    fit = _fit_options(p.pop("ml"), p.get("reml"), tau=p.pop("tau_structure"), weight1=p.pop("weight1"),
                       weight2=p.pop("weight2"), weight3=p.pop("weight3", None), weight4=p.pop("weight4", None), normalize=p.pop("normalize"), plausible_values=p.pop("plausible_values"),
                       imputed=p.pop("imputed"), df_method=p.pop("df_method"), tests=p.pop("tests"),
                       constraints=p.pop("constraints"), known_variance=p.pop("known_variance"),
                       level1_variance=p.pop("level1_variance"),
                       level1_covariance=p.pop("level1_covariance"), occasion=p.pop("occasion"),
                       compare_deviance=p.pop("compare_deviance"), compare_params=p.pop("compare_params"),
                       test_homogeneity=p.pop("test_homogeneity"), full_output=p.pop("full_output"),
                       ols_units=p.pop("ols_units"), max_iterations=p.pop("max_iterations"),
                       emulate=p.pop("emulate"), prior_version=p.pop("prior_version"), engine=p.get("engine"), scheduler=p.get("scheduler"))
    out = OutputOptions(out_format=p["out_format"], output=p.pop("output"), json_out=p.pop("json_out"),
                        residuals_l1=p.pop("residuals_l1"), residuals_l2=p.pop("residuals_l2"),
                        residuals_l3=p.pop("residuals_l3"), residuals_l4=p.pop("residuals_l4"),
                        keep=split_names(p.get("keep")) or (), quiet=p.pop("quiet"), timestamp=p.pop("timestamp"),
                        title=p.pop("title"), ascii_only=p.pop("ascii_only"), strict=p.pop("strict"),
                        keep_failed_output=p.get("keep_failed_output"), force=p.get("force"),
                        table=_table_options(p, p["out_format"]))
    model = {k: p.pop(k) for k in _MODEL_KEYS}
    build = {k: p.pop(k) for k in _BUILD_KEYS}
    return FitRequest(tuple(p.pop("data")), model, fit, out, build, p)


def _hlm_names_given() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get("hlm_names"))


def finish(results, out: OutputOptions, sources, *, source_text, level1, level2, model_file, higher=()) -> None:
    """The one end of every fit, whichever kind, number of levels and engine ran it: the run's metadata,
    the residual files, the text, JSON or tables, the warnings and the exit status. Whether the fit is
    certified is decided before any file is moved into place, so a run that exits non-zero leaves no
    -o, --json-out or residual file behind for make to take as a result (unless --keep-failed-output).
    `higher` holds the level-3 and level-4 equations of a model of three or four levels."""
    from ..io.files import atomic_write_text, refuse_clobber, refuse_overwriting_inputs

    status, failures = fit_status(results, out.strict)
    write_files = status == 0 or out.keep_failed_output
    K = getattr(results, "n_levels", 2)
    opts = results.analysis.design.spec.options
    meta = run_meta(results, source_text, level1, level2, model_file, higher)
    if K == 2:
        residuals = {1: opts.residuals_l1, 2: opts.residuals_l2}
    else:
        given = tuple(opts.residuals) + (None,) * (K - 1 - len(opts.residuals))
        residuals = {1: out.residuals_l1, **{k: path for k, path in enumerate(given, start=2)}}
    if out.timestamp:
        from datetime import datetime, timezone

        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    results.meta.update(meta)
    typed = {k: getattr(out, f"residuals_l{k}", None) for k in residuals}
    if _hlm_names_given() and K > 2:
        raise _UsageProblem("--hlm-names: HLM 7's column names of the residual files are known for two-level "
                            "files only; drop it for a model of three or four levels")
    if _hlm_names_given() and not any(residuals.values()):
        raise _UsageProblem("--hlm-names names the residual files' columns; give --residuals-l1 or --residuals-l2 too")
    if out.keep and not any(residuals.values()):
        raise _UsageProblem("--keep names columns for the residual files; give --residuals-l1 or --residuals-l2 too")
    if write_files and any(residuals.values()):
        for level, path in residuals.items():
            if path:
                refuse_overwriting_inputs(path, sources)
                if not typed[level]:  # a name from the .hlm file
                    refuse_clobber(path, out.force, Path(model_file).name)
        if K == 2:
            results.write_residuals(residuals[1], residuals[2], keep=out.keep, hlm_names=_hlm_names_given())
        else:
            results.write_residuals(residuals[1], residuals[2], keep=out.keep,
                                    more={k: residuals[k] for k in range(3, K + 1)})
    if out.out_format == "json":
        text = results.to_json()
    elif out.out_format == "text":
        text = results.summary(ascii=_use_ascii(out.ascii_only) if not out.output else out.ascii_only)
    else:
        text = results.table(out.out_format, options=out.table)
    if out.json_out and write_files:
        atomic_write_text(out.json_out, results.to_json())
    if out.output and write_files:
        atomic_write_text(out.output, text)
    elif not out.output:
        click.echo(text, nl=False)
    if not out.quiet:
        for message in results.warnings + failures + ([] if out.strict else results.boundary_notes):
            _stderr(f"hlmcli: warning: {message}")
        unwritten = [p for p in (out.output, out.json_out, *residuals.values()) if p and not write_files]
        if unwritten:
            _stderr(f"hlmcli: {', '.join(map(str, unwritten))} not written because the fit is not certified; "
                    "pass --keep-failed-output to write it anyway")
    if status:
        sys.exit(status)


def run_meta(results, source_text, level1, level2, model_file, higher=()) -> dict:
    """What the text and JSON say about the run: the data, title, unit ids and the model as given."""
    K = getattr(results, "n_levels", 2)
    opts = results.analysis.design.spec.options
    command_file = Path(model_file).name if model_file and str(model_file).lower().endswith(".hlm") else None
    if K == 2:
        return {"data_source": source_text, "title": opts.title, "id_name": results.archive.level1_id,
                "model_given": model_given(level1, level2, model_file), "command_file": command_file}
    ids = list(results.archive.id_names)
    meta = {"data_source": source_text, "title": opts.title, "ids": ids}
    if K == 3:
        meta.update({"id2": ids[0], "id3": ids[1], "command_file": command_file,
                     "model_given": model_given(level1, level2, model_file, list(higher[0]))})
    else:
        meta["model_given"] = {"level1": level1, "level2": list(level2), "level3": list(higher[0]),
                               "level4": list(higher[1]), "model_file": Path(model_file).name if model_file else None}
    return meta


def fit_status(results, strict: bool) -> tuple[int, list[str]]:
    """The exit status of a finished fit and why: 3 when it is not certified (or, with --strict, on the boundary)."""
    from ..errors import EXIT_NOT_CONVERGED

    failures = list(results.failures)
    if strict and results.boundary_notes:
        failures += (["--strict: " + "; ".join(results.boundary_notes)] if results.hglm else results.boundary_notes)
    return (EXIT_NOT_CONVERGED if failures else 0), failures


def _fit_summarised(data, level1, level2, model_file, ml, more, tau, df_method, tests, title, max_iterations,
                    compare_deviance, compare_params, test_homogeneity, full_output, ols_units, out: OutputOptions,
                    build_opts: dict, unsupported: dict, scheduler=None, constraints=()) -> None:
    """`hlmcli fit` by the stream or dask engine, or from a statistics archive: the per-unit summary
    (engines.py), the same spec, fit and ending as in memory."""
    from ..analysis.engines import analyse_summary_with_extras, summary_for_fit
    from ..results import Results

    engine = more["engine"]
    warn = (lambda m: None) if out.quiet else (lambda m: _stderr(f"hlmcli: warning: {m}"))
    fit = _fit_options(ml, more["reml"], tau=tau, df_method=df_method, tests=tests, max_iterations=max_iterations,
                       compare_deviance=compare_deviance, compare_params=compare_params,
                       test_homogeneity=test_homogeneity, full_output=full_output, ols_units=ols_units)
    from ..capabilities import hglm_asked

    if hglm_asked(fit):
        _refuse_hglm_summarised(engine, data)
    ids = (None, None)
    if len(data) == 2:
        opts = make_build_options(build_opts["id_"], build_opts["id1"], build_opts["id2"], None, None,
                                  build_opts["missing"], build_opts["drop_unmatched"])
        ids = (opts.id1, opts.id2)
    spec, summary, frame, source_text = summary_for_fit(
        data, engine, scheduler, ids, build_opts["drop_unmatched"], build_opts["missing"],
        build_opts.get("file_format"), build_opts.get("delimiter"),
        lambda frame: _checked_hglm(_spec(frame, level1, level2, model_file, None, fit=fit,
                                          allow_outside=more["allow_outside"], extra={"title": title}),
                                    fit, out, engine),
        unsupported, warn, progress=_progress_wanted(out.quiet))
    if not spec.family.linear:  # PQL, Laplace or AGQ over blocks of whole units (capabilities.check)
        if engine == "dask":
            from ..analysis.hglm_dask import fit_hglm_dask

            analysis = fit_hglm_dask(spec, summary, data[0], frame.id_names[0], scheduler, build_opts.get("delimiter"),
                                     fit.tests, progress=_progress_wanted(out.quiet))
        else:
            from ..analysis.hglm_stream import fit_hglm_stream

            analysis = fit_hglm_stream(spec, summary, data[0], frame.id_names[0], build_opts.get("file_format"),
                                       build_opts.get("delimiter"), fit.tests)
    else:
        analysis = analyse_summary_with_extras(spec, summary, fit.df_method, fit.tests, constraints)
    results = Results(analysis, frame, {"warn": warn, "source_files": None})
    finish(results, out, [], source_text=source_text, level1=level1, level2=level2, model_file=model_file)


def _summarised_kind(fit) -> str:
    """The capabilities column of a fit by --engine stream/dask, from its options alone (before any data)."""
    from ..capabilities import hglm_asked

    if not hglm_asked(fit):
        return "linear-summary"
    est = getattr(fit.estimation, "value", fit.estimation) or "pql"
    return "hglm-stream" if est in ("laplace", "agq") else est


def _checked_hglm(spec, fit, out, engine: str):
    """A streamed HGLM's options against the capabilities table (what the records' pass cannot give),
    before the pass over the records; a linear spec is checked by summary_for_fit."""
    if not spec.family.linear:
        from ..capabilities import check as check_capabilities

        check_capabilities(spec, fit, out, engine)
    return spec


def _refuse_hglm_summarised(engine: str, data) -> None:
    """An HGLM from a statistics archive: refused in one line before any pass."""
    from ..errors import RefusedOption

    if len(data) == 1:
        raise RefusedOption("--family: not available for a statistics archive: it keeps per-unit moments, and an HGLM's "
                            "likelihood needs the records; fit from the data files with --engine stream or dask")


@main.command("capabilities")
def capabilities_cmd():
    """Print what each kind of two-level model supports (the README's table), with each refusal's reason."""
    from ..capabilities import markdown_table

    click.echo(markdown_table(), nl=False)


@main.command("man")
def man_cmd():
    """Show the manual page (the same as 'man hlmcli')."""
    import shutil
    import subprocess

    page = _man_page()
    if page is None:
        raise click.ClickException("the manual page is not installed; see man/hlmcli.1 in the source")
    if sys.stdout.isatty() and shutil.which("man"):
        sys.exit(subprocess.call(["man", "-l", str(page)]))
    click.echo(page.read_text(encoding="utf-8"), nl=False)


def _man_page():
    """The page in a source checkout, else where pip installed it (<prefix>/share/man/man1)."""
    candidates = [Path(__file__).resolve().parent.parent.parent / "man" / "hlmcli.1",
                  Path(sys.prefix) / "share" / "man" / "man1" / "hlmcli.1",
                  Path(sys.base_prefix) / "share" / "man" / "man1" / "hlmcli.1"]
    return next((p for p in candidates if p.is_file()), None)


@main.group("cache")
def cache_group():
    """List or prune the archives cached by 'hlmcli fit L1 L2'."""


@cache_group.command("list")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="The cache folder (default as for fit).")
@user_errors
def cache_list(cache_dir):
    """List cached archives: file, size, last use and the data they were built from."""
    import time

    from ..io.cache import indexed_names, list_cache
    from ..report.report import printable

    folder, entries = list_cache(cache_dir)
    ours = indexed_names(cache_dir)
    click.echo(f"cache folder: {printable(str(folder))}")
    total = 0
    for e in entries:
        total += e.size
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime))
        what = ", ".join(printable(s) for s in e.sources) if e.readable else "(unreadable)"
        if e.path.name not in ours:
            what += "  (not written by this cache: 'hlmcli cache prune' leaves it alone)"
        click.echo(f"{e.path.name}  {e.size:>12,d} bytes  {used}  {what}")
    click.echo(f"{len(entries)} archive(s), {total:,d} bytes")


class _Days(click.ParamType):
    """A finite number of days, 0 or more: nan would compare false with every age (and delete all)."""

    name = "days"

    def convert(self, value, param, ctx):
        import math

        try:
            days = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of days", param, ctx)
        if not math.isfinite(days) or days < 0:
            self.fail(f"{value!r} is not a finite number of days, 0 or more", param, ctx)
        return days


_DAYS = _Days()


@cache_group.command("prune")
@click.option("--older-than", "older_than", type=_DAYS, metavar="DAYS",
              help="Remove only archives not used for DAYS days (default: remove all).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="The cache folder (default as for fit).")
@user_errors
def cache_prune(older_than, cache_dir):
    """Remove cached archives (and temp files left by killed runs)."""
    from ..io.cache import prune_cache
    from ..report.report import printable

    folder, removed, freed = prune_cache(cache_dir, older_than)
    click.echo(f"removed {removed} file(s), {freed:,d} bytes, from {printable(str(folder))}")


def _refuse_weighted_likelihood_ratio(compare_deviance, model_file):
    """A pseudo-likelihood fit (sampling weights) gets Wald tests, never a likelihood-ratio test."""
    from ..errors import ModelError
    from ..data.weights import NO_LIKELIHOOD_RATIO

    if compare_deviance is not None:
        raise _UsageProblem(f"--compare-deviance: {NO_LIKELIHOOD_RATIO}")
    raise ModelError(f"{Path(model_file).name}: deviance: asks for a likelihood-ratio test; {NO_LIKELIHOOD_RATIO}")


def _fit_combined(archive, source_text, spec, data, model_file, level1, level2, out_format, output, timestamp,
                  df_method, ascii_only, wspec, plausible_values, imputed, full_output, build_opts, cache_dir, quiet,
                  keep_failed_output=False, hypotheses=(), json_out=None, allow_unequal=False, table_options=None,
                  hmlm=(None, None), constrain=()):
    """Plausible values (one archive, several outcome columns) or imputed files (several archives):
    one fit each, combined with Rubin's rules (plausible.py); --test by D1. hmlm: --level1-covariance and
    --occasion, each fit an HMLM one (analysis/hmlm.py) and its structured fits combined too. constrain:
    --constrain's restrictions, each linear fit constrained (capabilities.check refused the other kinds)."""
    from ..errors import EXIT_NOT_CONVERGED
    from ..io.files import atomic_write_text
    from ..analysis.pipeline import analyse
    from ..analysis.plausible import analyse_plausible, combined_tests, outcome_columns, same_records
    from ..report.report_combined import combined_json, combined_text
    from ..report.report import Symbols, dumps_json

    opts = spec.options
    if plausible_values and imputed:
        raise click.UsageError("give --plausible-values or --imputed, not both")
    if opts.residuals_l1 or opts.residuals_l2 or opts.prior_deviance is not None or opts.homogeneity:
        raise click.UsageError("residual files, deviance comparisons and the homogeneity test are not available for "
                               "combined fits (a deviance difference has no Rubin's rule: use --test, combined by D1); "
                               "fit one plausible value or data set at a time for those")
    weights = wspec if wspec.any else None
    labels = None
    hglm = not spec.family.linear
    if hglm:  # binary, binomial, count outcomes: one HGLM fit each (analysis/hglm_combined.py)
        from ..analysis.hglm_combined import analyse_hglm_one, analyse_hglm_plausible, combined_tests_hglm
        from ..report.report_hglm_combined import combined_json_hglm, combined_text_hglm

        def analyse_plausible(spec, archive, outcomes, df_method, weights):  # noqa: F811
            return analyse_hglm_plausible(spec, archive, outcomes, level1, weights)

        def analyse(spec, archive, df_method, weights=None):  # noqa: F811
            return analyse_hglm_one(spec, archive, level1, weights)
    if any(hmlm):
        from ..analysis.hmlm import analyse_hmlm, analyse_hmlm_plausible, combine_structured

        if not all(hmlm):
            raise click.UsageError("--level1-covariance and --occasion go together: the structure of the "
                                   "within-person covariance and the level-1 variable holding each record's occasion")

        def analyse_plausible(spec, archive, outcomes, df_method, weights):  # noqa: F811
            return analyse_hmlm_plausible(spec, archive, outcomes, *hmlm, df_method)

        def analyse(spec, archive, df_method, weights=None):  # noqa: F811
            return analyse_hmlm(spec, archive, *hmlm, df_method)
    constraints = None
    if constrain:  # each fit on X·H (analysis/constrained.py), its ties' test left out (constraint_records)
        from functools import partial

        from ..analysis.constrained import analyse_constrained, parse_constraints

        constraints = parse_constraints(constrain, spec)
        analyse_plausible = partial(analyse_plausible, constraints=constraints)  # noqa: F811

        def analyse(spec, archive, df_method, weights=None):  # noqa: F811
            return analyse_constrained(spec, archive, constraints, df_method, weights)
    if plausible_values:
        outcomes = outcome_columns(plausible_values, list(archive.level1_names), archive)
        analyses = analyse_plausible(spec, archive, outcomes, df_method, weights)
        source = "plausible values"
    else:
        extra = [p.strip() for item in imputed for p in item.split(",") if p.strip()]
        archives, labels = [archive], [source_text]
        for path in extra:
            more, text = _load_data((path,) if len(data) == 1 else (path, data[1]), build_opts, cache_dir, quiet)
            archives.append(more)
            labels.append(text)
        analyses = [analyse(spec, a, df_method, weights=weights) for a in archives]
        if not allow_unequal:
            same_records(analyses, labels)
        source = "imputed data sets"
    meta = {"data_source": source_text, "title": opts.title, "id_name": archive.level1_id,
            "model_given": model_given(level1, level2, model_file)}
    if timestamp:
        from datetime import datetime, timezone

        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if hglm:
        tests = combined_tests_hglm(analyses, hypotheses) if hypotheses else None
        doc = combined_json_hglm(analyses, meta, source, labels, tests)
    else:
        structured = None
        if any(hmlm):  # the tests are the structured model's unless it is the homogeneous one printed first
            own = hmlm[0] != "homogeneous"
            structured = combine_structured(analyses, hypotheses if own else ())
            hypotheses = () if own else hypotheses
        tests = combined_tests(analyses, hypotheses, robust_only=weights is not None,
                               constraints=constraints) if hypotheses else None
        doc = combined_json(analyses, meta, source, bool(full_output), labels, tests, structured)
    if out_format == "json":
        text = dumps_json(doc)
    elif out_format == "text" and hglm:
        text = combined_text_hglm(analyses, meta, Symbols(_use_ascii(ascii_only) if not output else ascii_only), source,
                                  labels, tests, bool(full_output))
    elif out_format == "text":
        text = combined_text(analyses, meta, Symbols(_use_ascii(ascii_only) if not output else ascii_only), source,
                             bool(full_output or opts.full_output), labels, tests, structured)
    else:
        from ..report.tables import TableOptions, combined_table

        text = combined_table(doc, out_format, table_options or TableOptions())
    certified = all(a.converged if hglm else a.result.converged for a in analyses)
    if json_out and (certified or keep_failed_output):
        atomic_write_text(json_out, dumps_json(doc))
    if output and (certified or keep_failed_output):
        atomic_write_text(output, text)
    elif not output:
        click.echo(text, nl=False)
    if not certified:
        if not quiet:
            unwritten = [f for f in (output, json_out) if f]
            _stderr("hlmcli: warning: the optimum of at least one fit is not certified"
                    + (f"; {', '.join(map(str, unwritten))} not written (--keep-failed-output writes it)"
                       if unwritten and not keep_failed_output else ""))
        sys.exit(EXIT_NOT_CONVERGED)


@main.command("compare")
@click.argument("fit_a", type=click.Path())
@click.argument("fit_b", type=click.Path())
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@user_errors
def compare_cmd(fit_a, fit_b, out_format):
    """Compare two saved JSON fits (A the simpler): deviance test and variance explained."""
    from ..report.compare import compare_fits, compare_text, read_fit
    from ..report.report import dumps_json

    result = compare_fits(read_fit(fit_a), read_fit(fit_b), Path(fit_a).name, Path(fit_b).name)
    click.echo(dumps_json(result) if out_format == "json" else compare_text(result), nl=False)


@main.command("plot", epilog=EXAMPLES["plot"])
@click.argument("kind", type=click.Choice(["equation", "units", "shrinkage", "caterpillar", "diagnostics", "eb-ols"]))
@functools.partial(model_options, leave_out=_PLOT_LEAVES_OUT)
@click.option("-o", "--output", required=True, type=click.Path(), help="The picture to write: .png, .svg or .pdf.")
@click.option("--x", "x_var", help="equation, units: the level-1 predictor on the x axis (default: the first).")
@click.option("--by", multiple=True, help="equation: a level-2 predictor to draw lines for (its values, or its "
              "25th and 75th percentiles). Repeat; the first sets the colours. Default: those in the equations.")
@click.option("--coef", help="shrinkage, caterpillar, diagnostics, eb-ols: the random coefficient (default: the intercept).")
@click.option("--sample", type=click.IntRange(1), help="units: draw a random sample of this many units.")
@click.option("--seed", type=int, default=1, show_default=True, help="units: the seed of that sample.")
@click.option("--x-range", help="equation from a saved JSON fit: LOW,HIGH of the x axis on the model's scale (default -2,2).")
@click.option("--json-out", type=click.Path(), help="Also save the fit that was drawn, as 'fit --format json' writes it.")
@click.option("-q", "--quiet", is_flag=True, help="No warnings on stderr.")
@no_follow_option
@user_errors
def plot_cmd(kind, data, level1, level2, model_file, ml, id_, id1, id2, missing, drop_unmatched, cache_dir,
             output, x_var, by, coef, sample, seed, x_range, json_out, quiet, **more):
    """Draw a fitted model: equation graph, unit lines, shrinkage, caterpillar, diagnostics, or EB against OLS."""
    from ..io.files import check_outputs, commit_outputs
    from ..report.plots import check_output
    from ..results import Results

    check_output(output)
    formula = click.get_current_context().meta.get("formula")
    if formula:
        from ..language.formula import crossed

        model = crossed(formula)
        if model is not None:  # cross-classified: cli/crossed.py
            from .crossed import plot_crossed_command

            return plot_crossed_command(kind, data, formula, model, _fit_options(ml, more.get("reml")), output,
                                        coef, json_out, quiet, more, _stderr)
    from .flags import check_plot_options

    from .flags import check_archive_options

    saved = len(data) == 1 and str(data[0]).lower().endswith(".json")
    check_plot_options(_given_options(), kind, saved)
    check_archive_options(_given_options(), Path(data[0]).name if len(data) == 1 and not saved else None)
    from .levels import is_many_levels, is_three_level
    if is_many_levels(data, more) or is_three_level(data, more):
        from ..report.plots import refuse_levels_plot

        refuse_levels_plot(kind, 4 if is_many_levels(data, more) else 3, list(by))
        family = click.get_current_context().meta.get("hglm", {}).get("family")
        if family is not None and str(getattr(family, "value", family)).lower() != "normal":
            from ..capabilities import THREE_LEVEL_HGLM, THREE_LEVEL_LAPLACE, refuse, refuse_family

            if is_many_levels(data, more):
                refuse_family(4, FitOptions(family=FamilyName(str(getattr(family, "value", family)).lower())))
            est = click.get_current_context().meta.get("hglm", {}).get("estimation")
            refuse("plot", THREE_LEVEL_LAPLACE if str(getattr(est, "value", est)).lower() == "laplace" else THREE_LEVEL_HGLM)
            if kind == "diagnostics":  # the plots of a normal model's residuals
                from ..errors import RefusedOption
                from ..report.plots import HGLM_LEVELS_DIAGNOSTICS

                raise RefusedOption(HGLM_LEVELS_DIAGNOSTICS)
        model = {"level1": level1, "level2": level2, "level3": more.get("level3"), "level4": more.get("level4"),
                 "model_file": model_file, "allow_outside": more.get("allow_outside")}
        build = {"id_": id_, "id1": id1, "id2": id2, "id3": more.get("id3"), "id4": more.get("id4"),
                 "l1_vars": more.get("l1_vars"), "l2_vars": more.get("l2_vars"), "l3_vars": more.get("l3_vars"),
                 "l4_vars": more.get("l4_vars"), "missing": missing, "drop_unmatched": drop_unmatched,
                 "file_format": more.get("file_format"), "delimiter": more.get("delimiter")}
        return _plot_levels(kind, data, model, build, cache_dir, _fit_options(ml, more.get("reml")),
                            OutputOptions(output=output, json_out=json_out, quiet=quiet), output,
                            {"x": x_var, "by": list(by) or None, "coef": coef, "sample": sample, "seed": seed})
    check_outputs([("-o", output), ("--json-out", json_out)], list(data) + [model_file])
    from ..analysis.engines import is_stats_archive

    if len(data) == 1 and is_stats_archive(data[0]):
        from ..capabilities import refuse

        refuse("plot", "linear-summary")
    if len(data) == 1 and str(data[0]).lower().endswith(".json"):
        _plot_saved_fit(kind, data[0], output, x_var, by, x_range)
        commit_outputs()
        if not quiet:
            _stderr(f"hlmcli: wrote {output}")
        return
    # the fit that `hlmcli fit` makes of the same arguments: the same options, table and engine
    from ..capabilities import check as check_capabilities
    from ..api import analyse_model

    fit = _fit_options(ml, more["reml"])
    archive, source_text = _load_data(data, _build_opts(id_, id1, id2, missing, drop_unmatched, **more), cache_dir, quiet)
    spec = _spec(archive, level1, level2, model_file, None, fit=fit, allow_outside=more["allow_outside"])
    from .flags import check_model_options

    o = spec.options
    check_model_options(_given_options(), family=o.family, estimation=o.estimation if o.family != "normal" else None,
                        full_output=bool(o.full_output), prior_deviance=o.prior_deviance is not None)
    check_capabilities(spec, fit, OutputOptions(json_out=json_out, quiet=quiet))
    meta = {"data_source": source_text, "title": spec.options.title, "id_name": archive.level1_id,
            "model_given": model_given(level1, level2, model_file),
            "command_file": Path(model_file).name if model_file and str(model_file).lower().endswith(".hlm") else None}
    results = Results(analyse_model(spec, archive, fit, level1), archive, meta)
    status, failures = fit_status(results, strict=False)
    results.plot(kind, output, x=x_var, by=list(by) or None, coef=coef, sample=sample, seed=seed)
    if json_out and not status:
        from ..io.files import atomic_write_text

        atomic_write_text(json_out, results.to_json())
    commit_outputs()
    if not quiet:
        for message in failures + results.boundary_notes:
            _stderr(f"hlmcli: warning: {message}")
        _stderr(f"hlmcli: wrote {output}" + (f" and {json_out}" if json_out and not status else ""))
        if json_out and status:
            _stderr(f"hlmcli: {json_out} not written because the fit is not certified")
    if status:
        sys.exit(status)


def _plot_levels(kind, data, model: dict, build: dict, cache_dir, fit: FitOptions, out: OutputOptions, output,
                 options: dict) -> None:
    """`hlmcli plot` of a model of three or four levels: the fit that `hlmcli fit` makes of the same
    arguments (levels.levels_results), drawn; --json-out saves it when it is certified."""
    from ..io.files import atomic_write_text, commit_outputs
    from .levels import levels_results

    results, _, source_text, equations = levels_results(data, model, fit, out, build, cache_dir, _stderr)
    results.meta.update(run_meta(results, source_text, model["level1"], equations[1], model["model_file"],
                                 equations[2:]))
    status, failures = fit_status(results, strict=False)
    results.plot(kind, output, **options)
    if out.json_out and not status:
        atomic_write_text(out.json_out, results.to_json())
    commit_outputs()
    if not out.quiet:
        for message in failures + results.boundary_notes:
            _stderr(f"hlmcli: warning: {message}")
        _stderr(f"hlmcli: wrote {output}" + (f" and {out.json_out}" if out.json_out and not status else ""))
        if out.json_out and status:
            _stderr(f"hlmcli: {out.json_out} not written because the fit is not certified")
    if status:
        sys.exit(status)


def _plot_saved_fit(kind, path, output, x_var, by, x_range):
    """A saved JSON fit holds the γs but no data: enough for the equation graph, given the values."""
    from ..report.compare import read_fit
    from ..report.plots import plot_equation_from_fit

    if kind != "equation":
        raise _UsageProblem(f"a {kind} plot needs the data (unit estimates); give the archive or the data files "
                            "and the model, not a saved JSON fit")
    at = {}
    for item in by:
        name, sep, values = item.partition("=")
        try:
            at[name.strip()] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            at[name.strip()] = []
        if not sep or not at[name.strip()]:
            raise _UsageProblem(f"--by {item}: with a saved JSON fit give the values too, e.g. --by SECTOR=0,1")
    low_high = (-2.0, 2.0)
    if x_range:
        try:
            low, high = (float(v) for v in x_range.split(","))
        except ValueError:
            raise _UsageProblem(f"--x-range {x_range}: give LOW,HIGH, e.g. --x-range=-3,3") from None
        low_high = (low, high)
    plot_equation_from_fit(read_fit(path), output, x_var, at, low_high)


@main.command("table", epilog=EXAMPLES["table"])
@click.argument("fits", nargs=-1, required=True, type=click.Path())
@click.option("--format", "out_format", type=click.Choice(["markdown", "latex", "html", "csv"]), default="markdown",
              show_default=True)
@click.option("--names", help="Column headings, comma-separated (default: the file names without .json).")
@click.option("-o", "--output", type=click.Path(), help="Write the table here (atomically) instead of stdout.")
@paper_table_options
@no_follow_option
@user_errors
def table_cmd(fits, out_format, names, output, **more):
    """Saved JSON fits side by side: coefficients (SEs), variance components, deviance, AIC, BIC, N, J."""
    from ..report.compare import read_fit
    from ..io.files import atomic_write_text, check_outputs
    from ..report.tables import side_by_side_text

    check_outputs([("-o", output)], list(fits))
    headings = list(split_names(names) or [Path(f).stem for f in fits])
    if len(headings) != len(fits):
        raise _UsageProblem(f"--names gives {len(headings)} names for {len(fits)} fits")
    text = side_by_side_text([read_fit(f) for f in fits], headings, out_format, _table_options(more, out_format))
    if output:
        atomic_write_text(output, text)
    else:
        click.echo(text, nl=False)


@main.command("explain")
@click.argument("fit_json", type=click.Path())
@click.argument("hlm_output", type=click.Path())
@click.argument("data", nargs=-1, type=click.Path())
@click.option("--id", "id_", help="Unit id column, when DATA is two files (as for fit).")
@click.option("--model", "model_file", type=click.Path(), help="The model file FIT_JSON was fitted from, if it was (.hlm or equations).")
@click.option("--format", "out_format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Where cached archives go (as for fit).")
@user_errors
def explain_cmd(fit_json, hlm_output, data, id_, model_file, out_format, cache_dir):
    """Explain why HLM's printed numbers differ from a certified fit (FIT_JSON, from `fit --format json`).

    HLM_OUTPUT is HLM's own output file (HLM 5, 6 or 7; text or HTML). DATA are the data FIT_JSON was fitted
    to (an archive, or two files with --id); by default the files FIT_JSON names, next to it."""
    import json

    from ..errors import DataError
    from ..engine.estimation import deviance_at
    from ..analysis.explain import explain
    from ..report.explain_report import explain_text
    from ..io.hlm_output import read_hlm_output
    from ..analysis.pipeline import analyse
    from ..report.report import data_hash, dumps_json

    from ..io.files import check_regular

    check_regular(fit_json, "JSON fit")
    check_regular(hlm_output, "HLM output file")
    try:
        fit = json.loads(Path(fit_json).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{fit_json}: not a fit's JSON ({_one_line(exc)}); save one with 'hlmcli fit ... --format json'") from None
    need = ("model", "method", "data_hash", "deviance", "sigma2", "tau", "fixed_effects")
    if not isinstance(fit, dict) or fit.get("schema") != 2 or any(k not in fit for k in need):
        raise DataError(f"{fit_json}: not a two-level linear fit's JSON (schema 2 with {', '.join(need)}); "
                        "explain compares two-level HLM2 output")
    hlm = read_hlm_output(hlm_output)
    if not data:
        source = str(fit.get("data_source") or "")
        names = [n.strip() for n in source.split(" and ")] if source else []
        folder = Path(fit_json).resolve().parent
        data = tuple(str(folder / n) for n in names if (folder / n).exists())
        if not data or len(data) != len(names):
            raise _UsageProblem(f"give the data {fit_json} was fitted to ({source or 'its data source is not recorded'}): "
                                "hlmcli explain FIT.json HLM_OUTPUT DATA...")
    given = fit["model"].get("given") or {}
    if given.get("model_file") and not model_file:
        candidate = Path(fit_json).resolve().parent / given["model_file"]
        if not candidate.exists():
            raise _UsageProblem(f"{fit_json} was fitted from the model file {given['model_file']}; give it with --model")
        model_file = str(candidate)
    archive, _ = _load_data(data, {"id_": id_, "id1": None, "id2": None, "missing": "analysis", "drop_unmatched": False,
                             "l1_vars": None, "l2_vars": None},
                            cache_dir, quiet=True)
    spec = _spec(archive, given.get("level1"), given.get("level2") or (), model_file, fit["method"] == "ML",
                 extra={"tau": fit.get("tau_structure")})
    analysis = analyse(spec, archive)
    if data_hash(analysis.design) != fit["data_hash"]:
        raise DataError(f"{', '.join(map(str, data))}: not the data {fit_json} was fitted to (their hash differs); "
                        "give the same files, or refit")
    method = analysis.result.method
    report = explain(hlm, fit, lambda s2, tau: deviance_at(s2, tau, analysis.stats, method),
                     n_records=analysis.design.n, n_units=analysis.design.n_units,
                     tau_order=list(fit.get("random_coefficients") or []))
    report = {"schema": 1, "kind": "explain", "fit": Path(fit_json).name, "hlm_output": Path(hlm_output).name, **report}
    click.echo(dumps_json(report) if out_format == "json" else explain_text(report), nl=out_format != "json")

