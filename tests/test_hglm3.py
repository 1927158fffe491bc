"""Three-level HGLM by PQL (engine/nested_glmm.py, analysis/hglm_levels.py), as a user runs it, against
R: the Breslow-Clayton loop around nlme::lme with σ² fixed at 1 and ML, run to max|Δη| < 1e-10
(tests/reference_scripts/hglm3_references.R; glmmPQL itself cannot fix σ² and stops loosely), on lme4's
grouseticks (Poisson). The script also writes mlmRev's Mmmec and guImmun; lme stalls on Mmmec at a
near-singular local optimum of the working model, so Mmmec, guImmun and --reml are checked in
test_hglm3_dense.py (a dense fixed-point check and a PQL loop around glmmTMB)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from conftest import DATA, hlmcli

H3 = DATA / "hglm3"
REF = {"grouseticks": json.loads((H3 / "grouseticks.json").read_text())}

GROUSE = [*(H3 / f"grouse_l{k}.csv" for k in (1, 2, 3)), "--id2", "BROOD", "--id3", "LOCATION",
          "-1", "TICKS = p0", "-2", "p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0",
          "-3", "b00 = g000 + g001*CHEIGHT + u00", "-3", "b01 = g010", "-3", "b02 = g020", "--family", "poisson"]
MMMEC = [*(H3 / f"mmmec_l{k}.csv" for k in (1, 2, 3)), "--id2", "REGION", "--id3", "NATION",
         "-1", "DEATHS = p0 + p1*UVB", "-2", "p0 = b00 + r0", "-2", "p1 = b10",
         "-3", "b00 = g000 + u00", "-3", "b10 = g100 + u10", "--family", "poisson", "--exposure", "EXPECTED"]
GUIMMUN = [*(H3 / f"guimmun_l{k}.csv" for k in (1, 2, 3)), "--id2", "MOM", "--id3", "COMM",
           "-1", "IMMUN = p0 + p1*KID2P + p2*MOM25P + p3*ORD23 + p4*ORD46 + p5*ORD7P",
           "-2", "p0 = b00 + b01*ETHNN + b02*ETHNS + b03*MOMEDP + b04*MOMEDS + b05*HUSEDP + b06*HUSEDS + b07*HUSEDU"
                 " + b08*MOMWORK + r0",
           *[x for k in range(1, 6) for x in ("-2", f"p{k} = b{k}0")],
           "-3", "b00 = g000 + g001*RURAL + g002*PCIND81 + u00",
           *[x for k in range(1, 9) for x in ("-3", f"b0{k} = g0{k}0")],
           *[x for k in range(1, 6) for x in ("-3", f"b{k}0 = g{k}00")], "--family", "bernoulli"]


def _r_name(f: dict) -> str:
    """A fixed effect's column in R's formula: the product of its non-intercept predictors."""
    names = [n for n in (f["level3_predictor"], f["level2_predictor"], f["coefficient"]) if not n.startswith("INTRCPT")]
    return ":".join(names) if names else "(Intercept)"


IDS = {"grouseticks": ("BROOD", "LOCATION"), "mmmec": ("REGION", "NATION"), "guimmun": ("MOM", "COMM")}


def pql_matches(doc: dict, name: str, rel_gamma: float = 1e-6, rel_se: float = 1e-5, rel_tau: float = 1e-5) -> None:
    """A schema-3 HGLM document against R's PQL fixed point (lme stops at |Δη| < 1e-10): γ, their SEs,
    τπ (level 2) and τβ (level 3)."""
    ref = REF[name]
    pq = ref["pql_ml"]
    index = {n: k for k, n in enumerate(ref["fixed"])}
    assert sorted(_r_name(f) for f in doc["fixed_effects"]) == sorted(index)
    for f in doc["fixed_effects"]:
        k = index[_r_name(f)]
        assert f["estimate"] == pytest.approx(pq["gamma"][k], rel=rel_gamma, abs=1e-9), f["gamma"]
        assert f["se"] == pytest.approx(pq["se"][k], rel=rel_se), f["gamma"]
    id2, id3 = IDS[name]
    for key, grouping in (("tau_pi", id2), ("tau_beta", id3)):
        ours = np.array(doc[key]["matrix"])
        assert ours == pytest.approx(np.array(pq["tau"][grouping]).reshape(ours.shape), rel=rel_tau), key
    assert doc["converged"] and doc["hglm"]["fixed_point"]["passed"]


def _schema():
    return json.loads(resources.files("hlmcli").joinpath("schema", "fit-3.json").read_text())


def test_pql_grouseticks_as_typed(tmp_path):
    """The text a user reads and the JSON saved with it from one call: R's PQL numbers, the schema, the
    HGLM parts of the text (distribution, link, rate ratios, no deviance)."""
    jsonschema = pytest.importorskip("jsonschema")
    path = tmp_path / "fit.json"
    proc = hlmcli("fit", *GROUSE, "--json-out", path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, _schema())
    pql_matches(doc, "grouseticks")
    assert doc["deviance"] is None and doc["hglm"]["family"] == "poisson" and doc["hglm"]["pql"] == "full"
    f = doc["fixed_effects"][0]
    assert f["rate_ratio"] == pytest.approx(np.exp(f["estimate"]), rel=1e-12)
    text = proc.stdout
    for line in ("Distribution at Level-1: poisson (log link)", "penalized quasi-likelihood (full PQL, level-1 scale "
                 "fixed at 1)", "PQL converged to its fixed point", "Event Rate Ratio", "Deviance: none",
                 "log[λijk] = ηijk", "glmer(TICKS ~"):
        assert line in text, line
    assert f"{f['estimate']:.6f}" in text and f"{np.exp(f['estimate']):.6f}" in text
    assert "eijk" not in text  # no level-1 residual in an HGLM's level-1 model


def test_refusals_in_one_line():
    """What is not built, or cannot be, refused before any fit with its reason (exit 1 or 2, one line)."""
    for extra, why in ((["--estimation", "agq", "--quadrature-points", "60"], "is 3,600 nodes per unit"),
                       (["--overdispersion", "--family", "bernoulli"], "cannot be estimated for a 0/1 outcome")):
        proc = hlmcli("fit", *GROUSE, *extra)
        assert proc.returncode in (1, 2) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert why in proc.stderr and "Traceback" not in proc.stderr


def test_options_the_pql_loop_would_ignore_are_refused():
    """--link, --quadrature-points and --separation do nothing in the three-level PQL loop (canonical link,
    no quadrature, no search for separation): each refused by name, never accepted and ignored."""
    from hlmcli.api import fit_options
    from hlmcli.capabilities import refuse_family
    from hlmcli.errors import ModelError

    for given, name in (({"link": "probit"}, "--link"), ({"quadrature_points": 5}, "--quadrature-points"),
                        ({"separation": "fit"}, "--separation"), ({"separation": "refuse"}, "--separation")):
        with pytest.raises(ModelError, match=f"^{name}: not available for a three-level HGLM PQL fit"):
            refuse_family(3, fit_options(family="poisson", **given))
    refuse_family(3, fit_options(family="poisson", estimation="pql"))  # what it does use passes


def grouse_glm():
    """grouseticks' model of GROUSE as engine arrays (nested.LevelsData), records sorted by unit."""
    import pandas as pd

    from hlmcli.engine.family import family
    from hlmcli.engine.nested import Coefficient, LevelsData
    from hlmcli.engine.nested_glmm import LevelsGLMData

    l1 = pd.read_csv(H3 / "grouse_l1.csv", dtype={"BROOD": str})
    l2 = pd.read_csv(H3 / "grouse_l2.csv", dtype={"BROOD": str, "LOCATION": str})
    l3 = pd.read_csv(H3 / "grouse_l3.csv", dtype={"LOCATION": str}).sort_values("LOCATION").reset_index(drop=True)
    l3["k"] = np.arange(len(l3))
    l2 = l2.merge(l3[["LOCATION", "k"]], on="LOCATION").sort_values(["k", "BROOD"]).reset_index(drop=True)
    l2["j"] = np.arange(len(l2))
    l1 = l1.merge(l2[["BROOD", "j"]], on="BROOD").sort_values("j", kind="stable").reset_index(drop=True)
    top = (Coefficient(None),)
    b00 = Coefficient(None, (Coefficient(None), Coefficient(0)), True)
    pi0 = Coefficient(None, (b00, Coefficient(0, top), Coefficient(1, top)), True)
    data = LevelsData(l1.TICKS.to_numpy(float), (np.zeros((len(l1), 0)), l2[["YEAR96", "YEAR97"]].to_numpy(float),
                                                 l3[["CHEIGHT"]].to_numpy(float)),
                      (l1.j.to_numpy(), l2.k.to_numpy()), (pi0,))
    return LevelsGLMData(data, family("poisson"))


def test_fixed_point_check_can_fail():
    """The fixed-point check tells a point that is not PQL's fixed point: the first macro iteration's
    fit lies far above the optimum of the model linearised at the converged η, which the last
    iteration's fit does not (within the certificates' tolerance)."""
    from hlmcli.engine.nested_glmm import fixed_point_excess, inner_fit, pql_levels

    glm = grouse_glm()
    res = pql_levels(glm, check=False)
    eta0 = glm.family.start(glm.data.y, None, None)
    first, c0 = inner_fit(glm, eta0, False, False, False, 1000)
    final, c1 = inner_fit(glm, res.eta, False, False, False, 1000)
    excess, tol = fixed_point_excess(first, c0, final, c1, False, False)
    assert excess > 1e3 * tol
    again, c2 = inner_fit(glm, res.eta, False, False, False, 1000)
    excess, tol = fixed_point_excess(again, c2, final, c1, False, False)
    assert abs(excess) <= tol
    g = {n: v for n, v in zip(["(Intercept)", "CHEIGHT", "YEAR96", "YEAR97"], res.gamma)}
    ref = REF["grouseticks"]["pql_ml"]
    assert [g[n] for n in REF["grouseticks"]["fixed"]] == pytest.approx(ref["gamma"], rel=1e-6)


def test_weight_refusal_names_every_weight_option():
    """--weight3 on a three-level HGLM is refused in words that cover it (the message named
    --weight1/--weight2 only)."""
    from hlmcli.api import fit_options
    from hlmcli.capabilities import refuse

    with pytest.raises(Exception, match=r"^--weight1 \.\.\. --weight4: not available for a three-level HGLM PQL fit"):
        refuse("weights", "three-level-pql")
    assert fit_options(weight3="W").weight3 == "W"
