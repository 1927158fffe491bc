"""The HGLM stages after the design: data checks, the fit (hglm.py), and HLM 7's HGLM tables and JSON.

Kept apart from pipeline.py and report.py so the linear engine's code paths are untouched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from scipy import special

from ..data import design as design_stage
from . import inference
from ..data.data_checks import check_hglm_outcome, check_quadrature, level1_option_column
from ..errors import DataError, ModelError
from ..engine.family import family as get_family
from ..engine.hglm import GLMData, MLResult, PQLResult, agq_fit, ml_fit, ml_start, pql, working_model
from ..version import __version__

Z975 = float(special.ndtri(0.975))


@dataclass
class HGLMAnalysis:
    spec: object
    design: design_stage.Design
    data: GLMData
    estimation: str
    nodes: int
    pql: PQLResult | None
    ml: MLResult | None
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray
    tau: np.ndarray
    sigma2: float | None
    df: np.ndarray
    variance: inference.VarianceTests
    converged: bool
    b: np.ndarray
    b_var: np.ndarray
    notes: list[str] = field(default_factory=list)  # boundary notes (for --strict)
    extras: dict = field(default_factory=dict)  # hypothesis_tests, deviance_test
    warnings: list[str] = field(default_factory=list)  # --separation fit: the coefficients held at a bound

    # What `Results` reads of an HGLM fit (a linear analysis is read by report.py and residual_files.py).
    def to_json(self, meta: dict) -> dict:
        return hglm_json(self, meta)

    def to_text(self, meta: dict, sym) -> str:
        return hglm_text(self, meta, sym)

    def level1_table(self):
        return level1_table(self)

    def level2_table(self):
        return level2_table(self)


def check_options(opts) -> None:
    fam = opts.family
    if fam == "binomial" and not opts.trials:
        raise ModelError("--family binomial needs --trials VAR, the number of trials of each record "
                         "(for 0/1 outcomes use --family bernoulli)")
    if opts.trials and fam != "binomial":
        raise ModelError(f"--trials is for --family binomial (this model is {fam})")
    if opts.exposure and fam != "poisson":
        raise ModelError(f"--exposure is for --family poisson (this model is {fam})")
    if opts.overdispersion and fam == "bernoulli":
        raise ModelError("--overdispersion cannot be estimated for a 0/1 outcome: the Bernoulli variance is fixed by its mean")
    if opts.overdispersion and opts.estimation != "pql":
        raise ModelError("--overdispersion is a quasi-likelihood scale: use it with --estimation pql")
    if opts.estimation == "agq" and opts.quadrature_points is not None and opts.quadrature_points < 0:
        raise ModelError("--quadrature-points must be at least 1")
    if opts.estimation != "agq" and opts.quadrature_points not in (None, 0, 1):
        raise ModelError("--quadrature-points is for --estimation agq")


def hglm_extras(a: "HGLMAnalysis", hypotheses=(), prior_deviance=None, prior_params=None) -> dict:
    """Wald tests of linear hypotheses on γ (model-based and robust covariance) and the likelihood-ratio
    test against a prior model's deviance (Laplace and AGQ only), as the linear engine's extras."""
    from .pipeline import tests_of_gamma

    ml = a.ml
    return tests_of_gamma(hypotheses, a.gamma, a.cov, a.robust_cov, prior_deviance, prior_params,
                          None if ml is None else ml.deviance, None if ml is None else ml.n_params)


def boundary_notes(a: "HGLMAnalysis") -> list[str]:
    """Why a fit is on the boundary of the parameter space (τ singular), for --strict."""
    from ..engine.certificate import rank_tolerance

    if a.ml is not None:
        rank = a.ml.certificate.rank
    else:
        w = np.linalg.eigvalsh(a.tau)
        rank = int(np.sum(w > rank_tolerance(w)))
    q = a.tau.shape[0]
    return [] if rank == q else [f"boundary fit: τ has rank {rank} of {q} (a variance or correlation at its limit)"]


def _separation(y, n, columns: dict, rows, file_name) -> None:
    """A predictor that perfectly separates the outcome: every record with a success lies above (or
    below) every record with a failure. Then the ML estimate is infinite."""
    succ = y > 0
    fail = y < (1.0 if n is None else n)
    if not succ.any() or not fail.any():
        kind = "successes" if not fail.any() else "failures"
        raise DataError(f"{file_name}, column {columns['__outcome__']}, row {int(rows[0]) + 1}: every record is one of "
                        f"{kind}; the intercept is not estimable (perfect separation)")
    for name, x in columns.items():
        if name == "__outcome__":
            continue
        if x.min() == x.max():
            continue
        lo_s, hi_s = x[succ].min(), x[succ].max()
        lo_f, hi_f = x[fail].min(), x[fail].max()
        if hi_f < lo_s or hi_s < lo_f:
            k = int(np.flatnonzero(succ)[0])
            raise DataError(f"{file_name}, column {name}, row {int(rows[k]) + 1}: {name} perfectly separates the outcome "
                            f"(every success is {'above' if hi_f < lo_s else 'below'} every failure), so its coefficient "
                            "has no finite estimate; remove it or combine categories")


def _fixed_column(L, B, unit, k):
    """Column k of the fixed design X per record (X_j = L_jB_j)."""
    return np.einsum("ik,ik->i", L, B[unit, :, k])


# Laplace and AGQ search and take their standard errors in the raw γ (PQL's inner fits standardise
# the columns), so the Hessian in (θ, γ) has a condition number of about (largest / smallest column
# RMS)². Past 1e8 that is 1e16, beyond double precision: the Hessian is no longer positive definite
# as computed and the standard errors would be the square roots of negative numbers.
SCALE_RATIO_LIMIT = 1e8


def check_column_scales(design, B, l1file: str, l2file: str) -> None:
    """Refuse, in one line naming the column, a fixed-effect column whose root mean square is more than
    SCALE_RATIO_LIMIT times that of another (zero columns aside)."""
    unit = np.repeat(np.arange(design.n_units), design.sizes)
    rms = np.array([math.sqrt(float(np.mean(_fixed_column(design.L, B, unit, k) ** 2))) for k in range(B.shape[2])])
    ok = np.isfinite(rms) & (rms > 0)
    if ok.sum() < 2:
        return
    hi, lo = int(np.argmax(np.where(ok, rms, -np.inf))), int(np.argmin(np.where(ok, rms, np.inf)))
    if rms[hi] <= SCALE_RATIO_LIMIT * rms[lo]:
        return
    # name the column farther (in orders of magnitude) from the typical scale, e.g. the 1e30 one
    mid = float(np.median(rms[ok]))
    odd, other = (hi, lo) if math.log(rms[hi] / mid) >= math.log(mid / rms[lo]) else (lo, hi)
    f = design.fixed[odd]
    col = f.coefficient if f.s == 0 else f.predictor
    where = l1file if f.s == 0 else l2file
    if f.s and f.q:
        col = f"{f.predictor} (times {f.coefficient} of {l1file})"
    ratio = rms[hi] / rms[lo]
    raise DataError(f"{where}, column {col}: its values (root mean square {rms[odd]:.1E}) differ in scale by a factor "
                    f"{ratio:.1E} from {_effect_label(design, other)}, beyond what a {design.spec.options.family} "
                    f"Laplace or AGQ fit can resolve in double precision (limit {SCALE_RATIO_LIMIT:.0E}); rescale it "
                    "(e.g. divide by a power of ten), or use --estimation pql")


def _effect_label(design, k) -> str:
    f = design.fixed[k]
    return f"{f.label} ({f.predictor} for {f.coefficient})"


def _unit_level(design, B, k) -> bool:
    """Whether column k of X is a level-2 predictor of the intercept (constant within every unit)."""
    f = design.fixed[k]
    return f.q == 0 and f.s > 0


def _listed(items, n=8) -> str:
    items = [str(v) for v in items]
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_separation(design, B, trials, link, l1file, l2file, rows, mode):
    """Separation by one fixed-effect column (separation.py), found before fitting. Complete separation
    is refused; quasi-complete separation too unless mode is "fit", when the separated coefficients
    are returned to be held at their bounds."""
    from .separation import find_combination, find_separation

    if design.n_fixed < 2:
        return []
    unit = np.repeat(np.arange(design.n_units), design.sizes)
    X = np.column_stack([_fixed_column(design.L, B, unit, k) for k in range(design.n_fixed)])
    found = find_separation(X, design.y, trials, link)
    if not found:
        combo = find_combination(X, design.y, trials, link)
        if combo is not None:
            beta, moved = combo
            big = np.flatnonzero(np.abs(beta) * np.abs(X).max(axis=0) > 1e-6 * np.max(np.abs(beta) * np.abs(X).max(axis=0)))
            names = [_effect_label(design, k) for k in big if k > 0]
            raise DataError(f"{l1file}: the fixed effects {', '.join(names)} together separate the outcome (a "
                            f"combination of them puts the outcome at its limit on rows "
                            f"{_listed(int(rows[i]) + 1 for i in moved)}), so their coefficients have no finite "
                            "estimate; remove one of them or combine categories (--separation fit holds one "
                            "separating predictor, not a combination)")
    for s in found:
        if s.complete or mode != "fit":
            f = design.fixed[s.column]
            name = f.coefficient if f.s == 0 else (f.predictor if f.q == 0 else f"{f.coefficient}*{f.predictor}")
            if link == "logit":
                x = X[:, s.column]
                sides = [(x > s.threshold, "above"), (x < s.threshold, "below")]
                kinds = ["success", "failure"] if s.sign > 0 else ["failure", "success"]
                what = " and ".join(f"every record with {name} {word} {s.threshold:g} is a {kind}"
                                    for (mask, word), kind in zip(sides, kinds) if mask.any())
            else:
                what = f"every record with {name} {'below' if s.sign > 0 else 'above'} {s.threshold:g} has a count of 0"
            if _unit_level(design, B, s.column):
                units = sorted({design.unit_ids[j] for j in unit[s.records]}, key=lambda v: (len(str(v)), str(v)))
                where = f"units {_listed(units)}"
            else:
                where = f"rows {_listed(int(rows[i]) + 1 for i in s.records)}"
            kind = "completely" if s.complete else "quasi-completely"
            todo = ("remove it or combine categories" if s.complete else
                    "remove it or combine categories, or pass --separation fit to fit with the coefficient held at a "
                    "bound (as glmer's huge estimate)")
            raise DataError(f"{l2file if _unit_level(design, B, s.column) else l1file}, column {name}: "
                            f"the fixed effect {_effect_label(design, s.column)} separates the outcome {kind} "
                            f"({what}: {where}), so its coefficient has no finite estimate; {todo}")
    return found


def separation_warning(design, s) -> str:
    from .separation import BOUND_ETA

    return (f"--separation fit: the fixed effect {_effect_label(design, s.column)} separates the outcome; its "
            f"coefficient (±∞ at the optimum) is held at {s.bound:.6g}, which moves the linear predictor of the "
            f"separated records by up to {BOUND_ETA:g}; it has no standard error, and the other estimates are those "
            "of the limit")


def _reinsert(held, gamma, cov, rcov):
    """γ and its covariances with the held coefficients put back at their places (no variance: NaN)."""
    cols = sorted(s.column for s in held)
    p = gamma.size + len(cols)
    keep = np.setdiff1d(np.arange(p), cols)
    g = np.empty(p)
    g[keep] = gamma
    for s in held:
        g[s.column] = s.bound
    out = [g]
    for c in (cov, rcov):
        if c is None:
            out.append(None)
            continue
        m = np.full((p, p), np.nan)
        m[np.ix_(keep, keep)] = c
        out.append(m)
    return tuple(out)


def analyse_hglm(spec, archive, level1_text: str | None = None) -> HGLMAnalysis:
    opts = spec.options
    check_options(opts)
    if level1_text and re.search(r"\+\s*[rR](ij)?\s*$", level1_text.strip()):
        raise ModelError(f"'{level1_text.strip()}': a {opts.family} level-1 model has no residual r (its variance is "
                         "fixed by the mean); write the linear predictor alone, e.g. Y = b0 + b1*X")
    fam = get_family(opts.family)
    design = design_stage.make_design(spec, archive)
    if not design.random.any():
        raise ModelError("an HGLM needs at least one random effect (add u0 to the equation for b0)")
    from .identifiability import check_units

    check_units(design.n_units, int(design.random.sum()))
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    trials = level1_option_column(archive, design, opts.trials, "--trials") if opts.trials else None
    exposure = level1_option_column(archive, design, opts.exposure, "--exposure") if opts.exposure else None
    for name, col in (("trials", trials), ("exposure", exposure)):
        if col is not None and np.isnan(col).any():
            k = int(np.flatnonzero(np.isnan(col))[0])
            raise DataError(f"{l1file}, column {getattr(opts, name)}, row {int(rows[k]) + 1}: missing value")
    where = {"file": l1file, "outcome": spec.outcome, "trials": opts.trials, "exposure": opts.exposure, "rows": rows}
    fam.check(design.y, trials, exposure, where)
    check_hglm_outcome(fam, design, trials, where)
    if fam.link == "logit":
        cols = {"__outcome__": spec.outcome}
        cols.update({t.name: design.L[:, k] for k, t in enumerate(spec.level1, start=1)})
        _separation(design.y, trials, cols, rows, l1file)
    B = design.block_design()
    offset = np.log(exposure) if exposure is not None else None
    held = check_separation(design, B, trials, fam.link, l1file, files.get("level-2", "the level-2 file"), rows,
                            opts.separation)
    if held:
        # --separation fit: each separated coefficient held at its bound, as an offset
        unit = np.repeat(np.arange(design.n_units), design.sizes)
        extra = sum(s.bound * _fixed_column(design.L, B, unit, s.column) for s in held)
        offset = extra if offset is None else offset + extra
        B = np.delete(B, [s.column for s in held], axis=2)
    data = GLMData(fam, design.L, B, design.offsets, np.flatnonzero(design.random), design.y, trials, offset)
    reml = spec.method == "REML"
    est = opts.estimation
    if est != "pql":
        check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    diagonal = opts.tau == "diagonal"
    p_res = m_res = None
    if est == "pql":
        p_res = pql(data, reml=reml, overdispersion=opts.overdispersion, macroit=opts.macroit, microit=opts.microit,
                    stopmacro=opts.stopmacro, stopmicro=opts.stopmicro, diagonal=diagonal)
        gamma, cov, rcov, tau = p_res.gamma, p_res.cov, p_res.robust_cov, p_res.tau
        sigma2 = p_res.sigma2 if opts.overdispersion else None
        eta, converged, b, bvar = p_res.eta, p_res.converged, p_res.b, p_res.b_var
    else:
        if est == "agq" and data.q > 3:
            raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use --estimation laplace")
        if est == "agq":  # quadrature_points 0: K chosen adaptively
            check_quadrature(opts.quadrature_points or None, data.q)
        start = ml_start(data, opts.macroit, diagonal)
        if est == "agq":
            m_res = agq_fit(data, opts.quadrature_points or None, start, diagonal=diagonal)
        else:
            m_res = ml_fit(data, 1, start, diagonal=diagonal)
        gamma, cov, tau, eta = m_res.gamma, m_res.cov, m_res.tau, m_res.eta
        sigma2, converged, b, bvar = None, m_res.converged, m_res.b, m_res.b_var
    stats, unit = working_model(data, eta)
    if m_res is not None:
        rcov = m_res.robust_cov  # the cluster sandwich of the exact scores (hglm._covariances)
    warnings = []
    if held:
        # back to the model as written: the held coefficients at their bounds, with no standard error
        gamma, cov, rcov = _reinsert(held, gamma, cov, rcov)
        if p_res is not None and p_res.pa_gamma is not None:
            p_res.pa_gamma, p_res.pa_cov, p_res.pa_robust_cov = _reinsert(held, p_res.pa_gamma, p_res.pa_cov,
                                                                          p_res.pa_robust_cov)
        data = GLMData(fam, design.L, design.block_design(), design.offsets, np.flatnonzero(design.random), design.y,
                       trials, np.log(exposure) if exposure is not None else None)
        stats, unit = working_model(data, eta)
        warnings = [separation_warning(design, s) for s in held]
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=sigma2 if sigma2 is not None else 1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, tau, stats)
    return HGLMAnalysis(spec, design, data, est, m_res.nodes if m_res is not None else 0,
                        p_res, m_res, gamma, cov, rcov, tau, sigma2, inference.hlm_fixed_df(design), variance,
                        converged, b, bvar, warnings=warnings)


# ====================================================================== model printing

def link_lines(spec, sym) -> list[str]:
    """HLM 7's level-1 block for the family (hglm-hlm3-weights.md §1)."""
    b, y = sym.beta, spec.outcome.upper()[:8]
    phi = "phi" if sym.ascii else "φ"
    lam = "lambda" if sym.ascii else "λ"
    eta = "eta" if sym.ascii else "η"
    fam = spec.options.family
    if fam == "ordinal":
        return ordinal_link_lines(spec, sym)
    if fam == "bernoulli":
        top = [f"    Prob({y}ij=1|{b}j) = {phi}ij", f"    log[{phi}ij/(1 - {phi}ij)] = {eta}ij"]
    elif fam == "binomial":
        top = [f"    E({y}ij|{b}j) = mij*{phi}ij", f"    Var({y}ij|{b}j) = mij*{phi}ij(1 - {phi}ij)",
               f"    log[{phi}ij/(1 - {phi}ij)] = {eta}ij", f"    (mij = {spec.options.trials.upper()[:8]}, the number of trials)"]
    else:
        m = "mij*" if spec.options.exposure else ""
        top = [f"    E({y}ij|{b}j) = {m}{lam}ij", f"    log[{lam}ij] = {eta}ij"]
        if spec.options.exposure:
            top.append(f"    (mij = {spec.options.exposure.upper()[:8]}, the exposure; log mij is an offset)")
    return top


def ordinal_link_lines(spec, sym) -> list[str]:
    """HLM 7's ordinal level-1 block (R&B 2002 §10.5), with the link's function of the cumulative probability."""
    b, y = sym.beta, spec.outcome.upper()[:8]
    phi = "phi'" if sym.ascii else "φ'"
    eta = "eta'" if sym.ascii else "η'"
    d = "d" if sym.ascii else "δ"
    link = spec.options.link or "logit"
    f = {"logit": f"log[{phi}mij/(1 - {phi}mij)]", "probit": f"Phi^-1[{phi}mij]" if sym.ascii else f"Φ⁻¹[{phi}mij]",
         "cloglog": f"log[-log(1 - {phi}mij)]"}[link]
    return [f"    Prob[{y}ij <= m|{b}j] = {phi}mij", f"    {f} = {eta}mij",
            f"    {eta}mij = {'eta' if sym.ascii else 'η'}ij + {d}(2) + ... + {d}(m)  ({d}(1) = 0: {'gamma00' if sym.ascii else 'γ00'} "
            "is the first threshold)"]


def hglm_model_summary(spec, sym) -> list[str]:
    from ..report.report import hlm_name, model_summary

    lines = model_summary(spec, sym)
    out = []
    head = f"    {hlm_name(spec.outcome)}ij = "
    eta = "eta" if sym.ascii else "η"
    in_l1 = False
    for line in lines:
        if line == "Level-1 Model":
            in_l1 = True
        elif line == "Level-2 Model":
            in_l1 = False
        if in_l1 and line.startswith(head):
            out += link_lines(spec, sym)
            rhs = line[len(head):]
            out.append(f"    {eta}ij = " + re.sub(r"\s*\+\s*rij$", "", rhs))
            continue
        if line.startswith("     + ") and line.rstrip().endswith("rij"):
            line = re.sub(r"\s*\+\s*rij$", "", line)
            if line.strip() == "+":
                continue
        if line.startswith(head):
            line = f"    {eta}ij = " + line[len(head):]
        out.append(line)
    return out


def glmer_call(spec, id_name: str, nodes: int | None = None) -> str:
    from ..report.report import lme4_formula

    opts = spec.options
    if opts.family == "ordinal":
        return clmm_call(spec, id_name, nodes)
    formula, _ = lme4_formula(spec, id_name)
    lhs, rhs = formula.split(" ~ ", 1)
    if opts.family == "binomial":
        lhs = f"cbind({lhs}, {opts.trials} - {lhs})"
    if opts.exposure:
        rhs = rhs.replace(" + (", f" + offset(log({opts.exposure})) + (", 1)
    nagq = {"pql": "", "laplace": ", nAGQ = 1", "agq": f", nAGQ = {nodes or opts.quadrature_points or 25}"}[opts.estimation]
    fam = "binomial" if opts.family in ("bernoulli", "binomial") else "poisson"
    return f"glmer({lhs} ~ {rhs}, family = {fam}{nagq})"


def clmm_call(spec, id_name: str, nodes: int | None = None) -> str:
    """The same model in R: ordinal::clmm, whose θ and β are γ00 + δ(2) + ... and −γ (module docstring)."""
    from ..report.report import r_terms

    fixed, rand = r_terms(spec)
    opts = spec.options
    rhs = " + ".join([t for t in fixed if t != "1"] or ["1"])
    random = f"(1 | {id_name})" if rand == ["1"] else f"({' + '.join(rand)} | {id_name})"
    nagq = "" if opts.estimation == "laplace" else f", nAGQ = {nodes or opts.quadrature_points or 10}"
    link = opts.link or "logit"
    # clmm's random-effect fits take "loglog" for the F(x) = 1 − exp(−exp(x)) that clm calls cloglog
    # (tests/reference_scripts/ordinal_clmm.R shows it by numerical integration)
    link_arg = "" if link == "logit" else f', link = "{"loglog" if link == "cloglog" else link}"'
    return f"ordinal::clmm(factor({spec.outcome}, ordered = TRUE) ~ {rhs} + {random}, data = d{link_arg}{nagq})"


def glmmpql_call(spec, id_name: str) -> tuple[str, str | None]:
    """PQL's counterpart in R, MASS::glmmPQL (glmer is Laplace or AGQ), and a note when it is not this fit.

    glmmPQL runs nlme::lme on the working variate with method "ML" and a free residual scale, so it is
    full PQL with the level-1 scale estimated: hlmcli's --ml --overdispersion."""
    from ..report.report import r_terms

    fixed, rand = r_terms(spec)
    opts = spec.options
    lhs = spec.outcome
    if opts.family == "binomial":
        lhs = f"cbind({lhs}, {opts.trials} - {lhs})"
    rhs = " + ".join(fixed + ([f"offset(log({opts.exposure}))"] if opts.exposure else []))
    if not rand:
        random = f"~ 1 | {id_name}"  # not reached: an HGLM has a random effect
    elif opts.tau == "diagonal":
        random = f"list({id_name} = pdDiag(~ {' + '.join(rand if '1' in rand else ['0'] + rand)}))"
    else:
        random = f"~ {' + '.join(rand if '1' in rand else ['0'] + rand)} | {id_name}"
    fam = "binomial" if opts.family in ("bernoulli", "binomial") else "poisson"
    call = f"MASS::glmmPQL({lhs} ~ {rhs}, random = {random}, family = {fam}, data = d)"
    give = (["--ml"] if spec.method == "REML" else []) + \
        (["--overdispersion"] if not opts.overdispersion and opts.family != "bernoulli" else [])
    note = None
    if give:
        note = f"glmmPQL is full PQL with a free level-1 scale: give {' '.join(give)} for its model"
    if opts.family == "bernoulli":
        note = (note + "; " if note else "") + "it estimates a level-1 scale for a 0/1 outcome too, which hlmcli holds at 1"
    return call, note


def r_call_lines(spec, id_name: str, nodes: int | None = None) -> list[str]:
    """The "same model in R" block: glmmPQL for PQL, glmer for Laplace and AGQ."""
    if spec.options.estimation == "pql":
        call, note = glmmpql_call(spec, id_name)
        return ["The same model in R (MASS)", f" {call}"] + ([f"   {note}"] if note else [])
    package = "ordinal" if spec.options.family == "ordinal" else "lme4"
    return [f"The same model in R ({package})", f" {glmer_call(spec, id_name, nodes)}"]


def pql_status(p: PQLResult) -> str:
    """The PQL claim, printed only when the fixed-point check passed."""
    if p.converged and p.check is not None:
        return "PQL converged to a fixed point (checked): " + p.check.describe()
    return "PQL is NOT at a checked fixed point: " + "; ".join(p.failed)


def estimation_text(opts, nodes: int | None = None) -> str:
    if opts.estimation == "pql":
        kind = "restricted" if opts.method == "REML" else "full"
        od = ", level-1 scale estimated (over-dispersion)" if opts.overdispersion else ", level-1 scale fixed at 1"
        return f"penalized quasi-likelihood ({kind} PQL{od})"
    if opts.estimation == "laplace":
        return "full maximum likelihood, Laplace approximation"
    if not opts.quadrature_points:
        if nodes is None:
            return ("full maximum likelihood, adaptive Gauss-Hermite quadrature, points per random effect chosen "
                    "adaptively (from 7, until the deviance at the optimum changes by at most 1e-6 relative)")
        return (f"full maximum likelihood, adaptive Gauss-Hermite quadrature with {nodes} points per random effect "
                "(chosen adaptively)")
    return f"full maximum likelihood, adaptive Gauss-Hermite quadrature with {opts.quadrature_points} points per random effect"


# ====================================================================== tables

def fixed_json(a: HGLMAnalysis, gamma, cov, rcov, df) -> list[dict]:
    fam = a.data.family
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):  # a negative variance of an uncertified fit is NaN
        se = np.sqrt(np.diag(cov))
        rse = np.sqrt(np.diag(rcov)) if rcov is not None else np.full_like(se, np.nan)
        t, rt = gamma / se, gamma / rse
    p, rp = inference.two_sided_p(t, df), inference.two_sided_p(rt, df)
    for k, f in enumerate(a.design.fixed):
        term = a.spec.level2[f.q].predictors[f.s - 1] if f.s else None
        tq = special.stdtrit(df[k], 0.975)
        out.append({
            "coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
            "centering": term.centering if term else None,
            "estimate": float(gamma[k]), "se": float(se[k]), "t": float(t[k]), "df": float(df[k]), "p": float(p[k]),
            "robust_se": float(rse[k]), "robust_t": float(rt[k]), "robust_p": float(rp[k]),
            fam.ratio_name: float(np.exp(gamma[k])),
            "ci_low": float(np.exp(gamma[k] - tq * se[k])), "ci_high": float(np.exp(gamma[k] + tq * se[k])),
            "robust_ci_low": float(np.exp(gamma[k] - tq * rse[k])), "robust_ci_high": float(np.exp(gamma[k] + tq * rse[k])),
        })
    return out


def information_criteria(a: HGLMAnalysis) -> tuple[float, float]:
    """AIC and BIC of a Laplace or AGQ fit, as lme4's AIC()/BIC() of glmer: its deviance (-2 log-likelihood)
    plus 2k or k·log N, k = γs + τ parameters, N the level-1 records. PQL has no likelihood, so none."""
    return inference.information_criteria(a.ml.deviance, a.ml.n_params, 0, a.design.n)


def hglm_json(a: HGLMAnalysis, meta: dict) -> dict:
    from ..report.report import data_hash, model_record

    d, opts = a.design, a.spec.options
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = a.tau / np.outer(sd, sd)
    vt = a.variance
    criteria = information_criteria(a) if a.ml else None
    comps = [{"effect": names[q], "label": f"u{q}", "sd": float(sd[k]), "variance": float(a.tau[k, k]),
              "df": float(vt.df[k]), "chi2": float(vt.chi2[k]), "p": float(vt.p[k])} for k, q in enumerate(rand_q)]
    if a.sigma2 is not None:
        comps.append({"effect": "level-1", "label": "r", "sd": math.sqrt(a.sigma2), "variance": a.sigma2,
                      "df": None, "chi2": None, "p": None})
    out = {
        "schema": 2, "tool": "hlmcli", "version": __version__, "title": meta.get("title"),
        "data_source": meta.get("data_source"), "outcome": a.spec.outcome,
        "family": opts.family, "link": a.data.family.link, "estimation": a.estimation,
        "quadrature_points": a.nodes if a.estimation == "agq" else (1 if a.estimation == "laplace" else None),
        "method": a.spec.method if a.estimation == "pql" else "ML",
        "trials": opts.trials, "exposure": opts.exposure, "overdispersion": opts.overdispersion,
        "n_level1": d.n, "n_level2": d.n_units, "n_deleted": d.n_deleted, "units_deleted": d.units_deleted,
        "converged": a.converged, "iterations": a.pql.macro_iterations if a.pql is not None else a.ml.iterations,
        "df_method": "hlm", "model": model_record(a.spec, meta), "data_hash": data_hash(d),
        "random_coefficients": [names[q] for q in rand_q],
        "tau": a.tau.tolist(), "se_tau": None, "se_sigma2": None, "tau_correlation": corr.tolist(),
        "units_with_sufficient_data": vt.n_sufficient,
        "reliability": {names[q]: float(vt.reliability[k]) for k, q in enumerate(rand_q)},
        "fixed_effects": fixed_json(a, a.gamma, a.cov, a.robust_cov, a.df),
        "gamma_covariance": a.cov.tolist(), "gamma_robust_covariance": a.robust_cov.tolist(),
        "variance_components": comps,
        "sigma2": a.sigma2,
        "deviance": a.ml.deviance if a.ml else None,
        "deviance_note": None if a.ml else "PQL maximises a quasi-likelihood: there is no deviance to compare models with",
        "n_params": a.ml.n_params if a.ml else None,
        "loglik": -a.ml.deviance / 2 if a.ml else None,
        "aic": criteria[0] if a.ml else None, "bic": criteria[1] if a.ml else None,
        "start": "pql" if a.ml else None,
        "loglik_constant": a.data.const,
        "lme4_formula": glmer_call(a.spec, meta.get("id_name", "ID"), a.nodes or None),
        "r_call": (glmmpql_call(a.spec, meta.get("id_name", "ID"))[0] if a.estimation == "pql"
                   else glmer_call(a.spec, meta.get("id_name", "ID"), a.nodes or None)),
        "centering_means": d.centering_means,
    }
    if a.pql is not None:
        out["macro_iterations"] = a.pql.macro_iterations
        out["micro_iterations"] = a.pql.micro_iterations
        out["fixed_point"] = a.pql.check.to_json() if a.pql.check is not None else {"checked": False, "passed": False,
                                                                                   "failed": list(a.pql.failed)}
        if a.pql.pa_gamma is not None:
            out["population_average"] = {
                "definition": "GEE with the linearised marginal working covariance σ²W⁻¹ + ZτZ', τ and σ² held at the "
                              "unit-specific PQL estimates (Raudenbush & Bryk 2002, ch. 10)",
                "iterations": a.pql.pa_iterations,
                "fixed_effects": fixed_json(a, a.pql.pa_gamma, a.pql.pa_cov, a.pql.pa_robust_cov, a.df)}
        elif a.pql.pa_failed:
            out["population_average"] = {"error": a.pql.pa_failed}
    out["certificate"] = a.ml.certificate.to_json() if a.ml is not None else None
    if a.ml is not None:
        if a.ml.quadrature is not None:
            out["quadrature_check"] = a.ml.quadrature.to_json()
        out["starts"] = a.ml.starts  # searches run (ml_fit): the lowest optimum is reported
    out["tau_structure"] = "diagonal" if opts.tau == "diagonal" else "unstructured"
    out["boundary"] = bool(a.notes)  # as the linear engine's JSON: a flag and its notes
    out["boundary_notes"] = list(a.notes)
    out["separation"] = {"mode": opts.separation, "held": list(a.warnings)}
    for key in ("hypothesis_tests", "deviance_test"):
        if key in a.extras:
            out[key] = a.extras[key]
    from ..report.terms import with_terms

    return with_terms(out)


def hglm_text(a: HGLMAnalysis, meta: dict, sym) -> str:
    """HLM 7's printed HGLM results.

    Layout sources. Verified against real HLM 7 output (HLM2.EXE 7.01, linear model,
    http://www.edmeasurement.net/8268/mr_uncond.html and .../mr-cond3.html): the "Final Results -
    Iteration N" header, τ and τ (as correlations) with "INTRCPT1,β0" labels, the reliability table,
    "Final estimation of fixed effects" with "For INTRCPT1, β0" group rows and the columns Fixed
    Effect / Coefficient / Standard error / t-ratio / Approx. d.f. / p-value, its "(with robust
    standard errors)" twin, and "Final estimation of variance components" (Random Effect / Standard
    Deviation / Variance Component / d.f. / χ2 / p-value). The HGLM level-1 block (Prob(Y=1|β) = φ,
    log[φ/(1 - φ)] = η, η = β0 + ...) is as in HLM's output quoted in N. Sarkisian's SC708 class
    notes (https://docslib.org/doc/13693439/class-notes-non-continuous-dependent-variables).
    Not verified against printed HLM 7 HGLM output (none could be found): the HGLM table titles
    "(Unit-specific model)", "(Unit-specific model with robust standard errors)", "Results for
    Population-average Model" / "(Population-average model)", and the Odds Ratio (Event Rate Ratio)
    table with its Confidence Interval column; these follow the HLM 7 manual's description
    (shared/docs/hglm-hlm3-weights.md, marked [M] there) in the verified linear table format.
    """
    from ..report.report import extras_text, hlm_p, printable, random_label, tau_lines, text_table

    d = a.design
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    out: list[str] = []
    w = out.append
    out += _hglm_header_lines(a, meta, sym)
    out += _hglm_status_lines(a, sym)
    for note in a.notes + a.warnings:
        w(note)
    if a.sigma2 is not None:
        w("")
        w(f" {sym.sigma2} = {a.sigma2:12.5f}")
    out += tau_lines(sym, names, rand_q, a.tau, None, a.variance.reliability)
    sd = np.sqrt(np.clip(np.diag(a.tau), 0, None))
    out += _fixed_effect_lines(a, sym, "Unit-specific model", a.gamma, a.cov, a.robust_cov)
    w("")
    w("Final estimation of variance components")
    rows = [[random_label(d, q, sym), f"{sd[k]:.5f}", f"{a.tau[k, k]:.5f}", f"{a.variance.df[k]:.0f}",
             f"{a.variance.chi2[k]:.5f}", hlm_p(a.variance.p[k])] for k, q in enumerate(rand_q)]
    if a.sigma2 is not None:
        rows.append(["level-1, r", f"{math.sqrt(a.sigma2):.5f}", f"{a.sigma2:.5f}", "", "", ""])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"],
                      rows, [26, 18, 18, 6, 12, 8])
    w("")
    out += _hglm_deviance_lines(a, sym)
    out += extras_text(a.extras, sym)
    if a.pql is not None and a.pql.pa_failed:
        w("")
        w(f"Results for Population-average Model: none; {a.pql.pa_failed}")
    if a.pql is not None and a.pql.pa_gamma is not None:
        w("")
        w("Results for Population-average Model")
        out += _fixed_effect_lines(a, sym, "Population-average model", a.pql.pa_gamma, a.pql.pa_cov,
                                   a.pql.pa_robust_cov)
    w("")
    for line in r_call_lines(a.spec, meta.get("id_name", "ID"), a.nodes or None):
        w(line)
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


def _hglm_header_lines(a: HGLMAnalysis, meta: dict, sym) -> list[str]:
    """The warning when not converged, the run's specifications and the model, as HLM 7 prints them."""
    from ..report.report import hlm_name, problem_lines

    opts = a.spec.options
    d = a.design
    out: list[str] = []
    w = out.append
    if not a.converged:
        w("WARNING: " + ("PQL did NOT converge; the numbers below are from its last iteration." if a.pql is not None
                         else "the optimum is NOT certified; the numbers below may not be at the optimum."))
        w("")
    w(f"hlmcli {__version__}: hierarchical generalized linear models, two levels (HLM2)")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    w("")
    w("Specifications for this nonlinear HLM2 run")
    w("")
    out += problem_lines(meta, d)
    if a.pql is not None:
        w(f" The maximum number of micro iterations = {opts.microit}")
        w(f" The maximum number of macro iterations = {opts.macroit}")
    w("")
    w(f" Method of estimation: {estimation_text(opts, a.nodes or None)}")
    if hasattr(a, "categories"):  # ordinal: its categories and link
        w(f" Distribution at Level-1: ordinal, {a.categories.size} categories "
          f"({', '.join(f'{c:g}' for c in a.categories)}), {a.link} link")
    else:
        w(f" Distribution at Level-1: {opts.family}" + (f", trials {opts.trials}" if opts.trials else "")
          + (f", exposure {opts.exposure}" if opts.exposure else ""))
    w("")
    w(f" The outcome variable is  {hlm_name(a.spec.outcome)}")
    w("")
    out += hglm_model_summary(a.spec, sym)
    if d.n_deleted:
        w("")
        w(f"Run-time deletion has reduced the number of level-1 records to {d.n} ({d.n_deleted} deleted)")
    w("")
    return out


def _hglm_status_lines(a: HGLMAnalysis, sym) -> list[str]:
    """How the fit ended: PQL's iterations, or the Laplace/AGQ certificate, starts and quadrature check."""
    out: list[str] = []
    w = out.append
    if a.pql is not None:
        w(f"Final Results - Iteration {a.pql.macro_iterations} (macro iterations)"
          + ("" if a.converged else "  NOT CONVERGED"))
        w("")
        w(pql_status(a.pql))
    else:
        w(f"Final Results - Iteration {a.ml.iterations} ({'Laplace' if a.estimation == 'laplace' else 'AGQ'})")
        w("")
        if a.converged:
            from ..engine.certificate import stopping_line

            w(stopping_line(f"γ and {sym.tau}" if not sym.ascii else "gamma and tau"))
        else:
            w("NOT certified: " + a.ml.certificate.describe())
        w(f"Starts tried: {a.ml.starts} (the lowest local optimum is reported)")
        quad = a.ml.quadrature
        if quad is not None:
            w(f"Quadrature: {quad.describe()}")
            if not quad.accurate:
                w("WARNING: the quadrature accuracy check " + ("failed" if quad.change is not None else "could not be made")
                  + (" within the budget" if quad.adaptive else "") + "; the deviance may be off by more than 1e-6 relative"
                  + ("" if quad.adaptive else ": raise --quadrature-points"))
    return out


def _fixed_effect_lines(a: HGLMAnalysis, sym, model: str, gamma, cov, rcov) -> list[str]:
    """The fixed effects with model-based and robust standard errors, each followed by its odds
    (event rate) ratios with confidence intervals."""
    from ..report.report import coef_label, hlm_name, hlm_p, text_table

    d = a.design
    ratio = getattr(a, "ratio_label", "Odds Ratio" if a.data.family.link == "logit" else "Event Rate Ratio")
    out: list[str] = []
    w = out.append
    for robust in (False, True):
        c = rcov if robust else cov
        if c is None:
            continue
        se = np.sqrt(np.diag(c))
        t = gamma / se
        p = inference.two_sided_p(t, a.df)
        w("")
        w("Final estimation of fixed effects:")
        w(f"({model}" + (" with robust standard errors)" if robust else ")"))
        rows, ratio_rows = [], []
        for k, f in enumerate(d.fixed):
            if k == 0 or d.fixed[k - 1].q != f.q:
                rows.append([f"For {coef_label(d, f.q, sym)}"])
                ratio_rows.append(rows[-1])
            label = f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}"
            rows.append([label, f"{gamma[k]:.6f}", f"{se[k]:.6f}", f"{t[k]:.3f}", f"{a.df[k]:.0f}", hlm_p(p[k])])
            tq = special.stdtrit(a.df[k], 0.975)
            ratio_rows.append([label, f"{gamma[k]:.6f}", f"{np.exp(gamma[k]):.6f}",
                               f"({np.exp(gamma[k] - tq * se[k]):.3f},{np.exp(gamma[k] + tq * se[k]):.3f})"])
        if hasattr(a, "threshold_rows"):  # an ordinal outcome's thresholds δ(m), after γ (ordinal_run.py)
            more, more_ratio = a.threshold_rows(robust, sym)
            rows += more
            ratio_rows += more_ratio
        out.extend(text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                              rows, [30, 12, 14, 9, 12, 8]))
        if ratio is None:  # probit: exp(γ) is no ratio of anything
            continue
        w("")
        out.extend(text_table(["Fixed Effect", "Coefficient", ratio, "Confidence Interval"], ratio_rows, [30, 12, 16, 22]))
    return out


def _hglm_deviance_lines(a: HGLMAnalysis, sym) -> list[str]:
    """The deviance, parameter count and AIC/BIC of a Laplace or AGQ fit; PQL has none."""
    out: list[str] = []
    w = out.append
    if a.ml is not None:
        w("Statistics for the current model")
        w(f" Deviance                       = {a.ml.deviance:.6f}")
        w(f" Number of estimated parameters = {a.ml.n_params}")
        aic, bic = information_criteria(a)
        w(f" AIC = {aic:.6f}, BIC = {bic:.6f} (as lme4: every fixed effect and variance parameter counted)")
        w(" (-2 x the full log-likelihood, every constant included)" if sym.ascii else
          " (−2 × the full log-likelihood, every constant included)")
    else:
        w("Deviance: none. PQL maximises a quasi-likelihood, which supports no likelihood-ratio test;")
        w("use --estimation laplace or agq for a deviance.")
    return out


def level2_table(a: HGLMAnalysis):
    """HLM 7's level-2 residual file of an HGLM: per unit the EB random effects (posterior modes) and
    their posterior variances, each coefficient's level-2 prediction and EB value, on the link scale."""
    import pandas as pd

    d = a.design
    names = a.spec.coefficient_names()
    rand_q = [int(q) for q in np.flatnonzero(d.random)]
    coef = np.einsum("jkp,p->jk", a.data.B, a.gamma)
    eb = coef.copy()
    eb[:, a.data.rnd] += a.b
    cols: dict[str, object] = {"id": d.unit_ids, "nj": d.sizes.astype(int)}
    for k, q in enumerate(rand_q):
        cols[f"u_{names[q]}"] = a.b[:, k]
        cols[f"postvar_{names[q]}"] = a.b_var[:, k, k]
    for q, name in enumerate(names):
        cols[f"fitted_{name}"] = coef[:, q]
        cols[f"eb_{name}"] = eb[:, q]
    for name, values in d.level2_values.items():
        cols[name] = values
    return pd.DataFrame(cols)


def level1_table(a: HGLMAnalysis):
    """HLM 7's level-1 residual file of an HGLM: the linear predictor η with the EB effects, the fitted
    mean, the outcome and the predictors, in unit order."""
    import pandas as pd

    d = a.design
    unit = a.data.unit
    eta = a.data.eta(a.gamma, a.b)
    cols = {"id": np.array(d.unit_ids, dtype=object)[unit], "eta": eta,
            "fitted": a.data.family.mean(eta, a.data.trials), d.spec.outcome: d.y}
    for k, term in enumerate(d.spec.level1, start=1):
        cols[term.name if term.centering == "none" else f"{term.name}_{term.centering}"] = d.L[:, k]
    return pd.DataFrame(cols)
