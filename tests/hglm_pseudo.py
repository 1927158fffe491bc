"""An independent multilevel pseudo-likelihood of a random-intercept logistic model, written apart from
hlmcli's engine (per-unit modes by scipy's Brent search, integrals by scipy.integrate.quad), the
reference of tests/test_hglm_weights.py and of tests/reference_scripts/hglm_weights_pseudo.py:

    −2 ℓ_w(β, τ) = −2 Σ_j w_j log ∫ exp(Σ_i w_{i|j} [y_ij η_ij − log(1 + e^η_ij)]) φ(u; 0, τ) du,
    η_ij = x_ij'β + u.

`laplace=True` replaces each integral by its Laplace approximation at the mode û_j:
log I_j ≈ g_j(û_j) − û_j²/(2τ) − ½ log τ − ½ log(1/τ + Σ_i w_{i|j} p_ij(1 − p_ij)).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize


def scaled_weights(frame, id_col: str, w1_col: str | None, w2_col: str | None, normalize: str = "cluster"):
    """(w1 per record, w2 per unit in sorted id order), scaled as hlmcli's --normalize cluster/none:
    written here from the rule (level-1 weights to n_j within units, level-2 weights to J)."""
    ids = frame[id_col].to_numpy()
    units = np.unique(ids)
    w1 = np.ones(len(frame)) if w1_col is None else frame[w1_col].to_numpy(float).copy()
    if w1_col is not None and normalize == "cluster":
        for u in units:
            m = ids == u
            w1[m] *= m.sum() / w1[m].sum()
    if w2_col is None:
        w2 = np.ones(units.size)
    else:
        w2 = np.array([frame.loc[ids == u, w2_col].iloc[0] for u in units], dtype=float)
        if normalize == "cluster":
            w2 *= units.size / w2.sum()
    return w1, w2


def _unit_log_integral(eta0, y, w, tau, laplace):
    def h(u):  # the weighted conditional log-likelihood of the unit at its random intercept u
        e = eta0 + u
        return float(np.sum(w * (y * e - np.logaddexp(0.0, e))))

    def g(u):
        return h(u) - u * u / (2 * tau)

    mode = optimize.minimize_scalar(lambda u: -g(u), bracket=(-1.0, 1.0), method="brent",
                                    options={"xtol": 1e-12}).x
    e = eta0 + mode
    p = 1 / (1 + np.exp(-e))
    curv = 1 / tau + float(np.sum(w * p * (1 - p)))
    if laplace:
        return g(mode) - 0.5 * math.log(tau) - 0.5 * math.log(curv)
    top = g(mode)
    sd = 1 / math.sqrt(curv)
    val, _ = integrate.quad(lambda u: math.exp(g(u) - top), mode - 40 * sd, mode + 40 * sd,
                            epsabs=0.0, epsrel=1e-13, limit=200, points=[mode])
    return top + math.log(val) - 0.5 * math.log(2 * math.pi * tau)


def pseudo_deviance(beta, tau, X, y, unit, w1, w2, laplace=False) -> float:
    """−2 Σ_j w_j log I_j; `unit` gives each record's unit index 0..J−1 (w2's order)."""
    eta0 = X @ np.asarray(beta, float)
    total = 0.0
    for j in range(w2.size):
        m = unit == j
        total += w2[j] * _unit_log_integral(eta0[m], y[m], w1[m], tau, laplace)
    return -2.0 * total


def maximise(X, y, unit, w1, w2, start, laplace=False):
    """The pseudo-ML estimates (β, τ) by scipy's BFGS in (β, log τ) with forward-difference gradients,
    polished by Nelder-Mead: other optimizers than hlmcli's Newton search on exact gradients."""
    def f(x):
        return pseudo_deviance(x[:-1], math.exp(x[-1]), X, y, unit, w1, w2, laplace)

    res = optimize.minimize(f, np.asarray(start, float), method="BFGS", options={"gtol": 1e-7, "eps": 1e-7})
    step = 1e-4 * np.maximum(1.0, np.abs(res.x))
    simplex = np.vstack([res.x] + [res.x + np.eye(res.x.size)[k] * step[k] for k in range(res.x.size)])
    res = optimize.minimize(f, res.x, method="Nelder-Mead",
                            options={"initial_simplex": simplex, "xatol": 1e-10, "fatol": 1e-10, "maxfev": 4000})
    return res.x[:-1], math.exp(res.x[-1]), float(res.fun)
