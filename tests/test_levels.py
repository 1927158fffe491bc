"""The nested engine at four levels (hlmcli/engine/nested.py, nested_fit.py) against the dense N×N
likelihood: deviance (ML and REML), the analytic gradient in every τ block, the fit's γ, its
model-based and robust covariances, and the EB means and posterior variances at every level.
Three-level data written in the K-level form must give the three-level fit exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hlmcli.engine.nested import (Coefficient as C, LevelsData, as_levels, deviance_levels,
                           levels_solve, reduce_levels)
from hlmcli.engine.nested_fit import fit_nested
from hlmcli.engine.unitsolve import factor


def _four_level(seed=11, records=(2, 5), units2=(1, 4), units3=(1, 3), J4=4):
    rng = np.random.default_rng(seed)
    per4 = rng.integers(*units3, size=J4)
    unit4 = np.repeat(np.arange(J4), per4)
    J3 = unit4.size
    per3 = rng.integers(*units2, size=J3)
    unit3 = np.repeat(np.arange(J3), per3)
    J2 = unit3.size
    n2 = rng.integers(*records, size=J2)
    unit2 = np.repeat(np.arange(J2), n2)
    N = unit2.size
    A = np.column_stack([rng.normal(size=N) + 1.0, rng.integers(0, 2, size=N).astype(float)])
    X2 = rng.normal(size=(J2, 1))
    X3 = rng.normal(size=(J3, 1))
    X4 = rng.normal(size=(J4, 2))
    y = rng.normal(size=N) + 0.5 * A[:, 0] + rng.normal(size=J4)[unit4[unit3[unit2]]]
    # π0 = β00 + β01 X2 + r0; β00 = γ000 + γ001 X3 + u00; γ000 = δ0000 + δ0001 W + v000; γ001 = δ0010
    # β01 = γ010 (fixed at 3); γ010 = δ0100
    # π1 (slope on A0) = β10 + r1; β10 = γ100 + u10; γ100 = δ1000 + v100
    # π2 (slope on A1) = β20; β20 = γ200; γ200 = δ2000 + δ2001 W2 (fixed at every level)
    layout = (
        C(None, (C(None, (C(None, (C(None), C(0)), True), C(0, (C(None),), False)), True),
                 C(0, (C(None, (C(None),), False),), False)), True),
        C(0, (C(None, (C(None, (C(None),), True),), True),), True),
        C(1, (C(None, (C(None, (C(None), C(1)), False),), False),), False),
    )
    return LevelsData(y, (A, X2, X3, X4), (unit2, unit3, unit4), layout)


def _paths(data):
    """The model's columns per record, from the layout by hand: random columns per level and fixed."""
    K = data.n_levels
    N = data.y.size
    rec = [np.arange(N), data.parents[0]]
    for i in range(1, K - 1):
        rec.append(data.parents[i][rec[-1]])
    Z = [[] for _ in range(K - 1)]
    X = []

    def value(level, col):
        if col is None:
            return np.ones(N)
        return data.predictors[level - 1][rec[level - 1], col]

    def walk(node, depth, prod):
        prod = prod * value(depth, node.col)
        if depth == K:
            X.append(prod)
            return
        if node.random:
            Z[depth - 1].append(prod)
        for t in node.terms:
            walk(t, depth + 1, prod)

    for node in data.layout:
        walk(node, 1, np.ones(N))
    return np.column_stack(X), [np.column_stack(z) if z else np.zeros((N, 0)) for z in Z], rec


def _dense(data, sigma2, taus, reml):
    X, Zc, rec = _paths(data)
    N, p = X.shape
    V = sigma2 * np.eye(N)
    Zs = []
    for level, (Z, tau) in enumerate(zip(Zc, taus), start=2):
        units = rec[level - 1]
        J = int(units.max()) + 1
        q = Z.shape[1]
        big = np.zeros((N, J * q))
        for i in range(N):
            big[i, units[i] * q:(units[i] + 1) * q] = Z[i]
        V += big @ np.kron(np.eye(J), tau) @ big.T
        Zs.append((big, J, q))
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    gamma = np.linalg.solve(XVX, X.T @ Vi @ data.y)
    e = data.y - X @ gamma
    d = N * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + e @ Vi @ e
    if reml:
        d += np.linalg.slogdet(XVX)[1] - p * np.log(2 * np.pi)
    return d, gamma, V, Vi, XVX, e, X, Zs, rec


TAUS4 = [
    (0.8, (np.array([[1.1, 0.2], [0.2, 0.5]]), np.array([[0.6, -0.1], [-0.1, 0.3]]),
           np.array([[0.4, 0.05], [0.05, 0.2]]))),
    (1.2, (np.outer([1.0, 0.4], [1.0, 0.4]), np.zeros((2, 2)), np.diag([0.3, 0.0]))),  # rank 1, 0, 1
]


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("k", range(len(TAUS4)))
def test_four_level_deviance_equals_dense(reml, k):
    data = _four_level()
    sigma2, taus = TAUS4[k]
    assert deviance_levels(data, sigma2, taus, reml=reml) == pytest.approx(_dense(data, sigma2, taus, reml)[0],
                                                                           rel=1e-12)


@pytest.mark.parametrize("reml", [False, True])
def test_four_level_gradient_in_every_block_matches_finite_differences(reml):
    stats = reduce_levels(_four_level(5))
    Gs = [np.array([[0.9, 0.2], [0.2, 0.3]]), np.array([[0.5, 0.1], [0.1, 0.4]]), np.array([[0.7, -0.2], [-0.2, 0.3]])]
    grads = levels_solve(stats, tuple(factor(G) for G in Gs)).gradients(reml)
    assert len(grads) == 3

    def d(gs):
        return levels_solve(stats, tuple(factor(G) for G in gs)).profiled_deviance(reml)
    h = 1e-6
    for b, (G, g) in enumerate(zip(Gs, grads)):
        q = G.shape[0]
        for i in range(q):
            for j in range(i, q):
                E = np.zeros((q, q))
                E[i, j] = E[j, i] = h
                plus = [G_ + (E if c == b else 0) for c, G_ in enumerate(Gs)]
                minus = [G_ - (E if c == b else 0) for c, G_ in enumerate(Gs)]
                fd = (d(plus) - d(minus)) / (2 * h)
                analytic = g[i, j] * (1 if i == j else 2)
                assert fd == pytest.approx(analytic, rel=1e-6, abs=1e-7 * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("reml", [False, True])
def test_four_level_fit_inference_and_eb_equal_dense_formulas(reml):
    data = _four_level(7, records=(3, 7), J4=6)
    fit = fit_nested(data, reml=reml)
    assert fit.converged, fit.message
    assert fit.n_levels == 4 and len(fit.taus) == 3
    d, gamma, V, Vi, XVX, e, X, Zs, rec = _dense(data, fit.sigma2, fit.taus, reml)
    assert fit.deviance == pytest.approx(d, rel=1e-12)
    np.testing.assert_allclose(fit.gamma, gamma, rtol=1e-9, atol=1e-12)
    XVXi = np.linalg.inv(XVX)
    np.testing.assert_allclose(fit.cov_gamma, XVXi, rtol=1e-8, atol=1e-14)
    top = rec[3]
    meat = np.zeros_like(XVX)
    for k in range(int(top.max()) + 1):
        rows = top == k
        s = X[rows].T @ np.linalg.inv(V[np.ix_(rows, rows)]) @ e[rows]
        meat += np.outer(s, s)
    np.testing.assert_allclose(fit.cov_gamma_robust, XVXi @ meat @ XVXi, rtol=1e-8, atol=1e-14)
    for level, ((big, J, q), tau) in enumerate(zip(Zs, fit.taus), start=2):
        T = np.kron(np.eye(J), tau)
        mean = (T @ big.T @ Vi @ e).reshape(J, q)
        var = T - T @ big.T @ Vi @ big @ T
        np.testing.assert_allclose(fit.eb[level - 2], mean, rtol=1e-7, atol=1e-10)
        for j in range(J):
            np.testing.assert_allclose(fit.eb_var[level - 2][j], var[j * q:(j + 1) * q, j * q:(j + 1) * q],
                                       rtol=1e-7, atol=1e-10)


def test_four_level_optimum_is_the_dense_optimum():
    """No point of a dense search over (σ², τ2, τ3, τ4) has a lower ML deviance than the certified fit."""
    from scipy import optimize

    data = _four_level(3, records=(3, 6), J4=5)
    fit = fit_nested(data)
    assert fit.converged, fit.message

    def unpack(t):
        out = []
        k = 1
        for _ in range(3):
            L = np.array([[t[k], 0.0], [t[k + 1], t[k + 2]]])
            out.append(L @ L.T)
            k += 3
        return np.exp(t[0]), out

    def f(t):
        s2, taus = unpack(t)
        return _dense(data, s2, taus, False)[0]
    t0 = [np.log(fit.sigma2)]
    for tau in fit.taus:
        L = np.linalg.cholesky(tau + 1e-9 * np.eye(2))
        t0 += [L[0, 0], L[1, 0], L[1, 1]]
    best = optimize.minimize(f, np.array(t0), method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000}).fun
    assert fit.deviance <= best + 1e-8 * abs(best)
    assert fit.deviance == pytest.approx(best, rel=1e-7)


def test_three_level_data_in_the_k_level_form_fit_the_same():
    from test_nested import _small

    data = _small(7)
    a, b = fit_nested(data), fit_nested(as_levels(data))
    assert a.deviance == b.deviance
    np.testing.assert_array_equal(a.gamma, b.gamma)
    np.testing.assert_array_equal(a.tau_beta, b.taus[1])
    assert a.chi2_pi == b.chi2[0] and a.chi2_beta == b.chi2[1]


# ---------------------------------------------------------------- four levels against lme4 and nlme

DATA4 = Path(__file__).parent / "data" / "four_level"


def _read4(name, ids, l1_cols, l2_cols, l3_cols, l4_cols):
    """The four files of a four-level data set as LevelsData arrays, records sorted by unit."""
    l1, l2, l3, l4 = (pd.read_csv(DATA4 / f"{name}_l{k}.csv") for k in (1, 2, 3, 4))
    id2, id3, id4 = ids
    l3 = l3.merge(l4[[id4]].reset_index().rename(columns={"index": "k4"}), on=id4).sort_values(["k4", id3])
    l3["k3"] = np.arange(len(l3))
    l2 = l2.merge(l3[[id3, "k3"]], on=id3).sort_values(["k3", id2])
    l2["k2"] = np.arange(len(l2))
    l1 = l1.merge(l2[[id2, "k2"]], on=id2, sort=False)
    l1 = l1.iloc[np.argsort(l1["k2"].to_numpy(), kind="stable")]
    l4 = l4.iloc[np.sort(l3["k4"].unique())]
    preds = (l1[l1_cols].to_numpy(float), l2[l2_cols].to_numpy(float), l3[l3_cols].to_numpy(float),
             l4[l4_cols].to_numpy(float))
    parents = (l1["k2"].to_numpy(), l2["k3"].to_numpy(), l3["k4"].to_numpy())
    return l1, preds, parents


def schools():
    l1, preds, parents = _read4("schools", ("STUDENTID", "CLASSID", "SCHOOLID"), ["TIME"], ["SES"], ["CSIZE"],
                                ["SECTOR"])
    # SCORE = p0 + p1*TIME; p0 = b00 + b01*SES + r0; p1 = b10 + r1; b00 = g000 + g001*CSIZE + u00;
    # g000 = d0000 + d0001*SECTOR + v000; the rest fixed
    layout = (C(None, (C(None, (C(None, (C(None), C(0)), True), C(0, (C(None),))), True),
                       C(0, (C(None, (C(None),)),))), True),
              C(0, (C(None, (C(None, (C(None),)),)),), True))
    return LevelsData(l1["SCORE"].to_numpy(float), preds, parents, layout), ["d0000", "d0001", "d0010", "d0100",
                                                                            "d1000"]


def hospitals():
    l1, preds, parents = _read4("hospitals", ("PATIENTID", "WARDID", "HOSPID"), ["DOSE"], ["AGE"], ["STAFF"],
                                ["TEACHING"])
    # Y = p0 + p1*DOSE; p0 = b00 + b01*AGE + r0; p1 = b10; b00 = g000 + g001*STAFF + u00; b01 = g010;
    # b10 = g100 + u10; g000 = d0000 + d0001*TEACHING + v000; g100 = d1000 + d1001*TEACHING + v100
    layout = (C(None, (C(None, (C(None, (C(None), C(0)), True), C(0, (C(None),))), True),
                       C(0, (C(None, (C(None),)),))), True),
              C(0, (C(None, (C(None, (C(None), C(0)), True),), True),)))
    return LevelsData(l1["Y"].to_numpy(float), preds, parents, layout), ["d0000", "d0001", "d0010", "d0100",
                                                                        "d1000", "d1001"]


@pytest.mark.parametrize("method", ["ml", "reml"])
@pytest.mark.parametrize("name", ["schools", "hospitals"])
def test_four_levels_match_lmer(name, method):
    data, labels = {"schools": schools, "hospitals": hospitals}[name]()
    ref = json.loads((DATA4 / f"{name}.json").read_text())[method]
    fit = fit_nested(data, reml=method == "reml")
    assert fit.converged, fit.message
    # lme4's polished optimum, and nlme's as a second tool
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    assert fit.deviance == pytest.approx(ref["nlme"]["minus2loglik"], rel=1e-8)
    assert fit.deviance <= ref["deviance"] + 1e-9 * abs(ref["deviance"])
    est = np.array([ref["fixed"][k]["est"] for k in labels])
    se = np.array([ref["fixed"][k]["se"] for k in labels])
    np.testing.assert_allclose(fit.gamma, est, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(fit.cov_gamma)), se, rtol=1e-5)
    assert fit.sigma2 == pytest.approx(ref["sigma2"], rel=1e-6)
    for tau, key in zip(fit.taus, ("tau_pi", "tau_beta", "tau_gamma")):
        np.testing.assert_allclose(tau, np.array(ref[key]), rtol=1e-5, atol=1e-6 * np.abs(ref[key]).max())


def test_random_effects_are_named_r_u_v_by_level():
    """The boundary notes name random effects as the equations do: r at level 2, u at 3, v at 4."""
    from test_nested import _small

    from hlmcli.engine.nested_fit import random_labels

    assert random_labels(_four_level().layout, 4) == (["r0", "r1"], ["u00", "u10"], ["v000", "v100"])
    assert random_labels(as_levels(_small()).layout, 3) == (["r0", "r1"], ["u00", "u10", "u11"])


# ---------------------------------------------------------------- random four-level layouts, dense optimum

def _random_four_level(seed):
    rng = np.random.default_rng(seed)
    data = _four_level(seed, records=(1, 6), units2=(1, 4), units3=(1, 3), J4=int(rng.integers(3, 6)))
    pick = lambda p: bool(rng.random() < p)  # noqa: E731
    # every level has a random intercept; slopes and their random effects drawn at random
    slope_random = [pick(0.5) for _ in range(3)]
    layout = (
        C(None, (C(None, (C(None, (C(None), C(0)) if pick(0.5) else (C(None),), True),
                          C(0, (C(None),), slope_random[2])), True),
                 C(0, (C(None, (C(None),)),), slope_random[1])), True),
        C(0, (C(None, (C(None, (C(None),), slope_random[0]),), True),), pick(0.7)),
    )
    return LevelsData(data.y, data.predictors, data.parents, layout)


def _dense_best(data, fit, reml, rng, starts=3):
    """An independent optimum: the dense deviance over (log σ², Cholesky factors of each τ) by
    Nelder–Mead from hlmcli's answer and from random starts."""
    from scipy import optimize

    qs = [t.shape[0] for t in fit.taus]
    tril = [np.tril_indices(q) for q in qs]

    def unpack(t):
        taus, k = [], 1
        for q, ix in zip(qs, tril):
            L = np.zeros((q, q))
            L[ix] = t[k:k + len(ix[0])]
            k += len(ix[0])
            taus.append(L @ L.T)
        return np.exp(t[0]), taus

    def f(t):
        s2, taus = unpack(t)
        return _dense(data, s2, taus, reml)[0]
    t0 = [np.log(fit.sigma2)]
    for tau in fit.taus:
        w, V = np.linalg.eigh(tau)
        L = np.linalg.cholesky(V @ np.diag(np.clip(w, 1e-8 * max(w.max(), 1e-12), None)) @ V.T)
        t0 += list(L[np.tril_indices(L.shape[0])])
    inits = [np.array(t0)] + [np.concatenate([[np.log(fit.sigma2)], rng.normal(size=len(t0) - 1)])
                              for _ in range(starts)]
    opts = {"xatol": 1e-10, "fatol": 1e-12, "maxiter": 40000, "maxfev": 40000}
    return min(optimize.minimize(f, x, method="Nelder-Mead", options=opts).fun for x in inits)


def _check_random_layout(seed):
    data = _random_four_level(seed)
    reml = bool(seed % 2)
    fit = fit_nested(data, reml=reml)
    assert fit.converged, fit.message
    best = _dense_best(data, fit, reml, np.random.default_rng(seed))
    # never worse than the independent optimum; a lower dense value would be a false certificate
    assert fit.deviance <= best + 1e-7 * abs(best), (fit.deviance, best)
    assert fit.deviance == pytest.approx(_dense(data, fit.sigma2, fit.taus, reml)[0], rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(9))  # the fast test of this: test_four_level_optimum_is_the_dense_optimum
def test_random_four_level_layouts_are_at_the_dense_optimum(seed):
    _check_random_layout(seed)


# ---------------------------------------------------------------- the four-level language: only one-line errors

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hlmcli.language.equations_levels import Variables, build_levels_spec  # noqa: E402
from hlmcli.errors import HlmError  # noqa: E402

FUZZ4 = settings(max_examples=150, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True)
VARS4 = Variables((("SCORE", "TIME"), ("SES",), ("CSIZE",), ("SECTOR",)))
MODEL4 = [["SCORE = p0 + p1*group(TIME) + e"], ["p0 = b00 + b01*grand(SES) + b02*mean(TIME) + r0", "p1 = b10 + r1"],
          ["b00 = g000 + g001*CSIZE + g002*mean(SES) + u00"], ["γ000 = δ0000 + δ0001*(SECTORl) + δ0002*mean(CSIZE) + v000l"]]
ALPHABET4 = "pbgdeuvrPBGDUV0123456789*+-=()., _ijklSCORETIMESCSIZEmeanπβγδ•×−\t\n\x00"


def _parse_only_hlm_errors(equations):
    try:
        build_levels_spec(equations, VARS4)
    except HlmError:
        pass


def test_the_four_level_model_parses():
    spec = build_levels_spec(MODEL4, VARS4)
    assert [f.idx for f in spec.fixed()] == [(0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 0, 2), (0, 0, 1, 0), (0, 0, 2, 0),
                                            (0, 1, 0, 0), (0, 2, 0, 0), (1, 0, 0, 0)]


@FUZZ4
@given(st.lists(st.lists(st.text(ALPHABET4, max_size=60), max_size=2), min_size=4, max_size=4))
def test_random_four_level_equations_raise_only_hlm_errors(equations):
    _parse_only_hlm_errors(equations)


@FUZZ4
@given(st.data())
def test_mutated_four_level_equations_raise_only_hlm_errors(data):
    level = data.draw(st.integers(0, 3))
    k = data.draw(st.integers(0, len(MODEL4[level]) - 1))
    text = MODEL4[level][k]
    i = data.draw(st.integers(0, len(text)))
    j = data.draw(st.integers(i, min(len(text), i + 4)))
    new = text[:i] + data.draw(st.text(ALPHABET4, max_size=4)) + text[j:]
    equations = [list(e) for e in MODEL4]
    equations[level][k] = new
    _parse_only_hlm_errors(equations)
