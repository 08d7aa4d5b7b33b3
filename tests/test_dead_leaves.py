"""Dead-leaves calibration pictures: the same everywhere, and shaped like photos."""

from __future__ import annotations

import numpy as np
import torch

from multigrain.data.dead_leaves import ASPECTS, dead_leaves


def _spectral_slope(picture: torch.Tensor) -> float:
    """Slope of log power against log frequency of the grey levels (photos: about -2)."""
    grey = picture.float().mean(0).numpy()
    power = np.abs(np.fft.fft2(grey - grey.mean())) ** 2
    height, width = grey.shape
    frequency = np.hypot(np.fft.fftfreq(height)[:, None], np.fft.fftfreq(width)[None, :])
    band = (frequency > 0.02) & (frequency < 0.2)
    return float(np.polyfit(np.log(frequency[band]), np.log(power[band]), 1)[0])


def test_pictures_are_the_same_for_the_same_arguments_and_differ_by_seed():
    first, again, other = dead_leaves(96, 3), dead_leaves(96, 3), dead_leaves(96, 3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_pictures_have_the_longest_side_s_in_photo_shapes():
    pictures = dead_leaves(160, 2 * len(ASPECTS))
    shapes = [tuple(p.shape) for p in pictures]
    assert shapes[:4] == [(3, 120, 160), (3, 160, 120), (3, 107, 160), (3, 160, 160)]
    assert shapes[4:] == shapes[:4]  # the shapes cycle
    assert all(p.dtype == torch.uint8 for p in pictures)


def test_pictures_have_the_spectrum_of_photos_and_are_covered_with_discs():
    for picture in dead_leaves(160, 4):
        assert -2.6 < _spectral_slope(picture) < -1.6  # natural images: about -2
        # covered many times over: no colour (the bare canvas, say) fills a large part
        _, counts = np.unique(picture.reshape(3, -1).numpy() // 32, axis=1, return_counts=True)
        assert counts.max() < 0.25 * picture[0].numel()
    noise = torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8)
    assert abs(_spectral_slope(noise)) < 0.3  # the measure tells white noise apart
