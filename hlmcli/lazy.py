"""Heavy modules imported where they are first used, not when hlmcli starts.

Start-up is most of what a user waits for: `hlmcli --version` should load no numerics, and a fit from
an archive needs neither pandas (readers, tables, DataFrames) nor scipy.stats. A module written
`pd = lazy("pandas")` instead of `import pandas as pd` keeps its body as it was; the import happens
at the first attribute looked up (`pd.read_csv`, `optimize.minimize`), once. tests/test_startup.py
checks which heavy modules each command loads.
"""

from __future__ import annotations

import sys
import types


def _load(name: str) -> types.ModuleType:
    # the import statement's path (not importlib.import_module), so `python -X importtime` lists the module
    __import__(name)
    return sys.modules[name]


class LazyModule(types.ModuleType):
    """Stands for the module `name` until an attribute is read, then becomes a copy of its namespace
    (later lookups are ordinary attribute reads, with no import machinery on a hot path)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = name

    def __getattr__(self, attr: str):
        module = _load(self.__dict__["_lazy_target"])
        self.__dict__.update(module.__dict__)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self.__dict__['_lazy_target']!r}>"


def lazy(name: str) -> types.ModuleType:
    """The module `name`, imported at its first use."""
    return sys.modules.get(name) or LazyModule(name)


def lazy_function(module: str, name: str):
    """The function `module.name`, imported at its first call (for `from module import name`)."""

    def call(*args, **kwargs):
        return getattr(_load(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def is_dataframe(obj) -> bool:
    """isinstance(obj, pandas.DataFrame) without importing pandas: if pandas was never imported,
    nothing can be a DataFrame."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(obj, pandas.DataFrame)
