"""INRIA Holidays (Jégou et al., 2008): 1491 holiday photos in 500 groups, one query each.

Expected layout, as the two archives jpg1.tar.gz and jpg2.tar.gz unpack::

    root/
      jpg/
        100000.jpg
        100001.jpg
        ...
        149903.jpg

(images directly in `root` are accepted too). Names are six-digit numbers; images with the
same `number // 100` show the same scene. The first image of a group (smallest number) is the
query; the other images of its group are its positives. The query is also a database image
and is excluded from its own results: its index is put in `junk` and `query_in_database`.

Many images are stored rotated. With `upright=True` the clockwise rotations listed in a
rotation file (`holidays_rotations.txt` shipped with the package, or `rotations_file=`) are
returned in `rotations` and the protocol is "holidays-upright" (the shipped list names the
228 images the MultiGrain authors rotated by hand); with `upright=False`, or an empty list,
the protocol is "holidays" and `rotations` is None.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path

import numpy as np

from multigrain.data.listing import image_files
from multigrain.data.standard._files import require_dir
from multigrain.data.standard.types import RetrievalBenchmark
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

LAYOUT = "root/jpg/NNNNNN.jpg (e.g. 100000.jpg ... 149903.jpg; or the images directly in root)"
EXPECTED_NUM_IMAGES = 1491
_NAME = re.compile(r"^\d{6}$")
# "name degrees" or '"name": degrees,' (YAML/JSON mapping lines).
_ROTATION_LINE = re.compile(r"""^["']?([^"'\s:]+)["']?\s*:?\s*(-?\d+)\s*,?$""")


def read_rotations(path: Path) -> dict[str, int]:
    """Parse a rotation list: file name -> clockwise degrees in {90, 180, 270}.

    Lines are "<name> <degrees>" or '"<name>": <degrees>,'; "#" comments, blank lines and
    lone braces are ignored. An entry of 0 degrees is dropped.
    """
    if not path.is_file():
        raise MultiGrainError(f"Holidays rotation list {path} not found")
    rotations: dict[str, int] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line in {"{", "}"}:
            continue
        match = _ROTATION_LINE.match(line)
        if match is None:
            raise MultiGrainError(
                f"{path}:{number}: cannot parse {line!r}; expected '<file name> <degrees>'"
            )
        degrees = int(match.group(2)) % 360
        if degrees not in (0, 90, 180, 270):
            raise MultiGrainError(
                f"{path}:{number}: rotation {match.group(2)} is not a multiple of 90 degrees"
            )
        if degrees:
            rotations[match.group(1)] = degrees
    return rotations


def shipped_rotations_file() -> Path:
    """Path of the rotation list shipped with the package."""
    return Path(str(resources.files("multigrain.data.standard") / "holidays_rotations.txt"))


def read_holidays(
    root: Path | str, *, upright: bool = True, rotations_file: Path | str | None = None
) -> RetrievalBenchmark:
    """Read INRIA Holidays from `root` (layout in the module docstring).

    Returns a RetrievalBenchmark with one query per group; protocol "holidays-upright" only
    when `upright` and a non-empty rotation list is used, else "holidays".
    """
    root = require_dir(Path(root), what="INRIA Holidays", layout=LAYOUT)
    folder = root / "jpg" if (root / "jpg").is_dir() else root
    images = image_files(folder, recursive=False, suffixes=(".jpg",))
    if not images:
        raise MultiGrainError(f"INRIA Holidays: no .jpg images in {folder}; expected {LAYOUT}")
    bad = [p.name for p in images if not _NAME.match(p.stem)]
    if bad:
        raise MultiGrainError(
            f"INRIA Holidays: unexpected image names in {folder} (e.g. {bad[0]}); "
            f"expected six-digit numbers: {LAYOUT}"
        )
    if len(images) != EXPECTED_NUM_IMAGES:
        logger.warning(
            "INRIA Holidays in %s has %d images, not %d", folder, len(images), EXPECTED_NUM_IMAGES
        )
    database = sorted(images, key=lambda p: int(p.stem))
    groups: dict[int, list[int]] = {}
    for index, path in enumerate(database):
        groups.setdefault(int(path.stem) // 100, []).append(index)

    queries: list[Path] = []
    positives: list[np.ndarray] = []
    junk: list[np.ndarray] = []
    query_in_database: list[int | None] = []
    for members in groups.values():  # insertion order = ascending group number
        query_index, *others = members
        queries.append(database[query_index])
        positives.append(np.asarray(others, dtype=np.int64))
        junk.append(np.asarray([query_index], dtype=np.int64))
        query_in_database.append(query_index)

    rotations: dict[str, int] | None = None
    if upright:
        source = Path(rotations_file) if rotations_file is not None else shipped_rotations_file()
        rotations = read_rotations(source) or None
        if rotations is None:
            logger.warning(
                "Holidays rotation list %s is empty: evaluating images as stored "
                "(protocol 'holidays'); pass rotations_file= for the upright protocol",
                source,
            )
        else:
            unknown = sorted(set(rotations) - {p.name for p in database})
            if unknown:
                logger.warning(
                    "%d rotated names are not in %s, e.g. %s", len(unknown), folder, unknown[0]
                )
    return RetrievalBenchmark(
        name="holidays",
        database=database,
        queries=queries,
        query_boxes=[None] * len(queries),
        positives=positives,
        junk=junk,
        query_in_database=query_in_database,
        rotations=rotations,
        protocol="holidays-upright" if rotations else "holidays",
    )
