"""Cross-classified models (HLM 7's HCM2; lme4's (1 | A) + (1 | B)): the engine's deviance and gradient,
the fits against lmer (tests/data/crossed/crossed_lme4.json, made with the data sets by
tests/reference_scripts/crossed_lme4.R: bobyqa rhoend 1e-12, then Newton-polished on lme4's own deviance
function), nested models fitted by the crossed engine against the nested engine, and the command line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hlmcli
from conftest import DATA, hlmcli as run_cli
from hlmcli.engine.crossed import CrossedSolve, CrossedStats, CrossedTerm, fit_crossed
from hlmcli.engine.unitsolve import factor
from hlmcli.report.schemas import first_error_file

X_DIR = DATA / "crossed"
REF = json.loads((X_DIR / "crossed_lme4.json").read_text())
FRAMES = {"attain": "scotssec.csv", "diameter": "penicillin.csv", "strength": "pastes.csv"}


def reference(formula: str, method: str) -> dict:
    for f in REF["fits"]:
        if f["formula"] == formula and f["method"] == method:
            return f
    raise KeyError((formula, method))


def frame(outcome: str) -> pd.DataFrame:
    return pd.read_csv(X_DIR / FRAMES[outcome])


def check_against_lme4(model, ref: dict, taus: dict) -> None:
    """Deviance to 1e-8 relative, γ, σ² and τ to 1e-6, standard errors to 1e-6 (the issue's bar)."""
    assert model.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    for name, est in ref["gamma"].items():
        ours = model.gamma["INTRCPT" if name == "(Intercept)" else name]
        assert ours == pytest.approx(est, rel=1e-6), name
        se = model.se["INTRCPT" if name == "(Intercept)" else name]
        assert se == pytest.approx(ref["se"][name], rel=1e-6), name
    assert model.sigma2 == pytest.approx(ref["sigma2"], rel=1e-6)
    assert set(taus) == set(ref["tau"])
    for name, ours in taus.items():
        theirs = np.atleast_2d(np.array(ref["tau"][name], float))
        scale = np.max(np.abs(theirs))
        assert np.max(np.abs(ours - theirs)) <= 1e-6 * scale, (ours, theirs)


FAST = [("attain ~ verbal + female + (1 | primary) + (1 | second)", "REML"),
        ("diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")]
SLOW = [(f["formula"], f["method"]) for f in REF["fits"] if (f["formula"], f["method"]) not in FAST
        and "||" not in f["formula"]]


def _fit_and_check(formula: str, method: str):
    ref = reference(formula, method)
    outcome = formula.split("~")[0].strip()
    m = hlmcli.fit_crossed(frame(outcome), formula, method)
    assert m.certified, m.results.failures
    check_against_lme4(m, ref, m.tau)
    return m


@pytest.mark.parametrize("formula,method", FAST)
def test_matches_lmer(formula, method):
    _fit_and_check(formula, method)


@pytest.mark.slow
@pytest.mark.parametrize("formula,method", SLOW)
def test_matches_lmer_every_reference_model(formula, method):
    """Random slopes on either factor of ScotsSec, REML and ML (one of them on the boundary: a ±1
    correlation), Penicillin, and Pastes's nested factors written as crossed ones."""
    _fit_and_check(formula, method)


def test_slope_on_boundary_is_reported_as_boundary():
    """ScotsSec's random slope of verbal across primary schools: lmer's θ ends on the boundary (a
    correlation of +1), and so does the certified fit, which says so."""
    formula = "attain ~ verbal + female + (1 + verbal | primary) + (1 | second)"
    ref = reference(formula, "REML")
    assert min(ref["theta"]) < 1e-8  # lme4's Cholesky factor has a zero on its diagonal
    m = hlmcli.fit_crossed(frame("attain"), formula, "REML")
    doc = m.to_dict()
    assert doc["random_effects"][0]["rank"] == 1 and doc["converged"] and doc["boundary"]
    assert any("+1" in note for note in doc["boundary_notes"])
    check_against_lme4(m, ref, m.tau)


def test_diagonal_tau_matches_lmer_double_bar():
    formula = "attain ~ verbal + female + (1 + verbal || second) + (1 | primary)"
    ref = reference(formula, "REML")
    m = hlmcli.fit_crossed(frame("attain"), formula, "REML")
    assert m.certified
    # lme4 splits (1 + verbal || second) into (1 | second) + (0 + verbal | second) and names them second.1 and
    # second (its VarCorr lists the slope first here); hlmcli names them second and second.1 in the formula's order
    check_against_lme4(m, ref, {"second": m.tau["second.1"], "second.1": m.tau["second"], "primary": m.tau["primary"]})
    # one residual file per factor: second's holds both of its terms, under HCM2's row letter
    table = m.residuals_factor("second")
    assert list(table.columns) == ["second", "n", "b_INTRCPT", "postvar_b_INTRCPT", "b_verbal", "postvar_b_verbal"]
    assert table.b_verbal.to_numpy() == pytest.approx(m.ranef["second.1"][:, 0], rel=1e-12)
    assert m.to_dict()["n_groups"] == {"second": 19, "primary": 148}


@pytest.mark.slow
def test_tau_diagonal_option_is_the_double_bar():
    formula = "attain ~ verbal + female + (1 + verbal || second) + (1 | primary)"
    m = hlmcli.fit_crossed(frame("attain"), formula.replace("||", "|"), "REML", tau="diagonal")
    assert m.deviance == pytest.approx(reference(formula, "REML")["deviance"], rel=1e-8)


# ---------------------------------------------------------------- the engine itself

def _terms(d: pd.DataFrame, spec) -> list[CrossedTerm]:
    out = []
    for name, cols in spec:
        codes, labels = pd.factorize(d[name], sort=True)
        Z = np.column_stack([np.ones(len(d)) if c == "1" else d[c].to_numpy(float) for c in cols])
        out.append(CrossedTerm(name, codes, Z, tuple(cols), tuple(map(str, labels))))
    return out


@pytest.mark.parametrize("reml", [True, False])
def test_gradient_is_the_derivative_of_the_deviance(reml):
    """tr(Γ_b E) = the derivative of the deviance along E (symmetric convention), against differences of
    the deviance, with a random slope on each factor: inside the cone (central differences) and on its
    boundary (G₂ singular, which the certificate needs): there along the feasible directions only, one-sided."""
    d = frame("attain").iloc[:600]
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1", "verbal"]), ("second", ["1", "verbal"])]))
    psd = lambda G: np.linalg.eigvalsh(G)[0] >= -1e-15  # noqa: E731
    dev = lambda Gs: CrossedSolve(st, [factor(g) for g in Gs]).profiled_deviance(reml)  # noqa: E731
    null = np.outer([1.0, -2.0], [1.0, -2.0]) / 5.0  # the null direction of the singular G₂ below, into the cone
    checked = 0
    for Gs in ([np.array([[0.3, 0.05], [0.05, 0.2]]), np.array([[0.2, -0.04], [-0.04, 0.1]])],
               [np.array([[0.3, 0.05], [0.05, 0.2]]), np.array([[0.2, 0.1], [0.1, 0.05]])]):
        grads = CrossedSolve(st, [factor(G) for G in Gs]).gradients(reml)
        for b, G in enumerate(Gs):
            directions = [np.diag([1.0, 0.0]), np.diag([0.0, 1.0]), np.array([[0.0, 0.5], [0.5, 0.0]]), null]
            for E in directions:
                h = 1e-6
                up, dn = list(Gs), list(Gs)
                up[b], dn[b] = G + h * E, G - h * E
                if psd(up[b]) and psd(dn[b]):
                    num, tol = (dev(up) - dev(dn)) / (2 * h), 1e-5
                elif psd(up[b]):
                    num, tol = (dev(up) - dev(Gs)) / h, 1e-3
                else:
                    continue
                assert np.sum(grads[b] * E) == pytest.approx(num, abs=tol * max(1.0, abs(num))), (b, E)
                checked += 1
    assert checked >= 12


def test_nested_model_by_the_crossed_engine_is_the_nested_fit():
    """Pastes (samples nested in batches, ids unique): the crossed engine's (1 | BATCH) + (1 | SAMPLE)
    is the three-level model the nested engine fits, number for number."""
    t3 = DATA / "three_level"
    nested = hlmcli.fit(t3 / "pastes_l1.csv", t3 / "pastes_l2.csv", level3=t3 / "pastes_l3.csv", id2="SAMPLE",
                        id3="BATCH", level1_eq="STRENGTH = p0 + e", level2_eqs=["p0 = b00 + r0"],
                        level3_eqs=["b00 = g000 + u00"], method="ML", warn=lambda message: None).to_dict()
    d = pd.read_csv(t3 / "pastes_l1.csv")
    crossed = fit_crossed(d.STRENGTH.to_numpy(float), np.ones((len(d), 1)), ["INTRCPT"],
                          _terms(d, [("BATCH", ["1"]), ("SAMPLE", ["1"])]), "ML")
    assert crossed.certificate.certified
    assert crossed.deviance == pytest.approx(nested["deviance"], rel=1e-10)
    assert crossed.gamma[0] == pytest.approx(nested["fixed_effects"][0]["estimate"], rel=1e-8)
    assert crossed.sigma2 == pytest.approx(nested["sigma2"], rel=1e-7)


@pytest.mark.slow
def test_nested_slopes_by_the_crossed_engine_is_the_nested_fit():
    """EG's growth model (random intercept and YEAR slope across children and across schools, ML): the
    crossed engine over (1 + YEAR | CHILDID) + (1 + YEAR | SCHOOLID) against the three-level engine."""
    t3 = DATA / "three_level"
    nested = hlmcli.fit(t3 / "eg_l1.csv", t3 / "eg_l2.csv", level3=t3 / "eg_l3.csv", id2="CHILDID", id3="SCHOOLID",
                        level1_eq="MATH = p0 + p1*YEAR + e", level2_eqs=["p0 = b00 + r0", "p1 = b10 + r1"],
                        level3_eqs=["b00 = g000 + u00", "b10 = g100 + u10"], method="ML").to_dict()
    d = pd.read_csv(t3 / "eg_l1.csv")
    assert d.groupby("CHILDID").SCHOOLID.nunique().max() == 1  # child ids are unique across schools
    X = np.column_stack([np.ones(len(d)), d.YEAR])
    crossed = fit_crossed(d.MATH.to_numpy(float), X, ["INTRCPT", "YEAR"],
                          _terms(d, [("CHILDID", ["1", "YEAR"]), ("SCHOOLID", ["1", "YEAR"])]), "ML")
    assert crossed.certificate.certified
    assert crossed.deviance == pytest.approx(nested["deviance"], rel=1e-10)
    est = [f["estimate"] for f in nested["fixed_effects"]]
    assert crossed.gamma == pytest.approx(est, rel=1e-6)


# ---------------------------------------------------------------- the command line

SCOTS = "attain ~ verbal + female + (1 | primary) + (1 | second)"


def test_cli_fit_prints_hcm2_tables_and_writes_json(tmp_path):
    out = tmp_path / "fit.json"
    proc = run_cli("fit", X_DIR / "scotssec.csv", "--formula", SCOTS, "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    ref = reference(SCOTS, "REML")
    text = proc.stdout
    assert "The row factor is primary: 148 groups" in text and "The column factor is second: 19 groups" in text
    assert f"Deviance = {ref['deviance']:.6f}" in text
    assert "Iterations stopped at the optimum" in text
    doc = json.loads(out.read_text())
    assert first_error_file(doc, "crossed-2.json") is None
    assert doc["kind"] == "cross-classified linear" and doc["converged"] and doc["n_level1"] == ref["n"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-8)
    got = {f["name"]: f["estimate"] for f in doc["fixed_effects"]}
    assert got["verbal"] == pytest.approx(ref["gamma"]["verbal"], rel=1e-6)
    assert [f["groups"] for f in doc["random_effects"]] == [148, 19] and doc["n_groups"] == {"primary": 148, "second": 19}
    # the API's document is the command's
    api = hlmcli.fit_crossed(X_DIR / "scotssec.csv", SCOTS).to_dict()
    assert api["deviance"] == doc["deviance"] and api["fixed_effects"] == doc["fixed_effects"]


def test_cli_refuses_what_a_crossed_fit_does_not_take(tmp_path):
    """--family is refused with its reason; --data-format, a data option the crossed fit reads, is not (it
    was refused first, as an option not taken)."""
    proc = run_cli("fit", X_DIR / "penicillin.csv", "--formula", "diameter ~ 1 + (1 | plate) + (1 | sample)",
                   "--data-format", "csv", "--family", "bernoulli")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "HGLM over crossed factors" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_values_are_left_out_and_counted(tmp_path):
    d = frame("diameter")
    d.loc[[3, 10], "diameter"] = np.nan
    m = hlmcli.fit_crossed(d, "diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")
    assert m.results.design.n_dropped == 2 and m.results.fit.n == len(d) - 2
    full = hlmcli.fit_crossed(d.dropna(), "diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")
    assert m.deviance == pytest.approx(full.deviance, rel=1e-12)


def _hcm2_files(tmp_path):
    """ScotsSec in HLM 7's HCM2 layout: the level-1 file with both ids, a row (primary school) file and a
    column (secondary school) file, each with a variable of its own."""
    d = frame("attain")
    rows = d.groupby("primary", as_index=False).verbal.mean().rename(columns={"verbal": "PVERBAL"})
    cols = d.groupby("second", as_index=False).female.mean().rename(columns={"female": "SFEMALE"})
    paths = [tmp_path / "l1.csv", tmp_path / "rows.csv", tmp_path / "cols.csv"]
    for table, path in zip((d, rows, cols), paths):
        table.to_csv(path, index=False)
    return paths


def test_cli_hcm2_layout_three_files(tmp_path):
    """LEVEL1 ROWS COLS with --row-id/--col-id: lmer's fit of the one-file data; an id missing from its
    file is one line."""
    paths = _hcm2_files(tmp_path)
    proc = run_cli("fit", *paths, "--row-id", "primary", "--col-id", "second", "--formula", SCOTS, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["deviance"] == pytest.approx(reference(SCOTS, "REML")["deviance"], rel=1e-8)
    rows = pd.read_csv(paths[1])
    rows.iloc[1:].to_csv(paths[1], index=False)  # the first primary school's record removed
    proc = run_cli("fit", *paths, "--row-id", "primary", "--col-id", "second", "--formula", SCOTS)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert f"row id {rows.primary.iloc[0]} is not in" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_hcm2_layout_row_and_column_variables(tmp_path):
    """The row and column files' variables in the formula: the fit of the same data merged by hand."""
    paths = _hcm2_files(tmp_path)
    with_vars = SCOTS.replace("female +", "female + PVERBAL + SFEMALE +")
    proc = run_cli("fit", *paths, "--row-id", "primary", "--col-id", "second", "--formula", with_vars, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    d = frame("attain")
    d["PVERBAL"] = d.groupby("primary").verbal.transform("mean")
    d["SFEMALE"] = d.groupby("second").female.transform("mean")
    one = hlmcli.fit_crossed(d, with_vars).to_dict()
    got = json.loads(proc.stdout)
    assert got["deviance"] == pytest.approx(one["deviance"], rel=1e-12)
    assert [f["estimate"] for f in got["fixed_effects"]] == \
        pytest.approx([f["estimate"] for f in one["fixed_effects"]], rel=1e-9)


@pytest.mark.parametrize("term, words", [("(1 | obs)", "holds one record"), ("(1 | one)", "has one group"),
                                         ("(1 | plate2)", "group the records alike")])
def test_unidentifiable_random_intercepts_are_refused(term, words):
    """Terms along which the deviance is exactly flat are refused before fitting, in one line (lmer refuses
    the first too: a grouping factor needs fewer levels than records)."""
    d = frame("diameter").assign(obs=lambda f: np.arange(len(f)), one=1, plate2=lambda f: "p" + f.plate)
    with pytest.raises(hlmcli.errors.ModelError, match=words):
        hlmcli.fit_crossed(d, f"diameter ~ 1 + (1 | plate) + {term}", "ML")


def test_every_singular_factor_gets_its_boundary_note():
    """A factor whose τ is singular with no zero variance and no ±1 correlation (rank 2 of 3) is named even
    when an earlier factor is on the boundary too (its note was dropped when any note came before)."""
    from types import SimpleNamespace

    from hlmcli.analysis.crossed_run import CrossedAnalysis

    v = np.array([[1.0, 0.5, 0.2], [0.3, 1.0, 0.7]])
    rank2 = v.T @ v  # 3 × 3 of rank 2: correlations well inside (-1, 1), every variance positive
    fit = SimpleNamespace(factors=["primary", "second"], columns=[("INTRCPT",), ("INTRCPT", "verbal", "female")],
                          taus=[np.zeros((1, 1)), rank2], certificate=SimpleNamespace(ranks=(0, 2)))
    notes = CrossedAnalysis("", None, None, fit, "").boundary_notes()
    assert notes == ["the variance of primary's random effects is 0 (on the boundary)",
                     "τ of second is singular (rank 2 of 3): on the boundary"]


def test_an_outcome_the_fixed_effects_fit_exactly_is_refused():
    """A constant outcome, or one the fixed effects' columns fit exactly, has σ² → 0 with the likelihood
    unbounded: no optimum, so refused in one line naming the column (it was printed as certified, with
    σ² = 0 and a t-ratio of 10^17)."""
    from hlmcli.errors import ModelError

    d = frame("diameter")
    d["x"] = np.arange(len(d)) % 7
    for outcome in (np.full(len(d), 23.0), 2.0 + 3.0 * d.x):
        d["diameter"] = outcome
        with pytest.raises(ModelError, match="column diameter: the outcome is an exact linear function"):
            hlmcli.fit_crossed(d, "diameter ~ x + (1 | plate) + (1 | sample)", "ML")
    d["diameter"] += 1e-3 * np.sin(np.arange(len(d)))  # a little noise: a likelihood with a maximum again
    assert hlmcli.fit_crossed(d, "diameter ~ x + (1 | plate) + (1 | sample)", "ML").certified


# ---------------------------------------------------------------- one Results: d.f., EB, tables, tests, files
# lmerTest's Satterthwaite d.f. and lme4's conditional variances (ranef(condVar = TRUE)) at the polished
# optimum: tests/data/crossed/crossed_lmertest.json, made by tests/reference_scripts/crossed_lmertest.R.

LT = json.loads((X_DIR / "crossed_lmertest.json").read_text())


def lmertest(formula: str, method: str) -> dict:
    return next(f for f in LT["fits"] if f["formula"] == formula and f["method"] == method)


def _named(values, names) -> dict:
    """lmerTest's per-coefficient numbers: a dict, or (one fixed effect) a list of one."""
    return values if isinstance(values, dict) else dict(zip(names, values))


def check_satterthwaite(m, ref: dict) -> None:
    """d.f. to 1e-6 relative (lmerTest's numDeriv Hessian at the same optimum), p-values from them."""
    rows = m.fixed_effects
    df, p = _named(ref["df"], list(rows.term)), _named(ref["p"], list(rows.term))
    for _, r in rows.iterrows():
        assert r.df == pytest.approx(df[r.term], rel=1e-6), r.term
        assert r.p == pytest.approx(p[r.term], rel=1e-5, abs=1e-300), r.term


def check_condvar(m, ref: dict) -> None:
    """Each group's EB estimate and posterior variance against lme4's ranef(condVar = TRUE), to 1e-6 of the
    largest (the optimum is the same to about 1e-7 in θ)."""
    for g in ref["ranef"]:
        table = m.residuals_factor(g["factor"])
        at = {str(i): k for k, i in enumerate(table.iloc[:, 0])}
        rows = [at[i] for i in g["ids"]]
        effects = np.array(g["effects"], float)
        ours = table.iloc[rows, 2::2].to_numpy()
        assert np.max(np.abs(ours - effects)) <= 1e-6 * np.max(np.abs(effects)), g["factor"]
        pv = np.array(g["postvar"], float)
        theirs = pv[:, None] if pv.ndim == 1 else np.stack([pv[:, k, k] for k in range(pv.shape[1])], axis=1)
        variances = table.iloc[rows, 3::2].to_numpy()
        assert np.max(np.abs(variances - theirs)) <= 1e-6 * np.max(np.abs(theirs)), g["factor"]


LT_FAST = [(SCOTS, "REML"), ("diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")]


@pytest.mark.parametrize("formula,method", LT_FAST)
def test_satterthwaite_and_condvar_match_lmertest(formula, method):
    ref = lmertest(formula, method)
    m = hlmcli.fit_crossed(frame(formula.split("~")[0].strip()), formula, method, df="satterthwaite")
    assert isinstance(m, hlmcli.Results) and m.certified
    assert m.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    check_satterthwaite(m, ref)
    check_condvar(m, ref)


@pytest.mark.slow
@pytest.mark.parametrize("formula,method", [(f["formula"], f["method"]) for f in LT["fits"]
                                            if (f["formula"], f["method"]) not in LT_FAST])
def test_satterthwaite_and_condvar_match_lmertest_every_model(formula, method):
    """Penicillin by REML, ScotsSec by ML, and a random slope on the boundary (correlation +1)."""
    d = frame(formula.split("~")[0].strip())
    d["verbal_c"] = d["verbal"] - d["verbal"].mean() if "verbal" in d else 0.0
    ref = lmertest(formula, method)
    m = hlmcli.fit_crossed(d, formula, method, df="satterthwaite")
    assert m.certified and m.deviance == pytest.approx(ref["deviance"], rel=1e-8)
    check_satterthwaite(m, ref)
    check_condvar(m, ref)


def test_results_accessors_and_schema():
    """A crossed fit is the one `Results`: its JSON validates against crossed-2.json with the other fits'
    field names, and the accessors read the same numbers (lmer's, crossed_lme4.json)."""
    ref = reference("diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")
    m = hlmcli.fit_crossed(frame("diameter"), "diameter ~ 1 + (1 | plate) + (1 | sample)", "ML")
    doc = m.to_dict()
    assert first_error_file(doc, "crossed-2.json") is None
    assert doc["fixed_effects"][0]["label"] == "THETA0" and doc["fixed_effects"][0]["df"] is None
    assert doc["fixed_effects"][0]["estimate"] == pytest.approx(ref["gamma"]["(Intercept)"], rel=1e-6)
    assert [b["factor"] for b in doc["random_effects"]] == ["plate", "sample"]
    assert doc["n_params"] == 4 and doc["aic"] == pytest.approx(ref["deviance"] + 8, rel=1e-10)
    assert m.fixed_effects.estimate.iloc[0] == doc["fixed_effects"][0]["estimate"]
    assert float(m.tau["plate"].iloc[0, 0]) == pytest.approx(ref["tau"]["plate"][0][0] if isinstance(
        ref["tau"]["plate"][0], list) else ref["tau"]["plate"][0], rel=1e-6)
    vc = m.variance_components
    assert list(vc.factor[:2]) == ["plate", "sample"] and vc.variance.iloc[-1] == pytest.approx(ref["sigma2"], rel=1e-6)
    assert list(m.random_effects("sample").index) == list(m.labels["sample"])
    # statsmodels' names: params, bse (lmer's SE), cov_params, cov_re (block-diagonal over the factors)
    assert m.params["(Intercept)"] == pytest.approx(ref["gamma"]["(Intercept)"], rel=1e-6)
    assert m.bse["(Intercept)"] == pytest.approx(ref["se"]["(Intercept)"], rel=1e-6)
    assert m.cov_params().iloc[0, 0] == pytest.approx(m.bse.iloc[0] ** 2, rel=1e-12)
    assert list(m.cov_re.index) == ["(Intercept)|plate", "(Intercept)|sample"] and m.cov_re.iloc[0, 1] == 0.0
    assert first_error_file({**doc, "fixed_effects": [{**doc["fixed_effects"][0], "estimate": "x"}]},
                            "crossed-2.json").startswith("fixed_effects[0].estimate")


def test_cli_every_output_of_one_fit(tmp_path):
    """One command as a user types it: --df satterthwaite, --test, --compare-deviance, the residual file of
    each factor and of the records with --keep, the JSON, and the text."""
    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    ref = lmertest(formula, "ML")
    d = frame("diameter")
    d["batch"] = d["plate"].str[0]  # constant within a plate, varies within a sample
    data = tmp_path / "pen.csv"
    d.to_csv(data, index=False)
    files = {k: tmp_path / f"{k}.csv" for k in ("json", "l1", "plate", "sample")}
    proc = run_cli("fit", data, "--formula", formula, "--ml", "--df", "satterthwaite", "--test", "THETA0 = 23",
                   "--compare-deviance", "340", "--compare-params", "3", "--json-out", files["json"],
                   "--residuals-l1", files["l1"], "--residuals-l2", files["plate"], "--residuals-l3", files["sample"],
                   "--keep", "batch")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(files["json"].read_text())
    assert first_error_file(doc, "crossed-2.json") is None and doc["df_method"] == "satterthwaite"
    f = doc["fixed_effects"][0]
    assert f["df"] == pytest.approx(ref["df"][0], rel=1e-6) and f["p_value"] == pytest.approx(ref["p"][0], rel=1e-5)
    wald = doc["hypothesis_tests"][0]["model"]
    assert wald["chi2"] == pytest.approx(((f["estimate"] - 23) / f["se"]) ** 2, rel=1e-10) and wald["df"] == 1
    lr = doc["deviance_test"]
    assert lr["chi2"] == pytest.approx(340 - ref["deviance"], rel=1e-8) and lr["df"] == 1  # 4 parameters against 3
    assert "Approx. d.f." in proc.stdout and "THETA0 = 23" in proc.stdout
    plate, sample, l1 = (pd.read_csv(files[k], dtype={"plate": str, "sample": str}) for k in ("plate", "sample", "l1"))
    assert list(plate.columns) == ["plate", "n", "b_INTRCPT", "postvar_b_INTRCPT", "batch"]
    assert plate.batch.notna().all() and sample.batch.isna().all()  # a sample's plates differ in batch
    lme4 = {g["factor"]: g for g in ref["ranef"]}
    assert dict(zip(sample["sample"], sample.postvar_c_INTRCPT)) == pytest.approx(
        dict(zip(lme4["sample"]["ids"], lme4["sample"]["postvar"])), rel=1e-6)
    assert len(l1) == len(d) and np.allclose(l1.diameter - l1.fitted, l1.residual)
    assert l1.fitted_fixed.to_numpy() == pytest.approx(np.full(len(d), f["estimate"]))


PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def test_cli_table_compare_and_formats(tmp_path):
    """Saved Penicillin fits by ML with other fixed effects (a plate-level x added): `compare` tests their
    deviances (lmer's for the model without x), `table` sets them side by side; REML fits with other fixed
    effects are refused in one line; --format latex is the paper table."""
    d = frame("diameter")
    d["x"] = (d["plate"].str[0] < "m").astype(float)
    saved = {}
    for name, formula, method in (("ml", PEN, "ML"), ("ml_x", PEN.replace("~ 1", "~ x"), "ML"), ("reml", PEN, "REML"),
                                  ("reml_x", PEN.replace("~ 1", "~ x"), "REML")):
        saved[name] = tmp_path / f"{name}.json"
        saved[name].write_text(hlmcli.fit_crossed(d, formula, method).to_json())
    proc = run_cli("compare", saved["ml"], saved["ml_x"], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ref = reference(PEN, "ML")
    assert out["deviance_a"] == pytest.approx(ref["deviance"], rel=1e-8) and out["df"] == 1
    assert out["chi2"] == pytest.approx(ref["deviance"] - out["deviance_b"], rel=1e-8)
    assert out["n_params_a"] == 4 and out["n_params_b"] == 5  # HLM's ML count: γ, σ² and τ
    proc = run_cli("compare", saved["reml"], saved["reml_x"])
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "refit both with --ml" in proc.stderr
    proc = run_cli("table", saved["ml"], saved["ml_x"], "--format", "markdown")
    assert proc.returncode == 0, proc.stderr
    assert "Var: INTRCPT (sample)" in proc.stdout and "24 (plate) × 6 (sample)" in proc.stdout
    proc = run_cli("table", saved["ml"], "--se", "robust")
    assert proc.returncode == 1 and "no robust standard errors" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("fit", X_DIR / "penicillin.csv", "--formula", PEN, "--format", "latex")
    assert proc.returncode == 0, proc.stderr
    ref = reference(PEN, "REML")
    assert "\\begin{tabular}" in proc.stdout and f"{ref['gamma']['(Intercept)']:.3f}" in proc.stdout
    assert "Robust" not in proc.stdout  # crossed factors have no cluster for a sandwich


@pytest.mark.slow
def test_cli_compare_ml_fits_with_other_fixed_effects(tmp_path):
    """ScotsSec by ML with and without female: `compare` and `table` of the saved fits, --format csv (tidy)."""
    small, full = tmp_path / "small.json", tmp_path / "full.json"
    for path, formula in ((small, "attain ~ verbal + (1 | primary) + (1 | second)"), (full, SCOTS)):
        proc = run_cli("fit", X_DIR / "scotssec.csv", "--formula", formula, "--ml", "--format", "csv",
                       "--json-out", path, "-q")
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("effect,group,term,estimate,std.error")
    tidy = pd.read_csv(__import__("io").StringIO(proc.stdout))
    ref = reference(SCOTS, "ML")
    assert tidy.set_index("term").loc["verbal", "estimate"] == pytest.approx(ref["gamma"]["verbal"], rel=1e-6)
    assert set(tidy.group.dropna()) == {"primary", "second", "Residual"}
    proc = run_cli("compare", small, full, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["deviance_b"] == pytest.approx(ref["deviance"], rel=1e-8)
    assert out["chi2"] == pytest.approx(out["deviance_a"] - ref["deviance"], rel=1e-10) and out["df"] == 1
    proc = run_cli("table", small, full, "--format", "html")
    assert proc.returncode == 0 and "148 (primary) × 19 (second)" in proc.stdout


def test_cli_caterpillar_per_factor_and_refused_plots(tmp_path):
    png = tmp_path / "cat.png"
    proc = run_cli("plot", "caterpillar", X_DIR / "penicillin.csv", "--formula", PEN, "-o", png)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from hlmcli.errors import ModelError

    with pytest.raises(ModelError, match="draw the caterpillar plot"):
        hlmcli.fit_crossed(frame("diameter"), PEN).plot("units", tmp_path / "u.png")
    assert not (tmp_path / "u.png").exists()


def test_cli_refuses_df_rules_and_bad_tests_in_one_line(tmp_path):
    base = [X_DIR / "penicillin.csv", "--formula", "diameter ~ 1 + (1 | plate) + (1 | sample)"]
    for extra, words in ((["--df", "hlm"], "not published"), (["--test", "g01 = 0"], "THETA0 (INTRCPT)"),
                         (["--test", "THETA3 = 0"], "no THETA3"), (["--residuals-l4", tmp_path / "x.csv"],
                                                                     "2 grouping factors")):
        proc = run_cli("fit", *base, *extra)
        assert proc.returncode in (1, 2) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_cli_uncertified_fit_writes_nothing_and_exits_3(tmp_path):
    """One iteration is not an optimum: exit 3 with the certificate's line, and neither the JSON nor the
    residual files are written (-o only with --keep-failed-output)."""
    out = {k: tmp_path / f"{k}.csv" for k in ("json", "l2", "text")}
    proc = run_cli("fit", X_DIR / "penicillin.csv", "--formula", PEN, "--max-iterations", "1", "--json-out", out["json"],
                   "--residuals-l2", out["l2"], "-o", out["text"])
    assert proc.returncode == 3 and "not certified" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


def test_lower_face_newton_by_secants_ends_where_fresh_hessians_do():
    """The lower-face check's Newton (search.best_lower_face) with secant updates between fresh Hessians
    reaches the same face minimum as with the stale Hessian kept, in fewer deviance evaluations: on the
    face τ_second = 0 of ScotsSec's crossed intercepts, entered at G_primary = 0.1 (its minimum there is
    near 0.066, where the stale Hessian overshoots step after step)."""
    from hlmcli.engine.certificate import BlockFace
    from hlmcli.engine.crossed import Objective
    from hlmcli.engine.search import newton_on_face
    d = frame("attain")
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1"]), ("second", ["1"])]))
    ends = {}
    for secant in (False, True):
        obj = Objective(st, True)
        face = BlockFace((np.array([[0.1]]), np.zeros((1, 1))), diagonal=(True, True))
        x = face.x0()
        d0, Gam = obj.at(face.G(x))
        G1, d1, _, saddle, data = newton_on_face(obj, face, x, d0, Gam, obj.noise(face.G(x)), secant=secant)
        assert saddle is None and data is not None  # ended on a fresh Hessian's decrement
        ends[secant] = (G1[0][0, 0], d1, obj.count)
    assert ends[True][1] == pytest.approx(ends[False][1], rel=1e-13)
    assert ends[True][0] == pytest.approx(ends[False][0], rel=1e-5)
    assert ends[True][2] < ends[False][2]


def test_lower_face_check_reaches_a_face_minimum_its_first_newton_run_stops_short_of():
    """The global check (search.best_lower_face) must find a lower face whose minimum lies below the
    answer's deviance even where Newton with a stale Hessian runs out of steps far above it: on ScotsSec's
    face τ_second = 0 entered at G_primary = 0.01 (its minimum is near 0.066), 30 stale-Hessian steps
    ended 0.17 above the minimum, and a face 0.01 below the answer went unseen."""
    from hlmcli.engine.certificate import BlockFace
    from hlmcli.engine.crossed import Objective
    from hlmcli.engine.search import best_lower_face, newton_on_face
    d = frame("attain")
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1"]), ("second", ["1"])]))
    obj = Objective(st, True)
    make_face = lambda Gc: BlockFace(Gc, diagonal=(True, True))  # noqa: E731
    face = make_face((np.array([[0.1]]), np.zeros((1, 1))))
    x = face.x0()
    d0, Gam = obj.at(face.G(x))
    _, face_min, _, _, data = newton_on_face(obj, face, x, d0, Gam, obj.noise(face.G(x)), secant=True)
    assert data is not None
    obj.secant_faces = False  # the stale-Hessian Newton the other objectives use
    answer = face_min + 0.01  # an answer the face's minimum beats by 0.01
    best, unresolved = best_lower_face(obj, [(np.array([[0.01]]), np.zeros((1, 1)))], make_face, answer,
                                       obj.noise(face.G(x)))
    assert best is not None and best[1] == pytest.approx(face_min, abs=1e-6) and unresolved == 0


def test_lower_face_objective_is_the_full_deviance_on_that_face():
    """On a face where some factors' τ is 0, the lower-face check solves the model without them
    (crossed.FaceObjective): the same deviance and, in the kept blocks, the same gradient as the full
    two-factor solve, here with a random slope on the kept factor and each factor dropped in turn; a
    point off that face is solved by the full model; its solves count as evaluations."""
    from hlmcli.engine.crossed import FaceObjective, Objective
    d = frame("attain").iloc[:1500]
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1", "verbal"]), ("second", ["1"])]))
    G_primary, G_second = np.array([[0.3, 0.05], [0.05, 0.2]]), np.array([[0.15]])
    for reml in (True, False):
        for Gs, kept in (((G_primary, np.zeros((1, 1))), 0), ((np.zeros((2, 2)), G_second), 1)):
            full = Objective(st, reml)
            face = full.lower_face_objective(Gs)
            assert isinstance(face, FaceObjective) and face.keep == (kept,) and len(face.stats.terms) == 1
            d_face, g_face = face.at(Gs)
            d_full, g_full = CrossedSolve(st, [factor(G) for G in Gs]).profiled_deviance(reml), \
                CrossedSolve(st, [factor(G) for G in Gs]).gradients(reml)
            assert d_face == pytest.approx(d_full, rel=1e-13)
            assert np.allclose(g_face[kept], g_full[kept], rtol=1e-9, atol=1e-9 * np.abs(g_full[kept]).max())
            assert np.isnan(g_face[1 - kept]).all()  # a dropped block's gradient is not formed
            assert full.count == 1
            off = (G_primary, G_second)  # the dropped block not 0: the full model
            assert face.value(off) == pytest.approx(CrossedSolve(st, [factor(G) for G in off]).profiled_deviance(reml),
                                                    rel=1e-15)
    assert Objective(st, True).lower_face_objective((G_primary, G_second)).__class__ is Objective
    assert Objective(st, True).lower_face_objective((np.zeros((2, 2)), np.zeros((1, 1)))).__class__ is Objective


def test_crossed_search_starts_from_the_one_factor_fits(monkeypatch):
    """Each factor's start is the minimum of the model with that factor alone (its one-factor deviance's
    gradient vanishes there, against the gradient at identity/4: ScotsSec's τ_second alone is not 0,
    where L-BFGS-B alone stops), and the fit from those starts (taken here whatever the dense block's
    size) matches lmer."""
    from hlmcli.engine import crossed
    from hlmcli.engine.crossed import Objective, one_factor_starts
    d = frame("attain")
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1"]), ("second", ["1"])]))
    obj = Objective(st, True)
    starts = one_factor_starts(obj, (1, 1), (False, False), 100)
    assert obj.count > 0  # the one-factor solves are counted
    for b, G in enumerate(starts):
        single = Objective(st.subset((b,)), True)
        at_start = single.at((G,))[1][0][0, 0]
        at_identity = single.at((0.25 * np.eye(1),))[1][0][0, 0]
        assert abs(at_start) <= 1e-5 * abs(at_identity), (b, at_start, at_identity)
    formula = "attain ~ verbal + female + (1 | primary) + (1 | second)"
    # ScotsSec's dense block (19 secondary schools) is too small for them to pay: the identity start
    m = hlmcli.fit_crossed(d, formula, "REML")
    assert m.certified and m.results.fit.start == "identity"
    monkeypatch.setattr(crossed, "ONE_FACTOR_STARTS_MIN_DENSE", 0)
    m = hlmcli.fit_crossed(d, formula, "REML")
    assert m.certified and m.results.fit.start.startswith("one-factor fits")
    check_against_lme4(m, reference(formula, "REML"), m.tau)


@pytest.mark.parametrize("reml", [True, False])
def test_random_intercepts_fast_path_is_the_general_solve(reml):
    """With every block 1 × 1 the Schur complement S and the first factor's trace are formed from the
    fixed pattern of C_R1C_1R (CrossedStats.scalar_pairs): the deviance and gradient equal the general
    blocked solve's (pattern switched off) to rounding, with one and with two dense factors, inside the
    cone, near a zero λ (where the dense factors' T is formed) and at every dense λ zero (S = I taken
    as it is), and the gradient is the derivative of the deviance (central differences)."""
    d = frame("attain").iloc[:900]
    d = d.assign(third=np.arange(len(d)) % 7)
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    for spec in ([("primary", ["1"]), ("second", ["1"])], [("primary", ["1"]), ("second", ["1"]), ("third", ["1"])]):
        st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, spec))
        general = CrossedStats(d.attain.to_numpy(float), X, _terms(d, spec))
        general._scalar_pairs = None  # the blocked solve of any block shape
        assert st.scalar_pairs() is not None and st.Q2 > 0
        for values in ([0.3, 0.5, 0.2], [0.3, 1e-4, 0.7], [0.3, 0.0, 0.0]):
            lams = [np.array([[v]]) for v in values[:len(spec)]]
            fast, slow = CrossedSolve(st, lams), CrossedSolve(general, lams)
            assert fast.profiled_deviance(reml) == pytest.approx(slow.profiled_deviance(reml), rel=1e-13)
            if not any(values[1:len(spec)]):  # the first factor's model alone (no dense block at all)
                alone = CrossedSolve(st.subset((0,)), lams[:1])
                assert fast.profiled_deviance(reml) == pytest.approx(alone.profiled_deviance(reml), rel=1e-13)
            for g_fast, g_slow in zip(fast.gradients(reml), slow.gradients(reml)):
                assert g_fast[0, 0] == pytest.approx(g_slow[0, 0], rel=1e-9, abs=1e-9)
            Gs = [lam @ lam.T for lam in lams]
            for b, G in enumerate(Gs):
                if G[0, 0] == 0.0:  # on the boundary: the equality with the general solve above
                    continue
                h = 1e-6 * max(G[0, 0], 1e-3)
                up, dn = list(Gs), list(Gs)
                up[b], dn[b] = G + h, G - h
                dev = [CrossedSolve(st, [np.sqrt(g) for g in Gx]).profiled_deviance(reml) for Gx in (up, dn)]
                num = (dev[0] - dev[1]) / (2 * h)
                assert fast.gradients(reml)[b][0, 0] == pytest.approx(num, abs=1e-5 * max(1.0, abs(num)))


def test_newton_start_reaches_the_optimum_where_lbfgsb_stops_at_once():
    """From the one-factor starts, Newton (the one-factor Hessians, a crossed forward-difference Hessian
    after the first step, then BFGS) ends where L-BFGS-B's gradient test (NESTED_LBFGS.gtol) already
    holds, at lmer's optimum (ScotsSec)."""
    from hlmcli.engine.crossed import Objective, newton_start, one_factor_starts
    from hlmcli.engine.nested_fit import NESTED_LBFGS
    formula = "attain ~ verbal + female + (1 | primary) + (1 | second)"
    d = frame("attain")
    X = np.column_stack([np.ones(len(d)), d.verbal, d.female])
    st = CrossedStats(d.attain.to_numpy(float), X, _terms(d, [("primary", ["1"]), ("second", ["1"])]))
    obj = Objective(st, True)
    starts = one_factor_starts(obj, (1, 1), (False, False), 100)
    Gs, steps = newton_start(obj, starts, (False, False), NESTED_LBFGS.gtol)
    assert 1 <= steps <= 8
    _, gams = obj.at(Gs)
    theta_gradient = [2.0 * g[0, 0] * np.sqrt(G[0, 0]) for g, G in zip(gams, Gs)]
    assert max(map(abs, theta_gradient)) <= NESTED_LBFGS.gtol
    ref = reference(formula, "REML")
    us = obj.solve(tuple(np.sqrt(G) for G in Gs))
    sigma2 = st.c ** 2 * us.sigma2_hat(True)
    assert sigma2 == pytest.approx(ref["sigma2"], rel=1e-6)
    for b, name in enumerate(("primary", "second")):
        tau = sigma2 * (st.T[b] @ Gs[b] @ st.T[b].T)[0, 0]
        assert tau == pytest.approx(float(np.ravel(ref["tau"][name])[0]), rel=1e-6), name
