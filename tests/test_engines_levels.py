"""--engine stream at three and four levels: the level-1 file read once into per-level-2-unit moments
(hlmcli/engines_levels.py), the upper files merged as in memory; every number of the JSON equal to
the in-memory fit's to 1e-10 relative (engine_cases.differences, the two-level engines' test), with
the records shuffled over many chunks so that every unit spans chunks; what needs the records is
refused in one line. The in-memory fits themselves are checked against lme4 in test_three_level_cli.py,
test_four_level_cli.py and test_nested.py."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import DATA, SAMPLE
from engine_cases import differences, fit_json, run

pytest.importorskip("pyarrow")

EG = [SAMPLE / "eg" / f"eg_l{k}.csv" for k in (1, 2, 3)]
EG_IDS = ["--id2", "CHILDID", "--id3", "SCHOOLID"]
EG_CONTEXT = ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + b01*FEMALE + r0", "-2", "p1 = b10 + r1",
              "-3", "b00 = g000 + g001*LOWINC + u00", "-3", "b10 = g100 + u10", "-3", "b01 = g010"]
EG_CENTRED = ["-1", "MATH = p0 + p1*group(YEAR) + p2*grand(GRADE) + e",
              "-2", "p0 = b00 + b01*grand(FEMALE) + b02*mean(YEAR) + r0", "-2", "p1 = b10 + r1", "-2", "p2 = b20",
              "-3", "b00 = g000 + g001*grand(LOWINC) + g002*mean(FEMALE) + u00", "-3", "b10 = g100 + g101*MOBILITY",
              "-3", "b01 = g010", "-3", "b02 = g020", "-3", "b20 = g200"]
D3 = DATA / "three_level"
PASTES = [D3 / f"pastes_l{k}.csv" for k in (1, 2, 3)]
PASTES_IDS = ["--id2", "SAMPLE", "--id3", "BATCH"]
PASTES_MODEL = ["-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00"]
D4 = DATA / "four_level"
SCHOOLS = [D4 / f"schools_l{k}.csv" for k in (1, 2, 3, 4)]
SCHOOLS_IDS = ["--id2", "STUDENTID", "--id3", "CLASSID", "--id4", "SCHOOLID"]
SCHOOLS_CENTRED = ["-1", "SCORE = p0 + p1*group(TIME) + e",
                   "-2", "p0 = b00 + b01*grand(SES) + b02*mean(TIME) + r0", "-2", "p1 = b10 + r1",
                   "-3", "b00 = g000 + g001*group(CSIZE) + g002*mean(SES) + u00",
                   "-4", "g000 = d0000 + d0001*SECTOR + d0002*mean(CSIZE) + v000"]
HOSPITALS = [D4 / f"hospitals_l{k}.csv" for k in (1, 2, 3, 4)]
HOSPITALS_IDS = ["--id2", "PATIENTID", "--id3", "WARDID", "--id4", "HOSPID"]
HOSPITALS_MODEL = ["-1", "Y = π0 + π1*DOSE + e", "-2", "π0 = β00 + β01*AGE + r0", "-2", "π1 = β10",
                   "-3", "β00 = γ000 + γ001*STAFF + u00", "-3", "β10 = γ100 + u10",
                   "-4", "γ000 = δ0000 + δ0001*TEACHING + v000", "-4", "γ100 = δ1000 + δ1001*TEACHING + v100"]


def shuffled(path, tmp_path, seed: int = 3):
    """The level-1 file with its records in random order (ids kept as written)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = tmp_path / f"shuffled_{path.name}"
    frame.sample(frac=1.0, random_state=seed).to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL)
    return out


@pytest.fixture
def small_chunks():
    """Chunks of 4 KiB: the level-1 files here are read in tens of chunks."""
    import hlmcli.streaming as streaming

    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 12
    yield
    streaming.CHUNK_BYTES = old


def read_numbers(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={0: str, 1: str})


def same_table(a, b) -> None:
    """Residual files: the same columns and ids, numbers to 1e-10 of their size."""
    ta, tb = read_numbers(a), read_numbers(b)
    assert list(ta.columns) == list(tb.columns) and ta.shape == tb.shape
    for c in ta.columns:
        if ta[c].dtype.kind == "f":
            np.testing.assert_allclose(tb[c], ta[c], rtol=1e-10, atol=1e-10 * float(np.abs(ta[c]).max()))
        else:
            assert (ta[c].astype(str) == tb[c].astype(str)).all(), c


@pytest.mark.slow
def test_three_level_stream_equals_memory_records_in_any_order(tmp_path, small_chunks):
    """EG with predictors at every level, the level-1 records shuffled over ~60 chunks; the EB
    residual files of levels 2 and 3 too (they need only the units' counts, not the records)."""
    l1 = shuffled(EG[0], tmp_path)
    out = {}
    for engine, files in (("memory", EG), ("stream", [l1, *EG[1:]])):
        out[engine] = fit_json([*files, *EG_IDS], EG_CONTEXT, "--engine", engine,
                               "--residuals-l2", tmp_path / f"{engine}2.csv", "--residuals-l3", tmp_path / f"{engine}3.csv")
    memory, streamed = out["memory"], out["stream"]
    assert streamed["certificate"]["certified"] and memory["certificate"]["certified"]
    assert streamed["n_level1"] == 7230 and streamed["n_level2"] == 1721 and streamed["n_level3"] == 60
    assert differences(memory, streamed) == []
    for level in (2, 3):
        same_table(tmp_path / f"memory{level}.csv", tmp_path / f"stream{level}.csv")


@pytest.mark.slow
def test_four_level_stream_equals_memory_centring_and_unit_means(tmp_path, small_chunks):
    """Schools (four levels): group(), grand() and mean() of a level-1 variable at levels 2 and 3 are
    shifts and pooled means of the units' moments; the optimum is on the boundary (r0, r1 correlated
    +1) and certified there by both engines."""
    memory = fit_json([*SCHOOLS, *SCHOOLS_IDS], SCHOOLS_CENTRED)
    streamed = fit_json([shuffled(SCHOOLS[0], tmp_path), *SCHOOLS[1:], *SCHOOLS_IDS], SCHOOLS_CENTRED,
                        "--engine", "stream")
    assert streamed["boundary_notes"] == memory["boundary_notes"] == ["correlation of r0 and r1 is +1"]
    assert streamed["certificate"]["certified"]
    assert differences(memory, streamed) == []


def _tiny(tmp_path, unmatched: bool = False, four: bool = False):
    """Three levels (4 × 5 units × 6 records) or four (3 × 3 × 4 units × 5 records), the records in
    random order; Y missing in two records, an unused column Z missing in a third."""
    rng = np.random.default_rng(11)
    shape = (3, 3, 4, 5) if four else (1, 4, 5, 6)
    rows, l2, l3, l4 = [], [], [], []
    for h in range(shape[0]):
        l4.append({"H": f"h{h}", "T": float(h % 2)})
        for k in range(shape[1]):
            s = f"s{h}{k}"
            l3.append({"S": s, "V": rng.normal(), **({"H": f"h{h}"} if four else {})})
            for j in range(shape[2]):
                c = f"c{h}{k}{j}"
                l2.append({"C": c, "S": s, "W": rng.normal()})
                u = rng.normal()
                for i in range(shape[3]):
                    x = 3 + rng.normal()
                    rows.append({"C": c, "X": x, "Y": 1 + 0.5 * x + u + rng.normal(), "Z": 1.0})
    l1 = pd.DataFrame(rows)
    l1.loc[3, "Y"] = np.nan
    l1.loc[40, "Y"] = np.nan
    l1.loc[7, "Z"] = np.nan
    if unmatched:
        l1 = pd.concat([l1, pd.DataFrame([{"C": "stray", "X": 0.0, "Y": 1.0, "Z": 1.0}] * 3)])
    l1 = l1.sample(frac=1.0, random_state=2)
    frames = [l1, pd.DataFrame(l2), pd.DataFrame(l3)] + ([pd.DataFrame(l4)] if four else [])
    paths = [tmp_path / f"t{k}{'u' if unmatched else ''}.csv" for k in range(1, len(frames) + 1)]
    for frame, path in zip(frames, paths):
        frame.to_csv(path, index=False)
    return paths


TINY_MODEL = ["-1", "Y = p0 + p1*X + e", "-2", "p0 = b00 + b01*W + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
              "-3", "b01 = g010", "-3", "b10 = g100"]
TINY_IDS = ["--id2", "C", "--id3", "S"]
TINY4_MODEL = ["-1", "Y = p0 + p1*group(X) + e", "-2", "p0 = b00 + b01*grand(W) + b02*mean(X) + r0", "-2", "p1 = b10",
               "-3", "b00 = g000 + g001*grand(V) + g002*mean(X) + u00", "-3", "b01 = g010", "-3", "b02 = g020",
               "-3", "b10 = g100", "-4", "g000 = d0000 + d0001*T + v000", "-4", "g001 = d0010", "-4", "g002 = d0020",
               "-4", "g010 = d0100", "-4", "g020 = d0200", "-4", "g100 = d1000"]


@pytest.fixture
def tiny_chunks():
    """Chunks of 512 bytes: the tiny level-1 files are read in about ten chunks."""
    import hlmcli.streaming as streaming

    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 9
    yield
    streaming.CHUNK_BYTES = old


def test_three_levels_missing_values_unmatched_units_and_residual_files_as_in_memory(tmp_path, tiny_chunks):
    """Records in random order over ten chunks; records missing a model variable are deleted per
    model (not for a column the model does not use); the EB residual files of levels 2 and 3 (they
    need the units' counts, not the records); level-1 records of a unit the level-2 file lacks are
    refused in one line, or dropped with --drop-unmatched, as in memory."""
    files = _tiny(tmp_path)
    out = {}
    for engine in ("memory", "stream"):
        out[engine] = fit_json([*files, *TINY_IDS], TINY_MODEL, "--engine", engine,
                               "--residuals-l2", tmp_path / f"{engine}2.csv", "--residuals-l3", tmp_path / f"{engine}3.csv")
    memory, streamed = out["memory"], out["stream"]
    assert memory["n_deleted"] == streamed["n_deleted"] == 2 and streamed["n_level1"] == 118
    assert streamed["certificate"]["certified"] and differences(memory, streamed) == []
    for level in (2, 3):
        same_table(tmp_path / f"memory{level}.csv", tmp_path / f"stream{level}.csv")
    stray = _tiny(tmp_path, unmatched=True)
    rc, msg = run("fit", *stray, *TINY_IDS, *TINY_MODEL, "--engine", "stream")
    assert rc == 1 and msg.count("\n") == 1 and "stray" in msg and "--drop-unmatched" in msg
    dropped = fit_json([*stray, *TINY_IDS, "--drop-unmatched"], TINY_MODEL, "--engine", "stream")
    assert differences(memory, dropped) == []


def test_four_levels_centring_and_unit_means_as_in_memory(tmp_path, tiny_chunks):
    """group(), grand() and mean() of a level-1 variable at levels 2 and 3 are shifts and pooled
    means of the units' moments."""
    files = _tiny(tmp_path, four=True)
    ids = [*TINY_IDS, "--id4", "H"]
    memory = fit_json([*files, *ids], TINY4_MODEL, "--reml")
    streamed = fit_json([*files, *ids], TINY4_MODEL, "--reml", "--engine", "stream")
    assert streamed["n_units"] == {"level1": 178, "level2": 36, "level3": 9, "level4": 3}
    assert streamed["certificate"]["certified"] and differences(memory, streamed) == []


def test_what_needs_the_records_is_refused_in_one_line(tmp_path):
    files = _tiny(tmp_path)
    ids = TINY_IDS
    for extra, code, words in (
            (["--residuals-l1", tmp_path / "r1.csv"], 2, "--residuals-l1"),
            (["--keep", "W"], 2, "--keep"),
            (["--missing", "now"], 2, "--missing now"),
    ):
        rc, msg = run("fit", *files, *ids, *TINY_MODEL, "--engine", "stream", *extra)
        assert rc == code and msg.count("\n") == 1 and words in msg, msg
    no_link = tmp_path / "l2_no_link.csv"
    pd.read_csv(files[1]).drop(columns=["S"]).to_csv(no_link, index=False)
    with_link = tmp_path / "l1_link.csv"
    l1 = pd.read_csv(files[0])
    l1["S"] = "s" + l1["C"].str[1]
    l1.to_csv(with_link, index=False)
    rc, msg = run("fit", with_link, no_link, files[2], *ids, *TINY_MODEL, "--engine", "stream")
    assert rc == 1 and msg.count("\n") == 1 and "add the S column there" in msg
    rc, msg = run("fit", files[0], files[0], files[2], *ids, *TINY_MODEL, "--engine", "stream")
    assert rc == 1 and msg.count("\n") == 1 and "separate files" in msg
    archive = tmp_path / "tiny.mdm"
    assert run("mdm", "build", *files, *ids, "-o", archive)[0] == 0
    rc, msg = run("fit", archive, *TINY_MODEL, "--engine", "stream")
    assert rc == 2 and msg.count("\n") == 1 and "drop --engine" in msg


# ---------------------------------------------------------------- every public three- and four-level reference

SLOW_CASES = {
    "eg_m1": ([*EG, *EG_IDS], ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
                               "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10"]),
    "eg_centred": ([*EG, *EG_IDS], EG_CENTRED),
    "pastes": ([*PASTES, *PASTES_IDS], PASTES_MODEL),
    "hospitals": ([*HOSPITALS, *HOSPITALS_IDS], HOSPITALS_MODEL),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_CASES))
@pytest.mark.parametrize("method", ["--ml", "--reml"])
def test_stream_equals_memory_on_every_reference(name, method, tmp_path, small_chunks):
    data, eqs = SLOW_CASES[name]
    memory = fit_json(data, eqs, method)
    streamed = fit_json([shuffled(data[0], tmp_path), *data[1:]], eqs, method, "--engine", "stream")
    assert streamed["certificate"]["certified"] == memory["certificate"]["certified"]
    assert differences(memory, streamed) == []
    if not math.isnan(memory["deviance"]):
        assert streamed["deviance"] == memory["deviance"] or abs(streamed["deviance"] / memory["deviance"] - 1) < 1e-12


@pytest.mark.slow
def test_stream_text_is_the_memory_text():
    data, eqs = SLOW_CASES["eg_m1"]
    rc_a, text_a = run("fit", *data, *eqs)
    rc_b, text_b = run("fit", *data, *eqs, "--engine", "stream")
    assert rc_a == rc_b == 0 and text_a == text_b
    assert json.loads(run("fit", *data, *eqs, "--engine", "stream", "--format", "json")[1])["converged"]
