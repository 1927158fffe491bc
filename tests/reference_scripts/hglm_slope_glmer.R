# Reference for tests/test_hglm.py::test_laplace_two_random_effects_matches_glmer.
# Data: benchmarks/hglm_bench.py generate(5000, 100, seed 7), saved as tests/data/hglm/slope_l*.csv.
# Run from tests/data/hglm: Rscript ../../reference_scripts/hglm_slope_glmer.R > slope_laplace.json
suppressMessages({library(lme4); library(jsonlite)})
d <- merge(read.csv("slope_l1.csv"), read.csv("slope_l2.csv"), by = "id")
m <- glmer(y ~ x + w + (x | id), data = d, family = binomial, nAGQ = 1,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5)))
v <- as.matrix(VarCorr(m)$id); attributes(v)[c("stddev", "correlation")] <- NULL
cat(toJSON(list(tool = paste("lme4", packageVersion("lme4"), "glmer nAGQ=1 bobyqa rhoend=1e-10"),
                deviance = -2 * as.numeric(logLik(m)), fixef = as.list(fixef(m)),
                se = as.list(sqrt(diag(as.matrix(vcov(m))))), tau = unname(v)), digits = NA, auto_unbox = TRUE))
