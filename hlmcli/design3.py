"""Three-level design: a ModelSpec3 and an Archive3 to the engine's NestedData, deletion and centring applied.

Centring (HLM3's meaning of each, computed over the records and units used in this analysis):
  level 1  group(X): X minus the mean of X over the record's level-2 unit;  grand(X): minus the mean over records
  level 2  group(W): W minus the mean of W over the level-2 units of its level-3 unit;
           grand(W): minus the mean over level-2 units;  mean(X): the level-2 unit's mean of level-1 X
  level 3  grand(Z): Z minus the mean over level-3 units;  mean(X): the level-3 unit's mean of X over its
           level-2 units (X at level 2) or over its records (X at level 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .archive_levels import ArchiveLevels as Archive3
from .equations3 import Centering, ModelSpec3, Term3, Variables3
from .errors import ModelError
from .nested import Beta, NestedData, NestedLayout, Pi


def variables3_of(archive: Archive3) -> Variables3:
    return Variables3(tuple(archive.level1_names), tuple(archive.level2_names), tuple(archive.level3_names))


@dataclass
class Design3:
    spec: ModelSpec3
    data: NestedData
    unit2_ids: list[str]
    unit3_ids: list[str]
    n_deleted: int  # level-1 records dropped for missing values (analysis-time deletion)
    units2_deleted: int
    units3_deleted: int
    level2_positions: np.ndarray  # archive level-2 unit index of each unit kept
    level3_positions: np.ndarray
    centering_means: dict[str, float]  # grand means used, "NAME (level L)" -> mean

    @property
    def n(self) -> int:
        return int(self.data.y.size)

    @property
    def n2(self) -> int:
        return len(self.unit2_ids)

    @property
    def n3(self) -> int:
        return len(self.unit3_ids)


def _group_mean(values: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
    """Mean of `values` within each of n groups (every group non-empty)."""
    return np.bincount(group, weights=values, minlength=n) / np.bincount(group, minlength=n)


def design3(spec: ModelSpec3, archive: Archive3) -> Design3:
    y_all = archive.level1[archive.level1_names.index(spec.outcome)]
    used1 = {spec.outcome} | {t.name for t in spec.level1}
    for p in spec.present_pis():
        used1 |= {t.name for t in spec.pis[p].predictors if t.mean_of == 1}
        for b in spec.pis[p].betas:
            used1 |= {t.name for t in b.predictors if t.mean_of == 1}
    keep = np.ones(archive.n_level1, dtype=bool)
    for name in sorted(used1):
        keep &= ~np.isnan(archive.level1[archive.level1_names.index(name)])
    n_deleted = int((~keep).sum())
    if not keep.any():
        raise ModelError(f"every level-1 record has a missing value in {', '.join(sorted(used1))}; nothing is left to fit")
    unit2_all = archive.unit2_of_record
    unit2_kept = unit2_all[keep]
    present2 = np.bincount(unit2_kept, minlength=archive.n_level2) > 0
    parent3 = archive.unit3_of_unit2
    present3 = np.bincount(parent3[present2], minlength=archive.n_level3) > 0
    renum2 = np.cumsum(present2) - 1
    renum3 = np.cumsum(present3) - 1
    unit2 = renum2[unit2_kept].astype(np.int64)
    unit3 = renum3[parent3[present2]].astype(np.int64)
    J2, J3 = int(present2.sum()), int(present3.sum())
    rec3 = unit3[unit2]  # level-3 unit of each record
    l1 = {n: archive.level1[k][keep] for k, n in enumerate(archive.level1_names)}
    l2 = {n: archive.level2[k][present2] for k, n in enumerate(archive.level2_names)}
    l3 = {n: archive.level3[k][present3] for k, n in enumerate(archive.level3_names)}
    means: dict[str, float] = {}

    def raw(term: Term3) -> np.ndarray:
        """The term's values at its own level, before centring."""
        if term.mean_of is None:
            return (l1, l2, l3)[term.level - 1][term.name]
        if term.level == 2:  # mean of a level-1 variable over the level-2 unit's records
            return _group_mean(l1[term.name], unit2, J2)
        if term.mean_of == 2:  # level 3: mean over the level-3 unit's level-2 units
            return _group_mean(l2[term.name], unit3, J3)
        return _group_mean(l1[term.name], rec3, J3)

    def column(term: Term3) -> np.ndarray:
        v = raw(term)
        if term.centering is Centering.GRAND:
            m = float(v.mean())
            means[f"{term.label} (level {term.level})"] = m
            return v - m
        if term.centering is Centering.GROUP:
            if term.level == 1:
                return v - _group_mean(v, unit2, J2)[unit2]
            return v - _group_mean(v, unit3, J3)[unit3]
        return v.copy()

    def columns_of(terms: list[Term3]) -> tuple[np.ndarray, dict]:
        index: dict = {}
        cols = []
        for t in terms:
            if t not in index:
                index[t] = len(cols)
                cols.append(column(t))
        n = (unit2.size, J2, J3)[terms[0].level - 1] if terms else 0
        return (np.column_stack(cols) if cols else np.empty((n, 0))), index

    A, a_index = columns_of(list(spec.level1))
    if not spec.level1:
        A = np.empty((unit2.size, 0))
    terms2 = [t for p in spec.present_pis() for t in spec.pis[p].predictors]
    X2, x_index = columns_of(terms2)
    if not terms2:
        X2 = np.empty((J2, 0))
    terms3 = [t for p in spec.present_pis() for q in spec.present_betas(p) for t in spec.pis[p].betas[q].predictors]
    W3, w_index = columns_of(terms3)
    if not terms3:
        W3 = np.empty((J3, 0))
    pis = []
    for p in spec.present_pis():
        eq = spec.pis[p]
        betas = []
        for q in spec.present_betas(p):
            b = eq.betas[q]
            l3cols = ((None,) if b.intercept else ()) + tuple(w_index[t] for t in b.predictors)
            betas.append(Beta(None if q == 0 else x_index[eq.predictors[q - 1]], l3cols, b.random))
        pis.append(Pi(None if p == 0 else a_index[spec.level1[p - 1]], tuple(betas), eq.random))
    for name, col in (("level-1", A), ("level-2", X2), ("level-3", W3)):
        if col.size and not np.isfinite(col).all():
            raise ModelError(f"a {name} predictor has missing values after deletion; fill them in or drop the variable")
    data = NestedData(y=np.ascontiguousarray(y_all[keep], dtype=np.float64), A=np.ascontiguousarray(A, dtype=np.float64),
                      X2=np.ascontiguousarray(X2, dtype=np.float64), W3=np.ascontiguousarray(W3, dtype=np.float64),
                      unit2=unit2, unit3=unit3, layout=NestedLayout(tuple(pis)))
    return Design3(spec=spec, data=data,
                   unit2_ids=[archive.unit2_ids[j] for j in np.flatnonzero(present2)],
                   unit3_ids=[archive.unit3_ids[k] for k in np.flatnonzero(present3)],
                   n_deleted=n_deleted, units2_deleted=int((~present2).sum()), units3_deleted=int((~present3).sum()),
                   level2_positions=np.flatnonzero(present2), level3_positions=np.flatnonzero(present3),
                   centering_means=means)
