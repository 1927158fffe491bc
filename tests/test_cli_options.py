"""The command line's contract: exit codes listed in --help, a missing or unknown --id is a usage
error (exit 2), and options that would do nothing in the combination given are refused in one line
(exit 2) instead of being ignored (hlmcli/cli/flags.py)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import DATA, ROOT, SAMPLE, hlmcli

from hlmcli import errors

HSB = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"]
EMPTY = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]
H = DATA / "hglm"
CONTRA = [H / "contra_l1.csv", H / "contra_l2.csv", "-1", "USE = b0 + b1*URBAN", "-2", "b0 = g00 + u0",
          "--id", "DISTRICT", "--family", "bernoulli"]
MMMEC = [H / "mmmec_l1.csv", H / "mmmec_l2.csv", "-1", "DEATHS = b0 + b1*UVB", "-2", "b0 = g00 + u0",
         "--id", "REGION", "--family", "poisson"]
CODES = {errors.EXIT_OK, errors.EXIT_DATA, errors.EXIT_USAGE, errors.EXIT_NOT_CONVERGED, errors.EXIT_INTERNAL,
         errors.EXIT_INTERRUPTED}


def one_line_usage_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)


@pytest.mark.parametrize("command", [[], ["fit"]])
def test_help_lists_the_exit_codes(command):
    text = hlmcli(*command, "--help", check=True).stdout
    listed = {int(c) for c in re.findall(r"^\s+(\d+)\s+\S", text[text.index("Exit status:"):], re.M)}
    assert listed == CODES == {0, 1, 2, 3, 70, 130}


def test_man_page_lists_the_same_exit_codes():
    page = (ROOT / "man" / "hlmcli.1").read_text()
    section = page[page.index(".SH EXIT STATUS"):].split("\n.SH ", 1)[0]
    assert {int(c) for c in re.findall(r"^\.B (\d+)$", section, re.M)} == CODES


def test_missing_or_unknown_id_is_a_usage_error(tmp_path):
    one_line_usage_error(hlmcli("fit", *HSB, *EMPTY), "no unit id column given", "--id")
    one_line_usage_error(hlmcli("fit", *HSB, "--id", "SCHOOL", *EMPTY), "hsb1.csv", "no unit id column 'SCHOOL'")
    one_line_usage_error(hlmcli("mdm", "build", *HSB, "-o", tmp_path / "x.mdm"), "no unit id column given")
    one_line_usage_error(hlmcli("mdm", "build", *HSB, "--id2", "ID", "--id1", "SCHOOL", "-o", tmp_path / "x.mdm"),
                         "no unit id column 'SCHOOL'")
    assert not (tmp_path / "x.mdm").exists()


@pytest.fixture(scope="module")
def archive(hsb_archive):
    return hsb_archive  # the session's HSB archive (conftest.py): one build per test run, not one per file


# Each: extra arguments for a fit of the normal model on the archive, and words the refusal must hold.
NORMAL_CONFLICTS = {
    "quadrature without hglm": (["--quadrature-points", "9"], ["--quadrature-points", "outcome is normal"]),
    "trials without binomial": (["--trials", "SES"], ["--trials", "outcome is normal"]),
    "exposure without poisson": (["--exposure", "SES"], ["--exposure", "outcome is normal"]),
    "overdispersion normal": (["--overdispersion"], ["--overdispersion", "outcome is normal"]),
    "estimation normal": (["--estimation", "laplace"], ["--estimation", "outcome is normal"]),
    "ols-units without full output": (["--ols-units", "3"], ["--ols-units", "--full-output"]),
    "compare-params alone": (["--compare-params", "3"], ["--compare-params", "--compare-deviance"]),
    "scheduler without dask": (["--scheduler", "tcp://127.0.0.1:9"], ["--scheduler", "--engine dask"]),
    "build options with an archive": (["--id", "ID", "--delimiter", ";", "--missing", "now"],
                                      ["--id, --missing, --delimiter", "hsb.mdm is an archive"]),
    "l1-vars with an archive": (["--l1-vars", "SES"], ["--l1-vars", "archive already built"]),
    "force without a .hlm file": (["--force"], ["--force", ".hlm"]),
    "allow-outside without a .hlm file": (["--allow-outside"], ["--allow-outside", ".hlm"]),
    "keep-failed-output without files": (["--keep-failed-output"], ["--keep-failed-output", "-o FILE"]),
    "timestamp in json": (["--timestamp", "--format", "json"], ["--timestamp", "--format json"]),
}


@pytest.mark.parametrize("case", sorted(NORMAL_CONFLICTS))
def test_conflicting_options_of_a_normal_fit_are_refused(archive, case):
    extra, words = NORMAL_CONFLICTS[case]
    one_line_usage_error(hlmcli("fit", archive, *EMPTY, *extra), *words)


HGLM_CONFLICTS = {
    "quadrature with pql": (CONTRA, ["--quadrature-points", "5"], ["--quadrature-points is for --estimation agq", "pql"]),
    "quadrature with laplace": (CONTRA, ["--estimation", "laplace", "--quadrature-points", "5"],
                                ["--quadrature-points", "laplace"]),
    "trials with bernoulli": (CONTRA, ["--trials", "URBAN"], ["--trials", "bernoulli"]),
    "trials with poisson": (MMMEC, ["--trials", "UVB"], ["--trials", "poisson"]),
    "exposure with bernoulli": (CONTRA, ["--exposure", "URBAN"], ["--exposure", "bernoulli"]),
    "overdispersion bernoulli": (CONTRA, ["--overdispersion"], ["--overdispersion", "0/1 outcome"]),
    "overdispersion laplace": (MMMEC, ["--overdispersion", "--estimation", "laplace"], ["--overdispersion", "pql"]),
    "reml with laplace": (CONTRA, ["--reml", "--estimation", "laplace"], ["--reml", "PQL only"]),
    "max-iterations hglm": (CONTRA, ["--max-iterations", "5"], ["--max-iterations", "HGLM"]),
}


@pytest.mark.parametrize("case", sorted(HGLM_CONFLICTS))
def test_conflicting_options_of_an_hglm_fit_are_refused(case):
    data, extra, words = HGLM_CONFLICTS[case]
    one_line_usage_error(hlmcli("fit", *data, *extra), *words)


def test_options_that_belong_together_still_work(archive, tmp_path):
    # one call for the options that do not exclude each other (each CLI call costs a Python start-up)
    hlmcli("fit", archive, *EMPTY, "--full-output", "--ols-units", "2", "--timestamp", "--keep-failed-output", "-o",
           tmp_path / "out.txt", check=True)
    text = (tmp_path / "out.txt").read_text()
    assert "Date:" in text and "Level-1 OLS regressions (first 2 units" in text
    hlmcli("fit", archive, *EMPTY, "--ml", "--compare-deviance", "48000", "--compare-params", "2", check=True)
    hlmcli("fit", *CONTRA, "--estimation", "agq", "--quadrature-points", "5", check=True)


def test_plot_and_build_options_that_do_nothing_are_refused(archive, tmp_path):
    one_line_usage_error(hlmcli("plot", "shrinkage", archive, *EMPTY, "--x", "SES", "-o", tmp_path / "a.png"),
                         "--x is for equation and units plots")
    one_line_usage_error(hlmcli("plot", "caterpillar", archive, *EMPTY, "--seed", "3", "-o", tmp_path / "a.png"),
                         "--seed is for units plots")
    one_line_usage_error(hlmcli("plot", "equation", archive, *EMPTY, "--coef", "INTRCPT1", "-o", tmp_path / "a.png"),
                         "--coef is for shrinkage, caterpillar, diagnostics and eb-ols plots")
    one_line_usage_error(hlmcli("plot", "units", archive, *EMPTY, "--x-range=-1,1", "-o", tmp_path / "a.png"),
                         "--x-range", "saved JSON fit")
    one_line_usage_error(hlmcli("mdm", "build", *HSB, "--id", "ID", "--force", "-o", tmp_path / "b.mdm"),
                         "--force", "template")
    assert not list(tmp_path.iterdir())


def test_duplicated_csv_header_is_refused_end_to_end(tmp_path):
    l1 = tmp_path / "l1.csv"
    lines = (SAMPLE / "hsb" / "hsb1.csv").read_text().splitlines()
    l1.write_text("\n".join([lines[0] + ",MATHACH"] + [row + ",0" for row in lines[1:]]) + "\n")
    proc = hlmcli("fit", l1, HSB[1], "--id", "ID", *EMPTY)
    assert proc.returncode == 1 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert "l1.csv: column 'MATHACH' is named twice (columns 5 and 6)" in proc.stderr


def test_model_and_plot_refuse_options_that_do_nothing(archive, tmp_path):
    one_line_usage_error(hlmcli("model", archive, *EMPTY, "--trials", "SES"), "--trials", "outcome is normal")
    one_line_usage_error(hlmcli("model", archive, *EMPTY, "--id", "ID"), "--id", "archive already built")
    one_line_usage_error(hlmcli("plot", "caterpillar", archive, *EMPTY, "--delimiter", ";", "-o", tmp_path / "c.png"),
                         "--delimiter", "archive already built")
    assert "MATHACH" in hlmcli("model", *HSB, "--id", "ID", *EMPTY, check=True).stdout


def test_python_m_knows_every_command():
    """`python -m hlmcli.cli` (what the tests run when no `hlmcli` script is installed) has the commands
    defined last in the module too: the command line starts only after all of them are registered."""
    proc = subprocess.run([sys.executable, "-m", "hlmcli.cli", "explain", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "FIT_JSON HLM_OUTPUT" in proc.stdout, proc.stderr
