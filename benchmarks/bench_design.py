"""The design stage's cost, before and after a change to it: CPU time (user + system), median of runs.

    python benchmarks/bench_design.py                     # this checkout
    python benchmarks/bench_design.py --checkout CLONE    # another checkout of hlmcli, same data

Rows: the two-level design (make_design) of bench.py's model at 1,000,000 and 10,000,000 rows, timed
inside one process after the archive is loaded and one untimed design has read its pages in; the 1,000,000-row two-level fit from a warm archive and
the 1,000,000-record three-level random-intercept fit (run_all.py's rows), each a whole `hlmcli fit`
process. Data come from bench.py's and run_all.py's generators (benchmarks/data/, not committed).
On a shared machine CPU time is the number to compare; wall time is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402
import run_all  # noqa: E402

HLMCLI = [sys.executable, "-c", "import sys; from hlmcli.cli import main; sys.argv[0] = 'hlmcli'; main()"]
CHILD = """
import sys, time, json
from hlmcli.io.archive import load_archive
from hlmcli.data.design import make_design, variables_of
from hlmcli.language.equations import build_spec
archive = load_archive(sys.argv[1])
spec = build_spec(sys.argv[2], json.loads(sys.argv[3]), variables_of(archive))
make_design(spec, archive)  # untimed: the archive's pages are read in (its arrays are views of the file)
out = []
for _ in range(int(sys.argv[4])):
    c, w = time.process_time(), time.perf_counter()
    make_design(spec, archive)
    out.append((time.process_time() - c, time.perf_counter() - w))
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", type=Path, help="the hlmcli source tree to time (default: this one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 10_000_000])
    ap.add_argument("--design-only", action="store_true", help="only the make_design rows")
    opts = ap.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if opts.checkout:
        env["PYTHONPATH"] = str(opts.checkout.resolve())
    work = HERE / "data"
    work.mkdir(exist_ok=True)
    results = {"checkout": str(opts.checkout or HERE.parent), "load_before": os.getloadavg(), "rows": []}

    def build(args, target):
        if not target.exists():
            run_all.run_process([*HLMCLI, "mdm", "build", *map(str, args), "-o", str(target), "-q"], work, env)
        return target

    archives = {}
    for n in opts.sizes:
        J = n // 100
        l1, l2 = bench.generate(n, J, opts.seed)
        archives[n] = build([l1, l2, "--id", "id"], work / f"design_two_{n}.mdm")
        argv = [sys.executable, "-c", CHILD, str(archives[n]), bench.LEVEL1, json.dumps(bench.LEVEL2),
                str(opts.repeats)]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        runs = json.loads(proc.stdout)
        results["rows"].append({"name": f"make_design, {n:,} rows", "cpu_s": statistics.median(c for c, _ in runs),
                                "wall_s": statistics.median(w for _, w in runs), "runs": runs})
        print(results["rows"][-1], flush=True)

    fits = []
    if opts.design_only:
        pass
    elif 1_000_000 in archives:
        fits.append(("two-level fit, 1,000,000 rows, warm archive", [archives[1_000_000], *run_all.TWO]))
    if not opts.design_only:
        p1, p2, p3 = run_all.three_level(1_000_000, 100_000, 1_000, opts.seed, False)
        three = build([p1, p2, p3, "--id2", "L2", "--id3", "L3"], work / "design_three_1000000.mdm")
        fits.append(("three-level intercept fit, 1,000,000 records", [three, *run_all.THREE_INT]))
    for name, args in fits:
        argv = [*HLMCLI, "fit", *map(str, args)]
        run_all.run_process(argv, work, env)  # warm the page cache and the bytecode, untimed
        runs = []
        for _ in range(opts.repeats):
            wall, cpu, _rss, text = run_all.run_process(argv, work, env)
            runs.append((cpu, wall))
        results["rows"].append({"name": name, "cpu_s": statistics.median(c for c, _ in runs),
                                "wall_s": statistics.median(w for _, w in runs), "runs": runs,
                                "last_line": text.strip().splitlines()[-1]})
        print(results["rows"][-1], flush=True)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
