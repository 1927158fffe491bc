"""Models of K ≥ 4 levels as HLM writes them, one letter per level: the notation follows the number
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

from .equations import _check_shape, _index, _split_top, _strip_piece, _Syntax, _unwrap
from .equations3 import Centering, Term3
from .errors import ModelError

COEF_LETTERS = "pbgd"  # the coefficients of the level-1, 2, 3, 4 equations
GREEK = "πβγδ"
RANDOM_LETTERS = "eruv"  # the random term at level 1, 2, 3, 4
_REPLACE = {"×": "*", "·": "*", "⋅": "*", "∙": "*", "−": "-", "–": "-", "—": "-", "＝": "=",
            "π": "p", "Π": "p", "β": "b", "Β": "b", "γ": "g", "Γ": "g", "δ": "d", "Δ": "d", "ε": "e"}
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(r"^([A-Za-z])(\d+(?:,\d+)*)?([ijkl]*)$", re.I)


def _normalise(text: str) -> str:
    for a, b in _REPLACE.items():
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
    return letter, tuple(_index(d, letter, text) for d in parts)


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
    method: str = "ML"
    max_iterations: int = 1000
    title: str | None = None
    residuals: tuple = ()  # per level 2..K: a path or None


@dataclass(frozen=True)
class Fixed:
    """One fixed effect: its subscripts and the names along its path (coefficient, predictors)."""
    idx: tuple
    names: tuple  # INTRCPT1 or the level-1 variable, then INTRCPT2 or the level-2 predictor, ...


@dataclass(frozen=True)
class LevelsSpec:
    outcome: str
    n_levels: int
    level1: tuple  # a_1..a_P (Term3)
    intercept: bool
    equations: tuple  # index p = 0..P: the level-2 Equation of π_p, None when π_p is absent
    options: RunOptionsLevels = field(default_factory=RunOptionsLevels)

    @property
    def method(self) -> str:
        return self.options.method

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


def _resolve(name: str, level: int, variables: VariablesLevels, text: str) -> str:
    hit = variables.lookup(name, level)
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


def _predictor(piece: str, level: int, variables: VariablesLevels, text: str, pos: int, K: int) -> Term3:
    body = _unwrap(piece)
    m = re.fullmatch(r"(group|grand|mean)\s*\((.*)\)", body, re.I)
    if m:
        func, inner = m.group(1).lower(), m.group(2).strip()
        if func == "mean":
            if level == 1:
                raise _Syntax(text, pos, f"mean({inner}) is a unit mean and belongs in an equation of level 2 or more",
                              "use the variable itself at level 1")
            for lower in range(level - 1, 0, -1):
                hit = variables.lookup(inner, lower)
                if hit:
                    return Term3(hit, level, Centering.NONE, mean_of=lower)
            raise ModelError(f"in '{text.strip()}': mean({inner}) needs a variable of a lower level than {level}"
                             + ("" if variables.level_of(inner) else f"; unknown variable '{inner}'"))
        inner_term = _predictor(inner, level, variables, text, pos, K)
        if inner_term.centering is not Centering.NONE:
            raise _Syntax(text, pos, f"{piece.strip()} centres twice", "use one of group() or grand()")
        if func == "group" and level == K:
            raise _Syntax(text, pos, f"group() centring has no meaning at level {K} (there is no higher unit)",
                          "use grand() or no centring")
        return Term3(inner_term.name, level, Centering(func), inner_term.mean_of)
    if re.fullmatch(_NAME, body):
        return Term3(_resolve(body, level, variables, text), level)
    raise _Syntax(text, pos, f"cannot read the predictor '{piece.strip()}'",
                  "write NAME, group(NAME), grand(NAME) or mean(NAME)")


def _split_star(piece: str, pos: int):
    depth = 0
    for i, ch in enumerate(piece):
        depth += (ch == "(") - (ch == ")")
        if ch == "*" and depth == 0:
            pred = piece[i + 1:]
            return piece[:i].strip(), pred, pos + i + 1 + (len(pred) - len(pred.lstrip()))
    return piece.strip(), None, None


def parse_equation(equation: str, level: int, variables: VariablesLevels, K: int):
    """An equation of `level` (1..K) -> (left side: outcome name or subscripts, predictors, intercept, random)."""
    text = _normalise(equation)
    _check_shape(text)
    coef_l = COEF_LETTERS[level - 2] if level > 1 else None
    coef_r = COEF_LETTERS[level - 1]
    rand = RANDOM_LETTERS[level - 1]
    if text.count("=") != 1:
        raise _Syntax(text, len(text), f"a level-{level} equation needs exactly one '='",
                      "write OUTCOME = p0 + p1*X + e" if level == 1 else
                      f"write {coef_l}{'0' * (level - 1)} = {coef_r}{'0' * level} + {rand}{'0' * (level - 1)}")
    lhs, rhs = text.split("=")
    lhs_u = _unwrap(lhs)
    got = _coef(lhs_u, text)
    if level == 1:
        if got and got[0] in COEF_LETTERS[:K - 1] and got[1]:
            d = COEF_LETTERS.index(got[0]) + 2
            raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, so it is a level-{d} equation; "
                             f"pass it with -{d}")
        if not re.fullmatch(_NAME, lhs_u):
            raise _Syntax(text, 0, f"'{lhs.strip()}' is not a variable name", "write OUTCOME = p0 + p1*X + e")
        key = _resolve(lhs_u, 1, variables, text)
    else:
        if not got or got[0] != coef_l or len(got[1]) != level - 1:
            if got and got[0] in COEF_LETTERS[:K - 1] and len(got[1]) == COEF_LETTERS.index(got[0]) + 1:
                d = COEF_LETTERS.index(got[0]) + 2
                raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, a level-{d - 1} coefficient; "
                                 f"pass it with -{d}")
            raise _Syntax(text, 0, f"a level-{level} equation must define a coefficient like "
                          f"{symbol(coef_l, (0,) * (level - 1))}, not '{lhs.strip()}'", "put the coefficient on the left")
        key = got[1]
    base = len(lhs) + 1
    predictors: dict[int, Term3] = {}
    intercept = random = False
    for raw, off in _split_top(rhs):
        piece, pos = _strip_piece(raw, base + off)
        if not piece:
            raise _Syntax(text, pos, "empty term", "remove the extra '+'")
        if random:
            raise _Syntax(text, pos, "a term after the residual", "put the residual last")
        coef, pred, ppos = _split_star(piece, pos)
        c = _coef(coef, text)
        want_r = () if level == 1 else key
        if c and c[0] == rand and pred is None and (c[1] == want_r or level == 1):
            random = True
            continue
        if c and c[0] == rand and pred is None:
            raise _Syntax(text, pos, f"the residual of {symbol(coef_l, key)} is {rand}{''.join(map(str, key))}, "
                          f"not {coef}", f"write {rand}{''.join(map(str, key))}")
        if not c or c[0] != coef_r or len(c[1]) != level:
            raise _Syntax(text, pos, f"expected a coefficient like {symbol(coef_r, (key if level > 1 else ()) + (1,))}, "
                          f"found '{coef}'", f"a level-{level} equation of a {K}-level model uses "
                          f"{GREEK[level - 1]} ({coef_r} in ASCII) with {level} subscript{'s' if level > 1 else ''}")
        if level > 1 and c[1][:-1] != key:
            raise _Syntax(text, pos, f"{coef} belongs to {symbol(coef_l, c[1][:-1])}, but this equation defines "
                          f"{symbol(coef_l, key)}", f"write {symbol(coef_r, key + (c[1][-1],))}")
        k = c[1][-1]
        if k == 0:
            if intercept:
                raise _Syntax(text, pos, f"{coef} appears twice", "write the intercept once")
            if pred is not None:
                raise _Syntax(text, pos, f"{coef} is the intercept and takes no predictor", f"write {coef} alone")
            intercept = True
            continue
        if pred is None:
            raise _Syntax(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        if k in predictors:
            raise _Syntax(text, pos, f"{coef} appears twice", "number the coefficients once each")
        predictors[k] = _predictor(pred, level, variables, text, ppos, K)
    if sorted(predictors) != list(range(1, len(predictors) + 1)):
        raise ModelError(f"in '{equation.strip()}': number the coefficients 1..{len(predictors)} without gaps")
    if level > 1 and not intercept and not predictors and not random:
        raise _Syntax(text, base, "the equation has no terms", "add the intercept")
    if level == 1 and not intercept and not predictors:
        raise _Syntax(text, base, "the level-1 equation has no terms", "write OUTCOME = p0 + p1*X + e")
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
    """Equations (one per line, '#' comments) sorted into levels by what each defines."""
    out: list[list[str]] = [[] for _ in range(K)]
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line or re.fullmatch(r"level[- ]?\d+ model", line, re.I):
            continue
        if "=" not in line:
            raise ModelError(f"'{line[:80]}' is not an equation; write one equation per line")
        lhs = _unwrap(_normalise(line).split("=", 1)[0])
        c = _coef(lhs, line)
        if c and c[0] in COEF_LETTERS[:K - 1] and len(c[1]) == COEF_LETTERS.index(c[0]) + 1:
            out[len(c[1])].append(line)
        else:
            out[0].append(line)
    return out
