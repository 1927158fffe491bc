"""A cross-classified fit from a formula and a table: the design, the certified fit, and what is
reported of it (HLM 7's HCM2 tables: fixed effects with their standard errors and t-ratios, the τ of
each grouping factor, σ², the deviance), as one record the text, the JSON and the API read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.crossed_design import CrossedDesign, design
from ..engine.crossed import CrossedFit, fit_crossed
from ..engine.nested_fit import BOUNDARY_CORR, tau_names
from ..errors import ModelError
from ..language.formula import CrossedFormula


@dataclass
class CrossedResults:
    formula: str
    model: CrossedFormula
    design: CrossedDesign
    fit: CrossedFit
    source: str
    title: str | None = None

    @property
    def certified(self) -> bool:
        return bool(self.fit.certificate.certified)

    @property
    def failures(self) -> list[str]:
        """What the certificate found, with each τ block named by its factor (the nested search names the
        blocks τπ, τβ, … after the levels of a nested model)."""
        names = tau_names(len(self.fit.factors) + 1)
        out = []
        for line in self.fit.certificate.failed:
            for name, factor in sorted(zip(names, self.fit.factors), key=lambda p: -len(p[0])):
                line = line.replace(name, f"tau({factor})")
            out.append(line)
        return out

    @property
    def t_ratios(self) -> np.ndarray:
        return self.fit.gamma / self.fit.se

    def boundary_notes(self) -> list[str]:
        """What lies on the boundary, in the factors' words: a zero variance, or a ±1 correlation."""
        notes = []
        for name, cols, tau, rank in zip(self.fit.factors, self.fit.columns, self.fit.taus,
                                         self.fit.certificate.ranks):
            before = len(notes)  # each singular factor gets its note, whatever earlier factors said
            q = tau.shape[0]
            if rank == q:
                continue
            if rank == 0:
                notes.append(f"the variance of {name}'s random effects is 0 (on the boundary)")
                continue
            sd = np.sqrt(np.clip(np.diag(tau), 0.0, None))
            for a in range(q):
                if sd[a] == 0 or tau[a, a] <= 1e-12 * max(float(np.max(np.diag(tau))), 1e-300):
                    notes.append(f"the variance of {cols[a]} across {name} is 0 (on the boundary)")
            for a in range(q):
                for b in range(a):
                    if sd[a] > 0 and sd[b] > 0 and abs(tau[a, b] / (sd[a] * sd[b])) >= BOUNDARY_CORR:
                        notes.append(f"the correlation of {cols[b]} and {cols[a]} across {name} is "
                                     f"{'+' if tau[a, b] > 0 else '-'}1 (τ is singular: on the boundary)")
            if len(notes) == before:
                notes.append(f"τ of {name} is singular (rank {rank} of {q}): on the boundary")
        return notes


def analyse_crossed(table, model: CrossedFormula, formula: str, method: str = "REML",
                    max_iterations: int | None = None, title: str | None = None) -> CrossedResults:
    d = design(table, model)
    try:
        fit = fit_crossed(d.y, d.X, d.fixed_names, d.terms, method, max_iterations or 1000)
    except ModelError as exc:
        if str(exc).startswith("the outcome is"):  # name the file and the column
            raise ModelError(f"{table.path}, column {d.outcome}: {exc}") from None
        raise
    return CrossedResults(formula, model, d, fit, str(table.path), title)
