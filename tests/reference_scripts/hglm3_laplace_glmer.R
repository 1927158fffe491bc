# References for tests/test_hglm3_laplace.py: three-level HGLMs by Laplace (nAGQ = 1) on the level files
# hglm3_references.R wrote to tests/data/hglm3/ (mlmRev's guImmun and Mmmec, lme4's grouseticks), fitted by
#   * lme4::glmer, tightened: bobyqa with rhoend 1e-12, tolPwrss 1e-13 (the default stops ~1e-4 deviance early);
#   * glmmTMB (Laplace), a second implementation of the same likelihood, as a cross-check.
# Models: random intercepts at both levels on all three; on Mmmec also a random UVB slope across regions
# (level 2), the same with a diagonal tau at level 2 (lme4's ||), and a random UVB slope across nations (level 3);
# on grouseticks also a random YEAR96 slope across locations, whose optimum is on the boundary (tau_beta singular).
# A binomial outcome with trials: a small data set simulated here from set.seed(20261207) (written as
# tests/data/hglm3/binom_l{1,2,3}.csv: 30 schools, 4 classes each, 3 records of 1 to 12 trials each).
# Run from the repository root:  Rscript tests/reference_scripts/hglm3_laplace_glmer.R
# It writes tests/data/hglm3/laplace_glmer.json.
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
dir <- "tests/data/hglm3"
ctl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), tolPwrss = 1e-13,
                    check.conv.grad = .makeCC("warning", tol = 1e-6))
rd <- function(f, cls) read.csv(file.path(dir, f), colClasses = cls, stringsAsFactors = FALSE)

glmer_out <- function(m) {
  vc <- lapply(VarCorr(m), function(v) unname(as.matrix(v)))
  list(deviance = -2 * as.numeric(logLik(m)), gamma = unname(fixef(m)), se = unname(sqrt(diag(as.matrix(vcov(m))))),
       tau = vc, theta = unname(getME(m, "theta")), fixed = names(fixef(m)))
}
tmb_out <- function(m) {
  vc <- lapply(VarCorr(m)$cond, function(v) unname(as.matrix(v)))
  list(deviance = -2 * as.numeric(logLik(m)), gamma = unname(fixef(m)$cond), se = unname(sqrt(diag(vcov(m)$cond))),
       tau = vc, convergence = m$fit$convergence)
}
fit_both <- function(form, data, family) {
  g <- glmer(form, data = data, family = family, control = ctl)
  t <- glmmTMB(form, data = data, family = family,
               control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14)))
  list(glmer = glmer_out(g), glmmTMB = tmb_out(t))
}
out <- list(source = "lme4::glmer (Laplace, nAGQ = 1, bobyqa rhoend 1e-12, tolPwrss 1e-13) and glmmTMB (Laplace, rel.tol 1e-14)",
            R = R.version.string, lme4 = as.character(packageVersion("lme4")),
            glmmTMB = as.character(packageVersion("glmmTMB")))

g1 <- rd("guimmun_l1.csv", c(KID = "character", MOM = "character"))
g2 <- rd("guimmun_l2.csv", c(MOM = "character", COMM = "character"))
g3 <- rd("guimmun_l3.csv", c(COMM = "character"))
gd <- merge(merge(g1, g2, by = "MOM"), g3, by = "COMM")
out$guimmun <- fit_both(IMMUN ~ KID2P + MOM25P + ORD23 + ORD46 + ORD7P + ETHNN + ETHNS + MOMEDP + MOMEDS + HUSEDP +
                          HUSEDS + HUSEDU + MOMWORK + RURAL + PCIND81 + (1 | COMM / MOM), gd, binomial)

m1 <- rd("mmmec_l1.csv", c(COUNTY = "character", REGION = "character"))
m2 <- rd("mmmec_l2.csv", c(REGION = "character", NATION = "character"))
md <- merge(m1, m2, by = "REGION")
out$mmmec_intercepts <- fit_both(DEATHS ~ UVB + (1 | NATION / REGION) + offset(log(EXPECTED)), md, poisson)
out$mmmec_slope2 <- fit_both(DEATHS ~ UVB + (1 + UVB | REGION) + (1 | NATION) + offset(log(EXPECTED)), md, poisson)
out$mmmec_slope2_diag <- fit_both(DEATHS ~ UVB + (1 + UVB || REGION) + (1 | NATION) + offset(log(EXPECTED)), md,
                                  poisson)
out$mmmec_slope3 <- fit_both(DEATHS ~ UVB + (1 + UVB | NATION) + (1 | REGION) + offset(log(EXPECTED)), md, poisson)

t1 <- rd("grouse_l1.csv", c(INDEX = "character", BROOD = "character"))
t2 <- rd("grouse_l2.csv", c(BROOD = "character", LOCATION = "character"))
t3 <- rd("grouse_l3.csv", c(LOCATION = "character"))
td <- merge(merge(t1, t2, by = "BROOD"), t3, by = "LOCATION")
out$grouseticks <- fit_both(TICKS ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION / BROOD), td, poisson)
# a boundary optimum: a random YEAR96 slope across locations, perfectly correlated with the intercept (tau_beta of rank 1)
out$grouse_boundary <- fit_both(TICKS ~ YEAR96 + YEAR97 + CHEIGHT + (1 + YEAR96 | LOCATION) + (1 | BROOD:LOCATION),
                                td, poisson)

set.seed(20261207)
J3 <- 30; J2 <- 4 * J3; N <- 3 * J2
b1 <- data.frame(CLASS = sprintf("c%03d", rep(1:J2, each = 3)), TRIALS = sample(1:12, N, replace = TRUE),
                 X = round(rnorm(N), 3))
b2 <- data.frame(CLASS = sprintf("c%03d", 1:J2), SCHOOL = sprintf("s%02d", rep(1:J3, each = 4)), W = round(rnorm(J2), 3))
b3 <- data.frame(SCHOOL = sprintf("s%02d", 1:J3), Z = round(rnorm(J3), 3))
bd <- merge(merge(b1, b2, by = "CLASS"), b3, by = "SCHOOL")
eta <- -0.5 + 0.4 * bd$X + 0.3 * bd$W - 0.2 * bd$Z + rnorm(J2, sd = 0.6)[match(bd$CLASS, b2$CLASS)] +
  rnorm(J3, sd = 0.5)[match(bd$SCHOOL, b3$SCHOOL)]
bd$Y <- rbinom(N, bd$TRIALS, plogis(eta))
b1$Y <- bd$Y[match(paste(b1$CLASS, b1$X), paste(bd$CLASS, bd$X))]
write.csv(b1, file.path(dir, "binom_l1.csv"), row.names = FALSE)
write.csv(b2, file.path(dir, "binom_l2.csv"), row.names = FALSE)
write.csv(b3, file.path(dir, "binom_l3.csv"), row.names = FALSE)
out$binomial <- fit_both(cbind(Y, TRIALS - Y) ~ X + W + Z + (1 | SCHOOL / CLASS), bd, binomial)

writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "laplace_glmer.json"))
