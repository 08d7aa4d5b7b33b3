"""The fast inference path against the plain model: folding, bf16, int8, batching, merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multigrain.data.images import load_rgb
from multigrain.data.inference_loading import shape_batches
from multigrain.data.resize import normalise, prepare, to_uint8_tensor
from multigrain.inference.embed import embed_in_memory
from multigrain.inference.fast_trunk import fold_batch_norm, inference_trunk
from multigrain.inference.store import (
    SHARD_FOLDER,
    EmbeddingMetadata,
    load_embeddings,
    merge_shards,
    write_shard,
)
from multigrain.models import MultiGrain
from multigrain.runtime.precision import InferencePrecision

CPU = torch.device("cpu")
SHAPES = [(96, 72), (72, 96), (96, 72), (80, 80), (96, 72), (60, 96)]


@pytest.fixture(scope="module")
def model() -> MultiGrain:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3)
    # trained-looking batch-norm statistics, so folding them in is not the identity
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("fast")
    rng = np.random.default_rng(3)
    paths = []
    for index, (width, height) in enumerate(SHAPES):
        y, x = np.mgrid[0:height, 0:width]
        base = np.sin(x / rng.uniform(3, 9))[..., None] * np.cos(y / rng.uniform(3, 9))[..., None]
        pixels = 128 + 100 * base * rng.uniform(0.3, 1, 3) + rng.normal(0, 8, (height, width, 3))
        path = root / f"{index}.png"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def reference(model: MultiGrain, paths: list[Path], resolution: int) -> torch.Tensor:
    """One image at a time, fp32, NCHW, the plain model: what the fast path must reproduce."""
    with torch.no_grad():
        rows = [model(prepare(load_rgb(p), resolution)[None])[0] for p in paths]
    return F.normalize(torch.cat(rows), dim=1)


def test_folded_trunk_computes_the_same_function(model):
    folded = fold_batch_norm(model.features)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.features.modules())  # untouched
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.features(x)
        np.testing.assert_allclose(folded(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_folding_shares_no_tensor_with_the_model():
    """Casting the folded trunk leaves the model alone, its unfolded layers included."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        nn.Flatten(1),
    ).eval()  # the second conv has no batch norm after it: not folded
    before = {key: value.clone() for key, value in module.state_dict().items()}
    folded = fold_batch_norm(module).to(torch.bfloat16)
    originals = {tensor.data_ptr() for tensor in [*module.parameters(), *module.buffers()]}
    assert not originals & {t.data_ptr() for t in [*folded.parameters(), *folded.buffers()]}
    assert all(torch.equal(value, before[key]) for key, value in module.state_dict().items())
    assert isinstance(module[1], nn.BatchNorm2d) and module[0].bias is None


def test_uint8_batches_normalise_to_the_per_image_inputs(photos):
    images = [load_rgb(p) for p in photos[:3]]
    batch = normalise(torch.stack([to_uint8_tensor(i.resize((32, 24))) for i in images]))
    expected = torch.stack([prepare(i.resize((32, 24)), 32) for i in images])
    assert torch.equal(batch, expected)


def test_fp32_fast_path_matches_the_plain_model(model, photos):
    fast, paths, failures = embed_in_memory(
        model, photos, resolution=64, device=CPU, batch_size=3, precision="fp32"
    )
    assert not failures and paths == [str(p) for p in photos]
    np.testing.assert_allclose(fast, reference(model, photos, 64), atol=1e-4)


def test_bf16_descriptors_stay_close_to_fp32(model, photos):
    plain = reference(model, photos, 64)
    fast, _, _ = embed_in_memory(model, photos, resolution=64, device=CPU, precision="bf16")
    cosine = (fast * plain).sum(dim=1)
    assert cosine.min() > 0.99, cosine
    # not vacuous: bf16 does change the numbers, and different images differ
    assert (fast - plain).abs().max() > 1e-5
    assert (plain[0] @ plain[1]) < 0.999


def test_bf16_trunk_holds_bf16_weights_channels_last(model):
    trunk = inference_trunk(model, precision=InferencePrecision.BF16, device=CPU)
    weights = [m.weight for m in trunk.module.modules() if isinstance(m, nn.Conv2d)]
    assert all(w.dtype == torch.bfloat16 for w in weights)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert next(model.parameters()).dtype == torch.float32  # the model is left alone


def test_int8_descriptors_stay_close_to_fp32(model, photos):
    pytest.importorskip("onnxruntime")
    plain = reference(model, photos, 64)
    fast, _, _ = embed_in_memory(model, photos, resolution=64, device=CPU, precision="int8")
    cosine = (fast * plain).sum(dim=1)
    assert cosine.min() > 0.95, cosine


def test_int8_runs_every_convolution_in_int8_even_with_equal_biases(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from multigrain.inference.int8 import int8_trunk

    torch.manual_seed(0)
    untrained = MultiGrain(trunk="resnet18", num_classes=3).eval()
    folded = fold_batch_norm(untrained.features)  # every bias folds to zero: all equal
    optimized = tmp_path / "runs.onnx"
    trunk = int8_trunk(folded, [torch.randn(1, 3, 32, 48)], threads=1,
                       optimized_model_path=optimized)  # fmt: skip
    assert trunk(torch.randn(2, 3, 32, 48)).shape == (2, 512, 1, 2)
    kinds = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    # exported with one shared zero bias, 16 of the 20 stayed fp32 Conv between a
    # dequantise and a quantise, slower than fp32 alone
    int8_convolutions = [kind for kind in kinds if kind.endswith("QLinearConv")]  # or Nhwc...
    assert len(int8_convolutions) == 20, kinds
    assert not {"Conv", "FusedConv"} & set(kinds), kinds
    # with the float tail only the last convolution runs in fp32
    int8_trunk(folded, [torch.randn(1, 3, 32, 48)], threads=1, optimized_model_path=optimized,
               float_tail=True)  # fmt: skip
    kinds = [node.op_type for node in onnx.load(str(optimized)).graph.node]
    assert len([kind for kind in kinds if kind.endswith("QLinearConv")]) == 19, kinds
    assert len([kind for kind in kinds if kind in {"Conv", "FusedConv"}]) == 1, kinds


def test_int8_float_tail_leaves_the_pooled_feature_map_off_the_uint8_grid():
    """Quantised, the map GeM pools holds at most 256 values over a range set by the
    largest calibration activation (in the demo model one image reached 98.6 against 2.5
    for the others: the rest kept a handful of levels; copy µAP fell 36 points). With the
    float tail the last convolution, the residual add and the ReLU run in fp32."""
    pytest.importorskip("onnxruntime")
    from multigrain.inference.int8 import int8_trunk

    torch.manual_seed(0)
    untrained = MultiGrain(trunk="resnet18", num_classes=3).eval()
    folded = fold_batch_norm(untrained.features)
    images = [torch.randn(1, 3, 64, 64) for _ in range(4)]
    levels = {}
    for float_tail in (False, True):
        trunk = int8_trunk(folded, images, threads=1, float_tail=float_tail)
        levels[float_tail] = trunk(torch.cat(images)).unique().numel()
    assert levels[False] <= 256 < levels[True], levels


def test_int8_mean_ranges_keep_ordinary_images_precise_beside_an_outlier():
    """One calibration image 30 times brighter than the others (as one photo drove the
    demo model's activations to 30 times a median image's): with extreme ranges every
    other image is rounded on a grid 30 times too coarse; with the mean of the per-image
    ranges the outlier saturates and the others keep their precision."""
    pytest.importorskip("onnxruntime")
    from multigrain.inference.int8 import int8_trunk

    torch.manual_seed(0)
    untrained = MultiGrain(trunk="resnet18", num_classes=3).eval()
    folded = fold_batch_norm(untrained.features)
    ordinary = [torch.randn(1, 3, 64, 64) for _ in range(7)]
    calibration = [*ordinary, 30 * torch.randn(1, 3, 64, 64)]
    with torch.no_grad():
        exact = folded(torch.cat(ordinary))
    errors = {}
    for ranges in ("extreme", "image-mean"):
        trunk = int8_trunk(folded, calibration, threads=1, ranges=ranges)
        errors[ranges] = ((trunk(torch.cat(ordinary)) - exact).norm() / exact.norm()).item()
    assert errors["image-mean"] < 0.5 * errors["extreme"], errors
    with pytest.raises(ValueError, match="ranges"):
        int8_trunk(folded, calibration, ranges="percentile")


def test_merge_follows_the_listing_and_skips_missing(tmp_path):
    metadata = EmbeddingMetadata(
        model="m", resolution=8, exponent=3.0, whitened=False, dim=3, precision="bf16"
    )
    rows = {f"p{i}": np.full(3, i, dtype=np.float32) for i in range(7)}
    # shards in processing order (shape batches reorder images), one image never embedded
    for index, names in enumerate([["p3", "p0", "p1"], ["p6", "p4", "p5"], ["p2"]]):
        write_shard(
            tmp_path / SHARD_FOLDER / f"part-r000-{index:05d}.npz",
            np.stack([rows[n] for n in names]), names, metadata,
        )  # fmt: skip
    order = [f"p{i}" for i in range(8)]  # p7 failed: listed, never embedded
    assert merge_shards(tmp_path, order, metadata) == 7
    merged = load_embeddings(tmp_path)
    assert merged.paths == order[:7]
    np.testing.assert_array_equal(merged.descriptors[:, 0], np.arange(7))
    assert json.loads((tmp_path / "metadata.json").read_text())["precision"] == "bf16"


def test_shape_batches_keep_every_image_once_in_a_bounded_set_of_batch_sizes():
    shapes = [(3, 8, 8 + (k % 7)) for k in range(203)]  # 7 shapes, interleaved
    items = (
        (k, torch.full(shape, k % 256, dtype=torch.uint8), "") for k, shape in enumerate(shapes)
    )
    failures: list[int] = []
    batches = list(shape_batches(items, batch_size=16, on_failure=lambda i, _: failures.append(i)))
    seen = [i for indices, _ in batches for i in indices]
    assert sorted(seen) == list(range(203)) and not failures
    for indices, batch in batches:
        assert batch.shape[0] == len(indices)
        assert {tuple(batch.shape[1:])} == {shapes[i] for i in indices}
        assert batch[:, 0, 0, 0].tolist() == [i % 256 for i in indices]
    # sizes: full batches or powers of two, so oneDNN sees few distinct shapes
    assert {len(indices) for indices, _ in batches} <= {16, 8, 4, 2, 1}


def test_shape_batches_hold_at_most_max_pending_images():
    shapes = [(3, 8, 8 + (k % 7)) for k in range(300)]  # 7 shapes, interleaved
    consumed = 0

    def items():
        nonlocal consumed
        for k, shape in enumerate(shapes):
            consumed += 1
            yield k, torch.zeros(shape, dtype=torch.uint8), ""

    emitted, largest_pending, sizes = 0, 0, []
    for indices, _ in shape_batches(items(), batch_size=32, on_failure=print, max_pending=100):
        largest_pending = max(largest_pending, consumed - emitted)
        emitted += len(indices)
        sizes.append(len(indices))
    assert emitted == 300 and largest_pending <= 100
    # 100 pending over 7 shapes: the fullest bucket goes out at about 100 / 7 images
    assert max(sizes[:-7]) >= 14
    few = list(shape_batches(iter([]), batch_size=32, on_failure=print, max_pending=100))
    assert few == []


def test_default_decoding_workers_follow_the_cores_this_process_may_use(monkeypatch):
    """CPU: one low-priority worker per core (up to 8), none on one core; CUDA: cores - 1."""
    from multigrain.data import inference_loading

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_cuda in [(1, 0, 1), (2, 2, 1), (4, 4, 3), (16, 8, 8)]:
        monkeypatch.setattr(
            inference_loading.os, "sched_getaffinity", lambda _, n=cores: set(range(n))
        )
        assert inference_loading.default_num_workers(cpu) == on_cpu
        assert inference_loading.default_num_workers(cuda) == on_cuda
