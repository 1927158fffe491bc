"""moments.chunk_moments on records grouped by unit runs in blocks of whole units when the chunk is
large (BLOCK_RECORDS): the moments must be the one-pass form's to the last bit (the same reduceat over
the same runs), units of any size, empty units included."""

from __future__ import annotations

import numpy as np
import pytest

from hlmcli.engine import moments


@pytest.mark.parametrize("sizes", [[1, 7, 3, 40, 2, 2, 9, 1, 0, 5], [0, 0, 130, 1], [3] * 40])
def test_blocks_of_units_give_the_one_pass_moments_bit_for_bit(monkeypatch, sizes):
    rng = np.random.default_rng(len(sizes))
    sizes = np.array(sizes)
    codes = np.repeat(np.arange(sizes.size), sizes)
    N = codes.size
    cols = [rng.normal(size=N) * 10.0 ** k + 10.0 ** (2 * k) for k in (-2, 0, 3)]
    monkeypatch.setattr(moments, "BLOCK_RECORDS", 10 ** 9)
    one = moments.chunk_moments(cols, codes, sizes.size + 1)
    monkeypatch.setattr(moments, "BLOCK_RECORDS", 8)  # many blocks; a unit longer than a block is one
    blocked = moments.chunk_moments(cols, codes, sizes.size + 1)
    for a, b in ((one.n, blocked.n), (one.mean, blocked.mean), (one.C, blocked.C)):
        assert a.tobytes() == b.tobytes()
