"""What HLM 5/6 and HLM 7 print differently, as options a user reproducing an old run can ask for:
the first OLS units that can be computed (as HLM's lev1ols counts them), ..."""

from __future__ import annotations

import json

import pandas as pd

from conftest import SAMPLE, hlmcli

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"


def test_ols_units_counts_units_whose_ols_can_be_computed(tmp_path):
    """Unit 1224 cut to 2 records cannot have an OLS fit of intercept and SES slope with a residual (n_j = K):
    HLM leaves it out of the table, and the 3 units shown are the next three in the archive's (id) order."""
    l1 = pd.read_csv(HSB1)
    first = l1[l1.ID == 1224].head(2)
    cut = pd.concat([first, l1[l1.ID != 1224]])
    cut.to_csv(tmp_path / "l1.csv", index=False)
    proc = hlmcli("fit", tmp_path / "l1.csv", HSB2, "--id", "ID", "-1", "MATHACH = b0 + b1*SES + r",
                  "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "--full-output", "--ols-units", "3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    full = json.loads(proc.stdout)["full_output"]
    ids = sorted(set(l1.ID))
    assert ids[0] == 1224
    assert [u["unit"] for u in full["ols_units"]] == [str(i) for i in ids[1:4]]
    assert full["units_with_ols"] == 159
