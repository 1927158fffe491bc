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

from ..errors import ModelError
from . import inference
from .hglm_run import HGLMAnalysis, checked_design, trials_and_exposure, check_column_scales

# capabilities.check refuses PQL first (with the same reason); this guards the engine's own callers
PQL_REFUSAL = ("--family negbinomial: PQL is not available: its working model needs a variance function known up "
               "to a scale, and the negative binomial's (mu + mu^2/theta) depends on the unknown theta; use "
               "--estimation laplace or agq (exact ML, as glmmTMB)")


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


def analyse_negbin(spec, archive, level1_text: str | None = None) -> NegBinAnalysis:
    from ..data.data_checks import check_quadrature
    from ..engine.hglm import working_model
    from ..engine.negbin import NegBinData, NegBinFamily, fit

    opts = spec.options
    if opts.estimation in (None, "pql"):
        raise ModelError(PQL_REFUSAL)
    fam, design = checked_design(spec, archive, level1_text)
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    _, exposure = trials_and_exposure(archive, design, opts, l1file, rows)
    where = {"file": l1file, "outcome": spec.outcome, "trials": None, "exposure": opts.exposure, "rows": rows}
    fam.check(design.y, None, exposure, where)
    B = design.block_design()
    check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    offset = np.log(exposure) if exposure is not None else None
    data = NegBinData(NegBinFamily(design.y), design.L, B, design.offsets, np.flatnonzero(design.random), design.y,
                      None, offset)
    if opts.estimation == "agq":
        if data.q > 3:
            raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use "
                             "--estimation laplace")
        check_quadrature(opts.quadrature_points or None, data.q)
    res = fit(data, opts.estimation, opts.quadrature_points or None, diagonal=opts.tau == "diagonal")
    pf = data.pf
    gamma = res.gamma[:pf]
    data.eta(res.gamma, res.b)  # the family's θ at the optimum
    stats, unit = working_model(data, res.eta)
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, res.tau, stats)
    rse = math.sqrt(res.robust_cov[pf, pf]) if res.robust_cov is not None else math.nan
    return NegBinAnalysis(spec, design, data, opts.estimation, res.nodes, None, res, gamma, res.cov[:pf, :pf],
                          res.robust_cov[:pf, :pf] if res.robust_cov is not None else None, res.tau, None,
                          inference.hlm_fixed_df(design), variance, res.converged, res.b, res.b_var,
                          theta=math.exp(res.gamma[pf]), log_theta_se=math.sqrt(res.cov[pf, pf]),
                          log_theta_robust_se=rse, params=res.gamma.copy())
