"""Multinomial speed: a 3-category outcome with random intercepts correlated across the two logits
(log(P(m)/P(3)) = γ_m0 + γ_m1 w + γ_m2 x + u_m, w at level 2), fitted by Laplace.

    python benchmarks/bench_multinomial.py                      # 100,000 rows, 1,000 units
    python benchmarks/bench_multinomial.py --rows 1000000 --units 10000

Data are generated deterministically from --seed into benchmarks/data/ (not committed). The time is
`hlmcli fit ... --family multinomial --estimation laplace --format json` from the two CSVs, as a user types
it (archive build, the multinomial GLM start, the Laplace searches from its starts, the Hessian SEs, the
certificate, robust SEs, the JSON), one process: wall clock and its CPU time (user + sys, from the
operating system). No R package at hand fits this model by ML, so there is no side-by-side run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench_ordinal import data_files, timed, unit_of_records  # the one timer of the HGLM family benchmarks (wall, child CPU, stdout)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
TAU = np.array([[0.8, 0.3], [0.3, 0.6]])


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    l1, l2 = data_files("mn", n, J, seed)
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    unit = unit_of_records(rng, n, J)
    w = rng.normal(size=J)
    u = rng.multivariate_normal([0.0, 0.0], TAU, size=J)
    x = rng.normal(size=n)
    eta = np.column_stack([0.4 + 0.6 * x + 0.5 * w[unit] + u[unit, 0], -0.3 - 0.4 * x + 0.2 * w[unit] + u[unit, 1],
                           np.zeros(n)])
    p = np.exp(eta - eta.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = 1 + (rng.uniform(size=(n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    pd.DataFrame({"id": unit + 1, "y": y, "x": x.round(4)}).to_csv(l1, index=False)
    pd.DataFrame({"id": np.arange(J) + 1, "w": w.round(4)}).to_csv(l2, index=False)
    return l1, l2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--units", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--json", help="append the results to this JSON file")
    args = ap.parse_args()
    l1, l2 = generate(args.rows, args.units, args.seed)
    exe = Path(sys.executable).with_name("hlmcli")
    wall, cpu, out = timed([str(exe), "fit", str(l1), str(l2), "--id", "id", "-1", "y = b0 + b1*x",
                            "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10", "--family", "multinomial",
                            "--estimation", "laplace", "--format", "json", "--cache-dir", str(DATA / "cache")])
    doc = json.loads(out)
    row = {"rows": args.rows, "units": args.units, "hlmcli_wall": wall, "hlmcli_cpu": cpu,
           "deviance": doc["deviance"], "certified": doc["converged"], "tau": doc["tau"],
           "gamma": [f["estimate"] for f in doc["fixed_effects"]], "load": os.getloadavg()[0]}
    print(f"hlmcli: {wall:.1f} s wall, {cpu:.1f} s CPU, deviance {doc['deviance']:.6f}, certified {doc['converged']}")
    print(f"gamma {np.round(row['gamma'], 4).tolist()}, tau {np.round(doc['tau'], 4).tolist()}")
    if args.json:
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(rows + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
