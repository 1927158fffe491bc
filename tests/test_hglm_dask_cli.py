"""`hlmcli fit --engine dask` for a two-level HGLM by PQL, Laplace or AGQ: the records read by Dask, formed into
design rows as the stream path forms them, shuffled once into partitions of whole units and persisted
(analysis/hglm_dask.py). The fit must equal the in-memory fit to 1e-8 (deviance, γ, τ, SEs); the
in-memory fits are held against glmer and glmmTMB by test_hglm.py (contra: also test_hglm_stream_cli.py's
glmer reference). The fast tests run the same partitions on Dask's synchronous scheduler in this process;
the slow ones run the command as a user types it on a LocalCluster."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

H = DATA / "hglm"


def split_shuffled(path, tmp, parts: int = 3, kind: str = "csv", bad=None):
    """The level-1 file's records shuffled into `parts` files, so that every unit spans files (and
    partitions); `bad`: (record, column, value) written into the original file's record first.
    Returns the Dask path and the shuffled frame."""
    frame = pd.read_csv(path)
    if bad is not None:
        frame.loc[bad[0], bad[1]] = bad[2]
    shuffled = frame.sample(frac=1.0, random_state=3)
    folder = tmp / f"l1_{kind}"
    folder.mkdir()
    for k in range(parts):
        part = shuffled.iloc[k::parts]
        if kind == "parquet":
            part.to_parquet(folder / f"part{k}.parquet", index=False)
        else:
            part.to_csv(folder / f"part{k}.csv", index=False)
    return (str(folder) if kind == "parquet" else str(folder / "*.csv")), shuffled


def same_fit(got: dict, want: dict, rel: float = 1e-8) -> None:
    if want["deviance"] is not None:
        assert got["certificate"]["certified"] and want["certificate"]["certified"]
    assert got["n_level1"] == want["n_level1"] and got["n_level2"] == want["n_level2"]
    if want["deviance"] is None:  # PQL: no deviance; its fixed-point check instead
        assert got["deviance"] is None and got["fixed_point"]["passed"] and want["fixed_point"]["passed"]
    else:
        assert got["deviance"] == pytest.approx(want["deviance"], rel=rel)
    for a, b in zip(got["fixed_effects"], want["fixed_effects"], strict=True):
        assert a["gamma"] == b["gamma"]
        for key in ("estimate", "se", "robust_se"):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12), (a["gamma"], key)
    assert np.ravel(got["tau"]) == pytest.approx(np.ravel(want["tau"]), rel=rel, abs=1e-12)


CBPP = dict(level1_eq="INCID = b0 + b1*P2", level2_eqs=["b0 = g00 + u0"], family="binomial", trials="SIZE",
            estimation="laplace")


def stream_summary(l1, l2, id_name: str, kw: dict):
    """The model of `kw` (fit options with level1_eq, level2_eqs) over the records of one level-1 file, by the
    stream engine's first pass: (spec, summary, frame)."""
    from hlmcli.analysis.engines import summary_for_fit
    from hlmcli.api import fit_options, model_spec

    kw = dict(kw)
    eq1, eqs2 = kw.pop("level1_eq"), kw.pop("level2_eqs")
    options = fit_options(engine="stream", **kw)
    spec, summary, frame, _ = summary_for_fit(
        (str(l1), str(l2)), "stream", None, (id_name, id_name), False, "analysis", None, None,
        lambda fr: model_spec(fr, eq1, eqs2, None, options), {}, print)
    return spec, summary, frame


def synchronous_fit(l1, l2, id_name: str, kw: dict, whole=None):
    """analyse_hglm_dask's steps with the synchronous scheduler: the first pass by the stream engine over
    `whole` (the records of l1's files in one file; the same moments as Dask's: test_dask_engine.py), the
    records of `l1` through unit_partitions and DaskBlocks, the fit as the command line ends it."""
    import dask

    from hlmcli.analysis.hglm_dask import check_sizes, unit_partitions
    from hlmcli.analysis.hglm_stream import blocked_design, fit_blocks
    from hlmcli.data.hglm_sources import DaskBlocks
    from hlmcli.results import Results

    spec, summary, frame = stream_summary(whole or l1, l2, id_name, kw)
    design, fam, B, rnd = blocked_design(spec, summary)
    with dask.config.set(scheduler="synchronous"):
        ddf = unit_partitions(spec, design, summary, str(l1), id_name, fam)
        source = DaskBlocks(ddf, fam, B, rnd, scheduler="synchronous")
        assert source.J == design.n_units
        parts = len(source.parts)
        check_sizes(source, design, l1)
        analysis = fit_blocks(spec, design, source)
    return Results(analysis, frame, {"warn": print, "source_files": None}).to_dict(), parts


def test_partitions_hold_the_stream_paths_spilled_records(tmp_path):
    """Every herd spread over three CSV files, partitions of 4 herds after the shuffle: the partitions
    hold, unit by unit and in file order, exactly the rows the stream path spills (whose fit equals the
    in-memory fit: test_hglm_stream_cli.py), and every partition holds whole units."""
    import dask
    import pyarrow.parquet as pq

    from hlmcli.analysis.hglm_dask import unit_partitions
    from hlmcli.analysis.hglm_stream import blocked_design, spill_records
    from hlmcli.data.streaming import file_columns

    source, shuffled = split_shuffled(H / "cbpp_l1.csv", tmp_path)
    in_file_order = pd.concat([shuffled.iloc[k::3] for k in range(3)])  # the files one after another
    in_file_order.to_csv(tmp_path / "whole.csv", index=False)
    spec, summary, _ = stream_summary(tmp_path / "whole.csv", H / "cbpp_l2.csv", "HERD", CBPP)
    design, fam, _, _ = blocked_design(spec, summary)
    spill_records(spec, design, summary, file_columns(tmp_path / "whole.csv"), "HERD", fam, tmp_path / "s.parquet",
                  tmp_path)
    spilled = pq.read_table(tmp_path / "s.parquet").to_pandas()
    with dask.config.set(scheduler="synchronous"):
        from hlmcli.data import hglm_sources

        ddf = unit_partitions(spec, design, summary, source, "HERD", fam)
        ddf = hglm_sources.partition_by_unit(ddf, 4, design.n_units)  # again, into 4 partitions
        parts = [p.compute() for p in ddf.to_delayed()]
    assert len(parts) == 4
    for a, b in zip(parts, parts[1:]):
        assert a["unit"].max() < b["unit"].min()
    got = pd.concat(parts, ignore_index=True)
    assert list(got.columns) == ["unit", "l0", "l1", "y", "trials"]
    assert np.array_equal(got["unit"].to_numpy(), spilled["unit"].to_numpy())
    for c in ("l0", "l1", "y", "trials"):
        assert np.array_equal(got[c].to_numpy(), spilled[c].to_numpy()), c
    assert got["unit"].to_numpy() == pytest.approx(np.repeat(np.arange(design.n_units), design.sizes))


@pytest.mark.slow
def test_a_pass_over_dask_partitions_by_unit_equals_the_whole_data(tmp_path):
    """test_hglm_blocks.py's data (30 units, random intercept and slope) shuffled over 3 partitions, then
    partitioned by unit (DaskBlocks on the synchronous scheduler): one pass of each kind equals the whole
    data. Here, beside the other Dask tests, so that the default run imports dask.dataframe once."""
    from test_hglm_blocks import dask_source, make, one_pass_equal

    data = make("bernoulli", 30, 2, 3)
    one_pass_equal(dask_source(data, tmp_path), data)


def test_records_spread_over_files_give_the_in_memory_fit(tmp_path, monkeypatch):
    """Binomial with trials (cbpp), every herd spread over three CSV files, and partitions of 4 herds
    after the shuffle: the blocked fit over the Dask partitions equals the in-memory fit to 1e-8."""
    import hlmcli as api
    from hlmcli.data import hglm_sources

    monkeypatch.setattr(hglm_sources, "UNITS_PER_BLOCK", 4)
    monkeypatch.setattr(hglm_sources.partition_by_unit, "__defaults__", (4, None))
    source, _ = split_shuffled(H / "cbpp_l1.csv", tmp_path)
    got, parts = synchronous_fit(source, H / "cbpp_l2.csv", "HERD", CBPP, whole=H / "cbpp_l1.csv")
    assert parts == 4  # 15 herds, 4 a partition
    memory = api.fit(H / "cbpp_l1.csv", H / "cbpp_l2.csv", id="HERD", **CBPP).to_dict()
    same_fit(got, memory)


def test_a_bad_trials_value_is_named_by_file_column_and_row(tmp_path):
    """Trials below the outcome in one record: the file it went to, the column and its row there."""
    source, shuffled = split_shuffled(H / "cbpp_l1.csv", tmp_path, bad=(20, "SIZE", 0))
    k = shuffled.index.get_loc(20)  # its place in the shuffled records; files take every third record
    from hlmcli.errors import DataError

    shuffled.to_csv(tmp_path / "whole.csv", index=False)
    with pytest.raises(DataError) as err:
        synchronous_fit(source, H / "cbpp_l2.csv", "HERD", CBPP, whole=tmp_path / "whole.csv")
    text = str(err.value)
    assert text.startswith(f"part{k % 3}.csv, column SIZE, row {k // 3 + 1}: "), text
    assert "\n" not in text


CONTRA = [H / "contra_l2.csv", "--id", "DISTRICT", "-1", "USE = b0 + b1*URBAN + b2*AGE", "-2", "b0 = g00 + u0",
          "-2", "b1 = g10 + u1", "--family", "bernoulli", "--tau", "diagonal", "--format", "json"]


@pytest.fixture(scope="module")
def cluster():
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as c:
        yield c


@pytest.mark.slow
@pytest.mark.parametrize("estimation", ["laplace", "agq", "pql"])
def test_dask_command_equals_the_in_memory_fit(cluster, tmp_path, estimation):
    """As a user types it: contra (Bernoulli, random intercept and URBAN slope), the records shuffled over
    Parquet files, on a LocalCluster; AGQ with its own model (one random intercept); PQL (restricted,
    the default) with its population-average table too."""
    source, _ = split_shuffled(H / "contra_l1.csv", tmp_path, parts=4, kind="parquet")
    args = CONTRA if estimation != "agq" else [a if a != "b1 = g10 + u1" else "b1 = g10" for a in CONTRA]
    memory = hlmcli("fit", H / "contra_l1.csv", *args, "--estimation", estimation)
    assert memory.returncode == 0, memory.stderr
    proc = hlmcli("fit", source, *args, "--estimation", estimation, "--engine", "dask",
                  "--scheduler", cluster.scheduler_address)
    assert proc.returncode == 0, proc.stderr
    got, want = json.loads(proc.stdout), json.loads(memory.stdout)
    same_fit(got, want)
    if estimation == "pql":
        for a, b in zip(got["population_average"]["fixed_effects"], want["population_average"]["fixed_effects"],
                        strict=True):
            assert a["estimate"] == pytest.approx(b["estimate"], rel=1e-8)
            assert a["robust_se"] == pytest.approx(b["robust_se"], rel=1e-8)


@pytest.mark.slow
def test_dask_command_names_a_bad_outcome_by_file_column_and_row(tmp_path):
    """On the command's own LocalCluster: one line, exit 1."""
    source, shuffled = split_shuffled(H / "contra_l1.csv", tmp_path, parts=2, bad=(1500, "USE", 2))
    k = shuffled.index.get_loc(1500)
    proc = hlmcli("fit", source, H / "contra_l2.csv", "--id", "DISTRICT", "-1", "USE = b0 + b1*URBAN",
                  "-2", "b0 = g00 + u0", "--family", "bernoulli", "--estimation", "laplace", "--engine", "dask")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"hlmcli: error: part{k % 2}.csv, column USE, row {k // 2 + 1}: the value 2 is "
                                   "not 0 or 1, as --family bernoulli needs")


@pytest.mark.slow
def test_api_dask_equals_the_in_memory_fit(tmp_path):
    """hlmcli.fit(engine="dask") takes the command line's path (on its own LocalCluster): cbpp (binomial with
    trials, Laplace) with the records shuffled over Parquet files, against the in-memory API fit."""
    import hlmcli as api

    source, _ = split_shuffled(H / "cbpp_l1.csv", tmp_path, parts=3, kind="parquet")
    memory = api.fit(H / "cbpp_l1.csv", H / "cbpp_l2.csv", id="HERD", **CBPP).to_dict()
    got = api.fit(source, H / "cbpp_l2.csv", id="HERD", engine="dask", **CBPP).to_dict()
    same_fit(got, memory)


@pytest.fixture(scope="module")
def in_process():
    """A distributed Client in this process (threads, no worker processes) that the fit's session takes in
    place of the LocalCluster it would start: the session's passes, deadline and progress as on a cluster."""
    import logging

    from distributed import Client

    client = Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                    silence_logs=logging.ERROR)
    yield client
    client.close()


def _cbpp_design(tmp_path, bad=()):
    """cbpp's records over three files (bad: (record, column, value) written first), the summary by the
    stream engine over the same records in one file."""
    frame = pd.read_csv(H / "cbpp_l1.csv")
    for record, column, value in bad:
        frame.loc[record, column] = value
    folder = tmp_path / "l1"
    folder.mkdir(parents=True)
    for k in range(3):
        frame.iloc[k::3].to_csv(folder / f"part{k}.csv", index=False)
    frame.to_csv(tmp_path / "whole.csv", index=False)
    spec, summary, _ = stream_summary(tmp_path / "whole.csv", H / "cbpp_l2.csv", "HERD", CBPP)
    return spec, summary, str(folder / "*.csv")


def _use(client, monkeypatch):
    from hlmcli.data import dask_engine

    monkeypatch.setattr(dask_engine, "_open_client", lambda where: (client, None))
    monkeypatch.setattr(dask_engine, "_close", lambda c: None)


def test_the_dask_fit_keeps_to_the_deadline_and_names_the_first_bad_value_in_file_order(in_process, tmp_path,
                                                                                          monkeypatch):
    """--deadline counts from the command's start (Scheduler.started) over the HGLM's own passes: past it,
    the linear path's line. Bad values in two files: the one reported is the first in file order (part0's,
    though its record comes later in the original file), every run, from one pass over the records."""
    import time

    from hlmcli.analysis import hglm_dask
    from hlmcli.data.dask_engine import Scheduler
    from hlmcli.errors import DataError

    _use(in_process, monkeypatch)
    spec, summary, path = _cbpp_design(tmp_path / "late")
    with pytest.raises(DataError) as err:
        hglm_dask.analyse_hglm_dask(spec, summary, path, "HERD", Scheduler(deadline=1.0, started=time.monotonic() - 2))
    assert str(err.value) == ("--deadline 1: the Dask computation did not finish in time; raise --deadline or add "
                              "workers")
    # record 31 goes to part1.csv (row 11), record 42 to part0.csv (row 15): part0 comes first in file order
    spec, summary, path = _cbpp_design(tmp_path / "bad", bad=[(31, "SIZE", 0), (42, "SIZE", 0)])
    calls = []
    records = hglm_dask._records

    def late_part0(*a):  # part0's worker finds its bad value last
        calls.append(a[8])
        if a[8].endswith("part0.csv"):
            time.sleep(0.3)
        return records(*a)

    monkeypatch.setattr(hglm_dask, "_records", late_part0)
    for _ in range(2):
        with pytest.raises(DataError) as err:
            hglm_dask.analyse_hglm_dask(spec, summary, path, "HERD", Scheduler())
        assert str(err.value).startswith("part0.csv, column SIZE, row 15: "), str(err.value)
    assert len(calls) == 2 * 3  # each file's one partition read once per run


def test_the_dask_fit_shows_progress_on_stderr(in_process, tmp_path, monkeypatch, capfd):
    """--progress (on a terminal, or HLMCLI_PROGRESS=1): distributed's bar on stderr for the passes that
    read the records, as the linear path shows it; stdout, which carries the tables, stays empty. Here
    the records' pass ends on a bad value (the whole fit with progress: the slow test below)."""
    from hlmcli.analysis import hglm_dask
    from hlmcli.data.dask_engine import Scheduler
    from hlmcli.errors import DataError

    _use(in_process, monkeypatch)
    spec, summary, path = _cbpp_design(tmp_path, bad=[(42, "SIZE", 0)])
    capfd.readouterr()
    with pytest.raises(DataError, match="part0.csv, column SIZE, row 15"):
        hglm_dask.analyse_hglm_dask(spec, summary, path, "HERD", Scheduler(), progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err.count("100% Completed") == 2, err  # the ids' pass, the records' pass


@pytest.mark.slow
def test_the_whole_dask_fit_with_progress(in_process, tmp_path, monkeypatch, capfd):
    from hlmcli.analysis import hglm_dask
    from hlmcli.data.dask_engine import Scheduler

    _use(in_process, monkeypatch)
    spec, summary, path = _cbpp_design(tmp_path)
    capfd.readouterr()
    analysis = hglm_dask.analyse_hglm_dask(spec, summary, path, "HERD", Scheduler(), progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err.count("Completed") >= 2, err
    assert analysis.converged and analysis.ml.certificate.certified
