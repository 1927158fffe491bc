"""The report layer's writers of what a `Results` shows (views.py says why they are installed rather
than imported). Each imports its module when first called, so `import hlmcli` stays light."""

from __future__ import annotations

import sys

from ..views import install


def fit_document(analysis, meta: dict, hglm: bool) -> dict:
    """The JSON document of a two-level fit, linear (report.fit_json) or HGLM (report_hglm.hglm_json)."""
    from .report import fit_json, json_safe

    if hglm and getattr(analysis.spec.options, "family", None) == "multinomial":
        from .report_multinomial import multinomial_json

        return json_safe(multinomial_json(analysis, meta))
    if hglm:
        from .report_hglm import hglm_json

        return json_safe(hglm_json(analysis, meta))
    return json_safe(fit_json(analysis, meta))


def fit_text(analysis, meta: dict, ascii: bool, hglm: bool) -> str:
    """What `hlmcli fit` prints for a two-level fit."""
    from .report import Symbols, fit_text as linear_text

    if hglm and getattr(analysis.spec.options, "family", None) == "multinomial":
        from .report_multinomial import multinomial_text

        return multinomial_text(analysis, meta, Symbols(ascii))
    if hglm:
        from .report_hglm import hglm_text

        return hglm_text(analysis, meta, Symbols(ascii))
    return linear_text(analysis, meta, Symbols(ascii))


def levels_document(analysis, meta: dict) -> dict:
    """The JSON document of a fit of three levels (schema 3) or four (schema 4), with its extras."""
    from .report import json_safe
    from .report_levels import fit_json, fit_json3

    a = analysis
    if getattr(a, "hglm", None) is not None:  # a three-level HGLM (report_hglm_levels.py)
        from .report_hglm_levels import hglm_json3

        doc = hglm_json3(a.design, a.fit, meta, a.hglm)
    else:
        doc = fit_json3(a.design, a.fit, meta) if a.n_levels == 3 else fit_json(a.design, a.fit, meta)
    doc.update(a.extras)
    return json_safe(doc)


def levels_text(analysis, meta: dict, ascii: bool) -> str:
    """What `hlmcli fit` prints for a fit of three levels (HLM3's tables) or four (HLM4's), with its extras."""
    from .report import Symbols, extras_text, printable
    from .report_levels import Symbols3, SymbolsLevels, fit_text as levels_fit_text, fit_text3

    a = analysis
    if "constraints" in a.extras:  # --constrain: the tied γs' positions, marked * in the tables
        from ..analysis.constrained import spec_gamma_labels

        involved = set(a.extras["constraints"]["involved"])
        meta = {**meta, "tied": {k for k, name in enumerate(spec_gamma_labels(a.design.spec)) if name in involved}}
    if getattr(a, "hglm", None) is not None:
        from .report_hglm_levels import hglm_text3

        text = hglm_text3(a.design, a.fit, meta, Symbols3(ascii), a.hglm)
    elif a.n_levels == 3:
        text = fit_text3(a.design, a.fit, meta, Symbols3(ascii))
    else:
        text = levels_fit_text(a.design, a.fit, meta, SymbolsLevels(ascii))
    extra = extras_text(a.extras, Symbols(ascii)) if a.extras else []
    if "constraints" in a.extras:  # --constrain: which γs are tied, after the tables
        from .report import constraint_note

        extra = ["", *constraint_note(a.extras["constraints"], Symbols(ascii), r_call=True)] + extra
    if "level1_covariance" in a.extras:  # HMLM2: the structured model after the homogeneous HLM3 one
        from .report import hlm_name, hlm_p, text_table
        from .report_hmlm import structured_model_lines

        extra += structured_model_lines(a.extras["level1_covariance"], Symbols(ascii), hlm_name, hlm_p, text_table,
                                        extras_text)
    return text + ("\n".join(printable(line) for line in extra) + "\n" if extra else "")


def dumps_json(doc: dict) -> str:
    from .report import dumps_json as dumps

    return dumps(doc)


def fixed_names(fit: dict) -> list[tuple[str, str]]:
    from .terms import fixed_names as names

    return names(fit)


def random_names(fit: dict) -> list[tuple[str, str]]:
    from .terms import random_names as names

    return names(fit)


def information_criteria(fit: dict) -> tuple[int, float, float]:
    from .tables import information_criteria as criteria

    return criteria(fit)


def se_kind(fit: dict, se: str = "auto") -> str:
    from .tables import se_kind as kind

    return kind(fit, se)


def tidy(fit: dict, conf_level: float, se: str):
    from .tables import tidy as tidy_frame

    return tidy_frame(fit, conf_level, se)


def glance(fit: dict) -> dict:
    from .tables import glance as glance_row

    return glance_row(fit)


def table(fit: dict, fmt: str, options, given: dict) -> str:
    """tables.fit_table, with `options` (a TableOptions) or else TableOptions(**given)."""
    from .tables import TableOptions, fit_table

    if options is None:
        options = TableOptions(**{k: tuple(v) if k == "notes" else v for k, v in given.items()})
    return fit_table(fit, fmt, options)


def plot(results, kind: str, path, **options):
    from .plots import plot as draw

    return draw(results, kind, path, **options)


def plot_levels(results, kind: str, path, **options):
    from .plots import plot_levels as draw

    return draw(results, kind, path, **options)


def crossed_document(analysis, meta: dict) -> dict:
    """The JSON document of a cross-classified fit (crossed_report.to_json, schema crossed-2.json)."""
    from .crossed_report import to_json
    from .report import json_safe

    return json_safe(to_json(analysis, meta))


def crossed_text(analysis, meta: dict) -> str:
    from .crossed_report import text

    return text(analysis, meta)


def crossed_view(doc: dict) -> dict:
    from .crossed_report import crossed_view as view

    return view(doc)


def plot_crossed(results, kind: str, path, **options):
    from .plots import plot_crossed as draw

    return draw(results, kind, path, **options)


install(sys.modules[__name__])
