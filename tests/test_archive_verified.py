"""A load hashes an archive in full only when it does not know the file (io/verified.py): a file verified
before and unchanged (size, times, inode, prefix and header) is trusted; any change to it, even with its
modification time set back, is verified in full and caught; `mdm info --verify` always hashes."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from hlmcli.io import archive as archive_module
from hlmcli.io import verified
from hlmcli.io.archive import CorruptArchive, load_archive

from conftest import hlmcli


@pytest.fixture
def records(tmp_path, monkeypatch):
    """Records kept in a folder of this test's own; the number of whole-file hashes counted."""
    folder = tmp_path / "records"
    folder.mkdir()
    verified.configure(lambda: folder)
    # the copies made here are seconds old at most: recorded only as if the clock had moved on
    monkeypatch.setattr(verified, "_now_ns", lambda: __import__("time").time_ns() + 10 * verified.RACY_NS)
    full = []
    real = hashlib.sha256

    class Counting:
        sha256 = staticmethod(lambda *a: (full.append(1), real(*a))[1])

    monkeypatch.setattr(archive_module, "hashlib", Counting)
    yield folder, full
    verified.configure(None)


def flip_byte_keep_mtime(path, from_end: int = 100) -> None:
    """Change one data byte in place and set the modification time back, as a careless copy tool might."""
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(st.st_size - from_end)
        byte = handle.read(1)
        handle.seek(st.st_size - from_end)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size


def test_known_file_is_trusted_and_a_changed_one_still_caught(records, hsb_archive, tmp_path):
    folder, full = records
    path = tmp_path / "hsb.mdm"
    shutil.copyfile(hsb_archive, path)
    first = load_archive(path)
    assert len(full) == 1 and len(list((folder / "verified").iterdir())) == 1
    second = load_archive(path)
    assert len(full) == 1  # trusted: no second whole-file hash
    assert (second.level1 == first.level1).all() and second.unit_ids == first.unit_ids
    load_archive(path, verify=True)
    assert len(full) == 2  # --verify hashes whatever the record says
    flip_byte_keep_mtime(path)
    with pytest.raises(CorruptArchive, match="checksum mismatch"):
        load_archive(path)
    assert len(full) == 3


def test_a_file_written_just_now_is_not_recorded(tmp_path, hsb_archive):
    """A write in the same clock tick as the last one would leave the file's times alone: a file whose
    status-change time is recent is verified but not recorded."""
    folder = tmp_path / "records"
    folder.mkdir()
    verified.configure(lambda: folder)
    try:
        path = tmp_path / "fresh.mdm"
        shutil.copyfile(hsb_archive, path)
        load_archive(path)
        assert not (folder / "verified").exists()
    finally:
        verified.configure(None)


def test_without_a_records_folder_every_load_hashes(hsb_archive, monkeypatch):
    """The Python API configures nothing: each load is verified in full."""
    verified.configure(None)
    full = []
    real = hashlib.sha256

    class Counting:
        sha256 = staticmethod(lambda *a: (full.append(1), real(*a))[1])

    monkeypatch.setattr(archive_module, "hashlib", Counting)
    load_archive(hsb_archive)
    load_archive(hsb_archive)
    assert len(full) == 2


def test_cli_verify_and_a_damaged_archive_after_a_trusted_load(hsb_archive, tmp_path):
    """End to end: an archive damaged in place with its modification time set back fails the next fit
    (exit 1, one line naming the file); `mdm info --verify` says what it did."""
    path = tmp_path / "hsb.mdm"
    shutil.copyfile(hsb_archive, path)
    model = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]
    ok = hlmcli("mdm", "info", path, "--verify", check=True)
    assert f"{path}: checksum verified (SHA-256 of the whole file)" in ok.stderr
    hlmcli("fit", path, *model, check=True)
    flip_byte_keep_mtime(path)
    bad = hlmcli("fit", path, *model)
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"hlmcli: error: {path}: checksum mismatch, the archive is damaged; " \
                                 "rebuild it with 'hlmcli mdm build'"


def test_no_records_on_windows(records, hsb_archive, tmp_path, monkeypatch):
    """Windows' st_ctime is the creation time, which a write leaves alone: nothing is trusted there."""
    folder, full = records
    monkeypatch.setattr(verified, "CTIME_CHANGES_ON_WRITE", False)
    path = tmp_path / "hsb.mdm"
    shutil.copyfile(hsb_archive, path)
    load_archive(path)
    load_archive(path)
    assert len(full) == 2 and not (folder / "verified").exists()


def test_records_go_to_the_cache_dir_the_user_gave(hsb_archive, tmp_path, monkeypatch):
    """With --cache-dir, nothing is created in the default cache folder: the records of verified files
    go where the user pointed (before, the default folder was created and written on every fit)."""
    elsewhere = tmp_path / "default-cache"
    mine = tmp_path / "mine"
    monkeypatch.setenv("HLMCLI_CACHE_DIR", str(elsewhere))
    path = tmp_path / "hsb.mdm"
    shutil.copyfile(hsb_archive, path)
    hlmcli("fit", path, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--cache-dir", mine, check=True)
    assert mine.is_dir() and not elsewhere.exists()
