"""Which compressed faiss index reaches Flat's top-1 at ~10 % of its memory? (exploration)

Same hard synthetic data as ``search_scale.py`` (its `synthetic`, same defaults). For each
factory: train on min(size, 40 x nlist) rows, add every row, then for each (nprobe,
k_factor) setting search the 1000 queries in one call (k = 10) and compare the top-1 with
exact inner-product search. Factories built by :mod:`multigrain.search.refine`'s
``new_base_index`` + ``train`` (PCA stages trained uncentred, see there), *without* the
float32 re-ranking copy: `index_mb` is the whole index as faiss serialises it.

All IVF factories of one dimension share one trained coarse quantizer (k-means is the
slow part of training and identical across them), so `train_s` excludes it for all but
the first. `shortlist_has_top1`: how often the exact top-1 is among the base index's
k_factor x k candidates (what the refine stage can at best recover).

With --codecs (';'-separated factories of flat codes, e.g. "PCAR160,SQ8;PQ128"), no index
is searched: each codec is trained on 100,000 rows (uncentred PCA), and each query's
*exact* top 100 are encoded, decoded and rescored: `recall_at_1_top100` is how often the
exact top-1 stays first, the best a refine stage with that code can do after a perfect
shortlist (cheap: only the candidates are encoded).

Usage:
    python benchmarks/search_compressed_explore.py --size 200000 --threads 1 \\
        --output docs/benchmarks/search_compressed_explore.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from search_scale import NUM_QUERIES, synthetic

from multigrain.runtime.atomic import atomic_write_text
from multigrain.runtime.machine import describe_machine
from multigrain.runtime.openblas import faiss_openblas_core
from multigrain.search import refine

K = 10
DEFAULT_FACTORIES = (
    "IVF{nlist},PQ64x4fs,Refine(PCAR160,SQ8)",
    "IVF{nlist},PQ32x4fs,Refine(PCAR160,SQ8)",
    "IVF{nlist},PQ64x4fs,Refine(PQ128)",
    "IVF{nlist},PQ64x4fs,Refine(SQ4)",
)


@dataclass(frozen=True)
class Row:
    size: int
    factory: str
    nprobe: int
    k_factor: float
    train_s: float
    add_s: float
    index_mb: float
    bytes_per_vector: float
    queries_per_s: float
    shortlist_has_top1: float  # exact top-1 among the base index's k_factor x k
    recall_at_1: float
    recall_at_10: float


def _set(index: Any, nprobe: int) -> None:
    faiss.ParameterSpace().set_index_parameter(index, "nprobe", nprobe)


def _search(index: Any, queries: np.ndarray, k_factor: float) -> tuple[np.ndarray, float]:
    params = faiss.IndexRefineSearchParameters()
    params.k_factor = k_factor
    start = time.perf_counter()
    _, rows = index.search(queries, K, params=params)
    return rows, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--nlist", type=int, default=4096)
    parser.add_argument("--factories", default=";".join(DEFAULT_FACTORIES), help="';'-separated")
    parser.add_argument("--codecs", default="", help="';'-separated: refine codes only")
    parser.add_argument("--nprobes", default="16,32,64")
    parser.add_argument("--k-factors", default="4,10,25")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    started = time.perf_counter()
    data, queries, _ = synthetic(
        args.size, clusters=1000, spread=0.8, query_noise=0.5, decay=1.0, seed=args.seed
    )
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    start = time.perf_counter()
    _, truth = exact.search(queries, K)
    flat_qps = NUM_QUERIES / (time.perf_counter() - start)
    flat_mb = len(faiss.serialize_index(exact)) / 2**20
    del exact
    print(f"Flat {flat_qps:.1f} q/s, {flat_mb:.1f} MB", file=sys.stderr)
    if args.codecs:
        codec_rows = _codec_rows(data, queries, args)
        _write(args, started, {"codec_results": codec_rows})
        return 0
    nlist = refine.ivf_lists(args.size, args.nlist)
    rng = np.random.default_rng(args.seed)
    train_rows = min(args.size, 40 * nlist)
    sample = data[np.sort(rng.choice(args.size, train_rows, replace=False))]
    quantizers: dict[int, Any] = {}
    rows: list[Row] = []
    for pattern in args.factories.split(";"):
        factory = pattern.format(nlist=nlist)
        index = refine.new_base_index(data.shape[1], factory)
        ivf = faiss.extract_index_ivf(index)
        if ivf.d in quantizers:  # reuse the trained k-means centroids
            ivf.quantizer = quantizers[ivf.d]
            ivf.own_fields = False
        start = time.perf_counter()
        refine.train(index, sample)
        train_s = time.perf_counter() - start
        if ivf.d not in quantizers:  # a copy: the index owns (and frees) its own
            quantizers[ivf.d] = faiss.clone_index(ivf.quantizer)
        start = time.perf_counter()
        index.add(data)
        add_s = time.perf_counter() - start
        size_mb = len(faiss.serialize_index(index)) / 2**20
        for nprobe in (int(n) for n in args.nprobes.split(",")):
            _set(index, nprobe)
            for k_factor in (float(f) for f in args.k_factors.split(",")):
                found, elapsed = _search(index, queries, k_factor)
                overlap = [len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)]
                _, shortlist = index.base_index.search(queries, int(k_factor * K))
                has_top1 = np.mean([t in s for t, s in zip(truth[:, 0], shortlist, strict=True)])
                row = Row(
                    size=args.size, factory=factory, nprobe=nprobe, k_factor=k_factor,
                    train_s=round(train_s, 1), add_s=round(add_s, 1),
                    index_mb=round(size_mb, 1),
                    bytes_per_vector=round(size_mb * 2**20 / args.size, 1),
                    queries_per_s=round(NUM_QUERIES / elapsed, 1),
                    shortlist_has_top1=float(has_top1),
                    recall_at_1=float(np.mean(found[:, 0] == truth[:, 0])),
                    recall_at_10=round(float(np.mean(overlap)) / K, 4),
                )  # fmt: skip
                print(f"  {row}", file=sys.stderr)
                rows.append(row)
        del index
    _write(args, started, {
        "nlist": nlist,
        "train_rows": train_rows,
        "flat": {"queries_per_s": round(flat_qps, 1), "index_mb": round(flat_mb, 1)},
        "results": [asdict(r) for r in rows],
    })  # fmt: skip
    return 0


def _codec_rows(data: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Rescore each query's exact top 100 with every codec's decoded vectors."""
    exact = faiss.IndexFlatIP(data.shape[1])
    exact.add(data)
    _, top = exact.search(queries, 100)
    del exact
    rng = np.random.default_rng(args.seed)
    sample = data[np.sort(rng.choice(len(data), min(len(data), 100_000), replace=False))]
    unique, inverse = np.unique(top, return_inverse=True)
    result = []
    for factory in args.codecs.split(";"):
        codec = refine.new_base_index(data.shape[1], factory)
        start = time.perf_counter()
        refine.train(codec, sample)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        codes = codec.sa_encode(data[unique])
        decoded = codec.sa_decode(codes)[inverse.reshape(top.shape)]
        encode_us = (time.perf_counter() - start) / len(unique) * 1e6
        scores = np.einsum("qd,qkd->qk", queries, decoded)
        row = {
            "size": len(data), "codec": factory, "code_bytes": int(codes.shape[1]),
            "recall_at_1_top100": float(np.mean(scores.argmax(1) == 0)),
            "recall_at_1_top10": float(np.mean(scores[:, :10].argmax(1) == 0)),
            "train_s": round(train_s, 1), "encode_decode_us_per_vector": round(encode_us, 1),
        }  # fmt: skip
        print(f"  {row}", file=sys.stderr)
        result.append(row)
    return result


def _write(args: argparse.Namespace, started: float, fields: dict[str, Any]) -> None:
    report = {
        "command": " ".join(["python", *sys.argv]),
        "machine": describe_machine(),
        "faiss_version": faiss.__version__,
        "faiss_openblas_core": faiss_openblas_core(),  # OPENBLAS_CORETYPE, runtime/openblas.py
        "faiss_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "size": args.size,
        "total_s": round(time.perf_counter() - started, 1),
        **fields,
    }
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
