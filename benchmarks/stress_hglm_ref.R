# References for benchmarks/stress_hglm.py: glmer (Laplace; AGQ with hlmcli's chosen number of points
# for q = 1) and glmmTMB (Laplace) on every data set that stress_hglm.py generated.
#
#   Rscript benchmarks/stress_hglm_ref.R DIR         # glmer Laplace and glmmTMB (after `generate DIR`)
#   Rscript benchmarks/stress_hglm_ref.R DIR agq     # glmer nAGQ = hlmcli's K for q = 1 (after `run DIR`)
#
# Writes DIR/ref/<case>.json: for each fit the full -2 log-likelihood (every constant), beta in the
# order (Intercept), W, X1, X2 (hlmcli's g00, g01, g10, g20) and tau. glmer is tightened: bobyqa with
# rhoend 1e-10 and maxfun 1e5, tolPwrss 1e-12, and for nAGQ > 1 a second bobyqa run from the first
# optimum. glmmTMB is run with its defaults and then its optimizer's eval.max/iter.max raised.
suppressPackageStartupMessages({
  library(lme4)
  library(glmmTMB)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
root <- args[[1]]
mode <- if (length(args) > 1) args[[2]] else "laplace"  # "agq": add glmer(nAGQ = hlmcli's K) for q = 1
dir.create(file.path(root, "ref"), showWarnings = FALSE)
cases <- fromJSON(file.path(root, "cases.json"), simplifyDataFrame = FALSE)

formula_of <- function(case) {
  re <- c("(1 | ID)", "(1 + X1 | ID)", "(1 + X1 + X2 | ID)")[case$q]
  lhs <- if (case$family == "binomial") "cbind(Y, T - Y)" else "Y"
  off <- if (case$family == "poisson") " + offset(log(E))" else ""
  as.formula(paste0(lhs, " ~ W + X1 + X2", off, " + ", re))
}

ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5),
                     tolPwrss = 1e-12, check.conv.singular = "ignore", calc.derivs = FALSE)

tau_of <- function(vc) {
  m <- as.matrix(vc)
  attr(m, "stddev") <- NULL
  attr(m, "correlation") <- NULL
  unname(m[, , drop = FALSE])
}

glmer_fit <- function(case, d, nAGQ) {
  fam <- if (case$family == "poisson") poisson else binomial
  f <- formula_of(case)
  out <- tryCatch({
    m <- suppressWarnings(glmer(f, data = d, family = fam, nAGQ = nAGQ, control = ctrl))
    if (nAGQ > 1) {  # a second run from the first optimum (theta, beta)
      m2 <- suppressWarnings(update(m, start = list(theta = getME(m, "theta"), fixef = fixef(m))))
      if (-2 * as.numeric(logLik(m2)) < -2 * as.numeric(logLik(m))) m <- m2
    }
    # under nAGQ > 1 glmer's logLik() is relative to the saturated model: add that model's log-likelihood back
    sat <- if (nAGQ == 1) 0 else if (case$family == "poisson") sum(dpois(d$Y, d$Y, log = TRUE)) else
      if (case$family == "binomial") sum(dbinom(d$Y, d$T, d$Y / d$T, log = TRUE)) else 0
    list(deviance = -2 * (as.numeric(logLik(m)) + sat), beta = unname(fixef(m)[c("(Intercept)", "W", "X1", "X2")]),
         tau = tau_of(VarCorr(m)$ID), nAGQ = nAGQ, singular = isSingular(m),
         messages = as.list(m@optinfo$conv$lme4$messages))
  }, error = function(e) list(deviance = NULL, error = conditionMessage(e)))
  out
}

tmb_fit <- function(case, d) {
  fam <- if (case$family == "poisson") poisson else binomial
  tryCatch({
    m <- suppressWarnings(glmmTMB(formula_of(case), data = d, family = fam,
                                  control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4))))
    ll <- as.numeric(logLik(m))
    list(deviance = if (is.finite(ll)) -2 * ll else NULL,
         beta = unname(fixef(m)$cond[c("(Intercept)", "W", "X1", "X2")]),
         tau = tau_of(VarCorr(m)$cond$ID), pdHess = m$sdr$pdHess)
  }, error = function(e) list(deviance = NULL, error = conditionMessage(e)))
}

for (case in cases) {
  target <- file.path(root, "ref", paste0(case$id, ".json"))
  if (mode != "agq" && file.exists(target)) next
  l1 <- read.csv(file.path(root, paste0(case$id, "_l1.csv")))
  l2 <- read.csv(file.path(root, paste0(case$id, "_l2.csv")))
  d <- merge(l1, l2, by = "ID", sort = FALSE)
  d$ID <- factor(d$ID)
  res <- if (file.exists(target)) fromJSON(target, simplifyDataFrame = FALSE) else
    list(id = case$id, glmer_laplace = glmer_fit(case, d, 1L), tmb = tmb_fit(case, d))
  if (mode == "agq") {
    if (case$q != 1) next
    # glmer with the number of points hlmcli chose (the same objective as hlmcli's AGQ for q = 1)
    agq <- file.path(root, "hlmcli", paste0(case$id, "_agq.json"))
    if (!file.exists(agq)) next
    rec <- fromJSON(agq, simplifyDataFrame = FALSE)
    K <- as.integer(rec$json$quadrature_points)
    if (length(K) == 0 || (!is.null(res$glmer_agq) && identical(as.integer(res$glmer_agq$nAGQ), K))) next
    res$glmer_agq <- glmer_fit(case, d, K)
  } else if (file.exists(target)) next
  res$versions <- list(lme4 = as.character(packageVersion("lme4")), glmmTMB = as.character(packageVersion("glmmTMB")),
                       R = R.version.string)
  writeLines(toJSON(res, auto_unbox = TRUE, digits = NA, null = "null"), target)
  cat(case$id, "\n")
}
