"""Ordinal speed: a 5-category outcome with a random intercept (y ~ x + w + (1 | id), w at level 2),
fitted by Laplace, hlmcli against ordinal::clmm on the same CSV files, side by side in one run.

    python benchmarks/bench_ordinal.py                          # 1,000,000 rows, 10,000 units, with clmm
    python benchmarks/bench_ordinal.py --rows 100000 --units 1000
    python benchmarks/bench_ordinal.py --no-r                   # hlmcli alone

Data are generated deterministically from --seed into benchmarks/data/ (not committed). hlmcli's time
is `hlmcli fit ... --family ordinal --estimation laplace --format json` from the two CSVs, as a user
types it (archive build, GLM start, Laplace search, SEs, certificate, robust SEs, the JSON); clmm's is
`read.csv` + `merge` + `clmm(nAGQ = 1)` with its default control. Each is one process: wall clock and
its CPU time (user + sys, from the operating system). The deviances are printed side by side.
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

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
CUTS = np.array([-1.5, -0.3, 0.6, 1.8])  # clmm's θ; η = 0.5 x − 0.3 w + u, u ~ N(0, 0.8)


def data_files(tag: str, n: int, J: int, seed: int) -> tuple[Path, Path]:
    """The generated level-1 and level-2 CSVs of a family benchmark (benchmarks/data, not committed)."""
    DATA.mkdir(exist_ok=True)
    return DATA / f"{tag}_l1_{n}_{J}_{seed}.csv", DATA / f"{tag}_l2_{n}_{J}_{seed}.csv"


def unit_of_records(rng, n: int, J: int) -> np.ndarray:
    """Each of n records' unit: J units of at least 2 records, the rest spread multinomially."""
    return np.repeat(np.arange(J), rng.multinomial(n - 2 * J, np.full(J, 1.0 / J)) + 2)


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    l1, l2 = data_files("ord", n, J, seed)
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    unit = unit_of_records(rng, n, J)
    w = rng.normal(size=J)
    u = rng.normal(scale=np.sqrt(0.8), size=J)
    x = rng.normal(size=n)
    latent = 0.5 * x - 0.3 * w[unit] + u[unit] + rng.logistic(size=n)
    y = 1 + np.searchsorted(CUTS, latent)
    pd.DataFrame({"id": unit + 1, "y": y, "x": x.round(4)}).to_csv(l1, index=False)
    pd.DataFrame({"id": np.arange(J) + 1, "w": w.round(4)}).to_csv(l2, index=False)
    return l1, l2


R_SCRIPT = r"""
suppressMessages(library(ordinal))
a <- commandArgs(TRUE)
d <- merge(read.csv(a[1]), read.csv(a[2]), by = "id")
d$y <- factor(d$y, ordered = TRUE); d$id <- factor(d$id)
m <- clmm(y ~ x + w + (1 | id), data = d)
cat(sprintf("%.10f\n", -2 * as.numeric(logLik(m))))
"""


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall, CPU of the child, stdout) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--json", help="append the results to this JSON file")
    args = ap.parse_args()
    l1, l2 = generate(args.rows, args.units, args.seed)
    exe = Path(sys.executable).with_name("hlmcli")
    wall, cpu, out = timed([str(exe), "fit", str(l1), str(l2), "--id", "id", "-1", "y = b0 + b1*x",
                            "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10", "--family", "ordinal",
                            "--estimation", "laplace", "--format", "json", "--cache-dir", str(DATA / "cache")])
    doc = json.loads(out)
    row = {"rows": args.rows, "units": args.units, "hlmcli_wall": wall, "hlmcli_cpu": cpu,
           "hlmcli_deviance": doc["deviance"], "certified": doc["converged"], "load": os.getloadavg()[0]}
    print(f"hlmcli: {wall:.1f} s wall, {cpu:.1f} s CPU, deviance {doc['deviance']:.6f}, certified {doc['converged']}")
    if not args.no_r:
        script = DATA / "bench_ordinal.R"
        script.write_text(R_SCRIPT)
        wall_r, cpu_r, out_r = timed(["Rscript", str(script), str(l1), str(l2)])
        dev_r = float(out_r.split()[-1])
        row.update({"clmm_wall": wall_r, "clmm_cpu": cpu_r, "clmm_deviance": dev_r})
        print(f"clmm:   {wall_r:.1f} s wall, {cpu_r:.1f} s CPU, deviance {dev_r:.6f}")
        print(f"ratio clmm / hlmcli: {wall_r / wall:.1f}x wall, {cpu_r / cpu:.1f}x CPU; "
              f"hlmcli - clmm deviance {doc['deviance'] - dev_r:+.3e}")
    if args.json:
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(rows + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
