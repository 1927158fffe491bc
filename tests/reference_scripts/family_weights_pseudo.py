"""Writes tests/data/family_weights/pseudo_refs.json: the weighted pseudo-likelihood optima of the three
models of tests/family_weights_models.py (ordinal wine, negative binomial salamanders, multinomial sim)
with level-1 weights W1 and level-2 weights W2 (--normalize cluster), by the independent code of
tests/family_pseudo.py (exact integrals by quad for the ordinal and NB models, the reference of
--estimation agq; Laplace for the multinomial), each maximised by BFGS then Nelder-Mead, and the
cluster sandwich there by differences of the unit terms. Level-2 weights have no counterpart in R, so
this is their reference.

Run from the repository root (about a minute): python tests/reference_scripts/family_weights_pseudo.py
"""

import json
import sys
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from family_pseudo import maximise, sandwich  # noqa: E402
from family_weights_models import independent  # noqa: E402

STARTS = {"wine": [-1.0, 2.0, 1.0, 1.0, 3.0, 4.5, 0.0],  # γ00, γ10, γ20, c2..c4, log τ
          "salamanders": [0.0, 1.0, 0.0, 0.0],  # γ00, γ01, log θ, log τ
          "sim": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.1]}  # γ (logit 1, logit 2), chol(τ)
out = {"tool": f"tests/family_pseudo.py, scipy {scipy.__version__}, numpy {np.__version__}",
       "weights": "--weight1 W1 --weight2 W2 --normalize cluster"}
for name, start in STARTS.items():
    model, w2 = independent(name)
    x, dev = maximise(model, w2, start)
    V = sandwich(model, x, w2)
    out[name] = {"x": x.tolist(), "deviance": dev, "robust_se": np.sqrt(np.diag(V)).tolist()}
    print(name, dev, x)
Path("tests/data/family_weights/pseudo_refs.json").write_text(json.dumps(out, indent=1) + "\n")
