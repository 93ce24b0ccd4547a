"""Choosing cuDNN's convolution engines under a memory limit, for benchmarks that report peak memory.

Without the autotuner, PyTorch runs the first engine of cuDNN's heuristics whose workspace it can allocate
(``try_configs`` in ATen's ``native/cudnn/Conv_v8.cpp``), and caches that choice per convolution shape. Nothing else
limits the workspace, so on a GPU with free memory a convolution may take gigabytes of it, and the peak memory of a
model then depends on how much memory the GPU has. :func:`engines_under_cap` runs a warm-up call with the process
limited to a total (``torch.cuda.set_per_process_memory_fraction``): an engine whose workspace does not fit fails to
allocate and the next one is tried; the cached choices stay after the limit is lifted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ["engines_under_cap", "memory_cap"]

T = TypeVar("T")


@contextlib.contextmanager
def memory_cap(device: torch.device, gib: float) -> Iterator[None]:
    """Limits this process's CUDA allocations on ``device`` to ``gib`` GiB in all while active (cached blocks
    are released first so that the limit applies to live memory); lifted on exit."""
    if device.type != "cuda":
        raise ValueError(f"a memory cap needs a CUDA device, got {device}")
    if gib <= 0:
        raise ValueError(f"the memory cap must be positive, got {gib} GiB")
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), device)
    try:
        yield
    finally:
        torch.cuda.synchronize(device)
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def engines_under_cap(call: Callable[[], T], device: torch.device, gib: float | None) -> T | None:
    """Runs ``call()`` once with the process capped at ``gib`` GiB (``None``: no cap) so that the convolution
    engines it caches fit under the cap. Returns its result, or ``None`` when the call itself does not fit (a
    ``torch.OutOfMemoryError`` under the cap)."""
    if gib is None:
        return call()
    try:
        with memory_cap(device, gib):
            return call()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
