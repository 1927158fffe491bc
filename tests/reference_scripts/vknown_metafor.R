# Reference numbers for tests/test_known_variance.py: V-known (meta-analytic) random-effects models fitted by
# metafor::rma, REML and ML, intercept-only and with moderators, on metafor's own data sets; the data are
# written to tests/data/vknown/ as the tests read them. Tight convergence (threshold 1e-12, many iterations);
# cross-checked with a direct optimisation of the same log-likelihood (optimize, tol 1e-14).
# Run from the repository root:  Rscript tests/reference_scripts/vknown_metafor.R
suppressPackageStartupMessages({library(metafor); library(jsonlite)})
bcg <- escalc(measure = "RR", ai = tpos, bi = tneg, ci = cpos, di = cneg, data = dat.bcg)
bcg <- data.frame(trial = bcg$trial, yi = as.numeric(bcg$yi), vi = as.numeric(bcg$vi), ablat = bcg$ablat,
                  year = bcg$year)
write.csv(bcg, "tests/data/vknown/bcg.csv", row.names = FALSE)
# teacher expectancy (Raudenbush 1985; Raudenbush & Bryk's V-known example): WEEKS of prior contact, 0-3
# (3 = three or more), as HLM's manual codes it
exp <- dat.raudenbush1985
exp <- data.frame(study = exp$study, yi = as.numeric(exp$yi), vi = as.numeric(exp$vi), weeks = pmin(exp$weeks, 3))
write.csv(exp, "tests/data/vknown/expectancy.csv", row.names = FALSE)
ctrl <- list(threshold = 1e-12, maxiter = 10000, stepadj = 0.5)
fits <- list()
one <- function(name, data, mods, method) {
  m <- if (is.null(mods)) rma(yi, vi, data = data, method = method, control = ctrl)
       else rma(yi, vi, mods = mods, data = data, method = method, control = ctrl)
  # a second tool: the same ML/REML log-likelihood maximised over tau2 by optimize
  X <- if (is.null(mods)) matrix(1, nrow(data), 1) else model.matrix(mods, data)
  ll <- function(t2) {
    w <- 1 / (data$vi + t2); W <- diag(w)
    XtWX <- t(X) %*% W %*% X; b <- solve(XtWX, t(X) %*% W %*% data$yi); r <- data$yi - X %*% b
    k <- nrow(data); p <- ncol(X)
    if (method == "ML") -0.5 * (k * log(2 * pi) + sum(log(data$vi + t2)) + sum(w * r^2))
    else -0.5 * ((k - p) * log(2 * pi) - determinant(crossprod(X))$modulus + sum(log(data$vi + t2)) +
                 determinant(XtWX)$modulus + sum(w * r^2))
  }
  opt <- optimize(function(t2) -ll(t2), c(0, 10), tol = 1e-14)
  fits[[paste(name, method, sep = "_")]] <<- list(
    data = name, mods = if (is.null(mods)) NULL else deparse(mods), method = method,
    tau2 = m$tau2, se_tau2 = m$se.tau2, beta = as.numeric(m$beta), names = rownames(m$beta), se = m$se,
    logLik = as.numeric(logLik(m)), QE = m$QE, QEdf = m$k - m$p, I2 = m$I2,
    optimize_tau2 = opt$minimum, optimize_logLik = -opt$objective)
}
for (method in c("REML", "ML")) {
  one("bcg", bcg, NULL, method)
  one("bcg_mods", bcg, ~ ablat + year, method)
  one("expectancy", exp, NULL, method)
  one("expectancy_mods", exp, ~ weeks, method)
}
writeLines(toJSON(fits, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null"),
           "tests/data/vknown/metafor_rma.json")

# Several records per unit, each with a known level-1 variance: HSB with V = 30 + 10*FEMALE (made up, known),
# MATHACH ~ SES_gc + SECTOR + (1 + SES_gc | ID); nlme::lme with varFixed(~V) and sigma fixed at 1, and glmmTMB with
# dispformula = ~ 0 + offset(log(V)) (the residual variance is V). Both agree under ML; under REML nlme's fit with a
# fixed sigma is not the restricted likelihood of the known-variance model (its deviance is 58.7 higher at its own
# optimum, and its tau differs), while glmmTMB's REML (the Laplace-integrated fixed effects) is: the REML reference
# is glmmTMB's.
library(nlme); library(glmmTMB)
l1 <- read.csv("sample_data/hsb/hsb1.csv"); l2 <- read.csv("sample_data/hsb/hsb2.csv")
d <- merge(l1, l2, by = "ID"); d$SES_gc <- d$SES - ave(d$SES, d$ID); d$V <- 30 + 10 * d$FEMALE
hsb <- list()
for (method in c("REML", "ML")) {
  m <- lme(MATHACH ~ SES_gc + SECTOR, random = ~ 1 + SES_gc | ID, weights = varFixed(~ V), data = d, method = method,
           control = lmeControl(sigma = 1, msMaxIter = 1000, msMaxEval = 1000, tolerance = 1e-12, msTol = 1e-14,
                                niterEM = 0))
  d$logV <- log(d$V); d$IDf <- factor(d$ID)
  tmb <- glmmTMB(MATHACH ~ SES_gc + SECTOR + (1 + SES_gc | IDf), dispformula = ~ 0 + offset(logV), data = d,
                 REML = method == "REML",
                 control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-12)))
  hsb[[method]] <- list(deviance = -2 * as.numeric(logLik(m)), fixef = as.numeric(fixef(m)),
                        se = as.numeric(sqrt(diag(vcov(m)))), tau = unname(matrix(as.numeric(getVarCov(m)), 2, 2)),
                        glmmtmb = list(deviance = -2 * as.numeric(logLik(tmb)), fixef = as.numeric(fixef(tmb)$cond),
                                       se = as.numeric(sqrt(diag(vcov(tmb)$cond))),
                                       tau = unname(matrix(as.numeric(VarCorr(tmb)$cond$IDf), 2, 2))))
}
writeLines(toJSON(hsb, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/data/vknown/hsb_varfixed_nlme.json")
