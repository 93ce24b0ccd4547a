"""Model exports during training (``save_pretrained`` folders) and their Hub pushes in the background.

:class:`Exporter` calls the recipe's ``export(module, directory)`` (typically ``module.save_pretrained(directory)``
plus a model card) with the EMA generator into a fresh hidden folder, then renames it to
``OUT/export/step-XXXXXXXX``; the last ``keep_last`` exports are kept. :class:`BackgroundPusher` then runs the
recipe's ``push(directory, state)`` (e.g. ``huggingface_hub.upload_folder``) in a daemon thread, one push at a
time, so training never waits for the network; a push that raises is logged and counted, never fatal, and an
export folder is not pruned while its push is pending.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from avatar.io.files import apply_umask
from train.core.checkpoint import checkpoint_name
from train.core.state import LoopState

__all__ = ["BackgroundPusher", "ExportFn", "Exporter", "PushFn", "hub_push"]

logger = logging.getLogger(__name__)

ExportFn = Callable[[nn.Module, Path], None]
"""``export(module, directory)``: write the model into the (existing, empty) ``directory``."""
PushFn = Callable[[Path, LoopState], None]
"""``push(directory, state)``: publish an exported folder (runs in a background thread)."""


def hub_push(repo_id: str, *, private: bool = False, token: str | None = None, revision: str | None = None,
             commit_message: str = "Training step {step} ({kimg:.1f} kimg)") -> PushFn:
    """A push hook uploading each export folder to the Hub model repo ``repo_id`` (created on the first push).

    It uploads the finished, immutable export folder, never the live module (which training keeps changing while
    the upload runs). ``commit_message`` may use ``{step}`` and ``{kimg}``.
    """
    created = False

    def push(directory: Path, state: LoopState) -> None:
        nonlocal created
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        if not created:
            api.create_repo(repo_id, private=private, exist_ok=True)
            created = True
        api.upload_folder(repo_id=repo_id, folder_path=str(directory), revision=revision,
                          commit_message=commit_message.format(step=state.step, kimg=state.kimg))

    return push


class BackgroundPusher:
    """Run ``push`` calls one after another in a daemon thread; failures are logged and kept in :attr:`failures`."""

    def __init__(self, push: PushFn) -> None:
        self.push = push
        self.failures: list[str] = []
        self._queue: queue.Queue[tuple[Path, LoopState] | None] = queue.Queue()
        self._pending: list[Path] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="train-push", daemon=True)
        self._thread.start()

    def submit(self, directory: Path, state: LoopState) -> None:
        with self._lock:
            self._pending.append(directory)
        self._queue.put((directory, LoopState(**state.to_dict())))

    @property
    def pending(self) -> list[Path]:
        """Folders whose push has not finished yet."""
        with self._lock:
            return list(self._pending)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            directory, state = item
            started = time.perf_counter()
            try:
                self.push(directory, state)
                logger.info("pushed %s (%.1f s)", directory, time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - a failed push must never stop training
                line = f"push of {directory} failed: {type(exc).__name__}: {exc}"
                self.failures.append(line)
                logger.warning("%s (training goes on)", line, exc_info=logger.isEnabledFor(logging.DEBUG))
            finally:
                with self._lock:
                    self._pending.remove(directory)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted push has finished (or ``timeout`` seconds); True when none is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def close(self) -> None:
        """Stop the thread after the pushes already submitted (does not wait; see :meth:`wait`)."""
        self._queue.put(None)


class Exporter:
    """Export ``module`` into ``root/step-XXXXXXXX`` with ``export``; keep the last ``keep_last`` (None/0: all)."""

    def __init__(self, root: str | Path, export: ExportFn, keep_last: int | None = None,
                 pusher: BackgroundPusher | None = None) -> None:
        self.root = Path(root)
        self.export_fn = export
        self.keep_last = keep_last
        self.pusher = pusher
        self.last: Path | None = None

    def remove_partials(self) -> None:
        if self.root.is_dir():
            for path in self.root.glob(".step-*.partial-*"):
                shutil.rmtree(path, ignore_errors=True)

    def exports(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step-"))

    def export(self, module: nn.Module, state: LoopState) -> Path:
        """Write the export of ``state.step`` and queue its push; returns its folder."""
        final = self.root / checkpoint_name(state.step)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=self.root))
        try:
            apply_umask(tmp)
            self.export_fn(module, tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.last = final
        logger.info("exported the model to %s", final)
        self.prune()
        if self.pusher is not None:
            self.pusher.submit(final, state)
        return final

    def prune(self) -> list[Path]:
        if not self.keep_last:
            return []
        busy = {p.resolve() for p in self.pusher.pending} if self.pusher is not None else set()
        removed = []
        for path in self.exports()[:-self.keep_last]:
            if path.resolve() not in busy:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed
