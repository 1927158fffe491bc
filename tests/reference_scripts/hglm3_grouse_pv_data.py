# Plausible values on a public data set for tests/test_hglm3_weights.py: lme4's grouseticks
# (tests/data/hglm3/grouse_l1.csv) with PV1, PV2, PV3 = TICKS plus a whole number drawn uniformly from -2..2
# (numpy seed 7), floored at 0, written to tests/data/hglm3_weights/grouse_pv_l1.csv (the level-2 and -3
# files are tests/data/hglm3's). Run from the repository root:  python tests/reference_scripts/hglm3_grouse_pv_data.py
import numpy as np
import pandas as pd

rng = np.random.default_rng(7)
l1 = pd.read_csv("tests/data/hglm3/grouse_l1.csv", dtype={"INDEX": str, "BROOD": str})
for k in (1, 2, 3):
    l1[f"PV{k}"] = np.maximum(l1.TICKS + rng.integers(-2, 3, len(l1)), 0)
l1.to_csv("tests/data/hglm3_weights/grouse_pv_l1.csv", index=False)
