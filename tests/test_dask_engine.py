"""--engine dask on a real LocalCluster (2 worker processes on the loopback interface): the fit
equals the in-memory fit to 1e-10 relative on the public references, with the level-1 records
shuffled over Parquet partitions (and CSV files) so that every unit spans partitions."""

from __future__ import annotations

import pytest
from engine_cases import CASES, differences, fit_json, run

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import pandas as pd  # noqa: E402

DASK_CASES = ["hsb_m1", "hsb_m2", "hsb_m4", "hsb_ses_grand", "hsb_mean_of_ses", "popular2", "pop_cor_minus1", "sim_cor"]


@pytest.fixture(scope="module")
def cluster():
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as c:
        yield c


def split(data, tmp, kind: str, parts: int = 4):
    """The level-1 file shuffled into `parts` files (each unit in several), and the level-2 file
    (one file for both levels is split into a level-1 and a level-2 file first)."""
    level1, level2, _, idname = data
    frame = pd.read_csv(level1, dtype={idname: str})
    if level1 == level2:
        l2 = frame.drop_duplicates(idname)[[idname, "W"]]
        level2 = tmp / "level2.csv"
        l2.to_csv(level2, index=False)
    shuffled = frame.sample(frac=1.0, random_state=7)
    folder = tmp / f"l1_{kind}"
    folder.mkdir()
    for k in range(parts):
        part = shuffled.iloc[k::parts]
        if kind == "parquet":
            part.to_parquet(folder / f"part{k}.parquet", index=False)
        else:
            part.to_csv(folder / f"part{k}.csv", index=False)
    source = folder if kind == "parquet" else str(folder / "*.csv")
    return [source, level2, "--id", idname]


@pytest.mark.parametrize("name", DASK_CASES)
def test_dask_equals_memory(cluster, tmp_path, name):
    data, eqs = CASES[name]
    memory = fit_json(data, eqs)
    dask_fit = fit_json(split(data, tmp_path, "parquet"), eqs, "--engine", "dask",
                        "--scheduler", cluster.scheduler_address)
    assert dask_fit["certificate"]["certified"] == memory["certificate"]["certified"]
    assert differences(memory, dask_fit) == []


def test_dask_csv_glob_ml(cluster, tmp_path):
    data, eqs = CASES["hsb_m4"]
    memory = fit_json(data, eqs, "--ml")
    dask_fit = fit_json(split(data, tmp_path, "csv", parts=3), eqs, "--engine", "dask", "--ml",
                        "--scheduler", cluster.scheduler_address)
    assert differences(memory, dask_fit) == []


def test_dask_bad_scheduler_is_one_line(tmp_path):
    data, eqs = CASES["hsb_m1"]
    rc, msg = run("fit", *split(data, tmp_path, "parquet"), *eqs, "--engine", "dask", "--scheduler", "tcp://127.0.0.1:9",
                  "--timeout", "2")
    assert rc == 1 and msg.count("\n") == 1 and "nothing listens there" in msg


def test_dask_default_local_cluster(tmp_path):
    """Without --scheduler the command starts (and closes) its own LocalCluster."""
    data, eqs = CASES["hsb_m3"]
    assert differences(fit_json(data, eqs), fit_json(split(data, tmp_path, "parquet", parts=2), eqs, "--engine", "dask")) == []


def test_dask_text_in_a_number_column_is_one_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.csv").write_text("ID,MATHACH,SES\n1224,abc,0.1\n1224,3,0.2\n")
    rc, msg = run("fit", str(folder / "*.csv"), CASES["hsb_m1"][0][1], "--id", "ID", "--engine", "dask",
                  "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0")
    assert rc == 1 and msg.count("\n") == 1 and "'abc'" in msg


def test_dask_three_and_four_levels_equal_memory(cluster, tmp_path):
    """Three and four levels: the level-1 records shuffled over Parquet partitions (every level-2 unit
    in several), per-level-2-unit moments merged by the tree reduction; the upper files read whole."""
    from test_engines_levels import TINY4_MODEL, TINY_IDS, TINY_MODEL, _cli_model, _tiny

    for four, model, ids in ((False, TINY_MODEL, TINY_IDS), (True, TINY4_MODEL, [*TINY_IDS, "--id4", "H"])):
        where = tmp_path / ("four" if four else "three")
        where.mkdir()
        files = _tiny(where, four=four)
        frame = pd.read_csv(files[0], dtype={"C": str})
        folder = where / "l1"
        folder.mkdir()
        for k in range(3):
            frame.iloc[k::3].to_parquet(folder / f"part{k}.parquet", index=False)
        memory = fit_json([*files, *ids], _cli_model(model))
        dask_fit = fit_json([folder, *files[1:], *ids], _cli_model(model), "--engine", "dask",
                            "--scheduler", cluster.scheduler_address)
        assert dask_fit["certificate"]["certified"] and memory["n_deleted"] == dask_fit["n_deleted"] == 2
        assert differences(memory, dask_fit) == []


def test_partition_links_spell_ids_as_the_memory_reader_in_order_of_first_appearance():
    """One partition's (level-2, level-3) id pairs, cheap and without a cluster: integral floats as integers,
    text stripped, each pair once, in record order; a missing id refused naming its column."""
    from hlmcli.data.dask_engine import partition_links
    from hlmcli.errors import DataError

    part = pd.DataFrame({"C": [3.0, 1.0, 3.0, 1.0, 2.0], "S": [" b", "a ", " b", "c", "a"]})
    assert partition_links(part, "C", "S") == [("3", "b"), ("1", "a"), ("1", "c"), ("2", "a")]
    with pytest.raises(DataError, match="column S: a unit id is missing"):
        partition_links(part.assign(S=[None, "a", "b", "c", "a"]), "C", "S")


@pytest.mark.slow  # a Dask fit (seconds); the same link by stream, through the same code, runs by default
def test_dask_takes_the_level3_link_from_the_level1_file_as_memory(cluster, tmp_path):
    """A level-2 file without the level-3 id: --engine dask links each level-2 unit through the level-1
    records' two id columns (over Parquet partitions, each unit in several), as the memory engine does;
    the same fit, and the same refusal of a level-2 unit under two level-3 units."""
    from test_engines_levels import TINY_IDS, TINY_MODEL, _cli_model, _tiny

    files = _tiny(tmp_path)
    l1 = pd.read_csv(files[0], dtype={"C": str})
    l1["S"] = "s" + l1["C"].str[1:3]
    with_link = tmp_path / "l1_link.csv"
    l1.to_csv(with_link, index=False)
    no_link = tmp_path / "l2_no_link.csv"
    pd.read_csv(files[1]).drop(columns=["S"]).to_csv(no_link, index=False)
    folder = tmp_path / "l1"
    folder.mkdir()
    for k in range(3):
        l1.iloc[k::3].to_parquet(folder / f"part{k}.parquet", index=False)
    memory = fit_json([with_link, no_link, files[2], *TINY_IDS], _cli_model(TINY_MODEL))
    dask_fit = fit_json([folder, no_link, files[2], *TINY_IDS], _cli_model(TINY_MODEL), "--engine", "dask",
                        "--scheduler", cluster.scheduler_address)
    assert dask_fit["certificate"]["certified"] and differences(memory, dask_fit) == []
    l1.loc[l1.index[0], "S"] = "s99"  # a level-2 unit under two level-3 units
    (folder / "part0.parquet").unlink()
    l1.iloc[0::3].to_parquet(folder / "part0.parquet", index=False)
    rc, msg = run("fit", folder, no_link, files[2], *TINY_IDS, *_cli_model(TINY_MODEL), "--engine", "dask",
                  "--scheduler", cluster.scheduler_address)
    assert rc == 1 and msg.count("\n") == 1 and "appears under two level-3 units" in msg, msg


@pytest.mark.slow  # the same count by stream runs by default (test_engines_levels.py, unmatched)
def test_dask_three_levels_drop_unmatched_counts_deletions_as_memory(cluster, tmp_path):
    """--drop-unmatched: a record missing Y in a level-2 unit the level-2 file lacks is dropped with its unit,
    so it is not among the records deleted for missing values (the memory engine drops it while building)."""
    from test_engines_levels import TINY_IDS, TINY_MODEL, _cli_model, _tiny

    files = _tiny(tmp_path, unmatched=True)
    frame = pd.read_csv(files[0], dtype={"C": str})
    folder = tmp_path / "l1"
    folder.mkdir()
    for k in range(2):
        frame.iloc[k::2].to_parquet(folder / f"part{k}.parquet", index=False)
    memory = fit_json([*files, *TINY_IDS], _cli_model(TINY_MODEL), "--drop-unmatched")
    dask_fit = fit_json([folder, *files[1:], *TINY_IDS], _cli_model(TINY_MODEL), "--engine", "dask", "--drop-unmatched",
                        "--scheduler", cluster.scheduler_address)
    assert memory["n_deleted"] == dask_fit["n_deleted"] == 2 and differences(memory, dask_fit) == []
