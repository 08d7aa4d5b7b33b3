"""Which precision inference runs at: auto -> bf16 where native, else fp32; bad input refused."""

from __future__ import annotations

import pytest
import torch

import multigrain.runtime.precision as precision_module
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import (
    InferencePrecision,
    compute_dtype,
    resolve_inference_precision,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: native)
    assert resolve_inference_precision("auto", CPU).value == expected
    # explicit choices are kept whatever the CPU
    assert resolve_inference_precision("fp32", CPU) is InferencePrecision.FP32
    assert resolve_inference_precision("bf16", CPU) is InferencePrecision.BF16
    assert resolve_inference_precision("int8", CPU) is InferencePrecision.INT8


def test_cuda_only_and_cpu_only_precisions_are_refused_elsewhere():
    with pytest.raises(MultiGrainError, match="fp16 is for CUDA only"):
        resolve_inference_precision("fp16", CPU)
    with pytest.raises(MultiGrainError, match="int8 runs on the CPU"):
        resolve_inference_precision("int8", torch.device("cuda"))
    with pytest.raises(MultiGrainError, match="not one of: auto, fp32, bf16, fp16, int8"):
        resolve_inference_precision("half", CPU)


def test_compute_dtypes():
    assert compute_dtype(InferencePrecision.FP32) is torch.float32
    assert compute_dtype(InferencePrecision.BF16) is torch.bfloat16
    assert compute_dtype(InferencePrecision.FP16) is torch.float16
    with pytest.raises(MultiGrainError, match="resolve it first"):
        compute_dtype(InferencePrecision.AUTO)
