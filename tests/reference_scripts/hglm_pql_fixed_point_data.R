# Data for tests/test_pql_fixed_point.py: five public HGLM data sets written as level-1/level-2 CSV.
# Run from tests/data/hglm/pql:  Rscript ../../../reference_scripts/hglm_pql_fixed_point_data.R
suppressMessages({library(MASS); library(geepack); library(glmmTMB); library(mlmRev)})
w <- function(d, f) write.csv(d, f, row.names = FALSE, quote = FALSE)
# MASS bacteria: presence of H. influenzae (y), weeks 0-11, three treatments, 50 children
b <- MASS::bacteria
w(data.frame(ID = as.integer(b$ID), Y = as.integer(b$y == "y"), WEEK2 = as.integer(b$week > 2)), "bacteria_l1.csv")
b2 <- unique(data.frame(ID = as.integer(b$ID), DRUG = as.integer(b$trt == "drug"), DRUGP = as.integer(b$trt == "drug+")))
w(b2[order(b2$ID), ], "bacteria_l2.csv")
# geepack ohio: wheeze at ages 7-10 (age - 9), mother smoking, 537 children
data(ohio, package = "geepack")
w(data.frame(ID = ohio$id + 1L, RESP = ohio$resp, AGE = ohio$age), "ohio_l1.csv")
o2 <- unique(data.frame(ID = ohio$id + 1L, SMOKE = ohio$smoke))
w(o2[order(o2$ID), ], "ohio_l2.csv")
# glmmTMB Owls: sibling negotiation counts, exposure = brood size (log offset), 27 nests
data(Owls, package = "glmmTMB")
w(data.frame(NEST = as.integer(Owls$Nest), NEG = Owls$SiblingNegotiation,
             SATIATED = as.integer(Owls$FoodTreatment == "Satiated"), MALE = as.integer(Owls$SexParent == "Male"),
             ARRIVAL = Owls$ArrivalTime, BROOD = Owls$BroodSize), "owls_l1.csv")
w(data.frame(NEST = seq_len(nlevels(Owls$Nest))), "owls_l2.csv")
# mlmRev guPrenat: modern prenatal care, 161 communities
g <- mlmRev::guPrenat
w(data.frame(CLUSTER = as.integer(g$cluster), PRENAT = as.integer(g$prenat == "Modern"),
             CHILD3 = as.integer(g$childAge == "3+"), MOTHER25 = as.integer(g$motherAge == "25+")), "guprenat_l1.csv")
g2 <- unique(data.frame(CLUSTER = as.integer(g$cluster), PCIND81 = g$pcInd81))
w(g2[order(g2$CLUSTER), ], "guprenat_l2.csv")
