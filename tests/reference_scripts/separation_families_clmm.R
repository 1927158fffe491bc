# ordinal::clmm on the separation test data (tests/data/separation_families/): the fit of ord_unit.csv
# (category 3 reached only in unit 1) is finite, and our Laplace fit must match it; ord_complete.csv and
# ord_quasi.csv run to huge estimates with a singular Hessian in clmm (recorded for comparison only).
# Run from the repository root: Rscript tests/reference_scripts/separation_families_clmm.R
suppressMessages(library(ordinal))
dir <- "tests/data/separation_families"
out <- list()
for (f in c("ord_complete", "ord_quasi", "ord_unit")) {
  d <- read.csv(file.path(dir, paste0(f, ".csv")))
  d$Y <- factor(d$Y, ordered = TRUE); d$ID <- factor(d$ID)
  form <- if (f == "ord_quasi") Y ~ X + G + (1 | ID) else Y ~ X + (1 | ID)
  m <- clmm(form, data = d, control = clmm.control(gradTol = 1e-10, method = "nlminb"))
  out[[f]] <- list(theta = unname(m$Theta), beta = unname(m$beta), tau = unname(m$ST$ID[1, 1]^2),
                   deviance = -2 * as.numeric(logLik(m)), max_grad = max(abs(m$gradient)))
}
writeLines(jsonlite::toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           file.path(dir, "clmm_reference.json"))
