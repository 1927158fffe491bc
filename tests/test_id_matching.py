"""The Dask and stream engines' id handling as whole arrays: the same ids, order and matches as the
per-id rules (id_text's loop, a {id: row} dict built in level-2 file order), checked by hand."""

import numpy as np

from hlmcli.analysis.engines import level2_positions
from hlmcli.data.streaming import id_text


def test_level2_positions_follow_a_dict_in_file_order():
    # an id given twice in the level-2 file matches its last row; text "1" never matches the number 1
    assert level2_positions(["1", "2", "3"], ["3", "1"]).tolist() == [1, -1, 0]
    assert level2_positions(["a", "b", "a", "c"], ["a", "b", "c", "d"]).tolist() == [0, 1, 0, 2]
    assert level2_positions([" a", "b"], ["a", " a", " a", "b", "b"]).tolist() == [2, 4]
    assert level2_positions([1, "1", 1.0], [1, "1", 2]).tolist() == [0, 1, 0]
    assert level2_positions(["x"], []).tolist() == [-1]
    assert level2_positions([], ["x"]).dtype == np.int64


def test_id_text_of_arrays_spells_ids_as_the_loop_does():
    assert id_text(np.array([3, -2, 0], dtype=np.int64)) == ["3", "-2", "0"]
    assert id_text(np.array([7], dtype=np.uint64)) == ["7"]
    assert id_text(np.array([1.0, -0.0, 1e18])) == ["1", "0", "1000000000000000000"]
    assert id_text(np.array([2.0 ** 63, 1.5])) == ["9223372036854775808", "1.5"]  # beyond int64: exact int
    assert id_text(np.array([" a ", "b\u3000", "c"])) == ["a", "b", "c"]  # Unicode space stripped as str.strip
    assert id_text(np.array(["x", 3], dtype=object)) == ["x", "3"]
    for values in (np.array([4, 5, 6]), np.array([1.25, 2.0]), np.array(["  u1", "u2 "])):
        assert id_text(values) == id_text(values.tolist())
