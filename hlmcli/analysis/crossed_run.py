"""A cross-classified fit from a formula and a table: the design, the certified fit, and what is
reported of it (HLM 7's HCM2 tables: fixed effects with their standard errors and t-ratios, the τ of
each grouping factor, σ², the deviance), as one record the text, the JSON and the API read."""

from __future__ import annotations

from types import SimpleNamespace

import re
from dataclasses import dataclass, field

import numpy as np

from ..data.crossed_design import CrossedDesign, design
from ..engine.crossed import CrossedFit, fit_crossed
from ..engine.nested_fit import BOUNDARY_CORR, tau_names
from ..errors import ModelError
from ..language.formula import CrossedFormula


@dataclass
class CrossedAnalysis:
    """One cross-classified fit and what the options asked of it: d.f. of the fixed effects (None, or
    Satterthwaite's), the Wald tests of θ and the likelihood-ratio test against a prior deviance (extras)."""
    formula: str
    model: CrossedFormula
    design: CrossedDesign
    fit: CrossedFit
    source: str
    title: str | None = None
    df: np.ndarray | None = None
    df_method: str = "none"
    extras: dict = field(default_factory=dict)
    hcm2: object | None = None  # language.hcm2.HCM2Model when the model was written in HCM2's equations

    @property
    def labels(self) -> list[str]:
        """HCM2's labels of the fixed effects, as the text prints them: THETA0, THETA1, ..."""
        return [f"THETA{k}" for k in range(len(self.fit.gamma))]

    @property
    def p_values(self) -> np.ndarray | None:
        """Two-sided p-values of the t-ratios on the d.f. (None without d.f.)."""
        if self.df is None:
            return None
        from .inference import two_sided_p

        return two_sided_p(self.t_ratios, self.df)

    @property
    def n_params(self) -> int:
        """HLM's count of estimated parameters: σ² and τ's free entries, plus the fixed effects under ML."""
        n = self.fit.n_parameters
        p = len(self.fit.gamma) if self.fit.n_free is None else self.fit.n_free
        return n - p if self.fit.method == "REML" else n

    @property
    def certified(self) -> bool:
        return bool(self.fit.certificate.certified)

    @property
    def failures(self) -> list[str]:
        """What the certificate found, with each τ block named by its factor (the nested search names the
        blocks τπ, τβ, … after the levels of a nested model)."""
        names = tau_names(len(self.fit.factors) + 1)
        out = []
        for line in self.fit.certificate.failed:
            for name, factor in sorted(zip(names, self.fit.factors), key=lambda p: -len(p[0])):
                line = line.replace(name, f"tau({factor})")
            out.append(line)
        return out

    @property
    def t_ratios(self) -> np.ndarray:
        return self.fit.gamma / self.fit.se

    def boundary_notes(self) -> list[str]:
        """What lies on the boundary, in the factors' words: a zero variance, or a ±1 correlation."""
        notes = []
        for name, cols, tau, rank in zip(self.fit.factors, self.fit.columns, self.fit.taus,
                                         self.fit.certificate.ranks):
            before = len(notes)  # each singular factor gets its note, whatever earlier factors said
            q = tau.shape[0]
            if rank == q:
                continue
            if rank == 0:
                notes.append(f"the variance of {name}'s random effects is 0 (on the boundary)")
                continue
            sd = np.sqrt(np.clip(np.diag(tau), 0.0, None))
            for a in range(q):
                if sd[a] == 0 or tau[a, a] <= 1e-12 * max(float(np.max(np.diag(tau))), 1e-300):
                    notes.append(f"the variance of {cols[a]} across {name} is 0 (on the boundary)")
            for a in range(q):
                for b in range(a):
                    if sd[a] > 0 and sd[b] > 0 and abs(tau[a, b] / (sd[a] * sd[b])) >= BOUNDARY_CORR:
                        notes.append(f"the correlation of {cols[b]} and {cols[a]} across {name} is "
                                     f"{'+' if tau[a, b] > 0 else '-'}1 (τ is singular: on the boundary)")
            if len(notes) == before:
                notes.append(f"τ of {name} is singular (rank {rank} of {q}): on the boundary")
        return notes


def analyse_crossed(table, model: CrossedFormula, formula: str, method: str = "REML",
                    max_iterations: int | None = None, title: str | None = None, df_method: str = "none",
                    tests=(), prior_deviance: float | None = None, prior_params: int | None = None,
                    hcm2=None, constraints=()) -> CrossedAnalysis:
    """The certified fit of a crossed model and what the options ask of it: Satterthwaite's d.f.
    (df_method="satterthwaite"), Wald tests of θ (`tests`, as --test writes them), the likelihood-ratio test
    against a prior model's deviance. constraints: --constrain's ties among θs, named as --test names them
    ('THETA1 = THETA2'): the fit on X·H (constrained.py), given back in every θ; the Wald tests are of the
    free θs, Satterthwaite's d.f. those of the free θ each θ is, and the ties are tested by ML."""
    if df_method not in ("none", "satterthwaite"):
        raise ModelError(f"--df {df_method}: a cross-classified fit takes --df satterthwaite (lmerTest's d.f.); "
                         "HCM2's own d.f. rule is not published, so t-ratios are printed without d.f. otherwise")
    hypotheses = [parse_theta_test(t, len(model.fixed), fixed_names(model)) for t in tests]
    if prior_deviance is not None and prior_params is None:
        raise ModelError("a prior deviance needs the prior model's number of parameters (--compare-params)")
    d = design(table, model)
    parsed = None
    if constraints:
        from .constrained import constraints_from

        names = [f"THETA{k}" for k in range(len(model.fixed))]
        parsed = constraints_from(constraints, lambda t: parse_theta_test(t, len(model.fixed), fixed_names(model)),
                                  names)
    fit = _fit(table, d, method, max_iterations, parsed)
    a = CrossedAnalysis(formula, model, d, fit, str(table.path), title, hcm2=hcm2)
    if df_method == "satterthwaite":
        a.df, a.df_method = satterthwaite_df(fit), "satterthwaite"
    if parsed is None:
        a.extras = theta_extras(a, hypotheses, prior_deviance, prior_params)
        return a
    from dataclasses import replace

    from ..engine.nested_fit import free_df
    from .constrained import constraint_record, expand_estimates, free_hypotheses, likelihood_ratio_record

    basis = parsed.basis
    free = list(basis.free)
    # the tests of the free θs, on the fit in δ; then everything given back in every θ
    view = SimpleNamespace(fit=SimpleNamespace(gamma=fit.gamma, gamma_cov=fit.gamma_cov, deviance=fit.deviance),
                           n_params=a.n_params)
    a.extras = theta_extras(view, free_hypotheses(parsed, hypotheses), prior_deviance, prior_params)
    for entry, h in zip(a.extras.get("hypothesis_tests", []), hypotheses):
        entry["contrast"] = [list(r) for r in h.rows]  # as typed, over every θ
    gamma, cov, _ = expand_estimates(basis, fit.gamma, fit.gamma_cov)
    a.fit = replace(fit, gamma=gamma, gamma_cov=cov, fixed_names=tuple(d.fixed_names), n_free=len(free))
    if a.df is not None:
        a.df = free_df(a.df, basis.H)
    a.extras["constraints"] = constraint_record(parsed, [f"THETA{k}" for k in range(len(gamma))])

    def ml(H):  # REML deviances of different fixed effects are not comparable: the test is by ML
        f = _fit(table, d, "ML", max_iterations, None if H is None else parsed)
        return SimpleNamespace(converged=bool(f.certificate.certified), deviance=f.deviance, n_params=f.n_parameters)

    refit = method != "ML"
    constrained = ml(basis.H) if refit else SimpleNamespace(converged=a.certified, deviance=fit.deviance,
                                                            n_params=fit.n_parameters)
    a.extras["constraint_test"] = likelihood_ratio_record(parsed, constrained, ml(None), refit)
    return a


def _fit(table, d, method: str, max_iterations, constraints=None):
    """fit_crossed on the design's X, or on X·H under --constrain (the free θs' columns)."""
    X, names = d.X, d.fixed_names
    if constraints is not None:
        X, names = d.X @ constraints.basis.H, [d.fixed_names[i] for i in constraints.basis.free]
    try:
        return fit_crossed(d.y, X, names, d.terms, method, max_iterations or 1000)
    except ModelError as exc:
        if str(exc).startswith("the outcome is"):  # name the file and the column
            raise ModelError(f"{table.path}, column {d.outcome}: {exc}") from None
        raise


def fixed_names(model: CrossedFormula) -> list[str]:
    """The fixed effects' names as the tables print them (INTRCPT, verbal, verbal:female, ...)."""
    return ["INTRCPT" if t == ("1",) else ":".join(t) for t in model.fixed]


# ---------------------------------------------------------------- tests of θ

_THETA = re.compile(r"^([+-]?)(\d+(?:\.\d*)?(?:e[+-]?\d+)?)?\*?(?:theta|θ|t)(\d+)$", re.I)


def parse_theta_test(text: str, p: int, names=()):
    """'THETA1 = 0, THETA2 - THETA1 = 0' (θ1 and t1 too; as --test writes restrictions) -> a Hypothesis
    over the p fixed effects, in the fit's order."""
    from ..language.hypotheses import Hypothesis

    known = ", ".join(f"THETA{k}" + (f" ({n})" if k < len(names) else "") for k, n in enumerate(names)) or \
        ", ".join(f"THETA{k}" for k in range(p))
    rows, rhs = [], []
    for restriction in [r for r in text.split(",") if r.strip()]:
        if restriction.count("=") != 1:
            raise ModelError(f"--test '{text}': each restriction needs one '=', e.g. 'THETA1 = 0'")
        left, right = restriction.split("=")
        try:
            value = float(right.strip())
        except ValueError:
            value = float("nan")
        if not np.isfinite(value):
            raise ModelError(f"--test '{text}': the right side of '{restriction.strip()}' must be a finite number")
        row = [0.0] * p
        pieces = re.findall(r"[+-]?[^+-]+", left.replace(" ", ""))
        if not pieces:
            raise ModelError(f"--test '{text}': '{restriction.strip()}' has nothing to test")
        for piece in pieces:
            m = _THETA.match(piece)
            if not m:
                raise ModelError(f"--test '{text}': cannot read '{piece}'; a cross-classified fit's fixed effects are "
                                 f"{known}")
            k = int(m.group(3))
            if k >= p:
                raise ModelError(f"--test '{text}': this model has no THETA{k}; its fixed effects are {known}")
            mult = float(m.group(2)) if m.group(2) else 1.0
            row[k] += (-1.0 if m.group(1) == "-" else 1.0) * mult
        rows.append(tuple(row))
        rhs.append(value)
    if not rows:
        raise ModelError(f"--test '{text}': no restrictions given; write e.g. --test 'THETA1 = 0'")
    return Hypothesis(label=text.strip(), rows=tuple(rows), rhs=tuple(rhs))


def theta_extras(a: CrossedAnalysis, hypotheses, prior_deviance=None, prior_params=None) -> dict:
    """The Wald tests (model-based covariance; a crossed fit has no cluster for a sandwich, so the robust
    entry is null) and the likelihood-ratio test against a prior deviance, as the other fits' extras."""
    from .inference import deviance_test, wald_test

    ex: dict = {}
    tests = []
    for h in hypotheses:
        C = np.array(h.rows, dtype=float)
        rhs = np.array(h.rhs, dtype=float)
        if np.linalg.matrix_rank(C) < C.shape[0]:
            raise ModelError(f"{h.label}: the restrictions are linearly dependent; drop the redundant ones")
        chi2, df, p = wald_test(C, a.fit.gamma, a.fit.gamma_cov, rhs)
        tests.append({"label": h.label, "contrast": C.tolist(), "rhs": rhs.tolist(),
                      "model": {"chi2": chi2, "df": df, "p": p}, "robust": {"chi2": None, "df": None, "p": None}})
    if tests:
        ex["hypothesis_tests"] = tests
    if prior_deviance is not None:
        n = a.n_params
        if prior_params < n:
            chi2, df, p = deviance_test(prior_deviance, prior_params, a.fit.deviance, n)
        else:
            chi2, df, p = deviance_test(a.fit.deviance, n, prior_deviance, prior_params)
        ex["deviance_test"] = {"prior_deviance": prior_deviance, "prior_params": prior_params, "chi2": chi2,
                               "df": df, "p": p}
    return ex


# ---------------------------------------------------------------- Satterthwaite's d.f. (as lmerTest)

def satterthwaite_df(fit: CrossedFit) -> np.ndarray:
    """Per-θ Satterthwaite d.f. as lmerTest computes them for a crossed lmer fit: d.f._k = 2Φ_kk²/(g_k'Ag_k)
    with Φ = Cov(θ̂) as a function of the variance parameters φ, g_k = ∂Φ_kk/∂φ and A = 2H⁺, H the
    Hessian of the deviance in φ at fixed σ (γ profiled out; REML or ML as fitted).

    φ = (the lower triangle of each factor's Λ_b, σ) in the coordinates the search ran in (each factor's
    random columns centred and scaled, X orthonormalised, y scaled: engine.crossed), as for nested fits
    (inference.satterthwaite_df, which says why: in the interior any parametrisation gives the same
    d.f.; at a boundary these are free of the user's coding). H from central differences of the analytic
    gradient (∂d/∂Λ_b = 2Γ_bΛ_b, ∂d/∂σ = (2/σ)(ν − pwrss/σ²)), g from central differences of Φ."""
    from ..engine.crossed import CrossedSolve
    from .inference import satterthwaite_from_hessian

    from ..engine.search import chol_psd

    st, us = fit.stats, fit.solve
    reml = fit.method == "REML"
    # lme4's θ is the lower-triangular Cholesky factor (the search's own factor is V·√Λ, not triangular)
    lams = [chol_psd(0.5 * (G + G.T)) for G in fit.G]
    idx = [np.tril_indices(lam.shape[0]) for lam in lams]
    s0 = float(np.sqrt(us.sigma2_hat(reml)))
    x0 = np.concatenate([lam[i] for lam, i in zip(lams, idx)] + [[s0]])
    steps = np.array([1e-4 * max(abs(v), 1e-2) for v in x0[:-1]] + [1e-4 * s0])
    nu = us.dof(reml)
    Rinv = np.linalg.inv(st.R)  # θ = R⁻¹(Q'y + cθ̃): row k of R⁻¹ carries θ̃'s covariance to θ_k's

    def at(x):
        out, at_ = [], 0
        for lam, i in zip(lams, idx):
            m = np.zeros_like(lam)
            m[i] = x[at_:at_ + len(i[0])]
            out.append(m)
            at_ += len(i[0])
        return CrossedSolve(st, out), out, x[-1] ** 2

    def gradient(x):
        solve, ls, s2 = at(x)
        parts = [(2.0 * G @ lam)[i] for G, lam, i in zip(solve.gradients_at(reml, s2), ls, idx)]
        return np.concatenate(parts + [[2.0 / x[-1] * (nu - solve.pwrss / s2)]])

    def var_theta(x):
        solve, _, s2 = at(x)
        return st.c ** 2 * np.einsum("ka,ab,kb->k", Rinv, solve.gamma_covariance_std(s2), Rinv)

    m = x0.size
    hess = np.zeros((m, m))
    jac = np.zeros((st.p, m))
    for i in range(m):
        xp, xm = x0.copy(), x0.copy()
        xp[i] += steps[i]
        xm[i] -= steps[i]
        hess[:, i] = (gradient(xp) - gradient(xm)) / (2 * steps[i])
        jac[:, i] = (var_theta(xp) - var_theta(xm)) / (2 * steps[i])
    return satterthwaite_from_hessian(0.5 * (hess + hess.T), jac, var_theta(x0))
