"""Geometric verification (duplicates/verify.py): copies of real photos count many matching
points in one arrangement, different photos almost none; the pairs, the cache and the
calibrated count."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from multigrain.duplicates.calibration import CalibrationSample, verification_calibration
from multigrain.duplicates.verify import (
    MIN_INLIERS,
    FeatureCache,
    inlier_count,
    local_features,
    neighbour_pairs,
    verification_threshold,
)

skimage_data = pytest.importorskip("skimage.data")


def _photos() -> dict[str, Image.Image]:
    """scikit-image's bundled photos (real pictures, shipped inside the package)."""
    return {
        name: Image.fromarray(getattr(skimage_data, name)()).convert("RGB")
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")
    }


def _caption(image: Image.Image) -> Image.Image:
    copy = image.copy()
    draw = ImageDraw.Draw(copy)
    top = int(copy.height * 0.82)
    draw.rectangle((0, top, copy.width, copy.height), fill=(0, 0, 0))
    draw.text((10, top + 8), "holiday 2026 - best one!", fill=(255, 255, 255))
    return copy


def _crop(image: Image.Image, keep: float) -> Image.Image:
    w, h = image.size
    x, y = int(w * (1 - keep) / 3), int(h * (1 - keep) / 2)
    return image.crop((x, y, x + int(w * keep), y + int(h * keep)))


EDITS = {
    "crop 70 %": lambda im: _crop(im, 0.7),
    "caption bar": _caption,
    "rotated 8 degrees": lambda im: _crop(im.rotate(8, resample=Image.Resampling.BILINEAR), 0.8),
    "half size, JPEG q30": lambda im: _jpeg(im.resize((im.width // 2, im.height // 2)), 30),
    "brighter, more contrast": lambda im: Image.eval(im, lambda v: min(255, int(v * 1.4) + 10)),
}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


@pytest.mark.parametrize("edit", list(EDITS))
def test_copies_verify_and_other_photos_do_not(edit: str) -> None:
    photos = _photos()
    for name, photo in photos.items():
        if name == "immunohistochemistry":
            continue  # a texture: few corners survive every edit; used as a distractor only
        copy = local_features(EDITS[edit](photo))
        assert inlier_count(copy, local_features(photo)) >= MIN_INLIERS, (name, edit)
        for other, picture in photos.items():
            if other != name:
                count = inlier_count(copy, local_features(picture))
                assert count < MIN_INLIERS // 2, (name, edit, other, count)


def test_a_flat_image_has_no_features_and_counts_zero() -> None:
    flat = local_features(Image.new("RGB", (300, 200), (120, 130, 140)))
    photo = local_features(_photos()["coffee"])
    assert flat.size == 0 and photo.size > 100
    assert inlier_count(flat, photo) == 0 and inlier_count(photo, flat) == 0


def test_a_large_image_is_described_at_the_verification_side() -> None:
    photo = _photos()["astronaut"].resize((2048, 2048))
    features = local_features(photo)
    assert features.points.max() < 512 and features.descriptors.shape[1] == 32


def test_neighbour_pairs_are_unique_and_exclude_known_pairs() -> None:
    nearest = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, -1]])
    pairs = neighbour_pairs(nearest, 2)
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 3], [2, 3]]
    assert neighbour_pairs(nearest, 1).tolist() == [[0, 1], [2, 3]]
    assert neighbour_pairs(nearest, 2, exclude=np.array([[0, 2], [1, 3]])).tolist() == [
        [0, 1],
        [2, 3],
    ]


def test_the_verifying_count_rises_above_every_unrelated_pair() -> None:
    assert verification_threshold([]) == MIN_INLIERS
    assert verification_threshold([0, 3, 5]) == MIN_INLIERS
    assert verification_threshold([2, 40, 7]) == 41


def test_the_cache_keeps_the_last_used_rows() -> None:
    photos = list(_photos().values())
    loads: list[int] = []

    def load(row: int) -> Image.Image | None:
        loads.append(row)
        return None if row == 3 else photos[row]

    cache = FeatureCache(load, capacity=2)
    cache.prepare([0, 1, 1])
    assert sorted(loads) == [0, 1]
    assert cache[0].size > 0 and len(loads) == 2  # kept: not loaded again
    cache.prepare([2])  # evicts the least recently used row, 1
    cache[1]
    assert loads.count(1) == 2 and loads.count(0) == 1
    assert cache[3].size == 0  # an unreadable image: no features


def test_verification_calibration_counts_recall_and_false_links() -> None:
    sample = CalibrationSample(
        right=np.array([0.9, 0.1, 0.2, 0.1]),
        wrong=np.array([0.0]),
        num_queries=5,
        num_sources=1,
        copies_per_source=4,
        right_inliers=np.array([200, 40, -1, 3]),
        wrong_inliers=np.array([0, 2, 9, 4, 1]),
    )
    found = verification_calibration(sample, 0.5, np.array([300, 14, 15, 0]))
    assert found.min_inliers == MIN_INLIERS and found.highest_unrelated == 9
    assert found.recall == 0.5  # 200 and 40; the third copy's source was not among its nearest
    assert found.combined_recall == 0.5  # the copy at 0.9 is verified too
    assert found.folder_pairs == 4 and found.folder_links == 2 and found.closest_below == 14
    # no unrelated pair reached 15: the rate's 95 % upper bound is 3.0 / 5 per pair
    assert found.expected_false_links == pytest.approx(4 * 2.9957 / 5, abs=1e-3)
    given = verification_calibration(sample, 0.05, None, min_inliers=3)
    assert given.min_inliers == 3 and given.combined_recall == 1.0 and given.folder_pairs == 0
