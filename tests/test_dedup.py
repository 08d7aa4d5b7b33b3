"""Duplicate groups against planted near-duplicates; union-find; the HTML contact sheet."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from multigrain.search.dedup import (
    UnionFind,
    connected_components,
    find_duplicate_groups,
    write_contact_sheet_html,
    write_groups_csv,
    write_groups_json,
)
from multigrain.search.index import ImageIndex


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(seed: int = 0) -> tuple[np.ndarray, list[str], list[list[str]]]:
    """500 random 64-d unit vectors plus groups of 4, 3 and 2 near-copies of three of them."""
    rng = np.random.default_rng(seed)
    data = [normalise(rng.standard_normal((500, 64)))]
    names = [f"random/{i:03d}.jpg" for i in range(500)]
    expected = []
    for source, size in ((10, 4), (20, 3), (30, 2)):
        copies = normalise(data[0][source] + 0.05 * rng.standard_normal((size - 1, 64)))
        data.append(copies)
        copy_names = [f"copy/{source}-{j}.jpg" for j in range(size - 1)]
        names += copy_names
        expected.append([names[source], *copy_names])
    return np.concatenate(data), names, expected


def test_planted_groups_recovered_exactly() -> None:
    descriptors, names, expected = planted()
    groups = find_duplicate_groups(descriptors, names, threshold=0.8)
    assert groups == expected  # sorted by size, members in input order
    index = ImageIndex.build(descriptors, names, factory="IVF4,Flat")
    index.set_search_parameters(nprobe=4)
    assert find_duplicate_groups(index, threshold=0.8) == expected


def test_union_find_is_transitive() -> None:
    forest = UnionFind(5)
    forest.union(0, 1)
    forest.union(1, 2)
    assert forest.find(0) == forest.find(2) != forest.find(3)
    labels = connected_components(5, np.array([[0, 1], [1, 2], [3, 4]]))
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4] != labels[0]


def test_chain_below_threshold_end_to_end_is_one_group() -> None:
    # a.b = b.c = 0.9 > threshold but a.c = 0.62 < threshold: still one group
    angle = np.arccos(0.9)
    points = [[np.cos(t), np.sin(t), 0.0] for t in (0.0, angle, 2 * angle)]
    descriptors = np.array([*points, [0.0, 0.0, 1.0]], dtype=np.float32)
    groups = find_duplicate_groups(descriptors, ["a", "b", "c", "d"], threshold=0.8)
    assert groups == [["a", "b", "c"]]


def test_outputs_and_contact_sheet(tmp_path) -> None:
    image_paths = []
    for i, colour in enumerate(["red", "blue", "green"]):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (64, 48), colour).save(path)
        image_paths.append(str(path))
    groups = [image_paths[:2], [image_paths[2], str(tmp_path / "missing.jpg")]]
    page = write_contact_sheet_html(groups, tmp_path / "sheet.html").read_text()
    assert all(path in page for path in sum(groups, []))
    assert page.count("data:image/jpeg;base64,") == 3 and "unreadable" in page
    assert json.loads(write_groups_json(groups, tmp_path / "g.json").read_text()) == {
        "groups": groups
    }
    rows = write_groups_csv(groups, tmp_path / "g.csv").read_text().splitlines()
    assert rows[0] == "group,path" and len(rows) == 5


def test_groups_from_a_whitened_index() -> None:
    import torch

    from multigrain.search.whitening import fit_whitening

    descriptors, names, expected = planted()
    fitting = normalise(np.random.default_rng(7).standard_normal((2000, 64)))
    whitening = fit_whitening(torch.from_numpy(fitting.astype(np.float64)))
    index = ImageIndex.build(descriptors, names, whitening=whitening)
    assert find_duplicate_groups(index, threshold=0.8) == expected
