"""Sampling weights, plausible values and imputed data sets on the path of models of three and more
levels: from the options to the fits and their documents. The statistics are nested.py's weighted
pseudo-likelihood (weights.resolve_levels) and plausible_levels.py's combination; the reports are
report_levels.py's and report_combined.py's, given the weighting block and record through `meta`."""

from __future__ import annotations

from dataclasses import replace

from ..errors import UsageError


def weight_spec_levels(K: int, names: dict, normalize: str | None):
    """The LevelsWeightSpec of --weight1 … --weightK and --normalize (None when no weight is given);
    a weight above the top level, or --normalize alone, is refused in one line."""
    from ..data.weights import DEFAULT_NORMALIZATION, LevelsWeightSpec

    given = {level: name for level, name in names.items() if name}
    high = sorted(level for level in given if level > K)
    if high:
        raise UsageError(f"--weight{high[0]}: the model has {K} levels, so it takes --weight1 ... --weight{K} only")
    if not given:
        if normalize:
            raise UsageError("--normalize scales sampling weights; give --weight1 ... --weight"
                             f"{K} with it, or drop it")
        return None
    return LevelsWeightSpec(tuple(given.get(level) for level in range(1, K + 1)), normalize or DEFAULT_NORMALIZATION)


NO_REML = ("--reml with sampling weights: the restricted pseudo-likelihood moves with the scale of the top-level "
           "weights (its log|X'V⁻¹X| term does not scale with them), so weighted fits are full pseudo-ML, as WeMix's "
           "and the two-level ones; drop --reml")


def check_method(wspec, reml: bool) -> None:
    if wspec is not None and reml:
        raise UsageError(NO_REML)


def weighting_meta(weights) -> dict:
    """What the K-level reports print and save for a weighted fit (nothing when unweighted)."""
    from ..data.weights import levels_weighting_lines

    if weights is None:
        return {}
    return {"weighting_lines": levels_weighting_lines(weights), "weights": weights.to_json()}


def fit_weighted(design, archive, wspec, reml: bool, max_iterations: int, **options):
    """The certified nested fit of a design, with its sampling weights when `wspec` gives any:
    (fit, resolved weights or None). `options` go to nested_fit.fit_nested (diagonal=, df_method=)."""
    from ..data.weights import resolve_levels, weighted_data

    check_method(wspec, reml)
    weights = resolve_levels(wspec, archive, design) if wspec is not None else None
    return fit_nested_checked(weighted_data(design, weights), reml, max_iterations, **options), weights


def fit_combined(design, archive, wspec, reml: bool, max_iterations: int, plausible_values=None,
                 imputed_sets=(), first_label: str = "", allow_unequal: bool = False):
    """The fits to combine: one per plausible value (`plausible_values`, the --plausible-values text) of
    `design`, or one per data set: `design` (labelled `first_label`) and `imputed_sets`, the other data
    sets as (archive, design, label). Each data set's weights come from its own files.
    Returns (fits, designs, outcomes or data-set labels, source, the first data set's weights)."""
    from .plausible import outcome_columns
    from .plausible_levels import outcome_data, same_records
    from ..data.weights import resolve_levels, weighted_data

    if plausible_values and imputed_sets:
        raise UsageError("give --plausible-values or --imputed, not both")
    check_method(wspec, reml)
    if plausible_values:
        outcomes = outcome_columns(plausible_values, list(archive.names(1)), archive)
        weights = resolve_levels(wspec, archive, design) if wspec is not None else None
        datas = outcome_data(weighted_data(design, weights), archive, design.record_positions, outcomes,
                             design.spec.level1)
        fits = [fit_nested_checked(d, reml, max_iterations) for d in datas]
        return fits, [_with_outcome(design, o) for o in outcomes], outcomes, "plausible values", weights
    sets = [(archive, design, first_label)] + list(imputed_sets)
    designs, labels = [d for _, d, _ in sets], [label for _, _, label in sets]
    if not allow_unequal:
        same_records(designs, labels)
    fits, first = [], None
    for a, d, _ in sets:
        weights = resolve_levels(wspec, a, d) if wspec is not None else None
        first = weights if first is None else first
        fits.append(fit_nested_checked(weighted_data(d, weights), reml, max_iterations))
    return fits, designs, labels, "imputed data sets", first


def fit_nested_checked(data, reml: bool, max_iterations: int, **options):
    from ..engine.nested_fit import fit_nested

    return fit_nested(data, reml=reml, max_iterations=max_iterations, **options)


def _with_outcome(design, outcome: str):
    """The design with its spec naming another outcome column (for each plausible value's own document)."""
    try:
        return replace(design, spec=replace(design.spec, outcome=outcome))
    except (TypeError, ValueError):
        return design


def run_combined(archive, source_text: str, design, design_of, load, wspec, plausible_values, imputed,
                 allow_unequal: bool, reml: bool, max_iterations: int, meta: dict, fit_doc, fit_txt=None):
    """--plausible-values or --imputed for K levels: the fits, combined. `design_of(archive)` makes a data
    set's design, `load(path)` reads an imputed data set ((archive, label)); `fit_doc`/`fit_txt` write one
    fit's JSON record and text (no texts without `fit_txt`). Returns (the combined document, each fit's
    text or None, the meta with the weighting block); report_combined.combined_text_levels prints them."""
    from .plausible_levels import combined_json_levels

    paths = [p.strip() for item in imputed or () for p in str(item).split(",") if p.strip()]
    sets = []
    for path in paths:
        a, label = load(path)
        sets.append((a, design_of(a), label))
    fits, designs, outcomes, source, weights = fit_combined(
        design, archive, wspec, reml, max_iterations, plausible_values, sets, source_text, allow_unequal)
    meta = {**meta, **weighting_meta(weights)}
    docs = [fit_doc(d, f, meta) for d, f in zip(designs, fits)]
    K = fits[0].n_levels
    n_units = {"level1": design.n, **{f"level{m}": int(fits[0].eb[m - 2].shape[0]) for m in range(2, K + 1)}}
    doc = combined_json_levels(n_units, fits, docs, meta, source, [str(o) for o in outcomes], weights=weights)
    texts = [fit_txt(d, f, meta) for d, f in zip(designs, fits)] if fit_txt is not None else None
    return doc, texts, meta
