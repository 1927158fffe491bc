"""Sampling weights: which columns, checked and normalised for the records and units a design keeps.

The fit itself is multilevel pseudo-maximum likelihood (unitsolve.py's docstring): level-1 weights
enter the per-unit cross-products, level-2 weights multiply each unit's contribution.

Normalisation (`normalize`):
- ``none``: the weights as given;
- ``cluster``: level-1 weights scaled to sum to n_j (the unit's records) in each unit, level-2
  weights scaled to sum to J (Pfeffermann et al. 1998, "method 2");
- ``total``: level-1 weights scaled to sum to N over all records, level-2 weights to sum to J.
Scaling the level-2 weights by a constant changes no estimate and no sandwich SE; it changes the
pseudo-deviance only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError
from ..io.archive import unknown_column

NORMALIZATIONS = ("none", "cluster", "total")
# The one rule for the weights of every level (man page, README): _check says why zero is refused.
WEIGHT_RULE = ("weights must be positive numbers at every level; a record or unit of weight 0 adds nothing to the "
               "pseudo-likelihood but would still count in n_j, J and the normalisation, so drop it from the data")
# Which normalisation HLM 7 applies is not verified (see README): 'cluster' is the documented
# candidate (level-1 weights to n_j within each unit, level-2 weights to J).
DEFAULT_NORMALIZATION = "cluster"
# Why a weighted fit gets no likelihood-ratio test: the pseudo-deviance is -2 times a weighted sum of
# log-likelihoods, and the difference of two such sums is not χ²-distributed under H0 (it is a
# weighted sum of χ²(1)s with unknown weights; Rabe-Hesketh & Skrondal 2006). Wald tests with the
# sandwich covariance are valid, so they are what a weighted fit offers.
NO_LIKELIHOOD_RATIO = ("with sampling weights the fit maximises a pseudo-likelihood, whose deviance difference has no "
                       "chi-square distribution, so no likelihood-ratio test is possible; test the fixed effects with "
                       "Wald tests instead, e.g. --test 'g01 = 0' (they use the robust covariance)")


@dataclass(frozen=True)
class WeightSpec:
    level1: str | None = None
    level2: str | None = None
    normalize: str = DEFAULT_NORMALIZATION

    @property
    def any(self) -> bool:
        return bool(self.level1 or self.level2)


@dataclass
class Weights:
    spec: WeightSpec
    w1: np.ndarray | None  # (N,) level-1 weights of the records kept, normalised; None = no level-1 weights
    w2: np.ndarray  # (J,) level-2 weights of the units kept, normalised (ones when none are given)
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        def summary(w):
            return None if w is None else {"sum": float(w.sum()), "min": float(w.min()), "max": float(w.max())}

        return {"level1": self.spec.level1, "level2": self.spec.level2, "normalize": self.spec.normalize,
                "level1_summary": summary(self.w1), "level2_summary": summary(self.w2) if self.spec.level2 else None,
                "estimator": "multilevel pseudo-maximum likelihood (Rabe-Hesketh & Skrondal 2006)",
                "notes": list(self.notes),
                "standard_errors": "robust (sandwich) clustered on level-2 units, as WeMix: J/(J-1) small-sample factor"}


def _source_name(archive, role: str, fallback: str) -> str:
    for s in getattr(archive, "sources", []) or []:
        if s.role == role:
            return s.name
    return fallback


def _check(values: np.ndarray, where, file: str, column: str) -> None:
    """Refuse a missing, non-finite, negative or zero weight, naming its row. One rule at every level:
    a weight of 0 raises the record's (unit's) likelihood term to the power 0, so it adds nothing to the
    pseudo-likelihood, yet the record (unit) would still count in n_j, N and J, which set the cluster and
    total normalisations, the sandwich's J/(J-1) and the degrees of freedom; dropping it from the data
    is the fit it stands for."""
    bad = ~np.isfinite(values) | (values <= 0)
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    v = values[i]
    what = ("missing" if np.isnan(v) else "not finite" if not np.isfinite(v) else "negative" if v < 0
            else "zero")
    raise ModelError(f"{file}: column {column}: the weight of {where(i)} is {what} ({v:g}); {WEIGHT_RULE} "
                     f"({int(bad.sum())} bad value{'s' if bad.sum() != 1 else ''} in all)")


def resolve(spec: WeightSpec, archive, design) -> Weights:
    """The weights of the records and units `design` keeps, checked and normalised."""
    if spec.normalize not in NORMALIZATIONS:
        raise ModelError(f"--normalize {spec.normalize}: use one of {', '.join(NORMALIZATIONS)}")
    offsets = design.offsets
    J, N = design.n_units, design.n
    w1 = None
    if spec.level1:
        name = _find(archive, spec.level1, archive.level1_names, "level-1", archive.level2_names)
        col = archive.level1_column(name)
        pos = design.record_positions
        w1 = np.array(col if pos is None else col[pos], dtype=float)
        file = _source_name(archive, "level-1", "the level-1 file")

        def where(i):
            j = int(np.searchsorted(offsets, i, side="right") - 1)
            rec = int(i - offsets[j] + 1)
            arch = int(pos[i] if pos is not None else i) + 1
            return f"record {rec} of unit {design.unit_ids[j]} (archive record {arch})"

        _check(w1, where, file, name)
        sums = np.add.reduceat(w1, offsets[:-1])
        sizes = np.diff(offsets).astype(float)
        if spec.normalize == "cluster":
            w1 = w1 * np.repeat(sizes / sums, np.diff(offsets))
        elif spec.normalize == "total":
            w1 = w1 * (N / w1.sum())
    if spec.level2:
        name = _find(archive, spec.level2, archive.level2_names, "level-2", archive.level1_names)
        w2 = np.array(archive.level2_column(name)[design.unit_positions], dtype=float)
        file = _source_name(archive, "level-2", "the level-2 file")
        _check(w2, lambda j: f"unit {design.unit_ids[j]}", file, name)
        if spec.normalize in ("cluster", "total"):
            w2 = w2 * (J / w2.sum())
    else:
        w2 = np.ones(J)
    return Weights(spec, w1, w2)


def _find(archive, name: str, names: list[str], level: str, other: list[str]) -> str:
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    hint = (f"; {name} is a {'level-2' if level == 'level-1' else 'level-1'} variable" if name.lower() in
            {n.lower() for n in other} else "")
    raise unknown_column(archive, name, ModelError(f"the {level} weight {name} is not a {level} variable{hint}; {level} "
                                                  f"variables: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"))


def weighting_lines(weights: Weights | None) -> list[str]:
    """HLM's "Weighting Specification" block (layout as HLM 6/7 print it) and how the fit used them."""
    if weights is None:
        return []
    sp = weights.spec
    normalized = "yes" if sp.normalize != "none" else "no"

    def row(level, name):
        return f" {level:<17}{'yes' if name else 'no':<10}{name or '':<14}{normalized if name else ''}".rstrip()

    lines = ["", " Weighting Specification", " -----------------------",
             "                        Weight", "                        Variable",
             "               Weighting?   Name        Normalized?",
             row("Level 1", sp.level1), row("Level 2", sp.level2), row("Precision", None), ""]
    how = {"none": "as given", "cluster": "level-1 weights scaled to sum to n_j in each unit, level-2 weights to sum to J",
           "total": "level-1 weights scaled to sum to N, level-2 weights to sum to J"}[sp.normalize]
    lines += [f" Normalization: {sp.normalize} ({how})",
              " Estimation: multilevel pseudo-maximum likelihood (Rabe-Hesketh & Skrondal 2006)",
              " With sampling weights the robust standard errors (sandwich, clustered on level-2 units)",
              " are the ones to report; the model-based ones assume the weights carry no information."]
    lines += [f" Note: {n}" for n in weights.notes]
    return lines


# ---------------------------------------------------------------- K ≥ 3 levels (nested.py's pseudo-likelihood)

@dataclass(frozen=True)
class LevelsWeightSpec:
    """The weight column of each level 1..K (None: no weights there) and the normalisation. The
    weights are conditional, as WeMix's mix(cWeights = TRUE) takes them: a record's given its level-2
    unit, a level-ℓ unit's given its level-(ℓ+1) unit, the top units' as they are.
    Normalisation, generalising the two-level choices level by level:
    - ``none``: as given;
    - ``cluster``: the weights of level ℓ < K scaled to sum, within each level-(ℓ+1) unit, to the number
      of its level-ℓ members (records at ℓ = 1); the top level's to J_K;
    - ``total``: the weights of each level scaled to sum to that level's count (N at level 1).
    Scaling the top weights by a constant changes no estimate and no sandwich SE (the pseudo-deviance
    only); the lower levels' scale does change the estimates."""
    names: tuple  # (level-1 name or None, level-2 ..., level-K)
    normalize: str = DEFAULT_NORMALIZATION

    @property
    def any(self) -> bool:
        return any(self.names)


@dataclass
class LevelsWeights:
    spec: LevelsWeightSpec
    weights: tuple  # per level 1..K: the normalised weights of the records/units kept, None where not given
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        def summary(w):
            return None if w is None else {"sum": float(w.sum()), "min": float(w.min()), "max": float(w.max())}

        return {"levels": [{"level": k, "variable": n, "summary": summary(w)}
                           for k, (n, w) in enumerate(zip(self.spec.names, self.weights), start=1)],
                "normalize": self.spec.normalize, "conditional": True,
                "estimator": "multilevel pseudo-maximum likelihood (Rabe-Hesketh & Skrondal 2006), as WeMix's mix()",
                "notes": list(self.notes),
                "standard_errors": (f"robust (sandwich) clustered on level-{len(self.weights)} units, as WeMix: "
                                    "J/(J-1) small-sample factor")}


def resolve_levels(spec: LevelsWeightSpec, archive, design) -> LevelsWeights:
    """The weights of the records and units a DesignLevels keeps, checked and normalised (see
    LevelsWeightSpec). Every weight must be positive, at every level (_check says why)."""
    if spec.normalize not in NORMALIZATIONS:
        raise ModelError(f"--normalize {spec.normalize}: use one of {', '.join(NORMALIZATIONS)}")
    from ..engine.nested import as_levels

    K = archive.n_levels
    if len(spec.names) != K:
        raise ModelError(f"a {K}-level model takes weights for levels 1..{K} only")
    parents = [np.asarray(p) for p in as_levels(design.data).parents]
    unit_ids, positions = _design_units(design)
    out = []
    for level, name in enumerate(spec.names, start=1):
        if not name:
            out.append(None)
            continue
        where_else = next((k for k in range(1, K + 1) if k != level
                           and name.lower() in {n.lower() for n in archive.names(k)}), None)
        by_lower = {n.lower(): n for n in archive.names(level)}
        if name.lower() not in by_lower:
            hint = f"; {name} is a level-{where_else} variable" if where_else else ""
            names = archive.names(level)
            raise unknown_column(archive, name, ModelError(
                f"the level-{level} weight {name} is not a level-{level} variable{hint}; level-{level} "
                f"variables: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"))
        col_name = by_lower[name.lower()]
        values = archive.levels[level - 1].values[archive.names(level).index(col_name)]
        file = _source_name(archive, f"level-{level}", f"the level-{level} file")
        if level == 1:
            pos = design.record_positions
            w = np.array(values if pos is None else values[pos], dtype=float)
            def where(i, unit_ids=unit_ids[0], pos=pos):
                arch = int(pos[i] if pos is not None else i) + 1
                return f"record {arch} (level-2 unit {unit_ids[int(parents[0][i])]})"
        else:
            w = np.array(values[positions[level - 2]], dtype=float)
            ids = unit_ids[level - 2]

            def where(i, ids=ids, level=level):
                return f"level-{level} unit {ids[i]}"
        _check(w, where, file, col_name)
        parent = parents[level - 1] if level < K else np.zeros(w.size, dtype=np.int64)
        n_parents = int(parent.max()) + 1
        sums = np.bincount(parent, weights=w, minlength=n_parents)
        if spec.normalize == "cluster" and level < K:
            counts = np.bincount(parent, minlength=n_parents).astype(float)
            w = w * (counts / sums)[parent]
        elif spec.normalize in ("cluster", "total"):
            w = w * (w.size / w.sum())
        out.append(w)
    return LevelsWeights(spec, tuple(out))


def _design_units(design) -> tuple:
    """(unit ids, archive positions) per level 2..K of a DesignLevels."""
    if hasattr(design, "unit_ids"):
        return design.unit_ids, design.positions
    return (design.unit2_ids, design.unit3_ids), (design.level2_positions, design.level3_positions)


def weighted_data(design, weights: "LevelsWeights | None"):
    """The design's LevelsData with the weights attached (unchanged when unweighted)."""
    from dataclasses import replace

    from ..engine.nested import as_levels

    data = as_levels(design.data)
    w = levels_data_weights(weights)
    return data if w is None else replace(data, weights=w)


def levels_weighting_lines(weights: LevelsWeights | None) -> list[str]:
    """HLM's "Weighting Specification" block with a row per level, and how the fit used the weights."""
    if weights is None:
        return []
    sp = weights.spec
    K = len(sp.names)
    normalized = "yes" if sp.normalize != "none" else "no"

    def row(level, name):
        return f" {level:<17}{'yes' if name else 'no':<10}{name or '':<14}{normalized if name else ''}".rstrip()

    lines = ["", " Weighting Specification", " -----------------------",
             "                        Weight", "                        Variable",
             "               Weighting?   Name        Normalized?"]
    lines += [row(f"Level {k}", n) for k, n in enumerate(sp.names, start=1)] + [row("Precision", None), ""]
    how = {"none": "as given",
           "cluster": f"each level's weights scaled to sum to the number of its units within each unit above, "
                      f"level-{K} weights to sum to J",
           "total": "each level's weights scaled to sum to that level's number of records or units"}[sp.normalize]
    lines += [f" Normalization: {sp.normalize} ({how})",
              " The weights are conditional on the unit above (a record's given its level-2 unit, ...).",
              " Estimation: multilevel pseudo-maximum likelihood (Rabe-Hesketh & Skrondal 2006), as WeMix",
              f" With sampling weights the robust standard errors (sandwich, clustered on level-{K} units)",
              " are the ones to report; the model-based ones assume the weights carry no information."]
    lines += [f" Note: {n}" for n in weights.notes]
    return lines


def levels_data_weights(weights: LevelsWeights | None):
    """The weights tuple nested.LevelsData takes (None when unweighted)."""
    if weights is None or not any(w is not None for w in weights.weights):
        return None
    return weights.weights
