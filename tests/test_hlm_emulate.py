"""`hlmcli fit --emulate hlm6` as a user types it, against the numbers HLM printed (tests/data/published/
hlm_iterations.json and hlm_published.json: HLM 6.06's Singer & Willett Table 3.3, HLM 6.04's HSB unconditional
model), and the refusals of --emulate hlm7 and of the fits it is not defined for. The main tables stay the
certified optimum (hlm7_cases.json's independent optimum)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, SAMPLE, hlmcli

PUB = DATA / "published"
ITER = json.loads((PUB / "hlm_iterations.json").read_text())
HSB_OPTIMUM = json.loads((DATA / "hlm7_cases.json").read_text())["hsb_m1"]["optimum"]
HSB = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv", "--id", "ID", "-1", "MATHACH = b0 + r",
       "-2", "b0 = g00 + u0"]
EARLY = [PUB / "early_l1.csv", PUB / "early_l2.csv", "--id", "ID", "-1", "COG = b0 + b1*TIME + r",
         "-2", "b0 = g00 + g01*PROGRAM + u0", "-2", "b1 = g10 + g11*PROGRAM + u1", "--ml", "-q"]


def digits(x: float, printed: float, decimals: int) -> bool:
    return round(x, decimals) == round(printed, decimals)


def validates(doc: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from importlib import resources

    jsonschema.validate(doc, json.loads(resources.files("hlmcli").joinpath("schema", "fit-2.json").read_text()))


def test_hsb_unconditional_reml_as_far_as_reproduced(tmp_path):
    """HLM 6.04 (and HLM 7) printed σ² 39.14831 and τ 8.61431 after 4 iterations. The REML EM step reaches σ²
    39.14831 at its 4th step but its own stop comes one step earlier: σ² to 4 decimals and τ to 2, iteration 3,
    as the output and the README say. One call: the text on stdout, the JSON by --json-out."""
    printed = ITER["hsb_unconditional_hlm6"]
    proc = hlmcli("fit", *HSB, "--emulate", "hlm6", "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "fit.json").read_text())
    validates(doc)
    em = doc["emulation"]
    assert em["method"] == "REML" and em["stopped_by_rule"] and em["iterations"] == printed["iteration"] - 1
    assert digits(em["sigma2"], printed["sigma2"], 4) and not digits(em["sigma2"], printed["sigma2"], 5)
    assert digits(em["tau"][0][0], printed["tau"][0][0], 2) and not digits(em["tau"][0][0], printed["tau"][0][0], 3)
    assert em["loglik_offset"] == 0.0 and f"{em['loglik_hlm']:.6E}" == printed["loglik_printed"]["4"].replace("E+00", "E+0")
    # the main tables are the optimum, and the gap is the deviance difference of the two points
    assert doc["sigma2"] == pytest.approx(HSB_OPTIMUM["sigma2"], rel=1e-6)
    assert doc["deviance"] == pytest.approx(HSB_OPTIMUM["deviance"], rel=1e-9)
    assert em["deviance_optimum"] == doc["deviance"] and em["deviance_gap"] == em["deviance"] - doc["deviance"]
    assert 0 <= em["deviance_gap"] < 1e-4
    assert em["fixed_effects"][0]["estimate_optimum"] == doc["fixed_effects"][0]["estimate"]
    text = proc.stdout
    assert "HLM 5/6's EM path (start, EM step and stop rule reconstructed from published HLM 6 output); not an " \
           "optimum" in text and "reproduced only approximately" in text and "Deviance gap" in text
    assert f"{em['sigma2']:.5f}" in text and f"{doc['sigma2']:.5f}" in text


@pytest.mark.slow  # 1493 EM steps on top of the fit: over a second of CPU through the CLI
def test_singer_willett_table_3_3_every_printed_digit():
    printed = ITER["singer_willett_3_3"]
    proc = hlmcli("fit", *EARLY, "--emulate", "hlm6", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    em = doc["emulation"]
    assert em["iterations"] == printed["iteration"] and em["stopped_by_rule"]
    assert round(em["sigma2"], 5) == printed["sigma2"]
    np.testing.assert_array_equal(np.round(em["tau"], 5), printed["tau"])
    # HLM printed -1.184073E+003 at iteration 1492; the log-likelihood changes in the 8th digit after that
    assert f"{em['loglik_hlm']:.6E}" == printed["loglik_printed"]["1492"].replace("E+00", "E+0")
    # R's dense deviance at HLM's printed (rounded) point and lme4's at the optimum (r_reference.json): the
    # rounding to 5 decimals moves the deviance by less than 1e-5 here
    r = json.loads((PUB / "r_reference.json").read_text())["singer_willett_3_3"]
    assert em["deviance"] == pytest.approx(r["deviance_dense_at_hlm"], abs=1e-5)
    assert em["deviance_optimum"] == pytest.approx(r["deviance_lme4"], abs=1e-6)


def test_hlm7_refused_before_reading():
    proc = hlmcli("fit", "no_such_file.csv", "--id", "ID", "-1", "Y = b0 + r", "-2", "b0 = g00 + u0",
                  "--emulate", "hlm7")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "accelerated iteration" in proc.stderr and "--emulate hlm6" in proc.stderr and "hlmcli explain" in proc.stderr


def test_api_emulate_and_refusal():
    import hlmcli as api
    from hlmcli.errors import ModelError

    with pytest.raises(ModelError, match="accelerated iteration"):
        api.fit(*HSB[:2], id="ID", level1_eq="MATHACH = b0 + r", level2_eqs=["b0 = g00 + u0"], emulate="hlm7")


@pytest.mark.parametrize("options,named", [
    (dict(weight1="TIME"), "weight1"), (dict(tau="diagonal"), "--tau diagonal"),
    (dict(constrain=["g01 = g11"]), "--constrain"), (dict(known_variance="TIME"), "--known-variance"),
    (dict(level1_variance="TIME"), "--level1-variance"),
    (dict(level1_covariance="ar1", occasion="TIME"), "--level1-covariance")])
def test_refused_with_options_it_does_not_emulate(options, named):
    """Each refused in one line naming the option and why (the capabilities table's EMULATE_CONFLICTS), before
    any fitting; the CLI gives exit 2 for the same refusal (test_capabilities.py, cells 'emulate-*')."""
    import hlmcli as api
    from hlmcli.errors import RefusedOption

    with pytest.raises(RefusedOption, match=r"with --emulate hlm6: not available") as info:
        api.fit(PUB / "early_l1.csv", PUB / "early_l2.csv", id="ID", level1_eq=EARLY[5], level2_eqs=[EARLY[7], EARLY[9]],
                method="ML", emulate="hlm6", **options)
    assert named.lstrip("-") in str(info.value) and "\n" not in str(info.value)
