"""Readers: every format through pyreadstat or pandas, missing-value codes, delimiters, encodings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyreadstat
import pytest

from hlmcli.errors import DataError
from hlmcli.io.readers import detect_format, numeric_column, read_table, unit_codes

from conftest import DATA, SAMPLE


@pytest.mark.parametrize("name,shape,first_cols", [
    ("ListingAgent.sas7bdat", (28, 2), ["PROPID", "AGENT"]),
    ("ListingSales.sas7bdat", (12, 3), ["PropertyID", "SalesPrice", "SaleDate"]),
    ("ProductSales.sas7bdat", (500, 11), ["CategoryName", "ProductName", "UnitPrice"]),
    ("hsb2.sas7bdat", (200, 11), ["id", "female", "race", "ses"]),
])
def test_real_sas_files_keep_their_column_names(name, shape, first_cols):
    table = read_table(DATA / name)
    assert table.format == "sas"
    assert table.data.shape == shape
    assert list(table.data.columns)[: len(first_cols)] == first_cols
    assert table.encoding  # SAS records its encoding; we report it


def test_spss_value_labels_and_encoding():
    table = read_table(SAMPLE / "popular2" / "popular2.sav")
    assert table.value_labels["sex"] == {"0": "boy", "1": "girl"}
    assert table.encoding == "WINDOWS-1252"


def test_spss_user_defined_missing_becomes_missing(tmp_path):
    path = tmp_path / "um.sav"
    df = pd.DataFrame({"id": [1.0, 1.0, 2.0], "x": [1.0, 99.0, 3.0]})
    pyreadstat.write_sav(df, str(path), missing_ranges={"x": [99.0]})
    x = numeric_column(read_table(path), "x")
    assert np.isnan(x[1]) and x[0] == 1.0 and x[2] == 3.0


def test_stata_special_missing_becomes_missing(tmp_path):
    path = tmp_path / "sm.dta"
    df = pd.DataFrame({"id": [1.0, 2.0, 3.0], "x": [1.0, np.nan, 3.0]})
    pyreadstat.write_dta(df, str(path))
    table = read_table(path)
    assert table.format == "stata"
    assert np.isnan(numeric_column(table, "x")[1])


@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_csv_delimiter_is_sniffed(tmp_path, sep):
    path = tmp_path / "d.csv"
    path.write_text(sep.join(["id", "x", "y"]) + "\n" + "\n".join(sep.join(["1", "2.5", "3"]) for _ in range(5)) + "\n")
    table = read_table(path)
    assert list(table.data.columns) == ["id", "x", "y"]
    assert numeric_column(table, "x")[0] == 2.5


def test_csv_missing_codes_and_leading_zero_ids(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,x\n007,1\n007,.\n010,NA\n010,\n")
    table = read_table(path, string_columns=("id",))
    assert np.isnan(numeric_column(table, "x")[1:]).all()
    codes, names, kind = unit_codes(table, "id")
    assert names == ["007", "010"] and list(codes) == [0, 0, 1, 1] and kind == "string"


def test_non_utf8_csv_is_read_and_encoding_reported(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("id,caf\xe9\n1,2\n".encode("cp1252"))
    table = read_table(path)
    assert table.encoding == "cp1252"
    assert list(table.data.columns) == ["id", "café"]


def test_format_override_and_unknown_extension(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_text("id,x\n1,2\n")
    with pytest.raises(DataError, match="--format"):
        detect_format(path)
    assert read_table(path, fmt="csv").data.shape == (1, 2)


def test_non_numeric_value_names_file_column_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,x\n1,2\n1,abc\n")
    with pytest.raises(DataError, match=r"bad.csv: column x, line 3: 'abc' is not a number"):
        numeric_column(read_table(path), "x")


@pytest.mark.parametrize("header,words", [
    ("ID,X,X,Y", ["column 'X' is named twice", "columns 2 and 3"]),
    ("ID,X,Y, X ", ["column 'X' is named twice", "columns 2 and 4"]),
    ("ID,ses,Y,SES", ["'ses' and 'SES'", "differ only in case"]),
])
def test_duplicated_csv_header_is_refused_with_the_column_name(tmp_path, header, words):
    f = tmp_path / "dup.csv"
    f.write_text(header + "\n1,1,2,3\n1,2,3,4\n2,3,4,5\n")
    with pytest.raises(DataError) as err:
        read_table(f)
    assert all(w in str(err.value) for w in words) and "dup.csv" in str(err.value)


def test_duplicated_names_in_a_stata_file_differing_in_case_are_refused(tmp_path):
    f = tmp_path / "case.dta"
    pyreadstat.write_dta(pd.DataFrame({"ID": [1, 1, 2], "x": [1.0, 2.0, 3.0], "X": [4.0, 5.0, 6.0]}), str(f))
    with pytest.raises(DataError, match="'x' and 'X'.*differ only in case"):
        read_table(f)


def test_csv_header_over_64_kib_is_read_whole(tmp_path):
    """10,000 columns make a 90 KB header: it is parsed whole, not cut at 64 KiB into a false 'fields' error."""
    names = [f"VARIABLE{i:05d}" for i in range(10_000)]
    header = "ID," + ",".join(names)
    assert len(header) > 1 << 16
    rows = [f"{j // 2}," + ",".join(str((i + j) % 7) for i in range(10_000)) for j in range(6)]
    f = tmp_path / "wide.csv"
    f.write_text(header + "\n" + "\n".join(rows) + "\n")
    table = read_table(f)
    assert table.data.shape == (6, 10_001) and table.delimiter == ","
    assert list(table.data.columns[-2:]) == names[-2:]
    assert table.data[names[-1]].tolist() == [(9_999 + j) % 7 for j in range(6)]


def test_stream_engine_reads_a_long_header_and_refuses_duplicates(tmp_path):
    pytest.importorskip("pyarrow")
    from hlmcli.data.streaming import file_columns

    names = [f"VARIABLE{i:05d}" for i in range(10_000)]
    f = tmp_path / "wide.csv"
    f.write_text("ID," + ",".join(names) + "\n" + "1," + ",".join("0" for _ in names) + "\n")
    cols = file_columns(f)
    assert len(cols.names) == 10_001 and cols.names[-1] == names[-1]
    f.write_text("ID,X,x\n1,2,3\n")
    with pytest.raises(DataError, match="'X' and 'x'"):
        file_columns(f)
