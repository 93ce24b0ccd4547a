"""Checkpoints: Accelerate's ``save_state`` plus the loop's state, written atomically, the last few kept.

Layout of ``OUT/checkpoints/step-XXXXXXXX/`` (``XXXXXXXX``: the step, 8 digits):

* what ``accelerator.save_state`` writes: every registered module (``model.safetensors``, ``model_1.safetensors``,
  ... in registration order: the phases' modules, then the EMA), every optimizer (``optimizer.bin``, ...), the
  objects registered with ``register_for_checkpointing`` and Accelerate's own RNG pickles;
* ``trainer_state.json``: the loop's counters (:class:`~train.core.state.LoopState`: step, ``cur_nimg``, data
  position, tick), the number of processes, the global batch and the time;
* ``rng_state_<rank>.json``: each process's Python / NumPy / torch / CUDA generator states
  (:func:`~train.core.rng.capture_rng_state`).

A checkpoint is written into a hidden ``.step-XXXXXXXX.partial`` sibling and renamed into place when every process
has finished writing (its folders and files get the modes the user's umask gives, also those that safetensors
creates as 0o600), so a folder named ``step-*`` that holds
``trainer_state.json`` is always complete; partial folders a killed run left behind are removed by the next run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatar.errors import InputNotFoundError
from avatar.io.files import apply_umask
from train.core.rng import capture_rng_state, restore_rng_state
from train.core.state import LoopState

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = ["STATE_FILE", "CheckpointManager", "checkpoint_name", "write_json"]

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng_state_{rank}.json"
FORMAT_VERSION = 1
_NAME = re.compile(r"step-(\d{8,})")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON into ``path`` through a partial name and a rename (the umask's mode)."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


class CheckpointManager:
    """Save, find, load and prune the checkpoints of one run (see the module docstring).

    Every process calls :meth:`save` and :meth:`load` (they synchronise); the folder work is done by the main
    process.

    Args:
        accelerator: the run's Accelerator (its registered models, optimizers and objects are what is saved).
        root: ``OUT/checkpoints``.
        keep_last: keep this many most recent checkpoints (``None`` or 0: all).
    """

    def __init__(self, accelerator: Accelerator, root: str | Path, keep_last: int | None = 3) -> None:
        self.accelerator = accelerator
        self.root = Path(root)
        self.keep_last = keep_last

    # ---- finding -----------------------------------------------------------------------------------------
    @staticmethod
    def is_checkpoint(path: Path) -> bool:
        return path.is_dir() and (path / STATE_FILE).is_file()

    def checkpoints(self, root: Path | None = None) -> list[tuple[int, Path]]:
        """Complete checkpoints under ``root`` (default: this run's), oldest first."""
        root = self.root if root is None else root
        found = []
        if root.is_dir():
            for path in root.iterdir():
                match = _NAME.fullmatch(path.name)
                if match and self.is_checkpoint(path):
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def latest(self, root: Path | None = None) -> Path | None:
        found = self.checkpoints(root)
        return found[-1][1] if found else None

    def resolve(self, resume: str | Path | None) -> Path | None:
        """The checkpoint folder ``resume`` names: ``None``; ``"latest"`` (this run's newest, or ``None`` when it
        has none yet, so that a job can always be started with ``--resume latest``); a checkpoint folder; or a
        run's output (or checkpoints) folder, meaning its newest checkpoint."""
        if resume is None or str(resume) == "":
            return None
        if str(resume) == "latest":
            latest = self.latest()
            if latest is None:
                logger.info("no checkpoint in %s yet: starting a new run", self.root)
            return latest
        path = Path(resume).expanduser()
        if self.is_checkpoint(path):
            return path
        for root in (path, path / "checkpoints"):
            latest = self.latest(root)
            if latest is not None:
                return latest
        raise InputNotFoundError(
            f"cannot resume from {path}: it is not a checkpoint folder (one with {STATE_FILE}) nor a folder of "
            f"them; pass a folder like OUT/checkpoints/step-00001000, a run's OUT folder, or 'latest'")

    # ---- writing -----------------------------------------------------------------------------------------
    def remove_partials(self) -> None:
        """Remove the partial checkpoints a killed run left (main process; call before training starts)."""
        if self.accelerator.is_main_process and self.root.is_dir():
            for path in self.root.glob(".step-*.partial"):
                shutil.rmtree(path, ignore_errors=True)
                logger.info("removed %s, left behind by an interrupted run", path)

    def save(self, state: LoopState, extra: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint of ``state`` (every process calls this); returns its folder."""
        acc = self.accelerator
        final = self.root / checkpoint_name(state.step)
        partial = self.root / f".{final.name}.partial"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            self.root.mkdir(parents=True, exist_ok=True)
            partial.mkdir()
            apply_umask(partial)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        write_json(partial / RNG_FILE.format(rank=acc.process_index), capture_rng_state())
        if acc.is_main_process:
            meta = {"format": FORMAT_VERSION, "state": state.to_dict(), "kimg": state.kimg,
                    "num_processes": acc.num_processes, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    **(extra or {})}
            write_json(partial / STATE_FILE, meta)
        acc.wait_for_everyone()
        if acc.is_main_process:
            for entry in partial.rglob("*"):  # safetensors writes 0o600 files whatever the umask
                apply_umask(entry)
            if final.exists():
                shutil.rmtree(final)
            os.replace(partial, final)
            self.prune(keep=final)
        acc.wait_for_everyone()
        return final

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Remove all but the ``keep_last`` newest checkpoints (never ``keep``); main process only."""
        if not self.keep_last or not self.accelerator.is_main_process:
            return []
        removed = []
        for _, path in self.checkpoints()[:-self.keep_last]:
            if keep is not None and path.resolve() == keep.resolve():
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    # ---- reading -----------------------------------------------------------------------------------------
    def load(self, path: Path) -> tuple[LoopState, dict[str, Any]]:
        """Restore everything saved in ``path`` (every process calls this); returns the counters and metadata.

        The generators are restored from this process's ``rng_state_<rank>.json``; a run resumed with another
        number of processes keeps the states of the ranks both runs have and warns.
        """
        acc = self.accelerator
        meta = json.loads((path / STATE_FILE).read_text())
        acc.load_state(str(path))
        rng_file = path / RNG_FILE.format(rank=acc.process_index)
        if rng_file.is_file():
            restore_rng_state(json.loads(rng_file.read_text()))
        else:
            logger.warning("%s has no random state for process %d (it was saved by %s processes): its generators "
                           "keep their fresh seeds", path, acc.process_index, meta.get("num_processes"))
        if meta.get("num_processes") != acc.num_processes and acc.is_main_process:
            logger.warning("%s was saved by %s processes and is resumed by %d: the data stream continues at the "
                           "same sample, but random draws will differ from an uninterrupted run", path,
                           meta.get("num_processes"), acc.num_processes)
        return LoopState.from_dict(meta["state"]), meta
