"""Errors a user can cause, each with one line that says what went wrong and what to do."""

from __future__ import annotations

# Exit codes shared by every command (documented in the man page).
EXIT_OK = 0
EXIT_DATA = 1
EXIT_USAGE = 2
EXIT_NOT_CONVERGED = 3  # also: a fit that is not certified
EXIT_INTERNAL = 70  # a bug in hlmcli (EX_SOFTWARE); the message asks for a report


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
