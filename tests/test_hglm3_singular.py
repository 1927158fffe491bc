"""A three-level Laplace fit whose level-3 τ is singular at the optimum (a random slope at levels 2 and 3,
level-3 correlation +1). The certificate's gradient at a singular block came from differences along
E_ac, which leave the PSD cone: the deviance there is infinite, Γ had infinite entries, and the fit ended
in "the Laplace fit broke down (Eigenvalues did not converge)" with numpy warnings on stderr. Reference:
glmer with tight controls and glmmTMB (tests/reference_scripts/hglm3_singular_glmer.R)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, hlmcli

REF = json.loads((DATA / "hglm3_singular" / "glmer.json").read_text())
FILES = [DATA / "hglm3_weights" / f"bern_l{k}.csv" for k in (1, 2, 3)]
MODEL = ["-1", "Y = p0 + p1*X + e", "-2", "p0 = b00 + b01*W + r0", "-2", "p1 = b10 + r1",
         "-3", "b00 = g000 + g001*Z + u00", "-3", "b01 = g010", "-3", "b10 = g100 + u10"]


def test_singular_level3_tau_is_certified_at_glmers_optimum():
    proc = hlmcli("fit", *FILES, "--id2", "CLASS", "--id3", "SCHOOL", "--family", "bernoulli",
                  "--estimation", "laplace", *MODEL, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    # one warning line, the boundary; no numpy warnings
    assert proc.stderr.strip().splitlines() == [
        "hlmcli: warning: τβ is singular at the optimum (rank 1 of 2): a boundary estimate"], proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["certificate"]["certified"] is True
    glmer = REF["glmer_fit"]
    best = min(glmer["deviance"], REF["glmmtmb_fit"]["deviance"])
    assert doc["deviance"] <= best + 1e-8 * best
    assert doc["deviance"] == pytest.approx(glmer["deviance"], rel=1e-9)
    gamma = {f["gamma"]: f["estimate"] for f in doc["fixed_effects"]}
    # glmer's order: (Intercept), X, W, Z
    ours = [gamma[k] for k in ("γ000", "γ100", "γ010", "γ001")] if "γ000" in gamma else \
        [gamma[k] for k in ("g000", "g100", "g010", "g001")]
    assert np.allclose(ours, glmer["gamma"], rtol=0, atol=1e-4 * max(1.0, np.abs(glmer["gamma"]).max()))
    tau_beta = np.array(doc["tau_beta"]["matrix"] if isinstance(doc["tau_beta"], dict) else doc["tau_beta"])
    assert np.allclose(tau_beta, glmer["tau_level3"], rtol=1e-3, atol=1e-5)
    assert np.linalg.matrix_rank(tau_beta, tol=1e-6 * np.abs(tau_beta).max()) == 1
