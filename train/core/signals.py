"""Stop on SIGINT / SIGTERM at the end of the current step, not in the middle of it.

Inside ``with GracefulStop() as stop:`` the first SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption, ``kill``)
only sets ``stop.signal``; the loop sees it after the step it is in, saves a checkpoint and returns. While it does:

* more signals within :attr:`GracefulStop.DUPLICATE_WINDOW_S` of the first are the same request delivered twice
  (under ``torchrun`` a worker gets Ctrl-C's SIGINT from the terminal and again from the launcher, which forwards
  what it receives) and are ignored;
* a later SIGINT (Ctrl-C pressed again) raises ``KeyboardInterrupt``: stop at once, without saving;
* a later SIGTERM is ignored (a scheduler that will not wait sends SIGKILL).

Outside the main thread (where Python cannot install handlers) it does nothing. ``torchrun`` kills its workers
30 s after forwarding a signal, so the step in progress and the checkpoint should fit in that time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["GracefulStop"]


class GracefulStop:
    """Context manager catching the first SIGINT / SIGTERM (see the module docstring); ``announce``: write one
    line to stderr when the first signal comes (the main process; the others stay quiet)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    DUPLICATE_WINDOW_S = 2.0

    def __init__(self, announce: bool = True) -> None:
        self.announce = announce
        self.signal: signal.Signals | None = None
        self._previous: dict[int, Any] = {}
        self._first_at = 0.0

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str | None:
        return None if self.signal is None else self.signal.name

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.signal is None:
            self.signal, self._first_at = signal.Signals(signum), now
            if self.announce:  # os.write, not logging: the main thread may hold logging's locks right now
                _say(f"{self.signal.name} received: finishing the current step, then saving a checkpoint (press "
                     "Ctrl-C again to stop at once, without saving)")
        elif signum == signal.SIGINT and now - self._first_at > self.DUPLICATE_WINDOW_S:
            self._restore()
            raise KeyboardInterrupt

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"\n{line}\n".encode())
