"""One forward path: embed, classify and the service give the same descriptor, bit for bit.

A small bundle (random-init ResNet-18 with trained-looking batch-norm statistics, so that
folding them is not the identity, and a whitening at its s and p*) embeds a few images
with ``embed_collection`` and ``embed_in_memory``; an index of them is served, and the
service's /embed answer and the embedding its /classify reads must equal those exactly,
as must the embedding ``classify_images`` reads. One image per forward everywhere: a
batch's size may change a convolution's summation order, which is not what is pinned here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from multigrain.inference.bundle import BundleSettings, write_bundle
from multigrain.inference.classify import classify_images
from multigrain.inference.embed import embed_collection, embed_in_memory
from multigrain.inference.prepare import PreparedModel, prepare_model
from multigrain.inference.store import EmbeddingMetadata, load_embeddings
from multigrain.models import MultiGrain
from multigrain.runtime.distributed import DistributedContext
from multigrain.search.index import ImageIndex
from multigrain.search.index_store import save_index
from multigrain.search.whitening import fit_whitening
from multigrain.service.app import create_app
from multigrain.service.state import Service

CPU = torch.device("cpu")
CONTEXT = DistributedContext(rank=0, world_size=1, local_rank=0, device=CPU)
RESOLUTION, EXPONENT = 64, 4.0
SHAPES = [(80, 60), (60, 80), (70, 70)]  # (width, height): three resized shapes


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    raw = torch.randn(300, model.embedding_dim, generator=torch.Generator().manual_seed(1))
    whitening = fit_whitening(
        raw.abs(), dim=32, fitted_on={"resolution": RESOLUTION, "exponent": EXPONENT}
    )
    settings = BundleSettings(
        resolution=RESOLUTION, exponent=EXPONENT, classes=["a", "b", "c"],
        architecture=model.eval().architecture(),
    )  # fmt: skip
    root = tmp_path_factory.mktemp("bundle") / "b"
    return write_bundle(root, model, settings, whitening=whitening)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("forward")
    rng = np.random.default_rng(7)
    paths = []
    for index, (width, height) in enumerate(SHAPES):
        y, x = np.mgrid[0:height, 0:width]
        wave = np.sin(x / rng.uniform(3, 9))[..., None] * np.cos(y / rng.uniform(3, 9))[..., None]
        pixels = 128 + 100 * wave * rng.uniform(0.3, 1, 3) + rng.normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        path = root / f"{index}.{'jpg' if index == 0 else 'png'}"  # a JPEG: draft decoding
        image.save(path)
        paths.append(path)
    return paths


@contextmanager
def classifier_inputs(model: MultiGrain) -> Iterator[list[torch.Tensor]]:
    """Records every (B, D) embedding the model's classifier is given."""
    seen: list[torch.Tensor] = []
    handle = model.classifier.register_forward_hook(
        lambda _module, inputs, _output: seen.append(inputs[0].detach().clone())
    )
    try:
        yield seen
    finally:
        handle.remove()


def embed_outputs(
    prepared: PreparedModel, photos: list[Path], precision: str, output: Path
) -> tuple[EmbeddingMetadata, np.ndarray, torch.Tensor, torch.Tensor]:
    """(metadata, embed_collection's stored rows, embed_in_memory's rows, raw embeddings)."""
    assert prepared.whitening is not None
    model, whitening = prepared.model, prepared.whitening
    metadata = EmbeddingMetadata(
        model=prepared.identity, resolution=prepared.resolution, exponent=float(model.pool.p),
        whitened=True, dim=whitening.output_dim, precision=precision, bundle=prepared.source,
    )  # fmt: skip
    embed_collection(
        model, photos, output_dir=output, metadata=metadata, context=CONTEXT, batch_size=1,
        precision=precision, whitening=whitening.apply, progress=False,
    )  # fmt: skip
    common = {"resolution": prepared.resolution, "device": CPU, "batch_size": 1}
    in_memory, kept, _ = embed_in_memory(
        model, photos, precision=precision, whitening=whitening.apply, **common
    )
    raw, _, _ = embed_in_memory(model, photos, precision=precision, normalise=False, **common)
    assert kept == [str(p) for p in photos]
    return metadata, load_embeddings(output).descriptors, in_memory, raw


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_embed_classify_and_service_agree_bit_for_bit(bundle_dir, photos, tmp_path, precision):
    prepared = prepare_model(bundle_dir, device=CPU)
    assert prepared.resolution == RESOLUTION and prepared.whitening is not None
    metadata, stored, in_memory, raw = embed_outputs(prepared, photos, precision, tmp_path / "e")
    assert np.array_equal(stored, in_memory.numpy())
    # not vacuous: distinct images give distinct descriptors
    assert np.abs(stored[0] - stored[1]).max() > 1e-3

    with classifier_inputs(prepared.model) as seen:
        classify_images(
            prepared.model, photos, classes=prepared.classes, resolution=RESOLUTION,
            precision=precision, batch_size=1,
        )  # fmt: skip
    assert torch.equal(torch.cat(seen), raw)
    whitened = [prepared.whitening.apply(row[None]) for row in torch.cat(seen)]
    assert np.array_equal(torch.cat(whitened).numpy(), stored)

    index = ImageIndex.build(stored, [str(p) for p in photos], metadata=metadata)
    save_index(index, tmp_path / "index")
    app = create_app(
        checkpoint=None, index_folder=tmp_path / "index", data_dir=tmp_path / "data", token=None
    )
    service: Service = app.state.service
    assert service.trunk.precision.value == precision  # the index's precision
    # a loopback name: the app refuses TestClient's default Host, "testserver"
    local = TestClient(app, base_url="http://127.0.0.1")
    with local as client, classifier_inputs(service.model) as seen_by_service:
        for row, path in enumerate(photos):
            upload = {"image": (path.name, path.read_bytes(), "application/octet-stream")}
            answer = client.post("/embed", files=upload)
            assert answer.status_code == 200, answer.text
            descriptor = np.asarray(answer.json()["descriptor"], dtype=np.float32)
            assert np.array_equal(descriptor, stored[row])
            assert client.post("/classify", files=upload).status_code == 200
    # each request was one forward of one image; /embed and /classify both read the raw row
    service_raw = torch.cat(seen_by_service)
    assert torch.equal(service_raw[0::2], raw) and torch.equal(service_raw[1::2], raw)
