"""Archives whose checksum was verified in full, so that loading them again need not hash every byte.

An archive's SHA-256 covers the whole file (archive.py). Computing it is a pass over all the data that
a fit from an archive would otherwise make on every load: about 0.2 s for the 243 MB of 10,000,000
records, more than the rest of the load. So the full hash is computed when the archive is written, by
`hlmcli mdm info --verify` (always), and on the first load of a file; a load that verifies a file in
full records what the file was then, and a later load trusts the checksum only when the file is still
exactly that:

- its size, modification time, status-change time (ctime), inode and device, from one stat before and
  one after the read (a file written meanwhile is verified in full and not recorded);
- the SHA-256 of its prefix and header (the prefix holds the whole-file checksum; the header says
  where every array lies), which the load reads anyway.

Any write to the file changes its ctime, which a user cannot set back (`touch -d` sets the
modification time and so changes the ctime), so a changed, copied, restored or truncated archive is
verified in full again. File times are coarse (a clock tick of a few ms on Linux), so a write in the
same tick as the last one leaves the ctime alone: a file is recorded only once its ctime is at least
RACY_NS old, so that any later write falls in a later tick (git's "racily clean" rule; a freshly
built archive is recorded at a later load). What a record cannot see is a change below the file system (a disk or memory
error that leaves the metadata alone): `mdm info --verify` checks for those.

The same rule spares the archive cache (cache.py) a full SHA-256 of every source file on every fit
from CSV (320 MB at 10,000,000 records): `source_sha256` records a source's whole-file hash with its
metadata and the hash of its first SOURCE_HEAD bytes, and trusts the recorded hash while the file is
exactly that file.

On Windows, where st_ctime is the file's creation time (a write leaves it alone), no records are kept
and every load hashes in full.

The records live in the cache folder (cache.py: --cache-dir, $HLMCLI_CACHE_DIR or the platform's),
one small JSON file per archive path under verified/. The command line says where (`configure`);
without a folder (the Python API, or a cache folder that cannot be used) every load hashes in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

RECORD_FORMAT = "hlmcli-verified-1"
SOURCE_FORMAT = "hlmcli-source-sha256-1"
SOURCE_HEAD = 1 << 16  # a source's first bytes, hashed on every use (its header line and first records)
_CHUNK = 1 << 20
RACY_NS = 2_000_000_000  # more than any file system's time resolution (FAT: 2 s)
_now_ns = time.time_ns
# on Windows st_ctime is the creation time, which a write does not change: no records there
CTIME_CHANGES_ON_WRITE = os.name != "nt"
_where: list = []  # [a callable giving the records' folder or None], set by the command line


def configure(folder: Callable[[], Path | None] | None) -> None:
    """Keep records in the folder `folder()` returns (called at the first load, so a command that
    loads no archive touches nothing); None: no records, every load hashes in full."""
    _where[:] = [folder] if folder is not None else []


def _folder() -> Path | None:
    if not _where or not CTIME_CHANGES_ON_WRITE:
        return None
    try:
        folder = _where[0]()
    except Exception:  # noqa: BLE001 - an unusable cache folder only costs the full hash
        folder = None
    _where[:] = [lambda: folder]  # resolved once per process
    return folder


def _fingerprint(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _record_path(folder: Path, path: Path, suffix: str = ".json") -> Path:
    key = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()[:32]
    return folder / "verified" / f"{key}{suffix}"


def _read_record(target: Path):
    try:
        record = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(target: Path, record: dict) -> None:
    # written here, not through files.atomic_write: a record is no output of the command (it must not be
    # staged with a command's outputs, nor wait for them)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(mode=0o700, exist_ok=True)
        temp.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temp, target)
    except OSError:  # a record that cannot be written only costs the next use its full hash
        try:
            temp.unlink()
        except OSError:
            pass


def known(path: Path, before: os.stat_result, after: os.stat_result, head: bytes) -> bool:
    """The file was verified in full and is, by its metadata and its prefix + header, the same file."""
    folder = _folder()
    if folder is None or _fingerprint(before) != _fingerprint(after):
        return False
    record = _read_record(_record_path(folder, path))
    return (record is not None and record.get("format") == RECORD_FORMAT
            and record.get("path") == os.path.realpath(path) and record.get("stat") == _fingerprint(after)
            and record.get("head_sha256") == hashlib.sha256(head).hexdigest())


def remember(path: Path, before: os.stat_result, after: os.stat_result, head: bytes) -> None:
    """Record a file whose whole-file checksum just matched (nothing when it changed while read)."""
    folder = _folder()
    if folder is None or _fingerprint(before) != _fingerprint(after) or _now_ns() - after.st_ctime_ns < RACY_NS:
        return
    record = {"format": RECORD_FORMAT, "path": os.path.realpath(path), "stat": _fingerprint(after),
              "head_sha256": hashlib.sha256(head).hexdigest()}
    _write_record(_record_path(folder, path), record)


def source_sha256(path) -> str:
    """The SHA-256 of a whole source file: the recorded one when the file's size, times, inode and device,
    unchanged while its first SOURCE_HEAD bytes were read, and the hash of those bytes are what they were
    when it was hashed in full; else hashed in full (and recorded, unless written meanwhile or its
    ctime is less than RACY_NS old)."""
    folder = _folder()
    target = None if folder is None else _record_path(folder, Path(path), ".source.json")
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        head = handle.read(SOURCE_HEAD)
        seen = os.fstat(handle.fileno())
        head_sha256 = hashlib.sha256(head).hexdigest()
        if target is not None and _fingerprint(before) == _fingerprint(seen):
            record = _read_record(target)
            if (record is not None and record.get("format") == SOURCE_FORMAT
                    and record.get("path") == os.path.realpath(path) and record.get("stat") == _fingerprint(seen)
                    and record.get("head_sha256") == head_sha256 and isinstance(record.get("sha256"), str)):
                return record["sha256"]
        digest = hashlib.sha256(head)
        while block := handle.read(_CHUNK):
            digest.update(block)
        after = os.fstat(handle.fileno())
    sha256 = digest.hexdigest()
    if target is not None and _fingerprint(before) == _fingerprint(after) and _now_ns() - after.st_ctime_ns >= RACY_NS:
        _write_record(target, {"format": SOURCE_FORMAT, "path": os.path.realpath(path), "stat": _fingerprint(after),
                               "head_sha256": head_sha256, "sha256": sha256})
    return sha256
