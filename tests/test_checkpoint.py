"""Checkpoint files: atomic writes, weights-only loading, clear errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from multigrain.models.checkpoint import load_checkpoint, save_checkpoint
from multigrain.runtime.errors import MultiGrainError


def test_round_trip_and_no_temporary_left(tmp_path):
    path = save_checkpoint(
        tmp_path / "run" / "c.pt", {"model_state": {"w": torch.ones(3)}, "step": 4}
    )
    state = load_checkpoint(path)
    assert state["step"] == 4 and torch.equal(state["model_state"]["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["c.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model_state": {}, "step": 1})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(path, {"model_state": {}, "bad": Unsaveable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_truncated_file_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"model_state": {"w": torch.ones(1000)}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(MultiGrainError, match=r"cannot load checkpoint .*c\.pt.*truncated"):
        load_checkpoint(path)


def test_arbitrary_pickles_are_not_executed(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model_state": Payload()}))
    with pytest.raises(MultiGrainError, match=r"cannot load checkpoint .*evil\.pt.*for safety"):
        load_checkpoint(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(MultiGrainError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(MultiGrainError, match="no 'model_state'"):
        load_checkpoint(tmp_path / "other.pt")
