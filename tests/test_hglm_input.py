"""Input that used to reach exit 70 (issue 21, item 3): each case gets a correct fit or one line
naming the file, the column and the row (or unit), with exit 1 or 2. Then a seeded fuzz over HGLM
data generators (constant outcomes, all zeros, extreme counts, separating predictors at both
levels, missing or mislevelled trials and exposure) that asserts exit 70 never occurs, under PQL,
Laplace and AGQ: a fast set in the default run, a bigger one behind @pytest.mark.slow. The
separating predictors are here for the exit code only: whether such a fit is refused belongs to
the separation checks (hglm_run._separation and its successors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import DATA, hlmcli

from hlmcli.cli import main

H = DATA / "hglm"
MODEL = ["--id", "ID", "-1", "Y = b0 + b1*X", "-2", "b0 = g00 + g01*W + u0"]


def write_case(tmp, y, x, unit, w, trials=None, exposure=None, m=None, name="l1.csv"):
    """Level-1 (ID, Y, X, T, E) and level-2 (ID, W, M) files; values written with repr (exact)."""
    def cell(v):
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else repr(float(v))

    rows = ["ID,Y,X,T,E"]
    for k in range(len(y)):
        rows.append(",".join([str(unit[k] + 1), cell(y[k]), cell(x[k]),
                              cell(None if trials is None else trials[k]), cell(None if exposure is None else exposure[k])]))
    l1 = tmp / name
    l1.write_text("\n".join(rows) + "\n")
    l2 = tmp / "l2.csv"
    m = np.arange(len(w)) % 3 + 1 if m is None else m
    l2.write_text("ID,W,M\n" + "\n".join(f"{j + 1},{float(w[j])!r},{m[j]}" for j in range(len(w))) + "\n")
    return l1, l2


def ordinary(seed=1, J=10, n=8):
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    w = rng.normal(size=J)
    eta = -0.3 + 0.5 * x + 0.4 * w[unit] + rng.normal(size=J)[unit] * 0.7
    trials = rng.integers(1, 6, J * n).astype(float)
    exposure = rng.uniform(0.5, 2.0, J * n)
    p = 1 / (1 + np.exp(-eta))
    return dict(rng=rng, unit=unit, x=x, w=w, trials=trials, exposure=exposure,
                bern=(rng.random(J * n) < p).astype(float), binom=rng.binomial(trials.astype(int), p).astype(float),
                pois=rng.poisson(exposure * np.exp(eta)).astype(float))


def refused(proc, code=1):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert "internal error" not in proc.stderr
    return lines[0]


# ------------------------------------------------------------------ the cases of item 3, one by one

def test_outcome_constant_within_every_unit_is_refused(tmp_path):
    d = ordinary()
    y = (d["unit"] % 2).astype(float)  # every unit all 0 or all 1
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    for method in ([], ["--estimation", "laplace"], ["--estimation", "agq"]):
        msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", "bernoulli", *method))
        assert msg.startswith("hlmcli: error: l1.csv, column Y, row 1: within every unit the outcome is all 0 or all 1")
        assert "τ00 has no finite estimate" in msg
    # before: exit 0 with "certified" at τ00 = 4305 (Laplace) and 27836 (AGQ), where the likelihood still rises
    msg = refused(hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + u0"))
    assert "l1.csv, column Y: the outcome is constant within every unit" in msg and "σ² would be 0" in msg


def test_linear_outcome_constant_within_every_unit_summarised_engine(tmp_path):
    """--engine stream judges it from the per-unit moments (a value such as 1.1 leaves rounding in the
    running means); before, it printed σ² = 4e-17 as a certified optimum."""
    d = ordinary()
    y = (d["unit"] % 3) * 1.1
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    msg = refused(hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + u0",
                         "--engine", "stream"))
    assert "column Y: the outcome is constant within every unit" in msg
    y[5] += 0.5  # one record differs: an ordinary fit (the control)
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    proc = hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + u0", "--engine", "stream")
    assert proc.returncode in (0, 3), proc.stderr


def test_binomial_all_or_nothing_units_are_refused(tmp_path):
    d = ordinary()
    y = np.where(d["unit"] % 2 == 0, 0.0, d["trials"])
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"], trials=d["trials"])
    msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", "binomial", "--trials", "T"))
    assert "column Y, row 1: within every unit the outcome is all failures (0) or all successes (Y = T)" in msg


def test_some_units_all_zero_still_fit(tmp_path):
    """Only when every unit is all-or-nothing: a few such units are ordinary data (the control)."""
    d = ordinary()
    y = d["bern"].copy()
    y[d["unit"] < 3] = 0.0
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    proc = hlmcli("fit", l1, l2, *MODEL, "--family", "bernoulli", "--format", "json")
    assert proc.returncode == 0, proc.stderr


def test_all_zero_poisson_counts_are_refused(tmp_path):
    d = ordinary()
    l1, l2 = write_case(tmp_path, np.zeros_like(d["x"]), d["x"], d["unit"], d["w"], exposure=d["exposure"])
    for method in ([], ["--estimation", "laplace"], ["--estimation", "agq"]):
        msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", "poisson", "--exposure", "E", *method))
        assert msg == ("hlmcli: error: l1.csv, column Y, row 1: every count is 0, so the log rate has no finite "
                       "estimate (it tends to -∞); a Poisson model needs some non-zero counts")


@pytest.mark.parametrize("count, why", [
    (1e300, "the value 1e+300 is beyond ±1e+60"),
    (2.0 ** 53 + 2, "the count 9.0072e+15 is beyond 2^53"),
    (1e15, "the model cannot be fitted to these data"),
])
def test_an_extreme_count_is_refused(tmp_path, count, why):
    d = ordinary()
    y = d["pois"].copy()
    y[4] = count
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"], exposure=d["exposure"])
    msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", "poisson", "--exposure", "E"))
    assert "l1.csv, column Y, row 5" in msg and why in msg


def test_trials_beyond_two_to_the_53_are_refused(tmp_path):
    d = ordinary()
    trials = d["trials"].copy()
    trials[6] = 2.0 ** 60
    l1, l2 = write_case(tmp_path, d["binom"], d["x"], d["unit"], d["w"], trials=trials)
    msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", "binomial", "--trials", "T"))
    assert "l1.csv, column T, row 7: the number of trials 1.15292e+18 is beyond 2^53" in msg


@pytest.mark.parametrize("option, family, column, why", [
    ("--trials", "binomial", "NOPE", "--trials NOPE: l1.csv has no column NOPE; name a level-1 column"),
    ("--trials", "binomial", "t", "--trials t: l1.csv has no column t (did you mean T?)"),
    ("--trials", "binomial", "M", "--trials M: M is a level-2 column (in l2.csv); --trials must be a level-1 column"),
    ("--exposure", "poisson", "NOPE", "--exposure NOPE: l1.csv has no column NOPE"),
    ("--exposure", "poisson", "W", "--exposure W: W is a level-2 column (in l2.csv)"),
])
def test_trials_and_exposure_must_name_a_level1_column(tmp_path, option, family, column, why):
    d = ordinary()
    y = d["binom"] if family == "binomial" else d["pois"]
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"], trials=d["trials"], exposure=d["exposure"])
    msg = refused(hlmcli("fit", l1, l2, *MODEL, "--family", family, option, column))
    assert why in msg


def test_an_imputed_file_without_the_outcome_is_refused(tmp_path):
    d = ordinary()
    y = -0.3 + 0.5 * d["x"] + d["rng"].normal(size=d["x"].size)
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    imputed = tmp_path / "imp2.csv"
    imputed.write_text("\n".join(",".join(r.split(",")[:1] + r.split(",")[2:]) for r in l1.read_text().splitlines()))
    msg = refused(hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + u0",
                         "--imputed", imputed))
    assert msg == ("hlmcli: error: imp2.csv: no column Y, which the model uses; add it to this file (every data set of "
                   "a combined fit needs the same columns)")


def test_quadrature_points_past_the_limit_are_refused():
    base = ["fit", H / "cbpp_l1.csv", H / "cbpp_l2.csv", "-1", "INCID = b0 + b1*P2 + b2*P3 + b3*P4", "-2",
            "b0 = g00 + u0", "--id", "HERD", "--family", "binomial", "--trials", "SIZE", "--estimation", "agq"]
    msg = refused(hlmcli(*base, "--quadrature-points", "500"))
    assert "--quadrature-points 500: at most 100" in msg
    # 100 points is a fit, and the same optimum as glmer's nAGQ = 25 (tests/data/hglm/refs): the rule is exact
    # for this integrand long before 25 points
    proc = hlmcli(*base, "--quadrature-points", "100", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = json.loads((H / "refs" / "cbpp_ri_agq25.json").read_text())["reference"]
    for f, (label, r) in zip(out["fixed_effects"], ref["fixed"].items()):
        assert abs(f["estimate"] - r["est"]) <= 1e-4 * max(abs(r["est"]), 1e-2), (label, f["estimate"], r["est"])


def test_quadrature_nodes_past_the_limit_are_refused():
    proc = hlmcli("fit", H / "slope_l1.csv", H / "slope_l2.csv", "--id", "id", "-1", "y = b0 + b1*x",
                  "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "--family", "bernoulli", "--estimation", "agq",
                  "--quadrature-points", "60")
    msg = refused(proc)
    assert "--quadrature-points 60 with 2 random effects is 3,600 nodes per unit (at most 2,500); use at most 50" in msg


@pytest.mark.parametrize("level", [1, 2])
def test_a_value_of_1e300_in_a_linear_predictor_is_refused(tmp_path, level):
    d = ordinary()
    y = -0.3 + 0.5 * d["x"] + d["rng"].normal(size=d["x"].size)
    x, w = d["x"].copy(), d["w"].copy()
    if level == 1:
        x[4] = 1e300
    else:
        w[6] = -1e300
    l1, l2 = write_case(tmp_path, y, x, d["unit"], w)
    msg = refused(hlmcli("fit", l1, l2, "--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + g01*W + u0"))
    if level == 1:
        assert msg.startswith("hlmcli: error: l1.csv, column X, row 5 (unit 1): the value 1e+300 is beyond ±1e+60")
    else:
        assert msg.startswith("hlmcli: error: l2.csv, column W, unit 7: the value -1e+300 is beyond ±1e+60")


def test_a_large_but_representable_predictor_still_fits(tmp_path):
    """The limit is far from ordinary data: X in units of 1e9 (money in cents, say) gives the fit of X
    with γ10 scaled by 1e-9 and everything else the same."""
    d = ordinary()
    y = -0.3 + 0.5 * d["x"] + d["rng"].normal(size=d["x"].size)
    l1, l2 = write_case(tmp_path, y, d["x"], d["unit"], d["w"])
    big = tmp_path / "big"
    big.mkdir()
    l1b, l2b = write_case(big, y, d["x"] * 1e9, d["unit"], d["w"])
    args = ["--id", "ID", "-1", "Y = b0 + b1*X + r", "-2", "b0 = g00 + u0", "--format", "json"]
    a = json.loads(hlmcli("fit", l1, l2, *args, check=True).stdout)
    b = json.loads(hlmcli("fit", l1b, l2b, *args, check=True).stdout)
    assert abs(b["fixed_effects"][1]["estimate"] * 1e9 / a["fixed_effects"][1]["estimate"] - 1) < 1e-6
    assert abs(b["sigma2"] / a["sigma2"] - 1) < 1e-6


# ------------------------------------------------------------------ fuzz: exit 70 never

PATHOLOGIES = ["ordinary", "constant_overall", "constant_within_units", "all_zero", "extreme_count", "separating_l1",
               "separating_l2", "trials_missing_column", "trials_level2", "trials_missing_value", "exposure_missing_column",
               "exposure_level2", "exposure_extreme", "singleton_units", "huge_predictor", "tiny_units"]
FAMILIES = ["bernoulli", "binomial", "poisson"]
METHODS = {"pql": [], "laplace": ["--estimation", "laplace"], "agq": ["--estimation", "agq"]}


def generate(seed: int, family: str, pathology: str, tmp):
    """One data set and its command-line arguments."""
    rng = np.random.default_rng(seed)
    J = int(rng.integers(3, 9))
    sizes = rng.integers(1, 7, J)
    if pathology == "singleton_units":
        sizes[:] = 1
    elif pathology == "tiny_units":
        sizes[:] = rng.integers(1, 3, J)
    else:
        sizes[0] = max(sizes[0], 2)
    unit = np.repeat(np.arange(J), sizes)
    N = unit.size
    x = rng.normal(size=N)
    w = rng.normal(size=J)
    eta = rng.normal(-0.3, 0.5) + rng.normal(0, 1) * x + rng.normal(0, 1) * w[unit] + rng.normal(size=J)[unit]
    trials = rng.integers(1, 8, N).astype(float)
    exposure = rng.uniform(0.2, 3.0, N)
    p = 1 / (1 + np.exp(-eta))
    y = {"bernoulli": (rng.random(N) < p).astype(float), "binomial": rng.binomial(trials.astype(int), p).astype(float),
         "poisson": rng.poisson(exposure * np.exp(np.clip(eta, -20, 5))).astype(float)}[family]
    top = trials if family == "binomial" else 1.0
    trials_opt, exposure_opt = "T", "E"
    k = int(rng.integers(0, N))
    if pathology == "constant_overall":
        y = np.full(N, float(rng.integers(0, 2))) * (top if family != "poisson" else rng.integers(1, 4))
    elif pathology == "constant_within_units":
        c = rng.integers(0, 2, J).astype(float)
        y = c[unit] * top if family != "poisson" else rng.integers(0, 4, J)[unit].astype(float)
    elif pathology == "all_zero":
        y = np.zeros(N)
    elif pathology == "extreme_count":
        big = float(rng.choice([1e6, 1e9, 1e12, 1e15, 2.0 ** 53, 2.0 ** 53 + 2, 1e300]))
        y[k] = big
        if family == "binomial":
            trials[k] = big
    elif pathology == "separating_l1":
        s = (y / top > 0.5) if family != "poisson" else (y > np.median(y))
        x = np.where(s, np.abs(x) + 1, -np.abs(x) - 1)
    elif pathology == "separating_l2":
        neg = w[unit] < 0  # every record of a unit with W < 0 is a failure: quasi-complete separation by W
        y = np.where(neg, 0.0, y)
        if not (~neg).any() or not (y > 0).any():
            y[0] = top if np.isscalar(top) else top[0]
    elif pathology == "trials_missing_column":
        trials_opt = "NOPE"
    elif pathology == "trials_level2":
        trials_opt = "M"
    elif pathology == "trials_missing_value":
        trials[k] = np.nan
    elif pathology == "exposure_missing_column":
        exposure_opt = "nope"
    elif pathology == "exposure_level2":
        exposure_opt = "W"
    elif pathology == "exposure_extreme":
        exposure[k] = float(rng.choice([0.0, -1.0, 1e-300, 1e-30, 1e30, 1e300]))
    elif pathology == "huge_predictor":
        x[k] = float(rng.choice([1e300, -1e61, 1e59, 1e30]))
    l1, l2 = write_case(tmp, y, x, unit, w, trials=trials, exposure=exposure)
    args = ["fit", str(l1), str(l2), "--id", "ID", "-1", "Y = b0 + b1*X",
            "-2", "b0 = g00 + g01*W + u0", "--family", family]
    if rng.random() < 0.3:
        args += ["-2", "b1 = g10 + u1"]
    if family == "binomial" or pathology.startswith("trials"):
        args += ["--trials", trials_opt]
    if family == "poisson" or pathology.startswith("exposure"):
        args += ["--exposure", exposure_opt]
    return args


def run_case(seed, family, pathology, method, tmp):
    args = generate(seed, family, pathology, tmp) + METHODS[method] + ["--format", "json"]
    if method == "agq":
        args += ["--quadrature-points", str(np.random.default_rng(seed).choice([1, 3, 7, 25, 101, 500]))]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    err = result.stderr
    assert result.exit_code != 70, f"{pathology}/{family}/{method} seed {seed}: {err}"
    assert result.exit_code in (0, 1, 2, 3), (result.exit_code, err)
    assert "Traceback" not in err
    if result.exit_code in (1, 2):
        assert len(err.strip().splitlines()) == 1, err
    return result.exit_code


def cases(count: int, start: int):
    """Every pathology under every method, families and seeds drawn in turn."""
    out = []
    for i in range(count):
        pathology = PATHOLOGIES[i % len(PATHOLOGIES)]
        method = list(METHODS)[(i // len(PATHOLOGIES)) % len(METHODS)]
        family = FAMILIES[(i // (len(PATHOLOGIES) * len(METHODS)) + i) % len(FAMILIES)]
        out.append(pytest.param(start + i, family, pathology, method, id=f"{pathology}-{family}-{method}-{start + i}"))
    return out


@pytest.mark.parametrize("seed, family, pathology, method", cases(len(PATHOLOGIES) * len(METHODS), 0))
def test_fuzz_never_exit_70(tmp_path, seed, family, pathology, method):
    run_case(seed, family, pathology, method, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed, family, pathology, method", cases(len(PATHOLOGIES) * len(METHODS) * 6, 1000))
def test_fuzz_never_exit_70_more(tmp_path, seed, family, pathology, method):
    run_case(seed, family, pathology, method, tmp_path)


def test_a_binomial_predictor_near_1e30_is_refused_for_laplace_naming_the_column(tmp_path):
    """Laplace and AGQ work on the raw γ: a predictor of about 1e30 beside the intercept makes their
    (θ, γ) Hessian's condition number 1e60, so it was not positive definite as computed and the
    standard errors printed as NaN (exit 3). Refused before fitting, in one line naming the column."""
    d = ordinary(seed=4)
    x = d["x"] * 1e30
    l1, l2 = write_case(tmp_path, d["binom"], x, d["unit"], d["w"], trials=d["trials"])
    proc = hlmcli("fit", l1, l2, *MODEL, "--family", "binomial", "--trials", "T", "--estimation", "laplace",
                  "--cache-dir", tmp_path)
    line = refused(proc)
    assert "l1.csv, column X" in line and "rescale it" in line and "nan" not in line.lower()


def test_numpy_warnings_stay_off_stderr(tmp_path):
    """A count of 1e300-like size leaves the Laplace fit uncertified with an odds ratio that overflows: the
    output says so (inf, "not certified"), and stderr holds hlmcli's one warning line, not numpy's
    RuntimeWarnings (an overflowing exp, a sqrt of a negative variance) with their source lines."""
    proc = hlmcli(*generate(1116, "binomial", "extreme_count", tmp_path), "--estimation", "laplace")
    assert proc.returncode == 3, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [line for line in proc.stderr.strip().splitlines()
                                                if line.startswith("hlmcli: ")] and proc.stderr.count("\n") == 1
