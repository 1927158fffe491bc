"""HLM 7's command files (.hlm), the part HLM2 and HLM3 files share: their key:value lines, the yes/no
and number values, and the level lines (level1:MATH=INTRCPT1+YEAR,1+RANDOM, level2:INTRCPT1=INTRCPT2+
W,2+random/, level3:INTRCPT2=INTRCPT3+Z+random/) written as equations in the notation of the model's
number of levels, so that the one equation parser reads them. The keys each kind of file accepts stay
with its spec (equations.py for HLM2, equations_levels.py for HLM3)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelError
from .lexer import coefficient_letters, random_letters

YES = ("y", "yes", "true", "1")
NO = ("n", "no", "false", "0")


def key_values(path: Path, text: str):
    """(where, key, value, line number) of each key:value line; blank lines and '#' comments skipped."""
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise ModelError(f"{path}: line {line_no}: expected key:value, got '{line[:80]}'")
        key, value = (s.strip() for s in line.split(":", 1))
        yield f"{path}: line {line_no}", key.lower(), value, line_no


def yes_no(value: str, where: str, key: str) -> bool:
    low = value.strip().lower()
    if low in YES:
        return True
    if low in NO:
        return False
    raise ModelError(f"{where}: {key}:{value} must be y or n")


def whole(value: str, where: str, key: str, low: int | None = None, high: int | None = None) -> int:
    try:
        number = int(value) if len(value) <= 20 else None
    except ValueError:
        number = None
    if number is None:
        raise ModelError(f"{where}: {key} must be a whole number, not '{value[:40]}'")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ModelError(f"{where}: {key}:{number} is out of range; give a whole number from {low} to {high}")
    return number


def number(value: str, where: str, key: str, positive: bool = False) -> float:
    try:
        x = float(value) if len(value) <= 60 else None
    except ValueError:
        x = None
    if x is None or not math.isfinite(x):
        raise ModelError(f"{where}: {key} must be a finite number, not '{value[:40]}'")
    if positive and x <= 0:
        raise ModelError(f"{where}: {key} must be greater than zero, not {value}")
    return x


def level_terms(rhs: str, where: str, level: int, K: int) -> tuple[list[str], list[str], bool, bool]:
    """The right side of a levelN: line -> (its predictors as the equations write them: X, group(X) for
    ',1', grand(X) for ',2'; their names; whether INTRCPTn is there; whether it is random)."""
    rhs = rhs.strip().removesuffix("/")
    tokens = [t.strip() for t in rhs.split("+") if t.strip()]
    icpt = f"INTRCPT{level}"
    random = any(t.lower() == "random" for t in tokens)
    intercept = any(t.upper() == icpt for t in tokens)
    terms, names = [], []
    for tok in tokens:
        if tok.upper() == icpt or tok.lower() == "random":
            continue
        name, _, code = (s.strip() for s in tok.partition(","))
        if code == "1" and level < K:  # around the mean of the unit one level up
            terms.append(f"group({name})")
        elif code == "2":
            terms.append(f"grand({name})")
        elif code:
            raise ModelError(f"{where}: centring code ',{code}' on {name} is not known at level {level}; "
                             f"use {',1 (group mean) or ' if level < K else ''},2 (grand mean)")
        else:
            terms.append(name)
        names.append(name)
    return terms, names, intercept, random


def level_equation(left: str | tuple, terms: list[str], intercept: bool, random: bool, level: int, K: int) -> str:
    """The equation a levelN: line stands for, in the notation of K levels: `left` is the outcome at
    level 1, else the subscripts of the coefficient the line defines (written with commas)."""
    coef, rand = coefficient_letters(K), random_letters(K)
    key = () if level == 1 else tuple(left)

    def sub(*idx):
        return ",".join(map(str, idx))

    parts = ([f"{coef[level - 1]}{sub(*key, 0)}"] if intercept else []) + [
        f"{coef[level - 1]}{sub(*key, k)}*{t}" for k, t in enumerate(terms, 1)]
    if level == 1:
        return f"{left} = " + " + ".join(parts + [rand[0]])
    return f"{coef[level - 2]}{sub(*key)} = " + " + ".join(parts + ([f"{rand[level - 1]}{sub(*key)}"] if random else []))
