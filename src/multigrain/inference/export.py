"""Export a MultiGrain model for serving: TorchScript and ONNX.

Both files map ``images`` (N, 3, H, W) float32, already normalised as for
:func:`multigrain.data.resize.to_model_input`, to two outputs: ``embedding`` (N, D), the raw
GeM vector (L2-normalise it for retrieval), and ``logits`` (N, K). Batch size, height and
width are all dynamic, so one file serves any test resolution s (SPEC §4). The GeM exponent
is baked in: set ``model.pool.set_p(p_star)`` before exporting.

Files are written atomically (a temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from multigrain.runtime.atomic import atomic_path
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAMES = ("embedding", "logits")
DEFAULT_OPSET = 17


def export_torchscript(
    model: nn.Module, path: str | os.PathLike[str], *, example_size: int = 224
) -> Path:
    """Trace ``model`` to TorchScript and save it to ``path``; reload with ``torch.jit.load``.

    Args:
        model: a :class:`~multigrain.models.MultiGrain` (or any module with the same
            ``(N, 3, H, W) -> (embedding (N, D), logits (N, K))`` signature), on CPU.
        path: the output file (``.pt``).
        example_size: side of the square example image used for tracing. The traced
            graph has no shape-dependent control flow, so other sizes work too.

    Returns:
        ``path`` as a Path.
    """
    example = _example_input(model, example_size)
    with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        # torch.jit.trace is deprecated in recent PyTorch but still the only way to get a
        # self-contained file that C++ (libtorch) and older runtimes load.
        warnings.filterwarnings("ignore", message=".*torch.jit.* is deprecated")
        traced = torch.jit.trace(model, example, check_trace=False)
        with atomic_path(path) as tmp_path:
            torch.jit.save(traced, str(tmp_path))
    logger.info("exported TorchScript model to %s", path)
    return Path(path)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    example_size: int = 224,
) -> Path:
    """Export ``model`` to ONNX with dynamic batch, height and width, and validate the file.

    Uses PyTorch's TorchScript-based exporter (``dynamo=False``): the ``torch.export``-based
    one needs the extra ``onnxscript`` package. GeM exports to plain Clip/ReduceMax/Div/Pow/
    ReduceMean ops.

    Args:
        model: see :func:`export_torchscript`.
        path: the output file (``.onnx``).
        opset: the ONNX opset version (17 is supported by onnxruntime >= 1.14).
        example_size: side of the square example image used for tracing.

    Returns:
        ``path`` as a Path. Input ``images`` (N, 3, H, W) float32; outputs ``embedding``
        (N, D) and ``logits`` (N, K).

    Raises:
        MultiGrainError: ``onnx`` is not installed (``pip install 'multigrain[export]'``).
    """
    onnx = _require("onnx")
    example = _example_input(model, example_size)
    dynamic_axes = {
        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        **{name: {0: "batch"} for name in OUTPUT_NAMES},
    }
    with atomic_path(path) as tmp_path:
        with _eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*will be removed.*")
            torch.onnx.export(
                model,
                (example,),
                str(tmp_path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
            )
        onnx.checker.check_model(str(tmp_path))
    logger.info("exported ONNX model (opset %d) to %s", opset, path)
    return Path(path)


def _require(module: str) -> ModuleType:
    """Import an optional export dependency, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MultiGrainError(
            f"exporting to ONNX needs the '{module}' package: pip install 'multigrain[export]'"
        ) from error


def _example_input(model: nn.Module, example_size: int) -> torch.Tensor:
    """(1, 3, S, S) random float32 image on the model's device."""
    if example_size < 32:
        raise MultiGrainError(f"example_size must be >= 32 pixels, got {example_size}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, example_size, example_size, generator=generator).to(device)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (batch-norm statistics frozen) and restore it afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
