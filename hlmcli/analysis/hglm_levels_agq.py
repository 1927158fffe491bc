"""A three-level HGLM by nested adaptive Gauss-Hermite quadrature (engine/nested_agq.py): the model's
check (a random intercept at each level, nothing else random), the Laplace start, and the NestedFit
the three-level HGLM report reads (hglm_levels.analyse_hglm_levels adds its HGLMLevels)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import ModelError, RefusedOption

SLOPES = ("the nested rule with N points per random effect costs N^(q2+q3) per record, and it is built for a random "
          "intercept at each level (q2 = q3 = 1) only; use --estimation laplace (random slopes at either level) or "
          "drop the random slopes")


def check_random_intercepts(glm) -> None:
    """Nested AGQ needs exactly one random effect (the intercept) at each of levels 2 and 3."""
    from ..engine.nested_glmm import record_columns

    q2, q3 = (Z.shape[1] for Z in record_columns(glm.data).Z)
    if (q2, q3) != (1, 1):
        raise RefusedOption(f"--estimation agq: not available for this three-level HGLM: it has {q2} random effect(s) at "
                           f"level 2 and {q3} at level 3; {SLOPES}")


def agq_fit_levels(glm, fit, max_iterations: int, diagonal: bool = False):
    """The nested AGQ fit from the certified Laplace fit (itself from one full-PQL step, as the Laplace
    column), as (NestedFit, nested_agq.NestedAGQResult); `diagonal` (--tau diagonal) is the same model with one
    random effect per level, and is reported as asked. Its reliabilities and homogeneity χ² are PQL's working
    model's, so they are left out, as for Laplace."""
    from ..data.data_checks import check_quadrature
    from ..engine.nested_agq import agq_levels
    from ..engine.nested_glmm import pql_levels
    from ..engine.nested_laplace import laplace_levels

    check_random_intercepts(glm)
    nodes = int(fit.quadrature_points) if fit.quadrature_points else None  # None: chosen adaptively (as two levels)
    check_quadrature(nodes, 2)  # N at both levels: N² evaluations per record
    try:
        start = pql_levels(glm, reml=False, macroit=1, max_iterations=max_iterations, check=False)
    except FloatingPointError:
        start = None
    if start is None:
        raise ModelError("the PQL start of the AGQ fit broke down; check for units whose outcomes are all 0 or "
                         "all 1, or predictors that separate the outcome")
    try:
        lap = laplace_levels(glm, start)
        res = agq_levels(glm, nodes, laplace=lap)
    except (FloatingPointError, np.linalg.LinAlgError) as exc:
        raise ModelError(f"the AGQ fit broke down ({exc}); check for predictors that separate the outcome") from None
    (b2, b3), (v2, v3) = res.eb, res.eb_var
    message = "; ".join(res.failed) if res.failed else "certified optimum of the adaptive quadrature deviance"
    boundary = [f"{name} is zero at the optimum: a boundary estimate" for name, G in zip(("τπ", "τβ"), res.taus)
                if G[0, 0] <= 0.0]
    nested = replace(start.fit, method="ML", diagonal=(diagonal, diagonal), gamma=res.gamma, cov_gamma=res.cov,
                     cov_gamma_robust=res.robust_cov, sigma2=1.0, tau_pi=res.taus[0], tau_beta=res.taus[1],
                     taus=res.taus, deviance=res.deviance, n_params=res.n_params, reliability_pi=np.zeros(0),
                     reliability_beta=np.zeros(0), reliabilities=(np.zeros(0), np.zeros(0)), chi2_pi=[], chi2_beta=[],
                     chi2=([], []), eb_pi=b2, eb_pi_var=v2, eb_beta=b3, eb_beta_var=v3, eb=(b2, b3), eb_var=(v2, v3),
                     certificate=res.certificate, converged=bool(res.converged), iterations=res.iterations,
                     message=message, boundary=boundary, evaluations=res.evaluations, solve=None,
                     standardisation=None)
    return nested, res
