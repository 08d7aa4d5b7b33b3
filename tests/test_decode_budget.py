"""The decode memory budget: never over capacity, first come first served, and decode_cost
covers the resident memory that real decodes of each kind of file take (measured)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multigrain.runtime.allocator import find_allocator
from multigrain.service.decode_budget import FIXED_COST, DecodeBudget, decode_cost


def test_costs_in_flight_never_pass_the_capacity_and_arrivals_keep_their_order() -> None:
    rng = random.Random(0)
    capacity = 100
    jobs = [(rng.randint(1, 60), rng.uniform(0, 0.004)) for _ in range(60)]
    jobs[17] = (250, 0.002)  # over the whole budget: it runs alone
    entered: list[int] = []
    in_flight: list[int] = []

    async def main() -> DecodeBudget:
        budget = DecodeBudget(capacity)

        async def job(number: int, cost: int, hold: float) -> None:
            async with budget.reserve(cost):
                entered.append(number)
                in_flight.append(budget.in_flight)
                assert budget.in_flight <= capacity
                if cost > capacity:
                    assert budget.in_flight == capacity  # alone
                await asyncio.sleep(hold)

        tasks = []
        for number, (cost, hold) in enumerate(jobs):
            tasks.append(asyncio.create_task(job(number, cost, hold)))
            await asyncio.sleep(0)  # each arrives after the previous one
        await asyncio.gather(*tasks)
        return budget

    budget = asyncio.run(main())
    assert entered == list(range(len(jobs)))  # nobody overtook a waiting decode
    assert max(in_flight) <= capacity and budget.stats.peak_bytes <= capacity
    assert budget.in_flight == 0 and budget.stats.waited > 0


def test_a_waiter_that_times_out_or_is_cancelled_gives_its_place_back() -> None:
    async def main() -> None:
        budget = DecodeBudget(10)
        order: list[str] = []
        async with budget.reserve(8):
            with pytest.raises(TimeoutError):
                async with budget.reserve(5, timeout=0.01):
                    pytest.fail("granted over the budget")

            async def small() -> None:
                async with budget.reserve(2):
                    order.append("small")

            big = asyncio.create_task(budget.reserve(9).__aenter__())
            await asyncio.sleep(0)
            behind = asyncio.create_task(small())
            await asyncio.sleep(0.01)
            assert order == []  # 2 would fit, but it waits behind the 9
            big.cancel()
            await asyncio.gather(big, return_exceptions=True)
            await behind
            assert order == ["small"]
        assert budget.in_flight == 0

    asyncio.run(main())


SIDE = 2000
#: decode as the service does, in a fresh process (no torch: resize by PIL, as resize.py)
CHILD = """
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from multigrain.data.images import decode_image

def high_water():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

path, side = sys.argv[1], int(sys.argv[2])
before = high_water()
image = decode_image(path, longest_side=side)
scale = side / max(image.size)
size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
resized = image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)
np.asarray(resized).copy()  # the uint8 tensor
print(high_water() - before)
"""


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SIDE x SIDE files of the kinds an upload may be: a gradient with seeded noise."""
    folder = tmp_path_factory.mktemp("kinds")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, SIDE, dtype=np.float32)
    noise = rng.normal(0, 8, (SIDE, SIDE, 1)).astype(np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[None], ramp[:, None], ramp[None, ::-1]), -1)
    image = Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8))
    files = {
        "rgb.png": image, "rgba.png": image.convert("RGBA"), "p.gif": image.convert("P"),
        "rgb.jpg": image, "cmyk.jpg": image.convert("CMYK"), "rgb.webp": image,
        "progressive.jpg": image, "progressive-444.jpg": image,
        "i16.png": Image.fromarray(np.asarray(image)[..., 0].astype(np.uint16) * 257),
    }  # fmt: skip
    paths = {}
    for name, picture in files.items():
        paths[name] = folder / name
        options = {"compress_level": 1} if name.endswith(".png") else {}
        if name.startswith("progressive"):  # libjpeg holds every coefficient of the file
            options = {"progressive": True, "subsampling": 0 if "444" in name else -1}
        picture.save(paths[name], **options)
    return paths


def _measured_peak(path: Path, side: int) -> int:
    """Resident bytes a fresh process gains decoding `path` (VmHWM), under the allocator
    that `multigrain serve` runs under (tcmalloc when installed)."""
    allocator = find_allocator()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if allocator is not None:
        env["LD_PRELOAD"] = allocator
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(side)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return int(result.stdout.strip())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize(
    ("name", "side"),
    [("rgb.png", 160), ("rgba.png", 160), ("p.gif", 160), ("i16.png", 500), ("rgb.webp", 160),
     ("rgb.jpg", 160), ("rgb.jpg", SIDE), ("cmyk.jpg", SIDE), ("rgb.png", SIDE),
     ("progressive.jpg", 160), ("progressive-444.jpg", 160), ("progressive-444.jpg", 500),
     ("progressive.jpg", SIDE)],
)  # fmt: skip
def test_decode_cost_covers_the_memory_real_decodes_take(
    kinds: dict[str, Path], name: str, side: int
) -> None:
    """The reference: the peak resident memory of a real decode; at side 160 the JPEG
    decodes at 1/8 scale (draft), and its cost follows it down."""
    measured = _measured_peak(kinds[name], side)
    cost = decode_cost(kinds[name], longest_side=side)
    assert measured <= cost, f"{name} at {side}: measured {measured} > cost {cost}"
    assert cost < 2 * measured + 8 * 2**20, f"{name} at {side}: cost {cost} vs {measured}"


def test_a_file_over_the_pixel_limit_costs_nothing_to_wait_for(kinds: dict[str, Path]) -> None:
    """decode_image refuses it from its header: it must not queue behind the budget."""
    assert decode_cost(kinds["rgb.png"], longest_side=160, max_pixels=SIDE * SIDE - 1) == (
        FIXED_COST
    )
    assert decode_cost(kinds["rgb.png"], longest_side=160, max_pixels=SIDE * SIDE) > FIXED_COST
