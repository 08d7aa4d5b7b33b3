"""Numeric precision: bf16 where the hardware runs it natively, else fp32.

Training uses :class:`Precision` through :func:`autocast_dtype`.
Inference (embed, classify, evaluate) uses :class:`InferencePrecision`, which adds int8
(onnxruntime static quantisation, CPU only) and is resolved once, by
:func:`resolve_inference_precision`, to the precision actually run -- the one recorded in
output metadata.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision_kinds import InferencePrecision, Precision

__all__ = [
    "InferencePrecision",
    "Precision",
    "autocast",
    "autocast_dtype",
    "compute_dtype",
    "cpu_supports_bf16",
    "resolve_inference_precision",
]


def cpu_supports_bf16() -> bool:
    """True when oneDNN reports native bf16 (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, or None for plain fp32."""
    precision = Precision(precision)
    if precision is Precision.FP32:
        return None
    if precision is Precision.AUTO:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if precision is Precision.FP16 and device.type != "cuda":
        raise MultiGrainError("fp16 autocast is for CUDA only: use --precision bf16 or fp32 on CPU")
    return torch.bfloat16 if precision is Precision.BF16 else torch.float16


def resolve_inference_precision(
    precision: InferencePrecision | str, device: torch.device
) -> InferencePrecision:
    """The precision inference will actually run on `device` (never AUTO).

    AUTO gives bf16 on a CPU with native bf16 (else fp32) and, on CUDA, bf16 where supported
    (else fp16). int8 is opt-in only (what it costs in accuracy: benchmarks/quality_guard.py).
    """
    try:
        precision = InferencePrecision(precision)
    except ValueError:
        valid = ", ".join(p.value for p in InferencePrecision)
        raise MultiGrainError(f"--precision {precision!r} is not one of: {valid}") from None
    if precision is InferencePrecision.AUTO:
        if device.type == "cuda":
            supported = torch.cuda.is_bf16_supported()
            return InferencePrecision.BF16 if supported else InferencePrecision.FP16
        return InferencePrecision.BF16 if cpu_supports_bf16() else InferencePrecision.FP32
    if precision is InferencePrecision.FP16 and device.type != "cuda":
        raise MultiGrainError("fp16 is for CUDA only: use --precision bf16 or fp32 on CPU")
    if precision is InferencePrecision.INT8 and device.type != "cpu":
        raise MultiGrainError("int8 runs on the CPU (onnxruntime): use --device cpu or bf16")
    return precision


def compute_dtype(precision: InferencePrecision) -> torch.dtype:
    """The floating dtype of weights and activations for a resolved float precision."""
    dtypes = {
        InferencePrecision.FP32: torch.float32,
        InferencePrecision.BF16: torch.bfloat16,
        InferencePrecision.FP16: torch.float16,
    }
    if precision not in dtypes:
        raise MultiGrainError(f"no torch dtype for precision {precision.value}: resolve it first")
    return dtypes[precision]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast for `dtype`, or nothing at all for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
