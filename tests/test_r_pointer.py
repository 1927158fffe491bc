"""PQL's "same model in R" pointer is MASS::glmmPQL (glmer is Laplace or AGQ), and it is the same model.

glmmPQL is full PQL with a free level-1 scale, so hlmcli's --ml --overdispersion must reproduce its fixed
point. glmmPQL itself stops early (about 1e-4 from it in τ here), so the reference is its loop run to
max|Δη| < 1e-12 (tests/reference_scripts/glmmpql_cbpp.R)."""

from __future__ import annotations

import json

import pytest

from conftest import DATA, hlmcli

H = DATA / "hglm"
CBPP = [H / "cbpp_l1.csv", H / "cbpp_l2.csv", "--id", "HERD", "-1", "INCID = b0 + b1*P2 + b2*P3 + b3*P4",
        "-2", "b0 = g00 + u0", "--family", "binomial", "--trials", "SIZE"]
CALL = ("MASS::glmmPQL(cbind(INCID, SIZE - INCID) ~ 1 + P2 + P3 + P4, random = ~ 1 | HERD, "
        "family = binomial, data = d)")


def test_full_pql_with_a_free_scale_is_glmmpql(tmp_path):
    ref = json.loads((H / "glmmpql_cbpp.json").read_text())["fixed_point"]
    proc = hlmcli("fit", *CBPP, "--ml", "--overdispersion", "--format", "json", "--cache-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    fit = json.loads(proc.stdout)
    assert fit["r_call"] == CALL
    assert [g["estimate"] for g in fit["fixed_effects"]] == pytest.approx(ref["gamma"], rel=1e-6)
    assert fit["tau"][0][0] == pytest.approx(ref["tau00"], rel=1e-6)
    assert fit["sigma2"] == pytest.approx(ref["sigma2"], rel=1e-6)


def test_default_pql_names_glmmpql_and_how_it_differs(tmp_path):
    proc = hlmcli("model", *CBPP, "--cache-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    at = lines.index("The same model in R (MASS)")
    assert lines[at + 1] == f" {CALL}"
    assert lines[at + 2] == "   glmmPQL is full PQL with a free level-1 scale: give --ml --overdispersion for its model"
    assert "glmer(" not in proc.stdout


def test_model_shows_separation_fit_it_was_given(tmp_path):
    proc = hlmcli("model", *CBPP, "--separation", "fit", "--cache-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Separation: a separated coefficient is held at a bound, with a warning (--separation fit)" in proc.stdout
