"""The training loop: repeated-augmentation batches, the joint loss, DDP, exact resume.

Run it in one process (`multigrain train ...`) or many (`torchrun --nproc-per-node N -m
multigrain train ...`). Determinism: the model is initialised from `seed`; every training
sample's augmentation is seeded by the sampler from (seed, epoch, position); the negative
sampler's generator is re-seeded from (seed, step); the margin loss sums its gradients in a
fixed order (:mod:`~multigrain.losses.rows`); so on CPU, at any thread count, a run resumed
from any checkpoint continues bit for bit as the uninterrupted run would have.

The pieces: :mod:`~multigrain.training.setup` (data, model, loss, optimiser),
:mod:`~multigrain.training.step` (one optimiser step),
:mod:`~multigrain.training.checkpointing` (writing and resuming),
:mod:`~multigrain.training.run_folder` (refusing another run's folder, the resumed log) and
:mod:`~multigrain.training.interrupt` (SIGINT/SIGTERM: finish the step, checkpoint, stop).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from multigrain.data import make_training_loader
from multigrain.runtime.distributed import (
    DistributedContext,
    barrier,
    broadcast_from_main,
    init_distributed,
    max_over_ranks,
)
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.checkpointing import (
    keep_snapshot,
    restore,
    should_checkpoint,
    write_checkpoint,
)
from multigrain.training.config import TrainConfig
from multigrain.training.interrupt import StopSignals, TrainingInterrupted, signal_name
from multigrain.training.optim import learning_rate_at, set_learning_rate
from multigrain.training.run_folder import (
    CHECKPOINT_NAME,
    LOG_NAME,
    check_output_dir,
    remove_run,
    trim_log,
)
from multigrain.training.setup import (
    augmented_dataset,
    build_parts,
    prepare_data,
    wrap_for_processes,
)
from multigrain.training.step import optimizer_step

logger = logging.getLogger(__name__)


@dataclass
class StepLog:
    step: int
    epoch: float
    loss: float
    classification: float
    margin: float
    beta: float
    lr: float
    images_per_second: float


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path
    steps: int
    history: list[StepLog] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.history[-1].loss if self.history else float("nan")


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train a MultiGrain model as `config` says; returns the step history and checkpoint path.

    `resume` continues the run in ``config.output_dir`` from its checkpoint; `overwrite`
    replaces a run found there (without either, such a folder is refused and left as it is).

    Raises:
        MultiGrainError: bad settings, data, or an output folder holding another run.
        TrainingInterrupted: SIGINT or SIGTERM arrived; the step under way was finished and
            a checkpoint written (see :mod:`~multigrain.training.interrupt`).
    """
    context = init_distributed(config.device)
    config.validate(context.world_size)
    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME
    _claim_output_dir(output_dir, context, resume=resume, overwrite=overwrite)
    data = prepare_data(config, context)
    steps_per_epoch, total_steps = data.steps_per_epoch, data.total_steps
    device = context.device
    parts = build_parts(config, device, num_classes=len(data.images.classes))

    step = 0
    if resume and checkpoint_path.exists():
        step = restore(checkpoint_path, config=config, parts=parts, device=device)
    elif resume:
        logger.info("no checkpoint at %s: starting from scratch", checkpoint_path)
    if resume and context.is_main:
        # lines of steps after the checkpoint were written by the run that was killed
        trim_log(output_dir / LOG_NAME, step)
    if overwrite and context.is_main:
        remove_run(output_dir)  # only now that the new run is set up: a failed start keeps it
    wrapped = wrap_for_processes(parts.model, config, context)
    dataset = augmented_dataset(config, data.images)

    def save(step: int) -> None:
        if context.is_main:
            write_checkpoint(
                checkpoint_path,
                config=config,
                parts=parts,
                step=step,
                classes=data.images.classes,
                steps_per_epoch=steps_per_epoch,
            )

    result = TrainResult(output_dir=output_dir, checkpoint=checkpoint_path, steps=step)
    progress = tqdm(
        total=total_steps,
        initial=step,
        desc="train",
        unit="step",
        dynamic_ncols=True,
        disable=not (config.progress and context.is_main),
    )
    log_file = _open_log(output_dir, context)
    parts.model.train()
    timer_start, timer_images = time.perf_counter(), 0
    signals = StopSignals(abort_on_second_interrupt=not context.is_distributed)
    signals.install()
    try:
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            data.sampler.set_epoch(epoch, start_batch=step_in_epoch * config.grad_accum_steps)
            batches = iter(
                make_training_loader(
                    dataset,
                    data.sampler,
                    num_workers=config.num_workers,
                    pin_memory=device.type == "cuda",
                )
            )
            for _ in range(step_in_epoch, steps_per_epoch):
                if step >= total_steps:
                    break
                rate = learning_rate_at(
                    step,
                    base_lr=config.lr,
                    steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps,
                    schedule=config.schedule,
                    lr_steps=config.lr_steps,
                    gamma=config.lr_gamma,
                    warmup_epochs=config.warmup_epochs,
                )
                set_learning_rate(parts.optimizer, rate)
                terms = optimizer_step(
                    config, context, batches, step=step, wrapped=wrapped, parts=parts
                )
                step += 1
                timer_images += config.batch_size
                if step % config.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - timer_start
                    entry = StepLog(
                        step=step,
                        epoch=step / steps_per_epoch,
                        loss=terms.total.item(),
                        classification=terms.classification.item(),
                        margin=terms.margin.item(),
                        beta=parts.criterion.margin.beta.item(),
                        lr=rate,
                        images_per_second=timer_images / max(elapsed, 1e-9),
                    )
                    timer_start, timer_images = time.perf_counter(), 0
                    result.history.append(entry)
                    if log_file is not None:
                        log_file.write(json.dumps(entry.__dict__) + "\n")
                        log_file.flush()
                    progress.set_postfix(
                        loss=f"{entry.loss:.3f}",
                        beta=f"{entry.beta:.3f}",
                        img_s=f"{entry.images_per_second:.1f}",
                    )
                progress.update(1)
                keep = config.keep_every_steps is not None and step % config.keep_every_steps == 0
                saved = keep or should_checkpoint(config, step, steps_per_epoch)
                if saved:
                    save(step)
                if keep and context.is_main:
                    keep_snapshot(checkpoint_path, step)
                # every rank asks, so that all of them stop after the same step
                stop_signal = max_over_ranks(signals.received or 0, device)
                if stop_signal and step < total_steps:
                    if not saved:
                        save(step)
                    barrier()  # the other ranks exit once rank 0 has written
                    raise TrainingInterrupted(
                        f"stopped by {signal_name(stop_signal)} after step {step} of "
                        f"{total_steps}, checkpoint written to {checkpoint_path}: continue with "
                        "the same command and --resume",
                        signal_number=stop_signal,
                    )
        save(step)
    finally:
        signals.restore()
        progress.close()
        if log_file is not None:
            log_file.close()
    result.steps = step
    return result


def _open_log(output_dir: Path, context: DistributedContext) -> IO[str] | None:
    """The run's JSON-lines log, appended to by the main process only (None elsewhere)."""
    if not context.is_main:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    return open(output_dir / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115


def _claim_output_dir(
    output_dir: Path, context: DistributedContext, *, resume: bool, overwrite: bool
) -> None:
    """:func:`check_output_dir` on rank 0, whose verdict every rank follows."""
    refusal = ""
    if context.is_main:
        try:
            check_output_dir(output_dir, resume=resume, overwrite=overwrite)
        except MultiGrainError as error:
            refusal = str(error)
    refusal = str(broadcast_from_main(refusal))
    if refusal:
        raise MultiGrainError(refusal)
