"""Defaults of the embedding job, free of torch: `multigrain embed --help` shows them.

Shared by the CLI, :mod:`multigrain.inference.embed` (which re-exports them) and
benchmarks/embed_throughput.py (what "our default" runs); the batch size is
``data.inference_loading.default_batch_size(device)``.
"""

from __future__ import annotations

from multigrain.runtime.precision_kinds import InferencePrecision

#: Descriptors per shard: 8 MiB of buffer at D = 2048. The buffer (and its copy when a shard
#: is written) is the part of embed's memory that grows with the collection up to this size,
#: so it is kept small; 1,000 shards per million images.
DEFAULT_SHARD_SIZE = 1024
DEFAULT_PRECISION = InferencePrecision.AUTO
