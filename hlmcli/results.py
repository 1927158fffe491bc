"""One fitted model and every output made from it: tables as DataFrames, the CLI's text and JSON,
empirical Bayes estimates per unit, predictions, residual files, paper tables and plots.

`Results` is built from a `pipeline.Analysis` and reads only its documented fields (`result`,
`fixed`, `variance`, `design`, `unit`, `stats`), so the engine can change underneath it.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from .lazy import lazy

pd = lazy("pandas")

from .errors import DataError, ModelError
from .levels_results import (fixed_rows, information_criteria_levels, level1_fitted, level2_residuals, level3_residuals,
                             level_residuals, n_units, table_view, tau_blocks, term_of)
from .views import writers

if TYPE_CHECKING:  # pragma: no cover
    from .io.archive import Archive
    from .levels_results import LevelsAnalysis
    from .analysis.pipeline import Analysis
    from .io.sources import SourceFrames


def _column(frame: pd.DataFrame, name: str) -> str | None:
    if name in frame.columns:
        return name
    hits = [c for c in frame.columns if str(c).lower() == name.lower()]
    return hits[0] if hits else None


def is_hglm(analysis) -> bool:
    """Whether an analysis is of a binary, binomial or count outcome (hglm_run.HGLMAnalysis)."""
    return hasattr(analysis, "estimation")


class RandomEffects(dict):
    """{unit id: Series of the unit's EB random effects}, as statsmodels' random_effects; called,
    `res.random_effects()`, the whole per-unit table (a DataFrame indexed by unit id)."""

    def __init__(self, by_unit: dict, table: pd.DataFrame) -> None:
        super().__init__(by_unit)
        self.table = table

    def __call__(self) -> pd.DataFrame:
        return self.table


class _NewRows:
    """The rows of predict's newdata: its columns as numbers, each row's unit among the fit's (j, -1 for a
    unit the fit has not seen) and in newdata (group; each row its own without an id column), and the
    notes on what was done."""

    def __init__(self, frame: pd.DataFrame, id_col: str | None, position: dict) -> None:
        self.frame, self.id_col, self.n, self.notes = frame, id_col, len(frame), []
        if id_col is not None:
            keys = frame[id_col].map(_id_text)
            self.j = np.array([position.get(k, -1) for k in keys], dtype=np.int64)
            self.group = pd.factorize(keys)[0]
        else:
            self.j = np.full(self.n, -1, dtype=np.int64)
            self.group = np.arange(self.n)
        self.known = self.j >= 0
        self.new_rows = int((~self.known).sum())

    def column(self, name: str, required: bool = True) -> np.ndarray | None:
        col = _column(self.frame, name)
        if col is None:
            if not required:
                return None
            raise DataError(f"newdata has no column '{name}'; the model needs it to predict")
        return pd.to_numeric(self.frame[col], errors="coerce").to_numpy(dtype=float)

    def own_means(self, x: np.ndarray) -> np.ndarray:
        """Each row's mean over the rows of its unit in newdata (a new unit's centring)."""
        return pd.Series(x).groupby(self.group).transform("mean").to_numpy()


class Results:
    """A fitted two-level model: linear, weighted or HGLM (PQL, Laplace, AGQ), from any engine.

    Attributes and methods:
      fixed_effects, variance_components  DataFrames of HLM 7's two main tables
      tau, sigma2, deviance, n_params, aic, bic, loglik
      random_effects                      {unit: its EB random effects}; random_effects() the per-unit table
      params, bse, tvalues, pvalues, conf_int(), cov_params(), llf, cov_re, scale   statsmodels' names
      glance(), _repr_html_()             broom's glance row; the notebook's display
      predict(newdata)                    predictions for new records
      summary(), to_json(), to_dict()     the CLI's text and JSON, exactly
      residuals_level1(), residuals_level2(), write_residuals()
      tidy(), table(fmt), plot(kind)
    """

    def __new__(cls, analysis=None, *args, **kwargs):
        # a model of three or more levels (levels_results.LevelsAnalysis) has its own accessors
        if cls is Results and hasattr(analysis, "levels_spec"):
            cls = LevelsResults
        return super().__new__(cls)

    def __init__(self, analysis: Analysis, archive: Archive, meta: dict | None = None,
                 sources: SourceFrames | None = None) -> None:
        self.analysis = analysis
        self.archive = archive
        self.meta: dict = {"id_name": archive.level1_id, **(meta or {})}
        self._sources = sources
        self._json: tuple | None = None
        self._eb = None
        self.hglm = is_hglm(analysis)

    # ------------------------------------------------------------ the numbers
    def to_dict(self) -> dict:
        """The CLI's JSON document (schema 1) as a dict."""
        key = tuple(self.meta.get(k) for k in ("data_source", "title", "id_name", "command_file", "timestamp"))
        if self._json is None or self._json[0] != key:  # recomputed when the meta it prints changes
            self._json = (key, writers().fit_document(self.analysis, self.meta, self.hglm))
        return self._json[1]

    def to_json(self) -> str:
        """Exactly what `hlmcli fit --format json` prints."""
        return writers().dumps_json(self.to_dict())

    def summary(self, ascii: bool = False) -> str:
        """Exactly what `hlmcli fit` prints (`ascii=True` is `--ascii`)."""
        return writers().fit_text(self.analysis, self.meta, ascii, self.hglm)

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
        """One row per γ: term (as the lme4 formula names it: SES_gc, SECTOR:SES_gc), coefficient,
        predictor, gamma, estimate, se, t, df, p and the robust columns."""
        fit = self.to_dict()
        frame = pd.DataFrame(fit["fixed_effects"]).drop(columns="term", errors="ignore")
        frame.insert(0, "term", [r for r, _ in writers().fixed_names(fit)])
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
        return writers().information_criteria(self.to_dict())[1]

    @property
    def bic(self) -> float:
        """deviance + k·log(N), as lme4."""
        self.deviance  # noqa: B018
        return writers().information_criteria(self.to_dict())[2]

    def tidy(self, conf_level: float = 0.95, se: str = "auto") -> pd.DataFrame:
        """broom.mixed's tidy(): effect, group, term, estimate, std.error, statistic, df, p.value,
        conf.low, conf.high; fixed rows, then sd__ and cor__ rows (see tables.tidy). `se` is
        'model', 'robust' or 'auto' (robust for a weighted fit)."""
        return writers().tidy(self.to_dict(), conf_level, se)

    def glance(self) -> pd.DataFrame:
        """broom's glance(), one row: nobs (N), ngrps (J), deviance, AIC, BIC, method, certificate."""
        return pd.DataFrame([writers().glance(self.to_dict())])

    def table(self, fmt: str = "markdown", options=None, **given) -> str:
        """The fixed-effects and variance-component tables as csv, markdown, latex or html; `given`
        are tables.TableOptions' fields (se='robust', stars=True, caption=..., notes=(...))."""
        return writers().table(self.to_dict(), fmt, options, given)

    def plot(self, kind: str, path: str | os.PathLike | None = None, **options: Any):
        """Draw one of `plots.KINDS`; saved to `path` (PNG, SVG or PDF by extension) when given.
        Returns the matplotlib Figure."""
        return writers().plot(self, kind, path, **options)

    # ------------------------------------------------------------ units
    @property
    def eb(self):
        """The engine's empirical Bayes estimates (inference.UnitEstimates), computed once."""
        if self.hglm:
            raise ModelError("the linear engine's EB estimates are for a normal outcome; an HGLM's unit estimates "
                             "are in random_effects() (posterior modes and variances)")
        if self._eb is None:
            from .analysis.inference import empirical_bayes

            a = self.analysis
            self._eb = empirical_bayes(a.unit, a.stats, a.result)
        return self._eb

    @property
    def random_effects(self) -> RandomEffects:
        """statsmodels' random_effects: {unit id: Series of its EB random effects (u), indexed by
        random term as the lme4 formula names them}, ids with the user's type.

        Called, `random_effects()`, it gives the whole table: one row per unit (indexed by its id): n,
        and for each random coefficient the EB residual u_, its posterior variance postvar_, the
        unit's OLS estimate ols_; for every coefficient the level-2 prediction fitted_ and the EB
        coefficient eb_ (= fitted_ + u_); the Mahalanobis distance."""
        table = self._level2_table()
        keep = [c for c in table.columns if c not in self.analysis.design.level2_values]
        table = table[keep].rename(columns={"nj": "n"})
        table.index = self._user_ids(list(table.pop("id")))
        u_columns = [f"u_{name}" for name in self.random_coefficients]
        names = [r for r, _ in writers().random_names(self.to_dict())]
        u = table[u_columns].set_axis(names, axis=1) if all(c in table for c in u_columns) else table.iloc[:, :0]
        return RandomEffects({unit: row.rename(unit) for unit, row in u.iterrows()}, table)

    def _level2_table(self) -> pd.DataFrame:
        if self.hglm:
            return self.analysis.level2_table()
        from .io.residual_files import level2_table

        return level2_table(self.analysis, self.eb)

    def _source_frames(self) -> SourceFrames:
        if self._sources is None:
            from .io.sources import frames_from_archive

            self._sources = frames_from_archive(self.archive, self.meta.get("source_files"))
        return self._sources

    def _with_user_ids(self, table: pd.DataFrame) -> pd.DataFrame:
        ids = list(self.analysis.design.unit_ids)
        user = dict(zip(ids, self._user_ids(ids)))
        out = table.copy()
        out["id"] = pd.Series(table["id"].map(user).to_numpy(), index=table.index).astype(self._user_ids(ids[:1]).dtype)
        return out

    def residuals_level2(self, keep: Sequence[str] = ()) -> pd.DataFrame:
        """HLM's level-2 residual file, plus the `keep` columns of the level-2 source; ids with the
        user's type (as `random_effects`)."""
        return self._with_user_ids(self._residuals_level2(keep))

    def _residuals_level2(self, keep: Sequence[str] = ()) -> pd.DataFrame:
        table = self._level2_table()
        if keep:
            from .io.sources import level2_rows, resolve_columns

            frames = self._source_frames()
            rows = level2_rows(frames, list(self.analysis.design.unit_ids))
            for level, column, name in resolve_columns(frames, tuple(keep)):
                if name in table.columns:
                    continue
                if level == "level-2" or frames.same or column in frames.level2.columns:
                    table[name] = frames.level2[column].to_numpy()[rows]
                else:  # a level-1 column: the unit's value where it is constant within the unit, else empty
                    from .io.sources import ids_as_archive_text

                    values = frames.level1[column]
                    ids = ids_as_archive_text(frames.level1, frames.id1, frames.level1_name)
                    per_unit = values.groupby(ids, sort=False).agg(lambda v: v.iloc[0] if v.nunique(dropna=False) == 1 else None)
                    table[name] = per_unit.reindex(list(self.analysis.design.unit_ids)).to_numpy()
        return table

    def residuals_level1(self, keep: Sequence[str] = (), order: str = "source") -> pd.DataFrame:
        """HLM's level-1 residual file: id, fitted, residual, the outcome and predictors; `row`, the
        record's 1-based row in the level-1 source, so the file merges back. `order="source"` (the
        default) keeps the user's row order, `order="unit"` the archive's (sorted by unit). `keep`
        carries source columns, text too: level-1 columns directly, level-2 columns through the unit.
        Ids have the user's type (as `random_effects`)."""
        return self._with_user_ids(self._residuals_level1(keep, order))

    def _residuals_level1(self, keep: Sequence[str] = (), order: str = "source") -> pd.DataFrame:
        if order not in ("source", "unit"):
            raise ModelError(f"order must be 'source' or 'unit', not '{order}'")
        if self.hglm:
            table = self.analysis.level1_table()
        else:
            from .io.residual_files import level1_table

            table = level1_table(self.analysis, self.eb)
        if not keep and order == "unit":
            return table
        try:
            frames = self._source_frames()
            from .io.sources import record_source_rows

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
            from .io.sources import level2_rows, resolve_columns

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
                        keep: Sequence[str] = (), order: str = "source", hlm_names: bool = False) -> None:
        """Write the residual files (.csv, .sav or .dta by extension), atomically: both or neither.
        `hlm_names`: HLM 7's column names and order (EBINTRCP, OLINTRCP, FVINTRCP, L1RESID, ...; see
        hlm_names.py), with variable labels in .sav files."""
        from .io.files import output_transaction
        from .io.residual_files import write_table

        id_name = self.archive.level1_id
        with output_transaction():
            if level2:
                table, labels = self._residuals_level2(keep), None
                if hlm_names:
                    from .io.hlm_names import level2_columns

                    table, labels = level2_columns(table, self.analysis.design.spec.coefficient_names(), id_name)
                write_table(table, level2, labels)
            if level1:
                table, labels = self._residuals_level1(keep, order), None
                if hlm_names:
                    from .io.hlm_names import level1_columns

                    table, labels = level1_columns(table, id_name)
                write_table(table, level1, labels)

    def _warn(self, message: str) -> None:
        warn = self.meta.get("warn")
        if warn is None:
            import warnings

            warnings.warn(message, stacklevel=3)
        else:
            warn(message)

    # ------------------------------------------------------------ predictions
    def _unit_means(self, name: str) -> np.ndarray:
        """Each unit's mean of a level-1 column over the records the fit used (as the design centred it)."""
        from .data.design import unit_means

        d = self.analysis.design
        x = np.asarray(self.archive.level1_column(name), dtype=float)
        if d.record_positions is not None:
            x = x[d.record_positions]
        return unit_means(x, d.offsets)

    def predict(self, newdata: pd.DataFrame, random_effects: bool = True) -> np.ndarray:
        """Predicted outcome for each row of `newdata`, on the data's own scale.

        Columns: the model's level-1 and level-2 predictors by name (case-insensitive), and the unit
        id column. Centring is the fit's: a grand-centred predictor is centred at the estimation
        sample's mean; a group-centred predictor at its unit's mean over the records the fit used,
        and a unit mean mean(X) is that unit's, when the row's unit is one of the fit's. So the
        estimation data itself gives back the residual file's fitted values.

        New units (an id the fit has not seen) have no mean in the fit: a group-centred predictor is
        centred at the mean of that unit's rows in `newdata` (as the fit would have centred it had
        the unit been in the data), mean(X) is that same mean unless `newdata` has a 'mean(X)'
        column, and their random effects are 0 (the fixed-effects prediction, as lme4's
        allow.new.levels). Without an id column every row is a new unit of its own, so a
        group-centred value must be given as the deviation from its unit's mean (the population
        prediction, with no warning). What was done is in `self.predict_notes`, and said as a
        warning when rows of new units were given with their ids.

        `random_effects=True` adds a known unit's EB random effects (as lme4's predict). An HGLM's
        prediction is on the link scale (η: log-odds or log rate), as lme4's default; a multinomial
        fit's is one column per logit, log(P(category m)/P(last category)), m = 1..M−1.
        """
        from .io.readers import check_frame_columns

        check_frame_columns(newdata, "newdata")
        d = self.analysis.design
        gamma = np.asarray(self.analysis.gamma if self.hglm else self.analysis.fixed.gamma, dtype=float)
        id_col = _column(newdata, self.meta["id_name"])
        rows = _NewRows(newdata, id_col, self._unit_position() if id_col is not None else {})
        L = self._level1_columns(rows)
        known, j = rows.known, rows.j
        logits = len(getattr(self.analysis, "categories", [0, 0])) - 1  # a multinomial fit: M − 1 logits
        pf = len(d.fixed)
        columns = []
        for m in range(logits):
            pred = np.zeros(rows.n)
            for k, f in enumerate(d.fixed):
                w = np.ones(rows.n) if f.s == 0 else self._level2_column(rows, d.spec.fixed_predictor((f.q, f.s)))
                pred += gamma[m * pf + k] * w * L[f.q]
            if random_effects and known.any():
                u = self.analysis.b if self.hglm else self.eb.u
                random = [int(q) for q in (np.flatnonzero(d.random) if self.hglm else self.analysis.stats.random)]
                for k, q in enumerate(random):
                    pred[known] += u[j[known], m * len(random) + k] * L[q][known]
            columns.append(pred)
        pred = columns[0] if logits == 1 else np.column_stack(columns)
        if random_effects and rows.new_rows and id_col is not None:
            rows.notes.append(f"{rows.new_rows} row(s) of units the fit has not seen get the fixed-effects prediction "
                              "(random effects 0)")
        self.predict_notes = list(dict.fromkeys(rows.notes))
        if self.predict_notes and id_col is not None:  # without ids the docstring's rule is what was asked for
            self._warn("predict: " + "; ".join(self.predict_notes))
        return pred

    def _level1_columns(self, rows: _NewRows) -> list[np.ndarray]:
        """newdata's level-1 design (the intercept first), each predictor centred as predict's docstring says."""
        means = self.analysis.design.centering_means
        known, j, n = rows.known, rows.j, rows.n
        L = [np.ones(n)]
        for term in self.analysis.design.spec.level1:
            x = rows.column(term.name)
            if term.centering == "grand":
                x = x - means[f"{term.name} (level 1)"]
            elif term.centering == "group":
                centre = np.empty(n)
                centre[known] = self._unit_means(term.name)[j[known]]
                if rows.id_col is not None:
                    centre[~known] = rows.own_means(x)[~known]
                    if rows.new_rows:
                        rows.notes.append(f"{term.name} (group-centred) of the {rows.new_rows} row(s) of units the fit "
                                          "has not seen is centred at the mean of each such unit's rows in newdata")
                else:
                    centre[:] = 0.0
                    rows.notes.append(f"newdata has no '{self.meta['id_name']}' column, so {term.name} (group-centred) "
                                      "is taken as already centred at each unit's mean")
                x = x - centre
            L.append(x)
        return L

    def _level2_column(self, rows: _NewRows, term) -> np.ndarray:
        """newdata's values of a level-2 predictor (a unit mean mean(X) as predict's docstring says), centred as the fit."""
        known, j = rows.known, rows.j
        if term.unit_mean:
            w = rows.column(f"mean({term.name})", required=False)
            if w is None:  # the unit's own mean of X: the fit's for a known unit, newdata's for a new one
                w = np.empty(rows.n)
                w[known] = self._unit_means(term.name)[j[known]]
                w[~known] = rows.own_means(rows.column(term.name))[~known]
                if rows.new_rows:
                    rows.notes.append(f"mean({term.name}) of units the fit has not seen is the mean of their rows "
                                      "in newdata")
            key = f"mean({term.name}) (level 2)"
        else:
            w = rows.column(term.name)
            key = f"{term.name} (level 2)"
        if term.centering == "grand":
            w = w - self.analysis.design.centering_means[key]
        return w

    def _unit_position(self) -> dict:
        """Unit id -> position among the fit's units, keyed by the archive's text and by the user's id."""
        ids = list(self.analysis.design.unit_ids)
        position = {u: j for j, u in enumerate(ids)}
        for j, u in enumerate(self._user_ids(ids)):
            position.setdefault(_id_text(u), j)
        return position

    # ------------------------------------------------------------ statsmodels' names
    def _user_ids(self, text_ids: Sequence[str]) -> pd.Index:
        """Unit ids with the user's type: the DataFrame's own values when the data were DataFrames;
        from files, integers when every id is an integer's text (as pandas.read_csv reads the file),
        else the text. So a join on the user's id column matches."""
        name = self.meta["id_name"]
        frames = self._sources
        if frames is not None and "DataFrame" in str(frames.level2_name):
            from .io.sources import ids_as_archive_text

            column = frames.level2[frames.id2]
            text = ids_as_archive_text(frames.level2, frames.id2, frames.level2_name)
            lookup = dict(zip(text, column))
            if all(t in lookup for t in text_ids):
                return pd.Index([lookup[t] for t in text_ids], dtype=column.dtype, name=name)
        if text_ids and all(_INTEGER.fullmatch(str(t)) for t in text_ids):
            values = [int(t) for t in text_ids]
            if len(set(values)) == len(values) and all(-2**63 <= v < 2**63 for v in values):
                return pd.Index(values, dtype="int64", name=name)
        return pd.Index(list(text_ids), dtype=object, name=name)

    def _fixed_frame(self) -> pd.DataFrame:
        fit = self.to_dict()
        frame = pd.DataFrame(fit["fixed_effects"])
        frame.index = pd.Index([r for r, _ in writers().fixed_names(fit)], name="term")
        return frame

    def _se_columns(self) -> tuple[str, str, str]:
        return ("robust_se", "robust_t", "robust_p") if writers().se_kind(self.to_dict()) == "robust" else ("se", "t", "p")

    @property
    def params(self) -> pd.Series:
        """The fixed effects γ, indexed by term as the lme4 formula names them (SES_gc, SECTOR:SES_gc);
        statsmodels' fe_params (its MixedLM params also hold the variance parameters: see cov_re, scale)."""
        return self._fixed_frame()["estimate"].rename("params")

    fe_params = params

    @property
    def bse(self) -> pd.Series:
        """Standard errors of params: robust (sandwich) for a weighted fit, whose model-based SEs assume
        non-informative weights, as the tables report them; model-based otherwise."""
        return self._fixed_frame()[self._se_columns()[0]].rename("bse")

    @property
    def tvalues(self) -> pd.Series:
        return self._fixed_frame()[self._se_columns()[1]].rename("tvalues")

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided p-values from t with HLM's d.f. (`df_resid` per term), as HLM 7 prints them."""
        return self._fixed_frame()[self._se_columns()[2]].rename("pvalues")

    @property
    def df_resid(self) -> pd.Series:
        """HLM's d.f. of each fixed effect's t test (or Satterthwaite's, with df='satterthwaite')."""
        return self._fixed_frame()["df"].astype(float).rename("df")

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Confidence intervals of params, columns 0 (lower) and 1 (upper) as statsmodels: params ±
        t(1 - alpha/2; d.f.) · bse, with HLM's d.f. (statsmodels' MixedLM uses the normal quantile)."""
        from .engine.special_functions import special

        if not 0 < alpha < 1:
            raise ModelError(f"alpha must be between 0 and 1, not {alpha}")
        q = special.stdtrit(self.df_resid.to_numpy(), 1 - alpha / 2)
        p, se = self.params.to_numpy(), self.bse.to_numpy()
        return pd.DataFrame({0: p - q * se, 1: p + q * se}, index=self.params.index)

    def cov_params(self) -> pd.DataFrame:
        """The covariance of params (robust for a weighted fit, as bse)."""
        fit = self.to_dict()
        key = "gamma_robust_covariance" if self._se_columns()[0] == "robust_se" else "gamma_covariance"
        index = self.params.index
        return pd.DataFrame(np.array(fit[key], dtype=float), index=index, columns=index)

    @property
    def llf(self) -> float:
        """The log-likelihood at the optimum (REML's under REML, as statsmodels and lme4); none for PQL."""
        return self.loglik

    @property
    def cov_re(self) -> pd.DataFrame:
        """τ, labelled by random term as the lme4 formula names them: (Intercept), SES_gc."""
        names = [r for r, _ in writers().random_names(self.to_dict())]
        return pd.DataFrame(self.tau.to_numpy(), index=names, columns=names)

    @property
    def scale(self) -> float:
        """σ², the level-1 variance (statsmodels' scale); an HGLM's is 1 unless over-dispersion is estimated."""
        value = self.sigma2
        return 1.0 if value is None else value

    @property
    def nobs(self) -> int:
        return int(self.to_dict()["n_level1"])

    def _repr_html_(self) -> str:
        """A notebook's display: the model line and HLM's tables (fixed effects, variance components
        with τ's correlations, the model's numbers), as `table('html')`."""
        from markupsafe import escape

        try:
            body = self.table("html")
        except Exception:  # an optional extra missing: the text output, as the terminal shows it
            return f"<pre>{escape(self.summary())}</pre>"
        return f"<div class=\"hlmcli-results\"><p>{escape(repr(self))}</p>\n{body}</div>"


_INTEGER = __import__("re").compile(r"[+-]?\d{1,19}")


def _id_text(v) -> str:
    """An id value as the archive's text: 1224, 1224.0 and '1224' are one unit."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v).strip()


class LevelsResults(Results):
    """A fitted model of three or four levels (`Results(LevelsAnalysis, archive, meta)` makes one; the
    analysis and the views it reads are levels_results.py's).

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
            self._json = (key, writers().levels_document(self.analysis, self._report_meta()))
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
        return writers().dumps_json(self.to_dict())

    def summary(self, ascii: bool = False) -> str:
        """Exactly what `hlmcli fit` prints: HLM3's (three levels) or HLM4's (four) tables."""
        return writers().levels_text(self.analysis, self._report_meta(), ascii)

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
        return writers().tidy(table_view(self.to_dict()), conf_level, se)

    def table(self, fmt: str = "markdown", options=None, **given) -> str:
        """The fixed-effects and variance-component tables as csv, markdown, latex or html (tables.TableOptions)."""
        return writers().table(table_view(self.to_dict()), fmt, options, given)

    def plot(self, kind: str, path=None, **options):
        return writers().plot_levels(self, kind, path, **options)

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

    def residuals_level(self, level: int, keep: Sequence[str] = ()) -> "pd.DataFrame":
        """HLM's level-`level` residual file (2 ≤ level ≤ K), plus the `keep` columns of the source files
        (text too): from the file of this level or above through each unit's ancestor, else from a file
        below where the unit's value is constant within it (empty where it varies)."""
        if not 2 <= level <= self.n_levels:
            raise ModelError(f"level must be 2 ... {self.n_levels}, not {level}")
        a = self.analysis
        if self.n_levels == 3:
            table = (level2_residuals if level == 2 else level3_residuals)(a.design, a.fit, self.archive)
        else:
            table = level_residuals(a.design, a.fit, self.archive, level)
        if keep:
            self._add_kept(table, keep, level, self._unit_positions()[level - 2])
        return table

    def residuals_level2(self, keep: Sequence[str] = ()) -> "pd.DataFrame":
        return self.residuals_level(2, keep)

    def _unit_positions(self) -> list:
        """Per level 2..K, the archive index of each unit the fit kept (the residual files' rows)."""
        d = self.analysis.design
        return [d.level2_positions, d.level3_positions] if self.n_levels == 3 else list(d.positions)

    def _level_frames(self):
        if getattr(self, "_frames", None) is None:
            from .io.sources import level_frames

            self._frames = level_frames(self.archive, self.meta.get("source_files"))
        return self._frames

    def _add_kept(self, table: "pd.DataFrame", keep: Sequence[str], level: int, units) -> None:
        """The `keep` columns, in the order given, after the file's own; a name it already has is left as it is."""
        from .io.sources import keep_columns

        wanted = [name for name in dict.fromkeys(keep) if name not in table.columns]
        for name, values in keep_columns(self.archive, self._level_frames(), wanted, level, units).items():
            table[name] = values

    def residuals_level1(self, keep: Sequence[str] = (), order: str = "unit") -> "pd.DataFrame":
        """The level-1 residual file: each record's unit ids (levels 2..K), the outcome, the fitted value
        from the fixed part (fitted_fixed) and with the EB estimates of every level (fitted), the
        residual (outcome - fitted) and the level-1 predictors, in the archive's order (by unit), or in
        the level-1 file's (`order="source"`). With `keep` or `order="source"`, `row` (after the ids) is
        each record's 1-based row in the level-1 file, and `keep` carries source columns, text too:
        level-1 columns directly, those of the levels above through the record's unit there."""
        return self._level1_table(keep, order)

    def _level1_table(self, keep: Sequence[str] = (), order: str = "unit") -> "pd.DataFrame":
        """residuals_level1's table; for a three-level HGLM `fitted` is the linear predictor Xγ + Zb
        (link scale, no offset) of the final working model."""
        if order not in ("source", "unit"):
            raise ModelError(f"order must be 'source' or 'unit', not '{order}'")
        a = self.analysis
        data = a.design.data
        from .engine.nested import as_levels

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
        if getattr(a, "hglm", None) is not None:
            cols.update(self._hglm_level1_columns(fixed, eb, y))
        else:
            cols.update({"fitted": eb, "fitted_fixed": fixed, "residual": y - eb, a.spec.outcome: y})
        for k, t in enumerate(a.levels_spec.level1):
            cols[t.label] = levels.predictors[0][:, self._level1_col(k)]
        table = pd.DataFrame(cols)
        if not keep and order == "unit":
            return table
        records = a.design.record_positions
        if records is None:
            raise ModelError("the level-1 records were summarised per unit (--engine stream or dask), so they have "
                             "no rows or source columns to carry; fit with --engine memory")
        rows = self._level_frames().rows[0][records]
        table.insert(self.n_levels - 1, "row", rows + 1)
        if keep:
            self._add_kept(table, keep, 1, records)
        if order == "source":
            table = table.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
        return table

    def _hglm_level1_columns(self, fixed, eb, y) -> dict:
        """A three-level HGLM's level-1 columns: the linear predictor with the EB estimates (the modes, for
        Laplace; the final working model's, for PQL) and from the fixed part alone, both on the link scale
        with the offset (log exposure); the fitted mean E(y | b̂) (trials × φ, or λ); the response residual
        y − mean; the outcome."""
        from .analysis.hglm_levels import level1_column

        a, h = self.analysis, self.analysis.hglm
        offset = 0.0
        if h.exposure:
            offset = np.log(level1_column(self.archive, a.design, h.exposure, "--exposure"))
        eta, eta_fixed = eb + offset, fixed + offset
        if h.link == "logit":
            n = level1_column(self.archive, a.design, h.trials, "--trials") if h.trials else 1.0
            mean = n / (1.0 + np.exp(-eta))
        else:
            mean = np.exp(eta)
        return {"eta": eta, "eta_fixed": eta_fixed, "fitted_mean": mean, "residual": y - mean, a.spec.outcome: y}

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
        from .io.files import output_transaction
        from .io.residual_files import write_table

        paths = {1: level1, 2: level2, **(more or {})}
        with output_transaction():
            for level, path in sorted(paths.items()):
                if path:
                    table = self.residuals_level1(keep, order) if level == 1 else self.residuals_level(level, keep)
                    write_table(table, path)


class CrossedResults(Results):
    """A fitted cross-classified model (HLM 7's HCM2; lme4's (1 | A) + (1 | B)): `CrossedResults(analysis)`
    with an analysis.crossed_run.CrossedAnalysis. The accessors of a two-level fit, per grouping factor
    where it has one of a kind:
      fixed_effects, variance_components (one block per factor, then level 1), tau (factor -> DataFrame),
      sigma2, deviance, loglik, n_params, aic, bic, random_effects(factor), residuals_factor(factor),
      residuals_level1(), write_residuals(...), summary(), to_json(), to_dict(), tidy(), table(fmt), plot(kind)
    and, as hlmcli.fit_crossed gave them before: gamma and se ({name: value}), ranef and labels (per random
    term, the EB estimates and the groups), certified, text()."""

    def __init__(self, analysis, archive=None, meta: dict | None = None, sources=None) -> None:
        self.analysis = analysis
        self.archive = archive
        self.meta = dict(meta or {})
        self._sources = sources
        self._json = None
        self._eb = None
        self._postvar = None
        self.hglm = False
        fit = analysis.fit
        self.gamma = dict(zip(analysis.design.fixed_names, fit.gamma))
        self.se = dict(zip(analysis.design.fixed_names, fit.se))
        self.keys = _term_keys(fit.factors)
        self.ranef = dict(zip(self.keys, fit.ranef))  # EB (conditional modes) per term, rows in labels' order
        self.labels = dict(zip(self.keys, fit.labels))

    # ------------------------------------------------------------ the documents
    @property
    def results(self):
        """The analysis (analysis.crossed_run.CrossedAnalysis): design, fit, failures, boundary notes."""
        return self.analysis

    def to_dict(self) -> dict:
        """The CLI's JSON document (hlmcli/schema/crossed-2.json) as a dict."""
        key = tuple(str(self.meta.get(k)) for k in ("data_source", "timestamp"))
        if self._json is None or self._json[0] != key:
            self._json = (key, writers().crossed_document(self.analysis, self.meta))
        return self._json[1]

    def to_json(self) -> str:
        return writers().dumps_json(self.to_dict())

    def summary(self, ascii: bool = False) -> str:
        """Exactly what `hlmcli fit --formula` prints (HCM2's tables)."""
        return writers().crossed_text(self.analysis, self.meta)

    def text(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        fit = self.analysis.fit
        groups = ", ".join(f"{f}={J}" for f, J in zip(fit.factors, fit.n_groups))
        return (f"<hlmcli.Results cross-classified {fit.method} {self.analysis.design.outcome}: N={fit.n}, {groups}, "
                f"deviance={fit.deviance:.4f}>")

    # ------------------------------------------------------------ status
    @property
    def method(self) -> str:
        return self.analysis.fit.method

    @property
    def converged(self) -> bool:
        return bool(self.analysis.certified)

    @property
    def certified(self) -> bool:
        return self.converged

    @property
    def failures(self) -> list[str]:
        return [] if self.converged else ["the optimum is not certified: " + "; ".join(self.analysis.failures)]

    @property
    def warnings(self) -> list[str]:
        return []

    @property
    def boundary_notes(self) -> list[str]:
        return self.analysis.boundary_notes()

    # ------------------------------------------------------------ the numbers
    @property
    def fixed_effects(self) -> "pd.DataFrame":
        """One row per fixed effect: term (R's name), label (THETA0, ...), name, estimate, se, t, df, p."""
        frame = pd.DataFrame(self.to_dict()["fixed_effects"]).rename(columns={"p_value": "p"})
        return frame[["term", "label", "name", "estimate", "se", "t", "df", "p"]]

    @property
    def variance_components(self) -> "pd.DataFrame":
        """One row per random effect, factor by factor (each its τ block's diagonal), then level 1:
        factor, effect, label, sd, variance."""
        rows = []
        for block in self.to_dict()["random_effects"]:
            for k, (name, label) in enumerate(zip(block["coefficients"], block["labels"])):
                v = block["matrix"][k][k]
                rows.append({"factor": block["factor"], "effect": name, "label": label,
                             "sd": math.sqrt(max(v, 0.0)), "variance": v})
        rows.append({"factor": None, "effect": "level-1", "label": "e", "sd": math.sqrt(self.sigma2),
                     "variance": self.sigma2})
        return pd.DataFrame(rows)

    @property
    def random_coefficients(self) -> dict:
        return {k: list(cols) for k, cols in zip(self.keys, self.analysis.fit.columns)}

    @property
    def tau(self) -> dict:
        """{random term: τ, labelled by coefficient}; a factor with several terms (x || g) is g, g.1, ... as lme4."""
        fit = self.analysis.fit
        return {k: pd.DataFrame(np.asarray(t, float), index=list(c), columns=list(c))
                for k, t, c in zip(self.keys, fit.taus, fit.columns)}

    @property
    def sigma2(self) -> float:
        return float(self.analysis.fit.sigma2)

    @property
    def deviance(self) -> float:
        return float(self.analysis.fit.deviance)

    @property
    def n_params(self) -> int:
        return int(self.analysis.n_params)

    @property
    def aic(self) -> float:
        return float(self.to_dict()["aic"])

    @property
    def bic(self) -> float:
        return float(self.to_dict()["bic"])

    def _fixed_frame(self) -> "pd.DataFrame":
        frame = pd.DataFrame(self.to_dict()["fixed_effects"]).rename(columns={"p_value": "p"})
        frame.index = pd.Index(list(frame["term"]), name="term")
        return frame

    def _se_columns(self) -> tuple[str, str, str]:
        return ("se", "t", "p")  # model-based: crossed factors have no cluster for a sandwich

    @property
    def cov_re(self) -> "pd.DataFrame":
        """Every factor's τ as one block-diagonal matrix (different factors' effects are independent),
        labelled 'term|factor' as lme4's VarCorr names them: (Intercept)|plate."""
        view = writers().crossed_view(self.to_dict())
        names = [f"{r}|{g}" for r, g in zip(view["r_names"], view["tau_groups"])]
        return pd.DataFrame(np.array(view["tau"], dtype=float), index=names, columns=names)

    def tidy(self, conf_level: float = 0.95, se: str = "auto") -> "pd.DataFrame":
        return writers().tidy(writers().crossed_view(self.to_dict()), conf_level, se)

    def glance(self) -> "pd.DataFrame":
        return pd.DataFrame([writers().glance(writers().crossed_view(self.to_dict()))])

    def table(self, fmt: str = "markdown", options=None, **given) -> str:
        return writers().table(writers().crossed_view(self.to_dict()), fmt, options, given)

    def plot(self, kind: str, path=None, **options):
        return writers().plot_crossed(self, kind, path, **options)

    def predict(self, newdata=None):
        raise ModelError("predict() is for two-level fits; for a cross-classified fit, residuals_level1() holds each "
                         "record's fitted value (fixed part and with every factor's EB estimates)")

    # ------------------------------------------------------------ groups
    @property
    def eb(self):
        raise ModelError("a cross-classified fit has EB estimates per grouping factor: use random_effects(factor)")

    @property
    def factors(self) -> list[str]:
        """The grouping factors, each once, in the formula's order (a factor split by || has several terms)."""
        return list(dict.fromkeys(self.analysis.fit.factors))

    def _terms(self, factor: str | None) -> list[int]:
        """The random terms of a grouping factor (the first factor when None), or the one term named g.1."""
        fit = self.analysis.fit
        factor = self.factors[0] if factor is None else str(factor)
        for match in (lambda x, y: x == y, lambda x, y: x.lower() == y.lower()):
            hits = [k for k, f in enumerate(fit.factors) if match(f, factor)]
            hits = hits or [k for k, key in enumerate(self.keys) if match(key, factor)]
            if hits:
                return hits
        raise ModelError(f"'{factor}' is not a grouping factor of this fit; its factors are {', '.join(self.factors)}")

    def posterior_variances(self) -> tuple:
        if self._postvar is None:
            self._postvar = self.analysis.fit.posterior_variances()
        return self._postvar

    def _letter(self, b: int) -> str:
        """HCM2's letter of a factor's random effects: b (row) and c (column) with two factors, else u."""
        factors = self.factors
        two = len(factors) == 2 and all(":" not in f for f in factors)
        return "bc"[factors.index(self.analysis.fit.factors[b])] if two else "u"

    def residuals_factor(self, factor: str | None = None, keep: Sequence[str] = ()) -> "pd.DataFrame":
        """One row per group of a grouping factor (the first when None): its id, its number of records,
        and for each of its random effects (every term of the factor) the EB estimate (b_, c_ or u_ as HCM2
        labels them) and its posterior variance (postvar_: given γ̂, τ and σ², lme4's condVar), then the
        `keep` columns of the data where they are constant within the group (empty where they vary)."""
        terms = self._terms(factor)
        a = self.analysis
        fit, term = a.fit, a.design.terms[terms[0]]
        cols: dict = {fit.factors[terms[0]]: list(fit.labels[terms[0]]),
                      "n": np.bincount(term.codes, minlength=term.J).astype(int)}
        variances = self.posterior_variances()
        for b in terms:  # the terms of one factor share its groups, in one order (crossed_design.design)
            letter = self._letter(b)
            for k, c in enumerate(fit.columns[b]):
                cols[f"{letter}_{c}"] = fit.ranef[b][:, k]
                cols[f"postvar_{letter}_{c}"] = variances[b][:, k, k]
        table = pd.DataFrame(cols)
        for name, values in self._kept(keep, table.columns, term.codes, term.J).items():
            table[name] = values
        return table

    def residuals_level1(self, keep: Sequence[str] = ()) -> "pd.DataFrame":
        """One row per record used, in the data's order: its row in the file (1-based), each factor's group,
        the outcome, the fitted value from the fixed part (fitted_fixed) and with every factor's EB
        estimates (fitted), the residual (outcome − fitted), then the `keep` columns."""
        a = self.analysis
        d, fit = a.design, a.fit
        fixed = d.X @ fit.gamma
        eb = fixed.copy()
        for t, u in zip(d.terms, fit.ranef):
            eb += np.einsum("nk,nk->n", t.Z, u[t.codes])
        rows = d.rows if d.rows is not None else np.arange(d.y.size)
        cols: dict = {"row": rows + 1}
        for key, t, labels in zip(self.keys, d.terms, fit.labels):
            if t.factor not in cols:
                cols[t.factor] = np.asarray(labels, dtype=object)[t.codes]
        cols.update({d.outcome: d.y, "fitted_fixed": fixed, "fitted": eb, "residual": d.y - eb})
        table = pd.DataFrame(cols)
        for name, values in self._kept(keep, table.columns, np.arange(d.y.size), d.y.size).items():
            table[name] = values
        return table

    def _kept(self, keep: Sequence[str], have, codes: np.ndarray, J: int) -> dict:
        """The `keep` columns of the data read, per group (codes: each used record's group of J): a group's
        value where every record of it has the same, else empty."""
        if not keep:
            return {}
        from .io.readers import find_column

        d = self.analysis.design
        if d.table is None:
            raise ModelError("--keep needs the data the fit read; this fit does not hold it")
        rows = d.rows if d.rows is not None else np.arange(d.y.size)
        out = {}
        for name in dict.fromkeys(keep):
            if name in have:
                continue
            col = find_column(d.table, name, "--keep column")
            values = d.table.data[col].to_numpy()[rows]
            frame = pd.DataFrame({"g": codes, "v": values})
            first = frame.groupby("g", sort=True)["v"].first()
            same = frame.groupby("g", sort=True)["v"].nunique(dropna=False) <= 1
            per = pd.Series([None] * J, dtype=object)
            per[first.index.to_numpy()] = np.where(same.to_numpy(), first.to_numpy(dtype=object), None)
            out[col] = per.to_numpy()
        return out

    def write_residuals(self, level1=None, factors: dict | None = None, keep: Sequence[str] = ()) -> None:
        """Write the level-1 file and one file per grouping factor ({factor: path}), atomically: all or none
        (.csv, .sav or .dta by extension)."""
        from .io.files import output_transaction
        from .io.residual_files import write_table

        with output_transaction():
            if level1:
                write_table(self.residuals_level1(keep), level1)
            for factor, path in (factors or {}).items():
                if path:
                    write_table(self.residuals_factor(factor, keep), path)

    def random_effects(self, factor: str | None = None) -> "pd.DataFrame":
        """The EB estimates and posterior variances of a factor's groups, indexed by the group's id."""
        table = self.residuals_factor(factor)
        return table.set_index(table.columns[0])


def _term_keys(factors) -> list[str]:
    """One key per random term; a factor with several terms (x || g) is g, g.1, ... as lme4 names them."""
    keys, seen = [], {}
    for name in factors:
        keys.append(name if name not in seen else f"{name}.{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return keys
