"""The one statistics pass (hlmcli.engine.moments) and the streaming engine: equal to the in-memory engine
to 1e-10 relative on every public reference (engine_cases.py), exact algebra of the moments, and
the statistics archive of 'mdm build --engine stream'."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from engine_cases import CASES, HSB, differences, fit_json, run

from hlmcli.engine.moments import chunk_moments, cross_products, grand, keyed_chunk_moments, merge_keyed

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def memory_fits():
    return {(name, m): fit_json(data, eqs, *(["--ml"] if m == "ml" else [])) for name, (data, eqs) in CASES.items()
            for m in ("reml", "ml")}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_stream_equals_memory(memory_fits, name, method):
    data, eqs = CASES[name]
    streamed = fit_json(data, eqs, "--engine", "stream", *(["--ml"] if method == "ml" else []))
    assert streamed["certificate"]["certified"] == memory_fits[name, method]["certificate"]["certified"]
    assert differences(memory_fits[name, method], streamed) == []


def test_stream_text_output_is_the_same_tables(tmp_path):
    data, eqs = CASES["hsb_m4"]
    rc_a, text_a = run("fit", *data, *eqs)
    rc_b, text_b = run("fit", *data, *eqs, "--engine", "stream")
    assert rc_a == rc_b == 0
    assert text_a == text_b


def test_statistics_archive_serves_any_centering(tmp_path, memory_fits):
    out = tmp_path / "hsb.ssm"
    rc, msg = run("mdm", "build", *HSB, "--engine", "stream", "-o", out)
    assert rc == 0, msg
    for name in ("hsb_m1", "hsb_m4", "hsb_ses_grand", "hsb_mean_of_ses", "hsb_no_intercept"):
        _, eqs = CASES[name]
        assert differences(memory_fits[name, "reml"], fit_json([out], eqs)) == []


def test_statistics_archive_refuses_damage(tmp_path):
    out = tmp_path / "hsb.ssm"
    assert run("mdm", "build", *HSB, "--engine", "stream", "-o", out)[0] == 0
    raw = bytearray(out.read_bytes())
    raw[-3] ^= 1
    out.write_bytes(bytes(raw))
    rc, msg = run("fit", out, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0")
    assert rc == 1 and "damaged" in msg


def test_text_ids_kept_as_written_and_units_in_any_order(tmp_path):
    """Ids with leading zeros stay text; a unit's records scattered through the file, read in many chunks."""
    import hlmcli.data.streaming as streaming

    rng = np.random.default_rng(5)
    J, n = 40, 25
    ids = np.repeat([f"00{j}" for j in range(J)], n)
    x = rng.normal(size=J * n)
    y = 2 + x + np.repeat(rng.normal(size=J), n) + rng.normal(size=J * n)
    order = rng.permutation(J * n)
    l1 = tmp_path / "l1.csv"
    l1.write_text("sid,x,y\n" + "".join(f"{ids[i]},{float(x[i])!r},{float(y[i])!r}\n" for i in order))
    l2 = tmp_path / "l2.csv"
    l2.write_text("sid,w\n" + "".join(f"00{j},{j % 3}\n" for j in range(J)))
    eqs = ["-1", "y = b0 + b1*group(x) + r", "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + u1"]
    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 10  # many chunks
    try:
        streamed = fit_json([l1, l2, "--id", "sid"], eqs, "--engine", "stream", "--full-output")
    finally:
        streaming.CHUNK_BYTES = old
    memory = fit_json([l1, l2, "--id", "sid"], eqs, "--full-output")
    assert differences(memory, streamed) == []
    assert [u["unit"] for u in streamed["full_output"]["ols_units"][:2]] == ["000", "001"]


def test_refuses_what_needs_the_records(tmp_path):
    data, eqs = CASES["hsb_m1"]
    rc, msg = run("fit", *data, *eqs, "--engine", "stream", "--residuals-l1", tmp_path / "r.csv")
    assert rc == 2 and msg.count("\n") == 1 and "--engine memory" in msg  # an option the fit does not take
    # an HGLM is fitted by repeated passes over the records spilled by unit: the stream engine reads the
    # outcome and names the first value --family bernoulli cannot take (the first record's MATHACH, 5.876)
    rc, msg = run("fit", *data, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0", "--family", "bernoulli",
                  "--engine", "stream")
    assert rc == 1 and msg == ("hlmcli: error: hsb1.csv, column MATHACH, row 1: the value 5.876 is not 0 or 1, "
                               "as --family bernoulli needs\n")


# ---------------------------------------------------------------- the algebra of the moments

def test_chunk_moments_against_exact_fractions():
    """Large means (1e8) and a small spread: raw sums Σx², (Σx)²/n would lose about 16 digits;
    the centred co-moments agree with exact rational arithmetic to 1e-12."""
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 5, 300)
    x = 1e8 + rng.normal(size=300)
    y = -3e7 + 0.5 * x + rng.normal(size=300)
    m = chunk_moments([x, y], codes, 5)
    for j in range(5):
        xs = [Fraction(v) for v in x[codes == j]]
        ys = [Fraction(v) for v in y[codes == j]]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        cxy = sum((a - mx) * (b - my) for a, b in zip(xs, ys))
        cxx = sum((a - mx) ** 2 for a in xs)
        assert m.n[j] == len(xs)
        assert abs(m.mean[j, 0] - float(mx)) <= 1e-15 * abs(float(mx))
        assert abs(m.C[j, 0, 1] - float(cxy)) <= 1e-12 * abs(float(cxy))
        assert abs(m.C[j, 0, 0] - float(cxx)) <= 1e-12 * float(cxx)


def test_merging_parts_equals_one_pass():
    """A unit split over several partitions, merged in any order (Chan et al.), equals one pass."""
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 30, 2000)
    cols = [1e6 + rng.normal(size=2000), rng.normal(size=2000)]
    whole = keyed_chunk_moments(ids, cols)
    cuts = [0, 300, 301, 1200, 2000]
    parts = [keyed_chunk_moments(ids[a:b], [c[a:b] for c in cols]) for a, b in zip(cuts[:-1], cuts[1:])]
    for merged in (merge_keyed(parts), merge_keyed([merge_keyed(parts[2:]), merge_keyed(parts[:2])])):
        assert np.array_equal(merged.keys, whole.keys)
        np.testing.assert_allclose(merged.moments.n, whole.moments.n, rtol=0)
        np.testing.assert_allclose(merged.moments.mean, whole.moments.mean, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(merged.moments.C, whole.moments.C, rtol=1e-11, atol=1e-9)


def test_cross_products_of_centred_columns():
    rng = np.random.default_rng(6)
    codes = np.repeat(np.arange(4), [3, 5, 2, 7])
    x = 50 + rng.normal(size=17)
    m = chunk_moments([x], codes, 4)
    N, gmean, _ = grand(m)
    assert N == 17 and abs(gmean[0] - x.mean()) < 1e-13
    n, S = cross_products(m, np.array([gmean[0]]))
    for j in range(4):
        xc = x[codes == j] - gmean[0]
        L = np.column_stack([np.ones(xc.size), xc])
        np.testing.assert_allclose(S[j], L.T @ L, rtol=1e-12, atol=1e-12)


def test_run_time_deletion_as_in_memory(tmp_path):
    """Records with a missing value in a variable the model uses are deleted per model; a unit left
    with none counts as a unit deleted; statistics archives need --missing now."""
    rng = np.random.default_rng(8)
    J, n = 30, 12
    unit = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    z = rng.normal(size=J * n)
    y = 1 + 0.5 * x + np.repeat(rng.normal(size=J), n) + rng.normal(size=J * n)
    x[rng.choice(J * n, 25, replace=False)] = np.nan
    x[unit == 4] = np.nan  # unit 4 has no complete record for a model with x
    z[:7] = np.nan  # not used by the model: must not delete anything
    cell = lambda v: "" if np.isnan(v) else repr(float(v))  # noqa: E731
    l1 = tmp_path / "l1.csv"
    l1.write_text("id,x,z,y\n" + "".join(f"{u},{cell(a)},{cell(b)},{float(c)!r}\n" for u, a, b, c in zip(unit, x, z, y)))
    l2 = tmp_path / "l2.csv"
    l2.write_text("id,w\n" + "".join(f"{j},{j % 2}\n" for j in range(J)))
    eqs = ["-1", "y = b0 + b1*grand(x) + r", "-2", "b0 = g00 + g01*w + u0", "-2", "b1 = g10 + u1"]
    memory = fit_json([l1, l2, "--id", "id"], eqs)
    streamed = fit_json([l1, l2, "--id", "id"], eqs, "--engine", "stream")
    assert memory["n_deleted"] == streamed["n_deleted"] > 0 and memory["units_deleted"] == streamed["units_deleted"] == 1
    assert differences(memory, streamed) == []
    rc, msg = run("mdm", "build", l1, l2, "--id", "id", "--engine", "stream", "-o", tmp_path / "a.ssm")
    assert rc == 1 and "--missing now" in msg
    assert run("mdm", "build", l1, l2, "--id", "id", "--engine", "stream", "--missing", "now", "--l1-vars", "x,y",
               "-o", tmp_path / "a.ssm")[0] == 0
    assert run("mdm", "build", l1, l2, "--id", "id", "--missing", "now", "--l1-vars", "x,y", "-o", tmp_path / "a.mdm")[0] == 0
    assert differences(fit_json([tmp_path / "a.mdm"], eqs), fit_json([tmp_path / "a.ssm"], eqs)) == []


def test_weights_refused_in_one_line():
    data, eqs = CASES["hsb_m1"]
    rc, msg = run("fit", *data, *eqs, "--engine", "stream", "--weight2", "SECTOR")
    assert rc == 2 and msg.count("\n") == 1 and "--weight2" in msg


def test_mdm_info_of_a_statistics_archive(tmp_path):
    """The descriptive statistics from the merged moments equal the record archive's."""
    import json

    assert run("mdm", "build", *HSB, "--engine", "stream", "-o", tmp_path / "a.ssm")[0] == 0
    assert run("mdm", "build", *HSB, "-o", tmp_path / "a.mdm")[0] == 0
    rc, out = run("mdm", "info", tmp_path / "a.ssm", "--format", "json")
    stats = json.loads(out)
    records = json.loads(run("mdm", "info", tmp_path / "a.mdm", "--format", "json")[1])
    assert (stats["n_level1"], stats["n_level2"]) == (records["n_level1"], records["n_level2"]) == (7185, 160)
    for level in ("level1", "level2"):
        ours = {v["name"]: v for v in stats[level]}
        for v in records[level]:
            assert ours[v["name"]]["mean"] == pytest.approx(v["mean"], rel=1e-12, abs=1e-12)
            assert ours[v["name"]]["sd"] == pytest.approx(v["sd"], rel=1e-10)


def test_special_files_are_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "l1.csv"
    os.mkfifo(fifo)
    for args in (["fit", fifo, HSB[1], "--id", "ID", "--engine", "stream"], ["fit", fifo], ["mdm", "info", fifo],
                 ["mdm", "build", fifo, HSB[1], "--id", "ID", "--engine", "stream", "-o", tmp_path / "a.ssm"]):
        rc, msg = run(*args, "-1", "MATHACH = b0 + r", "-2", "b0 = g00 + u0") if args[0] == "fit" else run(*args)
        assert rc in (1, 2) and msg.count("\n") == 1, (args, msg)


def test_special_files_are_refused_without_blocking_by_every_reader(tmp_path):
    """The readers that peek at a file before the data readers check it (is it an archive? a
    cross-classified one? an HLM output?) must not open a FIFO either: each of these blocked forever."""
    import os

    fifo = tmp_path / "l1.csv"
    os.mkfifo(fifo)
    for args in (["fit", fifo, "--formula", "y ~ x + (1 | g)"], ["explain", fifo, fifo],
                 ["fit", fifo, "-1", "MATHACH = p0 + e", "-2", "p0 = theta0 + b00 + c00"]):
        rc, msg = run(*args)
        assert rc in (1, 2) and msg.count("\n") == 1 and "not a regular file" in msg, (args, msg)
