"""UKBench (Nistér & Stewénius, 2006): 10200 images of 2550 objects, 4 views each.

Expected layout, as ukbench.zip unpacks::

    root/
      full/
        ukbench00000.jpg
        ukbench00001.jpg
        ...
        ukbench10199.jpg

(images directly in `root` are accepted too). Images `4k .. 4k+3` show object k. Every image
is a query and the whole database is searched; its positives are the 4 images of its group,
itself included, because the N-S score counts how many of the group are in the top 4 (max 4).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from multigrain.data.standard._files import benchmark_images, require_dir
from multigrain.data.standard.types import RetrievalBenchmark
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

LAYOUT = "root/full/ukbench00000.jpg ... ukbench10199.jpg (or the images directly in root)"
GROUP_SIZE = 4
EXPECTED_NUM_IMAGES = 10200
_NAME = re.compile(r"^ukbench(\d{5})$")


def read_ukbench(root: Path | str) -> RetrievalBenchmark:
    """Read UKBench from `root` (layout in the module docstring); protocol "ukbench"."""
    root = require_dir(Path(root), what="UKBench", layout=LAYOUT)
    folder = root / "full" if (root / "full").is_dir() else root
    numbered: dict[int, Path] = {}
    for path in benchmark_images(folder):
        match = _NAME.match(path.stem)
        if match is None:
            raise MultiGrainError(
                f"UKBench: unexpected image name {path.name} in {folder}; expected {LAYOUT}"
            )
        numbered[int(match.group(1))] = path
    if not numbered:
        raise MultiGrainError(f"UKBench: no ukbench*.jpg images in {folder}; expected {LAYOUT}")
    numbers = sorted(numbered)
    if numbers != list(range(len(numbers))) or len(numbers) % GROUP_SIZE:
        missing = sorted(set(range(-(-(numbers[-1] + 1) // 4) * 4)) - set(numbers))
        raise MultiGrainError(
            f"UKBench: {folder} must hold complete groups of {GROUP_SIZE} consecutive images "
            f"numbered from 00000; missing e.g. ukbench{missing[0]:05d}.jpg"
        )
    if len(numbers) != EXPECTED_NUM_IMAGES:
        logger.warning(
            "UKBench in %s has %d images, not %d", folder, len(numbers), EXPECTED_NUM_IMAGES
        )
    database = [numbered[n] for n in numbers]
    positives = [
        np.arange(i - i % GROUP_SIZE, i - i % GROUP_SIZE + GROUP_SIZE, dtype=np.int64)
        for i in range(len(database))
    ]
    return RetrievalBenchmark(
        name="ukbench",
        database=database,
        queries=list(database),
        query_boxes=[None] * len(database),
        positives=positives,
        junk=[np.zeros(0, dtype=np.int64) for _ in database],
        query_in_database=list(range(len(database))),
        rotations=None,
        protocol="ukbench",
    )
