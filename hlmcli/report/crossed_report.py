"""The text and JSON of a cross-classified fit, in HLM 7's HCM2 layout: the model, σ², the fixed
effects (coefficient, standard error, t-ratio; d.f. and p-value with --df satterthwaite), τ of each
grouping factor with its correlations, the deviance, the certificate's one line (or what failed), and
the tests the options asked for. The JSON document (schema hlmcli/schema/crossed-2.json) uses the other
fits' field names (estimate, se, t, df, p_value; one τ block per factor under random_effects);
`crossed_view` puts it in the keys the paper tables read (levels_results.table_view's).

HCM2 writes the between-cell model with θ for the fixed effects and b (row) and c (column) for the
random effects; a model with other than two single-column factors has no HCM2 form, so the mixed
model is written in one line with each random effect named by its factor, e.g. u1[primary]*verbal."""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ..engine.certificate import stopping_line
from ..version import __version__

SCHEMA = 2
KIND = "cross-classified linear"
_METHOD = {"REML": "restricted maximum likelihood", "ML": "full maximum likelihood"}


def _two_factors(fit) -> bool:
    factors = list(dict.fromkeys(fit.factors))
    return len(factors) == 2 and all(":" not in f for f in factors)


def random_labels(fit) -> list[list[str]]:
    """Per random term, the label of each random effect: HCM2's b (row) and c (column) with two factors
    (a factor split by || keeps its letter), else u."""
    factors = list(dict.fromkeys(fit.factors))
    two = _two_factors(fit)
    out = []
    for b, cols in enumerate(fit.columns):
        if two:
            letter = "bc"[factors.index(fit.factors[b])]
            out.append([f"{letter}{c_index}0" for c_index in _indices(fit, b)])
        else:
            out.append([f"u{k}[{fit.factors[b]}]" for k in _indices(fit, b)])
    return out


def _indices(fit, b: int) -> list[int]:
    """The random effects' subscripts within their factor (a factor's terms numbered on from each other)."""
    before = sum(len(fit.columns[i]) for i in range(b) if fit.factors[i] == fit.factors[b])
    return list(range(before, before + len(fit.columns[b])))


def effect_labels(a) -> list[list[str]]:
    """random_labels, or for a model written in HCM2's equations the names the equations gave (b01 is the
    row effect on β01's column predictor, not the b10 of π1 that the position would give)."""
    if getattr(a, "hcm2", None) is None:
        return random_labels(a.fit)
    by_factor = {a.hcm2.row.lower(): a.hcm2.random_labels("b"), a.hcm2.col.lower(): a.hcm2.random_labels("c")}
    return [[by_factor[factor.lower()][frozenset() if c == "INTRCPT" else frozenset(c.split(":"))] for c in cols]
            for factor, cols in zip(a.fit.factors, a.fit.columns)]


def _mixed_line(a) -> str:
    d, fit = a.design, a.fit
    pieces = [f"THETA{k}" + ("" if name == "INTRCPT" else f"*{name}") for k, name in enumerate(d.fixed_names)]
    for labels, cols in zip(effect_labels(a), fit.columns):
        pieces += [lab + ("" if c == "INTRCPT" else f"*{c}") for lab, c in zip(labels, cols)]
    return f"    {d.outcome} = " + " + ".join(pieces) + " + E"


def _fmt(x: float, width: int = 14) -> str:
    return f"{x:{width}.6f}" if abs(x) < 1e6 else f"{x:{width}.6E}"


def _r_term(name: str) -> str:
    return "(Intercept)" if name == "INTRCPT" else name


def text(a, meta: dict | None = None) -> str:
    from .report import Symbols, extras_text, hlm_p, printable

    fit, d = a.fit, a.design
    out = []
    if a.title:
        out.append(f"Problem Title: {a.title}")
    out += ["Cross-classified linear model (HLM 7's HCM2 form: records in the cells of crossed factors)",
            f"  The data source for this run = {a.source}",
            f"  Method of estimation: {_METHOD[fit.method]}",
            f"  The outcome variable is {d.outcome}",
            f"  Records used: {fit.n}" + (f" ({d.n_dropped} of {d.n_read} left out for missing values)"
                                          if d.n_dropped else ""),
            ""]
    two = _two_factors(fit)
    groups = dict(zip(fit.factors, fit.n_groups))  # a factor split by || is listed once
    for b, (factor, J) in enumerate(groups.items()):
        role = ("row factor" if b == 0 else "column factor") if two else "grouping factor"
        out.append(f"  The {role} is {factor}: {J} groups")
    if a.hcm2 is not None:  # written in HCM2's equations: printed back in them, as HLM 7 does
        names = hcm2_labels(a)
        out += ["", "Summary of the model specified (in HCM2's equation format)", ""] + a.hcm2.lines()
        out += ["", "  (the mixed model numbers the fixed effects THETA0, THETA1, ... in its own order, as --test reads "
                "them: " + ", ".join(f"THETA{k} = {n}" for k, n in enumerate(names)) + ")"]
    out += (["", "Summary of the model specified"] if a.hcm2 is None else []) + ["", f"    lme4: {a.formula}", "",
                                                                             "Mixed Model", "", _mixed_line(a), ""]
    if two:
        out += ["  (THETA: fixed effects; b: random effects of the row factor, c: of the column factor)", ""]
    out += [stopping_line("τ of any factor") if a.certified else
            "Iterations stopped WITHOUT a certified optimum: " + "; ".join(a.failures), ""]
    out.append(f" sigma^2 = {fit.sigma2:12.5f}")
    out.append("")
    for factor, cols, tau in zip(fit.factors, fit.columns, fit.taus):
        out.append(f" tau ({factor})")
        for i, c in enumerate(cols):
            out.append(f" {c:<12}" + "".join(f"{tau[i, m]:12.5f}" for m in range(len(cols))))
        if len(cols) > 1:
            sd = np.sqrt(np.clip(np.diag(tau), 0.0, None))
            out.append(f" tau ({factor}) (as correlations)")
            for i, c in enumerate(cols):
                row = [tau[i, m] / (sd[i] * sd[m]) if sd[i] > 0 and sd[m] > 0 else float("nan") for m in range(len(cols))]
                out.append(f" {c:<12}" + "".join(f"{v:12.3f}" for v in row))
        out.append("")
    p_values = a.p_values
    out += ["Final estimation of fixed effects:", "-" * (70 if p_values is None else 92)]
    head = f"{'Fixed Effect':<28}{'Coefficient':>14}{'Standard error':>16}{'t-ratio':>12}"
    if p_values is not None:
        head += f"{'Approx. d.f.':>14}{'p-value':>8}"
    out += [head, "-" * (70 if p_values is None else 92)]
    shown = hcm2_labels(a) if a.hcm2 is not None else [f"THETA{k}" for k in range(len(d.fixed_names))]
    for k, (name, g, se, t) in enumerate(zip(d.fixed_names, fit.gamma, fit.se, a.t_ratios)):
        line = f"{name + ', ' + shown[k]:<28}{_fmt(g)}{_fmt(se, 16)}{t:12.3f}"
        if p_values is not None:
            line += f"{a.df[k]:14.2f}{hlm_p(float(p_values[k])):>8}"
        out.append(line)
    if p_values is None:
        out += ["-" * 70, "  (model-based standard errors; t-ratios without d.f. or p-values: --df satterthwaite "
                "gives lmerTest's)", ""]
    else:
        out += ["-" * 92, "  (model-based standard errors; Satterthwaite's d.f., as lmerTest computes them)", ""]
    out += ["Final estimation of variance components:", "-" * 70,
            f"{'Random Effect':<34}{'Standard Deviation':>20}{'Variance Component':>20}", "-" * 70]
    for factor, cols, tau in zip(fit.factors, fit.columns, fit.taus):
        for i, c in enumerate(cols):
            v = float(tau[i, i])
            out.append(f"{c + ' (' + factor + ')':<34}{np.sqrt(max(v, 0.0)):20.5f}{v:20.5f}")
    out.append(f"{'level-1, E':<34}{np.sqrt(fit.sigma2):20.5f}{fit.sigma2:20.5f}")
    out += ["-" * 70, ""]
    for note in a.boundary_notes():
        out.append(f"Note: {note}")
    out += ["Statistics for the current model",
            f" Deviance = {fit.deviance:.6f}",
            f" Number of estimated parameters = {a.n_params}", ""]
    extra = extras_text(a.extras, Symbols(True)) if a.extras else []
    if "constraints" in a.extras:  # --constrain: which θs are tied
        from .report import constraint_note

        extra = constraint_note(a.extras["constraints"], Symbols(True)) + extra
    return "\n".join(printable(line) for line in out + extra) + ("\n" if extra else "")


def _clean(x):
    x = float(x)
    return x if math.isfinite(x) else None


def data_hash(a) -> str:
    """SHA-256 of the records the deviance is computed on: the outcome (float64, little-endian), then the
    records' rows in the file read (int64). Two fits of one file with the same records agree, whatever
    their fixed effects and factors."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(a.design.y, dtype="<f8").tobytes())
    rows = a.design.rows if a.design.rows is not None else np.arange(a.design.y.size)
    h.update(np.ascontiguousarray(rows, dtype="<i8").tobytes())
    return h.hexdigest()


def hcm2_labels(a) -> list[str]:
    """HCM2's name (THETA1, GAMMA01, BETA01, ...) of each fixed effect, in the fit's order."""
    by_term = a.hcm2.labels()
    return [by_term[frozenset() if t == ("1",) else frozenset(t)] for t in a.model.fixed]


def information_criteria(fit) -> tuple[int, float, float]:
    """(k, AIC, BIC) as lme4 counts them for lmer: every fixed effect, τ entry and σ², under REML too."""
    k = int(fit.n_parameters)
    return k, float(fit.deviance) + 2 * k, float(fit.deviance) + k * math.log(fit.n)


def to_json(a, meta: dict | None = None) -> dict:
    """The JSON document of a crossed fit (schema crossed-2.json)."""
    meta = meta or {}
    fit, d = a.fit, a.design
    p_values = a.p_values
    fixed = []
    for k, (name, g, s, t) in enumerate(zip(d.fixed_names, fit.gamma, fit.se, a.t_ratios)):
        fixed.append({"label": f"THETA{k}", "name": name, "term": _r_term(name), "estimate": _clean(g),
                      "se": _clean(s), "t": _clean(t), "df": None if a.df is None else _clean(a.df[k]),
                      "p_value": None if p_values is None else _clean(p_values[k])})
    random = []
    for factor, cols, J, tau, rank, labels in zip(fit.factors, fit.columns, fit.n_groups, fit.taus,
                                                   fit.certificate.ranks, effect_labels(a)):
        sd = np.sqrt(np.clip(np.diag(tau), 0.0, None))
        corr = [[_clean(tau[i, m] / (sd[i] * sd[m])) if sd[i] > 0 and sd[m] > 0 else None
                 for m in range(len(cols))] for i in range(len(cols))]
        random.append({"factor": factor, "groups": int(J), "coefficients": list(cols),
                       "terms": [_r_term(c) for c in cols], "labels": labels,
                       "matrix": [[_clean(v) for v in row] for row in tau], "correlation": corr, "rank": int(rank)})
    k, aic, bic = information_criteria(fit)
    doc = {"schema": SCHEMA, "kind": KIND, "tool": "hlmcli", "version": __version__, "title": a.title,
           "data_source": meta.get("data_source") or a.source, "formula": a.formula, "lme4_formula": a.formula,
           "outcome": d.outcome, "method": fit.method, "n_level1": int(fit.n), "n_read": int(d.n_read),
           "n_deleted": int(d.n_dropped), "n_groups": dict(zip(fit.factors, map(int, fit.n_groups))),
           "converged": bool(a.certified), "iterations": int(fit.iterations), "evaluations": int(fit.evaluations),
           "start": fit.start, "boundary": bool(a.boundary_notes()), "boundary_notes": a.boundary_notes(),
           "certificate": fit.certificate.to_json(), "df_method": a.df_method,
           "sigma2": _clean(fit.sigma2), "random_effects": random, "fixed_effects": fixed,
           "gamma_covariance": [[_clean(v) for v in row] for row in fit.gamma_cov],
           "deviance": _clean(fit.deviance), "n_params": int(a.n_params), "loglik": _clean(-fit.deviance / 2),
           "aic": _clean(aic), "bic": _clean(bic), "data_hash": data_hash(a)}
    if meta.get("timestamp"):
        doc["timestamp"] = meta["timestamp"]
    if a.hcm2 is not None:
        for f, label in zip(fixed, hcm2_labels(a)):
            f["hcm2_label"] = label
        doc["hcm2_equations"] = [line.strip() for line in a.hcm2.lines() if "=" in line]
    doc.update(a.extras)
    return doc


def is_crossed(doc) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == KIND


def crossed_view(doc: dict) -> dict:
    """A crossed fit's document in the keys the paper tables and `tidy` read (levels_results.table_view's):
    the random effects of every factor as one block-diagonal τ (different factors' effects are
    independent), each with its factor as lme4's group; N and the groups of each factor."""
    fixed = [{"gamma": f["label"], "term": f["term"], "path": [f["name"]], "coefficient": f["name"],
              "predictor": "", "estimate": f["estimate"], "se": f["se"], "t": f["t"], "df": f["df"],
              "p": f["p_value"], "robust_se": None, "robust_t": None, "robust_p": None} for f in doc["fixed_effects"]]
    names, r_names, levels, groups, components = [], [], [], [], []
    for b, block in enumerate(doc["random_effects"]):
        for k, (name, term, label) in enumerate(zip(block["coefficients"], block["terms"], block["labels"])):
            names.append(f"{name} ({block['factor']})")
            r_names.append(term)
            levels.append(b + 2)  # a distinct block per factor: τ's pairs are taken within a block only
            groups.append(block["factor"])
            variance = block["matrix"][k][k]
            components.append({"level": b + 2, "effect": names[-1], "label": label,
                               "sd": math.sqrt(max(variance, 0.0)), "variance": variance, "df": None, "chi2": None,
                               "p": None})
    components.append({"level": 1, "effect": "level-1", "label": "r", "sd": math.sqrt(doc["sigma2"]),
                       "variance": doc["sigma2"], "df": None, "chi2": None, "p": None})
    tau = np.zeros((len(names), len(names)))
    at = 0
    for block in doc["random_effects"]:
        q = len(block["coefficients"])
        tau[at:at + q, at:at + q] = np.array(block["matrix"], dtype=float).reshape(q, q)
        at += q
    groups_text = " × ".join(f"{J} ({f})" for f, J in doc["n_groups"].items())
    view = {"levels": 2, "kind": KIND, "method": doc["method"], "outcome": doc["outcome"], "fixed_effects": fixed,
            "random_coefficients": names, "r_names": r_names, "tau_levels": levels, "tau_groups": groups,
            "tau": tau.tolist(), "variance_components": components, "sigma2": doc["sigma2"],
            "deviance": doc["deviance"], "n_params": doc["n_params"], "aic": doc["aic"], "bic": doc["bic"],
            "n_level1": doc["n_level1"], "n_level2": groups_text, "converged": doc["converged"],
            "certificate": doc.get("certificate"), "lme4_formula": doc.get("lme4_formula")}
    for key in ("hypothesis_tests", "deviance_test", "constraints", "constraint_test"):
        if key in doc:
            view[key] = doc[key]
    return view


# ---------------------------------------------------------------- mdm info of HCM2's archive

_CROSSED_NOTES = {"records_without_row": "level-1 records dropped with no row unit",
                  "records_without_column": "level-1 records dropped with no column unit",
                  "records_with_missing_values": "level-1 records dropped for missing values",
                  "row_units_without_records": "row units left out (no level-1 records)",
                  "column_units_without_records": "column units left out (no level-1 records)"}


def crossed_info_text(info: dict) -> str:
    """`mdm info` of a cross-classified archive: HLM 7's level-1, row and column descriptive statistics."""
    from .report import archive_source_lines, number_cell, printable, value_label_lines

    out = [f"hlmcli {info['version']} - MDM archive {info['archive'] or ''}".rstrip()
           + " (cross-classified, HCM2)", ""]
    out += archive_source_lines(info)
    out.append(f"  row id: {info['id']['row']}, column id: {info['id']['column']}")
    out.append(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    for key, line in _CROSSED_NOTES.items():
        if info["notes"].get(key):
            out.append(f"  {line}: {info['notes'][key]}")
    out += [f"  level-1 records: {info['n_level1']}", f"  row units:       {info['n_rows']}",
            f"  column units:    {info['n_columns']}", f"  non-empty cells: {info['n_cells']}"]
    for what in ("row", "column"):
        u = info[f"records_per_{what}"]
        out.append(f"  records per {what} unit: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    for key, heading in (("level1", "LEVEL-1"), ("row", "ROW LEVEL"), ("column", "COLUMN LEVEL")):
        out += ["", f"          {heading} DESCRIPTIVE STATISTICS", "",
                f"{'VARIABLE NAME':>16} {'N':>9} {'MEAN':>12} {'SD':>12} {'MINIMUM':>12} {'MAXIMUM':>12}"]
        for v in info[key]:
            out.append(f"{v['name']:>16} {v['n']:>9d} {number_cell(v['mean'])} {number_cell(v['sd'])} "
                       f"{number_cell(v['minimum'])} {number_cell(v['maximum'])}")
    out += value_label_lines(info)
    if "unit" in info:
        un = info["unit"]
        out += ["", f"  {un['factor']} unit {un['id']}: {un['n']} level-1 records"]
        out += [f"    {name} = {value:.6g}" for name, value in un["values"].items()]
    return "\n".join(printable(line) for line in out) + "\n"


# ---------------------------------------------------------------- fits combined over plausible values or data sets

def combined_json(analyses: list, c: dict, meta: dict, source: str, labels: list[str], tests=None) -> dict:
    """The JSON document of crossed fits combined by Rubin's rules (analysis/crossed_combined.py); each
    fit's own document under "fits"."""
    a0 = analyses[0]
    doc = {"schema": 1, "kind": KIND + " (combined)", "tool": "hlmcli", "version": __version__, "title": a0.title,
           "data_source": meta.get("data_source") or a0.source, "formula": a0.formula,
           "combining": {"source": source, "m": c["m"], "outcomes": labels, "rule": c["rule"]},
           "n_level1": int(a0.fit.n), "n_groups": dict(zip(a0.fit.factors, map(int, a0.fit.n_groups))),
           **{k: v for k, v in c.items() if k not in ("m", "rule")}}
    if a0.hcm2 is not None:
        for f, label in zip(doc["fixed_effects"], hcm2_labels(a0)):
            f["hcm2_label"] = label
        doc["hcm2_equations"] = [line.strip() for line in a0.hcm2.lines() if "=" in line]
    if meta.get("timestamp"):
        doc["timestamp"] = meta["timestamp"]
    if tests:
        doc["hypothesis_tests"] = tests
    doc["fits"] = [to_json(a, meta) for a in analyses]
    return doc


def combined_text(analyses: list, c: dict, source: str, labels: list[str], tests=None) -> str:
    """HCM2's tables of crossed fits combined over plausible values or data sets."""
    from ..analysis.plausible import rule_text

    from .report import hlm_p, printable

    a0 = analyses[0]
    with_df = c["fixed_effects"][0]["df"] is not None
    out = []
    if not c["converged"]:
        out += ["WARNING: the optimum of at least one fit is NOT certified.", ""]
    if a0.title:
        out.append(f"Problem Title: {a0.title}")
    out += ["Cross-classified linear model (HLM 7's HCM2 form), results combined over "
            f"{c['m']} {source}",
            f"  The data source for this run = {a0.source}",
            f"  Method of estimation: {_METHOD[c['method']]}",
            f"  The {'outcome variables are' if source == 'plausible values' else 'data sets are'} {', '.join(labels)}",
            f"  Records used: {a0.fit.n}", ""]
    for b, (factor, J) in enumerate(dict(zip(a0.fit.factors, a0.fit.n_groups)).items()):
        out.append(f"  The {'row' if b == 0 else 'column' if b == 1 else 'grouping'} factor is {factor}: {J} groups")
    out += ["", f"    lme4: {a0.formula}", "", " Combining rule: " + rule_text(c["rule"], True), "",
            f" sigma^2 (average over the fits) = {c['sigma2']:12.5f}", ""]
    for block in c["random_effects"]:
        out.append(f" tau ({block['factor']}) (average over the fits)")
        for i, col in enumerate(block["coefficients"]):
            out.append(f" {col:<12}" + "".join(f"{v:12.5f}" for v in block["matrix"][i]))
        out.append("")
    shown = hcm2_labels(a0) if a0.hcm2 is not None else [f"THETA{k}" for k in range(len(c["fixed_effects"]))]
    width = 92 if with_df else 78
    head = f"{'Fixed Effect':<28}{'Coefficient':>14}{'Standard error':>16}{'t-ratio':>12}"
    head += f"{'Approx. d.f.':>14}{'p-value':>8}" if with_df else ""
    out += ["Final estimation of fixed effects, combined over the fits:", "-" * width, head + f"{'FMI':>8}",
            "-" * width]
    for f, label in zip(c["fixed_effects"], shown):
        line = f"{f['name'] + ', ' + label:<28}{_fmt(f['estimate'])}{_fmt(f['se'], 16)}{f['t']:12.3f}"
        if with_df:
            line += f"{f['df']:14.2f}{hlm_p(f['p_value']):>8}"
        out.append(line + f"{f['fmi']:8.3f}")
    out += ["-" * width, "  (d.f.: Barnard-Rubin from the mean Satterthwaite d.f.; FMI: fraction of missing information)"
            if with_df else "  (FMI: fraction of missing information; --df satterthwaite gives d.f. and p-values)", ""]
    out += ["Final estimation of variance components (average over the fits):"]
    for block in c["random_effects"]:
        for i, col in enumerate(block["coefficients"]):
            v = block["matrix"][i][i]
            out.append(f" {col + ' (' + block['factor'] + ')':<34}{math.sqrt(max(v, 0.0)):18.5f}{v:20.5f}")
    out += [f" {'level-1, E':<34}{math.sqrt(c['sigma2']):18.5f}{c['sigma2']:20.5f}", "",
            f" Deviance (average over the fits) = {c['deviance']:.6f}",
            f" Number of estimated parameters   = {c['n_params']}"]
    for h in tests or []:
        r = h["model"]
        df2 = "infinite" if r["df2"] is None else f"{r['df2']:.2f}"
        out += ["", f"Results of General Linear Hypothesis Testing, combined over the fits: {h['label']}",
                f"  D1 F statistic = {r['F']:.6f}, d.f. = {r['df1']}, {df2}, p-value = {hlm_p(r['p'])}"]
    if tests:
        out.append(" (D1: Li, Raghunathan & Rubin 1991, F reference with their d.f., as mitml::testModels)")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"
