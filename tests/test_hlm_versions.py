"""What HLM 5/6 and HLM 7 print differently, as options a user reproducing an old run can ask for:
the first OLS units that can be computed (as HLM's lev1ols counts them), HLM 5/6's d.f. rule for fixed
slopes (--df hlm6), and HLM 5/6's ML deviance, printed ln 2π low (--prior-version hlm6)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

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


PUB = Path(__file__).resolve().parent / "data" / "published"
BDF = [PUB / "bdf_l1.csv", PUB / "bdf_l2.csv"]
R = json.loads((PUB / "r_reference.json").read_text())


def test_df_hlm6_gives_fixed_slopes_n_minus_f():
    """Snijders & Bosker example 4.2 as HLM 5/6 printed it: IQ_VERB's fixed slope has 2287 − 2 = 2285 d.f.
    (HLM 7: 2287 − 131·1 − 1 = 2155); the intercept's J − 1 = 130 is the same under both rules."""
    base = ("fit", *BDF, "--id", "SCHOOL", "-1", "LANGPOST = b0 + b1*grand(IQ_VERB) + r", "-2", "b0 = g00 + u0",
            "-2", "b1 = g10", "--ml", "--format", "json")
    hlm6 = json.loads(hlmcli(*base, "--df", "hlm6").stdout)
    hlm7 = json.loads(hlmcli(*base).stdout)
    assert [f["df"] for f in hlm6["fixed_effects"]] == [130, 2285]
    assert [f["df"] for f in hlm7["fixed_effects"]] == [130, 2155]
    assert hlm6["df_method"] == "hlm6" and hlm7["df_method"] == "hlm"
    text = hlmcli(*base[:-2], "--df", "hlm6").stdout
    assert "HLM 5/6's rule" in text and "2285" in text


def test_prior_version_hlm6_adds_back_ln_2pi():
    """HLM 5/6 printed 16251.380618 for bdf's empty ML model; −2 log L is 16253.218495 (lme4). Compared with the
    random-intercept model with IQ_VERB (lme4: 15251.772950, one more parameter), --prior-version hlm6 gives
    the χ² lme4's anova gives, and without it the χ² is 1.837877 short."""
    base = ("fit", *BDF, "--id", "SCHOOL", "-1", "LANGPOST = b0 + b1*grand(IQ_VERB) + r", "-2", "b0 = g00 + u0",
            "-2", "b1 = g10", "--ml", "--format", "json", "--compare-deviance", "16251.380618", "--compare-params", "3")
    fixed = json.loads(hlmcli(*base, "--prior-version", "hlm6").stdout)["deviance_test"]
    plain = json.loads(hlmcli(*base).stdout)["deviance_test"]
    lme4_chi2 = R["snijders_bosker_4_1"]["deviance_lme4"] - R["snijders_bosker_4_2"]["deviance_lme4"]
    assert fixed["chi2"] == pytest.approx(lme4_chi2, abs=1e-5)
    assert fixed["chi2"] - plain["chi2"] == pytest.approx(math.log(2 * math.pi), abs=1e-9)
    assert fixed["prior_version"] == "hlm6" and fixed["prior_deviance_printed"] == 16251.380618


def test_prior_version_needs_a_prior_deviance():
    proc = hlmcli("fit", *BDF, "--id", "SCHOOL", "-1", "LANGPOST = b0 + r", "-2", "b0 = g00 + u0", "--ml",
                  "--prior-version", "hlm6")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--compare-deviance" in proc.stderr
