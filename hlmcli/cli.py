"""Stage 9, cli: thin click commands that wire the stages together."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.argument("level1_file", required=False, type=click.Path(dir_okay=False))
@click.argument("level2_file", required=False, type=click.Path(dir_okay=False))
@build_options
@click.option("--template", type=click.Path(dir_okay=False), help="Build from an HLM 7 MDM template (.mdmt).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Archive to write (.mdm).")
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
@click.argument("archive_file", type=click.Path(dir_okay=False))
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


if __name__ == "__main__":  # pragma: no cover
    main()
