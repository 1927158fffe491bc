# Reference numbers for cross-classified fits' Satterthwaite d.f. (lmerTest) and the groups' conditional
# variances (lme4's ranef(condVar = TRUE)), on ScotsSec and Penicillin (the CSV files in tests/data/crossed/,
# written by crossed_lme4.R). Each model is fitted by lmer with bobyqa (rhoend 1e-12), then polished by Newton
# steps on lme4's own deviance function (as crossed_lme4.R does) and rebuilt at that theta; lmerTest then
# computes its d.f. at the polished optimum (as_lmerModLmerTest: numDeriv's Hessian of the deviance in
# (theta, sigma) and Jacobian of vcov(beta)).
# One fixed effect (Penicillin) is written as a list of one number.
# Run: Rscript tests/reference_scripts/crossed_lmertest.R tests/data/crossed
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(jsonlite); library(numDeriv)})
dir <- commandArgs(TRUE)[1]
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, rhobeg = 0.2, maxfun = 1e6),
                     check.conv.singular = "ignore")
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
  mm <- mkMerMod(environment(dfun), opt, lf$reTrms, fr = lf$fr)
  mm@call <- m@call  # lmerTest rebuilds the deviance function from the call
  mm
}
one <- function(f, data, reml) {
  m0 <- lmer(f, data, REML = reml, control = tight)
  m <- polish(f, data, reml, m0)
  mt <- as_lmerModLmerTest(m)
  co <- summary(mt, ddf = "Satterthwaite")$coefficients
  re <- ranef(m, condVar = TRUE)
  groups <- lapply(names(re), function(g) {
    pv <- attr(re[[g]], "postVar")
    list(factor = g, ids = rownames(re[[g]]), effects = unname(as.matrix(re[[g]])),
         postvar = lapply(seq_len(dim(pv)[3]), function(j) unname(pv[, , j, drop = TRUE])))
  })
  list(formula = paste(deparse(f, width.cutoff = 500L), collapse = ""), method = if (reml) "REML" else "ML", n = nobs(m),
       deviance = if (reml) unname(REMLcrit(m)) else unname(deviance(m)),
       theta = unname(getME(m, "theta")), gamma = as.list(fixef(m)),
       se = as.list(co[, "Std. Error"]), df = as.list(co[, "df"]), p = as.list(co[, "Pr(>|t|)"]),
       ranef = groups)
}
d <- read.csv(file.path(dir, "scotssec.csv"))
d$primary <- as.character(d$primary); d$second <- as.character(d$second)
p <- read.csv(file.path(dir, "penicillin.csv"), colClasses = c(plate = "character", sample = "character"))
fits <- list()
for (reml in c(TRUE, FALSE)) {
  fits[[length(fits) + 1]] <- one(attain ~ verbal + female + (1 | primary) + (1 | second), d, reml)
  fits[[length(fits) + 1]] <- one(diameter ~ 1 + (1 | plate) + (1 | sample), p, reml)
}
# a random slope on the boundary (the primary schools' intercept and verbal slope correlate +-1): there the
# d.f. depend on how verbal is coded (the Cholesky factor of a singular tau is not smooth in tau), and hlmcli
# takes theta in centred coordinates, as for nested fits; so this is lmerTest's fit with verbal centred
d$verbal_c <- d$verbal - mean(d$verbal)
fits[[length(fits) + 1]] <- one(attain ~ verbal_c + female + (1 + verbal_c | primary) + (1 | second), d, TRUE)
writeLines(toJSON(list(lme4 = as.character(packageVersion("lme4")),
                       lmerTest = as.character(packageVersion("lmerTest")), R = R.version.string, fits = fits),
                  digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "crossed_lmertest.json"))
