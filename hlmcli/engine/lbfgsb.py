"""L-BFGS-B as `scipy.optimize.minimize(method="L-BFGS-B", jac=True)` runs it, without importing
scipy.optimize.

Importing scipy.optimize costs about 0.45 s of CPU (it loads scipy.linalg, scipy.sparse and the
array-API layer), several times a two-level fit from an archive. The algorithm itself is one compiled
routine, `setulb`, in scipy.optimize's extension module `_lbfgsb`, which depends on nothing but numpy;
scipy's Python driver only feeds it f and g. For the SciPy versions whose driver this module repeats
step for step (TESTED), the extension is loaded from its file and driven here; for any other version,
or if loading fails, scipy.optimize.minimize runs instead. Either way the iterates, the answer, the
iteration count and the message are the same bits (tests/test_lbfgsb.py compares them with
scipy.optimize.minimize on the installed SciPy).

What the driver repeats (scipy/optimize/_lbfgsb_py.py, _differentiable_functions.ScalarFunction and
_optimize.MemoizeJac): f and g are evaluated once at x0 before the first call of setulb; setulb then
asks for f and g at a point (task 3, "FG"), which is evaluated unless it equals the last evaluated point
bit for bit; or reports a new iterate (task 1, "NEW_X"), counted against maxiter; or stops.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

# SciPy versions whose L-BFGS-B driver (setulb's signature, its task codes and the evaluation at x0)
# is the one below; 1.15 replaced the Fortran routine by the C one with this interface.
TESTED = {(1, 15), (1, 16), (1, 17)}

_STATUS = {0: "START", 1: "NEW_X", 2: "RESTART", 3: "FG", 4: "CONVERGENCE", 5: "STOP", 6: "WARNING", 7: "ERROR",
           8: "ABNORMAL"}
_TASK = {0: "", 301: "", 302: "", 401: "NORM OF PROJECTED GRADIENT <= PGTOL",
         402: "RELATIVE REDUCTION OF F <= FACTR*EPSMCH", 501: "CPU EXCEEDING THE TIME LIMIT",
         502: "TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT", 503: "PROJECTED GRADIENT IS SUFFICIENTLY SMALL",
         504: "TOTAL NO. OF ITERATIONS REACHED LIMIT", 505: "CALLBACK REQUESTED HALT",
         601: "ROUNDING ERRORS PREVENT PROGRESS", 602: "STP = STPMAX", 603: "STP = STPMIN",
         604: "XTOL TEST SATISFIED", 701: "NO FEASIBLE SOLUTION", 702: "FACTR < 0", 703: "FTOL < 0",
         704: "GTOL < 0", 705: "XTOL < 0", 706: "STP < STPMIN", 707: "STP > STPMAX", 708: "STPMIN < 0",
         709: "STPMAX < STPMIN", 710: "INITIAL G >= 0", 711: "M <= 0", 712: "N <= 0", 713: "N <= 0"}
_NAME = "scipy.optimize._lbfgsb"
_loaded: list = []  # [module or None], once


@dataclass
class LbfgsbResult:
    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    message: str


def _scipy_version() -> tuple[int, int] | None:
    import scipy  # the package alone is light (numpy and a few small modules)

    try:
        major, minor = scipy.__version__.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def _extension():
    """scipy.optimize's compiled L-BFGS-B module, or None where this driver does not apply."""
    if _loaded:
        return _loaded[0]
    module = sys.modules.get(_NAME)
    if module is None and _scipy_version() in TESTED:
        try:
            import scipy

            folder = os.path.join(os.path.dirname(scipy.__file__), "optimize")
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "_lbfgsb" + suffix)
                if os.path.exists(path):
                    spec = importlib.util.spec_from_file_location(_NAME, path)
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                    sys.modules[_NAME] = module  # as an import would: one copy if scipy.optimize comes later
                    break
        except (ImportError, OSError):
            module = None
    if module is not None and (_scipy_version() not in TESTED or not hasattr(module, "setulb")):
        module = None
    _loaded.append(module)
    return module


def minimize(fun: Callable, x0: np.ndarray, bounds: list[tuple[float | None, float | None]] | None = None, *,
             maxiter: int = 15000, ftol: float = 2.2204460492503131e-09, gtol: float = 1e-5,
             maxcor: int = 10, maxfun: int = 15000, maxls: int = 20) -> LbfgsbResult:
    """min fun(x) by L-BFGS-B, fun returning (f, g); bounds as scipy's old-style (lower, upper) pairs,
    None for no bound. The same result as scipy.optimize.minimize(fun, x0, jac=True,
    method="L-BFGS-B", bounds=bounds, options={...})."""
    ext = _extension()
    if ext is None:
        from scipy import optimize

        res = optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"maxiter": maxiter, "ftol": ftol, "gtol": gtol, "maxcor": maxcor,
                                         "maxfun": maxfun, "maxls": maxls})
        return LbfgsbResult(res.x, float(res.fun), int(res.nit), int(res.nfev), str(res.message))
    return _drive(ext.setulb, fun, x0, bounds, maxiter, ftol, gtol, maxcor, maxfun, maxls)


def _drive(setulb, fun, x0, bounds, maxiter, ftol, gtol, m, maxfun, maxls) -> LbfgsbResult:
    x0 = np.atleast_1d(np.asarray(x0))
    if x0.dtype.kind in "bBhHiIlLqQpP":
        x0 = np.asarray(x0, dtype=float)
    x0 = x0.ravel()
    n = x0.size
    low, up = np.full(n, -np.inf), np.full(n, np.inf)
    if bounds is not None:
        if len(bounds) != n:
            raise ValueError("length of x0 != length of bounds")
        low = np.array([-np.inf if lo is None else float(lo) for lo, _ in bounds])
        up = np.array([np.inf if hi is None else float(hi) for _, hi in bounds])
        if np.any(low == up):  # scipy removes fixed variables first; not a case this driver repeats
            raise ValueError("a variable fixed by its bounds")
        x0 = np.clip(x0, low, up)
    nbd = np.zeros(n, np.int32)
    low_bnd, upper_bnd = np.zeros(n), np.zeros(n)
    finite_lo, finite_up = ~np.isinf(low), ~np.isinf(up)
    low_bnd[finite_lo], upper_bnd[finite_up] = low[finite_lo], up[finite_up]
    # scipy's codes: 0 unbounded, 1 lower only, 2 both, 3 upper only
    nbd[finite_lo & ~finite_up] = 1
    nbd[finite_lo & finite_up] = 2
    nbd[~finite_lo & finite_up] = 3

    # the evaluation cache: fun is called only at a point that differs from the last one evaluated
    last_x = np.array(x0, dtype=np.float64)
    nfev = 1
    f_last, g_last = fun(np.copy(last_x))
    f_last = _scalar(f_last)
    g_last = np.atleast_1d(g_last)

    factr = ftol / np.finfo(float).eps
    x = np.array(x0, dtype=np.float64)
    f = np.array(0.0, dtype=np.float64)
    g = np.zeros((n,), dtype=np.float64)
    wa = np.zeros(2 * m * n + 5 * n + 11 * m * m + 8 * m, np.float64)
    iwa = np.zeros(3 * n, dtype=np.int32)
    task = np.zeros(2, dtype=np.int32)
    ln_task = np.zeros(2, dtype=np.int32)
    lsave = np.zeros(4, dtype=np.int32)
    isave = np.zeros(44, dtype=np.int32)
    dsave = np.zeros(29, dtype=np.float64)
    nit = 0
    while True:
        g = g.astype(np.float64)
        setulb(m, x, low_bnd, upper_bnd, nbd, f, g, factr, gtol, wa, iwa, task, lsave, isave, dsave, maxls,
               ln_task)
        if task[0] == 3:
            if not np.array_equal(x, last_x):
                last_x = np.array(x, dtype=np.float64)
                nfev += 1
                f_last, g_last = fun(np.copy(last_x))
                f_last = _scalar(f_last)
                g_last = np.atleast_1d(g_last)
            f, g = f_last, g_last
        elif task[0] == 1:
            nit += 1
            if nit >= maxiter:
                task[0], task[1] = 5, 504
            elif nfev > maxfun:
                task[0], task[1] = 5, 502
        else:
            break
    return LbfgsbResult(x, float(f), nit, nfev, _STATUS[int(task[0])] + ": " + _TASK[int(task[1])])


def _scalar(value):
    return value if np.isscalar(value) else np.asarray(value).item()
