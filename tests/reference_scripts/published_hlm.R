# Reference numbers for tests/test_explain_published.py, independent of hlmcli:
# 1. writes mlmRev's Early and bdf as the two-file layout HLM reads (level-1 and level-2 CSVs);
# 2. fits each published model with lme4 (tight control) and, as a cross-check, nlme;
# 3. evaluates the (RE)ML deviance at HLM's printed sigma^2 and tau with a dense computation
#    (V_j = Z_j tau Z_j' + sigma^2 I, gamma by GLS at that point), written out here, not lme4's.
# Run from the repository root: Rscript tests/reference_scripts/published_hlm.R
suppressPackageStartupMessages({library(lme4); library(mlmRev); library(nlme); library(jsonlite)})
out <- "tests/data/published"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
options(digits = 15)

## Early (Singer & Willett Table 3.3): TIME = AGE - 1, PROGRAM = 1 for the treated
e <- mlmRev::Early
l1 <- data.frame(ID = as.integer(as.character(e$id)), COG = e$cog, TIME = e$age - 1)
l2 <- unique(data.frame(ID = as.integer(as.character(e$id)), PROGRAM = as.integer(e$trt == "Y")))
write.csv(l1, file.path(out, "early_l1.csv"), row.names = FALSE)
write.csv(l2, file.path(out, "early_l2.csv"), row.names = FALSE)

## bdf (Snijders & Bosker ch. 4): LANGPOST, IQ_VERB (HLM centres it on the grand mean)
b <- mlmRev::bdf
b1 <- data.frame(SCHOOL = as.integer(as.character(b$schoolNR)), LANGPOST = b$langPOST, IQ_VERB = b$IQ.verb)
b2 <- data.frame(SCHOOL = sort(unique(b1$SCHOOL)))
write.csv(b1, file.path(out, "bdf_l1.csv"), row.names = FALSE)
write.csv(b2, file.path(out, "bdf_l2.csv"), row.names = FALSE)

dense_deviance <- function(y, X, Z, g, sigma2, tau, reml) {
  # -2 log L (ML) or -2 log L_R (REML) at (sigma2, tau), gamma by GLS
  p <- ncol(X); XtVX <- matrix(0, p, p); XtVy <- rep(0, p); logdet <- 0; blocks <- list()
  for (j in unique(g)) {
    i <- which(g == j); Zj <- Z[i, , drop = FALSE]
    V <- Zj %*% tau %*% t(Zj) + diag(sigma2, length(i))
    Vi <- solve(V); logdet <- logdet + as.numeric(determinant(V, logarithm = TRUE)$modulus)
    XtVX <- XtVX + t(X[i, , drop = FALSE]) %*% Vi %*% X[i, , drop = FALSE]
    XtVy <- XtVy + t(X[i, , drop = FALSE]) %*% Vi %*% y[i]
    blocks[[length(blocks) + 1]] <- list(i = i, Vi = Vi)
  }
  gamma <- solve(XtVX, XtVy); r <- y - X %*% gamma; q <- 0
  for (bl in blocks) q <- q + as.numeric(t(r[bl$i]) %*% bl$Vi %*% r[bl$i])
  n <- length(y)
  if (reml) logdet + q + as.numeric(determinant(XtVX, logarithm = TRUE)$modulus) + (n - p) * log(2 * pi)
  else logdet + q + n * log(2 * pi)
}
tight <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5),
                     check.conv.singular = "ignore")
vc <- function(m) { v <- VarCorr(m)[[1]]; list(sigma2 = sigma(m)^2, tau = unname(matrix(as.numeric(v), nrow(v)))) }
res <- list()

## Singer & Willett Table 3.3: COG = B0 + B1*TIME; B0 = G00 + G01*PROGRAM + U0; B1 = G10 + G11*PROGRAM + U1 (ML)
d <- merge(l1, l2, by = "ID")
m <- lmer(COG ~ TIME * PROGRAM + (TIME | ID), data = d, REML = FALSE, control = tight)
X <- model.matrix(~ TIME * PROGRAM, d); Z <- cbind(1, d$TIME)
printed <- list(sigma2 = 74.24046, tau = matrix(c(124.63517, -36.41152, -36.41152, 12.29264), 2))
n2 <- lme(COG ~ TIME * PROGRAM, random = ~ TIME | ID, data = d, method = "ML",
          control = lmeControl(opt = "optim", msMaxIter = 1000, tolerance = 1e-12))
res$singer_willett_3_3 <- c(list(deviance_lme4 = deviance(m), deviance_nlme = -2 * as.numeric(logLik(n2)),
  fixef = unname(fixef(m)),
  deviance_dense_at_optimum = dense_deviance(d$COG, X, Z, d$ID, vc(m)$sigma2, vc(m)$tau, FALSE),
  deviance_dense_at_hlm = dense_deviance(d$COG, X, Z, d$ID, printed$sigma2, printed$tau, FALSE)), vc(m))

## Snijders & Bosker example 4.1: LANGPOST = B0; B0 = G00 + U0 (ML)
bd <- b1
m0 <- lmer(LANGPOST ~ 1 + (1 | SCHOOL), data = bd, REML = FALSE, control = tight)
X <- matrix(1, nrow(bd), 1); Z <- X
res$snijders_bosker_4_1 <- c(list(deviance_lme4 = deviance(m0), fixef = unname(fixef(m0)),
  deviance_dense_at_hlm = dense_deviance(bd$LANGPOST, X, Z, bd$SCHOOL, 64.56761, matrix(19.43043), FALSE)), vc(m0))

## Snijders & Bosker example 4.2: LANGPOST = B0 + B1*(IQ_VERB - grand mean); B0 = G00 + U0; B1 = G10 (ML)
bd$IQC <- bd$IQ_VERB - mean(bd$IQ_VERB)
m1 <- lmer(LANGPOST ~ IQC + (1 | SCHOOL), data = bd, REML = FALSE, control = tight)
res$snijders_bosker_4_2 <- c(list(deviance_lme4 = deviance(m1), fixef = unname(fixef(m1)),
  n = nrow(bd), units = length(unique(bd$SCHOOL))), vc(m1))

res$versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                     mlmRev = as.character(packageVersion("mlmRev")), nlme = as.character(packageVersion("nlme")))
writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out, "r_reference.json"))
