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


def test_fit_help_shows_option_groups_and_runnable_examples():
    from conftest import hlmcli

    proc = hlmcli("fit", "--help")
    assert proc.returncode == 0, proc.stderr
    headings = [line for line in proc.stdout.splitlines() if line.endswith(" options:")]
    assert headings == ["Data options:", "Model options:", "Estimation options:", "HGLM options:", "Survey options:",
                        "Output options:", "Engine options:"]
    text = proc.stdout
    assert text.index("Data options:") < text.index("  --id TEXT") < text.index("Model options:")
    assert text.index("Survey options:") < text.index("--weight1") < text.index("Output options:")
    assert text.index("Engine options:") < text.index("--scheduler")
    assert "Examples (in sample_data/):" in text and "hlmcli fit hsb/hsb1.csv hsb/hsb2.csv --id ID" in text
    assert "Exit status:" in text


def test_every_option_of_every_command_is_in_a_group():
    from hlmcli.cli.help import commands, grouped_options

    for path, cmd in commands(main):
        assert "Other" not in grouped_options(cmd, path), path


def test_plot_offers_only_the_options_it_uses(tmp_path):
    from conftest import hlmcli

    proc = hlmcli("plot", "--help")
    listed = set(re.findall(r"(--[a-z0-9-]+)", proc.stdout))
    assert "--ascii" not in listed  # plot prints no equations
    assert {"--level1", "--level2", "--level3", "--id3", "--family", "--coef", "--x"} <= listed


def test_man_page_lists_each_commands_options_by_group_with_the_help_text():
    from hlmcli.cli.help import MAN_BEGIN, MAN_END, man_option_groups

    text = MAN.read_text(encoding="utf-8")
    block = text[text.index(MAN_BEGIN):text.index(MAN_END) + len(MAN_END) + 1]
    assert block == man_option_groups(main), "run: python -m hlmcli.cli.man man/hlmcli.1"
    # spot checks against --help's own words, so the generator cannot drift either
    fit = block[block.index(".SS fit\n"):block.index(".SS man\n")]
    assert fit.index("\\fIHGLM options\\fR") < fit.index("\\fB\\-\\-family ") < fit.index("\\fISurvey options\\fR")
    assert "Level\\-1 sampling weight variable (HLM's level1weight:)." in fit


def _epilog_examples():
    from hlmcli.cli.help import EXAMPLES

    for command, text in EXAMPLES.items():
        joined = text.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.strip().startswith("hlmcli "):
                yield command, line.strip()


def test_help_examples_parse_and_name_shipped_files():
    import shlex

    from hlmcli.cli.help import EXAMPLES

    examples = list(_epilog_examples())
    assert {c for c, _ in examples} == set(EXAMPLES) == {"fit", "mdm build", "plot", "table"}
    for command, line in examples:
        args = shlex.split(line)[1:]
        words = command.split()
        assert args[:len(words)] == words, line
        cmd = main
        for word in words:
            cmd = cmd.commands[word]
        cmd.make_context(" ".join(words), args[len(words):])  # raises on an unknown option or bad choice
        for arg in args:
            if arg.endswith((".csv", ".txt", ".mdmt")) and "/" in arg:
                assert (ROOT / "sample_data" / arg).exists(), f"{line}: {arg} is not in sample_data/"


@pytest.mark.slow
def test_help_examples_run_in_sample_data(tmp_path):
    """Every example of --help, run as written in a copy of sample_data (after the builds and fits
    whose outputs the later examples read)."""
    pytest.importorskip("matplotlib")
    import shlex

    from conftest import hlmcli

    work = tmp_path / "sample_data"
    shutil.copytree(ROOT / "sample_data", work)
    setup = [["mdm", "build", "hsb/hsb1.csv", "hsb/hsb2.csv", "--id", "ID", "-o", "hsb.mdm"],
             ["fit", "hsb.mdm", "--model", "models/m1_empty.txt", "--format", "json", "-o", "m1.json"],
             ["fit", "hsb.mdm", "--model", "models/m2_means.txt", "--format", "json", "-o", "m2.json"]]
    for args in setup:
        assert hlmcli(*args, cwd=work).returncode == 0
    for command, line in _epilog_examples():
        proc = hlmcli(*shlex.split(line)[1:], cwd=work)
        assert proc.returncode == 0, f"{line}: {proc.stderr}"
