"""What a training run is built from: its images and sampler, the model, loss and optimiser.

Only the training package reads :class:`~multigrain.training.config.TrainConfig`; the data,
model and loss below it get plain arguments from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from multigrain.data import (
    AugmentationKind,
    AugmentedDataset,
    RepeatedAugmentationSampler,
    train_transform,
)
from multigrain.data.datasets import UNLABELLED, LabelledImages
from multigrain.data.sources import open_training_images
from multigrain.losses import JointLoss
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import autocast_dtype
from multigrain.training.config import TrainConfig
from multigrain.training.optim import build_optimizer


@dataclass
class TrainingData:
    """The training images, this process's sampler over them, and the run's length in steps."""

    images: LabelledImages
    sampler: RepeatedAugmentationSampler
    steps_per_epoch: int  # optimiser steps (each of grad_accum_steps micro-batches)
    total_steps: int


@dataclass
class TrainingParts:
    """The model, the joint loss and their optimiser, on the training device."""

    model: MultiGrain
    criterion: JointLoss
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 only
    amp_dtype: torch.dtype | None  # autocast dtype; None: fp32
    memory_format: torch.memory_format


def prepare_data(config: TrainConfig, context: DistributedContext) -> TrainingData:
    """Open the training images and split them into this rank's repeated-augmentation batches."""
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
    return TrainingData(images, sampler, steps_per_epoch, total_steps)


def augmented_dataset(config: TrainConfig, images: LabelledImages) -> AugmentedDataset:
    """The training images under the configured augmentation, seeded per sample."""
    kind = AugmentationKind(config.augmentation)
    return AugmentedDataset(images, train_transform(kind, input_size=config.input_size))


def build_parts(config: TrainConfig, device: torch.device, *, num_classes: int) -> TrainingParts:
    """A freshly initialised model (from ``config.seed``), loss and optimiser on ``device``."""
    torch.manual_seed(config.seed)
    model = MultiGrain(
        trunk=config.trunk,
        num_classes=num_classes,
        pooling_exponent=config.pooling_exponent,
        small_input=config.small_input,
        standardise_input=config.standardise_input,
    )
    criterion = JointLoss(
        classification_weight=config.classification_weight,
        alpha=config.margin_alpha,
        beta_init=config.beta_init,
        ignore_label=UNLABELLED,
    )
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
    return TrainingParts(model, criterion, optimizer, scaler, amp_dtype, memory_format)


def wrap_for_processes(
    model: MultiGrain, config: TrainConfig, context: DistributedContext
) -> nn.Module:
    """The model under DistributedDataParallel when several processes train, else itself."""
    if not context.is_distributed:
        return model
    device = context.device
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        # with lambda = 0 the classifier receives no gradient at all
        find_unused_parameters=config.classification_weight == 0.0,
    )
