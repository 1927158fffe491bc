"""HLM 7's HCM2 equations (Raudenbush & Bryk 2002, ch. 12): a cross-classified model written level by
level, read into the lme4 formula the cross-classified path fits (formula.crossed), so there is one
model and one fitting path whichever way it was written.

Records i sit in cell (j, k) of row unit j and column unit k. The level-1 ("within-cell") model

    Y_ijk = π0jk + π1jk*a1_ijk + ... + e_ijk

and for each π_p a level-2 ("between-cell") model

    π_pjk = θ_p + Σ_q (γ_pq + c_pqk) X_qj + Σ_h (β_ph + b_phj) W_hk + b_p0j + c_p0k

with X_qj the row units' predictors (their slopes γ_pq may vary over columns: c_pqk), W_hk the column
units' (their slopes β_ph may vary over rows: b_phj), b_p0j the row's and c_p0k the column's random
effect. Typed in ASCII (Greek letters are read too; subscripts j, k and ijk may be left off):

    -1 'ATTAIN = p0 + p1*(VERBAL) + e'
    -2 'p0 = theta0 + gamma01*(PSIZE) + beta01*(SSIZE) + b00 + c00'
    -2 'p1 = theta1 + b10'

`beta` (β, fixed) and `b` (random, row) are different words. A coefficient without an equation is
its θ alone. In lme4's terms (a_0 = 1): θ_p is a_p, γ_pq is a_p:X_q, β_ph is a_p:W_h; the row factor's
random term holds a_p for each b_p0 and a_p:W_h for each b_ph, the column factor's a_p for each c_p0 and
a_p:X_q for each c_pq. E.g. the model above is

    ATTAIN ~ 1 + VERBAL + PSIZE + SSIZE + (1 + VERBAL | ROW) + (1 | COL)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ModelError

_GREEK = {"π": "p", "Π": "p", "θ": "theta", "Θ": "theta", "γ": "gamma", "Γ": "gamma", "β": "beta", "ε": "e",
          "−": "-", "×": "*", "·": "*", "⋅": "*", "＝": "="}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_PI = re.compile(r"^(?:pi|p)(\d+)(?:jk)?$", re.I)
_TERM = re.compile(r"^(theta|gamma|g|beta|b|c)(\d+)([jk]?)$", re.I)


@dataclass(frozen=True)
class HCM2Term:
    """One term of a level-2 equation: kind theta, gamma (row predictor), beta (column predictor),
    b (random over rows) or c (random over columns); its subscripts (p, q) and its predictor."""
    kind: str
    p: int
    q: int
    predictor: str | None = None


@dataclass(frozen=True)
class HCM2Model:
    """HCM2's equations as read: the outcome, each π_p's level-1 variable (None: the intercept), the
    level-2 terms, the row and column factors; `formula` is the same model as an lme4 formula, and
    `labels` HCM2's name of each fixed effect keyed by its lme4 term."""
    outcome: str
    level1: tuple[str | None, ...]
    terms: tuple[HCM2Term, ...]
    row: str
    col: str

    def _predictor(self, kind: str, p: int, q: int) -> str | None:
        for t in self.terms:
            if t.kind == kind and t.p == p and t.q == q:
                return t.predictor
        return None

    def fixed_terms(self) -> list[tuple[tuple[str, ...], str]]:
        """(lme4 term, HCM2 label) of each fixed effect, in the equations' order."""
        out = []
        for t in self.terms:
            if t.kind not in ("theta", "gamma", "beta"):
                continue
            a = self.level1[t.p]
            names = tuple(x for x in (a, t.predictor) if x)
            label = f"THETA{t.p}" if t.kind == "theta" else f"{t.kind.upper()}{t.p}{t.q}"
            out.append((names or ("1",), label))
        return out

    def random_terms(self, kind: str) -> list[tuple[str, ...]]:
        """The random columns of the row (kind 'b') or column ('c') factor, as lme4 terms."""
        out = []
        for t in self.terms:
            if t.kind != kind:
                continue
            a = self.level1[t.p]
            slope_of = self._predictor("beta" if kind == "b" else "gamma", t.p, t.q) if t.q else None
            out.append(tuple(x for x in (a, slope_of) if x) or ("1",))
        return out

    def random_labels(self, kind: str) -> dict[frozenset, str]:
        """HCM2's name (b00, b01, c10, ...) of each random effect of the row (kind 'b') or column ('c') factor,
        keyed by its lme4 term as random_terms gives it: b_pq is π_p's random row effect on a_p:W_q."""
        out = {}
        for t, term in zip((t for t in self.terms if t.kind == kind), self.random_terms(kind)):
            out[frozenset() if term == ("1",) else frozenset(term)] = f"{kind}{t.p}{t.q}"
        return out

    @property
    def formula(self) -> str:
        def side(terms):
            body = [":".join(t) for t in terms if t != ("1",)]
            return " + ".join((["1"] if ("1",) in terms else ["0"]) + body)

        fixed = [t for t, _ in self.fixed_terms()]
        return (f"{self.outcome} ~ {side(fixed)} + ({side(self.random_terms('b'))} | {self.row}) + "
                f"({side(self.random_terms('c'))} | {self.col})")

    def labels(self) -> dict[frozenset, str]:
        return {frozenset(t) if t != ("1",) else frozenset(): label for t, label in self.fixed_terms()}

    def lines(self) -> list[str]:
        """The model in HCM2's notation, as the text output's header prints it."""
        pis = [f"P{p}" + ("" if a is None else f"*({a})") for p, a in enumerate(self.level1)]
        out = ["Level-1 Model", "", f"    {self.outcome} = " + " + ".join(pis) + " + e", "", "Level-2 Model", ""]
        for p in range(len(self.level1)):
            pieces = []
            for t in self.terms:
                if t.p != p:
                    continue
                if t.kind == "theta":
                    pieces.append(f"THETA{p}")
                elif t.kind in ("gamma", "beta"):
                    pieces.append(f"{t.kind.upper()}{p}{t.q}*({t.predictor})")
                else:
                    slope = self._predictor("beta" if t.kind == "b" else "gamma", p, t.q) if t.q else None
                    pieces.append(f"{t.kind}{p}{t.q}" + ("" if slope is None else f"*({slope})"))
            out.append(f"    P{p} = " + (" + ".join(pieces) or "0"))
        out += ["", f"  (row factor {self.row}: b random effects, and GAMMA the effects of its predictors;",
                f"   column factor {self.col}: c random effects, and BETA the effects of its predictors)"]
        return out


def _normalise(text: str) -> str:
    for a, b in _GREEK.items():
        text = text.replace(a, b)
    return text


def _pieces(rhs: str, where: str) -> list[str]:
    if "-" in rhs:
        raise ModelError(f"{where}: HCM2 equations add their terms; '-' is not read")
    pieces = [s.strip() for s in rhs.split("+")]
    if any(not s for s in pieces):
        raise ModelError(f"{where}: an empty term between '+' signs")
    return pieces


def _variable(text: str, where: str) -> str:
    v = text.strip()
    while v.startswith("(") and v.endswith(")"):
        v = v[1:-1].strip()
    v = re.sub(r"_(?:ijk|jk|j|k)$", "", v)
    if not _NAME.match(v):
        raise ModelError(f"{where}: '{text.strip()}' is not a variable name; centre or transform it in the data file")
    return v


def _level1(text: str) -> tuple[str, tuple[str | None, ...]]:
    where = f"level-1 equation '{text}'"
    if text.count("=") != 1:
        raise ModelError(f"{where}: write it as 'Y = p0 + p1*(X) + e'")
    lhs, rhs = (s.strip() for s in _normalise(text).split("="))
    outcome = _variable(lhs, where)
    coefs: dict[int, str | None] = {}
    residual = False
    for piece in _pieces(rhs, where):
        if piece.lower() in ("e", "e_ijk", "r", "eijk"):
            residual = True
            continue
        name, _, var = piece.partition("*")
        m = _PI.match(name.strip())
        if not m:
            raise ModelError(f"{where}: cannot read '{piece}'; the level-1 coefficients are p0, p1*(X), ... (π0, π1)")
        p = int(m.group(1))
        if p in coefs:
            raise ModelError(f"{where}: p{p} appears twice")
        if (p == 0) != (not var):
            raise ModelError(f"{where}: '{piece}': p0 is the intercept (no variable), p1, p2, ... multiply a variable")
        coefs[p] = _variable(var, where) if var else None
    if not residual:
        raise ModelError(f"{where}: end it with '+ e', the level-1 residual")
    if 0 not in coefs:
        raise ModelError(f"{where}: the level-1 model starts with p0, the intercept (HCM2's π0)")
    if sorted(coefs) != list(range(len(coefs))):
        raise ModelError(f"{where}: number the coefficients p0, p1, p2, ... in order")
    return outcome, tuple(coefs[p] for p in range(len(coefs)))


def _level2(text: str, P: int, level1) -> tuple[int, list[HCM2Term]]:
    where = f"level-2 equation '{text}'"
    if text.count("=") != 1:
        raise ModelError(f"{where}: write it as 'p0 = theta0 + gamma01*(X) + beta01*(W) + b00 + c00'")
    lhs, rhs = (s.strip() for s in _normalise(text).split("="))
    m = _PI.match(lhs)
    if not m:
        raise ModelError(f"{where}: the left side is a level-1 coefficient, p0, p1, ...")
    p = int(m.group(1))
    if p >= P:
        raise ModelError(f"{where}: the level-1 equation has no p{p}")
    terms: list[HCM2Term] = []
    for piece in _pieces(rhs, where):
        name, star, var = piece.partition("*")
        t = _TERM.match(name.strip())
        if not t:
            raise ModelError(f"{where}: cannot read '{piece}'; the terms are theta{p}, gamma{p}1*(X) (a row predictor), "
                             f"beta{p}1*(W) (a column predictor), b{p}0 and c{p}0 (random row and column effects)")
        kind = {"g": "gamma"}.get(t.group(1).lower(), t.group(1).lower())
        digits = t.group(2)
        if kind == "theta":
            if digits != str(p) or star:
                raise ModelError(f"{where}: '{piece}': the fixed intercept of p{p} is theta{p}")
            terms.append(HCM2Term("theta", p, 0))
            continue
        if len(digits) < 2 or int(digits[0]) != p:
            raise ModelError(f"{where}: '{piece}': the subscripts of p{p}'s terms start with {p}, e.g. {kind}{p}1")
        q = int(digits[1:])
        if kind in ("gamma", "beta"):
            if not star or q == 0:
                raise ModelError(f"{where}: '{piece}': {kind}{p}1, {kind}{p}2, ... multiply a "
                                 f"{'row' if kind == 'gamma' else 'column'} predictor, e.g. {kind}{p}1*(X)")
            terms.append(HCM2Term(kind, p, q, _variable(var, where)))
        else:
            if star:
                raise ModelError(f"{where}: '{piece}': a random effect is written alone ({kind}{p}{q}); its predictor is "
                                 f"the one of {'beta' if kind == 'b' else 'gamma'}{p}{q}")
            terms.append(HCM2Term(kind, p, q))
    seen = set()
    for t in terms:
        key = (t.kind, t.q)
        if key in seen:
            raise ModelError(f"{where}: {t.kind}{p}{t.q if t.kind != 'theta' else ''} appears twice")
        seen.add(key)
    for t in terms:
        if t.kind in ("b", "c") and t.q:
            partner = "beta" if t.kind == "b" else "gamma"
            if (partner, t.q) not in seen:
                raise ModelError(f"{where}: {t.kind}{p}{t.q} is the random part of {partner}{p}{t.q}'s slope; add "
                                 f"{partner}{p}{t.q}*(...) to the equation")
    for kind in ("gamma", "beta"):
        qs = sorted(t.q for t in terms if t.kind == kind)
        if qs != list(range(1, len(qs) + 1)):
            raise ModelError(f"{where}: number the {kind} terms {kind}{p}1, {kind}{p}2, ... in order")
    return p, terms


def read_hcm2(level1: str, level2: list[str] | tuple[str, ...], row: str, col: str) -> HCM2Model:
    """HCM2's equations (`row`, `col`: the id columns of the row and column factors) as one model."""
    outcome, pis = _level1(level1)
    by_p: dict[int, list[HCM2Term]] = {}
    for text in level2:
        p, terms = _level2(text, len(pis), pis)
        if p in by_p:
            raise ModelError(f"level-2 equations: p{p} has two equations; write one")
        by_p[p] = terms
    terms: list[HCM2Term] = []
    for p in range(len(pis)):
        terms += by_p.get(p, [HCM2Term("theta", p, 0)])
    model = HCM2Model(outcome, pis, tuple(terms), row, col)
    for kind, what, fac in (("b", "row", row), ("c", "column", col)):
        if not model.random_terms(kind):
            raise ModelError(f"HCM2 equations: no random effect of the {what} factor {fac} ({kind}00, {kind}10, ...); a "
                             f"cross-classified model has random effects of both factors (with one factor it is a "
                             f"two-level model: fit it with -2's u terms)")
    return model
