"""Small file helpers: content hashes and atomic writes (temp file, then rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import DataError

_CHUNK = 1 << 22


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


MAX_TEXT_FILE = 16 << 20  # model files, templates, JSON fits: far larger is not one of ours


def check_regular(path: str | os.PathLike, what: str = "file") -> Path:
    """Refuse what is not a plain readable file (a folder, FIFO, device, socket, symlink loop) before
    anything opens or hashes it: /dev/zero would be hashed forever, a FIFO would block."""
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise DataError(f"{path}: a symbolic link to a missing file; fix the link") from None
        raise DataError(f"{path}: no such file; check the path") from None
    except OSError as exc:  # ELOOP: a symlink loop; ENAMETOOLONG; EACCES on a folder on the way
        raise DataError(f"{path}: cannot be opened ({exc.strerror}); check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a folder, not a {what}; give the file's path")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: is not a regular file (a device, FIFO or socket); give a {what} on disk")
    return path


def read_small_bytes(path: str | os.PathLike, what: str = "file") -> bytes:
    path = check_regular(path, what)
    if path.stat().st_size > MAX_TEXT_FILE:
        raise DataError(f"{path}: {path.stat().st_size} bytes is too large for a {what}; check the path")
    return path.read_bytes()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        try:
            return Path(a).resolve() == Path(b).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return False


def refuse_overwriting_inputs(output: str | os.PathLike, inputs) -> None:
    for source in inputs:
        if source is not None and Path(output).exists() and same_file(output, source):
            raise DataError(
                f"{output}: this is one of the input files; choose another output path "
                "so the input is not overwritten"
            )


def set_plain_mode(fd: int) -> None:
    """mkstemp makes files 0600; give ours the mode a plain open() would (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def _lock(fd: int, blocking: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locks, so no cleanup of others' files
        return blocking
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> tuple[int, int]:
    """Remove temp files that a killed run left behind (ours are named .NAME.XXXX.tmp). A writer holds
    a lock on its temp file for as long as it lives, so a file we can lock has no writer left."""
    import stat

    removed = freed = 0
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    for tmp in Path(directory).glob(pattern):
        try:
            st = os.lstat(tmp)
            if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
                continue
            fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            if _lock(fd, blocking=False) and tmp.exists():
                os.unlink(tmp)
                removed += 1
                freed += st.st_size
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed, freed


def atomic_write(path: str | os.PathLike, chunks, mode: int | None = None) -> None:
    """Write an iterable of bytes to `path` so readers only ever see the old or the whole new file.

    `mode` sets the permission bits (default: what a plain open() would give)."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise DataError(f"{path}: the folder {directory} does not exist; create it or choose another output path")
    remove_stale_temporaries(directory, path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise DataError(f"{path}: cannot write here ({exc.strerror}); choose a writable output path") from None
    try:
        _lock(fd, blocking=True)  # held until the file is renamed or removed; marks it as in use
        if mode is None:
            set_plain_mode(fd)
        else:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, [text.encode("utf-8")])


def output_from_file(owner: str | os.PathLike, written: str, key: str, allow_outside: bool = False) -> Path:
    """An output name written inside an .hlm or .mdmt file: relative to that file's folder, and not
    allowed to leave it (no '..', no absolute path) unless the user passed --allow-outside."""
    owner = Path(owner)
    name = written.strip().replace("\\", "/")
    if not name:
        raise DataError(f"{owner}: {key} is empty; give a file name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise DataError(f"{owner}: {key} contains control characters; give a plain file name")
    given = Path(name)
    folder = owner.resolve().parent
    target = Path(os.path.normpath(given if given.is_absolute() else folder / given))
    if folder not in target.parents and not allow_outside:
        raise DataError(f"{owner}: {key}:{written.strip()} points outside {folder}; use a name in that folder, "
                        "or pass --allow-outside to write there")
    return target


def refuse_clobber(path: str | os.PathLike, force: bool, origin: str) -> None:
    """Names that came from a file (not typed by the user) never overwrite an existing file without --force."""
    if not force and os.path.lexists(path):
        raise DataError(f"{path}: already exists and its name comes from {origin}; pass --force to overwrite it, "
                        "or change the name")
