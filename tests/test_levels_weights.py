"""Sampling weights at every level of a K-level linear fit (nested.py's pseudo-likelihood).

Anchors, strongest first:
- WeMix 4.0.4's own numbers (tests/data/weights/hsbw_ri_*.json): the two-level HSB fit written as a
  three- and a four-level model whose upper levels repeat the schools, with the school weight split
  between the levels (the pseudo-likelihood of such a model is the two-level one with the product of
  the weights), so estimates, the top-level sandwich and the pseudo-deviance must be WeMix's;
- an independent evaluation of the definition, the nested integrals of Rabe-Hesketh & Skrondal
  (2006) with each conditional contribution raised to its weight, by Gauss-Hermite quadrature,
  maximised with scipy from several starts (slow) and used for the sandwich's scores (WeMix's
  definition: derivatives of each top unit's pseudo-log-likelihood);
- integer weights at any level equal the unweighted fit of the data with the records and units
  replicated (the reading the definition implies), and weights all 1 equal lme4's fit exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize
from scipy.special import logsumexp

from hlmcli.errors import ModelError
from hlmcli.engine.nested import Coefficient as C, LevelsData, deviance_levels, levels_solve, reduce_levels
from hlmcli.engine.nested_fit import fit_nested

HERE = Path(__file__).resolve().parent
WDATA = HERE / "data" / "weights"
TDATA = HERE / "data" / "three_level"


# ---------------------------------------------------------------- WeMix's numbers, through the K-level engine

@pytest.fixture(scope="module")
def hsbw():
    l1 = pd.read_csv(WDATA / "hsbw_l1.csv")
    l2 = pd.read_csv(WDATA / "hsbw_l2.csv").sort_values("ID").reset_index(drop=True)
    j_of = {v: i for i, v in enumerate(l2["ID"])}
    l1 = l1.assign(_j=l1["ID"].map(j_of)).sort_values("_j", kind="stable").reset_index(drop=True)
    return l1, l2


def _hsbw_levels(hsbw, K, case):
    """MATHACH = π0 + π1·SES + e, π0 = β00 + r0 (random at level 2), every higher coefficient fixed,
    SECTOR at the top: the two-level model γ00 + γ01·SECTOR + γ10·SES + u0 with the schools repeated
    as the units of levels 3..K. The school weight W2 = (2 − SECTOR)(1 + HIMINTY) is split: (1 + HIMINTY)
    on the level-2 unit given its level-3 unit, (2 − SECTOR) at the top, 1 in between."""
    l1, l2 = hsbw
    J = len(l2)
    ones = np.ones(J)
    top = C(None, (C(None), C(0)), False) if K == 3 else C(None, (C(None, (C(None), C(0)), False),), False)
    slope = C(None, (C(None),), False) if K == 3 else C(None, (C(None, (C(None),), False),), False)
    layout = (C(None, (top,), True), C(0, (slope,), False))
    preds = (l1[["SES"]].to_numpy(float), np.zeros((J, 0))) + (np.zeros((J, 0)),) * (K - 3) + \
        (l2[["SECTOR"]].to_numpy(float),)
    parents = (l1["_j"].to_numpy(np.int64),) + (np.arange(J),) * (K - 2)
    if case == "unweighted":
        weights = (np.ones(len(l1)),) + (ones,) * (K - 1)
    else:
        w1 = l1["W1"].to_numpy(float)
        w2 = (1.0 + l2["HIMINTY"].to_numpy(float))
        wtop = (2.0 - l2["SECTOR"].to_numpy(float))
        if case == "norm_cluster":  # W1 to n_j in each school, W2 = w2·wtop to J: scale the top part
            n = np.bincount(parents[0]).astype(float)
            w1 = w1 * (n / np.bincount(parents[0], weights=w1))[parents[0]]
            wtop = wtop * (J / (w2 * wtop).sum())
        weights = (w1, w2) + (ones,) * (K - 3) + (wtop,)
    return LevelsData(l1["MATHACH"].to_numpy(float), preds, parents, layout, weights)


@pytest.mark.parametrize("K,case", [(3, "raw"), (3, "norm_cluster"), (4, "raw"), (3, "unweighted")])
def test_upper_levels_repeating_the_schools_give_wemix_numbers(hsbw, K, case):
    ref = json.loads((WDATA / f"hsbw_ri_{case}.json").read_text())["reference"]
    fit = fit_nested(_hsbw_levels(hsbw, K, case))
    assert fit.converged
    robust = np.sqrt(np.diag(fit.cov_gamma_robust))
    for k, g in enumerate(["γ00", "γ01", "γ10"]):
        e = ref["fixed"][g]
        assert fit.gamma[k] == pytest.approx(e["est"], rel=1e-5), g
        assert robust[k] == pytest.approx(e["se"], rel=1e-5), g
    vc = ref["variance_components"]
    assert fit.sigma2 == pytest.approx(vc["residual"]["sigma2"], rel=1e-5)
    assert fit.taus[0][0, 0] == pytest.approx(vc["ID"]["tau"][0][0], rel=1e-5)
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-8)


# ---------------------------------------------------------------- weights 1 = lme4; integer weights = replication

def test_weights_all_one_reproduce_lme4_exactly():
    """lme4's Pastes fit (lmer ML, tests/data/three_level/pastes_ml.json) with a weight of 1 at every level."""
    l1 = pd.read_csv(TDATA / "pastes_l1.csv")
    l2 = pd.read_csv(TDATA / "pastes_l2.csv").sort_values(["BATCH", "SAMPLE"]).reset_index(drop=True)
    j_of = {(b, s): i for i, (b, s) in enumerate(zip(l2["BATCH"], l2["SAMPLE"]))}
    l1 = l1.assign(_j=[j_of[(b, s)] for b, s in zip(l1["BATCH"], l1["SAMPLE"])]).sort_values("_j", kind="stable")
    batches = sorted(l2["BATCH"].unique())
    unit3 = l2["BATCH"].map({b: k for k, b in enumerate(batches)}).to_numpy(np.int64)
    layout = (C(None, (C(None, (C(None),), True),), True),)
    J2, J3 = len(l2), len(batches)
    plain = LevelsData(l1["STRENGTH"].to_numpy(float), (np.zeros((len(l1), 0)), np.zeros((J2, 0)), np.zeros((J3, 0))),
                       (l1["_j"].to_numpy(np.int64), unit3), layout)
    fit = fit_nested(_with_weights(plain, (np.ones(len(l1)), np.ones(J2), np.ones(J3))))
    ref = json.loads((TDATA / "pastes_ml.json").read_text())["reference"]
    assert fit.converged
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    assert fit.gamma[0] == pytest.approx(ref["fixed"]["γ000"]["est"], rel=1e-6)
    assert np.sqrt(fit.cov_gamma[0, 0]) == pytest.approx(ref["fixed"]["γ000"]["se"], rel=1e-5)
    unweighted = fit_nested(plain)
    assert fit.deviance == pytest.approx(unweighted.deviance, rel=1e-12)
    # WeMix's sandwich is the CR0 one times J/(J-1), J the top-level units
    assert np.allclose(fit.cov_gamma_robust, unweighted.cov_gamma_robust * J3 / (J3 - 1), rtol=1e-6)


def _small(K, seed):
    """A small nested data set: π0 random at every level with a top-level predictor, π1 (the slope
    on x) random at level 2 only."""
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(3, 5))]  # top level first
    parents = []
    for _ in range(K - 2):
        per = rng.integers(1, 4, size=sizes[-1])
        parents.insert(0, np.repeat(np.arange(sizes[-1]), per))
        sizes.append(int(per.sum()))
    J2 = sizes[-1]
    n2 = rng.integers(2, 5, size=J2)
    parents.insert(0, np.repeat(np.arange(J2), n2))
    N = int(n2.sum())
    x = rng.normal(size=N)
    z = rng.normal(size=sizes[0])
    up = parents[0]
    for par in parents[1:]:
        up = par[up]
    y = 1.0 + 0.5 * x + 0.8 * z[up] + rng.normal(size=sizes[0])[up] + rng.normal(size=J2)[parents[0]] + \
        rng.normal(size=N)

    def coefficient(col1, top_cols, random_upper):
        node = C(None, tuple(C(c) for c in top_cols), random_upper)  # level K-1, random at level K or not
        for _ in range(K - 3):
            node = C(None, (node,), random_upper)
        return C(col1, (node,), True)

    layout = (coefficient(None, (None, 0), True), coefficient(0, (None,), False))
    preds = (x[:, None],) + tuple(np.zeros((len(parents[k]), 0)) for k in range(1, K - 1)) + (z[:, None],)
    return LevelsData(y, preds, tuple(parents), layout)


def _replicate(data: LevelsData) -> LevelsData:
    """The data with each record and unit copied as often as its integer weight (its copies nested in
    its parent's copy, a copied unit a new unit with all its members)."""
    K = data.n_levels
    parents = [np.asarray(p) for p in data.parents]
    sizes = [parents[0].size] + [p.size for p in parents[1:]] + [int(parents[-1].max()) + 1]
    members = [[[] for _ in range(sizes[level])] for level in range(1, K)]  # members[ℓ-1][u]: level-ℓ ones
    for level in range(1, K):
        for i, u in enumerate(parents[level - 1]):
            members[level - 1][u].append(i)
    rows = [[] for _ in range(K)]
    new_parents = [[] for _ in range(K - 1)]
    count = [0] * K

    def copy(level, i, parent):
        for _ in range(int(data.weights[level - 1][i])):
            me = count[level - 1]
            count[level - 1] += 1
            rows[level - 1].append(i)
            if level < K:
                new_parents[level - 1].append(parent)
            if level > 1:
                for c in members[level - 2][i]:
                    copy(level - 1, c, me)

    for k in range(sizes[-1]):
        copy(K, k, None)
    return LevelsData(np.asarray(data.y)[rows[0]],
                      tuple(np.asarray(a)[r] for a, r in zip(data.predictors, rows)),
                      tuple(np.array(p, dtype=np.int64) for p in new_parents), data.layout)


def _with_weights(data, weights):
    return LevelsData(data.y, data.predictors, data.parents, data.layout, weights)


def _level_sizes(data):
    return [np.asarray(data.parents[0]).size] + [np.asarray(p).size for p in data.parents[1:]] + \
        [int(np.asarray(data.parents[-1]).max()) + 1]


def _integer_weighted(K):
    data = _small(K, seed=K)
    rng = np.random.default_rng(1)
    weights = tuple(rng.integers(1, 4, size=n).astype(float) for n in _level_sizes(data))
    return _with_weights(data, weights), _replicate(_with_weights(data, weights))


@pytest.mark.parametrize("K", [3, 4])
def test_integer_weights_equal_replicated_records_and_units(K):
    w, rep = _integer_weighted(K)
    qs = reduce_levels(w).qs
    assert qs[0] == 2 and all(q == 1 for q in qs[1:])
    taus = [np.eye(q) * 0.6 + 0.15 for q in qs]
    for reml in (False, True):
        assert deviance_levels(w, 0.9, taus, reml) == pytest.approx(deviance_levels(rep, 0.9, taus, reml), rel=1e-12)
        lams = [np.linalg.cholesky(t / 0.9) for t in taus]
        for a, b in zip(levels_solve(reduce_levels(w), lams).gradients(reml),
                        levels_solve(reduce_levels(rep), lams).gradients(reml)):
            assert np.allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("K", [3, 4])
def test_integer_weighted_fit_equals_the_replicated_fit(K):
    w, rep = _integer_weighted(K)
    fw, fr = fit_nested(w), fit_nested(rep)
    assert fw.converged and fr.converged
    assert fw.deviance == pytest.approx(fr.deviance, rel=1e-10)
    assert np.allclose(fw.gamma, fr.gamma, rtol=1e-6, atol=1e-7)
    for a, b in zip(fw.taus, fr.taus):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert np.allclose(fw.eb[0], fr.eb[0][_first_copies(w, 2)], rtol=1e-5, atol=1e-6)


def _first_copies(data, level):
    """The index, in the replicated data, of the first copy of each level-ℓ unit."""
    sizes = _level_sizes(data)
    K = data.n_levels
    order = []
    members = {}
    for lv in range(1, K):
        for i, u in enumerate(np.asarray(data.parents[lv - 1])):
            members.setdefault((lv + 1, u), []).append(i)

    def walk(lv, i, first):
        for c in range(int(data.weights[lv - 1][i])):
            if lv == level:
                order.append((i, first and c == 0))
            if lv > level:
                for m in members.get((lv, i), []):
                    walk(lv - 1, m, first and c == 0)

    for k in range(sizes[-1]):
        walk(K, k, True)
    idx = np.full(sizes[level - 1], -1)
    for pos, (i, first) in enumerate(order):
        if first and idx[i] < 0:
            idx[i] = pos
    return idx


def test_level1_weights_only_equal_replicated_records_within_units():
    """WeMix's definition: an integer level-1 weight is that many copies of the record in its own
    level-2 unit (sharing the unit's random effects), not new units."""
    data = _small(3, seed=7)
    n = _level_sizes(data)
    w1 = np.random.default_rng(2).integers(1, 4, size=n[0]).astype(float)
    weights = (w1, np.ones(n[1]), np.ones(n[2]))
    rep = _replicate(_with_weights(data, weights))
    assert rep.parents[1].size == n[1] and rep.y.size == int(w1.sum())
    d = _with_weights(data, (w1, None, None))
    taus = [np.diag([0.7, 0.3]), np.array([[0.5]])]
    assert deviance_levels(d, 1.1, taus) == pytest.approx(deviance_levels(rep, 1.1, taus), rel=1e-12)


def test_satterthwaite_is_refused_with_weights():
    data = _small(3, seed=3)
    with pytest.raises(ModelError, match="Satterthwaite"):
        fit_nested(_with_weights(data, (None, None, np.ones(_level_sizes(data)[2]))), df_method="satterthwaite")


def test_bad_weights_are_refused_naming_the_level():
    data = _small(3, seed=3)
    n = _level_sizes(data)
    with pytest.raises(ValueError, match="level-2 weights must be finite and positive"):
        reduce_levels(_with_weights(data, (None, -np.ones(n[1]), None)))
    with pytest.raises(ValueError, match="level-3 weights must have one entry per level-3 unit"):
        reduce_levels(_with_weights(data, (None, None, np.ones(n[2] + 1))))


# ---------------------------------------------------------------- the definition, by quadrature

def _gh_data(seed=5):
    """Three levels, π0 random at levels 2 and 3 with a level-3 predictor, π1 (slope on x) random at
    level 2, non-integer weights at every level; records sorted by unit."""
    data = _small(3, seed)
    rng = np.random.default_rng(seed + 100)
    weights = tuple(rng.uniform(0.5, 2.5, size=n) for n in _level_sizes(data))
    return _with_weights(data, weights)


def _agq(log_g, centre, root, nodes):
    """log ∫ exp(log_g(u)) du by Gauss-Hermite quadrature centred at `centre` with the nodes scaled by
    `root` (u = centre + √2·root·t): adaptive quadrature, whose placement only decides how fast it
    converges, not what it converges to. log_g maps (n, d) points to (n, …) values."""
    d = root.shape[0]
    t, v = np.polynomial.hermite.hermgauss(nodes)
    grid = np.stack(np.meshgrid(*(t,) * d, indexing="ij"), -1).reshape(-1, d)
    lw = np.sum(np.log(np.stack(np.meshgrid(*(v,) * d, indexing="ij"), -1).reshape(-1, d)), axis=1)
    u = centre + np.sqrt(2.0) * grid @ root.T
    vals = log_g(u)
    shape = (-1,) + (1,) * (vals.ndim - 1)
    return logsumexp((lw + np.sum(grid * grid, axis=1)).reshape(shape) + vals, axis=0) + \
        np.linalg.slogdet(np.sqrt(2.0) * root)[1]


def _log_normal(u, tau):
    """log φ(u; 0, τ) for points u (n, d)."""
    d = tau.shape[0]
    q = np.einsum("na,ab,nb->n", u, np.linalg.inv(tau), u)
    return -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(tau)[1] + q)


def _gh_log_pl(data, gamma, sigma2, tau2, tau3, n2=6, n3=8):
    """Each top unit's weighted pseudo-log-likelihood, straight from the definition:
    w_k log ∫ φ(u3; τ3) Π_{j∈k} [∫ φ(u2; τ2) Π_{i∈j} f(y_i | u2, u3)^{w_i|j} du2]^{w_j|k} du3,
    by adaptive Gauss-Hermite quadrature at both levels (a product rule in the two level-2 effects,
    centred at the integrand's mode for the level-3 node at hand)."""
    y = np.asarray(data.y)
    x = data.predictors[0][:, 0]
    z = data.predictors[2][:, 0]
    unit2, unit3 = np.asarray(data.parents[0]), np.asarray(data.parents[1])
    w1, w2, w3 = data.weights
    tau3 = np.array([[tau3]])

    def level2(j, u3):
        """log of unit j's level-2 integral at each level-3 value u3 (m,)."""
        rows = np.flatnonzero(unit2 == j)
        k = unit3[j]
        r0 = y[rows] - (gamma[0] + gamma[1] * z[k] + gamma[2] * x[rows])
        Z = np.column_stack([np.ones(rows.size), x[rows]])
        W = w1[rows]
        A = Z.T @ (W[:, None] * Z) / sigma2 + np.linalg.inv(tau2)  # the integrand's curvature in u2
        root = np.linalg.cholesky(np.linalg.inv(A))
        out = np.empty(u3.size)
        for m, u in enumerate(u3):
            centre = np.linalg.solve(A, Z.T @ (W * (r0 - u)) / sigma2)

            def log_g(v):
                r = (r0 - u)[None, :] - v @ Z.T
                return _log_normal(v, tau2) + (-0.5 * np.log(2 * np.pi * sigma2) - r * r / (2 * sigma2)) @ W

            out[m] = _agq(log_g, centre, root, n2)
        return out

    out = np.zeros(int(unit3.max()) + 1)
    for k in range(out.size):
        members = np.flatnonzero(unit3 == k)

        def log_h(u):
            u = u[:, 0]
            return _log_normal(u[:, None], tau3) + sum(w2[j] * level2(j, u) for j in members)

        # place the level-3 nodes by a parabola through three values of the log integrand
        s = float(np.sqrt(tau3[0, 0]))
        f = log_h(np.array([[-s], [0.0], [s]]))
        curv = (f[0] - 2 * f[1] + f[2]) / (s * s)
        centre = np.array([(f[0] - f[2]) / (2 * s * curv)])
        out[k] = w3[k] * _agq(log_h, centre, np.array([[1.0 / np.sqrt(-curv)]]), n3)
    return out


def _fit_parameters(fit):
    """(γ in _gh_log_pl's order, σ², τπ, τβ) of a fit of _gh_data's layout: γ000, γ001, γ100."""
    return fit.gamma, fit.sigma2, fit.taus[0], fit.taus[1][0, 0]


@pytest.fixture(scope="module")
def gh_fit():
    data = _gh_data()
    fit = fit_nested(data)
    assert fit.converged
    return data, fit


@pytest.mark.parametrize("point", [0, 1])
def test_pseudo_deviance_is_the_nested_integrals_of_the_definition(point):
    """The closed form (γ at its GLS value, which deviance_levels uses) against the quadrature."""
    data = _gh_data()
    sigma2, tau2, tau3 = [(0.28, np.array([[1.1, 0.5], [0.5, 0.6]]), 0.6),
                          (1.3, np.array([[0.8, -0.2], [-0.2, 0.4]]), 0.05)][point]
    us = levels_solve(reduce_levels(data), [np.linalg.cholesky(tau2 / sigma2), np.array([[np.sqrt(tau3 / sigma2)]])])
    value = -2 * _gh_log_pl(data, us.gamma, sigma2, tau2, tau3).sum()
    finer = -2 * _gh_log_pl(data, us.gamma, sigma2, tau2, tau3, n2=10, n3=12).sum()
    assert value == pytest.approx(finer, rel=1e-12)  # the quadrature has converged
    assert us.deviance(sigma2, False) == pytest.approx(value, rel=1e-12)
    assert deviance_levels(data, sigma2, [tau2, np.array([[tau3]])]) == pytest.approx(value, rel=1e-12)


@pytest.mark.slow
def test_robust_covariance_is_wemix_sandwich_of_the_top_units_scores(gh_fit):
    """WeMix: Cov = H⁻¹ (J/(J−1)) Σ_k s_k s_k' H⁻¹, s_k = ∂(w_k log L_k)/∂γ and H its Hessian, at
    fixed σ², τ; both by central differences of the quadrature."""
    data, fit = gh_fit
    gamma, sigma2, tau2, tau3 = _fit_parameters(fit)
    p = gamma.size
    h = 1e-4 * np.maximum(np.abs(gamma), 1.0)

    def per_unit(g):
        return _gh_log_pl(data, g, sigma2, tau2, tau3)

    S = np.empty((per_unit(gamma).size, p))
    H = np.empty((p, p))
    for a in range(p):
        e = np.zeros(p)
        e[a] = h[a]
        S[:, a] = (per_unit(gamma + e) - per_unit(gamma - e)) / (2 * h[a])
        for b in range(p):
            f = np.zeros(p)
            f[b] = h[b]
            H[a, b] = (per_unit(gamma + e + f).sum() - per_unit(gamma + e - f).sum() - per_unit(gamma - e + f).sum()
                       + per_unit(gamma - e - f).sum()) / (4 * h[a] * h[b])
    J = S.shape[0]
    Hi = np.linalg.inv(H)
    expected = Hi @ (J / (J - 1) * S.T @ S) @ Hi
    assert np.allclose(fit.cov_gamma_robust, expected, rtol=1e-5)
    assert np.allclose(S.sum(axis=0), 0, atol=1e-6 * np.abs(S).max())  # the score vanishes at γ̂


@pytest.mark.slow
def test_scipy_maximum_of_the_quadrature_equals_the_fit(gh_fit):
    """The definition maximised from two starts with scipy (BFGS on central-difference gradients,
    τ through log-Cholesky factors) reaches the fit's estimates."""
    data, fit = gh_fit
    gamma, sigma2, tau2, tau3 = _fit_parameters(fit)
    assert fit.deviance == pytest.approx(-2 * _gh_log_pl(data, gamma, sigma2, tau2, tau3).sum(), rel=1e-12)

    def unpack(theta):
        g = theta[:3]
        s2 = np.exp(theta[3])
        L = np.array([[np.exp(theta[4]), 0.0], [theta[5], np.exp(theta[6])]])
        return g, s2, L @ L.T, np.exp(theta[7])

    def f(theta):  # the fewest nodes that still integrate exactly (the test above shows they do)
        return -2 * _gh_log_pl(data, *unpack(theta), n2=3, n3=4).sum()

    def grad(theta):
        out = np.empty_like(theta)
        for i in range(theta.size):
            e = np.zeros_like(theta)
            e[i] = 1e-5
            out[i] = (f(theta + e) - f(theta - e)) / 2e-5
        return out

    best = None
    for start in ([0, 0, 0, 0, 0, 0, 0, 0], [2.0, -1, 1, -0.5, 0.5, 0, 0.5, 0.5]):
        r = optimize.minimize(f, np.array(start, float), jac=grad, method="BFGS", options={"gtol": 1e-7, "maxiter": 500})
        if best is None or r.fun < best.fun:
            best = r
    g, s2, t2, t3 = unpack(best.x)
    assert best.fun == pytest.approx(fit.deviance, rel=1e-9)
    assert np.allclose(g, fit.gamma, rtol=1e-5, atol=1e-6)
    assert s2 == pytest.approx(fit.sigma2, rel=1e-5)
    assert np.allclose(t2, fit.taus[0], rtol=1e-4, atol=1e-6)
    assert t3 == pytest.approx(fit.taus[1][0, 0], rel=1e-4)
