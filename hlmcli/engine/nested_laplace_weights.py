"""Sampling weights in the three-level HGLM likelihood by Laplace: multilevel pseudo-maximum likelihood
(Pfeffermann et al. 1998; Rabe-Hesketh & Skrondal 2006), as pure functions of arrays.

With w_{i|jk} the level-1 weights, w_{j|k} the level-2 and w_k the level-3 ones (conditional, already
scaled: data/weights.resolve_levels), the pseudo-log-likelihood is

    ℓ_w = Σ_k w_k log ∫ φ(u3) Π_{j∈k} [ ∫ φ(u2) exp(Σ_{i∈j} w_{i|jk} ℓ_i(u2, u3)) du2 ]^{w_{j|k}} du3.

The Laplace approximation. For a given u3 the inner integral of unit j is, by Laplace (the (2π)^{q/2}
of φ and of the Gaussian integral cancel),

    log I_j(u3) ≈ h_j(û2_j) − ½log|A_j|,   h_j(u2) = Σ_i w_i ℓ_i − ½|u2|²,   A_j = I + Σ_i w_iW_i a_ia_i',

and the outer integrand is exp(−½|u3|² + Σ_j w_j log I_j(u3)). As glmer's nAGQ = 1 (and the unweighted
engine), the modes and the outer curvature leave out the u3-dependence of the log|A_j| terms: the
modes maximise, jointly,

    F_k(u2, u3) = −½|u3|² + Σ_j w_j (Σ_{i∈j} w_i ℓ_i − ½|u2_j|²)

(at the maximum over u2_j the factor w_j cancels: û2_j given u3 is the unweighted-at-level-2 mode), and
the outer curvature is the Schur complement of −∂²F_k (the weighted arrowhead with blocks w_jA_j,
w_jB_j, I + Σ_j w_jC_j; B_j = Σ_i w_iW_i a_ib_i', C_j = Σ_i w_iW_i b_ib_i'),

    S_k = I + Σ_j w_j (C_j − B_j'A_j⁻¹B_j).

So −2 times the pseudo-log-likelihood, every constant included, is

    d_w = −2 Σ_k w_k [F_k(û) − ½ Σ_j w_j log|A_j| − ½ log|S_k|] − 2 Σ w_iw_jw_k c_i.

With all weights 1 it is the unweighted deviance (log|H_k| = Σ_j log|A_j| + log|S_k|); with integer
weights it is the deviance of the replicated records (at level 1) or of replicated whole units with
their own random effects (at levels 2 and 3), as every term is then a sum over the copies.

Computation: the unweighted engine (nested_laplace.NestedLaplace) on a transformed problem. With
v_j = √(w_jw_k) u2_j and s_k = √w_k u3_k, w_kF_k = −½|s|² + Σ_j (Σ_i ω_i ℓ_i − ½|v_j|²) with record
weights ω_i = w_iw_jw_k and the loadings a_i/√(w_jw_k), b_i/√w_k. Its Hessian is an unweighted arrowhead
whose diagonal blocks are A_j and whose Schur complement is S_k exactly, so the engine's modes, Newton
steps, solves and exact gradient carry over; only the log-determinants' weights differ: Σ_j w_jw_k log|A_j|
+ Σ_k w_k log|S_k| in place of Σ_j log|A_j| + Σ_k log|S_k|. NestedLaplace takes them as α and β; its
gradient uses α_j log|Hjj| + β_k log|S_k| = β_k log|H_k| + (α_j − β_k) log|Hjj|, so each record's
c_i = α_j a_i'Hjj⁻¹a_i + β_k e_i'S⁻¹e_i and the terms 2W_i m_i take α_j Hjj⁻¹a_i and β_k S⁻¹e_i.

The level-3 units' scores are w_k times each unit's own (the sandwich's weighted scores), with the
J3/(J3 − 1) factor of the weighted linear and two-level fits (as WeMix). EB: the modes û (no weight
moves them but through û3), with Var(u3) = S_k⁻¹ and Var(u2_j) = A_j⁻¹ + A_j⁻¹B_jS_k⁻¹B_j'A_j⁻¹ (the unit's
own records and u3's pseudo-posterior; a unit's weight is not information about its effect).
"""

from __future__ import annotations

import numpy as np

from .hglm_weights import WeightedFamily
from .nested_glmm import LevelsGLMData
from .nested_laplace import NestedLaplace


def level_weights(glm: LevelsGLMData) -> tuple | None:
    """(w1 (N,), w2 (J2,), w3 (J3,)) of the data's sampling weights, ones where none are given; None when
    unweighted."""
    w = glm.data.weights
    if w is None or all(x is None for x in w):
        return None
    sizes = (np.asarray(glm.data.y).size, len(glm.data.parents[1]), int(np.max(glm.data.parents[1])) + 1)
    return tuple(np.ones(n) if x is None else np.asarray(x, dtype=float) for x, n in zip(w, sizes))


class WeightedNestedLaplace(NestedLaplace):
    """The three-level Laplace pseudo-deviance (module docstring), on the transformed problem."""

    def __init__(self, glm: LevelsGLMData, weights: tuple):
        super().__init__(glm)
        w1, w2, w3 = (np.asarray(x, dtype=float) for x in weights)
        self.w1, self.w2, self.w3 = w1, w2, w3
        self.scale2 = np.sqrt(w2 * w3[self.k2])  # v_j = √(w_jw_k) u2_j
        self.scale3 = np.sqrt(w3)  # s_k = √w_k u3_k
        omega = w1 * w2[self.j] * w3[self.k]
        self.family = WeightedFamily(glm.family, omega)
        self.const = self.family.constant(self.y, self.trials)
        self.Z2 = self.Z2 / self.scale2[self.j][:, None]
        self.Z3 = self.Z3 / self.scale3[self.k][:, None]
        self.alpha, self.beta = w2 * w3[self.k2], w3
        self.robust_factor = self.J3 / (self.J3 - 1.0)  # as the weighted linear and two-level fits (WeMix)

    def posterior(self, gamma, L2, L3):
        """(b̂2, Var b2, b̂3, Var b3) of the original effects (module docstring)."""
        A, B, v, s, eta, ev, (Hinv, P, S, _) = self.modes(gamma, L2, L3)
        Sinv = np.linalg.inv(S)
        u2, u3 = v / self.scale2[:, None], s / self.scale3[:, None]
        # P = A_j⁻¹√w_jB_j on the transformed problem, so A_j⁻¹B_jS⁻¹B_j'A_j⁻¹ = PS⁻¹P'/w_j
        V2 = Hinv + P @ Sinv[self.k2] @ P.transpose(0, 2, 1) / self.w2[:, None, None]
        return (u2 @ L2.T, L2 @ V2 @ L2.T, u3 @ L3.T, L3 @ Sinv @ L3.T, eta)
