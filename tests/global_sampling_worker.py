"""Run by test_torchrun.py under `torchrun --nproc-per-node 2`: global sampling's gradients.

Each rank embeds its half of a batch with a DDP model and computes the joint loss with the
margin term on the batch gathered across ranks; rank 0 then recomputes the same loss in
one process on the whole batch and writes both sets of gradients to the JSON file argv[1].
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from multigrain.losses import JointLoss
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import all_reduce_mean, gather_no_grad, gather_with_grad

SOURCES, REPEATS = 4, 3  # per rank


def build() -> tuple[MultiGrain, JointLoss]:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=5).double().eval()  # BN: fixed stats
    return model, JointLoss(classification_weight=0.5).double()


def gradients(model: MultiGrain, criterion: JointLoss) -> dict[str, list[float]]:
    return {
        "conv1": model.features.conv1.weight.grad.flatten()[:50].tolist(),
        "classifier": model.classifier.weight.grad.flatten().tolist(),
        "beta": [criterion.margin.beta.grad.item()],
    }


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = torch.Generator().manual_seed(1)
    images = torch.randn(world * SOURCES * REPEATS, 3, 32, 32, generator=data, dtype=torch.float64)
    ids = torch.arange(world * SOURCES).repeat_interleave(REPEATS)
    labels = ids % 5
    own = slice(rank * SOURCES * REPEATS, (rank + 1) * SOURCES * REPEATS)

    model, criterion = build()
    wrapped = DistributedDataParallel(model)
    embeddings, logits = wrapped(images[own])
    terms = criterion(
        embeddings, logits, labels[own], ids[own],
        generator=torch.Generator().manual_seed(7),
        margin_embeddings=gather_with_grad(embeddings),
        margin_instance_ids=gather_no_grad(ids[own]),
    )  # fmt: skip
    terms.total.backward()
    all_reduce_mean(criterion.margin.beta.grad)
    distributed = gradients(model, criterion)

    if rank == 0:
        model, criterion = build()
        embeddings, logits = model(images)
        reference_terms = criterion(
            embeddings, logits, labels, ids, generator=torch.Generator().manual_seed(7)
        )
        reference_terms.total.backward()
        report = {
            "distributed": distributed,
            "reference": gradients(model, criterion),
            "num_triplets": [terms.num_triplets, reference_terms.num_triplets],
        }
        with open(sys.argv[1], "w") as handle:
            json.dump(report, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
