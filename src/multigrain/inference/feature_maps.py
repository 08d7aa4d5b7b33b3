"""Trunk feature maps of labelled images, cached so that GeM can re-pool them with any p.

Only the GeM pooling depends on p, so calibration runs the trunk once per image and
resolution and pools the cached maps with every exponent,

    e(p) = (mean_{h,w} clamp(x, eps)^p)^(1/p),    logits(p) = W e(p) + b.

The trunk is the fast one of THE forward path (:func:`multigrain.inference.fast_trunk.
fast_trunk_for`, as :func:`multigrain.inference.embed.embed_batch` runs it: batch norm
folded, channels-last, the precision's dtype), and ``gem`` pools in fp32 as
:func:`multigrain.inference.fast_trunk.embed_features` does, so a calibrated p is chosen
on the descriptors embed computes.

Memory: the maps of the images at one resolution are held together, N x C x h x w
values, e.g. ResNet-50 at s = 500: 2048 x 16 x 16 floats = 2 MiB an image, 0.5 GiB for
256 images (half that in bf16).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from multigrain.data.datasets import LabelledImages
from multigrain.data.resize import normalise, resize_longest_side, to_uint8_tensor
from multigrain.inference.fast_trunk import Trunk, fast_trunk_for
from multigrain.models import MultiGrain, gem
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision


@dataclass
class FeatureMaps:
    """Trunk feature maps of N labelled images at one resolution, grouped by map shape.

    Attributes:
        groups: ``(maps (n_g, C, h, w), positions (n_g,))`` per shape; ``positions`` are
            row numbers in ``labels`` (the order of the requested indices).
        labels: (N,) int64 class labels.
        resolution: the longest side s the images were resized to.
        eps: the GeM clamp of the model.
    """

    groups: list[tuple[Tensor, Tensor]]
    labels: Tensor
    resolution: int
    eps: float = 1e-6

    def __len__(self) -> int:
        return int(self.labels.numel())

    def _in_label_order(self, stacked: Tensor) -> Tensor:
        order = torch.cat([positions for _, positions in self.groups])
        out = torch.empty_like(stacked)
        out[order] = stacked  # back to the order of the requested indices
        return out

    def embeddings(self, p: Tensor | float) -> Tensor:
        """(N, C) raw GeM embeddings ``gem(x, p)`` (fp32) in label order; differentiable in p."""
        return self._in_label_order(torch.cat([gem(maps, p, self.eps) for maps, _ in self.groups]))

    def logits(self, classifier: nn.Module, p: Tensor | float) -> Tensor:
        """(N, K) logits ``classifier(gem(x, p))`` in label order; differentiable in p."""
        stacked = torch.cat([classifier(gem(maps, p, self.eps)) for maps, _ in self.groups])
        return self._in_label_order(stacked)

    def cross_entropy(self, classifier: nn.Module, p: Tensor | float) -> Tensor:
        """Mean cross-entropy of :meth:`logits` against ``labels`` (a 0-dim tensor)."""
        return nn.functional.cross_entropy(self.logits(classifier, p), self.labels)


def calibration_trunk(
    model: MultiGrain, precision: InferencePrecision | str, device: str | torch.device
) -> Trunk:
    """The fast trunk of ``model`` at a float ``precision`` (resolved on ``device``).

    int8 is refused: p is chosen on the float descriptors (int8 only approximates them).
    """
    device = torch.device(device)
    used = resolve_inference_precision(precision, device, float_only=True)
    if used is InferencePrecision.INT8:
        raise MultiGrainError(
            "calibration runs the trunk in a float precision: use --precision auto, fp32 or "
            "bf16 (int8 embeds approximate the float descriptors p* is chosen on)"
        )
    return fast_trunk_for(model, used, device=device)


def extract_feature_maps(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolution: int,
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    precision: InferencePrecision | str = InferencePrecision.FP32,
    trunk: Trunk | None = None,
) -> FeatureMaps:
    """Run the fast trunk once on each image resized to longest side ``resolution``.

    Images of identical resized shape are batched (up to ``batch_size``); the model must be
    on ``device`` (its classifier and GeM read the maps there). The trunk is ``trunk``, or
    the one :func:`calibration_trunk` builds at ``precision``; the maps keep its dtype
    (bf16 under bf16) and pooling is always fp32.

    Returns:
        :class:`FeatureMaps` holding ``len(indices)`` maps (C, h, w) on ``device``.
    """
    device = torch.device(device)
    chosen = _check_indices(images, indices)
    if trunk is None:
        trunk = calibration_trunk(model, precision, device)
    buckets: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
    groups: list[tuple[Tensor, Tensor]] = []

    def flush(shape: tuple[int, ...]) -> None:
        pending = buckets.pop(shape)
        batch = normalise(torch.stack([tensor for _, tensor in pending]).to(device))
        with torch.no_grad():
            maps = trunk(batch).to(device)
        positions = torch.tensor([position for position, _ in pending], device=device)
        groups.append((maps, positions))

    for position, index in enumerate(chosen):
        # uint8 as embed decodes it, normalised per batch (elementwise: the same values)
        tensor = to_uint8_tensor(resize_longest_side(images.load(index), resolution))
        shape = tuple(tensor.shape)
        buckets.setdefault(shape, []).append((position, tensor))
        if len(buckets[shape]) >= batch_size:
            flush(shape)
    for shape in list(buckets):
        flush(shape)
    labels = torch.tensor([images.labels[index] for index in chosen], device=device)
    return FeatureMaps(groups, labels, resolution, eps=model.pool.eps)


def _check_indices(images: LabelledImages, indices: Sequence[int] | None) -> list[int]:
    """``indices`` (default: all images) as a list, checked to be in range and non-empty."""
    chosen = list(range(len(images))) if indices is None else [int(i) for i in indices]
    if not chosen:
        raise MultiGrainError("no images to calibrate on: pass a non-empty `indices`")
    bad = [i for i in chosen if not 0 <= i < len(images)]
    if bad:
        raise MultiGrainError(f"image indices {bad[:5]} out of range [0, {len(images)})")
    return chosen
