# Reference values for the centring of four-level models (hlmcli/design_levels.py): the schools data
# of four_level_lme4.R with predictors centred and averaged at every level as HLM does, the derived
# columns built here by hand from the four files, fitted with lme4 (ML, optimizer tightened and
# polished from its own answer).
#
# Run from the repository root, after four_level_lme4.R:
#     Rscript tests/reference_scripts/four_level_centring_lme4.R
#
# Reads:   tests/data/four_level/schools_l{1,2,3,4}.csv
# Writes:  tests/data/four_level/schools_centring.json (read by tests/test_four_level_cli.py)
#
# The model, as hlmcli writes it:
#   SCORE = p0 + p1*group(TIME) + e
#   p0 = b00 + b01*grand(SES) + b02*mean(TIME) + r0      p1 = b10 + r1
#   b00 = g000 + g001*group(CSIZE) + g002*mean(SES) + u00
#   g000 = d0000 + d0001*SECTOR + d0002*mean(CSIZE) + v000
# group(TIME): TIME minus the student's mean over its records; grand(SES): SES minus the mean over
# students; mean(TIME) at level 2: the student's mean TIME; group(CSIZE): CSIZE minus the mean over
# the classes of its school (classes, not records, are averaged); mean(SES) at level 3: the class's
# mean SES over its students; mean(CSIZE) at level 4: the school's mean CSIZE over its classes.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

d <- "tests/data/four_level/"
l1 <- read.csv(paste0(d, "schools_l1.csv"))
l2 <- read.csv(paste0(d, "schools_l2.csv"))
l3 <- read.csv(paste0(d, "schools_l3.csv"))
l4 <- read.csv(paste0(d, "schools_l4.csv"))
l1$mean_TIME <- ave(l1$TIME, l1$STUDENTID)
l1$TIME_gc <- l1$TIME - l1$mean_TIME
l2$SES_grand <- l2$SES - mean(l2$SES)
l2$mean_SES <- ave(l2$SES, l2$CLASSID)
l3$CSIZE_gc <- l3$CSIZE - ave(l3$CSIZE, l3$SCHOOLID)
l3$mean_CSIZE <- ave(l3$CSIZE, l3$SCHOOLID)
cls <- unique(l2[, c("CLASSID", "mean_SES")])
sc <- unique(l3[, c("SCHOOLID", "mean_CSIZE")])
x <- merge(merge(merge(l1, l2[, c("STUDENTID", "CLASSID", "SES_grand")], by = "STUDENTID"),
                 merge(l3[, c("CLASSID", "SCHOOLID", "CSIZE_gc")], cls, by = "CLASSID"), by = "CLASSID"),
           merge(l4, sc, by = "SCHOOLID"), by = "SCHOOLID")
stu <- unique(l1[, c("STUDENTID", "mean_TIME")])
x$mean_TIME <- stu$mean_TIME[match(x$STUDENTID, stu$STUDENTID)]
form <- SCORE ~ 1 + SECTOR + mean_CSIZE + CSIZE_gc + mean_SES + SES_grand + mean_TIME + TIME_gc +
  (1 | SCHOOLID) + (1 | SCHOOLID:CLASSID) + (1 + TIME_gc | SCHOOLID:CLASSID:STUDENTID)
labels <- c("d0000", "d0001", "d0002", "d0010", "d0020", "d0100", "d0200", "d1000")

ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6), calc.derivs = FALSE)
best <- lmer(form, data = x, REML = FALSE, control = ctrl)
for (opt in c("Nelder_Mead", "bobyqa")) {
  oc <- if (opt == "Nelder_Mead") list(FtolAbs = 1e-14, FtolRel = 1e-15, XtolRel = 1e-12, maxfun = 1e6)
        else list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6)
  f2 <- tryCatch(update(best, start = getME(best, "theta"),
                        control = lmerControl(optimizer = opt, optCtrl = oc, calc.derivs = FALSE)),
                 error = function(e) NULL)
  if (!is.null(f2) && deviance(f2) < deviance(best)) best <- f2
}
cf <- summary(best)$coefficients
vc <- VarCorr(best)
fixed <- list()
for (k in seq_along(labels)) fixed[[labels[k]]] <- list(est = cf[k, 1], se = cf[k, 2], lme4_name = rownames(cf)[k])
out <- list(ml = list(tool = paste("lme4", packageVersion("lme4")), formula = deparse(form, width.cutoff = 500L),
                      fixed = fixed, tau_pi = unname(as.matrix(vc[["SCHOOLID:CLASSID:STUDENTID"]])),
                      tau_beta = unname(as.matrix(vc[["SCHOOLID:CLASSID"]])),
                      tau_gamma = unname(as.matrix(vc[["SCHOOLID"]])), sigma2 = sigma(best)^2,
                      deviance = deviance(best)))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE), paste0(d, "schools_centring.json"))
