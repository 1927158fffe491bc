# References for tests/test_hglm3_agq.py: three-level HGLMs with a random intercept at each level, maximum
# likelihood of the nested integral itself, computed here independently of hlmcli's nested AGQ:
#   L_k = ∫ φ(u3) Π_j L_j(u3) du3,   L_j(u3) = ∫ φ(u2) Π_i p(y_i | x_i'γ + σ2 u2 + σ3 u3) du2,
# each integral by the trapezoidal rule with 81 points over ±20 curvature-SDs around its own mode (inner: each
# level-2 unit's mode by Newton at the given u3; outer: the mode of log φ(u3) + Σ_j log L_j(u3) by Newton on
# numerical derivatives, not the joint mode). The trapezoidal rule on a smooth integrand that decays to nothing
# within the window is accurate far below 1e-8 here (the deviance changes by < 1e-9 from step 0.5 SD to 0.25 SD,
# checked below and written as trapezoid_check). Maximised over (σ2, σ3, γ) by nlminb (bounds σ ≥ 0) and then
# optim BFGS (reltol 1e-15), both with central differences of the deviance as the gradient, from glmer's
# Laplace estimates; the gradient at the optimum by numDeriv (written);
# SEs of γ from numDeriv's Hessian of the deviance, cov = 2H⁻¹ (the γ block).
# Data: the level files in tests/data/hglm3/ (hglm3_references.R, hglm3_laplace_glmer.R): mlmRev's Mmmec
# (Poisson, log(EXPECTED) offset, counties in regions in nations), lme4's grouseticks (Poisson, chicks in broods
# in locations), the simulated binomial (trials) data and mlmRev's guImmun (Bernoulli, kids in mothers in
# communities; the slowest).
# Run from the repository root:  Rscript tests/reference_scripts/hglm3_agq.R [data set names]
# It writes tests/data/hglm3/agq_integral.json.
suppressMessages({library(lme4); library(numDeriv); library(jsonlite)})
dir <- "tests/data/hglm3"
rd <- function(f, cls) read.csv(file.path(dir, f), colClasses = cls, stringsAsFactors = FALSE)
STEP <- 0.5; WIDTH <- 20

make_dev <- function(y, n, X, off, g2, g3, family) {
  j <- as.integer(factor(g2)); J2 <- max(j)
  k2 <- as.integer(factor(tapply(g3, j, function(s) s[1])))
  J3 <- max(k2)
  kk <- k2[j]
  logp <- function(eta) if (family == "poisson") dpois(y, exp(eta), log = TRUE) else dbinom(y, n, plogis(eta), log = TRUE)
  derivs <- function(eta) {
    if (family == "poisson") { mu <- exp(eta); list(mu = y - mu, w = mu) } else {
      p <- plogis(eta); list(mu = y - n * p, w = n * p * (1 - p)) }
  }
  lse <- function(M) { m <- apply(M, 1, max); m + log(rowSums(exp(M - m))) }
  cgrid <- seq(-WIDTH, WIDTH, by = STEP)
  # log L_j(u3) for every level-2 unit, u3 given per level-2 unit
  inner <- function(base, s2, s3, u3j, step) {
    e0 <- base + s3 * u3j[j]
    v <- rep(0, J2)
    for (it in 1:200) {
      d <- derivs(e0 + s2 * v[j])
      g <- s2 * rowsum(d$mu, j)[, 1] - v
      h <- s2^2 * rowsum(d$w, j)[, 1] + 1
      dv <- pmax(pmin(g / h, 1), -1)
      v <- v + dv
      if (max(abs(dv)) < 1e-11) break
    }
    h <- s2^2 * rowsum(derivs(e0 + s2 * v[j])$w, j)[, 1] + 1
    sd <- 1 / sqrt(h)
    cg <- seq(-WIDTH, WIDTH, by = step)
    U <- outer(v, rep(1, length(cg))) + outer(sd, cg)
    ll <- matrix(logp(e0 + s2 * U[j, , drop = FALSE]), nrow = length(y))
    S <- rowsum(ll, j) - U^2 / 2 - 0.5 * log(2 * pi)
    log(step * sd) + lse(S)
  }
  gk <- function(base, s2, s3, u3, step) rowsum(inner(base, s2, s3, u3[k2], step), k2)[, 1] - u3^2 / 2 - 0.5 * log(2 * pi)
  function(par, step = STEP) {
    s2 <- abs(par[1]); s3 <- abs(par[2]); gamma <- par[-(1:2)]
    base <- drop(X %*% gamma) + off
    w <- rep(0, J3); h <- 1e-3
    for (it in 1:30) {
      g0 <- gk(base, s2, s3, w, step); gp <- gk(base, s2, s3, w + h, step); gm <- gk(base, s2, s3, w - h, step)
      d1 <- (gp - gm) / (2 * h); d2 <- pmin((gp - 2 * g0 + gm) / h^2, -1e-3)
      dw <- pmax(pmin(-d1 / d2, 1), -1)
      w <- w + dw
      if (max(abs(dw)) < 1e-8) break
    }
    sd3 <- 1 / sqrt(-d2)
    cg <- seq(-WIDTH, WIDTH, by = step)
    G <- sapply(cg, function(c) gk(base, s2, s3, w + sd3 * c, step))
    G <- matrix(G, nrow = J3)
    -2 * sum(log(step * sd3) + lse(G))
  }
}

fit_one <- function(form, data, family, y, n, off, g2, g3) {
  gl <- glmer(form, data = data, family = family,
              control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), tolPwrss = 1e-13))
  X <- getME(gl, "X")
  dev <- make_dev(y, n, X, off, g2, g3, family$family)
  p0 <- c(getME(gl, "theta"), fixef(gl))  # theta is (level-2 within level-3, level-3): (σ2, σ3)
  names(p0) <- NULL
  t0 <- proc.time()[["elapsed"]]
  # central differences of the deviance as the gradient (forward ones, nlminb's own, stall near the optimum)
  grad <- function(par) {
    h <- 1e-5 * pmax(1, abs(par))
    vapply(seq_along(par), function(i) { e <- replace(numeric(length(par)), i, h[i]); (dev(par + e) - dev(par - e)) / (2 * h[i]) },
           numeric(1))
  }
  a <- nlminb(p0, dev, grad, lower = c(0, 0, rep(-Inf, length(p0) - 2)),
              control = list(eval.max = 500, iter.max = 200, rel.tol = 1e-14, trace = 1))
  b <- optim(a$par, dev, grad, method = "BFGS", control = list(reltol = 1e-15, maxit = 200))
  par <- if (b$value <= a$objective) b$par else a$par
  par[1:2] <- abs(par[1:2])
  d <- dev(par)
  gr <- numDeriv::grad(dev, par)
  H <- numDeriv::hessian(dev, par)
  cov <- 2 * solve(H)
  pg <- length(par) - 2
  list(deviance = d, gamma = par[-(1:2)], fixed = colnames(X), tau_pi = par[1]^2, tau_beta = par[2]^2,
       se = sqrt(diag(cov))[-(1:2)], gradient = gr, gradient_max = max(abs(gr)),
       trapezoid_check = dev(par, step = STEP / 2) - d, laplace_deviance = -2 * as.numeric(logLik(gl)),
       nlminb = a$objective, bfgs = b$value, seconds = proc.time()[["elapsed"]] - t0)
}

# Rscript hglm3_agq.R [mmmec_intercepts grouseticks binomial guimmun]: those data sets only (default: all),
# merged into the JSON already there
which <- commandArgs(TRUE)
if (!length(which)) which <- c("mmmec_intercepts", "grouseticks", "binomial", "guimmun")
json_path <- file.path(dir, "agq_integral.json")
save <- function(name, value) {
  all <- if (file.exists(json_path)) fromJSON(json_path, simplifyVector = FALSE) else list()
  all[c("source", "R", "lme4", "numDeriv")] <- out[c("source", "R", "lme4", "numDeriv")]
  all[[name]] <- value
  writeLines(toJSON(all, digits = NA, auto_unbox = TRUE, pretty = TRUE), json_path)
  cat(name, value$deviance, value$seconds, "\n")
}
out <- list(source = paste("the nested integral by trapezoidal rules (81 points over +-20 SDs around each integral's own",
                           "mode), maximised by nlminb then optim BFGS; SEs from numDeriv's Hessian (cov = 2 H^-1)"),
            R = R.version.string, lme4 = as.character(packageVersion("lme4")),
            numDeriv = as.character(packageVersion("numDeriv")))

if ("mmmec_intercepts" %in% which) {
  m1 <- rd("mmmec_l1.csv", c(COUNTY = "character", REGION = "character"))
  m2 <- rd("mmmec_l2.csv", c(REGION = "character", NATION = "character"))
  md <- merge(m1, m2, by = "REGION")
  save("mmmec_intercepts", fit_one(DEATHS ~ UVB + (1 | NATION / REGION) + offset(log(EXPECTED)), md, poisson(),
                                   md$DEATHS, 1, log(md$EXPECTED), md$REGION, md$NATION))
}
if ("grouseticks" %in% which) {
  t1 <- rd("grouse_l1.csv", c(INDEX = "character", BROOD = "character"))
  t2 <- rd("grouse_l2.csv", c(BROOD = "character", LOCATION = "character"))
  t3 <- rd("grouse_l3.csv", c(LOCATION = "character"))
  td <- merge(merge(t1, t2, by = "BROOD"), t3, by = "LOCATION")
  save("grouseticks", fit_one(TICKS ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION / BROOD), td, poisson(),
                              td$TICKS, 1, 0, td$BROOD, td$LOCATION))
}
if ("binomial" %in% which) {
  b1 <- rd("binom_l1.csv", c(CLASS = "character"))
  b2 <- rd("binom_l2.csv", c(CLASS = "character", SCHOOL = "character"))
  b3 <- rd("binom_l3.csv", c(SCHOOL = "character"))
  bd <- merge(merge(b1, b2, by = "CLASS"), b3, by = "SCHOOL")
  save("binomial", fit_one(cbind(Y, TRIALS - Y) ~ X + W + Z + (1 | SCHOOL / CLASS), bd, binomial(),
                           bd$Y, bd$TRIALS, 0, bd$CLASS, bd$SCHOOL))
}
if ("guimmun" %in% which) {
  g1 <- rd("guimmun_l1.csv", c(KID = "character", MOM = "character"))
  g2 <- rd("guimmun_l2.csv", c(MOM = "character", COMM = "character"))
  g3 <- rd("guimmun_l3.csv", c(COMM = "character"))
  gd <- merge(merge(g1, g2, by = "MOM"), g3, by = "COMM")
  save("guimmun", fit_one(IMMUN ~ KID2P + MOM25P + ORD23 + ORD46 + ORD7P + ETHNN + ETHNS + MOMEDP + MOMEDS + HUSEDP +
                            HUSEDS + HUSEDU + MOMWORK + RURAL + PCIND81 + (1 | COMM / MOM), gd, binomial(),
                          gd$IMMUN, 1, 0, gd$MOM, gd$COMM))
}
