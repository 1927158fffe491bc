"""HMLM (--level1-covariance S --occasion VAR, HLM 7's HMLM): a structured within-person covariance Δ over the
occasions, against nlme (tests/data/hmlm/hmlm_nlme.json, made by tests/reference_scripts/hmlm_nlme.R, nlme run with
nlminb and optim's BFGS and the lower deviance kept; lmer for the homogeneous model):

- early: mlmRev's Early with occasions deleted by a fixed rule (missing occasions), COG ~ AGE·TRT;
- orthodont: nlme's Orthodont (complete), DISTANCE ~ AGE·FEMALE;
random intercept and AGE slope, or (_u0) a random intercept only.

Deviances within 1e-6 (they agree to 1e-9), γ, their SEs, Δ, τ and the marginal covariance within 1e-5 relative.
Two exceptions, both nlme's: on early with two random effects (a near-singular τ) nlme's lme stops 6e-5-7e-5 short
in deviance, so the homogeneous model is checked there against lmer and the one engine; and gls's ML standard
errors use σ² scaled by N/(N - p) (nlme's documented choice), so they are compared after that factor."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hlmcli
from hlmcli.engine.hmlm import Occasions, Parameters, evaluate, group_by_pattern
from hlmcli.errors import DataError, ModelError
from conftest import DATA, hlmcli as run_cli

D = DATA / "hmlm"
REF = json.loads((D / "hmlm_nlme.json").read_text())
MODEL = {"early": ("COG = b0 + b1*AGE + r", "TRT"), "orthodont": ("DISTANCE = b0 + b1*AGE + r", "FEMALE")}
R_ORDER = ["γ00", "γ10", "γ01", "γ11"]  # nlme's (Intercept), AGE, TRT (FEMALE), AGE:TRT


def args(data: str, q: int):
    level1, w = MODEL[data]
    return level1, [f"b0 = g00 + g01*{w} + u0", f"b1 = g10 + g11*{w}" + (" + u1" if q == 2 else "")]


def fit(key: str) -> dict:
    data, *rest = key.split("_")
    structure, method = rest[-2], rest[-1]
    level1, level2 = args(data, 1 if "u0" in rest else 2)
    return hlmcli.fit(D / f"{data}1.csv", D / f"{data}2.csv", id="ID", level1_eq=level1, level2_eqs=level2,
                      method=method, level1_covariance=structure, occasion="OCC").to_dict()


def close(a, b, rel=1e-5) -> bool:
    """Covariance matrices equal to `rel` on the scale of each element, √(b_aa b_bb) (a covariance near 0,
    e.g. Orthodont's τ01 at a correlation of -0.03, is held to rel in correlation units, not to rel of itself)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.sqrt(np.outer(np.diag(b), np.diag(b)))
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= rel * scale))


def check(doc: dict, key: str) -> None:
    ref = REF[key]
    v = doc["level1_covariance"]
    assert v["check"]["converged"] and doc["converged"], v["check"]
    fixed = {f["gamma"]: f for f in v["fixed_effects"]}
    se = np.array([fixed[g]["se"] for g in R_ORDER])
    if v["structure"] == "unrestricted" and v["method"] == "ML":  # gls's ML SEs: σ² with N - p
        se = se * np.sqrt(ref["n_obs"] / (ref["n_obs"] - len(R_ORDER)))
    nlme_short = key.startswith("early_homogeneous")  # nlme stops short here: lmer and the one engine instead
    if nlme_short:
        assert v["deviance"] == pytest.approx(ref["lmer_deviance"], abs=1e-6)
        assert v["deviance"] < ref["deviance"]
        assert v["deviance"] == pytest.approx(v["homogeneous_engine_deviance"], abs=1e-6)
        gamma = {f["gamma"]: f["estimate"] for f in doc["fixed_effects"]}  # the one engine's
        assert [fixed[g]["estimate"] for g in R_ORDER] == pytest.approx([gamma[g] for g in R_ORDER], rel=1e-5)
        assert close(v["tau"], doc["tau"], 1e-4)
        return
    assert v["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert [fixed[g]["estimate"] for g in R_ORDER] == pytest.approx(ref["fixef"], rel=1e-5)
    assert se == pytest.approx(ref["se"], rel=1e-5)
    assert close(v["delta"], ref["delta"])
    if "tau" in ref:
        assert close(v["tau"], ref["tau"]) and close(v["marginal"], ref["marginal"])
    if "rho" in ref:
        assert v["rho"] == pytest.approx(ref["rho"], rel=1e-5)
    if v["structure"] == "homogeneous":
        assert v["deviance"] == pytest.approx(ref["lmer_deviance"], abs=1e-6)
        assert v["deviance"] == pytest.approx(v["homogeneous_engine_deviance"], abs=1e-6)
    else:
        t = v["test"]
        hom = REF.get(key.replace(v["structure"], "homogeneous"))
        if hom and not key.startswith("early_unrestricted"):
            assert t["deviance_homogeneous"] == pytest.approx(hom["deviance"], abs=1e-6)
        assert t["chi2"] == pytest.approx(t["deviance_homogeneous"] - v["deviance"], rel=1e-12)
        assert t["df"] == t["params"] - t["params_homogeneous"]


def test_cli_unrestricted_with_missing_occasions_matches_gls(tmp_path):
    """As a user types it: Early with missing occasions, Δ unrestricted (REML) against nlme's gls with corSymm +
    varIdent; the text has Δ, the marginal covariance, the γ table and the test against homogeneous σ²."""
    level1, level2 = args("early", 2)
    out = tmp_path / "fit.json"
    proc = run_cli("fit", D / "early1.csv", D / "early2.csv", "--id", "ID", "-1", level1,
                   *[a for eq in level2 for a in ("-2", eq)], "--level1-covariance", "unrestricted", "--occasion", "OCC",
                   "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    from hlmcli.report.schemas import first_error

    assert first_error(doc, "fit") is None
    check(doc, "early_unrestricted_REML")
    v = doc["level1_covariance"]
    assert v["occasions"] == [1.0, 2.0, 3.0] and v["tau"] == [] and v["n_params"] == 6
    assert "HMLM: Unrestricted model" in proc.stdout and "Optimum checked locally" in proc.stdout
    assert f"{v['delta'][0][1]:.5f}" in proc.stdout and f"{v['test']['chi2']:.5f}" in proc.stdout
    assert "corSymm(form = ~ OCC | <id>)" in proc.stdout
    assert "certified" not in proc.stdout.split("HMLM:")[1]  # a local check is not called a certificate


FAST = ["early_u0_heterogeneous_ML", "orthodont_ar1_ML", "orthodont_u0_homogeneous_ML"]


@pytest.mark.parametrize("key", [k if k in FAST else pytest.param(k, marks=pytest.mark.slow)
                                 for k in sorted(REF) if k != "early_unrestricted_REML"])
def test_structure_matches_nlme(key):
    check(fit(key), key)


def test_deviance_equals_dense_computation_by_hand():
    """The per-pattern Woodbury deviance equals log|V_i| + r'V⁻¹r summed over persons with each V_i formed
    densely (random data, missing occasions, AR(1) Δ, unstructured τ), REML and ML."""
    rng = np.random.default_rng(7)
    T, n_persons, p, q = 4, 30, 3, 2
    rows = [(i, t) for i in range(n_persons) for t in range(T) if rng.random() > 0.25 or t == 0]
    person = np.array([r[0] for r in rows])
    occ = np.array([r[1] for r in rows])
    N = person.size
    X = np.column_stack([np.ones(N), occ, rng.normal(size=N)])
    Z = X[:, :q]
    y = rng.normal(size=N) + occ
    data = group_by_pattern(y, X, Z, person, occ, T)
    assert sum(pat.y.shape[0] for pat in data.patterns) == n_persons
    par = Parameters("ar1", T, q, scale=1.0)
    theta = np.array([1.2, 0.3, 0.5, np.log(0.8), np.arctanh(0.4)])
    L = np.array([[1.2, 0], [0.3, 0.5]])
    tau = L @ L.T
    delta = 0.8 * 0.4 ** np.abs(np.subtract.outer(np.arange(T), np.arange(T)))
    for method in ("ML", "REML"):
        A, logdet = np.zeros((p, p)), 0.0
        b = np.zeros(p)
        blocks = []
        for i in range(n_persons):
            m = person == i
            V = Z[m] @ tau @ Z[m].T + delta[np.ix_(occ[m], occ[m])]
            Vi = np.linalg.inv(V)
            A += X[m].T @ Vi @ X[m]
            b += X[m].T @ Vi @ y[m]
            logdet += np.linalg.slogdet(V)[1]
            blocks.append((m, Vi))
        gamma = np.linalg.solve(A, b)
        rss = sum((y[m] - X[m] @ gamma) @ Vi @ (y[m] - X[m] @ gamma) for m, Vi in blocks)
        dev = logdet + rss + N * np.log(2 * np.pi)
        if method == "REML":
            dev += np.linalg.slogdet(A)[1] - p * np.log(2 * np.pi)
        ev = evaluate(theta, data, par, method)
        assert ev.deviance == pytest.approx(dev, rel=1e-12)
        assert ev.gamma == pytest.approx(gamma, rel=1e-10)
    assert isinstance(data, Occasions)


def test_refusals_are_one_line(tmp_path):
    """A person with an occasion twice (data error, exit 1), an occasion variable that is not there (exit 1),
    --level1-covariance without --occasion (usage, exit 2), two occasions never seen together (unrestricted).
    (--test and --compare-deviance test the structured fit: tests/test_hmlm_tests.py.)"""
    level1, level2 = args("early", 2)
    eqs = ["-1", level1, *[a for eq in level2 for a in ("-2", eq)]]
    l1 = (D / "early1.csv").read_text().splitlines()
    dup = tmp_path / "dup1.csv"
    dup.write_text("\n".join(l1 + [l1[1]]) + "\n")
    cases = [((dup, D / "early2.csv", "--level1-covariance", "ar1", "--occasion", "OCC"), 1, "more than once"),
             ((D / "early1.csv", D / "early2.csv", "--level1-covariance", "ar1", "--occasion", "WAVE"), 1,
              "--occasion WAVE: no such variable"),
             ((D / "early1.csv", D / "early2.csv", "--level1-covariance", "ar1"), 2, "go together")]
    for given, code, text in cases:
        proc = run_cli("fit", *given[:2], "--id", "ID", *eqs, *given[2:])
        assert proc.returncode == code, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and text in proc.stderr and "Traceback" not in proc.stderr
    apart = tmp_path / "apart1.csv"  # occasions 1 and 3 never in one person
    kept = [l1[0]] + [line for line in l1[1:] if not (line.split(",")[1] == "3" and int(line.split(",")[0]) % 2)
                      and not (line.split(",")[1] == "1" and int(line.split(",")[0]) % 2 == 0)]
    apart.write_text("\n".join(kept) + "\n")
    with pytest.raises(ModelError, match="no person is observed at both occasions 1 and 3"):
        hlmcli.fit(apart, D / "early2.csv", id="ID", level1_eq=level1, level2_eqs=args("early", 1)[1],
                   level1_covariance="unrestricted", occasion="OCC")
    with pytest.raises(ModelError, match="--occasion COG: .* distinct values; HMLM's occasions are a few waves"):
        hlmcli.fit(D / "early1.csv", D / "early2.csv", id="ID", level1_eq=level1, level2_eqs=args("early", 1)[1],
                   level1_covariance="ar1", occasion="COG")
    with pytest.raises(DataError, match="more than once"):
        hlmcli.fit(dup, D / "early2.csv", id="ID", level1_eq=level1, level2_eqs=level2,
                   level1_covariance="heterogeneous", occasion="OCC")


@pytest.mark.slow
def test_boundary_is_not_claimed(tmp_path):
    """Early with two random effects and σ² by occasion: 6 variance parameters for 6 moments, and the
    deviance flat towards a boundary (nlme's two optimizers end 5e-6 apart). The point reached is not
    called an optimum: exit 3 and the reason on stderr."""
    level1, level2 = args("early", 2)
    proc = run_cli("fit", D / "early1.csv", D / "early2.csv", "--id", "ID", "-1", level1,
                   *[a for eq in level2 for a in ("-2", eq)], "--level1-covariance", "heterogeneous",
                   "--occasion", "OCC")
    assert proc.returncode == 3, proc.stderr
    assert "--level1-covariance heterogeneous" in proc.stderr and "NOT a checked optimum" in proc.stdout


# ---------------------------------------------------------------- HMLM2: a level above the persons (engine)

REF2 = json.loads((D / "hmlm2_nlme.json").read_text())


def eg_occasions():
    """mlmRev's egsingle, its first 15 schools (tests/reference_scripts/hmlm2_nlme.R): MATH ~ YEAR with a
    random intercept and YEAR slope per child and a random intercept per school, years as occasions 1..6."""
    import pandas as pd

    d = pd.read_csv(D / "eg15.csv")
    X = np.column_stack([np.ones(len(d)), d["YEAR"]])
    person = pd.factorize(d["CHILD"])[0]
    top = pd.factorize(d["SCHOOL"])[0]
    return group_by_pattern(d["MATH"].to_numpy(float), X, X.copy(), person, d["OCC"].to_numpy() - 1, 6,
                            W=X[:, :1].copy(), top=top)


@pytest.mark.parametrize("key", [k if k == "homogeneous_ML" else pytest.param(k, marks=pytest.mark.slow)
                                 for k in sorted(REF2)])
def test_hmlm2_engine_matches_nlme_two_levels(key):
    """The three-level marginal likelihood (persons within schools, children missing years) against nlme's lme
    with two grouping levels: σ² homogeneous, by occasion (varIdent) or AR(1) (corAR1(form = ~ OCC | SCHOOL/CHILD)).
    nlme's nlminb reports singular convergence on AR(1) and ends 2e-8 (REML) and 5e-8 (ML) above this optimum
    in deviance, where τ and ρ are flat: those are held to 1e-4 there."""
    from hlmcli.engine.hmlm import fit_hmlm

    ref = REF2[key]
    structure, method = key.split("_")
    f = fit_hmlm(eg_occasions(), structure, method, 0.3, np.array([[0.6, 0.05], [0.05, 0.01]]),
                 tau3=np.array([[0.1]]))
    assert f.converged, f.failed
    rel = 1e-4 if structure == "ar1" else 1e-5
    if structure == "ar1":
        assert ref["deviance"] - 1e-7 < f.deviance <= ref["deviance"]
        assert f.delta[0, 1] / f.delta[0, 0] == pytest.approx(ref["rho"], rel=rel)
    else:
        assert f.deviance == pytest.approx(ref["deviance"], abs=1e-6)
    assert f.gamma == pytest.approx(ref["fixef"], rel=rel)
    assert np.sqrt(np.diag(f.cov_gamma)) == pytest.approx(ref["se"], rel=rel)
    assert close(f.tau, ref["tau_child"], rel) and close(f.tau3, ref["tau_school"], rel)
    if structure == "heterogeneous":
        assert np.diag(f.delta) == pytest.approx(ref["sigma2_by_occasion"], rel=rel)
    else:
        assert f.delta[0, 0] == pytest.approx(ref["sigma2"], rel=rel)


def test_boundary_probe_finds_an_infimum_at_minus_infinity():
    """A deviance still falling as a log variance goes to -∞ (exp(θ0): flat, with a tiny gradient, where the
    local tests could pass) is caught by the probe; a regular minimum (θ'θ) passes; an AR(1) correlation whose
    deviance falls towards ρ = 1 is caught too."""
    from hlmcli.engine.hmlm import boundary_probe

    theta = np.array([-9.0, 0.5])
    assert boundary_probe(lambda t: np.exp(t[0]) + t[1] ** 2, theta, np.exp(-9.0) + 0.25, [0], [])
    assert not boundary_probe(lambda t: float(t @ t), np.zeros(2), 0.0, [0], [1])
    caught = boundary_probe(lambda t: -np.tanh(t[1]), theta, -np.tanh(0.5), [], [1])
    assert caught and "AR(1) correlation" in caught[0]


def eg_files(directory):
    """eg15.csv as HLM 7's three files: occasions (level 1), children (level 2), schools (level 3)."""
    import pandas as pd

    d = pd.read_csv(D / "eg15.csv")
    paths = [directory / f"eg{k}.csv" for k in (1, 2, 3)]
    d[["CHILD", "OCC", "YEAR", "MATH"]].to_csv(paths[0], index=False)
    d[["CHILD", "SCHOOL"]].drop_duplicates().to_csv(paths[1], index=False)
    d[["SCHOOL"]].drop_duplicates().to_csv(paths[2], index=False)
    return paths


EG_MODEL = ["--id2", "CHILD", "--id3", "SCHOOL", "-1", "MATH = p0 + p1*YEAR + e", "-2", "p0 = b00 + r0", "-2",
            "p1 = b10 + r1", "-3", "b00 = g000 + u00", "-3", "b10 = g100"]


@pytest.mark.slow  # the homogeneous case runs in the default run as test_capabilities' three-level cell
@pytest.mark.parametrize("structure", ["homogeneous", "ar1"])
def test_cli_hmlm2_matches_nlme(structure, tmp_path):
    """HMLM2 as a user types it (three files, ML as HLM3's default): the homogeneous model is HLM3's own fit
    (the one engine's deviance, and nlme's), AR(1) within children matches nlme's lme with two grouping
    levels (held as in the engine test above), with the test against the homogeneous model."""
    out = tmp_path / "fit.json"
    proc = run_cli("fit", *eg_files(tmp_path), *EG_MODEL, "--level1-covariance", structure, "--occasion", "OCC",
                   "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    from hlmcli.report.schemas import first_error_file

    assert first_error_file(doc, "fit-3.json") is None
    v = doc["level1_covariance"]
    ref = REF2[f"{structure}_ML"]
    assert v["levels"] == 3 and v["check"]["converged"] and v["occasions"] == [1, 2, 3, 4, 5, 6]
    assert [f["estimate"] for f in v["fixed_effects"]] == pytest.approx(ref["fixef"], rel=1e-4)
    assert close(v["tau"], ref["tau_child"], 1e-4) and close(v["tau_level3"], ref["tau_school"], 1e-4)
    assert "τ (level-3 units)" in proc.stdout and f"{v['deviance']:.6f}" in proc.stdout
    if structure == "homogeneous":
        assert v["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
        assert v["deviance"] == pytest.approx(v["homogeneous_engine_deviance"], abs=1e-6)
        assert [f["estimate"] for f in v["fixed_effects"]] == pytest.approx(
            [f["estimate"] for f in doc["fixed_effects"]], rel=1e-6)
    else:
        assert ref["deviance"] - 1e-7 < v["deviance"] <= ref["deviance"]
        assert v["rho"] == pytest.approx(ref["rho"], rel=1e-4)
        t = v["test"]
        assert t["deviance_homogeneous"] == pytest.approx(REF2["homogeneous_ML"]["deviance"], abs=1e-6)
        assert t["df"] == 1 and f"{t['chi2']:.5f}" in proc.stdout


def test_compare_reads_the_structured_numbers_of_an_hmlm_fit():
    """An HMLM document's top-level deviance and n_params are the homogeneous model's (printed first, as HLM 7):
    compare reads the structured model's from its record instead, at three levels (HMLM2) too; the homogeneous
    structure is the same model as the top level."""
    from hlmcli.report.compare import structured_view

    structured = {"level1_covariance": {"structure": "ar1", "deviance": 434.789903, "n_params": 6, "aic": 446.8,
                                        "bic": 463.0, "check": {"converged": True}},
                  "deviance": 434.856485, "n_params": 5, "converged": True, "tau": [[1.0]], "sigma2": 2.0}
    view = structured_view(structured, "ar1.json")
    assert (view["deviance"], view["n_params"], view["converged"]) == (434.789903, 6, True)
    assert view["tau"] == [] and view["sigma2"] is None  # Δ is not σ²: no proportion of variance reduced
    assert structured_view(dict(structured, levels=3), "a.json")["n_params"] == 6
    with pytest.raises(DataError, match="older hlmcli"):
        structured_view({"level1_covariance": {"structure": "ar1", "deviance": 1.0, "n_params": 6}}, "a.json")
    plain = {"level1_covariance": {"structure": "homogeneous"}, "deviance": 1.0}
    assert structured_view(plain, "a.json") is plain


@pytest.mark.slow
def test_compare_of_a_structured_fit_as_typed(tmp_path):
    """Orthodont by ML: a plain fit without FEMALE against the AR(1) HMLM fit with it. compare tests the AR(1)
    model's deviance and parameters (6: γ00, γ01, γ10, τ00, σ², ρ), not the file's homogeneous ones (5). (1 s)"""
    common = [D / "orthodont1.csv", D / "orthodont2.csv", "--id", "ID", "-1", "DISTANCE = b0 + b1*AGE + r",
              "-2", "b1 = g10", "--ml"]
    ar1, plain = tmp_path / "ar1.json", tmp_path / "plain.json"
    proc = run_cli("fit", *common, "-2", "b0 = g00 + g01*FEMALE + u0", "--level1-covariance", "ar1",
                   "--occasion", "OCC", "--json-out", ar1)
    assert proc.returncode == 0, proc.stderr
    v = json.loads(ar1.read_text())["level1_covariance"]
    assert v["n_params"] == 6
    assert run_cli("fit", *common, "-2", "b0 = g00 + u0", "--json-out", plain).returncode == 0
    p = json.loads(plain.read_text())
    proc = run_cli("compare", plain, ar1)
    assert proc.returncode == 0, proc.stderr
    assert f"Deviance B = {v['deviance']:.6f} with 6 parameters" in proc.stdout
    assert f"Chi-square statistic = {p['deviance'] - v['deviance']:.6f}" in proc.stdout
    assert "Degrees of freedom = 2" in proc.stdout and "A homogeneous, B ar1" in proc.stdout
