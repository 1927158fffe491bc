"""Plausible values and imputed data sets for the three-level HGLM by nested AGQ (analysis/hglm_levels.py's
run_combined_hglm_levels): one certified AGQ fit per outcome column or data set, all with one number of
points N, combined by Rubin's rules (Barnard-Rubin d.f.) and D1, the deviance averaged.

The simulated Bernoulli data of tests/data/hglm3_weights (24 schools, 69 classes, 349 records, three
plausible values PV1-PV3 of Y), a random intercept at each level. Every combined number is recomputed here
from the per-fit JSON (Rubin 1987 with Barnard & Rubin 1999; D1 of Li, Raghunathan & Rubin 1991), and each
per-fit deviance equals the single AGQ fit of its outcome bit for bit (slow: one fit each). The single
three-level AGQ fit itself is checked against R's nested integral in test_hglm3_agq.py.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

D = DATA / "hglm3_weights"
FILES = [D / f"bern_l{k}.csv" for k in (1, 2, 3)]


def model(outcome: str = "PV1") -> list:
    return ["--id2", "CLASS", "--id3", "SCHOOL", "-1", f"{outcome} = p0 + p1*X", "-2", "p0 = b00 + b01*W + r0",
            "-2", "p1 = b10", "-3", "b00 = g000 + g001*Z + u00", "-3", "b01 = g010", "-3", "b10 = g100",
            "--family", "bernoulli", "--estimation", "agq"]


# The default run's model: random intercepts at levels 2 and 3 and one fixed slope, four parameters (each AGQ
# fit about 0.4 s of CPU); the slow test below runs model()'s seven with the same checks.
SMALL = ["--id2", "CLASS", "--id3", "SCHOOL", "-1", "PV1 = p0 + p1*X", "-2", "p0 = b00 + r0", "-2", "p1 = b10",
         "-3", "b00 = g000 + u00", "-3", "b10 = g100", "--family", "bernoulli", "--estimation", "agq"]


def run_two_pv(folder, args: list, tests: tuple) -> tuple:
    """--plausible-values PV1,PV2 with two --test, N chosen adaptively, as typed: (JSON, text)."""
    out = folder / "pv.json"
    proc = hlmcli("fit", *FILES, *args, "--plausible-values", "PV1,PV2", "--test", tests[0], "--test", tests[1],
                  "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def two_pv(tmp_path_factory):
    return run_two_pv(tmp_path_factory.mktemp("agq_pv"), SMALL, ("g000 = 0, g100 = 0", "g100 = 0")), "g100 = 0", (0, 1)


def check_rubin_and_d1(doc: dict, both_columns: tuple = (2, 3)) -> None:
    """The combined tables, D1 tests and averages against the hand computations from the fits' own numbers."""
    from test_hglm3_weights import assert_d1_tests
    from test_hglm_weights import assert_rubin_tables

    fits = doc["fits"]
    assert_rubin_tables(doc, rel=1e-9)
    assert_d1_tests(doc, both_columns)
    assert doc["deviances"] == [f["deviance"] for f in fits]
    assert doc["deviance"] == pytest.approx(np.mean(doc["deviances"]), rel=1e-14)
    for level, key in ((0, "tau_pi"), (1, "tau_beta")):
        tau = np.mean([f[key]["matrix"] for f in fits], axis=0)
        assert np.array(doc["taus"][level]) == pytest.approx(tau, rel=1e-12), key


def test_plausible_values_by_agq(two_pv):
    """Each fit certified by AGQ with the same N; Rubin's rules, D1 and the averaged deviance by hand; the JSON
    valid; the text names the method, its N for every fit and the averaged deviance."""
    check_two_pv(*two_pv)


@pytest.mark.slow
def test_plausible_values_by_agq_with_predictors_at_every_level(tmp_path):
    """The same checks on model(): a predictor at each level, seven parameters."""
    check_two_pv(run_two_pv(tmp_path, model(), ("g010 = 0, g100 = 0", "g001 = 0")), "g001 = 0", (2, 3))


def check_two_pv(run: tuple, single_test: str, both_columns: tuple) -> None:
    from hlmcli.report.schemas import first_error_file

    doc, text = run
    assert first_error_file(doc, "combined-levels.json") is None
    assert doc["converged"] and doc["combining"]["outcomes"] == ["PV1", "PV2"]
    n = doc["hglm"]["quadrature_points"]
    assert doc["hglm"]["estimation"] == "agq" and not doc["hglm"]["quadrature_points_given"]
    assert doc["hglm"]["quadrature_accurate"] and doc["hglm"]["quadrature_refitted"] == []
    for fit in doc["fits"]:
        assert fit["certificate"]["certified"] and fit["converged"]
        assert fit["hglm"]["estimation"] == "agq" and fit["hglm"]["quadrature_points"] == n
        assert fit["hglm"]["quadrature"]["accurate"]
    check_rubin_and_d1(doc, both_columns)
    for line in ("Results combined over 2 plausible values",
                 f"Method of estimation: adaptive Gauss-Hermite quadrature ({n} points, the same at both levels",
                 f"Quadrature points: {n} for every fit (chosen by each fit's accuracy check)",
                 f"Deviance (average over the fits) = {doc['deviance']:.6f}", f"combined over the fits: {single_test}"):
        assert line in text, line


def test_one_number_of_points_for_every_fit(monkeypatch):
    """N chosen adaptively: the fits that chose fewer points than the most any fit chose are refitted with that
    N (given as --quadrature-points), the others kept; a given N refits none."""
    from hlmcli.analysis import hglm_levels

    def run(nodes):
        return ("design", "fit", SimpleNamespace(estimation="agq", nodes=nodes))

    calls = []

    def refit(spec, archive, fit):
        calls.append((spec, archive, fit.quadrature_points))
        return run(fit.quadrature_points)

    monkeypatch.setattr(hglm_levels, "analyse_hglm_levels", refit)
    from hlmcli.spec import FitOptions

    jobs = [("s1", "a1"), ("s2", "a2"), ("s3", "a3")]
    runs, refitted = hglm_levels._same_points([run(7), run(11), run(9)], jobs, FitOptions())
    assert [h.nodes for _, _, h in runs] == [11, 11, 11] and refitted == [0, 2]
    assert calls == [("s1", "a1", 11), ("s3", "a3", 11)]
    calls.clear()
    runs, refitted = hglm_levels._same_points([run(5), run(5)], jobs[:2], FitOptions(quadrature_points=5))
    assert refitted == [] and calls == []


@pytest.mark.slow
def test_each_fit_is_the_single_fit_and_imputed_equals_plausible(tmp_path):
    """Three plausible values with --quadrature-points 9 and --full-output: each fit's deviance, γ and τ are
    the single AGQ fit of its outcome's, bit for bit; the same three outcomes as imputed data sets give the
    same combined document's numbers, bit for bit; Rubin's rules and D1 by hand."""
    args = ["--quadrature-points", "9", "--test", "g010 = 0, g100 = 0", "--test", "g001 = 0"]
    proc = hlmcli("fit", *FILES, *model(), "--plausible-values", "PV1,PV2,PV3", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["hglm"]["quadrature_points"] == 9 and doc["hglm"]["quadrature_points_given"]
    check_rubin_and_d1(doc)
    for fit, pv in zip(doc["fits"], ("PV1", "PV2", "PV3")):
        one = hlmcli("fit", *FILES, *model(pv), "--quadrature-points", "9", "--format", "json")
        assert one.returncode == 0, one.stderr
        single = json.loads(one.stdout)
        assert fit["deviance"] == single["deviance"], pv
        assert fit["fixed_effects"] == single["fixed_effects"], pv
        assert fit["tau_pi"] == single["tau_pi"] and fit["tau_beta"] == single["tau_beta"], pv
    l1 = pd.read_csv(FILES[0], dtype={"CLASS": str})
    imputed = []
    for k in (1, 2, 3):
        imputed.append(tmp_path / f"imp{k}.csv")
        l1.assign(PV1=l1[f"PV{k}"]).to_csv(imputed[-1], index=False)
    proc = hlmcli("fit", imputed[0], *FILES[1:], *model(), "--imputed", f"{imputed[1]},{imputed[2]}", *args,
                  "--full-output")
    assert proc.returncode == 0, proc.stderr
    assert "Results combined over 3 imputed data sets" in proc.stdout
    assert "Quadrature points: 9 for every fit (as given by --quadrature-points)" in proc.stdout
    assert "Fit 3 of 3" in proc.stdout
    proc = hlmcli("fit", imputed[0], *FILES[1:], *model(), "--imputed", f"{imputed[1]},{imputed[2]}", *args,
                  "--format", "json")
    imp = json.loads(proc.stdout)
    assert imp["combining"]["source"] == "imputed data sets"
    for key in ("fixed_effects", "fixed_effects_robust", "taus", "deviance", "deviances", "hypothesis_tests"):
        assert imp[key] == doc[key], key


def test_points_line_advises_more_points_only_after_a_failed_check():
    """Past the points budget no fit could check its N against more points: the combined line says the
    accuracy is not checked, and does not advise raising --quadrature-points (which would go unchecked too)."""
    from hlmcli.report.report_hglm_levels import agq_points_line

    base = {"quadrature_points": 41, "quadrature_points_given": True, "quadrature_refitted": []}
    unchecked = agq_points_line({**base, "quadrature_accurate": False, "quadrature_checked": False})
    assert "not checked" in unchecked and "raise" not in unchecked
    failed = agq_points_line({**base, "quadrature_accurate": False, "quadrature_checked": True})
    assert "NOT accurate for every fit" in failed and "raise --quadrature-points" in failed
    assert agq_points_line({**base, "quadrature_accurate": True, "quadrature_checked": True}).endswith("--quadrature-points)")
