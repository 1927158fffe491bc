"""Fits under linear constraints on γ (--constrain "g10 = g20", HLM 7's constrain), one mechanism for
every kind of model linear in γ: each path forms its fixed design as X·H where it forms X (the two-level
linear and HGLM fits: constrained_view; the stream and Dask engines: the same view of the summarised
design; three and four levels: nested.reduce_standardised's affine maps; cross-classified fits:
crossed_run), and the estimates are given back in every γ by expand_estimates. The restrictions are read
by each kind's --test reader (constraints_from), the d.f. are each kind's rule with the eliminated γ's
equation losing one, and the records "constraints" and "constraint_test" are the same for every kind.

The two-level linear fit:

The model is fitted on the free γs δ (engine/constraints.py: γ = Hδ, the design B_jH), so the GLS,
the profiled deviance, the search and the certificate are those of the constrained model; the table
is then given back in every γ, tied ones sharing their estimate and standard error, with
Cov(γ̂) = H Cov(δ̂) H'. Each restriction removes one parameter: from the deviance's count, from the
information criteria and from the d.f. of the equation whose γ it eliminates (constrained_df). Under
ML the restrictions are tested against the unconstrained model by the change in deviance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

import numpy as np

from ..data import design as design_stage
from ..data.design import Design, MomentsDesign
from ..engine.constraints import ConstraintBasis, constraint_basis, tied_df
from ..engine.sufficient import unit_cross_products
from ..errors import ModelError
from . import inference
from .pipeline import (Analysis, analyse, analyse_stats, centred_statistics, centring_needed, check_estimable,
                       tests_of_gamma)

OPTION = "--constrain"


@dataclass(frozen=True)
class Constraints:
    """The restrictions as typed (their labels), their rows C over γ, and the basis γ = Hδ."""

    labels: tuple[str, ...]
    C: np.ndarray
    basis: ConstraintBasis


def parse_constraints(texts, spec, centred_intercept: bool = True) -> Constraints:
    """'g10 = g20' (several restrictions in one string, comma-separated, or several strings) over the
    model's γs, as --test reads them; only restrictions of the form Cγ = 0 (equalities and linear
    ties), and none that fixes a γ or (centred_intercept: the linear engine, which takes the
    outcome's mean out) names γ00."""
    from ..language.hypotheses import parse_test

    names = spec_gamma_labels(spec)
    c = constraints_from(texts, lambda t: parse_test(t, spec), names)
    basis, labels = c.basis, c.labels
    if centred_intercept and 0 in basis.involved() and names and names[0] in ("g00",):
        raise ModelError(f"{OPTION} '{', '.join(labels)}': γ00 cannot be constrained: it carries the outcome's mean, "
                         "which hlmcli takes out before the cross-products to keep their digits; constrain other γs")
    return c


def constraints_from(texts, read, names: list[str]) -> Constraints:
    """The restrictions read by `read` (the kind's --test reader: a text -> a Hypothesis over its fixed
    effects, labelled `names`), each with its right side moved to the left."""
    rows, labels = [], []
    for text in texts:
        rewritten = _zero_right_side(text)
        try:
            h = read(rewritten)
        except ModelError as exc:  # named as typed, not as rewritten for the reader
            message = str(exc).replace(f"--test '{rewritten}'", f"{OPTION} '{text}'", 1)
            raise ModelError(message.replace("--test '", f"{OPTION} '", 1)) from None
        if any(v != 0.0 for v in h.rhs):
            raise ModelError(f"{OPTION} '{text}': a restriction fixing a γ at a value is not built (the outcome would "
                             "need an offset); write ties between γs such as 'g10 = g20' (right side 0)")
        if any(not any(r) for r in h.rows):  # 'g20 = g20': 0 = 0, not a dependence on other restrictions
            raise ModelError(f"{OPTION} '{text}': a restriction that ties a γ to itself (its terms cancel) restricts "
                             "nothing; drop it")
        rows += [list(r) for r in h.rows]
        labels.append(text.strip())
    C = np.array(rows, dtype=float)
    basis = constraint_basis(C, f"{OPTION} '{', '.join(labels)}'")
    for e in basis.eliminated:
        if not np.any(basis.H[e]):
            raise ModelError(f"{OPTION} '{', '.join(labels)}': this sets {names[e]} to 0; remove its term from the "
                             "model instead")
    return Constraints(tuple(labels), C, basis)


def free_hypotheses(constraints: Constraints, hypotheses) -> list:
    """Each hypothesis Cγ = d as (CH)δ = d on the free γs; one that restricts only what the constraints
    already fix is refused."""
    from ..language.model import Hypothesis

    out = []
    for h in hypotheses:
        CH = np.array(h.rows, dtype=float) @ constraints.basis.H
        if np.linalg.matrix_rank(CH) < CH.shape[0]:
            raise ModelError(f"--test '{h.label}': under {OPTION} this restriction (or one of its rows) is already "
                             "imposed or follows from the constraints; test what the constraints leave free")
        out.append(Hypothesis(h.label, tuple(map(tuple, CH.tolist())), h.rhs))
    return out


# A comma between restrictions, not one inside a printed label such as g1,10: the next restriction
# starts with a letter or a sign, or with a multiplier of a γ (2*g10, 2g10); or the text ends.
_BETWEEN = re.compile(r",\s*(?=[^\d\s]|\d[\d.]*\s*\*?\s*[^\d\s.,*]|$)")


def _zero_right_side(text: str) -> str:
    """'g10 = g20, g11 = 2*g21' -> 'g10 - g20 = 0, g11 - 2*g21 = 0': each restriction with its γs on
    the left, as the --test reader takes them (a right side that is a number stays). A chain ties
    every γ it names: 'g10 = g20 = g30' is 'g10 = g20, g20 = g30'."""
    out = []
    pairs = []
    for restriction in _BETWEEN.split(text):
        sides = restriction.split("=")
        if len(sides) > 2 and all(side.strip() for side in sides):
            pairs += [f"{a} = {b}" for a, b in zip(sides, sides[1:])]
        else:
            pairs.append(restriction)
    for restriction in pairs:
        if restriction.count("=") != 1:
            out.append(restriction)
            continue
        left, right = restriction.split("=")
        try:
            float(right.strip())
            out.append(restriction)
            continue
        except ValueError:
            pass
        pieces = re.findall(r"[+-]?[^+-]+", right.replace(" ", ""))
        flipped = "".join(("+" + p[1:]) if p.startswith("-") else ("-" + p.lstrip("+")) for p in pieces)
        out.append(f"{left.strip()} {flipped} = 0")
    return ", ".join(out)


def spec_gamma_labels(spec) -> list[str]:
    """The fixed effects' ASCII labels in the engine's order, as --test reads them (g00, g01, g10, ...;
    g000, g100 at three levels; the top letter of four levels)."""
    from ..language.hypotheses import fixed_effect_labels
    from ..language.lexer import coefficient_letters
    from ..spec import coefficient_label

    letter = coefficient_letters(spec.n_levels)[-1] if getattr(spec, "n_levels", 2) > 2 else "g"
    return [coefficient_label(letter, idx) for idx in fixed_effect_labels(spec)]


@dataclass
class ConstrainedDesign(Design):
    """A design whose fixed part is X H: the free γs' labels, and B_jH as the block design."""

    full: Design | None = None
    H: np.ndarray | None = None

    def block_design(self) -> np.ndarray:
        return self.full.block_design() @ self.H


@dataclass
class ConstrainedMomentsDesign(MomentsDesign):
    """The same view of a design summarised by the stream and Dask engines (its n stored)."""

    full: Design | None = None
    H: np.ndarray | None = None

    def block_design(self) -> np.ndarray:
        return self.full.block_design() @ self.H


def constrained_view(design: Design, basis: ConstraintBasis) -> ConstrainedDesign:
    cls = ConstrainedMomentsDesign if isinstance(design, MomentsDesign) else ConstrainedDesign
    values = {f.name: getattr(design, f.name) for f in fields(design)}
    values["fixed"] = [design.fixed[i] for i in basis.free]
    return cls(**values, full=design, H=basis.H)


def constrained_df(design: Design, basis: ConstraintBasis, rule: str = "hlm") -> np.ndarray:
    """HLM 7's Approx. d.f. with the parameters counted as constrained: J - (free γs of equation q) for
    the γs of a random coefficient q (J - S_q - 1 unconstrained), and N - J·R - F' for those of fixed
    coefficients, F' their free γs (rule 'hlm6': N - p', p' all free γs). A restriction counts
    against the equation of the γ it eliminates; tied γs, one parameter, then share one d.f. (tied_df)."""
    J, N = design.n_units, design.n
    R = int(design.random.sum())
    eliminated = set(basis.eliminated)
    free_in = {}
    for i, f in enumerate(design.fixed):
        free_in[f.q] = free_in.get(f.q, 0) + (i not in eliminated)
    F = sum(1 for i, f in enumerate(design.fixed) if not design.random[f.q] and i not in eliminated)
    out = []
    for f in design.fixed:
        if design.random[f.q]:
            out.append(J - free_in[f.q])
        else:
            out.append(N - len(basis.free) if rule == "hlm6" else N - J * R - F)
    return tied_df(np.array(out, dtype=float), basis.H)


def constrained_variance_tests(vt: inference.VarianceTests, design: Design, basis: ConstraintBasis):
    """HLM's χ² test of each random coefficient q with the parameters counted as constrained: its d.f.
    (J_s − S_q − 1) gain one for each γ of equation q a restriction eliminates (as constrained_df), so a
    tie within an equation gives the summed-predictor model's d.f. The statistic is unchanged: the
    fitted values Σ_s γ_qs W_sj are those of the constrained γ."""
    from dataclasses import replace

    from ..engine.special_functions import special

    lost = {}
    for e in basis.eliminated:
        lost[design.fixed[e].q] = lost.get(design.fixed[e].q, 0) + 1
    df = vt.df + np.array([lost.get(int(q), 0) for q in np.flatnonzero(design.random)], dtype=float)
    return replace(vt, df=df, p=special.chdtrc(df, vt.chi2))


def expand_estimates(basis: ConstraintBasis, gamma, cov, robust_cov=None) -> tuple:
    """A fit on the free γs given back in every γ: γ = Hδ, Cov(γ) = H Cov(δ) H' (model-based and
    robust alike; None stays None). Shared by every kind of model fitted on the design XH."""
    expand = (lambda c: None if c is None else basis.expand_cov(c))
    return basis.expand(gamma), expand(cov), expand(robust_cov)


def analyse_constrained(spec, archive, constraints: Constraints, df_method: str = "hlm", weights=None) -> Analysis:
    """The certified fit of the constrained model, reported in every γ. weights: a weights.WeightSpec or
    None; the pseudo-likelihood weights each record's and unit's contribution whatever the fixed design,
    so over the design X·H it is the constrained model's, and its sandwich (of δ) goes back through H."""
    design = design_stage.make_design(spec, archive)
    check_estimable(design)
    resolved = None
    if weights is not None and weights.any:
        from ..data.weights import resolve

        resolved = resolve(weights, archive, design)
    view = constrained_view(design, constraints.basis)
    unit = unit_cross_products(design.L, design.y, design.offsets, center_y=design_stage.has_overall_intercept(design),
                               weights=None if resolved is None else resolved.w1)
    centred = centred_statistics(view, unit, resolved) if centring_needed(view, unit) else None
    return fit_constrained(design, unit, constraints, df_method, centred, resolved)


def fit_constrained(design: Design, unit, constraints: Constraints, df_method: str = "hlm", centred=None,
                    weights=None) -> Analysis:
    """The constrained fit from a design and its per-unit cross-products of the level-1 columns, which
    do not see H (the block design B_jH does): the same for the records in memory and for the moments
    of the stream and Dask engines (engines.analyse_summary). weights: a weights.Weights already
    applied to `unit` at level 1, or None."""
    spec = design.spec
    basis = constraints.basis
    view = constrained_view(design, basis)
    if weights is not None and df_method == "satterthwaite":
        raise ModelError("Satterthwaite d.f. are not defined for a pseudo-likelihood fit with sampling weights; use --df hlm")
    a = analyse_stats(view, unit, "hlm", weights, centred=centred)
    H = basis.H
    fx = a.fixed
    cov, robust = basis.expand_cov(fx.cov), basis.expand_cov(fx.robust_cov)
    with np.errstate(invalid="ignore"):
        se, robust_se = np.sqrt(np.diag(cov)), np.sqrt(np.diag(robust))
    rule = "hlm6" if df_method == "hlm6" else "hlm"
    a.fixed = inference.FixedTable(gamma=basis.expand(fx.gamma), se=se, robust_se=robust_se,
                                   df=constrained_df(design, basis, rule), cov=cov, robust_cov=robust)
    a.df_rule = rule
    a.variance = constrained_variance_tests(a.variance, design, basis)
    if df_method == "satterthwaite":
        a.satterthwaite = inference.satterthwaite_df(a.stats, unit, a.result, gamma_map=H)
    a.design = design
    a.extras["constraints"] = constraint_record(constraints, spec_gamma_labels(spec))
    return a


def constraint_record(constraints: Constraints, names: list[str]) -> dict:
    """What the JSON and the text say: the restrictions, each γ eliminated and what it equals."""
    b = constraints.basis
    tied = []
    for e in b.eliminated:
        terms = [(float(b.H[e, k]), names[f]) for k, f in enumerate(b.free) if b.H[e, k] != 0.0]
        tied.append({"gamma": names[e], "equals": [{"coefficient": c, "gamma": g} for c, g in terms]})
    return {"restrictions": list(constraints.labels), "contrast": constraints.C.tolist(),
            "n_restrictions": b.n_constraints, "free": [names[f] for f in b.free],
            "involved": [names[i] for i in b.involved()], "eliminated": tied}


def constrained_tests(a: Analysis, constraints: Constraints, hypotheses=(), prior_deviance=None,
                      prior_params=None) -> dict:
    """--test under constraints: each hypothesis Cγ = d is tested as (CH)δ = d on the free γs (the
    covariance of γ is singular along the restrictions); one that restricts only what the
    constraints already fix is refused. The deviance test against a prior model as usual."""
    return free_tests(constraints, hypotheses, a.fixed.gamma, a.fixed.cov, a.fixed.robust_cov, prior_deviance,
                      prior_params, a.result.deviance, a.result.n_params, robust_only=a.weights is not None)


def free_tests(constraints: Constraints, hypotheses, gamma, cov, robust, prior_deviance=None, prior_params=None,
               deviance=None, n_params=None, robust_only: bool = False) -> dict:
    """The Wald tests of --test on the free γs, for any kind of constrained fit given back in every γ
    (gamma, cov, robust: the expanded estimates; deviance None when the fit has none, as PQL)."""
    free = list(constraints.basis.free)
    delta, cov_d = gamma[free], cov[np.ix_(free, free)]
    robust_d = None if robust is None else robust[np.ix_(free, free)]
    mapped = free_hypotheses(constraints, hypotheses)
    ex = tests_of_gamma(mapped, delta, cov_d, robust_d, prior_deviance, prior_params, deviance, n_params,
                        robust_only=robust_only)
    for entry, h in zip(ex.get("hypothesis_tests", []), hypotheses):
        entry["contrast"] = [list(r) for r in h.rows]
    return ex


def constraint_test(a: Analysis, spec, archive, constraints: Constraints) -> dict:
    """The likelihood-ratio test of the restrictions: the constrained model's ML deviance against the
    unconstrained model's (refitted here), on as many d.f. as restrictions. REML deviances of models
    with different fixed effects are not comparable, so a REML fit's test refits both models by ML
    (as lmerTest's anova does), and says so."""
    if a.weights is not None:  # a pseudo-likelihood: Wald tests (--test) instead
        return no_pseudo_likelihood_test(constraints)
    return linear_constraint_test(a, spec, constraints, lambda s: analyse_constrained(s, archive, constraints).result,
                                  lambda s: analyse(s, archive).result)


def linear_constraint_test(a: Analysis, spec, constraints: Constraints, constrained_fit, full_fit) -> dict:
    """constraint_test with the fits given as functions of a spec (the records in memory, or the
    moments of the stream and Dask engines)."""
    from dataclasses import replace

    refit = a.result.method != "ML"
    if refit:
        ml = replace(spec, options=replace(spec.options, method="ML"))
        constrained, full = constrained_fit(ml), full_fit(ml)
    else:
        constrained, full = a.result, full_fit(spec)
    return likelihood_ratio_record(constraints, constrained, full, refit)


def likelihood_ratio_record(constraints: Constraints, constrained, full, refitted_ml: bool = False) -> dict:
    """The "constraint_test" record from the two fits' (converged, deviance, n_params), of any kind of
    model that has a deviance: no test unless both are certified."""
    out = {"chi2": None, "df": constraints.basis.n_constraints, "p": None, "refitted_ml": refitted_ml}
    if not (constrained.converged and full.converged):
        out["note"] = "a fit the test needs (the ML refit, or the unconstrained model) is not certified, so no test is given"
        return out
    chi2, df, p = inference.deviance_test(constrained.deviance, constrained.n_params, full.deviance, full.n_params)
    out.update({"chi2": float(chi2), "df": int(df), "p": float(p), "deviance_constrained": float(constrained.deviance),
                "deviance_unconstrained": float(full.deviance), "params_constrained": int(constrained.n_params),
                "params_unconstrained": int(full.n_params)})
    return out


def hglm_constraint_test(a, constraints: Constraints, unconstrained) -> dict:
    """The likelihood-ratio test of the restrictions of an HGLM fit by Laplace or AGQ (`a.ml`, ML
    always): its deviance against the unconstrained model's, `unconstrained()` fitting that. PQL
    maximises a quasi-likelihood and has no deviance, so under PQL the test is left out with a note."""
    if a.ml is None:
        return {"chi2": None, "df": constraints.basis.n_constraints, "p": None, "refitted_ml": False,
                "note": "no test: PQL has no deviance (it maximises a quasi-likelihood); fit with --estimation laplace "
                        "or agq for the likelihood-ratio test of the constraints"}
    if getattr(a, "weights", None) is not None:  # a pseudo-likelihood: Wald tests (--test) instead
        return no_pseudo_likelihood_test(constraints)
    return likelihood_ratio_record(constraints, a.ml, unconstrained().ml)


def no_pseudo_likelihood_test(constraints: Constraints) -> dict:
    """The "constraint_test" record of a fit with sampling weights: a pseudo-likelihood has no
    likelihood-ratio test, so the ties are left untested (--test gives the sandwich Wald tests)."""
    from ..data.weights import NO_LIKELIHOOD_RATIO

    return {"chi2": None, "df": constraints.basis.n_constraints, "p": None, "refitted_ml": False,
            "note": "no test: " + NO_LIKELIHOOD_RATIO}


def levels_constraint_test(fit, constraints: Constraints, refit) -> dict:
    """The likelihood-ratio test of the restrictions of a fit of three or four levels (a NestedFit):
    `refit(reml, H)` fits the model again (H None: unconstrained). REML deviances of different fixed
    effects are not comparable, so a REML fit's test refits both models by ML (as for two levels)."""
    if fit.method != "ML":
        return likelihood_ratio_record(constraints, refit(False, constraints.basis.H), refit(False, None), True)
    return likelihood_ratio_record(constraints, fit, refit(False, None))
