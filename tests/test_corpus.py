"""The shipped model's corpus: held-out distortions, copy sets, tiles and the scoring."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from conftest import make_pattern
from PIL import Image

from multigrain.data.corpus.build import tile_boxes
from multigrain.data.corpus.distortions import HeldoutFamily, distort
from multigrain.data.corpus.heldout import read_copy_set, write_copy_set
from multigrain.evaluation.heldout.scoring import precision_recall_at, score_similarities
from multigrain.runtime.errors import MultiGrainError


def photo(seed: int = 0, size: tuple[int, int] = (96, 64)) -> Image.Image:
    return make_pattern(np.random.default_rng(seed), seed % 3, max(size)).resize(size)


@pytest.mark.parametrize("family", list(HeldoutFamily))
def test_distortions_are_pure_functions_of_the_generator(family):
    image = photo()
    first = distort(image, family, np.random.default_rng(5))
    again = distort(image, family, np.random.default_rng(5))
    assert first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first.resize(image.size)), np.asarray(image))


def test_distortion_geometry():
    image = photo(1, (200, 100))
    rng = np.random.default_rng(0)
    crop = distort(image, HeldoutFamily.CROP, rng)
    assert 0.6 * 200 - 1 <= crop.width <= 0.75 * 200 and 0.6 * 100 - 1 <= crop.height <= 75
    gray = np.asarray(distort(image, HeldoutFamily.GRAY_FLIP, rng)).astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() == 0  # grayscale
    expected = np.asarray(image.convert("L"))[:, ::-1]
    assert np.abs(gray[..., 0] - expected).max() == 0  # mirrored
    assert distort(image, HeldoutFamily.PIP, rng).size == image.size


def test_tiles_cover_the_photo_without_overlap():
    for width, height in ((3840, 2160), (1920, 1080), (500, 400), (9000, 500)):
        boxes = tile_boxes(width, height)
        covered = np.zeros((height, width), dtype=np.int32)
        for left, top, right, bottom in boxes:
            covered[top:bottom, left:right] += 1
        assert covered.min() == 1 and covered.max() == 1
        assert len(boxes) <= 9
    assert len(tile_boxes(3840, 2160)) == 6  # 4 x 2 rounded, capped at 3 per side


def test_copy_set_round_trip_and_balanced_families(tmp_path):
    originals = []
    for index in range(7):
        path = tmp_path / "originals" / f"o{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        photo(index).save(path)
        originals.append(path)
    total = write_copy_set(tmp_path, originals, seed=0, queries_per_reference=3, progress=False)
    copies = read_copy_set(tmp_path)
    assert total == len(copies.queries) == 21
    assert [copies.originals[t].name for t in copies.truth] == [f"o{q // 3}.jpg" for q in range(21)]
    counts = [copies.families.count(family) for family in HeldoutFamily]
    assert max(counts) - min(counts) <= 1 or sum(counts) < 2 * len(counts)
    assert all(path.is_file() for path in copies.queries)
    with pytest.raises(MultiGrainError, match="corpus build"):
        read_copy_set(tmp_path / "missing")


def test_scores_against_a_hand_computed_case(tmp_path):
    originals = []
    for index in range(3):
        path = tmp_path / "originals" / f"o{index}.jpg"
        path.parent.mkdir(exist_ok=True)
        photo(index).save(path)
        originals.append(path)
    write_copy_set(tmp_path, originals, seed=0, queries_per_reference=1, progress=False)
    copies = read_copy_set(tmp_path)
    similarity = np.array(
        [
            [0.9, 0.1, 0.2],  # rank 1
            [0.8, 0.5, 0.5],  # true original 1 ties with 2: rank 3 (pessimistic)
            [0.1, 0.2, 0.3],  # rank 1
        ]
    )
    scores = score_similarities("hand", similarity, copies)
    assert scores.map == pytest.approx((1 + 1 / 3 + 1) / 3)
    # all 9 pairs by score: 0.9+, 0.8-, 0.5 tie (- first, then +), 0.3+, ...
    # precision at each true pair: 1/1, 2/4 (0.5 tie resolved against), 3/5
    assert scores.micro_ap == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    assert scores.recall_at_90 == pytest.approx(1 / 3)
    assert scores.threshold_at_90 == pytest.approx(0.9)
    assert set(scores.family_map) == {f.value for f in copies.families}
    # a fixed threshold: 4 pairs score >= 0.5, 2 of them true
    assert precision_recall_at(similarity, copies, 0.5) == (0.5, pytest.approx(2 / 3))
    precision, recall = precision_recall_at(similarity, copies, 2.0)
    assert np.isnan(precision) and recall == 0.0


CORPUS_PACKAGES = ("ukui-wallpapers", "mate-backgrounds", "lomiri-wallpapers-20.04")


def _require_packages() -> None:
    missing = [
        package
        for package in CORPUS_PACKAGES
        if subprocess.run(["dpkg", "-s", package], capture_output=True).returncode != 0
    ]
    if missing:
        message = f"needs the Debian packages {missing}: scripts/setup-system.sh installs them"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_build_keeps_whole_packages_out_of_training(tmp_path):
    _require_packages()
    from multigrain.data.corpus.build import build_corpus

    output = tmp_path / "corpus"
    manifest = build_corpus(
        output,
        sources=list(CORPUS_PACKAGES),
        validation_packages=["mate-backgrounds"],
        test_packages=["lomiri-wallpapers-20.04"],
        progress=False,
    )
    by_split: dict[str, set[str]] = {}
    for image in manifest.images:
        by_split.setdefault(image.split, set()).add(image.package)
    assert by_split["train"] == {"ukui-wallpapers"}
    assert by_split["validation"] == {"mate-backgrounds"}
    assert by_split["test"] == {"lomiri-wallpapers-20.04"}
    test_set = read_copy_set(output / "test")
    assert len(test_set.queries) == 3 * len(test_set.originals) > 0
    train_sources = {i.sha1 for i in manifest.images if i.split == "train"}
    held_sources = {i.sha1 for i in manifest.images if i.split in ("validation", "test")}
    assert not train_sources & held_sources
    assert (
        len(list((output / "train_unlabelled").glob("*.jpg"))) == manifest.images_per_split["train"]
    )
    assert manifest.licences["mate-backgrounds"]
