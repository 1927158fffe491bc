"""Tables for papers, from fits' JSON documents (a fresh fit or saved `--format json` files).

- `tidy`: broom's column names, one row per fixed effect (and per variance component), as CSV;
- `fit_table`: one fit's fixed-effects and variance-component tables as csv, markdown, latex or html;
- `side_by_side`: several fits in columns, as modelsummary and texreg print them.

Escaping and layout come from maintained libraries: pandas' Styler (jinja2) for LaTeX and HTML,
tabulate (through pandas) for Markdown. Both are the optional extra `hlmcli[tables]`.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import pandas as pd

from .errors import HlmError, ModelError
from .results import information_criteria, term_name

FORMATS = ("csv", "markdown", "latex", "html")


class MissingExtra(HlmError):
    """An optional dependency is not installed."""


def _term(f: dict) -> str:
    """A fixed effect's R name: given by a fit of three or more levels (the product along its path), else
    made from its coefficient and level-2 predictor."""
    return f.get("term") or term_name(f["coefficient"], f["predictor"])


def _ascii(label: str) -> str:
    return label.replace("γ", "g").replace("δ", "d")


def _residual(v: dict) -> bool:
    """Whether a variance component is level 1's (r at two levels, e at three and four)."""
    return v["label"] == "r" or v.get("level") == 1


def _level_rows(fit: dict) -> list[tuple[str, str]]:
    """("J (level k)", count) for the levels above 2 of a fit of three or more levels."""
    return [(f"J (level {k})", str(n)) for k, n in sorted((fit.get("n_units") or {}).items()) if int(k) > 2]


def _t_quantile(level: float, df) -> float:
    from scipy import special

    if df is None or (isinstance(df, float) and math.isnan(df)):
        return float("nan")
    return float(special.stdtrit(float(df), 0.5 + level / 2))


def tidy(fit: dict, conf_level: float = 0.95) -> pd.DataFrame:
    """broom-style rows: effect ("fixed" or "ran_pars"), term, estimate, std_error, statistic, df,
    p_value, conf_low, conf_high, then robust_std_error, robust_statistic, robust_p_value,
    robust_conf_low, robust_conf_high, and HLM's gamma label. Variance components are rows
    "var__<coefficient>" and "var__Residual" with HLM's χ² test as statistic."""
    rows = []
    for f in fit["fixed_effects"]:
        t = _t_quantile(conf_level, f["df"])
        rows.append({
            "effect": "fixed", "term": _term(f),
            "estimate": f["estimate"], "std_error": f["se"], "statistic": f["t"], "df": f["df"], "p_value": f["p"],
            "conf_low": f["estimate"] - t * f["se"], "conf_high": f["estimate"] + t * f["se"],
            "robust_std_error": f["robust_se"], "robust_statistic": f["robust_t"], "robust_p_value": f["robust_p"],
            "robust_conf_low": f["estimate"] - t * f["robust_se"], "robust_conf_high": f["estimate"] + t * f["robust_se"],
            "gamma": f["gamma"],
        })
    for v in fit["variance_components"]:
        rows.append({"effect": "ran_pars", "term": f"var__{'Residual' if _residual(v) else v['effect']}",
                     "estimate": v["variance"], "statistic": v["chi2"], "df": v["df"], "p_value": v["p"],
                     "gamma": v["label"]})
    columns = ["effect", "term", "estimate", "std_error", "statistic", "df", "p_value", "conf_low", "conf_high",
               "robust_std_error", "robust_statistic", "robust_p_value", "robust_conf_low", "robust_conf_high", "gamma"]
    ratio = ratio_key(fit)
    if ratio:  # an HGLM: exp(γ) with its interval, as broom's exponentiate = TRUE
        for row, f in zip(rows, fit["fixed_effects"]):
            row.update({ratio: f[ratio], f"{ratio}_conf_low": math.exp(row["conf_low"]),
                        f"{ratio}_conf_high": math.exp(row["conf_high"])})
        columns += [ratio, f"{ratio}_conf_low", f"{ratio}_conf_high"]
    return pd.DataFrame(rows, columns=columns)


def _p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}"


def _df(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:g}" if float(x).is_integer() else f"{x:.1f}"


RATIO_HEADINGS = {"odds_ratio": "Odds ratio", "rate_ratio": "Rate ratio"}


def ratio_key(fit: dict) -> str | None:
    """The key of exp(γ) in an HGLM fit's fixed effects (odds or event-rate ratio), None for a linear fit."""
    rows = fit["fixed_effects"]
    return next((k for k in RATIO_HEADINGS if rows and k in rows[0]), None)


def _stat(x, digits: int = 2) -> str:
    return "none" if x is None else f"{x:.{digits}f}"


def fit_frames(fit: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables of one fit, as text cells ready to print."""
    ratio = ratio_key(fit)
    fixed = pd.DataFrame([{
        "Fixed effect": f"{_term(f)} ({_ascii(f['gamma'])})",
        "Coefficient": _f(f["estimate"]), "SE": _f(f["se"]), "t-ratio": _f(f["t"], 2), "d.f.": _df(f["df"]),
        "p-value": _p(f["p"]), "Robust SE": _f(f["robust_se"]), "Robust p-value": _p(f["robust_p"]),
        **({RATIO_HEADINGS[ratio]: _f(f[ratio]), "95% CI": f"({_f(f['ci_low'])}, {_f(f['ci_high'])})"} if ratio else {}),
    } for f in fit["fixed_effects"]])
    var = pd.DataFrame([{
        "Random effect": f"level-1, {v['label']}" if _residual(v) else f"{v['effect']}, {v['label']}",
        "SD": _f(v["sd"]), "Variance": _f(v["variance"]), "d.f.": _df(v["df"]), "Chi-square": _f(v["chi2"], 2),
        "p-value": _p(v["p"]),
    } for v in fit["variance_components"]])
    return fixed, var


# Markdown has no escaping in tabulate (its "pipe" format writes cells as they are), so names are
# escaped here: a '|' would end the cell, a newline the row, and * _ ` ~ [ ] < > & would start
# emphasis, code, links, HTML or entities. A backslash before ASCII punctuation is CommonMark's
# escape (spec 2.4), which GitHub's tables also honour for '|'.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_~\[\]<>&|])")


def markdown_escape(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def _markdown_names(frame: pd.DataFrame, index: bool) -> pd.DataFrame:
    """The names in a table (column headings, the label column, the index) escaped; the numbers,
    which hlmcli formats itself, are left as they are ('<0.001' is not HTML)."""
    frame = frame.copy()
    if frame.shape[1] and not index:
        frame.iloc[:, 0] = frame.iloc[:, 0].map(markdown_escape)
    if index:
        frame.index = [markdown_escape(i) for i in frame.index]
    frame.columns = [markdown_escape(c) for c in frame.columns]
    return frame


def _render(frame: pd.DataFrame, fmt: str, index: bool, name: str = "table") -> str:
    if fmt == "csv":
        return frame.to_csv(index=index, lineterminator="\n")
    if fmt == "markdown":
        try:
            import tabulate  # noqa: F401
        except ImportError:
            raise MissingExtra("Markdown tables need tabulate, which is not installed; "
                               "install it with: pip install 'hlmcli[tables]'") from None
        frame = _markdown_names(frame, index)
        return frame.to_markdown(index=index, disable_numparse=True, colalign=["left"] + ["right"] * (frame.shape[1] - (0 if index else 1))) + "\n"
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise MissingExtra(f"{'LaTeX' if fmt == 'latex' else 'HTML'} tables need jinja2, which is not installed; "
                           "install it with: pip install 'hlmcli[tables]'") from None
    styler = frame.style
    if not index:
        styler = styler.hide(axis="index")
    if fmt == "latex":
        styler = styler.format(escape="latex").format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
        columns = ("l" if index else "") + "l" + "r" * (frame.shape[1] - 1)
        return styler.to_latex(hrules=True, column_format=columns)
    if fmt == "html":
        styler = styler.format(escape="html").format_index(escape="html", axis=0).format_index(escape="html", axis=1)
        # a fixed id per table (Styler's default is random on every run): the same fit, the same bytes
        return styler.set_uuid(name).to_html()
    raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")


def fit_table(fit: dict, fmt: str) -> str:
    """One fit's tables: CSV is the tidy table; the other formats give the fixed effects, then the
    variance components and the deviance."""
    if fmt == "csv":
        return tidy(fit).to_csv(index=False, lineterminator="\n", float_format="%.10g")
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    fixed, var = fit_frames(fit)
    _, aic, bic = information_criteria(fit)
    stats = pd.DataFrame([{"Statistic": "Deviance", "Value": _stat(fit["deviance"])},
                          {"Statistic": f"Estimated parameters ({_method(fit)}, HLM count)", "Value": str(fit["n_params"])},
                          {"Statistic": "AIC", "Value": _stat(aic)}, {"Statistic": "BIC", "Value": _stat(bic)},
                          {"Statistic": "N (level 1)", "Value": str(fit["n_level1"])},
                          {"Statistic": "J (level 2)", "Value": str(fit["n_level2"])}]
                         + [{"Statistic": name, "Value": n} for name, n in _level_rows(fit)])
    sep = {"markdown": "\n", "latex": "\n", "html": "\n"}[fmt]
    return sep.join(_render(frame, fmt, index=False, name=name)
                    for frame, name in ((fixed, "fixed"), (var, "variance"), (stats, "statistics")))


def _method(fit: dict) -> str:
    """REML or ML; for an HGLM also the family and the estimation (PQL has no deviance to read)."""
    if "family" not in fit:
        return fit["method"]
    how = {"pql": f"PQL ({fit['method']})", "laplace": "Laplace", "agq": f"AGQ {fit.get('quadrature_points')}"}
    return f"{fit['family']}, {how[fit['estimation']]}"


def side_by_side(fits: Sequence[dict], names: Sequence[str]) -> pd.DataFrame:
    """Models in columns: each fixed effect's estimate with its SE in parentheses below, then the
    variance components, deviance, AIC, BIC, N and J (as modelsummary and texreg lay them out)."""
    if len(fits) != len(names):
        raise ModelError("give one name per model")
    from .levels_results import table_view

    fits = [table_view(f) if f.get("levels", 2) > 2 else f for f in fits]
    terms: list[str] = []
    for fit in fits:
        for f in fit["fixed_effects"]:
            t = _term(f)
            if t not in terms:
                terms.append(t)
    var_rows: list[str] = []
    for fit in fits:
        for v in fit["variance_components"]:
            label = "Var: Residual" if _residual(v) else f"Var: {v['effect']}"
            if label not in var_rows:
                var_rows.append(label)
    var_rows = [r for r in var_rows if r != "Var: Residual"] + ["Var: Residual"]
    index: list[str] = []
    for t in terms:
        index += [t, f"{t} (SE)"]
    higher = sorted({name for fit in fits for name, _ in _level_rows(fit)})
    index += var_rows + ["Deviance", "AIC", "BIC", "Method", "N", "J"] + higher
    table = pd.DataFrame("", index=index, columns=list(names))
    for fit, name in zip(fits, names):
        for f in fit["fixed_effects"]:
            t = _term(f)
            table.loc[t, name] = _f(f["estimate"])
            table.loc[f"{t} (SE)", name] = f"({_f(f['se'])})"
        for v in fit["variance_components"]:
            label = "Var: Residual" if _residual(v) else f"Var: {v['effect']}"
            table.loc[label, name] = _f(v["variance"])
        _, aic, bic = information_criteria(fit)
        table.loc["Deviance", name] = _stat(fit["deviance"])
        table.loc["AIC", name] = _stat(aic)
        table.loc["BIC", name] = _stat(bic)
        table.loc["Method", name] = _method(fit)
        table.loc["N", name] = str(fit["n_level1"])
        table.loc["J", name] = str(fit["n_level2"])
        for row, n in _level_rows(fit):
            table.loc[row, name] = n
    # The SE rows print with an empty label, as in the papers' tables.
    table.index = [("" if i.endswith(" (SE)") else i) for i in table.index]
    return table


def side_by_side_text(fits: Sequence[dict], names: Sequence[str], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    table = side_by_side(fits, names)
    table.insert(0, " ", table.index)
    return _render(table.reset_index(drop=True), fmt, index=False, name="models")


def latex_document(body: str) -> str:
    """A minimal document around a table (tables use booktabs' rules), for checking that it compiles."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body
            + "\n\\end{document}\n")


def combined_table(doc: dict, fmt: str) -> str:
    """Plausible values or imputed data sets combined by Rubin's rules (plausible.combined_json's
    document): CSV is a tidy table (broom's columns, as mice::pool's summary, plus the fraction of
    missing information); the other formats give the fixed effects, the averaged variance components
    and the run's numbers."""
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    robust = {r["gamma"]: r for r in doc["fixed_effects_robust"]}
    names = doc["random_coefficients"]
    if fmt == "csv":
        rows = []
        for f in doc["fixed_effects"]:
            rb = robust[f["gamma"]]
            t = _t_quantile(0.95, f["df"])
            tr = _t_quantile(0.95, rb["df"])
            rows.append({
                "effect": "fixed", "term": term_name(f["coefficient"], f["predictor"]), "estimate": f["estimate"],
                "std_error": f["se"], "statistic": f["t"], "df": f["df"], "p_value": f["p"],
                "conf_low": f["estimate"] - t * f["se"], "conf_high": f["estimate"] + t * f["se"],
                "fmi": f["fmi"], "riv": f["riv"], "within": f["within"], "between": f["between"],
                "robust_std_error": rb["se"], "robust_statistic": rb["t"], "robust_df": rb["df"],
                "robust_p_value": rb["p"], "robust_conf_low": rb["estimate"] - tr * rb["se"],
                "robust_conf_high": rb["estimate"] + tr * rb["se"], "robust_fmi": rb["fmi"], "gamma": f["gamma"]})
        for k, name in enumerate(names):
            rows.append({"effect": "ran_pars", "term": f"var__{name}", "estimate": doc["tau"][k][k]})
        rows.append({"effect": "ran_pars", "term": "var__Residual", "estimate": doc["sigma2"]})
        columns = ["effect", "term", "estimate", "std_error", "statistic", "df", "p_value", "conf_low", "conf_high",
                   "fmi", "riv", "within", "between", "robust_std_error", "robust_statistic", "robust_df",
                   "robust_p_value", "robust_conf_low", "robust_conf_high", "robust_fmi", "gamma"]
        return pd.DataFrame(rows, columns=columns).to_csv(index=False, lineterminator="\n", float_format="%.10g")
    fixed = pd.DataFrame([{
        "Fixed effect": f"{term_name(f['coefficient'], f['predictor'])} ({f['gamma'].replace('γ', 'g')})",
        "Coefficient": _f(f["estimate"]), "SE": _f(f["se"]), "t-ratio": _f(f["t"], 2), "d.f.": _df(f["df"]),
        "p-value": _p(f["p"]), "FMI": _f(f["fmi"]), "Robust SE": _f(robust[f["gamma"]]["se"]),
        "Robust p-value": _p(robust[f["gamma"]]["p"]),
    } for f in doc["fixed_effects"]])
    var = pd.DataFrame([{"Random effect": name, "SD": _f(math.sqrt(max(doc["tau"][k][k], 0.0))),
                         "Variance": _f(doc["tau"][k][k])} for k, name in enumerate(names)]
                       + [{"Random effect": "level-1, r", "SD": _f(math.sqrt(doc["sigma2"])),
                           "Variance": _f(doc["sigma2"])}])
    combining = doc["combining"]
    stats = pd.DataFrame([{"Statistic": f"Fits combined ({combining['source']})", "Value": str(combining["m"])},
                          {"Statistic": "Deviance (average over the fits)", "Value": f"{doc['deviance']:.2f}"},
                          {"Statistic": f"Estimated parameters ({doc['method']}, HLM count)", "Value": str(doc["n_params"])},
                          {"Statistic": "N (level 1)", "Value": str(doc["n_level1"])},
                          {"Statistic": "J (level 2)", "Value": str(doc["n_level2"])}])
    return "\n".join(_render(frame, fmt, index=False, name=name)
                     for frame, name in ((fixed, "fixed"), (var, "variance"), (stats, "statistics")))
