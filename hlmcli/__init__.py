"""hlmcli: two-level hierarchical linear models from the command line, the HLM 7 way.

The Python API is loaded on first use, so `import hlmcli` stays light:
`hlmcli.fit(...)` returns `hlmcli.Results` (see hlmcli.api); `hlmcli.compare(a, b)` tests two fits
and `hlmcli.table([a, b, c])` sets them side by side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .report import outputs as _report_outputs  # noqa: F401  installs the writers `Results` calls (views.py)
from .version import __version__

__all__ = ["fit", "fit_crossed", "compare", "table", "Results", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import compare, fit, fit_crossed, table
    from .results import Results


def __getattr__(name: str):
    if name == "fit":
        from .api import fit

        return fit
    if name in ("compare", "table", "fit_crossed"):
        from . import api

        return getattr(api, name)
    if name == "Results":
        from .results import Results

        return Results
    raise AttributeError(f"module 'hlmcli' has no attribute '{name}'")
