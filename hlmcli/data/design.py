"""Stage 4, design: a ModelSpec plus an Archive to arrays, with deletion and centering applied.

The fixed part of an HLM is the set of columns X_q * W_s, so we keep the level-1 design L
(N x (Q+1), intercept first) and each equation's level-2 design W_q (J x (S_q+1)) instead of
materialising the N x p matrix X: X_j = L_j @ B_j, with B_j placing W_qj in row q.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.archive import Archive
from .data_checks import check_linear_outcome, check_magnitudes
from ..language.equations_levels import Variables
from ..language.model import ModelSpec, Term
from ..errors import ModelError
from ..engine.moments import Moments, cross_products, grand
from ..spec import gamma_label
from ..engine.sufficient import unit_stats_from_products


def variables_of(archive: Archive) -> Variables:
    """The names at each of the archive's levels, and the file each level came from (for messages)."""
    files = {s.role: s.name for s in archive.sources}
    K = archive.n_levels
    return Variables(tuple(tuple(archive.names(k)) for k in range(1, K + 1)),
                     tuple(files.get(f"level-{k}", f"the level-{k} file") for k in range(1, K + 1)))


@dataclass(frozen=True)
class FixedEffect:
    q: int  # level-1 coefficient
    s: int  # level-2 predictor (0 = INTRCPT2)
    coefficient: str  # INTRCPT1 or the level-1 variable
    predictor: str  # INTRCPT2 or the level-2 variable
    label: str  # γqs


@dataclass
class Design:
    spec: ModelSpec
    y: np.ndarray  # (N,)
    L: np.ndarray  # (N, Q+1): intercept, then level-1 predictors as centered
    W: list[np.ndarray]  # per coefficient q: (J, S_q+1), ones first
    offsets: np.ndarray  # (J+1,)
    unit_ids: list[str]
    unit_positions: np.ndarray  # archive unit index of each unit kept
    record_positions: np.ndarray | None  # archive record index of each record kept (None = all)
    n_deleted: int
    units_deleted: int
    fixed: list[FixedEffect]
    random: np.ndarray  # bool (Q+1,)
    level2_values: dict[str, np.ndarray]  # every level-2 variable, for residual files
    centering_means: dict[str, float]  # grand means used, for the report

    @property
    def n(self) -> int:
        return int(self.y.size)

    @property
    def n_units(self) -> int:
        return len(self.unit_ids)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_fixed(self) -> int:
        return len(self.fixed)

    def block_design(self) -> np.ndarray:
        """B: (J, Q+1, p) with X_j = L_j @ B_j."""
        Q1 = self.L.shape[1]
        B = np.zeros((self.n_units, Q1, self.n_fixed))
        col = 0
        for q, Wq in enumerate(self.W):
            B[:, q, col:col + Wq.shape[1]] = Wq
            col += Wq.shape[1]
        return B

    def fixed_matrix(self) -> np.ndarray:
        """The full N x p fixed-effects matrix (for tests and small data only)."""
        unit = np.repeat(np.arange(self.n_units), self.sizes)
        cols = [self.L[:, q:q + 1] * Wq[unit] for q, Wq in enumerate(self.W)]
        return np.hstack(cols)


def unit_means(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    sizes = np.diff(offsets)
    return np.add.reduceat(values, offsets[:-1]) / sizes


def level2_layout(spec, J: int, level2_column) -> tuple[list[np.ndarray], list[FixedEffect]]:
    """The γ layout, made once for every engine: W_q holds the fixed columns of coefficient q
    (INTRCPT2 unless 'bq = uq', then its predictors, from level2_column(term)), and one FixedEffect
    per γ in model order."""
    W: list[np.ndarray] = []
    fixed: list[FixedEffect] = []
    names = spec.coefficient_names()
    for q, eq in enumerate(spec.level2):
        cols = ([np.ones(J)] if eq.intercept else []) + [level2_column(t) for t in eq.predictors]
        W.append(np.column_stack(cols) if cols else np.zeros((J, 0)))
        if eq.intercept:
            fixed.append(FixedEffect(q, 0, names[q], "INTRCPT2", gamma_label(q, 0)))
        for s, t in enumerate(eq.predictors, start=1):
            fixed.append(FixedEffect(q, s, names[q], predictor_name(t), gamma_label(q, s)))
    return W, fixed


def make_design(spec: ModelSpec, archive: Archive) -> Design:
    level1_needed = [spec.outcome] + [t.name for t in spec.level1]
    level1_needed += [t.name for eq in spec.level2 for t in eq.predictors if t.unit_mean]
    level1_needed = list(dict.fromkeys(level1_needed))
    check_magnitudes(archive, level1_needed, [t.name for eq in spec.level2 for t in eq.predictors if not t.unit_mean])
    columns = {name: archive.level1_column(name) for name in level1_needed}

    # Run-time deletion: a record missing any variable this model uses is dropped.
    keep = np.ones(archive.n_level1, dtype=bool)
    for col in columns.values():
        keep &= ~np.isnan(col)
    n_deleted = int((~keep).sum())
    if n_deleted:
        unit_index = archive.unit_index
        sizes = np.bincount(unit_index[keep], minlength=archive.n_units)
        record_positions = np.flatnonzero(keep)
        columns = {k: v[keep] for k, v in columns.items()}
    else:
        sizes = archive.unit_sizes
        record_positions = None
    unit_kept = sizes > 0
    if not unit_kept.any():
        raise ModelError(f"every record has a missing value in {', '.join(level1_needed)}; nothing is left to analyse")
    units_deleted = int((~unit_kept).sum())
    sizes = sizes[unit_kept]
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    unit_positions = np.flatnonzero(unit_kept)
    unit_ids = [archive.unit_ids[j] for j in unit_positions]
    J = len(unit_ids)
    N = int(offsets[-1])

    centering_means: dict[str, float] = {}
    L = np.empty((N, len(spec.level1) + 1), order="F")  # column access in the cross-products
    L[:, 0] = 1.0
    for k, term in enumerate(spec.level1, start=1):
        x = columns[term.name]
        if term.centering == "group":
            x = x - np.repeat(unit_means(x, offsets), sizes)
        elif term.centering == "grand":
            mean = float(x.mean())
            centering_means[f"{term.name} (level 1)"] = mean
            x = x - mean
        L[:, k] = x

    def level2_column(term: Term) -> np.ndarray:
        if term.unit_mean:
            w = unit_means(columns[term.name], offsets)
        else:
            w = archive.level2_column(term.name)[unit_positions]
        if term.centering == "grand":
            mean = float(w.mean())  # over units, each counted once
            centering_means[f"{'mean(' + term.name + ')' if term.unit_mean else term.name} (level 2)"] = mean
            w = w - mean
        return w

    W, fixed = level2_layout(spec, J, level2_column)

    level2_values = {name: archive.level2[k][unit_positions] for k, name in enumerate(archive.level2_names)}
    design = Design(spec=spec, y=np.ascontiguousarray(columns[spec.outcome]), L=L, W=W, offsets=offsets,
                    unit_ids=unit_ids, unit_positions=unit_positions, record_positions=record_positions,
                    n_deleted=n_deleted, units_deleted=units_deleted, fixed=fixed,
                    random=np.array([eq.random for eq in spec.level2]), level2_values=level2_values, centering_means=centering_means)
    check_random_slopes(design)
    if spec.options.family == "normal":
        check_linear_outcome(design, variables_of(archive).file(1))
    return design


def predictor_name(term: Term) -> str:
    return f"mean({term.name})" if term.unit_mean else term.name


def check_random_slopes(design: Design) -> None:
    """A slope cannot vary across units if its predictor never varies within a unit."""
    for q in np.flatnonzero(design.random):
        if q == 0:
            continue
        x = design.L[:, q]
        starts = design.offsets[:-1]
        spread = np.maximum.reduceat(x, starts) - np.minimum.reduceat(x, starts)
        if np.all(spread <= 1e-12 * max(1.0, float(np.abs(x).max()))):
            term = design.spec.level1[q - 1]
            why = ("is zero everywhere after group-mean centering" if term.centering == "group"
                   else "is constant within every unit")
            raise ModelError(
                f"b{q} ({term.name}) cannot have a random slope: {term.name} {why}, so its slope "
                f"cannot be estimated separately in any unit; remove u{q} from b{q}'s equation"
            )


COLLINEAR_TOL = 1e-10  # a predictor is a combination of the others when less than this share of its
# centred variation is left after regressing it on the earlier columns (1 − R² ≤ 1e-10, a variance
# inflation factor of 1e10): free of the data's units and location, and far above rounding.


def residual_shares(xtx: np.ndarray, intercept: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each column k of X (Gram matrix xtx), 1 − R²_k: the share of its variation about the mean
    (about zero without an intercept) left after regressing it on the earlier columns; the rounding
    noise of that share: the centred Gram C = X'X − X'1 1'X / N gives back the digits the column's
    mean took, a factor κ_k = (X'X)_kk / C_kk, so its entries are good to about ε·κ_k; and whether
    the column is constant (C_kk within 64ε of (X'X)_kk, or zero). The intercept's share is 1."""
    p = xtx.shape[0]
    eps = np.finfo(float).eps
    if intercept is not None:
        a = xtx[:, intercept]
        C = xtx - np.outer(a, a) / a[intercept]
    else:
        C = xtx.copy()
    diag = np.diag(xtx).copy()
    cdiag = np.diag(C).copy()
    constant = ~(cdiag > 64.0 * eps * diag) | ~(diag > 0)
    if intercept is not None:
        constant[intercept] = False
    kappa = np.where(constant | ~(cdiag > 0), 1.0, diag / np.where(cdiag > 0, cdiag, 1.0))
    share = np.ones(p)
    noise = np.zeros(p)
    earlier: list[int] = []
    for k in range(p):
        if k == intercept:
            continue
        if constant[k]:
            share[k] = 0.0
            continue
        if earlier:
            s = np.sqrt(cdiag[earlier])
            R = C[np.ix_(earlier, earlier)] / np.outer(s, s)
            r = C[earlier, k] / (s * np.sqrt(cdiag[k]))
            try:
                share[k] = 1.0 - float(r @ np.linalg.solve(R, r))
            except np.linalg.LinAlgError:
                share[k] = 0.0
        noise[k] = 64.0 * eps * float(max([kappa[k]] + [kappa[i] for i in earlier]))
        earlier.append(k)
    return share, noise, constant


def check_collinearity(design: Design, xtx: np.ndarray, centred_xtx: np.ndarray | None = None) -> None:
    """Name the fixed-effect column that is a linear combination of earlier ones: judged on
    centred (when the model has γ00), scaled columns, so a predictor's location and units never
    matter; refused when 1 − R² ≤ COLLINEAR_TOL, or when it is within the Gram matrix's own
    rounding (residual_shares). centred_xtx: the Gram matrix of X·T with T unit upper triangular
    (the internally centred columns, centring.py), which gives each column the same share with
    fewer digits lost; columns of zeros are judged on X itself."""
    d = np.sqrt(np.clip(np.diag(xtx), 0, None))
    labels = [f"{f.label} ({f.predictor} for {f.coefficient})" for f in design.fixed]
    # a column of zeros: exactly, or (a group-mean-centred variable constant within units keeps only
    # rounding) tiny against the other columns; judging every column that way would call a predictor
    # in units of 1e-6 beside one in units of 1e8 "zeros"
    spec = getattr(design, "spec", None)
    group = np.array([bool(spec is not None and f.q > 0 and f.q <= len(spec.level1)
                           and spec.level1[f.q - 1].centering == "group") for f in design.fixed], dtype=bool)
    zero = np.flatnonzero((d == 0) | (group & (d <= 1e-12 * max(1.0, d.max()))))
    if zero.size:
        raise ModelError(
            f"the fixed effect {labels[zero[0]]} has a column of zeros (e.g. a group-mean-centered variable that is "
            "constant within units); remove that term"
        )
    intercept = 0 if design.fixed and (design.fixed[0].q, design.fixed[0].s) == (0, 0) else None
    if centred_xtx is not None:
        xtx = centred_xtx
    share, noise, constant = residual_shares(xtx, intercept)
    for k in range(xtx.shape[0]):
        if share[k] <= max(COLLINEAR_TOL, noise[k]):
            earlier = [labels[i] for i in _partners(xtx, intercept, k)]
            if intercept is not None and constant[k]:
                raise ModelError(f"the fixed effects are collinear: {labels[k]} is constant, a multiple of "
                                 f"{labels[intercept]}; remove it")
            raise ModelError(
                f"the fixed effects are collinear: {labels[k]} is a linear combination of "
                f"{', '.join(earlier) or 'earlier terms'}; remove one of them"
            )


def _partners(xtx: np.ndarray, intercept: int | None, k: int) -> list[int]:
    """The earlier columns column k leans on: the intercept (when centred), and those whose
    coefficient in the regression of the scaled, centred column k on them is not negligible."""
    if intercept is not None:
        a = xtx[:, intercept]
        C = xtx - np.outer(a, a) / a[intercept]
    else:
        C = xtx
    earlier = [i for i in range(k) if i != intercept and C[i, i] > 0]
    out = [] if intercept is None else [intercept]
    if earlier:
        s = np.sqrt(np.diag(C)[earlier])
        beta = np.linalg.lstsq(C[np.ix_(earlier, earlier)] / np.outer(s, s), C[earlier, k] / s, rcond=None)[0]
        big = np.abs(beta) > 1e-6 * max(float(np.abs(beta).max()), 1e-300)
        out += [i for i, b in zip(earlier, big) if b]
    return sorted(out)


def has_overall_intercept(design) -> bool:
    """y is centred before the cross-products (so sums of squares do not cancel) only when the
    model has an overall intercept γ00 to absorb the shift."""
    return bool(design.fixed) and (design.fixed[0].q, design.fixed[0].s) == (0, 0)


# ---------------------------------------------------------------- a model's design from the moments

def design_from_moments(spec, unit_ids: list[str], names: list[str], m: Moments, level2: dict,
                        n_deleted: int = 0, digest: str = ""):
    """The Design (without the N×K arrays) and the UnitStats of `spec`, from per-unit moments.

    unit_ids, m: the units that had records (n may be 0 where run-time deletion removed them all);
    names: the columns of m; level2: every level-2 variable's (J,) values for those units.
    Centering follows make_design: group = the unit's own mean, grand = the mean over records
    (level 1) or over units (level 2); y is shifted by its grand mean when the model has γ00."""
    kept = m.n > 0
    if not kept.any():
        raise ModelError("every record has a missing value in the model's variables; nothing is left to analyse")
    units_deleted = int((~kept).sum())
    positions = np.flatnonzero(kept)
    m = m.take(positions)
    unit_ids = [unit_ids[j] for j in positions]
    J = len(unit_ids)
    col = {name: k for k, name in enumerate(names)}
    N, grand_mean, _ = grand(m)

    centering_means: dict[str, float] = {}
    index = [col[t.name] for t in spec.level1] + [col[spec.outcome]]
    sub = Moments(m.n, m.mean[:, index], m.C[:, index][:, :, index])
    centers = np.zeros((J, len(index)))
    for k, term in enumerate(spec.level1):
        if term.centering == "group":
            centers[:, k] = sub.mean[:, k]
        elif term.centering == "grand":
            centers[:, k] = grand_mean[col[term.name]]
            centering_means[f"{term.name} (level 1)"] = float(grand_mean[col[term.name]])

    def level2_column(term) -> np.ndarray:
        w = m.mean[:, col[term.name]].copy() if term.unit_mean else np.asarray(level2[term.name], dtype=float)[positions]
        if term.centering == "grand":
            mean = float(w.mean())
            centering_means[f"{'mean(' + term.name + ')' if term.unit_mean else term.name} (level 2)"] = mean
            w = w - mean
        return w

    W, fixed = level2_layout(spec, J, level2_column)
    offsets = np.concatenate(([0], np.cumsum(m.n.astype(np.int64)))).astype(np.int64)
    design = MomentsDesign(
        spec=spec, y=np.zeros(0), L=np.zeros((0, len(spec.level1) + 1)), W=W, offsets=offsets, unit_ids=unit_ids, unit_positions=positions,
        record_positions=None, n_deleted=int(n_deleted), units_deleted=units_deleted, fixed=fixed,
        random=np.array([eq.random for eq in spec.level2]), level2_values={k: np.asarray(v, dtype=float)[positions] for k, v in level2.items()},
        centering_means=centering_means, N=int(round(N)), data_digest=digest)
    shift = float(grand_mean[col[spec.outcome]]) if has_overall_intercept(design) else 0.0
    centers[:, -1] = shift
    _check_random_slopes(design, sub, centers)
    unit = unit_stats_from_products(*cross_products(sub, centers, intercept=True), shift)
    return design, unit


def _check_random_slopes(design, m: Moments, centers: np.ndarray) -> None:
    """design.check_random_slopes on moments: a predictor with no spread within any unit
    (C_kk = 0 up to rounding) cannot carry a random slope."""
    for q in np.flatnonzero(design.random):
        if q == 0:
            continue
        k = q - 1
        sd = np.sqrt(np.clip(m.C[:, k, k], 0, None) / m.n)
        scale = max(1.0, float(np.max(np.abs(m.mean[:, k] - centers[:, k]) + sd)))
        if np.all(sd <= 1e-12 * scale):
            term = design.spec.level1[k]
            why = ("is zero everywhere after group-mean centering" if term.centering == "group"
                   else "is constant within every unit")
            raise ModelError(
                f"b{q} ({term.name}) cannot have a random slope: {term.name} {why}, so its slope "
                f"cannot be estimated separately in any unit; remove u{q} from b{q}'s equation")


@dataclass
class MomentsDesign(Design):
    """A Design whose records were summarised, not kept: L and y have no rows, n is stored."""

    N: int = 0
    data_digest: str = ""

    @property
    def n(self) -> int:
        return self.N
