"""Numeric precision: the fastest the hardware runs without costing accuracy.

Training uses :class:`Precision` through :func:`autocast_dtype`: bf16 where the hardware
runs it natively, else fp32. Inference (embed, classify, evaluate, serve) uses
:class:`InferencePrecision`, which adds int8 (onnxruntime static quantisation, CPU only)
and is resolved once, by :func:`resolve_inference_precision`, to the precision actually
run -- the one recorded in output metadata. Its ``auto`` is chosen per CPU kind
(:func:`int8_is_fastest_here`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from collections.abc import Iterator

import torch

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.machine import cpu_model_and_flags
from multigrain.runtime.precision_kinds import InferencePrecision, Precision

__all__ = [
    "InferencePrecision",
    "Precision",
    "autocast",
    "autocast_dtype",
    "compute_dtype",
    "cpu_supports_bf16",
    "int8_is_fastest_here",
    "resolve_inference_precision",
]


def cpu_supports_bf16() -> bool:
    """True when oneDNN reports native bf16 (AVX512-BF16 or AMX) on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: What ``auto`` means on this machine when set: ``float`` (bf16 where native, else fp32:
#: never int8), or a precision (fp32, bf16, fp16, int8). Unset or ``auto``: per CPU kind.
AUTO_ENV = "MULTIGRAIN_PRECISION"

#: CPU flags of int8 dot products (VNNI), and of AMX tiles.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
AMX_FLAGS = frozenset({"amx_tile", "amx_bf16", "amx_int8"})


@functools.cache
def int8_is_fastest_here() -> bool:
    """Whether ``auto`` runs inference in int8 on this CPU: it has VNNI int8 dot products
    and no AMX, and onnx and onnxruntime are installed (dependencies of multigrain).

    With VNNI and no AMX the int8 forward of a ResNet-50 runs twice as fast as bf16 (2-core
    AMD EPYC with AVX512-BF16 and VNNI: 28.1 against 14.2 images/s at s = 500, README
    "Speed"), and int8 calibrated on dead-leaves pictures passes the quality guard on the
    shipped model and the demo's. On AMX the bf16 tiles run 4-5 times the AVX512 rate, and
    int8 through onnxruntime has not been measured there: bf16 stays.
    """
    flags = cpu_model_and_flags()[1]
    if flags & AMX_FLAGS or not flags & VNNI_FLAGS:
        return False
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime"))


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
    precision: InferencePrecision | str, device: torch.device, *, float_only: bool = False
) -> InferencePrecision:
    """The precision inference will actually run on `device` (never AUTO).

    AUTO gives, on the CPU, int8 where :func:`int8_is_fastest_here` (what it costs in
    accuracy: benchmarks/quality_guard.py), else bf16 where the CPU runs it natively, else
    fp32; on CUDA bf16 where supported, else fp16. ``$MULTIGRAIN_PRECISION`` (:data:`AUTO_ENV`)
    overrides what AUTO means. `float_only`: AUTO never gives int8 (for what is fitted on
    float descriptors: p*, whitenings, the research study's scores).
    """
    try:
        precision = InferencePrecision(precision)
    except ValueError:
        valid = ", ".join(p.value for p in InferencePrecision)
        raise MultiGrainError(f"--precision {precision!r} is not one of: {valid}") from None
    chosen = os.environ.get(AUTO_ENV, "").strip().lower()
    if precision is InferencePrecision.AUTO and chosen not in ("", "auto"):
        if chosen == "float":
            float_only = True
        elif chosen == "int8" and float_only:
            pass  # stays AUTO, among the float precisions
        else:
            try:
                precision = InferencePrecision(chosen)
            except ValueError:
                raise MultiGrainError(
                    f"${AUTO_ENV}={chosen!r} is not one of: auto, float, fp32, bf16, fp16, int8"
                ) from None
    if precision is InferencePrecision.AUTO:
        if device.type == "cuda":
            supported = torch.cuda.is_bf16_supported()
            return InferencePrecision.BF16 if supported else InferencePrecision.FP16
        if not float_only and int8_is_fastest_here():
            return InferencePrecision.INT8
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
