"""The archive cache behind `hlmcli fit LEVEL1 LEVEL2 --id ID`: keyed by the sources' content and the build options."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .archive import FORMAT_VERSION, Archive, BuildOptions, CorruptArchive, build_from_files, load_archive, write_archive
from .files import sha256_file

CACHE_FOLDER = ".hlmcli-cache"


def cache_key(level1_path, level2_path, options: BuildOptions, fmt: str | None, delimiter: str | None) -> str:
    material = {
        "format_version": FORMAT_VERSION,
        "level1": sha256_file(level1_path), "level2": sha256_file(level2_path),
        "options": options.as_dict(), "format": fmt, "delimiter": delimiter,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def cache_dir_for(level1_path, explicit: str | os.PathLike | None) -> Path:
    """--cache-dir, else $HLMCLI_CACHE_DIR, else a folder next to the data, else the user's cache folder."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("HLMCLI_CACHE_DIR")
    if env:
        return Path(env)
    beside = Path(level1_path).resolve().parent / CACHE_FOLDER
    if _writable_dir(beside):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hlmcli"


def cached_archive(level1_path, level2_path, options: BuildOptions, fmt=None, delimiter=None,
                   cache_dir=None, warn=lambda message: None) -> tuple[Archive, str]:
    """Load the archive for these sources and options, building it if absent, stale or damaged.

    Returns the archive and what happened: "reused", "built" or "rebuilt (…)".
    """
    folder = cache_dir_for(level1_path, cache_dir)
    key = cache_key(level1_path, level2_path, options, fmt, delimiter)
    target = folder / f"{key}.mdm"
    status = "built"
    if target.exists():
        try:
            return load_archive(target), "reused"
        except CorruptArchive:
            status = "rebuilt (the cached archive was damaged)"
            warn(f"{target}: cached archive failed its checksum; rebuilding it")
    archive = build_from_files(level1_path, level2_path, options, fmt, delimiter, warn=warn)
    if _writable_dir(folder):
        write_archive(archive, target)
        archive.path = target
    return archive, status
