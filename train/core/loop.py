"""The training loop every recipe shares: phases, EMA, data position, ticks, snapshots, checkpoints, signals.

A recipe builds its networks after creating the :class:`Trainer` (which creates the Accelerator and seeds the
generators), makes its phases (:func:`~train.core.phases.lazy_phases`), an :class:`~train.core.ema.EMA` of the
generator and its hooks, and calls :meth:`Trainer.fit`::

    trainer = Trainer(config)                          # config: a TrainConfig (subclass)
    G, D = build_generator().to(trainer.device), build_discriminator().to(trainer.device)
    phases = [*lazy_phases("G", G, main=loss.g_main, reg=loss.g_reg, reg_interval=4, adam=AdamConfig(...),
                           groups=(ParamGroupRule("cross", is_cross, 2.5),)),
              *lazy_phases("D", D, main=loss.d_main, reg=loss.d_reg, reg_interval=16, adam=AdamConfig(...))]
    result = trainer.fit(phases, data=dataset, ema=EMA(G, config.ema),
                         hooks=Hooks(images=grid_fn, export=lambda m, d: m.save_pretrained(d), push=push_fn))
    sys.exit(result.exit_code)

One step, as in the official loop: ``hooks.on_step_start(state)`` (schedules: rendering resolution, blur), the next
batch (moved to the device), every phase due at this step (:func:`~train.core.phases.run_phase`), the EMA update
with ``cur_nimg`` before the step, then ``cur_nimg += batch_size``. After the step: the tick's statistics (every
``log.tick_kimg``), image grids, exports, checkpoints, and the signal check (all processes agree on it).

Everything a step draws at random comes from generators restored on resume, and hooks (images, exports) run with
the generators put back afterwards, so a run stopped and resumed gives bit-identical weights to one that was not
(on the CPU, or with deterministic GPU kernels).
"""

from __future__ import annotations

import itertools
import json
import logging
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import ProjectConfiguration, send_to_device
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from avatar.errors import ConfigError
from train.core.checkpoint import CheckpointManager, write_json
from train.core.config import TrainConfig
from train.core.ema import EMA
from train.core.export import BackgroundPusher, Exporter, ExportFn, PushFn
from train.core.images import save_image_grid
from train.core.phases import Phase, run_phase
from train.core.rng import isolated_rng, seed_everything
from train.core.sampling import make_loader
from train.core.signals import GracefulStop
from train.core.state import FitResult, LoopState
from train.core.tracking import TickStats, default_trackers, flatten_config, resource_stats

__all__ = ["DataSource", "Hooks", "ImagesFn", "Trainer"]

logger = logging.getLogger(__name__)

ImagesFn = Callable[[nn.Module, LoopState], "torch.Tensor | Mapping[str, torch.Tensor | tuple[torch.Tensor, int]]"]
"""``images(module, state)`` -> ``(N, C, H, W)`` images in [-1, 1], or ``{name: images | (images, per_row)}``."""
DataSource = Dataset | Callable[[int], Iterable[Any]] | None
"""A map-style dataset (loaded by :meth:`Trainer.loader`), or ``start_position -> iterable of this process's
batches`` (e.g. synthetic data), or ``None`` (phases make their own inputs)."""

_SUPPORTED = {DistributedType.NO, *(t for t in DistributedType if t.name.startswith("MULTI_"))}
"""Plain process groups (no model wrapper): one or several processes on CPUs, GPUs or other accelerators."""


@dataclass
class Hooks:
    """What a recipe plugs into the loop besides its phases (every field optional).

    Attributes:
        on_step_start: ``f(state)`` before each step, on every process (schedules that depend on ``cur_nimg``).
        prepare_batch: ``f(batch, state) -> batch`` once per step on the device batch, before the phases (work
            every phase shares: normalisation, camera decomposition, renders of the data); its return value is
            what the phases get.
        images: image grids of the EMA model (main process, no grad, generators restored afterwards), saved as
            ``OUT/images/<name>-<step>.png`` every ``log.image_every_steps``, after the first step and at the end.
        export: ``f(module, directory)`` writes the EMA model (``save_pretrained``) into ``directory``; called on
            the main process every ``export.every_steps`` and at the end (``OUT/export/step-XXXXXXXX``).
        push: ``f(directory, state)`` publishes an export (Hub upload), in a background thread; failures are
            logged, never fatal.
    """

    on_step_start: Callable[[LoopState], None] | None = None
    prepare_batch: Callable[[Any, LoopState], Any] | None = None
    images: ImagesFn | None = None
    export: ExportFn | None = None
    push: PushFn | None = None


def _unique(items: Iterable[Any]) -> list[Any]:
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


class _PhaseTimer:
    """Seconds spent per phase in a tick: CUDA events on a GPU (no sync per step), wall clock otherwise."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._events: dict[str, list[tuple[Any, Any]]] = {}
        self._seconds: dict[str, float] = {}
        self._runs: dict[str, int] = {}

    def start(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, name: str, started: Any) -> None:
        self._runs[name] = self._runs.get(name, 0) + 1
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.setdefault(name, []).append((started, end))
        else:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - started

    def collect(self) -> dict[str, float]:
        """``{"Timing/<phase>": mean seconds per run}`` since the last call."""
        for name, pairs in self._events.items():
            if pairs:
                pairs[-1][1].synchronize()
                self._seconds[name] = self._seconds.get(name, 0.0) + sum(a.elapsed_time(b) for a, b in pairs) / 1e3
        out = {f"Timing/{name}": self._seconds.get(name, 0.0) / runs for name, runs in self._runs.items() if runs}
        self._events.clear()
        self._seconds.clear()
        self._runs.clear()
        return out


class Trainer:
    """Runs a recipe's phases under one :class:`~train.core.config.TrainConfig` (see the module docstring).

    Creating it sets the numerics (TF32 off unless allowed, cuDNN benchmark), creates the Accelerator (unless one is
    given) and seeds every generator with ``seed * processes + rank``: build the networks afterwards. Models are
    initialised identically everywhere anyway: :meth:`fit` broadcasts process 0's weights first.

    Attributes:
        accelerator, device, process_index, num_processes, is_main_process.
        batch_per_process: ``batch_size / num_processes`` (the global batch must divide evenly).
        out_dir: the run's folder; ``checkpoints``: its :class:`~train.core.checkpoint.CheckpointManager`.
    """

    def __init__(self, config: TrainConfig, accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
        if not config.allow_tf32:
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        if accelerator is None:
            trackers = default_trackers(config.log.trackers, config.run_name, self.out_dir / "logs")
            accelerator = Accelerator(
                cpu=config.cpu, mixed_precision=config.mixed_precision, log_with=trackers or None,
                project_config=ProjectConfiguration(project_dir=str(self.out_dir),
                                                    logging_dir=str(self.out_dir / "logs")))
        self.accelerator = accelerator
        if accelerator.distributed_type not in _SUPPORTED:
            raise ConfigError(f"train.core runs without DDP/FSDP/DeepSpeed wrappers (gradients are averaged per "
                              f"phase); {accelerator.distributed_type} is not supported: launch with torchrun or a "
                              "plain `accelerate launch` multi-GPU config")
        if config.batch_size % accelerator.num_processes:
            raise ConfigError(f"batch_size {config.batch_size} is not a multiple of the number of processes "
                              f"({accelerator.num_processes})")
        self.batch_per_process = config.batch_size // accelerator.num_processes
        seed_everything(config.seed * accelerator.num_processes + accelerator.process_index)
        self.checkpoints = CheckpointManager(accelerator, self.out_dir / "checkpoints",
                                             config.checkpoint.keep_last or None)
        self._registered: set[int] = set()
        self._wrapped: dict[int, Any] = {}

    # ---- properties --------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    # ---- building blocks for recipes ---------------------------------------------------------------------
    def loader(self, dataset: Dataset, collate_fn: Callable[[list[Any]], Any] | None = None
               ) -> Callable[[int], DataLoader]:
        """``start_position -> DataLoader`` of this process's batches of ``dataset`` (``config.data`` options): the
        official sample order seeded by ``config.seed`` (:func:`~train.core.sampling.make_loader`)."""
        data = self.config.data
        kwargs = dict(rank=self.process_index, num_replicas=self.num_processes, seed=self.config.seed,
                      shuffle=data.shuffle, seed_samples=data.seed_samples, num_workers=data.num_workers,
                      pin_memory=data.pin_memory and self.device.type == "cuda",
                      prefetch_factor=data.prefetch_factor, collate_fn=collate_fn)

        def build(start: int) -> DataLoader:
            return make_loader(dataset, self.batch_per_process, start=start, **kwargs)

        return build

    def register_for_checkpointing(self, *objects: Any) -> None:
        """Also save and restore ``objects`` (with ``state_dict`` / ``load_state_dict``) in every checkpoint;
        call before :meth:`fit`, in the same order in every run."""
        self.accelerator.register_for_checkpointing(*objects)

    def _register_module(self, module: nn.Module) -> None:
        if id(module) not in self._registered:  # no DDP: evaluation_mode only places it (and applies autocast)
            self.accelerator.prepare_model(module, evaluation_mode=True)
            self._registered.add(id(module))

    def _wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        if id(optimizer) not in self._wrapped:
            self._wrapped[id(optimizer)] = self.accelerator.prepare_optimizer(optimizer)
        return self._wrapped[id(optimizer)]

    # ---- helpers of fit ----------------------------------------------------------------------------------
    def _stop_signal(self, stop: GracefulStop) -> str | None:
        """The name of the signal that stops the run, agreed by every process (one all-gather per step), or None."""
        number = int(stop.signal) if stop.signal is not None else 0
        if self.num_processes > 1:
            number = int(self.accelerator.gather(torch.tensor([number], device=self.device)).max().item())
        return signal.Signals(number).name if number else None

    def _broadcast(self, modules: list[nn.Module]) -> None:
        if self.num_processes > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            with torch.no_grad():
                for module in modules:
                    for tensor in itertools.chain(module.parameters(), module.buffers()):
                        torch.distributed.broadcast(tensor.data, src=0)

    def _target_nimg(self, state: LoopState) -> float:
        targets = []
        if self.config.kimg is not None:
            targets.append(self.config.kimg * 1000)
        if self.config.max_steps is not None:
            targets.append(state.cur_nimg + max(self.config.max_steps - state.step, 0) * self.config.batch_size)
        return min(targets)

    def _done(self, state: LoopState) -> bool:
        cfg = self.config
        return ((cfg.kimg is not None and state.cur_nimg >= cfg.kimg * 1000)
                or (cfg.max_steps is not None and state.step >= cfg.max_steps))

    def _resume(self, optimizers: list[torch.optim.Optimizer]) -> tuple[LoopState, Path | None]:
        cfg = self.config
        start = int(round(cfg.start_kimg * 1000))
        state = LoopState(cur_nimg=start, tick_start_nimg=start)
        path = self.checkpoints.resolve(cfg.resume)
        if path is None:
            return state, None
        configured = [[{k: g[k] for k in ("lr", "betas", "eps", "weight_decay") if k in g} for g in opt.param_groups]
                      for opt in optimizers]
        state, meta = self.checkpoints.load(path)
        for opt, groups in zip(optimizers, configured, strict=True):
            for group, values in zip(opt.param_groups, groups, strict=True):
                changed = {k: (group[k], v) for k, v in values.items() if group[k] != v}
                if changed:  # the configuration wins over the checkpoint's hyper-parameters
                    logger.info("optimizer group %s: %s from the configuration (checkpoint had %s)",
                                group.get("name", "?"), {k: v for k, (_, v) in changed.items()},
                                {k: old for k, (old, _) in changed.items()})
                    group.update(values)
        if meta.get("batch_size") not in (None, cfg.batch_size) and self.is_main_process:
            logger.warning("%s was trained with batch_size %s, this run uses %d", path, meta["batch_size"],
                           cfg.batch_size)
        if self.is_main_process:
            logger.info("resumed from %s: step %d, %.3f kimg", path, state.step, state.kimg)
        return state, path

    def _batches(self, data: Any) -> Callable[[int], Iterable[Any]]:
        if isinstance(data, IterableDataset):
            raise ConfigError("fit takes a map-style dataset (its position in the stream is what makes resuming "
                              "exact) or a function start_position -> batches; got an IterableDataset")
        if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
            return self.loader(data)
        if callable(data):
            return data
        raise ConfigError(f"fit's data must be a dataset, a function start_position -> batches, or None; got "
                          f"{type(data).__name__}")

    def _save_images(self, images: ImagesFn, module: nn.Module, state: LoopState) -> None:
        with torch.no_grad(), isolated_rng():
            out = images(module, state)
        if isinstance(out, torch.Tensor):
            out = {"fakes": out}
        for name, value in out.items():
            grid, per_row = value if isinstance(value, tuple) else (value, None)
            save_image_grid(grid, self.out_dir / "images" / f"{name}-{state.step:08d}.png", per_row)

    def _tick(self, state: LoopState, stats: TickStats, timer: _PhaseTimer, optimizers: list[tuple[str, Any]],
              tick_started: float, run_started: float, beta: float | None, bar: Any) -> dict[str, float]:
        tick_nimg = state.cur_nimg - state.tick_start_nimg
        now = time.perf_counter()
        values = stats.means(self.accelerator)
        values.update(timer.collect())
        values.update(resource_stats(self.device))
        tick_sec = now - tick_started
        values.update({
            "Progress/tick": state.cur_tick, "Progress/kimg": state.kimg, "Progress/step": state.step,
            "Timing/sec_per_tick": tick_sec, "Timing/total_hours": (now - run_started) / 3600,
            "Timing/sec_per_kimg": tick_sec / max(tick_nimg / 1000, 1e-8),
            "Timing/kimg_per_sec": tick_nimg / 1000 / max(tick_sec, 1e-8),
        })
        for group_name, opt in optimizers:
            for group in opt.param_groups:
                values[f"LR/{group_name}/{group.get('name', 'base')}"] = group["lr"]
        if beta is not None:
            values["EMA/beta"] = beta
        self.accelerator.log(values, step=state.step)
        if self.is_main_process:
            memory = values.get("Resources/peak_gpu_mem_gb", values["Resources/cpu_mem_gb"])
            losses = " ".join(f"{k.removeprefix('Loss/')} {v:.4g}" for k, v in values.items() if k.startswith("Loss/"))
            logger.info("tick %d  kimg %.3f  step %d  time %s  sec/kimg %.3g  mem %.2f GB  %s", state.cur_tick,
                        state.kimg, state.step, _format_seconds(now - run_started),
                        values["Timing/sec_per_kimg"], memory, losses)
            bar.set_postfix_str(f"step {state.step}", refresh=False)
        state.cur_tick += 1
        state.tick_start_nimg = state.cur_nimg
        return values

    # ---- the loop ----------------------------------------------------------------------------------------
    def fit(self, phases: list[Phase], data: DataSource = None, ema: EMA | None = None,
            hooks: Hooks | None = None) -> FitResult:
        """Train until ``kimg`` / ``max_steps`` or a signal; returns how it ended (see :class:`FitResult`).

        Every process calls it. Checkpoints hold, in this order, the phases' modules, the EMA module, the
        optimizers and the objects of :meth:`register_for_checkpointing`.
        """
        cfg, acc = self.config, self.accelerator
        hooks = hooks or Hooks()
        if cfg.kimg is None and cfg.max_steps is None:
            raise ConfigError("set kimg or max_steps: the run needs a length (--kimg N or --max-steps N)")
        if not phases:
            raise ConfigError("fit needs at least one phase")
        make = None if data is None else self._batches(data)
        modules = _unique(p.module for p in phases)
        for module in modules:
            module.requires_grad_(False)  # only the phase in progress trains (run_phase turns its params on)
        for module in modules + ([ema.module] if ema is not None else []):
            self._register_module(module)
        optimizers = _unique(p.optimizer for p in phases)
        wrapped = [self._wrap_optimizer(opt) for opt in optimizers]
        opt_names = [(next(p.group for p in phases if p.optimizer is opt), w) for opt, w in zip(optimizers, wrapped,
                                                                                                strict=True)]

        if self.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.out_dir / "training_options.json", json.loads(cfg.to_json()))
            self.checkpoints.remove_partials()
        acc.wait_for_everyone()
        state, resumed_from = self._resume(optimizers)
        self._broadcast(modules + ([ema.module] if ema is not None else []))
        result = FitResult(state=state, reason="done", checkpoint=resumed_from)
        if self._done(state):
            if self.is_main_process:
                logger.info("nothing to do: the run is at step %d, %.3f kimg, its end", state.step, state.kimg)
            result.reason = "already done"
            return result

        acc.init_trackers(cfg.run_name, config=flatten_config(cfg.to_dict()))
        exporter = pusher = None
        if hooks.export is not None and self.is_main_process:
            if hooks.push is not None and cfg.export.push:
                pusher = BackgroundPusher(hooks.push)
            exporter = Exporter(self.out_dir / "export", hooks.export, cfg.export.keep_last or None, pusher)
            exporter.remove_partials()
        snapshot_module = ema.module if ema is not None else phases[0].module

        source: Iterator[Any] = itertools.repeat(None) if make is None else iter(make(state.data_position))

        stats, timer = TickStats(), _PhaseTimer(self.device)
        target_nimg = self._target_nimg(state)
        bar = tqdm(total=round(target_nimg / 1000, 3), initial=round(state.kimg, 3), unit="kimg",
                   dynamic_ncols=True, disable=None if self.is_main_process and cfg.log.progress_bar else True)
        run_started = tick_started = time.perf_counter()
        first_step, beta = True, None
        try:
            with GracefulStop(announce=self.is_main_process) as stop:
                while True:
                    if hooks.on_step_start is not None:
                        hooks.on_step_start(state)
                    batch = next(source)
                    if batch is not None:
                        batch = send_to_device(batch, self.device, non_blocking=True)
                    if hooks.prepare_batch is not None:
                        batch = hooks.prepare_batch(batch, state)
                    for phase, opt in zip(phases, [self._wrapped[id(p.optimizer)] for p in phases], strict=True):
                        if phase.is_due(state.step):
                            started = timer.start()
                            run_phase(phase, batch, state, acc, stats.report, optimizer=opt)
                            timer.stop(phase.name, started)
                    if ema is not None:
                        beta = ema.update(cfg.batch_size, state.cur_nimg)
                    state.cur_nimg += cfg.batch_size
                    state.step += 1
                    if data is not None:
                        state.data_position += cfg.batch_size
                    bar.update(cfg.batch_size / 1000)

                    finished = self._done(state)
                    stopping = self._stop_signal(stop)
                    if first_step or finished or stopping or (
                            state.cur_nimg >= state.tick_start_nimg + cfg.log.tick_kimg * 1000):
                        self._tick(state, stats, timer, opt_names, tick_started, run_started, beta, bar)
                        tick_started = time.perf_counter()
                    every = cfg.log.image_every_steps
                    if (hooks.images is not None and every and self.is_main_process
                            and (state.step % every == 0 or state.step == 1 or finished)):
                        self._save_images(hooks.images, snapshot_module, state)
                    every = cfg.export.every_steps
                    if exporter is not None and ((every and state.step % every == 0) or finished):
                        with torch.no_grad(), isolated_rng():
                            result.export = exporter.export(snapshot_module, state)
                    every = cfg.checkpoint.every_steps
                    if (every and state.step % every == 0) or finished or stopping:
                        result.checkpoint = self.checkpoints.save(state, {"batch_size": cfg.batch_size})
                    first_step = False
                    if stopping:
                        result.reason = stopping
                        if self.is_main_process:
                            logger.warning("stopped by %s at step %d (%.3f kimg); checkpoint saved to %s; continue "
                                           "with --resume latest", result.reason, state.step, state.kimg,
                                           result.checkpoint)
                        break
                    if finished:
                        break
        finally:
            bar.close()
            del source
            if pusher is not None:
                pusher.close()
                pending = pusher.pending
                if pending:
                    logger.info("waiting for %d Hub push(es) to finish (at most %.0f s)", len(pending),
                                cfg.export.push_timeout_s)
                if not pusher.wait(cfg.export.push_timeout_s):
                    logger.warning("pushes still running after %.0f s, not waited for: %s",
                                   cfg.export.push_timeout_s, ", ".join(map(str, pusher.pending)))
                result.push_failures = list(pusher.failures)
            acc.end_training()
        if result.reason == "done" and self.is_main_process:
            logger.info("done: step %d, %.3f kimg; checkpoint %s%s", state.step, state.kimg, result.checkpoint,
                        f"; export {result.export}" if result.export else "")
        return result
