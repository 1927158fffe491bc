# Reference values for the three-level front end's centring (hlmcli/design3.py): an EG model whose
# predictors are centred in every way HLM3 allows, built here by hand and fitted with lme4.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/three_level_centring_lme4.R
#
# Reads:   sample_data/eg/eg_l1.csv, eg_l2.csv, eg_l3.csv (mlmRev::egsingle as HLM's EG files)
# Writes:  tests/data/three_level/eg_centring.json (read by tests/test_three_level_cli.py)
#
# The model, as hlmcli writes it:
#   MATH = p0 + p1*group(YEAR) + e
#   p0 = b00 + b01*mean(YEAR) + b02*group(FEMALE) + r0     p1 = b10 + b11*BLACK + r1
#   b00 = g000 + g001*grand(LOWINC) + u00    b01 = g010    b02 = g020
#   b10 = g100 + g101*grand(LOWINC) + u10    b11 = g110
# Centring, as HLM3 defines it: group(YEAR) is YEAR minus the child's mean over its records;
# mean(YEAR) is that child mean; group(FEMALE) is FEMALE minus the mean over the children of the
# child's school (children, not records, are averaged); grand(LOWINC) is LOWINC minus the mean
# over the 60 schools.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

d <- "sample_data/eg/"
l1 <- read.csv(paste0(d, "eg_l1.csv"))
l2 <- read.csv(paste0(d, "eg_l2.csv"))
l3 <- read.csv(paste0(d, "eg_l3.csv"))
l2$FEMALE_gc <- l2$FEMALE - ave(l2$FEMALE, l2$SCHOOLID)
l3$LOWINC_grand <- l3$LOWINC - mean(l3$LOWINC)
eg <- merge(merge(l1, l2[, c("CHILDID", "FEMALE_gc", "BLACK")], by = "CHILDID"), l3[, c("SCHOOLID", "LOWINC_grand")],
            by = "SCHOOLID")
eg$mean_YEAR <- ave(eg$YEAR, eg$CHILDID)
eg$YEAR_gc <- eg$YEAR - eg$mean_YEAR
form <- MATH ~ 1 + LOWINC_grand + mean_YEAR + FEMALE_gc + YEAR_gc + LOWINC_grand:YEAR_gc + BLACK:YEAR_gc +
  (1 + YEAR_gc | SCHOOLID) + (1 + YEAR_gc | SCHOOLID:CHILDID)
labels <- c("γ000", "γ001", "γ010", "γ020", "γ100", "γ101", "γ110")

# the criterion each method minimises; note deviance(fit, REML = TRUE) is not it (lme4 returns the ML
# deviance at the REML estimates), REMLcrit() is
crit <- function(fit, reml) if (reml) REMLcrit(fit) else deviance(fit)

polish <- function(reml) {
  ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), calc.derivs = FALSE)
  best <- lmer(form, data = eg, REML = reml, control = ctrl)
  for (opt in c("Nelder_Mead", "bobyqa")) {
    oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
          else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
    f2 <- tryCatch(update(best, start = getME(best, "theta"),
                          control = lmerControl(optimizer = opt, optCtrl = oc, calc.derivs = FALSE)),
                   error = function(e) NULL)
    if (!is.null(f2) && crit(f2, reml) < crit(best, reml)) best <- f2
  }
  best
}

out <- list()
for (reml in c(FALSE, TRUE)) {
  fit <- polish(reml)
  cf <- summary(fit)$coefficients
  vc <- VarCorr(fit)
  fixed <- list()
  for (k in seq_along(labels)) fixed[[labels[k]]] <- list(est = cf[k, 1], se = cf[k, 2], lme4_name = rownames(cf)[k])
  out[[if (reml) "reml" else "ml"]] <- list(
    tool = paste("lme4", packageVersion("lme4")), formula = deparse(form, width.cutoff = 500L),
    fixed = fixed,
    tau_pi = unname(as.matrix(vc[["SCHOOLID:CHILDID"]])), tau_beta = unname(as.matrix(vc[["SCHOOLID"]])),
    sigma2 = sigma(fit)^2, deviance = crit(fit, reml))
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/data/three_level/eg_centring.json")
