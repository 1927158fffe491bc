"""Constraints on γ (--constrain "g20 = g30", HLM 7's constrain): the constrained fit is the model refitted
by hand with the tied predictors summed (exact), and lmer on the summed predictor I(MINORITY + FEMALE)
matches it (tests/data/constraints/hsb_tied_lme4.json, made by tests/reference_scripts/constraints_lme4.R)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hlmcli
from hlmcli.engine.constraints import constraint_basis
from hlmcli.errors import ModelError
from conftest import DATA, SAMPLE, hlmcli as run_cli

REF = json.loads((DATA / "constraints" / "hsb_tied_lme4.json").read_text())
L1, L2 = SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv"
TIED = ("MATHACH = b0 + b1*group(SES) + b2*MINORITY + b3*FEMALE + r",
        ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + u1", "b2 = g20", "b3 = g30"])
SUMMED = ("MATHACH = b0 + b1*group(SES) + b2*S + r", ["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + u1", "b2 = g20"])
LME4_ORDER = ["(Intercept)", "SECTOR", "SES_gc", "S", "S"]  # γ00, γ01, γ10, γ20, γ30 (γ20 = γ30 = S's)


@pytest.fixture(scope="module")
def frames():
    l1 = pd.read_csv(L1)
    l1["S"] = l1["MINORITY"] + l1["FEMALE"]
    return l1, pd.read_csv(L2)


@pytest.fixture(scope="module")
def reml_pair(frames):
    """The constrained REML fit and the one refitted by hand on S = MINORITY + FEMALE."""
    tied = hlmcli.fit(*frames, id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain=["g20 = g30"])
    summed = hlmcli.fit(*frames, id="ID", level1_eq=SUMMED[0], level2_eqs=SUMMED[1])
    return tied.to_dict(), summed.to_dict()


# ---------------------------------------------------------------- the reparametrisation γ = Hδ

def test_basis_keeps_the_first_gamma_of_a_tie_free():
    b = constraint_basis(np.array([[0, 0, 1, -1]]))  # γ2 = γ3
    assert b.free == (0, 1, 2) and b.eliminated == (3,)
    assert b.H.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]  # δ2's column is X2 + X3
    three = constraint_basis(np.array([[1, -1, 0, 0], [0, 1, -1, 0]]))  # γ0 = γ1 = γ2
    assert three.free == (0, 3) and three.H[:3, 0].tolist() == [1, 1, 1]
    scaled = constraint_basis(np.array([[0, 2, -1]]))  # γ2 = 2γ1
    assert scaled.H.tolist() == [[1, 0], [0, 1], [0, 2]]


def test_basis_refuses_dependent_restrictions():
    with pytest.raises(ModelError, match="linearly dependent"):
        constraint_basis(np.array([[1, -1, 0], [2, -2, 0]]))


# ---------------------------------------------------------------- the fit

def test_constrained_fit_is_the_summed_predictor_fit(reml_pair):
    tied, summed = reml_pair
    assert tied["converged"] and tied["certificate"]["certified"]
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-10)
    assert tied["n_params"] == summed["n_params"]
    assert np.allclose(tied["tau"], summed["tau"], rtol=1e-10) and tied["sigma2"] == pytest.approx(summed["sigma2"], rel=1e-10)
    by_hand = {f["gamma"]: f for f in summed["fixed_effects"]}
    for f in tied["fixed_effects"]:
        g = by_hand["γ20" if f["gamma"] in ("γ20", "γ30") else f["gamma"]]
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-10), (f["gamma"], key)
    assert tied["constraints"]["eliminated"] == [{"gamma": "g30", "equals": [{"coefficient": 1.0, "gamma": "g20"}]}]
    # REML: the test refits both models by ML (lmer's ML deviances of the summed and the separate predictors)
    t = tied["constraint_test"]
    assert t["refitted_ml"] and t["deviance_constrained"] == pytest.approx(REF["slope_ml"]["deviance"], abs=1e-6)
    assert t["deviance_unconstrained"] == pytest.approx(REF["slope_unconstrained_ml"]["deviance"], abs=1e-6)


def test_constrained_fit_matches_lmer_on_the_summed_predictor(reml_pair):
    tied, _ = reml_pair
    ref = REF["slope_reml"]
    assert tied["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    for f, name in zip(tied["fixed_effects"], LME4_ORDER):
        assert f["estimate"] == pytest.approx(ref["fixef"][name], rel=1e-5)
        assert f["se"] == pytest.approx(ref["se"][name], rel=1e-5)
    assert np.allclose(tied["tau"], ref["tau"], rtol=1e-5) and tied["sigma2"] == pytest.approx(ref["sigma2"], rel=1e-5)


def test_cli_ml_constrained_fit_and_its_likelihood_ratio_test(tmp_path):
    """As a user types it, with Greek labels: the table marks the tied γs, and the test of the tie
    compares lmer's ML deviances of the summed and the separate predictors."""
    out = tmp_path / "fit.json"
    proc = run_cli("fit", L1, L2, "--id", "ID", "-1", TIED[0], *[a for eq in TIED[1] for a in ("-2", eq)], "--ml",
                   "--constrain", "γ20 = γ30", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    assert "γ20*" in proc.stdout and "γ30*" in proc.stdout and "* constrained (--constrain): γ30 = γ20" in proc.stdout
    assert "Likelihood-ratio test of the constraints (γ20 = γ30)" in proc.stdout
    doc = json.loads(out.read_text())
    from hlmcli.report.schemas import first_error

    assert first_error(doc, "fit") is None
    ref = REF["slope_ml"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    for f, name in zip(doc["fixed_effects"], LME4_ORDER):
        assert f["estimate"] == pytest.approx(ref["fixef"][name], rel=1e-5)
        assert f["se"] == pytest.approx(ref["se"][name], rel=1e-5)
    t = doc["constraint_test"]
    assert t["deviance_unconstrained"] == pytest.approx(REF["slope_unconstrained_ml"]["deviance"], abs=1e-6)
    assert t["chi2"] == pytest.approx(ref["deviance"] - REF["slope_unconstrained_ml"]["deviance"], abs=2e-6)
    assert t["df"] == 1 and t["params_unconstrained"] - t["params_constrained"] == 1 and not t["refitted_ml"]


def test_satterthwaite_df_of_tied_gammas_are_those_of_the_summed_predictor(frames):
    tied = hlmcli.fit(*frames, id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g20 = g30",
                      df="satterthwaite").to_dict()
    summed = hlmcli.fit(*frames, id="ID", level1_eq=SUMMED[0], level2_eqs=SUMMED[1], df="satterthwaite").to_dict()
    df = {f["gamma"]: f["df"] for f in summed["fixed_effects"]}
    for f in tied["fixed_effects"]:
        assert f["df"] == pytest.approx(df["γ20" if f["gamma"] == "γ30" else f["gamma"]], rel=1e-6)


def test_tied_gammas_of_different_equations_share_one_df(frames):
    """γ01 (SECTOR on the intercept, J - S - 1 = 158) tied to γ10 (the mean of the random SES slope, J - 1 = 159
    alone): one parameter, one t-ratio, so one d.f. and one p, the smaller (γ10's was J = 160, more than
    unconstrained)."""
    tied = hlmcli.fit(*frames, id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g01 = g10").to_dict()
    rows = {f["gamma"]: f for f in tied["fixed_effects"]}
    for key in ("estimate", "se", "df", "p"):
        assert rows["γ10"][key] == rows["γ01"][key], key
    assert rows["γ10"]["df"] == 160 - 1 - 1 and rows["γ20"]["df"] == 7185 - 2 * 160 - 2


def test_tied_df_one_per_parameter():
    from hlmcli.engine.constraints import tied_df

    H = constraint_basis(np.array([[0, 1, -1, 0, 0], [0, 0, 1, 0, -2], [1, 0, 0, -1, -1]]), "t").H
    # γ1 = γ2 = 2γ4: one parameter (70, 60, 80 -> 60); γ3 = γ0 - γ4, written in γ0 and γ1: min(90, 50, 60)
    assert tied_df([50, 70, 60, 90, 80], H).tolist() == [50, 60, 60, 50, 60]


def test_the_note_says_what_each_eliminated_gamma_is():
    from hlmcli.report.report import Symbols, constraint_note

    def record(*equals):
        return {"eliminated": [{"gamma": "g30", "equals": [{"coefficient": c, "gamma": g} for c, g in equals]}]}

    sym = Symbols(ascii_only=False)
    assert constraint_note(record((-1.0, "g10"), (1.0, "g20")), sym)[0] == (
        "* constrained (--constrain): γ30 = -γ10 + γ20; given by the free γs, with the d.f. counted as constrained")
    assert constraint_note(record((0.5, "g20")), sym)[0].startswith("* constrained (--constrain): γ30 = 0.5*γ20; "
                                                                    "estimated as one")


# ---------------------------------------------------------------- refusals, one line each

@pytest.mark.parametrize("text,message", [
    ("g20 = 1", "fixing a γ at a value is not built"),
    ("g00 = g01", "γ00 cannot be constrained"),
    ("g20 = g30, 2*g20 = 2*g30", "linearly dependent"),
    ("g20 = 0", "sets g20 to 0; remove its term"),
    ("g40 = g30", "this model has no γ40"),
    ("g20 g30", "needs one '='"),
    ("g20 = g30 = 1", "fixing a γ at a value"),
    ("g20 = -g40", "this model has no γ40"),
    ("g20 = g30, g20 = g20", "ties a γ to itself"),
])
def test_bad_constraints_are_refused_in_one_line(hsb_loaded, text, message):
    from hlmcli.analysis.constrained import parse_constraints
    from hlmcli.api import make_spec

    spec = make_spec(hsb_loaded, TIED[0], TIED[1])
    with pytest.raises(ModelError, match=message) as err:
        parse_constraints([text], spec)
    assert str(err.value).startswith(f"--constrain '{text}'") and "\n" not in str(err.value)  # as typed


def test_a_chain_ties_every_gamma_it_names(hsb_loaded):
    """'g10 = g20 = g30' (a three-way tie) is 'g10 = g20, g20 = g30'; a trailing comma is no restriction."""
    from hlmcli.analysis.constrained import parse_constraints
    from hlmcli.api import make_spec

    spec = make_spec(hsb_loaded, TIED[0], TIED[1])
    chain = parse_constraints(["g10 = g20 = g30,"], spec).basis
    pairs = parse_constraints(["g10 = g20, g20 = g30"], spec).basis
    assert chain.eliminated == pairs.eliminated == (3, 4) and np.array_equal(chain.H, pairs.H)
    assert chain.H[:, 2].tolist() == [0, 0, 1, 1, 1]


def test_weighted_constrained_fit_is_the_summed_predictor_fit(frames):
    """Sampling weights at both levels (pseudo-ML): the constrained fit, its model-based and sandwich SEs are
    the summed-predictor fit's; the robust Wald test of the free γ is its robust t²; no likelihood-ratio test."""
    l1, l2 = frames
    l1 = l1.assign(W1=1.0 + (np.arange(len(l1)) % 3) / 2.0)  # unequal level-1 weights, normalised per unit
    kw = dict(id="ID", weight1="W1", weight2="SIZE", normalize="cluster")
    tied = hlmcli.fit(l1, l2, level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g20 = g30", tests=["g20 = 0"],
                      **kw).to_dict()
    summed = hlmcli.fit(l1, l2, level1_eq=SUMMED[0], level2_eqs=SUMMED[1], **kw).to_dict()
    assert tied["converged"] and tied["certificate"]["certified"] and tied["method"] == "ML"
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
    assert tied["n_params"] == summed["n_params"]
    _assert_summed(tied, summed)
    assert tied["sigma2"] == pytest.approx(summed["sigma2"], rel=1e-6)
    robust_t = tied["fixed_effects"][3]["robust_t"]
    test = tied["hypothesis_tests"][0]
    assert test["model"]["chi2"] is None and test["robust"]["chi2"] == pytest.approx(robust_t ** 2, rel=1e-10)
    assert tied["constraint_test"]["chi2"] is None and "pseudo-likelihood" in tied["constraint_test"]["note"]


def test_cli_weighted_constrained_fit(hsb_archive):
    """As a user types it: weights and a tie together fit; the tie is marked and its test left out in words."""
    proc = run_cli("fit", hsb_archive, "-1", "MATHACH = b0 + b1*SES + b2*MINORITY + r", "-2", "b0 = g00 + u0",
                   "-2", "b1 = g10", "-2", "b2 = g20", "--constrain", "g10 = g20", "--weight2", "SIZE")
    assert proc.returncode == 0, proc.stderr
    assert "γ20*" in proc.stdout and "pseudo-likelihood" in proc.stdout


def test_hlm_file_constrain_yes_points_to_the_option(tmp_path, hsb_loaded):
    from hlmcli.api import make_spec

    path = tmp_path / "m.hlm"
    path.write_text("level1:MATHACH=INTRCPT1+MINORITY+FEMALE+RANDOM\nlevel2:INTRCPT1=INTRCPT2+random/\n"
                    "level2:MINORITY=INTRCPT2/\nlevel2:FEMALE=INTRCPT2/\nconstrain:y\n")
    with pytest.raises(ModelError, match="not documented.*--constrain 'g10 = g20'"):
        make_spec(hsb_loaded, None, (), model=path)
    path.write_text(path.read_text().replace("constrain:y", "constrain:N"))
    assert make_spec(hsb_loaded, None, (), model=path).outcome == "MATHACH"


def test_stream_engine_constrained_fit_equals_the_memory_one():
    """The stream engine forms B_jH from the same per-unit moments: its constrained fit, tests and test of the
    ties are the in-memory fit's (ML, so the test needs one refit per engine)."""
    kw = dict(id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g20 = g30", method="ML")
    memory, stream = (hlmcli.fit(L1, L2, engine=e, **kw).to_dict() for e in ("memory", "stream"))
    assert stream["deviance"] == pytest.approx(memory["deviance"], rel=1e-12)
    for f, g in zip(stream["fixed_effects"], memory["fixed_effects"]):
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-9), (f["gamma"], key)
    assert stream["constraints"] == memory["constraints"]
    assert stream["constraint_test"]["chi2"] == pytest.approx(memory["constraint_test"]["chi2"], rel=1e-9)


def test_wald_test_under_constraints_is_on_the_free_gammas(reml_pair, frames):
    """--test 'g01 = 0' with g20 = g30 tied: the single-γ Wald χ² is that γ's t², and a test of what the tie
    already fixes (g20 - g30 = 0) is refused in one line."""
    doc = hlmcli.fit(*frames, id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g20 = g30",
                     tests=["g01 = 0", "g20 = 0"]).to_dict()
    t = {f["gamma"]: f["t"] for f in doc["fixed_effects"]}
    first, second = doc["hypothesis_tests"]
    assert first["model"]["chi2"] == pytest.approx(t["γ01"] ** 2, rel=1e-10)
    assert second["model"]["chi2"] == pytest.approx(t["γ20"] ** 2, rel=1e-10) and second["contrast"][0][3] == 1.0
    with pytest.raises(ModelError, match="already imposed"):
        hlmcli.fit(*frames, id="ID", level1_eq=TIED[0], level2_eqs=TIED[1], constrain="g20 = g30",
                   tests=["g20 - g30 = 0"])


# ---------------------------------------------------------------- HGLM: the same design XH, every estimation

HGLM = DATA / "hglm"
CBPP_TIED = ("INCID = b0 + b1*P2 + b2*P3 + b3*P4", ["b0 = g00 + u0", "b1 = g10", "b2 = g20", "b3 = g30"])
CBPP_SUMMED = ("INCID = b0 + b1*P2 + b2*P34", ["b0 = g00 + u0", "b1 = g10", "b2 = g20"])


@pytest.fixture(scope="module")
def cbpp():
    l1 = pd.read_csv(HGLM / "cbpp_l1.csv")
    l1["P34"] = l1["P3"] + l1["P4"]
    return l1, pd.read_csv(HGLM / "cbpp_l2.csv")


def _hglm_pair(cbpp, estimation):
    """cbpp's binomial model with the periods 3 and 4 tied, and refitted by hand on P34 = P3 + P4."""
    kw = dict(id="HERD", family="binomial", trials="SIZE", estimation=estimation)
    tied = hlmcli.fit(*cbpp, level1_eq=CBPP_TIED[0], level2_eqs=CBPP_TIED[1], constrain=["g20 = g30"], **kw)
    summed = hlmcli.fit(*cbpp, level1_eq=CBPP_SUMMED[0], level2_eqs=CBPP_SUMMED[1], **kw)
    return tied.to_dict(), summed.to_dict()


def _assert_summed(tied, summed):
    by_hand = {f["gamma"]: f for f in summed["fixed_effects"]}
    for f in tied["fixed_effects"]:
        g = by_hand["γ20" if f["gamma"] in ("γ20", "γ30") else f["gamma"]]
        for key in ("estimate", "se", "robust_se"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (f["gamma"], key)
        assert f["df"] == g["df"]  # N - J·R - F with F counting the free γs: 56 - 15 - 2
    assert np.allclose(tied["tau"], summed["tau"], rtol=1e-6)


@pytest.mark.parametrize("estimation", ["laplace", "agq"])
def test_hglm_constrained_fit_is_the_summed_predictor_fit(cbpp, estimation):
    tied, summed = _hglm_pair(cbpp, estimation)
    assert tied["converged"] and tied["certificate"]["certified"]
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
    assert tied["n_params"] == summed["n_params"]
    _assert_summed(tied, summed)
    t = tied["constraint_test"]  # against the unconstrained fit: one parameter more, a lower deviance
    assert t["df"] == 1 and t["params_unconstrained"] == tied["n_params"] + 1
    assert t["chi2"] == pytest.approx(tied["deviance"] - t["deviance_unconstrained"], rel=1e-12) and t["chi2"] > 0


def test_hglm_pql_constrained_fit_is_the_summed_predictor_fit_without_a_test(cbpp):
    tied, summed = _hglm_pair(cbpp, "pql")
    _assert_summed(tied, summed)
    t = tied["constraint_test"]
    assert t["chi2"] is None and "PQL has no deviance" in t["note"]


def test_cli_hglm_constrained_fit(tmp_path):
    """As a user types it: a Laplace fit with the tie, its table marked, its JSON valid and its test printed."""
    out = tmp_path / "fit.json"
    proc = run_cli("fit", HGLM / "cbpp_l1.csv", HGLM / "cbpp_l2.csv", "--id", "HERD", "-1", CBPP_TIED[0],
                   *[a for eq in CBPP_TIED[1] for a in ("-2", eq)], "--family", "binomial", "--trials", "SIZE",
                   "--estimation", "laplace", "--constrain", "g20 = g30", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    assert "γ20*" in proc.stdout and "* constrained (--constrain): γ30 = γ20" in proc.stdout
    assert "Likelihood-ratio test of the constraints (g20 = g30)" in proc.stdout
    doc = json.loads(out.read_text())
    from hlmcli.report.schemas import first_error

    assert first_error(doc, "fit") is None
    assert doc["constraints"]["eliminated"] == [{"gamma": "g30", "equals": [{"coefficient": 1.0, "gamma": "g20"}]}]
    assert doc["constraint_test"]["df"] == 1 and doc["constraint_test"]["chi2"] > 0


@pytest.mark.parametrize("estimation", ["pql", "laplace"])
def test_ordinal_constrained_fit_is_the_summed_predictor_fit(estimation):
    """wine (ordinal, cumulative logit): warm's and contact's effects tied; by hand their sum. The thresholds
    δ(m) are fitted alongside and equal the summed fit's; a tie naming γ00 (the first threshold) is refused."""
    D = DATA / "ordinal"
    l1, l2 = pd.read_csv(D / "wine_l1.csv"), pd.read_csv(D / "wine_l2.csv")
    kw = dict(id="judge", family="ordinal", estimation=estimation)
    tied = hlmcli.fit(l1, l2, level1_eq="rating = b0 + b1*warm + b2*contact", constrain="g10 = g20",
                      level2_eqs=["b0 = g00 + u0", "b1 = g10", "b2 = g20"], **kw).to_dict()
    summed = hlmcli.fit(l1.assign(S=l1["warm"] + l1["contact"]), l2, level1_eq="rating = b0 + b1*S",
                        level2_eqs=["b0 = g00 + u0", "b1 = g10"], **kw).to_dict()
    if estimation != "pql":
        assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
    hand = [summed["fixed_effects"][k] for k in (0, 1, 1)]
    for f, g in zip(tied["fixed_effects"], hand):
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (f["gamma"], key)
    for f, g in zip(tied["thresholds"], summed["thresholds"]):
        assert (f["estimate"], f["se"]) == pytest.approx((g["estimate"], g["se"]), rel=1e-6)
    with pytest.raises(ModelError, match="first threshold"):
        hlmcli.fit(l1, l2, level1_eq="rating = b0 + b1*warm", constrain="g00 = g10",
                   level2_eqs=["b0 = g00 + u0", "b1 = g10"], **kw)


def test_hglm_constraints_across_multinomial_logits_are_refused(cbpp):
    with pytest.raises(ModelError, match="--constrain: not available: .*logits"):
        hlmcli.fit(*cbpp, id="HERD", level1_eq=CBPP_TIED[0], level2_eqs=CBPP_TIED[1], family="multinomial",
                   estimation="laplace", constrain=["g20 = g30"])


# ---------------------------------------------------------------- three and four levels: the nested engine on X·H

T3, T4 = DATA / "three_level", DATA / "four_level"
EG_IDS = ["--id2", "CHILDID", "--id3", "SCHOOLID"]
EG_TIED = ["-1", "MATH = π0 + π1*YEAR + e", "-2", "π0 = β00 + β01*FEMALE + r0", "-2", "π1 = β10 + r1",
           "-3", "β00 = γ000 + γ001*LOWINC + u00", "-3", "β01 = γ010",
           "-3", "β10 = γ100 + γ101*LOWINC + γ102*MOBILITY + u10"]
EG_SUMMED = EG_TIED[:-1] + ["β10 = γ100 + γ101*S + u10"]
SCHOOLS_IDS = ["--id2", "STUDENTID", "--id3", "CLASSID", "--id4", "SCHOOLID"]
SCHOOLS_TIED = ["-1", "SCORE = p0 + p1*TIME + e", "-2", "p0 = b00 + b01*SES + r0", "-2", "p1 = b10 + r1",
                "-3", "b00 = g000 + g001*CSIZE + g002*SEC3 + u00", "-4", "g000 = d0000 + v000"]
SCHOOLS_SUMMED = SCHOOLS_TIED[:-3] + ["b00 = g000 + g001*S + u00", "-4", "g000 = d0000 + v000"]


def _json(*args) -> dict:
    proc = run_cli("fit", *args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _assert_levels_summed(tied, summed, pairs, df=True):
    """pairs: (the tied fit's label, the summed fit's label) of each fixed effect."""
    assert tied["converged"] and tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
    assert tied["n_params"] == summed["n_params"]
    got = {f.get("gamma", f.get("label")): f for f in tied["fixed_effects"]}
    by_hand = {f.get("gamma", f.get("label")): f for f in summed["fixed_effects"]}
    for mine, theirs in pairs:
        f, g = got[mine], by_hand[theirs]
        for key in ("estimate", "se", "robust_se"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (mine, key)
        if df:
            assert f["df"] == g["df"], mine


def test_three_level_constrained_fit_is_the_summed_predictor_fit_fast(tmp_path):
    """Pastes (60 records): casks a and b given one effect (CA, CB dummies of CASK); by hand CAB = CA + CB."""
    l2 = pd.read_csv(T3 / "pastes_l2.csv")
    l2["CA"], l2["CB"] = (l2["CASK"] == "a").astype(int), (l2["CASK"] == "b").astype(int)
    l2["CAB"] = l2["CA"] + l2["CB"]
    l2.drop(columns="CASK").to_csv(tmp_path / "l2.csv", index=False)
    kw = dict(id2="SAMPLE", id3="BATCH", level1_eq="STRENGTH = π0 + e", method="ML", warn=lambda m: None)
    files = (T3 / "pastes_l1.csv", tmp_path / "l2.csv")
    tied = hlmcli.fit(*files, level3=T3 / "pastes_l3.csv", level2_eqs=["π0 = β00 + β01*CA + β02*CB + r0"],
                      level3_eqs=["β00 = γ000 + u00", "β01 = γ010", "β02 = γ020"], constrain=["g010 = g020"], **kw)
    summed = hlmcli.fit(*files, level3=T3 / "pastes_l3.csv", level2_eqs=["π0 = β00 + β01*CAB + r0"],
                        level3_eqs=["β00 = γ000 + u00", "β01 = γ010"], **kw)
    with pytest.raises(ModelError, match="tied by --constrain"):  # not a table that hides the ties
        tied.table("csv")
    text = tied.summary(ascii=True)  # the tied γs starred in both tables, as at two levels
    assert text.count("G010*") == text.count("G020*") == 2 and "G000*" not in text
    tied, summed = tied.to_dict(), summed.to_dict()
    _assert_levels_summed(tied, summed, [("γ000", "γ000"), ("γ010", "γ010"), ("γ020", "γ010")])
    from hlmcli.levels_results import table_view  # what `hlmcli compare` and the tables read

    for key in ("aic", "bic"):  # the tied γ is not a parameter
        assert table_view(tied)[key] == pytest.approx(table_view(summed)[key], rel=1e-9), key
    assert np.allclose(tied["tau_pi"]["matrix"], summed["tau_pi"]["matrix"], rtol=1e-6)
    # HLM's χ² tests: the level-2 test of r0 counts β01 and β02 as one term (d.f. 30 - 2, not 30 - 3)
    assert [c["df"] for c in tied["tau_pi"]["chi2"]] == [28]
    _assert_chi2_summed(tied, summed, ("tau_pi", "tau_beta"))
    assert tied["constraint_test"]["chi2"] == pytest.approx(
        tied["deviance"] - tied["constraint_test"]["deviance_unconstrained"], rel=1e-12)


def test_three_level_chi2_counts_a_tied_term_that_keeps_another_gamma(tmp_path):
    """β01 = γ010 + γ011*W, β02 = γ020 with γ010 = γ020: π0's fixed part is γ010*(CA + CB) + γ011*W*CA, still
    three terms (the summed-predictor model β01*CAB + β02*CA with β02 = γ021*W), so the level-2 χ² d.f. do not
    change, whichever γ the restriction eliminates."""
    l2 = pd.read_csv(T3 / "pastes_l2.csv")
    l2["CA"], l2["CB"] = (l2["CASK"] == "a").astype(int), (l2["CASK"] == "b").astype(int)
    l2.assign(CAB=l2["CA"] + l2["CB"]).drop(columns="CASK").to_csv(tmp_path / "l2.csv", index=False)
    l3 = pd.read_csv(T3 / "pastes_l3.csv")
    l3.assign(W=(l3["BATCH"] - 5.5) / 3).to_csv(tmp_path / "l3.csv", index=False)
    kw = dict(level3=tmp_path / "l3.csv", id2="SAMPLE", id3="BATCH", level1_eq="STRENGTH = π0 + e", method="ML",
              warn=lambda m: None)
    files = (T3 / "pastes_l1.csv", tmp_path / "l2.csv")
    summed = hlmcli.fit(*files, level2_eqs=["π0 = β00 + β01*CAB + β02*CA + r0"],
                        level3_eqs=["β00 = γ000 + u00", "β01 = γ010", "β02 = γ021*W"], **kw).to_dict()
    assert [c["df"] for c in summed["tau_pi"]["chi2"]] == [30 - 3]
    for tie in ("g010 = g020", "g020 = g010"):
        tied = hlmcli.fit(*files, level2_eqs=["π0 = β00 + β01*CA + β02*CB + r0"],
                          level3_eqs=["β00 = γ000 + u00", "β01 = γ010 + γ011*W", "β02 = γ020"], constrain=[tie],
                          **kw).to_dict()
        assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
        _assert_chi2_summed(tied, summed, ("tau_pi", "tau_beta"))


def _assert_chi2_summed(tied, summed, keys):
    """HLM's χ² table of every random coefficient (statistic, d.f., p) is the summed-predictor fit's."""
    for key in keys:
        t, s = tied[key]["chi2"], summed[key]["chi2"]
        assert [c["df"] for c in t] == [c["df"] for c in s], key
        for a, b in zip(t, s):
            assert a["chi2"] == pytest.approx(b["chi2"], rel=1e-9) and a["p"] == pytest.approx(b["p"], rel=1e-6), key


@pytest.mark.slow
def test_three_level_constrained_fit_is_the_summed_predictor_fit(tmp_path):
    """ECLS-K style growth (eg): LOWINC's and MOBILITY's effects on the YEAR slope tied; by hand, S = LOWINC +
    MOBILITY in the level-3 file. REML: the test of the tie refits both models by ML."""
    l3 = pd.read_csv(T3 / "eg_l3.csv")
    l3["S"] = l3["LOWINC"] + l3["MOBILITY"]
    l3.to_csv(tmp_path / "l3.csv", index=False)
    tied = _json(T3 / "eg_l1.csv", T3 / "eg_l2.csv", T3 / "eg_l3.csv", *EG_IDS, *EG_TIED, "--reml",
                 "--constrain", "g101 = g102")
    summed = _json(T3 / "eg_l1.csv", T3 / "eg_l2.csv", tmp_path / "l3.csv", *EG_IDS, *EG_SUMMED, "--reml")
    names = ("γ000", "γ001", "γ010", "γ100", "γ101")
    _assert_levels_summed(tied, summed, [*zip(names, names), ("γ102", "γ101")])
    for key in ("tau_pi", "tau_beta"):
        assert np.allclose(tied[key]["matrix"], summed[key]["matrix"], rtol=1e-6)
        assert [c["chi2"] for c in tied[key]["chi2"]] == pytest.approx([c["chi2"] for c in summed[key]["chi2"]],
                                                                       rel=1e-6)
    assert tied["constraints"]["eliminated"] == [{"gamma": "g102", "equals": [{"coefficient": 1.0, "gamma": "g101"}]}]
    t = tied["constraint_test"]
    assert t["refitted_ml"] and t["df"] == 1 and t["params_unconstrained"] == t["params_constrained"] + 1
    assert t["chi2"] == pytest.approx(t["deviance_constrained"] - t["deviance_unconstrained"], rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("tie,order", [
    ("g001 = g101", ["(Intercept)", "C1", "FEMALE", "YEAR", "C1", "YEAR:MOBILITY"]),
    ("g101 = g102", ["(Intercept)", "LOWINC", "FEMALE", "YEAR", "C2", "C2"])])
def test_three_level_constrained_fit_matches_lmer_on_the_summed_column(tie, order):
    """Ties across the level-3 equations of two random coefficients (γ001 = γ101) and within one (γ101 =
    γ102), against lmer by ML on the summed column (tests/data/constraints/eg_tied_lme4.json, made by
    tests/reference_scripts/constraints_three_level_lme4.R); tied rows share every number."""
    ref = json.loads((DATA / "constraints" / "eg_tied_lme4.json").read_text())[tie.replace(" = ", "_")]
    doc = _json(T3 / "eg_l1.csv", T3 / "eg_l2.csv", T3 / "eg_l3.csv", *EG_IDS, *EG_TIED, "--ml", "--constrain", tie)
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6) and doc["n_params"] == 12
    for f, name in zip(doc["fixed_effects"], order):
        assert f["estimate"] == pytest.approx(ref["fixef"][name], rel=1e-5), f["gamma"]
        assert f["se"] == pytest.approx(ref["se"][name], rel=1e-5), f["gamma"]
    a, b = (next(f for f in doc["fixed_effects"] if f["gamma"] == "γ" + g.strip()[1:]) for g in tie.split("="))
    assert all(a[key] == b[key] for key in ("estimate", "se", "df", "p_value", "robust_se"))


@pytest.mark.slow
def test_four_level_constrained_fit_is_the_summed_predictor_fit(tmp_path):
    """CSIZE's and SEC3's (SECTOR copied to the classes) effects on the class intercept tied; by hand, S = CSIZE +
    SEC3 in the level-3 file. ML: the test of the tie is the change from the unconstrained fit's deviance."""
    l3, l4 = pd.read_csv(T4 / "schools_l3.csv"), pd.read_csv(T4 / "schools_l4.csv")
    l3 = l3.merge(l4, on="SCHOOLID").rename(columns={"SECTOR": "SEC3"})
    l3.to_csv(tmp_path / "tied3.csv", index=False)
    l3.assign(S=l3["CSIZE"] + l3["SEC3"]).to_csv(tmp_path / "summed3.csv", index=False)
    files = [T4 / f"schools_l{k}.csv" for k in (1, 2)]
    tied = _json(*files, tmp_path / "tied3.csv", T4 / "schools_l4.csv", *SCHOOLS_IDS, *SCHOOLS_TIED, "--ml",
                 "--constrain", "d0010 = d0020")
    summed = _json(*files, tmp_path / "summed3.csv", T4 / "schools_l4.csv", *SCHOOLS_IDS, *SCHOOLS_SUMMED, "--ml")
    same = ("δ0000", "δ0010", "δ0100", "δ1000")
    _assert_levels_summed(tied, summed, [*zip(same, same), ("δ0020", "δ0010")])
    by_name = [{r["name"]: r for r in d["random_effects"]} for d in (tied, summed)]
    assert by_name[0]["tau_beta"]["chi2"][0]["df"] == 144 - 2  # g001 and g002 one term of b00's equation
    _assert_chi2_summed(*by_name, ("tau_pi", "tau_beta", "tau_gamma"))
    text = run_cli("fit", *files, tmp_path / "tied3.csv", T4 / "schools_l4.csv", *SCHOOLS_IDS, *SCHOOLS_TIED, "--ml",
                   "--constrain", "d0010 = d0020", check=True).stdout
    assert text.count("INTRCPT4, δ0010*") == text.count("INTRCPT4, δ0020*") == 2 and "δ0000*" not in text
    t = tied["constraint_test"]
    assert not t["refitted_ml"] and t["deviance_constrained"] == pytest.approx(tied["deviance"], rel=1e-15)
    assert t["chi2"] == pytest.approx(tied["deviance"] - t["deviance_unconstrained"], rel=1e-12)


# ---------------------------------------------------------------- cross-classified fits: θs named as --test names them

def test_crossed_constrained_fit_is_the_summed_predictor_fit():
    """ScotsSec: verbal's and female's effects tied ('THETA1 = THETA2', --test's labels on a crossed fit); by hand
    S = verbal + female. ML with Satterthwaite's d.f.: the tied θs take the summed predictor's."""
    d = pd.read_csv(DATA / "crossed" / "scotssec.csv")
    kw = dict(method="ML", df="satterthwaite")
    tied = hlmcli.fit_crossed(d, "attain ~ verbal + female + (1|primary) + (1|second)", constrain="THETA1 = THETA2",
                              **kw).to_dict()
    summed = hlmcli.fit_crossed(d.assign(S=d["verbal"] + d["female"]), "attain ~ S + (1|primary) + (1|second)",
                                **kw).to_dict()
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9) and tied["n_params"] == summed["n_params"]
    hand = [summed["fixed_effects"][k] for k in (0, 1, 1)]
    for f, g in zip(tied["fixed_effects"], hand):
        for key in ("estimate", "se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (f["label"], key)
    assert tied["constraints"]["eliminated"] == [{"gamma": "THETA2", "equals": [{"coefficient": 1.0,
                                                                                 "gamma": "THETA1"}]}]
    t = tied["constraint_test"]
    assert not t["refitted_ml"] and t["df"] == 1 and t["params_unconstrained"] == tied["n_params"] + 1
    assert t["chi2"] == pytest.approx(tied["deviance"] - t["deviance_unconstrained"], rel=1e-12)


def test_hglm_weighted_constrained_fit_is_the_summed_predictor_fit():
    """Sampling weights (Laplace pseudo-likelihood): the constrained fit and its sandwich are the summed-predictor
    fit's; the robust Wald test of the free γ is its t²; no likelihood-ratio test of the ties (a pseudo-likelihood)."""
    D = DATA / "hglm_weights"
    l1, l2 = pd.read_csv(D / "contraw_l1.csv"), pd.read_csv(D / "contraw_l2.csv")
    kw = dict(id="DISTRICT", family="bernoulli", estimation="laplace", weight1="W1", weight2="W2")
    tied = hlmcli.fit(l1, l2, level1_eq="USE = b0 + b1*URBAN + b2*LC1 + b3*LC2",
                      level2_eqs=["b0 = g00 + u0", "b1 = g10", "b2 = g20", "b3 = g30"], constrain="g20 = g30",
                      tests=["g20 = 0"], **kw).to_dict()
    summed = hlmcli.fit(l1.assign(S=l1["LC1"] + l1["LC2"]), l2, level1_eq="USE = b0 + b1*URBAN + b2*S",
                        level2_eqs=["b0 = g00 + u0", "b1 = g10", "b2 = g20"], **kw).to_dict()
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9)
    _assert_summed(tied, summed)
    robust_t = tied["fixed_effects"][2]["robust_t"]
    assert tied["hypothesis_tests"][0]["robust"]["chi2"] == pytest.approx(robust_t ** 2, rel=1e-10)
    assert tied["constraint_test"]["chi2"] is None and "pseudo-likelihood" in tied["constraint_test"]["note"]


def test_negbin_constrained_fit_is_the_summed_predictor_fit():
    """grouseticks (NB2, Laplace): the 1996 and 1997 effects tied; by hand their dummies summed. θ is fitted
    alongside either way, and the test of the tie compares with the unconstrained fit."""
    D = DATA / "negbin"
    l1, l2 = pd.read_csv(D / "grouseticks_l1.csv"), pd.read_csv(D / "grouseticks_l2.csv")
    kw = dict(id="brood", family="negbinomial", estimation="laplace", level1_eq="ticks = b0")
    tied = hlmcli.fit(l1, l2, level2_eqs=["b0 = g00 + g01*year96 + g02*year97 + u0"], constrain="g01 = g02",
                      **kw).to_dict()
    summed = hlmcli.fit(l1, l2.assign(Y=l2["year96"] + l2["year97"]), level2_eqs=["b0 = g00 + g01*Y + u0"],
                        **kw).to_dict()
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9) and tied["n_params"] == summed["n_params"]
    hand = [summed["fixed_effects"][k] for k in (0, 1, 1)]
    for f, g in zip(tied["fixed_effects"], hand):
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (f["gamma"], key)
    assert tied["dispersion"]["estimate"] == pytest.approx(summed["dispersion"]["estimate"], rel=1e-6)
    t = tied["constraint_test"]
    assert t["df"] == 1 and t["chi2"] == pytest.approx(tied["deviance"] - t["deviance_unconstrained"], rel=1e-12)


# ---------------------------------------------------------------- plausible values and imputed data sets

PV_TIED = ("-1", "PV1MATH = b0 + b1*SES + b2*MINORITY + b3*FEMALE + r", "-2", "b0 = g00 + g01*SECTOR + u0",
           "-2", "b1 = g10", "-2", "b2 = g20", "-2", "b3 = g30")
PV_SUMMED = ("-1", "PV1MATH = b0 + b1*SES + b2*S + r", "-2", "b0 = g00 + g01*SECTOR + u0", "-2", "b1 = g10",
             "-2", "b2 = g20")


@pytest.fixture(scope="module")
def pv_files(tmp_path_factory):
    from test_plausible import make_pv_files

    d = tmp_path_factory.mktemp("pv_tied")
    l1, l2 = make_pv_files(d)
    frame = pd.read_csv(l1)
    frame.assign(S=frame["MINORITY"] + frame["FEMALE"]).to_csv(l1, index=False)
    return l1, l2


def test_plausible_values_constrained_are_the_summed_predictor_fits_combined(pv_files):
    """Each plausible value's fit constrained (with weights): Rubin's tables by hand from the fits, equal to
    the summed-predictor fits combined (tied γs share estimate, SE, d.f.); --test by D1 on the free γs is the
    squared combined t; the ties' likelihood-ratio tests are not combined (a note, no statistic)."""
    from test_hglm_weights import assert_rubin_tables
    from hlmcli.report.schemas import first_error

    common = ("--id", "ID", "--weight1", "W1", "--weight2", "W2", "--plausible-values", "PV*MATH", "--format", "json")
    tied = json.loads(run_cli("fit", *pv_files, *PV_TIED, *common, "--constrain", "g20 = g30", "--test", "g20 = 0",
                              check=True).stdout)
    summed = json.loads(run_cli("fit", *pv_files, *PV_SUMMED, *common, check=True).stdout)
    assert first_error(tied, "combined") is None and tied["combining"]["m"] == 5
    assert_rubin_tables(tied, rel=1e-10)
    for key in ("fixed_effects", "fixed_effects_robust"):
        by_hand = {f["gamma"]: f for f in summed[key]}
        for f in tied[key]:
            g = by_hand["γ20" if f["gamma"] in ("γ20", "γ30") else f["gamma"]]
            for name in ("estimate", "se", "df", "fmi"):
                assert f[name] == pytest.approx(g[name], rel=1e-6), (key, f["gamma"], name)
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9) and tied["n_params"] == summed["n_params"]
    test = tied["hypothesis_tests"][0]
    assert test["model"] is None and test["contrast"] == [[0.0, 0.0, 0.0, 1.0, 0.0]]
    assert test["robust"]["F"] == pytest.approx(tied["fixed_effects_robust"][3]["t"] ** 2, rel=1e-9)
    assert tied["constraint_test"]["chi2"] is None and "not combined" in tied["constraint_test"]["note"]
    assert tied["constraints"]["eliminated"][0]["gamma"] == "g30"


def test_cli_imputed_constrained_text(pv_files, tmp_path):
    """--imputed with --constrain as a user types it: the imputed files give the plausible values' numbers,
    the tied γs are marked and the left-out test says why."""
    frame = pd.read_csv(pv_files[0])
    files = []
    for k in (1, 2):
        f = tmp_path / f"imp{k}.csv"
        frame.assign(PV1MATH=frame[f"PV{k}MATH"]).to_csv(f, index=False)
        files.append(f)
    args = ("--id", "ID", *PV_TIED, "--constrain", "g20 = g30")
    imp = run_cli("fit", files[0], pv_files[1], *args, "--imputed", files[1], "--ascii", check=True).stdout
    pv = run_cli("fit", *pv_files, *args, "--plausible-values", "PV1MATH,PV2MATH", "--ascii", check=True).stdout
    assert "G20*" in imp and "G30*" in imp and "* constrained (--constrain): G30 = G20" in imp
    assert "Test of the constraints (g20 = g30): no test" in imp
    table = lambda text: text[text.index("Final estimation of fixed effects"):text.index("Deviance")]  # noqa: E731
    assert table(imp) == table(pv)


def _grouse_pair(tmp_path, *estimation):
    """The three-level Poisson HGLM of the grouse ticks with the tie g010 = g020, and the summed-predictor fit
    (YEAR96 + YEAR97 as one level-2 column); the tied fit's text too (its JSON by --json-out, one run)."""
    H3 = DATA / "hglm3"
    l2 = pd.read_csv(H3 / "grouse_l2.csv")
    l2.assign(S=l2["YEAR96"] + l2["YEAR97"]).to_csv(tmp_path / "l2.csv", index=False)
    files = (H3 / "grouse_l1.csv", tmp_path / "l2.csv", H3 / "grouse_l3.csv", "--id2", "BROOD", "--id3", "LOCATION")
    rest = ("-3", "b00 = g000 + g001*CHEIGHT + u00", "--family", "poisson", *estimation)
    text = run_cli("fit", *files, "-1", "TICKS = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
                   "-3", "b01 = g010", "-3", "b02 = g020", *rest, "--constrain", "g010 = g020",
                   "--json-out", tmp_path / "tied.json", check=True).stdout
    summed = json.loads(run_cli("fit", *files, "-1", "TICKS = p0", "-2", "p0 = b00 + b01*S + r0", "-3", "b01 = g010",
                                *rest, "--format", "json", check=True).stdout)
    return json.loads((tmp_path / "tied.json").read_text()), summed, text


def test_three_level_laplace_constrained_fit_is_the_summed_predictor_fit(tmp_path):
    """By Laplace: the deviance over δ on X·H is the summed-predictor fit's (deviance 1e-9, γ and SEs 1e-6), and
    the likelihood-ratio test of the tie is against the unconstrained Laplace fit."""
    tied, summed, _ = _grouse_pair(tmp_path, "--estimation", "laplace")
    assert tied["converged"] and tied["certificate"]["certified"]
    assert tied["deviance"] == pytest.approx(summed["deviance"], rel=1e-9) and tied["n_params"] == summed["n_params"]
    by_hand = {f["gamma"]: f for f in summed["fixed_effects"]}
    for f in tied["fixed_effects"]:
        g = by_hand["γ010" if f["gamma"] in ("γ010", "γ020") else f["gamma"]]
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-6, abs=1e-9), (f["gamma"], key)
    for key in ("tau_pi", "tau_beta"):
        assert np.allclose(tied[key]["matrix"], summed[key]["matrix"], rtol=1e-6, atol=1e-9)
    t = tied["constraint_test"]
    assert t["df"] == 1 and t["params_unconstrained"] == tied["n_params"] + 1
    assert t["chi2"] == pytest.approx(tied["deviance"] - t["deviance_unconstrained"], rel=1e-12)


def test_three_level_pql_constrained_fit_is_the_summed_predictor_fit(tmp_path):
    """A three-level Poisson HGLM by PQL (grouse ticks): the working models fitted on X·H converge to the
    summed-predictor fit's fixed point; no test of the tie (PQL)."""
    tied, summed, text = _grouse_pair(tmp_path)
    assert tied["converged"] and tied["hglm"]["fixed_point"]["passed"]
    by_hand = {f["gamma"]: f for f in summed["fixed_effects"]}
    assert len(tied["fixed_effects"]) == 4
    for f in tied["fixed_effects"]:
        g = by_hand["γ010" if f["gamma"] in ("γ010", "γ020") else f["gamma"]]
        for key in ("estimate", "se", "robust_se", "df"):
            assert f[key] == pytest.approx(g[key], rel=1e-6), (f["gamma"], key)
    for key in ("tau_pi", "tau_beta"):
        assert np.allclose(tied[key]["matrix"], summed[key]["matrix"], rtol=1e-6, atol=1e-12)
    assert tied["tau_pi"]["chi2"][0]["df"] == 100 - 2  # YEAR96 and YEAR97 one term of π0's equation
    _assert_chi2_summed(tied, summed, ("tau_pi", "tau_beta"))
    t = tied["constraint_test"]
    assert t["chi2"] is None and "PQL has no deviance" in t["note"]
    # the tied γs starred in each of the four tables (SEs, robust SEs, each with its ratio table), as at two levels
    assert text.count("INTRCPT3, γ010*") == text.count("INTRCPT3, γ020*") == 4 and "γ000*" not in text
    assert "* constrained (--constrain): γ020 = γ010" in text


def test_chi2_of_a_random_coefficient_counts_a_tie_in_its_equation(frames):
    """A tie between two level-2 predictors of the random intercept (g01 = g02): HLM's χ² test of u0 is the
    summed-predictor model's, statistic and d.f. (J - 2, not J - 3) and p-value."""
    l1, l2 = frames
    l2 = l2.assign(S2=l2["SECTOR"] + l2["MEANSES"])
    tied = hlmcli.fit(l1, l2, id="ID", level1_eq="MATHACH = b0 + b1*SES + r",
                      level2_eqs=["b0 = g00 + g01*SECTOR + g02*MEANSES + u0", "b1 = g10"], constrain="g01 = g02")
    summed = hlmcli.fit(l1, l2, id="ID", level1_eq="MATHACH = b0 + b1*SES + r",
                        level2_eqs=["b0 = g00 + g01*S2 + u0", "b1 = g10"])
    t, s = tied.to_dict()["variance_components"][0], summed.to_dict()["variance_components"][0]
    assert t["df"] == s["df"] == 158
    assert t["chi2"] == pytest.approx(s["chi2"], rel=1e-9) and t["p"] == pytest.approx(s["p"], rel=1e-6)
