"""Linear constraints on the fixed effects, Cγ = 0 (HLM 7's constrain: "γ10 = γ20"), as a reparametrisation.

The constrained γs form the null space of C, so γ = Hδ with δ the free γs. With X_j = L_jB_j the
constrained model is y = X Hδ + Zu + r, i.e. the unconstrained model on the design B_jH: the GLS,
the profiled deviance, the search and the certificate all run on it unchanged, and

    γ̂ = Hδ̂,   Cov(γ̂) = H Cov(δ̂) H'   (singular: the constrained directions have no variance).

H is read off the reduced row echelon form of C taken from the right, so each restriction eliminates
the *last* γ it names and the earlier ones stay free: "γ10 = γ20" keeps δ = γ10, and the column of
δ in X H is X10 + X20, exactly the model refitted by hand with the two predictors summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ModelError

# A pivot smaller than this (relative to the largest entry of C) is a dependent restriction.
_RANK_TOL = 1e-10


@dataclass(frozen=True)
class ConstraintBasis:
    """γ = H δ: H (p, p') with δ the free γs `free` (indices into γ); `tied` the γs each eliminated
    γ is written in (eliminated index -> the free indices it depends on)."""

    H: np.ndarray
    free: tuple[int, ...]
    eliminated: tuple[int, ...]

    @property
    def n_constraints(self) -> int:
        return len(self.eliminated)

    def involved(self) -> tuple[int, ...]:
        """The γs a restriction names: the eliminated ones and the free ones they are written in."""
        rows = self.H[list(self.eliminated)]
        partners = {int(self.free[k]) for k in np.flatnonzero(np.any(rows != 0, axis=0))}
        return tuple(sorted(set(self.eliminated) | partners))

    def expand(self, delta: np.ndarray) -> np.ndarray:
        """γ = Hδ."""
        return self.H @ delta

    def expand_cov(self, cov: np.ndarray) -> np.ndarray:
        """Cov(Hδ) = H Cov(δ) H'."""
        return self.H @ cov @ self.H.T


def constraint_basis(C: np.ndarray, what: str = "--constrain") -> ConstraintBasis:
    """H and the free γs from the restriction rows C (r, p), Cγ = 0: Gauss-Jordan elimination on the
    columns taken from the last, so each pivot is the last γ its row names. Dependent rows are
    refused (they say the same thing twice), as is a set that leaves no γ free."""
    C = np.atleast_2d(np.asarray(C, dtype=float))
    r, p = C.shape
    A = C[:, ::-1].copy()  # columns reversed: pivots land on the last γs
    scale = max(float(np.abs(A).max()), 1e-300)
    pivots: list[int] = []
    row = 0
    for col in range(p):
        if row == r:
            break
        k = row + int(np.argmax(np.abs(A[row:, col])))
        if abs(A[k, col]) <= _RANK_TOL * scale:
            continue
        A[[row, k]] = A[[k, row]]
        A[row] /= A[row, col]
        for i in range(r):
            if i != row and A[i, col] != 0.0:
                A[i] -= A[i, col] * A[row]
        pivots.append(col)
        row += 1
    if row < r:
        raise ModelError(f"{what}: the restrictions are linearly dependent (one follows from the others); drop the "
                         "redundant ones")
    eliminated = sorted(p - 1 - c for c in pivots)
    free = [j for j in range(p) if j not in eliminated]
    if not free:
        raise ModelError(f"{what}: the restrictions leave no fixed effect free; constrain fewer γs")
    # each pivot row reads γ_e + Σ_free a_f γ_f = 0, so γ_e = -Σ a_f γ_f
    H = np.zeros((p, len(free)))
    for k, f in enumerate(free):
        H[f, k] = 1.0
    for i, c in enumerate(pivots):
        e = p - 1 - c
        for k, f in enumerate(free):
            a = A[i, p - 1 - f]
            if a != 0.0:
                H[e, k] = -a
    return ConstraintBasis(H=H, free=tuple(free), eliminated=tuple(eliminated))


def tied_df(df: np.ndarray, H: np.ndarray) -> np.ndarray:
    """The d.f. of each γ made one per parameter: γs that are multiples of one free γ (that γ and the
    ones tied to it) are one parameter with one t-ratio, so they take one d.f., the smallest of their
    equations' (a γ of a fixed slope tied to the mean of a random slope has the random slope's J − 1,
    not N − ...). A γ written in several free γs takes the smallest of theirs and its own."""
    df = np.asarray(df, dtype=float)
    out = df.copy()
    single = np.count_nonzero(H, axis=1) == 1
    for k in range(H.shape[1]):
        members = np.flatnonzero(single & (H[:, k] != 0.0))
        if members.size:
            out[members] = df[members].min()
    for i in np.flatnonzero(~single):
        out[i] = min(df[i], *(out[np.flatnonzero(single & (H[:, k] != 0.0))].min() for k in np.flatnonzero(H[i])))
    return out
