"""The two-level face Hessian is analytic (unitsolve.UnitSolve.curvature_G through certificate.Face's
chain rule): it must agree with central differences of the analytic gradient, the way it was computed
before, and its second derivatives in G with second differences of the deviance itself, which use
neither the gradient nor the new code. Small simulated models: interior points, boundary faces (rank
below q, where the B coordinates carry the curvature term), diagonal τ, REML and ML, σ² given (PQL's
working model) and level-2 weights."""

from __future__ import annotations

import numpy as np
import pytest
from test_certificate import simulate

from hlmcli.engine.certificate import BlockFace
from hlmcli.engine.objective import OneBlock
from hlmcli.engine.sufficient import model_stats, unit_cross_products
from hlmcli.engine.unitsolve import ProfiledDeviance, unit_solve

# (q, rank of G, REML, σ² given, weighted, diagonal τ)
CASES = [
    (1, 1, True, None, False, False),
    (2, 2, True, None, False, False),
    (2, 1, False, None, False, False),
    (3, 1, True, None, True, False),
    (3, 2, False, 1.3, False, False),
    (3, 3, True, 0.8, True, False),
    (4, 2, True, None, False, False),
    (3, 2, True, None, True, True),
]


def _model(q, rank, weighted, diagonal, seed):
    L, y, offsets, B, random = simulate(30, 6, q, 0.3, seed=seed)
    rng = np.random.default_rng(seed)
    w2 = rng.uniform(0.5, 2.0, 30) if weighted else None
    stats = model_stats(unit_cross_products(L, y, offsets), B, random, w2)
    A = rng.normal(size=(q, rank))
    G = 0.7 * A @ A.T
    return stats, (np.diag(np.diag(G)) if diagonal else G)


@pytest.mark.parametrize("q,rank,reml,sigma2,weighted,diagonal", CASES)
def test_analytic_face_hessian_matches_differences_of_the_gradient(q, rank, reml, sigma2, weighted, diagonal):
    stats, G = _model(q, rank, weighted, diagonal, seed=10 * q + rank)
    obj = OneBlock(ProfiledDeviance(stats, reml, sigma2))
    face = BlockFace((G,), diagonal=diagonal)
    rng = np.random.default_rng(3)
    x = face.x0() + 0.05 * rng.normal(size=face.size)  # off x0, so B ≠ 0 and S ≠ I
    assert face.feasible(x)
    analytic = face.hessian(obj, x)
    differences = face.difference_hessian(obj, x)
    assert analytic.shape == (face.size, face.size)
    assert np.abs(analytic - differences).max() <= 1e-6 * np.abs(differences).max()


def test_second_derivatives_in_G_match_second_differences_of_the_deviance():
    """D²d[E, F] against (d(G+hE+hF) − d(G+hE−hF) − d(G−hE+hF) + d(G−hE−hF)) / 4h², REML, q = 2."""
    stats, G = _model(2, 2, False, False, seed=5)
    G = G + 0.3 * np.eye(2)
    directions = [np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]]),
                  np.array([[0.0, 0.0], [0.0, 1.0]])]
    analytic = unit_solve(stats, np.linalg.cholesky(G)).curvature_G(True, directions)

    def d(M):
        return unit_solve(stats, np.linalg.cholesky(M)).profiled_deviance(True)

    h = 1e-4
    for i, E in enumerate(directions):
        for k, F in enumerate(directions):
            second = (d(G + h * E + h * F) - d(G + h * E - h * F) - d(G - h * E + h * F) + d(G - h * E - h * F)) / (4 * h * h)
            assert second == pytest.approx(analytic[i, k], rel=1e-5, abs=1e-5 * np.abs(analytic).max())
