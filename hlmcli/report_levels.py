"""Output of models of K ≥ 4 levels in HLM3's layout continued one level up (text), the JSON document
(schema 4, "levels": K, one τ block per level), the lme4 formula and the EB residual files of every
level. Pure functions of a DesignLevels and a NestedFit: no fitting here.

Notation (equations_levels.py): π/β/γ/δ (P/B/G/D in ASCII) for the coefficients of the level-1..4
equations, e at level 1 and r/u/v for the random effects at levels 2/3/4. One block per level ℓ:
τ_ℓ, named after the coefficients it varies (τπ, τβ, τγ), its reliabilities, and "Final estimation of
level-ℓ variance components" with χ² over the units with sufficient data.
"""

from __future__ import annotations

import math

import numpy as np

from . import __version__
from .equations_levels import COEF_LETTERS, GREEK, RANDOM_LETTERS, Centering, LevelsSpec, Term3, symbol
from .report import _df_text, _df_value, _table, dumps_json, hlm_e, hlm_name, hlm_p, printable

SCHEMA = 4
_SUBSCRIPTS = "ijkl"


class SymbolsLevels:
    def __init__(self, ascii_only: bool):
        self.ascii = ascii_only
        self.dot = "." if ascii_only else "•"
        self.sigma2 = "sigma^2" if ascii_only else "σ2"
        self.chi2 = "Chi-square" if ascii_only else "χ2"

    def coef(self, depth: int, idx) -> str:
        """The coefficient of a level-`depth` equation with subscripts idx."""
        s = symbol(COEF_LETTERS[depth - 1], idx)
        return s.replace(GREEK[depth - 1], COEF_LETTERS[depth - 1].upper()) if self.ascii else s

    def rand(self, level: int, idx) -> str:
        r = RANDOM_LETTERS[level - 1]
        sep = "," if any(i >= 10 for i in idx) else ""
        return (r.upper() if self.ascii else r) + sep.join(map(str, idx))

    def tau(self, level: int) -> str:
        name = ("pi", "beta", "gamma", "delta")[level - 2]
        return f"tau({name})" if self.ascii else f"τ{GREEK[level - 2]}"


def _sub(level: int, K: int) -> str:
    """HLM's subscripts of a level-`level` quantity in a K-level model (ijkl at level 1 of four)."""
    return _SUBSCRIPTS[level - 1:K]


def _term(t: Term3, sym: SymbolsLevels, K: int) -> str:
    sub = _sub(t.level, K)
    name = f"mean({hlm_name(t.name)})" if t.mean_of else hlm_name(t.name)
    if t.centering is Centering.GROUP:
        return f"({name}{sub} - {name}{sym.dot}{sub[1:]})"
    if t.centering is Centering.GRAND:
        return f"({name}{sub} - {name}{sym.dot * len(sub)})"
    return f"({name}{sub})"


def model_summary(spec: LevelsSpec, sym: SymbolsLevels) -> list[str]:
    K = spec.n_levels
    out = ["Summary of the model specified", "", "Level-1 Model", ""]
    pis = [p for p, eq in enumerate(spec.equations) if eq is not None]
    rhs = [f"{sym.coef(1, (p,))}{_sub(2, K)}" + ("" if p == 0 else f"*{_term(spec.level1[p - 1], sym, K)}") for p in pis]
    out.append(f"    {hlm_name(spec.outcome)}{_sub(1, K)} = " + " + ".join(rhs) + f" + {'E' if sym.ascii else 'e'}{_sub(1, K)}")
    walk = spec.walk()
    for level in range(2, K + 1):
        out += ["", f"Level-{level} Model", ""]
        for depth, idx, eq, names in walk:
            if depth != level - 1:
                continue
            s = _sub(level + 1, K)
            parts = [f"{sym.coef(level, idx + (k,))}{s}" + ("" if k == 0 else f"*{_term(eq.predictors[k - 1], sym, K)}")
                     for k in eq.present()]
            if eq.random:
                parts.append(f"{sym.rand(level, idx)}{_sub(level, K)}")
            out.append(f"    {sym.coef(level - 1, idx)}{_sub(level, K)} = " + " + ".join(parts))
    notes = centering_notes(spec)
    if notes:
        out += [""] + notes
    return out


def _all_terms(spec: LevelsSpec) -> list[Term3]:
    return list(spec.level1) + [t for depth, idx, eq, names in spec.walk() for t in eq.predictors]


def centering_notes(spec: LevelsSpec) -> list[str]:
    out, seen = [], set()
    for t in _all_terms(spec):
        key = (t.label, t.level, t.centering)
        if key in seen:
            continue
        seen.add(key)
        name = hlm_name(t.label)
        if t.mean_of:
            over = "records" if t.mean_of == 1 else f"level-{t.mean_of} units"
            out.append(f"{name} at level {t.level} is the mean of {hlm_name(t.name)} over each level-{t.level} unit's "
                       f"{over} used.")
        if t.centering is Centering.GROUP:
            out.append(f"{name} has been centered around its level-{t.level + 1} unit's mean.")
        elif t.centering is Centering.GRAND:
            out.append(f"{name} has been centered around the grand mean.")
    return out


def _r_name(t: Term3) -> str:
    base = f"mean_{t.name}" if t.mean_of else t.name
    return base + {Centering.GROUP: "_gc", Centering.GRAND: "_c", Centering.NONE: ""}[t.centering]


def lme4_formula(spec: LevelsSpec, ids) -> str:
    """The same model in lme4: each fixed effect the product of its path's predictors, and one
    (… | id_K:…:id_ℓ) term per level with the random columns of that level."""
    K = spec.n_levels

    def product(names):
        names = [n for n in names if n is not None]
        return ":".join(reversed(names)) if names else "1"

    a = [None] + [_r_name(t) for t in spec.level1]

    def path_names(idx):
        out = [a[idx[0]]]
        eq = spec.equations[idx[0]]
        for k in idx[1:]:
            out.append(None if k == 0 else _r_name(eq.predictors[k - 1]))
            eq = eq.terms[k] if eq.terms else None
        return out

    fixed = list(dict.fromkeys(product(path_names(f.idx)) for f in spec.fixed()))
    if "1" not in fixed:
        fixed.insert(0, "0")
    parts = [f"{spec.outcome} ~ {' + '.join(fixed)}"]
    for level in range(K, 1, -1):
        cols = [product(path_names(idx)) for idx, names in spec.random(level)]
        if "1" not in cols:
            cols.insert(0, "0")
        group = ":".join(reversed([ids[m - 2] for m in range(level, K + 1)]))
        parts.append(f"({' + '.join(cols)} | {group})")
    return " + ".join(parts)


def _corr(t: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(t), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return t / np.outer(sd, sd)


def _two_sided_p(t, df):
    from scipy import stats

    return 2 * stats.t.sf(np.abs(t), df)


def _coef_label(names, idx, sym: SymbolsLevels, depth: int, letter=None) -> str:
    tag = sym.rand(depth + 1, idx) if letter else sym.coef(depth, idx)
    text = "/".join(hlm_name(n) for n in names)
    return f"{text}, {tag}" if all(n.startswith("INTRCPT") for n in names) else f"{text} slope, {tag}"


def certificate_text(fit, sym: SymbolsLevels) -> list[str]:
    c = fit.certificate
    if not c.certified:
        return ["Iterations stopped WITHOUT a certified optimum:"] + [f" - {f}" for f in getattr(c, "failed", [])]
    parts = []
    for level, (r, q) in enumerate(zip(c.ranks, c.qs), start=2):
        parts.append(f"{sym.tau(level)} positive definite" if r == q else f"{sym.tau(level)} of rank {r} of {q}")
    text = "Iterations stopped at the optimum (certified): with " + ", ".join(parts)
    text += f", the deviance can fall by less than {c.tolerance:.0E} on its face"
    if c.hessian_eigenvalue is not None:
        text += ", the face Hessian is positive semi-definite"
    return [text]


def fit_text(design, fit, meta: dict, sym: SymbolsLevels) -> str:
    spec = design.spec
    K = spec.n_levels
    out: list[str] = []
    w = out.append
    if not fit.converged:
        w("WARNING: the optimum is NOT certified; the numbers below may not be at the optimum.")
        w("")
    w(f"hlmcli {__version__}: hierarchical linear models, {K} levels (HLM{K})")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    w("")
    w(f"Specifications for this HLM{K} run")
    w("")
    w(f"Problem Title: {meta.get('title') or 'no title'}")
    w("")
    w(f" The data source for this run  = {meta.get('data_source')}")
    w(f" The maximum number of level-1 units = {design.n}")
    for level in range(2, K + 1):
        w(f" The maximum number of level-{level} units = {design.J(level)}")
    w(f" The maximum number of iterations = {spec.options.max_iterations}")
    w("")
    w(f" Method of estimation: {'restricted maximum likelihood' if fit.method == 'REML' else 'full maximum likelihood'}")
    w("")
    w(f" The outcome variable is  {hlm_name(spec.outcome)}")
    w("")
    out += model_summary(spec, sym)
    if design.n_deleted:
        w("")
        w(f"Run-time deletion has reduced the number of level-1 records to {design.n} ({design.n_deleted} deleted)")
    w("")
    w(f"Final Results - Iteration {fit.iterations}")
    w("")
    out += certificate_text(fit, sym)
    for note in fit.boundary:
        w(note)
    w("")
    w(f" {sym.sigma2} = {fit.sigma2:12.5f}")

    def matrix(title, labels, m, fmt):
        lw = max(len(x) for x in labels)
        w("")
        w(title)
        for k, lab in enumerate(labels):
            w(f"{lab:>{lw}} " + " ".join(fmt.format(v) for v in m[k]))

    for level in range(2, K + 1):
        rnd = spec.random(level)
        tau = fit.taus[level - 2]
        labels = ["/".join(hlm_name(n) for n in names) + f",{sym.coef(level - 1, idx)}" for idx, names in rnd]
        matrix(f" {sym.tau(level)}", labels, tau, "{:13.5f}")
        if len(rnd) > 1:
            matrix(f" {sym.tau(level)} (as correlations)", labels, _corr(tau), "{:7.3f}")
        w("")
        rows = [[_coef_label(names, idx, sym, level - 1), f"{fit.reliabilities[level - 2][k]:.3f}"]
                for k, (idx, names) in enumerate(rnd)]
        out += _table([f"Random level-{level - 1} coefficient", "Reliability estimate"], rows, [34, 22])
    w("")
    w(f"The value of the log-likelihood function at iteration {fit.iterations} = {hlm_e(-fit.deviance / 2)}")
    fixed = spec.fixed()
    for robust in (False, True):
        w("")
        w("Final estimation of fixed effects")
        if robust:
            w(f"(with robust standard errors, clustered on level-{K} units)")
        se = np.sqrt(np.diag(fit.cov_gamma_robust if robust else fit.cov_gamma))
        t = fit.gamma / se
        pv = _two_sided_p(t, fit.df_gamma)
        rows = []
        for k, f in enumerate(fixed):
            prev = fixed[k - 1].idx if k else ()
            for depth in range(1, K):
                if f.idx[:depth] != prev[:depth]:
                    rows.append([f"{'   ' * (depth - 1)}For {hlm_name(f.names[depth - 1])}, {sym.coef(depth, f.idx[:depth])}"])
            rows.append([f"{'   ' * (K - 1)}{hlm_name(f.names[-1])}, {sym.coef(K, f.idx)}", f"{fit.gamma[k]:.6f}",
                         f"{se[k]:.6f}", f"{t[k]:.3f}", _df_text(fit.df_gamma[k]), hlm_p(pv[k])])
        out += _table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                      rows, [34, 12, 14, 9, 12, 8])
    for level in range(2, K + 1):
        w("")
        w("Final estimation of level-1 and level-2 variance components" if level == 2 else
          f"Final estimation of level-{level} variance components")
        tau = fit.taus[level - 2]
        sd = np.sqrt(np.clip(np.diag(tau), 0, None))
        rows = []
        for k, (idx, names) in enumerate(spec.random(level)):
            c = fit.chi2[level - 2][k]
            rows.append([_coef_label(names, idx, sym, level - 1, letter=True), f"{sd[k]:.5f}", f"{tau[k, k]:.5f}",
                         _df_text(c["df"]), f"{c['chi2']:.5f}", hlm_p(c["p"])])
        if level == 2:
            rows.append([f"level-1, {'E' if sym.ascii else 'e'}", f"{math.sqrt(fit.sigma2):.5f}", f"{fit.sigma2:.5f}",
                         "", "", ""])
        out += _table(["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"],
                      rows, [34, 18, 18, 6, 12, 8])
        n_units = {c.get("n_units") for c in fit.chi2[level - 2]}
        if n_units and min(n_units) < design.J(level):
            w(f"Note: the {sym.chi2} statistics are based on {min(n_units)} of {design.J(level)} level-{level} units "
              "with sufficient data.")
    w("")
    w("Statistics for the current model")
    w(f" Deviance                       = {fit.deviance:.6f}")
    w(f" Number of estimated parameters = {fit.n_params}")
    w("")
    w("The same model in R (lme4)")
    w(f" {lme4_formula(spec, meta['ids'])}")
    w(f"   fit with lmer(..., REML = {'TRUE' if spec.method == 'REML' else 'FALSE'})")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


# ---------------------------------------------------------------- JSON (schema 4)

def _chi2_json(c: dict) -> dict:
    return {"chi2": float(c["chi2"]), "df": _df_value(c["df"]), "p": float(c["p"]),
            "n_units": None if c.get("n_units") is None else int(c["n_units"])}


def fit_json(design, fit, meta: dict) -> dict:
    spec = design.spec
    K = spec.n_levels
    plain = SymbolsLevels(True)
    se = np.sqrt(np.diag(fit.cov_gamma))
    rse = np.sqrt(np.diag(fit.cov_gamma_robust))
    t, rt = fit.gamma / se, fit.gamma / rse
    pv, rpv = _two_sided_p(t, fit.df_gamma), _two_sided_p(rt, fit.df_gamma)
    fixed = []
    for k, f in enumerate(spec.fixed()):
        fixed.append({"label": symbol(COEF_LETTERS[K - 1], f.idx), "subscripts": list(f.idx), "path": list(f.names),
                      "estimate": float(fit.gamma[k]), "se": float(se[k]), "t": float(t[k]),
                      "df": _df_value(fit.df_gamma[k]), "p_value": float(pv[k]), "robust_se": float(rse[k]),
                      "robust_t": float(rt[k]), "robust_p_value": float(rpv[k])})
    random = []
    for level in range(2, K + 1):
        rnd = spec.random(level)
        tau = fit.taus[level - 2]
        random.append({"level": level, "name": f"tau_{('pi', 'beta', 'gamma', 'delta')[level - 2]}",
                       "coefficients": ["/".join(names) for idx, names in rnd],
                       "labels": [plain.rand(level, idx).lower() for idx, names in rnd],
                       "matrix": tau.tolist(), "correlation": _corr(tau).tolist(),
                       "reliability": [float(x) for x in fit.reliabilities[level - 2]],
                       "chi2": [_chi2_json(c) for c in fit.chi2[level - 2]]})
    lines = model_summary(spec, plain)
    return {
        "schema": SCHEMA, "levels": K, "tool": "hlmcli", "version": __version__,
        "title": meta.get("title"), "data_source": meta.get("data_source"),
        "method": fit.method, "outcome": spec.outcome,
        "ids": {f"level{m}": meta["ids"][m - 2] for m in range(2, K + 1)},
        "n_units": {"level1": design.n, **{f"level{m}": design.J(m) for m in range(2, K + 1)}},
        "n_deleted": design.n_deleted,
        "converged": bool(fit.converged), "iterations": int(fit.iterations), "boundary": bool(fit.boundary),
        "boundary_notes": list(fit.boundary), "certificate": fit.certificate.to_json(),
        "model": {"given": meta.get("model_given"), "normalised": [x.strip() for x in lines[2:] if x.strip()],
                  "method": spec.method},
        "sigma2": float(fit.sigma2),
        "random_effects": random,
        "fixed_effects": fixed,
        "gamma_covariance": fit.cov_gamma.tolist(), "gamma_robust_covariance": fit.cov_gamma_robust.tolist(),
        "deviance": float(fit.deviance), "n_params": int(fit.n_params), "loglik": -float(fit.deviance) / 2,
        "lme4_formula": lme4_formula(spec, meta["ids"]),
        "centering_means": design.centering_means,
    }


def fit_json_text(design, fit, meta: dict) -> str:
    return dumps_json(fit_json(design, fit, meta))


# ---------------------------------------------------------------- residual files

def level_residuals(design, fit, archive, level: int):
    """One row per level-ℓ unit: its id, its parent's id, its size, the EB means with posterior
    variances of its random effects, and its level-ℓ data."""
    import pandas as pd

    spec = design.spec
    K = spec.n_levels
    data = design.data
    cols: dict = {"id": design.unit_ids[level - 2]}
    if level < K:
        cols[archive.id_names[level - 1]] = np.array(design.unit_ids[level - 1], dtype=object)[data.parents[level - 1]]
    below = data.parents[level - 2]
    cols["n"] = np.bincount(below, minlength=design.J(level)).astype(int)
    for k, (idx, names) in enumerate(spec.random(level)):
        label = "_".join(names)
        letter = RANDOM_LETTERS[level - 1]
        cols[f"{letter}_{label}"] = fit.eb[level - 2][:, k]
        cols[f"postvar_{letter}_{label}"] = fit.eb_var[level - 2][:, k, k]
    for i, n in enumerate(archive.names(level)):
        cols[n] = archive.levels[level - 1].values[i][design.positions[level - 2]]
    return pd.DataFrame(cols)
