"""atomic.py: outputs appear whole, with the permissions a plain open() would give."""

from __future__ import annotations

import os

import pytest

from multigrain.runtime.atomic import atomic_write, atomic_write_text


def test_new_file_gets_the_umask_mode_and_a_replaced_file_keeps_its_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "out" / "paths.txt", "a\n")
        assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        os.chmod(target, 0o640)
        atomic_write_text(target, "b\n")
        assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == "b\n"
    finally:
        os.umask(previous)


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = atomic_write_text(tmp_path / "metadata.json", "old")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["metadata.json"]


def test_staged_folder_replaces_on_success_and_keeps_the_old_one_on_failure(tmp_path):
    import pytest

    from multigrain.runtime.atomic import staged_folder

    target = tmp_path / "out"
    with staged_folder(target) as staging:
        (staging / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
