"""Three and four levels from per-level-2-unit moments (hlmcli/analysis/engines_levels.py): the level-1 file
read once by the stream engine, in many chunks and in random order, the upper files merged as in
memory; the certified fit equals the in-memory fit to 1e-10 relative in every number (γ, their
covariances, σ², τ per level, deviance, reliabilities, χ² tests, EB means and variances). The
in-memory fits themselves are checked against lme4 in test_nested.py, test_three_level_cli.py and
test_four_level_cli.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyarrow")

TINY_MODEL = [["Y = p0 + p1*X + e"], ["p0 = b00 + b01*W + r0", "p1 = b10"], ["b00 = g000 + u00", "b01 = g010", "b10 = g100"]]
TINY4_MODEL = [["Y = p0 + p1*group(X) + e"], ["p0 = b00 + b01*grand(W) + b02*mean(X) + r0", "p1 = b10"],
               ["b00 = g000 + g001*grand(V) + g002*mean(X) + u00", "b01 = g010", "b02 = g020", "b10 = g100"],
               ["g000 = d0000 + d0001*T + v000", "g001 = d0010", "g002 = d0020", "g010 = d0100", "g020 = d0200",
                "g100 = d1000"]]
TINY_IDS = ["--id2", "C", "--id3", "S"]


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
        # one stray record misses Y: dropped with its unit, it deletes nothing (the memory engine's count)
        l1 = pd.concat([l1, pd.DataFrame([{"C": "stray", "X": 0.0, "Y": 1.0, "Z": 1.0}] * 3
                                         + [{"C": "stray", "X": 0.0, "Y": np.nan, "Z": 1.0}])])
    l1 = l1.sample(frac=1.0, random_state=2)
    frames = [l1, pd.DataFrame(l2), pd.DataFrame(l3)] + ([pd.DataFrame(l4)] if four else [])
    paths = [tmp_path / f"t{k}{'u' if unmatched else ''}.csv" for k in range(1, len(frames) + 1)]
    for frame, path in zip(frames, paths):
        frame.to_csv(path, index=False)
    return paths


@pytest.fixture
def tiny_chunks():
    """Chunks of 512 bytes: the tiny level-1 files are read in about ten chunks."""
    import hlmcli.data.streaming as streaming

    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 9
    yield
    streaming.CHUNK_BYTES = old


def _options(paths, ids, drop_unmatched=False):
    from hlmcli.io.archive_levels import BuildOptions3, BuildOptionsLevels

    if len(paths) == 3:
        return BuildOptions3(ids[0], ids[1], drop_unmatched=drop_unmatched)
    return BuildOptionsLevels(tuple(ids), (None,) * len(paths), "analysis", drop_unmatched)


def _fits(paths, ids, equations, reml=False, drop_unmatched=False):
    """(memory design and fit, stream design and fit) of the same files and model."""
    from hlmcli.io.archive_levels import build_from_files3, build_from_files_levels
    from hlmcli.data.design_levels import design_levels, level1_variables
    from hlmcli.analysis.engines_levels import summarised
    from hlmcli.cli.levels import spec_levels
    from hlmcli.engine.nested_fit import fit_nested

    options = _options(paths, ids, drop_unmatched)
    build = build_from_files3 if len(paths) == 3 else build_from_files_levels
    out = []
    for engine in ("memory", "stream"):
        if engine == "memory":
            archive = build(paths, options)
        else:
            archive, l1 = summarised(paths, options, "stream")
        spec = spec_levels(archive, equations, None, reml)
        level1 = None if engine == "memory" else l1.moments(archive, level1_variables(spec))
        design = design_levels(spec, archive, level1)
        out.append((design, fit_nested(design.data, reml=reml)))
    return out


def _same(a, b, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    scale = max(float(np.nanmax(np.abs(a))) if a.size else 0.0, 1e-300)
    assert np.allclose(a, b, rtol=1e-10, atol=1e-10 * scale, equal_nan=True), (what, a, b)


def _same_fit(m, s):
    (dm, fm), (ds, fs) = m, s
    assert fm.converged and fs.converged
    assert dm.n == ds.n and dm.n_deleted == ds.n_deleted
    assert [dm.J(k) for k in range(2, fm.n_levels + 1)] == [ds.J(k) for k in range(2, fs.n_levels + 1)]
    assert dm.unit_ids == ds.unit_ids and dm.centering_means.keys() == ds.centering_means.keys()
    _same(list(dm.centering_means.values()), list(ds.centering_means.values()), "centering means")
    for name in ("gamma", "cov_gamma", "cov_gamma_robust", "df_gamma", "sigma2", "deviance"):
        _same(getattr(fm, name), getattr(fs, name), name)
    for level, (a, b) in enumerate(zip(fm.taus, fs.taus), start=2):
        _same(a, b, f"tau level {level}")
        _same(fm.reliabilities[level - 2], fs.reliabilities[level - 2], f"reliability {level}")
        _same(fm.eb[level - 2], fs.eb[level - 2], f"EB {level}")
        _same(fm.eb_var[level - 2], fs.eb_var[level - 2], f"EB var {level}")
        for ca, cb in zip(fm.chi2[level - 2], fs.chi2[level - 2]):
            assert ca["df"] == cb["df"] and ca["n_units"] == cb["n_units"]
            _same(ca["chi2"], cb["chi2"], f"chi2 {level}")
    assert fm.boundary == fs.boundary and fm.certificate.ranks == fs.certificate.ranks


@pytest.mark.slow  # the command-line tests below run the same data by default
def test_three_levels_from_moments_equal_memory(tmp_path, tiny_chunks):
    """Records in random order over ten chunks; records missing a model variable deleted per model
    (not for the column Z the model does not use)."""
    paths = _tiny(tmp_path)
    memory, stream = _fits(paths, ["C", "S"], TINY_MODEL)
    assert memory[0].n_deleted == 2 and memory[0].n == 118
    _same_fit(memory, stream)


@pytest.mark.slow  # the command-line tests below run the same data by default
def test_four_levels_centring_and_unit_means_from_moments_equal_memory(tmp_path, tiny_chunks):
    """group(), grand() and mean() of a level-1 variable at levels 2 and 3 are shifts and pooled
    means of the units' moments (REML)."""
    paths = _tiny(tmp_path, four=True)
    memory, stream = _fits(paths, ["C", "S", "H"], TINY4_MODEL, reml=True)
    assert stream[0].n == 178 and [stream[0].J(k) for k in (2, 3, 4)] == [36, 9, 3]
    _same_fit(memory, stream)


def test_unmatched_level1_units_refused_or_dropped_as_in_memory(tmp_path):
    from hlmcli.errors import DataError

    paths = _tiny(tmp_path, unmatched=True)
    with pytest.raises(DataError, match="stray.*--drop-unmatched"):
        _fits(paths, ["C", "S"], TINY_MODEL)
    memory, stream = _fits(paths, ["C", "S"], TINY_MODEL, drop_unmatched=True)
    assert memory[0].n_deleted == 2
    _same_fit(memory, stream)


# ---------------------------------------------------------------- the command line, as a user types it

def _cli_model(equations):
    return [a for level, eqs in enumerate(equations, start=1) for eq in eqs for a in (f"-{level}", eq)]


def test_cli_three_levels_stream_equals_memory_with_residual_files(tmp_path, tiny_chunks):
    """`hlmcli fit L1 L2 L3 --engine stream`: the JSON equal to --engine memory's to 1e-10 in every
    number (the two-level engines' test), and the EB residual files of levels 2 and 3 too (they need
    the units' record counts, not the records)."""
    from engine_cases import differences, fit_json

    files = _tiny(tmp_path)
    out = {}
    for engine in ("memory", "stream"):
        out[engine] = fit_json([*files, *TINY_IDS], _cli_model(TINY_MODEL), "--engine", engine,
                               "--residuals-l2", tmp_path / f"{engine}2.csv", "--residuals-l3", tmp_path / f"{engine}3.csv")
    assert out["stream"]["certificate"]["certified"] and out["memory"]["n_deleted"] == out["stream"]["n_deleted"] == 2
    assert differences(out["memory"], out["stream"]) == []
    for level in (2, 3):
        a, b = pd.read_csv(tmp_path / f"memory{level}.csv"), pd.read_csv(tmp_path / f"stream{level}.csv")
        assert list(a.columns) == list(b.columns) and a.shape == b.shape
        for c in a.columns:
            if a[c].dtype.kind == "f":
                _same(a[c], b[c], f"level-{level} residual file, {c}")
            else:
                assert (a[c].astype(str) == b[c].astype(str)).all(), c


def test_cli_four_levels_stream_equals_memory(tmp_path, tiny_chunks):
    from engine_cases import differences, fit_json

    files = _tiny(tmp_path, four=True)
    ids = [*TINY_IDS, "--id4", "H"]
    memory = fit_json([*files, *ids], _cli_model(TINY4_MODEL), "--reml")
    streamed = fit_json([*files, *ids], _cli_model(TINY4_MODEL), "--reml", "--engine", "stream")
    assert streamed["certificate"]["certified"] and differences(memory, streamed) == []


def test_cli_stream_takes_the_level3_link_from_the_level1_file_as_memory(tmp_path, tiny_chunks):
    """A level-2 file without the level-3 id: --engine stream links each level-2 unit through the level-1
    file's records (one pass over its two id columns, over about ten chunks), as the memory engine does; the
    same fit, the same warning for a level-2 unit with no records, and the same refusal of a unit under two
    level-3 units."""
    from engine_cases import differences, run

    files = _tiny(tmp_path)
    l1 = pd.read_csv(files[0])
    l1["S"] = "s" + l1["C"].str[1:3]
    with_link = tmp_path / "l1_link.csv"
    l1.to_csv(with_link, index=False)
    l2 = pd.read_csv(files[1]).drop(columns=["S"])
    no_link = tmp_path / "l2_no_link.csv"
    pd.concat([l2, pd.DataFrame([{"C": "lonely", "W": 0.5}])]).to_csv(no_link, index=False)
    out = {}
    for engine in ("memory", "stream"):  # a fresh cache, so the memory engine's builder warns too
        rc, text = run("fit", with_link, no_link, files[2], *TINY_IDS, *_cli_model(TINY_MODEL), "--engine", engine,
                       "--format", "json", "--cache-dir", tmp_path / "fresh")
        assert rc == 0 and ("hlmcli: warning: 1 level-2 unit(s) in l2_no_link.csv have no level-1 records and are "
                            "left out (ids lonely)") in text, text
        out[engine] = json.loads("\n".join(line for line in text.splitlines() if not line.startswith("hlmcli:")))
    assert out["stream"]["certificate"]["certified"] and differences(out["memory"], out["stream"]) == []
    l1.loc[l1.index[0], "S"] = "s99"  # a level-2 unit under two level-3 units
    l1.to_csv(with_link, index=False)
    rc, msg = run("fit", with_link, no_link, files[2], *TINY_IDS, *_cli_model(TINY_MODEL), "--engine", "stream")
    assert rc == 1 and msg.count("\n") == 1 and "appears under two level-3 units" in msg, msg


def test_cli_what_needs_the_records_is_refused_in_one_line(tmp_path):
    from engine_cases import run

    files = _tiny(tmp_path)
    model = _cli_model(TINY_MODEL)
    for extra, words in ((["--residuals-l1", tmp_path / "r1.csv"], "--residuals-l1"),
                         (["--missing", "now"], "--missing now")):
        rc, msg = run("fit", *files, *TINY_IDS, *model, "--engine", "stream", *extra)
        assert rc in (1, 2) and msg.count("\n") == 1 and words in msg and "records" in msg, msg
    no_link = tmp_path / "l2_no_link.csv"
    pd.read_csv(files[1]).drop(columns=["S"]).to_csv(no_link, index=False)
    rc, msg = run("fit", files[0], no_link, files[2], *TINY_IDS, *model, "--engine", "stream")  # no link anywhere
    assert rc == 1 and msg.count("\n") == 1 and "add the S column there" in msg
    rc, msg = run("fit", files[0], files[0], files[2], *TINY_IDS, *model, "--engine", "stream")
    assert rc == 1 and msg.count("\n") == 1 and "separate files" in msg
    archive = tmp_path / "tiny.mdm"
    assert run("mdm", "build", *files, *TINY_IDS, "-o", archive)[0] == 0
    rc, msg = run("fit", archive, *model, "--engine", "stream")
    assert rc == 2 and msg.count("\n") == 1 and "drop --engine" in msg


# ---------------------------------------------------------------- every public three- and four-level reference



def _reference_cases():
    from conftest import DATA, SAMPLE

    eg = [*[SAMPLE / "eg" / f"eg_l{k}.csv" for k in (1, 2, 3)], "--id2", "CHILDID", "--id3", "SCHOOLID"]
    d4 = DATA / "four_level"
    return {
        "eg_m1": (eg, ["-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
                       "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10"]),
        "eg_centred": (eg, ["-1", "MATH = p0 + p1*group(YEAR) + p2*grand(GRADE) + e",
                            "-2", "p0 = b00 + b01*grand(FEMALE) + b02*mean(YEAR) + r0", "-2", "p1 = b10 + r1",
                            "-2", "p2 = b20", "-3", "b00 = g000 + g001*grand(LOWINC) + g002*mean(FEMALE) + u00",
                            "-3", "b10 = g100 + g101*MOBILITY", "-3", "b01 = g010", "-3", "b02 = g020",
                            "-3", "b20 = g200"]),
        "pastes": ([*[DATA / "three_level" / f"pastes_l{k}.csv" for k in (1, 2, 3)], "--id2", "SAMPLE", "--id3", "BATCH"],
                   ["-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00"]),
        "schools_centred": ([*[d4 / f"schools_l{k}.csv" for k in (1, 2, 3, 4)], "--id2", "STUDENTID", "--id3",
                             "CLASSID", "--id4", "SCHOOLID"],
                            ["-1", "SCORE = p0 + p1*group(TIME) + e",
                             "-2", "p0 = b00 + b01*grand(SES) + b02*mean(TIME) + r0", "-2", "p1 = b10 + r1",
                             "-3", "b00 = g000 + g001*group(CSIZE) + g002*mean(SES) + u00",
                             "-4", "g000 = d0000 + d0001*SECTOR + d0002*mean(CSIZE) + v000"]),
        "hospitals": ([*[d4 / f"hospitals_l{k}.csv" for k in (1, 2, 3, 4)], "--id2", "PATIENTID", "--id3", "WARDID",
                       "--id4", "HOSPID"],
                      ["-1", "Y = π0 + π1*DOSE + e", "-2", "π0 = β00 + β01*AGE + r0", "-2", "π1 = β10",
                       "-3", "β00 = γ000 + γ001*STAFF + u00", "-3", "β10 = γ100 + u10",
                       "-4", "γ000 = δ0000 + δ0001*TEACHING + v000", "-4", "γ100 = δ1000 + δ1001*TEACHING + v100"]),
    }


def _shuffled(path, tmp_path, seed: int = 3):
    """The level-1 file with its records in random order (ids and values kept as written)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = tmp_path / f"shuffled_{path.name}"
    frame.sample(frac=1.0, random_state=seed).to_csv(out, index=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eg_m1", "eg_centred", "pastes", "schools_centred", "hospitals"])
@pytest.mark.parametrize("method", ["--ml", "--reml"])
def test_cli_stream_equals_memory_on_every_reference(name, method, tmp_path):
    """The public references (EG, Pastes, the four-level schools with centring at every level and a
    boundary, hospitals), the level-1 records shuffled over chunks of 4 KiB."""
    import hlmcli.data.streaming as streaming
    from engine_cases import differences, fit_json

    data, eqs = _reference_cases()[name]
    memory = fit_json(data, eqs, method)
    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 12
    try:
        streamed = fit_json([_shuffled(data[0], tmp_path), *data[1:]], eqs, method, "--engine", "stream")
    finally:
        streaming.CHUNK_BYTES = old
    assert streamed["certificate"]["certified"] == memory["certificate"]["certified"]
    assert differences(memory, streamed) == []


def test_api_three_levels_engine_stream_equals_memory(tmp_path):
    """hlmcli.fit(..., engine="stream") at three levels: the same Results as in memory."""
    import hlmcli
    from engine_cases import differences

    files = _tiny(tmp_path)
    kw = dict(level3=files[2], id2="C", id3="S", level1_eq=TINY_MODEL[0][0], level2_eqs=TINY_MODEL[1],
              level3_eqs=TINY_MODEL[2], warn=lambda m: None)
    memory = hlmcli.fit(*files[:2], **kw).to_dict()
    streamed = hlmcli.fit(*files[:2], engine="stream", **kw).to_dict()
    assert streamed["converged"] and differences(memory, streamed) == []
