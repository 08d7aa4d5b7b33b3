"""Four overlapping views of one photo, as UKBench / Holidays groups show one object.

View 0 is a gentle crop (90 % of each side); views 1-3 crop 55-80 % of each side around a
centre jittered within the middle 40 % of the image (so any two views overlap), view 2 is
also rotated by up to 8 degrees and view 3 is framed by a 6 % border.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def _crop(image: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    width, height = image.size
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    w, h = keep * width, keep * height
    left = float(np.clip(cx * width - w / 2, 0, width - w))
    top = float(np.clip(cy * height - h / 2, 0, height - h))
    return image.crop((round(left), round(top), round(left + w), round(top + h)))


def instance_views(image: Image.Image, rng: np.random.Generator) -> list[Image.Image]:
    """RGB image -> 4 RGB views (different crops, zooms and framings), seeded by `rng`."""
    views = [_crop(image, 0.9, rng)]
    views.append(_crop(image, float(rng.uniform(0.55, 0.8)), rng))
    rotated = _crop(image, float(rng.uniform(0.55, 0.8)), rng)
    degrees = float(rng.uniform(-8, 8))
    views.append(rotated.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False))
    framed = _crop(image, float(rng.uniform(0.55, 0.8)), rng)
    border = max(2, round(0.06 * max(framed.size)))
    fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
    views.append(ImageOps.expand(framed, border=border, fill=fill))
    return views
