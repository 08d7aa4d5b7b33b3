"""Start-up of the service: the index, then the model set up to embed queries as it was built.

The index's metadata says how its descriptors were made: resolution s, exponent p,
whitening, precision and (for a bundle) the model. :func:`open_service` loads the model
with :func:`multigrain.inference.prepare.prepare_model` at that s and p, builds the fast
trunk at that precision (``fast_trunk_for``; fp32 for an index that records none) and
returns the shared :class:`~multigrain.service.state.Service`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from multigrain.data.listing import missing_relative_paths
from multigrain.inference.fast_trunk import fast_trunk_for, with_trunk
from multigrain.inference.prepare import DEFAULT_RESOLUTION, prepare_model
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision
from multigrain.search.descriptors import check_compatible
from multigrain.search.index_lock import lock_for_serving
from multigrain.search.index_store import load_index
from multigrain.search.threshold import load_threshold
from multigrain.service.decode_budget import DecodeBudget, default_budget
from multigrain.service.scratch import open_scratch
from multigrain.service.state import Service

logger = logging.getLogger(__name__)

#: Precision of the queries' forward for an index whose metadata records none.
FALLBACK_PRECISION = InferencePrecision.FP32


def open_service(
    *,
    checkpoint: Path | None,
    index_folder: Path,
    data_dir: Path,
    token: str | None,
    max_upload_bytes: int,
    max_pixels: int,
    device: str | torch.device = "cpu",
    precision: InferencePrecision | str | None = None,
    max_batch: int = 16,
    batch_wait_s: float = 0.005,
    request_timeout: float | None = None,
    decode_memory_bytes: int | None = None,
) -> Service:
    """Load the index and its model once -> the service's state (see the module docstring).

    `precision` None: the one the index records; `decode_memory_bytes` None: one RGB image
    at `max_pixels` (decode_budget.default_budget). Raises MultiGrainError with the fix when
    the token is blank, another process holds the index folder, or the model cannot embed
    queries the way the index was built. Call ``Service.close()`` when done with it.
    """
    if request_timeout is not None and request_timeout <= 0:
        raise MultiGrainError(f"request timeout must be > 0 seconds, got {request_timeout}")
    if token is not None and not token.strip():
        raise MultiGrainError(
            "the token is empty, which would let anyone edit the index: give a non-empty "
            "token, or none to serve without one"
        )
    if decode_memory_bytes is not None and decode_memory_bytes < 1:
        raise MultiGrainError(f"the decode memory must be >= 1 byte, got {decode_memory_bytes}")
    # absolute: index_store opens its sqlite file by URI, which a relative path cannot be
    index_folder, data_dir = index_folder.resolve(), data_dir.resolve()
    decode_memory_bytes = decode_memory_bytes or default_budget(max_pixels)
    index_lock = lock_for_serving(index_folder)  # before loading: nobody changes it under us
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(index_lock.release)  # a failed start leaves the folder free
        index = load_index(index_folder)
        warn_of_missing_relative_paths(index.paths, index_folder)
        metadata = index.metadata  # None: an index built without any (s = 500, p the model's)
        whitened = metadata is not None and metadata.whitened
        resolution = metadata.resolution if metadata is not None else DEFAULT_RESOLUTION
        torch_device = torch.device(device)
        if checkpoint is None and metadata is not None and metadata.bundle:
            checkpoint = Path(metadata.bundle)
        prepared = prepare_model(
            checkpoint, resolution=resolution,
            exponent=metadata.exponent if metadata is not None else None,
            use_bundle_whitening=whitened, device=torch_device,
        )  # fmt: skip
        for note in prepared.notes:
            logger.warning("%s", note)
        if whitened and prepared.whitening is None:
            raise MultiGrainError(
                f"the index {index_folder} holds whitened descriptors, but the model has no "
                "whitening at its s and p*: serve the model bundle that embedded it, or build the "
                "index from unwhitened embeddings"
            )
        if precision is None:
            precision = metadata.precision if metadata is not None else FALLBACK_PRECISION
        used = resolve_inference_precision(precision, torch_device)
        if metadata is not None:  # a query must be described as the indexed images were
            check_compatible(
                metadata, prepared.embedding_metadata(used), what=f"the index {index_folder}"
            )
        trunk = fast_trunk_for(prepared.model, used, device=torch_device, resolution=resolution)
        if metadata is not None:  # int8: the quantisation that embedded the index, or none
            check_compatible(
                metadata, with_trunk(prepared.embedding_metadata(used), trunk),
                what=f"the index {index_folder}",
            )  # fmt: skip
        (data_dir / "uploads").mkdir(parents=True, exist_ok=True)
        stored = load_threshold(index_folder)
        if stored is not None and stored.background is not None:
            logger.warning("the threshold of %s is on normalised scores: not applied", index_folder)
            stored = None
        logger.info(
            "serving %d images at s=%d, p=%g, %s", len(index), resolution,
            float(prepared.model.pool.p), used.value,
        )  # fmt: skip
        scratch = open_scratch(data_dir / "tmp")
        service = Service(
            index_lock=index_lock,
            scratch=scratch,
            decode_budget=DecodeBudget(decode_memory_bytes),
            model=prepared.model,
            trunk=trunk,
            classes=list(prepared.classes),
            index=index,
            index_folder=index_folder,
            data_dir=data_dir,
            resolution=resolution,
            token=token,
            max_upload_bytes=max_upload_bytes,
            max_pixels=max_pixels,
            device=torch_device,
            request_timeout=request_timeout,
            threshold=stored.threshold if stored is not None else prepared.threshold,
            whitening=prepared.whitening,
            max_batch=max_batch,
            batch_wait_s=batch_wait_s,
        )
        on_failure.pop_all()  # the service holds the lock from here
    return service


def warn_of_missing_relative_paths(paths: Sequence[str], index_folder: Path) -> None:
    """Log when the index's relative paths (indexes built before paths were stored
    absolute) do not exist from the current folder: their thumbnails would be 410s."""
    missing = missing_relative_paths(paths)
    if missing:
        logger.warning(
            "%s lists images by paths relative to the folder it was built in, and %s does "
            "not exist from %s: start the server in that folder, or rebuild the index with "
            "`multigrain index build` (which now stores absolute paths)",
            index_folder, missing[0], Path.cwd(),
        )  # fmt: skip
