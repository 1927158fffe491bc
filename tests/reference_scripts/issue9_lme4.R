# Reference values for issue 9: two-level LMM fits computed with lme4 + lmerTest.
#
# Run from the repository root:
#     Rscript tests/reference_scripts/issue9_lme4.R
#
# Reads:   sample_data/hsb/hsb1.csv, sample_data/hsb/hsb2.csv,
#          sample_data/popular2/popular2_level1.csv, sample_data/popular2/popular2_level2.csv
# Writes:  tests/data/boundary_sim.csv   (simulated data, set.seed(2))
#          tests/data/lme4_issue9.json   (reference numbers, read by the Python tests)
#
# Every model is fitted with a multi-stage optimisation so that the deviance is
# accurate to roughly machine precision (well below 1e-9 relative):
#   1. lme4::lmer with bobyqa (rhoend = 1e-12, maxfun = 1e6)
#   2. nloptr BOBYQA (ftol_abs = 1e-14, xtol_abs = 1e-12) started at the best point
#   3. lme4::Nelder_Mead started at the best point
#   4. minqa::bobyqa again with a small rhobeg
#   5. boundary snap: every theta component with a lower bound of 0 and a value
#      below 1e-4 is set to exactly 0 and the remaining components are
#      re-optimised; this is kept when its deviance is not higher than the best
#      one by more than 1e-12 (relative).
# The lowest-deviance theta is kept. The lmerMod object is then rebuilt at that
# theta (lmerTest::lmer with an optimiser that returns its start value), so
# lmerTest computes Satterthwaite d.f. at exactly the reported optimum.
#
# Satterthwaite d.f. come from lmerTest, which differentiates numerically
# (numDeriv) in the (theta, sigma) parametrisation; eigenvalues of the Hessian
# below tol = 1e-8 are dropped (pseudo-inverse), which is how a parameter that
# sits on the boundary drops out. Those d.f. are accurate to about 1e-6 relative,
# not to machine precision.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
  library(minqa)
})

out_json <- "tests/data/lme4_issue9.json"
sim_csv <- "tests/data/boundary_sim.csv"

# ---------------------------------------------------------------- data ----
h1 <- read.csv("sample_data/hsb/hsb1.csv")
h2 <- read.csv("sample_data/hsb/hsb2.csv")
hsb <- merge(h1, h2, by = "ID")
hsb <- hsb[order(hsb$ID), ]                    # stable sort: keeps file order within school
hsb$cses <- hsb$SES - ave(hsb$SES, hsb$ID)     # group-mean centred SES
hsb$ses_k <- hsb$SES / 1000                    # rescaled SES (not centred)
hsb$ID <- factor(hsb$ID)

p1 <- read.csv("sample_data/popular2/popular2_level1.csv")
p2 <- read.csv("sample_data/popular2/popular2_level2.csv")
pop <- merge(p1, p2, by = "class")
pop <- pop[order(pop$class), ]
pop$class <- factor(pop$class)

# Simulated data with a true slope variance of 0 (seed chosen so that both the
# (1 + X | ID) and the (1 | ID) + (0 + X | ID) fits are singular for REML and ML).
RNGkind("Mersenne-Twister", "Inversion", "Rejection")
set.seed(2)
G <- 40; m <- 10
sim_ID <- rep(seq_len(G), each = m)
sim_W <- rep(rbinom(G, 1, 0.5), each = m)                 # level-2 dummy
sim_X <- round(rnorm(G * m), 3)
sim_u0 <- rep(rnorm(G, 0, 1), each = m)                   # random intercept sd 1
sim_Y <- round(1 + 0.5 * sim_X + 0.8 * sim_W + sim_u0 + rnorm(G * m, 0, 2), 3)
write.csv(data.frame(ID = sim_ID, W = sim_W, X = sim_X, Y = sim_Y), sim_csv,
          row.names = FALSE, quote = FALSE)
sim <- read.csv(sim_csv)                                   # fit exactly what is stored
sim$ID <- factor(sim$ID)

data_desc <- list(
  hsb = paste("sample_data/hsb/hsb1.csv merged with sample_data/hsb/hsb2.csv on ID;",
              "cses = SES - mean(SES within ID) (group-mean centring over all records);",
              "ses_k = SES/1000"),
  pop = paste("sample_data/popular2/popular2_level1.csv merged with",
              "sample_data/popular2/popular2_level2.csv on class"),
  sim = paste("tests/data/boundary_sim.csv, simulated by this script:",
              "RNGkind(Mersenne-Twister, Inversion, Rejection), set.seed(2), 40 groups x 10;",
              "W = group-level Bernoulli(0.5), X ~ N(0,1) rounded to 3 dp,",
              "Y = 1 + 0.5 X + 0.8 W + u0 + e, u0 ~ N(0,1), e ~ N(0,4), rounded to 3 dp;",
              "true slope variance 0")
)
datasets <- list(hsb = hsb, pop = pop, sim = sim)

# ---------------------------------------------------------- optimiser ----
ctrl_base <- lmerControl(optimizer = "bobyqa",
                         optCtrl = list(rhoend = 1e-12, maxfun = 1e6),
                         check.conv.singular = "ignore",
                         check.conv.grad = "ignore",
                         check.conv.hess = "ignore")

fixed_optimizer <- function(par, fn, lower, upper, control = list(), ...) {
  list(par = par, fval = fn(par), conv = 0, feval = 1L, message = "fixed at polished optimum")
}
ctrl_fixed <- lmerControl(optimizer = fixed_optimizer, restart_edge = FALSE,
                          boundary.tol = 0,
                          check.conv.singular = "ignore",
                          check.conv.grad = "ignore",
                          check.conv.hess = "ignore")

run_stage <- function(name, f, par, lower) {
  r <- tryCatch(switch(name,
    nlopt = {
      o <- nloptwrap(par, f, lower, rep(Inf, length(par)),
                     control = list(algorithm = "NLOPT_LN_BOBYQA", ftol_abs = 1e-14,
                                    xtol_abs = 1e-12, ftol_rel = 0, xtol_rel = 0,
                                    maxeval = 1e6))
      list(par = o$par, fval = o$fval)
    },
    nm = {
      o <- Nelder_Mead(fn = f, par = par, lower = lower, upper = rep(Inf, length(par)),
                       control = list(FtolAbs = 1e-15, FtolRel = 1e-15,
                                      XtolRel = 1e-12, maxfun = 1e6))
      list(par = o$par, fval = o$fval)
    },
    bobyqa = {
      o <- minqa::bobyqa(par, f, lower = lower,
                         control = list(rhobeg = 1e-4, rhoend = 1e-13, maxfun = 1e6, iprint = 0))
      list(par = o$par, fval = o$fval)
    }), error = function(e) NULL)
  if (!is.null(r)) r$fval <- f(r$par)     # re-evaluate exactly
  r
}

polish <- function(devfun, par, lower) {
  best <- list(par = par, fval = devfun(par))
  trail <- list(`1_lme4_bobyqa` = best$fval)
  for (st in c("nlopt", "nm", "bobyqa", "nlopt")) {
    r <- run_stage(st, devfun, best$par, lower)
    if (!is.null(r)) {
      trail[[length(trail) + 1]] <- r$fval
      names(trail)[length(trail)] <- paste0(length(trail), "_", st)
      if (r$fval < best$fval) best <- r
    }
  }
  # boundary snap
  snapped <- character(0)
  cand <- which(lower == 0 & abs(best$par) < 1e-4)
  if (length(cand)) {
    p0 <- best$par
    p0[cand] <- 0
    free <- setdiff(seq_along(p0), cand)
    if (length(free)) {
      fr <- function(q) { p <- p0; p[free] <- q; devfun(p) }
      sub <- list(par = p0[free], fval = fr(p0[free]))
      for (st in c("nlopt", "bobyqa", "nm", "nlopt")) {
        r <- run_stage(st, fr, sub$par, lower[free])
        if (!is.null(r) && r$fval < sub$fval) sub <- r
      }
      p0[free] <- sub$par
    }
    f0 <- devfun(p0)
    trail$boundary_snap <- f0
    if (f0 <= best$fval + 1e-12 * abs(best$fval)) {
      best <- list(par = p0, fval = f0)
      snapped <- paste0("theta[", cand, "]")
    }
  }
  list(par = best$par, fval = best$fval, trail = trail, snapped = snapped)
}

# ---------------------------------------------------------- helpers ----
named_num <- function(x) as.list(setNames(as.numeric(x), names(x)))
# I() keeps length-1 vectors as JSON arrays under auto_unbox = TRUE
vec <- function(x) I(as.vector(unname(x)))
mat_rows <- function(m) lapply(seq_len(nrow(m)), function(i) vec(as.numeric(m[i, ])))

tau_info <- function(fit) {
  vc <- VarCorr(fit)
  # lme4 stores the grouping factor per term in names(getME(fit, "cnms"))
  cn <- getME(fit, "cnms")
  fac <- names(cn)
  terms <- lapply(seq_along(vc), function(i) {
    m <- as.matrix(vc[[i]])
    attr(m, "stddev") <- NULL; attr(m, "correlation") <- NULL
    list(term = names(vc)[i], group = fac[i], names = vec(colnames(m)),
         matrix = mat_rows(unname(m)))
  })
  # block-diagonal tau per grouping factor (e.g. (1|ID) + (0+cses|ID) -> 2x2 diagonal)
  tau <- list()
  for (g in unique(fac)) {
    idx <- which(fac == g)
    nms <- unlist(lapply(vc[idx], colnames))
    M <- matrix(0, length(nms), length(nms))
    off <- 0
    for (i in idx) {
      m <- as.matrix(vc[[i]]); k <- nrow(m)
      M[off + seq_len(k), off + seq_len(k)] <- m
      off <- off + k
    }
    tau[[g]] <- list(names = vec(nms), matrix = mat_rows(M))
  }
  list(tau = tau, tau_terms = terms)
}

fit_case <- function(name, formula, dname, REML, note = NULL) {
  dat <- datasets[[dname]]
  fstr <- paste(deparse(formula, width.cutoff = 500L), collapse = " ")
  # stage 1: plain lme4 fit with tight bobyqa
  f1 <- lme4::lmer(formula, data = dat, REML = REML, control = ctrl_base)
  devfun <- lme4::lmer(formula, data = dat, REML = REML, control = ctrl_base,
                       devFunOnly = TRUE)
  lower <- getME(f1, "lower")
  pol <- polish(devfun, getME(f1, "theta"), lower)
  theta <- pol$par
  # rebuild at the polished theta; lmerTest::lmer gives the lmerModLmerTest object
  fit <- lmerTest::lmer(formula, data = dat, REML = REML,
                        start = list(theta = theta), control = ctrl_fixed)
  stopifnot(isTRUE(all.equal(unname(getME(fit, "theta")), unname(theta), tolerance = 0)))
  crit <- if (REML) REMLcrit(fit) else deviance(fit)
  ll <- logLik(fit)
  sm <- summary(fit)
  co <- sm$coefficients
  p <- nrow(co)
  L <- diag(p); colnames(L) <- rownames(co)
  ct <- lmerTest::contest(fit, L, joint = FALSE, ddf = "Satterthwaite")
  ti <- tau_info(fit)
  h_eig <- tryCatch({
    h <- numDeriv::hessian(func = lmerTest:::devfun_vp,
                           x = unname(c(theta, sigma(fit))),
                           devfun = devfun, reml = REML)
    eigen(h, symmetric = TRUE)$values
  }, error = function(e) NULL)
  cat(sprintf("%-32s %s  crit = %.10f  singular = %s  snapped = %s\n", name,
              if (REML) "REML" else "ML  ", crit, isSingular(fit),
              paste(pol$snapped, collapse = ",")))
  res <- list(
    name = name,
    formula = fstr,
    REML = REML,
    data = data_desc[[dname]],
    dataset = dname,
    nobs = nobs(fit),
    ngroups = as.list(ngrps(fit)),
    criterion = if (REML) "REMLcrit(fit) = -2 * restricted log-likelihood"
                else "deviance(fit) = -2 * log-likelihood",
    deviance = crit,
    logLik = as.numeric(ll),
    logLik_df = attr(ll, "df"),
    fixef = named_num(fixef(fit)),
    fixef_se = named_num(setNames(sqrt(diag(as.matrix(vcov(fit)))), names(fixef(fit)))),
    vcov_fixef = list(names = vec(names(fixef(fit))), matrix = mat_rows(unname(as.matrix(vcov(fit))))),
    theta = vec(as.numeric(getME(fit, "theta"))),
    theta_names = vec(names(getME(fit, "theta"))),
    theta_lower = vec(as.numeric(lower)),
    sigma2 = sigma(fit)^2,
    tau = ti$tau,
    tau_terms = ti$tau_terms,
    isSingular = isSingular(fit),
    boundary_snapped = vec(pol$snapped),
    satterthwaite_df = named_num(setNames(co[, "df"], rownames(co))),
    satterthwaite_t = named_num(setNames(co[, "t value"], rownames(co))),
    satterthwaite_p = named_num(setNames(co[, "Pr(>|t|)"], rownames(co))),
    contest_df = named_num(setNames(ct[, "df"], rownames(co))),
    lmerTest_vcov_varpar = mat_rows(unname(fit@vcov_varpar)),
    lmerTest_varpar_names = vec(c(names(getME(fit, "theta")), "sigma")),
    lmerTest_hessian_eigenvalues = if (is.null(h_eig)) NULL else vec(as.numeric(h_eig)),
    lmerTest_jacobian_maxabs = vec(vapply(fit@Jac_list, function(J) max(abs(J)), 0)),
    optimizer_trail = pol$trail
  )
  if (!is.null(note)) res$note <- note
  res
}

# ------------------------------------------------------------- cases ----
specs <- list()
add <- function(base, formula, dname, group, note = NULL) {
  for (reml in c(TRUE, FALSE)) {
    specs[[length(specs) + 1]] <<- list(
      name = paste0(base, if (reml) "_reml" else "_ml"),
      formula = formula, dname = dname, REML = reml, group = group, note = note)
  }
}

# a. HSB model 4
add("hsb_m4", MATHACH ~ 1 + cses * SECTOR + (1 + cses | ID), "hsb", "a_main")
# b. popular2 main model
add("popular", popular ~ extrav + sex + texp + (1 + extrav | class), "pop", "b_main")
# c. boundary fits
add("boundary_pop_diag_sex_zero_var",
    popular ~ extrav + sex + texp + (1 | class) + (0 + sex | class), "pop", "c_boundary",
    note = "natural boundary case: variance of the sex slope (independent of the intercept) estimated exactly 0")
add("boundary_pop_sex_cor_minus1",
    popular ~ extrav + sex + texp + (1 + sex | class), "pop", "c_boundary",
    note = "natural boundary case: q = 2, correlation(intercept, sex slope) = -1, theta[3] = 0")
add("boundary_sim_zero_var",
    Y ~ X + W + (1 | ID) + (0 + X | ID), "sim", "c_boundary",
    note = "simulated boundary case: slope variance estimated exactly 0")
add("boundary_sim_cor",
    Y ~ X + W + (1 + X | ID), "sim", "c_boundary",
    note = "simulated boundary case: q = 2, correlation = +/-1, theta[3] = 0")
# d. model forms
add("hsb_no_fixed_slope", MATHACH ~ 1 + (1 + cses | ID), "hsb", "d_forms",
    note = "HLM 7 'b1 = u1' (no fixed slope)")
add("popular_no_fixed_slope", popular ~ 1 + (1 + extrav | class), "pop", "d_forms",
    note = "HLM 7 'b1 = u1' (no fixed slope)")
add("hsb_no_intercept", MATHACH ~ 0 + SES + (0 + SES | ID), "hsb", "d_forms",
    note = "no level-1 intercept: Y = b1*X + r, b1 = g10 + u1")
add("popular_no_intercept", popular ~ 0 + extrav + (0 + extrav | class), "pop", "d_forms",
    note = "no level-1 intercept: Y = b1*X + r, b1 = g10 + u1")
add("hsb_diag_tau", MATHACH ~ 1 + cses + SECTOR + (1 | ID) + (0 + cses | ID), "hsb", "d_forms",
    note = "diagonal tau; tau reported as the 2x2 diagonal matrix per grouping factor")
add("popular_diag_tau", popular ~ extrav + sex + texp + (1 | class) + (0 + extrav | class),
    "pop", "d_forms",
    note = "diagonal tau; tau reported as the 2x2 diagonal matrix per grouping factor")
# e. rescaled predictor
add("hsb_ses_k", MATHACH ~ SECTOR + ses_k + (1 + ses_k | ID), "hsb", "e_rescaled",
    note = "ses_k = SES/1000, not centred")
add("hsb_ses_unscaled", MATHACH ~ SECTOR + SES + (1 + SES | ID), "hsb", "e_rescaled",
    note = "SES unscaled, not centred (compare with hsb_ses_k)")
# f. Satterthwaite on HSB models with level-2 predictors (MEANSES, SECTOR)
add("hsb_meanses_sector", MATHACH ~ 1 + cses + MEANSES + SECTOR + (1 + cses | ID), "hsb",
    "f_satterthwaite", note = "additive level-2 predictors of the intercept only")
add("hsb_full_cross_level", MATHACH ~ 1 + cses * (MEANSES + SECTOR) + (1 + cses | ID), "hsb",
    "f_satterthwaite",
    note = "intercepts- and slopes-as-outcomes (Raudenbush & Bryk HSB model with MEANSES, SECTOR)")

cases <- list()
for (s in specs) {
  r <- fit_case(s$name, s$formula, s$dname, s$REML, s$note)
  r$group <- s$group
  cases[[s$name]] <- r
}

# checks / derived comparisons
comparisons <- list(
  hsb_rescale_reml_deviance_difference =
    cases$hsb_ses_k_reml$deviance - cases$hsb_ses_unscaled_reml$deviance,
  hsb_rescale_expected_reml_difference = -2 * log(1000),
  hsb_rescale_ml_deviance_difference =
    cases$hsb_ses_k_ml$deviance - cases$hsb_ses_unscaled_ml$deviance,
  note = paste("REMLcrit includes log det(X' V^-1 X); dividing one column of X by 1000",
               "lowers it by 2*log(1000), so REML(ses_k) - REML(SES) = -2*log(1000);",
               "the ML deviances are equal")
)
cat(sprintf("rescale: REML diff = %.12f (expected %.12f), ML diff = %.3e\n",
            comparisons$hsb_rescale_reml_deviance_difference,
            comparisons$hsb_rescale_expected_reml_difference,
            comparisons$hsb_rescale_ml_deviance_difference))

out <- list(
  description = paste("Reference fits for hlmcli issue 9, generated by",
                      "tests/reference_scripts/issue9_lme4.R (lme4 + lmerTest)."),
  generated_utc = format(Sys.time(), "%Y-%m-%dT%H:%M:%SZ", tz = "UTC"),
  versions = list(R = as.character(getRversion()),
                  lme4 = as.character(packageVersion("lme4")),
                  lmerTest = as.character(packageVersion("lmerTest")),
                  jsonlite = as.character(packageVersion("jsonlite")),
                  Matrix = as.character(packageVersion("Matrix")),
                  minqa = as.character(packageVersion("minqa")),
                  nloptr = as.character(packageVersion("nloptr")),
                  numDeriv = as.character(packageVersion("numDeriv"))),
  optimisation = paste("lme4 bobyqa (rhoend 1e-12, maxfun 1e6), then nloptr BOBYQA",
                       "(ftol_abs 1e-14, xtol_abs 1e-12), lme4 Nelder_Mead, minqa bobyqa,",
                       "nloptr BOBYQA again, then a boundary snap (theta components < 1e-4 with",
                       "lower bound 0 set to 0, others re-optimised); lowest deviance kept"),
  satterthwaite = paste("lmerTest Satterthwaite d.f. (summary(fit)$coefficients[, 'df'] and",
                        "contest(fit, diag(p), joint = FALSE, ddf = 'Satterthwaite')), computed by",
                        "numDeriv in the (theta, sigma) parametrisation; Hessian eigenvalues < 1e-8",
                        "are dropped (parameters on the boundary drop out); accurate to ~1e-6 relative"),
  data = data_desc,
  comparisons = comparisons,
  cases = unname(cases)
)
write_json(out, out_json, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null")
cat("wrote", out_json, "with", length(cases), "cases\n")
