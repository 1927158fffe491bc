"""Stage 3, equations: a two-level model (inline equations, model files, HLM 7 .hlm files) to a ModelSpec.

The equations are read by the one parser of any number of levels (equations_levels.py), in HLM2's
notation: β/γ with the random terms r (level 1) and u (level 2), into the one ModelSpec of any number
of levels (model.py). This module holds HLM2's command files and the run options they carry. The parser knows only the names of the
variables at each level; it never touches data.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

from ..errors import ModelError
from .equations_levels import Variables, build_levels_spec, classify_levels
from .model import Hypothesis, ModelSpec, RunOptions, fixed_effect_labels
from .hlmfile import key_values, level_equation, level_terms, number, whole, yes_no
from .lexer import at_file_line, read_text

CENTERINGS = ("none", "group", "grand")


# ---------------------------------------------------------------- text normalisation and errors

_REPLACEMENTS = {
    "×": "*", "·": "*", "⋅": "*", "∙": "*", "•": ".", "−": "-", "–": "-", "—": "-",
    "β": "b", "Β": "b", "γ": "g", "Γ": "g", "ε": "r", "＝": "=",
}


def contrasts_from_rows(spec: ModelSpec, where: str, label: str, rows: list[tuple[int, list[str]]]) -> Hypothesis:
    """HLM 7's gammaG:c1,...,cF lines: one coefficient per γ in model order; lines sharing G form one test."""
    n = len(fixed_effect_labels(spec))
    out = []
    for line_no, values in rows:
        if len(values) != n:
            raise ModelError(f"{where}: line {line_no}: gamma{label} has {len(values)} values but the model has {n} γs; give one per γ")
        try:
            row = tuple(float(v) for v in values)
        except ValueError:
            raise ModelError(f"{where}: line {line_no}: gamma{label} values must be numbers") from None
        if not all(math.isfinite(v) for v in row):
            raise ModelError(f"{where}: line {line_no}: gamma{label} values must be finite numbers (not nan or inf)")
        if not any(row):
            raise ModelError(f"{where}: line {line_no}: gamma{label} is all zeros, so it tests nothing; give a contrast")
        out.append(row)
    return Hypothesis(label=f"hypothesis {label}", rows=tuple(out))


def normalise(text: str) -> str:
    for a, b in _REPLACEMENTS.items():
        text = text.replace(a, b)
    return text


def build_spec(level1: str, level2: list[str], variables: Variables, options: RunOptions | None = None) -> ModelSpec:
    """A two-level model from its level-1 equation and its level-2 equations, read by the one parser of
    any number of levels (equations_levels.py) in HLM2's notation, β/γ with r/u; HLM's defaults: a
    random intercept, other coefficients fixed with no level-2 predictors."""
    spec = build_levels_spec([[level1] if level1 else [], list(level2)], variables, options)
    for q, eq in enumerate(spec.equations):
        if eq is not None and eq.predictors and not eq.intercept:
            raise ModelError(f"the level-2 equation of b{q} has predictors but no intercept g{q}0; number the terms "
                             f"g{q}0, g{q}1, ... in turn (b{q} = u{q} alone is a random effect with no fixed part)")
    return spec


# ---------------------------------------------------------------- model files

def is_hlm_command_file(path: str | Path, text: str) -> bool:
    if str(path).lower().endswith(".hlm"):
        return True
    return any(line.strip().lower().startswith(("level1:", "level2:")) for line in text.splitlines())


def read_model_file(path: str | Path) -> tuple[str, list[str]]:
    """A plain model file: equations one per line, '#' comments; the one not defining a β is level 1."""
    path = Path(path)
    try:
        level1, level2 = classify_levels(read_text(path).splitlines(), 2)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    if not level1:
        raise ModelError(f"{path}: no level-1 equation found; add a line like 'MATHACH = b0 + r'")
    return level1[0], level2


# HLM 7 command-file keys. Values that switch on something we do not implement are refused by name.
_GUI_KEYS = {
    "fixtau": "how often HLM 7's EM algorithm refreshes τ; hlmcli optimizes directly, so it has no effect",
    "accel": "HLM 7's EM acceleration; no effect, hlmcli optimizes directly",
    "output": "HLM 7's output file; hlmcli writes to stdout or -o",
    "graphgammas": "HLM 7's graphics window; no effect",
    "printvariance-covariance": "HLM 7 prints the γ covariance; hlmcli puts it in the JSON output",
}
_OFF_VALUES = {"level1weight": "none", "level2weight": "none", "varianceknown": "none", "constrain": "n",
               "heterol1var": "n", "lvr": "n", "fixsigma2": "n", "laplace": "n"}


# Keys HLM 7 or its wrappers (e.g. Stata's hlm) write, refused by name because they change the model.
_REFUSED_KEYS = {
    "level3": "a level3: line makes this an HLM3 command file; give three data files or a three-level archive",
    "level3weight": "level-3 weights belong to three-level models; give three data files or a three-level archive",
    "level3deletion": "this is for three-level models; give three data files or a three-level archive",
    "resfil3": "a level-3 residual file belongs to three-level models; give three data files or a three-level archive",
    "fixtau3": "this is for three-level models; give three data files or a three-level archive",
    "agq": "adaptive quadrature is for nonlinear models, which hlmcli does not fit",
    "agqderivlevel": "adaptive quadrature is for nonlinear models, which hlmcli does not fit",
    "autoimpute": "HLM 7's multiple imputation is not implemented; impute the data first",
    "autoimputeit": "HLM 7's multiple imputation is not implemented; impute the data first",
    "lvr-beta": "latent variable regression is not implemented",
    "fishertype": "Fisher-scoring variants are for nonlinear models, which hlmcli does not fit",
    "restrict": "constrained γs are not implemented",
}


def parse_hlm_file(path: str | Path, variables: Variables, allow_outside: bool = False) -> ModelSpec:
    """An HLM 7 command file (.hlm) to a ModelSpec, refusing keys we do not implement."""
    path = Path(path)
    opts: dict = {}
    level1_line = None
    level2_lines: list[tuple[str, int]] = []
    contrasts: dict[str, list[tuple[int, list[str]]]] = {}
    for where, key, value, line_no in key_values(path, read_text(path)):
        if key == "level1":
            if level1_line is not None:
                raise ModelError(f"{where}: a second level1: line (the first is on line {level1_line[1]}); keep one")
            level1_line = (value, line_no)
        elif key == "level2":
            level2_lines.append((value, line_no))
        else:
            _hlm2_option(opts, contrasts, key, value, where, line_no)
    if level1_line is None:
        raise ModelError(f"{path}: no level1: line; add one like level1:MATHACH=INTRCPT1+SES,1+RANDOM")
    level1_eq = _hlm_level1(path, *level1_line)
    coef_names = [n for n in level1_eq[1]]
    level2_eqs = [_hlm_level2(path, v, n, coef_names) for v, n in level2_lines]
    ext = {"spss": ".sav", "stata": ".dta"}.get(str(opts.get("resfiltype", "")).lower(), ".csv")
    from ..io.files import output_from_file

    for level in ("1", "2"):  # names in the file are relative to the file's folder and stay inside it
        if opts.get(f"resfil{level}"):
            name = opts.get(f"resfil{level}name") or f"resfil{level}{ext}"
            opts[f"resfil{level}name"] = str(output_from_file(path, name, f"resfil{level}name", allow_outside))
    spec_options = RunOptions(
        method=opts.get("method"), max_iterations=opts.get("max_iterations"),
        stopval=opts.get("stopval"), title=opts.get("title"),
        prior_deviance=opts.get("prior_deviance"), prior_params=opts.get("prior_params"),
        residuals_l1=(opts.get("resfil1name") or f"resfil1{ext}") if opts.get("resfil1") else None,
        residuals_l2=(opts.get("resfil2name") or f"resfil2{ext}") if opts.get("resfil2") else None,
        homogeneity=opts.get("homogeneity", False), full_output=opts.get("full_output", False),
        ols_units=opts.get("ols_units", 10), weight1=opts.get("weight1"), weight2=opts.get("weight2"),
    )
    spec_options = _hlm_hglm_options(spec_options, opts, path)
    try:
        spec = build_spec(level1_eq[0], level2_eqs, variables, spec_options)
    except ModelError as exc:  # name the level1:/level2: line the quoted equation was read from
        message = str(exc)
        for eq, line_no in [(level1_eq[0], level1_line[1])] + [(e, n) for e, (_, n) in zip(level2_eqs, level2_lines)]:
            if f"in '{eq.strip()}'" in message:
                raise ModelError(f"{path}, line {line_no}: {message}") from None
        raise
    if contrasts and opts.get("hypoth", True):
        tests = tuple(contrasts_from_rows(spec, f"{path}", label, rows) for label, rows in sorted(contrasts.items(), key=lambda kv: int(kv[0])))
        spec = replace(spec, options=_replace(spec.options, hypotheses=tests))
    return spec


def _hlm2_option(opts: dict, contrasts: dict, key: str, value: str, where: str, line_no: int) -> None:
    """One key:value line of an HLM2 command file other than its level lines, into `opts` (or the
    gammaN: contrast rows); keys we do not implement are refused by name."""
    if key == "nonlin":
        _hlm_nonlin(opts, value, where)
    elif key in ("macroit", "microit"):
        opts[key] = whole(value.split(",")[0], where, key)
    elif key in ("stopmacro", "stopmicro"):
        opts[key] = number(value, where, key)
    elif key == "fixsigma2":
        opts["fixsigma2"] = value
    elif key in ("laplace", "laplace6", "emlaplace5"):
        if value.lower().startswith("y"):
            opts["estimation"] = "laplace"
    elif key == "mlf":
        opts["method"] = "ML" if yes_no(value, where, key) else "REML"
    elif key == "numit":
        opts["max_iterations"] = whole(value, where, key, 1, 1_000_000)
    elif key == "stopval":
        opts["stopval"] = number(value, where, key, positive=True)
    elif key == "title":
        opts["title"] = None if value.lower() in ("", "no title") else value
    elif key == "hypoth":
        opts["hypoth"] = yes_no(value, where, key)
    elif re.fullmatch(r"gamma\d{1,4}", key):
        contrasts.setdefault(key[5:], []).append((line_no, [v for v in value.split(",") if v.strip()]))
    elif key == "deviance":
        opts["prior_deviance"] = number(value, where, key)
    elif key == "df":
        opts["prior_params"] = whole(value, where, key, 1, 1_000_000)
    elif key in ("resfil1", "resfil2"):
        opts[key] = yes_no(value, where, key)
    elif key in ("resfil1name", "resfil2name", "resfiltype"):
        opts[key] = value
    elif key == "homvar":
        opts["homogeneity"] = yes_no(value, where, key)
    elif key == "fulloutput":
        opts["full_output"] = yes_no(value, where, key)
    elif key == "lev1ols":
        opts["ols_units"] = whole(value, where, key, 0, 1_000_000)
    elif key in ("level1deletion", "level2deletion"):
        # Stata's hlm wrapper writes level1deletion:none; hlmcli drops records with missing values
        # when the archive is built (--missing now) or per model (--missing analysis).
        if value.lower() not in ("none", "n", "no", ""):
            raise ModelError(f"{where}: '{key}:{value}' is not supported; missing values are handled by "
                             "mdm build --missing now|analysis, so remove the line or set it to none")
    elif key in _GUI_KEYS:
        return
    elif key in ("level1weight", "level2weight") and value.lower() not in ("none", "n", "no", "0", ""):
        opts["weight" + key[5]] = value.split(",")[0].strip()  # the variable name
    elif key == "varianceknown" and value.lower() not in ("n", "no", "none", "0"):
        raise ModelError(f"{where}: '{key}:{value}' is not supported: HLM 7's V-known command lines are not "
                         "documented, so hlmcli does not read them; set varianceknown:none and give the variable on the command line, "
                         f"--known-variance {value.split(',')[0].strip() or 'V'}")
    elif key == "heterol1var" and value.lower() not in ("n", "no", "none", "0"):
        raise ModelError(f"{where}: '{key}:{value}' is not supported: HLM 7's lines for its level-1 variance model are "
                         "not documented, so hlmcli does not read them; set heterol1var:n and give the predictors on "
                         "the command line, e.g. --level1-variance FEMALE")
    elif key == "constrain" and value.lower() not in ("n", "no", "none", "0"):
        raise ModelError(f"{where}: '{key}:{value}' is not supported: the lines HLM 7 writes for its constraints on γ "
                         "are not documented, so hlmcli cannot read them; set constrain:n and give the ties on the command line, e.g. "
                         "--constrain 'g10 = g20'")
    elif key in _OFF_VALUES:
        off = _OFF_VALUES[key]
        if value.lower() not in (off, off[:1], "no", "none", "n", "0"):
            raise ModelError(f"{where}: '{key}:{value}' is not supported by hlmcli; remove the line or set it to {off}")
    elif key in _REFUSED_KEYS:
        raise ModelError(f"{where}: '{key}' is not supported: {_REFUSED_KEYS[key]}; remove the line")
    else:
        raise ModelError(f"{where}: the key '{key[:40]}' is not supported by hlmcli; remove the line")


def _hlm_nonlin(opts: dict, value: str, where: str) -> None:
    """nonlin:n | binomial (Bernoulli) | binomial,TRIALS | poisson | poisson,EXPOSURE (as HLM 7 writes them)."""
    parts = [v.strip() for v in value.split(",")]
    kind = parts[0].lower()
    if kind in ("n", "no", "none", "linear"):
        return
    if kind in ("bernoulli",) or (kind == "binomial" and len(parts) == 1):
        opts["family"] = "bernoulli"
    elif kind == "binomial":
        opts["family"], opts["trials"] = "binomial", parts[1]
    elif kind == "poisson":
        opts["family"] = "poisson"
        if len(parts) > 1 and parts[1]:
            opts["exposure"] = parts[1]
    elif kind == "ordinal":
        try:
            ncat = int(parts[1])
            if not 3 <= ncat <= 9:
                raise ValueError
        except (IndexError, ValueError):
            raise ModelError(f"{where}: nonlin:{value}: an ordinal outcome is written nonlin:ordinal,NCAT with NCAT "
                             "the number of categories, 3 to 9 (as HLM 7)") from None
        opts["family"], opts["ncat"] = "ordinal", ncat
    elif kind == "multinomial":
        try:
            ncat = int(parts[1])
            if not 3 <= ncat <= 9:
                raise ValueError
        except (IndexError, ValueError):
            raise ModelError(f"{where}: nonlin:{value}: a multinomial outcome is written nonlin:multinomial,NCAT with "
                             "NCAT the number of categories, 3 to 9 (as HLM 7)") from None
        opts["family"], opts["ncat"] = "multinomial", ncat
    else:
        raise ModelError(f"{where}: nonlin:{value} is not a level-1 distribution HLM 7 knows "
                         "(n, binomial[,TRIALS], poisson[,EXPOSURE])")


def _hlm_hglm_options(options: RunOptions, opts: dict, path) -> RunOptions:
    """The HGLM settings of a command file. As HLM 7 writes them, fixsigma2:1 marks a nonlinear model
    without over-dispersion, and its absence means over-dispersion."""
    fam = opts.get("family")
    if fam is None:
        fs = str(opts.get("fixsigma2", "n")).lower()
        if fs not in ("n", "no", "none", "0"):
            raise ModelError(f"{path}: 'fixsigma2:{opts['fixsigma2']}' is for nonlinear models; remove the line")
        for k in ("macroit", "microit", "stopmacro", "stopmicro", "estimation"):
            if k in opts:
                raise ModelError(f"{path}: '{k}' is for nonlinear models (nonlin:binomial or nonlin:poisson); "
                                 "remove the line or set nonlin:")
        return options
    fixed = opts.get("fixsigma2")
    over = fixed is None and fam not in ("bernoulli", "ordinal", "multinomial")  # no level-1 scale for these
    if fixed is not None:
        try:
            if abs(float(fixed) - 1.0) > 1e-12:
                raise ValueError
        except ValueError:
            raise ModelError(f"{path}: fixsigma2:{fixed}: a nonlinear model fixes σ² at 1 or estimates it "
                             "(leave the line out for over-dispersion)") from None
    changes = {k: opts[k] for k in ("trials", "exposure", "macroit", "microit", "stopmacro", "stopmicro", "estimation",
                                    "ncat") if k in opts}
    return _replace(options, family=fam, overdispersion=over, **changes)


def _replace(options: RunOptions, **changes) -> RunOptions:
    from dataclasses import replace

    return replace(options, **changes)


def _hlm_level1(path: Path, value: str, line_no: int) -> tuple[str, list[str]]:
    where = f"{path}: line {line_no}"
    if "=" not in value:
        raise ModelError(f"{where}: level1 needs OUTCOME=INTRCPT1+...+RANDOM")
    outcome, rhs = value.split("=", 1)
    # without INTRCPT1 the model has no level-1 intercept (HLM 7 lets the user remove it)
    terms, names, intercept, _ = level_terms(rhs, where, 1, 2)
    return level_equation(outcome.strip(), terms, intercept, False, 1, 2), ["INTRCPT1"] + names


def _hlm_level2(path: Path, value: str, line_no: int, coef_names: list[str]) -> str:
    where = f"{path}: line {line_no}"
    if "=" not in value:
        raise ModelError(f"{where}: level2 needs COEFFICIENT=INTRCPT2+...+random/ or .../")
    coef, rhs = value.split("=", 1)
    coef = coef.strip()
    upper = [c.upper() for c in coef_names]
    if coef.upper() not in upper:
        raise ModelError(f"{where}: level2 line for '{coef}', which is not a level-1 coefficient ({', '.join(coef_names)})")
    q = upper.index(coef.upper())
    terms, _, intercept, random = level_terms(rhs, where, 2, 2)
    if not intercept:  # HLM 7's 'random/' with no INTRCPT2: a random effect with no fixed part
        if terms or not random:
            raise ModelError(f"{where}: without INTRCPT2 a level-2 line can only be '{coef}=random/' "
                             "(a random effect with no fixed part); add INTRCPT2")
        return f"b{q} = u{q}"
    return level_equation((q,), terms, True, random, 2, 2)


def spec_from_inputs(level1: str | None, level2: list[str], model_file: str | None, variables: Variables,
                     options: RunOptions, allow_outside: bool = False) -> ModelSpec:
    """One ModelSpec from whichever form the user gave. Command-line options win over file settings."""
    if model_file and level1:
        raise ModelError(f"{model_file}: give the model either with --model or with -1/-2, not both")
    if model_file:
        text = read_text(Path(model_file))
        if is_hlm_command_file(model_file, text):
            if level2:
                raise ModelError(f"{model_file}: an HLM 7 command file holds the whole model, so -2 equations "
                                 "cannot be added to it; edit its level2: lines or drop --model")
            return parse_hlm_file(model_file, variables, allow_outside)
        level1, level2_file = read_model_file(model_file)
        try:
            return build_spec(level1, level2_file + list(level2), variables, options)
        except ModelError as exc:
            raise at_file_line(model_file, text, exc) from None
    if not level1:
        raise ModelError("no model given; pass -1 'OUTCOME = b0 + ... + r' (and -2 equations), or --model FILE")
    return build_spec(level1, list(level2), variables, options)
