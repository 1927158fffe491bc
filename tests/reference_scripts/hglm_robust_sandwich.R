# Reference for tests/test_hglm_quadrature.py::test_laplace_and_agq_robust_se_match_an_independent_sandwich.
# The cluster-robust (CR0) sandwich of the ML estimates over all parameters (theta = the random
# intercept's SD, beta): A^-1 B A^-1 with A the Hessian of -log L and B = sum_j s_j s_j', s_j the
# gradient of unit j's log-likelihood. Each unit's log-likelihood is written here from the model
# (Laplace, or adaptive Gauss-Hermite with 25 points centred and scaled at the unit's mode, as
# glmer's nAGQ), and differentiated by numDeriv (Richardson extrapolation); the point is glmer's
# optimum (bobyqa rhoend 1e-12, tolPwrss 1e-12) polished by Newton on that log-likelihood. Run from
# tests/data/hglm:
#   Rscript ../../reference_scripts/hglm_robust_sandwich.R > robust_sandwich_refs.json
suppressMessages({library(lme4); library(numDeriv); library(jsonlite)})

gh <- function(K) {  # Gauss-Hermite rule for the standard normal (Golub-Welsch)
  e <- eigen(diag(0, K) + { m <- matrix(0, K, K); m[cbind(1:(K - 1), 2:K)] <- sqrt(1:(K - 1)); m + t(m) },
             symmetric = TRUE)
  list(z = e$values, w = e$vectors[1, ]^2)
}

models <- list(
  cbpp = list(l1 = "cbpp_l1.csv", l2 = "cbpp_l2.csv", id = "HERD", family = "binomial",
              f = cbind(INCID, SIZE - INCID) ~ P2 + P3 + P4 + (1 | HERD), x = c("P2", "P3", "P4"),
              y = "INCID", n = "SIZE", off = NULL),
  mmmec = list(l1 = "mmmec_l1.csv", l2 = "mmmec_l2.csv", id = "REGION", family = "poisson",
               f = DEATHS ~ UVB + offset(log(EXPECTED)) + (1 | REGION), x = "UVB", y = "DEATHS", n = NULL,
               off = "EXPECTED"),
  contra = list(l1 = "contra_l1.csv", l2 = "contra_l2.csv", id = "DISTRICT", family = "bernoulli",
                f = USE ~ URBAN + AGE + LC1 + LC2 + LC3 + (1 | DISTRICT), x = c("URBAN", "AGE", "LC1", "LC2", "LC3"),
                y = "USE", n = NULL, off = NULL))

unit_loglik <- function(par, X, y, n, off, unit, family, K) {
  th <- par[1]; beta <- par[-1]
  eta0 <- drop(X %*% beta) + off
  rule <- if (K > 1) gh(K) else NULL
  ll <- function(eta, yy, nn) {
    if (family == "poisson") yy * eta - exp(eta) else yy * eta - nn * log1p(exp(eta))
  }
  sapply(split(seq_along(y), unit), function(ix) {
    e0 <- eta0[ix]; yy <- y[ix]; nn <- n[ix]
    u <- 0
    for (it in 1:200) {
      eta <- e0 + th * u
      mu <- if (family == "poisson") exp(eta) else nn * plogis(eta)
      w <- if (family == "poisson") mu else mu * (1 - plogis(eta))
      step <- (th * sum(yy - mu) - u) / (th^2 * sum(w) + 1)
      u <- u + step
      if (abs(step) < 1e-14) break
    }
    eta <- e0 + th * u
    w <- if (family == "poisson") exp(eta) else nn * plogis(eta) * (1 - plogis(eta))
    H <- th^2 * sum(w) + 1
    f <- function(v) sum(ll(e0 + th * v, yy, nn)) - v^2 / 2
    if (K == 1) return(f(u) - 0.5 * log(H))
    t <- sapply(seq_len(K), function(k) log(rule$w[k]) + f(u + rule$z[k] / sqrt(H)) + rule$z[k]^2 / 2)
    m <- max(t)
    m + log(sum(exp(t - m))) - 0.5 * log(H)
  })
}

ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5), tolPwrss = 1e-12)
out <- list()
for (name in names(models)) {
  s <- models[[name]]
  d <- merge(read.csv(s$l1), read.csv(s$l2), by = s$id, sort = FALSE)
  d <- d[order(d[[s$id]]), ]
  fam <- if (s$family == "poisson") poisson else binomial
  X <- cbind(1, as.matrix(d[, s$x, drop = FALSE]))
  y <- d[[s$y]]
  n <- if (is.null(s$n)) rep(1, nrow(d)) else d[[s$n]]
  off <- if (is.null(s$off)) rep(0, nrow(d)) else log(d[[s$off]])
  res <- list()
  for (K in c(1L, 25L)) {
    m <- glmer(s$f, data = d, family = fam, nAGQ = K, control = ctrl)
    # polish glmer's optimum on this file's own log-likelihood (glmer's bobyqa stops up to 3e-5
    # relative short in the SEs on contra): Newton with numDeriv's gradient and Hessian
    par <- c(getME(m, "theta"), fixef(m))
    total <- function(p) sum(unit_loglik(p, X, y, n, off, d[[s$id]], s$family, K))
    for (it in 1:5) {
      step <- solve(-hessian(total, par), grad(total, par))
      par <- par + step
      if (max(abs(step)) < 1e-12) break
    }
    S <- jacobian(unit_loglik, par, X = X, y = y, n = n, off = off, unit = d[[s$id]], family = s$family, K = K)
    A <- -hessian(function(p) sum(unit_loglik(p, X, y, n, off, d[[s$id]], s$family, K)), par)
    Ai <- solve(A)
    V <- Ai %*% crossprod(S) %*% Ai
    p <- length(par)
    res[[if (K == 1) "laplace" else "agq25"]] <- list(
      estimate = unname(par[-1]), theta = unname(par[1]), glmer_estimate = unname(fixef(m)),
      robust_se = sqrt(diag(V))[2:p], model_se = sqrt(diag(Ai))[2:p],
      glmer_se = unname(sqrt(diag(as.matrix(vcov(m))))))
  }
  out[[name]] <- res
}
out$tool <- paste("numDeriv", packageVersion("numDeriv"), "on per-unit log-likelihoods written in R; lme4",
                  packageVersion("lme4"), "glmer optimum")
cat(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE))
