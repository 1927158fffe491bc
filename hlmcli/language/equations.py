"""Stage 3, equations: level-by-level model text (inline, model files, HLM 7 .hlm files) to a ModelSpec.

The parser knows only the names of the variables at each level; it never touches data.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelError

CENTERINGS = ("none", "group", "grand")


@dataclass(frozen=True)
class Term:
    """A predictor: a variable, how it is centered, and whether it is the unit mean of a level-1 variable."""

    name: str
    centering: str = "none"  # none | group (level 1 only) | grand
    unit_mean: bool = False  # level 2: mean(X) of level-1 variable X over each unit's records used


@dataclass(frozen=True)
class Level2Equation:
    predictors: tuple[Term, ...] = ()
    random: bool = False
    intercept: bool = True  # the fixed intercept γq0; False for 'b1 = u1' (HLM 7's random/ with no INTRCPT2)

    @property
    def present(self) -> bool:
        """False for the level-1 intercept of a model written without b0."""
        return self.intercept or self.random or bool(self.predictors)


@dataclass(frozen=True)
class Hypothesis:
    """Rows of a contrast matrix C (one per restriction) over the model's γs, tested as Cγ = 0."""

    label: str
    rows: tuple[tuple[float, ...], ...]
    rhs: tuple[float, ...] = ()  # Cγ = rhs; empty means all zero


@dataclass(frozen=True)
class RunOptions:
    """Settings that travel with a model: from the command line or an HLM 7 command file."""

    method: str = "REML"
    max_iterations: int = 100
    stopval: float | None = None
    title: str | None = None
    hypotheses: tuple[Hypothesis, ...] = ()
    prior_deviance: float | None = None
    prior_params: int | None = None
    residuals_l1: str | None = None
    residuals_l2: str | None = None
    homogeneity: bool = False
    full_output: bool = False
    ols_units: int = 10
    tau: str = "unstructured"  # unstructured | diagonal (independent random effects)
    weight1: str | None = None  # level-1 sampling weight (HLM's level1weight:)
    weight2: str | None = None  # level-2 sampling weight (HLM's level2weight:)
    # HGLM (spec.py, hglm.py): the level-1 family and how it is estimated
    family: str = "normal"  # normal | bernoulli | binomial | poisson | ordinal
    link: str | None = None  # ordinal: logit (None: logit), probit, cloglog
    ncat: int | None = None  # ordinal: the number of categories a .hlm file's nonlin:ordinal,NCAT gives
    trials: str | None = None  # binomial: the number-of-trials variable
    exposure: str | None = None  # poisson: the exposure variable (log exposure is an offset)
    overdispersion: bool = False  # estimate the level-1 scale instead of fixing it at 1
    estimation: str = "pql"  # pql | laplace | agq
    quadrature_points: int = 1  # AGQ points per random effect
    macroit: int = 100  # PQL macro iterations
    microit: int = 100  # PQL micro iterations (inner linear fit)
    stopmacro: float = 1e-8  # PQL: max|Δη| <= stopmacro·(1 + max|η|)
    stopmicro: float = 1e-8  # PQL: inner fit tolerance
    separation: str = "refuse"  # refuse | fit: a separated coefficient held at a bound (separation.py)


@dataclass(frozen=True)
class ModelSpec:
    outcome: str
    level1: tuple[Term, ...]  # predictors β1..βQ (the intercept β0 is implicit)
    level2: tuple[Level2Equation, ...]  # one per coefficient, β0..βQ
    options: RunOptions = field(default_factory=RunOptions)

    @property
    def method(self) -> str:
        return self.options.method

    # The model's kind as values (spec.py): what the engines, the capabilities table and the report
    # branch on, rather than on which command or file the model came from.
    @property
    def levels(self) -> tuple:
        """The equations level by level: (level-1 predictors, level-2 equations)."""
        return (self.level1, self.level2)

    @property
    def family(self):
        from ..spec import Family

        return Family.of(self.options.family)

    @property
    def estimation(self):
        """How the model is estimated: the method (REML/ML) of a linear model, PQL/Laplace/AGQ of an HGLM."""
        from ..spec import Estimation, Method

        return Method(self.options.method) if self.family.linear else Estimation(self.options.estimation)

    @property
    def tau_structure(self):
        from ..spec import TauStructure

        return TauStructure(self.options.tau)

    @property
    def level1_intercept(self) -> bool:
        return self.level2[0].present

    def coefficient_names(self) -> list[str]:
        return ["INTRCPT1"] + [t.name for t in self.level1]

    @property
    def random(self) -> list[bool]:
        return [eq.random for eq in self.level2]


@dataclass(frozen=True)
class Variables:
    """The names known at each level, and the file each level came from (for messages)."""

    level1: tuple[str, ...]
    level2: tuple[str, ...]
    level1_file: str = "the level-1 file"
    level2_file: str = "the level-2 file"

    def lookup(self, name: str, level: int) -> str | None:
        names = self.level1 if level == 1 else self.level2
        hits = [n for n in names if n.lower() == name.lower()]
        if len(hits) > 1:
            raise ModelError(f"variable '{name}' matches {', '.join(hits)}, which differ only in case; rename one in the data")
        return hits[0] if hits else None

    def level_of(self, name: str) -> int | None:
        if self.lookup(name, 1):
            return 1
        if self.lookup(name, 2):
            return 2
        return None


# ---------------------------------------------------------------- text normalisation and errors

_REPLACEMENTS = {
    "×": "*", "·": "*", "⋅": "*", "∙": "*", "•": ".", "−": "-", "–": "-", "—": "-",
    "β": "b", "Β": "b", "γ": "g", "Γ": "g", "ε": "r", "＝": "=",
}


def gamma_labels(spec: ModelSpec) -> list[tuple[int, int]]:
    """(q, s) of each γ in model order: γ00, γ01, ..., γ10, ..."""
    return [(q, s) for q, eq in enumerate(spec.level2) for s in range(len(eq.predictors) + 1)]


def contrasts_from_rows(spec: ModelSpec, where: str, label: str, rows: list[tuple[int, list[str]]]) -> Hypothesis:
    """HLM 7's gammaG:c1,...,cF lines: one coefficient per γ in model order; lines sharing G form one test."""
    n = len(gamma_labels(spec))
    out = []
    for line_no, values in rows:
        if len(values) != n:
            raise ModelError(f"{where}: line {line_no}: gamma{label} has {len(values)} values but the model has {n} γs; give one per γ")
        try:
            row = tuple(float(v) for v in values)
        except ValueError:
            raise ModelError(f"{where}: line {line_no}: gamma{label} values must be numbers") from None
        if not all(math.isfinite(v) for v in row):
            raise ModelError(f"{where}: line {line_no}: gamma{label} values must be finite numbers (not nan or inf)")
        if not any(row):
            raise ModelError(f"{where}: line {line_no}: gamma{label} is all zeros, so it tests nothing; give a contrast")
        out.append(row)
    return Hypothesis(label=f"hypothesis {label}", rows=tuple(out))


def normalise(text: str) -> str:
    for a, b in _REPLACEMENTS.items():
        text = text.replace(a, b)
    return text


# Bounds that keep parsing linear in the input: no real equation comes near them.
MAX_EQUATION_CHARS = 10_000
MAX_NESTING = 32
MAX_INDEX_DIGITS = 4


def check_shape(text: str) -> None:
    """One linear pass before any parsing: length, balanced parentheses, nesting depth."""
    if len(text) > MAX_EQUATION_CHARS:
        raise ModelError(f"an equation of {len(text)} characters is longer than the {MAX_EQUATION_CHARS} "
                         "hlmcli reads; write one term per predictor")
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise EquationSyntaxError(text[:200], min(i, 199), f"parentheses nested more than {MAX_NESTING} deep",
                                          "remove the redundant parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise EquationSyntaxError(text, i, "a ')' without its '('", "balance the parentheses")
    if depth:
        raise EquationSyntaxError(text, len(text), f"{depth} '(' not closed", "balance the parentheses")


def parse_index(digits: str, what: str, equation: str) -> int:
    """A coefficient subscript, refused when implausibly long (int() of thousands of digits raises)."""
    if len(digits) > MAX_INDEX_DIGITS:
        raise ModelError(f"in '{equation.strip()[:80]}': the subscript of {what}{digits[:8]}... has {len(digits)} digits; "
                         "number the coefficients 0, 1, 2, ...")
    return int(digits)


class EquationSyntaxError(ModelError):
    def __init__(self, equation: str, position: int, problem: str, hint: str):
        pos = max(0, min(position, len(equation)))
        super().__init__(f"in '{equation.strip()}' at character {pos + 1}: {problem}; {hint}")
        self.detail = f"    {equation}\n    {' ' * pos}^"


def right_side_terms(text: str, rhs: str, base: int):
    """Each top-level term of an equation's right side (which starts at character `base` of `text`)
    with its position, refusing an empty one."""
    for raw, off in split_top(rhs):
        piece, pos = strip_piece(raw, base + off)
        if not piece:
            raise EquationSyntaxError(text, pos, "empty term", "remove the extra '+'")
        yield piece, pos


def _closest(name: str, variables: Variables) -> str:
    pool = list(variables.level1) + list(variables.level2)
    close = difflib.get_close_matches(name.upper(), [p.upper() for p in pool], n=3, cutoff=0.6)
    out = []
    for c in close:
        real = next(p for p in pool if p.upper() == c)
        out.append(f"{real} (level {variables.level_of(real)})")
    return f"; did you mean {', '.join(out)}?" if out else "; check the spelling against 'hlmcli mdm info'"


# ---------------------------------------------------------------- tokens

_BETA = re.compile(r"^b(\d+)j?$", re.I)
_GAMMA = re.compile(r"^g(?:(\d)(\d)|(\d+)[,_](\d+))$", re.I)
_U = re.compile(r"^u(\d+)j?$", re.I)
_R = re.compile(r"^(r|e)(ij)?$", re.I)


def split_top(text: str, sep: str = "+") -> list[tuple[str, int]]:
    """Split on `sep` outside parentheses, keeping each piece's start offset."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
    parts.append((text[start:], start))
    return parts


def strip_piece(piece: str, offset: int) -> tuple[str, int]:
    lead = len(piece) - len(piece.lstrip())
    return piece.strip(), offset + lead


def unwrap(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------- predictors

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _resolve(name: str, level: int, variables: Variables, equation: str, pos: int, where: str) -> str:
    """A variable at `level`, allowing HLM's ij / j subscripts; a clear error otherwise."""
    candidates = [name]
    for suffix in ("ij", "j"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            candidates.append(name[: -len(suffix)])
    for cand in candidates:
        hit = variables.lookup(cand, level)
        if hit:
            return hit
    other = 2 if level == 1 else 1
    for cand in candidates:
        hit = variables.lookup(cand, other)
        if hit:
            file = variables.level2_file if other == 2 else variables.level1_file
            if level == 1:
                hint = f"level-2 variables go in a level-2 equation (e.g. b0 = g00 + g01*{hit} + u0)"
            else:
                hint = f"a level-1 variable goes in the level-1 equation, or use mean({hit}) for its unit mean"
            raise ModelError(f"in '{equation.strip()}': {hit} is a level-{other} variable (in {file}), "
                             f"not usable in {where}; {hint}")
    raise ModelError(f"in '{equation.strip()}': unknown variable '{name}'{_closest(name, variables)}")


def _parse_predictor(text: str, level: int, variables: Variables, equation: str, pos: int) -> Term:
    where = "a level-1 equation" if level == 1 else "a level-2 equation"
    body = unwrap(text)
    m = re.fullmatch(r"(group|grand|mean)\s*\((.*)\)", body, re.I)
    if m:
        func, inner = m.group(1).lower(), m.group(2).strip()
        if func == "group":
            if level != 1:
                raise ModelError(f"in '{equation.strip()}': group() centering applies to level-1 variables only; use grand() at level 2")
            return Term(_resolve(inner, 1, variables, equation, pos, where), "group")
        if func == "mean":
            if level != 2:
                raise ModelError(f"in '{equation.strip()}': mean({inner}) is a unit mean and belongs in a level-2 equation")
            return Term(_resolve(inner, 1, variables, equation, pos, "mean()"), "none", unit_mean=True)
        inner_term = _parse_predictor(inner, level, variables, equation, pos)
        if inner_term.centering != "none":
            raise ModelError(f"in '{equation.strip()}': {text.strip()} centers twice; use one of group() or grand()")
        return Term(inner_term.name, "grand", inner_term.unit_mean)
    # HLM's printed forms: (X - X.j) group mean, (X - X..) grand mean, (W - W.) level-2 grand mean
    m = re.fullmatch(rf"({_NAME})\s*-\s*({_NAME})\s*(\.j|\.\.|\.)", body)
    if m:
        left, right, mark = m.group(1), m.group(2), m.group(3)
        name = _resolve(left, level, variables, equation, pos, where)
        if _resolve(right, level, variables, equation, pos, where) != name:
            raise EquationSyntaxError(equation, pos, f"'{body}' subtracts the mean of a different variable",
                                      f"write ({name} - {name}{mark})")
        if mark == ".j":
            if level != 1:
                raise ModelError(f"in '{equation.strip()}': group-mean centering applies to level-1 variables only")
            return Term(name, "group")
        if mark == ".." and level != 1:
            raise ModelError(f"in '{equation.strip()}': at level 2 the grand mean is written ({name} - {name}.)")
        if mark == "." and level != 2:
            raise ModelError(f"in '{equation.strip()}': at level 1 the grand mean is written ({name} - {name}..)")
        return Term(name, "grand")
    if re.fullmatch(_NAME, body):
        return Term(_resolve(body, level, variables, equation, pos, where), "none")
    raise EquationSyntaxError(equation, pos, f"cannot read the predictor '{text.strip()}'",
                              "write NAME, group(NAME), grand(NAME), mean(NAME) or (NAME - NAME.j)")


def split_star(piece: str, pos: int):
    """A term at its first '*' outside parentheses: 'b1*(SES)' -> ('b1', '(SES)', offset of the
    predictor in the equation); a term with no '*' -> (the term, None, None)."""
    depth = 0
    for i, ch in enumerate(piece):
        depth += (ch == "(") - (ch == ")")
        if ch == "*" and depth == 0:
            pred = piece[i + 1:]
            return piece[:i].strip(), pred, pos + i + 1 + (len(pred) - len(pred.lstrip()))
    return piece.strip(), None, None


def _coef_and_predictor(piece: str, pos: int, equation: str):
    """'b1*(SES)' -> ('b1', '(SES)', offset of the predictor); 'g00' -> ('g00', None, None)."""
    coef, pred, ppos = split_star(piece, pos)
    if pred is None:
        m = re.match(r"^([A-Za-z]+[0-9,_]*j?)\s*(\(.*)$", piece)  # b1(SES) without '*'
        if m and (_BETA.match(m.group(1)) or _GAMMA.match(m.group(1))):
            return m.group(1), m.group(2), pos + m.start(2)
    return coef, pred, ppos


def parse_level1(equation: str, variables: Variables, with_intercept: bool = False):
    """'Y = b0 + b1*X + r' -> outcome and [(1, Term X)] (and whether b0 is there, if asked);
    without b0 the model has no level-1 intercept."""
    text = normalise(equation)
    check_shape(text)
    if text.count("=") != 1:
        at = text.find("=", text.find("=") + 1) if text.count("=") > 1 else len(text)
        raise EquationSyntaxError(text, at, "a level-1 equation needs exactly one '='", "write OUTCOME = b0 + b1*X + r")
    lhs, rhs = text.split("=")
    outcome_raw = unwrap(lhs)
    if not re.fullmatch(_NAME, outcome_raw):
        raise EquationSyntaxError(text, 0, f"'{lhs.strip()}' is not a variable name", "write OUTCOME = b0 + ... + r")
    if _BETA.match(outcome_raw):
        raise ModelError(f"in '{equation.strip()}': this is a level-2 equation (it defines {outcome_raw}); pass it with -2/--level2")
    outcome = _resolve(outcome_raw, 1, variables, text, 0, "the outcome")
    base = len(lhs) + 1
    terms: list[tuple[int, Term]] = []
    seen_intercept = seen_r = False
    for piece, pos in right_side_terms(text, rhs, base):
        if seen_r:
            raise EquationSyntaxError(text, pos, "a term after the level-1 residual r", "put r last")
        coef, pred, ppos = _coef_and_predictor(piece, pos, text)
        if _R.match(coef) and pred is None:
            seen_r = True
            continue
        m = _BETA.match(coef)
        if not m:
            if "-" in piece and "(" not in piece:
                raise EquationSyntaxError(text, pos + piece.find("-"), "'-' between terms", "terms are joined by '+'")
            raise EquationSyntaxError(text, pos, f"expected a coefficient like b1 or β1, found '{coef}'", "write b1*NAME")
        q = parse_index(m.group(1), "b", text)
        if q == 0:
            if seen_intercept:
                raise ModelError(f"in '{equation.strip()}': b0 appears twice; write the intercept once")
            if pred is not None:
                raise EquationSyntaxError(text, pos, "the intercept b0 takes no predictor", "write b0 alone")
            seen_intercept = True
            continue
        if pred is None:
            raise EquationSyntaxError(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        terms.append((q, _parse_predictor(pred, 1, variables, text, ppos)))
    if not seen_intercept and not terms:
        raise EquationSyntaxError(text, base, "the level-1 equation has no terms", "write OUTCOME = b0 + b1*X + r")
    indices = [q for q, _ in terms]
    expected = list(range(1, len(terms) + 1))
    if sorted(indices) != expected:
        dup = sorted({q for q in indices if indices.count(q) > 1})
        if dup:
            raise ModelError(f"in '{equation.strip()}': b{dup[0]} appears twice; number the coefficients b1, b2, ... once each")
        raise ModelError(f"in '{equation.strip()}': coefficients are numbered {', '.join(f'b{q}' for q in indices)}; "
                         f"number them b1..b{len(terms)} without gaps")
    keys = [(t.name, t.centering) for _, t in terms]
    for key in keys:
        if keys.count(key) > 1:
            raise ModelError(f"in '{equation.strip()}': {key[0]} appears twice at level 1 with the same centering; use it once")
    ordered = sorted(terms, key=lambda x: x[0])
    return (outcome, ordered, seen_intercept) if with_intercept else (outcome, ordered)


def parse_level2(equation: str, variables: Variables, n_coefficients: int) -> tuple[int, Level2Equation]:
    """'b1 = g10 + g11*SECTOR + u1' -> (1, Level2Equation)."""
    text = normalise(equation)
    check_shape(text)
    if text.count("=") != 1:
        raise EquationSyntaxError(text, len(text), "a level-2 equation needs exactly one '='", "write b0 = g00 + g01*W + u0")
    lhs, rhs = text.split("=")
    m = _BETA.match(unwrap(lhs))
    if not m:
        raise EquationSyntaxError(text, 0, f"a level-2 equation must define a coefficient like b0, not '{lhs.strip()}'",
                                  "write b0 = g00 + ... (a level-1 equation goes with -1/--level1)")
    q = parse_index(m.group(1), "b", text)
    if q >= n_coefficients:
        raise ModelError(f"in '{equation.strip()}': b{q} has no term in the level-1 equation "
                         f"(it has b0..b{n_coefficients - 1}); add b{q}*NAME there or renumber")
    base = len(lhs) + 1
    predictors: list[Term] = []
    random = False
    s_expected = 0
    for piece, pos in right_side_terms(text, rhs, base):
        coef, pred, ppos = _coef_and_predictor(piece, pos, text)
        mu = _U.match(coef)
        if mu and pred is None:
            if parse_index(mu.group(1), "u", text) != q:
                raise ModelError(f"in '{equation.strip()}': the random effect of b{q} is u{q}, not {coef}")
            if random:
                raise ModelError(f"in '{equation.strip()}': u{q} appears twice; write the random effect once")
            random = True
            continue
        mg = _GAMMA.match(coef)
        if not mg:
            raise EquationSyntaxError(text, pos, f"expected a coefficient like g{q}0 or γ{q}0, found '{coef}'",
                                      f"write g{q}1*NAME")
        gq = parse_index(mg.group(1) or mg.group(3), "g", text)
        gs = parse_index(mg.group(2) or mg.group(4), "g", text)
        if gq != q:
            raise ModelError(f"in '{equation.strip()}': {coef} belongs to b{gq}, but this equation defines b{q}; "
                             f"write g{q}{gs}")
        if gs != s_expected:
            raise ModelError(f"in '{equation.strip()}': {coef} is out of order; number the terms g{q}0, g{q}1, ... in turn")
        s_expected += 1
        if gs == 0:
            if pred is not None:
                raise EquationSyntaxError(text, pos, f"{coef} is the intercept and takes no predictor", f"write g{q}0 alone")
            continue
        if pred is None:
            raise EquationSyntaxError(text, pos + len(piece), f"{coef} has no predictor", f"write {coef}*NAME")
        predictors.append(_parse_predictor(pred, 2, variables, text, ppos))
    if s_expected == 0 and not random:
        raise EquationSyntaxError(text, base, f"the equation for b{q} has neither a fixed intercept g{q}0 nor a random effect u{q}",
                                  f"write b{q} = g{q}0 + ... or b{q} = u{q}")
    keys = [(t.name, t.unit_mean) for t in predictors]
    for k in keys:
        if keys.count(k) > 1:
            raise ModelError(f"in '{equation.strip()}': {k[0]} appears twice; use it once")
    return q, Level2Equation(tuple(predictors), random, intercept=s_expected > 0)


def build_spec(level1: str, level2: list[str], variables: Variables, options: RunOptions | None = None) -> ModelSpec:
    outcome, terms, has_b0 = parse_level1(level1, variables, with_intercept=True)
    n = len(terms) + 1
    equations: dict[int, Level2Equation] = {}
    for eq in level2:
        q, parsed = parse_level2(eq, variables, n)
        if q in equations:
            raise ModelError(f"in '{eq.strip()}': b{q} already has a level-2 equation; give one equation per coefficient")
        if q == 0 and not has_b0:
            raise ModelError(f"in '{eq.strip()}': the level-1 equation has no intercept b0, so b0 has no equation; "
                             "add b0 to the level-1 equation or drop this one")
        equations[q] = parsed
    # HLM's defaults: a random intercept; other coefficients fixed with no level-2 predictors.
    # Without b0 at level 1 the intercept is absent: no fixed and no random part.
    absent = Level2Equation((), False, intercept=False)
    level2_eqs = tuple(equations.get(q, Level2Equation((), q == 0) if (q or has_b0) else absent) for q in range(n))
    if not any(eq.random for eq in level2_eqs):
        raise ModelError("no coefficient is random, so this is not a two-level model; add u0 to the intercept's equation")
    return ModelSpec(outcome, tuple(t for _, t in terms), level2_eqs, options or RunOptions())


# ---------------------------------------------------------------- model files

def is_hlm_command_file(path: str | Path, text: str) -> bool:
    if str(path).lower().endswith(".hlm"):
        return True
    return any(line.strip().lower().startswith(("level1:", "level2:")) for line in text.splitlines())


def read_model_file(path: str | Path) -> tuple[str, list[str]]:
    """A plain model file: equations one per line, '#' comments; the one not defining a β is level 1."""
    path = Path(path)
    text = read_text(path)
    level1, level2 = None, []
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        lhs = normalise(line).split("=", 1)[0]
        if _BETA.match(unwrap(lhs)):
            level2.append(line)
        elif level1 is None:
            level1 = line
        else:
            raise ModelError(f"{path}: line {line_no}: a second level-1 equation; keep one 'OUTCOME = ...' line")
    if level1 is None:
        raise ModelError(f"{path}: no level-1 equation found; add a line like 'MATHACH = b0 + r'")
    return level1, level2


def read_text(path: Path) -> str:
    from ..io.files import read_small_bytes

    if not path.exists() and not path.is_symlink():
        raise ModelError(f"{path}: no such model file; check the path")
    raw = read_small_bytes(path, "model file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


# HLM 7 command-file keys. Values that switch on something we do not implement are refused by name.
_GUI_KEYS = {
    "fixtau": "how often HLM 7's EM algorithm refreshes τ; hlmcli optimizes directly, so it has no effect",
    "accel": "HLM 7's EM acceleration; no effect, hlmcli optimizes directly",
    "output": "HLM 7's output file; hlmcli writes to stdout or -o",
    "graphgammas": "HLM 7's graphics window; no effect",
    "printvariance-covariance": "HLM 7 prints the γ covariance; hlmcli puts it in the JSON output",
}
_OFF_VALUES = {"level1weight": "none", "level2weight": "none", "varianceknown": "none", "constrain": "n",
               "heterol1var": "n", "lvr": "n", "fixsigma2": "n", "laplace": "n"}


_YES = ("y", "yes", "true", "1")
_NO = ("n", "no", "false", "0")
# Keys HLM 7 or its wrappers (e.g. Stata's hlm) write, refused by name because they change the model.
_REFUSED_KEYS = {
    "level3": "a level3: line makes this an HLM3 command file; give three data files or a three-level archive",
    "level3weight": "level-3 weights belong to three-level models; give three data files or a three-level archive",
    "level3deletion": "this is for three-level models; give three data files or a three-level archive",
    "resfil3": "a level-3 residual file belongs to three-level models; give three data files or a three-level archive",
    "fixtau3": "this is for three-level models; give three data files or a three-level archive",
    "agq": "adaptive quadrature is for nonlinear models, which hlmcli does not fit",
    "agqderivlevel": "adaptive quadrature is for nonlinear models, which hlmcli does not fit",
    "autoimpute": "HLM 7's multiple imputation is not implemented; impute the data first",
    "autoimputeit": "HLM 7's multiple imputation is not implemented; impute the data first",
    "lvr-beta": "latent variable regression is not implemented",
    "fishertype": "Fisher-scoring variants are for nonlinear models, which hlmcli does not fit",
    "restrict": "constrained γs are not implemented",
}


def _yes_no(value: str, where: str, key: str) -> bool:
    low = value.strip().lower()
    if low in _YES:
        return True
    if low in _NO:
        return False
    raise ModelError(f"{where}: {key}:{value} must be y or n")


def parse_hlm_file(path: str | Path, variables: Variables, allow_outside: bool = False) -> ModelSpec:
    """An HLM 7 command file (.hlm) to a ModelSpec, refusing keys we do not implement."""
    path = Path(path)
    text = read_text(path)
    opts: dict = {}
    level1_line = None
    level2_lines: list[tuple[str, int]] = []
    contrasts: dict[str, list[tuple[int, list[str]]]] = {}
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if ":" not in line:
            raise ModelError(f"{path}: line {line_no}: expected key:value, got '{line[:80]}'")
        key, value = (s.strip() for s in line.split(":", 1))
        key = key.lower()
        where = f"{path}: line {line_no}"
        if key == "level1":
            if level1_line is not None:
                raise ModelError(f"{where}: a second level1: line (the first is on line {level1_line[1]}); keep one")
            level1_line = (value, line_no)
        elif key == "level2":
            level2_lines.append((value, line_no))
        elif key == "nonlin":
            _hlm_nonlin(opts, value, where)
        elif key in ("macroit", "microit"):
            opts[key] = _int(value.split(",")[0], where, key)
        elif key in ("stopmacro", "stopmicro"):
            opts[key] = _float(value, where, key)
        elif key == "fixsigma2":
            opts["fixsigma2"] = value
        elif key in ("laplace", "laplace6", "emlaplace5"):
            if value.lower().startswith("y"):
                opts["estimation"] = "laplace"
        elif key == "mlf":
            opts["method"] = "ML" if _yes_no(value, where, key) else "REML"
        elif key == "numit":
            opts["max_iterations"] = _int(value, where, key, 1, 1_000_000)
        elif key == "stopval":
            opts["stopval"] = _float(value, where, key, positive=True)
        elif key == "title":
            opts["title"] = None if value.lower() in ("", "no title") else value
        elif key == "hypoth":
            opts["hypoth"] = _yes_no(value, where, key)
        elif re.fullmatch(r"gamma\d{1,4}", key):
            contrasts.setdefault(key[5:], []).append((line_no, [v for v in value.split(",") if v.strip()]))
        elif key == "deviance":
            opts["prior_deviance"] = _float(value, where, key)
        elif key == "df":
            opts["prior_params"] = _int(value, where, key, 1, 1_000_000)
        elif key in ("resfil1", "resfil2"):
            opts[key] = _yes_no(value, where, key)
        elif key in ("resfil1name", "resfil2name", "resfiltype"):
            opts[key] = value
        elif key == "homvar":
            opts["homogeneity"] = _yes_no(value, where, key)
        elif key == "fulloutput":
            opts["full_output"] = _yes_no(value, where, key)
        elif key == "lev1ols":
            opts["ols_units"] = _int(value, where, key, 0, 1_000_000)
        elif key in ("level1deletion", "level2deletion"):
            # Stata's hlm wrapper writes level1deletion:none; hlmcli drops records with missing values
            # when the archive is built (--missing now) or per model (--missing analysis).
            if value.lower() not in ("none", "n", "no", ""):
                raise ModelError(f"{where}: '{key}:{value}' is not supported; missing values are handled by "
                                 "mdm build --missing now|analysis, so remove the line or set it to none")
        elif key in _GUI_KEYS:
            continue
        elif key in ("level1weight", "level2weight") and value.lower() not in ("none", "n", "no", "0", ""):
            opts["weight" + key[5]] = value.split(",")[0].strip()  # the variable name
        elif key in _OFF_VALUES:
            off = _OFF_VALUES[key]
            if value.lower() not in (off, off[:1], "no", "none", "n", "0"):
                raise ModelError(f"{where}: '{key}:{value}' is not supported by hlmcli; remove the line or set it to {off}")
        elif key in _REFUSED_KEYS:
            raise ModelError(f"{where}: '{key}' is not supported: {_REFUSED_KEYS[key]}; remove the line")
        else:
            raise ModelError(f"{where}: the key '{key[:40]}' is not supported by hlmcli; remove the line")
    if level1_line is None:
        raise ModelError(f"{path}: no level1: line; add one like level1:MATHACH=INTRCPT1+SES,1+RANDOM")
    level1_eq = _hlm_level1(path, *level1_line)
    coef_names = [n for n in level1_eq[1]]
    level2_eqs = [_hlm_level2(path, v, n, coef_names) for v, n in level2_lines]
    ext = {"spss": ".sav", "stata": ".dta"}.get(str(opts.get("resfiltype", "")).lower(), ".csv")
    from ..io.files import output_from_file

    for level in ("1", "2"):  # names in the file are relative to the file's folder and stay inside it
        if opts.get(f"resfil{level}"):
            name = opts.get(f"resfil{level}name") or f"resfil{level}{ext}"
            opts[f"resfil{level}name"] = str(output_from_file(path, name, f"resfil{level}name", allow_outside))
    spec_options = RunOptions(
        method=opts.get("method", "REML"), max_iterations=opts.get("max_iterations", 100),
        stopval=opts.get("stopval"), title=opts.get("title"),
        prior_deviance=opts.get("prior_deviance"), prior_params=opts.get("prior_params"),
        residuals_l1=(opts.get("resfil1name") or f"resfil1{ext}") if opts.get("resfil1") else None,
        residuals_l2=(opts.get("resfil2name") or f"resfil2{ext}") if opts.get("resfil2") else None,
        homogeneity=opts.get("homogeneity", False), full_output=opts.get("full_output", False),
        ols_units=opts.get("ols_units", 10), weight1=opts.get("weight1"), weight2=opts.get("weight2"),
    )
    spec_options = _hlm_hglm_options(spec_options, opts, path)
    spec = build_spec(level1_eq[0], level2_eqs, variables, spec_options)
    if contrasts and opts.get("hypoth", True):
        tests = tuple(contrasts_from_rows(spec, f"{path}", label, rows) for label, rows in sorted(contrasts.items(), key=lambda kv: int(kv[0])))
        spec = ModelSpec(spec.outcome, spec.level1, spec.level2, _replace(spec.options, hypotheses=tests))
    return spec


def _hlm_nonlin(opts: dict, value: str, where: str) -> None:
    """nonlin:n | binomial (Bernoulli) | binomial,TRIALS | poisson | poisson,EXPOSURE (as HLM 7 writes them)."""
    parts = [v.strip() for v in value.split(",")]
    kind = parts[0].lower()
    if kind in ("n", "no", "none", "linear"):
        return
    if kind in ("bernoulli",) or (kind == "binomial" and len(parts) == 1):
        opts["family"] = "bernoulli"
    elif kind == "binomial":
        opts["family"], opts["trials"] = "binomial", parts[1]
    elif kind == "poisson":
        opts["family"] = "poisson"
        if len(parts) > 1 and parts[1]:
            opts["exposure"] = parts[1]
    elif kind == "ordinal":
        try:
            ncat = int(parts[1])
            if not 3 <= ncat <= 9:
                raise ValueError
        except (IndexError, ValueError):
            raise ModelError(f"{where}: nonlin:{value}: an ordinal outcome is written nonlin:ordinal,NCAT with NCAT "
                             "the number of categories, 3 to 9 (as HLM 7)") from None
        opts["family"], opts["ncat"] = "ordinal", ncat
    elif kind == "multinomial":
        raise ModelError(f"{where}: nonlin:{value} (multinomial outcomes) is not supported yet; hlmcli fits "
                         "Bernoulli, binomial, Poisson and ordinal outcomes")
    else:
        raise ModelError(f"{where}: nonlin:{value} is not a level-1 distribution HLM 7 knows "
                         "(n, binomial[,TRIALS], poisson[,EXPOSURE])")


def _hlm_hglm_options(options: RunOptions, opts: dict, path) -> RunOptions:
    """The HGLM settings of a command file. As HLM 7 writes them, fixsigma2:1 marks a nonlinear model
    without over-dispersion, and its absence means over-dispersion."""
    fam = opts.get("family")
    if fam is None:
        fs = str(opts.get("fixsigma2", "n")).lower()
        if fs not in ("n", "no", "none", "0"):
            raise ModelError(f"{path}: 'fixsigma2:{opts['fixsigma2']}' is for nonlinear models; remove the line")
        for k in ("macroit", "microit", "stopmacro", "stopmicro", "estimation"):
            if k in opts:
                raise ModelError(f"{path}: '{k}' is for nonlinear models (nonlin:binomial or nonlin:poisson); "
                                 "remove the line or set nonlin:")
        return options
    fixed = opts.get("fixsigma2")
    over = fixed is None and fam not in ("bernoulli", "ordinal")  # an ordinal outcome has no level-1 scale
    if fixed is not None:
        try:
            if abs(float(fixed) - 1.0) > 1e-12:
                raise ValueError
        except ValueError:
            raise ModelError(f"{path}: fixsigma2:{fixed}: a nonlinear model fixes σ² at 1 or estimates it "
                             "(leave the line out for over-dispersion)") from None
    changes = {k: opts[k] for k in ("trials", "exposure", "macroit", "microit", "stopmacro", "stopmicro", "estimation",
                                    "ncat") if k in opts}
    return _replace(options, family=fam, overdispersion=over, **changes)


def _replace(options: RunOptions, **changes) -> RunOptions:
    from dataclasses import replace

    return replace(options, **changes)


def _int(value: str, where: str, key: str, low: int | None = None, high: int | None = None) -> int:
    try:
        number = int(value) if len(value) <= 20 else None
    except ValueError:
        number = None
    if number is None:
        raise ModelError(f"{where}: {key} must be a whole number, not '{value[:40]}'")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ModelError(f"{where}: {key}:{number} is out of range; give a whole number from {low} to {high}")
    return number


def _float(value: str, where: str, key: str, positive: bool = False) -> float:
    import math

    try:
        number = float(value) if len(value) <= 60 else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number):
        raise ModelError(f"{where}: {key} must be a finite number, not '{value[:40]}'")
    if positive and number <= 0:
        raise ModelError(f"{where}: {key} must be greater than zero, not {value}")
    return number


def _hlm_term(token: str, where: str) -> str:
    name, _, suffix = token.strip().partition(",")
    suffix = suffix.strip()
    if suffix == "1":
        return f"group({name.strip()})"
    if suffix == "2":
        return f"grand({name.strip()})"
    if suffix:
        raise ModelError(f"{where}: centering code ',{suffix}' on {name} is not known; use ,1 (group mean) or ,2 (grand mean)")
    return name.strip()


def _hlm_level1(path: Path, value: str, line_no: int) -> tuple[str, list[str]]:
    where = f"{path}: line {line_no}"
    if "=" not in value:
        raise ModelError(f"{where}: level1 needs OUTCOME=INTRCPT1+...+RANDOM")
    outcome, rhs = value.split("=", 1)
    tokens = [t.strip() for t in rhs.split("+") if t.strip()]
    names = []
    # without INTRCPT1 the model has no level-1 intercept (HLM 7 lets the user remove it)
    intercept = any(t.upper() == "INTRCPT1" for t in tokens)
    parts = ["b0"] if intercept else []
    for tok in tokens:
        if tok.upper() in ("INTRCPT1", "RANDOM"):
            continue
        names.append(tok.split(",")[0].strip())
        parts.append(f"b{len(names)}*{_hlm_term(tok, where)}")
    return f"{outcome.strip()} = " + " + ".join(parts + ["r"]), ["INTRCPT1"] + names


def _hlm_level2(path: Path, value: str, line_no: int, coef_names: list[str]) -> str:
    where = f"{path}: line {line_no}"
    if "=" not in value:
        raise ModelError(f"{where}: level2 needs COEFFICIENT=INTRCPT2+...+random/ or .../")
    coef, rhs = value.split("=", 1)
    coef = coef.strip()
    upper = [c.upper() for c in coef_names]
    if coef.upper() not in upper:
        raise ModelError(f"{where}: level2 line for '{coef}', which is not a level-1 coefficient ({', '.join(coef_names)})")
    q = upper.index(coef.upper())
    rhs = rhs.strip()
    if rhs.endswith("/"):
        rhs = rhs[:-1]
    tokens = [t.strip() for t in rhs.split("+") if t.strip()]
    random = any(t.lower() == "random" for t in tokens)
    intercept = any(t.upper() == "INTRCPT2" for t in tokens)
    if not intercept:  # HLM 7's 'random/' with no INTRCPT2: a random effect with no fixed part
        if len(tokens) != int(random) or not random:
            raise ModelError(f"{where}: without INTRCPT2 a level-2 line can only be '{coef}=random/' "
                             "(a random effect with no fixed part); add INTRCPT2")
        return f"b{q} = u{q}"
    parts = [f"b{q} = g{q}0"]
    s = 0
    for tok in tokens:
        if tok.upper() in ("INTRCPT2", "RANDOM"):
            continue
        s += 1
        name, _, suffix = tok.partition(",")
        if suffix.strip() not in ("", "2"):
            raise ModelError(f"{where}: centering code ',{suffix.strip()}' on {name} is not known at level 2; use ,2 (grand mean)")
        term = f"grand({name.strip()})" if suffix.strip() == "2" else name.strip()
        parts.append(f"g{q},{s}*{term}")
    if random:
        parts.append(f"u{q}")
    return " + ".join(parts)


def spec_from_inputs(level1: str | None, level2: list[str], model_file: str | None, variables: Variables,
                     options: RunOptions, allow_outside: bool = False) -> ModelSpec:
    """One ModelSpec from whichever form the user gave. Command-line options win over file settings."""
    if model_file and level1:
        raise ModelError(f"{model_file}: give the model either with --model or with -1/-2, not both")
    if model_file:
        text = read_text(Path(model_file))
        if is_hlm_command_file(model_file, text):
            if level2:
                raise ModelError(f"{model_file}: an HLM 7 command file holds the whole model, so -2 equations "
                                 "cannot be added to it; edit its level2: lines or drop --model")
            return parse_hlm_file(model_file, variables, allow_outside)
        level1, level2_file = read_model_file(model_file)
        level2 = level2_file + list(level2)
    if not level1:
        raise ModelError("no model given; pass -1 'OUTCOME = b0 + ... + r' (and -2 equations), or --model FILE")
    return build_spec(level1, list(level2), variables, options)
