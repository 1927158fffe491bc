"""The analysis of a linear model of three or four levels and the views of it that `Results`
(results.LevelsResults: the same accessors, text, JSON, tables, tests and residual files as a two-level
fit), tables.py, plots.py and compare.py read, from the K-level design and the nested engine's fit. It
imports none of them, so each can import it.

At three levels the report keeps HLM3's forms (report_levels' schema 3 text and JSON); at four it is
HLM4's (schema 4). Everything else here is level-generic: the fixed effects and τ blocks are read
through the K-level form of the model (`ModelSpec`), whose γ order and τ orders are the engine's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ModelError
from .lazy import lazy

pd = lazy("pandas")  # only the tables and residual files need it: a fit that prints text does not load it

if TYPE_CHECKING:  # pragma: no cover
    from .engine.nested import NestedFit


@dataclass
class LevelsAnalysis:
    """The analysis of a K-level model (K ≥ 3): its spec (a ModelSpec of K levels), its design, the certified fit and the extras the options asked for (Wald tests of γ and
    the likelihood-ratio test against a prior deviance), JSON-ready."""

    spec: object
    design: object
    fit: NestedFit
    extras: dict = field(default_factory=dict)
    weighting: dict = field(default_factory=dict)  # levels_combined.weighting_meta: the weights' lines and record
    hglm: object = None  # analysis.hglm_levels.HGLMLevels: a binary, binomial or count outcome (PQL)

    @property
    def n_levels(self) -> int:
        return self.fit.n_levels

    @property
    def levels_spec(self):
        """The model in its K-level form (the same equations, γ order and τ orders as the engine's)."""
        return self.spec


# ---------------------------------------------------------------- labels

def label_of(idx, n_levels: int, ascii_only: bool = False) -> str:
    """A fixed effect's label as the output prints it: γ000 (g000), γ1,10,0 with HLM 7's comma rule."""
    from .language.equations_levels import COEF_LETTERS, symbol

    letter = COEF_LETTERS[n_levels - 1]
    return letter + symbol(letter, idx)[1:] if ascii_only else symbol(letter, idx)


def levels_extras(analysis: LevelsAnalysis, tests: Sequence[str] = (), prior_deviance: float | None = None,
                  prior_params: int | None = None, robust_only: bool = False, constraints=None) -> dict:
    """The Wald tests of γ (model-based and robust covariance) and the likelihood-ratio test against a
    prior model's deviance, as a two-level fit's extras. robust_only (sampling weights): the sandwich
    test only, and no likelihood-ratio test (a pseudo-likelihood has none). constraints (--constrain):
    the tests are of the free γs (constrained.free_tests)."""
    from .analysis.pipeline import tests_of_gamma
    from .language.hypotheses import parse_test

    fit = analysis.fit
    hypotheses = [parse_test(t, analysis.levels_spec) for t in tests]
    if constraints is not None:
        from .analysis.constrained import free_tests

        return free_tests(constraints, hypotheses, fit.gamma, fit.cov_gamma, fit.cov_gamma_robust, prior_deviance,
                          prior_params, float(fit.deviance), int(fit.n_params), robust_only=robust_only)
    return tests_of_gamma(hypotheses, fit.gamma, fit.cov_gamma, fit.cov_gamma_robust, prior_deviance, prior_params,
                          float(fit.deviance), int(fit.n_params), robust_only=robust_only)


def information_criteria_levels(fit: NestedFit, n_records: int) -> tuple[int, float, float]:
    """(k, AIC, BIC) as lme4 counts them for lmer: every γ, every τ entry and σ², under REML too; BIC
    with log N (level-1 records)."""
    free = getattr(fit, "fixed_map", None)  # --constrain: the free γs are the parameters
    k = int(fit.gamma.size if free is None else free.shape[1]) + sum(t.shape[0] * (t.shape[0] + 1) // 2 for t in fit.taus) + 1
    deviance = float(fit.deviance)
    return k, deviance + 2 * k, deviance + k * math.log(n_records)


# ---------------------------------------------------------------- one view of either JSON schema

def fixed_rows(doc: dict) -> list[dict]:
    """The fixed effects of a schema 3 or 4 document, in one form: label, path, estimate, se, t, df, p
    and the robust columns."""
    out = []
    for f in doc["fixed_effects"]:
        if doc["levels"] == 3:
            label, path = f["gamma"], [f["coefficient"], f["level2_predictor"], f["level3_predictor"]]
        else:
            label, path = f["label"], list(f["path"])
        out.append({"label": label, "path": path, "estimate": f["estimate"], "se": f["se"], "t": f["t"],
                    "df": f["df"], "p": f["p_value"], "robust_se": f["robust_se"], "robust_t": f["robust_t"],
                    "robust_p": f["robust_p_value"]})
    return out


def tau_blocks(doc: dict) -> list[dict]:
    """One block per level 2..K: level, coefficients, labels, matrix, reliability, chi2 (HLM's tests)."""
    if doc["levels"] == 3:
        return [{"level": level, **{k: doc[key][k] for k in ("coefficients", "labels", "matrix", "reliability", "chi2")}}
                for level, key in ((2, "tau_pi"), (3, "tau_beta"))]
    return [{k: b[k] for k in ("level", "coefficients", "labels", "matrix", "reliability", "chi2")}
            for b in doc["random_effects"]]


def n_units(doc: dict) -> dict:
    """{level: count} for levels 1..K."""
    if doc["levels"] == 3:
        return {1: doc["n_level1"], 2: doc["n_level2"], 3: doc["n_level3"]}
    return {int(k[5:]): v for k, v in doc["n_units"].items()}


def term_of(path: Sequence[str]) -> str:
    """A fixed effect's name as in R's summaries: the product of the non-intercept names along its path."""
    names = [n for n in path if not re.fullmatch(r"INTRCPT\d", n)]
    return ":".join(names) if names else "(Intercept)"


def table_view(doc: dict) -> dict:
    """A schema 3 or 4 document in the keys the paper tables and `compare` read (tables.py, terms.py):
    fixed effects with their R term, path and HLM label; the random effects of every level as one
    block-diagonal τ (random effects of different levels are independent) with each one's level,
    lme4 grouping factor and R name; variance components with HLM's χ² tests, then level 1; N per
    level; AIC and BIC as lme4 counts them."""
    fixed = [{"gamma": f["label"], "term": term_of(f["path"]), "path": f["path"], "coefficient": f["path"][0],
              "predictor": "/".join(f["path"][1:]), "estimate": f["estimate"], "se": f["se"], "t": f["t"],
              "df": f["df"], "p": f["p"], "robust_se": f["robust_se"], "robust_t": f["robust_t"],
              "robust_p": f["robust_p"]} for f in fixed_rows(doc)]
    blocks = tau_blocks(doc)
    ids = [doc["ids"][f"level{k}"] for k in range(2, doc["levels"] + 1)]
    names, r_names, levels, groups, components = [], [], [], [], []
    for block in blocks:
        group = ":".join(reversed(ids[block["level"] - 2:]))  # lme4's nested factor, top level first
        for k, (name, label) in enumerate(zip(block["coefficients"], block["labels"])):
            names.append(f"level-{block['level']} {name}")
            r_names.append(term_of(name.split("/")))
            levels.append(block["level"])
            groups.append(group)
            variance = block["matrix"][k][k]
            c = block["chi2"][k] if k < len(block["chi2"]) else {}
            components.append({"level": block["level"], "effect": names[-1], "label": label,
                               "sd": math.sqrt(max(variance, 0.0)), "variance": variance, "df": c.get("df"),
                               "chi2": c.get("chi2"), "p": c.get("p")})
    components.append({"level": 1, "effect": "level-1", "label": "e", "sd": math.sqrt(doc["sigma2"]),
                       "variance": doc["sigma2"], "df": None, "chi2": None, "p": None})
    tau = np.zeros((len(names), len(names)))
    at = 0
    for block in blocks:
        q = len(block["coefficients"])
        tau[at:at + q, at:at + q] = np.array(block["matrix"], dtype=float).reshape(q, q)
        at += q
    counts = n_units(doc)
    # each --constrain restriction removes a γ (the table still lists it, tied)
    free = len(fixed) - doc.get("constraints", {}).get("n_restrictions", 0)
    k = free + sum(len(b["coefficients"]) * (len(b["coefficients"]) + 1) // 2 for b in blocks) + 1
    deviance = doc["deviance"]
    view = {"levels": doc["levels"], "method": doc["method"], "outcome": doc["outcome"], "fixed_effects": fixed,
            "random_coefficients": names, "r_names": r_names, "tau_levels": levels, "tau_groups": groups,
            "tau": tau.tolist(), "variance_components": components, "sigma2": doc["sigma2"],
            "deviance": deviance, "n_params": doc["n_params"],  # no deviance, AIC or BIC for PQL (HGLM)
            "aic": None if deviance is None else deviance + 2 * k,
            "bic": None if deviance is None else deviance + k * math.log(counts[1]), "n_level1": counts[1],
            "n_level2": counts[2],
            "n_units": counts, "converged": doc["converged"], "certificate": doc.get("certificate"),
            "lme4_formula": doc.get("lme4_formula")}
    for key in ("hypothesis_tests", "deviance_test", "weights", "constraints", "constraint_test"):
        if key in doc:
            view[key] = doc[key]
    return view


# ---------------------------------------------------------------- level-1 fitted values

def level1_fitted(data, fit: NestedFit) -> tuple[np.ndarray, np.ndarray]:
    """(fixed part Xγ, EB fitted value Xγ + Zb̂) of every record. Walks the coefficient tree: a level-d
    coefficient of a level-d unit is Σ (its predictors × the level-(d+1) coefficients of the unit's
    parent) plus its EB residual when it is random; level-1 records weigh the π's by their a's."""
    from .engine.nested import as_levels

    data = as_levels(data)
    K = data.n_levels
    unit_of = [np.arange(data.y.size)]  # the level-ℓ unit of each record, ℓ = 1..K
    for parents in data.parents:
        unit_of.append(parents[unit_of[-1]])
    counters = {level: 0 for level in range(2, K + 1)}
    state = {"gamma": 0}

    def value(node, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """(fixed, EB) of a level-`depth` coefficient for every record (the coefficient of its level-depth unit)."""
        if depth == K:  # a γ (δ at four levels): a fixed number
            g = fit.gamma[state["gamma"]]
            state["gamma"] += 1
            return np.full(data.y.size, g), np.full(data.y.size, g)
        level = depth + 1  # its equation's level, where its random effect lives
        fixed = np.zeros(data.y.size)
        eb = np.zeros(data.y.size)
        for child in node.terms:
            if child.col is None:
                x = 1.0
            else:
                x = data.predictors[level - 1][:, child.col][unit_of[level - 1]]
            f, e = value(child, depth + 1)
            fixed += x * f
            eb += x * e
        if node.random:
            k = counters[level]
            counters[level] += 1
            eb = eb + fit.eb[level - 2][:, k][unit_of[level - 1]]
        return fixed, eb

    fixed = np.zeros(data.y.size)
    eb = np.zeros(data.y.size)
    for node in data.layout:
        a = 1.0 if node.col is None else data.predictors[0][:, node.col]
        f, e = value(node, 1)
        fixed += a * f
        eb += a * e
    return fixed, eb


# ---------------------------------------------------------------- residual files of levels 2..K

def level2_residuals(design, fit, archive):
    """One row per level-2 unit: its ids, record count, EB r's with posterior variances, and its level-2 data."""
    spec = design.spec
    names = spec.coefficient_names()
    unit3, n1 = _level2_units(design.data)
    cols: dict = {"id": design.unit2_ids, archive.id_names[1]: np.array(design.unit3_ids, dtype=object)[unit3],
                  "nj": n1.astype(int)}
    for k, p in enumerate(idx[0] for idx, _ in spec.random(2)):
        cols[f"r_{names[p]}"] = fit.eb_pi[:, k]
        cols[f"postvar_r_{names[p]}"] = fit.eb_pi_var[:, k, k]
    for i, n in enumerate(archive.level2_names):
        cols[n] = archive.level2[i][design.level2_positions]
    return pd.DataFrame(cols)


def _level2_units(data):
    """(the level-3 unit of each level-2 unit, its record count), from the records or from the
    per-unit summary of the stream and Dask engines (moments.LevelsSummary)."""
    if hasattr(data, "moments"):
        return np.asarray(data.unit_parents[0]), data.moments.n
    return np.asarray(data.unit3), np.bincount(data.unit2, minlength=np.asarray(data.unit3).size).astype(float)


def level3_residuals(design, fit, archive):
    spec = design.spec
    names = spec.coefficient_names()
    unit3, n1 = _level2_units(design.data)
    cols: dict = {"id": design.unit3_ids, "n2": np.bincount(unit3, minlength=design.n3).astype(int),
                  "n1": np.bincount(unit3, weights=n1, minlength=design.n3).round().astype(int)}
    for k, (p, q) in enumerate(idx for idx, _ in spec.random(3)):
        label = f"{names[p]}_{spec.term_names((p,))[q]}"
        cols[f"u_{label}"] = fit.eb_beta[:, k]
        cols[f"postvar_u_{label}"] = fit.eb_beta_var[:, k, k]
    for i, n in enumerate(archive.level3_names):
        cols[n] = archive.level3[i][design.level3_positions]
    return pd.DataFrame(cols)


def level_residuals(design, fit, archive, level: int):
    """One row per level-ℓ unit: its id, its parent's id, its size, the EB means with posterior
    variances of its random effects, and its level-ℓ data."""
    from .language.equations_levels import RANDOM_LETTERS

    spec = design.spec
    K = spec.n_levels
    data = design.data
    cols: dict = {"id": design.unit_ids[level - 2]}
    if level < K:
        cols[archive.id_names[level - 1]] = np.array(design.unit_ids[level - 1], dtype=object)[data.parents[level - 1]]
    if level == 2 and hasattr(data, "moments"):  # records summarised per level-2 unit: their counts
        cols["n"] = data.moments.n.round().astype(int)
    else:
        cols["n"] = np.bincount(data.parents[level - 2], minlength=design.J(level)).astype(int)
    for k, (idx, names) in enumerate(spec.random(level)):
        label = "_".join(names)
        letter = RANDOM_LETTERS[level - 1]
        cols[f"{letter}_{label}"] = fit.eb[level - 2][:, k]
        cols[f"postvar_{letter}_{label}"] = fit.eb_var[level - 2][:, k, k]
    for i, n in enumerate(archive.names(level)):
        cols[n] = archive.levels[level - 1].values[i][design.positions[level - 2]]
    return pd.DataFrame(cols)
