"""Choosing the test resolution s* and the pooling exponent p* (SPEC §4).

Only the GeM pooling depends on p, so the trunk runs once per image and resolution: the
feature maps are cached (:func:`extract_feature_maps`) and pooled with every exponent,

    e(p) = (mean_{h,w} clamp(x, eps)^p)^(1/p),    logits(p) = W e(p) + b,

either over a grid (:func:`grid_search`, cross-validation) or by gradient descent on the
cross-entropy with respect to p alone, everything else frozen (:func:`learn_exponent`).

Memory: the maps of the images at the current resolution are held together, N x C x h x w
values, e.g. ResNet-50 at s = 500: 2048 x 16 x 16 floats = 2 MiB an image, 0.5 GiB for
256 images (half that under bf16 autocast). Only one resolution is held at a time.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from multigrain.data.datasets import LabelledImages
from multigrain.data.resize import prepare
from multigrain.metrics import top_k_accuracy
from multigrain.models import MultiGrain, gem
from multigrain.runtime.atomic import atomic_write_bytes
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import autocast

logger = logging.getLogger(__name__)


@dataclass
class FeatureMaps:
    """Trunk feature maps of N labelled images at one resolution, grouped by map shape.

    Attributes:
        groups: ``(maps (n_g, C, h, w), positions (n_g,))`` per shape; ``positions`` are
            row numbers in ``labels`` (the order of the requested indices).
        labels: (N,) int64 class labels.
        resolution: the longest side s the images were resized to.
        eps: the GeM clamp of the model.
    """

    groups: list[tuple[Tensor, Tensor]]
    labels: Tensor
    resolution: int
    eps: float = 1e-6

    def __len__(self) -> int:
        return int(self.labels.numel())

    def logits(self, classifier: nn.Module, p: Tensor | float) -> Tensor:
        """(N, K) logits ``classifier(gem(x, p))`` in label order; differentiable in p."""
        stacked = torch.cat([classifier(gem(maps, p, self.eps)) for maps, _ in self.groups])
        order = torch.cat([positions for _, positions in self.groups])
        out = torch.empty_like(stacked)
        out[order] = stacked  # back to the order of the requested indices
        return out

    def cross_entropy(self, classifier: nn.Module, p: Tensor | float) -> Tensor:
        """Mean cross-entropy of :meth:`logits` against ``labels`` (a 0-dim tensor)."""
        return nn.functional.cross_entropy(self.logits(classifier, p), self.labels)


def extract_feature_maps(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolution: int,
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 32,
    autocast_dtype: torch.dtype | None = None,
) -> FeatureMaps:
    """Run the trunk once on each image resized to longest side ``resolution``.

    Images of identical prepared shape are batched (up to ``batch_size``); the model must
    be in eval mode (BN running statistics) and already on ``device``. With
    ``autocast_dtype`` (e.g. ``torch.bfloat16``) the trunk runs under autocast and the maps
    are kept in that dtype; pooling is always float32.

    Returns:
        :class:`FeatureMaps` holding ``len(indices)`` maps (C, h, w) on ``device``.
    """
    device = torch.device(device)
    chosen = _check_indices(images, indices)
    buckets: dict[tuple[int, ...], list[tuple[int, Tensor]]] = {}
    groups: list[tuple[Tensor, Tensor]] = []

    def flush(shape: tuple[int, ...]) -> None:
        pending = buckets.pop(shape)
        batch = torch.stack([tensor for _, tensor in pending]).to(device)
        with torch.no_grad(), autocast(device, autocast_dtype):
            maps = model.forward_features(batch)
        positions = torch.tensor([position for position, _ in pending], device=device)
        groups.append((maps, positions))

    for position, index in enumerate(chosen):
        tensor = prepare(images.load(index), resolution)
        shape = tuple(tensor.shape)
        buckets.setdefault(shape, []).append((position, tensor))
        if len(buckets[shape]) >= batch_size:
            flush(shape)
    for shape in list(buckets):
        flush(shape)
    labels = torch.tensor([images.labels[index] for index in chosen], device=device)
    return FeatureMaps(groups, labels, resolution, eps=model.pool.eps)


@dataclass(frozen=True)
class CalibrationRow:
    """Top-1 accuracy (fraction in [0, 1]) at test resolution s and pooling exponent p."""

    resolution: int
    exponent: float
    top1: float


@dataclass
class CalibrationResult:
    """The outcome of a calibration.

    Attributes:
        table: one row per evaluated (s, p).
        best: p* per resolution s: the exponent of highest top-1 at that s; ties go to the
            smallest p (the one closest to average pooling).
        best_resolution: s* = the s whose top-1 at p* is highest; ties go to the smallest s
            (the cheapest).
        method: ``"grid"`` (cross-validation) or ``"learned"`` (gradient descent on p).
        num_images: number of images scored.
    """

    table: list[CalibrationRow]
    best: dict[int, float]
    best_resolution: int
    method: str
    num_images: int = 0
    metadata: dict[str, str | int | float] = field(default_factory=dict)

    @classmethod
    def from_table(
        cls, table: list[CalibrationRow], *, method: str, num_images: int
    ) -> CalibrationResult:
        """Pick p* per s and s* from ``table`` with the tie rules above."""
        if not table:
            raise MultiGrainError("empty calibration table: give at least one s and one p")
        winners: dict[int, CalibrationRow] = {}
        for row in sorted(table, key=lambda r: (r.resolution, r.exponent)):
            current = winners.get(row.resolution)
            if current is None or row.top1 > current.top1:
                winners[row.resolution] = row
        best_row = max(sorted(winners.values(), key=lambda r: r.resolution), key=lambda r: r.top1)
        return cls(
            table=list(table),
            best={s: row.exponent for s, row in winners.items()},
            best_resolution=best_row.resolution,
            method=method,
            num_images=num_images,
        )

    def top1(self, resolution: int, exponent: float) -> float:
        """The table's top-1 at (s, p); MultiGrainError if that pair was not evaluated."""
        for row in self.table:
            if row.resolution == resolution and math.isclose(row.exponent, exponent):
                return row.top1
        raise MultiGrainError(f"(s={resolution}, p={exponent}) is not in the calibration table")

    def to_json(self) -> str:
        """A JSON document; JSON object keys are strings, so ``best`` is keyed by str(s)."""
        payload = asdict(self)
        payload["best"] = {str(s): p for s, p in self.best.items()}
        return json.dumps(payload, indent=2)

    @classmethod
    def from_json(cls, text: str) -> CalibrationResult:
        """Inverse of :meth:`to_json`."""
        try:
            payload: dict[str, Any] = json.loads(text)
            return cls(
                table=[
                    CalibrationRow(int(r["resolution"]), float(r["exponent"]), float(r["top1"]))
                    for r in payload["table"]
                ],
                best={int(s): float(p) for s, p in payload["best"].items()},
                best_resolution=int(payload["best_resolution"]),
                method=str(payload["method"]),
                num_images=int(payload.get("num_images", 0)),
                metadata=dict(payload.get("metadata", {})),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MultiGrainError(
                f"not a calibration result ({error!r}): expected the JSON written by "
                "CalibrationResult.save"
            ) from error

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return atomic_write_bytes(Path(path), self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationResult:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise MultiGrainError(f"calibration file {path} does not exist: run a calibration")
        return cls.from_json(path.read_text(encoding="utf-8"))


def grid_search(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolutions: Sequence[int],
    exponents: Sequence[float],
    indices: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> CalibrationResult:
    """Top-1 for every (s, p) in ``resolutions x exponents``; p* per s is the arg-max.

    The trunk runs once per image and s (see :func:`extract_feature_maps`); each exponent
    only re-pools the cached maps. The model is put in eval mode and moved to ``device``
    (its train/eval mode is restored afterwards).
    """
    if not resolutions or not exponents:
        raise MultiGrainError("grid search needs at least one resolution and one exponent")
    for p in exponents:
        if not p > 0:
            raise MultiGrainError(f"pooling exponents must be > 0, got {p}")
    table: list[CalibrationRow] = []
    num_images = 0
    for s, maps in _maps_per_resolution(
        model, images, resolutions, indices, device, autocast_dtype
    ):
        num_images = len(maps)
        with torch.no_grad():
            for p in exponents:
                top1 = top_k_accuracy(maps.logits(model.classifier, float(p)), maps.labels)
                table.append(CalibrationRow(int(s), float(p), top1))
                logger.info("s=%d p=%g top-1 %.4f", s, p, top1)
        del maps  # free this resolution's maps before the next are computed
    return CalibrationResult.from_table(table, method="grid", num_images=num_images)


def learn_exponent(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolution: int,
    indices: Sequence[int] | None = None,
    initial_p: float | None = None,
    steps: int = 100,
    lr: float = 0.1,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> float:
    """Learn p alone at resolution s by minimising the cross-entropy (SPEC §4).

    The trunk and classifier are frozen (eval mode), so the feature maps are computed once
    and full-batch Adam runs on ``log p`` (which keeps p > 0) over the cached maps:
    ``min_p CE(W gem(x, p) + b, y)``. Returns the p of lowest loss seen (initial included).
    ``initial_p`` defaults to the model's current exponent. The model is moved to
    ``device``; its train/eval mode is restored afterwards.
    """
    with _evaluating(model, device):
        maps = extract_feature_maps(
            model,
            images,
            resolution=resolution,
            indices=indices,
            device=device,
            autocast_dtype=autocast_dtype,
        )
        return fit_exponent(
            maps, model.classifier, initial_p=_start(model, initial_p), steps=steps, lr=lr
        )


def fit_exponent(
    maps: FeatureMaps, classifier: nn.Module, *, initial_p: float, steps: int = 100, lr: float = 0.1
) -> float:
    """argmin_p CE(classifier(gem(maps, p)), labels) by Adam on log p; the classifier is frozen.

    Returns the exponent of lowest cross-entropy seen during the ``steps`` updates (the
    initial one included), so the loss never goes up.
    """
    if steps < 1 or lr <= 0:
        raise MultiGrainError(f"steps must be >= 1 and lr > 0, got {steps} and {lr}")
    if not initial_p > 0:
        raise MultiGrainError(f"initial_p must be > 0, got {initial_p}")
    frozen = [(param, param.requires_grad) for param in classifier.parameters()]
    for param, _ in frozen:
        param.requires_grad_(False)
    try:
        log_p = torch.tensor(math.log(initial_p), device=maps.labels.device, requires_grad=True)
        optimizer = torch.optim.Adam([log_p], lr=lr)
        best_p, best_loss, first_loss = initial_p, math.inf, math.nan
        for step in range(steps + 1):
            loss = maps.cross_entropy(classifier, log_p.exp())
            value = float(loss.detach())
            if step == 0:
                first_loss = value
            if value < best_loss:
                best_p, best_loss = float(log_p.detach().exp()), value
            if step == steps:
                break
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        for param, requires_grad in frozen:
            param.requires_grad_(requires_grad)
    logger.info(
        "s=%d: p %.3g -> %.3g, cross-entropy %.4f -> %.4f",
        maps.resolution,
        initial_p,
        best_p,
        first_loss,
        best_loss,
    )
    return best_p


def learn_exponents(
    model: MultiGrain,
    images: LabelledImages,
    *,
    resolutions: Sequence[int],
    indices: Sequence[int] | None = None,
    initial_p: float | None = None,
    steps: int = 100,
    lr: float = 0.1,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> CalibrationResult:
    """:func:`learn_exponent` at each s; the table holds the top-1 at the learned p per s."""
    table: list[CalibrationRow] = []
    num_images = 0
    start = _start(model, initial_p)
    for s, maps in _maps_per_resolution(
        model, images, resolutions, indices, device, autocast_dtype
    ):
        num_images = len(maps)
        p = fit_exponent(maps, model.classifier, initial_p=start, steps=steps, lr=lr)
        with torch.no_grad():
            top1 = top_k_accuracy(maps.logits(model.classifier, p), maps.labels)
        table.append(CalibrationRow(int(s), p, top1))
        del maps  # free this resolution's maps before the next are computed
    return CalibrationResult.from_table(table, method="learned", num_images=num_images)


def _maps_per_resolution(
    model: MultiGrain,
    images: LabelledImages,
    resolutions: Sequence[int],
    indices: Sequence[int] | None,
    device: str | torch.device,
    autocast_dtype: torch.dtype | None,
) -> Iterator[tuple[int, FeatureMaps]]:
    """(s, feature maps at s) for each s, model in eval mode. Callers drop each maps object
    before asking for the next, so one resolution is held at a time."""
    with _evaluating(model, device):
        for s in resolutions:
            yield s, extract_feature_maps(
                model, images, resolution=s, indices=indices, device=device,
                autocast_dtype=autocast_dtype,
            )  # fmt: skip


def plot_calibration(result: CalibrationResult, path: str | os.PathLike[str]) -> Path:
    """PNG of top-1 (%) against p, one line per s, p* circled (the paper's figure)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)  # no pyplot: no global state, no display needed
    axes = figure.add_subplot()
    for s in sorted({row.resolution for row in result.table}):
        rows = sorted((r for r in result.table if r.resolution == s), key=lambda r: r.exponent)
        (line,) = axes.plot(
            [r.exponent for r in rows], [100 * r.top1 for r in rows], marker=".", label=f"s={s}"
        )
        best = result.best[s]
        axes.plot(
            [best],
            [100 * result.top1(s, best)],
            marker="o",
            markersize=10,
            fillstyle="none",
            color=line.get_color(),
        )
    axes.set_xlabel("pooling exponent p")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_title(f"calibration ({result.method}), s*={result.best_resolution}")
    axes.legend()
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(Path(path), buffer.getvalue())


class _evaluating:
    """Context: model in eval mode on ``device``; the previous train/eval mode is restored."""

    def __init__(self, model: nn.Module, device: str | torch.device) -> None:
        self.model, self.device, self.was_training = model, device, model.training

    def __enter__(self) -> None:
        self.model.to(self.device).eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _start(model: MultiGrain, initial_p: float | None) -> float:
    return float(model.pool.p) if initial_p is None else float(initial_p)


def _check_indices(images: LabelledImages, indices: Sequence[int] | None) -> list[int]:
    chosen = list(range(len(images))) if indices is None else [int(i) for i in indices]
    if not chosen:
        raise MultiGrainError("no images to calibrate on: pass a non-empty `indices`")
    bad = [i for i in chosen if not 0 <= i < len(images)]
    if bad:
        raise MultiGrainError(f"image indices {bad[:5]} out of range [0, {len(images)})")
    return chosen
