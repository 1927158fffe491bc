"""Ordinal outcomes (--family ordinal, HLM 7's nonlin:ordinal,NCAT): the categories from the data, the
Laplace or AGQ fit (engine/ordinal.py), with the thresholds δ(m) and their covariances (printed by
report/report_ordinal.py).

Printed parametrisation (HLM 7's, Raudenbush & Bryk 2002 §10.5): F⁻¹(P(Y ≤ m | b)) = η + δ(2) + ... + δ(m),
η = x'γ + z'b, so γ00 is the first threshold and δ(m) > 0 the gap from threshold m − 1 to m; a positive
γ makes the low categories more likely. ordinal::clmm's θ_m − x'β is the same model with θ_m = γ00 +
δ(2) + ... + δ(m) and β = −γ: the JSON carries both (`thresholds`, `clmm`). The engine's own parameters are
(γ, c_2..c_{C−1}) with c_m = δ(2) + ... + δ(m).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import design as design_stage
from ..errors import DataError, ModelError
from . import inference
from .hglm_run import HGLMAnalysis, check_column_scales, check_options


def ordinal_codes(y: np.ndarray, ncat: int | None, where: dict):
    """(codes 1..C per record, the categories as written): the categories are the outcome's distinct
    whole-number values, or 1..NCAT when a .hlm file gives NCAT. Refused in one line naming file, column
    and row: a value that is not a whole number, outside 1..NCAT, or fewer than three categories."""
    rows, out, l1file = where["rows"], where["outcome"], where["file"]

    def fail(k, problem):
        raise DataError(f"{l1file}, column {out}, row {int(rows[k]) + 1}: {problem}")

    bad = np.flatnonzero(y != np.round(y))
    if bad.size:
        fail(bad[0], f"the value {y[bad[0]]:g} is not a whole-number category code, as --family ordinal needs "
                     "(the categories are ordered by their codes)")
    if ncat is not None:
        bad = np.flatnonzero((y < 1) | (y > ncat))
        if bad.size:
            fail(bad[0], f"the value {y[bad[0]]:g} is not a category 1 to {ncat} of nonlin:ordinal,{ncat}; recode it "
                         "or change NCAT")
        categories = np.arange(1, ncat + 1, dtype=float)
        present = np.isin(categories, y)
        if not present.all():
            missing = [f"{c:g}" for c in categories[~present]]
            raise DataError(f"{l1file}, column {out}: no record has category {', '.join(missing)} of "
                            f"nonlin:ordinal,{ncat}, so its threshold has no finite estimate; set NCAT to the "
                            "categories present and recode them 1, 2, ...")
    else:
        categories = np.unique(y)
    if categories.size < 3:
        raise DataError(f"{l1file}, column {out}: the outcome has {categories.size} categories "
                        f"({', '.join(f'{c:g}' for c in categories)}); an ordinal model needs at least 3 "
                        "(for two, use --family bernoulli)")
    return np.searchsorted(categories, y).astype(np.int64) + 1, categories


@dataclass
class OrdinalAnalysis(HGLMAnalysis):
    """An HGLM analysis whose fixed part is followed by the thresholds δ(2)..δ(C−1)."""

    categories: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (γ, c_2..c_{C−1}) as the engine fits them
    delta: np.ndarray = field(default_factory=lambda: np.zeros(0))
    delta_cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    delta_robust_cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    link: str = "logit"

    def level1_table(self):
        """As an HGLM's, with η (without the thresholds) and the fitted mean the expected category 1..C."""
        import pandas as pd

        d = self.design
        eta = self.data.eta(self.params, self.b)
        cols = {"id": np.array(d.unit_ids, dtype=object)[self.data.unit], "eta": eta,
                "fitted": self.data.family.mean(eta), d.spec.outcome: d.y}
        for k, term in enumerate(d.spec.level1, start=1):
            cols[term.name if term.centering == "none" else f"{term.name}_{term.centering}"] = d.L[:, k]
        return pd.DataFrame(cols)


def analyse_ordinal(spec, archive, level1_text: str | None = None) -> OrdinalAnalysis:
    from ..data.data_checks import check_quadrature
    from ..engine.hglm import working_model
    from ..engine.ordinal import LINKS, OrdinalData, OrdinalFamily, fit
    from .identifiability import check_units

    opts = spec.options
    check_options(opts)
    link = opts.link or "logit"
    if link not in LINKS:
        raise ModelError(f"--link {link}: an ordinal outcome's link is logit, probit or cloglog")
    if opts.estimation == "pql":
        raise ModelError("--family ordinal: PQL is not available yet for ordinal outcomes; use --estimation laplace "
                         "or agq (exact ML)")
    design = design_stage.make_design(spec, archive)
    if not design.random.any():
        raise ModelError("an HGLM needs at least one random effect (add u0 to the equation for b0)")
    if not design.fixed or (design.fixed[0].q, design.fixed[0].s) != (0, 0):
        raise ModelError("an ordinal model needs the intercept γ00: it is the first threshold")
    check_units(design.n_units, int(design.random.sum()))
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    where = {"file": l1file, "outcome": spec.outcome, "rows": rows}
    codes, categories = ordinal_codes(design.y, opts.ncat, where)
    B = design.block_design()
    check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    fam = OrdinalFamily(link, categories.size, codes)
    data = OrdinalData(fam, design.L, B, design.offsets, np.flatnonzero(design.random), codes.astype(float))
    diagonal = opts.tau == "diagonal"
    if opts.estimation == "agq":
        if data.q > 3:
            raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use "
                             "--estimation laplace")
        check_quadrature(opts.quadrature_points or None, data.q)
    res = fit(data, opts.estimation, opts.quadrature_points or None, diagonal=diagonal)
    pf = data.pf
    gamma, cuts = res.gamma[:pf], res.gamma[pf:]
    # δ(m) = c_m − c_{m−1} (c_1 = 0): a linear map of the cuts, and its covariances
    D = np.eye(cuts.size) - np.eye(cuts.size, k=-1)
    delta = D @ cuts
    cc, rc = res.cov[pf:, pf:], res.robust_cov[pf:, pf:]
    data.eta(res.gamma, res.b)  # the family's thresholds at the optimum
    stats, unit = working_model(data, res.eta)
    from types import SimpleNamespace

    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, res.tau, stats)
    return OrdinalAnalysis(spec, design, data, opts.estimation, res.nodes, None, res, gamma, res.cov[:pf, :pf],
                           res.robust_cov[:pf, :pf], res.tau, None, inference.hlm_fixed_df(design), variance,
                           res.converged, res.b, res.b_var, categories=categories, params=res.gamma.copy(),
                           delta=delta, delta_cov=D @ cc @ D.T, delta_robust_cov=D @ rc @ D.T, link=link)
