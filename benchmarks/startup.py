"""Start-up: whole-process time and `python -X importtime` of each everyday command.

    python benchmarks/startup.py                    # this checkout, 15 interleaved runs per command
    python benchmarks/startup.py --runs 31 --json out.json
    python benchmarks/startup.py --checkout /path/to/other/clone --label before

Each command runs as a user runs it (a fresh interpreter through the CLI's entry point), round-robin
over the commands so a change in the machine's load hits them all alike. Reported per command: the
median wall time and the median CPU time (user + system, from the child's rusage: on a busy machine the
CPU time is the steadier number), and from one `-X importtime` run the total import time and that of
each heavy package the command loads. The archives are built once, first, from the shipped sample data.
`--checkout` puts another clone first on PYTHONPATH (its `hlmcli` package is the one imported), to
compare before and after on the same machine in the same run.
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


WATCHED = ["click", "numpy", "scipy.special", "scipy.linalg", "scipy.optimize", "scipy.stats", "pandas", "pyarrow",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--checkout", type=Path, help="another clone of hlmcli to measure (default: this one)")
    parser.add_argument("--label", default="")
    parser.add_argument("--json", type=Path, help="write the results here")
    opts = parser.parse_args()

    tree = (opts.checkout or ROOT).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with tempfile.TemporaryDirectory(prefix="hlmcli-startup-") as tmp:
        work = Path(tmp)
        env["HLMCLI_CACHE_DIR"] = str(work / "cache")
        # `python -c` puts the current folder first on sys.path: run where no hlmcli package is
        env["HLMCLI_BENCH_CWD"] = str(work)
        # bytecode written once (by the warm-up) and read after, as after `pip install .`; where
        # PYTHONDONTWRITEBYTECODE is set, an editable checkout would otherwise recompile hlmcli on every run
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        build_archives(env, work)
        cmds = commands(work)
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
        for name, args in cmds.items():  # one warm-up each (page cache, .pyc files)
            run_once(args, env)
        for _ in range(opts.runs):
            for name, args in cmds.items():
                times[name].append(run_once(args, env))
        load_after = os.getloadavg()
        imports = {name: import_times(args, env) for name, args in cmds.items()}

    result = {
        "label": opts.label, "checkout": str(tree), "runs": opts.runs,
        "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}",
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "commands": {name: {"wall_median_s": round(statistics.median(w for w, _ in t), 4),
                            "cpu_median_s": round(statistics.median(c for _, c in t), 4),
                            "import_ms": imports[name]} for name, t in times.items()},
    }
    print(f"{opts.label or tree}: {result['machine']}, load {result['load_average_before_after']}, "
          f"median of {opts.runs}")
    print(f"{'command':45s} {'wall':>8s} {'CPU':>8s}  imports, ms (-X importtime, one run)")
    for name, r in result["commands"].items():
        top = ", ".join(f"{k} {v:.0f}" for k, v in r["import_ms"].items())
        print(f"{name:45s} {r['wall_median_s']:7.3f}s {r['cpu_median_s']:7.3f}s  {top}")
    if opts.json:
        opts.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
