"""A fit from CSV finds its cached archive by the sources' SHA-256 (io/cache.py). The whole-file hash of a
source is recorded as io/verified.py records a verified archive and trusted only while the file is
exactly that file (size, times, inode, device, the hash of its first bytes): a source changed in place,
even with its modification time set back, is hashed again and gives a new build."""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest

from hlmcli.io import verified


@pytest.fixture
def records(tmp_path, monkeypatch):
    folder = tmp_path / "records"
    folder.mkdir()
    verified.configure(lambda: folder)
    # files written by the test are seconds old at most: recorded only as if the clock had moved on
    monkeypatch.setattr(verified, "_now_ns", lambda: time.time_ns() + 10 * verified.RACY_NS)
    yield folder
    verified.configure(None)


def rewrite_keep_mtime(path, old: bytes, new: bytes) -> None:
    """Replace `old` by `new` (same length) in place and set the modification time back."""
    st = os.stat(path)
    raw = path.read_bytes()
    assert len(old) == len(new) and raw.count(old) == 1
    with open(path, "r+b") as handle:
        handle.seek(raw.index(old))
        handle.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size


def test_source_hash_is_trusted_only_while_the_file_is_unchanged(records, tmp_path):
    path = tmp_path / "l1.csv"
    rows = "".join(f"{j % 7},{j}\n" for j in range(20000))  # beyond the first SOURCE_HEAD bytes
    path.write_bytes(("id,x\n" + rows + "6,tail\n").encode())
    assert path.stat().st_size > verified.SOURCE_HEAD
    truth = hashlib.sha256(path.read_bytes()).hexdigest()
    assert verified.source_sha256(path) == truth
    [record_file] = (records / "verified").glob("*.source.json")
    record = json.loads(record_file.read_text())
    assert record["sha256"] == truth
    # a recorded hash is used as is (a planted one proves the file was not read again)
    record_file.write_text(json.dumps(dict(record, sha256="0" * 64)))
    assert verified.source_sha256(path) == "0" * 64
    # a change past the first bytes, size and modification time kept: the ctime gives it away
    rewrite_keep_mtime(path, b"6,tail", b"6,TAIL")
    assert verified.source_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest() != truth


def test_recent_or_windows_sources_are_not_recorded(tmp_path, monkeypatch):
    folder = tmp_path / "records"
    folder.mkdir()
    path = tmp_path / "l1.csv"
    path.write_bytes(b"id,x\n1,2\n")
    truth = hashlib.sha256(b"id,x\n1,2\n").hexdigest()
    verified.configure(lambda: folder)
    try:
        assert verified.source_sha256(path) == truth  # written just now: a later write could share its ctime
        assert not (folder / "verified").exists()
        monkeypatch.setattr(verified, "_now_ns", lambda: time.time_ns() + 10 * verified.RACY_NS)
        monkeypatch.setattr(verified, "CTIME_CHANGES_ON_WRITE", False)  # Windows: ctime is the creation time
        verified.configure(lambda: folder)
        assert verified.source_sha256(path) == truth
        assert not (folder / "verified").exists()
    finally:
        verified.configure(None)


def test_cached_fit_sees_a_source_changed_with_its_mtime_restored(records, tmp_path, monkeypatch):
    from hlmcli.io.archive import BuildOptions
    from hlmcli.io.cache import cached_archive

    monkeypatch.setenv("HLMCLI_CACHE_DIR", str(tmp_path / "cache"))
    l1, l2 = tmp_path / "l1.csv", tmp_path / "l2.csv"
    l1.write_text("ID,Y,X\n" + "".join(f"{u},{u + 0.25 * k},{k}\n" for u in (1, 2, 3) for k in range(4)))
    l2.write_text("ID,W\n1,0.5\n2,1.5\n3,2.5\n")
    opts = BuildOptions(id1="ID", id2="ID")
    first, status = cached_archive((l1, l2), opts)
    assert status == "built" and len(list((records / "verified").glob("*.source.json"))) == 2
    again, status = cached_archive((l1, l2), opts)
    assert status == "reused" and again.path == first.path
    rewrite_keep_mtime(l2, b"2,1.5", b"2,9.5")
    changed, status = cached_archive((l1, l2), opts)
    assert status == "built" and changed.path != first.path
    assert changed.level2[changed.level2_names.index("W")].tolist() == [0.5, 9.5, 2.5]
