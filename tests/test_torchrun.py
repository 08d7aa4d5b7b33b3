"""Real multi-process training: `torchrun` with 2 CPU processes over gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from multigrain.models.checkpoint import load_checkpoint, model_from_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("global_sampling", [False, True], ids=["local", "global-sampling"])
def test_two_process_training(larger_image_folder, tmp_path, global_sampling):
    steps = 16
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "multigrain",
        "train",
        "--data",
        str(larger_image_folder),
        "--output-dir",
        str(tmp_path),
        "--trunk",
        "resnet18",
        "--input-size",
        "32",
        "--batch-size",
        "24",
        "--max-steps",
        str(steps),
        "--lr",
        "0.005",
        "--log-every",
        "1",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--seed",
        "1",
    ]
    if global_sampling:
        command.append("--global-sampling")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # rank 0 alone logs: exactly one line per step
    assert [entry["step"] for entry in log] == list(range(1, steps + 1))
    first = sum(entry["loss"] for entry in log[:4]) / 4
    last = sum(entry["loss"] for entry in log[-4:]) / 4
    assert last < first, (first, last)
    model, classes = model_from_checkpoint(tmp_path / "checkpoint.pt")
    assert classes == ["class_0", "class_1"]
    assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))[0]).all()


def test_global_sampling_gradients_match_one_process(tmp_path):
    """DDP + gathered margin loss gives the gradients of the loss on the whole batch."""
    worker = Path(__file__).with_name("global_sampling_worker.py")
    report_path = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        str(worker), str(report_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["num_triplets"][0] == report["num_triplets"][1] == 2 * 4 * 3 * 2
    for name, expected in report["reference"].items():
        actual = torch.tensor(report["distributed"][name])
        expected = torch.tensor(expected)
        assert expected.abs().max() > 0, name
        torch.testing.assert_close(actual, expected, rtol=1e-7, atol=1e-10, msg=name)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_after_one_step(larger_image_folder, tmp_path):
    """Ctrl-C in a terminal signals torchrun and its workers (one process group); torchrun
    forwards it to the workers again. They must agree on the step to stop after, rank 0
    writes the checkpoint, nobody deadlocks, and --resume finishes the run."""
    steps = 8
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
        "-m", "multigrain", "train", "--data", str(larger_image_folder), "-o", str(tmp_path),
        "--trunk", "resnet18", "--input-size", "32", "--batch-size", "24",
        "--max-steps", str(steps), "--lr", "0.005", "--log-every", "1", "--device", "cpu",
        "--precision", "fp32", "--seed", "1",
    ]  # fmt: skip
    log_path = tmp_path / "log.jsonl"
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while not (log_path.exists() and len(log_path.read_text().splitlines()) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    _, stderr = process.communicate(timeout=120)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
    logged = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert logged == list(range(1, saved + 1)) and 2 <= saved < steps, stderr[-3000:]
    assert f"stopped by SIGINT after step {saved} of {steps}" in stderr, stderr[-3000:]
    assert "--resume" in stderr
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logged = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert logged == list(range(1, steps + 1))
