# Reference numbers for tests/test_constraints.py: the three-level growth model of tests/data/three_level/eg_*
# with γs tied across the level-3 equations of two random coefficients, fitted by lmer (ML) on the summed
# column, with tight optimizer settings:
#   g001 = g101 (LOWINC on the intercept and on the YEAR slope): C1 = LOWINC + YEAR*LOWINC
#   g101 = g102 (LOWINC and MOBILITY on the YEAR slope):          C2 = YEAR*(LOWINC + MOBILITY)
# Run from the repository root: Rscript tests/reference_scripts/constraints_three_level_lme4.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
dir <- "tests/data/three_level/"
l1 <- read.csv(paste0(dir, "eg_l1.csv")); l2 <- read.csv(paste0(dir, "eg_l2.csv")); l3 <- read.csv(paste0(dir, "eg_l3.csv"))
x <- merge(merge(l1, l2[, c("CHILDID", "FEMALE")], by = "CHILDID"), l3, by = "SCHOOLID")
x$C1 <- x$LOWINC + x$YEAR * x$LOWINC
x$C2 <- x$YEAR * (x$LOWINC + x$MOBILITY)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), check.conv.grad = "ignore")
fits <- list(
  g001_g101 = lmer(MATH ~ 1 + C1 + FEMALE + YEAR + YEAR:MOBILITY + (1 + YEAR | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID),
                   x, REML = FALSE, control = ctrl),
  g101_g102 = lmer(MATH ~ 1 + LOWINC + FEMALE + YEAR + C2 + (1 + YEAR | SCHOOLID) + (1 + YEAR | SCHOOLID:CHILDID),
                   x, REML = FALSE, control = ctrl))
out <- lapply(fits, function(m) list(deviance = deviance(m), fixef = as.list(fixef(m)),
                                     se = as.list(sqrt(diag(as.matrix(vcov(m)))))))
writeLines(toJSON(out, digits = 15, auto_unbox = TRUE, pretty = TRUE), "tests/data/constraints/eg_tied_lme4.json")
