"""The training machinery every recipe shares (Portrait4D now; GenHead and a Gaussian head later), on Accelerate.

Modules (one job each):

* :mod:`~train.core.config`: :class:`TrainConfig` and its sections (checkpoint, log, export, ema, data).
* :mod:`~train.core.cli`: :func:`parse_config`: command-line flags from the config dataclasses;
  :func:`apply_overrides`: ``--set KEY=VALUE`` changes of a recipe dataclass.
* :mod:`~train.core.optim`: Adam with the lazy-regularisation correction and per-group lr scales.
* :mod:`~train.core.phases`: :class:`Phase`, :func:`lazy_phases`, one optimizer step of a phase (no DDP).
* :mod:`~train.core.ema`: :class:`EMA` with the official ramp-up.
* :mod:`~train.core.sampling`: the data position: the official sample order, endless, sharded by rank,
  resumable at any position.
* :mod:`~train.core.rng`: generator snapshots (JSON) and isolated blocks.
* :mod:`~train.core.checkpoint`: atomic ``save_state`` checkpoints + loop state; resume; keep the last K.
* :mod:`~train.core.signals`: SIGINT / SIGTERM finish the step, save and exit.
* :mod:`~train.core.tracking`: per-tick averages, the JSONL tracker, memory figures.
* :mod:`~train.core.images`, :mod:`~train.core.export`: PNG grids; ``save_pretrained`` exports, background pushes.
* :mod:`~train.core.loop`: :class:`Trainer` and :class:`Hooks`: the loop itself.
"""

from train.core.checkpoint import CheckpointManager
from train.core.cli import apply_overrides, parse_config
from train.core.config import CheckpointConfig, DataConfig, ExportConfig, LogConfig, TrainConfig
from train.core.ema import EMA, EmaConfig, ema_beta
from train.core.export import BackgroundPusher, Exporter, hub_push
from train.core.images import image_grid, save_image_grid
from train.core.loop import Hooks, Trainer
from train.core.optim import AdamConfig, ParamGroupRule, build_adam, lazy_ratio, lazy_regularized
from train.core.phases import Phase, PhaseContext, lazy_phases, reduce_gradients, run_phase
from train.core.rng import capture_rng_state, isolated_rng, restore_rng_state, seed_everything
from train.core.sampling import InfiniteSampler, SeededSamples, make_loader
from train.core.signals import GracefulStop
from train.core.state import FitResult, LoopState
from train.core.tracking import JSONLTracker, TickStats

__all__ = [
    "EMA", "AdamConfig", "BackgroundPusher", "CheckpointConfig", "CheckpointManager", "DataConfig", "EmaConfig",
    "ExportConfig", "Exporter", "FitResult", "GracefulStop", "Hooks", "InfiniteSampler", "JSONLTracker",
    "LogConfig", "LoopState", "ParamGroupRule", "Phase", "PhaseContext", "SeededSamples", "TickStats",
    "TrainConfig", "Trainer", "apply_overrides", "build_adam", "capture_rng_state", "ema_beta", "hub_push",
    "image_grid", "isolated_rng", "lazy_phases", "lazy_ratio", "lazy_regularized", "make_loader", "parse_config",
    "reduce_gradients",
    "restore_rng_state", "run_phase", "save_image_grid", "seed_everything",
]
