"""Folder locks die with their process; the index lock's refusals name the holder and the fix."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.folder_lock import LOCK_FILE, FolderLocked, is_locked, lock_folder
from multigrain.search.index_lock import lock_for_edit, lock_for_serving

HOLD = (
    "import sys, time\n"
    "from multigrain.runtime.folder_lock import lock_folder\n"
    "lock = lock_folder(sys.argv[1], sys.argv[2])\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def _holder(folder: Path, role: str) -> subprocess.Popen:
    """A process holding `folder`'s lock (it says so on stdout once it does)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), role], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


def test_a_lock_held_elsewhere_is_refused_and_dies_with_its_process(tmp_path: Path) -> None:
    holder = _holder(tmp_path / "folder", "serve")
    try:
        with pytest.raises(FolderLocked) as refused:
            lock_folder(tmp_path / "folder", "edit")
        assert refused.value.holder.pid == holder.pid and refused.value.holder.role == "serve"
        assert is_locked(tmp_path / "folder")
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs
        holder.wait()
    assert (tmp_path / "folder" / LOCK_FILE).exists()  # the file stays; the lock does not
    assert not is_locked(tmp_path / "folder")
    with lock_folder(tmp_path / "folder", "edit") as lock:
        assert lock.held
        content = (tmp_path / "folder" / LOCK_FILE).read_text()
        assert content == f"{os.getpid()} edit\n"
    assert not lock.held and not is_locked(tmp_path / "folder")


def test_one_holder_at_a_time_within_a_process_too(tmp_path: Path) -> None:
    first = lock_folder(tmp_path, "serve")
    with pytest.raises(FolderLocked):
        lock_folder(tmp_path, "serve")
    first.release()
    first.release()  # a second release does nothing
    lock_folder(tmp_path, "serve").release()


def test_index_lock_messages_name_the_holder_and_the_fix(tmp_path: Path) -> None:
    index = tmp_path / "index"
    server = _holder(index, "serve")
    try:
        with pytest.raises(MultiGrainError) as edit:
            lock_for_edit(index)
        message = str(edit.value)
        assert f"pid {server.pid}" in message and "multigrain serve" in message
        assert "POST /index" in message and "DELETE /index/{id}" in message
        assert "stop the server" in message
        with pytest.raises(MultiGrainError, match="already served"):
            lock_for_serving(index)
    finally:
        server.kill()
        server.wait()
    editor = _holder(index, "edit")
    try:
        with pytest.raises(MultiGrainError, match=f"pid {editor.pid}.*wait for it to finish"):
            lock_for_serving(index)
    finally:
        editor.kill()
        editor.wait()
    lock_for_serving(index).release()


def test_editing_a_missing_index_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(MultiGrainError, match="index build"):
        lock_for_edit(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()
