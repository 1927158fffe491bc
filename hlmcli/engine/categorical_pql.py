"""PQL for ordinal and multinomial outcomes: hglm.pql's macro iterations and fixed-point check over a
working model with M − 1 correlated working variates per record.

What HLM 7 fits (Raudenbush & Bryk 2002, "Hierarchical Linear Models", 2nd ed., ch. 10: §10.5 ordinal,
§10.6 multinomial; the HLM 7 manual, Raudenbush, Bryk, Cheong, Congdon & du Toit 2011, ch. 6 on HGLM,
which fits these two level-1 sampling models by PQL only):

  * ordinal, categories 1..C: cumulative indicators Y*_m = 1{Y ≤ m}, m = 1..C−1, with
    P(Y ≤ m | u) = φ'_m, log[φ'_m/(1 − φ'_m)] = η'_m = η + δ(2) + ... + δ(m) (δ(1) = 0: γ00 is the first
    threshold; HLM 7 prints δ(m) as "THRESHOLD m"); E(Y*_m) = φ'_m, Cov(Y*_a, Y*_b) = φ'_a(1 − φ'_b), a ≤ b.
    One random-effects vector per unit, shared by all the cumulative logits.
  * multinomial, categories 1..M, the last the reference: indicators Y_m = 1{Y = m}, m = 1..M−1,
    log(φ_m/φ_M) = η_m, E(Y_m) = φ_m, Cov(Y_a, Y_b) = φ_a(δ_ab − φ_b); each logit its own γ_m and u_m,
    τ over all (M−1)q effects.

PQL for a vector outcome (Breslow & Clayton 1993; Wolfinger & O'Connell 1993's pseudo-likelihood, as
SAS GLIMMIX linearises a multinomial; Hedeker 2003 for the mixed multinomial logit): at the current
η_i = X_iγ + Z_ib̂ (the M − 1 linear predictors of record i), with μ_i = E(Y_i | η_i), D_i = ∂μ_i/∂η_i'
and Σ_i = Cov(Y_i | η_i),

    z_i = η_i + D_i⁻¹(y_i − μ_i),   Var(z_i | b) ≈ D_i⁻¹Σ_iD_i⁻ᵀ = W_i⁻¹,   W_i = D_i'Σ_i⁻¹D_i,

and the working model z_i = X_iγ + Z_ib + e_i, e_i ~ N(0, W_i⁻¹), is a linear mixed model whose level-1
blocks are known and not diagonal. With W_i = C_iC_i' (Cholesky), C_i'z_i = C_i'X_iγ + C_i'Z_ib + ε_i,
ε_i ~ N(0, I): the whitened rows go through the linear engine's per-unit cross-products and unit solves
as M − 1 rows per record, with σ² fixed at 1. This linearisation does not depend on which M − 1
indicators describe the outcome (any fixed invertible map of them cancels in D⁻¹(y − μ) and D'Σ⁻¹D);
it is the Fisher-scoring one, HLM's for every HGLM.

  * multinomial: D = Σ = diag(φ) − φφ' (canonical link), so W = Σ, and with Σ⁻¹ = diag(1/φ) + 11'/φ_M,
    z_m = η_m + (y_m − φ_m)/φ_m + Σ_k (y_k − φ_k)/φ_M = η_m + y_m/φ_m − y_M/φ_M.
  * ordinal: D = diag(f(η'_m)), f the link's density; Σ = T(diag(π) − ππ')T' with π the category
    probabilities and T the cumulative sum, so Σ⁻¹ = T⁻ᵀ(diag(1/π) + 11'/π_C)T⁻¹ and W is tridiagonal:
    W_mm = f_m²(1/π_m + 1/π_{m+1}), W_m,m+1 = −f_mf_{m+1}/π_{m+1};  z_m = η'_m + (Y*_m − φ'_m)/f_m.
    (The thresholds are fixed effects: one level-1 column per threshold, 1 on its logit's row.)

With M = 2 both are Bernoulli PQL on 1{Y = 1} (z = η + (y − φ)/(φ(1 − φ)), W = φ(1 − φ)); with the same
start (below) the iterations are Bernoulli's (tests/test_categorical_pql.py checks it).

Choices where HLM 7's own is not documented in any source at hand, and what is used here (as hglm.pql
for Bernoulli, Poisson and binomial outcomes, which R & B describe):
  * restricted PQL (REML in the working model) by default, full PQL with --ml;
  * the level-1 scale fixed at 1 (no over-dispersion for these families);
  * the start: category probabilities (1{Y = k} + ½)/(1 + M/2), Bernoulli's (y + ½)/2 at M = 2;
  * converged when max|Δη| ≤ stopmacro·(1 + max|η|) over all M − 1 predictors, then the fixed point
    checked (hglm.FixedPointCheck): re-linearised at the final η and refitted afresh;
  * no population-average model (HLM 7 prints unit-specific results for these two families).
tests/reference_scripts/categorical_pql.R is an independent implementation of the same iteration (its own
working vectors and its own ML/REML fit of the working model) that the tests match.
"""

from __future__ import annotations

import numpy as np

from .hglm import PQLResult, pql
from .ordinal import FAR, cdf_parts, link_quantile
from .sufficient import model_stats, unit_cross_products


class CategoricalPQLData:
    """The expanded design of a categorical outcome's working model: M − 1 rows per record (record-major,
    so each unit's rows stay together), design Lx (N(M−1), Kx), block design Bx (J, Kx, px), random
    columns rnd (category-major for the multinomial, as MultinomialData's τ). The methods hglm.pql calls:
    pql_start, working and eta."""

    def __init__(self, kind: str, ncat: int, codes: np.ndarray, L: np.ndarray, B: np.ndarray, offs: np.ndarray,
                 rnd: np.ndarray, link: str = "logit"):
        if kind not in ("ordinal", "multinomial"):
            raise ValueError(kind)
        self.kind, self.link, self.ncat = kind, link, int(ncat)
        self.m1 = m1 = self.ncat - 1
        self.codes = np.asarray(codes, dtype=np.int64)  # 1..M
        N, K = L.shape
        J, _, p = B.shape
        self.N, self.J, self.K, self.pf, self.qf = N, J, K, p, len(rnd)
        self.offset = None
        rows = np.repeat(np.arange(N), m1)
        logit = np.tile(np.arange(m1), N)
        if kind == "ordinal":
            # η'_m = x'γ + c_m: K columns shared by the logits, then one column per threshold c_2..c_{C−1}
            nc = m1 - 1
            Lx = np.zeros((N * m1, K + nc))
            Lx[:, :K] = L[rows]
            for m in range(1, m1):
                Lx[logit == m, K + m - 1] = 1.0
            Bx = np.zeros((J, K + nc, p + nc))
            Bx[:, :K, :p] = B
            Bx[:, K:, p:] = np.eye(nc)
            self.rnd = np.asarray(rnd, dtype=np.int64)
        else:
            # η_m = x'γ_m: logit m's copy of L in its own block of columns
            Lx = np.zeros((N * m1, m1 * K))
            for m in range(m1):
                Lx[logit == m, m * K:(m + 1) * K] = L
            Bx = np.zeros((J, m1 * K, m1 * p))
            for m in range(m1):
                Bx[:, m * K:(m + 1) * K, m * p:(m + 1) * p] = B
            self.rnd = np.concatenate([np.asarray(rnd, dtype=np.int64) + m * K for m in range(m1)])
        self.Lx, self.Bx = Lx, Bx
        self.offs = np.asarray(offs, dtype=np.int64) * m1
        self.unit = np.repeat(np.arange(J), np.diff(self.offs))
        self.random_mask = np.isin(np.arange(Lx.shape[1]), self.rnd)
        self.p, self.q = Bx.shape[2], self.rnd.size
        # the category indicators (N, M): the observed category of each record
        self.Y = (self.codes[:, None] == np.arange(1, self.ncat + 1)[None, :]).astype(float)

    # ------------------------------------------------------------------ hglm.pql's interface
    def eta(self, gamma: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """The M − 1 linear predictors per record (N, M−1) at γ (and the thresholds) and b (J, q)."""
        beta = np.einsum("jkp,p->jk", self.Bx, np.asarray(gamma, float))
        if b is not None:
            beta[:, self.rnd] += b
        return np.einsum("ik,ik->i", self.Lx, beta[self.unit]).reshape(self.N, self.m1)

    def start_eta(self) -> np.ndarray:
        """Category probabilities π_k = (1{Y = k} + ½)/(1 + M/2) per record (positive, summing to 1,
        Bernoulli's (y + ½)/2 at M = 2) and their predictors: cumulative for the ordinal, against the last
        category for the multinomial."""
        pi = (self.Y + 0.5) / (1.0 + 0.5 * self.ncat)
        if self.kind == "multinomial":
            return np.log(pi[:, :-1] / pi[:, -1:])
        return link_quantile(np.cumsum(pi, axis=1)[:, :-1], self.link)

    def working_model(self, eta: np.ndarray):
        """(stats, unit stats) of the whitened working model at η (module docstring)."""
        z, W = self.working_variates(eta)
        C = np.linalg.cholesky(W)  # W = CC'; a W that is not positive definite raises LinAlgError (pql reports it)
        Ct = np.swapaxes(C, 1, 2)
        m1 = self.m1
        Lw = np.einsum("iab,ibk->iak", Ct, self.Lx.reshape(self.N, m1, -1)).reshape(self.N * m1, -1)
        zw = np.einsum("iab,ib->ia", Ct, z).reshape(-1)
        if not (np.all(np.isfinite(Lw)) and np.all(np.isfinite(zw))):
            raise FloatingPointError("the working variates or weights are not finite")
        unit = unit_cross_products(Lw, zw, self.offs, center_y=False)
        return model_stats(unit, self.Bx, self.random_mask), unit

    # ------------------------------------------------------------------ the linearisation
    def working_variates(self, eta: np.ndarray):
        """(z (N, M−1), W (N, M−1, M−1)) at η: z = η + D⁻¹(y − μ), W = D'Σ⁻¹D (module docstring)."""
        eta = np.asarray(eta, float)
        N, m1 = self.N, self.m1
        W = np.zeros((N, m1, m1))
        if self.kind == "multinomial":
            mx = np.maximum(eta.max(axis=1), 0.0)
            e = np.exp(eta - mx[:, None])
            s = np.exp(-mx) + e.sum(axis=1)
            phi = e / s[:, None]
            phiM = np.exp(-mx) / s
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                z = eta + self.Y[:, :m1] / phi - (self.Y[:, m1] / phiM)[:, None]
            W[:] = -phi[:, :, None] * phi[:, None, :]
            W[:, np.arange(m1), np.arange(m1)] += phi
            return z, W
        x = np.clip(eta, -FAR, FAR)
        F, S, f, _, _ = cdf_parts(x, self.link, second=False)
        # category probabilities π_1..π_C, each from the side where it does not cancel
        Fx = np.concatenate([np.zeros((N, 1)), F, np.ones((N, 1))], axis=1)
        Sx = np.concatenate([np.ones((N, 1)), S, np.zeros((N, 1))], axis=1)
        hi = np.concatenate([x, np.full((N, 1), FAR)], axis=1)  # upper end of category k
        pi = np.where(hi > 0, Sx[:, :-1] - Sx[:, 1:], Fx[:, 1:] - Fx[:, :-1])
        below = self.codes[:, None] <= np.arange(1, m1 + 1)[None, :]  # Y*_m = 1
        resid = np.where(below, S, -F)  # Y*_m − φ'_m without cancellation
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            z = eta + resid / f
            k = np.arange(m1)
            W[:, k, k] = f * f * (1.0 / pi[:, :m1] + 1.0 / pi[:, 1:])
            if m1 > 1:
                off = -f[:, :-1] * f[:, 1:] / pi[:, 1:m1]
                W[:, k[:-1], k[1:]] = off
                W[:, k[1:], k[:-1]] = off
        return z, W


def fit(data: CategoricalPQLData, reml: bool = True, macroit: int = 100, microit: int = 100,
        stopmacro: float = 1e-8, diagonal: bool = False) -> PQLResult:
    """hglm.pql on the categorical working model: its macro iterations, certified inner fits and
    fixed-point check; no population-average model."""
    return pql(data, reml=reml, overdispersion=False, macroit=macroit, microit=microit, stopmacro=stopmacro,
               population_average=False, diagonal=diagonal)
