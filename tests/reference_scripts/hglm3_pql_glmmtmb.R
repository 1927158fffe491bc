# Three-level PQL references from a second tool: the Breslow-Clayton loop around glmmTMB, the working
# model z ~ N(Xγ + Zb, 1/W) with the level-1 variance fixed through dispformula = ~ 0 + offset(log(1/W))
# (gaussian dispersion is the residual variance), ML, and REML for grouseticks. nlme::lme with
# lmeControl(sigma = 1) stalls at a near-singular local optimum on Mmmec (correlation -1, 5.3 higher in
# -2 log L of the working model than the optimum) and its REML with sigma fixed does not maximise
# -1/2[log|V| + log|X'V^-1X| + r'V^-1r] (glmmTMB's REML does), so this loop gives the references.
# Run from the repository root: Rscript tests/reference_scripts/hglm3_pql_glmmtmb.R (HGLM3_OUT: another output
# file). HGLM3_GUIMMUN=1 adds guImmun (Bernoulli, 2159/1595/161): about 8 minutes, and its loop had not settled after
# 300 iterations (max|d eta| 8e-6), so it is not committed as a reference. glmmTMB's τ agree with nlme's ML loop
# on grouseticks to ~4e-6 relative only (its nlminb stops at relative convergence on a flat criterion).
suppressMessages({library(glmmTMB); library(jsonlite)})
H <- "tests/data/hglm3"
rd <- function(f) read.csv(file.path(H, f), colClasses = "character")
num <- function(d, skip) { for (n in setdiff(names(d), skip)) d[[n]] <- as.numeric(d[[n]]); d }
ctl <- glmmTMBControl(optCtrl = list(iter.max = 1e4, eval.max = 1e4, rel.tol = 1e-10))

pql_tmb <- function(form, d, family, reml, offset = 0) {
  y <- d$.y
  eta <- if (family == "binomial") qlogis((y + 0.5) / 2) else log(y + 0.5)
  for (i in 1:300) {
    mu <- if (family == "binomial") plogis(eta) else exp(eta)
    w <- if (family == "binomial") mu * (1 - mu) else mu
    d$.z <- eta - offset + (y - mu) / w
    d$.lv <- log(1 / w)
    f <- glmmTMB(form, data = d, family = gaussian, dispformula = ~ 0 + offset(.lv), REML = reml, control = ctl)
    new <- predict(f, type = "link") + offset  # fixed plus conditional modes, no offset in .z's model
    change <- max(abs(new - eta))
    eta <- new
    if (change < 1e-9) break
  }
  vc <- lapply(VarCorr(f)$cond, function(v) unname(as.matrix(v)))
  list(iterations = i, last_change = change, gamma = unname(fixef(f)$cond),
       se = unname(sqrt(diag(vcov(f)$cond))), tau = vc, converged_inner = f$fit$convergence == 0,
       message = f$fit$message)
}

out <- list(source = "a PQL loop around glmmTMB (gaussian working model, residual variance fixed at 1/W by dispformula offset), R",
            R = R.version.string, glmmTMB = as.character(packageVersion("glmmTMB")))

g1 <- num(rd("grouse_l1.csv"), c("BROOD")); g2 <- num(rd("grouse_l2.csv"), c("BROOD", "LOCATION"))
g3 <- num(rd("grouse_l3.csv"), "LOCATION")
gd <- merge(merge(g1, g2, by = "BROOD"), g3, by = "LOCATION"); gd <- gd[order(gd$INDEX), ]
gd$.y <- gd$TICKS
gf <- .z ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION) + (1 | LOCATION:BROOD)
out$grouseticks <- list(fixed = c("(Intercept)", "YEAR96", "YEAR97", "CHEIGHT"),
                        ml = pql_tmb(gf, gd, "poisson", FALSE), reml = pql_tmb(gf, gd, "poisson", TRUE))

m1 <- num(rd("mmmec_l1.csv"), c("REGION")); m2 <- rd("mmmec_l2.csv")
md <- merge(m1, m2, by = "REGION"); md <- md[order(md$COUNTY), ]
md$.y <- md$DEATHS
out$mmmec <- list(fixed = c("(Intercept)", "UVB"),
                  ml = pql_tmb(.z ~ UVB + (1 + UVB | NATION) + (1 | REGION), md, "poisson", FALSE, log(md$EXPECTED)))

if (Sys.getenv("HGLM3_GUIMMUN") == "1") {
  u1 <- num(rd("guimmun_l1.csv"), c("MOM")); u2 <- num(rd("guimmun_l2.csv"), c("MOM", "COMM"))
  u3 <- num(rd("guimmun_l3.csv"), "COMM")
  ud <- merge(merge(u1, u2, by = "MOM"), u3, by = "COMM"); ud <- ud[order(ud$KID), ]
  ud$.y <- ud$IMMUN
  uf <- .z ~ KID2P + MOM25P + ORD23 + ORD46 + ORD7P + ETHNN + ETHNS + MOMEDP + MOMEDS + HUSEDP + HUSEDS + HUSEDU +
    MOMWORK + RURAL + PCIND81 + (1 | COMM) + (1 | COMM:MOM)
  out$guimmun <- list(fixed = c("(Intercept)", attr(terms(lme4::nobars(uf)), "term.labels")),
                      ml = pql_tmb(uf, ud, "binomial", FALSE))
}
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), Sys.getenv("HGLM3_OUT", file.path(H, "pql_glmmtmb.json")))
