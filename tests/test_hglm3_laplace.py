"""Three-level HGLM by Laplace (engine/nested_laplace.py) against two references.

1. lme4::glmer (nAGQ = 1; bobyqa rhoend 1e-12, tolPwrss 1e-13) and glmmTMB (rel.tol 1e-14), two
   implementations of the same Laplace likelihood (tests/reference_scripts/hglm3_laplace_glmer.R, numbers in
   tests/data/hglm3/laplace_glmer.json): lme4's grouseticks (Poisson, chicks in broods in locations), mlmRev's
   Mmmec (Poisson with exposure; random intercepts at both levels, a random UVB slope across regions (level 2)
   and one across nations (level 3)) and mlmRev's guImmun (Bernoulli, 2159 children in 1595 mothers in 161
   communities; slow). Our deviance must be at most the lower of the two references' (to rounding) and within
   1e-6 relative of it. The estimates are compared with the reference that reached the lower deviance: that
   one stopped nearest the optimum; both stop short of it (glmer by up to 6e-6 deviance units, glmmTMB's
   nlminb by 4e-8), which moves each estimate by a fraction of its SE, so γ is held to 1e-4 of max(|γ|, SE)
   and τ to 1e-3 of √(τ_aa τ_bb). SEs against glmmTMB's, from TMB's exact Hessian (glmer's come from a
   numerical Hessian of its deviance and differ from glmmTMB's by up to 1e-3 themselves), to 1e-3.
2. An independent dense Laplace in this file (numpy only): the design built from the CSV files, all random
   effects of the data in one vector, the joint mode by dense Newton and log|H| of the dense H. At our
   estimates it must give our deviance, and our point must be stationary for it (central differences in
   (γ, τ)).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, hlmcli

H3 = DATA / "hglm3"
REF = json.loads((H3 / "laplace_glmer.json").read_text())

FILES = {"grouse": ("BROOD", "LOCATION"), "mmmec": ("REGION", "NATION"), "guimmun": ("MOM", "COMM"),
         "binom": ("CLASS", "SCHOOL")}
MODELS = {
    "grouseticks": dict(file="grouse", family="poisson", level1_eq="TICKS = p0",
                        level2_eqs=["p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0"],
                        level3_eqs=["b00 = g000 + g001*CHEIGHT + u00", "b01 = g010", "b02 = g020"]),
    "grouse_boundary": dict(file="grouse", family="poisson", level1_eq="TICKS = p0",
                            level2_eqs=["p0 = b00 + b01*YEAR96 + b02*YEAR97 + r0"],
                            level3_eqs=["b00 = g000 + g001*CHEIGHT + u00", "b01 = g010 + u01", "b02 = g020"]),
    "mmmec_intercepts": dict(file="mmmec", family="poisson", exposure="EXPECTED", level1_eq="DEATHS = p0 + p1*UVB",
                             level2_eqs=["p0 = b00 + r0", "p1 = b10"], level3_eqs=["b00 = g000 + u00", "b10 = g100"]),
    "mmmec_slope2": dict(file="mmmec", family="poisson", exposure="EXPECTED", level1_eq="DEATHS = p0 + p1*UVB",
                         level2_eqs=["p0 = b00 + r0", "p1 = b10 + r1"], level3_eqs=["b00 = g000 + u00", "b10 = g100"]),
    "mmmec_slope2_diag": dict(file="mmmec", family="poisson", exposure="EXPECTED", tau="diagonal",
                              level1_eq="DEATHS = p0 + p1*UVB", level2_eqs=["p0 = b00 + r0", "p1 = b10 + r1"],
                              level3_eqs=["b00 = g000 + u00", "b10 = g100"]),
    "binomial": dict(file="binom", family="binomial", trials="TRIALS", level1_eq="Y = p0 + p1*X",
                     level2_eqs=["p0 = b00 + b01*W + r0", "p1 = b10"],
                     level3_eqs=["b00 = g000 + g001*Z + u00", "b01 = g010", "b10 = g100"]),
    "mmmec_slope3": dict(file="mmmec", family="poisson", exposure="EXPECTED", level1_eq="DEATHS = p0 + p1*UVB",
                         level2_eqs=["p0 = b00 + r0", "p1 = b10"], level3_eqs=["b00 = g000 + u00", "b10 = g100 + u10"]),
    "guimmun": dict(file="guimmun", family="bernoulli",
                    level1_eq="IMMUN = p0 + p1*KID2P + p2*MOM25P + p3*ORD23 + p4*ORD46 + p5*ORD7P",
                    level2_eqs=["p0 = b00 + b01*ETHNN + b02*ETHNS + b03*MOMEDP + b04*MOMEDS + b05*HUSEDP + b06*HUSEDS"
                                " + b07*HUSEDU + b08*MOMWORK + r0", *[f"p{k} = b{k}0" for k in range(1, 6)]],
                    level3_eqs=["b00 = g000 + g001*RURAL + g002*PCIND81 + u00",
                                *[f"b0{k} = g0{k}0" for k in range(1, 9)], *[f"b{k}0 = g{k}00" for k in range(1, 6)]]),
}


def cli_args(name: str) -> list:
    m = MODELS[name]
    id2, id3 = FILES[m["file"]]
    args = [*(H3 / f"{m['file']}_l{k}.csv" for k in (1, 2, 3)), "--id2", id2, "--id3", id3, "-1", m["level1_eq"]]
    for eq in m["level2_eqs"]:
        args += ["-2", eq]
    for eq in m["level3_eqs"]:
        args += ["-3", eq]
    args += ["--family", m["family"], "--estimation", "laplace"]
    for key in ("exposure", "trials", "tau"):
        args += [f"--{key}", m[key]] if m.get(key) else []
    return args


def api_fit(name: str) -> dict:
    import hlmcli as api

    m = dict(MODELS[name])
    f = m.pop("file")
    id2, id3 = FILES[f]
    res = api.fit(H3 / f"{f}_l1.csv", H3 / f"{f}_l2.csv", level3=H3 / f"{f}_l3.csv", id2=id2, id3=id3,
                  estimation="laplace", warn=lambda msg: None, **m)
    return res.to_dict()


def _r_name(f: dict) -> str:
    names = [n for n in (f["level3_predictor"], f["level2_predictor"], f["coefficient"]) if not n.startswith("INTRCPT")]
    return ":".join(names) if names else "(Intercept)"


def laplace_matches(doc: dict, name: str) -> None:
    """A schema-3 Laplace document against glmer and glmmTMB (module docstring)."""
    ref = REF[name]
    g, t = ref["glmer"], ref["glmmTMB"]
    best = g if g["deviance"] <= t["deviance"] else t
    assert doc["converged"] and doc["certificate"]["certified"], doc["certificate"]["failed"]
    assert doc["deviance"] <= best["deviance"] + 1e-9 * abs(best["deviance"])
    assert doc["deviance"] == pytest.approx(best["deviance"], rel=1e-6, abs=0)
    index = {n: k for k, n in enumerate(g["fixed"])}
    assert sorted(_r_name(f) for f in doc["fixed_effects"]) == sorted(index)
    for f in doc["fixed_effects"]:
        k = index[_r_name(f)]
        assert abs(f["estimate"] - best["gamma"][k]) <= 1e-4 * max(abs(best["gamma"][k]), t["se"][k]), f["gamma"]
        assert f["se"] == pytest.approx(t["se"][k], rel=1e-3), f["gamma"]
    m = MODELS[name]
    id2, id3 = FILES[m["file"]]
    for key, grouping in (("tau_pi", id2), ("tau_beta", id3)):
        ours = np.array(doc[key]["matrix"])
        theirs = next(np.array(v) for k, v in best["tau"].items() if k.split(":")[0] == grouping).reshape(ours.shape)
        scale = np.sqrt(np.outer(np.diag(theirs), np.diag(theirs)))
        assert np.all(np.abs(ours - theirs) <= 1e-3 * scale), (key, ours, theirs)


@pytest.fixture(scope="module")
def grouse_doc(tmp_path_factory):
    """grouseticks by Laplace as a user types it, with the residual files of the three levels: (the JSON
    document, the text printed, {level: residual file as a DataFrame})."""
    out = tmp_path_factory.mktemp("grouse")
    files = {k: out / f"res{k}.csv" for k in (1, 2, 3)}
    proc = hlmcli("fit", *cli_args("grouseticks"), "--json-out", out / "fit.json",
                  *[x for k in (1, 2, 3) for x in (f"--residuals-l{k}", files[k])], "--keep", "INDEX")
    assert proc.returncode == 0, proc.stderr
    tables = {k: pd.read_csv(files[k], dtype={"id": str, "BROOD": str, "LOCATION": str, "INDEX": str}) for k in files}
    return json.loads((out / "fit.json").read_text()), proc.stdout, tables


def test_grouseticks_as_typed(grouse_doc):
    """The text and the JSON of one call: glmer's and glmmTMB's numbers, the schema, the deviance printed,
    the certificate's line, no PQL lines."""
    jsonschema = pytest.importorskip("jsonschema")
    doc, text, _ = grouse_doc
    jsonschema.validate(doc, json.loads(resources.files("hlmcli").joinpath("schema", "fit-3.json").read_text()))
    laplace_matches(doc, "grouseticks")
    h = doc["hglm"]
    assert h["estimation"] == "laplace" and h["pql"] is None and h["macro_iterations"] is None
    assert doc["loglik"] == pytest.approx(-doc["deviance"] / 2, rel=1e-15) and doc["n_params"] == 6
    for line in ("Laplace approximation to the likelihood (maximum likelihood, as glmer's nAGQ = 1)",
                 f"Deviance = {doc['deviance']:.6f}", "Iterations stopped at the optimum (checked: no change of γ, "
                 "τπ or τβ lowers the deviance)", "Number of estimated parameters = 6", "glmer(TICKS ~"):
        assert line in text, line
    assert "(macro iterations)" not in text and "PQL converged" not in text and "Deviance: none" not in text


@pytest.mark.parametrize("name", ["mmmec_intercepts", "mmmec_slope2", "mmmec_slope2_diag", "mmmec_slope3", "binomial"])
def test_against_glmer(name):
    """Random intercepts with an exposure; a random slope at level 2 (Mmmec's UVB across regions),
    unstructured and diagonal; one at level 3 (across nations); a binomial outcome with trials. (0.1-0.3 s
    of CPU each.)"""
    laplace_matches(api_fit(name), name)


@pytest.mark.slow
def test_guimmun_against_glmer():
    """Bernoulli, 2159 children in 1595 mothers in 161 communities, 16 fixed effects."""
    laplace_matches(api_fit("guimmun"), "guimmun")


def test_boundary_optimum_against_glmer():
    """τβ singular at the optimum (a YEAR96 slope across locations perfectly correlated with the intercept,
    as glmer and glmmTMB find it): certified on the face of rank 1 with no descent into the cone, at or
    below both references' deviance, and said to be a boundary estimate."""
    doc = api_fit("grouse_boundary")
    laplace_matches(doc, "grouse_boundary")
    assert doc["certificate"]["rank"] == [1, 1] and doc["certificate"]["null_space_min_eigenvalue"][1] > 0
    assert any("τβ is singular at the optimum" in n for n in doc["boundary_notes"])


# ---------------------------------------------------------------- the dense check

def _frame(name: str) -> pd.DataFrame:
    m = MODELS[name]
    id2, id3 = FILES[m["file"]]
    l1, l2, l3 = (pd.read_csv(H3 / f"{m['file']}_l{k}.csv", dtype={id2: str, id3: str}) for k in (1, 2, 3))
    return l1.merge(l2, on=id2, how="left").merge(l3, on=id3, how="left")


def _col(frame, names) -> np.ndarray:
    v = np.ones(len(frame))
    for n in names:
        if n and not n.startswith("INTRCPT"):
            v = v * frame[n].to_numpy(float)
    return v


class DenseLaplace:
    """The Laplace deviance of a three-level model from the merged records, all random effects in one
    vector u (each level-2 unit's q2, each level-3 unit's q3): η = Xγ + Z̃u, Z̃ dense with Λ folded in."""

    def __init__(self, frame, y, X, Z2, Z3, id2, id3, family, offset=None, trials=None):
        from scipy.special import gammaln

        self.y, self.X, self.family, self.offset = y, X, family, offset
        self.n = np.ones_like(y) if trials is None else trials
        self.g2 = pd.factorize(frame[id2])[0]
        self.g3 = pd.factorize(frame[id3])[0]
        self.Z2, self.Z3 = Z2, Z3
        self.J2, self.J3 = self.g2.max() + 1, self.g3.max() + 1
        self.const = -float(np.sum(gammaln(y + 1))) if family == "poisson" else \
            float(np.sum(gammaln(self.n + 1) - gammaln(y + 1) - gammaln(self.n - y + 1)))

    def design(self, L2, L3):
        q2, q3 = L2.shape[0], L3.shape[0]
        N = self.y.size
        Zt = np.zeros((N, self.J2 * q2 + self.J3 * q3))
        A, B = self.Z2 @ L2, self.Z3 @ L3
        for a in range(q2):
            Zt[np.arange(N), self.g2 * q2 + a] = A[:, a]
        for b in range(q3):
            Zt[np.arange(N), self.J2 * q2 + self.g3 * q3 + b] = B[:, b]
        return Zt

    @staticmethod
    def hessian(Zt, W):
        """I + Z̃'WZ̃, dense, from each record's outer product over its nonzero entries (a dense product of
        the N × n matrices costs more CPU than the whole fit in threaded BLAS on a loaded machine)."""
        n = Zt.shape[1]
        rows, cols = np.nonzero(Zt)
        per = np.bincount(rows, minlength=Zt.shape[0])
        assert np.all(per == per[0])  # the same number of random effects touch every record
        C = cols.reshape(-1, per[0])
        V = Zt[rows, cols].reshape(-1, per[0])
        H = np.eye(n)
        np.add.at(H, (C[:, :, None], C[:, None, :]), W[:, None, None] * V[:, :, None] * V[:, None, :])
        return H

    def loglik(self, eta):
        if self.family == "poisson":
            return self.y * eta - np.exp(eta), self.y - np.exp(eta), np.exp(eta)
        p = 1 / (1 + np.exp(-eta))
        return self.y * eta - self.n * np.logaddexp(0, eta), self.y - self.n * p, self.n * p * (1 - p)

    def deviance(self, gamma, tau_pi, tau_beta):
        return self._solve(gamma, tau_pi, tau_beta)[0]

    def modes(self, gamma, tau_pi, tau_beta):
        """(û, H⁻¹) at the joint mode, u in the order (level-2 units, then level-3 units) of factorize."""
        _, u, H = self._solve(gamma, tau_pi, tau_beta)
        return u, np.linalg.inv(H)

    def _solve(self, gamma, tau_pi, tau_beta):
        L2, L3 = np.linalg.cholesky(tau_pi), np.linalg.cholesky(tau_beta)
        Zt = self.design(L2, L3)
        base = self.X @ gamma + (0 if self.offset is None else self.offset)
        u = np.zeros(Zt.shape[1])
        f = np.sum(self.loglik(base)[0])
        for _ in range(100):
            ll, dl, W = self.loglik(base + Zt @ u)
            H = self.hessian(Zt, W)
            step = np.linalg.solve(H, Zt.T @ dl - u)
            t = 1.0
            while True:
                un = u + t * step
                fn = np.sum(self.loglik(base + Zt @ un)[0]) - 0.5 * un @ un
                if fn >= f - 1e-12 * abs(f) or t < 1e-10:
                    break
                t /= 2
            u, f = un, fn
            if np.max(np.abs(t * step)) < 1e-10:  # the deviance is stationary in u: an error of 1e-10 is 1e-20 in it
                break
        ll, dl, W = self.loglik(base + Zt @ u)
        H = self.hessian(Zt, W)
        return float(-2 * (np.sum(ll) + self.const) + u @ u + np.linalg.slogdet(H)[1]), u, H


def dense_of(name: str, doc: dict):
    """The dense objective of `name` and our (γ, τπ, τβ) in its order."""
    m = MODELS[name]
    id2, id3 = FILES[m["file"]]
    frame = _frame(name)
    y = frame[m["level1_eq"].split("=")[0].strip()].to_numpy(float)
    fixed = doc["fixed_effects"]
    X = np.column_stack([_col(frame, (f["coefficient"], f["level2_predictor"], f["level3_predictor"])) for f in fixed])
    gamma = np.array([f["estimate"] for f in fixed])
    Z2 = np.column_stack([_col(frame, (c,)) for c in doc["tau_pi"]["coefficients"]])
    Z3 = np.column_stack([_col(frame, c.split("/")) for c in doc["tau_beta"]["coefficients"]])
    offset = np.log(frame[m["exposure"]].to_numpy(float)) if m.get("exposure") else None
    trials = frame[m["trials"]].to_numpy(float) if m.get("trials") else None
    dense = DenseLaplace(frame, y, X, Z2, Z3, id2, id3, m["family"], offset, trials)
    return dense, gamma, np.array(doc["tau_pi"]["matrix"]), np.array(doc["tau_beta"]["matrix"])


def dense_check(name: str, doc: dict) -> None:
    dense, gamma, tp, tb = dense_of(name, doc)
    d0 = dense.deviance(gamma, tp, tb)
    assert d0 == pytest.approx(doc["deviance"], rel=1e-10, abs=0)
    # stationary in (γ, τ): the central difference of the dense deviance along each coordinate, against
    # its curvature there, predicts a decrease below 1e-6 deviance units
    coords = [("g", k) for k in range(gamma.size)] + [("p", a, c) for a, c in zip(*np.tril_indices(tp.shape[0]))] + \
             [("b", a, c) for a, c in zip(*np.tril_indices(tb.shape[0]))]
    for cd in coords:
        if cd[0] == "g":
            h = 1e-4 * max(abs(gamma[cd[1]]), 1e-2)
        else:
            h = 1e-4 * max(np.diag(tp if cd[0] == "p" else tb).max(), 1e-3)

        def at(s):
            g, p, b = gamma.copy(), tp.copy(), tb.copy()
            if cd[0] == "g":
                g[cd[1]] += s
            else:
                M = p if cd[0] == "p" else b
                M[cd[1], cd[2]] += s
                M[cd[2], cd[1]] = M[cd[1], cd[2]]
            return dense.deviance(g, p, b)

        fp, fm = at(h), at(-h)
        slope, curv = (fp - fm) / (2 * h), (fp - 2 * d0 + fm) / h ** 2
        assert curv > 0 and slope ** 2 / (2 * curv) < 1e-6, (cd, slope, curv)


def test_dense_laplace_grouseticks(grouse_doc):
    dense_check("grouseticks", grouse_doc[0])


def test_residual_files_against_dense_modes(grouse_doc):
    """The residual files of one call: each unit's EB estimate and posterior variance are the joint mode
    b̂ = Λû and Λ(H⁻¹)blockΛ' of the dense Laplace at our estimates; each record's η is the fixed part plus
    its units' b̂ (and the offset: none here), its fitted mean exp(η), its residual y − exp(η); --keep
    carries the level-1 INDEX."""
    doc, _, res = grouse_doc
    dense, gamma, tp, tb = dense_of("grouseticks", doc)
    u, Hinv = dense.modes(gamma, tp, tb)
    frame = _frame("grouseticks")
    b2 = dict(zip(frame.BROOD.to_numpy()[np.unique(dense.g2, return_index=True)[1]], u[:dense.J2] * np.sqrt(tp[0, 0])))
    v2 = np.diag(Hinv)[:dense.J2] * tp[0, 0]
    v2 = dict(zip(frame.BROOD.to_numpy()[np.unique(dense.g2, return_index=True)[1]], v2))
    b3 = dict(zip(frame.LOCATION.to_numpy()[np.unique(dense.g3, return_index=True)[1]],
                  u[dense.J2:] * np.sqrt(tb[0, 0])))
    v3 = dict(zip(frame.LOCATION.to_numpy()[np.unique(dense.g3, return_index=True)[1]],
                  np.diag(Hinv)[dense.J2:] * tb[0, 0]))
    l1, l2, l3 = res[1], res[2], res[3]
    assert l2.r_INTRCPT1.to_numpy() == pytest.approx([b2[i] for i in l2.id], rel=1e-7, abs=1e-9)
    assert l2.postvar_r_INTRCPT1.to_numpy() == pytest.approx([v2[i] for i in l2.id], rel=1e-7)
    assert l3.u_INTRCPT1_INTRCPT2.to_numpy() == pytest.approx([b3[i] for i in l3.id], rel=1e-7, abs=1e-9)
    assert l3.postvar_u_INTRCPT1_INTRCPT2.to_numpy() == pytest.approx([v3[i] for i in l3.id], rel=1e-7)
    # the files hold 10 significant digits: each identity to 1e-9 of its terms' sizes
    r, u = l1.BROOD.map(dict(zip(l2.id, l2.r_INTRCPT1))), l1.LOCATION.map(dict(zip(l3.id, l3.u_INTRCPT1_INTRCPT2)))
    size = l1.eta.abs() + l1.eta_fixed.abs() + r.abs() + u.abs()
    assert np.all(np.abs(l1.eta - (l1.eta_fixed + r + u)) <= 1e-9 * size)
    assert l1.fitted_mean.to_numpy() == pytest.approx(np.exp(l1.eta.to_numpy()), rel=2e-9)
    assert np.all(np.abs(l1.residual - (l1.TICKS - l1.fitted_mean)) <= 1e-9 * (l1.TICKS + l1.fitted_mean))
    src = pd.read_csv(H3 / "grouse_l1.csv", dtype={"INDEX": str})
    assert list(l1.INDEX) == list(src.INDEX.iloc[l1.row - 1])


@pytest.mark.slow
def test_dense_laplace_slopes_and_trials():
    for name in ("mmmec_slope2", "mmmec_slope3", "binomial"):
        dense_check(name, api_fit(name))


def test_gradient_is_exact():
    """The exact gradient (module docstring of nested_laplace) against central differences of the deviance,
    with random slopes at both levels (Mmmec's UVB, q2 = q3 = 2), away from the optimum."""
    from hlmcli.engine.family import family
    from hlmcli.engine.nested import Coefficient, LevelsData
    from hlmcli.engine.nested_glmm import LevelsGLMData
    from hlmcli.engine.nested_laplace import NestedLaplace

    l1 = pd.read_csv(H3 / "mmmec_l1.csv", dtype={"REGION": str})
    l2 = pd.read_csv(H3 / "mmmec_l2.csv", dtype={"REGION": str, "NATION": str})
    l3 = pd.read_csv(H3 / "mmmec_l3.csv", dtype={"NATION": str}).sort_values("NATION").reset_index(drop=True)
    l3["k"] = np.arange(len(l3))
    l2 = l2.merge(l3[["NATION", "k"]], on="NATION").sort_values(["k", "REGION"]).reset_index(drop=True)
    l2["j"] = np.arange(len(l2))
    l1 = l1.merge(l2[["REGION", "j"]], on="REGION").sort_values("j", kind="stable").reset_index(drop=True)
    top = (Coefficient(None),)
    pi0 = Coefficient(None, (Coefficient(None, top, True),), True)
    pi1 = Coefficient(0, (Coefficient(None, top, True),), True)
    predictors = (l1[["UVB"]].to_numpy(float), np.zeros((len(l2), 0)), np.zeros((len(l3), 0)))
    data = LevelsData(l1.DEATHS.to_numpy(float), predictors, (l1.j.to_numpy(), l2.k.to_numpy()), (pi0, pi1))
    cond = NestedLaplace(LevelsGLMData(data, family("poisson"), None, np.log(l1.EXPECTED.to_numpy(float))))
    assert (cond.q2, cond.q3, cond.p) == (2, 2, 2)
    gamma = np.array([0.1, -0.05])
    L2, L3 = np.array([[0.3, 0.0], [0.02, 0.05]]), np.array([[0.4, 0.0], [-0.03, 0.06]])
    dev, gg, g2, g3 = cond.evaluate(gamma, L2, L3)
    exact = np.concatenate([gg, g2[np.tril_indices(2)], g3[np.tril_indices(2)]])
    x = np.concatenate([gamma, L2[np.tril_indices(2)], L3[np.tril_indices(2)]])

    def dev_at(v):
        a, b = np.zeros((2, 2)), np.zeros((2, 2))
        a[np.tril_indices(2)], b[np.tril_indices(2)] = v[2:5], v[5:8]
        return cond.evaluate(v[:2], a, b, grad=False)

    h = 1e-4
    num = np.array([(dev_at(x + h * e) - dev_at(x - h * e)) / (2 * h) for e in np.eye(x.size)])
    assert num == pytest.approx(exact, rel=1e-6, abs=1e-5 * np.abs(exact).max())


def test_refusals_in_one_line():
    """What the Laplace fit does not do, refused before any fit in one line with the reason (exit 1)."""
    for extra, why in ((["--reml"], "Laplace maximises the likelihood itself"),
                       (["--overdispersion"], "the Laplace likelihood has none"),
                       (["--quadrature-points", "5"], "fitted by Laplace")):
        proc = hlmcli("fit", *cli_args("grouseticks"), *extra)
        assert proc.returncode in (1, 2) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert why in proc.stderr and "Traceback" not in proc.stderr


def test_compare_refuses_fits_of_another_estimation(grouse_doc, tmp_path):
    """Two three-level fits of the same records are compared only when fitted the same way: a Laplace
    deviance against another kind's (here the same document said to be a linear fit, family normal) is
    refused in one line."""
    doc = grouse_doc[0]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(doc))
    other = json.loads(json.dumps(doc))
    other.pop("hglm")
    b.write_text(json.dumps(other))
    proc = hlmcli("compare", a, b)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "differ in family or estimation" in proc.stderr


def test_level3_unit_scores_against_dense(grouse_doc):
    """The robust SEs' meat: each level-3 unit's exact score −½∂d_k/∂(θ, γ) (NestedLaplace.unit_scores, θ the
    factors √τπ, √τβ) against central differences of that unit's own dense Laplace deviance (its records
    alone: the deviance is a sum over level-3 units), at our estimates, on every sixth of grouseticks' 63 locations."""
    from test_hglm3 import grouse_glm

    from hlmcli.engine.nested_laplace import NestedLaplace

    doc = grouse_doc[0]
    glm = grouse_glm()
    cond = NestedLaplace(glm)
    names = ["(Intercept)", "CHEIGHT", "YEAR96", "YEAR97"]  # grouse_glm's column order
    est = {_r_name(f): f["estimate"] for f in doc["fixed_effects"]}
    gamma = np.array([est[n] for n in names])
    tp, tb = doc["tau_pi"]["matrix"][0][0], doc["tau_beta"]["matrix"][0][0]
    S = cond.unit_scores(gamma, np.array([[np.sqrt(tp)]]), np.array([[np.sqrt(tb)]]))
    locations = sorted(pd.read_csv(H3 / "grouse_l3.csv", dtype={"LOCATION": str}).LOCATION)  # grouse_glm's order
    frame = _frame("grouseticks")
    for k in range(0, len(locations), 6):
        sub = frame[frame.LOCATION == locations[k]].reset_index(drop=True)
        X = np.column_stack([np.ones(len(sub)), sub.CHEIGHT, sub.YEAR96, sub.YEAR97])
        one = np.ones((len(sub), 1))
        dense = DenseLaplace(sub, sub.TICKS.to_numpy(float), X, one, one, "BROOD", "LOCATION", "poisson")
        x0 = np.concatenate([[np.sqrt(tp), np.sqrt(tb)], gamma])

        def dev(x):
            return dense.deviance(x[2:], np.array([[x[0] ** 2]]), np.array([[x[1] ** 2]]))

        h = 1e-5
        num = np.array([(dev(x0 + h * e) - dev(x0 - h * e)) / (2 * h) for e in np.eye(x0.size)])
        assert S[k] == pytest.approx(-0.5 * num, rel=1e-5, abs=1e-6), locations[k]


def test_a_fit_whose_modes_were_not_found_is_not_certified(monkeypatch):
    """The three-level Laplace deviance and its gradient assume the modes; when Newton for them ends after its
    passes without its step falling below tolerance at the final point, the fit is not certified (it was:
    nothing read the mode search's state)."""
    from hlmcli.engine.nested_laplace import NestedLaplace

    modes = NestedLaplace.modes

    def not_found(self, *a, **k):
        out = modes(self, *a, **k)
        self.modes_found = False
        return out

    monkeypatch.setattr(NestedLaplace, "modes", not_found)
    doc = api_fit("grouseticks")
    assert not doc["converged"] and not doc["certificate"]["certified"]
    assert any("modes were not found" in f for f in doc["certificate"]["failed"])
