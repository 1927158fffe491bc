# Reference values for three- and four-level models with a diagonal τ at every level (lme4's `||`
# terms, one bar per effect) and for lmerTest's Satterthwaite d.f. of the fixed effects, under ML
# and REML.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/levels_diagonal_satterthwaite.R
#
# Reads:   tests/data/three_level/eg_l{1,2,3}.csv (mlmRev::egsingle as HLM's EG files)
#          tests/data/four_level/{schools,hospitals}_l{1,2,3,4}.csv (made by four_level_lme4.R)
# Writes:  tests/data/three_level/eg_diagonal_satterthwaite.json
#          tests/data/four_level/diagonal_satterthwaite.json
#          (read by tests/test_levels_stats.py; the tests never run R)
#
# Each model: lmer with bobyqa (rhoend 1e-12), then Nelder_Mead and bobyqa again from the best point,
# the lowest criterion kept; then lmerTest::as_lmerModLmerTest on that fit for its Satterthwaite d.f.
# Cross-checks, each written beside lme4's numbers:
#   - nlme::lme with pdDiag (diagonal τ) or pdSymm blocks at every level: its -2 log L / REML
#     criterion and fixed effects;
#   - the d.f. recomputed here without lme4 or lmerTest (models without dense = FALSE; a dense V of
#     the EG data costs minutes per fit on a loaded machine, so only the diagonal EG models have it): a
#     dense deviance (V built per top-level unit from τ and σ², γ at its GLS value) in the natural
#     parameters (the free entries of each τ, and σ²), its Hessian and the Jacobian of Cov(γ̂) by
#     numDeriv, d.f. = 2 Var(γ_k)² / (g'(2H⁻¹)g). At an interior optimum the d.f. do not depend on
#     the parametrisation, so they must equal lmerTest's, which differentiates in (θ, σ) instead. A
#     variance estimated as exactly 0 is held at 0 there (lmerTest's θ = 0 drops out of its d.f.: the
#     deviance and Cov(γ̂) are even in it), so the check also holds at such a boundary.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(nlme)
  library(numDeriv)
  library(jsonlite)
})

crit <- function(fit, reml) if (reml) as.numeric(REMLcrit(fit)) else as.numeric(deviance(fit))

polish <- function(form, data, reml) {
  ctrl <- lme4::lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6),
                            check.conv.singular = "ignore", calc.derivs = FALSE)
  best <- lme4::lmer(form, data = data, REML = reml, control = ctrl)
  for (opt in c("Nelder_Mead", "bobyqa")) {
    oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
          else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
    f2 <- tryCatch(update(best, start = getME(best, "theta"),
                          control = lme4::lmerControl(optimizer = opt, optCtrl = oc, check.conv.singular = "ignore",
                                                      calc.derivs = FALSE)),
                   error = function(e) NULL)
    if (!is.null(f2) && crit(f2, reml) < crit(best, reml)) best <- f2
  }
  best
}

# ---- the dense cross-check of the d.f.
# levels: list of list(group = factor within the data, cols = names of the random columns ("1" = the
# intercept), diagonal = TRUE/FALSE); top: the top-level grouping (V is block diagonal over it).
dense_setup <- function(data, fixed_form, levels, top, y) {
  X <- model.matrix(fixed_form, data)
  blocks <- split(seq_len(nrow(data)), data[[top]])
  col_of <- function(nm) if (nm == "1") rep(1, nrow(data)) else data[[nm]]
  lapply(blocks, function(rows) {
    list(X = X[rows, , drop = FALSE], y = data[[y]][rows],
         terms = lapply(levels, function(lv) {
           g <- as.character(data[[lv$group]][rows])
           same <- outer(g, g, "==") * 1
           z <- sapply(lv$cols, function(nm) col_of(nm)[rows])
           z <- matrix(z, nrow = length(rows))
           list(same = same, z = z)
         }))
  })
}

# the free parameters: per level the lower triangle (or diagonal) of τ, then σ²
unpack <- function(par, levels) {
  k <- 0
  taus <- lapply(levels, function(lv) {
    q <- length(lv$cols)
    T <- matrix(0, q, q)
    if (lv$diagonal) {
      diag(T) <- par[k + seq_len(q)]
      k <<- k + q
    } else {
      idx <- which(lower.tri(T, diag = TRUE), arr.ind = TRUE)
      for (i in seq_len(nrow(idx))) T[idx[i, 1], idx[i, 2]] <- T[idx[i, 2], idx[i, 1]] <- par[k + i]
      k <<- k + nrow(idx)
    }
    T
  })
  list(taus = taus, sigma2 = par[length(par)])
}

pack <- function(taus, sigma2, levels) {
  out <- c()
  for (i in seq_along(levels)) {
    T <- taus[[i]]
    out <- c(out, if (levels[[i]]$diagonal) diag(T) else T[lower.tri(T, diag = TRUE)])
  }
  c(out, sigma2)
}

dense_parts <- function(par, setup, levels) {
  u <- unpack(par, levels)
  p <- ncol(setup[[1]]$X)
  XVX <- matrix(0, p, p); XVy <- rep(0, p); ld <- 0; blocks <- list()
  for (b in setup) {
    V <- diag(u$sigma2, length(b$y))
    for (i in seq_along(levels)) {
      z <- b$terms[[i]]$z
      V <- V + b$terms[[i]]$same * (z %*% u$taus[[i]] %*% t(z))
    }
    R <- chol(V)
    Xs <- backsolve(R, b$X, transpose = TRUE)
    ys <- backsolve(R, b$y, transpose = TRUE)
    XVX <- XVX + crossprod(Xs); XVy <- XVy + crossprod(Xs, ys)
    ld <- ld + 2 * sum(log(diag(R)))
    blocks[[length(blocks) + 1]] <- list(Xs = Xs, ys = ys)
  }
  gamma <- solve(XVX, XVy)
  rss <- sum(vapply(blocks, function(b) sum((b$ys - b$Xs %*% gamma)^2), 0))
  list(XVX = XVX, ld = ld, rss = rss, N = sum(vapply(setup, function(b) length(b$y), 0L)), p = p)
}

dense_deviance <- function(par, setup, levels, reml) {
  d <- dense_parts(par, setup, levels)
  dev <- d$ld + d$rss + d$N * log(2 * pi)
  if (reml) dev + as.numeric(determinant(d$XVX)$modulus) - d$p * log(2 * pi) else dev
}

dense_df <- function(fit, setup, levels, reml) {
  vc <- VarCorr(fit)
  taus <- lapply(levels, function(lv) {
    # the τ of this level from lme4's terms on its grouping factor (one term per effect for ||)
    q <- length(lv$cols)
    T <- matrix(0, q, q)
    for (nm in names(vc)[sub("\\.[0-9]+$", "", names(vc)) == lv$group]) {
      m <- as.matrix(vc[[nm]])
      cols <- ifelse(colnames(m) == "(Intercept)", "1", colnames(m))
      idx <- match(cols, lv$cols)
      T[idx, idx] <- unname(m)
    }
    T
  })
  full <- pack(taus, sigma(fit)^2, levels)
  free <- which(full != 0 | seq_along(full) == length(full))
  with_free <- function(x) { y <- full; y[free] <- x; y }
  par <- full[free]
  H <- numDeriv::hessian(function(x) dense_deviance(with_free(x), setup, levels, reml), par)
  vg <- function(x) diag(solve(dense_parts(with_free(x), setup, levels)$XVX))
  J <- numDeriv::jacobian(vg, par)
  A <- 2 * solve(H)
  v <- vg(par)
  sapply(seq_along(v), function(k) 2 * v[k]^2 / as.numeric(t(J[k, ]) %*% A %*% J[k, ]))
}

describe <- function(fit, reml, data, setup, levels, nl, dense) {
  # lmerTest's own computation (as_lmerModLT, what lmerTest::lmer runs) on this fit, with the
  # deviance function of the same model and data (as_lmerModLmerTest cannot re-create it from a
  # call made inside polish())
  devfun <- lme4::lmer(formula(fit), data = data, REML = reml, devFunOnly = TRUE)
  lt <- lmerTest:::as_lmerModLT(fit, devfun)
  cf <- summary(lt)$coefficients
  ddf <- if (dense) dense_df(fit, setup, levels, reml) else rep(NA_real_, nrow(cf))
  vc <- VarCorr(fit)
  list(fixed = lapply(setNames(seq_len(nrow(cf)), rownames(cf)),
                      function(k) list(est = cf[k, "Estimate"], se = cf[k, "Std. Error"], df = cf[k, "df"],
                                       df_dense = ddf[k])),
       variance_components = lapply(setNames(names(vc), names(vc)),
                                    function(g) list(names = colnames(vc[[g]]), tau = unname(as.matrix(vc[[g]])))),
       sigma2 = sigma(fit)^2, deviance = crit(fit, reml), theta = unname(getME(fit, "theta")),
       singular = isSingular(fit, tol = 1e-6),
       nlme = list(tool = paste("nlme", packageVersion("nlme")), fixed = as.list(fixef(nl)), sigma2 = nl$sigma^2,
                   criterion = -2 * as.numeric(logLik(nl))))
}

nlme_fit <- function(form, random, data, reml) {
  nlme::lme(form, random = random, data = data, method = if (reml) "REML" else "ML",
            control = lmeControl(maxIter = 500, msMaxIter = 500, tolerance = 1e-10, msTol = 1e-12, niterEM = 100,
                                 opt = "optim"))
}

run_models <- function(models) {
  out <- list()
  for (nm in names(models)) {
    m <- models[[nm]]
    setup <- if (isFALSE(m$dense)) NULL else dense_setup(m$data, m$fixed, m$levels, m$top, m$y)
    for (reml in c(FALSE, TRUE)) {
      fit <- polish(m$form, m$data, reml)
      nl <- nlme_fit(m$nlme_fixed, m$nlme_random, m$data, reml)
      message(nm, if (reml) " REML" else " ML")
      out[[paste0(nm, if (reml) "_reml" else "_ml")]] <- c(list(formula = deparse1(m$form)),
                                                             describe(fit, reml, m$data, setup, m$levels, nl, !isFALSE(m$dense)))
    }
  }
  out
}

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")), nlme = as.character(packageVersion("nlme")),
                 numDeriv = as.character(packageVersion("numDeriv")))

# ---- three levels: EG
d <- "tests/data/three_level/"
l1 <- read.csv(paste0(d, "eg_l1.csv"))
l2 <- read.csv(paste0(d, "eg_l2.csv"))
l3 <- read.csv(paste0(d, "eg_l3.csv"))
eg <- merge(merge(l1, l2[, c("CHILDID", "FEMALE", "BLACK", "HISPANIC")], by = "CHILDID"), l3, by = "SCHOOLID")
eg <- eg[order(eg$SCHOOLID, eg$CHILDID), ]
eg$CHILD <- interaction(eg$SCHOOLID, eg$CHILDID, drop = TRUE)
sim <- read.csv(paste0(d, "boundary_sim.csv"))
sim$`L3:L2` <- interaction(sim$L3, sim$L2, drop = TRUE)

eg_levels <- function(diagonal) list(list(group = "CHILD", cols = c("1", "YEAR"), diagonal = diagonal),
                                     list(group = "SCHOOLID", cols = c("1", "YEAR"), diagonal = diagonal))
m2_fixed <- MATH ~ 1 + LOWINC + FEMALE + YEAR + YEAR:LOWINC + YEAR:MOBILITY
three <- list(
  # R&B's unconditional growth model (Table 8.2), τ unstructured: the d.f.
  eg_m1 = list(form = MATH ~ 1 + YEAR + (1 + YEAR | SCHOOLID) + (1 + YEAR | CHILD),
               fixed = MATH ~ 1 + YEAR, levels = eg_levels(FALSE), top = "SCHOOLID", y = "MATH", data = eg,
               dense = FALSE, nlme_fixed = MATH ~ 1 + YEAR, nlme_random = list(SCHOOLID = pdSymm(~YEAR), CHILDID = pdSymm(~YEAR))),
  # the same with τ diagonal at both levels
  eg_m1_diag = list(form = MATH ~ 1 + YEAR + (1 | SCHOOLID) + (0 + YEAR | SCHOOLID) + (1 | CHILD) +
                      (0 + YEAR | CHILD),
                    fixed = MATH ~ 1 + YEAR, levels = eg_levels(TRUE), top = "SCHOOLID", y = "MATH", data = eg,
                    nlme_fixed = MATH ~ 1 + YEAR,
                    nlme_random = list(SCHOOLID = pdDiag(~YEAR), CHILDID = pdDiag(~YEAR))),
  # diagonal at level 3 only
  eg_m1_diag3 = list(form = MATH ~ 1 + YEAR + (1 | SCHOOLID) + (0 + YEAR | SCHOOLID) + (1 + YEAR | CHILD),
                     fixed = MATH ~ 1 + YEAR, levels = list(eg_levels(FALSE)[[1]], eg_levels(TRUE)[[2]]),
                     top = "SCHOOLID", y = "MATH", data = eg, dense = FALSE, nlme_fixed = MATH ~ 1 + YEAR,
                     nlme_random = list(SCHOOLID = pdDiag(~YEAR), CHILDID = pdSymm(~YEAR))),
  # level-2 and level-3 predictors and cross-level interactions, unstructured and diagonal
  eg_m2 = list(form = update(m2_fixed, . ~ . + (1 + YEAR | SCHOOLID) + (1 + YEAR | CHILD)),
               fixed = m2_fixed, levels = eg_levels(FALSE), top = "SCHOOLID", y = "MATH", data = eg,
               dense = FALSE, nlme_fixed = m2_fixed, nlme_random = list(SCHOOLID = pdSymm(~YEAR), CHILDID = pdSymm(~YEAR))),
  eg_m2_diag = list(form = update(m2_fixed, . ~ . + (1 | SCHOOLID) + (0 + YEAR | SCHOOLID) + (1 | CHILD) +
                                    (0 + YEAR | CHILD)),
                    fixed = m2_fixed, levels = eg_levels(TRUE), top = "SCHOOLID", y = "MATH", data = eg,
                    nlme_fixed = m2_fixed, nlme_random = list(SCHOOLID = pdDiag(~YEAR), CHILDID = pdDiag(~YEAR))),
  # a boundary: the simulated data of three_level_lme4.R, whose ML fit puts the level-3 variance at 0
  sim_boundary = list(form = Y ~ 1 + X + (1 | L3) + (1 + X | L3:L2), fixed = Y ~ 1 + X,
                      levels = list(list(group = "L3:L2", cols = c("1", "X"), diagonal = FALSE),
                                    list(group = "L3", cols = "1", diagonal = FALSE)),
                      top = "L3", y = "Y", data = sim, nlme_fixed = Y ~ 1 + X,
                      nlme_random = list(L3 = ~1, L2 = pdSymm(~X)))
)
writeLines(toJSON(list(versions = versions, models = run_models(three)), digits = I(17), auto_unbox = TRUE,
                  pretty = TRUE), paste0(d, "eg_diagonal_satterthwaite.json"))

# ---- four levels: the simulated schools and hospitals (four_level_lme4.R)
d4 <- "tests/data/four_level/"
read4 <- function(name, ids) {
  f <- lapply(1:4, function(k) read.csv(paste0(d4, name, "_l", k, ".csv")))
  x <- merge(merge(merge(f[[1]], f[[2]], by = ids[1]), f[[3]], by = ids[2]), f[[4]], by = ids[3])
  x <- x[order(x[[ids[3]]], x[[ids[2]]], x[[ids[1]]]), ]
  x$L3 <- interaction(x[[ids[3]]], x[[ids[2]]], drop = TRUE)
  x$L2 <- interaction(x[[ids[3]]], x[[ids[2]]], x[[ids[1]]], drop = TRUE)
  x
}
schools <- read4("schools", c("STUDENTID", "CLASSID", "SCHOOLID"))
hospitals <- read4("hospitals", c("PATIENTID", "WARDID", "HOSPID"))
sch_fixed <- SCORE ~ 1 + SECTOR + CSIZE + SES + TIME
hos_fixed <- Y ~ 1 + TEACHING + STAFF + AGE + DOSE + DOSE:TEACHING
sch_levels <- function(diagonal) list(list(group = "L2", cols = c("1", "TIME"), diagonal = diagonal),
                                      list(group = "L3", cols = "1", diagonal = diagonal),
                                      list(group = "SCHOOLID", cols = "1", diagonal = diagonal))
hos_levels <- function(diagonal) list(list(group = "L2", cols = "1", diagonal = diagonal),
                                      list(group = "L3", cols = c("1", "DOSE"), diagonal = diagonal),
                                      list(group = "HOSPID", cols = c("1", "DOSE"), diagonal = diagonal))
four <- list(
  schools = list(form = update(sch_fixed, . ~ . + (1 | SCHOOLID) + (1 | L3) + (1 + TIME | L2)),
                 fixed = sch_fixed, levels = sch_levels(FALSE), top = "SCHOOLID", y = "SCORE", data = schools,
                 nlme_fixed = sch_fixed,
                 nlme_random = list(SCHOOLID = ~1, CLASSID = ~1, STUDENTID = pdSymm(~TIME))),
  schools_diag = list(form = update(sch_fixed, . ~ . + (1 | SCHOOLID) + (1 | L3) + (1 | L2) + (0 + TIME | L2)),
                      fixed = sch_fixed, levels = sch_levels(TRUE), top = "SCHOOLID", y = "SCORE", data = schools,
                      nlme_fixed = sch_fixed,
                      nlme_random = list(SCHOOLID = ~1, CLASSID = ~1, STUDENTID = pdDiag(~TIME))),
  hospitals = list(form = update(hos_fixed, . ~ . + (1 + DOSE | HOSPID) + (1 + DOSE | L3) + (1 | L2)),
                   fixed = hos_fixed, levels = hos_levels(FALSE), top = "HOSPID", y = "Y", data = hospitals,
                   nlme_fixed = hos_fixed,
                   nlme_random = list(HOSPID = pdSymm(~DOSE), WARDID = pdSymm(~DOSE), PATIENTID = ~1)),
  hospitals_diag = list(form = update(hos_fixed, . ~ . + (1 | HOSPID) + (0 + DOSE | HOSPID) + (1 | L3) +
                                        (0 + DOSE | L3) + (1 | L2)),
                        fixed = hos_fixed, levels = hos_levels(TRUE), top = "HOSPID", y = "Y", data = hospitals,
                        nlme_fixed = hos_fixed,
                        nlme_random = list(HOSPID = pdDiag(~DOSE), WARDID = pdDiag(~DOSE), PATIENTID = ~1))
)
writeLines(toJSON(list(versions = versions, models = run_models(four)), digits = I(17), auto_unbox = TRUE,
                  pretty = TRUE), paste0(d4, "diagonal_satterthwaite.json"))
