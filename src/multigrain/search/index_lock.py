"""Who may write an index folder: one process at a time, under the folder's lock.

``multigrain serve`` keeps the index in memory and saves all of it after every edit, so a
command-line edit made while it runs would be undone by its next save (a lost update).
The server therefore holds the index folder's lock (:mod:`multigrain.runtime.folder_lock`)
for as long as it runs, and ``index build/add/remove`` hold it while they edit: each
refuses, naming the other process and the fix, instead of overwriting it. The lock dies
with its process, so a crashed server never blocks the folder. Readers (``search``) take
no lock: every save replaces the index atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from multigrain.runtime.errors import MultiGrainError
from multigrain.runtime.folder_lock import FolderLock, FolderLocked, LockHolder, lock_folder

SERVING = "serve"
EDITING = "edit"


def lock_for_edit(folder: str | os.PathLike[str], *, create: bool = True) -> FolderLock:
    """The lock of an index folder for a command-line edit; the folder is created if
    missing only with `create` (an index to build, not one to change).

    Raises MultiGrainError with the fix when a server or another edit holds it.
    """
    if not create and not Path(folder).is_dir():
        raise MultiGrainError(
            f"{folder} is not a multigrain index folder (no such folder): build one with "
            "`multigrain index build`"
        )
    try:
        return lock_folder(folder, EDITING)
    except FolderLocked as locked:
        raise MultiGrainError(_refusal(locked, editing=True)) from None


def lock_for_serving(folder: str | os.PathLike[str]) -> FolderLock:
    """The lock of an index folder for a server's lifetime.

    Raises MultiGrainError with the fix when another server or an edit holds it.
    """
    try:
        return lock_folder(folder, SERVING)
    except FolderLocked as locked:
        raise MultiGrainError(_refusal(locked, editing=False)) from None


def _refusal(locked: FolderLocked, *, editing: bool) -> str:
    folder, holder = locked.folder, locked.holder
    who = _who(holder)
    if holder.role == SERVING and editing:
        return (
            f"the index {folder} is served by `multigrain serve` ({who}), whose next save "
            "would undo this edit: add or remove images through the server (POST /index, "
            "DELETE /index/{id}), or stop the server first"
        )
    if holder.role == SERVING:
        return (
            f"the index {folder} is already served by `multigrain serve` ({who}): stop that "
            "server first, or serve a copy of the index"
        )
    return (
        f"the index {folder} is being changed by another multigrain process ({who}): wait "
        "for it to finish, then run this again"
    )


def _who(holder: LockHolder) -> str:
    return f"pid {holder.pid}" if holder.pid is not None else "pid unknown"
