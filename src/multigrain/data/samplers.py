"""Repeated-augmentation (RA) batches: each source image appears ``num_repeats`` times per batch.

A batch of B images holds B / m distinct source images, each present m times
(MultiGrain section 3.2). Positives for the margin loss are the copies of one
source, so they must sit in the same batch.

Every sample comes with a ``sample_seed`` for its augmentation. The seed is a
hash of ``(seed, epoch, global slot)`` where the global slot is
``position of the source in the epoch permutation * m + copy``. Neither the
permutation nor the seeds depend on the number of replicas, the rank or the
number of DataLoader workers, so a source that is drawn gets the same
augmentations however training is distributed, and a resumed run replays
exactly the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import torch

from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1
_PERMUTATION_SALT = 0x5EED5EED  # keeps the permutation seed apart from sample seeds

Batch = list[tuple[int, int]]


def _splitmix64(value: int) -> int:
    """One round of the SplitMix64 mixer: a bijective, well-spread hash of a 64-bit int."""
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def derive_seed(seed: int, epoch: int, slot: int) -> int:
    """A 63-bit seed (valid for ``torch.manual_seed``) that depends on all three integers."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ epoch) ^ slot) >> 1


class RepeatedAugmentationSampler:
    """Batch sampler yielding ``[(dataset index, sample_seed), ...]`` with repeated sources.

    Per epoch the sources are shuffled (a ``torch.randperm`` seeded from
    ``(seed, epoch)``; the identity when ``shuffle=False``). Global step ``b``
    takes the next ``num_replicas * sources_per_batch`` sources of that order and
    rank ``r`` gets the ``r``-th contiguous share, so ranks see disjoint sources
    and together see what one process with ``num_replicas`` times the batch
    would. Within a batch the ``num_repeats`` copies of a source are adjacent:
    ``[a, a, a, b, b, b, ...]``.

    Every rank yields ``dataset_size // (num_replicas * sources_per_batch)``
    batches per epoch; the remaining sources of the permutation are dropped for
    this epoch (different ones each epoch when shuffling).

    Resuming mid-epoch: ``set_epoch(epoch, start_batch=k)`` makes iteration yield
    batches ``k, k+1, ...`` of that epoch only, identical to the tail of a full
    pass; ``len()`` then counts only those remaining batches
    (:attr:`batches_per_epoch` is the full count). The next ``set_epoch`` call
    resets ``start_batch`` to 0 unless given.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        num_repeats: int = 3,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if num_repeats < 1:
            raise MultiGrainError(
                f"number of repeats m={num_repeats} is below 1: use m >= 1 (the paper uses 3)"
            )
        if batch_size < 1 or batch_size % num_repeats != 0:
            raise MultiGrainError(
                f"batch size {batch_size} is not divisible by the number of repeats "
                f"m={num_repeats}: use a multiple of {num_repeats}"
            )
        if num_replicas < 1:
            raise MultiGrainError(f"number of replicas {num_replicas} is below 1: use >= 1")
        if not 0 <= rank < num_replicas:
            raise MultiGrainError(
                f"rank {rank} is out of range for {num_replicas} replicas: "
                f"use 0 <= rank < {num_replicas}"
            )
        sources_per_batch = batch_size // num_repeats
        if dataset_size < num_replicas * sources_per_batch:
            raise MultiGrainError(
                f"dataset of {dataset_size} images is too small for one batch of "
                f"{sources_per_batch} source images on each of {num_replicas} replicas: "
                "use a smaller batch size, more repeats or a larger dataset"
            )
        if seed < 0:
            raise MultiGrainError(f"seed {seed} is negative: use a seed >= 0")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.num_repeats = num_repeats
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    @property
    def sources_per_batch(self) -> int:
        """Distinct source images in one batch of this rank: ``batch_size // num_repeats``."""
        return self.batch_size // self.num_repeats

    @property
    def batches_per_epoch(self) -> int:
        """Full number of batches per epoch for each rank (ignores ``start_batch``)."""
        return self.dataset_size // (self.num_replicas * self.sources_per_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (changes order and seeds) and skip its first ``start_batch`` batches."""
        if epoch < 0:
            raise MultiGrainError(f"epoch {epoch} is negative: epochs count from 0")
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise MultiGrainError(
                f"start batch {start_batch} is outside the epoch's "
                f"{self.batches_per_epoch} batches: was the checkpoint made with "
                "another batch size, dataset or number of replicas?"
            )
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        """Batches the next iteration yields: ``batches_per_epoch - start_batch``."""
        return self.batches_per_epoch - self.start_batch

    def permutation(self) -> torch.Tensor:
        """(dataset_size,) int64 order of the sources for the current epoch."""
        if not self.shuffle:
            return torch.arange(self.dataset_size)
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self.seed ^ _PERMUTATION_SALT, self.epoch, 0))
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[Batch]:
        order = self.permutation().tolist()
        per_batch = self.sources_per_batch
        per_step = self.num_replicas * per_batch
        for batch_index in range(self.start_batch, self.batches_per_epoch):
            first = batch_index * per_step + self.rank * per_batch
            batch: Batch = []
            for position in range(first, first + per_batch):
                source = order[position]
                for copy in range(self.num_repeats):
                    slot = position * self.num_repeats + copy
                    batch.append((source, derive_seed(self.seed, self.epoch, slot)))
            assert len(batch) == self.batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Plain-int state to store in a checkpoint: ``{"epoch", "start_batch"}``."""
        return {"epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict` output (``start_batch`` defaults to 0)."""
        if "epoch" not in state:
            raise MultiGrainError(
                "sampler state has no 'epoch': pass the output of RepeatedAugmentationSampler"
                ".state_dict()"
            )
        self.set_epoch(int(state["epoch"]), start_batch=int(state.get("start_batch", 0)))
