"""What a model is and what is asked of a fit, as values: the family with its link, the method, the
τ structure (enums shared by the CLI, the API, the command-file reader and the engines); the options
of a fit (`FitOptions`: what is estimated) kept apart from those of its output (`OutputOptions`: what
is written); γ labels; and the reader of HLM 7's printed HGLM level-1 block."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .errors import ModelError


class FamilyName(str, Enum):
    NORMAL = "normal"
    BERNOULLI = "bernoulli"
    BINOMIAL = "binomial"
    POISSON = "poisson"
    ORDINAL = "ordinal"  # cumulative link, categories 1..C (engine/ordinal.py)
    NEGBINOMIAL = "negbinomial"  # NB2 counts, Var = μ + μ²/θ, log link (engine/negbin.py)
    MULTINOMIAL = "multinomial"  # baseline-category logits, categories 1..M, M the reference (engine/multinomial.py)


class Link(str, Enum):
    IDENTITY = "identity"
    LOGIT = "logit"
    LOG = "log"
    PROBIT = "probit"  # ordinal outcomes only (--link)
    CLOGLOG = "cloglog"


# The canonical link of each family, the only one hlmcli fits (as HLM 7); an ordinal outcome's link is
# logit by default, probit or cloglog with --link (Laplace and AGQ).
LINKS = {FamilyName.NORMAL: Link.IDENTITY, FamilyName.BERNOULLI: Link.LOGIT, FamilyName.BINOMIAL: Link.LOGIT,
         FamilyName.POISSON: Link.LOG, FamilyName.ORDINAL: Link.LOGIT, FamilyName.NEGBINOMIAL: Link.LOG,
         FamilyName.MULTINOMIAL: Link.LOGIT}
ORDINAL_LINKS = (Link.LOGIT, Link.PROBIT, Link.CLOGLOG)


@dataclass(frozen=True)
class Family:
    """A level-1 distribution with its link."""

    name: FamilyName
    link: Link

    @classmethod
    def of(cls, name: str) -> "Family":
        fam = FamilyName(name)
        return cls(fam, LINKS[fam])

    @property
    def linear(self) -> bool:
        return self.name == FamilyName.NORMAL


class Method(str, Enum):
    REML = "REML"
    ML = "ML"


class Estimation(str, Enum):
    PQL = "pql"
    LAPLACE = "laplace"
    AGQ = "agq"


class TauStructure(str, Enum):
    UNSTRUCTURED = "unstructured"
    DIAGONAL = "diagonal"


class Engine(str, Enum):
    MEMORY = "memory"
    STREAM = "stream"
    DASK = "dask"


@dataclass(frozen=True)
class FitOptions:
    """What a fit estimates, from the command line or the API (None: what the model file says, else the
    default). The model file's own settings (a .hlm file's nonlin:, level1weight:, ...) are merged in
    by `api.model_spec`."""

    method: Method | None = None
    family: FamilyName | None = None
    link: Link | None = None  # ordinal outcomes: logit (default), probit, cloglog
    trials: str | None = None
    exposure: str | None = None
    overdispersion: bool | None = None
    estimation: Estimation | None = None
    quadrature_points: int | None = None
    separation: str | None = None  # refuse | fit: a separated coefficient held at a bound (HGLM)
    tau: TauStructure | None = None
    weight1: str | None = None
    weight2: str | None = None
    weight3: str | None = None  # three and four levels
    weight4: str | None = None  # four levels
    normalize: str | None = None
    plausible_values: str | None = None
    imputed: tuple[str, ...] = ()
    df_method: str = "hlm"
    tests: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()  # --constrain 'g10 = g20': ties among γs, fitted as one (Cγ = 0)
    known_variance: str | None = None  # --known-variance V: each record's level-1 variance is known (V-known)
    level1_variance: tuple[str, ...] = ()  # --level1-variance X1,X2: log σ²_ij = α0 + α1·X1 + ... (heterol1var)
    level1_covariance: str | None = None  # --level1-covariance: HMLM's within-person Δ over the occasions
    occasion: str | None = None  # --occasion VAR: the occasion of each level-1 record (HMLM)
    compare_deviance: float | None = None
    compare_params: int | None = None
    prior_version: str | None = None  # the program that printed compare_deviance: hlm6 or hlm7
    test_homogeneity: bool | None = None
    full_output: bool | None = None
    ols_units: int | None = None
    max_iterations: int | None = None
    emulate: str | None = None  # --emulate hlm6: HLM 5/6's EM path beside the optimum (analysis/hlm_emulation.py)
    engine: Engine = Engine.MEMORY
    scheduler: str | None = None


@dataclass(frozen=True)
class OutputOptions:
    """What a fit writes: the format, the files, and what it says on stderr."""

    out_format: str = "text"
    output: str | None = None
    json_out: str | None = None
    residuals_l1: str | None = None
    residuals_l2: str | None = None
    residuals_l3: str | None = None  # three and four levels
    residuals_l4: str | None = None  # four levels
    keep: tuple[str, ...] = ()
    quiet: bool = False
    timestamp: bool = False
    title: str | None = None
    ascii_only: bool = False
    strict: bool = False
    keep_failed_output: bool = False
    force: bool = False
    table: object = None  # tables.TableOptions of the paper tables (None: the defaults)


# HLM 7's printed level-1 block, e.g.
#   Prob(USE=1|β) = φ ; log[φ/(1-φ)] = η ; η = β0 + β1*URBAN
#   E(Y|β) = λ (or mλ) ; log[λ] = η ; η = β0 + β1*X
_PROB = re.compile(r"^\s*prob\s*\(\s*([A-Za-z_][\w.]*)\w*\s*=\s*1\s*\|[^)]*\)\s*=\s*(φ|phi)\w*\s*$", re.I)
_EXPECT = re.compile(r"^\s*e\s*\(\s*([A-Za-z_][\w.]*?)(ij)?\s*\|[^)]*\)\s*=\s*(m\w*\s*[·*]?\s*)?(λ|lambda|φ|phi)\w*\s*$", re.I)
_LINK = re.compile(r"^\s*log\s*[\[(].*[\])]\s*=\s*(η|eta)\w*\s*$", re.I)
_VAR = re.compile(r"^\s*var\s*\(", re.I)
_ETA = re.compile(r"^\s*(η|eta)\w*\s*=", re.I)


def subscript(*indices: int) -> str:
    """HLM 7's subscripts: digits run together while each index has one digit (γ01, π2, β10), and are
    separated by commas as soon as one has two (γ1,10 and γ11,0, which run together would both read γ110)."""
    return "".join(map(str, indices)) if all(0 <= i < 10 for i in indices) else ",".join(map(str, indices))


def coefficient_label(letter: str, indices) -> str:
    """The label of a coefficient at any level, as every output prints it and `--test` reads it: its
    letter (γ, or g in ASCII; π, β, δ, ...) and HLM 7's subscripts."""
    return letter + subscript(*indices)


def gamma_label(q: int, s: int, letter: str = "γ") -> str:
    """The label of a two-level model's γqs (ASCII: letter='g')."""
    return coefficient_label(letter, (q, s))


def hlm_block(text: str):
    """HLM 7's printed HGLM level-1 block -> (equation 'Y = b0 + ...', family or None, exposure implied).

    Returns (text, None, False) unchanged when the text is not such a block."""
    lines = [s for s in re.split(r"[\n;]", text) if s.strip()]
    if len(lines) < 2:
        return text, None, False
    outcome = fam = None
    exposure = False
    eta_rhs = None
    for line in lines:
        if m := _PROB.match(line):
            outcome, fam = m.group(1), FamilyName.BERNOULLI
        elif m := _EXPECT.match(line):
            outcome = m.group(1)
            is_phi = m.group(4).lower() in ("φ", "phi")
            fam = FamilyName.BINOMIAL if is_phi else FamilyName.POISSON
            exposure = bool(m.group(3)) and not is_phi
        elif _LINK.match(line) or _VAR.match(line):
            continue
        elif _ETA.match(line):
            eta_rhs = line.split("=", 1)[1]
        else:
            return text, None, False
    if outcome is None or eta_rhs is None:
        raise ModelError(f"'{text.strip()}': an HGLM level-1 block needs the outcome line (Prob(Y=1|β) = φ or "
                         "E(Y|β) = λ) and the line η = β0 + ...")
    return f"{outcome} = {eta_rhs.strip()}", fam, exposure


def has_residual(equation: str) -> bool:
    """Whether a level-1 equation ends in the level-1 residual r."""
    return re.search(r"\+\s*[rR](ij)?\s*$", equation.strip()) is not None
