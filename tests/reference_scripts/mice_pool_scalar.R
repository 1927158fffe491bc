# Rubin's rules as mice computes them (mice::pool.scalar, rule "rubin1987": Barnard-Rubin d.f. with
# dfcom = n - k), on fixed inputs, for tests/test_plausible.py::test_rubin_matches_mice_pool_scalar.
# Run from the repository root:  Rscript tests/reference_scripts/mice_pool_scalar.R
# Debian packages: r-cran-mice r-cran-jsonlite.
suppressMessages({library(mice); library(jsonlite)})
cases <- list(
  # five estimates and squared SEs of the order of an HSB intercept across plausible values
  list(Q = c(10.98, 11.02, 10.95, 11.05, 10.99), U = c(0.0651, 0.0660, 0.0648, 0.0671, 0.0655), n = 160, k = 2),
  # ten plausible values, a slope with a large complete-data d.f.
  list(Q = c(2.41, 2.47, 2.52, 2.44, 2.50, 2.39, 2.55, 2.46, 2.48, 2.43),
       U = c(0.0121, 0.0119, 0.0125, 0.0122, 0.0118, 0.0120, 0.0124, 0.0121, 0.0123, 0.0119), n = 7185, k = 3),
  # no between-imputation variance: lambda is floored at 1e-4
  list(Q = c(1.5, 1.5, 1.5), U = c(0.04, 0.05, 0.06), n = 50, k = 4),
  # a large fraction of missing information and few units
  list(Q = c(0.2, 0.9, -0.4, 1.3), U = c(0.10, 0.12, 0.09, 0.11), n = 30, k = 3)
)
out <- lapply(cases, function(cs) {
  r <- pool.scalar(cs$Q, cs$U, n = cs$n, k = cs$k, rule = "rubin1987")
  c(cs, list(qbar = r$qbar, ubar = r$ubar, b = r$b, t = r$t, df = r$df, r = r$r, fmi = r$fmi))
})
doc <- list(tool = paste("mice", as.character(packageVersion("mice")), "pool.scalar(rule = 'rubin1987')"),
            R = R.version.string, cases = out)
writeLines(toJSON(doc, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/data/weights/mice_pool_scalar.json")
