"""Generalised-mean (GeM) pooling, SPEC §2: ``e_c = (mean_{h,w} clamp(x_chw, eps)^p)^(1/p)``.

p = 1 is average pooling and p -> inf tends to max pooling. MultiGrain trains with a fixed p
and picks a different exponent p* at test time (:meth:`GeM.set_p`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from multigrain.runtime.errors import MultiGrainError


def gem(x: Tensor, p: Tensor | float, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling over the spatial dimensions.

    Args:
        x: (N, C, H, W) feature map (typically post-ReLU, so non-negative).
        p: pooling exponent, a positive float or a 0-dim tensor (which may require grad,
            for a learnable exponent).
        eps: activations are clamped below at ``eps`` before the power.

    Returns:
        (N, C) pooled features. The computation is done in float32 (float64 inputs stay
        float64) whatever the input dtype or autocast state, and the result keeps that
        dtype: bf16/fp16 inputs give a float32 output.

    For stability the per-channel maximum ``m`` is factored out,
    ``m * (mean((x / m)^p))^(1/p)``, so the powered values lie in (0, 1] and cannot
    overflow; the mean is at least 1/(H*W) so the root never sees zero. The identity holds
    for any constant ``m``, so ``m`` is detached: the gradient is unchanged and does not
    flow through the ``amax``.
    """
    if x.dim() != 4:
        raise MultiGrainError(f"gem expects a (N, C, H, W) feature map, got shape {tuple(x.shape)}")
    if not isinstance(p, Tensor) and p <= 0:
        raise MultiGrainError(f"the GeM exponent p must be > 0, got {p}")
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(compute_dtype).clamp(min=eps)
    if not isinstance(p, Tensor) and p == 1:
        # Exactly average pooling: no power, no rescaling round-off.
        return x.mean(dim=(2, 3))
    exponent = p.to(compute_dtype) if isinstance(p, Tensor) else p
    m = x.detach().amax(dim=(2, 3), keepdim=True)  # >= eps > 0 after the clamp
    powered_mean = (x / m).pow(exponent).mean(dim=(2, 3))
    return m.squeeze(3).squeeze(2) * powered_mean.pow(1.0 / exponent)


class GeM(nn.Module):
    """GeM pooling layer holding its exponent ``p``: (N, C, H, W) -> (N, C).

    ``p`` is a 0-dim ``nn.Parameter`` when ``learnable`` and a 0-dim float buffer
    otherwise; either way its state-dict key is ``p`` (``pool.p`` inside
    :class:`~multigrain.models.MultiGrain`), as in the authors' checkpoints.
    """

    p: Tensor

    def __init__(self, *, p: float = 3.0, learnable: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        _check_exponent(p)
        self.eps = eps
        self.learnable = learnable
        initial = torch.tensor(float(p), dtype=torch.float32)
        if learnable:
            self.p = nn.Parameter(initial)
        else:
            self.register_buffer("p", initial)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, C, H, W) -> (N, C), float32 (see :func:`gem`)."""
        # No host sync on p here: at p = 1 the generic formula is within float round-off
        # of average pooling.
        return gem(x, self.p, self.eps)

    def set_p(self, value: float) -> None:
        """Change the exponent in place (e.g. to the test-time p*)."""
        _check_exponent(value)
        with torch.no_grad():
            self.p.fill_(float(value))

    def extra_repr(self) -> str:
        return f"p={float(self.p):.4g}, learnable={self.learnable}, eps={self.eps:g}"


def _check_exponent(p: float) -> None:
    if not p > 0:
        raise MultiGrainError(f"the GeM exponent p must be > 0 (1 = average pooling), got {p}")
