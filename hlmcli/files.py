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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


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


def atomic_write(path: str | os.PathLike, chunks) -> None:
    """Write an iterable of bytes to `path` so readers only ever see the old or the whole new file."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise DataError(f"{path}: the folder {directory} does not exist; create it or choose another output path")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise DataError(f"{path}: cannot write here ({exc.strerror}); choose a writable output path") from None
    try:
        set_plain_mode(fd)
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
