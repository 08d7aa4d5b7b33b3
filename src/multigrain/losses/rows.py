"""Row gathering whose backward adds the gradients in a fixed order, at any thread count.

``x[index]`` (advanced indexing) is the natural way to pick the rows of a triplet, but its
backward accumulates every picked row's gradient into ``x.grad`` with ``index_put_(...,
accumulate=True)``, which on CPU with several threads and more than 32768 values runs in
parallel with atomic adds: rows picked several times (an anchor has m - 1 positives, a
negative may be drawn by many anchors) receive their sums in a different order on each run,
and training stops being reproducible (issue 16). ``index_select`` has the same problem on
CUDA (atomic ``index_add_``).

:func:`gather_rows` returns the same rows, and its backward writes the sums one "layer" at a
time: layer c holds the c-th pick of every row, so no two additions of a layer touch the same
row, and each row receives its gradients in the order of ``index``, as a serial
``index_put_`` would (the same float result as the one-thread code).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def occurrence_rank(index: Tensor) -> Tensor:
    """(T,) integer -> (T,) long: how many earlier entries of ``index`` hold the same value.

    ``index = [4, 1, 4, 4, 1]`` gives ``[0, 0, 1, 2, 1]``.
    """
    count = index.numel()
    if count == 0:
        return torch.zeros(0, dtype=torch.long, device=index.device)
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    positions = torch.arange(count, device=index.device)
    starts = torch.ones(count, dtype=torch.bool, device=index.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    run_start = positions[starts][torch.cumsum(starts.long(), dim=0) - 1]
    rank = torch.empty_like(positions)
    rank[order] = positions - run_start  # a permutation: no index repeats
    return rank


def sum_rows_in_order(values: Tensor, index: Tensor, num_rows: int) -> Tensor:
    """(T, ...) values, (T,) index -> (num_rows, ...): ``out[r] = Σ_{t: index[t]=r} values[t]``.

    Each row's terms are added in increasing t, whatever the thread count or the device:
    the result of a serial loop over t, with no atomic or unordered accumulation.
    """
    out = values.new_zeros((num_rows, *values.shape[1:]))
    if index.numel() == 0:
        return out
    rank = occurrence_rank(index)
    for layer in range(int(rank.max()) + 1):
        picks = torch.nonzero(rank == layer).squeeze(1)
        # the rows of one layer are distinct, so these additions never collide
        out.index_add_(0, index[picks], values[picks])
    return out


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, source: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.num_rows = source.shape[0]
        return source.index_select(0, index)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return sum_rows_in_order(grad, index, ctx.num_rows), None


def gather_rows(source: Tensor, index: Tensor) -> Tensor:
    """(N, ...) source, (T,) long index -> (T, ...) ``source[index]``, reproducible backward.

    The forward equals ``source[index]``; the gradient of ``source`` equals that of
    advanced indexing computed serially (see the module docstring).
    """
    result: Tensor = _GatherRows.apply(source, index)
    return result
