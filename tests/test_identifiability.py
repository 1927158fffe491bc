"""Variance structures the data cannot identify: refused before fitting (hlmcli/analysis/identifiability.py),
and a flat direction of the deviance found after fitting (certificate.face_conditions), never
certified as one point of a ridge."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import DATA, SAMPLE, hlmcli
from hlmcli.engine.certificate import face_conditions
from hlmcli.engine.nested import Beta, NestedData, NestedLayout, Pi
from hlmcli.engine.nested_fit import fit_nested

T = DATA / "three_level"
SINGLE = [T / "single_l1.csv", T / "single_l2.csv", T / "single_l3.csv", "--id2", "SAMPLE", "--id3", "TOP"]


def test_single_level2_unit_per_level3_unit_is_refused():
    """Before: the two variances were split 50/50 (4.816 each) and certified."""
    proc = hlmcli("fit", *SINGLE, "-1", "STRENGTH = p0 + e", "-2", "p0 = b00 + r0", "-3", "b00 = g000 + u00")
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "every level-3 unit holds a single level-2 unit" in line


@pytest.mark.parametrize("reml", [False, True])
def test_the_certificate_reports_the_flat_direction(reml):
    """The same model fitted through the API (no pre-check): the deviance is flat along
    τ_π − τ_β, and the certificate says so instead of certifying one point of the ridge."""
    d = pd.read_csv(T / "single_l1.csv")
    data = NestedData(y=d["STRENGTH"].to_numpy(float), A=np.zeros((len(d), 0)), X2=np.zeros((30, 0)),
                      W3=np.zeros((30, 0)), unit2=d["SAMPLE"].to_numpy(np.int64) - 1, unit3=np.arange(30),
                      layout=NestedLayout((Pi(None, (Beta(None, (None,), True),), True),)))
    fit = fit_nested(data, reml=reml)
    assert not fit.converged
    why = " ".join(fit.certificate.failed)
    assert "flat along a direction" in why and "tau_pi[0,0] +0.71, tau_beta[0,0] -0.71" in why


def test_face_conditions_flat_and_not_flat():
    failed = []
    face_conditions(np.array([[2.0, 2.0], [2.0, 2.0]]), np.zeros(2), 1e-10, failed, lambda e: "named")
    assert len(failed) == 1 and "flat along a direction of the variance components (named)" in failed[0]
    failed = []
    face_conditions(np.array([[2.0, 1.0], [1.0, 2.0]]), np.zeros(2), 1e-10, failed)
    assert failed == []
    # a direction along which doubling the variances moves the deviance by less than the tolerance
    failed = []
    face_conditions(np.diag([5.0, 1e-11]), np.zeros(2), 1e-10, failed)
    assert failed and "flat" in failed[0]


def test_fewer_units_than_random_effects_is_refused(tmp_path):
    l1 = ["ID,Y,X,Z"] + [f"{j},{(j * 7 + i * 3) % 11 + 0.1 * i},{i},{(i * i) % 5}" for j in (1, 2) for i in range(8)]
    (tmp_path / "l1.csv").write_text("\n".join(l1) + "\n")
    (tmp_path / "l2.csv").write_text("ID\n1\n2\n")
    proc = hlmcli("fit", tmp_path / "l1.csv", tmp_path / "l2.csv", "--id", "ID", "-1", "Y = b0 + b1*X + b2*Z + r",
                  "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1", "-2", "b2 = g20 + u2")
    assert proc.returncode == 1
    assert "2 level-2 units for 3 random effects" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_random_slope_on_a_unit_constant_predictor_is_refused(tmp_path):
    # a level-1 variable that is constant within every unit (its unit mean) with a random slope
    l1 = pd.read_csv(SAMPLE / "hsb" / "hsb1.csv")
    l1["MSES"] = l1.groupby("ID")["SES"].transform("mean")
    l1.to_csv(tmp_path / "l1.csv", index=False)
    proc = hlmcli("fit", tmp_path / "l1.csv", SAMPLE / "hsb" / "hsb2.csv", "--id", "ID",
                  "-1", "MATHACH = b0 + b1*MSES + r", "-2", "b0 = g00 + u0", "-2", "b1 = g10 + u1")
    assert proc.returncode == 1 and "constant within every unit" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_three_level_random_slope_on_a_child_constant_predictor_is_refused(tmp_path):
    """EG with FEMALE copied to the records: constant within every child (level-2 unit), so its
    level-2 random slope is one column with the random intercept there."""
    eg = SAMPLE / "eg"
    l1 = pd.read_csv(eg / "eg_l1.csv").merge(pd.read_csv(eg / "eg_l2.csv")[["CHILDID", "FEMALE"]], on="CHILDID")
    l1.rename(columns={"FEMALE": "FEM1"}).to_csv(tmp_path / "l1.csv", index=False)
    proc = hlmcli("fit", tmp_path / "l1.csv", eg / "eg_l2.csv", eg / "eg_l3.csv", "--id2", "CHILDID", "--id3",
                  "SCHOOLID", "-1", "MATH = p0 + p1*FEM1 + e", "-2", "p0 = b00 + r0", "-2", "p1 = b10 + r1",
                  "-3", "b00 = g000 + u00", "-3", "b10 = g100")
    assert proc.returncode == 1
    assert "INTRCPT1 and FEM1 are both constant within every level-2 unit" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
