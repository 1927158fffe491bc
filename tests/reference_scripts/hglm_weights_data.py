"""Writes tests/data/hglm_weights/contraw_l1.csv and contraw_l2.csv: the Bangladesh contraception data
(tests/data/hglm/contra_l*.csv, lme4/mlmRev `Contraception`) with deterministic sampling weights and
five binary "plausible values" of the outcome.

- W1 (level 1, conditional on the district) = (1 + URBAN)(1 + 0.5·LC1) + 0.25·(AGE > 0): not whole numbers
  after scaling to n_j within districts, so glmer's handling of non-integer Bernoulli weights is exercised.
- W1I (level 1) = (1 + URBAN)(1 + LC1), whole numbers 1, 2, 4: glmer's Laplace and AGQ objectives take the
  log-likelihood from binomial()$aic, which rounds w·y and w (hglm_weights_glmer.R), so glmer is a reference
  for whole-number weights used as given (--normalize none) only.
- W2 (level 2) = 1 + (DISTRICT mod 3) + 0.5·(DISTRICT mod 2).
- PV1..PV5: USE with each record flipped with probability 0.08 (numpy default_rng(2023), one stream per PV).

Run from the repository root: python tests/reference_scripts/hglm_weights_data.py
"""

import numpy as np
import pandas as pd

l1 = pd.read_csv("tests/data/hglm/contra_l1.csv")
l2 = pd.read_csv("tests/data/hglm/contra_l2.csv")
l1["W1"] = (1 + l1.URBAN) * (1 + 0.5 * l1.LC1) + 0.25 * (l1.AGE > 0)
l1["W1I"] = (1 + l1.URBAN) * (1 + l1.LC1)
rng = np.random.default_rng(2023)
for m in range(1, 6):
    flip = rng.random(len(l1)) < 0.08
    l1[f"PV{m}"] = np.where(flip, 1 - l1.USE, l1.USE)
l2["W2"] = 1 + (l2.DISTRICT % 3) + 0.5 * (l2.DISTRICT % 2)
l1.to_csv("tests/data/hglm_weights/contraw_l1.csv", index=False)
l2.to_csv("tests/data/hglm_weights/contraw_l2.csv", index=False)
