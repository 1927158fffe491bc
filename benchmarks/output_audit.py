"""Audit of issue 21's output and cache cases, through the installed command, as a user runs it.

Every output option (-o, --json-out, --residuals-l1, --residuals-l2, plot -o, table -o, mdm build -o)
is pointed at every kind of path (nothing, a regular file, a read-only file, a symbolic link, a
dangling link, a link with --no-follow, a FIFO with a reader, a character device, a folder, a socket,
a symbolic link loop), and two outputs are given one name. Then `cache prune` runs on a folder of
foreign files. The counts are those of the issue's "Done when": internal errors, hangs, replaced
special files, temp files left behind, foreign files deleted.

    python benchmarks/output_audit.py          # about 3 minutes on 2 cores; the device cases need root
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HSB1, HSB2 = ROOT / "sample_data" / "hsb" / "hsb1.csv", ROOT / "sample_data" / "hsb" / "hsb2.csv"
MODEL = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]
EXE = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or "hlmcli"
TIMEOUT = 120


def run(*args, cwd=None):
    try:
        proc = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired:
        return None
    return proc


def kind_of(path: Path) -> str:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "none"
    for test, name in ((stat.S_ISLNK, "link"), (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISDIR, "dir"),
                       (stat.S_ISSOCK, "sock"), (stat.S_ISREG, "file")):
        if test(st.st_mode):
            return name
    return "other"


class Reader(threading.Thread):
    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.alias, self.data = path, path.with_name(path.name + ".alias"), None
        os.link(path, self.alias)
        self.start()

    def run(self):
        with open(self.alias, "rb") as handle:
            self.data = handle.read()

    def finish(self):
        self.join(timeout=5)  # the writer has exited: a reader still waiting will never get data
        if self.is_alive():
            with open(self.alias, "wb"):
                pass
            self.join(timeout=10)
        os.unlink(self.alias)
        return self.data


def make(kind: str, folder: Path, name: str):
    """The path of the given kind, and what must hold after the run: (expected exit, expected kind)."""
    path = folder / name
    if kind == "regular":
        path.write_text("old\n")
    elif kind == "read-only":
        path.write_text("old\n")
        path.chmod(0o444)
    elif kind in ("symlink", "no-follow"):
        (folder / "target").write_text("old\n")
        path.symlink_to(folder / "target")
    elif kind == "dangling":
        path.symlink_to(folder / "target")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "folder":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "loop":
        path.symlink_to(path)
    refused = kind in ("read-only", "no-follow", "folder", "socket", "loop")
    after = {"none": "file", "regular": "file", "read-only": "file", "symlink": "link", "no-follow": "link",
             "dangling": "link", "fifo": "fifo", "device": "chr", "folder": "dir", "socket": "sock", "loop": "link"}[kind]
    return path, (1 if refused else 0), after


KINDS = ["none", "regular", "read-only", "symlink", "dangling", "no-follow", "fifo", "device", "folder", "socket", "loop"]
SPECIAL = {"symlink", "dangling", "no-follow", "fifo", "device", "folder", "socket", "loop"}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="hlmcli-audit-"))
    os.environ["HLMCLI_CACHE_DIR"] = str(work / "cache")
    archive, fit_json = work / "hsb.mdm", work / "m1.json"
    assert run("mdm", "build", HSB1, HSB2, "--id", "ID", "-q", "-o", archive).returncode == 0
    assert run("fit", archive, *MODEL, "--format", "json", "-o", fit_json).returncode == 0
    commands = {
        "fit -o": lambda p: ["fit", archive, *MODEL, "-o", p],
        "fit --json-out": lambda p: ["fit", archive, *MODEL, "--json-out", p],
        "fit --residuals-l1": lambda p: ["fit", archive, *MODEL, "--residuals-l1", p],
        "fit --residuals-l2": lambda p: ["fit", archive, *MODEL, "--residuals-l2", p],
        "plot -o": lambda p: ["plot", "caterpillar", archive, *MODEL, "-q", "-o", p],
        "table -o": lambda p: ["table", fit_json, "-o", p],
        "mdm build -o": lambda p: ["mdm", "build", HSB1, HSB2, "--id", "ID", "-q", "-o", p],
    }
    can_mknod = hasattr(os, "geteuid") and os.geteuid() == 0
    counts = {"runs": 0, "internal_errors": 0, "hangs": 0, "wrong_exit": 0, "replaced_special_files": 0,
              "temp_files_left": 0, "multi_line_errors": 0, "skipped": 0}
    problems = []
    case = 0
    for command, args in commands.items():
        for kind in KINDS:
            if kind == "device" and not can_mknod:
                counts["skipped"] += 1
                continue
            case += 1
            folder = work / f"case{case}"
            folder.mkdir()
            name = "out.svg" if command == "plot -o" else "out.csv"
            path, code, after = make(kind, folder, name)
            reader = Reader(path) if kind == "fifo" else None
            extra = ["--no-follow"] if kind == "no-follow" else []
            proc = run(*args(path), *extra)
            data = reader.finish() if reader else None
            counts["runs"] += 1
            label = f"{command} -> {kind}"
            if proc is None:
                counts["hangs"] += 1
                problems.append(f"{label}: hung")
                continue
            if proc.returncode == 70 or "Traceback" in proc.stderr:
                counts["internal_errors"] += 1
                problems.append(f"{label}: {proc.stderr.strip()}")
            if proc.returncode != code:
                counts["wrong_exit"] += 1
                problems.append(f"{label}: exit {proc.returncode}, expected {code}: {proc.stderr.strip()}")
            if code and len(proc.stderr.strip().splitlines()) != 1:
                counts["multi_line_errors"] += 1
            if kind in SPECIAL and kind_of(path) != after:
                counts["replaced_special_files"] += 1
                problems.append(f"{label}: became a {kind_of(path)}")
            if kind == "fifo" and not data:
                problems.append(f"{label}: the FIFO's reader got nothing")
            left = [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]
            if left:
                counts["temp_files_left"] += len(left)
                problems.append(f"{label}: left {left}")
    # two outputs, one name
    pairs = [("-o", "--json-out"), ("-o", "--residuals-l2"), ("--json-out", "--residuals-l1"),
             ("--residuals-l1", "--residuals-l2")]
    counts["same_name_pairs"] = counts["same_name_pairs_refused"] = 0
    for a, b in pairs:
        folder = work / f"pair{a}{b}"
        folder.mkdir()
        proc = run("fit", archive, *MODEL, a, "x.csv", b, "./x.csv", cwd=folder)
        counts["same_name_pairs"] += 1
        if proc is not None and proc.returncode == 1 and not list(folder.iterdir()):
            counts["same_name_pairs_refused"] += 1
        else:
            problems.append(f"{a} and {b} with one name: {proc and proc.returncode} {list(folder.iterdir())}")
    # prune on a folder of foreign files
    cache = work / "prune"
    cache.mkdir(mode=0o700)
    foreign = {"HSB.mdm": archive.read_bytes(), "hlm7.mdm": b"HLM7", ".notes.tmp": b"n", ".x.mdm.abcd.tmp": b"t",
               "0123456789abcdef0123456789abcdef.mdm": b"k", "index.json.bak": b"{}"}
    for name, data in foreign.items():
        (cache / name).write_bytes(data)
    assert run("fit", HSB1, HSB2, "--id", "ID", *MODEL, "--cache-dir", cache).returncode == 0
    for days in ("nan", "inf", "-1", None):
        run("cache", "prune", "--cache-dir", cache, *(["--older-than", days] if days else []))
    deleted = [n for n, d in foreign.items() if not (cache / n).exists() or (cache / n).read_bytes() != d]
    ours = [p.name for p in cache.glob("*.mdm") if p.name not in foreign]
    counts["foreign_files"] = len(foreign)
    counts["foreign_files_deleted"] = len(deleted)
    counts["cache_archives_left_after_prune"] = len(ours)
    print(json.dumps({"counts": counts, "problems": problems}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 1 if problems or deleted or ours else 0


if __name__ == "__main__":
    sys.exit(main())
