"""Golden text and JSON of the two-level fits outside the plain linear path: each HGLM method (PQL,
Laplace, AGQ), sampling weights and plausible values. The numbers in them are held by the reference
tests (test_hglm.py, test_weights.py, test_plausible.py); these files pin everything around the
numbers, so a change of layout or of a key is seen and decided, never accidental.

A golden file changes only with the change that is meant to change it (and its commit says so)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DATA, hlmcli
from test_plausible import make_pv_files

GOLDEN = Path(__file__).resolve().parent / "golden"
H = DATA / "hglm"
W = DATA / "weights"

CASES = {
    "hglm_cbpp_pql": [H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "-1", "INCID = b0 + b1*P2 + b2*P3 + b3*P4",
                      "-2", "b0 = g00 + u0", "--family", "binomial", "--trials", "SIZE"],
    "hglm_mmmec_laplace": [H / "mmmec_l1.csv", H / "mmmec_l2.csv", "--id", "REGION", "-1", "DEATHS = b0 + b1*UVB",
                           "-2", "b0 = g00 + u0", "--family", "poisson", "--exposure", "EXPECTED",
                           "--estimation", "laplace"],
    "hglm_contra_agq": [H / "contra_l1.csv", H / "contra_l2.csv", "--id", "DISTRICT",
                        "-1", "USE = b0 + b1*URBAN + b2*AGE + b3*LC1 + b4*LC2 + b5*LC3", "-2", "b0 = g00 + u0",
                        "--family", "bernoulli", "--estimation", "agq", "--quadrature-points", "7"],
    "weights_hsbw": [W / "hsbw_l1.csv", W / "hsbw_l2.csv", "--id", "ID", "-1", "MATHACH = b0 + b1*SES + r",
                     "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10", "--ml", "--weight1", "W1", "--weight2", "W2"],
}
PV_MODEL = ["--id", "ID", "-1", "PV1MATH = b0 + b1*SES + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10",
            "--plausible-values", "PV*MATH"]


@pytest.fixture(scope="module")
def pv_files(tmp_path_factory):
    return make_pv_files(tmp_path_factory.mktemp("pvgold"))


def _check(name: str, args: list, suffix: str, tmp_path) -> None:
    extra = ["--format", "json"] if suffix == "json" else []
    proc = hlmcli("fit", *args, *extra, "--cache-dir", tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    path = GOLDEN / f"{name}.{suffix}"
    assert proc.stdout == path.read_text(encoding="utf-8"), f"output differs from {path}"


@pytest.mark.parametrize("suffix", ["txt", "json"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, suffix, tmp_path):
    _check(name, CASES[name], suffix, tmp_path)


@pytest.mark.parametrize("suffix", ["txt", "json"])
def test_golden_plausible_values(pv_files, suffix, tmp_path):
    # the files' folder differs between runs: the data source is printed by name only
    _check("plausible_values", [*pv_files, *PV_MODEL], suffix, tmp_path)
