"""Separation of a binary or count outcome by one fixed-effect column (hlmcli/analysis/separation.py): refused
before fitting in one line naming the predictor and the records or units, or with --separation fit
held at a bound with a warning. With the coefficient at its bound the separated records' likelihood
is 1 to within e^-15, so the other estimates must be glmer's on the data without them
(tests/data/hglm/separation/separation_refs.json, tests/reference_scripts/hglm_separation.R)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, hlmcli
from hlmcli.analysis.separation import BOUND_ETA, find_separation

S = DATA / "hglm" / "separation"
REF = json.loads((S / "separation_refs.json").read_text())["reference"]
BASE = ["fit", S / "sep_l1.csv", S / "sep_l2.csv", "--id", "ID", "--family", "bernoulli", "-2", "b0 = g00 + u0"]
LEVEL1 = ["-1", "Y = b0 + b1*X + b2*D"]
LEVEL2 = ["-1", "Y = b0 + b1*X", "-2", "b0 = g00 + g01*W + u0"]


@pytest.mark.parametrize("est", ["pql", "laplace"])
def test_level1_dummy_on_successes_only_is_refused(est):
    proc = hlmcli(*BASE, *LEVEL1, "--estimation", est)
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "sep_l1.csv, column D" in line and "quasi-completely" in line
    assert "every record with D above 0 is a success" in line and "rows 2, 3, 4, 5, 9, 11" in line
    assert "--separation fit" in line


def test_level2_dummy_on_all_positive_units_is_refused():
    proc = hlmcli(*BASE[:-2], *LEVEL2)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "sep_l2.csv, column W" in line and "γ01 (W for INTRCPT1)" in line and "units 5, 9" in line


def test_separation_fit_level1_matches_glmer_without_the_separated_records():
    proc = hlmcli(*BASE, *LEVEL1, "--estimation", "laplace", "--separation", "fit", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert "warning: --separation fit: the fixed effect γ20 (INTRCPT2 for D)" in proc.stderr
    out = json.loads(proc.stdout)
    r = REF["level1_dummy_D"]
    g = {f["predictor"] if f["coefficient"] == "INTRCPT1" else f["coefficient"]: f for f in out["fixed_effects"]}
    assert g["D"]["estimate"] == BOUND_ETA and g["D"]["se"] is None
    assert g["INTRCPT2"]["estimate"] == pytest.approx(r["fixef"]["(Intercept)"], rel=1e-5)
    assert g["X"]["estimate"] == pytest.approx(r["fixef"]["X"], rel=1e-5)
    assert out["tau"][0][0] == pytest.approx(r["tau"], rel=1e-5)
    assert out["separation"]["mode"] == "fit" and len(out["separation"]["held"]) == 1


def test_separation_fit_level2_matches_glmer_without_the_separated_units():
    proc = hlmcli(*BASE[:-2], *LEVEL2, "--estimation", "laplace", "--separation", "fit", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    r = REF["level2_dummy_W"]
    est = [f["estimate"] for f in out["fixed_effects"]]
    assert est[1] == BOUND_ETA and out["fixed_effects"][1]["se"] is None
    assert est[0] == pytest.approx(r["fixef"]["(Intercept)"], rel=1e-5)
    assert est[2] == pytest.approx(r["fixef"]["X"], rel=1e-5)
    assert out["tau"][0][0] == pytest.approx(r["tau"], rel=1e-5)


def test_separation_fit_under_pql_prints_the_warning_in_the_text():
    proc = hlmcli(*BASE, *LEVEL1, "--separation", "fit")
    assert proc.returncode == 0, proc.stderr
    assert "--separation fit: the fixed effect γ20 (INTRCPT2 for D) separates the outcome" in proc.stdout


def test_count_outcome_zero_wherever_a_dummy_is_one_is_refused(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for j in range(1, 21):
        u = rng.normal() * 0.5
        for i in range(6):
            x = rng.normal()
            z = int(i == 0 and j % 4 == 0)  # Z = 1 on five records, each with a count of 0
            y = 0 if z else rng.poisson(np.exp(0.5 + 0.3 * x + u))
            rows.append(f"{j},{y},{x:.5f},{z}")
    (tmp_path / "l1.csv").write_text("ID,Y,X,Z\n" + "\n".join(rows) + "\n")
    (tmp_path / "l2.csv").write_text("ID\n" + "\n".join(str(j) for j in range(1, 21)) + "\n")
    args = ["fit", tmp_path / "l1.csv", tmp_path / "l2.csv", "--id", "ID", "--family", "poisson",
            "-1", "Y = b0 + b1*X + b2*Z", "-2", "b0 = g00 + u0"]
    proc = hlmcli(*args)
    assert proc.returncode == 1 and "column Z" in proc.stderr and "has a count of 0" in proc.stderr
    proc = hlmcli(*args, "--separation", "fit", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["fixed_effects"][2]["estimate"] == -BOUND_ETA


def test_find_separation_by_hand():
    """Hand-made columns: which separate, in which direction, and which do not."""
    y = np.array([0, 0, 1, 1, 1, 0, 1])
    X = np.column_stack([np.ones(7),
                         [0, 0, 1, 1, 0, 0, 0],  # 1 only on successes: quasi-complete, +∞
                         [5, 4, 1, 2, 0, 3, 1],  # failures 3..5, successes 0..2: complete, −∞
                         [1, 2, 3, 4, 5, 6, 7]])  # overlapping: none
    found = {s.column: s for s in find_separation(X, y, None, "logit")}
    assert set(found) == {1, 2}
    assert found[1].sign == 1 and not found[1].complete and found[1].records.tolist() == [2, 3]
    assert found[2].sign == -1 and found[2].complete
    # a binomial record with 0 < y < n is neither: it breaks the separation unless it sits at c
    n = np.full(7, 2.0)
    y2 = np.array([0, 0, 2, 2, 1, 0, 1])
    assert {s.column for s in find_separation(X, y2, n, "logit")} == {1}
    # counts: a positive count away from the smallest value breaks it
    assert [s.column for s in find_separation(X[:, :2], np.array([3, 1, 0, 0, 2, 1, 4]), None, "log")] == [1]
    assert find_separation(X[:, :2], np.array([3, 1, 0, 2, 2, 1, 4]), None, "log") == []


def test_separation_by_a_combination_is_refused_for_every_method(tmp_path):
    """Y = 1 exactly when A + B > 0: no single column separates, the two together do. Before, PQL
    exited 3 after a failed macro iteration and Laplace crashed (exit 70)."""
    rng = np.random.default_rng(11)
    rows = []
    for j in range(1, 21):
        for _ in range(6):
            a, b = rng.normal(), rng.normal()
            rows.append(f"{j},{int(a + b > 0)},{a:.4f},{b:.4f}")
    (tmp_path / "l1.csv").write_text("ID,Y,A,B\n" + "\n".join(rows) + "\n")
    (tmp_path / "l2.csv").write_text("ID\n" + "\n".join(str(j) for j in range(1, 21)) + "\n")
    for est in ("pql", "laplace"):
        proc = hlmcli("fit", tmp_path / "l1.csv", tmp_path / "l2.csv", "--id", "ID", "-1", "Y = b0 + b1*A + b2*B",
                      "-2", "b0 = g00 + u0", "--family", "bernoulli", "--estimation", est)
        assert proc.returncode == 1, proc.stderr
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1
        assert "γ10 (INTRCPT2 for A), γ20 (INTRCPT2 for B) together separate the outcome" in line


def test_find_combination_by_hand():
    from hlmcli.analysis.separation import find_combination

    a = np.array([-2.0, -1.0, 0.5, 1.0, 2.0, -0.5])
    b = np.array([1.0, 0.5, -0.2, 0.3, -1.0, 0.2])
    X = np.column_stack([np.ones(6), a, b])
    y = (a + 2 * b > 0).astype(float)  # [0, 0, 1, 1, 0, 0]: separated by a + 2b
    beta, moved = find_combination(X, y, None, "logit")
    assert moved.size and np.all(np.sign(X @ beta)[moved] == np.where(y[moved] > 0, 1, -1))
    assert np.all((X @ beta) * np.where(y > 0, 1, -1) >= -1e-12)
    # record 3 (a + 2b = 1.6) made a failure, or alternating outcomes: no separating direction
    y2 = y.copy()
    y2[3] = 0.0
    assert find_combination(X, y2, None, "logit") is None
    assert find_combination(X, np.array([1.0, 0, 1, 0, 1, 0]), None, "logit") is None


def test_overlap_certificate_agrees_with_the_linear_programme(monkeypatch):
    """The GLM's score certifies overlap (no separating combination) without the LP; wherever it does,
    the LP run on its own finds no separation either; on separated data it does not certify."""
    from hlmcli.analysis import separation

    rng = np.random.default_rng(7)
    certified = 0
    for k in range(24):
        n, p = 40 + 10 * (k % 4), 3 + k % 3
        X = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1)) * 10.0 ** rng.integers(-2, 3, p - 1)])
        eta = X @ rng.normal(size=p) * (0.5 if k % 2 else 3.0)
        if k % 3 == 2:  # counts, log link
            y, trials, link = rng.poisson(np.exp(np.clip(eta, -3, 3))).astype(float), None, "log"
        else:
            trials = None if k % 3 == 0 else rng.integers(1, 4, n).astype(float)
            y, link = rng.binomial(1 if trials is None else trials.astype(int), 1 / (1 + np.exp(-eta))).astype(float), "logit"
        scale = np.abs(X).max(axis=0)
        if separation.overlap_certified(X / scale, y, trials, link):
            certified += 1
            monkeypatch.setattr(separation, "overlap_certified", lambda *a, **k: False)
            assert separation.find_combination(X, y, trials, link) is None, k
            monkeypatch.undo()
    assert certified >= 10  # 11 of the 14 without separation; near-separated ones (λ_min ~1e-5) go to the LP
    # separated by a + 2b (the case above): no finite GLM maximum, so no certificate, and the LP finds it
    a = np.array([-2.0, -1.0, 0.5, 1.0, 2.0, -0.5])
    b = np.array([1.0, 0.5, -0.2, 0.3, -1.0, 0.2])
    X = np.column_stack([np.ones(6), a, b])
    y = (a + 2 * b > 0).astype(float)
    assert not separation.overlap_certified(X / np.abs(X).max(axis=0), y, None, "logit")
    assert separation.find_combination(X, y, None, "logit") is not None
