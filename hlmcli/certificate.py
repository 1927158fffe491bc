"""A certificate that a relative covariance G = τ/σ² minimises the deviance over PSD matrices.

Why not the optimizer's own gradient: in the Cholesky parameters Λ (G = ΛΛ'), ∂d/∂Λ = 2ΓΛ
vanishes in every zero column of Λ whatever Γ = ∂d/∂G is, so a false boundary or a saddle looks
stationary there. The conditions below are stated in G itself.

First order (KKT over the PSD cone): Γ ⪰ 0 and ΓG = 0. With G = V₊SV₊' (S ≻ 0, rank r) and V₀
spanning its null space, they are
  1. stationarity on the face of rank-r PSD matrices, parametrised without redundancy as
         G(S, B) = (V₊ + V₀B) S (V₊ + V₀B)',
     whose gradient at B = 0 is (V₊'ΓV₊ in S, 2V₀'ΓV₊S in B): ΓG = 0 exactly when it vanishes;
  2. no descent into the cone: μ = λ_min(V₀'ΓV₀) ≥ 0. If μ < 0 with eigenvector w, G + t·vv'
     (v = V₀w) is feasible and d falls at rate μ.
Second order: the Hessian of d in (S, B), by central differences of the analytic gradient, is PSD.

Every test is judged in deviance units, so it is free of the data's scale: the face decrement
½g'H⁻¹g and, into the cone, μ²/(2h) with h the curvature along vv' are the decreases still
available; both must be below the tolerance the caller gives. The rank of G is decided on the
standardised scale (see estimation.py): an eigenvalue of G at most RANK_TOL·max(1, λ_max) is zero.
For a diagonal τ the face is the set of positive diagonal entries and the cone is G_kk ≥ 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RANK_TOL = 1e-6
HESSIAN_TOL = 1e-7  # a face-Hessian eigenvalue below −this × the largest one is negative


@dataclass
class Certificate:
    certified: bool
    rank: int  # rank of τ at the answer
    q: int
    face_decrement: float  # ½ g'H⁻¹g on the face: the decrease Newton still predicts (deviance units)
    face_gradient: float  # largest |entry| of the face gradient
    null_eigenvalue: float | None  # λ_min(V₀'ΓV₀); None when τ is positive definite
    null_decrease: float | None  # μ²/(2h) when μ < 0, else 0; None when τ is positive definite
    hessian_eigenvalue: float | None  # smallest face-Hessian eigenvalue, relative to the largest
    tolerance: float
    failed: list[str] = field(default_factory=list)
    descent: np.ndarray | None = None  # a feasible direction that lowers the deviance
    G: np.ndarray | None = None  # the point certified (standardised coordinates)

    def describe(self) -> str:
        parts = [f"face decrement {self.face_decrement:.1E}"]
        if self.null_eigenvalue is not None:
            parts.append(f"smallest null-space gradient eigenvalue {self.null_eigenvalue:+.1E}")
        if self.hessian_eigenvalue is not None:
            parts.append(f"smallest face-Hessian eigenvalue {self.hessian_eigenvalue:+.1E} (relative)")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"certified": self.certified, "rank": self.rank, "q": self.q,
                "face_decrement": self.face_decrement, "face_gradient": self.face_gradient,
                "null_space_min_eigenvalue": self.null_eigenvalue, "null_space_decrease": self.null_decrease,
                "face_hessian_min_eigenvalue": self.hessian_eigenvalue, "tolerance": self.tolerance,
                "failed": list(self.failed)}


class Face:
    """The face of the PSD cone (or of the non-negative diagonal) through G, and coordinates x on
    it: x = (S's lower triangle, vec B) for unstructured G, the positive diagonal entries otherwise."""

    def __init__(self, G: np.ndarray, diagonal: bool):
        self.q = G.shape[0]
        self.diagonal = diagonal
        if diagonal:
            d = np.diag(G)
            pos = d > RANK_TOL * max(1.0, float(d.max(initial=0.0)))
            self.pos = np.flatnonzero(pos)
            self.zero = np.flatnonzero(~pos)
            self.r = self.pos.size
            self.V = np.eye(self.q)[:, self.pos]
            self.V0 = np.eye(self.q)[:, self.zero]
            self.S = np.diag(d[self.pos])
        else:
            w, E = np.linalg.eigh(0.5 * (G + G.T))
            pos = w > RANK_TOL * max(1.0, float(w[-1]))
            self.r = int(pos.sum())
            self.V, self.V0 = E[:, pos], E[:, ~pos]
            self.S = np.diag(w[pos])
        self.tril = np.tril_indices(self.r)

    @property
    def n_s(self) -> int:
        return self.r if self.diagonal else self.r * (self.r + 1) // 2

    @property
    def size(self) -> int:
        return self.n_s if self.diagonal else self.n_s + (self.q - self.r) * self.r

    def x0(self) -> np.ndarray:
        return np.concatenate([self._svec(self.S), np.zeros(self.size - self.n_s)])

    def _svec(self, S):
        return np.diag(S).copy() if self.diagonal else S[self.tril]

    def _smat(self, s):
        if self.diagonal:
            return np.diag(s)
        S = np.zeros((self.r, self.r))
        S[self.tril] = s
        return S + np.tril(S, -1).T

    def parts(self, x):
        S = self._smat(x[: self.n_s])
        B = x[self.n_s:].reshape(self.q - self.r, self.r) if not self.diagonal else None
        return S, B

    def W(self, B):
        return self.V if B is None else self.V + self.V0 @ B

    def feasible(self, x) -> bool:
        S, _ = self.parts(x)
        return self.r == 0 or np.linalg.eigvalsh(S)[0] > 0

    def G(self, x) -> np.ndarray:
        S, B = self.parts(x)
        W = self.W(B)
        G = W @ S @ W.T
        return 0.5 * (G + G.T)

    def gradient(self, Gamma, x) -> np.ndarray:
        """∂d/∂x from Γ = ∂d/∂G at G(x)."""
        S, B = self.parts(x)
        W = self.W(B)
        GS = W.T @ Gamma @ W
        if self.diagonal:
            return np.diag(GS).copy()
        gs = (2.0 * GS - np.diag(np.diag(GS)))[self.tril]  # an off-diagonal s enters S twice
        gb = (2.0 * self.V0.T @ Gamma @ W @ S).ravel()
        return np.concatenate([gs, gb])

    def hessian(self, obj, x) -> np.ndarray:
        """Central differences of the analytic face gradient; steps small against S's spectrum so
        every point stays on the face."""
        S, _ = self.parts(x)
        lo = float(np.linalg.eigvalsh(S)[0]) if self.r else 1.0
        n = self.size
        Hm = np.zeros((n, n))
        for i in range(n):
            h = 1e-4 * lo if i < self.n_s else 1e-4
            xp, xm = x.copy(), x.copy()
            xp[i] += h
            xm[i] -= h
            gp = self.gradient(obj.at(self.G(xp))[1], xp)
            gm = self.gradient(obj.at(self.G(xm))[1], xm)
            Hm[:, i] = (gp - gm) / (2 * h)
        return 0.5 * (Hm + Hm.T)


def _null_check(obj, G, Gamma, face: Face, tol: float):
    """μ = λ_min(V₀'ΓV₀), its direction vv', and the decrease μ²/(2h) available along it."""
    if face.r == face.q:
        return None, None, None
    if face.diagonal:
        diag = np.diag(Gamma)[face.zero]
        k = int(np.argmin(diag))
        mu = float(diag[k])
        v = face.V0[:, k]
    else:
        w, E = np.linalg.eigh(face.V0.T @ Gamma @ face.V0)
        mu = float(w[0])
        v = face.V0 @ E[:, 0]
    D = np.outer(v, v)
    if mu >= 0:
        return mu, 0.0, None
    # curvature along D from the change of the directional derivative tr(ΓD)
    delta = 1e-4 * max(1.0, float(np.abs(np.linalg.eigvalsh(G)).max()))
    mu_delta = float(np.sum(obj.at(G + delta * D)[1] * D))
    h = (mu_delta - mu) / delta
    decrease = mu * mu / (2 * h) if h > 0 else np.inf
    return mu, decrease, (D if decrease > tol else None)


def certify(obj, G: np.ndarray, diagonal: bool, tol: float, face_data=None) -> Certificate:
    """Check the first- and second-order conditions at G (standardised coordinates); `obj.at(G)`
    gives (deviance, Γ). Returns a descent direction when one is found. `face_data` = (face, x, H,
    g, deviance, Γ) at G, when the caller computed them there already."""
    failed: list[str] = []
    descent = None
    decrement, grad_max, hmin = 0.0, 0.0, None
    if face_data is not None:
        face, x0, H, g, dev, Gamma = face_data
    else:
        face = Face(G, diagonal)
        dev, Gamma = obj.at(G)
        if face.size:
            x0 = face.x0()
            g = face.gradient(Gamma, x0)
            H = face.hessian(obj, x0)
    if face.size:
        grad_max = float(np.abs(g).max())
        w, E = np.linalg.eigh(H)
        top = max(abs(float(w[-1])), 1e-300)
        hmin = float(w[0]) / top
        keep = w > HESSIAN_TOL * top
        step = E[:, keep] @ ((E[:, keep].T @ g) / w[keep])
        decrement = 0.5 * float(g @ step)
        if hmin < -HESSIAN_TOL:
            failed.append(f"the face Hessian has a negative eigenvalue ({hmin:+.1E} relative): a saddle point")
        if not np.isfinite(decrement) or decrement > tol:
            failed.append(f"the deviance can still fall by {decrement:.1E} on the face (tolerance {tol:.0E})")
    mu, null_decrease, D = _null_check(obj, G, Gamma, face, tol)
    if D is not None:
        descent = D
        failed.append(f"a direction into the cone lowers the deviance (null-space gradient eigenvalue {mu:+.1E}, "
                      f"available decrease {null_decrease:.1E}): a false boundary")
    if not np.isfinite(dev):
        failed.append("the deviance is not finite")
    return Certificate(certified=not failed, rank=face.r, q=face.q, face_decrement=float(decrement),
                       face_gradient=grad_max, null_eigenvalue=mu, null_decrease=null_decrease,
                       hessian_eigenvalue=hmin, tolerance=tol, failed=failed, descent=descent, G=G)
