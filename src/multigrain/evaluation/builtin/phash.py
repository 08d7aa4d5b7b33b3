"""Perceptual-hash baseline (pHash, Zauner 2010) as ±1 descriptors for cosine search.

With h in {-1, +1}^64, cos(h_a, h_b) = <h_a, h_b> / 64 = 1 - 2 * Hamming(h_a, h_b) / 64,
so ranking by cosine similarity is ranking by Hamming distance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imagehash
import numpy as np

from multigrain.data.images import decode_image
from multigrain.metrics import mean_average_precision

HASH_SIZE = 8  # 8 x 8 = 64 bits


def phash_descriptors(paths: Sequence[str | Path]) -> np.ndarray:
    """N image files -> (N, 64) float32 in {-1, +1}; row i . row j / 64 = 1 - 2 Hamming / 64.

    Rows are divided by 8 (= sqrt(64)) so they are unit vectors: the dot product is the
    cosine similarity directly.
    """
    rows = np.empty((len(paths), HASH_SIZE * HASH_SIZE), dtype=np.float32)
    for i, path in enumerate(paths):
        bits = imagehash.phash(decode_image(path), hash_size=HASH_SIZE).hash.reshape(-1)
        rows[i] = np.where(bits, 1.0, -1.0)
    return rows / np.float32(HASH_SIZE)


def group_map(descriptors: np.ndarray, group_size: int = 4) -> float:
    """UKBench-style groups of `group_size` consecutive rows -> mAP.

    descriptors (N, D) unit rows; each row queries all the others (itself removed), its
    positives are the other rows of its group.
    """
    num = len(descriptors)
    similarity = descriptors @ descriptors.T
    np.fill_diagonal(similarity, -np.inf)
    # Stable sort on -similarity: ties keep index order, so the result is deterministic.
    rankings = np.argsort(-similarity, axis=1, kind="stable")[:, : num - 1]
    positives = [
        np.array([j for j in range(i - i % group_size, i - i % group_size + group_size) if j != i])
        for i in range(num)
    ]
    return mean_average_precision(rankings, positives)
