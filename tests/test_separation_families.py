"""Separation and infinite estimates in the ordinal, negative binomial and three-level fits: each case is
refused before fitting in one line (file, what separates, what to do; exit 1), or fitted honestly. Before,
the ordinal and NB fits printed "Iterations stopped at the optimum" at coefficients running to infinity
(γ10 = −1125 with SE 8e7; γ10 = −25.5 with SE 45104), and the three-level fits stopped with a message that
named no predictor. Tiny data in tests/data/separation_families/; clmm's numbers for the finite ordinal
case from tests/reference_scripts/separation_families_clmm.R."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, hlmcli

S = DATA / "separation_families"
CLMM = json.loads((S / "clmm_reference.json").read_text())


def ordinal(name, *eqs):
    return hlmcli("fit", S / f"{name}.csv", S / "units15.csv", "--id", "ID", *eqs, "--family", "ordinal",
                  "--estimation", "laplace")


def one_line_error(proc, code=1):
    assert proc.returncode == code, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    return line


# ------------------------------------------------------------------ ordinal

def test_ordinal_categories_ordered_by_a_predictor_are_refused():
    """Y = 1, 2, 3 as X < −0.5, < 0.5, above: complete separation (clmm: β = 631, singular Hessian)."""
    line = one_line_error(ordinal("ord_complete", "-1", "Y = b0 + b1*X", "-2", "b0 = g00 + u0", "-2", "b1 = g10"))
    assert line.startswith("hlmcli: error: ord_complete.csv: ")
    assert "γ10" in line and "separate the ordered categories" in line and "no finite estimate" in line
    assert CLMM["ord_complete"]["beta"] > 100  # clmm runs away on the same data


def test_ordinal_top_category_only_in_a_group_is_refused():
    """Every record with G = 1 is in the top category (quasi-complete: G = 0 has all three); clmm: β_G = 23.5."""
    line = one_line_error(ordinal("ord_quasi", "-1", "Y = b0 + b1*X + b2*G", "-2", "b0 = g00 + u0", "-2", "b1 = g10",
                                  "-2", "b2 = g20"))
    assert "ord_quasi.csv: the fixed effect γ20 separates the ordered categories" in line
    assert "remove a predictor or combine categories" in line


def test_find_separation_ordinal_by_hand():
    from hlmcli.analysis.ordinal_run import find_separation

    x = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    X = np.column_stack([np.ones(6), x])
    # categories rising with x: complete
    d, moved = find_separation(X, np.array([1, 1, 2, 2, 3, 3]), 3)
    assert moved.size == 6
    # overlapping categories: none
    assert find_separation(X, np.array([1, 2, 1, 3, 2, 3]), 3) is None
    # a binary G never in category 1 but in both 2 and 3: finite under proportional odds (the one slope
    # cannot push G = 1 out of category 1 without pushing it out of 2), so not separated
    g = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    Xg = np.column_stack([np.ones(8), g])
    assert find_separation(Xg, np.array([1, 2, 3, 2, 3, 2, 1, 3]), 3) is None
    # G = 1 only in the top category, G = 0 in all three: quasi-complete, the records with G = 1 moved
    d, moved = find_separation(Xg, np.array([1, 2, 3, 3, 3, 3, 1, 3]), 3)
    assert set(moved) == {3, 4, 5, 7}


def test_ordinal_category_reached_in_one_unit_is_fitted_and_matches_clmm():
    """Category 3 occurs only in unit 1 (all its records): no fixed-effect direction separates (the
    other units' category-2 records pin the threshold), the optimum is finite, τ large; our Laplace fit
    matches clmm's (Laplace): deviance no higher and within 1e-9 relative, estimates to 1e-5 (clmm stopped with
    max |gradient| 9e-6)."""
    proc = hlmcli("fit", S / "ord_unit.csv", S / "units15.csv", "--id", "ID", "-1", "Y = b0 + b1*X", "-2",
                  "b0 = g00 + u0", "-2", "b1 = g10", "--family", "ordinal", "--estimation", "laplace", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    r = CLMM["ord_unit"]
    assert out["certificate"]["certified"]
    assert out["deviance"] <= r["deviance"] + 1e-9 and out["deviance"] == pytest.approx(r["deviance"], rel=1e-9)
    # clmm's θ_1 = γ00, θ_2 = γ00 + δ(2), β = −γ10
    g00, g10 = (f["estimate"] for f in out["fixed_effects"])
    assert [g00, g00 + out["thresholds"][0]["estimate"]] == pytest.approx(np.ravel(r["theta"]), rel=1e-5)
    assert -g10 == pytest.approx(r["beta"], rel=1e-5)
    assert out["tau"][0][0] == pytest.approx(r["tau"], rel=1e-5)


# ------------------------------------------------------------------ negative binomial

NB = ["-1", "Y = b0 + b1*G + b2*X", "-2", "b0 = g00 + u0", "-2", "b1 = g10", "-2", "b2 = g20",
      "--family", "negbinomial", "--estimation", "laplace"]


def test_negbin_all_zero_counts_in_a_group_are_refused():
    """Every record with G = 1 has a count of 0: γ10 runs to −∞ (before: "at the optimum", γ10 = −25.5)."""
    line = one_line_error(hlmcli("fit", S / "nb_zero.csv", S / "units15.csv", "--id", "ID", *NB))
    assert line.startswith("hlmcli: error: nb_zero.csv, column G: the fixed effect γ10")
    assert "has a count of 0" in line and "no finite estimate" in line
    assert "--separation fit" not in line  # not offered for this family


def test_negbin_separation_fit_is_refused_not_ignored():
    line = one_line_error(hlmcli("fit", S / "nb_zero.csv", S / "units15.csv", "--id", "ID", *NB, "--separation", "fit"), 2)
    assert "--separation fit: not available for --family negbinomial" in line


def test_negbin_theta_overflowing_says_fit_poisson():
    """40 Binomial(3, 0.5) counts (under-dispersed), intercepts only: the search asks for log θ beyond 709.
    Before: "the model cannot be fitted to these data (math range error) ... check extreme values" (exit 1,
    the wrong reason). Now the Poisson limit, in one line."""
    line = one_line_error(hlmcli("fit", S / "nb_tiny.csv", S / "units8.csv", "--id", "ID", "-1", "Y = b0", "-2",
                                 "b0 = g00 + u0", "--family", "negbinomial", "--estimation", "laplace"))
    assert "the dispersion θ runs to infinity" in line and "fit --family poisson" in line


@pytest.mark.slow
def test_negbin_without_overdispersion_says_fit_poisson():
    """Binomial(4, 0.4) counts (under-dispersed): the NB likelihood rises towards θ = ∞. Before: exit 3,
    "NOT certified" with θ = 9e10 and a deviance 0.26 below the Poisson fit's own optimum (the NB terms
    cancel at such θ). Now one line saying to fit Poisson."""
    line = one_line_error(hlmcli("fit", S / "nb_under.csv", S / "units30.csv", "--id", "ID", "-1", "Y = b0 + b1*X",
                                 "-2", "b0 = g00 + u0", "-2", "b1 = g10", "--family", "negbinomial",
                                 "--estimation", "laplace"))
    assert "the dispersion θ runs to infinity" in line and "fit --family poisson" in line


# ------------------------------------------------------------------ three-level

@pytest.mark.parametrize("est", ["laplace", "pql"])
def test_three_level_separation_is_refused_naming_the_effect(est):
    """G = 1 ⇒ Y = 1 (quasi-complete) at three levels. Before: "the PQL start of the Laplace fit broke down"
    (or PQL's macro iteration 35), naming nothing."""
    line = one_line_error(hlmcli("fit", S / "h3_l1.csv", S / "h3_l2.csv", S / "h3_l3.csv", "--id2", "CLASS", "--id3",
                                 "SCHOOL", "-1", "Y = p0 + p1*G + p2*X", "-2", "p0 = b00 + r0", "-2", "p1 = b10", "-2",
                                 "p2 = b20", "-3", "b00 = g000 + u00", "-3", "b10 = g100", "-3", "b20 = g200",
                                 "--family", "bernoulli", "--estimation", est))
    assert "h3_l1.csv: the fixed effect γ100 (G) separates the outcome quasi-completely" in line
