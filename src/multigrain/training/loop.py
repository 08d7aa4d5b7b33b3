"""The training loop: repeated-augmentation batches, the joint loss, DDP, exact resume.

Run it in one process (`multigrain train ...`) or many (`torchrun --nproc-per-node N -m
multigrain train ...`). Determinism: the model is initialised from `seed`; every training
sample's augmentation is seeded by the sampler from (seed, epoch, position); the negative
sampler's generator is re-seeded from (seed, step); so a run resumed from any checkpoint
continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from multigrain.data import (
    AugmentationKind,
    AugmentedDataset,
    RepeatedAugmentationSampler,
    make_training_loader,
    train_transform,
)
from multigrain.data.datasets import UNLABELLED
from multigrain.data.sources import open_training_images
from multigrain.losses import JointLoss, JointLossOutput
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import load_checkpoint, save_checkpoint
from multigrain.runtime.distributed import (
    DistributedContext,
    all_reduce_mean,
    gather_no_grad,
    gather_with_grad,
    init_distributed,
)
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import autocast, autocast_dtype
from multigrain.training.config import TrainConfig
from multigrain.training.optim import build_optimizer, learning_rate_at, set_learning_rate

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"

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


def sampling_seed(seed: int, step: int, micro_step: int, rank: int) -> int:
    """A distinct, reproducible seed for the negative sampler at each micro-batch."""
    return (seed * 1_000_003 + step * 7_919 + micro_step * 104_729 + rank * 15_485_863) % (2**63)


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train a MultiGrain model as `config` says; returns the step history and checkpoint path."""
    context = init_distributed(config.device)
    config.validate(context.world_size)
    output_dir = Path(config.output_dir)
    checkpoint_path = output_dir / CHECKPOINT_NAME

    images = open_training_images(
        config.dataset,
        data_root=config.data_root,
        file_list=config.file_list,
        limit=config.limit,
        unlabelled=config.unlabelled_root,
    )
    per_process_batch = config.batch_size // (context.world_size * config.grad_accum_steps)
    sampler = RepeatedAugmentationSampler(
        len(images),
        batch_size=per_process_batch,
        num_repeats=config.num_repeats,
        num_replicas=context.world_size,
        rank=context.rank,
        seed=config.seed,
    )
    steps_per_epoch = len(sampler) // config.grad_accum_steps
    if steps_per_epoch == 0:
        raise MultiGrainError(
            f"{len(images)} training images are too few for one step of batch size "
            f"{config.batch_size} with {config.grad_accum_steps} accumulation step(s): "
            "lower --batch-size or --grad-accum"
        )
    total_steps = (
        config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    )

    torch.manual_seed(config.seed)
    model = MultiGrain(
        trunk=config.trunk,
        num_classes=len(images.classes),
        pooling_exponent=config.pooling_exponent,
        small_input=config.small_input,
    )
    criterion = JointLoss(
        classification_weight=config.classification_weight,
        alpha=config.margin_alpha,
        beta_init=config.beta_init,
        ignore_label=UNLABELLED,
    )
    device = context.device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device)
    model.to(memory_format=memory_format)
    criterion.to(device)
    optimizer = build_optimizer(
        model,
        criterion,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        beta_lr_factor=config.beta_lr_factor,
    )
    amp_dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype is torch.float16 else None

    step = 0
    if resume and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, map_location=str(device))
        _check_resumable(state.get("config", {}), config, checkpoint_path)
        model.load_state_dict(state["model_state"])
        criterion.load_state_dict(state["criterion_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        if scaler is not None and "scaler_state" in state:
            scaler.load_state_dict(state["scaler_state"])
        torch.set_rng_state(state["rng_state"]["torch"])
        step = int(state["step"])
        logger.info("resumed from %s at step %d", checkpoint_path, step)
    elif resume:
        logger.info("no checkpoint at %s: starting from scratch", checkpoint_path)

    wrapped: nn.Module = model
    if context.is_distributed:
        wrapped = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            # with lambda = 0 the classifier receives no gradient at all
            find_unused_parameters=config.classification_weight == 0.0,
        )

    dataset = AugmentedDataset(
        images,
        train_transform(AugmentationKind(config.augmentation), input_size=config.input_size),
    )

    def save(step: int) -> None:
        if context.is_main:
            _write_checkpoint(
                checkpoint_path,
                config=config,
                model=model,
                criterion=criterion,
                optimizer=optimizer,
                scaler=scaler,
                step=step,
                classes=images.classes,
                sampler_state=_sampler_position(step, steps_per_epoch, config.grad_accum_steps),
            )

    result = TrainResult(output_dir=output_dir, checkpoint=checkpoint_path, steps=step)
    progress = _progress_bar(config, context, total_steps, step)
    log_file = _open_log(output_dir, context)
    model.train()
    timer_start, timer_images = time.perf_counter(), 0
    try:
        while step < total_steps:
            epoch, step_in_epoch = divmod(step, steps_per_epoch)
            sampler.set_epoch(epoch, start_batch=step_in_epoch * config.grad_accum_steps)
            batches = iter(
                make_training_loader(
                    dataset,
                    sampler,
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
                set_learning_rate(optimizer, rate)
                terms = _optimizer_step(
                    config,
                    context,
                    batches,
                    step=step,
                    wrapped=wrapped,
                    criterion=criterion,
                    optimizer=optimizer,
                    scaler=scaler,
                    amp_dtype=amp_dtype,
                    memory_format=memory_format,
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
                        beta=criterion.margin.beta.item(),
                        lr=rate,
                        images_per_second=timer_images / max(elapsed, 1e-9),
                    )
                    timer_start, timer_images = time.perf_counter(), 0
                    result.history.append(entry)
                    if log_file is not None:
                        log_file.write(json.dumps(entry.__dict__) + "\n")
                        log_file.flush()
                    if progress is not None:
                        progress.set_postfix(
                            loss=f"{entry.loss:.3f}",
                            beta=f"{entry.beta:.3f}",
                            img_s=f"{entry.images_per_second:.1f}",
                        )
                if progress is not None:
                    progress.update(1)
                end_of_epoch = step % steps_per_epoch == 0
                keep = config.keep_every_steps is not None and step % config.keep_every_steps == 0
                if keep or _should_checkpoint(config, step, steps_per_epoch, end_of_epoch):
                    save(step)
                if keep and context.is_main:
                    _keep_snapshot(checkpoint_path, step)
        save(step)
    finally:
        if progress is not None:
            progress.close()
        if log_file is not None:
            log_file.close()
    result.steps = step
    return result


def _optimizer_step(
    config: TrainConfig,
    context: DistributedContext,
    batches: Any,
    *,
    step: int,
    wrapped: nn.Module,
    criterion: JointLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
    memory_format: torch.memory_format,
) -> JointLossOutput:
    """One optimiser step over `grad_accum_steps` micro-batches; returns the last loss terms."""
    device = context.device
    optimizer.zero_grad(set_to_none=True)
    terms: JointLossOutput | None = None
    for micro_step in range(config.grad_accum_steps):
        batch = next(batches).to(device, non_blocking=True)
        last = micro_step == config.grad_accum_steps - 1
        sync = nullcontext() if last or not context.is_distributed else wrapped.no_sync()  # type: ignore[operator]
        with sync:
            with autocast(device, amp_dtype):
                embeddings, logits = wrapped(batch.images.contiguous(memory_format=memory_format))
            labels, instance_ids = batch.labels, batch.instance_ids
            generator = torch.Generator(device=embeddings.device)
            generator.manual_seed(
                sampling_seed(
                    config.seed, step, micro_step, 0 if config.global_sampling else context.rank
                )
            )
            terms = criterion(
                embeddings.float(),
                logits.float(),
                labels,
                instance_ids,
                generator=generator,
                margin_embeddings=gather_with_grad(embeddings.float())
                if config.global_sampling
                else None,
                margin_instance_ids=gather_no_grad(instance_ids)
                if config.global_sampling
                else None,
            )
            loss = terms.total / config.grad_accum_steps
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
    # beta lives outside DDP: average its gradient by hand
    for parameter in criterion.parameters():
        if parameter.grad is not None:
            all_reduce_mean(parameter.grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    assert terms is not None
    return terms


def _should_checkpoint(
    config: TrainConfig, step: int, steps_per_epoch: int, end_of_epoch: bool
) -> bool:
    if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        return True
    return end_of_epoch and (step // steps_per_epoch) % max(config.checkpoint_every, 1) == 0


def _write_checkpoint(
    path: Path,
    *,
    config: TrainConfig,
    model: MultiGrain,
    criterion: JointLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    step: int,
    classes: list[str],
    sampler_state: dict[str, int],
) -> None:
    state: dict[str, Any] = {
        "model_state": model.state_dict(),
        "architecture": model.architecture(),
        "classes": list(classes),
        "criterion_state": criterion.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "step": step,
        "sampler_state": sampler_state,
        "rng_state": {"torch": torch.get_rng_state()},
        "config": config.to_dict(),
    }
    if scaler is not None:
        state["scaler_state"] = scaler.state_dict()
    save_checkpoint(path, state)
    logger.info("step %d: checkpoint written to %s", step, path)


def _keep_snapshot(checkpoint_path: Path, step: int) -> None:
    """Hard-link (or copy) the checkpoint just written to snapshots/step-NNNNNN.pt."""
    folder = checkpoint_path.parent / "snapshots"
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


def _progress_bar(
    config: TrainConfig, context: DistributedContext, total: int, initial: int
) -> Any:
    if not (config.progress and context.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def _open_log(output_dir: Path, context: DistributedContext) -> Any:
    if not context.is_main:
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    return open(output_dir / LOG_NAME, "a", encoding="utf-8")  # noqa: SIM115
