"""GeM pooling against average/max pooling and a float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from multigrain.models import GeM, gem
from multigrain.runtime.errors import MultiGrainError


def _features(seed: int = 0, shape: tuple[int, ...] = (2, 5, 7, 6)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) * 3.0


def _reference(x: torch.Tensor, p: float, eps: float = 1e-6) -> torch.Tensor:
    x64 = x.double().clamp(min=eps)
    return x64.pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def test_p1_is_average_pooling() -> None:
    x = _features()
    expected = F.adaptive_avg_pool2d(x, 1).flatten(1)
    torch.testing.assert_close(gem(x, 1.0), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(GeM(p=1.0)(x), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(gem(x, torch.tensor(1.0)), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("p", [3.0, 4.5])
def test_matches_float64_reference(p: float) -> None:
    x = _features(seed=1)
    out = gem(x, p)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _reference(x, p), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(GeM(p=p)(x).double(), _reference(x, p), rtol=1e-5, atol=1e-6)


def test_large_p_approaches_max_pooling() -> None:
    x = _features(seed=2) + 0.1
    expected = F.adaptive_max_pool2d(x, 1).flatten(1)
    relative_error = ((gem(x, 200.0) - expected).abs() / expected).max()
    assert relative_error < 0.02


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("p", [1.0, 3.0, 10.0])
def test_stable_with_large_values_and_zeros(p: float, autocast: bool) -> None:
    x = _features(seed=3, shape=(2, 4, 5, 5)) * 400.0  # up to 1.2e3
    x[:, 0] = 0.0  # a dead channel
    x[:, 1, :, :2] = 0.0
    x[0, 2] = 1e3
    x.requires_grad_(True)
    p_param = torch.tensor(p, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = gem(x.to(torch.bfloat16) if autocast else x, p_param)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert p_param.grad is not None and torch.isfinite(p_param.grad)
    torch.testing.assert_close(out[0, 2], torch.tensor(1e3), rtol=1e-5, atol=0)
    if not autocast:
        torch.testing.assert_close(out.double(), _reference(x.detach(), p), rtol=1e-4, atol=1e-6)


def test_learnable_p_is_a_parameter_and_gets_gradient() -> None:
    pool = GeM(p=3.0, learnable=True)
    assert isinstance(pool.p, torch.nn.Parameter) and pool.p.dim() == 0
    assert [name for name, _ in pool.named_parameters()] == ["p"]
    pool(_features()).sum().backward()
    assert pool.p.grad is not None and pool.p.grad != 0


def test_fixed_p_is_a_buffer_with_state_dict_key_p() -> None:
    pool = GeM(p=3.0)
    assert list(pool.parameters()) == []
    assert [name for name, _ in pool.named_buffers()] == ["p"]
    state = pool.state_dict()
    assert list(state) == ["p"] and state["p"].dim() == 0
    assert "p=3" in repr(pool)
    learnable_state = GeM(p=2.0, learnable=True).state_dict()
    assert list(learnable_state) == ["p"]
    pool.load_state_dict(learnable_state)
    assert float(pool.p) == 2.0


@pytest.mark.parametrize("learnable", [False, True])
def test_set_p(learnable: bool) -> None:
    pool = GeM(p=3.0, learnable=learnable)
    pool.set_p(1.0)
    x = _features()
    torch.testing.assert_close(pool(x), F.adaptive_avg_pool2d(x, 1).flatten(1), atol=1e-6, rtol=0)
    assert isinstance(pool.p, torch.nn.Parameter) == learnable
    with pytest.raises(MultiGrainError):
        pool.set_p(0.0)


def test_invalid_p_raises() -> None:
    with pytest.raises(MultiGrainError, match="p must be > 0"):
        GeM(p=-1.0)
    with pytest.raises(MultiGrainError):
        gem(_features(), 0.0)
    with pytest.raises(MultiGrainError, match=r"\(N, C, H, W\)"):
        gem(torch.rand(3, 4), 3.0)
