"""--engine dask --scheduler against endpoints that are not a Dask scheduler (issue 21, item 2): a
silent socket, an HTTP server, a service that greets with other bytes, a port where nothing
listens, a scheduler without workers and malformed addresses. Each gets one line and exit 1 (2 for
a malformed address or a bad --timeout), never exit 70, never "out of memory", never a hang.
Every endpoint is on 127.0.0.1 and made by the test itself."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading

import pytest

from conftest import SAMPLE

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

HSB = SAMPLE / "hsb"
MODEL = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]
GUARD = 120  # seconds: a hang fails the test instead of holding the run (not a speed target)


def hlmcli(*args):
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
    cmd = [exe] if exe else [sys.executable, "-m", "hlmcli.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=GUARD,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})


@pytest.fixture(scope="module")
def level1(tmp_path_factory):
    import pandas as pd

    folder = tmp_path_factory.mktemp("dask_client") / "l1"
    folder.mkdir()
    pd.read_csv(HSB / "hsb1.csv").to_parquet(folder / "part0.parquet", index=False)
    return folder


def fit(level1, address, *more):
    return hlmcli("fit", level1, HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "dask", "--scheduler", address,
                  *more)


def one_line(proc, code):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "internal error" not in proc.stderr and "out of memory" not in proc.stderr
    assert proc.stdout == ""
    return lines[0]


class Listener:
    """A TCP server on 127.0.0.1 that accepts every connection and then runs `serve(conn)` (default:
    says nothing and keeps the connection open)."""

    def __init__(self, serve=None):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.serve = serve
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.serve:
                try:
                    self.serve(conn)
                except OSError:
                    pass

    def close(self):
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def listener():
    made = []

    def make(serve=None):
        made.append(Listener(serve))
        return made[-1]

    yield make
    for m in made:
        m.close()


def test_a_silent_endpoint_is_refused_after_the_timeout(level1, listener):
    """Accepts the connection, never answers: Dask's own client waited forever here."""
    server = listener()
    msg = one_line(fit(level1, f"tcp://127.0.0.1:{server.port}", "--timeout", "0.5"), 1)
    assert f"tcp://127.0.0.1:{server.port}" in msg and "says nothing within 0.5 s" in msg and "--timeout" in msg


def test_an_http_server_is_refused(level1):
    """The dashboard's port: an HTTP server waits for a request, so it is silent too."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        msg = one_line(fit(level1, f"127.0.0.1:{port}", "--timeout", "0.5"), 1)
        assert "says nothing" in msg and "dashboard" in msg
        # its http:// address is not a scheduler address at all: a usage error, no connection made
        msg = one_line(fit(level1, f"http://127.0.0.1:{port}/status"), 2)
        assert "http address is a web page (the dashboard)" in msg
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("greeting", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", b"\x00" * 16])
def test_an_endpoint_that_greets_with_other_bytes_is_refused(level1, listener, greeting):
    """Dask would read the first 8 bytes as a frame length ("HTTP/1.1" = 3.5e18 bytes: 'out of memory')."""
    server = listener(lambda conn: conn.sendall(greeting))
    msg = one_line(fit(level1, f"tcp://127.0.0.1:{server.port}", "--timeout", "5"), 1)
    assert "not a Dask scheduler's greeting" in msg


def test_an_endpoint_that_stalls_after_a_greeting_is_refused(level1, listener):
    """The first 16 bytes of a Dask greeting, then silence: past the probe, Dask's client would wait
    for the rest with no limit; the guarded connect gives up after --timeout."""
    import struct

    server = listener(lambda conn: conn.sendall(struct.pack("<QQ", 58, 1)))
    msg = one_line(fit(level1, f"127.0.0.1:{server.port}", "--timeout", "0.5"), 1)
    assert msg == f"hlmcli: error: --scheduler 127.0.0.1:{server.port}: no answer within 0.5 s; check the address or raise --timeout"


def test_an_endpoint_that_closes_at_once_is_refused(level1, listener):
    server = listener(lambda conn: conn.close())
    msg = one_line(fit(level1, f"tcp://127.0.0.1:{server.port}", "--timeout", "5"), 1)
    assert "closed the connection" in msg


def test_nothing_listening_is_refused_at_once(level1):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections to it are refused
    try:
        msg = one_line(fit(level1, f"tcp://127.0.0.1:{sock.getsockname()[1]}"), 1)
        assert "nothing listens there (connection refused)" in msg
    finally:
        sock.close()


@pytest.mark.parametrize("address, why", [
    ("garbage", "not host:port"),
    ("http://127.0.0.1:8787", "http address is a web page"),
    ("https://127.0.0.1:8787/status", "https address is a web page"),
    ("tcp://127.0.0.1", "not host:port"),
    ("tcp://127.0.0.1:99999", "port from 1 to 65535"),
    ("tcp://127.0.0.1:0", "port from 1 to 65535"),
    ("tcp://127.0.0.1:８７８６", "port from 1 to 65535"),
    ("tcp://:8786", "is not a host name"),
    ("tcp://a b:8786", "is not a host name"),
    ("tcp://-x:8786", "is not a host name"),
    ("ucx://127.0.0.1:8786", "unknown protocol"),
    ("", "not host:port"),
])
def test_a_malformed_address_is_a_usage_error(level1, address, why):
    """In-process (the same click command), so that a dozen addresses cost no start-up each; the
    test above and the ones below run the installed command."""
    from engine_cases import run

    rc, out = run("fit", level1, HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "dask", "--scheduler", address)
    assert rc == 2 and out.count("\n") == 1 and why in out and "internal error" not in out


def test_a_malformed_address_from_the_command_line(level1):
    msg = one_line(fit(level1, "garbage"), 2)
    assert msg == ("hlmcli: error: --scheduler garbage: not host:port with a port from 1 to 65535; give the "
                   "scheduler's address, e.g. tcp://host:8786")


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_timeout_and_deadline_take_finite_positive_seconds(level1, value):
    from engine_cases import run

    for option in ("--timeout", "--deadline"):
        rc, out = run("fit", level1, HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "dask",
                      "--scheduler", "tcp://127.0.0.1:9", option, value)
        assert rc == 2 and out.count("\n") == 1 and f"{option} {float(value)}: give a positive, finite" in out


def test_dask_options_need_the_dask_engine(level1):
    msg = one_line(hlmcli("fit", HSB / "hsb1.csv", HSB / "hsb2.csv", "--id", "ID", *MODEL, "--timeout", "3"), 2)
    assert "--timeout: for --engine dask only" in msg
    msg = one_line(hlmcli("fit", HSB / "hsb1.csv", HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "stream",
                          "--scheduler", "tcp://127.0.0.1:9", "--deadline", "5"), 2)
    assert "--deadline: for --engine dask only" in msg
    msg = one_line(hlmcli("fit", level1, HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "dask", "--timeout", "3"), 2)
    assert "--timeout is the time to connect to --scheduler, and none is given" in msg


def test_a_scheduler_without_workers_is_refused():
    """A real scheduler that never gets a worker: the computation would wait forever."""
    import logging

    from distributed import LocalCluster

    from hlmcli.data.dask_engine import Scheduler, dask_moments
    from hlmcli.errors import DataError

    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster:
        with pytest.raises(DataError, match="the scheduler has no workers \\(none joined within 2 s\\)"):
            dask_moments(str(HSB / "hsb1.csv"), "ID", ["MATHACH"], Scheduler(cluster.scheduler_address, timeout=2.0))


def test_parse_address():
    from hlmcli.data.dask_engine import AddressError, parse_address

    assert parse_address("tcp://127.0.0.1:8786") == ("tcp", "127.0.0.1", 8786)
    assert parse_address("127.0.0.1:8786") == ("tcp", "127.0.0.1", 8786)
    assert parse_address("tls://head-node.example.org:8786") == ("tls", "head-node.example.org", 8786)
    assert parse_address("tcp://[::1]:8786") == ("tcp", "::1", 8786)
    for bad in ("tcp://127.0.0.1:", "127.0.0.1", "tcp://127.0.0.1:87x6", "tcp://host name:1", "file:///tmp/x:1"):
        with pytest.raises(AddressError):
            parse_address(bad)


@pytest.mark.slow
def test_deadline_stops_a_computation(level1):
    """--deadline bounds the whole computation (here on the default LocalCluster, which cannot finish in 1 ms)."""
    proc = hlmcli("fit", level1, HSB / "hsb2.csv", "--id", "ID", *MODEL, "--engine", "dask", "--deadline", "0.001")
    msg = one_line(proc, 1)
    assert "--deadline 0.001: the Dask computation did not finish in time" in msg
