# A three-level Bernoulli model whose level-3 τ is singular at the optimum (correlation +1), fitted by
# glmer (Laplace, nAGQ = 1) with tight controls and by glmmTMB, for tests/test_hglm3_singular.py.
#   Rscript tests/reference_scripts/hglm3_singular_glmer.R > tests/data/hglm3_singular/glmer.json
suppressMessages({library(lme4); library(glmmTMB); library(jsonlite)})
D <- "tests/data/hglm3_weights"
l1 <- read.csv(file.path(D, "bern_l1.csv")); l2 <- read.csv(file.path(D, "bern_l2.csv"))
l3 <- read.csv(file.path(D, "bern_l3.csv"))
d <- merge(merge(l1, l2, by = "CLASS"), l3, by = "SCHOOL")
f <- Y ~ X + W + Z + (1 + X | SCHOOL) + (1 + X | SCHOOL:CLASS)
m <- glmer(f, data = d, family = binomial,
           control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5), tolPwrss = 1e-13))
t <- glmmTMB(f, data = d, family = binomial,
             control = glmmTMBControl(optCtrl = list(rel.tol = 1e-14, iter.max = 1e4, eval.max = 1e4)))
vc <- VarCorr(m)
cat(toJSON(list(
  source = "tests/reference_scripts/hglm3_singular_glmer.R",
  R = R.version.string, lme4 = as.character(packageVersion("lme4")), glmmTMB = as.character(packageVersion("glmmTMB")),
  formula = deparse(f),
  glmer_fit = list(deviance = -2 * as.numeric(logLik(m)), gamma = unname(fixef(m)),
               tau_level2 = unname(as.matrix(vc[["SCHOOL:CLASS"]])), tau_level3 = unname(as.matrix(vc[["SCHOOL"]]))),
  glmmtmb_fit = list(deviance = -2 * as.numeric(logLik(t)), gamma = unname(fixef(t)$cond))
), digits = NA, auto_unbox = TRUE, pretty = TRUE))
cat("\n")
