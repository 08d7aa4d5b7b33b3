"""The built-in model shipped in the package: intact, loadable, used when no -c is given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import make_pattern

from multigrain.inference.bundle import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    builtin_bundle_path,
    default_bundle,
)

#: sha256 of the shipped weights: changing the model is a deliberate act (update this,
#: docs/shipped/ and the README's figures in the same commit).
SHIPPED_WEIGHTS_SHA256 = "5885b97be6de167c4552c58d2614549ea4aa41be12326d44beed8480a6ec9f7d"
REPOSITORY = Path(__file__).resolve().parents[1]


def test_the_shipped_bundle_is_intact_and_loads():
    root = builtin_bundle_path()
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["files"][WEIGHTS_NAME] == SHIPPED_WEIGHTS_SHA256
    bundle = default_bundle()  # verifies every file's sha256
    settings = bundle.settings
    assert settings.architecture["trunk"] == "resnet18"
    assert settings.threshold is not None and 0.0 < settings.threshold.score < 1.0
    assert 0.0 < settings.threshold.recall <= 1.0
    model = bundle.model()
    assert abs(float(model.pool.p) - settings.exponent) < 1e-6
    assert len(settings.classes) == model.num_classes
    # its provenance is in the repository
    for key in ("corpus_manifest", "train_log", "curve"):
        assert (REPOSITORY / settings.notes[key]).is_file(), settings.notes[key]


def test_embed_without_a_checkpoint_uses_the_shipped_bundle(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(3):
        make_pattern(rng, index, 64).save(tmp_path / f"{index}.png")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "embed", str(tmp_path), "-o", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    metadata = json.loads((out / "metadata.json").read_text())
    bundle = default_bundle()
    assert metadata["bundle"] == str(bundle.root)
    assert metadata["model"] == bundle.identity
    assert metadata["resolution"] == bundle.settings.resolution
    assert metadata["whitened"] == (bundle.whitening is not None)
    descriptors = np.load(out / "descriptors.npy")
    assert descriptors.shape[0] == 3
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, atol=1e-4)


def test_the_stored_descriptor_classifies_as_the_images_do():
    """Issue 18 item 2 on real photos: the built-in model's stored (whitened, unit, d + 1)
    descriptors give the classes that classifying the images gives."""
    import os

    import skimage

    import multigrain

    folder = Path(os.path.dirname(skimage.__file__)) / "data"
    names = "astronaut.png chelsea.png coffee.png rocket.jpg motorcycle_left.png horse.png"
    names += " grass.png brick.png hubble_deep_field.jpg retina.jpg"
    paths = [folder / name for name in names.split()]
    model = multigrain.load(precision="fp32")
    vectors = model.embed(paths)
    assert vectors.shape[1] == model.prepared.whitening.output_dim
    from_vectors = model.classify_descriptors(vectors, top_k=1)
    from_images = model.classify(paths, top_k=1)
    assert [row[0] for row in from_vectors] == [p.labels[0] for p in from_images]


def test_a_python_index_stores_paths_found_from_any_folder(tmp_path, monkeypatch):
    """Index.build/add from relative names store absolute paths, as `index build` does."""
    import multigrain

    rng = np.random.default_rng(1)
    for index in range(3):
        make_pattern(rng, index, 64).save(tmp_path / f"{index}.png")
    monkeypatch.chdir(tmp_path)
    model = multigrain.load(precision="fp32")
    index = multigrain.Index.build(model, ["0.png", "1.png"])
    index.add(["2.png"])
    monkeypatch.chdir(tmp_path.parent)  # elsewhere: the stored paths still name the files
    found = index.search([tmp_path / "2.png"], k=1)[0][0]
    assert found.path == str(tmp_path / "2.png") and Path(found.path).is_file()
