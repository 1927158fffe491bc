"""A fitted linear model of three or four levels as `Results`: the same accessors, text, JSON, tables,
tests and residual files as a two-level fit, read from the K-level design and the nested engine's fit.

At three levels the report keeps HLM3's forms (report_levels' schema 3 text and JSON); at four it is
HLM4's (schema 4). Everything else here is level-generic: the fixed effects and τ blocks are read
through the K-level form of the model (`LevelsSpec`), whose γ order and τ orders are the engine's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ModelError
from .lazy import lazy
from .results import Results

pd = lazy("pandas")  # only the tables and residual files need it: a fit that prints text does not load it

if TYPE_CHECKING:  # pragma: no cover
    from .nested import NestedFit


@dataclass
class LevelsAnalysis:
    """The analysis of a K-level model (K ≥ 3): its spec (HLM3's ModelSpec3 at three levels, LevelsSpec
    above), its design, the certified fit and the extras the options asked for (Wald tests of γ and
    the likelihood-ratio test against a prior deviance), JSON-ready."""

    spec: object
    design: object
    fit: NestedFit
    extras: dict = field(default_factory=dict)
    weighting: dict = field(default_factory=dict)  # levels_combined.weighting_meta: the weights' lines and record

    @property
    def n_levels(self) -> int:
        return self.fit.n_levels

    @property
    def levels_spec(self):
        """The model in its K-level form (the same equations, γ order and τ orders as the engine's)."""
        if self.n_levels == 3:
            from .design_levels import spec3_as_levels

            return spec3_as_levels(self.spec)
        return self.spec


# ---------------------------------------------------------------- labels and --test

def fixed_labels(spec) -> list[tuple]:
    """The subscripts of every fixed effect in the engine's order (γpqs at three levels, δpqst at four)."""
    return [f.idx for f in spec.fixed()]


def label_of(idx, n_levels: int, ascii_only: bool = False) -> str:
    """A fixed effect's label as the output prints it: γ000 (g000), γ1,10,0 with HLM 7's comma rule."""
    from .equations_levels import COEF_LETTERS, symbol

    letter = COEF_LETTERS[n_levels - 1]
    return letter + symbol(letter, idx)[1:] if ascii_only else symbol(letter, idx)


def parse_test_levels(text: str, spec) -> object:
    """'γ000 = 0, g100 - g010 = 0' -> a Hypothesis over the K-level γs (δs at four levels). Subscripts
    run together while each has one digit, else they are separated by commas (g1,10,0), as printed."""
    from .equations import Hypothesis
    from .equations_levels import COEF_LETTERS, GREEK

    K = spec.n_levels
    letter = COEF_LETTERS[K - 1]
    labels = fixed_labels(spec)
    n = len(labels[0]) if labels else K
    norm = " ".join(text.split())
    for k, g in enumerate(GREEK):
        norm = norm.replace(g, COEF_LETTERS[k]).replace(g.upper(), COEF_LETTERS[k])
    # a comma inside a label (g1,10,0) is not one between restrictions: mark it first
    comma_label = re.compile(rf"([{letter}{letter.upper()}])(\d+(?:\s*,\s*\d+){{{n - 1}}})(?!\d)")
    norm = comma_label.sub(lambda m: m.group(1) + re.sub(r"\s*,\s*", ";", m.group(2)), norm)
    term = re.compile(rf"^([+-]?)(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)?\*?([a-z])((?:\d+;)*\d+)$", re.I)
    known = ", ".join(label_of(i, K, True) for i in labels)
    rows, rhs = [], []
    for restriction in [r for r in norm.split(",") if r.strip()]:
        if restriction.count("=") != 1:
            raise ModelError(f"--test '{text}': each restriction needs one '=', e.g. '{known.split(',')[0]} = 0'")
        left, right = restriction.split("=")
        try:
            value = float(right.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ModelError(f"--test '{text}': the right side of '{restriction.strip().replace(';', ',')}' "
                             "must be a finite number")
        row = [0.0] * len(labels)
        pieces = re.findall(r"[+-]?[^+-]+", left.replace(" ", ""))
        if not pieces:
            raise ModelError(f"--test '{text}': '{restriction.strip()}' has nothing to test")
        for piece in pieces:
            m = term.match(piece)
            shown = piece.replace(";", ",")
            if not m or m.group(3).lower() != letter:
                raise ModelError(f"--test '{text}': cannot read '{shown}'; this {K}-level model's fixed effects are "
                                 f"{known}")
            digits = m.group(4)
            idx = tuple(int(d) for d in (digits.split(";") if ";" in digits else digits))
            if idx not in labels:
                raise ModelError(f"--test '{text}': this model has no {shown.lstrip('+-')}; its fixed effects are "
                                 f"{known}")
            mult = float(m.group(2)) if m.group(2) else 1.0
            row[labels.index(idx)] += (-1.0 if m.group(1) == "-" else 1.0) * mult
        rows.append(tuple(row))
        rhs.append(value)
    if not rows:
        raise ModelError(f"--test '{text}': no restrictions given; write e.g. --test '{label_of(labels[0], K, True)} = 0'")
    return Hypothesis(label=text.strip(), rows=tuple(rows), rhs=tuple(rhs))


def levels_extras(analysis: LevelsAnalysis, tests: Sequence[str] = (), prior_deviance: float | None = None,
                  prior_params: int | None = None, robust_only: bool = False) -> dict:
    """The Wald tests of γ (model-based and robust covariance) and the likelihood-ratio test against a
    prior model's deviance, as a two-level fit's extras. robust_only (sampling weights): the sandwich
    test only, and no likelihood-ratio test (a pseudo-likelihood has none)."""
    from .pipeline import tests_of_gamma

    fit = analysis.fit
    hypotheses = [parse_test_levels(t, analysis.levels_spec) for t in tests]
    return tests_of_gamma(hypotheses, fit.gamma, fit.cov_gamma, fit.cov_gamma_robust, prior_deviance, prior_params,
                          float(fit.deviance), int(fit.n_params), robust_only=robust_only)


def information_criteria_levels(fit: NestedFit, n_records: int) -> tuple[int, float, float]:
    """(k, AIC, BIC) as lme4 counts them for lmer: every γ, every τ entry and σ², under REML too; BIC
    with log N (level-1 records)."""
    k = int(fit.gamma.size) + sum(t.shape[0] * (t.shape[0] + 1) // 2 for t in fit.taus) + 1
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
    k = len(fixed) + sum(len(b["coefficients"]) * (len(b["coefficients"]) + 1) // 2 for b in blocks) + 1
    deviance = doc["deviance"]
    view = {"levels": doc["levels"], "method": doc["method"], "outcome": doc["outcome"], "fixed_effects": fixed,
            "random_coefficients": names, "r_names": r_names, "tau_levels": levels, "tau_groups": groups,
            "tau": tau.tolist(), "variance_components": components, "sigma2": doc["sigma2"],
            "deviance": deviance, "n_params": doc["n_params"], "aic": deviance + 2 * k,
            "bic": deviance + k * math.log(counts[1]), "n_level1": counts[1], "n_level2": counts[2],
            "n_units": counts, "converged": doc["converged"], "certificate": doc.get("certificate"),
            "lme4_formula": doc.get("lme4_formula")}
    for key in ("hypothesis_tests", "deviance_test", "weights"):
        if key in doc:
            view[key] = doc[key]
    return view


# ---------------------------------------------------------------- level-1 fitted values

def level1_fitted(data, fit: NestedFit) -> tuple[np.ndarray, np.ndarray]:
    """(fixed part Xγ, EB fitted value Xγ + Zb̂) of every record. Walks the coefficient tree: a level-d
    coefficient of a level-d unit is Σ (its predictors × the level-(d+1) coefficients of the unit's
    parent) plus its EB residual when it is random; level-1 records weigh the π's by their a's."""
    from .nested import as_levels

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


# ---------------------------------------------------------------- Results

class LevelsResults(Results):
    """A fitted model of three or four levels (`Results(LevelsAnalysis, archive, meta)` makes one).

    The two-level accessors hold, per level where a two-level fit has one of a kind:
      fixed_effects, variance_components (one block per level, then level 1), tau (level -> DataFrame),
      sigma2, deviance, loglik, n_params, aic, bic, random_effects(level), residuals_level(level),
      residuals_level1(), write_residuals(...), summary(), to_json(), to_dict(), tidy(), table(fmt)
    """

    def __init__(self, analysis: LevelsAnalysis, archive, meta: dict | None = None, sources=None) -> None:
        self.analysis = analysis
        self.archive = archive
        self.meta = dict(meta or {})
        self._sources = sources
        self._json = None
        self._eb = None
        self.hglm = False
        self.n_levels = analysis.n_levels

    # ------------------------------------------------------------ the documents
    def _meta_key(self):
        return tuple(str(self.meta.get(k)) for k in ("data_source", "title", "ids", "model_given", "command_file",
                                                      "timestamp"))

    def to_dict(self) -> dict:
        """The CLI's JSON document (schema 3 at three levels, 4 at four) as a dict."""
        key = self._meta_key()
        if self._json is None or self._json[0] != key:
            from .report import json_safe
            from .report_levels import fit_json, fit_json3

            a = self.analysis
            doc = fit_json3(a.design, a.fit, self._report_meta()) if self.n_levels == 3 else \
                fit_json(a.design, a.fit, self._report_meta())
            doc.update(a.extras)
            self._json = (key, json_safe(doc))
        return self._json[1]

    def _report_meta(self) -> dict:
        meta = {**self.meta, **self.analysis.weighting}
        ids = list(meta.get("ids") or self.archive.id_names)
        meta["ids"] = ids
        if self.n_levels == 3:
            meta.setdefault("id2", ids[0])
            meta.setdefault("id3", ids[1])
        return meta

    def to_json(self) -> str:
        from .report import dumps_json

        return dumps_json(self.to_dict())

    def summary(self, ascii: bool = False) -> str:
        """Exactly what `hlmcli fit` prints: HLM3's (three levels) or HLM4's (four) tables."""
        from .report import Symbols, extras_text, printable
        from .report_levels import Symbols3, SymbolsLevels, fit_text, fit_text3

        a = self.analysis
        if self.n_levels == 3:
            text = fit_text3(a.design, a.fit, self._report_meta(), Symbols3(ascii))
        else:
            text = fit_text(a.design, a.fit, self._report_meta(), SymbolsLevels(ascii))
        extra = extras_text(a.extras, Symbols(ascii)) if a.extras else []
        return text + ("\n".join(printable(line) for line in extra) + "\n" if extra else "")

    def __repr__(self) -> str:
        fit = self.analysis.fit
        counts = ", ".join(f"N{k}={v}" for k, v in self._counts().items())
        return f"<hlmcli.Results {self.n_levels}-level {fit.method} {self.analysis.spec.outcome}: {counts}, " \
               f"deviance={float(fit.deviance):.4f}>"

    def _counts(self) -> dict:
        return n_units(self.to_dict())

    # ------------------------------------------------------------ status
    @property
    def method(self) -> str:
        return self.analysis.fit.method

    @property
    def converged(self) -> bool:
        return bool(self.analysis.fit.converged)

    @property
    def failures(self) -> list[str]:
        if self.converged:
            return []
        fit = self.analysis.fit
        return ["the optimum is not certified: " + "; ".join(getattr(fit.certificate, "failed", None) or [fit.message])]

    @property
    def warnings(self) -> list[str]:
        return []

    @property
    def boundary_notes(self) -> list[str]:
        return list(self.analysis.fit.boundary or [])

    # ------------------------------------------------------------ the numbers
    @property
    def fixed_effects(self) -> "pd.DataFrame":
        """One row per fixed effect: term (R's name), label (γ000; δ0000 at four levels), the names along
        its path (level1 ... levelK), estimate, se, t, df, p and the robust columns."""
        rows = []
        for f in fixed_rows(self.to_dict()):
            row = {"term": term_of(f["path"]), "label": f["label"]}
            row.update({f"level{k}": name for k, name in enumerate(f["path"], start=1)})
            row.update({k: f[k] for k in ("estimate", "se", "t", "df", "p", "robust_se", "robust_t", "robust_p")})
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def variance_components(self) -> "pd.DataFrame":
        """One row per random effect, level by level (2..K, each its τ block's diagonal), then level 1:
        level, effect, label, sd, variance, reliability, df, chi2, p."""
        rows = []
        for block in tau_blocks(self.to_dict()):
            for k, (name, label) in enumerate(zip(block["coefficients"], block["labels"])):
                c = block["chi2"][k] if k < len(block["chi2"]) else {}
                variance = block["matrix"][k][k]
                rows.append({"level": block["level"], "effect": name, "label": label, "sd": math.sqrt(max(variance, 0.0)),
                             "variance": variance, "reliability": block["reliability"][k], "df": c.get("df"),
                             "chi2": c.get("chi2"), "p": c.get("p")})
        s2 = self.sigma2
        rows.append({"level": 1, "effect": "level-1", "label": "e", "sd": math.sqrt(s2), "variance": s2,
                     "reliability": None, "df": None, "chi2": None, "p": None})
        return pd.DataFrame(rows)

    @property
    def random_coefficients(self) -> dict:
        """{level: [coefficient path, ...]} in τ order."""
        return {b["level"]: list(b["coefficients"]) for b in tau_blocks(self.to_dict())}

    @property
    def tau(self) -> dict:
        """{level: τ of that level's random effects, labelled by coefficient}."""
        return {b["level"]: pd.DataFrame(np.array(b["matrix"], dtype=float), index=b["coefficients"],
                                         columns=b["coefficients"]) for b in tau_blocks(self.to_dict())}

    @property
    def sigma2(self) -> float:
        return float(self.analysis.fit.sigma2)

    @property
    def deviance(self) -> float:
        return float(self.analysis.fit.deviance)

    @property
    def n_params(self) -> int:
        return int(self.analysis.fit.n_params)

    @property
    def aic(self) -> float:
        return information_criteria_levels(self.analysis.fit, self.analysis.design.n)[1]

    @property
    def bic(self) -> float:
        return information_criteria_levels(self.analysis.fit, self.analysis.design.n)[2]

    def tidy(self, conf_level: float = 0.95, se: str = "auto") -> "pd.DataFrame":
        """broom.mixed's tidy(): the fixed effects, then the sd__/cor__ rows of each level's group."""
        from .tables import tidy

        return tidy(table_view(self.to_dict()), conf_level, se)

    def table(self, fmt: str = "markdown", options=None, **given) -> str:
        """The fixed-effects and variance-component tables as csv, markdown, latex or html (tables.TableOptions)."""
        from .tables import TableOptions, fit_table

        if options is None:
            options = TableOptions(**{k: tuple(v) if k == "notes" else v for k, v in given.items()})
        return fit_table(table_view(self.to_dict()), fmt, options)

    def plot(self, kind: str, path=None, **options):
        from .plots import plot_levels

        return plot_levels(self, kind, path, **options)

    def predict(self, newdata=None):
        raise ModelError(f"predict() is for two-level fits; for a {self.n_levels}-level fit, residuals_level1() holds "
                         "each record's fitted value (fixed part and with the EB estimates of every level)")

    # ------------------------------------------------------------ units
    @property
    def eb(self):
        raise ModelError("a model of three or more levels has EB estimates at each level: use random_effects(level)")

    def random_effects(self, level: int = 2) -> "pd.DataFrame":
        """One row per level-`level` unit (indexed by its id): its parent's id, size, and the EB residual
        and posterior variance of each random coefficient of that level."""
        table = self.residuals_level(level)
        data_columns = set(self.archive.names(level)) if hasattr(self.archive, "names") else set()
        keep = [c for c in table.columns if c not in data_columns or c == "id"]
        return table[keep].set_index("id").rename_axis(self.archive.id_names[level - 2])

    def residuals_level(self, level: int) -> "pd.DataFrame":
        """HLM's level-`level` residual file (2 ≤ level ≤ K)."""
        if not 2 <= level <= self.n_levels:
            raise ModelError(f"level must be 2 ... {self.n_levels}, not {level}")
        a = self.analysis
        from .report_levels import level2_residuals, level3_residuals, level_residuals

        if self.n_levels == 3:
            return (level2_residuals if level == 2 else level3_residuals)(a.design, a.fit, self.archive)
        return level_residuals(a.design, a.fit, self.archive, level)

    def residuals_level2(self, keep: Sequence[str] = ()) -> "pd.DataFrame":
        return self.residuals_level(2)

    def residuals_level1(self, keep: Sequence[str] = (), order: str = "unit") -> "pd.DataFrame":
        """The level-1 residual file: each record's unit ids (levels 2..K), the outcome, the fitted value
        from the fixed part (fitted_fixed) and with the EB estimates of every level (fitted), the
        residual (outcome - fitted) and the level-1 predictors, in the archive's order (by unit)."""
        if order != "unit" or keep:
            raise ModelError("the level-1 residual file of a model of three or more levels is in the archive's "
                             "order (by unit), without --keep columns")
        a = self.analysis
        data = a.design.data
        from .nested import as_levels

        levels = as_levels(data)
        fixed, eb = level1_fitted(data, a.fit)
        unit = levels.parents[0]
        cols: dict = {}
        ids = self._unit_ids()
        up = unit
        for level in range(2, self.n_levels + 1):
            cols[self.archive.id_names[level - 2]] = np.asarray(ids[level - 2], dtype=object)[up]
            if level < self.n_levels:
                up = levels.parents[level - 1][up]
        y = np.asarray(levels.y, dtype=float)
        cols.update({"fitted": eb, "fitted_fixed": fixed, "residual": y - eb, a.spec.outcome: y})
        for k, t in enumerate(a.levels_spec.level1):
            cols[t.label] = levels.predictors[0][:, self._level1_col(k)]
        return pd.DataFrame(cols)

    def _level1_col(self, k: int) -> int:
        """The column of the k-th level-1 predictor in the design (design_levels: one column per distinct
        level-1 term, in the level-1 equation's order; the intercept has none)."""
        return k

    def _unit_ids(self) -> list:
        d = self.analysis.design
        return [d.unit2_ids, d.unit3_ids] if self.n_levels == 3 else list(d.unit_ids)

    def write_residuals(self, level1=None, level2=None, keep: Sequence[str] = (), order: str = "unit",
                        more: dict | None = None) -> None:
        """Write the residual files of levels 1..K (.csv, .sav or .dta by extension), atomically: all or none.
        `more` maps a level above 2 to its path."""
        from .files import output_transaction
        from .residual_files import write_table

        paths = {1: level1, 2: level2, **(more or {})}
        with output_transaction():
            for level, path in sorted(paths.items()):
                if path:
                    table = self.residuals_level1(keep) if level == 1 else self.residuals_level(level)
                    write_table(table, path)
