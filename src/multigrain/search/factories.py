"""Which faiss factory an index gets when none is asked for: Flat, then compressed.

Below :data:`COMPRESSED_FROM` vectors, "Flat": exact, and small (2 KB a 512-d vector).
From it on, :data:`COMPRESSED` with nlist scaled to the size: an IVF shortlist of 4-bit
fast-scan PQ codes (d/16 bytes), rescored from 8-bit codes of the vector projected on its
160 directions of largest second moment (160 bytes), with no float32 copy -- ~190 bytes a
vector instead of 2,048 + 2,048 (Flat's own codes plus the re-ranking copy). On the hard
synthetic 1M x 512 set of ``benchmarks/search_scale.py`` it is measured in
``docs/benchmarks/search_compressed_1m.json``.
"""

from __future__ import annotations

import math

COMPRESSED_FROM = 250_000
"""Vectors from which the default is compressed. Flat at 250k x 512 is 500 MB and
answers ~70 queries/s on 2 cores; the compressed index is ~45 MB but approximate."""

COMPRESSED = "IVF{nlist},PQ{pq}x4fs,Refine(PCAR{refine_dim},SQ8)"
REFINE_DIM = 160  # refine code: 160 bytes; PCA stage trained uncentred (refine.train)
MAX_NLIST = 4096
PQ_BYTES_PER_SUBVECTOR = 16  # PQ{d/16}x4fs: 4 bits for every 8 dimensions


def default_factory(num_vectors: int, dim: int) -> str:
    """The factory for an index of `num_vectors` `dim`-d vectors when none is given.

    "Flat" below :data:`COMPRESSED_FROM`; else :data:`COMPRESSED` with nlist the power of
    two nearest 4 sqrt(N) (at most 4096 and N / 39: 4096 at 1M, 2048 at 250k) and PQ{dim/16} (the
    fast-scan shortlist needs `dim` to be a multiple of 32; a whitened index's d + 1 is not,
    so it stays Flat: pass --factory to choose).
    """
    if num_vectors < COMPRESSED_FROM or dim % 32 != 0 or dim < 2 * REFINE_DIM:
        return "Flat"
    nlist = min(
        MAX_NLIST,
        2 ** round(math.log2(4 * math.sqrt(num_vectors))),
        2 ** int(math.log2(num_vectors // 39)),  # faiss wants >= 39 training rows a list
    )
    return COMPRESSED.format(nlist=nlist, pq=dim // PQ_BYTES_PER_SUBVECTOR, refine_dim=REFINE_DIM)
