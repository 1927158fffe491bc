"""Negative binomial speed: NB2 counts with a random intercept and slope,
log μ = γ00 + γ01 w + (γ10 + u1) x + u0 (w at level 2), fitted by Laplace, hlmcli against glmmTMB
(family nbinom2) on the same CSV files, side by side in one run.

    python benchmarks/bench_negbin.py                           # 100,000 rows, 1,000 units, with glmmTMB
    python benchmarks/bench_negbin.py --rows 1000000 --units 10000
    python benchmarks/bench_negbin.py --no-r                    # hlmcli alone

Data are generated deterministically from --seed into benchmarks/data/ (not committed). hlmcli's time
is `hlmcli fit ... --family negbinomial --estimation laplace --format json` from the two CSVs, as a user
types it (the archive built afresh in a new cache folder each run, the NB GLM start, the Laplace
search, SEs, certificate, robust SEs, the JSON); glmmTMB's is `read.csv` + `merge` +
`glmmTMB(y ~ x + w + (1 + x | id), family = nbinom2)` with its default control. Each is one process:
wall clock and its CPU time (user + sys, from the operating system). The deviances (−2 log-likelihood,
constants included, in both) are printed side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench_ordinal import data_files, timed, unit_of_records  # the one timer of the HGLM family benchmarks (wall, child CPU, stdout)

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
GAMMA = (0.5, -0.3, 0.4)       # γ00, γ01 (w), γ10 (x)
TAU = ((0.5, 0.1), (0.1, 0.2))  # Var(u0, u1)
THETA = 2.0                     # NB2 dispersion: Var = μ + μ²/θ


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    l1, l2 = data_files("nb", n, J, seed)
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    unit = unit_of_records(rng, n, J)
    w = rng.normal(size=J).round(4)
    u = rng.multivariate_normal(np.zeros(2), np.array(TAU), size=J)
    x = rng.normal(size=n).round(4)
    eta = GAMMA[0] + GAMMA[1] * w[unit] + u[unit, 0] + (GAMMA[2] + u[unit, 1]) * x
    # NB2 as a gamma–Poisson mixture: λ ~ Γ(θ, μ/θ)
    y = rng.poisson(rng.gamma(THETA, np.exp(eta) / THETA))
    pd.DataFrame({"id": unit + 1, "y": y, "x": x}).to_csv(l1, index=False)
    pd.DataFrame({"id": np.arange(J) + 1, "w": w}).to_csv(l2, index=False)
    return l1, l2


R_SCRIPT = r"""
suppressMessages(library(glmmTMB))
a <- commandArgs(TRUE)
d <- merge(read.csv(a[1]), read.csv(a[2]), by = "id")
d$id <- factor(d$id)
m <- glmmTMB(y ~ x + w + (1 + x | id), data = d, family = nbinom2)
cat(sprintf("%.10f %.10f\n", sigma(m), -2 * as.numeric(logLik(m))))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--units", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--no-hlmcli", action="store_true", help="time glmmTMB alone")
    ap.add_argument("--json", help="append the results to this JSON file")
    args = ap.parse_args()
    l1, l2 = generate(args.rows, args.units, args.seed)
    row = {"rows": args.rows, "units": args.units, "load": os.getloadavg()[0]}
    if not args.no_hlmcli:
        exe = Path(sys.executable).with_name("hlmcli")
        wall, cpu, out = timed([str(exe), "fit", str(l1), str(l2), "--id", "id", "-1", "y = b0 + b1*x",
                                "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + u1",
                                "--family", "negbinomial", "--estimation", "laplace", "--format", "json",
                                "--cache-dir", tempfile.mkdtemp(prefix="cache_", dir=DATA)])
        doc = json.loads(out)
        row.update({"hlmcli_wall": wall, "hlmcli_cpu": cpu, "hlmcli_deviance": doc["deviance"],
                    "hlmcli_theta": doc["dispersion"]["estimate"], "certified": doc["converged"]})
        print(f"hlmcli:  {wall:.1f} s wall, {cpu:.1f} s CPU, deviance {doc['deviance']:.6f}, "
              f"theta {doc['dispersion']['estimate']:.6f}, certified {doc['converged']}", flush=True)
    if not args.no_r:
        script = DATA / "bench_negbin.R"
        script.write_text(R_SCRIPT)
        wall_r, cpu_r, out_r = timed(["Rscript", str(script), str(l1), str(l2)])
        theta_r, dev_r = map(float, out_r.split()[-2:])
        row.update({"glmmtmb_wall": wall_r, "glmmtmb_cpu": cpu_r, "glmmtmb_deviance": dev_r,
                    "glmmtmb_theta": theta_r})
        print(f"glmmTMB: {wall_r:.1f} s wall, {cpu_r:.1f} s CPU, deviance {dev_r:.6f}, theta {theta_r:.6f}")
        if not args.no_hlmcli:
            print(f"ratio glmmTMB / hlmcli: {wall_r / wall:.1f}x wall, {cpu_r / cpu:.1f}x CPU; "
                  f"hlmcli - glmmTMB deviance {doc['deviance'] - dev_r:+.3e}")
    row["load_after"] = os.getloadavg()[0]
    if args.json:
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(rows + [row], indent=1) + "\n")


if __name__ == "__main__":
    main()
