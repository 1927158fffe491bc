"""Ordinal outcomes (--family ordinal, HLM 7's nonlin:ordinal,NCAT): the categories from the data, the
Laplace or AGQ fit (engine/ordinal.py) or HLM 7's PQL (engine/categorical_pql.py), with the thresholds
δ(m) and their covariances (printed by report/report_ordinal.py).

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
from .hglm_run import HGLMAnalysis, check_column_scales, check_fixed_rank, check_options, resolve_weights


def category_codes(y: np.ndarray, ncat: int | None, where: dict, family: str, code_hint: str, estimate: str):
    """(codes 1..C per record, the categories as written) of a categorical outcome (ordinal, multinomial):
    the outcome's distinct whole-number values, or 1..NCAT when a .hlm file gives NCAT. Refused in one
    line naming file, column and row: a value that is not a whole number, or outside 1..NCAT, or a
    category of NCAT with no record (`estimate`: what then has no finite estimate)."""
    rows, out, l1file = where["rows"], where["outcome"], where["file"]

    def fail(k, problem):
        raise DataError(f"{l1file}, column {out}, row {int(rows[k]) + 1}: {problem}")

    bad = np.flatnonzero(y != np.round(y))
    if bad.size:
        fail(bad[0], f"the value {y[bad[0]]:g} is not a whole-number category code, as --family {family} needs "
                     f"{code_hint}")
    if ncat is None:
        categories = np.unique(y)
        return np.searchsorted(categories, y).astype(np.int64) + 1, categories
    bad = np.flatnonzero((y < 1) | (y > ncat))
    if bad.size:
        fail(bad[0], f"the value {y[bad[0]]:g} is not a category 1 to {ncat} of nonlin:{family},{ncat}; recode it "
                     "or change NCAT")
    categories = np.arange(1, ncat + 1, dtype=float)
    present = np.isin(categories, y)
    if not present.all():
        missing = [f"{c:g}" for c in categories[~present]]
        raise DataError(f"{l1file}, column {out}: no record has category {', '.join(missing)} of "
                        f"nonlin:{family},{ncat}, so {estimate} has no finite estimate; set NCAT to the "
                        "categories present and recode them 1, 2, ...")
    return np.searchsorted(categories, y).astype(np.int64) + 1, categories


def ordinal_codes(y: np.ndarray, ncat: int | None, where: dict):
    """category_codes for an ordinal outcome, which needs at least three categories."""
    codes, categories = category_codes(y, ncat, where, "ordinal", "(the categories are ordered by their codes)",
                                       "its threshold")
    if categories.size < 3:
        raise DataError(f"{where['file']}, column {where['outcome']}: the outcome has {categories.size} categories "
                        f"({', '.join(f'{c:g}' for c in categories)}); an ordinal model needs at least 3 "
                        "(for two, use --family bernoulli)")
    return codes, categories


def find_separation(X: np.ndarray, codes: np.ndarray, ncat: int):
    """A direction (dγ, dc_2..dc_{C−1}) (X's units; dc_1 = 0 as c_1 is) along which no record's likelihood
    falls and some record's rises, with the records it moves; or None. A record in category m has
    probability F(η + c_m) − F(η + c_{m−1}) (c_0 = −∞, c_C = +∞): it cannot fall along the direction when
    x'dγ + dc_m ≥ 0 (m < C) and x'dγ + dc_{m−1} ≤ 0 (m > 1), and the thresholds stay ordered when dc is
    non-decreasing. Then the ML estimate is infinite for every value of the random effects (as Albert &
    Anderson 1984 for the binary logit): a predictor or combination that orders the categories (complete),
    or puts one side of a split at the first or last category (quasi-complete), or a threshold whose
    category sits beyond it. Found as for binary outcomes (separation.py, after Konis 2007): maximise the
    sum of the record margins over the direction in [−1, 1] (columns scaled to max |x| = 1), subject to
    every margin ≥ 0 and the order; the optimum is 0 exactly when no direction separates, and a positive
    one is accepted only when its direction is verified on the data."""
    from scipy.optimize import linprog

    N, p = X.shape
    nc = ncat - 2  # dc_2..dc_{C−1}
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    rows, recs = [], []
    for m in range(1, ncat + 1):
        i = np.flatnonzero(codes == m)
        if not i.size:
            continue
        if m < ncat:  # x'dγ + dc_m ≥ 0
            D = np.zeros((i.size, p + nc))
            D[:, :p] = Xs[i]
            if m >= 2:
                D[:, p + m - 2] = 1.0
            rows.append(D)
            recs.append(i)
        if m > 1:  # −(x'dγ + dc_{m−1}) ≥ 0
            D = np.zeros((i.size, p + nc))
            D[:, :p] = -Xs[i]
            if m >= 3:
                D[:, p + m - 3] = -1.0
            rows.append(D)
            recs.append(i)
    D, recs = np.vstack(rows), np.concatenate(recs)
    order = np.zeros((nc, p + nc))  # dc_m − dc_{m−1} ≥ 0
    order[:, p:] = np.eye(nc) - np.eye(nc, k=-1)
    res = linprog(-D.sum(axis=0), A_ub=-np.vstack([D, order]), b_ub=np.zeros(D.shape[0] + nc),
                  bounds=[(-1, 1)] * (p + nc), method="highs")
    if res.status != 0 or -res.fun <= 1e-9 * N:
        return None
    margin = D @ res.x
    top = float(np.max(np.abs(margin)))
    if top <= 0 or np.any(margin < -1e-9 * top) or np.any(order @ res.x < -1e-9 * top):
        return None
    moved = np.unique(recs[margin > 1e-6 * top])
    if not moved.size:
        return None
    return np.concatenate([res.x[:p] / scale, res.x[p:]]), moved


def check_separation(data, design, codes, categories, l1file: str, rows) -> None:
    """Refuse, in one line, fixed effects or thresholds whose ML estimates are infinite (find_separation)."""
    X = np.column_stack([data.rowdot(data.LT, data.B[:, :, k]) for k in range(data.pf)])
    found = find_separation(X, codes, categories.size)
    if found is None:
        return
    d, moved = found
    pf = data.pf
    size = np.concatenate([np.abs(d[:pf]) * np.abs(X).max(axis=0), np.abs(d[pf:])])
    big = np.flatnonzero(size > 1e-6 * size.max())
    names = [design.fixed[k].label if k < pf else f"δ({k - pf + 2})" for k in big]
    listed = ", ".join(str(int(rows[i]) + 1) for i in moved[:8]) + (", ..." if moved.size > 8 else "")
    what = "the fixed effect" if len(names) == 1 else "the fixed effects and thresholds"
    raise DataError(f"{l1file}: {what} {', '.join(names)} {'separates' if len(names) == 1 else 'separate'} the ordered categories (along "
                    f"{'it' if len(names) == 1 else 'a combination of them'} no record's category becomes less likely "
                    f"and the categories of rows {listed} become certain), so "
                    f"{'its coefficient has' if len(names) == 1 else 'their coefficients have'} no finite estimate; "
                    "remove a predictor or combine categories")


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


def _given_back(a: OrdinalAnalysis, constraints, full) -> OrdinalAnalysis:
    """--constrain: the fit on B_jH given back in every γ (the thresholds δ(m) untouched: the restrictions
    name γs only), on the full design, with the d.f. by constrained_df."""
    from dataclasses import replace

    from ..engine.ordinal import OrdinalData
    from .constrained import constrained_df, expand_estimates

    pf = a.data.pf
    gamma, cov, rcov = expand_estimates(constraints.basis, a.gamma, a.cov, a.robust_cov)
    data = OrdinalData(a.data.family, full.L, full.block_design(), full.offsets, a.data.rnd, a.data.y, w1=a.data.w1,
                       w2=a.data.w2)
    params = np.concatenate([gamma, a.params[pf:]])
    data.eta(params, a.b)  # the thresholds set again
    return replace(a, design=full, data=data, gamma=gamma, cov=cov, robust_cov=rcov, params=params,
                   df=constrained_df(full, constraints.basis))


def analyse_ordinal(spec, archive, level1_text: str | None = None, weights=None, constraints=None) -> OrdinalAnalysis:
    """weights: a weights.WeightSpec (the pseudo-likelihood of engine/hglm_weights.py), or None.
    constraints: --constrain's ties among γs (not the thresholds, which --test does not name either): the
    fit on B_jH by PQL, Laplace or AGQ, given back in every γ (_given_back). γ00 is the first threshold,
    so a tie naming it is refused."""
    a = _analyse_ordinal(spec, archive, level1_text, weights, constraints)
    return a if constraints is None else _given_back(a, constraints, a.design.full)


def _analyse_ordinal(spec, archive, level1_text, weights, constraints) -> OrdinalAnalysis:
    from ..data.data_checks import check_quadrature
    from ..engine.hglm import working_model
    from ..engine.ordinal import LINKS, OrdinalData, OrdinalFamily, fit
    from .identifiability import check_units

    opts = spec.options
    check_options(opts)
    link = opts.link or "logit"
    if link not in LINKS:
        raise ModelError(f"--link {link}: an ordinal outcome's link is logit, probit or cloglog")
    design = design_stage.make_design(spec, archive)
    check_fixed_rank(design)
    if constraints is not None:
        from .constrained import constrained_view

        if 0 in constraints.basis.involved():
            raise ModelError("--constrain: γ00 of an ordinal model is its first threshold (the other thresholds are "
                             "δ(m) above it); tie other γs")
        design = constrained_view(design, constraints.basis)
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
    if opts.estimation != "pql":  # as hglm_run: PQL's inner fits standardise the columns
        check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    fam = OrdinalFamily(link, categories.size, codes)
    resolved, w1, w2 = resolve_weights(weights, archive, design)
    data = OrdinalData(fam, design.L, B, design.offsets, np.flatnonzero(design.random), codes.astype(float),
                       w1=w1, w2=w2)
    check_separation(data, design, codes, categories, l1file, rows)
    diagonal = opts.tau == "diagonal"
    if opts.estimation == "agq":
        if data.q > 3:
            raise ModelError(f"adaptive quadrature supports up to 3 random effects (this model has {data.q}); use "
                             "--estimation laplace")
        check_quadrature(opts.quadrature_points or None, data.q)
    if opts.estimation == "pql":
        return _ordinal_pql(spec, design, data, B, codes, categories, link, diagonal)
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
                           weights=resolved, delta=delta, delta_cov=D @ cc @ D.T, delta_robust_cov=D @ rc @ D.T,
                           link=link)


def _ordinal_pql(spec, design, data, B, codes, categories, link: str, diagonal: bool) -> OrdinalAnalysis:
    """--estimation pql: HLM 7's method for ordinal outcomes, PQL over the C − 1 cumulative logits
    (engine/categorical_pql.py), with the fixed-point check; the thresholds as for Laplace."""
    from types import SimpleNamespace

    from ..engine.categorical_pql import CategoricalPQLData, fit as pql_fit
    from ..engine.hglm import working_model

    opts = spec.options
    cdata = CategoricalPQLData("ordinal", categories.size, codes, design.L, B, design.offsets, data.rnd, link)
    res = pql_fit(cdata, reml=spec.method == "REML", macroit=opts.macroit, microit=opts.microit,
                  stopmacro=opts.stopmacro, diagonal=diagonal)
    pf = data.pf
    gamma, cuts = res.gamma[:pf], res.gamma[pf:]
    D = np.eye(cuts.size) - np.eye(cuts.size, k=-1)
    delta = D @ cuts
    cc, rc = res.cov[pf:, pf:], res.robust_cov[pf:, pf:]
    eta = data.eta(res.gamma, res.b)  # x'γ + z'b, the family's thresholds set to PQL's
    stats, unit = working_model(data, eta)
    fake = SimpleNamespace(solve=SimpleNamespace(gamma=gamma), sigma2=1.0)
    ols = inference.unit_ols(design, unit, stats, fake)
    variance = inference.variance_tests(design, ols, res.tau, stats)
    return OrdinalAnalysis(spec, design, data, "pql", 0, res, None, gamma, res.cov[:pf, :pf], res.robust_cov[:pf, :pf],
                           res.tau, None, inference.hlm_fixed_df(design), variance, res.converged, res.b, res.b_var,
                           categories=categories, params=res.gamma.copy(), delta=delta, delta_cov=D @ cc @ D.T,
                           delta_robust_cov=D @ rc @ D.T, link=link)

