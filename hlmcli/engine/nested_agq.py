"""Binary, binomial and count outcomes at three levels by nested adaptive Gauss-Hermite quadrature
(AGQ), with a random intercept at each level, as pure functions of arrays.

Model (nested_laplace.py, q2 = q3 = 1): η_i = x_i'γ + λ2 u2_j + λ3 u3_k (+ offset), u ~ N(0, 1),
τπ = λ2², τβ = λ3². Level-3 unit k's likelihood is the nested integral

    L_k = ∫ φ(u3) Π_{j∈k} L_j(u3) du3,   L_j(u3) = ∫ φ(u2) Π_{i∈j} p(y_i | η_i) du2.

Nested AGQ (Pinheiro & Chao 2006; Rabe-Hesketh, Skrondal & Pickles 2005), K points at each level,
(z_m, w_m) the Gauss-Hermite rule for the standard normal (w̄ = w/√(2π), Σw̄ = 1):

  * outer: centred at the joint mode û3 of (u2, u3) and scaled by s3 = S_k^(-1/2), S_k the Schur
    complement of the level-2 blocks in the joint negative Hessian (= 1/(H⁻¹)33: nested_laplace.py),
    nodes u3_m = û3 + s3 z_m;
  * inner, at every outer node: each level-2 unit's integral centred at its conditional mode
    ũ2_j(u3_m) (Newton on f_j(u2) = Σ_{i∈j}ℓ_i − ½u2², from the linear prediction û2_j − P_j(u3_m − û3))
    and scaled by s2 = H_jj(u3_m)^(-1/2), H_jj = 1 + λ2²Σ_{i∈j}W_i:

    log L_j(u3) ≈ log s2 + log Σ_n w̄_n exp(f_j(ũ2 + s2 z_n) + ½z_n²),
    log L_k ≈ log s3 + log Σ_m w̄_m exp(g_k(u3_m) + ½z_m²),   g_k(u3) = −½u3² + Σ_{j∈k} log L_j(u3),

    d = −2Σ_k log L_k − 2·(the family's constant).

At K = 1 (z = 0, w̄ = 1) the conditional mode at û3 is û2 and this is the Laplace deviance of
nested_laplace.py exactly: −2Σℓ(η̂) + Σû2² + Σû3² + Σ log H_jj + Σ log S_k. Cost: K² passes over the
records (K Newton solves and K inner sums of K points each), linear in the records.

Gradient: central differences of each level-3 unit's d_k in (λ2, λ3, γ) (step 1e-4·max(1, |x|); the
modes are solved to 1e-10, where the deviance is smooth): the exact gradient of the two-level AGQ has
no short nested analogue (the inner centres and scales move with u3). The same differences give each
level-3 unit's score for the CR0 sandwich.

Search and certificate as the three-level Laplace fit (nested_laplace.laplace_levels): from the
certified Laplace optimum and its Hessian (as the two-level AGQ starts from Laplace's), damped Newton,
then a fresh Hessian (second differences of the deviance: NestedAGQ.hessian) and Newton to a predicted decrease below 1e-11, certified over
(τπ, τβ) ≥ 0 with γ profiled out (certificate.certify_blocks, through nested_laplace.Profiled). SEs of γ
as the two-level AGQ (and glmer): cov = 2H⁻¹, the γ block, H the deviance Hessian in (λ2, λ3, γ) at the
optimum. Empirical Bayes: the joint posterior modes and the Laplace posterior variances at the AGQ
estimates (nested_laplace.NestedLaplace.posterior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .certificate import BlockFace, certify_blocks
from .hglm import QUAD_SEQUENCE, QUAD_START, QUAD_TOL, QuadratureCheck, chain_to_face, damped_newton
from .nested_glmm import LevelsGLMData
from .nested_laplace import NestedLaplace, Profiled, laplace_levels

TOL = 1e-6  # the certificate's tolerance, deviance units (as nested_laplace)
STEP = 1e-4  # the relative step of the gradient's central differences
QUAD_BUDGET = 41  # K at most: K² evaluations of the family per record and deviance


def _logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


class NestedAGQ(NestedLaplace):
    """The nested AGQ deviance with K points at each level (module docstring), with the interface of
    NestedLaplace (evaluate, unit_scores, posterior), so that nested_laplace.Profiled certifies it."""

    def __init__(self, glm: LevelsGLMData, nodes: int):
        super().__init__(glm)
        if self.q2 != 1 or self.q3 != 1:
            raise ValueError("nested AGQ is built for a random intercept at each level")
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        z, w = np.polynomial.hermite_e.hermegauss(nodes)
        self.nodes, self.z, self.logw = nodes, z, np.log(w / math.sqrt(2.0 * math.pi)) + 0.5 * z * z
        self.a, self.b = self.Z2[:, 0], self.Z3[:, 0]
        self.taylor = False

    def _conditional_modes(self, eta0, a, v, tol=1e-10, maxit=100):
        """Each level-2 unit's mode of f_j(u2) = Σℓ_i(η0_i + a_i u2) − ½u2² (Newton from v, halved per
        unit while f_j falls; f_j is strictly concave for the canonical links). Returns (ũ2, H_jj)."""
        def state(v):
            ev = self.family.evaluate(eta0 + a * v[self.j], self.y, self.trials)
            return ev, self._s2(ev[0]) - 0.5 * v * v

        ev, f = state(v)
        for _ in range(maxit):
            g = self._s2(a * ev[1]) - v
            h = 1.0 + self._s2(a * a * ev[2])
            d = g / h
            if np.max(np.abs(d), initial=0.0) < tol:
                break
            t = np.ones_like(v)
            for _h in range(40):
                vn = v + t * d
                evn, fn = state(vn)
                worse = ~(fn >= f - 1e-12 * np.abs(f))
                if not worse.any():
                    break
                t = np.where(worse, 0.5 * t, t)
            v, ev, f = vn, evn, fn
        return v, 1.0 + self._s2(a * a * ev[2])

    def unit_deviances(self, gamma, L2, L3) -> np.ndarray:
        """−2 log L_k for every level-3 unit (without the family's constant)."""
        _A, _B, u2, u3, _eta, _ev, (_Hinv, P, S, _ld) = self.modes(gamma, L2, L3)
        lam2, lam3 = float(L2[0, 0]), float(L3[0, 0])
        a, b = self.a * lam2, self.b * lam3
        base = self.X @ gamma
        if self.offset is not None:
            base = base + self.offset
        s3 = 1.0 / np.sqrt(S[:, 0, 0])
        u2, u3, P = u2[:, 0], u3[:, 0], P[:, 0, 0]
        terms = np.empty((self.nodes, self.J3))
        for m, zm in enumerate(self.z):
            U3 = u3 + s3 * zm
            v, h = self._conditional_modes(base + b * U3[self.k], a, u2 - P * (U3 - u3)[self.k2])
            s2 = 1.0 / np.sqrt(h)
            V = v[None, :] + s2[None, :] * self.z[:, None]  # (K, J2) inner nodes
            eta = (base + b * U3[self.k])[None, :] + a[None, :] * V[:, self.j]
            ll = self.family.evaluate(eta, self.y[None, :], None if self.trials is None else self.trials[None, :],
                                      second=False)[0]
            f = np.add.reduceat(ll, self.start2, axis=1) - 0.5 * V * V
            log_lj = np.log(s2) + _logsumexp(self.logw[:, None] + f, axis=0)
            terms[m] = self.logw[m] - 0.5 * U3 * U3 + self._s23(log_lj)
        return -2.0 * (np.log(s3) + _logsumexp(terms, axis=0))

    def deviance(self, gamma, L2, L3) -> float:
        return float(np.sum(self.unit_deviances(gamma, L2, L3)) - 2.0 * self.const)

    def evaluate(self, gamma, L2, L3, grad: bool = True):
        """The deviance, and with grad (∂d/∂γ, ∂d/∂Λ2, ∂d/∂Λ3) by central differences of each level-3
        unit's d_k (module docstring); each unit's share is kept for unit_scores."""
        gamma = np.asarray(gamma, float)
        key = (gamma.tobytes(), L2.tobytes(), L3.tobytes(), grad)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        x = np.concatenate([[L2[0, 0], L3[0, 0]], gamma])
        keep = (self.b2.copy(), self.b3.copy())

        def units(xv):
            self.b2, self.b3 = keep[0].copy(), keep[1].copy()  # the same warm start for every point
            return self.unit_deviances(xv[2:], xv[:1].reshape(1, 1), xv[1:2].reshape(1, 1))

        d0 = units(x)
        dev = float(np.sum(d0) - 2.0 * self.const)
        if not grad:
            out = dev
        else:
            D = np.empty((self.J3, x.size))
            for i in range(x.size):
                e = np.zeros(x.size)
                e[i] = STEP * max(1.0, abs(x[i]))
                D[:, i] = (units(x + e) - units(x - e)) / (2.0 * e[i])
            g = D.sum(axis=0)
            out = dev, g[2:], g[:1].reshape(1, 1), g[1:2].reshape(1, 1)
            self.unit_parts = (D[:, 2:], D[:, :1].reshape(-1, 1, 1), D[:, 1:2].reshape(-1, 1, 1))
            units(x)  # leave the modes at x
        self._memo = (key, out)
        return out


    def hessian(self, x) -> np.ndarray:
        """The deviance Hessian in x = (λ2, λ3, γ) by central second differences of the deviance (2n² + 1
        evaluations, half of differencing the gradient), step 1e-3·max(1, |x|): truncation ~1e-7
        relative, rounding ~1e-16·d/h² far below the entries."""
        x = np.asarray(x, float)
        keep = (self.b2.copy(), self.b3.copy())

        def dev(xv):
            self.b2, self.b3 = keep[0].copy(), keep[1].copy()
            return self.deviance(xv[2:], xv[:1].reshape(1, 1), xv[1:2].reshape(1, 1))

        n = x.size
        h = 1e-3 * np.maximum(1.0, np.abs(x))
        E = np.diag(h)
        f0 = dev(x)
        fp = np.array([dev(x + E[i]) for i in range(n)])
        fm = np.array([dev(x - E[i]) for i in range(n)])
        H = np.diag((fp - 2.0 * f0 + fm) / h ** 2)
        for i in range(n):
            for k in range(i):
                d = (dev(x + E[i] + E[k]) - dev(x + E[i] - E[k]) - dev(x - E[i] + E[k]) + dev(x - E[i] - E[k]))
                H[i, k] = H[k, i] = d / (4.0 * h[i] * h[k])
        dev(x)  # leave the modes at x
        self._memo = None
        return H


@dataclass
class NestedAGQResult:
    nodes: int
    gamma: np.ndarray
    cov: np.ndarray
    robust_cov: np.ndarray  # CR0 sandwich clustered on level-3 units
    taus: tuple  # (τπ, τβ), 1 × 1 each
    deviance: float
    eb: tuple
    eb_var: tuple
    eta: np.ndarray
    iterations: int
    evaluations: int
    certificate: object
    converged: bool
    n_params: int
    laplace_deviance: float
    hessian: np.ndarray | None = None
    quadrature: QuadratureCheck | None = None
    failed: list[str] = field(default_factory=list)


def _search(glm, nodes: int, x, H0):
    """Newton from x (θ = (λ2, λ3), then γ) with H0, a fresh difference Hessian near the optimum, and
    the certificate (module docstring). Returns NestedAGQResult (without the quadrature check)."""
    cond = NestedAGQ(glm, nodes)
    p = cond.p

    def unpack(xv):
        return xv[2:], xv[:1].reshape(1, 1), xv[1:2].reshape(1, 1)

    def fg(xv):
        try:
            dev, gg, g2, g3 = cond.evaluate(*unpack(xv))
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf, np.zeros_like(xv)
        if not np.isfinite(dev):
            return np.inf, np.zeros_like(xv)
        return dev, np.concatenate([g2[0], g3[0], gg])

    f, g = fg(x)
    x, f, g, iters, _ok = damped_newton(fg, x, f, g, H0, 50, 1e-11)
    Hs = cond.hessian(x)
    x1 = x
    f, g = fg(x)
    x, f, g, n2, _ok = damped_newton(fg, x, f, g, Hs, 30, 1e-11)
    iters += n2
    if np.max(np.abs(x - x1)) > 1e-5 * (1.0 + np.max(np.abs(x))):
        Hs = cond.hessian(x)
        f, g = fg(x)
        x, f, g, n3, _ok = damped_newton(fg, x, f, g, Hs, 30, 1e-11)
        iters += n3
    # λ ≥ 0 (τ = λ² does not see the sign; u flips with it)
    sgn = np.ones(x.size)
    sgn[:2] = np.where(x[:2] < 0, -1.0, 1.0)
    x, g, Hs = x * sgn, g * sgn, Hs * np.outer(sgn, sgn)
    f, g = fg(x)
    gamma, L2, L3 = unpack(x)
    Gs = (L2 @ L2.T, L3 @ L3.T)
    Hgg = Hs[2:, 2:]
    obj = Profiled(cond, gamma, Hgg)
    face = BlockFace(Gs)
    names = ("tau_pi", "tau_beta")
    if face.ranks == (1, 1):
        dev, Gams = obj.at(Gs)
        sol = np.linalg.solve(Hgg, np.column_stack([Hs[2:, :2], g[2:]]))
        Hp = Hs[:2, :2] - Hs[:2, 2:] @ sol[:, :2]
        gp = g[:2] - Hs[:2, 2:] @ sol[:, 2]
        x0 = face.x0()

        def theta(xv):
            G2, G3 = face.G(xv)
            return np.sqrt(np.clip(np.array([G2[0, 0], G3[0, 0]]), 0.0, None))

        gf, Hf = chain_to_face(theta, x0, face.size, 2, gp, Hp)
        cert = certify_blocks(obj, Gs, TOL, face_data=(face, x0, 0.5 * (Hf + Hf.T), gf, dev, Gams), names=names)
    else:
        cert = certify_blocks(obj, Gs, TOL, names=names)
    f, _ = fg(x)
    try:
        Ainv = 2.0 * np.linalg.inv(Hs)
        Sc = cond.unit_scores(gamma, L2, L3)
        cov, robust = Ainv[2:, 2:], (Ainv @ (Sc.T @ Sc) @ Ainv)[2:, 2:]
    except np.linalg.LinAlgError:
        cov = robust = np.full((p, p), np.nan)
    f, _ = fg(x)
    b2, V2, b3, V3, eta = cond.posterior(gamma, L2, L3)
    if not getattr(cond, "modes_found", True):  # as nested_laplace.laplace_levels
        cert.failed.append("the modes were not found (Newton's step did not fall below its tolerance): "
                           "the quadrature's deviance there is not verified")
        cert.certified = False
    return NestedAGQResult(nodes=nodes, gamma=gamma, cov=0.5 * (cov + cov.T), robust_cov=0.5 * (robust + robust.T),
                           taus=Gs, deviance=float(f), eb=(b2, b3), eb_var=(V2, V3), eta=eta, iterations=iters,
                           evaluations=cond.count, certificate=cert, converged=bool(cert.certified), n_params=p + 2,
                           laplace_deviance=float("nan"), hessian=Hs, failed=list(cert.failed))


def deviance_at(glm, res, nodes: int) -> float:
    """The nested AGQ deviance with `nodes` points at a fit's estimates."""
    cond = NestedAGQ(glm, nodes)
    L2, L3 = np.sqrt(res.taus[0]), np.sqrt(res.taus[1])
    return cond.deviance(res.gamma, L2, L3)


def agq_levels(glm: LevelsGLMData, nodes: int | None = None, start=None, laplace=None) -> NestedAGQResult:
    """ML of a three-level HGLM with a random intercept at each level by nested AGQ, K = nodes at both
    levels, or adaptively (nodes None, as hglm.agq_fit: K = 7, 9, 11, 15, ... until the deviance at the
    optimum changes by at most QUAD_TOL relative to the next K, at most QUAD_BUDGET points). Starts at
    the certified Laplace optimum (`laplace`, or fitted here from `start`, a PQL fit). The result carries
    the check: the deviance at the optimum re-evaluated with the next K (res.quadrature)."""
    if laplace is None:
        laplace = laplace_levels(glm, start)
    x0 = np.concatenate([np.sqrt(np.clip([laplace.taus[0][0, 0], laplace.taus[1][0, 0]], 0.0, None)), laplace.gamma])
    H0 = laplace.hessian
    adaptive = nodes is None
    K = QUAD_START if adaptive else int(nodes)

    def rel(a, b):
        return abs(a - b) / max(1.0, abs(b))

    res = _search(glm, K, x0, H0)
    while True:
        Kn = next((k for k in QUAD_SEQUENCE if k > K), None)
        check = (None, None, None)
        if Kn is None or Kn > QUAD_BUDGET:
            break
        dn = deviance_at(glm, res, Kn)
        check = (Kn, dn, rel(dn, res.deviance))
        if check[2] <= QUAD_TOL or not adaptive:
            break
        K2, d2 = Kn, dn
        while (K3 := next((k for k in QUAD_SEQUENCE if k > K2), None)) is not None and K3 <= QUAD_BUDGET:
            d3 = deviance_at(glm, res, K3)
            if rel(d3, d2) <= QUAD_TOL:
                break
            K2, d2 = K3, d3
        x = np.concatenate([np.sqrt([res.taus[0][0, 0], res.taus[1][0, 0]]), res.gamma])
        res = _search(glm, K2, x, res.hessian)
        K = K2
    top = max(k for k in QUAD_SEQUENCE if k <= QUAD_BUDGET)
    Kn, dn, change = check
    res.quadrature = QuadratureCheck(points=K, adaptive=adaptive, check_points=Kn, deviance_check=dn, change=change,
                                     tolerance=QUAD_TOL, accurate=change is not None and change <= QUAD_TOL,
                                     budget=top)
    res.laplace_deviance = float(laplace.deviance)
    res.iterations += laplace.iterations
    return res
