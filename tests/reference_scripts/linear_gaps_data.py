"""Writes the data sets of tests/data/linear_gaps/ (run from the repository root):

    python tests/reference_scripts/linear_gaps_data.py

- global_*.csv: 3 units, 35 records, an uncentred year (mean 2000, sd 10) and x, all three
  coefficients random, ML: a rank-2 τ is a certified local minimum, τ = 0 is lower
  (benchmarks/stress_lib.simulate, the stress suite's generator, with the case below).
- bigmean_*.csv: a random-intercept model with predictors far from zero: x1 = 1e5 + N(0, 10²),
  a Julian date 2460311 + day of the year, a level-2 w = 1e5 + N(0, 1) on the intercept and on
  x1's slope (the cross-level product x1·w is about 1e10).
- satt_*.csv: 30 units, a year 2000..2020 with a random slope whose true variance is 0, so the REML
  fit is on the boundary; the year is given uncentred (year) and centred (yearc).
Floats are written with 17 significant digits, so the files hold the generated values exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "linear_gaps"
sys.path.insert(0, str(ROOT / "benchmarks"))


def write(path: Path, header: list[str], columns: list[np.ndarray]) -> None:
    rows = [",".join(header)]
    for i in range(len(columns[0])):
        rows.append(",".join(str(int(c[i])) if c.dtype.kind in "iu" else repr(float(c[i])) for c in columns))
    path.write_text("\n".join(rows) + "\n")


def global_case() -> None:
    import stress_lib as sl

    seed = 499  # the case found by the scan of tiny-J uncentred-year fits
    rng = np.random.default_rng(seed)
    ysd = float(rng.choice([1.0, 3.0, 10.0]))
    q = int(rng.choice([2, 3]))
    J = int(rng.choice([3, 4]))
    sizes = ("uniform", int(rng.choice([2, 5, 10])), int(rng.choice([15, 30])))
    case = sl.Case(id="global", family="global", seed=seed, method="ML", J=J, sizes=sizes,
                   predictors=[dict(kind="normal", mean=2000.0, sd=ysd, scale=1.0),
                               dict(kind="normal", mean=0.0, sd=1.0, scale=1.0)],
                   q=q, sd=list(rng.uniform(0, 1, q) * float(rng.choice([0.0, 0.1, 1.0]))),
                   corr=float(rng.uniform(-0.9, 0.9)))
    d = sl.simulate(case)
    unit = np.repeat(np.arange(1, J + 1), np.diff(d.offsets))
    write(OUT / "global_l1.csv", ["id", "year", "x", "y"], [unit, d.L[:, 1], d.L[:, 2], d.y])
    write(OUT / "global_l2.csv", ["id"], [np.arange(1, J + 1)])


def bigmean_case() -> None:
    rng = np.random.default_rng(20261206)
    J = 40
    n = rng.integers(4, 16, J)
    unit = np.repeat(np.arange(1, J + 1), n)
    N = int(n.sum())
    x1 = 1e5 + 10.0 * rng.standard_normal(N)
    date = 2460311.0 + rng.integers(0, 366, N).astype(float)
    w = 1e5 + rng.standard_normal(J)
    u = 1.5 * rng.standard_normal(J)
    wj = w[unit - 1]
    y = (3.0 + 0.8 * (wj - 1e5) + 0.4 * (x1 - 1e5) + 0.2 * (x1 - 1e5) * (wj - 1e5) + 0.01 * (date - 2460494.0)
         + u[unit - 1] + rng.standard_normal(N))
    write(OUT / "bigmean_l1.csv", ["id", "x1", "date", "y"], [unit, x1, date, y])
    write(OUT / "bigmean_l2.csv", ["id", "w"], [np.arange(1, J + 1), w])


def satterthwaite_case() -> None:
    rng = np.random.default_rng(2)  # the first seed of 1.. whose REML fit has a rank-1 τ
    J = 30
    n = rng.integers(4, 9, J)
    unit = np.repeat(np.arange(1, J + 1), n)
    N = int(n.sum())
    year = rng.integers(2000, 2021, N).astype(float)
    y = 10.0 + 0.5 * (year - 2010.0) + (1.0 * rng.standard_normal(J))[unit - 1] + 2.0 * rng.standard_normal(N)
    write(OUT / "satt_l1.csv", ["id", "year", "yearc", "y"], [unit, year, year - year.mean(), y])
    write(OUT / "satt_l2.csv", ["id"], [np.arange(1, J + 1)])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    global_case()
    bigmean_case()
    satterthwaite_case()
