"""Latency of one query embedding in the service's state: the old plain forward vs the fast path.

The service is opened on the built-in bundle (ResNet-18) over a small index of synthetic
JPEG photos (``--width`` x ``--height``, as an upload might be), once per resolution s;
then one query -- decode a file, resize to longest side s, forward, whiten or normalise,
logits -- is timed in three ways, interleaved, in the same process:

- ``plain_fp32``: the service's forward before it took the one forward path, kept here
  only as the baseline: float32 input from ``prepare``, the eager fp32 NCHW model with
  its batch norms, ``model(batch)``;
- ``fast_fp32``: the service as it runs now (``Service.load_input`` + ``Service.forward``:
  ``embed_batch`` on the ``fast_trunk_for`` trunk) at fp32: batch norm folded,
  channels-last;
- ``fast_<auto>``: the same at the precision ``auto`` resolves to here (bf16 on a CPU with
  native bf16, else fp32 again), what an index embedded with the defaults records.

Per mode: the median and the minimum over ``--repeats`` queries after ``--warmup``, the
forward alone likewise, and the ratio of the baseline's median to the mode's; the
descriptors' agreement with the baseline (minimum cosine). JSON with the machine
(``describe_machine``) on stdout and to --output:

    .venv/bin/python benchmarks/service_latency.py --output docs/benchmarks/service_latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data.images import decode_image
from multigrain.data.resize import prepare
from multigrain.inference.bundle import default_bundle
from multigrain.inference.embed import embed_in_memory
from multigrain.inference.prepare import prepare_model
from multigrain.inference.store import EmbeddingMetadata
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index
from multigrain.service.loading import open_service
from multigrain.service.state import Service

CPU = torch.device("cpu")
Query = Callable[[Path], tuple[torch.Tensor, torch.Tensor]]


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` textured JPEGs of width x height (seeded), standing in for uploads."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        y, x = np.mgrid[0:height, 0:width]
        wave = np.sin(x / rng.uniform(8, 40))[..., None] * np.cos(y / rng.uniform(8, 40))[..., None]
        pixels = 128 + 100 * wave * rng.uniform(0.3, 1, 3) + rng.normal(0, 12, (height, width, 3))
        path = folder / f"{index}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def serve_index(root: Path, photos: list[Path], resolution: int, precision: str) -> Service:
    """The service's state over an index of `photos` embedded by the built-in bundle at s."""
    bundle = default_bundle()
    prepared = prepare_model(bundle.root, resolution=resolution, device=CPU)
    whitening = prepared.whitening
    descriptors, kept, _ = embed_in_memory(
        prepared.model, photos, resolution=resolution, device=CPU, precision=precision,
        whitening=whitening.apply if whitening is not None else None,
    )  # fmt: skip
    metadata = EmbeddingMetadata(
        model=prepared.identity, resolution=resolution, exponent=float(prepared.model.pool.p),
        whitened=whitening is not None, dim=descriptors.shape[1], precision=precision,
        bundle=str(bundle.root),
    )  # fmt: skip
    folder = root / f"index-{resolution}-{precision}"
    save_index(ImageIndex.build(descriptors.numpy(), kept, metadata=metadata), folder)
    return open_service(
        checkpoint=None, index_folder=folder, data_dir=root / "data", token=None,
        max_upload_bytes=20 * 2**20, max_pixels=50_000_000, device=CPU,
    )  # fmt: skip


def plain_fp32_query(service: Service) -> tuple[Query, Callable[[torch.Tensor], Any]]:
    """The service's query path before the one forward path (the baseline; see above)."""

    @torch.no_grad()
    def forward(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits = service.model(batch.to(service.device))
        embedding = embedding.float()
        if service.whitening is not None:
            descriptors = service.whitening.apply(embedding)
        else:
            descriptors = F.normalize(embedding, dim=1)
        return descriptors.cpu(), logits.float().cpu()

    def query(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        s = service.resolution
        image = decode_image(path, longest_side=s, max_pixels=service.max_pixels)
        return forward(prepare(image, s)[None])

    return query, forward


def fast_query(service: Service) -> tuple[Query, Callable[[torch.Tensor], Any]]:
    def query(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        return service.forward(service.load_input(path)[None])

    return query, service.forward


def seconds(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(
    modes: dict[str, tuple[Query, Callable[[torch.Tensor], Any], torch.Tensor]],
    photos: list[Path], *, repeats: int, warmup: int,
) -> dict[str, dict[str, list[float]]]:  # fmt: skip
    """Per mode: query and forward seconds, interleaved (mode order rotates each round)."""
    names = list(modes)
    times: dict[str, dict[str, list[float]]] = {n: {"query": [], "forward": []} for n in names}
    for round_ in range(warmup + repeats):
        path = photos[round_ % len(photos)]
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            query, forward, batch = modes[name]
            query_s = seconds(partial(query, path))
            forward_s = seconds(partial(forward, batch))
            if round_ >= warmup:
                times[name]["query"].append(query_s)
                times[name]["forward"].append(forward_s)
    return times


def run_resolution(
    root: Path, photos: list[Path], resolution: int, args: argparse.Namespace
) -> dict[str, Any]:
    auto = resolve_inference_precision(InferencePrecision.AUTO, CPU).value
    services = {"fp32": serve_index(root, photos, resolution, "fp32")}
    if auto != "fp32":
        services[auto] = serve_index(root, photos, resolution, auto)
    baseline_service = services["fp32"]
    plain = plain_fp32_query(baseline_service)
    old_batch = prepare(decode_image(photos[0], longest_side=resolution), resolution)[None]
    modes = {"plain_fp32": (*plain, old_batch)}
    for precision, service in services.items():
        new_batch = service.load_input(photos[0])[None]
        modes[f"fast_{precision}"] = (*fast_query(service), new_batch)
    times = measure(modes, photos, repeats=args.repeats, warmup=args.warmup)
    reference = plain[0](photos[0])[0]
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    rows = []
    for name, (query, _, _) in modes.items():
        cosine = float((query(photos[0])[0] * reference).sum())
        rows.append(
            {
                "mode": name,
                "query_ms_median": round(1000 * median[name]["query"], 2),
                "query_ms_min": round(1000 * min(times[name]["query"]), 2),
                "forward_ms_median": round(1000 * median[name]["forward"], 2),
                "forward_ms_min": round(1000 * min(times[name]["forward"]), 2),
                "query_speedup_vs_plain_fp32": round(
                    median["plain_fp32"]["query"] / median[name]["query"], 3
                ),
                "forward_speedup_vs_plain_fp32": round(
                    median["plain_fp32"]["forward"] / median[name]["forward"], 3
                ),
                "cosine_to_plain_fp32": round(cosine, 6),
            }
        )
    shape = list(old_batch.shape)
    whitened = baseline_service.whitening is not None
    return {"resolution": resolution, "input_shape": shape, "whitened": whitened, "modes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="160,500", help="s values (160: the bundle's)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multigrain-latency-") as tmp:
        root = Path(tmp)
        photos = write_photos(root / "photos", args.photos, args.width, args.height)
        results = [run_resolution(root, photos, int(s), args) for s in args.resolutions.split(",")]
    report = {
        "benchmark": "service_latency",
        "machine": describe_machine(),
        "model": f"built-in bundle {default_bundle().identity}",
        "timed": "one query in the service's state: decode + resize + forward + whitening "
        "or normalisation + logits (query); the forward alone on a decoded image (forward)",
        "photos": f"{args.photos} synthetic JPEGs of {args.width}x{args.height}",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
