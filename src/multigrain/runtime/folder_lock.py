"""Advisory folder locks that die with their process: ``fcntl.flock`` on ``FOLDER/LOCK``.

One process at a time may hold a folder's lock. The holder writes ``"<pid> <role>"`` into
the lock file, so that a refused process can say who holds it and why. The lock is tied to
the open file, not to the file's existence: the kernel drops it when the holder closes the
file or dies in any way (``kill -9`` included), so it never goes stale the way a pid file
does, and the file itself is never deleted (deleting it would let two processes lock two
different files of the same name).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from multigrain.runtime.errors import MultiGrainError

LOCK_FILE = "LOCK"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a folder's lock, as its lock file says; pid None if it could not be read."""

    pid: int | None
    role: str  # what the holder does with the folder, e.g. "serve" or "edit"


class FolderLocked(MultiGrainError):
    """Another process holds the folder's lock; callers turn it into a message with the fix."""

    def __init__(self, folder: Path, holder: LockHolder) -> None:
        self.folder = folder
        self.holder = holder
        who = f"pid {holder.pid}" if holder.pid is not None else "another process"
        super().__init__(f"{folder} is locked by {who} ({holder.role or 'unknown role'})")


class FolderLock:
    """A held lock on a folder; :meth:`release` (or leaving the ``with`` block) frees it."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (closing the file does it); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lock dropped without release() must not stay held
        self.release()


def lock_folder(folder: str | os.PathLike[str], role: str) -> FolderLock:
    """Take the lock of `folder` (created if missing) without waiting.

    Raises FolderLocked, naming the holder, when another process (or another open of the
    same file in this process) holds it.
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLocked(root, read_holder(path)) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {role}\n".encode(), 0)
    return FolderLock(root, fd)


def is_locked(folder: str | os.PathLike[str]) -> bool:
    """Whether some process holds the lock of `folder` now (False when it has no lock file)."""
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return False
    try:
        lock = lock_folder(folder, "probe")
    except FolderLocked:
        return True
    lock.release()
    return False


def read_holder(path: Path) -> LockHolder:
    """The "<pid> <role>" a holder wrote into its lock file (it may not have written yet)."""
    with contextlib.suppress(OSError):
        pid, _, role = path.read_text(encoding="utf-8").strip().partition(" ")
        if pid.isdigit():
            return LockHolder(int(pid), role)
    return LockHolder(None, "")
