"""Streaming benchmark: `mdm build --engine stream` and `fit` on 10,000,000 rows, time and peak memory.

    python benchmarks/bench_stream.py                        # 10,000,000 rows, 100,000 units
    python benchmarks/bench_stream.py --rows 1000000 --units 10000 --data-dir /tmp/bench

The data are bench.py's model (random intercept and slope, three level-1 and two level-2
predictors), generated deterministically from --seed in chunks and written with pyarrow as CSV
and as Parquet. Every step runs as the `hlmcli` command under /usr/bin/time -v, so the wall time
and the peak memory (max RSS) are the whole process's; each is the median of --repeats runs.
The in-memory engine runs once on the same CSV for the side-by-side, and the two fits' numbers
must agree to 1e-10 relative.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
LEVEL1 = "y = b0 + b1*group(x1) + b2*x2 + b3*grand(x3) + r"
LEVEL2 = ["b0 = g00 + g01*w1 + g02*w2 + u0", "b1 = g10 + g11*w1 + u1"]
MODEL = ["-1", LEVEL1] + [a for eq in LEVEL2 for a in ("-2", eq)]


def generate(n: int, J: int, seed: int, folder: Path, chunk: int = 2_000_000, shuffle: bool = False,
             parquet_dir: bool = False, csv: bool = True) -> dict:
    """Level-1 records (in chunks: memory stays bounded) and the level-2 file; bench.py's model.
    shuffle: records are written in an order where each unit's records are spread over the file
    (a unit's records fall in several chunks/partitions)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{n}_{J}_{seed}{'_s' if shuffle else ''}"
    paths = {"l1_csv": folder / f"l1_{tag}.csv", "l1_parquet": folder / (f"l1_{tag}" if parquet_dir else f"l1_{tag}.parquet"),
             "l2_csv": folder / f"l2_{J}_{seed}.csv"}
    done = folder / f"done_{tag}{'_dir' if parquet_dir else ''}{'_csv' if csv else ''}"
    if done.exists():
        return paths
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n - J, np.full(J, 1.0 / J)) + 1
    w1 = rng.binomial(1, 0.4, J).astype(float)
    w2 = rng.normal(size=J)
    u = rng.multivariate_normal([0, 0], [[4.0, 0.6], [0.6, 1.0]], size=J)
    xj = 0.5 * rng.normal(size=J)
    pacsv.write_csv(pa.table({"id": np.arange(J) + 1000, "w1": w1, "w2": w2.round(4)}), paths["l2_csv"])
    unit_all = np.repeat(np.arange(J, dtype=np.int64), sizes)
    if shuffle:  # each unit's records spread over the whole file: a random permutation, made in place
        rng.shuffle(unit_all)
    b0 = 12 + 2 * w1 + 1.5 * w2 + u[:, 0]
    b1 = 2 - 1 * w1 + u[:, 1]
    csv_writer = None
    pq_writer = None
    if parquet_dir:
        paths["l1_parquet"].mkdir(exist_ok=True)
    for k, start in enumerate(range(0, n, chunk)):
        unit = unit_all[start:start + chunk]
        m = unit.size
        x1 = rng.normal(size=m) + xj[unit]
        x2 = rng.binomial(1, 0.5, m).astype(float)
        x3 = rng.normal(50, 10, size=m)
        y = b0[unit] + b1[unit] * x1 + 0.8 * x2 + 0.05 * x3 + rng.normal(scale=6, size=m)
        table = pa.table({"id": unit + 1000, "x1": x1.round(4), "x2": x2, "x3": x3.round(3), "y": y.round(4)})
        if csv:
            if csv_writer is None:
                csv_writer = pacsv.CSVWriter(paths["l1_csv"], table.schema)
            csv_writer.write_table(table)
        if parquet_dir:
            pq.write_table(table, paths["l1_parquet"] / f"part-{k:05d}.parquet")
        else:
            if pq_writer is None:
                pq_writer = pq.ParquetWriter(paths["l1_parquet"], table.schema)
            pq_writer.write_table(table, row_group_size=1 << 20)
    for w in (csv_writer, pq_writer):
        if w is not None:
            w.close()
    done.write_text("ok")
    return paths


def hlmcli() -> list[str]:
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
    return [exe] if exe else [sys.executable, "-m", "hlmcli.cli"]


def timed(args: list, stdout=None) -> dict:
    """One command under /usr/bin/time -v: wall seconds, peak memory (bytes), exit code, stdout."""
    proc = subprocess.run(["/usr/bin/time", "-v"] + hlmcli() + [str(a) for a in args], capture_output=True, text=True)
    err = proc.stderr
    cpu = sum(float(re.search(rf"{k} time \(seconds\): (\S+)", err).group(1)) for k in ("User", "System"))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", err).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    if proc.returncode not in (0,):
        tail = [line for line in err.splitlines() if "hlmcli" in line][:2]
        return {"wall_s": seconds, "cpu_s": cpu, "peak_bytes": rss, "rc": proc.returncode, "error": " ".join(tail)[:300]}
    return {"wall_s": seconds, "cpu_s": cpu, "peak_bytes": rss, "rc": 0, "stdout": proc.stdout}


def median_run(args, repeats: int) -> dict:
    runs = [timed(args) for _ in range(repeats)]
    best = runs[0]
    return {"wall_s": statistics.median(r["wall_s"] for r in runs), "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_bytes": max(r["peak_bytes"] for r in runs),
            "rc": max(r["rc"] for r in runs), "stdout": best.get("stdout"), "all_wall_s": [r["wall_s"] for r in runs]}


def gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--units", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=HERE / "data")
    ap.add_argument("--skip-memory", action="store_true", help="do not run the in-memory engine for comparison")
    args = ap.parse_args()
    paths = generate(args.rows, args.units, args.seed, args.data_dir)
    work = args.data_dir
    results = {"rows": args.rows, "units": args.units, "cores": os.cpu_count(),
               "load_average_at_start": os.getloadavg()[0]}
    fits = {}
    for fmt in ("csv", "parquet"):
        l1, l2 = paths[f"l1_{fmt}"], paths["l2_csv"]
        ssm = work / f"stream_{fmt}.ssm"
        build = median_run(["mdm", "build", l1, l2, "--id", "id", "--engine", "stream", "-o", ssm, "-q"], args.repeats)
        fit = median_run(["fit", ssm, *MODEL, "--format", "json"], args.repeats)
        direct = median_run(["fit", l1, l2, "--id", "id", "--engine", "stream", *MODEL, "--format", "json"], args.repeats)
        fits[fmt] = json.loads(fit["stdout"])
        fits[fmt + "_direct"] = json.loads(direct["stdout"])
        results[fmt] = {"build": {k: build[k] for k in ("wall_s", "cpu_s", "peak_bytes", "all_wall_s")},
                        "fit_from_statistics": {k: fit[k] for k in ("wall_s", "cpu_s", "peak_bytes", "all_wall_s")},
                        "fit_from_files": {k: direct[k] for k in ("wall_s", "cpu_s", "peak_bytes", "all_wall_s")},
                        "statistics_archive_bytes": ssm.stat().st_size}
        total = build["wall_s"] + fit["wall_s"]
        print(f"{fmt:8s} build --engine stream {build['wall_s']:6.2f} s (cpu {build['cpu_s']:.2f} s, {gib(build['peak_bytes'])})  "
              f"fit {fit['wall_s']:5.2f} s (cpu {fit['cpu_s']:.2f} s, {gib(fit['peak_bytes'])})  build+fit {total:6.2f} s  |  "
              f"fit --engine stream from the files {direct['wall_s']:6.2f} s (cpu {direct['cpu_s']:.2f} s, "
              f"{gib(direct['peak_bytes'])})", flush=True)
    if not args.skip_memory:
        mdm = work / "memory.mdm"
        build = timed(["mdm", "build", paths["l1_csv"], paths["l2_csv"], "--id", "id", "-o", mdm, "-q"])
        fit = timed(["fit", mdm, *MODEL, "--format", "json"])
        results["memory"] = {"build": {k: build[k] for k in ("wall_s", "cpu_s", "peak_bytes", "rc")},
                             "fit": {k: fit[k] for k in ("wall_s", "cpu_s", "peak_bytes", "rc")}}
        print(f"memory   build {build['wall_s']:6.2f} s (cpu {build['cpu_s']:.2f} s, {gib(build['peak_bytes'])})  "
              f"fit {fit['wall_s']:5.2f} s (cpu {fit['cpu_s']:.2f} s, {gib(fit['peak_bytes'])})", flush=True)
        if fit["rc"] == 0:
            mem = json.loads(fit["stdout"])
            sys.path.insert(0, str(HERE.parent / "tests"))
            from engine_cases import differences

            worst = {}
            for name, other in fits.items():
                diff = differences(mem, other)
                worst[name] = diff[:3]
            results["agreement_with_memory_1e-10"] = {k: not v for k, v in worst.items()}
            results["deviance"] = mem["deviance"]
            print("equal to the in-memory fit to 1e-10:", results["agreement_with_memory_1e-10"], flush=True)
        mdm.unlink(missing_ok=True)
    target = HERE / "stream_results.json"
    earlier = json.loads(target.read_text()) if target.exists() else {}
    if args.skip_memory and earlier.get("rows") == args.rows and "memory" in earlier:
        results["memory"] = earlier["memory"]  # kept from the last run that measured it
        results["memory_load_average"] = earlier.get("memory_load_average", earlier.get("load_average_at_start"))
    elif "memory" in results:
        results["memory_load_average"] = results["load_average_at_start"]
    target.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
