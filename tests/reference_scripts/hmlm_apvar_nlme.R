# Reference numbers for tests/test_hmlm_tests.py: standard errors of HMLM's covariance parameters, from nlme's
# approximate covariance of its variance parameters (apVar: the inverse Hessian of its log-likelihood, on its
# "natural" scale: log sd of the random intercept, log of varIdent's ratios, atanh-type 2·atanh of the
# correlations (log((1 + r)/(1 - r))), log sigma), carried to hlmcli's parameters (tau00, sigma2 or sigma2_t,
# rho, Delta's lower triangle) by the delta method with numDeriv's Richardson Jacobian.
# Data: tests/data/hmlm/early{1,2}.csv; COG ~ AGE * TRT, a random intercept by ID (gls: none), ML and REML.
# Each fit by nlminb and optim's BFGS, tolerances tightened, the lower deviance kept.
# Run from the repository root:  Rscript tests/reference_scripts/hmlm_apvar_nlme.R
suppressPackageStartupMessages({library(nlme); library(numDeriv); library(jsonlite)})
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
fz <- function(z) (exp(z) - 1) / (exp(z) + 1)  # nlme's natural correlation scale log((1 + r)/(1 - r)) back to r
# each structure: its fit, and the map from apVar's parameters to hlmcli's (in hlmcli's order)
structures <- list(
  homogeneous = list(fit = function(method) function(opt) lme(f, random = ~ 1 | ID, data = d, method = method,
                                                              control = lctrl(opt)),
                     map = function(p) c(tau00 = exp(2 * p[1]), sigma2 = exp(2 * p[2]))),
  heterogeneous = list(fit = function(method) function(opt) lme(f, random = ~ 1 | ID, data = d, method = method,
                         weights = varIdent(form = ~ 1 | OCC), control = lctrl(opt)),
                       map = function(p) c(tau00 = exp(2 * p[1]), sigma2_1 = exp(2 * p[4]),
                                           sigma2_2 = exp(2 * (p[4] + p[2])), sigma2_3 = exp(2 * (p[4] + p[3])))),
  ar1 = list(fit = function(method) function(opt) lme(f, random = ~ 1 | ID, data = d, method = method,
               correlation = corAR1(form = ~ OCC | ID), control = lctrl(opt)),
             map = function(p) c(tau00 = exp(2 * p[1]), sigma2 = exp(2 * p[3]), rho = fz(p[2]))),
  unrestricted = list(fit = function(method) function(opt) gls(f, data = d, method = method,
                        correlation = corSymm(form = ~ OCC | ID), weights = varIdent(form = ~ 1 | OCC),
                        control = gctrl(opt)),
                      map = function(p) {  # corSymm's r12, r13, r23; varIdent's log ratios of occasions 2, 3
                        s <- exp(p[6] + c(0, p[4], p[5])); r <- fz(p[1:3])
                        c(d11 = s[1]^2, d21 = r[1] * s[1] * s[2], d22 = s[2]^2, d31 = r[2] * s[1] * s[3],
                          d32 = r[3] * s[2] * s[3], d33 = s[3]^2) }))
# apVar's Hessian is nlme's fdHess: a quadratic fit on steps of relative size eps^(1/3), good to about 1e-2
# here for varIdent and corAR1 parameters. The same apVar with fdHess replaced by numDeriv's Richardson Hessian
# of the same function (nlme:::lmeApVar.fullLmeLogLik, glsApVar's) is stored too ("_richardson"): the accurate one.
fdHess_nlme <- nlme::fdHess
richardson <- function(pars, fun, ..., .relStep, minAbsPar) {
  args <- list(...)
  list(Hessian = numDeriv::hessian(function(p) do.call(fun, c(list(p), args)), pars))
}
carried <- function(m, map) {
  stopifnot(is.matrix(m$apVar))
  pars <- attr(m$apVar, "Pars")
  J <- jacobian(map, pars)
  V <- J %*% m$apVar %*% t(J)
  list(apvar_pars = names(pars), estimate = unname(map(pars)), se = sqrt(diag(V)), covariance = unname(V))
}
out <- list()
for (s in names(structures)) for (method in c("ML", "REML")) {
  message(s, " ", method)
  assignInNamespace("fdHess", fdHess_nlme, "nlme")
  m <- best(structures[[s]]$fit(method))
  key <- paste(s, method, sep = "_")
  out[[key]] <- c(list(deviance = -2 * as.numeric(logLik(m))), carried(m, structures[[s]]$map))
  assignInNamespace("fdHess", richardson, "nlme")
  m <- best(structures[[s]]$fit(method))
  out[[paste0(key, "_richardson")]] <- c(list(deviance = -2 * as.numeric(logLik(m))), carried(m, structures[[s]]$map))
}
assignInNamespace("fdHess", fdHess_nlme, "nlme")
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "hmlm_apvar_nlme.json"))
