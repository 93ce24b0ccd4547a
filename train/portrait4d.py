"""Train Portrait4D's reconstructor: ``accelerate launch train/portrait4d.py --recipe v2 --data DATA --out-dir OUT``.

Recipes (``train/recipes/portrait4d.py``, defaults = the official yaml values): ``v2`` (video clips, starts from
the static model, G_fix multi-view regulariser and motion augmentation), ``static`` and ``v1`` (GenHead renders
with the depth / feature / triplane distillation targets, or video clips like v2 without those targets).

Data (``--data``): an official ``Datum_vfhq`` LMDB folder, a Parquet dataset folder or Hub dataset repo of ours
(``python -m train.data.convert``), or the output of ``python -m train.prepare VIDEOS --out DATA`` (video clips,
:class:`~train.data.ClipPairDataset`); or an official offline GenHead-render LMDB (``Datum_new`` records, v1's
format: :class:`~train.data.GenHeadTripleDataset`, after the official ``GenHeadReconSegLmdbFolderDatasetV2New``;
``static`` draws the driving view from the source frame); or ``--data genhead`` (recipes v1 and static): the
official online path, GenHead renders drawn at every step from the FLAME parameter pools
(:mod:`train.recipes.genhead_data`, ``training_loop_recon_v1.fetch_random_params`` + ``gen_data_by_G_syn``),
with ``--genhead`` (the generator: ``genhead-ffhq512`` by default, a folder, or ``tiny``) and ``--pools`` (the
official pools through the asset cache, ``registry``, the default; a folder holding the four ``.npy`` files; or
``synthetic``); ``--flame synthetic`` defaults both to the tiny / synthetic stand-ins (smoke runs). Each step's
batch depends on the run's seed and the step's position only, so ``--resume`` continues the same stream. One log
line says which data a run reads.

Every run can be stopped (Ctrl-C, SIGTERM) and continued exactly with ``--resume latest``. The EMA generator is
exported in the ``save_pretrained`` format with a model card (``OUT/export/step-*``; ``Portrait4D.from_pretrained``,
``avatar reenact --model`` and ``eval.run --model`` take it) and, with ``--push-to-hub REPO``, uploaded in the
background. ``--eval-every N`` measures held-out PSNR / L1 / LPIPS every N steps; ``--eval-benchmark='ARGS'``
runs ``python -m eval.run ARGS`` on every export (its metrics go into the model card's ``model-index``).

Examples::

    accelerate launch train/portrait4d.py --recipe v2 --data data/VFHQ_sub50_512_4 --out-dir runs/v2 \\
        --init portrait4d-static --batch-size 8 --kimg 100    # G, G_fix and D from the released static snapshot
    python train/portrait4d.py --recipe v2 --data prepared/ --size tiny --flame synthetic \\
        --loss-networks random --max-steps 20 --cpu --out-dir /tmp/smoke
    accelerate launch train/portrait4d.py --recipe v1 --data genhead --init portrait4d-v1 \\
        --out-dir runs/v1    # v1's data: genhead-ffhq512 online, the official pools from the Hub
    python train/portrait4d.py --recipe v1 --data genhead --size tiny --flame synthetic \\
        --loss-networks random --max-steps 2 --cpu --out-dir /tmp/smoke-v1    # tiny GenHead, synthetic pools
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script (accelerate launch train/portrait4d.py): import from the repo root
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [_root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

from avatar.errors import AvatarError, ConfigError
from train.core import (
    EMA,
    AdamConfig,
    EmaConfig,
    Hooks,
    ParamGroupRule,
    TrainConfig,
    Trainer,
    hub_push,
    lazy_phases,
    parse_config,
)
from train.core.state import LoopState
from train.recipes.portrait4d import RECIPES, recipe

__all__ = ["GENHEAD_DATA", "Portrait4DTrainConfig", "check_hub_access", "default_config", "engine_pdfgc", "main",
           "open_dataset", "open_genhead_engine"]

logger = logging.getLogger("train.portrait4d")


@dataclass(frozen=True)
class Portrait4DTrainConfig(TrainConfig):
    """Options of a Portrait4D training run."""

    recipe: Literal["v1", "static", "v2"] = "v2"
    """Official recipe whose values are the defaults: v2 (video clips + G_fix), static or v1."""
    data_path: str | None = field(default=None, metadata={"aliases": ("--data",)})
    """Training data: official LMDB folder, Parquet dataset folder, Hub dataset repo or train.prepare output; or
    'genhead' (v1, static): GenHead renders drawn online at every step, as the official v1 (--genhead, --pools)."""
    genhead: str | None = None
    """With --data genhead: the generator rendering the data: a model id (genhead-ffhq512), a save_pretrained or
    'avatar convert' folder, or 'tiny' (a random tiny GenHead; smoke runs). Default: genhead-ffhq512 (tiny with
    --flame synthetic)."""
    pools: str | None = None
    """With --data genhead: the FLAME parameter pools: 'registry' (the four official .npy files of the Hub repo
    through the asset cache or --local-dir), a folder holding them, or 'synthetic' (random values, not data; smoke
    runs). Default: registry (synthetic with --flame synthetic)."""
    data_revision: str | None = None
    """Revision of a Hub dataset repo."""
    init: str | None = None
    """Initial generator: model id, save_pretrained folder, official checkpoint or Hub repo (none: fresh)."""
    init_discriminator: str | None = None
    """Initial discriminator: model id (portrait4d-static-D, ...), save_pretrained folder or official checkpoint;
    'fresh' for a new one. Default: the discriminator of --init's released snapshot when --init is a model id
    (portrait4d-static -> portrait4d-static-D, as the official v2 run), else a new one."""
    g_fix: str | None = None
    """v2's frozen static model G_fix (default: --init)."""
    size: Literal["full", "tiny"] = "full"
    """Architecture of fresh networks: the official one, or the tiny test configuration."""
    loss_networks: Literal["pretrained", "random"] = "pretrained"
    """LPIPS-VGG, ArcFace and PD-FGC: official weights (asset cache), or random (smoke tests only)."""
    flame: Literal["official", "synthetic"] = "official"
    """FLAME: the generator's official deformer buffers and masks, or a synthetic FLAME (smoke tests only)."""
    local_dir: str | None = None
    """Take upstream weight files from this folder instead of the network."""
    push_to_hub: str | None = None
    """Upload every export (G_ema, config, model card) to this Hub model repo, in the background."""
    hub_private: bool = False
    """Create the Hub repo private."""
    eval_every: int = 0
    """Held-out PSNR / L1 / LPIPS of G_ema every this many steps (0: off)."""
    eval_data: str | None = None
    """Held-out clips (default: the last --eval-clips clips of --data, then left out of training)."""
    eval_clips: int = 4
    """Number of held-out clips (the last ones of --data, or the first ones of --eval-data)."""
    eval_pairs_per_clip: int = 1
    """(source, driving) frame pairs drawn from each held-out clip (the held-out batch is clips x pairs)."""
    eval_benchmark: tuple[str, ...] = ()
    """python -m eval.run arguments run on every export of G_ema, in one value after '=', e.g.
    --eval-benchmark='--benchmark hdtf --protocol same-identity --data DIR --limit 8' (the run sets --model and
    --out: OUT/eval/step-N); the report's metrics go into the model card's model-index. Training waits while it
    runs."""
    eval_pipeline: str | None = None
    """Pipeline whose face preprocessing and motion encoder drive the trained G_ema in --eval-benchmark: a model
    id (default portrait4d-v2: the official preprocessing, from the cache) or a pipeline folder."""
    deterministic_render: bool = False
    """Deterministic ray sampling in the losses (the official samples at random)."""
    gradient_checkpointing: bool = False
    """Recompute the reconstructor's encoders, rendering and super-resolution in the backward pass instead of
    storing their activations: less GPU memory, about a third more time, the same numbers."""
    set: tuple[str, ...] = ()
    """Recipe values to change, as KEY=VALUE (fields of train/recipes/portrait4d.py), e.g. --set nr_initial=64
    mot_aug_prob=0.5."""


def default_config(recipe_name: str) -> Portrait4DTrainConfig:
    """The configuration defaults of a recipe (batch 32, its EMA and length)."""
    r = RECIPES[recipe_name]
    return Portrait4DTrainConfig(recipe=recipe_name, batch_size=r.batch, kimg=None, run_name=f"portrait4d-{r.name}",
                                 out_dir=f"runs/portrait4d-{r.name}",
                                 ema=EmaConfig(kimg=r.ema_kimg, rampup=r.ema_rampup))


def check_hub_access(repo_id: str, private: bool = False) -> None:
    """Fail now, in one sentence, when ``--push-to-hub`` cannot work (offline, no token, no access)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ConfigError(f"--push-to-hub {repo_id}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it or "
                          "drop --push-to-hub")
    try:
        api = HfApi()
        api.whoami()
        api.create_repo(repo_id, private=private, exist_ok=True)
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConfigError(f"--push-to-hub {repo_id}: cannot reach or write to the Hub ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); log in with "
                          "`huggingface-cli login` and check the network, or drop --push-to-hub") from exc


def recipe_overrides(recipe_name: str, items: tuple[str, ...]) -> dict[str, Any]:
    """``("key=value", ...)`` -> typed recipe overrides (the type of each key's official value; ``none`` for
    None where the field allows it)."""
    import dataclasses
    import typing

    from train.recipes.portrait4d import Portrait4DRecipe

    base = RECIPES[recipe_name]
    hints = typing.get_type_hints(Portrait4DRecipe)
    known = {f.name for f in dataclasses.fields(Portrait4DRecipe) if f.name not in ("name", "losses")}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(known))}")
        hint = str(hints[key])
        if text.lower() in ("none", "null") and "None" in hint:
            out[key] = None
            continue
        current = getattr(base, key)
        try:
            if "tuple" in hint:
                out[key] = tuple(float(v) for v in text.split(","))
            elif isinstance(current, bool) or "bool" in hint:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1", "yes", "on")
            elif "int" in hint and "float" not in hint:
                out[key] = int(text)
            elif "float" in hint or "int" in hint:
                out[key] = float(text) if "." in text or "e" in text.lower() or "float" in hint else int(text)
            else:
                out[key] = text
        except ValueError as exc:
            raise ConfigError(f"--set {item!r}: {text!r} is not a valid value for {key} ({hint})") from exc
    return out


def _recipe_name(argv: list[str]) -> str:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is None and known.config is not None:
        import json

        try:
            return str(json.loads(Path(known.config).read_text()).get("recipe", "v2"))
        except (OSError, ValueError):
            return "v2"
    return known.recipe if known.recipe in RECIPES else "v2"


def open_dataset(path: str, r: Any, seed: int, revision: str | None = None, log: bool = True) -> Any:
    """``--data`` as recipe ``r`` reads it, with one log line saying which: official GenHead renders (a
    ``Datum_new`` LMDB) -> :class:`~train.data.GenHeadTripleDataset` (``static=True`` for the static recipe), any
    clip data -> :class:`~train.data.ClipPairDataset` (v1 / static then train without the distillation targets)."""
    from train.data import ClipPairDataset, GenHeadTripleDataset, is_genhead4d, open_train_data
    from train.data.records import RENDER_SIZE

    source = open_train_data(path, revision=revision)
    if is_genhead4d(source):
        if r.distill_end_kimg > 0:  # the loss compares the 64 x 64 targets with G's raw render as they are
            sizes = sorted({r.neural_rendering_resolution(n) for n in (0.0, r.distill_end_kimg * 1e3 - 1)})
            if sizes != [RENDER_SIZE]:
                raise ConfigError(f"{path} holds GenHead renders with {RENDER_SIZE}x{RENDER_SIZE} depth and feature "
                                  f"targets, but recipe {r.name} renders at {'/'.join(map(str, sizes))} before "
                                  f"distill_end_kimg ({r.distill_end_kimg:g}); keep nr_initial={RENDER_SIZE} "
                                  "(official) or set distill_end_kimg=0")
        if log:
            what = ("the depth / feature / triplane distillation targets until "
                    f"{r.distill_end_kimg:g} kimg" if r.distill_end_kimg > 0 else "no distillation in this recipe")
            logger.info("training data: GenHead renders (%s, official GenHeadReconSegLmdbFolderDatasetV2New%s): "
                        "source, driving and target views with %s", path, ", static" if r.static else "", what)
        return GenHeadTripleDataset(source, seed=seed, static=r.static)
    if log:
        logger.info("training data: video clips (%s): source and driving frames, the target is the driving frame%s",
                    path, "" if r.name == "v2" else f"; recipe {r.name} runs without GenHead's distillation targets")
    return ClipPairDataset(source, seed=seed)


GENHEAD_DATA = "genhead"
"""The ``--data`` value of v1's online GenHead data."""


def engine_pdfgc(config: Portrait4DTrainConfig) -> Any:
    """The PD-FGC encoder of ``--data genhead`` (its width is the motion width of the reconstructor): the official
    weights, or (``--loss-networks random``) a random one seeded by ``--seed`` (tiny with ``--size tiny``)."""
    from avatar.motion.pdfgc import PDFGCConfig, PDFGCEncoder
    from train.core.rng import isolated_rng

    if config.loss_networks == "random":
        with isolated_rng(config.seed):
            return PDFGCEncoder(PDFGCConfig.tiny() if config.size == "tiny" else PDFGCConfig())
    return PDFGCEncoder.from_pretrained("pdfgc-motion", local_dir=config.local_dir)


def genhead_flame_buffers(config: Portrait4DTrainConfig) -> dict[str, Any]:
    """The official FLAME deformer buffers of ``--genhead`` (for a fresh reconstructor: the official FLAME files
    processed exactly as the reconstructor's deformer processes them)."""
    from avatar.models.genhead import GenHead

    genhead = GenHead.from_pretrained(config.genhead or "genhead-ffhq512", local_dir=config.local_dir)
    if genhead.deformer.flame_deform is None:
        raise ConfigError(f"--genhead {config.genhead} has no FLAME buffers; pass --init portrait4d-v1")
    return dict(genhead.deformer.flame_deform.state_dict())


def open_genhead_engine(config: Portrait4DTrainConfig, r: Any, G: Any, pdfgc: Any, device: torch.device,
                        log: bool = True) -> Any:
    """``--data genhead``: GenHead (``--genhead``), the pools (``--pools``) and PD-FGC as a
    :class:`~train.recipes.genhead_data.GenHeadDataEngine` for recipe ``r`` (static: one motion per subject;
    v1: the static second half), rendering at the recipe's initial resolution (official 64) on ``device``."""
    from avatar.models.genhead import GenHead
    from avatar.models.genhead.pools import FlameParameterPools
    from train.core.rng import isolated_rng
    from train.recipes.genhead_data import GenHeadDataEngine, check_render_resolution

    synthetic = config.flame == "synthetic"
    name = config.genhead or ("tiny" if synthetic else "genhead-ffhq512")
    which = config.pools or ("synthetic" if synthetic else "registry")
    check_render_resolution(r, r.nr_initial)
    with isolated_rng(config.seed):  # building draws nothing from the run's stream
        if name == "tiny":
            genhead = GenHead.tiny(seed=None, plane_features=int(G.config.encoders.plane_channels))
        else:
            genhead = GenHead.from_pretrained(name, local_dir=config.local_dir)
    widths = (int(genhead.config.feature_channels), int(genhead.config.plane_features))
    wanted = (int(G.config.feature_channels), int(G.config.encoders.plane_channels))
    if widths != wanted:
        raise ConfigError(f"GenHead {name} renders {widths[0]}-channel feature images and {widths[1]}-channel "
                          f"triplane features, the reconstructor learns {wanted[0]} and {wanted[1]}")
    if which == "synthetic":
        pools = FlameParameterPools.synthetic(config.seed)
    elif which == "registry":
        pools = FlameParameterPools.from_registry(local_dir=config.local_dir)
    else:
        pools = FlameParameterPools.from_folder(which)
    engine = GenHeadDataEngine(genhead.to(device), pools, pdfgc.to(device), static_dataset=r.static,
                               half_static=r.name == "v1" and not r.static, truncation_psi=r.truncation_psi,
                               neural_rendering_resolution=r.nr_initial)
    if log:
        logger.info("training data: GenHead online (%s, pools %s: %r; official fetch_random_params + "
                    "gen_data_by_G_syn%s): source, driving and target views rendered at %d every step, with the "
                    "distillation targets until %g kimg", name, which, pools,
                    ", static" if r.static else ", half static", engine.resolution, r.distill_end_kimg)
        if which == "synthetic" and not synthetic:
            logger.warning("--pools synthetic: random FLAME parameters and cameras, not data")
    return engine


def _split_args(values: tuple[str, ...]) -> list[str]:
    """``--eval-benchmark`` values: each may hold several shell-quoted arguments."""
    import shlex

    return [part for value in values for part in shlex.split(value)]


class _HeldOut(torch.utils.data.Dataset):
    """The clips of ``dataset`` except the last ``n`` (kept for evaluation); keys as the dataset's."""

    takes_positions = True

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return len(self.dataset) - self.n

    def __getitem__(self, key: Any) -> Any:
        return self.dataset[key]


def run(config: Portrait4DTrainConfig) -> int:
    """Train with ``config``; returns the process exit status (0 done, 128 + signal when stopped)."""
    from torch.utils.data import default_collate

    from train.core.rng import split_seed
    from train.data import GenHeadTripleDataset
    from train.recipes.genhead_data import prepare_genhead_batch
    from train.recipes.portrait4d_hooks import (
        check_benchmark_args,
        grid_images,
        heldout_metrics,
        model_card_values,
        run_benchmark,
        write_export,
    )
    from train.recipes.portrait4d_loss import Portrait4DLoss
    from train.recipes.portrait4d_setup import build_networks, is_cross_attention

    if config.data_path is None:
        raise ConfigError("--data is required: a prepared dataset folder, an official LMDB, a Hub dataset repo, or "
                          "genhead (v1, static: GenHead renders drawn online)")
    if config.push_to_hub:
        check_hub_access(config.push_to_hub, config.hub_private)
    benchmark_args = check_benchmark_args(_split_args(config.eval_benchmark)) if config.eval_benchmark else []
    r = recipe(config.recipe, **recipe_overrides(config.recipe, config.set)).with_batch(config.batch_size)
    if config.kimg is None and config.max_steps is None:
        config = replace(config, kimg=float(r.kimg - r.resume_kimg))
    online = config.data_path == GENHEAD_DATA
    if not online and (config.genhead or config.pools):
        raise ConfigError("--genhead and --pools choose the generator and the pools of --data genhead; drop them or "
                          "pass --data genhead")
    dataset: Any = None
    pdfgc: Any = None
    if online:
        if r.name == "v2":
            raise ConfigError("--data genhead is the data of recipes v1 and static (GenHead renders); v2 trains on "
                              "video clips")
        pdfgc = engine_pdfgc(config)  # the motion width of the data is PD-FGC's
        genhead: list[Any] = []
        motion_dim = int(pdfgc.config.motion_dim)
    else:
        dataset = open_dataset(config.data_path, r, config.seed, config.data_revision)
        genhead = [dataset] if isinstance(dataset, GenHeadTripleDataset) else []  # items wait for G's plane channels
        motion_dim = dataset.motion_dim if genhead else int(dataset[0]["source_motion"].shape[-1])
    eval_dataset = None
    if config.eval_every:
        if config.eval_clips < 1 or config.eval_pairs_per_clip < 1:
            raise ConfigError(f"--eval-clips and --eval-pairs-per-clip must be at least 1, got {config.eval_clips} "
                              f"and {config.eval_pairs_per_clip}")
        if config.eval_data:
            eval_dataset = open_dataset(config.eval_data, r, config.seed, log=False)
            genhead += [eval_dataset] if isinstance(eval_dataset, GenHeadTripleDataset) else []
        elif online:
            raise ConfigError("--eval-every with --data genhead needs --eval-data (held-out clips or GenHead "
                              "renders): online data has no held-out part")
        else:
            if len(dataset) <= config.eval_clips:
                raise ConfigError(f"--eval-every needs held-out clips: {config.data_path} has {len(dataset)} clips, "
                                  f"--eval-clips is {config.eval_clips}; pass --eval-data or fewer --eval-clips")
            eval_dataset = dataset
            dataset = _HeldOut(dataset, config.eval_clips)  # type: ignore[assignment]

    trainer = Trainer(config)
    flame_buffers = None
    if online and config.init is None and config.flame == "official":  # a fresh generator: GenHead's FLAME
        flame_buffers = genhead_flame_buffers(config)
    nets = build_networks(recipe_name=r.name, init=config.init, init_discriminator=config.init_discriminator,
                          g_fix=config.g_fix, size=config.size, motion_dim=motion_dim,
                          loss_networks=config.loss_networks, flame=config.flame, device=trainer.device,
                          seed=config.seed, local_dir=config.local_dir, flame_buffers=flame_buffers)
    for data in genhead:  # triplane rows of xyz + G's plane features (3 + 32 = 35 upstream)
        data.triplane_channels = int(nets.G.config.encoders.plane_channels)
    if nets.random_loss_networks and trainer.is_main_process:
        logger.warning("the loss networks have random weights: this run is a smoke test, not a model")
    loss = Portrait4DLoss(r, nets.G, nets.D, nets.renderer, nets.lpips, nets.arcface, nets.G_fix, nets.pdfgc,
                          motion_scale=0.0 if r.static else 1.0, half_static=r.name == "v1",
                          deterministic=config.deterministic_render,
                          gradient_checkpointing=config.gradient_checkpointing)
    phases = [
        *lazy_phases("G", nets.G, main=loss.g_main, reg=loss.g_reg, reg_interval=r.g_reg_interval,
                     adam=AdamConfig(r.g_lr, r.betas, r.eps),
                     groups=(ParamGroupRule("cross", is_cross_attention, r.cross_lr_scale),),
                     exclude=lambda name: "bn" in name),
        *lazy_phases("D", nets.D, main=loss.d_main, reg=loss.d_reg, reg_interval=r.d_reg_interval,
                     adam=AdamConfig(r.d_lr, r.betas, r.eps)),
    ]
    ema = EMA(nets.G, config.ema)

    engine = open_genhead_engine(config, r, nets.G, pdfgc, trainer.device, trainer.is_main_process) if online \
        else None
    prepare = loss.prepare if engine is None else functools.partial(prepare_genhead_batch, loss)
    if engine is not None:  # the grid's subjects: a stream of their own
        grid_draws = torch.Generator().manual_seed(split_seed(config.seed, 0x6D1D)[0])
        fixed = prepare(engine.batch(min(4, trainer.batch_per_process), grid_draws))
        source: Any = engine.batches(config.seed, trainer.batch_per_process, trainer.process_index,
                                     config.batch_size)
    else:
        fixed = prepare({k: v.to(trainer.device) if isinstance(v, torch.Tensor) else v for k, v in default_collate(
            [dataset[i] for i in range(min(4, len(dataset)))]).items()})
        source = dataset
    heldout = None
    if eval_dataset is not None:
        n = min(config.eval_clips, len(eval_dataset))
        start = len(eval_dataset) - n if config.eval_data is None else 0
        pairs = [eval_dataset[(start + i, p)] for i in range(n) for p in range(config.eval_pairs_per_clip)]
        heldout = loss.prepare({k: v.to(trainer.device) if isinstance(v, torch.Tensor) else v for k, v in
                                default_collate(pairs).items()})
    last_metrics: dict[str, float] = {}
    eval_pipeline = None
    if benchmark_args and trainer.is_main_process:  # loaded now: missing weights fail at start, not at an export
        from avatar.pipelines.auto import load_pipeline

        eval_pipeline = load_pipeline(config.eval_pipeline or "portrait4d-v2", device=trainer.device)

    def on_step_start(state: LoopState) -> None:
        nets.G.neural_rendering_resolution = r.neural_rendering_resolution(state.cur_nimg)  # type: ignore[attr-defined]
        if heldout is not None and state.step % config.eval_every == 0 and trainer.is_main_process:
            nr = r.neural_rendering_resolution(state.cur_nimg)
            with torch.no_grad():  # G_ema (the exported model) and G (early on G_ema lags by its half-life)
                last_metrics.update(heldout_metrics(ema.module, heldout, nr, nets.lpips))
                raw = heldout_metrics(nets.G, heldout, nr, nets.lpips)
            trainer.accelerator.log({**{f"Eval/G_ema/{k}": v for k, v in last_metrics.items()},
                                     **{f"Eval/G/{k}": v for k, v in raw.items()}}, step=state.step)
            logger.info("held-out at step %d: G_ema %s | G %s", state.step,
                        "  ".join(f"{k} {v:.4f}" for k, v in last_metrics.items()),
                        "  ".join(f"{k} {v:.4f}" for k, v in raw.items()))

    def images(module: torch.nn.Module, state: LoopState) -> Any:
        return {"grid": grid_images(module, fixed, r.neural_rendering_resolution(state.cur_nimg))}  # type: ignore[arg-type]

    def export(module: torch.nn.Module, directory: Path) -> None:
        state = current["state"]
        # trained weights are not random ones, unless the loss networks were (a smoke run: benchmarks refuse it)
        module.is_random_init = nets.random_loss_networks  # type: ignore[assignment]
        name = f"step-{state.step:08d}"
        final = directory.parent / name  # `directory` is the export's staging folder, moved there when written
        report = None
        if eval_pipeline is not None:
            try:
                report = run_benchmark(module, final, Path(config.out_dir) / "eval" / name,  # type: ignore[arg-type]
                                       [*benchmark_args, "--method-name", name], eval_pipeline, trainer.device)
            except AvatarError as exc:  # the benchmark's data or networks: say so, keep training
                logger.error("benchmark at step %d failed, training goes on: %s", state.step, exc)
        if report is not None:
            values = {f"Benchmark/{k}": v["value"] for k, v in report.get("metrics", {}).items()
                      if isinstance(v, dict) and v.get("value") is not None}
            trainer.accelerator.log(values, step=state.step)
            logger.info("benchmark at step %d (%s %s%s): %s", state.step, report.get("benchmark"),
                        report.get("protocol"), "" if report.get("comparable") else ", NOT COMPARABLE",
                        "  ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in values.items()))
        values = model_card_values(repo_id=config.push_to_hub or str(final), recipe=r.to_dict(),
                                   config=asdict(config), step=state.step, kimg=state.kimg,
                                   metrics=dict(last_metrics) or None, random_loss_networks=nets.random_loss_networks,
                                   benchmark=report)
        write_export(module, directory, values)  # type: ignore[arg-type]

    current: dict[str, LoopState] = {"state": LoopState()}

    def prepare_batch(batch: Any, state: LoopState) -> Any:
        current["state"] = state
        return prepare(batch)

    push = hub_push(config.push_to_hub, private=config.hub_private) if config.push_to_hub else None
    result = trainer.fit(phases, data=source, ema=ema,
                         hooks=Hooks(on_step_start=on_step_start, prepare_batch=prepare_batch, images=images,
                                     export=export, push=push))
    if heldout is not None and trainer.is_main_process:
        nr = r.neural_rendering_resolution(result.state.cur_nimg)
        final, raw = heldout_metrics(ema.module, heldout, nr, nets.lpips), heldout_metrics(nets.G, heldout, nr, nets.lpips)
        logger.info("held-out at the end (step %d): G_ema %s | G %s", result.state.step,
                    "  ".join(f"{k} {v:.4f}" for k, v in final.items()),
                    "  ".join(f"{k} {v:.4f}" for k, v in raw.items()))
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = parse_config(Portrait4DTrainConfig, argv, prog="train/portrait4d.py", description=__doc__,
                              defaults=default_config(_recipe_name(argv)))
        return run(config)
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
