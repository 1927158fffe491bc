"""Multinomial outcomes (--family multinomial, HLM 7's nonlin:multinomial,NCAT): the categories from the data,
the Laplace fit of the baseline-category logits (engine/multinomial.py) or HLM 7's PQL (engine/categorical_pql.py),
printed by report/report_multinomial.py.

Printed parametrisation (HLM 7's, Raudenbush & Bryk 2002 §10.6): with categories 1..M, the last is the
reference, and for m = 1..M−1, log(P(Y = m | u)/P(Y = M | u)) = η_m = x'γ_m + z'u_m; the level-1 and level-2
equations are the same for every m, each logit with its own γ and u, and τ covers the (M−1)q random
effects of all the logits together (the effects of one unit correlated across the logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data import design as design_stage
from ..errors import DataError, ModelError
from . import inference
from .hglm_run import HGLMAnalysis, check_column_scales, check_fixed_rank, check_options, resolve_weights
from .ordinal_run import category_codes

AGQ_REFUSAL = ("--family multinomial: adaptive quadrature is not available: the random effects of the M - 1 logits "
               "are (M - 1)q dimensions per unit, and product rules over them are not built; use --estimation laplace")


def multinomial_codes(y: np.ndarray, ncat: int | None, where: dict):
    """(codes 1..M per record, the categories as written): the categories are the outcome's distinct
    whole-number values in increasing order (the last the reference), or 1..NCAT when a .hlm file gives
    NCAT. Refused in one line naming file, column and row: a value that is not a whole number, outside
    1..NCAT, a category no record has, or fewer than two categories."""
    codes, categories = category_codes(y, ncat, where, "multinomial",
                                       "(recode the categories 1, 2, ..., M; the last is the reference)", "its logit")
    if categories.size < 2:
        raise DataError(f"{where['file']}, column {where['outcome']}: every record has category {categories[0]:g}; "
                        "a multinomial model needs at least two categories")
    return codes, categories


def find_separation(X: np.ndarray, codes: np.ndarray, ncat: int):
    """A direction β = (β_1, ..., β_{M−1}) (β_M = 0, X's units) along which every record's own category keeps
    the largest linear score, x_i'β_{y_i} ≥ x_i'β_m for every m, strictly for some records; with the records
    it moves, or None. Along it every record's likelihood rises or stays, for every value of the random
    effects, so the ML estimate is infinite (Albert & Anderson 1984's separation for the multinomial logit).
    Found as for binary outcomes (separation.py, after Konis 2007): maximise the sum of the score margins
    over β in [−1, 1] (columns scaled to max |x| = 1) subject to every margin ≥ 0; the optimum is 0 exactly
    when no direction separates, and a positive one is accepted only when its direction is verified.

    Large data: the programme is solved first on every k-th record (about 5,000). If no direction separates
    them and their margin rows have full column rank, the only β with all their margins ≥ 0 is 0, so no
    direction separates the whole data either; otherwise the whole programme is solved."""
    N = X.shape[0]
    if N > 10_000:
        step = N // 5_000
        sub = np.arange(0, N, step)
        D, _ = _margin_rows(X[sub], codes[sub], ncat)
        if _separating(D, sub.size) is None and np.linalg.matrix_rank(D) == D.shape[1]:
            return None
    D, recs = _margin_rows(X, codes, ncat)
    found = _separating(D, N)
    if found is None:
        return None
    beta, margin, top = found
    moved = np.unique(recs[margin > 1e-6 * top])
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    return (beta / np.tile(scale, ncat - 1), moved) if moved.size else None


def _margin_rows(X: np.ndarray, codes: np.ndarray, ncat: int):
    """The score margins as rows of D (D β = x_i'(β_{y_i} − β_m) for each record i and m ≠ y_i, X's columns
    scaled to max |x| = 1), and each row's record."""
    p = X.shape[1]
    m1 = ncat - 1
    scale = np.abs(X).max(axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    blocks, recs = [], []
    for m in range(1, ncat + 1):  # rows (i, m), m ≠ y_i: x_i in y_i's block minus x_i in m's (β_M = 0)
        i = np.flatnonzero(codes != m)
        D = np.zeros((i.size, m1 * p))
        own = codes[i] - 1
        for c in range(m1):
            mask = own == c
            D[mask, c * p:(c + 1) * p] += Xs[i[mask]]
        if m <= m1:
            D[:, (m - 1) * p:m * p] -= Xs[i]
        blocks.append(D)
        recs.append(i)
    return np.vstack(blocks), np.concatenate(recs)


def _separating(D: np.ndarray, N: int):
    """(β, D β, max |D β|) of the programme's verified positive optimum, or None."""
    from scipy.optimize import linprog

    res = linprog(-D.sum(axis=0), A_ub=-D, b_ub=np.zeros(D.shape[0]), bounds=[(-1, 1)] * D.shape[1], method="highs")
    if res.status != 0 or -res.fun <= 1e-9 * N:
        return None
    margin = D @ res.x
    top = float(np.max(np.abs(margin)))
    if top <= 0 or np.any(margin < -1e-9 * top):
        return None
    return res.x, margin, top


def check_separation(data, design, categories, l1file: str, rows) -> None:
    """Refuse, in one line, fixed effects whose ML estimates are infinite (find_separation)."""
    if design.n_fixed < 1:
        return
    X = np.column_stack([data.rowdot(data.LT, data.B[:, :, k]) for k in range(data.pf)])
    found = find_separation(X, data.family.y, categories.size)
    if found is None:
        return
    beta, moved = found
    size = np.abs(beta) * np.tile(np.abs(X).max(axis=0), categories.size - 1)
    big = np.flatnonzero(size > 1e-6 * size.max())
    names = [f"{design.fixed[k % data.pf].label} (category {categories[k // data.pf]:g})" for k in big]
    listed = ", ".join(str(int(rows[i]) + 1) for i in moved[:8]) + (", ..." if moved.size > 8 else "")
    raise DataError(f"{l1file}: the fixed effects {', '.join(names)} separate the categories (along a combination "
                    "of them each record's own category keeps the largest linear predictor, strictly on rows "
                    f"{listed}), so their coefficients have no finite estimate; remove a predictor or combine "
                    "categories")


@dataclass
class MultinomialAnalysis(HGLMAnalysis):
    """An HGLM analysis with M − 1 sets of γ (category-major: γ_1, then γ_2, ...) and τ over the random
    effects of all the logits. No unit OLS, χ² tests or reliabilities (HLM's come from one scalar working
    model per record; the multinomial's has M − 1 correlated ones, and how HLM 7 forms them is not documented)."""

    categories: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def n_logits(self) -> int:
        return self.categories.size - 1

    def level1_table(self):
        """Per record: each logit's η_m with the EB effects and each category's fitted probability."""
        import pandas as pd

        d = self.design
        eta = self.data.eta(self.gamma, self.b)
        p, _ = self.data.family.probabilities(eta)
        cols = {"id": np.array(d.unit_ids, dtype=object)[self.data.unit]}
        for m, c in enumerate(self.categories[:-1]):
            cols[f"eta_{c:g}"] = eta[:, m]
        for m, c in enumerate(self.categories):
            cols[f"p_{c:g}"] = p[:, m] if m < self.n_logits else 1.0 - p.sum(axis=1)
        cols[d.spec.outcome] = d.y
        for k, term in enumerate(d.spec.level1, start=1):
            cols[term.name if term.centering == "none" else f"{term.name}_{term.centering}"] = d.L[:, k]
        return pd.DataFrame(cols)

    def level2_table(self):
        """Per unit: each logit's EB random effects (posterior modes) and their posterior variances."""
        import pandas as pd

        d = self.design
        names = self.spec.coefficient_names()
        rand_q = [int(q) for q in np.flatnonzero(d.random)]
        cols: dict[str, object] = {"id": d.unit_ids, "nj": d.sizes.astype(int)}
        k = 0
        for c in self.categories[:-1]:
            for q in rand_q:
                cols[f"u_{names[q]}_{c:g}"] = self.b[:, k]
                cols[f"postvar_{names[q]}_{c:g}"] = self.b_var[:, k, k]
                k += 1
        for name, values in d.level2_values.items():
            cols[name] = values
        return pd.DataFrame(cols)


def analyse_multinomial(spec, archive, level1_text: str | None = None, weights=None) -> MultinomialAnalysis:
    """weights: a weights.WeightSpec (the pseudo-likelihood of engine/hglm_weights.py), or None."""
    from ..engine.multinomial import MultinomialData, MultinomialFamily, fit
    from .identifiability import check_units

    opts = spec.options
    check_options(opts)
    if opts.estimation == "agq":
        raise ModelError(AGQ_REFUSAL)
    design = design_stage.make_design(spec, archive)
    check_fixed_rank(design)
    if not design.random.any():
        raise ModelError("an HGLM needs at least one random effect (add u0 to the equation for b0)")
    files = {s.role: s.name for s in archive.sources}
    l1file = files.get("level-1", "the level-1 file")
    rows = design.record_positions if design.record_positions is not None else np.arange(design.n)
    where = {"file": l1file, "outcome": spec.outcome, "rows": rows}
    codes, categories = multinomial_codes(design.y, opts.ncat, where)
    check_units(design.n_units, int(design.random.sum()) * (categories.size - 1))
    B = design.block_design()
    if opts.estimation != "pql":  # as hglm_run: PQL's inner fits standardise the columns
        check_column_scales(design, B, l1file, files.get("level-2", "the level-2 file"))
    fam = MultinomialFamily(categories.size, codes)
    resolved, w1, w2 = resolve_weights(weights, archive, design)
    data = MultinomialData(fam, design.L, B, design.offsets, np.flatnonzero(design.random), codes.astype(float),
                           w1=w1, w2=w2)
    check_separation(data, design, categories, l1file, rows)
    df = np.tile(inference.hlm_fixed_df(design), categories.size - 1)
    if opts.estimation == "pql":
        # HLM 7's method for multinomial outcomes: PQL over the M − 1 logits jointly (engine/categorical_pql.py)
        from ..engine.categorical_pql import CategoricalPQLData, fit as pql_fit

        cdata = CategoricalPQLData("multinomial", categories.size, codes, design.L, B, design.offsets, data.rnd)
        p = pql_fit(cdata, reml=spec.method == "REML", macroit=opts.macroit, microit=opts.microit,
                    stopmacro=opts.stopmacro, diagonal=opts.tau == "diagonal")
        return MultinomialAnalysis(spec, design, data, "pql", 0, p, None, p.gamma, p.cov, p.robust_cov, p.tau, None,
                                   df, None, p.converged, p.b, p.b_var, categories=categories)
    res = fit(data, diagonal=opts.tau == "diagonal")
    return MultinomialAnalysis(spec, design, data, "laplace", res.nodes, None, res, res.gamma, res.cov,
                               res.robust_cov, res.tau, None, df, None, res.converged, res.b, res.b_var,
                               weights=resolved, categories=categories)


def per_logit(hypotheses, categories) -> list:
    """Each hypothesis on the γ's of the equations tested within each logit in turn: the same restrictions on
    γ_m for m = 1..M−1 (label 'H (category m)'), as one Wald test per logit."""
    from ..language.equations import Hypothesis

    m1 = len(categories) - 1
    out = []
    for h in hypotheses:
        C = np.array(h.rows, dtype=float)
        pf = C.shape[1]
        for m in range(m1):
            rows = np.zeros((C.shape[0], m1 * pf))
            rows[:, m * pf:(m + 1) * pf] = C
            out.append(Hypothesis(label=f"{h.label} (category {categories[m]:g})",
                                  rows=tuple(tuple(r) for r in rows.tolist()), rhs=h.rhs))
    return out
