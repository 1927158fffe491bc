"""The archive (our MDM): build, load, info, cache, and every bad input a user can cause."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hlmcli.io.archive import load_archive
from hlmcli.cli import main

from conftest import DATA, SAMPLE, hlmcli


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- the HSB archive

def test_hsb_info_counts_and_unit_1224(hsb_archive):
    proc = hlmcli("mdm", "info", hsb_archive, "--unit", "1224", "--format", "json", check=True)
    info = json.loads(proc.stdout)
    assert info["n_level1"] == 7185 and info["n_level2"] == 160 and info["format_version"] == 3
    assert info["unit"]["level2"]["MEANSES"] == pytest.approx(-0.428)
    assert info["records_per_unit"]["min"] == 14 and info["records_per_unit"]["max"] == 67


def test_hsb_info_means_equal_the_csv(hsb_archive):
    info = json.loads(hlmcli("mdm", "info", hsb_archive, "--format", "json", check=True).stdout)
    csv1 = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")
    csv2 = pd.read_csv(SAMPLE / "hsb" / "hsb2.csv")
    stats1 = {v["name"]: v for v in info["level1"]}
    stats2 = {v["name"]: v for v in info["level2"]}
    for col in ("SES", "MATHACH", "FEMALE", "MINORITY"):
        assert stats1[col]["mean"] == pytest.approx(csv1[col].mean(), rel=1e-12)
        assert stats1[col]["sd"] == pytest.approx(csv1[col].std(), rel=1e-12)
        assert stats1[col]["minimum"] == csv1[col].min() and stats1[col]["maximum"] == csv1[col].max()
    assert abs(stats1["SES"]["mean"]) < 0.001  # "-0.0002 or thereabouts"
    assert stats2["MEANSES"]["mean"] == pytest.approx(csv2["MEANSES"].mean(), rel=1e-12)


def test_text_info_shows_hlm_statistics(hsb_archive):
    out = hlmcli("mdm", "info", hsb_archive, check=True).stdout
    assert "LEVEL-1 DESCRIPTIVE STATISTICS" in out and "LEVEL-2 DESCRIPTIVE STATISTICS" in out
    assert "level-1 records: 7185" in out and "level-2 units:   160" in out
    assert "records per unit: 14 to 67" in out


def test_csv_sas_and_spss_sources_give_identical_data(tmp_path):
    outs = {}
    for name, (a, b, idcol) in {"csv": ("hsb1.csv", "hsb2.csv", "ID"), "sas": ("hsb1.sas7bdat", "hsb2.sas7bdat", "ID"),
                                "spss": ("HSB1.SAV", "HSB2.SAV", "id")}.items():
        out = tmp_path / f"{name}.mdm"
        r = run("mdm", "build", SAMPLE / "hsb" / a, SAMPLE / "hsb" / b, "--id", idcol, "-o", out)
        assert r.exit_code == 0, r.output
        outs[name] = load_archive(out)
    base = outs["csv"]
    for other in ("sas", "spss"):
        a = outs[other]
        assert a.level1_names == base.level1_names and a.level2_names == base.level2_names
        assert np.array_equal(a.level1, base.level1) and np.array_equal(a.level2, base.level2)
        assert a.unit_ids == base.unit_ids and np.array_equal(a.offsets, base.offsets)


def test_popular2_template_builds_from_windows_paths(tmp_path):
    shutil.copy(SAMPLE / "popular2" / "creatmdm.mdmt", tmp_path)
    shutil.copy(SAMPLE / "popular2" / "popular2.sav", tmp_path)
    r = run("mdm", "build", "--template", tmp_path / "creatmdm.mdmt")
    assert r.exit_code == 0, r.output
    a = load_archive(tmp_path / "popular2.mdm")  # mdmname: from the template
    assert a.n_level1 == 2000 and a.n_units == 100
    assert [n.upper() for n in a.level1_names] == ["EXTRAV", "SEX", "POPULAR"]
    assert [n.upper() for n in a.level2_names] == ["TEXP"]
    assert a.value_labels["sex"] == {"0": "boy", "1": "girl"}


def test_template_missing_data_file_names_both_places(tmp_path):
    shutil.copy(SAMPLE / "popular2" / "creatmdm.mdmt", tmp_path)
    r = run("mdm", "build", "--template", tmp_path / "creatmdm.mdmt", "-o", tmp_path / "x.mdm")
    assert r.exit_code == 1
    assert "D:\\Dropbox" in r.output and str(tmp_path / "popular2.sav") in r.output
    assert "Traceback" not in r.output


def test_same_file_for_both_levels(tmp_path):
    out = tmp_path / "p.mdm"
    r = run("mdm", "build", SAMPLE / "popular2" / "popular2.sav", SAMPLE / "popular2" / "popular2.sav",
            "--id", "class", "--l1-vars", "extrav,sex,popular", "--l2-vars", "texp", "-o", out)
    assert r.exit_code == 0, r.output
    a = load_archive(out)
    assert a.n_units == 100 and a.level2_names == ["texp"]
    l2 = pd.read_csv(SAMPLE / "popular2" / "popular2_level2.csv")
    assert np.array_equal(a.level2_column("texp"), l2["texp"].to_numpy(float))


def test_separate_id_names_and_keep_lists(tmp_path):
    l1 = tmp_path / "a.csv"
    l2 = tmp_path / "b.csv"
    l1.write_text("school,x,y,z\n1,1,2,9\n1,2,3,9\n2,3,5,9\n2,4,4,9\n")
    l2.write_text("sid,w,v\n1,0.5,7\n2,1.5,8\n")
    out = tmp_path / "o.mdm"
    r = run("mdm", "build", l1, l2, "--id1", "school", "--id2", "sid", "--l1-vars", "x,y", "--l2-vars", "w", "-o", out)
    assert r.exit_code == 0, r.output
    a = load_archive(out)
    assert a.level1_names == ["x", "y"] and a.level2_names == ["w"]
    assert a.unit_ids == ["1", "2"]


def test_missing_now_drops_records_and_analysis_keeps_them(tmp_path):
    l1 = tmp_path / "a.csv"
    l2 = tmp_path / "b.csv"
    l1.write_text("id,x,y\n1,1,2\n1,,3\n2,3,5\n2,4,4\n")
    l2.write_text("id,w\n1,0\n2,1\n")
    for mode, n in (("now", 3), ("analysis", 4)):
        out = tmp_path / f"{mode}.mdm"
        assert run("mdm", "build", l1, l2, "--id", "id", "--missing", mode, "-o", out).exit_code == 0
        a = load_archive(out)
        assert a.n_level1 == n
        assert a.notes["dropped_missing"] == 4 - n


def test_records_are_sorted_by_unit_and_ids_keep_leading_zeros(tmp_path):
    l1 = tmp_path / "a.csv"
    l2 = tmp_path / "b.csv"
    l1.write_text("id,x\n002,1\n001,2\n002,3\n001,4\n")
    l2.write_text("id,w\n001,5\n002,6\n")
    out = tmp_path / "o.mdm"
    assert run("mdm", "build", l1, l2, "--id", "id", "-o", out).exit_code == 0
    a = load_archive(out)
    assert a.unit_ids == ["001", "002"]
    assert list(a.level1_column("x")) == [2.0, 4.0, 1.0, 3.0]
    assert list(a.offsets) == [0, 2, 4]


# ---------------------------------------------------------------- checksums and the cache

def test_damaged_archive_is_refused(hsb_archive, tmp_path):
    bad = tmp_path / "bad.mdm"
    data = bytearray(hsb_archive.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    r = run("mdm", "info", bad)
    assert r.exit_code == 1 and "checksum mismatch" in r.output and "Traceback" not in r.output


def test_loaded_archive_keeps_its_values_when_the_file_is_replaced_or_emptied(hsb_archive, tmp_path):
    # The archive's columns are views of the file (memory-mapped on POSIX): read-only, and unchanged when
    # the file is replaced by rename, as `mdm build -o` and the cache replace archives.
    path = tmp_path / "a.mdm"
    shutil.copy(hsb_archive, path)
    archive = load_archive(path)
    values = archive.levels[0].values
    expected = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")["MATHACH"].to_numpy()
    row = archive.levels[0].names.index("MATHACH")
    assert not values.flags.writeable
    other = tmp_path / "other.mdm"
    other.write_bytes(b"x" * path.stat().st_size)
    os.replace(other, path)
    np.testing.assert_array_equal(np.sort(values[row]), np.sort(expected))
    # an empty file is refused in one line, like any other non-archive
    path.write_bytes(b"")
    r = run("mdm", "info", path)
    assert r.exit_code == 1 and "not an hlmcli archive" in r.output and "Traceback" not in r.output


def _two_files(tmp_path):
    shutil.copy(SAMPLE / "hsb" / "hsb1.csv", tmp_path / "l1.csv")
    shutil.copy(SAMPLE / "hsb" / "hsb2.csv", tmp_path / "l2.csv")
    return tmp_path / "l1.csv", tmp_path / "l2.csv"


def test_cache_is_reused_rebuilt_on_change_and_on_damage(tmp_path, monkeypatch):
    from hlmcli.io.archive import BuildOptions
    from hlmcli.io.cache import cached_archive

    # a cache of this test's own: other tests may already have cached the same HSB files
    monkeypatch.setenv("HLMCLI_CACHE_DIR", str(tmp_path / "cache"))

    l1, l2 = _two_files(tmp_path)
    opts = BuildOptions(id1="ID", id2="ID")
    a, status = cached_archive((l1, l2), opts)
    assert status == "built" and a.n_level1 == 7185
    assert a.path.parent == Path(os.environ["HLMCLI_CACHE_DIR"]) and not (tmp_path / ".hlmcli-cache").exists()
    _, status = cached_archive((l1, l2), opts)
    assert status == "reused"
    # a changed source gives a new key, so a new build
    with open(l1, "a") as f:
        f.write("1224,0,1,0.5,10.0\n")
    a, status = cached_archive((l1, l2), opts)
    assert status == "built" and a.n_level1 == 7186
    # damage the cached file: detected and rebuilt
    cached = a.path
    raw = bytearray(cached.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    cached.write_bytes(bytes(raw))
    a, status = cached_archive((l1, l2), opts)
    assert status.startswith("rebuilt") and a.n_level1 == 7186


def test_info_warns_when_a_source_changed(tmp_path):
    l1, l2 = _two_files(tmp_path)
    out = tmp_path / "h.mdm"
    assert run("mdm", "build", l1, l2, "--id", "ID", "-o", out).exit_code == 0
    with open(l2, "a") as f:
        f.write("\n")
    proc = hlmcli("mdm", "info", out)
    assert proc.returncode == 0 and "changed since this archive was built" in proc.stderr


# ---------------------------------------------------------------- bad input: one line, non-zero, no traceback

def _assert_user_error(r, *fragments):
    assert r.exit_code != 0
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("hlmcli: error:")
    assert "Traceback" not in r.output
    for frag in fragments:
        assert frag in lines[0], lines[0]


@pytest.fixture
def pair(tmp_path):
    l1 = tmp_path / "l1.csv"
    l2 = tmp_path / "l2.csv"
    l1.write_text("id,x,y\n1,1,2\n1,2,3\n2,3,5\n2,4,4\n")
    l2.write_text("id,w\n1,0\n2,1\n")
    return l1, l2, tmp_path / "out.mdm"


def test_missing_file(pair):
    l1, l2, out = pair
    _assert_user_error(run("mdm", "build", l1.parent / "nope.csv", l2, "--id", "id", "-o", out), "nope.csv", "no such file")


def test_unreadable_file(pair):
    l1, l2, out = pair
    if os.geteuid() == 0:
        # root reads anything; a directory stands in for an unreadable file
        _assert_user_error(run("mdm", "build", l1.parent, l2, "--id", "id", "-o", out))
    else:
        l1.chmod(0)
        _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "cannot be read")


def test_unknown_format(pair):
    l1, l2, out = pair
    odd = l1.with_suffix(".xls")
    odd.write_text("x")
    _assert_user_error(run("mdm", "build", odd, l2, "--id", "id", "-o", out), "l1.xls", "--format")


def test_id_column_absent(pair):
    l1, l2, out = pair
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "school", "-o", out), "l1.csv", "school")
    _assert_user_error(run("mdm", "build", l1, l2, "--id1", "id", "--id2", "school", "-o", out), "l2.csv", "school")


def test_duplicate_level2_ids(pair):
    l1, l2, out = pair
    l2.write_text("id,w\n1,0\n2,1\n2,3\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "l2.csv", "more than once", "2")


def test_unmatched_level1_ids_error_and_drop(pair):
    l1, l2, out = pair
    l1.write_text("id,x,y\n1,1,2\n1,2,3\n2,3,5\n7,4,4\n8,1,1\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "2 level-1 records", "7, 8", "--drop-unmatched")
    r = run("mdm", "build", l1, l2, "--id", "id", "--drop-unmatched", "-o", out)
    assert r.exit_code == 0 and "dropped 2 level-1 records" in r.output
    assert load_archive(out).n_level1 == 3


def test_level2_units_without_records_warn(pair):
    l1, l2, out = pair
    l2.write_text("id,w\n1,0\n2,1\n3,5\n")
    r = run("mdm", "build", l1, l2, "--id", "id", "-o", out)
    assert r.exit_code == 0 and "warning" in r.output and "(ids 3)" in r.output
    assert load_archive(out).n_units == 2


def test_non_numeric_value_to_keep(pair):
    l1, l2, out = pair
    l1.write_text("id,x,y\n1,1,2\n1,2,3\n2,three,5\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "l1.csv", "column x", "line 4", "three")


def test_level2_missing_value_names_unit_and_variable(pair):
    l1, l2, out = pair
    l2.write_text("id,w,v\n1,0,1\n2,,2\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "column w", "unit 2", "--l2-vars")
    assert run("mdm", "build", l1, l2, "--id", "id", "--l2-vars", "v", "-o", out).exit_code == 0


@pytest.mark.parametrize("content", ["", "id,x,y\n"])
def test_empty_or_header_only(pair, content):
    l1, l2, out = pair
    l1.write_text(content)
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "l1.csv")


def test_ragged_rows(pair):
    l1, l2, out = pair
    l1.write_text("id,x,y\n1,1,2\n1,2\n2,3,5\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "l1.csv", "line 3", "fields")
    l1.write_text("id,x,y\n1,1,2\n1,2,3,4\n")
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", out), "l1.csv", "line 3")


def test_output_onto_an_input_is_refused(pair):
    l1, l2, out = pair
    before = l1.read_bytes()
    _assert_user_error(run("mdm", "build", l1, l2, "--id", "id", "-o", l1), "input")
    assert l1.read_bytes() == before


def test_failed_build_leaves_no_partial_archive(pair):
    l1, l2, out = pair
    out.write_bytes(b"old archive")
    l1.write_text("id,x,y\n1,1,2\n1,2,3\n2,bad,5\n")
    assert run("mdm", "build", l1, l2, "--id", "id", "-o", out).exit_code == 1
    assert out.read_bytes() == b"old archive"
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_quiet_build_prints_nothing(pair):
    l1, l2, out = pair
    l2.write_text("id,w\n1,0\n2,1\n3,5\n")
    proc = hlmcli("mdm", "build", l1, l2, "--id", "id", "-o", out, "--quiet")
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""


# ---------------------------------------------------------------- format 2 archives are still read

def test_format_2_archives_load_as_the_one_archive_type():
    """Archives written by the previous format (2: a two-level header of its own; the three-level one)
    load with the same names, ids, links and values as a build of their sources today."""
    from hlmcli.io.archive import BuildOptions, build_from_files, load_archive
    from hlmcli.io.archive_levels import BuildOptions3, build_from_files3

    T3, V2 = DATA / "three_level", DATA / "archive_v2"
    cases = [(V2 / "pastes2_format2.mdm", 2, build_from_files(T3 / "pastes_l1.csv", T3 / "pastes_l2.csv",
                                                             BuildOptions("sample", "SAMPLE", keep1=("STRENGTH",)))),
             (V2 / "pastes3_format2.mdm", 3, build_from_files3([T3 / f"pastes_l{k}.csv" for k in (1, 2, 3)],
                                                               BuildOptions3("SAMPLE", "BATCH")))]
    for path, K, built in cases:
        old = load_archive(path, K)
        assert old.n_levels == K and old.id_names == built.id_names and old.level1_id == built.level1_id
        for a, b in zip(old.levels, built.levels):
            assert a.names == b.names and a.ids == b.ids
            np.testing.assert_array_equal(a.values, b.values)
            if a.offsets is not None:
                np.testing.assert_array_equal(a.offsets, b.offsets)
        assert [s.sha256 for s in old.sources] == [s.sha256 for s in built.sources]
    assert load_archive(V2 / "pastes2_format2.mdm").unit_ids == [str(k) for k in range(1, 31)]


def test_mdm_info_prints_the_format_of_the_file_it_read(tmp_path):
    """A format-2 archive is read, not rewritten: `mdm info` must say 2 (the file's prefix), and 3 for one
    built today; a copy of the file is used so the archive under tests/data is left alone."""
    from hlmcli.io.archive import FORMAT_VERSION

    assert FORMAT_VERSION == 3
    old = tmp_path / "pastes3_format2.mdm"
    shutil.copyfile(DATA / "archive_v2" / "pastes3_format2.mdm", old)
    before = old.read_bytes()
    info = json.loads(hlmcli("mdm", "info", old, "--format", "json", check=True).stdout)
    assert info["format_version"] == 2 and info["levels"] == 3 and old.read_bytes() == before
    assert load_archive(DATA / "archive_v2" / "pastes2_format2.mdm").format_version == 2


def test_one_file_for_both_levels_with_two_id_columns_keeps_ids_as_text(tmp_path):
    """--id1 A --id2 B on one file: the level-2 id is text as it would be from its own file, so ids with
    leading zeros match (the file used to be read with only A as text, B became 7 and no record matched)."""
    f = tmp_path / "both.csv"
    f.write_text("A,B,Y\n007,007,1\n007,007,2\n008,008,3\n")
    out = tmp_path / "both.mdm"
    r = run("mdm", "build", f, f, "--id1", "A", "--id2", "B", "-o", out)
    assert r.exit_code == 0, r.output
    archive = load_archive(out)
    assert archive.unit_ids == ["007", "008"] and archive.n_level1 == 3 and list(archive.unit_sizes) == [2, 1]


def test_a_one_file_fit_parses_the_archive_header_once(hsb_archive, tmp_path, monkeypatch):
    """A fit from an archive asks what the file is (cross-classified? how many levels?) before loading it:
    the JSON header (every unit's id) is parsed once for all of them and the load."""
    import hlmcli.io.archive as archive_module

    parses = []

    class CountingJson:
        @staticmethod
        def loads(text, *args, **kwargs):
            parses.append(len(text))
            return json.loads(text, *args, **kwargs)

    path = tmp_path / "a.mdm"
    shutil.copy(hsb_archive, path)
    monkeypatch.setattr(archive_module, "json", CountingJson)
    r = run("fit", path, "-1", "MATHACH = b0 + b1*NOSUCH + r", "-2", "b0 = g00 + u0")
    assert r.exit_code == 1 and "NOSUCH" in r.output, r.output  # after the load, before any fitting
    assert len(parses) == 1, parses


def test_a_header_read_before_the_load_is_not_reused_for_a_replaced_file(hsb_archive, popular_archive, tmp_path):
    from hlmcli.io.archive import peek_header

    path = tmp_path / "a.mdm"
    shutil.copy(hsb_archive, path)
    assert "MATHACH" in peek_header(path)["level1_names"]
    shutil.copy(popular_archive, tmp_path / "b.mdm")
    os.replace(tmp_path / "b.mdm", path)
    assert "popular" in load_archive(path).level1_names


@pytest.mark.parametrize("cut", ["in the header", "in the arrays"])
def test_a_truncated_archive_is_one_line_before_it_is_used(hsb_archive, tmp_path, cut):
    """An archive cut short (a copy, a full disk) is refused in one line, exit 1, by its size against the
    header's; no signal from reading past the end of the mapped file."""
    from hlmcli.io.archive import PREFIX

    whole = hsb_archive.read_bytes()
    header_len = PREFIX.unpack_from(whole)[3]
    size, described = ((100, f"at least {PREFIX.size + header_len}") if cut == "in the header" else
                       (len(whole) - 4000, str(len(whole))))
    path = tmp_path / "cut.mdm"
    path.write_bytes(whole[:size])
    r = run("fit", path, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0")
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"cut.mdm: the archive is truncated: the file has {size} bytes, its header describes {described}" in r.output
