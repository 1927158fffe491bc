"""--engine stream shows its progress on a terminal: chunks, records and bytes read, on one line of
stderr; nothing when stderr is not a terminal or with -q (HLMCLI_PROGRESS=1 forces it, =0 stops it)."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys

import pytest
from conftest import SAMPLE, hlmcli

pytest.importorskip("pyarrow")

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"


def _on_a_terminal(*args) -> tuple[int, str]:
    """Run the command with stderr on a pseudo-terminal; return its exit code and what it wrote there."""
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable))
    main, side = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "HLMCLI_PROGRESS"}
    proc = subprocess.run([exe, *map(str, args)], stdout=subprocess.PIPE, stderr=side, env=env, timeout=120)
    os.close(side)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the other side is closed and drained
            break
        if not chunk:
            break
        seen += chunk
    os.close(main)
    return proc.returncode, seen.decode()


def test_stream_build_shows_progress_on_a_terminal(tmp_path):
    rc, shown = _on_a_terminal("mdm", "build", HSB1, HSB2, "--id", "ID", "-o", tmp_path / "a.mdm", "--engine", "stream")
    assert rc == 0, shown
    size = HSB1.stat().st_size / (1 << 20)
    assert f"\rhlmcli: reading {HSB1}: chunk 1, 7,185 records, {size:.1f} MiB of {size:.1f} MiB (100%)\r\n" in shown


def test_forced_progress_counts_every_chunk(monkeypatch, capsys):
    from hlmcli.data import streaming

    monkeypatch.setattr(streaming, "CHUNK_BYTES", 64 << 10)  # hsb1.csv (7,185 records) in several chunks
    cols = streaming.file_columns(HSB1)
    _ids, m, read, _deleted = streaming.stream_moments(cols, "ID", ["MATHACH", "SES"], progress=True)
    lines = capsys.readouterr().err.split("\r")[1:]
    chunks = -(-HSB1.stat().st_size // (64 << 10))
    assert read == 7185 and len(lines) == chunks > 1
    assert lines[0].startswith(f"hlmcli: reading {HSB1}: chunk 1, ") and lines[0].endswith(" MiB (" + lines[0].split("(")[-1])
    assert lines[-1].startswith(f"hlmcli: reading {HSB1}: chunk {chunks}, 7,185 records,") and lines[-1].endswith("(100%)\n")


def test_progress_wanted(monkeypatch):
    from hlmcli.data.streaming import progress_wanted

    monkeypatch.setenv("HLMCLI_PROGRESS", "1")
    assert progress_wanted(False) and not progress_wanted(True)  # -q wins
    monkeypatch.setenv("HLMCLI_PROGRESS", "0")
    assert not progress_wanted(False)
    monkeypatch.delenv("HLMCLI_PROGRESS")
    assert progress_wanted(False) == sys.stderr.isatty()


@pytest.mark.slow
def test_stream_fit_shows_progress_when_forced_and_not_in_a_pipe(monkeypatch):
    """The fit's pass over the records reports as the build's does (the fast tests cover the reporter)."""
    monkeypatch.setenv("HLMCLI_PROGRESS", "1")
    proc = hlmcli("fit", HSB1, HSB2, "--id", "ID", "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--engine", "stream")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(f"\nhlmcli: reading {HSB1}: chunk 1, 7,185 records,")  # text mode: \r as \n
    assert "Final estimation of fixed effects" in proc.stdout
    monkeypatch.delenv("HLMCLI_PROGRESS")
    piped = hlmcli("fit", HSB1, HSB2, "--id", "ID", "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--engine", "stream")
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout == proc.stdout


def test_three_level_stream_fit_shows_progress_when_forced(monkeypatch):
    from conftest import DATA

    eg = DATA / "three_level"
    monkeypatch.setenv("HLMCLI_PROGRESS", "1")
    proc = hlmcli("fit", eg / "eg_l1.csv", eg / "eg_l2.csv", eg / "eg_l3.csv", "--id2", "CHILDID", "--id3", "SCHOOLID",
                  "-1", "MATH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00", "--engine", "stream")
    assert proc.returncode == 0, proc.stderr
    assert f"hlmcli: reading {eg / 'eg_l1.csv'}: chunk 1, 7,230 records," in proc.stderr
