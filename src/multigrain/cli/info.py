"""The `info` subcommand: what this machine runs."""

from __future__ import annotations

import os
from pathlib import Path

from multigrain.cli.app import app, echo
from multigrain.runtime import openmp
from multigrain.runtime.allocator import SETTING, find_allocator, loaded_allocator


@app.command()
def info() -> None:
    """What this machine runs: versions, device, default precision, threads, allocator."""
    # torch only, not torchvision and the models: reading a bundle is not needed here
    import torch

    import multigrain
    from multigrain.inference.bundle_paths import builtin_bundle_path, is_bundle
    from multigrain.inference.int8_cache import CACHE_ENV, int8_cache_folder
    from multigrain.runtime.distributed import resolve_device
    from multigrain.runtime.precision import InferencePrecision, resolve_inference_precision

    device = resolve_device("auto")
    precision = resolve_inference_precision(InferencePrecision.AUTO, device).value
    loaded = loaded_allocator()
    available = find_allocator("auto")
    if loaded:
        allocator = f"{Path(loaded).name} ({loaded})"
    elif available:
        allocator = f"glibc malloc ({available} is installed; see {SETTING})"
    else:
        allocator = "glibc malloc (apt-get install libtcmalloc-minimal4 for flat memory)"
    cache = int8_cache_folder()
    if cache is None:
        int8 = f"off ({CACHE_ENV}=off)"
    else:
        stored = len(list(cache.glob("*.onnx"))) if cache.is_dir() else 0
        int8 = f"{cache} ({stored} quantised model{'s' * (stored != 1)}; {CACHE_ENV})"
    shipped = builtin_bundle_path()
    model = str(shipped) if is_bundle(shipped) else "none in this install (pass -c)"
    for key, value in (
        ("multigrain", multigrain.__version__),
        ("built-in model", model),
        ("torch", torch.__version__),
        ("device", str(device)),
        ("default precision", precision),
        ("torch threads", str(torch.get_num_threads())),
        ("threads wait", f"{os.environ.get(openmp.SETTING, 'libgomp default')} ({openmp.SETTING})"),
        ("allocator", allocator),
        ("int8 cache", int8),
    ):
        echo(f"{key}: {value}")
