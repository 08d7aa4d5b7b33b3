"""int8 trunks quantised once per model and resolution, then loaded from a cache.

Quantising a trunk (export, calibration, onnxruntime's quantizer) takes 5-11 s for a
ResNet-50 on 2 cores. So the first run with at least :data:`MIN_CALIBRATION_IMAGES`
calibration images stores its quantised model as ``<cache>/int8/<key>.onnx``, with what
made it in ``<key>.json``, and every later run with the same key loads it instead (a
fraction of a second). ``fast_trunk_for`` calibrates on the same synthetic pictures
everywhere (multigrain.data.dead_leaves), so a model quantised anew (another machine, the
cache off) is the same int8 model as long as torch, onnxruntime and numpy give the same
export and arithmetic; where they do not, the fingerprint of the quantised model, recorded
with every int8 output, tells two quantisations apart. The key hashes the trunk's tensors,
the resolution, the quantisation recipe and the onnxruntime version: a retrained model,
another s or another onnxruntime gets its own.
A run with fewer calibration images quantises for itself and stores nothing.

``<cache>``: ``$MULTIGRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/multigrain``, else
``~/.cache/multigrain``. ``MULTIGRAIN_CACHE_DIR=off`` quantises on every run, reading and
writing nothing. Processes that miss the same key at once (the ranks of a ``torchrun``
job) take a lock: one quantises, the others then load its model. A cache folder that
cannot be written is reported and the run goes on uncached; a stored model onnxruntime
cannot open is reported, replaced and quantised again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from multigrain.inference.int8 import OnnxInt8Trunk, import_onnxruntime, open_int8, quantise
from multigrain.runtime.atomic import atomic_write_bytes, atomic_write_text
from multigrain.runtime.errors import MultiGrainError

logger = logging.getLogger(__name__)

CACHE_ENV = "MULTIGRAIN_CACHE_DIR"
#: How a model is quantised, calibration included: part of the key.
RECIPE = (
    "qdq u8 activations, s8 per-channel weights, ranges: mean of per-image min/max, "
    "calibrated on 32 dead-leaves pictures (seed 0); v3"
)
MIN_CALIBRATION_IMAGES = 16


def int8_cache_folder() -> Path | None:
    """Where quantised trunks are kept; None when the cache is turned off."""
    chosen = os.environ.get(CACHE_ENV, "")
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen) / "int8"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "multigrain" / "int8"


def trunk_key(trunk: nn.Module, resolution: int) -> str:
    """A hex key of the trunk's tensors (names, shapes, fp32 values), s, recipe, runtime."""
    onnxruntime = import_onnxruntime()

    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{RECIPE}|onnxruntime {onnxruntime.__version__}|s={resolution}".encode())
    for name, tensor in sorted(trunk.state_dict().items()):
        values = tensor.detach().float().cpu().contiguous()
        digest.update(f"|{name}:{tuple(values.shape)}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()


def cached_int8_trunk(
    trunk: nn.Module,
    calibration: Callable[[], tuple[Sequence[torch.Tensor], str]],
    *,
    resolution: int,
    threads: int | None = None,
) -> OnnxInt8Trunk:
    """The int8 trunk of `trunk` at `resolution`: loaded from the cache, or quantised.

    `calibration()` is called only on a miss; it returns the normalised calibration
    images (each (1, 3, H, W)) and a line saying where they come from (kept in the
    cache's JSON). Raises MultiGrainError as :func:`multigrain.inference.int8.quantise`.
    """
    started = time.perf_counter()
    folder = int8_cache_folder()
    if folder is None:
        return _quantised(trunk, calibration, threads, started)
    key = trunk_key(trunk, resolution)
    model_path = folder / f"{key}.onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{key}.lock", "a+b")  # noqa: SIM115 -- closed below
    except OSError as error:
        logger.warning("int8 cache %s cannot be written (%s): quantising uncached", folder, error)
        return _quantised(trunk, calibration, threads, started)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        loaded = _load(model_path, threads)
        if loaded is not None:
            loaded.setup_seconds = time.perf_counter() - started
            loaded.from_cache = True
            logger.info("int8 trunk %s loaded from %s", loaded.fingerprint, model_path)
            return loaded
        images, source = calibration()
        model = quantise(trunk, images)
        opened = open_int8(model, threads=threads)
        opened.setup_seconds = time.perf_counter() - started
        if len(images) >= MIN_CALIBRATION_IMAGES:
            _store(model_path, model, opened, resolution, len(images), source)
        else:
            logger.info(
                "int8 trunk calibrated on %d images (< %d): not cached", len(images),
                MIN_CALIBRATION_IMAGES,
            )  # fmt: skip
        return opened


def _quantised(
    trunk: nn.Module,
    calibration: Callable[[], tuple[Sequence[torch.Tensor], str]],
    threads: int | None,
    started: float,
) -> OnnxInt8Trunk:
    images, _ = calibration()
    opened = open_int8(quantise(trunk, images), threads=threads)
    opened.setup_seconds = time.perf_counter() - started
    return opened


def _load(path: Path, threads: int | None) -> OnnxInt8Trunk | None:
    if not path.is_file():
        return None
    try:
        return open_int8(path.read_bytes(), threads=threads)
    except MultiGrainError:
        raise  # onnxruntime missing: the same error quantising would give
    except Exception as error:  # noqa: BLE001 -- onnxruntime's errors share no base class
        logger.warning("int8 cache entry %s cannot be opened (%s): quantising again", path, error)
        return None


def _store(
    path: Path, model: bytes, opened: OnnxInt8Trunk, resolution: int, images: int, source: str
) -> None:
    what = {
        "fingerprint": opened.fingerprint,
        "resolution": resolution,
        "recipe": RECIPE,
        "calibration_images": images,
        "calibration_source": source,
        "quantised_in_seconds": round(opened.setup_seconds, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        atomic_write_bytes(path, model)
        atomic_write_text(path.with_suffix(".json"), json.dumps(what, indent=2) + "\n")
    except OSError as error:
        logger.warning("int8 cache %s cannot be written (%s): not cached", path.parent, error)
        return
    logger.info("int8 trunk %s cached as %s", opened.fingerprint, path)
