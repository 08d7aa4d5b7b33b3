"""int8 inference of a trunk with onnxruntime: static quantisation calibrated on images.

The trunk (``model.features`` with its batch norms folded, dynamic batch/height/width;
built by ``fast_trunk.fast_trunk_for``) is exported to ONNX, quantised
with ``onnxruntime.quantization.quantize_static`` -- weights int8 per output channel,
activations uint8 (QDQ format) -- and run by onnxruntime's CPU provider, which uses VNNI
int8 dot products where the CPU has them. GeM pooling and the classifier stay in fp32 on
the torch model.

Each activation's range is the mean over the calibration images of that image's own
min and max (``ranges="image-mean"``), not the min and max over all of them
(``"extreme"``): in a trained network one image can drive a layer to 30 times the
activations of the others (the demo model: 98.6 against a median image's 2.5), and
extreme ranges then leave every other image a handful of uint8 levels (copy µAP of the
demo model -36 points), while with mean ranges that one image saturates and the rest keep
their resolution. Measured by benchmarks/quality_guard.py (README, "Quality guard").
:func:`output_tail` can keep the last convolution to the output in fp32 (``float_tail``),
an earlier remedy for the same outlier, no longer needed with mean ranges.

Calibration images come at the resolution s they will be embedded at; a few dozen are
enough. ``fast_trunk_for`` uses synthetic dead-leaves pictures (multigrain.data.dead_leaves),
the same on every machine.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision

logger = logging.getLogger(__name__)

INPUT_NAME = "images"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a MultiGrainError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise MultiGrainError(
            "--precision int8 needs onnxruntime: pip install 'multigrain[export]'"
        ) from error
    return onnxruntime


class OnnxInt8Trunk:
    """(B, 3, H, W) float32 normalised images -> (B, C, h, w) float32 features, on the CPU."""

    precision = InferencePrecision.INT8

    def __init__(self, session: Any, setup_seconds: float, fingerprint: str = "") -> None:
        self.session = session
        self.setup_seconds = setup_seconds  # export + calibration + quantisation (or loading)
        self.fingerprint = fingerprint  # of the quantised model: equal ones give equal maps
        self.from_cache = False  # loaded from the int8 cache rather than quantised here

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        (features,) = self.session.run(None, {INPUT_NAME: array})
        return torch.from_numpy(features)


class _Calibration:
    """onnxruntime CalibrationDataReader over a list of (1, 3, H, W) images."""

    def __init__(self, images: Sequence[torch.Tensor]) -> None:
        self.items = iter([{INPUT_NAME: image.float().numpy()} for image in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)

    def rewind(self) -> None:  # part of the reader protocol; one pass is all min/max needs
        pass


def inline_shared_initializers(path: Path) -> int:
    """Give every user of a shared ONNX initializer its own copy; returns how many were made.

    ``torch.onnx.export`` stores equal tensors once and feeds the other users through an
    ``Identity`` of it. A convolution whose bias is such an Identity has no initializer
    bias: onnxruntime's quantizer then quantises the bias like an activation, with a scale
    other than input scale x weight scale, and the runtime cannot fuse that convolution
    into ``QLinearConv``: it runs in fp32 between a dequantise and a quantise, slower than
    fp32 alone. Equal biases are common: every batch norm of an untrained network folds
    to a zero bias (ResNet-18: 16 of its 20 convolutions were left unfused).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    outputs = {output.name for output in graph.output}
    kept, inlined = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            if node.output[0] not in outputs:
                copied = onnx.TensorProto()
                copied.CopyFrom(initializers[node.input[0]])
                copied.name = node.output[0]
                graph.initializer.append(copied)
                inlined += 1
                continue
        kept.append(node)
    if inlined:
        del graph.node[:]
        graph.node.extend(kept)
        onnx.save(model, str(path))
    return inlined


def output_tail(path: Path) -> list[str]:
    """Names of the nodes from the graph's output back to its last convolution, inclusive.

    In a ResNet trunk these are the last block's final convolution, the residual add and
    the ReLU whose output is the feature map. Left in fp32, the map GeM pools is not
    rounded to a uint8 grid; with ``ranges="extreme"`` that grid's range is set by the
    brightest calibration image: in a
    trained network one image can reach activations 30x those of the others (measured on
    the demo model: max 98.6 against a median image's 2.5), and every other image's map then
    keeps only a handful of levels.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    producers = {output: node for node in graph.node for output in node.output}
    tail: list[str] = []
    wanted = graph.output[0].name
    while wanted in producers:
        node = producers[wanted]
        tail.append(node.name)
        if node.op_type == "Conv":
            break
        wanted = node.input[0]  # the main path; a residual add's other input stays int8
    return tail


def int8_trunk(
    trunk: nn.Module,
    calibration: Sequence[torch.Tensor],
    *,
    threads: int | None = None,
    optimized_model_path: Path | None = None,
    float_tail: bool = False,
    ranges: str = "image-mean",
) -> OnnxInt8Trunk:
    """Quantise a trunk (e.g. ``fold_batch_norm(model.features)``) to int8, calibrated on
    `calibration` images, and open it in onnxruntime (:func:`quantise` + :func:`open_int8`).

    Args:
        trunk: (B, 3, H, W) -> (B, C, h, w) module, in eval mode (left unchanged).
        calibration: normalised images, each (1, 3, H, W) float32 (shapes may differ).
        threads: onnxruntime intra-op threads (default: torch's thread count).
        optimized_model_path: where onnxruntime saves the graph it runs, after its own
            fusions (to inspect which convolutions became QLinearConv); None: not saved.
        float_tail: keep :func:`output_tail` (last convolution to the output) in fp32.
        ranges: "image-mean" (each activation's range: the mean of every calibration
            image's own min and max) or "extreme" (the min and max over all images).

    Raises:
        MultiGrainError: onnx/onnxruntime missing, or no calibration images.
    """
    started = time.perf_counter()
    model = quantise(trunk, calibration, float_tail=float_tail, ranges=ranges)
    opened = open_int8(model, threads=threads, optimized_model_path=optimized_model_path)
    opened.setup_seconds = time.perf_counter() - started
    logger.info(
        "int8 trunk ready in %.1f s (%d calibration images)", opened.setup_seconds,
        len(calibration),
    )  # fmt: skip
    return opened


RANGES = ("image-mean", "extreme")


def quantise(
    trunk: nn.Module,
    calibration: Sequence[torch.Tensor],
    *,
    float_tail: bool = False,
    ranges: str = "image-mean",
) -> bytes:
    """The int8 ONNX model of `trunk` calibrated on `calibration`, serialised (arguments
    as :func:`int8_trunk`)."""
    import_onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if not calibration:
        raise MultiGrainError("int8 quantisation needs at least one calibration image")
    if ranges not in RANGES:
        raise ValueError(f"ranges must be one of {RANGES}, not {ranges!r}")
    trunk = copy.deepcopy(trunk).float().cpu()
    with tempfile.TemporaryDirectory(prefix="multigrain-int8-") as tmp:
        plain, quantised = Path(tmp) / "trunk.onnx", Path(tmp) / "trunk.int8.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                trunk, (calibration[0].float(),), str(plain), dynamo=False,
                input_names=[INPUT_NAME], output_names=["features"], opset_version=17,
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              "features": {0: "batch", 2: "h", 3: "w"}},
            )  # fmt: skip
            inline_shared_initializers(plain)
            quantize_static(
                str(plain), str(quantised), _Calibration(calibration),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=output_tail(plain) if float_tail else [],
                # one ReduceMin/ReduceMax per image and tensor, then their mean (the
                # calibrater averages the per-image ranges it collected in one pass)
                extra_options={"CalibMovingAverage": ranges == "image-mean"},
            )  # fmt: skip
        return quantised.read_bytes()


def open_int8(
    model: bytes, *, threads: int | None = None, optimized_model_path: Path | None = None
) -> OnnxInt8Trunk:
    """An onnxruntime CPU session of a :func:`quantise` model (set-up time: opening it)."""
    onnxruntime = import_onnxruntime()
    started = time.perf_counter()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    if optimized_model_path is not None:
        options.optimized_model_filepath = str(optimized_model_path)
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    fingerprint = hashlib.sha256(model).hexdigest()[:12]
    return OnnxInt8Trunk(session, time.perf_counter() - started, fingerprint)
