"""Timing helpers shared by the benchmarks: CUDA-synchronised wall-clock calls and the table cell format."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["fmt", "sync", "time_calls"]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 0) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones, every call synchronised."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def fmt(x: float | None, spec: str) -> str:
    """A table cell: ``-`` for a missing value."""
    return "-" if x is None else format(x, spec)
