"""The Python API in the names Python users reach for: statsmodels' (params, bse, pvalues, conf_int,
llf, cov_re, scale, random_effects by unit) checked against the HLM 7 reference optimum and by hand;
ids of the user's type (a join on the user's integer ids matches every unit); predict that centres at
each unit's own mean and gives back the residual file's fitted values; the notebook display, and the
multi-model helpers hlmcli.table and hlmcli.compare."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hlmcli
from conftest import HSB_MODELS, REFERENCE, SAMPLE

HSB1, HSB2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
GOLDEN = Path(__file__).resolve().parent / "golden"
REF = REFERENCE["hsb_m4"]["optimum"]
TERMS = ["(Intercept)", "SECTOR", "SES_gc", "SECTOR:SES_gc"]


@pytest.fixture(scope="module")
def frames():
    return pd.read_csv(HSB1), pd.read_csv(HSB2)


@pytest.fixture(scope="module")
def m4(frames):
    """HSB model 4 (group-centred SES) from the user's DataFrames, whose ID is an integer column."""
    l1, l2 = HSB_MODELS["hsb_m4"]
    return hlmcli.fit(frames[0], frames[1], id="ID", level1_eq=l1, level2_eqs=l2)


def test_statsmodels_names_give_the_reference_optimum(m4):
    assert list(m4.params.index) == TERMS
    assert np.allclose(m4.params, [f["estimate"] for f in REF["fixed"]], rtol=1e-6)
    assert np.allclose(m4.bse, [f["se"] for f in REF["fixed"]], rtol=1e-5)
    assert np.allclose(m4.tvalues, m4.params / m4.bse, rtol=1e-12)
    assert np.allclose(m4.pvalues, 2 * stats.t.sf(np.abs(m4.tvalues), 158), rtol=1e-9)
    ci = m4.conf_int(0.1)
    assert list(ci.columns) == [0, 1] and list(ci.index) == TERMS
    assert np.allclose(ci[1], m4.params + stats.t.ppf(0.95, 158) * m4.bse, rtol=1e-12)
    assert np.isclose(m4.llf, -REF["deviance"] / 2, rtol=1e-9)
    assert np.isclose(m4.aic, REF["deviance"] + 2 * 8, rtol=1e-9)  # lme4's count: 4 γ, 3 τ, σ²
    assert list(m4.cov_re.index) == ["(Intercept)", "SES_gc"]
    assert np.allclose(m4.cov_re.to_numpy(), REF["tau"], rtol=1e-5)
    assert np.isclose(m4.scale, REF["sigma2"], rtol=1e-6)
    assert np.allclose(np.sqrt(np.diag(m4.cov_params())), m4.bse, rtol=1e-12)
    glance = m4.glance().iloc[0]
    assert (glance["nobs"], glance["ngrps"], glance["method"], glance["certificate"]) == (7185, 160, "REML", "certified")
    assert np.isclose(glance["deviance"], REF["deviance"], rtol=1e-9)


def test_random_effects_by_unit_with_the_users_integer_ids(m4, frames):
    re = m4.random_effects
    assert len(re) == 160 and all(type(k) is int for k in re)  # noqa: E721
    table = re()
    assert table.index.dtype == np.int64 and table.index.name == "ID"
    assert list(re[1224].index) == ["(Intercept)", "SES_gc"]
    assert np.allclose(re[1224].to_numpy(), table.loc[1224, ["u_INTRCPT1", "u_SES"]].to_numpy(dtype=float))
    # the join: the school file's integer ids against the EB table (160 of 160 matched)
    joined = frames[1].join(table, on="ID")
    assert joined["u_SES"].notna().sum() == 160
    assert m4.residuals_level2()["id"].dtype == np.int64 and m4.residuals_level1()["id"].dtype == np.int64
    # text ids stay text
    assert m4._user_ids(["A1", "B2"]).dtype == object and list(m4._user_ids(["007", "12"])) == [7, 12]


def test_predict_gives_back_the_residual_files_fitted_values(m4, frames):
    """The estimation data through predict: SES centred at each school's own mean, EB effects added."""
    students, schools = frames
    data = students.merge(schools, on="ID", how="left")
    fitted = m4.residuals_level1()["fitted"].to_numpy()  # the user's row order, as data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every unit is known: nothing to warn about
        predicted = m4.predict(data)
    assert np.max(np.abs(predicted - fitted)) < 1e-10
    assert m4.predict_notes == []
    # record 1 of the issue: 7.081 in the residual file
    assert abs(predicted[0] - 7.081) < 5e-4


def test_predict_explains_new_units(m4):
    """A school the fit has not seen: SES centred at the mean of its rows in newdata, u = 0."""
    new = pd.DataFrame({"ID": [99999, 99999], "SES": [0.5, -0.1], "SECTOR": [1, 1]})
    with pytest.warns(UserWarning, match="centred at the mean of each such unit's rows"):
        out = m4.predict(new)
    g = m4.params.to_numpy()
    ses = np.array([0.5, -0.1]) - 0.2
    assert np.allclose(out, g[0] + g[1] + (g[2] + g[3]) * ses, rtol=1e-12)
    assert any("fixed-effects prediction" in n for n in m4.predict_notes)


def test_notebook_display_and_multi_model_helpers(m4):
    html = m4._repr_html_()
    assert html.startswith('<div class="hlmcli-results">') and "SECTOR:SES (group-centred) (g11)" in html
    r = REF["tau"][0][1] / np.sqrt(REF["tau"][0][0] * REF["tau"][1][1])
    assert f">{r:.3f}<" in html and "&lt;0.001" in html
    table = hlmcli.table([m4, m4.to_dict()], names=["a", "b"], stars=True)
    assert table.loc["SES (group-centred)", "a"] == f"{REF['fixed'][2]['estimate']:.3f}***"
    assert hlmcli.table([m4], fmt="csv").startswith(" ,Model 1\n")
    # compare: two saved REML fits of one model, unstructured against diagonal τ (one covariance)
    a, b = (json.loads((GOLDEN / f).read_text(encoding="utf-8"))
            for f in ("pin_hsb_m4_reml.json", "pin_hsb_m4_diagonal_json.json"))
    result = hlmcli.compare(a, b, names=["full", "diagonal"])
    assert result["df"] == 1 and np.isclose(result["chi2"], abs(a["deviance"] - b["deviance"]), rtol=1e-12)
    assert str(result).startswith("Model comparison: A = full, B = diagonal (REML)")
    with pytest.raises(hlmcli.api.ModelError, match="2 names for 1 models"):
        hlmcli.table([m4], names=["a", "b"])


@pytest.mark.slow
def test_hglm_predict_gives_back_the_residual_files_eta():
    """An HGLM's prediction is on the link scale: the level-1 residual file's eta, record by record."""
    h = Path(__file__).resolve().parent / "data" / "hglm"
    res = hlmcli.fit(h / "contra_l1.csv", h / "contra_l2.csv", id="DISTRICT", level1_eq="USE = b0 + b1*URBAN + b2*AGE",
                     level2_eqs=["b0 = g00 + u0"], family="bernoulli", estimation="laplace")
    data = pd.read_csv(h / "contra_l1.csv").merge(pd.read_csv(h / "contra_l2.csv"), on="DISTRICT", how="left")
    assert np.max(np.abs(res.predict(data) - res.residuals_level1()["eta"].to_numpy())) < 1e-10
    assert list(res.params.index) == ["(Intercept)", "URBAN", "AGE"] and res.scale == 1.0
    assert np.isclose(res.llf, -res.deviance / 2) and res.random_effects().index.dtype == np.int64
