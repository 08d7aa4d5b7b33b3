"""Which kernel faiss' OpenBLAS runs: one for this CPU, not the SSE3 fallback.

faiss-cpu 1.15.1 bundles OpenBLAS 0.3.15 (DYNAMIC_ARCH), which does not know recent CPUs:
on the 2-core AMD EPYC with AVX-512 that runs the benchmarks it picks its *Prescott*
(SSE3) kernel, and every sgemm faiss does -- Flat search, IVF list assignment, k-means
training -- runs ~3x slower than it could: 1000 queries x 50,000 x 512 inner products
(IndexFlatIP, one thread, load ~6 from other jobs) took 4.5-4.8 s with Prescott, 1.4-1.7 s
with SkylakeX, 1.5 s with Haswell (docs/benchmarks/search_compressed_explore.json,
`openblas_kernels`). numpy's own, newer OpenBLAS picks SkylakeX there by itself.

The `multigrain` command sets ``OPENBLAS_CORETYPE`` before faiss is loaded (OpenBLAS reads
it once, when it loads): SKYLAKEX on a CPU with the AVX-512 subsets that kernel uses,
HASWELL on one with AVX2 and FMA, nothing otherwise; a value the user set wins. Python
code that imports faiss itself can set the same variable first.
"""

from __future__ import annotations

import os
from collections.abc import Collection, MutableMapping
from pathlib import Path

SETTING = "OPENBLAS_CORETYPE"
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512bw", "avx512dq", "avx512vl"})
HASWELL_FLAGS = frozenset({"avx2", "fma"})


def kernel_for(flags: Collection[str]) -> str | None:
    """The OpenBLAS core type for a CPU with these /proc/cpuinfo `flags` (None: no opinion)."""
    if SKYLAKEX_FLAGS <= set(flags):
        return "SKYLAKEX"
    if HASWELL_FLAGS <= set(flags):
        return "HASWELL"
    return None


def prefer_native_kernel(
    environment: MutableMapping[str, str] | None = None, flags: Collection[str] | None = None
) -> str | None:
    """Set OPENBLAS_CORETYPE in `environment` (default os.environ) for this CPU (`flags`,
    default read from /proc/cpuinfo) unless it is set; returns the value now set, if any.
    Call it before faiss (or numpy) is imported."""
    env = os.environ if environment is None else environment
    if SETTING in env:
        return env[SETTING]
    kernel = kernel_for(_cpu_flags() if flags is None else flags)
    if kernel is not None:
        env[SETTING] = kernel
    return kernel


def _cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def faiss_openblas_core() -> str | None:
    """The kernel the OpenBLAS bundled with faiss-cpu runs in this process (loads faiss),
    e.g. "SkylakeX" or "Prescott"; None without a bundled OpenBLAS."""
    import ctypes

    import faiss

    folder = Path(faiss.__file__).parent.parent / "faiss_cpu.libs"
    libraries = sorted(folder.glob("libopenblas*")) if folder.is_dir() else []
    if not libraries:
        return None
    library = ctypes.CDLL(str(libraries[0]))  # the one faiss loaded: same path, same handle
    library.openblas_get_corename.restype = ctypes.c_char_p
    return str(library.openblas_get_corename().decode())
