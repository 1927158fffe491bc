"""Negative binomial counts (--family negbinomial, glmmTMB's nbinom2: Var = μ + μ²/θ, log link): the
Laplace or AGQ fit (engine/negbin.py) with the dispersion θ, and its standard error, beside γ and τ
(printed by report/report_negbin.py). The engine's parameters are (γ, log θ); θ's SE is the delta
method's, θ·SE(log θ).

HLM 7 has no negative binomial model, and no PQL for it: PQL's working model needs a variance function
known up to a scale, and NB2's depends on the unknown θ (a quasi-likelihood fit would not be the
model the likelihood fits), so only Laplace and AGQ are offered, as glmmTMB does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from ..errors import ModelError, RefusedOption
from . import inference
from .hglm_run import (HGLMAnalysis, check_column_scales, check_separation, checked_design, resolve_weights,
                       trials_and_exposure)

# θ beyond this many times the largest fitted mean: μ²/θ adds under 1e-6 of μ to any record's variance, so
# the counts show no over-dispersion the Poisson model lacks; the NB likelihood keeps rising towards its
# Poisson limit (θ = ∞, a boundary outside the (γ, log θ) space the certificate checks), and at such θ its
# terms cancel (lgamma(y + θ) − lgamma(θ) and θ·log θ against (y + θ)·log(θ + μ)) to ~1e-16·θ·log θ each.
THETA_POISSON = 1e6

# capabilities.check refuses PQL first (with the same reason); this guards the engine's own callers
PQL_REFUSAL = ("--family negbinomial: PQL is not available: its working model needs a variance function known up "
               "to a scale, and the negative binomial's (mu + mu^2/theta) depends on the unknown theta; use "
               "--estimation laplace or agq (exact ML, as glmmTMB)")


def _poisson_limit(theta: float) -> str:
    return (f"--family negbinomial: the dispersion θ runs to infinity (θ = {theta:.3g} where the search stopped): the "
            "counts show no over-dispersion beyond the Poisson's, so the negative binomial likelihood has its maximum "
            "only in the Poisson limit; fit --family poisson")


@dataclass
class NegBinAnalysis(HGLMAnalysis):
    """An HGLM analysis with the dispersion θ of the NB2 model (Var = μ + μ²/θ)."""

    theta: float = math.nan
    log_theta_se: float = math.nan
    log_theta_robust_se: float = math.nan
    params: np.ndarray | None = None  # (γ, log θ) as the engine fits them

    @property
    def theta_se(self) -> float:
        return self.theta * self.log_theta_se

    def level1_table(self):
        """As an HGLM's, with η from (γ, log θ), the engine's parameter vector."""
        from .hglm_run import level1_table

        return level1_table(SimpleNamespace(design=self.design, data=self.data, gamma=self.params, b=self.b))


def analyse_negbin(spec, archive, level1_text: str | None = None, weights=None, constraints=None) -> NegBinAnalysis:
    """weights: a weights.WeightSpec (the pseudo-likelihood of engine/hglm_weights.py), or None.
    constraints: --constrain's (constrained.Constraints): fitted on the design B_jH with θ as usual (the
    linear predictor is linear in γ), then given back in every γ, the d.f. by constrained_df."""
    from ..data.data_checks import check_quadrature
    from ..engine.hglm import working_model
    from ..engine.negbin import NegBinData, NegBinFamily, ThetaOverflow, fit

    opts = spec.options
    if opts.estimation in (None, "pql"):
        raise ModelError(PQL_REFUSAL)
    fam, design = checked_design(spec, archive, level1_text)
    full = design
    if constraints is not None:
        from .constrained import constrained_view

        design = constrained_view(full, constraints.basis)
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    _, exposure = trials_and_exposure(archive, design, opts, l1file, rows)
    where = {"file": l1file, "outcome": spec.outcome, "trials": None, "exposure": opts.exposure, "rows": rows}
    fam.check(design.y, None, exposure, where)
    B = design.block_design()
    if opts.separation == "fit":
        raise RefusedOption("--separation fit: not available for --family negbinomial (a separated coefficient is not "
                         "held at a bound for it); remove or recode the separating predictor, and drop --separation")
    # all-zero counts beyond a threshold of a predictor: its coefficient runs to −∞ for NB2 as for Poisson
    # (the likelihood of y = 0, (θ/(θ + μ))^θ, rises as μ falls), so the count rule of separation.py applies
    check_separation(design, B, None, "log", l1file, files.get("level-2", "the level-2 file"), rows, "refuse",
                     fit_offered=False)
    check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    offset = np.log(exposure) if exposure is not None else None
    resolved, w1, w2 = resolve_weights(weights, archive, design)
    data = NegBinData(NegBinFamily(design.y), design.L, B, design.offsets, np.flatnonzero(design.random), design.y,
                      None, offset, w1, w2)
    if opts.estimation == "agq":
        if data.q > 3:
            raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use "
                             "--estimation laplace")
        check_quadrature(opts.quadrature_points or None, data.q)
    try:
        res = fit(data, opts.estimation, opts.quadrature_points or None, diagonal=opts.tau == "diagonal")
    except ThetaOverflow as exc:
        raise ModelError(_poisson_limit(math.exp(min(float(exc.args[0]), 709.0)))) from None
    pf = data.pf
    gamma = res.gamma[:pf]
    eta = data.eta(res.gamma, res.b)  # the family's θ at the optimum
    theta = math.exp(res.gamma[pf])
    if theta > THETA_POISSON * max(1.0, float(np.exp(eta).max())):
        raise ModelError(_poisson_limit(theta))
    cov, rcov = res.cov[:pf, :pf], res.robust_cov[:pf, :pf] if res.robust_cov is not None else None
    params, df = res.gamma.copy(), inference.hlm_fixed_df(design)
    if constraints is not None:  # back to every γ, on the full design (θ set again by eta)
        from .constrained import constrained_df, expand_estimates

        gamma, cov, rcov = expand_estimates(constraints.basis, gamma, cov, rcov)
        design, df, params = full, constrained_df(full, constraints.basis), np.append(gamma, res.gamma[pf])
        data = NegBinData(NegBinFamily(design.y), design.L, design.block_design(), design.offsets,
                          np.flatnonzero(design.random), design.y, None, offset, w1, w2)
        data.eta(params, res.b)
    stats, unit = working_model(data, res.eta)
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, res.tau, stats)
    rse = math.sqrt(res.robust_cov[pf, pf]) if res.robust_cov is not None else math.nan
    return NegBinAnalysis(spec, design, data, opts.estimation, res.nodes, None, res, gamma, cov, rcov, res.tau, None,
                          df, variance, res.converged, res.b, res.b_var,
                          weights=resolved, theta=math.exp(res.gamma[pf]), log_theta_se=math.sqrt(res.cov[pf, pf]),
                          log_theta_robust_se=rse, params=params)
