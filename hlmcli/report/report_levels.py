"""Output of models of three and more levels, pure functions of a design and a NestedFit (no fitting here).

Three levels: Three-level output as HLM3 prints it (text), the JSON document (schema 3), the lme4 formula and the
EB residual files at levels 2 and 3. Pure functions of a DesignLevels and a NestedFit: no fitting here.

HLM3's layout, from its printed output (HLM3.EXE 7.00 and HLM3S 6.00 runs; see the module docstring of
equations_levels.py for the notation): π/β/γ (P/B/G in ASCII), r at level 2, u at level 3, e at level 1;
"Final estimation of level-1 and level-2 variance components" and "Final estimation of level-3
variance components" tables with χ² over units with sufficient data; fixed effects nested
"For INTRCPT1, π0 / For INTRCPT2, β00 / INTRCPT3, γ000".

K ≥ 4 levels: Output of models of K ≥ 4 levels in HLM3's layout continued one level up (text), the JSON document
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

from ..spec import coefficient_label, subscript
from ..version import __version__
from ..language.equations_levels import COEF_LETTERS, GREEK, RANDOM_LETTERS, symbol
from ..language.model import Centering, ModelSpec, Term
from .report import data_hash, df_text, df_value, dumps_json, hlm_e, hlm_name, hlm_p, printable, text_table

SCHEMA3 = 3

_SUBSCRIPTS = "ijkl"


class SymbolsLevels:
    """The symbols of the output of a model of three or more levels, Unicode or ASCII."""

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
        return coefficient_label(r.upper() if self.ascii else r, idx)

    def tau(self, level: int) -> str:
        name = ("pi", "beta", "gamma", "delta")[level - 2]
        return f"tau({name})" if self.ascii else f"τ{GREEK[level - 2]}"


def _sub(level: int, K: int) -> str:
    """HLM's subscripts of a level-`level` quantity in a K-level model (ijkl at level 1 of four)."""
    return _SUBSCRIPTS[level - 1:K]


def _term_k(t: Term, sym: SymbolsLevels, K: int) -> str:
    sub = _sub(t.level, K)
    name = f"mean({hlm_name(t.name)})" if t.mean_of else hlm_name(t.name)
    if t.centering is Centering.GROUP:
        return f"({name}{sub} - {name}{sym.dot}{sub[1:]})"
    if t.centering is Centering.GRAND:
        return f"({name}{sub} - {name}{sym.dot * len(sub)})"
    return f"({name}{sub})"


class Symbols3(SymbolsLevels):
    """HLM3's symbols: the K-level ones and HLM3's own names (π, β, γ; τπ, τβ)."""

    def __init__(self, ascii_only: bool):
        super().__init__(ascii_only)
        self.pi, self.beta, self.gamma = ("P", "B", "G") if ascii_only else ("π", "β", "γ")
        self.r, self.u, self.e = ("R", "U", "E") if ascii_only else ("r", "u", "e")
        self.tau_pi = "tau(pi)" if ascii_only else "τπ"
        self.tau_beta = "tau(beta)" if ascii_only else "τβ"

    idx = staticmethod(subscript)  # HLM 7's comma rule

    def p(self, p: int) -> str:
        return f"{self.pi}{p}"

    def b(self, p: int, q: int) -> str:
        return f"{self.beta}{self.idx(p, q)}"

    def g(self, p: int, q: int, s: int) -> str:
        return f"{self.gamma}{self.idx(p, q, s)}"


def _pis(spec: ModelSpec) -> list[int]:
    """The p of each level-1 coefficient π_p in the model (π0 is absent without a level-1 intercept)."""
    return [p for p, eq in enumerate(spec.equations) if eq is not None]


def _random_pis(spec: ModelSpec) -> list[int]:
    return [idx[0] for idx, _ in spec.random(2)]


def _random_betas(spec: ModelSpec) -> list[tuple[int, int]]:
    return [idx for idx, _ in spec.random(3)]


def _terms3(spec: ModelSpec) -> list[Term]:
    """Every predictor: level 1, then the π equations', then the β equations' (HLM3's order of notes)."""
    pis = [spec.equations[p] for p in _pis(spec)]
    return list(spec.level1) + [t for eq in pis for t in eq.predictors] + [
        t for eq in pis for b in eq.terms if b is not None for t in b.predictors]


def _r_name(t: Term) -> str:
    base = f"mean_{t.name}" if t.mean_of else t.name
    return base + {Centering.GROUP: "_gc", Centering.GRAND: "_grand", Centering.NONE: ""}[t.centering]


def structure_notes(fit, tau_symbol: str) -> list[str]:
    """The lines saying a fit's τ is diagonal (lme4's `||`), for the model summary."""
    diagonal = tuple(getattr(fit, "diagonal", ()) or ())
    if not any(diagonal):
        return []
    if all(diagonal):
        return ["", f"The random effects are independent: the off-diagonal elements of every {tau_symbol} are fixed at 0."]
    levels = ", ".join(str(level) for level, d in enumerate(diagonal, start=2) if d)
    return ["", f"The random effects are independent at level {levels}: the off-diagonal elements of {tau_symbol} "
                "there are fixed at 0."]


def df_note(fit) -> list[str]:
    """The line under the fixed-effect tables when the d.f. are not HLM's."""
    if getattr(fit, "df_method", "hlm") == "satterthwaite":
        return ["(d.f. by Satterthwaite's method, as lmerTest computes them)"]
    return []


def _diagonal_at(fit) -> tuple:
    return tuple(getattr(fit, "diagonal", ()) or ())


def _structure_keys(fit) -> dict:
    """tau_structure (each level's τ, in the two-level JSON's words) and df_method, when either is
    asked for (--tau diagonal, --df satterthwaite); a default fit's document keeps its keys."""
    diagonal = _diagonal_at(fit)
    method = getattr(fit, "df_method", "hlm")
    if not any(diagonal) and method == "hlm":
        return {}
    return {"tau_structure": ["diagonal" if d else "unstructured" for d in diagonal], "df_method": method}


def _random_terms(cols: list, group: str, diagonal: bool) -> str:
    """lme4's random part of one level: (c1 + c2 | g), or with a diagonal τ one bar per column,
    (1 | g) + (0 + c2 | g) (lme4's `||` written out, which also works for products of variables)."""
    if not diagonal or all(c == "0" for c in cols):
        return f"({' + '.join(cols)} | {group})"
    return " + ".join(f"({c if c == '1' else '0 + ' + c} | {group})" for c in cols if c != "0")


def lme4_formula3(spec: ModelSpec, id2: str, id3: str, diagonal=False) -> tuple[str, list[str]]:
    """The same model in lme4: fixed columns a_p·X_q·W_s, (a_p·X_q | level 3) for random β's, (a_p | level 3:level 2).
    diagonal: True, or (level 2, level 3) flags: one bar per effect there."""
    d2, d3 = (diagonal, diagonal) if isinstance(diagonal, bool) else (tuple(diagonal) + (False, False))[:2]
    def product(*names):
        names = [n for n in names if n is not None]
        return ":".join(names) if names else "1"

    a = [None] + [_r_name(t) for t in spec.level1]
    fixed = []
    for f in spec.fixed():
        p, q, s = f.idx
        x = None if q == 0 else _r_name(spec.equations[p].predictors[q - 1])
        w = None if s == 0 else _r_name(spec.equation((p, q)).predictors[s - 1])
        fixed.append(product(w, x, a[p]))
    fixed = list(dict.fromkeys(fixed))
    if "1" not in fixed:
        fixed.insert(0, "0")
    r3 = [product(None if q == 0 else _r_name(spec.equations[p].predictors[q - 1]), a[p]) for p, q in _random_betas(spec)]
    r2 = [product(a[p]) for p in _random_pis(spec)]
    if "1" not in r3:
        r3.insert(0, "0")
    if "1" not in r2:
        r2.insert(0, "0")
    formula = (f"{spec.outcome} ~ {' + '.join(fixed)} + {_random_terms(r3, id3, d3)} + "
               f"{_random_terms(r2, f'{id3}:{id2}', d2)}")
    notes, made = [], set()
    terms = _terms3(spec)
    for t in terms:
        name = _r_name(t)
        if name == t.name or name in made:
            continue
        made.add(name)
        unit = {1: id2, 2: id2, 3: id3}[t.level]
        src = t.name
        if t.mean_of:
            src = f"ave({t.name}, {unit})" if t.mean_of == 1 else f"(mean of {t.name} over the level-2 units of each {id3})"
            if t.centering is Centering.NONE:
                notes.append(f"{name} = {src}")
                continue
        if t.centering is Centering.GROUP:
            within = id2 if t.level == 1 else id3
            notes.append(f"{name} = {src} - (mean of {src} over the level-{t.level} units of each {within})")
        elif t.centering is Centering.GRAND:
            notes.append(f"{name} = {src} - (mean of {src} over level-{t.level} units)")
    if notes:
        notes.append("(means over the records and units used in the analysis)")
    return formula, notes + [f"fit with lmer(..., REML = {'TRUE' if spec.method == 'REML' else 'FALSE'})"]


# ---------------------------------------------------------------- labels

def _pi_label(spec: ModelSpec, p: int, sym: Symbols3, letter: str | None = None) -> str:
    name = hlm_name(spec.coefficient_names()[p])
    tag = f"{letter}{p}" if letter else sym.p(p)
    return f"{name}, {tag}" if p == 0 else f"{name} slope, {tag}"


def _beta_label(spec: ModelSpec, p: int, q: int, sym: Symbols3, letter: str | None = None) -> str:
    tag = f"{letter}{sym.idx(p, q)}" if letter else sym.b(p, q)
    return f"{hlm_name(spec.coefficient_names()[p])}/{hlm_name(spec.term_names((p,))[q])}, {tag}"


def _corr(t: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.clip(np.diag(t), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        return t / np.outer(sd, sd)


def _two_sided_p(t, df):
    from ..engine.special_functions import special

    # scipy.stats.t.sf(x, df) is stdtr(df, -x); scipy.stats costs a second of start-up.
    return 2 * special.stdtr(df, -np.abs(t))


def _certificate_lines(fit, sym, taus: list[str]) -> list[str]:
    """The stopping line of a nested fit, or what failed."""
    from ..engine.certificate import stopping_line

    c = fit.certificate
    if not c.certified:
        return ["Iterations stopped WITHOUT a certified optimum:"] + [f" - {f}" for f in getattr(c, "failed", [])]
    return [stopping_line(f"{sym.sigma2}, " + ", ".join(taus[:-1]) + f" and {taus[-1]}")]


def certificate_text3(fit, sym: Symbols3) -> list[str]:
    return _certificate_lines(fit, sym, [sym.tau_pi, sym.tau_beta])


def _run_header(fit, meta: dict, K: int, n_units: list[int], max_iterations: int) -> list[str]:
    """HLM3/HLM4's run header, to the iteration limit: n_units are the counts of levels 1..K."""
    out = ["WARNING: the optimum is NOT certified; the numbers below may not be at the optimum.", ""] \
        if not fit.converged else []
    kind = "three levels" if K == 3 else f"{K} levels"
    out.append(f"hlmcli {__version__}: hierarchical linear models, {kind} (HLM{K})")
    if meta.get("timestamp"):
        out.append(f"Date: {meta['timestamp']}")
    out += ["", f"Specifications for this HLM{K} run", "", f"Problem Title: {meta.get('title') or 'no title'}", "",
            f" The data source for this run  = {meta.get('data_source')}"]
    if meta.get("command_file"):
        out.append(f" The command file for this run = {meta['command_file']}")
    out += [f" The maximum number of level-{level} units = {n}" for level, n in enumerate(n_units, start=1)]
    out.append(f" The maximum number of iterations = {max_iterations}")
    return out


def _run_middle(design, fit, meta: dict, sym, summary: list[str], certificate: list[str]) -> list[str]:
    """From the method of estimation to σ², the same at three and four levels."""
    method = "restricted maximum likelihood" if fit.method == "REML" else "full maximum likelihood"
    out = ["", f" Method of estimation: {method}"]
    out += list(meta.get("weighting_lines") or [])  # sampling weights (weights.levels_weighting_lines)
    out += ["", f" The outcome variable is  {hlm_name(design.spec.outcome)}", ""]
    out += summary
    out += structure_notes(fit, "τ" if not sym.ascii else "tau")
    if design.n_deleted:
        out += ["", f"Run-time deletion has reduced the number of level-1 records to {design.n} "
                    f"({design.n_deleted} deleted)"]
    out += ["", f"Final Results - Iteration {fit.iterations}", ""]
    out += certificate
    out += list(fit.boundary)
    out += ["", f" {sym.sigma2} = {fit.sigma2:12.5f}"]
    return out


# ---------------------------------------------------------------- text

def _matrix_lines(title: str, labels: list[str], m, fmt: str) -> list[str]:
    """A τ matrix as HLM prints it: a title, then one labelled row per random coefficient."""
    lw = max(len(x) for x in labels)
    return ["", title] + [f"{lab:>{lw}} " + " ".join(fmt.format(v) for v in m[k]) for k, lab in enumerate(labels)]


def _tau_blocks3(spec: ModelSpec, fit, sym: Symbols3) -> list[str]:
    """τπ and τβ, as covariances and (with more than one effect) correlations, each with its reliabilities."""
    rp, rb = _random_pis(spec), _random_betas(spec)
    names = spec.coefficient_names()
    lab_pi = [f"{hlm_name(names[p])},{sym.p(p)}" for p in rp]
    out = _matrix_lines(f" {sym.tau_pi}", lab_pi, fit.tau_pi, "{:13.5f}")
    if len(rp) > 1:
        out += _matrix_lines(f" {sym.tau_pi} (as correlations)", lab_pi, _corr(fit.tau_pi), "{:7.3f}")
    out.append("")
    rows = [[_pi_label(spec, p, sym), f"{fit.reliability_pi[k]:.3f}"] for k, p in enumerate(rp)]
    out += text_table(["Random level-1 coefficient", "Reliability estimate"], rows, [28, 22])
    lab_b = [f"{hlm_name(names[p])}/{hlm_name(spec.term_names((p,))[q])},{sym.b(p, q)}" for p, q in rb]
    out += _matrix_lines(f" {sym.tau_beta}", lab_b, fit.tau_beta, "{:13.5f}")
    if len(rb) > 1:
        out += _matrix_lines(f" {sym.tau_beta} (as correlations)", lab_b, _corr(fit.tau_beta), "{:7.3f}")
    out.append("")
    rows = [[_beta_label(spec, p, q, sym), f"{fit.reliability_beta[k]:.3f}"] for k, (p, q) in enumerate(rb)]
    return out + text_table(["Random level-2 coefficient", "Reliability estimate"], rows, [28, 22])


def _fixed_effects3(spec: ModelSpec, fit, sym: Symbols3, tied=()) -> list[str]:
    """The γ table with model-based, then robust standard errors, grouped by π and β as HLM3 prints it;
    tied: the positions of the γs --constrain ties, marked * (the note follows the tables)."""
    out: list[str] = []
    gammas = spec.fixed()
    for robust in (False, True):
        out += ["", "Final estimation of fixed effects"]
        if robust:
            out.append("(with robust standard errors, clustered on level-3 units)")
        out += df_note(fit)
        se = np.sqrt(np.diag(fit.cov_gamma_robust if robust else fit.cov_gamma))
        t = fit.gamma / se
        pv = _two_sided_p(t, fit.df_gamma)
        rows = []
        for k, g in enumerate(gammas):
            (p, q, s), (_, level2, level3) = g.idx, g.names
            if k == 0 or gammas[k - 1].idx[0] != p:
                rows.append([f"For {_pi_label(spec, p, sym)}"])
            if k == 0 or gammas[k - 1].idx[:2] != (p, q):
                rows.append([f"   For {hlm_name(level2)}, {sym.b(p, q)}"])
            mark = "*" if k in tied else ""
            rows.append([f"      {hlm_name(level3)}, {sym.g(p, q, s)}{mark}", f"{fit.gamma[k]:.6f}", f"{se[k]:.6f}",
                         f"{t[k]:.3f}", df_text(fit.df_gamma[k]), hlm_p(pv[k])])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                          rows, [30, 12, 14, 9, 12, 8])
    return out


def _components3(design, fit, sym: Symbols3) -> list[str]:
    """The level-1/level-2 and the level-3 variance components with their χ² tests."""
    spec = design.spec
    head = ["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"]
    out = ["", "Final estimation of level-1 and level-2 variance components"]
    sd = np.sqrt(np.clip(np.diag(fit.tau_pi), 0, None))
    rows = []
    for k, p in enumerate(_random_pis(spec)):
        c = fit.chi2_pi[k]
        rows.append([_pi_label(spec, p, sym, sym.r), f"{sd[k]:.5f}", f"{fit.tau_pi[k, k]:.5f}", df_text(c["df"]),
                     f"{c['chi2']:.5f}", hlm_p(c["p"])])
    rows.append([f"level-1, {sym.e}", f"{math.sqrt(fit.sigma2):.5f}", f"{fit.sigma2:.5f}", "", "", ""])
    out += text_table(head, rows, [26, 18, 18, 6, 12, 8])
    out += _chi2_note(fit.chi2_pi, design.n2, 2, sym)
    out += ["", "Final estimation of level-3 variance components"]
    sd = np.sqrt(np.clip(np.diag(fit.tau_beta), 0, None))
    rows = []
    for k, (p, q) in enumerate(_random_betas(spec)):
        c = fit.chi2_beta[k]
        rows.append([_beta_label(spec, p, q, sym, sym.u), f"{sd[k]:.5f}", f"{fit.tau_beta[k, k]:.5f}", df_text(c["df"]),
                     f"{c['chi2']:.5f}", hlm_p(c["p"])])
    out += text_table(head, rows, [30, 18, 18, 6, 12, 8])
    return out + _chi2_note(fit.chi2_beta, design.n3, 3, sym)


def _chi2_note(chi2: list, n: int, level: int, sym: Symbols3) -> list[str]:
    n_units = {c.get("n_units") for c in chi2}
    if n_units and max(n_units) is not None and min(n_units) < n:
        return [f"Note: the {sym.chi2} statistics are based on {min(n_units)} of {n} level-{level} units with sufficient data."]
    return []


def fit_text3(design, fit, meta: dict, sym: Symbols3) -> str:
    spec = design.spec
    out = _run_header(fit, meta, 3, [design.n, design.n2, design.n3], spec.options.max_iterations)
    out += _run_middle(design, fit, meta, sym, model_summary(spec, sym), certificate_text3(fit, sym))
    out += _tau_blocks3(spec, fit, sym)
    out += ["", f"The value of the log-likelihood function at iteration {fit.iterations} = {hlm_e(-fit.deviance / 2)}"]
    out += _fixed_effects3(spec, fit, sym, meta.get("tied", ()))
    out += _components3(design, fit, sym)
    out += ["", "Statistics for the current model", f" Deviance                       = {fit.deviance:.6f}",
            f" Number of estimated parameters = {fit.n_params}"]
    if meta.get("weights"):
        out.append(" (with sampling weights these are pseudo-likelihood quantities: not for likelihood-ratio tests)")
    formula, notes = lme4_formula3(spec, meta.get("id2", "ID2"), meta.get("id3", "ID3"), _diagonal_at(fit) or False)
    out += ["", "The same model in R (lme4)", f" {formula}"] + [f"   {note}" for note in notes]
    if meta.get("weights"):
        out.append("   lmer has no sampling weights (its weights= are precision weights); the pseudo-likelihood fit in R "
                   "is WeMix::mix")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


# ---------------------------------------------------------------- JSON (schema 3)

def _chi2_json(c: dict) -> dict:
    return {"chi2": float(c["chi2"]), "df": df_value(c["df"]), "p": float(c["p"]),
            "n_units": None if c.get("n_units") is None else int(c["n_units"])}


def model_record3(spec: ModelSpec, meta: dict) -> dict:
    plain = Symbols3(True)
    lines = model_summary(spec, plain)

    def block(a, b):
        i = lines.index(a) + 2
        j = lines.index(b) - 1 if b in lines else len(lines)
        return [x.strip() for x in lines[i:j] if x.strip()]

    def term(t):
        return {"name": t.name, "centering": t.centering.value, "mean_of_level": t.mean_of}

    return {
        "given": meta.get("model_given"),
        "normalised": {"level1": block("Level-1 Model", "Level-2 Model"), "level2": block("Level-2 Model", "Level-3 Model"),
                       "level3": [x for x in block("Level-3 Model", "") if "centered" not in x and " is the mean " not in x]},
        "outcome": spec.outcome,
        "level1_predictors": [term(t) for t in spec.level1],
        "level2_equations": [{"coefficient": spec.coefficient_names()[p], "random": spec.equations[p].random,
                              "predictors": [term(t) for t in spec.equations[p].predictors],
                              "level3_equations": [{"coefficient": spec.term_names((p,))[q],
                                                    "random": spec.equation((p, q)).random,
                                                    "predictors": [term(t) for t in spec.equation((p, q)).predictors]}
                                                   for q in spec.equations[p].present()]}
                             for p in _pis(spec)],
        "method": spec.method,
    }


def fit_json3(design, fit, meta: dict) -> dict:
    spec = design.spec
    rp, rb = _random_pis(spec), _random_betas(spec)
    se = np.sqrt(np.diag(fit.cov_gamma))
    rse = np.sqrt(np.diag(fit.cov_gamma_robust))
    t, rt = fit.gamma / se, fit.gamma / rse
    pv, rpv = _two_sided_p(t, fit.df_gamma), _two_sided_p(rt, fit.df_gamma)
    fixed = []
    for k, g in enumerate(spec.fixed()):
        (p, q, s), (coefficient, level2, level3) = g.idx, g.names
        fixed.append({"gamma": f"γ{Symbols3.idx(p, q, s)}", "p": p, "q": q, "s": s,
                      "coefficient": coefficient, "level2_predictor": level2, "level3_predictor": level3,
                      "estimate": float(fit.gamma[k]), "se": float(se[k]), "t": float(t[k]), "df": df_value(fit.df_gamma[k]),
                      "p_value": float(pv[k]), "robust_se": float(rse[k]), "robust_t": float(rt[k]),
                      "robust_p_value": float(rpv[k])})
    names = spec.coefficient_names()
    pi_names = [names[p] for p in rp]
    beta_names = [f"{names[p]}/{spec.term_names((p,))[q]}" for p, q in rb]
    return {
        "schema": SCHEMA3, "levels": 3, "tool": "hlmcli", "version": __version__,
        "title": meta.get("title"), "data_source": meta.get("data_source"),
        "method": fit.method, "outcome": spec.outcome,
        "ids": {"level2": meta.get("id2"), "level3": meta.get("id3")},
        "n_level1": design.n, "n_level2": design.n2, "n_level3": design.n3, "n_deleted": design.n_deleted,
        "converged": bool(fit.converged), "iterations": int(fit.iterations), "boundary": bool(fit.boundary),
        "boundary_notes": list(fit.boundary), "certificate": fit.certificate.to_json(),
        "model": model_record3(spec, meta),
        "sigma2": float(fit.sigma2),
        "tau_pi": {"coefficients": pi_names, "labels": [f"r{p}" for p in rp], "matrix": fit.tau_pi.tolist(),
                   "correlation": _corr(fit.tau_pi).tolist(),
                   "reliability": [float(x) for x in fit.reliability_pi],
                   "chi2": [_chi2_json(c) for c in fit.chi2_pi]},
        "tau_beta": {"coefficients": beta_names, "labels": [f"u{Symbols3.idx(p, q)}" for p, q in rb],
                     "matrix": fit.tau_beta.tolist(), "correlation": _corr(fit.tau_beta).tolist(),
                     "reliability": [float(x) for x in fit.reliability_beta],
                     "chi2": [_chi2_json(c) for c in fit.chi2_beta]},
        "fixed_effects": fixed,
        "gamma_covariance": fit.cov_gamma.tolist(), "gamma_robust_covariance": fit.cov_gamma_robust.tolist(),
        "deviance": float(fit.deviance), "n_params": int(fit.n_params), "loglik": -float(fit.deviance) / 2,
        "lme4_formula": lme4_formula3(spec, meta.get("id2", "ID2"), meta.get("id3", "ID3"), _diagonal_at(fit) or False)[0],
        **_structure_keys(fit),
        "centering_means": design.centering_means, "data_hash": data_hash(design),
        **({"weights": meta["weights"]} if meta.get("weights") else {}),
    }


def fit_json3_text(design, fit, meta: dict) -> str:
    return dumps_json(fit_json3(design, fit, meta))


# ---------------------------------------------------------------- K ≥ 4 levels

SCHEMA_LEVELS = 4


def model_summary(spec: ModelSpec, sym: SymbolsLevels) -> list[str]:
    """HLM's "Summary of the model specified" of three or four levels: one block of equations per level,
    then the centring notes. `sym`: SymbolsLevels, or Symbols3 at three levels (the same symbols)."""
    K = spec.n_levels
    out = ["Summary of the model specified", "", "Level-1 Model", ""]
    pis = _pis(spec)
    rhs = [f"{sym.coef(1, (p,))}{_sub(2, K)}" + ("" if p == 0 else f"*{_term_k(spec.level1[p - 1], sym, K)}") for p in pis]
    out.append(f"    {hlm_name(spec.outcome)}{_sub(1, K)} = " + " + ".join(rhs) + f" + {'E' if sym.ascii else 'e'}{_sub(1, K)}")
    walk = spec.walk()
    for level in range(2, K + 1):
        out += ["", f"Level-{level} Model", ""]
        for depth, idx, eq, names in walk:
            if depth != level - 1:
                continue
            s = _sub(level + 1, K)
            parts = [f"{sym.coef(level, idx + (k,))}{s}" + ("" if k == 0 else f"*{_term_k(eq.predictors[k - 1], sym, K)}")
                     for k in eq.present()]
            if eq.random:
                parts.append(f"{sym.rand(level, idx)}{_sub(level, K)}")
            out.append(f"    {sym.coef(level - 1, idx)}{_sub(level, K)} = " + " + ".join(parts))
    notes = centering_notes(spec)
    if notes:
        out += [""] + notes
    return out


def _all_terms(spec: ModelSpec) -> list[Term]:
    return list(spec.level1) + [t for depth, idx, eq, names in spec.walk() for t in eq.predictors]


def centering_notes(spec: ModelSpec) -> list[str]:
    """One line per centred or aggregated predictor. HLM3 lists them level by level and says that a
    level-3 unit's mean is over its level-2 units; four levels list them in the order of the equations."""
    K = spec.n_levels
    out, seen = [], set()
    for t in _terms3(spec) if K == 3 else _all_terms(spec):
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
            over = " (over its level-2 units)" if K == 3 and t.level == 2 else ""
            out.append(f"{name} has been centered around its level-{t.level + 1} unit's mean{over}.")
        elif t.centering is Centering.GRAND:
            out.append(f"{name} has been centered around the grand mean.")
    return out


def lme4_formula(spec: ModelSpec, ids, diagonal=False) -> str:
    """The same model in lme4: each fixed effect the product of its path's predictors, and one
    (… | id_K:…:id_ℓ) term per level with the random columns of that level (one per column where
    τ is diagonal: `diagonal` True, or one flag per level 2..K)."""
    K = spec.n_levels
    diag = (diagonal,) * (K - 1) if isinstance(diagonal, bool) else tuple(diagonal) + (False,) * (K - 1)

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
        parts.append(_random_terms(cols, group, diag[level - 2]))
    return " + ".join(parts)


def lme4_notes(spec: ModelSpec, ids) -> list[str]:
    """How the formula's derived columns are made from the data (ids: the unit ids of levels 2..K)."""
    notes, made = [], set()
    for t in _all_terms(spec):
        name = _r_name(t)
        if name == t.name or name in made:
            continue
        made.add(name)
        src = t.name
        if t.mean_of:
            below = "records" if t.mean_of == 1 else f"level-{t.mean_of} units"
            src = f"(mean of {t.name} over the {below} of each {ids[t.level - 2]})"
            if t.centering is Centering.NONE:
                notes.append(f"{name} = {src}")
                continue
        if t.centering is Centering.GROUP:
            what = "records" if t.level == 1 else f"level-{t.level} units"
            notes.append(f"{name} = {src} - (mean of {src} over the {what} of each {ids[t.level - 1]})")
        elif t.centering is Centering.GRAND:
            notes.append(f"{name} = {src} - (mean of {src} over level-{t.level} units)")
    if notes:
        notes.append("(means over the records and units used in the analysis)")
    return notes


def _coef_label(names, idx, sym: SymbolsLevels, depth: int, letter=None) -> str:
    tag = sym.rand(depth + 1, idx) if letter else sym.coef(depth, idx)
    text = "/".join(hlm_name(n) for n in names)
    return f"{text}, {tag}" if all(n.startswith("INTRCPT") for n in names) else f"{text} slope, {tag}"


def certificate_text(fit, sym: SymbolsLevels) -> list[str]:
    return _certificate_lines(fit, sym, [sym.tau(level) for level in range(2, len(fit.certificate.qs) + 2)])


def fit_text(design, fit, meta: dict, sym: SymbolsLevels) -> str:
    spec = design.spec
    K = spec.n_levels
    out = _run_header(fit, meta, K, [design.n] + [design.J(level) for level in range(2, K + 1)],
                      spec.options.max_iterations)
    out += _run_middle(design, fit, meta, sym, model_summary(spec, sym), certificate_text(fit, sym))
    w = out.append

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
        out += text_table([f"Random level-{level - 1} coefficient", "Reliability estimate"], rows, [34, 22])
    w("")
    w(f"The value of the log-likelihood function at iteration {fit.iterations} = {hlm_e(-fit.deviance / 2)}")
    fixed = spec.fixed()
    for robust in (False, True):
        w("")
        w("Final estimation of fixed effects")
        if robust:
            w(f"(with robust standard errors, clustered on level-{K} units)")
        out += df_note(fit)
        se = np.sqrt(np.diag(fit.cov_gamma_robust if robust else fit.cov_gamma))
        t = fit.gamma / se
        pv = _two_sided_p(t, fit.df_gamma)
        rows = []
        for k, f in enumerate(fixed):
            prev = fixed[k - 1].idx if k else ()
            for depth in range(1, K):
                if f.idx[:depth] != prev[:depth]:
                    rows.append([f"{'   ' * (depth - 1)}For {hlm_name(f.names[depth - 1])}, {sym.coef(depth, f.idx[:depth])}"])
            mark = "*" if k in meta.get("tied", ()) else ""  # --constrain: the note follows the tables
            rows.append([f"{'   ' * (K - 1)}{hlm_name(f.names[-1])}, {sym.coef(K, f.idx)}{mark}", f"{fit.gamma[k]:.6f}",
                         f"{se[k]:.6f}", f"{t[k]:.3f}", df_text(fit.df_gamma[k]), hlm_p(pv[k])])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
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
                         df_text(c["df"]), f"{c['chi2']:.5f}", hlm_p(c["p"])])
        if level == 2:
            rows.append([f"level-1, {'E' if sym.ascii else 'e'}", f"{math.sqrt(fit.sigma2):.5f}", f"{fit.sigma2:.5f}",
                         "", "", ""])
        out += text_table(["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"],
                      rows, [34, 18, 18, 6, 12, 8])
        n_units = {c.get("n_units") for c in fit.chi2[level - 2]}
        if n_units and min(n_units) < design.J(level):
            w(f"Note: the {sym.chi2} statistics are based on {min(n_units)} of {design.J(level)} level-{level} units "
              "with sufficient data.")
    w("")
    w("Statistics for the current model")
    w(f" Deviance                       = {fit.deviance:.6f}")
    w(f" Number of estimated parameters = {fit.n_params}")
    if meta.get("weights"):
        w(" (with sampling weights these are pseudo-likelihood quantities: not for likelihood-ratio tests)")
    w("")
    w("The same model in R (lme4)")
    w(f" {lme4_formula(spec, meta['ids'], _diagonal_at(fit) or False)}")
    for note in lme4_notes(spec, meta["ids"]):
        w(f"   {note}")
    w(f"   fit with lmer(..., REML = {'TRUE' if spec.method == 'REML' else 'FALSE'})")
    if meta.get("weights"):
        w("   lmer has no sampling weights (its weights= are precision weights); the pseudo-likelihood fit in R "
          "is WeMix::mix")
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


# ---------------------------------------------------------------- JSON (schema 4)

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
                      "df": df_value(fit.df_gamma[k]), "p_value": float(pv[k]), "robust_se": float(rse[k]),
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
        "schema": SCHEMA_LEVELS, "levels": K, "tool": "hlmcli", "version": __version__,
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
        "lme4_formula": lme4_formula(spec, meta["ids"], _diagonal_at(fit) or False),
        **_structure_keys(fit),
        "centering_means": design.centering_means, "data_hash": data_hash(design),
        **({"weights": meta["weights"]} if meta.get("weights") else {}),
    }


def fit_json_text(design, fit, meta: dict) -> str:
    return dumps_json(fit_json(design, fit, meta))


# the three-level HGLM report (report_hglm_levels.py) shares these
pi_label, beta_label, random_pis, random_betas, correlation, two_sided_p = (
    _pi_label, _beta_label, _random_pis, _random_betas, _corr, _two_sided_p)
