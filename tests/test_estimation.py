"""The engine against the exact optimum of the reference cases, HLM 7's deviances, and simulated data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlmcli.io.archive import BuildOptions, build_archive
from hlmcli.data.design import variables_of
from hlmcli.language.equations import RunOptions, build_spec
from hlmcli.engine.estimation import deviance_at
from hlmcli.analysis.pipeline import analyse
from hlmcli.io.readers import Table

from conftest import HSB_MODELS, POPULAR_MODEL, REFERENCE, rel

CASES = dict(HSB_MODELS, popular2_ml=POPULAR_MODEL)


def fit_case(name, hsb_loaded, popular_loaded):
    archive = popular_loaded if name.startswith("popular") else hsb_loaded
    method = REFERENCE[name]["model"]["method"]
    spec = build_spec(*CASES[name], variables_of(archive), RunOptions(method=method))
    return analyse(spec, archive)


@pytest.mark.parametrize("name", list(CASES))
def test_reaches_the_exact_optimum(name, hsb_loaded, popular_loaded):
    a = fit_case(name, hsb_loaded, popular_loaded)
    ref = REFERENCE[name]["optimum"]
    r = a.result
    assert r.converged
    assert rel(r.deviance, ref["deviance"]) < 1e-6
    assert r.n_params == ref["n_params"]
    assert rel(r.sigma2, ref["sigma2"]) < 1e-4
    tau = np.array(ref["tau"])
    assert np.all(np.abs(r.tau - tau) <= 1e-4 * np.abs(tau))
    for k, f in enumerate(ref["fixed"]):
        assert rel(a.fixed.gamma[k], f["estimate"]) < 1e-5


@pytest.mark.parametrize("name", [n for n in CASES if "deviance" in REFERENCE[n]["hlm7"]])
def test_deviance_not_worse_than_hlm7(name, hsb_loaded, popular_loaded):
    """Ours must not exceed HLM 7's printed deviance. For hsb_m1 HLM prints 47116.793475, 8.5e-6 *below*
    the independently computed optimum (47116.7934835, which agrees with lme4): HLM's own evaluation
    carries ~2e-10 relative floating-point error. So the bound allows 1e-9 relative, far below any
    difference an early stop makes (popular2: HLM is 5.4e-5 above the optimum)."""
    a = fit_case(name, hsb_loaded, popular_loaded)
    hlm = REFERENCE[name]["hlm7"]["deviance"]
    assert a.result.deviance <= hlm * (1 + 1e-9)
    assert a.result.deviance <= REFERENCE[name]["optimum"]["deviance"] * (1 + 1e-12)


def test_hlm7_estimates_sit_just_off_the_optimum(hsb_loaded):
    """HLM 7's printed hsb_m4 τ11 (0.30405) is 14% from the optimum's 0.26570, yet the REML deviance at
    HLM 7's printed (σ², τ00, τ11), with τ01 at its best value, exceeds the optimum by less than 1e-6
    relative: the likelihood is flat there. HLM 7 stops its EM iterations when the likelihood changes
    by less than stopval = 1e-6, so a gap of that order, not a formula difference, explains it."""
    from scipy.optimize import minimize_scalar

    a = fit_case("hsb_m4", hsb_loaded, None)
    h = REFERENCE["hsb_m4"]["hlm7"]
    t00, t11 = h["varcomp"][0]["variance"], h["varcomp"][1]["variance"]
    bound = np.sqrt(t00 * t11) * 0.999

    def dev(t01):
        return deviance_at(h["sigma2"], np.array([[t00, t01], [t01, t11]]), a.stats, "REML")

    best = minimize_scalar(dev, bounds=(-bound, bound), method="bounded").fun
    assert 0 <= best - a.result.deviance < 1e-6 * a.result.deviance


def test_boundary_fit_is_reported():
    """Every unit's OLS slope is exactly 0.5 (noise orthogonal to x within units): the slope variance
    is zero at the optimum, and the fit must say so and still converge."""
    rng = np.random.default_rng(3)
    x = np.tile([-3.0, -1.0, 1.0, 3.0, -3.0, -1.0, 1.0, 3.0], 40)
    noise = np.tile([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0], 40)
    unit = np.repeat(np.arange(40), 8)
    y = rng.normal(scale=2, size=40)[unit] + 0.5 * x + rng.normal(scale=2, size=40)[unit] * noise
    a = _archive(pd.DataFrame({"id": unit, "x": x, "y": y}), pd.DataFrame({"id": np.arange(40)}))
    spec = build_spec("y = b0 + b1*x + r", ["b1 = g10 + u1"], variables_of(a))
    result = analyse(spec, a).result
    assert result.converged
    assert result.tau[1, 1] < 1e-10 * result.tau[0, 0]
    assert "boundary fit: the variance of u1 is estimated as zero" in result.boundary


# ---------------------------------------------------------------- simulated data

def _archive(level1: pd.DataFrame, level2: pd.DataFrame):
    t1 = Table(Path("l1.csv"), "csv", level1)
    t2 = Table(Path("l2.csv"), "csv", level2)
    return build_archive(t1, t2, BuildOptions(id1="id", id2="id"))


def simulate(seed, J=150, n=25, g=(10.0, 2.0, 1.5, -1.0), tau=((4.0, 0.5), (0.5, 1.0)), sigma2=9.0):
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(J), n)
    w = rng.binomial(1, 0.5, size=J).astype(float)
    x = rng.normal(size=J * n) + rng.normal(size=J)[unit]
    u = rng.multivariate_normal([0, 0], np.array(tau), size=J)
    b0 = g[0] + g[1] * w + u[:, 0]
    b1 = g[2] + g[3] * w + u[:, 1]
    y = b0[unit] + b1[unit] * x + rng.normal(scale=np.sqrt(sigma2), size=J * n)
    return pd.DataFrame({"id": unit, "x": x, "y": y}), pd.DataFrame({"id": np.arange(J), "w": w})


MODEL = ("y = b0 + b1*x + r", ["b0 = g00 + g01*w + u0", "b1 = g10 + g11*w + u1"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000))
def test_recovers_the_simulated_parameters(seed):
    l1, l2 = simulate(seed)
    a = _archive(l1, l2)
    an = analyse(build_spec(*MODEL, variables_of(a)), a)
    truth = np.array([10.0, 2.0, 1.5, -1.0])
    z = (an.fixed.gamma - truth) / an.fixed.se
    assert np.all(np.abs(z) < 4.5)
    assert abs(an.result.sigma2 - 9.0) < 4.5 * 9.0 * np.sqrt(2 / (150 * 24))
    assert 1.5 < an.result.tau[0, 0] < 8.0 and 0.3 < an.result.tau[1, 1] < 2.5


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.floats(-1e4, 1e4))
def test_invariant_to_row_order_id_names_and_outcome_shift(seed, shift):
    l1, l2 = simulate(seed, J=40, n=12)
    base = analyse(build_spec(*MODEL, variables_of(_archive(l1, l2))), _archive(l1, l2))
    shuffled = l1.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    renamed1 = shuffled.assign(id=shuffled["id"].map(lambda i: f"school-{i:04d}"))
    renamed2 = l2.assign(id=l2["id"].map(lambda i: f"school-{i:04d}")).sample(frac=1.0, random_state=seed + 1)
    shifted = renamed1.assign(y=renamed1["y"] + shift)
    other = analyse(build_spec(*MODEL, variables_of(_archive(shifted, renamed2))), _archive(shifted, renamed2))
    expected = base.fixed.gamma.copy()
    expected[0] += shift
    assert np.allclose(other.fixed.gamma, expected, rtol=1e-8, atol=1e-8 * max(1.0, abs(shift)))
    assert np.isclose(other.result.sigma2, base.result.sigma2, rtol=1e-8)
    assert np.allclose(other.result.tau, base.result.tau, rtol=1e-8, atol=1e-10)
    assert np.isclose(other.result.deviance, base.result.deviance, rtol=1e-10)


def test_large_outcome_mean_does_not_cancel():
    """y around 1e8: a naive y'y - ... RSS would lose every digit; centering y first keeps them."""
    l1, l2 = simulate(1, J=50, n=10)
    base = _archive(l1, l2)
    big = _archive(l1.assign(y=l1["y"] + 1e8), l2)
    a = analyse(build_spec(*MODEL, variables_of(base)), base)
    b = analyse(build_spec(*MODEL, variables_of(big)), big)
    assert np.isclose(b.result.sigma2, a.result.sigma2, rtol=1e-7)
    assert np.isclose(b.fixed.gamma[0] - 1e8, a.fixed.gamma[0], rtol=1e-6)
