"""A job stopped by a signal: SIGINT (Ctrl-C) and SIGTERM (`kill`, a scheduler) alike.

Python raises KeyboardInterrupt on SIGINT, while SIGTERM ends the process at once: no
cleanup, no word. Within :func:`interruptible` both raise :class:`Interrupted`, so that a
command can say what it saved and exit with the status a shell expects (128 + the signal's
number: 130, 143).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(BaseException):
    """The job was stopped by the signal `signum`.

    A BaseException, as KeyboardInterrupt is: an ``except Exception`` does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(self.name)

    @property
    def name(self) -> str:
        """ "SIGINT", "SIGTERM"."""
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        """What a shell reports for a process this signal ended: 130, 143."""
        return 128 + self.signum


@contextmanager
def interruptible() -> Iterator[None]:
    """Within: SIGINT and SIGTERM raise :class:`Interrupted` in this process.

    Processes forked within (DataLoader workers) inherit the SIGTERM handler; there it
    raises KeyboardInterrupt, as Ctrl-C does, on which torch's workers stop quietly and
    leave the reporting to this process. Off the main thread, where Python cannot set a
    handler, SIGTERM keeps its default action.
    """
    owner = os.getpid()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:
            raise KeyboardInterrupt
        raise Interrupted(signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(signal.SIGINT) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
