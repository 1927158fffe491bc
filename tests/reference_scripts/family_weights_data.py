"""Writes tests/data/family_weights/: three public data sets already in tests/data with sampling-weight
columns added, for tests/test_family_weights.py:
- wine (ordinal::wine, rating 1..5 by judge): ordinal;
- salamanders (glmmTMB::Salamanders, count by site): negative binomial;
- sim (a simulated three-category choice by school, tests/data/multinomial): multinomial.
Level 1: WI whole numbers 1..3 (so the fit equals the fit on records repeated WI times) and W1 in
[0.5, 2]; level 2: W2 in [0.5, 2]. Seeded, so the files are reproducible.

Run from the repository root: python tests/reference_scripts/family_weights_data.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path("tests/data/family_weights")
rng = np.random.default_rng(20261207)
for name, src, uid in (("wine", "ordinal/wine", "judge"), ("salamanders", "negbin/salamanders", "site"),
                       ("sim", "multinomial/sim", "school")):
    l1 = pd.read_csv(f"tests/data/{src}_l1.csv")
    l2 = pd.read_csv(f"tests/data/{src}_l2.csv")
    l1["WI"] = rng.integers(1, 4, len(l1))
    l1["W1"] = np.round(rng.uniform(0.5, 2.0, len(l1)), 3)
    l2["W2"] = np.round(rng.uniform(0.5, 2.0, len(l2)), 3)
    OUT.mkdir(parents=True, exist_ok=True)
    l1.to_csv(OUT / f"{name}_l1.csv", index=False)
    l2.to_csv(OUT / f"{name}_l2.csv", index=False)
