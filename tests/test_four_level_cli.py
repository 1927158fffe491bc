"""Four-level models (HLM4) end to end through the command line, as a user types it: build the archive
from four files, describe it, fit the schools and hospitals models under ML and REML, and check the
printed and JSON numbers against lme4 (tests/data/four_level/*.json, made by
tests/reference_scripts/four_level_lme4.R, cross-checked there with nlme); the JSON validates against
hlmcli/schema/fit-levels.json; bad input is one line with its exit code."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

D4 = DATA / "four_level"
SCHOOLS = [D4 / f"schools_l{k}.csv" for k in (1, 2, 3, 4)]
HOSPITALS = [D4 / f"hospitals_l{k}.csv" for k in (1, 2, 3, 4)]
SCHOOLS_IDS = ["--id2", "STUDENTID", "--id3", "CLASSID", "--id4", "SCHOOLID"]
HOSPITALS_IDS = ["--id2", "PATIENTID", "--id3", "WARDID", "--id4", "HOSPID"]
SCHOOLS_MODEL = ["-1", "SCORE = p0 + p1*TIME + e", "-2", "p0 = b00 + b01*SES + r0", "-2", "p1 = b10 + r1",
                 "-3", "b00 = g000 + g001*CSIZE + u00", "-4", "g000 = d0000 + d0001*SECTOR + v000"]
HOSPITALS_MODEL = ["-1", "Y = π0 + π1*DOSE + e", "-2", "π0 = β00 + β01*AGE + r0", "-2", "π1 = β10",
                   "-3", "β00 = γ000 + γ001*STAFF + u00", "-3", "β10 = γ100 + u10",
                   "-4", "γ000 = δ0000 + δ0001*TEACHING + v000", "-4", "γ100 = δ1000 + δ1001*TEACHING + v100"]
FIXED = {"schools": ["d0000", "d0001", "d0010", "d0100", "d1000"],
         "hospitals": ["d0000", "d0001", "d0010", "d0100", "d1000", "d1001"]}


@pytest.fixture(scope="module")
def schools_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("schools") / "schools.mdm"
    proc = hlmcli("mdm", "build", *SCHOOLS, *SCHOOLS_IDS, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert "1904 level-1 records in 766 level-2 units in 144 level-3 units in 40 level-4 units" in proc.stderr
    return out


def _check(doc: dict, name: str, method: str) -> None:
    ref = json.loads((D4 / f"{name}.json").read_text())[method]
    assert doc["converged"] and doc["certificate"]["certified"]
    assert doc["method"] == method.upper() and doc["levels"] == 4
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    est = [f["estimate"] for f in doc["fixed_effects"]]
    se = [f["se"] for f in doc["fixed_effects"]]
    np.testing.assert_allclose(est, [ref["fixed"][k]["est"] for k in FIXED[name]], rtol=1e-6)
    np.testing.assert_allclose(se, [ref["fixed"][k]["se"] for k in FIXED[name]], rtol=1e-5)
    assert [f["label"] for f in doc["fixed_effects"]] == [k.replace("d", "δ") for k in FIXED[name]]
    assert doc["sigma2"] == pytest.approx(ref["sigma2"], rel=1e-6)
    for block, key in zip(doc["random_effects"], ("tau_pi", "tau_beta", "tau_gamma")):
        assert block["name"] == key
        np.testing.assert_allclose(block["matrix"], ref[key], rtol=1e-5, atol=1e-6 * np.abs(ref[key]).max())


def test_schools_ml_from_an_archive_text_json_and_residual_files(schools_archive, tmp_path):
    proc = hlmcli("fit", schools_archive, *SCHOOLS_MODEL, "--json-out", tmp_path / "fit.json",
                  "--residuals-l2", tmp_path / "r2.csv", "--residuals-l3", tmp_path / "r3.csv",
                  "--residuals-l4", tmp_path / "r4.csv")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "fit.json").read_text())
    _check(doc, "schools", "ml")
    text = proc.stdout
    assert "hierarchical linear models, 4 levels (HLM4)" in text and "full maximum likelihood" in text
    assert "γ000l = δ0000 + δ0001*(SECTORl) + v000l" in text
    assert "Final estimation of level-4 variance components" in text
    assert f"Deviance                       = {doc['deviance']:.6f}" in text
    assert "(1 | SCHOOLID) + (1 | SCHOOLID:CLASSID) + (1 + TIME | SCHOOLID:CLASSID:STUDENTID)" in text
    # χ² and reliability at every level, one τ block per level
    assert [len(b["chi2"]) for b in doc["random_effects"]] == [2, 1, 1]
    assert all(0 < r < 1 for b in doc["random_effects"] for r in b["reliability"])
    r4 = pd.read_csv(tmp_path / "r4.csv")
    assert len(r4) == 40 and list(r4.columns[:2]) == ["id", "n"]
    r2 = pd.read_csv(tmp_path / "r2.csv")
    assert len(r2) == 766 and "CLASSID" in r2.columns and "r_TIME" in r2.columns
    assert len(pd.read_csv(tmp_path / "r3.csv")) == 144


def test_four_level_json_validates_against_its_schema(schools_archive):
    jsonschema = pytest.importorskip("jsonschema")
    proc = hlmcli("fit", schools_archive, *SCHOOLS_MODEL, "--format", "json", "--reml")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    schema = json.loads(resources.files("hlmcli").joinpath("schema", "fit-levels.json").read_text())
    jsonschema.validate(doc, schema)
    _check(doc, "schools", "reml")
    broken = dict(doc, random_effects=doc["random_effects"][:1])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_hospitals_from_four_files_random_slopes_at_levels_3_and_4(method, tmp_path):
    args = ["fit", *HOSPITALS, *HOSPITALS_IDS, *HOSPITALS_MODEL, "--format", "json", "--cache-dir", tmp_path]
    proc = hlmcli(*args, *(["--reml"] if method == "reml" else []))
    assert proc.returncode == 0, proc.stderr
    _check(json.loads(proc.stdout), "hospitals", method)


def test_mdm_info_and_model_for_four_levels(schools_archive):
    info = hlmcli("mdm", "info", schools_archive, "--format", "json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["levels"] == 4 and [doc[f"n_level{k}"] for k in (1, 2, 3, 4)] == [1904, 766, 144, 40]
    assert doc["id"]["level4"] == "SCHOOLID"
    jsonschema = pytest.importorskip("jsonschema")  # one mdm info document for every number of levels
    from importlib import resources

    jsonschema.validate(doc, json.loads(resources.files("hlmcli").joinpath("schema", "mdm-info-1.json").read_text()))
    assert doc["records_per_unit"] == doc["units_per_unit"]["level2"]
    l1 = pd.read_csv(D4 / "schools_l1.csv")
    assert doc["records_per_unit"]["max"] == l1.STUDENTID.value_counts().max()
    text = hlmcli("mdm", "info", schools_archive).stdout
    assert "(4 levels, HLM4)" in text and "LEVEL-4 DESCRIPTIVE STATISTICS" in text
    unit = json.loads(hlmcli("mdm", "info", schools_archive, "--unit", "40", "--format", "json").stdout)["unit"]
    l1 = pd.read_csv(D4 / "schools_l1.csv")
    l2 = pd.read_csv(D4 / "schools_l2.csv")
    l3 = pd.read_csv(D4 / "schools_l3.csv")
    classes = l3.loc[l3.SCHOOLID == 40, "CLASSID"]
    students = l2.loc[l2.CLASSID.isin(classes), "STUDENTID"]
    assert unit["level"] == 4 and unit["n_below"] == len(classes) and unit["n"] == int(l1.STUDENTID.isin(students).sum())
    assert "level-2 unit 700: 4 level-1 records" in hlmcli("mdm", "info", schools_archive, "--unit", "700").stdout
    missing = hlmcli("mdm", "info", schools_archive, "--unit", "nope")
    assert missing.returncode == 1 and "no unit 'nope'" in missing.stderr
    model = hlmcli("model", schools_archive, *SCHOOLS_MODEL, "--ascii")
    assert model.returncode == 0, model.stderr
    assert "G000l = D0000 + D0001*(SECTORl) + V000l" in model.stdout


def test_four_level_bad_input_is_one_line_with_its_exit_code(schools_archive, tmp_path):
    proc = hlmcli("mdm", "build", *SCHOOLS, "--id2", "STUDENTID", "--id3", "CLASSID", "-o", tmp_path / "x.mdm")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--id4" in proc.stderr
    assert not (tmp_path / "x.mdm").exists()
    proc = hlmcli("fit", schools_archive, *SCHOOLS_MODEL[:-2], "-4", "g000 = d0000 + d0001*SES + v000")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "SES is a level-2 variable" in proc.stderr and "Traceback" not in proc.stderr
    proc = hlmcli("fit", schools_archive, *SCHOOLS_MODEL, "--test", "g000 = 0")  # a four-level model's γs are δs
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "d0000, d0001, d0010, d0100, d1000" in proc.stderr
    proc = hlmcli("fit", schools_archive, *SCHOOLS_MODEL, "-4", "g001 = d0010 + v001", "-3", "b01 = g010")
    assert proc.returncode == 0, proc.stderr  # another random effect at level 4, still certified
    proc = hlmcli("fit", schools_archive, "-1", "SCORE = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000",
                  "-4", "g000 = d0000")
    assert proc.returncode == 1 and "nothing is random at level 3" in proc.stderr


def test_archives_of_every_level_are_one_format():
    """One writer for every number of levels: the bytes of a two- and a three-level archive (format 3) are
    pinned (sha256, sources' paths and times fixed); the loader reads them back as the one archive type."""
    import hashlib

    from hlmcli.io.archive import BuildOptions, Source, archive_bytes, build_from_files
    from hlmcli.io.archive_levels import BuildOptions3, build_from_files3

    from conftest import SAMPLE

    T3 = DATA / "three_level"
    cases = [(build_from_files3([SAMPLE / "eg" / f"eg_l{k}.csv" for k in (1, 2, 3)], BuildOptions3("CHILDID", "SCHOOLID")),
              "EG3"),
             (build_from_files3([T3 / f"pastes_l{k}.csv" for k in (1, 2, 3)], BuildOptions3("SAMPLE", "BATCH")), "PASTES3"),
             (build_from_files(T3 / "pastes_l1.csv", T3 / "pastes_l2.csv",
                               BuildOptions("SAMPLE", "SAMPLE", keep1=("STRENGTH",))), "PASTES2")]
    shas = {}
    for a, name in cases:
        a.sources = [Source(s.role, s.name, "fixed/" + s.name, s.size, 0, s.sha256, s.format, s.encoding)
                     for s in a.sources]
        shas[name] = hashlib.sha256(b"".join(archive_bytes(a))).hexdigest()
    assert shas == ARCHIVE_SHAS


ARCHIVE_SHAS = {  # format 3 (format 2's three-level pins were 33ca8dbb… and b52e7cb7…); the pastes archives
    # hold a text column (CASK), which the header now records by level (notes["text_column_levels"])
    "EG3": "465d51d16040a2ff5106d8927019adc238b2f02a3f7abf494342071aa0c891c8",
    "PASTES3": "53831a2795f99aa9df256b8f607c82022f8afc661c40a56da0e302617f1e9e4d",
    "PASTES2": "dbdf269fe627e1183c97f0cd1468582a9b0efd97d71a55f7122f555a6902f49a",
}


def test_one_loader_reads_a_three_level_archive(tmp_path):
    from hlmcli.io.archive import load_archive, write_archive
    from hlmcli.io.archive_levels import BuildOptions3, build_from_files3

    from conftest import SAMPLE

    a = build_from_files3([SAMPLE / "eg" / f"eg_l{k}.csv" for k in (1, 2, 3)], BuildOptions3("CHILDID", "SCHOOLID"))
    write_archive(a, tmp_path / "eg.mdm")
    b = load_archive(tmp_path / "eg.mdm", 3)
    assert b.n_levels == 3 and b.n_level3 == 60 and b.unit3_ids == a.unit3_ids
    assert all(np.array_equal(x.values, y.values) for x, y in zip(a.levels, b.levels))
    np.testing.assert_array_equal(b.offsets2, a.offsets2)
    assert load_archive(tmp_path / "eg.mdm", None).n_levels == 3


CENTRED_MODEL = ["-1", "SCORE = p0 + p1*group(TIME) + e",
                 "-2", "p0 = b00 + b01*grand(SES) + b02*mean(TIME) + r0", "-2", "p1 = b10 + r1",
                 "-3", "b00 = g000 + g001*group(CSIZE) + g002*mean(SES) + u00",
                 "-4", "g000 = d0000 + d0001*SECTOR + d0002*mean(CSIZE) + v000"]


def test_centring_and_unit_means_at_every_level_match_lmer(schools_archive, tmp_path):
    """group(), grand() and mean() at levels 1 to 4 against the columns built by hand in R
    (tests/reference_scripts/four_level_centring_lme4.R); the optimum is on the boundary (r0 and r1
    correlated +1), certified there, and the model printed by `hlmcli model` reads back as itself."""
    ref = json.loads((D4 / "schools_centring.json").read_text())["ml"]
    proc = hlmcli("fit", schools_archive, *CENTRED_MODEL, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["converged"] and doc["boundary_notes"] == ["correlation of r0 and r1 is +1"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    labels = ["d" + "".join(map(str, f["subscripts"])) for f in doc["fixed_effects"]]
    assert labels == list(ref["fixed"])
    np.testing.assert_allclose([f["estimate"] for f in doc["fixed_effects"]],
                               [ref["fixed"][k]["est"] for k in labels], rtol=1e-6)
    np.testing.assert_allclose([f["se"] for f in doc["fixed_effects"]], [ref["fixed"][k]["se"] for k in labels],
                               rtol=1e-5)
    for block, key in zip(doc["random_effects"], ("tau_pi", "tau_beta", "tau_gamma")):
        np.testing.assert_allclose(block["matrix"], ref[key], rtol=1e-5)
    printed = hlmcli("model", schools_archive, *CENTRED_MODEL)
    assert "(TIMEijkl - TIME•jkl)" in printed.stdout and "(SESjkl - SES•••)" in printed.stdout
    (tmp_path / "model.txt").write_text(printed.stdout, encoding="utf-8")
    again = hlmcli("fit", schools_archive, "--model", tmp_path / "model.txt", "--format", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["deviance"] == doc["deviance"]


def test_four_level_output_is_byte_identical_run_to_run(schools_archive):
    args = ["fit", schools_archive, *SCHOOLS_MODEL]
    a, b = hlmcli(*args, "--format", "json"), hlmcli(*args, "--format", "json")
    assert a.returncode == 0 and a.stdout == b.stdout
