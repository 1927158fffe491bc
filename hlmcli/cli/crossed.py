"""`hlmcli fit DATA --formula 'Y ~ X + (1 | A) + (1 | B)'` when the grouping factors are crossed: one
data file holding every column (or HLM 7's HCM2 layout, LEVEL1 ROWS COLS with --row-id and --col-id),
the cross-classified engine, a `Results` (results.CrossedResults) printed as HCM2's tables, the JSON
document or a paper table (--format csv|markdown|latex|html).

Residual files: --residuals-l1 one row per record; --residuals-l2 the first (row) factor's groups,
--residuals-l3 the second (column) factor's, --residuals-l4 the third's (HCM2's row and column files),
each with the EB estimates and their posterior variances; --keep carries data columns into them.
The options a cross-classified fit does not take are refused in one line with the capabilities
table's reason (capabilities.py, column "cross-classified linear")."""

from __future__ import annotations

import sys

from ..errors import EXIT_NOT_CONVERGED, ModelError, RefusedOption, UsageError

# options a cross-classified fit reads; every other typed option is refused below
_TAKEN = {"--formula", "--ml", "--reml", "--max-iterations", "--quiet", "--title", "--format", "--output",
          "--json-out", "--keep-failed-output", "--tau", "--delimiter", "--data-format", "--no-follow", "--row-id",
          "--col-id", "--test", "--constrain", "--compare-deviance", "--compare-params", "--residuals-l1", "--residuals-l2",
          "--residuals-l3", "--residuals-l4", "--keep", "--df", "--timestamp", "--caption", "--stars", "--notes",
          "--se", "--conf-level", "--plausible-values", "--imputed", "--allow-unequal-imputations"}
# the capabilities table's feature for a typed option
_FEATURE = {"--test": "test", "--constrain": "constrain", "--known-variance": "known_variance", "--level1-variance": "level1_variance", "--level1-covariance": "level1_covariance", "--occasion": "level1_covariance", "--compare-deviance": "compare_deviance", "--compare-params": "compare_deviance",
            "--residuals-l1": "residuals", "--residuals-l2": "residuals", "--residuals-l3": "residuals",
            "--residuals-l4": "residuals", "--keep": "keep", "--df": "satterthwaite",
            "--test-homogeneity": "homogeneity", "--full-output": "full_output", "--ols-units": "full_output",
            "--weight1": "weights", "--weight2": "weights", "--weight3": "weights", "--weight4": "weights",
            "--normalize": "weights", "--missing": "missing_now", "--engine": "stream_dask", "--scheduler": "stream_dask",
            "--emulate": "emulate"}
_HGLM = ("--family", "--trials", "--exposure", "--overdispersion", "--estimation", "--quadrature-points",
         "--separation", "--link")
_RESIDUALS = ("residuals_l2", "residuals_l3", "residuals_l4")


def refuse_options(given: set[str], out_format: str, df_method: str | None = None) -> None:
    from ..capabilities import refuse

    for option in sorted(given):
        if option in _HGLM:
            raise RefusedOption(f"{option}: not available for a cross-classified fit: hlmcli fits crossed factors for "
                             "normal outcomes; an HGLM over crossed factors needs the Laplace or AGQ likelihood over "
                             "the crossed blocks, which is not built (lme4's glmer fits it)")
        if option in _FEATURE:
            refuse(_FEATURE[option], "crossed")
        if option not in _TAKEN:
            raise UsageError(f"{option}: not available for a cross-classified fit (it takes --ml/--reml, "
                             "--max-iterations, --tau, --df satterthwaite, --test, --compare-deviance, the residual "
                             "files with --keep, --title, --format, -o, --json-out, -q)")
    if "--df" in given:
        df = str(getattr(df_method, "value", df_method))
        if df == "hlm6":
            refuse("df_hlm6", "crossed")
        if df != "satterthwaite":
            raise RefusedOption(f"--df {df}: HLM 7's d.f. rule for HCM2's fixed effects is not published, so a "
                             "cross-classified fit has Satterthwaite's d.f. only (--df satterthwaite, as lmerTest); "
                             "without --df it prints t-ratios without d.f. or p-values")


def _residual_paths(out, n_factors: int, factors) -> dict:
    """{factor: path} of the factor files asked for (-l2 the first factor, -l3 the second, -l4 the third)."""
    paths = {}
    for k, option in enumerate(_RESIDUALS):
        path = getattr(out, option, None)
        if not path:
            continue
        if k >= n_factors:
            raise UsageError(f"--residuals-l{k + 2}: this model has {n_factors} grouping factor"
                             f"{'s' if n_factors > 1 else ''} ({', '.join(factors)}); --residuals-l2 is the first "
                             f"factor's file, --residuals-l3 the second's, --residuals-l4 the third's")
        paths[factors[k]] = path
    return paths


def hcm2_request(data, model: dict, more: dict, formula: str | None):
    """HCM2's equations (-1 and -2 with --row-id/--col-id, or with a cross-classified archive, whose
    header names the factors) as one HCM2Model, whose lme4 formula is then fitted as any other; None
    when the command is not in HCM2's notation."""
    from ..io.archive_crossed import is_crossed_archive, load_crossed_archive

    archive = len(data) == 1 and is_crossed_archive(data[0])
    row, col = more.get("row_id"), more.get("col_id")
    if formula or not (archive or row or col):
        return None
    if not model.get("level1"):
        if archive:
            raise UsageError(f"{data[0]} is a cross-classified (HCM2) archive: give the model as HCM2's equations "
                             "(-1 'Y = p0 + p1*(X) + e' -2 'p0 = theta0 + b00 + c00') or as --formula")
        return None
    if model.get("level3") or model.get("level4") or model.get("model_file"):
        raise UsageError("HCM2's equations are a level-1 equation (-1) and level-2 equations (-2), one per p; "
                         "-3, -4 and model files are for nested models")
    if archive:
        a = load_crossed_archive(data[0])
        for given, stored, option in ((row, a.row_id, "--row-id"), (col, a.col_id, "--col-id")):
            if given and given.lower() != stored.lower():
                raise UsageError(f"{option} {given}: the archive {data[0]} was built with {option} {stored}; drop "
                                 f"{option} or rebuild the archive")
        row, col = a.row_id, a.col_id
    if not (row and col):
        raise UsageError("HCM2's equations need both factors: give --row-id and --col-id (the id columns of the "
                         "row and column factors)")
    from ..language.hcm2 import read_hcm2  # here: nested models never read HCM2's notation

    try:
        return read_hcm2(model["level1"], list(model.get("level2") or ()), row, col)
    except ModelError as exc:
        if archive:  # nested equations typed for HCM2's archive: say what the archive is
            raise ModelError(f"{data[0]} is a cross-classified (HCM2) archive, written in HCM2's equations: {exc}") \
                from None
        raise


def fit_crossed_command(data, formula: str, model, fit, out, build: dict, given: set[str], echo, stderr,
                        hcm2=None) -> None:
    """The whole command for a crossed formula (or HCM2's equations, `hcm2`, read into it): read, fit,
    print or write, exit 3 when not certified."""
    from ..analysis.crossed_run import analyse_crossed
    from ..io.archive_crossed import is_crossed_archive, load_crossed_archive
    from ..io.files import atomic_write_text, check_outputs, output_transaction
    from ..io.readers import read_table
    from ..language.formula import diagonal_bars
    from ..results import CrossedResults

    refuse_options(given - ({"--level1", "--level2"} if hcm2 is not None else set()), "text", fit.df_method)
    row_id, col_id = build.get("row_id"), build.get("col_id")
    archive = load_crossed_archive(data[0]) if len(data) == 1 and is_crossed_archive(data[0]) else None
    if archive is not None:  # HCM2's archive: its factors are the formula's row and column factors
        factors = {f.lower() for bar in model.bars for f in bar.factor}
        if not {archive.row_id.lower(), archive.col_id.lower()} <= factors:
            raise UsageError(f"{data[0]} crosses {archive.row_id} (rows) with {archive.col_id} (columns): give each a "
                             f"random term, (… | {archive.row_id}) + (… | {archive.col_id})")
    elif len(data) == 3:  # HLM 7's HCM2 layout: LEVEL1 ROWS COLS
        if not (row_id and col_id):
            raise UsageError("three data files are HCM2's layout (level-1, row and column files): give --row-id and "
                             "--col-id, the id columns that link them")
        factors = {name for bar in model.bars for name in bar.factor}
        if not {row_id.lower(), col_id.lower()} <= {f.lower() for f in factors}:
            raise UsageError(f"--row-id {row_id} and --col-id {col_id} must be the formula's grouping factors "
                             f"({', '.join(sorted(factors))}); write (… | {row_id}) + (… | {col_id})")
    elif len(data) != 1:
        raise UsageError(f"a cross-classified model (crossed grouping factors) reads one data file holding the "
                         f"outcome, the predictors and the grouping factors ({', '.join(model.columns)}), or HCM2's "
                         f"three (level-1, row and column files with --row-id and --col-id); got {len(data)} files")
    if fit.tau is not None and str(getattr(fit.tau, "value", fit.tau)) == "diagonal":
        model = diagonal_bars(model)
    factor_names = list(dict.fromkeys(bar.name for bar in model.bars))  # a factor split by || is one file
    factor_files = _residual_paths(out, len(factor_names), factor_names)
    if out.keep and not (out.residuals_l1 or factor_files):
        raise UsageError("--keep names the data columns to carry into the residual files: give --residuals-l1, "
                         "--residuals-l2 or --residuals-l3 too")
    check_outputs([("-o", out.output), ("--json-out", out.json_out), ("--residuals-l1", out.residuals_l1)]
                  + [(f"--residuals-l{k + 2}", getattr(out, o)) for k, o in enumerate(_RESIDUALS)], list(data))
    ids = tuple(name for bar in model.bars for name in bar.factor) + tuple(x for x in (row_id, col_id) if x)
    tables = [] if archive is not None else \
        [read_table(path, build.get("file_format"), build.get("delimiter"), string_columns=ids) for path in data]
    if archive is not None:
        table = archive.table()
    elif len(tables) == 3:
        from ..data.crossed_design import merge_crossed

        table = merge_crossed(*tables, row_id, col_id)
    else:
        table = tables[0]
    if hcm2 is not None:
        from ..data.crossed_design import check_hcm2_predictors

        check_hcm2_predictors(table, hcm2)
    method = getattr(fit.method, "value", fit.method) or "REML"
    df = "satterthwaite" if "--df" in given else "none"
    if fit.plausible_values or fit.imputed:
        def read_more(path):  # one further data set, in the layout of the first
            if archive is not None:
                return load_crossed_archive(path).table()
            more = read_table(path, build.get("file_format"), build.get("delimiter"), string_columns=ids)
            if len(tables) == 3:
                from ..data.crossed_design import merge_crossed

                return merge_crossed(more, tables[1], tables[2], row_id, col_id)
            return more

        return fit_crossed_combined(table, read_more, model, formula, fit, out, str(method), df, hcm2,
                                    bool(build.get("allow_unequal")), factor_files, stderr, echo)
    analysis = analyse_crossed(table, model, formula, str(method), fit.max_iterations, out.title, df, fit.tests,
                               fit.compare_deviance, fit.compare_params, hcm2=hcm2, constraints=fit.constraints)
    meta = {"data_source": analysis.source}
    if out.timestamp:
        from datetime import datetime, timezone

        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    res = CrossedResults(analysis, meta=meta)
    if res.certified and (out.residuals_l1 or factor_files):  # computed before anything is written
        l1 = res.residuals_level1(out.keep) if out.residuals_l1 else None
        groups = {f: res.residuals_factor(f, out.keep) for f in factor_files}
    if out.out_format == "json":
        body = res.to_json()
    elif out.out_format == "text":
        body = res.summary()
        if meta.get("timestamp"):
            body = f"Date: {meta['timestamp']}\n" + body
    else:
        body = res.table(out.out_format, out.table)
    write = res.certified or out.keep_failed_output
    from ..io.residual_files import write_table

    with output_transaction():
        if out.output and write:
            atomic_write_text(out.output, body)
        if out.json_out and write:
            atomic_write_text(out.json_out, res.to_json())
        if res.certified:
            if out.residuals_l1:
                write_table(l1, out.residuals_l1)
            for factor, path in factor_files.items():
                write_table(groups[factor], path)
    if not out.output:
        echo(body)
    if not out.quiet:
        for note in res.boundary_notes:
            stderr(f"hlmcli: warning: {note}")
    if not res.certified:
        stderr("hlmcli: the optimum is not certified: " + "; ".join(analysis.failures))
        sys.exit(EXIT_NOT_CONVERGED)


def fit_crossed_combined(table, read_more, model, formula: str, fit, out, method: str, df: str, hcm2,
                         allow_unequal: bool, factor_files: dict, stderr, echo) -> None:
    """--plausible-values (outcome columns of the one data set) or --imputed (further data sets in the
    first one's layout): one cross-classified fit each, combined by Rubin's rules
    (analysis/crossed_combined.py); the text or JSON, exit 3 unless every fit is certified."""
    from dataclasses import replace

    import numpy as np

    from ..analysis.crossed_combined import combine_crossed, combined_crossed_tests, same_crossed_records
    from ..analysis.crossed_run import analyse_crossed, fixed_names, parse_theta_test
    from ..analysis.plausible import outcome_columns
    from ..io.files import atomic_write_text, check_outputs, output_transaction
    from ..report.crossed_report import combined_json, combined_text
    from ..report.report import dumps_json

    if fit.plausible_values and fit.imputed:
        raise UsageError("give --plausible-values or --imputed, not both")
    if out.residuals_l1 or factor_files or fit.compare_deviance is not None:
        raise UsageError("residual files and deviance comparisons are not available for combined fits (a deviance "
                         "difference has no Rubin's rule: use --test, combined by D1); fit one plausible value or "
                         "data set at a time for those")
    if out.out_format not in ("text", "json"):
        raise UsageError(f"--format {out.out_format}: combined cross-classified fits are printed as text or JSON; "
                         "save the JSON (--json-out) to keep every number")
    check_outputs([("-o", out.output), ("--json-out", out.json_out)], [])
    hypotheses = [parse_theta_test(t, len(model.fixed), fixed_names(model)) for t in fit.tests]

    def one(tab, mod):
        return analyse_crossed(tab, mod, formula, method, fit.max_iterations, out.title, df, hcm2=hcm2)

    if fit.plausible_values:
        outcomes = outcome_columns(fit.plausible_values, [str(c) for c in table.data.columns])
        used = {n.lower() for t in model.fixed + tuple(c for b in model.bars for c in b.columns) for n in t}
        used |= {f.lower() for b in model.bars for f in b.factor}
        for o in outcomes:
            if o.lower() in used:
                raise UsageError(f"--plausible-values: {o} is a plausible value of the outcome and also in the model; "
                                 "remove it from the model")
        analyses = [one(table, replace(model, outcome=o)) for o in outcomes]
        for a, o in zip(analyses[1:], outcomes[1:]):
            if a.fit.n != analyses[0].fit.n or not np.array_equal(a.design.rows, analyses[0].design.rows):
                raise UsageError(f"the plausible values {outcomes[0]} and {o} are missing on different records; "
                                 "plausible values must be complete on the same records")
        labels, source = outcomes, "plausible values"
    else:
        extra = [p.strip() for item in fit.imputed for p in item.split(",") if p.strip()]
        labels = [str(table.path)] + extra
        analyses = [one(table, model)] + [one(read_more(path), model) for path in extra]
        if not allow_unequal:
            same_crossed_records(analyses, labels)
        source = "imputed data sets"
    c = combine_crossed(analyses)
    tests = combined_crossed_tests(analyses, hypotheses) if hypotheses else None
    meta = {"data_source": analyses[0].source}
    if out.timestamp:
        from datetime import datetime, timezone

        meta["timestamp"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    doc = combined_json(analyses, c, meta, source, labels, tests)
    body = dumps_json(doc) if out.out_format == "json" else combined_text(analyses, c, source, labels, tests)
    write = c["converged"] or out.keep_failed_output
    with output_transaction():
        if out.output and write:
            atomic_write_text(out.output, body)
        if out.json_out and write:
            atomic_write_text(out.json_out, dumps_json(doc))
    if not out.output:
        echo(body)
    if not c["converged"]:
        failed = [f"{label}: " + "; ".join(a.failures) for a, label in zip(analyses, labels) if not a.certified]
        stderr("hlmcli: the optimum of at least one fit is not certified: " + " | ".join(failed))
        sys.exit(EXIT_NOT_CONVERGED)


def plot_crossed_command(kind, data, formula: str, model, fit, output, coef, json_out, quiet, more: dict,
                         stderr) -> None:
    """`hlmcli plot caterpillar DATA --formula ...` of a cross-classified model: the fit `hlmcli fit` makes of
    the same data and formula, drawn (one panel per grouping factor); --json-out saves it when certified."""
    from ..analysis.crossed_run import analyse_crossed
    from ..io.files import atomic_write_text, check_outputs, commit_outputs
    from ..io.readers import read_table
    from ..report.plots import refuse_crossed_plot
    from ..results import CrossedResults

    refuse_crossed_plot(kind)
    if len(data) != 1:
        raise UsageError(f"hlmcli plot of a cross-classified model reads one data file holding every column "
                         f"({', '.join(model.columns)}); got {len(data)} files")
    check_outputs([("-o", output), ("--json-out", json_out)], list(data))
    ids = tuple(name for bar in model.bars for name in bar.factor)
    from ..io.archive_crossed import is_crossed_archive, load_crossed_archive

    table = load_crossed_archive(data[0]).table() if is_crossed_archive(data[0]) else \
        read_table(data[0], more.get("file_format"), more.get("delimiter"), string_columns=ids)
    method = getattr(fit.method, "value", fit.method) or "REML"
    analysis = analyse_crossed(table, model, formula, str(method), fit.max_iterations)
    res = CrossedResults(analysis, meta={"data_source": analysis.source})
    res.plot(kind, output, coef=coef)
    if json_out and res.certified:
        atomic_write_text(json_out, res.to_json())
    commit_outputs()
    if not quiet:
        for note in res.boundary_notes:
            stderr(f"hlmcli: warning: {note}")
        stderr(f"hlmcli: wrote {output}" + (f" and {json_out}" if json_out and res.certified else ""))
    if not res.certified:
        stderr("hlmcli: the optimum is not certified: " + "; ".join(analysis.failures))
        sys.exit(EXIT_NOT_CONVERGED)


# ---------------------------------------------------------------- HCM2's archive: mdm build, mdm info

_BUILD_TAKEN = {"--row-id", "--col-id", "--l1-vars", "--l2-vars", "--l3-vars", "--missing", "--drop-unmatched",
                "--format", "--delimiter", "--no-follow", "-o", "--output", "--quiet"}


def build_crossed_command(files, row_id, col_id, keeps, missing, drop_unmatched, file_format, delimiter, output,
                          quiet, given: set[str], stderr, progress_class) -> None:
    """`hlmcli mdm build LEVEL1 ROWS COLS --row-id A --col-id B -o X.mdm`: HLM 7's HCM2 MDM."""
    from ..io.archive_crossed import build_crossed_from_files, write_crossed_archive
    from ..io.files import check_outputs, check_regular, commit_outputs
    from ..io.readers import normalise_delimiter
    from .options import split_names

    if not (row_id and col_id):
        raise UsageError("a cross-classified (HCM2) archive needs both --row-id and --col-id, the id columns linking "
                         "the level-1 file to the row file and to the column file")
    other = sorted(o for o in given if o not in _BUILD_TAKEN)
    if other:
        raise UsageError(f"{other[0]}: not used by a cross-classified build (LEVEL1 ROWS COLS with --row-id, --col-id; "
                         "--l1-vars, --l2-vars for the row file, --l3-vars for the column file, --missing, "
                         "--drop-unmatched, --format, --delimiter, -o)")
    if len(files) != 3:
        raise UsageError(f"a cross-classified (HCM2) build takes three files, LEVEL1 ROWS COLS (the row or column file may "
                         f"be a file of its own only: one record per unit); got {len(files)}")
    if output is None:
        raise UsageError("give -o/--output, the archive to write")
    if "-" in files:
        raise UsageError("a cross-classified build reads its three files from disk; standard input ('-') is not read")
    for source in files:
        check_regular(source, "data file")
    check_outputs([("-o", output)], list(files))
    warn = (lambda m: None) if quiet else (lambda m: stderr(f"hlmcli: warning: {m}"))
    progress = progress_class(quiet, 5)  # three files, merging, hashing
    try:
        archive = build_crossed_from_files(files, row_id, col_id, tuple(split_names(k) for k in keeps), missing,
                                           drop_unmatched, file_format, normalise_delimiter(delimiter), warn, progress)
        write_crossed_archive(archive, output)
    finally:
        progress.close()
    commit_outputs()
    if not quiet:
        stderr(f"hlmcli: wrote {output}: {archive.n_records} level-1 records in {len(archive.row_ids)} row units "
               f"({archive.row_id}) crossed with {len(archive.col_ids)} column units ({archive.col_id})")


def crossed_info_command(path, unit, out_format, verify, stderr) -> None:
    """`hlmcli mdm info` of an HCM2 archive: HLM 7's level-1, row and column statistics."""
    import click

    from ..io.archive import changed_sources
    from ..io.archive_crossed import crossed_info, crossed_unit, load_crossed_archive
    from ..report.crossed_report import crossed_info_text
    from ..report.report import dumps_json
    from ..version import __version__

    archive = load_crossed_archive(path, verify)
    info = {"schema": 1, "tool": "hlmcli", "version": __version__, **crossed_info(archive)}
    if unit is not None:
        info["unit"] = crossed_unit(archive, unit)
    for changed in changed_sources(archive):
        stderr(f"hlmcli: warning: {changed} changed since this archive was built; rebuild it with 'hlmcli mdm build'")
    click.echo(dumps_json(info) if out_format == "json" else crossed_info_text(info), nl=False)
    if verify:
        stderr(f"hlmcli: {path}: checksum verified (SHA-256 of the whole file)")
