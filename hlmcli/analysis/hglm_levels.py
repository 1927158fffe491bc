"""A three-level HGLM (binary, binomial or count outcome) from the archive: the design of the linear
three-level model, the outcome's checks, PQL around the nested engine (engine/nested_glmm.py), and
the analysis `LevelsResults` reads (its report: report/report_hglm_levels.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from ..errors import DataError, ModelError
from ..engine.hglm import FixedPointCheck


@dataclass
class HGLMLevels:
    """What a three-level HGLM adds to its LevelsAnalysis, for the report and JSON."""
    family: str  # bernoulli | binomial | poisson
    link: str  # logit | log
    estimation: str  # pql | laplace
    reml: bool
    overdispersion: bool
    sigma2: float  # 1, or the over-dispersion scale
    macro_iterations: int
    check: FixedPointCheck | None
    trials: str | None = None
    exposure: str | None = None
    failed: list[str] = field(default_factory=list)
    deviance: float | None = None  # Laplace: glmer's nAGQ = 1 deviance; PQL has none
    weights: object = None  # weights.LevelsWeights of a pseudo-likelihood fit (Laplace), or None
    nodes: int | None = None  # AGQ: the points, the same at both levels (hglm_levels_agq.py)
    quadrature: object = None  # AGQ: its accuracy check (hglm.QuadratureCheck)
    laplace_deviance: float | None = None  # AGQ: the Laplace deviance of its start

    def to_json(self) -> dict:
        return {"family": self.family, "link": self.link, "estimation": self.estimation,
                "pql": ("restricted" if self.reml else "full") if self.estimation == "pql" else None,
                "overdispersion": self.overdispersion,
                "sigma2_fixed": not self.overdispersion,
                "macro_iterations": self.macro_iterations if self.estimation == "pql" else None,
                "fixed_point": self.check.to_json() if self.check is not None else {"checked": False},
                "trials": self.trials, "exposure": self.exposure, "failed": list(self.failed),
                **({"quadrature_points": self.nodes, "quadrature": self.quadrature.to_json(),
                    "laplace_deviance": self.laplace_deviance} if self.estimation == "agq" else {})}


def level1_column(archive, design, name: str, option: str) -> np.ndarray:
    names = archive.names(1)
    if name not in names:
        lower = {n.lower(): n for n in names}
        hint = f" (did you mean {lower[name.lower()]}?)" if name.lower() in lower else ""
        raise ModelError(f"{option} {name}: the level-1 file has no column {name}{hint}; name a level-1 column")
    col = np.asarray(archive.levels[0].values[names.index(name)], dtype=float)
    return col if design.record_positions is None else col[design.record_positions]


def check_options_levels(fit) -> None:
    """The HGLM options of a three-level fit, each checked in one line (as hglm_run.check_options)."""
    fam = fit.family.value
    est = fit.estimation.value if fit.estimation is not None else "pql"
    if fam == "binomial" and not fit.trials:
        raise ModelError("--family binomial needs --trials VAR, the number of trials of each record "
                         "(for 0/1 outcomes use --family bernoulli)")
    if fit.trials and fam != "binomial":
        raise ModelError(f"--trials is for --family binomial (this model is {fam})")
    if fit.exposure and fam != "poisson":
        raise ModelError(f"--exposure is for --family poisson (this model is {fam})")
    if fit.overdispersion and fam == "bernoulli":
        raise ModelError("--overdispersion cannot be estimated for a 0/1 outcome: the Bernoulli variance is fixed by "
                         "its mean")
    if est not in ("pql", "laplace", "agq"):
        raise ModelError(f"--estimation {est}: not available for a three-level HGLM: hlmcli fits three-level "
                         "binary, binomial and count outcomes by PQL, Laplace or AGQ (--estimation pql|laplace|agq)")
    name = "Laplace" if est == "laplace" else "AGQ"
    if est != "pql" and fit.overdispersion:
        raise ModelError(f"--overdispersion: not available with --estimation {est}: over-dispersion is a scale of "
                         f"PQL's quasi-likelihood, and the {name} likelihood has none; drop --overdispersion or use "
                         "--estimation pql")
    if est != "pql" and fit.method is not None and getattr(fit.method, "value", fit.method) == "REML":
        raise ModelError(f"--reml: not available with --estimation {est}: {name} maximises the likelihood itself "
                         "(restricted PQL is --estimation pql --reml)")


def check_separation_levels(spec, design, y, trials, link: str, l1file: str, rows) -> None:
    """A three-level fit's separation (analysis/separation.py: one column exactly, then a combination by
    the linear programme) on the fixed design record by record, refused in one line before fitting: the
    random effects of either level cannot absorb it, so the ML (and PQL) estimate is infinite."""
    from ..engine.nested import as_levels
    from ..engine.nested_glmm import record_columns
    from ..spec import subscript
    from .separation import find_combination, find_separation

    X = record_columns(as_levels(design.data)).X
    if X.shape[1] < 2:
        return
    fixed = spec.fixed()

    def name(k):
        path = [n for n in fixed[k].names if not str(n).startswith("INTRCPT")]
        return f"γ{subscript(*fixed[k].idx)} ({'*'.join(map(str, path)) or 'the intercept'})"

    def listed(recs):
        return ", ".join(str(int(rows[i]) + 1) for i in recs[:8]) + (f", ... ({recs.size} in all)" if recs.size > 8 else "")

    found = find_separation(X, y, trials, link)
    if found:
        s = found[0]
        kind = "completely" if s.complete else "quasi-completely"
        limit = ("the outcome at its limit" if link == "logit" else "a count of 0")
        raise DataError(f"{l1file}: the fixed effect {name(s.column)} separates the outcome {kind} (beyond "
                        f"{s.threshold:g} of its column every record has {limit}: rows {listed(s.records)}), so its "
                        "coefficient has no finite estimate; remove it or combine categories")
    combo = find_combination(X, y, trials, link)
    if combo is not None:
        beta, moved = combo
        size = np.abs(beta) * np.abs(X).max(axis=0)
        names = [name(k) for k in np.flatnonzero(size > 1e-6 * size.max())]
        raise DataError(f"{l1file}: the fixed effects {', '.join(names)} together separate the outcome (a combination "
                        f"of them puts the outcome at its limit on rows {listed(moved)}), so their coefficients have "
                        "no finite estimate; remove one of them or combine categories")


def analyse_hglm_levels(spec, archive, fit, fixed_map=None):
    """The PQL fit of a three-level HGLM: (its design, the NestedFit the report reads, HGLMLevels), which
    api.analyse_levels makes a LevelsAnalysis of. fixed_map: H of --constrain (PQL and Laplace;
    capabilities.check refused AGQ): the fit on X·H, given back in every γ."""
    from ..data.design_levels import design3
    from ..engine.family import family as get_family
    from ..engine.nested import as_levels
    from ..engine.nested_glmm import LevelsGLMData, pql_levels
    from .identifiability import check_three_level

    check_options_levels(fit)
    design = design3(spec, archive)
    check_three_level(design.data, spec.coefficient_names(), lambda p: spec.term_names((p,)))
    fam = get_family(fit.family.value)
    y = np.asarray(design.data.y, dtype=float)
    trials = level1_column(archive, design, fit.trials, "--trials") if fit.trials else None
    exposure = level1_column(archive, design, fit.exposure, "--exposure") if fit.exposure else None
    rows = design.record_positions if design.record_positions is not None else np.arange(y.size)
    source = archive.sources[0].name if archive.sources else "the level-1 file"
    fam.check(y, trials, exposure, {"file": source, "outcome": spec.outcome,
                                    "trials": fit.trials, "exposure": fit.exposure, "rows": rows})
    tau = fit.tau or spec.options.tau
    reml = spec.method == "REML"
    check_separation_levels(spec, design, y, trials, fam.link, source, rows)
    glm = LevelsGLMData(as_levels(design.data), fam, trials, None if exposure is None else np.log(exposure))
    if (fit.estimation.value if fit.estimation is not None else "pql") == "laplace":
        weights = _weights(archive, design, fit)
        if weights is None:
            return design, *_laplace(glm, fit, tau, spec.options.max_iterations, fixed_map=fixed_map)
        from ..data.weights import weighted_data

        nested, h = _laplace(glm, fit, tau, spec.options.max_iterations, replace(glm, data=weighted_data(design, weights)),
                             fixed_map=fixed_map)
        return design, nested, replace(h, weights=weights)
    if fit.estimation is not None and fit.estimation.value == "agq":
        from .hglm_levels_agq import agq_fit_levels

        if fixed_map is not None:  # capabilities.check refuses it first; never fitted unconstrained
            raise ModelError("--constrain: not built for a three-level HGLM by AGQ")

        nested, res = agq_fit_levels(glm, fit, spec.options.max_iterations, tau == "diagonal")
        return design, nested, HGLMLevels(fam.name, fam.link, "agq", False, False, 1.0, 0, None, fit.trials,
                                          fit.exposure, list(res.failed), deviance=res.deviance, nodes=res.nodes,
                                          quadrature=res.quadrature, laplace_deviance=res.laplace_deviance)
    try:
        res = pql_levels(glm, reml=reml, overdispersion=bool(fit.overdispersion), diagonal=tau == "diagonal",
                         max_iterations=spec.options.max_iterations, fixed_map=fixed_map)
    except FloatingPointError as exc:
        raise ModelError(f"the PQL fit broke down: {exc}; check for units whose outcomes are all 0 or all 1, or "
                         "predictors that separate the outcome") from None
    message = "; ".join(res.failed) if res.failed else res.fit.message
    nested = replace(res.fit, sigma2=res.sigma2, deviance=float("nan"), converged=bool(res.converged),
                     message=message, n_params=res.fit.n_params)
    if not res.converged and res.fit.certificate.certified:
        nested.certificate = replace(res.fit.certificate, certified=False, failed=list(res.failed))
    return design, nested, HGLMLevels(fam.name, fam.link, "pql", reml, bool(fit.overdispersion), res.sigma2,
                                      res.macro_iterations, res.check, fit.trials, fit.exposure, list(res.failed))


def _weights(archive, design, fit):
    """The resolved sampling weights of a Laplace fit (--weight1/2/3 scaled by --normalize as the linear
    three-level fit scales them: data/weights.resolve_levels), or None."""
    from ..data.weights import resolve_levels
    from .levels_combined import weight_spec_levels

    wspec = weight_spec_levels(3, {1: fit.weight1, 2: fit.weight2, 3: fit.weight3, 4: fit.weight4}, fit.normalize)
    return None if wspec is None else resolve_levels(wspec, archive, design)


def sampling_weights(spec, archive, fit):
    """The resolved sampling weights of a three-level fit's options (for the combined report's lines), or None."""
    from ..data.design_levels import design3

    return _weights(archive, design3(spec, archive), fit)


def _laplace(glm, fit, tau, max_iterations: int, weighted=None, fixed_map=None):
    """The Laplace fit (engine/nested_laplace.py) from one full-PQL step, as (NestedFit, HGLMLevels): the
    PQL fit's NestedFit with the Laplace numbers in place of its own (its reliabilities and homogeneity
    χ² are the working model's, so they are left out). `weighted`: the data with sampling weights, whose
    pseudo-likelihood is fitted from the unweighted PQL start (nested_laplace_weights.py). fixed_map: H of
    --constrain: the PQL start and the Laplace deviance over δ on the records' X·H (γ = Hδ, the linear
    predictor XHδ + Zb is the constrained model's), γ and its covariances given back through H."""
    from ..engine.nested_glmm import pql_levels
    from ..engine.nested_laplace import laplace_levels
    from ..engine.nested_laplace_weights import WeightedNestedLaplace, level_weights

    diagonal = tau == "diagonal"
    try:
        # one PQL macro iteration (the model linearised at the data) is start enough: Newton on the exact
        # gradient does the rest (at 100,000 records the same optimum, 26 evaluations instead of 33 from five
        # macro iterations, and the start costs a quarter: benchmarks/README.md)
        start = pql_levels(glm, reml=False, macroit=1, diagonal=diagonal, max_iterations=max_iterations, check=False,
                           fixed_map=fixed_map)
    except FloatingPointError:
        start = None
    if start is None:
        raise ModelError("the PQL start of the Laplace fit broke down; check for units whose outcomes are all 0 or "
                         "all 1, or predictors that separate the outcome")
    try:
        cond = None if weighted is None else WeightedNestedLaplace(weighted, level_weights(weighted))
        laplace_start = start
        if fixed_map is not None:
            from ..engine.nested_laplace import NestedLaplace

            cond = NestedLaplace(glm) if cond is None else cond
            cond.X, cond.p = cond.X @ fixed_map, fixed_map.shape[1]
            laplace_start = SimpleNamespace(gamma=np.linalg.lstsq(fixed_map, start.gamma, rcond=None)[0],
                                            taus=start.taus)
        res = laplace_levels(glm, laplace_start, diagonal=(diagonal, diagonal), cond=cond)
        if fixed_map is not None:  # back to every γ: γ = Hδ, Cov(γ) = H Cov(δ) H'
            H = fixed_map
            res = replace(res, gamma=H @ res.gamma, cov=H @ res.cov @ H.T, robust_cov=H @ res.robust_cov @ H.T)
    except (FloatingPointError, np.linalg.LinAlgError) as exc:
        raise ModelError(f"the Laplace fit broke down ({exc}); check for predictors that separate the "
                         "outcome") from None
    (b2, b3), (v2, v3) = res.eb, res.eb_var
    q2, q3 = b2.shape[1], b3.shape[1]
    message = "; ".join(res.failed) if res.failed else "certified optimum of the Laplace deviance"
    nested = replace(start.fit, method="ML", diagonal=(diagonal, diagonal), gamma=res.gamma, cov_gamma=res.cov,
                     cov_gamma_robust=res.robust_cov,
                     sigma2=1.0, tau_pi=res.taus[0], tau_beta=res.taus[1], taus=res.taus, deviance=res.deviance,
                     n_params=res.n_params, reliability_pi=np.zeros(0), reliability_beta=np.zeros(0),
                     reliabilities=(np.zeros(0), np.zeros(0)), chi2_pi=[], chi2_beta=[], chi2=([], []),
                     eb_pi=b2, eb_pi_var=v2, eb_beta=b3, eb_beta_var=v3, eb=(b2, b3), eb_var=(v2, v3),
                     certificate=res.certificate, converged=bool(res.converged), iterations=res.iterations,
                     message=message, boundary=_boundary_notes(res.taus, q2, q3), evaluations=res.evaluations,
                     solve=None, standardisation=None)
    fam = glm.family
    h = HGLMLevels(fam.name, fam.link, "laplace", False, False, 1.0, 0, None, fit.trials,
                   fit.exposure, list(res.failed), deviance=res.deviance)
    return nested, h


def _boundary_notes(taus, q2: int, q3: int) -> list[str]:
    """A τ of less than full rank at the optimum, in words (its rank was decided by the certificate's rule)."""
    from ..engine.certificate import Face

    notes = []
    for name, G, q in (("τπ", taus[0], q2), ("τβ", taus[1], q3)):
        if q and Face(G, False).r < q:
            notes.append(f"{name} is singular at the optimum (rank {Face(G, False).r} of {q}): a boundary estimate")
    return notes


# ---------------------------------------------------------------- plausible values and imputed data sets

def run_combined_hglm_levels(spec, archive, fit, source_text: str, load, plausible_values, imputed,
                             allow_unequal: bool, meta: dict, fit_doc, fit_txt=None, tests=()):
    """--plausible-values or --imputed for a three-level HGLM: one fit per outcome column or data set
    (analyse_hglm_levels: PQL, each with its own fixed-point check, or Laplace, each certified, with its
    sampling weights when given, or AGQ, each certified, all with the same number of points: _same_points),
    combined by plausible_levels.py's rules as the linear fits are (Rubin's rules on γ, model-based and
    robust; σ², τ and reliabilities averaged; the Laplace and AGQ deviances averaged, PQL has none, so its
    combined deviance is null). `tests`: --test, by D1 over the fits (Laplace and AGQ; the
    robust covariance only with sampling weights). `load(path)` reads an imputed data set ((archive,
    label)); `fit_doc(design, fit, meta, h)`/`fit_txt` write one fit.
    Returns (the combined document, each fit's text or None)."""
    from .plausible import outcome_columns
    from .plausible_levels import combined_json_levels, same_records
    from ..errors import UsageError

    paths = [p.strip() for item in imputed or () for p in str(item).split(",") if p.strip()]
    if plausible_values and paths:
        raise UsageError("give --plausible-values or --imputed, not both")
    runs = []
    if plausible_values:
        outcomes = outcome_columns(plausible_values, list(archive.names(1)), archive)
        level1 = {str(getattr(t, "name", t.label)).lower() for t in spec.level1}
        columns = {n.lower(): k for k, n in enumerate(archive.names(1))}
        first = np.isnan(archive.levels[0].values[columns[outcomes[0].lower()]])
        for o in outcomes:
            if o.lower() in level1:
                raise ModelError(f"{o} is a plausible value of the outcome and also a level-1 predictor; remove it")
            if not np.array_equal(np.isnan(archive.levels[0].values[columns[o.lower()]]), first):
                raise ModelError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                                 "plausible values must be complete on the same records")
        jobs = [(replace(spec, outcome=o), archive) for o in outcomes]
        labels, source = outcomes, "plausible values"
    else:
        sets = [(archive, source_text)] + [load(path) for path in paths]
        jobs = [(spec, a) for a, _ in sets]
        labels, source = [label for _, label in sets], "imputed data sets"
    runs, refitted = _same_points([analyse_hglm_levels(s, a, fit) for s, a in jobs], jobs, fit)
    if not plausible_values and not allow_unequal:
        same_records([d for d, _, _ in runs], labels)
    docs = [fit_doc(d, f, meta, h) for d, f, h in runs]
    fits = [f for _, f, _ in runs]
    design = runs[0][0]
    n_units = {"level1": design.n, **{f"level{m}": int(fits[0].eb[m - 2].shape[0]) for m in (2, 3)}}
    h0 = runs[0][2]
    hypotheses = combined_tests_levels(fits, spec, tests, robust_only=h0.weights is not None) if tests else None
    if h0.estimation in ("laplace", "agq"):
        doc = combined_json_levels(n_units, fits, docs, meta, source, [str(o) for o in labels], hypotheses,
                                   h0.weights)
    else:  # PQL has no deviance: the fits' NaN placeholders are not averaged (JSON has no NaN)
        doc = combined_json_levels(n_units, [replace(f, deviance=0.0) for f in fits], docs, meta, source,
                                   [str(o) for o in labels], hypotheses)
        doc.update({"deviance": None, "deviances": []})
    doc.update({"hglm": h0.to_json(), "converged": all(bool(f.converged) for f in fits)})
    if h0.estimation == "agq":  # one N for all fits; each fit's own accuracy check is in its document
        doc["hglm"].pop("quadrature")
        doc["hglm"].pop("laplace_deviance")
        doc["hglm"].update({"quadrature_points_given": bool(fit.quadrature_points),
                            "quadrature_refitted": [str(labels[k]) for k in refitted],
                            "quadrature_accurate": all(bool(h.quadrature.accurate) for _, _, h in runs),
                            # False when a fit's N is past the budget, so no check with more points was made
                            "quadrature_checked": all(h.quadrature.check_points is not None for _, _, h in runs)})
    texts = [fit_txt(d, f, meta, h) for d, f, h in runs] if fit_txt is not None else None
    return doc, texts


def _same_points(runs: list, jobs: list, fit) -> list:
    """AGQ fits to combine use one number of points N: Rubin's rules average the estimates and deviances of one
    model, and each N defines its own approximate likelihood. With N chosen adaptively (each fit until its
    deviance moves by at most QUAD_TOL at the next N), the largest N any fit chose is accurate for all, so the
    fits that chose fewer are refitted with it: each is then the single fit with --quadrature-points N.
    Returns (the runs, the positions of the refitted ones)."""
    if not runs or runs[0][2].estimation != "agq" or fit.quadrature_points:
        return runs, []
    points = max(int(h.nodes) for _, _, h in runs)
    refitted = [k for k, (_, _, h) in enumerate(runs) if int(h.nodes) != points]
    more = replace(fit, quadrature_points=points)
    return [analyse_hglm_levels(*jobs[k], more) if k in refitted else run for k, run in enumerate(runs)], refitted


def combined_tests_levels(fits: list, spec, tests, robust_only: bool) -> list[dict]:
    """--test over the fits of a three-level HGLM by D1 (plausible.combined_tests; robust only with
    sampling weights, whose model-based covariance ignores the weights' information)."""
    from types import SimpleNamespace

    from ..language.hypotheses import parse_test
    from .plausible import combined_tests

    hypotheses = [parse_test(t, spec) for t in tests]
    return combined_tests([SimpleNamespace(fixed=SimpleNamespace(gamma=f.gamma, cov=f.cov_gamma,
                                                                 robust_cov=f.cov_gamma_robust)) for f in fits],
                          hypotheses, robust_only=robust_only)
