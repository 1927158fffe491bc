"""The HGLM stages after the design: data checks, the fit (hglm.py), and HLM 7's HGLM tables and JSON.

Kept apart from pipeline.py and report.py so the linear engine's code paths are untouched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from ..engine.special_functions import special

from ..data import design as design_stage
from . import inference
from ..data.data_checks import check_hglm_outcome, check_quadrature, level1_option_column
from ..errors import DataError, ModelError
from ..engine.family import family as get_family
from ..engine.hglm import GLMData, MLResult, PQLResult, agq_fit, ml_fit, ml_start, pql, working_model

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
    weights: object = None  # weights.Weights of a pseudo-likelihood fit (Laplace, AGQ), or None

    # The residual files of an HGLM fit, as `Results` reads them (its text and JSON are report_hglm.py's).
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
    if opts.exposure and fam not in ("poisson", "negbinomial"):
        raise ModelError(f"--exposure is for --family poisson or negbinomial (this model is {fam})")
    if opts.overdispersion and fam == "negbinomial":
        raise ModelError("--overdispersion is PQL's quasi-likelihood scale; a negative binomial model estimates its "
                         "own dispersion θ (Var = μ + μ²/θ): drop --overdispersion")
    if opts.overdispersion and fam == "bernoulli":
        raise ModelError("--overdispersion cannot be estimated for a 0/1 outcome: the Bernoulli variance is fixed by its mean")
    if opts.overdispersion and opts.estimation != "pql":
        raise ModelError("--overdispersion is a quasi-likelihood scale: use it with --estimation pql")
    if opts.estimation == "agq" and opts.quadrature_points is not None and opts.quadrature_points < 0:
        raise ModelError("--quadrature-points must be at least 1")
    if opts.estimation != "agq" and opts.quadrature_points not in (None, 0, 1):
        raise ModelError("--quadrature-points is for --estimation agq")


def hglm_extras(a: "HGLMAnalysis", hypotheses=(), prior_deviance=None, prior_params=None, constraints=None) -> dict:
    """Wald tests of linear hypotheses on γ (model-based and robust covariance) and the likelihood-ratio
    test against a prior model's deviance (Laplace and AGQ only), as the linear engine's extras; under
    --constrain the tests are of the free γs (constrained.free_tests)."""
    from .pipeline import tests_of_gamma

    ml = a.ml
    if constraints is not None:
        from .constrained import free_tests

        return free_tests(constraints, hypotheses, a.gamma, a.cov, a.robust_cov, prior_deviance, prior_params,
                          None if ml is None else ml.deviance, None if ml is None else ml.n_params,
                          robust_only=getattr(a, "weights", None) is not None)
    return tests_of_gamma(hypotheses, a.gamma, a.cov, a.robust_cov, prior_deviance, prior_params,
                          None if ml is None else ml.deviance, None if ml is None else ml.n_params,
                          robust_only=getattr(a, "weights", None) is not None)


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


def check_separation(design, B, trials, link, l1file, l2file, rows, mode, fit_offered: bool = True):
    """Separation by one fixed-effect column (separation.py), found before fitting. Complete separation
    is refused; quasi-complete separation too unless mode is "fit", when the separated coefficients
    are returned to be held at their bounds (fit_offered False: a family without --separation fit, whose
    refusal does not suggest it)."""
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
            todo = ("remove it or combine categories" if s.complete or not fit_offered else
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


def checked_design(spec, archive, level1_text: str | None):
    """(the family, the design) once the options, the level-1 equation and the random effects suit an HGLM."""
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
    check_fixed_rank(design)
    return fam, design


def check_fixed_rank(design, LL=None) -> None:
    """Collinear fixed effects refused in one line, as for the linear model: the likelihood is flat along
    the alias, so there is no one optimum to certify (Laplace printed an arbitrary split with SEs of nan).
    Judged on X'X = Σ B_j'L_j'L_jB_j, the design's own columns, whatever the family (LL: the per-unit
    L_j'L_j when the records are not at hand, as in the streamed fit's summary)."""
    from ..engine.sufficient import unit_cross_products

    B = design.block_design()
    if LL is None:
        LL = unit_cross_products(design.L, np.zeros(design.n), design.offsets, center_y=False).LL
    design_stage.check_collinearity(design, np.einsum("jqa,jqr,jrb->ab", B, LL, B))


def _held_at_bounds(design, B, held, offset):
    """--separation fit: each separated coefficient held at its bound, as an offset, its column out of B."""
    unit = np.repeat(np.arange(design.n_units), design.sizes)
    extra = sum(s.bound * _fixed_column(design.L, B, unit, s.column) for s in held)
    offset = extra if offset is None else offset + extra
    return np.delete(B, [s.column for s in held], axis=2), offset


def trials_and_exposure(archive, design, opts, l1file: str, rows) -> tuple:
    """--trials and --exposure as columns of the records the design uses (None when not given); a record
    with either missing is refused, naming its row."""
    trials = level1_option_column(archive, design, opts.trials, "--trials") if opts.trials else None
    exposure = level1_option_column(archive, design, opts.exposure, "--exposure") if opts.exposure else None
    for name, col in (("trials", trials), ("exposure", exposure)):
        if col is not None and np.isnan(col).any():
            k = int(np.flatnonzero(np.isnan(col))[0])
            raise DataError(f"{l1file}, column {getattr(opts, name)}, row {int(rows[k]) + 1}: missing value")
    return trials, exposure


def likelihood_fit(data: GLMData, opts, diagonal: bool) -> MLResult:
    """--estimation laplace or agq: the certified search of the likelihood from PQL's start."""
    est = opts.estimation
    if est == "agq" and data.q > 3:
        raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use --estimation laplace")
    if est == "agq":  # quadrature_points 0: K chosen adaptively
        check_quadrature(opts.quadrature_points or None, data.q)
    start = ml_start(data, opts.macroit, diagonal)
    if est == "agq":
        return agq_fit(data, opts.quadrature_points or None, start, diagonal=diagonal)
    return ml_fit(data, 1, start, diagonal=diagonal)


def resolve_weights(weights, archive, design):
    """(weights.Weights or None, w1 per record or None, w2 per unit or None) of a pseudo-likelihood fit:
    the WeightSpec's columns checked and scaled (data/weights.py) for the design's records and units."""
    if weights is None or not weights.any:
        return None, None, None
    from ..data.weights import resolve
    from ..errors import DataError

    if design.n_units < 2:  # the sandwich's J/(J − 1) (engine/hglm.py) would divide by zero
        raise DataError(f"the data have {design.n_units} level-2 unit after deletion; the standard errors of a fit "
                        "with sampling weights are a sandwich over level-2 units, which needs at least 2 (fit "
                        "without --weight1/--weight2, or give more units)")
    resolved = resolve(weights, archive, design)
    return resolved, resolved.w1, resolved.w2 if resolved.spec.level2 else None


def analyse_hglm(spec, archive, level1_text: str | None = None, weights=None, constraints=None) -> HGLMAnalysis:
    """The HGLM stages after the design: the options and data checked, the fit by PQL, Laplace or AGQ,
    the unit OLS and the variance tests, as an HGLMAnalysis. weights: a weights.WeightSpec (Laplace and
    AGQ: the pseudo-likelihood of engine/hglm_weights.py), or None. constraints: --constrain's
    (constrained.Constraints): the model is fitted on the design B_jH of the free γs (the linear
    predictor is linear in γ, so PQL, Laplace and AGQ fit the constrained model unchanged) and given
    back in every γ; the d.f. are HLM 7's, the eliminated γ's equation losing one (constrained_df)."""
    opts = spec.options
    fam, design = checked_design(spec, archive, level1_text)
    full = design
    if constraints is not None:
        from .constrained import constrained_view

        design = constrained_view(full, constraints.basis)
    resolved, w1, w2 = resolve_weights(weights, archive, design)
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    trials, exposure = trials_and_exposure(archive, design, opts, l1file, rows)
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
        B, offset = _held_at_bounds(design, B, held, offset)
    data = GLMData(fam, design.L, B, design.offsets, np.flatnonzero(design.random), design.y, trials, offset, w1, w2)
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
        m_res = likelihood_fit(data, opts, diagonal)
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
                       trials, np.log(exposure) if exposure is not None else None, w1, w2)
        stats, unit = working_model(data, eta)
        warnings = [separation_warning(design, s) for s in held]
    df = inference.hlm_fixed_df(design)
    if constraints is not None:
        # back to every γ: the tables, the residual files and the unit OLS are of the model as written
        from .constrained import constrained_df, expand_estimates

        basis = constraints.basis
        gamma, cov, rcov = expand_estimates(basis, gamma, cov, rcov)
        if p_res is not None and p_res.pa_gamma is not None:
            p_res.pa_gamma, p_res.pa_cov, p_res.pa_robust_cov = expand_estimates(basis, p_res.pa_gamma, p_res.pa_cov,
                                                                                 p_res.pa_robust_cov)
        design, df = full, constrained_df(full, basis)
        data = GLMData(fam, design.L, design.block_design(), design.offsets, np.flatnonzero(design.random), design.y,
                       trials, np.log(exposure) if exposure is not None else None, w1, w2)
        stats, unit = working_model(data, eta)
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=sigma2 if sigma2 is not None else 1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, tau, stats)
    if constraints is not None:  # the χ² d.f. with the parameters counted as constrained
        from .constrained import constrained_variance_tests

        variance = constrained_variance_tests(variance, design, constraints.basis)
    return HGLMAnalysis(spec, design, data, est, m_res.nodes if m_res is not None else 0,
                        p_res, m_res, gamma, cov, rcov, tau, sigma2, df, variance,
                        converged, b, bvar, warnings=warnings, weights=resolved)


def information_criteria(a: HGLMAnalysis) -> tuple[float, float]:
    """AIC and BIC of a Laplace or AGQ fit, as lme4's AIC()/BIC() of glmer: its deviance (-2 log-likelihood)
    plus 2k or k·log N, k = γs + τ parameters, N the level-1 records. PQL has no likelihood, so none."""
    return inference.information_criteria(a.ml.deviance, a.ml.n_params, 0, a.design.n)


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
