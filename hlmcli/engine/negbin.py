"""Negative binomial counts: the two-level NB2 model (glmmTMB's nbinom2), fitted by Laplace (and AGQ
for a random intercept), with the dispersion θ as a further fixed parameter, searched on log θ, so
that hglm.py's search, certificate and covariances see it with γ.

Model: y_ij | b_j ~ NB(μ_ij, θ), Var = μ + μ²/θ, log μ_ij = η_ij = log m_ij + x_ij'γ + z_ij'b_j
(m the exposure). Per record, with p = μ/(θ + μ) and q = 1 − p = θ/(θ + μ),

    ℓ = lgamma(y + θ) − lgamma(θ) − lgamma(y + 1) + θ log θ + yη − (y + θ) log(θ + μ),
    ℓ_η = y − (y + θ)p,   W = −ℓ_ηη = (y + θ)pq,   κ3 = ∂W/∂η = W(q − p)

(∂p/∂η = pq). W is the observed information, as glmmTMB's Laplace uses; it is ≥ 0 (ℓ is concave
in η), so each unit's mode is unique. log(θ + μ) = logaddexp(log θ, η) and p = e^(η − log(θ+μ))
stay exact for any η.

In φ = log θ (∂p/∂θ = −pq/θ):

    ℓ_φ = θ[ψ(y + θ) − ψ(θ) + log q + p − y/(θ + μ)],
    ℓ_ηφ = W − θp,   W_φ = θpq − κ3.

Gradient in φ (hglm.py's derivation, as for a threshold in ordinal.py: φ enters ℓ directly, not
through η): with e_i = z_i'ΛΨΛ'z_i and m = H⁻¹(ḡ + Λ'Z'(κ3 e)) (hglm.py's Ψ and m),

    ∂log I_j/∂φ = Σ_k π_k Σ_i ℓ_φ(η_ik) + Σ_i e_i W_φ,i + Σ_i (z_i'Λm_j) ℓ_ηφ,i.

tests/test_negbin.py checks it against differences of the deviance.

Precision at large θ. Written as above, ℓ cancels: lgamma(y + θ) − lgamma(θ) + θ log θ and
(y + θ) log(θ + μ) are each ~θ log θ, so at θ = 1e8 a record's ℓ carries ~1e-16·θ log θ ≈ 2e-7 of
rounding, and a deviance over thousands of records loses its 1e-6. With s = log θ + L, L = log1p(μ/θ),

    ℓ = G(y, θ) + yη − (y + θ)L,   G(y, θ) = lgamma(y + θ) − lgamma(θ) − y log θ = Σ_{k<y} log1p(k/θ),

whose terms are each of the size of the result (G → y(y − 1)/2θ, (y + θ)L → μ: the Poisson limit).
For θ ≥ 10, Stirling's series log Γ(x) = (x − ½) log x − x + ½ log 2π + r(x) gives G without the
cancellation: G = (y + θ − ½) log1p(y/θ) − y + r(y + θ) − r(θ). Likewise ψ(y + θ) − ψ(θ) in ℓ_φ, from
ψ(x) = log x − 1/2x − r₁(x): log1p(y/θ) + y/(2θ(y + θ)) − r₁(y + θ) + r₁(θ), and ℓ_φ =
θ[ψ(y + θ) − ψ(θ) − L + p − y/(θ + μ)] then has terms of size y/θ, not log θ. r and r₁ (Bernoulli
numbers' series) are summed to x^−13 and x^−14: below 1e-16 relative at x ≥ 10. Below θ = 10 the lgamma
and digamma forms have no such cancellation and are used as they are.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from .special_functions import digamma, gammaln

from .hglm import Conditional, GLMData, agq_fit, ml_fit, newton_ascent

# Stirling's series above this θ (module docstring)
STIRLING_FROM = 10.0
# log Γ(x) − [(x − ½) log x − x + ½ log 2π] = Σ_k B_2k / (2k(2k − 1) x^(2k−1)), k = 1..7
_R = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
# log x − 1/2x − ψ(x) = Σ_k B_2k / (2k x^2k), k = 1..7
_R1 = (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132, -691 / 32760, 1 / 12)


def _series(coef, x: np.ndarray, first: int) -> np.ndarray:
    """Σ_k coef[k] x^−(first + 2k), by Horner in x^−2."""
    x2 = 1.0 / (x * x)
    out = np.full_like(x, coef[-1])
    for c in coef[-2::-1]:
        out = out * x2 + c
    return out * x ** -float(first)


# Whole counts below this are summed term by term (Σ_{k<y}): each term exact to a rounding, where the
# series' (y + θ − ½) log1p(y/θ) − y cancels to ~1e-16·y absolute (1e-9 relative for y = 2 at θ = 1e8)
SUM_UP_TO = 1000


def _small_counts(y: np.ndarray, terms: np.ndarray) -> np.ndarray | None:
    """Σ_{k<y} terms[k] per record, from one cumulative sum, when every y is a whole count below
    SUM_UP_TO; else None."""
    if y.size == 0 or y.max() >= SUM_UP_TO or np.any(y != np.floor(y)) or y.min() < 0:
        return None
    return np.concatenate([[0.0], np.cumsum(terms)])[y.astype(np.int64)]


def log_rising(y: np.ndarray, theta: float) -> np.ndarray:
    """G(y, θ) = lgamma(y + θ) − lgamma(θ) − y log θ (= Σ_{k<y} log1p(k/θ) for whole y), without
    cancellation at large θ (module docstring)."""
    y = np.asarray(y, float)
    if theta < STIRLING_FROM:
        return gammaln(y + theta) - gammaln(theta) - y * math.log(theta)
    table = _small_counts(y, np.log1p(np.arange(SUM_UP_TO) / theta))
    if table is not None:
        return table
    t = np.float64(theta)
    g = (y + t - 0.5) * np.log1p(y / t) - y + (_series(_R, y + t, 1) - _series(_R, np.array([t]), 1)[0])
    return np.where(y <= 1.0, 0.0, g)  # exactly 0 at y = 0 and 1 (the sum is empty or log1p(0))


def digamma_difference(y: np.ndarray, theta: float) -> np.ndarray:
    """ψ(y + θ) − ψ(θ) (= Σ_{k<y} 1/(θ + k) for whole y), without cancellation at large θ."""
    y = np.asarray(y, float)
    if theta < STIRLING_FROM:
        return digamma(y + theta) - digamma(theta)
    table = _small_counts(y, 1.0 / (theta + np.arange(SUM_UP_TO)))
    if table is not None:
        return table
    t = np.float64(theta)
    return (np.log1p(y / t) + y / (2.0 * t * (y + t))
            - _series(_R1, y + t, 2) + _series(_R1, np.array([t]), 2)[0])



# exp(log θ) overflows a double beyond 709; a search that asks for such θ is heading to the Poisson limit
LOG_THETA_MAX = 700.0


class ThetaOverflow(OverflowError):
    """The search asked for θ = exp(log θ) beyond LOG_THETA_MAX (the caller says to fit Poisson)."""

class NegBinFamily:
    """The per-record NB2 kernel for one data set (the counts y are fixed), at its current θ (set by
    NegBinData.eta from the parameter vector's last entry, log θ)."""

    name = "negbinomial"
    link = "log"
    ratio_name = "rate_ratio"
    record_terms = ("theta_parts",)  # per-record, linear in log f: scaled by sampling weights (hglm_weights.py)

    def __init__(self, y: np.ndarray):
        self.y = np.asarray(y, float)
        # counts take few distinct values: the θ parts below are computed once per value (elementwise, so
        # the same bits as per record)
        self._y_values, self._y_index = np.unique(self.y, return_inverse=True)
        self.log_theta = None
        self._last_pq = None
        self.set_log_theta(0.0)

    @property
    def theta(self) -> float:
        return math.exp(self.log_theta)

    def set_log_theta(self, log_theta: float) -> None:
        log_theta = float(log_theta)
        if log_theta == self.log_theta:
            return
        if log_theta > LOG_THETA_MAX:
            raise ThetaOverflow(log_theta)
        self.log_theta = log_theta
        th = math.exp(log_theta)
        # the θ parts of ℓ and ℓ_φ that do not involve η: computed once per θ, not per node and Newton step
        self._c = log_rising(self._y_values, th)[self._y_index]
        self._psi = digamma_difference(self._y_values, th)[self._y_index]

    def _pq(self, eta):
        """(L = log1p(μ/θ), p = μ/(θ + μ), q = θ/(θ + μ)), each without cancellation for any η."""
        # one exponential per record, e = e^−|x| ≤ 1: L = max(x, 0) + log1p(e), and p, q are 1/(1 + e) and
        # e/(1 + e) in the order of x's sign (logaddexp and two expits took three; same to the last bit)
        # theta_parts asks at the η that evaluate was last given (the modes' η, the GLM start's): kept for
        # that same array object at the same θ, not recomputed
        last = self._last_pq
        if last is not None and last[0] is eta and last[1] == self.log_theta:
            return last[2]
        x = eta - self.log_theta
        e = np.exp(-np.abs(x))
        d = 1.0 + e
        r, s = 1.0 / d, e / d
        pos = x >= 0.0
        out = np.maximum(x, 0.0) + np.log1p(e), np.where(pos, r, s), np.where(pos, s, r)
        self._last_pq = (eta, self.log_theta, out)
        return out

    def evaluate(self, eta, y=None, n=None, second: bool = True):
        """(ℓ without −lgamma(y + 1), ℓ_η, W, κ3) per record (W and κ3 None without second)."""
        y, th = self.y, self.theta
        L, p, q = self._pq(eta)
        yt = y + th
        ll = self._c + y * eta - yt * L
        dl = y - yt * p
        if not second:
            return ll, dl, None, None
        W = yt * p * q
        return ll, dl, W, W * (q - p)

    def derivatives(self, eta, y=None, n=None):
        _, dl, W, k3 = self.evaluate(eta)
        return dl, W, k3

    def loglik_terms(self, eta, y=None, n=None):
        return self.evaluate(eta, second=False)[0]

    def theta_parts(self, eta, second: bool = True):
        """Per record ℓ_φ and, with second, (ℓ_ηφ, W_φ) (module docstring)."""
        y, th = self.y, self.theta
        L, p, q = self._pq(eta)
        lphi = th * (self._psi - L + p - y * q / th)  # y/(θ + μ) = yq/θ
        if not second:
            return lphi
        W = (y + th) * p * q
        return lphi, W - th * p, th * p * q - W * (q - p)

    def constant_terms(self, y=None, n=None) -> np.ndarray:
        return -gammaln(self.y + 1.0)

    def constant(self, y=None, n=None) -> float:
        return float(np.sum(self.constant_terms()))

    def mean(self, eta, n=None) -> np.ndarray:
        return np.exp(eta)

    def taylor(self, ev, d, n):  # pragma: no cover - NegBinConditional never asks (see there)
        raise NotImplementedError


class NegBinData(GLMData):
    """GLMData whose parameter vector is (γ, log θ): p counts both (the search, the certificate and
    the covariances see one vector of fixed parameters); pf is γ's length."""

    def __post_init__(self):
        super().__post_init__()
        self.pf = self.p
        self.p = self.pf + 1

    def eta(self, gamma, b):
        """η per record at the fixed part of `gamma`, whose last entry becomes the family's log θ."""
        gamma = np.asarray(gamma, float)
        self.family.set_log_theta(gamma[self.pf])
        return super().eta(gamma[:self.pf], b)

    def conditional(self, nodes: int = 1):
        return NegBinConditional(self, nodes)

    def glm_gamma(self, maxit: int = 100) -> np.ndarray:
        """(γ, log θ) of the model without random effects: Newton on the log-likelihood with a
        difference Hessian of its exact gradient and step halving, from γ00 = log(ȳ/m̄), slopes 0 and
        θ by moments (Var = μ + μ²/θ)."""
        fam = self.family
        y = fam.y
        m = np.exp(self.offset) if self.offset is not None else np.ones_like(y)
        x = np.zeros(self.p)
        x[0] = math.log(max(y.sum(), 0.5) / m.sum())
        mu, v = y.mean(), y.var()
        x[-1] = math.log(mu * mu / (v - mu)) if v > mu * 1.01 and mu > 0 else math.log(10.0)

        def ll_grad(x):
            eta = self.eta(x, None)
            ll, dl, _, _ = fam.evaluate(eta, second=False)
            lv = self.level2  # level-2 weights, when given, count each unit's records w_j times
            return float(np.sum(lv(ll))), np.concatenate([self.Xv(lv(dl)),
                                                          [np.sum(lv(fam.theta_parts(eta, second=False)))]])

        def step_of(H, g):
            w, V = np.linalg.eigh(-H)  # ascent direction even where ℓ is not concave in (γ, φ)
            w = np.maximum(np.abs(w), 1e-10 * max(float(np.abs(w).max()), 1e-300))
            return V @ ((V.T @ g) / w)

        x = newton_ascent(ll_grad, x, maxit, step_of)
        self.eta(x, None)
        return x


class NegBinConditional(Conditional):
    """hglm.Conditional with the gradient in log θ appended to γ's (module docstring)."""

    # The Taylor shortcut of the difference Hessian follows a record's η; θ moves ℓ without moving η,
    # so here every evaluation is exact.
    taylor = property(lambda self: False, lambda self, value: None)

    def _evaluate(self, gamma, lam, grad):
        d = self.data
        fam = d.family
        fam.set_log_theta(np.asarray(gamma, float)[d.pf])
        out = super()._evaluate(gamma, lam, grad)
        if not grad:
            return out
        dev, ggam, glam = out
        if not np.isfinite(dev):
            return np.inf, np.zeros(d.p), np.zeros_like(lam)
        pt = self.parts
        # Σ_k π_k ℓ_φ(η_k) per record, then e W_φ and (z'Λm) ℓ_ηφ at the mode
        lphi, lephi, Wphi = fam.theta_parts(pt.eta)
        if self.nodes > 1:
            lphi = np.zeros(d.N)
            LR = lam @ pt.R
            M = np.empty((d.N, d.q))
            for b in range(d.q):
                M[:, b] = d.rowdot(d.ZT, LR[:, :, b])
            for k, zk in enumerate(self.z):
                lphi += pt.pi[k][d.unit] * fam.theta_parts(pt.eta + M @ zk, second=False)
        e = d.quad(lam @ pt.Psi @ lam.T)
        r = d.rowdot(d.ZT, pt.m @ lam.T)
        v = d.level2(lphi + e * Wphi + r * lephi)  # w_j ∂log I_j/∂φ with level-2 weights
        if self.keep_units:
            sg, sl = self.unit_scores
            self.unit_scores = (np.column_stack([sg, d.usum(v)]), sl)
        return dev, np.concatenate([ggam, [-2.0 * float(np.sum(v))]]), glam


def fit(data: NegBinData, estimation: str, nodes: int | None = None, diagonal: bool = False):
    """Laplace (estimation 'laplace') or AGQ ('agq', K = nodes or adaptive) from the NB GLM without
    random effects, with hglm.ml_fit's starts (τ = I and ¼I, and τ = 0 compared) and certificate."""
    x0 = data.glm_gamma()
    start = SimpleNamespace(gamma=x0, tau=np.eye(data.q), b=np.zeros((data.J, data.q)))
    if estimation == "agq":
        return agq_fit(data, nodes, start, diagonal=diagonal)
    return ml_fit(data, 1, start, diagonal=diagonal)
