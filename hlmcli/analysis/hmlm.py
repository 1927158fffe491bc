"""HLM 7's HMLM (--level1-covariance STRUCTURE --occasion VAR): a two-level model whose level-1 records are
a person's occasions, with a structured within-person covariance Δ over the T occasions (engine/hmlm.py):
unrestricted, homogeneous, heterogeneous by occasion, or first-order autoregressive in the occasion index.

As HLM 7's HMLM output, the homogeneous model (the one engine's certified fit) is printed first, then the
chosen structure's fit: Δ, the implied marginal covariance of a person observed on every occasion, its γ
table, its deviance and the likelihood-ratio test against the homogeneous model. The occasions are the
distinct values of VAR, in increasing order (t = 1..T); AR(1)'s lag is the difference of their indices.
"""

from __future__ import annotations

import numpy as np

from ..engine.hmlm import STRUCTURES, fit_hmlm, group_by_pattern, variance_parameter_covariance, variance_parameters
from ..errors import DataError, ModelError
from ..io.archive import unknown_column
from . import inference
from .pipeline import Analysis, analyse

OPTION = "--level1-covariance"
MAX_OCCASIONS = 30  # HMLM's occasions are a few fixed waves; more distinct values means a time-like variable
MAX_UNRESTRICTED = 10  # T(T+1)/2 = 55 parameters in Δ, each Newton step's Hessian by differences


def occasion_index(archive, design, name: str) -> tuple[np.ndarray, list[float]]:
    """Each record's occasion index 0..T-1 (the distinct values of `name`, increasing) and the values;
    refused in one line when the column is missing, has no value, or a person has an occasion twice."""
    if name not in list(archive.level1_names):
        raise unknown_column(archive, name, DataError(f"--occasion {name}: no such variable in the level-1 file (the "
                                                     "occasion of each record, e.g. 1, 2, 3)"))
    x = np.asarray(archive.level1_column(name), dtype=float)
    x = x if design.record_positions is None else x[design.record_positions]
    if not np.all(np.isfinite(x)):
        raise DataError(f"--occasion {name}: {int((~np.isfinite(x)).sum())} of the records used have no value of "
                        f"{name}; drop them (e.g. mdm build --missing now)")
    values, occ = np.unique(x, return_inverse=True)
    if values.size > MAX_OCCASIONS:
        raise ModelError(f"--occasion {name}: {values.size} distinct values; HMLM's occasions are a few waves "
                         f"(at most {MAX_OCCASIONS}): give the wave number (1, 2, ...), not a time-like variable")
    if values.size < 2:
        raise ModelError(f"--occasion {name}: every record has the same occasion; a repeated-measures covariance "
                         "needs at least 2 occasions")
    person = np.repeat(np.arange(design.n_units), design.sizes)
    key = person * values.size + occ
    dup = np.flatnonzero(np.bincount(key) > 1)
    if dup.size:
        j, t = divmod(int(dup[0]), values.size)
        raise DataError(f"--occasion {name}: unit {design.unit_ids[j]} has occasion {values[t]:g} more than once; "
                        "each person has at most one record per occasion")
    return occ.astype(np.intp), [float(v) for v in values]


def _records(design):
    """y, X (N, p) = each record's row of L_j B_j, Z (N, q), person (N,)."""
    B = design.block_design()
    person = np.repeat(np.arange(design.n_units), design.sizes)
    X = np.einsum("nk,nkp->np", design.L, B[person])
    Z = design.L[:, design.random]
    return design.y.astype(float), X, Z, person


def analyse_hmlm(spec, archive, structure: str, occasion: str, df_method: str = "hlm") -> Analysis:
    """The homogeneous model's certified fit with, in extras["level1_covariance"], the chosen structure's."""
    if structure not in STRUCTURES:
        raise ModelError(f"{OPTION} {structure}: one of {', '.join(STRUCTURES)}")
    a = analyse(spec, archive, df_method)
    design = a.design
    occ, values = occasion_index(archive, design, occasion)
    T = len(values)
    y, X, Z, person = _records(design)
    data = group_by_pattern(y, X, Z, person, occ, T)
    if structure == "unrestricted" and T > MAX_UNRESTRICTED:
        raise ModelError(f"{OPTION} unrestricted: {T} occasions make {T * (T + 1) // 2} parameters in Δ; the "
                         f"unrestricted model is built for at most {MAX_UNRESTRICTED} occasions: use heterogeneous "
                         "or ar1")
    if structure == "unrestricted":
        together = np.zeros((T, T), bool)
        for pat in data.patterns:
            together[np.ix_(pat.occasions, pat.occasions)] = True
        never = np.argwhere(~together)
        if never.size:
            s, t = never[0]
            raise ModelError(f"{OPTION} unrestricted: no person is observed at both occasions {values[s]:g} and "
                             f"{values[t]:g}, so their covariance cannot be estimated; use heterogeneous or ar1")
    r = a.result
    method = r.method
    delta_start = None
    if structure == "unrestricted":  # the homogeneous model's marginal covariance at the occasions' mean Z
        delta_start = _marginal(r.sigma2 * np.eye(T), r.tau, Z, occ, T)
    diagonal = str(getattr(spec.options.tau, "value", spec.options.tau)) == "diagonal"
    f = fit_hmlm(data, structure, method, float(r.sigma2), r.tau, diagonal_tau=diagonal, delta_start=delta_start)
    q_kept = 0 if structure == "unrestricted" else data.q
    n_params = f.n_variance_params + (data.p if method == "ML" else 0)
    se = np.sqrt(np.diag(f.cov_gamma))
    df = np.asarray(a.fixed.df, dtype=float)
    t = f.gamma / se
    p = inference.two_sided_p(t, df)
    record = {
        "structure": structure, "occasion": occasion, "occasions": values, "method": method,
        "deviance": f.deviance, "n_params": int(n_params),
        "fixed_effects": [{"gamma": fx.label, "coefficient": fx.coefficient, "predictor": fx.predictor,
                           "estimate": float(f.gamma[k]), "se": float(se[k]), "t": float(t[k]), "df": float(df[k]),
                           "p": float(p[k])} for k, fx in enumerate(design.fixed)],
        "gamma_covariance": f.cov_gamma.tolist(),
        "delta": f.delta.tolist(),
        "tau": f.tau.tolist() if q_kept else [],
        "marginal": _marginal(f.delta, f.tau if q_kept else np.zeros((0, 0)), Z[:, :q_kept], occ, T).tolist(),
    }
    record["aic"], record["bic"] = inference.information_criteria(f.deviance, data.p, f.n_variance_params, data.n)
    record["variance_parameters"] = variance_parameter_table(f)
    record.update(_structure_fields(f, structure, r, n_params))
    a.extras["level1_covariance"] = record
    if not f.converged:
        r.converged = False
        r.certificate.certified = False
        r.certificate.failed.extend(f"{OPTION} {structure}: {why}" for why in f.failed)
    return a



NO_SANDWICH = "the structured fit has no sandwich covariance of the fixed effects, so HLM 7's robust test is not given"


def structured_tests(record: dict, hypotheses=(), prior_deviance=None, prior_params=None) -> dict:
    """The Wald tests of γ (--test) and the deviance test against a prior model (--compare-deviance) of the
    structured fit an HMLM record holds: the one path's tests_of_gamma fed its γ, model-based Cov(γ), deviance
    and parameter count (Δ's and τ's, and γ's under ML). Stored in the record, not at the top level, whose
    numbers are the homogeneous model's."""
    from .pipeline import tests_of_gamma

    gamma = np.array([fx["estimate"] for fx in record["fixed_effects"]])
    return tests_of_gamma(hypotheses, gamma, np.array(record["gamma_covariance"]), None, prior_deviance,
                          prior_params, float(record["deviance"]), int(record["n_params"]), no_robust=NO_SANDWICH)


def analyse_hmlm_plausible(spec, archive, outcomes: list[str], structure: str, occasion: str,
                           df_method: str = "hlm") -> list[Analysis]:
    """--plausible-values with HMLM: one homogeneous and one structured fit per outcome column."""
    from dataclasses import replace

    from .plausible import check_outcomes

    check_outcomes(spec, archive, outcomes)
    return [analyse_hmlm(replace(spec, outcome=o), archive, structure, occasion, df_method) for o in outcomes]


def combine_structured(analyses: list[Analysis], hypotheses=()) -> dict:
    """The structured fits of M HMLM analyses combined as the other kinds combine theirs (plausible.py):
    Rubin's rules on γ with its model-based covariance (Barnard-Rubin d.f. from each γ's d.f.), Δ, τ, the
    marginal covariance and the deviance averaged over the fits; --test by D1 on the structured γ."""
    from .plausible import RULE, contrast, d1_test, rubin

    records = [a.extras["level1_covariance"] for a in analyses]
    r0 = records[0]
    est = np.array([[fx["estimate"] for fx in r["fixed_effects"]] for r in records])
    cov = np.array([r["gamma_covariance"] for r in records])
    df = np.array([fx["df"] for fx in r0["fixed_effects"]])
    pooled = rubin(est, cov, df)
    keys = ("estimate", "se", "t", "df", "p", "within", "between", "total", "riv", "lambda", "fmi")
    rows = [{"gamma": fx["gamma"], "coefficient": fx["coefficient"], "predictor": fx["predictor"],
             **{key: float(pooled[key][k]) for key in keys}, "df_complete": float(df[k])}
            for k, fx in enumerate(r0["fixed_effects"])]
    mean = lambda key: np.mean([np.asarray(r[key], dtype=float) for r in records], axis=0).tolist()  # noqa: E731
    out = {"structure": r0["structure"], "occasion": r0["occasion"], "occasions": r0["occasions"],
           "method": r0["method"], "m": len(records), "rule": RULE, "fixed_effects": rows,
           "gamma_covariance": pooled["total_covariance"].tolist(), "delta": mean("delta"), "tau": mean("tau"),
           "marginal": mean("marginal"), "deviance": float(np.mean([r["deviance"] for r in records])),
           "deviances": [float(r["deviance"]) for r in records], "n_params": int(r0["n_params"]),
           "converged": all(r["check"]["converged"] for r in records)}
    for key in ("sigma2", "rho", "sigma2_by_occasion"):
        if key in r0:
            out[key] = mean(key)
    tests = []
    for h in hypotheses:
        C, d = contrast(h, est.shape[1])
        tests.append({"label": h.label, "contrast": C.tolist(), "rhs": d.tolist(), "statistic": "D1",
                      "model": d1_test(C, d, est, cov), "robust": None, "covariance": f"model-based: {NO_SANDWICH}"})
    if tests:
        out["hypothesis_tests"] = tests
    return out


def variance_parameter_table(f) -> list[dict] | None:
    """τ's and Δ's parameters (engine.hmlm.variance_parameters) with standard errors by the delta method from
    the deviance's Hessian over θ; None when the point is not a checked optimum (the Hessian is then not an
    information matrix). Names: tau00, tau10, ... (τ_ab, a ≥ b), tau3_00, ... (HMLM2's level-3 τ), sigma2, sigma2_t (occasion t = 1..T), rho,
    delta_st (Δ_st, s ≥ t); an index of 10 or more is set off by an underscore (delta_10_1, tau10_2)."""
    if not f.converged or f.hessian is None:
        return None
    keys, values = variance_parameters(f.theta, f.parameters)
    se = np.sqrt(np.diag(variance_parameter_covariance(f.theta, f.parameters, f.hessian)))
    # two indices side by side while both are one digit (delta_21); from 10 on an underscore between them
    # (delta_10_1), as delta_101 would read as Δ(1, 01) or Δ(10, 1)
    pair = lambda a, b: f"{a}{b}" if a < 10 and b < 10 else f"{a}_{b}"  # noqa: E731
    name = {"tau": lambda a, b: f"tau{pair(a, b)}", "tau3": lambda a, b: f"tau3_{pair(a, b)}",
            "delta": lambda s, t: f"delta_{pair(s + 1, t + 1)}",
            "sigma2": lambda *t: f"sigma2_{t[0] + 1}" if t else "sigma2", "rho": lambda: "rho"}
    return [{"parameter": name[k[0]](*k[1:]), "estimate": float(v), "se": float(e)} for k, v, e in zip(keys, values, se)]


def _structure_fields(f, structure: str, r, n_params: int) -> dict:
    """What an HMLM record adds to its γ table, at two levels and three: the fit's own check, the structure's
    variance parameters, and the likelihood-ratio test against the homogeneous fit `r` (or, for the
    homogeneous structure, that fit's deviance: the same model, so a check of this engine)."""
    out = {"check": {"converged": bool(f.converged), "failed": list(f.failed),
                     "gradient_max": float(np.max(np.abs(f.gradient))) if f.gradient is not None else None,
                     "hessian_min_eigenvalue": f.hessian_min_eigenvalue, "decrement": f.decrement,
                     "evaluations": int(f.evaluations)}}
    if structure in ("homogeneous", "ar1"):
        out["sigma2"] = float(f.delta[0, 0])
    if structure == "ar1":
        out["rho"] = float(f.delta[0, 1] / f.delta[0, 0])
    if structure == "heterogeneous":
        out["sigma2_by_occasion"] = [float(v) for v in np.diag(f.delta)]
    if structure == "homogeneous":
        out["homogeneous_engine_deviance"] = float(r.deviance)
        return out
    chi2, dft, p_lr = inference.deviance_test(float(r.deviance), int(r.n_params), f.deviance, int(n_params)) \
        if n_params > r.n_params else (float(r.deviance - f.deviance), int(n_params - r.n_params), float("nan"))
    out["test"] = {"deviance_homogeneous": float(r.deviance), "params_homogeneous": int(r.n_params),
                   "deviance": f.deviance, "params": int(n_params), "chi2": float(chi2), "df": int(dft),
                   "p": float(p_lr)}
    return out


def _marginal(delta, tau, Z, occ, T) -> np.ndarray:
    """ZτZ' + Δ for a person observed on every occasion, Z at each occasion's mean over the records."""
    if not tau.size:
        return np.array(delta, dtype=float)
    Zbar = np.vstack([Z[occ == t].mean(axis=0) for t in range(T)])
    return delta + Zbar @ tau @ Zbar.T


# ---------------------------------------------------------------- HMLM2: persons within level-3 units

def nested_records(data):
    """From three-level data (engine.nested.NestedData): y, X (N, p) in the engine's γ order (π, then its
    β, then its level-3 terms), Z (N, q2) the random πs' columns, W (N, q3) the random βs' columns, each
    record's person (level-2 unit) and level-3 unit."""
    A, X2, W3 = data.A, data.X2, data.W3
    person = np.asarray(data.unit2)
    top = np.asarray(data.unit3)[person]
    one = np.ones(person.size)
    X, Z, W = [], [], []
    for pi in data.layout.pis:
        a = one if pi.level1_col is None else A[:, pi.level1_col]
        if pi.random:
            Z.append(a)
        for b in pi.betas:
            ab = a if b.level2_col is None else a * X2[person, b.level2_col]
            if b.random:
                W.append(ab)
            for s in b.level3_cols:
                X.append(ab if s is None else ab * W3[top, s])
    stack = lambda cols: np.column_stack(cols) if cols else np.empty((person.size, 0))  # noqa: E731
    return np.asarray(data.y, float), stack(X), stack(Z), stack(W), person, top


def analyse_hmlm2(analysis, archive, structure: str, occasion: str) -> None:
    """HMLM2: a three-level analysis (levels_results.LevelsAnalysis, the homogeneous HLM3 fit) gets, in
    extras["level1_covariance"], the fit with the chosen within-person Δ and the same random effects."""
    if structure not in STRUCTURES:
        raise ModelError(f"{OPTION} {structure}: one of {', '.join(STRUCTURES)}")
    if structure == "unrestricted":
        raise ModelError(f"{OPTION} unrestricted: with a level above the persons HMLM2 keeps their random effects; "
                         "use heterogeneous or ar1 (or fit the unrestricted model at two levels)")
    design, r = analysis.design, analysis.fit
    data = design.data
    y, X, Z, W, person, top = nested_records(data)

    class _Persons:  # what occasion_index reads of a two-level design: the persons and the records kept
        n_units = int(person.max()) + 1
        sizes = np.bincount(person, minlength=int(person.max()) + 1)
        unit_ids = list(design.unit2_ids)
        record_positions = design.record_positions

    occ, values = occasion_index(archive, _Persons, occasion)
    T = len(values)
    grouped = group_by_pattern(y, X, Z, person, occ, T, W=W, top=top)
    diagonal = bool(r.diagonal and r.diagonal[0])
    f = fit_hmlm(grouped, structure, r.method, float(r.sigma2), r.tau_pi, diagonal_tau=diagonal, tau3=r.tau_beta)
    n_params = f.n_variance_params + (grouped.p if r.method == "ML" else 0)
    se = np.sqrt(np.diag(f.cov_gamma))
    df = np.asarray(r.df_gamma, dtype=float)
    from ..language.equations_levels import COEF_LETTERS, symbol
    t = f.gamma / se
    p = inference.two_sided_p(t, df)
    labels = [(idx, "", "") for idx in _gamma_index3(data)]
    record = {
        "structure": structure, "occasion": occasion, "occasions": values, "method": r.method, "levels": 3,
        "deviance": f.deviance, "n_params": int(n_params),
        "fixed_effects": [{"gamma": symbol(COEF_LETTERS[2], idx), "coefficient": c, "predictor": pr,
                           "estimate": float(f.gamma[k]), "se": float(se[k]), "t": float(t[k]), "df": float(df[k]),
                           "p": float(p[k])} for k, (idx, c, pr) in enumerate(labels)],
        "gamma_covariance": f.cov_gamma.tolist(), "delta": f.delta.tolist(), "tau": f.tau.tolist(),
        "tau_level3": f.tau3.tolist() if f.tau3 is not None else [],
        "marginal": _marginal(f.delta, f.tau, Z, occ, T).tolist(),
    }
    record["aic"], record["bic"] = inference.information_criteria(f.deviance, grouped.p, f.n_variance_params,
                                                                  grouped.n)
    record["variance_parameters"] = variance_parameter_table(f)
    record.update(_structure_fields(f, structure, r, n_params))
    analysis.extras["level1_covariance"] = record
    if not f.converged:
        r.converged = False
        cert = r.certificate
        if cert is not None and hasattr(cert, "failed"):
            cert.certified = False
            cert.failed.extend(f"{OPTION} {structure}: {why}" for why in f.failed)
        else:
            r.message = "; ".join(f"{OPTION} {structure}: {why}" for why in f.failed)


def _gamma_index3(data) -> list:
    """(p, q, s) of each γ in the engine's order, for equations_levels.symbol (γ_pqs)."""
    return [(p_, q_, s_) for p_, pi in enumerate(data.layout.pis) for q_, b in enumerate(pi.betas)
            for s_ in range(len(b.level3_cols))]
