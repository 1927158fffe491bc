"""The archive cache behind `hlmcli fit L1 L2 [L3 [L4]] --id ...`: one cache for archives of any number of levels,
keyed by the sources' content and the build options.

The cache lives in the user's own folder: --cache-dir, else $HLMCLI_CACHE_DIR, else the platform's
cache folder (default_cache_dir). It is created with mode 0700 and refused when it is a symbolic link,
belongs to another user, or (POSIX) can be written by group or others, so nobody else can plant an
archive in it. A cached archive is used only when the source hashes recorded in it match
the inputs; it is written with the sources' own permission bits (0600 data gives a 0600 archive).

The folder's index (index.json) names every archive the cache wrote, with the SHA-256 of its bytes.
`hlmcli cache prune` deletes only those, and only while their bytes still match: a folder given as
--cache-dir may hold other files (HLM 7's own .mdm files, a user's hidden .tmp files), and those
are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .archive import PREFIX, FORMAT_VERSION, MAGIC, READABLE_VERSIONS, Archive, CorruptArchive, load_archive, write_archive
from ..errors import DataError
from . import verified
from .files import atomic_write_text, check_regular, immediate_writes, remove_stale_temporaries, sha256_file

INDEX = "index.json"
INDEX_FORMAT = "hlmcli-cache-index"
_ARCHIVE_NAME = re.compile(r"[0-9a-f]{32}\.mdm")  # a cache key (cache_key) and .mdm
_OUR_TEMP = re.compile(r"\.([0-9a-f]{32}\.mdm|index\.json)\.[a-z0-9_]{8}\.tmp")  # files.atomic_write's temps of those


def cache_key(hashes, options, fmt: str | None, delimiter: str | None) -> str:
    """The name of the cached archive of sources with these SHA-256 `hashes` (one per file, level 1 first)
    built with `options` (of any number of levels); a new archive format gives new names."""
    material = {"format_version": FORMAT_VERSION, "levels": options.n_levels, "sources": list(hashes),
                "options": options.as_dict(), "format": fmt, "delimiter": delimiter}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir(platform: str | None = None) -> Path:
    """$HLMCLI_CACHE_DIR, else the platform's cache folder, where platformdirs would put it:
    %LOCALAPPDATA%\\hlmcli\\Cache on Windows, ~/Library/Caches/hlmcli on macOS, $XDG_CACHE_HOME/hlmcli
    (else ~/.cache/hlmcli) elsewhere. (The conventions, not the package: the runtime dependencies are fixed.)"""
    env = os.environ.get("HLMCLI_CACHE_DIR")
    if env:
        return Path(env)
    platform = platform or sys.platform
    if platform.startswith("win"):
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "hlmcli" / "Cache"
    if platform == "darwin":
        return Path.home() / "Library" / "Caches" / "hlmcli"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "hlmcli"


def cache_dir_for(explicit: str | os.PathLike | None = None) -> Path:
    """--cache-dir, else default_cache_dir()."""
    return Path(explicit) if explicit else default_cache_dir()


def secure_cache_dir(folder: Path, create: bool = True) -> Path:
    """Create the folder 0700 if absent; refuse one that another user could have written to."""
    if create and not os.path.lexists(folder):
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise DataError(f"{folder}: cannot create the cache folder ({exc.strerror}); "
                            "give a writable --cache-dir or set HLMCLI_CACHE_DIR") from None
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        raise DataError(f"{folder}: no such cache folder") from None
    where = f"{folder}: the cache folder"
    if stat.S_ISLNK(st.st_mode):
        raise DataError(f"{where} is a symbolic link; a cache must be a real folder of your own, "
                        "so remove the link or give another --cache-dir")
    if not stat.S_ISDIR(st.st_mode):
        raise DataError(f"{where} is not a folder; remove it or give another --cache-dir")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        raise DataError(f"{where} belongs to another user, who could plant archives in it; "
                        "give a --cache-dir of your own")
    # Windows has no group/other mode bits (os.stat reports 0o777 for every folder): its folders under
    # %LOCALAPPDATA% are private by their ACLs, which Python cannot read, so only POSIX modes are checked
    if os.name != "nt" and st.st_mode & 0o022:
        raise DataError(f"{where} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                        f"run 'chmod 700 {folder}' or give another --cache-dir")
    return folder


# ---------------------------------------------------------------- the index

@contextlib.contextmanager
def _locked(folder: Path):
    """Hold an exclusive lock on the cache folder while its index is read and rewritten: concurrent
    fits record their archives one after the other, and prune never races a fit's record."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: one process at a time is assumed
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_index(folder: Path) -> dict[str, dict]:
    """The archives this cache wrote: file name -> {"sha256", "size"}. Missing or unreadable: none."""
    path = folder / INDEX
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > (64 << 20):
            return {}
        with open(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(document, dict) or document.get("format") != INDEX_FORMAT:
        return {}
    archives = document.get("archives")
    if not isinstance(archives, dict):
        return {}
    return {name: entry for name, entry in archives.items()
            if isinstance(name, str) and _ARCHIVE_NAME.fullmatch(name) and isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str) and isinstance(entry.get("size"), int)}


def _write_index(folder: Path, archives: dict[str, dict]) -> None:
    document = {"format": INDEX_FORMAT, "version": 1, "archives": dict(sorted(archives.items()))}
    with immediate_writes():
        atomic_write_text(folder / INDEX, json.dumps(document, indent=1, sort_keys=True) + "\n")


def record_archive(folder: Path, target: Path) -> None:
    """Name a freshly written (or verified) archive in the index, with the hash of its bytes."""
    st = os.lstat(target)
    entry = {"sha256": sha256_file(target), "size": st.st_size}
    with _locked(folder):
        archives = read_index(folder)
        archives[target.name] = entry
        _write_index(folder, archives)


def store_archive(folder: Path, target: Path, write) -> None:
    """Write a cache archive at once (it is not an output of the run) and record it in the index."""
    with immediate_writes():
        write()
    record_archive(folder, target)


def reused_archive(folder: Path, target: Path) -> None:
    """A cached archive that loaded and matched its sources: mark its use (for prune --older-than),
    and index it if an older hlmcli wrote it before the cache had an index."""
    try:
        os.utime(target)  # last use, for 'hlmcli cache prune --older-than'
    except OSError:
        pass
    if target.name not in read_index(folder):
        try:
            record_archive(folder, target)
        except OSError:
            pass


def remove_stale_cache_temporaries(folder: Path) -> tuple[int, int]:
    """Temp files of killed runs, ours only (an archive's or the index's): others' are left alone."""
    return remove_stale_temporaries(folder, keep=lambda name: _OUR_TEMP.fullmatch(name) is not None)


def source_mode(*paths) -> int:
    """The permission bits every source shares: a cached copy is never more readable than its data."""
    mode = 0o666
    for p in paths:
        mode &= os.stat(p).st_mode
    return stat.S_IMODE(mode) & 0o666


def cached_archive(paths, options, fmt=None, delimiter=None, cache_dir=None,
                   warn=lambda message: None) -> tuple[Archive, str]:
    """Load the archive for these sources (one file per level, the same file allowed where the
    builder allows it) and options, building it if absent, stale or damaged.

    Returns the archive and what happened: "reused", "built" or "rebuilt (…)"."""
    from .archive_levels import build_from_paths

    paths = tuple(paths)
    return load_or_build(
        paths, lambda hashes: cache_key(hashes, options, fmt, delimiter),
        lambda target: load_archive(target, options.n_levels),
        lambda: build_from_paths(paths, options, fmt, delimiter, warn=warn),
        lambda archive, target: write_archive(archive, target, mode=source_mode(*paths)), cache_dir, warn)


def load_or_build(paths, key_of, load, build, write, cache_dir=None, warn=lambda message: None):
    """The cache's one way: the archive stored under
    key_of(the sources' hashes) if it loads and was built from these very files, else build() it and
    store it with write(archive, target). Returns (archive, "reused" | "built" | "rebuilt (…)")."""
    for p in paths:  # before hashing: /dev/zero or a FIFO would never end
        check_regular(p, "data file")
    folder = secure_cache_dir(cache_dir_for(cache_dir))
    remove_stale_cache_temporaries(folder)
    hashes = tuple(verified.source_sha256(p) for p in paths)  # trusted as verified.py trusts an archive
    target = folder / f"{key_of(hashes)}.mdm"
    status = "built"
    if os.path.lexists(target):
        try:
            check_regular(target, "cached archive")
            archive = load(target)
            recorded = tuple(s.sha256 for s in archive.sources)
            if recorded != hashes:
                status = "rebuilt (the cached archive was built from other data)"
                warn(f"{target}: cached archive does not match the input files; rebuilding it")
            else:
                reused_archive(folder, target)
                return archive, "reused"
        except CorruptArchive:
            status = "rebuilt (the cached archive was damaged)"
            warn(f"{target}: cached archive failed its checksum; rebuilding it")
        except DataError as exc:
            status = "rebuilt (the cached archive was unusable)"
            warn(f"{exc}; rebuilding it")
        if os.path.islink(target) or not os.path.isfile(target):
            raise DataError(f"{target}: not a regular file in the cache folder; remove it")
    archive = build()
    if tuple(s.sha256 for s in archive.sources) != hashes:
        raise DataError(f"{paths[0]}: the data changed while it was being read; run the command again")
    store_archive(folder, target, lambda: write(archive, target))
    archive.path = target
    return archive, status


# ---------------------------------------------------------------- hlmcli cache list / prune

@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    mtime: float
    sources: tuple[str, ...]
    readable: bool


def _peek_sources(path: Path) -> tuple[tuple[str, ...], bool]:
    """Source names from an archive's header, without reading its arrays (for listing only)."""
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(PREFIX.size)
            if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
                return (), False
            _, version, _, header_len, _ = PREFIX.unpack(prefix)
            if version not in READABLE_VERSIONS or header_len > (1 << 30):
                return (), False
            header = json.loads(handle.read(header_len).decode("utf-8"))
        return tuple(str(s.get("name", "?")) for s in header.get("sources", [])), True
    except (OSError, ValueError, struct.error, AttributeError):
        return (), False


def list_cache(cache_dir=None) -> tuple[Path, list[CacheEntry]]:
    folder = cache_dir_for(cache_dir)
    if not os.path.lexists(folder):
        return folder, []
    secure_cache_dir(folder, create=False)
    entries = []
    for p in sorted(folder.glob("*.mdm")):
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            continue
        sources, ok = _peek_sources(p)
        entries.append(CacheEntry(p, st.st_size, st.st_mtime, sources, ok))
    return folder, entries


def indexed_names(cache_dir=None) -> set[str]:
    """The file names the cache's index holds (what 'hlmcli cache prune' may delete)."""
    folder = cache_dir_for(cache_dir)
    return set(read_index(folder)) if os.path.isdir(folder) else set()


def prune_cache(cache_dir=None, older_than_days: float | None = None) -> tuple[Path, int, int]:
    """Remove cached archives not used for `older_than_days` (all when None) and our leftover temp files.

    Only archives the index names and whose bytes still have the recorded SHA-256 are deleted; any
    other file in the folder is left alone. Returns the folder, the number of files removed and the
    bytes freed."""
    if older_than_days is not None and not (math.isfinite(older_than_days) and older_than_days >= 0):
        raise DataError(f"older_than_days={older_than_days!r}: give a finite number of days, 0 or more")
    folder = cache_dir_for(cache_dir)
    if not os.path.lexists(folder):
        return folder, 0, 0
    secure_cache_dir(folder, create=False)
    removed, freed = remove_stale_cache_temporaries(folder)
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    with _locked(folder):
        archives = read_index(folder)
        kept = {}
        for name, entry in archives.items():
            p = folder / name
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue  # gone: drop it from the index
            except OSError:
                kept[name] = entry
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                continue  # replaced by something else since: not ours any more, never deleted
            if cutoff is not None and st.st_mtime >= cutoff:
                kept[name] = entry
                continue
            try:
                if sha256_file(p) != entry["sha256"]:
                    continue  # the same name, other bytes: not ours any more
                os.unlink(p)
            except OSError:
                kept[name] = entry
                continue
            removed += 1
            freed += st.st_size
        if kept != archives:
            _write_index(folder, kept)
    return folder, removed, freed
