"""`hlmcli compare`: two saved JSON fits, the deviance test between them, and the variance explained."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DataError, ModelError
from ..analysis.inference import deviance_test, mixture_p
from .report import hlm_p


def read_fit(path: str) -> dict:
    from ..io.files import read_small_bytes

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise DataError(f"{path}: no such file; save a fit with 'hlmcli fit ... --format json -o {p.name}'")
    try:
        fit = json.loads(read_small_bytes(p, "JSON fit").decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise DataError(f"{path}: not a JSON fit (incomplete or not JSON); save one with 'hlmcli fit ... --format json'") from None
    if isinstance(fit, dict) and fit.get("kind") == "cross-classified linear":
        from .schemas import first_error_file

        problem = first_error_file(fit, "crossed-2.json")
        if problem:
            raise DataError(f"{path}: not a valid saved fit: {problem}; save it again with 'hlmcli fit ... --format json'")
        return fit
    if not isinstance(fit, dict) or fit.get("tool") != "hlmcli" or "deviance" not in fit:
        raise DataError(f"{path}: not an hlmcli JSON fit; save one with 'hlmcli fit ... --format json'")
    if fit.get("levels") in (3, 4) and fit.get("schema") in (3, 4):
        from .schemas import first_error_file

        problem = first_error_file(fit, "fit-3.json" if fit["levels"] == 3 else "fit-levels.json")
        if problem:
            raise DataError(f"{path}: not a valid saved fit: {problem}; save it again with 'hlmcli fit ... --format json'")
        return fit
    if fit.get("schema") != 2:
        raise DataError(f"{path}: JSON schema {str(fit.get('schema'))[:20]} is not one this hlmcli reads (2); refit with this version")
    if fit.get("kind") == "combined":
        raise DataError(f"{path}: results combined over plausible values or imputed data sets have no single deviance "
                        "or fit to read; 'table' and 'compare' take the single fits (each is under 'fits' in the file)")
    from .schemas import first_error

    problem = first_error(fit, "fit") or _incomplete(fit)
    if problem:
        raise DataError(f"{path}: not a valid saved fit: {problem}; save it again with 'hlmcli fit ... --format json'")
    return fit


def _number(x, positive=False) -> bool:
    import math

    ok = isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
    return ok and (x > 0 if positive else True)


def _incomplete(fit: dict) -> str | None:
    """What is missing or malformed among the keys compare uses; None if all is well."""
    for key in ("method", "outcome"):
        if not isinstance(fit.get(key), str):
            return f"'{key}' is missing or not text"
    if fit["method"] not in ("REML", "ML"):
        return "'method' is neither REML nor ML"
    for key in ("n_level1", "n_level2", "n_params"):
        if key == "n_params" and "family" in fit and fit.get(key) is None:
            continue
        if not isinstance(fit.get(key), int) or isinstance(fit.get(key), bool) or fit[key] < 0:
            return f"'{key}' is missing or not a count"
    hglm = "family" in fit
    if not (_number(fit.get("deviance")) or (hglm and fit.get("deviance") is None)):
        return "'deviance' is missing or not a finite number"
    if not (_number(fit.get("sigma2"), positive=True) or (hglm and fit.get("sigma2") is None)):
        return "'sigma2' is missing or not a positive number"
    fixed = fit.get("fixed_effects")
    if not isinstance(fixed, list) or not all(isinstance(f, dict) and isinstance(f.get("coefficient"), str)
                                              and isinstance(f.get("predictor"), str) for f in fixed):
        return "'fixed_effects' is missing or malformed"
    names = fit.get("random_coefficients")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return "'random_coefficients' is missing or malformed"
    tau = fit.get("tau")
    if (not isinstance(tau, list) or len(tau) != len(names)
            or not all(isinstance(row, list) and len(row) == len(names) and all(_number(v) for v in row) for row in tau)):
        return "'tau' is missing or does not match 'random_coefficients'"
    return None


def _fixed_key(fit: dict) -> list[tuple]:
    """The fixed part as a set of columns: each γ's level-1 variable with its centring, and its
    level-2 predictor with its centring (so group(SES) and raw SES are different columns)."""
    centering = {t["name"]: t["centering"] for t in fit.get("model", {}).get("level1_predictors", [])}
    return sorted((f["coefficient"], centering.get(f["coefficient"], "none"), f["predictor"], f.get("centering"))
                  for f in fit["fixed_effects"])


def _levels_fixed_key(fit: dict) -> list:
    """The fixed part of a fit of three or more levels: its model's normalised equations without their
    random terms (names, centring and the fixed effects' places all show in them)."""
    import re

    lines = fit["model"]["normalised"]
    if isinstance(lines, dict):
        lines = [x for level in sorted(lines) for x in lines[level]]
    return [re.sub(r"\s*\+\s*[ERUV][\d,]*[a-z]*\s*$", "", x) for x in lines]


def compare_levels(a: dict, b: dict, name_a: str, name_b: str) -> dict:
    """The likelihood-ratio test between two fits of the same three- or four-level data, and the
    proportion of each level's variance explained, read from their JSON documents."""
    from ..levels_results import n_units, table_view, tau_blocks

    for fit, name in ((a, name_a), (b, name_b)):
        if fit.get("deviance") is None and "hglm" in fit:
            raise DataError(f"{name} is a PQL fit, and PQL has no deviance (it maximises a quasi-likelihood), so no "
                            "likelihood-ratio test")
        if "data_hash" not in fit:
            raise DataError(f"{name} does not record its data (an older hlmcli wrote it); refit it with this version")
        if not fit.get("converged"):
            raise DataError(f"{name} is not a certified optimum, so its deviance cannot be tested; fix the fit first")
    if a["levels"] != b["levels"]:
        raise DataError(f"{name_a} has {a['levels']} levels and {name_b} {b['levels']}; a deviance test needs the "
                        "same data")
    how = [tuple((fit.get("hglm") or {}).get(k) for k in ("family", "estimation", "quadrature_points")) for fit in (a, b)]
    if how[0] != how[1]:
        raise DataError(f"{name_a} and {name_b} differ in family or estimation (quadrature points included), so their deviances are not on one "
                        "scale; fit both the same way")
    if a["method"] != b["method"]:
        raise DataError(f"{name_a} is {a['method']} and {name_b} is {b['method']}; fit both the same way (both --ml "
                        "for different fixed effects)")
    same = [(key, a.get(key) == b.get(key)) for key in ("outcome", "data_source", "ids", "n_deleted")]
    same.append(("units", n_units(a) == n_units(b)))
    same.append(("the outcome values or units", a["data_hash"] == b["data_hash"]))
    differ = [key for key, ok in same if not ok]
    if differ:
        raise DataError(f"{name_a} and {name_b} were fitted to different records ({', '.join(differ)} differ); a "
                        "deviance test needs the same data")
    if a["method"] == "REML" and _levels_fixed_key(a) != _levels_fixed_key(b):
        raise DataError(f"{name_a} and {name_b} have different fixed effects (centring included), and REML deviances "
                        "of such models are not comparable; refit both with --ml")
    simple, full, swapped = (a, b, False) if a["n_params"] <= b["n_params"] else (b, a, True)
    try:
        chi2, df, p = deviance_test(simple["deviance"], simple["n_params"], full["deviance"], full["n_params"])
    except ModelError as exc:
        raise DataError(f"{name_a} and {name_b}: {exc}") from None
    view = lambda fit: fit if "structure" in fit else table_view(fit)  # noqa: E731  (structured: its own AIC)
    va, vb = view(a), view(b)
    result = {"tool": "hlmcli", "schema": 2, "model_a": name_a, "model_b": name_b, "method": a["method"],
              "deviance_a": a["deviance"], "deviance_b": b["deviance"], "n_params_a": a["n_params"],
              "n_params_b": b["n_params"], "aic_a": va["aic"], "aic_b": vb["aic"], "bic_a": va["bic"],
              "bic_b": vb["bic"], "chi2": chi2, "df": df, "p": p, "p_mixture": None, "mixture_note": None}
    if "structure" in a or "structure" in b:  # HMLM2 (structured_view): Δ is not σ², so no variance is reduced
        result.update({"variance_reduction": [],
                       "structures": [a.get("structure", "homogeneous"), b.get("structure", "homogeneous")],
                       "order_note": "B has fewer parameters than A; the test treats B as the simpler model"
                       if swapped else None})
        return result
    taus = [{(blk["level"], name): blk["matrix"][k][k] for blk in tau_blocks(fit)
             for k, name in enumerate(blk["coefficients"])} for fit in (simple, full)]
    added = [key for key in taus[1] if key not in taus[0]]
    if _levels_fixed_key(a) == _levels_fixed_key(b) and set(taus[0]) <= set(taus[1]) and len(added) == 1:
        level, name = added[0]
        block = next(blk for blk in tau_blocks(full) if blk["level"] == level)
        if df == len(block["coefficients"]):  # the new effect's variance and its covariances with its level's others
            result["p_mixture"] = mixture_p(chi2, df)
            result["mixture_note"] = (f"the test that the variance of {name} at level {level} is zero puts it on the "
                                      f"boundary; p_mixture is the 50:50 mixture of chi-square({df - 1}) and "
                                      f"chi-square({df}) (Stram & Lee 1994), p is the naive chi-square")
    ta = {key: v for key, v in taus[0 if not swapped else 1].items()}
    tb = {key: v for key, v in taus[1 if not swapped else 0].items()}
    reductions = [{"component": f"level-{level} {name}", "a": ta[(level, name)], "b": tb[(level, name)],
                   "proportion_reduction": (ta[(level, name)] - tb[(level, name)]) / ta[(level, name)]}
                  for level, name in ta if (level, name) in tb and ta[(level, name)] > 0]
    if "hglm" not in a:  # an HGLM's level-1 variance is fixed by its mean: no σ² to compare
        reductions.append({"component": "level-1", "a": a["sigma2"], "b": b["sigma2"],
                           "proportion_reduction": (a["sigma2"] - b["sigma2"]) / a["sigma2"]})
    result["variance_reduction"] = reductions
    result["order_note"] = "B has fewer parameters than A; the test treats B as the simpler model" if swapped else None
    return result


def _variance_reductions(a: dict, b: dict) -> list[dict]:
    """The proportion by which each variance component of A (τ's diagonal, then σ²) is reduced in B."""
    reductions = []
    tau_a = {name: a["tau"][k][k] for k, name in enumerate(a["random_coefficients"])}
    tau_b = {name: b["tau"][k][k] for k, name in enumerate(b["random_coefficients"])}
    for name in tau_a:
        if name in tau_b and tau_a[name] > 0:
            reductions.append({"component": name, "a": tau_a[name], "b": tau_b[name],
                               "proportion_reduction": (tau_a[name] - tau_b[name]) / tau_a[name]})
    if a["sigma2"] is not None and b["sigma2"] is not None:  # an HGLM's level-1 variance is fixed by its mean
        reductions.append({"component": "level-1", "a": a["sigma2"], "b": b["sigma2"],
                           "proportion_reduction": (a["sigma2"] - b["sigma2"]) / a["sigma2"]})
    return reductions


def compare_crossed(a: dict, b: dict, name_a: str, name_b: str) -> dict:
    """The likelihood-ratio test between two cross-classified fits of the same records (ML for different
    fixed effects; REML for the same fixed effects), and the proportion of each variance explained."""
    from .crossed_report import crossed_view, is_crossed

    for fit, name in ((a, name_a), (b, name_b)):
        if not is_crossed(fit):
            raise DataError(f"{name} is not a cross-classified fit and the other is; a deviance test needs the same "
                            "data and kind of model")
        if not fit.get("converged"):
            raise DataError(f"{name} is not a certified optimum, so its deviance cannot be tested; fix the fit first")
    if a["method"] != b["method"]:
        raise DataError(f"{name_a} is {a['method']} and {name_b} is {b['method']}; fit both the same way (both --ml "
                        "for different fixed effects)")
    if a["data_hash"] != b["data_hash"] or a["outcome"] != b["outcome"]:
        raise DataError(f"{name_a} and {name_b} were fitted to different records (outcome or records left out "
                        "differ); a deviance test needs the same data")
    fixed = [sorted(f["term"] for f in fit["fixed_effects"]) for fit in (a, b)]
    if a["method"] == "REML" and fixed[0] != fixed[1]:
        raise DataError(f"{name_a} and {name_b} have different fixed effects, and REML deviances of such models are "
                        "not comparable; refit both with --ml")
    simple, full, swapped = (a, b, False) if a["n_params"] <= b["n_params"] else (b, a, True)
    try:
        chi2, df, p = deviance_test(simple["deviance"], simple["n_params"], full["deviance"], full["n_params"])
    except ModelError as exc:
        raise DataError(f"{name_a} and {name_b}: {exc}") from None
    result = {"tool": "hlmcli", "schema": 2, "model_a": name_a, "model_b": name_b, "method": a["method"],
              "deviance_a": a["deviance"], "deviance_b": b["deviance"], "n_params_a": a["n_params"],
              "n_params_b": b["n_params"], "aic_a": a["aic"], "aic_b": b["aic"], "bic_a": a["bic"],
              "bic_b": b["bic"], "chi2": chi2, "df": df, "p": p, "p_mixture": None, "mixture_note": None}
    va, vb = crossed_view(a), crossed_view(b)
    result["variance_reduction"] = _variance_reductions(va, vb)
    result["order_note"] = "B has fewer parameters than A; the test treats B as the simpler model" if swapped else None
    return result


def structured_view(fit: dict, name: str) -> dict:
    """An HMLM document (--level1-covariance) holds two models: its top-level deviance, n_params, τ and σ² are
    the homogeneous model's, printed first as HLM 7 does. compare tests the structured model the user asked
    for: the document as seen through its 'level1_covariance' record (deviance, parameters counting Δ's and τ's,
    AIC, BIC, the local check of its optimum); its variance components are Δ, not τ and σ², so none is
    reduced. The same at three levels (HMLM2: the parameters count both levels' τ)."""
    lc = fit.get("level1_covariance")
    if not (isinstance(lc, dict) and lc.get("structure") != "homogeneous"):
        return fit
    check = lc.get("check")
    if not (_number(lc.get("deviance")) and isinstance(lc.get("n_params"), int) and _number(lc.get("aic"))
            and isinstance(check, dict)):
        raise DataError(f"{name} is an HMLM fit (--level1-covariance {lc.get('structure')}) that does not record the "
                        "structured model's deviance, parameters and AIC (an older hlmcli wrote it); refit it with "
                        "this version")
    return {**fit, "deviance": lc["deviance"], "n_params": lc["n_params"], "aic": lc["aic"], "bic": lc["bic"],
            "converged": bool(fit.get("converged") and check.get("converged")), "random_coefficients": [],
            "tau": [], "sigma2": None, "structure": lc["structure"]}


def compare_fits(a: dict, b: dict, name_a: str, name_b: str) -> dict:
    a, b = structured_view(a, name_a), structured_view(b, name_b)
    if a.get("kind") == "cross-classified linear" or b.get("kind") == "cross-classified linear":
        return compare_crossed(a, b, name_a, name_b)
    if a.get("levels", 2) > 2 or b.get("levels", 2) > 2:
        if a.get("levels", 2) == 2 or b.get("levels", 2) == 2:
            raise DataError(f"{name_a} and {name_b} have different numbers of levels; a deviance test needs the same data")
        return compare_levels(a, b, name_a, name_b)
    for fit, name in ((a, name_a), (b, name_b)):
        if "data_hash" not in fit or "model" not in fit:
            raise DataError(f"{name} does not record its model and data (an older hlmcli wrote it); refit it with this version")
        if fit.get("weights"):
            from ..data.weights import NO_LIKELIHOOD_RATIO

            raise DataError(f"{name} is a weighted fit: {NO_LIKELIHOOD_RATIO}")
        if not fit.get("converged"):
            raise DataError(f"{name} is not a certified optimum, so its deviance cannot be tested; fix the fit first")
    for fit, name in ((a, name_a), (b, name_b)):
        if fit["deviance"] is None:
            raise DataError(f"{name} is a PQL fit, and PQL has no deviance (it maximises a quasi-likelihood), so no "
                            "likelihood-ratio test; fit both models with --estimation laplace or agq")
    if (a.get("family"), a.get("estimation"), a.get("quadrature_points")) != \
            (b.get("family"), b.get("estimation"), b.get("quadrature_points")):
        raise DataError(f"{name_a} and {name_b} differ in family or estimation (quadrature points included), so their "
                        "deviances are not on one scale; fit both the same way")
    if a["method"] != b["method"]:
        raise DataError(f"{name_a} is {a['method']} and {name_b} is {b['method']}; fit both the same way (both --ml for different fixed effects)")
    if a["data_hash"] != b["data_hash"] or a["outcome"] != b["outcome"]:
        raise DataError(f"{name_a} and {name_b} were fitted to different records (outcome, units or deleted records differ); "
                        "a deviance test needs the same data")
    same_fixed = _fixed_key(a) == _fixed_key(b)
    if a["method"] == "REML" and not same_fixed:
        raise DataError(
            f"{name_a} and {name_b} have different fixed effects (centring included), and REML deviances of such models "
            "are not comparable; refit both with --ml"
        )
    simple, full, swapped = (a, b, False) if a["n_params"] <= b["n_params"] else (b, a, True)
    try:
        chi2, df, p = deviance_test(simple["deviance"], simple["n_params"], full["deviance"], full["n_params"])
    except ModelError as exc:
        raise DataError(f"{name_a} and {name_b}: {exc}") from None
    result = {"tool": "hlmcli", "schema": 2, "model_a": name_a, "model_b": name_b, "method": a["method"],
              "deviance_a": a["deviance"], "deviance_b": b["deviance"], "n_params_a": a["n_params"],
              "n_params_b": b["n_params"], "aic_a": a.get("aic"), "aic_b": b.get("aic"), "bic_a": a.get("bic"),
              "bic_b": b.get("bic"), "chi2": chi2, "df": df, "p": p, "p_mixture": None, "mixture_note": None}
    ra, rb = simple["random_coefficients"], full["random_coefficients"]
    added = [c for c in rb if c not in ra]
    structured = "structure" in a or "structure" in b  # HMLM: Δ's parameters are counted too
    if same_fixed and set(ra) <= set(rb) and len(added) == 1 and df == len(rb) and not structured:
        result["p_mixture"] = mixture_p(chi2, df)
        result["mixture_note"] = (f"the test that the variance of {added[0]} is zero puts it on the boundary; "
                                  f"p_mixture is the 50:50 mixture of chi-square({df - 1}) and chi-square({df}) "
                                  "(Stram & Lee 1994), p is the naive chi-square")
    result["variance_reduction"] = _variance_reductions(a, b)
    result["order_note"] = "B has fewer parameters than A; the test treats B as the simpler model" if swapped else None
    if structured:
        result["structures"] = [a.get("structure", "homogeneous"), b.get("structure", "homogeneous")]
    return result


def compare_text(r: dict) -> str:
    out = [f"Model comparison: A = {r['model_a']}, B = {r['model_b']} ({r['method']})", ""]
    out.append(f" Deviance A = {r['deviance_a']:.6f} with {r['n_params_a']} parameters")
    out.append(f" Deviance B = {r['deviance_b']:.6f} with {r['n_params_b']} parameters")
    if r.get("aic_a") is not None:
        out.append(f" AIC A = {r['aic_a']:.6f}, AIC B = {r['aic_b']:.6f}; BIC A = {r['bic_a']:.6f}, BIC B = {r['bic_b']:.6f}")
    out.append(f" Chi-square statistic = {r['chi2']:.6f}")
    out.append(f" Degrees of freedom = {r['df']}")
    out.append(f" p-value = {hlm_p(r['p'])}  (naive chi-square)")
    if r["p_mixture"] is not None:
        out.append(f" p-value = {hlm_p(r['p_mixture'])}  (50:50 mixture, for a variance on its boundary)")
        out.append(f"   {r['mixture_note']}")
    if r.get("order_note"):
        out.append(f" Note: {r['order_note']}")
    if r.get("structures"):
        out.append(f" Level-1 covariance (HMLM): A {r['structures'][0]}, B {r['structures'][1]}; the structured "
                   "models' deviances and parameters (Delta's and tau's)")
    if r.get("structures") and not r["variance_reduction"]:
        return "\n".join(out) + "\n"
    out += ["", " Proportion reduction in variance, (A - B) / A:"]
    for v in r["variance_reduction"]:
        out.append(f"  {v['component']:>12}: {v['a']:.5f} -> {v['b']:.5f}  {round(v['proportion_reduction'], 3) + 0.0:.3f}")
    return "\n".join(out) + "\n"
