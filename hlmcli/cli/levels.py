"""The commands for models of three and more levels behind cli.py: `mdm build L1 L2 L3 [L4]`, `mdm info`,
`model` and `fit` on three or four files or an archive of three or four levels. cli.py decides which
path a command takes and calls in here; the archive, design and engine are the K-level ones
(archive_levels.py, design_levels.py, nested.py, nested_fit.py); the language and the report keep
HLM3's forms at three levels (equations_levels.py, report_levels.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import ModelError
from ..data.levels_load import LevelsUsage, archive_n_levels, load_levels, spec_levels, summarised_level1
from ..spec import Engine
from .options import formula_equations


def is_three_level(data, more: dict) -> bool:
    """Three data files, or one archive whose header says three levels; -3 or --id3 alone do not decide."""
    if len(data) == 3:
        return True
    if len(data) == 1 and str(data[0]) != "-" and Path(data[0]).is_file():
        from ..io.archive import peek_levels

        return peek_levels(data[0]) == 3
    if len(data) == 2 and (more.get("level3") or more.get("id3")):
        raise LevelsUsage("a three-level model needs three data files (level 1, 2 and 3) or a three-level archive")
    return False


def _refuse_family(K: int) -> None:
    """`hlmcli model` of three or four levels with HGLM options: the capabilities table's refusal."""
    from ..api import fit_options
    from ..capabilities import refuse_family

    given = {k: v for k, v in click.get_current_context().meta.get("hglm", {}).items() if v is not None}
    if given:
        refuse_family(K, fit_options(**given))


def model3(data, level1, level2, model_file, ascii_only, build_opts, cache_dir, more, stderr, use_ascii):
    from ..report.report import printable
    from ..report.report_levels import Symbols3, lme4_formula3, model_summary

    _refuse_family(3)
    archive, _ = load_levels(data, build_opts, cache_dir, lambda m: stderr(f"hlmcli: warning: {m}"), 3)
    equations = [[level1] if level1 else [], list(level2), list(more.get("level3") or ())]
    spec = spec_levels(archive, equations, model_file, more.get("reml"), allow_outside=bool(more.get("allow_outside")),
                       formula_equations=formula_equations)
    lines = model_summary(spec, Symbols3(use_ascii(ascii_only)))
    formula, notes = lme4_formula3(spec, *archive.id_names)
    method = "restricted maximum likelihood" if spec.method == "REML" else "full maximum likelihood"
    lines += ["", f"Method of estimation: {method}", "", "The same model in R (lme4)", f" {formula}"] + [f"   {n}" for n in notes]
    click.echo("\n".join(printable(line) for line in lines))


def _model_given(*args):
    from .options import model_given

    return model_given(*args)


def _combined(archive, source_text, design, design_of, data, build_opts, cache_dir, warn, load, wspec, plausible_values,
              imputed, more, spec, meta, fit_doc, fit_txt, model_lines, sigma2_symbol, out_format, full_output, residuals):
    """--plausible-values / --imputed at three or more levels (levels_combined.run_combined): an imputed
    data set is a level-1 file in place of the first (or an archive in place of the archive)."""
    from ..analysis.levels_combined import run_combined
    from ..report.report import dumps_json
    from ..report.report_combined import combined_text_levels

    if any(residuals):
        raise LevelsUsage("residual files are not available for combined fits (each fit has its own EB residuals); fit "
                          "one plausible value or data set at a time for those")

    def load_one(path):
        return load((path,) if len(data) == 1 else (path,) + tuple(data[1:]), build_opts, cache_dir, warn)

    texts_wanted = bool(full_output) and out_format != "json"
    doc, texts, meta = run_combined(archive, source_text, design, design_of, load_one, wspec, plausible_values,
                                    imputed, bool(more.get("allow_unequal_imputations")), spec.method == "REML",
                                    spec.options.max_iterations, meta, fit_doc, fit_txt if texts_wanted else None)
    json_text = dumps_json(doc)
    text = json_text if out_format == "json" else \
        combined_text_levels(doc, model_lines, meta.get("weighting_lines", []), sigma2_symbol, texts)
    failures = [] if doc["converged"] else ["the optimum of at least one fit is not certified"]
    return text, json_text, failures


def _finish_combined(text, json_text, output, json_out, write_files: bool, quiet: bool, failures: list, strict: bool,
            boundary, status: int, stderr) -> None:
    """The end of a three- or four-level fit: the files only when the fit is certified (or
    --keep-failed-output), the text on stdout otherwise, the warnings unless -q, the exit status."""
    from ..io.files import atomic_write_text

    if json_out and write_files:
        atomic_write_text(json_out, json_text)
    if output and write_files:
        atomic_write_text(output, text)
    elif not output:
        click.echo(text, nl=False)
    if not quiet:
        for message in failures + ([] if strict else list(boundary or [])):
            stderr(f"hlmcli: warning: {message}")
        if output and not write_files:
            stderr(f"hlmcli: {output} not written because the fit is not certified; "
                   "pass --keep-failed-output to write it anyway")
    if status:
        sys.exit(status)


# ---------------------------------------------------------------- four levels


def is_many_levels(data, more: dict) -> bool:
    """Four data files, or one archive whose header says four or more levels; -4 or --id4 alone do not decide."""
    many = len(data) >= 4 or (len(data) == 1 and str(data[0]) != "-" and Path(data[0]).is_file()
                               and archive_n_levels(data[0]) >= 4)
    if many and click.get_current_context().meta.get("formula") is not None:
        raise LevelsUsage("--formula is not available for four-level models yet; give the model as -1 ... -4 equations")
    if many:
        return True
    if more.get("level4") or more.get("id4") or more.get("residuals_l4"):
        raise LevelsUsage("a four-level model needs four data files (level 1, 2, 3 and 4) or a four-level archive")
    return False


def _equations(level1, level2, more, K):
    given = [[level1] if level1 else [], list(level2), list(more.get("level3") or ()), list(more.get("level4") or ())]
    if K > 4:
        raise ModelError(f"the archive has {K} levels; hlmcli reads equations for up to four levels (-1 ... -4)")
    return given[:K]


def model_levels(data, level1, level2, model_file, ascii_only, build_opts, cache_dir, more, stderr, use_ascii):
    from ..report.report import printable
    from ..report.report_levels import SymbolsLevels, lme4_formula, lme4_notes, model_summary

    _refuse_family(4)
    archive, _ = load_levels(data, build_opts, cache_dir, lambda m: stderr(f"hlmcli: warning: {m}"))
    spec = spec_levels(archive, _equations(level1, level2, more, archive.n_levels), model_file, more.get("reml"))
    lines = model_summary(spec, SymbolsLevels(use_ascii(ascii_only)))
    method = "restricted maximum likelihood" if spec.method == "REML" else "full maximum likelihood"
    lines += ["", f"Method of estimation: {method}", "", "The same model in R (lme4)",
              f" {lme4_formula(spec, archive.id_names)}"] + [f"   {n}" for n in lme4_notes(spec, archive.id_names)]
    click.echo("\n".join(printable(line) for line in lines))


def levels_results(data, model: dict, fit, out, build_opts: dict, cache_dir, stderr):
    """The archive, spec, capabilities.check and certified fit of a model of three or four levels, as
    `Results` (what `fit` and `plot` share). Returns (results, sources, source text, equations)."""
    from ..api import analyse_levels, model_spec_levels
    from ..capabilities import check as check_capabilities
    from ..io.files import check_outputs
    from ..results import Results

    model_file = model.get("model_file")
    sources = list(data) + [model_file]
    check_outputs([("-o", out.output), ("--json-out", out.json_out), ("--residuals-l1", out.residuals_l1),
                   ("--residuals-l2", out.residuals_l2), ("--residuals-l3", out.residuals_l3),
                   ("--residuals-l4", out.residuals_l4)], sources)
    warn = (lambda m: None) if out.quiet else (lambda m: stderr(f"hlmcli: warning: {m}"))
    three = len(data) == 3 or (len(data) == 1 and archive_n_levels(data[0]) == 3)
    level1_file = None
    if Engine(fit.engine) != Engine.MEMORY:
        from ..analysis.engines_levels import load_summarised
        from ..capabilities import refuse_summarised
        from ..data.streaming import progress_wanted

        if build_opts.get("missing") == "now":  # before any data are read
            refuse_summarised("missing_now", 3 if three else len(data), fit.engine)
        archive, source_text, level1_file = load_summarised(data, build_opts, fit, warn, 3 if three else len(data),
                                                            progress_wanted(out.quiet))
    else:
        archive, source_text = load_levels(data, build_opts, cache_dir, warn, 3 if three else None)
    K = archive.n_levels
    if out.residuals_l4 and K < 4:
        raise LevelsUsage("--residuals-l4 is for four-level models: give four data files or a four-level archive")
    equations = [[model["level1"]] if model.get("level1") else [], list(model.get("level2") or ()),
                 list(model.get("level3") or ()), list(model.get("level4") or ())]
    residuals = {k: getattr(out, f"residuals_l{k}") for k in (2, 3, 4)}
    spec = model_spec_levels(archive, equations[:K], model_file, fit, bool(model.get("allow_outside")),
                             title=out.title, residuals=residuals, formula_equations=formula_equations)
    check_capabilities(spec, fit, out, fit.engine)
    analysis = analyse_levels(spec, archive, fit, summarised_level1(archive, spec, level1_file, warn))
    results = Results(analysis, archive, {"data_source": source_text, "title": spec.options.title,
                                          "ids": list(archive.id_names),
                                          "source_files": tuple(map(str, data)) if len(data) > 1 else None})
    return results, sources, source_text, equations[:K]


def fit_levels(data, model: dict, fit, out, build_opts: dict, cache_dir, stderr, use_ascii, finish) -> None:
    """`hlmcli fit` of a model of three or four levels: `levels_results`, then the one ending of every
    fit, `finish` (cli.finish, passed in so that this module stays below cli.py). `model` holds the
    equations (level1 ... level4), model_file and allow_outside."""
    if fit.plausible_values or fit.imputed:
        return fit_levels_combined(data, model, fit, out, build_opts, cache_dir, stderr, use_ascii)
    results, sources, source_text, equations = levels_results(data, model, fit, out, build_opts, cache_dir, stderr)
    finish(results, out, sources, source_text=source_text, level1=model.get("level1"), level2=equations[1],
           model_file=model.get("model_file"), higher=equations[2:])


def fit_levels_combined(data, model: dict, fit, out, build_opts: dict, cache_dir, stderr, use_ascii) -> None:
    """--plausible-values or --imputed at three or four levels: the same data, spec and capabilities.check
    as `levels_results`, then one fit per plausible value or data set combined by Rubin's rules
    (levels_combined.run_combined), written only when every fit is certified."""
    from dataclasses import replace
    from datetime import datetime, timezone
    from functools import partial

    from ..api import levels_weight_spec, model_spec_levels
    from ..capabilities import check as check_capabilities
    from ..errors import EXIT_NOT_CONVERGED
    from ..io.files import check_outputs

    model_file = model.get("model_file")
    check_outputs([("-o", out.output), ("--json-out", out.json_out)], list(data) + [model_file])
    if Engine(fit.engine) != Engine.MEMORY:  # before any reading; the refusal and its reason are capabilities'
        from ..capabilities import refuse

        refuse("plausible_values", "linear-summary")
    warn = (lambda m: None) if out.quiet else (lambda m: stderr(f"hlmcli: warning: {m}"))
    three = len(data) == 3 or (len(data) == 1 and archive_n_levels(data[0]) == 3)
    # an imputed archive in place of a three-level archive must have three levels too
    load = partial(load_levels, n_levels=3 if three else None)
    archive, source_text = load(data, build_opts, cache_dir, warn)
    K = archive.n_levels
    equations = [[model["level1"]] if model.get("level1") else [], list(model.get("level2") or ()),
                 list(model.get("level3") or ()), list(model.get("level4") or ())][:K]
    spec = model_spec_levels(archive, equations, model_file, fit, bool(model.get("allow_outside")), title=out.title,
                             residuals={k: getattr(out, f"residuals_l{k}") for k in (2, 3, 4)},
                             formula_equations=formula_equations)
    # --full-output of combined fits prints each fit's own tables (not HLM2's unit regressions)
    check_capabilities(spec, replace(fit, full_output=None), out, fit.engine)
    laplace3 = (K == 3 and fit.family is not None and fit.family.value != "normal"
                and fit.estimation is not None and fit.estimation.value in ("laplace", "agq"))
    if (fit.tests and not laplace3) or fit.compare_deviance is not None:  # three-level Laplace, AGQ fits: D1
        raise LevelsUsage("--test and --compare-deviance are not combined over plausible values or imputed data "
                          "sets at three or more levels yet; fit one data set at a time for those")
    if fit.tau == "diagonal" or fit.df_method == "satterthwaite":
        raise LevelsUsage("--tau diagonal and --df satterthwaite are not combined over plausible values or "
                          "imputed data sets at three or more levels yet (Rubin's d.f. would need each fit's); "
                          "fit one data set at a time for those")
    wspec = levels_weight_spec(K, fit)
    ascii_text = use_ascii(out.ascii_only) if not out.output else out.ascii_only
    if three:
        from ..data.design_levels import design3
        from ..report.report_levels import Symbols3, fit_json3, fit_text3, model_summary

        sym = Symbols3(ascii_text)
        design = design3(spec, archive)
        design_of, fit_doc = (lambda a: design3(spec, a)), fit_json3
        fit_txt, lines = (lambda d, f, m: fit_text3(d, f, m, sym)), model_summary(spec, sym)
        meta = {"data_source": source_text, "title": spec.options.title, "id2": archive.id_names[0],
                "id3": archive.id_names[1], "model_given": _model_given(model.get("level1"), equations[1], model_file,
                                                                       equations[2]),
                "command_file": Path(model_file).name if model_file and str(model_file).lower().endswith(".hlm")
                else None}
    else:
        from ..data.design_levels import design_levels
        from ..report.report_levels import SymbolsLevels, fit_json, fit_text, model_summary

        sym = SymbolsLevels(ascii_text)
        design = design_levels(spec, archive)
        design_of, fit_doc = (lambda a: design_levels(spec, a)), fit_json
        fit_txt, lines = (lambda d, f, m: fit_text(d, f, m, sym)), model_summary(spec, sym)
        meta = {"data_source": source_text, "title": spec.options.title, "ids": list(archive.id_names),
                "model_given": {"level1": model.get("level1"), "level2": equations[1], "level3": equations[2],
                                "level4": equations[3], "model_file": Path(model_file).name if model_file else None}}
    if out.timestamp:
        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    residuals = tuple(getattr(out, f"residuals_l{k}") for k in range(1, K + 1))
    if three and fit.family is not None and fit.family.value != "normal":
        return _finish_hglm_combined(archive, source_text, spec, fit, out, data, build_opts, cache_dir, warn, load,
                                     model, meta, lines, sym, residuals, stderr)
    text, json_text, failures = _combined(
        archive, source_text, design, design_of, data, build_opts, cache_dir, warn, load, wspec, fit.plausible_values,
        fit.imputed, {"allow_unequal_imputations": model.get("allow_unequal_imputations")}, spec, meta, fit_doc,
        fit_txt, lines, sym.sigma2, out.out_format, fit.full_output, residuals)
    status = EXIT_NOT_CONVERGED if failures else 0
    _finish_combined(text, json_text, out.output, out.json_out, status == 0 or out.keep_failed_output, out.quiet,
                     failures, out.strict, [], status, stderr)


def _finish_hglm_combined(archive, source_text, spec, fit, out, data, build_opts, cache_dir, warn, load, model, meta,
                          model_lines, sym, residuals, stderr) -> None:
    """--plausible-values or --imputed of a three-level HGLM (PQL, Laplace or AGQ): hglm_levels.run_combined_hglm_levels,
    the combined text and JSON, and the same ending as the linear combined fits."""
    from ..analysis.hglm_levels import run_combined_hglm_levels, sampling_weights as hglm_weights
    from ..data.weights import levels_weighting_lines
    from ..errors import EXIT_NOT_CONVERGED
    from ..report.report import dumps_json
    from ..report.report_combined import combined_text_levels
    from types import SimpleNamespace

    from ..report.report_hglm_levels import agq_points_line, estimation_line, hglm_json3, hglm_text3, level1_link_lines

    if any(residuals):
        raise LevelsUsage("residual files are not available for combined fits (each fit has its own EB residuals); fit "
                          "one plausible value or data set at a time for those")

    def load_one(path):
        return load((path,) if len(data) == 1 else (path,) + tuple(data[1:]), build_opts, cache_dir, warn)

    texts_wanted = bool(fit.full_output) and out.out_format != "json"
    doc, texts = run_combined_hglm_levels(
        spec, archive, fit, source_text, load_one, fit.plausible_values, fit.imputed,
        bool(model.get("allow_unequal_imputations")), meta, hglm_json3,
        (lambda d, f, m, h: hglm_text3(d, f, m, sym, h)) if texts_wanted else None, tests=fit.tests)
    json_text = dumps_json(doc)
    h = SimpleNamespace(**doc["hglm"], reml=doc["hglm"]["pql"] == "restricted", nodes=doc["hglm"].get("quadrature_points"))
    weighting = levels_weighting_lines(hglm_weights(spec, archive, fit)) if doc.get("weights") else []
    if h.estimation == "agq":
        weighting = [agq_points_line(doc["hglm"])] + weighting
    text = json_text if out.out_format == "json" else combined_text_levels(
        doc, level1_link_lines(model_lines, spec.outcome, h, sym), weighting, sym.sigma2, texts,
        kind="hierarchical generalized linear models", method=estimation_line(h))
    failures = [] if doc["converged"] else [f"at least one {'Laplace' if h.estimation == 'laplace' else 'AGQ'} fit "
                                            "is not at a certified optimum" if h.estimation in ("laplace", "agq") else
                                            "at least one PQL fit is not at a checked fixed point"]
    status = EXIT_NOT_CONVERGED if failures else 0
    _finish_combined(text, json_text, out.output, out.json_out, status == 0 or out.keep_failed_output, out.quiet,
                     failures, out.strict, [], status, stderr)


# ---------------------------------------------------------------- --engine stream/dask (engines_levels.py)


