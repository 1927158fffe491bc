"""Regression tests for issue 10 (hostile and messy input, exit codes, writes, the cache).

Each example of the issue's "Why" section is run as a user types it, through the installed command."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from conftest import HSB_MODELS, SAMPLE, hlmcli

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
POP = SAMPLE / "popular2"


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 1 and "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


# ---------------------------------------------------------------- exit codes

@pytest.mark.parametrize("args", [["mdm", "build"], ["mdm", "build", HSB1, HSB2, "--id", "ID"],
                                  ["mdm", "build", HSB1, HSB2, HSB1, "--id", "ID", "-o", "x.mdm"]])
def test_usage_errors_exit_2(args, tmp_path):
    proc = hlmcli(*args, cwd=tmp_path)
    one_line_error(proc, 2, "usage error")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_internal_errors_exit_70_and_ask_for_a_report(tmp_path):
    code = ("import sys; sys.argv=['hlmcli','mdm','info','x.mdm'];"
            "import hlmcli.archive as a; a.load_archive=lambda p: 1/0;"
            "from hlmcli.cli import main; main()")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "HLMCLI_DEBUG"})
    assert proc.returncode == 70
    assert "internal error" in proc.stderr and "report" in proc.stderr


# ---------------------------------------------------------------- invalid models

def _hlm(tmp_path, **changes):
    lines = (POP / "popular.hlm").read_text().splitlines()
    out = []
    for line in lines:
        key = line.split(":", 1)[0]
        if key in changes:
            continue
        out.append(line)
    for key, value in changes.items():
        if value is not None:
            out += [f"{key}:{v}" for v in (value if isinstance(value, list) else [value])]
    path = tmp_path / "m.hlm"
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture(scope="module")
def pop_mdm(tmp_path_factory):
    out = tmp_path_factory.mktemp("popm") / "pop.mdm"
    hlmcli("mdm", "build", POP / "popular2_level1.csv", POP / "popular2_level2.csv", "--id", "class", "-o", out,
           check=True)
    return out


@pytest.mark.parametrize("changes,words", [
    ({"mlf": "maybe"}, ["mlf:maybe", "y or n"]),
    ({"numit": "0"}, ["numit:0", "out of range"]),
    ({"df": "-3"}, ["df:-3"]),
    ({"deviance": "nan"}, ["deviance", "finite"]),
    ({"level1": ["POPULAR=INTRCPT1+EXTRAV+SEX+RANDOM", "POPULAR=INTRCPT1+RANDOM"]}, ["second level1"]),
    ({"hypoth": "y", "gamma1": "0,1,nan,0"}, ["gamma1", "finite"]),
    ({"level3": "X=INTRCPT3"}, ["level3", "three-level"]),
    ({"level1deletion": "listwise"}, ["level1deletion"]),
])
def test_invalid_hlm_files_are_one_line_errors(tmp_path, pop_mdm, changes, words):
    proc = hlmcli("fit", pop_mdm, "--model", _hlm(tmp_path, **changes))
    one_line_error(proc, 1, *words)


def test_level1deletion_none_is_read(tmp_path, pop_mdm):
    proc = hlmcli("model", pop_mdm, "--model", _hlm(tmp_path, level1deletion="none"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("level1,level2,words", [
    ("popular = b0 + b0 + r", [], ["b0 appears twice"]),
    ("popular = b0 + r", ["b0 = g00 + u0 + u0"], ["u0 appears twice"]),
])
def test_duplicated_b0_u0_are_refused(pop_mdm, level1, level2, words):
    args = ["fit", pop_mdm, "-1", level1]
    for eq in level2:
        args += ["-2", eq]
    one_line_error(hlmcli(*args), 1, *words)


def test_level2_equations_with_an_hlm_file_are_refused(pop_mdm):
    proc = hlmcli("fit", pop_mdm, "--model", POP / "popular.hlm", "-2", "b1 = g10 + u1")
    one_line_error(proc, 1, "-2")


@pytest.mark.parametrize("equation,words", [
    ("MATHACH = b0 + b1*" + "(" * 1000 + "SES" + ")" * 1000 + " + r", ["nested"]),
    ("MATHACH = b0 + b" + "1" * 4301 + "*SES + r", ["digits"]),
    ("MATHACH = b0 + b1*" + "(" * 20000 + "SES" + ")" * 20000 + " + r", ["longer"]),
])
def test_hostile_equations_are_one_line_errors(hsb_archive, equation, words):
    import time

    start = time.perf_counter()
    one_line_error(hlmcli("fit", hsb_archive, "-1", equation), 1, *words)
    assert time.perf_counter() - start < 10


def test_contrast_with_nan_through_test_option(hsb_archive):
    one_line_error(hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "--test", "g00 = nan"), 1, "finite")


# ---------------------------------------------------------------- the archive checksum covers the prefix

@pytest.mark.parametrize("delta", [-8, -3, 8])
def test_a_changed_header_length_is_detected(tmp_path, hsb_archive, delta):
    import struct

    raw = bytearray(hsb_archive.read_bytes())
    (header_len,) = struct.unpack_from("<Q", raw, 16)
    struct.pack_into("<Q", raw, 16, header_len + delta)
    bad = tmp_path / "bad.mdm"
    bad.write_bytes(bytes(raw))
    proc = hlmcli("mdm", "info", bad)
    one_line_error(proc, 1, "damaged", "rebuild")
    assert proc.stdout == ""


def test_an_old_format_archive_asks_for_a_rebuild(tmp_path, hsb_archive):
    import struct

    raw = bytearray(hsb_archive.read_bytes())
    struct.pack_into("<I", raw, 8, 1)
    old = tmp_path / "old.mdm"
    old.write_bytes(bytes(raw))
    proc = hlmcli("mdm", "info", old)
    one_line_error(proc, 1, "format version 1", "rebuild")
    assert len(proc.stderr.strip().splitlines()) == 1
