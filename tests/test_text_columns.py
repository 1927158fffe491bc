"""A text column (labels such as F/M) is left out of the archive's variables with a warning; a model or an
option that names one gets one line naming the column, its file, that it holds text and what to do
(exit 1), the same line whichever option names it, not "no such variable"."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import SAMPLE, hlmcli
from test_levels_plausible import pastes_files

TWO = ["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """HSB with a text column in each file (SEXL: F/M in the level-1 file, SECTL in the level-2 file),
    built once into an archive."""
    folder = tmp_path_factory.mktemp("text_columns")
    l1 = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")
    l1["SEXL"] = l1["FEMALE"].map({0: "M", 1: "F"})
    l2 = pd.read_csv(SAMPLE / "hsb" / "hsb2.csv")
    l2["SECTL"] = l2["SECTOR"].map({0: "public", 1: "catholic"})
    l1.to_csv(folder / "kids.csv", index=False)
    l2.to_csv(folder / "schools.csv", index=False)
    proc = hlmcli("mdm", "build", folder / "kids.csv", folder / "schools.csv", "--id", "ID", "-o", folder / "l.mdm")
    assert proc.returncode == 0 and "text column(s) SEXL, SECTL are labels" in proc.stderr, proc.stderr
    return folder / "l.mdm"


def _text_line(column: str, file: str) -> str:
    return (f"hlmcli: error: {file}: column {column} holds text (labels, not numbers), so it is not among the "
            f"variables; recode it as numbers in {file} (e.g. 0 and 1 for two labels) and run again")


@pytest.mark.parametrize("args,column", [
    (["-1", "MATHACH = b0 + b1*SEXL + r", "-2", "b0 = g00 + u0"], "SEXL"),
    (["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + g01*SECTL + u0"], "SECTL"),
    (["-1", "MATHACH = b0 + r", "-2", "b0 = g00 + g01*mean(sexl) + u0"], "sexl"),
    ([*TWO, "--weight1", "SEXL"], "SEXL"),
    ([*TWO, "--weight2", "SECTL"], "SECTL"),
    ([*TWO, "--level1-variance", "SEXL"], "SEXL"),
    ([*TWO, "--known-variance", "SECTL"], "SECTL"),
    ([*TWO, "--occasion", "SEXL", "--level1-covariance", "unrestricted"], "SEXL"),
    ([*TWO, "--plausible-values", "MATHACH,SEXL"], "SEXL"),
    (["-1", "MINORITY = b0", "-2", "b0 = g00 + u0", "--family", "binomial", "--trials", "SEXL"], "SEXL"),
], ids=["level-1 predictor", "level-2 predictor", "mean()", "--weight1", "--weight2", "--level1-variance",
        "--known-variance", "--occasion", "--plausible-values", "--trials"])
def test_a_text_column_named_anywhere_is_one_line(labelled, args, column):
    proc = hlmcli("fit", labelled, *args)
    assert proc.returncode == 1, proc.stderr
    file = "kids.csv" if column.upper() == "SEXL" else "schools.csv"
    assert proc.stderr.strip() == _text_line(column, file)


def test_a_text_column_in_a_formula(labelled):
    pytest.importorskip("formulae")
    proc = hlmcli("fit", labelled, "--formula", "MATHACH ~ SECTL + (1 | ID)")
    assert proc.returncode == 1 and proc.stderr.strip() == _text_line("SECTL", "schools.csv"), proc.stderr


def test_a_column_that_is_not_there_keeps_its_message(labelled):
    proc = hlmcli("fit", labelled, *TWO, "--weight1", "NOPE")
    assert proc.returncode == 1 and "the level-1 weight NOPE is not a level-1 variable" in proc.stderr


def test_a_text_column_of_a_three_level_file(tmp_path):
    """Three levels: the build records which file held each text column; --weight3 naming one."""
    paths = pastes_files(tmp_path)
    l3 = pd.read_csv(paths[2])
    l3["PLANT"] = "north"
    l3.to_csv(paths[2], index=False)
    proc = hlmcli("fit", *paths, "--id2", "SAMPLE", "--id3", "BATCH", "-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0",
                  "-3", "b00 = g000 + u00", "--weight3", "PLANT", "--quiet", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == _text_line("PLANT", "pastes_l3.csv")
