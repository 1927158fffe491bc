"""Three-level HGLM speed: a Bernoulli model with random intercepts at levels 2 and 3, fitted by Laplace,
hlmcli against lme4::glmer(nAGQ = 1) on the same three CSV files, side by side in one run.

    python benchmarks/hglm3_bench.py --rows 100000                 # with glmer
    python benchmarks/hglm3_bench.py --rows 1000000 --no-r         # hlmcli only
    python benchmarks/hglm3_bench.py --agq 7 --no-r                # nested AGQ, 7 points (glmer has none)

Records: 5 per level-2 unit, 10 level-2 units per level-3 unit (100,000 records: 20,000 level-2 and
2,000 level-3 units), generated deterministically from --seed into benchmarks/data/ (not committed):
η = −0.3 + 0.5x + 0.4w + 0.3z + r + u, r ~ N(0, 0.5) per level-2 unit, u ~ N(0, 0.3) per level-3 unit.
hlmcli's time is `hlmcli fit` from the three CSVs (merge, archive, PQL start, Laplace search, SEs,
certificate, robust SEs, the JSON) as a user types it; glmer's is read.csv + merge + glmer. CPU is
user + system of the child processes (the machine is shared: wall clock depends on the others' load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
PER2, PER3 = 5, 10


def generate(n: int, seed: int) -> tuple[Path, Path, Path]:
    DATA.mkdir(exist_ok=True)
    paths = tuple(DATA / f"bern3_l{k}_{n}_{seed}.csv" for k in (1, 2, 3))
    if all(p.exists() for p in paths):
        return paths
    import pandas as pd

    rng = np.random.default_rng(seed)
    J2 = n // PER2
    J3 = J2 // PER3
    unit2 = np.repeat(np.arange(J2), PER2)
    unit3 = np.repeat(np.arange(J3), PER3)
    z = rng.normal(size=J3)
    w = rng.normal(size=J2)
    x = rng.normal(size=n)
    u = rng.normal(scale=np.sqrt(0.3), size=J3)
    r = rng.normal(scale=np.sqrt(0.5), size=J2)
    eta = -0.3 + 0.5 * x + 0.4 * w[unit2] + 0.3 * z[unit3][unit2] + r[unit2] + u[unit3][unit2]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    pd.DataFrame({"id2": unit2 + 1, "y": y, "x": x.round(4)}).to_csv(paths[0], index=False)
    pd.DataFrame({"id2": np.arange(J2) + 1, "id3": unit3 + 1, "w": w.round(4)}).to_csv(paths[1], index=False)
    pd.DataFrame({"id3": np.arange(J3) + 1, "z": z.round(4)}).to_csv(paths[2], index=False)
    return paths


def _children_cpu() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_hlmcli(paths, workdir: Path, agq: int | None = None) -> tuple[float, float, dict]:
    out = workdir / f"bench3_{paths[0].stem}.json"
    how = ["--estimation", "laplace"] if agq is None else ["--estimation", "agq", "--quadrature-points", str(agq)]
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run([sys.executable, "-m", "hlmcli.cli", "fit", *map(str, paths), "--id2", "id2", "--id3", "id3",
                    "-1", "y = p0 + p1*x", "-2", "p0 = b00 + b01*w + r0", "-2", "p1 = b10",
                    "-3", "b00 = g000 + g001*z + u00", "-3", "b01 = g010", "-3", "b10 = g100",
                    "--family", "bernoulli", *how, "-q", "--json-out", str(out)],
                   check=True, capture_output=True, text=True, cwd=workdir)
    return time.perf_counter() - t0, _children_cpu() - c0, json.loads(out.read_text())


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
t0 <- proc.time()[["elapsed"]]
d1 <- read.csv(args[1]); d2 <- read.csv(args[2]); d3 <- read.csv(args[3])
d <- merge(merge(d1, d2, by = "id2"), d3, by = "id3")
m <- glmer(y ~ x + w + z + (1 | id3 / id2), data = d, family = binomial, nAGQ = 1)
t1 <- proc.time()[["elapsed"]]
cpu <- sum(proc.time()[c("user.self", "sys.self")])
cat(sprintf("%.6f %.6f %.10f\n", t1 - t0, cpu, -2 * as.numeric(logLik(m))))
"""


def run_glmer(paths, workdir: Path) -> tuple[float, float, float]:
    script = workdir / "glmer3_bench.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", str(script), *map(str, paths)], check=True, capture_output=True, text=True)
    secs, cpu, dev = proc.stdout.split()[-3:]
    return float(secs), float(cpu), float(dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--no-r", action="store_true", help="hlmcli only")
    ap.add_argument("--agq", type=int, default=None, metavar="N", help="hlmcli by nested AGQ with N points")
    a = ap.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    DATA.mkdir(exist_ok=True)
    paths = generate(a.rows, a.seed)
    wall, cpu, doc = run_hlmcli(paths, DATA, a.agq)
    print(f"rows {a.rows:,}  level-2 units {a.rows // PER2:,}  level-3 units {a.rows // PER2 // PER3:,}  "
          "Bernoulli, random intercepts at levels 2 and 3, " + ("Laplace" if a.agq is None else f"AGQ {a.agq} points"))
    print(f"hlmcli fit (three CSVs): {wall:.2f} s wall, {cpu:.2f} s CPU, deviance {doc['deviance']:.6f}, "
          f"certified {doc['certificate']['certified']}"
          + (f", Laplace deviance {doc['hglm']['laplace_deviance']:.6f}" if a.agq else ""))
    if not a.no_r:
        secs, rcpu, dev = run_glmer(paths, DATA)
        print(f"glmer (read + merge + fit): {secs:.2f} s wall, {rcpu:.2f} s CPU, deviance {dev:.6f}")
        print(f"ratio glmer / hlmcli = {secs / wall:.1f}x wall, {rcpu / cpu:.1f}x CPU; deviance hlmcli - glmer "
              f"{doc['deviance'] - dev:+.3e} ({(doc['deviance'] - dev) / dev:+.1e} relative)")


if __name__ == "__main__":
    main()
