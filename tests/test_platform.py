"""The cache on Windows and macOS, simulated: where it goes, and that Windows folders (which report
mode 0777, having ACLs instead of POSIX bits) are not refused as writable by others."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hlmcli.io import cache
from hlmcli.errors import DataError


def test_default_cache_folder_by_platform(monkeypatch, tmp_path):
    monkeypatch.delenv("HLMCLI_CACHE_DIR", raising=False)
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert cache.default_cache_dir("win32") == tmp_path / "AppData" / "Local" / "hlmcli" / "Cache"
    assert cache.default_cache_dir("darwin") == Path.home() / "Library" / "Caches" / "hlmcli"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir("linux") == tmp_path / "xdg" / "hlmcli"
    monkeypatch.setenv("HLMCLI_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.default_cache_dir("win32") == tmp_path / "mine"


@pytest.mark.skipif(os.name == "nt", reason="simulates Windows on a POSIX system")
def test_windows_folders_are_not_refused_for_their_mode_bits(monkeypatch, tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    os.chmod(folder, 0o777)  # what os.stat reports for any folder on Windows
    with pytest.raises(DataError, match="can be written by other users"):
        cache.secure_cache_dir(folder)
    monkeypatch.setattr(os, "name", "nt")
    assert cache.secure_cache_dir(folder) == folder
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777  # nothing changed on disk
