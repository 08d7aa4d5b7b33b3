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
``embed`` and ``classify``; an int8 one is calibrated on dead-leaves pictures, as everywhere).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from multigrain.duplicates.folder import DuplicateReport, ScoreKind, find_duplicates_in_folder
from multigrain.duplicates.outputs import default_output, write_outputs
from multigrain.inference.classify import Prediction, classify_images
from multigrain.inference.embed import DEFAULT_PRECISION, embed_in_memory
from multigrain.inference.fast_trunk import Trunk, fast_trunk_for, with_trunk
from multigrain.inference.pil_images import embed_pil_images
from multigrain.inference.prepare import PreparedModel, prepare_model
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.classifier_fold import descriptor_classifier
from multigrain.search.descriptors import EmbeddingMetadata, check_compatible
from multigrain.search.index import ImageIndex
from multigrain.search.index_lock import lock_for_edit
from multigrain.search.index_store import load_index, save_index

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

    def _trunk_for(self) -> Trunk:
        """The fast trunk, built on first use and kept (an int8 one quantised or loaded
        from the int8 cache once)."""
        if self._trunk is None:
            self._trunk = fast_trunk_for(
                self.prepared.model, self.precision, device=self.device,
                resolution=self.resolution,
            )  # fmt: skip
        return self._trunk

    def metadata(self) -> EmbeddingMetadata:
        """What this model's descriptors record (with the int8 trunk's fingerprint once it
        has embedded an image)."""
        wanted = self.prepared.embedding_metadata(self.precision)
        return wanted if self._trunk is None else with_trunk(wanted, self._trunk)

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

    def embed(self, images: Sequence[PathLike | Image.Image]) -> np.ndarray:
        """Image files and/or PIL images -> (N, d) float32 unit descriptors, in order
        (whitened when the bundle is); a file and the same picture as a PIL image match.

        Raises MultiGrainError naming the first image that cannot be read.
        """
        whitening = self.prepared.whitening
        apply = whitening.apply if whitening else None
        files = [(i, Path(x)) for i, x in enumerate(images) if not isinstance(x, Image.Image)]
        pictures = [(i, x) for i, x in enumerate(images) if isinstance(x, Image.Image)]
        rows: dict[int, np.ndarray] = {}
        if files:
            paths = [path for _, path in files]
            descriptors, _, failures = embed_in_memory(
                self.prepared.model, paths, resolution=self.resolution, device=self.device,
                precision=self.precision, trunk=self._trunk_for(), whitening=apply,
            )  # fmt: skip
            if failures:
                raise MultiGrainError(f"cannot embed {failures[0].path}: {failures[0].reason}")
            rows.update(zip((i for i, _ in files), descriptors.numpy(), strict=True))
        if pictures:
            descriptors = embed_pil_images(
                self.prepared.model, self._trunk_for(), [x for _, x in pictures],
                resolution=self.resolution, whitening=apply,
            )  # fmt: skip
            rows.update(zip((i for i, _ in pictures), descriptors.numpy(), strict=True))
        if not rows:
            raise MultiGrainError("no images given: pass image paths or PIL images")
        return np.stack([rows[i] for i in range(len(images))]).astype(np.float32)

    def similarity(self, a: PathLike | Image.Image, b: PathLike | Image.Image) -> float:
        """The cosine similarity of two images' descriptors (1 for the same picture)."""
        first, second = self.embed([a, b])
        return float(first @ second)

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
            precision=self.precision, trunk=self._trunk_for(),
        )  # fmt: skip

    def classify_descriptors(self, descriptors: np.ndarray, *, top_k: int = 5) -> list[list[str]]:
        """(N, d + 1) stored descriptors (``embed``'s output with the bundle's whitening) ->
        per row, the top-k class names, best first: the same as :meth:`classify` on the
        images, from the vector alone (:func:`multigrain.search.whitening.
        descriptor_classifier`; exact at full dimension, through the pseudo-inverse at the
        bundle's reduced one). No probabilities: the scores are the logits over a norm."""
        whitening = self.prepared.whitening
        if whitening is None:
            raise MultiGrainError(
                "this model has no whitening, so its descriptors are unit-length raw embeddings "
                "that do not keep the classifier's bias: classify the images with classify()"
            )
        rows = np.atleast_2d(np.asarray(descriptors, dtype=np.float32))
        if rows.shape[1] != whitening.output_dim:
            raise MultiGrainError(
                f"descriptors have {rows.shape[1]} dimensions but this model's are "
                f"{whitening.output_dim}: pass descriptors embedded by this model"
            )
        scores_of = descriptor_classifier(self.prepared.model.classifier.cpu(), whitening)
        with torch.no_grad():
            scores = scores_of(torch.from_numpy(rows))
        best = scores.topk(min(top_k, scores.shape[1]), dim=1).indices.tolist()
        return [[self.prepared.classes[i] for i in row] for row in best]


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


@dataclass(frozen=True)
class Match:
    """One search result: the stored image, its cosine score, and whether it is a copy."""

    path: str
    score: float
    is_match: bool | None  # score >= the threshold; None when there is no threshold


class Index:
    """Images searchable by a model: ``multigrain.Index.build(model, paths)``.

    A FAISS index of the model's descriptors (chosen as `index build` does: exact Flat
    below 250,000 images, compressed RaBitQ from there) that knows how they were made
    (model, s, p*, whitening); searches embed the queries with the same model, and a
    result is a match when it scores at or above the model's calibrated threshold.
    """

    def __init__(self, model: Model, index: ImageIndex) -> None:
        self.model = model
        self.index = index

    @classmethod
    def build(cls, model: Model, images: Sequence[PathLike]) -> Index:
        descriptors = model.embed(images)
        paths = [os.path.abspath(image) for image in images]  # found from any folder
        return cls(
            model, ImageIndex.build(descriptors, paths, factory="auto", metadata=model.metadata())
        )

    @classmethod
    def load(cls, folder: PathLike, model: Model | None = None) -> Index:
        """An index folder (``multigrain index build`` or :meth:`save`), with its model."""
        index = load_index(folder)
        model = model or load()
        wanted = model.metadata()
        if index.metadata is not None:
            check_compatible(index.metadata, wanted, what=f"index {folder}")
        return cls(model, index)

    def save(self, folder: PathLike) -> Path:
        """Write the index folder, under its lock: refused while `multigrain serve` holds it."""
        with lock_for_edit(folder):
            return save_index(self.index, folder)

    def add(self, images: Sequence[PathLike]) -> None:
        descriptors = self.model.embed(images)
        self._check_quantisation()
        self.index.add(descriptors, [os.path.abspath(image) for image in images])

    def _check_quantisation(self) -> None:
        """An int8 model whose trunk was quantised otherwise than the index's descriptors
        is refused (known once it has embedded a file: check_compatible compares it)."""
        if self.index.metadata is not None:
            check_compatible(self.index.metadata, self.model.metadata(), what="this index")

    def __len__(self) -> int:
        return len(self.index.paths)

    def search(self, images: Sequence[PathLike | Image.Image], k: int = 5) -> list[list[Match]]:
        """The k best stored images for each query image, best first."""
        queries = self.model.embed(images)
        self._check_quantisation()
        found = self.index.search(queries, k)
        threshold = self.model.threshold
        return [
            [
                Match(path, float(score), None if threshold is None else bool(score >= threshold))
                for path, score in zip(paths, scores.tolist(), strict=True)
                if path
            ]
            for paths, scores in zip(found.paths, found.scores, strict=True)
        ]


def find_duplicates(
    folder: PathLike,
    *,
    model: PathLike | None = None,
    output: PathLike | None = None,
    precision: float = 0.9,
    threshold: float | None = None,
    score: ScoreKind | str = ScoreKind.NEIGHBOURHOOD,
    verify: bool = True,
    min_inliers: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> DuplicateReport:
    """``multigrain find-duplicates FOLDER`` from Python: exact and near-duplicate groups.

    Descriptors are cached in ``OUTPUT/embeddings`` (default OUTPUT: ``FOLDER-duplicates``
    beside the folder), where groups.json, groups.csv and contact-sheet.html are written.
    `score` is what pairs are linked by: "neighbourhood" (the cosine minus what both images
    score with the rest of the folder) or "cosine"; `threshold` is in its units. `verify`
    also matches each image point for point with its nearest and links the pairs with at
    least `min_inliers` matching points (calibrated unless given).
    """
    source = Path(folder)
    target = Path(output) if output else default_output(source)
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))
    prepared = prepare_model(None if model is None else Path(model), device=context.device)
    report = find_duplicates_in_folder(
        source, prepared, cache=target / "embeddings", context=context,
        target_precision=precision, threshold=threshold, score_kind=ScoreKind(score),
        verify=verify, min_inliers=min_inliers, progress=progress,
    )  # fmt: skip
    write_outputs(report, target)
    return report
