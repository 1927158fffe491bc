# Reference numbers for tests/test_hmlm.py: HLM 7's HMLM level-1 covariance structures, fitted by nlme.
# Data (written to tests/data/hmlm/ as HLM 7's two files, level 1 = occasions, level 2 = persons):
#   early: mlmRev's Early (103 children, cognitive score at ages 1, 1.5, 2), with occasions deleted by a fixed
#     rule so that 19 children have missing occasions; OCC = 1, 2, 3; AGE = age - 1; TRT at level 2.
#   orthodont: nlme's Orthodont (27 children, distance at ages 8..14, complete); OCC = 1..4, AGE = age - 8;
#     FEMALE at level 2.
# Structures (Delta = the within-person covariance over the T occasions):
#   unrestricted: gls with corSymm(form = ~ OCC | ID) + varIdent(form = ~ 1 | OCC) (no random effects);
#   homogeneous:  lme, Delta = sigma2 I;
#   heterogeneous: lme with varIdent(form = ~ 1 | OCC);
#   ar1:          lme with corAR1(form = ~ OCC | ID): lag = difference of occasion indices.
# Each model is fitted with opt = "nlminb" and opt = "optim" (BFGS), tolerances tightened; the lower deviance
# is kept and the other is stored too (their difference shows how far an optimizer can stop short).
# Run from the repository root:  Rscript tests/reference_scripts/hmlm_nlme.R
suppressPackageStartupMessages({library(nlme); library(mlmRev); library(lme4); library(jsonlite)})
dir <- "tests/data/hmlm"
e <- Early; e$ID <- as.integer(as.character(e$id)); e$OCC <- as.integer(round((e$age - 1) * 2 + 1))
k <- match(e$ID, unique(e$ID))
e <- e[!((k * 7 + e$OCC * 3) %% 11 == 0), ]
e <- e[order(e$ID, e$OCC), ]
e$AGE <- e$age - 1; e$COG <- e$cog; e$TRT <- as.integer(e$trt == "Y")
write.csv(e[, c("ID", "OCC", "AGE", "COG")], file.path(dir, "early1.csv"), row.names = FALSE)
write.csv(unique(e[, c("ID", "TRT")]), file.path(dir, "early2.csv"), row.names = FALSE)
o <- as.data.frame(Orthodont); o$ID <- as.integer(sub("^[MF]", "", as.character(o$Subject))) +
  100 * (o$Sex == "Female")
o$OCC <- as.integer((o$age - 8) / 2 + 1); o$AGE <- o$age - 8; o$DISTANCE <- o$distance
o$FEMALE <- as.integer(o$Sex == "Female"); o <- o[order(o$ID, o$OCC), ]
write.csv(o[, c("ID", "OCC", "AGE", "DISTANCE")], file.path(dir, "orthodont1.csv"), row.names = FALSE)
write.csv(unique(o[, c("ID", "FEMALE")]), file.path(dir, "orthodont2.csv"), row.names = FALSE)

lctrl <- function(opt) lmeControl(maxIter = 1000, msMaxIter = 5000, msMaxEval = 5000, niterEM = 0, tolerance = 1e-12,
                                  msTol = 1e-14, rel.tol = 1e-15, opt = opt, optimMethod = "BFGS",
                                  returnObject = TRUE)
gctrl <- function(opt) glsControl(maxIter = 1000, msMaxIter = 5000, tolerance = 1e-12, msTol = 1e-14,
                                  opt = opt, optimMethod = "BFGS", returnObject = TRUE)
best <- function(fitter) {
  fits <- lapply(c("nlminb", "optim"), function(opt) tryCatch({
      setTimeLimit(elapsed = 120, transient = TRUE); on.exit(setTimeLimit(elapsed = Inf)); fitter(opt) }, error = function(err) { message(opt, ": ", conditionMessage(err)); NULL }))
  dev <- sapply(fits, function(m) if (is.null(m)) Inf else -2 * as.numeric(logLik(m)))
  message(sprintf("  %s: nlminb %.10f optim %.10f", Sys.time(), dev[1], dev[2]))
  list(model = fits[[which.min(dev)]], deviances = setNames(as.list(dev), c("nlminb", "optim")))
}
plain <- function(x) { x <- as.matrix(x); matrix(as.numeric(x), nrow(x)) }
record <- function(b, d, complete_id, q) {
  m <- b$model
  out <- list(deviance = -2 * as.numeric(logLik(m)), optimizers = b$deviances, fixef = unname(if (inherits(m, "gls")) coef(m) else fixef(m)),
              se = unname(sqrt(diag(vcov(m)))), n_obs = nrow(d), complete_id = complete_id)
  if (inherits(m, "gls")) {
    out$delta <- plain(getVarCov(m, individual = as.character(complete_id)))
  } else {
    out$tau <- unname(matrix(as.numeric(getVarCov(m)), q, q))
    out$delta <- plain(getVarCov(m, individual = as.character(complete_id), type = "conditional")[[1]])
    out$marginal <- plain(getVarCov(m, individual = as.character(complete_id), type = "marginal")[[1]])
    out$sigma2 <- m$sigma^2
    cs <- m$modelStruct$corStruct
    if (!is.null(cs)) out$rho <- as.numeric(coef(cs, unconstrained = FALSE))
  }
  out
}
# which structures each data set is fitted with: nlme's AR(1) and heterogeneous fits with two random effects
# on Early's three occasions run for many minutes (a boundary: the deviance is flat there), so those have one
models <- list(
  list(data = "early", fixed = COG ~ AGE * TRT, random = ~ 1 + AGE | ID, q = 2,
       structures = c("unrestricted", "homogeneous")),
  list(data = "early_u0", fixed = COG ~ AGE * TRT, random = ~ 1 | ID, q = 1,
       structures = c("homogeneous", "heterogeneous", "ar1")),
  list(data = "orthodont", fixed = DISTANCE ~ AGE * FEMALE, random = ~ 1 + AGE | ID, q = 2,
       structures = c("homogeneous", "ar1")),
  list(data = "orthodont_u0", fixed = DISTANCE ~ AGE * FEMALE, random = ~ 1 | ID, q = 1,
       structures = c("homogeneous", "heterogeneous")))
fitters <- list(
  unrestricted = function(spec, d, method) function(opt) gls(spec$fixed, data = d, method = method,
    correlation = corSymm(form = ~ OCC | ID), weights = varIdent(form = ~ 1 | OCC), control = gctrl(opt)),
  homogeneous = function(spec, d, method) function(opt) lme(spec$fixed, random = spec$random, data = d,
    method = method, control = lctrl(opt)),
  heterogeneous = function(spec, d, method) function(opt) lme(spec$fixed, random = spec$random, data = d,
    method = method, weights = varIdent(form = ~ 1 | OCC), control = lctrl(opt)),
  ar1 = function(spec, d, method) function(opt) lme(spec$fixed, random = spec$random, data = d,
    method = method, correlation = corAR1(form = ~ OCC | ID), control = lctrl(opt)))
out <- list()
for (spec in models) {
  d <- if (startsWith(spec$data, "early")) e else o
  d <- d[order(d$ID, d$OCC), ]
  sizes <- table(d$ID); complete_id <- as.integer(names(sizes)[sizes == max(d$OCC)][1])
  for (method in c("REML", "ML")) {
    for (s in spec$structures) {
      message(spec$data, " ", s, " ", method)
      out[[paste(spec$data, s, method, sep = "_")]] <- record(best(fitters[[s]](spec, d, method)), d, complete_id,
                                                              if (s == "unrestricted") 0 else spec$q)
    }
    # a second tool for the homogeneous model: lmer
    lm4 <- lmer(update(spec$fixed, as.formula(paste(". ~ . + (", as.character(spec$random)[2], ")"))), data = d,
                REML = method == "REML", control = lmerControl(optimizer = "bobyqa",
                                                               optCtrl = list(rhoend = 1e-12, maxfun = 1e5)))
    out[[paste(spec$data, "homogeneous", method, sep = "_")]]$lmer_deviance <- -2 * as.numeric(logLik(lm4))
  }
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(dir, "hmlm_nlme.json"))
