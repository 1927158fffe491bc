"""HLM 7 MDM templates (.mdmt): the build instructions HLM 7 users already have."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ..errors import DataError
from ..io.readers import FORMAT_ALIASES


@dataclass(frozen=True)
class MdmTemplate:
    path: Path
    level1_file: Path
    level2_file: Path
    format: str | None
    id1: str
    id2: str
    level1_vars: tuple[str, ...]
    level2_vars: tuple[str, ...]
    missing: str
    mdm_name: str | None
    # HLM3 templates (l3fname:, *begin l3vars, level3id:), as Reardon's hlmmkmdm3.ado writes them for HLM 6
    level3_file: Path | None = None
    id3: str | None = None
    level3_vars: tuple[str, ...] = ()


def _locate(template: Path, written: str, line_no: int) -> Path:
    """A path as written in the template; if absent (e.g. D:\\... from Windows), its base name beside the template."""
    if not written or "\x00" in written or len(written) > 4096:
        raise DataError(f"{template}: line {line_no}: '{written[:40]}' is not a usable file name; fix the path")
    as_given = Path(written)
    if not as_given.is_absolute() and not PureWindowsPath(written).drive:
        as_given = template.parent / written
    try:
        if as_given.exists():
            return as_given
        base = PureWindowsPath(written).name if ("\\" in written or ":" in written) else Path(written).name
        beside = template.parent / base
        if base and beside.exists():
            return beside
    except OSError as exc:
        raise DataError(f"{template}: line {line_no}: '{written[:80]}' cannot be used ({exc.strerror}); fix the path") from None
    raise DataError(
        f"{template}: line {line_no}: data file not found at '{written}' nor at '{beside}'; "
        "put the file beside the template or fix the path"
    )


def parse_template(path: str | os.PathLike) -> MdmTemplate:
    from ..io.files import read_small_bytes

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{path}: no such template file; check the path")
    raw = read_small_bytes(path, "template")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")
    values: dict[str, tuple[str, int]] = {}
    section = None
    vars_by_section: dict[str, list[str]] = {"l1vars": [], "l2vars": [], "l3vars": []}
    ids: dict[str, str] = {}
    ids3: dict[str, str] = {}
    for line_no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        low = line.lower()
        if low.startswith("*begin"):
            section = low.split(None, 1)[1].strip() if len(low.split()) > 1 else ""
            if section not in vars_by_section:
                raise DataError(f"{path}: line {line_no}: unknown section '{line}'; expected *begin l1vars, l2vars or l3vars")
            continue
        if low.startswith("*end"):
            section = None
            continue
        if section:
            if low.startswith("level2id:"):
                ids[section] = line.split(":", 1)[1].strip()
            elif low.startswith("level3id:"):
                ids3[section] = line.split(":", 1)[1].strip()
            else:
                vars_by_section[section].append(line)
            continue
        if ":" not in line:
            raise DataError(f"{path}: line {line_no}: expected key:value, got '{line}'")
        key, value = line.split(":", 1)
        values[key.strip().lower()] = (value.strip(), line_no)
    for key in ("l1fname", "l2fname"):
        if key not in values:
            raise DataError(f"{path}: the template has no {key}: line; add one naming the data file")
    three = "l3fname" in values
    if three and not ids3.get("l3vars"):
        raise DataError(f"{path}: an HLM3 template (l3fname:) needs a level3id: line in *begin l3vars")
    if "l1vars" not in ids or "l2vars" not in ids:
        raise DataError(f"{path}: the template needs a level2id: line in both *begin l1vars and *begin l2vars")
    rawtype = values.get("rawdattype", ("", 0))[0].lower()
    fmt = FORMAT_ALIASES.get(rawtype) if rawtype else None
    if rawtype and fmt is None:
        raise DataError(f"{path}: line {values['rawdattype'][1]}: rawdattype '{rawtype}' is not supported; use spss, sas, stata or ascii")
    missing = values.get("timeofdeletion", ("now", 0))[0].lower() or "now"
    if missing not in ("now", "analysis"):
        raise DataError(f"{path}: line {values['timeofdeletion'][1]}: timeofdeletion must be now or analysis")
    l1 = _locate(path, *values["l1fname"])
    l2 = _locate(path, *values["l2fname"])
    return MdmTemplate(
        path=path, level1_file=l1, level2_file=l2, format=fmt,
        id1=ids["l1vars"], id2=ids["l2vars"],
        level1_vars=tuple(vars_by_section["l1vars"]), level2_vars=tuple(vars_by_section["l2vars"]),
        missing=missing, mdm_name=values.get("mdmname", (None, 0))[0],
        level3_file=_locate(path, *values["l3fname"]) if three else None, id3=ids3.get("l3vars") if three else None,
        level3_vars=tuple(vars_by_section["l3vars"]),
    )
