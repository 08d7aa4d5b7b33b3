"""Mixed-precision choice: bf16 autocast where the hardware runs it natively, else fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from multigrain.config import Precision
from multigrain.errors import MultiGrainError


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


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """torch.autocast for `dtype`, or nothing at all for fp32."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
