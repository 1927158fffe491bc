"""Stage 4, design, for any number of levels K ≥ 2: which records and units a model uses, its centred
columns and mean(X) columns at every level, and the γ layout (which fixed effect multiplies which column
at which level), decided once, here, by `frame`. The two-level Design (design.py; the unit solve's L,
W and offsets), its moments form (the stream and Dask engines) and the nested data of K ≥ 3 levels
(`design_levels`) are projections of a Frame.

HLM's centring, one level at a time (HLM2, HLM3 and HLM4 alike):

  level ℓ   group(X): X minus the mean of X over the level-ℓ units of its level-(ℓ+1) unit (level 1:
            over the records of its level-2 unit; not at the top level);
            grand(X): X minus the mean over the level-ℓ units (records at level 1);
            mean(X) of a level-m variable (m < ℓ): the level-ℓ unit's mean of X over its level-m
            units (records when m = 1)
all computed over the records and units used in this analysis.

The archive keeps every level sorted by its parent unit, so the level-m units of one level-ℓ unit are
a contiguous run: each mean over units is one np.add.reduceat over offsets (pairwise summation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ..io.archive import Archive
from ..language.model import ModelSpec
from ..errors import ModelError
from ..engine.moments import LevelsSummary, Moments, grand
from ..engine.coefficients import Coefficient


# ---------------------------------------------------------------- the model, level by level

class Column(NamedTuple):
    """A predictor column at `level`: variable `name`, or mean(name) of a level-`mean_of` variable,
    centred as `centering` says ("none", "group", "grand")."""
    name: str
    level: int
    centering: str
    mean_of: int | None

    @property
    def label(self) -> str:
        return f"mean({self.name})" if self.mean_of else self.name


def column_of(term, level: int) -> Column:
    """The Column of a predictor (model.Term) of a level-`level` equation."""
    return Column(term.name, level, str(term.centering), term.mean_of)


def level_columns(spec: ModelSpec) -> list[list[Column]]:
    """The distinct predictor columns of each level 1..K, in model order (a level-d coefficient's
    equation is at level d+1)."""
    K = spec.n_levels
    out: list[list[Column]] = [[column_of(t, 1) for t in spec.level1]] + [[] for _ in range(K - 1)]

    def walk(eq, depth: int) -> None:
        out[depth].extend(column_of(t, depth + 1) for t in eq.predictors)
        if depth + 1 < K:
            for k in eq.present():
                walk(eq.terms[k], depth + 1)

    for eq in spec.equations:
        if eq is not None:
            walk(eq, 1)
    return [list(dict.fromkeys(cols)) for cols in out]


def level1_variables(spec) -> list[str]:
    """The level-1 variables a model reads (outcome, level-1 predictors, X of a mean(X) of level 1),
    sorted: the columns a summarised engine reads, and those whose missing values delete a record."""
    return sorted({spec.outcome} | {c.name for cols in level_columns(spec) for c in cols
                                     if c.mean_of == 1 or (c.level == 1 and c.mean_of is None)})


def gamma_layout(spec: ModelSpec, index: list[dict]) -> tuple:
    """The γ layout: each present level-1 coefficient with its equation's terms, down to the γs, each
    naming its predictor's column at its level (`index[level - 1]`: Column -> position; None = the
    intercept). The engine's coefficient tree (nested.Coefficient); two levels read it as W (design.py)."""
    K = spec.n_levels

    def node(eq, depth: int, col) -> Coefficient:
        # a level-`depth` coefficient: its column at level `depth`, its equation at level depth+1
        if depth == K:
            return Coefficient(col)
        kids = []
        for k in eq.present():
            c = None if k == 0 else index[depth][column_of(eq.predictors[k - 1], depth + 1)]
            kids.append(Coefficient(c) if depth + 1 == K else node(eq.terms[k], depth + 1, c))
        return Coefficient(col, tuple(kids), eq.random)

    return tuple(node(eq, 1, None if p == 0 else index[0][column_of(spec.level1[p - 1], 1)])
                 for p, eq in enumerate(spec.equations) if eq is not None)


# ---------------------------------------------------------------- what the model uses of the data

@dataclass(frozen=True)
class Level1Moments:
    """Level 1 summarised per level-2 unit (the stream and Dask engines): `moments` of the level-1
    variables `names`, one row per record of the archive's level 1, which then holds one record
    per level-2 unit (engines_levels.py); records with a missing value in a model variable were
    deleted while summarising (n_deleted of them), so a unit may have n = 0."""
    names: list
    moments: Moments
    n_deleted: int


@dataclass
class Frame:
    """What a model of K levels uses of its data, decided once: the level-1 records kept (`keep`; over
    the level-2 units' moment rows when level 1 is summarised), the units kept at each level (those
    with a record kept below them), and every predictor column, centred, with the grand means used.

    offsets[ℓ] (ℓ ≥ 2): the kept level-(ℓ−1) units (records at ℓ = 2) of kept level-ℓ unit j are
    offsets[ℓ][j]:offsets[ℓ][j+1]."""
    K: int
    keep: np.ndarray
    n_deleted: int
    present: dict  # ℓ ≥ 2: which of the archive's level-ℓ units are kept
    offsets: dict
    level_values: list  # per level 1..K: name -> the archive's values at that level (records at level 1)
    level1: Level1Moments | None = None
    centering_means: dict = field(default_factory=dict)  # "NAME (level L)" -> the grand mean used
    _grand: tuple | None = None

    @property
    def summarised(self) -> bool:
        return self.level1 is not None

    @property
    def deleted_any(self) -> bool:
        return not bool(self.keep.all())

    def J(self, level: int) -> int:
        """Units kept at `level` (records kept at level 1)."""
        return int(self.offsets[2][-1]) if level == 1 else int(self.offsets[level].size - 1)

    def sizes(self, level: int) -> np.ndarray:
        """The kept level-(ℓ−1) units of each kept level-ℓ unit."""
        return np.diff(self.offsets[level])

    def positions(self, level: int) -> np.ndarray:
        """The archive's index of each kept level-ℓ unit."""
        return np.flatnonzero(self.present[level])

    def parents(self, level: int) -> np.ndarray:
        """The kept level-(ℓ+1) unit of each kept level-ℓ unit (record at ℓ = 1)."""
        return np.repeat(np.arange(self.J(level + 1)), self.sizes(level + 1))

    def moments(self) -> Moments:
        """Summarised: the level-1 moments of the level-2 units kept."""
        return self.level1.moments.take(self.positions(2)) if self.deleted_any else self.level1.moments

    def grand_moments(self) -> tuple:
        """Summarised: (N, mean, C) of all records kept, as moments.grand merges them."""
        if self._grand is None:
            self._grand = grand(self.moments())
        return self._grand

    def values(self, level: int, name: str) -> np.ndarray:
        """A variable's values over the records (level 1) or the units kept."""
        v = self.level_values[level - 1][name]
        if level == 1:
            return v[self.keep] if self.deleted_any else v
        return v[self.present[level]]

    def spans(self, low: int, level: int) -> np.ndarray:
        """Offsets of the kept level-`low` units (records at 1) of each kept level-`level` unit."""
        off = self.offsets[low + 1]
        for k in range(low + 2, level + 1):
            off = off[self.offsets[k]]
        return off

    def unit_mean(self, values: np.ndarray, low: int, level: int) -> np.ndarray:
        """Each kept level-`level` unit's mean of `values` over its level-`low` units."""
        off = self.spans(low, level)
        return np.add.reduceat(values, off[:-1]) / np.diff(off)

    def raw(self, col: Column) -> np.ndarray:
        """The column before centring: the variable, or the unit means of a lower level's variable;
        summarised, mean(X) of a level-1 X is the record-weighted mean of the level-2 units' means."""
        if col.mean_of is None:
            return self.values(col.level, col.name)
        if col.mean_of == 1 and self.summarised:
            m = self.moments()
            mean = m.mean[:, self.level1.names.index(col.name)]
            if col.level == 2:
                return mean.copy()
            off = self.spans(2, col.level)
            return np.add.reduceat(m.n * mean, off[:-1]) / np.add.reduceat(m.n, off[:-1])
        return self.unit_mean(self.values(col.mean_of, col.name), col.mean_of, col.level)

    def column(self, col: Column) -> np.ndarray:
        """The column as the model centres it (a view of the archive when uncentred); not for level 1
        when it is summarised (see level1_shift)."""
        v = self.raw(col)
        if col.centering == "grand":
            mean = float(v.mean())  # over records at level 1, over the units (each once) above
            self.centering_means[f"{col.label} (level {col.level})"] = mean
            return v - mean
        if col.centering == "group":
            return v - np.repeat(self.unit_mean(v, col.level, col.level + 1), self.sizes(col.level + 1))
        return v

    def level1_shift(self, col: Column) -> np.ndarray | float:
        """Summarised level 1: what centring subtracts from a level-1 column, per level-2 unit (group:
        the unit's own mean) or overall (grand: the records' mean, moments.grand); 0 uncentred. The
        within-unit spread C is unchanged by either."""
        if col.centering == "group":
            return self.moments().mean[:, self.level1.names.index(col.name)]
        if col.centering == "grand":
            mean = float(self.grand_moments()[1][self.level1.names.index(col.name)])
            self.centering_means[f"{col.label} (level 1)"] = mean
            return mean
        return 0.0


def _kept(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    present = counts > 0
    return present, np.concatenate(([0], np.cumsum(counts[present]))).astype(np.int64)


def frame(spec, archive: Archive, level1: Level1Moments | None = None, level2: dict | None = None) -> Frame:
    """The Frame of `spec` on the archive's records, or, given `level1`, on per-level-2-unit moments (the
    archive then has one stand-in record per level-2 unit; two levels may pass no archive but `level2`,
    each level-2 variable's values over level1's units). Records with a missing value in a level-1
    variable the model reads are deleted (HLM's analysis-time deletion), and units left empty with them."""
    K = spec.n_levels
    used1 = level1_variables(spec)
    if archive is None:
        level_values = [{}, dict(level2)]
        archive_offsets = {2: np.arange(level1.moments.n.size + 1)}
    else:
        if archive.n_levels != K:
            raise ModelError(f"the archive has {archive.n_levels} levels and the model {K}; give -1 ... "
                             f"-{archive.n_levels} equations")
        level_values = [{n: archive.levels[k].values[i] for i, n in enumerate(archive.names(k + 1))}
                        for k in range(K)]
        archive_offsets = {k: archive.levels[k - 1].offsets for k in range(2, K + 1)}
    if level1 is None:
        keep = np.ones(archive.n(1), dtype=bool)
        for name in used1:
            keep &= ~np.isnan(level_values[0][name])
        n_deleted = int((~keep).sum())
    else:
        keep = level1.moments.n > 0
        n_deleted = int(level1.n_deleted)
    if not keep.any():
        raise ModelError(f"every level-1 record has a missing value in {', '.join(used1)}; nothing is left to analyse")
    present, offsets = {}, {}
    below = keep
    for level in range(2, K + 1):
        off = archive_offsets[level]
        if below.all():
            counts = np.diff(off)
        else:
            cum = np.concatenate(([0], np.cumsum(below)))
            counts = cum[off[1:]] - cum[off[:-1]]
        present[level], offsets[level] = _kept(counts)
        below = present[level]
    return Frame(K, keep, n_deleted, present, offsets, level_values, level1)


# ---------------------------------------------------------------- K ≥ 3 levels: the nested data

@dataclass
class DesignLevels:
    """The design of a model of K ≥ 3 levels (a projection of its Frame). At three levels `data` is the
    engine's NestedData (HLM3's names: n2, unit2_ids, level2_positions, ...), a LevelsData above, and a
    LevelsSummary when level 1 is summarised."""
    spec: ModelSpec
    data: LevelsData
    unit_ids: tuple  # per level 2..K: the ids of the units kept
    positions: tuple  # per level 2..K: archive index of each unit kept
    n_deleted: int  # level-1 records dropped for missing values
    units_deleted: tuple  # per level 2..K
    centering_means: dict
    record_positions: np.ndarray | None = None  # archive index of each level-1 record kept

    @property
    def n(self) -> int:
        return self.data.N if isinstance(self.data, LevelsSummary) else int(self.data.y.size)

    def J(self, level: int) -> int:
        return len(self.unit_ids[level - 2])

    # HLM3's names
    n2 = property(lambda self: self.J(2))
    n3 = property(lambda self: self.J(3))
    unit2_ids = property(lambda self: self.unit_ids[0])
    unit3_ids = property(lambda self: self.unit_ids[1])
    units2_deleted = property(lambda self: self.units_deleted[0])
    units3_deleted = property(lambda self: self.units_deleted[1])
    level2_positions = property(lambda self: self.positions[0])
    level3_positions = property(lambda self: self.positions[1])


def _stacked(level: int, cols: list, J: int) -> np.ndarray:
    """The level's predictor matrix (J, columns), refused when a value is missing or infinite."""
    arr = np.column_stack(cols) if cols else np.empty((J, 0))
    if arr.size and not np.isfinite(arr).all():
        raise ModelError(f"a level-{level} predictor has missing values after deletion; fill them in or drop the "
                         "variable")
    return np.ascontiguousarray(arr, dtype=np.float64)


def design_levels(spec: ModelSpec, archive: Archive, level1: Level1Moments | None = None) -> DesignLevels:
    """The design from the archive's records, or, given `level1`, from per-level-2-unit moments:
    then level-1 centring is a shift of each unit's mean (moments.py's algebra), mean(X) of a
    level-1 X the record-weighted mean of the units' means, and the data a LevelsSummary."""
    f = frame(spec, archive, level1)
    K = f.K
    by_level = level_columns(spec)
    index = [{c: k for k, c in enumerate(cols)} for cols in by_level]
    preds = []
    if f.summarised:  # level 1 as moments: centring shifts each unit's mean, C is unchanged
        m1 = f.moments()
        at = [f.level1.names.index(c.name) for c in by_level[0]] + [f.level1.names.index(spec.outcome)]
        mean1 = m1.mean[:, at].copy()
        for k, c in enumerate(by_level[0]):
            mean1[:, k] -= f.level1_shift(c)
        level1_moments = Moments(m1.n.copy(), mean1, np.ascontiguousarray(m1.C[:, at][:, :, at]))
    else:
        preds.append(_stacked(1, [f.column(c) for c in by_level[0]], f.J(1)))
    for level in range(2, K + 1):
        preds.append(_stacked(level, [f.column(c) for c in by_level[level - 1]], f.J(level)))
    layout = gamma_layout(spec, index)
    parents = tuple(f.parents(level) for level in range(1, K))
    if f.summarised:
        data = LevelsSummary(level1_moments, tuple(preds), parents[1:], layout)
    else:
        y = f.values(1, spec.outcome)
        from ..engine.nested import LevelsData  # here: a two-level fit does not load the nested engine

        data = LevelsData(np.ascontiguousarray(y, dtype=np.float64), tuple(preds), parents, layout)
    positions = tuple(f.positions(level) for level in range(2, K + 1))
    unit_ids = tuple([archive.levels[level - 1].ids[j] for j in positions[level - 2]] for level in range(2, K + 1))
    return DesignLevels(spec, data, unit_ids, positions, f.n_deleted,
                        tuple(int((~f.present[level]).sum()) for level in range(2, K + 1)), f.centering_means,
                        np.flatnonzero(f.keep))


def design3(spec: ModelSpec, archive: Archive, level1: Level1Moments | None = None) -> DesignLevels:
    """design_levels at three levels, its data in the three-level engine's form (NestedData); with
    `level1`, the data stay a LevelsSummary (the records are not kept)."""
    from ..engine.nested import Beta, NestedData, NestedLayout, Pi

    d = design_levels(spec, archive, level1)
    data = d.data
    if not isinstance(data, LevelsSummary):
        pis = tuple(Pi(node.col, tuple(Beta(b.col, tuple(g.col for g in b.terms), b.random) for b in node.terms),
                       node.random) for node in data.layout)
        d.data = NestedData(y=data.y, A=data.predictors[0], X2=data.predictors[1], W3=data.predictors[2],
                            unit2=data.parents[0], unit3=data.parents[1], layout=NestedLayout(pis))
    return d
