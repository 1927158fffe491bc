"""The lexer both front ends share (the equations of any number of levels, and HLM 7's command files):
the notation's letters for K levels, the shape checks that keep parsing linear in the input, the one-line syntax error with its caret,
splitting a right side into its terms, and reading a model file's text."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError

# HLM 7's notation, decided by the number of levels K alone
COEF_LETTERS = "pbgd"  # the coefficients of the level-1, 2, 3, 4 equations (three and more levels)
GREEK = "πβγδ"
RANDOM_LETTERS = "eruv"  # the random term at level 1, 2, 3, 4


def coefficient_letters(K: int) -> str:
    """The ASCII letter of the coefficients on the right side of the level-1..K equations: HLM 7's
    notation follows the number of levels alone (β/γ for two, π/β/γ for three, π/β/γ/δ for four)."""
    return "bg" if K == 2 else COEF_LETTERS[:K]


def random_letters(K: int) -> str:
    """The random term of the level-1..K equations: r/u for two levels, e/r/u for three, e/r/u/v for four."""
    return "ru" if K == 2 else RANDOM_LETTERS[:K]


# Bounds that keep parsing linear in the input: no real equation comes near them.
MAX_EQUATION_CHARS = 10_000
MAX_NESTING = 32
MAX_INDEX_DIGITS = 4


def check_shape(text: str) -> None:
    """One linear pass before any parsing: length, balanced parentheses, nesting depth."""
    if len(text) > MAX_EQUATION_CHARS:
        raise ModelError(f"an equation of {len(text)} characters is longer than the {MAX_EQUATION_CHARS} "
                         "hlmcli reads; write one term per predictor")
    depth = 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise EquationSyntaxError(text[:200], min(i, 199), f"parentheses nested more than {MAX_NESTING} deep",
                                          "remove the redundant parentheses")
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise EquationSyntaxError(text, i, "a ')' without its '('", "balance the parentheses")
    if depth:
        raise EquationSyntaxError(text, len(text), f"{depth} '(' not closed", "balance the parentheses")


def parse_index(digits: str, what: str, equation: str) -> int:
    """A coefficient subscript, refused when implausibly long (int() of thousands of digits raises)."""
    if len(digits) > MAX_INDEX_DIGITS:
        raise ModelError(f"in '{equation.strip()[:80]}': the subscript of {what}{digits[:8]}... has {len(digits)} digits; "
                         "number the coefficients 0, 1, 2, ...")
    return int(digits)


class EquationSyntaxError(ModelError):
    def __init__(self, equation: str, position: int, problem: str, hint: str):
        pos = max(0, min(position, len(equation)))
        super().__init__(f"in '{equation.strip()}' at character {pos + 1}: {problem}; {hint}")
        self.detail = f"    {equation}\n    {' ' * pos}^"


def right_side_terms(text: str, rhs: str, base: int):
    """Each top-level term of an equation's right side (which starts at character `base` of `text`)
    with its position, refusing an empty one."""
    for raw, off in split_top(rhs):
        piece, pos = strip_piece(raw, base + off)
        if not piece:
            raise EquationSyntaxError(text, pos, "empty term", "remove the extra '+'")
        yield piece, pos


def split_top(text: str, sep: str = "+") -> list[tuple[str, int]]:
    """Split on `sep` outside parentheses, keeping each piece's start offset."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append((text[start:i], start))
            start = i + 1
    parts.append((text[start:], start))
    return parts


def strip_piece(piece: str, offset: int) -> tuple[str, int]:
    lead = len(piece) - len(piece.lstrip())
    return piece.strip(), offset + lead


def unwrap(text: str) -> str:
    text = text.strip()
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            return False
    return depth == 0


def split_star(piece: str, pos: int):
    """A term at its first '*' outside parentheses: 'b1*(SES)' -> ('b1', '(SES)', offset of the
    predictor in the equation); a term with no '*' -> (the term, None, None)."""
    depth = 0
    for i, ch in enumerate(piece):
        depth += (ch == "(") - (ch == ")")
        if ch == "*" and depth == 0:
            pred = piece[i + 1:]
            return piece[:i].strip(), pred, pos + i + 1 + (len(pred) - len(pred.lstrip()))
    return piece.strip(), None, None


def read_text(path: Path) -> str:
    """A model or command file's text (UTF-8, else Windows-1252, as HLM 7 writes them)."""
    from ..io.files import read_small_bytes

    if not path.exists() and not path.is_symlink():
        raise ModelError(f"{path}: no such model file; check the path")
    raw = read_small_bytes(path, "model file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252")


def at_file_line(path, text: str, exc: ModelError) -> ModelError:
    """`exc`, raised by an equation of the model file `path`, naming the file and the equation's line:
    the line whose text (comment removed) is the equation the message quotes ("in '...'")."""
    message = str(exc)
    if message.startswith(f"{path}"):
        return exc
    where = f"{path}"
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line and (f"in '{line}'" in message or f"'{line[:80]}'" in message):
            where = f"{path}, line {number}"
            break
    out = ModelError(f"{where}: {message}")
    if getattr(exc, "detail", None):
        out.detail = exc.detail
    return out

