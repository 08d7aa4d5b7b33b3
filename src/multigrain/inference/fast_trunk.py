"""The fast inference path: a frozen copy of a model's trunk, ready to run on a device.

:func:`fast_trunk_for` is the one way to build it (float precisions here, int8 through
onnxruntime in int8.py); :func:`multigrain.inference.embed.embed_batch` runs it.
:func:`inference_trunk` copies ``model.features`` and, for inference only,

- folds every batch norm into the convolution before it: in eval mode
  ``y = gamma (x - mu) / sqrt(var + eps) + beta`` is an affine map of the convolution's
  output, so it becomes part of the convolution's weight and bias (one memory pass fewer
  per layer; the same function up to float round-off);
- stores weights and activations channels-last, the native layout of oneDNN and cuDNN
  convolutions;
- casts the weights to the compute dtype (bf16/fp16) instead of running under autocast,
  which would re-cast every weight at every call.

GeM pooling, whitening and the classifier stay on the original model and run in fp32 on
the trunk's output (``gem`` computes in fp32 whatever its input dtype). The measurements
behind these choices are in benchmarks/embed_throughput.py and the README.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn

from multigrain.data.dead_leaves import dead_leaves
from multigrain.data.resize import normalise
from multigrain.inference.int8 import OnnxInt8Trunk
from multigrain.inference.int8_cache import cached_int8_trunk
from multigrain.models import MultiGrain
from multigrain.runtime.precision import (
    InferencePrecision,
    compute_dtype,
    resolve_inference_precision,
)
from multigrain.search.descriptors import EmbeddingMetadata

logger = logging.getLogger(__name__)


class Trunk(Protocol):
    """(B, 3, H, W) float32 normalised images -> (B, C, h, w) feature map (any float dtype)."""

    precision: InferencePrecision

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


@dataclass
class TorchTrunk:
    """A torch module run on `device` with inputs cast to the precision's dtype."""

    module: nn.Module
    device: torch.device
    precision: InferencePrecision

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).to(compute_dtype(self.precision))
        out: torch.Tensor = self.module(x.contiguous(memory_format=torch.channels_last))
        return out


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with each conv -> batch-norm pair folded into one conv.

    Uses torch.fx to find the pairs (a conv whose only user is a batch norm); a module fx
    cannot trace is returned as an unfolded copy. `module` itself is left unchanged.
    """
    from torch.fx.experimental.optimization import fuse

    # The modules are copied but not their tensors: folding makes new weights for every
    # folded pair, and copying all the tensors first took a tenth of a second of embed's
    # start-up. A tensor still shared after folding is then copied (below), so that
    # casting the result (.to(bfloat16)) cannot change `module`.
    originals = {id(tensor): tensor for tensor in (*module.parameters(), *module.buffers())}
    structure = copy.deepcopy(module, memo=dict(originals)).eval()
    try:
        folded = fuse(structure, inplace=True)
    except Exception as error:  # noqa: BLE001 -- tracing can fail in many ways; folding is optional
        logger.warning("batch norm not folded (%s): running the trunk as it is", error)
        return copy.deepcopy(module).eval()
    _copy_shared(folded, originals)
    return folded


def _copy_shared(module: nn.Module, originals: dict[int, torch.Tensor]) -> None:
    """Give `module` its own copy of every parameter or buffer found in `originals`."""
    for sub in module.modules():
        for name, parameter in [*sub.named_parameters(recurse=False)]:
            if id(parameter) in originals:
                copied = nn.Parameter(parameter.detach().clone(), parameter.requires_grad)
                setattr(sub, name, copied)
        for name, buffer in [*sub.named_buffers(recurse=False)]:
            if id(buffer) in originals:
                setattr(sub, name, buffer.clone())


def inference_trunk(
    model: MultiGrain, *, precision: InferencePrecision, device: torch.device
) -> TorchTrunk:
    """A folded, channels-last copy of ``model.features`` in `precision` (bf16, fp16 or fp32).

    `precision` must be resolved (``resolve_inference_precision``); int8 is built by
    :func:`fast_trunk_for` instead. The model itself is left unchanged.
    """
    module = fold_batch_norm(model.features)
    # one pass over the weights: cast and made channels-last together (Module.to takes the
    # three at once; torch's type stubs list memory_format only alone)
    module = module.to(  # type: ignore[call-overload]
        device=device, dtype=compute_dtype(precision), memory_format=torch.channels_last
    )
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return TorchTrunk(module, device, precision)


@torch.no_grad()
def embed_features(model: MultiGrain, features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) trunk output -> (B, C) float32 raw GeM embedding, on the model's device."""
    device = model.pool.p.device
    return model.pool(features.to(device)).float()


#: Dead-leaves pictures an int8 trunk is calibrated on (multigrain.data.dead_leaves).
CALIBRATION_PICTURES = 32
CALIBRATION_SEED = 0


def fast_trunk_for(
    model: MultiGrain,
    precision: InferencePrecision | str,
    *,
    device: torch.device,
    resolution: int = 224,
) -> Trunk:
    """The fast trunk that runs ``model.features`` at `precision` (resolved on `device`).

    bf16/fp16/fp32: :func:`inference_trunk`. int8: the folded trunk quantised by
    onnxruntime, loaded from the int8 cache (multigrain.inference.int8_cache) when this
    model was quantised at this s before, else calibrated on :data:`CALIBRATION_PICTURES`
    dead-leaves pictures of longest side s (multigrain.data.dead_leaves): the same on every
    machine and for every collection, so every run quantises a model at one s alike.
    """
    used = resolve_inference_precision(precision, device)
    if used is not InferencePrecision.INT8:
        return inference_trunk(model, precision=used, device=device)

    def calibration() -> tuple[list[torch.Tensor], str]:
        pictures = dead_leaves(resolution, CALIBRATION_PICTURES, seed=CALIBRATION_SEED)
        source = f"{len(pictures)} dead-leaves pictures, s = {resolution}, seed {CALIBRATION_SEED}"
        return [normalise(picture[None]) for picture in pictures], source

    return cached_int8_trunk(fold_batch_norm(model.features), calibration, resolution=resolution)


def with_trunk(metadata: EmbeddingMetadata, trunk: Trunk) -> EmbeddingMetadata:
    """`metadata` of descriptors made through `trunk`: an int8 trunk adds its fingerprint
    (``metadata.int8``), so that two quantisations of one model never share an output or
    an index unnoticed; a float trunk changes nothing."""
    if isinstance(trunk, OnnxInt8Trunk) and trunk.fingerprint:
        return replace(metadata, int8=trunk.fingerprint)
    return metadata
