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


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


@pytest.fixture
def in_scratch_copy(tmp_path, monkeypatch):
    """A scratch folder that sees the repository's sample data, so README commands write nothing here."""
    (tmp_path / "sample_data").symlink_to(ROOT / "sample_data")
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HLMCLI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_readme_notebook_example_runs(in_scratch_copy, capsys):
    pytest.importorskip("matplotlib")
    pytest.importorskip("jinja2")
    (code,) = [b for b in _readme_blocks("python") if "hlmcli.fit(" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    res = namespace["res"]
    assert len(namespace["schools_eb"]) == 160
    assert namespace["text"].startswith("hlmcli ") and namespace["doc"].startswith("{")
    assert "\\begin{tabular}" in namespace["latex"]
    assert (in_scratch_copy / "caterpillar.png").exists()
    assert abs(res.deviance - 46638.6024) < 1e-3  # hsb_m4 in tests/data/hlm7_cases.json


def test_readme_plot_commands_regenerate_the_images(in_scratch_copy):
    pytest.importorskip("matplotlib")
    import shlex

    from conftest import hlmcli

    commands = [line for b in _readme_blocks("sh") for line in b.splitlines() if line.startswith("hlmcli plot")]
    assert len(commands) == 2
    for line in commands:
        args = shlex.split(line)[1:]
        image = args[args.index("-o") + 1]
        assert f"]({image})" in (ROOT / "README.md").read_text(encoding="utf-8")
        assert (ROOT / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the committed picture
        proc = hlmcli(*args, cwd=in_scratch_copy)
        assert proc.returncode == 0, proc.stderr
        assert (in_scratch_copy / image).stat().st_size > 10_000
