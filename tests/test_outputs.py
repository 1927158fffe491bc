"""Issue 21 (outputs, the cache, determinism): what a command writes, where, and when.

- Outputs are replaced atomically only when the path is a regular file or nothing; a FIFO or a device
  is written in place (as `cat > /dev/null`), a symbolic link through to its target (or refused with
  --no-follow), a read-only file or a folder refused in one line.
- All outputs of a run are checked before anything is written, and a run that fails writes nothing.
- `cache prune` deletes only what the cache's index names, with the recorded hash.
- Every output format gives the same bytes on every run.
The real /dev/null is never a target here: a FIFO, a device node made in a temporary folder (root
only), and a mock that makes any rename fail stand in for it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading

import pytest

from conftest import SAMPLE, hlmcli

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
MODEL = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


def _fit(archive, *extra):
    return hlmcli("fit", archive, *MODEL, *extra)


@pytest.fixture(scope="module")
def expected_text(hsb_archive):
    proc = _fit(hsb_archive)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


class FifoReader:
    """Reads a FIFO in a thread, as `cat fifo` would. A hard link to the FIFO lets the test release
    the reader even when a broken writer renamed a regular file over the path."""

    def __init__(self, path):
        os.mkfifo(path)
        self.path, self.alias = path, path.with_name(path.name + ".alias")
        os.link(path, self.alias)
        self.data = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        with open(self.alias, "rb") as handle:
            self.data = handle.read()

    def finish(self):
        self.thread.join(timeout=30)
        if self.thread.is_alive():  # nothing ever opened the FIFO: open it ourselves so the reader ends
            with open(self.alias, "wb"):
                pass
            self.thread.join(timeout=30)
        return self.data


# ---------------------------------------------------------------- FIFOs and devices: written in place

@pytest.mark.parametrize("option", ["-o", "--json-out"])
def test_fit_output_to_a_fifo_is_written_in_place(tmp_path, hsb_archive, expected_text, option):
    fifo = tmp_path / "out.fifo"
    reader = FifoReader(fifo)
    proc = _fit(hsb_archive, option, fifo)
    data = reader.finish()
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a regular file"
    assert data, "the FIFO's reader got nothing"
    if option == "-o":
        assert data.decode("utf-8") == expected_text
    else:
        assert json.loads(data)["fixed_effects"]


def test_table_plot_and_mdm_build_write_into_a_fifo(tmp_path, saved_fit, hsb_archive):
    for name, args, start in [("table.csv", ["table", saved_fit, "--format", "csv", "-o"], b" ,m1"),
                              ("plot.svg", ["plot", "caterpillar", hsb_archive, *MODEL, "-q", "-o"], b"<?xml"),
                              ("hsb.mdm", ["mdm", "build", HSB1, HSB2, "--id", "ID", "-q", "-o"], b"HLMCMDM")]:
        fifo = tmp_path / name  # a plot's format comes from the extension
        reader = FifoReader(fifo)
        proc = hlmcli(*args, fifo)
        data = reader.finish()
        assert proc.returncode == 0, (name, proc.stderr)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), name
        assert data and data.startswith(start), (name, (data or b"")[:40])


def _device_node(tmp_path):
    """A character device equal to /dev/null (major 1, minor 3), in a temporary folder: root only,
    and only where the file system allows device nodes."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        with open(node, "wb") as handle:
            handle.write(b"x")
    except OSError as exc:
        pytest.skip(f"no device nodes here: {exc}")
    return node


@pytest.mark.parametrize("command", ["fit", "mdm build"])
def test_a_device_output_stays_a_device(tmp_path, hsb_archive, command):
    node = _device_node(tmp_path)
    before = os.lstat(node)
    if command == "fit":
        proc = _fit(hsb_archive, "-o", node, "--json-out", tmp_path / "fit.json")
    else:
        proc = hlmcli("mdm", "build", HSB1, HSB2, "--id", "ID", "-q", "-o", node)
    assert proc.returncode == 0, proc.stderr
    after = os.lstat(node)
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino and after.st_rdev == before.st_rdev
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_dev_null_is_written_in_place_never_renamed(monkeypatch):
    """The real /dev/null, in-process, with every rename mocked to fail: writing to it may only open it."""
    from hlmcli.io import files

    def no_rename(*args, **kwargs):
        raise AssertionError(f"a rename over {args[1]!r} was attempted")

    monkeypatch.setattr(files.os, "replace", no_rename)
    monkeypatch.setattr(files.os, "rename", no_rename)
    target = files.output_target("/dev/null")
    assert target.in_place
    files.atomic_write_text("/dev/null", "discarded\n")
    with files.output_transaction():
        files.atomic_write(os.devnull, [b"a", b"b"])
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_a_link_to_standard_output_writes_into_the_pipe(tmp_path, hsb_archive, expected_text):
    """As -o /dev/stdout (a link to /proc/self/fd/1, a pipe here), made in a temporary folder so that
    a writer that renames could only replace the test's own link."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    proc = _fit(hsb_archive, "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_text and link.is_symlink()


# ---------------------------------------------------------------- symbolic links, read-only files, folders

def test_a_symlink_is_written_through_and_stays_a_link(tmp_path, hsb_archive, expected_text):
    real = tmp_path / "data" / "real.txt"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    proc = _fit(hsb_archive, "-o", link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == expected_text
    assert not [p.name for p in real.parent.iterdir() if p.name != "real.txt"]  # no temp left beside the target


def test_a_dangling_symlink_creates_its_target(tmp_path, hsb_archive, expected_text):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "new.txt")
    assert _fit(hsb_archive, "-o", link).returncode == 0
    assert link.is_symlink() and (tmp_path / "new.txt").read_text() == expected_text


def test_no_follow_refuses_a_symlink(tmp_path, hsb_archive):
    real = tmp_path / "real.txt"
    real.write_text("keep\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    one_line_error(_fit(hsb_archive, "-o", link, "--no-follow", "--residuals-l2", tmp_path / "res.csv"), 1,
                   "link.txt", "symbolic link", "--no-follow")
    assert link.is_symlink() and real.read_text() == "keep\n" and not (tmp_path / "res.csv").exists()
    one_line_error(hlmcli("mdm", "build", HSB1, HSB2, "--id", "ID", "--no-follow", "-o", link), 1, "symbolic link")
    assert real.read_text() == "keep\n"


def test_a_read_only_output_is_refused_and_nothing_is_written(tmp_path, hsb_archive):
    ro = tmp_path / "ro.txt"
    ro.write_text("keep\n")
    ro.chmod(0o444)
    res = tmp_path / "res.csv"
    one_line_error(_fit(hsb_archive, "-o", ro, "--residuals-l2", res), 1, "ro.txt", "read-only")
    assert ro.read_text() == "keep\n" and stat.S_IMODE(ro.stat().st_mode) == 0o444
    assert not res.exists()
    one_line_error(_fit(hsb_archive, "--json-out", ro), 1, "read-only")
    one_line_error(hlmcli("mdm", "build", HSB1, HSB2, "--id", "ID", "-o", ro), 1, "read-only")
    assert ro.read_text() == "keep\n"


def test_a_folder_as_output_names_the_folder_not_a_temp_file(tmp_path, hsb_archive):
    proc = hlmcli("fit", hsb_archive, *MODEL, "-o", ".", cwd=tmp_path)
    one_line_error(proc, 1, "folder")
    assert ".tmp" not in proc.stderr and not list(tmp_path.iterdir())


def test_a_replaced_file_keeps_its_permissions(tmp_path, hsb_archive):
    out = tmp_path / "out.txt"
    out.write_text("old\n")
    out.chmod(0o600)
    assert _fit(hsb_archive, "-o", out).returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text() != "old\n"


# ---------------------------------------------------------------- all outputs of a run, together

@pytest.mark.parametrize("first,second", [("-o", "--json-out"), ("-o", "--residuals-l2"), ("--json-out", "--residuals-l1")])
def test_two_outputs_with_one_name_are_refused(tmp_path, hsb_archive, first, second):
    proc = hlmcli("fit", hsb_archive, *MODEL, first, "out.csv", second, "./out.csv", cwd=tmp_path)
    one_line_error(proc, 1, "out.csv", first, second, "same file")
    assert not list(tmp_path.iterdir())


def test_a_command_file_residual_name_equal_to_o_is_refused_and_nothing_written(tmp_path, hsb_archive):
    """A name from an .hlm file is known only after the model is read: the run still writes nothing."""
    hlm = tmp_path / "m.hlm"
    hlm.write_text("level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nresfil2:y\n"
                   f"resfil2name:{tmp_path / 'out.csv'}\n")
    proc = hlmcli("fit", hsb_archive, "--model", hlm, "-o", tmp_path / "out.csv", "--json-out", tmp_path / "fit.json")
    one_line_error(proc, 1, "out.csv", "same file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.hlm"]


def test_residual_files_are_not_left_behind_when_o_fails(tmp_path, hsb_archive):
    res1, res2 = tmp_path / "res1.csv", tmp_path / "res2.csv"
    proc = _fit(hsb_archive, "-o", tmp_path / "missing" / "out.txt", "--residuals-l1", res1, "--residuals-l2", res2,
                "--json-out", tmp_path / "fit.json")
    one_line_error(proc, 1, "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_failure_while_writing_leaves_every_output_as_it_was(tmp_path):
    """Staged writes: an error after the first output is written keeps the first one out of place too."""
    from hlmcli.errors import DataError
    from hlmcli.io.files import atomic_write_text, output_transaction

    first = tmp_path / "first.txt"
    first.write_text("old\n")
    with pytest.raises(DataError):
        with output_transaction():
            atomic_write_text(first, "new\n")
            atomic_write_text(tmp_path / "second.txt", "x")
            atomic_write_text(tmp_path / "second.txt", "y")  # the same file twice: refused
    assert first.read_text() == "old\n" and not (tmp_path / "second.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.txt"]  # no temp file left


def test_outputs_of_a_run_land_together(tmp_path, hsb_archive, expected_text):
    out, js, res = tmp_path / "out.txt", tmp_path / "fit.json", tmp_path / "res.sav"
    proc = _fit(hsb_archive, "-o", out, "--json-out", js, "--residuals-l2", res)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == expected_text
    assert json.loads(js.read_text())["fixed_effects"]
    import pyreadstat

    frame, _ = pyreadstat.read_sav(str(res))
    assert len(frame) == 160
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "out.txt", "res.sav"]


# ---------------------------------------------------------------- the cache deletes only its own files

FOREIGN = ("HSB.mdm", "hlm7.mdm", ".notes.tmp", ".draft.mdm.abcd.tmp", "0123456789abcdef0123456789abcdef.mdm")


def _cache_with_foreign_files(tmp_path, hsb_archive):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    foreign = dict(zip(FOREIGN, [
        hsb_archive.read_bytes(),  # a user's own archive (or HLM 7's MDM file) in the folder
        b"HLM 7 MDM file\x00\x01",
        b"a user's hidden temp file",
        b"not one of ours either",
        b"named like a cache key, never indexed",
    ]))
    for name, data in foreign.items():
        (cache / name).write_bytes(data)
    l1, l2 = tmp_path / "l1.csv", tmp_path / "l2.csv"
    shutil.copy(HSB1, l1)
    shutil.copy(HSB2, l2)
    proc = hlmcli("fit", l1, l2, "--id", "ID", *MODEL, "--cache-dir", cache)
    assert proc.returncode == 0, proc.stderr
    return cache, foreign


def _ours(cache):
    """The archive the fit cached: every .mdm but the foreign ones."""
    return [p for p in cache.glob("*.mdm") if p.name not in FOREIGN]


def test_prune_deletes_only_indexed_archives(tmp_path, hsb_archive):
    cache, foreign = _cache_with_foreign_files(tmp_path, hsb_archive)
    ours = _ours(cache)
    assert len(ours) == 1
    listing = hlmcli("cache", "list", "--cache-dir", cache)
    assert listing.returncode == 0 and "HSB.mdm" in listing.stdout and "leaves it alone" in listing.stdout
    proc = hlmcli("cache", "prune", "--cache-dir", cache)
    assert proc.returncode == 0 and "removed 1 file(s)" in proc.stdout, proc.stdout + proc.stderr
    assert not ours[0].exists()
    for name, data in foreign.items():
        assert (cache / name).read_bytes() == data, name


def test_prune_leaves_an_indexed_name_whose_bytes_changed(tmp_path, hsb_archive):
    cache, _ = _cache_with_foreign_files(tmp_path, hsb_archive)
    ours = _ours(cache)[0]
    data = bytearray(ours.read_bytes())
    data[-1] ^= 1  # same name and size, other bytes: someone else's file now
    ours.write_bytes(bytes(data))
    proc = hlmcli("cache", "prune", "--cache-dir", cache)
    assert proc.returncode == 0 and "removed 0 file(s)" in proc.stdout
    assert ours.read_bytes() == bytes(data)


def test_prune_removes_our_stale_temp_files_only(tmp_path, hsb_archive):
    cache, foreign = _cache_with_foreign_files(tmp_path, hsb_archive)
    stale = cache / f".{'ab' * 16}.mdm.x1y2z3_4.tmp"  # the name atomic_write gives a cache archive's temp
    stale.write_bytes(b"left by a killed run")
    assert hlmcli("cache", "prune", "--cache-dir", cache, "--older-than", "1").returncode == 0
    assert not stale.exists()
    assert all((cache / name).exists() for name in foreign)


@pytest.mark.parametrize("days", ["nan", "NaN", "inf", "-inf", "-1", "1e999", "abc"])
def test_older_than_takes_finite_non_negative_days(tmp_path, hsb_archive, days):
    cache, _ = _cache_with_foreign_files(tmp_path, hsb_archive)
    before = sorted(p.name for p in cache.iterdir())
    one_line_error(hlmcli("cache", "prune", "--cache-dir", cache, "--older-than", days), 2, "--older-than")
    assert sorted(p.name for p in cache.iterdir()) == before


def test_prune_api_refuses_nan(tmp_path):
    from hlmcli.io.cache import prune_cache
    from hlmcli.errors import DataError

    with pytest.raises(DataError):
        prune_cache(tmp_path, float("nan"))


# ---------------------------------------------------------------- the same bytes on every run

FIT_FORMATS = ["text", "json", "csv", "markdown", "latex", "html"]
TABLE_FORMATS = ["markdown", "latex", "html", "csv"]


def _twice(tmp_path, name, make):
    digests = []
    for run in (1, 2):
        out = tmp_path / f"run{run}" / name
        out.parent.mkdir(exist_ok=True)
        proc = make(out)
        assert proc.returncode == 0, proc.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    return digests


@pytest.mark.parametrize("fmt", FIT_FORMATS)
def test_fit_output_is_byte_identical_across_runs(tmp_path, hsb_archive, fmt):
    first, second = _twice(tmp_path, f"fit.{fmt}", lambda out: _fit(hsb_archive, "--format", fmt, "-o", out))
    assert first == second, f"--format {fmt} differs between runs"


@pytest.fixture(scope="module")
def saved_fit(hsb_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("fits") / "m1.json"
    assert _fit(hsb_archive, "--format", "json", "-o", out).returncode == 0
    return out


@pytest.mark.parametrize("fmt", TABLE_FORMATS)
def test_table_output_is_byte_identical_across_runs(tmp_path, saved_fit, fmt):
    first, second = _twice(tmp_path, f"table.{fmt}",
                           lambda out: hlmcli("table", saved_fit, saved_fit, "--names", "A,B", "--format", fmt, "-o", out))
    assert first == second, f"table --format {fmt} differs between runs"


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_plots_are_byte_identical_across_runs(tmp_path, hsb_archive, suffix):
    first, second = _twice(tmp_path, f"plot.{suffix}",
                           lambda out: hlmcli("plot", "caterpillar", hsb_archive, *MODEL, "-q", "-o", out))
    assert first == second, f".{suffix} plots differ between runs"
    assert (tmp_path / "run1" / f"plot.{suffix}").stat().st_size > 1000  # a picture, in each of the three formats


def test_html_has_fixed_ids(tmp_path, hsb_archive):
    proc = _fit(hsb_archive, "--format", "html")
    assert proc.returncode == 0
    assert '<table id="T_fixed">' in proc.stdout and '<table id="T_variance">' in proc.stdout
    assert proc.stdout.count('<table id="T_fixed">') == 1


def test_combined_fit_html_is_byte_identical_across_runs(tmp_path):
    """Plausible values: the combined tables get fixed ids as well."""
    import pandas as pd

    l1 = pd.read_csv(HSB1)
    for k in (1, 2, 3):  # deterministic stand-ins for plausible values
        l1[f"PV{k}MATH"] = (l1.MATHACH + 0.5 * k * l1.SES).round(4)
    l1.to_csv(tmp_path / "pv.csv", index=False)
    model = ["-1", "PV1MATH = b0 + r", "-2", "b0 = g00 + u0"]
    first, second = _twice(tmp_path, "pv.html", lambda out: hlmcli(
        "fit", tmp_path / "pv.csv", HSB2, "--id", "ID", *model, "--plausible-values", "PV*MATH", "--format", "html",
        "-o", out))
    assert first == second
    import re

    ids = re.findall(r'<table id="([^"]+)"', (tmp_path / "run1" / "pv.html").read_text())
    assert len(ids) == 3 and len(set(ids)) == 3, ids  # one document, three tables: no id twice
