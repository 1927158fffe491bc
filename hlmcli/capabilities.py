"""What hlmcli fits, as one table: for each kind of two-level model and each feature, either supported
or refused with the statistical reason. (Options that would do nothing in a combination, such as
--quadrature-points without --estimation agq or an HGLM option with a normal outcome, are usage
errors refused by flags.py before this check.) `check` is the one place a fit is refused for what it asks
(the command line, the API and `plot` all call it before fitting), and the README's matrix is
generated from the same table (`hlmcli capabilities`, kept current by tests/test_capabilities.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RefusedOption
from .spec import Engine, FitOptions, OutputOptions

# The kinds of two-level model, as the table's columns.
KINDS = {
    "linear": "linear (memory)",
    "linear-summary": "linear (stream, Dask)",
    "pql": "HGLM PQL",
    "laplace": "HGLM Laplace",
    "agq": "HGLM AGQ",
    "three-level": "three-level linear",
    "four-level": "four-level linear",
    "crossed": "cross-classified linear",
    "three-level-pql": "three-level HGLM PQL",
    "three-level-laplace": "three-level HGLM Laplace",
    "hglm-stream": "HGLM Laplace, AGQ (stream)",
    "three-level-agq": "three-level HGLM AGQ",
}
_LEVELS = ("three-level", "four-level")
THREE_LEVEL_HGLM = "three-level-pql"
THREE_LEVEL_LAPLACE = "three-level-laplace"
THREE_LEVEL_AGQ = "three-level-agq"  # a random intercept at each level (analysis/hglm_levels_agq.py)
_HGLM3 = (THREE_LEVEL_HGLM, THREE_LEVEL_LAPLACE, THREE_LEVEL_AGQ)

_RECORDS = ("needs the records themselves, which the per-unit summaries of the stream and Dask engines do not "
            "keep; fit with --engine memory")
HGLM_STREAM = "hglm-stream"
_HGLM_STREAM_RECORDS = ("the streamed HGLM keeps per unit only the modes and their variances, and passes over the "
                        "records spilled by unit; this needs the records in memory: fit with --engine memory")
_HGLM_STREAM_PLOT = ("hlmcli plot fits in memory and takes no --engine; the streamed fit keeps no per-record values "
                     "to draw: plot the model from the same files without --engine")
_HGLM_STREAM_WEIGHTS = ("the spill file carries no sampling weights yet (the pseudo-likelihood needs w_i|j per record "
                        "and w_j per unit in every pass); fit with --engine memory")
_HGLM_STREAM_FAMILY = ("the passes over the spilled records run the Bernoulli, binomial and Poisson likelihood; "
                       "{family} outcomes have parameters of their own (thresholds, θ or several logits) not "
                       "carried over blocks yet; fit with --engine memory")
_HGLM_SUMMARY = ("a binary, binomial or count outcome needs repeated passes over the records: it has no per-unit "
                 "sufficient statistics, as its likelihood changes with every value of γ and τ; fit with --engine memory")
_NO_DEVIANCE = ("a likelihood-ratio test needs a deviance, and PQL has none (it maximises a quasi-likelihood); "
                "use --estimation laplace or agq for both models")
_PQL_WEIGHTS = ("sampling weights in PQL: how HLM 7 weights its iterations (the working weights, the level-2 "
                "weights in the linearised fit, the normalisation) is not documented in any source at hand, and PQL "
                "has no likelihood for a pseudo-likelihood to weight; use --estimation laplace or agq (multilevel "
                "pseudo-maximum likelihood)")
_PQL_WEIGHTS_3 = ("sampling weights in PQL: a three-level HGLM is fitted by PQL here, and how HLM 7 weights it is not "
                  "documented in any source at hand; the weighted pseudo-likelihood needs Laplace over the nested "
                  "random effects")
_SATTERTHWAITE = ("Satterthwaite's d.f. come from the normal model's REML/ML covariance of the variance estimates; "
                  "HGLM tables use HLM 7's d.f.")
_HLM6 = ("HLM 5/6's N - F d.f. are a rule for the normal model's fixed slopes; HGLM tables use HLM 7's d.f., "
         "as HLM 7 prints them")
_HOMOGENEITY = ("an HGLM's level-1 variance is fixed by the mean (φ(1 - φ) or λ), so there is no level-1 variance "
                "to test for homogeneity")
_FULL_OUTPUT = "the unit-by-unit OLS regressions and least-squares estimates of --full-output are for a normal outcome"
_HLM6_K = ("HLM 5/6's N - F d.f. are HLM2's rule for the fixed level-1 slopes of a two-level model; three- and "
           "four-level tables use HLM 7's d.f. (HLM3/HLM4)")
_HOMOGENEITY_K = ("HLM 7's test of homogeneity of level-1 variance (homvar) is HLM2's, over the level-2 units' OLS "
                  "residual variances; HLM3 and HLM4 offer none, so there is no reference to match")
_FULL_OUTPUT_K = ("--full-output adds HLM2's unit-by-unit OLS regressions and least-squares estimates; HLM3 and HLM4 "
                  "print no such tables")
_ORDINAL_LINEAR = ("an ordinal outcome is not normal: it is fitted as an HGLM (--family ordinal with --estimation "
                   "pql, laplace or agq)")
_ORDINAL_CROSSED = ("hlmcli fits crossed factors for normal outcomes; an HGLM over crossed factors needs the Laplace or "
                    "AGQ likelihood over the crossed blocks, which is not built (lme4's glmer fits it)")
_NEGBIN_LINEAR = ("a negative binomial count is not normal: it is fitted as an HGLM (--family negbinomial with "
                  "--estimation laplace or agq)")
_NEGBIN_PQL = ("PQL's working model needs a variance function known up to a scale, and the negative binomial's "
               "(mu + mu^2/theta) depends on the unknown theta (HLM 7 has no such model); use --estimation laplace "
               "or agq, exact ML, which glmmTMB's nbinom2 matches")
_NEGBIN_CROSSED = ("hlmcli fits crossed factors for normal outcomes; an HGLM over crossed factors needs the Laplace "
                   "likelihood over the crossed blocks, which is not built (glmmTMB fits it)")
_NEGBIN_LEVELS = ("hlmcli fits negative binomial counts at two levels (Laplace, AGQ); at three levels that needs the "
                  "Laplace likelihood over nested random effects with theta, which is not built (and PQL has no NB "
                  "working model); models of four levels are linear")
_MULTI_LINEAR = ("a multinomial outcome is not normal: it is fitted as an HGLM (--family multinomial with --estimation "
                 "pql or laplace)")
_MULTI_AGQ = ("the random effects of the M - 1 logits are (M - 1)q dimensions per unit (2 or more), and adaptive "
              "quadrature over them is not built; use --estimation laplace")
_MULTI_CROSSED = ("hlmcli fits crossed factors for normal outcomes; an HGLM over crossed factors, a multinomial one "
                  "too, needs the Laplace likelihood over the crossed blocks, which is not built")
_MULTI_LEVELS = ("hlmcli fits multinomial outcomes at two levels (Laplace); at three levels that needs the Laplace "
                 "likelihood over nested random effects of every logit, which is not built; models of four levels "
                 "are linear")
_HGLM_LEVELS = ("hlmcli fits ordinal and multinomial outcomes at two levels, and binary, binomial and count outcomes (HGLM) at two "
                "levels and, by PQL or Laplace, at three; models of four levels are linear")
_PLOT_SUMMARY = ("hlmcli plot fits from the records (an archive or the data files) in memory; per-unit summaries hold "
                 "no level-1 residuals to draw; draw a saved fit's equation graph with 'plot equation FIT.json'")

_X_DF = ("HLM 7's d.f. rule for HCM2's fixed effects is not published, and HLM 5/6's N - F rule is for nested "
         "level-1 slopes; a cross-classified fit gives Satterthwaite's d.f. (--df satterthwaite, as lmerTest) "
         "and otherwise t-ratios without d.f. or p-values")
_X_UNITS = ("HLM2's unit-by-unit statistics (OLS per unit, the homogeneity test over units' residual variances) need "
            "units that hold their records; crossed factors split every group across the other factor's groups")
_X_WEIGHTS = ("sampling weights with crossed factors need a weight for each factor's groups and a scaling rule for "
              "crossed designs; the pseudo-likelihood rules (Pfeffermann et al. 1998, Rabe-Hesketh & Skrondal 2006) "
              "are for nested designs")
_X_SUMMARY = ("the blocked Cholesky of crossed factors needs Z1'Z2, which pairs the records' groups of two factors; "
              "per-unit summaries of one factor do not keep it; fit in memory")
_X_MISSING = ("a cross-classified fit reads one file and leaves out records with a missing value in a column the "
              "model uses (HLM's deletion at analysis)")
_CONSTRAIN_HGLM = ("not built yet for the streamed HGLM: its passes over the spilled records would need the "
                   "constrained design B_jH formed per block; fit with --engine memory")
_CONSTRAIN_AGQ3 = ("not built yet for a three-level HGLM by AGQ: its nested quadrature would need the constrained "
                   "design X·H; the PQL and Laplace fits have it")
_VKNOWN_SUMMARY = ("not built yet for the stream and Dask engines: the records must be scaled by their known "
                   "standard deviations before the per-unit summaries are formed; fit with --engine memory")
_VKNOWN_HGLM = ("a V-known model is normal at level 1 with a known variance; an HGLM's level-1 variance is fixed by "
                "its mean (φ(1 - φ), λ), so there is no variance to give")
_VKNOWN_LEVELS = ("not built yet for three and four levels: HLM 7's V-known is an HLM2 model (an estimate and its "
                  "sampling variance per unit)")
_VKNOWN_CROSSED = ("not built yet for cross-classified fits: their engine estimates one residual variance; the records "
                   "would need scaling by their known standard deviations")
_HETERO_SUMMARY = ("not built yet for the stream and Dask engines: each value of α rescales the records, so every "
                   "step needs the records again, which per-unit summaries do not keep; fit with --engine memory")
_HETERO_HGLM = ("an HGLM's level-1 variance is fixed by its mean (φ(1 - φ), λ); a model for it is the normal model's "
                "(heterol1var is HLM2's for normal outcomes)")
_HETERO_LEVELS = ("not built yet for three and four levels: HLM 7's heterol1var is HLM2's; the nested engines would "
                  "need the records rescaled at every α")
_HETERO_CROSSED = ("not built yet for cross-classified fits: their engine estimates one residual variance "
                   "(glmmTMB's dispformula fits it)")
_HMLM_SUMMARY = ("not built for the stream and Dask engines: a structured within-person covariance needs each "
                 "person's records by occasion at every step, which per-unit summaries do not keep; fit with "
                 "--engine memory")
_HMLM_HGLM = ("HMLM's within-person covariance is of a normal outcome; an HGLM's level-1 variance is fixed by its "
              "mean (φ(1 - φ), λ)")
_HMLM_LEVELS = ("not built for four levels: HLM 7's HMLM2 has one level above the persons (three levels); a "
                "fourth would need the determinant lemma once more in the engine")
_HMLM_CROSSED = "HMLM's persons are nested units; a cross-classified HMLM is not an HLM 7 model and is not built"
# With --level1-covariance (HMLM), options not built with the structured within-person covariance: refused.
LEVEL1_COVARIANCE_CONFLICTS = {
    "weights": "not built together: sampling weights would need the pseudo-likelihood over each person's occasions",
    "satterthwaite": "Satterthwaite's d.f. are not built for the structured fit; use --df hlm",
    "full_output": "its unit-by-unit OLS and least-squares tables assume one σ²",
    "constrain": "not built together yet",
    "known_variance": "a known level-1 variance has no within-person covariance to estimate; give one of the two",
    "level1_variance": "two models for the level-1 variance; give one (--level1-covariance heterogeneous lets σ² "
                       "differ by occasion)",
}
# HMLM2 (three levels): not built with the structured fit (at two levels, HMLM combines it over the fits).
LEVEL1_COVARIANCE_LEVELS = {
    "plausible_values": "at three levels (HMLM2) Rubin's rules would need the structured fit combined too, which is "
                        "not built; at two levels HMLM combines it",
}
# With --level1-variance, options that assume one level-1 variance or are not built with it: refused.
LEVEL1_VARIANCE_CONFLICTS = {
    "weights": "not built together yet: the pseudo-likelihood and the variance model would both rescale the records",
    "plausible_values": "Rubin's rules would need the α table combined too, which is not built; fit each on its own",
    "satterthwaite": "Satterthwaite's d.f. here would ignore the uncertainty in α; use --df hlm",
    "homogeneity": "HLM's test of homogeneity of level-1 variance is for one σ²; the likelihood-ratio test against "
                   "homogeneous σ² is printed with the α table",
    "full_output": "its unit-by-unit OLS and least-squares tables assume one σ²",
    "constrain": "not built together yet",
    "known_variance": "a known level-1 variance has no model to estimate; give one of the two",
}
# With --known-variance, options that assume an estimated level-1 variance: refused, never ignored.
KNOWN_VARIANCE_CONFLICTS = {
    "weights": "sampling weights and known sampling variances are two weightings of the records; give one",
    "plausible_values": "each plausible value would need its own known variances; fit each on its own",
    "satterthwaite": "Satterthwaite's d.f. here differentiate the deviance in σ², which a V-known model does not "
                     "estimate; use --df hlm",
    "homogeneity": "HLM's test of homogeneity of level-1 variance tests an estimated σ²; here the level-1 variances "
                   "are known (the χ² of the random effects tests τ = 0 against them)",
    "full_output": "its unit-by-unit OLS and least-squares tables use an estimated σ²",
    "constrain": "not built together yet; fit the constrained model with the tied predictors summed",
}
# With --constrain, options whose computation is of the unconstrained γ layout: refused, never ignored.
CONSTRAIN_CONFLICTS = {
    "weights": "the sandwich and the scaled weights are wired to the unconstrained γs; fit without sampling weights",
    "plausible_values": "Rubin's rules combine unconstrained fits; fit each plausible value or data set on its own",
    "full_output": "its unit-by-unit OLS and least-squares tables are of the unconstrained model",
    "multinomial": ("not built yet: each of the M - 1 logits has its own γs, and ties within or across logits need "
                    "a constrained design per logit; fit the tied predictors summed"),
}

_EMULATE = ("HLM 5/6's EM path (start, EM step, stop rule) is reconstructed for HLM2's two-level linear model from "
            "published HLM 6 output only; ")
_EMULATE_SUMMARY = _EMULATE + "HLM's start needs each unit's OLS, which the per-unit summaries keep, but it is not built there; fit with --engine memory"
_EMULATE_HGLM = _EMULATE + "an HGLM's PQL, Laplace or AGQ iteration is another path, with no published iterations to rebuild it from"
_EMULATE_LEVELS = _EMULATE + "HLM3's and HLM4's iterations are not"
_EMULATE_CROSSED = _EMULATE + "HCM2's iteration is not"
# With --emulate hlm6, options whose model HLM 5/6's EM (as reconstructed) does not fit: refused, never ignored.
EMULATE_CONFLICTS = {
    "weights": "the reconstructed EM is HLM 6's unweighted step; how HLM weights its iterations is not published",
    "plausible_values": "one emulation per fit is not combined by Rubin's rules; emulate each fit on its own",
    "constrain": "the reconstructed EM has no constrained γ step",
    "known_variance": "the reconstructed EM estimates σ²; a V-known model has another M step",
    "level1_variance": "the reconstructed EM has one σ²; heterol1var's iteration is not published",
    "level1_covariance": "HMLM's iteration is not the reconstructed EM",
    "tau_diagonal": "HLM's start and EM are reconstructed for an unstructured τ",
}


def _constrain_conflicts(kind: str) -> dict:
    """CONSTRAIN_CONFLICTS for a kind: a two-level linear model (in memory; also with plausible values or
    imputed data sets, each fit constrained) and a two-level HGLM by Laplace or AGQ take sampling weights (the pseudo-likelihood weights each record's and unit's contribution
    whatever the fixed design, so the fit on X·H and its sandwich, given back through H, are the
    constrained model's; no likelihood-ratio test of the ties)."""
    if kind == "linear":  # and each plausible value or imputed data set fitted constrained, then combined
        return {k: v for k, v in CONSTRAIN_CONFLICTS.items() if k not in ("weights", "plausible_values")}
    if kind in ("laplace", "agq"):
        return {k: v for k, v in CONSTRAIN_CONFLICTS.items() if k != "weights"}
    return CONSTRAIN_CONFLICTS


@dataclass(frozen=True)
class Feature:
    key: str
    label: str  # as the user writes it
    refused: dict  # kind -> reason; a kind not named supports the feature


def _k(reason: str) -> dict:
    """The same refusal for three and four levels."""
    return {kind: reason for kind in _LEVELS}


FEATURES = (
    Feature("api", "Python API (hlmcli.fit; crossed: hlmcli.fit_crossed)", {}),
    Feature("plot", "hlmcli plot (HGLM: the equation graph, on the link scale; three and four levels: equation, "
            "caterpillar and diagnostics (three-level HGLM: equation and caterpillar); cross-classified: caterpillar, "
            "one panel per factor)",
            {"linear-summary": _PLOT_SUMMARY, HGLM_STREAM: _HGLM_STREAM_PLOT}),
    Feature("table", "hlmcli table of saved fits", {}),
    Feature("compare", "hlmcli compare (likelihood-ratio test)", {"pql": _NO_DEVIANCE, THREE_LEVEL_HGLM: _NO_DEVIANCE}),
    Feature("formats", "--format csv|markdown|latex|html", {}),
    Feature("test", "--test (Wald tests of γ; cross-classified: of θ, THETA1 = 0)", {}),
    Feature("constrain", "--constrain (ties among γs, fitted as one; the likelihood-ratio test of the ties by ML; "
            "HGLM: every family but multinomial, ties among γs (not thresholds), no test under PQL; cross-classified: of θ, THETA1 = THETA2)",
            {HGLM_STREAM: _CONSTRAIN_HGLM}),
    Feature("known_variance", "--known-variance (V-known: each record's level-1 variance known; meta-analysis)",
            {"linear-summary": _VKNOWN_SUMMARY, "pql": _VKNOWN_HGLM, "laplace": _VKNOWN_HGLM, "agq": _VKNOWN_HGLM,
             HGLM_STREAM: _VKNOWN_HGLM,
             **_k(_VKNOWN_LEVELS), "crossed": _VKNOWN_CROSSED, THREE_LEVEL_HGLM: _VKNOWN_HGLM,
             THREE_LEVEL_LAPLACE: _VKNOWN_HGLM}),
    Feature("level1_variance", "--level1-variance (heterogeneous level-1 variance: log σ² linear in X; HLM 7's "
            "heterol1var)", {"linear-summary": _HETERO_SUMMARY, "pql": _HETERO_HGLM, "laplace": _HETERO_HGLM,
                             HGLM_STREAM: _HETERO_HGLM,
                             "agq": _HETERO_HGLM, **_k(_HETERO_LEVELS), "crossed": _HETERO_CROSSED,
                             THREE_LEVEL_HGLM: _HETERO_HGLM, THREE_LEVEL_LAPLACE: _HETERO_HGLM}),
    Feature("level1_covariance", "--level1-covariance with --occasion (HMLM: unrestricted, homogeneous, "
            "heterogeneous or AR(1) within-person covariance over occasions)",
            {"linear-summary": _HMLM_SUMMARY, "pql": _HMLM_HGLM, "laplace": _HMLM_HGLM, "agq": _HMLM_HGLM,
             "four-level": _HMLM_LEVELS, "crossed": _HMLM_CROSSED, THREE_LEVEL_HGLM: _HMLM_HGLM,
             THREE_LEVEL_LAPLACE: _HMLM_HGLM, HGLM_STREAM: _HMLM_HGLM}),
    Feature("compare_deviance", "--compare-deviance", {"pql": _NO_DEVIANCE, THREE_LEVEL_HGLM: _NO_DEVIANCE}),
    Feature("residuals", "--residuals-l1/--residuals-l2 (... -l4; cross-classified: -l2, -l3, -l4 one file per factor)",
            {"linear-summary": _RECORDS, HGLM_STREAM: _HGLM_STREAM_RECORDS}),
    Feature("keep", "--keep", {"linear-summary": _RECORDS, HGLM_STREAM: _HGLM_STREAM_RECORDS}),
    Feature("json_out", "--json-out", {}),
    Feature("tau_diagonal", "--tau diagonal", {}),
    Feature("satterthwaite", "--df satterthwaite",
            {"pql": _SATTERTHWAITE, "laplace": _SATTERTHWAITE, "agq": _SATTERTHWAITE, THREE_LEVEL_HGLM: _SATTERTHWAITE,
             HGLM_STREAM: _SATTERTHWAITE,
             THREE_LEVEL_LAPLACE: _SATTERTHWAITE}),
    Feature("df_hlm6", "--df hlm6", {"pql": _HLM6, "laplace": _HLM6, "agq": _HLM6, HGLM_STREAM: _HLM6, **_k(_HLM6_K), "crossed": _X_DF,
                                     THREE_LEVEL_HGLM: _HLM6_K, THREE_LEVEL_LAPLACE: _HLM6_K}),
    Feature("homogeneity", "--test-homogeneity",
            {"pql": _HOMOGENEITY, "laplace": _HOMOGENEITY, "agq": _HOMOGENEITY, HGLM_STREAM: _HOMOGENEITY, **_k(_HOMOGENEITY_K), "crossed": _X_UNITS,
             THREE_LEVEL_HGLM: _HOMOGENEITY, THREE_LEVEL_LAPLACE: _HOMOGENEITY}),
    Feature("full_output", "--full-output",
            {"pql": _FULL_OUTPUT, "laplace": _FULL_OUTPUT, "agq": _FULL_OUTPUT, HGLM_STREAM: _FULL_OUTPUT, **_k(_FULL_OUTPUT_K), "crossed": _X_UNITS,
             THREE_LEVEL_HGLM: _FULL_OUTPUT_K, THREE_LEVEL_LAPLACE: _FULL_OUTPUT_K}),
    Feature("weights", "--weight1 ... --weight4 (sampling weights; HGLM: pseudo-likelihood by Laplace or AGQ, "
            "every family)",
            {"linear-summary": _RECORDS, "pql": _PQL_WEIGHTS, "crossed": _X_WEIGHTS, THREE_LEVEL_HGLM: _PQL_WEIGHTS_3,
             HGLM_STREAM: _HGLM_STREAM_WEIGHTS}),
    Feature("plausible_values", "--plausible-values/--imputed (cross-classified: one fit each, Rubin's rules, D1 "
            "for --test)",
            {"linear-summary": _RECORDS, HGLM_STREAM: _HGLM_STREAM_RECORDS}),
    Feature("missing_now", "--missing now", {"linear-summary": _RECORDS, "crossed": _X_MISSING,
                                             HGLM_STREAM: _HGLM_STREAM_RECORDS}),
    Feature("ordinal", "--family ordinal (cumulative logit, probit or cloglog link; HLM 7's nonlin:ordinal,NCAT; PQL as "
            "HLM 7, Laplace or AGQ)",
            {"linear": _ORDINAL_LINEAR, "linear-summary": _ORDINAL_LINEAR, **_k(_HGLM_LEVELS),
             "crossed": _ORDINAL_CROSSED, THREE_LEVEL_HGLM: _HGLM_LEVELS, THREE_LEVEL_LAPLACE: _HGLM_LEVELS,
             HGLM_STREAM: _HGLM_STREAM_FAMILY.format(family="ordinal")}),
    Feature("negbinomial", "--family negbinomial (NB2 counts, Var = mu + mu^2/theta, log link, theta estimated)",
            {"linear": _NEGBIN_LINEAR, "linear-summary": _NEGBIN_LINEAR, "pql": _NEGBIN_PQL, "three-level": _NEGBIN_LEVELS,
             "four-level": _HGLM_LEVELS,
             "crossed": _NEGBIN_CROSSED, THREE_LEVEL_HGLM: _NEGBIN_LEVELS, THREE_LEVEL_LAPLACE: _NEGBIN_LEVELS,
             HGLM_STREAM: _HGLM_STREAM_FAMILY.format(family="negbinomial")}),
    Feature("multinomial", "--family multinomial (baseline-category logits, the last category the reference; HLM 7's "
            "nonlin:multinomial,NCAT; PQL as HLM 7, or Laplace)",
            {"linear": _MULTI_LINEAR, "linear-summary": _MULTI_LINEAR, "agq": _MULTI_AGQ,
             "three-level": _MULTI_LEVELS, "four-level": _HGLM_LEVELS, "crossed": _MULTI_CROSSED,
             THREE_LEVEL_HGLM: _MULTI_LEVELS, THREE_LEVEL_LAPLACE: _MULTI_LEVELS,
             HGLM_STREAM: _HGLM_STREAM_FAMILY.format(family="multinomial")}),
    Feature("emulate", "--emulate hlm6 (HLM 5/6's EM path and stop rule beside the certified optimum, with the "
            "deviance gap; --emulate hlm7 is refused: HLM 7's accelerated iteration is not reproduced)",
            {"linear-summary": _EMULATE_SUMMARY, "pql": _EMULATE_HGLM, "laplace": _EMULATE_HGLM, "agq": _EMULATE_HGLM,
             HGLM_STREAM: _EMULATE_HGLM, **_k(_EMULATE_LEVELS), "crossed": _EMULATE_CROSSED,
             THREE_LEVEL_HGLM: _EMULATE_HGLM, THREE_LEVEL_LAPLACE: _EMULATE_HGLM}),
    Feature("stream_dask", "--engine stream/dask (three and four levels: what needs the records is refused as in the "
            "linear (stream, Dask) column, but the EB residual files of levels 2 to 4 are written; a two-level HGLM "
            "by PQL, Laplace or AGQ: --engine stream passes over the records spilled by unit, --engine dask over "
            "the records persisted as partitions of whole units; PQL there also refuses what the HGLM Laplace, AGQ "
            "(stream) column refuses)",
            {"crossed": _X_SUMMARY,
             THREE_LEVEL_HGLM: _HGLM_SUMMARY, THREE_LEVEL_LAPLACE: _HGLM_SUMMARY}),
)

# The three-level AGQ column: the Laplace column's refusals, for the same reasons (the same search, certificate,
# report and outputs), except its weights. Random slopes are refused by the model (hglm_levels_agq.py).
_AGQ3_OWN = {
    "constrain": _CONSTRAIN_AGQ3,
    "weights": ("the weighted pseudo-likelihood is not carried through the nested quadrature (level-2 weights inside "
                "each level-3 unit's integral at every node, level-3 weights outside it); not built"),
}
for _f in FEATURES:
    _why = _AGQ3_OWN.get(_f.key, _f.refused.get(THREE_LEVEL_LAPLACE))
    if _why is not None:
        _f.refused[THREE_LEVEL_AGQ] = _why
_BY_KEY = {f.key: f for f in FEATURES}


def n_levels_of(spec) -> int:
    """The number of levels of a spec (ModelSpec.n_levels; crossed fits are checked by table key, cli/crossed.py)."""
    return spec.n_levels


def hglm_asked(fit: FitOptions | None) -> bool:
    """Whether the options ask for a binary, binomial or count outcome."""
    return fit is not None and fit.family is not None and str(getattr(fit.family, "value", fit.family)) != "normal"


def kind_of(spec, engine: Engine | str = Engine.MEMORY, fit: FitOptions | None = None) -> str:
    """The table's column for a model: its levels (three, four; a three-level HGLM), else linear (by
    engine) or the HGLM estimation."""
    levels = n_levels_of(spec)
    if levels == 3 and hglm_asked(fit):
        est = getattr(fit.estimation, "value", fit.estimation)
        return {"laplace": THREE_LEVEL_LAPLACE, "agq": THREE_LEVEL_AGQ}.get(est, THREE_LEVEL_HGLM)
    if levels > 2:
        return _LEVELS[levels - 3]
    if spec.options.family == "normal":
        return "linear" if Engine(engine) == Engine.MEMORY else "linear-summary"
    if Engine(engine) != Engine.MEMORY and spec.options.estimation in ("laplace", "agq"):
        return HGLM_STREAM
    return spec.options.estimation


def reason(feature: str, kind: str) -> str | None:
    """Why `feature` is refused for `kind`, or None when it is supported."""
    return _BY_KEY[feature].refused.get(kind)


def features_asked(spec, fit: FitOptions, out: OutputOptions) -> list[str]:
    """The features a fit asks for, from its options and its model file (a .hlm file's resfil1:, weights...)."""
    o = spec.options
    asked = {
        "residuals": bool(out.residuals_l1 or out.residuals_l2 or out.residuals_l3 or out.residuals_l4
                          or o.residuals_l1 or o.residuals_l2 or any(o.residuals)),
        "keep": bool(out.keep),
        "json_out": bool(out.json_out),
        "formats": out.out_format not in ("text", "json"),
        "test": bool(fit.tests or o.hypotheses),
        "constrain": bool(fit.constraints),
        "known_variance": bool(fit.known_variance),
        "level1_variance": bool(fit.level1_variance),
        "level1_covariance": bool(getattr(fit, "level1_covariance", None) or getattr(fit, "occasion", None)),
        "compare_deviance": (fit.compare_deviance if o.prior_deviance is None else o.prior_deviance) is not None,
        "tau_diagonal": (fit.tau or o.tau) == "diagonal",
        "satterthwaite": fit.df_method == "satterthwaite",
        "df_hlm6": fit.df_method == "hlm6",
        "homogeneity": bool(fit.test_homogeneity or o.homogeneity),
        "full_output": bool(fit.full_output or o.full_output),
        "weights": bool(fit.weight1 or fit.weight2 or fit.weight3 or fit.weight4 or o.weight1 or o.weight2),
        "plausible_values": bool(fit.plausible_values or fit.imputed),
        "stream_dask": Engine(fit.engine) != Engine.MEMORY,
        "ordinal": (fit.family or o.family) == "ordinal",
        "negbinomial": (fit.family or o.family) == "negbinomial",
        "multinomial": (fit.family or o.family) == "multinomial",
        "emulate": bool(getattr(fit, "emulate", None)),
    }
    return [key for key, on in asked.items() if on]


def refuse(feature: str, kind: str, label: str | None = None) -> None:
    """Raise the one-line refusal of `feature` for `kind`, if the table has one; `label`: the options
    the user gave, where the feature has several (default: the table's label)."""
    why = reason(feature, kind)
    if why:
        label = label or _BY_KEY[feature].label.split(' (')[0]
        raise RefusedOption(f"{label}: not available for a {KINDS[kind]} fit: {why}")


def _given_label(feature: str, spec, fit: FitOptions) -> str | None:
    """The weight options the user gave (--weight2, or --weight1/--weight3), so the refusal names them."""
    if feature != "weights":
        return None
    given = [f"--weight{k}" for k in range(1, 5)
             if getattr(fit, f"weight{k}", None) or getattr(spec.options, f"weight{k}", None)]
    return "/".join(given) or None


def refuse_family(n_levels: int, fit: FitOptions) -> None:
    """HGLM options for a model of four or more levels, or for a normal outcome at three, and a
    three-level HGLM's estimation other than PQL or Laplace: refused in one line with the reason."""
    if n_levels == 3 and hglm_asked(fit):
        est = getattr(fit.estimation, "value", fit.estimation)
        if est not in (None, "pql", "laplace", "agq"):
            raise RefusedOption(f"--estimation {est}: not available for a three-level HGLM fit; use --estimation pql, "
                                "laplace or agq")
        kind = KINDS[{"laplace": THREE_LEVEL_LAPLACE, "agq": THREE_LEVEL_AGQ}.get(est, THREE_LEVEL_HGLM)]
        method = {"laplace": "by Laplace", "agq": "by AGQ"}.get(est, "by PQL")
        # options the three-level fits would not use: refused, never ignored
        for name, value, why in (
                ("quadrature-points", fit.quadrature_points if est != "agq" else None,
                 f"it is for --estimation agq, and this three-level HGLM is fitted {method}"),
                ("separation", fit.separation, f"the three-level fit {method} cannot hold a separated coefficient at "
                 "a bound (a separating predictor is refused before fitting, naming it)"),
                ("link", fit.link, "it chooses the cumulative link of --family ordinal at two levels; a three-level "
                 "HGLM uses its family's canonical link, as HLM3")):
            if value is not None:
                raise RefusedOption(f"--{name}: not available for a {kind} fit: {why}; drop --{name}")
        return
    given = [name for name, value in (("family", fit.family), ("trials", fit.trials), ("exposure", fit.exposure),
                                      ("overdispersion", fit.overdispersion), ("estimation", fit.estimation),
                                      ("quadrature-points", fit.quadrature_points), ("separation", fit.separation),
                                      ("link", fit.link))
             if value is not None and not (name == "family" and value == "normal")]
    if given:
        raise RefusedOption(f"{', '.join('--' + g for g in given)}: not available for a {KINDS[_LEVELS[n_levels - 3]]} fit: "
                         + _HGLM_LEVELS)


def check(spec, fit: FitOptions, out: OutputOptions, engine: Engine | str = Engine.MEMORY,
          extra: tuple[str, ...] = ()) -> None:
    """Refuse, in one line with its reason, the first feature this kind of model does not support.
    `extra` names features asked outside the options (e.g. 'missing_now' from the archive build)."""
    kind = kind_of(spec, engine, fit)
    if kind in _LEVELS or kind in _HGLM3:
        refuse_family(n_levels_of(spec), fit)
    asked = features_asked(spec, fit, out) + list(extra)
    for key in asked:
        refuse(key, kind, _given_label(key, spec, fit))
    if kind == "pql" and Engine(engine) != Engine.MEMORY:
        # PQL over the spilled records: the PQL column's refusals (above) and the streamed fit's own
        for key in asked:
            why = reason(key, HGLM_STREAM)
            if why:
                label = _given_label(key, spec, fit) or _BY_KEY[key].label.split(' (')[0]
                raise RefusedOption(f"{label}: not available for an HGLM PQL (stream) fit: {why}")
    for feature, option, conflicts in (("level1_covariance", "--level1-covariance",
                                        {**LEVEL1_COVARIANCE_CONFLICTS,
                                         **(LEVEL1_COVARIANCE_LEVELS if kind in _LEVELS else {})}),
                                       ("level1_variance", "--level1-variance", LEVEL1_VARIANCE_CONFLICTS),
                                       ("known_variance", "--known-variance", KNOWN_VARIANCE_CONFLICTS),
                                       ("constrain", "--constrain", _constrain_conflicts(kind)),
                                       ("emulate", "--emulate hlm6", EMULATE_CONFLICTS)):
        if feature in asked:
            for key in asked:
                if key in conflicts:
                    label = _given_label(key, spec, fit) or _BY_KEY[key].label.split(" (")[0]
                    raise RefusedOption(f"{label} with {option}: not available: {conflicts[key]}")
    if kind in _LEVELS and Engine(engine) != Engine.MEMORY:
        # three or four levels from per-level-2-unit summaries: what needs the records is refused as for
        # two levels; the EB residual files of levels 2 to 4 need only the units' record counts
        for key in asked:
            if not (key == "residuals" and not (out.residuals_l1 or spec.options.residuals_l1)):
                refuse_summarised(key, n_levels_of(spec), engine)


def refuse_summarised(feature: str, n_levels: int, engine: Engine | str) -> None:
    """A fit of three or more levels from per-level-2-unit summaries (--engine stream/dask) asking for
    what needs the records: the linear (stream, Dask) column's refusal, in one line. Called by `check`,
    and before any data are read for what the build options ask (--missing now)."""
    why = reason(feature, "linear-summary")
    if why:
        label = "--residuals-l1" if feature == "residuals" else _BY_KEY[feature].label.split(" (")[0]
        raise RefusedOption(f"{label}: not available with --engine {Engine(engine).value} for a "
                         f"{KINDS[_LEVELS[n_levels - 3]]} fit: {why}")


def markdown_table() -> str:
    """The README's matrix: ✓ where supported, else a numbered note with the reason."""
    notes: list[str] = []
    header = "| Feature | " + " | ".join(KINDS.values()) + " |"
    rows = [header, "|" + "---|" * (len(KINDS) + 1)]
    for f in FEATURES:
        cells = []
        for kind in KINDS:
            why = f.refused.get(kind)
            if why is None:
                cells.append("✓")
            else:
                if why not in notes:
                    notes.append(why)
                cells.append(f"no ({notes.index(why) + 1})")
        rows.append(f"| {f.label.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    rows.append("")
    rows += [f"{k}. {why}" for k, why in enumerate(notes, start=1)]
    return "\n".join(rows) + "\n"
