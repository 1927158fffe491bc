"""Three and four levels from per-level-2-unit moments (hlmcli/engines_levels.py): the level-1 file
read once by the stream engine, in many chunks and in random order, the upper files merged as in
memory; the certified fit equals the in-memory fit to 1e-10 relative in every number (γ, their
covariances, σ², τ per level, deviance, reliabilities, χ² tests, EB means and variances). The
in-memory fits themselves are checked against lme4 in test_nested.py, test_three_level_cli.py and
test_four_level_cli.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyarrow")

TINY_MODEL = [["Y = p0 + p1*X + e"], ["p0 = b00 + b01*W + r0", "p1 = b10"], ["b00 = g000 + u00", "b01 = g010", "b10 = g100"]]
TINY4_MODEL = [["Y = p0 + p1*group(X) + e"], ["p0 = b00 + b01*grand(W) + b02*mean(X) + r0", "p1 = b10"],
               ["b00 = g000 + g001*grand(V) + g002*mean(X) + u00", "b01 = g010", "b02 = g020", "b10 = g100"],
               ["g000 = d0000 + d0001*T + v000", "g001 = d0010", "g002 = d0020", "g010 = d0100", "g020 = d0200",
                "g100 = d1000"]]
TINY_IDS = ["--id2", "C", "--id3", "S"]


def _tiny(tmp_path, unmatched: bool = False, four: bool = False):
    """Three levels (4 × 5 units × 6 records) or four (3 × 3 × 4 units × 5 records), the records in
    random order; Y missing in two records, an unused column Z missing in a third."""
    rng = np.random.default_rng(11)
    shape = (3, 3, 4, 5) if four else (1, 4, 5, 6)
    rows, l2, l3, l4 = [], [], [], []
    for h in range(shape[0]):
        l4.append({"H": f"h{h}", "T": float(h % 2)})
        for k in range(shape[1]):
            s = f"s{h}{k}"
            l3.append({"S": s, "V": rng.normal(), **({"H": f"h{h}"} if four else {})})
            for j in range(shape[2]):
                c = f"c{h}{k}{j}"
                l2.append({"C": c, "S": s, "W": rng.normal()})
                u = rng.normal()
                for i in range(shape[3]):
                    x = 3 + rng.normal()
                    rows.append({"C": c, "X": x, "Y": 1 + 0.5 * x + u + rng.normal(), "Z": 1.0})
    l1 = pd.DataFrame(rows)
    l1.loc[3, "Y"] = np.nan
    l1.loc[40, "Y"] = np.nan
    l1.loc[7, "Z"] = np.nan
    if unmatched:
        l1 = pd.concat([l1, pd.DataFrame([{"C": "stray", "X": 0.0, "Y": 1.0, "Z": 1.0}] * 3)])
    l1 = l1.sample(frac=1.0, random_state=2)
    frames = [l1, pd.DataFrame(l2), pd.DataFrame(l3)] + ([pd.DataFrame(l4)] if four else [])
    paths = [tmp_path / f"t{k}{'u' if unmatched else ''}.csv" for k in range(1, len(frames) + 1)]
    for frame, path in zip(frames, paths):
        frame.to_csv(path, index=False)
    return paths


@pytest.fixture
def tiny_chunks():
    """Chunks of 512 bytes: the tiny level-1 files are read in about ten chunks."""
    import hlmcli.streaming as streaming

    old = streaming.CHUNK_BYTES
    streaming.CHUNK_BYTES = 1 << 9
    yield
    streaming.CHUNK_BYTES = old


def _options(paths, ids, drop_unmatched=False):
    from hlmcli.archive_levels import BuildOptions3, BuildOptionsLevels

    if len(paths) == 3:
        return BuildOptions3(ids[0], ids[1], drop_unmatched=drop_unmatched)
    return BuildOptionsLevels(tuple(ids), (None,) * len(paths), "analysis", drop_unmatched)


def _fits(paths, ids, equations, reml=False, drop_unmatched=False):
    """(memory design and fit, stream design and fit) of the same files and model."""
    from hlmcli.archive_levels import build_from_files3, build_from_files_levels
    from hlmcli.design_levels import design_levels, level1_variables
    from hlmcli.engines_levels import level1_file, level1_moments, upper_archive
    from hlmcli.levels import spec_levels
    from hlmcli.nested_fit import fit_nested

    options = _options(paths, ids, drop_unmatched)
    build = build_from_files3 if len(paths) == 3 else build_from_files_levels
    out = []
    for engine in ("memory", "stream"):
        if engine == "memory":
            archive = build(paths, options)
        else:
            l1 = level1_file(paths[0], "stream", ids[0], ids, None)
            archive = upper_archive(paths, options, l1)
        spec = spec_levels(archive, equations, None, reml)
        level1 = None if engine == "memory" else level1_moments(archive, l1, level1_variables(spec), paths[1],
                                                                drop_unmatched, lambda m: None)
        design = design_levels(spec, archive, level1)
        out.append((design, fit_nested(design.data, reml=reml)))
    return out


def _same(a, b, what):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, what
    scale = max(float(np.nanmax(np.abs(a))) if a.size else 0.0, 1e-300)
    assert np.allclose(a, b, rtol=1e-10, atol=1e-10 * scale, equal_nan=True), (what, a, b)


def _same_fit(m, s):
    (dm, fm), (ds, fs) = m, s
    assert fm.converged and fs.converged
    assert dm.n == ds.n and dm.n_deleted == ds.n_deleted
    assert [dm.J(k) for k in range(2, fm.n_levels + 1)] == [ds.J(k) for k in range(2, fs.n_levels + 1)]
    assert dm.unit_ids == ds.unit_ids and dm.centering_means.keys() == ds.centering_means.keys()
    _same(list(dm.centering_means.values()), list(ds.centering_means.values()), "centering means")
    for name in ("gamma", "cov_gamma", "cov_gamma_robust", "df_gamma", "sigma2", "deviance"):
        _same(getattr(fm, name), getattr(fs, name), name)
    for level, (a, b) in enumerate(zip(fm.taus, fs.taus), start=2):
        _same(a, b, f"tau level {level}")
        _same(fm.reliabilities[level - 2], fs.reliabilities[level - 2], f"reliability {level}")
        _same(fm.eb[level - 2], fs.eb[level - 2], f"EB {level}")
        _same(fm.eb_var[level - 2], fs.eb_var[level - 2], f"EB var {level}")
        for ca, cb in zip(fm.chi2[level - 2], fs.chi2[level - 2]):
            assert ca["df"] == cb["df"] and ca["n_units"] == cb["n_units"]
            _same(ca["chi2"], cb["chi2"], f"chi2 {level}")
    assert fm.boundary == fs.boundary and fm.certificate.ranks == fs.certificate.ranks


def test_three_levels_from_moments_equal_memory(tmp_path, tiny_chunks):
    """Records in random order over ten chunks; records missing a model variable deleted per model
    (not for the column Z the model does not use)."""
    paths = _tiny(tmp_path)
    memory, stream = _fits(paths, ["C", "S"], TINY_MODEL)
    assert memory[0].n_deleted == 2 and memory[0].n == 118
    _same_fit(memory, stream)


def test_four_levels_centring_and_unit_means_from_moments_equal_memory(tmp_path, tiny_chunks):
    """group(), grand() and mean() of a level-1 variable at levels 2 and 3 are shifts and pooled
    means of the units' moments (REML)."""
    paths = _tiny(tmp_path, four=True)
    memory, stream = _fits(paths, ["C", "S", "H"], TINY4_MODEL, reml=True)
    assert stream[0].n == 178 and [stream[0].J(k) for k in (2, 3, 4)] == [36, 9, 3]
    _same_fit(memory, stream)


def test_unmatched_level1_units_refused_or_dropped_as_in_memory(tmp_path):
    from hlmcli.errors import DataError

    paths = _tiny(tmp_path, unmatched=True)
    with pytest.raises(DataError, match="stray.*--drop-unmatched"):
        _fits(paths, ["C", "S"], TINY_MODEL)
    memory, stream = _fits(paths, ["C", "S"], TINY_MODEL, drop_unmatched=True)
    _same_fit(memory, stream)
