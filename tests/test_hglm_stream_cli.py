"""`hlmcli fit --engine stream` for a two-level HGLM by PQL, Laplace or AGQ, as a user types it: the records
spilled by unit and passed over (analysis/hglm_stream.py). References: glmer (contra, diagonal τ,
tests/reference_scripts/hglm_diagonal_glmer.R) and the in-memory fits' golden output (held against
glmer and glmmTMB by test_hglm.py); the streamed fit must equal the in-memory one to 1e-8."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

pytest.importorskip("pyarrow")

H = DATA / "hglm"
GOLDEN = DATA.parent / "golden"
CONTRA = [H / "contra_l1.csv", H / "contra_l2.csv", "--id", "DISTRICT"]


# The certificate's residuals at the optimum (a gradient of 1e-8, a decrement of 1e-18) are rounding
# noise of the last Newton step, not properties of the model: both fits must have them below the
# certificate's tolerance (1e-6 deviance units), not equal.
NOISE = {"face_gradient", "face_decrement"}


def same_numbers(got, want, path="", rel=1e-8):
    """Two JSON documents alike: the same keys and strings, numbers to `rel` (data_hash: the stream
    engine's is of its per-unit statistics, so it differs by design; NOISE: below 1e-6 both)."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            if k in NOISE:
                assert abs(got[k]) < 1e-6 and abs(want[k]) < 1e-6, path
            elif k != "data_hash":
                same_numbers(got[k], want[k], f"{path}.{k}", rel)
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for k, (a, b) in enumerate(zip(got, want)):
            same_numbers(a, b, f"{path}[{k}]", rel)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=rel, abs=1e-12), path
    else:
        assert got == want, path


def test_bernoulli_laplace_streamed_matches_glmer():
    """Random intercept and URBAN slope, diagonal τ, against glmer (PIRLS to 1e-12), in one call."""
    g = json.loads((H / "contra_diag_laplace.json").read_text())
    proc = hlmcli("fit", *CONTRA, "-1", "USE = b0 + b1*URBAN + b2*AGE", "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1",
                  "--family", "bernoulli", "--estimation", "laplace", "--tau", "diagonal", "--engine", "stream",
                  "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["certificate"]["certified"] and out["converged"] and out["n_level1"] == 1934
    assert math.isclose(out["deviance"], g["deviance"], rel_tol=1e-9)
    for f, name in zip(out["fixed_effects"], ("(Intercept)", "URBAN", "AGE")):
        assert f["estimate"] == pytest.approx(g["fixef"][name], rel=1e-4)
        assert f["se"] == pytest.approx(g["se"][name], rel=1e-4)
    assert np.diag(out["tau"]) == pytest.approx(g["tau"], rel=1e-4)


def test_poisson_with_exposure_streamed_equals_the_in_memory_fit():
    """The whole JSON of the pinned in-memory Laplace fit (test_pinned_fits.py), number by number."""
    from test_pinned_fits import CASES

    proc = hlmcli("fit", *CASES["hglm_mmmec_laplace"], "--engine", "stream", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    same_numbers(json.loads(proc.stdout), json.loads((GOLDEN / "hglm_mmmec_laplace.json").read_text()))


@pytest.mark.slow
def test_bernoulli_agq_streamed_prints_the_in_memory_tables():
    from test_pinned_fits import CASES

    proc = hlmcli("fit", *CASES["hglm_contra_agq"], "--engine", "stream")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (GOLDEN / "hglm_contra_agq.txt").read_text(encoding="utf-8")


def test_units_in_any_order_over_several_buckets(tmp_path, monkeypatch):
    """Binomial with trials, the records shuffled so every unit is spread over the file, and buckets of
    3 units: the external sort gives the in-memory fit (the Python API, engine='stream')."""
    import hlmcli as api
    from hlmcli.analysis import hglm_stream

    l1 = pd.read_csv(H / "cbpp_l1.csv").sample(frac=1.0, random_state=2)
    l1.to_csv(tmp_path / "l1.csv", index=False)
    monkeypatch.setattr(hglm_stream, "BUCKET_UNITS", 3)
    kw = dict(id="HERD", level1_eq="INCID = b0 + b1*P2", level2_eqs=["b0 = g00 + u0"], family="binomial",
              trials="SIZE", estimation="laplace")
    streamed = api.fit(tmp_path / "l1.csv", H / "cbpp_l2.csv", engine="stream", **kw).to_dict()
    memory = api.fit(H / "cbpp_l1.csv", H / "cbpp_l2.csv", **kw).to_dict()
    assert streamed["certificate"]["certified"]
    for key in ("deviance", "fixed_effects", "tau", "n_level1", "n_level2"):
        same_numbers(streamed[key], memory[key])
    assert not list(tmp_path.glob("hlmcli-spill-*")), "the spill folder is removed"


def test_a_bad_outcome_is_refused_naming_file_column_and_row(tmp_path):
    l1 = pd.read_csv(H / "contra_l1.csv")
    l1.loc[7, "USE"] = 2
    l1.to_csv(tmp_path / "bad.csv", index=False)
    proc = hlmcli("fit", tmp_path / "bad.csv", H / "contra_l2.csv", "--id", "DISTRICT", "-1", "USE = b0 + b1*URBAN",
                  "-2", "b0 = g00 + u0", "--family", "bernoulli", "--estimation", "laplace", "--engine", "stream")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("hlmcli: error: bad.csv, column USE, row 8: the value 2 is not 0 or 1, as "
                                   "--family bernoulli needs")


def test_what_pql_needs_the_records_for_is_refused_before_reading(tmp_path):
    base = [*CONTRA, "-1", "USE = b0", "-2", "b0 = g00 + u0", "--family", "bernoulli"]
    proc = hlmcli("fit", *base, "--engine", "stream", "--residuals-l1", tmp_path / "r1.csv")  # PQL, the default
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "not available for an HGLM PQL (stream) fit: the streamed HGLM keeps per unit only" in proc.stderr
    assert not any(tmp_path.iterdir())


def _r_close(got, want, tol=1e-4):  # test_hglm.py's comparison with R's PQL (1e-4, the HGLM issue's tolerance)
    return abs(got - want) <= tol * max(abs(want), 1e-2)


def test_bernoulli_pql_streamed_equals_the_in_memory_fit_and_r():
    """Restricted PQL (the default) of a 0/1 outcome by --engine stream, as a user types it: every number
    of the JSON (γ, SEs, robust SEs, τ, the fixed-point check, the population-average table) equals the
    in-memory fit's to 1e-8, and both R's PQL and its population-average GEE (refs/contra_ri_pql_reml,
    contra_ri_pa_reml) to 1e-4."""
    import hlmcli as api

    level2 = ["b0 = g00 + u0"] + [f"b{k} = g{k}0" for k in range(1, 6)]
    eq = "USE = b0 + b1*URBAN + b2*AGE + b3*LC1 + b4*LC2 + b5*LC3"
    proc = hlmcli("fit", *CONTRA, "-1", eq, *[a for e in level2 for a in ("-2", e)], "--family", "bernoulli",
                  "--engine", "stream", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["estimation"] == "pql" and out["method"] == "REML" and out["converged"]
    assert out["fixed_point"]["checked"] and out["fixed_point"]["passed"]
    memory = api.fit(H / "contra_l1.csv", H / "contra_l2.csv", id="DISTRICT", level1_eq=eq, level2_eqs=level2,
                     family="bernoulli").to_dict()
    same_numbers(out, memory)
    for table, name in ((out["fixed_effects"], "contra_ri_pql_reml"),
                        (out["population_average"]["fixed_effects"], "contra_ri_pa_reml")):
        r = json.loads((H / "refs" / f"{name}.json").read_text())["reference"]["fixed"]
        for f in table:
            for key, rkey in (("estimate", "est"), ("se", "se"), ("robust_se", "robust_se")):
                assert _r_close(f[key], r[f["gamma"]][rkey]), (name, f["gamma"], key)


def test_binomial_pql_streamed_prints_the_pinned_in_memory_output(tmp_path):
    """Binomial with trials by PQL: the text, byte for byte, and the JSON of the pinned in-memory fit
    (test_pinned_fits.py), from one call."""
    from test_pinned_fits import CASES

    proc = hlmcli("fit", *CASES["hglm_cbpp_pql"], "--engine", "stream", "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (GOLDEN / "hglm_cbpp_pql.txt").read_text()
    same_numbers(json.loads((tmp_path / "fit.json").read_text()), json.loads((GOLDEN / "hglm_cbpp_pql.json").read_text()))


def test_overdispersed_poisson_pql_over_many_blocks_through_the_api(tmp_path, monkeypatch):
    """Full PQL with --overdispersion (σ² profiled), Poisson with exposure, the records shuffled and
    spilled in blocks of 7 units: the Python API's streamed fit is the in-memory one, the
    population-average table and the fixed-point check included."""
    import hlmcli as api
    from hlmcli.analysis import hglm_stream

    pd.read_csv(H / "mmmec_l1.csv").sample(frac=1.0, random_state=5).to_csv(tmp_path / "l1.csv", index=False)
    monkeypatch.setattr(hglm_stream, "BUCKET_UNITS", 7)
    kw = dict(id="REGION", level1_eq="DEATHS = b0 + b1*UVB", level2_eqs=["b0 = g00 + u0"], family="poisson",
              exposure="EXPECTED", method="ML", overdispersion=True)
    streamed = api.fit(tmp_path / "l1.csv", H / "mmmec_l2.csv", engine="stream", **kw).to_dict()
    memory = api.fit(H / "mmmec_l1.csv", H / "mmmec_l2.csv", **kw).to_dict()
    assert streamed["converged"] and streamed["fixed_point"]["passed"] and streamed["sigma2"] > 1
    for key in ("fixed_effects", "tau", "sigma2", "population_average", "gamma_robust_covariance", "fixed_point",
                "n_level1", "n_level2", "macro_iterations"):
        same_numbers(streamed[key], memory[key])
    assert not list(tmp_path.glob("hlmcli-spill-*")), "the spill folder is removed"


def test_centred_predictors_from_a_parquet_file(tmp_path):
    """group() and grand() centring applied record by record in the spill pass (each unit's mean, the
    records' mean, from the first pass's moments), read from Parquet: the in-memory fit."""
    import hlmcli as api

    pd.read_csv(H / "contra_l1.csv").to_parquet(tmp_path / "l1.parquet", index=False)
    kw = dict(id="DISTRICT", level1_eq="USE = b0 + b1*group(URBAN) + b2*grand(AGE)", level2_eqs=["b0 = g00 + u0"],
              family="bernoulli", estimation="laplace")
    streamed = api.fit(tmp_path / "l1.parquet", H / "contra_l2.csv", engine="stream", **kw).to_dict()
    memory = api.fit(H / "contra_l1.csv", H / "contra_l2.csv", **kw).to_dict()
    assert streamed["certificate"]["certified"]
    for key in ("deviance", "fixed_effects", "tau", "centering_means"):
        same_numbers(streamed.get(key), memory.get(key))
