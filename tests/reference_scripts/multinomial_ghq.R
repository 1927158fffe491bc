# Reference fits of the two-level multinomial (baseline-category) logit model with random intercepts
# correlated across the logits, written from the model's definition alone (no mixed-model package fits it
# by ML here: mclogit is not installable).
#
#   log(P(Y = m | b) / P(Y = 3 | b)) = g_m0 + g_m1 w + g_m2 x + b_m,  m = 1, 2,   b ~ N(0, tau), tau 2 x 2
#
# Data: tests/data/multinomial/sim_l1.csv (school, choice, x) and sim_l2.csv (school, w).
# Per unit j, f_j(u) = sum_i l_i(eta_i) - |u|^2 / 2 with b = L u (L the lower Cholesky factor of tau);
# its mode by Newton; H_j = -Hessian of f_j at the mode.
#   Laplace: log I_j = f_j(u_hat) - log|H_j| / 2
#   AGQ with K points per dimension (product rule, nodes u = u_hat + C^-T z, H = C C', z from the
#   Golub-Welsch rule for the standard normal): log I_j = -log|H|/2 + log sum_k w_k exp(f_j(u_k) + |z_k|^2/2)
# Deviance -2 sum_j log I_j, maximised by nlminb at tight tolerances, then polished by optim BFGS from
# there; the gradient at the answer by numDeriv. Output: tests/data/multinomial/ghq_reference.json.
#
# Run from the repository root: Rscript tests/reference_scripts/multinomial_ghq.R

suppressMessages(library(numDeriv))
d1 <- read.csv("tests/data/multinomial/sim_l1.csv")
d2 <- read.csv("tests/data/multinomial/sim_l2.csv")
d <- merge(d1, d2, by = "school", sort = FALSE)
d <- d[order(d$school, seq_len(nrow(d))), ]
X <- cbind(1, d$w, d$x)
units <- split(seq_len(nrow(d)), d$school)
Y <- cbind(d$choice == 1, d$choice == 2) * 1

gh_rule <- function(K) {  # Golub-Welsch for the probabilists' Hermite weight (sums to 1)
  J <- matrix(0, K, K)
  for (i in seq_len(K - 1)) J[i, i + 1] <- J[i + 1, i] <- sqrt(i)
  e <- eigen(J, symmetric = TRUE)
  list(z = e$values, w = e$vectors[1, ]^2)
}

unpack <- function(par) {
  g <- matrix(par[1:6], 3, 2)  # columns: logit 1, logit 2; rows: intercept, w, x
  L <- matrix(c(par[7], par[8], 0, par[9]), 2, 2)
  list(g = g, L = L)
}

unit_f <- function(u, eta0, Yj, L) {  # f_j(u), its gradient and minus its Hessian
  eta <- eta0 + matrix(L %*% u, nrow(eta0), 2, byrow = TRUE)
  mx <- pmax(0, apply(eta, 1, max))
  lse <- mx + log(exp(-mx) + rowSums(exp(eta - mx)))
  p <- exp(eta - lse)
  f <- sum(Yj * eta) - sum(lse) - sum(u^2) / 2
  g <- t(L) %*% colSums(Yj - p) - u
  A <- matrix(0, 2, 2)
  for (i in seq_len(nrow(p))) A <- A + diag(p[i, ]) - outer(p[i, ], p[i, ])
  list(f = f, g = g, H = t(L) %*% A %*% L + diag(2))
}

unit_mode <- function(eta0, Yj, L) {
  u <- c(0, 0)
  s <- unit_f(u, eta0, Yj, L)
  for (it in 1:200) {
    step <- solve(s$H, s$g)
    t <- 1
    repeat {
      s2 <- unit_f(u + t * step, eta0, Yj, L)
      if (s2$f >= s$f - 1e-12 * abs(s$f) || t < 1e-10) break
      t <- t / 2
    }
    u <- u + t * step
    s <- s2
    if (max(abs(step)) < 1e-12) break
  }
  list(u = u, s = unit_f(u, eta0, Yj, L))
}

deviance <- function(par, K = 1) {
  p <- unpack(par)
  total <- 0
  if (K > 1) {
    r <- gh_rule(K)
    Z <- as.matrix(expand.grid(r$z, r$z))
    lw <- log(as.matrix(expand.grid(r$w, r$w))) %*% c(1, 1)
  }
  for (idx in units) {
    eta0 <- X[idx, , drop = FALSE] %*% p$g
    Yj <- Y[idx, , drop = FALSE]
    m <- unit_mode(eta0, Yj, p$L)
    C <- t(chol(m$s$H))
    logdet <- 2 * sum(log(diag(C)))
    if (K == 1) {
      total <- total + m$s$f - logdet / 2
    } else {
      R <- t(solve(C))  # C^-T
      U <- sweep(Z %*% t(R), 2, m$u, "+")  # the nodes u_k, one per row
      B <- U %*% t(p$L)  # b_k = L u_k
      terms <- as.vector(lw) - rowSums(U^2) / 2 + rowSums(Z^2) / 2
      for (i in seq_len(nrow(eta0))) {  # each record's log-likelihood at every node at once
        e1 <- eta0[i, 1] + B[, 1]
        e2 <- eta0[i, 2] + B[, 2]
        mx <- pmax(0, e1, e2)
        terms <- terms + Yj[i, 1] * e1 + Yj[i, 2] * e2 - (mx + log(exp(-mx) + exp(e1 - mx) + exp(e2 - mx)))
      }
      mx <- max(terms)
      total <- total + mx + log(sum(exp(terms - mx))) - logdet / 2
    }
  }
  -2 * total
}

fit <- function(K, start) {
  f <- function(par) deviance(par, K)
  a <- nlminb(start, f, control = list(rel.tol = 1e-15, x.tol = 1e-12, eval.max = 5000, iter.max = 2000))
  b <- optim(a$par, f, method = "BFGS", control = list(reltol = 1e-16, maxit = 2000, ndeps = rep(1e-6, 9)))
  best <- if (b$value < a$objective) b$par else a$par
  p <- unpack(best)
  if (p$L[1, 1] < 0) p$L[, 1] <- -p$L[, 1]
  if (p$L[2, 2] < 0) p$L[, 2] <- -p$L[, 2]
  gr <- numDeriv::grad(f, best)
  list(K = K, deviance = f(best), deviance_nlminb = a$objective, deviance_bfgs = b$value,
       gamma = as.vector(p$g), tau = p$L %*% t(p$L), max_abs_gradient = max(abs(gr)), par = best)
}

start <- c(0, 0, 0, 0, 0, 0, 1, 0, 1)
lap <- fit(1, start)
agq <- fit(25, lap$par)
# the deviance at a fixed point away from the optimum (a pointwise check of the formula)
probe <- c(0.3, 0.4, 0.5, -0.2, 0.1, -0.3, 0.9, 0.4, 0.7)
out <- list(
  data = "tests/data/multinomial/sim_l1.csv + sim_l2.csv",
  model = "log(P(choice=m)/P(choice=3)) = g_m0 + g_m1 w + g_m2 x + b_m, m = 1, 2; b ~ N(0, tau)",
  gamma_order = "logit 1 (intercept, w, x), then logit 2 (intercept, w, x)",
  laplace = lap[c("deviance", "deviance_nlminb", "deviance_bfgs", "gamma", "tau", "max_abs_gradient")],
  agq = agq[c("K", "deviance", "deviance_nlminb", "deviance_bfgs", "gamma", "tau", "max_abs_gradient")],
  agq_deviance_at_laplace = deviance(lap$par, 25),
  agq_deviance_at_laplace_K31 = deviance(lap$par, 31),
  probe = list(par_gamma = probe[1:6], par_lower_cholesky = probe[7:9],
               laplace = deviance(probe, 1), agq25 = deviance(probe, 25))
)
out$laplace$tau <- as.vector(lap$tau)
out$agq$tau <- as.vector(agq$tau)
writeLines(jsonlite::toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE),
           "tests/data/multinomial/ghq_reference.json")
