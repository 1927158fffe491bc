# Reference for Satterthwaite d.f. at a boundary of a three-level model, where they depend on how
# the variance parameters are coded: tests/data/three_level/boundary_corr.csv (made by
# three_level_boundary_data.py) has an uncentred YEAR (2000..2004) whose random slope at level 3 is
# estimated with a correlation of −1 with the intercept (τβ of rank 1) under ML.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/three_level_boundary_satterthwaite.R
# Writes:  tests/data/three_level/boundary_corr.json (read by tests/test_levels_stats.py)
#
# lmerTest's d.f. at a boundary depend on where a predictor's zero lies (its θ is the Cholesky
# factor of τ/σ², not a smooth function of τ there); hlmcli computes them in coordinates where the
# random columns are centred (invariant to the predictor's location), which for a centred YEAR are
# lmerTest's own. So the reference is lmerTest on CYEAR = YEAR − mean(YEAR): the slope's d.f., and
# the d.f. of the uncentred intercept as the contrast (1, −mean(YEAR)) (contest1D). Also stored: the
# same model with YEAR uncentred, where lme4 (bobyqa, rhoend 1e-12, polished) stops at a higher
# deviance and lmerTest's d.f. are about 160 (the location dependence of issue 20); and glmmTMB's ML
# deviance on CYEAR as a second tool for the optimum.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(glmmTMB)
  library(jsonlite)
})

d <- read.csv("tests/data/three_level/boundary_corr.csv")
d$CYEAR <- d$YEAR - mean(d$YEAR)

polish <- function(form, data) {
  ctrl <- lme4::lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6),
                            check.conv.singular = "ignore", calc.derivs = FALSE)
  best <- lme4::lmer(form, data = data, REML = FALSE, control = ctrl)
  for (opt in c("Nelder_Mead", "bobyqa")) {
    oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
          else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
    f2 <- tryCatch(update(best, start = getME(best, "theta"),
                          control = lme4::lmerControl(optimizer = opt, optCtrl = oc, check.conv.singular = "ignore",
                                                      calc.derivs = FALSE)),
                   error = function(e) NULL)
    if (!is.null(f2) && deviance(f2) < deviance(best)) best <- f2
  }
  best
}

lmertest <- function(form) {
  fit <- polish(form, d)
  devfun <- lme4::lmer(form, data = d, REML = FALSE, devFunOnly = TRUE)
  list(fit = fit, lt = lmerTest:::as_lmerModLT(fit, devfun))
}

centred <- lmertest(Y ~ 1 + CYEAR + (1 + CYEAR | L3) + (1 | L3:L2))
uncentred <- lmertest(Y ~ 1 + YEAR + (1 + YEAR | L3) + (1 | L3:L2))
cf <- summary(centred$lt)$coefficients
intercept <- lmerTest::contest1D(centred$lt, c(1, -mean(d$YEAR)))
vc <- VarCorr(centred$fit)
tmb <- glmmTMB(Y ~ 1 + CYEAR + (1 + CYEAR | L3) + (1 | L3:L2), data = d, REML = FALSE,
               control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14)))
cu <- summary(uncentred$lt)$coefficients
out <- list(
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  lmerTest = as.character(packageVersion("lmerTest")),
                  glmmTMB = as.character(packageVersion("glmmTMB"))),
  mean_year = mean(d$YEAR),
  centred = list(formula = "Y ~ 1 + CYEAR + (1 + CYEAR | L3) + (1 | L3:L2)", deviance = deviance(centred$fit),
                 theta = unname(getME(centred$fit, "theta")), sigma2 = sigma(centred$fit)^2,
                 tau_l3 = unname(as.matrix(vc[["L3"]])), tau_l2 = unname(as.matrix(vc[["L3:L2"]])),
                 slope = list(est = cf["CYEAR", "Estimate"], se = cf["CYEAR", "Std. Error"], df = cf["CYEAR", "df"]),
                 intercept_at_year_0 = list(est = intercept$Estimate, se = intercept$`Std. Error`, df = intercept$df),
                 glmmtmb_deviance = -2 * as.numeric(logLik(tmb))),
  uncentred = list(formula = "Y ~ 1 + YEAR + (1 + YEAR | L3) + (1 | L3:L2)", deviance = deviance(uncentred$fit),
                   theta = unname(getME(uncentred$fit, "theta")),
                   df = list(intercept = cu["(Intercept)", "df"], slope = cu["YEAR", "df"])))
writeLines(toJSON(out, digits = I(17), auto_unbox = TRUE, pretty = TRUE), "tests/data/three_level/boundary_corr.json")
