"""PQL stress suite: is every PQL answer a fixed point whose inner fit is the optimum?

Simulated binary, binomial and count data sets (rare events down to 0.5%, units of 2 records, true
τ = 0, correlations of ±0.99, a nearly separating dummy, q = 1 to 3, restricted and full PQL). For
each, hlmcli's pql() runs as the CLI runs it; then, independently of hlmcli's code, at its final η:
  * the working variate z = η − offset + (y − μ)/W and weights W are recomputed here;
  * the weighted LMM deviance (σ² = 1) is written out densely per unit, V_j = W_j⁻¹ + Z_jτZ_j',
    and minimised over the Cholesky factor of τ by L-BFGS-B from τ = 0, 0.09·I, I, 4·I and hlmcli's
    τ, then Nelder-Mead from the best; the lowest deviance is the best known inner optimum;
  * one more macro iteration from that optimum gives η'.
A PQL fit is a fixed point when hlmcli's τ is within 1e-6 (deviance units) of the best known inner
optimum and max|η' − η| ≤ 1e-5·(1 + max|η|). Counted: internal errors, fits that claim a checked
fixed point and are not one (false "converged"), and fits that are one but say not (false "not
converged").

    python benchmarks/stress_pql.py [--n 120] [--out benchmarks/stress_pql_results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import optimize, special

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hlmcli.errors import HlmError  # noqa: E402
from hlmcli.engine.family import family as get_family  # noqa: E402
from hlmcli.engine.hglm import GLMData, pql  # noqa: E402
from hlmcli.analysis.separation import find_combination, find_separation  # noqa: E402


def simulate(seed: int):
    rng = np.random.default_rng(seed)
    fam = ["bernoulli", "binomial", "poisson"][seed % 3]
    q = 1 + (seed // 3) % 3
    J = [8, 30, 100][(seed // 9) % 3]
    nj = [2, 5, 20][(seed // 27) % 3]
    kind = ["plain", "tau0", "corr", "rare", "sep"][(seed // 81 + seed) % 5]
    reml = bool(seed % 2)
    base = {"bernoulli": -0.3, "binomial": -0.5, "poisson": 0.3}[fam]
    if kind == "rare":
        base = -5.3 if fam != "poisson" else -3.5  # about 0.5% events (3% for counts)
    n = np.full(J, nj)
    N = int(n.sum())
    unit = np.repeat(np.arange(J), n)
    X = np.column_stack([np.ones(N), rng.normal(size=N), rng.normal(size=N) * 2 + 1])[:, : max(q, 2)]
    if kind == "sep":
        d = np.zeros(N)
        d[rng.choice(N, size=max(3, N // 50), replace=False)] = 1.0
        X = np.column_stack([X, d])
    Z = X[:, :q]
    sd = np.full(q, 0.8)
    C = np.eye(q)
    if kind == "corr" and q > 1:
        C = np.full((q, q), 0.99)
        np.fill_diagonal(C, 1.0)
        C[0, -1] = C[-1, 0] = -0.99 if q == 2 else 0.98
        w, V = np.linalg.eigh(C)
        C = (V * np.clip(w, 1e-6, None)) @ V.T
    tau = np.outer(sd, sd) * C * (0.0 if kind == "tau0" else 1.0)
    w, V = np.linalg.eigh(tau)
    b = rng.normal(size=(J, q)) @ (V * np.sqrt(np.clip(w, 0, None))).T
    beta = np.r_[base, 0.5 * rng.normal(size=X.shape[1] - 1)]
    if kind == "sep":
        beta[-1] = 4.0
    eta = X @ beta + np.einsum("ik,ik->i", Z, b[unit])
    trials = offset = None
    if fam == "bernoulli":
        y = (rng.random(N) < special.expit(eta)).astype(float)
    elif fam == "binomial":
        trials = rng.integers(1, 6, size=N).astype(float)
        y = rng.binomial(trials.astype(int), special.expit(eta)).astype(float)
    else:
        expo = rng.uniform(0.5, 2.0, size=N)
        offset = np.log(expo)
        y = rng.poisson(np.exp(eta + offset)).astype(float)
    p = X.shape[1]
    B = np.broadcast_to(np.eye(p), (J, p, p)).copy()
    offs = np.r_[0, np.cumsum(n)]
    data = GLMData(get_family(fam), X, B, offs, np.arange(q), y, trials, offset)
    return dict(seed=seed, family=fam, q=q, J=J, nj=nj, kind=kind, reml=reml, events=float(np.mean(y > 0))), data


# ------------------------------------------------------------------ the independent check

def dense_inner(X, Z, z, W, unit, J, reml, tau_hlm):
    """Best known minimum over PSD τ of the weighted LMM deviance (σ² = 1), dense per unit."""
    q = Z.shape[1]
    groups = [np.flatnonzero(unit == j) for j in range(J)]
    tril = np.tril_indices(q)

    def parts(theta):
        L = np.zeros((q, q))
        L[tril] = theta
        T = L @ L.T
        P = np.zeros((X.shape[1], X.shape[1]))
        c = np.zeros(X.shape[1])
        ld = 0.0
        Vinv = []
        for g in groups:
            Zg = Z[g]
            V = np.diag(1.0 / W[g]) + Zg @ T @ Zg.T
            cf = np.linalg.cholesky(V)
            ld += 2 * np.log(np.diag(cf)).sum()
            Vi = np.linalg.inv(V)
            Vinv.append(Vi)
            P += X[g].T @ Vi @ X[g]
            c += X[g].T @ Vi @ z[g]
        gamma = np.linalg.solve(P, c)
        r = z - X @ gamma
        rss = sum(float(r[g] @ Vi @ r[g]) for g, Vi in zip(groups, Vinv))
        d = ld + rss
        if reml:
            d += np.linalg.slogdet(P)[1]
        return d, gamma, T, Vinv, r

    def f(theta):
        try:
            return parts(theta)[0]
        except np.linalg.LinAlgError:
            return 1e300

    L0 = np.linalg.cholesky(tau_hlm + 1e-12 * np.eye(q)) if np.all(np.linalg.eigvalsh(tau_hlm) > 1e-10) else None
    starts = [np.zeros((q, q)), 0.3 * np.eye(q), np.eye(q), 2 * np.eye(q)] + ([L0] if L0 is not None else [])
    best = None
    for S in starts:  # Cholesky factors: τ = 0, 0.09·I, I, 4·I and hlmcli's τ
        th0 = S[tril]
        r = optimize.minimize(f, th0, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        if best is None or r.fun < best.fun:
            best = r
    r = optimize.minimize(f, best.x, method="Nelder-Mead",
                          options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 3000, "maxfev": 3000})
    if r.fun < best.fun:
        best = r
    return best.fun, parts(best.x), parts


def check(meta, data, res):
    fam = data.family
    eta = res.eta
    off = data.offset if data.offset is not None else 0.0
    if fam.link == "logit":
        m = 1.0 if data.trials is None else data.trials
        mu = m * special.expit(eta)
        W = m * special.expit(eta) * special.expit(-eta)
    else:
        mu = W = np.exp(eta)
    z = eta - off + (data.y - mu) / W
    X = data.L  # B_j = I in these designs
    Z = data.Z
    unit = data.unit
    q = data.q
    best, (d_b, g_b, T_b, Vinv, r_b), parts = dense_inner(X, Z, z, W, unit, data.J, res.reml, res.tau)
    try:
        L = np.linalg.cholesky(res.tau)
    except np.linalg.LinAlgError:  # singular τ: a triangular factor from an eigen factor by QR
        w, V = np.linalg.eigh(res.tau)
        F = V * np.sqrt(np.clip(w, 0, None))
        L = np.linalg.qr(F.T, mode="r").T
    d_h = parts(L[np.tril_indices(q)])[0]
    # one macro iteration from the best known inner optimum
    groups = [np.flatnonzero(unit == j) for j in range(data.J)]
    eta2 = X @ g_b + off
    for g, Vi in zip(groups, Vinv):
        bj = T_b @ Z[g].T @ Vi @ r_b[g]
        eta2[g] += Z[g] @ bj
    move = float(np.max(np.abs(eta2 - eta)))
    fixed = (d_h - best <= 1e-6) and move <= 1e-5 * (1 + float(np.max(np.abs(eta))))
    return dict(inner_deviance_hlmcli=d_h, inner_deviance_best=best, eta_move=move, fixed_point=bool(fixed))


def refused(data) -> str | None:
    """What the CLI refuses before fitting (hglm_run.py): an outcome at its limit everywhere, and a
    predictor that separates it (separation.py)."""
    y, n = data.y, (1.0 if data.trials is None else data.trials)
    if data.family.link == "logit" and (np.all(y <= 0) or np.all(y >= n)):
        return "every record is a failure (or every one a success)"
    if data.family.link == "log" and np.all(y <= 0):
        return "every count is 0"
    sep = find_separation(data.L, y, data.trials, data.family.link)
    if sep:
        return f"column {sep[0].column} separates the outcome"
    if find_combination(data.L, y, data.trials, data.family.link) is not None:
        return "a combination of columns separates the outcome"
    return None


def count(rows) -> dict:
    return {
        "data_sets": len(rows),
        "internal_errors": sum(r["error"] is not None for r in rows),
        "converged": sum(r["converged"] for r in rows),
        "false_converged": sum(r["converged"] and not r.get("fixed_point") for r in rows),
        "false_not_converged": sum((not r["converged"]) and bool(r.get("fixed_point")) for r in rows),
        "not_converged": sum(not r["converged"] and not r.get("refused") for r in rows),
        "refused_before_fitting": sum(bool(r.get("refused")) for r in rows),
        "check_errors": sum(bool(r.get("check_error")) for r in rows),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "stress_pql_results.json"))
    ap.add_argument("--only", type=int, nargs="*", help="rerun these seeds and replace them in --out")
    args = ap.parse_args()
    rows = []
    t0, c0 = time.time(), time.process_time()
    for seed in (args.only if args.only else range(args.n)):
        meta, data = simulate(seed)
        why = refused(data)
        if why:  # the CLI refuses these before fitting, in one line
            meta.update(refused=why, error=None, converged=False, fixed_point=None)
            rows.append(meta)
            print(f"{seed:4d} {meta['family']:9s} refused: {why}", flush=True)
            continue
        try:
            res = pql(data, reml=meta["reml"])
            meta.update(converged=bool(res.converged), failed=list(res.failed),
                        tau=res.tau.tolist(), gamma=res.gamma.tolist())
            meta["error"] = None
        except (HlmError, FloatingPointError, np.linalg.LinAlgError) as exc:
            # refused in one line: by the engine, or as a numerical breakdown by the CLI
            # (data_checks.fit_or_refuse, exit 1)
            meta.update(refused=f"{type(exc).__name__}: {exc}", error=None, converged=False, fixed_point=None)
            res = None
        except Exception as exc:  # an internal error of hlmcli: counted, never hidden
            meta.update(error=f"{type(exc).__name__}: {exc}", converged=False, fixed_point=False)
            res = None
        try:
            if res is not None:
                meta.update(check(meta, data, res) if np.all(np.isfinite(res.eta)) else {"fixed_point": False})
        except Exception as exc:  # the check's own failure: reported apart from hlmcli's errors
            meta.update(check_error=f"{type(exc).__name__}: {exc}", fixed_point=None)
        rows.append(meta)
        print(f"{seed:4d} {meta['family']:9s} q={meta['q']} J={meta['J']:3d} n={meta['nj']:2d} {meta['kind']:5s} "
              f"{'REML' if meta['reml'] else 'ML  '} events {meta['events']:.3f} "
              f"{'converged' if meta['converged'] else 'NOT conv.'} fixed={meta.get('fixed_point')} "
              f"{meta['error'] or ''}", flush=True)
    doc = {"wall_s": time.time() - t0, "cpu_s": time.process_time() - c0}
    if args.only:  # replace the rerun seeds in the stored results and count again
        old = json.loads(Path(args.out).read_text())
        new = {r["seed"]: r for r in rows}
        rows = [new.get(r["seed"], r) for r in old["cases"]]
        doc = {"wall_s": old["wall_s"], "cpu_s": old["cpu_s"],
               "rerun": {"seeds": args.only, "wall_s": doc["wall_s"], "cpu_s": doc["cpu_s"]}}
    doc = {"counts": count(rows), **doc, "cases": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1, default=float) + "\n")
    print(json.dumps(doc["counts"]), f"{doc['wall_s']:.0f} s wall, {doc['cpu_s']:.0f} s CPU")


if __name__ == "__main__":
    main()
