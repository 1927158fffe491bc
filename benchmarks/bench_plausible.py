"""Ten plausible values with sampling weights at both levels on a PISA-sized synthetic file.

    python benchmarks/bench_plausible.py                     # 500,000 students in 15,000 schools
    python benchmarks/bench_plausible.py --n 100000 --J 3000 --repeats 3

The data (two CSVs: students with ESCS, FEMALE, PV1MATH..PV10MATH and W_FSTUWT; schools with
SCHESCS and W_SCHGRNRABWT) are generated deterministically from --seed into benchmarks/data/.
The archive is built once (timed apart); the fit is then timed as the median of --repeats runs,
each in its own process so its peak memory (max RSS) is its own:

- **fit**: loading the archive, the design, the weights (checked and normalised), the per-unit
  cross-products of all ten outcomes in one pass, ten pseudo-ML fits with the certificate and the
  inference, Rubin's rules, and the text output.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as the hlmcli command does
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
M = 10
LEVEL1 = "PV1MATH = b0 + b1*group(ESCS) + b2*FEMALE + r"
LEVEL2 = ["b0 = g00 + g01*SCHESCS + u0", "b1 = g10 + u1", "b2 = g20"]


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    DATA.mkdir(exist_ok=True)
    l1, l2 = DATA / f"pv_l1_{n}_{J}_{seed}.csv", DATA / f"pv_l2_{n}_{J}_{seed}.csv"
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n - 2 * J, np.full(J, 1.0 / J)) + 2
    unit = np.repeat(np.arange(J), sizes)
    schescs = rng.normal(size=J)
    u = rng.multivariate_normal([0, 0], [[900.0, 30.0], [30.0, 25.0]], size=J)
    escs = schescs[unit] * 0.6 + rng.normal(size=n)
    female = rng.binomial(1, 0.5, n).astype(float)
    theta = 480 + 40 * schescs[unit] + u[unit, 0] + (20 + u[unit, 1]) * escs - 8 * female + rng.normal(scale=70, size=n)
    cols = {"SCHOOLID": unit + 100000, "ESCS": escs.round(4), "FEMALE": female}
    for k in range(1, M + 1):  # plausible values: the latent score plus measurement noise
        cols[f"PV{k}MATH"] = (theta + rng.normal(scale=25, size=n)).round(3)
    cols["W_FSTUWT"] = (rng.gamma(4.0, 0.5, n) * (1 + 0.3 * female)).round(5)
    pd.DataFrame(cols).to_csv(l1, index=False)
    pd.DataFrame({"SCHOOLID": np.arange(J) + 100000, "SCHESCS": schescs.round(4),
                  "W_SCHGRNRABWT": rng.gamma(2.0, 20.0, J).round(4)}).to_csv(l2, index=False)
    return l1, l2


def build(l1: Path, l2: Path, archive: Path) -> float:
    from hlmcli.io.archive import BuildOptions, build_from_files, write_archive

    t0 = time.perf_counter()
    write_archive(build_from_files(l1, l2, BuildOptions(id1="SCHOOLID", id2="SCHOOLID")), archive)
    return time.perf_counter() - t0


def fit_once(archive: Path) -> dict:
    from hlmcli.io.archive import load_archive
    from hlmcli.data.design import variables_of
    from hlmcli.language.equations import RunOptions, spec_from_inputs
    from hlmcli.analysis.plausible import analyse_plausible, outcome_columns
    from hlmcli.report.report_combined import combined_text
    from hlmcli.report.report import Symbols
    from hlmcli.data.weights import WeightSpec

    t0 = time.perf_counter()
    arch = load_archive(archive)
    spec = spec_from_inputs(LEVEL1, LEVEL2, None, variables_of(arch), RunOptions())
    outcomes = outcome_columns("PV*MATH", list(arch.level1_names))
    analyses = analyse_plausible(spec, arch, outcomes, weights=WeightSpec("W_FSTUWT", "W_SCHGRNRABWT", "cluster"))
    text = combined_text(analyses, {"data_source": archive.name}, Symbols(True), "plausible values", False)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "max_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "converged": all(a.result.converged for a in analyses), "m": len(analyses),
            "evaluations": sum(a.result.evaluations for a in analyses), "text_lines": text.count("\n")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--J", type=int, default=15_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(fit_once(Path(args.child))))
        return
    l1, l2 = generate(args.n, args.J, args.seed)
    archive = DATA / f"pv_{args.n}_{args.J}_{args.seed}.mdm"
    t_build = build(l1, l2, archive)
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--child", str(archive)], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout))
    med = statistics.median(r["seconds"] for r in runs)
    each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    print(f"{args.n:,} students, {args.J:,} schools, {M} plausible values, weights at both levels")
    print(f"build {t_build:.2f} s; fit (median of {len(runs)}) {med:.2f} s "
          f"[{each}]; peak memory {max(r['max_rss_gib'] for r in runs):.2f} GiB; "
          f"all certified: {all(r['converged'] for r in runs)}; deviance evaluations {runs[0]['evaluations']}")


if __name__ == "__main__":
    main()
