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
Second order: the Hessian of d in (S, B) is PSD: analytic for the two-level deviance (chain rule
through G(x), BlockFace.hessian), else by central differences of the analytic gradient.

Every test is judged in deviance units, so it is free of the data's scale: the face decrement
½g'H⁻¹g and, into the cone, the decrease found along vv' are the decreases still available; both
must be below the tolerance the caller gives. The rank of G is decided on the
standardised scale (see estimation.py): an eigenvalue of G at most rank_tolerance() is zero.
For a diagonal τ the face is the set of positive diagonal entries and the cone is G_kk ≥ 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .objective import OneBlock

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

    def tangents(self, x) -> np.ndarray:
        """∂G/∂x_i at x, (size, q, q): W E W' for an entry of S (E = e_ae_b' + e_be_a', or e_ae_a'), and
        V₀e_ke_l'SW' + its transpose for B_kl."""
        S, B = self.parts(x)
        W = self.W(B)
        if self.diagonal:
            return np.einsum("ak,bk->kab", W, W)
        out = []
        for a, b in zip(*self.tril):
            T = np.outer(W[:, a], W[:, b])
            out.append(T + T.T if a != b else T)
        WS = W @ S
        for k in range(self.q - self.r):
            for l in range(self.r):
                T = np.outer(self.V0[:, k], WS[:, l])
                out.append(T + T.T)
        return np.array(out).reshape(self.size, self.q, self.q)

    def gradient_curvature(self, Gamma, x) -> np.ndarray:
        """tr(Γ ∂²G/∂x_i∂x_k): the face Hessian's term from G(x) being quadratic in x. G is linear in S,
        so only (S, B) and (B, B) pairs have one: 2(V₀'ΓWE)_kl for S's entry E and B_kl, and
        2 S_ln (V₀'ΓV₀)_km for B_kl and B_mn; none on a diagonal face (G linear in its entries)."""
        out = np.zeros((self.size, self.size))
        if self.diagonal or self.r == self.q:
            return out
        S, B = self.parts(x)
        W = self.W(B)
        ns = self.n_s
        VGW = self.V0.T @ Gamma @ W
        for m, (a, b) in enumerate(zip(*self.tril)):
            Es = np.zeros((self.r, self.r))
            Es[a, b] = Es[b, a] = 1.0
            out[m, ns:] = out[ns:, m] = (2.0 * VGW @ Es).ravel()
        out[ns:, ns:] = 2.0 * np.kron(self.V0.T @ Gamma @ self.V0, S)
        return out

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


def diagonal_blocks(diagonal, n_blocks: int) -> tuple:
    """One flag per τ block: True where that τ is diagonal. A bool applies to every block."""
    if isinstance(diagonal, (bool, np.bool_)) or diagonal is None:
        return (bool(diagonal),) * n_blocks
    out = tuple(bool(d) for d in diagonal)
    if len(out) != n_blocks:
        raise ValueError(f"diagonal needs one flag per τ block ({n_blocks}), not {len(out)}")
    return out


class BlockFace:
    """The face of C1 × … × Ck through (G1, …, Gk), each Cb the PSD cone (or the non-negative diagonal
    matrices where that τ is diagonal): the product of the blocks' faces (Face), with coordinates x
    the blocks' coordinates one after another. One block is the two-level face."""

    def __init__(self, Gs, min_ranks=None, diagonal=None):
        min_ranks = (0,) * len(Gs) if min_ranks is None else min_ranks
        self.diagonal = diagonal_blocks(diagonal, len(Gs))
        self.faces = [Face(G, d, min_rank=m) if G.shape[0] else None
                      for G, m, d in zip(Gs, min_ranks, self.diagonal)]
        self.sizes = [f.size if f is not None else 0 for f in self.faces]
        self.qs = [G.shape[0] for G in Gs]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def ranks(self) -> tuple:
        return tuple(f.r if f is not None else 0 for f in self.faces)

    def split(self, x):
        return np.split(x, np.cumsum(self.sizes)[:-1])

    def x0(self) -> np.ndarray:
        return np.concatenate([f.x0() if f is not None else np.zeros(0) for f in self.faces])

    def G(self, x):
        return tuple(f.G(xi) if f is not None else np.zeros((0, 0)) for f, xi in zip(self.faces, self.split(x)))

    def feasible(self, x) -> bool:
        return all(f is None or f.feasible(xi) for f, xi in zip(self.faces, self.split(x)))

    def gradient(self, Gams, x) -> np.ndarray:
        return np.concatenate([f.gradient(g, xi) if f is not None else np.zeros(0)
                               for f, g, xi in zip(self.faces, Gams, self.split(x))])

    def widened(self, Gs):
        """The face through Gs that keeps one more eigenvalue of the first block below full rank
        that has one to keep (see Face's min_rank), or None when no block can widen."""
        for b, f in enumerate(self.faces):
            if f is not None and f.r < f.q:
                trial = list(self.ranks)
                trial[b] += 1
                wider = BlockFace(Gs, tuple(trial), self.diagonal)
                if wider.ranks[b] > self.ranks[b]:
                    return wider
        return None

    def hessian(self, obj, x) -> np.ndarray:
        """The face Hessian at x: analytic where obj gives the second derivatives in G (obj.curvature,
        one block: the chain rule through G(x), D²d[∂_iG, ∂_kG] + tr(Γ∂²_ikG)); otherwise central
        differences of the analytic face gradient (obj: objective.DevianceObjective), with steps small
        against each block's S spectrum, so every point stays on the face."""
        curvature = getattr(obj, "curvature", None)
        if curvature is not None and len(self.faces) == 1 and self.faces[0] is not None:
            f = self.faces[0]
            Gx = self.G(x)
            T = f.tangents(x)
            D2 = curvature(Gx, T)
            if D2 is not None:
                _, Gams = obj.at(Gx)
                Hm = D2 + f.gradient_curvature(Gams[0], x)
                return 0.5 * (Hm + Hm.T)
        return self.difference_hessian(obj, x)

    def difference_hessian(self, obj, x) -> np.ndarray:
        """Central differences of the analytic face gradient (obj: objective.DevianceObjective); the
        steps are small against each block's S spectrum, so every point stays on the face."""
        n = self.size
        steps = np.empty(n)
        k = 0
        for f, xi in zip(self.faces, self.split(x)):
            if f is None:
                continue
            S, _ = f.parts(xi)
            lo = min(1.0, float(np.linalg.eigvalsh(S)[0])) if f.r else 1.0
            for i in range(f.size):
                steps[k] = 1e-4 * lo if i < f.n_s else 1e-4
                k += 1
        Hm = np.zeros((n, n))
        for i in range(n):
            xp, xm = x.copy(), x.copy()
            xp[i] += steps[i]
            xm[i] -= steps[i]
            gp = self.gradient(obj.at(self.G(xp))[1], xp)
            gm = self.gradient(obj.at(self.G(xm))[1], xm)
            Hm[:, i] = (gp - gm) / (2 * steps[i])
        return 0.5 * (Hm + Hm.T)


def with_block(Gs, b: int, Gb) -> tuple:
    """Gs with block b replaced by Gb."""
    out = list(Gs)
    out[b] = Gb
    return tuple(out)


def _null_check(obj, Gs, Gams, face: BlockFace, b: int, tol: float, dev: float):
    """μ = the smallest slope of the deviance into block b's cone: λ_min(V₀'ΓV₀) for PSD, the smallest
    Γ_kk over the zero variances for a diagonal τ (its cone is G_kk ≥ 0, so only those directions are
    feasible: a negative off-diagonal Γ there is no descent). When μ < 0 with direction v, the
    decrease actually available along G + t·vv' is measured: the deviance is scanned over t from 1e-9
    to 1e3 (G is standardised, so these are absolute), which does not depend on estimating a curvature
    that can vary over many orders of magnitude. Returns (μ, decrease, D = vv' or None, best t)."""
    f = face.faces[b]
    if f is None or f.r == f.q:
        return None, None, None, 1.0
    if f.diagonal:
        diag = np.diag(Gams[b])[f.zero]
        k = int(np.argmin(diag))
        mu, v = float(diag[k]), f.V0[:, k]
    else:
        w, E = np.linalg.eigh(f.V0.T @ Gams[b] @ f.V0)
        mu, v = float(w[0]), f.V0 @ E[:, 0]
    if mu >= 0:
        return mu, 0.0, None, 1.0
    D = np.outer(v, v)
    steps = np.logspace(-9, 3, 25)
    values = np.array([obj.value(with_block(Gs, b, Gs[b] + t * D)) for t in steps])
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


@dataclass
class BlockCertificate:
    """The certificate over the product of the blocks' cones (levels 2..K of a nested model; one block
    at two levels, where Certificate is its one-block form)."""
    certified: bool
    ranks: tuple  # ranks of the τ blocks at the answer
    qs: tuple
    face_decrement: float
    face_gradient: float
    null_eigenvalues: list  # per block: λ_min(V₀'ΓV₀), None when that block is positive definite
    null_decreases: list
    hessian_eigenvalue: float | None
    tolerance: float
    failed: list[str] = field(default_factory=list)
    descent: tuple | None = None  # (block, D): a feasible direction that lowers the deviance
    descent_step: float = 1.0
    G: tuple | None = None  # the point certified (standardised coordinates)
    names: tuple = ()  # the blocks' names, e.g. ("tau_pi", "tau_beta")

    def describe(self) -> str:
        parts = [f"face decrement {self.face_decrement:.1E}"]
        for name, mu in zip(self.names, self.null_eigenvalues):
            if mu is not None:
                parts.append(f"smallest {name} null-space gradient eigenvalue {mu:+.1E}")
        if self.hessian_eigenvalue is not None:
            parts.append(f"smallest face-Hessian eigenvalue {self.hessian_eigenvalue:+.1E} (relative)")
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"certified": self.certified, "rank": list(self.ranks), "q": list(self.qs),
                "face_decrement": self.face_decrement, "face_gradient": self.face_gradient,
                "null_space_min_eigenvalue": list(self.null_eigenvalues),
                "null_space_decrease": list(self.null_decreases),
                "face_hessian_min_eigenvalue": self.hessian_eigenvalue, "tolerance": self.tolerance,
                "failed": list(self.failed)}

    def one_block(self) -> Certificate:
        """The same certificate of a one-block point, as Certificate."""
        D = None if self.descent is None else self.descent[1]
        return Certificate(certified=self.certified, rank=self.ranks[0], q=self.qs[0],
                           face_decrement=self.face_decrement, face_gradient=self.face_gradient,
                           null_eigenvalue=self.null_eigenvalues[0], null_decrease=self.null_decreases[0],
                           hessian_eigenvalue=self.hessian_eigenvalue, tolerance=self.tolerance, failed=self.failed,
                           descent=D, descent_step=self.descent_step, G=self.G[0])


def certify_blocks(obj, Gs, tol: float, face_data=None, diagonal=None, names=("τ",)) -> BlockCertificate:
    """Check the first- and second-order conditions at Gs = (G1, …, Gk) (standardised coordinates)
    over the product of the blocks' cones (a diagonal block's cone is the non-negative diagonal):
    on the face jointly (face_conditions), into each singular block's cone (_null_check).
    obj: objective.DevianceObjective. Returns a descent direction when one is found. `face_data` =
    (face, x, H, g, deviance, Γs) at Gs, when the caller computed them there already."""
    failed: list[str] = []
    decrement, grad_max, hmin = 0.0, 0.0, None
    if face_data is not None:
        face, x0, H, g, dev, Gams = face_data
    else:
        face = BlockFace(Gs, diagonal=diagonal)
        dev, Gams = obj.at(Gs)
        if face.size:
            x0 = face.x0()
            g = face.gradient(Gams, x0)
            H = face.hessian(obj, x0)
    if face.size:
        decrement, grad_max, hmin = face_conditions(H, g, tol, failed, lambda e: name_direction(face.G, x0, e, names))
    mus, decs, descent, dstep = [], [], None, 1.0
    for b, name in enumerate(names):
        mu, dec, D, st = _null_check(obj, Gs, Gams, face, b, tol, dev)
        mus.append(mu)
        decs.append(dec)
        if D is not None:
            if descent is None:
                descent, dstep = (b, D), st
            cone = "the cone" if len(names) == 1 else f"the cone of {name}"
            failed.append(f"a direction into {cone} lowers the deviance (null-space gradient eigenvalue "
                          f"{mu:+.1E}, available decrease {dec:.1E}): a false boundary")
    if not np.isfinite(dev):
        failed.append("the deviance is not finite")
    check_precision(tol, dev, failed)
    return BlockCertificate(not failed, face.ranks, tuple(face.qs), float(decrement), grad_max, mus, decs, hmin,
                            tol, failed, descent, float(dstep), tuple(Gs), tuple(names))


def certify(obj, G: np.ndarray, diagonal: bool, tol: float, face_data=None) -> Certificate:
    """certify_blocks for one block, with obj written over the bare matrix G (objective.OneBlock):
    `obj.at(G)` gives (deviance, Γ). `face_data` = (face, x, H, g, deviance, Γ) at G with face a Face
    or a one-block BlockFace."""
    if face_data is not None:
        face, x0, H, g, dev, Gamma = face_data
        if isinstance(face, Face):
            blocks = BlockFace((G,), diagonal=diagonal)
            blocks.faces, blocks.sizes = [face], [face.size]
            face = blocks
        face_data = (face, x0, H, g, dev, (Gamma,) if not isinstance(Gamma, tuple) else Gamma)
    return certify_blocks(OneBlock(obj), (G,), tol, face_data, (diagonal,)).one_block()
