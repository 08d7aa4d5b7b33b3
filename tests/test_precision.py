"""Which precision inference runs at: auto chosen per CPU kind; bad input refused."""

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


@pytest.fixture
def cpu_kind(monkeypatch):
    """Pretend to be a CPU with the given flags and native bf16 (or not)."""

    monkeypatch.delenv("MULTIGRAIN_PRECISION", raising=False)  # conftest's "float"

    def pretend(flags: set[str], native_bf16: bool, onnxruntime: bool = True) -> None:
        monkeypatch.setattr(
            precision_module, "cpu_model_and_flags", lambda: ("x", frozenset(flags))
        )
        monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: native_bf16)
        real = precision_module.importlib.util.find_spec
        monkeypatch.setattr(
            precision_module.importlib.util, "find_spec",
            lambda name: real(name) if onnxruntime or name != "onnxruntime" else None,
        )  # fmt: skip
        precision_module.int8_is_fastest_here.cache_clear()

    yield pretend
    precision_module.int8_is_fastest_here.cache_clear()


@pytest.mark.parametrize(
    ("flags", "native_bf16", "expected"),
    [
        ({"avx512_bf16", "avx512_vnni"}, True, "int8"),  # the reference machine: VNNI, no AMX
        ({"avx512_vnni"}, False, "int8"),  # VNNI without native bf16
        ({"avx_vnni"}, True, "int8"),
        ({"avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"}, True, "bf16"),
        ({"avx512_bf16"}, True, "bf16"),  # no VNNI
        ({"avx2"}, False, "fp32"),
    ],
)
def test_auto_is_chosen_per_cpu_kind(cpu_kind, flags, native_bf16, expected):
    cpu_kind(flags, native_bf16)
    assert resolve_inference_precision("auto", CPU).value == expected
    # what is fitted and stored never gets int8 from auto
    floats = resolve_inference_precision("auto", CPU, float_only=True).value
    assert floats == ("bf16" if native_bf16 else "fp32")
    # explicit choices are kept whatever the CPU
    assert resolve_inference_precision("fp32", CPU) is InferencePrecision.FP32
    assert resolve_inference_precision("bf16", CPU) is InferencePrecision.BF16
    assert resolve_inference_precision("int8", CPU) is InferencePrecision.INT8
    assert resolve_inference_precision("int8", CPU, float_only=True) is InferencePrecision.INT8


def test_auto_is_not_int8_without_onnxruntime(cpu_kind):
    cpu_kind({"avx512_bf16", "avx512_vnni"}, True, onnxruntime=False)
    assert resolve_inference_precision("auto", CPU) is InferencePrecision.BF16


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


def test_the_environment_says_what_auto_means(cpu_kind, monkeypatch):
    cpu_kind({"avx512_bf16", "avx512_vnni"}, True)
    assert resolve_inference_precision("auto", CPU) is InferencePrecision.INT8
    monkeypatch.setenv("MULTIGRAIN_PRECISION", "float")
    assert resolve_inference_precision("auto", CPU) is InferencePrecision.BF16
    monkeypatch.setenv("MULTIGRAIN_PRECISION", "fp32")
    assert resolve_inference_precision("auto", CPU) is InferencePrecision.FP32
    assert resolve_inference_precision("bf16", CPU) is InferencePrecision.BF16  # explicit wins
    monkeypatch.setenv("MULTIGRAIN_PRECISION", "int8")
    cpu_kind({"avx2"}, False)
    assert resolve_inference_precision("auto", CPU) is InferencePrecision.INT8
    assert resolve_inference_precision("auto", CPU, float_only=True) is InferencePrecision.FP32
    monkeypatch.setenv("MULTIGRAIN_PRECISION", "half")
    with pytest.raises(MultiGrainError, match=r"\$MULTIGRAIN_PRECISION='half' is not one of"):
        resolve_inference_precision("auto", CPU)
