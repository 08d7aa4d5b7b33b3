"""Optimiser parameter groups and the learning-rate schedule as a pure function of the step.

The schedule is recomputed from the step counter at every step instead of being held in a
scheduler object: a resumed run then needs nothing but the step to continue exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from multigrain.training.config import Schedule


def build_optimizer(
    model: nn.Module,
    criterion: nn.Module,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    beta_lr_factor: float,
) -> torch.optim.SGD:
    """SGD over the model (with weight decay) and the loss's parameters (beta: no decay).

    Each group carries `lr_scale`; `set_learning_rate` multiplies it by the scheduled rate.
    """
    groups = [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0},
        {
            "params": [p for p in criterion.parameters() if p.requires_grad],
            "lr_scale": beta_lr_factor,
            "weight_decay": 0.0,
        },
    ]
    groups = [group for group in groups if group["params"]]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def learning_rate_at(
    step: int,
    *,
    base_lr: float,
    steps_per_epoch: int,
    total_steps: int,
    schedule: Schedule,
    lr_steps: Sequence[float] = (),
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Learning rate for optimiser step `step` (0-based).

    STEP: base_lr * gamma^(number of milestones in `lr_steps`, in epochs, already passed).
    COSINE: half cosine from base_lr to 0 over `total_steps`.
    A linear warm-up from base_lr/steps to base_lr over `warmup_epochs` multiplies either.
    """
    epoch = step / steps_per_epoch
    if schedule is Schedule.STEP:
        rate = base_lr * gamma ** sum(1 for milestone in lr_steps if epoch >= milestone)
    else:
        rate = 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    warmup_steps = warmup_epochs * steps_per_epoch
    if warmup_steps > 0 and step < warmup_steps:
        rate *= (step + 1) / warmup_steps
    return rate


def set_learning_rate(optimizer: torch.optim.Optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate * group.get("lr_scale", 1.0)
