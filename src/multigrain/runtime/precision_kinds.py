"""The precision choices, as Enums free of torch: the CLI types its options with them.

Kept apart from :mod:`multigrain.runtime.precision` (which resolves them with torch) so
that `multigrain --help` does not load torch; that module re-exports both names.
"""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Training precision (:class:`multigrain.training.config.TrainConfig`)."""

    AUTO = "auto"  # bf16 autocast where the hardware runs it fast, else fp32
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"  # CUDA only, with a gradient scaler


class InferencePrecision(str, Enum):
    """Inference precision; resolved once, by ``resolve_inference_precision``, never AUTO after."""

    AUTO = "auto"  # bf16 where the hardware runs it natively (CUDA: bf16 or fp16), else fp32
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"  # CUDA only
    INT8 = "int8"  # onnxruntime static quantisation, CPU only (multigrain.inference.int8)
