"""The array inputs every metric accepts: numpy arrays, CPU/GPU torch tensors, sequences."""

from __future__ import annotations

from collections.abc import Sequence, Set
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def to_numpy(values: ArrayLike) -> np.ndarray:
    """A tensor (any device), array or sequence -> numpy array."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def index_array(indices: ArrayLike | Set[int]) -> np.ndarray:
    """A set, sequence, array or tensor of database indices -> 1-D int64 array."""
    if isinstance(indices, Set):
        return np.array(sorted(indices), dtype=np.int64)
    return to_numpy(indices).astype(np.int64, copy=False).reshape(-1)
