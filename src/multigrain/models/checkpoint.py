"""Atomic checkpoint files, loaded with `weights_only=True`.

A checkpoint is a plain dict of tensors and Python primitives, so it loads without
unpickling arbitrary objects. The model part follows the layout of the authors' released
models (`model_state` with `features.*`, `pool.p`, `classifier.*`), so either loads here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from multigrain.models.multigrain import MultiGrain
from multigrain.runtime.atomic import atomic_write
from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.tensor_files import load_tensor_file

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, rename.

    A crash mid-write leaves the previous checkpoint intact.
    """
    payload = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; errors name the file and the likely cause."""
    path = Path(path)
    if path.is_dir():
        raise MultiGrainError(
            f"{path} is a folder, not a checkpoint file: pass the .pt file in it (e.g. "
            f"{path / 'checkpoint.pt'})"
        )
    if not path.is_file():
        raise MultiGrainError(f"checkpoint {path} does not exist: check the path or the run folder")
    state = load_tensor_file(
        path, what="checkpoint", map_location=map_location,
        fix="it was not written by multigrain (whose checkpoints hold nothing else); to use "
        "the weights of a model you trust, re-save them alone with "
        "torch.save(model.state_dict(), path) and pass that file",
    )  # fmt: skip
    if not isinstance(state, dict) or "model_state" not in state:
        raise MultiGrainError(
            f"checkpoint {path} has no 'model_state' entry: it was not written by multigrain "
            "or by the MultiGrain authors' code"
        )
    version = state.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise MultiGrainError(
            f"checkpoint {path} has format version {version}, newer than this multigrain "
            f"({FORMAT_VERSION}): upgrade multigrain"
        )
    return state


def model_from_checkpoint(
    path: str | os.PathLike[str], *, map_location: str = "cpu"
) -> tuple[MultiGrain, list[str]]:
    """Rebuild the MultiGrain model a multigrain checkpoint describes -> (model, class names)."""
    state = load_checkpoint(path, map_location=map_location)
    architecture = state.get("architecture")
    if not isinstance(architecture, dict):
        raise MultiGrainError(
            f"checkpoint {path} does not record its architecture: it was not written by "
            "`multigrain train`"
        )
    model = MultiGrain(**architecture)
    model.load_state_dict(state["model_state"])
    model.eval()
    classes = [str(name) for name in state.get("classes", [])]
    return model, classes


def model_identity(path: str | os.PathLike[str]) -> str:
    """'<file name>@sha256:<first 16 hex digits>' of a weights file: what made a descriptor."""
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{path.name}@sha256:{digest.hexdigest()[:16]}"
