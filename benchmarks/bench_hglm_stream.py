"""Two-level Bernoulli Laplace fit over blocks of whole units (engine/hglm_blocks.py): 10,000,000
records in 100,000 units, random intercept and slope, streamed from a unit-sorted Parquet spill
file, and the in-memory fit of the same records beside it.

    python benchmarks/bench_hglm_stream.py --data-dir /tmp/bench            # 10M records, 100k units
    python benchmarks/bench_hglm_stream.py --records 1000000 --units 10000 --data-dir /tmp/bench
    python benchmarks/bench_hglm_stream.py --estimation pql --records 1000000 --units 10000 --data-dir /tmp/bench

The records are generated deterministically from --seed one block of units at a time and written
straight to the spill file (memory stays bounded): logit P(y = 1) = γ00 + γ01·w + γ10·x
+ u0 + u1·x, x ~ N(0, 1) per record, w ~ N(0, 1) per unit, τ = [[0.5, 0.1], [0.1, 0.2]], γ = (−0.5,
0.3, 0.4). Each fit runs in its own process (`--run stream|memory`), so its peak memory (max RSS)
is its own; CPU time is user + sys of that process. The two fits must agree to 1e-8 relative in the
deviance, γ, τ and the SEs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
GAMMA = (-0.5, 0.3, 0.4)
TAU = [[0.5, 0.1], [0.1, 0.2]]


def generate(records: int, units: int, seed: int, path: Path, block: int) -> np.ndarray:
    """The spill file (written once; reused while its `.done` marker is there) and B (J, 2, 3)."""
    from hlmcli.data.hglm_sources import SpillWriter

    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(records - units, np.full(units, 1.0 / units)) + 1
    w = rng.normal(size=units)
    u = rng.multivariate_normal([0.0, 0.0], TAU, size=units)
    B = np.zeros((units, 2, 3))
    B[:, 0, 0], B[:, 0, 1], B[:, 1, 2] = 1.0, w, 1.0
    done = path.with_suffix(".done")
    if done.exists():
        return B
    writer = SpillWriter(path, 2)
    try:
        for j0 in range(0, units, block):
            j1 = min(units, j0 + block)
            n = sizes[j0:j1]
            unit = np.repeat(np.arange(j0, j1), n)
            x = rng.normal(size=unit.size)
            eta = GAMMA[0] + GAMMA[1] * w[unit] + GAMMA[2] * x + u[unit, 0] + u[unit, 1] * x
            y = (rng.random(unit.size) < 1.0 / (1.0 + np.exp(-eta))).astype(float)
            writer.write(n, np.column_stack([np.ones(unit.size), x]), y)
    finally:
        writer.close()
    done.write_text("ok\n")
    return B


def run(kind: str, path: Path, B: np.ndarray, estimation: str = "laplace") -> dict:
    """One fit in this process: 'stream' passes over the spill file; 'memory' reads it whole first.
    estimation 'pql': restricted PQL with its fixed-point check and population-average model."""
    from hlmcli.data.hglm_sources import ParquetBlocks
    from hlmcli.engine.family import family
    from hlmcli.engine.hglm import GLMData, ml_fit, pql
    from hlmcli.engine.hglm_blocks import BlockedGLMData, blocked_fit

    fam = family("bernoulli")
    rnd = np.array([0, 1])
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "stream":
        blocks = BlockedGLMData(ParquetBlocks(path, fam, B, rnd))
        res = pql(blocks) if estimation == "pql" else blocked_fit(blocks)
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        unit = t.column("unit").to_numpy()
        offs = np.concatenate(([0], np.flatnonzero(np.diff(unit)) + 1, [unit.size]))
        data = GLMData(fam, np.column_stack([t.column("l0").to_numpy(), t.column("l1").to_numpy()]), B, offs, rnd,
                       t.column("y").to_numpy())
        del t, unit
        res = pql(data) if estimation == "pql" else ml_fit(data)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    if estimation == "pql":
        return {"engine": kind, "estimation": "pql", "wall_s": wall, "cpu_s": cpu, "peak_rss_gib": ru.ru_maxrss / 2 ** 20,
                "gamma": res.gamma.tolist(), "tau": res.tau.tolist(), "se": np.sqrt(np.diag(res.cov)).tolist(),
                "robust_se": np.sqrt(np.diag(res.robust_cov)).tolist(), "pa_gamma": res.pa_gamma.tolist(),
                "pa_se": np.sqrt(np.diag(res.pa_cov)).tolist(), "converged": bool(res.converged),
                "fixed_point_passed": bool(res.check.passed), "macro_iterations": res.macro_iterations,
                "pa_iterations": res.pa_iterations}
    return {"engine": kind, "wall_s": wall, "cpu_s": cpu, "peak_rss_gib": ru.ru_maxrss / 2 ** 20,
            "deviance": res.deviance, "gamma": res.gamma.tolist(), "tau": res.tau.tolist(),
            "se": np.sqrt(np.diag(res.cov)).tolist(), "certified": bool(res.certificate.certified),
            "evaluations": res.evaluations, "starts": res.starts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--block", type=int, default=20_000, help="units per row group of the spill file")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/hlmcli_bench"))
    ap.add_argument("--skip-memory", action="store_true", help="leave out the in-memory fit")
    ap.add_argument("--estimation", choices=["laplace", "pql"], default="laplace")
    ap.add_argument("--run", choices=["stream", "memory"], help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="default: hglm_stream_results.json "
                    "(hglm_stream_pql_results.json with --estimation pql)")
    a = ap.parse_args()
    a.out = a.out or HERE / ("hglm_stream_pql_results.json" if a.estimation == "pql" else "hglm_stream_results.json")
    a.data_dir.mkdir(parents=True, exist_ok=True)
    path = a.data_dir / f"hglm_spill_{a.records}_{a.units}_{a.seed}_{a.block}.parquet"
    if a.run:
        B = generate(a.records, a.units, a.seed, path, a.block)
        print(json.dumps(run(a.run, path, B, a.estimation)))
        return
    t0 = time.perf_counter()
    generate(a.records, a.units, a.seed, path, a.block)
    results = {"estimation": a.estimation, "records": a.records, "units": a.units, "seed": a.seed, "block_units": a.block,
               "spill_bytes": path.stat().st_size, "generate_s": time.perf_counter() - t0, "fits": []}
    for kind in ["stream"] + ([] if a.skip_memory else ["memory"]):
        cmd = [sys.executable, __file__, "--records", str(a.records), "--units", str(a.units), "--seed", str(a.seed),
               "--block", str(a.block), "--data-dir", str(a.data_dir), "--estimation", a.estimation, "--run", kind]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results["fits"].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results["fits"][-1]), flush=True)
    if len(results["fits"]) == 2:
        s, m = results["fits"]
        rel = lambda a_, b_: float(np.max(np.abs(np.subtract(a_, b_)) / np.maximum(np.abs(b_), 1e-300)))  # noqa: E731
        keys = ["gamma", "tau", "se"] + (["robust_se", "pa_gamma", "pa_se"] if a.estimation == "pql" else [])
        results["agreement"] = {k: rel(s[k], m[k]) for k in keys}
        if a.estimation != "pql":
            results["agreement"]["deviance"] = abs(s["deviance"] - m["deviance"]) / abs(m["deviance"])
        print(json.dumps(results["agreement"]))
    a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
