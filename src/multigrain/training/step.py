"""One optimiser step: the joint loss over `grad_accum_steps` micro-batches, then SGD.

The negative sampler of the margin loss draws from a generator seeded by
:func:`sampling_seed` for each micro-batch, so a resumed run samples as the original did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import torch
from torch import nn

from multigrain.data import TrainingBatch
from multigrain.losses import JointLossOutput
from multigrain.runtime.distributed import (
    DistributedContext,
    all_reduce_mean,
    gather_no_grad,
    gather_with_grad,
)
from multigrain.runtime.precision import autocast
from multigrain.training.config import TrainConfig
from multigrain.training.setup import TrainingParts


def sampling_seed(seed: int, step: int, micro_step: int, rank: int) -> int:
    """A distinct, reproducible seed for the negative sampler at each micro-batch."""
    return (seed * 1_000_003 + step * 7_919 + micro_step * 104_729 + rank * 15_485_863) % (2**63)


def optimizer_step(
    config: TrainConfig,
    context: DistributedContext,
    batches: Iterator[TrainingBatch],
    *,
    step: int,
    wrapped: nn.Module,
    parts: TrainingParts,
) -> JointLossOutput:
    """One optimiser step over `grad_accum_steps` micro-batches; returns the last loss terms.

    `wrapped` is the model as the processes share it (DDP or the model itself); gradients are
    synchronised only on the last micro-batch.
    """
    device = context.device
    criterion, optimizer, scaler = parts.criterion, parts.optimizer, parts.scaler
    optimizer.zero_grad(set_to_none=True)
    terms: JointLossOutput | None = None
    for micro_step in range(config.grad_accum_steps):
        batch = next(batches).to(device, non_blocking=True)
        last = micro_step == config.grad_accum_steps - 1
        sync = nullcontext() if last or not context.is_distributed else wrapped.no_sync()  # type: ignore[operator]
        with sync:
            with autocast(device, parts.amp_dtype):
                images = batch.images.contiguous(memory_format=parts.memory_format)
                embeddings, logits = wrapped(images)
            labels, instance_ids = batch.labels, batch.instance_ids
            generator = torch.Generator(device=embeddings.device)
            rank = 0 if config.global_sampling else context.rank
            generator.manual_seed(sampling_seed(config.seed, step, micro_step, rank))
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
