"""The Python API for using a model: ``multigrain.load()`` and what it returns.

    import multigrain
    model = multigrain.load()                      # the built-in bundle
    vectors = model.embed(["a.jpg", "b.jpg"])      # (2, d) unit rows, as `multigrain embed`
    float(vectors[0] @ vectors[1])                 # cosine similarity
    model.is_copy(vectors[0], vectors[1])          # against the bundle's 90 %-precision score
    model.classify(["a.jpg"], top_k=3)

The descriptors are exactly those of ``multigrain embed`` with the same source and
settings: the same loader (:func:`multigrain.inference.prepare.prepare_model`) and forward
path (:func:`multigrain.inference.embed.embed_in_memory` through the trunk of
:func:`multigrain.inference.fast_trunk.fast_trunk_for`, built once per model and reused by
``embed`` and ``classify``; an int8 trunk is calibrated on each call's images instead).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from multigrain.inference.classify import Prediction, classify_images
from multigrain.inference.embed import DEFAULT_PRECISION, embed_in_memory
from multigrain.inference.fast_trunk import Trunk, fast_trunk_for
from multigrain.inference.prepare import PreparedModel, prepare_model
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision

PathLike = str | os.PathLike[str]


class Model:
    """A model with its settings; build with :func:`load`."""

    def __init__(
        self, prepared: PreparedModel, device: torch.device, precision: InferencePrecision | str
    ) -> None:
        self.prepared = prepared
        self.device = device
        self.precision = resolve_inference_precision(precision, device)  # what runs
        self._trunk: Trunk | None = None

    def _trunk_for(self, paths: Sequence[Path]) -> Trunk | None:
        """The cached fast trunk; None for int8 (embed_in_memory calibrates it on `paths`)."""
        if self.precision is InferencePrecision.INT8:
            return None
        if self._trunk is None:
            self._trunk = fast_trunk_for(self.prepared.model, self.precision, device=self.device)
        return self._trunk

    @property
    def resolution(self) -> int:
        return self.prepared.resolution

    @property
    def exponent(self) -> float:
        return float(self.prepared.model.pool.p)

    @property
    def threshold(self) -> float | None:
        """The bundle's score threshold at 90 % precision (None without a bundle)."""
        return self.prepared.threshold

    def embed(self, images: Sequence[PathLike]) -> np.ndarray:
        """Image files -> (N, d) float32 unit descriptors (whitened when the bundle is).

        Raises MultiGrainError naming the first image that cannot be read.
        """
        paths = [Path(image) for image in images]
        whitening = self.prepared.whitening
        descriptors, _, failures = embed_in_memory(
            self.prepared.model, paths, resolution=self.resolution, device=self.device,
            precision=self.precision, trunk=self._trunk_for(paths),
            whitening=whitening.apply if whitening else None,
        )  # fmt: skip
        if failures:
            raise MultiGrainError(f"cannot embed {failures[0].path}: {failures[0].reason}")
        return descriptors.numpy().astype(np.float32)

    def is_copy(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether two descriptors score at or above the bundle's threshold."""
        if self.threshold is None:
            raise MultiGrainError(
                "this model has no calibrated threshold (a bare checkpoint, or settings other "
                "than the bundle's): compare scores yourself or calibrate one"
            )
        return float(np.dot(a, b)) >= self.threshold

    def classify(self, images: Sequence[PathLike], *, top_k: int = 5) -> list[Prediction]:
        """Top-k class names and probabilities per image (the raw embedding's classifier)."""
        paths = [Path(image) for image in images]
        return classify_images(
            self.prepared.model, paths, classes=self.prepared.classes,
            resolution=self.resolution, top_k=top_k, device=self.device,
            precision=self.precision, trunk=self._trunk_for(paths),
        )  # fmt: skip


def load(
    source: PathLike | None = None,
    *,
    resolution: int | None = None,
    exponent: float | None = None,
    whitening: bool = True,
    device: str = "cpu",
    precision: str = DEFAULT_PRECISION.value,
) -> Model:
    """A bundle folder, a weights file, or None for the built-in model -> :class:`Model`."""
    target = torch.device(device)
    prepared = prepare_model(
        None if source is None else Path(source), resolution=resolution, exponent=exponent,
        use_bundle_whitening=whitening, device=target,
    )  # fmt: skip
    return Model(prepared, target, precision)
