"""The marginal likelihood of HLM 7's HMLM models: repeated measures (or the variates of a multivariate
outcome) on T occasions, persons observed on any subset of them.

Person i's observed vector y_i (its n_i occasions O_i) is

    y_i ~ N(X_i γ, V_i),   V_i = Z_i τ Z_i' + Δ[O_i, O_i],

Δ the T × T within-person ("level-1") covariance, one of HLM 7's structures:

    unrestricted   Δ free (no random effects: Δ is then the whole covariance of a person's occasions);
    homogeneous    Δ = σ² I (the ordinary two-level model);
    heterogeneous  Δ = diag(σ²_1, ..., σ²_T);
    ar1            Δ_st = σ² ρ^|s - t|, s and t the occasions' indices 1..T (not time values).

Deviances are HLM 7's and lme4's: with γ profiled by GLS,

    ML:   Σ_i log|V_i| + r'V⁻¹r + N log 2π,
    REML: the same + log|Σ_i X_i'V_i⁻¹X_i| - p log 2π,

r = y - Xγ̂. Per person, with Σ = Δ[O, O] = CC' and τ = LL', whitening by C⁻¹ (Ỹ = C⁻¹y, ...) and the
determinant lemma give

    log|V| = log|Σ| + log|M|,   V⁻¹ = C⁻ᵀ (I - Z̃L M⁻¹ L'Z̃') C⁻¹,   M = I_q + L'Z̃'Z̃L,

valid for singular τ. Persons are grouped by their pattern of observed occasions, so C is factored once
per pattern and the cost is linear in the persons (T is small).

HMLM2 adds random effects v_k (covariance τ3 = L3L3') of the level-3 unit k above the persons, with design
W: V_k = blockdiag_i(V_i) + W_k τ3 W_k'. The same lemma once more, with the persons' V_i⁻¹ products summed
over the unit (S_k = Σ_i W_i'V_i⁻¹W_i, P_k = Σ_i W_i'V_i⁻¹[X y]):

    log|V_k| = Σ_i log|V_i| + log|N_k|,   [X y]'V_k⁻¹[X y] = Σ_i [X y]'V_i⁻¹[X y] - P_k'L3 N_k⁻¹ L3'P_k,

N_k = I + L3'S_k L3.

Parameters, unconstrained, variances in units of a fixed scale s² (the homogeneous model's σ²) so the
search sees numbers near 1: τ/s² = LL' with L lower triangular (diagonal of any sign; diagonal L for a
diagonal τ); log σ²/s² (homogeneous, ar1); log σ²_t/s² (heterogeneous); atanh ρ (ar1); Δ/s² = CC' with
log diag C (unrestricted). The optimum is sought by BFGS and polished by Newton on central differences;
it is claimed (`converged`) only when the Hessian there is positive definite, the decrease Newton still
predicts, ½g'H⁻¹g, is below TOLERANCE, and no probe towards a boundary lowers the deviance (each log
variance moved by -1 and -4, atanh ρ by ±1 and ±4): a variance going to 0 puts the infimum at log σ² = -∞,
where the deviance is flat and noisy enough (the whitening by a near-singular Δ) for the local tests alone
to pass. A checked local optimum, not a global certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

STRUCTURES = ("unrestricted", "homogeneous", "heterogeneous", "ar1")
TOLERANCE = 1e-8  # deviance units: the decrease Newton may still predict at a claimed optimum
_LOG2PI = float(np.log(2 * np.pi))


@dataclass
class Pattern:
    """The persons observed on the same occasions: y (n, T_p), X (n, T_p, p), Z (n, T_p, q); HMLM2: W
    (n, T_p, q3) the level-3 random effects' design and top (n,) each person's level-3 unit."""

    occasions: np.ndarray
    y: np.ndarray
    X: np.ndarray
    Z: np.ndarray
    W: np.ndarray | None = None
    top: np.ndarray | None = None


@dataclass
class Occasions:
    """The records as persons × occasions, grouped by pattern of observed occasions."""

    patterns: list[Pattern]
    T: int
    n: int
    p: int
    q: int
    q3: int = 0
    n_top: int = 0


def group_by_pattern(y, X, Z, person, occasion, T: int, W=None, top=None) -> Occasions:
    """y (N,), X (N, p), Z (N, q), person (N,) ints, occasion (N,) ints in 0..T-1; no person with an
    occasion twice (the caller refuses that with the person's id). HMLM2: W (N, q3) and top (N,) each
    record's level-3 unit (persons nested in them)."""
    order = np.lexsort((occasion, person))
    y, X, Z, person, occasion = y[order], X[order], Z[order], person[order], occasion[order]
    if W is not None:
        W, top = W[order], top[order]
    starts = np.flatnonzero(np.r_[True, person[1:] != person[:-1]])
    ends = np.r_[starts[1:], person.size]
    keys = {}
    for s, e in zip(starts, ends):
        keys.setdefault(occasion[s:e].tobytes(), []).append((s, e))
    patterns = []
    for key in sorted(keys, key=lambda k: (len(k), k)):
        spans = keys[key]
        idx = np.concatenate([np.arange(s, e) for s, e in spans])
        n, t = len(spans), spans[0][1] - spans[0][0]
        patterns.append(Pattern(occasion[spans[0][0]:spans[0][1]].copy(), y[idx].reshape(n, t),
                                X[idx].reshape(n, t, X.shape[1]), Z[idx].reshape(n, t, Z.shape[1]),
                                None if W is None else W[idx].reshape(n, t, W.shape[1]),
                                None if W is None else top[np.array([s for s, _ in spans])]))
    if W is None:
        return Occasions(patterns, T, int(y.size), X.shape[1], Z.shape[1])
    return Occasions(patterns, T, int(y.size), X.shape[1], Z.shape[1], W.shape[1], int(top.max()) + 1)


@dataclass
class Parameters:
    """How θ maps to τ and Δ for one structure."""

    structure: str
    T: int
    q: int
    diagonal_tau: bool = False
    scale: float = 1.0
    q3: int = 0  # HMLM2: level-3 random effects (τ3 = L3L3', unstructured), after τ's in θ

    @property
    def tau_index(self):
        rows, cols = np.tril_indices(self.q)
        keep = rows == cols if self.diagonal_tau else np.ones(rows.size, bool)
        return rows[keep], cols[keep]

    @property
    def n_tau(self) -> int:
        return int(self.tau_index[0].size)

    @property
    def n_tau3(self) -> int:
        return self.q3 * (self.q3 + 1) // 2

    def tau3_factor(self, theta) -> np.ndarray:
        L = np.zeros((self.q3, self.q3))
        L[np.tril_indices(self.q3)] = theta[self.n_tau:self.n_tau + self.n_tau3]
        return L * np.sqrt(self.scale)

    @property
    def n_delta(self) -> int:
        return {"unrestricted": self.T * (self.T + 1) // 2, "homogeneous": 1, "heterogeneous": self.T,
                "ar1": 2}[self.structure]

    @property
    def size(self) -> int:
        return self.n_tau + self.n_tau3 + self.n_delta

    def tau_factor(self, theta) -> np.ndarray:
        L = np.zeros((self.q, self.q))
        L[self.tau_index] = theta[:self.n_tau]
        return L * np.sqrt(self.scale)

    def delta(self, theta) -> np.ndarray:
        d = theta[self.n_tau + self.n_tau3:]
        T, s = self.T, self.scale
        if self.structure == "homogeneous":
            return s * np.exp(d[0]) * np.eye(T)
        if self.structure == "heterogeneous":
            return s * np.diag(np.exp(d))
        if self.structure == "ar1":
            lag = np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
            return s * np.exp(d[0]) * np.tanh(d[1]) ** lag
        C = np.zeros((T, T))
        C[np.tril_indices(T)] = d
        C[np.diag_indices(T)] = np.exp(np.diag(C))
        return s * (C @ C.T)

    def start(self, sigma2: float, tau: np.ndarray | None, delta: np.ndarray | None = None,
              tau3: np.ndarray | None = None) -> np.ndarray:
        """θ at a homogeneous fit's σ² and τ (or, unrestricted, at a start Δ)."""
        theta = np.zeros(self.size)
        if self.q and tau is not None:
            L = _factor(tau / self.scale)
            theta[:self.n_tau] = (np.diag(np.diag(L)) if self.diagonal_tau else L)[self.tau_index]
        if self.q3:
            t3 = tau3 if tau3 is not None else 0.1 * sigma2 * np.eye(self.q3)
            theta[self.n_tau:self.n_tau + self.n_tau3] = _factor(t3 / self.scale)[np.tril_indices(self.q3)]
        d = theta[self.n_tau + self.n_tau3:]
        if self.structure == "unrestricted":
            C = np.linalg.cholesky((delta if delta is not None else sigma2 * np.eye(self.T)) / self.scale)
            C[np.diag_indices(self.T)] = np.log(np.diag(C))
            d[:] = C[np.tril_indices(self.T)]
        else:
            d[:] = np.log(sigma2 / self.scale)
            if self.structure == "ar1":
                d[1] = 0.0
        return theta


def _factor(tau: np.ndarray) -> np.ndarray:
    """A Cholesky factor of τ made positive definite (a start point)."""
    w, U = np.linalg.eigh(tau)
    return np.linalg.cholesky(U @ np.diag(np.clip(w, 1e-6 * max(w.max(), 1e-12), None) + 1e-8) @ U.T)


@dataclass
class Evaluation:
    deviance: float
    gamma: np.ndarray
    XVX: np.ndarray  # Σ X'V⁻¹X: cov(γ̂) is its inverse


def evaluate(theta, data: Occasions, par: Parameters, method: str) -> Evaluation:
    """The deviance at θ with γ profiled (see the module's docstring)."""
    L = par.tau_factor(theta)
    delta = par.delta(theta)
    p, q3 = data.p, data.q3
    k = p + 1 + q3
    A = np.zeros((k, k))  # Σ [X y W]'V⁻¹[X y W], over persons
    top = np.zeros((data.n_top, q3, k)) if q3 else None  # per level-3 unit: Σ_i W_i'V_i⁻¹[X y W]
    logdet = 0.0
    for pat in data.patterns:
        o = pat.occasions
        C = np.linalg.cholesky(delta[np.ix_(o, o)])
        Ci = np.linalg.inv(C)
        B = np.concatenate([pat.X, pat.y[:, :, None]] + ([pat.W] if q3 else []), axis=2)
        Bt = np.einsum("st,ntk->nsk", Ci, B)
        each = np.einsum("nsa,nsb->nab", Bt, Bt)  # per person: [X y W]'V_i⁻¹[X y W]
        logdet += pat.y.shape[0] * 2.0 * np.log(np.diag(C)).sum()
        if data.q:
            ZL = np.einsum("st,ntk->nsk", Ci, pat.Z) @ L
            M = np.eye(data.q) + np.einsum("nsa,nsb->nab", ZL, ZL)
            logdet += 2.0 * np.log(np.diagonal(np.linalg.cholesky(M), axis1=1, axis2=2)).sum()
            G = np.einsum("nsa,nsb->nab", ZL, Bt)
            each -= np.einsum("nab,nac->nbc", G, np.linalg.solve(M, G))
        A += each.sum(axis=0)
        if q3:
            np.add.at(top, pat.top, each[:, p + 1:, :])
    if q3:  # the level-3 units' random effects: the lemma once more per unit
        L3 = par.tau3_factor(theta)
        LS = np.einsum("ab,kbc->kac", L3.T, top)  # L3'P_k, (units, q3, k)
        Nk = np.eye(q3) + LS[:, :, p + 1:] @ L3
        logdet += 2.0 * np.log(np.diagonal(np.linalg.cholesky(Nk), axis1=1, axis2=2)).sum()
        A -= np.einsum("kab,kac->bc", LS, np.linalg.solve(Nk, LS))
    XVX, XVy, yVy = A[:p, :p], A[:p, p], A[p, p]
    cf = np.linalg.cholesky(XVX)
    gamma = np.linalg.solve(XVX, XVy)
    deviance = logdet + (yVy - XVy @ gamma) + data.n * _LOG2PI
    if method == "REML":
        deviance += 2.0 * np.log(np.diag(cf)).sum() - p * _LOG2PI
    return Evaluation(float(deviance), gamma, XVX)


def _deviance(theta, data, par, method) -> float:
    try:
        return evaluate(theta, data, par, method).deviance
    except (np.linalg.LinAlgError, FloatingPointError):
        return np.inf


def boundary_probe(f, theta: np.ndarray, d0: float, logs, angles) -> list[str]:
    """Why θ is not an optimum, if moving a log variance (indices `logs`: -1, -4) or an atanh ρ (indices
    `angles`: ±1, ±4) lowers f by more than TOLERANCE; empty when no probe does."""
    failed = []
    for k, moves in [(k, (-1.0, -4.0)) for k in logs] + [(k, (1.0, -1.0, 4.0, -4.0)) for k in angles]:
        for move in moves:
            trial = theta.copy()
            trial[k] += move
            drop = d0 - f(trial)
            if drop > TOLERANCE:
                what = "a variance of Δ" if k in logs else "the AR(1) correlation"
                failed.append(f"the deviance falls by {drop:.1E} when {what} moves towards its boundary (parameter "
                              f"{k + 1} by {move:+g}): the infimum is at or towards the boundary, not at this point")
                break
    return failed


def derivatives(f, theta: np.ndarray, h: float = 1e-4, f0: float | None = None):
    """Central-difference gradient and Hessian of f at θ (step h in every coordinate)."""
    k = theta.size
    f0 = f(theta) if f0 is None else f0
    g, H = np.zeros(k), np.zeros((k, k))
    E = np.eye(k) * h
    fp = np.array([f(theta + E[i]) for i in range(k)])
    fm = np.array([f(theta - E[i]) for i in range(k)])
    g = (fp - fm) / (2 * h)
    H[np.diag_indices(k)] = (fp - 2 * f0 + fm) / h ** 2
    for i in range(k):
        for j in range(i):
            H[i, j] = H[j, i] = (f(theta + E[i] + E[j]) - f(theta + E[i] - E[j]) - f(theta - E[i] + E[j])
                                 + f(theta - E[i] - E[j])) / (4 * h * h)
    return g, H


@dataclass
class HmlmFit:
    structure: str
    method: str
    theta: np.ndarray
    deviance: float
    gamma: np.ndarray
    cov_gamma: np.ndarray
    tau: np.ndarray
    delta: np.ndarray
    n_variance_params: int
    gradient: np.ndarray
    hessian_min_eigenvalue: float
    decrement: float
    evaluations: int
    converged: bool
    failed: list[str] = field(default_factory=list)
    tau3: np.ndarray | None = None  # HMLM2: the level-3 units' random-effect covariance
    parameters: Parameters | None = None
    hessian: np.ndarray | None = None  # of the deviance over θ at a checked optimum, for standard errors


def fit_hmlm(data: Occasions, structure: str, method: str, sigma2: float, tau: np.ndarray | None,
             diagonal_tau: bool = False, delta_start: np.ndarray | None = None, max_newton: int = 50,
             tau3: np.ndarray | None = None) -> HmlmFit:
    """The optimum of the deviance over θ from the start (σ², τ) of the homogeneous model; see the
    module's docstring for what `converged` checks."""
    from scipy.optimize import minimize

    if structure not in STRUCTURES:
        raise ValueError(structure)
    q = 0 if structure == "unrestricted" else data.q
    if q != data.q:
        data = Occasions(data.patterns, data.T, data.n, data.p, 0, data.q3, data.n_top)
    par = Parameters(structure, data.T, q, diagonal_tau, float(sigma2), data.q3)
    count = [0]

    def f(theta):
        count[0] += 1
        return _deviance(theta, data, par, method)

    def grad(theta):
        h = 1e-5
        E = np.eye(theta.size) * h
        return np.array([(f(theta + E[i]) - f(theta - E[i])) / (2 * h) for i in range(theta.size)])

    theta = par.start(sigma2, tau, delta_start, tau3)
    with np.errstate(all="ignore"):
        res = minimize(f, theta, jac=grad, method="BFGS", options={"gtol": 1e-6, "maxiter": 2000})
        theta, d = res.x, float(res.fun)
        decrement, g, H, w0 = np.inf, None, None, -np.inf
        for _ in range(max_newton):  # Newton polish on central differences
            g, H = derivatives(f, theta, 1e-4, d)
            w = np.linalg.eigvalsh(H)
            w0 = float(w[0])
            convex = w0 > 1e-8 * max(abs(w[-1]), 1.0)
            # where the deviance is not convex, a Levenberg step (H shifted to be positive definite)
            shift = 0.0 if convex else abs(w0) + 1e-3 * max(abs(w[-1]), 1.0)
            step = -np.linalg.solve(H + shift * np.eye(H.shape[0]), g)
            decrement = 0.5 * float(g @ -step) if convex else np.inf
            if decrement <= TOLERANCE:
                break
            t = 1.0
            while t > 1e-8:
                trial = f(theta + t * step)
                if trial < d:
                    theta, d = theta + t * step, trial
                    break
                t /= 2
            else:
                break
    failed = []
    if not np.isfinite(d):
        failed.append("the deviance could not be evaluated at the point reached")
    if not w0 > 1e-8 * max(abs(np.linalg.eigvalsh(H)[-1]) if H is not None else 1.0, 1.0):
        failed.append("the deviance's Hessian over the variance parameters is not positive definite at the point "
                      "reached (a boundary: a variance or correlation at its limit, or a parameter not identified)")
    elif not decrement <= TOLERANCE:
        failed.append(f"Newton still predicts a decrease of {decrement:.1E} in the deviance (tolerance "
                      f"{TOLERANCE:.0E})")
    if not failed:
        start = par.n_tau + par.n_tau3
        if structure == "unrestricted":
            rows, cols = np.tril_indices(par.T)
            logs = [start + i for i in np.flatnonzero(rows == cols)]
        else:
            logs = [start + i for i in range(par.T if structure == "heterogeneous" else 1)]
        with np.errstate(all="ignore"):
            failed += boundary_probe(f, theta, d, logs, [start + 1] if structure == "ar1" else [])
    H_se = None
    if not failed:  # for standard errors: steps of 1e-3 (1e-4 leaves the deviance's rounding noise, ~1e-9, at
        # 1e-4 relative in H), Richardson-extrapolated from 2e-3 to cancel the O(h²) error
        with np.errstate(all="ignore"):
            H_se = (4.0 * derivatives(f, theta, 1e-3, d)[1] - derivatives(f, theta, 2e-3, d)[1]) / 3.0
    ev = evaluate(theta, data, par, method)
    L = par.tau_factor(theta)
    L3 = par.tau3_factor(theta)
    return HmlmFit(structure, method, theta, ev.deviance, ev.gamma, np.linalg.inv(ev.XVX), L @ L.T,
                   par.delta(theta), par.size, g, w0, float(decrement), count[0], not failed, failed,
                   L3 @ L3.T if data.q3 else None, par, H_se)


def marginal_covariance(delta: np.ndarray, tau: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """V = ZτZ' + Δ for a person observed on every occasion, Z (T, q) its random-effect design."""
    return delta + (Z @ tau @ Z.T if tau.size else 0.0)


def variance_parameters(theta: np.ndarray, par: Parameters) -> tuple[list[tuple], np.ndarray]:
    """The covariance parameters in the field's terms, as nlme's and HLM 7's tables give them: τ's lower
    triangle (diagonal only for a diagonal τ), HMLM2's level-3 τ's lower triangle, then Δ's: σ² (homogeneous),
    σ²_t (heterogeneous), σ² and ρ (ar1), or Δ's lower triangle (unrestricted). Keys ("tau", a, b),
    ("tau3", a, b), ("sigma2",), ("sigma2", t), ("rho",), ("delta", s, t)."""
    L = par.tau_factor(theta)
    tau = L @ L.T
    rows, cols = par.tau_index
    keys = [("tau", int(a), int(b)) for a, b in zip(rows, cols)]
    values = [tau[a, b] for a, b in zip(rows, cols)]
    if par.q3:  # HMLM2: the level-3 units' τ, its lower triangle
        L3 = par.tau3_factor(theta)
        tau3 = L3 @ L3.T
        rows, cols = np.tril_indices(par.q3)
        keys += [("tau3", int(a), int(b)) for a, b in zip(rows, cols)]
        values += [tau3[a, b] for a, b in zip(rows, cols)]
    delta = par.delta(theta)
    if par.structure == "homogeneous":
        keys.append(("sigma2",))
        values.append(delta[0, 0])
    elif par.structure == "heterogeneous":
        keys += [("sigma2", t) for t in range(par.T)]
        values += list(np.diag(delta))
    elif par.structure == "ar1":
        keys += [("sigma2",), ("rho",)]
        values += [delta[0, 0], np.tanh(theta[-1])]
    else:
        rows, cols = np.tril_indices(par.T)
        keys += [("delta", int(a), int(b)) for a, b in zip(rows, cols)]
        values += [delta[a, b] for a, b in zip(rows, cols)]
    return keys, np.array(values, dtype=float)


def variance_parameter_covariance(theta: np.ndarray, par: Parameters, hessian: np.ndarray,
                                  h: float = 1e-6) -> np.ndarray:
    """Cov of variance_parameters by the delta method: θ's covariance is the inverse of the observed
    information, half the deviance's Hessian (deviance = -2 log L; REML: of the REML likelihood, as nlme's
    apVar), Cov(θ) = 2H⁻¹, and Cov(φ) = J Cov(θ) J', J = ∂φ/∂θ by central differences of the smooth map
    θ → φ (no noise from the likelihood in it)."""
    k = theta.size
    J = np.zeros((variance_parameters(theta, par)[1].size, k))
    for i in range(k):
        e = np.zeros(k)
        e[i] = h
        J[:, i] = (variance_parameters(theta + e, par)[1] - variance_parameters(theta - e, par)[1]) / (2 * h)
    return J @ (2.0 * np.linalg.inv(hessian)) @ J.T
