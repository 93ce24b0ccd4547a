"""Batching and background prefetching of frame streams (used by every pipeline that reads videos)."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from avatar.errors import InputError

__all__ = ["batched_frames", "in_background"]

T = TypeVar("T")


def batched_frames(frames: Iterable[np.ndarray], size: int, limit: int | None = None) -> Iterator[list[np.ndarray]]:
    """Group frames into lists of ``size`` (the last may be shorter), stopping after ``limit`` frames; each frame
    is made C-contiguous."""
    if size < 1:
        raise InputError(f"batch_size must be >= 1, got {size}")
    chunk: list[np.ndarray] = []
    for n, frame in enumerate(frames):
        if limit is not None and n >= limit:
            break
        chunk.append(np.ascontiguousarray(frame))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def in_background(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run a generator in a daemon thread, ``depth`` items ahead; its exceptions are raised here, in order.
    Closing the returned generator stops the thread after its current item (and closes ``items``)."""
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            with torch.no_grad():  # grad mode is per thread
                for item in items:
                    while not stop.is_set():
                        try:
                            buffer.put(("item", item), timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            buffer.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put(("error", exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="avatar-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                buffer.get(timeout=0.1)
