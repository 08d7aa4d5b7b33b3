"""Model bundles: written, read back, verified, and used by embed / dedup / search / API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli, make_pattern

from multigrain.inference.bundle import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    BundleSettings,
    ScoreThreshold,
    load_bundle,
    write_bundle,
)
from multigrain.inference.prepare import prepare_model
from multigrain.models import MultiGrain
from multigrain.runtime.errors import MultiGrainError
from multigrain.search.whitening import fit_whitening


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=3).eval()
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(600, model.embedding_dim, generator=generator).abs()
    whitening = fit_whitening(
        raw, dim=32, fitted_on={"resolution": 64, "exponent": 4.0, "input": "raw embedding"}
    )
    settings = BundleSettings(
        resolution=64,
        exponent=4.0,
        classes=["a", "b", "c"],
        architecture=model.architecture(),
        threshold=ScoreThreshold(0.75, 0.9, 0.5, "a test", whitened=True),
        query_flip=True,
        notes={"command": "test"},
    )
    return write_bundle(
        tmp_path_factory.mktemp("bundle") / "b", model, settings, whitening=whitening
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(4)
    for index in range(6):
        make_pattern(rng, index % 3, 56).save(root / f"{index}.png")
    (root / "copy.png").write_bytes((root / "0.png").read_bytes())
    return root


def test_round_trip(bundle_dir):
    bundle = load_bundle(bundle_dir)
    assert bundle.settings.resolution == 64 and bundle.settings.exponent == 4.0
    assert bundle.settings.threshold is not None and bundle.settings.threshold.score == 0.75
    assert bundle.whitening is not None and bundle.whitening.kept_dim == 32
    assert bundle.whitening.constant > 0 and bundle.whitening.output_dim == 33
    model = bundle.model()
    assert float(model.pool.p) == 4.0
    torch.manual_seed(0)
    original = MultiGrain(trunk="resnet18", num_classes=3).eval()
    original.pool.set_p(4.0)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = original(x)
    # float16 on disk: the descriptors agree closely, not exactly
    cosine = torch.nn.functional.cosine_similarity(a, b)
    assert cosine.min() > 0.999
    assert bundle.identity.startswith("b@sha256:")
    assert load_bundle(bundle_dir / MANIFEST_NAME).identity == bundle.identity


def test_damage_is_detected(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / WEIGHTS_NAME).read_bytes())
    data[-10] ^= 0xFF
    (copy / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(MultiGrainError, match="sha256"):
        load_bundle(copy)
    (copy / WEIGHTS_NAME).unlink()
    with pytest.raises(MultiGrainError, match="missing"):
        load_bundle(copy)
    with pytest.raises(MultiGrainError, match="not a model bundle"):
        prepare_model(tmp_path)  # a folder without bundle.json


def test_settings_follow_the_bundle_and_whitening_only_where_fitted(bundle_dir):
    prepared = prepare_model(bundle_dir)
    assert prepared.resolution == 64 and prepared.whitening is not None
    assert prepared.threshold == 0.75 and prepared.query_flip
    other = prepare_model(bundle_dir, resolution=96)
    assert other.resolution == 96 and other.whitening is None and other.threshold is None
    assert any("not applied" in note for note in other.notes)
    plain = prepare_model(bundle_dir, use_bundle_whitening=False)
    assert plain.whitening is None and plain.threshold is None  # measured whitened


def test_embed_records_the_bundle_and_dedup_uses_its_threshold(bundle_dir, photos, tmp_path):
    out = tmp_path / "out"
    result = cli("embed", str(photos), "-c", str(bundle_dir), "-o", str(out))
    assert f"bundle {bundle_dir}" in result.stdout
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["bundle"] == str(bundle_dir)
    assert metadata["resolution"] == 64 and metadata["exponent"] == 4.0
    assert metadata["whitened"] is True and metadata["dim"] == 33  # 32 + the constant
    assert metadata["threshold"] == 0.75
    groups = tmp_path / "groups.json"
    dedup = cli("dedup", str(out), "-o", str(groups))
    assert "threshold 0.7500 of the model bundle" in dedup.stderr
    # the same images embedded through the Python API give the same vectors
    import multigrain
    from multigrain.inference.store import load_embeddings

    stored = load_embeddings(out)
    api = multigrain.load(bundle_dir).embed([Path(p) for p in stored.paths])
    assert np.abs(api - stored.descriptors).max() < 2e-2
    assert np.all(np.sum(api * stored.descriptors, axis=1) > 0.999)


def test_search_embeds_image_queries_with_the_index_bundle(bundle_dir, photos, tmp_path):
    out, index = tmp_path / "out", tmp_path / "index"
    cli("embed", str(photos), "-c", str(bundle_dir), "-o", str(out))
    cli("index", "build", str(out), "-o", str(index))
    found = cli("search", str(index), str(photos), "-k", "2", "--json", "--threshold", "-1")
    rows = {Path(r["query"]).name: r["results"] for r in map(json.loads, found.stdout.splitlines())}
    assert len(rows) == 7
    for name, results in rows.items():
        assert Path(results[0]["path"]).name in (
            {name} | ({"0.png", "copy.png"} if name in ("0.png", "copy.png") else set())
        )
    # queries embedded with other settings are refused, with the fix
    other = tmp_path / "other"
    cli("embed", str(photos), "-c", str(bundle_dir), "-o", str(other), "-s", "80")
    refused = cli("search", str(index), str(other), expect=2)
    assert "other settings than the index" in refused.stderr


def test_a_folder_that_is_not_a_bundle_is_named(photos, tmp_path):
    result = cli("embed", str(photos), "-c", str(photos), "-o", str(tmp_path / "x"), expect=2)
    assert "not a model bundle" in result.stderr


def test_bundle_command_chooses_settings_on_validation_copies(tmp_path):
    """`multigrain bundle` on a small corpus: grid, whitening and flip decided, then read."""
    from multigrain.data.corpus.heldout import write_copy_set
    from multigrain.models.checkpoint import save_checkpoint

    rng = np.random.default_rng(7)
    corpus = tmp_path / "corpus"
    originals = []
    for index in range(8):
        path = corpus / "validation" / "originals" / f"o{index}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_pattern(rng, index % 3, 64).save(path)
        originals.append(path)
    write_copy_set(corpus / "validation", originals, seed=0, queries_per_reference=2,
                   progress=False)  # fmt: skip
    for index in range(40):
        folder = corpus / "train" / f"c{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        make_pattern(rng, index % 3, 48).save(folder / f"{index}.png")
    torch.manual_seed(0)
    model = MultiGrain(trunk="resnet18", num_classes=2)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(
        checkpoint,
        {"model_state": model.state_dict(), "architecture": model.architecture(),
         "classes": ["c0", "c1"]},
    )  # fmt: skip
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"command": "a test"}))
    output = tmp_path / "bundle"
    result = cli(
        "bundle", "-c", str(checkpoint), "-o", str(output), "--corpus", str(corpus),
        "--resolutions", "48,64", "--exponents", "2,4", "--notes", str(notes),
    )  # fmt: skip
    assert "bundle" in result.stdout
    bundle = load_bundle(output)
    settings = bundle.settings
    selection = settings.notes["selection"]
    assert set(selection["grid"]) == {"s=48,p=2", "s=48,p=4", "s=64,p=2", "s=64,p=4"}
    best = max(selection["grid"], key=selection["grid"].get)
    assert best == f"s={settings.resolution},p={settings.exponent:g}"
    assert settings.classes == ["c0", "c1"] and settings.notes["command"] == "a test"
    # whitening and flip kept exactly when they lifted validation mAP
    assert (bundle.whitening is not None) == selection["use_whitening"]
    assert selection["use_whitening"] == (
        selection["whitened"]["map"] >= selection["plain"]["map"] + 0.005
    )
    assert settings.query_flip == selection["use_flip"]
    if settings.threshold is not None:
        assert settings.threshold.score == selection["final"]["threshold_at_90"]
