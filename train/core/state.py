"""The loop's counters (saved in every checkpoint) and what :meth:`Trainer.fit` returns."""

from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FitResult", "LoopState"]


@dataclass
class LoopState:
    """Progress of a run. Thresholds of the official recipes are in images (``cur_nimg``), not steps.

    Attributes:
        step: optimizer steps taken (phase ``interval`` tests use it).
        cur_nimg: images (samples) seen: the global batch is added after each step.
        data_position: global position of the next sample in the data stream (``train.core.sampling``).
        cur_tick: log ticks completed; ``tick_start_nimg``: ``cur_nimg`` at the start of the current tick.
    """

    step: int = 0
    cur_nimg: int = 0
    data_position: int = 0
    cur_tick: int = 0
    tick_start_nimg: int = 0

    @property
    def kimg(self) -> float:
        return self.cur_nimg / 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in values.items() if k in names})


@dataclass
class FitResult:
    """How a run ended.

    Attributes:
        state: the counters at the end.
        reason: ``"done"`` (``kimg`` / ``max_steps`` reached), ``"already done"`` (a resumed run that had nothing
            left to do), or the name of the signal that stopped it (``"SIGINT"``, ``"SIGTERM"``).
        checkpoint: the last checkpoint written (or resumed from), if any.
        export: the last exported model folder, if any.
        push_failures: one line per Hub push that failed (training went on).
    """

    state: LoopState
    reason: str
    checkpoint: Path | None = None
    export: Path | None = None
    push_failures: list[str] = field(default_factory=list)

    @property
    def interrupted(self) -> bool:
        return self.reason.startswith("SIG")

    @property
    def exit_code(self) -> int:
        """0 when the run finished, ``128 + signal number`` when a signal stopped it (130 for Ctrl-C, the
        toolkit's convention; 143 for SIGTERM)."""
        if not self.interrupted:
            return 0
        return 128 + int(getattr(signal, self.reason))
