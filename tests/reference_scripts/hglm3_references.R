# References for tests/test_hglm3.py: three-level HGLMs on public data sets, fitted by
#   * lme4::glmer (Laplace, nAGQ = 1), tightened: bobyqa with rhoend 1e-10, tolPwrss 1e-10;
#   * glmmTMB (Laplace), a second implementation of the same likelihood, as a cross-check;
#   * PQL with σ² fixed at 1 (HLM3's default) and full (ML) estimation: the Breslow-Clayton loop around
#     nlme::lme with varFixed working weights and lmeControl(sigma = 1), run to max|Δη| < 1e-10 (its change at the end is recorded)
#     (MASS::glmmPQL cannot fix σ² and stops loosely; its loop is the same otherwise).
# Data: mlmRev's guImmun (children in mothers in communities, Bernoulli), mlmRev's Mmmec (counties in
# regions in nations, Poisson with exposure `expected`, a random uvb slope across nations) and lme4's
# grouseticks (chicks in broods in locations, Poisson). The level files are written to tests/data/hglm3/.
# Run from the repository root:  Rscript tests/reference_scripts/hglm3_references.R [guimmun|mmmec|grouseticks ...]
# (all three by default); each writes tests/data/hglm3/<name>.json. With HGLM3_PQL_ONLY=1 in the environment
# only the PQL references are computed (glmer and glmmTMB are left out of the file).
suppressMessages({library(lme4); library(mlmRev); library(nlme); library(glmmTMB); library(jsonlite)})
out_dir <- "tests/data/hglm3"
ctl <- glmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-10, maxfun = 1e5), tolPwrss = 1e-10,
                    check.conv.grad = .makeCC("warning", tol = 1e-6))
lctl <- lmeControl(sigma = 1, maxIter = 500, msMaxIter = 500, tolerance = 1e-12, msTol = 1e-14, niterEM = 100,
                   returnObject = TRUE)
yn <- function(f) as.numeric(f == "Y")

pql_loop <- function(form, random, d, family, offset = 0, trials = 1) {
  y <- d$.y
  eta <- if (family == "binomial") qlogis((y + 0.5) / (trials + 1)) else log(y + 0.5)
  for (i in 1:200) {
    mu <- if (family == "binomial") trials * plogis(eta) else exp(eta)
    w <- if (family == "binomial") trials * plogis(eta) * (1 - plogis(eta)) else mu
    d$.z <- eta - offset + (y - mu) / w
    d$.invwt <- 1 / w
    g <- lme(form, random = random, data = d, weights = varFixed(~ .invwt), method = "ML", control = lctl)
    new <- fitted(g) + offset
    change <- max(abs(new - eta))
    eta <- new
    if (change < 1e-10) break
  }
  vc <- lapply(names(g$modelStruct$reStruct), function(n) as.matrix(pdMatrix(g$modelStruct$reStruct[[n]])))
  names(vc) <- names(g$modelStruct$reStruct)
  list(iterations = i, last_change = change, gamma = unname(fixef(g)), se = unname(sqrt(diag(vcov(g)))),
       tau = lapply(vc, unname))
}

glmer_out <- function(m) {
  vc <- lapply(VarCorr(m), function(v) unname(as.matrix(v)))
  list(deviance = -2 * as.numeric(logLik(m)), gamma = unname(fixef(m)), se = unname(sqrt(diag(as.matrix(vcov(m))))),
       tau = vc, theta = unname(getME(m, "theta")))
}
tmb_out <- function(m) {
  vc <- lapply(VarCorr(m)$cond, function(v) unname(as.matrix(v)))
  list(deviance = -2 * as.numeric(logLik(m)), gamma = unname(fixef(m)$cond), se = unname(sqrt(diag(vcov(m)$cond))),
       tau = vc)
}
pql_only <- Sys.getenv("HGLM3_PQL_ONLY") == "1"
if (pql_only) {  # the Laplace fits are skipped
  glmer <- function(...) NULL; glmmTMB <- function(...) NULL; glmer_out <- function(m) NULL; tmb_out <- function(m) NULL
}
which <- commandArgs(trailingOnly = TRUE)
if (length(which) == 0) which <- c("guimmun", "mmmec", "grouseticks")
save <- function(name, value) {
  doc <- c(header, value)
  writeLines(toJSON(doc, digits = NA, auto_unbox = TRUE, pretty = TRUE), file.path(out_dir, paste0(name, ".json")))
}
header <- list(source = paste0(if (pql_only) "" else "lme4::glmer (Laplace, bobyqa rhoend 1e-10, tolPwrss 1e-10), glmmTMB (Laplace) and ",
                               "a PQL loop around nlme::lme (sigma fixed at 1, ML), R",
                               if (pql_only) " (HGLM3_PQL_ONLY=1: glmer and glmmTMB not run)" else ""),
               R = R.version.string, lme4_version = as.character(packageVersion("lme4")),
               glmmTMB_version = as.character(packageVersion("glmmTMB")), nlme_version = as.character(packageVersion("nlme")))

# ---- guImmun: Bernoulli, random intercepts for mothers and communities
if ("guimmun" %in% which) {
d <- guImmun
g1 <- data.frame(KID = d$kid, MOM = d$mom, IMMUN = yn(d$immun), KID2P = yn(d$kid2p), MOM25P = yn(d$mom25p),
                 ORD23 = as.numeric(d$ord == "23"), ORD46 = as.numeric(d$ord == "46"), ORD7P = as.numeric(d$ord == "7p"))
m2 <- d[!duplicated(d$mom), ]
g2 <- data.frame(MOM = m2$mom, COMM = m2$comm, ETHNN = as.numeric(m2$ethn == "N"), ETHNS = as.numeric(m2$ethn == "S"),
                 MOMEDP = as.numeric(m2$momEd == "P"), MOMEDS = as.numeric(m2$momEd == "S"),
                 HUSEDP = as.numeric(m2$husEd == "P"), HUSEDS = as.numeric(m2$husEd == "S"),
                 HUSEDU = as.numeric(m2$husEd == "U"), MOMWORK = yn(m2$momWork))
c3 <- d[!duplicated(d$comm), ]
g3 <- data.frame(COMM = c3$comm, RURAL = yn(c3$rural), PCIND81 = c3$pcInd81)
write.csv(g1, file.path(out_dir, "guimmun_l1.csv"), row.names = FALSE)
write.csv(g2, file.path(out_dir, "guimmun_l2.csv"), row.names = FALSE)
write.csv(g3, file.path(out_dir, "guimmun_l3.csv"), row.names = FALSE)
gd <- merge(merge(g1, g2, by = "MOM"), g3, by = "COMM")
fx <- IMMUN ~ KID2P + MOM25P + ORD23 + ORD46 + ORD7P + ETHNN + ETHNS + MOMEDP + MOMEDS + HUSEDP + HUSEDS + HUSEDU +
  MOMWORK + RURAL + PCIND81
gm <- glmer(update(fx, . ~ . + (1 | COMM / MOM)), data = gd, family = binomial, control = ctl)
tm <- glmmTMB(update(fx, . ~ . + (1 | COMM / MOM)), data = gd, family = binomial)
gd$.y <- gd$IMMUN
pq <- pql_loop(update(fx, .z ~ .), ~ 1 | COMM / MOM, gd, "binomial")
save("guimmun", list(fixed = c("(Intercept)", attr(terms(fx), "term.labels")), glmer = glmer_out(gm),
                     glmmTMB = tmb_out(tm), pql_ml = pq))
}

# ---- Mmmec: Poisson with exposure, random uvb slope across nations, random intercept across regions
if ("mmmec" %in% which) {
d <- Mmmec
d$REGION <- paste(d$nation, d$region, sep = ":")
m1 <- data.frame(COUNTY = d$county, REGION = d$REGION, DEATHS = d$deaths, EXPECTED = d$expected, UVB = d$uvb)
r2 <- d[!duplicated(d$REGION), ]
m2 <- data.frame(REGION = r2$REGION, NATION = r2$nation)
n3 <- data.frame(NATION = unique(d$nation))
write.csv(m1, file.path(out_dir, "mmmec_l1.csv"), row.names = FALSE)
write.csv(m2, file.path(out_dir, "mmmec_l2.csv"), row.names = FALSE)
write.csv(n3, file.path(out_dir, "mmmec_l3.csv"), row.names = FALSE)
md <- merge(m1, m2, by = "REGION")
md <- md[order(md$NATION, md$REGION, md$COUNTY), ]
mm <- glmer(DEATHS ~ UVB + (1 + UVB | NATION) + (1 | REGION) + offset(log(EXPECTED)), data = md, family = poisson,
            control = ctl)
mt <- glmmTMB(DEATHS ~ UVB + (1 + UVB | NATION) + (1 | REGION) + offset(log(EXPECTED)), data = md, family = poisson)
md$.y <- md$DEATHS
mp <- pql_loop(.z ~ UVB, list(NATION = ~ UVB, REGION = ~ 1), md, "poisson", offset = log(md$EXPECTED))
mi <- glmer(DEATHS ~ UVB + (1 | NATION / REGION) + offset(log(EXPECTED)), data = md, family = poisson, control = ctl)
save("mmmec", list(fixed = c("(Intercept)", "UVB"), glmer = glmer_out(mm), glmmTMB = tmb_out(mt), pql_ml = mp,
                   glmer_intercepts = glmer_out(mi)))
}

# ---- grouseticks: Poisson, random intercepts for broods and locations
if ("grouseticks" %in% which) {
d <- grouseticks
t1 <- data.frame(INDEX = d$INDEX, BROOD = d$BROOD, TICKS = d$TICKS)
b2 <- d[!duplicated(d$BROOD), ]
t2 <- data.frame(BROOD = b2$BROOD, LOCATION = b2$LOCATION, YEAR96 = as.numeric(b2$YEAR == "96"),
                 YEAR97 = as.numeric(b2$YEAR == "97"))
l3 <- d[!duplicated(d$LOCATION), ]
t3 <- data.frame(LOCATION = l3$LOCATION, CHEIGHT = l3$cHEIGHT)
stopifnot(all(tapply(as.character(d$LOCATION), d$BROOD, function(x) length(unique(x)) == 1)),
          all(tapply(d$cHEIGHT, d$LOCATION, function(x) length(unique(x)) == 1)))
write.csv(t1, file.path(out_dir, "grouse_l1.csv"), row.names = FALSE)
write.csv(t2, file.path(out_dir, "grouse_l2.csv"), row.names = FALSE)
write.csv(t3, file.path(out_dir, "grouse_l3.csv"), row.names = FALSE)
td <- merge(merge(t1, t2, by = "BROOD"), t3, by = "LOCATION")
gt <- glmer(TICKS ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION / BROOD), data = td, family = poisson, control = ctl)
tt <- glmmTMB(TICKS ~ YEAR96 + YEAR97 + CHEIGHT + (1 | LOCATION / BROOD), data = td, family = poisson)
td$.y <- td$TICKS
tp <- pql_loop(.z ~ YEAR96 + YEAR97 + CHEIGHT, ~ 1 | LOCATION / BROOD, td, "poisson")
save("grouseticks", list(fixed = c("(Intercept)", "YEAR96", "YEAR97", "CHEIGHT"), glmer = glmer_out(gt),
                         glmmTMB = tmb_out(tt), pql_ml = tp))
}
