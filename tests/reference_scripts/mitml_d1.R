# The multivariate Wald test combined over imputations, D1 (Li, Raghunathan & Rubin 1991), as mitml computes
# it (mitml::testConstraints, method = "D1", no df.com: F reference with Li et al.'s d.f.), on fixed inputs
# (each fit's estimates and covariance), for tests/test_plausible.py::test_d1_matches_mitml.
# Run from the repository root:  Rscript tests/reference_scripts/mitml_d1.R
# Debian packages: r-cran-mitml r-cran-jsonlite.
suppressMessages({library(mitml); library(jsonlite)})
inp <- fromJSON("tests/data/weights/d1_inputs.json", simplifyVector = FALSE)
out <- list()
for (cs in inp$cases) {
  nm <- unlist(cs$names)
  qhat <- lapply(cs$fits, function(f) setNames(unlist(f$qhat), nm))
  for (kind in c("model", "robust")) {
    if (is.null(cs$fits[[1]][[kind]])) next
    uhat <- lapply(cs$fits, function(f) {
      m <- do.call(rbind, lapply(f[[kind]], unlist)); dimnames(m) <- list(nm, nm); m })
    for (con in cs$constraints) {
      r <- testConstraints(qhat = qhat, uhat = uhat, constraints = unlist(con), method = "D1")
      t <- r$test
      out[[length(out) + 1]] <- list(case = cs$name, covariance = kind, constraints = unlist(con),
                                     F = unname(t[1, "F.value"]), df1 = unname(t[1, "df1"]),
                                     df2 = unname(t[1, "df2"]), p = unname(t[1, "P(>F)"]), riv = unname(t[1, "RIV"]))
    }
  }
}
doc <- list(tool = paste("mitml", as.character(packageVersion("mitml")), "testConstraints(method = 'D1')"),
            R = R.version.string, results = out)
writeLines(toJSON(doc, auto_unbox = TRUE, digits = NA, pretty = TRUE), "tests/data/weights/mitml_d1.json")
