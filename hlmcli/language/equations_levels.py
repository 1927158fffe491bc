"""The model language of any number of levels: one parser, whose notation follows the number of levels K
alone (coefficient_letters, random_letters): β/γ with r/u for two levels, π/β/γ with e/r/u for three,
π/β/γ/δ with e/r/u/v for four (ASCII b/g, p/b/g, p/b/g/d).

    level 1   SCORE = π0 + π1*TIME + e
    level 2   π0 = β00 + β01*SES + r0                (r_p present: π_p random at level 2)
    level 3   β00 = γ000 + γ001*CSIZE + u00          (u_pq: β_pq random at level 3)
    level 4   γ000 = δ0000 + δ0001*SECTOR + v000     (v_pqs: γ_pqs random at level 4)

A coefficient of a level-d equation has d subscripts, written as digits (β01) or with commas (β0,1,
needed from 10 on; π and r, with one subscript, take π10 as one number). Predictors are NAME,
group(NAME) (centred at the mean over the unit one level up), grand(NAME) (at the mean over the
level's units) or mean(NAME) (the unit's mean of a lower-level variable). HLM's printed forms read
back: P0, B00, G000, R0, U00, E with subscripts (ijk, jk, k; ijkl ... l at four levels), 'G001(MOBILITY)'
without '*', centring as (Xijk - X.jk) or (Xijk - X...), blocks headed "Level-1 Model", and HLM3's
pasted output up to its "Mixed Model" block. Defaults follow HLM: a coefficient with no equation of its
own is its intercept alone, random only on the intercept path (π0 = β00 + r0, β00 = γ000 + u00,
γ000 = δ0000 + v000).

HLM3 command files (verified against Reardon's Stata wrapper hlm3.ado, which writes them for HLM 6):
    level1:MATH=INTRCPT1+YEAR,1+RANDOM            (,1 group-mean, ,2 grand-mean centring)
    level2:INTRCPT1=INTRCPT2+FEMALE,2+random/     (one per level-1 coefficient)
    level3:INTRCPT2=INTRCPT3+LOWINC,2+random/     (after its level2: line, one per level-2 term in order)
and templates with l3fname:, *begin l3vars, level3id:. Not verified: that HLM3 itself accepts ,1 on a
level-2 predictor as the level-3 unit's mean (the HLM3 output notes say so), and the keys of HLM 7's
own HLM3 dialogs beyond those the wrapper writes (they are refused by name when they change the model).
HLM 7's HLM4 command-file syntax is not documented anywhere this project could read, so .hlm files
are read for two and three levels only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .lexer import (COEF_LETTERS, GREEK, RANDOM_LETTERS, EquationSyntaxError, check_shape, coefficient_letters,  # noqa: F401
                    parse_index, random_letters, read_text, at_file_line, right_side_terms, split_star, unwrap)
from .hlmfile import NO, key_values, level_equation, level_terms, whole
from .model import Centering, Equation, ModelSpec, RunOptions, Term
from ..errors import ModelError
from ..spec import coefficient_label, subscript


# ---------------------------------------------------------------- the variables of K levels

@dataclass(frozen=True)
class Variables:
    """The names known at each level 1..K, and the file each level came from (for messages)."""

    names: tuple  # per level 1..K: the variable names
    files: tuple = ()  # per level 1..K: the file's name; "the level-k file" where not known
    archive: object = field(default=None, compare=False)  # where they came from: io.archive.unknown_column's

    def file(self, level: int) -> str:
        return self.files[level - 1] if level <= len(self.files) else f"the level-{level} file"

    def lookup(self, name: str, level: int) -> str | None:
        hits = [n for n in self.names[level - 1] if n.lower() == name.lower()]
        if len(hits) > 1:
            raise ModelError(f"variable '{name}' matches {', '.join(hits)}, which differ only in case; rename one in the data")
        return hits[0] if hits else None

    def level_of(self, name: str) -> int | None:
        return next((lev for lev in range(1, len(self.names) + 1) if self.lookup(name, lev)), None)

    def unknown(self, name: str, error: ModelError) -> Exception:
        """`error` for a name that is no variable, or the archive's one line when its file holds it as text."""
        if self.archive is None:
            return error
        from ..io.archive import unknown_column

        return unknown_column(self.archive, name, error)


# ---------------------------------------------------------------- notation, text and tokens

def n_subscripts(letter: str, K: int) -> int | None:
    """How many subscripts the letter carries in a K-level model (β: 1 at two levels, 2 at three)."""
    if letter in coefficient_letters(K):
        return coefficient_letters(K).index(letter) + 1
    if letter in random_letters(K):
        return random_letters(K).index(letter)
    return None


_REPLACE = {"×": "*", "·": "*", "⋅": "*", "∙": "*", "−": "-", "–": "-", "—": "-", "＝": "=",
            "π": "p", "Π": "p", "β": "b", "Β": "b", "γ": "g", "Γ": "g", "δ": "d", "Δ": "d", "ε": "e"}
_TOKEN = re.compile(r"^([A-Za-z])(\d+(?:[,_]\d+)*)?([ijkl]*)$", re.I)  # g1,10 or g1_10
_COEF_PAREN = re.compile(r"^([A-Za-z][0-9,]*[ijkl]*)\s*(\(.*)$", re.I)  # HLM's printed G001(MOBILITY)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# HLM's printed subscripts after a name (MATHijk, SESjkl, SECTORl), longest first
_SUFFIXES = ("ijkl", "ijk", "jkl", "jk", "kl", "ij", "k", "l", "j")


def _normalise(text: str) -> str:
    for a, b in _REPLACE.items():
        text = text.replace(a, b)
    return text


def _coef(token: str, text: str, K: int):
    """'b01' -> ('b', (0, 1)); 'g1,10,0' -> ('g', (1, 10, 0)); 'p10' -> ('p', (10,)) (π has one subscript,
    so its digits are one number); 'e' -> ('e', ()); None if not a coefficient."""
    m = _TOKEN.match(token.strip())
    if not m or (m.group(3) and not "ijkl"[:K].lower().endswith(m.group(3).lower())):
        return None  # HLM's printed subscripts are a tail of ijkl: β0j, π0jk, eijk
    letter, digits = m.group(1).lower(), m.group(2)
    if digits is None:
        return letter, ()
    if "," in digits or "_" in digits:
        parts = re.split(r"[,_]", digits)
    else:
        parts = [digits] if n_subscripts(letter, K) == 1 else list(digits)
    return letter, tuple(parse_index(d, letter, text) for d in parts)


def symbol(letter: str, idx) -> str:
    """The printed form: Greek letter and HLM 7's subscripts (commas once a subscript has two digits)."""
    return coefficient_label({c: GREEK[k] for k, c in enumerate(COEF_LETTERS)}.get(letter, letter), idx)


def _shown(letter: str, idx, K: int) -> str:
    """A coefficient as the messages name it: two-level models are typed in ASCII (b1, g01), so their
    messages say b1 and g01; models of three and more levels are named as HLM3 and HLM4 print them."""
    return letter + subscript(*idx) if K == 2 else symbol(letter, idx)


def _split_coef(piece: str, pos: int, K: int):
    """'p1*YEAR' -> ('p1', 'YEAR', offset); 'G001(MOBILITY)' -> ('G001', '(MOBILITY)', offset); 'r0' -> ('r0', None, None)."""
    coef, pred, ppos = split_star(piece, pos)
    if pred is None:
        m = _COEF_PAREN.match(piece)
        if m and m.group(1)[0].lower() in coefficient_letters(K) and m.group(1)[1:2].isdigit():
            return m.group(1), m.group(2), pos + m.start(2)
    return coef, pred, ppos


def _resolve(name: str, level: int, variables: Variables, text: str) -> str:
    """A variable of `level`, allowing HLM's printed subscripts; a one-line error naming its level otherwise."""
    cands = [name] + [name[: -len(s)] for s in _SUFFIXES if name.lower().endswith(s) and len(name) > len(s)]
    for c in cands:
        hit = variables.lookup(c, level)
        if hit:
            return hit
    files = getattr(variables, "files", None)
    for c in cands:
        other = variables.level_of(c)
        if other:
            hit = variables.lookup(c, other)
            where = f" (in {files[other - 1]})" if files else ""
            hint = f", or use mean({hit}) for its unit mean in a higher one" if other < level else ""
            raise ModelError(f"in '{text.strip()}': {hit} is a level-{other} variable{where}, not usable in a level-{level} "
                             f"equation; a level-{other} variable goes in a level-{other} equation (-{other}){hint}")
    raise variables.unknown(name, ModelError(f"in '{text.strip()}': unknown variable '{name}'{_closest(name, variables)}"))


def _closest(name: str, variables: Variables) -> str:
    import difflib

    pool = [n for names in variables.names for n in names]
    close = difflib.get_close_matches(name.upper(), [p.upper() for p in pool], n=3, cutoff=0.6)
    shown = [f"{real} (level {variables.level_of(real)})" for real in (next(p for p in pool if p.upper() == c) for c in close)]
    return f"; did you mean {', '.join(shown)}?" if shown else "; check the spelling against 'hlmcli mdm info'"


def _mean_of(inner: str, level: int, variables: Variables, text: str, pos: int) -> Term:
    """mean(X) in a level-`level` equation: the unit's mean of X, a variable of a lower level."""
    if level == 1:
        raise EquationSyntaxError(text, pos, f"mean({inner}) is a unit mean and belongs in an equation of level 2 or more",
                                  "use the variable itself at level 1")
    cands = [inner] + [inner[: -len(s)] for s in _SUFFIXES if inner.lower().endswith(s) and len(inner) > len(s)]
    for lower in range(level - 1, 0, -1):
        hit = next((variables.lookup(c, lower) for c in cands if variables.lookup(c, lower)), None)
        if hit:
            return Term(hit, level, Centering.NONE, mean_of=lower)
    error = ModelError(f"in '{text.strip()}': mean({inner}) needs a variable of a lower level than {level}"
                       + ("" if variables.level_of(inner) else f"; unknown variable '{inner}'"))
    raise error if variables.level_of(inner) else variables.unknown(inner, error)


def _printed_centring(m, level: int, variables: Variables, text: str, pos: int, K: int) -> Term:
    """HLM's printed centring: (Xijk - X.jk) around the unit one level up, (Xijk - X...) the grand mean."""
    body = m.group(0)
    name = _resolve(m.group(1), level, variables, text)
    if _resolve(m.group(2), level, variables, text) != name:
        raise EquationSyntaxError(text, pos, f"'{body}' subtracts the mean of a different variable",
                                  f"write group({name}) or grand({name})")
    mark = m.group(3).replace("•", ".")
    if set(mark) == {"."}:
        return Term(name, level, Centering.GRAND)
    if level < K and mark == "." + "ijkl"[level:K]:
        return Term(name, level, Centering.GROUP)
    raise EquationSyntaxError(text, pos, f"'{body}' is not a centring HLM prints at level {level}",
                              f"write group({name}) or grand({name})")


def _predictor(piece: str, level: int, variables: Variables, text: str, pos: int, K: int) -> Term:
    """NAME, group(NAME), grand(NAME), mean(NAME) or HLM's printed forms, in a level-`level` equation."""
    body = unwrap(piece)
    m = re.fullmatch(r"(group|grand|mean)\s*\((.*)\)(?:[ijkl]*)", body, re.I)  # mean(X)jkl: as printed
    if m:
        func, inner = m.group(1).lower(), m.group(2).strip()
        if func == "mean":
            return _mean_of(inner, level, variables, text, pos)
        inner_term = _predictor(inner, level, variables, text, pos, K)
        if inner_term.centering is not Centering.NONE:
            raise EquationSyntaxError(text, pos, f"{piece.strip()} centres twice", "use one of group() or grand()")
        if func == "group" and level == K:
            raise EquationSyntaxError(text, pos, f"group() centring has no meaning at level {K} (there is no higher unit)",
                                      "use grand() or no centring")
        return Term(inner_term.name, level, Centering(func), inner_term.mean_of)
    m = re.fullmatch(rf"({_NAME})\s*-\s*({_NAME})\s*([.•][a-z.•]*)", body)
    if m:
        return _printed_centring(m, level, variables, text, pos, K)
    if re.fullmatch(_NAME, body):
        return Term(_resolve(body, level, variables, text), level)
    raise EquationSyntaxError(text, pos, f"cannot read the predictor '{piece.strip()}'",
                              "write NAME, group(NAME), grand(NAME) or mean(NAME)")


# ---------------------------------------------------------------- one equation of any level

def _left_side(equation: str, text: str, lhs: str, level: int, variables: Variables, K: int):
    """The outcome (level 1) or the subscripts of the coefficient the equation defines."""
    coef = coefficient_letters(K)
    lhs_u = unwrap(lhs)
    got = _coef(lhs_u, text, K)
    defines = got is not None and got[0] in coef[:K - 1] and len(got[1]) == coef.index(got[0]) + 1
    if level == 1:
        if defines:
            d = coef.index(got[0]) + 2
            raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, so it is a level-{d} equation; "
                             f"pass it with -{d}")
        if not re.fullmatch(_NAME, lhs_u):
            raise EquationSyntaxError(text, 0, f"'{lhs.strip()}' is not a variable name",
                                      f"write OUTCOME = {coef[0]}0 + {coef[0]}1*X + {random_letters(K)[0]}")
        return _resolve(lhs_u, 1, variables, text)
    if got and got[0] == coef[level - 2] and len(got[1]) == level - 1:
        return got[1]
    if defines:
        d = coef.index(got[0]) + 2
        raise ModelError(f"in '{equation.strip()}': this defines {lhs_u}, a level-{d - 1} coefficient; pass it with -{d}")
    raise EquationSyntaxError(text, 0, f"a level-{level} equation must define a coefficient like "
                              f"{_shown(coef[level - 2], (0,) * (level - 1), K)}, not '{lhs.strip()}'",
                              "put the coefficient on the left")


def _not_this_level(text: str, pos: int, coef: str, c, level: int, key: tuple, K: int):
    """The error for a term that is not a coefficient of this equation, naming what it is."""
    letters = coefficient_letters(K)
    want = letters[level - 1]
    uses = (f"a level-{level} equation of a {K}-level model uses {GREEK[COEF_LETTERS.index(want)]} ({want} in ASCII) "
            f"with {level} subscript{'s' if level > 1 else ''}")
    if c and K > 2 and level == 1 and c[0] == "b" and len(c[1]) == 1:
        return EquationSyntaxError(text, pos, f"{coef} is the two-level form (HLM2's β at level 1)", uses)
    if c and c[0] in letters and c[0] != want and len(c[1]) == letters.index(c[0]) + 1:
        return EquationSyntaxError(text, pos, f"{coef} is a level-{letters.index(c[0]) + 1} coefficient", uses)
    return EquationSyntaxError(text, pos, f"expected a coefficient like {_shown(want, key + (1,), K)}, found '{coef}'", uses)


def _right_side(equation: str, text: str, rhs: str, base: int, level: int, key, variables: Variables, K: int):
    """(predictors by subscript, intercept, random) of an equation's right side."""
    want, rand = coefficient_letters(K)[level - 1], random_letters(K)[level - 1]
    own = () if level == 1 else key
    residual = rand + subscript(*own)
    word = "random effect" if K == 2 else "residual"
    rands = (rand, "e") if K == 2 and level == 1 else (rand,)  # Y = b0 + r, or + e
    predictors: dict[int, Term] = {}
    intercept = random = False
    for piece, pos in right_side_terms(text, rhs, base):
        coef, pred, ppos = _split_coef(piece, pos, K)
        c = _coef(coef, text, K)
        if random:
            if c and c[0] in rands and pred is None:
                raise EquationSyntaxError(text, pos, f"{coef} appears twice", f"write the {word} once")
            raise EquationSyntaxError(text, pos, f"a term after the {word} {residual}", f"put {residual} last")
        if c and c[0] in rands and pred is None:
            if c[1] != own:
                of = f"level-1 {word}" if level == 1 else f"{word} of {_shown(coefficient_letters(K)[level - 2], own, K)}"
                raise EquationSyntaxError(text, pos, f"the {of} is {residual}, not {coef}", f"write {residual}")
            random = True
            continue
        if not c or c[0] != want or len(c[1]) != level:
            raise _not_this_level(text, pos, coef, c, level, () if level == 1 else key, K)
        if level > 1 and c[1][:-1] != key:
            raise EquationSyntaxError(text, pos, f"{coef} belongs to {_shown(coefficient_letters(K)[level - 2], c[1][:-1], K)}, "
                                      f"but this equation defines {_shown(coefficient_letters(K)[level - 2], key, K)}",
                                      f"write {_shown(want, key + (c[1][-1],), K)}")
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
        predictors[k] = _predictor(pred, level, variables, text, ppos, K)
    return predictors, intercept, random


def parse_equation(equation: str, level: int, variables: Variables, K: int):
    """An equation of `level` (1..K) of a K-level model -> (left side: the outcome or the subscripts of the
    coefficient it defines, predictors, intercept, random)."""
    text = _normalise(equation)
    check_shape(text)
    coef, rand = coefficient_letters(K), random_letters(K)
    if text.count("=") != 1:
        raise EquationSyntaxError(text, len(text), f"a level-{level} equation needs exactly one '='",
                                  f"write OUTCOME = {coef[0]}0 + {coef[0]}1*X + {rand[0]}" if level == 1 else
                                  f"write {coef[level - 2]}{'0' * (level - 1)} = {coef[level - 1]}{'0' * level} + "
                                  f"{rand[level - 1]}{'0' * (level - 1)}")
    lhs, rhs = text.split("=")
    key = _left_side(equation, text, lhs, level, variables, K)
    base = len(lhs) + 1
    predictors, intercept, random = _right_side(equation, text, rhs, base, level, key, variables, K)
    if sorted(predictors) != list(range(1, len(predictors) + 1)):
        name = lambda k: _shown(coef[level - 1], (() if level == 1 else key) + (k,), K)  # noqa: E731
        raise ModelError(f"in '{equation.strip()}': the coefficients are numbered {', '.join(map(name, sorted(predictors)))}, "
                         f"out of order; number them in turn from {name(1)}, without gaps")
    if level > 1 and not intercept and not predictors and not random:
        raise EquationSyntaxError(text, base, f"the equation of {_shown(coef[level - 2], key, K)} has no terms",
                                  "add the intercept")
    if level == 1 and not intercept and not predictors:
        raise EquationSyntaxError(text, base, "the level-1 equation has no terms",
                                  f"write OUTCOME = {coef[0]}0 + {coef[0]}1*X + {rand[0]}")
    ordered = tuple(predictors[k] for k in sorted(predictors))
    keys = [(t.name, t.mean_of, t.centering) for t in ordered]
    if len(set(keys)) != len(keys):
        raise ModelError(f"in '{equation.strip()}': a predictor appears twice with the same centring; use it once")
    return key, ordered, intercept, random


# ---------------------------------------------------------------- the model from its equations

def _orphan(key: tuple, text: str, spec_eqs: tuple, intercept: bool, given: dict, K: int) -> ModelError:
    """The error for an equation of a coefficient that no equation one level down has."""
    coef = coefficient_letters(K)
    p, P = key[0], len(spec_eqs)
    if not (p < P and (p > 0 or intercept)):
        if len(key) == 1 and p == 0:
            return ModelError(f"in '{text.strip()}': the level-1 equation has no intercept {_shown(coef[0], (0,), K)}, "
                              f"so {_shown(coef[0], (0,), K)} has no equation; add it to the level-1 equation or drop this one")
        if len(key) == 1:
            return ModelError(f"in '{text.strip()}': {_shown(coef[0], key, K)} has no term in the level-1 equation (it has "
                              f"{_shown(coef[0], (0,), K)}..{_shown(coef[0], (P - 1,), K)}); add {_shown(coef[0], key, K)}*NAME "
                              "there or renumber")
        return ModelError(f"in '{text.strip()}': {_shown(coef[len(key) - 1], key, K)} belongs to {_shown(coef[0], key[:1], K)}, "
                          f"which is not in the level-1 equation; add {_shown(coef[0], key[:1], K)} there or drop this equation")
    eq = spec_eqs[p]
    for i in range(1, len(key)):
        if key[i] not in eq.present():
            parent, missing = key[:i], key[:i + 1]
            shown = f"'{given[parent][3].strip()}'" if parent in given else \
                f"the default {_shown(coef[i - 1], parent, K)} = {_shown(coef[i], parent + (0,), K)}"
            what = _shown(coef[i], missing, K)
            head = (f"{what} is not" if missing == key else
                    f"{_shown(coef[len(key) - 1], key, K)} belongs to {what}, which is not")
            return ModelError(f"in '{text.strip()}': {head} in the level-{i + 1} equation of {_shown(coef[i - 1], parent, K)} "
                              f"({shown}); add {what}*NAME there or drop this equation")
        eq = eq.terms[key[i]]
    return ModelError(f"in '{text.strip()}': {_shown(coef[len(key) - 1], key, K)} is not a term of the equation one level "
                      "down; add it there or drop this equation")


def _equations_by_coefficient(equations: list, variables: Variables, K: int) -> dict:
    """The level-2..K equations by the subscripts of the coefficient each defines: (predictors, intercept,
    random, text), one equation per coefficient."""
    given: dict[tuple, tuple] = {}
    for level in range(2, K + 1):
        for eq in equations[level - 1]:
            key, preds, icpt, rand = parse_equation(eq, level, variables, K)
            if key in given:
                raise ModelError(f"in '{eq.strip()}': {_shown(coefficient_letters(K)[level - 2], key, K)} already has a "
                                 f"level-{level} equation; give one equation per coefficient")
            given[key] = (preds, icpt, rand, eq)
    return given


def build_levels_spec(equations: list, variables: Variables, options: RunOptions | None = None
                      ) -> ModelSpec:
    """equations[ℓ−1]: the list of level-ℓ equations (one at level 1). The model has K = len(equations)
    levels. Defaults follow HLM: a coefficient with no equation of its own is its intercept alone, random
    only on the intercept path (π0 = β00 + r0, β00 = γ000 + u00, γ000 = δ0000 + v000)."""
    K = len(equations)
    coef, rand = coefficient_letters(K), random_letters(K)
    if not equations[0]:
        raise ModelError(f"no level-1 equation given; pass -1 'OUTCOME = {coef[0]}0 + {coef[0]}1*X + {rand[0]}' with the "
                         f"-2 ... -{K} equations, or --model FILE")
    if len(equations[0]) != 1:
        raise ModelError(f"{len(equations[0])} level-1 equations; give one")
    outcome, terms, intercept, _ = parse_equation(equations[0][0], 1, variables, K)
    given = _equations_by_coefficient(equations, variables, K)
    used: set = set()

    def build(idx: tuple) -> Equation:
        if idx in given:
            preds, icpt, rnd, _ = given[idx]
            used.add(idx)
        else:
            preds, icpt, rnd = (), True, all(i == 0 for i in idx)
        kids = ()
        if len(idx) + 1 < K:
            kids = tuple(build(idx + (k,)) if (k > 0 or icpt) else None for k in range(len(preds) + 1))
        return Equation(preds, icpt, rnd, kids)

    eqs = tuple(build((p,)) if (p > 0 or intercept) else None for p in range(len(terms) + 1))
    for key, (_, _, _, text) in given.items():
        if key not in used:
            raise _orphan(key, text, eqs, intercept, given, K)
    spec = ModelSpec(outcome, K, terms, intercept, eqs, options or RunOptions())
    for level in range(2, K + 1):
        if not spec.random(level):
            r, zeros = rand[level - 1], (0,) * (level - 1)
            raise ModelError(f"nothing is random at level {level}: no {_shown(coef[level - 2], (), K)} is random at level "
                             f"{level} (no {r} term in any level-{level} equation), so this is not a {K}-level model; add {r}{subscript(*zeros)} to the intercept's equation, e.g. "
                             f"'{_shown(coef[level - 2], zeros, K)} = {_shown(coef[level - 1], zeros + (0,), K)} + "
                             f"{r}{subscript(*zeros)}'")
    return spec


def build_spec3(level1: str, level2: list[str], level3: list[str], variables: Variables,
                options: RunOptions | None = None) -> ModelSpec:
    """A three-level model from its level-1 equation and its π (level-2) and β (level-3) equations."""
    return build_levels_spec([[level1] if level1 else [], list(level2), list(level3)], variables, options)


# ---------------------------------------------------------------- blocks, model files, command files

_HEADER = re.compile(r"(level[- ]?\d+ model|summary of the model specified)", re.I)
_STOP = re.compile(r"(mixed model|method of estimation|the same model in r)\b", re.I)
_OUTCOME = re.compile(r"the outcome variable is\s+([A-Za-z_]\w*)", re.I)
_NOTE = re.compile(r"has been centered|has been centred| is the mean of ", re.I)  # the notes under a printed model


def classify_levels(lines: list[str], K: int) -> list[list[str]]:
    """Equations (one per line, '#' comments) sorted into levels by what each defines. Printed output
    reads back (HLM's and `hlmcli model`'s): headings and centring notes are skipped, reading stops at
    HLM's "Mixed Model" block or at "Method of estimation" (what follows is the lme4 formula), and
    'Y = ...' takes its outcome from "The outcome variable is"."""
    coef = coefficient_letters(K)
    out: list[list[str]] = [[] for _ in range(K)]
    found = [m.group(1) for m in (_OUTCOME.search(x) for x in lines) if m]
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if _STOP.match(line):
            break
        if not line or _HEADER.fullmatch(line) or _OUTCOME.search(line) or _NOTE.search(line):
            continue
        if "=" not in line:
            raise ModelError(f"'{line[:80]}' is not an equation; write one equation per line")
        lhs = unwrap(_normalise(line).split("=", 1)[0])
        c = _coef(lhs, line, K)
        if c and c[0] in coef[:K - 1] and len(c[1]) == coef.index(c[0]) + 1:
            out[len(c[1])].append(line)
        elif out[0]:
            raise ModelError(f"'{line[:80]}': a second level-1 equation (the first is '{out[0][0][:60]}'); keep one")
        else:
            if found and lhs.upper() == "Y":
                line = found[0] + " = " + line.split("=", 1)[1]
            out[0].append(line)
    return out


def classify(lines: list[str]) -> tuple[str | None, list[str], list[str]]:
    """classify_levels at three levels, as (level-1 equation or None, π equations, β equations)."""
    level1, level2, level3 = classify_levels(lines, 3)
    return (level1[0] if level1 else None), level2, level3



# ---------------------------------------------------------------- HLM 7 command files (three levels)

_IGNORED = {"fixtau", "fixtau2", "fixtau3", "accel", "output", "graphgammas", "printvariance-covariance",
            "stopval", "hypoth", "fulloutput", "lev1ols", "resfiltype", "fishertype", "laplace", "lvr-beta"}
_OFF = {"level1weight", "level2weight", "level3weight", "varianceknown", "constrain", "heterol1var",
        "level1deletion", "level2deletion", "level3deletion", "fixsigma2", "resfil1"}


def parse_hlm3_file(path: str | Path, variables: Variables, allow_outside: bool = False) -> ModelSpec:
    """An HLM 7 HLM3 command file: level1:, then each level2: line followed by its level3: lines."""
    path = Path(path)
    lines: dict = {"level1": None, "level2": [], "level3": []}
    opts: dict = {}
    for where, key, value, _ in key_values(path, read_text(path)):
        if key in ("level1", "level2", "level3"):
            _hlm3_level_line(lines, key, value, where)
        else:
            _hlm3_option(opts, key, value, where)
    if lines["level1"] is None:
        raise ModelError(f"{path}: no level1: line; add one like level1:MATH=INTRCPT1+YEAR+RANDOM")
    from ..io.files import output_from_file

    residuals = tuple(str(output_from_file(path, opts.get(f"resfil{lev}name") or f"resfil{lev}.csv", f"resfil{lev}name",
                                           allow_outside)) if opts.get(f"resfil{lev}") else None for lev in (2, 3))
    options = RunOptions(max_iterations=opts.get("max_iterations"), title=opts.get("title"),
                               residuals=residuals if any(residuals) else ())
    try:
        return build_spec3(lines["level1"], lines["level2"], lines["level3"], variables, options)
    except ModelError as exc:  # name the level line the quoted equation was read from
        for equation, where in lines.get("where", {}).items():
            if f"in '{equation.strip()}'" in str(exc):
                raise ModelError(f"{where}: {exc}") from None
        raise


def _hlm3_level_line(lines: dict, key: str, value: str, where: str) -> None:
    """A level1:, level2: or level3: line of an HLM3 command file, as an equation in `lines`; a level3:
    line belongs to the level2: line above it, whose terms it names (INTRCPT2 or a predictor)."""
    if key == "level1":
        if lines["level1"] is not None:
            raise ModelError(f"{where}: a second level1: line; keep one")
        if "=" not in value:
            raise ModelError(f"{where}: level1 needs OUTCOME=INTRCPT1+...+RANDOM")
        outcome, rhs = value.split("=", 1)
        terms, names, icpt, _ = level_terms(rhs, where, 1, 3)
        lines["names"] = ["INTRCPT1"] + names
        lines["level1"] = level_equation(outcome.strip(), terms, icpt, False, 1, 3)
        lines.setdefault("where", {})[lines["level1"]] = where
        return
    if key == "level2" and lines["level1"] is None:
        raise ModelError(f"{where}: a level2: line before the level1: line; put level1: first")
    if key == "level3" and "current" not in lines:
        raise ModelError(f"{where}: a level3: line must follow the level2: line of its coefficient")
    level = int(key[-1])
    coef, _, rhs = (s.strip() for s in value.partition("="))
    names = lines["names"] if level == 2 else lines["current"][1]
    upper = [n.upper() for n in names]
    if coef.upper() not in upper:
        raise ModelError(f"{where}: {key} line for '{coef}', which is not " + (
            f"a level-1 coefficient ({', '.join(names)})" if level == 2 else
            f"a term of the level2 line above it ({', '.join(names)})"))
    terms, term_names, icpt, rand = level_terms(rhs, where, level, 3)
    if not (icpt or terms or rand):
        raise ModelError(f"{where}: the {key} line for {coef} has no terms; write {coef}=INTRCPT{level}/")
    if level == 2:
        key_ = (upper.index(coef.upper()),)
        lines["current"] = (key_[0], (["INTRCPT2"] if icpt else []) + term_names, [0] * icpt + list(range(1, len(terms) + 1)))
    else:
        p, _, qs = lines["current"]
        key_ = (p, qs[upper.index(coef.upper())])
    lines[key].append(level_equation(key_, terms, icpt, rand, level, 3))
    lines.setdefault("where", {})[lines[key][-1]] = where


def _hlm3_option(opts: dict, key: str, value: str, where: str) -> None:
    """One key:value line of an HLM3 command file other than its level lines; keys that would change the
    model and that three-level fits do not read are refused by name."""
    if key == "mlf":  # HLM3 estimates by full ML only; mlf:n cannot ask for REML (use --reml for that)
        return
    if key == "numit":
        opts["max_iterations"] = max(1, whole(value, where, key))
    elif key == "title":
        opts["title"] = None if value.lower() in ("", "no title") else value
    elif key == "nonlin":
        if value.lower() not in ("n", "no", "none", "linear"):
            raise ModelError(f"{where}: nonlin:{value}: not read from a three-level command file yet; give the "
                             "outcome's family on the command line (--family, --trials, --exposure), which fits it "
                             "by PQL")
    elif key in ("resfil2", "resfil3"):
        if value.lower().startswith("y"):
            opts[key] = True
    elif key in ("resfil2name", "resfil3name"):
        opts[key] = value
    elif key in _IGNORED:
        return
    elif key in _OFF:
        if value.strip().lower() not in NO + ("none", "") and not (key == "fixsigma2" and value.strip() in ("-1", "")):
            raise ModelError(f"{where}: '{key}:{value}' is not supported for three-level models yet; "
                             "remove the line or set it to none/n")
    else:
        raise ModelError(f"{where}: the key '{key[:40]}' is not supported for three-level models; remove the line")


def is_command_file(path, text: str) -> bool:
    if str(path).lower().endswith(".hlm"):
        return True
    return any(line.strip().lower().startswith(("level1:", "level2:", "level3:")) for line in text.splitlines())


def spec_from_inputs_levels(equations: list, model_file: str | None, variables: Variables,
                            options: RunOptions, allow_outside: bool = False) -> ModelSpec:
    """One ModelSpec of K = len(equations) levels from -1 ... -K, a model file of equations, printed
    output pasted into -1 (or several equations in it, split by ';'), or at three levels an HLM 7
    command file."""
    K = len(equations)
    equations = [list(e) for e in equations]
    flags = "/".join(f"-{k}" for k in range(1, K + 1))
    if model_file and equations[0]:
        raise ModelError(f"{model_file}: give the model either with --model or with {flags}, not both")
    if model_file:
        text = read_text(Path(model_file))
        if is_command_file(model_file, text):
            if K != 3:
                raise ModelError(f"{model_file}: HLM 7 command files (.hlm) are read for two and three levels; give a "
                                 f"{K}-level model as equations (-1 ... -{K}, or a model file of equations)")
            if any(equations[1:]):
                raise ModelError(f"{model_file}: an HLM 7 command file holds the whole model, so -2/-3 equations "
                                 "cannot be added to it; edit its level2:/level3: lines or drop --model")
            return parse_hlm3_file(model_file, variables, allow_outside)
        try:
            found = classify_levels(text.splitlines(), K)
            return build_levels_spec([f + e for f, e in zip(found, equations)], variables, options)
        except ModelError as exc:
            raise at_file_line(model_file, text, exc) from None
    elif equations[0] and any("\n" in e or ";" in e for e in equations[0]):
        found = classify_levels(re.split(r"[\n;]", equations[0][0]), K)
        equations = [f + e for f, e in zip(found, [[]] + equations[1:])]
    return build_levels_spec(equations, variables, options)


def spec3_from_inputs(level1: str | None, level2: list[str], level3: list[str], model_file: str | None,
                      variables: Variables, options: RunOptions, allow_outside: bool = False) -> ModelSpec:
    """spec_from_inputs_levels at three levels, from -1, -2 and -3."""
    return spec_from_inputs_levels([[level1] if level1 else [], list(level2), list(level3)], model_file, variables,
                                   options, allow_outside)
