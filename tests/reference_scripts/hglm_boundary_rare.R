# References for tests/test_hglm_quadrature.py: Laplace fits of a random-slope logistic model at a
# rank-1 tau (rank1_l*.csv: 60 units of 10, 5.8% successes) and on rare events (rare_l*.csv: 197 units
# of 6, 0.85% successes, where full PQL breaks down), by glmer (tightened) and by glmmTMB.
# Both data sets were simulated once (random intercept and slope, logit link) and saved as CSV.
# Run from tests/data/hglm: Rscript ../../reference_scripts/hglm_boundary_rare.R > boundary_rare_refs.json
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
tau_of <- function(v) { v <- as.matrix(v); attributes(v)[c("stddev", "correlation")] <- NULL; unname(v) }
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5), tolPwrss = 1e-12,
                     check.conv.singular = "ignore")
out <- list()
for (name in c("rank1", "rare")) {
  d <- merge(read.csv(paste0(name, "_l1.csv")), read.csv(paste0(name, "_l2.csv")), by = "id")
  d$id <- factor(d$id)
  m <- glmer(y ~ x + (x | id), data = d, family = binomial, nAGQ = 1, control = ctrl)
  # a second run from glmer's own optimum, to be sure bobyqa is not stopping short
  m2 <- update(m, start = list(theta = getME(m, "theta"), fixef = fixef(m)))
  if (-2 * as.numeric(logLik(m2)) < -2 * as.numeric(logLik(m))) m <- m2
  t <- glmmTMB(y ~ x + (x | id), data = d, family = binomial,
               control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4)))
  # glmer again, started from glmmTMB's estimates (on the rare events glmer alone stops at a boundary
  # and glmmTMB warns of singular convergence)
  L <- t(chol(tau_of(VarCorr(t)$cond$id)))
  m3 <- glmer(y ~ x + (x | id), data = d, family = binomial, nAGQ = 1, control = ctrl,
              start = list(theta = L[lower.tri(L, diag = TRUE)], fixef = fixef(t)$cond))
  out[[name]] <- list(
    glmer_from_tmb = list(tool = "the same glmer call, started at glmmTMB's estimates",
                          deviance = -2 * as.numeric(logLik(m3)), fixef = as.list(fixef(m3)),
                          tau = tau_of(VarCorr(m3)$id)),
    glmer = list(tool = paste("lme4", packageVersion("lme4"), "glmer nAGQ=1 bobyqa rhoend=1e-12 tolPwrss=1e-12"),
                 deviance = -2 * as.numeric(logLik(m)), fixef = as.list(fixef(m)),
                 se = as.list(sqrt(diag(as.matrix(vcov(m))))), tau = tau_of(VarCorr(m)$id),
                 theta = unname(getME(m, "theta"))),
    tmb = list(tool = paste("glmmTMB", packageVersion("glmmTMB")), deviance = -2 * as.numeric(logLik(t)),
               fixef = as.list(fixef(t)$cond), tau = tau_of(VarCorr(t)$cond$id)))
}
cat(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE))
