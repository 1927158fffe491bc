"""The two-level Laplace/AGQ fit over blocks of whole units (engine/hglm_blocks.py) equals the
in-memory fit: in memory cut into blocks, spilled to a unit-sorted Parquet file and read back on
every pass, and persisted on Dask. The reference is hglm.ml_fit / agq_fit on the whole GLMData
(itself checked against glmer in test_hglm.py); equality is to 1e-8 relative in the deviance, γ,
τ and the SEs (measured: about 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest

from hlmcli.engine.family import family
from hlmcli.engine.hglm import GLMData, agq_fit, ml_fit
from hlmcli.engine.hglm_blocks import BlockedGLMData, MemoryBlocks, blocked_fit

REL = 1e-8


def make(fam: str, J: int, q: int, seed: int) -> GLMData:
    """Simulated two-level data: a level-1 predictor x, a level-2 predictor w, q random effects."""
    rng = np.random.default_rng(seed)
    n = rng.integers(2, 9, J)
    N = int(n.sum())
    offs = np.concatenate(([0], np.cumsum(n)))
    x, w = rng.normal(size=N), rng.normal(size=J)
    unit = np.repeat(np.arange(J), n)
    eta = -0.3 + 0.5 * x + 0.4 * w[unit] + rng.normal(0, 0.8, J)[unit]
    if q == 2:
        eta = eta + rng.normal(0, 0.4, J)[unit] * x
    trials = offset = None
    if fam == "bernoulli":
        y = (rng.random(N) < 1 / (1 + np.exp(-eta))).astype(float)
    elif fam == "binomial":
        trials = rng.integers(1, 6, N).astype(float)
        y = rng.binomial(trials.astype(int), 1 / (1 + np.exp(-eta))).astype(float)
    else:
        offset = np.log(rng.uniform(0.5, 2, N))
        y = rng.poisson(np.exp(eta + offset)).astype(float)
    L = np.column_stack([np.ones(N), x])
    B = np.zeros((J, 2, 3))
    B[:, 0, 0], B[:, 0, 1], B[:, 1, 2] = 1.0, w, 1.0
    return GLMData(family(fam), L, B, offs, np.arange(q), y, trials, offset)


def same_fit(s, m):
    """s equals m to REL (relative) in the deviance, γ, τ, the model-based and robust SEs and the EB
    effects, and both are certified."""
    assert s.certificate.certified and m.certificate.certified
    assert s.deviance == pytest.approx(m.deviance, rel=REL, abs=0)
    scale = max(1.0, float(np.abs(m.gamma).max()))
    np.testing.assert_allclose(s.gamma, m.gamma, rtol=REL, atol=REL * scale)
    np.testing.assert_allclose(s.tau, m.tau, rtol=REL, atol=REL * float(np.abs(m.tau).max()))
    np.testing.assert_allclose(np.sqrt(np.diag(s.cov)), np.sqrt(np.diag(m.cov)), rtol=REL, atol=0)
    np.testing.assert_allclose(np.sqrt(np.diag(s.robust_cov)), np.sqrt(np.diag(m.robust_cov)), rtol=REL, atol=0)
    np.testing.assert_allclose(s.b, m.b, rtol=0, atol=REL * max(1.0, float(np.abs(m.b).max())))
    np.testing.assert_allclose(s.b_var, m.b_var, rtol=0, atol=REL * float(np.abs(m.b_var).max()))


@pytest.fixture(scope="module")
def bernoulli():
    """Random intercept and slope, and its in-memory Laplace fit."""
    d = make("bernoulli", 30, 2, 3)
    return d, ml_fit(d)


def test_blocks_in_memory_equal_the_whole_data(bernoulli):
    data, whole = bernoulli
    same_fit(blocked_fit(BlockedGLMData(MemoryBlocks(data, 7))), whole)


def one_pass_equal(source, data):
    """One pass of each kind at a fixed (γ, Λ) equals hglm.Conditional on the whole data: the
    deviance and its gradient, the unit scores, the posterior, and the τ = 0 deviance."""
    from hlmcli.engine.hglm import Conditional, deviance_without_random_effects

    gamma, lam = np.array([-0.2, 0.4, 0.5]), np.array([[0.9, 0.0], [0.1, 0.3]])[:data.q, :data.q]
    blocked = BlockedGLMData(source)
    cb, cw = blocked.conditional(), Conditional(data)
    cb.keep_units = cw.keep_units = True
    for got, want in zip(cb.gradient(gamma, lam), cw.gradient(gamma, lam)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    for got, want in zip(cb.unit_scores + cb.posterior(gamma, lam), cw.unit_scores + cw.posterior(gamma, lam)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert blocked.N == data.N
    assert deviance_without_random_effects(blocked, gamma) == pytest.approx(
        deviance_without_random_effects(data, gamma), rel=1e-13)


@pytest.mark.parametrize("fam", ["binomial", "poisson"])
def test_binomial_with_trials_and_poisson_with_exposure(fam):
    data = make(fam, 30, 1, 3)
    same_fit(blocked_fit(BlockedGLMData(MemoryBlocks(data, 7))), ml_fit(data))


def test_agq_over_blocks_equals_agq_in_memory():
    """AGQ is the same seam (nodes > 1): the adaptive choice of points too."""
    data = make("poisson", 30, 1, 3)
    whole = agq_fit(data)
    s = blocked_fit(BlockedGLMData(MemoryBlocks(data, 7)), "agq")
    assert s.nodes == whole.nodes
    same_fit(s, whole)


def test_a_pass_over_the_spilled_parquet_equals_the_whole_data(bernoulli, tmp_path):
    pytest.importorskip("pyarrow")
    from hlmcli.data.hglm_sources import ParquetBlocks, spill

    data, _ = bernoulli
    spill(data, tmp_path / "spill.parquet", units=11)
    source = ParquetBlocks(tmp_path / "spill.parquet", data.family, data.B, data.rnd)
    assert (source.J, source.K) == (data.J, data.K)
    one_pass_equal(source, data)


def test_spilled_parquet_fit_equals_the_whole_data(bernoulli, tmp_path):
    pytest.importorskip("pyarrow")
    from hlmcli.data.hglm_sources import ParquetBlocks, spill

    data, whole = bernoulli
    spill(data, tmp_path / "spill.parquet", units=11)
    same_fit(blocked_fit(BlockedGLMData(ParquetBlocks(tmp_path / "spill.parquet", data.family, data.B, data.rnd))),
             whole)


def dask_source(data, tmp_path):
    """The records shuffled over 3 partitions, then partitioned by unit once (the synchronous
    scheduler runs the same tasks a cluster runs)."""
    import dask.dataframe as dd
    import pandas as pd

    from hlmcli.data.hglm_sources import DaskBlocks, partition_by_unit, spill

    spill(data, tmp_path / "spill.parquet")
    records = pd.read_parquet(tmp_path / "spill.parquet").sample(frac=1.0, random_state=1)
    ddf = partition_by_unit(dd.from_pandas(records, npartitions=3), units_per_partition=13)
    source = DaskBlocks(ddf, data.family, data.B, data.rnd, scheduler="sync")
    assert len(source.j0) == 3
    return source


# One pass over Dask partitions by unit (dask_source) against the whole data: in test_hglm_dask_cli.py, whose
# tests import dask.dataframe anyway (about 0.7 s of CPU that this file's default run no longer spends).


@pytest.mark.slow
def test_dask_fit_equals_the_whole_data(bernoulli, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    data, whole = bernoulli
    same_fit(blocked_fit(BlockedGLMData(dask_source(data, tmp_path))), whole)


def test_a_damaged_spill_file_is_refused(tmp_path):
    """Units out of order within a block: one line naming what to do, never a wrong fit."""
    pytest.importorskip("pyarrow")
    from hlmcli.data.hglm_sources import block_of_table
    from hlmcli.errors import DataError

    data = make("bernoulli", 4, 1, 1)
    cols = {"l0": np.ones(4), "l1": np.zeros(4), "y": np.zeros(4), "unit": np.array([0, 1, 0, 1])}
    with pytest.raises(DataError, match="not whole and in order"):
        block_of_table(cols, data.family, data.B, data.rnd, 0, 2)


@pytest.mark.slow
def test_bigger_data_spilled_in_many_blocks_equal_the_whole_data(tmp_path):
    """2,000 units (about 10,000 records), random intercept and slope, 20 row groups."""
    pytest.importorskip("pyarrow")
    from hlmcli.data.hglm_sources import ParquetBlocks, spill

    data = make("bernoulli", 2000, 2, 11)
    spill(data, tmp_path / "spill.parquet", units=100)
    source = ParquetBlocks(tmp_path / "spill.parquet", data.family, data.B, data.rnd)
    same_fit(blocked_fit(BlockedGLMData(source)), ml_fit(data))


def same_pql(s, m):
    """Two PQL fits alike to REL: γ, τ, σ², the model-based and robust covariances, the EB effects,
    the population-average γ and its two covariances, and the fixed-point verdict."""
    assert s.converged and m.converged and s.check.passed and m.check.passed
    assert s.macro_iterations == m.macro_iterations and s.pa_iterations == m.pa_iterations
    for got, want in ((s.gamma, m.gamma), (s.tau, m.tau), (s.sigma2, m.sigma2), (s.cov, m.cov),
                      (s.robust_cov, m.robust_cov), (s.b, m.b), (s.b_var, m.b_var), (s.pa_gamma, m.pa_gamma),
                      (s.pa_cov, m.pa_cov), (s.pa_robust_cov, m.pa_robust_cov)):
        want = np.asarray(want)
        np.testing.assert_allclose(got, want, rtol=REL, atol=REL * max(1e-300, float(np.abs(want).max())))
    # the population-average model is a different model: its γ is not the unit-specific γ
    assert np.max(np.abs(m.pa_gamma - m.gamma)) > 1e-3


@pytest.mark.parametrize("fam,q,opts", [("bernoulli", 2, dict(reml=True)),
                                        ("binomial", 1, dict(reml=False)),
                                        ("poisson", 1, dict(reml=False, overdispersion=True))])
def test_pql_over_blocks_equals_pql_in_memory(fam, q, opts):
    """PQL (macro iterations, fixed-point refit, population-average model) over blocks of 7 units is
    the in-memory PQL: the working models are per-unit sums over whole units."""
    from hlmcli.engine.hglm import pql

    data = make(fam, 30, q, 3)
    same_pql(pql(BlockedGLMData(MemoryBlocks(data, 7)), **opts), pql(data, **opts))


@pytest.mark.slow
def test_pql_over_dask_partitions_equals_pql_in_memory(bernoulli, tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    from hlmcli.engine.hglm import pql

    data, _ = bernoulli
    same_pql(pql(BlockedGLMData(dask_source(data, tmp_path))), pql(data))


def test_unsolved_modes_leave_the_blocked_fit_uncertified_as_in_memory(monkeypatch):
    """A unit whose mode search did not finish at the optimum leaves the fit uncertified (hglm._ml_fit_one):
    over blocks the units' state comes back from each block's pass, so the blocked fit says what the
    in-memory one says, not 'certified'."""
    from hlmcli.engine.hglm import Conditional

    data = make("bernoulli", 12, 1, 5)
    modes = Conditional.modes

    def none_solved(self, gamma, lam, *a, **k):
        out = modes(self, gamma, lam, *a, **k)
        self.unsolved = np.ones(self.data.J, bool)
        return out

    monkeypatch.setattr(Conditional, "modes", none_solved)
    for fit in (ml_fit(data), blocked_fit(BlockedGLMData(MemoryBlocks(data, 5)))):
        assert not fit.certificate.certified and not fit.converged
        assert any("mode of 12 unit(s) was not found" in f for f in fit.certificate.failed)
