"""The Python API: `hlmcli.fit(...)` runs the same stages as `hlmcli fit` and returns `Results`.

    import hlmcli
    res = hlmcli.fit("hsb1.csv", "hsb2.csv", id="ID",
                     level1_eq="MATHACH = b0 + b1*group(SES) + r",
                     level2_eqs=["b0 = g00 + g01*SECTOR + u0", "b1 = g10 + g11*SECTOR + u1"])
    res.fixed_effects            # a DataFrame
    res.random_effects()         # EB, OLS and posterior variances per school
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence, Union

from .lazy import is_dataframe, lazy

pd = lazy("pandas")

from .language.model import ModelSpec
from .errors import DataError, ModelError, RefusedOption, UsageError
from .results import Results
from .spec import Engine, Estimation, FamilyName, FitOptions, Link, Method, OutputOptions, TauStructure

DataLike = Union[str, os.PathLike, "pd.DataFrame"]


def _is_archive(path) -> bool:
    from .io.archive import MAGIC

    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def load_data(level1: DataLike, level2: DataLike | None = None, id: str | None = "ID", *, id1: str | None = None,
              id2: str | None = None, missing: str = "analysis", drop_unmatched: bool = False,
              file_format: str | None = None, delimiter: str | None = None, cache_dir: str | os.PathLike | None = None,
              warn: Callable[[str], None] = lambda m: None):
    """(archive, data source text, SourceFrames or None) from an archive path, two data files (through
    the same cache as the CLI), or DataFrames (one DataFrame alone holds both levels)."""
    from .io.archive import BuildOptions, build_archive, changed_sources, load_archive
    from .io.readers import Table, check_frame_columns, read_table
    from .io.sources import SourceFrames

    options = BuildOptions(id1=id1 or id, id2=id2 or id, missing=missing, drop_unmatched=drop_unmatched)
    frames_given = is_dataframe(level1) or is_dataframe(level2)
    if not frames_given and level2 is None:
        if not _is_archive(level1):
            raise DataError(f"{level1}: not an archive; give an .mdm file, or the level-1 and level-2 files (or DataFrames)")
        archive = load_archive(level1)
        for changed in changed_sources(archive):
            warn(f"{changed} changed since {Path(level1).name} was built; rebuild it with 'hlmcli mdm build'")
        return archive, Path(level1).name, None
    if not frames_given:
        from .io.cache import cached_archive

        archive, _status = cached_archive((level1, level2), options, file_format, delimiter, cache_dir=cache_dir, warn=warn)
        return archive, f"{Path(level1).name} and {Path(level2).name}", None
    if not options.id1 or not options.id2:
        raise DataError("no unit id column given; pass id='NAME' (or id1= and id2=)")

    def table(data, role: str, id_name: str) -> Table:
        if is_dataframe(data):
            check_frame_columns(data, f"the {role} DataFrame")
            return Table(Path(f"the {role} DataFrame"), "dataframe", data.reset_index(drop=True))
        return read_table(data, file_format, delimiter, string_columns=(id_name,))

    t1 = table(level1, "level-1", options.id1)
    same = level2 is None or level2 is level1
    t2 = t1 if same else table(level2, "level-2", options.id2)
    archive = build_archive(t1, t2, options, same_file=same, warn=warn)
    from .io.readers import find_column

    frames = SourceFrames(t1.data, t2.data, find_column(t1, options.id1, "unit id"), find_column(t2, options.id2, "unit id"),
                          same, str(t1.path), str(t2.path))
    source = "a DataFrame" if same else f"{'a DataFrame' if is_dataframe(level1) else Path(level1).name} and " \
             f"{'a DataFrame' if is_dataframe(level2) else Path(level2).name}"
    return archive, source, frames


def make_spec(archive, level1_eq: str | None, level2_eqs: Sequence[str] = (), model: str | os.PathLike | None = None,
              method: str | None = None, **options):
    """A ModelSpec from equations or a model file; `options` override RunOptions fields (None = keep)."""
    if method is not None and method.upper() not in ("REML", "ML"):
        raise ModelError(f"method must be 'REML' or 'ML', not '{method}'")
    return model_spec(archive, level1_eq, level2_eqs, model, FitOptions(method=Method(method.upper()) if method else None),
                      **options)


def _enum(kind, value, what: str):
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(str(value).upper() if kind is Method else str(value).lower())
    except ValueError:
        raise ModelError(f"{what} must be one of {', '.join(repr(k.value) for k in kind)}, not '{value}'") from None


EMULATE_HLM7 = ("--emulate hlm7: HLM 7's accelerated iteration (accel:) is not reproduced by any reconstruction "
                "tried on its published output (README: Comparing with HLM), so it is not emulated; "
                "use --emulate hlm6 (HLM 5/6's EM path), or 'hlmcli explain' to compare with HLM 7's printed numbers")


def check_emulate(emulate: str) -> None:
    """--emulate: hlm6 is built; hlm7 is refused in one line with the reason (before any data are read)."""
    if emulate == "hlm7":
        raise RefusedOption(EMULATE_HLM7)
    if emulate != "hlm6":
        raise ModelError(f"emulate must be 'hlm6' (or 'hlm7', refused), not '{emulate}'")


def fit_options(**given) -> FitOptions:
    """FitOptions from the API's or the command line's keywords, each checked (one line if wrong)."""
    for name, kind in (("method", Method), ("family", FamilyName), ("estimation", Estimation), ("tau", TauStructure),
                       ("engine", Engine), ("link", Link)):
        if name in given:
            given[name] = _enum(kind, given[name], name)
    if given.get("engine") is None:
        given.pop("engine", None)
    if given.get("df_method") is None:
        given.pop("df_method", None)
    if given.get("emulate") is not None:
        check_emulate(given["emulate"])
    if given.get("df_method", "hlm") not in ("hlm", "hlm6", "satterthwaite"):
        raise ModelError(f"df must be 'hlm', 'hlm6' or 'satterthwaite', not '{given['df_method']}'")
    for name in ("tests", "imputed", "constraints"):
        if name == "constraints" and isinstance(given.get("level1_variance"), str):
            given["level1_variance"] = tuple(v.strip() for v in given["level1_variance"].split(",") if v.strip())
        elif name == "constraints" and given.get("level1_variance") is not None:
            given["level1_variance"] = tuple(given["level1_variance"])
        value = given.get(name)
        if isinstance(value, str):
            given[name] = (value,)
        elif value is not None:
            given[name] = tuple(value)
        else:
            given.pop(name, None)
    return FitOptions(**given)


def model_spec(archive, level1: str | None, level2: Sequence[str], model_file, fit: FitOptions,
               allow_outside: bool = False, **run_options) -> ModelSpec:
    """The one ModelSpec of a request, whichever door it came by: the equations (HLM 7's printed HGLM
    block too) or the model file with its own settings (a .hlm file's nonlin:, level1weight:, mlf:),
    then what `fit` asks, which wins; `run_options` set RunOptions fields (None = keep)."""
    from .data.design import variables_of
    from .language.equations import RunOptions, spec_from_inputs
    from .spec import hlm_block

    if isinstance(level2, str):
        level2 = [level2]
    family = fit.family
    if level1:
        level1, block_family, _exposure = hlm_block(level1)
        if block_family is not None:
            if family is not None and family != block_family:
                raise ModelError(f"the level-1 block is a {block_family.value} model but the family is {family.value}")
            family = block_family
    spec = spec_from_inputs(level1, list(level2), str(model_file) if model_file else None, variables_of(archive),
                            RunOptions(), allow_outside)
    changes = {k: v for k, v in run_options.items() if v is not None}
    asked = {"family": family.value if family else None, "link": fit.link.value if fit.link else None,
             "trials": fit.trials, "exposure": fit.exposure,
             "overdispersion": fit.overdispersion, "estimation": fit.estimation.value if fit.estimation else None,
             "quadrature_points": fit.quadrature_points, "separation": fit.separation,
             "method": fit.method.value if fit.method else None,
             "tau": fit.tau.value if fit.tau else None, "weight1": fit.weight1, "weight2": fit.weight2,
             "max_iterations": fit.max_iterations, "prior_deviance": fit.compare_deviance,
             "prior_params": fit.compare_params, "homogeneity": fit.test_homogeneity, "full_output": fit.full_output,
             "ols_units": fit.ols_units}
    changes.update({k: v for k, v in asked.items() if v is not None})
    if changes.get("estimation", spec.options.estimation) == "agq" and "quadrature_points" not in changes \
            and spec.options.quadrature_points == 1:
        changes["quadrature_points"] = 0  # adaptive: K chosen by hglm.agq_fit
    if changes:
        spec = replace(spec, options=replace(spec.options, **changes))
    return spec


def weight_spec(spec, fit: FitOptions):
    """The sampling weights a fit uses: the options' or the model file's columns, and the normalisation."""
    from .data.weights import DEFAULT_NORMALIZATION, WeightSpec

    w = WeightSpec(fit.weight1 or spec.options.weight1, fit.weight2 or spec.options.weight2,
                   fit.normalize or DEFAULT_NORMALIZATION)
    if fit.normalize and not w.any:
        raise ModelError("--normalize needs --weight1 or --weight2")
    return w


def analyse_model(spec, archive, fit: FitOptions, level1_text: str | None = None):
    """The fit a spec asks for, with every extra (tests, deviance test, homogeneity, full output):
    the linear engine (weighted or not) or the HGLM engine, decided by the spec's family alone."""
    from .language.hypotheses import parse_test
    from .analysis.pipeline import add_extras, analyse

    hypotheses = list(spec.options.hypotheses) + [parse_test(t, spec) for t in fit.tests]
    o = spec.options
    if not spec.family.linear:
        from .analysis.hglm_run import analyse_hglm, boundary_notes, hglm_extras

        from .data.data_checks import fit_or_refuse

        from .analysis.ordinal_run import analyse_ordinal

        from .analysis.negbin_run import analyse_negbin

        # ordinal: the thresholds too; negbinomial: the dispersion θ too
        from .analysis.multinomial_run import analyse_multinomial

        run = {"ordinal": analyse_ordinal, "negbinomial": analyse_negbin,
               "multinomial": analyse_multinomial}.get(o.family, analyse_hglm)
        weights = weight_spec(spec, fit)  # Laplace and AGQ only (capabilities.check refused PQL)
        constraints = None
        if fit.constraints:  # binary, binomial and count outcomes (capabilities.CONSTRAIN_CONFLICTS)
            from functools import partial

            from .analysis.constrained import parse_constraints

            constraints = parse_constraints(fit.constraints, spec, centred_intercept=False)
            unconstrained_run, run = run, partial(run, constraints=constraints)
        a = fit_or_refuse(lambda: run(spec, archive, level1_text, weights if weights.any else None), archive,
                          spec.outcome)
        if o.family == "multinomial":  # one test per logit
            from .analysis.multinomial_run import per_logit

            hypotheses = per_logit(hypotheses, a.categories)
        a.extras = hglm_extras(a, hypotheses, o.prior_deviance, o.prior_params, constraints)
        if constraints is not None:
            from .analysis.constrained import constraint_record, hglm_constraint_test, spec_gamma_labels

            a.extras["constraints"] = constraint_record(constraints, spec_gamma_labels(spec))
            a.extras["constraint_test"] = hglm_constraint_test(
                a, constraints, lambda: fit_or_refuse(lambda: unconstrained_run(spec, archive, level1_text), archive,
                                                      spec.outcome))
        a.notes = boundary_notes(a)
        return a
    if fit.constraints:
        return _analyse_constrained(spec, archive, fit, hypotheses)
    if fit.known_variance:
        return _analyse_known_variance(spec, archive, fit, hypotheses)
    if fit.level1_variance:
        return _analyse_heterogeneous(spec, archive, fit, hypotheses)
    if fit.level1_covariance or fit.occasion:
        return _analyse_hmlm(spec, archive, fit, hypotheses)
    weights = weight_spec(spec, fit)
    analysis = analyse(spec, archive, fit.df_method, weights=weights if weights.any else None)
    prior = o.prior_deviance
    if fit.prior_version and prior is not None:  # HLM 5/6 print the ML deviance ln 2π low
        from .analysis.inference import prior_deviance_as_printed_here

        prior = prior_deviance_as_printed_here(prior, fit.prior_version, analysis.result.method)
    add_extras(analysis, hypotheses, prior, o.prior_params, o.homogeneity, o.full_output, o.ols_units)
    if fit.prior_version and "deviance_test" in analysis.extras:
        analysis.extras["deviance_test"].update({"prior_version": fit.prior_version,
                                                 "prior_deviance_printed": o.prior_deviance})
    if fit.emulate:  # capabilities.check has refused every other kind of fit
        from .analysis.hlm_emulation import emulate_hlm6

        analysis.extras["emulation"] = emulate_hlm6(analysis, fit.max_iterations)
    return analysis


def _analyse_constrained(spec, archive, fit: FitOptions, hypotheses):
    """A linear fit under --constrain: the constrained model, its tests on the free γs, and the
    likelihood-ratio test of the constraints (analysis/constrained.py)."""
    from .analysis.constrained import analyse_constrained, constrained_tests, constraint_test, parse_constraints
    from .analysis.pipeline import add_extras

    o = spec.options
    constraints = parse_constraints(fit.constraints, spec)
    weights = weight_spec(spec, fit)
    analysis = analyse_constrained(spec, archive, constraints, fit.df_method, weights if weights.any else None)
    add_extras(analysis, (), None, None, o.homogeneity, o.full_output, o.ols_units)
    prior = o.prior_deviance
    if fit.prior_version and prior is not None:  # HLM 5/6 print the ML deviance ln 2π low
        from .analysis.inference import prior_deviance_as_printed_here

        prior = prior_deviance_as_printed_here(prior, fit.prior_version, analysis.result.method)
    analysis.extras.update(constrained_tests(analysis, constraints, hypotheses, prior, o.prior_params))
    analysis.extras["constraint_test"] = constraint_test(analysis, spec, archive, constraints)
    return analysis


def _analyse_known_variance(spec, archive, fit: FitOptions, hypotheses):
    """A V-known fit (--known-variance V): τ and γ with each record's level-1 variance known
    (analysis/known_variance.py), with the tests of γ and a deviance test against a prior model."""
    from .analysis.known_variance import analyse_known_variance
    from .analysis.pipeline import add_extras

    o = spec.options
    analysis = analyse_known_variance(spec, archive, fit.known_variance, fit.df_method)
    add_extras(analysis, hypotheses, o.prior_deviance, o.prior_params)
    analysis.extras.pop("icc", None)  # τ/(τ + σ²) has no meaning when σ² is not a variance of the data
    return analysis


def _analyse_heterogeneous(spec, archive, fit: FitOptions, hypotheses):
    """A fit with a heterogeneous level-1 variance (--level1-variance X1,X2): log σ²_ij linear in X
    (analysis/heterogeneous.py), with the tests of γ and a deviance test against a prior model."""
    from .analysis.heterogeneous import analyse_heterogeneous
    from .analysis.pipeline import add_extras

    o = spec.options
    analysis = analyse_heterogeneous(spec, archive, fit.level1_variance, fit.df_method)
    add_extras(analysis, hypotheses, o.prior_deviance, o.prior_params)
    analysis.extras.pop("icc", None)  # σ² differs across records: no one intraclass correlation
    return analysis


def _analyse_hmlm(spec, archive, fit: FitOptions, hypotheses):
    """HMLM (--level1-covariance S --occasion VAR): the homogeneous model, then the structured level-1
    covariance's fit and its test against it (analysis/hmlm.py); --test and --compare-deviance test the
    structured model (the homogeneous model's, with --level1-covariance homogeneous)."""
    from .analysis.hmlm import analyse_hmlm, structured_tests
    from .analysis.pipeline import add_extras

    if not (fit.level1_covariance and fit.occasion):
        raise UsageError("--level1-covariance and --occasion go together: the structure of the within-person "
                         "covariance and the level-1 variable holding each record's occasion")
    o = spec.options
    analysis = analyse_hmlm(spec, archive, fit.level1_covariance, fit.occasion, fit.df_method)
    record = analysis.extras["level1_covariance"]
    if record["structure"] == "homogeneous":  # the model printed first is the one asked for
        add_extras(analysis, hypotheses, o.prior_deviance, o.prior_params)
    else:  # the tests are the structured model's, printed with it
        add_extras(analysis)
        record.update(structured_tests(record, hypotheses, o.prior_deviance, o.prior_params))
    return analysis


def analyse_with_extras(spec, archive, df_method: str = "hlm", tests: Sequence[str] = ()):
    """The fit and every extra the options ask for: what `hlmcli fit` computes."""
    return analyse_model(spec, archive, fit_options(df_method=df_method, tests=tests))


def fit(level1: DataLike, level2: DataLike | None = None, id: str | None = "ID",
        level1_eq: str | None = None, level2_eqs: Sequence[str] = (), method: str | None = None, *,
        model: str | os.PathLike | None = None, id1: str | None = None, id2: str | None = None,
        missing: str = "analysis", drop_unmatched: bool = False, df: str = "hlm",
        family: str | None = None, trials: str | None = None, exposure: str | None = None,
        overdispersion: bool | None = None, estimation: str | None = None, quadrature_points: int | None = None,
        link: str | None = None, weight1: str | None = None, weight2: str | None = None, normalize: str | None = None,
        tau: str | None = None, engine: str = "memory",
        max_iterations: int | None = None, title: str | None = None, tests: Sequence[str] = (),
        constrain: Sequence[str] = (), known_variance: str | None = None,
        level1_variance: str | Sequence[str] | None = None, level1_covariance: str | None = None,
        occasion: str | None = None, compare_deviance: float | None = None, compare_params: int | None = None,
        test_homogeneity: bool | None = None, full_output: bool | None = None, ols_units: int | None = None,
        file_format: str | None = None, delimiter: str | None = None,
        cache_dir: str | os.PathLike | None = None, warn: Callable[[str], None] | None = None,
        level3: DataLike | None = None, level4: DataLike | None = None, level3_eqs: Sequence[str] = (),
        level4_eqs: Sequence[str] = (), id3: str | None = None, id4: str | None = None,
        weight3: str | None = None, weight4: str | None = None, emulate: str | None = None) -> Results:
    """Fit a two-level model, as `hlmcli fit` does (the same stages), and return its Results.

    level1, level2: paths to data files (CSV, SAS, SPSS, Stata) or pandas DataFrames; or `level1`
        an archive (.mdm) and `level2` None; or one DataFrame holding both levels (level-2
        variables are then those constant within units).
    id (or id1/id2): the unit id column. level1_eq, level2_eqs: the equations, as `-1`/`-2`
    (HLM 7's printed HGLM level-1 block too); or `model`, an equations file or HLM 7 `.hlm` file,
    whose settings (nonlin:, level1weight:, mlf:, ...) are used. method: "REML" or "ML" (default
    REML, or what a `.hlm` file says).
    family ("normal", "bernoulli", "binomial", "poisson", "ordinal", "negbinomial", "multinomial"), trials, exposure, overdispersion,
    estimation ("pql", "laplace", "agq"), quadrature_points, link ("logit", "probit", "cloglog": ordinal
    outcomes): an HGLM, as --family and its options.
    weight1, weight2 (weight3, weight4 at three and four levels), normalize: sampling weights, as
    --weight1 ... --weight4 and --normalize. tau: "unstructured" or "diagonal".
    engine: "memory" (the records in memory); "stream" and "dask" are for `hlmcli fit` with files.
    The other keywords mirror the CLI's options: df ("hlm" or "satterthwaite"), max_iterations,
    title, tests (e.g. ["g01 = 0, g11 = 0"]), constrain (ties among γs, e.g. ["g10 = g20"]),
    known_variance (the column of each record's known level-1 variance: a V-known model),
    level1_variance ("X1,X2" or a list: log σ²_ij = α0 + α1·X1 + ..., HLM 7's heterol1var),
    level1_covariance ("unrestricted", "homogeneous", "heterogeneous" or "ar1") with occasion (the level-1
    variable holding each record's occasion): HLM 7's HMLM, compare_deviance/compare_params, test_homogeneity,
    full_output, ols_units, missing ("now"/"analysis"), drop_unmatched, file_format, delimiter,
    cache_dir. emulate="hlm6": HLM 5/6's EM path run beside the certified optimum (two-level linear ML/REML
    fits in memory; results.to_dict()["emulation"]); "hlm7" is refused. `warn` receives warnings (default: Python's warnings module).
    Three and four levels (HLM3, HLM4): level1, level2, level3 (and level4) are the files of each
    level, with id2, id3 (id4) the unit ids of levels 2, 3 (4) as `hlmcli fit --id2 --id3 --id4`; or
    level1 a three- or four-level archive. level1_eq, level2_eqs, level3_eqs, level4_eqs are the `-1`
    ... `-4` equations, or `model` an equations file or HLM3 `.hlm` file. ML is the default, as in HLM.
    Refused options (capabilities.check) and bad input raise hlmcli.errors.DataError or ModelError
    with a one-line message.
    """
    import warnings

    from .capabilities import check as check_capabilities

    say = warn or (lambda m: warnings.warn(m, stacklevel=3))
    options = fit_options(method=method, family=family, trials=trials, exposure=exposure, overdispersion=overdispersion,
                          estimation=estimation, link=link, quadrature_points=quadrature_points, tau=tau, weight1=weight1,
                          weight2=weight2, weight3=weight3, weight4=weight4, normalize=normalize, df_method=df,
                          tests=tests, constraints=constrain,
                          known_variance=known_variance, level1_variance=level1_variance,
                          level1_covariance=level1_covariance, occasion=occasion,
                          compare_deviance=compare_deviance, compare_params=compare_params,
                          test_homogeneity=test_homogeneity, full_output=full_output, ols_units=ols_units,
                          max_iterations=max_iterations, engine=engine, emulate=emulate)
    hglm_only = [name for name, value in (("trials", trials), ("exposure", exposure), ("overdispersion", overdispersion),
                                          ("estimation", estimation), ("quadrature_points", quadrature_points),
                                          ("link", link))
                 if value is not None]
    if hglm_only and options.family in (None, FamilyName.NORMAL) and model is None and "|" not in (level1_eq or ""):
        raise ModelError(f"{', '.join(hglm_only)}: for binary, binomial and count outcomes; give family='bernoulli', "
                         "'binomial' or 'poisson', or drop them")
    if level3 is not None or level4 is not None or level3_eqs or level4_eqs or _levels_archive(level1, level2):
        return _fit_levels(level1, level2, level3, level4, (id2, id3, id4), (level1_eq, level2_eqs, level3_eqs,
                           level4_eqs), model, options, title, missing, drop_unmatched, file_format, delimiter,
                           cache_dir, say)
    if weight3 or weight4:
        raise ModelError("weight3 and weight4 are for three- and four-level models; a two-level model takes weight1 and "
                         "weight2")
    if options.engine != Engine.MEMORY:
        from .capabilities import refuse

        for feature, asked in (("constrain", options.constraints), ("known_variance", options.known_variance),
                               ("level1_variance", options.level1_variance),
                               ("level1_covariance", options.level1_covariance), ("emulate", options.emulate)):
            if asked:
                refuse(feature, "linear-summary")
        return _fit_summarised(level1, level2, id1 or id, id2 or id, level1_eq, level2_eqs, model, options, title,
                               drop_unmatched, missing, file_format, delimiter, say)
    archive, source, frames = load_data(level1, level2, id, id1=id1, id2=id2, missing=missing,
                                        drop_unmatched=drop_unmatched, file_format=file_format,
                                        delimiter=delimiter, cache_dir=cache_dir, warn=say)
    spec = model_spec(archive, level1_eq, level2_eqs, model, options, title=title)
    if link is not None and spec.options.family != "ordinal":  # the other families' links are canonical
        raise ModelError(f"link='{link}' chooses the cumulative link of family='ordinal', and this model is "
                         f"{spec.options.family} (whose link is its canonical one, as in HLM 7); drop link")
    check_capabilities(spec, options, OutputOptions(title=title))
    analysis = analyse_model(spec, archive, options, level1_eq)
    meta = {"data_source": source, "title": spec.options.title, "id_name": archive.level1_id,
            "model_given": {"level1": level1_eq, "level2": list(level2_eqs),
                            "model_file": Path(model).name if model else None},
            "command_file": Path(model).name if model and str(model).lower().endswith(".hlm") else None, "warn": say}
    if frames is None and level2 is not None:
        meta["source_files"] = (str(level1), str(level2))
    results = Results(analysis, archive, meta, frames)
    for message in results.failures:
        say(message + "; the results are not at the optimum")
    return results


def _fit_summarised(level1, level2, id1, id2, level1_eq, level2_eqs, model, options: FitOptions, title,
                    drop_unmatched, missing, file_format, delimiter, say) -> Results:
    """hlmcli.fit(engine="stream" | "dask"): the command line's summarised engines, on two data files."""
    from .analysis.engines import analyse_summary_with_extras, summary_for_fit

    if is_dataframe(level1) or is_dataframe(level2) or level2 is None:
        raise DataError(f"engine='{options.engine.value}' reads the level-1 and level-2 files in chunks; give their "
                        "paths (DataFrames and archives are already in memory: use engine='memory')")
    if not id1 or not id2:
        raise DataError("no unit id column given; pass id='NAME' (or id1= and id2=)")
    spec, summary, frame, source = summary_for_fit(
        (str(level1), str(level2)), options.engine.value, options.scheduler, (id1, id2), drop_unmatched, missing,
        file_format, delimiter, lambda frame: model_spec(frame, level1_eq, level2_eqs, model, options, title=title),
        {}, say)
    if not spec.family.linear:  # PQL, Laplace or AGQ over blocks of whole units (capabilities.check), as the CLI
        if options.engine == Engine.DASK:
            from .analysis.hglm_dask import fit_hglm_dask

            analysis = fit_hglm_dask(spec, summary, level1, frame.id_names[0], options.scheduler, delimiter,
                                     options.tests)
        else:
            from .analysis.hglm_stream import fit_hglm_stream

            analysis = fit_hglm_stream(spec, summary, level1, frame.id_names[0], file_format, delimiter,
                                       options.tests)
    else:
        analysis = analyse_summary_with_extras(spec, summary, options.df_method, options.tests, options.constraints)
    o = spec.options
    meta = {"data_source": source, "title": o.title, "id_name": frame.id_names[0],
            "model_given": {"level1": level1_eq, "level2": list(level2_eqs),
                            "model_file": Path(model).name if model else None},
            "command_file": Path(model).name if model and str(model).lower().endswith(".hlm") else None, "warn": say}
    results = Results(analysis, frame, meta)
    for message in results.failures:
        say(message + "; the results are not at the optimum")
    return results


# ---------------------------------------------------------------- three and four levels

def model_spec_levels(archive, equations: Sequence[Sequence[str]], model_file, fit: FitOptions,
                      allow_outside: bool = False, title: str | None = None, residuals: dict | None = None,
                      formula_equations=None):
    """The spec of a model of K = 3 or 4 levels: `equations` are the level-1 ... level-K equations (one
    list per level), or `model_file` (equations, or an HLM3 .hlm file at three levels); the method,
    iteration limit, title and residual files (level -> path) from the options. ML is the default, as in
    HLM3 and HLM4. At three levels the equations are also read in HLM3's forms, and the report is HLM3's.
    `formula_equations`: the command line's --formula as equations (levels_load.spec_levels)."""
    from .data.levels_load import spec_levels

    K = archive.n_levels
    equations = [list(e) for e in equations] + [[] for _ in range(K - len(equations))]
    if len(equations) > K and any(equations[K:]):
        raise ModelError(f"equations for level {K + 1} given, but the data have {K} levels")
    residuals = residuals or {}
    reml = fit.method == Method.REML if fit.method is not None else None
    spec = spec_levels(archive, equations[:K], model_file, reml, title=title, max_iterations=fit.max_iterations,
                       residuals=[residuals.get(k) for k in range(2, K + 1)], allow_outside=allow_outside,
                       formula_equations=formula_equations)
    if fit.method == Method.ML and spec.method != "ML":
        spec = replace(spec, options=replace(spec.options, method="ML"))
    return spec


def analyse_levels(spec, archive, fit: FitOptions, level1=None):
    """The certified fit of a model of three or four levels, with the Wald tests and the deviance test
    the options ask for: a levels_results.LevelsAnalysis. level1: the per-level-2-unit moments of a
    summarised engine (design_levels.Level1Moments), None for the archive's records."""
    from .levels_results import LevelsAnalysis, levels_extras

    if fit.family is not None and fit.family != FamilyName.NORMAL:  # three-level HGLM (capabilities.check
        from .analysis.hglm_levels import analyse_hglm_levels  # refused four levels)

        from .analysis.levels_combined import weighting_meta

        if fit.compare_deviance is not None and (fit.weight1 or fit.weight2 or fit.weight3):
            from .data.weights import NO_LIKELIHOOD_RATIO

            raise ModelError(NO_LIKELIHOOD_RATIO)  # before the fit, not after it (levels_extras says the same)
        constraints = None
        if fit.constraints:  # PQL, Laplace (capabilities.check refused AGQ): the fit on X H
            from .analysis.constrained import parse_constraints

            constraints = parse_constraints(fit.constraints, spec, centred_intercept=False)
        design, nested, hglm = analyse_hglm_levels(spec, archive, fit,
                                                   None if constraints is None else constraints.basis.H)
        analysis = LevelsAnalysis(spec, design, nested, hglm=hglm, weighting=weighting_meta(hglm.weights))
        # --compare-deviance: Laplace has a deviance (capabilities.check refused it for PQL); a weighted
        # (pseudo-likelihood) fit gets the robust Wald tests only and no likelihood-ratio test
        analysis.extras = levels_extras(analysis, fit.tests, fit.compare_deviance, fit.compare_params,
                                        robust_only=hglm.weights is not None, constraints=constraints)
        if constraints is not None:
            from .analysis.constrained import constraint_record, spec_gamma_labels

            analysis.extras["constraints"] = constraint_record(constraints, spec_gamma_labels(spec))
            if hglm.weights is not None:
                from .analysis.constrained import no_pseudo_likelihood_test

                analysis.extras["constraint_test"] = no_pseudo_likelihood_test(constraints)
            elif hglm.estimation == "laplace":  # against the unconstrained Laplace fit, refitted here
                from .analysis.constrained import likelihood_ratio_record

                analysis.extras["constraint_test"] = likelihood_ratio_record(
                    constraints, nested, analyse_hglm_levels(spec, archive, fit)[1])
            else:
                analysis.extras["constraint_test"] = {
                    "chi2": None, "df": constraints.basis.n_constraints, "p": None, "refitted_ml": False,
                    "note": "no test: PQL has no deviance (it maximises a quasi-likelihood); fit with --estimation "
                            "laplace for the likelihood-ratio test of the constraints"}
        return analysis
    if spec.n_levels == 3:  # HLM3's names
        from .data.design_levels import design3
        from .analysis.identifiability import check_three_level

        design = design3(spec, archive, level1)
        check_three_level(design.data, spec.coefficient_names(), lambda p: spec.term_names((p,)))
    else:
        from .data.design_levels import design_levels

        design = design_levels(spec, archive, level1)
    from .analysis.levels_combined import fit_weighted, weighting_meta

    options = levels_fit_options(spec, fit)
    constraints = None
    if fit.constraints:  # the fit on X H (nested.reduce_standardised), given back in every γ
        from .analysis.constrained import parse_constraints

        constraints = parse_constraints(fit.constraints, spec, centred_intercept=False)
        options["fixed_map"] = constraints.basis.H
    result, weights = fit_weighted(design, archive, levels_weight_spec(archive.n_levels, fit), spec.method == "REML",
                                   spec.options.max_iterations, **options)
    analysis = LevelsAnalysis(spec, design, result, weighting=weighting_meta(weights))
    # HMLM2 with a structure other than homogeneous: the tests are the structured model's (below)
    structured = str(fit.level1_covariance or "homogeneous") != "homogeneous"
    analysis.extras = levels_extras(analysis, () if structured else fit.tests,
                                    None if structured else fit.compare_deviance, fit.compare_params,
                                    robust_only=weights is not None, constraints=constraints)
    if constraints is not None:
        from .analysis.constrained import constraint_record, levels_constraint_test, spec_gamma_labels

        analysis.extras["constraints"] = constraint_record(constraints, spec_gamma_labels(spec))
        analysis.extras["constraint_test"] = levels_constraint_test(
            result, constraints, lambda reml, H: fit_weighted(design, archive, None, reml, spec.options.max_iterations,
                                                              **{**options, "fixed_map": H})[0])
    if fit.level1_covariance or fit.occasion:  # HMLM2 (capabilities.check refused it at four levels)
        from .analysis.hmlm import analyse_hmlm2

        if not (fit.level1_covariance and fit.occasion):
            raise UsageError("--level1-covariance and --occasion go together: the structure of the within-person "
                             "covariance and the level-1 variable holding each record's occasion")
        analyse_hmlm2(analysis, archive, fit.level1_covariance, fit.occasion)
        if structured:  # as at two levels (_analyse_hmlm): --test and --compare-deviance of the structured fit
            from .analysis.hmlm import structured_tests
            from .language.hypotheses import parse_test

            record = analysis.extras["level1_covariance"]
            hypotheses = [parse_test(t, analysis.levels_spec) for t in fit.tests]
            record.update(structured_tests(record, hypotheses, fit.compare_deviance, fit.compare_params))
    return analysis


def levels_fit_options(spec, fit: FitOptions) -> dict:
    """nested_fit.fit_nested's options from the fit's: τ diagonal at every level (--tau diagonal, or the
    model file's), and Satterthwaite's d.f. (--df satterthwaite)."""
    tau = fit.tau or spec.options.tau
    return {"diagonal": tau == TauStructure.DIAGONAL,
            "df_method": "satterthwaite" if fit.df_method == "satterthwaite" else "hlm"}


def levels_weight_spec(n_levels: int, fit: FitOptions):
    """The sampling weights of a fit of three or four levels (--weight1 ... --weight4, --normalize), or None."""
    from .analysis.levels_combined import weight_spec_levels

    return weight_spec_levels(n_levels, {1: fit.weight1, 2: fit.weight2, 3: fit.weight3, 4: fit.weight4},
                              fit.normalize)


def _levels_archive(level1, level2) -> bool:
    """Whether `level1` alone is an archive of three or more levels."""
    if level2 is not None or isinstance(level1, pd.DataFrame) or level1 is None:
        return False
    from .io.archive import peek_levels

    return Path(level1).is_file() and peek_levels(level1) >= 3


def _fit_levels(level1, level2, level3, level4, ids, equations, model, options: FitOptions, title, missing,
                drop_unmatched, file_format, delimiter, cache_dir, say) -> Results:
    """hlmcli.fit of a model of three or four levels: the archive (built through the cache from the
    files of each level, or read), the spec, capabilities.check, the fit and its `Results`."""
    from .capabilities import check as check_capabilities
    from .analysis.engines_levels import load_summarised
    from .data.levels_load import archive_n_levels, load_levels, summarised_level1

    files = [f for f in (level1, level2, level3, level4) if f is not None]
    if any(isinstance(f, pd.DataFrame) for f in files):
        raise DataError("models of three or four levels are read from files (one per level) or an archive, not "
                        "DataFrames; write the frames to CSV files first")
    files = [str(f) for f in files]
    if len(files) == 2:
        raise DataError("a three-level model needs three files (level 1, 2 and 3) or a three-level archive as level1")
    id2, id3, id4 = ids
    build = {"id_": None, "id1": None, "id2": id2, "id3": id3, "id4": id4, "l1_vars": None, "l2_vars": None,
             "l3_vars": None, "l4_vars": None, "missing": missing, "drop_unmatched": drop_unmatched,
             "file_format": file_format, "delimiter": delimiter}
    three = len(files) == 3 or (len(files) == 1 and archive_n_levels(files[0]) == 3)
    level1_file = None
    if Engine(options.engine) != Engine.MEMORY:  # the level-1 records read once, per model (engines_levels.py)
        from .capabilities import refuse_summarised

        if missing == "now":  # before any data are read
            refuse_summarised("missing_now", 3 if three else len(files), options.engine)
        archive, source, level1_file = load_summarised(files, build, options, say, 3 if three else len(files))
    else:
        archive, source = load_levels(files, build, cache_dir, say, 3 if three else None)
    level1_eq, level2_eqs, level3_eqs, level4_eqs = equations
    as_list = lambda e: [e] if isinstance(e, str) else list(e or ())  # noqa: E731
    eqs = [[level1_eq] if level1_eq else [], as_list(level2_eqs), as_list(level3_eqs), as_list(level4_eqs)]
    spec = model_spec_levels(archive, eqs[:archive.n_levels] if not any(eqs[archive.n_levels:]) else eqs, model,
                             options, title=title)
    check_capabilities(spec, options, OutputOptions(title=title), options.engine)
    analysis = analyse_levels(spec, archive, options, summarised_level1(archive, spec, level1_file, say))
    K = archive.n_levels
    given = {"level1": level1_eq, "level2": as_list(level2_eqs), "level3": as_list(level3_eqs)}
    if K == 4:
        given["level4"] = as_list(level4_eqs)
    given["model_file"] = Path(model).name if model else None
    ids_ = list(archive.id_names)
    meta = {"data_source": source, "title": spec.options.title, "ids": ids_, "model_given": given,
            "command_file": Path(model).name if model and str(model).lower().endswith(".hlm") and K == 3 else None,
            # the files given now, so the level-1 file and --keep read them even when the cached archive
            # recorded other (relative) paths, as the CLI does
            "source_files": tuple(files) if len(files) > 1 else None}
    results = Results(analysis, archive, meta)
    for message in results.failures:
        say(message + "; the results are not at the optimum")
    return results


def _fit_doc(model, what: str) -> dict:
    """A fit's JSON document from Results, a dict (a loaded JSON fit) or the path of a saved one."""
    if isinstance(model, Results):
        return model.to_dict()
    if isinstance(model, dict):
        return model
    if isinstance(model, (str, os.PathLike)):
        from .report.compare import read_fit

        return read_fit(str(model))
    raise ModelError(f"{what}: give a fitted model (hlmcli.fit's result), its JSON document or a saved JSON fit, "
                     f"not {type(model).__name__}")


def _model_name(model, k: int) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(model).stem
    return f"Model {k}"


class Comparison(dict):
    """`hlmcli compare`'s JSON document as a dict; printed, its text."""

    def __str__(self) -> str:
        from .report.compare import compare_text

        return compare_text(self)

    def __repr__(self) -> str:
        return str(self)


def compare(a, b, names: Sequence[str] | None = None) -> Comparison:
    """The deviance (likelihood-ratio) test of two fits of the same data and the variance explained,
    as `hlmcli compare`: `a` and `b` are fitted models, JSON documents or saved JSON fits."""
    from .report.compare import compare_fits

    name_a, name_b = names or (_model_name(a, 1) if not isinstance(a, Results) else "A",
                               _model_name(b, 2) if not isinstance(b, Results) else "B")
    return Comparison(compare_fits(_fit_doc(a, "a"), _fit_doc(b, "b"), name_a, name_b))


def table(models: Sequence, fmt: str | None = None, names: Sequence[str] | None = None, *, se: str = "auto",
          stars: bool = False, caption: str | None = None, notes: Sequence[str] = ()):
    """Several fits side by side, as `hlmcli table`: a DataFrame (models in columns: coefficients with
    their SEs below, variance components with τ's covariances and correlations, deviance, AIC, BIC,
    method, certificate, N, J), or with `fmt` ('csv', 'markdown', 'latex', 'html') the text."""
    from .report.tables import TableOptions, side_by_side, side_by_side_text

    models = list(models)
    docs = [_fit_doc(m, f"model {k}") for k, m in enumerate(models, start=1)]
    names = list(names) if names is not None else [_model_name(m, k) for k, m in enumerate(models, start=1)]
    if len(names) != len(docs):
        raise ModelError(f"{len(names)} names for {len(docs)} models; give one name per model")
    options = TableOptions(se=se, stars=stars, caption=caption, notes=tuple(notes))
    if fmt is None:
        return side_by_side(docs, names, options)
    return side_by_side_text(docs, names, fmt, options)


def fit_crossed(data: DataLike, formula: str, method: str = "REML", *, tau: str | None = None,
                max_iterations: int | None = None, title: str | None = None, file_format: str | None = None,
                delimiter: str | None = None, df: str | None = None, tests: Sequence[str] = (),
                prior_deviance: float | None = None, prior_params: int | None = None, constrain: Sequence[str] = ()):
    """Fit a model whose grouping factors are crossed (HLM 7's HCM2, and any mix of crossed and nested
    factors), as `hlmcli fit DATA --formula ...` does: e.g. 'attain ~ verbal + (1 | primary) + (1 | second)'.
    data: one file or DataFrame holding every column. tau="diagonal" splits every random term into
    uncorrelated effects; df="satterthwaite" gives lmerTest's d.f. and p-values; tests are --test's
    restrictions ('THETA1 = 0'); constrain --constrain's ties, named as tests names θs ('THETA1 = THETA2');
    prior_deviance and prior_params --compare-deviance's. Returns a
    results.CrossedResults (a `Results`); it is certified or says what failed (`.certified`, `.failures`)."""
    from .analysis.crossed_run import analyse_crossed
    from .io.readers import Table, check_frame_columns, read_table
    from .language.formula import crossed, diagonal_bars

    model = crossed(formula)
    if model is None:
        raise ModelError(f"the formula '{formula}' has one chain of nested grouping factors: fit it with hlmcli.fit")
    if tau == "diagonal":
        model = diagonal_bars(model)
    elif tau not in (None, "unstructured"):
        raise ModelError(f"tau='{tau}': give 'unstructured' or 'diagonal'")
    if method.upper() not in ("REML", "ML"):
        raise ModelError(f"method='{method}': give 'REML' or 'ML'")
    if is_dataframe(data):
        check_frame_columns(data, "data")
        table = Table(Path("<DataFrame>"), "dataframe", data.reset_index(drop=True))
    else:
        table = read_table(data, file_format, delimiter,
                           string_columns=tuple(name for bar in model.bars for name in bar.factor))
    from .results import CrossedResults

    analysis = analyse_crossed(table, model, formula, method.upper(), max_iterations, title, df or "none", tuple(tests),
                               prior_deviance, prior_params,
                               constraints=(constrain,) if isinstance(constrain, str) else tuple(constrain))
    return CrossedResults(analysis, meta={"data_source": analysis.source})
