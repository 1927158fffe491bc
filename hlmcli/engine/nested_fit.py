"""The certified three-level fit: minimise the profiled (RE)ML deviance over PSD τπ × PSD τβ (a
product cone), certify the optimum, and compute the inference HLM3 prints.

The method is the two-level one (estimation.py, certificate.py), with G = (G2, G3) block-diagonal:
- the search runs in standardised coordinates, formed on the records before any cross-product
  (nested.reduce_standardised): each block of random columns centred at its grand mean when it has
  an intercept and scaled to unit spread, the fixed-effect columns orthonormalised, the outcome
  residualised on them; so the search does not depend on a predictor's scale or location, and
  τ = σ²·A G̃ A', γ = TXγ̃ + b map back exactly;
- L-BFGS-B over the two lower-triangular factors, from more than one start;
- Newton on the face of the product cone through the answer: the face is the product of the two
  blocks' faces (certificate.Face), so a rank-deficient block keeps its own null space;
- the certificate: face decrement and face-Hessian PSD over both blocks jointly, and for each
  singular block λ_min(V₀'ΓℓV₀) ≥ 0 (no descent into that block's cone), with the same scale-free
  tolerances as two levels; a saddle or a false boundary is left along its descent direction and
  the search resumes; a second start when the answer is on the boundary, more when uncertified.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..lazy import lazy

special = lazy("scipy.special")

from . import lbfgsb
from .certificate import Face, check_precision, face_conditions, name_direction, rank_tolerance
from ..errors import ModelError
from .estimation import best_lower_face, chol_psd, escape_along, lower_faces, newton_on_face, tol_decrement
from .sandwich import weighted_sandwich
from .nested import (COEFFICIENT_NAMES, LevelsData, LevelsSolve, LevelsStats, NestedData, NestedFit, as_levels,
                     columns_of, levels_solve, reduce_nested, reduce_standardised, summary_of)
from .unitsolve import factor, unit_ols

BOUNDARY_CORR = 1.0 - 1e-6  # |correlation| at or above this on a rank-deficient block is reported as ±1


def tau_names(n_levels: int) -> tuple:
    """The τ block of each level 2..K, named after the coefficients it varies: τπ (level 2), τβ, τγ, …"""
    return tuple(f"tau_{COEFFICIENT_NAMES[i]}" for i in range(n_levels - 1))


# ---------------------------------------------------------------- the objective over (G2, …, GK)

class Objective:
    """The profiled deviance over (G2, …, GK) on standardised stats: estimation.DevianceObjective, the
    protocol of the two-level Objective, with a tuple of blocks as its point. sigma2: σ² profiled
    (None) or fixed at that value (an HGLM's working model, nested_glmm.py: G = τ/σ² then)."""

    def __init__(self, stats: LevelsStats, reml: bool, sigma2: float | None = None):
        self.stats, self.reml, self.count, self.sigma2 = stats, reml, 0, sigma2
        self._cache: list = []

    def solve(self, *lams) -> LevelsSolve:
        # the search asks for the value, the gradient and the rounding noise at the same point:
        # the last few solves are kept (keyed on the exact factors)
        if len(lams) == 1 and isinstance(lams[0], (tuple, list)):
            lams = tuple(lams[0])
        key = tuple(np.asarray(lam, float).tobytes() for lam in lams)
        for k, us in self._cache:
            if k == key:
                return us
        self.count += 1
        us = levels_solve(self.stats, lams)
        self._cache = [(key, us)] + self._cache[:3]
        return us

    def at(self, Gs):
        try:
            us = self.solve(tuple(factor(G) for G in Gs))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, tuple(np.zeros_like(G) for G in Gs)
        return self.deviance_of(us), us.gradients(self.reml, self.sigma2)

    def deviance_of(self, us: LevelsSolve) -> float:
        return us.profiled_deviance(self.reml) if self.sigma2 is None else us.deviance(self.sigma2, self.reml)

    def value(self, Gs) -> float:
        try:
            return self.deviance_of(self.solve(tuple(factor(G) for G in Gs)))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    def noise(self, Gs) -> float:
        try:
            return self.solve(tuple(factor(G) for G in Gs)).rounding_noise(self.reml, self.sigma2)
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0


def diagonal_blocks(diagonal, n_blocks: int) -> tuple:
    """One flag per τ block (levels 2..K): True where τℓ is diagonal. A bool applies to every level."""
    if isinstance(diagonal, (bool, np.bool_)) or diagonal is None:
        return (bool(diagonal),) * n_blocks
    out = tuple(bool(d) for d in diagonal)
    if len(out) != n_blocks:
        raise ValueError(f"diagonal needs one flag per τ block ({n_blocks}), not {len(out)}")
    return out


class BlockFace:
    """The face of C2 × … × CK through (G2, …, GK), Cℓ = PSD(qℓ), or the non-negative diagonal
    matrices where τℓ is diagonal: the product of the blocks' faces."""

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

    def hessian(self, obj: Objective, x) -> np.ndarray:
        """Central differences of the analytic face gradient (steps as certificate.Face.hessian)."""
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


# ---------------------------------------------------------------- the certificate

@dataclass
class NestedCertificate:
    certified: bool
    ranks: tuple  # ranks of the τ blocks (levels 2..K) at the answer
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

    def describe(self) -> str:
        parts = [f"face decrement {self.face_decrement:.1E}"]
        for name, mu in zip(tau_names(len(self.qs) + 1), self.null_eigenvalues):
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


def _null_check_block(obj: Objective, Gs, Gams, face: BlockFace, b: int, tol: float, dev: float):
    """μ = the smallest slope of the deviance into block b's cone: λ_min(V₀'ΓV₀) for PSD, the smallest
    Γ_kk over the zero variances for a diagonal τ (its cone is G_kk ≥ 0, so only those directions are
    feasible: a negative off-diagonal Γ there is no descent)."""
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
    values = np.array([obj.value(_with(Gs, b, Gs[b] + t * D)) for t in steps])
    k = int(np.argmin(values))
    decrease = max(0.0, dev - float(values[k]))
    return mu, decrease, (D if decrease > tol else None), float(steps[k])


def _with(Gs, b, Gb):
    out = list(Gs)
    out[b] = Gb
    return tuple(out)


def certify_nested(obj: Objective, Gs, tol: float, face_data=None, diagonal=None) -> NestedCertificate:
    """The certificate over the product of the blocks' cones (a diagonal block's cone is the
    non-negative diagonal, so its face and its null-space check are the diagonal ones)."""
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
        decrement, grad_max, hmin = face_conditions(H, g, tol, failed,
                                                    lambda e: name_direction(face.G, x0, e, tau_names(len(Gs) + 1)))
    mus, decs, descent, dstep = [], [], None, 1.0
    for b, name in enumerate(tau_names(len(Gs) + 1)):
        mu, dec, D, st = _null_check_block(obj, Gs, Gams, face, b, tol, dev)
        mus.append(mu)
        decs.append(dec)
        if D is not None:
            if descent is None:
                descent, dstep = (b, D), st
            failed.append(f"a direction into the cone of {name} lowers the deviance (null-space gradient eigenvalue "
                          f"{mu:+.1E}, available decrease {dec:.1E}): a false boundary")
    if not np.isfinite(dev):
        failed.append("the deviance is not finite")
    check_precision(tol, dev, failed)
    return NestedCertificate(not failed, face.ranks, tuple(face.qs), float(decrement), grad_max, mus, decs, hmin,
                             tol, failed, descent, dstep, Gs)


# ---------------------------------------------------------------- the search

def _lbfgs(obj: Objective, Gs0, maxiter: int, diagonal=None):
    """L-BFGS-B over the lower-triangular factors (diagonal ≥ 0), or over the square roots of a
    diagonal block's variances."""
    qs = [G.shape[0] for G in Gs0]
    diagonal = diagonal_blocks(diagonal, len(qs))
    idx = [(np.arange(q), np.arange(q)) if d else np.tril_indices(q) for q, d in zip(qs, diagonal)]
    cuts = np.cumsum([len(i[0]) for i in idx])[:-1]
    theta0 = np.concatenate([np.sqrt(np.clip(np.diag(G), 0.0, None)) if d else chol_psd(G)[i]
                             for G, i, d in zip(Gs0, idx, diagonal)])
    if theta0.size == 0:  # no random effects: the GLS fit is ordinary least squares, nothing to search
        return Gs0, obj.value(Gs0), 0, "no covariance parameters besides sigma2"
    bounds = [(0.0, None) if r == c else (None, None) for i in idx for r, c in zip(*i)]

    def lams(theta):
        out = []
        for q, i, t in zip(qs, idx, np.split(theta, cuts)):
            lam = np.zeros((q, q))
            lam[i] = t
            out.append(lam)
        return tuple(out)

    def fun(theta):
        ls = lams(theta)
        try:
            us = obj.solve(ls)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(theta)
        gs = us.gradients(obj.reml, obj.sigma2)
        return obj.deviance_of(us), np.concatenate([(2.0 * g @ lam)[i] for g, lam, i in zip(gs, ls, idx)])

    # tighter than two levels: ending closer to the optimum usually saves the Newton polish its second
    # face Hessian (2·face-size evaluations)
    res = lbfgsb.minimize(fun, theta0, bounds, maxiter=max(1, maxiter), ftol=1e-13, gtol=1e-9, maxcor=20)
    return tuple(lam @ lam.T for lam in lams(res.x)), float(res.fun), int(res.nit), str(res.message)


def _face_newton(obj: Objective, Gs, diagonal=None, max_steps: int = 30):
    """Newton on the product face through Gs (as estimation._face_newton). Eigenvalues below the
    rank tolerance are dropped unless that raises the deviance measurably; then the block keeps one
    more. Returns (Gs, deviance, steps, saddle, face_data)."""
    face = BlockFace(Gs, diagonal=diagonal)
    steps = 0
    noise = obj.noise(Gs)
    dev0 = obj.value(Gs)
    while True:
        if face.size == 0:
            return Gs, dev0, steps, None, None
        x = face.x0()
        dev, Gam = obj.at(face.G(x))
        if dev <= dev0 + tol_decrement(dev0, noise):
            break
        widened = False
        for b in range(len(face.faces)):
            f = face.faces[b]
            if f is not None and f.r < f.q:
                trial = list(face.ranks)
                trial[b] += 1
                wider = BlockFace(Gs, tuple(trial), face.diagonal)
                if wider.ranks[b] > face.ranks[b]:
                    face, widened = wider, True
                    break
        if not widened:
            return Gs, dev0, steps, None, None
    return newton_on_face(obj, face, x, dev, Gam, noise, max_steps, last_step=True)


def _polish_and_certify(obj: Objective, Gs, dev: float, budget: int, message: str, diagonal=None):
    iterations = 0
    cert = None
    stalled = False
    for _ in range(25):
        Gs, dev, steps, saddle, face_data = _face_newton(obj, Gs, diagonal)
        iterations += steps
        if saddle is not None:
            face, x0, e = saddle
            moved = None
            for sign in (1.0, -1.0):
                def curve(t, sign=sign):
                    x = x0 + sign * t * e
                    return face.G(x) if face.feasible(x) else None
                moved = escape_along(obj, curve, dev, 1.0)
                if moved is not None:
                    break
            if moved is None:
                break
            Gs, dev = moved
            continue
        cert = certify_nested(obj, Gs, tol_decrement(dev, obj.noise(Gs)), face_data, diagonal)
        if cert.certified:
            break
        if cert.descent is None:
            if face_data is not None or stalled or iterations >= budget:
                break
            stalled = True
            Gs, dev, nit, message = _lbfgs(obj, Gs, max(1, budget - iterations), diagonal)
            iterations += nit + 1
            continue
        b, D = cert.descent
        G0 = Gs
        moved = escape_along(obj, lambda t: _with(G0, b, G0[b] + t * D), dev, cert.descent_step)
        if moved is None:
            break
        Gs, dev = moved
        cert = None
    if cert is None or cert.G is not Gs:
        cert = certify_nested(obj, Gs, tol_decrement(dev, obj.noise(Gs)), diagonal=diagonal)
    return Gs, dev, cert, iterations, message


def search(obj: Objective, qs, max_iterations: int, diagonal=None):
    """From the best of the starts to the certified optimum (or the best uncertified point).
    diagonal: per block (or one bool for all), τℓ restricted to diagonal matrices."""
    diagonal = diagonal_blocks(diagonal, len(qs))
    starts = [("identity", tuple(0.25 * np.eye(q) for q in qs))]
    iterations = 0
    G1, d1, nit, msg = _lbfgs(obj, starts[0][1], max_iterations, diagonal)
    iterations += nit
    Gs, dev, cert, used, message = _polish_and_certify(obj, G1, d1, max_iterations - iterations, msg, diagonal)
    iterations += used
    start = "identity"
    if cert.certified and cert.ranks != cert.qs and iterations < max_iterations:
        # a certified boundary answer is a local optimum; false boundaries and other local optima
        # live there, so a second start from larger variances gets its chance (as at two levels)
        G1, d1, nit, m1 = _lbfgs(obj, tuple(2.5 * np.eye(q) for q in qs), max_iterations - iterations, diagonal)
        iterations += nit
        G1, d1, c1, used, m1 = _polish_and_certify(obj, G1, d1, max_iterations - iterations, m1, diagonal)
        iterations += used
        if c1.certified and d1 < dev - 1e-12 * abs(dev):
            Gs, dev, cert, start, message = G1, d1, c1, "identity*10", m1
    if not cert.certified and iterations < max_iterations:
        rng = np.random.default_rng(20261123)
        extra = [("identity/100", tuple(0.0025 * np.eye(q) for q in qs)),
                 ("identity*10", tuple(2.5 * np.eye(q) for q in qs))]
        for k in range(3):
            Ms = []
            for q, d in zip(qs, diagonal):
                M = rng.normal(size=(q, q))
                M = M @ M.T / max(q, 1) + 0.1 * np.eye(q)
                Ms.append(np.diag(np.diag(M)) if d else M)
            extra.append((f"random {k + 1}", tuple(Ms)))
        for name, G0 in extra:
            if iterations >= max_iterations:
                break
            G1, d1, nit, m1 = _lbfgs(obj, G0, max_iterations - iterations, diagonal)
            iterations += nit
            G1, d1, c1, used, m1 = _polish_and_certify(obj, G1, d1, max_iterations - iterations, m1, diagonal)
            iterations += used
            if (c1.certified and not cert.certified) or (c1.certified == cert.certified and d1 < dev):
                Gs, dev, cert, start, message = G1, d1, c1, name, m1
            if cert.certified:
                break
    for _ in range(sum(qs) + 1):
        # the global check (estimation.best_lower_face): each block at itself, at τ = 0, or at its lower
        # ranks, every combination but the point itself
        if not cert.certified:
            break
        options = [[Gs[b]] + (lower_faces(Gs[b], diagonal[b], r) if Gs[b].shape[0] else [])
                   for b, r in enumerate(cert.ranks)]
        candidates = [tuple(opt[i] for opt, i in zip(options, pick))
                      for pick in itertools.product(*(range(len(opt)) for opt in options)) if any(pick)]
        lower = best_lower_face(obj, candidates, lambda Gc: BlockFace(Gc, diagonal=diagonal), dev, obj.noise(Gs))
        if lower is None:
            break
        Gs, dev, cert, used, message = _polish_and_certify(obj, lower[0], lower[1], max(1, max_iterations - iterations),
                                                           message, diagonal)
        iterations += used
        start += ", continued from a lower face"
    else:
        if cert.certified:
            cert.certified = False
            cert.failed.append("a lower face of the PSD cones still has a lower deviance")
    return Gs, dev, cert, iterations, message, start


# ---------------------------------------------------------------- inference

def hlm_df(data, n_units: dict, N: int) -> np.ndarray:
    """Approximate d.f. of each fixed effect, the rules used (none is checked against HLM 7 output here):
    - its coefficient one level down (the level-(K−1) coefficient whose equation it is in) random at
      level K: K-units − (number of terms in that equation); with an intercept this is HLM3's
      K − S − 1 (Raudenbush & Bryk 2002, ch. 8);
    - otherwise the nearest coefficient below on its path that is random, at level ℓ: ℓ-units −
      (number of fixed effects under that coefficient reached through no other random coefficient):
      HLM2's J − S − 1 with the level-ℓ units as J (an analogue; UNVERIFIED);
    - no random coefficient on its path: N − p (UNVERIFIED; HLM 7's HLM2 uses N − J·R − F for fixed
      level-1 coefficients, HLM 6 used N − p)."""
    data = as_levels(data)
    K = data.n_levels
    cols = columns_of(data.layout, K)
    p = len(cols.x)
    out = []
    for nodes in cols.x_path_nodes:
        df = N - p
        for depth in range(K - 1, 0, -1):  # the coefficient at depth d is random at level d + 1
            node = nodes[depth - 1]
            if not node.random:
                continue
            df = n_units[depth + 1] - _fixed_under(node, depth, K)
            break
        out.append(df)
    return np.array(out, dtype=float)


def _fixed_under(node, depth: int, K: int) -> int:
    """Fixed effects under a coefficient reached through no random coefficient below it."""
    if depth == K:
        return 1
    return sum(_fixed_under(t, depth + 1, K) for t in node.terms if depth + 1 == K or not t.random)


def hlm3_df(data: NestedData, J2: int, J3: int, N: int) -> np.ndarray:
    """hlm_df at three levels."""
    return hlm_df(data, {2: J2, 3: J3}, N)


def _pchisq_upper(chi2: float, df: float) -> float:
    # scipy.stats.chi2.sf(chi2, df) is chdtrc(df, chi2) on the support; below it, 1 (chdtrc gives nan).
    return float(special.chdtrc(df, max(chi2, 0.0))) if df > 0 else float("nan")


def _has_fixed(node, depth: int, K: int) -> bool:
    return depth == K or any(_has_fixed(t, depth + 1, K) for t in node.terms)


def _stars(data: LevelsData, gamma: np.ndarray, eb: tuple):
    """For each coefficient of a level-d equation (d < K), keyed by its id: its fitted value per
    level-(d+1) unit from its own equation (`fit`: the fixed part plus the EB of the higher levels)
    and `star` = fit + its own level-(d+1) EB when it is random (R&B's β* one level at a time)."""
    K = data.n_levels
    preds = [np.asarray(a, float) for a in data.predictors]
    parents = [np.asarray(x, dtype=np.int64) for x in data.parents]
    fit, star = {}, {}
    counters = {"g": 0, **{lv: 0 for lv in range(2, K + 1)}}

    def walk(node, depth):
        if depth == K:
            g = gamma[counters["g"]]
            counters["g"] += 1
            return g
        level = depth + 1
        J = preds[level - 1].shape[0]
        f = np.zeros(J)
        if node.random:  # DFS order of the random coefficients is their order in τ_level
            a = counters[level]
            counters[level] += 1
        for t in node.terms:
            v = walk(t, depth + 1)
            if depth + 1 < K:
                v = v[parents[level - 1]]  # level-(level+1) values onto level-`level` units
            x = 1.0 if t.col is None else preds[level - 1][:, t.col]
            f = f + v * x
        fit[id(node)] = f
        star[id(node)] = f + (eb[level - 2][:, a] if node.random else 0.0)
        return star[id(node)]

    for node in data.layout:
        walk(node, 1)
    return fit, star


def _user_W(us: LevelsSolve, tr, level: int, sigma2: float) -> np.ndarray:
    """Wℓ/σ² in the user's columns: [Z|X|y] = [Z̃|X̃|ỹ]·M, M = diag(Aℓ⁻¹ … AK⁻¹, TX⁻¹, 1) with
    TX⁻¹b in y's column (ỹ = y − Xb), so W_user = M'W̃M."""
    st = us.stats
    blocks = [np.linalg.inv(A) for A in tr.As[level - 2:]]
    TXi = np.linalg.inv(tr.TX)
    n = sum(b.shape[0] for b in blocks) + st.p + 1
    M = np.zeros((n, n))
    k = 0
    for b in blocks:
        M[k:k + b.shape[0], k:k + b.shape[0]] = b
        k += b.shape[0]
    M[k:k + st.p, k:k + st.p] = TXi
    M[k:k + st.p, -1] = TXi @ tr.b
    M[-1, -1] = 1.0
    W = us.Ws[level - 3]
    return np.einsum("ba,bcj,cd->adj", M, W, M) / sigma2


def level_tests(data, raw: LevelsStats, us: LevelsSolve, tr, sigma2: float, taus, gamma, eb):
    """Reliabilities and χ² tests at every level 2..K (formulas in fit_nested's docstring).
    Returns (reliabilities, chi2) as tuples over the levels."""
    data = as_levels(data)
    K = data.n_levels
    cols = columns_of(data.layout, K)
    qs, p = raw.qs, raw.p
    fit, star = _stars(data, gamma, eb)
    # the coefficient at depth d of every column's path
    zpaths = [[] for _ in range(K - 1)]

    def collect(node, depth, nodes):
        nodes = nodes + (node,)
        if depth < K:
            if node.random:
                zpaths[depth - 1].append(nodes)
            for t in node.terms:
                collect(t, depth + 1, nodes)

    for node in data.layout:
        collect(node, 1, ())
    rels, chis = [], []
    for level in range(2, K + 1):
        q = qs[level - 2]
        if q == 0:
            rels.append(np.full(0, np.nan))
            chis.append([])
            continue
        depth = level - 1
        nodes = [path[-1] for path in zpaths[level - 2]]
        # ỹ = y minus the coefficients of depth `depth` that are not random, at their fitted values:
        # their fixed effects at γ̂ and their higher-level random columns at the EB means
        keep_x = np.array([not path[depth - 1].random for path in cols.x_path_nodes], dtype=float)
        J = raw.J(level)
        if level == 2:
            Szz = raw.ZZ2
            rest = raw.Z2B  # [Z3 … ZK | X | y]
        else:
            W = _user_W(us, tr, level, sigma2)
            Szz, rest = W[:q, :q], W[:q, q:]
        zy = rest[:, -1] - np.einsum("qpj,p->qj", rest[:, -1 - p:-1], gamma * keep_x)
        k = 0
        for m in range(level + 1, K + 1):
            qm = qs[m - 2]
            if qm:
                keep = np.array([not path[depth - 1].random for path in zpaths[m - 2]], dtype=float)
                ebm = (eb[m - 2] * keep)[raw.ancestor(level, m)] if level < m else None
                zy = zy - np.einsum("qaj,ja->qj", rest[:, k:k + qm], ebm)
            k += qm
        fits = np.array([fit[id(n)][:J] if np.ndim(fit[id(n)]) else np.full(J, fit[id(n)]) for n in nodes])
        if level == 2:
            ols = unit_ols(Szz.transpose(2, 0, 1), zy.T, raw.n2, None)
            ok, bhat = ols.ok, ols.beta
            V = sigma2 * np.diagonal(ols.inv, axis1=1, axis2=2)
        else:
            S = Szz.transpose(2, 0, 1)
            eig = np.linalg.eigvalsh(S)
            ok = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
            Sinv = np.full_like(S, np.nan)
            Sinv[ok] = np.linalg.inv(S[ok])
            bhat = np.einsum("kab,bk->ka", Sinv, zy)
            V = np.diagonal(Sinv, axis1=1, axis2=2)
        tau_d = np.diag(taus[level - 2])
        rels.append(np.array([float(np.mean(tau_d[a] / (tau_d[a] + V[ok, a]))) if ok.any() else np.nan
                              for a in range(q)]))
        chi_l = []
        for a, node in enumerate(nodes):
            dev = bhat[ok, a] - fits[a][ok]
            chi = float(np.sum(dev * dev / V[ok, a]))
            df = int(ok.sum()) - sum(_has_fixed(t, depth + 1, K) for t in node.terms)
            chi_l.append({"chi2": chi, "df": df, "p": _pchisq_upper(chi, df), "n_units": int(ok.sum())})
        chis.append(chi_l)
    return tuple(rels), tuple(chis)


def boundary_messages(G: np.ndarray, tau: np.ndarray, name: str, labels: list[str], rank: int) -> list[str]:
    """From the certified rank (standardised scale): zero variances and ±1 correlations."""
    out = []
    q = G.shape[0]
    if q == 0 or rank == q:
        return out
    w = np.linalg.eigvalsh(G)
    tol = rank_tolerance(w)
    d = np.diag(G)
    for a in range(q):
        if d[a] <= tol:
            out.append(f"{name}[{a},{a}] estimated as zero")
    for a in range(q):
        for b in range(a + 1, q):
            if d[a] > tol and d[b] > tol:
                r = tau[a, b] / np.sqrt(tau[a, a] * tau[b, b])
                if abs(r) >= BOUNDARY_CORR:
                    out.append(f"correlation of {labels[a]} and {labels[b]} is {'+' if r > 0 else '-'}1")
    if not out:
        out.append(f"{name} is singular (rank {rank} of {q})")
    return out


def estimable(raw: LevelsStats) -> None:
    """Refuse, in one line, models whose parameters cannot be estimated from these data (as lme4
    does: a grouping factor needs more than one level and fewer levels than observations)."""
    N, p, K = raw.N, raw.p, raw.n_levels
    if p == 0:
        raise ModelError(f"the model has no fixed effects (every level-{K} equation is empty)")
    if N <= p:
        raise ModelError(f"only {N} records for {p} fixed effects; the model needs more data")
    letters = "ruvw"
    for level in range(K, 1, -1):
        q, J = raw.qs[level - 2], raw.J(level)
        if q and J < 2:
            raise ModelError(f"the data have {J} level-{level} unit; level-{level} random effects need at least 2 "
                             f"units (remove the {letters[level - 2]} terms or use a model of fewer levels)")
    for level in range(2, K + 1):
        q, J = raw.qs[level - 2], raw.J(level)
        if q and N <= J * q:
            raise ModelError(f"{N} records for {J} level-{level} units with {q} random effect{'s' if q != 1 else ''} "
                             f"each: the level-1 variance cannot be separated from the level-{level} ones (lme4 "
                             f"refuses this too); remove {letters[level - 2]} terms"
                             + (" or use data with more records per level-2 unit" if level == 2 else ""))


def random_labels(layout, n_levels: int) -> tuple:
    """The random effects of each level in τ order, in the ASCII notation (r0, u01, v012, ...)."""
    out = [[] for _ in range(n_levels - 1)]
    letters = "ruvw"

    def walk(node, depth, idx):
        if depth == n_levels:
            return
        if node.random:
            out[depth - 1].append(letters[depth - 1] + "".join(str(i) for i in idx))
        for i, t in enumerate(node.terms):
            walk(t, depth + 1, idx + (i,))

    for ip, node in enumerate(layout):
        walk(node, 1, (ip,))
    return tuple(out)


def fit_nested(data, reml: bool = False, max_iterations: int = 1000, diagonal=False,
               df_method: str = "hlm", sigma2: float | None = None) -> NestedFit:
    """The certified (RE)ML fit over the τ blocks of levels 2..K and HLM's inference.

    Reliabilities, at each level ℓ (R&B 2002 ch. 8; HLM2's formula one level at a time; UNVERIFIED
    against HLM 7), for each random coefficient a of the level-(ℓ−1) equations: the mean over
    level-ℓ units with sufficient data of τℓ_aa / (τℓ_aa + V_aa), V = (Zℓ'R_{ℓ−1}⁻¹Zℓ)⁻¹σ², the
    sampling variance of the GLS estimate of the unit's coefficients from its own data given the
    lower levels' τ and σ² (level 2: OLS, V = σ²(Z2'Z2)⁻¹, units with n_j > q2 and Z2'Z2 non-singular).
    χ² tests (HLM2's formula one level at a time; UNVERIFIED against HLM 7, no reference exists here):
    b̂ = that GLS estimate from ỹ (y minus the level-(ℓ−1) coefficients that are not random, at
    their fixed + higher-level EB values); χ²_a = Σ (b̂_a − b*_a)²/V_aa with b* the coefficient's
    fitted value (its γ's and the higher levels' EB); d.f. = units − the terms of its equation that
    hold fixed effects. EB posterior variances are given γ̂ (as the two-level engine's).

    diagonal: True (every level) or one flag per level 2..K: τℓ diagonal (lme4's `||`), searched and
    certified over the non-negative diagonal. df_method: "hlm" (hlm_df) or "satterthwaite"
    (nested_df.satterthwaite_df, as lmerTest). sigma2: fixed at this value instead of estimated (the
    working model of an HGLM, nested_glmm.py); the deviance is then at that σ²."""
    reml = bool(reml)
    # one statistics pass: everything below reads the per-level-2-unit moments (moments.LevelsSummary)
    data = summary_of(data)
    if df_method == "satterthwaite" and getattr(data, "weighting", None) is not None:
        raise ModelError("Satterthwaite's d.f. come from the covariance of the variance estimates under the model; "
                         "with sampling weights use the robust (sandwich) SEs with HLM's d.f.")
    K = data.n_levels
    raw = reduce_nested(data)
    qs, p = raw.qs, raw.p
    diagonal = diagonal_blocks(diagonal, K - 1)
    if df_method not in ("hlm", "satterthwaite"):
        raise ValueError(f"df_method must be 'hlm' or 'satterthwaite', not {df_method!r}")
    estimable(raw)
    try:
        std, tr = reduce_standardised(data, diagonal)
    except FloatingPointError:
        raise ModelError("the fixed effects are linearly dependent (collinear predictors, or a predictor that is "
                         "constant where it enters); remove one of them") from None
    TX = tr.TX
    obj = Objective(std, reml, sigma2)
    Gs, dev, cert, iterations, message, start = search(obj, qs, max_iterations, diagonal)
    try:
        if not np.isfinite(dev):
            raise FloatingPointError
        us = obj.solve(tuple(factor(G) for G in Gs))
    except (FloatingPointError, np.linalg.LinAlgError):
        raise ModelError("the deviance cannot be evaluated at any point the search reached (X'V⁻¹X or a "
                         "per-unit covariance matrix is numerically singular): check for collinear predictors, "
                         "and centre any predictor whose mean is far larger than its spread") from None
    fixed = sigma2 is not None
    sigma2 = us.sigma2_hat(reml) if sigma2 is None else float(sigma2)
    taus = []
    for A, G in zip(tr.As, Gs):
        Gu = A @ G @ A.T
        taus.append(sigma2 * 0.5 * (Gu + Gu.T))
    # back to the user's fixed-effect columns: X̃ = X·TX, ỹ = y − Xb, so γ = TXγ̃ + b
    Pinv = us.Pinv()
    cov = sigma2 * (TX @ Pinv @ TX.T)
    sc = us.scores()
    wt = raw.weighting
    if wt is None:
        robust = TX @ Pinv @ (sc.T @ sc) @ Pinv @ TX.T
    else:  # WeMix's pseudo-ML sandwich, clustered at the top level (sandwich.py)
        robust = TX @ weighted_sandwich(sc, wt.conditional[-1], Pinv) @ TX.T
    gamma = TX @ us.gamma + tr.b
    deviance = obj.deviance_of(us) - (2.0 * tr.log_det_TX if reml else 0.0)
    # back to the user's columns: Z̃ = ZA, so b = A b̃ and Var b = A Var b̃ A'
    eb, eb_var = [], []
    for A, (m, v) in zip(tr.As, us.posterior_levels(sigma2)):
        eb.append(m @ A.T)
        eb_var.append(np.einsum("ab,jbc,dc->jad", A, v, A))
    rels, chis = level_tests(data, raw, us, tr, sigma2, taus, gamma, eb)
    labels = random_labels(data.layout, K)
    names = tau_names(K)
    boundary = []
    if cert.certified:
        for b in range(K - 1):
            boundary += boundary_messages(Gs[b], taus[b], names[b], list(labels[b]), cert.ranks[b])
    n_params = (0 if fixed else 1) + sum(q if d else q * (q + 1) // 2 for q, d in zip(qs, diagonal)) + (0 if reml else p)
    if cert.certified:
        message = f"at the optimum ({cert.describe()})"
    else:
        message = "not certified: " + "; ".join(cert.failed) + f" [{message}]"
    n_units = {level: raw.J(level) for level in range(2, K + 1)}
    if df_method == "satterthwaite":
        from .nested_df import satterthwaite_df

        df_gamma = satterthwaite_df(us, tr, sigma2, reml, diagonal)
    else:
        df_gamma = hlm_df(data, n_units, raw.N)
    return NestedFit(
        method="REML" if reml else "ML", gamma=gamma, cov_gamma=cov, cov_gamma_robust=robust,
        df_gamma=df_gamma, sigma2=sigma2, tau_pi=taus[0], tau_beta=taus[1],
        deviance=deviance, n_params=n_params, reliability_pi=rels[0], reliability_beta=rels[1],
        chi2_pi=chis[0], chi2_beta=chis[1], eb_pi=eb[0], eb_pi_var=eb_var[0], eb_beta=eb[1],
        eb_beta_var=eb_var[1], certificate=cert, converged=bool(cert.certified), iterations=iterations,
        message=message, boundary=boundary, solve=us, standardisation=tr, evaluations=obj.count, start=start,
        taus=tuple(taus), reliabilities=rels, chi2=chis, eb=tuple(eb), eb_var=tuple(eb_var),
        diagonal=diagonal, df_method=df_method)
