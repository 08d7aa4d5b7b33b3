"""Images already in memory (PIL) -> descriptors, through the one forward path.

Files go through :func:`multigrain.inference.embed.embed_in_memory`; images a program made
itself (synthetic copies, an upload, a frame) come here. Each image is resized so its
longest side is s exactly as a decoded file is, then batched with the images of the same
resized shape and run by :func:`multigrain.inference.embed.embed_batch`, so a file and the
same picture given as a PIL image get the same descriptor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from PIL import Image

from multigrain.data.resize import resize_longest_side, to_uint8_tensor
from multigrain.inference.embed import WhiteningFn, embed_batch
from multigrain.inference.fast_trunk import Trunk
from multigrain.models import MultiGrain


@torch.no_grad()
def embed_pil_images(
    model: MultiGrain,
    trunk: Trunk,
    images: Sequence[Image.Image],
    *,
    resolution: int,
    whitening: WhiteningFn | None = None,
    batch_size: int = 16,
    normalise_output: bool = True,
) -> torch.Tensor:
    """N PIL images -> (N, d) float32 descriptors on the CPU, in the order given."""
    tensors = [
        to_uint8_tensor(resize_longest_side(image.convert("RGB"), resolution)) for image in images
    ]
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, tensor in enumerate(tensors):
        by_shape[tuple(tensor.shape)].append(index)
    rows: dict[int, torch.Tensor] = {}
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = torch.stack([tensors[i] for i in chunk])
            descriptors = embed_batch(
                model, trunk, batch, whitening=whitening, normalise_output=normalise_output
            )
            rows.update(zip(chunk, descriptors.cpu(), strict=True))
    if not rows:
        return torch.zeros((0, 0))
    return torch.stack([rows[i] for i in range(len(tensors))])
