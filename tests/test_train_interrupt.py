"""Stopping `multigrain train` and resuming it: killed, Ctrl-C'd or terminated, then --resume.

Each run is a real `python -m multigrain train` process at a fixed number of torch threads
(OMP_NUM_THREADS). A run killed between checkpoints (SIGKILL) or stopped by a signal
(SIGINT, SIGTERM), then resumed, must end with the checkpoint of the uninterrupted run: every
tensor equal (torch.equal) and every other entry equal, and the same log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from multigrain.models.checkpoint import load_checkpoint
from multigrain.training.interrupt import StopSignals, TrainingInterrupted

STEPS = 6
CHECKPOINT_EVERY = 2
# log fields that follow the weights (images/s does not)
LOGGED = ("step", "epoch", "loss", "classification", "margin", "beta", "lr")


def train_command(data: Path, output_dir: Path, *extra: str) -> list[str]:
    """24 images, batches of 6 sources x 4 copies (4 steps an epoch, so a resumed run crosses
    an epoch): 72 triplets of 512-d embeddings, enough for torch's parallel CPU kernels at 2
    threads (those of issue 16)."""
    return [
        sys.executable, "-m", "multigrain", "train", "--data", str(data), "-o", str(output_dir),
        "--trunk", "resnet18", "--input-size", "32", "--batch-size", "24", "--repeats", "4",
        "--max-steps", str(STEPS), "--lr", "0.05", "--precision", "fp32", "--device", "cpu",
        "--seed", "3", "--log-every", "1", "--checkpoint-every-steps", str(CHECKPOINT_EVERY),
        *extra,
    ]  # fmt: skip


def environment(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run(command: list[str], threads: int, expect: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=environment(threads)
    )
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def logged_steps(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / "log.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    # a line being written may be incomplete: only whole lines count
    return [json.loads(line) for line in lines if line.endswith("}")]


def start_and_wait(command: list[str], threads: int, output_dir: Path, step: int, **options):
    """Start `command` and return it once its log shows `step` (the process still running)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(threads),
        **options,
    )
    deadline = time.monotonic() + 240
    while not any(entry["step"] >= step for entry in logged_steps(output_dir)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"training did not reach step {step}: {stderr[-3000:]}")
        time.sleep(0.02)
    return process


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of a checkpoint's nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}/{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}/{index}")
    else:
        yield prefix, value


def assert_same_checkpoint(expected_dir: Path, actual_dir: Path) -> None:
    expected = dict(flatten(load_checkpoint(expected_dir / "checkpoint.pt")))
    actual = dict(flatten(load_checkpoint(actual_dir / "checkpoint.pt")))
    assert expected.keys() == actual.keys()
    tensors = [key for key, value in expected.items() if isinstance(value, torch.Tensor)]
    assert len(tensors) > 100  # model, beta, momentum buffers, RNG state
    different = [key for key in tensors if not torch.equal(expected[key], actual[key])]
    assert different == []
    # settings that change no weight (checkpointing.RESUMABLE_CHANGES) may differ
    others = [
        key
        for key in expected
        if key not in tensors and key not in {"/config/output_dir", "/config/num_workers"}
    ]
    assert [key for key in others if expected[key] != actual[key]] == []
    assert expected["/step"] == STEPS


def assert_same_log(expected_dir: Path, actual_dir: Path) -> None:
    expected = [{key: entry[key] for key in LOGGED} for entry in logged_steps(expected_dir)]
    actual = [{key: entry[key] for key in LOGGED} for entry in logged_steps(actual_dir)]
    assert [entry["step"] for entry in expected] == list(range(1, STEPS + 1))
    assert actual == expected


@pytest.fixture(scope="module")
def uninterrupted(
    image_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[int], Path]:
    """The run folder of the uninterrupted run at a thread count (trained once per module)."""
    folders: dict[int, Path] = {}

    def folder(threads: int) -> Path:
        if threads not in folders:
            output_dir = tmp_path_factory.mktemp(f"uninterrupted-{threads}")
            run(train_command(image_folder, output_dir), threads)
            folders[threads] = output_dir
        return folders[threads]

    return folder


def test_two_runs_at_two_threads_are_identical(image_folder, tmp_path, uninterrupted):
    """Issue 16: at 2 threads two runs of one command differed from step 2 on (at 1 thread
    they did not)."""
    run(train_command(image_folder, tmp_path), 2)
    assert_same_checkpoint(uninterrupted(2), tmp_path)
    assert_same_log(uninterrupted(2), tmp_path)


@pytest.mark.parametrize("threads", [1, 2])
def test_killed_and_resumed_equals_uninterrupted(image_folder, tmp_path, uninterrupted, threads):
    command = train_command(image_folder, tmp_path)
    # killed after step CHECKPOINT_EVERY + 1: the last checkpoint is behind the last step
    process = start_and_wait(command, threads, tmp_path, CHECKPOINT_EVERY + 1)
    process.kill()
    process.communicate()
    killed_at = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
    assert CHECKPOINT_EVERY <= killed_at < STEPS
    run([*command, "--resume"], threads)
    assert_same_checkpoint(uninterrupted(threads), tmp_path)
    # the log lines of the steps lost with the kill were replaced by the resumed run's
    assert_same_log(uninterrupted(threads), tmp_path)


@pytest.mark.parametrize(
    ("threads", "stop", "status", "workers"),
    [(1, signal.SIGINT, 130, 0), (2, signal.SIGINT, 130, 1), (2, signal.SIGTERM, 143, 0)],
    ids=["SIGINT-1-thread", "Ctrl-C-2-threads-1-worker", "SIGTERM-2-threads"],
)
def test_signal_writes_checkpoint_then_resume_equals_uninterrupted(
    image_folder, tmp_path, uninterrupted, threads, stop, status, workers
):
    # with a loader worker, the signal goes to the whole process group, as Ctrl-C in a
    # terminal does: the worker must keep loading the batches of the step under way; and
    # the number of workers changes nothing in the result
    command = train_command(image_folder, tmp_path, "--workers", str(workers))
    process = start_and_wait(
        command, threads, tmp_path, CHECKPOINT_EVERY + 1, start_new_session=True
    )
    if workers:
        os.killpg(process.pid, stop)
    else:
        process.send_signal(stop)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    # one notice: a loader worker does not handle the signal too
    assert stderr.count("received: stopping after the step under way") == 1, stderr[-3000:]
    # the step under way was finished and saved: nothing logged is lost
    steps = [entry["step"] for entry in logged_steps(tmp_path)]
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["step"]
    assert steps == list(range(1, saved + 1)) and saved < STEPS
    message = stderr.strip().splitlines()[-1]
    assert f"step {saved}" in message and "--resume" in message, message
    assert str(tmp_path / "checkpoint.pt") in message
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    run([*command, "--resume"], threads)
    assert_same_checkpoint(uninterrupted(threads), tmp_path)
    assert_same_log(uninterrupted(threads), tmp_path)


@pytest.mark.parametrize("distributed", [False, True])
def test_stop_signals_record_then_abort(distributed):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopSignals(abort_on_second_interrupt=not distributed) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        if distributed:  # torchrun forwards the terminal's Ctrl-C: a repeat is no abort
            os.kill(os.getpid(), signal.SIGINT)
        else:
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert signals.received == signal.SIGTERM
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    stop = TrainingInterrupted("stopped", signal_number=signal.SIGTERM)
    assert isinstance(stop, KeyboardInterrupt) and stop.exit_status == 143
