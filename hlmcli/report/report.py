"""Stage 8, report: results to HLM 7-style fixed-width text and to JSON. Pure formatting, no statistics."""

from __future__ import annotations

import json
import math

import numpy as np

from ..io.archive import Archive, summarize
from ..spec import gamma_label
from ..version import __version__


def number_cell(x: float, width: int = 12, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'.':>{width}}"
    return f"{x:>{width}.{digits}g}"


def dumps_json(obj) -> str:
    """Deterministic JSON: sorted keys where order is not meaningful is left to the caller; no NaN."""
    return json.dumps(json_safe(obj), indent=1, ensure_ascii=False) + "\n"


def json_safe(obj):
    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj)) else obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return json_safe(obj.item())
    return obj


# ---------------------------------------------------------------- mdm info

def _spread(sizes: np.ndarray) -> dict:
    return {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(sizes.mean())}


def archive_info(archive: Archive, unit: str | None = None) -> dict:
    """HLM 7's MDM statistics of an archive of any number of levels (mdm-info-1.json), and with `unit`
    one unit's, looked up from the top level down."""
    K = archive.n_levels
    per_unit = {f"level{k}": _spread(np.diff(archive.levels[k - 1].offsets)) for k in range(2, K + 1)}
    info = {
        "schema": 1, "tool": "hlmcli", "version": __version__, "levels": K,
        "archive": archive.path.name if archive.path else None,
        "format_version": archive.format_version,  # of the file read, not the one this version writes
        # level1: the id linking level-1 records to level-2 units, as the level-1 file spells it
        "id": {"level1": archive.level1_id, **{f"level{k}": archive.id_names[k - 2] for k in range(2, K + 1)},
               "kind": archive.id_kind},
        "missing": archive.missing,
        **{f"n_level{k}": archive.n(k) for k in range(1, K + 1)},
        "records_per_unit": per_unit["level2"],
        "units_per_unit": per_unit,
        "sources": [{"role": s.role, "file": s.name, "format": s.format, "encoding": s.encoding,
                     "size": s.size, "sha256": s.sha256} for s in archive.sources],
        "notes": archive.notes,
        **{f"level{k}": [v.__dict__ for v in summarize(archive.levels[k - 1].values, archive.names(k))]
           for k in range(1, K + 1)},
        "value_labels": archive.value_labels,
    }
    if unit is not None:
        found = _unit_info(archive, unit)
        if found is None:
            from ..errors import DataError

            ids2, top = archive.levels[1].ids, archive.levels[-1].ids
            look = ids2[:2] + (top[:1] if K > 2 else ids2[2:3])
            raise DataError(f"{archive.path.name if archive.path else 'the archive'}: no unit '{unit}' "
                            f"{'in the archive' if K == 2 else 'at any level'}; ids look like {', '.join(look)}")
        info["unit"] = found
    return info


def _unit_info(archive: Archive, unit: str) -> dict | None:
    """One unit, looked up from the top level down: its level, records, units one level down, values."""
    for level in range(archive.n_levels, 1, -1):
        ids = archive.levels[level - 1].ids
        if unit in ids:
            k = ids.index(unit)
            lo, hi = k, k + 1
            for m in range(level, 1, -1):  # the range of records under it
                off = archive.levels[m - 1].offsets
                lo, hi = int(off[lo]), int(off[hi])
            off = archive.levels[level - 1].offsets
            return {"id": unit, "level": level, "n": hi - lo, "n_below": int(off[k + 1] - off[k]),
                    f"level{level}": {n: float(archive.levels[level - 1].values[i, k])
                                      for i, n in enumerate(archive.names(level))}}
    return None


def archive_source_lines(info: dict) -> list[str]:
    """The files an archive was built from, one line each (mdm info at any number of levels)."""
    out = []
    for s in info["sources"]:
        enc = f", encoding {s['encoding']}" if s["encoding"] else ""
        out.append(f"  {s['role']} file: {s['file']} ({s['format']}{enc}, {s['size']} bytes, sha256 {s['sha256'][:16]})")
    return out


def descriptive_statistics_lines(info: dict, levels: int) -> list[str]:
    """HLM's descriptive statistics table of each level's variables, levels 1 to `levels`."""
    out = []
    for k in range(1, levels + 1):
        out += ["", f"          LEVEL-{k} DESCRIPTIVE STATISTICS", "",
                f"{'VARIABLE NAME':>16} {'N':>9} {'MEAN':>12} {'SD':>12} {'MINIMUM':>12} {'MAXIMUM':>12}"]
        for v in info[f"level{k}"]:
            out.append(f"{v['name']:>16} {v['n']:>9d} {number_cell(v['mean'])} {number_cell(v['sd'])} "
                       f"{number_cell(v['minimum'])} {number_cell(v['maximum'])}")
    return out


def value_label_lines(info: dict) -> list[str]:
    if not info["value_labels"]:
        return []
    return ["", "  value labels:"] + [f"    {name}: " + ", ".join(f"{k} = {v}" for k, v in labels.items())
                                       for name, labels in info["value_labels"].items()]


_NOTE_LINES = {"dropped_missing": "level-1 records dropped for missing values",
               "dropped_unmatched": "level-1 records dropped with no level-2 unit",
               "units_without_records": "level-2 units left out (no level-1 records)",
               "level2_units_without_records": "level-2 units left out (no level-1 records)",
               "level3_units_without_units": "level-3 units left out (no level-2 units)",
               **{f"level{k}_units_left_out": f"level-{k} units left out (no level-{k - 1} units)" for k in range(3, 10)},
               "level2_units_left_out": "level-2 units left out (no level-1 records)"}


def archive_info_text(info: dict) -> str:
    """`mdm info` as text, for any number of levels."""
    K = info.get("levels", 2)
    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''}".rstrip() + (f" ({K} levels, HLM{K})" if K > 2 else ""))
    w("")
    out += archive_source_lines(info)
    ids = ", ".join([f"{info['id']['level1']} (level-1)"] + [f"{info['id'][f'level{k}']} (level-{k})" for k in range(2, K + 1)])
    w(f"  unit ids: {ids}, stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    for key, text in _NOTE_LINES.items():
        if info["notes"].get(key):
            w(f"  {text}: {info['notes'][key]}")
    w(f"  level-1 records: {info['n_level1']}")
    for k in range(2, K + 1):
        w(f"  level-{k} units:   {info[f'n_level{k}']}")
    for k in range(2, K + 1):
        u = info["units_per_unit"][f"level{k}"]
        what = ("records per unit" if K == 2 else "records per level-2 unit") if k == 2 else \
            f"level-{k - 1} units per level-{k} unit"
        w(f"  {what}: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    out += descriptive_statistics_lines(info, K)
    out += value_label_lines(info)
    if "unit" in info:
        un = info["unit"]
        w("")
        if un["level"] == 2:
            w(f"  level-2 unit {un['id']}: {un['n']} level-1 records")
        else:
            w(f"  level-{un['level']} unit {un['id']} (ids are looked up from the top level down): "
              f"{un['n_below']} level-{un['level'] - 1} units, {un['n']} level-1 records")
        for name, value in un[f"level{un['level']}"].items():
            w(f"    {name} = {value:.6g}")
    return "\n".join(printable(line) for line in out) + "\n"


# ---------------------------------------------------------------- the model, as HLM 7 prints it

class Symbols:
    """Greek with HLM's subscripts, or plain ASCII for terminals and files that need it."""

    def __init__(self, ascii_only: bool):
        self.ascii = ascii_only
        self.beta = "B" if ascii_only else "β"
        self.gamma = "G" if ascii_only else "γ"
        self.u = "U" if ascii_only else "u"
        self.r = "R" if ascii_only else "r"
        self.dot = "." if ascii_only else "•"
        self.sigma2 = "sigma^2" if ascii_only else "σ2"
        self.tau = "tau" if ascii_only else "τ"
        self.chi2 = "Chi-square" if ascii_only else "χ2"

    def g(self, q: int, s: int) -> str:
        from ..spec import gamma_label

        return gamma_label(q, s, self.gamma)


def hlm_name(name: str) -> str:
    """HLM 7 prints variable names upper-cased; the data keep their own case."""
    return name.upper()


def _level1_term(term, sym: Symbols) -> str:
    n = hlm_name(term.name)
    if term.centering == "group":
        return f"({n}ij - {n}{sym.dot}j)"
    if term.centering == "grand":
        return f"({n}ij - {n}{sym.dot}{sym.dot})"
    return f"({n}ij)"


def _level2_term(term, sym: Symbols) -> str:
    name = f"mean({hlm_name(term.name)})" if term.unit_mean else hlm_name(term.name)
    if term.centering == "grand":
        return f"({name}j - {name}{sym.dot})"
    return f"({name}j)"


def fit_criteria(a) -> tuple[float, float]:
    from ..analysis.inference import information_criteria

    r = a.result
    n_var = r.n_params - (a.stats.p if r.method == "ML" else 0)
    return information_criteria(r.deviance, a.stats.p, n_var, a.design.n)


def certificate_text(r, sym: Symbols, full: bool = False, sigma2_fixed: bool = False,
                     alpha: bool = False) -> list[str]:
    """One plain line; with --full-output also what was checked, as bounds (the tolerance) so the text
    is the same on every platform. The exact numbers are in the JSON. sigma2_fixed: σ² is not a
    parameter (a V-known model), so the line names τ alone; alpha: a model for the level-1 variance, whose
    α were checked too (heterogeneous.minimise_alpha)."""
    from ..engine.certificate import stopping_line

    c = r.certificate
    if not c.certified:
        return ["Iterations stopped WITHOUT a certified optimum:"] + [f" - {f}" for f in c.failed]
    plain = stopping_line(sym.tau if sigma2_fixed else (f"{sym.sigma2}, {sym.tau} and {'a' if sym.ascii else 'α'}"
                                                         if alpha else f"{sym.sigma2} and {sym.tau}"))
    if not full:
        return [plain]
    rank = "positive definite" if c.rank == c.q else f"of rank {c.rank} of {c.q}"
    text = (f" Checked: with {sym.tau} {rank}, the deviance can fall by less "
            f"than {c.tolerance:.0E} on its face")
    if c.hessian_eigenvalue is not None:
        text += ", the face Hessian is positive semi-definite"
    if c.null_eigenvalue is not None:
        text += ", and no direction into the positive semi-definite cone lowers it"
    return [plain, text]


def model_record(spec, meta: dict) -> dict:
    """The whole model as fitted, for `hlmcli compare` and for the record: the equations as given,
    as normalised, the centring of every predictor, the method and the τ structure."""
    plain = Symbols(ascii_only=True)
    summary = model_summary(spec, plain)
    level1 = [line.strip() for line in summary[summary.index("Level-1 Model") + 2:summary.index("Level-2 Model") - 1]]
    level2 = [line.strip() for line in summary[summary.index("Level-2 Model") + 2:summary.index("Mixed Model") - 1]]
    return {
        "given": meta.get("model_given"),
        "normalised": {"level1": level1, "level2": level2},
        "outcome": spec.outcome,
        "level1_predictors": [{"name": t.name, "centering": t.centering} for t in spec.level1],
        "level2_equations": [{"coefficient": n, "random": eq.random,
                              "predictors": [{"name": t.name, "centering": t.centering, "unit_mean": t.unit_mean}
                                             for t in eq.predictors]}
                             for n, eq in zip(spec.coefficient_names(), spec.level2)],
        "method": spec.method,
        "tau_structure": spec.options.tau,
    }


def data_hash(design) -> str:
    """SHA-256 of the records a deviance is computed on: the outcome, then for each level 2..K the
    units' sizes (offsets) and ids. At two levels this is the outcome, the units and their sizes;
    levels above two only add their own blocks, so one definition serves every number of levels."""
    if getattr(design, "data_digest", ""):  # a fit from per-unit moments (--engine stream/dask)
        return design.data_digest
    if hasattr(design, "offsets"):  # two levels
        return records_hash(design.y, [(design.offsets, design.unit_ids)])
    return _levels_data_hash(design)


def records_hash(y, levels, moments=None) -> str:
    """The hash of data_hash: y (float64, little-endian), else (a fit from moments) b"moments" and each
    level-2 unit's count, outcome mean and outcome sum of squares; then per level ℓ = 2..K its
    offsets (int64: the level-(ℓ−1) units of unit k are offsets[k]:offsets[k+1]) and its ids joined
    by U+001F, levels above two preceded by U+001E."""
    import hashlib

    h = hashlib.sha256()
    if moments is None:
        h.update(np.ascontiguousarray(y, dtype="<f8").tobytes())
    else:
        h.update(b"moments\x1f")
        for a in (moments.n, moments.mean[:, -1], moments.C[:, -1, -1]):  # the outcome is the last column
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
    for k, (offsets, ids) in enumerate(levels):
        if k:
            h.update(b"\x1e")
        h.update(np.ascontiguousarray(offsets, dtype="<i8").tobytes())
        h.update("\x1f".join(ids).encode("utf-8"))
    return h.hexdigest()


def _levels_data_hash(design) -> str:
    """data_hash of a design of three or more levels (design_levels.DesignLevels)."""
    from ..engine.moments import LevelsSummary
    from ..engine.nested import as_levels

    data = design.data if isinstance(design.data, LevelsSummary) else as_levels(design.data)
    ids = list(design.unit_ids) if hasattr(design, "unit_ids") else [design.unit2_ids, design.unit3_ids]
    levels = []
    for level, level_ids in enumerate(ids, 2):
        if level == 2 and isinstance(data, LevelsSummary):
            counts = np.rint(data.moments.n).astype(np.int64)
        else:
            counts = np.bincount(data.parents[level - 2], minlength=len(level_ids))
        levels.append((np.concatenate(([0], np.cumsum(counts))), level_ids))
    if isinstance(data, LevelsSummary):
        return records_hash(None, levels, moments=data.moments)
    return records_hash(data.y, levels)


def model_summary(spec, sym: Symbols) -> list[str]:
    b, u = sym.beta, sym.u
    out = ["Summary of the model specified", "", "Level-1 Model", ""]
    present = [q for q, eq in enumerate(spec.level2) if eq.present]
    rhs = [f"{b}{q}j" + ("" if q == 0 else f"*{_level1_term(spec.level1[q - 1], sym)}") for q in present]
    out.append(f"    {hlm_name(spec.outcome)}ij = " + " + ".join(rhs) + " + rij")
    out += ["", "Level-2 Model", ""]
    for q in present:
        eq = spec.level2[q]
        parts = ([sym.g(q, 0)] if eq.intercept else []) + [
            f"{sym.g(q, s)}*{_level2_term(t, sym)}" for s, t in enumerate(eq.predictors, start=1)]
        if eq.random:
            parts.append(f"{u}{q}j")
        out.append(f"    {b}{q}j = " + " + ".join(parts))
    if spec.options.tau == "diagonal":
        out += ["", f"The random effects are independent: the off-diagonal elements of {sym.tau} are fixed at 0."]
    out += ["", "Mixed Model", ""]
    lines = []
    for q in present:
        eq = spec.level2[q]
        x = "" if q == 0 else f"*{hlm_name(spec.level1[q - 1].name)}ij"
        terms = [f"{sym.g(q, 0)}{x}"] if eq.intercept else []
        for s, t in enumerate(eq.predictors, start=1):
            name = f"mean({hlm_name(t.name)})" if t.unit_mean else hlm_name(t.name)
            terms.append(f"{sym.g(q, s)}*{name}j{x}")
        if terms:
            lines.append(" + ".join(terms))
    if lines:
        out.append(f"    {hlm_name(spec.outcome)}ij = {lines[0]}")
        out += [f"    + {line}" for line in lines[1:]]
    else:
        out.append(f"    {hlm_name(spec.outcome)}ij =")
    rand = []
    for q, eq in enumerate(spec.level2):
        if eq.random:
            rand.append(f"{u}{q}j" + ("" if q == 0 else f"*{hlm_name(spec.level1[q - 1].name)}ij"))
    out.append("     + " + " + ".join(rand + ["rij"]))
    notes = centering_notes(spec)
    if notes:
        out.append("")
        out += notes
    return out


def centering_notes(spec) -> list[str]:
    out = []
    for t in spec.level1:
        if t.centering == "group":
            out.append(f"{hlm_name(t.name)} has been centered around the group mean.")
        elif t.centering == "grand":
            out.append(f"{hlm_name(t.name)} has been centered around the grand mean.")
    seen = set()
    for t in spec.predictors(2):
        name = f"mean({hlm_name(t.name)})" if t.unit_mean else hlm_name(t.name)
        if name in seen:
            continue
        seen.add(name)
        if t.unit_mean:
            out.append(f"{name} is the mean of {hlm_name(t.name)} over each unit's records used in this analysis.")
        if t.centering == "grand":
            out.append(f"{name} has been centered around the grand mean.")
    return out


def _r_name(term, level: int) -> str:
    from .terms import r_variable  # one naming for the formula and the tables' R names

    return r_variable(term.name, term.centering, term.unit_mean)


def r_terms(spec) -> tuple[list[str], list[str]]:
    """The fixed terms and the random terms (one level-2 grouping) of a two-level model, in R's names."""
    fixed = ["1"] if spec.level2[0].intercept else ["0"]
    for q, eq in enumerate(spec.level2):
        x = None if q == 0 else _r_name(spec.level1[q - 1], 1)
        if x and eq.intercept:
            fixed.append(x)
        for t in eq.predictors:
            w = _r_name(t, 2)
            fixed.append(w if x is None else f"{w}:{x}")
    fixed = list(dict.fromkeys(fixed))
    rand = [("1" if q == 0 else _r_name(spec.level1[q - 1], 1)) for q, eq in enumerate(spec.level2) if eq.random]
    return fixed, rand


def lme4_formula(spec, id_name: str) -> tuple[str, list[str]]:
    """The same model in lme4 syntax, and how to make its derived columns in R."""
    fixed, rand = r_terms(spec)
    if spec.options.tau == "diagonal":
        # independent random effects: one term per effect, as (1 | g) + (0 + x | g)
        parts = [f"({'1' if r == '1' else '0 + ' + r} | {id_name})" for r in rand]
        formula = f"{spec.outcome} ~ {' + '.join(fixed)} + {' + '.join(parts)}"
    else:
        if "1" not in rand:
            rand = ["0"] + rand
        formula = f"{spec.outcome} ~ {' + '.join(fixed)} + ({' + '.join(rand)} | {id_name})"
    notes = []
    made = set()
    for t in spec.predictors(1) + spec.predictors(2):
        name = _r_name(t, 1)
        if name in made or name == t.name:
            continue
        made.add(name)
        src = f"ave({t.name}, {id_name})" if t.unit_mean else t.name
        if t.unit_mean and t.centering == "grand":
            notes.append(f"{name} = {src} - mean of {src} over units (one value per {id_name})")
        elif t.unit_mean:
            notes.append(f"{name} = {src}")
        elif t.centering == "group":
            notes.append(f"{name} = {t.name} - ave({t.name}, {id_name})")
        elif spec.level1 and t in spec.level1:
            notes.append(f"{name} = {t.name} - mean({t.name})")
        else:
            notes.append(f"{name} = {t.name} - mean of {t.name} over units (one value per {id_name})")
    if notes:
        notes.append("(means over the records used in the analysis, after deleting records with missing values)")
    method = "REML = TRUE" if spec.method == "REML" else "REML = FALSE"
    return formula, notes + [f"fit with lmer(..., {method})"]


# ---------------------------------------------------------------- fit output

def hlm_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def hlm_e(x: float) -> str:
    """HLM's E-notation: -2.406403E+003."""
    mant, exp = f"{x:.6E}".split("E")
    return f"{mant}E{int(exp):+04d}"


def coef_label(design, q: int, sym: Symbols) -> str:
    name = hlm_name(design.spec.coefficient_names()[q])
    return f"{name}, {sym.beta}{q}" if q == 0 else f"{name} slope, {sym.beta}{q}"


def random_label(design, q: int, sym: Symbols) -> str:
    name = hlm_name(design.spec.coefficient_names()[q])
    return f"{name}, {sym.u}{q}" if q == 0 else f"{name} slope, {sym.u}{q}"


def df_text(df: float) -> str:
    if df is None or (isinstance(df, float) and math.isnan(df)):
        return "."
    return f"{df:.0f}" if float(df).is_integer() else f"{df:.2f}"


def df_value(df):
    df = float(df)
    return int(df) if df.is_integer() else df


def _fixed_effects_json(a) -> list[dict]:
    """One record per γ: its labels, the estimate, and the model-based and robust SE, t, d.f. and p."""
    from ..analysis.inference import two_sided_p

    d, fx = a.design, a.fixed
    df = a.satterthwaite if a.satterthwaite is not None else fx.df
    p = two_sided_p(fx.t, df)
    rp = two_sided_p(fx.robust_t, df)
    fixed = []
    for k, f in enumerate(d.fixed):
        term = d.spec.fixed_predictor((f.q, f.s))
        fixed.append({
            "coefficient": f.coefficient, "predictor": f.predictor, "gamma": f.label,
            "centering": term.centering if term else None,
            "estimate": float(fx.gamma[k]), "se": float(fx.se[k]), "t": float(fx.t[k]), "df": df_value(df[k]),
            "p": float(p[k]), "robust_se": float(fx.robust_se[k]), "robust_t": float(fx.robust_t[k]),
            "robust_p": float(rp[k]),
        })
    return fixed


def fit_json(analysis, meta: dict) -> dict:
    """The JSON document of a two-level linear fit (schema 2, hlmcli/schema/fit-2.json)."""
    a = analysis
    d, r, fx, vt = a.design, a.result, a.fixed, a.variance
    names = d.spec.coefficient_names()
    rand_q = [int(q) for q in a.stats.random]
    fixed = _fixed_effects_json(a)
    tau = r.tau
    sd = np.sqrt(np.clip(np.diag(tau), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = tau / np.outer(sd, sd)
    components = []
    for k, q in enumerate(rand_q):
        components.append({"effect": names[q], "label": f"u{q}", "sd": float(sd[k]), "variance": float(tau[k, k]),
                           "df": df_value(vt.df[k]), "chi2": float(vt.chi2[k]), "p": float(vt.p[k])})
    components.append({"effect": "level-1", "label": "r", "sd": math.sqrt(r.sigma2), "variance": r.sigma2,
                       "df": None, "chi2": None, "p": None})
    out = {
        "schema": 2, "tool": "hlmcli", "version": __version__,
        "title": meta.get("title"), "data_source": meta.get("data_source"),
        "method": r.method, "outcome": d.spec.outcome,
        "n_level1": d.n, "n_level2": d.n_units, "n_deleted": d.n_deleted, "units_deleted": d.units_deleted,
        "converged": r.converged, "iterations": r.iterations, "boundary": bool(r.boundary),
        "boundary_notes": r.boundary, "certificate": r.certificate.to_json(), "start": r.start,
        "tau_structure": r.structure.value, "model": model_record(d.spec, meta), "data_hash": data_hash(d),
        "df_method": "satterthwaite" if a.satterthwaite is not None else getattr(a, "df_rule", "hlm"),
        "sigma2": r.sigma2, "se_sigma2": a.se_sigma2,
        "random_coefficients": [names[q] for q in rand_q],
        "tau": tau.tolist(), "se_tau": a.se_tau.tolist() if a.se_tau is not None else None,
        "tau_correlation": corr.tolist(),
        "reliability": {names[q]: float(vt.reliability[k]) for k, q in enumerate(rand_q)},
        "units_with_sufficient_data": vt.n_sufficient,
        "fixed_effects": fixed,
        "gamma_covariance": fx.cov.tolist(), "gamma_robust_covariance": fx.robust_cov.tolist(),
        "variance_components": components,
        "deviance": r.deviance, "n_params": r.n_params, "loglik": -r.deviance / 2,
        "aic": fit_criteria(a)[0], "bic": fit_criteria(a)[1],
        "lme4_formula": lme4_formula(d.spec, meta.get("id_name", "ID"))[0],
        "centering_means": d.centering_means,
    }
    if getattr(a, "weights", None) is not None:
        out["weights"] = a.weights.to_json()
    for key in ("icc", "plausible_ranges", "hypothesis_tests", "deviance_test", "homogeneity", "full_output",
                "constraints", "constraint_test", "known_variance", "level1_variance", "level1_covariance",
                "emulation"):
        if key in a.extras:
            out[key] = a.extras[key]
    from .terms import with_terms

    return with_terms(out)


def problem_lines(meta: dict, d) -> list[str]:
    """The title, the data source and the counts of a two-level run, as HLM prints them."""
    return [f"Problem Title: {meta.get('title') or 'no title'}", "",
            f" The data source for this run  = {meta.get('data_source')}",
            f" The maximum number of level-1 units = {d.n}",
            f" The maximum number of level-2 units = {d.n_units}"]


def tau_lines(sym, names, rand_q, tau, se_tau, reliability) -> list[str]:
    """HLM's level-2 block: τ, its standard errors (when computed), τ as correlations (two or more
    random coefficients), and the reliability of each random level-1 coefficient."""
    out = []
    w = out.append
    labels = [f"{hlm_name(names[q])},{sym.beta}{q}" for q in rand_q]
    lw = max(len(x) for x in labels)

    def matrix(title, m, fmt):
        w("")
        w(title)
        for k, lab in enumerate(labels):
            w(f"{lab:>{lw}} " + " ".join(fmt.format(v) for v in m[k]))

    matrix(sym.tau, tau, "{:13.5f}")
    if se_tau is not None:
        matrix(f"Standard errors of {sym.tau}", se_tau, "{:13.5f}")
    if len(rand_q) > 1:
        sd = np.sqrt(np.clip(np.diag(tau), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            matrix(f"{sym.tau} (as correlations)", tau / np.outer(sd, sd), "{:7.3f}")
    w("")
    rows = [[f"{hlm_name(names[q])}, {sym.beta}{q}", f"{reliability[k]:.3f}"] for k, q in enumerate(rand_q)]
    return out + text_table(["Random level-1 coefficient", "Reliability estimate"], rows, [28, 22])


def text_table(header: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    rows = [[printable(c) for c in row] for row in rows]
    # a long variable name widens the first column instead of pushing its row out of line
    widths = [max([widths[0]] + [len(row[0]) for row in rows if len(row) > 1])] + list(widths[1:])
    rule = "-" * (sum(widths) + len(widths))
    lines = [rule, " ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths))), rule]
    for row in rows:
        if len(row) == 1:
            lines.append(row[0])
        else:
            lines.append(" ".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(row, widths))))
    lines.append(rule)
    return lines


def _small(x: float, floor: float) -> str:
    """Convergence measures below `floor` are rounding noise: print the bound, so text output
    does not change with the platform's last bits (JSON keeps the exact values)."""
    return f"below {floor:.0E}" if x < floor else f"{x:.1E}"


def _run_lines(a, meta: dict, sym: Symbols) -> list[str]:
    """The warning when not certified, the run's specifications and the model, as HLM 7 prints them."""
    d, r = a.design, a.result
    out: list[str] = []
    w = out.append
    if not r.converged:
        w("WARNING: the optimum is NOT certified; the numbers below may not be at the optimum.")
        w("")
    w(f"hlmcli {__version__}: hierarchical linear models, two levels (HLM2)")
    if meta.get("timestamp"):
        w(f"Date: {meta['timestamp']}")
    w("")
    w("Specifications for this HLM2 run")
    w("")
    w(f"Problem Title: {meta.get('title') or 'no title'}")
    w("")
    w(f" The data source for this run  = {meta.get('data_source')}")
    if meta.get("command_file"):
        w(f" The command file for this run = {meta['command_file']}")
    w(f" The maximum number of level-1 units = {d.n}")
    w(f" The maximum number of level-2 units = {d.n_units}")
    w(f" The maximum number of iterations = {d.spec.options.max_iterations}")
    w("")
    w(f" Method of estimation: {'restricted maximum likelihood' if r.method == 'REML' else 'full maximum likelihood'}")
    if getattr(a, "weights", None) is not None:
        from ..data.weights import weighting_lines

        out += weighting_lines(a.weights)
    w("")
    w(f" The outcome variable is  {hlm_name(d.spec.outcome)}")
    w("")
    out += model_summary(d.spec, sym)
    if d.n_deleted:
        w("")
        w(f"Run-time deletion has reduced the number of level-1 records to {d.n} ({d.n_deleted} deleted"
          + (f", {d.units_deleted} units left with no records" if d.units_deleted else "") + ")")
    return out


def _fixed_effect_lines(a, sym: Symbols) -> list[str]:
    """The fixed effects, with model-based and then robust standard errors."""
    from ..analysis.inference import two_sided_p

    d, fx = a.design, a.fixed
    df = a.satterthwaite if a.satterthwaite is not None else fx.df
    out: list[str] = []
    w = out.append
    for robust in (False, True):
        w("")
        w("Final estimation of fixed effects" + ("" if not robust else ""))
        if robust:
            w("(with robust standard errors)")
            if getattr(a, "weights", None) is not None:
                w("(sandwich clustered on level-2 units: the standard errors to report with sampling weights)")
        if a.satterthwaite is not None:
            w("(d.f. by Satterthwaite's method, as lmerTest computes them)")
        elif getattr(a, "df_rule", "hlm") == "hlm6":
            w("(d.f. by HLM 5/6's rule: N - F for the coefficients of fixed level-1 slopes)")
        se = fx.robust_se if robust else fx.se
        t = fx.gamma / se
        p = two_sided_p(t, df)
        rows = []
        tied = set(a.extras.get("constraints", {}).get("involved", ()))  # --constrain: marked *
        for k, f in enumerate(d.fixed):
            if k == 0 or d.fixed[k - 1].q != f.q:
                rows.append([f"For {coef_label(d, f.q, sym)}"])
            mark = "*" if gamma_label(f.q, f.s, "g") in tied else ""
            rows.append([f"    {hlm_name(f.predictor)}, {sym.g(f.q, f.s)}{mark}", f"{fx.gamma[k]:.6f}", f"{se[k]:.6f}",
                         f"{t[k]:.3f}", df_text(df[k]), hlm_p(p[k])])
        out += text_table(["Fixed Effect", "Coefficient", "Standard error", "t-ratio", "Approx. d.f.", "p-value"],
                          rows, [30, 12, 14, 9, 12, 8])
        if tied:
            out += constraint_note(a.extras["constraints"], sym)
    return out


def constraint_note(record: dict, sym: Symbols, r_call: bool = False) -> list[str]:
    """Below a table of a constrained fit: which γs are tied, and that they were estimated as one;
    r_call: also that the R call printed is of the unconstrained model."""
    def name(label: str) -> str:  # g10, g100 in the output's letters (four levels' d0001 as typed)
        return sym.gamma + label[1:] if label.startswith("g") else label

    ties = []
    for e in record["eliminated"]:
        terms = " + ".join({1.0: "", -1.0: "-"}.get(c, f"{c:g}*") + name(g["gamma"]) for g in e["equals"]
                           for c in [g["coefficient"]])
        ties.append(f"{name(e['gamma'])} = {terms}".replace("+ -", "- "))
    # a γ written in several free γs is not one estimate shared: it is their combination
    how = ("estimated as one" if all(len(e["equals"]) == 1 for e in record["eliminated"])
           else "given by the free γs")
    out = [f"* constrained (--constrain): {'; '.join(ties)}; {how}, with the d.f. counted as constrained"]
    if r_call:
        out.append("  (the R call printed is of the unconstrained model; for the constrained one, sum the tied "
                   "predictors into one column)")
    return out


def _variance_component_lines(a, sym: Symbols) -> list[str]:
    """The variance components with their χ² tests, then level 1's."""
    d, r, vt = a.design, a.result, a.variance
    out = ["", "Final estimation of variance components"]
    rows = []
    sd = np.sqrt(np.clip(np.diag(r.tau), 0, None))
    for k, q in enumerate(int(q) for q in a.stats.random):
        rows.append([random_label(d, q, sym), f"{sd[k]:.5f}", f"{r.tau[k, k]:.5f}", df_text(vt.df[k]),
                     f"{vt.chi2[k]:.5f}", hlm_p(vt.p[k])])
    known = a.extras.get("known_variance")
    if known:
        rows.append([f"level-1, r (V = {known['column']})", "known", "known", "", "", ""])
    else:
        label = f"level-1, r (exp({'a' if sym.ascii else 'α'}0))" if "level1_variance" in a.extras else "level-1, r"
        rows.append([label, f"{math.sqrt(r.sigma2):.5f}", f"{r.sigma2:.5f}", "", "", ""])
    out += text_table(["Random Effect", "Standard Deviation", "Variance Component", "d.f.", sym.chi2, "p-value"],
                      rows, [26, 18, 18, 6, 12, 8])
    if vt.n_sufficient < d.n_units:
        out.append(f"Note: the {sym.chi2} statistics are based on {vt.n_sufficient} of {d.n_units} units with "
                   "sufficient data.")
    return out


def _r_call_lines(a, meta: dict) -> list[str]:
    """The same model in R: lmer's formula and its notes."""
    formula, notes = lme4_formula(a.design.spec, meta.get("id_name", "ID"))
    if getattr(a, "weights", None) is not None:
        # lmer's weights= are precision weights, not sampling weights, and this fit is pseudo-ML whatever
        # the spec asked for (pipeline.analyse_stats): "lmer(..., REML = TRUE)" would name another fit
        notes = notes[:-1] + ["lmer has no sampling weights (its weights= are precision weights): lmer(..., REML = FALSE) "
                              "gives the unweighted fit; the pseudo-likelihood fit in R is WeMix::mix"]
    hetero = a.extras.get("level1_variance")
    if hetero:
        notes = [f"lmer has one level-1 variance; the same model is glmmTMB(..., dispformula = ~ "
                 f"{' + '.join(hetero['predictors'])}, REML = {'FALSE' if a.result.method == 'ML' else 'TRUE'}), or "
                 "nlme::lme with varIdent (a dummy) or varExp (one predictor)"]
    known = a.extras.get("known_variance")
    if known:
        notes = [f"lmer cannot hold the level-1 variances at known values; with one record per unit this is "
                 f"metafor::rma(yi = {a.design.spec.outcome}, vi = {known['column']}, mods = ~ <the level-2 "
                 f"predictors>, method = \"{r_method(a)}\")"]
        if "metafor_reml_loglik" in known:
            notes.append(f"its REML log-likelihood adds ½ log|X'X|: {known['metafor_reml_loglik']:.6f} here")
    if "constraints" in a.extras:
        notes = notes + [f"--constrain {', '.join(a.extras['constraints']['restrictions'])}: not in this call; in lmer "
                         "the tied terms become one column, e.g. I(X1 + X2) for γs of X1 and X2 made equal"]
    title = "The same model in R (lme4)"
    if a.extras.get("level1_covariance", {}).get("structure", "homogeneous") != "homogeneous":
        title = "The homogeneous model in R (lme4; the structured model's nlme call is above)"
    return ["", title, f" {formula}"] + [f"   {note}" for note in notes]


def r_method(a) -> str:
    return "ML" if a.result.method == "ML" else "REML"


def fit_text(analysis, meta: dict, sym: Symbols) -> str:
    """What `hlmcli fit` prints for a two-level linear fit: HLM 7's tables."""
    a = analysis
    r = a.result
    out = _run_lines(a, meta, sym)
    w = out.append
    if "full_output" in a.extras:
        out += full_output_text(a.extras["full_output"], sym)
    w("")
    w(f"Final Results - Iteration {r.iterations}")
    w("")
    out += certificate_text(r, sym, full="full_output" in a.extras, sigma2_fixed="known_variance" in a.extras,
                            alpha="level1_variance" in a.extras)
    for note in r.boundary:
        w(note)
    w("")
    known = a.extras.get("known_variance")
    if known:  # V-known: σ² is held at 1, Var(r_ij) = V_ij
        w(f" {sym.sigma2} = 1 (not estimated: each record's level-1 variance is {known['column']}, known)")
    else:
        w(f" {sym.sigma2} = {r.sigma2:12.5f}" + (f" (exp({'a' if sym.ascii else 'α'}0): the level-1 variance where the variance predictors are 0)"
                                               if "level1_variance" in a.extras else ""))
    if a.se_sigma2 is not None:
        w("")
        w(f" Standard error of {sym.sigma2} = {a.se_sigma2:12.5f}")
    names = a.design.spec.coefficient_names()
    out += tau_lines(sym, names, [int(q) for q in a.stats.random], r.tau, a.se_tau, a.variance.reliability)
    w("")
    w(f"The value of the log-likelihood function at iteration {r.iterations} = {hlm_e(-r.deviance / 2)}")
    out += _fixed_effect_lines(a, sym)
    out += _variance_component_lines(a, sym)
    if "level1_variance" in a.extras:
        out += level1_variance_lines(a.extras["level1_variance"], sym)
    w("")
    w("Statistics for the current model")
    w(f" Deviance                       = {r.deviance:.6f}")
    w(f" Number of estimated parameters = {r.n_params}")
    aic, bic = fit_criteria(a)
    w(f" AIC = {aic:.6f}, BIC = {bic:.6f} (as lme4: every fixed effect and variance parameter counted)")
    if getattr(a, "weights", None) is not None:
        w(" (with sampling weights these are pseudo-likelihood quantities: not for likelihood-ratio tests)")
    out += extras_text(a.extras, sym)
    if "level1_covariance" in a.extras:  # HMLM: the structured model after the homogeneous one, as HLM 7
        from .report_hmlm import structured_model_lines

        out += structured_model_lines(a.extras["level1_covariance"], sym, hlm_name, hlm_p, text_table, extras_text)
    out += _r_call_lines(a, meta)
    return "\n".join(printable(line.rstrip()) for line in out) + "\n"


def level1_variance_lines(v: dict, sym: Symbols) -> list[str]:
    """HLM 7's table of the model for the level-1 variance, log σ²_ij = α0 + α1·X1 + ..., and the
    likelihood-ratio test against one σ²."""
    alpha = "a" if sym.ascii else "α"
    out = ["", f"Model for level-1 variance: log {sym.sigma2} = {alpha}0 + "
           + " + ".join(f"{alpha}{m}*{name}" for m, name in enumerate(v["predictors"], 1))]
    rows = [[f"{hlm_name(e['predictor'])}, {alpha}{m}", f"{e['estimate']:.6f}", f"{e['se']:.6f}", f"{e['z']:.3f}",
             hlm_p(e["p"])] for m, e in enumerate(v["alpha"])]
    out += text_table(["Parameter", "Coefficient", "Standard error", "Z-ratio", "p-value"], rows, [26, 12, 14, 9, 8])
    t = v["test"]
    out += ["", "Summary of Model Fit",
            f" 1. Homogeneous {sym.sigma2}    parameters = {t['params_homogeneous']:3d}   deviance = "
            f"{t['deviance_homogeneous']:.6f}",
            f" 2. Heterogeneous {sym.sigma2}  parameters = {t['params']:3d}   deviance = {t['deviance']:.6f}",
            f" Model 1 vs Model 2: {sym.chi2} statistic = {t['chi2']:.5f}, d.f. = {t['df']}, p-value = {hlm_p(t['p'])}"]
    return out


def extras_text(ex: dict, sym: Symbols) -> list[str]:
    out: list[str] = []
    w = out.append
    if "deviance_test" in ex:
        t = ex["deviance_test"]
        w("")
        w("Variance-Covariance components test")
        w(f" {sym.chi2} statistic = {t['chi2']:.6f}")
        w(f" Degrees of freedom = {t['df']}")
        w(f" p-value = {hlm_p(t['p'])}")
        if t.get("prior_version") == "hlm6" and t["prior_deviance"] != t["prior_deviance_printed"]:
            w(f" (the prior deviance {t['prior_deviance_printed']:.6f} printed by HLM 5/6 is taken as "
              f"{t['prior_deviance']:.6f}: HLM 5/6 print the ML deviance ln(2*pi) low)")
    for h in ex.get("hypothesis_tests", []):
        w("")
        w(f"Results of General Linear Hypothesis Testing: {h['label']}")
        for kind, title in (("model", "model-based"), ("robust", "robust")):
            r = h[kind]
            if r["chi2"] is None:  # a weighted fit: the sandwich test only
                continue
            w(f" {title:>12}: {sym.chi2} statistic = {r['chi2']:.6f}, d.f. = {r['df']}, p-value = {hlm_p(r['p'])}")
        if str(h.get("covariance", "")).startswith("robust"):
            w(" (sampling weights: the test uses the robust covariance only; the model-based one ignores the weights' information)")
        elif h.get("covariance"):
            w(f" ({h['covariance']})")
    if "constraint_test" in ex:
        t = ex["constraint_test"]
        w("")
        w(f"Likelihood-ratio test of the constraints ({', '.join(ex['constraints']['restrictions'])})")
        if t["chi2"] is None:
            w(f" {t['note']}")
        else:
            if t.get("refitted_ml"):
                w(" (both models refitted by ML: REML deviances of different fixed effects are not comparable)")
            w(f" Deviance constrained = {t['deviance_constrained']:.6f} ({t['params_constrained']} parameters), "
              f"unconstrained = {t['deviance_unconstrained']:.6f} ({t['params_unconstrained']})")
            w(f" {sym.chi2} statistic = {t['chi2']:.6f}, d.f. = {t['df']}, p-value = {hlm_p(t['p'])}")
    if "homogeneity" in ex:
        t = ex["homogeneity"]
        w("")
        w("Test of homogeneity of level-1 variance")
        w(f" {sym.chi2} statistic = {t['H']:.5f}")
        w(f" Number of degrees of freedom = {t['df']}")
        w(f" P-value = {hlm_p(t['p'])}")
        w(f" ({t['units_used']} units with n_j > number of level-1 coefficients and an estimable level-1 regression"
          + (f"; {t['units_left_out']} units left out" if t.get("units_left_out") else "") + ")")
    if "icc" in ex:
        w("")
        w(f"Intraclass correlation {sym.tau}00 / ({sym.tau}00 + {sym.sigma2}) = {ex['icc']:.3f}")
    if ex.get("plausible_ranges"):
        w("")
        w("95% plausible value ranges (γ ± 1.96·√τ)" if not sym.ascii else "95% plausible value ranges (G +/- 1.96*sqrt(tau))")
        for r in ex["plausible_ranges"]:
            where = " (units with all level-2 predictors at zero)" if r["at_zero_level2_predictors"] else ""
            w(f" {hlm_name(r['coefficient'])}: {r['low']:.3f} to {r['high']:.3f}{where}")
    if "emulation" in ex:
        from .emulation_report import emulation_lines

        out += emulation_lines(ex["emulation"], sym)
    return out


def full_output_text(full: dict, sym: Symbols) -> list[str]:
    out: list[str] = [""]
    w = out.append
    w(f"Level-1 OLS regressions (first {len(full['ols_units'])} units whose OLS can be computed)")
    for u in full["ols_units"]:
        w("")
        w(f" Level-1 OLS regression for level-2 unit {u['unit']} (n = {u['n']})")
        if not u["ok"]:
            w("  not computable: too few records or collinear predictors in this unit")
            continue
        w(f"  Residual variance = {u['residual_variance']:.5f}")
        for name, b in u["coefficients"].items():
            w(f"  {name:>12} {b:12.5f}")
    w("")
    w("The OLS regression of the outcome on the fixed-effect columns (ignoring the nesting)")
    for g in full["gamma_ols"]:
        w(f"  For {g['coefficient']:>10}, {g['predictor']:>10} {g['estimate']:12.6f} {g['se']:10.6f}")
    w("")
    w(f"Least Squares Estimates (from the {full['units_with_ols']} units with an OLS fit)")
    w(f" {sym.sigma2} = {full['sigma2_least_squares']:.5f}")
    w(f" {sym.tau} =")
    for row in full["tau_least_squares"]:
        w("  " + " ".join(f"{v:12.5f}" for v in row))
    return out


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """Names from data files shown on a terminal: control characters (escape sequences) as \\xNN."""
    return str(text).translate(_CONTROL)
