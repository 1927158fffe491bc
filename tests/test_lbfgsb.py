"""engine/lbfgsb.py drives scipy's compiled L-BFGS-B without importing scipy.optimize: the iterates must
be scipy.optimize.minimize's own, bit for bit (answer, value, iteration and evaluation counts, message),
on the installed SciPy, for every kind of bound the engine passes and for a stop at maxiter."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize

from hlmcli.engine import lbfgsb


def rosenbrock(x):
    f = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] += -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return f, g


X0 = np.array([-1.2, 1.0, 0.3, 2.0, -0.5])
BOUNDS = {
    "none": None,
    "lower": [(0.0, None)] * 5,  # the engine's Cholesky diagonal
    "mixed": [(None, 0.5), (0.0, 2.0), (None, None), (-1.0, None), (0.0, None)],
}


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("options", [{"maxiter": 15000, "ftol": 1e-10, "gtol": 1e-7, "maxcor": 20},
                                     {"maxiter": 3, "ftol": 1e-13, "gtol": 1e-9, "maxcor": 20},
                                     {"maxiter": 500, "ftol": 1e-13, "gtol": 1e-6}])
def test_same_bits_as_scipy_minimize(bounds, options):
    ours = lbfgsb.minimize(rosenbrock, X0, BOUNDS[bounds], **options)
    theirs = optimize.minimize(rosenbrock, X0, jac=True, method="L-BFGS-B", bounds=BOUNDS[bounds], options=options)
    assert ours.x.tobytes() == theirs.x.tobytes()
    assert ours.fun == theirs.fun
    assert (ours.nit, ours.nfev, ours.message) == (theirs.nit, theirs.nfev, theirs.message)


def test_the_compiled_routine_is_used_where_the_driver_is_tested():
    """On a SciPy this driver repeats, the extension is what runs (so a fit imports no scipy.optimize);
    elsewhere the fallback is scipy.optimize.minimize itself."""
    if lbfgsb._scipy_version() in lbfgsb.TESTED:
        assert lbfgsb._extension() is not None
    else:
        assert lbfgsb._extension() is None


def test_fallback_is_scipy_minimize(monkeypatch):
    monkeypatch.setattr(lbfgsb, "_loaded", [None])
    ours = lbfgsb.minimize(rosenbrock, X0, BOUNDS["lower"], maxiter=50, ftol=1e-10, gtol=1e-7, maxcor=20)
    theirs = optimize.minimize(rosenbrock, X0, jac=True, method="L-BFGS-B", bounds=BOUNDS["lower"],
                               options={"maxiter": 50, "ftol": 1e-10, "gtol": 1e-7, "maxcor": 20})
    assert ours.x.tobytes() == theirs.x.tobytes() and ours.nit == theirs.nit


def test_an_infinite_value_is_passed_on_as_scipy_does():
    """The engine's objective returns inf where τ is not positive definite; the driver must treat it
    as scipy's does (here: a wall at x0 > 1 that the line search backs off from)."""

    def walled(x):
        if x[0] > 1.0:
            return np.inf, np.zeros_like(x)
        return rosenbrock(x)

    x0 = np.array([-1.0, 0.5])
    ours = lbfgsb.minimize(walled, x0, [(None, None), (0.0, None)], maxiter=200)
    theirs = optimize.minimize(walled, x0, jac=True, method="L-BFGS-B", bounds=[(None, None), (0.0, None)],
                               options={"maxiter": 200})
    assert ours.x.tobytes() == theirs.x.tobytes()
    assert (ours.fun, ours.nit, ours.nfev, ours.message) == (theirs.fun, theirs.nit, theirs.nfev, theirs.message)
