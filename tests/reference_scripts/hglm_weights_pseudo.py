"""Writes tests/data/hglm_weights/pseudo_refs.json: the weighted pseudo-likelihood optimum of
USE = b0 + b1*URBAN + b2*AGE, b0 = g00 + u0 (contraw data) with level-1 weights W1 and level-2 weights W2
(both scaled as --normalize cluster), by the independent code of tests/hglm_pseudo.py: exact integrals
(scipy.integrate.quad, the reference of --estimation agq) and Laplace's approximation, each maximised
by BFGS (forward differences) then Nelder-Mead. Level-2 weights have no counterpart in glmer, so this is their reference.

Run from the repository root (a few minutes): python tests/reference_scripts/hglm_weights_pseudo.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hglm_pseudo import maximise, scaled_weights  # noqa: E402

l1 = pd.read_csv("tests/data/hglm_weights/contraw_l1.csv")
l2 = pd.read_csv("tests/data/hglm_weights/contraw_l2.csv")
d = l1.merge(l2, on="DISTRICT").sort_values("DISTRICT", kind="stable").reset_index(drop=True)
w1, w2 = scaled_weights(d, "DISTRICT", "W1", "W2", "cluster")
unit = np.searchsorted(np.unique(d.DISTRICT), d.DISTRICT)
X = np.column_stack([np.ones(len(d)), d.URBAN, d.AGE])
y = d.USE.to_numpy(float)
start = [-0.7, 0.67, 0.0045, np.log(0.18)]
out = {"model": "USE = b0 + b1*URBAN + b2*AGE; b0 = g00 + u0; b1 = g10; b2 = g20 (contraw, --weight1 W1 --weight2 W2, "
                "--normalize cluster)", "tool": f"tests/hglm_pseudo.py, scipy {scipy.__version__}"}
for name, laplace in (("exact", False), ("laplace", True)):
    beta, tau, dev = maximise(X, y, unit, w1, w2, start, laplace)
    out[name] = {"gamma": beta.tolist(), "tau": tau, "deviance": dev}
Path("tests/data/hglm_weights/pseudo_refs.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
