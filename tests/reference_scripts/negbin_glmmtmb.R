# Reference fits of two-level negative binomial models (glmmTMB's nbinom2: Var = mu + mu^2/theta,
# log link), by Laplace, on three public data sets. Writes the level-1/level-2 CSV files the tests
# read and tests/data/negbin/glmmtmb_reference.json. Run from the repository root:
#   Rscript tests/reference_scripts/negbin_glmmtmb.R
# Models:
#   salamanders: glmmTMB's Salamanders, count ~ mined + (1|site)   (mined is a site variable)
#   grouseticks: lme4's grouseticks, TICKS ~ YEAR96 + YEAR97 + cHEIGHT + (1|BROOD)  (YEAR is a brood variable)
#   owls:        glmmTMB's Owls, SiblingNegotiation ~ food + offset(log(BroodSize)) + (1|Nest)  (exposure BroodSize)
# Optimizer tightened: nlminb rel.tol 1e-14 (x.tol = 0 stops it with "singular convergence").
# deviance = -2 logLik (the full log-likelihood, constants included, as dnbinom(log = TRUE)).
# log_theta_se: the SE of log(theta) from glmmTMB's sdreport (its parameter betad).
# Cross-check: lme4::glmer.nb on the same models, tightened; it is recorded but is not the
# reference: glmer's Laplace uses the expected information of the non-canonical NB log link, so
# its deviance differs from the exact Laplace (observed information) slightly.
suppressMessages({library(glmmTMB); library(lme4); library(jsonlite)})
out <- "tests/data/negbin"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
ctl <- glmmTMBControl(optCtrl = list(rel.tol = 1e-14, eval.max = 10000, iter.max = 10000))

data(Salamanders, package = "glmmTMB")
sal <- data.frame(site = as.integer(Salamanders$site), count = Salamanders$count)
sal_l2 <- unique(data.frame(site = as.integer(Salamanders$site), mined = as.integer(Salamanders$mined == "no")))
sal_l2 <- sal_l2[order(sal_l2$site), ]
stopifnot(nrow(sal_l2) == length(unique(sal$site)))
sal <- sal[order(sal$site), ]
write.csv(sal, file.path(out, "salamanders_l1.csv"), row.names = FALSE)
write.csv(sal_l2, file.path(out, "salamanders_l2.csv"), row.names = FALSE)
sal_d <- merge(sal, sal_l2, by = "site")

data(grouseticks, package = "lme4")
gt <- data.frame(brood = as.integer(grouseticks$BROOD), ticks = grouseticks$TICKS,
                 height = grouseticks$HEIGHT)
gt_l2 <- unique(data.frame(brood = as.integer(grouseticks$BROOD), year96 = as.integer(grouseticks$YEAR == "96"),
                           year97 = as.integer(grouseticks$YEAR == "97")))
gt_l2 <- gt_l2[order(gt_l2$brood), ]
stopifnot(nrow(gt_l2) == length(unique(gt$brood)))
gt <- gt[order(gt$brood), ]
write.csv(gt, file.path(out, "grouseticks_l1.csv"), row.names = FALSE)
write.csv(gt_l2, file.path(out, "grouseticks_l2.csv"), row.names = FALSE)
gt_d <- merge(gt, gt_l2, by = "brood")
gt_d$cheight <- gt_d$height - mean(gt_d$height)  # grand-mean centred, as hlmcli's grand centring

data(Owls, package = "glmmTMB")
ow <- data.frame(nest = as.integer(Owls$Nest), negotiation = Owls$SiblingNegotiation,
                 food = as.integer(Owls$FoodTreatment == "Satiated"), broodsize = Owls$BroodSize)
ow <- ow[order(ow$nest), ]
ow_l2 <- data.frame(nest = sort(unique(ow$nest)))
write.csv(ow, file.path(out, "owls_l1.csv"), row.names = FALSE)
write.csv(ow_l2, file.path(out, "owls_l2.csv"), row.names = FALSE)

one <- function(formula, data, fixed_names) {
  m <- glmmTMB(formula, data = data, family = nbinom2, control = ctl)
  sdr <- summary(m$sdr, "fixed")
  cf <- fixef(m)$cond
  g <- list(gamma = unname(cf), gamma_names = fixed_names,
            gamma_se = unname(sqrt(diag(vcov(m)$cond))),
            tau = unname(as.numeric(VarCorr(m)$cond[[1]])),
            theta = unname(sigma(m)),
            log_theta_se = unname(sdr[rownames(sdr) %in% c("betad", "betadisp"), "Std. Error"]),
            deviance = -2 * as.numeric(logLik(m)),
            max_gradient = max(abs(m$sdr$gradient.fixed)),
            pdHess = m$sdr$pdHess)
  gl <- suppressWarnings(glmer.nb(formula, data = data,
              control = glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5),
                                     tolPwrss = 1e-10)))
  g$glmer_nb <- list(gamma = unname(fixef(gl)), theta = unname(getME(gl, "glmer.nb.theta")),
                     tau = unname(as.numeric(VarCorr(gl)[[1]])), deviance = -2 * as.numeric(logLik(gl)))
  g
}
ref <- list(
  glmmTMB = as.character(packageVersion("glmmTMB")),
  salamanders = one(count ~ mined + (1 | site), sal_d, c("intercept", "mined")),
  grouseticks = one(ticks ~ year96 + year97 + cheight + (1 | brood), gt_d,
                    c("intercept", "year96", "year97", "height")),
  owls = one(negotiation ~ food + offset(log(broodsize)) + (1 | nest), ow, c("intercept", "food"))
)
writeLines(toJSON(ref, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out, "glmmtmb_reference.json"))
