"""Photo sources beyond the built-in benchmark's, for training and testing the shipped model.

Every source yields :class:`~multigrain.data.photos.packages.Candidate` s, one per source photo,
keyed by its installed path (or ``bundle.rcc:/inner/path``). Counts on Debian 12 before the
photographic filter (:func:`multigrain.data.photos.pool.is_photographic`):

- wallpaper packages (one image per wallpaper; Plasma ships several resolutions of one
  picture, the largest is kept): ``plasma-workspace-wallpapers`` ~30, ``ukui-wallpapers``
  12, ``mate-backgrounds`` 30, ``gnome-backgrounds`` 16 (abstract), ``lomiri-wallpapers``
  2 + ``-16.04`` 15 + ``-20.04`` 4 (Ubuntu photo-contest pictures);
- ``stellarium-data``: ~550 telescope photos of nebulae and galaxies, planet textures and
  landscape panoramas (the constellation drawings are left out);
- ``kstars-data``: planet and sky textures;
- ``gcompris-qt-data``: the photo bundles the built-in benchmark does not read (paintings,
  word photos, details, shapes, music, chronology, solar system), unlabelled.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from multigrain.data.listing import is_image_name
from multigrain.data.photos.packages import (
    PHOTO_SUFFIXES,
    Candidate,
    package_files,
    package_licence,
)
from multigrain.data.photos.rcc import read_rcc

#: Wallpaper packages read as "every image file, one per wallpaper".
WALLPAPER_PACKAGES = (
    "plasma-workspace-wallpapers",
    "ukui-wallpapers",
    "mate-backgrounds",
    "gnome-backgrounds",
    "lomiri-wallpapers",
    "lomiri-wallpapers-16.04",
    "lomiri-wallpapers-20.04",
)
#: gcompris bundles with photos that the built-in benchmark does not use.
GCOMPRIS_EXTRA_BUNDLES = (
    "paintings",
    "lang",
    "details",
    "babyshapes",
    "explore_world_music",
    "chronos",
    "solar_system",
    "clickgame",
)


def _pixels(path: Path) -> int:
    """Width x height read from a name like ``5120x2880.png`` (Plasma's layout), else 0."""
    match = re.fullmatch(r"(\d+)x(\d+)", path.stem)
    return int(match[1]) * int(match[2]) if match else 0


def _wallpapers(package: str) -> Iterator[Candidate]:
    licence = package_licence(package)
    files = [p for p in package_files(package) if is_image_name(p.name, suffixes=PHOTO_SUFFIXES)]
    if package == "plasma-workspace-wallpapers":
        # /usr/share/wallpapers/<Name>/contents/images{,_dark}/<W>x<H>.<ext>: one picture
        # per <Name> (its dark variant is a separate picture); keep the largest.
        largest: dict[str, Path] = {}
        for path in files:
            if "screenshot" in path.name:
                continue
            name = f"{path.parents[2].name}/{path.parent.name}"
            if name not in largest or _pixels(path) > _pixels(largest[name]):
                largest[name] = path
        files = sorted(largest.values())
    for path in sorted(files):
        # Elephants.jpg, Elephants_3840x2160.jpg: one picture in several sizes, one group.
        stem = re.sub(r"_\d+x\d+$", "", path.stem)
        group = f"{package}:{path.parent}/{stem}"
        yield Candidate(str(path), package, licence, "", group, path.read_bytes)


def _stellarium() -> Iterator[Candidate]:
    package = "stellarium-data"
    licence = package_licence(package)
    for path in package_files(package):
        text = str(path)
        if not is_image_name(path.name, suffixes=PHOTO_SUFFIXES) or "/skycultures/" in text:
            continue
        if "/nebulae/" in text or "/landscapes/" in text or "/textures/" in text:
            yield Candidate(text, package, licence, "", f"{package}:{text}", path.read_bytes)


def _kstars() -> Iterator[Candidate]:
    package = "kstars-data"
    licence = package_licence(package)
    for path in package_files(package):
        textures = "/share/kstars/textures/" in str(path)
        if textures and is_image_name(path.name, suffixes=PHOTO_SUFFIXES):
            yield Candidate(str(path), package, licence, "", f"{package}:{path}", path.read_bytes)


def _gcompris_extra() -> Iterator[Candidate]:
    package = "gcompris-qt-data"
    licence = package_licence(package)
    bundles = {p.stem: p for p in package_files(package) if p.suffix == ".rcc"}
    for name in GCOMPRIS_EXTRA_BUNDLES:
        if name not in bundles:
            continue
        for inner, data in sorted(read_rcc(bundles[name]).items()):
            if is_image_name(inner, suffixes=PHOTO_SUFFIXES):
                key = f"{bundles[name]}:{inner}"
                yield Candidate(key, package, licence, "", key, functools.partial(bytes, data))


def extra_sources() -> dict[str, Callable[[], Iterator[Candidate]]]:
    """Source name -> candidates; a name is a Debian package (gcompris: ``-extra`` bundles)."""
    sources: dict[str, Callable[[], Iterator[Candidate]]] = {
        package: functools.partial(_wallpapers, package) for package in WALLPAPER_PACKAGES
    }
    sources["stellarium-data"] = _stellarium
    sources["kstars-data"] = _kstars
    sources["gcompris-qt-data-extra"] = _gcompris_extra
    return sources


def debian_package(source: str) -> str:
    """The Debian package behind a source name."""
    return source.removesuffix("-extra")


def count_by_package(candidates: list[Candidate]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for candidate in candidates:
        counts[candidate.package] += 1
    return dict(sorted(counts.items()))
