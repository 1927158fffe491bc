"""Property tests: random and mutated equations, .hlm files and .mdmt files never raise anything but
HlmError, the tool's own one-line error. A few hundred examples here; benchmarks/fuzz.py runs thousands
(set FUZZ_EXAMPLES to change the number here)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlmcli.language.equations import build_spec, parse_hlm_file
from hlmcli.language.equations_levels import Variables
from hlmcli.errors import HlmError
from hlmcli.language.mdmt import parse_template

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True)

VARIABLES = Variables((("MATHACH", "SES", "MINORITY", "FEMALE"), ("SECTOR", "MEANSES", "SIZE")))

LEVEL1 = ["MATHACH = b0 + b1*group(SES) + r", "MATHACHij = β0j + β1j*(SESij - SES.j) + rij",
          "MATHACH = b0 + b1*(grand(SES)) + b2*MINORITY + r", "MATHACH = b0 + r"]
LEVEL2 = ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*grand(MEANSES) + u1", "β0 = γ00 + γ01*mean(SES) + u0",
          "b2 = g2,0 + g2_1*(SIZE - SIZE.)"]
ALPHABET = "bgurBGU0123456789*+-=()., _jiSEMANTHCXYZmeanrdgopβγ×·−\t\n\x00\x1b"

HLM = """#WHLM CMD FILE FOR hsb.mdm
nonlin:n
numit:100
stopval:0.0000010000
level1:MATHACH=INTRCPT1+SES,1+RANDOM
level2:INTRCPT1=INTRCPT2+SECTOR+MEANSES,2+random/
level2:SES=INTRCPT2+SECTOR+random/
fixtau:3
accel:5
level1weight:none
level2weight:none
varianceknown:none
level1deletion:none
hypoth:y
gamma1:0,1,0,0,0
gamma1:0,0,0,0,1
resfil1:n
resfil2:y
resfil2name:res2.csv
resfiltype:ascii
homvar:n
constrain:N
mlf:y
deviance:46638.6
df:4
fulloutput:n
title:fuzzed
"""

MDMT = """#HLM2 MDM template
rawdattype:ascii
l1fname:l1.csv
l2fname:l2.csv
timeofdeletion:now
mdmname:fuzz.mdm
*begin l1vars
level2id:ID
MATHACH
SES
*end l1vars
*begin l2vars
level2id:ID
SECTOR
*end l2vars
"""


def mutate(text: str, data) -> str:
    """Delete, duplicate, swap, insert or replace pieces of a valid input."""
    lines = text.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 6))):
        how = data.draw(st.sampled_from(["char", "insert", "delete_line", "dup_line", "swap", "replace_value", "cut"]))
        if not lines:
            lines = ["\n"]
        i = data.draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if how == "char" and line:
            k = data.draw(st.integers(0, len(line) - 1))
            lines[i] = line[:k] + data.draw(st.characters()) + line[k + 1:]
        elif how == "insert":
            k = data.draw(st.integers(0, len(line)))
            lines[i] = line[:k] + data.draw(st.text(ALPHABET + ":,\\/", max_size=12)) + line[k:]
        elif how == "delete_line":
            del lines[i]
        elif how == "dup_line":
            lines.insert(i, line)
        elif how == "swap":
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "replace_value" and ":" in line:
            key = line.split(":", 1)[0]
            value = data.draw(st.sampled_from(["", "nan", "inf", "-1", "0", "1e999", "9" * 5000, "maybe", "../x",
                                               "/tmp/x", "y", "n", "\x1b[31m", "ID\x00", "((((", "none", "all"]))
            lines[i] = f"{key}:{value}\n"
        elif how == "cut":
            k = data.draw(st.integers(0, len("".join(lines))))
            lines = ["".join(lines)[:k]]
    return "".join(lines)


def _parse_equations(level1, level2):
    try:
        build_spec(level1, level2, VARIABLES)
    except HlmError:
        pass


@FUZZ
@given(st.text(ALPHABET, max_size=80), st.lists(st.text(ALPHABET, max_size=60), max_size=3))
def test_random_equations_raise_only_hlm_errors(level1, level2):
    _parse_equations(level1, level2)


@FUZZ
@given(st.data())
def test_mutated_equations_raise_only_hlm_errors(data):
    level1 = mutate(data.draw(st.sampled_from(LEVEL1)), data).replace("\n", " ")
    level2 = [mutate(e, data).replace("\n", " ") for e in data.draw(st.lists(st.sampled_from(LEVEL2), max_size=3))]
    _parse_equations(level1, level2)


@FUZZ
@given(st.text(max_size=200))
def test_arbitrary_unicode_equations_raise_only_hlm_errors(text):
    _parse_equations(text, [text])


@FUZZ
@given(st.data())
def test_mutated_hlm_files_raise_only_hlm_errors(data):
    text = mutate(HLM, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.hlm"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            parse_hlm_file(path, VARIABLES)
        except HlmError:
            pass


@FUZZ
@given(st.data())
def test_mutated_mdmt_files_raise_only_hlm_errors(data):
    text = mutate(MDMT, data)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("l1.csv", "l2.csv"):
            (Path(tmp) / name).write_text("ID,MATHACH,SES,SECTOR\n1,2,3,0\n")
        path = Path(tmp) / "t.mdmt"
        path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        try:
            parse_template(path)
        except HlmError:
            pass


@pytest.mark.parametrize("depth", [33, 1000, 20_000])
def test_deep_parentheses_are_refused_quickly(depth):
    import time

    start = time.perf_counter()
    with pytest.raises(HlmError, match="nested|longer"):
        build_spec("MATHACH = b0 + b1*" + "(" * depth + "SES" + ")" * depth + " + r", [], VARIABLES)
    assert time.perf_counter() - start < 0.5


def test_long_input_is_refused_and_linear():
    import time

    start = time.perf_counter()
    with pytest.raises(HlmError, match="longer than"):
        build_spec("MATHACH = b0 + " + "b1*SES + " * 200_000 + "r", [], VARIABLES)
    assert time.perf_counter() - start < 0.5


def test_huge_coefficient_index_is_a_model_error():
    with pytest.raises(HlmError, match="digits"):
        build_spec("MATHACH = b0 + b" + "1" * 4301 + "*SES + r", [], VARIABLES)
