"""What machine this is: the cores this process may use, the CPU model and the flags that
choose fast paths."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

#: CPU flags that decide which kernels run fast (bf16 and int8 matmul paths).
INTERESTING_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity on Linux, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """The CPU's model name and its flags, from /proc/cpuinfo (elsewhere: no flags)."""
    model, flags = platform.processor() or "unknown", frozenset[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
            if flags and model != "unknown":
                break
    return model, flags


def describe_machine() -> dict[str, Any]:
    """{cpu_model, cpu_flags (of INTERESTING_FLAGS), cores, torch, threads, device}."""
    import torch

    model, flags = cpu_model_and_flags()
    return {
        "cpu_model": model,
        "cpu_flags": [flag for flag in INTERESTING_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
