"""HLM 7's HCM2 input: the cross-classified archive (`mdm build LEVEL1 ROWS COLS --row-id --col-id`,
`mdm info`, fits from it) and HCM2's equations (-1/-2 with b and c random effects), which must become the
very lme4 formula the cross-classified path fits. Expected numbers are lmer's (tests/data/crossed/
crossed_lme4.json, tests/reference_scripts/crossed_lme4.R) and the formula path's own fit of the same
archive (bit-identical: one path). The test files are mlmRev's ScotsSec split into HCM2's three files
(tests/data/crossed/hcm2/: pupils.csv; primary.csv with the pupils per primary school, psize, in its own
order; second.csv with ssize)."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pandas as pd
import pytest

from conftest import DATA, hlmcli as run_cli
from hlmcli.errors import ModelError
from hlmcli.language.formula import crossed
from hlmcli.language.hcm2 import read_hcm2

X_DIR = DATA / "crossed"
H_DIR = X_DIR / "hcm2"
FILES = [H_DIR / "pupils.csv", H_DIR / "primary.csv", H_DIR / "second.csv"]
REF = json.loads((X_DIR / "crossed_lme4.json").read_text())
L1 = "attain = p0 + p1*(verbal) + p2*(female) + e"
SCOTS = "attain ~ verbal + female + (1 | primary) + (1 | second)"
SLOPE = "attain ~ verbal + female + (1 + verbal | primary) + (1 | second)"


def reference(formula: str, method: str = "REML") -> dict:
    return next(f for f in REF["fits"] if f["formula"] == formula and f["method"] == method)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("hcm2") / "scots.mdm"
    proc = run_cli("mdm", "build", *FILES, "--row-id", "primary", "--col-id", "second", "-o", path)
    assert proc.returncode == 0, proc.stderr
    assert "3435 level-1 records in 148 row units (primary) crossed with 19 column units (second)" in proc.stderr
    return path


# ---------------------------------------------------------------- the equations (pure)

def test_hcm2_equations_are_the_lme4_formula():
    """Intercepts, and a random slope of verbal over rows: the same CrossedFormula the lme4 formula gives."""
    m = read_hcm2(L1, ["p0 = theta0 + b00 + c00"], "primary", "second")
    assert crossed(m.formula) == crossed(SCOTS)
    m = read_hcm2(L1.replace("(", "").replace(")", ""), ["π0 = θ0 + b00j + c00k", "p1 = theta1 + b10"],
                  "primary", "second")
    assert crossed(m.formula) == crossed(SLOPE)
    # row and column predictors, and their slopes varying over the other factor (R&B (12.3)'s c_pq, b_ph)
    m = read_hcm2("Y = p0 + p1*(A) + e", ["p0 = theta0 + gamma01*(X) + beta01*(W) + b00 + c00 + c01 + b01",
                                          "p1 = theta1 + gamma11*(X) + c10"], "R", "C")
    assert crossed(m.formula) == crossed("Y ~ 1 + X + W + A + A:X + (1 + W | R) + (1 + X + A | C)")
    assert m.labels() == {frozenset(): "THETA0", frozenset({"X"}): "GAMMA01", frozenset({"W"}): "BETA01",
                          frozenset({"A"}): "THETA1", frozenset({"A", "X"}): "GAMMA11"}


@pytest.mark.parametrize("level2, words", [
    (["p0 = theta0 + b00"], "no random effect of the column factor"),
    (["p0 = theta0 + b00 + c00 + c01"], "c01 is the random part of gamma01's slope"),
    (["p0 = theta0 + beta01 + b00 + c00"], "multiply a column predictor"),
    (["p0 = theta0 + b00*(X) + c00"], "a random effect is written alone"),
    (["p3 = theta3 + b30"], "has no p3"),
    (["p0 = theta0 + b00 + c00", "p0 = theta0 + b00 + c00"], "two equations"),
    (["p0 = theta0 - b00 + c00"], "'-' is not read"),
])
def test_hcm2_equation_errors_are_one_line(level2, words):
    with pytest.raises(ModelError, match=words):
        read_hcm2(L1, level2, "primary", "second")


# ---------------------------------------------------------------- the archive and fits from it

def test_mdm_info_of_the_hcm2_archive(archive):
    """HLM 7's three tables of statistics, and the counts, from the archive (numbers from pandas here)."""
    d = pd.read_csv(X_DIR / "scotssec.csv")
    proc = run_cli("mdm", "info", archive, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["kind"], info["n_level1"], info["n_rows"], info["n_columns"]) == ("cross-classified", 3435, 148, 19)
    assert info["n_cells"] == len(d.groupby(["primary", "second"]))
    assert info["records_per_row"]["max"] == d.groupby("primary").size().max()
    assert [v["name"] for v in info["level1"]] == ["attain", "verbal", "female"]
    assert info["row"][0]["mean"] == pytest.approx(d.groupby("primary").size().mean(), rel=1e-12)
    assert info["column"][0]["maximum"] == d.groupby("second").size().max()
    assert [s["role"] for s in info["sources"]] == ["level-1", "row", "column"]
    jsonschema.validate(info, json.loads(resources.files("hlmcli").joinpath("schema", "mdm-info-crossed-1.json")
                                         .read_text()))
    # nested equations, or a nested formula, are refused in one line
    for model in (["-1", "attain = b0 + r", "-2", "b0 = g00 + u0"], ["--formula", "attain ~ verbal + (1 | primary)"]):
        proc = run_cli("fit", archive, *model)
        assert proc.returncode in (1, 2) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "cross-classified (HCM2) archive" in proc.stderr and "Traceback" not in proc.stderr


def test_hcm2_equations_on_the_archive_match_lmer_and_the_formula(archive, tmp_path):
    """One command: HCM2's equations fitted from the archive give lmer's fit (deviance 1e-8, γ and SEs
    1e-6) and the --formula fit of the same archive bit for bit; the text (-o) prints the equations back."""
    text = tmp_path / "fit.txt"
    proc = run_cli("fit", archive, "-1", L1, "-2", "p0 = theta0 + b00 + c00", "--json-out", tmp_path / "e.json",
                   "-o", text)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "e.json").read_text())
    ref = reference(SCOTS)
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    for f in doc["fixed_effects"]:
        name = "(Intercept)" if f["name"] == "INTRCPT" else f["name"]
        assert f["estimate"] == pytest.approx(ref["gamma"][name], rel=1e-6)
        assert f["se"] == pytest.approx(ref["se"][name], rel=1e-6)
    assert [f["hcm2_label"] for f in doc["fixed_effects"]] == ["THETA0", "THETA1", "THETA2"]
    out = text.read_text()
    assert "P0 = THETA0 + b00 + c00" in out and "attain = P0 + P1*(verbal) + P2*(female) + e" in out
    assert "verbal, THETA1" in out
    proc = run_cli("fit", archive, "--formula", SCOTS, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    formula_doc = json.loads(proc.stdout)
    assert formula_doc["deviance"] == doc["deviance"]
    assert [f["estimate"] for f in formula_doc["fixed_effects"]] == [f["estimate"] for f in doc["fixed_effects"]]
    assert formula_doc["random_effects"] == doc["random_effects"]


@pytest.mark.slow
def test_hcm2_random_slope_matches_lmer_and_the_formula(archive):
    """π1 = θ1 + b10: verbal's slope varies over primary schools (on the boundary: a +1 correlation)."""
    proc = run_cli("fit", archive, "-1", L1, "-2", "p0 = theta0 + b00 + c00", "-2", "p1 = theta1 + b10",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    ref = reference(SLOPE)
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    assert {f["name"]: f["estimate"] for f in doc["fixed_effects"]}["verbal"] == \
        pytest.approx(ref["gamma"]["verbal"], rel=1e-6)
    formula_doc = json.loads(run_cli("fit", archive, "--formula", SLOPE, "--format", "json").stdout)
    assert formula_doc["deviance"] == doc["deviance"]
    assert [f["estimate"] for f in formula_doc["fixed_effects"]] == [f["estimate"] for f in doc["fixed_effects"]]


def test_row_and_column_predictors_from_the_archive(archive):
    """γ01 (a row predictor) and β01 (a column predictor): the formula fit of the one-file data with the
    two variables merged by hand, bit for bit."""
    proc = run_cli("fit", archive, "-1", L1, "-2", "p0 = theta0 + gamma01*(psize) + beta01*(ssize) + b00 + c00",
                   "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [f["hcm2_label"] for f in doc["fixed_effects"]] == ["THETA0", "GAMMA01", "BETA01", "THETA1", "THETA2"]
    formula = "attain ~ psize + ssize + verbal + female + (1 | primary) + (1 | second)"
    other = json.loads(run_cli("fit", archive, "--formula", formula, "--format", "json").stdout)
    assert other["deviance"] == doc["deviance"]


def test_a_level1_variable_as_a_row_predictor_is_refused(archive):
    proc = run_cli("fit", archive, "-1", "attain = p0 + e", "-2", "p0 = theta0 + gamma01*(verbal) + b00 + c00")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "verbal varies within row unit" in proc.stderr and "level-1 equation" in proc.stderr


# ---------------------------------------------------------------- build errors, ids of any type

def _write(tmp_path, l1, rows, cols):
    paths = [tmp_path / "l1.csv", tmp_path / "rows.csv", tmp_path / "cols.csv"]
    for text, path in zip((l1, rows, cols), paths):
        path.write_text(text)
    return paths


def _build(paths, out, *more):
    return run_cli("mdm", "build", *paths, "--row-id", "R", "--col-id", "C", "-o", out, *more)


def test_build_errors_name_file_column_and_line(tmp_path):
    """An id missing from the row file, a repeated column id, a missing id: one line each, naming the file,
    the column and the line; nothing is written. Text ids keep their leading zeros."""
    l1 = "y,x,R,C\n1,2,007,a\n2,3,007,b\n3,1,08,a\n4,5,08,b\n"
    out = tmp_path / "x.mdm"
    paths = _write(tmp_path, l1, "R,w\n007,1\n", "C,z\na,1\nb,2\n")
    proc = _build(paths, out)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{paths[0]}: column R, line 4: row id 08 is not in {paths[1]}" in proc.stderr and not out.exists()
    paths = _write(tmp_path, l1, "R,w\n007,1\n08,2\n", "C,z\na,1\nb,2\na,3\n")
    proc = _build(paths, out)
    assert proc.returncode == 1 and f"{paths[2]}: column C, line 4: column id a appears again (first at line 2)" \
        in proc.stderr and not out.exists()
    paths = _write(tmp_path, l1.replace("3,1,08,a", "3,1,,a"), "R,w\n007,1\n08,2\n", "C,z\na,1\nb,2\n")
    proc = _build(paths, out)
    assert proc.returncode == 1 and f"{paths[0]}: column R, line 4: the id is missing" in proc.stderr
    paths = _write(tmp_path, l1, "R,w\n007,1\n08,2\n9,3\n", "C,z\na,1\nb,2\n")
    proc = _build(paths, out)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run_cli("mdm", "info", out, "--format", "json", "--unit", "007").stdout)
    assert info["unit"] == {"id": "007", "factor": "row", "n": 2, "values": {"w": 1.0}}
    assert info["notes"] == {"row_units_without_records": 1} and info["n_rows"] == 2


def test_build_drop_unmatched_and_variable_in_two_files(tmp_path):
    out = tmp_path / "x.mdm"
    l1 = "y,x,R,C\n1,2,1,a\n2,3,1,b\n3,1,2,a\n4,5,2,b\n5,5,3,b\n"
    paths = _write(tmp_path, l1, "R,w\n1,1\n2,2\n", "C,z\na,1\nb,2\n")
    proc = _build(paths, out, "--drop-unmatched")
    assert proc.returncode == 0 and "1 record(s) whose row id is not in rows.csv left out" in proc.stderr
    assert json.loads(run_cli("mdm", "info", out, "--format", "json").stdout)["n_level1"] == 4
    paths = _write(tmp_path, l1, "R,x\n1,1\n2,2\n3,3\n", "C,z\na,1\nb,2\n")
    proc = _build(paths, out)
    assert proc.returncode == 1 and "variable x is also in" in proc.stderr and len(proc.stderr.splitlines()) == 1


# ---------------------------------------------------------------- plausible values and imputed data sets

PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


@pytest.fixture(scope="module")
def plausible(tmp_path_factory):
    """Penicillin with three outcome columns (the outcome shifted and perturbed, deterministically), and
    the same as two imputed data sets."""
    folder = tmp_path_factory.mktemp("pv")
    d = pd.read_csv(X_DIR / "penicillin.csv")
    i = pd.Series(range(len(d)))
    d["PV1"] = d.diameter + ((i * 7) % 5 - 2) / 2
    d["PV2"] = d.diameter + 0.4 + ((i * 3) % 4 - 1.5) / 2
    d["PV3"] = d.diameter - 0.3 - ((i * 5) % 3 - 1) / 2
    d.to_csv(folder / "pv.csv", index=False)
    for m in (1, 2):
        d.assign(diameter=d[f"PV{m}"]).drop(columns=["PV1", "PV2", "PV3"]).to_csv(folder / f"imp{m}.csv", index=False)
    return folder


def _rubin_by_hand(fits: list[dict], dfcom=None) -> dict:
    """Rubin's rules written out (Rubin 1987; Barnard & Rubin 1999; mice::pool's λ floor and FMI)."""
    import numpy as np

    est = np.array([[f["estimate"] for f in fit["fixed_effects"]] for fit in fits])
    covs = np.array([fit["gamma_covariance"] for fit in fits])
    M = len(fits)
    qbar, ubar = est.mean(axis=0), covs.mean(axis=0)
    b = (est - qbar).T @ (est - qbar) / (M - 1)
    t = np.diag(ubar + (1 + 1 / M) * b)
    lam = np.maximum((1 + 1 / M) * np.diag(b) / t, 1e-4)
    riv = (1 + 1 / M) * np.diag(b) / np.diag(ubar)
    nu = (M - 1) / lam ** 2
    if dfcom is not None:
        obs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
        nu = nu * obs / (nu + obs)
    return {"estimate": qbar, "se": np.sqrt(t), "riv": riv, "df": nu, "fmi": (riv + 2 / (nu + 3)) / (riv + 1)}


def _schema_valid(doc: dict) -> None:
    """The combined document follows crossed-combined-1.json, and each data set's fit crossed-2.json."""
    def schema(name):
        return json.loads(resources.files("hlmcli").joinpath("schema", name).read_text())

    jsonschema.validate(doc, schema("crossed-combined-1.json"))
    for fit in doc["fits"]:
        jsonschema.validate(fit, schema("crossed-2.json"))


def test_plausible_values_combine_by_rubins_rules(plausible):
    """Three outcome columns: each fit is the one-column fit (bit for bit), and the pooled numbers are
    Rubin's recomputed here; --test is D1; the d.f. and p-values are left out without --df."""
    proc = run_cli("fit", plausible / "pv.csv", "--formula", PEN, "--plausible-values", "PV*", "--format", "json",
                   "--test", "THETA0 = 23")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["combining"]["m"] == 3 and doc["combining"]["outcomes"] == ["PV1", "PV2", "PV3"]
    _schema_valid(doc)
    hand = _rubin_by_hand(doc["fits"])
    f = doc["fixed_effects"][0]
    assert f["estimate"] == pytest.approx(hand["estimate"][0], rel=1e-12)
    assert f["se"] == pytest.approx(hand["se"][0], rel=1e-12)
    assert f["riv"] == pytest.approx(hand["riv"][0], rel=1e-10) and f["fmi"] == pytest.approx(hand["fmi"][0], rel=1e-10)
    assert f["df"] is None and f["p_value"] is None and f["fmi"] > 0.05
    assert doc["sigma2"] == pytest.approx(sum(x["sigma2"] for x in doc["fits"]) / 3, rel=1e-14)
    assert doc["deviance"] == pytest.approx(sum(x["deviance"] for x in doc["fits"]) / 3, rel=1e-14)
    # D1 for one restriction is the square of the pooled t of THETA0 - 23 (T = Ū + (1 + 1/M)B)
    assert doc["hypothesis_tests"][0]["model"]["F"] == pytest.approx(((f["estimate"] - 23) / f["se"]) ** 2, rel=1e-10)
    import hlmcli

    one = hlmcli.fit_crossed(plausible / "pv.csv", PEN.replace("diameter", "PV2")).to_dict()
    assert one["fixed_effects"] == doc["fits"][1]["fixed_effects"] and one["deviance"] == doc["fits"][1]["deviance"]


def test_imputed_data_sets_with_satterthwaite_df(plausible, tmp_path):
    """Two data sets, --df satterthwaite: Barnard-Rubin d.f. from the mean Satterthwaite d.f., and the text
    prints them; a data set with other records is refused in one line."""
    proc = run_cli("fit", plausible / "imp1.csv", "--imputed", plausible / "imp2.csv", "--formula", PEN, "--ml",
                   "--df", "satterthwaite", "--json-out", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    assert "results combined over 2 imputed data sets" in proc.stdout and "Approx. d.f." in proc.stdout
    assert all(b < 128 for b in proc.stdout.encode())  # HCM2's text is ASCII, the combining rule included
    doc = json.loads((tmp_path / "c.json").read_text())
    _schema_valid(doc)
    dfcom = (doc["fits"][0]["fixed_effects"][0]["df"] + doc["fits"][1]["fixed_effects"][0]["df"]) / 2
    hand = _rubin_by_hand(doc["fits"], dfcom)
    f = doc["fixed_effects"][0]
    assert f["df_complete"] == pytest.approx(dfcom, rel=1e-14)
    assert f["df"] == pytest.approx(hand["df"][0], rel=1e-10) and f["se"] == pytest.approx(hand["se"][0], rel=1e-12)
    from scipy import stats

    assert f["p_value"] == pytest.approx(2 * stats.t.sf(abs(f["estimate"] / f["se"]), hand["df"][0]), rel=1e-8)
    short = tmp_path / "short.csv"
    pd.read_csv(plausible / "imp2.csv").iloc[:-6].to_csv(short, index=False)
    proc = run_cli("fit", plausible / "imp1.csv", "--imputed", short, "--formula", PEN)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "imputed data sets must hold the same records" in proc.stderr


@pytest.mark.slow
def test_caterpillar_plot_from_the_archive(archive, tmp_path):
    png = tmp_path / "cat.png"
    proc = run_cli("plot", "caterpillar", archive, "--formula", SCOTS, "-o", png, "-q")
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_random_effects_keep_the_names_the_equations_gave():
    """b01 (the row effect on β01's column predictor W) and c01 (the column effect on γ01's X) are printed and
    written as b01 and c01, not by position (b10, c10: in HCM2 those are π1's effects); b10 here is π1's."""
    from types import SimpleNamespace

    from hlmcli.report.crossed_report import _mixed_line, effect_labels

    m = read_hcm2("Y = p0 + p1*(A) + e", ["p0 = theta0 + gamma01*(X) + beta01*(W) + b00 + c00 + b01 + c01",
                                          "p1 = theta1 + b10"], "R", "C")
    fit = SimpleNamespace(factors=("R", "C"), columns=(("INTRCPT", "W", "A"), ("INTRCPT", "X")))
    design = SimpleNamespace(outcome="Y", fixed_names=["INTRCPT", "X", "W", "A"])
    a = SimpleNamespace(hcm2=m, fit=fit, design=design)
    assert effect_labels(a) == [["b00", "b01", "b10"], ["c00", "c01"]]
    assert "+ b00 + b01*W + b10*A + c00 + c01*X + E" in _mixed_line(a)
    # a model typed as an lme4 formula keeps the positional names
    assert effect_labels(SimpleNamespace(hcm2=None, fit=fit)) == [["b00", "b10", "b20"], ["c00", "c10"]]
