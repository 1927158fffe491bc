"""Sampling weights, plausible values and imputed data sets for three- and four-level fits, end to end
as a user types them.

- Weights: integer weights at several levels against the unweighted fit of the files with records and
  units replicated (what WeMix's definition implies for integer weights); WeMix's own numbers, the
  quadrature of the definition and the sandwich are checked on the engine in test_levels_weights.py.
- Plausible values / imputed data sets: the combined document against its schema and against the
  per-fit records it holds (Rubin's rules are checked by hand in test_levels_plausible.py)."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import hlmcli
from test_levels_plausible import pastes_files

HERE = Path(__file__).resolve().parent
PASTES_IDS = ["--id2", "SAMPLE", "--id3", "BATCH"]
PV_MODEL = ["-1", "PV1 = p0 + p1*X + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
            "-3", "b10 = g100"]


def _schema(name):
    return json.loads(resources.files("hlmcli").joinpath("schema", name).read_text())


def replicate_files(frames: list, ids: list, weights: list) -> list:
    """Each level's rows copied as often as their integer weight (column weights[l], None = 1), a copy
    of a unit a new unit (a new id) with copies of all its members: the data sets whose unweighted
    fit the weighted pseudo-likelihood equals (WeMix's definition, integer weights). frames[l] is the
    level-(l+1) file, ids[l] the id column of level l+1 (ids[0] unused); a file holds its own id and
    those of the levels above it that it has."""
    K = len(frames)
    frames = [f.astype(object) for f in frames]  # ids become text; numbers keep their values
    out = [[] for _ in range(K)]

    def emit(level, row, above: dict):
        w = 1 if weights[level - 1] is None else int(row[weights[level - 1]])
        for c in range(w):
            r = row.copy()
            for col, new in above.items():
                if col in r.index:
                    r[col] = new
            mine = dict(above)
            if level >= 2:
                parent = above.get(ids[level], "") if level < K else ""
                mine[ids[level - 1]] = f"{parent}.{row[ids[level - 1]]}.{c}"
                r[ids[level - 1]] = mine[ids[level - 1]]
            out[level - 1].append(r)
            if level >= 2:
                kids = frames[level - 2]
                for _, kid in kids[kids[ids[level - 1]] == row[ids[level - 1]]].iterrows():
                    emit(level - 1, kid, mine)

    for _, row in frames[-1].iterrows():
        emit(K, row, {})
    return [pd.DataFrame(rows) for rows in out]


def _write(frames, directory: Path, stem: str) -> list:
    paths = [directory / f"{stem}{k}.csv" for k in range(1, len(frames) + 1)]
    for f, p in zip(frames, paths):
        f.to_csv(p, index=False)
    return paths


def _same_fit(a: dict, b: dict):
    assert a["deviance"] == pytest.approx(b["deviance"], rel=1e-9)
    assert a["sigma2"] == pytest.approx(b["sigma2"], rel=1e-5)
    for x, y in zip(a["fixed_effects"], b["fixed_effects"]):
        assert x["estimate"] == pytest.approx(y["estimate"], rel=1e-6, abs=1e-8)
        assert x["se"] == pytest.approx(y["se"], rel=1e-5)


def test_three_level_integer_weights_equal_the_replicated_files(pastes_pv, tmp_path):
    """Integer weights at every level, as given (--normalize none), against the unweighted fit of the
    files with every record and unit replicated; the weighted run's text and JSON say what they did."""
    frames = [pd.read_csv(p) for p in pastes_pv]
    model = ["-1", "STRENGTH = p0 + p1*X + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
             "-3", "b10 = g100"]
    rep = _write(replicate_files(frames, [None, "SAMPLE", "BATCH"], ["W1", "W2I", "W3"]), tmp_path, "rep")
    proc = hlmcli("fit", *pastes_pv, *PASTES_IDS, *model, "--weight1", "W1", "--weight2", "W2I", "--weight3", "W3",
                  "--normalize", "none", "--json-out", tmp_path / "w.json", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    plain = hlmcli("fit", *rep, *PASTES_IDS, *model, "--format", "json", "--cache-dir", tmp_path / "c")
    assert plain.returncode == 0, plain.stderr
    doc, expected = json.loads((tmp_path / "w.json").read_text()), json.loads(plain.stdout)
    assert expected["n_level1"] > 3 * doc["n_level1"]
    _same_fit(doc, expected)
    for key in ("tau_pi", "tau_beta"):
        assert np.allclose(doc[key]["matrix"], expected[key]["matrix"], rtol=1e-5)
    assert doc["weights"]["levels"][2] == {"level": 3, "variable": "W3", "summary": {"sum": 25.0, "min": 1.0, "max": 4.0}}
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, _schema("fit-3.json"))
    text = proc.stdout
    assert " Level 3          yes       W3            no" in text
    assert "(sandwich, clustered on level-3 units)" in text
    assert "not for likelihood-ratio tests" in text and "WeMix::mix" in text


SCHOOLS_IDS = ["--id2", "STUDENTID", "--id3", "CLASSID", "--id4", "SCHOOLID"]
SCHOOLS_MODEL = ["-1", "SCORE = p0 + p1*TIME + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
                 "-3", "b10 = g100", "-4", "g000 = d0000 + d0001*SECTOR + v000", "-4", "g100 = d1000"]


def _schools_weighted():
    """The schools data (tests/data/four_level) with integer weights at levels 2 (WS) and 4 (WT)."""
    src = HERE / "data" / "four_level"
    frames = [pd.read_csv(src / f"schools_l{k}.csv") for k in (1, 2, 3, 4)]
    frames[1]["WS"] = 1 + frames[1]["STUDENTID"] % 2
    frames[3]["WT"] = 1 + frames[3]["SCHOOLID"] % 3
    return frames


def test_four_level_weights(tmp_path):
    """One four-level weighted run: certified, its JSON valid with the weights' record, the text's
    weighting block naming level 4."""
    given = _write(_schools_weighted(), tmp_path, "w")
    proc = hlmcli("fit", *given, *SCHOOLS_IDS, *SCHOOLS_MODEL, "--weight2", "WS", "--weight4", "WT",
                  "--json-out", tmp_path / "w.json", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "w.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, _schema("fit-levels.json"))
    assert [lv["variable"] for lv in doc["weights"]["levels"]] == [None, "WS", None, "WT"]
    assert doc["weights"]["normalize"] == "cluster" and doc["converged"]
    # cluster: the level-4 weights sum to the 40 schools, each class's students' weights to its size
    assert doc["weights"]["levels"][3]["summary"]["sum"] == pytest.approx(40)
    assert doc["weights"]["levels"][1]["summary"]["sum"] == pytest.approx(766)
    assert " Level 4          yes       WT            yes" in proc.stdout
    assert "(sandwich, clustered on level-4 units)" in proc.stdout


@pytest.mark.slow
def test_four_level_integer_weights_equal_the_replicated_files(tmp_path):
    frames = _schools_weighted()
    given = _write(frames, tmp_path, "w")
    rep = _write(replicate_files(frames, [None, "STUDENTID", "CLASSID", "SCHOOLID"], [None, "WS", None, "WT"]),
                 tmp_path, "rep")
    proc = hlmcli("fit", *given, *SCHOOLS_IDS, *SCHOOLS_MODEL, "--weight2", "WS", "--weight4", "WT",
                  "--normalize", "none", "--format", "json", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    plain = hlmcli("fit", *rep, *SCHOOLS_IDS, *SCHOOLS_MODEL, "--format", "json", "--cache-dir", tmp_path / "c")
    assert plain.returncode == 0, plain.stderr
    _same_fit(json.loads(proc.stdout), json.loads(plain.stdout))


def test_weight_options_that_do_not_fit_the_model_are_refused(pastes_pv, hsb_archive, tmp_path):
    three = [*pastes_pv, *PASTES_IDS, "-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00",
             "--cache-dir", tmp_path / "c"]
    proc = hlmcli("fit", *three, "--weight4", "W3")
    assert proc.returncode == 2 and "--weight4: the model has 3 levels" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = hlmcli("fit", hsb_archive, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--weight3", "X")
    assert proc.returncode == 2 and "--weight3 and --weight4 are for three- and four-level models" in proc.stderr


@pytest.mark.slow
def test_weight_columns_that_are_not_there_are_refused(pastes_pv, tmp_path):
    three = [*pastes_pv, *PASTES_IDS, "-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00",
             "--cache-dir", tmp_path / "c"]
    proc = hlmcli("fit", *three, "--weight3", "NOPE")
    assert proc.returncode == 1 and "the level-3 weight NOPE is not a level-3 variable" in proc.stderr
    proc = hlmcli("fit", *three, "--weight2", "W3")
    assert proc.returncode == 1 and "W3 is a level-3 variable" in proc.stderr
    proc = hlmcli("fit", *three, "--normalize", "total")
    assert proc.returncode == 2 and "--normalize needs sampling weights: --weight1 ... --weight4" in proc.stderr
    proc = hlmcli("fit", *three, "--weight3", "W3", "--reml")
    assert proc.returncode == 2 and "--reml with sampling weights" in proc.stderr


def test_a_zero_weight_is_refused_at_every_level(pastes_pv, tmp_path):
    """The two-level rule at three levels: a zero weight of a record, a level-2 or a level-3 unit stops
    the run (exit 1) with one line naming the file, column and row, in the same words at each level."""
    frames = [pd.read_csv(p) for p in pastes_pv]
    for frame, col in zip(frames, ("W1", "W2", "W3")):
        frame[col] = frame[col].astype(float)
        frame.loc[0, col] = 0.0
    paths = _write(frames, tmp_path, "zero")
    three = [*paths, *PASTES_IDS, "-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00",
             "--cache-dir", tmp_path / "c"]
    for level, where in ((1, "record 1 (level-2 unit"), (2, f"level-2 unit {frames[1].SAMPLE[0]}"),
                         (3, f"level-3 unit {frames[2].BATCH[0]}")):
        proc = hlmcli("fit", *three, f"--weight{level}", f"W{level}")
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"zero{level}.csv: column W{level}: the weight of {where}" in proc.stderr, proc.stderr
        assert "is zero (0); weights must be positive numbers at every level" in proc.stderr


@pytest.fixture(scope="module")
def pastes_pv(tmp_path_factory):
    return pastes_files(tmp_path_factory.mktemp("pastes_cli"))


def test_three_level_plausible_values_with_weights(pastes_pv, tmp_path):
    """One combined run: the document validates, its estimate is the mean of its fits' estimates, its
    robust total variance is the mean robust variance plus (1 + 1/M) times the between variance, each
    fit carries the weights, and the text prints the combined tables."""
    paths = pastes_pv
    proc = hlmcli("fit", *paths, *PASTES_IDS, *PV_MODEL, "--plausible-values", "PV1,PV2,PV3", "--weight3", "W3",
                  "--normalize", "total", "--json-out", tmp_path / "c.json", "--cache-dir", tmp_path / "c", "--ascii")
    assert proc.returncode == 0, proc.stderr
    assert all(b < 128 for b in proc.stdout.encode())  # --ascii: pure ASCII, the combining rule included
    doc = json.loads((tmp_path / "c.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, _schema("combined-levels.json"))
    for fit in doc["fits"]:
        jsonschema.validate(fit, _schema("fit-3.json"))
    assert doc["combining"]["outcomes"] == ["PV1", "PV2", "PV3"] and doc["weights"]["levels"][2]["variable"] == "W3"
    # a level-3 weight alone takes --normalize: the 10 batches' weights scaled to sum to 10
    assert doc["weights"]["normalize"] == "total" and doc["weights"]["levels"][2]["summary"]["sum"] == pytest.approx(10)
    est = np.array([[g["estimate"] for g in f["fixed_effects"]] for f in doc["fits"]])
    rse = np.array([[g["robust_se"] for g in f["fixed_effects"]] for f in doc["fits"]])
    for k, row in enumerate(doc["fixed_effects_robust"]):
        assert row["estimate"] == pytest.approx(est[:, k].mean(), rel=1e-13)
        total = np.mean(rse[:, k] ** 2) + (1 + 1 / 3) * est[:, k].var(ddof=1)
        assert row["se"] == pytest.approx(np.sqrt(total), rel=1e-10)
    assert [f["outcome"] for f in doc["fits"]] == ["PV1", "PV2", "PV3"]
    assert all("weights" in f for f in doc["fits"])
    text = proc.stdout
    assert "Results combined over 3 plausible values" in text and " Level 3          yes       W3" in text
    assert "Pseudo-deviance (average over the fits)" in text


def test_three_level_imputed_files(pastes_pv, tmp_path):
    """A second level-1 file with other values of the outcome is a second data set."""
    paths = pastes_pv
    l1 = pd.read_csv(paths[0])
    l1["PV1"] = l1["PV2"]
    l1.to_csv(tmp_path / "imp2.csv", index=False)
    proc = hlmcli("fit", *paths, *PASTES_IDS, *PV_MODEL, "--imputed", tmp_path / "imp2.csv", "--format", "json",
                  "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["combining"]["source"] == "imputed data sets" and doc["combining"]["m"] == 2
    est = [f["fixed_effects"][0]["estimate"] for f in doc["fits"]]
    assert doc["fixed_effects"][0]["estimate"] == pytest.approx(np.mean(est), rel=1e-13)
    assert est[0] != est[1]


@pytest.mark.slow
def test_imputed_file_with_other_records_is_refused(pastes_pv, tmp_path):
    l1 = pd.read_csv(pastes_pv[0])
    l1.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    proc = hlmcli("fit", *pastes_pv, *PASTES_IDS, *PV_MODEL, "--imputed", tmp_path / "short.csv", "--cache-dir",
                  tmp_path / "c")
    assert proc.returncode == 1 and "imputed data sets must hold the same records" in proc.stderr


def test_four_level_plausible_values(tmp_path):
    """The schools data (tests/data/four_level) with two plausible values of SCORE."""
    src = HERE / "data" / "four_level"
    l1 = pd.read_csv(src / "schools_l1.csv")
    rng = np.random.default_rng(4)
    l1["PVA"] = np.round(l1["SCORE"] + rng.normal(scale=2.0, size=len(l1)), 3)
    l1["PVB"] = np.round(l1["SCORE"] + rng.normal(scale=2.0, size=len(l1)), 3)
    l1.to_csv(tmp_path / "l1.csv", index=False)
    files = [tmp_path / "l1.csv"] + [src / f"schools_l{k}.csv" for k in (2, 3, 4)]
    model = ["-1", "PVA = p0 + p1*TIME + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
             "-3", "b10 = g100", "-4", "g000 = d0000 + v000", "-4", "g100 = d1000"]
    proc = hlmcli("fit", *files, "--id2", "STUDENTID", "--id3", "CLASSID", "--id4", "SCHOOLID", *model,
                  "--plausible-values", "PV*", "--format", "json", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, _schema("combined-levels.json"))
    assert doc["levels"] == 4 and len(doc["taus"]) == 3 and doc["combining"]["outcomes"] == ["PVA", "PVB"]
    est = np.array([[g["estimate"] for g in f["fixed_effects"]] for f in doc["fits"]])
    assert np.allclose([r["estimate"] for r in doc["fixed_effects"]], est.mean(axis=0), rtol=1e-13)
