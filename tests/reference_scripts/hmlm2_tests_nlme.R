# Reference numbers for tests/test_hmlm_tests.py (HMLM2: persons within level-3 units): the tests of the
# structured fits and the standard errors of their covariance parameters, from nlme's lme with two grouping
# levels on tests/data/hmlm/eg15.csv (written by hmlm2_nlme.R: mlmRev's egsingle, its first 15 schools; and its
# first 4 schools, for the fast test):
#   MATH ~ YEAR + (1 | SCHOOL) + (1 + YEAR | CHILD), within-child Delta homogeneous, heterogeneous (varIdent by
#   OCC) or AR(1) in the occasion index (corAR1(form = ~ OCC | SCHOOL/CHILD)); ML.
# - Wald tests: fixef and vcov, from which the test computes the Wald chi-square by hand.
# - Likelihood-ratio tests: anova() between two structures; logLik's d.f. (the parameter counts).
# - Standard errors: apVar (nlme's inverse Hessian of its log-likelihood on its natural scale: log sd's,
#   log((1 + r)/(1 - r)) of correlations, log varIdent ratios, log sigma) with nlme's fdHess replaced by
#   numDeriv's Richardson Hessian of the same function (fdHess is off by percents), carried to hlmcli's
#   parameters (tau00, tau10, tau11 of the children, tau3_00 of the schools, then sigma2 / sigma2_t / rho) by the
#   delta method with numDeriv's Jacobian.
# Each fit by nlminb and optim's BFGS, tolerances tightened, the lower deviance kept.
# Run from the repository root:  Rscript tests/reference_scripts/hmlm2_tests_nlme.R
suppressPackageStartupMessages({library(nlme); library(numDeriv); library(jsonlite)})
dir <- "tests/data/hmlm"
d <- read.csv(file.path(dir, "eg15.csv"))
lctrl <- function(opt) lmeControl(maxIter = 1000, msMaxIter = 5000, msMaxEval = 5000, niterEM = 0, tolerance = 1e-12,
                                  msTol = 1e-14, rel.tol = 1e-15, opt = opt, optimMethod = "BFGS", returnObject = TRUE)
best <- function(fitter) {
  fits <- lapply(c("nlminb", "optim"), function(opt) tryCatch(fitter(opt), error = function(e) NULL))
  dev <- sapply(fits, function(m) if (is.null(m)) Inf else -2 * as.numeric(logLik(m)))
  message(sprintf("  nlminb %.10f optim %.10f", dev[1], dev[2]))
  fits[[which.min(dev)]]
}
richardson <- function(pars, fun, ..., .relStep, minAbsPar) {
  args <- list(...)
  list(Hessian = numDeriv::hessian(function(p) do.call(fun, c(list(p), args)), pars))
}
assignInNamespace("fdHess", richardson, "nlme")
fz <- function(z) (exp(z) - 1) / (exp(z) + 1)
# apVar's parameters by name, to hlmcli's in hlmcli's order
mapper <- function(m, s) {
  nm <- names(attr(m$apVar, "Pars"))
  g <- if (s == "heterogeneous") attr(m$modelStruct$varStruct, "groupNames") else NULL
  function(p) {
    p <- setNames(p, nm)
    # apVar's natural parameters, in order: the children's log sd's ((Intercept), YEAR) and their correlation,
    # the schools' log sd, varIdent's log ratios (of groupNames[-1]) or corAR1's, then log sigma
    s0 <- exp(p[["reStruct.CHILD1"]]); s1 <- exp(p[["reStruct.CHILD2"]])
    r <- fz(p[["reStruct.CHILD3"]]); s3 <- exp(p[["reStruct.SCHOOL"]])
    sig <- exp(p[["lSigma"]])
    out <- c(tau00 = s0^2, tau10 = r * s0 * s1, tau11 = s1^2, tau3_00 = s3^2)
    if (s == "heterogeneous") {
      ratio <- setNames(c(1, exp(p[paste0("varStruct", seq_len(length(g) - 1))])), g)
      v <- (sig * ratio[as.character(1:6)])^2
      out <- c(out, setNames(v, paste0("sigma2_", 1:6)))
    } else out <- c(out, sigma2 = sig^2)
    if (s == "ar1") out <- c(out, rho = fz(p[[grep("^corStruct", names(p), value = TRUE)]]))
    out
  }
}
references <- function(d, structures) {
  fit <- function(s) best(function(opt) lme(MATH ~ YEAR, random = list(SCHOOL = ~ 1, CHILD = ~ 1 + YEAR), data = d,
                                            method = "ML", control = lctrl(opt),
                                            weights = if (s == "heterogeneous") varIdent(form = ~ 1 | OCC) else NULL,
                                            correlation = if (s == "ar1") corAR1(form = ~ OCC | SCHOOL/CHILD) else NULL))
  out <- list(order = c("(Intercept)", "YEAR"))
  models <- list()
  for (s in structures) {
    message(s)
    m <- fit(s)
    models[[s]] <- m
    stopifnot(is.matrix(m$apVar))
    pars <- attr(m$apVar, "Pars")
    map <- mapper(m, s)
    J <- jacobian(map, pars)
    V <- J %*% m$apVar %*% t(J)
    out[[s]] <- list(deviance = -2 * as.numeric(logLik(m)), df = attr(logLik(m), "df"), fixef = unname(fixef(m)),
                     vcov = unname(as.matrix(vcov(m))), apvar_pars = names(pars), parameters = names(map(pars)),
                     estimate = unname(map(pars)), se = sqrt(diag(V)))
  }
  lr <- function(a, b) { t <- anova(models[[a]], models[[b]])
                         list(models = c(a, b), chi2 = t$L.Ratio[2], df = diff(t$df), p = t[["p-value"]][2]) }
  out$anova <- lapply(setdiff(structures, "homogeneous"), function(s) lr("homogeneous", s))
  out
}
# the 15 schools (every structure), and the first 4 schools (for the default run's fast test)
out <- list(eg15 = references(d, c("homogeneous", "heterogeneous", "ar1")),
            eg4 = references(d[d$SCHOOL %in% unique(d$SCHOOL)[1:4], ], c("homogeneous", "ar1")))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "hmlm2_tests_nlme.json"))
