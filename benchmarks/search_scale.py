"""Search speed, memory and recall of ImageIndex factories on hard synthetic descriptors.

Data (seeded, 512-d, L2-normalised, generated in chunks so 1M rows never need a float64
copy): a Gaussian mixture of `--clusters` anisotropic clusters. Every vector lives in one
random rotation with a decaying spectrum (axis i has standard deviation ~ i^-`--decay`,
i^-1 by default, like the PCA spectrum of real CNN descriptors), and each cluster stretches
every axis by its own log-uniform factor in [1/3, 3] and has its own width, so clusters
overlap unevenly. Queries
are 1000 database vectors plus noise drawn from the same spectrum (`--query-noise`, relative
to a database vector's norm): the perturbed source row is often *not* the exact nearest
neighbour, and the top-1 / top-2 score gap is small, so an approximate index must really
search. `difficulty` in the JSON reports, per size, how often Flat's top-1 is the source
row and the median gap between Flat's first and second scores.

Ground truth is Flat (exact). recall@1 = fraction of queries whose top-1 id equals Flat's;
recall@10 = mean overlap of the top-10 with Flat's top-10, divided by 10.

Indexes: Flat; IVF{nlist},Flat; IVF{nlist},PQ64 (with and without exact re-ranking of a 4k
shortlist from the stored float32 descriptors); HNSW32,Flat; OPQ64,IVF{nlist},PQ64 with
--opq. nlist is `--nlist` (4096) capped at the largest power of two <= size / 39, and IVF is
trained on min(size, `--train-per-list` x nlist) rows (faiss wants >= 39 per list): 4096
lists and 163,840 training rows at 1M, 2048 lists at 100k, 256 at 10k. IVF-PQ is trained
without faiss' polysemous code ordering (see multigrain.search.index). Search settings (nprobe,
efSearch; HNSW efConstruction is faiss' default, recorded) are in each result.

With --compressed FACTORY[;FACTORY...] (e.g. "IVF{nlist},PQ32,Refine(PCAR144,SQ8)";
"{nlist}" is replaced), also indexes with their own Refine(...) stage and *no* float32
copy (multigrain.search.refine): for each of --compressed-nprobes
x --compressed-k-factors, the shortlist of k_factor x k from the base index is rescored
from the compressed refine codes (`k_factor` in the result; `rerank_copy_mb` is 0 and
`index_mb` is the whole IndexRefine as written). `--only-compressed` skips the others
except Flat (the ground truth).

With --auto NPROBES (e.g. "32,64,128"), also the factory `index build` picks by default at
each size (`--factory auto`, multigrain.search.refine.auto_factory: Flat below 250,000,
from there an IVF of 6-bit RaBitQ codes of a 3/8-d uncentred PCA, no float32 copy),
searched at each nprobe; `factory` in the result is the one it resolved to.

Timings: `train_s` (ImageIndex.trained: k-means, PQ codebooks), `add_s` (ImageIndex.add:
assignment / encoding / graph insertion, plus the IndexRefineFlat's float32 re-ranking
copy), `queries_per_s` (1000 queries in one call, k = 10). Memory: `index_mb` is the faiss
index as written to disk, `rerank_copy_mb` the float32 descriptors an ImageIndex keeps;
`paths_mb` the index's path table (multigrain.search.path_table; `paths.as_objects_mb`
in the JSON: the same paths as a list of str and a dict, per size, for comparison);
`rss_delta_mb` is the current RSS after the build minus before it; `build_peak_mb` the
highest RSS sampled every 5 ms during the build minus the RSS before it (training
temporaries included); `peak_rss_mb` the process peak so far (ru_maxrss, never decreases).

With --load, each index is also saved and loaded by `load_index` in a fresh Python
process: `load_rss_mb` is that process's RSS after loading minus before (imports done),
`load_s` the loading time: what a `serve` or `search` process holds for the index.

Threads: faiss (OpenMP) uses `--threads` (default: the CPUs this process may run on). On
cores shared with another busy job, OpenMP's spinning barriers make more threads *slower*;
use --threads 1 there.

Usage:
    python benchmarks/search_scale.py --sizes 10000,100000 --output search_scale.json
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.runtime.openblas import faiss_openblas_core
from multigrain.search import refine
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index

DIM = 512
NUM_QUERIES = 1000
K = 10
CHUNK = 100_000
#: The paths the benchmark indexes: as long as a photo library's (~40 characters)
PATH_FORM = "/home/user/Pictures/{0:07d}/IMG_{0:07d}.jpg"


@dataclass(frozen=True)
class Config:
    name: str
    factory: str
    nprobe: int | None = None
    ef_search: int | None = None
    rerank: bool = False
    k_factor: int | None = None  # own-refine shortlist / k (None: the index's own)


@dataclass(frozen=True)
class Measurement:
    size: int
    name: str
    factory: str
    nlist: int | None
    nprobe: int | None
    ef_search: int | None
    ef_construction: int | None
    rerank: bool
    train_rows: int
    train_s: float
    add_s: float
    index_mb: float
    rerank_copy_mb: float
    rss_delta_mb: float
    build_peak_mb: float
    peak_rss_mb: float
    queries_per_s: float
    recall_at_1: float
    recall_at_10: float
    k_factor: int | None = None  # own-refine indexes: shortlist of k_factor x k
    exact_copy: bool = True  # False: the index keeps no float32 copy (own Refine stage)
    paths_mb: float | None = None  # the index's PathTable (paths, offsets, hashes, rows)
    load_rss_mb: float | None = None  # --load: RSS a fresh process holds after load_index
    load_s: float | None = None  # --load: load_index's time in that process


@dataclass(frozen=True)
class Difficulty:
    size: int
    flat_top1_is_source: float  # fraction of queries whose exact top-1 is the perturbed row
    median_top1_top2_gap: float  # median of Flat's score 1 - score 2
    median_top1_score: float


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_freed_memory() -> None:
    """Collect, then hand freed heap pages back to the OS (glibc), so that the next build's
    RSS delta is not hidden by reuse of the previous index's freed memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: deltas may be underestimated
        pass


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RssSampler:
    """Highest current RSS seen every `interval` seconds while the `with` block runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.peak = current_rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, current_rss_mb())


def synthetic(
    size: int, *, clusters: int, spread: float, query_noise: float, decay: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(size, 512) database, (1000, 512) queries, (1000,) source row of each query."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
    spectrum = np.arange(1, DIM + 1, dtype=np.float32) ** -decay
    spectrum /= np.linalg.norm(spectrum)  # a draw (z * spectrum) has expected norm 1
    centres = (rng.standard_normal((clusters, DIM), dtype=np.float32) * spectrum) @ rotation
    stretch = np.exp(rng.uniform(-np.log(3), np.log(3), (clusters, DIM))).astype(np.float32)
    width = (spread * rng.uniform(0.5, 1.5, clusters)).astype(np.float32)
    data = np.empty((size, DIM), dtype=np.float32)
    for start in range(0, size, CHUNK):
        stop = min(start + CHUNK, size)
        member = rng.integers(0, clusters, stop - start)
        z = rng.standard_normal((stop - start, DIM), dtype=np.float32)
        z *= spectrum * stretch[member] * width[member, None]
        chunk = centres[member] + z @ rotation
        data[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    sources = rng.choice(size, NUM_QUERIES, replace=False)
    noise = (rng.standard_normal((NUM_QUERIES, DIM), dtype=np.float32) * spectrum) @ rotation
    queries = data[sources] + query_noise * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data, queries, sources


def compressed_configs(nlist: int, args: argparse.Namespace) -> list[Config]:
    """The --compressed factories at every (nprobe, k_factor) asked for, then --auto's."""
    result = [
        Config(f"auto nprobe{nprobe}", "auto", nprobe=int(nprobe))
        for nprobe in args.auto.split(",")
        if nprobe
    ]
    for pattern in [p for p in args.compressed.split(";") if p]:
        factory = pattern.format(nlist=nlist)
        for nprobe in (int(n) for n in args.compressed_nprobes.split(",")):
            for k_factor in (int(f) for f in args.compressed_k_factors.split(",")):
                name = f"{factory} nprobe{nprobe} k_factor{k_factor}"
                result.append(Config(name, factory, nprobe=nprobe, k_factor=k_factor))
    return result


def configs(nlist: int, *, opq: bool) -> list[Config]:
    ivf_flat, ivf_pq = f"IVF{nlist},Flat", f"IVF{nlist},PQ64"
    result = [
        Config("Flat", "Flat"),
        Config(f"{ivf_flat} nprobe16", ivf_flat, nprobe=16),
        Config(f"{ivf_flat} nprobe64", ivf_flat, nprobe=64),
        Config(f"{ivf_pq} nprobe16", ivf_pq, nprobe=16),
        Config(f"{ivf_pq} nprobe64", ivf_pq, nprobe=64),
        Config(f"{ivf_pq} nprobe64 rerank", ivf_pq, nprobe=64, rerank=True),
    ]
    if opq:
        opq_pq = f"OPQ64,IVF{nlist},PQ64"
        result.append(Config(f"{opq_pq} nprobe64 rerank", opq_pq, nprobe=64, rerank=True))
    result += [
        Config("HNSW32,Flat efSearch64", "HNSW32,Flat", ef_search=64),
        Config("HNSW32,Flat efSearch256", "HNSW32,Flat", ef_search=256),
    ]
    return result


def _inner(index: ImageIndex) -> Any:
    inner = faiss.downcast_index(index.faiss_index)
    if isinstance(inner, faiss.IndexRefine):  # the factory's index is its base
        inner = faiss.downcast_index(inner.base_index)
    while hasattr(inner, "index"):  # IndexPreTransform (OPQ) wrappers
        inner = faiss.downcast_index(inner.index)
    return faiss.downcast_index(inner)


def objects_mb(size: int) -> float:
    """MiB of `size` paths of PATH_FORM held as a list of str plus a path -> row dict."""
    paths = [PATH_FORM.format(i) for i in range(size)]
    total = sys.getsizeof(paths) + sum(sys.getsizeof(p) for p in paths)
    total += sys.getsizeof({p: i for i, p in enumerate(paths)})
    return round(total / 2**20, 1)


#: What a fresh process runs: RSS (VmRSS) before and after load_index, imports done first.
LOAD_CHILD = """
import json, sys, time
from multigrain.search.index_store import load_index
def rss():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024
before = rss()
start = time.perf_counter()
index = load_index(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"rss_mb": round(rss() - before, 1), "load_s": round(seconds, 2)}))
"""


def load_in_fresh_process(index: ImageIndex, folder: Path) -> dict[str, float]:
    """Save `index` (index_store) and load it in a new Python: what a `serve` or `search`
    process holds for it, without this benchmark's data and earlier indexes."""
    target = folder / "saved-index"
    shutil.rmtree(target, ignore_errors=True)
    save_index(index, target)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_CHILD, str(target)], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    shutil.rmtree(target)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def _index_mb(index: ImageIndex, folder: Path) -> float:
    """The base index as index_store writes it (index.faiss; the exact copy is separate), or
    the whole IndexRefine of an index without the copy."""
    path = folder / "index.faiss"
    faiss.write_index(refine.saved_part(index.faiss_index), str(path))
    size = path.stat().st_size / 2**20
    path.unlink()
    return size


def run_size(size: int, args: argparse.Namespace) -> tuple[Difficulty, list[Measurement]]:
    data, queries, sources = synthetic(
        size, clusters=args.clusters, spread=args.spread, query_noise=args.query_noise,
        decay=args.decay, seed=args.seed,
    )  # fmt: skip
    paths = [PATH_FORM.format(i) for i in range(size)]
    nlist = refine.ivf_lists(size, args.nlist)
    train_rows = min(size, args.train_per_list * nlist)
    results: list[Measurement] = []
    truth: np.ndarray | None = None
    difficulty: Difficulty | None = None
    index: ImageIndex | None = None
    built = ""
    train_s = add_s = rss_delta = build_peak = index_mb = 0.0
    chosen = configs(nlist, opq=args.opq)
    if args.only_compressed:
        chosen = chosen[:1]  # Flat: the ground truth
    for config in chosen + compressed_configs(nlist, args):
        if config.factory.startswith("HNSW") and size > args.hnsw_max_size:
            print(f"  skip {config.name} at {size} (> --hnsw-max-size)", file=sys.stderr)
            continue
        if config.factory != built:  # several search settings share one built index
            index = None
            release_freed_memory()
            before = current_rss_mb()
            with RssSampler() as sampler:
                start = time.perf_counter()
                index = ImageIndex.trained(
                    data, factory=config.factory, train_size=train_rows, seed=args.seed
                )
                train_s = time.perf_counter() - start
                start = time.perf_counter()
                index.add(data, paths)
                add_s = time.perf_counter() - start
            rss_delta, build_peak = current_rss_mb() - before, sampler.peak - before
            index_mb = _index_mb(index, args.scratch)
            loaded = load_in_fresh_process(index, args.scratch) if args.load else {}
            built = config.factory
        assert index is not None
        ivf = faiss.try_extract_index_ivf(index.faiss_index)
        nprobe = config.nprobe if ivf is not None else None  # auto may resolve to Flat
        index.set_search_parameters(nprobe=nprobe, ef_search=config.ef_search)
        start = time.perf_counter()
        if config.k_factor is not None:  # own refine stage: its shortlist size
            found = index.search(queries, K, rerank=True, rerank_factor=config.k_factor)
        else:
            found = index.search(queries, K, rerank=config.rerank)
        elapsed = time.perf_counter() - start
        if truth is None:  # Flat comes first
            truth = found.ids
            gaps = found.scores[:, 0] - found.scores[:, 1]
            difficulty = Difficulty(
                size=size,
                flat_top1_is_source=float(np.mean(truth[:, 0] == sources)),
                median_top1_top2_gap=round(float(np.median(gaps)), 5),
                median_top1_score=round(float(np.median(found.scores[:, 0])), 4),
            )
            print(f"  {difficulty}", file=sys.stderr)
        inner = _inner(index)
        overlap = [len(np.intersect1d(a, b)) for a, b in zip(found.ids, truth, strict=True)]
        measurement = Measurement(
            size=size,
            name=config.name,
            factory=index.factory,  # "auto" resolved
            nlist=int(inner.nlist) if hasattr(inner, "nlist") else None,
            nprobe=nprobe,
            ef_search=config.ef_search,
            ef_construction=int(inner.hnsw.efConstruction) if hasattr(inner, "hnsw") else None,
            rerank=config.rerank,
            train_rows=train_rows if "IVF" in index.factory else 0,
            train_s=round(train_s, 2),
            add_s=round(add_s, 2),
            index_mb=round(index_mb, 1),
            rerank_copy_mb=round(index.ntotal * index.faiss_index.d * 4 / 2**20, 1)
            if refine.has_separate_copy(index.faiss_index)
            else 0.0,  # Flat is its own copy
            rss_delta_mb=round(rss_delta, 1),
            build_peak_mb=round(build_peak, 1),
            peak_rss_mb=round(peak_rss_mb(), 1),
            queries_per_s=round(NUM_QUERIES / elapsed, 1),
            recall_at_1=float(np.mean(found.ids[:, 0] == truth[:, 0])),
            recall_at_10=round(float(np.mean(overlap)) / K, 4),
            k_factor=config.k_factor,
            exact_copy=index.has_exact_copy,
            paths_mb=round(index.paths.nbytes / 2**20, 1),
            load_rss_mb=loaded.get("rss_mb"),
            load_s=loaded.get("load_s"),
        )
        print(f"  {measurement}", file=sys.stderr)
        results.append(measurement)
    assert difficulty is not None
    return difficulty, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--nlist", type=int, default=4096, help="IVF lists (capped by size)")
    parser.add_argument("--train-per-list", type=int, default=40, help="IVF training rows")
    parser.add_argument("--hnsw-max-size", type=int, default=10**9)
    parser.add_argument("--opq", action="store_true", help="also OPQ64,IVF,PQ64 (slow to train)")
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.8, help="cluster width / centre norm")
    parser.add_argument("--decay", type=float, default=1.0, help="std of axis i ~ i^-decay")
    parser.add_argument("--query-noise", type=float, default=0.5)
    parser.add_argument("--compressed", default="", help="';'-separated own-refine factories")
    parser.add_argument("--compressed-nprobes", default="32,64")
    parser.add_argument("--compressed-k-factors", default="10,25")
    parser.add_argument("--only-compressed", action="store_true", help="and Flat, no others")
    parser.add_argument("--auto", default="", help="nprobes for `--factory auto`'s index")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--load", action="store_true",
        help="also save each index and measure load_index's RSS and time in a fresh process",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=Path("search_scale.json"))
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    difficulties, results = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = Path(scratch)
        for size in sizes:
            print(f"size {size}", file=sys.stderr)
            size_start = time.perf_counter()
            difficulty, measured = run_size(size, args)
            difficulties.append(difficulty)
            results += measured
            print(f"  size {size} took {time.perf_counter() - size_start:.0f} s", file=sys.stderr)
    report = {
        "dim": DIM,
        "num_queries": NUM_QUERIES,
        "k": K,
        "data": {
            "clusters": args.clusters,
            "spread": args.spread,
            "decay": args.decay,
            "query_noise": args.query_noise,
            "seed": args.seed,
        },  # fmt: skip
        "nlist_wanted": args.nlist,
        "train_per_list": args.train_per_list,
        "faiss_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "faiss_version": faiss.__version__,
        "faiss_openblas_core": faiss_openblas_core(),  # OPENBLAS_CORETYPE, runtime/openblas.py
        "command": " ".join(["python", *sys.argv]),
        "machine": describe_machine(),
        "load_average_at_end": os.getloadavg(),
        "total_s": round(time.perf_counter() - started, 1),
        "paths": {
            "form": PATH_FORM,
            # the same paths as a list of str and a path -> row dict (the layout before
            # PathTable), from sys.getsizeof, per size: what the table is compared with
            "as_objects_mb": {size: objects_mb(size) for size in sizes},
        },
        "difficulty": [asdict(d) for d in difficulties],
        "results": [asdict(r) for r in results],
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
