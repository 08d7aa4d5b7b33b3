"""The int8 cache: each model quantised once per resolution, then loaded, never mixed."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import cli
from PIL import Image

from multigrain.inference.embed import embed_collection
from multigrain.inference.fast_trunk import fold_batch_norm
from multigrain.inference.store import list_shards, load_embeddings
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import DistributedContext
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.descriptors import EmbeddingMetadata, setting_differences
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index

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


def _photos(folder, count: int, seed: int) -> list:
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        pixels[:, : 8 + 4 * index] //= 3  # a band of its own width: each image differs
        path = folder / f"{seed}-{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_int8_descriptors_record_their_quantisation_and_two_never_mix(tmp_path, monkeypatch):
    import multigrain.inference.fast_trunk as fast_trunk

    # the cache off: every run quantises for itself (on the same dead-leaves pictures)
    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", "off")
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3).eval()
    cpu = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    settings = EmbeddingMetadata(
        model="test", resolution=64, exponent=3.0, whitened=False, dim=model.embedding_dim,
        precision="int8",
    )  # fmt: skip

    def embed(paths, output, **options):
        return embed_collection(
            model, paths, output_dir=output, metadata=settings, context=cpu, precision="int8",
            progress=False, **options,
        )  # fmt: skip

    first = _photos(tmp_path / "photos", 5, seed=0)
    embed(first, tmp_path / "out")
    recorded = load_embeddings(tmp_path / "out").metadata
    assert recorded.int8 is not None and len(recorded.int8) == 12
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["int8"] == recorded.int8
    # a resumed run quantised otherwise (here: other calibration pictures, as another
    # version of the recipe would) is another int8 model: refused
    more = first + _photos(tmp_path / "photos", 4, seed=1)
    shards = list_shards(tmp_path / "out")
    monkeypatch.setattr(fast_trunk, "CALIBRATION_SEED", 1)
    with pytest.raises(
        MultiGrainError, match=r"quantised model [0-9a-f]{12}, this run's is [0-9a-f]{12}: its int8"
    ):
        embed(more, tmp_path / "out", resume=True)
    assert list_shards(tmp_path / "out") == shards  # nothing written, nothing lost
    assert load_embeddings(tmp_path / "out").paths == [str(p) for p in first]

    # an index of the first output refuses another quantisation's descriptors, naming why
    embed(more[5:], tmp_path / "other")
    monkeypatch.setattr(fast_trunk, "CALIBRATION_SEED", 0)
    stored = load_embeddings(tmp_path / "out")
    index = ImageIndex.build(stored.descriptors, stored.paths, metadata=stored.metadata)
    save_index(index, tmp_path / "index")
    refused = cli("index", "add", str(tmp_path / "index"), str(tmp_path / "other"), expect=2)
    assert "another quantisation of the model" in refused.stderr
    # ... while float descriptors of the same model and settings may search it
    float_settings = replace(settings, precision="fp32")
    assert float_settings.matches(stored.metadata) is False  # precision differs: own output
    assert setting_differences(float_settings, stored.metadata) == []
    assert setting_differences(load_embeddings(tmp_path / "other").metadata, stored.metadata)

    # quantised anew with the recipe's own pictures (another machine, the cache off), the
    # model is the same: the resumed run goes on, under the first run's fingerprint
    embed(more, tmp_path / "out", resume=True)
    resumed = load_embeddings(tmp_path / "out")
    assert resumed.paths == [str(p) for p in more] and resumed.metadata.int8 == recorded.int8


def test_float_metadata_reads_and_writes_as_before_the_int8_fingerprint():
    float_record = EmbeddingMetadata(
        model="m", resolution=224, exponent=3.0, whitened=False, dim=512, precision="bf16"
    )
    assert "int8" not in json.loads(float_record.to_json())  # an older multigrain reads it
    assert EmbeddingMetadata.from_json(float_record.to_json()) == float_record
    quantised = replace(float_record, precision="int8", int8="0123456789ab")
    assert EmbeddingMetadata.from_json(quantised.to_json()) == quantised
    # a fingerprint known on one side only (an int8 run before its trunk exists) is no difference
    assert replace(quantised, int8=None).matches(quantised)
    assert not replace(quantised, int8="ba9876543210").matches(quantised)


def test_the_service_refuses_int8_queries_of_another_quantisation(tmp_path, monkeypatch):
    from multigrain.inference.prepare import prepare_model
    from multigrain.runtime.precision import InferencePrecision
    from multigrain.service.loading import open_service

    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", "off")  # the service quantises for itself
    prepared = prepare_model(None)  # the built-in model, as `serve` loads it for this index
    recorded = replace(
        prepared.embedding_metadata(InferencePrecision.INT8), int8="0123456789ab"
    )  # as if embedded through a quantisation made elsewhere
    paths = [str(p) for p in _photos(tmp_path / "photos", 3, seed=2)]
    vectors = np.random.default_rng(0).normal(size=(3, recorded.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    save_index(ImageIndex.build(vectors, paths, metadata=recorded), tmp_path / "index")
    with pytest.raises(MultiGrainError, match="another quantisation of the model"):
        open_service(
            checkpoint=None, index_folder=tmp_path / "index", data_dir=tmp_path / "data",
            token=None, max_upload_bytes=1 << 20, max_pixels=1 << 24,
        )  # fmt: skip
    # the failed start leaves the index free: a float service opens it
    open_service(
        checkpoint=None, index_folder=tmp_path / "index", data_dir=tmp_path / "data",
        token=None, max_upload_bytes=1 << 20, max_pixels=1 << 24, precision="fp32",
    ).close()  # fmt: skip


def test_the_python_api_keeps_one_quantisation_per_model_and_refuses_another(tmp_path, monkeypatch):
    import multigrain
    import multigrain.inference.fast_trunk as fast_trunk

    monkeypatch.setenv("MULTIGRAIN_CACHE_DIR", "off")  # each model quantises for itself
    first, second = _photos(tmp_path / "a", 4, seed=3), _photos(tmp_path / "b", 4, seed=4)
    model = multigrain.load(precision="int8")
    index = multigrain.Index.build(model, first[:2])
    fingerprint = index.index.metadata.int8
    assert fingerprint is not None and fingerprint == model.metadata().int8
    index.add(first[2:])  # the same model: its trunk was kept, not quantised again
    assert model.metadata().int8 == fingerprint and len(index) == 4
    index.save(tmp_path / "index")
    # another process quantises alike (the same calibration pictures): it may search
    again = multigrain.Index.load(tmp_path / "index", multigrain.load(precision="int8"))
    assert again.search(first[:1], k=1)[0][0].path == str(first[0])
    # a quantisation calibrated otherwise (as another recipe version would be) may not
    monkeypatch.setattr(fast_trunk, "CALIBRATION_SEED", 1)
    other = multigrain.load(precision="int8")
    loaded = multigrain.Index.load(tmp_path / "index", other)
    with pytest.raises(MultiGrainError, match="another quantisation of the model"):
        loaded.search(second[:2])
    # float queries may search int8 descriptors
    assert multigrain.Index.load(tmp_path / "index", multigrain.load(precision="fp32")).search(
        first[:1], k=1
    )[0][0].path == str(first[0])
