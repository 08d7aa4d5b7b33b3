"""End-to-end embedding throughput: real JPEG photos on disk -> descriptors on disk.

For each resolution s, every mode runs in a fresh child process, one after another, on
the same N files:

- ``baseline``: written plainly below, the way the paper authors' evaluation did: PIL
  full decode, resize to longest side s, fp32 NCHW model, one image at a time, the
  descriptors saved with ``np.save`` at the end;
- ``default``: ``multigrain embed``'s defaults (embed_collection: precision auto, the
  default decoding workers and batch size, shards, merge);
- ``fp32``, ``bf16``: the default pipeline at that precision;
- ``int8``: the default pipeline with ``--precision int8`` (onnxruntime), from an empty
  int8 cache (export, calibration and quantisation timed); ``int8:cached=1`` with this
  model already quantised at this s, as every run after the first finds it (loading
  timed; multigrain/inference/int8_cache.py);
- ``compile``: the default pipeline with its trunk through ``torch.compile`` (:func:`compiled`:
  inductor, freezing, dynamic shapes), from an empty inductor cache; the warm-up
  (compiling at the first batch) is timed apart as ``warmup_seconds`` and counted in
  ``seconds``; ``compile:cached=1`` with inductor's cache already holding the kernels.
  Not a mode of `multigrain embed`: README "Inference speed" gives the figures that kept
  it out.

A mode may carry settings: ``default:workers=0``, ``default:threads=1``,
``default:batch=64``, ``default:nice=10`` (decoding workers' priority),
``default:allocator=system`` (glibc malloc instead of the tcmalloc/jemalloc that the
``multigrain`` command preloads when installed, see multigrain/runtime/allocator.py; the baseline
always runs on glibc malloc). Timed ("seconds"):
from the list of files to the descriptor files written, including the pipeline's start-up
(batch-norm folding, int8 export, calibration and quantisation, torch.compile warm-up,
decoding workers) but not the Python/torch import or the model's construction, which every
mode shares. "forward": the model alone on one batch of the set's most common shape (batch
1 for the baseline), its FLOPs counted by torch.utils.flop_counter, as GFLOP/s and as a
fraction of a 2048x2048 bf16 matmul timed in the same child just before. "peak_rss_mib":
the child's peak resident memory (os.wait4: the largest of the process and its decoding
workers). "cosine_to_baseline": agreement of each mode's descriptors with the baseline's
(min and mean over images).

Photos: the JPEG files under --photos (default data/builtin, made by
``multigrain build-benchmark``; its AugLy copy-detection queries excluded), distinct by
content, with longest side >= s (none is upscaled), hard-linked (else copied) under new
names until there are N files. The JSON says how many distinct photos that took.

    .venv/bin/python benchmarks/embed_throughput.py --trunk resnet50 --resolutions 224,500 \\
        --images 400 --modes baseline,default,fp32,int8,compile \\
        --memory-images 1000,10000 --memory-modes default,default:allocator=system \\
        --output runs/bench/embed_throughput.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from multigrain.data import inference_loading
from multigrain.data.inference_loading import (
    DecodedImages,
    default_batch_size,
    default_num_workers,
)
from multigrain.data.resize import normalise
from multigrain.inference.embed import DEFAULT_PRECISION, embed_batch, embed_collection
from multigrain.inference.fast_trunk import TorchTrunk, fast_trunk_for
from multigrain.inference.path_lists import PATHS_FILE, paths_text, read_paths
from multigrain.inference.store import EmbeddingMetadata
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import save_checkpoint
from multigrain.models.weights import load_model
from multigrain.runtime.allocator import loaded_allocator, preload_environment
from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.distributed import DistributedContext, resolve_device
from multigrain.runtime.machine import describe_machine
from multigrain.runtime.precision import resolve_inference_precision

MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
FLOAT_MODES = {"default": DEFAULT_PRECISION.value, "fp32": "fp32", "bf16": "bf16"}
MODES = ("baseline", *FLOAT_MODES, "int8", "compile")


# --- the photo set ---------------------------------------------------------------------------
def find_photos(root: Path, min_side: int) -> list[Path]:
    """Distinct (by content) JPEG photos under `root` with longest side >= min_side."""
    seen, found = set(), []
    for path in sorted(root.rglob("*")):
        if "queries" in path.parts or not path.is_file():
            continue
        try:
            with Image.open(path) as image:
                if image.format != "JPEG" or max(image.size) < min_side:
                    continue
        except OSError:
            continue
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            found.append(path)
    return found


def make_set(photos: list[Path], count: int, folder: Path) -> list[Path]:
    """`count` files in `folder` cycling through `photos` (hard links, else copies)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        target = folder / f"{index:06d}.jpg"
        try:
            os.link(photos[index % len(photos)], target)
        except OSError:
            shutil.copyfile(photos[index % len(photos)], target)
        paths.append(target)
    return paths


def describe_set(photos: list[Path], paths: list[Path]) -> dict[str, Any]:
    sides = sorted(max(Image.open(p).size) for p in photos)
    return {
        "images": len(paths),
        "distinct_photos": len(photos),
        "longest_side_min_median_max": [sides[0], sides[len(sides) // 2], sides[-1]],
        "megabytes": round(sum(p.stat().st_size for p in paths) / 2**20, 1),
    }


# --- the baseline, written plainly -----------------------------------------------------------
@torch.no_grad()
def run_baseline(model: MultiGrain, paths: list[Path], resolution: int, output: Path) -> None:
    """PIL full decode, bicubic resize, fp32 NCHW, one image at a time, np.save at the end."""
    device = next(model.parameters()).device
    rows = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        scale = resolution / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255
        x = ((x - MEAN) / STD)[None].to(device)
        embedding, _ = model(x)
        rows.append(F.normalize(embedding, dim=1)[0].cpu().numpy())
    output.mkdir(parents=True, exist_ok=True)
    np.save(output / "descriptors.npy", np.stack(rows))
    (output / PATHS_FILE).write_text(paths_text(str(p) for p in paths), encoding="utf-8")


# --- one mode, in a child process -----------------------------------------------------------
def parse_mode(mode: str) -> tuple[str, dict[str, Any]]:
    """'default:workers=0,allocator=system' -> ('default', {'workers': 0, ...})."""
    name, _, settings = mode.partition(":")
    if name not in MODES:
        raise SystemExit(f"unknown mode {name!r}: choose from {', '.join(MODES)}")
    values = dict(item.split("=") for item in settings.split(",") if item)
    return name, {k: v if k == "allocator" else int(v) for k, v in values.items()}


def child_environment(mode: str) -> dict[str, str]:
    """The environment a mode's child runs in: the allocator `multigrain` would preload."""
    name, settings = parse_mode(mode)
    if name == "baseline":
        return preload_environment(setting="system")
    return preload_environment(setting=settings.get("allocator", "auto"))


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048) -> float:
    """Best of 10 timed (size x size) @ (size x size) products, in GFLOP/s."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(12):
        synchronise(device)
        start = time.perf_counter()
        a @ b
        synchronise(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def forward_rate(
    model: MultiGrain, name: str, trunk: Any, batch: torch.Tensor, device: torch.device,
    matmul_size: int = 2048,
) -> dict[str, Any]:  # fmt: skip
    """The model alone on `batch` (uint8 (B, 3, H, W)): images/s, GFLOP/s, share of matmul."""
    from torch.utils.flop_counter import FlopCounterMode

    images = normalise(batch).to(device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images[:1].float())
    flops = counter.get_total_flops()
    if name == "baseline":
        images = images[:1]

        def step() -> None:
            model(images)
    else:

        def step() -> None:
            model.pool(trunk(images).float())

    matmul = matmul_gflops(device, torch.bfloat16, matmul_size)
    with torch.no_grad():
        step()  # warm-up (and compilation)
        times = []
        for _ in range(3):
            synchronise(device)
            start = time.perf_counter()
            step()
            synchronise(device)
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[1]
    gflops = flops * len(images) / seconds / 1e9
    return {
        "shape": list(images.shape),
        "gflop_per_image": round(flops / 1e9, 3),
        "images_per_second": round(len(images) / seconds, 2),
        "gflops": round(gflops, 1),
        f"bf16_matmul_{matmul_size}_gflops": round(matmul, 1),
        "fraction_of_bf16_matmul": round(gflops / matmul, 3),
    }


def forward_batch(paths: list[Path], resolution: int, size: int) -> torch.Tensor:
    """Up to `size` decoded images (uint8) of the most common shape among the first 256."""
    decoded = DecodedImages(paths[:256], resolution, 10**9)
    images = [
        image for _, image, _ in (decoded[i] for i in range(len(decoded))) if image is not None
    ]
    shape = Counter(tuple(image.shape) for image in images).most_common(1)[0][0]
    return torch.stack([image for image in images if tuple(image.shape) == shape][:size])


class _Compiled(torch.nn.Module):
    """`module` through torch.compile with inductor's freezing on.

    Freezing is patched into inductor's config around each call: given as
    ``torch.compile(options={"freezing": True})`` the ResNet-50 bf16 forward gained 1.1x
    under glibc malloc, set this way 1.34x in the same run. The first call is padded to
    16 images: compiled on a batch of 2 or 3, the bf16 graph was specialised on that
    batch size and recompiled for every other.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.graph = torch.compile(module, dynamic=True)
        self.first = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._inductor import config as inductor_config

        if self.first and x.shape[0] < 16:
            pad = x.new_zeros((16 - x.shape[0], *x.shape[1:]))
            padded = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        else:
            padded = x
        self.first = False
        with inductor_config.patch(freezing=True):
            out: torch.Tensor = self.graph(padded)
        return out[: x.shape[0]]


def compiled(trunk: TorchTrunk) -> TorchTrunk:
    """`trunk` with its module through :class:`_Compiled`."""
    return TorchTrunk(_Compiled(trunk.module), trunk.device, trunk.precision)


def run_mode(
    mode: str, model: MultiGrain, paths: list[Path], output: Path, *, resolution: int,
    device: torch.device, forward: bool = True, matmul_size: int = 2048,
) -> dict[str, Any]:  # fmt: skip
    """One mode, timed end to end (see the module docstring); returns its measurements."""
    name, settings = parse_mode(mode)
    if "threads" in settings:
        torch.set_num_threads(settings["threads"])
    if "nice" in settings:
        inference_loading.CPU_DECODE_NICENESS = settings["nice"]
    result: dict[str, Any] = {
        "mode": mode,
        "threads": torch.get_num_threads(),
        "allocator": Path(loaded_allocator() or "glibc malloc").name,
    }
    if name == "compile":  # inductor's kernel cache of this child: cold, or warmed first
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-cache-")
        warm_batch = forward_batch(paths, resolution, 2)  # decoded before the clock starts
        if settings.get("cached"):
            warm_trunk = fast_trunk_for(model, DEFAULT_PRECISION, device=device)
            assert isinstance(warm_trunk, TorchTrunk)
            embed_batch(model, compiled(warm_trunk), warm_batch)
            torch._dynamo.reset()  # the next compile starts over, from the disk cache
    if name == "int8":  # this child's own cache: cold, or warmed before the clock starts
        os.environ["MULTIGRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="int8-cache-")
        if settings.get("cached"):
            fast_trunk_for(model, "int8", device=device, resolution=resolution)
    start = time.perf_counter()
    trunk = None
    if name == "baseline":
        run_baseline(model, paths, resolution, output)
        result["precision"] = "fp32"
    else:
        precision = "int8" if name == "int8" else FLOAT_MODES.get(name, DEFAULT_PRECISION.value)
        used = resolve_inference_precision(precision, device)
        trunk = fast_trunk_for(model, used, device=device, resolution=resolution)
        if name == "compile":  # warmed up on one batch, timed apart
            assert isinstance(trunk, TorchTrunk)
            trunk = compiled(trunk)
            warm = time.perf_counter()
            embed_batch(model, trunk, warm_batch)
            result["warmup_seconds"] = round(time.perf_counter() - warm, 2)
        result["setup_seconds"] = round(time.perf_counter() - start, 2)
        if name == "int8":
            result["int8_model"] = "loaded from the cache" if trunk.from_cache else "quantised"
        workers = settings.get("workers", default_num_workers(device))
        metadata = EmbeddingMetadata(
            model="benchmark", resolution=resolution, exponent=float(model.pool.p),
            whitened=False, dim=model.embedding_dim, precision=used.value,
        )  # fmt: skip
        embed_collection(
            model, paths, output_dir=output, metadata=metadata, precision=used, trunk=trunk,
            context=DistributedContext(rank=0, world_size=1, local_rank=0, device=device),
            batch_size=settings.get("batch", default_batch_size(device)), num_workers=workers,
            progress=False,
        )  # fmt: skip
        result.update(precision=used.value, workers=workers)
    seconds = time.perf_counter() - start
    result.update(seconds=round(seconds, 2), images_per_second=round(len(paths) / seconds, 2))
    if forward:
        batch = forward_batch(paths, resolution, settings.get("batch", default_batch_size(device)))
        result["forward"] = forward_rate(model, name, trunk, batch, device, matmul_size)
    if device.type == "cuda":
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def child(args: argparse.Namespace) -> None:
    """The body of a child process: one mode on one folder, result.json in its output."""
    device = resolve_device(args.device)
    model = load_model(args.checkpoint).model.to(device).eval()
    output = Path(args.child_output)
    result = run_mode(
        args.child_mode, model, sorted(Path(args.child_folder).glob("*.jpg")), output,
        resolution=args.child_resolution, device=device, forward=not args.no_forward,
        matmul_size=args.matmul_size,
    )  # fmt: skip
    (output / "result.json").write_text(json.dumps(result))


def run_child(
    mode: str, folder: Path, output: Path, resolution: int, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--child-mode", mode, "--child-folder", str(folder),
        "--child-output", str(output), "--child-resolution", str(resolution),
        "--checkpoint", str(args.checkpoint), "--device", args.device,
        "--matmul-size", str(args.matmul_size), *(["--no-forward"] if args.no_forward else []),
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, env=child_environment(mode))
    assert process.stderr is not None
    errors = process.stderr.read()  # read before waiting: a full pipe would block the child
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mode {mode} failed:\n{errors.decode()[-3000:]}")
    result: dict[str, Any] = json.loads((output / "result.json").read_text())
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    return result


def agreement(output: Path, reference: Path) -> dict[str, float]:
    """Cosine between a mode's descriptors and the baseline's, row by row (same paths)."""
    mine = np.load(output / "descriptors.npy")
    theirs = np.load(reference / "descriptors.npy")
    if read_paths(output / PATHS_FILE) != read_paths(reference / PATHS_FILE):
        raise SystemExit(f"{output} and {reference} list different images")
    cosine = (mine * theirs).sum(axis=1)
    return {"min": round(float(cosine.min()), 5), "mean": round(float(cosine.mean()), 5)}


# --- the whole run ---------------------------------------------------------------------------
def markdown_table(report: dict[str, Any]) -> str:
    """The README's table from a finished report."""
    lines = [
        "| s | mode | precision | images/s | × baseline | set-up s | images/s after set-up "
        "(× baseline) | forward GFLOP/s (share of bf16 matmul) | peak RSS MiB "
        "| cosine to baseline (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        for m in row["modes"]:
            if "skipped" in m:
                lines.append(f"| {row['resolution']} | {m['mode']} | {m['skipped']} |||||||")
                continue
            forward = m.get("forward", {})
            share = (
                f"{forward['gflops']:.0f} ({forward['fraction_of_bf16_matmul']:.0%})"
                if forward
                else "–"
            )
            cosine = m.get("cosine_to_baseline", {}).get("min", "–")
            after = (
                f"{m['images_per_second_after_setup']:.1f} ({m['speedup_after_setup']})"
                if "images_per_second_after_setup" in m
                else "–"
            )
            lines.append(
                f"| {row['resolution']} | {m['mode']} | {m['precision']} | "
                f"{m['images_per_second']:.1f} | {m.get('speedup_vs_baseline', '–')} | "
                f"{m.get('setup_seconds', '–')} | {after} | {share} | "
                f"{m.get('peak_rss_mib', '–')} | {cosine} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trunk", default="resnet50")
    parser.add_argument("--checkpoint", type=Path, help="default: a seeded untrained model")
    parser.add_argument("--resolutions", default="224,500")
    parser.add_argument("--images", type=int, default=400, help="files per resolution")
    parser.add_argument("--modes", default="baseline,default,fp32,int8,compile")
    parser.add_argument("--photos", type=Path, default=Path("data/builtin"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory-images", default="", help="e.g. 1000,10000 images")
    parser.add_argument(
        "--memory-modes", default="default", help="e.g. default,default:allocator=system"
    )
    parser.add_argument("--memory-resolution", type=int, default=224)
    parser.add_argument("--no-forward", action="store_true", help="skip the forward timing")
    parser.add_argument("--matmul-size", type=int, default=2048, help="reference matmul side")
    parser.add_argument("--in-process", action="store_true", help="no child processes (no RSS)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench/embed_throughput.json"))
    parser.add_argument("--table", type=Path, help="print the markdown table of a JSON report")
    parser.add_argument("--child-mode", help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-output", help=argparse.SUPPRESS)
    parser.add_argument("--child-resolution", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_mode:
        child(args)
        return
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    modes = [m for m in args.modes.split(",") if m]
    for mode in modes:
        parse_mode(mode)
    device = resolve_device(args.device)
    report: dict[str, Any] = {
        "benchmark": "embed_throughput",
        "command": " ".join(["benchmarks/embed_throughput.py", *sys.argv[1:]]),
        "machine": describe_machine(),
        "trunk": args.trunk,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "default_precision_here": resolve_inference_precision(DEFAULT_PRECISION, device).value,
        "timed": "files -> descriptors on disk, incl. pipeline start-up; excl. import and "
        "model construction",
        "photos": str(args.photos),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="embed-throughput-") as tmp:
        root = Path(tmp)
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
        in_process_model = None
        if args.in_process:
            in_process_model = load_model(args.checkpoint).model.to(device).eval()
        for resolution in (int(v) for v in args.resolutions.split(",") if v):
            photos = find_photos(args.photos, resolution)
            if not photos:
                raise SystemExit(f"no JPEG photo under {args.photos} with a side >= {resolution}")
            folder = root / f"s{resolution}"
            paths = make_set(photos, args.images, folder)
            row: dict[str, Any] = {"resolution": resolution, "set": describe_set(photos, paths)}
            outputs, row["modes"] = {}, []
            for index, mode in enumerate(modes):
                if parse_mode(mode)[0] == "int8" and device.type != "cpu":
                    row["modes"].append({"mode": mode, "skipped": "int8 runs on the CPU only"})
                    continue
                outputs[mode] = root / f"out-{resolution}-{index}"
                if in_process_model is not None:
                    measured = run_mode(
                        mode, in_process_model, paths, outputs[mode], resolution=resolution,
                        device=device, forward=not args.no_forward, matmul_size=args.matmul_size,
                    )  # fmt: skip
                else:
                    measured = run_child(mode, folder, outputs[mode], resolution, args)
                row["modes"].append(measured)
                print(json.dumps({"resolution": resolution, **measured}), flush=True)
            if "baseline" in outputs:
                base = next(m for m in row["modes"] if m["mode"] == "baseline")
                for measured in row["modes"]:
                    if "skipped" in measured:
                        continue
                    measured["speedup_vs_baseline"] = round(
                        measured["images_per_second"] / base["images_per_second"], 2
                    )
                    if measured.get("setup_seconds") is not None:  # set-up paid once: a long run
                        after = len(paths) / (measured["seconds"] - measured["setup_seconds"])
                        measured["images_per_second_after_setup"] = round(after, 2)
                        measured["speedup_after_setup"] = round(
                            after / base["images_per_second"], 2
                        )
                    measured["cosine_to_baseline"] = agreement(
                        outputs[measured["mode"]], outputs["baseline"]
                    )
            report["results"].append(row)
        if args.memory_images:
            report["memory"] = memory_check(args, root)
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_text(args.output, text + "\n")


def memory_check(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Peak RSS of each --memory-modes mode on growing collections (same photos, more files)."""
    photos = find_photos(args.photos, args.memory_resolution)
    modes = [m for m in args.memory_modes.split(",") if m]
    for mode in modes:
        parse_mode(mode)
    rows = []
    for count in (int(v) for v in args.memory_images.split(",")):
        folder = root / f"memory{count}"
        make_set(photos, count, folder)
        for index, mode in enumerate(modes):
            measured = run_child(
                mode, folder, root / f"memory-out-{count}-{index}", args.memory_resolution,
                argparse.Namespace(**{**vars(args), "no_forward": True}),
            )  # fmt: skip
            rows.append({"images": count, **measured})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(folder)
    ratios = {}
    for mode in modes:
        peaks = [row["peak_rss_mib"] for row in rows if row["mode"] == mode]
        ratios[mode] = round(max(peaks) / min(peaks), 3)
    return {
        "resolution": args.memory_resolution,
        "runs": rows,
        "largest_over_smallest_peak_rss": ratios,
    }


if __name__ == "__main__":
    main()
