"""Three-level HGLM by nested adaptive Gauss-Hermite quadrature (engine/nested_agq.py), a random intercept
at each level, against references that compute the nested integral their own ways.

1. tests/reference_scripts/hglm3_agq.R (numbers in tests/data/hglm3/agq_integral.json): the integral by
   trapezoidal rules around each integral's own mode (the outer one around the mode of the level-3 unit's
   marginal integrand, not the joint mode), maximised by nlminb and optim BFGS, the gradient checked by
   numDeriv, SEs from numDeriv's Hessian (cov = 2H⁻¹, as ours and glmer's). glmer and glmmTMB have no nested
   AGQ. Our deviance at most R's (to rounding) and within 1e-6 relative of it; γ and τ to 1e-4, SEs to 1e-3.
2. scipy.integrate.quad, nested (an inner quad per level-2 unit inside the outer quad per level-3 unit), on a
   tiny Bernoulli data set made here: our 25-point deviance equals it.
3. At one point our 1-point deviance is the Laplace deviance of nested_laplace.py, exactly.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from conftest import DATA, hlmcli

H3 = DATA / "hglm3"
REF = json.loads((H3 / "agq_integral.json").read_text())

MODELS = {
    "mmmec_intercepts": [*(H3 / f"mmmec_l{k}.csv" for k in (1, 2, 3)), "--id2", "REGION", "--id3", "NATION",
                         "-1", "DEATHS = p0 + p1*UVB", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-3", "b00 = g000 + u00",
                         "-3", "b10 = g100", "--family", "poisson", "--exposure", "EXPECTED"],
    "grouseticks": [*(H3 / f"grouse_l{k}.csv" for k in (1, 2, 3)), "--id2", "BROOD", "--id3", "LOCATION",
                    "-1", "TICKS = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
                    "-3", "b00 = g000 + g001*CHEIGHT + u00", "-3", "b01 = g010", "-3", "b02 = g020", "--family", "poisson"],
    "binomial": [*(H3 / f"binom_l{k}.csv" for k in (1, 2, 3)), "--id2", "CLASS", "--id3", "SCHOOL",
                 "-1", "Y = p0 + p1*X", "-2", "p0 = b00 + b01*W + r0", "-2", "p1 = b10", "-3", "b00 = g000 + g001*Z + u00",
                 "-3", "b01 = g010", "-3", "b10 = g100", "--family", "binomial", "--trials", "TRIALS"],
}


def _r_name(f: dict) -> str:
    names = [n for n in (f["level3_predictor"], f["level2_predictor"], f["coefficient"]) if not n.startswith("INTRCPT")]
    return ":".join(names) if names else "(Intercept)"


def agq_matches(doc: dict, name: str) -> None:
    """Our fit against R's integral. Our deviance is within 1e-6 relative of R's, the accuracy the number of
    points is chosen for (hglm.QUAD_TOL); with 15 points or more the quadrature error is below 1e-9, and our
    deviance must be at most R's (to rounding: R's optimiser stops above the optimum, never below it)."""
    ref = REF[name]
    assert doc["converged"] and doc["certificate"]["certified"], doc["certificate"]["failed"]
    if doc["hglm"]["quadrature_points"] >= 15:
        assert doc["deviance"] <= ref["deviance"] + 1e-10 * abs(ref["deviance"])
    assert doc["deviance"] == pytest.approx(ref["deviance"], rel=1e-6, abs=0)
    index = {n: k for k, n in enumerate(ref["fixed"])}
    assert sorted(_r_name(f) for f in doc["fixed_effects"]) == sorted(index)
    for f in doc["fixed_effects"]:
        k = index[_r_name(f)]
        assert abs(f["estimate"] - ref["gamma"][k]) <= 1e-4 * max(abs(ref["gamma"][k]), ref["se"][k]), f["gamma"]
        assert f["se"] == pytest.approx(ref["se"][k], rel=1e-3), f["gamma"]
    assert doc["tau_pi"]["matrix"][0][0] == pytest.approx(ref["tau_pi"], rel=1e-4)
    assert doc["tau_beta"]["matrix"][0][0] == pytest.approx(ref["tau_beta"], rel=1e-4)


@pytest.fixture(scope="module")
def mmmec_run(tmp_path_factory):
    """Mmmec by AGQ as a user types it (the number of points chosen adaptively): (JSON document, text)."""
    out = tmp_path_factory.mktemp("mmmec") / "fit.json"
    proc = hlmcli("fit", *MODELS["mmmec_intercepts"], "--estimation", "agq", "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text()), proc.stdout


def test_mmmec_as_typed(mmmec_run):
    """The R integral's optimum; the text says how it was estimated, the quadrature's check and the deviance;
    the JSON carries the points, the check and the Laplace deviance (glmer's, at its own optimum)."""
    jsonschema = pytest.importorskip("jsonschema")
    doc, text = mmmec_run
    jsonschema.validate(doc, json.loads(resources.files("hlmcli").joinpath("schema", "fit-3.json").read_text()))
    agq_matches(doc, "mmmec_intercepts")
    h = doc["hglm"]
    assert h["estimation"] == "agq" and h["quadrature_points"] == 7 and h["quadrature"]["adaptive"]
    assert h["quadrature"]["accurate"] and h["quadrature"]["check_points"] == 9
    assert h["laplace_deviance"] == pytest.approx(REF["mmmec_intercepts"]["laplace_deviance"], rel=1e-9)
    assert doc["n_params"] == 4 and doc["loglik"] == pytest.approx(-doc["deviance"] / 2, rel=1e-15)
    for line in ("Method of estimation: adaptive Gauss-Hermite quadrature (7 points, the same at both levels",
                 f"Deviance = {doc['deviance']:.6f} (adaptive quadrature, 7 points at each level",
                 "Quadrature: 7 points at each level (chosen adaptively); at the optimum the deviance with 9 points",
                 "Iterations stopped at the optimum (checked: no change of γ, τπ or τβ lowers the deviance)"):
        assert line in text, line
    assert "nAGQ = 1" not in text and "(macro iterations)" not in text


@pytest.mark.slow
@pytest.mark.parametrize("name,points", [("grouseticks", None), ("grouseticks", "15"), ("binomial", None),
                                         ("binomial", "15")])
def test_against_r_integral(name, points, tmp_path):
    """Poisson without exposure (grouseticks: 9 points chosen, 5e-4 above R's integral, its quadrature error (2.8e-7
    relative), τβ 9e-5 relative off; with 15 points 1e-8 above, estimates to 1e-7); binomial with trials (7 points
    chosen: 5e-6 above; with 15 at or below it). 1-3 s of CPU each."""
    out = tmp_path / "fit.json"
    given = ["--quadrature-points", points] if points else []
    proc = hlmcli("fit", *MODELS[name], "--estimation", "agq", *given, "--json-out", out)
    assert proc.returncode == 0, proc.stderr
    agq_matches(json.loads(out.read_text()), name)


def test_compare_refuses_another_number_of_points(mmmec_run, tmp_path):
    """A deviance of 15 points is not on the scale of one of 7: compare refuses the pair in one line."""
    seven, other = tmp_path / "k7.json", tmp_path / "k15.json"
    seven.write_text(json.dumps(mmmec_run[0]))
    doc = json.loads(json.dumps(mmmec_run[0]))
    doc["hglm"]["quadrature_points"] = 15
    other.write_text(json.dumps(doc))
    proc = hlmcli("compare", seven, other)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "quadrature points included" in proc.stderr


@pytest.mark.slow
def test_given_points(tmp_path):
    """--quadrature-points 15 is used as given, at both levels: at or below R's deviance (the quadrature error is
    below 1e-9 here). (1 s)"""
    out = tmp_path / "k15.json"
    proc = hlmcli("fit", *MODELS["mmmec_intercepts"], "--estimation", "agq", "--quadrature-points", "15",
                  "--json-out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["hglm"]["quadrature_points"] == 15 and not doc["hglm"]["quadrature"]["adaptive"]
    agq_matches(doc, "mmmec_intercepts")


# ---------------------------------------------------------------- the engine against independent integrals

def _levels(y, x, j, k2, family_name, offset=None, trials=None):
    """LevelsGLMData of a random intercept at each level and one fixed level-1 slope (records sorted by unit)."""
    from hlmcli.engine.family import family
    from hlmcli.engine.nested import Coefficient, LevelsData
    from hlmcli.engine.nested_glmm import LevelsGLMData

    top = (Coefficient(None),)
    pi0 = Coefficient(None, (Coefficient(None, top, True),), True)
    pi1 = Coefficient(0, (Coefficient(None, top, False),), False)
    J2, J3 = int(j.max()) + 1, int(k2.max()) + 1
    data = LevelsData(np.asarray(y, float), (x.reshape(-1, 1), np.zeros((J2, 0)), np.zeros((J3, 0))), (j, k2),
                      (pi0, pi1))
    return LevelsGLMData(data, family(family_name), trials, offset)


def _mmmec():
    import pandas as pd

    l1 = pd.read_csv(H3 / "mmmec_l1.csv", dtype={"REGION": str})
    l2 = pd.read_csv(H3 / "mmmec_l2.csv", dtype={"REGION": str, "NATION": str}).sort_values(["NATION", "REGION"])
    l2 = l2.reset_index(drop=True)
    l2["k"] = pd.factorize(l2.NATION)[0]
    l2["j"] = np.arange(len(l2))
    l1 = l1.merge(l2[["REGION", "j"]], on="REGION").sort_values("j", kind="stable").reset_index(drop=True)
    return _levels(l1.DEATHS.to_numpy(float), l1.UVB.to_numpy(float), l1.j.to_numpy(), l2.k.to_numpy(), "poisson",
                   offset=np.log(l1.EXPECTED.to_numpy(float)))


def test_one_point_is_laplace():
    """K = 1: the outer node at the joint mode, each inner one at the conditional mode there (= the joint
    mode), the scales H_jj^(-1/2) and S_k^(-1/2): nested_laplace's deviance to rounding, away from the optimum."""
    from hlmcli.engine.nested_agq import NestedAGQ
    from hlmcli.engine.nested_laplace import NestedLaplace

    glm = _mmmec()
    gamma, L2, L3 = np.array([-0.1, -0.03]), np.array([[0.3]]), np.array([[0.5]])
    laplace = NestedLaplace(glm).evaluate(gamma, L2, L3, grad=False)
    assert NestedAGQ(glm, 1).deviance(gamma, L2, L3) == pytest.approx(laplace, rel=1e-13)


def test_deviance_converges_in_points_to_the_r_integral():
    """At R's optimum, the deviance with N = 1, 5, 9, 15, 25 points moves towards R's integral, and with 9 or
    more it is the integral to 1e-9 relative (Mmmec: 9 nations, 78 regions)."""
    from hlmcli.engine.nested_agq import NestedAGQ

    ref = REF["mmmec_intercepts"]
    glm = _mmmec()
    gamma = np.array(ref["gamma"])
    L2, L3 = np.array([[np.sqrt(ref["tau_pi"])]]), np.array([[np.sqrt(ref["tau_beta"])]])
    err = [abs(NestedAGQ(glm, K).deviance(gamma, L2, L3) - ref["deviance"]) for K in (1, 5, 9, 15, 25)]
    assert err[0] > 0.05 and err[0] > err[1] > err[2] * 10  # Laplace is 0.065 off; 5 points 1e-4
    assert max(err[2:]) <= 1e-9 * ref["deviance"]


def test_nested_quad_on_a_tiny_data_set():
    """scipy.integrate.quad inside quad: a Bernoulli outcome, 2 level-3 units of 2 level-2 units of 3 records
    each; our nested AGQ converges to its deviance (25 points: 1e-12 relative), and 1 point (Laplace) is 0.16 off."""
    import math

    from scipy import integrate

    from hlmcli.engine.nested_agq import NestedAGQ

    j, k2 = np.repeat(np.arange(4), 3), np.repeat(np.arange(2), 2)
    x = np.array([-1.2, 0.3, 0.8, 0.1, -0.5, 1.4, -0.9, 0.6, 0.2, 1.1, -0.3, -1.6])
    y = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0], float)
    gamma, lam2, lam3 = (0.2, 0.7), 0.9, 1.3
    records = [[(float(x[i]), float(y[i])) for i in np.flatnonzero(j == u)] for u in range(4)]

    def level2(u, u3):
        def f(u2):
            ll = 0.0
            for xi, yi in records[u]:
                eta = gamma[0] + gamma[1] * xi + lam2 * u2 + lam3 * u3
                ll += yi * eta - (max(eta, 0.0) + math.log1p(math.exp(-abs(eta))))
            return math.exp(ll - 0.5 * u2 * u2)

        return integrate.quad(f, -10, 10, epsabs=0, epsrel=1e-11)[0] / math.sqrt(2 * math.pi)

    dev = 0.0
    for k in range(2):
        L = integrate.quad(lambda u3: math.exp(-0.5 * u3 * u3) * level2(2 * k, u3) * level2(2 * k + 1, u3), -10, 10,
                           epsabs=0, epsrel=1e-11)[0] / math.sqrt(2 * math.pi)
        dev -= 2 * math.log(L)
    glm = _levels(y, x, j, k2, "bernoulli")
    err = [NestedAGQ(glm, K).deviance(np.array(gamma), np.array([[lam2]]), np.array([[lam3]])) - dev
           for K in (1, 5, 9, 15, 25)]
    assert 0.1 < err[0] < 0.2 and abs(err[1]) < 1e-3 and abs(err[2]) < 1e-6
    assert abs(err[3]) < 1e-9 * dev and abs(err[4]) < 1e-12 * dev


# ---------------------------------------------------------------- what is not built: refused in one line

def test_random_slope_refused_in_one_line():
    """A random slope at either level: the nested rule would grow as N^(q2+q3) per record; refused before fitting
    (too many points: tests/test_hglm3.py; --reml and --overdispersion: the Laplace column's refusals)."""
    slope = [x if x != "p1 = b10" else "p1 = b10 + r1" for x in MODELS["mmmec_intercepts"]]
    proc = hlmcli("fit", *slope, "--estimation", "agq")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "it has 2 random effect(s) at level 2 and 1 at level 3; the nested rule with N points per random effect " \
           "costs N^(q2+q3)" in proc.stderr and "Traceback" not in proc.stderr


def test_options_of_pql_refused():
    """--overdispersion and --reml are PQL's; the AGQ likelihood has neither (refused before reading data)."""
    from hlmcli.analysis.hglm_levels import check_options_levels
    from hlmcli.api import fit_options
    from hlmcli.errors import ModelError

    with pytest.raises(ModelError, match="^--overdispersion: not available with --estimation agq: .* the AGQ "
                                         "likelihood has none"):
        check_options_levels(fit_options(family="poisson", estimation="agq", overdispersion=True))
    with pytest.raises(ModelError, match="^--reml: not available with --estimation agq: AGQ maximises the likelihood"):
        check_options_levels(fit_options(family="poisson", estimation="agq", method="REML"))
    check_options_levels(fit_options(family="poisson", estimation="agq"))  # what it does use passes


def test_more_points_advised_only_after_a_failed_check():
    """Given K, 'raise --quadrature-points' follows a check with the next K that failed; at K = 41 and above
    no next K is within the budget (nothing is checked), and more points would go unchecked too."""
    from hlmcli.engine.hglm import QuadratureCheck
    from hlmcli.report.report_hglm_levels import quadrature_line

    def check(points, adaptive, check_points, change):
        return QuadratureCheck(points=points, adaptive=adaptive, check_points=check_points,
                               deviance_check=None if check_points is None else 1.0, change=change, tolerance=1e-6,
                               accurate=change is not None and change <= 1e-6, budget=41)

    assert quadrature_line(check(2, False, 7, 1.5e-3)).endswith("; raise --quadrature-points")
    assert "raise" not in quadrature_line(check(41, False, None, None))
    assert "no accuracy check within the budget" in quadrature_line(check(41, False, None, None))
    assert "raise" not in quadrature_line(check(7, False, 9, 1e-9))
    assert "raise" not in quadrature_line(check(7, True, 9, 1e-9))


@pytest.mark.slow
def test_points_past_the_budget_as_typed():
    """--quadrature-points 41 on mmmec: the text says no check was made and advises no more points (3.7 s CPU)."""
    proc = hlmcli("fit", *MODELS["mmmec_intercepts"], "--estimation", "agq", "--quadrature-points", "41")
    assert proc.returncode == 0, proc.stderr
    line = next(s for s in proc.stdout.splitlines() if s.startswith("Quadrature:"))
    assert "41 points at each level (as given); no accuracy check within the budget" in line
    assert "raise --quadrature-points" not in line
