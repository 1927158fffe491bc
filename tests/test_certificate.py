"""The certified optimum: the certificate's conditions, escapes from false boundaries and saddles,
scale invariance end to end, and refusals of models that cannot be estimated.

Expected values come from hand-checkable invariances (a rescaled predictor must give the same
optimum, the REML criterion shifting by exactly 2·k·ln c) and from an independent optimizer
(Nelder–Mead from many starts on the unprofiled deviance), never from our own earlier output."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from conftest import SAMPLE, hlmcli
from scipy import optimize

from hlmcli.engine.certificate import certify
from hlmcli.engine.estimation import Objective, TauStructure, fit, standardising_map
from hlmcli.engine.sufficient import model_stats, reparametrise, unit_cross_products
from hlmcli.engine.unitsolve import unit_solve


def simulate(J, n, q, corr, seed, x_mean=0.0, binary=False, tau_diag=(1.0, 0.5, 0.3, 0.2), sizes=None):
    """y = Xγ + Zu + r with Z = [1, x1..]: random intercept and q-1 random slopes, γ fixed on every column."""
    rng = np.random.default_rng(seed)
    sizes = np.full(J, n) if sizes is None else np.asarray(sizes)
    N = int(sizes.sum())
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    unit = np.repeat(np.arange(J), sizes)
    L = np.ones((N, q))
    for k in range(1, q):
        L[:, k] = rng.binomial(1, 0.5, N) if binary else rng.normal(x_mean, 1.0, N)
    sd = np.sqrt(np.array(tau_diag[:q]))
    C = np.full((q, q), corr) + (1 - corr) * np.eye(q)
    T = C * np.outer(sd, sd)
    u = rng.multivariate_normal(np.zeros(q), T, size=J)
    y = L @ np.arange(1, q + 1) + np.einsum("nk,nk->n", L, u[unit]) + rng.normal(size=N)
    B = np.repeat(np.eye(q)[None], J, axis=0)
    return L, y, offsets, B, np.ones(q, bool)


def stats_of(L, y, offsets, B, random):
    return model_stats(unit_cross_products(L, y, offsets), B, random)


def independent_optimum(stats, reml, starts=4, seed=1):
    """Nelder–Mead then Powell over lme4's θ (the Cholesky factor of τ/σ², σ² profiled), from random
    starts: a deliberately different optimizer, which knows nothing of faces or certificates."""
    q = stats.q
    rng = np.random.default_rng(seed)
    idx = np.tril_indices(q)
    scale = 1 / np.sqrt(np.diagonal(stats.ZZ, axis1=1, axis2=2).sum(axis=0) / stats.N)

    def f(x):
        lam = np.zeros((q, q))
        lam[idx] = x
        try:
            return unit_solve(stats, lam).profiled_deviance(reml)
        except (FloatingPointError, np.linalg.LinAlgError):
            return np.inf

    best = np.inf
    for _ in range(starts):
        lam0 = np.diag(scale * rng.uniform(0.2, 2.0, q))
        res = optimize.minimize(f, lam0[idx], method="Nelder-Mead",
                                options={"maxfev": 4000, "xatol": 1e-9, "fatol": 1e-11, "adaptive": True})
        res = optimize.minimize(f, res.x, method="Powell", options={"xtol": 1e-9, "ftol": 1e-14})
        best = min(best, res.fun)
    return best


def test_certificate_rejects_the_stationary_point_at_zero():
    """Λ = 0 is stationary in the Cholesky parameters for any data; the certificate must see the descent."""
    stats = stats_of(*simulate(60, 12, 2, 0.3, seed=3))
    A = standardising_map(stats, TauStructure.UNSTRUCTURED)
    obj = Objective(reparametrise(stats, A, np.eye(stats.p), np.zeros(stats.p)), reml=True)
    cert = certify(obj, np.zeros((2, 2)), False, 1e-8)
    assert not cert.certified and cert.descent is not None
    assert cert.null_eigenvalue < 0 and any("false boundary" in f for f in cert.failed)


def test_certificate_at_the_optimum_and_its_numbers():
    stats = stats_of(*simulate(60, 12, 2, 0.3, seed=3))
    r = fit(stats, "REML")
    c = r.certificate
    assert r.converged and c.certified and c.rank == 2 and c.face_decrement <= c.tolerance
    assert c.hessian_eigenvalue > 0 and c.null_eigenvalue is None
    assert r.deviance <= independent_optimum(stats, True) + 1e-8 * abs(r.deviance)


@pytest.mark.parametrize("seed", [11])
def test_uncentered_binary_slope_many_units_reaches_the_optimum(seed):
    """The failure the issue reports: 800 units, random intercept and slope on an uncentered 0/1
    predictor, where a zero column of Λ is a saddle the old engine stopped at."""
    stats = stats_of(*simulate(800, 6, 2, -0.6, seed=seed, binary=True, tau_diag=(0.4, 0.6)))
    for method in ("REML", "ML"):
        r = fit(stats, method)
        assert r.converged
        best = independent_optimum(stats, method == "REML", starts=3, seed=seed)
        assert r.deviance <= best + 1e-8 * abs(best)


def test_boundary_optimum_is_certified_as_such():
    """True slope variance exactly 0 with few units: the optimum lies on the boundary; the certificate
    holds with rank 1 and the note says which variance is zero."""
    L, y, offsets, B, random = simulate(30, 5, 2, 0.0, seed=7, tau_diag=(1.0, 0.0))
    stats = stats_of(L, y, offsets, B, random)
    r = fit(stats, "REML")
    assert r.converged
    best = independent_optimum(stats, True)
    assert r.deviance <= best + 1e-8 * abs(best)
    if r.certificate.rank < 2:
        assert r.certificate.null_eigenvalue >= 0 or r.certificate.null_decrease <= r.certificate.tolerance


# the independent optimizer's restarts dominate the cost: REML by default, ML in the slow run too
@pytest.mark.parametrize("method", ["REML", pytest.param("ML", marks=pytest.mark.slow)])
def test_high_correlation_q3_matches_an_independent_optimum(method):
    stats = stats_of(*simulate(160, 15, 3, 0.95, seed=21))
    r = fit(stats, method)
    assert r.converged
    assert r.deviance <= independent_optimum(stats, method == "REML", starts=3) + 1e-8 * abs(r.deviance)


def test_diagonal_tau_is_certified_over_the_nonnegative_diagonal():
    stats = stats_of(*simulate(80, 10, 2, 0.0, seed=5))
    r = fit(stats, "ML", structure=TauStructure.DIAGONAL)
    assert r.converged and r.tau[0, 1] == 0.0 and r.n_params == 1 + 2 + stats.p
    full = fit(stats, "ML")
    assert full.deviance <= r.deviance + 1e-9  # a restriction cannot fit better


# ---------------------------------------------------------------- scale invariance, end to end

def _scaled_hsb(tmp_path, c):
    rows = list(csv.DictReader(open(SAMPLE / "hsb" / "hsb1.csv", newline="")))
    out = tmp_path / f"hsb1_{c:g}.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            r["SES"] = repr(float(r["SES"]) * c)
            w.writerow(r)
    return out


SCALE_MODEL = ["-1", "MATHACH = b0 + b1*SES + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10 + u1"]


class _ScaledFits(dict):
    """(c, method) -> the fit's JSON, run at first use: the default run asks for fewer scales than the slow one."""

    def __init__(self, tmp):
        super().__init__()
        self.tmp = tmp

    def __missing__(self, key):
        c, method = key
        l1 = self.tmp / f"hsb1_{c:g}.csv"  # written once, so the ML fit reuses the REML fit's cached archive
        args = ["fit", l1 if l1.exists() else _scaled_hsb(self.tmp, c), SAMPLE / "hsb" / "hsb2.csv", "--id", "ID", *SCALE_MODEL, "--format",
                "json", "--cache-dir", self.tmp]
        if method == "ML":
            args.append("--ml")
        proc = hlmcli(*args)
        assert proc.returncode == 0, proc.stderr
        assert "zero" not in proc.stderr  # no false boundary warning
        self[key] = json.loads(proc.stdout)
        return self[key]


@pytest.fixture(scope="module")
def scaled_fits(tmp_path_factory):
    return _ScaledFits(tmp_path_factory.mktemp("scaled"))


# 1e-3 and 1e8 (both directions, the larger by far) by default; 1e-6 and 1e3 in the slow run
@pytest.mark.parametrize("c", [pytest.param(1e-6, marks=pytest.mark.slow), 1e-3, pytest.param(1e3, marks=pytest.mark.slow),
                               1e8])
def test_rescaled_predictor_gives_the_same_optimum(scaled_fits, c):
    for method in ("REML", "ML"):
        base, fit_c = scaled_fits[1.0, method], scaled_fits[c, method]
        assert fit_c["converged"] and fit_c["certificate"]["certified"] and not fit_c["boundary"]
        # one fixed-effect column (SES, γ10) is multiplied by c: REML's log|X'V⁻¹X| shifts by 2 ln c
        shift = 2 * math.log(c) if method == "REML" else 0.0
        assert abs(fit_c["deviance"] - (base["deviance"] + shift)) <= 1e-8 * abs(base["deviance"])
        assert fit_c["tau"][1][1] * c * c == pytest.approx(base["tau"][1][1], rel=1e-6)
        assert fit_c["tau"][0][1] * c == pytest.approx(base["tau"][0][1], rel=1e-6)
        g = {f["gamma"]: f for f in fit_c["fixed_effects"]}
        g0 = {f["gamma"]: f for f in base["fixed_effects"]}
        assert g["γ10"]["estimate"] * c == pytest.approx(g0["γ10"]["estimate"], rel=1e-6)
        assert g["γ10"]["se"] * c == pytest.approx(g0["γ10"]["se"], rel=1e-6)
        assert g["γ00"]["estimate"] == pytest.approx(g0["γ00"]["estimate"], rel=1e-7)


def test_scaled_deviance_matches_the_issue(scaled_fits):
    """The issue's numbers: REML 46601.85 unscaled, and 46588.04 with SES/1000."""
    assert scaled_fits[1.0, "REML"]["deviance"] == pytest.approx(46601.85, abs=0.005)
    assert scaled_fits[1e-3, "REML"]["deviance"] == pytest.approx(46588.04, abs=0.005)


# ---------------------------------------------------------------- refusals

def _one_line_error(proc, *words):
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_one_unit_is_refused(tmp_path):
    l1 = tmp_path / "l1.csv"
    l1.write_text("ID,X,Y\n" + "".join(f"1,{i},{i * 0.5 + (i % 3)}\n" for i in range(20)))
    l2 = tmp_path / "l2.csv"
    l2.write_text("ID,W\n1,0\n")
    proc = hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "--cache-dir", tmp_path)
    _one_line_error(proc, "1 level-2 unit", "at least 2")


def test_outcome_as_predictor_is_refused(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*MATHACH + r")
    _one_line_error(proc, "MATHACH is the outcome")


def test_mean_of_the_outcome_at_level2_is_refused(hsb_archive):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + g01*mean(MATHACH) + u0")
    _one_line_error(proc, "mean(MATHACH)", "outcome")


def test_more_random_effects_than_records_is_refused(tmp_path):
    l1 = tmp_path / "l1.csv"
    l1.write_text("ID,X,Y\n" + "".join(f"{j},{j % 2},{j * 0.3}\n" for j in range(10)))
    l2 = tmp_path / "l2.csv"
    l2.write_text("ID\n" + "".join(f"{j}\n" for j in range(10)))
    proc = hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + r", "--cache-dir", tmp_path)
    _one_line_error(proc, "10 records for 10 units")


def test_homogeneity_leaves_out_singular_units_instead_of_crashing():
    args = ["fit", SAMPLE / "popular2" / "popular2_level1.csv", SAMPLE / "popular2" / "popular2_level2.csv",
            "--id", "class", "--model", SAMPLE / "popular2" / "popular.hlm", "--test-homogeneity", "--format", "json"]
    proc = hlmcli(*args)
    assert proc.returncode == 0, proc.stderr
    h = json.loads(proc.stdout)["homogeneity"]
    assert h["units_used"] + h["units_left_out"] == 100 and h["df"] == h["units_used"] - 1
    assert h["H"] > 0


@pytest.mark.parametrize("outcome", ["5", "{x}"])
def test_an_outcome_without_residual_variation_is_refused(tmp_path, outcome):
    """A constant outcome, or one equal to a predictor: σ² is not estimable (the deviance is unbounded)."""
    rng = np.random.default_rng(4)
    rows = []
    for j in range(10):
        for _ in range(5):
            x = round(float(rng.normal()), 3)
            rows.append(f"{j},{x},{outcome.format(x=x)}")
    (tmp_path / "l1.csv").write_text("ID,X,Y\n" + "\n".join(rows) + "\n")
    (tmp_path / "l2.csv").write_text("ID\n" + "".join(f"{j}\n" for j in range(10)))
    proc = hlmcli("fit", tmp_path / "l1.csv", tmp_path / "l2.csv", "--id", "ID", "-1", "Y = b0 + b1*X + r",
                  "--cache-dir", tmp_path)
    # a constant outcome is caught as soon as the data are read (data_checks), naming the file and column
    _one_line_error(proc, *(("l1.csv, column Y", "constant within every unit") if outcome == "5"
                            else ("no residual variation",)))


def test_an_outcome_constant_within_units_up_to_rounding_is_not_certified(tmp_path):
    """y is constant within each unit up to noise of SD 1e-6: σ² ≈ 1e-12, and y'V⁻¹y cancels so many
    digits that the deviance's rounding noise is about 1e2 units. The certificate's tolerance may not
    widen that far (certificate.noise_limit): exit 3, "cannot be evaluated to the digits needed"."""
    rng = np.random.default_rng(5)
    J, n = 30, 10
    level = rng.normal(size=J) * 10 + 3
    rows = [f"{j},{x:.6f},{level[j] + 1e-6 * e:.17g}" for j in range(J)
            for x, e in zip(rng.normal(size=n), rng.normal(size=n))]
    (tmp_path / "l1.csv").write_text("ID,X,Y\n" + "\n".join(rows) + "\n")
    (tmp_path / "l2.csv").write_text("ID\n" + "".join(f"{j}\n" for j in range(J)))
    proc = hlmcli("fit", tmp_path / "l1.csv", tmp_path / "l2.csv", "--id", "ID", "-1", "Y = b0 + b1*X + r",
                  "-2", "b0 = g00 + u0", "--cache-dir", tmp_path, "--format", "json")
    assert proc.returncode == 3, proc.stderr
    assert "cannot be evaluated to the digits needed" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_the_noise_limit_is_fixed_and_relative():
    from hlmcli.engine.certificate import check_precision, noise_limit

    assert noise_limit(5.0) == 1e-6 and noise_limit(-6.4e3) == pytest.approx(6.4e-4)
    failed = []
    check_precision(1e-6, 5.0, failed)
    check_precision(6e-4, 6.4e3, failed)
    assert failed == []
    check_precision(0.045, 3.8e3, failed)  # the Julian-date slopes' tolerance
    assert len(failed) == 1 and "digits needed" in failed[0]


class _Quartic:
    """d(g) = -(g-1)² + (g-1)⁴ for a 1×1 G: a local maximum (a saddle of the search) at g = 1,
    minima at g = 1 ± 1/√2. Exact gradient, so the test judges the certificate alone."""

    def at(self, G):
        g = float(G[0, 0]) - 1.0
        return -g * g + g ** 4, np.array([[-2 * g + 4 * g ** 3]])

    def value(self, G):
        return self.at(G)[0]

    def noise(self, G):
        return 0.0


def test_certificate_sees_a_stationary_point_that_is_not_a_minimum_and_the_search_leaves_it():
    from hlmcli.engine.estimation import _along_face, _face_newton, escape_along

    obj = _Quartic()
    G = np.array([[1.0]])
    cert = certify(obj, G, False, 1e-10)
    assert not cert.certified and cert.face_decrement <= 1e-10
    assert cert.hessian_eigenvalue < 0 and any("saddle" in f for f in cert.failed)
    G1, dev, steps, saddle, _ = _face_newton(obj, G, False)
    assert saddle is not None
    face, x0, e = saddle
    moved = escape_along(obj, _along_face(face, x0, e, 1.0), dev, 1.0) or escape_along(obj, _along_face(face, x0, e, -1.0), dev, 1.0)
    assert moved is not None and moved[1] < dev
    G2, dev2, _, saddle2, data = _face_newton(obj, moved[0], False)
    assert saddle2 is None and abs(abs(G2[0, 0] - 1.0) - 2 ** -0.5) < 1e-5  # decrement 1e-10 <-> |δ| ~ 7e-6
    assert certify(obj, G2, False, 1e-10, data).certified
