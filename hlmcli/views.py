"""What a `Results` shows of itself (its text, JSON document, tables and plots) is written by the report
layer, which sits above results in the layering (../shared/docs/architecture.md). So results.py does not
import it: the report layer installs its writers here (report/outputs.py, which the package imports
first, so every `Results` finds them), and `Results` calls them through `writers()`."""

from __future__ import annotations

from types import ModuleType

_writers: ModuleType | None = None


def install(writers: ModuleType) -> None:
    """Called once, by report/outputs.py, with itself."""
    global _writers
    _writers = writers


def writers() -> ModuleType:
    """The report layer's writers (report/outputs.py)."""
    if _writers is None:  # the package's __init__ imports report.outputs: not reached unless that is broken
        raise RuntimeError("hlmcli's report layer is not installed (hlmcli/__init__.py imports hlmcli.report.outputs)")
    return _writers
