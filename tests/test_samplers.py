"""Repeated-augmentation batch sampler: batch structure, sharding, determinism, resume."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from multigrain.data.samplers import RepeatedAugmentationSampler, derive_seed
from multigrain.runtime.errors import MultiGrainError


def epoch_batches(sampler: RepeatedAugmentationSampler, epoch: int = 0) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def sources(batch: list[tuple[int, int]]) -> list[int]:
    return [index for index, _ in batch]


def test_each_batch_holds_each_source_exactly_m_times() -> None:
    sampler = RepeatedAugmentationSampler(50, batch_size=12, num_repeats=3, seed=1)
    batches = epoch_batches(sampler)
    assert len(batches) == len(sampler) == 50 // 4
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(sources(batch))
        assert len(counts) == sampler.sources_per_batch == 4
        assert set(counts.values()) == {3}
        # copies are adjacent and each copy has its own seed
        assert sources(batch)[::3] == list(dict.fromkeys(sources(batch)))
        assert len({seed for _, seed in batch}) == 12


def test_sources_are_distinct_within_an_epoch_and_cover_almost_all() -> None:
    sampler = RepeatedAugmentationSampler(50, batch_size=12, num_repeats=3)
    seen = [index for batch in epoch_batches(sampler) for index in sources(batch)[::3]]
    assert len(seen) == len(set(seen)) == 48  # 50 // 4 * 4: the remainder (2) is dropped


@pytest.mark.parametrize("num_replicas", [2, 3])
def test_ranks_get_disjoint_sources_and_equal_batch_counts(num_replicas: int) -> None:
    size, batch_size = 101, 6
    per_rank = [
        epoch_batches(
            RepeatedAugmentationSampler(
                size, batch_size=batch_size, num_replicas=num_replicas, rank=rank, seed=3
            ),
            epoch=2,
        )
        for rank in range(num_replicas)
    ]
    expected = size // (num_replicas * 2)
    assert [len(batches) for batches in per_rank] == [expected] * num_replicas
    rank_sources = [{i for batch in batches for i in sources(batch)} for batches in per_rank]
    for a in range(num_replicas):
        for b in range(a + 1, num_replicas):
            assert not rank_sources[a] & rank_sources[b]
    union = set().union(*rank_sources)
    assert len(union) == expected * num_replicas * 2
    assert size - len(union) < num_replicas * 2


def test_ranks_together_equal_one_process_with_the_global_batch() -> None:
    """Step b of R replicas == step b of one process with R times the batch (indices and seeds)."""
    single = epoch_batches(RepeatedAugmentationSampler(40, batch_size=12, seed=5), epoch=1)
    ranks = [
        epoch_batches(
            RepeatedAugmentationSampler(40, batch_size=6, num_replicas=2, rank=rank, seed=5),
            epoch=1,
        )
        for rank in range(2)
    ]
    assert len(single) == len(ranks[0])
    for step, batch in enumerate(single):
        assert batch == ranks[0][step] + ranks[1][step]


def test_sample_seeds_depend_only_on_seed_epoch_and_global_position() -> None:
    sampler = RepeatedAugmentationSampler(20, batch_size=4, num_repeats=2, seed=9)
    sampler.set_epoch(4)
    order = sampler.permutation().tolist()
    flat = [pair for batch in sampler for pair in batch]
    expected = [(order[slot // 2], derive_seed(9, 4, slot)) for slot in range(40)]
    assert flat == expected


def test_set_epoch_changes_order_deterministically() -> None:
    def make() -> RepeatedAugmentationSampler:
        return RepeatedAugmentationSampler(30, batch_size=6, seed=11)

    assert epoch_batches(make(), 0) == epoch_batches(make(), 0)
    assert epoch_batches(make(), 3) == epoch_batches(make(), 3)
    assert sources(epoch_batches(make(), 0)[0]) != sources(epoch_batches(make(), 1)[0])
    other_seed = RepeatedAugmentationSampler(30, batch_size=6, seed=12)
    assert epoch_batches(make(), 0) != epoch_batches(other_seed, 0)
    # iterating twice without set_epoch repeats the epoch
    sampler = make()
    assert list(sampler) == list(sampler)


def test_permutation_is_a_seeded_randperm() -> None:
    sampler = RepeatedAugmentationSampler(30, batch_size=6, seed=11)
    first, second = sampler.permutation(), sampler.permutation()
    assert torch.equal(first, second)
    assert sorted(first.tolist()) == list(range(30))


def test_no_shuffle_keeps_dataset_order() -> None:
    sampler = RepeatedAugmentationSampler(10, batch_size=6, shuffle=False, num_replicas=1)
    batches = epoch_batches(sampler, epoch=7)
    assert [sources(b) for b in batches] == [[2 * k] * 3 + [2 * k + 1] * 3 for k in range(5)]
    rank1 = RepeatedAugmentationSampler(
        10, batch_size=4, num_repeats=2, shuffle=False, num_replicas=2, rank=1
    )
    assert [sources(b) for b in rank1] == [[2, 2, 3, 3], [6, 6, 7, 7]]


def test_start_batch_yields_the_tail_of_the_epoch() -> None:
    sampler = RepeatedAugmentationSampler(60, batch_size=9, seed=2)
    full = epoch_batches(sampler, epoch=5)
    sampler.set_epoch(5, start_batch=7)
    assert len(sampler) == len(full) - 7
    assert sampler.batches_per_epoch == len(full)
    assert list(sampler) == full[7:]
    sampler.set_epoch(5, start_batch=len(full))
    assert len(sampler) == 0 and list(sampler) == []
    sampler.set_epoch(6)
    assert sampler.start_batch == 0


def test_state_dict_round_trip_resumes_mid_epoch() -> None:
    sampler = RepeatedAugmentationSampler(60, batch_size=9, seed=2)
    sampler.set_epoch(3, start_batch=2)
    state = sampler.state_dict()
    assert state == {"epoch": 3, "start_batch": 2}
    assert all(type(value) is int for value in state.values())
    resumed = RepeatedAugmentationSampler(60, batch_size=9, seed=2)
    resumed.load_state_dict(state)
    assert list(resumed) == list(sampler) == epoch_batches(sampler, 3)[2:]
    with pytest.raises(MultiGrainError, match="no 'epoch'"):
        resumed.load_state_dict({})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"batch_size": 10, "num_repeats": 3},
            "batch size 10 is not divisible by the number of repeats m=3: use a multiple of 3",
        ),
        ({"batch_size": 6, "num_repeats": 0}, "m=0 is below 1"),
        ({"batch_size": 6, "num_replicas": 2, "rank": 2}, "rank 2 is out of range"),
        ({"batch_size": 6, "rank": -1}, "rank -1 is out of range"),
        ({"batch_size": 6, "num_replicas": 0}, "replicas 0 is below 1"),
        ({"batch_size": 30, "num_replicas": 2}, "too small for one batch"),
        ({"batch_size": 6, "seed": -1}, "seed -1 is negative"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(MultiGrainError, match=message):
        RepeatedAugmentationSampler(15, **kwargs)


def test_invalid_epoch_and_start_batch_raise() -> None:
    sampler = RepeatedAugmentationSampler(15, batch_size=6)
    with pytest.raises(MultiGrainError, match="epoch -1 is negative"):
        sampler.set_epoch(-1)
    with pytest.raises(MultiGrainError, match="start batch 8 is outside"):
        sampler.set_epoch(0, start_batch=8)


def test_smallest_valid_dataset_gives_one_batch() -> None:
    sampler = RepeatedAugmentationSampler(4, batch_size=6, num_replicas=2, rank=1)
    assert len(sampler) == 1
    assert Counter(sources(next(iter(sampler)))).most_common()[0][1] == 3
