"""Start-up of `multigrain embed`: from the command's start to its first image embedded.

Each timed run is a fresh `multigrain embed FOLDER -o OUT` with the built-in model on a
folder of --images small JPEGs (320x240, seeded), as a subprocess of this script; every
source tree given (``--before``: the code to compare against, ``--after``: this checkout's
by default) runs the same cases, round-robin with ``python -c "import torch"`` (the floor of any
command that loads torch), so that the machine's background load hits them alike. On a
shared machine read the minimum.

How a run is timed: the command runs through PROBE below, i.e. ``python -c PROBE embed ...``
with PYTHONPATH set to the source tree, which does what the `multigrain` console script does
(``multigrain.cli.main.main()``, the allocator re-exec included) after installing an
import hook that wraps a few library functions to write a time stamp when they are called
and return (nothing else changes). Command start is this script's clock just before the
subprocess starts; "first_embedded" is when the first call of
``multigrain.inference.embed.embed_batch`` returns (its batch holds the first images
embedded: 1, or all 8 when they share a shape); "exit" is when the process has exited
(outputs merged and written). The phases, in seconds from command start, come from the
run with the smallest first_embedded: ``torch_imported``, ``torchvision_imported`` (when it
is), ``imports_done`` (the embed command's body starts: init_distributed is called),
``model_load`` (cli.loading.prepare), ``trunk_build`` (inference.fast_trunk.fast_trunk_for),
``loader_start`` (data.inference_loading.decoded_batches called: worker processes start),
``first_decode`` (the first image decoded, in whichever process), ``first_batch``
(embed_batch's first call). One more run of each tree, untimed, under
``python -X importtime`` gives the cumulative import seconds of the heaviest packages.
``--env KEY=VALUE`` adds, for every tree, one that runs with that environment setting
(e.g. ``OMP_WAIT_POLICY=PASSIVE``, which the `multigrain` command sets itself from
runtime/openmp.py on: the before tree with it separates that from the other changes).

Rerun (the "before" tree: a worktree of the commit to compare against, b04011e for
docs/benchmarks/embed_startup.json; about 6 minutes on 2 cores):

    git worktree add --detach /tmp/multigrain-before b04011e
    .venv/bin/python benchmarks/embed_startup.py --before /tmp/multigrain-before/src \\
        --env OMP_WAIT_POLICY=PASSIVE --repeats 7 --output docs/benchmarks/embed_startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from multigrain.runtime.machine import describe_machine

TRACE = "MULTIGRAIN_STARTUP_TRACE"

# Run as `python -c PROBE embed ...`: time stamps (label, pid, time.time()) appended to the
# file $MULTIGRAIN_STARTUP_TRACE, the first call of each label per process only.
PROBE = r"""
import os, sys, time
_path = os.environ["MULTIGRAIN_STARTUP_TRACE"]
_seen = set()
def mark(label):
    if (label, os.getpid()) not in _seen:
        _seen.add((label, os.getpid()))
        with open(_path, "a") as file:
            file.write(f"{label}\t{os.getpid()}\t{time.time():.6f}\n")
def timed(function, label, end=True):
    def wrapper(*args, **kwargs):
        mark(label + "_start")
        result = function(*args, **kwargs)
        if end:
            mark(label + "_end")
        return result
    return wrapper
def patch(name, module):
    if name in ("torch", "torchvision"):
        mark(name + "_imported")
    elif name == "multigrain.cli.loading":
        module.prepare = timed(module.prepare, "model_load")
    elif name == "multigrain.runtime.distributed":
        module.init_distributed = timed(module.init_distributed, "imports_done", end=False)
    elif name == "multigrain.inference.fast_trunk":
        module.fast_trunk_for = timed(module.fast_trunk_for, "trunk_build")
    elif name == "multigrain.data.inference_loading":
        module.decoded_batches = timed(module.decoded_batches, "loader_start", end=False)
        module.DecodedImages.__getitem__ = timed(module.DecodedImages.__getitem__, "first_decode")
    elif name == "multigrain.inference.embed":
        module.embed_batch = timed(module.embed_batch, "first_batch")
WATCHED = {"torch", "torchvision", "multigrain.cli.loading", "multigrain.runtime.distributed",
           "multigrain.inference.fast_trunk", "multigrain.data.inference_loading",
           "multigrain.inference.embed"}
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name not in WATCHED:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            patch(name, module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Watch())
mark("python_started" if "_MULTIGRAIN_ALLOCATOR_PID" not in os.environ else "python_reexecuted")
from multigrain.cli.main import main
main()
"""

PHASES = (
    "python_started", "python_reexecuted", "torch_imported", "torchvision_imported",
    "imports_done_start", "model_load_start", "model_load_end", "loader_start_start",
    "trunk_build_start", "trunk_build_end", "first_decode_start", "first_decode_end",
    "first_batch_start", "first_batch_end",
)  # fmt: skip
HEAVY_IMPORTS = (
    "torch", "torchvision", "torch._dynamo", "sympy", "numpy", "PIL", "typer", "safetensors",
)  # fmt: skip


@dataclass(frozen=True)
class Tree:
    """A source tree to time, and environment settings its runs get."""

    source: Path
    environment: dict[str, str]


def make_images(folder: Path, count: int) -> Path:
    """`folder`, made to hold `count` seeded 320x240 JPEGs (colour ramps plus noise)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:240, 0:320]
    for index in range(count):
        ramp = np.stack([x * (index + 1) % 256, y * 2 % 256, (x + y) % 256], axis=-1)
        pixels = np.clip(ramp + rng.normal(0, 12, ramp.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index}.jpg", quality=90)
    return folder


def run_embed(tree: Tree, images: Path, scratch: Path) -> dict[str, float]:
    """One timed `multigrain embed` of folder `images` from `tree`: phase -> seconds."""
    source = tree.source
    trace, output = scratch / "trace.tsv", scratch / "out"
    trace.unlink(missing_ok=True)
    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, **tree.environment, "PYTHONPATH": str(source), TRACE: str(trace)}
    argv = [sys.executable, "-c", PROBE, "embed", str(images), "-o", str(output)]
    start = time.time()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    exit_time = time.time()
    if result.returncode != 0:
        raise SystemExit(f"embed from {source} failed:\n{result.stderr.decode()[-3000:]}")
    phases = {"exit": exit_time - start}
    main_pid = None
    for line in trace.read_text().splitlines():
        label, pid, stamp = line.split("\t")
        main_pid = main_pid or pid  # the first line is the command's own process
        key = label if pid == main_pid or label.startswith("first_decode") else None
        if key is not None and key not in phases:
            phases[key] = float(stamp) - start
    return phases


def time_torch_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def import_profile(tree: Tree, images: Path, scratch: Path) -> dict[str, float]:
    """Cumulative import seconds of HEAVY_IMPORTS and all imports (-X importtime, untimed)."""
    source = tree.source
    output = scratch / "out-importtime"
    shutil.rmtree(output, ignore_errors=True)
    env = {**os.environ, **tree.environment, "PYTHONPATH": str(source)}
    env["MULTIGRAIN_ALLOCATOR"] = "system"  # one process: the report holds each import once
    argv = [sys.executable, "-X", "importtime", "-m", "multigrain", "embed"]
    result = subprocess.run(
        [*argv, str(images), "-o", str(output)], env=env, capture_output=True, text=True
    )
    seconds: dict[str, float] = {}
    total = 0.0
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        cumulative, name = line.split("|")[1:]
        if not cumulative.strip().isdigit():  # the header line
            continue
        if not name.startswith("  "):  # top level: nested imports are inside its time
            total += int(cumulative) / 1e6
        if name.strip() in HEAVY_IMPORTS:
            seconds[name.strip()] = round(int(cumulative) / 1e6, 3)
    return {"all_imports": round(total, 3), **seconds}


def git_commit(source: Path) -> str | None:
    result = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    commit = result.stdout.strip() or None
    return f"{commit}+changes" if commit and dirty else commit


def summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    first = [run["first_batch_end"] for run in runs]
    fastest = runs[first.index(min(first))]
    return {
        "first_embedded_min_s": round(min(first), 3),
        "first_embedded_median_s": round(statistics.median(first), 3),
        "exit_min_s": round(min(run["exit"] for run in runs), 3),
        "exit_median_s": round(statistics.median(run["exit"] for run in runs), 3),
        "runs": len(runs),
        "phases_of_fastest_run_s": {
            key: round(fastest[key], 3) for key in (*PHASES, "exit") if key in fastest
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parents[1] / "src"
    parser.add_argument("--before", type=Path, help="source tree (src/) to compare against")
    parser.add_argument("--after", type=Path, default=here, help="source tree [this checkout]")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE",
        help="also run every tree with this environment setting (repeatable: all together)",
    )  # fmt: skip
    parser.add_argument("--images", default="1,8", help="images per command, comma-separated")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/embed_startup.json"))
    args = parser.parse_args()

    sources = {"after": args.after.resolve()}
    if args.before is not None:
        sources = {"before": args.before.resolve(), **sources}
    trees = {name: Tree(source, {}) for name, source in sources.items()}
    if args.env:
        extra = dict(setting.split("=", 1) for setting in args.env)
        label = " ".join(args.env)
        trees |= {f"{name} {label}": Tree(source, extra) for name, source in sources.items()}
    counts = [int(part) for part in args.images.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        images = {count: make_images(scratch / f"images{count}", count) for count in counts}
        cases = [(tree, count) for tree in trees for count in counts]
        for tree, count in cases:  # warm the file cache and check each runs; not timed
            run_embed(trees[tree], images[count], scratch)
        timed: dict[tuple[str, int], list[dict[str, float]]] = {case: [] for case in cases}
        floor: list[float] = []
        load_before = os.getloadavg()
        for _ in range(args.repeats):
            floor.append(time_torch_import())
            for tree, count in cases:
                timed[tree, count].append(run_embed(trees[tree], images[count], scratch))
        load_after = os.getloadavg()
        imports = {
            tree: import_profile(trees[tree], images[min(counts)], scratch) for tree in trees
        }
    results = {
        tree: {
            "source": str(trees[tree].source),
            "commit": git_commit(trees[tree].source),
            "environment": trees[tree].environment,
            "imports_s": imports[tree],
            **{f"{count}_images": summarise(timed[tree, count]) for count in counts},
        }
        for tree in trees
    }
    report: dict[str, Any] = {
        "benchmark": "embed_startup",
        "command": "multigrain embed FOLDER -o OUT: built-in model, defaults, 320x240 JPEGs",
        "timing": "command start -> first embed_batch returned; round-robin; minimum and median",
        "import_torch_min_s": round(min(floor), 3),
        "import_torch_median_s": round(statistics.median(floor), 3),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
        "machine": describe_machine(),
        "trees": results,
    }
    if "before" in results:  # every other tree against the code before, by the minimum
        report["over_before"] = {
            tree: {
                f"{count}_images": round(
                    results[tree][f"{count}_images"]["first_embedded_min_s"]
                    / results["before"][f"{count}_images"]["first_embedded_min_s"],
                    3,
                )
                for count in counts
            }
            for tree in results
            if tree != "before"
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"import torch: min {report['import_torch_min_s']:.3f} s")
    for tree, row in results.items():
        for count in counts:
            summary = row[f"{count}_images"]
            print(
                f"{tree:<12} {count} images: first embedded min "
                f"{summary['first_embedded_min_s']:.3f} s, exit min {summary['exit_min_s']:.3f} s"
            )
    print(f"-> {args.output}")


if __name__ == "__main__":
    main()
