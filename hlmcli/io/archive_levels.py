"""The archives of K ≥ 3 levels (HLM 7's HLM3 and HLM4 MDM): their build options and reading their
files; the merge itself is merge.py's, one for any number of levels, into the one archive type of
archive.py (same format, loader and cache as two levels).

Which files carry which ids: the level-1 file carries the level-2 id; the level-ℓ file (1 < ℓ < K)
carries the level-ℓ id and, usually, the level-(ℓ+1) id of its unit, else a lower file gives that
link (at three levels: the level-1 file carries the level-3 id); the level-K file carries the level-K
id; one file may serve several levels. Each level's ids are unique over the whole data, as HLM's MDM
requires.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .archive import Archive, archive_from_merge
from ..errors import DataError


@dataclass(frozen=True)
class BuildOptions3:
    id2: str
    id3: str
    keep1: tuple[str, ...] | None = None
    keep2: tuple[str, ...] | None = None
    keep3: tuple[str, ...] | None = None
    missing: str = "analysis"
    drop_unmatched: bool = False
    n_levels = 3

    def as_dict(self) -> dict:
        return {"levels": 3, "id2": self.id2, "id3": self.id3, "keep1": self.keep1, "keep2": self.keep2,
                "keep3": self.keep3, "missing": self.missing, "drop_unmatched": self.drop_unmatched}


@dataclass(frozen=True)
class BuildOptionsLevels:  # K ≥ 4 levels (three levels: BuildOptions3)
    ids: tuple[str, ...]  # the unit ids of levels 2..K
    keeps: tuple  # per level 1..K: variables to keep, or None for all
    missing: str = "analysis"
    drop_unmatched: bool = False

    @property
    def n_levels(self) -> int:
        return len(self.ids) + 1

    def as_dict(self) -> dict:
        return {"levels": self.n_levels, "ids": list(self.ids), "keeps": [list(k) if k else None for k in self.keeps],
                "missing": self.missing, "drop_unmatched": self.drop_unmatched}


# ---------------------------------------------------------------- building

_NUMBER_WORDS = {3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}


def _spec(options):
    from .merge import MergeSpec

    if isinstance(options, BuildOptions3):
        return MergeSpec(options.id2, (options.id2, options.id3), (options.keep1, options.keep2, options.keep3),
                         options.missing, options.drop_unmatched)
    return MergeSpec(options.ids[0], tuple(options.ids), tuple(options.keeps), options.missing, options.drop_unmatched)


def build_archive_levels(tables, options, warn=lambda m: None) -> Archive:
    """Merge K ≥ 3 tables (`tables[k-1]` holds level k; the same table may hold several levels) into an
    archive. DataError on anything to fix."""
    from .merge import merge_levels

    return archive_from_merge(merge_levels(list(tables), _spec(options), warn), options.missing)


def build_archive3(t1, t2, t3, options: BuildOptions3, warn=lambda m: None) -> Archive:
    """Merge three tables (they may be the same table)."""
    return build_archive_levels([t1, t2, t3], options, warn)


def build_from_files_levels(paths, options, fmt=None, delimiter=None, warn=lambda m: None, progress=None) -> Archive:
    """Read the K ≥ 3 files (some may be the same file, read once) and merge them."""
    from .archive import describe_source
    from .files import same_file
    from .readers import read_table

    step = progress or (lambda name: None)
    K = options.n_levels
    if len(paths) != K:
        raise DataError(f"a {K}-level archive is built from {K} files (one per level), not {len(paths)}")
    if any(str(p) == "-" for p in paths):
        raise DataError(f"{_NUMBER_WORDS.get(K, K)}-level archives are built from files, not standard input; give "
                        f"the {_NUMBER_WORDS.get(K, K)} paths")
    strings = tuple(_spec(options).ids)
    tables = []
    for k, p in enumerate(paths):
        shared = next((tables[i] for i in range(k) if same_file(paths[i], p)), None)
        if shared is not None:
            tables.append(shared)
            continue
        step(f"reading {Path(p).name}")
        t = read_table(p, fmt, delimiter, string_columns=strings)
        if t.format == "csv" and t.encoding:
            warn(f"{t.path.name}: not valid UTF-8, so the whole file was decoded as {t.encoding}")
        tables.append(t)
    step("merging")
    archive = build_archive_levels(tables, options, warn=warn)
    step("hashing sources")
    archive.sources = [describe_source(p, f"level-{k}", t) for k, (p, t) in enumerate(zip(paths, tables), 1)]
    return archive


build_from_files3 = build_from_files_levels


# ---------------------------------------------------------------- any number of levels

def build_from_paths(paths, options, fmt=None, delimiter=None, warn=lambda m: None, progress=None) -> Archive:
    """The one way to build an archive from data files, for any number of levels: `options` says how
    many (BuildOptions: two files, BuildOptions3: three, BuildOptionsLevels: one file per level, some
    files possibly the same)."""
    from .archive import build_from_files

    if options.n_levels == 2:
        return build_from_files(paths[0], paths[1], options, fmt, delimiter, warn=warn, progress=progress)
    return build_from_files_levels(paths, options, fmt, delimiter, warn=warn, progress=progress)
