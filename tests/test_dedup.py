"""Duplicate groups against planted near-duplicates and a brute-force closure; the HTML sheet."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from multigrain.search.dedup import (
    component_labels,
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


def test_components_are_transitive() -> None:
    labels = component_labels(5, np.array([[0, 1], [1, 2]]))
    assert labels[0] == labels[2] != labels[3]
    labels = component_labels(5, np.array([[0, 1], [1, 2], [3, 4]]))
    assert labels[0] == labels[1] == labels[2] and labels[3] == labels[4] != labels[0]
    assert len(set(component_labels(3, np.zeros((0, 2), dtype=np.int64)).tolist())) == 3


def _brute_force_groups(descriptors: np.ndarray, names: list[str], threshold: float):
    """Groups as the transitive closure of the "similarity > threshold" matrix."""
    reach = (descriptors @ descriptors.T > threshold) | np.eye(len(names), dtype=bool)
    while True:  # square the reachability matrix until it stops growing
        grown = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
        if np.array_equal(grown, reach):
            break
        reach = grown
    groups = {tuple(np.flatnonzero(row).tolist()) for row in reach}
    result = [[names[i] for i in group] for group in groups if len(group) >= 2]
    return sorted(result, key=lambda group: (-len(group), group[0]))


def test_groups_equal_brute_force_closure() -> None:
    rng = np.random.default_rng(3)
    # 30 random walks of 8 steps: a walk's ends score ~0.8, its neighbours ~0.97, so groups
    # form through intermediate images; 200 unrelated images around them
    walks = rng.standard_normal((30, 1, 16)) + np.cumsum(rng.normal(0, 0.3, (30, 8, 16)), axis=1)
    descriptors = np.concatenate(
        [normalise(walks.reshape(-1, 16)), normalise(rng.standard_normal((200, 16)))]
    )
    names = [f"{i:03d}.jpg" for i in range(len(descriptors))]
    for threshold in (0.9, 0.97):
        expected = _brute_force_groups(descriptors, names, threshold)
        assert len(expected) > 20 and max(len(g) for g in expected) >= 8
        assert find_duplicate_groups(descriptors, names, threshold=threshold) == expected


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
