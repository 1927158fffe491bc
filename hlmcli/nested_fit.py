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

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats as sps

from .certificate import Face, face_conditions, name_direction, rank_tolerance
from .errors import ModelError
from .estimation import chol_psd, escape_along, newton_on_face, tol_decrement
from .nested import (NestedData, NestedFit, NestedSolve, NestedStats, _columns, _factor, nested_solve,
                     reduce_nested, reduce_standardised)
from .unitsolve import unit_ols

BOUNDARY_CORR = 1.0 - 1e-6  # |correlation| at or above this on a rank-deficient block is reported as ±1


# ---------------------------------------------------------------- the objective over (G2, G3)

class Objective:
    def __init__(self, stats: NestedStats, reml: bool):
        self.stats, self.reml, self.count = stats, reml, 0
        self._cache: list = []

    def solve(self, lam2, lam3) -> NestedSolve:
        # the search asks for the value, the gradient and the rounding noise at the same point:
        # the last few solves are kept (keyed on the exact factors)
        key = (np.asarray(lam2, float).tobytes(), np.asarray(lam3, float).tobytes())
        for k, us in self._cache:
            if k == key:
                return us
        self.count += 1
        us = nested_solve(self.stats, lam2, lam3)
        self._cache = [(key, us)] + self._cache[:3]
        return us

    def at(self, Gs):
        try:
            us = self.solve(_factor(Gs[0]), _factor(Gs[1]))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, (np.zeros_like(Gs[0]), np.zeros_like(Gs[1]))
        return us.profiled_deviance(self.reml), us.gradients(self.reml)

    def value(self, Gs) -> float:
        try:
            return self.solve(_factor(Gs[0]), _factor(Gs[1])).profiled_deviance(self.reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    def noise(self, Gs) -> float:
        try:
            return self.solve(_factor(Gs[0]), _factor(Gs[1])).rounding_noise(self.reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return 0.0


class BlockFace:
    """The face of PSD(q2) × PSD(q3) through (G2, G3): the product of the blocks' faces."""

    def __init__(self, Gs, min_ranks=(0, 0)):
        self.faces = [Face(G, False, min_rank=m) if G.shape[0] else None for G, m in zip(Gs, min_ranks)]
        self.sizes = [f.size if f is not None else 0 for f in self.faces]
        self.qs = [G.shape[0] for G in Gs]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def ranks(self) -> tuple[int, int]:
        return tuple(f.r if f is not None else 0 for f in self.faces)

    def split(self, x):
        return x[: self.sizes[0]], x[self.sizes[0]:]

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
    ranks: tuple[int, int]  # ranks of τπ and τβ at the answer
    qs: tuple[int, int]
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
        for name, mu in zip(("tau_pi", "tau_beta"), self.null_eigenvalues):
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
    f = face.faces[b]
    if f is None or f.r == f.q:
        return None, None, None, 1.0
    w, E = np.linalg.eigh(f.V0.T @ Gams[b] @ f.V0)
    mu = float(w[0])
    if mu >= 0:
        return mu, 0.0, None, 1.0
    v = f.V0 @ E[:, 0]
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


def certify_nested(obj: Objective, Gs, tol: float, face_data=None) -> NestedCertificate:
    failed: list[str] = []
    decrement, grad_max, hmin = 0.0, 0.0, None
    if face_data is not None:
        face, x0, H, g, dev, Gams = face_data
    else:
        face = BlockFace(Gs)
        dev, Gams = obj.at(Gs)
        if face.size:
            x0 = face.x0()
            g = face.gradient(Gams, x0)
            H = face.hessian(obj, x0)
    if face.size:
        decrement, grad_max, hmin = face_conditions(H, g, tol, failed,
                                                    lambda e: name_direction(face.G, x0, e, ("tau_pi", "tau_beta")))
    mus, decs, descent, dstep = [], [], None, 1.0
    for b, name in enumerate(("tau_pi", "tau_beta")):
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
    return NestedCertificate(not failed, face.ranks, tuple(face.qs), float(decrement), grad_max, mus, decs, hmin,
                             tol, failed, descent, dstep, Gs)


# ---------------------------------------------------------------- the search

def _lbfgs(obj: Objective, Gs0, maxiter: int):
    q2, q3 = Gs0[0].shape[0], Gs0[1].shape[0]
    i2, i3 = np.tril_indices(q2), np.tril_indices(q3)
    n2 = len(i2[0])
    theta0 = np.concatenate([chol_psd(Gs0[0])[i2], chol_psd(Gs0[1])[i3]])
    if theta0.size == 0:  # no random effects: the GLS fit is ordinary least squares, nothing to search
        return Gs0, obj.value(Gs0), 0, "no covariance parameters besides sigma2"
    bounds = ([(0.0, None) if r == c else (None, None) for r, c in zip(*i2)]
              + [(0.0, None) if r == c else (None, None) for r, c in zip(*i3)])

    def lams(theta):
        l2, l3 = np.zeros((q2, q2)), np.zeros((q3, q3))
        l2[i2] = theta[:n2]
        l3[i3] = theta[n2:]
        return l2, l3

    def fun(theta):
        l2, l3 = lams(theta)
        try:
            us = obj.solve(l2, l3)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(theta)
        g2, g3 = us.gradients(obj.reml)
        return us.profiled_deviance(obj.reml), np.concatenate([(2.0 * g2 @ l2)[i2], (2.0 * g3 @ l3)[i3]])

    res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                            # tighter than two levels: ending closer to the optimum usually saves the
                            # Newton polish its second face Hessian (2·face-size evaluations)
                            options={"maxiter": max(1, maxiter), "ftol": 1e-13, "gtol": 1e-9, "maxcor": 20})
    l2, l3 = lams(res.x)
    return (l2 @ l2.T, l3 @ l3.T), float(res.fun), int(res.nit), str(res.message)


def _face_newton(obj: Objective, Gs, max_steps: int = 30):
    """Newton on the product face through Gs (as estimation._face_newton). Eigenvalues below the
    rank tolerance are dropped unless that raises the deviance measurably; then the block keeps one
    more. Returns (Gs, deviance, steps, saddle, face_data)."""
    face = BlockFace(Gs)
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
        for b in range(2):
            f = face.faces[b]
            if f is not None and f.r < f.q:
                trial = list(face.ranks)
                trial[b] += 1
                wider = BlockFace(Gs, tuple(trial))
                if wider.ranks[b] > face.ranks[b]:
                    face, widened = wider, True
                    break
        if not widened:
            return Gs, dev0, steps, None, None
    return newton_on_face(obj, face, x, dev, Gam, noise, max_steps)


def _polish_and_certify(obj: Objective, Gs, dev: float, budget: int, message: str):
    iterations = 0
    cert = None
    stalled = False
    for _ in range(25):
        Gs, dev, steps, saddle, face_data = _face_newton(obj, Gs)
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
        cert = certify_nested(obj, Gs, tol_decrement(dev, obj.noise(Gs)), face_data)
        if cert.certified:
            break
        if cert.descent is None:
            if face_data is not None or stalled or iterations >= budget:
                break
            stalled = True
            Gs, dev, nit, message = _lbfgs(obj, Gs, max(1, budget - iterations))
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
        cert = certify_nested(obj, Gs, tol_decrement(dev, obj.noise(Gs)))
    return Gs, dev, cert, iterations, message


def search(obj: Objective, q2: int, q3: int, max_iterations: int):
    """From the best of the starts to the certified optimum (or the best uncertified point)."""
    starts = [("identity", (0.25 * np.eye(q2), 0.25 * np.eye(q3)))]
    iterations = 0
    G1, d1, nit, msg = _lbfgs(obj, starts[0][1], max_iterations)
    iterations += nit
    Gs, dev, cert, used, message = _polish_and_certify(obj, G1, d1, max_iterations - iterations, msg)
    iterations += used
    start = "identity"
    if cert.certified and cert.ranks != cert.qs and iterations < max_iterations:
        # a certified boundary answer is a local optimum; false boundaries and other local optima
        # live there, so a second start from larger variances gets its chance (as at two levels)
        G1, d1, nit, m1 = _lbfgs(obj, (2.5 * np.eye(q2), 2.5 * np.eye(q3)), max_iterations - iterations)
        iterations += nit
        G1, d1, c1, used, m1 = _polish_and_certify(obj, G1, d1, max_iterations - iterations, m1)
        iterations += used
        if c1.certified and d1 < dev - 1e-12 * abs(dev):
            Gs, dev, cert, start, message = G1, d1, c1, "identity*10", m1
    if not cert.certified and iterations < max_iterations:
        rng = np.random.default_rng(20261123)
        extra = [("identity/100", (0.0025 * np.eye(q2), 0.0025 * np.eye(q3))),
                 ("identity*10", (2.5 * np.eye(q2), 2.5 * np.eye(q3)))]
        for k in range(3):
            Ms = []
            for q in (q2, q3):
                M = rng.normal(size=(q, q))
                Ms.append(M @ M.T / max(q, 1) + 0.1 * np.eye(q))
            extra.append((f"random {k + 1}", tuple(Ms)))
        for name, G0 in extra:
            if iterations >= max_iterations:
                break
            G1, d1, nit, m1 = _lbfgs(obj, G0, max_iterations - iterations)
            iterations += nit
            G1, d1, c1, used, m1 = _polish_and_certify(obj, G1, d1, max_iterations - iterations, m1)
            iterations += used
            if (c1.certified and not cert.certified) or (c1.certified == cert.certified and d1 < dev):
                Gs, dev, cert, start, message = G1, d1, c1, name, m1
            if cert.certified:
                break
    return Gs, dev, cert, iterations, message, start


# ---------------------------------------------------------------- inference

def hlm3_df(data: NestedData, J2: int, J3: int, N: int) -> np.ndarray:
    """Approximate d.f. of each γ_pqs, the rules used (none is checked against HLM 7 output here):
    - β_pq random at level 3: K − (number of γ's in β_pq's equation), K the level-3 units; with an
      intercept this is HLM3's K − S − 1 (Raudenbush & Bryk 2002, ch. 8);
    - β_pq not random at level 3 but π_p random at level 2: J2 − (number of γ's in π_p's equations
      that belong to β's not random at level 3), J2 the level-2 units: HLM2's J − S − 1 with the
      level-2 units as J (an analogue; UNVERIFIED);
    - neither random: N − p (UNVERIFIED; HLM 7's HLM2 uses N − J·R − F for fixed level-1
      coefficients, HLM 6 used N − p)."""
    out = []
    p = sum(len(b.level3_cols) for pi in data.layout.pis for b in pi.betas)
    for pi in data.layout.pis:
        fixed_gammas = sum(len(b.level3_cols) for b in pi.betas if not b.random)
        for beta in pi.betas:
            for _ in beta.level3_cols:
                if beta.random:
                    out.append(J3 - len(beta.level3_cols))
                elif pi.random:
                    out.append(J2 - fixed_gammas)
                else:
                    out.append(N - p)
    return np.array(out, dtype=float)


def _sigma_inv_diag(S: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """diag(S_j⁻¹) for unit-first S where ok, nan elsewhere."""
    out = np.full(S.shape[:2], np.nan)
    if ok.any():
        out[ok] = np.diagonal(np.linalg.inv(S[ok]), axis1=1, axis2=2)
    return out


def _pchisq_upper(chi2: float, df: float) -> float:
    return float(sps.chi2.sf(chi2, df)) if df > 0 else float("nan")


def level_tests(data: NestedData, raw: NestedStats, solve_user: dict, sigma2: float, tau_pi, tau_beta):
    """Reliabilities and χ² tests at levels 2 and 3 (formulas in fit_nested's docstring)."""
    cols = _columns(data.layout)
    pis = data.layout.pis
    q2, q3 = raw.q2, raw.q3
    gamma = solve_user["gamma"]
    eb_beta = solve_user["eb_beta"]  # (J3, q3)
    J2, J3 = raw.J2, raw.J3
    P = len(pis)
    X2 = np.asarray(data.X2, float)
    W3 = np.asarray(data.W3, float)
    one2 = np.ones(J2)
    x2 = lambda c: one2 if c is None else X2[:, c]  # noqa: E731
    w3 = lambda s: np.ones(J3) if s is None else W3[:, s]  # noqa: E731
    # β*_pq per level-2 unit: fixed part + level-3 EB (for random β's)
    rb = {}
    k = 0
    for ip, pi in enumerate(pis):
        for iq, beta in enumerate(pi.betas):
            if beta.random:
                rb[(ip, iq)] = k
                k += 1
    gi = 0
    beta_star = {}  # (ip, iq) -> (J3,) fixed+EB value; beta_fixed -> fitted Σγ W
    beta_fit = {}
    for ip, pi in enumerate(pis):
        for iq, beta in enumerate(pi.betas):
            f = np.zeros(J3)
            for s in beta.level3_cols:
                f += gamma[gi] * w3(s)
                gi += 1
            beta_fit[(ip, iq)] = f
            beta_star[(ip, iq)] = f + (eb_beta[:, rb[(ip, iq)]] if beta.random else 0.0)
    # π fitted per level-2 unit: Σ_q β*_pq X_q
    pi_fit = np.zeros((P, J2))
    for ip, pi in enumerate(pis):
        for iq, beta in enumerate(pi.betas):
            pi_fit[ip] += beta_star[(ip, iq)][raw.unit3] * x2(beta.level2_col)
    DD = raw.DD  # (P+1, P+1, J2)
    # ---- level 2
    rel_pi, chi_pi = np.full(q2, np.nan), []
    if q2:
        z2 = np.array(cols.z2)
        fixed_p = [ip for ip in range(P) if not pis[ip].random]
        ZZ = DD[z2[:, None], z2[None, :]].transpose(2, 0, 1)
        # Z'ỹ with ỹ = y − Σ_{fixed π} a_p π*_p: the fixed π's at their fixed + level-3 EB values
        Zy = DD[z2, P].T.copy()
        for ip in fixed_p:
            Zy -= (DD[z2, ip] * pi_fit[ip]).T
        fit = unit_ols(ZZ, Zy, raw.n2, None)
        ok = fit.ok
        V = sigma2 * np.diagonal(fit.inv, axis1=1, axis2=2)  # (J2, q2), nan where not ok
        tau_d = np.diag(tau_pi)
        rel_pi = np.array([float(np.mean(tau_d[a] / (tau_d[a] + V[ok, a]))) if ok.any() else np.nan for a in range(q2)])
        for a, ip in enumerate(z2):
            dev = fit.beta[ok, a] - pi_fit[ip][ok]
            chi = float(np.sum(dev * dev / V[ok, a]))
            df = int(ok.sum()) - sum(len(b.level3_cols) > 0 for b in pis[ip].betas)
            chi_pi.append({"chi2": chi, "df": df, "p": _pchisq_upper(chi, df), "n_units": int(ok.sum())})
    # ---- level 3: GLS of the random β's from each level-3 unit's data given τπ
    rel_beta, chi_beta = np.full(q3, np.nan), []
    if q3:
        S = solve_user["S3"]  # (J3, q3, q3) Z3'(V2)⁻¹Z3 (σ² included)
        Zy3 = solve_user["Z3Vy"].copy()  # (J3, q3) Z3'V2⁻¹y
        Z3VX = solve_user["Z3VX"]  # (J3, q3, p)
        fixed_cols = [i for i, (ip, c, s, idx) in enumerate(cols.x) if idx is None]
        if fixed_cols:
            Zy3 -= Z3VX[:, :, fixed_cols] @ gamma[fixed_cols]
        eig = np.linalg.eigvalsh(S)
        ok = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
        Sinv = np.full_like(S, np.nan)
        Sinv[ok] = np.linalg.inv(S[ok])
        bhat = np.einsum("kab,kb->ka", Sinv, Zy3)
        V = np.diagonal(Sinv, axis1=1, axis2=2)
        tau_d = np.diag(tau_beta)
        rel_beta = np.array([float(np.mean(tau_d[a] / (tau_d[a] + V[ok, a]))) if ok.any() else np.nan for a in range(q3)])
        a = 0
        for ip, pi in enumerate(pis):
            for iq, beta in enumerate(pi.betas):
                if not beta.random:
                    continue
                dev = bhat[ok, a] - beta_fit[(ip, iq)][ok]
                chi = float(np.sum(dev * dev / V[ok, a]))
                df = int(ok.sum()) - len(beta.level3_cols)
                chi_beta.append({"chi2": chi, "df": df, "p": _pchisq_upper(chi, df), "n_units": int(ok.sum())})
                a += 1
    return rel_pi, rel_beta, chi_pi, chi_beta


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


def estimable(raw: NestedStats) -> None:
    """Refuse, in one line, models whose parameters cannot be estimated from these data (as lme4
    does: a grouping factor needs more than one level and fewer levels than observations)."""
    N, J2, J3, q2, q3, p = raw.N, raw.J2, raw.J3, raw.q2, raw.q3, raw.p
    if p == 0:
        raise ModelError("the model has no fixed effects (every level-3 equation is empty)")
    if N <= p:
        raise ModelError(f"only {N} records for {p} fixed effects; the model needs more data")
    if q3 and J3 < 2:
        raise ModelError(f"the data have {J3} level-3 unit; level-3 random effects need at least 2 units "
                         "(remove the u terms or use a two-level model)")
    if q2 and J2 < 2:
        raise ModelError(f"the data have {J2} level-2 unit; level-2 random effects need at least 2 units")
    if q2 and N <= J2 * q2:
        raise ModelError(f"{N} records for {J2} level-2 units with {q2} random effect{'s' if q2 != 1 else ''} each: "
                         "the level-1 variance cannot be separated from the level-2 ones (lme4 refuses this too); "
                         "remove r terms or use data with more records per level-2 unit")
    if q3 and N <= J3 * q3:
        raise ModelError(f"{N} records for {J3} level-3 units with {q3} random effect{'s' if q3 != 1 else ''} each: "
                         "the level-1 variance cannot be separated from the level-3 ones; remove u terms")


def fit_nested(data: NestedData, reml: bool = False, max_iterations: int = 1000) -> NestedFit:
    """The certified (RE)ML fit and HLM3's inference.

    Reliabilities (R&B 2002 ch. 8; HLM2's formula one level at a time; UNVERIFIED against HLM 7):
    - level 2, each random π_p: the mean over level-2 units with sufficient data (n_j > q2 and
      Z2_j'Z2_j non-singular) of τπ_pp / (τπ_pp + V_pp,j), V_j = σ²(Z2_j'Z2_j)⁻¹;
    - level 3, each random β: the mean over level-3 units with non-singular S_k of
      τβ_aa / (τβ_aa + V_aa,k), V_k = (Z3_k'V2_k⁻¹Z3_k)⁻¹, the sampling variance of the GLS estimate
      of β_k from unit k's data alone given τπ and σ².
    χ² tests (HLM2's formula one level at a time; UNVERIFIED against HLM 7, no reference exists here):
    - level 2: over the same units, π̂_j = OLS of ỹ_j on Z2_j, with ỹ = y minus the non-random π's
      at their fixed + level-3 EB values; χ²_p = Σ_j (π̂_pj − π*_pj)²/V_pp,j with π*_pj = Σ_q β*_pq X_qj,
      β* = fixed part + level-3 EB; d.f. = units − number of β's in π_p's equation;
    - level 3: β̂_k = S_k⁻¹ Z3_k'V2_k⁻¹ỹ_k (ỹ = y minus the fixed-at-level-3 β terms at γ̂),
      χ² = Σ_k (β̂_ak − Σ_s γ̂ W_sk)²/V_aa,k; d.f. = units − number of γ's in that β's equation.
    EB posterior variances are given γ̂ (as the two-level engine's)."""
    reml = bool(reml)
    raw = reduce_nested(data)
    q2, q3, p = raw.q2, raw.q3, raw.p
    estimable(raw)
    try:
        std, tr = reduce_standardised(data)
    except FloatingPointError:
        raise ModelError("the fixed effects are linearly dependent (collinear predictors, or a predictor that is "
                         "constant where it enters); remove one of them") from None
    A2, A3, TX = tr.A2, tr.A3, tr.TX
    obj = Objective(std, reml)
    Gs, dev, cert, iterations, message, start = search(obj, q2, q3, max_iterations)
    try:
        if not np.isfinite(dev):
            raise FloatingPointError
        us = obj.solve(_factor(Gs[0]), _factor(Gs[1]))
    except (FloatingPointError, np.linalg.LinAlgError):
        raise ModelError("the deviance cannot be evaluated at any point the search reached (X'V⁻¹X or a "
                         "per-unit covariance matrix is numerically singular): check for collinear predictors, "
                         "and centre any predictor whose mean is far larger than its spread") from None
    sigma2 = us.sigma2_hat(reml)
    G2u = A2 @ Gs[0] @ A2.T
    G3u = A3 @ Gs[1] @ A3.T
    tau_pi = sigma2 * 0.5 * (G2u + G2u.T)
    tau_beta = sigma2 * 0.5 * (G3u + G3u.T)
    # back to the user's fixed-effect columns: X̃ = X·TX, ỹ = y − Xb, so γ = TXγ̃ + b
    Pinv = us.Pinv()
    cov = sigma2 * (TX @ Pinv @ TX.T)
    sc = us.scores3()
    robust = TX @ Pinv @ (sc.T @ sc) @ Pinv @ TX.T
    gamma = TX @ us.gamma + tr.b
    deviance = us.profiled_deviance(reml) - (2.0 * tr.log_det_TX if reml else 0.0)
    r_m, r_v, u_m, u_v = us.posterior(sigma2)
    # back to the user's columns: Z̃ = ZA, so r = A r̃ and Var r = A Var r̃ A'
    eb_pi = r_m @ A2.T
    eb_pi_var = np.einsum("ab,jbc,dc->jad", A2, r_v, A2)
    eb_beta = u_m @ A3.T
    eb_beta_var = np.einsum("ab,jbc,dc->jad", A3, u_v, A3)
    user = {"gamma": gamma, "eb_beta": eb_beta}
    if q3:
        # Z3'V2⁻¹[Z3|X|y] per level-3 unit in the user's columns: undo Z̃3 = Z3A3 on the rows
        A3i = np.linalg.inv(A3)
        W = us.W
        S3 = np.einsum("ba,bcj,cd->jad", A3i, W[:q3, :q3], A3i) / sigma2
        ZB = np.einsum("ba,bcj->jac", A3i, W[:q3, q3:]) / sigma2
        Z3VX = ZB[:, :, :p] @ np.linalg.inv(TX)  # X = X̃·TX⁻¹
        Z3Vy = ZB[:, :, p] + Z3VX @ tr.b  # y = ỹ + Xb
        user.update(S3=S3, Z3Vy=Z3Vy, Z3VX=Z3VX)
    rel_pi, rel_beta, chi_pi, chi_beta = level_tests(data, raw, user, sigma2, tau_pi, tau_beta)
    cols = _columns(data.layout)
    lab2 = [f"r{p_}" for p_ in cols.z2]
    lab3 = []
    for ip, pi in enumerate(data.layout.pis):
        for iq, beta in enumerate(pi.betas):
            if beta.random:
                lab3.append(f"u{ip}{iq}")
    boundary = []
    if cert.certified:
        boundary += boundary_messages(Gs[0], tau_pi, "tau_pi", lab2, cert.ranks[0])
        boundary += boundary_messages(Gs[1], tau_beta, "tau_beta", lab3, cert.ranks[1])
    n_params = 1 + q2 * (q2 + 1) // 2 + q3 * (q3 + 1) // 2 + (0 if reml else p)
    if cert.certified:
        message = f"at the optimum ({cert.describe()})"
    else:
        message = "not certified: " + "; ".join(cert.failed) + f" [{message}]"
    return NestedFit(
        method="REML" if reml else "ML", gamma=gamma, cov_gamma=cov, cov_gamma_robust=robust,
        df_gamma=hlm3_df(data, raw.J2, raw.J3, raw.N), sigma2=sigma2, tau_pi=tau_pi, tau_beta=tau_beta,
        deviance=deviance, n_params=n_params, reliability_pi=rel_pi, reliability_beta=rel_beta,
        chi2_pi=chi_pi, chi2_beta=chi_beta, eb_pi=eb_pi, eb_pi_var=eb_pi_var, eb_beta=eb_beta,
        eb_beta_var=eb_beta_var, certificate=cert, converged=bool(cert.certified), iterations=iterations,
        message=message, boundary=boundary, solve=us, standardisation=tr, evaluations=obj.count, start=start)
