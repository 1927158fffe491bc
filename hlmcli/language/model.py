"""The model as values, for any number of levels K: one `ModelSpec` holding its predictors (`Term`),
the tree of its equations (`Equation`), the settings that travel with it (`RunOptions`) and the
contrasts a command file carries (`Hypothesis`). The parser (equations_levels.py) and the command-file readers build them; the
stages below read them and never the text they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Centering(str, Enum):
    NONE = "none"
    GROUP = "group"  # level 1: the level-2 unit's mean; level 2: the level-3 unit's mean over its level-2 units
    GRAND = "grand"

    def __str__(self) -> str:  # printed as its value ("group"), as the two-level outputs always wrote it
        return self.value


@dataclass(frozen=True)
class Term:
    """A predictor in an equation at `level` of a model of any number of levels: a variable of that
    level, or mean(X), the unit's mean of a lower-level X."""

    name: str
    level: int  # the equation's level (1..K)
    centering: Centering = Centering.NONE  # a str enum: compares equal to "none", "group", "grand"
    mean_of: int | None = None  # mean(X): the level of X (lower than `level`)

    @property
    def label(self) -> str:
        return f"mean({self.name})" if self.mean_of else self.name

    @property
    def unit_mean(self) -> bool:
        """A two-level model's level-2 mean(X): the unit mean of level-1 X over the unit's records."""
        return self.mean_of is not None


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
class Fixed:
    """One fixed effect: its subscripts and the names along its path (coefficient, predictors)."""
    idx: tuple
    names: tuple  # INTRCPT1 or the level-1 variable, then INTRCPT2 or the level-2 predictor, ...


@dataclass(frozen=True)
class Hypothesis:
    """Rows of a contrast matrix C (one per restriction) over the model's γs, tested as Cγ = 0."""

    label: str
    rows: tuple[tuple[float, ...], ...]
    rhs: tuple[float, ...] = ()  # Cγ = rhs; empty means all zero


def default_method(n_levels: int) -> str:
    """HLM2 estimates by REML unless asked for ML; HLM3 and HLM4 by full ML (REML with --reml)."""
    return "REML" if n_levels == 2 else "ML"


def default_max_iterations(n_levels: int) -> int:
    """HLM2's default number of iterations, 100; three and four levels allow 1000."""
    return 100 if n_levels == 2 else 1000


@dataclass(frozen=True)
class RunOptions:
    """Settings that travel with a model of any number of levels: from the command line or an HLM 7
    command file. `method` and `max_iterations` left None take the defaults of the model's number of
    levels (default_method, default_max_iterations) when the spec is made."""

    method: str | None = None  # REML | ML
    max_iterations: int | None = None
    stopval: float | None = None
    title: str | None = None
    hypotheses: tuple[Hypothesis, ...] = ()
    prior_deviance: float | None = None
    prior_params: int | None = None
    residuals_l1: str | None = None
    residuals_l2: str | None = None
    residuals: tuple = ()  # three and more levels, per level 2..K: a path or None (an HLM3 file's resfil2:/resfil3:)
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

    def for_levels(self, n_levels: int) -> "RunOptions":
        """These options with the defaults of a model of `n_levels` levels filled in: the one place
        where the number of levels decides them."""
        from dataclasses import replace

        if self.method is not None and self.max_iterations is not None:
            return self
        return replace(self, method=self.method or default_method(n_levels),
                       max_iterations=default_max_iterations(n_levels) if self.max_iterations is None
                       else self.max_iterations)


@dataclass(frozen=True)
class Level2Equation:
    """A two-level model's level-2 equation of βq, as ModelSpec.level2 shows it (a view of the tree)."""

    predictors: tuple[Term, ...] = ()
    random: bool = False
    intercept: bool = True  # the fixed intercept γq0; False for 'b1 = u1' (HLM 7's random/ with no INTRCPT2)

    @property
    def present(self) -> bool:
        """False for the level-1 intercept of a model written without b0."""
        return self.intercept or self.random or bool(self.predictors)


_ABSENT = Level2Equation((), False, intercept=False)  # β0 of a model written without b0


@dataclass(frozen=True)
class ModelSpec:
    """A model of K >= 2 levels: the level-1 predictors a_1..a_P and, for each level-1 coefficient π_p
    (β_q at two levels), its level-2 Equation, whose `terms` hold the equations one level up, and so
    on to level K. The family, the method and the τ structure are values of the options."""

    outcome: str
    n_levels: int
    level1: tuple  # a_1..a_P (Term)
    intercept: bool  # the level-1 intercept π0 (β0) is in the model
    equations: tuple  # index p = 0..P: the level-2 Equation of π_p, None when π_p is absent
    options: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self):  # the defaults of K levels: REML and 100 iterations at two, ML and 1000 above
        object.__setattr__(self, "options", self.options.for_levels(self.n_levels))

    @property
    def method(self) -> str:
        return self.options.method

    # The model's kind as values (spec.py): what the engines, the capabilities table and the report
    # branch on, rather than on which command or file the model came from.
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
    def level2(self) -> tuple[Level2Equation, ...]:
        """A two-level model's level-2 equations, one per β0..βQ: a view computed from `equations`
        (not stored), for the two-level design and report."""
        if self.n_levels != 2:
            raise AttributeError(f"level2 is the view of a two-level model; this model has {self.n_levels} levels")
        return tuple(_ABSENT if eq is None else Level2Equation(eq.predictors, eq.random, eq.intercept)
                     for eq in self.equations)

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
        """The fixed effects in the engine's order (depth-first): γqs at two levels, γpqs at three,
        δpqst at four."""
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

    def predictors(self, level: int) -> list[Term]:
        """The predictors of the level-`level` equations in model order (depth-first), repeats kept."""
        if level == 1:
            return list(self.level1)
        return [t for depth, _, eq, _ in self.walk() if depth == level - 1 for t in eq.predictors]

    def fixed_predictor(self, idx: tuple) -> Term | None:
        """The predictor of the fixed effect with subscripts `idx` (γqs: (q, s)); None for an intercept."""
        return self.equation(idx[:-1]).predictors[idx[-1] - 1] if idx[-1] else None


def fixed_effect_labels(spec: ModelSpec) -> list[tuple[int, ...]]:
    """The subscripts of every fixed effect in the engine's order, for any number of levels: (q, s) of a
    two-level model's γqs, (p, q, s) of a three-level model's γpqs, (p, q, s, t) of a four-level
    model's δpqst; spec.coefficient_label prints them."""
    return [f.idx for f in spec.fixed()]
