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
import numpy as np

from .certificate import Certificate
from .search import (LbfgsTolerances, Plan, along_face, chol_psd, escape_along, face_newton, lower_faces, search,
                     tol_decrement)
from .sufficient import ModelStats, reparametrise
from .unitsolve import ProfiledDeviance, UnitSolve, factor, unit_ols, unit_solve

__all__ = ["FitResult", "TauStructure", "Objective", "fit", "deviance_at", "standardising_map", "fixed_standardising",
           "chol_psd", "lower_faces", "tol_decrement", "escape_along"]


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

# The profiled deviance and its G-gradient on standardised stats (objective.DevianceObjective).
Objective = ProfiledDeviance


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


# the two-level search's L-BFGS-B tolerances (the nested one's are tighter: nested_fit.py)
TWO_LEVEL_LBFGS = LbfgsTolerances(ftol=1e-10, gtol=1e-7)


def _face_newton(obj, G: np.ndarray, diagonal: bool, max_steps: int = 30):
    """search.face_newton for an objective written over the bare matrix G (one block): the point,
    the saddle's face and face_data in the one-block form certificate.certify takes."""
    from .objective import OneBlock

    Gs, dev, steps, saddle, data = face_newton(OneBlock(obj), (G,), (diagonal,), max_steps)
    if saddle is not None:
        face, x, e = saddle
        saddle = (face.faces[0], x, e)
    if data is not None:
        face, x, H, g, d, Gam = data
        data = (face.faces[0], x, H, g, d, Gam[0])
    return Gs[0], dev, steps, saddle, data


_along_face = along_face


def _truncate(G: np.ndarray, diagonal: bool, rank: int) -> np.ndarray:
    """G with all but its `rank` largest eigenvalues (diagonal entries, for a diagonal τ) set to zero."""
    if diagonal:
        d = np.diag(G).copy()
        d[np.argsort(-d)[rank:]] = 0.0
        return np.diag(d)
    w, E = np.linalg.eigh(0.5 * (G + G.T))
    return (E[:, -rank:] * w[-rank:]) @ E[:, -rank:].T


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
    # ends on the boundary (search.Plan).
    starts.sort(key=lambda s: obj.value(s[1]))
    found = search(obj, Plan([(name, (G0,)) for name, G0 in starts], tolerances=TWO_LEVEL_LBFGS), (diagonal,),
                   max_iterations)
    G, dev, cert = found.Gs[0], found.deviance, found.certificate.one_block()
    iterations, message, start_name = found.iterations, found.message, found.start
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
