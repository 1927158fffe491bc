"""Errors a user can cause, each with one line that says what went wrong and what to do."""

from __future__ import annotations

# Exit codes shared by every command (documented in the man page).
EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3  # also: a fit that is not certified
EXIT_INTERNAL = 70  # a bug in hlmcli (EX_SOFTWARE); the message asks for a report
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); no output file was changed

# The same list for --help (click's '\b' keeps the lines as they are).
EXIT_CODES_HELP = ("\b\nExit status:\n"
                   f"  {EXIT_OK:<4} success\n"
                   f"  {EXIT_DATA:<4} data or model error (one line names the file, column or line)\n"
                   f"  {EXIT_USAGE:<4} usage error (unknown or conflicting options, missing argument, an\n"
                   f"       option this kind of fit does not take)\n"
                   f"  {EXIT_NOT_CONVERGED:<4} the optimum is not certified (or, with --strict, a boundary fit)\n"
                   f"  {EXIT_INTERNAL:<4} internal error: a bug in hlmcli; rerun with HLMCLI_DEBUG=1 and report it\n"
                   f"  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C); no output file was changed")


class HlmError(Exception):
    """A problem with the user's data, model or files. The CLI prints it as one line."""

    exit_code = EXIT_DATA

    def __init__(self, message: str):
        super().__init__(" ".join(message.split("\n")).strip())


class DataError(HlmError):
    """Bad or inconsistent input data."""


class ModelError(HlmError):
    """An equation or command file that cannot be turned into a model."""


class UsageError(HlmError):
    """Arguments that do not go together (exit 2, as click's usage errors)."""

    exit_code = EXIT_USAGE


class RefusedOption(ModelError):
    """An option (or a command file's setting) this kind of fit does not take, refused with the capabilities
    table's statistical reason: options that do not go together, so a usage error (exit 2) as the man page
    documents; a ModelError for the Python API."""

    exit_code = EXIT_USAGE


class OptionError(DataError):
    """An option that is missing or names what the data do not have (no --id, or --id FOO with no
    column FOO): a usage error, exit 2 as the man page documents; a DataError for the Python API."""

    exit_code = EXIT_USAGE


def text_column_error(name: str, file: str) -> DataError:
    """A column a model or an option names that its file holds as text: the build left it out of the
    variables (labels such as F/M are not numbers), so it is not "no such variable"."""
    return DataError(f"{file}: column {name} holds text (labels, not numbers), so it is not among the variables; "
                     f"recode it as numbers in {file} (e.g. 0 and 1 for two labels) and run again")


def first_few(items, k: int = 5) -> str:
    """The first k items for a message, with an ellipsis when there are more."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:k])
    return shown + (", …" if len(items) > k else "")


def install_hint(extra: str) -> str:
    """How to add an optional extra: hlmcli is installed from its source folder, not a package index."""
    return f"install it from hlmcli's source folder with: pip install '.[{extra}]'"
