"""The one search over a tuple of PSD blocks (hlmcli/engine/search.py), on an objective whose optimum is
known by hand, and the refusal of data whose likelihood has no maximum (σ² = 0)."""

from __future__ import annotations

import numpy as np
import pytest

from hlmcli.engine.nested import Coefficient, LevelsData
from hlmcli.engine.search import Plan, search
from hlmcli.engine.unitsolve import within_unit_rss
from hlmcli.errors import ModelError

# block 1 (2×2): ‖G − T‖²_F with T = 2vv' − ww' (v ⟂ w): the nearest PSD matrix is T's positive part 2vv',
# a rank-1 boundary point, at squared distance 1; block 2 (1×1): (g − 0.5)², interior at 0.5.
V = np.array([0.6, 0.8])
W = np.array([-0.8, 0.6])
T1 = 2.0 * np.outer(V, V) - np.outer(W, W)


class _TwoBlocks:
    """An objective.DevianceObjective with exact gradients (Γ = 2(G − T) for ‖G − T‖²_F)."""

    def at(self, Gs, factors=None):
        G1, G2 = Gs
        return self.value(Gs), (2.0 * (G1 - T1), 2.0 * (G2 - 0.5))

    def value(self, Gs):
        G1, G2 = Gs
        return float(np.sum((G1 - T1) ** 2) + (G2[0, 0] - 0.5) ** 2)

    def noise(self, Gs):
        return 0.0


@pytest.mark.parametrize("start2", [0.25, 0.0])
def test_the_search_finds_and_certifies_a_known_optimum_over_two_blocks(start2):
    """From the identity, and from a start where block 2 sits at zero: there ∂d/∂Λ = 2ΓΛ = 0 whatever
    Γ is, so L-BFGS-B cannot leave it and only the certificate's null-space check (Γ < 0 into block 2's
    cone) and the escape along it can; the answer is the hand-computed optimum, certified, with the
    ranks (1, 1)."""
    plan = Plan([("start", (0.25 * np.eye(2), np.array([[start2]])))])
    found = search(_TwoBlocks(), plan, (False, False), 1000, names=("tau_a", "tau_b"))
    cert = found.certificate
    assert cert.certified, cert.failed
    assert cert.ranks == (1, 1)
    np.testing.assert_allclose(found.Gs[0], 2.0 * np.outer(V, V), atol=1e-8)
    np.testing.assert_allclose(found.Gs[1], [[0.5]], atol=1e-8)
    assert found.deviance == pytest.approx(1.0, abs=1e-12)


def test_within_unit_rss_is_the_residual_of_the_regression_with_unit_coefficients():
    """Against the regression written out: y on [B | each unit's own copy of Z] by least squares."""
    rng = np.random.default_rng(7)
    J, n = 6, 5
    unit = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    w = rng.normal(size=J)[unit]
    y = rng.normal(size=J * n)
    Z = np.column_stack([np.ones_like(x), x])
    B = np.column_stack([np.ones_like(x), x, w, x * w])
    dense = np.column_stack([B] + [Z * (unit == j)[:, None] for j in range(J)])
    resid = y - dense @ np.linalg.lstsq(dense, y, rcond=None)[0]
    BY = np.column_stack([B, y])
    ZZ = np.stack([Z[unit == j].T @ Z[unit == j] for j in range(J)])
    ZB = np.stack([Z[unit == j].T @ BY[unit == j] for j in range(J)])
    assert within_unit_rss(ZZ, ZB, BY.T @ BY) == pytest.approx(float(resid @ resid), rel=1e-10)
    exact = Z[:, 1] * rng.normal(size=J)[unit] + rng.normal(size=J)[unit]
    BY[:, -1] = exact
    ZB = np.stack([Z[unit == j].T @ BY[unit == j] for j in range(J)])
    assert within_unit_rss(ZZ, ZB, BY.T @ BY) <= 1e-12 * float(exact @ exact)


def _exact_within(rng, J=30, n=8):
    """y = a_j + b_j x exactly in every unit."""
    unit = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    return unit, x, rng.normal(10, 2, J)[unit] + rng.normal(1, 0.5, J)[unit] * x


def test_an_outcome_exact_within_level2_units_is_refused_at_three_levels():
    """σ² = 0 has no maximum of the likelihood; before, the search ended at the noise limit (exit 3).
    (The two-level CLI case: test_hardening.py.)"""
    from hlmcli.engine.nested_fit import fit_nested

    rng = np.random.default_rng(2)
    unit, x, y = _exact_within(rng, J=40, n=6)
    parent = np.arange(40) // 4
    layout = (Coefficient(None, (Coefficient(None, (Coefficient(None),), random=True),), random=True),
              Coefficient(0, (Coefficient(None, (Coefficient(None),)),), random=True))
    data = LevelsData(y=y, predictors=(x[:, None], np.zeros((40, 0)), np.zeros((10, 0))),
                      parents=(unit, parent), layout=layout)
    with pytest.raises(ModelError, match="exact linear function of the level-1 predictors within every level-2"):
        fit_nested(data)


def test_secant_update_meets_the_secant_condition_and_keeps_h_without_curvature():
    """BFGS: the updated H is symmetric and maps the step to the gradient's change (H₊s = y); in one
    dimension it is y/s; a step showing no positive curvature (s'y ≤ 0) leaves H as it was."""
    from hlmcli.engine.search import secant_update
    H = np.array([[2.0, 0.3], [0.3, 1.0]])
    s, y = np.array([0.1, -0.2]), np.array([0.5, -0.1])
    H1 = secant_update(H, s, y)
    assert np.allclose(H1, H1.T) and np.allclose(H1 @ s, y, rtol=0, atol=1e-14)
    assert secant_update(np.array([[3.0]]), np.array([0.5]), np.array([2.0]))[0, 0] == pytest.approx(4.0, rel=1e-15)
    assert secant_update(H, s, -y) is H


def test_within_unit_rss_with_unit_weights_is_the_weighted_regression():
    """Unit weights c_j: the residual Σ_j c_j‖y_j − B_jγ − Z_jb_j‖², the regression above on rows scaled by √c_j."""
    rng = np.random.default_rng(11)
    J, n = 7, 6
    unit = np.repeat(np.arange(J), n)
    c = rng.uniform(0.2, 3.0, size=J)
    x = rng.normal(size=J * n)
    Z = np.column_stack([np.ones_like(x), x])
    BY = np.column_stack([np.ones_like(x), x, rng.normal(size=J)[unit], rng.normal(size=J * n)])
    root = np.sqrt(c)[unit][:, None]
    dense = np.column_stack([BY[:, :-1]] + [Z * (unit == j)[:, None] for j in range(J)]) * root
    resid = BY[:, -1] * root[:, 0] - dense @ np.linalg.lstsq(dense, BY[:, -1] * root[:, 0], rcond=None)[0]
    ZZ = np.stack([Z[unit == j].T @ Z[unit == j] for j in range(J)])
    ZB = np.stack([Z[unit == j].T @ BY[unit == j] for j in range(J)])
    BB = (BY * root).T @ (BY * root)
    assert within_unit_rss(ZZ, ZB, BB, c) == pytest.approx(float(resid @ resid), rel=1e-10)
