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
     (v = V₀w) is feasible and d falls at rate μ; the decrease available along it is measured by
     a scan over t.
Second order: the Hessian of d in (S, B), by central differences of the analytic gradient, is PSD.

Every test is judged in deviance units, so it is free of the data's scale: the face decrement
½g'H⁻¹g and, into the cone, the decrease found along vv' are the decreases still available; both
must be below the tolerance the caller gives. The rank of G is decided on the
standardised scale (see estimation.py): an eigenvalue of G at most rank_tolerance() is zero.
For a diagonal τ the face is the set of positive diagonal entries and the cone is G_kk ≥ 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

def stopping_line(parameters: str) -> str:
    """The one plain line every certified fit prints; what was checked, in numbers, is in the JSON's
    certificate block (and, for two-level linear fits, in --full-output)."""
    return f"Iterations stopped at the optimum (checked: no change of {parameters} lowers the deviance)"


RANK_TOL = 1e-6  # an eigenvalue of G (standardised) at most this is zero ...
RANK_NOISE = 1e-11  # ... or at most this times the largest, the eigen-solver's rounding


def rank_tolerance(eigenvalues) -> float:
    """Eigenvalues of the standardised G = τ/σ² at or below this are zero. G is dimensionless (the
    variance of a random effect on a unit-RMS column, over σ²), so an absolute 1e-6 is free of the
    data's units; the relative term only covers rounding when G also has very large eigenvalues."""
    top = float(np.max(np.abs(eigenvalues), initial=0.0))
    return max(RANK_TOL, RANK_NOISE * top)


HESSIAN_TOL = 1e-7  # a face-Hessian eigenvalue below −this × the largest one is negative

# The tolerance a caller gives may widen with the deviance's rounding noise (estimation.tol_decrement:
# ten times the noise), but only up to this: max(1e-6, 1e-7·|deviance|). Above it a decrease larger
# than the project's accuracy for deviances (1e-6 relative, here with a margin of 10) could hide in the
# noise, so no optimum is claimed: e.g. random slopes on a raw Julian date (0.045 deviance units of
# noise, fits 1.5e-6 relative above the optimum) or an outcome constant within units up to 1e-6.
NOISE_LIMIT_ABS = 1e-6
NOISE_LIMIT_REL = 1e-7


def noise_limit(deviance: float) -> float:
    return max(NOISE_LIMIT_ABS, NOISE_LIMIT_REL * abs(deviance))


def check_precision(tol: float, deviance: float, failed: list[str]) -> None:
    """Appends to `failed` when the tolerance exceeds noise_limit(deviance)."""
    limit = noise_limit(deviance)
    if np.isfinite(deviance) and not tol <= limit:
        failed.append(f"the deviance cannot be evaluated to the digits needed: its rounding noise makes the "
                      f"tolerance {tol:.1E} deviance units, above the limit {limit:.1E} (centre or rescale the "
                      "predictors, or check for an outcome that is nearly constant within units)")


@dataclass
class Certificate:
    certified: bool
    rank: int  # rank of τ at the answer
    q: int
    face_decrement: float  # ½ g'H⁻¹g on the face: the decrease Newton still predicts (deviance units)
    face_gradient: float  # largest |entry| of the face gradient
    null_eigenvalue: float | None  # λ_min(V₀'ΓV₀); None when τ is positive definite
    null_decrease: float | None  # the decrease found along vv' when μ < 0, else 0; None when τ is positive definite
    hessian_eigenvalue: float | None  # smallest face-Hessian eigenvalue, relative to the largest
    tolerance: float
    failed: list[str] = field(default_factory=list)
    descent: np.ndarray | None = None  # a feasible direction that lowers the deviance
    descent_step: float = 1.0  # the step along it that the local quadratic model predicts is best
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

    def __init__(self, G: np.ndarray, diagonal: bool, min_rank: int = 0):
        """min_rank keeps that many of G's largest (positive) eigenvalues even below the rank
        tolerance: used when dropping them would raise the deviance measurably."""
        self.q = G.shape[0]
        self.diagonal = diagonal
        # The range basis is scaled by √λ so that S = I at G: every face coordinate is then a
        # relative change, and the face Hessian stays well conditioned however different the
        # eigenvalues of G are.
        if diagonal:
            d = np.diag(G)
            pos = d > rank_tolerance(d)
            if pos.sum() < min_rank:
                pos = (d >= np.sort(d)[::-1][min_rank - 1]) & (d > 0)
            self.pos = np.flatnonzero(pos)
            self.zero = np.flatnonzero(~pos)
            self.r = self.pos.size
            self.V = np.eye(self.q)[:, self.pos] * np.sqrt(d[self.pos])
            self.V0 = np.eye(self.q)[:, self.zero]
        else:
            w, E = np.linalg.eigh(0.5 * (G + G.T))
            pos = w > rank_tolerance(w)
            if pos.sum() < min_rank:
                pos = (np.arange(self.q) >= self.q - min_rank) & (w > 0)
            self.r = int(pos.sum())
            self.V, self.V0 = E[:, pos] * np.sqrt(w[pos]), E[:, ~pos]
        self.S = np.eye(self.r)
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
        lo = min(1.0, float(np.linalg.eigvalsh(S)[0])) if self.r else 1.0
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


def _null_check(obj, G, Gamma, face: Face, tol: float, dev: float):
    """μ = λ_min(V₀'ΓV₀), and when μ < 0 the decrease actually available along G + t·vv': the
    deviance is scanned over t from 1e-9 to 1e3 (G is standardised, so these are absolute), which
    does not depend on estimating a curvature that can vary over many orders of magnitude."""
    if face.r == face.q:
        return None, None, None, 1.0
    if face.diagonal:
        diag = np.diag(Gamma)[face.zero]
        k = int(np.argmin(diag))
        mu = float(diag[k])
        v = face.V0[:, k]
    else:
        w, E = np.linalg.eigh(face.V0.T @ Gamma @ face.V0)
        mu = float(w[0])
        v = face.V0 @ E[:, 0]
    if mu >= 0:
        return mu, 0.0, None, 1.0
    D = np.outer(v, v)
    steps = np.logspace(-9, 3, 25)
    values = np.array([obj.value(G + t * D) for t in steps])
    k = int(np.argmin(values))
    decrease = max(0.0, dev - float(values[k]))
    return mu, decrease, (D if decrease > tol else None), float(steps[k])


FLAT_TOL = 1e-9  # a face-Hessian eigenvalue within [−HESSIAN_TOL, this] × the largest one is zero


def face_conditions(H: np.ndarray, g: np.ndarray, tol: float, failed: list[str],
                    direction=None) -> tuple[float, float, float]:
    """The conditions on the face: the Newton decrement ½g'H⁺g (over H's clearly positive eigenvalues)
    at most tol, and H positive semi-definite up to HESSIAN_TOL of its largest eigenvalue, and
    without a zero eigenvalue: one within rounding of 0 relative to the largest (between
    −HESSIAN_TOL and FLAT_TOL) is a direction along which the deviance is flat, so the data do not
    identify that combination of (σ², τ) (σ² is profiled: a ridge in (σ², τ) is one in G = τ/σ²).
    Being relative, this cannot show on a one-dimensional face; the designs that make one are
    refused before fitting (identifiability.py). `direction(e)` names the change of τ along face
    direction e. Appends what fails to `failed`; returns (decrement, largest |gradient|, smallest
    relative eigenvalue)."""
    grad_max = float(np.abs(g).max())
    w, E = np.linalg.eigh(H)
    top = max(abs(float(w[-1])), 1e-300)
    hmin = float(w[0]) / top
    keep = w > HESSIAN_TOL * top
    step = E[:, keep] @ ((E[:, keep].T @ g) / w[keep])
    decrement = 0.5 * float(g @ step)
    if hmin < -HESSIAN_TOL:
        failed.append(f"the face Hessian has a negative eigenvalue ({hmin:+.1E} relative): a saddle point")
    elif hmin <= FLAT_TOL:
        where = f" ({direction(E[:, 0])})" if direction is not None else ""
        failed.append(f"the deviance is flat along a direction of the variance components{where}: face-Hessian "
                      f"eigenvalue {float(w[0]):.1E} ({hmin:+.1E} relative), so the data do not identify them; "
                      "simplify the random part")
    if not np.isfinite(decrement) or decrement > tol:
        failed.append(f"the deviance can still fall by {decrement:.1E} on the face (tolerance {tol:.0E})")
    return decrement, grad_max, hmin


def name_direction(G_of, x0, e, names=("τ",)) -> str:
    """The change of G (or of each block of a tuple of them) along face direction e, by its entries,
    e.g. "τ[0,0] +0.71, τ[1,1] −0.71" (standardised scale, unit length; entries under 5% left out)."""
    h = 1e-6
    P, M = G_of(x0 + h * e), G_of(x0 - h * e)
    if not isinstance(P, tuple):
        P, M = (P,), (M,)
    entries = []
    for name, Pb, Mb in zip(names, P, M):
        D = (Pb - Mb) / (2 * h)
        for a, c in zip(*np.tril_indices(D.shape[0])):
            entries.append((f"{name}[{a},{c}]", float(D[a, c])))
    scale = max(float(np.sqrt(sum(v * v for _, v in entries))), 1e-300)
    first = next((v for _, v in entries if abs(v) > 0.05 * scale), 1.0)
    scale = scale if first > 0 else -scale  # an eigenvector's sign is arbitrary: the first entry shown is +
    return ", ".join(f"{k} {v / scale:+.2f}" for k, v in entries if abs(v) > 0.05 * abs(scale))


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
        decrement, grad_max, hmin = face_conditions(H, g, tol, failed, lambda e: name_direction(face.G, x0, e))
    mu, null_decrease, D, step_size = _null_check(obj, G, Gamma, face, tol, dev)
    if D is not None:
        descent = D
        failed.append(f"a direction into the cone lowers the deviance (null-space gradient eigenvalue {mu:+.1E}, "
                      f"available decrease {null_decrease:.1E}): a false boundary")
    if not np.isfinite(dev):
        failed.append("the deviance is not finite")
    check_precision(tol, dev, failed)
    return Certificate(certified=not failed, rank=face.r, q=face.q, face_decrement=float(decrement),
                       face_gradient=grad_max, null_eigenvalue=mu, null_decrease=null_decrease,
                       hessian_eigenvalue=hmin, tolerance=tol, failed=failed, descent=descent,
                       descent_step=float(step_size), G=G)
