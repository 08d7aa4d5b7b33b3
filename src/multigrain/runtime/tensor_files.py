"""Reading torch files safely: ``torch.load(weights_only=True)``, with errors of our own.

A torch file is a pickle, and unpickling arbitrary objects runs whatever code they name,
so every weights, checkpoint and whitening file is read with ``weights_only=True``: tensors
and plain containers only. When a file holds anything else, torch's message says that
re-running with ``weights_only=False`` "will likely succeed" -- the unsafe fix. Its text is
never passed on: :func:`load_tensor_file` names the file, what it holds and a safe fix.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from multigrain.runtime.errors import MultiGrainError

#: Words of torch's weights-only messages that must not reach a user (they suggest loading
#: the file with weights_only=False).
_TORCH_ADVICE = ("weights_only", "weights only", "can still be loaded")


def load_tensor_file(
    path: str | os.PathLike[str], *, what: str, fix: str, map_location: str = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``; any failure as one MultiGrainError.

    Args:
        what: what the file should be, for the message ("checkpoint", "weights file").
        fix: what to do when the file holds Python objects besides tensors, e.g.
            "re-save the weights alone: torch.save(model.state_dict(), path)".

    Raises:
        MultiGrainError: naming `path` -- it holds other Python objects (named, with `fix`),
            or it is truncated, corrupt or not a torch file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found is None:  # not a pickle, a damaged one, or one torch cannot vet
            raise MultiGrainError(
                f"cannot load {what} {path}: the file is truncated, corrupt, or not a PyTorch "
                f"file of tensors (other pickled objects are not read, for safety): {fix}"
            ) from None
        raise MultiGrainError(
            f"refusing to load {what} {path}: it holds Python objects ({found.group(1)}) "
            "besides tensors, and multigrain reads only tensors and plain values from a file, "
            f"for safety (loading other objects can run code they carry): {fix}"
        ) from None  # torch's message suggests loading it unsafely
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise MultiGrainError(
            f"cannot load {what} {path}: {_reason(error)}the file is truncated, corrupt or not "
            "a PyTorch file"
        ) from error


def _reason(error: BaseException) -> str:
    """The first line of torch's message and '; ', or '' where it gives advice of its own."""
    text = str(error).splitlines()[0].strip() if str(error).strip() else type(error).__name__
    if any(advice in text.lower() for advice in _TORCH_ADVICE):
        return ""
    return f"{text}; "
