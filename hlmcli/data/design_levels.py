"""The design of a model of K ≥ 3 levels: a ModelSpec and an archive of
K levels to the engine's LevelsData (NestedData at three levels), deletion and centring applied.
HLM3's centring, one level at a time:

  level ℓ   group(X): X minus the mean of X over the level-ℓ units of its level-(ℓ+1) unit (level 1:
            over the records of its level-2 unit; not at the top level);
            grand(X): X minus the mean over the level-ℓ units (records at level 1);
            mean(X) of a level-m variable (m < ℓ): the level-ℓ unit's mean of X over its level-m
            units (records when m = 1)
all computed over the records and units used in this analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.archive import Archive
from ..language.model import Centering, ModelSpec, Term
from ..errors import ModelError
from ..engine.moments import LevelsSummary, Moments
from ..engine.nested import Beta, Coefficient, LevelsData, NestedData, NestedLayout, Pi


@dataclass
class DesignLevels:
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


def _group_mean(values: np.ndarray, group: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Each group's mean of `values`, or its `weights`-weighted mean (e.g. of units' means, by their records)."""
    if weights is None:
        return np.bincount(group, weights=values, minlength=n) / np.bincount(group, minlength=n)
    return np.bincount(group, weights=weights * values, minlength=n) / np.bincount(group, weights=weights, minlength=n)


def _terms_by_level(spec: ModelSpec) -> list:
    """The predictors of the equations at each level 1..K (a level-d coefficient's equation is at level d+1)."""
    out: list[list[Term]] = [list(spec.level1)] + [[] for _ in range(spec.n_levels - 1)]
    for depth, idx, eq, names in spec.walk():
        out[depth].extend(eq.predictors)
    return out


def level1_variables(spec) -> list[str]:
    """The level-1 variables a model reads (outcome, level-1 predictors, X of a mean(X) of level 1),
    sorted: the columns a summarised engine reads, and those whose missing values delete a record."""
    return sorted({spec.outcome} | {t.name for terms in _terms_by_level(spec) for t in terms
                                     if (t.mean_of == 1) or (t.level == 1 and t.mean_of is None)})


@dataclass(frozen=True)
class Level1Moments:
    """Level 1 summarised per level-2 unit (the stream and Dask engines): `moments` of the level-1
    variables `names`, one row per record of the archive's level 1, which then holds one record
    per level-2 unit (engines_levels.py); records with a missing value in a model variable were
    deleted while summarising (n_deleted of them), so a unit may have n = 0."""
    names: list
    moments: Moments
    n_deleted: int


def _records_kept(spec: ModelSpec, archive: Archive, level1: Level1Moments | None) -> tuple[np.ndarray, int]:
    """(which level-1 records the model uses, how many were deleted): those complete on the model's
    level-1 variables; summarised (`level1`), the level-2 units with records left after deletion."""
    names1 = archive.names(1)
    used1 = set(level1_variables(spec))
    if level1 is None:
        keep = np.ones(archive.n(1), dtype=bool)
        for name in sorted(used1):
            keep &= ~np.isnan(archive.levels[0].values[names1.index(name)])
        n_deleted = int((~keep).sum())
    else:
        keep = level1.moments.n > 0
        n_deleted = int(level1.n_deleted)
    if not keep.any():
        raise ModelError(f"every level-1 record has a missing value in {', '.join(sorted(used1))}; nothing is left to fit")
    return keep, n_deleted


def _units_kept(archive: Archive, keep: np.ndarray, K: int) -> tuple[dict, list, dict, dict]:
    """The units kept, bottom up (those with a record kept below them), renumbered within each level:
    (present[ℓ], a mask over the archive's level-ℓ units; parents, each level's unit of every kept unit
    one level down; Js[ℓ], the number kept; up[(m, ℓ)], the level-ℓ unit of each level-m unit, records
    at m = 1)."""
    child = archive.parent(1)[keep]
    present, parents = {}, []
    for level in range(2, K + 1):
        has = np.bincount(child, minlength=archive.n(level)) > 0
        present[level] = has
        renum = np.cumsum(has) - 1
        parents.append(renum[child].astype(np.int64))
        if level < K:
            child = archive.parent(level)[has]
    Js = {1: int(keep.sum()), **{level: int(present[level].sum()) for level in range(2, K + 1)}}
    up = {(m, m): np.arange(Js[m]) for m in range(1, K + 1)}
    for m in range(1, K + 1):
        for level in range(m + 1, K + 1):
            up[(m, level)] = parents[level - 2][up[(m, level - 1)]]
    return present, parents, Js, up


def _values_kept(archive: Archive, keep: np.ndarray, present: dict, summarised: bool) -> dict:
    """{level: {name: its values over the records (level 1) or the units kept}}; none at level 1 when
    it is summarised (its moments stand in for the records)."""
    values = {1: {} if summarised else {n: archive.levels[0].values[k][keep] for k, n in enumerate(archive.names(1))}}
    for level in range(2, archive.n_levels + 1):
        values[level] = {n: archive.levels[level - 1].values[k][present[level]]
                         for k, n in enumerate(archive.names(level))}
    return values


def _centred_level1_moments(spec: ModelSpec, terms1: list, m1: Moments, col1: dict, means: dict) -> Moments:
    """Level 1 as moments (of the terms, then the outcome): centring shifts each unit's mean, by the
    records' mean (grand, recorded in `means`) or to 0 (group); C is unchanged."""
    n1 = m1.n
    at = [col1[t.name] for t in terms1] + [col1[spec.outcome]]
    mean1 = m1.mean[:, at].copy()
    for k, t in enumerate(terms1):
        if t.centering is Centering.GRAND:
            g = float(np.sum(n1 * mean1[:, k]) / np.sum(n1))
            means[f"{t.label} (level 1)"] = g
            mean1[:, k] -= g
        elif t.centering is Centering.GROUP:
            mean1[:, k] = 0.0
    return Moments(n1.copy(), mean1, np.ascontiguousarray(m1.C[:, at][:, :, at]))


def _level_columns(level: int, terms: list, column, J: int) -> tuple[dict, np.ndarray]:
    """({term: its column}, the level's predictor matrix): one column per distinct term, in the order given."""
    idx: dict = {}
    cols = []
    for t in terms:
        if t not in idx:
            idx[t] = len(cols)
            cols.append(column(t))
    arr = np.column_stack(cols) if cols else np.empty((J, 0))
    if arr.size and not np.isfinite(arr).all():
        raise ModelError(f"a level-{level} predictor has missing values after deletion; fill them in or drop the "
                         "variable")
    return idx, np.ascontiguousarray(arr, dtype=np.float64)


def _layout(spec: ModelSpec, index: list) -> tuple:
    """The engine's coefficient tree: each level-1 coefficient with its equation's terms, down to the
    γs, each naming its predictor's column at its level (`index[level - 1]`)."""
    K = spec.n_levels

    def node(eq, depth: int, col) -> Coefficient:
        # a level-`depth` coefficient: its column at level `depth`, its equation at level depth+1
        if depth == K:
            return Coefficient(col)
        kids = []
        for k in eq.present():
            c = None if k == 0 else index[depth][eq.predictors[k - 1]]
            kids.append(Coefficient(c) if depth + 1 == K else node(eq.terms[k], depth + 1, c))
        return Coefficient(col, tuple(kids), eq.random)

    return tuple(node(eq, 1, None if p == 0 else index[0][spec.level1[p - 1]])
                 for p, eq in enumerate(spec.equations) if eq is not None)


def design_levels(spec: ModelSpec, archive: Archive, level1: Level1Moments | None = None) -> DesignLevels:
    """The design from the archive's records, or, given `level1`, from per-level-2-unit moments:
    then level-1 centring is a shift of each unit's mean (moments.py's algebra), mean(X) of a
    level-1 X the record-weighted mean of the units' means, and the data a LevelsSummary."""
    K = spec.n_levels
    if archive.n_levels != K:
        raise ModelError(f"the archive has {archive.n_levels} levels and the model {K}; give -1 ... -{archive.n_levels} "
                         "equations")
    terms_by_level = _terms_by_level(spec)
    keep, n_deleted = _records_kept(spec, archive, level1)
    present, parents, Js, up = _units_kept(archive, keep, K)
    values = _values_kept(archive, keep, present, level1 is not None)
    if level1 is not None:  # per level-2 unit: the records' sums and counts (a mean of level-1 X pools them)
        m1 = level1.moments.take(np.flatnonzero(keep))
        col1 = {n: k for k, n in enumerate(level1.names)}
        n1 = m1.n
    means: dict[str, float] = {}

    def raw(term: Term) -> np.ndarray:
        if term.mean_of is None:
            return values[term.level][term.name]
        m = term.mean_of
        if m == 1 and level1 is not None:  # the record-weighted mean of the level-2 units' means
            return _group_mean(m1.mean[:, col1[term.name]], up[(1, term.level)], Js[term.level], weights=n1)
        return _group_mean(values[m][term.name], up[(m, term.level)], Js[term.level])

    def column(term: Term) -> np.ndarray:
        v = raw(term)
        if term.centering is Centering.GRAND:
            mean = float(v.mean())
            means[f"{term.label} (level {term.level})"] = mean
            return v - mean
        if term.centering is Centering.GROUP:
            g = up[(term.level, term.level + 1)]
            return v - _group_mean(v, g, Js[term.level + 1])[g]
        return v.copy()

    index: list[dict] = []
    preds = []
    if level1 is not None:  # level 1 as moments: centring shifts each unit's mean, C is unchanged
        terms1 = list(dict.fromkeys(terms_by_level[0]))
        index.append({t: k for k, t in enumerate(terms1)})
        preds.append(np.empty((0, len(terms1))))
        level1_moments = _centred_level1_moments(spec, terms1, m1, col1, means)
    for level, terms in enumerate(terms_by_level, 1):
        if level > 1 or level1 is None:
            idx, arr = _level_columns(level, terms, column, Js[level])
            index.append(idx)
            preds.append(arr)
    layout = _layout(spec, index)
    if level1 is None:
        y = archive.levels[0].values[archive.names(1).index(spec.outcome)][keep]
        data = LevelsData(np.ascontiguousarray(y, dtype=np.float64), tuple(preds), tuple(parents), layout)
    else:
        data = LevelsSummary(level1_moments, tuple(preds[1:]), tuple(parents[1:]), layout)
    positions = tuple(np.flatnonzero(present[level]) for level in range(2, K + 1))
    unit_ids = tuple([archive.levels[level - 1].ids[j] for j in positions[level - 2]] for level in range(2, K + 1))
    return DesignLevels(spec, data, unit_ids, positions, n_deleted,
                        tuple(int((~present[level]).sum()) for level in range(2, K + 1)), means, np.flatnonzero(keep))


# ---------------------------------------------------------------- three levels (HLM3's names)

@dataclass
class Design3:
    spec: ModelSpec
    data: NestedData  # or a LevelsSummary (stream and Dask engines)
    unit2_ids: list[str]
    unit3_ids: list[str]
    n_deleted: int  # level-1 records dropped for missing values (analysis-time deletion)
    units2_deleted: int
    units3_deleted: int
    level2_positions: np.ndarray  # archive level-2 unit index of each unit kept
    level3_positions: np.ndarray
    centering_means: dict[str, float]  # grand means used, "NAME (level L)" -> mean
    record_positions: np.ndarray | None = None  # archive index of each level-1 record kept

    @property
    def n(self) -> int:
        return self.data.N if isinstance(self.data, LevelsSummary) else int(self.data.y.size)

    @property
    def n2(self) -> int:
        return len(self.unit2_ids)

    @property
    def n3(self) -> int:
        return len(self.unit3_ids)


def design3(spec: ModelSpec, archive: Archive, level1: Level1Moments | None = None) -> Design3:
    """design_levels at three levels, in HLM3's names (NestedData, level-2 and level-3 ids); with
    `level1`, the data stay a LevelsSummary (the records are not kept)."""
    d = design_levels(spec, archive, level1)
    data = d.data
    if isinstance(data, LevelsSummary):
        nested = data
    else:
        pis = tuple(Pi(node.col, tuple(Beta(b.col, tuple(g.col for g in b.terms), b.random) for b in node.terms),
                       node.random) for node in data.layout)
        nested = NestedData(y=data.y, A=data.predictors[0], X2=data.predictors[1], W3=data.predictors[2],
                            unit2=data.parents[0], unit3=data.parents[1], layout=NestedLayout(pis))
    return Design3(spec=spec, data=nested, unit2_ids=d.unit_ids[0], unit3_ids=d.unit_ids[1], n_deleted=d.n_deleted,
                   units2_deleted=d.units_deleted[0], units3_deleted=d.units_deleted[1],
                   level2_positions=d.positions[0], level3_positions=d.positions[1], centering_means=d.centering_means,
                   record_positions=d.record_positions)
