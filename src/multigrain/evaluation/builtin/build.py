"""Build the built-in benchmark (train / held-out classes / copy detection / instances).

Layout under ``output``::

    train/<category>/<name>.jpg          labelled training photos (torchvision ImageFolder)
    train_unlabelled/<name>.jpg          training photos without a category
    heldout_classes/<category>/<name>.jpg
    copydetection/references/R000000.jpg, queries/Q00000.jpg, ground_truth.csv, queries.csv
    instances/ukbench00000.jpg ...       4 overlapping views per high-resolution photo
    manifest.json

The split is by source group (a photo, its re-encodings and stereo partners), stratified
by category, seeded. The whole tree is written into a temporary sibling folder and moved
into place at the end, so a failed build leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from multigrain.data.photos import pool
from multigrain.evaluation.builtin import augment
from multigrain.evaluation.builtin.instances import instance_views
from multigrain.evaluation.builtin.manifest import BuiltinManifest, ManifestImage, PartCounts
from multigrain.evaluation.builtin.phash import group_map, phash_descriptors
from multigrain.runtime.atomic import atomic_write_text, staged_folder
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

LONGEST_SIDE = 512
JPEG_QUALITY = 90
HELDOUT_FRACTION = 0.35
QUERY_SOURCE_FRACTION = 2 / 3  # of the held-out photos; the rest are distractors
QUERIES_PER_REFERENCE = 9
INSTANCE_MIN_SIDE = 640  # longest side of a photo used for the instance part
DEFAULT_MAX_POOL = 400


def _save_jpeg(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _name(image: pool.PoolImage) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(image.key.rsplit(":", 1)[-1]).stem)[:40]
    return f"{stem}_{image.sha1[:8]}"


def split_groups(
    images: list[pool.PoolImage], seed: int
) -> tuple[list[pool.PoolImage], list[pool.PoolImage], set[str]]:
    """-> (train, heldout, categories): whole groups go one way; stratified by category.

    Categories with fewer than 2 groups are dropped (their images count as unlabelled), so
    every category has images on both sides.
    """
    groups: dict[str, list[pool.PoolImage]] = defaultdict(list)
    for image in images:
        groups[image.group].append(image)
    by_label: dict[str, list[str]] = defaultdict(list)
    for group, members in sorted(groups.items()):
        by_label[members[0].label].append(group)
    categories = {label for label, g in by_label.items() if label and len(g) >= 2}
    rng = np.random.default_rng(seed)
    heldout_groups: set[str] = set()
    for label in sorted(by_label):
        names = by_label[label]
        order = [names[i] for i in rng.permutation(len(names))]
        count = max(1, round(HELDOUT_FRACTION * len(names))) if len(names) >= 2 else 0
        heldout_groups.update(order[:count])
    train = [i for i in images if i.group not in heldout_groups]
    heldout = [i for i in images if i.group in heldout_groups]
    return train, heldout, categories


def _refuse_or_clear(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise MultiGrainError(f"{output} is a file: give a folder for the benchmark")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise MultiGrainError(f"{output} is not empty: choose an empty folder or overwrite=True")


def build_builtin_benchmark(
    output: Path,
    *,
    seed: int = 0,
    max_pool: int | None = DEFAULT_MAX_POOL,
    progress: bool = True,
    overwrite: bool = False,
) -> BuiltinManifest:
    """Build the benchmark from installed Debian packages and scikit-image (no download).

    Raises MultiGrainError naming a missing package and its `apt-get install` command, or
    when `output` is a non-empty folder and `overwrite` is False.
    """
    start = time.perf_counter()
    output = Path(output)
    _refuse_or_clear(output, overwrite)
    images = pool.select_pool(pool.scan_pool(), max_pool, seed)
    train, heldout, categories = split_groups(images, seed)
    with staged_folder(output) as staging:
        manifest = _write_all(staging, train, heldout, categories, seed, progress)
        manifest.output, manifest.max_pool = str(output), max_pool
        manifest.build_seconds = round(time.perf_counter() - start, 2)
        text = json.dumps(dataclasses.asdict(manifest), indent=1, sort_keys=True)
        atomic_write_text(staging / "manifest.json", text + "\n")
    logger.info("built-in benchmark in %s (%.1f s)", output, manifest.build_seconds)
    return manifest


def _write_all(
    root: Path,
    train: list[pool.PoolImage],
    heldout: list[pool.PoolImage],
    categories: set[str],
    seed: int,
    progress: bool,
) -> BuiltinManifest:
    records: list[ManifestImage] = []
    for part, members in (("train", train), ("heldout", heldout)):
        for image in tqdm(members, desc=f"{part} photos", disable=not progress):
            name = _name(image)
            loaded = image.load(LONGEST_SIDE)
            if image.label in categories:
                folder = "train" if part == "train" else "heldout_classes"
                _save_jpeg(loaded, root / folder / image.label / f"{name}.jpg")
            elif part == "train":
                _save_jpeg(loaded, root / "train_unlabelled" / f"{name}.jpg")
            fields = dataclasses.asdict(image)
            fields.pop("read")
            fields.pop("group")
            records.append(ManifestImage(name=name, source=fields.pop("key"), part=part, **fields))
    num_queries = _write_copy_detection(root / "copydetection", heldout, seed, progress)
    num_instances = _write_instances(root / "instances", heldout, seed)
    per_package: dict[str, int] = defaultdict(int)
    licences: dict[str, str] = {}
    for image in train + heldout:
        per_package[image.package] += 1
        licences[image.package] = image.licence
    counts = PartCounts(
        pool=len(train) + len(heldout),
        train=len(train),
        train_labelled=sum(i.label in categories for i in train),
        heldout=len(heldout),
        heldout_labelled=sum(i.label in categories for i in heldout),
        categories=len(categories),
        references=len(heldout),
        queries=num_queries,
        instances=num_instances,
    )
    return BuiltinManifest(
        output=str(root),
        seed=seed,
        max_pool=None,
        counts=counts,
        per_package=dict(sorted(per_package.items())),
        licences=dict(sorted(licences.items())),
        parameters=_parameters(),
        phash_instance_map=_phash_instance_map(root / "instances"),
        phash_copy_top1=_phash_copy_top1(root / "copydetection"),
        build_seconds=0.0,
        images=records,
    )


def _parameters() -> dict[str, object]:
    return {
        "longest_side": LONGEST_SIDE,
        "jpeg_quality": JPEG_QUALITY,
        "heldout_fraction": HELDOUT_FRACTION,
        "query_source_fraction": QUERY_SOURCE_FRACTION,
        "queries_per_reference": QUERIES_PER_REFERENCE,
        "instance_min_side": INSTANCE_MIN_SIDE,
        "photo_rule": {
            "min_side": pool.MIN_SIDE,
            "max_transparent": pool.MAX_TRANSPARENT,
            "min_colours": pool.MIN_COLOURS,
            "min_colours_by_package": pool.MIN_COLOURS_BY_PACKAGE,
        },
        "families": [f.value for f in augment.Family],
        "strengths": [s.value for s in augment.Strength],
    }


def _write_copy_detection(
    root: Path, heldout: list[pool.PoolImage], seed: int, progress: bool
) -> int:
    """References = every held-out photo; queries from the first 2/3 (seeded order)."""
    rng = np.random.default_rng([seed, 1])
    order = [heldout[i] for i in rng.permutation(len(heldout))]
    (root / "queries").mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(order):
        _save_jpeg(image.load(LONGEST_SIDE), root / "references" / f"R{index:06d}.jpg")
    num_sources = max(1, round(QUERY_SOURCE_FRACTION * len(order))) if order else 0
    combos = [(f, s) for f in augment.Family for s in augment.Strength]
    num_queries = max(QUERIES_PER_REFERENCE * num_sources, len(combos)) if num_sources else 0
    schedule: list[tuple[augment.Family, augment.Strength]] = []
    while len(schedule) < num_queries:  # every combination once per cycle, shuffled
        schedule.extend(combos[i] for i in rng.permutation(len(combos)))
    rows = ["query_id,reference_id,family,strength"]
    truth = ["query_id,reference_id"]
    for q in tqdm(range(num_queries), desc="queries", disable=not progress):
        reference = q % num_sources
        family, strength = schedule[q]
        source = order[reference].load(LONGEST_SIDE)
        query = augment.apply_transform(
            source, family, strength, np.random.default_rng([seed, 2, q])
        )
        _save_jpeg(query, root / "queries" / f"Q{q:05d}.jpg")
        rows.append(f"Q{q:05d},R{reference:06d},{family.value},{strength.value}")
        truth.append(f"Q{q:05d},R{reference:06d}")
    atomic_write_text(root / "queries.csv", "\n".join(rows) + "\n")
    atomic_write_text(root / "ground_truth.csv", "\n".join(truth) + "\n")
    return num_queries


def _write_instances(root: Path, heldout: list[pool.PoolImage], seed: int) -> int:
    """4 views of each held-out photo whose longest side >= INSTANCE_MIN_SIDE (at least 4)."""
    large = [i for i in heldout if max(i.width, i.height) >= INSTANCE_MIN_SIDE]
    if len(large) < 4:
        large = sorted(heldout, key=lambda i: -i.width * i.height)[:4]
    root.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(large):
        views = instance_views(image.load(1024), np.random.default_rng([seed, 3, k]))
        for j, view in enumerate(views):
            view.thumbnail((LONGEST_SIDE, LONGEST_SIDE), Image.Resampling.LANCZOS)
            _save_jpeg(view, root / f"ukbench{4 * k + j:05d}.jpg")
    return 4 * len(large)


def _phash_instance_map(root: Path) -> float:
    paths = sorted(root.glob("ukbench*.jpg"))
    return round(group_map(phash_descriptors(paths)), 4) if paths else float("nan")


def _phash_copy_top1(root: Path) -> float:
    """Fraction of queries whose nearest reference by pHash is the right one."""
    truth = [line.split(",") for line in (root / "ground_truth.csv").read_text().split()[1:]]
    if not truth:
        return float("nan")
    references = sorted((root / "references").glob("*.jpg"))
    ref_index = {p.stem: i for i, p in enumerate(references)}
    queries = phash_descriptors([root / "queries" / f"{q}.jpg" for q, _ in truth])
    nearest = np.argmax(queries @ phash_descriptors(references).T, axis=1)
    correct = [n == ref_index[r] for n, (_, r) in zip(nearest, truth, strict=True)]
    return round(float(np.mean(correct)), 4)
