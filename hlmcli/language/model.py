"""The model as values, for any number of levels K: its predictors (`Term`), the tree of its equations
(`Equation`), the settings that travel with it (`RunOptions`), and the contrasts a command file
carries (`Hypothesis`). The parser (equations_levels.py) and the command-file readers build them; the
stages below read them and never the text they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
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
