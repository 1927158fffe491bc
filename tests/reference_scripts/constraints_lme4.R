# Reference numbers for tests/test_constraints.py: HSB models with two γs tied (--constrain "g20 = g30"),
# fitted by lmer on the summed predictor I(MINORITY + FEMALE), REML and ML, with tight optimizer
# settings; cross-checked with nlme::lme. Run from the repository root:
#   Rscript tests/reference_scripts/constraints_lme4.R
suppressPackageStartupMessages({library(lme4); library(nlme); library(jsonlite)})
l1 <- read.csv("sample_data/hsb/hsb1.csv"); l2 <- read.csv("sample_data/hsb/hsb2.csv")
d <- merge(l1, l2, by = "ID")
d$ID <- factor(d$ID)
d$SES_gc <- d$SES - ave(d$SES, d$ID)
d$S <- d$MINORITY + d$FEMALE
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e6),
                    check.conv.singular = "ignore")
models <- list(
  intercept = list(f = MATHACH ~ SECTOR + S + (1 | ID), lf = MATHACH ~ SECTOR + S, rf = ~ 1 | ID),
  slope = list(f = MATHACH ~ SECTOR + SES_gc + S + (1 + SES_gc | ID), lf = MATHACH ~ SECTOR + SES_gc + S,
               rf = ~ 1 + SES_gc | ID))
out <- list()
for (name in names(models)) {
  m <- models[[name]]
  for (reml in c(TRUE, FALSE)) {
    fit <- lmer(m$f, data = d, REML = reml, control = ctrl)
    alt <- lme(m$lf, random = m$rf, data = d, method = if (reml) "REML" else "ML",
               control = lmeControl(msMaxIter = 500, tolerance = 1e-12, opt = "optim", optimMethod = "BFGS",
                                    returnObject = TRUE))
    key <- paste0(name, "_", if (reml) "reml" else "ml")
    out[[key]] <- list(
      deviance = if (reml) REMLcrit(fit) else deviance(fit),
      nlme_deviance = -2 * as.numeric(logLik(alt)),
      fixef = as.list(fixef(fit)), se = as.list(sqrt(diag(as.matrix(vcov(fit))))),
      sigma2 = sigma(fit)^2, tau = unname(as.matrix(VarCorr(fit)$ID)[, , drop = TRUE]))
  }
}
# the unconstrained ML deviances, for the likelihood-ratio test of the tie
for (name in names(models)) {
  f <- update(models[[name]]$f, . ~ . - S + MINORITY + FEMALE)
  out[[paste0(name, "_unconstrained_ml")]] <- list(deviance = deviance(lmer(f, data = d, REML = FALSE, control = ctrl)))
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/data/constraints/hsb_tied_lme4.json")
