"""Options that would do nothing in the combination given: refused in one line (exit 2), never ignored.

A user who types `--quadrature-points 25` believes the fit used 25 points; if the fit is PQL or the
outcome is normal it did not, and the output would not say so. Each rule names the option, says
what it is for, and what to do. The functions are pure: the command line decides which options
were given (click's parameter source) and passes the facts of the run.
"""

from __future__ import annotations

from ..errors import EXIT_USAGE, HlmError


class ConflictingOptions(HlmError):
    """Options that do not go together (exit 2, one line)."""

    exit_code = EXIT_USAGE


# The options that say how to build an archive from two data files: with an archive they would be ignored.
BUILD_OPTIONS = ("--id", "--id1", "--id2", "--l1-vars", "--l2-vars", "--missing", "--drop-unmatched", "--delimiter",
                 "--data-format")
HGLM_OPTIONS = ("--trials", "--exposure", "--overdispersion", "--estimation", "--quadrature-points", "--separation",
                "--link")
# plot: the kinds each option draws with
PLOT_KINDS = {"--x": ("equation", "units"), "--by": ("equation",), "--sample": ("units",), "--seed": ("units",),
              "--coef": ("shrinkage", "caterpillar", "diagnostics", "eb-ols")}


def _refuse(message: str) -> None:
    raise ConflictingOptions(message)


def check_fit_options(given: set[str], *, archive: str | None, engine: str, hlm_file: bool, out_format: str,
                      outputs: bool) -> None:
    """The rules that need no model: `archive` is the archive's name when DATA is one archive,
    `hlm_file` whether --model is an HLM 7 command file, `outputs` whether -o, --json-out or a
    residual file is asked for on the command line."""
    if "--scheduler" in given and engine != "dask":
        _refuse("--scheduler is the Dask scheduler for --engine dask; give --engine dask too, or drop --scheduler")
    check_archive_options(given, archive)
    if not hlm_file:
        for option, what in (("--force", "lets a .hlm file's resfil1name:/resfil2name: overwrite existing files"),
                             ("--allow-outside", "lets a .hlm file's output names point outside its folder")):
            if option in given:
                _refuse(f"{option} {what}, and no .hlm command file is given (--model FILE.hlm); drop {option}")
        if "--keep-failed-output" in given and not outputs:
            _refuse("--keep-failed-output writes -o, --json-out and residual files of a fit that is not certified; "
                    "none is asked for (stdout is printed anyway), so drop it or give -o FILE")
        if "--compare-params" in given and "--compare-deviance" not in given:
            _refuse("--compare-params is the parameter count of the prior model of --compare-deviance; "
                    "give --compare-deviance too, or drop --compare-params")
        if "--hlm-names" in given and not given & {"--residuals-l1", "--residuals-l2", "--residuals-l3", "--residuals-l4"}:
            _refuse("--hlm-names names the residual files' columns; give --residuals-l1 or --residuals-l2 too")
        if "--ols-units" in given and "--full-output" not in given:
            _refuse("--ols-units sets how many units' OLS regressions --full-output prints; give --full-output too, "
                    "or drop --ols-units")
    if "--allow-unequal-imputations" in given and "--imputed" not in given:
        _refuse("--allow-unequal-imputations is for --imputed data sets (it lets their records differ); drop it")
    if "--timestamp" in given and out_format != "text":
        _refuse(f"--timestamp adds the date to the text output, and --format {out_format} has none (it stays "
                "reproducible); drop --timestamp")


def check_archive_options(given: set[str], archive: str | None) -> None:
    """`archive`: the archive's name when DATA is one archive (fit, model, plot), else None."""
    build = [o for o in BUILD_OPTIONS if o in given]
    if archive is not None and build:
        _refuse(f"{', '.join(build)}: these say how to build an archive from two data files, and {archive} is an "
                "archive already built (its ids and variables are fixed); drop them, or rebuild it with 'hlmcli mdm build'")


def check_model_options(given: set[str], *, family: str, estimation: str | None, full_output: bool,
                        prior_deviance: bool) -> None:
    """The rules that need the model as specified (family, estimation, options from a .hlm file)."""
    if family == "normal":
        hglm = [o for o in HGLM_OPTIONS if o in given]
        if hglm:
            _refuse(f"{', '.join(hglm)}: for binary, binomial and count outcomes (--family bernoulli, binomial or "
                    f"poisson), and this model's outcome is normal; give --family, or drop {'it' if len(hglm) == 1 else 'them'}")
    else:
        if "--trials" in given and family != "binomial":
            _refuse(f"--trials is the number of trials of --family binomial, and this model is {family}; drop --trials")
        if "--link" in given and family != "ordinal":
            _refuse(f"--link chooses the cumulative link of --family ordinal, and this model is {family} (whose link is "
                    "its canonical one, as in HLM 7); drop --link")
        if "--link" in given and family == "ordinal" and estimation not in ("laplace", "agq"):
            _refuse(f"--link is for --estimation laplace or agq (HLM 7's PQL fits the logit link only), and this fit "
                    f"is {estimation or 'pql'}; give --estimation laplace or agq, or drop --link")
        if "--separation" in given and family in ("ordinal", "multinomial"):
            _refuse(f"--separation is for binary, binomial and count outcomes (their separation search); the {family} "
                    "fit has none, so drop --separation")
        if "--exposure" in given and family not in ("poisson", "negbinomial"):
            _refuse(f"--exposure is the exposure of --family poisson or negbinomial, and this model is {family}; "
                    "drop --exposure")
        if "--overdispersion" in given and family == "negbinomial":
            _refuse("--overdispersion is PQL's quasi-likelihood scale; --family negbinomial estimates its own "
                    "dispersion θ (Var = μ + μ²/θ); drop --overdispersion")
        if "--overdispersion" in given and family in ("bernoulli", "ordinal", "multinomial"):
            _refuse("--overdispersion cannot be estimated for a 0/1 outcome (the Bernoulli variance is fixed by its "
                    "mean); drop it")
        if "--overdispersion" in given and estimation not in (None, "pql"):
            _refuse(f"--overdispersion is a quasi-likelihood scale, for --estimation pql, and this fit is {estimation}; "
                    "drop one")
        if "--quadrature-points" in given and estimation != "agq":
            _refuse(f"--quadrature-points is for --estimation agq, and this fit is {estimation or 'pql'}; "
                    "give --estimation agq, or drop --quadrature-points")
        if "--reml" in given and estimation in ("laplace", "agq"):
            _refuse(f"--reml: {estimation} maximises the marginal likelihood (full ML); REML applies to PQL only")
        if "--max-iterations" in given:
            _refuse("--max-iterations is HLM's iteration limit of the normal model; the HGLM engines have their own "
                    "limits and do not use it, so drop it")
    if "--ols-units" in given and not full_output:
        _refuse("--ols-units sets how many units' OLS regressions --full-output prints; give --full-output too, "
                "or drop --ols-units")
    if "--compare-params" in given and not prior_deviance:
        _refuse("--compare-params is the parameter count of the prior model of --compare-deviance; "
                "give --compare-deviance too, or drop --compare-params")


def check_plot_options(given: set[str], kind: str, saved_fit: bool) -> None:
    for option, kinds in PLOT_KINDS.items():
        if option in given and kind not in kinds:
            listed = " and ".join(kinds) if len(kinds) < 3 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
            _refuse(f"{option} is for {listed} plots, not {kind}; drop it")
    if "--x-range" in given and not saved_fit:
        _refuse("--x-range sets the x axis of an equation plot drawn from a saved JSON fit; with data the axis "
                "follows the data, so drop it")


def check_build_options(given: set[str], template: bool) -> None:
    if not template:
        for option in ("--force", "--allow-outside"):
            if option in given:
                _refuse(f"{option} is for the archive name a template (--template FILE.mdmt) gives; "
                        f"without a template -o names the archive, so drop {option}")
