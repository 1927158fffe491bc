# References for tests/test_hglm3_weights.py: the three-level Bernoulli data of hglm3_weights_data.py
# (tests/data/hglm3_weights/bern_l{1,2,3}.csv: 349 pupils in 69 classes in 24 schools; outcome columns Y = PV1,
# PV2, PV3), fitted by Laplace (nAGQ = 1) with
#   * lme4::glmer, tightened: bobyqa with rhoend 1e-12, tolPwrss 1e-13;
#   * glmmTMB (Laplace, rel.tol 1e-14), a second implementation of the same likelihood.
# Fits: (a) Y with the whole-number level-1 weights W1I as weights= (for a 0/1 outcome the binomial
# likelihood with prior weights w is w·log f, the likelihood of w copies of the record: hlmcli's
# --weight1 W1I --normalize none); (b) each of PV1, PV2, PV3 unweighted (the per-value fits of
# --plausible-values PV1,PV2,PV3); (c) Y of restart_l{1,2,3}.csv unweighted, whose optimum has a small τπ
# (0.064) that a search stopping at τπ = 0 misses; (d) a public data set: lme4's grouseticks with three plausible
# values of TICKS (hglm3_grouse_pv_data.py), Poisson, each fitted unweighted.
# Run from the repository root:  Rscript tests/reference_scripts/hglm3_weights_glmer.R
# It writes tests/data/hglm3_weights/glmer_refs.json.
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
dir <- "tests/data/hglm3_weights"
ctl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), tolPwrss = 1e-13,
                    check.conv.grad = .makeCC("warning", tol = 1e-6))
l1 <- read.csv(file.path(dir, "bern_l1.csv"), colClasses = c(CLASS = "character"))
l2 <- read.csv(file.path(dir, "bern_l2.csv"), colClasses = c(CLASS = "character", SCHOOL = "character"))
l3 <- read.csv(file.path(dir, "bern_l3.csv"), colClasses = c(SCHOOL = "character"))
d <- merge(merge(l1, l2, by = "CLASS"), l3, by = "SCHOOL")

glmer_out <- function(m) {
  list(deviance = -2 * as.numeric(logLik(m)), gamma = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       tau = lapply(VarCorr(m), function(v) as.numeric(v)))
}
tmb_out <- function(m) {
  list(deviance = -2 * as.numeric(logLik(m)), gamma = as.list(fixef(m)$cond), se = as.list(sqrt(diag(vcov(m)$cond))),
       tau = lapply(VarCorr(m)$cond, function(v) as.numeric(v)), convergence = m$fit$convergence)
}
fit_both <- function(form, data, w = NULL) {
  data$w_ <- if (is.null(w)) 1 else w
  g <- glmer(form, data = data, family = binomial, weights = w_, control = ctl)
  t <- glmmTMB(form, data = data, family = binomial, weights = w_,
               control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14)))
  list(glmer = glmer_out(g), glmmTMB = tmb_out(t))
}
out <- list(source = "lme4::glmer (Laplace, nAGQ = 1, bobyqa rhoend 1e-12, tolPwrss 1e-13) and glmmTMB (Laplace, rel.tol 1e-14)",
            R = R.version.string, lme4 = as.character(packageVersion("lme4")),
            glmmTMB = as.character(packageVersion("glmmTMB")))
rhs <- " ~ X + W + Z + (1 | SCHOOL / CLASS)"
out$weighted_W1I <- fit_both(as.formula(paste0("Y", rhs)), d, d$W1I)
for (pv in c("PV1", "PV2", "PV3")) out[[pv]] <- fit_both(as.formula(paste0(pv, rhs)), d)
r1 <- read.csv(file.path(dir, "restart_l1.csv"), colClasses = c(CLASS = "character"))
r2 <- read.csv(file.path(dir, "restart_l2.csv"), colClasses = c(CLASS = "character", SCHOOL = "character"))
r3 <- read.csv(file.path(dir, "restart_l3.csv"), colClasses = c(SCHOOL = "character"))
out$restart <- fit_both(as.formula(paste0("Y", rhs)), merge(merge(r1, r2, by = "CLASS"), r3, by = "SCHOOL"))
fit_pois <- function(form, data) {
  g <- glmer(form, data = data, family = poisson, control = ctl)
  t <- glmmTMB(form, data = data, family = poisson,
               control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14)))
  list(glmer = glmer_out(g), glmmTMB = tmb_out(t))
}
g1 <- read.csv(file.path(dir, "grouse_pv_l1.csv"), colClasses = c(INDEX = "character", BROOD = "character"))
g2 <- read.csv("tests/data/hglm3/grouse_l2.csv", colClasses = c(BROOD = "character", LOCATION = "character"))
g3 <- read.csv("tests/data/hglm3/grouse_l3.csv", colClasses = c(LOCATION = "character"))
gd <- merge(merge(g1, g2, by = "BROOD"), g3, by = "LOCATION")
for (pv in c("PV1", "PV2", "PV3"))
  out[[paste0("grouse_", pv)]] <- fit_pois(as.formula(paste0(pv, " ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION / BROOD)")), gd)
writeLines(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), file.path(dir, "glmer_refs.json"))
