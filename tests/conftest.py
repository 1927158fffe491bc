"""Shared fixtures: the sample data shipped in the repository, the reference numbers, and a CLI runner."""

from __future__ import annotations

import os

# One BLAS thread in the test processes too, as the command sets for itself (hlmcli/cli/__init__.py): on a
# shared 2-core machine a threaded solve of a 200 × 200 system costs ~100 times the CPU of a single thread.
# Before numpy is first imported, which the imports below may do.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import atexit  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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


def _env() -> dict:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONPYCACHEPREFIX": _PYCACHE}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _interpreter_settings(env: dict) -> dict:
    """What only an interpreter's start reads: a forked command would keep the server's."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


class _Server:
    """One warm interpreter per test process that forks each command (tests/cli_server.py)."""

    def __init__(self) -> None:
        env = _env()
        self.settings = _interpreter_settings(env)
        to_server, self._send = os.pipe()
        self._receive, from_server = os.pipe()
        self.folder = tempfile.mkdtemp(prefix="hlmcli-test-io-")
        atexit.register(shutil.rmtree, self.folder, ignore_errors=True)
        self.proc = subprocess.Popen([sys.executable, "-P", str(Path(__file__).with_name("cli_server.py")),
                                      str(to_server), str(from_server)], pass_fds=(to_server, from_server), env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.folder, "server.log"), "wb"), start_new_session=True)
        os.close(to_server)
        os.close(from_server)
        self.send = os.fdopen(self._send, "w", encoding="utf-8")
        self.receive = os.fdopen(self._receive, "r", encoding="utf-8")
        atexit.register(self.close)

    def usable(self) -> bool:
        return self.proc.poll() is None and _interpreter_settings(_env()) == self.settings

    def close(self) -> None:
        for f in (self.send, self.receive):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)

    def run(self, args: list[str], cwd, input) -> subprocess.CompletedProcess:
        import io
        import locale
        import select

        paths = {name: os.path.join(self.folder, name) for name in ("stdin", "stdout", "stderr")}
        with open(paths["stdin"], "wb") as f:
            f.write(b"" if input is None else input.encode(locale.getpreferredencoding(False)))
        for name in ("stdout", "stderr"):
            open(paths[name], "wb").close()
        request = {"args": args, "cwd": str(cwd) if cwd is not None else os.getcwd(), "env": _env(), **paths}
        self.send.write(json.dumps(request) + "\n")
        self.send.flush()
        # a guard against a command that never ends (the whole run would hang), not a speed check
        if not select.select([self.receive], [], [], 900)[0]:
            os.killpg(self.proc.pid, 9)
            raise AssertionError(f"hlmcli {' '.join(args)} did not finish in 900 s")
        status = json.loads(self.receive.readline())["status"]

        def text(name):  # as subprocess.run(text=True) decodes: the locale's encoding, universal newlines
            with open(paths[name], "rb") as f:
                return io.TextIOWrapper(io.BytesIO(f.read()), encoding=locale.getpreferredencoding(False),
                                        newline=None).read()

        return subprocess.CompletedProcess(["hlmcli", *args], status, text("stdout"), text("stderr"))


_SERVER: _Server | None = None


def hlmcli(*args, cwd=None, check=False, input=None, hang_after=None):
    """Run the installed command exactly as a user types it: a new process, its own argv, directory,
    environment, input and output, its exit status. Forked from a warm interpreter (tests/cli_server.py)
    unless the call needs a fresh one: hang_after (seconds after which the command counts as hung and the
    test fails; a guard against blocking, not a speed check), or HLMCLI_TEST_SUBPROCESS=1 for every call."""
    global _SERVER
    args = [str(a) for a in args]
    if hang_after is None and os.environ.get("HLMCLI_TEST_SUBPROCESS") != "1":
        if _SERVER is None or not _SERVER.usable():
            if _SERVER is not None:
                _SERVER.close()
            _SERVER = _Server()
        proc = _SERVER.run(args, cwd, input)
    else:
        exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
        cmd = [exe] if exe else [sys.executable, "-m", "hlmcli.cli"]
        proc = subprocess.run(cmd + args, capture_output=True, text=True, cwd=cwd, input=input, env=_env(),
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
    from hlmcli.io.archive import load_archive

    return load_archive(hsb_archive)


@pytest.fixture(scope="session")
def popular_loaded(popular_archive):
    from hlmcli.io.archive import load_archive

    return load_archive(popular_archive)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-300)
