# Reference fits of PQL for ordinal and multinomial outcomes (hlmcli --family ordinal|multinomial
# --estimation pql), by an implementation of the iteration independent of hlmcli's: the working
# variates and weights are built here from their definitions (not hlmcli's closed forms), and the
# working linear mixed model is fitted by this script's own ML/REML on the unwhitened
# per-unit covariance V_j = blockdiag(W_i^-1) + Z_j tau Z_j' (hlmcli whitens each record's block
# by the Cholesky of W_i and uses its linear engine's unit solves).
#
# The iteration (Raudenbush & Bryk 2002 sections 10.5-10.6; Breslow & Clayton 1993):
#   ordinal: cumulative indicators Ystar_m = 1{Y <= m}, mu_m = F(eta_m), eta_m = x'gamma + c_m (c_1 = 0);
#            D = diag(f(eta_m)); Sigma[a, b] = mu_min(a,b) (1 - mu_max(a,b));
#   multinomial: indicators Y_m = 1{Y = m}, m < M, mu = softmax against the last category, D = d mu/d eta'
#            (computed here by numerical differences of mu and checked against diag(mu) - mu mu', then used);
#   z = eta + D^-1 (y - mu), W = D' Sigma^-1 D; fit z = X gamma + Z b + e, e ~ N(0, W^-1), b ~ N(0, tau),
#   sigma^2 = 1; eta <- X gamma + Z b_EB; repeat until max |d eta| < 1e-10 (1 + max |eta|).
# Start: category probabilities (1{Y = k} + 1/2)/(1 + M/2), as hlmcli (the fixed point does not
# depend on it). Inner fit: nlminb on the Cholesky factor of tau with the exact gradient (rel.tol
# 1e-15), then, once max |d eta| < 1e-5, Newton steps on the exact gradient (its Hessian by central
# differences of it) until the step is below 1e-13, warm-started from the last tau.
# Writes tests/data/categorical_pql/<name>-<method>-<link>.json per fit (and the Contraception CSV files).
# Run from the repository root:  Rscript tests/reference_scripts/categorical_pql.R [wine soup sim ...]
suppressMessages({library(jsonlite); library(numDeriv); library(mlmRev)})  # numDeriv: the Jacobian check
out <- "tests/data/categorical_pql"
dir.create(out, showWarnings = FALSE, recursive = TRUE)

# ------------------------------------------------------------------ the working variates
work_ordinal <- function(eta, y, link) {
  F <- switch(link, logit = plogis, probit = pnorm)
  f <- switch(link, logit = dlogis, probit = dnorm)
  m1 <- ncol(eta)
  z <- eta; W <- vector("list", nrow(eta))
  for (i in seq_len(nrow(eta))) {
    mu <- F(eta[i, ]); d <- f(eta[i, ])
    S <- outer(seq_len(m1), seq_len(m1), function(a, b) mu[pmin(a, b)] * (1 - mu[pmax(a, b)]))
    ystar <- as.numeric(y[i] <= seq_len(m1))
    z[i, ] <- eta[i, ] + (ystar - mu) / d
    W[[i]] <- diag(d, m1) %*% solve(S) %*% diag(d, m1)
  }
  list(z = z, W = W)
}

softmax_last <- function(e) { p <- exp(c(e, 0) - max(c(e, 0))); (p / sum(p))[seq_along(e)] }

work_multinomial <- function(eta, y) {
  m1 <- ncol(eta)
  z <- eta; W <- vector("list", nrow(eta)); worst <- 0
  for (i in seq_len(nrow(eta))) {
    mu <- softmax_last(eta[i, ])
    D <- jacobian(softmax_last, eta[i, ])
    S <- diag(mu, m1) - tcrossprod(mu)
    worst <- max(worst, max(abs(D - S)))
    yy <- as.numeric(y[i] == seq_len(m1))
    z[i, ] <- eta[i, ] + solve(S, yy - mu)  # D = Sigma (checked above to the differences' accuracy)
    W[[i]] <- t(S) %*% solve(S) %*% S  # D' Sigma^-1 D
  }
  if (worst > 1e-8) stop("the multinomial Jacobian is not diag(mu) - mu mu'")
  list(z = z, W = W)
}

# ------------------------------------------------------------------ the working LMM, own ML/REML
# REML/ML deviance of the working model at tau = L L' (L from theta), gamma at its GLS value, and its
# gradient in theta: with A_j = Z_j'V_j^-1 Z_j, u_j = Z_j'V_j^-1 r_j, M_j = Z_j'V_j^-1 X_j and
# H = sum X_j'V_j^-1 X_j, d d / d tau = sum_j (A_j - u_j u_j' - [REML] M_j H^-1 M_j') =: G (gamma's own
# derivative vanishes at its GLS value), and d d / d L = 2 G L.
lmm_parts <- function(theta, units, q, reml, gradient = FALSE) {
  Lt <- matrix(0, q, q); Lt[lower.tri(Lt, diag = TRUE)] <- theta
  tau <- tcrossprod(Lt)
  p <- ncol(units[[1]]$X)
  XVX <- matrix(0, p, p); XVz <- numeric(p); ld <- 0; zVz <- 0; keep <- vector("list", length(units))
  for (k in seq_along(units)) {
    u <- units[[k]]
    C <- chol(u$R + u$Z %*% tau %*% t(u$Z))  # V_j = C'C
    ld <- ld + 2 * sum(log(diag(C)))
    wX <- forwardsolve(t(C), u$X); wz <- forwardsolve(t(C), u$z); wZ <- forwardsolve(t(C), u$Z)
    XVX <- XVX + crossprod(wX); XVz <- XVz + drop(crossprod(wX, wz)); zVz <- zVz + sum(wz * wz)
    keep[[k]] <- list(wX = wX, wz = wz, wZ = wZ)
  }
  gamma <- solve(XVX, XVz)
  rss <- zVz - sum(XVz * gamma)  # (z - X gamma)' V^-1 (z - X gamma) at the GLS gamma
  dev <- ld + rss + if (reml) as.numeric(determinant(XVX)$modulus) else 0
  out <- list(dev = dev, gamma = gamma, tau = tau, XVX = XVX)
  if (gradient) {
    G <- matrix(0, q, q); Hinv <- solve(XVX)
    for (w in keep) {
      uj <- drop(crossprod(w$wZ, w$wz - w$wX %*% gamma)); Mj <- crossprod(w$wZ, w$wX)
      G <- G + crossprod(w$wZ) - tcrossprod(uj) - if (reml) Mj %*% Hinv %*% t(Mj) else 0
    }
    out$grad <- (2 * G %*% Lt)[lower.tri(Lt, diag = TRUE)]
  }
  out
}

fit_lmm <- function(units, q, reml, theta0, polish) {
  f <- function(th) lmm_parts(th, units, q, reml)$dev
  g <- function(th) lmm_parts(th, units, q, reml, gradient = TRUE)$grad
  # from the last tau and from tau = I/4 (at a zero column of L the gradient in L vanishes, so a search
  # started there could not leave it), keeping the lower optimum
  ctl <- list(rel.tol = 1e-15, x.tol = 1e-15, eval.max = 2000, iter.max = 1000)
  runs <- lapply(list(theta0, 0.5 * diag(q)[lower.tri(diag(q), diag = TRUE)]), function(t0) nlminb(t0, f, g, control = ctl))
  th <- runs[[which.min(sapply(runs, function(o) o$objective))]]$par
  for (k in seq_len(if (polish) 10 else 0)) {  # Newton on the exact gradient, its Hessian by differences
    g0 <- g(th)
    H <- sapply(seq_along(th), function(i) { h <- 1e-5 * max(1, abs(th[i])); e <- replace(0 * th, i, h)
                                             (g(th + e) - g(th - e)) / (2 * h) })
    step <- solve((H + t(H)) / 2, g0)
    th <- th - step
    if (max(abs(step)) < 1e-13 * max(1, max(abs(th)))) break
  }
  fit <- lmm_parts(th, units, q, reml)
  list(theta = th, gamma = fit$gamma, tau = fit$tau)
}

# ------------------------------------------------------------------ PQL
# X1: n x p (one logit's fixed design), Z1: n x q (one logit's random design), unit: n ids.
# ordinal: X = [X1 (every logit), threshold indicators], Z = Z1 on every logit.
# multinomial: X = I_{M-1} (x) X1 per record, Z = I_{M-1} (x) Z1 (category-major).
pql_fit <- function(kind, y, X1, Z1, unit, ncat, reml = TRUE, link = "logit") {
  n <- length(y); m1 <- ncat - 1; p1 <- ncol(X1); q1 <- ncol(Z1)
  rows <- function(i) {
    if (kind == "ordinal") {
      Xi <- cbind(matrix(X1[i, ], m1, p1, byrow = TRUE), diag(m1)[, -1, drop = FALSE])
      Zi <- matrix(Z1[i, ], m1, q1, byrow = TRUE)
    } else {
      Xi <- kronecker(diag(m1), t(X1[i, ])); Zi <- kronecker(diag(m1), t(Z1[i, ]))
    }
    list(X = Xi, Z = Zi)
  }
  XZ <- lapply(seq_len(n), rows)
  q <- ncol(XZ[[1]]$Z)
  pi0 <- (outer(y, seq_len(ncat), "==") + 0.5) / (1 + ncat / 2)
  eta <- if (kind == "ordinal") {
    cp <- t(apply(pi0, 1, cumsum))[, seq_len(m1), drop = FALSE]
    if (link == "logit") qlogis(cp) else qnorm(cp)
  } else log(pi0[, seq_len(m1), drop = FALSE] / pi0[, ncat])
  eta <- matrix(eta, n, m1)
  theta <- diag(q)[lower.tri(diag(q), diag = TRUE)] * 0.5
  ids <- unique(unit)
  change <- Inf
  for (it in 1:200) {
    w <- if (kind == "ordinal") work_ordinal(eta, y, link) else work_multinomial(eta, y)
    units <- lapply(ids, function(j) {
      k <- which(unit == j)
      list(X = do.call(rbind, lapply(k, function(i) XZ[[i]]$X)), Z = do.call(rbind, lapply(k, function(i) XZ[[i]]$Z)),
           z = as.vector(t(w$z[k, , drop = FALSE])),
           R = as.matrix(Matrix::bdiag(lapply(k, function(i) solve(w$W[[i]])))), k = k)
    })
    fit <- fit_lmm(units, q, reml, theta, polish = it > 1 && change < 1e-5)
    theta <- fit$theta
    new <- eta
    for (u in units) {
      V <- u$R + u$Z %*% fit$tau %*% t(u$Z)
      b <- fit$tau %*% t(u$Z) %*% solve(V, u$z - drop(u$X %*% fit$gamma))
      e <- drop(u$X %*% fit$gamma + u$Z %*% b)
      new[u$k, ] <- matrix(e, length(u$k), m1, byrow = TRUE)
    }
    change <- max(abs(new - eta)); eta <- new
    message(sprintf("%s %s iteration %d: max |d eta| %.3g", kind, if (reml) "REML" else "ML", it, change))
    if (change < 1e-10 * (1 + max(abs(eta)))) break
  }
  parts <- lmm_parts(theta, units, q, reml)
  list(gamma = drop(fit$gamma), tau = fit$tau, iterations = it, change = change,
       se = sqrt(diag(solve(parts$XVX))))
}

# each fit is written as soon as it is made, to its own file <name>-<method>-<link>.json; give fit
# names as arguments (wine, soup, contraception, sim, contraception3) to make only those
wanted <- commandArgs(trailingOnly = TRUE)
todo <- function(name) !length(wanted) || name %in% wanted
record <- function(name, data, kind, reml, link, res) {
  method <- if (reml) "REML" else "ML"
  fit <- list(source = "tests/reference_scripts/categorical_pql.R", R = R.version.string, name = name, data = data,
              family = kind, method = method, link = link, gamma = res$gamma, se = res$se, tau = unname(res$tau),
              iterations = res$iterations, last_change = res$change)
  writeLines(toJSON(fit, digits = NA, auto_unbox = TRUE, pretty = TRUE),
             file.path(out, sprintf("%s-%s-%s.json", name, method, link)))
}

# ---- ordinal: wine (rating ~ warm + contact + (1 | judge)) and soup (sureness ~ test + male + (1 | resp))
wine <- read.csv("tests/data/ordinal/wine_l1.csv"); wine <- wine[order(wine$judge), ]
Xw <- cbind(1, wine$warm, wine$contact)
for (spec in if (todo("wine")) list(list(TRUE, "logit"), list(FALSE, "logit"), list(TRUE, "probit"))) {
  r <- pql_fit("ordinal", wine$rating, Xw, matrix(1, nrow(wine), 1), wine$judge, 5, reml = spec[[1]], link = spec[[2]])
  record("wine", "wine", "ordinal", spec[[1]], spec[[2]], r)
}
soup <- merge(read.csv("tests/data/ordinal/soup_l1.csv"), read.csv("tests/data/ordinal/soup_l2.csv"), by = "resp")
soup <- soup[order(soup$resp), ]
if (todo("soup")) {
  r <- pql_fit("ordinal", soup$sureness, cbind(1, soup$test, soup$male), matrix(1, nrow(soup), 1), soup$resp, 6)
  record("soup", "soup", "ordinal", TRUE, "logit", r)
}

# ---- Contraception (mlmRev): livch (0, 1, 2, 3+ as 1..4) by age and urban, women in districts
data(Contraception, package = "mlmRev")
cc <- data.frame(district = as.integer(Contraception$district), livch = as.integer(Contraception$livch),
                 age = Contraception$age, urban = as.integer(Contraception$urban == "Y"))
cc <- cc[order(cc$district), ]
cc$livch3 <- c(1L, 2L, 2L, 3L)[cc$livch]  # 0, 1-2, 3+ children
write.csv(cc[, c("district", "livch", "livch3", "age", "urban")], file.path(out, "contraception_l1.csv"), row.names = FALSE)
write.csv(data.frame(district = sort(unique(cc$district))), file.path(out, "contraception_l2.csv"), row.names = FALSE)
if (todo("contraception")) {
  r <- pql_fit("ordinal", cc$livch, cbind(1, cc$age, cc$urban), cbind(1, cc$urban), cc$district, 4)
  record("contraception", "contraception", "ordinal", TRUE, "logit", r)
}

# ---- multinomial: the simulated schools (choice ~ x + w + (1 | school), tests/data/multinomial) and Contraception
sim <- merge(read.csv("tests/data/multinomial/sim_l1.csv"), read.csv("tests/data/multinomial/sim_l2.csv"), by = "school")
sim <- sim[order(sim$school), ]
Xs <- cbind(1, sim$w, sim$x)  # g00, g01 (w), g10 (x): hlmcli's order of the fixed effects
for (reml in if (todo("sim")) c(TRUE, FALSE)) {
  r <- pql_fit("multinomial", sim$choice, Xs, matrix(1, nrow(sim), 1), sim$school, 3, reml = reml)
  record("sim", "sim", "multinomial", reml, "logit", r)
}
if (todo("contraception3")) {
  r <- pql_fit("multinomial", cc$livch3, cbind(1, cc$age, cc$urban), matrix(1, nrow(cc), 1), cc$district, 3)
  record("contraception3", "contraception", "multinomial", TRUE, "logit", r)
}
