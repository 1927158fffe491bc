"""HGLM stress suite: hlmcli's Laplace and AGQ fits (and PQL runs) on simulated binary, binomial
and count data sets, against glmer, glmmTMB and an independent integration.

    python benchmarks/stress_hglm.py generate DIR     # the data sets (CSV) and DIR/cases.json
    python benchmarks/stress_hglm.py run DIR          # hlmcli from the command line, as a user types it
    Rscript benchmarks/stress_hglm_ref.R DIR          # glmer (tightened) and glmmTMB: DIR/ref/*.json
    Rscript benchmarks/stress_hglm_ref.R DIR agq      # glmer(nAGQ = K) with the K hlmcli chose (q = 1)
    python benchmarks/stress_hglm.py compare DIR      # counts -> benchmarks/stress_hglm_results.json

The cases (CASES below, 7 seeds each): rare events down to 0.5%, units of two or three records,
true τ = 0, correlations of ±0.99, a near-separating predictor, q = 1 to 3, under the Bernoulli,
binomial and Poisson (with exposure) families. Each is fitted by Laplace (every q) and by AGQ with
the default adaptive number of points (q ≤ 2).

References, all on the full log-likelihood with every constant:
  * Laplace: glmer(nAGQ = 1) with bobyqa rhoend 1e-10 and tolPwrss 1e-12, and glmmTMB, each at its
    own optimum (−2 logLik): the same objective as hlmcli's Laplace deviance.
  * AGQ, q = 1: glmer(nAGQ = K) with hlmcli's chosen K (the same objective), tightened as above.
  * AGQ, every q ≤ 2: an independent integration (this file, `exact_deviance`): a dense
    Gauss–Hermite product rule (100 points in one dimension, 40 per dimension in two), centred and scaled at each unit's mode
    found by its own Newton iteration, evaluated at hlmcli's estimates, at glmer's and glmmTMB's,
    and minimised locally from hlmcli's point (L-BFGS-B on numerical gradients). An AGQ fit is judged
    on this objective: hlmcli's point must be within 1e-6 relative of the lowest value found.

Counts (the issue's "Done when"):
  above_best   a fit whose deviance exceeds the best reference by more than 1e-6 relative
  internal     exit 70 (an internal error) or a traceback
  false_cert   "certified" (exit 0) but above_best
  false_uncert not certified (exit 3) although at the best reference (within 1e-6 relative)
PQL: exit codes and internal errors; the fixed-point check is counted when hlmcli's JSON carries one
(key "fixed_point"; PQL_FIXED_POINT_KEY below), otherwise reported as not available.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402
from scipy import optimize, special  # noqa: E402

REL_TOL = 1e-6
SEEDS = range(7)
PQL_FIXED_POINT_KEY = "fixed_point"
HERE = Path(__file__).resolve().parent

# name, family, q, J, unit sizes (lo, hi), intercept (logit/log scale), τ sd's, correlation, slope of X2
CASES = [
    ("rare05", "bernoulli", 1, 200, (8, 12), -5.9, (0.5, 0.0, 0.0), 0.0, 0.3),
    ("rare1", "bernoulli", 2, 200, (8, 12), -5.0, (0.6, 0.4, 0.0), 0.3, 0.3),
    ("rare2", "bernoulli", 2, 197, (6, 10), -4.3, (0.7, 0.5, 0.0), 0.0, 0.3),
    ("small_bern", "bernoulli", 1, 150, (2, 3), -0.3, (1.0, 0.0, 0.0), 0.0, 0.5),
    ("small_binom", "binomial", 2, 120, (2, 3), -0.5, (0.8, 0.5, 0.0), 0.2, 0.5),
    ("tau0_bern", "bernoulli", 1, 80, (10, 20), -0.5, (0.0, 0.0, 0.0), 0.0, 0.5),
    ("tau0_pois", "poisson", 2, 60, (8, 15), 0.3, (0.0, 0.0, 0.0), 0.0, 0.3),
    ("corr_pos", "bernoulli", 2, 120, (10, 20), -0.5, (1.0, 0.7, 0.0), 0.99, 0.5),
    ("corr_neg", "binomial", 2, 80, (5, 10), -0.3, (0.8, 0.6, 0.0), -0.99, 0.5),
    ("nearsep_bern", "bernoulli", 1, 100, (8, 14), -0.5, (0.7, 0.0, 0.0), 0.0, 4.0),
    ("nearsep_binom", "binomial", 2, 80, (5, 10), -0.5, (0.7, 0.4, 0.0), 0.0, 3.5),
    ("q3_bern", "bernoulli", 3, 150, (10, 16), -0.3, (1.0, 0.5, 0.5), 0.3, 0.5),
    ("q3_pois", "poisson", 3, 80, (8, 14), 0.5, (0.5, 0.3, 0.3), 0.3, 0.3),
    ("q3_binom", "binomial", 3, 80, (4, 8), -0.3, (0.8, 0.4, 0.4), -0.3, 0.5),
    ("pois", "poisson", 1, 60, (5, 15), 0.5, (0.6, 0.0, 0.0), 0.0, 0.3),
    ("binom", "binomial", 1, 60, (5, 15), -0.5, (0.8, 0.0, 0.0), 0.0, 0.5),
]


# ----------------------------------------------------------------------------- generate

def simulate(name, family, q, J, sizes, b0, sds, rho, g2, seed):
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    n = rng.integers(sizes[0], sizes[1] + 1, size=J)
    N = int(n.sum())
    unit = np.repeat(np.arange(J), n)
    x1 = rng.normal(size=N)
    x2 = rng.normal(size=N)
    w = rng.normal(size=J)
    sd = np.array(sds)
    R = np.eye(3)
    R[0, 1] = R[1, 0] = rho
    if q == 3:
        R[0, 2] = R[2, 0] = R[1, 2] = R[2, 1] = rho
    tau = np.outer(sd, sd) * R
    u = rng.normal(size=(J, 3)) @ np.linalg.cholesky(tau + 1e-12 * np.eye(3)).T
    u[:, q:] = 0.0
    eta = b0 + 0.3 * w[unit] + 0.5 * x1 + g2 * x2 + u[unit, 0] + u[unit, 1] * x1 + u[unit, 2] * x2
    trials = exposure = None
    if family == "bernoulli":
        y = (rng.random(N) < special.expit(eta)).astype(int)
    elif family == "binomial":
        trials = rng.integers(1, 8, size=N)
        y = rng.binomial(trials, special.expit(eta))
    else:
        exposure = np.round(rng.uniform(0.5, 2.0, size=N), 3)
        y = rng.poisson(exposure * np.exp(eta))
    l1 = {"ID": unit + 1, "Y": y, "X1": np.round(x1, 6), "X2": np.round(x2, 6)}
    if trials is not None:
        l1["T"] = trials
    if exposure is not None:
        l1["E"] = exposure
    return l1, {"ID": np.arange(1, J + 1), "W": np.round(w, 6)}


def _write_csv(path, cols):
    keys = list(cols)
    rows = zip(*(cols[k] for k in keys))
    path.write_text(",".join(keys) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))


def generate(root: Path) -> list[dict]:
    root.mkdir(parents=True, exist_ok=True)
    cases = []
    for spec in CASES:
        name, family, q = spec[:3]
        for seed in SEEDS:
            cid = f"{name}_{seed}"
            l1, l2 = simulate(*spec, seed)
            _write_csv(root / f"{cid}_l1.csv", l1)
            _write_csv(root / f"{cid}_l2.csv", l2)
            y = np.asarray(l1["Y"], float)
            rate = float(y.sum() / np.sum(l1["T"])) if "T" in l1 else float(y.mean())
            cases.append({"id": cid, "scenario": name, "family": family, "q": q, "J": spec[3],
                          "N": int(y.size), "event_rate": rate})
    (root / "cases.json").write_text(json.dumps(cases, indent=1))
    return cases


# ----------------------------------------------------------------------------- run hlmcli

def hlmcli_args(case, root: Path, method: str) -> list[str]:
    q = case["q"]
    l2 = ["-2", "b0 = g00 + g01*W + u0", "-2", "b1 = g10" + (" + u1" if q >= 2 else ""),
          "-2", "b2 = g20" + (" + u2" if q >= 3 else "")]
    fam = ["--family", case["family"]]
    if case["family"] == "binomial":
        fam += ["--trials", "T"]
    if case["family"] == "poisson":
        fam += ["--exposure", "E"]
    est = {"laplace": ["--estimation", "laplace"], "agq": ["--estimation", "agq"], "pql": []}[method]
    return ["fit", str(root / f"{case['id']}_l1.csv"), str(root / f"{case['id']}_l2.csv"),
            "-1", "Y = b0 + b1*X1 + b2*X2", *l2, "--id", "ID", *fam, *est, "--format", "json"]


WITH_PQL = False  # the hook for PQL: `run --with-pql` adds PQL runs, counted by compare


def methods_for(case, with_pql: bool | None = None) -> list[str]:
    pql = WITH_PQL if with_pql is None else with_pql
    return ["laplace"] + (["agq"] if case["q"] <= 2 else []) + (["pql"] if pql else [])


def _run_one(job):
    """One hlmcli run; wall and CPU time (user + sys of the child)."""
    case, root, method = job
    exe = Path(sys.executable).with_name("hlmcli")
    t0 = time.time()
    proc = subprocess.Popen([str(exe), *hlmcli_args(case, root, method)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate()
    rec = {"exit": proc.returncode, "stderr": stderr.strip()[-2000:], "wall": time.time() - t0}
    try:
        rec["json"] = json.loads(stdout)
    except json.JSONDecodeError:
        rec["json"] = None
    return case, method, rec


def run(root: Path, jobs: int = 1, with_pql: bool = False) -> None:
    import resource
    from concurrent.futures import ThreadPoolExecutor

    cases = json.loads((root / "cases.json").read_text())
    out = root / "hlmcli"
    out.mkdir(exist_ok=True)
    todo = [(c, root, m) for c in cases for m in methods_for(c, with_pql)
            if not (out / f"{c['id']}_{m}.json").exists()]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with ThreadPoolExecutor(jobs) as pool:
        for case, method, rec in pool.map(_run_one, todo):
            (out / f"{case['id']}_{method}.json").write_text(json.dumps(rec))
            print(case["id"], method, rec["exit"], f"{rec['wall']:.1f}s", flush=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    timing = out / "_timing.json"  # one entry per invocation (a rerun of missing runs adds one)
    log = json.loads(timing.read_text()) if timing.exists() else []
    log.append({"cpu_seconds": cpu, "runs": len(todo), "jobs": jobs})
    timing.write_text(json.dumps(log))


# ----------------------------------------------------------------------------- the independent integration

class Exact:
    """The marginal deviance −2 Σ_j log ∫ p(y_j | b) N(b; 0, τ) db, every constant included, by a dense
    Gauss–Hermite product rule (npts per dimension) in b = μ_j + chol(Σ_j) z, centred at the mode μ_j
    of each unit's integrand and scaled by its curvature Σ_j (Newton per unit, written here from the
    model, not from hlmcli's code). Exact to far below 1e-6 relative for these data."""

    def __init__(self, case, root: Path, npts: int = 40):
        import csv

        with open(root / f"{case['id']}_l1.csv") as f:
            rows = list(csv.DictReader(f))
        with open(root / f"{case['id']}_l2.csv") as f:
            w = {int(r["ID"]): float(r["W"]) for r in csv.DictReader(f)}
        self.family = case["family"]
        self.q = q = case["q"]
        ids = np.array([int(r["ID"]) for r in rows])
        self.y = np.array([float(r["Y"]) for r in rows])
        x1 = np.array([float(r["X1"]) for r in rows])
        x2 = np.array([float(r["X2"]) for r in rows])
        self.X = np.column_stack([np.ones(len(rows)), np.array([w[i] for i in ids]), x1, x2])  # g00 g01 g10 g20
        self.Z = self.X[:, [0, 2, 3]][:, :q]
        self.n = np.array([float(r["T"]) for r in rows]) if "T" in rows[0] else None
        self.off = np.log(np.array([float(r["E"]) for r in rows])) if "E" in rows[0] else 0.0
        _, self.unit = np.unique(ids, return_inverse=True)
        self.J = self.unit.max() + 1
        y, n = self.y, self.n
        if self.family == "poisson":
            self.const = float(-np.sum(special.gammaln(y + 1)))
        elif self.family == "binomial":
            self.const = float(np.sum(special.gammaln(n + 1) - special.gammaln(y + 1) - special.gammaln(n - y + 1)))
        else:
            self.const = 0.0
        self.npts = npts
        self._rules = {}

    def rule(self, r, npts):
        """The product rule in r dimensions (r < q when τ is singular)."""
        if r not in self._rules:
            z, wts = np.polynomial.hermite_e.hermegauss(npts)
            wts = wts / math.sqrt(2 * math.pi)
            grid = np.meshgrid(*([z] * r), indexing="ij")
            wg = np.meshgrid(*([wts] * r), indexing="ij")
            self._rules[r] = (np.stack([g.ravel() for g in grid], 1),
                              np.sum(np.log(np.stack([g.ravel() for g in wg], 1)), 1))
        return self._rules[r]

    def _ll(self, eta):
        """Per-record log-likelihood (without the constant), ℓ', −ℓ''."""
        y = self.y
        if self.family == "poisson":
            mu = np.exp(eta)
            return y * eta - mu, y - mu, mu
        n = 1.0 if self.n is None else self.n
        p = special.expit(eta)
        return y * eta - n * np.logaddexp(0.0, eta), y - n * p, n * p * (1 - p)

    def deviance(self, beta, tau):
        q, J, unit, Z = self.q, self.J, self.unit, self.Z
        tau = 0.5 * (np.asarray(tau) + np.asarray(tau).T)
        w, V = np.linalg.eigh(tau)
        if w[0] < -1e-12:
            return np.inf
        keep = w > 1e-12 * max(1.0, w[-1])
        F = V[:, keep] * np.sqrt(w[keep])  # τ = FF': integrate over a ~ N(0, I_r), b = Fa
        r = F.shape[1]
        fixed = self.X @ beta + self.off
        if r == 0:
            return float(-2 * (np.sum(self._ll(fixed)[0]) + self.const))
        ZF = Z @ F

        def usum(v):
            return np.bincount(unit, weights=v, minlength=J)

        a = np.zeros((J, r))
        for _ in range(100):  # Newton for each unit's mode of log p(y|Fa) − |a|²/2
            eta = fixed + np.einsum("nk,nk->n", ZF, a[unit])
            _, d1, W = self._ll(eta)
            g = np.column_stack([usum(ZF[:, k] * d1) for k in range(r)]) - a
            H = np.empty((J, r, r))
            for k in range(r):
                for m in range(r):
                    H[:, k, m] = usum(ZF[:, k] * ZF[:, m] * W)
            H += np.eye(r)
            step = np.linalg.solve(H, g[..., None])[..., 0]
            a = a + step
            if np.max(np.abs(step)) < 1e-12:
                break
        C = np.linalg.cholesky(H)  # the curvature at the mode: a = â + C⁻ᵀz
        R = np.linalg.inv(C).transpose(0, 2, 1)
        nodes, logw = self.rule(r, 100 if r == 1 else self.npts)
        logdet = np.sum(np.log(np.diagonal(C, axis1=1, axis2=2)), axis=1)
        terms = np.empty((len(logw), J))
        for k, (zk, lw) in enumerate(zip(nodes, logw)):
            ak = a + np.einsum("jab,b->ja", R, zk)
            eta = fixed + np.einsum("nk,nk->n", ZF, ak[unit])
            ll = usum(self._ll(eta)[0])
            terms[k] = lw + ll - 0.5 * np.sum(ak * ak, 1) + 0.5 * zk @ zk
        mx = terms.max(0)
        return float(-2 * (np.sum(mx + np.log(np.exp(terms - mx).sum(0)) - logdet) + self.const))


def _hlm_point(out):
    """(β in the order γ00 γ01 γ10 γ20, τ) from hlmcli's JSON."""
    est = {f["gamma"]: f["estimate"] for f in out["fixed_effects"]}
    return np.array([est["γ00"], est["γ01"], est["γ10"], est["γ20"]]), np.array(out["tau"])


def _ref_point(r):
    return np.array(r["beta"]), np.array(r["tau"])


def _local_min(ex: Exact, beta, tau, budget=80):
    """Minimise the exact deviance from (β, τ) over β and the lower triangle of a factor of τ."""
    q = ex.q
    L = _factor(tau)
    tri = np.tril_indices(q)

    def f(x):
        Lx = np.zeros((q, q))
        Lx[tri] = x[4:]
        return ex.deviance(x[:4], Lx @ Lx.T)

    x0 = np.concatenate([beta, L[tri]])
    res = optimize.minimize(f, x0, method="L-BFGS-B", options={"maxfun": budget, "ftol": 1e-14, "gtol": 1e-9,
                                                               "eps": 1e-7})
    return float(min(res.fun, f(x0)))


def _factor(tau):
    w, V = np.linalg.eigh(0.5 * (tau + tau.T))
    F = V * np.sqrt(np.clip(w, 0, None))
    Rq = np.linalg.qr(F.T, mode="r")
    L = Rq.T
    return L * np.where(np.diag(L) < 0, -1.0, 1.0)[None, :]


# ----------------------------------------------------------------------------- compare

def compare(root: Path, out_path: Path, jobs: int = 1) -> dict:
    from concurrent.futures import ProcessPoolExecutor

    cases = json.loads((root / "cases.json").read_text())
    rows = []
    with ProcessPoolExecutor(jobs) as pool:
        for part in pool.map(_compare_case, cases, [root] * len(cases)):
            rows.extend(part)
    return _summarise(cases, rows, root, out_path)


def _compare_case(case, root: Path) -> list[dict]:
    rows = []
    ref_file = root / "ref" / f"{case['id']}.json"
    ref = json.loads(ref_file.read_text()) if ref_file.exists() else {}
    for method in methods_for(case, with_pql=True):
        path = root / "hlmcli" / f"{case['id']}_{method}.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        row = {"id": case["id"], "scenario": case["scenario"], "family": case["family"], "q": case["q"],
               "event_rate": case["event_rate"], "method": method, "exit": rec["exit"], "wall": rec["wall"],
               "internal": rec["exit"] == 70 or "Traceback" in rec["stderr"]}
        out = rec["json"]
        if method == "pql":
            fp = out.get(PQL_FIXED_POINT_KEY) if out else None
            row["fixed_point"] = None if fp is None else bool(fp.get("checked", fp) if isinstance(fp, dict) else fp)
            rows.append(row)
            continue
        if out is None:
            row.update(deviance=None, best=None, above_best=False, false_cert=False, false_uncert=False,
                       error=rec["stderr"][-300:])
            rows.append(row)
            continue
        d = out["deviance"]
        cert = bool(out["certificate"]["certified"])
        row.update(deviance=d, certified=cert, rank=out["certificate"]["rank"],
                   points=out.get("quadrature_points"))
        if method == "laplace":
            refs = {k: ref[k]["deviance"] for k in ("glmer_laplace", "tmb") if k in ref and ref[k].get("deviance") is not None}
            d_hlm = d
        else:
            ex = Exact(case, root)
            b, t = _hlm_point(out)
            d_hlm = ex.deviance(b, t)
            refs = {}
            for k in ("glmer_laplace", "tmb", "glmer_agq"):
                if k in ref and ref[k].get("beta") is not None:
                    refs[k + "@exact"] = ex.deviance(*_ref_point(ref[k]))
            if case["q"] == 1:  # (for q = 2 the dense rule is evaluated at the points only: time)
                refs["independent_min"] = _local_min(ex, b, t)
            row["deviance_exact"] = d_hlm
            if "glmer_agq" in ref and ref["glmer_agq"].get("deviance") is not None \
                    and ref["glmer_agq"].get("nAGQ") == out.get("quadrature_points"):
                row["glmer_same_K"] = ref["glmer_agq"]["deviance"]
                row["above_glmer_same_K"] = d - ref["glmer_agq"]["deviance"] > REL_TOL * abs(d)
        refs = {k: v for k, v in refs.items() if v is not None and np.isfinite(v)}
        best = min(refs.values()) if refs else None
        above = best is not None and d_hlm - best > REL_TOL * abs(best)
        row.update(refs=refs, best=best, excess=None if best is None else (d_hlm - best) / abs(best),
                   above_best=bool(above or row.get("above_glmer_same_K", False)),
                   false_cert=bool(cert and (above or row.get("above_glmer_same_K", False))),
                   false_uncert=bool(not cert and best is not None and not above))
        rows.append(row)
    return rows


def _summarise(cases, rows, root: Path, out_path: Path) -> dict:
    ml = [r for r in rows if r["method"] != "pql"]
    pql = [r for r in rows if r["method"] == "pql"]
    fp = [r for r in pql if r.get("fixed_point") is not None]
    summary = {
        "data_sets": len(cases),
        "by_family": {f: sum(c["family"] == f for c in cases) for f in ("bernoulli", "binomial", "poisson")},
        "by_q": {str(q): sum(c["q"] == q for c in cases) for q in (1, 2, 3)},
        "lowest_event_rate": min(c["event_rate"] for c in cases if c["family"] == "bernoulli"),
        "laplace_fits": sum(r["method"] == "laplace" for r in ml), "agq_fits": sum(r["method"] == "agq" for r in ml),
        "above_best": sum(r["above_best"] for r in ml),
        "internal_errors": sum(r["internal"] for r in rows),
        "false_certified": sum(r.get("false_cert", False) for r in ml),
        "false_not_certified": sum(r.get("false_uncert", False) for r in ml),
        "certified": sum(r.get("certified", False) for r in ml),
        "no_reference": sum(r.get("best") is None for r in ml),
        "pql_runs": len(pql) or "not run (stress_hglm.py run --with-pql)", "pql_exit": {str(c): sum(r["exit"] == c for r in pql) for c in sorted({r["exit"] for r in pql})},
        "pql_not_fixed_point": (sum(not r["fixed_point"] for r in fp) if fp else "not available: no fixed-point check "
                                "in hlmcli's PQL JSON"),
        "hlmcli_cpu": json.loads((root / "hlmcli" / "_timing.json").read_text())
        if (root / "hlmcli" / "_timing.json").exists() else None,
        "hlmcli_wall_seconds_summed": sum(r["wall"] for r in rows),
    }
    res = {"summary": summary, "rows": rows}
    out_path.write_text(json.dumps(res, indent=1, default=float))
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["generate", "run", "compare"])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--out", type=Path, default=HERE / "stress_hglm_results.json")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--with-pql", action="store_true", help="also run PQL (the hook for its fixed-point counts)")
    a = ap.parse_args(argv)
    if a.step == "generate":
        print(len(generate(a.dir)), "data sets")
    elif a.step == "run":
        run(a.dir, a.jobs, a.with_pql)
    else:
        s = compare(a.dir, a.out, a.jobs)["summary"]
        print(json.dumps(s, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
