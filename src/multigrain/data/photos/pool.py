"""The photo pool: candidates from :mod:`sources`, kept if photographic, deduplicated by
sha1 and then by group (one image per source photo).

Photographic rule (one rule for every source, documented in the manifest):
the shorter side is >= ``MIN_SIDE`` pixels, at most ``MAX_TRANSPARENT`` of the pixels are
(partly) transparent, and a 128-pixel thumbnail holds >= ``MIN_COLOURS`` distinct colours
once quantised to 5 bits per channel (800 for tuxpaint stamps, which are mostly
drawings, cut-outs and clip art; 500 elsewhere). Drawings and icons have few colours, stamps cut out
of a photo keep a large transparent margin; photos of real scenes pass. Transparent pixels
are composited onto white when an image is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from multigrain.data.photos.packages import Candidate, all_candidates
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

MIN_SIDE = 128
MAX_TRANSPARENT = 0.6
MIN_COLOURS = 500
#: Stricter colour count for sources that are mostly drawings.
MIN_COLOURS_BY_PACKAGE = {"tuxpaint-stamps-default": 800}
_THUMBNAIL = 128


@dataclass(frozen=True)
class PoolImage:
    """One source photo of the pool."""

    key: str
    package: str
    licence: str
    label: str
    group: str
    width: int
    height: int
    sha1: str
    read: Callable[[], bytes] = field(compare=False, repr=False)

    def load(self, longest_side: int | None = None) -> Image.Image:
        """Decode to RGB (alpha composited onto white), longest side <= `longest_side`."""
        return decode_bytes(self.read(), longest_side=longest_side)


def decode_bytes(data: bytes, *, longest_side: int | None = None) -> Image.Image:
    """Encoded image bytes -> RGB PIL image; transparency composited onto white."""
    with Image.open(io.BytesIO(data)) as opened:
        if longest_side is not None and opened.format == "JPEG":
            opened.draft("RGB", (longest_side, longest_side))
        image = opened.convert("RGBA")
    if longest_side is not None and max(image.size) > longest_side:
        image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, image).convert("RGB")


def photo_statistics(data: bytes) -> tuple[int, int, float, int]:
    """-> (width, height, transparent fraction, distinct 5-bit colours in a 128px thumbnail)."""
    with Image.open(io.BytesIO(data)) as opened:
        width, height = opened.size
        if opened.format == "JPEG":
            opened.draft("RGB", (_THUMBNAIL, _THUMBNAIL))
        image = opened.convert("RGBA")
    image.thumbnail((_THUMBNAIL, _THUMBNAIL))
    pixels = np.asarray(image)
    transparent = float((pixels[..., 3] < 250).mean())
    quantised = (pixels[..., :3].reshape(-1, 3) >> 3).astype(np.int32)
    colours = len(np.unique(quantised[:, 0] * 1024 + quantised[:, 1] * 32 + quantised[:, 2]))
    return width, height, transparent, colours


def is_photographic(
    width: int, height: int, transparent: float, colours: int, *, min_colours: int = MIN_COLOURS
) -> bool:
    """The photographic rule of the module docstring."""
    return (
        min(width, height) >= MIN_SIDE and transparent <= MAX_TRANSPARENT and colours >= min_colours
    )


def filter_photos(candidates: Iterable[Candidate]) -> list[PoolImage]:
    """The photographic, distinct candidates: deduplicated by sha1, kept if they pass the
    photographic rule, then one image per group; sorted by key. Undecodable ones are
    skipped (logged at debug level)."""
    pool: dict[str, PoolImage] = {}
    for candidate in candidates:
        data = candidate.read()
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 in pool:
            continue
        try:
            width, height, transparent, colours = photo_statistics(data)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            logger.debug("skipping undecodable %s: %s", candidate.key, error)
            continue
        min_colours = MIN_COLOURS_BY_PACKAGE.get(candidate.package, MIN_COLOURS)
        if not is_photographic(width, height, transparent, colours, min_colours=min_colours):
            continue
        pool[sha1] = PoolImage(
            key=candidate.key,
            package=candidate.package,
            licence=candidate.licence,
            label=candidate.label,
            group=candidate.group,
            width=width,
            height=height,
            sha1=sha1,
            read=candidate.read,
        )
    # One image per group: re-encodings of one photo (libjxl) or stereo partners (opencv)
    # would be near-duplicate references and make the copy-detection ground truth ambiguous.
    by_group: dict[str, PoolImage] = {}
    for image in sorted(pool.values(), key=lambda image: image.key):
        by_group.setdefault(image.group, image)
    return list(by_group.values())


@functools.lru_cache(maxsize=1)
def scan_pool() -> tuple[PoolImage, ...]:
    """Every photographic, distinct (by sha1) image of every source, sorted by key.

    Cached for the process: the installed packages do not change during a run.
    Raises MultiGrainError naming a missing Debian package and the apt-get command.
    """
    photos = filter_photos(all_candidates())
    if not photos:
        raise MultiGrainError("no photographs found in the installed packages")
    return tuple(photos)


def select_pool(pool: tuple[PoolImage, ...], max_pool: int | None, seed: int) -> list[PoolImage]:
    """A seeded subset of at most `max_pool` images (all of them for None), sorted by key."""
    if max_pool is None or max_pool >= len(pool):
        return list(pool)
    if max_pool < 8:
        raise MultiGrainError(f"max_pool must be >= 8 images, got {max_pool}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return sorted((pool[i] for i in order[:max_pool]), key=lambda image: image.key)
