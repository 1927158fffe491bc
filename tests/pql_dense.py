"""An independent check of a PQL fixed point (numpy/scipy only, none of hlmcli's engine).

At η the model is linearised (Breslow & Clayton 1993): working variate z = η − offset + (y − μ)/W and
weights W = dμ/dη (canonical link: Poisson W = μ, Bernoulli W = μ(1 − μ)). The working model is the
Gaussian z = Xγ + Σℓ Zℓbℓ + e, bℓ ~ N(0, Gℓ) per level-ℓ unit, e ~ N(0, W⁻¹) (σ² fixed at 1), with
marginal covariance V = W⁻¹ + Σℓ (Zℓ Gℓ Zℓ') ∘ [same level-ℓ unit]. V is block diagonal by top-level
unit (the units are nested), so it is formed densely one top-level block at a time.

−2 log L (constants dropped): ML log|V| + r'V⁻¹r with r = z − Xγ̂(G), γ̂ the GLS estimate (γ profiled
out exactly); REML adds log|X'V⁻¹X|. Its gradient in V is A − uu' with u = V⁻¹r = Pz and A = V⁻¹ (ML)
or P = V⁻¹ − V⁻¹X(X'V⁻¹X)⁻¹X'V⁻¹ (REML); the chain rule through V's entries gives the gradient in Gℓ,
and G = LL' the one in L. BLUPs: b̂ℓ(j) = Gℓ Σ_{i∈j} Zℓ[i]' u[i].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize


def working(family: str, y: np.ndarray, eta: np.ndarray, offset: np.ndarray | None):
    """(z, W) of the model linearised at η."""
    off = 0.0 if offset is None else offset
    if family == "poisson":
        mu = np.exp(eta)
        W = mu
    elif family == "bernoulli":
        mu = 1.0 / (1.0 + np.exp(-eta))
        W = mu * (1.0 - mu)
    else:
        raise ValueError(family)
    return eta - off + (y - mu) / W, W


@dataclass
class DenseFit:
    gamma: np.ndarray
    G: list
    m2ll: float
    eta: np.ndarray
    grad: np.ndarray


class WorkingModel:
    """The working Gaussian model at one η. X (N, p); Zs: per random level (N, qℓ); units: per random
    level each record's unit (N,) ints; the last level's units define the blocks of V."""

    def __init__(self, z, W, X, Zs, units, offset=None):
        self.z, self.W, self.X = np.asarray(z, float), np.asarray(W, float), np.asarray(X, float)
        self.Zs = [np.asarray(Z, float) for Z in Zs]
        self.units = [np.asarray(u) for u in units]
        self.offset = offset
        top = self.units[-1]
        self.blocks = [np.flatnonzero(top == k) for k in np.unique(top)]
        self.same = [[u[b][:, None] == u[b][None, :] for u in self.units] for b in self.blocks]
        self.qs = [Z.shape[1] for Z in self.Zs]

    # G = LL' per level, L lower triangular, packed row by row
    def unpack(self, theta):
        Gs, Ls, k = [], [], 0
        for q in self.qs:
            L = np.zeros((q, q))
            rows, cols = np.tril_indices(q)
            L[rows, cols] = theta[k:k + rows.size]
            k += rows.size
            Ls.append(L)
            Gs.append(L @ L.T)
        return Gs, Ls

    def theta_of(self, Gs) -> np.ndarray:
        out = []
        for G in Gs:
            L = np.linalg.cholesky(np.asarray(G, float) + 0.0 * np.eye(len(G)))
            out.append(L[np.tril_indices(len(G))])
        return np.concatenate(out)

    def evaluate(self, Gs, reml: bool, need_grad: bool = True):
        """(−2 log L, its gradient in each Gℓ (as a full q×q matrix), γ̂, u = V⁻¹r)."""
        X, z = self.X, self.z
        p = X.shape[1]
        logdet, XVX, XVz, facs = 0.0, np.zeros((p, p)), np.zeros(p), []
        for b, same in zip(self.blocks, self.same):
            V = np.diag(1.0 / self.W[b])
            for Z, G, s in zip(self.Zs, Gs, same):
                Zb = Z[b]
                V += (Zb @ G @ Zb.T) * s
            f = cho_factor(V, lower=True)
            logdet += 2.0 * np.sum(np.log(np.diag(f[0])))
            VX = cho_solve(f, X[b])
            XVX += X[b].T @ VX
            XVz += VX.T @ z[b]
            facs.append((f, VX))
        C = np.linalg.inv(XVX)
        gamma = C @ XVz
        r = z - X @ gamma
        u = np.zeros_like(z)
        quad = 0.0
        for b, (f, _) in zip(self.blocks, facs):
            u[b] = cho_solve(f, r[b])
            quad += r[b] @ u[b]
        m2ll = logdet + quad
        if reml:
            m2ll += np.linalg.slogdet(XVX)[1]
        if not need_grad:
            return m2ll, None, gamma, u
        D = [np.zeros((q, q)) for q in self.qs]
        for b, same, (f, VX) in zip(self.blocks, self.same, facs):
            A = cho_solve(f, np.eye(b.size))
            if reml:
                A = A - VX @ C @ VX.T
            M = A - np.outer(u[b], u[b])
            for k, (Z, s) in enumerate(zip(self.Zs, same)):
                D[k] += Z[b].T @ (M * s) @ Z[b]
        return m2ll, D, gamma, u

    def objective(self, theta, reml):
        Gs, Ls = self.unpack(theta)
        m2ll, D, _, _ = self.evaluate(Gs, reml)
        g = []
        for Dk, L in zip(D, Ls):
            dL = (Dk + Dk.T) @ L
            g.append(dL[np.tril_indices(len(L))])
        return m2ll, np.concatenate(g)

    def blup_eta(self, Gs, gamma, u) -> np.ndarray:
        """Xγ + Σ Zℓ b̂ℓ (+ offset): the linear predictor PQL moves to."""
        eta = self.X @ gamma
        for Z, G, unit in zip(self.Zs, Gs, self.units):
            ids, inv = np.unique(unit, return_inverse=True)
            s = np.zeros((ids.size, Z.shape[1]))
            np.add.at(s, inv, Z * u[:, None])
            b = s @ G  # G symmetric: b̂(j) = G Σ Z'u
            eta += np.einsum("ia,ia->i", Z, b[inv])
        return eta if self.offset is None else eta + self.offset

    def fit(self, starts, reml: bool) -> DenseFit:
        """The best optimum of −2 log L over (γ, G) from several starts (BFGS with the exact gradient,
        then Newton-like polishing by a second BFGS from the result)."""
        best = None
        for th in starts:
            res = minimize(self.objective, np.asarray(th, float), args=(reml,), jac=True, method="BFGS",
                           options={"gtol": 1e-10, "maxiter": 2000})
            res = minimize(self.objective, res.x, args=(reml,), jac=True, method="BFGS",
                           options={"gtol": 1e-11, "maxiter": 2000})
            if best is None or res.fun < best.fun:
                best = res
        x, grad = self.newton(best.x, reml)
        Gs, _ = self.unpack(x)
        m2ll, _, gamma, u = self.evaluate(Gs, reml, need_grad=False)
        return DenseFit(gamma, Gs, m2ll, self.blup_eta(Gs, gamma, u), grad)

    def newton(self, x, reml: bool, steps: int = 8):
        """Newton steps on the exact gradient with a central-difference Hessian: BFGS stalls on the flat
        directions of a random slope, and the check needs the optimum to ~1e-8."""
        x = np.asarray(x, float).copy()
        f, g = self.objective(x, reml)
        for _ in range(steps):
            h = 1e-5 * np.maximum(1.0, np.abs(x))
            H = np.empty((x.size, x.size))
            for k in range(x.size):
                e = np.zeros_like(x)
                e[k] = h[k]
                H[:, k] = (self.objective(x + e, reml)[1] - self.objective(x - e, reml)[1]) / (2 * h[k])
            H = 0.5 * (H + H.T)
            step = np.linalg.solve(H, g)
            f1, g1 = self.objective(x - step, reml)
            if not f1 <= f + 1e-10:
                break
            x, f, g = x - step, f1, g1
            if np.max(np.abs(g)) < 1e-10:
                break
        return x, g
