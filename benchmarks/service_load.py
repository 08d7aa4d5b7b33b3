"""`multigrain serve` under load, killed with -9, and under hostile uploads (issue 16).

The server runs as a user runs it: ``python -m multigrain serve`` in a subprocess (under the
allocator the command picks: tcmalloc when installed), with the built-in bundle (ResNet-18,
s = 160) over an index of ``--photos`` synthetic JPEGs. Three phases:

1. **load**: ``--clients`` threads x ``--requests`` requests each, cycling /search, /embed,
   /classify and /index (an add) on 320x240 JPEGs; latency percentiles (all requests and
   per route), errors (any answer but 200, any transport error), requests per second.
   Then ``kill -9`` and a restart: every acknowledged add must be in the index.
2. **crash**: the same clients only add, and the server is killed with -9 while they do
   (``--crash-after`` seconds in); after a restart, every add answered 200 before the kill
   must be in the index (the adds that were in flight may be there or not).
3. **hostile**: on a fresh server, each client sends ``--hostile-rounds`` times a
   7000x7000 PNG (a ~150 KiB gradient: 49 Mpx, under the default 50 Mpx limit) to /search
   and a chunked /search body of 400 MiB without Content-Length, on a raw socket. The
   server's resident memory is sampled every 5 ms; the bound it must stay under is its
   idle RSS + the decode budget (or the largest single decode, which runs alone) + 2 MiB
   per client (the 1 MiB multipart spool in memory and the 1 MiB copy buffer).

JSON with the machine (``describe_machine``) on stdout and to --output:

    .venv/bin/python benchmarks/service_load.py --output docs/benchmarks/service_load.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from service_latency import write_photos  # noqa: E402
from service_server import ServerProcess, chunked_upload, resident_bytes  # noqa: E402

from multigrain.inference.bundle import default_bundle  # noqa: E402
from multigrain.inference.embed import embed_in_memory  # noqa: E402
from multigrain.inference.prepare import prepare_model  # noqa: E402
from multigrain.runtime.atomic import atomic_write_text  # noqa: E402
from multigrain.runtime.machine import describe_machine  # noqa: E402
from multigrain.runtime.precision import InferencePrecision  # noqa: E402
from multigrain.search.index import ImageIndex  # noqa: E402
from multigrain.search.index_store import load_index, save_index  # noqa: E402
from multigrain.service.decode_budget import decode_cost, default_budget  # noqa: E402

ROUTES = ("search", "embed", "classify", "index")
MAX_PIXELS = 50_000_000  # serve's default
RESOLUTION = 160  # the built-in bundle's s


def build_index(root: Path, photos: list[Path]) -> Path:
    """An index of `photos` embedded by the built-in bundle at its s, as `embed` would."""
    cpu = torch.device("cpu")
    prepared = prepare_model(
        default_bundle().root, resolution=RESOLUTION, use_bundle_whitening=True, device=cpu
    )
    whitening = prepared.whitening
    descriptors, kept, _ = embed_in_memory(
        prepared.model, photos, resolution=RESOLUTION, device=cpu, precision="fp32",
        whitening=whitening.apply if whitening is not None else None,
    )  # fmt: skip
    metadata = prepared.embedding_metadata(InferencePrecision.FP32)
    folder = root / "index"
    save_index(ImageIndex.build(descriptors.numpy(), kept, metadata=metadata), folder)
    return folder


def jpeg_uploads(count: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    uploads = []
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        uploads.append(buffer.getvalue())
    return uploads


def large_png(side: int) -> bytes:
    """A side x side RGB gradient PNG: a small file, side^2 pixels once decoded."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[None, ::-1]), -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"p50_ms": round(1000 * q[49], 1), "p95_ms": round(1000 * q[94], 1),
            "p99_ms": round(1000 * q[98], 1), "max_ms": round(1000 * max(seconds), 1)}  # fmt: skip


def run_load(server: ServerProcess, uploads: list[bytes], args: argparse.Namespace) -> dict:
    """Phase 1: mixed requests; returns figures and the acknowledged adds {id: path}."""
    latencies: dict[str, list[float]] = {route: [] for route in ROUTES}
    errors: list[str] = []
    acknowledged: dict[int, str] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.base, timeout=300) as http:
            for step in range(args.requests):
                route = ROUTES[(number + step) % len(ROUTES)]
                files = {"image": ("q.jpg", uploads[(number * 7 + step) % len(uploads)])}
                start = time.perf_counter()
                try:
                    answer = http.post(f"/{route}", files=files)
                except httpx.HTTPError as error:
                    with lock:
                        errors.append(f"{route}: {type(error).__name__}")
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    latencies[route].append(elapsed)
                    if answer.status_code != 200:
                        errors.append(f"{route}: {answer.status_code}")
                    elif route == "index":
                        acknowledged[answer.json()["id"]] = answer.json()["path"]

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(client, range(args.clients)))
    wall = time.perf_counter() - started
    every = [s for route in ROUTES for s in latencies[route]]
    return {
        "requests": args.clients * args.requests,
        "errors": len(errors),
        "error_examples": errors[:5],
        "seconds": round(wall, 1),
        "requests_per_second": round(len(every) / wall, 1),
        "latency": percentiles(every),
        "latency_by_route": {route: percentiles(latencies[route]) for route in ROUTES},
        "acknowledged_adds": acknowledged,
    }


def run_crash(server: ServerProcess, uploads: list[bytes], args: argparse.Namespace) -> dict:
    """Phase 2: adds from every client; kill -9 after --crash-after seconds."""
    acknowledged: dict[int, str] = {}
    failed = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(number: int) -> None:
        nonlocal failed
        with httpx.Client(base_url=server.base, timeout=60) as http:
            step = 0
            while not stop.is_set():
                files = {"image": ("a.jpg", uploads[(number + step) % len(uploads)])}
                step += 1
                try:
                    answer = http.post("/index", files=files)
                except httpx.HTTPError:
                    with lock:
                        failed += 1
                    return  # the server is gone
                with lock:
                    if answer.status_code == 200:
                        acknowledged[answer.json()["id"]] = answer.json()["path"]

    with ThreadPoolExecutor(args.clients) as pool:
        futures = [pool.submit(client, number) for number in range(args.clients)]
        time.sleep(args.crash_after)
        server.kill()
        stop.set()
        for future in futures:
            future.result()
    return {"acknowledged_adds": acknowledged, "adds_cut_by_the_kill": failed}


def lost_writes(index_folder: Path, acknowledged: dict[int, str]) -> dict[str, int]:
    """Acknowledged adds missing from the index on disk (by id and path)."""
    index = load_index(index_folder)
    stored = dict(zip(index.ids.tolist(), index.paths, strict=True))
    lost = [i for i, path in acknowledged.items() if stored.get(i) != path]
    return {"acknowledged": len(acknowledged), "lost": len(lost), "index_images": len(index)}


def run_hostile(server: ServerProcess, args: argparse.Namespace) -> dict:
    """Phase 3: 7000x7000 PNGs and chunked oversize bodies from every client."""
    png = large_png(7000)
    ok = httpx.post(f"{server.base}/search", files={"image": ("w.jpg", jpeg_uploads(1)[0])})
    assert ok.status_code == 200, ok.text
    time.sleep(1.0)
    idle = resident_bytes(server.pid)
    peak, done = idle, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, resident_bytes(server.pid))
            time.sleep(0.005)

    statuses: list[str] = []
    refused_after: list[int] = []
    written_before = server.written_bytes()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.base, timeout=600) as http:
            for _ in range(args.hostile_rounds):
                answer = http.post("/search", files={"image": ("big.png", png)})
                statuses.append(f"png {answer.status_code}")
                sent, status = chunked_upload(server.port, "/search", 400 * 2**20)
                refused_after.append(sent)
                statuses.append(f"chunked {status.split(' ')[1] if status else 'reset'}")

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
    finally:
        done.set()
        sampler.join()
    wall = time.perf_counter() - started
    budget = default_budget(MAX_PIXELS)
    with tempfile.NamedTemporaryFile(suffix=".png") as handle:
        handle.write(png)
        handle.flush()
        single = decode_cost(Path(handle.name), longest_side=RESOLUTION)
    bound = idle + max(budget, single) + args.clients * 2 * 2**20
    mib = 2**20
    return {
        "png": f"7000x7000 RGB gradient, {len(png) / 1024:.0f} KiB",
        "answers": {s: statuses.count(s) for s in sorted(set(statuses))},
        "chunked_body_bytes_sent_before_refusal_max": max(refused_after),
        # what the server wrote (spooled bodies, stored uploads, answers): a chunked body
        # is spooled only up to the upload limit
        "server_bytes_written_per_request": round(
            (server.written_bytes() - written_before) / len(statuses)
        ),
        "upload_limit_bytes": 20 * 2**20,
        "seconds": round(wall, 1),
        "idle_rss_mib": round(idle / mib),
        "peak_rss_mib": round(peak / mib),
        "peak_growth_mib": round((peak - idle) / mib),
        "lifetime_peak_rss_mib_vmhwm": round(server.high_water() / mib),
        "decode_budget_mib": round(budget / mib),
        "one_7000px_png_decode_cost_mib": round(single / mib),
        "stated_bound_mib": round(bound / mib),
        "bound": "idle RSS + max(decode budget, the largest single decode cost: it runs "
        f"alone) + 2 MiB per client = {idle / mib:.0f} + {max(budget, single) / mib:.0f} + "
        f"{args.clients * 2} MiB",
        "within_bound": peak <= bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=500, help="per client (load phase)")
    parser.add_argument("--photos", type=int, default=16, help="images indexed at start")
    parser.add_argument("--crash-after", type=float, default=3.0)
    parser.add_argument("--hostile-rounds", type=int, default=2)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="multigrain-load-") as tmp:
        root = Path(tmp)
        index = build_index(root, write_photos(root / "photos", args.photos, 640, 480))
        uploads = jpeg_uploads(32)
        serve = ["--index", str(index), "--data-dir", str(root / "data")]
        with ServerProcess(serve, cwd=root) as server:
            load = run_load(server, uploads, args)
            server.kill()
        with ServerProcess(serve, cwd=root) as server:  # the lock died with the process
            load["after_kill_and_restart"] = lost_writes(index, load.pop("acknowledged_adds"))
            crash = run_crash(server, uploads, args)
        with ServerProcess(serve, cwd=root) as server:
            crash["after_kill_and_restart"] = lost_writes(index, crash.pop("acknowledged_adds"))
            leftovers = sorted(p.name for p in (root / "data" / "tmp").rglob("*.upload"))
            crash["temporary_uploads_left_after_restart"] = len(leftovers)
        with ServerProcess(serve, cwd=root) as server:
            hostile = run_hostile(server, args)
    report: dict[str, Any] = {
        "benchmark": "service_load",
        "command": " ".join(["benchmarks/service_load.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "model": f"built-in bundle {default_bundle().identity} at s={RESOLUTION}, fp32",
        "server": "python -m multigrain serve (subprocess, default limits: 20 MiB uploads, "
        "50 Mpx, decode budget 50 Mpx x 9 B); clients: httpx threads on the same machine",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "load": load,
        "crash": crash,
        "hostile": hostile,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.output is not None:
        atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
