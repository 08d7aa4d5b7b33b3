"""Held-out copy distortions, written with Pillow alone and apart from the training code.

These make the validation and test queries of the shipped model. They are deliberately
not the training augmentations (:mod:`multigrain.data.copy_augment`) nor the built-in
benchmark's AugLy transforms, so a model is not scored on the edits it was fitted to.
Each family is a pure function of (image, numpy Generator); parameters:

============  ==========================================================================
crop          keep 60-75 % of each side, at a random position
jpeg          re-encode at quality 8-15
rotate        10-20 degrees either way, black corners (half the time the canvas grows)
blur          Gaussian radius 2-4 px (at 512 px)
colour        brightness, contrast x0.5-1.6, saturation x0.2-1.8, and a hue shift
gray_flip     grayscale and a mirror image
overlay       white bars (top and/or bottom, 10-20 % of the height each) with black text
pip           the image scaled to 40-70 % on a random-noise canvas
pixelate      blocks of 1/12-1/24 of the longest side
combo         crop to 70-85 %, colour change, JPEG quality 20-40
============  ==========================================================================
"""

from __future__ import annotations

import enum
import io
import string
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

_LETTERS = string.ascii_letters + string.digits + " "


class HeldoutFamily(str, enum.Enum):
    CROP = "crop"
    JPEG = "jpeg"
    ROTATE = "rotate"
    BLUR = "blur"
    COLOUR = "colour"
    GRAY_FLIP = "gray_flip"
    OVERLAY = "overlay"
    PIP = "pip"
    PIXELATE = "pixelate"
    COMBO = "combo"


def _crop(image: Image.Image, rng: np.random.Generator, low: float, high: float) -> Image.Image:
    width, height = image.size
    keep_w = max(8, int(width * rng.uniform(low, high)))
    keep_h = max(8, int(height * rng.uniform(low, high)))
    left = int(rng.integers(0, width - keep_w + 1))
    top = int(rng.integers(0, height - keep_h + 1))
    return image.crop((left, top, left + keep_w, top + keep_h))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _colour(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.5, 1.6))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.6))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.2, 1.8))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.integers(-40, 41))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _text(rng: np.random.Generator, length: int) -> str:
    return "".join(_LETTERS[int(i)] for i in rng.integers(0, len(_LETTERS), length))


def _overlay(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = image.copy()
    width, height = image.size
    draw = ImageDraw.Draw(image)
    where = rng.choice(["top", "bottom", "both"])
    for side in ("top", "bottom"):
        if where not in (side, "both"):
            continue
        band = max(6, int(height * rng.uniform(0.10, 0.20)))
        top = 0 if side == "top" else height - band
        draw.rectangle((0, top, width, top + band), fill=(255, 255, 255))
        font = ImageFont.load_default(size=max(6, int(band * 0.6)))
        draw.text((4, top + band // 6), _text(rng, int(rng.integers(8, 20))), (0, 0, 0), font)
    return image


def _pip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    canvas = Image.fromarray(noise, "RGB")
    scale = rng.uniform(0.4, 0.7)
    inner = image.resize((max(8, int(width * scale)), max(8, int(height * scale))))
    x = int(rng.integers(0, width - inner.width + 1))
    y = int(rng.integers(0, height - inner.height + 1))
    canvas.paste(inner, (x, y))
    return canvas


def _pixelate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    block = max(image.size) / rng.uniform(12, 24)
    small = (max(2, round(image.width / block)), max(2, round(image.height / block)))
    return image.resize(small, Image.Resampling.BOX).resize(image.size, Image.Resampling.NEAREST)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = rng.uniform(10, 20) * rng.choice([-1, 1])
    return image.rotate(angle, Image.Resampling.BILINEAR, expand=bool(rng.integers(0, 2)))


DISTORTIONS: dict[HeldoutFamily, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    HeldoutFamily.CROP: lambda image, rng: _crop(image, rng, 0.6, 0.75),
    HeldoutFamily.JPEG: lambda image, rng: _jpeg(image, int(rng.integers(8, 16))),
    HeldoutFamily.ROTATE: _rotate,
    HeldoutFamily.BLUR: lambda image, rng: image.filter(
        ImageFilter.GaussianBlur(rng.uniform(2, 4))
    ),
    HeldoutFamily.COLOUR: _colour,
    HeldoutFamily.GRAY_FLIP: lambda image, rng: ImageOps.mirror(image.convert("L").convert("RGB")),
    HeldoutFamily.OVERLAY: _overlay,
    HeldoutFamily.PIP: _pip,
    HeldoutFamily.PIXELATE: _pixelate,
    HeldoutFamily.COMBO: lambda image, rng: _jpeg(
        _colour(_crop(image, rng, 0.7, 0.85), rng), int(rng.integers(20, 41))
    ),
}


def distort(image: Image.Image, family: HeldoutFamily, rng: np.random.Generator) -> Image.Image:
    """RGB image -> its copy under ``family`` (a pure function of image, family and rng)."""
    return DISTORTIONS[family](image.convert("RGB"), rng).convert("RGB")
