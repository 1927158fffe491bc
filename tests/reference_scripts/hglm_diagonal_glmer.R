# Reference for tests/test_hglm.py::test_diagonal_tau_laplace_matches_glmer (--tau diagonal).
# PIRLS tolerance tolPwrss = 1e-12: at the default 1e-7 the modes stop short and the deviance is high by up
# to 2e-3 away from the optimum, which moves the Hessian-based SEs by 1e-3.
# Data: tests/data/hglm/contra_l*.csv (the Bernoulli reference model's files).
# Run from tests/data/hglm: Rscript ../../reference_scripts/hglm_diagonal_glmer.R > contra_diag_laplace.json
suppressMessages({library(lme4); library(jsonlite)})
d <- merge(read.csv("contra_l1.csv"), read.csv("contra_l2.csv"), by = "DISTRICT")
m <- glmer(USE ~ URBAN + AGE + (1 | DISTRICT) + (0 + URBAN | DISTRICT), data = d, family = binomial, nAGQ = 1,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5), tolPwrss = 1e-12))
vc <- VarCorr(m)
cat(toJSON(list(tool = paste("lme4", packageVersion("lme4"), "glmer nAGQ=1 bobyqa rhoend=1e-10 tolPwrss=1e-12"),
                call = "glmer(USE ~ URBAN + AGE + (1 | DISTRICT) + (0 + URBAN | DISTRICT), family = binomial, nAGQ = 1)",
                deviance = -2 * as.numeric(logLik(m)), fixef = as.list(fixef(m)),
                se = as.list(sqrt(diag(as.matrix(vcov(m))))),
                tau = c(as.numeric(vc[[1]]), as.numeric(vc[[2]]))), digits = NA, auto_unbox = TRUE))
