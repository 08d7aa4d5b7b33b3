"""A "folder of photos with known copies" for `multigrain find-duplicates`, built from
Debian photo packages that the shipped model never trained on.
Over 300 lines because the curated photo list, the tiling and the copy kinds belong together.

DIR/images/ holds N distinct real photos (longest side <= 1600 px, JPEG q90) plus
hand-made-style copies of a few of them (:data:`GROUP_PLAN`, 11 true groups of 2-3 files):
50 % resize, JPEG q30, a 70-85 % crop, a PNG re-save, brightness/contrast, a small rotation
(borders cropped away), a caption bar, and byte-identical file copies. File names (IMG_#####)
say nothing of the grouping and every file gets the same modification time. DIR/truth.json:
the true groups, each file's source (``package/path``, a tile adds ``#tile ...``), the
packages, each copy's kind; DIR/manifest.json: package versions, photos per package, what
each copy did, what was dropped and why, and the closest remaining pairs by difference hash.
The same seed and packages give the same bytes.

Photos: the curated paths of :data:`PHOTO_PATHS`, looked at by eye on Debian 12 (the pool's
colour rule would drop real photos with smooth areas, a water drop or a storm sky, so only
its size and transparency rules apply to them); a package not in the table gives every image
that passes the whole photographic rule of :mod:`multigrain.data.photos.pool`. Byte-identical
and near-identical files (256-bit difference hashes within ``NEAR_BITS``) are kept once.
The packages hold ~110 whole photos; to reach N, the largest are cut into 2-6 tiles, which
replace the whole photo: a 12 % gap between tiles (no shared pixel), each tile with detail
(not sky or bokeh, :func:`detail`) and differing from its siblings in hash and colour layout.

    # the error message of a first run names the apt-get command for the missing packages
    .venv/bin/python benchmarks/photo_folder_case.py --output /tmp/photo_case [--seed 0]
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import io
import json
import math
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from multigrain.data.photos.packages import PHOTO_SUFFIXES, package_files
from multigrain.data.photos.pool import (
    MAX_TRANSPARENT,
    MIN_SIDE,
    decode_bytes,
    is_photographic,
    photo_statistics,
)
from multigrain.runtime.atomic import staged_folder
from multigrain.runtime.errors import MultiGrainError

_Q = "*/qt5/examples/"
#: Package -> fnmatch patterns of its real photographs (no training or test set of ours
#: reads these packages, except the held-out mate (validation) and lomiri (test) ones).
PHOTO_PATHS: dict[str, tuple[str, ...]] = {
    "mate-backgrounds": ("*/backgrounds/mate/nature/*.jpg",),
    "lomiri-wallpapers-16.04": ("*/backgrounds/*_by_*.jpg",),
    "lomiri-wallpapers-20.04": ("*/backgrounds/*_by_*.jpg",),
    "palapeli-data": ("*/palapeli/collection/*.jpg",),
    "tuxpaint-data": ("*/tuxpaint/templates/*.jpg", "*/starters/reef-back.png",
                      "*/starters/skyline-sf-dusk-back.jpeg"),
    "jigzo-data": ("*/jigzo/puzzles/*.pzl",),
    "kalzium-data": ("*/kalzium/data/toolpics/*.jpg",),
    "lxqt-themes": tuple(f"*/lxqt/wallpapers/{n}" for n in (
        "Butterfly-Kenneth-Wimer.jpg", "after-the-rain.jpg", "appleflower.png", "flowers.png")),
    "sddm-theme-maldives": ("*/maldives/background.jpg",),  # maldives.jpg: same, with a UI
    "digikam-data": ("*/digikam/about/images/body-background.jpg",),
    "python-matplotlib-data": ("*/sample_data/grace_hopper.jpg",),
    "qtbase5-examples": tuple(_Q + p for p in (
        "*/fademessage/background.jpg", "*/boxes/square.jpg", "*/chip/qt4logo.png",
        "*/weatheranchorlayout/images/place.jpg", "*/affine/bg1.jpg",
        "*/composition/flower.jpg")),
    "qtdeclarative5-examples": tuple(_Q + f"*/listview/content/pics/{n}.jpg" for n in (
        "fruit-salad", "hamburger", "pancakes", "vegetable-soup")),
    "qtquickcontrols2-5-examples": (_Q + "*/musicplayer/images/album-cover.jpg",),
    "qtmultimedia5-examples": (_Q + "*/qmlvideo/images/leaves.jpg",),
    "scribus-data": ("*/templates/nl1/kites.jpg", "*/textbased/an_image.jpg",
                     "*/textbased/author.jpg"),
    "afterstep-data": ("*/afterstep/desktop/tiles/rose512.jpg",),
    "imagemagick-6-doc": ("*/html/images/bluebells_darker.jpg",),  # 3 more tone variants
    # hugin: one image per scene (its help shows each in many projections and edits)
    "hugin-data": tuple(f"*/help_en_EN/{n}.jpg" for n in (
        "300px-Lamp_enfuse", "CA_fringes00", "CA_tCA00", "250px-LagardePont-defish",
        "600px-Tuebingen_Neckarfront_small15_2006-06-11", "800px-C_Marchi-GrandCentral-adj",
        "Medinet_habu_horizontal_fisheye")),
}  # fmt: skip
#: Graphics (not photos) that the lomiri patterns would match.
_NOT_PHOTOS = ("*/umang_by_*", "*/Fossa_by_*", "*/Painting-Colors_by_*", "*/analogpattern_by_*",
               "*/Infinite-Sea_by_*")  # fmt: skip
LONGEST_SIDE = 1600
NEAR_BITS = 48  # of 256 difference-hash bits: at or below, two photos count as one
SIBLING_BITS = 64  # tiles of one photo must differ by more bits, and in colour layout by
SIBLING_LAYOUT = 24.0  # at least this mean |difference| of 4x4 RGB thumbnails (0-255)
TILE_MIN_COLOURS = 200  # the pool asks 500 of a whole photo: too many for a mountain tile
TILE_MIN_DETAIL = 0.12  # a tile of sky, sea or bokeh has less (see `detail`)
MIN_TILE_SIDE = 400
TILE_GAP = 0.06  # of a cell, cut from each side of it
_GRIDS = ((3, 2), (2, 3), (2, 2), (3, 1), (1, 3), (2, 1), (1, 2))  # most tiles first
MTIME = 1_600_000_000
CAPTIONS = ("Summer 2019", "Grandma's garden", "Trip with Anna and Leo", "Best of 2021",
            "Do not delete!", "Weekend away, day 2", "For the newsletter")  # fmt: skip


class CopyKind(Enum):
    RESIZE_50 = "resize_50"
    JPEG_Q30 = "jpeg_q30"
    CROP = "crop"
    PNG = "png"
    BRIGHTNESS_CONTRAST = "brightness_contrast"
    ROTATE = "rotate"
    CAPTION = "caption"
    EXACT = "exact"


K = CopyKind
#: One entry per true group: the copies made of one distinct photo.
GROUP_PLAN: tuple[tuple[CopyKind, ...], ...] = (
    (K.RESIZE_50,), (K.JPEG_Q30,), (K.CROP,), (K.PNG,), (K.BRIGHTNESS_CONTRAST,), (K.ROTATE,),
    (K.CAPTION,), (K.EXACT,), (K.EXACT, K.EXACT), (K.CROP, K.JPEG_Q30), (K.RESIZE_50, K.CAPTION),
)  # fmt: skip


@dataclass(frozen=True)
class SourcePhoto:
    """One photo of a package: `source` is ``package/path`` (a tile adds ``#tile``)."""

    package: str
    source: str
    read: Callable[[], bytes]


@dataclass(eq=False)  # compared by identity
class Distinct:
    """One distinct photo of the case (longest side <= LONGEST_SIDE) as it is saved: JPEG
    q90 bytes (not decoded pixels: 200 of those would hold ~1 GB)."""

    photo: SourcePhoto
    jpeg: bytes
    size: tuple[int, int]
    pixels: int  # of the source file, before downscaling
    code: int  # difference_hash(image)
    tiled: str = ""  # for a tile: its row, column and box in the source photo


def jigzo_photo(path: Path) -> bytes:
    """The whole photo of a jigzo ``.pzl`` puzzle (PNG bytes): the file is a sequence of
    ``name\\nsize\\n<bytes>`` entries; the map's ``image x y w h`` line places the photo in
    the piece atlas (the one ``.jpg`` that is not the ``-t.jpg`` thumbnail)."""
    data = path.read_bytes()
    entries: dict[str, bytes] = {}
    position = 0
    for _ in range(4):  # header lines: magic, version, title, web address
        position = data.index(b"\n", position) + 1
    while position < len(data):
        name_end = data.index(b"\n", position)
        size_end = data.index(b"\n", name_end + 1)
        size = int(data[name_end + 1 : size_end])
        entries[data[position:name_end].decode()] = data[size_end + 1 : size_end + 1 + size]
        position = size_end + 1 + size
    layout = next(v for k, v in entries.items() if k.endswith(".map")).decode()
    box = re.search(r"^image (\d+) (\d+) (\d+) (\d+)", layout, re.MULTILINE)
    atlas = next(v for k, v in entries.items() if k.endswith(".jpg") and "-t." not in k)
    if box is None:
        raise MultiGrainError(f"{path}: no 'image' line in the puzzle's map")
    x, y, w, h = (int(v) for v in box.groups())
    out = io.BytesIO()
    Image.open(io.BytesIO(atlas)).convert("RGB").crop((x, y, x + w, y + h)).save(out, "PNG")
    return out.getvalue()


def package_photos(package: str) -> list[SourcePhoto]:
    """The photos of one installed package, sorted by path (see the module docstring)."""
    patterns = PHOTO_PATHS.get(package)
    photos = []
    for path in sorted(package_files(package)):
        text = str(path)
        if patterns is None:
            skip = "/icons/" in text or "/doc/" in text
            if skip or not path.name.lower().endswith(PHOTO_SUFFIXES):
                continue
        elif not any(fnmatch.fnmatch(text, p) for p in patterns) or any(
            fnmatch.fnmatch(text, p) for p in _NOT_PHOTOS
        ):
            continue
        if path.suffix == ".pzl":
            read = functools.partial(jigzo_photo, path)
            photos.append(SourcePhoto(package, f"{package}{text}:image", read))
        else:
            photos.append(SourcePhoto(package, f"{package}{text}", path.read_bytes))
    return photos


def difference_hash(image: Image.Image) -> int:
    """256-bit difference hash: is each pixel of a 17x16 grey thumbnail brighter than the
    one on its left? (64 bits called a dune and a wood grain near-identical.)"""
    grey = np.asarray(image.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=int)
    return int("".join("1" if b else "0" for b in (grey[:, 1:] > grey[:, :-1]).ravel()), 2)


def detail(image: Image.Image) -> float:
    """Fraction of a 128-pixel grey thumbnail whose step to the next pixel (right or down)
    exceeds 6 grey levels: ~0.01 for a clear sky, ~0.05 for bokeh, > 0.2 for most scenes."""
    grey = image.convert("L")
    grey.thumbnail((128, 128))
    a = np.asarray(grey, dtype=float)
    step = np.maximum(np.abs(np.diff(a, axis=1))[:-1, :], np.abs(np.diff(a, axis=0))[:, :-1])
    return float((step > 6).mean())


def _bits(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def load_photos(packages: list[str], dropped: list[dict[str, str]]) -> list[Distinct]:
    """Decoded distinct photos of `packages`; what is left out is appended to `dropped`."""
    missing = [p for p in packages if _version(p) is None]
    if missing:
        raise MultiGrainError(
            f"missing Debian packages: run `apt-get install -y {' '.join(missing)}`"
        )
    kept: list[Distinct] = []
    seen: dict[str, str] = {}
    for package in packages:
        for photo in package_photos(package):
            data = photo.read()
            sha1 = hashlib.sha1(data).hexdigest()
            width, height, transparent, colours = photo_statistics(data)
            reason = f"same bytes as {seen[sha1]}" if sha1 in seen else ""
            if min(width, height) < MIN_SIDE or transparent > MAX_TRANSPARENT:
                reason = reason or f"{width}x{height}, {transparent:.0%} transparent"
            if package not in PHOTO_PATHS and not is_photographic(
                width, height, transparent, colours
            ):
                continue  # an uncurated package's graphics: not worth listing
            seen.setdefault(sha1, photo.source)
            image = decode_bytes(data, longest_side=LONGEST_SIDE) if not reason else None
            if image is not None:
                code = difference_hash(image)
                near = [d for d in kept if _bits(d.code, code) <= NEAR_BITS]
                if near:
                    reason = f"near-identical to {near[0].photo.source}"
                else:
                    kept.append(Distinct(photo, _jpeg(image, 90), image.size, width * height, code))
            if reason:
                dropped.append({"source": photo.source, "reason": reason})
    return kept


def tiles_of(item: Distinct, most: int, others: list[int]) -> list[Distinct]:
    """Up to `most` (>= 2) disjoint tiles of a large photo, or [] (module docstring); none
    within NEAR_BITS of the difference hashes `others`."""
    full = decode_bytes(item.photo.read())
    width, height = full.size
    for cols, rows in _GRIDS:
        cell_w, cell_h = width / cols, height / rows
        short = min(cell_w, cell_h) * (1 - 2 * TILE_GAP)
        if cols * rows <= most and short >= MIN_TILE_SIDE and 0.5 <= cell_w / cell_h <= 2:
            break
    else:
        return []
    tiles: list[Distinct] = []
    codes: list[tuple[int, np.ndarray]] = []
    for r in range(rows):
        for c in range(cols):
            box = (
                round((c + TILE_GAP) * cell_w), round((r + TILE_GAP) * cell_h),
                round((c + 1 - TILE_GAP) * cell_w), round((r + 1 - TILE_GAP) * cell_h),
            )  # fmt: skip
            tile = full.crop(box)
            tile.thumbnail((LONGEST_SIDE, LONGEST_SIDE), Image.Resampling.LANCZOS)
            code = difference_hash(tile)
            jpeg = _jpeg(tile, 90)
            statistics = photo_statistics(jpeg)
            flat = detail(tile) < TILE_MIN_DETAIL
            if flat or not is_photographic(*statistics, min_colours=TILE_MIN_COLOURS):
                continue  # a flat tile: sky, sea, a blur
            layout = np.asarray(tile.resize((4, 4), Image.Resampling.BOX), dtype=float)
            if any(
                _bits(code, other) <= SIBLING_BITS or np.abs(layout - seen).mean() < SIBLING_LAYOUT
                for other, seen in codes
            ):
                continue  # too close to a sibling
            if any(_bits(code, other) <= NEAR_BITS for other in others):
                continue  # too close to another photo
            label = f"row {r + 1}/{rows}, column {c + 1}/{cols}, box {box}"
            source = f"{item.photo.source}#tile {label}"
            photo = SourcePhoto(item.photo.package, source, item.photo.read)
            tiles.append(Distinct(photo, jpeg, tile.size, item.pixels, code, tiled=label))
            codes.append((code, layout))
    return tiles if len(tiles) >= 2 else []


def choose_distinct(whole: list[Distinct], count: int, rng: np.random.Generator) -> list[Distinct]:
    """`count` distinct photos: a seeded sample of the whole ones, or, when there are too
    few, tiles of the largest (largest first) in place of some."""
    if len(whole) >= count:
        picked = sorted(rng.choice(len(whole), size=count, replace=False))
        return [whole[i] for i in picked]
    chosen = list(whole)
    parts = {id(item): [item] for item in whole}  # what stands for each photo in `chosen`
    for most in (4, 6):  # up to 4 tiles a photo, then up to 6 if still short
        for item in sorted(whole, key=lambda d: (-d.pixels, d.photo.source)):
            current = parts[id(item)]
            deficit = count - len(chosen)
            if deficit <= 0:
                break
            others = [d.code for d in chosen if all(d is not c for c in current)]
            tiles = tiles_of(item, most=min(most, len(current) + deficit), others=others)
            if len(tiles) > len(current):
                chosen = [d for d in chosen if all(d is not c for c in current)] + tiles
                parts[id(item)] = tiles
    return chosen  # fewer than `count` when even the tiles run out (the summary says so)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _either(rng: np.random.Generator, low: tuple[float, float], high: tuple[float, float]) -> float:
    return float(rng.uniform(*(low if rng.random() < 0.5 else high)))


def _caption(image: Image.Image, text: str) -> Image.Image:
    width, height = image.size
    bar = max(24, height // 9)
    canvas = Image.new("RGB", (width, height + bar), (28, 28, 30))
    canvas.paste(image, (0, 0))
    try:
        font: Any = ImageFont.load_default(size=int(bar * 0.55))
    except TypeError:  # Pillow < 10.1: one small bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(canvas).text((bar // 3, height + bar // 5), text, fill="white", font=font)
    return canvas


def make_copy(original: bytes, kind: CopyKind, rng: np.random.Generator) -> tuple[bytes, str, str]:
    """A copy of the saved JPEG `original` -> (file bytes, suffix, what was done)."""
    if kind is K.EXACT:
        return original, ".jpg", "byte-identical"
    image = decode_bytes(original)
    width, height = image.size
    if kind is K.RESIZE_50:
        small = image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
        return _jpeg(small, 90), ".jpg", f"{small.size[0]}x{small.size[1]}"
    if kind is K.JPEG_Q30:
        return _jpeg(image, 30), ".jpg", "quality 30"
    if kind is K.PNG:
        return _png(image), ".png", "lossless re-save"
    if kind is K.CROP:
        keep = float(rng.uniform(0.70, 0.85))
        w, h = round(width * keep), round(height * keep)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        return _jpeg(image.crop((x, y, x + w, y + h)), 90), ".jpg", f"{keep:.0%} at {x},{y}"
    if kind is K.BRIGHTNESS_CONTRAST:
        brightness = _either(rng, (0.70, 0.85), (1.15, 1.30))
        contrast = _either(rng, (0.75, 0.90), (1.15, 1.30))
        edited = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(brightness))
        what = f"brightness {brightness:.2f}, contrast {contrast:.2f}"
        return _jpeg(edited.enhance(contrast), 90), ".jpg", what
    if kind is K.ROTATE:
        angle = _either(rng, (-8.0, -3.0), (3.0, 8.0))
        turned = image.rotate(angle, resample=Image.Resampling.BICUBIC)
        cos, sin = math.cos(math.radians(abs(angle))), math.sin(math.radians(abs(angle)))
        # the largest centred rectangle of the same shape inside the turned picture
        scale = min(width / (width * cos + height * sin), height / (width * sin + height * cos))
        w, h = int(width * scale), int(height * scale)
        box = ((width - w) // 2, (height - h) // 2, (width + w) // 2, (height + h) // 2)
        return _jpeg(turned.crop(box), 90), ".jpg", f"{angle:+.1f} degrees, borders cropped"
    text = CAPTIONS[int(rng.integers(len(CAPTIONS)))]
    return _jpeg(_caption(image, text), 90), ".jpg", f"bar {text!r}"


def _version(package: str) -> str | None:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
    )  # fmt: skip
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return result.stdout.strip()


def closest_pairs(chosen: list[Distinct], count: int = 8) -> list[dict[str, Any]]:
    """The `count` pairs of distinct photos with the nearest difference hashes: where to look
    for near-duplicates that the truth does not know about."""
    codes = [d.code for d in chosen]
    pairs = sorted(
        (_bits(codes[i], codes[j]), i, j) for i in range(len(chosen)) for j in range(i)
    )  # fmt: skip
    return [
        {"bits": bits, "a": chosen[i].photo.source, "b": chosen[j].photo.source}
        for bits, i, j in pairs[:count]
    ]


def _copy_originals(chosen: list[Distinct], rng: np.random.Generator) -> list[int]:
    """One distinct photo per GROUP_PLAN entry: whole photos of 300 px or more (tiles too only
    when there are too few)."""
    candidates = [i for i, d in enumerate(chosen) if min(d.size) >= 300 and not d.tiled]
    if len(candidates) < len(GROUP_PLAN):
        candidates = [i for i, d in enumerate(chosen) if min(d.size) >= 300]
    if len(candidates) < len(GROUP_PLAN):
        raise MultiGrainError(f"need >= {len(GROUP_PLAN)} photos of 300 px or more")
    return [int(i) for i in rng.choice(candidates, size=len(GROUP_PLAN), replace=False)]


def build_case(output: Path, *, packages: list[str], distinct: int, seed: int) -> dict[str, Any]:
    """Write the case into `output` (replaced whole, atomically); -> the manifest."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    dropped: list[dict[str, str]] = []
    chosen = choose_distinct(load_photos(packages, dropped), distinct, rng)
    copy_count = sum(len(plan) for plan in GROUP_PLAN)
    numbers = rng.choice(100_000, size=len(chosen) + copy_count, replace=False)
    names = [f"IMG_{n:05d}" for n in numbers]
    files = {f"{names[i]}.jpg": d.jpeg for i, d in enumerate(chosen)}
    sources = {f"{names[i]}.jpg": d.photo.source for i, d in enumerate(chosen)}
    groups: list[list[str]] = []
    kinds: dict[str, str] = {}
    edits: dict[str, str] = {}
    spare = iter(names[len(chosen) :])
    for index, plan in zip(_copy_originals(chosen, rng), GROUP_PLAN, strict=True):
        original = f"{names[index]}.jpg"
        groups.append([original])
        for kind in plan:
            data, suffix, what = make_copy(files[original], kind, rng)
            name = next(spare) + suffix
            files[name], sources[name], kinds[name], edits[name] = (
                data, sources[original], kind.value, what,
            )  # fmt: skip
            groups[-1].append(name)
    manifest = {
        "seed": seed, "distinct": len(chosen), "asked": distinct, "copies": copy_count,
        "files": len(files), "groups": len(groups),
        "whole_photos": sum(not d.tiled for d in chosen),
        "tiles": sum(bool(d.tiled) for d in chosen),
        "tiled_photos": sorted({d.photo.source.split("#")[0] for d in chosen if d.tiled}),
        "packages": {p: {"version": _version(p),
                         "distinct": sum(d.photo.package == p for d in chosen)}
                     for p in packages},
        "edits": dict(sorted(edits.items())), "dropped": dropped,
        "closest_pairs": closest_pairs(chosen),
    }  # fmt: skip
    truth = {"groups": sorted(sorted(g) for g in groups), "sources": dict(sorted(sources.items())),
             "packages": sorted({d.photo.package for d in chosen}),
             "kinds": dict(sorted(kinds.items()))}  # fmt: skip
    with staged_folder(output) as staging:
        (staging / "images").mkdir()
        for name, data in sorted(files.items()):
            (staging / "images" / name).write_bytes(data)
            os.utime(staging / "images" / name, (MTIME, MTIME))  # no hint in the file times
        (staging / "truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        manifest["seconds"] = round(time.perf_counter() - start, 1)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--packages", nargs="+", default=list(PHOTO_PATHS))
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        m = build_case(args.output, packages=args.packages, distinct=args.distinct, seed=args.seed)
    except MultiGrainError as error:
        raise SystemExit(f"error: {error}") from error
    print(
        f"{args.output}: {m['files']} images = {m['distinct']} distinct"
        + (f" (asked for {m['asked']}: the tiles ran out)" if m["distinct"] < m["asked"] else "")
        + f" ({m['whole_photos']} "
        f"whole photos + {m['tiles']} tiles of {len(m['tiled_photos'])} large ones) + "
        f"{m['copies']} copies in {m['groups']} true groups, from "
        f"{sum(v['distinct'] > 0 for v in m['packages'].values())} packages, {m['seconds']} s"
    )


if __name__ == "__main__":
    main()
