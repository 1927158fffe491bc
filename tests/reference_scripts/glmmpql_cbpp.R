# Reference for tests/test_r_pointer.py: MASS::glmmPQL on the cbpp data (tests/data/hglm/cbpp_*.csv).
# glmmPQL is full PQL (nlme::lme with method "ML") with a free level-1 scale: hlmcli's --ml --overdispersion.
# glmmPQL stops when sum((eta - eta_old)^2) < 1e-6 * sum(eta^2), about 1e-4 from its fixed point in τ here,
# so the same loop is also run to a tight fixed point (max |Δη| < 1e-12, lme's tolerances tightened):
# "fixed_point" is what the tests compare with; "glmmPQL" is what glmmPQL itself prints.
# Run from the repository root:  Rscript tests/reference_scripts/glmmpql_cbpp.R > tests/data/hglm/glmmpql_cbpp.json
suppressMessages({library(MASS); library(nlme); library(jsonlite)})
d <- merge(read.csv("tests/data/hglm/cbpp_l1.csv"), read.csv("tests/data/hglm/cbpp_l2.csv"), by = "HERD")
f <- glmmPQL(cbind(INCID, SIZE - INCID) ~ 1 + P2 + P3 + P4, random = ~ 1 | HERD, family = binomial, data = d,
             niter = 200, verbose = FALSE)
d$p <- d$INCID / d$SIZE
eta <- qlogis((d$INCID + 0.5) / (d$SIZE + 1))
for (i in 1:1000) {
  mu <- plogis(eta); w <- d$SIZE * mu * (1 - mu)
  d$zz <- eta + (d$p - mu) / (mu * (1 - mu)); d$invwt <- 1 / w
  g <- lme(zz ~ 1 + P2 + P3 + P4, random = ~ 1 | HERD, data = d, weights = varFixed(~ invwt), method = "ML",
           control = lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-12, msTol = 1e-14, niterEM = 100))
  new <- fitted(g)
  done <- max(abs(new - eta)) < 1e-12
  eta <- new
  if (done) break
}
out <- list(source = "MASS::glmmPQL and its loop run to max|Δη| < 1e-12 with nlme::lme, R",
            MASS = as.character(packageVersion("MASS")), nlme = as.character(packageVersion("nlme")),
            glmmPQL = list(gamma = unname(fixef(f)), tau00 = as.numeric(getVarCov(f)[1, 1]), sigma2 = f$sigma^2),
            fixed_point = list(iterations = i, gamma = unname(fixef(g)), tau00 = as.numeric(getVarCov(g)[1, 1]),
                               sigma2 = g$sigma^2))
cat(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), "\n")
