"""Choose a bundle's settings on the validation copy set, and trace training curves.

Everything here looks at the *validation* set only (a whole photo package that training
never saw); the test set is scored once, by ``benchmarks/copy_heldout.py``, after the
choices are made.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from multigrain.data.corpus.heldout import CopySet
from multigrain.data.listing import list_images
from multigrain.evaluation.heldout.scoring import (
    CopyScores,
    QueryOptions,
    model_similarity,
    score_similarities,
)
from multigrain.inference.bundle import BundleSettings, ScoreThreshold
from multigrain.inference.embed import embed_in_memory
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import resolve_inference_precision
from multigrain.search.whitening import Whitening, WhiteningInput, fit_whitening

logger = logging.getLogger(__name__)

WHITENING_DIM = 256
WHITENING_SHRINKAGE = 0.1
#: An option (whitening, flip) is kept only if it lifts validation mAP by at least this.
MIN_GAIN = 0.005


@dataclass
class Selection:
    """What :func:`select_settings` tried and chose, with every validation figure."""

    grid: dict[str, float] = field(default_factory=dict)  # "s=224,p=3" -> mAP
    resolution: int = 0
    exponent: float = 0.0
    plain: CopyScores | None = None
    whitened: CopyScores | None = None
    use_whitening: bool = False
    flipped: CopyScores | None = None
    use_flip: bool = False
    regional: CopyScores | None = None
    final: CopyScores | None = None

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        for name in ("plain", "whitened", "flipped", "regional", "final"):
            value = getattr(self, name)
            if value is not None:
                out[name]["family_mean"] = value.family_mean
        return out


def fit_bundle_whitening(
    model: MultiGrain,
    images: Sequence[Path],
    *,
    resolution: int,
    device: torch.device,
    description: str,
) -> Whitening:
    """PCA whitening of the GeM embeddings e of ``images`` at s and the model's p, seen as
    l2n([e, 1]) (:class:`multigrain.search.whitening.WhiteningInput`): ``embed`` hands the
    whitening the raw embedding, and the classifier folds through it exactly."""
    descriptors, _, failures = embed_in_memory(
        model, list(images), resolution=resolution, device=device, normalise=False,
        precision=resolve_inference_precision("auto", device, float_only=True),
    )  # fmt: skip
    if failures:
        raise MultiGrainError(f"could not read {failures[0].path}: {failures[0].reason}")
    dim = min(WHITENING_DIM, len(descriptors) - 1, descriptors.shape[1])
    return fit_whitening(
        descriptors,
        dim=dim,
        shrinkage=WHITENING_SHRINKAGE,
        input=WhiteningInput.UNIT_WITH_ONE,
        fitted_on={
            "images": description,
            "count": len(descriptors),
            "resolution": resolution,
            "exponent": float(model.pool.p),
            "input": "l2n([embedding, 1])",
        },
    )


def select_settings(
    model: MultiGrain,
    validation: CopySet,
    whitening_images: Sequence[Path],
    *,
    resolutions: Sequence[int],
    exponents: Sequence[float],
    device: torch.device,
    whitening_description: str,
    report: Callable[[str], None] | None = None,
) -> tuple[Selection, Whitening | None]:
    """Grid s x p by validation mAP, then whitening and flip each kept only where they pay.

    ``report`` receives one line per measurement (the CLI prints them as progress).
    """
    say = report or (lambda line: logger.info("%s", line))
    selection = Selection()
    best: tuple[float, int, float] | None = None
    for resolution in resolutions:
        for exponent in exponents:
            model.pool.set_p(exponent)
            scores = score_similarities(
                "grid",
                model_similarity(model, validation, resolution=resolution, device=device),
                validation,
            )
            selection.grid[f"s={resolution},p={exponent:g}"] = scores.map
            say(f"s={resolution} p={exponent:g}: validation mAP {scores.map:.3f}")
            if best is None or scores.map > best[0]:
                best = (scores.map, resolution, exponent)
    if best is None:
        raise MultiGrainError("select_settings needs at least one resolution and exponent")
    _, selection.resolution, selection.exponent = best
    model.pool.set_p(selection.exponent)
    s = selection.resolution

    def score(name: str, whitening: Whitening | None, options: QueryOptions) -> CopyScores:
        similarity = model_similarity(
            model, validation, resolution=s, device=device, whitening=whitening, options=options
        )
        return score_similarities(name, similarity, validation)

    selection.plain = score("plain", None, QueryOptions())
    say(f"chosen s={s}, p*={selection.exponent:g}; fitting the whitening ...")
    whitening = fit_bundle_whitening(
        model, whitening_images, resolution=s, device=device, description=whitening_description
    )
    selection.whitened = score("whitened", whitening, QueryOptions())
    selection.use_whitening = selection.whitened.map >= selection.plain.map + MIN_GAIN
    chosen = whitening if selection.use_whitening else None
    base = selection.whitened if selection.use_whitening else selection.plain
    selection.flipped = score("flip", chosen, QueryOptions(flip=True))
    selection.use_flip = selection.flipped.map >= base.map + MIN_GAIN
    say(
        f"validation mAP: plain {selection.plain.map:.3f}, whitened "
        f"{selection.whitened.map:.3f}, + mirrored query {selection.flipped.map:.3f}"
    )
    selection.regional = score(
        "regions", chosen, QueryOptions(flip=selection.use_flip, regions=True)
    )
    selection.final = selection.flipped if selection.use_flip else base
    return selection, chosen


def bundle_settings(
    model: MultiGrain,
    classes: list[str],
    selection: Selection,
    *,
    notes: dict[str, object],
    validation_name: str,
) -> BundleSettings:
    """The bundle's settings: the chosen s, p*, flip, and the 90 %-precision threshold."""
    final = selection.final
    assert final is not None
    threshold = None
    if np.isfinite(final.threshold_at_90):
        threshold = ScoreThreshold(
            score=float(final.threshold_at_90),
            precision=0.9,
            recall=float(final.recall_at_90),
            measured_on=(
                f"{validation_name}: {final.num_queries} held-out copies against their "
                "originals (every query x original pair)"
            ),
            whitened=selection.use_whitening,
        )
    architecture = dict(model.architecture())
    architecture["pooling_exponent"] = float(selection.exponent)
    return BundleSettings(
        resolution=selection.resolution,
        exponent=float(selection.exponent),
        classes=list(classes),
        architecture=architecture,
        threshold=threshold,
        query_flip=selection.use_flip,
        notes=dict(notes),
    )


@dataclass(frozen=True)
class CurvePoint:
    step: int
    map: float
    micro_ap: float
    family_mean: float


def snapshot_steps(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``snapshots/step-NNNNNN.pt`` under a training folder, by step."""
    found = []
    for path in sorted((folder / "snapshots").glob("step-*.pt")):
        match = re.fullmatch(r"step-(\d+)", path.stem)
        if match:
            found.append((int(match[1]), path))
    return found


def training_curve(
    train_folder: Path,
    validation: CopySet,
    *,
    resolution: int,
    device: torch.device,
    cache: Path | None = None,
    report: Callable[[str], None] | None = None,
) -> list[CurvePoint]:
    """Validation copy mAP of every snapshot (at s and the training p; no whitening).

    ``cache`` (a JSON file) keeps points already measured, so re-running after more
    snapshots only scores the new ones.
    """
    from multigrain.models.weights import load_model

    known: dict[int, CurvePoint] = {}
    if cache is not None and cache.is_file():
        for item in json.loads(cache.read_text()):
            known[int(item["step"])] = CurvePoint(**item)
    for step, path in snapshot_steps(train_folder):
        if step in known:
            continue
        model = load_model(path).model.to(device).eval()
        scores = score_similarities(
            f"step {step}",
            model_similarity(model, validation, resolution=resolution, device=device),
            validation,
        )
        known[step] = CurvePoint(step, scores.map, scores.micro_ap, scores.family_mean)
        (report or logger.info)(f"step {step}: validation mAP {scores.map:.3f}")
        if cache is not None:
            from multigrain.runtime.atomic import atomic_write_text

            points = [asdict(known[k]) for k in sorted(known)]
            atomic_write_text(cache, json.dumps(points, indent=1) + "\n")
    return [known[k] for k in sorted(known)]


def training_images(corpus: Path) -> list[Path]:
    """The corpus's training photos, labelled and unlabelled (the whitening fit set)."""
    paths = list_images(corpus / "train")
    if (corpus / "train_unlabelled").is_dir():
        paths += list_images(corpus / "train_unlabelled")
    return paths
