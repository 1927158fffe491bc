"""The two-level Laplace/AGQ fit over blocks of whole units: the records in memory, spilled to a
unit-sorted Parquet file and read back on every pass, or persisted on a Dask cluster.

Why it is exact: the deviance d(γ, Λ) = −2 Σ_j log I_j (hglm.py), its gradient and the per-unit
scores of the sandwich are sums over units, and each unit's mode û_j, H_j and posterior depend on
that unit's records only. So a pass over blocks that each hold whole units, each block evaluated by
hglm.Conditional itself, and the block results summed, is the same function: there is one copy of
the Laplace maths. The state carried between passes is per unit (the warm-start modes b̂, J × q),
never per record.

PQL (the start of the Laplace search, hglm.ml_start) runs over the blocks too: its linear
predictor is kept as its parameters (LinearPredictor: the start marker, or γ and b̂), and each
macro iteration's working model is the blocks' per-unit statistics joined. So the search takes the
in-memory fit's steps. Two things differ, below what the fit can resolve:
  * the difference Hessian evaluates the family exactly instead of by Taylor series from the last
    point (Conditional.taylor keeps per-record values, which a pass does not);
  * the sums over blocks are taken in another order (rounding).
MLResult.eta is a LinearPredictor, not per-record values: a level-1 residual file needs the records.

A source of blocks is any object with `J` (units), `template` (a GLMData of its first block, for
q, p, K, the family and the random columns), `B` (J, K, p) and `map(fn)`: the list of fn(j0, block)
over its blocks in unit order, block a GLMData of units j0 .. j0 + block.J − 1. fn is a picklable
function of its arguments (the Dask source ships it to the workers).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import partial

import numpy as np

from .hglm import Conditional, GLMData, eta_change, start_eta, working_model
from .sufficient import UnitStats, model_stats

_UNIT_FIELDS = [f.name for f in fields(UnitStats)]


class MemoryBlocks:
    """A GLMData in memory cut into blocks of whole units (`units` per block): the in-memory source,
    and the reference the spilled and Dask sources are tested against."""

    def __init__(self, data: GLMData, units: int | None = None):
        units = data.J if units is None else max(1, int(units))
        self.J, self.B = data.J, data.B
        self.blocks = [(j0, slice_units(data, j0, min(data.J, j0 + units))) for j0 in range(0, data.J, units)]
        self.template = self.blocks[0][1]

    def map(self, fn):
        return [fn(j0, d) for j0, d in self.blocks]


def slice_units(data: GLMData, j0: int, j1: int) -> GLMData:
    """The records of units j0 .. j1 − 1 as a GLMData of their own (unweighted)."""
    r0, r1 = int(data.offs[j0]), int(data.offs[j1])

    def cut(v):
        return None if v is None else v[r0:r1]
    base = getattr(data.family, "base", data.family)
    return GLMData(base, data.L[r0:r1], data.B[j0:j1], data.offs[j0:j1 + 1] - r0, data.rnd, data.y[r0:r1],
                   cut(data.trials), cut(data.offset))


# ---------------------------------------------------------------- the one pass over a block

def block_pass(j0: int, d: GLMData, what: str, gamma, lam, nodes: int, b_all):
    """One block's share of a pass, by hglm.Conditional on the block's records alone: `what` is
    'deviance', 'gradient', 'scores' (gradient and each unit's scores) or 'posterior'. b_all is the
    (J, q) warm start of every unit; the block's rows are returned updated."""
    cond = Conditional(d, nodes)
    cond.b = np.array(b_all[j0:j0 + d.J], dtype=float)
    if what == "posterior":
        return (*cond.posterior(gamma, lam), cond.unsolved)
    cond.keep_units = what == "scores"
    out = cond.evaluate(gamma, lam, grad=what != "deviance")
    return out, cond.b, getattr(cond, "unit_scores", None)


class BlockedConditional:
    """hglm.Conditional's interface (evaluate, gradient, deviance, posterior, b, count, keep_units,
    unit_scores, taylor) over a source of blocks: each pass sums the blocks' deviances and gradients."""

    def __init__(self, data: "BlockedGLMData", nodes: int = 1):
        self.data = data
        self.nodes = nodes
        self.b = np.zeros((data.J, data.q))
        self.count = 0
        self.taylor = False  # read by hglm.difference_hessian; the blocks evaluate exactly (module docstring)
        self.base = None
        self.keep_units = False
        self._memo = (None,)

    def _pass(self, what, gamma, lam):
        self.count += 1
        return self.data.source.map(partial(block_pass, what=what, gamma=np.asarray(gamma, float),
                                            lam=np.asarray(lam, float), nodes=self.nodes, b_all=self.b))

    def evaluate(self, gamma, lam, grad: bool = True):
        what = "scores" if self.keep_units else ("gradient" if grad else "deviance")
        key = (np.asarray(gamma, float).tobytes(), np.asarray(lam, float).tobytes(), what)
        if self._memo[0] == key:
            return self._memo[1]
        parts = self._pass(what, gamma, lam)
        b = np.empty_like(self.b)
        j0 = 0
        for out, bk, _ in parts:
            b[j0:j0 + bk.shape[0]] = bk
            j0 += bk.shape[0]
        self.b = b
        if what == "deviance":
            out = float(sum(p[0] for p in parts))
        else:
            out = (float(sum(p[0][0] for p in parts)), sum(p[0][1] for p in parts), sum(p[0][2] for p in parts))
        if what == "scores":
            self.unit_scores = (np.concatenate([p[2][0] for p in parts]), np.concatenate([p[2][1] for p in parts]))
        self._memo = (key, out)
        return out

    def deviance(self, gamma, lam):
        return self.evaluate(gamma, lam, grad=False)

    def gradient(self, gamma, lam):
        return self.evaluate(gamma, lam, grad=True)

    def posterior(self, gamma, lam):
        parts = self._pass("posterior", gamma, lam)
        # the units whose mode search did not finish, read by the fit's certificate as in memory
        self.unsolved = np.concatenate([p[2] for p in parts])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class LinearPredictor:
    """η of every record, kept as its parameters: the family's start (PQL's first η), or Xγ + Zb + offset."""

    gamma: np.ndarray | None = None
    b: np.ndarray | None = None

    def of(self, j0: int, d: GLMData) -> np.ndarray:
        """The block's records' η."""
        if self.gamma is None:
            return start_eta(d)
        return d.eta(self.gamma, None if self.b is None else self.b[j0:j0 + d.J])


def _block_change(j0, d, new, old):
    en = new.of(j0, d)
    return eta_change(d, en, old.of(j0, d))


def _block_unit_stats(j0, d, eta):
    return working_model(d, eta.of(j0, d))[1]


class BlockedGLMData:
    """What hglm.ml_fit reads of a GLMData, from a source of blocks: the sizes, the family, B, the
    Laplace/AGQ objective (BlockedConditional) and `reduce`, a sum over the blocks (the GLM start and
    the τ = 0 deviance). Unweighted: sampling weights are not carried by the blocked sources."""

    w1 = None
    w2 = None

    def __init__(self, source):
        t = source.template
        self.source = source
        self.family, self.rnd, self.B = t.family, t.rnd, source.B
        self.J, self.K, self.p, self.q = source.J, t.K, t.p, t.q
        self.N = int(sum(source.map(_records)))

    @property
    def const(self) -> float:
        """Σ_i c_i, the family's constant of the log-likelihood (one pass, the first time it is asked)."""
        if not hasattr(self, "_const"):
            self._const = float(self.reduce(_const))
        return self._const

    def reduce(self, fn):
        """Σ over the blocks of fn(block): fn of a GLMData, a number or arrays."""
        return sum(self.source.map(partial(_apply, fn=fn)))

    def conditional(self, nodes: int = 1) -> BlockedConditional:
        return BlockedConditional(self, nodes)

    def eta(self, gamma, b) -> LinearPredictor:
        return LinearPredictor(np.array(gamma, dtype=float), None if b is None else np.array(b, dtype=float))

    def start_eta(self) -> LinearPredictor:
        return LinearPredictor()

    def eta_change(self, new: LinearPredictor, old: LinearPredictor) -> tuple[bool, float, float]:
        """hglm.eta_change over the blocks: all finite, the largest change, the largest |η|."""
        parts = self.source.map(partial(_block_change, new=new, old=old))
        if not all(p[0] for p in parts):
            return False, np.inf, np.inf
        return True, max(p[1] for p in parts), max(p[2] for p in parts)

    def working_model(self, eta: LinearPredictor):
        """PQL's working model at η: each block's per-unit statistics, joined in unit order."""
        units = self.source.map(partial(_block_unit_stats, eta=eta))
        unit = UnitStats(**{f: (np.concatenate([getattr(u, f) for u in units])
                                if isinstance(getattr(units[0], f), np.ndarray) else getattr(units[0], f))
                            for f in _UNIT_FIELDS})
        return model_stats(unit, self.B, np.isin(np.arange(self.K), self.rnd)), unit


def _records(j0, d):
    return d.N


def _const(d):
    return d.const


def _apply(j0, d, fn):
    return fn(d)


def blocked_fit(data: BlockedGLMData, estimation: str = "laplace", nodes: int | None = None,
                diagonal: bool = False):
    """The Laplace or AGQ fit over blocks: hglm.ml_fit / agq_fit themselves (module docstring)."""
    from .hglm import agq_fit, ml_fit, ml_start

    start = ml_start(data, diagonal=diagonal)
    if estimation == "agq":
        return agq_fit(data, nodes, start, diagonal=diagonal)
    return ml_fit(data, 1, start, diagonal=diagonal)
