"""The one logging setup of every entry point: the ``avatar`` CLI, ``python -m eval.run|prepare|bench``,
``python -m avatar.bench`` and the app.

The library itself only logs (``logging.getLogger(__name__)``) and never configures logging; an entry point
calls :func:`setup_logging` once, before its work. Records of the toolkit's own namespaces (``avatar``,
``eval``, ``train``) go to stderr as ``LEVEL name: message``; other libraries' loggers are left alone (their
warnings still reach stderr through :mod:`logging`'s last-resort handler). While a tqdm progress bar is on the
screen, records are written through ``tqdm.write``, which clears the bar, prints the line and draws the bar
again below it, so a log line never lands on the bar's line.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["NAMESPACES", "setup_logging", "verbosity_level"]

NAMESPACES = ("avatar", "eval", "train")
"""Logger namespaces configured by :func:`setup_logging`."""

FORMAT = "%(levelname)s %(name)s: %(message)s"


def _active_progress_bar_class():  # noqa: ANN202 - the tqdm class, or None
    """tqdm's class when a progress bar is shown now (never imports tqdm: no bar without it), else ``None``."""
    std = sys.modules.get("tqdm.std")
    tqdm = getattr(std, "tqdm", None)
    instances = getattr(tqdm, "_instances", None)
    if not instances:
        return None
    try:
        shown = any(not getattr(bar, "disable", False) for bar in list(instances))
    except RuntimeError:  # the set changed while it was read: a bar came or went; write through tqdm to be safe
        shown = True
    return tqdm if shown else None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (plays well with redirection and pytest's
    ``capsys``); through ``tqdm.write`` while a progress bar is shown, so the line does not collide with it."""

    @property
    def stream(self):  # type: ignore[override]  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = _active_progress_bar_class()
        if tqdm is None:
            super().emit(record)
            return
        try:
            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:  # pragma: no cover - as logging.StreamHandler does
            raise
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def verbosity_level(verbosity: int = 0) -> int:
    """``verbosity`` (``-v`` count, ``-1`` for ``-q``) -> logging level: DEBUG if > 0, WARNING if < 0, else INFO."""
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def setup_logging(verbosity: int = 0) -> None:
    """Log the toolkit's namespaces to stderr at :func:`verbosity_level` of ``verbosity``.

    Idempotent: a second call (the ``avatar`` CLI, then the ``eval`` main it forwards to) only changes the level.
    """
    level = verbosity_level(verbosity)
    for name in NAMESPACES:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter(FORMAT))
            logger.addHandler(handler)
