"""The shared training options, as frozen dataclasses (JSON round trip through :class:`avatar.configuration.Config`).

A recipe subclasses :class:`TrainConfig` with its own fields (so ``--kimg``, ``--max-steps``, ``--batch-size`` stay
top-level flags), and :func:`train.core.cli.parse_config` turns the whole tree into command-line flags whose help
is each field's docstring: ``--checkpoint.every-steps 500``, ``--ema.rampup none``, ``--log.trackers jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avatar.configuration import Config
from avatar.errors import ConfigError
from train.core.ema import EmaConfig

__all__ = ["CheckpointConfig", "DataConfig", "EmaConfig", "ExportConfig", "LogConfig", "TrainConfig"]


def _at_least(name: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")


@dataclass(frozen=True)
class CheckpointConfig(Config):
    """Resumable checkpoints in ``OUT/checkpoints/step-XXXXXXXX``."""

    every_steps: int = 1000
    """Save every this many steps (0: only at the end and when a signal stops the run)."""
    keep_last: int = 3
    """Keep this many most recent checkpoints (0: keep all)."""

    def __post_init__(self) -> None:
        _at_least("checkpoint.every_steps", self.every_steps, 0)
        _at_least("checkpoint.keep_last", self.keep_last, 0)


@dataclass(frozen=True)
class LogConfig(Config):
    """Scalars per tick, the progress bar and image snapshots."""

    tick_kimg: float = 4.0
    """Length of a logging tick in thousands of images (official: 4): losses are averaged over a tick."""
    trackers: tuple[str, ...] = ("auto",)
    """Accelerate trackers: 'auto' (a JSONL file, plus TensorBoard when installed), 'jsonl', 'tensorboard',
    'wandb', ... ('none': no tracker)."""
    progress_bar: bool = True
    """Show a tqdm bar (kimg/s, ETA) on the main process."""
    image_every_steps: int = 0
    """Save image grids (``OUT/images``) every this many steps, after the first step and at the end (0: off)."""

    def __post_init__(self) -> None:
        if not self.tick_kimg > 0:
            raise ConfigError(f"log.tick_kimg must be above 0, got {self.tick_kimg}")
        _at_least("log.image_every_steps", self.image_every_steps, 0)


@dataclass(frozen=True)
class ExportConfig(Config):
    """``save_pretrained`` exports of the EMA model in ``OUT/export/step-XXXXXXXX`` (and their Hub pushes)."""

    every_steps: int = 0
    """Export every this many steps (0: only at the end)."""
    keep_last: int = 2
    """Keep this many most recent exports (0: keep all)."""
    push: bool = True
    """Run the recipe's Hub push hook after each export (in a background thread), when it has one."""
    push_timeout_s: float = 600.0
    """At the end, wait at most this long for pushes still running."""

    def __post_init__(self) -> None:
        _at_least("export.every_steps", self.every_steps, 0)
        _at_least("export.keep_last", self.keep_last, 0)
        _at_least("export.push_timeout_s", self.push_timeout_s, 0)


@dataclass(frozen=True)
class DataConfig(Config):
    """The loader built from a map-style dataset (``train.core.sampling``)."""

    num_workers: int = 4
    """Loader worker processes per training process (0: load in the training process)."""
    shuffle: bool = True
    """The official order: one seeded shuffle, then the windowed swap walk of EG3D's InfiniteSampler (else 0..N-1)."""
    seed_samples: bool = True
    """Seed each sample's random augmentation by its position in the stream (exact resume with workers)."""
    pin_memory: bool = True
    """Pinned host memory for batches (CUDA only)."""
    prefetch_factor: int = 2
    """Batches each worker loads ahead."""

    def __post_init__(self) -> None:
        _at_least("data.num_workers", self.num_workers, 0)
        _at_least("data.prefetch_factor", self.prefetch_factor, 1)


@dataclass(frozen=True)
class TrainConfig(Config):
    """Options every training recipe shares. Subclass it for a recipe's own options."""

    out_dir: str = "runs/train"
    """Output folder: checkpoints/, export/, images/, logs/, training_options.json."""
    batch_size: int = 32
    """Global batch: samples per step over all processes (each takes batch_size / processes)."""
    kimg: float | None = None
    """Stop when this many thousand images were seen in total (counting start_kimg)."""
    max_steps: int | None = None
    """Stop after this many steps in total (whichever of kimg and max_steps comes first)."""
    start_kimg: float = 0.0
    """Image count a new run starts at (the official v2 run starts at 10000); a resumed run uses its checkpoint's."""
    seed: int = 0
    """Random seed; process r of W seeds its generators with seed * W + r, as the official loop."""
    resume: str | None = None
    """'latest' (this run's newest checkpoint, or a new run when there is none), a checkpoint folder, or a run's
    output folder."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """Autocast of the loss functions' forward passes (official: 'no'; fp16 would need a loss scaler)."""
    allow_tf32: bool = False
    """TF32 matrix products on Ampere+ GPUs (the official loop disables them; True is a deviation)."""
    cudnn_benchmark: bool = True
    """cuDNN autotuning (official: on)."""
    cpu: bool = False
    """Train on the CPU even when a GPU is available (tests, debugging)."""
    run_name: str = "train"
    """Name of the run in the trackers (logs/<run_name>/)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        _at_least("batch_size", self.batch_size, 1)
        _at_least("kimg", self.kimg, 0)
        _at_least("max_steps", self.max_steps, 0)
        _at_least("start_kimg", self.start_kimg, 0)
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r} (fp16 needs "
                              "a gradient scaler, which the official gradient handling does not have)")
