"""Compare two versions of the archive merge over many inputs: archive bytes for builds that succeed,
exit code and message for builds that fail.

    git clone -q --no-hardlinks . /tmp/old && git -C /tmp/old checkout -q main
    python benchmarks/compare_merges.py --old /tmp/old [--new .] [--show 20]

Inputs: the two-, three- and four-level test data sets, and small generated hierarchies written as
one file per level and as shared files (a level-1 file carrying every id and variable), each with
variants: a parent missing from the file above, a repeated unit row, a unit under two parents, a
higher id in a lower file that disagrees with the link, an infinite or missing value at each level,
ids with leading zeros, a text column at each level, a unit without children; each built with
--missing analysis/now and with and without --drop-unmatched. Each version runs in its own process
(the package imported from its tree) through io/archive_levels.build_from_paths, as `mdm build`
does. Warnings are compared too.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RUNNER = r"""
import hashlib, json, sys
sys.path.insert(0, sys.argv[1])
from hlmcli.errors import DataError, HlmError
from hlmcli.io.archive import BuildOptions, archive_bytes
from hlmcli.io.archive_levels import BuildOptions3, BuildOptionsLevels, build_from_paths
out = []
for case in json.load(open(sys.argv[2])):
    K, warnings = len(case["paths"]), []
    ids, keeps = case["ids"], [tuple(k) if k is not None else None for k in case["keeps"]]
    if K == 2:
        opts = BuildOptions(id1=ids[0], id2=ids[1], keep1=keeps[0], keep2=keeps[1], missing=case["missing"],
                            drop_unmatched=case["drop"])
    elif K == 3:
        opts = BuildOptions3(id2=ids[1], id3=ids[2], keep1=keeps[0], keep2=keeps[1], keep3=keeps[2],
                             missing=case["missing"], drop_unmatched=case["drop"])
    else:
        opts = BuildOptionsLevels(tuple(ids[1:]), tuple(keeps), case["missing"], case["drop"])
    try:
        archive = build_from_paths(case["paths"], opts, warn=warnings.append)
        result = {"code": 0, "sha": hashlib.sha256(b"".join(archive_bytes(archive))).hexdigest()}
    except HlmError as e:
        result = {"code": getattr(e, "exit_code", 1), "message": str(e)}
    except Exception as e:  # an internal error: a bug in that version
        result = {"code": 70, "message": f"{type(e).__name__}: {e}"}
    result["warnings"] = warnings
    out.append(result)
json.dump(out, sys.stdout)
"""


def _write(path: Path, header, rows) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return str(path)


def _hierarchy(K: int, pad: bool):
    """Units of levels 2..K as (id, parent id, value) lists, and level-1 records (unit id, x, y)."""
    def name(level, i):
        return f"{i:03d}" if pad else str(i + 1 + 10 * level)
    units = {K: [(name(K, i), None, float(i % 2)) for i in range(3)]}
    for level in range(K - 1, 1, -1):
        units[level] = [(name(level, j * 2 + c), p, 0.5 * j + c)
                        for j, (p, _, _) in enumerate(units[level + 1]) for c in range(2)]
    records = [(u, float(r), 1.0 + 0.25 * r + k) for k, (u, _, _) in enumerate(units[2]) for r in range(3)]
    return units, records


def _files(tmp: Path, tag: str, K: int, units, records, shared: bool, up_in_1: bool, top_own: bool = False):
    """One file per level, or (shared) one level-1 file carrying every level's id and variable (top_own:
    every level's but level K's, which has its own file)."""
    ids = ["ID2"] + [f"ID{k}" for k in range(2, K + 1)]  # the level-1 file holds the level-2 id
    up = {level: {u: p for u, p, _ in units[level]} for level in units}
    val = {level: {u: v for u, _, v in units[level]} for level in units}

    def chain(u2):
        out, u = [u2], u2
        for level in range(2, K):
            u = up[level][u]
            out.append(u)
        return out

    if shared:
        top = K if top_own else K + 1
        header = ids[1:] + ["X", "Y"] + [f"V{k}" for k in range(2, top)]
        rows = [chain(u) + [x, y] + [val[k][c] for k, c in zip(range(2, top), chain(u))] for u, x, y in records]
        p = _write(tmp / f"{tag}_all.csv", header, rows)
        if top_own:
            return [p] * (K - 1) + [_write(tmp / f"{tag}_top.csv", [ids[-1], f"V{K}"],
                                           [[u, v] for u, _, v in units[K]])], ids
        return [p] * K, ids
    h1 = [ids[1]] + ([ids[2]] if up_in_1 and K > 2 else []) + ["X", "Y"]
    r1 = [[u] + ([up[2][u]] if up_in_1 and K > 2 else []) + [x, y] for u, x, y in records]
    paths = [_write(tmp / f"{tag}_l1.csv", h1, r1)]
    for level in range(2, K + 1):
        h = [ids[level - 1]] + ([ids[level]] if level < K else []) + [f"V{level}"]
        rows = [[u] + ([p] if level < K else []) + [v] for u, p, v in units[level]]
        paths.append(_write(tmp / f"{tag}_l{level}.csv", h, rows))
    return paths, ids


def _edit(path: str, fn) -> None:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def _mutations(K: int, shared: bool):
    """(name, file index to edit or None, edit of its rows [header first])."""
    out = [("plain", None, None)]
    top = K - 1
    for i in range(K if not shared else 1):
        out += [
            (f"inf@{i + 1}", i, lambda r: r[:2] + [r[2][:-1] + ["inf"]] + r[3:]),
            (f"nan@{i + 1}", i, lambda r: r[:2] + [r[2][:-1] + [""]] + r[3:]),
            (f"text@{i + 1}", i, lambda r: [r[0] + ["LABEL"]] + [row + [f"t{j % 2}"] for j, row in enumerate(r[1:])]),
            (f"repeat@{i + 1}", i, lambda r: r + [r[1]]),
            (f"drop-row@{i + 1}", i, lambda r: r[:1] + r[2:]),
        ]
        if 0 < i < top or (i == 0 and not shared):
            # a unit (or record) moved under another parent: the second column holds the id above
            out.append((f"two-parents@{i + 1}", i, lambda r: r + [[r[1][0], r[-1][1]] + r[1][2:]]))
            out.append((f"parent-changed@{i + 1}", i, lambda r: r[:1] + [[r[1][0], r[-1][1]] + r[1][2:]] + r[2:]))
        if i > 0:
            out.append((f"childless@{i + 1}", i, lambda r: r + [[f"9{len(r)}"] + r[1][1:]]))
    if shared:
        out.append(("vary-up", 0, lambda r: r[:1] + [r[1][:-1] + ["99"]] + r[2:]))
        # the last level's variable infinite in every record of the first record's unit: constant within it
        out.append(("inf-unit", 0, lambda r: r[:1] + [row[:-1] + ["inf"] if row[0] == r[1][0] else row
                                                      for row in r[1:]]))
    return out


def make_cases(tmp: Path) -> list[dict]:
    cases = []

    def add(paths, ids, keeps=None, label=""):
        for missing in ("analysis", "now"):
            for drop in (False, True):
                cases.append({"label": f"{label} missing={missing} drop={drop}", "paths": paths, "ids": ids,
                              "keeps": keeps or [None] * len(paths), "missing": missing, "drop": drop})

    # the test data sets
    hsb = ROOT / "tests" / "data"
    four = hsb / "four_level"
    for name in ("hospitals", "schools"):
        paths = [str(four / f"{name}_l{k}.csv") for k in range(1, 5)]
        with open(paths[0]) as f:
            id2 = f.readline().strip().split(",")[0].strip('"')
        ids = [id2] + [open(p).readline().strip().split(",")[0].strip('"') for p in paths[1:]]
        add(paths, ids, label=f"{name} 4")
    for p1, p2, i1, i2 in _two_level_sets():
        add([p1, p2], [i1, i2], label=f"{Path(p1).name} 2")
    # generated hierarchies
    n = 0
    for K in (2, 3, 4):
        for pad in (False, True):
            for shared in (False, True):
                for up_in_1 in ((False, True) if K > 2 and not shared else (False,)):
                    for top_own in ((False, True) if K > 2 and shared else (False,)):
                        for mname, which, fn in _mutations(K, shared):
                            n += 1
                            units, records = _hierarchy(K, pad)
                            paths, ids = _files(tmp, f"c{n}", K, units, records, shared, up_in_1, top_own)
                            if fn is not None:
                                _edit(paths[which], fn)
                            add(paths, ids, label=f"K={K} pad={pad} shared={shared} up_in_1={up_in_1} "
                                                  f"top_own={top_own} {mname}")
    return cases


def _two_level_sets():
    """Two-level inputs from the sample data (when present) and from the three-level test data."""
    out = []
    hsb = ROOT / "sample_data" / "hsb"
    l1, l2 = hsb / "hsb1.csv", hsb / "hsb2.csv"
    if l1.exists() and l2.exists():
        out.append((str(l1), str(l2), "id", "id"))
    return out


def run(tree: Path, cases_file: Path) -> list[dict]:
    done = subprocess.run([sys.executable, "-c", RUNNER, str(tree), str(cases_file)], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path, help="tree of the version before the change")
    ap.add_argument("--new", default=ROOT, type=Path, help="tree of the version after (default: this one)")
    ap.add_argument("--show", type=int, default=20, help="differences to print in full")
    ap.add_argument("--outcomes", action="store_true", help="also print how often each failure message (ids and "
                    "paths left out) occurs in the old version, per number of levels: what the inputs cover")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        cases = make_cases(Path(d))
        cases_file = Path(d) / "cases.json"
        cases_file.write_text(json.dumps(cases))
        old, new = run(args.old, cases_file), run(args.new, cases_file)
    counts = {"same success": 0, "same failure": 0, "different": 0, "internal error": 0}
    shown = 0
    for case, a, b in zip(cases, old, new):
        if 70 in (a["code"], b["code"]):
            counts["internal error"] += 1
        if a == b:
            counts["same success" if a["code"] == 0 else "same failure"] += 1
            continue
        counts["different"] += 1
        if shown < args.show:
            shown += 1
            print(f"--- {case['label']}\n  old: {json.dumps(a)}\n  new: {json.dumps(b)}")
    if args.outcomes:
        from collections import Counter

        seen = Counter((len(c["paths"]), re.sub(r"\S*/\S*?_|\b\d+\b", "#", a.get("message", "built"))[:110])
                       for c, a in zip(cases, old))
        for (K, text), count in sorted(seen.items()):
            print(f"K={K} {count:4d}  {text}")
    print(f"{len(cases)} builds: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
