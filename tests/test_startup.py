"""The start-up budget: which heavy modules each command imports (deterministic; speed lives in benchmarks/).

`--version` and `--help` load no numerics; a fit from an archive (two levels, three levels, HGLM, text or
JSON) loads neither pandas nor pyarrow, matplotlib, dask, jinja2, nor scipy.stats, and of scipy only what
it calls (special's compiled ufuncs, without the scipy.special package and its array-API layer; optimize
for a separation check's linear programme). One subprocess runs the commands in turn, each
in-process, and records sys.modules after each: modules only accumulate, so a command that breaks the
budget is the first one whose record shows the module. Two- and three-level fits load no scipy.optimize.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from conftest import DATA, HSB_MODELS, SAMPLE

HEAVY = ["numpy", "scipy", "scipy.stats", "scipy.optimize", "scipy.special", "scipy.special._ufuncs",
         "scipy._lib._array_api", "numpy.testing", "numpy.f2py", "numpy.ma", "scipy.integrate", "scipy.interpolate",
         "pandas", "pyarrow", "matplotlib", "dask", "distributed", "jinja2", "pyreadstat", "formulae", "openpyxl",
         "statsmodels", "tabulate", "jsonschema"]
NEVER_IN_A_FIT = {"pandas", "pyarrow", "matplotlib", "dask", "distributed", "jinja2", "scipy.stats", "scipy.special",
                  "scipy._lib._array_api", "numpy.testing", "numpy.f2py", "numpy.ma", "scipy.integrate",
                  "scipy.interpolate", "pyreadstat", "formulae", "openpyxl", "statsmodels", "tabulate", "jsonschema"}
# hlmcli's own modules that a two-level fit from an archive does not use (the engine of three or more levels,
# HCM2's notation, the CSV/SPSS readers): imported where used, they cost it no start-up
NOT_IN_A_TWO_LEVEL_FIT = ["hlmcli.engine.nested", "hlmcli.language.hcm2", "hlmcli.io.readers"]

# Runs each command through the CLI's own entry point, in order, in one fresh interpreter.
DRIVER = """
import contextlib, io, json, sys
commands, heavy, own = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
from hlmcli.cli import main
seen = []
for args in commands:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code or 0
    seen.append({"args": args, "exit": code, "stderr": err.getvalue()[-500:],
                 "loaded": [m for m in heavy if m in sys.modules], "own": [m for m in own if m in sys.modules]})
print(json.dumps(seen))
"""


def _build(*args) -> None:
    """An archive built in this process (pytest has pandas already; only the fits are measured)."""
    from hlmcli.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            assert not exc.code, f"building {args[2]} failed"


@pytest.fixture(scope="module")
def archives(tmp_path_factory, hsb_archive):
    root = tmp_path_factory.mktemp("startup")
    eg, contra = root / "eg.mdm", root / "contra.mdm"
    t = DATA / "three_level"
    _build("mdm", "build", t / "eg_l1.csv", t / "eg_l2.csv", t / "eg_l3.csv", "--id2", "CHILDID", "--id3", "SCHOOLID",
           "-o", eg)
    h = DATA / "hglm"
    _build("mdm", "build", h / "contra_l1.csv", h / "contra_l2.csv", "--id", "DISTRICT", "-o", contra)
    return {"hsb": hsb_archive, "eg": eg, "contra": contra}


def test_each_command_imports_only_what_it_uses(archives, tmp_path):
    level1, level2 = HSB_MODELS["hsb_m4"]
    m4 = ["-1", level1] + [a for eq in level2 for a in ("-2", eq)]
    eg = ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
          "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10"]
    contra = ["--family", "bernoulli", "-1", "USE = b0 + b1*URBAN + b2*AGE", "-2", "b0 = g00 + u0", "-2", "b1 = g10",
              "-2", "b2 = g20"]
    commands = {
        "version": ["--version"],
        "help": ["--help"],
        "fit --help": ["fit", "--help"],
        "mdm build --help": ["mdm", "build", "--help"],
        "mdm info": ["mdm", "info", str(archives["hsb"])],
        "two levels, text": ["fit", str(archives["hsb"])] + m4,
        "two levels, JSON saved": ["fit", str(archives["hsb"]), "--ml", "--format", "json", "-o",
                                   str(tmp_path / "m4.json")] + m4,
        "three levels": ["fit", str(archives["eg"])] + eg,
        "HGLM, PQL": ["fit", str(archives["contra"])] + contra,
        "HGLM, Laplace": ["fit", str(archives["contra"]), "--estimation", "laplace"] + contra,
        # last, the control case: reading a CSV does import pandas, and the record shows it
        "mdm build": ["mdm", "build", str(SAMPLE / "hsb" / "hsb1.csv"), str(SAMPLE / "hsb" / "hsb2.csv"), "--id", "ID",
                      "-o", str(tmp_path / "hsb.mdm")],
    }
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(list(commands.values())), json.dumps(HEAVY),
                           json.dumps(NOT_IN_A_TWO_LEVEL_FIT)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    seen = dict(zip(commands, json.loads(proc.stdout)))
    for name, record in seen.items():
        assert record["exit"] == 0, f"{name}: exit {record['exit']}: {record['stderr']}"
    # Nothing numerical before the first fit: --version, --help and the help of subcommands.
    for name in ("version", "help", "fit --help", "mdm build --help"):
        assert seen[name]["loaded"] == [], f"{name} imported {seen[name]['loaded']}"
    assert seen["mdm info"]["loaded"] == ["numpy"]
    # Linear fits run L-BFGS-B through scipy's compiled routine (engine/lbfgsb.py), not scipy.optimize,
    # which costs ~0.45 s of CPU to import; HGLM fits import it only for the separation check's linear
    # programme, which a finite GLM maximum makes unnecessary (separation.overlap_certified), as here.
    assert "scipy.optimize" not in seen["three levels"]["loaded"], seen["three levels"]["loaded"]
    # The t and χ² tails are scipy.special's compiled ufuncs, loaded without the package, whose __init__
    # (the array-API layer: numpy.testing, numpy.f2py) cost about 0.15 s of CPU (engine/special_functions.py).
    assert seen["two levels, text"]["loaded"] == ["numpy", "scipy", "scipy.special._ufuncs"]
    # A three-level fit's imports are no heavier than a two-level one's (text and JSON).
    assert seen["three levels"]["loaded"] == seen["two levels, JSON saved"]["loaded"] == seen["two levels, text"]["loaded"]
    # Fits load what they call, and never the heavy modules of reading, tables, plots or clusters.
    loaded = set(seen["HGLM, Laplace"]["loaded"])
    assert {"numpy", "scipy.special._ufuncs"} <= loaded
    assert "scipy.optimize" not in loaded, sorted(loaded)
    assert not loaded & NEVER_IN_A_FIT, f"a fit from an archive imported {sorted(loaded & NEVER_IN_A_FIT)}: " + \
        ", ".join(f"{n}: {sorted(set(r['loaded']) & NEVER_IN_A_FIT)}" for n, r in seen.items())
    assert "pandas" in seen["mdm build"]["loaded"]
    # The two-level fits (text, then JSON) ran before any other fit: modules they need not import are absent,
    # and the control case, the three-level fit after them, does load the nested engine.
    assert seen["two levels, JSON saved"]["own"] == [], seen["two levels, JSON saved"]["own"]
    assert "hlmcli.engine.nested" in seen["three levels"]["own"]
    # The command's output is still there: the saved JSON is a complete fit.
    assert json.loads((tmp_path / "m4.json").read_text())["fixed_effects"]

