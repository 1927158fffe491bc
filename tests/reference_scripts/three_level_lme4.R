# Reference values for the three-level engine (hlmcli/nested.py): lme4 fits of models with level-2
# and level-3 predictors, a model with only the intercept random at level 3, and a simulated data
# set whose level-3 variance is estimated as exactly zero.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/three_level_lme4.R
#
# Reads:   tests/data/three_level/eg_l1.csv, eg_l2.csv, eg_l3.csv (mlmRev::egsingle as HLM's EG files)
# Writes:  tests/data/three_level/boundary_sim.csv   (simulated, set.seed below)
#          tests/data/three_level/lme4_extra.json     (reference numbers, read by tests/test_nested.py)
#
# Each model: lmer with bobyqa (rhoend 1e-12), then Nelder_Mead and bobyqa again from the best
# point; the lowest deviance is kept.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

d <- "tests/data/three_level/"
l1 <- read.csv(paste0(d, "eg_l1.csv"))
l2 <- read.csv(paste0(d, "eg_l2.csv"))
l3 <- read.csv(paste0(d, "eg_l3.csv"))
eg <- merge(merge(l1, l2[, c("CHILDID", "FEMALE", "BLACK", "HISPANIC")], by = "CHILDID"), l3, by = "SCHOOLID")

polish <- function(formula, data, reml) {
  ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6),
                      check.conv.singular = "ignore", calc.derivs = FALSE)
  fit <- lmer(formula, data = data, REML = reml, control = ctrl)
  best <- fit
  for (opt in c("Nelder_Mead", "bobyqa")) {
    oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
          else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
    f2 <- tryCatch(update(best, start = getME(best, "theta"),
                          control = lmerControl(optimizer = opt, optCtrl = oc, check.conv.singular = "ignore",
                                                calc.derivs = FALSE)),
                   error = function(e) NULL)
    if (!is.null(f2) && deviance(f2, REML = reml) < deviance(best, REML = reml)) best <- f2
  }
  best
}

describe <- function(fit, reml) {
  vc <- VarCorr(fit)
  comps <- lapply(names(vc), function(g) {
    m <- vc[[g]]
    list(names = colnames(m), tau = unname(as.matrix(m)[, , drop = FALSE]))
  })
  names(comps) <- names(vc)
  cf <- summary(fit)$coefficients
  list(fixed = lapply(setNames(rownames(cf), rownames(cf)), function(r) list(est = cf[r, 1], se = cf[r, 2])),
       variance_components = comps, sigma2 = sigma(fit)^2,
       deviance = if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit)),
       theta = unname(getME(fit, "theta")), singular = isSingular(fit, tol = 1e-6))
}

out <- list()
models <- list(
  eg_m2 = MATH ~ 1 + LOWINC + FEMALE + YEAR + YEAR:LOWINC + YEAR:MOBILITY +
    (1 + YEAR | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID),
  eg_m3 = MATH ~ 1 + YEAR + FEMALE + (1 | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID)
)
for (nm in names(models)) for (reml in c(FALSE, TRUE)) {
  fit <- polish(models[[nm]], eg, reml)
  out[[paste0(nm, if (reml) "_reml" else "_ml")]] <- c(list(formula = deparse1(models[[nm]])), describe(fit, reml))
}

# A level-3 variance that is truly zero: 15 level-3 units x 6 level-2 units x 5 records, random
# intercept and slope at level 2, random intercept at level 3 with variance 0; the first seed whose
# ML fit puts that variance at exactly 0 is kept.
for (seed in 1:200) {
  set.seed(seed)
  K <- 15; J <- 6; n <- 5
  s3 <- rep(1:K, each = J * n); s2 <- rep(1:(K * J), each = n)
  x <- round(rnorm(K * J * n), 3)
  r0 <- rnorm(K * J, sd = 1); r1 <- rnorm(K * J, sd = 0.5)
  y <- round(1 + 0.5 * x + r0[s2] + r1[s2] * x + rnorm(K * J * n), 4)
  sim <- data.frame(L3 = s3, L2 = s2, X = x, Y = y)
  fit <- polish(Y ~ 1 + X + (1 | L3) + (1 + X | L3:L2), sim, FALSE)
  if (getME(fit, "theta")[4] == 0) break
}
write.csv(sim, paste0(d, "boundary_sim.csv"), row.names = FALSE)
out[["sim_boundary_ml"]] <- c(list(formula = "Y ~ 1 + X + (1 | L3) + (1 + X | L3:L2)", seed = seed), describe(fit, FALSE))
fit <- polish(Y ~ 1 + X + (1 | L3) + (1 + X | L3:L2), sim, TRUE)
out[["sim_boundary_reml"]] <- c(list(formula = "Y ~ 1 + X + (1 | L3) + (1 + X | L3:L2)", seed = seed), describe(fit, TRUE))

writeLines(toJSON(list(tool = paste("lme4", packageVersion("lme4")), models = out), digits = I(17),
                  auto_unbox = TRUE, pretty = TRUE), paste0(d, "lme4_extra.json"))
