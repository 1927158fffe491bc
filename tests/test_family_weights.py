"""Sampling weights for the ordinal, negative binomial and multinomial families (two levels; Laplace, and AGQ
for ordinal and NB): multilevel pseudo-maximum likelihood (engine/hglm_weights.py), against
- the fit on replicated records: whole-number level-1 weights used as given (--normalize none) are copies
  of the records, so the pseudo-likelihood is the likelihood of the data with each record repeated;
- ordinal::clmm and glmmTMB's nbinom2 with weights= (tests/reference_scripts/family_weights_r.R, stored in
  tests/data/family_weights/r_refs.json, each cross-checked there by integration written apart);
- an independent pseudo-likelihood with level-1 and level-2 weights together (tests/family_pseudo.py,
  maximised by scipy in tests/reference_scripts/family_weights_pseudo.py, stored in pseudo_refs.json with
  its sandwich by differences), and evaluated afresh at hlmcli's optimum here.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hlmcli
from conftest import hlmcli as run_cli
from family_pseudo import pseudo_deviance
from family_weights_models import MODELS, files, hlmcli_point, independent

R = json.loads((files("wine")[0].parent / "r_refs.json").read_text())
PSEUDO = json.loads((files("wine")[0].parent / "pseudo_refs.json").read_text())


def fit(name: str, frames=None, **kw):
    uid, model = MODELS[name]
    l1, l2 = frames if frames is not None else files(name)
    return hlmcli.fit(l1, l2, id=uid, **model, **kw).analysis


def params(a) -> np.ndarray:
    """The engine's fixed parameters: γ with the thresholds or log θ where the family has them."""
    return a.params if getattr(a, "params", None) is not None and a.params.size else a.gamma


# ---------------------------------------------------------------- whole-number weights are copies of records

@pytest.mark.parametrize("name,estimation", [
    ("wine", "agq"),
    pytest.param("wine", "laplace", marks=pytest.mark.slow),
    pytest.param("salamanders", "laplace", marks=pytest.mark.slow),
    pytest.param("salamanders", "agq", marks=pytest.mark.slow),
    pytest.param("sim", "laplace", marks=pytest.mark.slow),
])
def test_whole_number_weights_are_replicated_records(name, estimation):
    l1, l2 = (pd.read_csv(f) for f in files(name))
    copies = l1.loc[l1.index.repeat(l1.WI)].drop(columns=["WI", "W1"]).reset_index(drop=True)
    kw = {"quadrature_points": 10} if estimation == "agq" else {}
    w = fit(name, (l1.drop(columns="W1"), l2.drop(columns="W2")), estimation=estimation, weight1="WI",
            normalize="none", **kw)
    r = fit(name, (copies, l2.drop(columns="W2")), estimation=estimation, **kw)
    assert w.converged and w.ml.certificate.certified and r.ml.certificate.certified
    assert w.ml.deviance == pytest.approx(r.ml.deviance, abs=1e-6)
    assert params(w) == pytest.approx(params(r), rel=1e-5, abs=1e-6)
    assert w.tau == pytest.approx(r.tau, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("link", ["cloglog", pytest.param("probit", marks=pytest.mark.slow)])
def test_every_ordinal_link_with_whole_number_weights_is_replicated_records(link):
    """The weighting is the link's own per-record terms scaled (hglm_weights.py), whatever the link."""
    l1, l2 = (pd.read_csv(f) for f in files("wine"))
    copies = l1.loc[l1.index.repeat(l1.WI)].drop(columns=["WI", "W1"]).reset_index(drop=True)
    w = fit("wine", (l1.drop(columns="W1"), l2.drop(columns="W2")), estimation="laplace", link=link, weight1="WI",
            normalize="none")
    r = fit("wine", (copies, l2.drop(columns="W2")), estimation="laplace", link=link)
    assert w.ml.certificate.certified and r.ml.certificate.certified
    assert w.ml.deviance == pytest.approx(r.ml.deviance, abs=1e-6)
    assert params(w) == pytest.approx(params(r), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- level-1 weights against clmm and glmmTMB

@pytest.mark.parametrize("ref,estimation", [("wine_laplace", "laplace"),
                                            pytest.param("wine_agq10", "agq", marks=pytest.mark.slow)])
def test_ordinal_with_level1_weights_is_clmms(ref, estimation):
    """clmm(weights = W1): θ_1 = γ00, δ(m) = θ_m − θ_{m−1}, β = −γ (tests/reference_scripts/ordinal_clmm.R)."""
    want = R[ref]
    a = fit("wine", estimation=estimation, weight1="W1", normalize="none",
            **({"quadrature_points": 10} if estimation == "agq" else {}))
    assert a.converged and a.ml.certificate.certified
    assert a.ml.deviance == pytest.approx(want["deviance"], abs=1e-6)
    assert a.gamma == pytest.approx(want["gamma"], rel=1e-4)
    assert a.delta == pytest.approx(want["delta"], rel=1e-4)
    assert a.tau[0, 0] == pytest.approx(want["tau"], rel=1e-4)


@pytest.mark.slow  # the default run's NB check: test_independent_pseudo_likelihood's salamanders
def test_negbin_with_level1_weights_is_glmmtmbs():
    want = R["salamanders_laplace"]
    a = fit("salamanders", estimation="laplace", weight1="W1", normalize="none")
    assert a.converged and a.ml.certificate.certified
    assert a.ml.deviance == pytest.approx(want["deviance"], abs=1e-6)
    assert a.gamma == pytest.approx(want["gamma"], rel=1e-4)
    assert a.theta == pytest.approx(want["theta"], rel=1e-4)
    assert a.tau[0, 0] == pytest.approx(want["tau"], rel=1e-4)
    assert np.sqrt(np.diag(a.cov)) == pytest.approx(want["gamma_se"], rel=1e-3)


# ---------------------------------------------------------------- level-1 and level-2 weights: the independent code

def _against_independent(name, a):
    ref = PSEUDO[name]
    assert a.converged and a.ml.certificate.certified
    model, w2 = independent(name)
    x = hlmcli_point(name, a)
    # the same function: the independent code at hlmcli's point gives hlmcli's pseudo-deviance
    assert pseudo_deviance(model, x, w2) == pytest.approx(a.ml.deviance, abs=1e-6)
    # the same optimum: BFGS and Nelder-Mead on the independent code found no lower point
    assert a.ml.deviance == pytest.approx(ref["deviance"], abs=1e-6)
    k = x.size - (3 if name == "sim" else 1)  # the fixed parameters (τ's are parametrised apart)
    assert x[:k] == pytest.approx(ref["x"][:k], rel=1e-4, abs=1e-6)
    if name == "sim":
        assert a.tau == pytest.approx(independent(name)[0].tau(np.array(ref["x"])), rel=1e-4, abs=1e-6)
    else:
        assert a.tau[0, 0] == pytest.approx(np.exp(ref["x"][-1]), rel=1e-4)
    # the sandwich of the weighted unit scores, with J/(J − 1), against the independent one by differences
    assert np.sqrt(np.diag(a.ml.robust_cov)) == pytest.approx(ref["robust_se"][:k], rel=1e-3)


@pytest.mark.parametrize("name,estimation", [("salamanders", "agq"), ("sim", "laplace")])
def test_independent_pseudo_likelihood(name, estimation):
    a = fit(name, estimation=estimation, weight1="W1", weight2="W2",
            **({"quadrature_points": 25} if estimation == "agq" else {}))
    _against_independent(name, a)


# ---------------------------------------------------------------- the command line

def _fit_command(name) -> tuple[list, dict]:
    """`hlmcli fit` on the data set `name` with its model's equations, as a user types it; and the model."""
    uid, model = MODELS[name]
    cmd = ["fit", *files(name), "--id", uid, "-1", model["level1_eq"]]
    for eq in model["level2_eqs"]:
        cmd += ["-2", eq]
    return cmd, model


def _cli(name, tmp_path, *args):
    cmd, model = _fit_command(name)
    proc = run_cli(*cmd, "--family", model["family"], "--weight1", "W1", "--weight2", "W2", *args,
                   "--json-out", tmp_path / "fit.json")
    assert proc.returncode == 0, proc.stderr
    from hlmcli.report.schemas import first_error

    doc = json.loads((tmp_path / "fit.json").read_text())
    assert first_error(doc, "fit") is None
    assert doc["weights"]["level1"] == "W1" and doc["weights"]["level2"] == "W2"
    assert "pseudo-log-likelihood" in doc["covariance_note"]
    out = proc.stdout
    assert "Weighting Specification" in out and "Pseudo-deviance" in out
    assert "the inverse Hessian of the pseudo-likelihood" in out
    return doc, out


def test_ordinal_end_to_end(tmp_path):
    """One command: the JSON against the independent pseudo-likelihood (exact integrals: AGQ with 25 points),
    the thresholds and their robust SEs, and the text it prints."""
    doc, out = _cli("wine", tmp_path, "--estimation", "agq", "--quadrature-points", "25")
    ref = PSEUDO["wine"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    model, w2 = independent("wine")
    gamma = [f["estimate"] for f in doc["fixed_effects"]]
    cuts = np.cumsum([t["estimate"] for t in doc["thresholds"]])
    x = np.concatenate([gamma, cuts, [np.log(doc["tau"][0][0])]])
    assert pseudo_deviance(model, x, w2) == pytest.approx(doc["deviance"], abs=1e-6)
    assert x[:-1] == pytest.approx(ref["x"][:-1], rel=1e-4)
    assert [f["robust_se"] for f in doc["fixed_effects"]] == pytest.approx(ref["robust_se"][:3], rel=1e-3)
    assert "adaptive quadrature" in out and "clmm's weights= equal --weight1 used as given" in out


def test_multinomial_end_to_end(tmp_path):
    """The multinomial's own report: weighting block, SE labels, pseudo-deviance; the JSON against the
    independent Laplace pseudo-likelihood."""
    doc, out = _cli("sim", tmp_path, "--estimation", "laplace")
    ref = PSEUDO["sim"]
    assert doc["deviance"] == pytest.approx(ref["deviance"], abs=1e-6)
    assert [f["estimate"] for f in doc["fixed_effects"]] == pytest.approx(ref["x"][:6], rel=1e-4)
    assert [f["robust_se"] for f in doc["fixed_effects"]] == pytest.approx(ref["robust_se"][:6], rel=1e-3)


# ---------------------------------------------------------------- plausible values: Rubin's rules by hand

def rubin_by_hand(est: np.ndarray, var: np.ndarray, dfcom: np.ndarray) -> dict:
    """Rubin (1987) per coefficient from the M estimates and their variances, Barnard & Rubin's (1999) d.f."""
    from scipy import special

    M = est.shape[0]
    qbar = est.mean(axis=0)
    t = var.mean(axis=0) + (1 + 1 / M) * est.var(axis=0, ddof=1)
    lam = np.maximum((1 + 1 / M) * est.var(axis=0, ddof=1) / t, 1e-4)
    nu_old = (M - 1) / lam ** 2
    nu_obs = (dfcom + 1) / (dfcom + 3) * dfcom * (1 - lam)
    nu = nu_old * nu_obs / (nu_old + nu_obs)
    return {"estimate": qbar, "se": np.sqrt(t), "df": nu, "p": 2 * special.stdtr(nu, -np.abs(qbar / np.sqrt(t)))}


def _pv_doc(name, tmp_path, *args):
    cmd, model = _fit_command(name)
    proc = run_cli(*cmd, "--family", model["family"], "--estimation", "laplace", "--plausible-values", "PV*", *args,
                   "--json-out", tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr
    from hlmcli.report.schemas import first_error

    doc = json.loads((tmp_path / "c.json").read_text())
    assert first_error(doc, "combined") is None
    assert doc["combining"]["m"] == 3 and [f["outcome"] for f in doc["fits"]] == ["PV1", "PV2", "PV3"]
    assert all(f["converged"] and f["certificate"]["certified"] for f in doc["fits"])
    return doc, proc.stdout


def _check_rows(rows, est, var, dfcom):
    want = rubin_by_hand(est, var, dfcom)
    for key in ("estimate", "se", "df", "p"):
        assert [r[key] for r in rows] == pytest.approx(want[key], rel=1e-10), key


def _check_gamma(doc):
    fits = doc["fits"]
    est = np.array([[g["estimate"] for g in f["fixed_effects"]] for f in fits])
    dfcom = np.array([g["df"] for g in fits[0]["fixed_effects"]])
    _check_rows(doc["fixed_effects"], est, np.array([np.diag(f["gamma_covariance"]) for f in fits]), dfcom)
    _check_rows(doc["fixed_effects_robust"], est, np.array([np.diag(f["gamma_robust_covariance"]) for f in fits]),
                dfcom)
    assert np.array(doc["tau"]) == pytest.approx(np.mean([f["tau"] for f in fits], axis=0), rel=1e-12)
    assert doc["deviance"] == pytest.approx(np.mean([f["deviance"] for f in fits]), rel=1e-12)


def test_ordinal_plausible_values_with_weights(tmp_path):
    """γ and the thresholds δ(m) (complete-data d.f. γ00's), model-based and robust, by hand from each fit's
    own document; the weighted fits' D1 test robust only."""
    doc, out = _pv_doc("wine", tmp_path, "--weight1", "W1", "--weight2", "W2", "--test", "g10 = 0")
    _check_gamma(doc)
    fits = doc["fits"]
    est = np.array([[t["estimate"] for t in f["thresholds"]] for f in fits])
    dfcom = np.full(est.shape[1], fits[0]["fixed_effects"][0]["df"])
    own = doc["own_parameters"]
    assert own["kind"] == "thresholds" and [r["name"] for r in own["rows"]] == ["δ(2)", "δ(3)", "δ(4)"]
    _check_rows(own["rows"], est, np.array([[t["se"] ** 2 for t in f["thresholds"]] for f in fits]), dfcom)
    _check_rows(own["rows_robust"], est, np.array([[t["robust_se"] ** 2 for t in f["thresholds"]] for f in fits]),
                dfcom)
    (test,) = doc["hypothesis_tests"]
    assert test["model"] is None and test["robust"]["F"] > 0
    assert "For  THRESHOLD2, δ(2)" in out and "Pseudo-deviance (average over the fits)" in out


@pytest.mark.slow  # the default run's combined own-parameter check: the ordinal thresholds above
def test_negbin_plausible_values(tmp_path):
    """log θ combined on its own scale (each fit's log θ and its SEs), θ = exp of it."""
    doc, out = _pv_doc("salamanders", tmp_path)
    _check_gamma(doc)
    fits = doc["fits"]
    disp = [f["dispersion"] for f in fits]
    est = np.array([[d["log_estimate"] for d in disp]]).T
    dfcom = np.array([fits[0]["fixed_effects"][0]["df"]])
    own = doc["own_parameters"]
    _check_rows(own["rows"], est, np.array([[d["log_se"] ** 2] for d in disp]), dfcom)
    _check_rows(own["rows_robust"], est, np.array([[d["log_robust_se"] ** 2] for d in disp]), dfcom)
    assert own["theta"] == pytest.approx(np.exp(np.mean(est)), rel=1e-12)
    assert "Dispersion, log θ" in out


def test_multinomial_plausible_values(tmp_path):
    """Every logit's γ, one row each with its category; the --test within each logit."""
    doc, out = _pv_doc("sim", tmp_path, "--test", "g10 = 0")
    _check_gamma(doc)
    assert [r["category"] for r in doc["fixed_effects"]] == [1.0] * 3 + [2.0] * 3
    assert doc["own_parameters"] is None and doc["random_coefficients"] == ["INTRCPT1(1)", "INTRCPT1(2)"]
    assert [t["label"] for t in doc["hypothesis_tests"]] == ["g10 = 0 (category 1)", "g10 = 0 (category 2)"]
    # D1 with one restriction is the square of the combined table's t-ratio (plausible.d1_test)
    assert doc["hypothesis_tests"][0]["model"]["F"] == pytest.approx(doc["fixed_effects"][2]["t"] ** 2, rel=1e-10)
    assert "Category 2 (log-odds against category 3)" in out


@pytest.mark.parametrize("family", ["negbinomial", pytest.param("poisson", marks=pytest.mark.slow)])
def test_whole_number_level2_weights_are_replicated_units(family):
    """Level-2 weights 1..3 used as given equal each site repeated that many times (new ids): the pseudo-
    deviance includes the family constant −Σ_j w_j Σ_i log y_ij! (Poisson's as NB's)."""
    l1, l2 = (pd.read_csv(f) for f in files("salamanders"))
    l2["K"] = 1 + l2.site % 3
    reps = [(k, s) for s, n in zip(l2.site, l2.K) for k in range(n)]
    l1r = pd.concat([l1[l1.site == s].assign(site=1000 * k + s) for k, s in reps], ignore_index=True)
    l2r = pd.concat([l2[l2.site == s].assign(site=1000 * k + s) for k, s in reps], ignore_index=True)
    kw = dict(level1_eq="count = b0", level2_eqs=["b0 = g00 + g01*mined + u0"], family=family, estimation="laplace")
    cols = ["site", "count"]
    w = hlmcli.fit(l1[cols], l2[["site", "mined", "K"]], id="site", weight2="K", normalize="none", **kw).analysis
    r = hlmcli.fit(l1r[cols], l2r[["site", "mined"]], id="site", **kw).analysis
    assert w.ml.certificate.certified and r.ml.certificate.certified
    assert w.ml.deviance == pytest.approx(r.ml.deviance, abs=1e-6)
    assert w.gamma == pytest.approx(r.gamma, rel=1e-5)


def test_a_single_unit_with_weights_is_one_line(tmp_path):
    """One level-2 unit: the weighted fit's sandwich over units (J/(J − 1)) does not exist; a data error
    (exit 1, one line), not a division by zero (exit 70)."""
    l1, l2 = (pd.read_csv(f) for f in files("salamanders"))
    paths = tmp_path / "l1.csv", tmp_path / "l2.csv"
    l1[l1.site == 1].to_csv(paths[0], index=False)
    l2[l2.site == 1].to_csv(paths[1], index=False)
    proc = run_cli("fit", *paths, "--id", "site", "-1", "count = b0", "-2", "b0 = g00 + u0", "--family",
                   "negbinomial", "--estimation", "laplace", "--weight1", "W1", "--weight2", "W2")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "1 level-2 unit" in proc.stderr and "at least 2" in proc.stderr
