"""Speed benchmark: archive build and fit, per data size, with statsmodels MixedLM as a peer.

    python benchmarks/bench.py                 # all sizes
    python benchmarks/bench.py --sizes 7185 100000 --repeats 5

Data are generated deterministically from --seed into benchmarks/data/ (two CSVs per size) and reused.
Each size runs in its own process so its peak memory (max RSS) is its own. The model has a random
intercept and one random slope, three level-1 predictors and two level-2 predictors.
statsmodels (pip install '.[bench]') runs where one fit takes under two minutes.
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
SIZES = [(7_185, 160), (100_000, 1_000), (1_000_000, 10_000), (10_000_000, 100_000)]
LEVEL1 = "y = b0 + b1*group(x1) + b2*x2 + b3*grand(x3) + r"
LEVEL2 = ["b0 = g00 + g01*w1 + g02*w2 + u0", "b1 = g10 + g11*w1 + u1"]


def generate(n: int, J: int, seed: int) -> tuple[Path, Path]:
    DATA.mkdir(exist_ok=True)
    l1, l2 = DATA / f"l1_{n}_{J}_{seed}.csv", DATA / f"l2_{n}_{J}_{seed}.csv"
    if l1.exists() and l2.exists():
        return l1, l2
    import pandas as pd

    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n - J, np.full(J, 1.0 / J)) + 1  # every unit has at least one record
    unit = np.repeat(np.arange(J), sizes)
    w1 = rng.binomial(1, 0.4, J).astype(float)
    w2 = rng.normal(size=J)
    u = rng.multivariate_normal([0, 0], [[4.0, 0.6], [0.6, 1.0]], size=J)
    x1 = rng.normal(size=n) + 0.5 * rng.normal(size=J)[unit]
    x2 = rng.binomial(1, 0.5, n).astype(float)
    x3 = rng.normal(50, 10, size=n)
    b0 = 12 + 2 * w1 + 1.5 * w2 + u[:, 0]
    b1 = 2 - 1 * w1 + u[:, 1]
    y = b0[unit] + b1[unit] * x1 + 0.8 * x2 + 0.05 * x3 + rng.normal(scale=6, size=n)
    pd.DataFrame({"id": unit + 1000, "x1": x1.round(4), "x2": x2, "x3": x3.round(3), "y": y.round(4)}).to_csv(
        l1, index=False)
    pd.DataFrame({"id": np.arange(J) + 1000, "w1": w1, "w2": w2.round(4)}).to_csv(l2, index=False)
    return l1, l2


def time_one(n: int, J: int, seed: int, repeats: int) -> dict:
    """Runs inside a child process: build times, fit times, peak memory."""
    from hlmcli.io.archive import BuildOptions, build_from_files, load_archive, write_archive
    from hlmcli.data.design import variables_of
    from hlmcli.language.equations import build_spec
    from hlmcli.analysis.pipeline import analyse

    l1, l2 = generate(n, J, seed)
    target = DATA / f"bench_{n}_{J}_{seed}.mdm"
    builds, fits, engine = [], [], []
    for _ in range(repeats):
        t = time.perf_counter()
        archive = build_from_files(l1, l2, BuildOptions(id1="id", id2="id"))
        write_archive(archive, target)
        builds.append(time.perf_counter() - t)
    del archive
    result = None
    for _ in range(repeats):
        t = time.perf_counter()
        archive = load_archive(target)
        spec = build_spec(LEVEL1, LEVEL2, variables_of(archive))
        a = analyse(spec, archive)
        fits.append(time.perf_counter() - t)
        result = a
    # the estimation alone, from the sufficient statistics
    from hlmcli.engine.estimation import fit

    for _ in range(repeats):
        t = time.perf_counter()
        fit(result.stats, "REML")
        engine.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"n": n, "J": J, "build_s": statistics.median(builds), "fit_s": statistics.median(fits),
            "engine_s": statistics.median(engine), "peak_bytes": peak, "deviance": result.result.deviance,
            "iterations": result.result.iterations, "converged": result.result.converged}


def time_statsmodels(n: int, J: int, seed: int, repeats: int) -> dict:
    import pandas as pd
    import statsmodels.formula.api as smf

    l1, l2 = generate(n, J, seed)
    d1, d2 = pd.read_csv(l1), pd.read_csv(l2)
    df = d1.merge(d2, on="id")
    df["x1_gc"] = df["x1"] - df.groupby("id")["x1"].transform("mean")
    df["x3_c"] = df["x3"] - df["x3"].mean()
    times, dev = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        model = smf.mixedlm("y ~ w1 + w2 + x1_gc + w1:x1_gc + x2 + x3_c", df, groups=df["id"], re_formula="~x1_gc")
        res = model.fit(reml=True, method=["lbfgs"])
        times.append(time.perf_counter() - t)
        dev = -2 * res.llf
    return {"statsmodels_s": statistics.median(times), "statsmodels_deviance": dev}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="*", type=int, help="level-1 sizes to run (default: all four)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--peer-timeout", type=float, default=120.0, help="seconds one statsmodels fit may take")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        n, J, seed = args.child
        out = time_statsmodels(n, J, seed, args.repeats) if args.peer else time_one(n, J, seed, args.repeats)
        print(json.dumps(out))
        return
    sizes = [s for s in SIZES if not args.sizes or s[0] in args.sizes]
    rows = []
    peer_ok = True
    for n, J in sizes:
        generate(n, J, args.seed)
        cmd = [sys.executable, __file__, "--child", str(n), str(J), str(args.seed), "--repeats", str(args.repeats)]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        row["statsmodels_s"] = None
        if peer_ok:
            try:
                peer = subprocess.run(cmd + ["--peer", "--repeats", "1"], capture_output=True, text=True,
                                      timeout=args.peer_timeout)
                if peer.returncode == 0:
                    row.update(json.loads(peer.stdout))
                else:
                    peer_ok = False
            except subprocess.TimeoutExpired:
                peer_ok = False  # larger sizes will not finish either
        rows.append(row)
        sm = row.get("statsmodels_s")
        ratio = f"{sm / row['fit_s']:8.1f}x" if sm else "       -"
        if sm:  # both maximize the same REML likelihood; ours must not be worse
            ratio += f"  deviance ours - statsmodels {row['deviance'] - row['statsmodels_deviance']:+.1e}"
        print(f"{n:>10,} rows {J:>7,} units  build {row['build_s']:8.3f} s  fit {row['fit_s']:8.3f} s "
              f"(engine {row['engine_s']:.3f} s, {row['iterations']} it)  peak {row['peak_bytes'] / 2**30:5.2f} GiB  "
              f"statsmodels {('%.2f s' % sm) if sm else 'skipped':>10}  ratio {ratio}", flush=True)
    (HERE / "data" / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
