"""Dask benchmark: 100,000,000 level-1 rows in 1,000,000 units, a Parquet dataset, `fit --engine dask`.

    python benchmarks/bench_dask.py --data-dir /tmp/bench              # 100M rows, 1M units, 50 files
    python benchmarks/bench_dask.py --rows 10000000 --units 100000     # a tenth

The model and the data are bench.py's (random intercept and slope; group-, grand- and uncentred
level-1 predictors; two level-2 predictors), generated deterministically from --seed, one
partition file at a time (memory stays bounded). The dataset is laid out so that units span
partitions: every unit's records are split over three consecutive files (as a register written
year by year would be), so no file holds a whole unit of its own and the per-partition summaries
must be merged across files.

The fit runs as the `hlmcli` command with a LocalCluster of 2 worker processes (this machine has
2 cores); a sampler (psutil, every 0.2 s) records the peak memory of every process in the tree
(client and scheduler, nannies, workers) and the peak of their sum. The in-memory engine then
reads the same records (one Parquet file: its reader takes single files) under a watchdog that
kills it when its memory passes --memory-cap-gib (default 12 GiB: the machine has 24 GiB and is
shared), and its failure or its peak memory is recorded side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
LEVEL1 = "y = b0 + b1*group(x1) + b2*x2 + b3*grand(x3) + r"
LEVEL2 = ["b0 = g00 + g01*w1 + g02*w2 + u0", "b1 = g10 + g11*w1 + u1"]
MODEL = ["-1", LEVEL1] + [a for eq in LEVEL2 for a in ("-2", eq)]
SPAN = 3  # files each unit's records are split over


def generate(n: int, J: int, parts: int, seed: int, folder: Path) -> tuple[Path, Path]:
    """A Parquet dataset of `parts` files and a level-2 CSV. Units are in blocks of J/parts; a unit of
    block b has its records split over files b, b+1, b+2 (mod parts)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tag = f"{n}_{J}_{parts}_{seed}"
    l1, l2 = folder / f"l1_{tag}", folder / f"l2_{J}_{seed}.csv"
    done = folder / f"done_{tag}"
    if done.exists():
        return l1, l2
    l1.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n - J * SPAN, np.full(J, 1.0 / J)) + SPAN  # at least one record in each of its files
    w1 = rng.binomial(1, 0.4, J).astype(float)
    w2 = rng.normal(size=J)
    u = rng.multivariate_normal([0, 0], [[4.0, 0.6], [0.6, 1.0]], size=J)
    xj = 0.5 * rng.normal(size=J)
    b0 = 12 + 2 * w1 + 1.5 * w2 + u[:, 0]
    b1 = 2 - 1 * w1 + u[:, 1]
    pacsv.write_csv(pa.table({"id": np.arange(J, dtype=np.int64) + 1000, "w1": w1, "w2": w2.round(4)}), l2)
    # split each unit's records over its SPAN files
    share = np.empty((J, SPAN), dtype=np.int64)
    share[:, 0] = sizes // SPAN + sizes % SPAN
    share[:, 1:] = (sizes // SPAN)[:, None]
    edges = np.linspace(0, J, parts + 1).astype(np.int64)
    for p in range(parts):
        units = []
        counts = []
        for r in range(SPAN):
            b = (p - r) % parts
            block = np.arange(edges[b], edges[b + 1])
            units.append(block)
            counts.append(share[block, r])
        unit = np.repeat(np.concatenate(units), np.concatenate(counts))
        prng = np.random.default_rng([seed, p])
        prng.shuffle(unit)  # records of a file in no particular order
        m = unit.size
        x1 = prng.normal(size=m) + xj[unit]
        x2 = prng.binomial(1, 0.5, m).astype(float)
        x3 = prng.normal(50, 10, size=m)
        y = b0[unit] + b1[unit] * x1 + 0.8 * x2 + 0.05 * x3 + prng.normal(scale=6, size=m)
        table = pa.table({"id": unit + 1000, "x1": x1.round(4), "x2": x2, "x3": x3.round(3), "y": y.round(4)})
        pq.write_table(table, l1 / f"part-{p:05d}.parquet", row_group_size=1 << 20)
        print(f"  wrote part {p + 1}/{parts} ({m:,} rows)", file=sys.stderr, flush=True)
    done.write_text("ok")
    return l1, l2


def hlmcli() -> list[str]:
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
    return [exe] if exe else [sys.executable, "-m", "hlmcli.cli"]


def run_sampled(args: list, limit_bytes: int | None = None) -> dict:
    """Run a command; sample the RSS of it and all its descendants every 0.2 s. With limit_bytes,
    the command is killed when their sum passes it (a watchdog: the machine is shared, and the
    OOM killer might pick another process)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(hlmcli() + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    peaks: dict = {}
    total = [0]
    killed = [None]
    cpu: dict = {}  # pid -> CPU seconds at its last sample (a process's last 0.2 s may be missed)
    stop = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            s = 0
            for q in procs:
                try:
                    rss = q.memory_info().rss
                    name = " ".join(q.cmdline()[:6])[-90:]
                    times = q.cpu_times()
                    cpu[q.pid] = times.user + times.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                s += rss
                key = (q.pid, name)
                peaks[key] = max(peaks.get(key, 0), rss)
            total[0] = max(total[0], s)
            if limit_bytes and s > limit_bytes and killed[0] is None:
                killed[0] = time.perf_counter() - t0
                for q in reversed(procs):
                    try:
                        q.kill()
                    except psutil.NoSuchProcess:
                        pass
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "cpu_s": sum(cpu.values()), "peak_total_bytes": total[0],
            "killed_after_s": killed[0], "load_average": os.getloadavg()[0],
            "processes": [{"pid": pid, "command": name, "peak_bytes": b} for (pid, name), b in sorted(peaks.items())],
            "stdout": out, "stderr_tail": err.strip().splitlines()[-2:] if err.strip() else []}


def gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--units", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=50)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--data-dir", type=Path, default=HERE / "data")
    ap.add_argument("--memory-cap-gib", type=float, default=12.0, help="kill the in-memory engine above this")
    ap.add_argument("--skip-memory", action="store_true", help="run the Dask engine only")
    ap.add_argument("--skip-dask", action="store_true", help="run the in-memory side only (after a Dask run)")
    ap.add_argument("--phases", action="store_true", help="also time the phases of the Dask fit (in a child process)")
    ap.add_argument("--phases-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phases_child:
        l1, l2 = generate(args.rows, args.units, args.parts, args.seed, args.data_dir)
        print(json.dumps(phases(l1, l2)))
        return
    t = time.perf_counter()
    l1, l2 = generate(args.rows, args.units, args.parts, args.seed, args.data_dir)
    gen_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in l1.iterdir())
    print(f"dataset {l1} ({size / 2**30:.2f} GiB on disk, {args.parts} files; generated in {gen_s:.0f} s)", flush=True)
    results = {"rows": args.rows, "units": args.units, "files": args.parts, "dataset_bytes": size,
               "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}
    target = HERE / "dask_results.json"
    earlier = json.loads(target.read_text()) if target.exists() else {}
    if earlier.get("rows") == args.rows and earlier.get("units") == args.units:
        results = {**earlier, **results}  # a run of one side keeps the other side's numbers
    if args.skip_dask:
        fit = results.get("dask_fit_json")
    else:
        dask_run = run_sampled(["fit", l1, l2, "--id", "id", "--engine", "dask", *MODEL, "--format", "json", "-q"])
        fit = json.loads(dask_run.pop("stdout")) if dask_run["rc"] == 0 else None
        results["dask"] = dask_run
        results["dask_fit_json"] = fit
        report_dask(results, fit)
    if args.phases:
        cmd = [sys.executable, __file__, "--phases-child", "--rows", str(args.rows), "--units", str(args.units),
               "--parts", str(args.parts), "--seed", str(args.seed), "--data-dir", str(args.data_dir)]
        results["dask_phases"] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print("phases:", ", ".join(f"{k} {v:.1f}" for k, v in results["dask_phases"].items() if k.endswith("_s")),
              flush=True)
    if not args.skip_memory:
        compare_memory(args, l1, l2, results, fit)
    target.write_text(json.dumps(results, indent=1) + "\n")


def phases(l1: Path, l2: Path) -> dict:
    """Where the Dask fit's time goes (run in a child process): starting the LocalCluster, the pass
    over the records on the workers, and the client's work (level-2 file, matching, the fit)."""
    import logging

    from distributed import LocalCluster

    from hlmcli.analysis.engines import analyse_summary, frame_of_dask, model_columns, summarise
    from hlmcli.language.equations import RunOptions, spec_from_inputs

    out = {}
    t = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR) as cluster:
        out["cluster_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        frame, cols, level2_data = frame_of_dask(l1, l2, "id", "id")
        from hlmcli.data.design import variables_of

        spec = spec_from_inputs(LEVEL1, LEVEL2, None, variables_of(frame), RunOptions(), False)
        names, l2names = model_columns(spec)
        out["level2_file_s"] = time.perf_counter() - t
        t = time.perf_counter()
        summary = summarise(frame, cols, level2_data, names, l2names, "dask", False, lambda m: None,
                            scheduler=cluster.scheduler_address, paths=(l1, l2))
        out["records_pass_and_matching_s"] = time.perf_counter() - t
    t = time.perf_counter()
    analysis = analyse_summary(spec, summary)
    out["fit_on_client_s"] = time.perf_counter() - t
    out["deviance"] = analysis.result.deviance
    return out


def report_dask(results: dict, fit) -> None:
    dask_run = results["dask"]
    print(f"dask     rc {dask_run['rc']}  wall {dask_run['wall_s']:.1f} s  cpu {dask_run['cpu_s']:.1f} s (all processes)  "
          f"load average {dask_run['load_average']:.1f}  peak of all processes together "
          f"{gib(dask_run['peak_total_bytes'])}", flush=True)
    for p in dask_run["processes"]:
        print(f"           {gib(p['peak_bytes'])}  {p['command']}", flush=True)
    if fit:
        results["dask_fit"] = {k: fit[k] for k in ("deviance", "sigma2", "tau", "n_level1", "n_level2", "converged")}
        results["dask_fit"]["gamma"] = [f["estimate"] for f in fit["fixed_effects"]]
        print(f"           deviance {fit['deviance']:.6f}  N {fit['n_level1']:,}  J {fit['n_level2']:,}  "
              f"certified {fit['certificate']['certified']}", flush=True)


def compare_memory(args, l1, l2, results: dict, fit) -> None:
    if True:
        single = args.data_dir / f"{l1.name}.parquet"
        if not single.exists():  # the in-memory reader takes one file: the dataset copied into one, batch by batch
            import pyarrow.dataset as ds
            import pyarrow.parquet as pq

            data = ds.dataset(l1, format="parquet")
            with pq.ParquetWriter(single, data.schema) as writer:
                for batch in data.to_batches():
                    writer.write_batch(batch)
        mdm = args.data_dir / "memory_engine.mdm"
        cap = int(args.memory_cap_gib * 2**30)
        build = run_sampled(["mdm", "build", single, l2, "--id", "id", "-o", mdm, "-q"], cap)
        build.pop("stdout")
        results["memory_build"] = build
        killed = f"killed after {build['killed_after_s']:.1f} s  " if build["killed_after_s"] else ""
        print(f"memory   build, watchdog at {args.memory_cap_gib:g} GiB: rc {build['rc']}  {killed}wall {build['wall_s']:.1f} s  "
              f"peak {gib(build['peak_total_bytes'])}  {' '.join(build['stderr_tail'])[:200]}", flush=True)
        if build["rc"] == 0:
            mem = run_sampled(["fit", mdm, *MODEL, "--format", "json", "-q"], cap)
            out = mem.pop("stdout")
            results["memory_fit"] = mem
            print(f"memory   fit rc {mem['rc']}  wall {mem['wall_s']:.1f} s  peak {gib(mem['peak_total_bytes'])}", flush=True)
            if mem["rc"] == 0 and fit:
                sys.path.insert(0, str(HERE.parent / "tests"))
                from engine_cases import differences

                results["dask_equals_memory_1e-10"] = not differences(json.loads(out), fit)
                print("dask equals in-memory to 1e-10:", results["dask_equals_memory_1e-10"], flush=True)
        mdm.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
