# Reference numbers for tests/test_hmlm.py (HMLM2 engine): mlmRev's egsingle (HLM's EG data: mathematics of
# children in schools, years -2.5..2.5 = occasions 1..6, children missing years), its first 15 schools,
# written to tests/data/hmlm/eg15.csv. nlme::lme with two grouping levels (schools, children within them):
#   MATH ~ YEAR + (1 | school) + (1 + YEAR | child), within-child Delta heterogeneous (varIdent by OCC) or
#   AR(1) in the occasion index (corAR1(form = ~ OCC | SCHOOL/CHILD)); REML and ML; nlminb and optim (BFGS),
#   tolerances tightened, the lower deviance kept.
# Run from the repository root:  Rscript tests/reference_scripts/hmlm2_nlme.R
suppressPackageStartupMessages({library(nlme); library(mlmRev); library(jsonlite)})
dir <- "tests/data/hmlm"
e <- egsingle[egsingle$schoolid %in% levels(egsingle$schoolid)[1:15], ]
d <- data.frame(SCHOOL = as.integer(as.character(e$schoolid)), CHILD = as.numeric(as.character(e$childid)),
                OCC = as.integer(e$year + 3.5), YEAR = e$year, MATH = e$math)
d <- d[order(d$SCHOOL, d$CHILD, d$OCC), ]
d$CHILD <- match(d$CHILD, unique(d$CHILD))  # ids 1..n (the originals are 9-digit numbers)
write.csv(d, file.path(dir, "eg15.csv"), row.names = FALSE)
lctrl <- function(opt) lmeControl(maxIter = 1000, msMaxIter = 5000, msMaxEval = 5000, niterEM = 0, tolerance = 1e-12,
                                  msTol = 1e-14, rel.tol = 1e-15, opt = opt, optimMethod = "BFGS",
                                  returnObject = TRUE)
best <- function(fitter) {
  fits <- lapply(c("nlminb", "optim"), function(opt) tryCatch({
      setTimeLimit(elapsed = 300, transient = TRUE); on.exit(setTimeLimit(elapsed = Inf)); fitter(opt) },
    error = function(err) { message(opt, ": ", conditionMessage(err)); NULL }))
  dev <- sapply(fits, function(m) if (is.null(m)) Inf else -2 * as.numeric(logLik(m)))
  message(sprintf("  %s: nlminb %.10f optim %.10f", Sys.time(), dev[1], dev[2]))
  list(model = fits[[which.min(dev)]], deviances = setNames(as.list(dev), c("nlminb", "optim")))
}
out <- list()
for (method in c("REML", "ML")) {
  for (s in c("heterogeneous", "ar1", "homogeneous")) {
    b <- best(function(opt) lme(MATH ~ YEAR, random = list(SCHOOL = ~ 1, CHILD = ~ 1 + YEAR), data = d,
                                method = method, control = lctrl(opt),
                                weights = if (s == "heterogeneous") varIdent(form = ~ 1 | OCC) else NULL,
                                correlation = if (s == "ar1") corAR1(form = ~ OCC | SCHOOL/CHILD) else NULL))
    m <- b$model
    vc <- m$modelStruct$reStruct
    tau3 <- as.matrix(pdMatrix(vc$SCHOOL) * m$sigma^2); tau2 <- as.matrix(pdMatrix(vc$CHILD) * m$sigma^2)
    w <- if (s == "heterogeneous") {
      r <- coef(m$modelStruct$varStruct, unconstrained = FALSE)
      g <- attr(m$modelStruct$varStruct, "groupNames")
      v <- setNames(c(1, r)^2, g)[as.character(1:6)] * m$sigma^2
      as.numeric(v)
    } else NULL
    out[[paste(s, method, sep = "_")]] <- list(
      deviance = -2 * as.numeric(logLik(m)), optimizers = b$deviances, fixef = unname(fixef(m)),
      se = unname(sqrt(diag(vcov(m)))), tau_school = unname(matrix(as.numeric(tau3), 1)),
      tau_child = unname(matrix(as.numeric(tau2), 2, 2)), sigma2 = m$sigma^2, sigma2_by_occasion = w,
      rho = if (s == "ar1") as.numeric(coef(m$modelStruct$corStruct, unconstrained = FALSE)) else NULL)
  }
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "hmlm2_nlme.json"))
