"""Is `embed` bounded by its slowest stage? Camera photos and small ones, stage by stage.

Over 300 lines because: it builds three photo sets, runs four kinds of child process
(baseline, default, decoding alone, an instrumented default) and reads their profiles;
each piece is short, and they share one report.

Sets (each of `--images` files, cycling through its distinct photos by hard link):

- ``small``: the built-in benchmark's photos (data/builtin, longest side <= 512, many
  shapes: batches are often partial);
- ``camera``: camera-size JPEGs (>= 3 MP) from the Debian wallpaper packages the set-up
  installs (mate-backgrounds, lomiri-wallpapers*, ukui-wallpapers; the JSON lists each
  file with its package and size), mixed shapes;
- ``camera-same``: the same photos centre-cropped to 4:3 and resized to 4032 x 3024 (a
  12 MP phone photo), JPEG quality 92: one shape, so every batch is full.

For each set and resolution s, every measurement in its own child process, one after
another on the same files:

- ``baseline``: a user's plain script (embed_throughput.run_baseline): PIL full decode,
  bicubic resize, fp32, one image at a time;
- ``default``: ``multigrain embed``'s defaults (embed_collection), timed from the list of
  files to the descriptors on disk, pipeline start-up included (``setup_seconds``: trunk
  folding and cast; ``first_batch_seconds``: to the first descriptor), and the model alone
  on a batch of the set's most common shape (``forward``: images/s and share of the bf16
  matmul rate, from embed_throughput.forward_rate);
- ``decode``: decoding + resizing alone, through the same DataLoader with the default
  number of workers at the default priority (the cores the default run leaves to it);
- ``split``: each stage alone on its share of the cores, for a split of the machine's n
  usable cores into k for the model (torch threads) and n - k for decoding (workers), k in
  {1, n/4, n/2, 3n/4, n - 1}: the bound of the issue's reading "decoding on the cores left
  to it", min(forward on k, decoding on n - k), best over k (none on one core);
- ``profile``: the default run again with every stage timed: in the workers ``decode``
  (file -> RGB at the draft scale), ``resize`` (to longest side s) and ``to_tensor``;
  in the main process ``wait`` (next batch: queue transfer through shared memory,
  bucketing, stacking, and any stall for decoding), ``forward`` (normalise, trunk, GeM,
  L2), ``write`` (shards, merge). Worker stages overlap the main process's.

Headline per set and s: ``bound`` = min(forward alone, decoding alone) images/s, each on
all cores, and ``e2e_over_bound`` = default / bound; ``no_overlap`` = 1 / (1/forward +
1/decoding), the rate of the two stages one after the other on all cores (the ceiling when
both need every core); ``split_bound`` = the best split's min(forward on k cores, decoding
on n - k) and ``e2e_over_split_bound``; ``speedup_vs_baseline`` = default / baseline.

``--precision`` runs every kind but the baseline at another precision than embed's default.
When the precision is int8 (``--precision int8``, or embed's default on a CPU with VNNI and
no AMX), each set and s is quantised once, as ``embed``'s first run at that s does, by a
child of its own (``int8_quantised_in_seconds``) into the run's own int8 cache, from which
every measured child then loads it, as a user's runs after the first do.

    .venv/bin/python benchmarks/embed_pipeline.py --trunk resnet50 --resolutions 224,500 \\
        --images 96 --output docs/benchmarks/embed_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from embed_throughput import (
    describe_set,
    find_photos,
    forward_batch,
    forward_rate,
    make_set,
    run_baseline,
)
from PIL import Image

from multigrain.data import inference_loading
from multigrain.data.inference_loading import (
    decoded_batches,
    default_batch_size,
    default_num_workers,
)
from multigrain.inference import embed as embed_module
from multigrain.inference import embed_job
from multigrain.inference.embed import DEFAULT_PRECISION, embed_collection
from multigrain.inference.fast_trunk import fast_trunk_for
from multigrain.inference.store import EmbeddingMetadata
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.models.weights import load_model
from multigrain.runtime.allocator import loaded_allocator, preload_environment
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.distributed import DistributedContext, resolve_device
from multigrain.runtime.machine import describe_machine, usable_cores
from multigrain.runtime.openmp import choose_wait_policy
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision

CAMERA_ROOTS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
CAMERA_MIN_PIXELS = 3_000_000
CAMERA_SHAPE = (4032, 3024)
KINDS = ("baseline", "default", "decode", "profile", "split")
QUANTISE = "quantise"  # int8 only, before the others: fills the run's int8 cache


# --- the photo sets --------------------------------------------------------------------------
def package_of(path: Path) -> str:
    """The Debian package that installed `path` (dpkg -S), or '?'."""
    found = subprocess.run(["dpkg", "-S", str(path)], capture_output=True, text=True)
    return found.stdout.split(":")[0] if found.returncode == 0 else "?"


def camera_photos(roots: tuple[Path, ...] = CAMERA_ROOTS) -> list[Path]:
    """Distinct JPEGs of >= 3 MP under `roots`, sorted."""
    found = []
    for root in roots:
        if root.is_dir():
            found += find_photos(root, 0)
    chosen = []
    for path in found:
        with Image.open(path) as image:
            if image.width * image.height >= CAMERA_MIN_PIXELS:
                chosen.append(path)
    if not chosen:
        raise SystemExit(
            "no camera-size JPEG found: sudo apt-get install mate-backgrounds "
            "lomiri-wallpapers ukui-wallpapers (scripts/setup-system.sh installs them)"
        )
    return chosen


def same_shape_copies(photos: list[Path], folder: Path) -> list[Path]:
    """Each photo centre-cropped to 4:3 and resized to CAMERA_SHAPE, JPEG q92 in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = CAMERA_SHAPE
    made = []
    for index, path in enumerate(photos):
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        scale = max(width / image.width, height / image.height)
        resized = image.resize((round(image.width * scale), round(image.height * scale)))
        left, top = (resized.width - width) // 2, (resized.height - height) // 2
        target = folder / f"camera-{index:03d}.jpg"
        resized.crop((left, top, left + width, top + height)).save(target, quality=92)
        made.append(target)
    return made


def camera_manifest(photos: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in photos:
        with Image.open(path) as image:
            size = image.size
        rows.append(
            {"file": str(path), "package": package_of(path), "size": list(size),
             "megabytes": round(path.stat().st_size / 2**20, 2)}
        )  # fmt: skip
    return rows


# --- the profile -----------------------------------------------------------------------------
class _StageLog:
    """Appends "stage seconds" lines to one file per process (workers are forked)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def add(self, stage: str, seconds: float) -> None:
        with open(self.folder / f"stages-{os.getpid()}.txt", "a") as file:
            file.write(f"{stage} {seconds}\n")

    def timed(self, stage: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(stage, time.perf_counter() - start)

        return wrapper

    def timed_iterator(self, stage: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            iterator = iter(function(*args, **kwargs))
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    self.add(stage, time.perf_counter() - start)
                    return
                self.add(stage, time.perf_counter() - start)
                yield item

        return wrapper

    def totals(self) -> dict[str, Any]:
        main, workers = defaultdict(float), defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        for file in self.folder.glob("stages-*.txt"):
            is_main = file.name == f"stages-{os.getpid()}.txt"
            for line in file.read_text().splitlines():
                stage, seconds = line.split()
                (main if is_main else workers)[stage] += float(seconds)
                calls[stage] += 1
        return {
            "main_process_seconds": {k: round(v, 3) for k, v in sorted(main.items())},
            "worker_seconds": {k: round(v, 3) for k, v in sorted(workers.items())},
            "calls": dict(sorted(calls.items())),
        }


def instrument(log: _StageLog) -> None:
    """Wrap the pipeline's stage functions where embed_collection and its workers call them."""
    inference_loading.decode_image = log.timed("decode", inference_loading.decode_image)  # type: ignore[assignment]
    inference_loading.resize_longest_side = log.timed(  # type: ignore[assignment]
        "resize", inference_loading.resize_longest_side
    )
    inference_loading.to_uint8_tensor = log.timed("to_tensor", inference_loading.to_uint8_tensor)  # type: ignore[assignment]
    embed_module.decoded_batches = log.timed_iterator("wait", embed_module.decoded_batches)  # type: ignore[assignment]
    embed_module.embed_batch = log.timed("forward", embed_module.embed_batch)  # type: ignore[assignment]
    embed_job.ShardWriter.flush = log.timed("write", embed_job.ShardWriter.flush)  # type: ignore[method-assign]
    embed_module.store.merge_shards = log.timed("write", embed_module.store.merge_shards)  # type: ignore[assignment]


# --- one child -------------------------------------------------------------------------------
def precision_of(device: torch.device) -> InferencePrecision:
    """embed's default precision here, or --precision (MULTIGRAIN_BENCH_PRECISION)."""
    return resolve_inference_precision(
        os.environ.get("MULTIGRAIN_BENCH_PRECISION") or DEFAULT_PRECISION, device
    )


def trunk_of(model: MultiGrain, resolution: int, device: torch.device) -> Any:
    """The trunk embed runs at precision_of(device); int8: from the benchmark's int8 cache,
    which the first call fills."""
    return fast_trunk_for(model, precision_of(device), device=device, resolution=resolution)


def decode_workers(device: torch.device) -> int:
    """The decoding processes: embed's default, or --decode-workers (MULTIGRAIN_BENCH_WORKERS)."""
    chosen = os.environ.get("MULTIGRAIN_BENCH_WORKERS")
    return int(chosen) if chosen else default_num_workers(device)


def run_default(
    model: MultiGrain, paths: list[Path], output: Path, resolution: int, device: torch.device
) -> dict[str, Any]:
    """embed_collection with its defaults; seconds include the trunk's set-up."""
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    used = precision_of(device)
    metadata = EmbeddingMetadata(
        model="benchmark", resolution=resolution, exponent=float(model.pool.p),
        whitened=False, dim=model.embedding_dim, precision=used.value,
    )  # fmt: skip
    first: list[float] = []
    forward = embed_module.embed_batch

    def noting_first(*args: Any, **kwargs: Any) -> Any:
        result = forward(*args, **kwargs)
        if not first:
            first.append(time.perf_counter())
        return result

    embed_module.embed_batch = noting_first  # type: ignore[assignment]
    start = time.perf_counter()
    embed_collection(
        model, paths, output_dir=output, metadata=metadata, precision=used, context=context,
        batch_size=default_batch_size(device), num_workers=decode_workers(device),
        progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    embed_module.embed_batch = forward  # type: ignore[assignment]
    return {
        "precision": used.value,
        "workers": decode_workers(device),
        "batch": default_batch_size(device),
        "seconds": round(seconds, 3),
        "first_batch_seconds": round(first[0] - start, 3) if first else None,
        "images_per_second": round(len(paths) / seconds, 2),
    }


def run_decode(
    paths: list[Path], resolution: int, device: torch.device, workers: int | None = None
) -> dict[str, Any]:
    """The default DataLoader decoding and batching (default workers), no model."""
    workers = decode_workers(device) if workers is None else workers
    start = time.perf_counter()
    count = 0
    for indices, _ in decoded_batches(
        paths, resolution=resolution, batch_size=default_batch_size(device),
        num_workers=workers, max_pixels=10**9, on_failure=lambda i, r: None, device=device,
    ):  # fmt: skip
        count += len(indices)
    seconds = time.perf_counter() - start
    return {
        "workers": workers,
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_second": round(count / seconds, 2),
    }


def split_threads(cores: int) -> list[int]:
    """The model's share k of `cores` tried by the split measurement (decoding: cores - k)."""
    return sorted(
        {k for k in (1, cores // 4, cores // 2, 3 * cores // 4, cores - 1) if 0 < k < cores}
    )


def run_split(
    model: MultiGrain, paths: list[Path], resolution: int, device: torch.device
) -> dict[str, Any]:
    """Forward alone on k threads and decoding alone on cores - k workers, per split k."""
    cores = usable_cores()
    batch = forward_batch(paths, resolution, default_batch_size(device))
    rows = []
    for threads in split_threads(cores):
        torch.set_num_threads(threads)  # before the trunk: onnxruntime takes it at opening
        trunk = trunk_of(model, resolution, device)
        forward = forward_rate(model, "default", trunk, batch, device)
        decode = run_decode(paths, resolution, device, workers=cores - threads)
        rows.append({
            "forward_threads": threads,
            "forward_images_per_second": forward["images_per_second"],
            "decode_workers": cores - threads,
            "decode_images_per_second": decode["images_per_second"],
            "bound": min(forward["images_per_second"], decode["images_per_second"]),
        })  # fmt: skip
    best = max(rows, key=lambda row: row["bound"]) if rows else None
    return {"cores": cores, "splits": rows, "best": best}


def child(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    output = Path(args.child_output)
    output.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(args.child_folder).glob("*.jpg"))
    resolution, kind = args.child_resolution, args.child_kind
    if kind == "decode":
        result = run_decode(paths, resolution, device)
    else:
        model = load_model(args.checkpoint).model.to(device).eval()
        if kind == "baseline":
            start = time.perf_counter()
            run_baseline(model, paths, resolution, output)
            seconds = time.perf_counter() - start
            result = {
                "seconds": round(seconds, 3),
                "images_per_second": round(len(paths) / seconds, 2),
            }
        elif kind == "split":
            result = run_split(model, paths, resolution, device)
        elif kind == QUANTISE:  # a user's first run at this s; every later one loads it
            start = time.perf_counter()
            trunk_of(model, resolution, device)
            result = {"seconds": round(time.perf_counter() - start, 2)}
        elif kind == "default":
            result = run_default(model, paths, output, resolution, device)
            batch = forward_batch(paths, resolution, default_batch_size(device))
            trunk = trunk_of(model, resolution, device)
            result["forward"] = forward_rate(model, "default", trunk, batch, device)
        else:  # profile
            log = _StageLog(output)
            instrument(log)
            result = run_default(model, paths, output / "descriptors", resolution, device)
            result["stages"] = log.totals()
    result["allocator"] = Path(loaded_allocator() or "glibc malloc").name
    result["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset")
    (output / "result.json").write_text(json.dumps(result))


def child_environment(kind: str) -> dict[str, str]:
    """The environment `multigrain embed` runs in, for every kind but the baseline.

    The command preloads tcmalloc/jemalloc when installed (runtime/allocator.py) and
    chooses how torch's threads wait from the machine's load (runtime/openmp.py); a child
    started with sys.executable gets neither unless given here (on the 2-core EPYC the forward at
    s = 500 reached 0.63-0.67 of the bf16 matmul rate on glibc malloc, against 0.88-0.93
    under tcmalloc in embed_throughput.json). The baseline is a user's plain script: the
    system allocator and the caller's environment.
    """
    if kind == "baseline":
        return preload_environment(setting="system")
    environment = preload_environment(setting="auto")
    choose_wait_policy(environment)
    return environment


def run_child(
    kind: str, folder: Path, output: Path, resolution: int, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child-kind", kind, "--child-folder", str(folder),
        "--child-output", str(output), "--child-resolution", str(resolution),
        "--checkpoint", str(args.checkpoint), "--device", args.device,
    ]  # fmt: skip
    environment = child_environment(kind)
    if args.decode_workers is not None:
        environment["MULTIGRAIN_BENCH_WORKERS"] = str(args.decode_workers)
    if args.precision is not None:
        environment["MULTIGRAIN_BENCH_PRECISION"] = args.precision
    if args.resolved_precision == "int8":  # the run's own cache, filled by QUANTISE
        environment["MULTIGRAIN_CACHE_DIR"] = str(args.int8_cache)
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"{kind} on {folder} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads((output / "result.json").read_text())
    return result


# --- the run ---------------------------------------------------------------------------------
def headline(measured: dict[str, Any]) -> dict[str, Any]:
    default, decode = measured["default"], measured["decode"]
    best = measured["split"]["best"]
    forward = default["forward"]["images_per_second"]
    bound = min(forward, decode["images_per_second"])
    no_overlap = 1 / (1 / forward + 1 / decode["images_per_second"])
    return {
        "baseline_images_per_second": measured["baseline"]["images_per_second"],
        "default_images_per_second": default["images_per_second"],
        "forward_alone_images_per_second": forward,
        "decode_alone_images_per_second": decode["images_per_second"],
        "bound": round(bound, 2),
        # the rate if the two stages did not overlap at all (one after the other)
        "no_overlap": round(no_overlap, 2),
        "e2e_over_bound": round(default["images_per_second"] / bound, 3),
        "e2e_over_no_overlap": round(default["images_per_second"] / no_overlap, 3),
        "split_bound": best["bound"] if best else None,
        "split": (
            f"{best['forward_threads']} model + {best['decode_workers']} decoding" if best else None
        ),
        "e2e_over_split_bound": (
            round(default["images_per_second"] / best["bound"], 3) if best else None
        ),
        "speedup_vs_baseline": round(
            default["images_per_second"] / measured["baseline"]["images_per_second"], 2
        ),
        "forward_fraction_of_bf16_matmul": default["forward"]["fraction_of_bf16_matmul"],
        "default_allocator": default.get("allocator"),
    }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _split_cell(h: dict[str, Any]) -> str:
    return "—" if h.get("split") is None else f"{h['split']}: {h['split_bound']:.1f}"


def markdown_table(report: dict[str, Any]) -> str:
    lines = [
        "| set | s | baseline | default e2e | × baseline | forward alone | decode alone "
        "| e2e / min(forward, decode) | e2e / no-overlap | best split: bound | e2e / split bound "
        "| forward / bf16 matmul |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        h = row["headline"]
        lines.append(
            f"| {row['set']} | {row['resolution']} | {h['baseline_images_per_second']:.1f} | "
            f"{h['default_images_per_second']:.1f} | {h['speedup_vs_baseline']:.2f} | "
            f"{h['forward_alone_images_per_second']:.1f} | "
            f"{h['decode_alone_images_per_second']:.1f} | {h['e2e_over_bound']:.0%} | "
            f"{h['e2e_over_no_overlap']:.0%} | {_split_cell(h)} | "
            f"{_percent(h.get('e2e_over_split_bound'))} | "
            f"{h['forward_fraction_of_bf16_matmul']:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trunk", default="resnet50")
    parser.add_argument("--checkpoint", type=Path, help="default: a seeded untrained model")
    parser.add_argument("--resolutions", default="224,500")
    parser.add_argument("--images", type=int, default=96, help="files per set")
    parser.add_argument("--sets", default="small,camera,camera-same")
    parser.add_argument("--small-photos", type=Path, default=Path("data/builtin"))
    parser.add_argument(
        "--camera-roots", help="folders searched for camera-size JPEGs (comma-separated)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--decode-workers", type=int, help="decoding processes (default: embed's default)"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "int8"),
        help="the precision of every run but the baseline (default: embed's default)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("runs/bench/embed_pipeline.json"))
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSON report")
    parser.add_argument("--child-kind", choices=(*KINDS, QUANTISE), help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--child-resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_kind:
        child(args)
        return
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "benchmark": "embed_pipeline",
        "command": " ".join(["benchmarks/embed_pipeline.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "device": str(device),
        "trunk": args.trunk,
        "torch": torch.__version__,
        "decode_workers": args.decode_workers or default_num_workers(device),
        "results": [],
    }
    args.resolved_precision = report["precision"] = (
        args.precision or resolve_inference_precision(DEFAULT_PRECISION, device).value
    )
    with tempfile.TemporaryDirectory(prefix="embed-pipeline-") as tmp:
        root = Path(tmp)
        args.int8_cache = root / "int8-cache"
        if args.checkpoint is None:
            torch.manual_seed(0)
            model = MultiGrain(trunk=args.trunk, num_classes=1000)
            args.checkpoint = save_checkpoint(
                root / "model.pt",
                {"model_state": model.state_dict(), "architecture": model.architecture()},
            )
            report["checkpoint"] = "untrained, seeded (speed does not depend on the weights)"
        else:
            report["checkpoint"] = str(args.checkpoint)
        wanted = [s for s in args.sets.split(",") if s]
        roots = (
            tuple(Path(r) for r in args.camera_roots.split(","))
            if args.camera_roots
            else CAMERA_ROOTS
        )
        camera = camera_photos(roots) if {"camera", "camera-same"} & set(wanted) else []
        if camera:
            report["camera_photos"] = camera_manifest(camera)
        sources = {
            "small": lambda: find_photos(args.small_photos, 0),
            "camera": lambda: camera,
            "camera-same": lambda: same_shape_copies(camera, root / "camera-same-sources"),
        }
        for name in wanted:
            photos = sources[name]()
            if not photos:
                raise SystemExit(f"no photos for set {name}: run make setup (data/builtin)")
            folder = root / f"set-{name}"
            paths = make_set(photos, args.images, folder)
            for resolution in (int(v) for v in args.resolutions.split(",") if v):
                row: dict[str, Any] = {
                    "set": name, "resolution": resolution, "photos": describe_set(photos, paths)
                }  # fmt: skip
                measured = {}
                if args.resolved_precision == "int8":
                    output = root / f"out-{name}-{resolution}-{QUANTISE}"
                    row["int8_quantised_in_seconds"] = run_child(
                        QUANTISE, folder, output, resolution, args
                    )["seconds"]
                for kind in KINDS:
                    output = root / f"out-{name}-{resolution}-{kind}"
                    measured[kind] = run_child(kind, folder, output, resolution, args)
                    print(
                        json.dumps({"set": name, "s": resolution, kind: measured[kind]}), flush=True
                    )
                row.update(measured)
                row["headline"] = headline(measured)
                report["results"].append(row)
    text = json.dumps(report, indent=2)
    print(markdown_table(report))
    atomic_write_text(args.output, text + "\n")


if __name__ == "__main__":
    main()
