# Reference values for four-level models (HLM 7's HLM4): two simulated data sets, each written as
# the four files of an HLM4 archive, fitted with lme4 (ML and REML, optimizer tightened and
# polished from its own answer) and cross-checked with nlme.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/four_level_lme4.R
#
# Writes:  tests/data/four_level/{schools,hospitals}_l{1,2,3,4}.csv (the data, made here from a seed)
#          tests/data/four_level/{schools,hospitals}.json (read by tests/test_levels.py)
#
# No natural four-level data set was found among the R packages installed here (lme4, mlmRev,
# nlme, glmmTMB hold two- and three-level ones), so the data are simulated, with unbalanced
# units at every level.
#
# schools: occasions in students in classrooms in schools; a random TIME slope at level 2.
#   SCORE = p0 + p1*TIME + e
#   p0 = b00 + b01*SES + r0                 p1 = b10 + r1
#   b00 = g000 + g001*CSIZE + u00           b01 = g010          b10 = g100
#   g000 = d0000 + d0001*SECTOR + v000      g001 = d0010        g010 = d0100        g100 = d1000
# hospitals: visits in patients in wards in hospitals; a random DOSE slope at levels 3 and 4.
#   Y = p0 + p1*DOSE + e
#   p0 = b00 + b01*AGE + r0                 p1 = b10
#   b00 = g000 + g001*STAFF + u00           b01 = g010          b10 = g100 + u10
#   g000 = d0000 + d0001*TEACHING + v000    g001 = d0010        g010 = d0100
#   g100 = d1000 + d1001*TEACHING + v100

suppressPackageStartupMessages({
  library(lme4)
  library(nlme)
  library(MASS)
  library(jsonlite)
})

out_dir <- "tests/data/four_level/"
set.seed(20261206)

units <- function(n_parent, lo, hi) rep(seq_len(n_parent), sample(lo:hi, n_parent, replace = TRUE))

write_levels <- function(name, l1, l2, l3, l4) {
  write.csv(l1, paste0(out_dir, name, "_l1.csv"), row.names = FALSE)
  write.csv(l2, paste0(out_dir, name, "_l2.csv"), row.names = FALSE)
  write.csv(l3, paste0(out_dir, name, "_l3.csv"), row.names = FALSE)
  write.csv(l4, paste0(out_dir, name, "_l4.csv"), row.names = FALSE)
}

# ---- schools
l4 <- data.frame(SCHOOLID = 1:40, SECTOR = rbinom(40, 1, 0.4))
cl <- units(40, 2, 5)
l3 <- data.frame(CLASSID = seq_along(cl), SCHOOLID = cl, CSIZE = round(rnorm(length(cl), 25, 4)))
st <- units(nrow(l3), 3, 8)
l2 <- data.frame(STUDENTID = seq_along(st), CLASSID = st, SES = round(rnorm(length(st)), 3))
oc <- units(nrow(l2), 1, 4)
l1 <- data.frame(STUDENTID = oc, TIME = ave(oc, oc, FUN = seq_along) - 1)
v <- rnorm(40, 0, 3)
u <- rnorm(nrow(l3), 0, 2)
r <- mvrnorm(nrow(l2), c(0, 0), matrix(c(4, 0.6, 0.6, 1), 2))
sch <- l3$SCHOOLID[l2$CLASSID[l1$STUDENTID]]
cls <- l2$CLASSID[l1$STUDENTID]
l1$SCORE <- round(50 + 2.5 * l4$SECTOR[sch] - 0.3 * l3$CSIZE[cls] + 1.5 * l2$SES[l1$STUDENTID] + 3 * l1$TIME +
                  v[sch] + u[cls] + r[l1$STUDENTID, 1] + r[l1$STUDENTID, 2] * l1$TIME + rnorm(nrow(l1), 0, 2.5), 2)
write_levels("schools", l1, l2, l3, l4)
schools <- merge(merge(merge(l1, l2, by = "STUDENTID"), l3, by = "CLASSID"), l4, by = "SCHOOLID")
schools <- schools[order(schools$SCHOOLID, schools$CLASSID, schools$STUDENTID), ]

# ---- hospitals
l4 <- data.frame(HOSPID = 1:30, TEACHING = rbinom(30, 1, 0.5))
wd <- units(30, 2, 6)
l3 <- data.frame(WARDID = seq_along(wd), HOSPID = wd, STAFF = round(runif(length(wd), 0.5, 2), 2))
pt <- units(nrow(l3), 2, 10)
l2 <- data.frame(PATIENTID = seq_along(pt), WARDID = pt, AGE = round(rnorm(length(pt), 60, 12)))
vi <- units(nrow(l2), 1, 5)
l1 <- data.frame(PATIENTID = vi, DOSE = round(runif(length(vi), 0, 4), 1))
v <- mvrnorm(30, c(0, 0), matrix(c(2, -0.3, -0.3, 0.5), 2))
u <- mvrnorm(nrow(l3), c(0, 0), matrix(c(1.5, 0.2, 0.2, 0.4), 2))
r <- rnorm(nrow(l2), 0, 1.2)
hos <- l3$HOSPID[l2$WARDID[l1$PATIENTID]]
wrd <- l2$WARDID[l1$PATIENTID]
l1$Y <- round(10 + 1.2 * l4$TEACHING[hos] - 0.8 * l3$STAFF[wrd] + 0.05 * l2$AGE[l1$PATIENTID] +
              (-1 + 0.4 * l4$TEACHING[hos] + v[hos, 2] + u[wrd, 2]) * l1$DOSE +
              v[hos, 1] + u[wrd, 1] + r[l1$PATIENTID] + rnorm(nrow(l1), 0, 1.5), 2)
write_levels("hospitals", l1, l2, l3, l4)
hospitals <- merge(merge(merge(l1, l2, by = "PATIENTID"), l3, by = "WARDID"), l4, by = "HOSPID")
hospitals <- hospitals[order(hospitals$HOSPID, hospitals$WARDID, hospitals$PATIENTID), ]

# the criterion each method minimises; deviance(fit, REML = TRUE) is not it, REMLcrit() is
crit <- function(fit, reml) if (reml) REMLcrit(fit) else deviance(fit)

polish <- function(form, data, reml) {
  ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), calc.derivs = FALSE)
  best <- lmer(form, data = data, REML = reml, control = ctrl)
  for (opt in c("Nelder_Mead", "bobyqa")) {
    oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
          else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
    f2 <- tryCatch(update(best, start = getME(best, "theta"),
                          control = lmerControl(optimizer = opt, optCtrl = oc, calc.derivs = FALSE)),
                   error = function(e) NULL)
    if (!is.null(f2) && crit(f2, reml) < crit(best, reml)) best <- f2
  }
  best
}

models <- list(
  schools = list(
    data = schools,
    form = SCORE ~ 1 + SECTOR + CSIZE + SES + TIME + (1 | SCHOOLID) + (1 | SCHOOLID:CLASSID) +
      (1 + TIME | SCHOOLID:CLASSID:STUDENTID),
    labels = c("(Intercept)" = "d0000", SECTOR = "d0001", CSIZE = "d0010", SES = "d0100", TIME = "d1000"),
    groups = c(tau_pi = "SCHOOLID:CLASSID:STUDENTID", tau_beta = "SCHOOLID:CLASSID", tau_gamma = "SCHOOLID"),
    nlme_fixed = SCORE ~ 1 + SECTOR + CSIZE + SES + TIME,
    nlme_random = list(SCHOOLID = ~1, CLASSID = ~1, STUDENTID = pdSymm(~TIME))),
  hospitals = list(
    data = hospitals,
    form = Y ~ 1 + TEACHING + STAFF + AGE + DOSE + DOSE:TEACHING + (1 + DOSE | HOSPID) + (1 + DOSE | HOSPID:WARDID) +
      (1 | HOSPID:WARDID:PATIENTID),
    labels = c("(Intercept)" = "d0000", TEACHING = "d0001", STAFF = "d0010", AGE = "d0100", DOSE = "d1000",
               "TEACHING:DOSE" = "d1001"),
    groups = c(tau_pi = "HOSPID:WARDID:PATIENTID", tau_beta = "HOSPID:WARDID", tau_gamma = "HOSPID"),
    nlme_fixed = Y ~ 1 + TEACHING + STAFF + AGE + DOSE + DOSE:TEACHING,
    nlme_random = list(HOSPID = pdSymm(~DOSE), WARDID = pdSymm(~DOSE), PATIENTID = ~1)))

for (name in names(models)) {
  m <- models[[name]]
  out <- list()
  for (reml in c(FALSE, TRUE)) {
    fit <- polish(m$form, m$data, reml)
    cf <- summary(fit)$coefficients
    vc <- VarCorr(fit)
    fixed <- list()
    for (k in seq_len(nrow(cf))) {
      nm <- rownames(cf)[k]
      lab <- if (nm %in% names(m$labels)) m$labels[[nm]] else m$labels[[paste(rev(strsplit(nm, ":")[[1]]), collapse = ":")]]
      fixed[[lab]] <- list(est = cf[k, 1], se = cf[k, 2], lme4_name = nm)
    }
    taus <- lapply(m$groups, function(g) unname(as.matrix(vc[[g]])))
    nl <- lme(m$nlme_fixed, random = m$nlme_random, data = m$data, method = if (reml) "REML" else "ML",
              control = lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12,
                                   niterEM = 100, opt = "optim"))
    out[[if (reml) "reml" else "ml"]] <- c(list(
      tool = paste("lme4", packageVersion("lme4")), formula = deparse(m$form, width.cutoff = 500L),
      fixed = fixed), taus, list(sigma2 = sigma(fit)^2, deviance = crit(fit, reml),
      optimizer = fit@optinfo$optimizer,
      nlme = list(tool = paste("nlme", packageVersion("nlme")), fixed = as.list(fixef(nl)),
                  sigma2 = nl$sigma^2, minus2loglik = -2 * as.numeric(logLik(nl)))))
  }
  writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), paste0(out_dir, name, ".json"))
}
