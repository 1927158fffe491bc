"""Input checks that keep data the model cannot be fitted to away from the engines: each refusal is
one line naming the file, the column and the row (or unit), and what to do.

A row is a record's place in the archive, whose level-1 records are sorted by unit: the file's own
row when the file is sorted by unit and no record was dropped (the unit id is named too).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError, ModelError
from ..io.archive import unknown_column

# The engines form sums, over up to ~1e10 records, of products of up to four data values (the HGLM
# working model's cross-products of cross-products). With every |value| <= 1e60 such a sum stays
# below 1e250, far from the double's overflow at 1.8e308; a larger value (a data error, or a
# variable in absurd units) is refused rather than fitted to infinities.
LARGEST_VALUE = 1e60
# Counts and trials must be whole numbers a double holds exactly.
LARGEST_COUNT = 2.0 ** 53
# Gauss-Hermite rules past ~100 points have weights below 1e-80 that add nothing to a smooth
# integrand (lme4 allows 25); and a product rule has points^q nodes per unit.
MAX_QUADRATURE_POINTS = 100
MAX_QUADRATURE_NODES = 2_500


def _files(archive) -> tuple[str, str]:
    files = {s.role: s.name for s in archive.sources}
    return files.get("level-1", "the level-1 file"), files.get("level-2", "the level-2 file")


def _unit_of(archive, record: int) -> str:
    j = int(np.searchsorted(archive.offsets, record, side="right")) - 1
    return str(archive.unit_ids[j])


def check_columns(archive, level1_names, level2_names) -> None:
    """Every column the model uses is in this archive: a model is checked against the first data
    set, and a further one (an imputed file) may lack a column."""
    l1file, l2file = _files(archive)
    for names, have, file in ((level1_names, archive.level1_names, l1file), (level2_names, archive.level2_names, l2file)):
        for name in dict.fromkeys(names):
            if name not in have:
                raise unknown_column(archive, name, DataError(f"{file}: no column {name}, which the model uses; add it to "
                                                             "this file (every data set of a combined fit needs the "
                                                             "same columns)"))


def check_magnitudes(archive, level1_names, level2_names) -> None:
    """Refuse a value beyond ±LARGEST_VALUE in a column the model uses."""
    check_columns(archive, level1_names, level2_names)
    l1file, l2file = _files(archive)
    for name in dict.fromkeys(level1_names):
        col = archive.level1_column(name)
        if not _beyond(col):
            continue
        big = np.abs(col) > LARGEST_VALUE
        if big.any():
            k = int(np.flatnonzero(big)[0])
            raise DataError(f"{l1file}, column {name}, row {k + 1} (unit {_unit_of(archive, k)}): the value {col[k]:g} "
                            f"is beyond ±{LARGEST_VALUE:g}, too large to fit in double precision; fix it or rescale "
                            f"{name} (e.g. to thousands or millions)")
    for name in dict.fromkeys(level2_names):
        col = archive.level2_column(name)
        if not _beyond(col):
            continue
        big = np.abs(col) > LARGEST_VALUE
        if big.any():
            j = int(np.flatnonzero(big)[0])
            raise DataError(f"{l2file}, column {name}, unit {archive.unit_ids[j]}: the value {col[j]:g} is beyond "
                            f"±{LARGEST_VALUE:g}, too large to fit in double precision; fix it or rescale {name}")


def _beyond(col: np.ndarray) -> bool:
    """Whether some value of col is beyond ±LARGEST_VALUE (±inf included; NaN, a missing value, is not):
    fmax/fmin skip NaN and make no N-long temporary, unlike |col| > LARGEST_VALUE."""
    return col.size > 0 and bool(np.fmax.reduce(col) > LARGEST_VALUE or np.fmin.reduce(col) < -LARGEST_VALUE)


def constant_within_units(y: np.ndarray, offsets: np.ndarray) -> bool:
    """True when no unit has two records with different outcomes (and some unit has two records)."""
    sizes = np.diff(offsets)
    if not (sizes > 1).any():
        return False
    starts = offsets[:-1]
    return bool(np.all(np.maximum.reduceat(y, starts) == np.minimum.reduceat(y, starts)))


def check_linear_outcome(design, l1file: str) -> None:
    """An outcome constant within every unit, with a random intercept: the unit means fit every
    record exactly, so σ² → 0 and the likelihood has no maximum (it grows without bound)."""
    if design.y.size == 0 or not design.random[0] or not constant_within_units(design.y, design.offsets):
        return
    raise _constant_outcome(design.spec.outcome, l1file)


def check_linear_outcome_moments(spec, n, mean, C, l1file: str = "the level-1 data") -> None:
    """check_linear_outcome from per-unit moments of the outcome (--engine stream/dask): a unit's
    outcome counts as constant when its within-unit SD is within 1e-12 of its mean's size (the
    rounding of running means), as moments._check_random_slopes judges a predictor."""
    kept = n > 0
    n, mean, C = n[kept], mean[kept], C[kept]
    if not (spec.intercept and spec.equations[0].random) or not (n > 1).any():
        return
    sd = np.sqrt(np.clip(C, 0, None) / n)
    if np.all(sd <= 1e-12 * np.abs(mean)):
        raise _constant_outcome(spec.outcome, l1file)


def _constant_outcome(outcome: str, l1file: str) -> DataError:
    return DataError(f"{l1file}, column {outcome}: the outcome is constant within every unit, so the unit means fit "
                     "every record exactly and the level-1 variance σ² would be 0 (the likelihood has no maximum); fit "
                     "the unit means as a one-level model, or check the outcome column")


def level1_option_column(archive, design, name: str, option: str) -> np.ndarray:
    """The level-1 column that --trials or --exposure names, for the records the design kept."""
    l1file, l2file = _files(archive)
    if name not in archive.level1_names:
        if name in archive.level2_names:
            raise ModelError(f"{option} {name}: {name} is a level-2 column (in {l2file}); {option} must be a "
                             f"level-1 column, one value per record (in {l1file})")
        lower = {n.lower(): n for n in archive.level1_names}
        hint = f" (did you mean {lower[name.lower()]}?)" if name.lower() in lower else ""
        raise unknown_column(archive, name, ModelError(f"{option} {name}: {l1file} has no column {name}{hint}; name a "
                                                      "level-1 column"))
    col = archive.level1_column(name).astype(float)
    return col if design.record_positions is None else col[design.record_positions]


def check_hglm_outcome(fam, design, trials, where: dict) -> None:
    """Outcomes a GLMM has no finite estimates for: counts or trials too large to be whole numbers
    in a double, every Poisson count 0, or every unit all failures or all successes.

    All-or-nothing units: each unit's conditional likelihood grows as its random intercept goes to
    ±∞, so the ML (and PQL) estimate of τ00 drifts to infinity (Laplace and AGQ stop wherever their
    step tolerance does, e.g. τ00 = 4e3 or 3e4: numbers that only look like answers)."""
    y, rows, l1file, outcome = design.y, where["rows"], where["file"], where["outcome"]

    def fail(k, column, problem):
        raise DataError(f"{l1file}, column {column}, row {int(rows[k]) + 1}: {problem}")

    checks = [(where.get("trials"), trials, "number of trials")]
    if fam.name != "bernoulli":
        checks.append((outcome, y, "count"))
    for column, values, what in checks:
        big = None if values is None else np.abs(values) > LARGEST_COUNT
        if big is not None and big.any():
            k = int(np.flatnonzero(big)[0])
            fail(k, column, f"the {what} {values[k]:g} is beyond 2^53 = {LARGEST_COUNT:.4g}, the largest whole number "
                            "a double holds exactly; check the value")
    if fam.name == "poisson" and not (y > 0).any():
        fail(0, outcome, "every count is 0, so the log rate has no finite estimate (it tends to -∞); a Poisson model "
                         "needs some non-zero counts")
    if fam.link == "logit" and design.random[0]:
        starts = design.offsets[:-1]
        all_fail = np.maximum.reduceat(y, starts) == 0
        all_succ = np.minimum.reduceat(y - (1.0 if trials is None else trials), starts) == 0
        if np.all(all_fail | all_succ):
            kind = ("all 0 or all 1" if fam.name == "bernoulli"
                    else f"all failures (0) or all successes ({outcome} = {where.get('trials')})")
            fail(0, outcome, f"within every unit the outcome is {kind}, so the variance of the random intercept τ00 "
                             "has no finite estimate (the fit drifts to τ00 = ∞); check the outcome, or model the "
                             "units' outcomes in a one-level logistic regression")


def check_quadrature(points: int | None, q: int) -> None:
    """A usable adaptive Gauss-Hermite rule: at most MAX_QUADRATURE_POINTS per random effect and
    MAX_QUADRATURE_NODES in the product rule."""
    if points is None:
        return
    if points > MAX_QUADRATURE_POINTS:
        raise ModelError(f"--quadrature-points {points}: at most {MAX_QUADRATURE_POINTS} (past that the extra "
                         "Gauss-Hermite weights are below 1e-80 and change nothing; lme4 allows 25)")
    if points ** q > MAX_QUADRATURE_NODES:
        raise ModelError(f"--quadrature-points {points} with {q} random effects is {points ** q:,} nodes per unit (at "
                         f"most {MAX_QUADRATURE_NODES:,}); use at most {int(MAX_QUADRATURE_NODES ** (1 / q) + 1e-9)} "
                         "points, or --estimation laplace")


def fit_or_refuse(fit, archive, outcome: str):
    """fit() of an HGLM; a numerical breakdown (a working model that is not positive definite, an
    overflow) becomes one line naming the outcome's largest value, as the linear engine's fit does
    (pipeline.analyse_stats). HLMCLI_DEBUG=1 keeps the traceback."""
    import os
    import warnings

    try:
        with warnings.catch_warnings():  # numpy's overflow warnings would break the one line
            warnings.simplefilter("ignore", RuntimeWarning)
            return fit()
    except (FloatingPointError, np.linalg.LinAlgError, OverflowError) as exc:
        if os.environ.get("HLMCLI_DEBUG"):
            raise
        y = archive.level1_column(outcome)
        k = int(np.nanargmax(y))
        raise ModelError(f"{_files(archive)[0]}, column {outcome}, row {k + 1} (unit {_unit_of(archive, k)}): the model "
                         f"cannot be fitted to these data ({' '.join(str(exc).split())[:100]}); the largest outcome, "
                         f"{y[k]:g}, is here: check extreme values, and predictors that separate the outcome, or "
                         "remove random effects") from None
