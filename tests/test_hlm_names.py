"""--hlm-names: the residual files under HLM 7's column names and order (EBINTRCP, OLINTRCP,
FVINTRCP, ECINTRCP, PV0_0, MDIST; L1RESID, FITVAL), 8 characters at most, with SPSS variable labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import HSB_MODELS, SAMPLE, hlmcli

import hlmcli as api

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"


@pytest.fixture(scope="module")
def m4():
    l1, l2 = HSB_MODELS["hsb_m4"]
    return api.fit(HSB1, HSB2, id="ID", level1_eq=l1, level2_eqs=l2)


def test_level2_names_order_and_values(m4, tmp_path):
    pyreadstat = pytest.importorskip("pyreadstat")
    m4.write_residuals(level2=tmp_path / "plain.csv", level1=tmp_path / "plain1.csv")
    m4.write_residuals(level2=tmp_path / "hlm.sav", level1=tmp_path / "hlm1.csv", hlm_names=True)
    plain = pd.read_csv(tmp_path / "plain.csv")
    hlm, meta = pyreadstat.read_sav(tmp_path / "hlm.sav")
    assert list(hlm.columns) == ["ID", "NJ", "MDIST", "EBINTRCP", "EBSES", "OLINTRCP", "OLSES", "FVINTRCP", "FVSES",
                                 "ECINTRCP", "ECSES", "PV0_0", "PV1_1",
                                 "SIZE", "SECTOR", "PRACAD", "DISCLIM", "HIMINTY", "MEANSES"]
    assert all(len(c) <= 8 for c in hlm.columns)
    assert meta.column_names_to_labels["EBINTRCP"] == "EB residual of INTRCPT1"
    assert meta.column_names_to_labels["OLSES"] == "OLS residual of SES"
    assert list(hlm["ID"]) == [str(i) for i in plain["id"]]
    for hlm_col, ours in [("EBSES", "u_SES"), ("FVINTRCP", "fitted_INTRCPT1"), ("ECSES", "eb_SES"),
                          ("PV0_0", "postvar_INTRCPT1"), ("MDIST", "mdist")]:
        np.testing.assert_allclose(hlm[hlm_col], plain[ours], rtol=1e-9)  # the CSV keeps 10 digits
    # HLM's manual: the EB coefficient is the fitted value plus the EB residual, and the OLS
    # coefficient is the fitted value plus the OLS residual
    np.testing.assert_allclose(hlm["ECINTRCP"], hlm["FVINTRCP"] + hlm["EBINTRCP"], rtol=1e-10)
    # unit 1224's OLS regression by hand: MATHACH on its group-centred SES
    records = pd.read_csv(HSB1)
    unit = records[records["ID"] == 1224]
    x = np.column_stack([np.ones(len(unit)), unit["SES"] - unit["SES"].mean()])
    ols = np.linalg.lstsq(x, unit["MATHACH"].to_numpy(), rcond=None)[0]
    first = hlm.iloc[0]
    np.testing.assert_allclose([first["OLINTRCP"] + first["FVINTRCP"], first["OLSES"] + first["FVSES"]], ols, rtol=1e-9)

    level1 = pd.read_csv(tmp_path / "hlm1.csv")
    assert list(level1.columns)[:3] == ["ID", "L1RESID", "FITVAL"]
    assert "SES_GROU" in level1.columns  # SES_group cut to 8 characters, as HLM cuts names
    plain1 = pd.read_csv(tmp_path / "plain1.csv")
    np.testing.assert_allclose(level1["L1RESID"], plain1["residual"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(level1["L1RESID"] + level1["FITVAL"], plain1["MATHACH"], rtol=0, atol=1e-8)


def test_names_cut_to_eight_characters_stay_distinct():
    from hlmcli.io.hlm_names import _unique, hlm_name

    assert hlm_name("EBintrcpt1") == "EBINTRCP"
    assert _unique(["FVSESXME", "FVSESXME", "FVSESXME"]) == ["FVSESXME", "FVSESXM1", "FVSESXM2"]


def test_cli_hlm_names_needs_a_residual_file(hsb_archive, tmp_path):
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--hlm-names")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--hlm-names" in proc.stderr and "--residuals-l2" in proc.stderr
