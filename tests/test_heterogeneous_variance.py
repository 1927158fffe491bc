"""Heterogeneous level-1 variance (--level1-variance X, HLM 7's heterol1var): log σ²_ij = α0 + α1·X_ij on HSB
(MATHACH ~ SES_gc * SECTOR + (1 + SES_gc | ID)) with X = FEMALE (a dummy: nlme's varIdent) and X = SES (continuous:
nlme's varExp), REML and ML, against nlme::lme and glmmTMB's dispformula (tests/data/heterogeneous/hsb_l1var.json,
made by tests/reference_scripts/heterogeneous_l1var.R, where nlme runs optim's BFGS: its default nlminb stops
short by up to 6e-6 in deviance). Deviance within 1e-6 of both; α and γ within 1e-5 relative of nlme, α within
1e-4 of glmmTMB (whose SES REML fit, 3e-8 higher in deviance, has α1 2.3e-5 away from nlme's); the SEs of α within
1e-4 of glmmTMB's (from its Hessian). τ within 1e-3: the deviance is flat along τ11 (the SES slope's variance),
where nlme and glmmTMB themselves differ by up to 1.2e-4 relative at deviances equal to 1e-8."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hlmcli
from hlmcli.errors import DataError, ModelError
from conftest import DATA, SAMPLE, hlmcli as run_cli

REF = json.loads((DATA / "heterogeneous" / "hsb_l1var.json").read_text())
FILES = (SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv")
LEVEL1 = "MATHACH = b0 + b1*group(SES) + r"
LEVEL2 = ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*SECTOR + u1"]
R_ORDER = ["γ00", "γ10", "γ01", "γ11"]  # lme's (Intercept), SES_gc, SECTOR, SES_gc:SECTOR


def check_against_references(doc: dict, x: str, method: str) -> None:
    ref = REF[f"{x}_{method}"]
    tmb = ref["glmmtmb"]
    assert doc["converged"] and doc["certificate"]["certified"]
    v = doc["level1_variance"]
    alpha = [a["estimate"] for a in v["alpha"]]
    for other, tol in ((ref, 1e-5), (tmb, 1e-4)):
        assert doc["deviance"] == pytest.approx(other["deviance"], abs=1e-6)
        assert alpha == pytest.approx(other["alpha"], rel=tol)
        assert np.allclose(doc["tau"], other["tau"], rtol=1e-3, atol=0)
    est = {f["gamma"]: f["estimate"] for f in doc["fixed_effects"]}
    assert [est[g] for g in R_ORDER] == pytest.approx(ref["fixef"], rel=1e-5)
    assert [a["se"] for a in v["alpha"]] == pytest.approx(tmb["alpha_se"], rel=1e-4)
    t = v["test"]
    assert t["deviance_homogeneous"] == pytest.approx(REF[f"homogeneous_{method}"]["deviance"], abs=1e-6)
    assert t["chi2"] == pytest.approx(t["deviance_homogeneous"] - doc["deviance"], rel=1e-12) and t["df"] == 1


def test_cli_female_ml_matches_nlme_and_glmmtmb(tmp_path):
    """As a user types it: the α table and the test against homogeneous σ² in the text, the JSON checked."""
    out = tmp_path / "fit.json"
    proc = run_cli("fit", *FILES, "--id", "ID", "-1", LEVEL1, *[a for eq in LEVEL2 for a in ("-2", eq)], "--ml",
                   "--level1-variance", "FEMALE", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    from hlmcli.report.schemas import first_error

    assert first_error(doc, "fit") is None
    check_against_references(doc, "FEMALE", "ML")
    assert "Model for level-1 variance" in proc.stdout and "FEMALE, α1" in proc.stdout
    assert "Heterogeneous σ2" in proc.stdout and f"{doc['level1_variance']['test']['chi2']:.5f}" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("x,method", [("FEMALE", "REML"), ("SES", "REML"), ("SES", "ML")])
def test_matches_nlme_and_glmmtmb(x, method):
    doc = hlmcli.fit(*FILES, id="ID", level1_eq=LEVEL1, level2_eqs=LEVEL2, method=method,
                     level1_variance=[x]).to_dict()
    check_against_references(doc, x, method)


@pytest.mark.parametrize("names,error,message", [
    (["NOPE"], DataError, "no such variable"),
    (["SECTOR", "SECTOR"], ModelError, "collinear"),
])
def test_bad_variance_predictors_are_refused(names, error, message):
    with pytest.raises(error, match=message) as err:
        hlmcli.fit(*FILES, id="ID", level1_eq=LEVEL1, level2_eqs=LEVEL2, level1_variance=names)
    assert str(err.value).startswith("--level1-variance ") and "\n" not in str(err.value)


def test_conflicting_options_are_refused():
    with pytest.raises(ModelError, match="--test-homogeneity with --level1-variance: not available"):
        hlmcli.fit(*FILES, id="ID", level1_eq=LEVEL1, level2_eqs=LEVEL2, level1_variance="FEMALE",
                   test_homogeneity=True)


def test_hlm_file_heterol1var_points_to_the_option(tmp_path, hsb_loaded):
    from hlmcli.api import make_spec

    path = tmp_path / "m.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\nheterol1var:y\n")
    with pytest.raises(ModelError, match="not documented.*--level1-variance FEMALE"):
        make_spec(hsb_loaded, None, (), model=path)
