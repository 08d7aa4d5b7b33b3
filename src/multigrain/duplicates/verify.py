"""Geometric verification: do two images show the same picture, point for point?

A global descriptor says two images *look* alike; it cannot tell a 70 % crop or a copy
with a caption bar from a different photo of a similar scene, since both move the
descriptor as far. Local features can: a copy keeps the original's corners and blobs in
the same arrangement, up to one similarity transform (shift, scale, rotation), while a
different photo shares a few chance matches in no common arrangement.

For a pair of images, each made grey and at most :data:`VERIFY_SIDE` pixels on its longest
side: ORB keypoints and binary descriptors (OpenCV), matches that pass Lowe's ratio test,
then a similarity transform fitted by RANSAC. The pair's count is the number of inlier
matches, counted as distinct :data:`CELL`-pixel cells in *both* images (a fit that maps a
crowd of keypoints onto one spot, or that shrinks one image to a dot, is what unrelated
pairs produce; scales outside [1/:data:`MAX_SCALE`, :data:`MAX_SCALE`] count 0). On three
photo folders of 114-214 images, true copies (crops to 70 %, caption bars, rotations,
brightness, JPEG q30, 50 % resizes) counted 32-329, the unrelated pairs matched in the
folders at most 4 and those of the synthetic copies at most 6
(``benchmarks/photo_folder_cases.py``, docs/benchmarks/photo_folder_cases.json).

OpenCV is imported when first used, so commands that never verify start without it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

#: Longest side, in pixels, an image is described at (smaller images keep their size).
VERIFY_SIDE = 512
#: ORB keypoints kept per image.
KEYPOINTS = 1000
#: Lowe's ratio test: a match is kept when its distance is below this share of the second best.
RATIO = 0.8
#: RANSAC's inlier distance, in pixels of the images at VERIFY_SIDE.
REPROJECTION_PX = 5.0
#: Largest scale between the two images a copy may have (either way).
MAX_SCALE = 6.0
#: Inliers are counted as distinct cells of this many pixels, in both images.
CELL = 8
#: Fewest counted inliers that verify a pair, whatever the calibration finds: above every
#: unrelated pair measured (at most 6), below every true copy (at least 32).
MIN_INLIERS = 15
#: Each image is matched with this many of its nearest by cosine (a copy with a caption bar
#: was found 8th nearest of its original in a 114-image folder).
NEIGHBOURS_VERIFIED = 10
#: Images whose features are kept in memory at once (about 40 KB each).
CACHE_IMAGES = 20_000


@dataclass(frozen=True)
class LocalFeatures:
    """ORB keypoints of one image at VERIFY_SIDE."""

    points: np.ndarray  # (K, 2) float32 x, y in pixels
    descriptors: np.ndarray  # (K, 32) uint8 binary descriptors

    @property
    def size(self) -> int:
        return len(self.points)


_NO_FEATURES = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))


def _cv2() -> Any:
    import cv2

    return cv2


def local_features(image: Image.Image) -> LocalFeatures:
    """An image (any mode) -> its ORB features at VERIFY_SIDE (none for a flat image)."""
    grey = image.convert("L")
    if max(grey.size) > VERIFY_SIDE:
        scale = VERIFY_SIDE / max(grey.size)
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    cv2 = _cv2()
    orb = cv2.ORB_create(nfeatures=KEYPOINTS)
    keypoints, descriptors = orb.detectAndCompute(np.asarray(grey), None)
    if descriptors is None or len(keypoints) == 0:
        return _NO_FEATURES
    points = np.array([k.pt for k in keypoints], dtype=np.float32).reshape(-1, 2)
    return LocalFeatures(points, np.ascontiguousarray(descriptors, dtype=np.uint8))


def inlier_count(a: LocalFeatures, b: LocalFeatures) -> int:
    """The pair's verification count (module doc): inlier matches of the best similarity
    transform from `a` to `b`, as distinct cells in both images; 0 when none fits."""
    if a.size < 2 or b.size < 2:
        return 0
    cv2 = _cv2()
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < 3:
        return 0
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=REPROJECTION_PX
    )
    if transform is None or inliers is None:
        return 0
    scale = float(np.sqrt(abs(np.linalg.det(transform[:, :2]))))
    if not 1.0 / MAX_SCALE <= scale <= MAX_SCALE:
        return 0
    kept = inliers.ravel().astype(bool)
    return min(_cells(source[kept]), _cells(target[kept]))


def _cells(points: np.ndarray) -> int:
    """Distinct CELL-pixel cells the points fall in."""
    if len(points) == 0:
        return 0
    return len(np.unique(np.floor(points / CELL).astype(np.int64), axis=0))


class FeatureCache:
    """Local features of a collection's rows, computed on first use (in threads) and kept
    for the last CACHE_IMAGES rows used.

    Args:
        load: row -> its image (None when it cannot be read: no features, count 0).
    """

    def __init__(
        self,
        load: Callable[[int], Image.Image | None],
        *,
        threads: int = 2,
        capacity: int = CACHE_IMAGES,
    ) -> None:
        self._load = load
        self._threads = max(1, threads)
        self._capacity = capacity
        self._kept: OrderedDict[int, LocalFeatures] = OrderedDict()
        self._lock = threading.Lock()

    def _compute(self, row: int) -> LocalFeatures:
        image = self._load(row)
        return _NO_FEATURES if image is None else local_features(image)

    def prepare(self, rows: Iterable[int]) -> None:
        """Compute the features of `rows` not kept yet, in parallel."""
        missing = sorted({row for row in rows if row not in self._kept})
        if not missing:
            return
        with ThreadPoolExecutor(self._threads) as pool:
            for row, features in zip(missing, pool.map(self._compute, missing), strict=True):
                self._keep(row, features)

    def __getitem__(self, row: int) -> LocalFeatures:
        with self._lock:
            found = self._kept.get(row)
            if found is not None:
                self._kept.move_to_end(row)
                return found
        features = self._compute(row)
        self._keep(row, features)
        return features

    def _keep(self, row: int, features: LocalFeatures) -> None:
        with self._lock:
            self._kept[row] = features
            self._kept.move_to_end(row)
            while len(self._kept) > self._capacity:
                self._kept.popitem(last=False)


def verify_pairs(
    features: FeatureCache,
    pairs: np.ndarray,
    *,
    threads: int = 2,
    chunk: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(P, 2) row pairs -> (P,) int64 verification counts (:func:`inlier_count`).

    Pairs are taken in chunks: the features a chunk needs are computed first, then its
    pairs are matched in `threads` threads (OpenCV releases the GIL)."""
    counts = np.zeros(len(pairs), dtype=np.int64)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for start in range(0, len(pairs), chunk):
            block = pairs[start : start + chunk]
            features.prepare(block.ravel().tolist())
            found = pool.map(lambda p: inlier_count(features[p[0]], features[p[1]]), block.tolist())
            counts[start : start + len(block)] = list(found)
            if progress is not None:
                progress(len(block))
    return counts


def neighbour_pairs(
    nearest: np.ndarray, neighbours: int, exclude: np.ndarray | None = None
) -> np.ndarray:
    """(N, m) each row's nearest (itself first) -> (P, 2) unique pairs i < j of each row
    with its `neighbours` nearest others, without the (Q, 2) i < j pairs in `exclude`."""
    ids = nearest[:, 1 : neighbours + 1]
    a = np.repeat(np.arange(len(nearest)), ids.shape[1])
    b = ids.ravel()
    valid = (b >= 0) & (a != b)
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)[valid]
    pairs = np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)
    if exclude is not None and len(exclude) and len(pairs):
        known = {(int(i), int(j)) for i, j in exclude}
        pairs = pairs[[(int(i), int(j)) not in known for i, j in pairs]].reshape(-1, 2)
    return pairs.astype(np.int64)


def verification_threshold(wrong: Sequence[int] | np.ndarray) -> int:
    """The count that verifies a pair: MIN_INLIERS, or one more than the highest count of
    an unrelated pair measured on the collection (a folder of look-alike patterns), if
    higher."""
    highest = int(np.max(wrong)) if len(wrong) else 0
    return max(MIN_INLIERS, highest + 1)
