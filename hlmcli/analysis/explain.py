"""Why a number differs from HLM's printed one: line up HLM's output with a certified fit, evaluate the fit's
own likelihood at HLM's printed (σ², τ), and name the causes that can be told from the numbers.

The evidence, in order:
1. The deviance at HLM's point, d(σ²_HLM, τ_HLM) with γ by GLS there, against the certified optimum d*.
   The optimum is the minimum, so the gap d(HLM) − d* ≥ 0 up to the printing precision. That precision
   is measured, not assumed: d is evaluated at the optimum rounded to HLM's printed digits.
2. Whether HLM's point lies on this likelihood surface: HLM's printed deviance (or −2 × its printed
   log-likelihood) should equal d(σ²_HLM, τ_HLM) to the printed digits. If it is exactly ln 2π lower,
   the output comes from HLM 5/6, which print the ML deviance without one ln 2π term; any other
   difference means the data or the model differ from the fit's.
3. An early stop: HLM stops when the change in the log-likelihood per iteration is small, not when the
   gradient vanishes. Its point is then short of the optimum along the same surface: the deviance falls
   steadily on the segment from HLM's point to the optimum. That is what "consistent with an early stop"
   checks (five points on the segment).
4. Estimates: each γ's difference in units of the fit's standard error, SEs and τ relative to the fit's.
5. Version rules: the d.f. of a fixed (non-random) slope is N − J·R − F in HLM 7 and N − F in HLM 5/6.

A pure function of numbers: `explain(hlm, fit, deviance_at, ...)`; the command reads the files.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ..io.hlm_output import HLMOutput

LN_2PI = math.log(2 * math.pi)


def _ascii_label(label: str) -> str:
    return label.replace("γ", "G").replace("β", "B").replace(" ", "").upper()


def _round_to(x: float, decimals: int) -> float:
    return float(round(x, decimals))


def explain(hlm: HLMOutput, fit: dict, deviance_at: Callable[[float, np.ndarray], float], *, n_records: int,
            n_units: int, tau_order: list[str]) -> dict:
    """The comparison as a JSON-ready dict.

    fit: the fit's JSON document (schema 2); deviance_at(σ², τ) -> the fit's (RE)ML deviance at that point;
    tau_order: the fit's random coefficients in τ's order (names as in the fit)."""
    findings: list[str] = []
    out: dict = {"hlm_version": hlm.version, "hlm_method": hlm.method, "fit_method": fit.get("method"),
                 "hlm_iterations": hlm.iterations, "hlm_stopping_rule": hlm.stopped}
    if hlm.method and fit.get("method") and hlm.method != fit["method"]:
        findings.append(f"HLM estimated by {hlm.method} and the fit by {fit['method']}: refit with "
                        f"{'--ml' if hlm.method == 'ML' else '--reml'} to compare like with like")
    d_opt = float(fit["deviance"])
    out["deviance_optimum"] = d_opt

    # HLM's τ in the fit's order
    tau_hlm = _tau_in_order(hlm, tau_order)
    point = None
    if hlm.sigma2 is not None and tau_hlm is not None:
        d_hlm = float(deviance_at(hlm.sigma2, tau_hlm))
        point = (hlm.sigma2, tau_hlm)
        sigma2_opt, tau_opt = float(fit["sigma2"]), np.asarray(fit["tau"], dtype=float)
        rounded = float(deviance_at(_round_to(sigma2_opt, 5), np.round(tau_opt, 5)))
        # what printing to 5 decimals can move the deviance by: at the optimum (second order) and at HLM's
        # point, where the gradient need not vanish (first order: Σ|∂d/∂θ|·half a unit of the last digit)
        precision = max(abs(rounded - d_opt), _rounding_bound(deviance_at, hlm.sigma2, tau_hlm), 1e-9 * abs(d_opt))
        gap = d_hlm - d_opt
        out.update({"deviance_at_hlm_estimates": d_hlm, "deviance_gap": gap, "printing_precision": precision})
        if gap <= 2 * precision:
            findings.append(f"HLM's σ² and τ give the optimum's deviance to the printed digits (gap {gap:.3g}, "
                            f"printing alone moves it by {precision:.2g}): HLM reached the optimum")
        else:
            segment = [float(deviance_at((1 - t) * hlm.sigma2 + t * sigma2_opt, (1 - t) * tau_hlm + t * tau_opt))
                       for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
            downhill = all(b <= a + precision for a, b in zip(segment, segment[1:]))
            out["deviance_on_segment_to_optimum"] = segment
            out["consistent_with_early_stop"] = downhill
            if downhill:
                where = ", ".join(x for x in (hlm.stopped, f"iteration {hlm.iterations}" if hlm.iterations else None) if x)
                findings.append(f"HLM's σ² and τ lie {gap:.6f} deviance units above the certified optimum, and the "
                                "deviance falls steadily from HLM's point to the optimum: HLM stopped early "
                                f"({where or 'its stopping rule'})")
                if fit.get("boundary"):
                    # the optimum on the boundary: HLM's point is inside, where its printed τ says otherwise
                    notes = "; ".join(fit.get("boundary_notes") or []) or "a variance or correlation at its limit"
                    findings.append(f"the certified optimum is on the boundary of the parameter space ({notes}); "
                                    "HLM's printed τ is inside it")
            else:
                findings.append(f"HLM's σ² and τ lie {gap:.6f} deviance units above the certified optimum, but not on "
                                "a steady descent to it: HLM stopped at another point of the surface (check the model)")
    _check_printed_deviance(hlm, d_opt, out, findings)
    out["fixed_effects"] = _fixed(hlm, fit, findings)
    out["tau"] = _tau_rows(tau_hlm, fit, tau_order)
    out["df_rule"] = _df_rule(hlm, fit, n_records, findings)
    out["findings"] = findings
    del n_units
    return out


def _check_printed_deviance(hlm: HLMOutput, d_opt: float, out: dict, findings: list[str]) -> None:
    """HLM's printed deviance (or log-likelihood) against the fit's likelihood at HLM's estimates: the same
    likelihood, ln 2π apart (HLM 5 and 6), or other data or model; recorded in `out` and `findings`."""
    printed = hlm.deviance if hlm.deviance is not None else (-2 * hlm.loglik if hlm.loglik is not None else None)
    if printed is not None and "deviance_at_hlm_estimates" in out:
        d_hlm = out["deviance_at_hlm_estimates"]
        # the printed deviance has 6 decimals (HLM 7) or the log-likelihood 7 significant digits (E-notation)
        resolution = 1e-6 if hlm.deviance is not None else 2 * 0.5 * 10 ** (math.floor(math.log10(abs(hlm.loglik))) - 6)
        slack = max(resolution, out["printing_precision"]) * 2 + 1e-9 * abs(d_hlm)
        diff = printed - d_hlm
        out["hlm_printed_deviance"] = printed
        out["printed_minus_evaluated"] = diff
        if abs(diff) <= slack:
            out["same_likelihood"] = True
            findings.append("HLM's printed deviance equals the fit's deviance at HLM's estimates: the same data, "
                            "model and likelihood")
            above = printed - d_opt
            out["printed_deviance_above_optimum"] = above
            if above > 2 * resolution:
                findings.append(f"HLM's own printed deviance is {above:.6f} above the certified optimum, more than its "
                                f"printed digits ({resolution:.0e}) can explain: HLM did not reach the optimum")
        elif abs(diff + LN_2PI) <= slack:
            out["same_likelihood"] = True
            out["ln_2pi_offset"] = True
            findings.append(f"HLM's printed deviance is ln 2π = {LN_2PI:.6f} below the likelihood at its own estimates: "
                            "HLM 5 and 6 print the ML deviance without one ln 2π term. Add it before a likelihood-"
                            "ratio test against an hlmcli deviance (--compare-deviance)")
        else:
            out["same_likelihood"] = False
            findings.append(f"HLM's printed deviance differs from the likelihood at its own estimates by {diff:.6f}: "
                            "the data or the model differ from this fit's (deleted records, centring, a variable)")


def _rounding_bound(deviance_at, sigma2: float, tau: np.ndarray, half: float = 5e-6) -> float:
    """First-order bound on how much rounding σ² and each τ entry to 5 decimals moves the deviance."""
    total = 0.0
    q = tau.shape[0]
    for i in range(-1, q):
        for j in range(max(i, 0) if i >= 0 else 0, q if i >= 0 else 1):
            if i < 0:
                up, down = deviance_at(sigma2 + half, tau), deviance_at(sigma2 - half, tau)
            else:
                E = np.zeros_like(tau)
                E[i, j] = E[j, i] = half
                up, down = deviance_at(sigma2, tau + E), deviance_at(sigma2, tau - E)
            if np.isfinite(up) and np.isfinite(down):
                total += abs(up - down) / 2
    return float(total)


def _tau_in_order(hlm: HLMOutput, order: list[str]) -> np.ndarray | None:
    if not hlm.tau:
        return None
    names = [n.upper() for n in hlm.tau_labels]
    want = [n.upper() for n in order]
    if sorted(names) != sorted(want):
        return None if len(names) != len(want) else np.asarray(hlm.tau, dtype=float)
    idx = [names.index(n) for n in want]
    t = np.asarray(hlm.tau, dtype=float)
    return t[np.ix_(idx, idx)]


def _fixed(hlm: HLMOutput, fit: dict, findings: list[str]) -> list[dict]:
    rows = []
    theirs = {_ascii_label(r.gamma): r for r in hlm.fixed}
    robust = {_ascii_label(r.gamma): r for r in hlm.fixed_robust}
    worst = 0.0
    for fx in fit.get("fixed_effects", []):
        label = _ascii_label(fx["gamma"])
        h = theirs.get(label) or theirs.get(label.replace("G", "B", 1))
        r = robust.get(label) or robust.get(label.replace("G", "B", 1))
        # an output (or an excerpt of one) may hold the robust table only: its γ are the same, its SEs robust
        only_robust = h is None and r is not None and bool(fx.get("robust_se"))
        if only_robust:
            h = r
        if h is None:
            continue
        fit_se = fx["robust_se"] if only_robust else fx["se"]
        in_se = (h.estimate - fx["estimate"]) / fx["se"] if fx["se"] else float("nan")
        row = {"gamma": fx["gamma"], "hlm": h.estimate, "fit": fx["estimate"], "difference_in_se": in_se,
               "hlm_se": h.se, "fit_se": fit_se, "se_relative": h.se / fit_se - 1 if fit_se else float("nan"),
               "se_kind": "robust" if only_robust else "model", "hlm_df": h.df, "fit_df": fx.get("df")}
        if r is not None and fx.get("robust_se"):
            row.update({"hlm_robust_se": r.se, "fit_robust_se": fx["robust_se"], "robust_se_relative": r.se / fx["robust_se"] - 1})
        rows.append(row)
        worst = max(worst, abs(in_se))
    if rows:
        findings.append(f"the largest difference in a γ is {worst:.3g} of its standard error")
    return rows


def _tau_rows(tau_hlm, fit: dict, order: list[str]) -> list[dict]:
    if tau_hlm is None:
        return []
    tau = np.asarray(fit["tau"], dtype=float)
    rows = []
    for i in range(len(order)):
        for j in range(i + 1):
            rel = tau_hlm[i, j] / tau[i, j] - 1 if tau[i, j] else float("nan")
            rows.append({"entry": f"tau[{order[i]},{order[j]}]", "hlm": float(tau_hlm[i, j]), "fit": float(tau[i, j]),
                         "relative": rel})
    return rows


def _df_rule(hlm: HLMOutput, fit: dict, n_records: int, findings: list[str]) -> str | None:
    """HLM 7 gives a fixed slope N − J·R − F d.f. (as the fit does); HLM 5 and 6 give N − F."""
    F = len(fit.get("fixed_effects", []))
    randoms = set(fit.get("random_coefficients", []))
    theirs = {_ascii_label(r.gamma): r for r in hlm.fixed}
    seen = None
    for fx in fit.get("fixed_effects", []):
        if fx["coefficient"] in randoms or fx["coefficient"] == "INTRCPT1":
            continue
        label = _ascii_label(fx["gamma"])
        h = theirs.get(label) or theirs.get(label.replace("G", "B", 1))  # HLM 5/6's P/B notation
        if h is None or h.df is None:
            continue
        if h.df == fx.get("df"):
            seen = seen or "hlm7"
        elif h.df == n_records - F:
            seen = "hlm6"
    if seen == "hlm6":
        findings.append(f"HLM gives fixed slopes N − F = {n_records - F} d.f., the HLM 5/6 rule; HLM 7 and hlmcli "
                        "give N − J·R − F")
    return seen
