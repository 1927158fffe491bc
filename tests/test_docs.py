"""The man page renders without warnings and documents every command and option; the README shows
the two commands that CI and new users run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from hlmcli.cli import main

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man" / "hlmcli.1"


def rendered() -> str:
    env = {**os.environ, "MANWIDTH": "100", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(["man", "--warnings", "-l", str(MAN)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    assert proc.stderr.strip() == "", proc.stderr
    return proc.stdout


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_page_renders_without_warnings():
    assert "hlmcli mdm build" in rendered()


def _commands(group: click.Group, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_man_page_documents_every_option():
    text = MAN.read_text().replace("\\-", "-")
    for path, cmd in _commands(main):
        assert " ".join(path) in text.replace("\\fB", "").replace("\\fR", "")
        for param in cmd.params:
            if isinstance(param, click.Option):
                longest = max(param.opts, key=len)
                assert longest in text, f"{' '.join(path)} {longest} is not in the man page"


def test_man_page_documents_exit_codes_and_json_schema():
    text = MAN.read_text().replace("\\-", "-")
    assert "EXIT STATUS" in text and re.search(r"\.B 3\n", text)
    for key in ("schema", "fixed_effects", "variance_components", "robust_se", "hypothesis_tests", "icc"):
        assert key in text


def test_readme_states_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash)?\n(.*?)```", readme, re.S)
    assert "pip install" in blocks[0] and "hlmcli fit" in blocks[0]
    assert "python -m pytest -q" in blocks[1]
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_readme_shows_the_current_output():
    golden = (ROOT / "tests" / "golden" / "hsb_m4.txt").read_text(encoding="utf-8")
    assert golden[golden.index("Final Results"):] in (ROOT / "README.md").read_text(encoding="utf-8")
