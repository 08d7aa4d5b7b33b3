"""Training batches: reproducible augmentation of labelled images, collation, the loader.

:class:`AugmentedDataset` applies a random transform reproducibly from the per-sample seed
chosen by :class:`~multigrain.data.samplers.RepeatedAugmentationSampler`, so the images a
training run sees depend neither on the number of DataLoader workers nor on where it was
resumed.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from multigrain.data.datasets import LabelledImages
from multigrain.data.samplers import RepeatedAugmentationSampler
from multigrain.runtime.errors import MultiGrainError


class AugmentedDataset(Dataset[tuple[Tensor, int, int]]):
    """Applies ``transform`` to ``images`` reproducibly: the key is ``(index, sample_seed)``.

    The transform runs with torch's CPU RNG and Python's ``random`` seeded from
    ``sample_seed``; both generators are restored afterwards, so the caller's
    random streams are untouched and the result depends only on the key.
    """

    def __init__(self, images: LabelledImages, transform: Callable[[Image.Image], Tensor]) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int, int]:
        """``(index, sample_seed) -> (image (3, S, S) float, label, index)``."""
        index, sample_seed = key
        return self._augment(self.images.load(index), index, sample_seed)

    def __getitems__(self, keys: Sequence[tuple[int, int]]) -> list[tuple[Tensor, int, int]]:
        """A whole batch of keys, decoding each source image once.

        Repeated augmentations put m copies of each source in a batch; the DataLoader
        hands the batch's keys here (``__getitems__``), so a file is read and decoded
        once per batch instead of m times. Each item equals ``self[key]``.
        """
        decoded: dict[int, Image.Image] = {}
        items = []
        for index, sample_seed in keys:
            if index not in decoded:
                decoded[index] = self.images.load(index)
            items.append(self._augment(decoded[index], index, sample_seed))
        return items

    def _augment(self, image: Image.Image, index: int, sample_seed: int) -> tuple[Tensor, int, int]:
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                random.seed(sample_seed)
                tensor = self.transform(image)
        finally:
            random.setstate(python_state)
        return tensor, self.images.labels[index], index


@dataclass(frozen=True)
class TrainingBatch:
    """A collated training batch.

    Attributes:
        images: (B, 3, S, S) float.
        labels: (B,) int64 class labels.
        instance_ids: (B,) int64 source-image indices; equal ids are positives.
    """

    images: Tensor
    labels: Tensor
    instance_ids: Tensor

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> TrainingBatch:
        """Copy of the batch on ``device``."""
        return TrainingBatch(
            images=self.images.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            instance_ids=self.instance_ids.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> TrainingBatch:
        """Copy in page-locked memory (called by ``DataLoader(pin_memory=True)``)."""
        return TrainingBatch(
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            instance_ids=self.instance_ids.pin_memory(),
        )

    def __len__(self) -> int:
        return len(self.labels)


def collate_training(batch: Sequence[tuple[Tensor, int, int]]) -> TrainingBatch:
    """Stack ``AugmentedDataset`` items: B x ((3, S, S), label, index) -> :class:`TrainingBatch`."""
    images, labels, indices = zip(*batch, strict=True)
    return TrainingBatch(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        instance_ids=torch.tensor(indices, dtype=torch.long),
    )


def _init_worker(worker_id: int) -> None:
    # One intra-op thread per worker: N workers x N threads would oversubscribe the CPUs.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the training loop, not its workers, decides
    # when to stop (it finishes the step under way, whose batches the workers still load)
    # and then shuts them down. SIGTERM gets its default effect back (a forked worker
    # inherits the loop's handler): the loader's last resort against a stuck worker is to
    # terminate it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def make_training_loader(
    dataset: AugmentedDataset,
    sampler: RepeatedAugmentationSampler,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader[tuple[Tensor, int, int]]:
    """A DataLoader yielding :class:`TrainingBatch` in the sampler's order.

    The loader gets its own ``torch.Generator`` (it only seeds worker processes),
    so creating an iterator does not consume the global RNG: a resumed run's
    global random stream matches the original run's.
    """
    if num_workers < 0:
        raise MultiGrainError(f"number of workers {num_workers} is negative: use 0 or more")
    if sampler.dataset_size != len(dataset):
        raise MultiGrainError(
            f"sampler covers {sampler.dataset_size} images but the dataset has {len(dataset)}: "
            "build the sampler with dataset_size=len(dataset)"
        )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_training,
        pin_memory=pin_memory,
        worker_init_fn=_init_worker,
        persistent_workers=False,
        generator=torch.Generator(),
    )
