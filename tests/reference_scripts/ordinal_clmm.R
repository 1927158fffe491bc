# Reference fits of two-level ordinal (cumulative link) models: ordinal::clmm, Laplace and AGQ,
# on ordinal's `wine` and `soup` data. Writes the level-1/level-2 CSV files the tests read and
# tests/data/ordinal/clmm_reference.json. Run from the repository root:
#   Rscript tests/reference_scripts/ordinal_clmm.R
# clmm's parametrisation: link P(Y <= j) = theta_j - x'beta - u. hlmcli prints HLM 7's:
# link P(Y <= m) = gamma00 + delta(2) + ... + delta(m) + x'gamma + u, so
# gamma00 = theta_1, delta(m) = theta_m - theta_(m-1), gamma = -beta; tau is the same.
# Optimizers tightened: nlminb rel.tol 1e-14, and the inner Newton for the modes to gradTol 1e-12.
# Cross-check: at clmm's optimum the AGQ deviance is recomputed by numerical integration
# (stats::integrate, per unit) with the link's distribution as clm defines it, and must agree to 1e-6.
# clmm's "cloglog" does not pass it: at clmm(link = "cloglog")'s optimum the integral with
# clm's cloglog F(x) = 1 - exp(-exp(x)) is 12 deviance units off clmm's deviance, and the one with
# F(x) = exp(-exp(-x)) (clm's "loglog") agrees; clm's own cloglog fit is F(x) = 1 - exp(-exp(x)).
# So clmm's random-effects fit swaps the two links (ordinal 2022.11-16 here), and the cloglog
# reference is clmm(link = "loglog"), recorded with clmm_link = "loglog" and checked by the same integral.
suppressMessages({library(ordinal); library(jsonlite)})
out <- "tests/data/ordinal"
dir.create(out, showWarnings = FALSE, recursive = TRUE)

data(wine, package = "ordinal")
wine_l1 <- data.frame(judge = as.integer(wine$judge), rating = as.integer(wine$rating),
                      warm = as.integer(wine$temp == "warm"), contact = as.integer(wine$contact == "yes"))
wine_l2 <- data.frame(judge = sort(unique(wine_l1$judge)))
write.csv(wine_l1, file.path(out, "wine_l1.csv"), row.names = FALSE)
write.csv(wine_l2, file.path(out, "wine_l2.csv"), row.names = FALSE)

data(soup, package = "ordinal")
soup_l1 <- data.frame(resp = as.integer(as.character(soup$RESP)), sureness = as.integer(soup$SURENESS),
                      test = as.integer(soup$PROD == "Test"))
g <- tapply(as.character(soup$GENDER), soup_l1$resp, function(v) v[1])
soup_l2 <- data.frame(resp = as.integer(names(g)), male = as.integer(g == "Male"))
soup_l1 <- soup_l1[order(soup_l1$resp), ]
write.csv(soup_l1, file.path(out, "soup_l1.csv"), row.names = FALSE)
write.csv(soup_l2, file.path(out, "soup_l2.csv"), row.names = FALSE)
soup_l1$male <- soup_l2$male[match(soup_l1$resp, soup_l2$resp)]

ctrl <- clmm.control(method = "nlminb", gradTol = 1e-12, maxIter = 200, innerCtrl = "noWarn")

# the marginal deviance by numerical integration of each unit's likelihood (the cross-check)
integrated_deviance <- function(theta, beta, sd, y, X, unit, link) {
  F <- switch(link, logit = plogis, probit = pnorm, cloglog = function(x) 1 - exp(-exp(x)))
  th <- c(-Inf, theta, Inf)
  eta <- if (length(beta)) drop(X %*% beta) else rep(0, length(y))
  total <- 0
  for (j in unique(unit)) {
    k <- unit == j
    f <- function(u) sapply(u, function(v) exp(sum(log(F(th[y[k] + 1] - eta[k] - v) - F(th[y[k]] - eta[k] - v))))) * dnorm(u, 0, sd)
    total <- total + log(integrate(f, -Inf, Inf, rel.tol = 1e-13, abs.tol = 0, subdivisions = 1000)$value)
  }
  -2 * total
}

fits <- list()
one <- function(name, formula, data, link, nAGQ, y, X, unit) {
  clmm_link <- if (link == "cloglog") "loglog" else link
  m <- clmm(formula, data = data, link = clmm_link, nAGQ = nAGQ, control = ctrl)
  th <- unname(m$alpha); be <- unname(m$beta); sd <- unname(sqrt(m$ST[[1]][1, 1]^2))
  sd <- unname(attr(VarCorr(m)[[1]], "stddev"))
  dev <- -2 * as.numeric(logLik(m))
  se <- unname(sqrt(diag(vcov(m))))
  rec <- list(data = name, link = link, clmm_link = clmm_link, nAGQ = nAGQ, formula = deparse(formula),
              deviance = dev, theta = th, beta = be, tau = sd^2,
              se_theta = se[seq_along(th)], se_beta = se[length(th) + seq_along(be)],
              max_gradient = max(abs(m$gradient)), condition_hessian = m$condHess,
              logLik_df = attr(logLik(m), "df"))
  if (nAGQ > 1 || link == "cloglog") rec$integrated_deviance <- integrated_deviance(th, be, sd, y, X, unit, link)
  fits[[length(fits) + 1]] <<- rec
}
Xw <- cbind(wine_l1$warm, wine_l1$contact)
for (link in c("logit", "probit", "cloglog"))
  for (n in c(1, 10))
    one("wine", rating ~ temp + contact + (1 | judge), wine, link, n, wine_l1$rating, Xw, wine_l1$judge)
Xs <- cbind(soup_l1$test, soup_l1$male)
soup_fit <- data.frame(SURENESS = factor(soup_l1$sureness, ordered = TRUE), test = soup_l1$test,
                       male = soup_l1$male, resp = factor(soup_l1$resp))
for (n in c(1, 10))
  one("soup", SURENESS ~ test + male + (1 | resp), soup_fit, "logit", n, soup_l1$sureness, Xs, soup_l1$resp)
one("soup", SURENESS ~ test + male + (1 | resp), soup_fit, "probit", 1, soup_l1$sureness, Xs, soup_l1$resp)

writeLines(toJSON(list(generated_by = "tests/reference_scripts/ordinal_clmm.R",
                       ordinal_version = as.character(packageVersion("ordinal")),
                       convention = "clmm: link P(Y <= j) = theta_j - x'beta - u; hlmcli: gamma00 = theta_1, delta(m) = theta_m - theta_(m-1), gamma = -beta",
                       fits = fits), auto_unbox = TRUE, digits = NA, pretty = TRUE),
           file.path(out, "clmm_reference.json"))
