"""HGLM speed: a Bernoulli model with a random intercept and a random slope, fitted by Laplace,
hlmcli against lme4::glmer(nAGQ = 1) on the same CSV files, side by side in one run.

    python benchmarks/hglm_bench.py                       # 1,000,000 rows, 10,000 units, with glmer
    python benchmarks/hglm_bench.py --rows 100000 --units 1000 --no-r

Data are generated deterministically from --seed into benchmarks/data/ (not committed). hlmcli's
time covers the archive build from the CSVs plus the fit with all its output (PQL start, Laplace
search, SEs, certificate, the tables), run as the command a user types; glmer's covers reading the
same CSVs in R and the fit. Also printed: hlmcli's fit alone from the archive, and the deviances
(they must agree to 1e-6 relative, hlmcli at least as low).
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


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    DATA.mkdir(exist_ok=True)
    l1, l2 = DATA / f"bern_l1_{n}_{J}_{seed}.csv", DATA / f"bern_l2_{n}_{J}_{seed}.csv"
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n - 2 * J, np.full(J, 1.0 / J)) + 2
    unit = np.repeat(np.arange(J), sizes)
    w = rng.normal(size=J)
    u = rng.multivariate_normal([0, 0], [[0.6, 0.1], [0.1, 0.2]], size=J)
    x = rng.normal(size=n)
    eta = -0.4 + 0.3 * w[unit] + u[unit, 0] + (0.5 + u[unit, 1]) * x
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    pd.DataFrame({"id": unit + 1, "y": y, "x": x.round(4)}).to_csv(l1, index=False)
    pd.DataFrame({"id": np.arange(J) + 1, "w": w.round(4)}).to_csv(l2, index=False)
    return l1, l2


# The fit command as users run it, with the analysis alone (hglm_run.analyse_hglm: PQL start, search,
# SEs, certificate, robust SEs, variance tests) timed inside it, wall clock and CPU.
FIT = r"""
import sys, time
import hlmcli.analysis.hglm_run as h
run = h.analyse_hglm
def timed(*a, **k):
    t, c = time.perf_counter(), time.process_time()
    out = run(*a, **k)
    print(f"analysis {time.perf_counter() - t:.6f} {time.process_time() - c:.6f}", file=sys.stderr)
    return out
h.analyse_hglm = timed
from hlmcli.cli import main
sys.argv = ["hlmcli"] + sys.argv[1:]
main()
"""


def run_hlmcli(l1, l2, workdir: Path, estimation: str = "laplace", points: int = 5) -> tuple[float, float, dict, tuple]:
    exe = [sys.executable, "-m", "hlmcli.cli"]
    mdm = workdir / f"bench_{l1.stem}.mdm"
    t0 = time.perf_counter()
    b0 = _children_cpu()
    subprocess.run(exe + ["mdm", "build", str(l1), str(l2), "--id", "id", "-o", str(mdm)], check=True,
                   capture_output=True)
    t1 = time.perf_counter()
    extra = ["--quadrature-points", str(points)] if estimation == "agq" else []
    c0 = _children_cpu()
    proc = subprocess.run([sys.executable, "-c", FIT, "fit", str(mdm), "-1", "y = b0 + b1*x", "-2", "b0 = g00 + g01*w + u0",
                           "-2", "b1 = g10 + u1", "--family", "bernoulli", "--estimation", estimation, *extra,
                           "--format", "json"], check=True, capture_output=True, text=True)
    t2 = time.perf_counter()
    c2 = _children_cpu()
    wall, cpu = (float(v) for v in proc.stderr.split("analysis ")[-1].split()[:2])
    return t2 - t0, t2 - t1, json.loads(proc.stdout), (wall, cpu, c2 - b0, c2 - c0)


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: on a shared machine the fair
    measure beside wall clock."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
t0 <- proc.time()[["elapsed"]]
d1 <- read.csv(args[1]); d2 <- read.csv(args[2]); d <- merge(d1, d2, by = "id")
m <- glmer(y ~ x + w + (x | id), data = d, family = binomial, nAGQ = 1)
t1 <- proc.time()[["elapsed"]]
cpu <- sum(proc.time()[c("user.self", "sys.self")])
cat(sprintf("%.6f %.6f %.10f\n", t1 - t0, cpu, -2 * as.numeric(logLik(m))))
"""


def run_glmer(l1, l2, workdir: Path) -> tuple[float, float, float]:
    script = workdir / "glmer_bench.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run(["Rscript", str(script), str(l1), str(l2)], check=True, capture_output=True, text=True)
    secs, cpu, dev = proc.stdout.split()[-3:]
    return float(secs), float(cpu), float(dev)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--no-r", action="store_true", help="hlmcli only")
    ap.add_argument("--estimation", default="laplace", choices=["laplace", "pql", "agq"], help="hlmcli's method (glmer: Laplace)")
    ap.add_argument("--quadrature-points", type=int, default=5, help="AGQ points per random effect")
    ap.add_argument("--workdir", default=None, help="where the archive and the R script go (default benchmarks/data)")
    a = ap.parse_args()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    workdir = Path(a.workdir) if a.workdir else DATA
    workdir.mkdir(parents=True, exist_ok=True)
    l1, l2 = generate(a.rows, a.units, a.seed)
    total, fit_only, out, (an_wall, an_cpu, cpu_total, cpu_fit) = run_hlmcli(l1, l2, workdir, a.estimation,
                                                                               a.quadrature_points)
    what = a.estimation + (f" ({a.quadrature_points} points)" if a.estimation == "agq" else "")
    print(f"rows {a.rows:,}  units {a.units:,}  Bernoulli, random intercept + slope, {what}")
    print(f"hlmcli analysis alone: {an_wall:.3f} s wall, {an_cpu:.3f} s CPU")
    if out["deviance"] is None:
        print(f"hlmcli: {total:.2f} s (build + fit), fit alone {fit_only:.2f} s (PQL: no deviance)")
        return
    print(f"hlmcli: {total:.2f} s (build + fit), fit alone {fit_only:.2f} s, deviance {out['deviance']:.6f}, "
          f"certified {out['certificate']['certified']}")
    print(f"hlmcli CPU: {cpu_total:.2f} s (build + fit), fit alone {cpu_fit:.2f} s")
    if a.estimation == "agq":
        return  # glmer has no AGQ for two random effects
    if not a.no_r:
        secs, cpu, dev = run_glmer(l1, l2, workdir)
        print(f"glmer : {secs:.2f} s (read + fit), CPU {cpu:.2f} s, deviance {dev:.6f}")
        print(f"speed ratio glmer / hlmcli = {secs / total:.1f}x wall clock, {cpu / cpu_total:.1f}x CPU; deviance "
              f"difference (hlmcli - glmer) {out['deviance'] - dev:+.3e} ({(out['deviance'] - dev) / dev:+.1e} relative)")


if __name__ == "__main__":
    main()
