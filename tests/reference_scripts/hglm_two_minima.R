# References for tests/test_hglm.py::test_laplace_lowest_of_two_minima: a random-intercept logistic
# model on rare events (twominima_l*.csv: 200 units of 8-12 records, 0.34% successes; the stress
# suite's case rare05_2, benchmarks/stress_hglm.py) whose Laplace deviance has two local minima:
# one at tau = 0, where glmer stops, and a lower one at a large tau, where glmmTMB goes.
# glmer is run twice more, from glmmTMB's estimates and from tau = 0, to confirm both are minima
# of the same objective.
# Run from tests/data/hglm: Rscript ../../reference_scripts/hglm_two_minima.R > two_minima_refs.json
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
d <- merge(read.csv("twominima_l1.csv"), read.csv("twominima_l2.csv"), by = "ID")
d$ID <- factor(d$ID)
f <- Y ~ X1 + X2 + W + (1 | ID)
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5), tolPwrss = 1e-12,
                     check.conv.singular = "ignore")
fit <- function(m, tool) list(tool = tool, deviance = -2 * as.numeric(logLik(m)),
                             fixef = as.list(if (is.list(fixef(m))) fixef(m)$cond else fixef(m)),
                             tau = unname(as.numeric(if (inherits(m, "glmmTMB")) VarCorr(m)$cond$ID else VarCorr(m)$ID)))
m <- glmer(f, data = d, family = binomial, nAGQ = 1, control = ctrl)
t <- glmmTMB(f, data = d, family = binomial,
             control = glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4)))
m3 <- glmer(f, data = d, family = binomial, nAGQ = 1, control = ctrl,
            start = list(theta = sqrt(as.numeric(VarCorr(t)$cond$ID)), fixef = fixef(t)$cond))
out <- list(
  glmer = fit(m, paste("lme4", packageVersion("lme4"), "glmer nAGQ=1 bobyqa rhoend=1e-12 tolPwrss=1e-12")),
  tmb = fit(t, paste("glmmTMB", packageVersion("glmmTMB"))),
  glmer_from_tmb = fit(m3, "the same glmer call, started at glmmTMB's estimates"))
cat(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE))
