"""Safe image decoding: any file on disk -> an upright RGB ``PIL.Image``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from multigrain.errors import MultiGrainError

logger = logging.getLogger(__name__)

#: File name suffixes (lower case) that dataset readers treat as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

# Integer modes that ``Image.convert("RGB")`` does not rescale to 8 bits.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    16/32-bit integer images (e.g. 16-bit PNGs) keep their 8 most significant
    bits when their values exceed 255; float images (mode ``F``) are clipped to
    [0, 255]. Alpha is dropped as ``convert("RGB")`` does (torchvision's
    ``ImageFolder`` behaves the same way), so pretrained pipelines see the same
    pixels.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES or image.mode == "F":
        values = np.asarray(image)
        if image.mode != "F" and values.size and int(values.max()) > 255:
            values = values.astype(np.int64) >> 8
        gray = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")  # 2-D uint8 -> mode "L"
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file into an upright RGB image.

    The EXIF orientation tag is applied (a portrait photo stored sideways comes
    back portrait), then the image is converted to RGB whatever its mode (L, P,
    RGBA, CMYK, I;16, ...).

    Args:
        path: the image file.

    Returns:
        A fully decoded ``PIL.Image.Image`` in mode ``"RGB"``, size (W, H).

    Raises:
        MultiGrainError: the file is missing, truncated or not an image.
    """
    try:
        with Image.open(path) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened)
            return _to_rgb(upright if upright is not None else opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error) or type(error).__name__
        raise MultiGrainError(
            f"cannot read image {path}: {reason}; re-encode or remove the file"
        ) from error
