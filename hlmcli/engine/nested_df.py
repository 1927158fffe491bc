"""Satterthwaite d.f. of the fixed effects of a nested model of any number of levels, as lmerTest
computes them (lmerTest 3.1, as_lmerModLT and contest1D), as pure functions of the nested solve.

lmerTest's variance parameters are φ = (θ, σ): θ the entries of lme4's lower-triangular factor Λ
of τ/σ² (for each τ block its lower triangle; one entry per effect for `||` terms, i.e. a diagonal
τ), σ the level-1 standard deviation. At the fit it takes H = the Hessian in φ of the deviance at
fixed σ (devfun_vp: γ at its GLS value, the REML criterion under REML), A = 2H⁺ over the
eigenvalues > 1e-8 (the others are dropped), and for a contrast l, with Φ(φ) = σ²(X'Ṽ⁻¹X)⁻¹ =
Cov(γ̂) and g = ∂(l'Φl)/∂φ,

    d.f. = 2 (l'Φl)² / (g'Ag).

In the interior of the parameter space this is the same in any parametrisation of (τ, σ) (H and
g change by the Jacobian, which cancels; the gradient vanishes there, so H transforms as a
tensor). At a boundary it is not: the Cholesky factor of a singular τ is not a smooth function of
τ, and lmerTest's answer for an uncentred predictor then depends on where its zero lies (issue: d.f.
of 0.0003 against 150 for the same model with the predictor centred). So φ is taken in the
coordinates the search ran in (nested.reduce_standardised: each unstructured block's random
columns centred at the grand mean when that block has an intercept, every random column scaled to
unit spread, the fixed-effect columns orthonormalised): they depend on the data, not on how a
predictor was coded, and for centred predictors they are lmerTest's own computation up to a
diagonal rescaling of θ. A diagonal block is only rescaled (centring would not be a
reparametrisation of a diagonal τ), as lme4's `||`.

At a boundary the zero entries of Λ drop out by themselves: the deviance and Φ are even in a zero
column of Λ, so Φ's derivative along it vanishes. H comes from central differences of the
analytic gradient (∂d/∂Λℓ = 2ΓℓΛℓ with Γℓ = LevelsSolve.gradients at the given σ², and
∂d/∂σ = (2/σ)(ν − rss/σ²), ν = N, or N − p under REML); g from central differences of Φ.
"""

from __future__ import annotations

import numpy as np

from .search import chol_psd
from .nested import LevelsSolve, Standardisation, levels_solve

LMERTEST_EIGEN_TOL = 1e-8  # lmerTest drops Hessian eigenvalues at or below this (as_lmerModLT's tol)
STEP = 1e-4  # central-difference step, relative to |θ| (at least 1e-2: the columns have unit spread) and σ


def _blocks(us: LevelsSolve, diagonal) -> list:
    """(q, index of θ's entries in Λ, Λ at the fit) per τ block, levels 2..K."""
    Gs = us.Gs
    if isinstance(diagonal, (bool, np.bool_)) or diagonal is None:
        diagonal = (bool(diagonal),) * len(Gs)
    out = []
    for G, diag in zip(Gs, diagonal):
        q = G.shape[0]
        G = 0.5 * (G + G.T)
        if diag:
            idx = (np.arange(q), np.arange(q))
            lam = np.diag(np.sqrt(np.clip(np.diag(G), 0.0, None)))
        else:
            idx = np.tril_indices(q)
            lam = chol_psd(G)
        out.append((q, idx, lam))
    return out


def satterthwaite_df(us: LevelsSolve, tr: Standardisation, sigma2: float, reml: bool, diagonal=False,
                     contrasts: np.ndarray | None = None) -> np.ndarray:
    """Satterthwaite d.f. of each row l of `contrasts` (in the user's γ; default: every γ) at the
    fit whose nested solve in the standardised coordinates is `us` (NestedFit.solve), mapped back by
    `tr` (NestedFit.standardisation); diagonal as the fit's (per level, or one flag). NaN where
    g'Ag is not positive (a contrast whose variance does not depend on the variance parameters)."""
    stats = us.stats
    p = stats.p
    L = np.eye(p) if contrasts is None else np.atleast_2d(np.asarray(contrasts, dtype=float))
    C = L @ tr.TX  # l'γ = l'TXγ̃ + l'b, so Var(l'γ̂) = c'Φ̃c with c = TX'l
    blocks = _blocks(us, diagonal)
    sizes = [len(idx[0]) for _, idx, _ in blocks]
    x0 = np.concatenate([lam[idx] for _, idx, lam in blocks] + [[np.sqrt(sigma2)]])
    nu = us.dof(reml)

    def unpack(x):
        lams, k = [], 0
        for (q, idx, _), n in zip(blocks, sizes):
            lam = np.zeros((q, q))
            lam[idx] = x[k:k + n]
            lams.append(lam)
            k += n
        return tuple(lams)

    def at(x):
        """(∂d/∂φ, Var(l'γ̂) for every row l) at φ = x, σ fixed at x[-1]."""
        lams = unpack(x)
        s = levels_solve(stats, lams)
        s2 = x[-1] ** 2
        grads = s.gradients(reml, sigma2=s2)
        g = [(2.0 * Gam @ lam)[idx] for Gam, lam, (_, idx, _) in zip(grads, lams, blocks)]
        g.append([2.0 / x[-1] * (nu - s.rss / s2)])
        var = np.einsum("ka,ab,kb->k", C, s2 * s.Pinv(), C)
        return np.concatenate(g), var

    m = x0.size
    steps = np.array([STEP * max(abs(v), 1e-2) for v in x0[:-1]] + [STEP * x0[-1]])
    hess = np.zeros((m, m))
    jac = np.zeros((L.shape[0], m))
    try:
        for i in range(m):
            xp, xm = x0.copy(), x0.copy()
            xp[i] += steps[i]
            xm[i] -= steps[i]
            gp, vp = at(xp)
            gm, vm = at(xm)
            hess[:, i] = (gp - gm) / (2 * steps[i])
            jac[:, i] = (vp - vm) / (2 * steps[i])
        _, var = at(x0)
    except (FloatingPointError, np.linalg.LinAlgError):
        return np.full(L.shape[0], np.nan)
    hess = 0.5 * (hess + hess.T)
    w, V = np.linalg.eigh(hess)
    pos = w > LMERTEST_EIGEN_TOL
    A = 2.0 * (V[:, pos] / w[pos]) @ V[:, pos].T
    denom = np.einsum("ka,ab,kb->k", jac, A, jac)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * var ** 2 / denom, np.nan)
