"""engine/special_functions.py loads scipy.special's compiled ufuncs without the package's __init__ (and its
array-API layer). The functions must be scipy.special's own objects, so every p-value is the same bits, and
a later `import scipy.special` in the same process must work as usual. A fresh interpreter
is needed to see the loading itself: one subprocess checks all of it, a second the fallback."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from scipy import special as scipy_special

from hlmcli.engine import special_functions
from hlmcli.engine.special_functions import special

# t and χ² tails over the ranges the fits use: d.f. 1 … 1e7 (non-integer: Satterthwaite), statistics from
# 0 to far tails (p down to ~1e-300 and underflow), both signs for t.
DF = [1.0, 1.5, 2.0, 3.7, 10.0, 29.5, 158.0, 1e3, 7183.0, 1e5, 1e7]
T = [0.0, 1e-8, 0.3, 1.0, 1.96, 2.5, 5.0, 12.0, 37.5, 40.0, 100.0, 1e3, 1e6, 1e20]

FRESH = """
import json, sys
from hlmcli.engine.special_functions import special
df, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
import numpy as np
D, X = np.meshgrid(np.array(df), np.array(t))
values = {"stdtr": special.stdtr(D, -X).tolist(), "chdtrc": special.chdtrc(D, X * X).tolist(),
          "stdtrit": special.stdtrit(D, 0.975).tolist(), "erfc": special.erfc(X).tolist()}
loaded = {m: m in sys.modules for m in ("scipy.special", "scipy.special._ufuncs", "scipy._lib._array_api",
                                         "numpy.testing", "numpy.f2py")}
ours = {name: getattr(special, name) for name in ("stdtr", "chdtrc", "stdtrit", "erfc", "digamma", "gammaln", "expit",
                                                  "fdtrc", "ndtr", "ndtri")}
import scipy.special
same = {name: getattr(scipy.special, name) is f for name, f in ours.items()}
print(json.dumps({"values": values, "loaded": loaded, "same": same}))
"""


def _grid():
    D, X = np.meshgrid(np.array(DF), np.array(T))
    return D, X


def test_the_ufuncs_load_alone_and_are_scipy_specials_own():
    proc = subprocess.run([sys.executable, "-c", FRESH, json.dumps(DF), json.dumps(T)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # loaded without the package or its array-API layer (what made `import scipy.special` cost 0.15 s)
    assert out["loaded"] == {"scipy.special": False, "scipy.special._ufuncs": True, "scipy._lib._array_api": False,
                             "numpy.testing": False, "numpy.f2py": False}
    # the package imported afterwards exposes the very same ufunc objects (scipy.stats' t.sf and chi2.sf
    # call these two)
    # (every function hlmcli takes from special_functions)
    assert out["same"] == dict.fromkeys(("stdtr", "chdtrc", "stdtrit", "erfc", "digamma", "gammaln", "expit", "fdtrc",
                                         "ndtr", "ndtri"), True)
    # the values are scipy.special's, bit for bit, over the whole grid (extreme tails included)
    D, X = _grid()
    expected = {"stdtr": scipy_special.stdtr(D, -X), "chdtrc": scipy_special.chdtrc(D, X * X),
                "stdtrit": scipy_special.stdtrit(D, 0.975), "erfc": scipy_special.erfc(X)}
    for name, want in expected.items():
        got = np.array(out["values"][name])
        assert got.tobytes() == want.tobytes(), name
    # the grid reaches the tails it is meant to: p below 1e-300 and exact underflow
    p = np.array(out["values"]["chdtrc"])
    assert 0 < p[p > 0].min() < 1e-300 and (p == 0).any()


FALLBACK = """
import json, sys
class Refuse:  # the first attempt to import the ufunc module fails, as on a SciPy laid out otherwise
    tries = 0
    def find_spec(self, name, path=None, target=None):
        if name == "scipy.special._ufuncs" and not Refuse.tries:
            Refuse.tries += 1
            raise ImportError("refused")
        return None
sys.meta_path.insert(0, Refuse())
from hlmcli.engine.special_functions import special
f = special.stdtr
import scipy.special
print(json.dumps({"package": "scipy.special" in sys.modules, "same": scipy.special.stdtr is f,
                  "value": float(f(10.0, -3.0)), "refused": Refuse.tries}))
"""


def test_a_failed_load_falls_back_to_the_package():
    proc = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out == {"package": True, "same": True, "value": float(scipy_special.stdtr(10.0, -3.0)), "refused": 1}


def test_in_a_process_that_has_scipy_special_the_package_is_used():
    assert special_functions._load_ufuncs() is scipy_special
    assert special.chdtrc is scipy_special.chdtrc and special_functions.gammaln is scipy_special.gammaln
    assert special_functions.digamma is scipy_special.digamma


THREADS = """
import json, sys, threading
sys.setswitchinterval(1e-6)  # switch threads as often as possible, to meet the loading window
from hlmcli.engine import special_functions
errors = []
for trial in range(50):
    for name in [m for m in sys.modules if m == "scipy.special" or m.startswith("scipy.special.")]:
        del sys.modules[name]
    special = special_functions._Special("scipy.special")  # a fresh stand-in: nothing loaded or cached yet
    barrier = threading.Barrier(4)
    def use():
        barrier.wait()
        try:
            special.stdtr(3.0, -1.0), special.chdtrc(2.0, 1.0), special.erfc(1.0)
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))
    threads = [threading.Thread(target=use) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
print(json.dumps({"errors": errors[:3], "package": "scipy.special" in sys.modules}))
"""


def test_a_first_use_in_several_threads_at_once():
    """Threads that first touch the functions together: one loads while the others wait (without the lock,
    a thread took the bare stand-in in sys.modules for the package: AttributeError in most runs)."""
    proc = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"errors": [], "package": False}
