"""The model language of three and more levels.

Three levels: models as HLM3 writes them: π at level 1, β at level 2, γ at level 3.

    level 1   MATH = π0 + π1*YEAR + e
    level 2   π0 = β00 + β01*FEMALE + r0          (r_p present: π_p random at level 2)
    level 3   β00 = γ000 + γ001*LOWINC + u00      (u_pq present: β_pq random at level 3)

ASCII p/b/g/r/u/e, HLM3's printed forms (P0, B00, G000, R0, U00, E, subscripts jk/k/ijk, 'G001(MOBILITY)'
without '*', blocks headed "Level-1 Model"), model files, and HLM 7 command files with level3: lines
are all read into one LevelsSpec. Defaults follow HLM3: a π with no level-2 equation is β_p0 (random r0
for the intercept π0 only); a β with no level-3 equation is γ_pq0 (random u00 for β00 only).

HLM3 command files (verified against Reardon's Stata wrapper hlm3.ado, which writes them for HLM 6):
    level1:MATH=INTRCPT1+YEAR,1+RANDOM            (,1 group-mean, ,2 grand-mean centring)
    level2:INTRCPT1=INTRCPT2+FEMALE,2+random/     (one per level-1 coefficient)
    level3:INTRCPT2=INTRCPT3+LOWINC,2+random/     (after its level2: line, one per level-2 term in order)
and templates with l3fname:, *begin l3vars, level3id:. Not verified: that HLM3 itself accepts ,1 on a
level-2 predictor as the level-3 unit's mean (the HLM3 output notes say so), and the keys of HLM 7's
own HLM3 dialogs beyond those the wrapper writes (they are refused by name when they change the model).

K ≥ 4 levels: models as HLM writes them, one letter per level: the notation follows the number
of levels (π/β/γ/δ for four; ASCII p/b/g/d, random terms e/r/u/v):

    level 1   SCORE = π0 + π1*TIME + e
    level 2   π0 = β00 + β01*SES + r0                (r_p present: π_p random at level 2)
    level 3   β00 = γ000 + γ001*CSIZE + u00          (u_pq: β_pq random at level 3)
    level 4   γ000 = δ0000 + δ0001*SECTOR + v000     (v_pqs: γ_pqs random at level 4)

A coefficient of a level-d equation has d subscripts, written as digits (β01) or with commas
(β0,1, needed from 10 on). Predictors are NAME, group(NAME) (centred at the mean over the unit one
level up), grand(NAME) (at the mean over the level's units) or mean(NAME) (the unit's mean of a
lower-level variable). Defaults follow HLM3: a coefficient with no equation of its own is its
intercept alone, random only on the intercept path (π0 = β00 + r0, β00 = γ000 + u00, γ000 = δ0000
+ v000). HLM 7's HLM4 command-file syntax is not documented anywhere this project could read, so
.hlm files are read for two and three levels only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .equations import EquationSyntaxError, check_shape, parse_index, right_side_terms, split_star, unwrap
from ..errors import ModelError


class Centering(str, Enum):
    NONE = "none"
    GROUP = "group"  # level 1: the level-2 unit's mean; level 2: the level-3 unit's mean over its level-2 units
    GRAND = "grand"


@dataclass(frozen=True)
class Term3:
    """A predictor in an equation at `level`: a variable of that level, or mean(X) of a lower-level X."""

    name: str
    level: int  # the equation's level (1, 2 or 3)
    centering: Centering = Centering.NONE
    mean_of: int | None = None  # mean(X): the level of X (lower than `level`)

    @property
    def label(self) -> str:
        return f"mean({self.name})" if self.mean_of else self.name


# ---------------------------------------------------------------- the model of K levels

COEF_LETTERS = "pbgd"  # the coefficients of the level-1, 2, 3, 4 equations
GREEK = "πβγδ"
RANDOM_LETTERS = "eruv"  # the random term at level 1, 2, 3, 4
_REPLACE_K = {"×": "*", "·": "*", "⋅": "*", "∙": "*", "−": "-", "–": "-", "—": "-", "＝": "=",
            "π": "p", "Π": "p", "β": "b", "Β": "b", "γ": "g", "Γ": "g", "δ": "d", "Δ": "d", "ε": "e"}
_TOKEN = re.compile(r"^([A-Za-z])(\d+(?:,\d+)*)?([ijkl]*)$", re.I)


def _normalise_k(text: str) -> str:
    for a, b in _REPLACE_K.items():
        text = text.replace(a, b)
    return text


def _coef(token: str, text: str):
    """'b01' -> ('b', (0, 1)); 'g1,10,0' -> ('g', (1, 10, 0)); 'e' -> ('e', ()); None if not a coefficient."""
    m = _TOKEN.match(token.strip())
    if not m:
        return None
    letter, digits = m.group(1).lower(), m.group(2)
    if digits is None:
        return letter, ()
    parts = digits.split(",") if "," in digits else list(digits)
    return letter, tuple(parse_index(d, letter, text) for d in parts)


def symbol(letter: str, idx) -> str:
    """The printed form: Greek letter and subscripts, with commas once a subscript has two digits."""
    g = {c: GREEK[k] for k, c in enumerate(COEF_LETTERS)}.get(letter, letter)
    sep = "," if any(i >= 10 for i in idx) else ""
    return g + sep.join(str(i) for i in idx)


@dataclass(frozen=True)
class Equation:
    """The equation of a level-d coefficient at level d+1: intercept, predictors, random term, and the
    equations of its own coefficients one level up (`terms`, index 0 = intercept, None when absent;
    empty at the top level)."""
    predictors: tuple = ()
    intercept: bool = True
    random: bool = False
    terms: tuple = ()

    def present(self) -> list[int]:
        return ([0] if self.intercept else []) + list(range(1, len(self.predictors) + 1))


@dataclass(frozen=True)
class RunOptionsLevels:
    method: str = "ML"  # HLM3 and HLM4 fit full ML; REML with --reml
    max_iterations: int = 1000
    title: str | None = None
    residuals: tuple = ()  # per level 2..K: a path or None (an HLM3 command file's resfil2:/resfil3:)
    tau: object = None  # TauStructure.DIAGONAL when the lme4 formula asks for uncorrelated effects (||)


@dataclass(frozen=True)
class Fixed:
    """One fixed effect: its subscripts and the names along its path (coefficient, predictors)."""
    idx: tuple
    names: tuple  # INTRCPT1 or the level-1 variable, then INTRCPT2 or the level-2 predictor, ...


@dataclass(frozen=True)
class LevelsSpec:
    """A model of K ≥ 3 levels: the level-1 predictors a_1..a_P and, for each level-1 coefficient π_p,
    its level-2 Equation, whose `terms` hold the equations one level up, and so on to level K."""

    outcome: str
    n_levels: int
    level1: tuple  # a_1..a_P (Term3)
    intercept: bool
    equations: tuple  # index p = 0..P: the level-2 Equation of π_p, None when π_p is absent
    options: RunOptionsLevels = field(default_factory=RunOptionsLevels)

    @property
    def method(self) -> str:
        return self.options.method

    def coefficient_names(self) -> list[str]:
        """The names of the level-1 coefficients π_0..π_P: INTRCPT1 and the level-1 predictors."""
        return ["INTRCPT1"] + [t.label for t in self.level1]

    def equation(self, idx: tuple) -> Equation:
        """The equation of the coefficient with subscripts `idx` (π_p: (p,), β_pq: (p, q), ...)."""
        eq = self.equations[idx[0]]
        for k in idx[1:]:
            eq = eq.terms[k]
        return eq

    def term_names(self, idx: tuple) -> list[str]:
        """The names of the terms of the equation of `idx`: INTRCPT{d+1} and its predictors."""
        return [f"INTRCPT{len(idx) + 1}"] + [t.label for t in self.equation(idx).predictors]

    def walk(self):
        """(depth, subscripts, Equation, names) for every coefficient with an equation, depth-first: the
        coefficient of a level-`depth` equation whose own equation is at level depth+1."""
        out = []
        names1 = ["INTRCPT1"] + [t.label for t in self.level1]

        def go(eq, depth, idx, names):
            out.append((depth, idx, eq, names))
            if depth + 1 >= self.n_levels:
                return
            for k in eq.present():
                go(eq.terms[k], depth + 1, idx + (k,),
                   names + ((f"INTRCPT{depth + 1}" if k == 0 else eq.predictors[k - 1].label),))

        for p, eq in enumerate(self.equations):
            if eq is not None:
                go(eq, 1, (p,), (names1[p],))
        return out

    def fixed(self) -> list[Fixed]:
        """The fixed effects in the engine's order (depth-first)."""
        out = []
        for depth, idx, eq, names in self.walk():
            if depth == self.n_levels - 1:
                for k in eq.present():
                    out.append(Fixed(idx + (k,), names + ((f"INTRCPT{depth + 1}" if k == 0 else
                                                           eq.predictors[k - 1].label),)))
        return out

    def random(self, level: int) -> list[tuple]:
        """(subscripts, names) of the coefficients random at `level`, in τ order."""
        return [(idx, names) for depth, idx, eq, names in self.walk() if depth == level - 1 and eq.random]


@dataclass(frozen=True)
class VariablesLevels:
    names: tuple  # per level 1..K: the variable names

    def lookup(self, name: str, level: int) -> str | None:
        hits = [n for n in self.names[level - 1] if n.lower() == name.lower()]
        if len(hits) > 1:
            raise ModelError(f"variable '{name}' matches {', '.join(hits)}, which differ only in case; rename one in the data")
        return hits[0] if hits else None

    def level_of(self, name: str) -> int | None:
        return next((lev for lev in range(1, len(self.names) + 1) if self.lookup(name, lev)), None)


# ---------------------------------------------------------------- text and tokens

_REPLACE = {"×": "*", "·": "*", "⋅": "*", "∙": "*", "−": "-", "–": "-", "—": "-", "＝": "=",
            "π": "p", "Π": "p", "β": "b", "Β": "b", "γ": "g", "Γ": "g", "ε": "e"}


def _normalise(text: str) -> str:
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text


_PI = re.compile(r"^p(\d+)(?:jk)?$", re.I)
_B = re.compile(r"^b(?:(\d)(\d)|(\d+),(\d+))k?$", re.I)
_G = re.compile(r"^g(?:(\d)(\d)(\d)|(\d+),(\d+),(\d+))$", re.I)
_R = re.compile(r"^r(\d+)(?:jk)?$", re.I)
_U = re.compile(r"^u(?:(\d)(\d)|(\d+),(\d+))k?$", re.I)
_E = re.compile(r"^e(?:ijk)?$", re.I)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_COEF_PAREN = re.compile(r"^([A-Za-z]+[0-9,]*(?:jk|k)?)\s*(\(.*)$")


def _pair(m, text, what) -> tuple[int, int]:
    a, b = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
    return parse_index(a, what, text), parse_index(b, what, text)


def _triple(m, text) -> tuple[int, int, int]:
    parts = m.groups()[:3] if m.group(1) is not None else m.groups()[3:]
    return tuple(parse_index(x, "g", text) for x in parts)  # type: ignore[return-value]


def _split_coef(piece: str, pos: int):
    """'p1*YEAR' -> ('p1', 'YEAR', offset); 'G001(MOBILITY)' -> ('G001', '(MOBILITY)', offset); 'r0' -> ('r0', None, None)."""
    coef, pred, ppos = split_star(piece, pos)
    if pred is None:
        m = _COEF_PAREN.match(piece)
        if m and (_PI.match(m.group(1)) or _B.match(m.group(1)) or _G.match(m.group(1))):
            return m.group(1), m.group(2), pos + m.start(2)
    return coef, pred, ppos


def _resolve(name: str, level: int, variables: VariablesLevels, text: str, where: str) -> str:
    cands = [name] + [name[: -len(s)] for s in ("ijk", "jk", "k", "ij", "j") if name.lower().endswith(s) and len(name) > len(s)]
    for c in cands:
        hit = variables.lookup(c, level)
        if hit:
            return hit
    for c in cands:
        other = variables.level_of(c)
        if other:
            hint = {1: "a level-1 variable goes in the level-1 equation (or mean() of it at levels 2 and 3)",
                    2: "a level-2 variable goes in a π equation (-2), or mean() of it in a β equation",
                    3: "a level-3 variable goes in a β equation (-3)"}[other]
            raise ModelError(f"in '{text.strip()}': {variables.lookup(c, other)} is a level-{other} variable, "
                             f"not usable in {where}; {hint}")
    import difflib

    pool = [n for names in variables.names for n in names]
    close = difflib.get_close_matches(name.upper(), [p.upper() for p in pool], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; check the spelling against 'hlmcli mdm info'"
    raise ModelError(f"in '{text.strip()}': unknown variable '{name}'{hint}")


def _predictor(text_piece: str, level: int, variables: VariablesLevels, text: str, pos: int) -> Term3:
    where = f"a level-{level} equation"
    body = unwrap(text_piece)
    m = re.fullmatch(r"(group|grand|mean)\s*\((.*)\)", body, re.I)
    if m:
        func, inner = m.group(1).lower(), m.group(2).strip()
        if func == "mean":
            if level == 1:
                raise EquationSyntaxError(text, pos, f"mean({inner}) is a unit mean and belongs in a π (level-2) or β (level-3) equation",
                                          "use the variable itself at level 1")
            for lower in range(level - 1, 0, -1):
                cands = [inner] + [inner[: -len(s)] for s in ("ijk", "jk", "ij", "j") if inner.lower().endswith(s)]
                hit = next((variables.lookup(c, lower) for c in cands if variables.lookup(c, lower)), None)
                if hit:
                    return Term3(hit, level, Centering.NONE, mean_of=lower)
            raise ModelError(f"in '{text.strip()}': mean({inner}) needs a variable of a lower level than {level}"
                             + ("" if variables.level_of(inner) else f"; unknown variable '{inner}'"))
        inner_term = _predictor(inner, level, variables, text, pos)
        if inner_term.centering is not Centering.NONE:
            raise EquationSyntaxError(text, pos, f"{text_piece.strip()} centres twice", "use one of group() or grand()")
        if func == "group" and level == 3:
            raise EquationSyntaxError(text, pos, "group() centring has no meaning at level 3 (there is no higher unit)",
                                      "use grand() or no centring")
        return Term3(inner_term.name, level, Centering(func), inner_term.mean_of)
    # HLM's printed centring, as `hlmcli model` prints it too: (Xijk - X.jk) group and (Xijk - X...) grand
    # at level 1, (Wjk - W.k) and (Wjk - W..) at level 2, (Zk - Z.) at level 3 ('•' for '.' in Unicode)
    m = re.fullmatch(rf"({_NAME})\s*-\s*({_NAME})\s*([.•](?:jk|k|[.•]*))", body)
    if m:
        name = _resolve(m.group(1), level, variables, text, where)
        if _resolve(m.group(2), level, variables, text, where) != name:
            raise EquationSyntaxError(text, pos, f"'{body}' subtracts the mean of a different variable", f"write group({name}) or grand({name})")
        mark = m.group(3).replace("•", ".")
        group = {1: ".jk", 2: ".k"}.get(level)
        if mark == group:
            return Term3(name, level, Centering.GROUP)
        if set(mark) == {"."}:
            return Term3(name, level, Centering.GRAND)
        raise EquationSyntaxError(text, pos, f"'{body}' is not a centring HLM3 prints at level {level}",
                                  f"write group({name}) or grand({name})")
    if re.fullmatch(_NAME, body):
        return Term3(_resolve(body, level, variables, text, where), level)
    raise EquationSyntaxError(text, pos, f"cannot read the predictor '{text_piece.strip()}'",
                              "write NAME, group(NAME), grand(NAME) or mean(NAME)")


# ---------------------------------------------------------------- the three kinds of equation

def parse_level1(equation: str, variables: VariablesLevels):
    """'MATH = p0 + p1*YEAR + e' -> (outcome, terms a_1..a_P, has π0)."""
    text = _normalise(equation)
    check_shape(text)
    if text.count("=") != 1:
        raise EquationSyntaxError(text, len(text), "a level-1 equation needs exactly one '='", "write OUTCOME = π0 + π1*X + e")
    lhs, rhs = text.split("=")
    out_raw = unwrap(lhs)
    if _PI.match(out_raw) or _B.match(out_raw):
        raise ModelError(f"in '{equation.strip()}': this defines {out_raw}, so it is a level-"
                         f"{2 if _PI.match(out_raw) else 3} equation; pass it with -{2 if _PI.match(out_raw) else 3}")
    if not re.fullmatch(_NAME, out_raw):
        raise EquationSyntaxError(text, 0, f"'{lhs.strip()}' is not a variable name", "write OUTCOME = π0 + π1*X + e")
    outcome = _resolve(out_raw, 1, variables, text, "the outcome")
    base = len(lhs) + 1
    terms: dict[int, Term3] = {}
    intercept = seen_e = False
    for piece, pos in right_side_terms(text, rhs, base):
        if seen_e:
            raise EquationSyntaxError(text, pos, "a term after the level-1 residual e", "put e last")
        coef, pred, ppos = _split_coef(piece, pos)
        if _E.match(coef) and pred is None:
            seen_e = True
            continue
        m = _PI.match(coef)
        if not m:
            if _B.match(coef) or _G.match(coef):
                raise EquationSyntaxError(text, pos, f"{coef} is a level-{2 if _B.match(coef) else 3} coefficient",
                                          "the level-1 equation uses π0, π1, ... (p0, p1 in ASCII)")
            if re.fullmatch(r"b\d+j?", coef, re.I):
                raise EquationSyntaxError(text, pos, f"{coef} is the two-level form (HLM2's β at level 1)",
                                          "a three-level model's level-1 equation uses π0, π1, ... (p0, p1 in ASCII)")
            raise EquationSyntaxError(text, pos, f"expected a coefficient like π1 (p1), found '{coef}'", "write p1*NAME")
        p = parse_index(m.group(1), "p", text)
        if p == 0:
            if intercept:
                raise EquationSyntaxError(text, pos, "π0 appears twice", "write the intercept once")
            if pred is not None:
                raise EquationSyntaxError(text, pos, "the intercept π0 takes no predictor", "write π0 alone")
            intercept = True
            continue
        if pred is None:
            raise EquationSyntaxError(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        if p in terms:
            raise EquationSyntaxError(text, pos, f"π{p} appears twice", "number the coefficients π1, π2, ... once each")
        terms[p] = _predictor(pred, 1, variables, text, ppos)
    if not intercept and not terms:
        raise EquationSyntaxError(text, base, "the level-1 equation has no terms", "write OUTCOME = π0 + π1*X + e")
    if sorted(terms) != list(range(1, len(terms) + 1)):
        raise ModelError(f"in '{equation.strip()}': the coefficients are numbered "
                         f"{', '.join(f'π{p}' for p in sorted(terms))}; number them π1..π{len(terms)} without gaps")
    ordered = [terms[p] for p in sorted(terms)]
    keys = [(t.name, t.centering) for t in ordered]
    if len(set(keys)) != len(keys):
        raise ModelError(f"in '{equation.strip()}': a level-1 variable appears twice with the same centring; use it once")
    return outcome, tuple(ordered), intercept


def _parse_upper(equation: str, level: int, variables: VariablesLevels):
    """A π equation (level 2) or a β equation (level 3) -> (index of the left side, predictors, intercept, random)."""
    text = _normalise(equation)
    check_shape(text)
    lhs_re, coef_re, res_re = (_PI, _B, _R) if level == 2 else (_B, _G, _U)
    sym_l, sym_c, sym_r = ("π", "β", "r") if level == 2 else ("β", "γ", "u")
    if text.count("=") != 1:
        raise EquationSyntaxError(text, len(text), f"a level-{level} equation needs exactly one '='",
                                  "write π0 = β00 + β01*X + r0" if level == 2 else "write β00 = γ000 + γ001*W + u00")
    lhs, rhs = text.split("=")
    lhs_u = unwrap(lhs)
    m = lhs_re.match(lhs_u)
    if not m:
        other = _B.match(lhs_u) if level == 2 else _PI.match(lhs_u)
        if other:
            raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, a level-{3 if level == 2 else 2} "
                             f"coefficient; pass it with -{3 if level == 2 else 2}")
        raise EquationSyntaxError(text, 0, f"a level-{level} equation must define a coefficient like "
                                  f"{'π0' if level == 2 else 'β00'}, not '{lhs.strip()}'", "put the coefficient on the left")
    key = (parse_index(m.group(1), "p", text),) if level == 2 else _pair(m, text, "b")
    name_l = f"{sym_l}{''.join(map(str, key))}"
    base = len(lhs) + 1
    predictors: list[Term3] = []
    random = False
    s_next = 0
    for piece, pos in right_side_terms(text, rhs, base):
        coef, pred, ppos = _split_coef(piece, pos)
        mr = res_re.match(coef)
        if mr and pred is None:
            rkey = (parse_index(mr.group(1), "r", text),) if level == 2 else _pair(mr, text, "u")
            if rkey != key:
                raise EquationSyntaxError(text, pos, f"the residual of {name_l} is {sym_r}{''.join(map(str, key))}, not {coef}",
                                          f"write {sym_r}{''.join(map(str, key))}")
            if random:
                raise EquationSyntaxError(text, pos, f"{coef} appears twice", "write the residual once")
            random = True
            continue
        if random:
            raise EquationSyntaxError(text, pos, f"a term after the residual {sym_r}{''.join(map(str, key))}", "put the residual last")
        mc = coef_re.match(coef)
        if not mc:
            raise EquationSyntaxError(text, pos, f"expected a coefficient like {sym_c}{''.join(map(str, key))}{s_next} , found '{coef}'"
                                      .replace(" ,", ","), f"write {sym_c}{''.join(map(str, key))}{s_next}*NAME")
        ckey = _pair(mc, text, "b") if level == 2 else _triple(mc, text)
        if ckey[:-1] != key:
            raise EquationSyntaxError(text, pos, f"{coef} belongs to {sym_l}{''.join(map(str, ckey[:-1]))}, but this equation "
                                      f"defines {name_l}", f"write {sym_c}{''.join(map(str, key))}{ckey[-1]}")
        if ckey[-1] != s_next:
            raise EquationSyntaxError(text, pos, f"{coef} is out of order", f"number the terms {sym_c}{''.join(map(str, key))}0, "
                                      f"{sym_c}{''.join(map(str, key))}1, ... in turn")
        s_next += 1
        if ckey[-1] == 0:
            if pred is not None:
                raise EquationSyntaxError(text, pos, f"{coef} is the intercept and takes no predictor", f"write {coef} alone")
            continue
        if pred is None:
            raise EquationSyntaxError(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        predictors.append(_predictor(pred, level, variables, text, ppos))
    if s_next == 0 and not random:
        raise EquationSyntaxError(text, base, f"the equation of {name_l} has no terms",
                                  f"write {name_l} = {sym_c}{''.join(map(str, key))}0 + ...")
    keys = [(t.name, t.mean_of, t.centering) for t in predictors]
    if len(set(keys)) != len(keys):
        raise ModelError(f"in '{equation.strip()}': a predictor appears twice with the same centring; use it once")
    return key, tuple(predictors), s_next > 0, random


def build_spec3(level1: str, level2: list[str], level3: list[str], variables: VariablesLevels,
                options: RunOptionsLevels | None = None) -> LevelsSpec:
    outcome, terms, intercept = parse_level1(level1, variables)
    P = len(terms) + 1
    pi_eqs: dict[int, tuple] = {}
    for eq in level2:
        (p,), preds, icpt, rand = _parse_upper(eq, 2, variables)
        if p >= P:
            raise ModelError(f"in '{eq.strip()}': π{p} has no term in the level-1 equation (it has π0..π{P - 1}); "
                             f"add π{p}*NAME there or renumber")
        if p == 0 and not intercept:
            raise ModelError(f"in '{eq.strip()}': the level-1 equation has no intercept π0, so π0 has no equation; "
                             "add π0 to the level-1 equation or drop this one")
        if p in pi_eqs:
            raise ModelError(f"in '{eq.strip()}': π{p} already has a level-2 equation; give one equation per coefficient")
        pi_eqs[p] = (preds, icpt, rand)
    beta_eqs: dict[tuple[int, int], Equation] = {}
    for eq in level3:
        (p, q), preds, icpt, rand = _parse_upper(eq, 3, variables)
        if p >= P or (p == 0 and not intercept):
            raise ModelError(f"in '{eq.strip()}': β{p}{q} belongs to π{p}, which is not in the level-1 equation; "
                             f"add π{p} there or drop this equation")
        n_pred = len(pi_eqs[p][0]) if p in pi_eqs else 0
        has_b0 = pi_eqs[p][1] if p in pi_eqs else True
        if q > n_pred or (q == 0 and not has_b0):
            given = f"'{_pi_text(p, pi_eqs)}'" if p in pi_eqs else f"the default π{p} = β{p}0"
            raise ModelError(f"in '{eq.strip()}': β{p}{q} is not in the level-2 equation of π{p} ({given}); "
                             f"add β{p}{q}*NAME there or drop this equation")
        if (p, q) in beta_eqs:
            raise ModelError(f"in '{eq.strip()}': β{p}{q} already has a level-3 equation; give one equation per coefficient")
        beta_eqs[(p, q)] = Equation(preds, icpt, rand)
    # HLM3's defaults: π_p = β_p0 (+ r0 for the intercept), β_pq = γ_pq0 (+ u00 for β00)
    pis = []
    for p in range(P):
        if p == 0 and not intercept:
            pis.append(None)
            continue
        preds, icpt, rand = pi_eqs.get(p, ((), True, p == 0))
        betas = tuple(beta_eqs.get((p, q), Equation((), True, p == 0 and q == 0)) if (q or icpt) else None
                      for q in range(len(preds) + 1))
        pis.append(Equation(preds, icpt, rand, betas))
    spec = LevelsSpec(outcome, 3, terms, intercept, tuple(pis), options or RunOptionsLevels())
    if not spec.random(2):
        raise ModelError("no π is random at level 2 (no r in any π equation), so this is not a three-level model; "
                         "add r0 to the intercept's equation, e.g. 'π0 = β00 + r0'")
    if not spec.random(3):
        raise ModelError("no β is random at level 3 (no u in any β equation), so this is not a three-level model; "
                         "add u00 to the equation of β00, e.g. 'β00 = γ000 + u00'")
    return spec


def _pi_text(p, pi_eqs) -> str:
    preds, icpt, rand = pi_eqs[p]
    parts = ([f"β{p}0"] if icpt else []) + [f"β{p}{q}*{t.label}" for q, t in enumerate(preds, 1)] + ([f"r{p}"] if rand else [])
    return f"π{p} = " + " + ".join(parts)


# ---------------------------------------------------------------- blocks, model files, command files

_HEADER = re.compile(r"^\s*(level[- ]?[123] model|summary of the model specified)\s*$", re.I)
_STOP = re.compile(r"^\s*mixed model\s*$", re.I)
_OUTCOME = re.compile(r"the outcome variable is\s+([A-Za-z_]\w*)", re.I)
_NOTE = re.compile(r"has been centered|has been centred| is the mean of ", re.I)  # the notes under a printed model


def classify(lines: list[str]) -> tuple[str | None, list[str], list[str]]:
    """Equations (one per line) to (level-1, π equations, β equations), by what each defines. Pasted HLM3
    output is read up to its 'Mixed Model' block; 'Y = ...' takes the outcome from 'The outcome variable is'."""
    level1, level2, level3 = None, [], []
    found = [m.group(1) for m in (_OUTCOME.search(x) for x in lines) if m]
    outcome = found[0] if found else None
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or _HEADER.match(line):
            continue
        if _STOP.match(line):
            break
        if _OUTCOME.search(line) or _NOTE.search(line):
            continue
        if "=" not in line:
            raise ModelError(f"'{line[:80]}' is not an equation; write one equation per line")
        lhs = unwrap(_normalise(line).split("=", 1)[0])
        if _PI.match(lhs):
            level2.append(line)
        elif _B.match(lhs):
            level3.append(line)
        elif level1 is None:
            level1 = line
        else:
            raise ModelError(f"'{line[:80]}': a second level-1 equation (the first is '{level1[:60]}'); keep one")
    if level1 and outcome and unwrap(_normalise(level1).split("=", 1)[0]).upper() == "Y":
        level1 = outcome + " = " + level1.split("=", 1)[1]
    return level1, level2, level3


_YES, _NO = ("y", "yes", "true", "1"), ("n", "no", "false", "0", "none", "")
_IGNORED = {"fixtau", "fixtau2", "fixtau3", "accel", "output", "graphgammas", "printvariance-covariance",
            "stopval", "hypoth", "fulloutput", "lev1ols", "resfiltype", "fishertype", "laplace", "lvr-beta"}
_OFF = {"level1weight", "level2weight", "level3weight", "varianceknown", "constrain", "heterol1var",
        "level1deletion", "level2deletion", "level3deletion", "fixsigma2", "resfil1"}


def _hlm_terms(rhs: str, where: str, intercept_name: str, level: int) -> tuple[list[str], bool, bool]:
    rhs = rhs.strip()
    if rhs.endswith("/"):
        rhs = rhs[:-1]
    tokens = [t.strip() for t in rhs.split("+") if t.strip()]
    random = any(t.lower() == "random" for t in tokens)
    intercept = any(t.upper() == intercept_name for t in tokens)
    terms = []
    for tok in tokens:
        if tok.upper() == intercept_name or tok.lower() == "random":
            continue
        name, _, code = tok.partition(",")
        code = code.strip()
        if code == "1" and level < 3:
            terms.append(f"group({name.strip()})")
        elif code == "2":
            terms.append(f"grand({name.strip()})")
        elif code:
            raise ModelError(f"{where}: centring code ',{code}' on {name.strip()} is not known at level {level}; "
                             f"use {',1 (group mean) or ' if level < 3 else ''},2 (grand mean)")
        else:
            terms.append(name.strip())
    return terms, intercept, random


def parse_hlm3_file(path: str | Path, variables: VariablesLevels, allow_outside: bool = False) -> LevelsSpec:
    """An HLM 7 HLM3 command file: level1:, then each level2: line followed by its level3: lines."""
    from .equations import read_text

    path = Path(path)
    text = read_text(path)
    level1 = None
    coef_names: list[str] = []
    level2_eqs: list[str] = []
    level3_eqs: list[str] = []
    current = None  # (p, level-2 term names of that equation, next level-3 line index)
    opts: dict = {}
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}: line {line_no}"
        if ":" not in line:
            raise ModelError(f"{where}: expected key:value, got '{line[:80]}'")
        key, value = (s.strip() for s in line.split(":", 1))
        key = key.lower()
        if key == "level1":
            if level1 is not None:
                raise ModelError(f"{where}: a second level1: line; keep one")
            if "=" not in value:
                raise ModelError(f"{where}: level1 needs OUTCOME=INTRCPT1+...+RANDOM")
            outcome, rhs = value.split("=", 1)
            terms, icpt, _ = _hlm_terms(rhs, where, "INTRCPT1", 1)
            coef_names = ["INTRCPT1"] + [re.sub(r"^(group|grand)\((.*)\)$", r"\2", t) for t in terms]
            parts = (["p0"] if icpt else []) + [f"p{k}*{t}" for k, t in enumerate(terms, 1)]
            level1 = f"{outcome.strip()} = " + " + ".join(parts + ["e"])
        elif key == "level2":
            if level1 is None:
                raise ModelError(f"{where}: a level2: line before the level1: line; put level1: first")
            coef, _, rhs = value.partition("=")
            upper = [c.upper() for c in coef_names]
            if coef.strip().upper() not in upper:
                raise ModelError(f"{where}: level2 line for '{coef.strip()}', which is not a level-1 coefficient "
                                 f"({', '.join(coef_names)})")
            p = upper.index(coef.strip().upper())
            terms, icpt, rand = _hlm_terms(rhs, where, "INTRCPT2", 2)
            parts = ([f"b{p}0"] if icpt else []) + [f"b{p},{q}*{t}" for q, t in enumerate(terms, 1)] + ([f"r{p}"] if rand else [])
            if not parts:
                raise ModelError(f"{where}: the level2 line for {coef.strip()} has no terms; write {coef.strip()}=INTRCPT2/")
            level2_eqs.append(f"p{p} = " + " + ".join(parts))
            names = (["INTRCPT2"] if icpt else []) + [re.sub(r"^(group|grand)\((.*)\)$", r"\2", t) for t in terms]
            current = (p, names, [0] * icpt + list(range(1, len(terms) + 1)))
        elif key == "level3":
            if current is None:
                raise ModelError(f"{where}: a level3: line must follow the level2: line of its coefficient")
            p, names, qs = current
            coef, _, rhs = value.partition("=")
            upper = [n.upper() for n in names]
            if coef.strip().upper() not in upper:
                raise ModelError(f"{where}: level3 line for '{coef.strip()}', which is not a term of the level2 line "
                                 f"above it ({', '.join(names)})")
            q = qs[upper.index(coef.strip().upper())]
            terms, icpt, rand = _hlm_terms(rhs, where, "INTRCPT3", 3)
            parts = ([f"g{p},{q},0"] if icpt else []) + [f"g{p},{q},{s}*{t}" for s, t in enumerate(terms, 1)] + (
                [f"u{p},{q}"] if rand else [])
            if not parts:
                raise ModelError(f"{where}: the level3 line for {coef.strip()} has no terms; write {coef.strip()}=INTRCPT3/")
            level3_eqs.append(f"b{p},{q} = " + " + ".join(parts))
        elif key == "mlf":
            # HLM3 estimates by full ML only; mlf:n cannot ask for REML (use --reml for that)
            continue
        elif key == "numit":
            try:
                opts["max_iterations"] = max(1, int(value))
            except ValueError:
                raise ModelError(f"{where}: numit must be a whole number, not '{value[:40]}'") from None
        elif key == "title":
            opts["title"] = None if value.lower() in ("", "no title") else value
        elif key == "nonlin":
            if value.lower() not in ("n", "no", "none", "linear"):
                raise ModelError(f"{where}: nonlin:{value}: three-level models with a non-normal outcome are not "
                                 "supported yet; hlmcli fits linear three-level models")
        elif key in ("resfil2", "resfil3"):
            if value.lower().startswith("y"):
                opts[key] = True
        elif key in ("resfil2name", "resfil3name"):
            opts[key] = value
        elif key in _IGNORED:
            continue
        elif key in _OFF:
            if value.strip().lower() not in _NO and not (key == "fixsigma2" and value.strip() in ("-1", "")):
                raise ModelError(f"{where}: '{key}:{value}' is not supported for three-level models yet; "
                                 "remove the line or set it to none/n")
        else:
            raise ModelError(f"{where}: the key '{key[:40]}' is not supported for three-level models; remove the line")
    if level1 is None:
        raise ModelError(f"{path}: no level1: line; add one like level1:MATH=INTRCPT1+YEAR+RANDOM")
    from ..io.files import output_from_file

    for lev in ("2", "3"):
        if opts.get(f"resfil{lev}"):
            name = opts.get(f"resfil{lev}name") or f"resfil{lev}.csv"
            opts[f"residuals_l{lev}"] = str(output_from_file(path, name, f"resfil{lev}name", allow_outside))
    residuals = (opts.get("residuals_l2"), opts.get("residuals_l3"))
    options = RunOptionsLevels(max_iterations=opts.get("max_iterations", 1000), title=opts.get("title"),
                               residuals=residuals if any(residuals) else ())
    return build_spec3(level1, level2_eqs, level3_eqs, variables, options)


def is_command_file(path, text: str) -> bool:
    if str(path).lower().endswith(".hlm"):
        return True
    return any(line.strip().lower().startswith(("level1:", "level2:", "level3:")) for line in text.splitlines())


def spec3_from_inputs(level1: str | None, level2: list[str], level3: list[str], model_file: str | None,
                      variables: VariablesLevels, options: RunOptionsLevels, allow_outside: bool = False) -> LevelsSpec:
    """One three-level LevelsSpec from -1/-2/-3, a model file (equations in three blocks), a .hlm file or pasted HLM3 output."""
    from .equations import read_text

    if model_file and level1:
        raise ModelError(f"{model_file}: give the model either with --model or with -1/-2/-3, not both")
    if model_file:
        text = read_text(Path(model_file))
        if is_command_file(model_file, text):
            if level2 or level3:
                raise ModelError(f"{model_file}: an HLM 7 command file holds the whole model, so -2/-3 equations "
                                 "cannot be added to it; edit its level2:/level3: lines or drop --model")
            return parse_hlm3_file(model_file, variables, allow_outside)
        level1, more2, more3 = classify(text.splitlines())
        level2, level3 = more2 + list(level2), more3 + list(level3)
    elif level1 and ("\n" in level1 or ";" in level1):  # pasted HLM3 output or several equations in one -1
        level1, more2, more3 = classify(re.split(r"[\n;]", level1))
        level2, level3 = more2 + list(level2), more3 + list(level3)
    if not level1:
        raise ModelError("no level-1 equation given; pass -1 'OUTCOME = π0 + π1*X + e' (with -2 and -3 equations), "
                         "or --model FILE")
    return build_spec3(level1, list(level2), list(level3), variables, options)


# ---------------------------------------------------------------- K levels

def _resolve_k(name: str, level: int, variables: VariablesLevels, text: str) -> str:
    hit = variables.lookup(name, level)
    if hit:
        return hit
    # HLM's printed subscripts (SCOREijkl, SESjkl, SECTORl), as `hlmcli model` prints them
    for sub in ("ijkl", "jkl", "kl", "l"):
        if name.lower().endswith(sub) and len(name) > len(sub):
            hit = variables.lookup(name[: -len(sub)], level)
            if hit:
                return hit
    other = variables.level_of(name)
    if other:
        raise ModelError(f"in '{text.strip()}': {variables.lookup(name, other)} is a level-{other} variable, not usable "
                         f"in a level-{level} equation; a level-{other} variable goes in a level-{other} equation "
                         f"(-{other}), or mean() of it in a higher one")
    import difflib

    pool = [n for names in variables.names for n in names]
    close = difflib.get_close_matches(name.upper(), [p.upper() for p in pool], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; check the spelling against 'hlmcli mdm info'"
    raise ModelError(f"in '{text.strip()}': unknown variable '{name}'{hint}")


def _predictor_k(piece: str, level: int, variables: VariablesLevels, text: str, pos: int, K: int) -> Term3:
    body = unwrap(piece)
    m = re.fullmatch(r"(group|grand|mean)\s*\((.*)\)(?:[ijkl]*)", body, re.I)  # mean(X)jkl: as printed
    if m:
        func, inner = m.group(1).lower(), m.group(2).strip()
        if func == "mean":
            if level == 1:
                raise EquationSyntaxError(text, pos, f"mean({inner}) is a unit mean and belongs in an equation of level 2 or more",
                                          "use the variable itself at level 1")
            for lower in range(level - 1, 0, -1):
                hit = variables.lookup(inner, lower)
                if hit:
                    return Term3(hit, level, Centering.NONE, mean_of=lower)
            raise ModelError(f"in '{text.strip()}': mean({inner}) needs a variable of a lower level than {level}"
                             + ("" if variables.level_of(inner) else f"; unknown variable '{inner}'"))
        inner_term = _predictor_k(inner, level, variables, text, pos, K)
        if inner_term.centering is not Centering.NONE:
            raise EquationSyntaxError(text, pos, f"{piece.strip()} centres twice", "use one of group() or grand()")
        if func == "group" and level == K:
            raise EquationSyntaxError(text, pos, f"group() centring has no meaning at level {K} (there is no higher unit)",
                                      "use grand() or no centring")
        return Term3(inner_term.name, level, Centering(func), inner_term.mean_of)
    # HLM's printed centring: (Xijkl - X.jkl) around the unit one level up, (Xijkl - X....) the grand mean
    m = re.fullmatch(rf"({_NAME})\s*-\s*({_NAME})\s*([.•][a-z.•]*)", body)
    if m:
        name = _resolve_k(m.group(1), level, variables, text)
        if _resolve_k(m.group(2), level, variables, text) != name:
            raise EquationSyntaxError(text, pos, f"'{body}' subtracts the mean of a different variable",
                                      f"write group({name}) or grand({name})")
        mark = m.group(3).replace("•", ".")
        if set(mark) == {"."}:
            return Term3(name, level, Centering.GRAND)
        if level < K and mark == "." + "ijkl"[level:K]:
            return Term3(name, level, Centering.GROUP)
        raise EquationSyntaxError(text, pos, f"'{body}' is not a centring HLM prints at level {level}",
                                  f"write group({name}) or grand({name})")
    if re.fullmatch(_NAME, body):
        return Term3(_resolve_k(body, level, variables, text), level)
    raise EquationSyntaxError(text, pos, f"cannot read the predictor '{piece.strip()}'",
                              "write NAME, group(NAME), grand(NAME) or mean(NAME)")


def parse_equation(equation: str, level: int, variables: VariablesLevels, K: int):
    """An equation of `level` (1..K) -> (left side: outcome name or subscripts, predictors, intercept, random)."""
    text = _normalise_k(equation)
    check_shape(text)
    coef_l = COEF_LETTERS[level - 2] if level > 1 else None
    coef_r = COEF_LETTERS[level - 1]
    rand = RANDOM_LETTERS[level - 1]
    if text.count("=") != 1:
        raise EquationSyntaxError(text, len(text), f"a level-{level} equation needs exactly one '='",
                                  "write OUTCOME = p0 + p1*X + e" if level == 1 else
                                  f"write {coef_l}{'0' * (level - 1)} = {coef_r}{'0' * level} + {rand}{'0' * (level - 1)}")
    lhs, rhs = text.split("=")
    lhs_u = unwrap(lhs)
    got = _coef(lhs_u, text)
    if level == 1:
        if got and got[0] in COEF_LETTERS[:K - 1] and got[1]:
            d = COEF_LETTERS.index(got[0]) + 2
            raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, so it is a level-{d} equation; "
                             f"pass it with -{d}")
        if not re.fullmatch(_NAME, lhs_u):
            raise EquationSyntaxError(text, 0, f"'{lhs.strip()}' is not a variable name", "write OUTCOME = p0 + p1*X + e")
        key = _resolve_k(lhs_u, 1, variables, text)
    else:
        if not got or got[0] != coef_l or len(got[1]) != level - 1:
            if got and got[0] in COEF_LETTERS[:K - 1] and len(got[1]) == COEF_LETTERS.index(got[0]) + 1:
                d = COEF_LETTERS.index(got[0]) + 2
                raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, a level-{d - 1} coefficient; "
                                 f"pass it with -{d}")
            raise EquationSyntaxError(text, 0, f"a level-{level} equation must define a coefficient like "
                                      f"{symbol(coef_l, (0,) * (level - 1))}, not '{lhs.strip()}'", "put the coefficient on the left")
        key = got[1]
    base = len(lhs) + 1
    predictors: dict[int, Term3] = {}
    intercept = random = False
    for piece, pos in right_side_terms(text, rhs, base):
        if random:
            raise EquationSyntaxError(text, pos, "a term after the residual", "put the residual last")
        coef, pred, ppos = split_star(piece, pos)
        c = _coef(coef, text)
        want_r = () if level == 1 else key
        if c and c[0] == rand and pred is None and (c[1] == want_r or level == 1):
            random = True
            continue
        if c and c[0] == rand and pred is None:
            raise EquationSyntaxError(text, pos, f"the residual of {symbol(coef_l, key)} is {rand}{''.join(map(str, key))}, "
                                      f"not {coef}", f"write {rand}{''.join(map(str, key))}")
        if not c or c[0] != coef_r or len(c[1]) != level:
            raise EquationSyntaxError(text, pos, f"expected a coefficient like {symbol(coef_r, (key if level > 1 else ()) + (1,))}, "
                                      f"found '{coef}'", f"a level-{level} equation of a {K}-level model uses "
                                      f"{GREEK[level - 1]} ({coef_r} in ASCII) with {level} subscript{'s' if level > 1 else ''}")
        if level > 1 and c[1][:-1] != key:
            raise EquationSyntaxError(text, pos, f"{coef} belongs to {symbol(coef_l, c[1][:-1])}, but this equation defines "
                                      f"{symbol(coef_l, key)}", f"write {symbol(coef_r, key + (c[1][-1],))}")
        k = c[1][-1]
        if k == 0:
            if intercept:
                raise EquationSyntaxError(text, pos, f"{coef} appears twice", "write the intercept once")
            if pred is not None:
                raise EquationSyntaxError(text, pos, f"{coef} is the intercept and takes no predictor", f"write {coef} alone")
            intercept = True
            continue
        if pred is None:
            raise EquationSyntaxError(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        if k in predictors:
            raise EquationSyntaxError(text, pos, f"{coef} appears twice", "number the coefficients once each")
        predictors[k] = _predictor_k(pred, level, variables, text, ppos, K)
    if sorted(predictors) != list(range(1, len(predictors) + 1)):
        raise ModelError(f"in '{equation.strip()}': number the coefficients 1..{len(predictors)} without gaps")
    if level > 1 and not intercept and not predictors and not random:
        raise EquationSyntaxError(text, base, "the equation has no terms", "add the intercept")
    if level == 1 and not intercept and not predictors:
        raise EquationSyntaxError(text, base, "the level-1 equation has no terms", "write OUTCOME = p0 + p1*X + e")
    ordered = tuple(predictors[k] for k in sorted(predictors))
    keys = [(t.name, t.mean_of, t.centering) for t in ordered]
    if len(set(keys)) != len(keys):
        raise ModelError(f"in '{equation.strip()}': a predictor appears twice with the same centring; use it once")
    return key, ordered, intercept, random


def build_levels_spec(equations: list, variables: VariablesLevels, options: RunOptionsLevels | None = None
                      ) -> LevelsSpec:
    """equations[ℓ−1]: the list of level-ℓ equations (one at level 1). The model has K = len(equations) levels."""
    K = len(equations)
    if not equations[0]:
        raise ModelError("no level-1 equation given; pass -1 'OUTCOME = p0 + p1*X + e' with the -2 ... -"
                         f"{K} equations")
    if len(equations[0]) != 1:
        raise ModelError(f"{len(equations[0])} level-1 equations; give one")
    outcome, terms, intercept, _ = parse_equation(equations[0][0], 1, variables, K)
    given: dict[tuple, tuple] = {}
    for level in range(2, K + 1):
        for eq in equations[level - 1]:
            key, preds, icpt, rand = parse_equation(eq, level, variables, K)
            if key in given:
                raise ModelError(f"in '{eq.strip()}': {symbol(COEF_LETTERS[level - 2], key)} already has an equation; "
                                 "give one equation per coefficient")
            given[key] = (preds, icpt, rand, eq)
    used: set = set()

    def build(idx: tuple) -> Equation:
        depth = len(idx)
        if idx in given:
            preds, icpt, rand, _ = given[idx]
            used.add(idx)
        else:
            preds, icpt, rand = (), True, all(i == 0 for i in idx)
        eq = Equation(preds, icpt, rand)
        if depth + 1 < K:
            kids = tuple(build(idx + (k,)) if (k > 0 or icpt) else None for k in range(len(preds) + 1))
            eq = Equation(preds, icpt, rand, kids)
        return eq

    P = len(terms) + 1
    eqs = tuple(build((p,)) if (p > 0 or intercept) else None for p in range(P))
    for key, (_, _, _, text) in given.items():
        if key not in used:
            raise ModelError(f"in '{text.strip()}': {symbol(COEF_LETTERS[len(key) - 1], key)} is not a term of the "
                             "equation one level down; add it there or drop this equation")
    spec = LevelsSpec(outcome, K, terms, intercept, eqs, options or RunOptionsLevels())
    for level in range(2, K + 1):
        if not spec.random(level):
            r = RANDOM_LETTERS[level - 1]
            raise ModelError(f"nothing is random at level {level} (no {r} term in any level-{level} equation), so this is "
                             f"not a {K}-level model; add {r}{'0' * (level - 1)} to the intercept's equation")
    return spec


def classify_levels(lines: list[str], K: int) -> list[list[str]]:
    """Equations (one per line, '#' comments) sorted into levels by what each defines. The output of
    `hlmcli model` reads back: its headings and centring notes are skipped, and reading stops at
    "Method of estimation" (what follows is the lme4 formula)."""
    out: list[list[str]] = [[] for _ in range(K)]
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if re.match(r"(method of estimation|the same model in r)\b", line, re.I):
            break
        if (not line or re.fullmatch(r"(level[- ]?\d+ model|summary of the model specified)", line, re.I)
                or re.search(r"has been centered| is the mean of ", line)):
            continue
        if "=" not in line:
            raise ModelError(f"'{line[:80]}' is not an equation; write one equation per line")
        lhs = unwrap(_normalise_k(line).split("=", 1)[0])
        c = _coef(lhs, line)
        if c and c[0] in COEF_LETTERS[:K - 1] and len(c[1]) == COEF_LETTERS.index(c[0]) + 1:
            out[len(c[1])].append(line)
        else:
            out[0].append(line)
    return out
