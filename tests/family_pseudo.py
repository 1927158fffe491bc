"""An independent multilevel pseudo-likelihood for the ordinal, negative binomial and multinomial families,
written apart from hlmcli's engine (the reference of tests/test_family_weights.py and of
tests/reference_scripts/family_weights_pseudo.py):

    −2 ℓ_w(x) = −2 Σ_j w_j log ∫ exp(Σ_i w_{i|j} log f(y_ij | η_ij + b)) φ(b; 0, τ) db,

with a random intercept per unit (one per logit for the multinomial). Per family, as hlmcli parametrises it:
- ordinal: x = (γ, c_2..c_{C−1}, log τ), P(Y ≤ m | b) = F(η + c_m), c_1 = 0 (F logistic);
- negbinomial: x = (γ, log θ, log τ), f the NB2 probability Γ(y + θ)/(Γ(θ) y!) (θ/(θ + μ))^θ (μ/(θ + μ))^y;
- multinomial: x = (γ_1, ..., γ_{M−1}, the lower triangle of τ's Cholesky factor), f = softmax with the
  last category the reference.
Integrals: scipy.integrate.quad around the mode (Brent) for the scalar ones ("exact", the reference of
--estimation agq); the multinomial's by Laplace's approximation at its mode (Newton on the analytic
softmax gradient and Hessian), as hlmcli fits it.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize
from scipy.special import expit, gammaln


def ordinal_logf(eta, y, cuts):
    """log P(Y = y | η) of the cumulative logit, c = (0, c_2..): F(η + c_y) − F(η + c_{y−1})."""
    c = np.concatenate([[-np.inf, 0.0], cuts, [np.inf]])
    return np.log(expit(eta + c[y]) - expit(eta + c[y - 1]))


def negbin_logf(eta, y, theta):
    mu = np.exp(eta)
    return (gammaln(y + theta) - gammaln(theta) - gammaln(y + 1) + theta * np.log(theta / (theta + mu))
            + y * np.log(mu / (theta + mu)))


def _scalar_log_integral(h, tau):
    """log ∫ exp(h(b)) φ(b; 0, τ) db by quad around the mode."""
    def g(b):
        return h(b) - b * b / (2 * tau)

    mode = optimize.minimize_scalar(lambda b: -g(b), bracket=(-1.0, 1.0), method="brent", options={"xtol": 1e-12}).x
    e = 1e-4
    curv = max(-(g(mode + e) - 2 * g(mode) + g(mode - e)) / (e * e), 1e-8)
    top = g(mode)
    sd = 1 / math.sqrt(curv)
    val, _ = integrate.quad(lambda b: math.exp(g(b) - top), mode - 40 * sd, mode + 40 * sd, epsabs=0.0, epsrel=1e-13,
                            limit=200, points=[mode])
    return top + math.log(val) - 0.5 * math.log(2 * math.pi * tau)


class Scalar:
    """Ordinal (extra = thresholds) or negative binomial (extra = log θ) with a random intercept."""

    def __init__(self, family, X, y, unit, w1):
        self.family, self.X, self.y, self.unit, self.w1 = family, X, y, unit, w1
        self.J = int(unit.max()) + 1
        self.p = X.shape[1]

    def unit_terms(self, x):
        x = np.asarray(x, float)
        gamma, extra, tau = x[:self.p], x[self.p:-1], math.exp(x[-1])
        if self.family == "ordinal" and np.any(np.diff(np.concatenate([[0.0], extra])) <= 0):
            return np.full(self.J, -np.inf)
        eta0 = self.X @ gamma
        out = np.empty(self.J)
        for j in range(self.J):
            m = self.unit == j
            e0, yj, wj = eta0[m], self.y[m], self.w1[m]
            if self.family == "ordinal":
                def h(b, e0=e0, yj=yj, wj=wj):
                    return float(wj @ ordinal_logf(e0 + b, yj, extra))
            else:
                theta = math.exp(extra[0])

                def h(b, e0=e0, yj=yj, wj=wj):
                    return float(wj @ negbin_logf(e0 + b, yj, theta))
            out[j] = _scalar_log_integral(h, tau)
        return out


class Multinomial:
    """Baseline-category logits, one correlated random intercept per logit, by Laplace."""

    def __init__(self, X, y, unit, w1, ncat):
        self.X, self.unit, self.w1 = X, unit, w1
        self.m1 = ncat - 1
        self.Y = (y[:, None] == np.arange(1, ncat)[None, :]).astype(float)
        self.J = int(unit.max()) + 1
        self.p = X.shape[1]
        self.rows, self.cols = np.tril_indices(self.m1)

    def tau(self, x):
        L = np.zeros((self.m1, self.m1))
        L[self.rows, self.cols] = x[self.m1 * self.p:]
        return L @ L.T

    def unit_terms(self, x):
        x = np.asarray(x, float)
        G = x[:self.m1 * self.p].reshape(self.m1, self.p)
        tau = self.tau(x)
        Ti = np.linalg.inv(tau)
        _, logdet_tau = np.linalg.slogdet(tau)
        eta0 = self.X @ G.T
        out = np.empty(self.J)
        for j in range(self.J):
            m = self.unit == j
            e0, Yj, wj = eta0[m], self.Y[m], self.w1[m]

            def parts(b):
                e = e0 + b
                top = np.maximum(e.max(axis=1), 0.0)
                lse = top + np.log(np.exp(-top) + np.exp(e - top[:, None]).sum(axis=1))
                p = np.exp(e - lse[:, None])
                h = float(wj @ ((Yj * e).sum(axis=1) - lse))
                grad = (wj[:, None] * (Yj - p)).sum(axis=0)
                W = np.einsum("i,ia,ab->ab", wj, p, np.eye(self.m1)) - np.einsum("i,ia,ib->ab", wj, p, p)
                return h - 0.5 * b @ Ti @ b, grad - Ti @ b, W + Ti

            b = np.zeros(self.m1)
            for _ in range(100):
                g, grad, H = parts(b)
                step = np.linalg.solve(H, grad)
                t = 1.0
                while parts(b + t * step)[0] < g - 1e-14 * abs(g) and t > 1e-10:
                    t /= 2
                b = b + t * step
                if np.max(np.abs(step)) < 1e-13:
                    break
            g, _, H = parts(b)
            out[j] = g - 0.5 * logdet_tau - 0.5 * np.linalg.slogdet(H)[1]
        return out


def pseudo_deviance(model, x, w2) -> float:
    return -2.0 * float(w2 @ model.unit_terms(x))


def sandwich(model, x, w2, h=1e-5) -> np.ndarray:
    """The cluster sandwich of x at a pseudo-ML optimum, by central differences of the unit terms
    w_j log I_j: Cov = J/(J−1)·H⁻¹(Σ_j s_js_j')H⁻¹ (the fixed-effect block does not depend on how τ is
    parametrised, the scores being 0 at the optimum)."""
    x0 = np.asarray(x, float)
    J, k = w2.size, x0.size

    def scores(x, step):
        S = np.empty((J, k))
        for i in range(k):
            e = np.zeros(k)
            e[i] = step
            S[:, i] = w2 * (model.unit_terms(x + e) - model.unit_terms(x - e)) / (2 * step)
        return S

    S = scores(x0, h)
    H = np.empty((k, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = 1e-4
        H[:, i] = (scores(x0 + e, h).sum(axis=0) - scores(x0 - e, h).sum(axis=0)) / 2e-4
    Hinv = np.linalg.inv(0.5 * (H + H.T))
    return J / (J - 1.0) * Hinv @ (S.T @ S) @ Hinv


def maximise(model, w2, start):
    """The pseudo-ML estimates by scipy's BFGS (forward differences), polished by Nelder-Mead: other
    optimizers than hlmcli's Newton search on exact gradients."""
    def f(x):
        v = pseudo_deviance(model, x, w2)
        return v if np.isfinite(v) else 1e300

    res = optimize.minimize(f, np.asarray(start, float), method="BFGS", options={"gtol": 1e-7, "eps": 1e-7})
    step = 1e-4 * np.maximum(1.0, np.abs(res.x))
    simplex = np.vstack([res.x] + [res.x + np.eye(res.x.size)[k] * step[k] for k in range(res.x.size)])
    res = optimize.minimize(f, res.x, method="Nelder-Mead",
                            options={"initial_simplex": simplex, "xatol": 1e-10, "fatol": 1e-10, "maxfev": 20000})
    return res.x, float(res.fun)
