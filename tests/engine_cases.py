"""The public references run by the summarised engines (--engine stream/dask) against --engine memory:
HSB (sample_data/hsb: HLM 7's four models), popular2 (sample_data/popular2) and the two-level lme4
reference cases of tests/data (test_lme4_reference.MODELS). Every number of the JSON must agree to
1e-10 relative; what may differ is listed in SKIP."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner
from conftest import DATA, HSB_MODELS, POPULAR_MODEL, SAMPLE

from hlmcli.cli import main

HSB = [SAMPLE / "hsb" / "hsb1.csv", SAMPLE / "hsb" / "hsb2.csv", "--id", "ID"]
POP = [SAMPLE / "popular2" / "popular2_level1.csv", SAMPLE / "popular2" / "popular2_level2.csv", "--id", "class"]
SIM = [DATA / "boundary_sim.csv", DATA / "boundary_sim.csv", "--id", "ID"]


def _eqs(level1, level2):
    out = ["-1", level1]
    for eq in level2:
        out += ["-2", eq]
    return out


CASES = {name: (HSB, _eqs(*m)) for name, m in HSB_MODELS.items()}
CASES["popular2"] = (POP, _eqs(*POPULAR_MODEL))
CASES.update({
    "hsb_ses_grand": (HSB, _eqs("MATHACH = b0 + b1*grand(SES) + r", ["b0 = g00 + g01*grand(MEANSES) + u0", "b1 = g10 + u1"])),
    "hsb_mean_of_ses": (HSB, _eqs("MATHACH = b0 + b1*group(SES) + r", ["b0 = g00 + g01*mean(SES) + u0", "b1 = g10"])),
    "hsb_no_intercept": (HSB, _eqs("MATHACH = b1*SES + r", ["b1 = g10 + u1"])),
    "hsb_no_fixed_slope": (HSB, _eqs("MATHACH = b0 + b1*group(SES) + r", ["b1 = u1"])),
    "pop_diag_zero_var": (POP, _eqs("popular = b0 + b1*extrav + b2*sex + r", ["b0 = g00 + g01*texp + u0", "b2 = g20 + u2"])
                          + ["--tau", "diagonal"]),
    "pop_cor_minus1": (POP, _eqs("popular = b0 + b1*extrav + b2*sex + r", ["b0 = g00 + g01*texp + u0", "b2 = g20 + u2"])),
    "sim_zero_var": (SIM, _eqs("Y = b0 + b1*X + r", ["b0 = g00 + g01*W + u0", "b1 = g10 + u1"]) + ["--tau", "diagonal"]),
    "sim_cor": (SIM, _eqs("Y = b0 + b1*X + r", ["b0 = g00 + g01*W + u0", "b1 = g10 + u1"])),
})

# the certificate records the optimiser's path (iterations, starts); data_hash is the records' hash in memory
# and the moments' hash otherwise; data_source names the files given
SKIP = {"certificate", "iterations", "start", "data_hash", "data_source", "version"}


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def fit_json(data, eqs, *more):
    rc, out = run("fit", *data, *eqs, "--format", "json", "-q", *more)
    assert rc == 0, out
    return json.loads(out)


# covariance matrices: an entry is judged on √(V_aa V_bb), so a covariance of 0 (group-centred
# predictors make some exactly 0 in exact arithmetic) has no meaningless relative error
MATRICES = {"tau", "gamma_covariance", "gamma_robust_covariance"}


def differences(a, b, path="", out=None, scale=None):
    """Every number of a that differs from b's by more than 1e-10 of its size (MATRICES: of
    √(V_aa V_bb), as test_lme4_reference judges τ)."""
    out = [] if out is None else out
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            if k not in SKIP:
                differences(a[k], b[k], f"{path}.{k}", out, a[k] if k in MATRICES else None)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            differences(x, y, f"{path}[{i}]", out, scale)
    elif isinstance(a, float) or isinstance(b, float):
        size = max(abs(a), abs(b))
        if scale is not None:
            i, j = (int(s) for s in path[path.index("[") + 1:-1].split("]["))
            size = max(size, math.sqrt(abs(scale[i][i] * scale[j][j])))
        if abs(a - b) > 1e-10 * size:
            out.append((path, a, b))
    else:
        assert a == b, (path, a, b)
    return out
