"""Stress suite for the three-level engine: random small data sets and random HLM3 layouts, each
fit compared with an independent optimum of the dense likelihood.

    python benchmarks/stress_three_level.py              # 120 data sets
    python benchmarks/stress_three_level.py --n 20 --seed 5

Every data set (numpy Generators with fixed seeds) has 2 to 8 level-3 units of 1 to 6 level-2
units of 1 to 6 records, one or two level-1 predictors (uncentred, means up to 100, scales 1e-3 to
1e3, or 0/1), a level-2 and a level-3 predictor, a random layout (each π random with probability
0.7, each β with a level-2 predictor or not, each level-3 equation with W or not, each β random
with probability 0.5) and true covariances with zero variances and correlations near ±1. Half are
REML. The independent optimum minimises the dense N×N deviance (numpy slogdet/inv) over
(log σ², Cholesky factors of τπ and τβ) with BFGS from four random starts and from hlmcli's answer,
then Nelder–Mead from the best of those;
a fit is "worse" when its deviance exceeds that optimum by more than 1e-6 relative.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from scipy import optimize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlmcli.errors import HlmError  # noqa: E402
from hlmcli.engine.nested import Beta, NestedData, NestedLayout, Pi  # noqa: E402
from hlmcli.engine.nested_fit import fit_nested  # noqa: E402


def simulate(seed: int) -> tuple[NestedData, bool]:
    rng = np.random.default_rng(seed)
    J3 = int(rng.integers(2, 9))
    unit3 = np.repeat(np.arange(J3), rng.integers(1, 7, size=J3))
    J2 = unit3.size
    unit2 = np.repeat(np.arange(J2), rng.integers(1, 7, size=J2))
    N = unit2.size
    P1 = int(rng.integers(1, 3))
    A = np.empty((N, P1))
    for c in range(P1):
        kind = rng.integers(0, 3)
        if kind == 0:
            A[:, c] = rng.integers(0, 2, size=N)
        else:
            A[:, c] = (rng.normal(size=N) + rng.uniform(0, 100) * (kind == 2)) * 10.0 ** rng.uniform(-3, 3)
    X2 = rng.normal(size=(J2, 1)) + rng.uniform(0, 5)
    W3 = rng.normal(size=(J3, 1))
    pis = []
    for p in range(P1 + 1):
        betas = []
        for q in ([None, 0] if rng.random() < 0.4 else [None]):
            cols = (None, 0) if rng.random() < 0.4 else (None,)
            betas.append(Beta(q, cols, bool(rng.random() < 0.5)))
        pis.append(Pi(None if p == 0 else p - 1, tuple(betas), bool(rng.random() < 0.7)))
    layout = NestedLayout(tuple(pis))
    # true effects: random slopes and intercepts with some zero variances and strong correlations
    y = rng.normal(size=N)
    for ip, pi in enumerate(pis):
        a = np.ones(N) if pi.level1_col is None else A[:, pi.level1_col] / np.std(A[:, pi.level1_col])
        if pi.random and rng.random() < 0.8:
            y += a * rng.normal(size=J2)[unit2] * rng.uniform(0.3, 2)
        for b in pi.betas:
            x = np.ones(J2) if b.level2_col is None else X2[:, b.level2_col]
            if b.random and rng.random() < 0.6:
                y += a * x[unit2] * rng.normal(size=J3)[unit3[unit2]] * rng.uniform(0.1, 1)
    return NestedData(y, A, X2, W3, unit2, unit3, layout), bool(seed % 2)


def dense_parts(data: NestedData):
    N = data.y.size
    k_of = data.unit3[data.unit2]
    a = lambda c: np.ones(N) if c is None else data.A[:, c]  # noqa: E731
    x2 = lambda c: np.ones(N) if c is None else data.X2[data.unit2, c]  # noqa: E731
    w3 = lambda s: np.ones(N) if s is None else data.W3[k_of, s]  # noqa: E731
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
    Z2 = np.zeros((N, J2 * len(Z2c)))
    Z3 = np.zeros((N, J3 * len(Z3c)))
    for c, z in enumerate(Z2c):
        Z2[np.arange(N), data.unit2 * len(Z2c) + c] = z
    for c, z in enumerate(Z3c):
        Z3[np.arange(N), k_of * len(Z3c) + c] = z
    return X, Z2, Z3, J2, J3, len(Z2c), len(Z3c)


def dense_deviance(parts, y, sigma2, T2, T3, reml):
    X, Z2, Z3, J2, J3, _, _ = parts
    N, p = X.shape
    V = sigma2 * np.eye(N) + Z2 @ np.kron(np.eye(J2), T2) @ Z2.T + Z3 @ np.kron(np.eye(J3), T3) @ Z3.T
    sign, logdet = np.linalg.slogdet(V)
    if sign <= 0:
        return np.inf
    Vi = np.linalg.inv(V)
    XVX = X.T @ Vi @ X
    s2, ld2 = np.linalg.slogdet(XVX)
    if s2 <= 0:
        return np.inf
    g = np.linalg.solve(XVX, X.T @ Vi @ y)
    e = y - X @ g
    d = N * np.log(2 * np.pi) + logdet + e @ Vi @ e
    return d + (ld2 - p * np.log(2 * np.pi) if reml else 0.0)


def dense_optimum(data: NestedData, reml: bool, fit, rng) -> float:
    parts = dense_parts(data)
    q2, q3 = parts[5], parts[6]
    i2, i3 = np.tril_indices(q2), np.tril_indices(q3)
    n2 = len(i2[0])

    def unpack(t):
        L2, L3 = np.zeros((q2, q2)), np.zeros((q3, q3))
        L2[i2], L3[i3] = t[1:1 + n2], t[1 + n2:]
        return np.exp(t[0]), L2 @ L2.T, L3 @ L3.T

    def f(t):
        return dense_deviance(parts, data.y, *unpack(t), reml)

    def chol(T, s2):
        w, V = np.linalg.eigh(T / s2)
        M = (V * np.sqrt(np.clip(w, 0, None))) @ V.T + 1e-8 * np.eye(T.shape[0])
        return np.linalg.cholesky(M)

    starts = [np.concatenate([[np.log(fit.sigma2)], chol(fit.tau_pi, fit.sigma2)[i2] * np.sqrt(fit.sigma2),
                              chol(fit.tau_beta, fit.sigma2)[i3] * np.sqrt(fit.sigma2)])]
    s0 = np.log(np.var(data.y))
    for _ in range(4):
        starts.append(np.concatenate([[s0], rng.normal(size=n2) * np.exp(s0 / 2),
                                      rng.normal(size=len(i3[0])) * np.exp(s0 / 2)]))
    best, best_t = np.inf, None
    with np.errstate(all="ignore"):
        for t0 in starts:
            res = optimize.minimize(f, t0, method="BFGS", options={"maxiter": 5000, "gtol": 1e-9})
            if res.fun < best:
                best, best_t = float(res.fun), res.x
        # a derivative-free polish from the best point: BFGS's numerical gradient stalls near a boundary
        res = optimize.minimize(f, best_t, method="Nelder-Mead",
                                options={"maxiter": 4000, "xatol": 1e-10, "fatol": 1e-12})
    return min(best, float(res.fun))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed + 10_000)
    worse, uncertified, boundary, slow = [], [], 0, 0.0
    t0 = time.perf_counter()
    for i in range(a.seed, a.seed + a.n):
        data, reml = simulate(i)
        try:
            fit = fit_nested(data, reml=reml)
        except (HlmError, ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            print(f"seed {i}: refused ({exc})")
            continue
        ref = dense_optimum(data, reml, fit, rng)
        gap = (fit.deviance - ref) / abs(ref)
        boundary += bool(fit.boundary)
        if not fit.converged:
            uncertified.append(i)
        if gap > 1e-6:
            worse.append((i, gap))
        print(f"seed {i:4d} {'REML' if reml else 'ML  '} N={data.y.size:4d} q=({fit.tau_pi.shape[0]},{fit.tau_beta.shape[0]}) "
              f"dev {fit.deviance:14.6f} best {ref:14.6f} gap {gap:+.1e} "
              f"{'certified' if fit.converged else 'NOT CERTIFIED'} {'; '.join(fit.boundary)}", flush=True)
    print(f"{a.n} data sets in {time.perf_counter() - t0:.0f} s: {len(worse)} worse than the dense optimum by more "
          f"than 1e-6 relative {worse}, {len(uncertified)} uncertified {uncertified}, {boundary} boundary fits")


if __name__ == "__main__":
    main()
