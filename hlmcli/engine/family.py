"""The level-1 sampling model of an HGLM: one Family object per family.

Every family here uses its canonical link, so with η the linear predictor (offset included):

    ℓ_i(η) = y_i η − n_i b(η) + c_i,   ∂ℓ/∂η = y_i − μ_i,   −∂²ℓ/∂η² = W_i = n_i b''(η),
    ∂W_i/∂η = κ3_i = n_i b'''(η),

where μ_i = n_i b'(η) is the expected outcome. These four per-record vectors are all that PQL,
Laplace and adaptive quadrature need (hglm.py).

Constants (the c_i above), all kept so that the deviance −2ℓ is the full log-likelihood and
matches R's `dbinom`/`dpois` summed with log = TRUE:
  * Bernoulli: b(η) = log(1 + e^η), n_i = 1, c_i = 0;
  * Binomial with trials m_i: n_i = m_i, c_i = log C(m_i, y_i) = lgamma(m+1) − lgamma(y+1) − lgamma(m−y+1);
  * Poisson with exposure m_i: η = log m_i + x'β (the offset), b(η) = e^η, n_i = 1,
    c_i = −log y_i! = −lgamma(y+1). (The offset is part of η, so log m_i enters through y_i η.)
Gaussian is listed for completeness: the linear engine fits it, not this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from .special_functions import expit, gammaln

from ..errors import DataError


@dataclass(frozen=True)
class Family:
    name: str  # gaussian | bernoulli | binomial | poisson
    link: str  # identity | logit | log

    @property
    def ratio_name(self) -> str:
        return "odds_ratio" if self.link == "logit" else "rate_ratio"

    # ------------------------------------------------------------------ per-record derivatives
    def derivatives(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray | None):
        """(∂ℓ/∂η, W, κ3) per record."""
        if self.link == "logit":
            p = expit(eta)
            w = p * (1.0 - p)
            nn = 1.0 if n is None else n
            return y - nn * p, nn * w, nn * w * (1.0 - 2.0 * p)
        if self.link == "log":
            mu = np.exp(eta)
            return y - mu, mu, mu
        raise ValueError(self.link)

    def evaluate(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray | None, second: bool = True):
        """(ℓ_i without c_i, ∂ℓ/∂η, W, κ3) per record from one exponential and one logarithm: the
        Laplace and quadrature inner loops' kernel (with second=False, W and κ3 are None).

        Logit: with e = exp(−|η|), log(1 + e^η) = max(η, 0) + log(1 + e) and p = ½ + sign(η)(1/(1+e) − ½).
        log(1 + e) in place of log1p(e) and 1 − 1/(1 + e) for p when η < 0 are exact to an absolute
        1e-16 per record, which is all a sum of N terms (ℓ) or a score (y − p) can use; log1p and
        a branch cost twice as much here."""
        if self.link == "logit":
            # in place where possible: this runs once per node and Newton step over all N records
            a = np.abs(eta)
            e = np.negative(a)
            np.exp(e, out=e)  # e^−|η|
            ope = e + 1.0
            sp = np.log(ope)
            a += eta
            a *= 0.5
            sp += a  # softplus(η) = max(η, 0) + log(1 + e)
            inv = np.divide(1.0, ope, out=ope)
            w = k3 = None
            if second:
                w = e * inv
                w *= inv  # p(1 − p) = e/(1 + e)² for either sign of η
            p = inv
            p -= 0.5
            np.copysign(p, eta, out=p)
            p += 0.5
            if second:
                k3 = 1.0 - 2.0 * p
                k3 *= w
            ll = np.multiply(y, eta, out=a)
            if n is not None:
                sp *= n
                p *= n
                if second:
                    w *= n
                    k3 *= n
            ll -= sp
            dl = np.subtract(y, p, out=sp)
            return ll, dl, w, k3
        mu = np.exp(eta)
        return y * eta - mu, y - mu, mu, mu

    def taylor(self, ev, d: np.ndarray, n: np.ndarray | None):
        """(ℓ, ℓ', W, κ3) at η + d from their values ev at η, by Taylor series with κ4 = ∂κ3/∂η
        (logit: W(1 − 6W/n), log: W): ℓ to d⁴, ℓ' to d³, W to d², κ3 to d. For |d| ≤ 1e-4 the
        errors are below 1e-17 (ℓ, ℓ'), 1e-13 (W) and 1e-9 (κ3) per record: used only for the
        difference Hessian, whose own step error is larger."""
        ll, dl, W, k3 = ev
        if self.link == "logit":
            k4 = W - 6.0 * W * W / (1.0 if n is None else n)
        else:
            k4 = W
        return (ll + d * (dl - d * (0.5 * W + d * (k3 / 6.0 + d * (k4 / 24.0)))),
                dl - d * (W + d * (0.5 * k3 + d * (k4 / 6.0))),
                W + d * (k3 + 0.5 * d * k4),
                k3 + d * k4)

    def mean(self, eta: np.ndarray, n: np.ndarray | None) -> np.ndarray:
        if self.link == "logit":
            return (1.0 if n is None else n) * expit(eta)
        return np.exp(eta)

    def loglik_terms(self, eta: np.ndarray, y: np.ndarray, n: np.ndarray | None) -> np.ndarray:
        """ℓ_i without c_i (the constant: see constant())."""
        if self.link == "logit":
            nn = 1.0 if n is None else n
            # log(1 + e^η) = max(η, 0) + log1p(e^−|η|), cheaper than logaddexp and as exact
            return y * eta - nn * (np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta))))
        return y * eta - np.exp(eta)

    def constant(self, y: np.ndarray, n: np.ndarray | None) -> float:
        """Σ c_i (see the module docstring)."""
        if self.name == "binomial":
            return float(np.sum(gammaln(n + 1) - gammaln(y + 1) - gammaln(n - y + 1)))
        if self.name == "poisson":
            return float(-np.sum(gammaln(y + 1)))
        return 0.0

    def start(self, y: np.ndarray, n: np.ndarray | None, offset: np.ndarray | None) -> np.ndarray:
        """A starting linear predictor (offset excluded) from the data alone."""
        if self.link == "logit":
            nn = 1.0 if n is None else n
            p = (y + 0.5) / (nn + 1.0)
            return np.log(p / (1 - p))
        eta = np.log(y + 0.5)
        return eta - (offset if offset is not None else 0.0)

    # ------------------------------------------------------------------ checks on the data
    def check(self, y, n, exposure, where: dict) -> None:
        """Refuse impossible outcomes in one line naming file, column and first row (1-based).
        `where` maps 'file', 'outcome', 'trials', 'exposure' to names and 'rows' to record rows."""
        rows = where["rows"]

        def fail(mask, column, problem):
            k = int(np.flatnonzero(mask)[0])
            raise DataError(f"{where['file']}, column {column}, row {int(rows[k]) + 1}: {problem}")

        out = where["outcome"]
        if self.name == "bernoulli":
            bad = (y != 0) & (y != 1)
            if bad.any():
                fail(bad, out, f"the value {y[bad][0]:g} is not 0 or 1, as --family bernoulli needs")
        if self.name in ("binomial", "poisson", "negbinomial"):
            bad = (y < 0) | (y != np.round(y))
            if bad.any():
                fail(bad, out, f"the count {y[bad][0]:g} is negative or not a whole number")
        if self.name == "binomial":
            bad = (n <= 0) | (n != np.round(n))
            if bad.any():
                fail(bad, where["trials"], f"the number of trials {n[bad][0]:g} is not a positive whole number")
            bad = y > n
            if bad.any():
                fail(bad, out, f"{y[bad][0]:g} successes are more than the {n[bad][0]:g} trials in {where['trials']}")
        if exposure is not None:
            bad = ~(exposure > 0)
            if bad.any():
                fail(bad, where["exposure"], f"the exposure {exposure[bad][0]:g} is not positive (its log is the offset)")


GAUSSIAN = Family("gaussian", "identity")
BERNOULLI = Family("bernoulli", "logit")
BINOMIAL = Family("binomial", "logit")
POISSON = Family("poisson", "log")
# the data checks of a count (the NB2 kernel itself, with its θ, is engine/negbin.py's)
NEGBINOMIAL = Family("negbinomial", "log")

FAMILIES = {f.name: f for f in (GAUSSIAN, BERNOULLI, BINOMIAL, POISSON, NEGBINOMIAL)}


def family(name: str) -> Family:
    return FAMILIES[name.lower()]
