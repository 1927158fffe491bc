"""The one search over a tuple of PSD blocks: from starts to a certified optimum of any
objective.DevianceObjective (the two-level profiled deviance, one block; the nested deviance, a
block per level 2..K).

- L-BFGS-B over the blocks' lower-triangular factors Λℓ (Gℓ = ΛℓΛℓ', diagonal ≥ 0, as lme4), or
  over the square roots of a diagonal block's variances;
- Newton steps on the face of the product cone through the answer (certificate.BlockFace: each
  block keeps its own rank and null space), with the Newton decrement as the stopping rule and the
  last step taken;
- the certificate (certificate.certify_blocks); a saddle or a descent direction into a block's
  cone is followed (escape_along) and the search resumes, L-BFGS-B again only when Newton cannot
  finish;
- more starts when the answer is not certified, and the global check of a certified boundary
  optimum: the lower faces of each block (best_lower_face).

Why the Newton stage: in Cholesky coordinates ∂d/∂Λ = 2ΓΛ vanishes in every zero column of Λ
whatever Γ is, so L-BFGS-B stalls at false boundaries and saddles and stops where its own
tolerances say, not at the optimum; on the face the parametrisation is regular (certificate.Face).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from . import lbfgsb
from .certificate import HESSIAN_TOL, BlockCertificate, BlockFace, certify_blocks, diagonal_blocks, with_block

TOL_DECREMENT_ABS = 1e-10  # deviance units
MODEL_AGREEMENT = 0.5  # a Newton step whose decrease is off the model's prediction by more than this share is poor


def poor_model(actual: float, predicted: float) -> bool:
    """The quadratic model's prediction of a step's decrease is poor: off by more than MODEL_AGREEMENT
    of it either way (a matrix k times the Hessian gives actual/predicted = 2 − 1/k in one dimension,
    so a too-large H that makes short steps shows as well as a too-small one)."""
    return not abs(actual - predicted) <= MODEL_AGREEMENT * abs(predicted)


def tol_decrement(deviance: float, noise: float = 0.0) -> float:
    """A remaining decrease below this is no decrease: 1e-10 plus 1e-14 of the deviance, or, when
    the data make the deviance itself less precise than that, ten times its rounding noise
    (UnitSolve.rounding_noise): a smaller decrease could not be verified."""
    return max(TOL_DECREMENT_ABS + 1e-14 * abs(deviance), 10.0 * noise)


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


# ---------------------------------------------------------------- L-BFGS-B on the factors

@dataclass(frozen=True)
class LbfgsTolerances:
    """scipy's L-BFGS-B stopping tolerances. Tighter ones end nearer the optimum, which can spare the
    Newton stage its second face Hessian, at the price of more quasi-Newton iterations."""
    ftol: float = 1e-10
    gtol: float = 1e-7


def lbfgs(obj, Gs0, diagonal, maxiter: int, tolerances: LbfgsTolerances = LbfgsTolerances()):
    """L-BFGS-B over the blocks' lower-triangular factors (diagonal ≥ 0), or over the square roots of
    a diagonal block's variances, from Gs0. Returns (Gs, deviance, iterations, message)."""
    coords = FactorCoordinates([G.shape[0] for G in Gs0], diagonal_blocks(diagonal, len(Gs0)))
    theta0 = coords.theta(Gs0)
    if theta0.size == 0:  # no random effects: the GLS fit is ordinary least squares, nothing to search
        return tuple(Gs0), obj.value(tuple(Gs0)), 0, "no covariance parameters besides sigma2"
    bounds = [(0.0, None) if r == c else (None, None) for i in coords.idx for r, c in zip(*i)]

    def fun(theta):
        ls = coords.lams(theta)
        dev, gs = obj.at(tuple(lam @ lam.T for lam in ls), factors=ls)
        if not np.isfinite(dev):
            return np.inf, np.zeros_like(theta)
        return dev, coords.gradient(gs, ls)

    res = lbfgsb.minimize(fun, theta0, bounds, maxiter=max(1, maxiter), ftol=tolerances.ftol, gtol=tolerances.gtol,
                          maxcor=20)
    return tuple(lam @ lam.T for lam in coords.lams(res.x)), float(res.fun), int(res.nit), str(res.message)


class FactorCoordinates:
    """L-BFGS-B's coordinates θ of the blocks' covariances (lbfgs; crossed.newton_start): each block's
    lower-triangular factor Λ (G = ΛΛ'), or the square roots of a diagonal block's variances, one
    block after another. The deviance's gradient in θ is 2·(∂d/∂G)Λ at those entries."""

    def __init__(self, qs, diagonal):
        self.qs, self.diagonal = list(qs), list(diagonal)
        self.idx = [(np.arange(q), np.arange(q)) if d else np.tril_indices(q) for q, d in zip(qs, diagonal)]
        self.cuts = np.cumsum([len(i[0]) for i in self.idx])[:-1]

    def theta(self, Gs) -> np.ndarray:
        return np.concatenate([np.sqrt(np.clip(np.diag(G), 0.0, None)) if d else chol_psd(G)[i]
                               for G, i, d in zip(Gs, self.idx, self.diagonal)])

    def of_factors(self, ls) -> np.ndarray:
        return np.concatenate([lam[i] for lam, i in zip(ls, self.idx)])

    def lams(self, theta) -> tuple:
        out = []
        for q, i, t in zip(self.qs, self.idx, np.split(theta, self.cuts)):
            lam = np.zeros((q, q))
            lam[i] = t
            out.append(lam)
        return tuple(out)

    def gradient(self, gams, ls) -> np.ndarray:
        return np.concatenate([(2.0 * g @ lam)[i] for g, lam, i in zip(gams, ls, self.idx)])


# ---------------------------------------------------------------- Newton on the face

def face_newton(obj, Gs, diagonal=None, max_steps: int = 30):
    """Newton on the face through Gs (certificate.BlockFace). Eigenvalues below the rank tolerance
    are dropped unless that raises the deviance measurably; then the face keeps one more (a small
    variance that the data do support). Returns (Gs, deviance, steps, saddle, face_data)."""
    face = BlockFace(Gs, diagonal=diagonal)
    noise = obj.noise(Gs)
    dev0 = obj.value(Gs)
    while True:
        if face.size == 0:
            return Gs, dev0, 0, None, None
        x = face.x0()
        dev, Gam = obj.at(face.G(x))
        if dev <= dev0 + tol_decrement(dev0, noise):
            break
        face = face.widened(Gs)
        if face is None:
            return Gs, dev0, 0, None, None
    return newton_on_face(obj, face, x, dev, Gam, noise, max_steps, last_step=True)


def secant_update(H: np.ndarray, s: np.ndarray, y: np.ndarray) -> np.ndarray:
    """BFGS's update of a Hessian H after a step s that changed the gradient by y (y/s itself in one
    dimension); H unchanged when the step shows no positive curvature."""
    sy = float(s @ y)
    Hs = H @ s
    sHs = float(s @ Hs)
    if not (sy > 0 and sHs > 0):
        return H
    return H - np.outer(Hs, Hs) / sHs + np.outer(y, y) / sy


def newton_on_face(obj, face, x, dev: float, Gam, noise: float, max_steps: int = 30, last_step: bool = False,
                   secant: bool = False, refresh_poor: bool = False):
    """Newton steps from face coordinates x (deviance dev, gradient Gam there) on a fixed face
    (certificate.BlockFace), with backtracking that keeps S ≻ 0. The Hessian (central differences)
    is reused while steps succeed and recomputed at the last point, so the decrement that ends the
    loop is an exact Newton decrement there, which the certificate takes over. Returns (G, deviance,
    steps, saddle, face_data).
    last_step: once the decrement is below the tolerance, take the Newton step already computed
    when it lowers the face gradient: a decrement δ leaves the parameters about √(2δ/λ) from the
    optimum (1e-9 at δ = 1e-18), one more step leaves them at rounding, so fits of the same data
    summarised in another order end at the same point, not at two points within the tolerance.
    refresh_poor: recompute H after a damped step or a poor quadratic model (poor_model), not only
    after a failed one: for a search from far off (the lower faces of best_lower_face), where a kept H
    crawls. The main search keeps H while steps succeed (its budget, --max-iterations, bounds L-BFGS-B
    and this stage is only the polish; a fit stopped early by it stays uncertified).
    secant: between fresh Hessians, update H by the gradients' change along each step taken (BFGS)
    rather than keep the stale one: far from the face's minimum (a lower face entered from the answer)
    a stale H overshoots step after step. The loop still ends only on a fresh Hessian's decrement."""
    steps = unverified = 0
    G = face.G(x)
    H, fresh = face.hessian(obj, x), True
    previous = None
    for _ in range(max_steps):
        g = face.gradient(Gam, x)
        if previous is not None:
            H = secant_update(H, x - previous[0], g - previous[1])
            previous = None
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
        dev_before, predicted_step, curve = dev, float(g @ step), float(step @ H @ step)
        t, moved = 1.0, False
        while t > 1e-10:
            x_new = x - t * step
            if face.feasible(x_new):
                d_new, Gam_new = obj.at(face.G(x_new))
                if d_new <= dev + (slack if t == 1.0 else 0.0):
                    unverified += slack > 0
                    if secant:
                        previous = (x, g)
                    x, G, dev, Gam, moved = x_new, face.G(x_new), d_new, Gam_new, True
                    break
            t *= 0.5
        steps += 1
        if not moved:
            if fresh:
                break
            H, fresh = face.hessian(obj, x), True
        elif refresh_poor and slack == 0.0 and \
                (t < 1.0 or poor_model(dev_before - dev, t * (predicted_step - 0.5 * t * curve))):
            # a damped step, or one whose decrease the quadratic model predicted poorly: this H is not
            # the Hessian here (e.g. a lower face searched from far off, where a kept H crawled for 30
            # steps), so it is recomputed; a step that agrees with the model keeps it
            H, fresh, previous = face.hessian(obj, x), True, None
        else:
            fresh = False
    return G, dev, steps, None, None


# ---------------------------------------------------------------- leaving a saddle or a false boundary

def escape_along(obj, curve, dev: float, t0: float):
    """A line search along a feasible curve t -> point(t), t > 0, for a clearly lower deviance: steps
    from 1e-3 to 10 times t0, the best step the certificate found, and from 1e-9 to 1e3.
    Returns (point, deviance) or None."""
    best = None
    for t in np.concatenate([t0 * np.logspace(-3, 1, 17), np.logspace(-9, 3, 13)]):
        Gt = curve(t)
        if Gt is None:
            continue
        d = obj.value(Gt)
        if d < dev - tol_decrement(dev) and (best is None or d < best[1]):
            best = (Gt, d)
    return best


def along_face(face, x0: np.ndarray, e: np.ndarray, sign: float):
    """The curve t -> face.G(x0 + sign·t·e) while it stays on the face."""
    def curve(t):
        x = x0 + sign * t * e
        return face.G(x) if face.feasible(x) else None
    return curve


def polish_and_certify(obj, Gs, dev: float, diagonal, budget: int, message: str, names=("τ",),
                       tolerances: LbfgsTolerances = LbfgsTolerances()):
    """Newton on the face, then the certificate; a saddle or a descent direction into a block's cone
    is followed and the loop resumes. L-BFGS-B runs again only when Newton cannot finish.
    Returns (Gs, deviance, certificate, iterations used, message)."""
    iterations = 0
    cert = None
    stalled = False
    for _ in range(25):
        Gs, dev, steps, saddle, face_data = face_newton(obj, Gs, diagonal)
        iterations += steps
        if saddle is not None:
            face, x0, e = saddle
            moved = None
            for sign in (1.0, -1.0):
                moved = escape_along(obj, along_face(face, x0, e, sign), dev, 1.0)
                if moved is not None:
                    break
            if moved is None:
                break
            Gs, dev = moved
            continue
        cert = certify_blocks(obj, Gs, tol_decrement(dev, obj.noise(Gs)), face_data, diagonal, names)
        if cert.certified:
            break
        if cert.descent is None:
            if face_data is not None or stalled or iterations >= budget:
                break
            # Newton could not finish on this face: one more quasi-Newton run, then give up
            stalled = True
            G1, d1, nit, msg = lbfgs(obj, Gs, diagonal, max(1, budget - iterations), tolerances)
            iterations += nit + 1
            if d1 < dev:  # its start is Gs re-factored, so it may end higher: then keep Gs
                Gs, dev, message = G1, d1, msg
            continue
        b, D = cert.descent
        G0 = Gs
        moved = escape_along(obj, lambda t: with_block(G0, b, G0[b] + t * D), dev, cert.descent_step)
        if moved is None:
            break
        Gs, dev = moved
        cert = None
    if cert is None or cert.G is not Gs:
        cert = certify_blocks(obj, Gs, tol_decrement(dev, obj.noise(Gs)), diagonal=diagonal, names=names)
    return Gs, dev, cert, iterations, message


# ---------------------------------------------------------------- the global check of a boundary optimum

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


def face_decrement(obj, face) -> float:
    """The decrease a fresh Newton step predicts from the point that `face` is built through: ½g'H⁺g
    over the face Hessian's positive curvature (central differences), inf where it has a clearly
    negative one."""
    x = face.x0()
    _, Gam = obj.at(face.G(x))
    g = face.gradient(Gam, x)
    w, E = np.linalg.eigh(face.hessian(obj, x))
    top = max(abs(float(w[-1])), 1e-300)
    if w[0] < -HESSIAN_TOL * top:
        return np.inf
    keep = w > HESSIAN_TOL * top
    return 0.5 * float(np.sum((E[:, keep].T @ g) ** 2 / w[keep]))


def best_lower_face(obj, candidates, make_face, dev: float, noise: float):
    """The minimum of the deviance on each candidate's face (Newton on that face from the candidate),
    and the lowest of them when it is below dev by more than the tolerance (then the search
    continues from there), else None. The local certificate cannot see another face's minimum: a
    ±1 correlation that is a genuine local minimum can sit above τ = 0.
    Newton's steps can run out far from a face's minimum (a stale Hessian overshoots from a point far
    away): Newton then resumes where it stopped, with secant updates, twice; a face whose minimum is
    still not reached, and where a fresh Newton step could still go below dev - tol, is counted.
    An objective with `lower_face_objective(Gc)` searches each face with the objective that returns
    (the same function on that face, cheaper: the crossed model without the factors whose τ is 0).
    Returns (best, unresolved)."""
    best, unresolved = None, 0
    tol = tol_decrement(dev, noise)
    for Gc in candidates:
        obj_face = getattr(obj, "lower_face_objective", None)
        fobj = obj if obj_face is None else obj_face(Gc)
        face = make_face(Gc)
        if face.size == 0:
            G1, d1 = Gc, fobj.value(Gc)
        else:
            x = face.x0()
            d0, Gam = fobj.at(face.G(x))
            if not np.isfinite(d0):
                continue
            secant = getattr(fobj, "secant_faces", False)
            for round_ in range(3):
                G1, d1, _, saddle, reached = newton_on_face(fobj, face, x, d0, Gam, fobj.noise(face.G(x)),
                                                            secant=secant, refresh_poor=not secant)
                if reached is not None or saddle is not None or d1 < dev - tol:
                    break
                face = make_face(G1)
                if face.size == 0:
                    break
                if round_ == 2:
                    # undecided unless even four times the predicted decrease (the quadratic model
                    # underestimates far from the minimum) cannot take the face below dev - tol
                    if d1 - 4.0 * face_decrement(fobj, face) < dev - tol:
                        unresolved += 1
                    break
                x = face.x0()
                d0, Gam = fobj.at(face.G(x))
                secant = True
        if d1 < dev - tol and (best is None or d1 < best[1]):
            best = (G1, d1)
    return best, unresolved


def lower_face_candidates(Gs, diagonal, ranks) -> list[tuple]:
    """Each block at itself, at τ = 0 or at its lower ranks (lower_faces), every combination but the
    point itself."""
    options = [[G] + (lower_faces(G, d, r) if G.shape[0] else []) for G, d, r in zip(Gs, diagonal, ranks)]
    return [tuple(opt[i] for opt, i in zip(options, pick))
            for pick in itertools.product(*(range(len(opt)) for opt in options)) if any(pick)]


# ---------------------------------------------------------------- the search

@dataclass
class Plan:
    """Where the search starts, per model kind (each a list of (name, Gs)):
    starts: L-BFGS-B from the first (the caller orders them); from the next only while the best
      end so far lies on the boundary of the cone, where false boundaries and local optima live;
      the best end is then polished and certified;
    boundary_starts: after a certified boundary answer, polished and certified restarts; one wins
      when it is certified and lower by more than 1e-12 relative.
    More starts (identity/100, identity·10, three random) follow whenever the answer is not certified."""
    starts: list
    boundary_starts: list = field(default_factory=list)
    tolerances: LbfgsTolerances = LbfgsTolerances()


@dataclass
class SearchResult:
    Gs: tuple
    deviance: float
    certificate: BlockCertificate
    iterations: int
    message: str
    start: str


def extra_starts(qs, diagonal) -> list:
    """The starts tried when the answer is not certified, spread over scales (standardised G)."""
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
    return extra


def search(obj, plan: Plan, diagonal, max_iterations: int, names=("τ",)) -> SearchResult:
    """From the plan's starts to the certified optimum of obj (objective.DevianceObjective) over the
    product of the blocks' cones, or to the best uncertified point. diagonal: per block (or one bool
    for all), that τ restricted to diagonal matrices. names: the blocks' names in the certificate."""
    qs, tols = [G.shape[0] for G in plan.starts[0][1]], plan.tolerances
    diagonal = diagonal_blocks(diagonal, len(qs))
    iterations, best = 0, None
    for k, (name, G0) in enumerate(plan.starts):
        if k and (iterations >= max_iterations or BlockFace(best[0], diagonal=diagonal).ranks == tuple(qs)):
            break
        G1, d1, nit, msg = lbfgs(obj, G0, diagonal, max_iterations - iterations, tols)
        iterations += nit
        if best is None or d1 < best[1] - 1e-12 * abs(d1):
            best = (G1, d1, name, msg)
    Gs, dev, start, message = best
    Gs, dev, cert, used, message = polish_and_certify(obj, Gs, dev, diagonal, max_iterations - iterations, message,
                                                      names, tols)
    iterations += used
    for name, G0 in plan.boundary_starts:
        if not (cert.certified and cert.ranks != cert.qs and iterations < max_iterations):
            break
        G1, d1, nit, m1 = lbfgs(obj, G0, diagonal, max_iterations - iterations, tols)
        iterations += nit
        G1, d1, c1, used, m1 = polish_and_certify(obj, G1, d1, diagonal, max_iterations - iterations, m1, names, tols)
        iterations += used
        if c1.certified and d1 < dev - 1e-12 * abs(dev):
            Gs, dev, cert, start, message = G1, d1, c1, name, m1
    if not cert.certified and iterations < max_iterations:
        # not certified from the plan's starts: more starts, and the certified answer with the lowest
        # deviance wins
        for name, G0 in extra_starts(qs, diagonal):
            if iterations >= max_iterations:
                break
            G1, d1, nit, m1 = lbfgs(obj, G0, diagonal, max_iterations - iterations, tols)
            iterations += nit
            G1, d1, c1, used, m1 = polish_and_certify(obj, G1, d1, diagonal, max_iterations - iterations, m1, names,
                                                      tols)
            iterations += used
            if (c1.certified and not cert.certified) or (c1.certified == cert.certified and d1 < dev):
                Gs, dev, cert, start, message = G1, d1, c1, name, m1
            if cert.certified:
                break
    for _ in range(sum(qs) + 1):
        if not cert.certified:
            break
        lower, unresolved = best_lower_face(obj, lower_face_candidates(Gs, diagonal, cert.ranks),
                                            lambda Gc: BlockFace(Gc, diagonal=diagonal), dev, obj.noise(Gs))
        if lower is None:
            if unresolved:
                cert.certified = False
                cert.failed.append(f"the minimum of {unresolved} lower face(s) of the PSD cone could not be "
                                   "reached (Newton stopped above it), so a lower deviance there is not ruled out")
            break
        Gs, dev, cert, used, message = polish_and_certify(obj, lower[0], lower[1], diagonal,
                                                          max(1, max_iterations - iterations), message, names, tols)
        iterations += used
        start += ", continued from a lower face"
    else:
        if cert.certified:
            cert.certified = False
            cert.failed.append("a lower face of the PSD cone" + ("s" if len(qs) > 1 else "")
                               + " still has a lower deviance")
    return SearchResult(Gs, dev, cert, iterations, message, start)
