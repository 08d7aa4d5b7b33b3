"""Build the shipped model's corpus: training photos, plus validation and test copy sets
from photo packages that training never sees.

Layout under ``output``::

    train/<category>/<name>.jpg     labelled training photos (ImageFolder)
    train_unlabelled/<name>.jpg     training photos without a category (instances only)
    classes_heldout/<category>/...  held-out photos of the training categories (top-1)
    validation/                     copy set from the validation package(s): curves, p*,
                                    whitening check, score threshold
    test/                           copy set from the test package(s): final figures only
    manifest.json                   every image: source, package, licence, split, tile

The split is by whole Debian package for the copy sets: no photo of a validation or test
package, nor any tile of one, is in ``train``. Large photos (wallpapers) are cut into a
grid of tiles (each about ``TILE_SIDE`` pixels before resizing), each tile an instance
of its own: tiles of one photo are the hard negatives a copy detector must tell apart.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from multigrain.data.corpus.distortions import HeldoutFamily
from multigrain.data.corpus.heldout import write_copy_set
from multigrain.data.photos import pool
from multigrain.data.photos.extra import debian_package, extra_sources
from multigrain.data.photos.packages import SOURCES as BUILTIN_SOURCES
from multigrain.data.photos.packages import package_files
from multigrain.runtime.atomic import atomic_write_text, staged_folder
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

#: Whole packages kept out of training: the validation set chooses (curves, p*, threshold),
#: the test set only reports.
VALIDATION_PACKAGES = ("mate-backgrounds",)
TEST_PACKAGES = ("lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
TRAIN_LONGEST_SIDE = 384  # the training crops are 128-224 px: no need to decode more
HELDOUT_LONGEST_SIDE = 512
TILE_SIDE = 960  # a held-out photo is cut into round(side / TILE_SIDE) tiles along each side
TRAIN_TILE_SIDE = 640  # training photos into smaller tiles: more instances, more hard negatives
MAX_TILES_PER_SIDE = 3
CLASSES_HELDOUT_FRACTION = 0.25
QUERIES_PER_REFERENCE = 3  # test: as many copies per photo as the user set had
#: validation holds few photos (one package): every family for every original, so that
#: the choices made on it (p*, whitening, flip, threshold) rest on more queries
VALIDATION_QUERIES_PER_REFERENCE = len(HeldoutFamily)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class CorpusImage:
    name: str
    source: str
    package: str
    licence: str
    label: str
    split: str  # train | classes_heldout | validation | test
    tile: tuple[int, int, int, int]  # (left, top, right, bottom) in the source photo
    sha1: str


@dataclass
class CorpusManifest:
    output: str
    seed: int
    validation_packages: list[str]
    test_packages: list[str]
    parameters: dict[str, object]
    photos_per_package: dict[str, int]
    images_per_split: dict[str, int]
    licences: dict[str, str]
    queries: dict[str, int]
    build_seconds: float
    images: list[CorpusImage] = field(default_factory=list)


def scan_corpus(sources: Sequence[str] | None = None) -> list[pool.PoolImage]:
    """Every photo of every source (the built-in benchmark's and :mod:`corpus.sources`).

    A source whose Debian package is not installed raises MultiGrainError with the
    ``apt-get install`` command (``scripts/setup-system.sh --corpus`` installs them all).
    """
    everything = {**BUILTIN_SOURCES, **extra_sources()}
    names = list(everything) if sources is None else list(sources)
    for name in names:
        if name not in everything:
            raise MultiGrainError(
                f"unknown photo source {name!r}: choose from {sorted(everything)}"
            )
        if name != "scikit-image":
            package_files(debian_package(name))  # fail early, naming the package
    candidates = [c for name in names for c in everything[name]()]
    return pool.filter_photos(candidates)


def tile_boxes(
    width: int, height: int, tile_side: int = TILE_SIDE
) -> list[tuple[int, int, int, int]]:
    """Grid of tiles covering the photo: round(side / tile_side) per side, 1 to 3."""
    columns = min(MAX_TILES_PER_SIDE, max(1, round(width / tile_side)))
    rows = min(MAX_TILES_PER_SIDE, max(1, round(height / tile_side)))
    xs = np.linspace(0, width, columns + 1).round().astype(int)
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    return [
        (int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1]))
        for r in range(rows)
        for c in range(columns)
    ]


def _name(image: pool.PoolImage, tile_index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(image.key.rsplit(":", 1)[-1]).stem)[:40]
    return f"{stem}_{image.sha1[:8]}_t{tile_index}"


def _save_jpeg(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _tiles(
    image: pool.PoolImage, longest_side: int, tile_side: int
) -> list[tuple[tuple[int, int, int, int], Image.Image]]:
    full = image.load()
    out = []
    for box in tile_boxes(*full.size, tile_side):
        tile = full.crop(box)
        tile.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
        out.append((box, tile))
    return out


def _classes_split(images: list[pool.PoolImage], seed: int) -> tuple[set[str], set[str]]:
    """-> (categories with >= 2 groups, held-out groups): a quarter of each category's groups."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for image in images:
        if image.label:
            by_label[image.label].append(image.group)
    categories = {label for label, groups in by_label.items() if len(set(groups)) >= 2}
    rng = np.random.default_rng(seed)
    heldout: set[str] = set()
    for label in sorted(categories):
        groups = sorted(set(by_label[label]))
        count = max(1, round(CLASSES_HELDOUT_FRACTION * len(groups)))
        heldout.update(groups[i] for i in rng.permutation(len(groups))[:count])
    return categories, heldout


def build_corpus(
    output: Path,
    *,
    seed: int = 0,
    validation_packages: Sequence[str] = VALIDATION_PACKAGES,
    test_packages: Sequence[str] = TEST_PACKAGES,
    sources: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> CorpusManifest:
    """Write the corpus under ``output`` (staged, then moved into place); returns its manifest."""
    start = time.perf_counter()
    output = Path(output)
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise MultiGrainError(f"{output} is not empty: choose an empty folder or --overwrite")
    overlap = set(validation_packages) & set(test_packages)
    if overlap:
        raise MultiGrainError(f"packages {sorted(overlap)} are both validation and test")
    photos = scan_corpus(sources)
    held = {name: "validation" for name in validation_packages}
    held |= {name: "test" for name in test_packages}
    found = {held[photo.package] for photo in photos if photo.package in held}
    for split, packages in (("validation", validation_packages), ("test", test_packages)):
        if split not in found:
            raise MultiGrainError(f"no photos found in the {split} package(s) {list(packages)}")
    training = [p for p in photos if p.package not in held]
    categories, heldout_groups = _classes_split(training, seed)
    records: list[CorpusImage] = []
    references: dict[str, list[Path]] = defaultdict(list)
    with staged_folder(output) as staging:
        for photo in tqdm(photos, desc="corpus photos", disable=not progress):
            split = held.get(photo.package, "train")
            if split == "train" and photo.group in heldout_groups:
                split = "classes_heldout"
            labelled = photo.label in categories
            side = TRAIN_LONGEST_SIDE if split == "train" else HELDOUT_LONGEST_SIDE
            tile_side = TRAIN_TILE_SIDE if split == "train" else TILE_SIDE
            for index, (box, tile) in enumerate(_tiles(photo, side, tile_side)):
                name = _name(photo, index)
                if split in ("validation", "test"):
                    path = staging / split / "originals" / f"{name}.jpg"
                    references[split].append(path)
                elif split == "classes_heldout" and not labelled:
                    continue  # an unlabelled photo of a held-out group: not needed
                elif labelled:
                    path = staging / split / photo.label / f"{name}.jpg"
                else:
                    path = staging / "train_unlabelled" / f"{name}.jpg"
                _save_jpeg(tile, path)
                records.append(
                    CorpusImage(
                        name, photo.key, photo.package, photo.licence,
                        photo.label if labelled else "", split, box, photo.sha1,
                    )
                )  # fmt: skip
        queries = {
            split: write_copy_set(
                staging / split,
                sorted(paths),
                seed=seed,
                queries_per_reference=(
                    VALIDATION_QUERIES_PER_REFERENCE
                    if split == "validation"
                    else QUERIES_PER_REFERENCE
                ),
                progress=progress,
            )
            for split, paths in sorted(references.items())
        }
        manifest = _manifest(
            output, seed, validation_packages, test_packages, photos, records, queries
        )
        manifest.build_seconds = round(time.perf_counter() - start, 1)
        text = json.dumps(dataclasses.asdict(manifest), indent=1, sort_keys=True)
        atomic_write_text(staging / "manifest.json", text + "\n")
    return manifest


def _manifest(
    output: Path,
    seed: int,
    validation_packages: Sequence[str],
    test_packages: Sequence[str],
    photos: list[pool.PoolImage],
    records: list[CorpusImage],
    queries: dict[str, int],
) -> CorpusManifest:
    per_package: dict[str, int] = defaultdict(int)
    licences: dict[str, str] = {}
    for photo in photos:
        per_package[photo.package] += 1
        licences[photo.package] = photo.licence
    per_split: dict[str, int] = defaultdict(int)
    for record in records:
        per_split[record.split] += 1
    return CorpusManifest(
        output=str(output),
        seed=seed,
        validation_packages=list(validation_packages),
        test_packages=list(test_packages),
        parameters={
            "train_longest_side": TRAIN_LONGEST_SIDE,
            "heldout_longest_side": HELDOUT_LONGEST_SIDE,
            "tile_side": TILE_SIDE,
            "train_tile_side": TRAIN_TILE_SIDE,
            "max_tiles_per_side": MAX_TILES_PER_SIDE,
            "classes_heldout_fraction": CLASSES_HELDOUT_FRACTION,
            "queries_per_reference": QUERIES_PER_REFERENCE,
            "validation_queries_per_reference": VALIDATION_QUERIES_PER_REFERENCE,
            "photo_rule": {
                "min_side": pool.MIN_SIDE,
                "max_transparent": pool.MAX_TRANSPARENT,
                "min_colours": pool.MIN_COLOURS,
                "min_colours_by_package": pool.MIN_COLOURS_BY_PACKAGE,
            },
        },
        photos_per_package=dict(sorted(per_package.items())),
        images_per_split=dict(sorted(per_split.items())),
        licences=dict(sorted(licences.items())),
        queries=queries,
        build_seconds=0.0,
        images=records,
    )
