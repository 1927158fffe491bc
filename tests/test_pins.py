"""Behaviour pins: the text and JSON that two- and three-level linear fits print, as they were before the
one-path restructuring. Text must match byte for byte, but for the iteration count and the stopping line's tolerances; JSON must have the same keys and values, numbers
to 1e-8 relative, except the optimiser's path (iterations, the certificate's diagnostics), which a
better search may change without changing the answer. tests/golden/make_pins.py regenerates them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from hlmcli.cli import main

from conftest import SAMPLE

GOLDEN = Path(__file__).resolve().parent / "golden"
HSB = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv", "--id", "ID"]
HSB_M4 = ["-1", "MATHACH = b0 + b1*group(SES) + r", "-2", "b0 = g00 + g01*SECTOR + u0",
          "-2", "b1 = g10 + g11*SECTOR + u1"]
EG = [SAMPLE / "eg" / "eg_l1.csv", SAMPLE / "eg" / "eg_l2.csv", SAMPLE / "eg" / "eg_l3.csv",
      "--id2", "CHILDID", "--id3", "SCHOOLID"]
EG_MODEL = ["-1", "MATH = π0 + π1*YEAR + e", "-2", "π0 = β00 + r0", "-2", "π1 = β10 + r1",
            "-3", "β00 = γ000 + u00", "-3", "β10 = γ100 + u10"]
EG_CONTEXT = ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + b01*FEMALE + r0", "-2", "p1 = b10 + r1",
              "-3", "b00 = g000 + g001*LOWINC + u00", "-3", "b10 = g100 + u10", "-3", "b01 = g010"]

# name -> (arguments after `fit`, kind)
PINS = {
    "hsb_m4_reml": ([*HSB, *HSB_M4, "--format", "json"], "json"),
    "hsb_m4_ml": ([*HSB, *HSB_M4, "--ml"], "txt"),
    "hsb_m4_ml_json": ([*HSB, *HSB_M4, "--ml", "--format", "json"], "json"),
    "hsb_m4_diagonal_json": ([*HSB, *HSB_M4, "--tau", "diagonal", "--format", "json"], "json"),
    "eg_ml": ([*EG, *EG_MODEL], "txt"),
    "eg_ml_json": ([*EG, *EG_MODEL, "--format", "json"], "json"),
    "eg_reml": ([*EG, *EG_MODEL, "--reml"], "txt"),
    "eg_context_json": ([*EG, *EG_CONTEXT, "--format", "json"], "json"),
}

# the optimiser's path: a better search may change these without changing the answer
PATH_KEYS = {"iterations", "start", "face_decrement", "face_gradient", "null_space_min_eigenvalue",
             "null_space_decrease", "face_hessian_min_eigenvalue", "tolerance"}


def path_free(text: str) -> str:
    """The text without the optimiser's path: the iteration count and the stopping line's tolerances."""
    text = re.sub(r"Iteration \d+", "Iteration N", text)
    return re.sub(r"\d(\.\d+)?E[-+]\d+", "xEy", text)


def run_pin(args) -> str:
    result = CliRunner().invoke(main, ["fit", *[str(a) for a in args], "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def differences(pinned, now, where="") -> list[str]:
    if isinstance(pinned, dict) and isinstance(now, dict):
        out = [f"{where}: keys {sorted(set(pinned) ^ set(now))}"] if set(pinned) != set(now) else []
        for key in set(pinned) & set(now):
            if key not in PATH_KEYS:
                out += differences(pinned[key], now[key], f"{where}.{key}")
        return out
    if isinstance(pinned, list) and isinstance(now, list):
        if len(pinned) != len(now):
            return [f"{where}: length {len(pinned)} -> {len(now)}"]
        return [d for i, (a, b) in enumerate(zip(pinned, now)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(pinned, float) and isinstance(now, (int, float)) and not isinstance(now, bool):
        if math.isclose(pinned, now, rel_tol=1e-8, abs_tol=1e-12):
            return []
        return [f"{where}: {pinned!r} -> {now!r}"]
    return [] if pinned == now else [f"{where}: {pinned!r} -> {now!r}"]


@pytest.mark.parametrize("name", sorted(PINS))
def test_pin(name):
    args, kind = PINS[name]
    pinned = (GOLDEN / f"pin_{name}.{kind}").read_text(encoding="utf-8")
    now = run_pin(args)
    if kind == "txt":
        assert path_free(now) == path_free(pinned), f"the output differs from tests/golden/pin_{name}.txt"
    else:
        assert differences(json.loads(pinned), json.loads(now)) == []
