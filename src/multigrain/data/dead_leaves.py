"""Dead-leaves images: synthetic pictures with the statistics of photos, the same everywhere.

The dead-leaves model (Matheron; Lee, Mumford and Huang 2001, "Occlusion models for natural
images") paints opaque discs of random grey-ish colours on top of each other, radii drawn
with density proportional to r^-3 between s/200 and s/2 (s the longest side): the
result is scale invariant, with the edges, occlusions and flat regions of real photos and
their 1/f power spectrum. A slight blur (a lens) and sensor noise finish it.

They calibrate the int8 trunk (multigrain.inference.fast_trunk): computed from a seed with
numpy and scipy only, they are the same on every machine and for every collection, so two
machines quantise a model at one s to the same int8 model and their descriptors can share
an index; and no photo of the user's decides the ranges (calibrating on the first folder
embedded made each machine's int8 model different). On the built-in benchmark int8
calibrated on them stays within the quality guard's 0.5 points on the shipped model and on
the demo's (README, "Quality guard").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

#: (width, height) as fractions of s: landscape 4:3, portrait 3:4, 3:2 and square, as photos.
ASPECTS = ((1.0, 0.75), (0.75, 1.0), (1.0, 2 / 3), (1.0, 1.0))
COVERAGE = 5.0  # the discs' areas add up to 5 canvases: e^-5, under 1 % of it, left bare
BLUR_SIGMA = 0.7  # pixels
NOISE_SIGMA = 4.0  # grey levels


def dead_leaves(resolution: int, count: int, seed: int = 0) -> list[torch.Tensor]:
    """`count` (3, H, W) uint8 dead-leaves pictures with longest side `resolution` (s),
    their shapes cycling through :data:`ASPECTS`; the same for the same arguments."""
    rng = np.random.default_rng(seed)
    pictures = []
    for index in range(count):
        fraction_w, fraction_h = ASPECTS[index % len(ASPECTS)]
        width = max(1, round(resolution * fraction_w))
        height = max(1, round(resolution * fraction_h))
        pictures.append(_picture(rng, width, height, resolution))
    return pictures


def _picture(rng: np.random.Generator, width: int, height: int, resolution: int) -> torch.Tensor:
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = _colour(rng)
    smallest, largest = max(resolution / 200, 0.5), resolution / 2
    # E[r^2] of that density is 2 ln(largest / smallest) / (smallest^-2 - largest^-2)
    mean_area = np.pi * 2 * np.log(largest / smallest) / (smallest**-2 - largest**-2)
    discs = int(COVERAGE * width * height / mean_area)  # about 5,200 whatever s
    # p(r) ~ r^-3 on [smallest, largest], by inverting its distribution function
    u = rng.random(discs)
    radii = 1 / np.sqrt((1 - u) / smallest**2 + u / largest**2)
    xs = rng.uniform(-radii, width + radii)
    ys = rng.uniform(-radii, height + radii)
    colours = [_colour(rng) for _ in range(discs)]
    rows, columns = np.arange(height) + 0.5, np.arange(width) + 0.5  # pixel centres
    for x, y, r, colour in zip(xs, ys, radii, colours, strict=True):
        left, right = max(0, int(x - r)), min(width, int(x + r) + 1)
        top, bottom = max(0, int(y - r)), min(height, int(y + r) + 1)
        if left >= right or top >= bottom:
            continue
        dy = rows[top:bottom, None] - y
        dx = columns[None, left:right] - x
        inside = dx * dx + dy * dy <= r * r
        canvas[top:bottom, left:right][inside] = colour
    canvas = gaussian_filter(canvas, sigma=(BLUR_SIGMA, BLUR_SIGMA, 0))
    canvas += rng.normal(0.0, NOISE_SIGMA, canvas.shape).astype(np.float32)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A grey level with a little colour: photos are mostly unsaturated."""
    level = rng.uniform(0, 255)
    return np.clip(level + rng.normal(0, 35, 3), 0, 255).astype(np.float32)
