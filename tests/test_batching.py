"""MicroBatcher with a small reference forward: rows match, shapes never mix, limits hold."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from multigrain.service.batching import MicroBatcher


def reference(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (B,) sums and (B, C) channel means, row by row."""
    return batch.sum(dim=(1, 2, 3)), batch.mean(dim=(2, 3))


def test_concurrent_images_share_forwards_and_get_their_own_rows() -> None:
    seen: list[tuple[int, ...]] = []

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(tuple(batch.shape))
        return reference(batch)

    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 4 + i % 3, 5, generator=generator) for i in range(30)]

    async def main() -> list[tuple[torch.Tensor, ...]]:
        batcher = MicroBatcher(forward, max_batch=8, max_wait_s=0.01)
        try:
            return list(await asyncio.gather(*(batcher.submit(image) for image in images)))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    for image, (total, means) in zip(images, results, strict=True):
        expected_total, expected_means = reference(image[None])
        torch.testing.assert_close(total, expected_total[0])
        torch.testing.assert_close(means, expected_means[0])
    assert sum(shape[0] for shape in seen) == len(images)
    assert len(seen) < len(images) and max(shape[0] for shape in seen) <= 8
    # one forward per shape of a gathered batch: every forward holds one image shape
    assert {shape[2] for shape in seen} == {4, 5, 6}


def test_a_failing_forward_fails_its_requests_only() -> None:
    def forward(batch: torch.Tensor) -> tuple[torch.Tensor]:
        if batch.shape[-1] == 1:
            raise RuntimeError("bad shape")
        return (batch.flatten(1).sum(1),)

    async def main() -> tuple[object, ...]:
        batcher = MicroBatcher(forward, max_wait_s=0.01)
        bad = batcher.submit(torch.ones(1, 2, 1))
        good = batcher.submit(torch.ones(1, 2, 2))
        results = await asyncio.gather(bad, good, return_exceptions=True)
        later = await batcher.submit(torch.ones(1, 1, 3))  # the worker is still alive
        await batcher.close()
        return (*results, later)

    bad, good, later = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and str(bad) == "bad shape"
    assert good == (torch.tensor(4.0),) and later == (torch.tensor(3.0),)


def test_a_timed_out_request_is_dropped_before_its_forward() -> None:
    release = threading.Event()
    calls: list[int] = []

    def forward(batch: torch.Tensor) -> tuple[torch.Tensor]:
        calls.append(batch.shape[0])
        release.wait(5)  # the first forward blocks until the late request gave up
        return (batch.flatten(1).sum(1),)

    async def main() -> None:
        batcher = MicroBatcher(forward, max_wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(torch.ones(1, 1, 1)))
        await asyncio.sleep(0.05)  # the first forward is running now
        with pytest.raises(TimeoutError):
            await batcher.submit(torch.ones(1, 1, 2), timeout=0.05)
        release.set()
        assert (await first) == (torch.tensor(1.0),)
        await asyncio.sleep(0.05)
        assert batcher.stats.dropped == 1 and calls == [1]
        await batcher.close()

    asyncio.run(main())
