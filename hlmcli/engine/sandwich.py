"""The robust (sandwich) covariance of γ̂ under sampling weights, shared by the two-level fit
(inference.fixed_effects) and the nested fit of three and more levels (nested_fit)."""

from __future__ import annotations

import numpy as np


def weighted_sandwich(xve: np.ndarray, w2: np.ndarray, Pinv: np.ndarray) -> np.ndarray:
    """The pseudo-ML sandwich of γ̂ as WeMix 4.0.4 computes it (analyticSolve, robustSE=TRUE):
    Cov = H⁻¹ (J/(J−1)) Σ_j s_js_j' H⁻¹, with s_j the derivative of unit j's weighted
    pseudo-log-likelihood in γ, w_j X_j'W_jV_j⁻¹e_j, and H⁻¹ = σ²P⁻¹ its inverse information.
    σ² cancels: Cov = J/(J−1) P⁻¹ (Σ_j w_j² (σ²X_j'V_j⁻¹e_j)(…)') P⁻¹. Clustered at level 2."""
    J = xve.shape[0]
    s = xve * w2[:, None]
    return (J / (J - 1.0)) * (Pinv @ (s.T @ s) @ Pinv)
