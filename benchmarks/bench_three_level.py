"""Speed of the three-level engine against lme4's lmer, side by side in one run.

    python benchmarks/bench_three_level.py                    # 1,000,000 records, with lmer
    python benchmarks/bench_three_level.py --no-lmer          # hlmcli only
    python benchmarks/bench_three_level.py --records 100000 --level2 10000 --level3 100
    python benchmarks/bench_three_level.py --intercepts       # random intercepts only, x's slope fixed

Simulates (deterministically from --seed) records in level-2 units in level-3 units, with a random
intercept and a random slope at both levels, a level-2 predictor on the intercept and a level-3
predictor on the level-2 intercept:

    y = π0 + π1 x + e,  π0 = β00 + β01 w + r0,  π1 = β10 + r1,  β00 = γ000 + γ001 z + u00,
    β01 = γ010,  β10 = γ100 + u10   (lme4: y ~ x + w + z + (1 + x | L3) + (1 + x | L3:L2)).

With --intercepts the slope is fixed at both levels, in the data and the model (π1 = β10 = γ100;
lme4: y ~ x + w + z + (1 | L3) + (1 | L3:L2)).

hlmcli is timed from the arrays (the reduction to per-unit cross-products, the certified ML fit
and all of HLM3's inference), as the median of --repeats runs. The same data go to a CSV in /tmp
and to lmer (REML = FALSE, lme4's default optimizer and checks) in an Rscript subprocess, timed
inside R around the lmer call alone. Elapsed and CPU times are both printed: on a shared machine
the CPU ratio is the steadier one. Both deviances are printed: the speed must not come from an
earlier stop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hlmcli.engine.nested import Beta, NestedData, NestedLayout, Pi  # noqa: E402
from hlmcli.engine.nested_fit import fit_nested  # noqa: E402

R_SCRIPT = r"""
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
d$L3 <- factor(d$L3); d$L2 <- factor(d$L2)
t0 <- proc.time()
fit <- lmer(as.formula(args[2]), data = d, REML = FALSE)
t1 <- proc.time() - t0
cat(sprintf('{"seconds": %.3f, "cpu": %.3f, "deviance": %.10f, "fixed": [%s], "messages": "%s"}\n',
            t1[["elapsed"]], t1[["user.self"]] + t1[["sys.self"]], deviance(fit),
            paste(sprintf("%.10g", fixef(fit)), collapse = ", "),
            gsub('"', "'", paste(fit@optinfo$conv$lme4$messages, collapse = "; "))))
"""


SLOPES = "y ~ 1 + x + w + z + (1 + x | L3) + (1 + x | L3:L2)"
INTERCEPTS = "y ~ 1 + x + w + z + (1 | L3) + (1 | L3:L2)"


def simulate(N: int, J2: int, J3: int, seed: int, slopes: bool = True) -> NestedData:
    rng = np.random.default_rng(seed)
    per3 = rng.multinomial(J2 - J3, np.full(J3, 1.0 / J3)) + 1  # level-2 units per level-3 unit, ≥ 1
    unit3 = np.repeat(np.arange(J3), per3)
    n2 = rng.multinomial(N - J2, np.full(J2, 1.0 / J2)) + 1  # records per level-2 unit, ≥ 1
    unit2 = np.repeat(np.arange(J2), n2)
    w = rng.binomial(1, 0.5, J2).astype(float)
    z = rng.normal(size=J3).round(3)
    u = rng.multivariate_normal([0, 0], [[0.5, 0.1], [0.1, 0.2]], size=J3)
    r = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.4]], size=J2)
    x = rng.normal(size=N).round(3)
    b0 = 1.0 + 0.5 * z + u[:, 0]
    if not slopes:  # the same draws, the slopes' random parts left out
        u[:, 1] = r[:, 1] = 0.0
    b1 = 0.5 + u[:, 1]
    p0 = b0[unit3] + 0.3 * w + r[:, 0]
    p1 = b1[unit3] + r[:, 1]
    y = (p0[unit2] + p1[unit2] * x + rng.normal(size=N)).round(4)
    layout = NestedLayout((Pi(None, (Beta(None, (None, 0), True), Beta(0, (None,), False)), True),
                           Pi(0, (Beta(None, (None,), slopes),), slopes)))
    return NestedData(y=y, A=x[:, None], X2=w[:, None], W3=z[:, None], unit2=unit2, unit3=unit3, layout=layout)


def write_csv(data: NestedData, path: Path) -> None:
    import pandas as pd
    k = data.unit3[data.unit2]
    pd.DataFrame({"L3": k, "L2": data.unit2, "x": data.A[:, 0], "w": data.X2[data.unit2, 0],
                  "z": data.W3[k, 0], "y": data.y}).to_csv(path, index=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--level2", type=int, default=100_000)
    ap.add_argument("--level3", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-lmer", action="store_true")
    ap.add_argument("--intercepts", action="store_true", help="random intercepts only (x's slope fixed)")
    a = ap.parse_args()
    data = simulate(a.records, a.level2, a.level3, a.seed, slopes=not a.intercepts)
    print(f"{a.records:,} records, {a.level2:,} level-2 units, {a.level3:,} level-3 units (seed {a.seed}), "
          f"{'random intercepts' if a.intercepts else 'random intercepts and slopes'}")
    times, cpus, fit = [], [], None
    for _ in range(a.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fit = fit_nested(data, reml=False)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    ours, ours_cpu = statistics.median(times), statistics.median(cpus)
    print(f"hlmcli fit_nested: {ours:.2f} s (median of {a.repeats}: {', '.join(f'{t:.2f}' for t in times)}; "
          f"CPU {ours_cpu:.2f} s), "
          f"deviance {fit.deviance:.6f}, certified {fit.converged}, {fit.evaluations} evaluations")
    print(f"  gamma {np.array2string(fit.gamma, precision=6)}")
    if a.no_lmer:
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        csv = Path(tmp) / "three_level.csv"
        script = Path(tmp) / "lmer.R"
        write_csv(data, csv)
        script.write_text(R_SCRIPT)
        t0 = time.perf_counter()
        out = subprocess.run(["Rscript", str(script), str(csv), INTERCEPTS if a.intercepts else SLOPES],
                             capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"lmer: {res['seconds']:.2f} s (CPU {res['cpu']:.2f} s; Rscript wall time with reading the CSV: {wall:.1f} s), "
          f"deviance {res['deviance']:.6f}{', messages: ' + res['messages'] if res['messages'] else ''}")
    print(f"  gamma {res['fixed']}")
    print(f"deviance hlmcli - lmer: {fit.deviance - res['deviance']:+.3e}")
    print(f"speed ratio (lmer / hlmcli): {res['seconds'] / ours:.1f}x elapsed, {res['cpu'] / ours_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
