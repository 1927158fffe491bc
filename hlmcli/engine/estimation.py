"""Stage 6, estimation: minimise the profiled (RE)ML deviance over positive semi-definite τ, and
certify the optimum.

- The objective and its gradient come from the one per-unit solve (unitsolve.py). γ and σ² are
  profiled out; the search is over G = τ/σ².
- The search runs on standardised random-effect columns Z̃ = ZA (unit root-mean-square, centred at
  the grand mean when the intercept is random), so it does not depend on how the user scaled or
  located a predictor; τ = σ²·A G̃ A' maps the answer back exactly.
- L-BFGS-B over the lower-triangular factor Λ̃ (G̃ = Λ̃Λ̃', as lme4), from more than one start, then
  Newton steps on the face of the PSD cone the answer lies on, then the certificate
  (certificate.py). A descent direction out of a false boundary or a saddle is followed and the
  search resumes; "at the optimum" is claimed only when the certificate holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

import numpy as np

from . import lbfgsb
from .certificate import HESSIAN_TOL, Certificate, Face, certify
from .sufficient import ModelStats, reparametrise
from .unitsolve import UnitSolve, factor, unit_ols, unit_solve


class TauStructure(str, Enum):
    UNSTRUCTURED = "unstructured"
    DIAGONAL = "diagonal"


@dataclass
class FitResult:
    method: str
    gamma: np.ndarray  # for y centered at its mean (inference adds the shift back)
    cov_gamma: np.ndarray
    sigma2: float
    tau: np.ndarray
    deviance: float
    n_params: int
    iterations: int
    converged: bool  # the certificate holds
    certificate: Certificate
    solve: UnitSolve  # the per-unit solve at the answer, in the user's coordinates
    structure: TauStructure = TauStructure.UNSTRUCTURED
    start: str = ""
    evaluations: int = 0
    boundary: list[str] = field(default_factory=list)
    message: str = ""
    # the coordinates the search ran in: (standardised stats, A, T⁻¹, b) with Z̃ = ZA, X̃ = XT,
    # ỹ = y − X̃b; the certificate's G is τ/σ² there (inference.satterthwaite_df works there too)
    standardised: tuple | None = None

    @property
    def theta(self) -> np.ndarray:
        """lme4's θ: the lower triangle of the Cholesky factor of τ/σ² (rows in order)."""
        G = self.tau / self.sigma2
        q = G.shape[0]
        return chol_psd(G)[np.tril_indices(q)]


def chol_psd(G: np.ndarray) -> np.ndarray:
    """Lower-triangular Λ with ΛΛ' = G for PSD G (zero columns where G is singular)."""
    q = G.shape[0]
    L = np.zeros((q, q))
    for j in range(q):
        d = G[j, j] - L[j, :j] @ L[j, :j]
        scale = max(abs(G[j, j]), 1e-300)
        if d <= 1e-14 * scale:
            continue  # a zero pivot: column j stays zero
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, q):
            L[i, j] = (G[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


def standardising_map(stats: ModelStats, structure: TauStructure) -> np.ndarray:
    """A with Z̃ = ZA: each random column centred at its grand mean (when the intercept is random
    and τ unstructured, so that the centring is a reparametrisation of τ) and scaled to unit
    root-mean-square over the records."""
    q, N = stats.q, stats.N
    total = stats.unit_sum(stats.ZZ)  # Σ Z'Z (w_j-weighted in a weighted fit)
    A = np.eye(q)
    means = np.zeros(q)
    intercept = [k for k in range(q) if abs(total[k, k] - N) <= 1e-12 * N and np.allclose(stats.ZZ[:, k, k], stats.n)]
    if intercept and structure is TauStructure.UNSTRUCTURED:
        i0 = intercept[0]
        means = total[i0] / N
        means[i0] = 0.0
        A[i0] += -means
        A[i0, i0] = 1.0
    for k in range(q):
        if intercept and k == intercept[0] and structure is TauStructure.UNSTRUCTURED:
            continue
        var = total[k, k] / N - means[k] ** 2
        s = np.sqrt(var) if var > 1e-24 * max(total[k, k] / N, 1e-300) else np.sqrt(max(total[k, k] / N, 1e-300))
        A[:, k] = A[:, k] / s
    return A


def fixed_standardising(stats: ModelStats) -> tuple[np.ndarray, np.ndarray]:
    """(T⁻¹, b) for sufficient.reparametrise: X̃ = XT with X̃'X̃ = N·I (unit-RMS column scaling D,
    then the Cholesky factor R of the scaled Gram matrix, T = D⁻¹R⁻¹, so T⁻¹ = RD is upper
    triangular), and b the OLS coefficients of y on X̃. A predictor's scale or location then cannot
    make X'V⁻¹X ill-conditioned, and y'V⁻¹y − c'γ̂ does not cancel what OLS already explains.
    When the scaled Gram matrix is numerically singular, only the diagonal scaling is used."""
    p, N = stats.p, float(stats.N)
    d = np.sqrt(np.clip(np.diag(stats.XX), 0.0, None) / N)
    d[~(d > 0)] = 1.0
    C = stats.XX / np.outer(d, d) / N
    try:
        R = np.linalg.cholesky(0.5 * (C + C.T)).T
        if not np.all(np.isfinite(R)) or np.min(np.abs(np.diag(R))) < 1e-7:
            raise np.linalg.LinAlgError
    except np.linalg.LinAlgError:
        R = np.eye(p)
    Tinv = R * d[None, :]
    T = np.linalg.inv(Tinv)
    XXt = T.T @ stats.XX @ T
    try:
        b = np.linalg.solve(0.5 * (XXt + XXt.T), T.T @ stats.Xy)
    except np.linalg.LinAlgError:
        b = np.zeros(p)
    return Tinv, b if np.all(np.isfinite(b)) else np.zeros(p)


# ---------------------------------------------------------------- the objective in G̃

class DevianceObjective(Protocol):
    """What the search, the Newton step on the face, the escapes and the certificate ask of a model:
    the profiled deviance at a point (`value`), with its gradient in G (`at`), and how far rounding
    can move it there (`noise`). A point is G (two levels, Objective below) or a tuple of PSD blocks
    (G2, …, GK) for nested models (nested_fit.Objective); the gradient has the point's shape."""

    def at(self, G) -> tuple[float, object]: ...

    def value(self, G) -> float: ...

    def noise(self, G) -> float: ...


class Objective:
    """The profiled deviance and its G-gradient on standardised stats, counting evaluations
    (a DevianceObjective). With sigma2 given, the deviance at that fixed level-1 variance instead
    (σ² not profiled; PQL's working model has σ² = 1): then G = τ/σ² with the given σ²."""

    def __init__(self, stats: ModelStats, reml: bool, sigma2: float | None = None):
        self.stats, self.reml, self.count, self.sigma2 = stats, reml, 0, sigma2
        self._cache: list = []

    def solve(self, lam: np.ndarray) -> UnitSolve:
        # the search ends where the certificate and the rounding noise ask again (a solve at the same
        # point): the last few solves are kept, keyed on the factor's exact bits, as nested_fit's are
        key = np.asarray(lam, float).tobytes()
        for k, us in self._cache:
            if k == key:
                return us
        self.count += 1
        us = unit_solve(self.stats, lam)
        self._cache = [(key, us)] + self._cache[:3]
        return us

    def deviance_of(self, us: UnitSolve) -> float:
        return us.profiled_deviance(self.reml) if self.sigma2 is None else us.deviance(self.sigma2, self.reml)

    def gradient_of(self, us: UnitSolve) -> np.ndarray:
        return us.gradient_G(self.reml, sigma2=self.sigma2)

    def at(self, G: np.ndarray) -> tuple[float, np.ndarray]:
        try:
            us = self.solve(factor(G))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(G)
        return self.deviance_of(us), self.gradient_of(us)

    def noise(self, G: np.ndarray) -> float:
        try:
            us = self.solve(factor(G))
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0
        if self.sigma2 is None:
            return us.rounding_noise(self.reml)
        # σ² fixed: rss/σ² carries the absolute rounding of the differences that make rss
        eps = np.finfo(float).eps
        yy = self.stats.yy
        cancel = abs(yy) + abs(yy - us.s) + abs(float(us.c @ us.gamma))
        logdets = float(np.abs(us.logdet).sum()) + (abs(us.log_det_P()) if self.reml else 0.0)
        counted = 8.0 * eps * (cancel / self.sigma2 + logdets)
        # PQL's working models (the only fits with σ² fixed) can have large weights, so I + Z'WZ·G is
        # ill conditioned per unit and its solves lose more digits than the terms above count (seen:
        # 1e-6 deviance units of noise where they count 1e-9). Measured as well: the second
        # difference of the deviance over ±1e-12 relative changes of G, whose exact value is
        # negligible, so what is left is rounding.
        return max(counted, self.measured_noise(G, self.deviance_of(us)))

    def measured_noise(self, G: np.ndarray, dev: float, k: int = 3) -> float:
        """max |d(G + δE) + d(G − δE) − 2d(G)| / 2 over k fixed pseudo-random symmetric E, δ = 1e-12
        relative: the gradient's term cancels and the curvature's is ~1e-24, so this is the
        deviance's rounding noise as it is evaluated."""
        rng = np.random.default_rng(0)
        delta = 1e-12 * max(float(np.max(np.abs(G))), 1e-300)
        diag = np.count_nonzero(G - np.diag(np.diag(G))) == 0
        worst = 0.0
        for _ in range(k):
            E = rng.normal(size=G.shape)
            E = np.diag(np.diag(E)) * (np.diag(G) > 0) if diag else E + E.T
            vp, vm = self.value(G + delta * E), self.value(G - delta * E)
            if np.isfinite(vp) and np.isfinite(vm):
                worst = max(worst, 0.5 * abs(vp + vm - 2.0 * dev))
        return worst

    def value(self, G: np.ndarray) -> float:
        try:
            return self.deviance_of(self.solve(factor(G)))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf


def _lbfgs(obj: Objective, G0: np.ndarray, structure: TauStructure, maxiter: int) -> tuple[np.ndarray, float, int, str]:
    """L-BFGS-B over the Cholesky factor (diagonal ≥ 0), from G0."""
    q = G0.shape[0]
    if structure is TauStructure.DIAGONAL:
        idx = (np.arange(q), np.arange(q))
        theta0 = np.sqrt(np.clip(np.diag(G0), 0, None))
        bounds = [(0.0, None)] * q
    else:
        idx = np.tril_indices(q)
        theta0 = chol_psd(G0)[idx]
        bounds = [(0.0, None) if r == c else (None, None) for r, c in zip(*idx)]

    def fun(theta):
        lam = np.zeros((q, q))
        lam[idx] = theta
        try:
            us = obj.solve(lam)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(theta)
        grad = 2.0 * obj.gradient_of(us) @ lam
        return obj.deviance_of(us), grad[idx]

    res = lbfgsb.minimize(fun, theta0, bounds, maxiter=max(1, maxiter), ftol=1e-10, gtol=1e-7, maxcor=20)
    lam = np.zeros((q, q))
    lam[idx] = res.x
    return lam @ lam.T, float(res.fun), int(res.nit), str(res.message)


def _moment_start(stats: ModelStats, structure: TauStructure) -> np.ndarray | None:
    """HLM's kind of start: the spread of per-unit OLS slopes beyond their sampling error, over the
    pooled within-unit σ², projected onto the PSD cone (standardised coordinates)."""
    fit = unit_ols(stats.ZZ, stats.Zy, stats.n, None)
    ok = fit.ok
    if ok.sum() < stats.q + 2:
        return None
    # pooled σ² from the units' OLS residuals needs y'y per unit; a ridge-free proxy: the total
    # residual variance of the pooled regression on Z, which bounds σ² from above.
    beta = fit.beta[ok]
    Zyt, ZZt = stats.Zy.sum(axis=0), stats.ZZ.sum(axis=0)
    b_pool = np.linalg.lstsq(ZZt, Zyt, rcond=None)[0]
    s2 = max((stats.yy - b_pool @ Zyt) / max(stats.N - stats.q, 1), 1e-300)
    T = np.cov(beta.T, ddof=1).reshape(stats.q, stats.q) - 0.5 * s2 * fit.inv[ok].mean(axis=0)
    w, V = np.linalg.eigh(0.5 * (T + T.T))
    G = (V * np.clip(w, 0, None)) @ V.T / s2
    if structure is TauStructure.DIAGONAL:
        G = np.diag(np.diag(G))
    floor = 0.01
    G = G + floor * np.eye(stats.q)  # away from the boundary, where L-BFGS-B can stall
    return G if np.all(np.isfinite(G)) else None


# ---------------------------------------------------------------- Newton on the face

TOL_DECREMENT_ABS = 1e-10  # deviance units


def tol_decrement(deviance: float, noise: float = 0.0) -> float:
    """A remaining decrease below this is no decrease: 1e-10 plus 1e-14 of the deviance, or, when
    the data make the deviance itself less precise than that, ten times its rounding noise
    (UnitSolve.rounding_noise): a smaller decrease could not be verified."""
    return max(TOL_DECREMENT_ABS + 1e-14 * abs(deviance), 10.0 * noise)


def _face_newton(obj: Objective, G: np.ndarray, diagonal: bool, max_steps: int = 30):
    """Newton steps on the face through G (certificate.Face) in fixed face coordinates, with
    backtracking that keeps S ≻ 0. The Hessian (central differences) is reused while steps succeed
    and recomputed at the last point, so the decrement that ends the loop is an exact Newton
    decrement there: the certificate takes it over. Returns (G, deviance, steps, saddle, face_data)."""
    face = Face(G, diagonal)
    steps = 0
    noise = obj.noise(G)
    dev0 = obj.value(G)
    # Eigenvalues below the rank tolerance are dropped, unless that raises the deviance
    # measurably: then the face keeps them (a small variance that the data do support).
    while True:
        if face.size == 0:
            return G, dev0, steps, None, None
        x = face.x0()
        dev, Gam = obj.at(face.G(x))
        if dev <= dev0 + tol_decrement(dev0, noise):
            break
        if face.r == face.q:
            return G, dev0, steps, None, None
        wider = Face(G, diagonal, min_rank=face.r + 1)
        if wider.r == face.r:
            return G, dev0, steps, None, None
        face = wider
    return newton_on_face(obj, face, x, dev, Gam, noise, max_steps)


def newton_on_face(obj: DevianceObjective, face, x, dev: float, Gam, noise: float, max_steps: int = 30,
                   last_step: bool = False):
    """Newton steps from face coordinates x (deviance dev, gradient matrix Gam there) on a fixed
    face: certificate.Face for one τ, or the three-level search's face over two τ blocks (any
    object with G, gradient, hessian and feasible). Returns (G, deviance, steps, saddle, face_data).
    last_step: once the decrement is below the tolerance, take the Newton step already computed
    when it lowers the face gradient: a decrement δ leaves the parameters about √(2δ/λ) from the
    optimum (1e-9 at δ = 1e-18), one more step leaves them at rounding, so fits of the same data
    summarised in another order end at the same point, not at two points within the tolerance."""
    steps = unverified = 0
    G = face.G(x)
    H, fresh = face.hessian(obj, x), True
    for _ in range(max_steps):
        g = face.gradient(Gam, x)
        w, E = np.linalg.eigh(H)
        top = max(abs(float(w[-1])), 1e-300)
        if w[0] < -HESSIAN_TOL * top:
            if fresh:
                return G, dev, steps, (face, x, E[:, 0]), None
            H, fresh = face.hessian(obj, x), True
            continue
        keep = w > HESSIAN_TOL * top
        step = E[:, keep] @ ((E[:, keep].T @ g) / w[keep])
        predicted = 0.5 * float(g @ step)
        if predicted <= 1e-6 * tol_decrement(dev) or unverified >= 2:
            if fresh:
                if last_step and float(g @ step) > 0 and face.feasible(x - step):
                    d_new, Gam_new = obj.at(face.G(x - step))
                    g_new = face.gradient(Gam_new, x - step)
                    if np.isfinite(d_new) and d_new <= dev + tol_decrement(dev, noise) and \
                            float(np.abs(g_new).max()) < float(np.abs(g).max()):
                        x, dev, Gam, g = x - step, d_new, Gam_new, g_new
                        G = face.G(x)
                return G, dev, steps, None, (face, x, H, g, dev, Gam)
            H, fresh = face.hessian(obj, x), True
            continue
        # A decrease below the deviance's rounding noise cannot be verified by comparing deviances, so
        # the full Newton step is then taken on the analytic gradient's word (allowed to rise within
        # that noise), at most twice: the optimum is then pinned down to far below the certificate's
        # tolerance, so two fits of one model in different coordinates agree (a step that stops at
        # the noise leaves G 1e-6 off along a weakly determined direction, and the d.f. with it).
        slack = tol_decrement(dev, noise) if predicted <= tol_decrement(dev, noise) else 0.0
        t, moved = 1.0, False
        while t > 1e-10:
            x_new = x - t * step
            if face.feasible(x_new):
                d_new, Gam_new = obj.at(face.G(x_new))
                if d_new <= dev + (slack if t == 1.0 else 0.0):
                    unverified += slack > 0
                    x, G, dev, Gam, moved = x_new, face.G(x_new), d_new, Gam_new, True
                    break
            t *= 0.5
        steps += 1
        if not moved:
            if fresh:
                break
            H, fresh = face.hessian(obj, x), True
        else:
            fresh = False
    return G, dev, steps, None, None


def escape_along(obj: DevianceObjective, curve, dev: float, t0: float) -> tuple[np.ndarray, float] | None:
    """A line search along a feasible curve t -> G(t), t > 0, for a clearly lower deviance: steps
    from 1e-3 to 10 times t0, the best step the certificate found, and from 1e-9 to 1e3."""
    best = None
    for t in np.concatenate([t0 * np.logspace(-3, 1, 17), np.logspace(-9, 3, 13)]):
        Gt = curve(t)
        if Gt is None:
            continue
        d = obj.value(Gt)
        if d < dev - tol_decrement(dev) and (best is None or d < best[1]):
            best = (Gt, d)
    return best


def _along(G: np.ndarray, D: np.ndarray):
    return lambda t: G + t * D


def _along_face(face: Face, x0: np.ndarray, e: np.ndarray, sign: float):
    def curve(t):
        x = x0 + sign * t * e
        return face.G(x) if face.feasible(x) else None
    return curve


def _polish_and_certify(obj: Objective, G: np.ndarray, dev: float, structure: TauStructure, budget: int,
                        message: str):
    """Newton on the face, then the certificate; a saddle or a descent direction into the cone is
    followed and the loop resumes. L-BFGS-B runs again only when Newton cannot finish.
    Returns (G, deviance, certificate, iterations used, message)."""
    diagonal = structure is TauStructure.DIAGONAL
    iterations = 0
    cert = None
    stalled = False
    for _ in range(25):
        G, dev, steps, saddle, face_data = _face_newton(obj, G, diagonal)
        iterations += steps
        if saddle is not None:
            face, x0, e = saddle
            moved = None
            for sign in (1.0, -1.0):
                moved = escape_along(obj, _along_face(face, x0, e, sign), dev, 1.0)
                if moved is not None:
                    break
            if moved is None:
                break
            G, dev = moved
            continue
        cert = certify(obj, G, diagonal, tol_decrement(dev, obj.noise(G)), face_data)
        if cert.certified:
            break
        if cert.descent is None:
            if face_data is not None or stalled or iterations >= budget:
                break
            # Newton could not finish on this face: one more quasi-Newton run, then give up
            stalled = True
            G1, d1, nit, msg = _lbfgs(obj, G, structure, max(1, budget - iterations))
            iterations += nit + 1
            if d1 < dev:  # its start is G re-factored, so it may end higher: then keep G
                G, dev, message = G1, d1, msg
            continue
        moved = escape_along(obj, _along(G, cert.descent), dev, cert.descent_step)
        if moved is None:
            break
        G, dev = moved
        cert = None
    if cert is None or cert.G is not G:
        cert = certify(obj, G, diagonal, tol_decrement(dev, obj.noise(G)))
    return G, dev, cert, iterations, message


def lower_faces(G: np.ndarray, diagonal: bool, rank: int) -> list[np.ndarray]:
    """Points on the faces below G's, where the search may not have looked: τ = 0 always; at a
    boundary (rank r < q) also G's best rank-k approximations, k = 1..r−1 (unstructured), or G
    with every proper non-empty subset of its positive entries kept (diagonal)."""
    q = G.shape[0]
    out = [np.zeros((q, q))]
    if rank >= q or rank <= 1:
        return out
    if diagonal:
        d = np.diag(G)
        pos = [int(k) for k in np.argsort(-d)[:rank]]
        for mask in range(1, 2 ** rank - 1):
            keep = [pos[i] for i in range(rank) if mask >> i & 1]
            D = np.zeros(q)
            D[keep] = d[keep]
            out.append(np.diag(D))
    else:
        w, E = np.linalg.eigh(0.5 * (G + G.T))
        for k in range(1, rank):
            out.append((E[:, -k:] * w[-k:]) @ E[:, -k:].T)
    return out


def _truncate(G: np.ndarray, diagonal: bool, rank: int) -> np.ndarray:
    """G with all but its `rank` largest eigenvalues (diagonal entries, for a diagonal τ) set to zero."""
    if diagonal:
        d = np.diag(G).copy()
        d[np.argsort(-d)[rank:]] = 0.0
        return np.diag(d)
    w, E = np.linalg.eigh(0.5 * (G + G.T))
    return (E[:, -rank:] * w[-rank:]) @ E[:, -rank:].T


def best_lower_face(obj, candidates, make_face, dev: float, noise: float):
    """The global check of a certified boundary optimum: the minimum of the deviance on each
    candidate's face (Newton on that face from the candidate), and the lowest of them when it is
    below dev by more than the tolerance (then the search continues from there), else None. The
    local certificate cannot see another face's minimum: a ±1 correlation that is a genuine local
    minimum can sit above τ = 0."""
    best = None
    tol = tol_decrement(dev, noise)
    for Gc in candidates:
        face = make_face(Gc)
        if face.size == 0:
            G1, d1 = Gc, obj.value(Gc)
        else:
            x = face.x0()
            d0, Gam = obj.at(face.G(x))
            if not np.isfinite(d0):
                continue
            G1, d1, _, _, _ = newton_on_face(obj, face, x, d0, Gam, obj.noise(face.G(x)))
        if d1 < dev - tol and (best is None or d1 < best[1]):
            best = (G1, d1)
    return best


def fit(stats: ModelStats, method: str = "REML", max_iterations: int = 1000,
        structure: TauStructure = TauStructure.UNSTRUCTURED, start: np.ndarray | None = None,
        sigma2: float | None = None, centred=None) -> FitResult:
    """start: a G̃ on the standardised scale (a previous fit's certificate.G) to start from alone,
    e.g. the fit of the previous plausible value; the certificate is the same either way.
    centred: the same model on internally centred columns (centring.Centred), when the caller has
    it: the search and the reported deviance then come from its statistics, which large means
    cannot spoil, and the answer is mapped back through its T and A.
    sigma2: hold the level-1 variance at this value instead of profiling it (the search, the
    certificate and the escapes are the same; G = τ/σ²)."""
    reml = method.upper() == "REML"
    diagonal = structure is TauStructure.DIAGONAL
    q = stats.q
    base = stats if centred is None else centred.stats
    A = standardising_map(base, structure)
    Tinv, b = fixed_standardising(base)  # X and y are untouched by A
    std = reparametrise(base, A, Tinv, b)
    if centred is not None:
        # compose: Z̃ = (ZA_c)A, X̃ = (XT_c)T, y = ỹ + X_cb₀ = ỹ_std + X̃(b + T⁻¹b₀); T_c is unit upper
        # triangular, so Tinv stays upper triangular
        A = centred.A @ A
        b = b + Tinv @ centred.b0
        Tinv = Tinv @ np.linalg.inv(centred.T)
    obj = Objective(std, reml, sigma2)

    if start is not None:
        starts = [("previous fit", np.asarray(start, dtype=float))]
    else:
        starts = [("identity", 0.25 * np.eye(q))]
        moment = _moment_start(std, structure)
        if moment is not None:
            starts.append(("moment", moment))
    # One L-BFGS-B run from the start with the lower deviance; the other start too when that run
    # ends on the boundary, where false boundaries and local optima live.
    starts.sort(key=lambda s: obj.value(s[1]))
    iterations = 0
    best = None
    for k, (name, G0) in enumerate(starts):
        if k and (iterations >= max_iterations or Face(best[0], diagonal).r == q):
            break
        G1, d1, nit, msg = _lbfgs(obj, G0, structure, max_iterations - iterations)
        iterations += nit
        if best is None or d1 < best[1] - 1e-12 * abs(d1):
            best = (G1, d1, name, msg)
    G, dev, start_name, message = best

    G, dev, cert, used, message = _polish_and_certify(obj, G, dev, structure, max_iterations - iterations, message)
    iterations += used
    if not cert.certified and iterations < max_iterations:
        # Not certified from the best start: more starts, spread over scales (standardised G), and
        # the certified answer with the lowest deviance wins.
        rng = np.random.default_rng(20261123)
        extra = [("identity/100", 0.0025 * np.eye(q)), ("identity*10", 2.5 * np.eye(q))]
        for k in range(3):
            M = rng.normal(size=(q, q))
            R = M @ M.T / q + 0.1 * np.eye(q)
            extra.append((f"random {k + 1}", np.diag(np.diag(R)) if diagonal else R))
        for name, G0 in extra:
            if iterations >= max_iterations:
                break
            G1, d1, nit, msg = _lbfgs(obj, G0, structure, max_iterations - iterations)
            iterations += nit
            G1, d1, c1, used, msg = _polish_and_certify(obj, G1, d1, structure, max_iterations - iterations, msg)
            iterations += used
            better = (c1.certified and not cert.certified) or (c1.certified == cert.certified and d1 < dev)
            if better:
                G, dev, cert, start_name, message = G1, d1, c1, name, msg
            if cert.certified:
                break
    for _ in range(q + 1):
        if not cert.certified:
            break
        lower = best_lower_face(obj, lower_faces(G, diagonal, cert.rank), lambda Gc: Face(Gc, diagonal), dev,
                                obj.noise(G))
        if lower is None:
            break
        G, dev, cert, used, message = _polish_and_certify(obj, lower[0], lower[1], structure,
                                                          max(1, max_iterations - iterations), message)
        iterations += used
        start_name += ", continued from a lower face"
    else:
        if cert.certified:
            cert.certified = False
            cert.failed.append("a lower face of the PSD cone still has a lower deviance")
    if cert.certified and cert.rank < q:
        # The certificate judged τ to have this rank: report the point on that face (the eigenvalues it
        # counts as zero set to zero, e.g. a variance of 5e-8 that is the boundary's), when the deviance
        # there is the same within the tolerance, so the printed τ and its boundary notes agree.
        on_face = lower_faces(G, diagonal, q)[0] if cert.rank == 0 else _truncate(G, diagonal, cert.rank)
        d_face = obj.value(on_face)
        if np.isfinite(d_face) and d_face <= dev + tol_decrement(dev, obj.noise(G)):
            G, dev = on_face, d_face

    G_user = A @ G @ A.T
    G_user = 0.5 * (G_user + G_user.T)
    if diagonal:
        G_user = np.diag(np.diag(G_user))
    std_solve = obj.solve(factor(G))
    # The same solve in the user's coordinates, mapped rather than recomputed, so a badly scaled X
    # or Z cannot spoil it. Random part (Z̃ = ZA): K = A K̃ A', log-determinants unchanged. Fixed part
    # (X̃ = XT, ỹ = y − X̃b): γ = T(γ̃ + b), P = T⁻ᵀP̃T⁻¹ with Cholesky factor T⁻ᵀL̃ (T⁻ᵀ = (RD)' is
    # lower triangular), c = T⁻ᵀ(c̃ + P̃b), y'V⁻¹y = s̃ + 2b'c̃ + b'P̃b, rss unchanged.
    Tt = Tinv.T
    c_std = std_solve.c + std_solve.P @ b
    P_user = Tt @ std_solve.P @ Tinv
    solve = replace(std_solve, stats=stats, lam=A @ std_solve.lam, G=G_user,
                    K=np.ascontiguousarray((A @ std_solve.K.transpose(2, 0, 1) @ A.T).transpose(1, 2, 0)),
                    P=0.5 * (P_user + P_user.T), cholP=Tt @ std_solve.cholP, c=Tt @ c_std,
                    s=float(std_solve.s + 2.0 * b @ std_solve.c + b @ std_solve.P @ b),
                    gamma=np.linalg.solve(Tinv, std_solve.gamma + b))
    fixed = sigma2 is not None
    sigma2 = sigma2 if fixed else solve.sigma2_hat(reml)
    n_params = (0 if fixed else 1) + (q if diagonal else q * (q + 1) // 2) + (0 if reml else stats.p)
    return FitResult(
        method="REML" if reml else "ML", gamma=solve.gamma, cov_gamma=sigma2 * solve.Pinv(),
        sigma2=sigma2, tau=sigma2 * G_user, n_params=n_params,
        deviance=solve.deviance(sigma2, reml) if fixed else solve.profiled_deviance(reml),
        iterations=iterations, converged=cert.certified, certificate=cert, solve=solve, structure=structure,
        start=start_name, evaluations=obj.count, message=message, standardised=(std, A, Tinv, b),
    )


def deviance_at(sigma2: float, tau: np.ndarray, stats: ModelStats, method: str = "REML") -> float:
    """The (RE)ML deviance at given σ² and τ (not profiled), e.g. to judge another program's estimates."""
    reml = method.upper() == "REML"
    G = np.asarray(tau, dtype=float) / sigma2
    try:
        us = unit_solve(stats, factor(G))
    except (FloatingPointError, np.linalg.LinAlgError):
        return float("inf")
    return us.deviance(sigma2, reml)
