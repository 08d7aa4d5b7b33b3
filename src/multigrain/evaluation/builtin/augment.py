"""Copy-detection query transforms: families x strengths, built on AugLy (plus PIL framing).

Every transform takes an RGB image, a strength and a ``numpy.random.Generator`` and is a
pure function of the three, so a rebuild with the same seed writes identical queries.
Parameters per strength (light / medium / strong):

==============  =======================================================================
crop            keep 85 / 65 / 45 % of each side, at a random position
scale           resize by 0.7 / 0.4 / 0.2 (at least 32 px)
rotate          +-5 / 15 / 40 degrees (AugLy rotate; corners cropped away)
jpeg            re-encode at quality 60 / 25 / 8 (AugLy encoding_quality)
blur            Gaussian radius 1 / 2.5 / 5 px
colour          brightness, contrast, saturation each x(1 +- 0.15 / 0.35 / 0.6)
overlay_text    random characters, font 8 / 15 / 25 % of the height, random colour
overlay_emoji   emoji 15 / 30 / 50 % of the size, random position
framing         light: AugLy pad (10 % border, random colour); medium: meme caption band
                (25 % of the height, drawn with PIL because AugLy's meme_format fails with
                Pillow >= 10); strong: AugLy overlay_onto_screenshot (a social-media frame)
combo           light: crop + jpeg; medium: crop + colour + overlay_text;
                strong: crop + rotate + overlay_emoji + jpeg (each at that strength)
==============  =======================================================================
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from multigrain.runtime.errors import MultiGrainError

try:  # AugLy is an optional (dev) dependency: only building the benchmark needs it.
    import augly.image as augly_image
except ImportError:  # pragma: no cover - exercised only without AugLy
    augly_image = None


class Family(str, enum.Enum):
    CROP = "crop"
    SCALE = "scale"
    ROTATE = "rotate"
    JPEG = "jpeg"
    BLUR = "blur"
    COLOUR = "colour"
    OVERLAY_TEXT = "overlay_text"
    OVERLAY_EMOJI = "overlay_emoji"
    FRAMING = "framing"
    COMBO = "combo"


class Strength(str, enum.Enum):
    LIGHT = "light"
    MEDIUM = "medium"
    STRONG = "strong"


_LEVEL = {Strength.LIGHT: 0, Strength.MEDIUM: 1, Strength.STRONG: 2}
_CROP_KEEP = (0.85, 0.65, 0.45)
_SCALE = (0.7, 0.4, 0.2)
_DEGREES = (5.0, 15.0, 40.0)
_QUALITY = (60, 25, 8)
_BLUR = (1.0, 2.5, 5.0)
_COLOUR_DELTA = (0.15, 0.35, 0.6)
_FONT_SIZE = (0.08, 0.15, 0.25)
_EMOJI_SIZE = (0.15, 0.3, 0.5)
_CAPTIONS = ("when the code compiles", "me at 3am", "nobody:", "this is fine", "same photo")

Transform = Callable[[Image.Image, Strength, np.random.Generator], Image.Image]


def _augly() -> Any:
    if augly_image is None:
        raise MultiGrainError("building the built-in benchmark needs AugLy: pip install augly")
    return augly_image


def crop(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    keep = _CROP_KEEP[_LEVEL[strength]]
    x1, y1 = rng.uniform(0, 1 - keep, size=2)
    return _augly().crop(image, x1=x1, y1=y1, x2=x1 + keep, y2=y1 + keep)


def scale(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    factor = max(_SCALE[_LEVEL[strength]], 32 / min(image.size))
    return _augly().scale(image, factor=factor)


def rotate(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    degrees = _DEGREES[_LEVEL[strength]] * (1 if rng.random() < 0.5 else -1)
    return _augly().rotate(image, degrees=degrees)


def jpeg(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    return _augly().encoding_quality(image, quality=_QUALITY[_LEVEL[strength]])


def blur(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    return _augly().blur(image, radius=_BLUR[_LEVEL[strength]])


def colour(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    delta = _COLOUR_DELTA[_LEVEL[strength]]
    brightness, contrast, saturation = 1 + delta * rng.choice([-1.0, 1.0], size=3)
    image = _augly().brightness(image, factor=float(brightness))
    image = _augly().contrast(image, factor=float(contrast))
    return _augly().saturation(image, factor=float(saturation))


def overlay_text(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    size = _FONT_SIZE[_LEVEL[strength]]
    text = [int(i) for i in rng.integers(0, 90, size=int(rng.integers(4, 10)))]
    return _augly().overlay_text(
        image,
        text=text,
        font_size=size,
        opacity=1.0,
        color=tuple(int(c) for c in rng.integers(0, 256, size=3)),
        x_pos=float(rng.uniform(0, 0.4)),
        y_pos=float(rng.uniform(0, 1 - size)),
    )


def overlay_emoji(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    size = _EMOJI_SIZE[_LEVEL[strength]]
    x, y = rng.uniform(0, 1 - size, size=2)
    return _augly().overlay_emoji(image, emoji_size=size, x_pos=float(x), y_pos=float(y))


def _meme(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A white caption band above the image, as AugLy's (broken here) meme_format draws."""
    band = max(16, image.height // 4)
    framed = Image.new("RGB", (image.width, image.height + band), (255, 255, 255))
    framed.paste(image, (0, band))
    caption = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))]
    font = ImageFont.load_default(size=max(8, band // 2))
    ImageDraw.Draw(framed).text((band // 4, band // 4), caption, fill=(0, 0, 0), font=font)
    return framed


def framing(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    if strength is Strength.LIGHT:
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        return _augly().pad(image, w_factor=0.1, h_factor=0.1, color=fill)
    if strength is Strength.MEDIUM:
        return _meme(image, rng)
    return _augly().overlay_onto_screenshot(image)


def combo(image: Image.Image, strength: Strength, rng: np.random.Generator) -> Image.Image:
    image = crop(image, strength, rng)
    if strength is Strength.LIGHT:
        return jpeg(image, strength, rng)
    if strength is Strength.MEDIUM:
        return overlay_text(colour(image, strength, rng), strength, rng)
    image = overlay_emoji(rotate(image, strength, rng), strength, rng)
    return jpeg(image, strength, rng)


TRANSFORMS: dict[Family, Transform] = {
    Family.CROP: crop,
    Family.SCALE: scale,
    Family.ROTATE: rotate,
    Family.JPEG: jpeg,
    Family.BLUR: blur,
    Family.COLOUR: colour,
    Family.OVERLAY_TEXT: overlay_text,
    Family.OVERLAY_EMOJI: overlay_emoji,
    Family.FRAMING: framing,
    Family.COMBO: combo,
}


def apply_transform(
    image: Image.Image, family: Family, strength: Strength, rng: np.random.Generator
) -> Image.Image:
    """One query: RGB image -> transformed RGB image (family x strength, seeded by `rng`)."""
    return TRANSFORMS[family](image, strength, rng).convert("RGB")
