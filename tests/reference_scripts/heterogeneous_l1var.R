# Reference numbers for tests/test_heterogeneous_variance.py: HSB with a heterogeneous level-1 variance,
# log sigma2_ij = a0 + a1 * X_ij (HLM 7's heterol1var), X = FEMALE (a dummy) or SES (continuous):
#   nlme::lme with varIdent(form = ~ 1 | FEMALE) (sigma2 of the FEMALE = 1 group = sigma2 * delta^2, so
#   a1 = 2 log delta) and varExp(form = ~ SES) (sigma2 * exp(2 t SES), so a1 = 2 t), REML and ML;
#   glmmTMB with dispformula = ~ FEMALE or ~ SES (the gaussian dispersion model is log sigma2), REML and ML,
#   which also gives standard errors of a0 and a1 (from the Hessian).
# Also the homogeneous fits, for the likelihood-ratio test. Tight tolerances on every optimizer.
# Run from the repository root:  Rscript tests/reference_scripts/heterogeneous_l1var.R
suppressPackageStartupMessages({library(nlme); library(glmmTMB); library(jsonlite)})
l1 <- read.csv("sample_data/hsb/hsb1.csv"); l2 <- read.csv("sample_data/hsb/hsb2.csv")
d <- merge(l1, l2, by = "ID"); d$SES_gc <- d$SES - ave(d$SES, d$ID); d$IDf <- factor(d$ID)
# nlme's default nlminb stops 1e-6 to 6e-6 short in deviance here ("singular convergence"); its optim (BFGS) with
# tight tolerances reaches glmmTMB's optimum
ctrl <- lmeControl(msMaxIter = 5000, msMaxEval = 5000, tolerance = 1e-14, msTol = 1e-15, niterEM = 0,
                   opt = "optim", optimMethod = "BFGS", rel.tol = 1e-15)
tctrl <- glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-12))
fixed <- MATHACH ~ SES_gc * SECTOR
out <- list()
for (method in c("REML", "ML")) {
  hom <- lme(fixed, random = ~ 1 + SES_gc | ID, data = d, method = method, control = ctrl)
  out[[paste0("homogeneous_", method)]] <- list(deviance = -2 * as.numeric(logLik(hom)))
  for (x in c("FEMALE", "SES")) {
    w <- if (x == "FEMALE") varIdent(form = ~ 1 | FEMALE) else varExp(form = ~ SES)
    m <- lme(fixed, random = ~ 1 + SES_gc | ID, weights = w, data = d, method = method, control = ctrl)
    coef_w <- coef(m$modelStruct$varStruct, unconstrained = FALSE)
    a1 <- if (x == "FEMALE") 2 * log(coef_w[[1]]) else 2 * coef_w[[1]]
    # varIdent's reference group is the first level met in the data: make a0 the log variance at X = 0
    a0 <- log(m$sigma^2)
    if (x == "FEMALE" && attr(m$modelStruct$varStruct, "groupNames")[1] != "0") { a0 <- a0 + a1; a1 <- -a1 }
    tmb <- glmmTMB(update(fixed, . ~ . + (1 + SES_gc | IDf)), dispformula = as.formula(paste("~", x)), data = d,
                   REML = method == "REML", control = tctrl)
    out[[paste(x, method, sep = "_")]] <- list(
      deviance = -2 * as.numeric(logLik(m)), alpha = c(a0, a1), fixef = as.numeric(fixef(m)),
      se = as.numeric(sqrt(diag(vcov(m)))), tau = unname(matrix(as.numeric(getVarCov(m)), 2, 2)),
      glmmtmb = list(deviance = -2 * as.numeric(logLik(tmb)), alpha = as.numeric(fixef(tmb)$disp),
                     alpha_se = as.numeric(sqrt(diag(vcov(tmb)$disp))), fixef = as.numeric(fixef(tmb)$cond),
                     tau = unname(matrix(as.numeric(VarCorr(tmb)$cond$IDf), 2, 2))))
  }
}
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "tests/data/heterogeneous/hsb_l1var.json")
