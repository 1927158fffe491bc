"""`hlmcli mdm info` of archives of three and more levels, as text, from the statistics the archive
module gathers (archive_levels.archive3_info, archive_levels_info); the two-level text is report.py's."""

from __future__ import annotations

from .report import archive_source_lines, descriptive_statistics_lines, printable, value_label_lines


def archive3_info_text(info: dict) -> str:
    """`hlmcli mdm info` of a three-level archive (archive_levels.archive3_info), as text."""
    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''} (three levels, HLM3)".rstrip())
    w("")
    out += archive_source_lines(info)
    w(f"  unit ids: {info['id']['level2']} (level-2), {info['id']['level3']} (level-3), stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    notes = info["notes"]
    for key, text in (("dropped_missing", "level-1 records dropped for missing values"),
                      ("dropped_unmatched", "level-1 records dropped with no level-2 unit"),
                      ("level2_units_without_records", "level-2 units left out (no level-1 records)"),
                      ("level3_units_without_units", "level-3 units left out (no level-2 units)")):
        if notes.get(key):
            w(f"  {text}: {notes[key]}")
    w(f"  level-1 records: {info['n_level1']}")
    w(f"  level-2 units:   {info['n_level2']}")
    w(f"  level-3 units:   {info['n_level3']}")
    r, u = info["records_per_unit"], info["units_per_level3_unit"]
    w(f"  records per level-2 unit: {r['min']} to {r['max']} (mean {r['mean']:.1f})")
    w(f"  level-2 units per level-3 unit: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    out += descriptive_statistics_lines(info, 3)
    out += value_label_lines(info)
    if "unit" in info:
        un = info["unit"]
        w("")
        if un["level"] == 3:
            w(f"  level-3 unit {un['id']}: {un['n_level2']} level-2 units, {un['n']} level-1 records")
            values = un["level3"]
        else:
            w(f"  level-2 unit {un['id']}: {un['n']} level-1 records")
            values = un["level2"]
        for name, value in values.items():
            w(f"    {name} = {value:.6g}")
    return "\n".join(printable(line) for line in out) + "\n"


def archive_levels_info_text(info: dict) -> str:
    """`hlmcli mdm info` of an archive of K levels (archive_levels.archive_levels_info), as text."""
    K = info["levels"]
    out = []
    w = out.append
    w(f"hlmcli {info['version']} - MDM archive {info['archive'] or ''} ({K} levels, HLM{K})".rstrip())
    w("")
    out += archive_source_lines(info)
    ids = ", ".join(f"{info['id'][f'level{k}']} (level-{k})" for k in range(2, K + 1))
    w(f"  unit ids: {ids}, stored as {info['id']['kind']}")
    w(f"  missing data deleted: {'when the archive was built' if info['missing'] == 'now' else 'at analysis time, per model'}")
    for key, value in info["notes"].items():
        if key != "level1_records_read" and value:
            w(f"  {key.replace('_', ' ')}: {value}")
    w(f"  level-1 records: {info['n_level1']}")
    for k in range(2, K + 1):
        w(f"  level-{k} units:   {info[f'n_level{k}']}")
    for k in range(2, K + 1):
        u = info["units_per_unit"][f"level{k}"]
        what = "records" if k == 2 else f"level-{k - 1} units"
        w(f"  {what} per level-{k} unit: {u['min']} to {u['max']} (mean {u['mean']:.1f})")
    out += descriptive_statistics_lines(info, K)
    out += value_label_lines(info)
    if "unit" in info:
        un = info["unit"]
        w("")
        if un["level"] == 2:
            w(f"  level-2 unit {un['id']}: {un['n']} level-1 records")
        else:
            w(f"  level-{un['level']} unit {un['id']} (ids are looked up from the top level down): "
              f"{un['n_below']} level-{un['level'] - 1} units, {un['n']} level-1 records")
        for name, value in un[f"level{un['level']}"].items():
            w(f"    {name} = {value:.6g}")
    return "\n".join(printable(line) for line in out) + "\n"
