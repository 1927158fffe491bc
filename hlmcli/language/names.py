"""Lists of names as the options take them (--l1-vars, --keep, table's --names), read the same way by the
command line, the Python API and the loaders of three and more levels."""

from __future__ import annotations


def split_names(value: str | None) -> tuple[str, ...] | None:
    """A list of column names as the options take it (commas, semicolons or spaces between)."""
    if value is None:
        return None
    names = tuple(n for n in value.replace(";", ",").replace(" ", ",").split(",") if n)
    return names
