"""`hlmcli explain`: HLM's output read (HLM 7 HTML, HLM 6 text), and the gap to the certified optimum
judged on the fit's own likelihood. The HLM 7 output is the real run in tests/data/PopularHLM7_output.html;
the HLM 6 text follows HLM 6.04's layout with the numbers it printed for HSB's unconditional model
(Raudenbush & Bryk's Table 4.2; σ² = 39.14831, τ00 = 8.61431, log-likelihood −2.355840E+004 at
iteration 4, as published in UCLA's annotated HLM 6 output)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from hlmcli.cli import main
from hlmcli.io.hlm_output import parse_hlm_output, read_hlm_output

from conftest import DATA, REFERENCE, SAMPLE

POP = SAMPLE / "popular2"
HSB = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"]

HLM6_HSB_M1 = """Module:      HLM2.EXE (6.04.2754.2)
 SPECIFICATIONS FOR THIS HLM2 RUN
 Method of estimation: restricted maximum likelihood
 The outcome variable is  MATHACH
 Level-1 Model
        Y = B0 + R
 Level-2 Model
        B0 = G00 + U0

 Iterations stopped due to small change in likelihood function
 ******* ITERATION 4 *******

 Sigma_squared =     39.14831

 Tau
 INTRCPT1,B0      8.61431

 Tau (as correlations)
 INTRCPT1,B0  1.000
 ----------------------------------------------------
  Random level-1 coefficient   Reliability estimate
 ----------------------------------------------------
  INTRCPT1, B0                        0.901
 ----------------------------------------------------

 The value of the likelihood function at iteration 4 = -2.355840E+004
"""


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_reads_hlm7_html():
    out = read_hlm_output(DATA / "PopularHLM7_output.html")
    printed = REFERENCE["popular2_ml"]["hlm7"]
    assert out.version.startswith("7") and out.method == "ML" and out.iterations == 9
    assert out.sigma2 == printed["sigma2"]
    assert out.tau_labels == ["INTRCPT1", "EXTRAV"] and out.tau[0] == [1.28143, -0.18475]
    assert out.deviance == printed["deviance"]
    assert [r.gamma for r in out.fixed] == ["G00", "G01", "G10", "G20"]
    assert [r.estimate for r in out.fixed] == [f["estimate"] for f in printed["fixed"]]
    assert [r.se for r in out.fixed] == [f["se"] for f in printed["fixed"]]
    assert [r.df for r in out.fixed] == [f["df"] for f in printed["fixed"]]
    assert [r.se for r in out.fixed_robust] == [f["robust_se"] for f in printed["fixed"]]
    assert out.tau == printed["tau"]
    assert [out.chi2[k][1] for k in ("INTRCPT1", "EXTRAV")] == [v["chi2"] for v in printed["varcomp"]]
    assert out.reliability == {"INTRCPT1": 0.633, "EXTRAV": 0.564}


def test_reads_hlm6_text():
    out = parse_hlm_output(HLM6_HSB_M1)
    assert out.version == "6.04" and out.method == "REML" and out.iterations == 4
    assert out.sigma2 == 39.14831 and out.tau == [[8.61431]] and out.loglik == -23558.40
    assert out.reliability == {"INTRCPT1": 0.901}


@pytest.fixture(scope="module")
def popular_fit(tmp_path_factory):
    d = tmp_path_factory.mktemp("pop")
    rc, text = cli("fit", POP / "popular2_level1.csv", POP / "popular2_level2.csv", "--id", "class",
                   "--model", POP / "popular.hlm", "--format", "json")
    assert rc == 0, text
    (d / "fit.json").write_text(text)
    return d / "fit.json"


def test_popular2_hlm7_stopped_short_of_the_optimum(popular_fit):
    rc, text = cli("explain", popular_fit, DATA / "PopularHLM7_output.html", POP / "popular2_level1.csv",
                   POP / "popular2_level2.csv", "--id", "class", "--model", POP / "popular.hlm", "--format", "json")
    assert rc == 0, text
    r = json.loads(text)
    optimum = REFERENCE["popular2_ml"]["optimum"]["deviance"]
    assert r["deviance_optimum"] == pytest.approx(optimum, abs=1e-6)
    # HLM 7 printed 4812.806967: its own deviance lies above the certified optimum by more than its 6 decimals
    assert r["same_likelihood"] is True
    assert r["printed_deviance_above_optimum"] == pytest.approx(4812.806967 - optimum, abs=2e-6)
    assert r["printed_deviance_above_optimum"] > 1e-5
    assert r["consistent_with_early_stop"] is True
    assert r["df_rule"] == "hlm7"
    assert any("stopped early" in f for f in r["findings"])


def test_hsb_hlm6_unconditional_model(tmp_path):
    rc, text = cli("fit", *HSB, "--id", "ID", "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--format", "json")
    assert rc == 0, text
    (tmp_path / "fit.json").write_text(text)
    (tmp_path / "hlm6.txt").write_text(HLM6_HSB_M1)
    rc, text = cli("explain", tmp_path / "fit.json", tmp_path / "hlm6.txt", *HSB, "--id", "ID", "--format", "json")
    assert rc == 0, text
    r = json.loads(text)
    # −2 × HLM 6's log-likelihood, to its 7 printed digits, is the REML deviance at its σ² and τ
    assert r["same_likelihood"] is True and "ln_2pi_offset" not in r
    assert r["hlm_printed_deviance"] == pytest.approx(47116.80, abs=1e-9)
    assert r["deviance_gap"] >= -r["printing_precision"]


def test_hlm6_ml_deviance_offset_is_named(tmp_path, popular_fit):
    """An HLM 6-style ML deviance printed ln 2π below the likelihood at its own estimates."""
    raw = (DATA / "PopularHLM7_output.html").read_text(encoding="utf-8")
    fit = json.loads(popular_fit.read_text())
    from hlmcli.io.hlm_output import parse_hlm_output as parse

    hlm = parse(raw)
    shifted = raw.replace(f"{hlm.deviance:.6f}", f"{hlm.deviance - math.log(2 * math.pi):.6f}")
    (tmp_path / "hlm6.html").write_text(shifted, encoding="utf-8")
    rc, text = cli("explain", popular_fit, tmp_path / "hlm6.html", POP / "popular2_level1.csv",
                   POP / "popular2_level2.csv", "--id", "class", "--model", POP / "popular.hlm", "--format", "json")
    assert rc == 0, text
    r = json.loads(text)
    assert r.get("ln_2pi_offset") is True
    assert fit["method"] == "ML"


def test_other_data_are_refused_in_one_line(popular_fit):
    rc, text = cli("explain", popular_fit, DATA / "PopularHLM7_output.html", *HSB, "--id", "ID")
    assert rc != 0 and len(text.strip().splitlines()) == 1
