# References for tests/test_hglm_weights.py: glmer (and glmmTMB as a cross-check) with level-1 weights as
# prior weights, and per-plausible-value glmer fits.
# Data: tests/data/hglm_weights/contraw_l*.csv (hglm_weights_data.py).
# Run from the repository root:
#   Rscript tests/reference_scripts/hglm_weights_glmer.R > tests/data/hglm_weights/glmer_refs.json
#
# What glmer does with prior weights of a 0/1 outcome: PIRLS (the modes) uses them as they are, but the
# Laplace and AGQ objectives take the log-likelihood from binomial()$aic, -2 Σ dbinom(round(w·y), round(w), μ),
# which rounds the weights: with non-integer weights glmer optimises a different function (checked here on
# W1 scaled to n_j: glmer's objective differs from Σ w log f by 4.1 and its optimum moves, while glmmTMB,
# whose dbinom is continuous in the size, equals hlmcli's pseudo-deviance to 1e-9). With whole-number
# weights w the two agree: dbinom(w·y, w, μ) = w·log f(y | μ) for y in {0, 1}. So the glmer references use
# W1I (whole numbers, --normalize none), and glmmTMB those with W1 scaled to n_j (--normalize cluster).
# Then glmer minimises Σ_j −2 log ∫ exp(Σ_i w_ij log f(y_ij | u_j)) φ(u_j) du_j by Laplace (nAGQ = 1) or
# adaptive quadrature (nAGQ = 25); the deviance stored is its objective devfun(c(theta, beta)) at the optimum.
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
d <- merge(read.csv("tests/data/hglm_weights/contraw_l1.csv"), read.csv("tests/data/hglm_weights/contraw_l2.csv"),
           by = "DISTRICT")
d <- d[order(d$DISTRICT), ]
d$w1n <- d$W1 * ave(d$W1, d$DISTRICT, FUN = length) / ave(d$W1, d$DISTRICT, FUN = sum)
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5), tolPwrss = 1e-12,
                     check.conv.grad = "ignore")
one <- function(formula, nAGQ, w) {
  d$wt <- w  # glmer looks the weights up in the data
  m <- suppressWarnings(glmer(formula, data = d, family = binomial, weights = wt, nAGQ = nAGQ, control = ctrl))
  dev <- update(m, devFunOnly = TRUE)
  pars <- if (nAGQ == 0) getME(m, "theta") else c(getME(m, "theta"), fixef(m))
  v <- as.matrix(VarCorr(m)$DISTRICT); attributes(v)[c("stddev", "correlation")] <- NULL
  list(tool = paste("lme4", packageVersion("lme4"), "glmer nAGQ =", nAGQ, "bobyqa rhoend 1e-12, tolPwrss 1e-12"),
       deviance = dev(pars), fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       tau = unname(v))
}
tmb <- function(formula, w) {
  d$wt <- w
  m <- suppressWarnings(glmmTMB(formula, data = d, family = binomial, weights = wt,
                                control = glmmTMBControl(optCtrl = list(rel.tol = 1e-14, iter.max = 1e4, eval.max = 1e4))))
  v <- as.matrix(VarCorr(m)$cond$DISTRICT); attributes(v)[c("stddev", "correlation")] <- NULL
  list(tool = paste("glmmTMB", packageVersion("glmmTMB")), deviance = -2 * as.numeric(logLik(m)),
       fixef = as.list(fixef(m)$cond), tau = unname(v))
}
f1 <- USE ~ URBAN + AGE + (1 | DISTRICT)
f2 <- USE ~ URBAN + AGE + (URBAN | DISTRICT)
out <- list(
  ri_w1i_laplace = one(f1, 1, d$W1I), ri_w1i_agq25 = one(f1, 25, d$W1I), rs_w1i_laplace = one(f2, 1, d$W1I),
  ri_w1i_tmb = tmb(f1, d$W1I), ri_w1_tmb = tmb(f1, d$w1n), rs_w1_tmb = tmb(f2, d$w1n),
  pv = lapply(setNames(paste0("PV", 1:5), paste0("PV", 1:5)), function(v)
    one(as.formula(paste(v, "~ URBAN + AGE + (1 | DISTRICT)")), 1, rep(1, nrow(d)))),
  # glmer's bobyqa (and nloptwrap) stop a few 1e-6 above the optimum on some plausible values (PV1: 4.4e-6);
  # glmmTMB reaches it, so its deviance is the reference and glmer's the cross-check. glmer's vcov() is
  # wrong for PV4 (0.036 for γ00 where the Hessian gives 0.080), and numDeriv's Hessian of glmer's
  # deviance function carries PIRLS's noise (1% in AGE's SE), so the tests check the plausible values'
  # SEs against the Hessian of tests/hglm_pseudo.py's Laplace deviance instead.
  pv_tmb = lapply(setNames(paste0("PV", 1:5), paste0("PV", 1:5)), function(v)
    tmb(as.formula(paste(v, "~ URBAN + AGE + (1 | DISTRICT)")), rep(1, nrow(d)))),
  versions = list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                  glmmTMB = as.character(packageVersion("glmmTMB"))))
cat(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE))
