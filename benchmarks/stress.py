"""The full stress suite: hlmcli's fit against an independent optimum on 413 simulated data sets
(340 general ones, and 73 for large means, tiny J with an uncentred year, and boundary Satterthwaite
d.f. under centring).

    python benchmarks/stress.py                    # all cases, 2 worker processes
    python benchmarks/stress.py --jobs 1 --only 136 218   # some cases by id prefix, one process
    python benchmarks/stress.py --fast             # the subset tests/test_stress.py runs

Writes benchmarks/stress_results.json (or --out) and prints a summary table. See stress_lib.py
for the generator, the independent profiled deviance and the optimiser.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")  # small matrices: threads only fight over the shared cores

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import scipy  # noqa: E402

import stress_lib  # noqa: E402


def _run(case):
    return stress_lib.run_case(case)


def summarise(results: list[dict]) -> str:
    keys = [k for k, _ in stress_lib.CATEGORIES]
    families = sorted({r["family"] for r in results}, key=lambda f: min(r["id"] for r in results if r["family"] == f))
    head = f"{'family':12s} {'cases':>5s} " + " ".join(f"{k:>16s}" for k in keys)
    lines = [head, "-" * len(head)]
    for fam in families + ["TOTAL"]:
        rs = results if fam == "TOTAL" else [r for r in results if r["family"] == fam]
        lines.append(f"{fam:12s} {len(rs):5d} " + " ".join(f"{sum(bool(r[k]) for r in rs):16d}" for k in keys))
    for m in ("REML", "ML"):
        rs = [r for r in results if r["method"] == m]
        lines.append(f"{m:12s} {len(rs):5d} " + " ".join(f"{sum(bool(r[k]) for r in rs):16d}" for k in keys))
    lines.append("")
    for k, text in stress_lib.CATEGORIES:
        lines.append(f"  {k}: {text}")
    bad = [r for r in results if r["worse"] or r["false_boundary"] or r["disagree"] or r["error"] or r["location_df"]]
    if bad:
        lines.append("")
        lines.append("Failing cases (worse / false_converged / false_boundary / disagree / error / refused / location_df):")
        for r in bad:
            flags = [k for k in ("worse", "false_converged", "false_boundary", "disagree", "error", "refused",
                                 "location_df") if r[k]]
            gap = "" if r["gap_rel"] is None else f"gap {r['gap_rel']:.2e}"
            agree = "" if r["agree_rel"] is None else f"report off {r['agree_rel']:.1e}"
            lines.append(f"  {r['id']:34s} {','.join(flags):40s} {gap:15s} {agree}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", nargs="*", help="case ids or id prefixes (e.g. 136 or 136-scale)")
    ap.add_argument("--fast", action="store_true", help="only the fast subset of the tests")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "stress_results.json"))
    args = ap.parse_args(argv)
    cases = stress_lib.make_cases()
    if args.fast:
        cases = [c for c in cases if c.fast]
    if args.only:
        cases = [c for c in cases if any(c.id.startswith(o) for o in args.only)]
    t0 = time.perf_counter()
    results = []
    if args.jobs > 1:
        from multiprocessing import Pool
        # longest first, so the tail of the run is not one big case on one core
        order = sorted(cases, key=lambda c: -c.J * c.q ** 3)
        with Pool(args.jobs) as pool:
            for r in pool.imap_unordered(_run, order):
                results.append(r)
                print(f"{len(results):4d}/{len(cases)} {r['id']:34s} {r['seconds']:6.1f}s"
                      f"{'  WORSE' if r['worse'] else ''}{'  FALSE-BOUNDARY' if r['false_boundary'] else ''}"
                      f"{'  DISAGREE' if r['disagree'] else ''}", flush=True)
    else:
        for c in cases:
            r = _run(c)
            results.append(r)
            print(f"{len(results):4d}/{len(cases)} {r['id']:34s} {r['seconds']:6.1f}s"
                  f"{'  WORSE' if r['worse'] else ''}{'  FALSE-BOUNDARY' if r['false_boundary'] else ''}"
                  f"{'  DISAGREE' if r['disagree'] else ''}", flush=True)
    wall = time.perf_counter() - t0
    results.sort(key=lambda r: r["id"])
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = ""
    keys = [k for k, _ in stress_lib.CATEGORIES]
    doc = dict(
        commit=commit, wall_seconds=wall, jobs=args.jobs, n_cases=len(results),
        python=platform.python_version(), numpy=np.__version__, scipy=scipy.__version__,
        tolerances=dict(worse_rel=stress_lib.REL_TOL, agree_rel=stress_lib.AGREE_TOL),
        counts={k: sum(bool(r[k]) for r in results) for k in keys},
        failing={k: [r["id"] for r in results if r[k]] for k in keys},
        cases=results,
    )
    Path(args.out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print()
    print(summarise(results))
    print(f"\n{len(results)} cases in {wall:.0f} s with {args.jobs} process(es); results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
