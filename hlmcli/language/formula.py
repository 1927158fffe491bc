"""An lme4 formula as a second way in: `MATHACH ~ SECTOR*group(SES) + (group(SES) | ID)` is translated
into the level-by-level equations that `-1`/`-2`/`-3` take, so both doors reach the same parser and the
same model.

The translation. Grouping factors fix the levels: `(… | ID)` alone is a two-level model with units ID;
`(… | SCHOOL/CLASS)`, or `(… | SCHOOL) + (… | SCHOOL:CLASS)`, a three-level one with classes in schools.
Every variable then has a level (where it varies), given by the caller from the data. A fixed term is a
product of at most one variable per level (or a centring call such as `group(SES)`); its level-1 part
names the level-1 coefficient it belongs to (β0 for none), its level-2 part the predictor in that
coefficient's level-2 equation, and so on up. So `SECTOR:group(SES)` is γ11 in `β1 = γ10 + γ11*SECTOR`,
a cross-level interaction. A random term `(x | g)` at level m puts the random effect on the coefficient
that x names at level m - 1. `(x || g)` asks for uncorrelated effects, which hlmcli fits as a diagonal τ.

Crossed grouping factors (HLM 7's HCM2, and any mix of crossed and nested ones) have no equations of
this form: `crossed` reads such a formula for the cross-classified engine instead. What else has no
equation form is refused in one line: products of two variables of one level
(make the product a column), functions other than the centring calls, a variable that does not vary
below the level at which it is random.

The parsing of the fixed part and of each random term's expression (`*`, `:`, `0 +`, `- 1`) is done by
`formulae`, the formula parser of bambi (extra `[formula]`); only the bars are split here, because
`formulae` reads `(x | g)` as two separate terms and drops whether they are correlated, and does not read `||`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from ..errors import ModelError
from ..spec import subscript

_CALL = re.compile(r"^(group|grand|mean)\(\s*([A-Za-z_][\w.]*)\s*\)$", re.I)
_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class FormulaModel:
    """The equations a formula stands for, in hlmcli's ASCII form, and what it says beyond them."""
    outcome: str
    ids: tuple[str, ...]          # grouping factors from level 2 upwards
    equations: tuple[tuple[str, ...], ...]  # level 1 (one equation), level 2, level 3 ...
    tau: str                      # "unstructured" or "diagonal"

    @property
    def levels(self) -> int:
        return len(self.equations)

    def options(self) -> list[str]:
        """The same model as command-line options."""
        out = []
        for level, eqs in enumerate(self.equations, start=1):
            out += [x for eq in eqs for x in (f"-{level}", eq)]
        return out + (["--tau", "diagonal"] if self.tau == "diagonal" else [])


def _parse(text: str, what: str):
    try:
        import formulae
    except ImportError:
        raise ModelError("--formula needs the formula parser: pip install '.[formula]' (or pip install formulae)") from None
    try:
        return formulae.model_description(text)
    except Exception as exc:  # formulae raises several types; all mean the text is not a formula
        raise ModelError(f"cannot read the formula {what} '{text}': {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                         "write it as in lme4, e.g. 'Y ~ X + W + (X | ID)'") from None


def split_bars(rhs: str) -> tuple[str, list[tuple[str, str, bool]]]:
    """'X + (1 + X | ID) + (1 || S)' -> ('X', [('1 + X', 'ID', False), ('1', 'S', True)])."""
    fixed, bars, depth, start, i = [], [], 0, None, 0
    out = []
    while i < len(rhs):
        ch = rhs[i]
        if ch == "(":
            if depth == 0:
                start = i
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise ModelError(f"the formula has a ')' without its '(' at character {i + 1}; balance the parentheses")
            if depth == 0 and start is not None:
                inner = rhs[start + 1:i]
                if "|" in _top_level(inner):
                    bars.append(inner)
                    out.append("\0")
                    start = None
                    i += 1
                    continue
                out.append(rhs[start:i + 1])
                start = None
                i += 1
                continue
        if depth == 0:
            out.append(ch)
        i += 1
    if depth:
        raise ModelError("the formula has a '(' that is not closed; balance the parentheses")
    text = "".join(out)
    # drop the placeholders and the '+' that joined them
    text = re.sub(r"\+\s*\0|\0\s*\+?", "", text).strip()
    fixed = text.strip().strip("+").strip()
    parsed = []
    for inner in bars:
        top = _top_level(inner)
        k = top.index("|")
        diagonal = top[k:k + 2] == "||"
        expr, factor = inner[:k].strip(), inner[k + (2 if diagonal else 1):].strip()
        if not expr or not factor:
            raise ModelError(f"'({inner})': a random term needs an expression and a grouping factor, as in (1 + X | ID)")
        parsed.append((expr, factor, diagonal))
    return fixed, parsed


def _top_level(text: str) -> str:
    """The text with everything inside parentheses blanked, so that '|' inside calls is not seen."""
    out, depth = [], 0
    for ch in text:
        depth += ch == "("
        out.append(ch if depth == 0 else " ")
        depth -= ch == ")"
    return "".join(out)


def _terms(description) -> tuple[bool, list[tuple[str, ...]]]:
    """(has an intercept, [product of predictor names, ...]) of a formulae model description."""
    intercept, terms = False, []
    for t in description.terms:
        kind = type(t).__name__
        if kind == "Intercept":
            intercept = True
        elif kind == "Term":
            names = []
            for c in t.components:
                name = c.name if type(c).__name__ == "Variable" else getattr(c, "name", str(c))
                names.append(str(name))
            terms.append(tuple(names))
        else:
            raise ModelError(f"the formula term '{t}' has no HLM equation form; use predictors, products and random terms")
    return intercept, terms


def _factors(bars: list[tuple[str, str, bool]]) -> list[tuple[str, ...]]:
    """Each bar's grouping factor as the path of ids from the top: 'S/C' and 'S:C' -> ('S', 'C')."""
    out = []
    for _, factor, _ in bars:
        parts = [p.strip() for p in re.split(r"[/:]", factor)]
        if not all(_NAME.match(p) for p in parts):
            raise ModelError(f"the grouping factor '{factor}' must be an id column or ids joined by '/' or ':'")
        if "/" in factor and ":" in factor:
            raise ModelError(f"the grouping factor '{factor}': write nesting as A/B or as (…|A) + (…|A:B), not both")
        out.append(tuple(parts))
    return out


def grouping(formula: str) -> tuple[str, ...]:
    """The grouping factors of a formula from level 2 upwards: 'Y ~ X + (1 | S/C)' -> ('C', 'S')."""
    return _structure(formula)[2]


def _structure(formula: str):
    if formula.count("~") != 1:
        raise ModelError(f"the formula '{formula}' needs one '~' between the outcome and the predictors")
    lhs, rhs = (s.strip() for s in formula.split("~"))
    if not _NAME.match(lhs):
        raise ModelError(f"the outcome '{lhs}' must be a column name (transform it in the data file)")
    fixed_text, bars = split_bars(rhs)
    if not bars:
        raise ModelError("the formula has no random term such as (1 | ID); a multilevel model needs at least one")
    # '/' expands to the chain of its prefixes, as in lme4: (1|S/C) = (1|S) + (1|S:C)
    expanded = []
    for (expr, factor, diagonal), path in zip(bars, _factors(bars)):
        if "/" in factor:
            expanded += [(expr, path[:n], diagonal) for n in range(1, len(path) + 1)]
        else:
            expanded.append((expr, path, diagonal))
    paths = sorted({p for _, p, _ in expanded}, key=len)
    top = paths[-1]
    for p in paths:
        if p != top[:len(p)]:
            others = ", ".join(":".join(q) for q in paths)
            raise ModelError(f"the grouping factors {others} are crossed, not nested: HLM equations are for nested "
                             "models (write (…|A/B) when B is nested in A); 'hlmcli fit DATA --formula' fits "
                             "crossed factors from one data file")
    missing = [":".join(top[:n]) for n in range(1, len(top) + 1) if top[:n] not in paths]
    if missing:
        raise ModelError(f"the formula nests {':'.join(top)} but has no random term for {', '.join(missing)}; each "
                         f"level needs a random effect (add (1 | {missing[0]}))")
    ids = tuple(reversed(top))  # the innermost factor is the level-2 unit
    if len(ids) > 2:
        raise ModelError(f"the formula has {len(ids) + 1} levels; a formula can give two or three levels")
    return lhs, fixed_text, ids, expanded


def translate(formula: str, level_of: Callable[[str], int | None], unknown=None) -> FormulaModel:
    """Translate an lme4 formula into equations. level_of(column) is the level at which a data column
    varies (1 = within the level-2 units), for the levels the formula's grouping factors define, or
    None when the data have no such column; unknown(column, error), when given, is what to raise then
    (Variables.unknown: a text column is named as such)."""
    lhs, fixed_text, ids, expanded = _structure(formula)
    k = len(ids) + 1

    def slot(name: str) -> tuple[int, str]:
        m = _CALL.match(name)
        if not m and not _NAME.match(name):
            raise ModelError(f"'{name}' in the formula: only columns and group(X), grand(X), mean(X) are read; "
                             "make other transformations a column of the data file")
        base = m.group(2) if m else name
        lv = level_of(base)
        if lv is None:
            error = ModelError(f"'{base}' in the formula is not a column of the data")
            raise unknown(base, error) if unknown is not None else error
        if m and m.group(1).lower() == "mean":
            lv = 2  # a unit's mean of a level-1 variable is a level-2 predictor
        return lv, name

    def path_of(term: tuple[str, ...], where: str) -> tuple[str | None, ...]:
        """(level-1 name or None, level-2 name or None, ...) of a product of predictors."""
        slots: list[str | None] = [None] * k
        for name in term:
            lv, text = slot(name)
            if lv > k:
                raise ModelError(f"'{name}' in {where} does not vary at any level of the model")
            if slots[lv - 1] is not None:
                raise ModelError(f"'{':'.join(term)}' in {where} multiplies two level-{lv} variables, which HLM "
                                 f"equations cannot do: add the product to the level-{lv} data as a column")
            slots[lv - 1] = text
        return tuple(slots)

    intercept, terms = _terms(_parse(f"{lhs} ~ {fixed_text or '1'}", "(fixed part)"))
    fixed = ([(None,) * k] if intercept else []) + [path_of(t, "the fixed part") for t in terms]
    # random: level -> {coefficient prefix (length level-1): the bar it came from}
    random: dict[int, dict[tuple, int]] = {lv: {} for lv in range(2, k + 1)}
    flags: dict[int, bool] = {}  # bar -> written with ||
    for n, (expr, path, diagonal) in enumerate(expanded):
        lv = k + 1 - len(path)  # (…|innermost) is level 2, (…|outermost) level k
        where = f"({expr} | {':'.join(path)})"
        flags[n] = diagonal
        has_one, rterms = _terms(_parse(f"{lhs} ~ {expr}", f"of {where}"))
        for p in ([(None,) * k] if has_one else []) + [path_of(t, where) for t in rterms]:
            high = [p[i] for i in range(lv - 1, k) if p[i] is not None]
            if high:
                raise ModelError(f"'{high[0]}' does not vary within the level-{lv} units ({':'.join(path)}), so its "
                                 f"effect cannot vary randomly across them; remove it from {where}")
            key = p[:lv - 1]
            if key in random[lv]:
                raise ModelError(f"{where} repeats a random effect already in the formula")
            random[lv][key] = n
    # τ's structure: one bar per level is full (or diagonal with ||); one bar per effect is diagonal;
    # lme4's other block structures have no HLM form. A level with one effect fits either.
    structure: set[str] = set()
    for lv, keys in random.items():
        bars: dict[int, list] = {}
        for key, n in keys.items():
            bars.setdefault(n, []).append(key)
        if len(keys) < 2:
            continue
        if len(bars) == 1:
            structure.add("diagonal" if flags[next(iter(bars))] else "unstructured")
        elif all(len(v) == 1 for v in bars.values()):
            structure.add("diagonal")
        else:
            raise ModelError(f"the level-{lv} random effects form blocks of several bars; hlmcli fits τ either full "
                             "(one bar, (1 + X | g)) or diagonal ((1 + X || g), or one bar per effect)")
    if len(structure) > 1:
        raise ModelError("the formula asks for correlated effects at one level and uncorrelated at another; hlmcli "
                         "fits τ either unstructured or diagonal for the whole model")
    random_keys = {(lv, key) for lv, keys in random.items() for key in keys}
    return _equations(lhs, ids, k, fixed, [(lv, key) for lv in sorted(random) for key in random[lv]], random_keys,
                      structure.pop() if structure else "unstructured")


# ASCII letters of the coefficients and of the random terms, lowest level first
_LETTERS = {2: ("b", "g"), 3: ("p", "b", "g")}
_RANDOM = {2: ("r", "u"), 3: ("e", "r", "u")}


def _equations(outcome, ids, k, fixed, random_order, random_keys, tau) -> FormulaModel:
    letters, rand = _LETTERS[k], _RANDOM[k]
    # every coefficient, as its path prefix (level-m coefficient: length m); the fixed effects are the full paths
    order: list[tuple] = []
    for p in fixed:
        order += [p[:m] for m in range(1, k + 1)]
    for lv, key in random_order:
        order += [key[:m] for m in range(1, len(key) + 1)]
    seen: dict[tuple, None] = {}
    for prefix in order:
        seen.setdefault(prefix)
    number: dict[tuple, int] = {}
    for prefix in seen:  # among siblings: no predictor is 0, predictors 1, 2, ... in order of appearance
        if prefix[-1] is None:
            number[prefix] = 0
        else:
            number[prefix] = 1 + sum(1 for q in number if q[:-1] == prefix[:-1] and q[-1] is not None)
    fixed_set = set(fixed)

    def digits(prefix: tuple) -> str:
        d = [number[prefix[:i]] for i in range(1, len(prefix) + 1)]
        return subscript(*d)

    def children(parent: tuple) -> list[tuple]:
        m = len(parent) + 1
        kids = [q for q in seen if len(q) == m and q[:-1] == parent and (m < k or q in fixed_set)]
        return sorted(kids, key=lambda q: number[q])

    equations: list[list[str]] = [[] for _ in range(k)]
    level1 = [f"{letters[0]}{digits(q)}" + ("" if q[-1] is None else f"*{q[-1]}") for q in children(())]
    equations[0].append(f"{outcome} = " + " + ".join(level1 + [rand[0]]))
    for m in range(2, k + 1):
        for parent in sorted((q for q in seen if len(q) == m - 1), key=lambda q: [number[q[:i]] for i in range(1, m)]):
            kids = children(parent)
            if kids and kids[0][-1] is not None:
                # HLM's equations number a coefficient's predictors after its intercept, which is always there
                # when a predictor is: lme4's W:X without X (or 0 + W) has no equation form
                named = parent[-1] or "the intercept"
                raise ModelError(f"the formula has {kids[0][-1]} in the equation of {named} without that equation's "
                                 f"intercept; HLM equations keep it: add {parent[-1] or '1'} to the fixed part")
            pieces = [f"{letters[m - 1]}{digits(q)}" + ("" if q[-1] is None else f"*{q[-1]}") for q in kids]
            if (m, parent) in random_keys:
                pieces.append(f"{rand[m - 1]}{digits(parent)}")
            fixed_slope = k == 2 and parent != (None,) and pieces == [f"{letters[1]}{digits(parent)}0"]
            if pieces and not fixed_slope:  # HLM's default for a slope with no equation: fixed, γq0 alone
                equations[m - 1].append(f"{letters[m - 2]}{digits(parent)} = " + " + ".join(pieces))
    return FormulaModel(outcome, ids, tuple(tuple(e) for e in equations), tau)


def _predictor(term) -> str | None:
    """A two-level Term as formula text: X, group(X), grand(X), mean(X); None when it has no formula form."""
    if term.unit_mean:
        return None if term.centering == "grand" else f"mean({term.name})"
    return {"none": term.name, "group": f"group({term.name})", "grand": f"grand({term.name})"}.get(term.centering)


def formula_of(spec, id_name: str) -> str | None:
    """A two-level model as the formula that --formula reads (translate(formula_of(spec)) gives the same
    equations), or None when the model has no formula form (a grand-centred unit mean)."""
    x_of = [None] + [_predictor(t) for t in spec.level1]
    fixed = ["1" if spec.level2[0].intercept else "0"]
    for q, eq in enumerate(spec.level2):
        x = x_of[q]
        if q and x is None:
            return None
        if x and eq.intercept:
            fixed.append(x)
        for t in eq.predictors:
            w = _predictor(t)
            if w is None:
                return None
            fixed.append(w if x is None else f"{w}:{x}")
    rand = ["1" if q == 0 else x_of[q] for q, eq in enumerate(spec.level2) if eq.random]
    if not rand:
        return None
    if len(rand) > 1 and spec.options.tau == "diagonal":
        bars = " + ".join(f"({'1' if r == '1' else '0 + ' + r} | {id_name})" for r in rand)
    else:
        bars = f"({' + '.join(rand if '1' in rand else ['0'] + rand)} | {id_name})"
    return f"{spec.outcome} ~ {' + '.join(dict.fromkeys(fixed))} + {bars}"


# ---------------------------------------------------------------- crossed grouping factors

@dataclass(frozen=True)
class CrossedBar:
    """One random term of a cross-classified model: its grouping factor (the id columns whose
    combination is the group, e.g. ('S', 'C') for S:C) and its random columns ('1' for the intercept,
    else a product of columns)."""
    factor: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]

    @property
    def name(self) -> str:
        return ":".join(self.factor)


@dataclass(frozen=True)
class CrossedFormula:
    """A formula whose grouping factors are not one chain of nesting (HLM 7's HCM2 and beyond: any set
    of crossed and nested factors, as lme4 allows)."""
    outcome: str
    fixed: tuple[tuple[str, ...], ...]  # ('1',) is the intercept; else a product of columns
    bars: tuple[CrossedBar, ...]

    @property
    def columns(self) -> list[str]:
        """Every data column the formula names (outcome, predictors, ids), once, in order."""
        seen: dict[str, None] = {self.outcome: None}
        for t in self.fixed + tuple(c for b in self.bars for c in b.columns):
            for name in t:
                if name != "1":
                    seen.setdefault(name)
        for b in self.bars:
            for name in b.factor:
                seen.setdefault(name)
        return list(seen)


def _plain_terms(text: str, lhs: str, where: str) -> tuple[tuple[str, ...], ...]:
    """('1',) first when the expression has an intercept, then its products of plain column names, in R's
    order (main effects, then two-way products, ...). Read here, without the formula parser: the terms of a
    cross-classified model are columns joined by '+', ':' and '*', with '0', '1' and '- 1'."""
    intercept, terms = True, []
    pieces = re.split(r"([+-])", text.replace(" ", ""))
    sign = "+"
    for piece in pieces:
        if piece in ("+", "-"):
            sign = piece
            continue
        if not piece:
            continue
        if piece in ("0", "1"):
            intercept = (piece == "1") == (sign == "+")
            continue
        if sign == "-":
            raise ModelError(f"'- {piece}' in {where}: only '- 1' (no intercept) is read; leave the term out instead")
        factors = piece.split("*")
        if any(not f for f in factors):
            raise ModelError(f"'{piece}' in {where} is not a product of columns; write it as A:B or A*B")
        expanded = [()]
        for f in factors:  # A*B = A + B + A:B, with A and B themselves products (A:C)
            names = tuple(f.split(":"))
            for name in names:
                if not _NAME.match(name):
                    raise ModelError(f"'{name}' in {where}: a cross-classified model reads columns and their "
                                     "products (A:B, A*B); centre or transform a column in the data file")
            expanded += [e + names for e in expanded]
        for e in expanded[1:]:
            key = tuple(dict.fromkeys(e))
            if key not in terms:
                terms.append(key)
    terms.sort(key=len)  # stable: R's order of the terms by their degree
    return ((("1",),) if intercept else ()) + tuple(terms)


def crossed(formula: str) -> CrossedFormula | None:
    """The formula as a cross-classified model, or None when its grouping factors are one chain of
    nesting (then `translate` gives its HLM equations). `(x || g)` becomes one bar per column, as in
    lme4; `(x | A/B)` becomes (x | A) + (x | A:B)."""
    if formula.count("~") != 1:
        return None
    lhs, rhs = (s.strip() for s in formula.split("~"))
    fixed_text, bars = split_bars(rhs)
    if not bars or not _NAME.match(lhs):
        return None
    paths = []
    expanded = []
    for (expr, factor, diagonal), path in zip(bars, _factors(bars)):
        chain = [path[:n] for n in range(1, len(path) + 1)] if "/" in factor else [path]
        for p in chain:
            expanded.append((expr, p, diagonal))
            paths.append(p)
    top = max(paths, key=len)
    if all(p == top[:len(p)] for p in paths):
        return None  # one chain of nesting: the HLM2/HLM3 path
    out = []
    for expr, path, diagonal in expanded:
        where = f"({expr} | {':'.join(path)})"
        columns = _plain_terms(expr, lhs, f"the random term {where}")
        if not columns:
            raise ModelError(f"{where} has no random effect; write (1 | {':'.join(path)}) or (0 + X | ...)")
        if diagonal:
            out += [CrossedBar(path, (c,)) for c in columns]
        else:
            out.append(CrossedBar(path, columns))
    return CrossedFormula(lhs, _plain_terms(fixed_text or "1", lhs, "the fixed part"), tuple(out))


def diagonal_bars(model: CrossedFormula) -> CrossedFormula:
    """--tau diagonal: every random term split into one term per column (uncorrelated effects)."""
    bars = tuple(CrossedBar(b.factor, (c,)) for b in model.bars for c in b.columns)
    return CrossedFormula(model.outcome, model.fixed, bars)
