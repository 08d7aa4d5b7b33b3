"""Training loop: exact resume, configuration errors, learning-rate schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from multigrain.data.sources import DatasetKind
from multigrain.models import MultiGrain
from multigrain.models.checkpoint import load_checkpoint, model_from_checkpoint
from multigrain.runtime.errors import MultiGrainError
from multigrain.training.config import Precision, Schedule, TrainConfig
from multigrain.training.loop import train
from multigrain.training.optim import learning_rate_at


def tiny_config(image_folder: Path, output_dir: Path, **overrides) -> TrainConfig:
    settings = dict(
        dataset=DatasetKind.FOLDER,
        data_root=str(image_folder),
        trunk="resnet18",
        input_size=32,
        batch_size=12,
        num_repeats=3,
        lr=0.05,
        max_steps=4,
        precision=Precision.FP32,
        output_dir=str(output_dir),
        progress=False,
        log_every=1,
        seed=3,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoint.pt")
    return {**state["model_state"], **{f"loss.{k}": v for k, v in state["criterion_state"].items()}}


@pytest.mark.parametrize(
    ("total", "first", "accumulation"),
    [(4, 2, 1), (8, 5, 1), (4, 1, 2)],
    ids=["mid-epoch", "across-epochs", "grad-accumulation"],
)
def test_resume_gives_identical_weights(image_folder, tmp_path, total, first, accumulation):
    # 24 images, 4 sources per batch: 6 batches an epoch, so every case resumes mid-epoch
    straight = tiny_config(
        image_folder, tmp_path / "straight", max_steps=total, grad_accum_steps=accumulation
    )
    train(straight)
    part = tiny_config(
        image_folder, tmp_path / "resumed", max_steps=first, grad_accum_steps=accumulation
    )
    train(part)
    rest = tiny_config(
        image_folder, tmp_path / "resumed", max_steps=total, grad_accum_steps=accumulation
    )
    result = train(rest, resume=True)
    assert result.steps == total
    expected = final_weights(tmp_path / "straight")
    actual = final_weights(tmp_path / "resumed")
    assert expected.keys() == actual.keys()
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert different == []
    # the weights moved away from their initial values: the comparison is not vacuous
    torch.manual_seed(3)
    initial = MultiGrain(trunk="resnet18", num_classes=2).state_dict()
    assert not torch.equal(expected["features.conv1.weight"], initial["features.conv1.weight"])


def test_resume_refuses_changed_settings(image_folder, tmp_path):
    train(tiny_config(image_folder, tmp_path, max_steps=1))
    with pytest.raises(MultiGrainError, match="settings differ.*classification_weight"):
        train(
            tiny_config(image_folder, tmp_path, max_steps=2, classification_weight=1.0),
            resume=True,
        )


def folder_state(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder`: (modification time, content)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def finished_run(image_folder, tmp_path) -> Path:
    """A folder holding a finished 2-step run, with a snapshot."""
    train(tiny_config(image_folder, tmp_path / "run", max_steps=2, keep_every_steps=1))
    return tmp_path / "run"


def test_new_run_into_a_run_folder_is_refused(image_folder, finished_run):
    """Issue 16: a new run replaced the folder's checkpoint and appended to its log."""
    before = folder_state(finished_run)
    with pytest.raises(MultiGrainError, match="already holds a training run.*--resume"):
        train(tiny_config(image_folder, finished_run, max_steps=1))
    assert folder_state(finished_run) == before
    result = subprocess.run(
        [sys.executable, "-m", "multigrain", "train", "--data", str(image_folder),
         "-o", str(finished_run), "--trunk", "resnet18", "--input-size", "32",
         "--batch-size", "12", "--max-steps", "1", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in (str(finished_run), "--resume", "--output-dir", "--overwrite"):
        assert fragment in lines[0], lines[0]
    assert folder_state(finished_run) == before


def test_overwrite_replaces_the_run(image_folder, finished_run, tmp_path):
    # a new run that fails to start (no images) leaves the old one in place
    before = folder_state(finished_run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MultiGrainError, match="empty"):
        train(tiny_config(tmp_path / "empty", finished_run, max_steps=1), overwrite=True)
    assert folder_state(finished_run) == before
    train(tiny_config(image_folder, finished_run, max_steps=1), overwrite=True)
    assert load_checkpoint(finished_run / "checkpoint.pt")["step"] == 1
    lines = (finished_run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]
    assert not (finished_run / "snapshots").exists()
    with pytest.raises(MultiGrainError, match="give one of them"):
        train(tiny_config(image_folder, finished_run, max_steps=2), resume=True, overwrite=True)


def test_training_logs_and_checkpoint_rebuilds_model(image_folder, tmp_path):
    result = train(tiny_config(image_folder, tmp_path, max_steps=3))
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert {"loss", "classification", "margin", "beta", "lr", "images_per_second"} <= lines[
        0
    ].keys()
    model, classes = model_from_checkpoint(result.checkpoint)
    assert classes == ["class_0", "class_1"]
    embedding, logits = model(torch.zeros(2, 3, 32, 32))
    assert embedding.shape == (2, 512) and logits.shape == (2, 2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"classification_weight": 1.5}, r"lambda .* must be in \[0, 1\]"),
        ({"num_repeats": 0}, "must be >= 1"),
        ({"batch_size": 10}, "not divisible by the number of repeats m=3"),
        ({"trunk": "resnet7"}, "unknown trunk 'resnet7'"),
    ],
)
def test_bad_settings_are_refused(image_folder, tmp_path, overrides, message):
    with pytest.raises(MultiGrainError, match=message):
        train(tiny_config(image_folder, tmp_path, **overrides))


def test_batch_must_split_over_processes():
    config = TrainConfig(data_root="x", batch_size=12, grad_accum_steps=3)
    with pytest.raises(MultiGrainError, match="not divisible by the number of repeats"):
        config.validate(world_size=1)
    with pytest.raises(MultiGrainError, match="does not split over 5 process"):
        TrainConfig(data_root="x", batch_size=12).validate(world_size=5)


def test_empty_data_directory_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(MultiGrainError, match=str(tmp_path / "data")):
        train(tiny_config(tmp_path / "data", tmp_path / "run"))


def test_config_round_trips_through_a_checkpoint_dict():
    config = TrainConfig(data_root="x", schedule=Schedule.COSINE, lr_steps=[5, 7])
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    with pytest.raises(MultiGrainError, match="unknown training settings"):
        TrainConfig.from_dict({**config.to_dict(), "colour": "blue"})


def test_step_schedule_and_warmup():
    common = dict(base_lr=0.2, steps_per_epoch=10, total_steps=1200, lr_steps=[30, 60, 90])
    assert learning_rate_at(0, schedule=Schedule.STEP, **common) == pytest.approx(0.2)
    assert learning_rate_at(299, schedule=Schedule.STEP, **common) == pytest.approx(0.2)
    assert learning_rate_at(300, schedule=Schedule.STEP, **common) == pytest.approx(0.02)
    assert learning_rate_at(950, schedule=Schedule.STEP, **common) == pytest.approx(0.0002)
    warm = learning_rate_at(4, schedule=Schedule.STEP, warmup_epochs=1, **common)
    assert warm == pytest.approx(0.2 * 5 / 10)


def test_cosine_schedule():
    common = dict(base_lr=1.0, steps_per_epoch=10, total_steps=100, schedule=Schedule.COSINE)
    assert learning_rate_at(0, **common) == pytest.approx(1.0)
    assert learning_rate_at(50, **common) == pytest.approx(0.5)
    assert learning_rate_at(100, **common) == pytest.approx(0.0, abs=1e-12)
