"""Tables for papers, from fits' JSON documents (a fresh fit or saved `--format json` files).

- `tidy`: broom's column names, one row per fixed effect (and per variance component), as CSV;
- `fit_table`: one fit's fixed-effects and variance-component tables as csv, markdown, latex or html;
- `side_by_side`: several fits in columns, as modelsummary and texreg print them.

Escaping and layout come from maintained libraries: pandas' Styler (jinja2) for LaTeX and HTML,
tabulate (through pandas) for Markdown. Both are the optional extra `tables` (`pip install '.[tables]'`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from ..lazy import lazy

pd = lazy("pandas")

from ..errors import HlmError, ModelError, install_hint
from .terms import fixed_names, group_name, random_names

FORMATS = ("csv", "markdown", "latex", "html")


class MissingExtra(HlmError):
    """An optional dependency is not installed."""


def _t_quantile(level: float, df) -> float:
    from ..engine.special_functions import special

    if df is None or (isinstance(df, float) and math.isnan(df)):
        return float("nan")
    return float(special.stdtrit(float(df), 0.5 + level / 2))


SE_CHOICES = ("auto", "model", "robust")


@dataclass(frozen=True)
class TableOptions:
    """What a paper table shows beyond the numbers: which standard errors (`auto` is robust for a
    weighted fit, whose model-based SEs assume the weights are not informative, and model-based
    otherwise), significance stars, a caption and notes under the table."""
    se: str = "auto"
    stars: bool = False
    caption: str | None = None
    notes: tuple[str, ...] = ()
    conf_level: float = 0.95

    def __post_init__(self):
        if self.se not in SE_CHOICES:
            raise ModelError(f"se must be one of {', '.join(SE_CHOICES)}, not '{self.se}'")


def information_criteria(fit: dict) -> tuple[int, float, float]:
    """(k, AIC, BIC) of a fit's JSON, as the fit computed them (inference.information_criteria,
    lme4's counting: every fixed effect and variance parameter, under REML too; BIC with log N)."""
    if fit.get("aic") is None:  # PQL: no likelihood, so no criteria
        return int(fit["n_params"] or 0), None, None
    k = int(round((fit["aic"] - fit["deviance"]) / 2))
    return k, float(fit["aic"]), float(fit["bic"])


# Parts of a fit the paper tables do not show yet: refused rather than printed as if absent (a σ² of 1 that is
# not estimated, one σ² where it varies, tied γs unmarked).
_UNSHOWN = {"level1_variance": "its model for the level-1 variance (the α table and the test against one σ²)",
            "level1_covariance": "its structured within-person covariance (HMLM: Δ, its γ table and the test)",
            "known_variance": "that its level-1 variances are known, not estimated (σ² is held at 1)",
            "constraints": "which γs are tied by --constrain, and the test of the ties"}


def two_level(fit: dict) -> dict:
    """The document, if it is of a two-level fit; the tables read those (and combined ones) only."""
    if (fit.get("levels", 2) != 2 and "r_names" not in fit) or "fixed_effects" not in fit:
        raise ModelError(f"a {fit.get('levels', '?')}-level fit: the paper tables read two-level fits for now; "
                         "take the numbers from its JSON or text output")
    return refuse_unshown(fit)


def refuse_unshown(fit: dict) -> dict:
    """The document, unless it holds a part the paper tables do not show yet (_UNSHOWN)."""
    for key, what in _UNSHOWN.items():
        if key in fit:
            raise ModelError(f"the paper tables do not show {what} yet; take the numbers from the text or JSON "
                             "output (--format text or json)")
    return fit


def se_kind(fit: dict, se: str = "auto") -> str:
    """'robust' or 'model': the standard errors a table of this fit reports."""
    if se == "robust" and fit.get("kind") == "cross-classified linear":
        raise ModelError("a cross-classified fit has no robust standard errors: the sandwich estimator clusters on "
                         "level-2 units, and crossed factors split every group across the other's; use --se model")
    if se == "auto":
        return "robust" if fit.get("weights") else "model"
    return se


def _se_note(fit_kinds: Sequence[tuple[dict, str]]) -> list[str]:
    kinds = {k for _, k in fit_kinds}
    if kinds == {"model"}:
        return []
    weighted = any(fit.get("weights") for fit, k in fit_kinds if k == "robust")
    why = " (the default for a weighted fit)" if weighted else ""
    if kinds == {"robust"}:
        return [f"Standard errors are robust (sandwich, clustered on level-2 units){why}."]
    return [f"Standard errors are robust (sandwich, clustered on level-2 units) where the row 'Standard errors' says so{why}."]


STARS = ((0.001, "***"), (0.01, "**"), (0.05, "*"))
STARS_NOTE = "* p < 0.05, ** p < 0.01, *** p < 0.001."


def stars(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return next((mark for cut, mark in STARS if p < cut), "")


def _chosen(f: dict, kind: str) -> tuple[float, float, float]:
    """(SE, statistic, p) of one fixed effect under the chosen standard errors."""
    if kind == "robust":
        return f["robust_se"], f["robust_t"], f["robust_p"]
    return f["se"], f["t"], f["p"]


def glance(fit: dict) -> dict:
    """broom's glance, one row per model: N, J, deviance, AIC, BIC, method and the certificate."""
    _, aic, bic = information_criteria(fit) if "aic" in fit else (None, None, None)
    return {"nobs": fit["n_level1"], "ngrps": fit["n_level2"], "deviance": fit["deviance"], "AIC": aic, "BIC": bic,
            "method": _method(fit), "certificate": certificate_text(fit)}


def certificate_text(fit: dict) -> str:
    """What the fit's optimum carries: 'certified', 'not certified', or PQL's checked fixed point."""
    certificate = fit.get("certificate")
    if isinstance(certificate, dict) and "certified" in certificate:
        return "certified" if certificate["certified"] else "not certified"
    if fit.get("estimation") == "pql":
        return "fixed point checked (PQL)" if fit.get("converged") else "not converged (PQL)"
    return "converged" if fit.get("converged") else "not converged"


def ran_pars(fit: dict) -> list[dict]:
    """broom.mixed's ran_pars rows: sd__ of each random coefficient, cor__ of each pair (in lme4's
    order: each column's SD, then its correlations with the later columns), then the residual's
    sd__Observation (a linear fit). HLM's χ² test of each τ_qq rides along."""
    names = [r for r, _ in random_names(fit)]
    groups = fit.get("tau_groups") or [group_name(fit)] * len(names)  # three or more levels: one per level
    tau = fit["tau"]
    sd = [math.sqrt(max(tau[k][k], 0.0)) for k in range(len(names))]
    tests = {v["effect"]: v for v in fit.get("variance_components") or [] if v.get("label") != "r"}
    rows = []
    for i, name in enumerate(names):
        test = tests.get(fit["random_coefficients"][i], {})
        rows.append({"effect": "ran_pars", "group": groups[i], "term": f"sd__{name}", "estimate": sd[i],
                     "hlm.label": test.get("label", f"u{i}"), "chi2": test.get("chi2"), "chi2.df": test.get("df"),
                     "chi2.p.value": test.get("p")})
        for j in range(i + 1, len(names)):
            if groups[j] != groups[i]:
                continue
            cor = tau[i][j] / (sd[i] * sd[j]) if sd[i] > 0 and sd[j] > 0 else float("nan")
            rows.append({"effect": "ran_pars", "group": groups[i], "term": f"cor__{name}.{names[j]}", "estimate": cor})
    if "family" not in fit and fit.get("sigma2") is not None:
        rows.append({"effect": "ran_pars", "group": "Residual", "term": "sd__Observation",
                     "estimate": math.sqrt(fit["sigma2"]), "hlm.label": "r"})
    return rows


TIDY_COLUMNS = ["effect", "group", "term", "estimate", "std.error", "statistic", "df", "p.value", "conf.low",
                "conf.high", "se.type", "model.std.error", "robust.std.error", "hlm.label", "chi2", "chi2.df",
                "chi2.p.value"]


def tidy(fit: dict, conf_level: float = 0.95, se: str = "auto") -> pd.DataFrame:
    """broom.mixed's tidy(): effect, group, term, estimate, std.error, statistic, df, p.value,
    conf.low, conf.high, one row per fixed effect, then the sd__/cor__ rows of `ran_pars`. Terms
    are named as the lme4 formula names its columns (SES_gc, SECTOR:SES_gc). std.error and what
    follows from it are the `se` kind's (se.type says which); df is HLM's, and the interval is
    estimate ± t(df) · SE (broom's Wald interval for lmer uses the normal quantile instead). HLM's
    label of each row and the χ² test of each τ_qq follow; an HGLM adds exp(γ) and its interval."""
    fit = _as_table(fit)
    kind = se_kind(two_level(fit), se)
    rows = []
    for f, (r_name, _) in zip(fit["fixed_effects"], fixed_names(fit)):
        t = _t_quantile(conf_level, f["df"])
        s, stat, p = _chosen(f, kind)
        rows.append({"effect": "fixed", "group": None, "term": r_name, "estimate": f["estimate"], "std.error": s,
                     "statistic": stat, "df": f["df"], "p.value": p, "conf.low": f["estimate"] - t * s,
                     "conf.high": f["estimate"] + t * s, "se.type": kind, "model.std.error": f["se"],
                     "robust.std.error": f["robust_se"], "hlm.label": f["gamma"]})
    n_ratio = len(rows)
    for f, _ in threshold_rows(fit):  # ordinal: the thresholds δ(m), as clmm's tidy lists its thresholds
        t = _t_quantile(conf_level, f["df"])
        s, stat, p = _chosen(f, kind)
        rows.append({"effect": "fixed", "group": None, "term": f["name"], "estimate": f["estimate"], "std.error": s,
                     "statistic": stat, "df": f["df"], "p.value": p, "conf.low": f["estimate"] - t * s,
                     "conf.high": f["estimate"] + t * s, "se.type": kind, "model.std.error": f["se"],
                     "robust.std.error": f["robust_se"], "hlm.label": f["threshold"]})
    n_fixed = len(rows)
    rows += ran_pars(fit)
    columns = list(TIDY_COLUMNS)
    if fit.get("thresholds") is not None:  # ordinal: HLM 7's signs under broom's names, so say so on each row
        for k, row in enumerate(rows[:n_fixed]):
            row["convention"] = _ordinal_convention(row["hlm.label"], k < n_ratio)
        columns.append("convention")
    ratio = ratio_key(fit)
    if ratio:  # an HGLM: exp(γ) with its interval, as broom's exponentiate = TRUE
        name = ratio.replace("_", ".")
        for row in rows[:n_ratio]:
            row.update({name: math.exp(row["estimate"]), f"{name}.conf.low": math.exp(row["conf.low"]),
                        f"{name}.conf.high": math.exp(row["conf.high"])})
        columns += [name, f"{name}.conf.low", f"{name}.conf.high"]
    return pd.DataFrame(rows, columns=columns)


def _ordinal_convention(label: str, is_gamma: bool) -> str:
    """How an ordinal tidy row reads against ordinal::clmm (and broom's tidy of it), which writes
    link P(Y <= m) = θ_m − x'β where HLM 7 writes η + δ(2) + ... + δ(m), η = γ00 + x'γ + u:
    θ_1 = γ00, θ_m = γ00 + δ(2) + ... + δ(m), β = −γ."""
    if label == "γ00":
        return "HLM 7: gamma00 = clmm theta_1 (the first threshold)"
    if is_gamma:
        return "HLM 7: gamma = -(clmm beta)"
    return "HLM 7: delta(m) = clmm theta_m - theta_(m-1)"


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.{digits}f}"


def _df(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:g}" if float(x).is_integer() else f"{x:.1f}"


RATIO_HEADINGS = {"odds_ratio": "Odds ratio", "rate_ratio": "Rate ratio", "hazard_ratio": "Hazard ratio"}


def threshold_rows(fit: dict) -> list[tuple[dict, str]]:
    """An ordinal fit's thresholds δ(m) as fixed-effect rows after γ's, with their labels."""
    return [(t, f"{t['name']} ({t['threshold'].replace('δ', 'd')})") for t in fit.get("thresholds") or []]


def ratio_key(fit: dict) -> str | None:
    """The key of exp(γ) in an HGLM fit's fixed effects (odds or event-rate ratio), None for a linear fit."""
    rows = fit["fixed_effects"]
    return next((k for k in RATIO_HEADINGS if rows and k in rows[0]), None)


def _stat(x, digits: int = 2) -> str:
    return "none" if x is None else f"{x:.{digits}f}"


def _random_labels(fit: dict) -> list[str]:
    if "r_names" in fit:  # three or more levels: each coefficient with its level
        return list(fit["random_coefficients"])
    return ["INTRCPT1" if r == "(Intercept)" else lab for r, lab in random_names(fit)]


def _level_rows(fit: dict) -> list[tuple[str, str]]:
    """("J (level k)", count) for the levels above 2 of a fit of three or more levels."""
    return [(f"J (level {k})", str(n)) for k, n in sorted((fit.get("n_units") or {}).items()) if int(k) > 2]


def _as_table(fit: dict) -> dict:
    """A fit of three or more levels in the keys the tables read (levels_results.table_view); a
    cross-classified fit in the same keys (crossed_report.crossed_view)."""
    if fit.get("kind") == "cross-classified linear" and "r_names" not in fit:
        from .crossed_report import crossed_view

        return crossed_view(fit)
    if fit.get("levels", 2) > 2 and "r_names" not in fit:
        from ..levels_results import table_view

        return table_view(fit)
    return fit


def fit_frames(fit: dict, options: TableOptions = TableOptions()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two tables of one fit, as text cells ready to print (p-values as numbers: each format
    writes '<0.001' its own way)."""
    ratio = ratio_key(fit)
    kind = se_kind(fit, options.se)
    se_head = "Robust SE" if kind == "robust" else "SE"
    rows = []
    robust = any(f.get("robust_se") is not None for f in fit["fixed_effects"])  # a crossed fit has no sandwich
    for f, (_, label) in zip(fit["fixed_effects"], fixed_names(fit)):
        s, stat, p = _chosen(f, kind)
        row = {"Fixed effect": f"{label} ({f['gamma'].replace('γ', 'g')})",
               "Coefficient": _f(f["estimate"]) + (stars(p) if options.stars else ""), se_head: _f(s),
               "t-ratio": _f(stat, 2), "d.f.": _df(f["df"]), "p-value": p}
        if kind == "model" and robust:
            row.update({"Robust SE": _f(f["robust_se"]), "Robust p-value": f["robust_p"]})
        if ratio:
            low, high = ("robust_ci_low", "robust_ci_high") if kind == "robust" else ("ci_low", "ci_high")
            row.update({RATIO_HEADINGS[ratio]: _f(f[ratio]), "95% CI": f"({_f(f[low])}, {_f(f[high])})"})
        rows.append(row)
    for t, label in threshold_rows(fit):
        s, stat, p = _chosen(t, kind)
        row = {"Fixed effect": label, "Coefficient": _f(t["estimate"]) + (stars(p) if options.stars else ""),
               se_head: _f(s), "t-ratio": _f(stat, 2), "d.f.": _df(t["df"]), "p-value": p}
        if kind == "model" and robust:
            row.update({"Robust SE": _f(t["robust_se"]), "Robust p-value": t["robust_p"]})
        if ratio:
            row.update({RATIO_HEADINGS[ratio]: "", "95% CI": ""})
        rows.append(row)
    fixed = pd.DataFrame(rows)
    labels = dict(zip(fit["random_coefficients"], _random_labels(fit)))
    var_rows = [{
        "Random effect": "level-1, r" if v["label"] == "r" else f"{labels.get(v['effect'], v['effect'])}, {v['label']}",
        "SD": _f(v["sd"]), "Variance": _f(v["variance"]), "d.f.": _df(v["df"]), "Chi-square": _f(v["chi2"], 2),
        "p-value": v["p"], "Correlation": "",
    } for v in fit["variance_components"]]
    pairs = _tau_pairs(fit)
    if pairs:
        at = next((k for k, v in enumerate(fit["variance_components"]) if v["label"] == "r" or v.get("level") == 1),
                  len(var_rows))
        extra = [{"Random effect": f"{a}, {b} (covariance)", "SD": "", "Variance": _f(cov), "d.f.": "",
                  "Chi-square": "", "p-value": None, "Correlation": _f(cor)} for a, b, cov, cor in pairs]
        var_rows = var_rows[:at] + extra + var_rows[at:]
    var = pd.DataFrame(var_rows)
    if not pairs:
        var = var.drop(columns="Correlation")
    return fixed, var


def _tau_pairs(fit: dict) -> list[tuple[str, str, float, float]]:
    """(label a, label b, covariance, correlation) of each pair of random effects, τ's off-diagonal."""
    labels = _random_labels(fit)
    tau = fit["tau"]
    levels = fit.get("tau_levels") or [2] * len(labels)
    out = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if levels[i] != levels[j]:  # random effects of different levels are independent
                continue
            den = math.sqrt(max(tau[i][i], 0.0) * max(tau[j][j], 0.0))
            out.append((labels[i], labels[j], tau[i][j], tau[i][j] / den if den > 0 else float("nan")))
    return out


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


P_COLUMNS = ("p-value", "Robust p-value")


def _p_cell(fmt: str):
    """How each format writes a p-value: '<0.001' is '$<$0.001' in LaTeX (a bare '<' is set as '¡' in
    LaTeX's default OT1 font encoding) and '&lt;0.001' in HTML."""
    small = {"latex": "$<$0.001", "html": "&lt;0.001"}.get(fmt, "<0.001")

    def cell(p) -> str:
        if p is None or (isinstance(p, float) and math.isnan(p)):
            return ""
        return small if p < 0.001 else f"{p:.3f}"
    return cell


def _render(frame: pd.DataFrame, fmt: str, index: bool, name: str = "table") -> str:
    p_columns = [c for c in P_COLUMNS if c in frame.columns]
    if fmt in ("csv", "markdown") and p_columns:
        frame = frame.copy()
        for c in p_columns:
            frame[c] = frame[c].map(_p_cell(fmt)).astype(object)
    if fmt == "csv":
        return frame.to_csv(index=index, lineterminator="\n")
    if fmt == "markdown":
        try:
            import tabulate  # noqa: F401
        except ImportError:
            raise MissingExtra("Markdown tables need tabulate, which is not installed; "
                               + install_hint("tables")) from None
        frame = _markdown_names(frame, index)
        return frame.to_markdown(index=index, disable_numparse=True, colalign=["left"] + ["right"] * (frame.shape[1] - (0 if index else 1))) + "\n"
    try:
        import jinja2  # noqa: F401
    except ImportError:
        raise MissingExtra(f"{'LaTeX' if fmt == 'latex' else 'HTML'} tables need jinja2, which is not installed; "
                           + install_hint("tables")) from None
    styler = frame.style
    if not index:
        styler = styler.hide(axis="index")
    if fmt not in ("latex", "html"):
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    # the Styler escapes text cells; a p-value is a number, formatted after escaping (pandas escapes
    # a cell's value before its formatter runs), so its '$<$' or '&lt;' is kept as written
    # LaTeX: the Styler escapes LaTeX's ten special characters; < > | it leaves, and OT1 (LaTeX's
    # default font encoding) sets them as ¡ ¿ —, so they become text symbols after its escaping
    after = _ot1_symbols if fmt == "latex" else None
    styler = styler.format(after, escape=fmt).format_index(after, escape=fmt, axis=0).format_index(after, escape=fmt, axis=1)
    if p_columns:
        styler = styler.format(_p_cell(fmt), subset=p_columns)
    if fmt == "latex":
        columns = ("l" if index else "") + "l" + "r" * (frame.shape[1] - 1)
        return styler.to_latex(hrules=True, column_format=columns)
    # a fixed id per table (Styler's default is random on every run): the same fit, the same bytes
    return styler.set_uuid(name).to_html()


_OT1 = {"<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def _ot1_symbols(value) -> str:
    return "".join(_OT1.get(ch, ch) for ch in value) if isinstance(value, str) else str(value)


# LaTeX's special characters in running text (a caption or a note, which the Styler does not
# write): the ten of the LaTeX book (Lamport, 2.4.1) and < > | which OT1 sets as other glyphs.
_LATEX_TEXT = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_text(text: str) -> str:
    return "".join(_LATEX_TEXT.get(ch, ch) for ch in " ".join(str(text).splitlines()))


def _document(parts: Sequence[str], fmt: str, caption: str | None, notes: Sequence[str]) -> str:
    """The tables of one output with the caption above and the notes below, each format's way."""
    if fmt == "csv":
        return "".join(parts)
    if fmt == "markdown":
        head = f"Table: {markdown_escape(caption)}\n\n" if caption else ""
        tail = "".join(f"\n{markdown_escape(n)}\n" for n in notes)
        return head + "\n".join(parts) + tail
    if fmt == "html":
        from markupsafe import escape  # jinja2's escaping, installed with it

        head = f'<p class="caption">{escape(caption)}</p>\n' if caption else ""
        tail = "".join(f'<p class="note">{escape(n)}</p>\n' for n in notes)
        return head + "\n".join(parts) + tail
    body = "\n".join(parts)
    if not caption and not notes:
        return body
    out = "\\begin{table}[htbp]\n\\centering\n"
    if caption:
        out += f"\\caption{{{latex_text(caption)}}}\n"
    out += body.replace("\\end{tabular}\n\n\\begin{tabular}", "\\end{tabular}\n\n\\medskip\n\\begin{tabular}")
    for n in notes:
        out += f"\\par\\smallskip{{\\footnotesize {latex_text(n)}}}\n"
    return out + "\\end{table}\n"


def _notes(fit_kinds: Sequence[tuple[dict, str]], options: TableOptions) -> list[str]:
    return _se_note(fit_kinds) + ([STARS_NOTE] if options.stars else []) + list(options.notes)


def fit_table(fit: dict, fmt: str, options: TableOptions = TableOptions()) -> str:
    """One fit's tables: CSV is the tidy table; the other formats give the fixed effects, then the
    variance components (τ's covariances and correlations among them), and the model's numbers."""
    fit = two_level(_as_table(fit))
    if fmt == "csv":
        return tidy(fit, options.conf_level, options.se).to_csv(index=False, lineterminator="\n", float_format="%.10g")
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    fixed, var = fit_frames(fit, options)
    g = glance(fit)
    stats = pd.DataFrame([{"Statistic": "Deviance", "Value": _stat(fit["deviance"])},
                          {"Statistic": f"Estimated parameters ({_method(fit)}, HLM count)", "Value": str(fit["n_params"])},
                          {"Statistic": "AIC", "Value": _stat(g["AIC"])}, {"Statistic": "BIC", "Value": _stat(g["BIC"])},
                          {"Statistic": "N (level 1)", "Value": str(fit["n_level1"])},
                          {"Statistic": "J (level 2)", "Value": str(fit["n_level2"])}]
                         + [{"Statistic": name, "Value": n} for name, n in _level_rows(fit)]
                         + [{"Statistic": "Optimum", "Value": g["certificate"]}])
    parts = [_render(frame, fmt, index=False, name=name)
             for frame, name in ((fixed, "fixed"), (var, "variance"), (stats, "statistics"))]
    return _document(parts, fmt, options.caption, _notes([(fit, se_kind(fit, options.se))], options))


def _method(fit: dict) -> str:
    """REML or ML; for an HGLM also the family and the estimation (PQL has no deviance to read)."""
    if "family" not in fit:
        return fit["method"]
    how = {"pql": f"PQL ({fit['method']})", "laplace": "Laplace", "agq": f"AGQ {fit.get('quadrature_points')}"}
    return f"{fit['family']}, {how[fit['estimation']]}"


def side_by_side(fits: Sequence[dict], names: Sequence[str], options: TableOptions = TableOptions()) -> pd.DataFrame:
    """Models in columns: each fixed effect's estimate with its SE in parentheses below, then the
    variance components with τ's covariances and correlations, deviance, AIC, BIC, method, the
    optimum's certificate, N and J (as modelsummary and texreg lay them out)."""
    if len(fits) != len(names):
        raise ModelError("give one name per model")
    fits = [_as_table(fit) for fit in fits]
    kinds = [se_kind(fit, options.se) for fit in fits]
    terms: list[str] = []
    var_rows: list[str] = []
    for fit in fits:
        terms += [label for _, label in fixed_names(fit) + [(None, lab) for _, lab in threshold_rows(fit)]
                  if label not in terms]
        labels = _random_labels(fit)
        var_rows += [f"Var: {lab}" for lab in labels if f"Var: {lab}" not in var_rows]
        for a, b, _, _ in _tau_pairs(fit):
            var_rows += [r for r in (f"Cov: {a}, {b}", f"Cor: {a}, {b}") if r not in var_rows]
    var_rows.append("Var: Residual")
    if any(fit.get("dispersion") for fit in fits):  # negative binomial fits: Var = mu + mu^2/theta
        var_rows += ["Dispersion theta", "Dispersion theta (SE)"]
    index: list[str] = []
    for t in terms:
        index += [t, f"{t} (SE)"]
    robust_row = ["Standard errors"] if "robust" in kinds else []
    higher = sorted({row for fit in fits for row, _ in _level_rows(fit)})
    index += var_rows + ["Deviance", "AIC", "BIC", "Method", "Optimum"] + robust_row + ["N", "J"] + higher
    table = pd.DataFrame("", index=index, columns=list(names))
    for fit, name, kind in zip(fits, names, kinds):
        for f, t in list(zip(fit["fixed_effects"], [lab for _, lab in fixed_names(fit)])) + threshold_rows(fit):
            s, _, p = _chosen(f, kind)
            table.loc[t, name] = _f(f["estimate"]) + (stars(p) if options.stars else "")
            table.loc[f"{t} (SE)", name] = f"({_f(s)})"
        for k, lab in enumerate(_random_labels(fit)):
            table.loc[f"Var: {lab}", name] = _f(fit["tau"][k][k])
        for a, b, cov, cor in _tau_pairs(fit):
            table.loc[f"Cov: {a}, {b}", name] = _f(cov)
            table.loc[f"Cor: {a}, {b}", name] = _f(cor)
        if "family" not in fit and fit.get("sigma2") is not None:
            table.loc["Var: Residual", name] = _f(fit["sigma2"])
        if fit.get("dispersion"):
            table.loc["Dispersion theta", name] = _f(fit["dispersion"]["estimate"])
            table.loc["Dispersion theta (SE)", name] = f"({_f(fit['dispersion']['se'])})"
        g = glance(fit)
        table.loc["Deviance", name] = _stat(fit["deviance"])
        table.loc["AIC", name] = _stat(g["AIC"])
        table.loc["BIC", name] = _stat(g["BIC"])
        table.loc["Method", name] = g["method"]
        table.loc["Optimum", name] = g["certificate"]
        if robust_row:
            table.loc["Standard errors", name] = kind
        table.loc["N", name] = str(fit["n_level1"])
        table.loc["J", name] = str(fit["n_level2"])
        for row, n in _level_rows(fit):
            table.loc[row, name] = n
    if not (table.loc["Var: Residual"] != "").any():
        table = table.drop(index="Var: Residual")
    # The SE rows print with an empty label, as in the papers' tables.
    table.index = [("" if i.endswith(" (SE)") else i) for i in table.index]
    return table


def side_by_side_text(fits: Sequence[dict], names: Sequence[str], fmt: str, options: TableOptions = TableOptions()) -> str:
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    for fit in fits:
        refuse_unshown(fit)
    table = side_by_side(fits, names, options)
    table.insert(0, " ", table.index)
    part = _render(table.reset_index(drop=True), fmt, index=False, name="models")
    kinds = [(fit, se_kind(fit, options.se)) for fit in fits]
    return _document([part], fmt, options.caption, _notes(kinds, options))


def latex_document(body: str) -> str:
    """A minimal document around a table (tables use booktabs' rules), for checking that it compiles."""
    return ("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + body
            + "\n\\end{document}\n")


def combined_table(doc: dict, fmt: str, options: TableOptions = TableOptions()) -> str:
    """Plausible values or imputed data sets combined by Rubin's rules (plausible.combined_json's
    document): CSV is a tidy table (broom's columns, as mice::pool's tidy, with the fraction of
    missing information); the other formats give the fixed effects, the averaged variance components
    and the run's numbers. `options.se` picks the combined model-based or robust rows."""
    if fmt not in FORMATS:
        raise ModelError(f"unknown table format '{fmt}'; choose one of {', '.join(FORMATS)}")
    refuse_unshown(doc)  # e.g. HMLM's combined structured fits: its top-level tables are the homogeneous model's
    kind = se_kind(doc, options.se)
    robust = {r["gamma"]: r for r in doc["fixed_effects_robust"]}
    model = {r["gamma"]: r for r in doc["fixed_effects"]}
    chosen = robust if kind == "robust" else model
    names = fixed_names(doc)
    if fmt == "csv":
        rows = []
        for f, (r_name, _) in zip(doc["fixed_effects"], names):
            c = chosen[f["gamma"]]
            t = _t_quantile(options.conf_level, c["df"])
            rows.append({
                "effect": "fixed", "group": None, "term": r_name, "estimate": c["estimate"], "std.error": c["se"],
                "statistic": c["t"], "df": c["df"], "p.value": c["p"], "conf.low": c["estimate"] - t * c["se"],
                "conf.high": c["estimate"] + t * c["se"], "se.type": kind, "fmi": c["fmi"], "riv": c["riv"],
                "within": c["within"], "between": c["between"], "model.std.error": f["se"],
                "robust.std.error": robust[f["gamma"]]["se"], "hlm.label": f["gamma"]})
        ran = ran_pars({**doc, "variance_components": None})
        columns = ["effect", "group", "term", "estimate", "std.error", "statistic", "df", "p.value", "conf.low",
                   "conf.high", "se.type", "fmi", "riv", "within", "between", "model.std.error", "robust.std.error",
                   "hlm.label"]
        return pd.DataFrame(rows + [{k: r.get(k) for k in ("effect", "group", "term", "estimate", "hlm.label")} for r in ran],
                            columns=columns).to_csv(index=False, lineterminator="\n", float_format="%.10g")
    se_head = "Robust SE" if kind == "robust" else "SE"
    fixed = pd.DataFrame([{
        "Fixed effect": f"{label} ({f['gamma'].replace('γ', 'g')})",
        "Coefficient": _f(f["estimate"]) + (stars(chosen[f["gamma"]]["p"]) if options.stars else ""),
        se_head: _f(chosen[f["gamma"]]["se"]), "t-ratio": _f(chosen[f["gamma"]]["t"], 2),
        "d.f.": _df(chosen[f["gamma"]]["df"]), "p-value": chosen[f["gamma"]]["p"], "FMI": _f(chosen[f["gamma"]]["fmi"]),
        **({"Robust SE": _f(robust[f["gamma"]]["se"]), "Robust p-value": robust[f["gamma"]]["p"]} if kind == "model" else {}),
    } for f, (_, label) in zip(doc["fixed_effects"], names)])
    labels = _random_labels(doc)
    var = pd.DataFrame([{"Random effect": name, "SD": _f(math.sqrt(max(doc["tau"][k][k], 0.0))),
                         "Variance": _f(doc["tau"][k][k]), "Correlation": ""} for k, name in enumerate(labels)]
                       + [{"Random effect": f"{a}, {b} (covariance)", "SD": "", "Variance": _f(cov), "Correlation": _f(cor)}
                          for a, b, cov, cor in _tau_pairs(doc)]
                       + ([{"Random effect": "level-1, r", "SD": _f(math.sqrt(doc["sigma2"])),
                            "Variance": _f(doc["sigma2"]), "Correlation": ""}] if doc["sigma2"] is not None else []))
    if not _tau_pairs(doc):
        var = var.drop(columns="Correlation")
    combining = doc["combining"]
    stats = pd.DataFrame([{"Statistic": f"Fits combined ({combining['source']})", "Value": str(combining["m"])},
                          *([{"Statistic": "Deviance (average over the fits)", "Value": f"{doc['deviance']:.2f}"},
                             {"Statistic": f"Estimated parameters ({doc['method']}, HLM count)",
                              "Value": str(doc["n_params"])}] if doc["deviance"] is not None else []),
                          {"Statistic": "N (level 1)", "Value": str(doc["n_level1"])},
                          {"Statistic": "J (level 2)", "Value": str(doc["n_level2"])}])
    parts = [_render(frame, fmt, index=False, name=name)
             for frame, name in ((fixed, "fixed"), (var, "variance"), (stats, "statistics"))]
    return _document(parts, fmt, options.caption, _notes([(doc, kind)], options))
