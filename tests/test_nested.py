"""The three-level engine (hlmcli/engine/nested.py, nested_fit.py) against lme4 and nlme references, a dense
brute-force likelihood, and finite differences.

References: tests/data/three_level/ holds copies of the shared three_level references (eg_m1_*,
pastes_*: lme4 1.1.31 and nlme 3.1.162 fits of mlmRev::egsingle and lme4::Pastes) and
lme4_extra.json, made by tests/reference_scripts/three_level_lme4.R (models with level-2 and level-3
predictors, a random level-3 intercept with a random level-2 slope, and a simulated data set whose
level-3 variance is estimated as exactly zero)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hlmcli.engine.nested import (Beta, NestedData, NestedLayout, Pi, deviance_nested,
                           nested_solve, reduce_nested)
from hlmcli.engine.nested_fit import fit_nested
from hlmcli.engine.unitsolve import factor

DATA = Path(__file__).parent / "data" / "three_level"


def _load(name, l1cols, l2cols, l3cols, id2, id3, yname, l1=None):
    """NestedData arrays from the three CSV files, sorted by level-3 then level-2 unit."""
    l1 = pd.read_csv(DATA / f"{name}_l1.csv") if l1 is None else l1
    l2 = pd.read_csv(DATA / f"{name}_l2.csv")
    l3 = pd.read_csv(DATA / f"{name}_l3.csv").sort_values(id3).reset_index(drop=True)
    k_of = {v: i for i, v in enumerate(l3[id3])}
    l2 = l2.assign(_k=l2[id3].map(k_of)).sort_values(["_k", id2]).reset_index(drop=True)
    j_of = {(a, b): i for i, (a, b) in enumerate(zip(l2[id3], l2[id2]))}
    l1 = l1.assign(_j=[j_of[(a, b)] for a, b in zip(l1[id3], l1[id2])]).sort_values("_j", kind="stable")
    return dict(y=l1[yname].to_numpy(float), A=l1[l1cols].to_numpy(float).reshape(len(l1), -1),
                X2=l2[l2cols].to_numpy(float).reshape(len(l2), -1), W3=l3[l3cols].to_numpy(float).reshape(len(l3), -1),
                unit2=l1["_j"].to_numpy(np.int64), unit3=l2["_k"].to_numpy(np.int64))


def _eg(layout, l2cols=("FEMALE",), l3cols=("LOWINC", "MOBILITY")):
    return NestedData(**_load("eg", ["YEAR"], list(l2cols), list(l3cols), "CHILDID", "SCHOOLID", "MATH"), layout=layout)


RR = Beta(None, (None,), True)
EG_M1 = NestedLayout((Pi(None, (RR,), True), Pi(0, (RR,), True)))
# π0 = β00 + β01 FEMALE + r0, β00 = γ000 + γ001 LOWINC + u00, β01 = γ010;
# π1 = β10 + r1, β10 = γ100 + γ101 LOWINC + γ102 MOBILITY + u10
EG_M2 = NestedLayout((Pi(None, (Beta(None, (None, 0), True), Beta(0, (None,), False)), True),
                      Pi(0, (Beta(None, (None, 0, 1), True),), True)))
EG_M2_NAMES = ["(Intercept)", "LOWINC", "FEMALE", "YEAR", "LOWINC:YEAR", "YEAR:MOBILITY"]
# π0 = β00 + β01 FEMALE + r0 (β00 random at level 3), π1 = β10 + r1 (β10 fixed at level 3)
EG_M3 = NestedLayout((Pi(None, (RR, Beta(0, (None,), False)), True), Pi(0, (Beta(None, (None,), False),), True)))
EG_M3_NAMES = ["(Intercept)", "FEMALE", "YEAR"]


@pytest.fixture(scope="module")
def fits():
    """Each reference model fitted once per module (the EG fits take a fraction of a second each)."""
    cache = {}

    def get(key, data, reml):
        if key not in cache:
            cache[key] = fit_nested(data, reml=reml)
        return cache[key]
    return get


def _check(fit, dev, fixed, se, sigma2, tau_pi, tau_beta):
    assert fit.converged and fit.certificate.certified, fit.message
    # the deviance to 1e-8 relative, and never above the reference's (beyond rounding)
    assert abs(fit.deviance - dev) <= 1e-8 * abs(dev)
    assert fit.deviance <= dev + 1e-11 * abs(dev)
    np.testing.assert_allclose(fit.gamma, fixed, rtol=1e-5, atol=1e-5 * np.max(np.abs(fixed)) * 1e-3)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov_gamma)), se, rtol=1e-5)
    assert abs(fit.sigma2 - sigma2) <= 2e-5 * sigma2
    for est, ref in ((fit.tau_pi, tau_pi), (fit.tau_beta, tau_beta)):
        ref = np.asarray(ref, float).reshape(est.shape)
        scale = max(np.max(np.abs(np.diag(ref))), sigma2 * 1e-3)
        assert np.max(np.abs(est - ref)) <= 2e-5 * scale, (est, ref)


def _shared_ref(name):
    r = json.loads((DATA / f"{name}.json").read_text())["reference"]
    vc = r["variance_components"]
    l2, l3 = [k for k in vc if ":" in k][0], [k for k in vc if k != "residual" and ":" not in k][0]
    return (r["deviance"], [v["est"] for v in r["fixed"].values()], [v["se"] for v in r["fixed"].values()],
            vc["residual"]["sigma2"], vc[l2]["tau"], vc[l3]["tau"])


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_eg_growth_model_matches_lme4_and_nlme(fits, method):
    fit = fits(("eg1", method), _eg(EG_M1), method == "reml")
    _check(fit, *_shared_ref(f"eg_m1_{method}"))
    assert fit.method == method.upper()
    nl = json.loads((DATA / f"eg_m1_nlme_{method}.json").read_text())["reference"]
    assert fit.deviance <= nl["deviance"] + 1e-11 * nl["deviance"]
    assert abs(fit.deviance - nl["deviance"]) <= 1e-8 * nl["deviance"]
    assert fit.n_params == (7 if method == "reml" else 9)
    assert fit.boundary == []
    assert fit.df_gamma.tolist() == [59, 59]  # K − S − 1 = 60 − 0 − 1
    if method == "ml":  # R&B 2002 Table 8.2, printed digits
        assert np.round(fit.gamma, 3).tolist() == [-0.779, 0.763]
        assert round(fit.sigma2, 3) == 0.301
        assert round(fit.tau_pi[0, 0], 3) == 0.640 and round(fit.tau_pi[1, 1], 3) == 0.011
        assert round(fit.tau_beta[0, 0], 3) == 0.165 and round(fit.tau_beta[1, 1], 3) == 0.011


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_pastes_matches_lme4(method):
    layout = NestedLayout((Pi(None, (RR,), True),))
    data = NestedData(**_load("pastes", [], [], [], "SAMPLE", "BATCH", "STRENGTH"), layout=layout)
    fit = fit_nested(data, reml=method == "reml")
    _check(fit, *_shared_ref(f"pastes_{method}"))
    assert fit.eb_pi.shape == (30, 1) and fit.eb_beta.shape == (10, 1)


def _extra(name):
    return json.loads((DATA / "lme4_extra.json").read_text())["models"][name]


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("model", ["eg_m2", "eg_m3"])
def test_models_with_level2_and_level3_predictors_match_lme4(fits, model, method):
    layout, names = (EG_M2, EG_M2_NAMES) if model == "eg_m2" else (EG_M3, EG_M3_NAMES)
    fit = fits((model, method), _eg(layout), method == "reml")
    r = _extra(f"{model}_{method}")
    vc = r["variance_components"]
    _check(fit, r["deviance"], [r["fixed"][n]["est"] for n in names], [r["fixed"][n]["se"] for n in names],
           r["sigma2"], vc["SCHOOLID:CHILDID"]["tau"], vc["SCHOOLID"]["tau"])
    if model == "eg_m2":
        # β00, β10 random at level 3 (K − S − 1); FEMALE's β01 is fixed at level 3 but π0 is random
        # at level 2: J2 − (γ's of π0's non-random β's) = 1721 − 1
        assert fit.df_gamma.tolist() == [58, 58, 1720, 57, 57, 57]
    else:
        assert fit.df_gamma.tolist() == [59, 1720, 1720]


def _sim_boundary():
    sim = pd.read_csv(DATA / "boundary_sim.csv")
    y = sim["Y"].to_numpy(float)
    return NestedData(y=y, A=sim[["X"]].to_numpy(float), X2=np.zeros((90, 0)), W3=np.zeros((15, 0)),
                      unit2=sim["L2"].to_numpy(np.int64) - 1, unit3=np.repeat(np.arange(15), 6),
                      layout=NestedLayout((Pi(None, (RR,), True), Pi(0, (Beta(None, (None,), False),), True))))


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_level3_variance_zero_is_certified_at_the_boundary(method):
    r = _extra(f"sim_boundary_{method}")
    fit = fit_nested(_sim_boundary(), reml=method == "reml")
    vc = r["variance_components"]
    _check(fit, r["deviance"], [r["fixed"][n]["est"] for n in ("(Intercept)", "X")],
           [r["fixed"][n]["se"] for n in ("(Intercept)", "X")], r["sigma2"], vc["L3:L2"]["tau"], vc["L3"]["tau"])
    if method == "ml":
        assert fit.tau_beta[0, 0] == 0.0
        assert fit.certificate.ranks == (2, 0)
        assert fit.certificate.null_eigenvalues[1] >= 0
        assert fit.boundary == ["tau_beta[0,0] estimated as zero"]
    else:
        assert fit.tau_beta[0, 0] > 0 and fit.boundary == []


# ---------------------------------------------------------------- brute force on a small data set

def _small(seed=3, min_records=1):
    rng = np.random.default_rng(seed)
    J3 = 5
    per3 = rng.integers(1, 5, size=J3)
    unit3 = np.repeat(np.arange(J3), per3)
    J2 = unit3.size
    n2 = rng.integers(min_records, min_records + 4, size=J2)
    unit2 = np.repeat(np.arange(J2), n2)
    N = unit2.size
    A = np.column_stack([rng.normal(size=N) + 2.0, rng.integers(0, 2, size=N).astype(float)])
    X2 = rng.normal(size=(J2, 1))
    W3 = rng.normal(size=(J3, 1))
    y = rng.normal(size=N) + A[:, 0] * 0.5
    pis = (Pi(None, (Beta(None, (None, 0), True), Beta(0, (None,), False)), True),
           Pi(0, (Beta(None, (None,), True), Beta(0, (0,), True)), True),
           Pi(1, (Beta(None, (None,), False),), False))
    return NestedData(y, A, X2, W3, unit2, unit3, NestedLayout(pis))


def _dense(data):
    """X, Z2 (per level-2 unit blocks), Z3 (per level-3 unit blocks) as dense matrices."""
    N = data.y.size
    a = lambda c: np.ones(N) if c is None else data.A[:, c]  # noqa: E731
    x2 = lambda c: np.ones(N) if c is None else data.X2[data.unit2, c]  # noqa: E731
    w3 = lambda s: np.ones(N) if s is None else data.W3[data.unit3[data.unit2], s]  # noqa: E731
    X, Z2c, Z3c = [], [], []
    for pi in data.layout.pis:
        if pi.random:
            Z2c.append(a(pi.level1_col))
        for b in pi.betas:
            if b.random:
                Z3c.append(a(pi.level1_col) * x2(b.level2_col))
            for s in b.level3_cols:
                X.append(a(pi.level1_col) * x2(b.level2_col) * w3(s))
    X = np.column_stack(X)
    J2, J3 = data.unit3.size, int(data.unit3.max()) + 1
    q2, q3 = len(Z2c), len(Z3c)
    Z2 = np.zeros((N, J2 * q2))
    Z3 = np.zeros((N, J3 * q3))
    k_of = data.unit3[data.unit2]
    for i in range(N):
        Z2[i, data.unit2[i] * q2:(data.unit2[i] + 1) * q2] = [c[i] for c in Z2c]
        Z3[i, k_of[i] * q3:(k_of[i] + 1) * q3] = [c[i] for c in Z3c]
    return X, Z2, Z3, J2, J3


def _dense_fit(data, sigma2, tau_pi, tau_beta, reml):
    X, Z2, Z3, J2, J3 = _dense(data)
    N, p = X.shape
    T2 = np.kron(np.eye(J2), tau_pi)
    T3 = np.kron(np.eye(J3), tau_beta)
    V = sigma2 * np.eye(N) + Z2 @ T2 @ Z2.T + Z3 @ T3 @ Z3.T
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    gamma = np.linalg.solve(XVX, X.T @ Vi @ data.y)
    e = data.y - X @ gamma
    d = N * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + e @ Vi @ e
    if reml:
        d += np.linalg.slogdet(XVX)[1] - p * np.log(2 * np.pi)
    return d, gamma, V, Vi, XVX, e, X, Z2, Z3


TAUS = [
    (0.7, np.array([[1.2, 0.3], [0.3, 0.4]]), np.array([[0.5, -0.1, 0.0], [-0.1, 0.3, 0.05], [0.0, 0.05, 0.2]])),
    (1.3, np.outer([1.0, 0.5], [1.0, 0.5]), np.zeros((3, 3))),  # rank-1 τπ, τβ = 0
    (0.4, np.zeros((2, 2)), np.outer([0.3, -0.2, 0.1], [0.3, -0.2, 0.1]) + np.diag([0.0, 0.0, 0.2])),
]


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("k", range(len(TAUS)))
def test_deviance_equals_dense_brute_force(reml, k):
    data = _small()
    sigma2, tp, tb = TAUS[k]
    expected = _dense_fit(data, sigma2, tp, tb, reml)[0]
    assert deviance_nested(data, sigma2, tp, tb, reml=reml) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("reml", [False, True])
def test_gradient_matches_finite_differences(reml):
    stats = reduce_nested(_small(5))
    G2 = np.array([[0.9, 0.2], [0.2, 0.3]])
    G3 = np.array([[0.5, 0.1, 0.0], [0.1, 0.4, -0.1], [0.0, -0.1, 0.2]])
    g2, g3 = nested_solve(stats, factor(G2), factor(G3)).gradients(reml)

    def d(a, b):
        return nested_solve(stats, factor(a), factor(b)).profiled_deviance(reml)
    h = 1e-6
    for G, g, which in ((G2, g2, 0), (G3, g3, 1)):
        q = G.shape[0]
        for i in range(q):
            for j in range(i, q):
                E = np.zeros((q, q))
                E[i, j] = E[j, i] = h
                args_p = (G2 + E, G3) if which == 0 else (G2, G3 + E)
                args_m = (G2 - E, G3) if which == 0 else (G2, G3 - E)
                fd = (d(*args_p) - d(*args_m)) / (2 * h)
                analytic = g[i, j] * (1 if i == j else 2)
                assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-7 * max(1.0, np.abs(g).max()))


def test_inference_and_eb_equal_dense_formulas():
    """At the fitted (σ², τ): model-based and CR0 robust cov(γ̂), and the EB means and posterior
    variances at both levels, from the dense N×N V."""
    data = _small(7)
    fit = fit_nested(data)
    assert fit.converged, fit.message
    d, gamma, V, Vi, XVX, e, X, Z2, Z3 = _dense_fit(data, fit.sigma2, fit.tau_pi, fit.tau_beta, False)
    assert fit.deviance == pytest.approx(d, rel=1e-12)
    np.testing.assert_allclose(fit.gamma, gamma, rtol=1e-9, atol=1e-12)
    XVXi = np.linalg.inv(XVX)
    np.testing.assert_allclose(fit.cov_gamma, XVXi, rtol=1e-8, atol=1e-14)
    k_of = data.unit3[data.unit2]
    meat = np.zeros_like(XVX)
    for k in range(int(k_of.max()) + 1):
        rows = k_of == k
        s = X[rows].T @ np.linalg.inv(V[np.ix_(rows, rows)]) @ e[rows]
        meat += np.outer(s, s)
    np.testing.assert_allclose(fit.cov_gamma_robust, XVXi @ meat @ XVXi, rtol=1e-8, atol=1e-14)
    J2, J3 = data.unit3.size, int(data.unit3.max()) + 1
    q2, q3 = fit.tau_pi.shape[0], fit.tau_beta.shape[0]
    T2 = np.kron(np.eye(J2), fit.tau_pi)
    T3 = np.kron(np.eye(J3), fit.tau_beta)
    r = (T2 @ Z2.T @ Vi @ e).reshape(J2, q2)
    u = (T3 @ Z3.T @ Vi @ e).reshape(J3, q3)
    np.testing.assert_allclose(fit.eb_pi, r, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(fit.eb_beta, u, rtol=1e-7, atol=1e-10)
    Vr = T2 - T2 @ Z2.T @ Vi @ Z2 @ T2
    Vu = T3 - T3 @ Z3.T @ Vi @ Z3 @ T3
    for j in range(J2):
        np.testing.assert_allclose(fit.eb_pi_var[j], Vr[j * q2:(j + 1) * q2, j * q2:(j + 1) * q2], rtol=1e-7, atol=1e-10)
    for k in range(J3):
        np.testing.assert_allclose(fit.eb_beta_var[k], Vu[k * q3:(k + 1) * q3, k * q3:(k + 1) * q3], rtol=1e-7, atol=1e-10)


def test_fit_is_invariant_to_a_predictors_scale_and_location():
    """Scaling a level-1 predictor by c, and shifting the level-3 predictors by 1e6 (about 4e4 times
    their spread; a reparametrisation, each level-3 equation has an intercept), leave the ML
    deviance unchanged and map τ back (the standardisation works on the records, before any
    cross-product, so nothing cancels)."""
    base = _eg(EG_M2)
    c = 1e-3
    moved = NestedData(base.y, base.A * c, base.X2, base.W3 + 1e6, base.unit2, base.unit3, base.layout)
    f0, f1 = fit_nested(base), fit_nested(moved)
    assert f0.converged and f1.converged, f1.message
    assert f1.deviance == pytest.approx(f0.deviance, rel=1e-10)
    D = np.diag([1.0, c])  # τ of a column scaled by c is scaled by 1/c²
    top = np.abs(np.diag(f0.tau_pi)).max()
    np.testing.assert_allclose(D @ f1.tau_pi @ D / top, f0.tau_pi / top, atol=1e-6)
    np.testing.assert_allclose(D @ f1.tau_beta @ D / top, f0.tau_beta / top, atol=1e-6)
    # the slope on LOWINC is unchanged by the shift (γ001, γ101 in the user's units, YEAR scaled)
    assert f1.gamma[1] == pytest.approx(f0.gamma[1], rel=1e-6)
    assert f1.gamma[4] * c == pytest.approx(f0.gamma[4], rel=1e-6)


# ---------------------------------------------------------------- layouts with one level not random

def _dense_optimum(data, reml, q2, q3, starts=3):
    """An independent optimum: the dense deviance minimised by L-BFGS-B with numerical gradients
    over (log σ², Cholesky factors of τπ, τβ) from several starts."""
    from scipy import optimize
    i2, i3 = np.tril_indices(q2), np.tril_indices(q3)
    n2 = len(i2[0])

    def unpack(t):
        L2, L3 = np.zeros((q2, q2)), np.zeros((q3, q3))
        L2[i2], L3[i3] = t[1:1 + n2], t[1 + n2:]
        return np.exp(t[0]), L2 @ L2.T, L3 @ L3.T
    best = np.inf
    rng = np.random.default_rng(1)
    for _ in range(starts):
        t0 = np.concatenate([[0.0], np.eye(q2)[i2] * rng.uniform(0.3, 1.5), np.eye(q3)[i3] * rng.uniform(0.3, 1.5)])
        res = optimize.minimize(lambda t: _dense_fit(data, *unpack(t), reml)[0], t0, method="BFGS",
                                options={"gtol": 1e-9, "maxiter": 2000})
        best = min(best, res.fun)
    return best


@pytest.mark.parametrize("which", ["level2_only", "level3_only"])
def test_layouts_random_at_one_level_only(which):
    base = _small(11)
    if which == "level2_only":  # no β random: a two-level model of level-2 units
        pis = (Pi(None, (Beta(None, (None, 0), False),), True), Pi(0, (Beta(None, (None,), False),), True))
        q2, q3 = 2, 0
    else:  # no π random: a two-level model of level-3 units
        pis = (Pi(None, (Beta(None, (None, 0), True), Beta(0, (None,), False)), False),
               Pi(0, (Beta(None, (None,), True),), False))
        q2, q3 = 0, 2
    data = NestedData(base.y, base.A, base.X2, base.W3, base.unit2, base.unit3, NestedLayout(pis))
    fit = fit_nested(data)
    assert fit.converged, fit.message
    assert fit.tau_pi.shape == (q2, q2) and fit.tau_beta.shape == (q3, q3)
    assert fit.deviance == pytest.approx(_dense_fit(data, fit.sigma2, fit.tau_pi, fit.tau_beta, False)[0], rel=1e-12)
    assert fit.deviance <= _dense_optimum(data, False, q2, q3) + 1e-7


# ---------------------------------------------------------------- χ² tests and reliabilities, record by record

def test_chi_square_and_reliability_equal_a_record_by_record_computation():
    """The documented formulas (nested_fit.fit_nested), computed here directly from the records."""
    from scipy import stats as sps
    data = _small(13)
    fit = fit_nested(data)
    assert fit.converged
    pis = data.layout.pis
    J2, J3 = data.unit3.size, int(data.unit3.max()) + 1
    N = data.y.size
    a = lambda c: np.ones(N) if c is None else data.A[:, c]  # noqa: E731
    x2 = lambda c, j: 1.0 if c is None else data.X2[j, c]  # noqa: E731
    w3 = lambda s, k: 1.0 if s is None else data.W3[k, s]  # noqa: E731
    # β fitted (Σγ W) and β* (+ EB u) per level-3 unit, in layout order
    g, rb = 0, 0
    bfit, bstar = {}, {}
    for ip, pi in enumerate(pis):
        for iq, b in enumerate(pi.betas):
            f = np.array([sum(fit.gamma[g + i] * w3(s, k) for i, s in enumerate(b.level3_cols)) for k in range(J3)])
            g += len(b.level3_cols)
            bfit[ip, iq] = f
            bstar[ip, iq] = f + (fit.eb_beta[:, rb] if b.random else 0.0)
            rb += b.random
    rand = [ip for ip, pi in enumerate(pis) if pi.random]
    chi = np.zeros(len(rand))
    rel = np.zeros(len(rand))
    n_ok = 0
    for j in range(J2):
        rows = data.unit2 == j
        k = data.unit3[j]
        pistar = [sum(bstar[ip, iq][k] * x2(b.level2_col, j) for iq, b in enumerate(pi.betas)) for ip, pi in enumerate(pis)]
        Z = np.column_stack([a(pis[ip].level1_col)[rows] for ip in rand])
        yt = data.y[rows] - sum(a(pi.level1_col)[rows] * pistar[ip] for ip, pi in enumerate(pis) if not pi.random)
        if rows.sum() <= len(rand) or np.linalg.matrix_rank(Z) < len(rand):
            continue
        n_ok += 1
        ZZi = np.linalg.inv(Z.T @ Z)
        bhat = ZZi @ Z.T @ yt
        V = fit.sigma2 * np.diag(ZZi)
        chi += (bhat - np.array([pistar[ip] for ip in rand])) ** 2 / V
        rel += np.diag(fit.tau_pi) / (np.diag(fit.tau_pi) + V)
    for i, ip in enumerate(rand):
        df = n_ok - len(pis[ip].betas)
        assert fit.chi2_pi[i]["n_units"] == n_ok and fit.chi2_pi[i]["df"] == df
        assert fit.chi2_pi[i]["chi2"] == pytest.approx(chi[i], rel=1e-9)
        assert fit.chi2_pi[i]["p"] == pytest.approx(sps.chi2.sf(chi[i], df), rel=1e-9)
    np.testing.assert_allclose(fit.reliability_pi, rel / n_ok, rtol=1e-9)
    # level 3: GLS of the random β's from each level-3 unit given τπ, dense
    X, Z2, Z3, _, _ = _dense(data)
    fixed_cols, g = [], 0
    for pi in pis:
        for b in pi.betas:
            if not b.random:
                fixed_cols += list(range(g, g + len(b.level3_cols)))
            g += len(b.level3_cols)
    yt = data.y - X[:, fixed_cols] @ fit.gamma[fixed_cols]
    V2 = fit.sigma2 * np.eye(N) + Z2 @ np.kron(np.eye(J2), fit.tau_pi) @ Z2.T
    q3 = fit.tau_beta.shape[0]
    chi3, rel3, n_ok3 = np.zeros(q3), np.zeros(q3), 0
    k_of = data.unit3[data.unit2]
    for k in range(J3):
        rows = k_of == k
        Zk = Z3[np.ix_(rows, range(k * q3, (k + 1) * q3))]
        Vi = np.linalg.inv(V2[np.ix_(rows, rows)])
        S = Zk.T @ Vi @ Zk
        if np.linalg.matrix_rank(S) < q3:  # e.g. one level-2 unit: X_q is constant within k
            continue
        n_ok3 += 1
        Si = np.linalg.inv(S)
        bhat = Si @ Zk.T @ Vi @ yt[rows]
        fitted = np.array([bfit[ip, iq][k] for ip, pi in enumerate(pis) for iq, b in enumerate(pi.betas) if b.random])
        chi3 += (bhat - fitted) ** 2 / np.diag(Si)
        rel3 += np.diag(fit.tau_beta) / (np.diag(fit.tau_beta) + np.diag(Si))
    for i in range(q3):
        assert fit.chi2_beta[i]["chi2"] == pytest.approx(chi3[i], rel=1e-8)
        assert fit.chi2_beta[i]["n_units"] == n_ok3 < J3
    np.testing.assert_allclose(fit.reliability_beta, rel3 / n_ok3, rtol=1e-8)


def test_random_coefficients_without_fixed_parts_and_bad_input():
    """β_pq = u_pq (no γ) and π_p = r_p (no β) are models of their own (as lme4's
    (0 + x | g) terms without a fixed x); arrays that break the contract are refused by name."""
    base = _small(17, min_records=4)
    pis = (Pi(None, (Beta(None, (None,), True),), True), Pi(0, (Beta(None, (), True),), True), Pi(1, (), True))
    data = NestedData(base.y, base.A, base.X2, base.W3, base.unit2, base.unit3, NestedLayout(pis))
    fit = fit_nested(data)
    assert fit.gamma.shape == (1,) and fit.tau_pi.shape == (3, 3) and fit.tau_beta.shape == (2, 2)
    assert fit.deviance == pytest.approx(_dense_fit(data, fit.sigma2, fit.tau_pi, fit.tau_beta, False)[0], rel=1e-12)
    assert fit.converged, fit.message
    ols = NestedLayout((Pi(None, (Beta(None, (None, 0), False),), False), Pi(0, (Beta(0, (None,), False),), False)))
    fit = fit_nested(NestedData(base.y, base.A, base.X2, base.W3, base.unit2, base.unit3, ols))
    X = _dense(NestedData(base.y, base.A, base.X2, base.W3, base.unit2, base.unit3, ols))[0]
    rss = np.sum((base.y - X @ np.linalg.lstsq(X, base.y, rcond=None)[0]) ** 2)
    n = base.y.size
    assert fit.converged and fit.deviance == pytest.approx(n * (1 + np.log(2 * np.pi * rss / n)), rel=1e-12)
    bad = NestedData(base.y, base.A, base.X2, base.W3, base.unit2[::-1].copy(), base.unit3, base.layout)
    with pytest.raises(ValueError, match="unit2"):
        fit_nested(bad)
    bad = NestedData(base.y, base.A, base.X2, base.W3, base.unit2, base.unit3,
                     NestedLayout((Pi(None, (Beta(None, (None,), True),), True), Pi(0, (Beta(None, (), False),), True))))
    with pytest.raises(ValueError, match="neither fixed nor random"):
        fit_nested(bad)


def test_models_that_cannot_be_estimated_are_refused():
    from hlmcli.errors import ModelError
    base = _small(19)
    one3 = NestedData(base.y, base.A, base.X2, base.W3[:1], base.unit2, np.zeros_like(base.unit3), base.layout)
    with pytest.raises(ModelError, match="1 level-3 unit"):
        fit_nested(one3)
    first = base.unit2 != np.r_[-1, base.unit2[:-1]]  # one record per level-2 unit
    one_each = NestedData(base.y[first], base.A[first], base.X2, base.W3, base.unit2[first], base.unit3, base.layout)
    with pytest.raises(ModelError, match="cannot be separated"):
        fit_nested(one_each)
    # the same fixed column twice (a level-1 predictor that is 2 × another)
    twice = NestedData(base.y, np.column_stack([base.A[:, 0], 2 * base.A[:, 0]]), base.X2, base.W3, base.unit2,
                       base.unit3, NestedLayout((Pi(None, (RR,), True), Pi(0, (Beta(None, (None,), False),), False),
                                                 Pi(1, (Beta(None, (None,), False),), False))))
    with pytest.raises(ModelError, match="linearly dependent"):
        fit_nested(twice)
