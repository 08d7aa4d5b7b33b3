"""Thumbnails for pages and reports: a picture decoded as the embedder decodes it, shrunk,
and encoded as JPEG bytes or a data URI."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from multigrain.data.images import DEFAULT_MAX_PIXELS, decode_image


def thumbnail_jpeg(
    path: str | Path,
    side: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int = 85,
) -> bytes:
    """The JPEG bytes of a thumbnail of `path` that fits in `side` × `side` (aspect kept).

    Decoded by :func:`decode_image` (pixel budget, JPEG draft mode, EXIF orientation), so
    every page and route that shows a picture refuses what the embedder refuses.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    image = decode_image(path, longest_side=side, max_pixels=max_pixels)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail_data_uri(path: str | Path, side: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """:func:`thumbnail_jpeg` as a ``data:image/jpeg;base64,...`` URI, for self-contained HTML.

    Raises:
        ImageDecodeError: as :func:`decode_image`.
    """
    encoded = base64.b64encode(thumbnail_jpeg(path, side, max_pixels=max_pixels, quality=80))
    return "data:image/jpeg;base64," + encoded.decode("ascii")
