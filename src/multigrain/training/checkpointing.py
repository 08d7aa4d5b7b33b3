"""Training checkpoints: when one is written, what it holds, and resuming from it exactly.

A checkpoint holds the model, loss and optimiser states, the step, torch's RNG state and the
settings of the run; a run resumed from it continues as the uninterrupted run would have,
provided only the settings in :data:`RESUMABLE_CHANGES` differ.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from multigrain.models.checkpoint import load_checkpoint, save_checkpoint
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.config import TrainConfig
from multigrain.training.run_folder import SNAPSHOTS_NAME
from multigrain.training.setup import TrainingParts

logger = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption: they change how long or how
# verbosely it runs, not the trajectory of the weights.
RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "output_dir",
    "progress",
    "num_workers",
    "keep_every_steps",
    "log_every",
    "checkpoint_every",
    "checkpoint_every_steps",
    "device",
}


def should_checkpoint(config: TrainConfig, step: int, steps_per_epoch: int) -> bool:
    """Whether the regular schedule (every N epochs or every N steps) writes after `step`."""
    if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        return True
    end_of_epoch = step % steps_per_epoch == 0
    return end_of_epoch and (step // steps_per_epoch) % max(config.checkpoint_every, 1) == 0


def write_checkpoint(
    path: Path,
    *,
    config: TrainConfig,
    parts: TrainingParts,
    step: int,
    classes: list[str],
    steps_per_epoch: int,
) -> None:
    """Write the state after `step` optimiser steps to `path` (atomically)."""
    model = parts.model
    state: dict[str, Any] = {
        "model_state": model.state_dict(),
        "architecture": model.architecture(),
        "classes": list(classes),
        "criterion_state": parts.criterion.state_dict(),
        "optimizer_state": parts.optimizer.state_dict(),
        "step": step,
        "sampler_state": _sampler_position(step, steps_per_epoch, config.grad_accum_steps),
        "rng_state": {"torch": torch.get_rng_state()},
        "config": config.to_dict(),
    }
    if parts.scaler is not None:
        state["scaler_state"] = parts.scaler.state_dict()
    save_checkpoint(path, state)
    logger.info("step %d: checkpoint written to %s", step, path)


def restore(path: Path, *, config: TrainConfig, parts: TrainingParts, device: torch.device) -> int:
    """Load the checkpoint at `path` into `parts` and torch's RNG; returns its step.

    Raises:
        MultiGrainError: the checkpoint was written with settings that change the run.
    """
    state = load_checkpoint(path, map_location=str(device))
    _check_resumable(state.get("config", {}), config, path)
    parts.model.load_state_dict(state["model_state"])
    parts.criterion.load_state_dict(state["criterion_state"])
    parts.optimizer.load_state_dict(state["optimizer_state"])
    if parts.scaler is not None and "scaler_state" in state:
        parts.scaler.load_state_dict(state["scaler_state"])
    torch.set_rng_state(state["rng_state"]["torch"])
    step = int(state["step"])
    logger.info("resumed from %s at step %d", path, step)
    return step


def keep_snapshot(checkpoint_path: Path, step: int) -> None:
    """Hard-link (or copy) the checkpoint just written to snapshots/step-NNNNNN.pt."""
    folder = checkpoint_path.parent / SNAPSHOTS_NAME
    folder.mkdir(exist_ok=True)
    target = folder / f"step-{step:06d}.pt"
    target.unlink(missing_ok=True)
    try:
        os.link(checkpoint_path, target)
    except OSError:
        shutil.copy2(checkpoint_path, target)


def _sampler_position(step: int, steps_per_epoch: int, grad_accum_steps: int) -> dict[str, int]:
    """Where the sampler stands after `step` optimiser steps (recorded for readers)."""
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    return {"epoch": epoch, "start_batch": step_in_epoch * grad_accum_steps}


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    current = config.to_dict()
    changed = sorted(
        key
        for key in current
        if key not in RESUMABLE_CHANGES and key in saved and saved[key] != current[key]
    )
    if changed:
        details = ", ".join(f"{key}: {saved[key]!r} -> {current[key]!r}" for key in changed)
        raise MultiGrainError(
            f"cannot resume from {path}: settings differ from the run that wrote it ({details}); "
            "use the same settings or a new --output-dir"
        )
