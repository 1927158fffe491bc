"""Names of a fit's terms for tables and data frames, read from its JSON document's `model` record.

Two forms of one name, both keeping the centring:
- the R name, as the printed lme4 formula writes the column (report.lme4_formula): SES_gc for SES
  minus its unit's mean, SES_grand for SES minus the grand mean, mean_SES for a unit mean, and a
  cross-level product as lme4 names it, level-2 part first (SECTOR:SES_gc); for CSV and JSON keys;
- the label for people: "SES (group-centred)", "SES (grand-centred)", "mean(SES)", with ':' for a
  product; for text, LaTeX, HTML and Markdown tables.

Reading the saved JSON (not the engine's objects) lets `hlmcli table` name the terms of fits saved by
any earlier run the same way as a fresh fit's.
"""

from __future__ import annotations

import re

SUFFIX = {"group": "_gc", "grand": "_grand"}
LABEL = {"group": " (group-centred)", "grand": " (grand-centred)"}


def r_variable(name: str, centering: str | None, unit_mean: bool = False) -> str:
    """A predictor's column name in the lme4 formula: SES, SES_gc, SES_grand, mean_SES, mean_SES_grand."""
    return (f"mean_{name}" if unit_mean else name) + SUFFIX.get(centering or "none", "")


def label_variable(name: str, centering: str | None, unit_mean: bool = False) -> str:
    """A predictor as people read it: SES, SES (group-centred), mean(SES) (grand-centred)."""
    return (f"mean({name})" if unit_mean else name) + LABEL.get(centering or "none", "")


def _level1(model: dict) -> list[dict]:
    return [{"name": "INTRCPT1", "centering": None}] + list(model.get("level1_predictors") or [])


def fixed_names(fit: dict) -> list[tuple[str, str]]:
    """(R name, label) of each fixed effect of a two-level fit's JSON, in its order. A row the model
    record does not explain (an older document) keeps its coefficient:predictor name in both forms. A
    multinomial fit's rows carry their logit's category, which prefixes both: '1:x', '1: x'."""
    names = _fixed_names(fit)
    return [(f"{f['category']:g}:{r}", f"{f['category']:g}: {lab}") if f.get("category") is not None else (r, lab)
            for f, (r, lab) in zip(fit["fixed_effects"], names)]


def _fixed_names(fit: dict) -> list[tuple[str, str]]:
    model = fit.get("model") or {}
    level1 = _level1(model)
    equations = model.get("level2_equations") or []
    out = []
    for f in fit["fixed_effects"]:
        if "path" in f:  # a fit of three or more levels (levels_results.table_view): named along its path
            out.append((f["term"], f["term"]))
            continue
        q = next((i for i, t in enumerate(level1) if t["name"] == f["coefficient"]), None)
        x = None if q in (None, 0) else level1[q]
        w = None
        if f["predictor"] != "INTRCPT2" and q is not None and q < len(equations):
            w = next((t for t in equations[q]["predictors"]
                      if (f"mean({t['name']})" if t.get("unit_mean") else t["name"]) == f["predictor"]), None)
        if q is None or (f["predictor"] != "INTRCPT2" and w is None):
            plain = _plain(f["coefficient"], f["predictor"])
            out.append((plain, plain))
            continue
        r = [r_variable(t["name"], t.get("centering"), t.get("unit_mean", False)) for t in (w, x) if t]
        lab = [label_variable(t["name"], t.get("centering"), t.get("unit_mean", False)) for t in (w, x) if t]
        out.append((":".join(r) or "(Intercept)", ":".join(lab) or "(Intercept)"))
    return out


def _plain(coefficient: str, predictor: str) -> str:
    if coefficient == "INTRCPT1":
        return "(Intercept)" if predictor == "INTRCPT2" else predictor
    return coefficient if predictor == "INTRCPT2" else f"{predictor}:{coefficient}"


def random_names(fit: dict) -> list[tuple[str, str]]:
    """(R name, label) of each random coefficient (fit['random_coefficients']): (Intercept), SES_gc."""
    if "r_names" in fit:  # three or more levels: the R name, and the coefficient with its level
        return list(zip(fit["r_names"], fit["random_coefficients"]))
    level1 = {t["name"]: t for t in _level1(fit.get("model") or {})}
    out = []
    for name in fit["random_coefficients"]:
        if name == "INTRCPT1":
            out.append(("(Intercept)", "(Intercept)"))
        elif name in level1:
            t = level1[name]
            out.append((r_variable(name, t.get("centering")), label_variable(name, t.get("centering"))))
        else:
            out.append((name, name))
    return out


def group_name(fit: dict) -> str:
    """The grouping factor's name, as the lme4 formula gives it: '(1 + SES_gc | ID)' -> 'ID'."""
    found = re.findall(r"\|\|?\s*([^)|]+?)\s*\)", fit.get("lme4_formula") or "")
    return found[-1] if found else "level-2"


def with_terms(doc: dict) -> dict:
    """The JSON document with each fixed effect's R name as "term", after its "gamma" (the rows of a
    population-average model too); the document's other keys are left as they are."""
    def named(rows: list[dict]) -> list[dict]:
        terms = fixed_names({**doc, "fixed_effects": rows})
        out = []
        for row, (r_name, _) in zip(rows, terms):
            row = {k: v for k, v in row.items() if k != "term"}
            keys = list(row)
            at = keys.index("gamma") + 1 if "gamma" in keys else len(keys)
            out.append({**{k: row[k] for k in keys[:at]}, "term": r_name, **{k: row[k] for k in keys[at:]}})
        return out

    doc["fixed_effects"] = named(doc["fixed_effects"])
    for key in ("fixed_effects_robust",):
        if key in doc:
            doc[key] = named(doc[key])
    extra = doc.get("population_average")
    if isinstance(extra, dict) and isinstance(extra.get("fixed_effects"), list):
        extra["fixed_effects"] = named(extra["fixed_effects"])
    return doc
