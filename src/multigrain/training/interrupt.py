"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM.

While :class:`StopSignals` is active, the first SIGINT or SIGTERM only records a request to
stop; the training loop finishes the step under way, writes a checkpoint and raises
:class:`TrainingInterrupted`. In one process a second SIGINT aborts at once
(``KeyboardInterrupt``, no checkpoint). Under torchrun every worker receives the terminal's
SIGINT and then the signal the agent forwards, so there repeated signals are only recorded;
the agent kills workers that have not exited 30 s after forwarding.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; the message says how to resume.

    A ``KeyboardInterrupt``, so that ``except Exception`` does not swallow it.
    """

    def __init__(self, message: str, *, signal_number: int) -> None:
        super().__init__(message)
        self.signal_number = signal_number

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by the signal: 130 (SIGINT), 143 (SIGTERM)."""
        return 128 + self.signal_number


class StopSignals:
    """Context manager turning SIGINT and SIGTERM into a request to stop (:attr:`received`).

    The previous handlers are restored on exit. Outside the main thread (where Python cannot
    install handlers) it does nothing: signals keep their usual effect.
    """

    def __init__(self, *, abort_on_second_interrupt: bool = True) -> None:
        self.abort_on_second_interrupt = abort_on_second_interrupt
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle SIGINT and SIGTERM here until :meth:`restore`."""
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)

    def restore(self) -> None:
        """Put back the handlers that :meth:`install` replaced."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = number
            again = " (Ctrl-C again to stop at once)" if self.abort_on_second_interrupt else ""
            logger.warning(
                "%s received: stopping after the step under way, with a checkpoint%s",
                signal.Signals(number).name,
                again,
            )
        elif number == signal.SIGINT and self.abort_on_second_interrupt:
            raise KeyboardInterrupt


def signal_name(number: int) -> str:
    """'SIGINT' for 2, and so on."""
    return signal.Signals(number).name
