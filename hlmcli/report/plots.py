"""Plots of a fitted model, as HLM 7's graph menus and the seed analyses draw them.

KINDS: equation (predicted outcome against a level-1 predictor, one line per value or quartile of
level-2 predictors), units (each unit's EB line), shrinkage (OLS to EB per unit, against unit size),
caterpillar (sorted EB residuals with 95% posterior intervals), diagnostics (level-1 residuals
against fitted values, Q–Q plot of the EB residuals, Mahalanobis distances against χ² quantiles),
eb-ols (each unit's EB coefficient against its OLS coefficient, with the 45° line, as HLM 7 draws it).

matplotlib is an optional extra (`pip install '.[plot]'` in the source folder); figures are drawn with the
object API (no pyplot state), sized for a paper's column, and saved as PNG, SVG or PDF by extension.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from ..lazy import lazy

pd = lazy("pandas")

from ..errors import DataError, HlmError, ModelError, RefusedOption, install_hint

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from ..results import Results

KINDS = ("equation", "units", "shrinkage", "caterpillar", "diagnostics", "eb-ols")
FORMATS = (".png", ".svg", ".pdf")
_COLUMN = (4.6, 3.4)  # inches: one column of a two-column paper, with room for the legend
_STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
          "xtick.labelsize": 8, "ytick.labelsize": 8}


class MissingExtra(HlmError):
    """An optional dependency is not installed."""


def _figure(size=_COLUMN) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtra("plots need matplotlib, which is not installed; "
                           + install_hint("plot")) from None
    return Figure(figsize=size, layout="constrained")


def _context():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("plots need matplotlib, which is not installed; "
                           + install_hint("plot")) from None
    return matplotlib.rc_context(_STYLE)


def _coef(results: Results, name: str | None, random_only: bool = True) -> str:
    names = results.random_coefficients if random_only else results.analysis.design.spec.coefficient_names()
    if not names:
        raise ModelError("the model has no random coefficients, so there are no unit estimates to plot")
    if name is None:
        return names[0]
    for n in names:
        if n.lower() == name.lower():
            return n
    raise ModelError(f"--coef {name}: not a {'random ' if random_only else ''}coefficient of the model "
                     f"(choose from {', '.join(names)})")


def _axis_name(term) -> str:
    return {"group": f"{term.name} (group-centred)", "grand": f"{term.name} (grand-centred)"}.get(term.centering, term.name)


def _level1_term(results: Results, x: str | None):
    terms = results.analysis.design.spec.level1
    if not terms:
        raise ModelError("the model has no level-1 predictor to put on the x axis")
    if x is None:
        return 1, terms[0]
    for k, t in enumerate(terms, start=1):
        if t.name.lower() == x.lower():
            return k, t
    raise ModelError(f"--x {x}: not a level-1 predictor of the model (choose from {', '.join(t.name for t in terms)})")


def _by_values(values: np.ndarray, name: str) -> list[tuple[float, str]]:
    """The values of a level-2 predictor to draw lines at: its values if it has at most 4, else its quartiles."""
    distinct = np.unique(values)
    if distinct.size <= 4:
        return [(float(v), f"{name} = {v:g}") for v in distinct]
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return [(float(q1), f"{name} = {q1:.3g} (low, 25th pct.)"), (float(q3), f"{name} = {q3:.3g} (high, 75th pct.)")]


def equation_lines(results: Results, x: str | None = None, by: Sequence[str] | None = None,
                   points: int = 50) -> tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]:
    """The equation graph's data: (x label, x grid on the model's scale, [(line label, predicted)]).

    Level-2 predictors not in `by` are held at their means over units; other level-1 predictors at
    zero when centred, else at their mean. `by` defaults to the level-2 predictors of the equations
    of the intercept and of the x coefficient."""
    from ..data.design import predictor_name

    a = results.analysis
    d, spec = a.design, a.design.spec
    k, term = _level1_term(results, x)
    xs = np.linspace(d.L[:, k].min(), d.L[:, k].max(), points)
    level2 = {}  # predictor name -> values over units (the data's own scale)
    for t in spec.predictors(2):
        name = predictor_name(t)
        if name not in level2:
            if t.unit_mean:
                level2[name] = np.add.reduceat(_raw_level1(results, t.name), d.offsets[:-1]) / d.sizes
            else:
                level2[name] = np.asarray(d.level2_values[t.name], dtype=float)
    if by is None:
        by = list(dict.fromkeys(predictor_name(t) for q in (0, k) for t in spec.level2[q].predictors))
    else:
        lookup = {n.lower(): n for n in level2}
        missing = [b for b in by if b.lower() not in lookup]
        if missing:
            raise ModelError(f"--by {missing[0]}: not a level-2 predictor of the model "
                             f"(choose from {', '.join(level2) or 'none'})")
        by = [lookup[b.lower()] for b in by]
    base = {name: float(v.mean()) for name, v in level2.items()}
    for i, t in enumerate(spec.level1, start=1):
        if i != k:
            base[t.name] = 0.0 if t.centering != "none" else float(d.L[:, i].mean())
    lines = []
    for combo in itertools.product(*[_by_values(level2[b], b) for b in by]):
        row = dict(base)
        row.update({b: v for b, (v, _) in zip(by, combo)})
        frame = pd.DataFrame({**{n: np.full(points, v) for n, v in row.items()}, term.name: xs})
        if term.centering == "grand":  # the grid is on the model's scale; predict() wants the data's
            frame[term.name] = xs + d.centering_means[f"{term.name} (level 1)"]
        label = ", ".join(lab for _, lab in combo) or "all units"
        y = results.predict(frame, random_effects=False)
        if y.ndim == 2:  # a multinomial fit: one line per logit, coloured by its category
            cats = results.analysis.categories
            lines += [(f"category {cats[m]:g}, {label}", y[:, m]) for m in range(y.shape[1])]
        else:
            lines.append((label, y))
    return _axis_name(term), xs, lines


def _raw_level1(results: Results, name: str) -> np.ndarray:
    a = results.analysis
    col = results.archive.level1_column(name)
    pos = a.design.record_positions
    return col if pos is None else col[pos]


def plot_equation(results: Results, x: str | None = None, by: Sequence[str] | None = None, **_) -> Figure:
    xlabel, xs, lines = equation_lines(results, x, by)
    fit = results.to_dict() if results.hglm else None
    return _equation_figure(xlabel, xs, lines, results.analysis.design.spec.outcome, results.method,
                            link_scale(fit) if fit else None)


def link_scale(fit: dict) -> str | None:
    """The y axis of an HGLM's equation graph: the linear predictor η on its link's scale. An ordinal
    model's η is that of the lowest category's cumulative probability (γ00 is the first threshold), so
    it falls as the outcome rises: the axis says so, in every link."""
    if fit.get("family") == "ordinal":
        lowest = fit["categories"][0]
        name = {"logit": "log-odds", "probit": "probit", "cloglog": "cloglog"}[fit["link"]]
        return f"{name} of P[{fit['outcome']} ≤ {lowest:g}]"
    if fit.get("family") == "multinomial":
        return f"log-odds against category {fit['reference_category']:g}"
    return {"logit": "log-odds", "log": "log rate"}.get(fit.get("link")) if "family" in fit else None


def _equation_figure(xlabel: str, xs: np.ndarray, lines, outcome: str, method: str, scale: str | None = None) -> Figure:
    fig = _figure()
    ax = fig.add_subplot()
    colors = ["#1b6ca8", "#d1495b", "#2e8b57", "#8d6a9f", "#e08e0b", "#555555"]
    styles = ["-", "--", ":", "-."]
    parts = [label.split(", ", 1) + [""] for label, _ in lines]  # colour: the first `by`; line style: the rest
    firsts = list(dict.fromkeys(p[0] for p in parts))
    rests = list(dict.fromkeys(p[1] for p in parts))
    for (label, y), (first, rest, *_) in zip(lines, parts):
        ax.plot(xs, y, color=colors[firsts.index(first) % len(colors)],
                linestyle=styles[rests.index(rest) % len(styles)], linewidth=1.6, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"Predicted {outcome}" if scale is None else f"Predicted {outcome}, {scale} (η)")
    ax.set_title(f"{outcome}: equation graph ({method})")
    ax.legend(frameon=False, loc="best")
    ax.grid(alpha=0.3)
    return fig


def equation_lines_from_fit(fit: dict, x: str | None, at: dict[str, list[float]],
                            x_range: tuple[float, float], points: int = 50):
    """The equation graph from a saved JSON fit, which holds the γs but not the data: the x range
    (on the model's scale, e.g. group-centred) and the level-2 values to draw lines at are given.
    Level-2 predictors not in `at` are held at 0 on the model's scale (at their grand mean when
    grand-centred); other level-1 predictors at 0."""
    coefs = list(dict.fromkeys(f["coefficient"] for f in fit["fixed_effects"]))
    slopes = [c for c in coefs if c != "INTRCPT1"]
    if not slopes:
        raise ModelError("the model has no level-1 predictor to put on the x axis")
    if x is None:
        x = slopes[0]
    match = [c for c in slopes if c.lower() == x.lower()]
    if not match:
        raise ModelError(f"--x {x}: not a level-1 predictor of the fit (choose from {', '.join(slopes)})")
    x = match[0]
    level2 = {f["predictor"]: f.get("centering") for f in fit["fixed_effects"] if f["predictor"] != "INTRCPT2"}
    lookup = {n.lower(): n for n in level2}
    given = {}
    for name, values in at.items():
        if name.lower() not in lookup:
            raise ModelError(f"--by {name}: not a level-2 predictor of the fit (choose from {', '.join(level2) or 'none'})")
        given[lookup[name.lower()]] = values
    means = fit.get("centering_means") or {}
    xs = np.linspace(x_range[0], x_range[1], points)
    lines = []
    # a multinomial fit's rows carry their logit's category: one line per logit
    categories = list(dict.fromkeys(f.get("category") for f in fit["fixed_effects"]))
    for combo in itertools.product(*[[(n, v) for v in vals] for n, vals in given.items()]):
        values = dict(combo)
        for cat in categories:
            y = np.zeros(points)
            for f in fit["fixed_effects"]:
                if f["coefficient"] not in ("INTRCPT1", x) or f.get("category") != cat:
                    continue
                p = f["predictor"]
                if p == "INTRCPT2":
                    w = 1.0
                elif p in values:
                    w = values[p] - (means.get(f"{p} (level 2)", 0.0) if level2[p] == "grand" else 0.0)
                else:
                    w = 0.0
                y += f["estimate"] * w * (xs if f["coefficient"] == x else 1.0)
            label = ", ".join(f"{n} = {v:g}" for n, v in combo) or "all predictors at 0"
            lines.append((label if cat is None else f"category {cat:g}, {label}", y))
    return x, xs, lines


def plot_equation_from_fit(fit: dict, path: str | os.PathLike | None = None, x: str | None = None,
                           at: dict[str, list[float]] | None = None,
                           x_range: tuple[float, float] = (-2.0, 2.0)) -> Figure:
    """`plot_equation` for a saved JSON fit; see `equation_lines_from_fit`."""
    if path is not None:
        check_output(path)
    xlabel, xs, lines = equation_lines_from_fit(fit, x, at or {}, x_range)
    with _context():
        fig = _equation_figure(f"{xlabel} (the model's scale)", xs, lines, fit["outcome"], fit["method"], link_scale(fit))
        if path is not None:
            save(fig, path)
    return fig


def plot_units(results: Results, x: str | None = None, sample: int | None = None, seed: int = 1, **_) -> Figure:
    a = results.analysis
    d = a.design
    k, term = _level1_term(results, x)
    eb = results.eb.eb
    J = d.n_units
    chosen = np.arange(J)
    if sample is not None and sample < J:
        chosen = np.sort(np.random.default_rng(seed).choice(J, size=sample, replace=False))
    fig = _figure()
    ax = fig.add_subplot()
    xcol = d.L[:, k]
    for j in chosen:
        seg = xcol[d.offsets[j]:d.offsets[j + 1]]
        xx = np.array([seg.min(), seg.max()])
        ax.plot(xx, eb[j, 0] + eb[j, k] * xx, color="#1b6ca8", alpha=0.45, linewidth=0.8)
    outcome = d.spec.outcome
    ax.set_xlabel(_axis_name(term))
    ax.set_ylabel(f"EB-fitted {outcome}")
    what = f"{len(chosen)} of {J} units" if len(chosen) < J else f"all {J} units"
    ax.set_title(f"Each unit's EB line ({what})")
    ax.grid(alpha=0.3)
    return fig


def plot_shrinkage(results: Results, coef: str | None = None, **_) -> Figure:
    name = _coef(results, coef)
    re = results.random_effects()
    n = re["n"].to_numpy()
    ols, ebv, fitted = re[f"ols_{name}"].to_numpy(), re[f"eb_{name}"].to_numpy(), re[f"fitted_{name}"].to_numpy()
    ok = ~np.isnan(ols)
    fig = _figure()
    ax = fig.add_subplot()
    for xj, y0, y1 in zip(n[ok], ols[ok], ebv[ok]):
        if abs(y1 - y0) > 1e-12:
            ax.annotate("", xy=(xj, y1), xytext=(xj, y0),
                        arrowprops={"arrowstyle": "->", "color": "0.45", "lw": 0.6, "shrinkA": 0, "shrinkB": 0})
    ax.plot(n[ok], ols[ok], "o", color="#1b6ca8", markersize=3.5, label="OLS (BLUE)", linestyle="none")
    ax.plot(n[ok], ebv[ok], "o", color="#d1495b", markersize=2.5, label="EB (BLUP)", linestyle="none")
    if np.ptp(fitted) < 1e-12 * max(1.0, abs(fitted[0])):
        ax.axhline(fitted[0], color="#2e8b57", linewidth=1.5, label=f"γ (fixed part) = {fitted[0]:.3f}")
    else:
        ax.plot(n, fitted, "x", color="#2e8b57", markersize=3, label="level-2 prediction", linestyle="none")
    label = "intercept" if name == "INTRCPT1" else f"{name} slope"
    ax.set_xlabel("Unit size (level-1 records)")
    ax.set_ylabel(f"{results.analysis.design.spec.outcome}: {label}" if name == "INTRCPT1" else label)
    ax.set_title("Shrinking from the BLUE to the BLUP")
    ax.legend(frameon=False, loc="best")
    ax.grid(alpha=0.3)
    return fig


def plot_caterpillar(results: Results, coef: str | None = None, **_) -> Figure:
    name = _coef(results, coef)
    re = results.random_effects()
    u = re[f"u_{name}"].to_numpy()
    half = 1.96 * np.sqrt(re[f"postvar_{name}"].to_numpy())
    order = np.argsort(u, kind="stable")
    fig = _figure()
    ax = fig.add_subplot()
    rank = np.arange(1, u.size + 1)
    ax.errorbar(rank, u[order], yerr=half[order], fmt="o", markersize=2, color="#1b6ca8", ecolor="0.6", elinewidth=0.6)
    ax.axhline(0.0, color="0.2", linewidth=0.8)
    ax.set_xlabel(f"Units, by rank of the EB residual ({u.size})")
    ax.set_ylabel(f"EB residual u ({name}) ± 1.96 SD")
    ax.set_title("Caterpillar plot of the EB residuals")
    ax.grid(alpha=0.3)
    return fig


def plot_diagnostics(results: Results, coef: str | None = None, **_) -> Figure:
    from scipy import stats

    name = _coef(results, coef)
    a = results.analysis
    l1 = results.residuals_level1(order="unit")
    re = results.random_effects()
    k = results.random_coefficients.index(name)
    eb = results.eb
    marginal = np.asarray(a.result.tau)[k, k] - eb.u_var[:, k, k]  # Var(û_j) = τ - posterior variance
    with np.errstate(invalid="ignore", divide="ignore"):
        z = re[f"u_{name}"].to_numpy() / np.sqrt(marginal)
    z = np.sort(z[np.isfinite(z)])
    fig = _figure((9.2, 3.1))
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.plot(l1["fitted"], l1["residual"], ".", markersize=1.5, alpha=0.35, color="#1b6ca8")
    ax1.axhline(0.0, color="0.2", linewidth=0.8)
    ax1.set_xlabel(f"Fitted {a.design.spec.outcome} (EB)")
    ax1.set_ylabel("Level-1 residual")
    ax1.set_title("Level-1 residuals")
    theo = stats.norm.ppf((np.arange(1, z.size + 1) - 0.5) / z.size)
    ax2.plot(theo, z, "o", markersize=2.5, color="#1b6ca8")
    ax2.plot(theo, theo, color="0.2", linewidth=0.8)
    ax2.set_xlabel("Normal quantile")
    ax2.set_ylabel(f"Standardised EB residual ({name})")
    ax2.set_title("Q–Q plot of the EB residuals")
    m = np.sort(re["mdist"].to_numpy()[np.isfinite(re["mdist"].to_numpy())])
    q = len(results.random_coefficients)
    chi = stats.chi2.ppf((np.arange(1, m.size + 1) - 0.5) / max(m.size, 1), q)
    ax3.plot(chi, m, "o", markersize=2.5, color="#1b6ca8")
    ax3.plot(chi, chi, color="0.2", linewidth=0.8)
    ax3.set_xlabel(f"χ² quantile ({q} d.f.)")
    ax3.set_ylabel("Mahalanobis distance")
    ax3.set_title("Mahalanobis distances")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
    return fig


def plot_eb_ols(results: Results, coef: str | None = None, **_) -> Figure:
    """HLM 7's EB-against-OLS scatter: each unit's EB coefficient (y) against its OLS coefficient
    (x), with the 45° line on which EB = OLS. Points fall between the line and the level-2
    prediction: the farther, the more the unit's OLS estimate was shrunk (small or noisy units).
    Units whose OLS cannot be computed (too few records, or a predictor constant in the unit)
    have no x: they are left out, and the caption counts them."""
    name = _coef(results, coef)
    re = results.random_effects()
    ols, ebv = re[f"ols_{name}"].to_numpy(dtype=float), re[f"eb_{name}"].to_numpy(dtype=float)
    ok = np.isfinite(ols)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(ols[ok], ebv[ok], "o", color="#1b6ca8", markersize=2.5, linestyle="none")
    if ok.any():
        low = float(min(ols[ok].min(), ebv[ok].min()))
        high = float(max(ols[ok].max(), ebv[ok].max()))
        ax.plot([low, high], [low, high], color="0.2", linewidth=0.8, label="EB = OLS (45° line)")
        ax.legend(frameon=False, loc="upper left")
    label = "intercept" if name == "INTRCPT1" else f"{name} slope"
    ax.set_xlabel(f"OLS estimate of the {label}")
    ax.set_ylabel(f"EB estimate of the {label}")
    ax.set_title("EB against OLS estimates")
    left_out = int((~ok).sum())
    caption = f"{int(ok.sum())} units" + (f"; {left_out} left out (their OLS cannot be computed)" if left_out else "")
    fig.text(0.01, 0.005, caption, fontsize=7, color="0.3", ha="left", va="bottom")
    fig.get_layout_engine().set(h_pad=0.12)
    ax.grid(alpha=0.3)
    return fig


_PLOTTERS = {"equation": plot_equation, "units": plot_units, "shrinkage": plot_shrinkage,
             "caterpillar": plot_caterpillar, "diagnostics": plot_diagnostics, "eb-ols": plot_eb_ols}


def check_output(path: str | os.PathLike) -> None:
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: plots are written as .png, .svg or .pdf; change the extension")


def plot(results: Results, kind: str, path: str | os.PathLike | None = None, **options: Any) -> Figure:
    """Draw `kind` (one of KINDS) for `results`; save it to `path` when given. Returns the Figure."""
    if kind not in _PLOTTERS:
        raise ModelError(f"unknown plot '{kind}'; choose one of {', '.join(KINDS)}")
    if results.hglm and kind != "equation":
        raise RefusedOption(f"a {kind} plot reads the normal model's unit OLS and EB estimates and level-1 residuals; "
                         "for a binary, binomial or count outcome draw the equation graph (on the link scale)")
    if path is not None:
        check_output(path)
    with _context():
        fig = _PLOTTERS[kind](results, **{k: v for k, v in options.items() if v is not None})
        if path is not None:
            save(fig, path)
    return fig


# ---------------------------------------------------------------- three and four levels

LEVELS_KINDS = ("equation", "caterpillar", "diagnostics")
# a three-level HGLM draws the equation graph (η, link scale, without the offset) and the caterpillar plot
HGLM_LEVELS_DIAGNOSTICS = ("a diagnostics plot of a three-level HGLM: its panels are a normal model's (level-1 residuals "
                           "against fitted values, a normal Q-Q plot of the EB residuals); for a binary, binomial or "
                           "count outcome draw the equation graph (on the link scale) or the caterpillar plot")
_LEVELS_REFUSED = {
    "units": ("not yet for k levels: a units plot draws each level-2 unit's EB line, which at three or more levels "
              "also carries the random effects of the units above it; draw the caterpillar or diagnostics plot"),
    "shrinkage": ("a shrinkage plot moves each unit's own OLS estimate to its EB estimate, and HLM3 and HLM4 compute "
                  "no unit OLS estimates (a level-2 unit may have too few records for one); draw the caterpillar plot"),
    "eb-ols": ("an EB-against-OLS plot needs each unit's own OLS estimate, and HLM3 and HLM4 compute no unit OLS "
               "estimates (a level-2 unit may have too few records for one); draw the caterpillar plot"),
}


def _levels_coef(results, name: str | None) -> tuple[int, int, str]:
    """(level, index in that level's τ, name) of a random coefficient; --coef names it by its path
    (INTRCPT1 at level 2, INTRCPT1/INTRCPT2 at level 3, ...); default: the first of level 2."""
    found = [(level, k, n) for level, names in results.random_coefficients.items() for k, n in enumerate(names)]
    if name is None:
        return found[0]
    for level, k, n in found:
        if n.lower() == name.lower():
            return level, k, n
    raise ModelError(f"--coef {name}: not a random coefficient of the model (choose from "
                     f"{', '.join(n for _, _, n in found)})")


def equation_lines_levels(results, x: str | None = None, points: int = 50):
    """The equation graph of a K-level fit: the fixed part against a level-1 predictor, on the model's
    scale. Its intercept and slope are the averages over the records of the fixed part without x and
    of x's coefficient (the products of the γs with the higher-level predictors), so every other
    predictor is held at its average contribution."""
    from types import SimpleNamespace

    from ..levels_results import level1_fitted
    from ..engine.nested import as_levels

    a = results.analysis
    spec = a.levels_spec
    terms = list(spec.level1)
    if not terms:
        raise ModelError("the model has no level-1 predictor to put on the x axis")
    k = 0
    if x is not None:
        hits = [i for i, t in enumerate(terms) if t.name.lower() == x.lower()]
        if not hits:
            raise ModelError(f"--x {x}: not a level-1 predictor of the model (choose from "
                             f"{', '.join(t.name for t in terms)})")
        k = hits[0]
    data = as_levels(a.design.data)
    fit = a.fit
    on_x = np.array([f.names[0] == terms[k].label for f in spec.fixed()])
    zeros = tuple(np.zeros_like(e) for e in fit.eb)
    without_x = SimpleNamespace(gamma=np.where(on_x, 0.0, fit.gamma), eb=zeros)
    intercept = float(level1_fitted(data, without_x)[0].mean())
    ones = data.predictors[0].copy()
    ones[:, k] = 1.0
    slope_data = type(data)(data.y, (ones,) + tuple(data.predictors[1:]), data.parents, data.layout)
    slope = float(level1_fitted(slope_data, SimpleNamespace(gamma=np.where(on_x, fit.gamma, 0.0), eb=zeros))[0].mean())
    column = data.predictors[0][:, k]
    xs = np.linspace(column.min(), column.max(), points)
    return _axis_name(terms[k]), xs, [("other predictors at their averages", intercept + slope * xs)]


def refuse_levels_plot(kind: str, n_levels: int, by=None) -> None:
    """The plots a fit of three or more levels does not draw, refused in one line with the reason
    (before fitting, on the command line)."""
    if kind in _LEVELS_REFUSED:
        raise RefusedOption(f"a {kind} plot of a {n_levels}-level fit: {_LEVELS_REFUSED[kind]}")
    if kind not in LEVELS_KINDS:
        raise ModelError(f"unknown plot '{kind}'; choose one of {', '.join(KINDS)}")
    if kind == "equation" and by:
        raise ModelError("--by draws lines at a level-2 predictor's values in a two-level fit; a fit of three or more "
                         "levels holds the predictors above level 1 at their averages over the records; drop --by")


def plot_levels(results, kind: str, path: str | os.PathLike | None = None, **options: Any) -> Figure:
    """`plot` for a fit of three or four levels: the equation graph, the caterpillar plot of a random
    coefficient at any level, and the diagnostics (level-1 residuals, Q–Q plot of the EB residuals)."""
    refuse_levels_plot(kind, results.n_levels, options.get("by"))
    h = getattr(results.analysis, "hglm", None)
    if h is not None and kind == "diagnostics":
        raise RefusedOption(HGLM_LEVELS_DIAGNOSTICS)
    if path is not None:
        check_output(path)
    with _context():
        if kind == "equation":
            xlabel, xs, lines = equation_lines_levels(results, options.get("x"))
            scale = None if h is None else {"logit": "log-odds", "log": "log rate"}[h.link]
            fig = _equation_figure(xlabel, xs, lines, results.analysis.spec.outcome, results.method, scale)
        elif kind == "caterpillar":
            fig = _caterpillar_levels(results, options.get("coef"))
        else:
            fig = _diagnostics_levels(results, options.get("coef"))
        if path is not None:
            save(fig, path)
    return fig


def _eb_levels(results, coef):
    level, k, name = _levels_coef(results, coef)
    fit = results.analysis.fit
    return level, name, fit.eb[level - 2][:, k], fit.eb_var[level - 2][:, k, k], float(fit.taus[level - 2][k, k])


def _caterpillar_levels(results, coef) -> Figure:
    level, name, u, var, _ = _eb_levels(results, coef)
    half = 1.96 * np.sqrt(var)
    order = np.argsort(u, kind="stable")
    fig = _figure()
    ax = fig.add_subplot()
    ax.errorbar(np.arange(1, u.size + 1), u[order], yerr=half[order], fmt="o", markersize=2, color="#1b6ca8",
                ecolor="0.6", elinewidth=0.6)
    ax.axhline(0.0, color="0.2", linewidth=0.8)
    ax.set_xlabel(f"Level-{level} units, by rank of the EB residual ({u.size})")
    ax.set_ylabel(f"EB residual ({name}) ± 1.96 SD")
    ax.set_title(f"Caterpillar plot of the level-{level} EB residuals")
    ax.grid(alpha=0.3)
    return fig


def _diagnostics_levels(results, coef) -> Figure:
    from scipy import stats

    level, name, u, var, tau = _eb_levels(results, coef)
    l1 = results.residuals_level1()
    with np.errstate(invalid="ignore", divide="ignore"):
        z = u / np.sqrt(tau - var)  # Var(û) = τ - posterior variance
    z = np.sort(z[np.isfinite(z)])
    fig = _figure((6.2, 3.1))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(l1["fitted"], l1["residual"], ".", markersize=1.5, alpha=0.35, color="#1b6ca8")
    ax1.axhline(0.0, color="0.2", linewidth=0.8)
    ax1.set_xlabel(f"Fitted {results.analysis.spec.outcome} (EB)")
    ax1.set_ylabel("Level-1 residual")
    ax1.set_title("Level-1 residuals")
    theo = stats.norm.ppf((np.arange(1, z.size + 1) - 0.5) / max(z.size, 1))
    ax2.plot(theo, z, "o", markersize=2.5, color="#1b6ca8")
    ax2.plot(theo, theo, color="0.2", linewidth=0.8)
    ax2.set_xlabel("Normal quantile")
    ax2.set_ylabel(f"Standardised level-{level} EB residual ({name})")
    ax2.set_title("Q–Q plot of the EB residuals")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> None:
    """Write atomically (files.write_with); the format follows the extension. PNGs at 200 dpi; no
    timestamps, and SVG ids from a fixed salt, so the same figure gives the same bytes."""
    import matplotlib

    from ..io.files import write_with

    suffix = os.path.splitext(str(path))[1].lower()
    metadata = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}[suffix[1:]]

    def writer(tmp: str) -> None:
        # svg.hashsalt: without it the clip-path and glyph ids are random (uuid4) on every run
        with matplotlib.rc_context({"svg.hashsalt": "hlmcli"}):
            fig.savefig(tmp, dpi=200, metadata=metadata, format=suffix[1:])

    write_with(path, writer)


# ---------------------------------------------------------------- cross-classified fits

CROSSED_KINDS = ("caterpillar",)
_CROSSED_REFUSED = ("a cross-classified fit has no level-2 units that hold their records (every group of one factor "
                    "is split across the other's groups), so no unit lines, unit OLS estimates or one equation per "
                    "unit to draw; draw the caterpillar plot (one panel per grouping factor)")


def refuse_crossed_plot(kind: str) -> None:
    if kind not in KINDS:
        raise ModelError(f"unknown plot '{kind}'; choose one of {', '.join(KINDS)}")
    if kind not in CROSSED_KINDS:
        raise RefusedOption(f"a {kind} plot of a cross-classified fit: {_CROSSED_REFUSED}")


def plot_crossed(results, kind: str, path: str | os.PathLike | None = None, **options: Any) -> Figure:
    """The caterpillar plot of a cross-classified fit: one panel per random term (grouping factor), each
    group's EB estimate of the coefficient `coef` (default the intercept) ± 1.96 posterior SD, by rank."""
    refuse_crossed_plot(kind)
    if path is not None:
        check_output(path)
    coef = options.get("coef")
    fit = results.analysis.fit
    panels = []
    for b, (key, cols) in enumerate(zip(results.keys, fit.columns)):
        want = coef or "INTRCPT"
        hits = [k for k, c in enumerate(cols) if c.lower() == want.lower()]
        if hits:
            panels.append((b, key, hits[0], cols[hits[0]]))
    if not panels:
        known = sorted({c for cols in fit.columns for c in cols})
        raise ModelError(f"--coef {coef}: no grouping factor has a random coefficient of that name; they are "
                         f"{', '.join(known)}")
    variances = results.posterior_variances()
    with _context():
        fig = _figure((6.4, 2.6 * len(panels)))
        for i, (b, key, k, name) in enumerate(panels, start=1):
            u = fit.ranef[b][:, k]
            half = 1.96 * np.sqrt(np.clip(variances[b][:, k, k], 0.0, None))
            order = np.argsort(u, kind="stable")
            ax = fig.add_subplot(len(panels), 1, i)
            ax.errorbar(np.arange(1, u.size + 1), u[order], yerr=half[order], fmt="o", markersize=2,
                        color="#1b6ca8", ecolor="0.6", elinewidth=0.6)
            ax.axhline(0.0, color="0.2", linewidth=0.8)
            ax.set_xlabel(f"Groups of {key}, by rank of the EB estimate ({u.size})")
            ax.set_ylabel(f"EB ({name}) ± 1.96 SD")
            ax.grid(alpha=0.3)
        fig.suptitle("Caterpillar plot of the EB estimates, per grouping factor")
        if path is not None:
            save(fig, path)
    return fig
