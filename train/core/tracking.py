"""Per-tick statistics and the trackers they go to.

* :class:`TickStats` collects what the phases report (``ctx.log``) during a tick (``tick_kimg`` thousand images,
  4 in the official runs) and averages it over the tick and the processes, as the official
  ``training_stats.report`` / ``stats.jsonl`` do: every element of every reported tensor counts once.
* :class:`JSONLTracker` is an Accelerate tracker of our own: one JSON object per line in ``OUT/logs/stats.jsonl``
  (appended to on resume). It is always on, so a run logs without any optional package; TensorBoard is added
  when it is installed (:func:`default_trackers`); Weights & Biases or others only when asked for by name.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.tracking import GeneralTracker
from accelerate.utils import gather_object

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["JSONLTracker", "TickStats", "default_trackers", "flatten_config", "resource_stats"]


class TickStats:
    """Sums and counts of reported values, reduced over processes at the end of a tick."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor | float] = {}
        self._counts: dict[str, int] = {}

    def report(self, name: str, value: torch.Tensor | float) -> None:
        """Add ``value`` (a tensor of any shape, or a number) to ``name``; tensors stay on their device (no sync)."""
        if isinstance(value, torch.Tensor):
            value = value.detach()
            total, count = value.float().sum(), value.numel()
        else:
            total, count = float(value), 1
        if count == 0:
            return
        self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._counts[name] = self._counts.get(name, 0) + count

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def means(self, accelerator: Accelerator) -> dict[str, float]:
        """The means over the tick and every process (every process must call it), then reset.

        Names reported on some processes only are averaged over the processes that reported them.
        """
        names = sorted(self._sums)
        if accelerator.num_processes > 1:
            names = sorted(set().union(*gather_object([names])))
        if not names:
            self.reset()
            return {}
        device = accelerator.device
        table = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
        for i, name in enumerate(names):
            if name in self._sums:
                total = self._sums[name]
                table[i, 0] = total.to(device, torch.float64) if isinstance(total, torch.Tensor) else total
                table[i, 1] = self._counts[name]
        if accelerator.num_processes > 1:
            table = accelerator.reduce(table, reduction="sum")
        self.reset()
        out = {}
        for name, (total, count) in zip(names, table.tolist(), strict=True):
            if count > 0:
                out[name] = total / count
        return out


def resource_stats(device: torch.device, reset: bool = True) -> dict[str, float]:
    """Peak memory since the last call: ``Resources/peak_gpu_mem_gb`` (+ ``_reserved``) on CUDA, and this
    process's peak resident memory ``Resources/cpu_mem_gb`` (over the whole run, as the OS reports it)."""
    out: dict[str, float] = {}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out["Resources/cpu_mem_gb"] = rss / (2**30 if sys.platform == "darwin" else 2**20)
    if device.type == "cuda" and torch.cuda.is_available():
        out["Resources/peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["Resources/peak_gpu_mem_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
    return out


def flatten_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config dict -> ``{"a.b": value}`` with values trackers accept (sequences and None as text)."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(list(value) if isinstance(value, tuple) else value)
    return flat


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JSONLTracker(GeneralTracker):
    """Accelerate tracker writing ``<logging_dir>/<run_name>/stats.jsonl``: one object per ``log`` call,
    ``{"step": ..., "timestamp": ..., **values}``; the run's config goes to ``config.json`` beside it."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.directory = Path(logging_dir) / run_name
        self.path = self.directory / "stats.jsonl"
        self._file = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run

    @property
    def tracker(self) -> Any:
        return self._file

    def store_init_configuration(self, values: dict) -> None:
        (self.directory / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True, default=str))

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        if self._file is None:
            self.start()
        record = {"step": step, "timestamp": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, default=str) + "\n")  # type: ignore[union-attr]
        self._file.flush()  # type: ignore[union-attr]

    def finish(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def default_trackers(names: Sequence[str], run_name: str, logging_dir: str | os.PathLike) -> list[Any]:
    """Trackers for ``Accelerator(log_with=...)``: ``"auto"`` = our JSONL file + TensorBoard when installed;
    ``"jsonl"``; or any name Accelerate knows (``"tensorboard"``, ``"wandb"``, ...: the package must be
    installed)."""
    from accelerate.utils import is_tensorboard_available

    out: list[Any] = []
    for name in names:
        if name == "auto":
            out.append(JSONLTracker(run_name, logging_dir))
            if is_tensorboard_available():
                out.append("tensorboard")
        elif name == "jsonl":
            out.append(JSONLTracker(run_name, logging_dir))
        elif name not in ("none", ""):
            out.append(name)
    seen, unique = set(), []
    for tracker in out:
        key = getattr(tracker, "name", tracker)
        if key not in seen:
            seen.add(key)
            unique.append(tracker)
    return unique
