"""Writes tests/data/three_level/boundary_corr.csv (run from the repository root):

    python tests/reference_scripts/three_level_boundary_data.py

10 level-3 units × 4 level-2 units × 5 records; an uncentred YEAR (2000..2004) whose slope is random
at level 3 with a small true variance (sd 0.15), a random intercept at levels 2 and 3 (sd 1), level-1
sd 1. numpy's default_rng(1): the first seed from 1 whose ML fit puts the level-3 τ at rank 1 (a
correlation of −1 between the intercept and the YEAR slope). Y is rounded to 4 decimals, so the file
holds the data exactly. Columns L3, L2 (1-based unit numbers), YEAR, Y.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "three_level" / "boundary_corr.csv"


def simulate(seed: int = 1):
    rng = np.random.default_rng(seed)
    J3, per3, n = 10, 4, 5
    u3 = np.repeat(np.arange(J3), per3)
    u2 = np.repeat(np.arange(u3.size), n)
    t = np.tile(np.arange(n), u3.size).astype(float)
    b0, b1 = rng.normal(0, 1.0, J3), rng.normal(0, 0.15, J3)
    r0 = rng.normal(0, 1.0, u3.size)
    y = np.round(1 + 0.5 * t + b0[u3[u2]] + b1[u3[u2]] * t + r0[u2] + rng.normal(0, 1.0, u2.size), 4)
    return u3[u2] + 1, u2 + 1, 2000.0 + t, y


if __name__ == "__main__":
    l3, l2, year, y = simulate()
    lines = ["L3,L2,YEAR,Y"] + [f"{a},{b},{c:.0f},{d:.4f}" for a, b, c, d in zip(l3, l2, year, y)]
    OUT.write_text("\n".join(lines) + "\n")
