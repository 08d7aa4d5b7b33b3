"""Search speed, memory and recall of ImageIndex factories on synthetic descriptors.

Data (seeded): `--centres` Gaussian centres in 512-d, each database vector a centre plus
isotropic noise, L2-normalised; 1000 queries are noisy copies of database vectors (the
copy-detection case). Ground truth is the Flat index; recall@1 = fraction of queries whose
top-1 id equals Flat's.

Memory: `rss_delta_mb` is the change of the process' *current* resident set size
(/proc/self/statm) across the build, i.e. what the built ImageIndex holds (faiss index +
the float32 reranking copy + paths), measured after the previous index was freed;
`peak_rss_mb` is the process peak so far (resource.getrusage ru_maxrss), which includes
the dataset itself and training temporaries and never decreases.

IVF lists are capped at train_size // 39 (faiss' minimum of 39 training points per list):
with the default --train-size 10000 that is 256 lists, not 4096. Reason: on a 2-core
machine faiss-cpu 1.15 spends ~130-150 s training PQ64 (8-bit, 512-d) on 10k points, and
training time grows linearly with the sample, so 1M rows with IVF4096 (>= 160k training
points) does not fit a 10-minute sweep there. Use --train-size 160000 --nlist 4096 on a
bigger machine. HNSW at 1M (--hnsw-max-size) was skipped for the same reason.

Usage:
    python benchmarks/search_scale.py --sizes 10000,100000 --output search_scale.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from multigrain.atomic import atomic_write_text
from multigrain.index import ImageIndex

DIM = 512
NUM_QUERIES = 1000


@dataclass(frozen=True)
class Config:
    name: str
    factory: str
    nprobe: int | None = None
    ef_search: int | None = None
    rerank: bool = False


@dataclass(frozen=True)
class Measurement:
    size: int
    name: str
    factory: str
    build_s: float
    rss_delta_mb: float
    peak_rss_mb: float
    queries_per_s: float
    recall_at_1: float


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic(size: int, *, centres: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(size, 512) clustered unit vectors and (1000, 512) noisy copies of some of them."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal((centres, DIM)).astype(np.float32)
    data = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, 100_000):  # stream: no (size, 512) float64 temporary
        stop = min(start + 100_000, size)
        chunk = centre[rng.integers(0, centres, stop - start)]
        chunk += rng.standard_normal((stop - start, DIM), dtype=np.float32)
        data[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    rows = rng.choice(size, NUM_QUERIES, replace=False)
    queries = data[rows] + 0.02 * rng.standard_normal((NUM_QUERIES, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data, queries


def configs(nlist: int) -> list[Config]:
    return [
        Config("Flat", "Flat"),
        Config(f"IVF{nlist},Flat nprobe16", f"IVF{nlist},Flat", nprobe=16),
        Config(f"IVF{nlist},PQ64 nprobe16", f"IVF{nlist},PQ64", nprobe=16),
        Config(f"IVF{nlist},PQ64 nprobe16 rerank", f"IVF{nlist},PQ64", nprobe=16, rerank=True),
        Config("HNSW32 efSearch64", "HNSW32", ef_search=64),
    ]


def run_size(
    size: int, *, nlist: int, train_size: int, hnsw_max_size: int, centres: int, seed: int, k: int
) -> list[Measurement]:
    data, queries = synthetic(size, centres=centres, seed=seed)
    paths = [f"{i}" for i in range(size)]
    results: list[Measurement] = []
    truth: np.ndarray | None = None
    index: ImageIndex | None = None
    built_factory = ""
    build_s = rss_delta = 0.0
    for config in configs(nlist):
        if config.factory == "HNSW32" and size > hnsw_max_size:
            print(f"  skip {config.name} at {size} (> --hnsw-max-size)", file=sys.stderr)
            continue
        if config.factory != built_factory:  # rerank reuses the IVF-PQ index just built
            index = None
            gc.collect()
            before = current_rss_mb()
            start = time.perf_counter()
            index = ImageIndex.build(
                data, paths, factory=config.factory, train_size=train_size, seed=seed
            )
            build_s = time.perf_counter() - start
            rss_delta = current_rss_mb() - before
            built_factory = config.factory
        assert index is not None
        index.set_search_parameters(nprobe=config.nprobe, ef_search=config.ef_search)
        start = time.perf_counter()
        found = index.search(queries, k, rerank=config.rerank)
        elapsed = time.perf_counter() - start
        top1 = found.ids[:, 0]
        if truth is None:
            truth = top1
        measurement = Measurement(
            size=size,
            name=config.name,
            factory=config.factory,
            build_s=round(build_s, 2),
            rss_delta_mb=round(rss_delta, 1),
            peak_rss_mb=round(peak_rss_mb(), 1),
            queries_per_s=round(NUM_QUERIES / elapsed, 1),
            recall_at_1=float(np.mean(top1 == truth)),
        )
        print(f"  {measurement}", file=sys.stderr)
        results.append(measurement)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists")
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--hnsw-max-size", type=int, default=10**9)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("search_scale.json"))
    args = parser.parse_args(argv)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        # faiss wants >= 39 training points per list
        nlist = min(args.nlist, min(size, args.train_size) // 39)
        print(f"size {size} (IVF lists {nlist})", file=sys.stderr)
        results += run_size(
            size,
            nlist=nlist,
            train_size=args.train_size,
            hnsw_max_size=args.hnsw_max_size,
            centres=args.centres,
            seed=args.seed,
            k=args.k,
        )
    report = {
        "dim": DIM,
        "num_queries": NUM_QUERIES,
        "k": args.k,
        "train_size": args.train_size,
        "cpu_count": os.cpu_count(),
        "memory": "rss_delta_mb: /proc/self/statm current RSS across the build; "
        "peak_rss_mb: getrusage ru_maxrss (process peak)",
        "results": [asdict(r) for r in results],
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
