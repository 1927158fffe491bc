"""Reading HLM's own output (HLM 5, 6 and 7; text or HTML) into numbers: the model's method, σ², τ, γ with
its model-based and robust standard errors and d.f., the reliabilities, the variance components' χ²
tests, the deviance or log-likelihood, and the number of iterations.

HLM's layouts differ by version (`sigma^2`, `Sigma_squared`, `σ2`; `B0`/`G00` or `β0`/`γ00`; HTML tables
in HLM 7), so the text is first brought to one plain form: HTML cells become spaces, rows and line
breaks become new lines, Greek letters their ASCII names. The readers then work line by line on that form.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[Ee][-+]?\d+)?"


@dataclass
class FixedRow:
    coefficient: str  # the level-1 coefficient's name: INTRCPT1, SES, ...
    predictor: str    # INTRCPT2, SECTOR, ...
    gamma: str        # the printed label in ASCII: G00, G10, ...
    estimate: float
    se: float
    t: float | None
    df: float | None


@dataclass
class HLMOutput:
    version: str | None            # "7", "6.04", ...
    method: str | None             # "REML" or "ML"
    iterations: int | None
    stopped: str | None            # HLM's stopping line, as printed
    sigma2: float | None
    tau_labels: list[str] = field(default_factory=list)  # coefficient names, in τ's order
    tau: list[list[float]] = field(default_factory=list)
    reliability: dict[str, float] = field(default_factory=dict)
    fixed: list[FixedRow] = field(default_factory=list)
    fixed_robust: list[FixedRow] = field(default_factory=list)
    chi2: dict[str, tuple[float, float]] = field(default_factory=dict)  # effect -> (d.f., χ²)
    deviance: float | None = None
    loglik: float | None = None
    n_params: int | None = None

    @property
    def major(self) -> int | None:
        return int(self.version.split(".")[0]) if self.version else None


_GREEK = {"β": "B", "γ": "G", "π": "P", "σ": "sigma", "τ": "tau", "χ": "chi", "Β": "B", "Γ": "G", "μ": "mu",
          "φ": "phi", "λ": "lambda", "η": "eta", "δ": "D", "ε": "e", "²": "2"}


def plain_text(raw: str) -> str:
    """HLM's HTML or text output as plain lines in ASCII names."""
    if re.search(r"<\s*(html|table|br|h\d|td)\b", raw, re.I):
        raw = re.sub(r"<(?![A-Za-z/!])", "&lt;", raw)  # '<0.001' in a cell is text, not a tag
        raw = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", raw)
        raw = re.sub(r"(?i)<\s*(br|/tr|/h\d|/table|/p|/div|tr|h\d)\b[^>]*>", "\n", raw)
        raw = re.sub(r"(?i)<\s*/?td\b[^>]*>", "  ", raw)
        raw = re.sub(r"(?i)<\s*sub\b[^>]*>", "", raw)
        raw = re.sub(r"<[^>]+>", "", raw)
        raw = html.unescape(raw).replace("\xa0", " ")
    for greek, ascii_name in _GREEK.items():
        raw = raw.replace(greek, ascii_name)
    return raw.replace("\r", "")


def _num(text: str) -> float:
    return float(text)


def read_hlm_output(path: str | Path) -> HLMOutput:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: {exc.strerror or exc}; check the path") from None
    for encoding in ("utf-8", "cp1252", "latin-1"):
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    out = parse_hlm_output(text)
    if out.sigma2 is None and not out.fixed:
        raise DataError(f"{p}: no HLM results found (no σ² and no fixed-effects table); give HLM's output file "
                        "(the .txt or .html that HLM writes)")
    return out


def parse_hlm_output(raw: str) -> HLMOutput:
    text = plain_text(raw)
    lines = [ln.rstrip() for ln in text.split("\n")]
    out = HLMOutput(version=_version(text), method=_method(text), iterations=None, stopped=None, sigma2=None)
    its = re.findall(r"(?i)iteration\s+(\d+)", text)
    finals = re.findall(r"(?i)(?:final results\s*-\s*iteration|\*+\s*iteration)\s+(\d+)", text)
    out.iterations = int(finals[-1]) if finals else (int(its[-1]) if its else None)
    m = re.search(r"(?i)(iterations stopped[^\n]*)", text)
    out.stopped = m.group(1).strip() if m else None
    m = None
    for m in re.finditer(rf"(?im)^\s*(?:sigma\s*\^?\s*2|sigma_squared|sigma2)\s*=\s*({NUMBER})", text):
        pass
    out.sigma2 = _num(m.group(1)) if m else None
    out.tau_labels, out.tau = _tau(lines)
    out.reliability = _reliability(lines)
    out.fixed, out.fixed_robust = _fixed_tables(lines)
    out.chi2 = _chi2(lines)
    m = None
    for m in re.finditer(rf"(?i)deviance\s*=\s*({NUMBER})", text):
        pass
    out.deviance = _num(m.group(1)) if m else None
    m = None
    for m in re.finditer(rf"(?i)value of the (?:log-)?likelihood function at iteration\s+\d+\s*=\s*({NUMBER})", text):
        pass
    out.loglik = _num(m.group(1)) if m else None
    m = re.search(r"(?i)number of estimated parameters\s*=\s*(\d+)", text)
    out.n_params = int(m.group(1)) if m else None
    return out


def _version(text: str) -> str | None:
    m = re.search(r"(?i)HLM\d?\.EXE\s*\((\d+\.\d+)", text) or re.search(r"(?i)HLM\d\s*\((\d+\.\d+)", text) \
        or re.search(r"(?i)HLM\d?\s+VERSION\s+(\d+\.\d+)", text) or re.search(r"(?i)\bHLM\s+(\d)\b", text)
    return m.group(1) if m else None


def _method(text: str) -> str | None:
    m = re.search(r"(?i)method of estimation:\s*(restricted|full)", text)
    return None if not m else ("REML" if m.group(1).lower() == "restricted" else "ML")


_LABEL = r"([A-Za-z_][\w.]*)(?:\s+slope)?\s*,\s*[BP]\s*(\d+)"


def _tau(lines: list[str]) -> tuple[list[str], list[list[float]]]:
    """The first τ matrix after the final results: rows 'NAME,B0   v v ...' (a row may be split over lines)."""
    start = None
    for i, line in enumerate(lines):
        s = line.strip()
        if re.fullmatch(r"(?i)tau(\s*\(.*\))?|tau\s+\S.*", s) and "correlation" not in s.lower() and "error" not in s.lower():
            start = i
    if start is None:
        return [], []
    # the last plain 'tau' heading is the final one; its rows follow
    labels, rows = [], []
    head = lines[start].strip()
    rest = [head[3:]] + lines[start + 1:]
    for line in rest:
        s = line.strip()
        if not s:
            continue
        if re.match(r"(?i)(tau|standard error|random level|the value|----)", s):
            break
        found = list(re.finditer(rf"{_LABEL}((?:\s+{NUMBER})+)", s))
        if not found and rows:
            break
        for m in found:
            labels.append(m.group(1))
            rows.append([_num(x) for x in m.group(3).split()])
    q = len(labels)
    if q == 0 or any(len(r) != q for r in rows):
        return [], []
    return labels, rows


def _reliability(lines: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    on = False
    for line in lines:
        s = line.strip()
        if re.search(r"(?i)reliability estimate", s):
            on, out = True, {}
            continue
        if on:
            m = re.match(rf"^{_LABEL}\s+({NUMBER})$", s)
            if m:
                out[m.group(1)] = _num(m.group(3))
            elif s and not s.startswith("-"):
                on = False
    return out


def _fixed_tables(lines: list[str]) -> tuple[list[FixedRow], list[FixedRow]]:
    """The model-based and robust tables 'Final estimation of fixed effects' (rows may be split over lines)."""
    tables: list[tuple[bool, list[FixedRow]]] = []
    current: list[FixedRow] | None = None
    coef = None
    buffer = ""
    for line in lines + [""]:
        s = line.strip()
        if re.search(r"(?i)final estimation of fixed effects", s):
            current = []
            tables.append((False, current))
            coef, buffer = None, ""
            continue
        if current is None:
            continue
        if re.search(r"(?i)robust standard errors", s) and tables:
            tables[-1] = (True, current)
            continue
        if re.search(r"(?i)final estimation of variance components|statistics for|the outcome variable", s):
            current = None
            continue
        m = re.match(r"(?i)^for\s+(.+?)(?:\s+slope)?\s*,\s*[BP]\s*\d+", s)
        if m:
            coef, buffer = m.group(1).strip(), ""
            continue
        buffer = f"{buffer} {s}".strip() if buffer else s
        # HLM 5/6 name a two-level model's coefficients P (level 1) and B (level 2) in some runs: 'INTRCPT2, B00'
        m = re.match(rf"^([A-Za-z_][\w.]*)\s*,\s*([GB]\s*[\d,]+)\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})", buffer)
        if m and coef is not None:
            current.append(FixedRow(coef, m.group(1), m.group(2).replace(" ", ""), _num(m.group(3)), _num(m.group(4)),
                                    _num(m.group(5)), _num(m.group(6))))
            buffer = ""
        elif not re.match(r"^[A-Za-z_][\w.]*\s*,\s*[GB]", buffer):
            buffer = ""
    model = next((rows for robust, rows in tables if not robust and rows), [])
    robust = next((rows for is_robust, rows in tables if is_robust and rows), [])
    return model, robust


def _chi2(lines: list[str]) -> dict[str, tuple[float, float]]:
    """'INTRCPT1, u0   sd   variance   df   chi2   p' rows of the variance-components table."""
    out: dict[str, tuple[float, float]] = {}
    on = False
    for line in lines:
        s = line.strip()
        if re.search(r"(?i)final estimation of variance components", s):
            on, out = True, {}
            continue
        if on:
            m = re.match(rf"^([A-Za-z_][\w.]*)(?:\s+slope)?\s*,\s*U\s*\d+\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})", s, re.I)
            if m:
                out[m.group(1)] = (_num(m.group(4)), _num(m.group(5)))
            if re.search(r"(?i)deviance|statistics for", s):
                on = False
    return out
