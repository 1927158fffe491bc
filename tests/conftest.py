"""Shared fixtures: the sample data shipped in the repository, the reference numbers, and a CLI runner."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = json.loads((DATA / "hlm7_cases.json").read_text())

# Tests never touch the user's own cache: every run (in-process and through the CLI) gets a fresh one.
if "HLMCLI_TEST_KEEP_CACHE" not in os.environ:
    os.environ["HLMCLI_CACHE_DIR"] = os.path.join(tempfile.mkdtemp(prefix="hlmcli-test-"), "cache")

# The four HSB models of the reference file, as equations (ASCII form).
HSB_MODELS = {
    "hsb_m1": ("MATHACH = b0 + r", ["b0 = g00 + u0"]),
    "hsb_m2": ("MATHACH = b0 + r", ["b0 = g00 + g01*MEANSES + u0"]),
    "hsb_m3": ("MATHACH = b0 + b1*group(SES) + r", ["b0 = g00 + u0", "b1 = g10 + u1"]),
    "hsb_m4": ("MATHACH = b0 + b1*group(SES) + r", ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*SECTOR + u1"]),
}
POPULAR_MODEL = ("popular = b0 + b1*extrav + b2*sex + r", ["b0 = g00 + g01*texp + u0", "b1 = g10 + u1"])


# The CLI's subprocesses share one bytecode cache, outside the checkout. Where PYTHONDONTWRITEBYTECODE is
# set (common in containers) each would otherwise recompile every hlmcli module it imports: about 0.1 s of
# CPU per call, over hundreds of calls.
_PYCACHE = tempfile.mkdtemp(prefix="hlmcli-test-pyc-")
atexit.register(shutil.rmtree, _PYCACHE, ignore_errors=True)


def hlmcli(*args, cwd=None, check=False, input=None, hang_after=None):
    """Run the installed command exactly as a user types it. hang_after: seconds after which the command
    counts as hung (the test then fails); a guard against blocking, not a speed check."""
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
    cmd = [exe] if exe else [sys.executable, "-m", "hlmcli.cli"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPYCACHEPREFIX": _PYCACHE}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, input=input, env=env,
                          timeout=hang_after)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def hsb_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("hsb") / "hsb.mdm"
    hlmcli("mdm", "build", SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv", "--id", "ID", "-o", out, check=True)
    return out


@pytest.fixture(scope="session")
def popular_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("pop") / "popular2.mdm"
    hlmcli("mdm", "build", SAMPLE / "popular2" / "popular2_level1.csv", SAMPLE / "popular2" / "popular2_level2.csv",
           "--id", "class", "-o", out, check=True)
    return out


@pytest.fixture(scope="session")
def hsb_loaded(hsb_archive):
    from hlmcli.archive import load_archive

    return load_archive(hsb_archive)


@pytest.fixture(scope="session")
def popular_loaded(popular_archive):
    from hlmcli.archive import load_archive

    return load_archive(popular_archive)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)
