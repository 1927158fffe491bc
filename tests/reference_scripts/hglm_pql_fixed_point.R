# References for tests/test_pql_fixed_point.py: PQL (Breslow & Clayton 1993) at its fixed point, with
# a certified inner fit. Run from tests/data/hglm/pql (after hglm_pql_fixed_point_data.R):
#   Rscript ../../../reference_scripts/hglm_pql_fixed_point.R > pql_fixed_point.json
#
# Macro iterations: linearise at η (working variate z = η − offset + (y − μ)/W, weights W), fit the
# linear mixed model z = Xγ + Zb + e, Var(e) = W⁻¹ (level-1 scale fixed at 1), b ~ N(0, τ), by REML
# (restricted PQL) or ML (full PQL), and set η = Xγ + Zb̂ + offset, until
# max|Δη| < 1e-11·(1 + max|η|).
# The inner fit is written out here (it is not lme's or lmer's): the deviance of the weighted LMM in
# closed form per unit (Woodbury with Λ, τ = ΛΛ'), minimised by nlminb over Λ's lower triangle (its
# diagonal ≥ 0; only the diagonal for a diagonal τ) from several starts: the previous macro
# iteration's Λ, interior points 0.1·I, I, 3·I, and τ = 0; the lowest deviance is kept. Each start
# is polished by a second nlminb run from its own end. At the end the inner fit is checked:
# numDeriv's gradient in τ's free entries at the answer (zero in the interior; not computed on the
# boundary), and the inner fit at the final η is refitted by two other tools: glmmTMB (gaussian,
# precision weights W, dispersion mapped to σ = 1, REML or ML) and nlme::lme (σ fixed at 1,
# varFixed weights, tight tolerances; ML only agrees: lme's REML criterion with a fixed σ is not the
# restricted likelihood of this model, its τ differs by 1-3% on every REML case here).
suppressMessages({library(nlme); library(jsonlite); library(numDeriv); library(MASS); library(glmmTMB)})

read <- function(name, id) {
  d <- merge(read.csv(paste0(name, "_l1.csv")), read.csv(paste0(name, "_l2.csv")), by = id, sort = FALSE)
  d[order(d[[id]], seq_len(nrow(d))), ]
}

fam <- list(
  logit = list(mu = function(eta) plogis(eta), w = function(eta) { p <- plogis(eta); p * (1 - p) }),
  log = list(mu = function(eta) exp(eta), w = function(eta) exp(eta)))

# the weighted LMM deviance (σ² = 1) per unit by Woodbury: V_j = W_j⁻¹ + Z_jτZ_j'
inner_dev <- function(theta, S, q, diagonal, reml) {
  L <- matrix(0, q, q)
  if (diagonal) diag(L) <- theta else L[lower.tri(L, diag = TRUE)] <- theta
  P <- S$XWX; cc <- S$XWz; s <- S$zWz; ld <- 0
  for (j in seq_along(S$A)) {
    M <- diag(q) + t(L) %*% S$A[[j]] %*% L
    R <- chol(M)
    ld <- ld + 2 * sum(log(diag(R)))
    LZX <- t(L) %*% S$ZWX[[j]]; LZz <- t(L) %*% S$ZWz[[j]]
    Mi <- chol2inv(R)
    P <- P - t(LZX) %*% Mi %*% LZX
    cc <- cc - t(LZX) %*% Mi %*% LZz
    s <- s - as.numeric(t(LZz) %*% Mi %*% LZz)
  }
  g <- solve(P, cc)
  rss <- s - sum(cc * g)
  dev <- ld + rss + S$N * log(2 * pi) - S$sumlogw
  if (reml) dev <- dev + as.numeric(determinant(P)$modulus) - ncol(P) * log(2 * pi)
  list(dev = dev, gamma = as.numeric(g), L = L)
}

inner_fit <- function(S, q, diagonal, reml, theta_prev) {
  nth <- if (diagonal) q else q * (q + 1) / 2
  lower <- if (diagonal) rep(0, q) else { m <- matrix(-Inf, q, q); diag(m) <- 0; m[lower.tri(m, diag = TRUE)] }
  pack <- function(L) if (diagonal) diag(L) else L[lower.tri(L, diag = TRUE)]
  starts <- list(theta_prev, pack(0.1 * diag(q)), pack(diag(q)), pack(3 * diag(q)), rep(0, nth))
  f <- function(th) { v <- tryCatch(inner_dev(th, S, q, diagonal, reml)$dev, error = function(e) Inf); if (is.finite(v)) v else 1e300 }
  best <- NULL
  for (st in starts) {
    if (is.null(st)) next
    r <- nlminb(st, f, lower = lower, control = list(rel.tol = 1e-15, x.tol = 1e-12, eval.max = 5000, iter.max = 3000))
    r <- nlminb(r$par, f, lower = lower, control = list(rel.tol = 1e-15, x.tol = 1e-12, eval.max = 5000, iter.max = 3000))
    if (is.null(best) || r$objective < best$objective) best <- r
  }
  best
}

pql <- function(d, y, X, Z, unit, link, reml, diagonal, offset = 0, tol = 1e-11) {
  q <- ncol(Z); N <- length(y); units <- split(seq_len(N), unit)
  eta <- if (link == "logit") qlogis((y + 0.5) / 2) else log(y + 0.5)
  theta <- NULL
  for (it in 1:300) {
    W <- fam[[link]]$w(eta); mu <- fam[[link]]$mu(eta)
    z <- eta - offset + (y - mu) / W
    S <- list(XWX = crossprod(X * W, X), XWz = crossprod(X * W, z), zWz = sum(W * z * z), N = N, sumlogw = sum(log(W)),
              A = lapply(units, function(i) crossprod(Z[i, , drop = FALSE] * W[i], Z[i, , drop = FALSE])),
              ZWX = lapply(units, function(i) crossprod(Z[i, , drop = FALSE] * W[i], X[i, , drop = FALSE])),
              ZWz = lapply(units, function(i) crossprod(Z[i, , drop = FALSE] * W[i], z[i])))
    r <- inner_fit(S, q, diagonal, reml, theta)
    theta <- r$par
    fitd <- inner_dev(theta, S, q, diagonal, reml)
    L <- fitd$L; tau <- L %*% t(L); gamma <- fitd$gamma
    e <- z - X %*% gamma
    b <- do.call(rbind, lapply(units, function(i) {  # EB: τZ'V⁻¹e
      Zi <- Z[i, , drop = FALSE]
      V <- diag(1 / W[i], length(i)) + Zi %*% tau %*% t(Zi)
      t(tau %*% t(Zi) %*% solve(V, e[i]))
    }))
    rownames(b) <- names(units)
    new <- as.numeric(X %*% gamma) + rowSums(Z * b[as.character(unit), , drop = FALSE]) + offset
    change <- max(abs(new - eta)); eta <- new
    if (change < tol * (1 + max(abs(eta)))) break
  }
  # check the last inner fit: its gradient in the free entries of τ (numDeriv)
  tf <- function(v) {  # deviance as a function of τ's free entries (PSD required)
    T <- matrix(0, q, q)
    if (diagonal) diag(T)[] <- v else { T[lower.tri(T, diag = TRUE)] <- v; T <- T + t(T) - diag(diag(T), q) }
    ev <- eigen(T, symmetric = TRUE)
    L <- ev$vectors %*% diag(sqrt(pmax(ev$values, 0)), q)
    th <- if (diagonal) sqrt(pmax(diag(T), 0)) else t(chol(T + 0 * diag(q), pivot = FALSE))[lower.tri(T, diag = TRUE)]
    inner_dev(th, S, q, diagonal, reml)$dev
  }
  tv <- if (diagonal) diag(tau) else tau[lower.tri(tau, diag = TRUE)]
  grad <- if (min(eigen(tau)$values) > 1e-6) numDeriv::grad(tf, tv) else NA
  list(gamma = gamma, tau = tau, eta = eta, iterations = it, change = change, S = S, grad = grad,
       inner_deviance = fitd$dev, W = W, z = z)
}

cross_nlme <- function(d, res, fixed, random, reml, diagonal) {
  d$z <- res$z; d$invw <- 1 / res$W
  rnd <- if (diagonal) pdDiag(random) else pdSymm(random)
  m <- tryCatch(lme(fixed, random = list(ID = rnd), data = d, weights = varFixed(~ invw),
                    method = if (reml) "REML" else "ML",
                    control = lmeControl(sigma = 1, maxIter = 1000, msMaxIter = 1000, tolerance = 1e-12, msTol = 1e-14,
                                         niterEM = 100, returnObject = TRUE)),
                error = function(e) NULL)
  if (is.null(m)) return(list(error = "lme failed"))
  vc <- unclass(getVarCov(m)); attributes(vc) <- list(dim = dim(vc))
  list(fixef = unname(fixef(m)), tau = vc, logLik = as.numeric(logLik(m)))
}

cross_tmb <- function(d, res, xcols, zcols, reml, diagonal) {
  d$z <- res$z; d$W <- res$W
  rterm <- if (!length(zcols)) "(1 | ID)" else if (diagonal) paste0("diag(1 + ", paste(zcols, collapse = " + "), " | ID)")
           else paste0("(1 + ", paste(zcols, collapse = " + "), " | ID)")
  f <- as.formula(paste("z ~", paste(xcols, collapse = " + "), "+", rterm))
  m <- tryCatch(glmmTMB(f, data = d, weights = W, family = gaussian, REML = reml, start = list(betad = 0),
                        map = list(betad = factor(NA)),
                        control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-14))),
                error = function(e) NULL)
  if (is.null(m)) return(list(error = "glmmTMB failed"))
  vc <- VarCorr(m)$cond$ID; attributes(vc) <- list(dim = dim(vc))
  list(fixef = unname(fixef(m)$cond), tau = vc, sigma = sigma(m))
}

cases <- list()
run <- function(key, name, id, yv, xcols, zcols, link, reml, diagonal = FALSE, exposure = NULL, hlmcli = "") {
  d <- read(name, id)
  y <- d[[yv]]; unit <- d[[id]]
  X <- cbind(1, as.matrix(d[, xcols, drop = FALSE])); colnames(X)[1] <- "(Intercept)"
  Z <- cbind(1, as.matrix(d[, zcols, drop = FALSE]))
  off <- if (is.null(exposure)) 0 else log(d[[exposure]])
  res <- pql(d, y, X, Z, unit, link, reml, diagonal, off)
  d$ID <- factor(unit)
  fx <- as.formula(paste("z ~", paste(xcols, collapse = " + ")))
  rf <- as.formula(paste("~", if (length(zcols)) paste(zcols, collapse = " + ") else "1"))
  cn <- cross_nlme(d, res, fx, rf, reml, diagonal)
  ct <- cross_tmb(d, res, xcols, zcols, reml, diagonal)
  cases[[key]] <<- list(data = name, id = id, outcome = yv, link = link, method = if (reml) "REML" else "ML",
                        tau_structure = if (diagonal) "diagonal" else "unstructured", exposure = exposure,
                        hlmcli = hlmcli, gamma = setNames(as.list(as.numeric(res$gamma)), colnames(X)),
                        tau = unname(res$tau), macro_iterations = res$iterations, final_eta_change = res$change,
                        inner_deviance = res$inner_deviance, inner_tau_gradient = res$grad,
                        nlme_inner_fit_at_final_eta = cn, glmmTMB_inner_fit_at_final_eta = ct)
}

run("bacteria_ml", "bacteria", "ID", "Y", c("WEEK2", "DRUG", "DRUGP"), character(0), "logit", FALSE)
run("bacteria_reml", "bacteria", "ID", "Y", c("WEEK2", "DRUG", "DRUGP"), character(0), "logit", TRUE)
run("ohio_diag", "ohio", "ID", "RESP", c("AGE", "SMOKE"), "AGE", "logit", TRUE, diagonal = TRUE)
run("owls", "owls", "NEST", "NEG", c("SATIATED", "MALE", "ARRIVAL"), character(0), "log", TRUE, exposure = "BROOD")
run("guprenat_slope", "guprenat", "CLUSTER", "PRENAT", c("CHILD3", "MOTHER25", "PCIND81"), "CHILD3", "logit", TRUE)

# cross-check where it applies: MASS::glmmPQL (full PQL with the level-1 scale estimated) on bacteria
b <- read("bacteria", "ID"); b$ID <- factor(b$ID)
gp <- suppressMessages(MASS::glmmPQL(Y ~ WEEK2 + DRUG + DRUGP, random = ~ 1 | ID, family = binomial, data = b,
                                     verbose = FALSE, niter = 200))
cases$bacteria_glmmPQL_scale_estimated <- list(fixef = unname(fixef(gp)), tau = as.numeric(unclass(getVarCov(gp))),
                                               sigma2 = gp$sigma^2,
                                               note = "MASS::glmmPQL: full PQL with the level-1 scale estimated (--ml --overdispersion)")

cat(toJSON(list(tool = paste0("R ", getRversion(), ", nlme ", packageVersion("nlme"), ", numDeriv ",
                              packageVersion("numDeriv"), ", MASS ", packageVersion("MASS")),
                script = "tests/reference_scripts/hglm_pql_fixed_point.R", cases = cases),
           digits = NA, auto_unbox = TRUE, pretty = TRUE))
