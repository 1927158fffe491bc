"""--emulate hlm6: HLM 5/6's own iteration run beside the certified fit, to show the numbers HLM prints and how
far they are from the optimum. The emulated point is never the fit's answer: the main tables stay the certified
optimum, and this record says what the emulation is and what it reproduces.

What is reconstructed (engine/hlm_em.py; tests/data/published/hlm_iterations.json):
- ML: HLM's starting values, Laird, Lange & Stram's EM step and HLM 6's stop rule on its printed log-likelihood
  (ln(2π)/2 above the true one for ML). Reproduces HLM 6.06's Singer & Willett Table 3.3 to every printed digit,
  with the same iteration count (1493).
- REML: the same start and rule with Dempster, Rubin & Tsutakawa's REML EM step; HLM's REML path is slower than
  this step, so HSB's unconditional model (HLM 6.04, 4 iterations) is reproduced to 4 of 5 decimals of σ² and 2
  of τ, stopping one iteration early (3).
"""

from __future__ import annotations

import math

import numpy as np

from ..engine.hlm_em import hlm6_run, starting_values
from ..errors import RefusedOption
from ..engine.objective import factor
from ..engine.unitsolve import unit_solve

HALF_LN_2PI = 0.5 * math.log(2 * math.pi)  # HLM 5/6 print the ML log-likelihood this much above the true one
# HLM's iteration limit (numit) when none is given: Singer & Willett's published run took 1493 iterations, so
# HLM 6's limit was above that there; 10000 lets every published run at hand finish by the stop rule, and a run
# that reaches the limit says so.
DEFAULT_LIMIT = 10000
STATEMENT = ("HLM 5/6's EM path (start, EM step and stop rule reconstructed from published HLM 6 output); "
             "not an optimum")
REML_NOTE = ("REML: HLM's REML path is reproduced only approximately: on HSB's unconditional model (HLM 6.04) "
             "this gives σ² to 4 of HLM's 5 printed decimals and τ to 2, one iteration before HLM's 4")


def emulate_hlm6(a, limit: int | None = None) -> dict:
    """The emulation record of a certified two-level linear fit `a` (pipeline.Analysis), JSON-ready."""
    stats, r = a.stats, a.result
    reml = r.method.upper() == "REML"
    offset = 0.0 if reml else HALF_LN_2PI
    limit = limit or DEFAULT_LIMIT

    def loglik(sigma2, tau):  # as HLM 5/6 print it
        return -unit_solve(stats, factor(tau / sigma2)).deviance(sigma2, reml) / 2 + offset

    K = a.unit.LL.shape[1]
    if stats.q == 0:
        raise RefusedOption("--emulate hlm6: the model has no random effect, and HLM's EM iterates on τ; drop --emulate")
    if not any(a.unit.n[j] > K and np.linalg.matrix_rank(a.unit.LL[j]) == K for j in range(len(a.unit.n))):
        raise RefusedOption(f"--emulate hlm6: HLM's starting values need units whose level-1 OLS is computable "
                            f"(more than {K} records and a full-rank level-1 design), and no unit has one; drop --emulate")
    s0, t0, _ = starting_values(a.unit.n, a.unit.LL, a.unit.Ly, a.unit.yy, a.design.W, a.design.random)
    with np.errstate(divide="raise", over="raise", invalid="raise"):  # underflow is harmless here
        try:
            k, sigma2, tau, by_rule = hlm6_run(stats, s0, t0, loglik, reml, limit)
        except (FloatingPointError, np.linalg.LinAlgError):
            raise RefusedOption("--emulate hlm6: HLM's EM path breaks down on this model (a singular step from "
                                "HLM's start); the certified fit does not depend on it: drop --emulate") from None
    us = unit_solve(stats, factor(tau / sigma2))
    gamma = a.unit.on_outcome_scale(us.gamma)
    se = np.sqrt(np.diag(sigma2 * us.Pinv()))
    deviance = us.deviance(sigma2, reml)
    fixed = [{"gamma": f.label, "estimate": float(gamma[i]), "se": float(se[i]),
              "estimate_optimum": float(a.fixed.gamma[i]), "se_optimum": float(a.fixed.se[i])}
             for i, f in enumerate(a.design.fixed)]
    out = {"program": "hlm6", "statement": STATEMENT, "method": r.method,
           "iterations": int(k), "iteration_limit": int(limit), "stopped_by_rule": bool(by_rule),
           "stop_rule": "|l(k-1) - l(k-2)| < 1e-8 |l(k-1)|, l the log-likelihood as HLM 5/6 print it",
           "loglik_hlm": float(-deviance / 2 + offset), "loglik_offset": offset,
           "sigma2": float(sigma2), "tau": np.asarray(tau).tolist(), "sigma2_optimum": float(r.sigma2),
           "tau_optimum": np.asarray(r.tau).tolist(), "fixed_effects": fixed,
           "deviance": float(deviance), "deviance_optimum": float(r.deviance),
           "deviance_gap": float(deviance - r.deviance)}
    if reml:
        out["note"] = REML_NOTE
    return out
