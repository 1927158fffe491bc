"""Stage 4, design, two levels: the unit solve's arrays, a projection of design_levels.frame (which
decides, for any number of levels, the records and units kept, the centred and mean(X) columns and the γ
layout), from the archive's records (make_design) or from per-unit moments (design_from_moments).

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
from ..engine.moments import Moments, cross_products
from .design_levels import Frame, Level1Moments, column_of, frame, gamma_layout, level_columns
from ..spec import gamma_label
from ..engine.sufficient import unit_stats_from_products


def variables_of(archive: Archive) -> Variables:
    """The names at each of the archive's levels, and the file each level came from (for messages)."""
    files = {s.role: s.name for s in archive.sources}
    K = archive.n_levels
    return Variables(tuple(tuple(archive.names(k)) for k in range(1, K + 1)),
                     tuple(files.get(f"level-{k}", f"the level-{k} file") for k in range(1, K + 1)), archive)


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


def two_level_layout(spec, f: Frame) -> tuple[list[np.ndarray], list[FixedEffect]]:
    """The γ layout of the Frame (design_levels.gamma_layout) as the unit solve reads it: W_q holds the
    fixed columns of coefficient q (INTRCPT2, then its level-2 predictors; none when 'bq = uq' or bq is
    absent), and one FixedEffect per γ in model order."""
    J = f.J(2)
    cols1, cols2 = level_columns(spec)
    P2 = [f.column(c) for c in cols2]
    coefficients = iter(gamma_layout(spec, [{c: k for k, c in enumerate(cols)} for cols in (cols1, cols2)]))
    names = spec.coefficient_names()
    W: list[np.ndarray] = []
    fixed: list[FixedEffect] = []
    for q, eq in enumerate(spec.equations):
        gammas = next(coefficients).terms if eq is not None else ()
        W.append(np.column_stack([np.ones(J) if g.col is None else P2[g.col] for g in gammas]) if gammas
                 else np.zeros((J, 0)))
        for s in eq.present() if eq is not None else ():
            fixed.append(FixedEffect(q, s, names[q], "INTRCPT2" if s == 0 else predictor_name(eq.predictors[s - 1]),
                                     gamma_label(q, s)))
    return W, fixed


def make_design(spec: ModelSpec, archive: Archive) -> Design:
    """The two-level design of the archive's records: the projection of design_levels.frame that the
    unit solve reads (L, y and W by unit, offsets)."""
    cols1, cols2 = level_columns(spec)
    level1_needed = [spec.outcome] + [c.name for c in cols1] + [c.name for c in cols2 if c.mean_of == 1]
    check_magnitudes(archive, list(dict.fromkeys(level1_needed)), [c.name for c in cols2 if c.mean_of is None])
    f = frame(spec, archive)
    offsets = f.offsets[2]
    N = int(offsets[-1])
    L = np.empty((N, len(spec.level1) + 1), order="F")  # column access in the cross-products
    L[:, 0] = 1.0
    for k, term in enumerate(spec.level1, start=1):
        L[:, k] = f.column(column_of(term, 1))
    W, fixed = two_level_layout(spec, f)
    unit_positions = f.positions(2)
    level2_values = {name: archive.level2[k][unit_positions] for k, name in enumerate(archive.level2_names)}
    design = Design(spec=spec, y=np.ascontiguousarray(f.values(1, spec.outcome)), L=L, W=W, offsets=offsets,
                    unit_ids=[archive.unit_ids[j] for j in unit_positions], unit_positions=unit_positions,
                    record_positions=np.flatnonzero(f.keep) if f.deleted_any else None, n_deleted=f.n_deleted,
                    units_deleted=int((~f.present[2]).sum()), fixed=fixed, random=np.array([eq.random for eq in spec.level2]),
                    level2_values=level2_values, centering_means=f.centering_means)
    check_random_slopes(design, *_record_spread(design))
    if spec.options.family == "normal":
        check_linear_outcome(design, variables_of(archive).file(1))
    return design


def predictor_name(term: Term) -> str:
    return column_of(term, 2).label


def check_random_slopes(design: Design, spread: np.ndarray, scale: np.ndarray) -> None:
    """A slope cannot vary across units if its predictor never varies within a unit: refused when the
    predictor's within-unit spread (spread[:, q − 1], per unit) is within 1e-12 of its size (scale[q − 1])
    in every unit. The spread is max − min over the records, or the SD from the unit's moments."""
    for q in np.flatnonzero(design.random):
        if q == 0:
            continue
        if np.all(spread[:, q - 1] <= 1e-12 * scale[q - 1]):
            term = design.spec.level1[q - 1]
            why = ("is zero everywhere after group-mean centering" if term.centering == "group"
                   else "is constant within every unit")
            raise ModelError(
                f"b{q} ({term.name}) cannot have a random slope: {term.name} {why}, so its slope "
                f"cannot be estimated separately in any unit; remove u{q} from b{q}'s equation"
            )


def _record_spread(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """(max − min of each random slope's predictor within each unit, max(1, max|x|)) over the records."""
    Q = design.L.shape[1] - 1
    spread, scale = np.zeros((design.n_units, Q)), np.ones(Q)
    starts = design.offsets[:-1]
    for q in np.flatnonzero(design.random[1:]) + 1:
        x = design.L[:, q]
        spread[:, q - 1] = np.maximum.reduceat(x, starts) - np.minimum.reduceat(x, starts)
        scale[q - 1] = max(1.0, float(np.abs(x).max()))
    return spread, scale


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
    """The Design (without the N×K arrays) and the UnitStats of `spec`, from per-unit moments: the
    projection of design_levels.frame on level-1 moments.

    unit_ids, m: the units that had records (n may be 0 where run-time deletion removed them all);
    names: the columns of m; level2: every level-2 variable's (J,) values for those units.
    Centering is the Frame's: group = the unit's own mean, grand = the mean over records (level 1) or
    over units (level 2); y is shifted by its grand mean when the model has γ00."""
    f = frame(spec, None, Level1Moments(list(names), m, int(n_deleted)), level2)
    positions = f.positions(2)
    sub_m = f.moments()
    col = {name: k for k, name in enumerate(names)}
    index = [col[t.name] for t in spec.level1] + [col[spec.outcome]]
    sub = Moments(sub_m.n, sub_m.mean[:, index], sub_m.C[:, index][:, :, index])
    centers = np.zeros((f.J(2), len(index)))
    for k, term in enumerate(spec.level1):
        centers[:, k] = f.level1_shift(column_of(term, 1))
    W, fixed = two_level_layout(spec, f)
    N, grand_mean, _ = f.grand_moments()
    design = MomentsDesign(
        spec=spec, y=np.zeros(0), L=np.zeros((0, len(spec.level1) + 1)), W=W, offsets=np.concatenate(([0], np.cumsum(sub.n.astype(np.int64)))).astype(np.int64), unit_ids=[unit_ids[j] for j in positions],
        unit_positions=positions, record_positions=None, n_deleted=f.n_deleted,
        units_deleted=int((~f.present[2]).sum()), fixed=fixed, random=np.array([eq.random for eq in spec.level2]),
        level2_values={k: np.asarray(v, dtype=float)[positions] for k, v in level2.items()},
        centering_means=f.centering_means, N=int(round(N)), data_digest=digest)
    shift = float(grand_mean[col[spec.outcome]]) if has_overall_intercept(design) else 0.0
    centers[:, -1] = shift
    check_random_slopes(design, *_moment_spread(sub, centers))
    unit = unit_stats_from_products(*cross_products(sub, centers, intercept=True), shift)
    return design, unit


def _moment_spread(m: Moments, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each level-1 predictor's SD within each unit, max(1, max over units of |mean − centre| + SD))
    from the units' moments: check_random_slopes's spread without the records."""
    Q = centers.shape[1] - 1
    sd = np.sqrt(np.clip(np.einsum("jkk->jk", m.C[:, :Q, :Q]), 0, None) / m.n[:, None])
    scale = np.array([max(1.0, float(np.max(np.abs(m.mean[:, k] - centers[:, k]) + sd[:, k]))) for k in range(Q)])
    return sd, scale


@dataclass
class MomentsDesign(Design):
    """A Design whose records were summarised, not kept: L and y have no rows, n is stored."""

    N: int = 0
    data_digest: str = ""

    @property
    def n(self) -> int:
        return self.N
