# References for tests/test_separation.py: --separation fit holds a separated coefficient at a bound;
# as that bound grows, the separated records' (or units') likelihood tends to 1, so the other
# estimates tend to those of the data without them. Here: glmer (Laplace, tightened) on those
# reduced data. Data: tests/data/hglm/separation/sep_l*.csv (simulated, 30 units of 8; D is 1 on six
# records that are all successes; W is 1 for units 5 and 9, whose outcomes are all successes).
# Run from tests/data/hglm/separation:  Rscript ../../../reference_scripts/hglm_separation.R > separation_refs.json
suppressMessages({library(lme4); library(jsonlite)})
d <- merge(read.csv("sep_l1.csv"), read.csv("sep_l2.csv"), by = "ID")
ctl <- glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12, maxfun = 1e5))
fit <- function(f, data) {
  m <- glmer(f, data = data, family = binomial, nAGQ = 1, control = ctl)
  list(fixef = as.list(fixef(m)), tau = as.numeric(VarCorr(m)$ID), deviance = as.numeric(-2 * logLik(m)),
       n = nrow(data))
}
out <- list(
  level1_dummy_D = fit(Y ~ X + (1 | ID), d[d$D == 0, ]),
  level2_dummy_W = fit(Y ~ X + (1 | ID), d[d$W == 0, ]))
cat(toJSON(list(tool = paste("lme4", packageVersion("lme4"), "glmer nAGQ = 1, bobyqa rhoend 1e-12, tolPwrss 1e-12"),
                script = "tests/reference_scripts/hglm_separation.R", reference = out),
           digits = NA, auto_unbox = TRUE, pretty = TRUE))
