"""Collinear fixed effects in an HGLM are refused in one line, as in the linear model: along the alias the
likelihood is flat, so there is no one optimum (Laplace printed an arbitrary split of the effect with SEs of
nan under "stopped at the optimum"; PQL and AGQ blamed separation)."""

from __future__ import annotations

import pandas as pd
import pytest

import hlmcli
from hlmcli.errors import ModelError
from conftest import DATA


@pytest.fixture(scope="module")
def wine():
    l1 = pd.read_csv(DATA / "ordinal" / "wine_l1.csv")
    l1["dwarm"] = 2 * l1["warm"]  # warm's effect cannot be told from dwarm's
    l1["high"] = (l1["rating"] >= 3).astype(int)
    return l1, pd.read_csv(DATA / "ordinal" / "wine_l2.csv")


@pytest.mark.parametrize("outcome,family,estimation", [
    ("high", "bernoulli", "pql"), ("high", "bernoulli", "laplace"), ("high", "bernoulli", "agq"),
    ("rating", "ordinal", "laplace"), ("rating", "multinomial", "pql"), ("rating", "poisson", "laplace")])
def test_collinear_fixed_effects_are_refused(wine, outcome, family, estimation):
    with pytest.raises(ModelError, match=r"collinear: γ20 \(INTRCPT2 for dwarm\)") as err:
        hlmcli.fit(*wine, id="judge", level1_eq=f"{outcome} = b0 + b1*warm + b2*dwarm", family=family,
                   level2_eqs=["b0 = g00 + u0", "b1 = g10", "b2 = g20"], estimation=estimation)
    assert "\n" not in str(err.value)
