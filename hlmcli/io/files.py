"""Small file helpers: content hashes, and every output a command writes (checked, staged, put in place)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

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
    a = "an" if what[:1].lower() in "aeiou" else "a"
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{path}: is a folder, not {a} {what}; give the file's path")
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: is not a regular file (a device, FIFO or socket); give {a} {what} on disk")
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


# Our temp files: mkstemp's name, `.NAME.` + 8 characters of its alphabet + `.tmp`. Only names of
# exactly this form are ever removed, so a user's own hidden `.notes.tmp` is never touched.
_TEMP_NAME = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


def is_our_temporary(filename: str, name: str | None = None) -> bool:
    """Whether `filename` is a temp file that atomic_write makes for `name` (for any name when None)."""
    import re

    return re.fullmatch(_TEMP_NAME.format(name=re.escape(name) if name else r".+"), filename) is not None


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None,
                             keep=lambda filename: True) -> tuple[int, int]:
    """Remove temp files that a killed run left behind (ours are named .NAME.XXXXXXXX.tmp, see
    is_our_temporary; `keep` narrows the names further). A writer holds a lock on its temp file for as
    long as it lives, so a file we can lock has no writer left."""
    import stat

    removed = freed = 0
    pattern = f".{name}.*.tmp" if name else ".*.tmp"
    for tmp in Path(directory).glob(pattern):
        if not is_our_temporary(tmp.name, name) or not keep(tmp.name):
            continue
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


# ---------------------------------------------------------------- outputs
#
# Every file a command writes goes through here. What happens depends on what the path is now:
# - nothing, or a regular file: a temp file beside it, renamed over it (readers see old or new, whole);
# - a symbolic link: the same at the link's target (the link stays a link), or refused with --no-follow;
# - a character device or a FIFO: opened and written in place, as `cat > /dev/null` does (a rename
#   would replace /dev/null with a regular file, and leave a FIFO's reader waiting forever);
# - a folder, a block device, a socket, a read-only file: refused, in one line.
# Within output_transaction() (every CLI command runs inside one) writes are staged and only put in
# place when the command ends without an error, all together: a run that fails writes nothing.


@dataclass(frozen=True)
class OutputTarget:
    given: Path  # as the user typed it (for messages)
    path: Path  # where the bytes go: a symbolic link's target
    in_place: bool  # a device or FIFO: written in place, never replaced
    identity: tuple  # two outputs with the same identity are the same file


def output_target(path: str | os.PathLike, no_follow: bool = False) -> OutputTarget:
    """Where an output written to `path` would go, or a DataError saying why it cannot be written."""
    import stat

    given = Path(path)
    if not str(path):
        raise DataError("an output path is empty; give a file name")
    try:
        st = os.lstat(given)
    except FileNotFoundError:
        st = None
    except OSError as exc:  # ENAMETOOLONG, EACCES on a folder on the way, ENOTDIR
        raise DataError(f"{given}: cannot be written ({exc.strerror}); choose another output path") from None
    real = given
    if st is not None and stat.S_ISLNK(st.st_mode):
        if no_follow:
            raise DataError(f"{given}: is a symbolic link, and --no-follow refuses to write through it; "
                            "remove the link or choose another output path")
        real = Path(os.path.realpath(given))
        try:
            st = os.stat(given)
        except FileNotFoundError:  # a dangling link: its target is created, as `cat > link` does
            st = None
        except OSError as exc:  # ELOOP
            raise DataError(f"{given}: a symbolic link that cannot be followed ({exc.strerror}); "
                            "fix the link or choose another output path") from None
    if st is None:
        folder = real.parent if str(real.parent) else Path(".")
        if not folder.is_dir():
            raise DataError(f"{given}: the folder {folder} does not exist; create it or choose another output path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"{given}: the folder {folder} is not writable; choose another output path")
        return OutputTarget(given, real, False, ("new", os.path.realpath(folder), real.name))
    identity = ("file", st.st_dev, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"{given}: is a folder; give a file name for the output")
    if stat.S_ISREG(st.st_mode):
        # root may write anything, so the mode bits say whether the owner meant the file to be kept
        if not os.access(real, os.W_OK) or not st.st_mode & 0o222:
            raise DataError(f"{given}: is read-only; make it writable (chmod u+w) or choose another output path")
        folder = real.parent if str(real.parent) else Path(".")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(f"{given}: its folder {folder} is not writable, so the file cannot be replaced "
                            "safely; choose another output path")
        return OutputTarget(given, real, False, identity)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        if not os.access(given, os.W_OK):
            raise DataError(f"{given}: this device or FIFO is not writable; choose another output path")
        # opened by the given name: /dev/stdout's target (/proc/self/fd/1 -> pipe:[...]) has no path of its own
        return OutputTarget(given, given, True, identity)
    kind = "a block device" if stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a file"
    raise DataError(f"{given}: is {kind}; outputs go to files, character devices (/dev/null) or FIFOs")


def check_outputs(outputs, inputs=(), no_follow: bool | None = None) -> list[OutputTarget]:
    """Check every output of one run before anything is written: each writable, none an input, no two
    the same file. `outputs` pairs an option name (for the message) with a path (None: not given)."""
    if no_follow is None:
        no_follow = _no_follow()
    seen: dict[tuple, str] = {}
    targets = []
    for option, path in outputs:
        if not path:
            continue
        target = output_target(path, no_follow)
        refuse_overwriting_inputs(path, inputs)
        if target.identity in seen:
            raise DataError(f"{path}: {seen[target.identity]} and {option} name the same file; give each output "
                            "its own name")
        seen[target.identity] = option
        targets.append(target)
    return targets


class _Staged:
    """One output written to a temp file, waiting to be put in place."""

    def __init__(self, target: OutputTarget, mode: int | None):
        import stat

        self.target = target
        if target.in_place:  # spooled privately, copied into the device or FIFO at the end
            self.folder = tempfile.mkdtemp(prefix="hlmcli-")
            self.tmp = os.path.join(self.folder, "output")
            self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            return
        self.folder = None
        directory = target.path.parent if str(target.path.parent) else Path(".")
        remove_stale_temporaries(directory, target.path.name)
        try:
            self.fd, self.tmp = tempfile.mkstemp(prefix=f".{target.path.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise DataError(f"{target.given}: cannot write here ({exc.strerror}); choose a writable output path") from None
        try:
            _lock(self.fd, blocking=True)  # held until the file is renamed or removed; marks it as in use
            if mode is None and os.path.isfile(target.path):  # a replaced file keeps its permissions
                mode = stat.S_IMODE(os.stat(target.path).st_mode)
            if mode is None:
                set_plain_mode(self.fd)
            else:
                os.fchmod(self.fd, mode)
        except BaseException:
            self.discard()
            raise

    def write(self, chunks) -> None:
        with open(self.fd, "wb", closefd=False) as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
        self.sync()

    def sync(self) -> None:
        if not self.target.in_place:
            os.fsync(self.fd)

    def commit(self) -> None:
        target = self.target
        if target.in_place:
            self._copy_in_place()
        else:
            try:
                os.replace(self.tmp, target.path)
            except OSError as exc:
                raise DataError(f"{target.given}: cannot be replaced ({exc.strerror}); choose another output path") from None
            self.tmp = None
        self.discard()

    def _copy_in_place(self) -> None:
        import stat

        flags = os.O_WRONLY | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            out = os.open(self.target.path, flags)  # a FIFO waits for its reader here, as `cat > fifo`
        except OSError as exc:
            raise DataError(f"{self.target.given}: cannot be opened for writing ({exc.strerror})") from None
        try:
            if stat.S_ISREG(os.fstat(out).st_mode):  # replaced by a file since it was checked: never half-write it
                raise DataError(f"{self.target.given}: changed from a device or FIFO to a file while hlmcli ran; "
                                "run the command again")
            os.lseek(self.fd, 0, os.SEEK_SET)
            while block := os.read(self.fd, _CHUNK):
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view):]
        except OSError as exc:
            raise DataError(f"{self.target.given}: writing failed ({exc.strerror})") from None
        finally:
            os.close(out)

    def discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            self.tmp = None
        if self.folder is not None:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass
            self.folder = None


class _Transaction:
    def __init__(self, no_follow: bool):
        self.no_follow = no_follow
        self.staged: list[_Staged] = []

    def stage(self, path, mode) -> _Staged:
        target = output_target(path, self.no_follow)
        for other in self.staged:
            if other.target.identity == target.identity:
                raise DataError(f"{path}: two outputs of this run name the same file ({other.target.given}); "
                                "give each output its own name")
        staged = _Staged(target, mode)
        self.staged.append(staged)
        return staged

    def commit(self) -> None:
        # devices and FIFOs first: if one fails (a reader gone), no file on disk has been replaced yet
        try:
            for staged in sorted(self.staged, key=lambda s: not s.target.in_place):
                staged.commit()
        finally:
            self.discard()

    def discard(self) -> None:
        for staged in self.staged:
            staged.discard()
        self.staged = []


_state: contextvars.ContextVar = contextvars.ContextVar("hlmcli_outputs", default=None)


def _no_follow() -> bool:
    active = _state.get()
    return active.no_follow if active is not None else False


def commit_outputs() -> None:
    """Put what is staged so far in place now (before a command says it wrote them)."""
    active = _state.get()
    if active is not None:
        active.commit()


@contextlib.contextmanager
def output_transaction(no_follow: bool | None = None):
    """Stage every output written inside; put them all in place at the end, or none if it fails.

    A command that ends with sys.exit (exit 3 under --keep-failed-output) still commits: it chose to
    write. Any other exception (a user error, Ctrl-C) leaves every output as it was. Nested: joins."""
    active = _state.get()
    if active is not None:
        yield active
        return
    transaction = _Transaction(bool(no_follow))
    token = _state.set(transaction)
    try:
        yield transaction
    except SystemExit:
        _state.reset(token)
        transaction.commit()
        raise
    except BaseException:
        _state.reset(token)
        transaction.discard()
        raise
    else:
        _state.reset(token)
        transaction.commit()


@contextlib.contextmanager
def immediate_writes():
    """Writes inside are put in place at once, outside any transaction (the archive cache: it is
    not an output of the run, and what it holds must be on disk before it is used)."""
    token = _state.set(None)
    try:
        yield
    finally:
        _state.reset(token)


def _write(path, fill, mode) -> None:
    with output_transaction(_no_follow()) as transaction:
        fill(transaction.stage(path, mode))


def atomic_write(path: str | os.PathLike, chunks, mode: int | None = None) -> None:
    """Write an iterable of bytes to `path` so readers only ever see the old or the whole new file
    (a device or FIFO is written in place). Inside output_transaction() the write is staged.

    `mode` sets the permission bits (default: the replaced file's, else what a plain open() would give)."""
    _write(path, lambda staged: staged.write(chunks), mode)


def write_with(path: str | os.PathLike, writer, mode: int | None = None) -> None:
    """As atomic_write, for a library that writes a file by name itself: `writer(temp_path)`."""
    def fill(staged):
        writer(staged.tmp)
        staged.sync()
    _write(path, fill, mode)


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
