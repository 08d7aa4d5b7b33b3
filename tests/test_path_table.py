"""PathTable: an index's paths in flat arrays, agreeing with a plain list and dict."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from multigrain.search.path_table import PathTable

ODD = [
    "plain.jpg",
    "dir/é ü 猫.png",
    "tab\there.jpg",
    "line\nbreak.jpg",
    "\udcff-undecodable.jpg",
    "",
]


def test_rows_paths_and_lookups_agree_with_a_list_and_a_dict():
    paths = [f"photos/{i:05d}.jpg" for i in range(2_000)] + ODD
    table = PathTable(paths[:1_000])
    table.extend(paths[1_000:1_500])
    table.extend(paths[1_500:])
    assert len(table) == len(paths) and table == paths and list(table) == paths
    assert table[0] == paths[0] and table[-1] == paths[-1] and table[3:7] == paths[3:7]
    row_of = {p: row for row, p in enumerate(paths)}
    rng = np.random.default_rng(0)
    asked = [paths[i] for i in rng.integers(0, len(paths), 300)] + ["absent.jpg", "photos/"]
    assert table.rows_of(asked).tolist() == [row_of.get(p, -1) for p in asked]
    assert all(p in table for p in ODD) and "absent.jpg" not in table and 3 not in table
    with pytest.raises(IndexError):
        table[len(paths)]


def test_kept_rows_keep_their_order_and_lookups():
    paths = [f"a/{i}.jpg" for i in range(500)] + ODD
    keep = np.random.default_rng(1).random(len(paths)) < 0.6
    kept = PathTable(paths).kept(keep)
    expected = [p for p, k in zip(paths, keep, strict=True) if k]
    assert kept == expected
    assert kept.rows_of(paths).tolist() == [
        expected.index(p) if k else -1 for p, k in zip(paths, keep, strict=True)
    ]
    kept.extend(["new.jpg"])  # still a working table after removal
    assert kept.row_of("new.jpg") == len(expected) and kept.row_of(expected[0]) == 0


def test_equal_hashes_are_told_apart_by_the_path(monkeypatch):
    # every path hashes alike: the lookup must still compare the paths themselves
    import multigrain.search.path_table as module

    monkeypatch.setattr(module, "hash", lambda _path: 7, raising=False)
    table = PathTable(["x.jpg", "y.jpg", "z.jpg"])
    assert table.rows_of(["z.jpg", "x.jpg", "w.jpg", "y.jpg"]).tolist() == [2, 0, -1, 1]


def test_a_million_paths_take_a_fraction_of_a_list_and_a_dict():
    paths = [f"/home/user/Pictures/2024/{i // 1000:03d}/IMG_{i:07d}.jpg" for i in range(1_000_000)]
    table = PathTable(paths)
    as_objects = (
        sys.getsizeof(paths)
        + sum(sys.getsizeof(p) for p in paths)
        + sys.getsizeof({p: i for i, p in enumerate(paths)})
    )
    # the characters + 24 bytes a path (offset, hash, row), against ~110 bytes of objects
    assert table.nbytes == sum(len(p) for p in paths) + 24 * len(paths)
    assert table.nbytes < 0.55 * as_objects, (table.nbytes, as_objects)
