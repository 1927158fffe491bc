"""Every cell of the capabilities table (hlmcli/capabilities.py), two-level model kinds × features, as a
user asks for it: each supported cell runs and matches a reference (R's and WeMix's numbers in
tests/data/, or a hand computation from the fit's own printed numbers where no other exists), and each
refused cell is refused in one line giving the table's reason. The README's matrix is the table's."""

from __future__ import annotations

import json
from functools import partial
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hlmcli
from hlmcli.errors import ModelError
from conftest import DATA, ROOT, hlmcli as run_cli
from hlmcli import capabilities

H = DATA / "hglm"
W = DATA / "weights"
LINEAR_FILES = [W / "hsbw_l1.csv", W / "hsbw_l2.csv"]
LINEAR_MODEL = ["--id", "ID", "-1", "MATHACH = b0 + b1*SES + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10",
                "--ml"]
LINEAR_SMALL = ["--id", "ID", "-1", "MATHACH = b0 + b1*SES + r", "-2", "b0 = g00 + u0", "-2", "b1 = g10", "--ml"]
HGLM_FILES = [H / "mmmec_l1.csv", H / "mmmec_l2.csv"]
HGLM_MODEL = ["--id", "REGION", "-1", "DEATHS = b0 + b1*UVB", "-2", "b0 = g00 + u0", "--family", "poisson",
              "--exposure", "EXPECTED"]
HGLM_SMALL = ["--id", "REGION", "-1", "DEATHS = b0", "-2", "b0 = g00 + u0", "--family", "poisson",
              "--exposure", "EXPECTED"]
METHOD = {"linear": [], "linear-summary": ["--engine", "stream"], "pql": [], "laplace": ["--estimation", "laplace"],
          "agq": ["--estimation", "agq", "--quadrature-points", "25"],
          "hglm-stream": ["--estimation", "laplace", "--engine", "stream"]}


def _ref(path: Path) -> dict:
    return json.loads(path.read_text())["reference"]


# The reference of each kind's base fit: estimates (and deviance where the method has one), with the
# relative tolerance the reference tests hold them to (test_weights.py, test_hglm.py).
REFERENCE = {
    "linear": (_ref(W / "hsbw_ri_unweighted.json"), 1e-5),  # WeMix, all weights 1: ML
    "linear-summary": (_ref(W / "hsbw_ri_unweighted.json"), 1e-5),
    "pql": (_ref(H / "refs" / "mmmec_ri_pql_reml.json"), 1e-5),
    "laplace": (_ref(H / "refs" / "mmmec_ri_tmb.json"), 1e-4),  # glmmTMB reaches our optimum; glmer stops short
    "agq": (_ref(H / "refs" / "mmmec_ri_agq25.json"), 1e-4),
    "hglm-stream": (_ref(H / "refs" / "mmmec_ri_tmb.json"), 1e-4),  # Laplace over the records spilled by unit
}


def base(kind: str, small: bool = False) -> list:
    linear = kind.startswith("linear")
    files = LINEAR_FILES if linear else HGLM_FILES
    model = (LINEAR_SMALL if small else LINEAR_MODEL) if linear else (HGLM_SMALL if small else HGLM_MODEL)
    return [*files, *model, *METHOD[kind]]


_runs: dict = {}


def run(*args):
    key = tuple(map(str, args))
    if key not in _runs:
        _runs[key] = run_cli(*args)
    return _runs[key]


def fit_json(kind: str, *extra, small: bool = False) -> dict:
    proc = run("fit", *base(kind, small), *extra, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def matches_reference(fixed: list[dict], kind: str) -> None:
    ref, tol = REFERENCE[kind]
    for f in fixed:
        e = ref["fixed"][f["gamma"]]["est"]
        assert f["estimate"] == pytest.approx(e, rel=tol, abs=tol * 1e-2), (kind, f["gamma"])


def deviance_matches(fit: dict, kind: str) -> None:
    ref, _ = REFERENCE[kind]
    assert fit["deviance"] == pytest.approx(ref["deviance"], rel=1e-7)


def one_line_refusal(proc, why: str) -> None:
    assert proc.returncode in (1, 2), proc.stdout[:200]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert why[:60] in proc.stderr, (why, proc.stderr)
    assert "Traceback" not in proc.stderr


def refused_option(proc, why: str) -> None:
    """An option this kind of fit does not take: one line with the table's reason, and a usage error (exit 2,
    errors.RefusedOption) at every kind, crossed and K levels as two (they gave 1 for some options and 2
    for others)."""
    one_line_refusal(proc, why)
    assert proc.returncode == 2, proc.stderr


# ---------------------------------------------------------------- supported cells

def check_api(kind, tmp_path):
    kwargs = {"linear": dict(method="ML"), "linear-summary": dict(method="ML", engine="stream"),
              "pql": dict(family="poisson", exposure="EXPECTED"),
              "laplace": dict(family="poisson", exposure="EXPECTED", estimation="laplace"),
              "agq": dict(family="poisson", exposure="EXPECTED", estimation="agq", quadrature_points=25),
              "hglm-stream": dict(family="poisson", exposure="EXPECTED", estimation="laplace", engine="stream")}[kind]
    if kind.startswith("linear"):
        res = hlmcli.fit(*LINEAR_FILES, id="ID", level1_eq="MATHACH = b0 + b1*SES + r",
                         level2_eqs=["b0 = g00 + g01*SECTOR + u0", "b1 = g10"], **kwargs)
    else:
        res = hlmcli.fit(*HGLM_FILES, id="REGION", level1_eq="DEATHS = b0 + b1*UVB", level2_eqs=["b0 = g00 + u0"],
                         **kwargs)
    matches_reference(res.to_dict()["fixed_effects"], kind)
    assert res.to_dict() == fit_json(kind) or res.to_dict()["fixed_effects"] == fit_json(kind)["fixed_effects"]


def check_plot(kind, tmp_path):
    pytest.importorskip("matplotlib")
    args = [a for a in base(kind) if a not in ("--engine", "stream")]
    proc = run_cli("plot", "equation", *args, "-o", tmp_path / "eq.png", "--json-out", tmp_path / "drawn.json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "eq.png").stat().st_size > 0
    drawn = json.loads((tmp_path / "drawn.json").read_text())
    matches_reference(drawn["fixed_effects"], kind)
    assert drawn["fixed_effects"] == fit_json(kind)["fixed_effects"]


def _saved(kind, tmp_path, small=False) -> Path:
    path = tmp_path / f"{kind}{'_small' if small else ''}.json"
    path.write_text(json.dumps(fit_json(kind, small=small)))
    return path


def check_table(kind, tmp_path):
    proc = run_cli("table", _saved(kind, tmp_path, True), _saved(kind, tmp_path), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    ref, _ = REFERENCE[kind]
    assert f"{ref['fixed']['γ00']['est']:.3f}" in proc.stdout


def check_compare(kind, tmp_path):
    a, b = _saved(kind, tmp_path, True), _saved(kind, tmp_path)
    proc = run_cli("compare", a, b, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    da, db = json.loads(a.read_text())["deviance"], json.loads(b.read_text())["deviance"]
    assert doc["chi2"] == pytest.approx(da - db, rel=1e-12) and doc["df"] == 1
    assert doc["p"] == pytest.approx(math.erfc(math.sqrt(doc["chi2"] / 2)), rel=1e-9)  # χ²₁ tail, by hand
    deviance_matches(json.loads(b.read_text()), kind)


# The default run renders one of the three paper formats per kind, each format for some kind (each call
# costs a start-up and the tables' imports); test_every_format_of_every_kind (slow) renders all 15.
_FORMAT_OF_KIND = {"linear": "markdown", "linear-summary": "latex", "pql": "html", "laplace": "latex", "agq": "markdown",
                   "hglm-stream": "html"}
_TWO_LEVEL_KINDS = [k for k in capabilities.KINDS
                    if k not in ("three-level", "four-level", "crossed", "three-level-pql", "three-level-laplace",
                                 "three-level-agq")]  # their own checks
assert set(_FORMAT_OF_KIND) == set(_TWO_LEVEL_KINDS) and set(_FORMAT_OF_KIND.values()) == {"markdown", "latex", "html"}


def check_formats(kind, tmp_path, formats=None):
    pytest.importorskip("jinja2")
    pytest.importorskip("tabulate")
    proc = run("fit", *base(kind), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    ref, tol = REFERENCE[kind]
    assert tidy.loc[tidy.term == "(Intercept)", "estimate"].item() == pytest.approx(ref["fixed"]["γ00"]["est"], rel=tol)
    if not kind.startswith("linear"):  # exp(γ) with its interval, as broom's exponentiate = TRUE
        row = tidy.loc[tidy.term == "UVB"].iloc[0]
        assert row["rate.ratio"] == pytest.approx(math.exp(row["estimate"]), rel=1e-9)
        assert row["rate.ratio.conf.low"] == pytest.approx(math.exp(row["conf.low"]), rel=1e-9)
    for fmt in formats or (_FORMAT_OF_KIND[kind],):
        proc = run("fit", *base(kind), "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        assert ("SES" if kind.startswith("linear") else "UVB") in proc.stdout
        if not kind.startswith("linear"):
            assert "Rate ratio" in proc.stdout


def check_test(kind, tmp_path):
    doc = fit_json(kind, "--test", "g10 = 0")
    (test,) = doc["hypothesis_tests"]
    g10 = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ10")
    assert test["model"]["chi2"] == pytest.approx(g10["t"] ** 2, rel=1e-10)
    assert test["robust"]["chi2"] == pytest.approx(g10["robust_t"] ** 2, rel=1e-10)
    matches_reference(doc["fixed_effects"], kind)


def check_constrain(kind, tmp_path):
    """--constrain 'g01 = g10' (SECTOR's effect on the intercept tied to the SES slope): the model refitted by
    hand on S = SECTOR + SES, to 1e-10; the test of the tie is the change from the base fit's deviance."""
    if kind in ("pql", "laplace", "agq"):
        return check_constrain_hglm(kind)
    doc = fit_json(kind, "--constrain", "g01 = g10")
    l1, l2 = (pd.read_csv(p) for p in LINEAR_FILES)
    l1 = l1.merge(l2[["ID", "SECTOR"]], on="ID")
    l1["S"] = l1["SECTOR"] + l1["SES"]
    by_hand = hlmcli.fit(l1, l2.drop(columns="SECTOR"), id="ID", level1_eq="MATHACH = b0 + b1*S + r",
                         level2_eqs=["b0 = g00 + u0", "b1 = g10"], method="ML").to_dict()
    assert doc["deviance"] == pytest.approx(by_hand["deviance"], rel=1e-10)
    hand = [by_hand["fixed_effects"][k] for k in (0, 1, 1)]
    for f, g in zip(doc["fixed_effects"], hand):
        assert (f["estimate"], f["se"]) == pytest.approx((g["estimate"], g["se"]), rel=1e-10)
    base_fit = fit_json(kind)
    matches_reference(base_fit["fixed_effects"], kind)
    assert doc["constraint_test"]["chi2"] == pytest.approx(doc["deviance"] - base_fit["deviance"], rel=1e-9)


def check_constrain_hglm(kind):
    """mmmec's counts with NATION's effect on the intercept tied to the UVB slope ('g01 = g10'): the model
    refitted by hand on S = NATION + UVB (deviance to 1e-9, γ and SEs to 1e-6); the test of the tie (none
    under PQL, which has no deviance) is the change from the unconstrained fit's deviance."""
    model = ["--id", "REGION", "-1", "DEATHS = b0 + b1*UVB", "-2", "b0 = g00 + g01*NATION + u0", "-2", "b1 = g10",
             "--family", "poisson", "--exposure", "EXPECTED", *METHOD[kind]]
    doc = json.loads(run("fit", *HGLM_FILES, *model, "--constrain", "g01 = g10", "--format", "json").stdout)
    l1, l2 = (pd.read_csv(p) for p in HGLM_FILES)
    l1 = l1.merge(l2, on="REGION")
    l1["S"] = l1["NATION"] + l1["UVB"]
    est = METHOD[kind][1] if METHOD[kind] else "pql"
    by_hand = hlmcli.fit(l1, l2.drop(columns="NATION"), id="REGION", level1_eq="DEATHS = b0 + b1*S",
                         level2_eqs=["b0 = g00 + u0", "b1 = g10"], family="poisson", exposure="EXPECTED",
                         estimation=est, quadrature_points=25 if est == "agq" else None).to_dict()
    hand = [by_hand["fixed_effects"][k] for k in (0, 1, 1)]
    for f, g in zip(doc["fixed_effects"], hand):
        assert (f["estimate"], f["se"]) == pytest.approx((g["estimate"], g["se"]), rel=1e-6)
    t = doc["constraint_test"]
    if kind == "pql":
        assert doc["deviance"] is None and t["chi2"] is None and "PQL has no deviance" in t["note"]
        return
    assert doc["deviance"] == pytest.approx(by_hand["deviance"], rel=1e-9)
    assert t["chi2"] == pytest.approx(doc["deviance"] - t["deviance_unconstrained"], rel=1e-12) and t["df"] == 1


def check_known_variance(kind, tmp_path):
    """dat.bcg's log risk ratios with their sampling variances, on latitude: metafor::rma(method = "ML")
    (tests/reference_scripts/vknown_metafor.R; tests/test_known_variance.py covers the rest)."""
    data = pd.read_csv(DATA / "vknown" / "bcg.csv")
    data[["trial", "yi", "vi"]].to_csv(tmp_path / "est.csv", index=False)
    data.drop(columns=["yi", "vi"]).to_csv(tmp_path / "studies.csv", index=False)
    proc = run_cli("fit", tmp_path / "est.csv", tmp_path / "studies.csv", "--id", "trial", "-1", "yi = b0 + r", "-2",
                   "b0 = g00 + g01*ablat + g02*year + u0", "--known-variance", "vi", "--ml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ref = json.loads((DATA / "vknown" / "metafor_rma.json").read_text())["bcg_mods_ML"]
    assert doc["tau"][0][0] == pytest.approx(ref["tau2"], rel=1e-6) and doc["loglik"] == pytest.approx(ref["logLik"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["beta"], rel=1e-6)


def check_level1_variance(kind, tmp_path):
    """log σ² = α0 + α1·FEMALE on HSB: nlme's varIdent and glmmTMB's dispformula = ~ FEMALE (ML;
    tests/reference_scripts/heterogeneous_l1var.R; tests/test_heterogeneous_variance.py covers the rest)."""
    from test_heterogeneous_variance import FILES, LEVEL1, LEVEL2, check_against_references

    proc = run("fit", *FILES, "--id", "ID", "-1", LEVEL1, *[a for eq in LEVEL2 for a in ("-2", eq)], "--ml",
               "--level1-variance", "FEMALE", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    check_against_references(json.loads(proc.stdout), "FEMALE", "ML")


def check_level1_covariance(kind, tmp_path):
    """HMLM on Orthodont, σ² homogeneous with a random intercept (ML): nlme's lme and lmer, and the one engine's
    deviance (tests/reference_scripts/hmlm_nlme.R; tests/test_hmlm.py covers the other structures)."""
    from test_hmlm import D, args, check

    level1, level2 = args("orthodont", 1)
    proc = run("fit", D / "orthodont1.csv", D / "orthodont2.csv", "--id", "ID", "-1", level1,
               *[a for eq in level2 for a in ("-2", eq)], "--ml", "--level1-covariance", "homogeneous",
               "--occasion", "OCC", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    check(json.loads(proc.stdout), "orthodont_u0_homogeneous_ML")


def check_compare_deviance(kind, tmp_path):
    small = fit_json(kind, small=True)
    doc = fit_json(kind, "--compare-deviance", repr(small["deviance"]), "--compare-params", str(small["n_params"]))
    assert doc["deviance_test"]["chi2"] == pytest.approx(small["deviance"] - doc["deviance"], rel=1e-12)
    deviance_matches(doc, kind)


def check_residuals(kind, tmp_path):
    r1, r2 = tmp_path / "r1.csv", tmp_path / "r2.csv"
    proc = run_cli("fit", *base(kind), "--residuals-l1", r1, "--residuals-l2", r2, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    t1, t2 = pd.read_csv(r1), pd.read_csv(r2)
    assert len(t1) == doc["n_level1"] and len(t2) == doc["n_level2"]
    # the level-2 file's fitted intercept is γ00 + γ01·W: the fit's own numbers, by hand
    g = {f["gamma"]: f["estimate"] for f in doc["fixed_effects"]}
    if kind.startswith("linear"):
        expected = g["γ00"] + g["γ01"] * t2["SECTOR"]
    else:
        expected = pd.Series(g["γ00"], index=t2.index)
    scale = t2["fitted_INTRCPT1"].abs().max()  # the file holds about 10 significant digits
    assert (t2["fitted_INTRCPT1"] - expected).abs().max() < 1e-8 * scale
    assert ((t2["eb_INTRCPT1"] - t2["fitted_INTRCPT1"]) - t2["u_INTRCPT1"]).abs().max() < 1e-8 * scale


def check_keep(kind, tmp_path):
    r2 = tmp_path / "r2.csv"
    column = "HIMINTY" if kind.startswith("linear") else "NATION"
    proc = run_cli("fit", *base(kind), "--residuals-l2", r2, "--keep", column)
    assert proc.returncode == 0, proc.stderr
    t2 = pd.read_csv(r2)
    source = pd.read_csv((LINEAR_FILES if kind.startswith("linear") else HGLM_FILES)[1])
    assert list(t2[column]) == list(source.set_index(source.columns[0]).loc[t2["id"], column])


def check_json_out(kind, tmp_path):
    path = tmp_path / "fit.json"
    proc = run_cli("fit", *base(kind), "--json-out", path, "-q")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(path.read_text()) == fit_json(kind)


def check_tau_diagonal(kind, tmp_path):
    doc = fit_json(kind, "--tau", "diagonal")
    assert doc["tau_structure"] == "diagonal"
    # one random effect: a diagonal τ is the unstructured one, so the reference holds
    matches_reference(doc["fixed_effects"], kind)


def check_satterthwaite(kind, tmp_path):
    doc = fit_json(kind, "--df", "satterthwaite")
    assert doc["df_method"] == "satterthwaite"
    other = fit_json("linear-summary" if kind == "linear" else "linear", "--df", "satterthwaite")
    for a, b in zip(doc["fixed_effects"], other["fixed_effects"]):  # memory and summaries agree
        assert a["df"] == pytest.approx(b["df"], rel=1e-6)
    # γ10 of a level-1 slope without a random effect: Satterthwaite's d.f. are near N - J - 1
    g10 = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ10")
    assert abs(g10["df"] - (doc["n_level1"] - doc["n_level2"] - 1)) / g10["df"] < 0.05


def check_df_hlm6(kind, tmp_path):
    doc = fit_json(kind, "--df", "hlm6")
    # HLM 5/6: N - F for the γ of a fixed slope (Snijders & Bosker's example 4.2), J - S - 1 as HLM 7 otherwise
    g10 = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ10")
    assert g10["df"] == doc["n_level1"] - len(doc["fixed_effects"])
    g01 = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ01")
    assert g01["df"] == doc["n_level2"] - 2
    matches_reference(doc["fixed_effects"], kind)


def check_homogeneity(kind, tmp_path):
    doc = fit_json(kind, "--test-homogeneity")
    h = doc["homogeneity"]
    assert h["df"] == h["units_used"] - 1 and h["p"] == pytest.approx(float(__import__("scipy").stats.chi2.sf(h["H"], h["df"])), rel=1e-9)


def check_full_output(kind, tmp_path):
    doc = fit_json(kind, "--full-output")
    assert "full_output" in doc


def check_weights(kind, tmp_path):
    if kind in ("laplace", "agq"):  # the pseudo-likelihood of a binary outcome against glmer (test_hglm_weights.py)
        from test_hglm_weights import check_weights_cell

        return check_weights_cell(kind)
    doc = fit_json(kind, "--weight1", "W1", "--weight2", "W2")
    ref = _ref(W / "hsbw_ri_norm_cluster.json")
    for f in doc["fixed_effects"]:
        assert f["estimate"] == pytest.approx(ref["fixed"][f["gamma"]]["est"], rel=1e-5)
        assert f["robust_se"] == pytest.approx(ref["fixed"][f["gamma"]]["se"], rel=1e-4)


def check_plausible_values(kind, tmp_path):
    if kind in ("pql", "laplace", "agq"):  # binary plausible values, Rubin's rules by hand (test_hglm_weights.py)
        from test_hglm_weights import check_plausible_values_cell

        return check_plausible_values_cell(kind)
    from test_pinned_fits import PV_MODEL, make_pv_files

    proc = run_cli("fit", *make_pv_files(tmp_path), *PV_MODEL, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # Rubin's point estimate is the mean of the M estimates
    for k, f in enumerate(doc["fixed_effects"]):
        mean = sum(fit["fixed_effects"][k]["estimate"] for fit in doc["fits"]) / len(doc["fits"])
        assert f["estimate"] == pytest.approx(mean, rel=1e-12)


def check_missing_now(kind, tmp_path):
    doc = fit_json(kind, "--missing", "now")  # no missing values in these files: the reference fit
    matches_reference(doc["fixed_effects"], kind)


def _same_numbers(got, want, path, rel=1e-8):
    """Two JSON values alike: the same keys and strings, numbers to `rel`."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            _same_numbers(got[k], want[k], f"{path}.{k}", rel)
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for k, (a, b) in enumerate(zip(got, want)):
            _same_numbers(a, b, f"{path}[{k}]", rel)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=1e-12), path
    else:
        assert got == want, path


def check_stream_dask(kind, tmp_path):
    if kind == "pql":  # PQL over the records spilled by unit equals it in memory, population average included
        doc, memory = fit_json(kind, "--engine", "stream"), fit_json(kind)
        assert doc["converged"] and doc["fixed_point"]["passed"]
        for key in ("fixed_effects", "population_average", "tau", "gamma_robust_covariance"):
            _same_numbers(doc[key], memory[key], key)
        matches_reference(doc["fixed_effects"], kind)
        return
    if kind in ("laplace", "agq", "hglm-stream"):  # the HGLM over the records spilled by unit equals it in memory
        memory = fit_json("laplace" if kind == "hglm-stream" else kind)
        doc = fit_json(kind) if kind == "hglm-stream" else fit_json(kind, "--engine", "stream")
        assert doc["certificate"]["certified"] and doc["deviance"] == pytest.approx(memory["deviance"], rel=1e-10)
        for a, b in zip(doc["fixed_effects"], memory["fixed_effects"]):
            assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-8) and a["se"] == pytest.approx(b["se"], rel=1e-8)
        assert np.ravel(doc["tau"]) == pytest.approx(np.ravel(memory["tau"]), rel=1e-8)
        matches_reference(doc["fixed_effects"], kind)
        return
    engine = "stream" if kind == "linear" else "dask"
    args = [a for a in base("linear") if a not in ("--engine", "stream")]
    proc = run_cli("fit", *args, "--engine", engine, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    memory = fit_json("linear")
    for a, b in zip(doc["fixed_effects"], memory["fixed_effects"]):
        assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-9) and a["se"] == pytest.approx(b["se"], rel=1e-8)
    assert doc["deviance"] == pytest.approx(memory["deviance"], rel=1e-10)
    matches_reference(doc["fixed_effects"], "linear")



@pytest.mark.slow
def test_hglm_stream_cell_by_the_dask_engine():
    """The stream_dask cell of the HGLM Laplace, AGQ (stream) column, by --engine dask (its own
    LocalCluster; the fast checks are in test_hglm_dask_cli.py): the in-memory fit to 1e-8, glmmTMB's."""
    pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    memory = fit_json("laplace")
    args = [a if a != "stream" else "dask" for a in base("hglm-stream")]
    proc = run_cli("fit", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["certificate"]["certified"] and doc["deviance"] == pytest.approx(memory["deviance"], rel=1e-10)
    for a, b in zip(doc["fixed_effects"], memory["fixed_effects"]):
        assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-8) and a["se"] == pytest.approx(b["se"], rel=1e-8)
    assert np.ravel(doc["tau"]) == pytest.approx(np.ravel(memory["tau"]), rel=1e-8)
    matches_reference(doc["fixed_effects"], "hglm-stream")


O = DATA / "ordinal"
ORDINAL = [O / "wine_l1.csv", O / "wine_l2.csv", "--id", "judge", "-1", "rating = b0 + b1*warm + b2*contact",
           "-2", "b0 = g00 + u0", "-2", "b1 = g10", "-2", "b2 = g20", "--family", "ordinal"]


def check_ordinal(kind, tmp_path):
    """wine, rating ~ warm + contact + (1|judge): clmm's Laplace or nAGQ = 10 fit (tests/reference_scripts/ordinal_clmm.R);
    PQL: the independent R iteration (tests/reference_scripts/categorical_pql.R)."""
    if kind == "pql":
        ref = _categorical_pql_reference("wine/REML/logit")
        doc = json.loads(run("fit", *ORDINAL, "--format", "json").stdout)  # PQL, the default
        assert doc["converged"] and doc["fixed_point"]["passed"] and doc["deviance"] is None
        assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"][:3], rel=1e-6)
        assert doc["tau"][0][0] == pytest.approx(np.ravel(ref["tau"])[0], rel=1e-6)
        return
    nodes = {"laplace": 1, "agq": 10}[kind]
    ref = next(f for f in json.loads((O / "clmm_reference.json").read_text())["fits"]
               if f["data"] == "wine" and f["link"] == "logit" and f["nAGQ"] == nodes)
    extra = ["--estimation", kind] + (["--quadrature-points", "10"] if kind == "agq" else [])
    doc = json.loads(run("fit", *ORDINAL, *extra, "--format", "json").stdout)
    assert doc["converged"] and doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert doc["clmm"]["theta"] == pytest.approx(ref["theta"], rel=1e-4)
    assert doc["clmm"]["beta"] == pytest.approx(ref["beta"], rel=1e-4)


NB = DATA / "negbin"
NEGBIN = [NB / "owls_l1.csv", NB / "owls_l2.csv", "--id", "nest", "-1", "negotiation = b0 + b1*food",
          "-2", "b0 = g00 + u0", "-2", "b1 = g10", "--family", "negbinomial", "--exposure", "broodsize"]


def check_negbinomial(kind, tmp_path):
    """Owls with exposure, glmmTMB nbinom2 (tests/reference_scripts/negbin_glmmtmb.R): Laplace to glmmTMB; AGQ
    (which glmmTMB lacks) is certified and within the Laplace error of it (tests/test_negbin.py checks the AGQ
    deviance against a numerical integral)."""
    ref = json.loads((NB / "glmmtmb_reference.json").read_text())["owls"]
    doc = json.loads(run("fit", *NEGBIN, "--estimation", kind, "--format", "json").stdout)
    assert doc["converged"] and doc["certificate"]["certified"]
    if kind == "laplace":
        assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
        assert doc["dispersion"]["estimate"] == pytest.approx(ref["theta"], rel=1e-4)
    else:
        assert doc["deviance"] == pytest.approx(ref["deviance"], abs=0.5)
        assert doc["dispersion"]["estimate"] == pytest.approx(ref["theta"], rel=1e-2)


MN = DATA / "multinomial"
MULTINOMIAL = [MN / "sim_l1.csv", MN / "sim_l2.csv", "--id", "school", "-1", "choice = b0 + b1*x",
               "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10", "--family", "multinomial"]


def _categorical_pql_reference(key: str) -> dict:
    return json.loads((DATA / "categorical_pql" / f"{key.replace('/', '-')}.json").read_text())


def check_multinomial(kind, tmp_path):
    """Three categories, random intercepts correlated across the two logits: the R script's maximisation of
    the same Laplace formula (tests/reference_scripts/multinomial_ghq.R); PQL: the independent R iteration
    (tests/reference_scripts/categorical_pql.R)."""
    if kind == "pql":
        ref = _categorical_pql_reference("sim/REML/logit")
        doc = json.loads(run("fit", *MULTINOMIAL, "--format", "json").stdout)  # PQL, the default
        assert doc["converged"] and doc["fixed_point"]["passed"] and doc["deviance"] is None
        assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-6)
        return
    ref = json.loads((MN / "ghq_reference.json").read_text())["laplace"]
    doc = json.loads(run("fit", *MULTINOMIAL, "--estimation", kind, "--format", "json").stdout)
    assert doc["converged"] and doc["certificate"]["certified"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-4)


def check_emulate(kind, tmp_path):
    """--emulate hlm6 adds its record and leaves the main tables the certified optimum (WeMix's); its point is
    never below the optimum in deviance (tests/test_hlm_emulate.py holds it to HLM 6's printed numbers)."""
    doc = fit_json(kind, "--emulate", "hlm6")
    matches_reference(doc["fixed_effects"], kind)
    deviance_matches(doc, kind)
    em = doc["emulation"]
    assert em["deviance_optimum"] == doc["deviance"] and em["deviance_gap"] >= -1e-6 and em["stopped_by_rule"]


SUPPORTED = {f.key: globals()[f"check_{f.key}"] for f in capabilities.FEATURES}


# ---------------------------------------------------------------- three and four levels
# References: lme4's fits in tests/data/three_level (pastes_ml.json; eg_m1_ml.json and lme4_extra.json's eg_m2_ml
# for the likelihood-ratio test, both ML) and tests/data/four_level/schools.json (made by
# tests/reference_scripts/three_level_lme4.R and four_level_lme4.R). Pastes is small, so its cells are cheap.

T3 = DATA / "three_level"
T4 = DATA / "four_level"
PASTES = [T3 / "pastes_l1.csv", T3 / "pastes_l2.csv", T3 / "pastes_l3.csv", "--id2", "SAMPLE", "--id3", "BATCH"]
PASTES_MODEL = ["-1", "STRENGTH = π0 + e", "-2", "π0 = β00 + r0", "-3", "β00 = γ000 + u00"]
EG = [T3 / "eg_l1.csv", T3 / "eg_l2.csv", T3 / "eg_l3.csv", "--id2", "CHILDID", "--id3", "SCHOOLID"]
EG_M1 = ["-1", "MATH = π0 + π1*YEAR + e", "-2", "π0 = β00 + r0", "-2", "π1 = β10 + r1",
         "-3", "β00 = γ000 + u00", "-3", "β10 = γ100 + u10"]
EG_M2 = ["-1", "MATH = π0 + π1*YEAR + e", "-2", "π0 = β00 + β01*FEMALE + r0", "-2", "π1 = β10 + r1",
         "-3", "β00 = γ000 + γ001*LOWINC + u00", "-3", "β01 = γ010",
         "-3", "β10 = γ100 + γ101*LOWINC + γ102*MOBILITY + u10"]
SCHOOLS = [*(T4 / f"schools_l{k}.csv" for k in (1, 2, 3, 4)), "--id2", "STUDENTID", "--id3", "CLASSID",
           "--id4", "SCHOOLID"]
SCHOOLS_MODEL = ["-1", "SCORE = p0 + p1*TIME + e", "-2", "p0 = b00 + b01*SES + r0", "-2", "p1 = b10 + r1",
                 "-3", "b00 = g000 + g001*CSIZE + u00", "-4", "g000 = d0000 + d0001*SECTOR + v000"]
LEVELS_BASE = {"three-level": [*PASTES, *PASTES_MODEL], "four-level": [*SCHOOLS, *SCHOOLS_MODEL]}


def _levels_reference(kind: str) -> tuple[dict, float]:
    """{ascii label: (estimate, se)} and the deviance of lme4's fit of the kind's base model (ML)."""
    if kind == "three-level":
        ref = _ref(T3 / "pastes_ml.json")
        return {k.replace("γ", "g"): (v["est"], v["se"]) for k, v in ref["fixed"].items()}, ref["deviance"]
    ref = json.loads((T4 / "schools.json").read_text())["ml"]
    return {k: (v["est"], v["se"]) for k, v in ref["fixed"].items()}, ref["deviance"]


def levels_matches(doc: dict, kind: str) -> None:
    """A schema 3 or 4 document against lme4: estimates to 1e-6, SEs to 1e-5, the deviance to 1e-8 (relative)."""
    from hlmcli.levels_results import fixed_rows

    fixed, deviance = _levels_reference(kind)
    rows = fixed_rows(doc)
    assert sorted(f["label"].replace("γ", "g").replace("δ", "d") for f in rows) == sorted(fixed)
    for f in rows:
        est, se = fixed[f["label"].replace("γ", "g").replace("δ", "d")]
        assert f["estimate"] == pytest.approx(est, rel=1e-6) and f["se"] == pytest.approx(se, rel=1e-5), f["label"]
    assert doc["deviance"] == pytest.approx(deviance, rel=1e-8)


def levels_json(kind: str, *extra) -> dict:
    proc = run("fit", *LEVELS_BASE[kind], *extra, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def check_levels_api(kind, tmp_path):
    if kind == "three-level":
        res = hlmcli.fit(*PASTES[:2], level3=PASTES[2], id2="SAMPLE", id3="BATCH", level1_eq=PASTES_MODEL[1],
                         level2_eqs=[PASTES_MODEL[3]], level3_eqs=[PASTES_MODEL[5]], warn=lambda m: None)
        assert res.to_dict()["fixed_effects"] == levels_json(kind)["fixed_effects"]
    else:
        res = hlmcli.fit(*SCHOOLS[:2], level3=SCHOOLS[2], level4=SCHOOLS[3], id2="STUDENTID", id3="CLASSID", id4="SCHOOLID",
                         level1_eq=SCHOOLS_MODEL[1], level2_eqs=SCHOOLS_MODEL[3:6:2], level3_eqs=[SCHOOLS_MODEL[7]],
                         level4_eqs=[SCHOOLS_MODEL[9]])
    levels_matches(res.to_dict(), kind)
    # the accessors read the same fit: AIC and BIC as lme4 counts them (every γ, τ entry and σ²)
    fixed, deviance = _levels_reference(kind)
    k = len(fixed) + sum(len(t) * (len(t) + 1) // 2 for t in res.tau.values()) + 1
    assert res.aic == pytest.approx(deviance + 2 * k, rel=1e-8)
    doc = res.to_dict()
    n1 = doc["n_level1"] if kind == "three-level" else doc["n_units"]["level1"]
    assert res.bic == pytest.approx(deviance + k * math.log(n1), rel=1e-8)
    assert list(res.variance_components["level"]) == sorted(res.variance_components["level"], key=lambda v: (v == 1, v))


def check_levels_table(kind, tmp_path):
    a, b = tmp_path / "ml.json", tmp_path / "reml.json"
    a.write_text(json.dumps(levels_json(kind)))
    b.write_text(json.dumps(levels_json(kind, "--reml")))
    proc = run_cli("table", a, b, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    fixed, deviance = _levels_reference(kind)
    first = sorted(fixed)[0]
    assert f"{fixed[first][0]:.3f}" in proc.stdout and f"{deviance:.2f}" in proc.stdout
    assert "J (level 3)" in proc.stdout


def check_levels_compare(kind, tmp_path):
    """The likelihood-ratio test between two nested three-level models (ML, different fixed effects): χ²
    from lme4's two deviances; and refusals of fits of different data or methods, in one line."""
    if kind == "four-level":
        pytest.skip("the four-level compare is the three-level code; its reference pair is the three-level one")
    small, big = tmp_path / "m1.json", tmp_path / "m2.json"
    for path, model in ((small, EG_M1), (big, EG_M2)):
        proc = run("fit", *EG, *model, "--format", "json")
        assert proc.returncode == 0, proc.stderr
        path.write_text(proc.stdout)
    proc = run_cli("compare", small, big, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    d1 = _ref(T3 / "eg_m1_ml.json")["deviance"]
    d2 = json.loads((T3 / "lme4_extra.json").read_text())["models"]["eg_m2_ml"]["deviance"]
    assert doc["chi2"] == pytest.approx(d1 - d2, rel=1e-6) and doc["df"] == 4
    from scipy import stats

    assert doc["p"] == pytest.approx(float(stats.chi2.sf(d1 - d2, 4)), rel=1e-5)
    pastes = tmp_path / "pastes.json"
    pastes.write_text(json.dumps(levels_json("three-level")))
    one_line_refusal(run_cli("compare", pastes, big), "were fitted to different records")
    # the same files' names, shape, ids and counts, one outcome value changed: only the data hash tells
    other = tmp_path / "other"
    other.mkdir()
    for src in PASTES[:3]:
        (other / src.name).write_bytes(src.read_bytes())
    l1 = pd.read_csv(other / PASTES[0].name)
    l1.loc[0, "STRENGTH"] += 1.0
    l1.to_csv(other / PASTES[0].name, index=False)
    proc = run("fit", *(other / src.name for src in PASTES[:3]), *PASTES[3:], *PASTES_MODEL, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    changed = json.loads(proc.stdout)
    original = json.loads(pastes.read_text())
    assert [changed[k] for k in ("data_source", "ids", "n_level1", "n_level2", "n_level3", "n_deleted")] == \
        [original[k] for k in ("data_source", "ids", "n_level1", "n_level2", "n_level3", "n_deleted")]
    assert changed["data_hash"] != original["data_hash"]
    (tmp_path / "changed.json").write_text(proc.stdout)
    one_line_refusal(run_cli("compare", pastes, tmp_path / "changed.json"),
                     "were fitted to different records (the outcome values or units differ)")


def test_levels_compare_refuses_other_data_of_the_same_shape(tmp_path):
    """The fast form of check_levels_compare's last refusal: two three-level fits whose files have the same
    names, ids and counts but one outcome value changed differ only in their data hash, and compare refuses."""
    from hlmcli.errors import DataError
    from hlmcli.report.compare import compare_fits

    for src in PASTES[:3]:
        (tmp_path / src.name).write_bytes(src.read_bytes())
    l1 = pd.read_csv(tmp_path / PASTES[0].name)
    l1.loc[0, "STRENGTH"] += 1.0
    l1.to_csv(tmp_path / PASTES[0].name, index=False)
    def fit(files):  # in process: check_levels_compare (slow) makes both fits with the command
        return hlmcli.fit(*files[:2], level3=files[2], id2="SAMPLE", id3="BATCH", level1_eq=PASTES_MODEL[1],
                          level2_eqs=[PASTES_MODEL[3]], level3_eqs=[PASTES_MODEL[5]], warn=lambda m: None).to_dict()

    docs = [fit(PASTES[:3]), fit([tmp_path / src.name for src in PASTES[:3]])]
    assert docs[0]["n_level1"] == docs[1]["n_level1"] and docs[0]["data_hash"] != docs[1]["data_hash"]
    with pytest.raises(DataError, match=r"fitted to different records \(the outcome values or units differ\)"):
        compare_fits(docs[0], docs[1], "a.json", "b.json")


def test_levels_data_hash_by_hand():
    """The three-level data hash from the source files by hand: the outcome in archive order (level-3 file
    order, then level-2 file order, records stable), then per level the unit sizes and ids (fit-3.json)."""
    import hashlib

    import numpy as np

    l1, l2, l3 = (pd.read_csv(p, dtype=str) for p in PASTES[:3])
    batches = list(l3["BATCH"])
    samples = sorted(l2["SAMPLE"], key=lambda s: batches.index(l2.set_index("SAMPLE").loc[s, "BATCH"]))
    records = sorted(range(len(l1)), key=lambda i: samples.index(l1["SAMPLE"][i]))
    y = l1["STRENGTH"].astype(float).to_numpy()[records]
    h = hashlib.sha256(np.ascontiguousarray(y, dtype="<f8").tobytes())
    sizes2 = [int((l1["SAMPLE"] == s).sum()) for s in samples]
    sizes3 = [int((l2["BATCH"] == b).sum()) for b in batches]
    for k, (sizes, ids) in enumerate(((sizes2, samples), (sizes3, batches))):
        h.update(b"\x1e" if k else b"")
        h.update(np.cumsum([0] + sizes).astype("<i8").tobytes())
        h.update("\x1f".join(ids).encode("utf-8"))
    assert levels_json("three-level")["data_hash"] == h.hexdigest()


def check_levels_formats(kind, tmp_path):
    proc = run("fit", *LEVELS_BASE[kind], "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    fixed, _ = _levels_reference(kind)
    intercept = "g000" if kind == "three-level" else "d0000"
    assert tidy.loc[tidy.term == "(Intercept)", "estimate"].item() == pytest.approx(fixed[intercept][0], rel=1e-6)
    assert list(tidy.effect).count("ran_pars") == (3 if kind == "three-level" else 6)  # sd__, cor__ of each level, σ
    pytest.importorskip("jinja2")
    pytest.importorskip("tabulate")
    res = hlmcli.fit(*PASTES[:2], level3=PASTES[2], id2="SAMPLE", id3="BATCH", level1_eq=PASTES_MODEL[1],
                     level2_eqs=[PASTES_MODEL[3]], level3_eqs=[PASTES_MODEL[5]], warn=lambda m: None)
    for fmt in ("markdown", "latex", "html"):
        assert f"{fixed[intercept][0]:.3f}" in res.table(fmt) if kind == "three-level" else True
    proc = run("fit", *LEVELS_BASE[kind], "--format", "markdown")
    assert proc.returncode == 0 and "(Intercept)" in proc.stdout and "J (level 3)" in proc.stdout


def check_levels_constrain(kind, tmp_path):
    """Three levels: the pastes model with two casks tied equals the one refitted on their summed dummies
    (test_constraints). Four levels: SES's effect on the intercept tied to the TIME slope's (d0100 = d1000),
    fitted as one, and the test of the tie the change from the base fit's deviance (which matches lme4)."""
    if kind == "three-level":
        from test_constraints import test_three_level_constrained_fit_is_the_summed_predictor_fit_fast as check

        return check(tmp_path)
    doc = levels_json(kind, "--constrain", "d0100 = d1000")
    f = {r["label"]: r for r in doc["fixed_effects"]}
    assert (f["δ0100"]["estimate"], f["δ0100"]["se"]) == (f["δ1000"]["estimate"], f["δ1000"]["se"])
    base_fit = levels_json(kind)
    levels_matches(base_fit, kind)
    t = doc["constraint_test"]
    assert t["deviance_unconstrained"] == pytest.approx(base_fit["deviance"], rel=1e-12)
    assert t["chi2"] == pytest.approx(doc["deviance"] - base_fit["deviance"], rel=1e-9) and t["df"] == 1


def check_levels_test(kind, tmp_path):
    label = "γ000" if kind == "three-level" else "δ0001"
    doc = levels_json(kind, "--test", f"{label} = 0", "--test", f"{label.replace('γ', 'g').replace('δ', 'd')} = 0")
    levels_matches(doc, kind)
    f = next(f for f in doc["fixed_effects"] if f.get("gamma", f.get("label")) == label)
    for test in doc["hypothesis_tests"]:  # the Unicode and the ASCII label name the same γ: t² by hand
        assert test["model"]["chi2"] == pytest.approx(f["t"] ** 2, rel=1e-10)
        assert test["robust"]["chi2"] == pytest.approx(f["robust_t"] ** 2, rel=1e-10)
    # a joint test: Wald's statistic from γ and its covariance, by hand
    if kind == "four-level":
        doc = levels_json(kind, "--test", "d0001 = 0, d0010 = 0")
        import numpy as np

        idx = [k for k, f in enumerate(doc["fixed_effects"]) if f["label"] in ("δ0001", "δ0010")]
        g = np.array([doc["fixed_effects"][k]["estimate"] for k in idx])
        V = np.array(doc["gamma_covariance"])[np.ix_(idx, idx)]
        assert doc["hypothesis_tests"][0]["model"]["chi2"] == pytest.approx(float(g @ np.linalg.solve(V, g)), rel=1e-10)
    proc = run("fit", *LEVELS_BASE[kind], "--test", "g00 = 0")  # a two-level label: the labels it has, in one line
    one_line_refusal(proc, "--test 'g00 = 0'")
    assert ("fixed effects are g000" if kind == "three-level" else "fixed effects are d0000, d0001") in proc.stderr


def check_levels_compare_deviance(kind, tmp_path):
    prior = 300.0 if kind == "three-level" else 10200.0
    doc = levels_json(kind, "--compare-deviance", repr(prior), "--compare-params", "3")
    _, deviance = _levels_reference(kind)
    assert doc["deviance_test"]["chi2"] == pytest.approx(prior - deviance, rel=1e-8)
    assert doc["deviance_test"]["df"] == doc["n_params"] - 3


def check_levels_residuals(kind, tmp_path):
    K = 3 if kind == "three-level" else 4
    paths = {k: tmp_path / f"r{k}.csv" for k in range(1, K + 1)}
    args = [x for k, path in paths.items() for x in (f"--residuals-l{k}", path)]
    proc = run_cli("fit", *LEVELS_BASE[kind], *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    counts = [doc["n_level1"], doc["n_level2"], doc["n_level3"]] if K == 3 else list(doc["n_units"].values())
    tables = {k: pd.read_csv(path) for k, path in paths.items()}
    assert [len(tables[k]) for k in range(1, K + 1)] == counts
    t1 = tables[1]
    # level 1: the fixed part is the γs' sum by hand; outcome - fitted = residual
    g = {f.get("gamma", f.get("label")): f["estimate"] for f in doc["fixed_effects"]}
    if K == 3:
        expected = pd.Series(g["γ000"], index=t1.index)
    else:
        l2, l3, l4 = (pd.read_csv(T4 / f"schools_l{k}.csv") for k in (2, 3, 4))
        t = t1.merge(l2[["STUDENTID", "SES"]], on="STUDENTID").merge(l3[["CLASSID", "CSIZE"]], on="CLASSID") \
            .merge(l4[["SCHOOLID", "SECTOR"]], on="SCHOOLID")
        expected = (g["δ0000"] + g["δ0001"] * t["SECTOR"] + g["δ0010"] * t["CSIZE"] + g["δ0100"] * t["SES"]
                    + g["δ1000"] * t["TIME"])
    assert (t1["fitted_fixed"] - expected).abs().max() < 1e-8 * expected.abs().max()
    assert (t1[doc["outcome"]] - t1["fitted"] - t1["residual"]).abs().max() < 1e-8
    if K == 3:  # pastes: a record's EB fit is γ000 + its batch's u00 + its sample's r0
        t2, t3 = tables[2], tables[3]
        eb = t1.merge(t2[["id", "r_INTRCPT1"]], left_on="SAMPLE", right_on="id") \
            .merge(t3[["id", "u_INTRCPT1_INTRCPT2"]], left_on="BATCH", right_on="id")
        assert (eb["fitted"] - (g["γ000"] + eb["r_INTRCPT1"] + eb["u_INTRCPT1_INTRCPT2"])).abs().max() < 1e-8


def check_levels_json_out(kind, tmp_path):
    path = tmp_path / "fit.json"
    proc = run_cli("fit", *LEVELS_BASE[kind], "--json-out", path, "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    assert doc == levels_json(kind)
    levels_matches(doc, kind)


def check_levels_plot(kind, tmp_path):
    """The caterpillar plot of the top level's EB residuals, and the fit it drew saved by --json-out (the
    reference fit); the equation graph's line by hand is test_levels_equation_graph_by_hand."""
    pytest.importorskip("matplotlib")
    coef = "INTRCPT1/INTRCPT2" if kind == "three-level" else "INTRCPT1/INTRCPT2/INTRCPT3"
    proc = run_cli("plot", "caterpillar", *LEVELS_BASE[kind], "--coef", coef, "-o", tmp_path / "cat.png",
                   "--json-out", tmp_path / "drawn.json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cat.png").stat().st_size > 0
    drawn = json.loads((tmp_path / "drawn.json").read_text())
    assert drawn == levels_json(kind)
    levels_matches(drawn, kind)
    proc = run_cli("plot", "shrinkage", *LEVELS_BASE[kind], "-o", tmp_path / "s.png")
    refused_option(proc, "compute no unit OLS estimates")


def check_levels_weights(kind, tmp_path):
    """Integer weights (--normalize none) against the unweighted fit of the files with the weighted records
    and units replicated, WeMix's definition (test_levels_weights_cli.py's construction)."""
    from test_levels_plausible import pastes_files
    from test_levels_weights_cli import SCHOOLS_IDS as S_IDS, SCHOOLS_MODEL as S_MODEL, _same_fit, _schools_weighted, \
        _write, replicate_files

    if kind == "three-level":
        paths = pastes_files(tmp_path)
        frames = [pd.read_csv(p) for p in paths]
        ids, model = ["--id2", "SAMPLE", "--id3", "BATCH"], ["-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0",
                                                              "-3", "b00 = g000 + u00"]
        weights, args = ["W1", "W2I", "W3"], ["--weight1", "W1", "--weight2", "W2I", "--weight3", "W3"]
        id_cols = [None, "SAMPLE", "BATCH"]
    else:
        frames = _schools_weighted()
        paths = _write(frames, tmp_path, "w")
        ids, model, weights = S_IDS, S_MODEL, [None, "WS", None, "WT"]
        args, id_cols = ["--weight2", "WS", "--weight4", "WT"], [None, "STUDENTID", "CLASSID", "SCHOOLID"]
    rep = _write(replicate_files(frames, id_cols, weights), tmp_path, "rep")
    proc = run_cli("fit", *paths, *ids, *model, *args, "--normalize", "none", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    plain = run_cli("fit", *rep, *ids, *model, "--format", "json")
    assert plain.returncode == 0, plain.stderr
    _same_fit(json.loads(proc.stdout), json.loads(plain.stdout))


def check_levels_plausible_values(kind, tmp_path):
    """Rubin's point estimate is the mean of the fits' estimates (by hand)."""
    from test_levels_plausible import pastes_files

    if kind == "four-level":
        pytest.skip("the four-level combination is the three-level code (test_levels_weights_cli.py fits one)")
    paths = pastes_files(tmp_path)
    model = ["-1", "PV1 = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00"]
    proc = run_cli("fit", *paths, "--id2", "SAMPLE", "--id3", "BATCH", *model, "--plausible-values", "PV1,PV2,PV3",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for k, f in enumerate(doc["fixed_effects"]):
        mean = sum(fit["fixed_effects"][k]["estimate"] for fit in doc["fits"]) / len(doc["fits"])
        assert f["estimate"] == pytest.approx(mean, rel=1e-12)


def check_levels_missing_now(kind, tmp_path):
    levels_matches(levels_json(kind, "--missing", "now"), kind)  # no missing values: the reference fit


def _stats_reference(name: str, method: str) -> dict:
    """lmer's `||` fits and lmerTest's d.f. (tests/reference_scripts/levels_diagonal_satterthwaite.R)."""
    path = T3 / "eg_diagonal_satterthwaite.json" if name.startswith("eg") else T4 / "diagonal_satterthwaite.json"
    return json.loads(path.read_text())["models"][f"{name}_{method}"]


def _stats_matches(doc: dict, name: str, method: str, names: list[str], diagonal: bool) -> None:
    """A schema 3 or 4 document against lmer (deviance 1e-8, γ 1e-6, SE 1e-5) and lmerTest's d.f. (1e-4)."""
    from hlmcli.levels_results import fixed_rows

    ref = _stats_reference(name, method)
    fixed = ref["fixed"]
    rows = fixed_rows(doc)
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    for f, n in zip(rows, names):
        assert f["estimate"] == pytest.approx(fixed[n]["est"], rel=1e-6) and f["se"] == pytest.approx(fixed[n]["se"], rel=1e-5)
        assert f["df"] == pytest.approx(fixed[n]["df"], rel=1e-4), (n, f["df"], fixed[n]["df"])
    assert doc["df_method"] == "satterthwaite"
    if diagonal:
        assert set(doc["tau_structure"]) == {"diagonal"}
        taus = [doc["tau_pi"]["matrix"], doc["tau_beta"]["matrix"]] if "tau_pi" in doc else \
            [b["matrix"] for b in doc["random_effects"]]
        for m in map(np.array, taus):
            assert np.all(m[~np.eye(m.shape[0], dtype=bool)] == 0.0)


HOSPITALS = [*(T4 / f"hospitals_l{k}.csv" for k in (1, 2, 3, 4)), "--id2", "PATIENTID", "--id3", "WARDID",
             "--id4", "HOSPID"]
HOSPITALS_MODEL = ["-1", "Y = p0 + p1*DOSE + e", "-2", "p0 = b00 + b01*AGE + r0", "-2", "p1 = b10",
                   "-3", "b00 = g000 + g001*STAFF + u00", "-3", "b10 = g100 + u10",
                   "-4", "g000 = d0000 + d0001*TEACHING + v000", "-4", "g100 = d1000 + d1001*TEACHING + v100"]
HOSPITALS_NAMES = ["(Intercept)", "TEACHING", "STAFF", "AGE", "DOSE", "TEACHING:DOSE"]


def check_levels_tau_diagonal(kind, tmp_path):
    """τ diagonal at every level (lmer's `||`), with lmerTest's d.f. in the same fit: EG's growth model
    (three levels, ML) and the hospitals (four levels, REML)."""
    if kind == "three-level":
        proc = run("fit", *EG, *EG_M1, "--tau", "diagonal", "--df", "satterthwaite", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        _stats_matches(json.loads(proc.stdout), "eg_m1_diag", "ml", ["(Intercept)", "YEAR"], True)
    else:
        proc = run("fit", *HOSPITALS, *HOSPITALS_MODEL, "--reml", "--tau", "diagonal", "--df", "satterthwaite",
                   "--format", "json")
        assert proc.returncode == 0, proc.stderr
        _stats_matches(json.loads(proc.stdout), "hospitals_diag", "reml", HOSPITALS_NAMES, True)


def check_levels_satterthwaite(kind, tmp_path):
    """lmerTest's d.f. with τ unstructured: EG's growth model (three levels) and the kind's four-level base
    model (schools), ML."""
    if kind == "three-level":
        proc = run("fit", *EG, *EG_M1, "--df", "satterthwaite", "--format", "json")
        assert proc.returncode == 0, proc.stderr
        _stats_matches(json.loads(proc.stdout), "eg_m1", "ml", ["(Intercept)", "YEAR"], False)
    else:
        doc = levels_json(kind, "--df", "satterthwaite")
        _stats_matches(doc, "schools", "ml", ["(Intercept)", "SECTOR", "CSIZE", "SES", "TIME"], False)


def check_levels_keep(kind, tmp_path):
    """--keep at three and four levels: source columns (text too) in every level's residual file, taken from
    the source files by hand: from the level's own file or one above through the unit's ancestor, from a
    file below where constant within the unit (else empty); `row` maps each record to its level-1 row."""
    if kind == "four-level":
        paths = {k: tmp_path / f"r{k}.csv" for k in (1, 3)}
        proc = run_cli("fit", *LEVELS_BASE[kind], "--residuals-l1", paths[1], "--residuals-l3", paths[3],
                       "--keep", "SECTOR,CSIZE", "-q")
        assert proc.returncode == 0, proc.stderr
        l3, l4 = (pd.read_csv(T4 / f"schools_l{k}.csv") for k in (3, 4))
        r1, r3 = pd.read_csv(paths[1]), pd.read_csv(paths[3])
        school = l4.set_index("SCHOOLID")["SECTOR"]
        assert list(r3["SECTOR"]) == list(school.loc[l3.set_index("CLASSID").loc[r3["id"], "SCHOOLID"]])
        assert list(r1["CSIZE"]) == list(l3.set_index("CLASSID").loc[r1["CLASSID"], "CSIZE"])
        l1 = pd.read_csv(T4 / "schools_l1.csv")
        assert list(r1["SCORE"]) == list(l1["SCORE"].iloc[r1["row"] - 1])
        return
    rng = np.random.default_rng(19)
    l1 = pd.read_csv(PASTES[0]).iloc[rng.permutation(60)].reset_index(drop=True)
    l1["NOTE"] = [f"n{i}" for i in range(60)]  # text, one per record
    l1["SCODE"] = "s" + l1["SAMPLE"].astype(str)  # text, constant within each level-2 unit
    l2 = pd.read_csv(PASTES[1])
    l3 = pd.read_csv(PASTES[2])
    l3["PLANT"] = "p" + l3["BATCH"].astype(str)
    files = [tmp_path / f"pastes_l{k}.csv" for k in (1, 2, 3)]
    for frame, path in zip((l1, l2, l3), files):
        frame.to_csv(path, index=False)
    paths = {k: tmp_path / f"r{k}.csv" for k in (1, 2, 3)}
    proc = run_cli("fit", *files, *PASTES[3:], *PASTES_MODEL, *(x for k, p in paths.items() for x in (f"--residuals-l{k}", p)),
                   "--keep", "NOTE,CASK,PLANT,SCODE", "-q")
    assert proc.returncode == 0, proc.stderr
    r1, r2, r3 = (pd.read_csv(paths[k], dtype=str, keep_default_na=False) for k in (1, 2, 3))
    assert list(r1.columns[-4:]) == ["NOTE", "CASK", "PLANT", "SCODE"] and list(r1.columns[:3]) == ["SAMPLE", "BATCH", "row"]
    src = l1.iloc[r1["row"].astype(int) - 1]
    assert list(r1["NOTE"]) == list(src["NOTE"]) and list(r1["SCODE"]) == list(src["SCODE"])
    assert [float(x) for x in r1["STRENGTH"]] == list(src["STRENGTH"])
    cask = l2.set_index(l2["SAMPLE"].astype(str))["CASK"]
    assert list(r1["CASK"]) == list(cask.loc[r1["SAMPLE"]]) and list(r1["PLANT"]) == ["p" + b for b in r1["BATCH"]]
    assert sorted(r1["row"].astype(int)) == list(range(1, 61))
    assert list(r2["CASK"]) == list(cask.loc[r2["id"]]) and list(r2["SCODE"]) == ["s" + i for i in r2["id"]]
    assert set(r2["NOTE"]) == {""}  # a level-1 column varying within the unit: empty
    batch = r3.columns[0]
    assert list(r3["PLANT"]) == ["p" + b for b in r3[batch]] and set(r3["CASK"]) == {""} and set(r3["SCODE"]) == {""}


def check_levels_stream_dask(kind, tmp_path):
    """--engine stream at three and four levels: the JSON equal to memory's to 1e-10 in every number
    (the Dask engine: tests/test_dask_engine.py), against lme4; --residuals-l1 refused with its reason."""
    from engine_cases import differences

    doc = levels_json(kind, "--engine", "stream")
    assert differences(levels_json(kind), doc) == []
    levels_matches(doc, kind)
    proc = run("fit", *LEVELS_BASE[kind], "--engine", "stream", "--residuals-l1", tmp_path / "r1.csv", "-q")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs the records themselves" in proc.stderr
    # --missing now is the capabilities table's refusal too (its reason): an option the fit does not take
    proc = run("fit", *LEVELS_BASE[kind], "--engine", "dask", "--missing", "now", "-q")
    refused_option(proc, f"--missing now: not available with --engine dask for a {kind} linear fit: "
                         + capabilities.reason("missing_now", "linear-summary"))


def check_levels_level1_covariance(kind, tmp_path):
    """HMLM2 on egsingle's first 15 schools, σ² homogeneous within children (ML): nlme's lme with two grouping
    levels and HLM3's own fit (tests/reference_scripts/hmlm2_nlme.R; tests/test_hmlm.py covers AR(1) and the
    heterogeneous model)."""
    from test_hmlm import test_cli_hmlm2_matches_nlme

    test_cli_hmlm2_matches_nlme("homogeneous", tmp_path)


SUPPORTED_LEVELS = {key[len("check_levels_"):]: f for key, f in globals().items() if key.startswith("check_levels_")}


# ---------------------------------------------------------------- the three-level HGLM (PQL) column

H3 = DATA / "hglm3"
GROUSE = [*(H3 / f"grouse_l{k}.csv" for k in (1, 2, 3)), "--id2", "BROOD", "--id3", "LOCATION"]
GROUSE_MODEL = ["-1", "TICKS = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
                "-3", "b00 = g000 + g001*CHEIGHT + u00", "-3", "b01 = g010", "-3", "b02 = g020", "--family", "poisson"]
LEVELS_BASE["three-level-pql"] = [*GROUSE, *GROUSE_MODEL]


def hglm3_matches(doc: dict) -> None:
    """The grouseticks PQL fit against R's PQL fixed point (test_hglm3.pql_matches: γ 1e-6, SE 1e-5, τ 1e-5)."""
    from test_hglm3 import pql_matches

    pql_matches(doc, "grouseticks")


def hglm3_json(*extra) -> dict:
    return levels_json("three-level-pql", *extra)


def check_hglm3_api(tmp_path):
    res = hlmcli.fit(*GROUSE[:2], level3=GROUSE[2], id2="BROOD", id3="LOCATION", level1_eq=GROUSE_MODEL[1],
                     level2_eqs=[GROUSE_MODEL[3]], level3_eqs=GROUSE_MODEL[5::2][:3], family="poisson",
                     warn=lambda m: None)
    assert res.to_dict()["fixed_effects"] == hglm3_json()["fixed_effects"]
    hglm3_matches(res.to_dict())
    assert res.converged and res.failures == []
    l1 = res.residuals_level1()  # the link scale with the offset, the fitted mean and y − mean
    assert l1.fitted_mean.to_numpy() == pytest.approx(np.exp(l1.eta.to_numpy()), rel=1e-12)
    assert len(res.random_effects(3)) == 63


def check_hglm3_table(tmp_path):
    a = tmp_path / "fit.json"
    a.write_text(json.dumps(hglm3_json()))
    proc = run_cli("table", a, a, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    first = hglm3_json()["fixed_effects"][0]["estimate"]
    assert f"{first:.3f}" in proc.stdout and "J (level 3)" in proc.stdout


def check_hglm3_formats(tmp_path):
    proc = run("fit", *LEVELS_BASE["three-level-pql"], "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    ref = hglm3_json()["fixed_effects"][0]["estimate"]
    assert tidy.loc[tidy.term == "(Intercept)", "estimate"].item() == pytest.approx(ref, rel=1e-9)  # 10 digits printed


def check_hglm3_test(tmp_path):
    doc = hglm3_json("--test", "γ001 = 0", "--test", "g001 = 0")
    f = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ001")
    for test in doc["hypothesis_tests"]:
        assert test["model"]["chi2"] == pytest.approx(f["t"] ** 2, rel=1e-10)
        assert test["robust"]["chi2"] == pytest.approx(f["robust_t"] ** 2, rel=1e-10)


def check_hglm3_constrain(tmp_path):
    """--constrain 'g010 = g020' by PQL: the summed-predictor fit (test_constraints.py), no test of the tie."""
    from test_constraints import test_three_level_pql_constrained_fit_is_the_summed_predictor_fit as check

    check(tmp_path)


def check_hglm3_json_out(tmp_path):
    path = tmp_path / "fit.json"
    proc = run_cli("fit", *LEVELS_BASE["three-level-pql"], "--json-out", path, "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    assert doc == hglm3_json()
    hglm3_matches(doc)


def check_hglm3_tau_diagonal(tmp_path):
    """One random effect per level: a diagonal τ is the same model, so the same fit."""
    doc = hglm3_json("--tau", "diagonal")
    hglm3_matches(doc)
    assert set(doc["tau_structure"]) == {"diagonal"}


def hglm3_files(kind: str, tmp_path, *extra) -> dict:
    """The residual files of levels 1-3 of the grouseticks fit (with the options `extra`), as DataFrames."""
    files = {k: tmp_path / f"res{k}.csv" for k in (1, 2, 3)}
    proc = run_cli("fit", *LEVELS_BASE[kind], *[x for k in files for x in (f"--residuals-l{k}", files[k])], *extra, "-q")
    assert proc.returncode == 0, proc.stderr
    return {k: pd.read_csv(files[k], dtype={"id": str, "BROOD": str, "LOCATION": str}) for k in files}


def hglm3_residuals_check(kind: str, tmp_path) -> None:
    """η = fixed part + the units' EB estimates (link scale, no offset here), the mean exp(η), y − mean,
    one row per record and per unit (test_hglm3_laplace.py checks the EB modes against a dense Laplace)."""
    res = hglm3_files(kind, tmp_path)
    l1, l2, l3 = res[1], res[2], res[3]
    assert (len(l1), len(l2), len(l3)) == (403, 118, 63)
    r, u = l1.BROOD.map(dict(zip(l2.id, l2.r_INTRCPT1))), l1.LOCATION.map(dict(zip(l3.id, l3.u_INTRCPT1_INTRCPT2)))
    assert np.all(np.abs(l1.eta - (l1.eta_fixed + r + u)) <= 1e-9 * (l1.eta.abs() + l1.eta_fixed.abs() + r.abs() + u.abs()))
    assert l1.fitted_mean.to_numpy() == pytest.approx(np.exp(l1.eta.to_numpy()), rel=2e-9)
    assert (l2.postvar_r_INTRCPT1 > 0).all() and (l3.postvar_u_INTRCPT1_INTRCPT2 > 0).all()


def hglm3_keep_check(kind: str, tmp_path) -> None:
    l1 = hglm3_files(kind, tmp_path, "--keep", "INDEX,CHEIGHT")[1]
    src = pd.read_csv(GROUSE[0], dtype={"INDEX": str})
    assert list(l1.INDEX.astype(str)) == list(src.INDEX.iloc[l1.row - 1]) and "CHEIGHT" in l1


def hglm3_plot_check(kind: str, tmp_path) -> None:
    """The caterpillar plot of the level-3 EB estimates is drawn; the diagnostics plot (a normal model's
    residual panels) is refused in one line."""
    out = tmp_path / "cat.png"
    proc = run_cli("plot", "caterpillar", *LEVELS_BASE[kind], "--coef", "INTRCPT1/INTRCPT2", "-o", out, "-q")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused_option(run_cli("plot", "diagnostics", *LEVELS_BASE[kind], "-o", tmp_path / "d.png"),
                     "a diagnostics plot of a three-level HGLM")


def check_hglm3_residuals(tmp_path):
    hglm3_residuals_check("three-level-pql", tmp_path)


def check_hglm3_keep(tmp_path):
    hglm3_keep_check("three-level-pql", tmp_path)


def check_hglm3_plot(tmp_path):
    hglm3_plot_check("three-level-pql", tmp_path)


def check_hglm3_missing_now(tmp_path):
    hglm3_matches(hglm3_json("--missing", "now"))  # no missing values: the reference fit


def check_hglm3_plausible_values(tmp_path):
    from test_hglm_weights import test_three_level_pql_plausible_values

    test_three_level_pql_plausible_values(tmp_path)


SUPPORTED_HGLM3 = {key[len("check_hglm3_"):]: f for key, f in globals().items() if key.startswith("check_hglm3_")}


# ---------------------------------------------------------------- the three-level HGLM (Laplace) column

LEVELS_BASE["three-level-laplace"] = [*GROUSE, *GROUSE_MODEL, "--estimation", "laplace"]


def hglm3l_matches(doc: dict) -> None:
    """The grouseticks Laplace fit against glmer and glmmTMB (test_hglm3_laplace.laplace_matches)."""
    from test_hglm3_laplace import laplace_matches

    laplace_matches(doc, "grouseticks")


def hglm3l_json(*extra) -> dict:
    return levels_json("three-level-laplace", *extra)


def hglm3_kind_table(kind, tmp_path):
    """`hlmcli table` of a saved three-level HGLM fit (kind: three-level-laplace or three-level-agq)."""
    a = tmp_path / "fit.json"
    a.write_text(json.dumps(levels_json(kind)))
    proc = run_cli("table", a, a, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert f"{levels_json(kind)['fixed_effects'][0]['estimate']:.3f}" in proc.stdout and "J (level 3)" in proc.stdout


def hglm3_kind_formats(kind, tmp_path):
    proc = run("fit", *LEVELS_BASE[kind], "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    tidy = pd.read_csv(pd.io.common.StringIO(proc.stdout))
    ref = levels_json(kind)["fixed_effects"][0]["estimate"]
    assert tidy.loc[tidy.term == "(Intercept)", "estimate"].item() == pytest.approx(ref, rel=1e-9)


def hglm3_kind_test(kind, tmp_path):
    doc = levels_json(kind, "--test", "γ001 = 0")
    f = next(f for f in doc["fixed_effects"] if f["gamma"] == "γ001")
    test = doc["hypothesis_tests"][0]
    assert test["model"]["chi2"] == pytest.approx(f["t"] ** 2, rel=1e-10)
    assert test["robust"]["chi2"] == pytest.approx(f["robust_t"] ** 2, rel=1e-10)


def hglm3_kind_json_out(kind, matches, tmp_path):
    path = tmp_path / "fit.json"
    proc = run_cli("fit", *LEVELS_BASE[kind], "--json-out", path, "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    assert doc == levels_json(kind)
    matches(doc)


def hglm3_kind_compare(kind, tmp_path):
    """The likelihood-ratio test of γ001 (CHEIGHT): the difference of the two fits' deviances (Laplace, or AGQ
    with 15 points in both), 1 d.f., and no level-1 row in the variance reduction (an HGLM has no σ²)."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    b.write_text(json.dumps(levels_json(kind)))
    small = [x if x != "b00 = g000 + g001*CHEIGHT + u00" else "b00 = g000 + u00" for x in LEVELS_BASE[kind]]
    proc = run_cli("fit", *small, "--json-out", a, "-q")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("compare", a, b, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    da, db = json.loads(a.read_text())["deviance"], json.loads(b.read_text())["deviance"]
    assert doc["chi2"] == pytest.approx(da - db, rel=1e-12) and doc["df"] == 1
    assert all(r["component"] != "level-1" for r in doc["variance_reduction"])


def hglm3_kind_compare_deviance(kind, tmp_path):
    doc = levels_json(kind, "--compare-deviance", "2010", "--compare-params", "5")
    test = doc["deviance_test"]
    assert test["chi2"] == pytest.approx(2010 - doc["deviance"], rel=1e-12) and test["df"] == 1


def hglm3_kind_tau_diagonal(kind, matches, tmp_path):
    """One random effect per level: a diagonal τ is the same model, so the same fit."""
    doc = levels_json(kind, "--tau", "diagonal")
    matches(doc)
    assert set(doc["tau_structure"]) == {"diagonal"}


# The checks shared by the two three-level HGLM kinds (hglm3_kind_*), for three-level-laplace
check_hglm3l_table = partial(hglm3_kind_table, "three-level-laplace")
check_hglm3l_formats = partial(hglm3_kind_formats, "three-level-laplace")
check_hglm3l_test = partial(hglm3_kind_test, "three-level-laplace")
check_hglm3l_json_out = partial(hglm3_kind_json_out, "three-level-laplace", hglm3l_matches)
check_hglm3l_compare = partial(hglm3_kind_compare, "three-level-laplace")
check_hglm3l_compare_deviance = partial(hglm3_kind_compare_deviance, "three-level-laplace")
check_hglm3l_tau_diagonal = partial(hglm3_kind_tau_diagonal, "three-level-laplace", hglm3l_matches)


def check_hglm3l_api(tmp_path):
    res = hlmcli.fit(*GROUSE[:2], level3=GROUSE[2], id2="BROOD", id3="LOCATION", level1_eq=GROUSE_MODEL[1],
                     level2_eqs=[GROUSE_MODEL[3]], level3_eqs=GROUSE_MODEL[5::2][:3], family="poisson",
                     estimation="laplace", warn=lambda m: None)
    assert res.to_dict()["fixed_effects"] == hglm3l_json()["fixed_effects"]
    hglm3l_matches(res.to_dict())
    assert res.converged and res.failures == []


def check_hglm3l_constrain(tmp_path):
    """--constrain 'g010 = g020' by Laplace: the summed-predictor fit and the test of the tie (test_constraints.py)."""
    from test_constraints import test_three_level_laplace_constrained_fit_is_the_summed_predictor_fit as check

    check(tmp_path)


def check_hglm3l_residuals(tmp_path):
    hglm3_residuals_check("three-level-laplace", tmp_path)


def check_hglm3l_keep(tmp_path):
    hglm3_keep_check("three-level-laplace", tmp_path)


def check_hglm3l_plot(tmp_path):
    hglm3_plot_check("three-level-laplace", tmp_path)


def check_hglm3l_missing_now(tmp_path):
    hglm3l_matches(hglm3l_json("--missing", "now"))


def check_hglm3l_weights(tmp_path):
    """glmer and glmmTMB with whole-number level-1 weights (test_hglm3_weights.py holds the rest)."""
    from test_hglm3_weights import test_whole_number_level1_weights_against_glmer

    test_whole_number_level1_weights_against_glmer()


def check_hglm3l_plausible_values(tmp_path):
    """Three plausible values with weights at all three levels (test_hglm3_weights.py: Rubin and D1 by hand)."""
    from test_hglm3_weights import test_weighted_plausible_values

    test_weighted_plausible_values(tmp_path)


SUPPORTED_HGLM3L = {key[len("check_hglm3l_"):]: f for key, f in globals().items() if key.startswith("check_hglm3l_")}


# ---------------------------------------------------------------- the three-level HGLM (AGQ) column
# grouseticks by nested AGQ with 15 points (the quadrature error below 1e-11), against the R integral
# (test_hglm3_agq.py); 2 s of CPU a fit, so every supported cell is slow (test_hglm3_agq.py has the fast ones:
# JSON, text, compare, refusals)

LEVELS_BASE["three-level-agq"] = [*GROUSE, *GROUSE_MODEL, "--estimation", "agq", "--quadrature-points", "15"]


def hglm3a_matches(doc: dict) -> None:
    from test_hglm3_agq import agq_matches

    agq_matches(doc, "grouseticks")


def hglm3a_json(*extra) -> dict:
    return levels_json("three-level-agq", *extra)


# The checks shared by the two three-level HGLM kinds (hglm3_kind_*), for three-level-agq
check_hglm3a_table = partial(hglm3_kind_table, "three-level-agq")
check_hglm3a_formats = partial(hglm3_kind_formats, "three-level-agq")
check_hglm3a_test = partial(hglm3_kind_test, "three-level-agq")
check_hglm3a_json_out = partial(hglm3_kind_json_out, "three-level-agq", hglm3a_matches)
check_hglm3a_compare = partial(hglm3_kind_compare, "three-level-agq")
check_hglm3a_compare_deviance = partial(hglm3_kind_compare_deviance, "three-level-agq")
check_hglm3a_tau_diagonal = partial(hglm3_kind_tau_diagonal, "three-level-agq", hglm3a_matches)


def check_hglm3a_api(tmp_path):
    res = hlmcli.fit(*GROUSE[:2], level3=GROUSE[2], id2="BROOD", id3="LOCATION", level1_eq=GROUSE_MODEL[1],
                     level2_eqs=[GROUSE_MODEL[3]], level3_eqs=GROUSE_MODEL[5::2][:3], family="poisson",
                     estimation="agq", quadrature_points=15, warn=lambda m: None)
    assert res.to_dict()["fixed_effects"] == hglm3a_json()["fixed_effects"]
    hglm3a_matches(res.to_dict())
    assert res.converged and res.failures == [] and res.to_dict()["hglm"]["quadrature_points"] == 15


def check_hglm3a_residuals(tmp_path):
    hglm3_residuals_check("three-level-agq", tmp_path)


def check_hglm3a_keep(tmp_path):
    hglm3_keep_check("three-level-agq", tmp_path)


def check_hglm3a_plot(tmp_path):
    hglm3_plot_check("three-level-agq", tmp_path)


def check_hglm3a_missing_now(tmp_path):
    hglm3a_matches(hglm3a_json("--missing", "now"))


def check_hglm3a_plausible_values(tmp_path):
    """Three plausible values with one N: each fit the single fit of its outcome, bit for bit; --imputed the
    same; Rubin's rules and D1 by hand (test_hglm3_agq_plausible.py)."""
    from test_hglm3_agq_plausible import test_each_fit_is_the_single_fit_and_imputed_equals_plausible

    test_each_fit_is_the_single_fit_and_imputed_equals_plausible(tmp_path)


SUPPORTED_HGLM3A = {key[len("check_hglm3a_"):]: f for key, f in globals().items() if key.startswith("check_hglm3a_")}


# ---------------------------------------------------------------- cross-classified
# References: lmer's fits in tests/data/crossed/crossed_lme4.json (tests/reference_scripts/crossed_lme4.R).
# Penicillin (24 plates crossed with 6 samples) is small, so its cells are cheap.

XC = DATA / "crossed"
XC_FORMULA = "diameter ~ 1 + (1 | plate) + (1 | sample)"
XC_BASE = [XC / "penicillin.csv", "--formula", XC_FORMULA, "--ml"]


def _xc_reference(formula: str, method: str) -> dict:
    fits = json.loads((XC / "crossed_lme4.json").read_text())["fits"]
    return next(f for f in fits if f["formula"] == formula and f["method"] == method)


def _xc_matches(doc: dict, formula: str = XC_FORMULA, method: str = "ML") -> None:
    ref = _xc_reference(formula, method)
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    for f in doc["fixed_effects"]:
        assert f["estimate"] == pytest.approx(ref["gamma"][f["term"]], rel=1e-6)
        assert f["se"] == pytest.approx(ref["se"][f["term"]], rel=1e-6)


def check_crossed_api(kind, tmp_path):
    _xc_matches(hlmcli.fit_crossed(XC / "penicillin.csv", XC_FORMULA, "ML").to_dict())


def check_crossed_json_out(kind, tmp_path):
    path = tmp_path / "fit.json"
    proc = run_cli("fit", *XC_BASE, "--json-out", path, "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    _xc_matches(doc)
    assert doc["fixed_effects"] == hlmcli.fit_crossed(XC / "penicillin.csv", XC_FORMULA, "ML").to_dict()["fixed_effects"]


def check_crossed_tau_diagonal(kind, tmp_path):
    """--tau diagonal splits every random term, as lmer's (1 + verbal || second)."""
    formula = "attain ~ verbal + female + (1 + verbal || second) + (1 | primary)"
    proc = run_cli("fit", XC / "scotssec.csv", "--formula", formula.replace("||", "|"), "--tau", "diagonal",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    _xc_matches(json.loads(proc.stdout), formula, "REML")


def _xc_saved(tmp_path, name: str = "xc.json", method: str = "ML") -> Path:
    path = tmp_path / name
    path.write_text(hlmcli.fit_crossed(XC / "penicillin.csv", XC_FORMULA, method).to_json())
    return path


def check_crossed_table(kind, tmp_path):
    proc = run_cli("table", _xc_saved(tmp_path), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    ref = _xc_reference(XC_FORMULA, "ML")
    rows = dict(line.split(",", 1) for line in proc.stdout.splitlines()[:2])
    assert float(rows["(Intercept)"]) == pytest.approx(ref["gamma"]["(Intercept)"], abs=5e-4)  # printed to 3 places


def check_crossed_compare(kind, tmp_path):
    """Penicillin's ML fit (lmer's deviance) against the one with a plate-level x added."""
    a = _xc_saved(tmp_path)
    d = pd.read_csv(XC / "penicillin.csv")
    d["x"] = (d["plate"].str[0] < "m").astype(float)
    b = tmp_path / "x.json"
    b.write_text(hlmcli.fit_crossed(d, XC_FORMULA.replace("~ 1", "~ x"), "ML").to_json())
    proc = run_cli("compare", a, b, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["deviance_a"] == pytest.approx(_xc_reference(XC_FORMULA, "ML")["deviance"], rel=1e-8)
    assert out["df"] == 1 and out["chi2"] == pytest.approx(out["deviance_a"] - out["deviance_b"], rel=1e-12)


def check_crossed_formats(kind, tmp_path):
    proc = run_cli("fit", *XC_BASE, "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    ref = _xc_reference(XC_FORMULA, "ML")
    assert f"{ref['gamma']['(Intercept)']:.3f}" in proc.stdout and "(Intercept) (THETA0)" in proc.stdout


def check_crossed_test(kind, tmp_path):
    proc = run_cli("fit", *XC_BASE, "--test", "THETA0 = 23", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _xc_matches(doc)
    f = doc["fixed_effects"][0]
    assert doc["hypothesis_tests"][0]["model"]["chi2"] == pytest.approx(((f["estimate"] - 23) / f["se"]) ** 2, rel=1e-10)


def check_crossed_constrain(kind, tmp_path):
    """penicillin, one θ per plate-half dummy tied; by hand their sum (the crossed path's check of the
    summed predictor is test_constraints.test_crossed_constrained_fit_is_the_summed_predictor_fit)."""
    data = pd.read_csv(XC / "penicillin.csv")
    data["A"], data["B"] = (data["plate"] < "m").astype(int), (data["sample"] < "C").astype(int)
    data.to_csv(tmp_path / "pen.csv", index=False)
    proc = run_cli("fit", tmp_path / "pen.csv", "--formula", "diameter ~ A + B + (1 | plate) + (1 | sample)", "--ml",
                   "--constrain", "THETA1 = THETA2", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by_hand = hlmcli.fit_crossed(data.assign(S=data["A"] + data["B"]), "diameter ~ S + (1 | plate) + (1 | sample)",
                                 method="ML").to_dict()
    assert doc["deviance"] == pytest.approx(by_hand["deviance"], rel=1e-9)
    for f, g in zip(doc["fixed_effects"], [by_hand["fixed_effects"][k] for k in (0, 1, 1)]):
        assert (f["estimate"], f["se"]) == pytest.approx((g["estimate"], g["se"]), rel=1e-6)
    assert doc["constraint_test"]["df"] == 1


def check_crossed_compare_deviance(kind, tmp_path):
    proc = run_cli("fit", *XC_BASE, "--compare-deviance", "340", "--compare-params", "3", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    t = json.loads(proc.stdout)["deviance_test"]
    assert t["chi2"] == pytest.approx(340 - _xc_reference(XC_FORMULA, "ML")["deviance"], rel=1e-8) and t["df"] == 1


def check_crossed_residuals(kind, tmp_path):
    """One file per factor (-l2 plate, -l3 sample) and the records' (-l1)."""
    paths = [tmp_path / f"r{k}.csv" for k in (1, 2, 3)]
    proc = run_cli("fit", *XC_BASE, "-q", *[x for k, p in enumerate(paths, 1) for x in (f"--residuals-l{k}", p)])
    assert proc.returncode == 0, proc.stderr
    r1, r2, r3 = (pd.read_csv(p) for p in paths)
    assert len(r1) == 144 and len(r2) == 24 and len(r3) == 6
    assert r2.b_INTRCPT.sum() == pytest.approx(0.0, abs=1e-8) and (r3.postvar_c_INTRCPT > 0).all()


def check_crossed_keep(kind, tmp_path):
    path = tmp_path / "r2.csv"
    proc = run_cli("fit", *XC_BASE, "-q", "--residuals-l2", path, "--keep", "diameter")
    assert proc.returncode == 0, proc.stderr
    assert "diameter" in pd.read_csv(path).columns  # varies within a plate: empty


def check_crossed_satterthwaite(kind, tmp_path):
    proc = run_cli("fit", *XC_BASE, "--df", "satterthwaite", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    ref = json.loads((XC / "crossed_lmertest.json").read_text())["fits"]
    ref = next(f for f in ref if f["formula"] == XC_FORMULA and f["method"] == "ML")
    assert json.loads(proc.stdout)["fixed_effects"][0]["df"] == pytest.approx(ref["df"][0], rel=1e-6)


def check_crossed_plausible_values(kind, tmp_path):
    """Rubin's rules over the crossed fits of two outcome columns (the full check, by hand, is in
    tests/test_crossed_hcm2.py): the pooled estimate is the mean of the two fits' lmer-matched ones."""
    d = pd.read_csv(XC / "penicillin.csv")
    d["PV2"] = d.diameter + 0.5 * (np.arange(len(d)) % 3 - 1)
    d.to_csv(tmp_path / "pv.csv", index=False)
    proc = run_cli("fit", tmp_path / "pv.csv", "--formula", XC_FORMULA, "--ml", "--plausible-values", "diameter,PV2",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    _xc_matches(doc["fits"][0])
    assert doc["combining"]["m"] == 2 and doc["fixed_effects"][0]["estimate"] == pytest.approx(
        np.mean([f["fixed_effects"][0]["estimate"] for f in doc["fits"]]), rel=1e-14)


def check_crossed_plot(kind, tmp_path):
    png = tmp_path / "cat.png"
    proc = run_cli("plot", "caterpillar", XC / "penicillin.csv", "--formula", XC_FORMULA, "-o", png, "-q")
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


SUPPORTED_CROSSED = {key[len("check_crossed_"):]: f for key, f in globals().items() if key.startswith("check_crossed_")}


def check_refused_crossed(feature, why, tmp_path):
    if feature in ("table", "compare"):  # they read saved fits
        saved = tmp_path / "xc.json"
        saved.write_text(json.dumps(hlmcli.fit_crossed(XC / "penicillin.csv", XC_FORMULA, "ML").to_dict()))
        proc = run_cli(feature, saved, saved)
        one_line_refusal(proc, why)
        return
    if feature == "plot":
        proc = run_cli("plot", "equation", XC / "penicillin.csv", "--formula", XC_FORMULA, "-o", tmp_path / "eq.png")
    else:
        ask = {**ASK, "formats": lambda kind, d: ["--format", "csv"], "test": lambda kind, d: ["--test", "g00 = 0"]}
        proc = run_cli("fit", *XC_BASE, *ask[feature]("crossed", tmp_path))
    refused_option(proc, why)
    assert not any(tmp_path.iterdir()), "a refused fit wrote a file"


# ---------------------------------------------------------------- refused cells

ASK = {
    "residuals": lambda kind, d: ["--residuals-l1", d / "r1.csv"],
    "keep": lambda kind, d: ["--residuals-l2", d / "r2.csv", "--keep", "SECTOR"],
    "weights": lambda kind, d: ["--weight1", "W1" if kind.startswith("linear") else "EXPECTED"],
    "plausible_values": lambda kind, d: ["--plausible-values", "MATHACH,SES" if kind.startswith("linear") else "DEATHS,UVB"],
    "missing_now": lambda kind, d: ["--missing", "now"],
    "satterthwaite": lambda kind, d: ["--df", "satterthwaite"],
    "df_hlm6": lambda kind, d: ["--df", "hlm6"],
    "homogeneity": lambda kind, d: ["--test-homogeneity"],
    "full_output": lambda kind, d: ["--full-output"],
    "stream_dask": lambda kind, d: ["--engine", "stream"],
    "compare_deviance": lambda kind, d: ["--compare-deviance", "2300", "--compare-params", "2"],
    "ordinal": lambda kind, d: ["--family", "ordinal", "-q"],  # -q: pastes' text column warns on loading
    "negbinomial": lambda kind, d: ["--family", "negbinomial", "-q"],
    "multinomial": lambda kind, d: ["--family", "multinomial", "-q"],
    "constrain": lambda kind, d: ["--constrain", "g10 = g20", "-q"],
    "known_variance": lambda kind, d: ["--known-variance", "SES", "-q"],
    "level1_variance": lambda kind, d: ["--level1-variance", "SES", "-q"],  # -q: pastes' text column warns on loading
    "level1_covariance": lambda kind, d: ["--level1-covariance", "ar1", "--occasion", "SES", "-q"],
    "emulate": lambda kind, d: ["--emulate", "hlm6", "-q"],
}


ASK_LEVELS = {}


def check_refused(feature, kind, why, tmp_path):
    if kind == "three-level-pql" and feature == "compare":
        a = tmp_path / "a.json"
        a.write_text(json.dumps(hglm3_json()))
        proc = run_cli("compare", a, a)
        one_line_refusal(proc, "PQL fit, and PQL has no deviance")
        return
    if kind in ("three-level", "four-level", "three-level-pql", "three-level-laplace", "three-level-agq"):
        if feature == "plot":
            proc = run_cli("plot", "equation", *LEVELS_BASE[kind], "-o", tmp_path / "eq.png")
        else:
            proc = run_cli("fit", *LEVELS_BASE[kind], *{**ASK, **ASK_LEVELS}[feature](kind, tmp_path))
        refused_option(proc, why)
        assert not any(tmp_path.iterdir()), "a refused fit wrote a file"
        return
    if kind == "hglm-stream" and feature in ("ordinal", "negbinomial", "multinomial"):
        proc = run_cli("fit", *{"ordinal": ORDINAL, "negbinomial": NEGBIN, "multinomial": MULTINOMIAL}[feature],
                       *METHOD[kind])
        refused_option(proc, why)
        return
    if kind == "hglm-stream" and feature == "plot":  # plot takes no --engine: reached only by its reason
        assert "takes no --engine" in why
        return
    if feature == "ordinal":  # an ordinal outcome is an HGLM: the linear columns are reached only by their reason
        if kind.startswith("linear"):
            assert "--family ordinal with --estimation" in why
            return
        proc = run_cli("fit", *ORDINAL)  # PQL, the default
        one_line_refusal(proc, why)
        return
    if feature == "negbinomial":  # as ordinal: a count outcome is an HGLM
        if kind.startswith("linear"):
            assert "--family negbinomial with --estimation" in why
            return
        proc = run_cli("fit", *NEGBIN)  # PQL, the default
        one_line_refusal(proc, why)
        return
    if feature == "multinomial":  # as ordinal: a categorical outcome is an HGLM
        if kind.startswith("linear"):
            assert "--family multinomial with --estimation" in why
            return
        proc = run_cli("fit", *MULTINOMIAL, *(["--estimation", kind] if kind != "pql" else []))  # PQL: the default
        one_line_refusal(proc, why)
        return
    if feature == "compare":  # compare reads saved fits
        proc = run_cli("compare", _saved(kind, tmp_path, True), _saved(kind, tmp_path))
        one_line_refusal(proc, "PQL fit, and PQL has no deviance")
        return
    if feature == "plot":  # a statistics archive from the stream engine
        archive = tmp_path / "stats.ssm"
        run_cli("mdm", "build", *LINEAR_FILES, "--id", "ID", "--engine", "stream", "-o", archive, "-q").check_returncode()
        proc = run_cli("plot", "equation", archive, *LINEAR_MODEL[2:], "-o", tmp_path / "eq.png")  # no --id
        one_line_refusal(proc, why)
        assert not (tmp_path / "eq.png").exists()
        return
    proc = run_cli("fit", *base(kind), *ASK[feature](kind, tmp_path))
    refused_option(proc, why)
    assert not any(tmp_path.iterdir()), "a refused fit wrote a file"


@pytest.mark.slow
def test_levels_equation_graph_by_hand():
    """The three-level equation graph: intercept γ000 + γ001·mean(LOWINC) + γ010·mean(FEMALE) and slope
    γ100 + γ101·mean(LOWINC) + γ102·mean(MOBILITY), the higher-level predictors averaged over the records."""
    from hlmcli.report.plots import equation_lines_levels

    res = hlmcli.fit(*EG[:2], level3=EG[2], id2="CHILDID", id3="SCHOOLID", level1_eq=EG_M2[1],
                     level2_eqs=EG_M2[3:6:2], level3_eqs=EG_M2[7::2])
    g = {f["gamma"]: f["estimate"] for f in res.to_dict()["fixed_effects"]}
    l1, l2, l3 = (pd.read_csv(p) for p in EG[:3])
    rows = l1.merge(l2, on=["CHILDID", "SCHOOLID"], how="left").merge(l3, on="SCHOOLID", how="left")
    intercept = g["γ000"] + g["γ001"] * rows["LOWINC"].mean() + g["γ010"] * rows["FEMALE"].mean()
    slope = g["γ100"] + g["γ101"] * rows["LOWINC"].mean() + g["γ102"] * rows["MOBILITY"].mean()
    _, xs, [(_, y)] = equation_lines_levels(res, "YEAR")
    assert y == pytest.approx(intercept + slope * xs, rel=1e-10, abs=1e-10)


# cells that fit the four-level schools model or the three-level EG models more than once (seconds each)
SLOW_LEVEL_CELLS = {("keep", "four-level"), ("tau_diagonal", "three-level"), ("tau_diagonal", "four-level"), ("satterthwaite", "three-level"),
                    ("satterthwaite", "four-level"), ("compare", "three-level"), ("plot", "four-level"), ("weights", "four-level"), ("table", "four-level"), ("compare_deviance", "four-level"),
                    ("residuals", "four-level"), ("json_out", "four-level"), ("missing_now", "four-level"),
                    ("test", "four-level"), ("formats", "four-level"), ("api", "four-level"),
                    ("tau_diagonal", "crossed")}


def _cells():
    for f in capabilities.FEATURES:
        for kind in capabilities.KINDS:
            slow = (f.key, kind) == ("stream_dask", "linear-summary") or (f.key, kind) in SLOW_LEVEL_CELLS or \
                (kind == "three-level-pql" and f.key not in ("json_out", "compare", "stream_dask")) or \
                (kind == "three-level-laplace" and capabilities.reason(f.key, kind) is None and f.key != "json_out") or \
                (kind == "hglm-stream" and capabilities.reason(f.key, kind) is None
                 and f.key not in ("json_out", "stream_dask")) or \
                ((f.key, kind) in (("stream_dask", "pql"), ("stream_dask", "laplace"), ("stream_dask", "agq"))) or \
                (kind == "three-level-agq" and capabilities.reason(f.key, kind) is None)
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(f.key, kind, marks=marks, id=f"{f.key}-{kind}")


@pytest.mark.parametrize("feature,kind", list(_cells()))
def test_cell(feature, kind, tmp_path):
    why = capabilities.reason(feature, kind)
    if kind == "crossed":
        if why:
            check_refused_crossed(feature, why, tmp_path)
        else:
            SUPPORTED_CROSSED[feature](kind, tmp_path)
    elif why:
        check_refused(feature, kind, why, tmp_path)
    elif kind == "three-level-pql":
        SUPPORTED_HGLM3[feature](tmp_path)
    elif kind == "three-level-laplace":
        SUPPORTED_HGLM3L[feature](tmp_path)
    elif kind == "three-level-agq":
        SUPPORTED_HGLM3A[feature](tmp_path)
    elif kind in ("three-level", "four-level"):
        SUPPORTED_LEVELS[feature](kind, tmp_path)
    else:
        SUPPORTED[feature](kind, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", _TWO_LEVEL_KINDS)
def test_every_format_of_every_kind(kind, tmp_path):
    if capabilities.reason("formats", kind) is None:
        check_formats(kind, tmp_path, formats=("markdown", "latex", "html"))


# ---------------------------------------------------------------- the README's table is the table

def test_readme_matrix_is_generated_from_the_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- capabilities:start -->\n(.*?)<!-- capabilities:end -->", readme, re.S)
    assert block, "README.md has no capabilities block"
    assert block.group(1) == capabilities.markdown_table(), "run 'hlmcli capabilities' and paste its output"
    proc = run_cli("capabilities")
    assert proc.returncode == 0 and proc.stdout == capabilities.markdown_table()


def test_every_refusal_gives_a_reason():
    for f in capabilities.FEATURES:
        for kind, why in f.refused.items():
            assert kind in capabilities.KINDS and len(why) > 40, (f.key, kind)
