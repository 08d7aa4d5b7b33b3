"""The int8 cache: each model quantised once per resolution, then loaded, never mixed."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import torch
from conftest import cli

from multigrain.inference.fast_trunk import fold_batch_norm
from multigrain.models import MultiGrain

pytest.importorskip("onnxruntime")

from multigrain.inference import int8_cache  # noqa: E402 -- needs onnxruntime
from multigrain.inference.int8_cache import MIN_CALIBRATION_IMAGES, cached_int8_trunk  # noqa: E402


@pytest.fixture(scope="module")
def trunk():
    torch.manual_seed(0)
    return fold_batch_norm(MultiGrain(trunk="resnet18", num_classes=3).eval().features)


class Calibration:
    """Counts how often the cache asked for calibration images."""

    def __init__(self, count: int = MIN_CALIBRATION_IMAGES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.images = [torch.randn(1, 3, 32, 32, generator=generator) for _ in range(count)]
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.images, f"{len(self.images)} random images"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", str(tmp_path))
    return tmp_path / "int8"


def test_a_second_run_loads_the_same_model_without_calibrating(trunk, cache):
    first_images, second_images = Calibration(seed=0), Calibration(seed=1)
    first = cached_int8_trunk(trunk, first_images, resolution=32, threads=1)
    second = cached_int8_trunk(trunk, second_images, resolution=32, threads=1)
    assert (first_images.calls, second_images.calls) == (1, 0)
    assert (first.from_cache, second.from_cache) == (False, True)
    assert first.fingerprint == second.fingerprint
    probe = torch.randn(2, 3, 40, 24)
    assert torch.equal(first(probe), second(probe))  # the same int8 model, bit for bit
    (stored,) = cache.glob("*.onnx")
    what = json.loads(stored.with_suffix(".json").read_text())
    assert what["fingerprint"] == first.fingerprint
    assert what["calibration_images"] == MIN_CALIBRATION_IMAGES
    assert what["resolution"] == 32


def test_another_resolution_or_other_weights_get_their_own_model(trunk, cache):
    cached_int8_trunk(trunk, Calibration(), resolution=32, threads=1)
    other_s = Calibration()
    cached_int8_trunk(trunk, other_s, resolution=48, threads=1)
    retrained = fold_batch_norm(MultiGrain(trunk="resnet18", num_classes=3).eval().features)
    other_weights = Calibration()
    cached_int8_trunk(retrained, other_weights, resolution=32, threads=1)
    assert (other_s.calls, other_weights.calls) == (1, 1)
    assert len(list(cache.glob("*.onnx"))) == 3


def test_too_few_calibration_images_are_not_cached(trunk, cache):
    few = Calibration(count=MIN_CALIBRATION_IMAGES - 1)
    cached_int8_trunk(trunk, few, resolution=32, threads=1)
    cached_int8_trunk(trunk, few, resolution=32, threads=1)
    assert few.calls == 2
    assert not list(cache.glob("*.onnx"))


def test_the_cache_can_be_turned_off(trunk, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calibration = Calibration()
    cached_int8_trunk(trunk, calibration, resolution=32, threads=1)
    cached_int8_trunk(trunk, calibration, resolution=32, threads=1)
    assert calibration.calls == 2
    assert not list(tmp_path.rglob("*.onnx"))


def test_a_damaged_entry_is_reported_and_quantised_again(trunk, cache, caplog):
    good = cached_int8_trunk(trunk, Calibration(), resolution=32, threads=1)
    (stored,) = cache.glob("*.onnx")
    stored.write_bytes(b"not an onnx model")
    calibration = Calibration()
    with caplog.at_level(logging.WARNING):
        again = cached_int8_trunk(trunk, calibration, resolution=32, threads=1)
    assert calibration.calls == 1
    assert str(stored) in caplog.text and "quantising again" in caplog.text
    assert again.fingerprint == good.fingerprint  # same images, same model, stored anew
    assert stored.read_bytes()[:4] != b"not "


def test_an_unwritable_cache_is_reported_and_the_run_goes_on(trunk, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", str(blocker))  # <file>/int8 cannot be made
    calibration = Calibration()
    with caplog.at_level(logging.WARNING):
        quantised = cached_int8_trunk(trunk, calibration, resolution=32, threads=1)
    assert calibration.calls == 1
    assert quantised(torch.randn(1, 3, 32, 32)).shape == (1, 512, 1, 1)
    assert "cannot be written" in caplog.text and str(blocker) in caplog.text


def test_processes_missing_the_same_key_at_once_quantise_once(trunk, cache, monkeypatch):
    """The ranks of a torchrun job: one quantises under the lock, the others load its model."""
    calls = []
    real_quantise = int8_cache.quantise

    def slow_quantise(*args, **kwargs):
        calls.append(1)
        return real_quantise(*args, **kwargs)

    monkeypatch.setattr(int8_cache, "quantise", slow_quantise)
    results = []
    workers = [
        threading.Thread(
            target=lambda seed=seed: results.append(
                cached_int8_trunk(trunk, Calibration(seed=seed), resolution=32, threads=1)
            )
        )
        for seed in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(calls) == 1
    assert len({result.fingerprint for result in results}) == 1


def test_info_says_where_the_cache_is_and_what_it_holds(trunk, cache):
    cached_int8_trunk(trunk, Calibration(), resolution=32, threads=1)
    lines = dict(line.split(": ", 1) for line in cli("info").stdout.splitlines())
    assert lines["int8 cache"] == f"{cache} (1 quantised model; MULTIGRAIN_CACHE_DIR)"
