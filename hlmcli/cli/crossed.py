"""`hlmcli fit DATA --formula 'Y ~ X + (1 | A) + (1 | B)'` when the grouping factors are crossed: one
data file holding every column (or HLM 7's HCM2 layout, LEVEL1 ROWS COLS with --row-id and --col-id),
the cross-classified engine, HCM2's tables or the JSON document.
The options a cross-classified fit does not take are refused in one line with the capabilities
table's reason (capabilities.py, column "cross-classified linear")."""

from __future__ import annotations

import sys

from ..errors import EXIT_NOT_CONVERGED, ModelError, UsageError

# options a cross-classified fit reads; every other typed option is refused below
_TAKEN = {"--formula", "--ml", "--reml", "--max-iterations", "--quiet", "--title", "--format", "--output",
          "--json-out", "--keep-failed-output", "--tau", "--delimiter", "--data-format", "--no-follow", "--row-id",
          "--col-id"}
# the capabilities table's feature for a typed option
_FEATURE = {"--test": "test", "--constrain": "constrain", "--compare-deviance": "compare_deviance", "--compare-params": "compare_deviance",
            "--residuals-l1": "residuals", "--residuals-l2": "residuals", "--residuals-l3": "residuals",
            "--residuals-l4": "residuals", "--keep": "keep", "--df": "satterthwaite",
            "--test-homogeneity": "homogeneity", "--full-output": "full_output", "--ols-units": "full_output",
            "--weight1": "weights", "--weight2": "weights", "--weight3": "weights", "--weight4": "weights",
            "--normalize": "weights", "--plausible-values": "plausible_values", "--imputed": "plausible_values",
            "--missing": "missing_now", "--engine": "stream_dask", "--scheduler": "stream_dask"}
_HGLM = ("--family", "--trials", "--exposure", "--overdispersion", "--estimation", "--quadrature-points",
         "--separation", "--link")


def refuse_options(given: set[str], out_format: str) -> None:
    from ..capabilities import refuse

    for option in sorted(given):
        if option in _HGLM:
            raise ModelError(f"{option}: not available for a cross-classified fit: hlmcli fits crossed factors for "
                             "normal outcomes; an HGLM over crossed factors needs the Laplace or AGQ likelihood over "
                             "the crossed blocks, which is not built (lme4's glmer fits it)")
        if option in _FEATURE:
            refuse(_FEATURE[option], "crossed")
        if option not in _TAKEN:
            raise UsageError(f"{option}: not available for a cross-classified fit (it takes --ml/--reml, "
                             "--max-iterations, --tau, --title, --format text|json, -o, --json-out, -q)")
    if out_format not in ("text", "json"):
        refuse("formats", "crossed")


def fit_crossed_command(data, formula: str, model, fit, out, build: dict, given: set[str], echo, stderr) -> None:
    """The whole command for a crossed formula: read, fit, print or write, exit 3 when not certified."""
    from ..analysis.crossed_run import analyse_crossed
    from ..io.files import atomic_write_text, check_outputs
    from ..io.readers import read_table
    from ..language.formula import diagonal_bars
    from ..report.crossed_report import text, to_json
    from ..report.report import dumps_json

    refuse_options(given, out.out_format)
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
    check_outputs([("-o", out.output), ("--json-out", out.json_out)], list(data))
    ids = tuple(name for bar in model.bars for name in bar.factor) + tuple(x for x in (row_id, col_id) if x)
    tables = [read_table(path, build.get("file_format"), build.get("delimiter"), string_columns=ids) for path in data]
    if len(tables) == 3:
        from ..data.crossed_design import merge_crossed

        table = merge_crossed(*tables, row_id, col_id)
    else:
        table = tables[0]
    method = getattr(fit.method, "value", fit.method) or "REML"
    res = analyse_crossed(table, model, formula, str(method), fit.max_iterations, out.title)
    body = dumps_json(to_json(res)) if out.out_format == "json" else text(res)
    write = res.certified or out.keep_failed_output
    if out.output:
        if write:
            atomic_write_text(out.output, body)
    else:
        echo(body)
    if out.json_out and write:
        atomic_write_text(out.json_out, dumps_json(to_json(res)))
    if not out.quiet:
        for note in res.boundary_notes():
            stderr(f"hlmcli: warning: {note}")
    if not res.certified:
        stderr("hlmcli: the optimum is not certified: " + "; ".join(res.failures))
        sys.exit(EXIT_NOT_CONVERGED)
