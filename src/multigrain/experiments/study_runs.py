"""One run of the study: train (resumable), read its learning curve, score it, save it.

The stages, each one resumable: training writes a checkpoint every ``steps /
curve_points`` steps and keeps a snapshot of it; each snapshot's held-out figures go to
``curve.json`` and the snapshot is then deleted; the final checkpoint is scored on the
test images (the reference variant also on the RQ4 grid and with whitening); last,
``result.json`` marks the run finished, and a later call returns it without work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from multigrain.data.sources import DatasetKind
from multigrain.experiments.results import (
    RESULT_NAME,
    SCORES_NAME,
    CurvePoint,
    RunResult,
    RunScores,
)
from multigrain.experiments.study_scores import (
    correct,
    embed,
    reciprocal_rank,
    study_trunk,
    whitened_scores,
)
from multigrain.experiments.study_sets import StudySets
from multigrain.experiments.variants import Scale, Variant
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import model_from_checkpoint
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.config import Precision, Schedule, TrainConfig
from multigrain.training.loop import train
from multigrain.training.run_folder import CHECKPOINT_NAME, SNAPSHOTS_NAME

logger = logging.getLogger(__name__)

CURVE_NAME = "curve.json"
TIMING_NAME = "train_seconds.txt"
SCORE_TIMING_NAME = "score_seconds.txt"


@contextlib.contextmanager
def seconds_added_to(path: Path) -> Iterator[None]:
    """Add the seconds spent within to the total kept in `path`, also when the work is
    interrupted, so that a stage resumed over several sessions reports its whole cost (a
    kill that Python cannot catch loses the seconds since the last write)."""
    spent = float(path.read_text()) if path.exists() else 0.0
    start = time.perf_counter()
    try:
        yield
    finally:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, f"{spent + time.perf_counter() - start:.1f}")


def train_config(
    variant: Variant, seed: int, scale: Scale, sets: StudySets, folder: Path
) -> TrainConfig:
    """The run's training settings: every variant the same but for its one setting."""
    every = max(1, scale.steps // scale.curve_points)
    # warm-up in steps, whatever an epoch is: with m = 1 an epoch has m times more steps
    steps_per_epoch = (scale.train_per_class * 10) // (scale.batch_size // variant.num_repeats)
    return TrainConfig(
        dataset=DatasetKind.FOLDER,
        data_root=str(sets.train_folder),
        trunk="resnet18",
        small_input=True,  # CIFAR-style stem: the map shrinks by 8 (7x7 at 56 px)
        input_size=scale.input_size,
        batch_size=scale.batch_size,
        num_repeats=variant.num_repeats,
        classification_weight=variant.classification_weight,
        pooling_exponent=variant.pooling_exponent,
        max_steps=scale.steps,
        # the paper's 0.2 per 512 images scaled to the batch, with a warm-up (without one
        # the small-input stem did not learn in the earlier study)
        lr=scale.lr,
        warmup_epochs=scale.warmup_steps / steps_per_epoch,
        **_schedule(scale, steps_per_epoch),
        weight_decay=5e-4,
        precision=Precision.AUTO,
        seed=seed,
        output_dir=str(folder),
        checkpoint_every=10**6,  # only the snapshots' steps and the end
        checkpoint_every_steps=every,
        keep_every_steps=every,
        log_every=5,
        progress=False,
    )


#: Where the paper's schedule multiplies the learning rate by 0.1: its epochs 30, 60 and 90
#: of 120, as shares of the steps.
PAPER_MILESTONES = (0.25, 0.5, 0.75)


def _schedule(scale: Scale, steps_per_epoch: int) -> dict[str, Any]:
    """The schedule's TrainConfig settings; milestones in epochs, which are m times longer
    with m = 1 than with m = 3, so that every variant drops at the same step."""
    schedule = Schedule(scale.schedule)
    if schedule is Schedule.COSINE:
        return {"schedule": schedule}
    milestones = [share * scale.steps / steps_per_epoch for share in PAPER_MILESTONES]
    return {"schedule": schedule, "lr_steps": milestones, "lr_gamma": 0.1}


def _load(path: Path) -> MultiGrain:
    model, _ = model_from_checkpoint(path)
    return model.eval()


def _curve(folder: Path, sets: StudySets, scale: Scale) -> list[CurvePoint]:
    """Score every snapshot not yet in curve.json, then delete it (it is 90 MB)."""
    path = folder / CURVE_NAME
    points = [CurvePoint(**p) for p in json.loads(path.read_text())] if path.exists() else []
    done = {point.step for point in points}
    images = sets.test.first(scale.curve_images)
    for snapshot in sorted((folder / SNAPSHOTS_NAME).glob("step-*.pt")):
        step = int(snapshot.stem.split("-")[1])
        if step not in done:
            model = _load(snapshot)
            p = float(model.pool.p)
            found = embed(model, images, resolution=scale.input_size, exponents=[p])
            points.append(
                CurvePoint(
                    step,
                    float(correct(model, found.clean[0], found.labels).mean()),
                    float(reciprocal_rank(found.augmented[0], found.clean[0]).mean()),
                )
            )
            points.sort(key=lambda point: point.step)
            atomic_write_text(path, json.dumps([asdict(point) for point in points]))
        snapshot.unlink()
    return points


def _score(
    model: MultiGrain, sets: StudySets, scale: Scale, *, reference: bool
) -> tuple[RunScores, float | None]:
    p = float(model.pool.p)
    trunk = study_trunk(model)
    test = embed(model, sets.test, resolution=scale.input_size, exponents=[p], trunk=trunk)
    scores = RunScores(
        correct=correct(model, test.clean[0], test.labels),
        reciprocal_rank=reciprocal_rank(test.augmented[0], test.clean[0]),
    )
    if not reference:
        return scores, None
    fit = embed(
        model, sets.whitening, resolution=scale.input_size, exponents=[p], augmented=False,
        trunk=trunk,
    )  # fmt: skip
    whitened = whitened_scores(model, fit.clean[0], test, 0)
    scores.whitened_correct = whitened.correct
    scores.whitened_reciprocal_rank = whitened.reciprocal_rank
    grid = sets.test.first(scale.grid_images)
    top1_rows, rank_rows = [], []
    for resolution in scale.resolutions:
        found = embed(model, grid, resolution=resolution, exponents=scale.exponents, trunk=trunk)
        top1_rows.append([correct(model, e, found.labels) for e in found.clean])
        rank_rows.append(
            [reciprocal_rank(q, d) for q, d in zip(found.augmented, found.clean, strict=True)]
        )
    scores.grid_correct = np.array(top1_rows)
    scores.grid_reciprocal_rank = np.array(rank_rows)
    return scores, whitened.same_prediction


def run_one(
    variant: Variant, seed: int, scale: Scale, sets: StudySets, folder: Path, *, reference: bool
) -> tuple[RunResult, RunScores]:
    """Train and measure `variant` with `seed` in `folder`, or read its finished result."""
    if (folder / RESULT_NAME).exists():
        finished = RunResult.load(folder)
        if (finished.steps, finished.schedule) != (scale.steps, scale.schedule):
            raise MultiGrainError(
                f"{folder}: finished with {finished.steps} training steps on a "
                f"{finished.schedule} schedule, this study runs {scale.steps} on a "
                f"{scale.schedule} one; report it with its own settings or use a new "
                "--output-dir"
            )
        return finished, RunScores.load(folder / SCORES_NAME)
    config = train_config(variant, seed, scale, sets, folder)
    with seconds_added_to(folder / TIMING_NAME):
        trained = train(config, resume=True)
    with seconds_added_to(folder / SCORE_TIMING_NAME):  # the curve resumes point by point
        curve = _curve(folder, sets, scale)
        model = _load(folder / CHECKPOINT_NAME)
        scores, same = _score(model, sets, scale, reference=reference)
        scores.save(folder / SCORES_NAME)
    result = RunResult(
        variant=variant.slug,
        seed=seed,
        steps=trained.steps,
        schedule=scale.schedule,
        train_seconds=float((folder / TIMING_NAME).read_text()),
        top1=float(scores.correct.mean()),
        copy_map=float(scores.reciprocal_rank.mean()),
        curve=curve,
        same_prediction_whitened=same,
        score_seconds=float((folder / SCORE_TIMING_NAME).read_text()),
    )
    result.save(folder)
    logger.info(
        "%s seed %d: top-1 %.3f, copy mAP %.3f", variant.slug, seed, result.top1, result.copy_map
    )
    return result, scores
