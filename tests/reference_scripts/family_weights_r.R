# Reference fits with level-1 sampling weights for the ordinal and negative binomial families:
# ordinal::clmm (weights = case weights, multiplying each record's log-likelihood inside the unit's
# integral) and glmmTMB's nbinom2 (weights multiply the log-likelihood terms likewise), both with the raw
# weight column W1 of tests/data/family_weights/ (hlmcli --weight1 W1 --normalize none). Writes
# tests/data/family_weights/r_refs.json. Run from the repository root:
#   Rscript tests/reference_scripts/family_weights_r.R
# Optimizers tightened: clmm nlminb with gradTol 1e-12; glmmTMB nlminb rel.tol 1e-14 (nlminb then
# reports "singular convergence (7)": it cannot reduce the deviance further in its precision, and the
# optimum agrees with hlmcli's certified one to 1e-10 in deviance).
# Cross-check: at each optimum the weighted deviance is recomputed by numerical integration
# (stats::integrate per unit; the AGQ fit's reference) or Laplace's formula at the mode found by
# optimize() (the Laplace fit's), written here apart from both packages, and must agree to 1e-6.
# clmm's parametrisation: logit P(Y <= j) = theta_j - x'beta - u; hlmcli's: gamma00 = theta_1,
# delta(m) = theta_m - theta_(m-1), gamma = -beta; tau the same.
suppressMessages({library(ordinal); library(glmmTMB); library(jsonlite)})
d <- "tests/data/family_weights"

wine <- read.csv(file.path(d, "wine_l1.csv"))
wine$r <- factor(wine$rating, ordered = TRUE)
ctrl <- clmm.control(method = "nlminb", gradTol = 1e-12, maxIter = 200, innerCtrl = "noWarn")

unit_h_ord <- function(theta, beta, y, X, w) {
  cuts <- c(-Inf, theta, Inf)
  eta <- drop(X %*% beta)
  function(u) sapply(u, function(b) sum(w * log(plogis(cuts[y + 1] - eta - b) - plogis(cuts[y] - eta - b))))
}
unit_h_nb <- function(beta, th, y, X, w) {
  eta <- drop(X %*% beta)
  h <- function(u) sapply(u, function(b) sum(w * dnbinom(y, size = th, mu = exp(eta + b), log = TRUE)))
  # -h''(u) = sum w (y + theta) p q, p = mu/(theta + mu), q = 1 - p: the Laplace check's curvature exactly
  # (a second difference of h loses ~1e-6 in a unit's log-determinant)
  attr(h, "curv") <- function(b) { mu <- exp(eta + b); sum(w * (y + th) * mu * th / (th + mu)^2) }
  h
}
# -2 sum_j log integral of exp(h_j(u)) N(u; 0, sd^2) du: by integrate() (laplace = FALSE) or Laplace
weighted_deviance <- function(hs, sd, laplace) {
  -2 * sum(sapply(hs, function(h) {
    g <- function(u) h(u) + dnorm(u, 0, sd, log = TRUE)
    m <- optimize(function(u) -g(u), c(-20, 20), tol = 1e-12)$minimum
    e <- 1e-4
    curv <- if (is.null(attr(h, "curv"))) -(g(m + e) - 2 * g(m) + g(m - e)) / e^2 else attr(h, "curv")(m) + 1 / sd^2
    if (laplace) return(g(m) + 0.5 * log(2 * pi / curv))
    top <- g(m)
    s <- 1 / sqrt(curv)
    log(integrate(function(u) exp(g(u) - top), m - 40 * s, m + 40 * s, rel.tol = 1e-12, subdivisions = 500)$value) + top
  }))
}

ord_fit <- function(nagq) {
  m <- clmm(r ~ warm + contact + (1 | judge), data = wine, weights = W1, nAGQ = nagq, control = ctrl)
  th <- unname(m$alpha); be <- unname(m$beta); sd <- unname(m$ST[[1]][1, 1])
  X <- cbind(wine$warm, wine$contact)
  hs <- lapply(split(seq_len(nrow(wine)), wine$judge),
               function(i) unit_h_ord(th, be, wine$rating[i], X[i, , drop = FALSE], wine$W1[i]))
  dev <- -2 * as.numeric(logLik(m))
  check <- weighted_deviance(hs, sd, nagq == 1)
  stopifnot(abs(dev - check) < 1e-6)
  list(gamma = c(th[1], -be), delta = diff(th), tau = sd^2, deviance = dev, integrated_deviance = check,
       se_theta_beta = unname(sqrt(diag(vcov(m))))[seq_len(length(th) + length(be))], nAGQ = nagq,
       call = sprintf("clmm(factor(rating, ordered = TRUE) ~ warm + contact + (1 | judge), weights = W1, nAGQ = %d)", nagq))
}

sal <- merge(read.csv(file.path(d, "salamanders_l1.csv")), read.csv(file.path(d, "salamanders_l2.csv")), by = "site")
sal <- sal[order(sal$site), ]
tctl <- glmmTMBControl(optCtrl = list(rel.tol = 1e-14, eval.max = 10000, iter.max = 10000))
nb <- glmmTMB(count ~ mined + (1 | site), data = sal, family = nbinom2, weights = W1, control = tctl)
cf <- unname(fixef(nb)$cond); th <- unname(sigma(nb)); sd <- sqrt(unname(as.numeric(VarCorr(nb)$cond[[1]])))
X <- cbind(1, sal$mined)
hs <- lapply(split(seq_len(nrow(sal)), sal$site),
             function(i) unit_h_nb(cf, th, sal$count[i], X[i, , drop = FALSE], sal$W1[i]))
nb_dev <- -2 * as.numeric(logLik(nb))
nb_check <- weighted_deviance(hs, sd, TRUE)
stopifnot(abs(nb_dev - nb_check) < 1e-6)

out <- list(
  tool = sprintf("R %s, ordinal %s, glmmTMB %s", getRversion(), packageVersion("ordinal"), packageVersion("glmmTMB")),
  weights = "--weight1 W1 --normalize none",
  wine_laplace = ord_fit(1), wine_agq10 = ord_fit(10),
  salamanders_laplace = list(gamma = cf, theta = th, tau = sd^2, deviance = nb_dev, laplace_deviance = nb_check,
                             gamma_se = unname(sqrt(diag(vcov(nb)$cond))),
                             call = "glmmTMB(count ~ mined + (1 | site), family = nbinom2, weights = W1)"))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(d, "r_refs.json"))
cat(toJSON(out, digits = 10, auto_unbox = TRUE, pretty = TRUE), "\n")
