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
          "--col-id", "--test", "--compare-deviance", "--compare-params", "--residuals-l1", "--residuals-l2",
          "--residuals-l3", "--residuals-l4", "--keep", "--df", "--timestamp", "--caption", "--stars", "--notes",
          "--se", "--conf-level"}
# the capabilities table's feature for a typed option
_FEATURE = {"--test": "test", "--constrain": "constrain", "--known-variance": "known_variance", "--level1-variance": "level1_variance", "--level1-covariance": "level1_covariance", "--occasion": "level1_covariance", "--compare-deviance": "compare_deviance", "--compare-params": "compare_deviance",
            "--residuals-l1": "residuals", "--residuals-l2": "residuals", "--residuals-l3": "residuals",
            "--residuals-l4": "residuals", "--keep": "keep", "--df": "satterthwaite",
            "--test-homogeneity": "homogeneity", "--full-output": "full_output", "--ols-units": "full_output",
            "--weight1": "weights", "--weight2": "weights", "--weight3": "weights", "--weight4": "weights",
            "--normalize": "weights", "--plausible-values": "plausible_values", "--imputed": "plausible_values",
            "--missing": "missing_now", "--engine": "stream_dask", "--scheduler": "stream_dask"}
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


def fit_crossed_command(data, formula: str, model, fit, out, build: dict, given: set[str], echo, stderr) -> None:
    """The whole command for a crossed formula: read, fit, print or write, exit 3 when not certified."""
    from ..analysis.crossed_run import analyse_crossed
    from ..io.files import atomic_write_text, check_outputs, output_transaction
    from ..io.readers import read_table
    from ..language.formula import diagonal_bars
    from ..results import CrossedResults

    refuse_options(given, "text", fit.df_method)
    row_id, col_id = build.get("row_id"), build.get("col_id")
    if len(data) == 3:  # HLM 7's HCM2 layout: LEVEL1 ROWS COLS
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
    tables = [read_table(path, build.get("file_format"), build.get("delimiter"), string_columns=ids) for path in data]
    if len(tables) == 3:
        from ..data.crossed_design import merge_crossed

        table = merge_crossed(*tables, row_id, col_id)
    else:
        table = tables[0]
    method = getattr(fit.method, "value", fit.method) or "REML"
    df = "satterthwaite" if "--df" in given else "none"
    analysis = analyse_crossed(table, model, formula, str(method), fit.max_iterations, out.title, df, fit.tests,
                               fit.compare_deviance, fit.compare_params)
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
    table = read_table(data[0], more.get("file_format"), more.get("delimiter"), string_columns=ids)
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
