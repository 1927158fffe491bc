# Reference for tests/test_hglm.py::test_diagonal_tau_pql_matches_nlme (--tau diagonal, full PQL).
# PQL written out: macro iterations on the working variate z = η + (y − p)/w with weights w = p(1 − p),
# each fitted by nlme::lme (ML, level-1 scale fixed at 1, independent random intercept and slope),
# until max|Δη| < 1e-8·(1 + max|η|), as hlmcli's --ml PQL.
# Data: tests/data/hglm/contra_l*.csv. Run from tests/data/hglm:
#   Rscript ../../reference_scripts/hglm_diagonal_pql.R > contra_diag_pql_ml.json
suppressMessages({library(nlme); library(jsonlite)})
d <- merge(read.csv("contra_l1.csv"), read.csv("contra_l2.csv"), by = "DISTRICT")
d <- d[order(d$DISTRICT), ]
eta <- qlogis((d$USE + 0.5) / 2)
for (it in 1:200) {
  p <- plogis(eta)
  d$w <- p * (1 - p)
  d$z <- eta + (d$USE - p) / d$w
  m <- lme(z ~ URBAN + AGE, random = list(DISTRICT = pdDiag(~ URBAN)), data = d, weights = varFixed(~ I(1 / w)),
           method = "ML", control = lmeControl(sigma = 1, maxIter = 500, msMaxIter = 500, tolerance = 1e-12,
                                               msTol = 1e-14, returnObject = TRUE))
  new <- as.numeric(fitted(m, level = 1))
  done <- max(abs(new - eta)) < 1e-8 * (1 + max(abs(new)))
  eta <- new
  if (done) break
}
vc <- unname(diag(as.matrix(getVarCov(m))))
cat(toJSON(list(tool = paste("nlme", packageVersion("nlme"), "lme ML, sigma = 1, pdDiag, PQL macro iterations written out"),
                macro_iterations = it, fixef = as.list(fixef(m)), se = as.list(sqrt(diag(vcov(m)))), tau = vc),
           digits = NA, auto_unbox = TRUE))
