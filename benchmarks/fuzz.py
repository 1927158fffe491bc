"""Fuzz the equation parser, the .hlm reader and the .mdmt reader; count internal errors and hangs.

Every input must either parse or raise HlmError (the tool's one-line error). Anything else is an
internal error; an input that takes longer than --hang seconds is a hang. Inputs are random text
and mutations of valid inputs (characters replaced, pieces inserted, lines deleted, duplicated,
swapped or cut, values replaced by hostile ones), from a fixed seed, so a run is reproducible.

    python benchmarks/fuzz.py                          # 10,000 equations, 2,000 .hlm, 2,000 .mdmt
    python benchmarks/fuzz.py --equations 50000 --cli 200 --hypothesis 3000

--cli N also runs N of the fuzzed equations through the installed command (exit code 70 is an
internal error); --hypothesis N runs tests/test_fuzz.py with N examples per property.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hlmcli.language.equations import build_spec, parse_hlm_file  # noqa: E402
from hlmcli.language.equations_levels import Variables  # noqa: E402
from hlmcli.errors import HlmError  # noqa: E402
from hlmcli.language.mdmt import parse_template  # noqa: E402

VARIABLES = Variables((("MATHACH", "SES", "MINORITY", "FEMALE"), ("SECTOR", "MEANSES", "SIZE")))
LEVEL1 = ["MATHACH = b0 + b1*group(SES) + r", "MATHACHij = β0j + β1j*(SESij - SES•j) + rij",
          "MATHACH = b0 + b1*(grand(SES)) + b2*MINORITY + b3*FEMALE + r", "MATHACH = b0 + r",
          "MATHACH = b0 + b1*(SES - SES..) + r"]
LEVEL2 = ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*grand(MEANSES) + u1", "β0 = γ00 + γ01*mean(SES) + u0",
          "b2 = g2,0 + g2_1*(SIZE - SIZE.)", "B1 = G10 + G11*SECTOR + G12*MEANSES + U1"]
ALPHABET = "bgurBGU0123456789*+-=()., _jiSEMANTHCXYZmeanrdgopβγ×·−•\t\x00\x1b\u202e"
HOSTILE = ["", "nan", "inf", "-1", "0", "1e999", "9" * 5000, "maybe", "../x", "/tmp/x", "y", "n", "\x1b[31m",
           "ID\x00", "((((", "none", "all", "(" * 3000, "b" + "1" * 4400, "D:\\x\\y.sav", "-" * 100]
HLM = (ROOT / "tests" / "test_fuzz.py").read_text().split('HLM = """', 1)[1].split('"""', 1)[0]
MDMT = (ROOT / "tests" / "test_fuzz.py").read_text().split('MDMT = """', 1)[1].split('"""', 1)[0]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, n)))


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True) or ["\n"]
    for _ in range(rng.randint(1, 6)):
        if not lines:
            lines = ["\n"]
        i = rng.randrange(len(lines))
        line = lines[i]
        how = rng.choice(["char", "insert", "delete_line", "dup_line", "swap", "replace_value", "cut", "nest"])
        if how == "char" and line:
            k = rng.randrange(len(line))
            lines[i] = line[:k] + chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0x10FFFF)])) + line[k + 1:]
        elif how == "insert":
            k = rng.randint(0, len(line))
            lines[i] = line[:k] + random_text(rng, 12) + line[k:]
        elif how == "delete_line":
            del lines[i]
        elif how == "dup_line":
            lines.insert(i, line)
        elif how == "swap":
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif how == "replace_value" and ":" in line:
            lines[i] = f"{line.split(':', 1)[0]}:{rng.choice(HOSTILE)}\n"
        elif how == "replace_value" and "*" in line:
            lines[i] = line.replace("*", "*" + rng.choice(HOSTILE), 1)
        elif how == "cut":
            whole = "".join(lines)
            lines = [whole[: rng.randint(0, len(whole))]]
        elif how == "nest" and "(" in line:
            depth = rng.choice([2, 31, 33, 1000, 20_000])
            lines[i] = line.replace("(", "(" * depth, 1).replace(")", ")" * depth, 1)
    return "".join(lines)


def surrogate_safe(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


def run_one(func, hang: float, tally: Counter, examples: dict, label: str, shown):
    signal.setitimer(signal.ITIMER_REAL, hang)
    start = time.perf_counter()
    try:
        func()
        tally["accepted"] += 1
    except HlmError:
        tally["hlm_error"] += 1
    except Hang:
        tally["hang"] += 1
        examples.setdefault("hang", []).append(shown())
    except Exception as exc:  # noqa: BLE001 - what we are counting
        tally["internal"] += 1
        examples.setdefault("internal", []).append(f"{type(exc).__name__}: {exc} <- {shown()!r}"[:300])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    tally["slowest_ms"] = max(tally["slowest_ms"], int((time.perf_counter() - start) * 1000))
    tally["total"] += 1


def fuzz_equations(n: int, rng: random.Random, hang: float):
    tally, examples, kept = Counter(), {}, []
    for k in range(n):
        if k % 3 == 0:
            l1 = random_text(rng, 80)
            l2 = [random_text(rng, 60) for _ in range(rng.randint(0, 3))]
        else:
            l1 = mutate(rng.choice(LEVEL1), rng).replace("\n", " ")
            l2 = [mutate(e, rng).replace("\n", " ") for e in rng.sample(LEVEL2, rng.randint(0, 3))]
        if len(kept) < 1000 and "\x00" not in l1 and all("\x00" not in e for e in l2):
            kept.append((l1, l2))
        run_one(lambda: build_spec(l1, l2, VARIABLES), hang, tally, examples, "equation", lambda: (l1, l2))
    return tally, examples, kept


def fuzz_files(n: int, rng: random.Random, hang: float, kind: str):
    tally, examples = Counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("l1.csv", "l2.csv"):
            (tmp / name).write_text("ID,MATHACH,SES,SECTOR\n1,2,3,0\n")
        for _ in range(n):
            text = mutate(HLM if kind == "hlm" else MDMT, rng)
            path = tmp / ("m.hlm" if kind == "hlm" else "t.mdmt")
            path.write_bytes(surrogate_safe(text))
            func = (lambda: parse_hlm_file(path, VARIABLES)) if kind == "hlm" else (lambda: parse_template(path))
            run_one(func, hang, tally, examples, kind, lambda: text[:200])
    return tally, examples


def fuzz_cli(equations, n: int, rng: random.Random):
    """The same inputs through the installed command: exit 70 is an internal error."""
    exe = shutil.which("hlmcli", path=os.path.dirname(sys.executable)) or shutil.which("hlmcli")
    tally, examples = Counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "hsb.mdm"
        subprocess.run([exe, "mdm", "build", ROOT / "sample_data/hsb/hsb1.csv", ROOT / "sample_data/hsb/hsb2.csv",
                        "--id", "ID", "-o", archive, "-q"], check=True)
        for l1, l2 in rng.sample(equations, min(n, len(equations))):
            args = [exe, "model", archive, "-1", l1]
            for e in l2:
                args += ["-2", e]
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=10)
            except subprocess.TimeoutExpired:
                tally["hang"] += 1
                continue
            tally[f"exit {proc.returncode}"] += 1
            if proc.returncode == 70:
                examples.setdefault("internal", []).append(proc.stderr.strip()[:300])
    return tally, examples


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--equations", type=int, default=10_000)
    ap.add_argument("--hlm", type=int, default=2_000)
    ap.add_argument("--mdmt", type=int, default=2_000)
    ap.add_argument("--cli", type=int, default=0, help="also run this many fuzzed equations through the CLI")
    ap.add_argument("--hypothesis", type=int, default=0, help="also run tests/test_fuzz.py with this many examples")
    ap.add_argument("--hang", type=float, default=2.0, help="seconds after which an input counts as a hang")
    ap.add_argument("--seed", type=int, default=20261123)
    args = ap.parse_args()
    signal.signal(signal.SIGALRM, _alarm)
    sys.setrecursionlimit(1000)  # the default: a parser that recursed with the input would fail here
    rng = random.Random(args.seed)
    failures = 0
    results = []
    t, ex, kept = fuzz_equations(args.equations, rng, args.hang)
    results.append(("equations", t, ex))
    results.append(("hlm files", *fuzz_files(args.hlm, rng, args.hang, "hlm")))
    results.append(("mdmt files", *fuzz_files(args.mdmt, rng, args.hang, "mdmt")))
    if args.cli:
        results.append(("CLI equations", *fuzz_cli(kept, args.cli, rng)))
    print(f"| input | fuzzed | accepted | HlmError | internal errors | hangs > {args.hang:g} s | slowest |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, t, ex in results:
        if name == "CLI equations":
            internal = t.get("exit 70", 0)
            print(f"| {name} | {sum(v for k, v in t.items() if k.startswith('exit')) + t['hang']} | {t.get('exit 0', 0)} | "
                  f"{t.get('exit 1', 0) + t.get('exit 2', 0)} | {internal} | {t['hang']} | |")
        else:
            internal = t["internal"]
            print(f"| {name} | {t['total']} | {t['accepted']} | {t['hlm_error']} | {internal} | {t['hang']} | "
                  f"{t['slowest_ms']} ms |")
        failures += internal + t["hang"]
        for kind, items in ex.items():
            for item in items[:5]:
                print(f"  {name} {kind}: {item}", file=sys.stderr)
    if args.hypothesis:
        env = {**os.environ, "FUZZ_EXAMPLES": str(args.hypothesis)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_fuzz.py")], env=env, cwd=ROOT)
        print(f"hypothesis, {args.hypothesis} examples per property: {'passed' if proc.returncode == 0 else 'FAILED'}")
        failures += proc.returncode != 0
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
