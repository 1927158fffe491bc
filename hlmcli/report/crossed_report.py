"""The text and JSON of a cross-classified fit, in HLM 7's HCM2 layout: the model, σ², the fixed
effects (coefficient, standard error, t-ratio), τ of each grouping factor with its correlations, the
deviance, and the certificate's one line (or what failed). The JSON document's schema is
hlmcli/schema/crossed-1.json.

HCM2 writes the between-cell model with θ for the fixed effects and b (row) and c (column) for the
random effects; a model with other than two single-column factors has no HCM2 form, so the mixed
model is written in one line with each random effect named by its factor, e.g. u[PRIMARY]*VERBAL."""

from __future__ import annotations

import numpy as np

from ..engine.certificate import stopping_line
from ..version import __version__

_METHOD = {"REML": "restricted maximum likelihood", "ML": "full maximum likelihood"}


def _mixed_line(res) -> str:
    d, fit = res.design, res.fit
    two = len(fit.factors) == 2 and all(":" not in f for f in fit.factors) and fit.factors[0] != fit.factors[1]
    letters = ("b", "c") if two else None
    pieces = []
    for k, name in enumerate(d.fixed_names):
        pieces.append(f"THETA{k}" + ("" if name == "INTRCPT" else f"*{name}"))
    for b, (factor, cols) in enumerate(zip(fit.factors, fit.columns)):
        for k, c in enumerate(cols):
            effect = f"{letters[b]}{k}0" if letters else f"u{k}[{factor}]"
            pieces.append(effect + ("" if c == "INTRCPT" else f"*{c}"))
    return f"    {d.outcome} = " + " + ".join(pieces) + " + E"


def _fmt(x: float, width: int = 14) -> str:
    return f"{x:{width}.6f}" if abs(x) < 1e6 else f"{x:{width}.6E}"


def text(res) -> str:
    fit, d = res.fit, res.design
    out = []
    if res.title:
        out.append(f"Problem Title: {res.title}")
    out += ["Cross-classified linear model (HLM 7's HCM2 form: records in the cells of crossed factors)",
            f"  The data source for this run = {res.source}",
            f"  Method of estimation: {_METHOD[fit.method]}",
            f"  The outcome variable is {d.outcome}",
            f"  Records used: {fit.n}" + (f" ({d.n_dropped} of {d.n_read} left out for missing values)"
                                          if d.n_dropped else ""),
            ""]
    two = len(fit.factors) == 2 and all(":" not in f for f in fit.factors)
    for b, (factor, J) in enumerate(zip(fit.factors, fit.n_groups)):
        role = ("row factor" if b == 0 else "column factor") if two else "grouping factor"
        out.append(f"  The {role} is {factor}: {J} groups")
    out += ["", "Summary of the model specified", "", f"    lme4: {res.formula}", "", "Mixed Model", "",
            _mixed_line(res), ""]
    if two:
        out += ["  (THETA: fixed effects; b: random effects of the row factor, c: of the column factor)", ""]
    out += [stopping_line("τ of any factor") if res.certified else
            "Iterations stopped WITHOUT a certified optimum: " + "; ".join(res.failures), ""]
    out.append(f" sigma^2 = {fit.sigma2:12.5f}")
    out.append("")
    for factor, cols, tau in zip(fit.factors, fit.columns, fit.taus):
        out.append(f" tau ({factor})")
        for a, c in enumerate(cols):
            out.append(f" {c:<12}" + "".join(f"{tau[a, m]:12.5f}" for m in range(len(cols))))
        if len(cols) > 1:
            sd = np.sqrt(np.clip(np.diag(tau), 0.0, None))
            out.append(f" tau ({factor}) (as correlations)")
            for a, c in enumerate(cols):
                row = [tau[a, m] / (sd[a] * sd[m]) if sd[a] > 0 and sd[m] > 0 else float("nan") for m in range(len(cols))]
                out.append(f" {c:<12}" + "".join(f"{v:12.3f}" for v in row))
        out.append("")
    out += ["Final estimation of fixed effects:",
            "-" * 70,
            f"{'Fixed Effect':<28}{'Coefficient':>14}{'Standard error':>16}{'t-ratio':>12}",
            "-" * 70]
    for k, (name, g, se, t) in enumerate(zip(d.fixed_names, fit.gamma, fit.se, res.t_ratios)):
        out.append(f"{name + ', THETA' + str(k):<28}{_fmt(g)}{_fmt(se, 16)}{t:12.3f}")
    out += ["-" * 70, "  (model-based standard errors; t-ratios without d.f. or p-values: see the README)", ""]
    out += ["Final estimation of variance components:", "-" * 70,
            f"{'Random Effect':<34}{'Standard Deviation':>20}{'Variance Component':>20}", "-" * 70]
    for factor, cols, tau in zip(fit.factors, fit.columns, fit.taus):
        for a, c in enumerate(cols):
            v = float(tau[a, a])
            out.append(f"{c + ' (' + factor + ')':<34}{np.sqrt(max(v, 0.0)):20.5f}{v:20.5f}")
    out.append(f"{'level-1, E':<34}{np.sqrt(fit.sigma2):20.5f}{fit.sigma2:20.5f}")
    out += ["-" * 70, ""]
    for note in res.boundary_notes():
        out.append(f"Note: {note}")
    out += [f"Statistics for the current model",
            f" Deviance = {fit.deviance:.6f}",
            f" Number of estimated parameters = {fit.n_parameters}", ""]
    return "\n".join(out)


def _clean(x):
    x = float(x)
    return x if np.isfinite(x) else None


def to_json(res) -> dict:
    fit, d = res.fit, res.design
    factors = []
    for factor, cols, J, tau, rank in zip(fit.factors, fit.columns, fit.n_groups, fit.taus, fit.certificate.ranks):
        factors.append({"name": factor, "groups": int(J), "random": list(cols),
                        "tau": [[_clean(v) for v in row] for row in tau], "rank": int(rank)})
    return {"tool": "hlmcli", "version": __version__, "schema": 1, "kind": "cross-classified linear",
            "title": res.title, "source": res.source, "formula": res.formula,
            "outcome": d.outcome, "method": fit.method, "n": int(fit.n), "n_dropped": int(d.n_dropped),
            "factors": factors, "sigma2": _clean(fit.sigma2),
            "fixed_effects": [{"name": n, "theta": f"THETA{k}", "coefficient": _clean(g), "se": _clean(s),
                               "t_ratio": _clean(t)}
                              for k, (n, g, s, t) in enumerate(zip(d.fixed_names, fit.gamma, fit.se, res.t_ratios))],
            "deviance": _clean(fit.deviance), "n_parameters": int(fit.n_parameters),
            "certified": res.certified, "boundary": res.boundary_notes(),
            "certificate": fit.certificate.to_json(), "iterations": int(fit.iterations),
            "evaluations": int(fit.evaluations), "start": fit.start}
