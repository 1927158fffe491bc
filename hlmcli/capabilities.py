"""What hlmcli fits, as one table: for each kind of two-level model and each feature, either supported
or refused with the statistical reason. (Options that would do nothing in a combination, such as
--quadrature-points without --estimation agq or an HGLM option with a normal outcome, are usage
errors refused by flags.py before this check.) `check` is the one place a fit is refused for what it asks
(the command line, the API and `plot` all call it before fitting), and the README's matrix is
generated from the same table (`hlmcli capabilities`, kept current by tests/test_capabilities.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError
from .spec import Engine, FitOptions, OutputOptions

# The kinds of two-level model, as the table's columns.
KINDS = {
    "linear": "linear (memory)",
    "linear-summary": "linear (stream, Dask)",
    "pql": "HGLM PQL",
    "laplace": "HGLM Laplace",
    "agq": "HGLM AGQ",
}

_RECORDS = ("needs the records themselves, which the per-unit summaries of the stream and Dask engines do not "
            "keep; fit with --engine memory")
_HGLM_SUMMARY = ("a binary, binomial or count outcome needs repeated passes over the records: it has no per-unit "
                 "sufficient statistics, as its likelihood changes with every value of γ and τ; fit with --engine memory")
_NO_DEVIANCE = ("a likelihood-ratio test needs a deviance, and PQL has none (it maximises a quasi-likelihood); "
                "use --estimation laplace or agq for both models")
_HGLM_WEIGHTS = ("sampling weights of an HGLM enter its likelihood inside the integral over the random effects "
                 "(Rabe-Hesketh & Skrondal 2006); hlmcli weights the normal likelihood only")
_HGLM_COMBINED = ("Rubin's rules need one complete-data fit per data set with its covariance; they are wired for "
                  "the normal model only so far; fit each plausible value or data set on its own")
_SATTERTHWAITE = ("Satterthwaite's d.f. come from the normal model's REML/ML covariance of the variance estimates; "
                  "HGLM tables use HLM 7's d.f.")
_HLM6 = ("HLM 5/6's N - F d.f. are a rule for the normal model's fixed slopes; HGLM tables use HLM 7's d.f., "
         "as HLM 7 prints them")
_HOMOGENEITY = ("an HGLM's level-1 variance is fixed by the mean (φ(1 - φ) or λ), so there is no level-1 variance "
                "to test for homogeneity")
_FULL_OUTPUT = "the unit-by-unit OLS regressions and least-squares estimates of --full-output are for a normal outcome"
_PLOT_SUMMARY = ("hlmcli plot fits from the records (an archive or the data files) in memory; per-unit summaries hold "
                 "no level-1 residuals to draw; draw a saved fit's equation graph with 'plot equation FIT.json'")


@dataclass(frozen=True)
class Feature:
    key: str
    label: str  # as the user writes it
    refused: dict  # kind -> reason; a kind not named supports the feature


FEATURES = (
    Feature("api", "Python API (hlmcli.fit)", {}),
    Feature("plot", "hlmcli plot (HGLM: the equation graph, on the link scale)", {"linear-summary": _PLOT_SUMMARY}),
    Feature("table", "hlmcli table of saved fits", {}),
    Feature("compare", "hlmcli compare (likelihood-ratio test)", {"pql": _NO_DEVIANCE}),
    Feature("formats", "--format csv|markdown|latex|html", {}),
    Feature("test", "--test (Wald tests of γ)", {}),
    Feature("compare_deviance", "--compare-deviance", {"pql": _NO_DEVIANCE}),
    Feature("residuals", "--residuals-l1/--residuals-l2", {"linear-summary": _RECORDS}),
    Feature("keep", "--keep", {"linear-summary": _RECORDS}),
    Feature("json_out", "--json-out", {}),
    Feature("tau_diagonal", "--tau diagonal", {}),
    Feature("satterthwaite", "--df satterthwaite",
            {"pql": _SATTERTHWAITE, "laplace": _SATTERTHWAITE, "agq": _SATTERTHWAITE}),
    Feature("df_hlm6", "--df hlm6", {"pql": _HLM6, "laplace": _HLM6, "agq": _HLM6}),
    Feature("homogeneity", "--test-homogeneity", {"pql": _HOMOGENEITY, "laplace": _HOMOGENEITY, "agq": _HOMOGENEITY}),
    Feature("full_output", "--full-output", {"pql": _FULL_OUTPUT, "laplace": _FULL_OUTPUT, "agq": _FULL_OUTPUT}),
    Feature("weights", "--weight1/--weight2 (sampling weights)",
            {"linear-summary": _RECORDS, "pql": _HGLM_WEIGHTS, "laplace": _HGLM_WEIGHTS, "agq": _HGLM_WEIGHTS}),
    Feature("plausible_values", "--plausible-values/--imputed",
            {"linear-summary": _RECORDS, "pql": _HGLM_COMBINED, "laplace": _HGLM_COMBINED, "agq": _HGLM_COMBINED}),
    Feature("missing_now", "--missing now", {"linear-summary": _RECORDS}),
    Feature("stream_dask", "--engine stream/dask",
            {"pql": _HGLM_SUMMARY, "laplace": _HGLM_SUMMARY, "agq": _HGLM_SUMMARY}),
)
_BY_KEY = {f.key: f for f in FEATURES}


def kind_of(spec, engine: Engine | str = Engine.MEMORY) -> str:
    """The table's column for a model: linear (by engine) or the HGLM estimation."""
    if spec.options.family == "normal":
        return "linear" if Engine(engine) == Engine.MEMORY else "linear-summary"
    return spec.options.estimation


def reason(feature: str, kind: str) -> str | None:
    """Why `feature` is refused for `kind`, or None when it is supported."""
    return _BY_KEY[feature].refused.get(kind)


def features_asked(spec, fit: FitOptions, out: OutputOptions) -> list[str]:
    """The features a fit asks for, from its options and its model file (a .hlm file's resfil1:, weights...)."""
    o = spec.options
    asked = {
        "residuals": bool(out.residuals_l1 or out.residuals_l2 or o.residuals_l1 or o.residuals_l2),
        "keep": bool(out.keep),
        "json_out": bool(out.json_out),
        "formats": out.out_format not in ("text", "json"),
        "test": bool(fit.tests or o.hypotheses),
        "compare_deviance": o.prior_deviance is not None,
        "tau_diagonal": o.tau == "diagonal",
        "satterthwaite": fit.df_method == "satterthwaite",
        "df_hlm6": fit.df_method == "hlm6",
        "homogeneity": bool(o.homogeneity),
        "full_output": bool(o.full_output),
        "weights": bool(fit.weight1 or fit.weight2 or o.weight1 or o.weight2),
        "plausible_values": bool(fit.plausible_values or fit.imputed),
        "stream_dask": Engine(fit.engine) != Engine.MEMORY,
    }
    return [key for key, on in asked.items() if on]


def refuse(feature: str, kind: str) -> None:
    """Raise the one-line refusal of `feature` for `kind`, if the table has one."""
    why = reason(feature, kind)
    if why:
        raise ModelError(f"{_BY_KEY[feature].label.split(' (')[0]}: not available for a {KINDS[kind]} fit: {why}")


def check(spec, fit: FitOptions, out: OutputOptions, engine: Engine | str = Engine.MEMORY,
          extra: tuple[str, ...] = ()) -> None:
    """Refuse, in one line with its reason, the first feature this kind of model does not support.
    `extra` names features asked outside the options (e.g. 'missing_now' from the archive build)."""
    kind = kind_of(spec, engine)
    for key in features_asked(spec, fit, out) + list(extra):
        refuse(key, kind)


def markdown_table() -> str:
    """The README's matrix: ✓ where supported, else a numbered note with the reason."""
    notes: list[str] = []
    header = "| Feature | " + " | ".join(KINDS.values()) + " |"
    rows = [header, "|" + "---|" * (len(KINDS) + 1)]
    for f in FEATURES:
        cells = []
        for kind in KINDS:
            why = f.refused.get(kind)
            if why is None:
                cells.append("✓")
            else:
                if why not in notes:
                    notes.append(why)
                cells.append(f"no ({notes.index(why) + 1})")
        rows.append(f"| {f.label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    rows.append("")
    rows += [f"{k}. {why}" for k, why in enumerate(notes, start=1)]
    return "\n".join(rows) + "\n"
