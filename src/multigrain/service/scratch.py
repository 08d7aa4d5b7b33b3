"""Each server's temporary uploads in a folder of its own, swept when its server is gone.

An upload is written to ``data_dir/tmp/<server>/<uuid>.upload`` while it is decoded (and
removed by the request in a ``finally``), but a server killed mid-request leaves its files
behind. Each server therefore holds the lock of its own folder
(:mod:`multigrain.runtime.folder_lock`, which dies with the process), and a starting server
removes every folder under ``tmp`` whose lock nobody holds: those of crashed servers, never
those of a live server sharing the data folder. Files directly in ``tmp`` come from
versions before per-server folders; they are removed once an hour old (an upload lives
there for the seconds its request takes).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from multigrain.runtime.folder_lock import FolderLock, FolderLocked, lock_folder

logger = logging.getLogger(__name__)

#: Age after which an upload of the flat layout (older versions) is stale.
FLAT_STALE_S = 3600.0


def open_scratch(tmp_root: Path) -> FolderLock:
    """Sweep what crashed servers left under `tmp_root`, then take a new folder for this
    server; the returned lock's ``folder`` is it (remove it with :func:`close_scratch`)."""
    tmp_root.mkdir(parents=True, exist_ok=True)
    removed = sweep_stale(tmp_root)
    if removed:
        logger.warning("removed %d temporary uploads left by a server that stopped", removed)
    return lock_folder(tmp_root / f"{os.getpid()}-{uuid.uuid4().hex[:8]}", "serve")


def close_scratch(lock: FolderLock) -> None:
    """Remove this server's folder, then free its lock."""
    shutil.rmtree(lock.folder, ignore_errors=True)
    lock.release()


def sweep_stale(tmp_root: Path, *, now: float | None = None) -> int:
    """Remove the folders under `tmp_root` that no live server holds, and flat ``*.upload``
    files older than FLAT_STALE_S; returns how many upload files went with them."""
    now = time.time() if now is None else now
    removed = 0
    for entry in tmp_root.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            try:
                lock = lock_folder(entry, "sweep")
            except FolderLocked:
                continue  # a live server's
            with lock:
                removed += sum(1 for _ in entry.glob("*.upload"))
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.suffix == ".upload" and now - entry.stat().st_mtime > FLAT_STALE_S:
            entry.unlink(missing_ok=True)
            removed += 1
    return removed
