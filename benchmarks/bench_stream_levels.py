"""Streaming benchmark at three levels: `fit L1 L2 L3 --engine stream` on 10,000,000 level-1 records,
time and peak memory.

    python benchmarks/bench_stream_levels.py                                  # 10,000,000 records
    python benchmarks/bench_stream_levels.py --records 1000000 --level2 10000 --level3 100 --memory

The data are bench_three_level.py's model (random intercept and slope at levels 2 and 3, a level-2
predictor on the intercept, a level-3 predictor on the level-2 intercept), generated
deterministically from --seed in chunks and written with pyarrow as three CSV files (the level-1
file holds only the level-2 id, x and y; the level-2 file links each level-2 unit to its level-3
unit). --shuffle spreads each level-2 unit's records over the whole file. The fit runs as the
`hlmcli` command under /usr/bin/time -v, so the wall time, CPU time and peak memory (max RSS) are
the whole process's (median of --repeats runs). --memory also runs the in-memory engine once on
the same files; the two fits' JSON must then agree to 1e-10 relative (tests/engine_cases.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_stream import gib, timed  # noqa: E402

MODEL = ["-1", "y = p0 + p1*x + e", "-2", "p0 = b00 + b01*w + r0", "-2", "p1 = b10 + r1",
         "-3", "b00 = g000 + g001*z + u00", "-3", "b01 = g010", "-3", "b10 = g100 + u10"]
IDS = ["--id2", "id2", "--id3", "id3"]


def generate(n: int, J2: int, J3: int, seed: int, folder: Path, shuffle: bool, chunk: int = 2_000_000) -> list[Path]:
    """Level-1 records (written in chunks: memory stays bounded), the level-2 and level-3 files."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    folder.mkdir(parents=True, exist_ok=True)
    tag = f"{n}_{J2}_{J3}_{seed}{'_s' if shuffle else ''}"
    paths = [folder / f"l1_{tag}.csv", folder / f"l2_{J2}_{J3}_{seed}.csv", folder / f"l3_{J3}_{seed}.csv"]
    done = folder / f"done3_{tag}"
    if done.exists():
        return paths
    rng = np.random.default_rng(seed)
    n3 = rng.multinomial(J2 - J3, np.full(J3, 1.0 / J3)) + 1  # level-2 units per level-3 unit
    unit3 = np.repeat(np.arange(J3), n3)
    n2 = rng.multinomial(n - J2, np.full(J2, 1.0 / J2)) + 1  # records per level-2 unit
    w = rng.normal(size=J2)
    z = rng.normal(size=J3)
    u = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], size=J3)
    r = rng.multivariate_normal([0, 0], [[2.0, 0.3], [0.3, 0.5]], size=J2)
    b0 = 10 + 0.5 * w + 1.0 * z[unit3] + u[unit3, 0] + r[:, 0]
    b1 = 2 + u[unit3, 1] + r[:, 1]
    pacsv.write_csv(pa.table({"id3": np.arange(J3) + 500, "z": z.round(4)}), paths[2])
    pacsv.write_csv(pa.table({"id2": np.arange(J2) + 100000, "id3": unit3 + 500, "w": w.round(4)}), paths[1])
    unit_all = np.repeat(np.arange(J2, dtype=np.int64), n2)
    if shuffle:
        rng.shuffle(unit_all)
    writer = None
    for start in range(0, n, chunk):
        unit = unit_all[start:start + chunk]
        x = rng.normal(size=unit.size)
        y = b0[unit] + b1[unit] * x + rng.normal(scale=2.0, size=unit.size)
        table = pa.table({"id2": unit + 100000, "x": x.round(4), "y": y.round(4)})
        if writer is None:
            writer = pacsv.CSVWriter(paths[0], table.schema)
        writer.write_table(table)
    writer.close()
    done.write_text("ok")
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--level2", type=int, default=100_000)
    ap.add_argument("--level3", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=20261206)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--shuffle", action="store_true", help="each level-2 unit's records spread over the file")
    ap.add_argument("--memory", action="store_true", help="also fit in memory and compare the JSON")
    ap.add_argument("--data-dir", type=Path, default=HERE / "data")
    ap.add_argument("--out", type=Path, default=HERE / "stream_levels_results.json")
    args = ap.parse_args()
    paths = generate(args.records, args.level2, args.level3, args.seed, args.data_dir, args.shuffle)
    runs = [timed(["fit", *paths, *IDS, *MODEL, "--engine", "stream", "--format", "json", "-q"])
            for _ in range(args.repeats)]
    if any(r["rc"] for r in runs):
        raise SystemExit(f"the stream fit failed: {runs[0].get('error')}")
    stream = {"wall_s": statistics.median(r["wall_s"] for r in runs), "cpu_s": statistics.median(r["cpu_s"] for r in runs),
              "peak_bytes": max(r["peak_bytes"] for r in runs), "all_wall_s": [r["wall_s"] for r in runs]}
    fit = json.loads(runs[0]["stdout"])
    results = {"records": args.records, "level2_units": args.level2, "level3_units": args.level3,
               "shuffled": args.shuffle, "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
               "level1_csv_bytes": paths[0].stat().st_size, "stream": stream,
               "certified": fit["certificate"]["certified"], "deviance": fit["deviance"],
               "n_units": [fit["n_level1"], fit["n_level2"], fit["n_level3"]]}
    print(f"stream  fit {stream['wall_s']:7.2f} s (cpu {stream['cpu_s']:.2f} s, peak {gib(stream['peak_bytes'])})  "
          f"{args.records:,} records, certified {fit['certificate']['certified']}", flush=True)
    if args.memory:
        mem = timed(["fit", *paths, *IDS, *MODEL, "--format", "json", "-q", "--cache-dir", args.data_dir / "cache"])
        results["memory"] = {k: mem[k] for k in ("wall_s", "cpu_s", "peak_bytes", "rc")}
        print(f"memory  fit {mem['wall_s']:7.2f} s (cpu {mem['cpu_s']:.2f} s, peak {gib(mem['peak_bytes'])})", flush=True)
        if mem["rc"] == 0:
            sys.path.insert(0, str(HERE.parent / "tests"))
            from engine_cases import differences

            diff = differences(json.loads(mem["stdout"]), fit)
            results["equal_to_memory_1e-10"] = not diff
            results["first_differences"] = [list(map(str, d)) for d in diff[:3]]
            print("equal to the in-memory fit to 1e-10:", not diff, diff[:3], flush=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
