"""InstEval (lme4's lecture evaluations: 73,421 ratings of 1,128 lecturers by 2,972 students), the model
y ~ service + (1 | s) + (1 | d) by REML, fitted by hlmcli's cross-classified engine and by lmer side by
side, each in its own process, with CPU time (user + sys) and wall time.

    python benchmarks/bench_crossed.py            # needs R with lme4 (writes benchmarks/data/insteval.csv)

The data are written by R from lme4's copy (service as 0/1); nothing is committed. lmer runs twice: its
defaults, and bobyqa with rhoend 1e-12 (the tightened fit the deviance is compared with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "insteval.csv"
FORMULA = "y ~ service + (1 | s) + (1 | d)"

R_DATA = """suppressPackageStartupMessages(library(lme4))
d <- InstEval[, c("y", "service", "s", "d")]
d$service <- as.integer(d$service == "1"); d$s <- as.character(d$s); d$d <- as.character(d$d)
write.csv(d, commandArgs(TRUE)[1], row.names = FALSE)
"""

R_FIT = """suppressPackageStartupMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1], colClasses = c("numeric", "integer", "character", "character"))
out <- list()
for (tight in c(FALSE, TRUE)) {
  ctrl <- if (tight) lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e6)) else lmerControl()
  w0 <- proc.time()
  m <- lmer(y ~ service + (1 | s) + (1 | d), d, REML = TRUE, control = ctrl)
  w <- proc.time() - w0
  out[[if (tight) "tight" else "default"]] <- list(cpu = w[["user.self"]] + w[["sys.self"]], wall = w[["elapsed"]],
    deviance = REMLcrit(m), gamma = unname(fixef(m)), evaluations = m@optinfo$feval)
}
cat(jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA))
"""

PY_FIT = """import json, os, sys, time
t0, c0 = time.perf_counter(), os.times()
import pandas as pd, hlmcli
d = pd.read_csv(sys.argv[1], dtype={"s": str, "d": str})
m = hlmcli.fit_crossed(d, sys.argv[2], "REML")
c1 = os.times()
print(json.dumps({"cpu": (c1.user - c0.user) + (c1.system - c0.system), "wall": time.perf_counter() - t0,
                  "deviance": m.deviance, "gamma": list(map(float, m.gamma.values())), "certified": m.certified,
                  "evaluations": m.results.fit.evaluations}))
"""


def main() -> None:
    if not DATA.exists():
        DATA.parent.mkdir(exist_ok=True)
        subprocess.run(["Rscript", "-e", R_DATA, str(DATA)], check=True)
    ours = json.loads(subprocess.run([sys.executable, "-c", PY_FIT, str(DATA), FORMULA], check=True,
                                     capture_output=True, text=True).stdout)
    lmer = json.loads(subprocess.run(["Rscript", "-e", R_FIT, str(DATA)], check=True, capture_output=True,
                                     text=True).stdout)
    print(json.dumps({"hlmcli": ours, "lmer": lmer, "load": os.getloadavg(),
                      "speed-up (CPU, lmer defaults)": lmer["default"]["cpu"] / ours["cpu"],
                      "deviance difference (hlmcli - lmer tight)": ours["deviance"] - lmer["tight"]["deviance"]},
                     indent=1))


if __name__ == "__main__":
    main()
