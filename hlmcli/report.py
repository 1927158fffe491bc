"""Stage 8, report: results to HLM 7-style fixed-width text and to JSON. Pure formatting, no statistics."""

from __future__ import annotations

import json
import math

from . import __version__
from .archive import Archive, summarize


def _num(x: float, width: int = 12, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return f"{'.':>{width}}"
    return f"{x:>{width}.{digits}g}"


def dumps_json(obj) -> str:
    """Deterministic JSON: sorted keys where order is not meaningful is left to the caller; no NaN."""
    return json.dumps(_clean(obj), indent=1, ensure_ascii=False) + "\n"


def _clean(obj):
    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj)) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return _clean(obj.item())
    return obj


# ---------------------------------------------------------------- mdm info

def archive_info(archive: Archive, unit: str | None = None) -> dict:
    sizes = archive.unit_sizes
    info = {
        "tool": "hlmcli", "version": __version__,
        "archive": archive.path.name if archive.path else None,
        "format_version": 1,
        "id": {"level1": archive.id_names[0], "level2": archive.id_names[1], "kind": archive.id_kind},
        "missing": archive.missing,
        "n_level1": archive.n_level1, "n_level2": archive.n_units,
        "records_per_unit": {"min": int(sizes.min()), "max": int(sizes.max()), "mean": float(sizes.mean())},
        "sources": [{"role": s.role, "file": s.name, "format": s.format, "encoding": s.encoding,
                     "size": s.size, "sha256": s.sha256} for s in archive.sources],
        "notes": archive.notes,
        "level1": [v.__dict__ for v in summarize(archive.level1, archive.level1_names)],
        "level2": [v.__dict__ for v in summarize(archive.level2, archive.level2_names)],
        "value_labels": archive.value_labels,
    }
    if unit is not None:
        j = archive.unit_ids.index(unit)
        info["unit"] = {"id": unit, "n": int(sizes[j]),
                        "level2": {n: float(archive.level2[k, j]) for k, n in enumerate(archive.level2_names)}}
    return info


def archive_info_text(info: dict) -> str:
    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''}".rstrip())
    w("")
    for s in info["sources"]:
        enc = f", encoding {s['encoding']}" if s["encoding"] else ""
        w(f"  {s['role']} file: {s['file']} ({s['format']}{enc}, {s['size']} bytes, sha256 {s['sha256'][:16]})")
    w(f"  unit id: {info['id']['level1']} (level-1), {info['id']['level2']} (level-2), stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    notes = info["notes"]
    if notes.get("dropped_missing"):
        w(f"  level-1 records dropped for missing values: {notes['dropped_missing']}")
    if notes.get("dropped_unmatched"):
        w(f"  level-1 records dropped with no level-2 unit: {notes['dropped_unmatched']}")
    if notes.get("units_without_records"):
        w(f"  level-2 units left out (no level-1 records): {notes['units_without_records']}")
    rpu = info["records_per_unit"]
    w(f"  level-1 records: {info['n_level1']}")
    w(f"  level-2 units:   {info['n_level2']}")
    w(f"  records per unit: {rpu['min']} to {rpu['max']} (mean {rpu['mean']:.1f})")
    for level, title in (("level1", "LEVEL-1"), ("level2", "LEVEL-2")):
        w("")
        w(f"          {title} DESCRIPTIVE STATISTICS")
        w("")
        w(f"{'VARIABLE NAME':>16} {'N':>9} {'MEAN':>12} {'SD':>12} {'MINIMUM':>12} {'MAXIMUM':>12}")
        for v in info[level]:
            w(f"{v['name']:>16} {v['n']:>9d} {_num(v['mean'])} {_num(v['sd'])} {_num(v['minimum'])} {_num(v['maximum'])}")
    if info["value_labels"]:
        w("")
        w("  value labels:")
        for name, labels in info["value_labels"].items():
            w(f"    {name}: " + ", ".join(f"{k} = {v}" for k, v in labels.items()))
    if "unit" in info:
        u = info["unit"]
        w("")
        w(f"  unit {u['id']}: {u['n']} level-1 records")
        for name, value in u["level2"].items():
            w(f"    {name} = {value:.6g}")
    return "\n".join(out) + "\n"
