"""The one merge of any number of levels (io/merge.py): four levels get three levels' generality
(shared files, the link up from a lower file, higher ids in lower files checked), and every level
above the first refuses an infinite value whatever --missing says. The expected archive of each
four-level variant is the one built from one file per level (whose bytes test_four_level_cli.py pins)."""

import csv

import numpy as np
import pytest

from conftest import hlmcli
from hlmcli.errors import DataError
from hlmcli.io.archive_levels import BuildOptionsLevels, build_from_paths

from pathlib import Path

FOUR = Path(__file__).parent / "data" / "four_level"
IDS = ("PATIENTID", "WARDID", "HOSPID")
OPTIONS = BuildOptionsLevels(IDS, (None,) * 4)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture(scope="module")
def separate():
    return build_from_paths([FOUR / f"hospitals_l{k}.csv" for k in range(1, 5)], OPTIONS)


def _same_levels(a, b):
    assert a.id_kind == b.id_kind and a.id_names == b.id_names and a.notes == b.notes
    for la, lb in zip(a.levels, b.levels, strict=True):
        assert la.names == lb.names and la.ids == lb.ids
        np.testing.assert_array_equal(la.values, lb.values)
        if la.offsets is not None:
            np.testing.assert_array_equal(la.offsets, lb.offsets)


def _flat(tmp_path):
    """Every record with its patient's, ward's and hospital's ids and variables: one file for four levels."""
    l1, l2, l3, l4 = (_rows(FOUR / f"hospitals_l{k}.csv") for k in range(1, 5))
    p2 = {r[0]: r for r in l2[1:]}
    p3 = {r[0]: r for r in l3[1:]}
    p4 = {r[0]: r for r in l4[1:]}
    rows = [["PATIENTID", "WARDID", "HOSPID", "DOSE", "Y", "AGE", "STAFF", "TEACHING"]]
    for pid, dose, y in l1[1:]:
        ward = p2[pid][1]
        hosp = p3[ward][1]
        rows.append([pid, ward, hosp, dose, y, p2[pid][2], p3[ward][2], p4[hosp][1]])
    return rows


def test_four_levels_from_one_shared_file(tmp_path, separate):
    one = _write(tmp_path / "all.csv", _flat(tmp_path))
    _same_levels(build_from_paths([one] * 4, OPTIONS), separate)


def test_four_levels_link_up_from_the_level1_file_and_higher_ids_checked(tmp_path, separate):
    l2 = [[r[0], r[2]] for r in _rows(FOUR / "hospitals_l2.csv")]  # no WARDID: the level-1 file links
    flat = _flat(tmp_path)
    l1 = [r[:3] + r[3:5] for r in flat]  # PATIENTID, WARDID, HOSPID, DOSE, Y
    paths = [_write(tmp_path / "l1.csv", l1), _write(tmp_path / "l2.csv", l2),
             FOUR / "hospitals_l3.csv", FOUR / "hospitals_l4.csv"]
    keeps = (("DOSE", "Y"), None, None, None)
    _same_levels(build_from_paths(paths, BuildOptionsLevels(IDS, keeps)), separate)
    # the hospital a record names must be its ward's: the first record says another one
    l1[1][2] = "999"
    _write(tmp_path / "l1.csv", l1)
    with pytest.raises(DataError, match=r"l1.csv: line 2: record of level-2 unit 1 says HOSPID 999, but "
                                        r"hospitals_l3.csv puts that unit's level-3 unit in 1; fix the ids so they agree"):
        build_from_paths(paths, BuildOptionsLevels(IDS, keeps))


def test_four_levels_unit_under_two_parents(tmp_path):
    """A level-2 row repeating a patient under another ward: refused as under two level-3 units (not as a
    repeated row); one command, as a user types it."""
    l2 = _rows(FOUR / "hospitals_l2.csv")
    l2.append(["1", "2", "50"])
    paths = [FOUR / "hospitals_l1.csv", _write(tmp_path / "l2.csv", l2), FOUR / "hospitals_l3.csv",
             FOUR / "hospitals_l4.csv"]
    r = hlmcli("mdm", "build", *paths, "--id2", "PATIENTID", "--id3", "WARDID", "--id4", "HOSPID",
               "-o", tmp_path / "x.mdm")
    assert r.returncode == 1 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"hlmcli: error: {paths[1]}: level-2 unit 1 (PATIENTID) appears under two level-3 units, 1 and 2 (WARDID); "
        "a level-2 unit belongs to one level-3 unit, so give level-2 units ids that are unique across level-3 units"]
    assert not (tmp_path / "x.mdm").exists()


def test_two_levels_infinite_level2_value_refused_under_missing_now(tmp_path):
    """--missing now deletes level-1 records; an infinite level-2 value is refused as infinite (it was
    turned into a missing value and then refused as missing)."""
    l1 = _write(tmp_path / "l1.csv", [["id", "y"], ["1", "1.5"], ["1", "2"], ["2", "3"], ["2", "4"]])
    l2 = _write(tmp_path / "l2.csv", [["id", "w"], ["1", "0.5"], ["2", "inf"]])
    r = hlmcli("mdm", "build", l1, l2, "--id", "id", "--missing", "now", "-o", tmp_path / "x.mdm")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        f"hlmcli: error: {l2}: column w, line 3: the value is infinite (inf); fix it, or leave w out with --l2-vars "
        "if the model does not use it (HLM needs complete level-2 data, so --missing now does not apply)"]


def test_three_levels_shared_file_infinite_level2_value_refused(tmp_path):
    """A level-2 variable of a shared file, infinite in every record of a unit, is constant within it:
    it was taken into the archive as an infinite level-2 value; it is refused as infinite."""
    from hlmcli.io.archive_levels import BuildOptions3

    rows = [["C", "S", "Y", "V2"], ["1", "10", "1.0", "inf"], ["1", "10", "2.0", "inf"], ["2", "10", "1.5", "0.5"],
            ["2", "10", "2.5", "0.5"], ["3", "20", "1.0", "0.1"], ["3", "20", "3.0", "0.1"]]
    one = _write(tmp_path / "one.csv", rows)
    with pytest.raises(DataError, match=r"one.csv: column V2, line 2: the value is infinite \(inf\) and 1 more; fix it, "
                                        r"or leave V2 out with --l2-vars"):
        build_from_paths([one] * 3, BuildOptions3("C", "S"))
