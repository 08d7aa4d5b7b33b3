"""The built-in benchmark's manifest.json: what was built, from which photos, how."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ManifestImage:
    name: str  # stable id inside the benchmark
    source: str  # path, or bundle.rcc:/inner/path
    package: str
    licence: str
    label: str
    width: int
    height: int
    sha1: str
    part: str  # "train" or "heldout"


@dataclass(frozen=True)
class PartCounts:
    pool: int
    train: int
    train_labelled: int
    heldout: int
    heldout_labelled: int
    categories: int
    references: int
    queries: int
    instances: int


@dataclass
class BuiltinManifest:
    output: str
    seed: int
    max_pool: int | None
    counts: PartCounts
    per_package: dict[str, int]
    licences: dict[str, str]
    parameters: dict[str, object]
    phash_instance_map: float
    phash_copy_top1: float
    build_seconds: float
    images: list[ManifestImage]
