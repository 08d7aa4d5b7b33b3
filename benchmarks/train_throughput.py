"""Training throughput (images/s) of the full step: forward, joint loss, backward, SGD.

fp32 and bf16 autocast are measured in the same run on the same inputs, channels-last, for
several trunks and input sizes; the batch comes from memory, so the figure is the model's
and the loss's cost, not data loading's. JSON on stdout (and --output FILE).

    .venv/bin/python benchmarks/train_throughput.py --output runs/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from multigrain.losses import JointLoss
from multigrain.models import MultiGrain
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.distributed import resolve_device
from multigrain.runtime.precision import autocast, autocast_dtype
from multigrain.training.optim import build_optimizer

SETTINGS = [
    # (trunk, input size, small-image stem, batch)
    ("resnet18", 32, True, 96),
    ("resnet18", 128, False, 48),
    ("resnet18", 224, False, 48),
    ("resnet50", 128, False, 24),
    ("resnet50", 224, False, 24),
]


def measure(
    trunk: str,
    size: int,
    small: bool,
    batch: int,
    precision: str,
    device: torch.device,
    *,
    steps: int,
    warmup: int,
) -> float:
    torch.manual_seed(0)
    model = MultiGrain(trunk=trunk, num_classes=1000, small_input=small).to(
        device, memory_format=torch.channels_last
    )
    criterion = JointLoss(classification_weight=0.5).to(device)
    optimizer = build_optimizer(
        model, criterion, lr=0.1, momentum=0.9, weight_decay=1e-4, beta_lr_factor=1.0
    )
    dtype = autocast_dtype(precision, device)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    labels = torch.randint(0, 1000, (batch,), device=device)
    ids = torch.arange(batch // 3, device=device).repeat_interleave(3)
    generator = torch.Generator(device=device).manual_seed(0)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            embeddings, logits = model(images)
        loss = criterion(embeddings.float(), logits.float(), labels, ids, generator=generator).total
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--trunks", default="resnet18,resnet50")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    low = "fp16" if device.type == "cuda" and not torch.cuda.is_bf16_supported() else "bf16"
    rows = []
    for trunk, size, small, batch in SETTINGS:
        if trunk not in args.trunks.split(","):
            continue
        if device.type == "cuda":
            batch *= 8
        fp32 = measure(
            trunk, size, small, batch, "fp32", device, steps=args.steps, warmup=args.warmup
        )
        fast = measure(trunk, size, small, batch, low, device, steps=args.steps, warmup=args.warmup)
        rows.append(
            {
                "trunk": trunk,
                "input_size": size,
                "small_input": small,
                "batch_size": batch,
                "fp32_images_per_s": round(fp32, 2),
                f"{low}_images_per_s": round(fast, 2),
                f"{low}_over_fp32": round(fast / fp32, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "train_throughput",
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "channels_last": True,
        "results": rows,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
