# Reference values for the linear engine's remaining gaps (tests/test_linear_gaps.py):
#   global  - J = 3, q = 3, ML, uncentred year: lme4's optimum (two optimizers), which is tau = 0
#   bigmean - predictors of 1e5 +- 10, a Julian date, a level-2 1e5 +- 1 and its cross-level product:
#             lme4 fitted to the same model written on centred columns (X T with T unit upper
#             triangular: the same ML and REML criterion), and to the raw columns for comparison
#   satt    - a REML fit on the boundary (correlation -1) with a random year slope: lmerTest's
#             Satterthwaite d.f. with the year uncentred and centred, and (contest1D) the d.f. of
#             the uncentred intercept as a contrast of the centred fit
#
# Run from the repository root (after tests/reference_scripts/linear_gaps_data.py):
#     Rscript tests/reference_scripts/linear_gaps_lme4.R
# Writes: tests/data/linear_gaps/lme4.json
#
# Optimizers are tightened (bobyqa rhoend 1e-12, Nelder-Mead FtolAbs 1e-14) and each fit is done with
# two of them; the smaller criterion is kept and both are recorded.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

d <- "tests/data/linear_gaps/"
tight <- list(
  bobyqa = lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e6),
                       check.conv.singular = "ignore", check.scaleX = "ignore", check.rankX = "ignore"),
  nelder = lmerControl(optimizer = "Nelder_Mead", optCtrl = list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12,
                       maxfun = 1e6), check.conv.singular = "ignore", check.scaleX = "ignore", check.rankX = "ignore"))

crit <- function(m) if (isREML(m)) REMLcrit(m) else deviance(m)

fit_both <- function(form, data, REML, lmer_fun = lme4::lmer) {
  fits <- lapply(tight, function(ctl) lmer_fun(form, data = data, REML = REML, control = ctl))
  crits <- sapply(fits, crit)
  list(best = fits[[which.min(crits)]], crits = as.list(crits))
}

summ <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  list(criterion = crit(m), theta = unname(getME(m, "theta")), sigma2 = sigma(m)^2,
       fixef = as.list(fixef(m)), tau = lapply(VarCorr(m), function(v) unname(as.matrix(v))))
}

out <- list()

# ---- global
g1 <- read.csv(paste0(d, "global_l1.csv"))
gf <- fit_both(y ~ year + x + (year + x | id), g1, REML = FALSE)
ols <- lm(y ~ year + x, data = g1)
n <- nrow(g1)
out$global <- c(summ(gf$best), list(optimizers = gf$crits,
  ols_ml_deviance = n * (1 + log(2 * pi) + log(sum(residuals(ols)^2) / n))))

# ---- bigmean
b1 <- read.csv(paste0(d, "bigmean_l1.csv"))
b2 <- read.csv(paste0(d, "bigmean_l2.csv"))
bm <- merge(b1, b2, by = "id")
bm$x1c <- bm$x1 - mean(bm$x1)
bm$datec <- bm$date - mean(bm$date)
bm$wc <- bm$w - mean(b2$w)
res <- list()
for (reml in c(TRUE, FALSE)) {
  fc <- fit_both(y ~ wc + x1c + x1c:wc + datec + (1 | id), bm, REML = reml)
  fr <- tryCatch(summ(lmer(y ~ w + x1 + x1:w + date + (1 | id), data = bm, REML = reml, control = tight$bobyqa)),
                 error = function(e) list(error = conditionMessage(e)))
  res[[if (reml) "REML" else "ML"]] <- c(summ(fc$best), list(optimizers = fc$crits, raw_columns = fr))
}
out$bigmean <- res

# ---- satt
s1 <- read.csv(paste0(d, "satt_l1.csv"))
sres <- list()
for (v in c("year", "yearc")) {
  form <- as.formula(sprintf("y ~ %s + (%s | id)", v, v))
  fs <- fit_both(form, s1, REML = TRUE, lmer_fun = lmerTest::lmer)
  co <- summary(fs$best)$coefficients
  sres[[v]] <- c(summ(fs$best), list(optimizers = fs$crits, satterthwaite_df = as.list(co[, "df"])))
  if (v == "yearc") {
    # the uncentred intercept is the contrast (1, -mean(year)) of the centred fit
    sres[[v]]$uncentred_intercept_df <- contest1D(fs$best, c(1, -mean(s1$year)))$df
  }
}
out$satt <- sres
out$R <- R.version.string
out$lme4 <- as.character(packageVersion("lme4"))
out$lmerTest <- as.character(packageVersion("lmerTest"))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), paste0(d, "lme4.json"))
