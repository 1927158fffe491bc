"""The certified fit of a nested model of three or more levels (HLM3, HLM4): minimise the profiled
(RE)ML deviance over PSD τ2 × … × PSD τK (a product cone), certify the optimum, and compute the
inference HLM3 prints.

The search and the certificate are the two-level ones over a tuple of blocks (search.py,
certificate.certify_blocks), with the nested deviance (nested.NestedDeviance) as the objective:
- the search runs in standardised coordinates, formed on the records before any cross-product
  (nested.reduce_standardised): each block of random columns centred at its grand mean when it has
  an intercept and scaled to unit spread, the fixed-effect columns orthonormalised, the outcome
  residualised on them; so the search does not depend on a predictor's scale or location, and
  τ = σ²·A G̃ A', γ = TXγ̃ + b map back exactly;
- the face of the product cone is the product of the blocks' faces (certificate.BlockFace), so a
  rank-deficient block keeps its own null space; the certificate checks the face jointly and each
  singular block's cone, with the same scale-free tolerances as two levels;
- its starts (search.Plan): the identity, and a restart from larger variances when the certified
  answer is on the boundary; more when uncertified.
"""

from __future__ import annotations

import numpy as np

from .special_functions import special  # the compiled tails, without the scipy.special package
from .certificate import BlockCertificate, certify_blocks, diagonal_blocks, rank_tolerance
from .constraints import tied_df
from ..errors import ModelError
from .sandwich import weighted_sandwich
from .nested import (COEFFICIENT_NAMES, LevelsData, LevelsSolve, LevelsStats, NestedData, NestedDeviance, NestedFit,
                     as_levels, columns_of, reduce_nested, reduce_standardised, summary_of)
from .search import LbfgsTolerances, Plan
from .search import search as one_search
from .unitsolve import exact_within, factor, unit_ols, within_unit_rss

BOUNDARY_CORR = 1.0 - 1e-6  # |correlation| at or above this on a rank-deficient block is reported as ±1


def tau_names(n_levels: int) -> tuple:
    """The τ block of each level 2..K, named after the coefficients it varies: τπ (level 2), τβ, τγ, …"""
    return tuple(f"tau_{COEFFICIENT_NAMES[i]}" for i in range(n_levels - 1))


# ---------------------------------------------------------------- the search and the certificate

# the profiled deviance over (G2, …, GK) (objective.DevianceObjective)
Objective = NestedDeviance
NestedCertificate = BlockCertificate

# ending closer to the optimum than two levels usually saves the Newton polish its second face
# Hessian (2·face-size evaluations)
NESTED_LBFGS = LbfgsTolerances(ftol=1e-13, gtol=1e-9)


def certify_nested(obj, Gs, tol: float, face_data=None, diagonal=None) -> BlockCertificate:
    """certificate.certify_blocks with the τ blocks' names (tau_pi, tau_beta, ...)."""
    return certify_blocks(obj, Gs, tol, face_data, diagonal, tau_names(len(Gs) + 1))


def search(obj, qs, max_iterations: int, diagonal=None):
    """From the identity start to the certified optimum (or the best uncertified point), with a
    restart from larger variances when a certified answer is on the boundary (search.Plan).
    diagonal: per block (or one bool for all), τℓ restricted to diagonal matrices.
    Returns (Gs, deviance, certificate, iterations, message, start)."""
    plan = Plan([("identity", tuple(0.25 * np.eye(q) for q in qs))],
                boundary_starts=[("identity*10", tuple(2.5 * np.eye(q) for q in qs))], tolerances=NESTED_LBFGS)
    found = one_search(obj, plan, diagonal, max_iterations, tau_names(len(qs) + 1))
    return found.Gs, found.deviance, found.certificate, found.iterations, found.message, found.start


# ---------------------------------------------------------------- inference

def free_df(df_delta: np.ndarray, H: np.ndarray) -> np.ndarray:
    """d.f. of δ given to every γ = Hδ: a γ that is one δ (free, or tied to one) takes that δ's; a γ
    written in several δs has no one d.f. (Satterthwaite's would be of that combination): refused."""
    out = []
    for row in H:
        nz = np.flatnonzero(row)
        if nz.size != 1:
            raise ModelError("--df satterthwaite with --constrain: a γ written in several free γs has no one d.f.; "
                             "use --df hlm, or ties of one γ to another")
        out.append(df_delta[nz[0]])
    return np.array(out, dtype=float)


def hlm_df(data, n_units: dict, N: int, fixed_map: np.ndarray | None = None) -> np.ndarray:
    """Approximate d.f. of each fixed effect, the rules used (none is checked against HLM 7 output here):
    - its coefficient one level down (the level-(K−1) coefficient whose equation it is in) random at
      level K: K-units − (number of terms in that equation); with an intercept this is HLM3's
      K − S − 1 (Raudenbush & Bryk 2002, ch. 8);
    - otherwise the nearest coefficient below on its path that is random, at level ℓ: ℓ-units −
      (number of fixed effects under that coefficient reached through no other random coefficient):
      HLM2's J − S − 1 with the level-ℓ units as J (an analogue; UNVERIFIED);
    - no random coefficient on its path: N − p (UNVERIFIED; HLM 7's HLM2 uses N − J·R − F for fixed
      level-1 coefficients, HLM 6 used N − p).
    fixed_map: H of --constrain; a restriction removes the γ it eliminates (a row of H that is not that
    γ alone) from the count of its group: the fixed effects under the same random coefficient, or p."""
    data = as_levels(data)
    K = data.n_levels
    cols = columns_of(data.layout, K)
    p = len(cols.x)
    out, groups = [], []
    for nodes in cols.x_path_nodes:
        df, group = N - p, None
        for depth in range(K - 1, 0, -1):  # the coefficient at depth d is random at level d + 1
            node = nodes[depth - 1]
            if not node.random:
                continue
            df, group = n_units[depth + 1] - _fixed_under(node, depth, K), id(node)
            break
        out.append(df)
        groups.append(group)
    out = np.array(out, dtype=float)
    if fixed_map is not None:
        free = _free_rows(fixed_map)
        eliminated = [i for i in range(p) if i not in free]
        for i, g in enumerate(groups):
            out[i] += len(eliminated) if g is None else sum(groups[e] == g for e in eliminated)
        out = tied_df(out, fixed_map)  # tied γs are one parameter: one d.f.
    return out


def _free_rows(H: np.ndarray) -> set:
    """The γs that are δs themselves: the first row of H equal to each unit vector (constraint_basis
    eliminates the last γ a restriction names, so the free one comes first)."""
    rows = set()
    for k in range(H.shape[1]):
        for i, row in enumerate(H):
            if row[k] == 1.0 and np.count_nonzero(row) == 1:
                rows.add(i)
                break
    return rows


def _fixed_under(node, depth: int, K: int) -> int:
    """Fixed effects under a coefficient reached through no random coefficient below it."""
    if depth == K:
        return 1
    return sum(_fixed_under(t, depth + 1, K) for t in node.terms if depth + 1 == K or not t.random)


def hlm3_df(data: NestedData, J2: int, J3: int, N: int) -> np.ndarray:
    """hlm_df at three levels."""
    return hlm_df(data, {2: J2, 3: J3}, N)


def _pchisq_upper(chi2: float, df: float) -> float:
    # scipy.stats.chi2.sf(chi2, df) is chdtrc(df, chi2) on the support; below it, 1 (chdtrc gives nan).
    return float(special.chdtrc(df, max(chi2, 0.0))) if df > 0 else float("nan")


def _has_fixed(node, depth: int, K: int) -> bool:
    return depth == K or any(_has_fixed(t, depth + 1, K) for t in node.terms)


def _constrained_terms(node, depth: int, cols, H: np.ndarray) -> int:
    """The terms of the equation of `node` (a coefficient at `depth`) that hold fixed effects, counted as
    the constrained model has them (its χ² d.f. are the units less this). The fixed part is Σ_t X_t β_t,
    β_t = Σ_s γ_ts W_s (s: the predictors below t) and γ = Hδ, so β_t = Σ_(k,s) H[ts,k] δ_k W_s: the terms
    needed are the rank of the rows A[t, (k, s)] = H[ts, k]. Unconstrained (H = I) that is the terms
    holding a γ; a tie of two terms' γs of the same W makes two rows equal (one term fewer: the
    summed-predictor model's). A δ whose free γ is outside this equation is not counted (each parameter
    belongs to the equation of its free γ, as at two levels: a γ tied to another equation's leaves
    its own equation's count)."""
    free = _free_rows(H)
    owner = {k: next((i for i in free if H[i, k] == 1.0), None) for k in range(H.shape[1])}
    mine = [i for i, nodes in enumerate(cols.x_path_nodes) if nodes[depth - 1] is node]
    own = [k for k in range(H.shape[1]) if owner[k] in mine]
    terms = list(dict.fromkeys(id(cols.x_path_nodes[i][depth]) for i in mine))
    below = list(dict.fromkeys(tuple(c for _, c in cols.x[i][depth + 1:]) for i in mine))
    A = np.zeros((len(terms), len(own) * len(below)))
    for i in mine:
        t, s = terms.index(id(cols.x_path_nodes[i][depth])), below.index(tuple(c for _, c in cols.x[i][depth + 1:]))
        A[t, [m * len(below) + s for m in range(len(own))]] += H[i, own]
    return int(np.linalg.matrix_rank(A)) if A.size else 0


def _stars(data: LevelsData, gamma: np.ndarray, eb: tuple):
    """For each coefficient of a level-d equation (d < K), keyed by its id: its fitted value per
    level-(d+1) unit from its own equation (`fit`: the fixed part plus the EB of the higher levels)
    and `star` = fit + its own level-(d+1) EB when it is random (R&B's β* one level at a time)."""
    K = data.n_levels
    preds = [np.asarray(a, float) for a in data.predictors]
    parents = [np.asarray(x, dtype=np.int64) for x in data.parents]
    fit, star = {}, {}
    counters = {"g": 0, **{lv: 0 for lv in range(2, K + 1)}}

    def walk(node, depth):
        if depth == K:
            g = gamma[counters["g"]]
            counters["g"] += 1
            return g
        level = depth + 1
        J = preds[level - 1].shape[0]
        f = np.zeros(J)
        if node.random:  # DFS order of the random coefficients is their order in τ_level
            a = counters[level]
            counters[level] += 1
        for t in node.terms:
            v = walk(t, depth + 1)
            if depth + 1 < K:
                v = v[parents[level - 1]]  # level-(level+1) values onto level-`level` units
            x = 1.0 if t.col is None else preds[level - 1][:, t.col]
            f = f + v * x
        fit[id(node)] = f
        star[id(node)] = f + (eb[level - 2][:, a] if node.random else 0.0)
        return star[id(node)]

    for node in data.layout:
        walk(node, 1)
    return fit, star


def _user_W(us: LevelsSolve, tr, level: int, sigma2: float) -> np.ndarray:
    """Wℓ/σ² in the user's columns: [Z|X|y] = [Z̃|X̃|ỹ]·M, M = diag(Aℓ⁻¹ … AK⁻¹, TX⁻¹, 1) with
    TX⁻¹b in y's column (ỹ = y − Xb), so W_user = M'W̃M."""
    st = us.stats
    blocks = [np.linalg.inv(A) for A in tr.As[level - 2:]]
    TXi = np.linalg.inv(tr.TX)
    n = sum(b.shape[0] for b in blocks) + st.p + 1
    M = np.zeros((n, n))
    k = 0
    for b in blocks:
        M[k:k + b.shape[0], k:k + b.shape[0]] = b
        k += b.shape[0]
    M[k:k + st.p, k:k + st.p] = TXi
    M[k:k + st.p, -1] = TXi @ tr.b
    M[-1, -1] = 1.0
    W = us.Ws[level - 3]
    return np.einsum("ba,bcj,cd->adj", M, W, M) / sigma2


def level_tests(data, raw: LevelsStats, us: LevelsSolve, tr, sigma2: float, taus, gamma, eb, fixed_map=None):
    """Reliabilities and χ² tests at every level 2..K (formulas in fit_nested's docstring).
    Returns (reliabilities, chi2) as tuples over the levels. fixed_map: H of --constrain; the solve's
    cross-products above level 2 are then of X·H, so Z'X g (g the γs kept) is Z'XH δ_g with Hδ_g = g."""
    data = as_levels(data)
    K = data.n_levels
    cols = columns_of(data.layout, K)
    qs, p = raw.qs, raw.p
    fit, star = _stars(data, gamma, eb)
    # the coefficient at depth d of every column's path
    zpaths = [[] for _ in range(K - 1)]

    def collect(node, depth, nodes):
        nodes = nodes + (node,)
        if depth < K:
            if node.random:
                zpaths[depth - 1].append(nodes)
            for t in node.terms:
                collect(t, depth + 1, nodes)

    for node in data.layout:
        collect(node, 1, ())
    rels, chis = [], []
    for level in range(2, K + 1):
        q = qs[level - 2]
        if q == 0:
            rels.append(np.full(0, np.nan))
            chis.append([])
            continue
        depth = level - 1
        nodes = [path[-1] for path in zpaths[level - 2]]
        # ỹ = y minus the coefficients of depth `depth` that are not random, at their fitted values:
        # their fixed effects at γ̂ and their higher-level random columns at the EB means
        keep_x = np.array([not path[depth - 1].random for path in cols.x_path_nodes], dtype=float)
        J = raw.J(level)
        if level == 2:
            Szz = raw.ZZ2
            rest = raw.Z2B  # [Z3 … ZK | X | y]
        else:
            W = _user_W(us, tr, level, sigma2)
            Szz, rest = W[:q, :q], W[:q, q:]
        g = gamma * keep_x
        width = p
        if level > 2 and fixed_map is not None:
            g = np.linalg.lstsq(fixed_map, g, rcond=None)[0]
            if not np.allclose(fixed_map @ g, gamma * keep_x, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(gamma).max())):
                raise ModelError(f"--constrain: a tie between a γ under a coefficient random at level {level} and "
                                 f"one under a coefficient that is not: HLM's level-{level} χ² test of the random "
                                 "effects needs the second one's column alone, which the fit on the tied columns "
                                 "does not form; not built: tie fixed effects under coefficients of the same kind")
            width = fixed_map.shape[1]
        zy = rest[:, -1] - np.einsum("qpj,p->qj", rest[:, -1 - width:-1], g)
        k = 0
        for m in range(level + 1, K + 1):
            qm = qs[m - 2]
            if qm:
                keep = np.array([not path[depth - 1].random for path in zpaths[m - 2]], dtype=float)
                ebm = (eb[m - 2] * keep)[raw.ancestor(level, m)] if level < m else None
                zy = zy - np.einsum("qaj,ja->qj", rest[:, k:k + qm], ebm)
            k += qm
        fits = np.array([fit[id(n)][:J] if np.ndim(fit[id(n)]) else np.full(J, fit[id(n)]) for n in nodes])
        if level == 2:
            ols = unit_ols(Szz.transpose(2, 0, 1), zy.T, raw.n2, None)
            ok, bhat = ols.ok, ols.beta
            V = sigma2 * np.diagonal(ols.inv, axis1=1, axis2=2)
        else:
            S = Szz.transpose(2, 0, 1)
            eig = np.linalg.eigvalsh(S)
            ok = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
            Sinv = np.full_like(S, np.nan)
            Sinv[ok] = np.linalg.inv(S[ok])
            bhat = np.einsum("kab,bk->ka", Sinv, zy)
            V = np.diagonal(Sinv, axis1=1, axis2=2)
        tau_d = np.diag(taus[level - 2])
        rels.append(np.array([float(np.mean(tau_d[a] / (tau_d[a] + V[ok, a]))) if ok.any() else np.nan
                              for a in range(q)]))
        chi_l = []
        for a, node in enumerate(nodes):
            dev = bhat[ok, a] - fits[a][ok]
            chi = float(np.sum(dev * dev / V[ok, a]))
            if fixed_map is None:
                terms = sum(_has_fixed(t, depth + 1, K) for t in node.terms)
            else:
                terms = _constrained_terms(node, depth, cols, fixed_map)
            df = int(ok.sum()) - terms
            chi_l.append({"chi2": chi, "df": df, "p": _pchisq_upper(chi, df), "n_units": int(ok.sum())})
        chis.append(chi_l)
    return tuple(rels), tuple(chis)


def boundary_messages(G: np.ndarray, tau: np.ndarray, name: str, labels: list[str], rank: int) -> list[str]:
    """From the certified rank (standardised scale): zero variances and ±1 correlations."""
    out = []
    q = G.shape[0]
    if q == 0 or rank == q:
        return out
    w = np.linalg.eigvalsh(G)
    tol = rank_tolerance(w)
    d = np.diag(G)
    for a in range(q):
        if d[a] <= tol:
            out.append(f"{name}[{a},{a}] estimated as zero")
    for a in range(q):
        for b in range(a + 1, q):
            if d[a] > tol and d[b] > tol:
                r = tau[a, b] / np.sqrt(tau[a, a] * tau[b, b])
                if abs(r) >= BOUNDARY_CORR:
                    out.append(f"correlation of {labels[a]} and {labels[b]} is {'+' if r > 0 else '-'}1")
    if not out:
        out.append(f"{name} is singular (rank {rank} of {q})")
    return out


def estimable(raw: LevelsStats) -> None:
    """Refuse, in one line, models whose parameters cannot be estimated from these data (as lme4
    does: a grouping factor needs more than one level and fewer levels than observations)."""
    N, p, K = raw.N, raw.p, raw.n_levels
    if p == 0:
        raise ModelError(f"the model has no fixed effects (every level-{K} equation is empty)")
    if N <= p:
        raise ModelError(f"only {N} records for {p} fixed effects; the model needs more data")
    letters = "ruvw"
    for level in range(K, 1, -1):
        q, J = raw.qs[level - 2], raw.J(level)
        if q and J < 2:
            raise ModelError(f"the data have {J} level-{level} unit; level-{level} random effects need at least 2 "
                             f"units (remove the {letters[level - 2]} terms or use a model of fewer levels)")
    for level in range(2, K + 1):
        q, J = raw.qs[level - 2], raw.J(level)
        if q and N <= J * q:
            raise ModelError(f"{N} records for {J} level-{level} units with {q} random effect{'s' if q != 1 else ''} "
                             f"each: the level-1 variance cannot be separated from the level-{level} ones (lme4 "
                             f"refuses this too); remove {letters[level - 2]} terms"
                             + (" or use data with more records per level-2 unit" if level == 2 else ""))


def check_within_units(stats: LevelsStats, outcome: str = "the outcome") -> None:
    """Refuse, in one line, an outcome that is an exact linear function of the level-1 predictors
    within every level-2 unit: σ² = 0 and no maximum (unitsolve.within_unit_rss; the columns past
    Z2 get common coefficients, so this finds the cases where even that leaves no residual)."""
    if not stats.q2:
        return
    wt = stats.weighting
    BB = stats.BB.sum(axis=2)  # each level-2 unit's B'B enters with its weight w_j|k, as its projection below
    rss = within_unit_rss(stats.ZZ2.transpose(2, 0, 1), stats.Z2B.transpose(2, 0, 1), BB,
                          None if wt is None else wt.conditional[0])
    refusal = exact_within(rss, float(BB[-1, -1]), outcome)
    if refusal:
        raise ModelError(refusal)


def random_labels(layout, n_levels: int) -> tuple:
    """The random effects of each level in τ order, in the ASCII notation (r0, u01, v012, ...)."""
    out = [[] for _ in range(n_levels - 1)]
    letters = "ruvw"

    def walk(node, depth, idx):
        if depth == n_levels:
            return
        if node.random:
            out[depth - 1].append(letters[depth - 1] + "".join(str(i) for i in idx))
        for i, t in enumerate(node.terms):
            walk(t, depth + 1, idx + (i,))

    for ip, node in enumerate(layout):
        walk(node, 1, (ip,))
    return tuple(out)


def fit_nested(data, reml: bool = False, max_iterations: int = 1000, diagonal=False,
               df_method: str = "hlm", sigma2: float | None = None, fixed_map: np.ndarray | None = None) -> NestedFit:
    """The certified (RE)ML fit over the τ blocks of levels 2..K and HLM's inference.

    Reliabilities, at each level ℓ (R&B 2002 ch. 8; HLM2's formula one level at a time; UNVERIFIED
    against HLM 7), for each random coefficient a of the level-(ℓ−1) equations: the mean over
    level-ℓ units with sufficient data of τℓ_aa / (τℓ_aa + V_aa), V = (Zℓ'R_{ℓ−1}⁻¹Zℓ)⁻¹σ², the
    sampling variance of the GLS estimate of the unit's coefficients from its own data given the
    lower levels' τ and σ² (level 2: OLS, V = σ²(Z2'Z2)⁻¹, units with n_j > q2 and Z2'Z2 non-singular).
    χ² tests (HLM2's formula one level at a time; UNVERIFIED against HLM 7, no reference exists here):
    b̂ = that GLS estimate from ỹ (y minus the level-(ℓ−1) coefficients that are not random, at
    their fixed + higher-level EB values); χ²_a = Σ (b̂_a − b*_a)²/V_aa with b* the coefficient's
    fitted value (its γ's and the higher levels' EB); d.f. = units − the terms of its equation that
    hold fixed effects. EB posterior variances are given γ̂ (as the two-level engine's).

    diagonal: True (every level) or one flag per level 2..K: τℓ diagonal (lme4's `||`), searched and
    certified over the non-negative diagonal. df_method: "hlm" (hlm_df) or "satterthwaite"
    (nested_df.satterthwaite_df, as lmerTest). fixed_map: H of --constrain (γ = Hδ): the fit runs on the
    columns X·H (reduce_standardised) and γ, Cov(γ) = H Cov(δ) H' are given back in every γ, the
    parameters counted as δ, the d.f. by hlm_df with each eliminated γ's equation losing one. sigma2: fixed at this value instead of estimated (the
    working model of an HGLM, nested_glmm.py); the deviance is then at that σ²."""
    reml = bool(reml)
    # one statistics pass: everything below reads the per-level-2-unit moments (moments.LevelsSummary)
    data = summary_of(data)
    if df_method == "satterthwaite" and getattr(data, "weighting", None) is not None:
        raise ModelError("Satterthwaite's d.f. come from the covariance of the variance estimates under the model; "
                         "with sampling weights use the robust (sandwich) SEs with HLM's d.f.")
    K = data.n_levels
    raw = reduce_nested(data)
    qs, p = raw.qs, raw.p
    diagonal = diagonal_blocks(diagonal, K - 1)
    if df_method not in ("hlm", "satterthwaite"):
        raise ValueError(f"df_method must be 'hlm' or 'satterthwaite', not {df_method!r}")
    estimable(raw)
    try:
        std, tr = reduce_standardised(data, diagonal, fixed_map)
    except FloatingPointError:
        raise ModelError("the fixed effects are linearly dependent (collinear predictors, or a predictor that is "
                         "constant where it enters); remove one of them") from None
    check_within_units(std)
    TX = tr.TX
    obj = Objective(std, reml, sigma2)
    Gs, dev, cert, iterations, message, start = search(obj, qs, max_iterations, diagonal)
    try:
        if not np.isfinite(dev):
            raise FloatingPointError
        us = obj.solve(tuple(factor(G) for G in Gs))
    except (FloatingPointError, np.linalg.LinAlgError):
        raise ModelError("the deviance cannot be evaluated at any point the search reached (X'V⁻¹X or a "
                         "per-unit covariance matrix is numerically singular): check for collinear predictors, "
                         "and centre any predictor whose mean is far larger than its spread") from None
    fixed = sigma2 is not None
    sigma2 = us.sigma2_hat(reml) if sigma2 is None else float(sigma2)
    taus = []
    for A, G in zip(tr.As, Gs):
        Gu = A @ G @ A.T
        taus.append(sigma2 * 0.5 * (Gu + Gu.T))
    # back to the user's fixed-effect columns: X̃ = X·TX, ỹ = y − Xb, so γ = TXγ̃ + b
    Pinv = us.Pinv()
    cov = sigma2 * (TX @ Pinv @ TX.T)
    sc = us.scores()
    wt = raw.weighting
    if wt is None:
        robust = TX @ Pinv @ (sc.T @ sc) @ Pinv @ TX.T
    else:  # WeMix's pseudo-ML sandwich, clustered at the top level (sandwich.py)
        robust = TX @ weighted_sandwich(sc, wt.conditional[-1], Pinv) @ TX.T
    gamma = TX @ us.gamma + tr.b
    deviance = obj.deviance_of(us) - (2.0 * tr.log_det_TX if reml else 0.0)
    if fixed_map is not None:  # back to every γ: γ = Hδ, Cov(γ) = H Cov(δ) H'
        H = fixed_map
        gamma, cov, robust = H @ gamma, H @ cov @ H.T, H @ robust @ H.T
        p = H.shape[1]
    # back to the user's columns: Z̃ = ZA, so b = A b̃ and Var b = A Var b̃ A'
    eb, eb_var = [], []
    for A, (m, v) in zip(tr.As, us.posterior_levels(sigma2)):
        eb.append(m @ A.T)
        eb_var.append(np.einsum("ab,jbc,dc->jad", A, v, A))
    rels, chis = level_tests(data, raw, us, tr, sigma2, taus, gamma, eb, fixed_map)
    labels = random_labels(data.layout, K)
    names = tau_names(K)
    boundary = []
    if cert.certified:
        for b in range(K - 1):
            boundary += boundary_messages(Gs[b], taus[b], names[b], list(labels[b]), cert.ranks[b])
    n_params = (0 if fixed else 1) + sum(q if d else q * (q + 1) // 2 for q, d in zip(qs, diagonal)) + (0 if reml else p)
    if cert.certified:
        message = f"at the optimum ({cert.describe()})"
    else:
        message = "not certified: " + "; ".join(cert.failed) + f" [{message}]"
    n_units = {level: raw.J(level) for level in range(2, K + 1)}
    if df_method == "satterthwaite":
        from .nested_df import satterthwaite_df

        df_gamma = satterthwaite_df(us, tr, sigma2, reml, diagonal)
        if fixed_map is not None:
            df_gamma = free_df(df_gamma, fixed_map)
    else:
        df_gamma = hlm_df(data, n_units, raw.N, fixed_map)
    return NestedFit(
        method="REML" if reml else "ML", gamma=gamma, cov_gamma=cov, cov_gamma_robust=robust,
        df_gamma=df_gamma, sigma2=sigma2, tau_pi=taus[0], tau_beta=taus[1],
        deviance=deviance, n_params=n_params, reliability_pi=rels[0], reliability_beta=rels[1],
        chi2_pi=chis[0], chi2_beta=chis[1], eb_pi=eb[0], eb_pi_var=eb_var[0], eb_beta=eb[1],
        eb_beta_var=eb_var[1], certificate=cert, converged=bool(cert.certified), iterations=iterations,
        message=message, boundary=boundary, solve=us, standardisation=tr, evaluations=obj.count, start=start,
        taus=tuple(taus), reliabilities=rels, chi2=chis, eb=tuple(eb), eb_var=tuple(eb_var),
        diagonal=diagonal, df_method=df_method, fixed_map=fixed_map)
