"""Every cell of the capabilities table (hlmcli/capabilities.py), two-level model kinds × features, as a
user asks for it: each supported cell runs and matches a reference (R's and WeMix's numbers in
tests/data/, or a hand computation from the fit's own printed numbers where no other exists), and each
refused cell is refused in one line giving the table's reason. The README's matrix is the table's."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

import hlmcli
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
          "agq": ["--estimation", "agq", "--quadrature-points", "25"]}


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


# ---------------------------------------------------------------- supported cells

def check_api(kind, tmp_path):
    kwargs = {"linear": dict(method="ML"), "linear-summary": dict(method="ML", engine="stream"),
              "pql": dict(family="poisson", exposure="EXPECTED"),
              "laplace": dict(family="poisson", exposure="EXPECTED", estimation="laplace"),
              "agq": dict(family="poisson", exposure="EXPECTED", estimation="agq", quadrature_points=25)}[kind]
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


def check_formats(kind, tmp_path):
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
    for fmt in ("markdown", "latex", "html"):
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
    doc = fit_json(kind, "--weight1", "W1", "--weight2", "W2")
    ref = _ref(W / "hsbw_ri_norm_cluster.json")
    for f in doc["fixed_effects"]:
        assert f["estimate"] == pytest.approx(ref["fixed"][f["gamma"]]["est"], rel=1e-5)
        assert f["robust_se"] == pytest.approx(ref["fixed"][f["gamma"]]["se"], rel=1e-4)


def check_plausible_values(kind, tmp_path):
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


def check_stream_dask(kind, tmp_path):
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


SUPPORTED = {f.key: globals()[f"check_{f.key}"] for f in capabilities.FEATURES}


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
}


def check_refused(feature, kind, why, tmp_path):
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
    one_line_refusal(proc, why)
    assert not any(tmp_path.iterdir()), "a refused fit wrote a file"


def _cells():
    for f in capabilities.FEATURES:
        for kind in capabilities.KINDS:
            marks = [pytest.mark.slow] if (f.key, kind) == ("stream_dask", "linear-summary") else []
            yield pytest.param(f.key, kind, marks=marks, id=f"{f.key}-{kind}")


@pytest.mark.parametrize("feature,kind", list(_cells()))
def test_cell(feature, kind, tmp_path):
    why = capabilities.reason(feature, kind)
    if why:
        check_refused(feature, kind, why, tmp_path)
    else:
        SUPPORTED[feature](kind, tmp_path)


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
