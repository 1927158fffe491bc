"""Ordinal outcomes: the two-level cumulative link model, fitted by Laplace and AGQ (hglm.py's search
and certificate, with the thresholds as further fixed parameters).

Model (HLM 7's parametrisation, Raudenbush & Bryk 2002 §10.5): with categories 1..C,

    F⁻¹(P(Y_ij ≤ m | b_j)) = η_ij + c_m,   η_ij = x_ij'γ + z_ij'b_j,   c_1 = 0 < c_2 < ... < c_{C−1},

c_m = δ(2) + ... + δ(m), F the link's distribution function (logit, probit, complementary log-log).
The intercept γ00 is the first threshold; ordinal::clmm writes F⁻¹(P(Y ≤ m)) = θ_m − x'β − u, so
θ_m = γ00 + c_m, β = −γ (slopes), and τ is the same.

Per record, with a = η + c_y and b = η + c_{y−1} (c_0 = −∞, c_C = +∞) and P = F(a) − F(b),
ℓ = log P. Writing f, f', f'' for the density and its derivatives and D_k = f^(k−1)(a) − f^(k−1)(b):

    ℓ_η = D1/P,   W = −ℓ_ηη = ℓ_η² − D2/P,   κ3 = ∂W/∂η = −(D3/P − 3ℓ_η D2/P + 2ℓ_η³),

and, in the thresholds (ℓ depends on c_y through a and on c_{y−1} through b):

    ℓ_a = f(a)/P,  ℓ_b = −f(b)/P,  ℓ_ηa = f'(a)/P − ℓ_ηℓ_a,  ℓ_ηb = −f'(b)/P − ℓ_ηℓ_b,
    W_a = −ℓ_ηηa = −f''(a)/P + (D2/P)ℓ_a + 2ℓ_ηℓ_ηa,  W_b = f''(b)/P + (D2/P)ℓ_b + 2ℓ_ηℓ_ηb.

(ℓ_η = ℓ_a + ℓ_b, and so on: the η derivatives are the sums.) The three links have log-concave
densities, so ℓ is concave in η (W ≥ 0) and each unit's mode is unique.

Gradient in a threshold c (hglm.py's derivation, with c entering ℓ directly rather than through η):
d log I_j = ⟨Ψ, dH⟩ + Σπ_k ∂_c f(u_k) + ḡ'dû, where now dH = Λ'Z' diag(W_c dc + κ3 dη̂) ZΛ and the
implicit function theorem on Λ'Z'ℓ'(η̂) − û = 0 gives H dû = Λ'Z'ℓ_ηc dc. So, with e_i =
z_i'ΛΨΛ'z_i and m = H⁻¹(ḡ + Λ'Z'(κ3 e)) (hglm.py's m),

    ∂log I_j/∂c = Σ_k π_k Σ_i ℓ_c(η_ik) + Σ_i e_i W_c,i + Σ_i (z_i'Λm_j) ℓ_ηc,i.

tests/test_ordinal.py checks it against differences of the deviance.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
from .special_functions import expit, ndtr, ndtri

from .hglm import Conditional, GLMData, agq_fit, ml_fit, newton_ascent

LINKS = ("logit", "probit", "cloglog")
_SQRT_2PI = math.sqrt(2.0 * math.pi)


# The outer thresholds c_0 = −∞ and c_C = +∞ enter the per-record kernel as ∓FAR: at |x| ≥ 1e8 every link
# gives F and S exactly 0 or 1 and the density terms exactly 0, with no special case (and no inf − inf).
FAR = 1e8


def cdf_parts(x: np.ndarray, link: str, second: bool = True):
    """(F, S = 1 − F, f, f', f'') at finite x (f' and f'' None without second). F and S each from the
    side where it does not cancel, so that a small probability keeps its relative precision."""
    f1 = f2 = None
    if link == "logit":
        e = np.exp(-np.abs(x))  # one exponential: F = 1/(1 + e^−x) = e/(1 + e) for x < 0
        r = 1.0 / (1.0 + e)
        er = e * r
        pos = x >= 0
        F = np.where(pos, r, er)
        S = np.where(pos, er, r)
        f = er * r
        if second:
            d = S - F
            f1 = f * d
            f2 = f * (d * d - 2.0 * f)
    elif link == "probit":
        F, S = ndtr(x), ndtr(-x)
        f = np.exp(-0.5 * x * x) / _SQRT_2PI
        if second:
            f1 = -x * f
            f2 = (x * x - 1.0) * f
    elif link == "cloglog":
        ex = np.exp(np.minimum(x, 700.0))
        S = np.exp(-ex)
        F = -np.expm1(-ex)
        f = ex * S
        if second:
            f1 = f * (1.0 - ex)
            f2 = f1 * (1.0 - ex) - f * ex  # f((1 − e^x)² − e^x) without inf·0 at the far thresholds
    else:
        raise ValueError(link)
    return F, S, f, f1, f2


def link_cdf(x: np.ndarray, link: str) -> np.ndarray:
    return cdf_parts(np.clip(np.asarray(x, float), -FAR, FAR), link, second=False)[0]


def link_quantile(p: np.ndarray, link: str) -> np.ndarray:
    p = np.asarray(p, float)
    if link == "logit":
        return np.log(p / (1.0 - p))
    if link == "probit":
        return ndtri(p)
    return np.log(-np.log1p(-p))


class OrdinalFamily:
    """The per-record kernel of the cumulative link model for one data set (the codes y are fixed),
    with its current thresholds (set by OrdinalData.eta from the parameter vector)."""

    name = "ordinal"
    ratio_name = "odds_ratio"
    record_terms = ("threshold_parts",)  # per-record, linear in log f: scaled by sampling weights (hglm_weights.py)

    def __init__(self, link: str, ncat: int, y: np.ndarray):
        if link not in LINKS:
            raise ValueError(link)
        self.link, self.ncat = link, int(ncat)
        self.y = np.asarray(y, dtype=np.int64)  # 1..C
        self.full = np.concatenate([[-np.inf, 0.0], np.zeros(self.ncat - 2), [np.inf]])  # c_0..c_C
        self._memo = None

    @property
    def cuts(self) -> np.ndarray:
        """The free thresholds c_2..c_{C−1}."""
        return self.full[2:-1].copy()

    def set_cuts(self, cuts) -> None:
        self.full[2:-1] = cuts

    def ordered(self) -> bool:
        return bool(np.all(np.diff(self.full[1:-1]) > 0))

    def _parts(self, eta, second: bool = True):
        """P and the density terms at a and b, kept for the last η (the thresholds' gradient asks again
        at the mode)."""
        key = (id(eta), self.full.tobytes(), second)
        if self._memo is not None and self._memo[0] == key and self._memo[1] is eta:
            return self._memo[2]
        c = np.clip(self.full, -FAR, FAR)
        a = eta + c[self.y]
        b = eta + c[self.y - 1]
        Fa, Sa, fa, f1a, f2a = cdf_parts(a, self.link, second)
        Fb, Sb, fb, f1b, f2b = cdf_parts(b, self.link, second)
        # P from the side where it does not cancel: in the upper tail F(a) − F(b) loses digits
        P = np.where(b > 0, Sb - Sa, Fa - Fb)
        out = (P, (fa, f1a, f2a), (fb, f1b, f2b))
        self._memo = (key, eta, out)
        return out

    def evaluate(self, eta, y=None, n=None, second: bool = True):
        """(ℓ, ℓ_η, W, κ3) per record (W and κ3 None without second), as Family.evaluate."""
        P, (fa, f1a, f2a), (fb, f1b, f2b) = self._parts(eta, second)
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = np.log(P)
            l1 = (fa - fb) / P
            if not second:
                return ll, l1, None, None
            d2 = (f1a - f1b) / P
            W = l1 * l1 - d2
            k3 = -((f2a - f2b) / P - 3.0 * l1 * d2 + 2.0 * l1 ** 3)
        return ll, l1, W, k3

    def derivatives(self, eta, y=None, n=None):
        _, l1, W, k3 = self.evaluate(eta)
        return l1, W, k3

    def loglik_terms(self, eta, y=None, n=None):
        return self.evaluate(eta, second=False)[0]

    def threshold_parts(self, eta, second: bool = True):
        """Per record (ℓ_a, ℓ_b) and, with second, (ℓ_ηa, ℓ_ηb, W_a, W_b) (module docstring)."""
        P, (fa, f1a, f2a), (fb, f1b, f2b) = self._parts(eta, second)
        with np.errstate(divide="ignore", invalid="ignore"):
            la, lb = fa / P, -fb / P
            if not second:
                return la, lb
            l1 = la + lb
            d2 = (f1a - f1b) / P
            lea = f1a / P - l1 * la
            leb = -f1b / P - l1 * lb
            Wa = -f2a / P + d2 * la + 2.0 * l1 * lea
            Wb = f2b / P + d2 * lb + 2.0 * l1 * leb
        return la, lb, lea, leb, Wa, Wb

    def constant(self, y=None, n=None) -> float:
        return 0.0

    def mean(self, eta, n=None) -> np.ndarray:
        """E(Y | η) = Σ_m m P(Y = m) = C − Σ_{m<C} P(Y ≤ m)."""
        eta = np.asarray(eta, float)
        cum = sum(link_cdf(eta + c, self.link) for c in self.full[1:-1])
        return self.ncat - cum

    def taylor(self, ev, d, n):  # pragma: no cover - OrdinalConditional never asks (see there)
        raise NotImplementedError


class OrdinalData(GLMData):
    """GLMData whose parameter vector is (γ, c_2..c_{C−1}): p counts both (the search, the
    certificate and the covariances see one vector of fixed parameters); pf is γ's length."""

    def __post_init__(self):
        super().__post_init__()
        self.pf = self.p
        self.ncut = self.family.ncat - 2
        self.p = self.pf + self.ncut

    def split(self, params):
        params = np.asarray(params, float)
        return params[:self.pf], params[self.pf:]

    def eta(self, gamma, b):
        """η per record at the fixed part of `gamma`, whose thresholds become the family's."""
        g, cuts = self.split(gamma)
        self.family.set_cuts(cuts)
        return super().eta(g, b)

    def conditional(self, nodes: int = 1):
        return OrdinalConditional(self, nodes)

    def _cut_sums(self, va, vb, per_unit: bool = False):
        """Σ_i over the records of va (for c_{y_i}) and vb (for c_{y_i − 1}) by free threshold, or per
        unit with per_unit: (ncut,) or (J, ncut)."""
        y = self.family.y
        ia, ib = y - 2, y - 3  # free threshold m sits at index m − 2
        if not per_unit:
            out = np.bincount(ia[(ia >= 0) & (ia < self.ncut)], va[(ia >= 0) & (ia < self.ncut)], self.ncut)
            out += np.bincount(ib[(ib >= 0) & (ib < self.ncut)], vb[(ib >= 0) & (ib < self.ncut)], self.ncut)
            return out
        out = np.empty((self.J, self.ncut))
        for k in range(self.ncut):
            out[:, k] = self.usum(np.where(ia == k, va, 0.0) + np.where(ib == k, vb, 0.0))
        return out

    def glm_gamma(self, maxit: int = 100) -> np.ndarray:
        if getattr(self, "_glm", None) is None:  # ml_fit asks again for its own starts
            self._glm = self._glm_fit(maxit)
        return self._glm.copy()

    def _glm_fit(self, maxit: int) -> np.ndarray:
        """(γ, c) of the model without random effects: Newton on the log-likelihood with a
        difference Hessian of its exact gradient and step halving, from the marginal cumulative
        proportions (γ00 = F⁻¹(P(Y ≤ 1)), slopes 0)."""
        fam = self.family
        counts = np.bincount(fam.y, minlength=fam.ncat + 1)[1:]
        cum = np.cumsum(counts)[:-1] / counts.sum()
        q = link_quantile(np.clip(cum, 1e-6, 1 - 1e-6), fam.link)
        x = np.zeros(self.p)
        x[0] = q[0]
        x[self.pf:] = q[1:] - q[0]

        def ll_grad(x):
            eta = self.eta(x, None)
            if not fam.ordered():
                return -np.inf, None
            ll, l1, _, _ = fam.evaluate(eta, second=False)
            la, lb = fam.threshold_parts(eta, second=False)
            lv = self.level2  # level-2 weights, when given, count each unit's records w_j times
            return float(np.sum(lv(ll))), np.concatenate([self.Xv(lv(l1)), self._cut_sums(lv(la), lv(lb))])

        def step_of(H, g):
            return np.linalg.lstsq(-H + 1e-10 * abs(np.trace(H)) * np.eye(self.p), g, rcond=None)[0]

        x = newton_ascent(ll_grad, x, maxit, step_of)
        self.eta(x, None)
        return x


class OrdinalConditional(Conditional):
    """hglm.Conditional with the thresholds' gradient appended to γ's (module docstring)."""

    # The Taylor shortcut of the difference Hessian follows a record's η; a threshold moves ℓ without
    # moving η, so here every evaluation is exact.
    taylor = property(lambda self: False, lambda self, value: None)

    def _evaluate(self, gamma, lam, grad):
        d = self.data
        fam = d.family
        _, cuts = d.split(gamma)
        fam.set_cuts(cuts)
        if not fam.ordered():
            return np.inf if not grad else (np.inf, np.zeros(d.p), np.zeros_like(lam))
        out = super()._evaluate(gamma, lam, grad)
        if not grad:
            return out
        dev, ggam, glam = out
        if not np.isfinite(dev):
            return np.inf, np.zeros(d.p), np.zeros_like(lam)
        pt = self.parts
        unit = d.unit
        # Σ_k π_k ℓ_c(η_k) per record, then e W_c and (z'Λm) ℓ_ηc at the mode
        if self.nodes == 1:
            la, lb, lea, leb, Wa, Wb = fam.threshold_parts(pt.eta)
        else:
            la, lb = np.zeros(d.N), np.zeros(d.N)
            LR = lam @ pt.R
            M = np.empty((d.N, d.q))
            for b in range(d.q):
                M[:, b] = d.rowdot(d.ZT, LR[:, :, b])
            for k, zk in enumerate(self.z):
                ka, kb = fam.threshold_parts(pt.eta + M @ zk, second=False)
                w = pt.pi[k][unit]
                la += w * ka
                lb += w * kb
            _, _, lea, leb, Wa, Wb = fam.threshold_parts(pt.eta)
        e = d.quad(lam @ pt.Psi @ lam.T)
        r = d.rowdot(d.ZT, pt.m @ lam.T)
        va = d.level2(la + e * Wa + r * lea)  # w_j ∂log I_j/∂c with level-2 weights
        vb = d.level2(lb + e * Wb + r * leb)
        gcut = d._cut_sums(va, vb)
        if self.keep_units:
            sg, sl = self.unit_scores
            self.unit_scores = (np.column_stack([sg, d._cut_sums(va, vb, per_unit=True)]), sl)
        return dev, np.concatenate([ggam, -2.0 * gcut]), glam


def fit(data: OrdinalData, estimation: str, nodes: int | None = None, diagonal: bool = False):
    """Laplace (estimation 'laplace') or AGQ ('agq', K = nodes or adaptive) from the fit without
    random effects, with hglm.ml_fit's starts (τ = I and ¼I, and τ = 0 compared) and certificate."""
    x0 = data.glm_gamma()
    start = SimpleNamespace(gamma=x0, tau=np.eye(data.q), b=np.zeros((data.J, data.q)))
    if estimation == "agq":
        return agq_fit(data, nodes, start, diagonal=diagonal)
    return ml_fit(data, 1, start, diagonal=diagonal)
