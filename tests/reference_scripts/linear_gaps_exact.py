"""Exact deviances for tests/test_linear_gaps.py, in rational arithmetic (fractions.Fraction): the
data's doubles are taken as the exact rationals they are, every sum and product and the solve of
X'V⁻¹X is exact, and only the final logarithms are rounded. Nothing here is hlmcli's code.

    python tests/reference_scripts/linear_gaps_exact.py      (after linear_gaps_lme4.R)

Writes tests/data/linear_gaps/exact.json:
- bigmean: the REML and ML profiled deviance of the raw (uncentred) columns at lme4's optimum
  G = θ² (lme4 fitted the centred columns, the same criterion; see linear_gaps_lme4.R);
- global: the ML deviance at τ = 0, the OLS deviance, of the raw columns.

Random-intercept model, unit j with n_j records, G = τ/σ²: V_j/σ² = I + G11', so
σ²V_j⁻¹ = I − g_j 11' with g_j = G/(1 + n_jG) and log|V_j/σ²| = log(1 + n_jG). Then
P = X'X − Σ g_j s_j s_j' (s_j = X_j'1), c = X'y − Σ g_j s_j t_j (t_j = 1'y_j),
y'(σ²V⁻¹)y = y'y − Σ g_j t_j², rss = y'(σ²V⁻¹)y − c'P⁻¹c, and with ν = N − p (REML) or N (ML)
    d = Σ_j log(1 + n_jG) + ν(1 + log 2π + log(rss/ν)) [+ log|P| for REML].
"""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "linear_gaps"


def read(name: str) -> list[dict]:
    with open(DATA / name, newline="") as fh:
        return list(csv.DictReader(fh))


def solve_exact(M, v):
    """x with Mx = v and det M, by Gaussian elimination in rationals."""
    n = len(v)
    A = [list(row) + [v[i]] for i, row in enumerate(M)]
    det = Fraction(1)
    for i in range(n):
        piv = next(r for r in range(i, n) if A[r][i] != 0)
        if piv != i:
            A[i], A[piv] = A[piv], A[i]
            det = -det
        det *= A[i][i]
        for r in range(i + 1, n):
            f = A[r][i] / A[i][i]
            if f:
                A[r] = [a - f * b for a, b in zip(A[r], A[i])]
    x = [Fraction(0)] * n
    for i in reversed(range(n)):
        x[i] = (A[i][n] - sum(A[i][k] * x[k] for k in range(i + 1, n))) / A[i][i]
    return x, det


def log_fraction(f: Fraction) -> float:
    return math.log(f.numerator) - math.log(f.denominator)


def profiled_deviance(units: list[list[tuple[list[Fraction], Fraction]]], G: Fraction, reml: bool) -> float:
    """units: per unit, its records as (x row, y)."""
    p = len(units[0][0][0])
    XX = [[Fraction(0)] * p for _ in range(p)]
    Xy = [Fraction(0)] * p
    yy = Fraction(0)
    logdet = 0.0
    N = 0
    for recs in units:
        n = len(recs)
        N += n
        s = [sum((r[0][k] for r in recs), Fraction(0)) for k in range(p)]
        t = sum((r[1] for r in recs), Fraction(0))
        g = G / (1 + n * G)
        logdet += log_fraction(1 + n * G)
        for k in range(p):
            for m in range(p):
                XX[k][m] -= g * s[k] * s[m]
            Xy[k] -= g * s[k] * t
        yy -= g * t * t
        for x, y in recs:
            for k in range(p):
                for m in range(p):
                    XX[k][m] += x[k] * x[m]
                Xy[k] += x[k] * y
            yy += y * y
    gamma, det = solve_exact(XX, Xy)
    rss = yy - sum((c * b for c, b in zip(Xy, gamma)), Fraction(0))
    nu = N - p if reml else N
    d = logdet + nu * (1 + math.log(2 * math.pi) + log_fraction(rss / nu))
    return d + log_fraction(det) if reml else d


def group(rows, xrow):
    units: dict[str, list] = {}
    for r in rows:
        units.setdefault(r["id"], []).append((xrow(r), Fraction(float(r["y"]))))
    return list(units.values())


def main() -> None:
    ref = json.loads((DATA / "lme4.json").read_text())
    out = {}
    w = {r["id"]: Fraction(float(r["w"])) for r in read("bigmean_l2.csv")}

    def big_row(r):
        x1, date, wj = Fraction(float(r["x1"])), Fraction(float(r["date"])), w[r["id"]]
        return [Fraction(1), wj, x1, x1 * wj, date]  # γ00, γ01, γ10, γ11, γ20 as hlmcli orders them

    units = group(read("bigmean_l1.csv"), big_row)
    out["bigmean"] = {}
    for method in ("REML", "ML"):
        theta = ref["bigmean"][method]["theta"]  # a scalar for one random effect
        G = Fraction(theta) ** 2
        out["bigmean"][method] = {"G": float(G), "deviance": profiled_deviance(units, G, method == "REML")}
    units = group(read("global_l1.csv"), lambda r: [Fraction(1), Fraction(float(r["year"])), Fraction(float(r["x"]))])
    out["global"] = {"ml_deviance_tau0": profiled_deviance(units, Fraction(0), False)}
    (DATA / "exact.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
