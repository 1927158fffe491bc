"""data_checks' magnitude screen: a value beyond ±1e60 (or ±inf) is found whatever else the column holds,
missing values (NaN) included, and an ordinary column passes; the one-line message is tested end to end
in test_hglm_input.py."""

from __future__ import annotations

import numpy as np
import pytest

from hlmcli.data.data_checks import LARGEST_VALUE, _beyond


@pytest.mark.parametrize("values, beyond", [
    ([1.0, -2.0, 3.5], False),
    ([np.nan, 1.0, np.nan], False),
    ([np.nan, np.nan], False),
    ([], False),
    ([np.nan, 2.0 * LARGEST_VALUE, 1.0], True),
    ([1.0, -2.0 * LARGEST_VALUE, np.nan], True),
    ([np.nan, np.inf], True),
    ([-np.inf, 0.0], True),
    ([LARGEST_VALUE, -LARGEST_VALUE], False),  # the limit itself is allowed, as |x| > LARGEST_VALUE says
])
def test_beyond_agrees_with_the_absolute_value_screen(values, beyond):
    col = np.array(values, dtype=float)
    assert _beyond(col) is beyond
    assert bool((np.abs(col) > LARGEST_VALUE).any()) is beyond
