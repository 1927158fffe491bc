# Reference values for the tidy CSV of hlmcli's tables (hlmcli/tables.py): broom.mixed::tidy() of
# lme4 fits of HSB, with the columns named and centred as hlmcli's printed lme4 formula names them
# (SES_gc = SES minus the school's mean, SES_grand = SES minus the mean over students).
#
# Run from the repository root:
#     Rscript tests/reference_scripts/broom_tidy_hsb.R
#
# Reads:   sample_data/hsb/hsb1.csv, sample_data/hsb/hsb2.csv
# Writes:  tests/data/tables/broom_tidy_hsb.csv (read by tests/test_paper_tables.py)
#
# Models (hlmcli's equations):
#   m4:    MATHACH = b0 + b1*group(SES) + r;  b0 = g00 + g01*SECTOR + u0;  b1 = g10 + g11*SECTOR + u1   (REML)
#   grand: MATHACH = b0 + b1*grand(SES) + r;  b0 = g00 + g01*MEANSES + u0; b1 = g10 + u1               (REML)
# lmer's optimizer is tightened (bobyqa, rhoend 1e-12); its max|gradient| left is 2.5e-6 and 6.4e-6
# (on REML criteria of 46600), so the SDs agree with the certified optimum to ~1.5e-7 relative.

suppressPackageStartupMessages({
  library(lme4)
  library(broom.mixed)
})

l1 <- read.csv("sample_data/hsb/hsb1.csv")
l2 <- read.csv("sample_data/hsb/hsb2.csv")
d <- merge(l1, l2, by = "ID")
d$SES_gc <- d$SES - ave(d$SES, d$ID)
d$SES_grand <- d$SES - mean(d$SES)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 1e-3, rhoend = 1e-12, maxfun = 1e6),
                    check.conv.grad = .makeCC("warning", tol = 1e-6))

fits <- list(
  m4 = lmer(MATHACH ~ 1 + SECTOR + SES_gc + SECTOR:SES_gc + (1 + SES_gc | ID), data = d, REML = TRUE, control = ctrl),
  grand = lmer(MATHACH ~ 1 + MEANSES + SES_grand + (1 + SES_grand | ID), data = d, REML = TRUE, control = ctrl)
)
out <- do.call(rbind, lapply(names(fits), function(m) {
  t <- as.data.frame(tidy(fits[[m]], effects = c("fixed", "ran_pars"), conf.int = TRUE))
  t$std.error[is.na(t$std.error)] <- NA
  cbind(model = m, t[, c("effect", "group", "term", "estimate", "std.error", "statistic", "conf.low", "conf.high")],
        REMLcrit = as.numeric(REMLcrit(fits[[m]])))
}))
write.csv(out, "tests/data/tables/broom_tidy_hsb.csv", row.names = FALSE, na = "")
print(out, digits = 10)
