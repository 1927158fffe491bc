"""One fitted model and every output made from it: tables as DataFrames, the CLI's text and JSON,
empirical Bayes estimates per unit, predictions, residual files, paper tables and plots.

`Results` is built from a `pipeline.Analysis` and reads only its documented fields (`result`,
`fixed`, `variance`, `design`, `unit`, `stats`), so the engine can change underneath it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from .errors import DataError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    from .archive import Archive
    from .pipeline import Analysis
    from .sources import SourceFrames


def term_name(coefficient: str, predictor: str) -> str:
    """A fixed effect's name as in R's model summaries: '(Intercept)', 'SECTOR', 'SES', 'SES:SECTOR'."""
    if coefficient == "INTRCPT1":
        return "(Intercept)" if predictor == "INTRCPT2" else predictor
    return coefficient if predictor == "INTRCPT2" else f"{coefficient}:{predictor}"


def information_criteria(fit: dict) -> tuple[int, float, float]:
    """(k, AIC, BIC) of a fit's JSON, as the fit computed them (inference.information_criteria,
    lme4's counting: every fixed effect and variance parameter, under REML too; BIC with log N)."""
    if fit.get("aic") is None:  # PQL: no likelihood, so no criteria
        return int(fit["n_params"] or 0), None, None
    k = int(round((fit["aic"] - fit["deviance"]) / 2))
    return k, float(fit["aic"]), float(fit["bic"])


def _column(frame: pd.DataFrame, name: str) -> str | None:
    if name in frame.columns:
        return name
    hits = [c for c in frame.columns if str(c).lower() == name.lower()]
    return hits[0] if hits else None


def is_hglm(analysis) -> bool:
    """Whether an analysis is of a binary, binomial or count outcome (hglm_run.HGLMAnalysis)."""
    return hasattr(analysis, "estimation")


class Results:
    """A fitted two-level model: linear, weighted or HGLM (PQL, Laplace, AGQ), from any engine.

    Attributes and methods:
      fixed_effects, variance_components  DataFrames of HLM 7's two main tables
      tau, sigma2, deviance, n_params, aic, bic, loglik
      random_effects()                    EB, OLS and posterior variance per unit
      predict(newdata)                    predictions for new records
      summary(), to_json(), to_dict()     the CLI's text and JSON, exactly
      residuals_level1(), residuals_level2(), write_residuals()
      tidy(), table(fmt), plot(kind)
    """

    def __new__(cls, analysis=None, *args, **kwargs):
        # a model of three or more levels (levels_results.LevelsAnalysis) has its own accessors
        if cls is Results and hasattr(analysis, "levels_spec"):
            from .levels_results import LevelsResults

            cls = LevelsResults
        return super().__new__(cls)

    def __init__(self, analysis: Analysis, archive: Archive, meta: dict | None = None,
                 sources: SourceFrames | None = None) -> None:
        self.analysis = analysis
        self.archive = archive
        self.meta: dict = {"id_name": archive.id_names[0], **(meta or {})}
        self._sources = sources
        self._json: tuple | None = None
        self._eb = None
        self.hglm = is_hglm(analysis)

    # ------------------------------------------------------------ the numbers
    def to_dict(self) -> dict:
        """The CLI's JSON document (schema 1) as a dict."""
        key = tuple(self.meta.get(k) for k in ("data_source", "title", "id_name", "command_file", "timestamp"))
        if self._json is None or self._json[0] != key:  # recomputed when the meta it prints changes
            from .report import _clean, fit_json

            if self.hglm:
                doc = self.analysis.to_json(self.meta)
            else:
                doc = fit_json(self.analysis, self.meta)
            self._json = (key, _clean(doc))
        return self._json[1]

    def to_json(self) -> str:
        """Exactly what `hlmcli fit --format json` prints."""
        from .report import dumps_json

        return dumps_json(self.to_dict())

    def summary(self, ascii: bool = False) -> str:
        """Exactly what `hlmcli fit` prints (`ascii=True` is `--ascii`)."""
        from .report import Symbols, fit_text

        if self.hglm:
            return self.analysis.to_text(self.meta, Symbols(ascii))
        return fit_text(self.analysis, self.meta, Symbols(ascii))

    def __repr__(self) -> str:
        fit = self.to_dict()
        deviance = "none (PQL)" if fit["deviance"] is None else f"{fit['deviance']:.4f}"
        kind = f"{fit['family']} {fit['estimation'].upper()} " if self.hglm else ""
        return (f"<hlmcli.Results {kind}{fit['method']} {fit['outcome']}: N={fit['n_level1']}, J={fit['n_level2']}, "
                f"deviance={deviance}>")

    @property
    def method(self) -> str:
        return self.to_dict()["method"] if self.hglm else self.analysis.result.method

    @property
    def converged(self) -> bool:
        """Whether the fit is at its certified optimum (PQL: its macro iterations converged)."""
        return bool(self.analysis.converged if self.hglm else self.analysis.result.converged)

    @property
    def failures(self) -> list[str]:
        """Why the fit is not certified; empty when it is."""
        if self.converged:
            return []
        a = self.analysis
        if self.hglm and a.pql is not None:
            return ["PQL is not at a checked fixed point: " + "; ".join(a.pql.failed)]
        certificate = a.ml.certificate if self.hglm else a.result.certificate
        return ["the optimum is not certified: " + "; ".join(certificate.failed)]

    @property
    def warnings(self) -> list[str]:
        """What the engine noted about the fit for the user (an HGLM's, e.g. a population-average model left out)."""
        return list(getattr(self.analysis, "warnings", None) or []) if self.hglm else []

    @property
    def boundary_notes(self) -> list[str]:
        """Why the fit is on the boundary of the parameter space (a singular τ); empty when it is not."""
        return list(self.analysis.notes if self.hglm else (self.analysis.result.boundary or []))

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """One row per γ: term, coefficient, predictor, gamma, estimate, se, t, df, p and the robust columns."""
        frame = pd.DataFrame(self.to_dict()["fixed_effects"])
        frame.insert(0, "term", [term_name(c, p) for c, p in zip(frame["coefficient"], frame["predictor"])])
        return frame

    @property
    def variance_components(self) -> pd.DataFrame:
        """One row per random effect, then level-1 r: effect, label, sd, variance, df, chi2, p."""
        return pd.DataFrame(self.to_dict()["variance_components"])

    @property
    def random_coefficients(self) -> list[str]:
        return list(self.to_dict()["random_coefficients"])

    @property
    def tau(self) -> pd.DataFrame:
        """τ, the covariance matrix of the random effects, labelled by coefficient."""
        names = self.random_coefficients
        tau = self.analysis.tau if self.hglm else self.analysis.result.tau
        return pd.DataFrame(np.array(tau, dtype=float), index=names, columns=names)

    @property
    def sigma2(self) -> float | None:
        """σ²; for an HGLM the level-1 scale when it is estimated (over-dispersion), else None (fixed at 1)."""
        value = self.to_dict()["sigma2"] if self.hglm else self.analysis.result.sigma2
        return None if value is None else float(value)

    @property
    def deviance(self) -> float:
        value = self.to_dict()["deviance"]
        if value is None:
            raise ModelError("PQL has no deviance (it maximises a quasi-likelihood); fit with estimation='laplace' "
                             "or 'agq' for one")
        return float(value)

    @property
    def loglik(self) -> float:
        return -self.deviance / 2

    @property
    def n_params(self) -> int:
        """HLM 7's number of estimated parameters (σ² and τ under REML; plus the γs under ML)."""
        value = self.to_dict()["n_params"]
        if value is None:
            raise ModelError("PQL has no likelihood, so no count of its parameters; fit with estimation='laplace' or 'agq'")
        return int(value)

    @property
    def aic(self) -> float:
        """deviance + 2k, k counted as lme4 does (see `information_criteria`)."""
        self.deviance  # noqa: B018 (PQL: refused, saying why)
        return information_criteria(self.to_dict())[1]

    @property
    def bic(self) -> float:
        """deviance + k·log(N), as lme4."""
        self.deviance  # noqa: B018
        return information_criteria(self.to_dict())[2]

    def tidy(self, conf_level: float = 0.95) -> pd.DataFrame:
        """broom-style rows: term, estimate, std_error, statistic, df, p_value, conf_low, conf_high (+ robust)."""
        from .tables import tidy

        return tidy(self.to_dict(), conf_level)

    def table(self, fmt: str = "markdown") -> str:
        """The fixed-effects and variance-component tables as csv, markdown, latex or html."""
        from .tables import fit_table

        return fit_table(self.to_dict(), fmt)

    def plot(self, kind: str, path: str | os.PathLike | None = None, **options: Any):
        """Draw one of `plots.KINDS`; saved to `path` (PNG, SVG or PDF by extension) when given.
        Returns the matplotlib Figure."""
        from .plots import plot

        return plot(self, kind, path, **options)

    # ------------------------------------------------------------ units
    @property
    def eb(self):
        """The engine's empirical Bayes estimates (inference.UnitEstimates), computed once."""
        if self.hglm:
            raise ModelError("the linear engine's EB estimates are for a normal outcome; an HGLM's unit estimates "
                             "are in random_effects() (posterior modes and variances)")
        if self._eb is None:
            from .inference import empirical_bayes

            a = self.analysis
            self._eb = empirical_bayes(a.unit, a.stats, a.result)
        return self._eb

    def random_effects(self) -> pd.DataFrame:
        """One row per unit (indexed by its id): n, and for each random coefficient the EB residual u_,
        its posterior variance postvar_, the unit's OLS estimate ols_; for every coefficient the
        level-2 prediction fitted_ and the EB coefficient eb_ (= fitted_ + u_); the Mahalanobis distance."""
        table = self._level2_table()
        keep = [c for c in table.columns if c not in self.analysis.design.level2_values]
        return table[keep].rename(columns={"nj": "n"}).set_index("id").rename_axis(self.meta["id_name"])

    def _level2_table(self) -> pd.DataFrame:
        if self.hglm:
            return self.analysis.level2_table()
        from .residual_files import level2_table

        return level2_table(self.analysis, self.eb)

    def _source_frames(self) -> SourceFrames:
        if self._sources is None:
            from .sources import frames_from_archive

            self._sources = frames_from_archive(self.archive, self.meta.get("source_files"))
        return self._sources

    def residuals_level2(self, keep: Sequence[str] = ()) -> pd.DataFrame:
        """HLM's level-2 residual file, plus the `keep` columns of the level-2 source."""
        table = self._level2_table()
        if keep:
            from .sources import level2_rows, resolve_columns

            frames = self._source_frames()
            rows = level2_rows(frames, list(self.analysis.design.unit_ids))
            for level, column, name in resolve_columns(frames, tuple(keep)):
                if name in table.columns:
                    continue
                if level == "level-2" or frames.same or column in frames.level2.columns:
                    table[name] = frames.level2[column].to_numpy()[rows]
                else:  # a level-1 column: the unit's value where it is constant within the unit, else empty
                    from .sources import _ids_as_archive_text

                    values = frames.level1[column]
                    ids = _ids_as_archive_text(frames.level1, frames.id1, frames.level1_name)
                    per_unit = values.groupby(ids, sort=False).agg(lambda v: v.iloc[0] if v.nunique(dropna=False) == 1 else None)
                    table[name] = per_unit.reindex(list(self.analysis.design.unit_ids)).to_numpy()
        return table

    def residuals_level1(self, keep: Sequence[str] = (), order: str = "source") -> pd.DataFrame:
        """HLM's level-1 residual file: id, fitted, residual, the outcome and predictors; `row`, the
        record's 1-based row in the level-1 source, so the file merges back. `order="source"` (the
        default) keeps the user's row order, `order="unit"` the archive's (sorted by unit). `keep`
        carries source columns, text too: level-1 columns directly, level-2 columns through the unit."""
        if order not in ("source", "unit"):
            raise ModelError(f"order must be 'source' or 'unit', not '{order}'")
        if self.hglm:
            table = self.analysis.level1_table()
        else:
            from .residual_files import level1_table

            table = level1_table(self.analysis, self.eb)
        if not keep and order == "unit":
            return table
        try:
            frames = self._source_frames()
            from .sources import record_source_rows

            source_row = record_source_rows(self.archive, frames)
        except DataError:
            if keep:
                raise
            self._warn("the level-1 source file cannot be read back, so the level-1 residual file is in unit order")
            return table
        positions = self.analysis.design.record_positions
        rows = source_row if positions is None else source_row[positions]
        table.insert(1, "row", rows + 1)
        if keep:
            from .sources import level2_rows, resolve_columns

            unit = np.repeat(np.arange(self.analysis.design.n_units), self.analysis.design.sizes)
            l2rows = None
            for level, column, name in resolve_columns(frames, tuple(keep)):
                if name in table.columns:
                    continue
                if level == "level-1":
                    table[name] = frames.level1[column].to_numpy()[rows]
                else:
                    if l2rows is None:
                        l2rows = level2_rows(frames, list(self.analysis.design.unit_ids))
                    table[name] = frames.level2[column].to_numpy()[l2rows][unit]
        if order == "source":
            table = table.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
        return table

    def write_residuals(self, level1: str | os.PathLike | None = None, level2: str | os.PathLike | None = None,
                        keep: Sequence[str] = (), order: str = "source") -> None:
        """Write the residual files (.csv, .sav or .dta by extension), atomically: both or neither."""
        from .files import output_transaction
        from .residual_files import write_table

        with output_transaction():
            if level2:
                write_table(self.residuals_level2(keep), level2)
            if level1:
                write_table(self.residuals_level1(keep, order), level1)

    def _warn(self, message: str) -> None:
        warn = self.meta.get("warn")
        if warn is None:
            import warnings

            warnings.warn(message, stacklevel=3)
        else:
            warn(message)

    # ------------------------------------------------------------ predictions
    def predict(self, newdata: pd.DataFrame, random_effects: bool = True) -> np.ndarray:
        """Predicted outcome for each row of `newdata`.

        Columns: every level-1 and level-2 predictor of the model, by name (case-insensitive; a
        contextual mean as 'mean(SES)'). Values are on the data's own scale: grand-mean centering
        is applied with the estimation sample's means. A group-centred predictor has no unit mean
        for new records, so give it as the deviation from the unit's mean (the model's own scale).
        With the unit id column present and `random_effects=True`, a known unit's EB random effects
        are added (as lme4's predict); unknown units get the fixed-effects prediction.
        An HGLM's prediction is on the link scale (η: log-odds or log rate), as lme4's default.
        """
        from .api import check_frame_columns
        from .design import predictor_name

        check_frame_columns(newdata, "newdata")
        d = self.analysis.design
        spec = d.spec
        gamma = np.asarray(self.analysis.gamma if self.hglm else self.analysis.fixed.gamma, dtype=float)
        n = len(newdata)
        means = d.centering_means

        def values(name: str, key: str) -> np.ndarray:
            col = _column(newdata, name)
            if col is None:
                raise DataError(f"newdata has no column '{name}'; the model needs it to predict")
            x = pd.to_numeric(newdata[col], errors="coerce").to_numpy(dtype=float)
            return x - means[key] if key in means else x

        L = [np.ones(n)]
        for term in spec.level1:
            L.append(values(term.name, f"{term.name} (level 1)") if term.centering == "grand" else values(term.name, ""))
        pred = np.zeros(n)
        for k, f in enumerate(d.fixed):
            if f.s == 0:
                w = np.ones(n)
            else:
                term = spec.level2[f.q].predictors[f.s - 1]
                name = predictor_name(term)
                w = values(name, f"{name} (level 2)") if term.centering == "grand" else values(name, "")
            pred += gamma[k] * w * L[f.q]
        if random_effects:
            id_col = _column(newdata, self.meta["id_name"])
            if id_col is not None:
                position = {u: j for j, u in enumerate(d.unit_ids)}
                ids = newdata[id_col].map(lambda v: str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v).strip())
                j = np.array([position.get(u, -1) for u in ids], dtype=np.int64)
                known = j >= 0
                u = self.analysis.b if self.hglm else self.eb.u
                random = np.flatnonzero(d.random) if self.hglm else self.analysis.stats.random
                for k, q in enumerate(int(q) for q in random):
                    pred[known] += u[j[known], k] * L[q][known]
        return pred
