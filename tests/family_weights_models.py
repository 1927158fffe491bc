"""The three weighted models of tests/test_family_weights.py as arrays for the independent code
(tests/family_pseudo.py), in hlmcli's unit order, with the weights scaled there from the rule
(tests/hglm_pseudo.py's scaled_weights: --normalize cluster)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from family_pseudo import Multinomial, Scalar
from hglm_pseudo import scaled_weights

D = Path(__file__).parent / "data" / "family_weights"

# name: (unit id, hlmcli's model, the independent model's builder)
MODELS = {
    "wine": ("judge", dict(level1_eq="rating = b0 + b1*warm + b2*contact", level2_eqs=["b0 = g00 + u0", "b1 = g10",
                                                                                        "b2 = g20"], family="ordinal")),
    "salamanders": ("site", dict(level1_eq="count = b0", level2_eqs=["b0 = g00 + g01*mined + u0"],
                                 family="negbinomial")),
    "sim": ("school", dict(level1_eq="choice = b0 + b1*x", level2_eqs=["b0 = g00 + g01*w + u0", "b1 = g10"],
                           family="multinomial")),
}


def files(name: str):
    return D / f"{name}_l1.csv", D / f"{name}_l2.csv"


def independent(name: str, w1_col: str | None = "W1", w2_col: str | None = "W2", normalize: str = "cluster"):
    """(model, w2) of tests/family_pseudo.py for the named data set."""
    uid = MODELS[name][0]
    l1, l2 = files(name)
    f = pd.read_csv(l1).merge(pd.read_csv(l2), on=uid).sort_values(uid, kind="stable").reset_index(drop=True)
    w1, w2 = scaled_weights(f, uid, w1_col, w2_col, normalize)
    unit = np.searchsorted(np.unique(f[uid]), f[uid])
    if name == "wine":
        X = np.column_stack([np.ones(len(f)), f.warm, f.contact])
        return Scalar("ordinal", X, f.rating.to_numpy(int), unit, w1), w2
    if name == "salamanders":
        X = np.column_stack([np.ones(len(f)), f.mined])
        return Scalar("negbinomial", X, f["count"].to_numpy(float), unit, w1), w2
    X = np.column_stack([np.ones(len(f)), f.w, f.x])
    return Multinomial(X, f.choice.to_numpy(int), unit, w1, 3), w2


def hlmcli_point(name: str, a) -> np.ndarray:
    """An hlmcli fit's estimates in the independent code's parameters."""
    if name == "sim":
        L = np.linalg.cholesky(a.tau)
        return np.concatenate([a.gamma, L[np.tril_indices(L.shape[0])]])
    return np.concatenate([a.params, [np.log(a.tau[0, 0])]])
