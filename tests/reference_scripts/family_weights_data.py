"""Writes tests/data/family_weights/: three public data sets already in tests/data with sampling-weight
columns added, for tests/test_family_weights.py:
- wine (ordinal::wine, rating 1..5 by judge): ordinal;
- salamanders (glmmTMB::Salamanders, count by site): negative binomial;
- sim (a simulated three-category choice by school, tests/data/multinomial): multinomial.
Level 1: WI whole numbers 1..3 (so the fit equals the fit on records repeated WI times) and W1 in
[0.5, 2]; level 2: W2 in [0.5, 2]. Plausible values PV1..PV3 of the outcome: the outcome with a fifth of
the records changed (a category one up or down within the range; a count times 0.5 to 1.5, rounded).
Seeded, so the files are reproducible.

Run from the repository root: python tests/reference_scripts/family_weights_data.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path("tests/data/family_weights")
rng = np.random.default_rng(20261207)
pv_rng = np.random.default_rng(7)  # its own stream: the weights above stay as first drawn
for name, src, uid in (("wine", "ordinal/wine", "judge"), ("salamanders", "negbin/salamanders", "site"),
                       ("sim", "multinomial/sim", "school")):
    l1 = pd.read_csv(f"tests/data/{src}_l1.csv")
    l2 = pd.read_csv(f"tests/data/{src}_l2.csv")
    l1["WI"] = rng.integers(1, 4, len(l1))
    l1["W1"] = np.round(rng.uniform(0.5, 2.0, len(l1)), 3)
    l2["W2"] = np.round(rng.uniform(0.5, 2.0, len(l2)), 3)
    y = l1.iloc[:, 1].to_numpy()  # the outcome: the column after the id
    for m in range(1, 4):
        moved = pv_rng.uniform(size=y.size) < 0.2
        if name == "salamanders":
            new = np.round(y * pv_rng.uniform(0.5, 1.5, y.size))
        else:
            new = np.clip(y + pv_rng.choice([-1, 1], y.size), y.min(), y.max())
        l1[f"PV{m}"] = np.where(moved, new, y).astype(int)
    OUT.mkdir(parents=True, exist_ok=True)
    l1.to_csv(OUT / f"{name}_l1.csv", index=False)
    l2.to_csv(OUT / f"{name}_l2.csv", index=False)
