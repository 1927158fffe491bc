"""An independent multilevel pseudo-likelihood of a random-intercept logistic model, written apart from
hlmcli's engine (per-unit modes by scipy's Brent search polished by Newton, integrals by scipy.integrate.quad), the
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
    for _ in range(3):  # Brent stops within ~1e-11 of the mode: Newton to machine precision, for derivatives
        p = 1 / (1 + np.exp(-(eta0 + mode)))
        mode += (float(np.sum(w * (y - p))) - mode / tau) / (float(np.sum(w * p * (1 - p))) + 1 / tau)
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


def unit_log_integrals(beta, tau, X, y, unit, w1, n_units: int, laplace=False) -> np.ndarray:
    """log I_j per unit; `unit` gives each record's unit index 0..J−1."""
    eta0 = X @ np.asarray(beta, float)
    out = np.empty(n_units)
    for j in range(n_units):
        m = unit == j
        out[j] = _unit_log_integral(eta0[m], y[m], w1[m], tau, laplace)
    return out


def pseudo_deviance(beta, tau, X, y, unit, w1, w2, laplace=False) -> float:
    """−2 Σ_j w_j log I_j; `unit` gives each record's unit index 0..J−1 (w2's order)."""
    return -2.0 * float(w2 @ unit_log_integrals(beta, tau, X, y, unit, w1, w2.size, laplace))


def model_cov(beta, tau, X, y, unit, w1, w2, laplace=True, h=3e-4) -> np.ndarray:
    """(−H)⁻¹ of (β, log τ), H the Hessian of Σ_j w_j log I_j by central second differences (steps
    h·max(1, |x|)); its β block does not depend on how τ is parametrised, at the optimum."""
    x0 = np.append(np.asarray(beta, float), math.log(tau))
    k = x0.size

    def total(x):
        return float(w2 @ unit_log_integrals(x[:-1], math.exp(x[-1]), X, y, unit, w1, w2.size, laplace))

    H = np.empty((k, k))
    steps = h * np.maximum(1.0, np.abs(x0))
    for i in range(k):
        for j in range(k):
            ei, ej = np.eye(k)[i] * steps[i], np.eye(k)[j] * steps[j]
            H[i, j] = (total(x0 + ei + ej) - total(x0 + ei - ej) - total(x0 - ei + ej) + total(x0 - ei - ej)) / (
                4 * steps[i] * steps[j])
    return np.linalg.inv(-0.5 * (H + H.T))


def sandwich(beta, tau, X, y, unit, w1, w2, laplace=True, h=1e-5) -> np.ndarray:
    """The cluster sandwich of (β, log τ) at a pseudo-ML optimum, by differences of the unit terms
    w_j log I_j: scores s_j by central differences, the Hessian H of Σ_j w_j log I_j by central
    differences of those scores' sum; Cov = J/(J−1)·H⁻¹(Σ_j s_js_j')H⁻¹ (the γ block does not depend
    on how τ is parametrised, the scores being 0 at the optimum)."""
    x0 = np.append(np.asarray(beta, float), math.log(tau))
    J, k = w2.size, x0.size

    def terms(x):
        return w2 * unit_log_integrals(x[:-1], math.exp(x[-1]), X, y, unit, w1, J, laplace)

    def scores(x, step):
        S = np.empty((J, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = step
            S[:, i] = (terms(x + e) - terms(x - e)) / (2 * step)
        return S

    S = scores(x0, h)
    H = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = 1e-4
        H[:, i] = (scores(x0 + e, h).sum(axis=0) - scores(x0 - e, h).sum(axis=0)) / 2e-4
    H = 0.5 * (H + H.T)
    Hinv = np.linalg.inv(H)
    return J / (J - 1.0) * Hinv @ (S.T @ S) @ Hinv


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
