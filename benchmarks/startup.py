"""Start-up: whole-process time and `python -X importtime` of each everyday command.

    python benchmarks/startup.py                    # this checkout, 15 interleaved runs per command
    python benchmarks/startup.py --runs 31 --json out.json
    python benchmarks/startup.py --checkout /path/to/other/clone --label before
    python benchmarks/startup.py --compare /path/to/clean/clone --million --json out.json   # before/after

Each command runs as a user runs it (a fresh interpreter through the CLI's entry point), round-robin
over the commands so a change in the machine's load hits them all alike. Reported per command: the
median wall time and the median CPU time (user + system, from the child's rusage: on a busy machine the
CPU time is the steadier number), and from one `-X importtime` run the total import time and that of
each heavy package the command loads. The archives are built once, first, from the shipped sample data.
`--checkout` puts another clone first on PYTHONPATH (its `hlmcli` package is the one imported), to
compare before and after on the same machine; `--compare CLONE` runs CLONE (before) and this checkout
(after) in one run, interleaved command by command, so both see the same load. `--million` adds
bench.py's 1,000,000-row fit from a warm archive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY = "import sys; from hlmcli.cli import main; sys.argv[0] = 'hlmcli'; main()"

M4 = ["-1", "MATHACH = b0 + b1*group(SES) + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10 + g11*SECTOR + u1"]
EG = ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
      "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10"]
CONTRA = ["--family", "bernoulli", "-1", "USE = b0 + b1*URBAN + b2*AGE", "-2", "b0 = g00 + u0", "-2", "b1 = g10",
          "-2", "b2 = g20"]


def commands(work: Path) -> dict[str, list[str]]:
    return {
        "--version": ["--version"],
        "--help": ["--help"],
        "mdm info (HSB)": ["mdm", "info", str(work / "hsb.mdm")],
        "fit HSB model 4, archive": ["fit", str(work / "hsb.mdm"), *M4],
        "fit HSB model 4, archive, JSON": ["fit", str(work / "hsb.mdm"), "--format", "json", *M4],
        "fit three levels (egsingle), archive": ["fit", str(work / "eg.mdm"), *EG],
        "fit Bernoulli PQL (contraception), archive": ["fit", str(work / "contra.mdm"), *CONTRA],
    }


def build_archives(env: dict, work: Path) -> None:
    s, h = ROOT / "sample_data", ROOT / "tests" / "data" / "hglm"
    builds = [
        [str(s / "hsb" / "hsb1.csv"), str(s / "hsb" / "hsb2.csv"), "--id", "ID", "-o", str(work / "hsb.mdm")],
        [str(s / "eg" / "eg_l1.csv"), str(s / "eg" / "eg_l2.csv"), str(s / "eg" / "eg_l3.csv"), "--id2", "CHILDID",
         "--id3", "SCHOOLID", "-o", str(work / "eg.mdm")],
        [str(h / "contra_l1.csv"), str(h / "contra_l2.csv"), "--id", "DISTRICT", "-o", str(work / "contra.mdm")],
    ]
    for args in builds:
        subprocess.run([sys.executable, "-c", ENTRY, "mdm", "build", *args], env=env, check=True,
                       capture_output=True, cwd=work)


def run_once(args: list[str], env: dict) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one whole process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=env["HLMCLI_BENCH_CWD"])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{args}: exit {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


WATCHED = ["click", "numpy", "scipy.special", "scipy.special._ufuncs", "numpy.ma", "scipy.linalg", "scipy.optimize", "scipy.stats", "pandas", "pyarrow",
           "matplotlib", "jinja2", "dask"]


def import_times(args: list[str], env: dict) -> dict[str, float]:
    """From one `-X importtime` run: the total import time (ms; the top-level imports' cumulative times)
    and the cumulative time of each watched package where it was first imported (nested in whatever
    imported it, so the parts overlap)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", ENTRY, *args], env=env, capture_output=True,
                          text=True, cwd=env["HLMCLI_BENCH_CWD"])
    total, parts = 0.0, {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        cumulative = int(m.group(2)) / 1000
        if m.group(3) == "":
            total += cumulative
        if m.group(4) in WATCHED:
            parts[m.group(4)] = round(cumulative, 1)
    return {"total": round(total, 1), **{k: parts[k] for k in WATCHED if k in parts}}


def tree_env(tree: Path, work: Path, label: str) -> dict:
    """The environment that runs `tree`'s hlmcli: first on PYTHONPATH, its own bytecode cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env["HLMCLI_CACHE_DIR"] = str(work / "cache")
    # `python -c` puts the current folder first on sys.path: run where no hlmcli package is
    env["HLMCLI_BENCH_CWD"] = str(work)
    # bytecode written once (by the warm-up) and read after, as after `pip install .`; where
    # PYTHONDONTWRITEBYTECODE is set, an editable checkout would otherwise recompile hlmcli on every run
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache" / (label or "this"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def million(env: dict, work: Path, seed: int) -> list[str]:
    """bench.py's 1,000,000-row model (10,000 units) from its archive, built once (a warm archive)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    l1, l2 = bench.generate(1_000_000, 10_000, seed)
    target = work / "million.mdm"
    subprocess.run([sys.executable, "-c", ENTRY, "mdm", "build", str(l1), str(l2), "--id", "id", "-o", str(target), "-q"],
                   env=env, check=True, capture_output=True, cwd=work)
    return ["fit", str(target), "-1", bench.LEVEL1, *[a for eq in bench.LEVEL2 for a in ("-2", eq)]]


def summary(label: str, tree: Path, runs: int, load: list, times: dict, imports: dict) -> dict:
    return {
        "label": label, "checkout": str(tree), "runs": runs,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_average_before_after": load,
        "commands": {name: {"wall_median_s": round(statistics.median(w for w, _ in t), 4),
                            "cpu_median_s": round(statistics.median(c for _, c in t), 4),
                            "import_ms": imports[name]} for name, t in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--checkout", type=Path, help="another clone of hlmcli to measure (default: this one)")
    parser.add_argument("--label", default="")
    parser.add_argument("--compare", type=Path, metavar="CLONE",
                        help="measure CLONE ('before') and this checkout ('after') in the same run, interleaved")
    parser.add_argument("--million", action="store_true",
                        help="add bench.py's 1,000,000-row fit from a warm archive (data generated once)")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()

    trees = ({"before": opts.compare.resolve(), "after": ROOT} if opts.compare
             else {opts.label or "": (opts.checkout or ROOT).resolve()})
    with tempfile.TemporaryDirectory(prefix="hlmcli-startup-") as tmp:
        work = Path(tmp)
        envs = {label: tree_env(tree, work, label) for label, tree in trees.items()}
        first = next(iter(envs.values()))
        build_archives(first, work)
        cmds = commands(work)
        if opts.million:
            cmds["fit 1,000,000 rows, warm archive"] = million(first, work, opts.seed)
        load_before = os.getloadavg()
        times = {label: {name: [] for name in cmds} for label in trees}
        for env in envs.values():  # one warm-up each (page cache, .pyc files, the archive's verification)
            for args in cmds.values():
                run_once(args, env)
        for _ in range(opts.runs):  # round-robin over the commands and the checkouts
            for name, args in cmds.items():
                for label, env in envs.items():
                    times[label][name].append(run_once(args, env))
        load_after = os.getloadavg()
        imports = {label: {name: import_times(args, env) for name, args in cmds.items()} for label, env in envs.items()}

    load = [round(load_before[0], 2), round(load_after[0], 2)]
    results = {label: summary(label, tree, opts.runs, load, times[label], imports[label]) for label, tree in trees.items()}
    for label, result in results.items():
        print(f"{label or result['checkout']}: {result['machine']}, load {result['load_average_before_after']}, "
              f"median of {opts.runs}")
        print(f"{'command':45s} {'wall':>8s} {'CPU':>8s}  imports, ms (-X importtime, one run)")
        for name, r in result["commands"].items():
            top = ", ".join(f"{k} {v:.0f}" for k, v in r["import_ms"].items())
            print(f"{name:45s} {r['wall_median_s']:7.3f}s {r['cpu_median_s']:7.3f}s  {top}")
    if opts.json:
        out = results if opts.compare else next(iter(results.values()))
        opts.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
