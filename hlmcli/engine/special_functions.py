"""scipy.special's compiled functions (the t and χ² tails, erfc, stdtrit) without importing the package.

`import scipy.special` costs about 0.15 s of CPU, half a two-level fit from an archive: the package's
__init__ runs scipy's array-API layer (array_api_compat, array_api_extra), which imports numpy.testing,
numpy.f2py and numpy.ma. The functions themselves are numpy ufuncs in the extension module
`scipy.special._ufuncs`, which needs only its sibling extensions (_ufuncs_cxx, _special_ufuncs, _gufuncs,
_ellip_harm_2) and scipy._lib._ccallback. Loading it needs its parent package in sys.modules, for the
siblings' relative imports: a bare package object stands in while it loads (about 8 ms) and is removed
after, so a later `import scipy.special` runs the real __init__, which finds `_ufuncs` already imported
and exposes these same ufunc objects (for numpy input `scipy.special.stdtr is _ufuncs.stdtr`). The
numbers are therefore the same bits as scipy.special's and scipy.stats' (t.sf is stdtr, chi2.sf is
chdtrc); tests/test_special_functions.py checks both the identity and the values.

If scipy.special is already imported (a Python session, the tests), it is used; if loading the extension
on its own fails (another SciPy layout), scipy.special is imported normally: slower, the same answer.
First uses in several threads are serialised by a lock; an `import scipy.special` in another thread during
the load itself would still find the stand-in (Python's import system has no lock to hold for it).
`special.stdtr(...)` reads like the scipy.special call it stands for; `from .special_functions import
gammaln` gives the function itself.
"""

from __future__ import annotations

import os
import sys
import threading
import types

_PACKAGE = "scipy.special"
_UFUNCS = "scipy.special._ufuncs"
_ALIASES = {"digamma": "psi"}  # scipy.special's names for ufuncs the module holds under another name
# One thread loads at a time: while one holds the bare stand-in in sys.modules, another would take it for
# the package and find no ufuncs on it (AttributeError from a first use in two threads at once)
_LOADING = threading.RLock()


def _load_ufuncs() -> types.ModuleType:
    """scipy.special's ufunc module: the package if it is imported, else `_ufuncs` loaded on its own."""
    if _PACKAGE in sys.modules:
        return sys.modules[_PACKAGE]
    if _UFUNCS in sys.modules:
        return sys.modules[_UFUNCS]
    import scipy  # the package alone is light (numpy and a few small modules)

    before = set(sys.modules)
    stand_in = types.ModuleType(_PACKAGE)
    stand_in.__path__ = [os.path.join(os.path.dirname(scipy.__file__), "special")]
    stand_in.__package__ = _PACKAGE
    sys.modules[_PACKAGE] = stand_in
    try:
        # the import statement's path (not a spec from a file), so `python -X importtime` lists the module
        __import__(_UFUNCS)
        return sys.modules[_UFUNCS]
    except Exception:  # noqa: BLE001 - any failure means: import the package as usual
        for name in set(sys.modules) - before:
            if name.startswith(_PACKAGE + "."):
                del sys.modules[name]
    finally:
        if sys.modules.get(_PACKAGE) is stand_in:
            del sys.modules[_PACKAGE]
    import scipy.special

    return scipy.special


class _Special(types.ModuleType):
    """Stands for scipy.special: the first attribute read loads the ufuncs, later reads are plain lookups.
    A name the ufunc module lacks (a Python-level function of the package) comes from the package."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        with _LOADING:
            module = _load_ufuncs()
            value = getattr(module, _ALIASES.get(name, name), None)
            if value is None:
                import scipy.special

                value = getattr(scipy.special, name)
        self.__dict__[name] = value
        return value


special = _Special(_PACKAGE)


def __getattr__(name: str):
    """`from .special_functions import gammaln`: the ufunc, loaded at that import."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(special, name)
