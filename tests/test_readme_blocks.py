"""Every ```sh and ```python block of README.md runs as written: the fast test checks that each block
parses (bash -n, compile), that each hlmcli command's options parse, and that the files it names are
shipped; the slow one runs every block, in order, in a scratch folder holding a copy of sample_data/.
A block the README marks `<!-- readme-test: syntax only, WHY -->` (an install, the test run itself, a
cluster, the user's own files) is only checked for syntax."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hlmcli.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- readme-test: syntax only, "
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>sh|python)\n(?P<code>.*?)```", re.S)


def blocks() -> list[tuple[int, str, str, bool]]:
    """(line, language, code, runnable) of each sh and python block."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in BLOCK.finditer(text):
        line = text[:m.start("lang")].count("\n") + 1
        out.append((line, m.group("lang"), m.group("code"), not m.group("before").startswith(MARK)))
    return out


def hlmcli_commands(code: str) -> list[list[str]]:
    """The hlmcli command lines of a shell block, as argument lists (comments, `&&` chains and
    line continuations handled as the shell does)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in words + ["&&"]:
            if word in ("&&", ";", "||"):
                if command and command[0] == "hlmcli":
                    commands.append(command[1:])
                command = []
            else:
                command.append(word)
    return commands


def _command(args: list[str]):
    cmd, path = main, []
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    return cmd, path, args


def test_readme_blocks_parse_and_name_shipped_files():
    found = blocks()
    runnable = [code for _, lang, code, run in found if run and lang == "sh"]
    # the examples that must run on shipped data, never marked syntax-only
    assert any("--family bernoulli" in c for c in runnable) and any("--plausible-values" in c for c in runnable)
    assert any("--weight3" in c for c in runnable)
    for line, lang, code, run in found:
        where = f"README.md line {line}"
        if lang == "python":
            compile(code, where, "exec")
            continue
        proc = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
        assert proc.returncode == 0, f"{where}: {proc.stderr}"
        folder = ROOT
        variables = dict(re.findall(r"^(\w+)=(\S+)$", code, re.M))
        for args in hlmcli_commands(code):
            cmd, path, rest = _command(args)
            assert path, f"{where}: 'hlmcli {' '.join(args)}' names no command"
            cmd.make_context(" ".join(path), list(rest))  # raises on an unknown option or a bad choice
            if not run:
                continue
            if re.search(r"^cd (\S+)$", code, re.M):
                folder = ROOT / re.search(r"^cd (\S+)$", code, re.M).group(1)
            for arg in rest:
                arg = re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), m.group(0)), arg)
                if re.search(r"\.(csv|sav|hlm|mdmt|txt)$", arg) and "/" in arg or (folder != ROOT and arg.endswith(".csv")):
                    assert (folder / arg).exists(), f"{where}: {arg} is not in the repository"


@pytest.mark.slow
def test_readme_blocks_run(tmp_path):
    """Each runnable block in a scratch copy of sample_data/ (and the tests/data folders the four-level,
    ordinal, negative binomial, multinomial, cross-classified and HMLM examples read), with this
    environment's hlmcli first on PATH."""
    pytest.importorskip("matplotlib")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    for name in ("four_level", "ordinal", "negbin", "crossed", "multinomial",
                 "hglm_weights", "hmlm"):  # the README's examples on these data sets
        shutil.copytree(ROOT / "tests" / "data" / name, tmp_path / "tests" / "data" / name)
    (tmp_path / "docs").mkdir()
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "HLMCLI_CACHE_DIR": str(tmp_path / "cache"), "PYTHONIOENCODING": "utf-8"}
    for line, lang, code, run in blocks():
        if not run:
            continue
        if lang == "python":
            proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        else:
            proc = subprocess.run(["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"README.md line {line}: exit {proc.returncode}: {proc.stderr[-2000:]}"
