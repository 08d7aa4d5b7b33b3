"""`evaluate` on tiny benchmarks in their real layouts, with cases whose answer is known."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from multigrain.data.standard import read_copydays, read_holidays, read_ukbench
from multigrain.evaluation.standard import EvaluationSettings, evaluate_retrieval
from multigrain.models import MultiGrain


def photo(seed: int, width: int = 64, height: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (
        np.sin(x / rng.uniform(2, 8) + rng.uniform(0, 6))[..., None]
        * np.cos(y / rng.uniform(2, 8))[..., None]
    )
    pixels = 128 + 110 * base * rng.uniform(0.2, 1, size=3) + rng.normal(0, 5, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def model() -> MultiGrain:
    torch.manual_seed(0)
    return MultiGrain(trunk="resnet18", num_classes=3).eval()


SETTINGS = EvaluationSettings(model="test", resolution=64, exponent=3.0, whitened=False)


def normalise(embeddings: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embeddings, dim=1)


def test_holidays_upright_rotation_is_applied(model, tmp_path):
    # 100600.jpg is in the shipped list as "turn 90 degrees clockwise to make upright"
    (tmp_path / "jpg").mkdir()
    upright = photo(0)
    upright.rotate(90, expand=True).save(tmp_path / "jpg" / "100600.jpg", quality=95)
    upright.save(tmp_path / "jpg" / "100601.jpg", quality=95)
    for group in (1030, 1040, 1050):  # groups the rotation list does not mention
        for index in range(2):
            photo(group).save(tmp_path / "jpg" / f"{group}{index:02d}.jpg", quality=95 - index)
    bench = read_holidays(tmp_path)
    assert bench.protocol == "holidays-upright"
    result = evaluate_retrieval(model, bench, SETTINGS, normalise)
    as_stored = evaluate_retrieval(
        model, read_holidays(tmp_path, upright=False), SETTINGS, normalise
    )
    # every query, turned upright where listed, is the same picture as its one positive
    assert bench.rotations is not None and bench.rotations["100600.jpg"] == 90
    assert result.metrics["map"] == pytest.approx(1.0)
    assert as_stored.metrics["map"] < 1.0  # without the rotation the 1006 query is worse
    assert result.protocol == "holidays-upright" and as_stored.protocol == "holidays"


def test_copydays_identical_copies_give_map_one(model, tmp_path):
    (tmp_path / "strong").mkdir()
    for number in range(200000, 200500, 100):
        photo(number).save(tmp_path / f"{number}.jpg", quality=95)
        shutil.copy(tmp_path / f"{number}.jpg", tmp_path / "strong" / f"{number + 1}.jpg")
    bench = read_copydays(tmp_path)
    result = evaluate_retrieval(model, bench, SETTINGS, normalise)
    assert result.metrics["map"] == pytest.approx(1.0)
    assert result.num_queries == 5 and result.num_database == 5


def test_ukbench_identical_groups_score_four(model, tmp_path):
    (tmp_path / "full").mkdir()
    for group in range(3):
        image = photo(100 + group)
        for member in range(4):
            image.save(tmp_path / "full" / f"ukbench{group * 4 + member:05d}.png")
    result = evaluate_retrieval(model, read_ukbench(tmp_path), SETTINGS, normalise)
    assert result.metrics["ns_score"] == pytest.approx(4.0)


def test_cli_writes_json_and_markdown(model, tmp_path):
    from multigrain.models.checkpoint import save_checkpoint

    root = tmp_path / "val"
    for label in range(3):
        (root / f"n0{label}").mkdir(parents=True)
        for index in range(2):
            photo(label * 10 + index).save(root / f"n0{label}" / f"{index}.JPEG")
    checkpoint = save_checkpoint(
        tmp_path / "m.pt", {"model_state": model.state_dict(), "architecture": model.architecture()}
    )
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "evaluate", "--benchmark", "imagenet",
         "--root", str(root), "-c", str(checkpoint), "-s", "64", "-p", "2",
         "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["metrics"]["top5"] == pytest.approx(1.0)  # 3 classes: top-5 holds them all
    assert saved["settings"]["resolution"] == 64 and saved["settings"]["exponent"] == 2.0
    assert saved["settings"]["model"].startswith("m.pt@sha256:")
    assert "| imagenet-val | classification |" in result.stdout
