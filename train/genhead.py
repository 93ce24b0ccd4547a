"""Train GenHead, Portrait4D's part-wise 4D head generator: ``accelerate launch train/genhead.py --data DATA``.

The official recipe (``train/recipes/genhead.py``: ``configs/genhead-ffhq512.yaml`` of YuDeng/Portrait-4D, batch 32,
25,000 kimg) on the training package's loop (``train/core``): four phases with lazy regularisation (Gmain with the
part regularisers, Greg density TV every 4 steps, Dmain, Dreg R1 every 16), GPC, the blur of D's input, the EMA
generator; losses in ``train/recipes/genhead_loss.py``.

Data (``--data``): the official FFHQ LMDB (``Datum_genhead`` records, ``FFHQ_512_<n>``), a Parquet dataset of
kind ``images`` (``python -m train.data.convert``) or a Hub dataset repo of ours. Real images feed D; the
generator's FLAME conditions ``(c, shape, exp, pose, eye)`` are drawn jointly from random training samples, neck
zeroed, a separate draw per phase per step (the official ``random_combine=False``).

``--init genhead-ffhq512`` (or a ``save_pretrained`` folder) starts from trained weights, D from the same
snapshot's discriminator (``genhead-ffhq512-D``), and applies the official resume settings (no EMA ramp-up; no blur
and no GPC fade unless ``--set resume_blur=true``); without it the networks are new. Every run can be stopped
(Ctrl-C, SIGTERM) and continued exactly with ``--resume latest``. The EMA generator is exported in the
``save_pretrained`` format with a model card (``OUT/export/step-*``; ``GenHead.from_pretrained`` and ``avatar
genhead --model`` take it) every 200 kimg (the official snapshot interval) and at the end, and, with
``--push-to-hub REPO``, uploaded in the background. Image grids (real | SR | raw | seg | depth | part masks | uv
of G_ema on fixed conditions) go to ``OUT/images`` at the same interval.

Examples::

    accelerate launch --num_processes 4 train/genhead.py --data data/FFHQ_512_216414 --out-dir runs/genhead
    accelerate launch train/genhead.py --data DATA --init genhead-ffhq512 --kimg 26000 --push-to-hub me/genhead
    python train/genhead.py --data images/ --size tiny --flame synthetic --batch-size 2 --max-steps 20 --cpu \\
        --out-dir /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script (accelerate launch train/genhead.py): import from the repo root
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [_root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import AvatarError, ConfigError
from train.core import (
    EMA,
    AdamConfig,
    EmaConfig,
    ExportConfig,
    Hooks,
    LogConfig,
    TrainConfig,
    Trainer,
    apply_overrides,
    hub_push,
    lazy_phases,
    parse_config,
)
from train.core.state import LoopState
from train.recipes.genhead import GENHEAD_RECIPE, GenHeadRecipe

__all__ = ["GenHeadTrainConfig", "build_networks", "default_config", "main", "training_labels"]

logger = logging.getLogger("train.genhead")


@dataclass(frozen=True)
class GenHeadTrainConfig(TrainConfig):
    """Options of a GenHead training run."""

    data_path: str | None = field(default=None, metadata={"aliases": ("--data",)})
    """Training data: official FFHQ LMDB folder (Datum_genhead), Parquet dataset folder (kind images) or Hub
    dataset repo."""
    data_revision: str | None = None
    """Revision of a Hub dataset repo."""
    init: str | None = None
    """Initial generator: model id (genhead-ffhq512), save_pretrained folder, official checkpoint or Hub repo (none:
    new weights). Applies the official resume settings (no EMA ramp-up, no blur, no GPC fade)."""
    init_discriminator: str | None = None
    """Initial discriminator: model id (genhead-ffhq512-D), save_pretrained folder or official checkpoint; 'fresh' for a
    new one. Default: the discriminator of --init's released snapshot when --init is a model id, else a new one."""
    size: Literal["full", "tiny"] = "full"
    """Architecture of new networks: the official one, or the tiny test configuration."""
    flame: Literal["official", "synthetic"] = "official"
    """FLAME of a new generator: the official assets (taken from genhead-ffhq512), or a synthetic FLAME (smoke
    tests only)."""
    local_dir: str | None = None
    """Take upstream weight files from this folder instead of the network."""
    push_to_hub: str | None = None
    """Upload every export (G_ema, config, model card) to this Hub model repo, in the background."""
    hub_private: bool = False
    """Create the Hub repo private."""
    grid_samples: int = 4
    """Rows of the image grids (the first samples of --data, with their FLAME conditions)."""
    set: tuple[str, ...] = ()
    """Recipe values to change, as KEY=VALUE (fields of train/recipes/genhead.py, nested ones dotted), e.g.
    --set density_reg=0.5 parts.eye_t=50."""


def default_config(batch_size: int = GENHEAD_RECIPE.batch, init: str | None = None) -> GenHeadTrainConfig:
    """The official defaults at a global batch: EMA ``batch * 10 / 32`` kimg (ramp-up 0.05, none from ``--init``),
    4-kimg ticks, image grids and exports every 50 ticks (200 kimg)."""
    r = GENHEAD_RECIPE.with_batch(batch_size)
    every = r.snapshot_steps()
    return GenHeadTrainConfig(
        batch_size=batch_size, run_name="genhead", out_dir="runs/genhead",
        ema=EmaConfig(kimg=r.ema_kimg, rampup=None if init else r.ema_rampup),
        log=LogConfig(tick_kimg=r.tick_kimg, image_every_steps=every),
        export=ExportConfig(every_steps=r.snapshot_steps(r.network_snapshot_ticks)))


def _pre_parse(argv: list[str]) -> tuple[int, str | None]:
    """``--batch-size`` and ``--init`` (from the command line, else from ``--config``): they set defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--batch-size", type=int, default=None)
    pre.add_argument("--init", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    saved: dict[str, Any] = {}
    if known.config is not None:
        try:
            saved = json.loads(Path(known.config).read_text())
        except (OSError, ValueError):
            saved = {}
    batch = known.batch_size if known.batch_size is not None else saved.get("batch_size", GENHEAD_RECIPE.batch)
    init = known.init if known.init is not None else saved.get("init")
    return int(batch), (None if init in (None, "none", "None") else str(init))


# ----------------------------------------------------------------------------------------------------------
# data


def open_dataset(path: str, revision: str | None = None) -> Any:
    """``--data`` as an :class:`~train.data.ImageDataset` (one log line says which data it is)."""
    from train.data import ImageDataset, open_train_data

    source = open_train_data(path, revision=revision)
    dataset = ImageDataset(source)
    logger.info("training data: %d images (%s, %s): the real images of D and the pool of generator conditions",
                len(dataset), path, type(source).__name__)
    return dataset


def training_labels(dataset: Any) -> Callable[[int], np.ndarray]:
    """``index -> (437,)`` label of every training sample, for the generator's condition draws: a Parquet dataset's
    label column read once (its rows are read a row group at a time), an LMDB's records read when drawn (upstream's
    ``get_label_all``)."""
    from train.data import ParquetTrainData
    from train.data.records import LABEL_DIM

    source = dataset.source
    if isinstance(source, ParquetTrainData):
        import pyarrow.parquet as pq

        parts = []
        for shard in source.shards:
            column = pq.read_table(str(shard), columns=["label"]).column("label").combine_chunks()
            parts.append(np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float32).reshape(-1, LABEL_DIM))
        table = np.concatenate(parts)
        if len(table) != len(dataset):
            raise ConfigError(f"{source.root}: {len(table)} labels for {len(dataset)} images")
        return lambda index: table[index]
    return lambda index: np.array(source.read(int(index), copy=False).label, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------
# networks


def _official_flame(G: nn.Module, local_dir: str | None) -> None:
    """Give a new generator the official FLAME (the deformer buffers of ``genhead-ffhq512`` and the FLAME masks)."""
    from avatar.hub.weights import read_converted_weights
    from avatar.models.genhead import GenHead

    logger.info("FLAME of the new generator: the official assets of genhead-ffhq512")
    donor = GenHead.from_pretrained("genhead-ffhq512", local_dir=local_dir)
    assert donor.deformer.flame_deform is not None
    G.set_flame(donor.deformer.flame_deform.state_dict(), read_converted_weights("flame-masks", local_dir=local_dir))


def build_networks(*, init: str | None, init_discriminator: str | None, size: Literal["full", "tiny"],
                   flame: Literal["official", "synthetic"], mbstd_group: int, device: torch.device, seed: int = 0,
                   local_dir: str | None = None) -> tuple[nn.Module, nn.Module]:
    """G (train mode) and D on ``device``, requires_grad off (the loop turns on the phase's parameters)."""
    from avatar.flame.deformation import build_deformer_buffers
    from avatar.flame.synthetic import synthetic_genhead_assets
    from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator
    from avatar.models.genhead import GenHead, GenHeadConfig
    from train.recipes.portrait4d_setup import discriminator_source

    if init is not None:
        G = GenHead.from_pretrained(init, local_dir=local_dir)
    else:
        torch.manual_seed(seed)
        G = GenHead.tiny(seed) if size == "tiny" else GenHead(GenHeadConfig())
        if flame == "official":
            _official_flame(G, local_dir)
    if flame == "synthetic" and (init is None or not G.can_render):
        assets = synthetic_genhead_assets(seed)
        G.set_flame(build_deformer_buffers(**assets), assets["masks"])
    if not G.can_render:
        raise ConfigError(f"{init} has no FLAME assets to render with; use a genhead-ffhq512 export or --flame "
                          "synthetic for a smoke run")
    source = discriminator_source(init, init_discriminator)
    if source is not None:
        D = DualDiscriminator.from_pretrained(source, local_dir=local_dir)
    else:
        d_config = replace(DiscriminatorConfig.tiny(), channel_base=4096) if size == "tiny" else DiscriminatorConfig()
        D = DualDiscriminator(replace(d_config, img_resolution=G.config.img_resolution, mbstd_group_size=mbstd_group))
    if D.config.img_resolution != G.config.img_resolution or D.config.c_dim != 25:
        raise ConfigError(f"the discriminator takes {D.config.img_resolution}^2 images and {D.config.c_dim}-d "
                          f"cameras; GenHead makes {G.config.img_resolution}^2 images with 25-d cameras")
    return G.to(device).train().requires_grad_(False), D.to(device).train().requires_grad_(False)


# ----------------------------------------------------------------------------------------------------------
# images and exports


def _fit(x: Tensor, size: int) -> Tensor:
    from avatar.losses.discriminator import filtered_resizing

    x = x.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return filtered_resizing(x, size) if x.shape[-1] != size else x


@torch.no_grad()
def grid_images(G: nn.Module, batch: Any, z: Tensor, nr: int) -> tuple[Tensor, int]:
    """One row per sample: the real image, then G's render of its conditions (``[c, shape]`` unswapped, constant
    noise, deterministic rays): SR, raw, seg, depth, eye + mouth masks, uv. Images in [-1, 1]; 7 columns."""
    ws = G.mapping(z, batch.c, batch.shape)
    out = G.synthesis(ws, z, batch.c, batch.shape, batch.exp, batch.pose, batch.eye, nr, noise_mode="const",
                      deterministic=True)
    depth = out.depth
    lo, hi = depth.amin(dim=(1, 2, 3), keepdim=True), depth.amax(dim=(1, 2, 3), keepdim=True)
    depth = 1 - (depth - lo) / (hi - lo).clamp_min(1e-8) * 2  # near is bright, as upstream's -depth
    parts = (out.masks.eye + out.masks.mouth).clamp(0, 1) * 2 - 1
    size = batch.image.shape[-1]
    columns = [batch.image, out.image.clamp(-1, 1), out.image_raw.clamp(-1, 1), out.seg, depth, parts, batch.uv]
    return torch.stack([_fit(c, size) for c in columns], dim=1).flatten(0, 1), len(columns)


_CARD = """---
library_name: avatar4d
tags:
- genhead
- portrait4d
- 3d-head
- gan
- triplane
---

# {model_id}

{caveat}A GenHead generator (Portrait4D's part-wise animatable 3D head GAN) trained with `accelerate launch
train/genhead.py` (avatar4d), official recipe `{recipe}` (YuDeng/Portrait-4D `configs/genhead-ffhq512.yaml`), from
{init}, on `{data}`: {step} steps ({kimg} kimg) at a global batch of {batch_size} on {hardware} (Python {python},
PyTorch {torch}). This is the EMA generator (`G_ema`).

## Use

```python
from avatar.models.genhead import GenHead

model = GenHead.from_pretrained("{model_id}")
```

`avatar genhead sample --model {model_id}` and `avatar genhead animate --model {model_id}` take it too.

## Training

| setting | value |
|---|---|
{settings_table}

Part regulariser weights:

| term | weight |
|---|---|
{parts_table}

No metric was computed during training (the official loop computes none either; FID runs offline).

## Licence

The training code is avatar4d's. GenHead was designed with FLAME (MPI-IS licence), whose assets keep their own terms;
check the licence of your training data (FFHQ: CC BY-NC-SA 4.0).

## Citation

Portrait4D: Learning One-Shot 4D Head Avatar Synthesis using Synthetic Data (CVPR 2024), Yu Deng et al.
"""


def model_card(*, repo_id: str, recipe: GenHeadRecipe, config: GenHeadTrainConfig, step: int, kimg: float,
               smoke: bool) -> tuple[str, dict[str, Any]]:
    """The export's ``README.md`` and its ``training.json`` facts."""
    hardware = "CPU"
    if torch.cuda.is_available() and not config.cpu:
        hardware = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    g_lr, g_betas = recipe.adam("G")
    d_lr, d_betas = recipe.adam("D")
    settings = {
        "G Adam lr / betas (lazy-corrected)": f"{g_lr:.6g} / ({g_betas[0]:.5g}, {g_betas[1]:.5g})",
        "D Adam lr / betas (lazy-corrected)": f"{d_lr:.6g} / ({d_betas[0]:.5g}, {d_betas[1]:.5g})",
        "Greg / Dreg intervals": f"{recipe.g_reg_interval} / {recipe.d_reg_interval}",
        "R1 gammas (images / uv / seg)": f"{recipe.r1_gamma:g} / {recipe.r1_gamma_uv:g} / {recipe.r1_gamma_seg:g}",
        "density TV weight / p_dist": f"{recipe.density_reg:g} / {recipe.density_reg_p_dist:g}",
        "blur sigma / fade (kimg)": f"{recipe.blur_init_sigma:g} / {recipe.batch * recipe.blur_fade_kimg / 32:g}",
        "GPC swap prob / fade (kimg)": f"{recipe.gpc_reg_prob} / {recipe.gpc_reg_fade_kimg:g}",
        "neural rendering resolution": str(recipe.nr_initial),
        "EMA half-life (kimg) / ramp-up": f"{config.ema.kimg:g} / {config.ema.rampup}",
    }
    facts: dict[str, Any] = {
        "model_id": repo_id, "recipe": recipe.name, "data": config.data_path, "init": config.init or "new weights",
        "step": step, "kimg": f"{kimg:.3f}", "batch_size": config.batch_size, "hardware": hardware,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    caveat = ("**This export comes from a smoke-test configuration (tiny networks or a synthetic FLAME): it is not a "
              "model.**\n\n" if smoke else "")
    text = _CARD.format(**facts, caveat=caveat,
                        settings_table="\n".join(f"| {k} | {v} |" for k, v in settings.items()),
                        parts_table="\n".join(f"| {k} | {v:g} |" for k, v in asdict(recipe.parts).items()))
    return text, {**facts, "recipe_values": recipe.to_dict(), "config": asdict(config)}


# ----------------------------------------------------------------------------------------------------------
# the run


def run(config: GenHeadTrainConfig) -> int:
    """Train with ``config``; returns the process exit status (0 done, 128 + signal when stopped)."""
    from torch.utils.data import default_collate

    from train.portrait4d import check_hub_access
    from train.recipes.genhead_loss import ConditionSampler, GenHeadLoss

    if config.data_path is None:
        raise ConfigError("--data is required: an official FFHQ LMDB, a Parquet image dataset or a Hub dataset repo")
    if config.push_to_hub:
        check_hub_access(config.push_to_hub, config.hub_private)
    r = apply_overrides(GENHEAD_RECIPE, config.set, exclude=("name",)).with_batch(config.batch_size)
    if config.init is not None:
        r = r.resumed()
    if config.kimg is None and config.max_steps is None:
        config = replace(config, kimg=float(r.kimg))
    dataset = open_dataset(config.data_path, config.data_revision)
    labels = training_labels(dataset)

    trainer = Trainer(config)
    if trainer.batch_per_process < r.mbstd_group or trainer.batch_per_process % r.mbstd_group:
        raise ConfigError(f"each process takes {trainer.batch_per_process} samples; D's minibatch-std groups need a "
                          f"multiple of {r.mbstd_group} (the official batch is 8 per GPU)")
    G, D = build_networks(init=config.init, init_discriminator=config.init_discriminator, size=config.size,
                          flame=config.flame, mbstd_group=r.mbstd_group, device=trainer.device, seed=config.seed,
                          local_dir=config.local_dir)
    nr_train = int(G.config.neural_rendering_resolution)
    if r.nr_initial != nr_train and "nr_initial" not in {s.partition("=")[0].strip() for s in config.set}:
        logger.info("rendering at %d, the generator's training resolution (the recipe's %d is the released "
                    "architecture's)", nr_train, r.nr_initial)
        r = replace(r, nr_initial=nr_train)
    smoke = config.size == "tiny" or config.flame == "synthetic"
    if smoke and trainer.is_main_process:
        logger.warning("tiny networks or a synthetic FLAME: this run is a smoke test, not a model")
    try:
        loss = GenHeadLoss(r, G, D)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    phases = [
        *lazy_phases("G", G, main=loss.g_main, reg=loss.g_reg, reg_interval=r.g_reg_interval,
                     adam=AdamConfig(r.g_lr, r.betas, r.eps)),
        *lazy_phases("D", D, main=loss.d_main, reg=loss.d_reg, reg_interval=r.d_reg_interval,
                     adam=AdamConfig(r.d_lr, r.betas, r.eps)),
    ]
    sampler = ConditionSampler(labels, len(dataset), G.config.z_dim, config.batch_size, trainer.batch_per_process,
                               G.deformer.flame_deform.flame_model, phases=tuple(p.name for p in phases))
    ema = EMA(G, config.ema)

    n_grid = max(1, min(config.grid_samples, len(dataset)))
    grid_source = {k: v.to(trainer.device) if isinstance(v, Tensor) else v
                   for k, v in default_collate([dataset[i] for i in range(n_grid)]).items()}
    grid_batch = loss.prepare(grid_source, {})
    grid_z = torch.randn(n_grid, G.config.z_dim, generator=torch.Generator().manual_seed(config.seed)).to(
        trainer.device)
    current: dict[str, LoopState] = {"state": LoopState()}

    def prepare_batch(batch: Any, state: LoopState) -> Any:
        current["state"] = state
        return loss.prepare(batch, sampler(trainer.device))

    def images(module: nn.Module, state: LoopState) -> Any:
        return {"grid": grid_images(module, grid_batch, grid_z, r.neural_rendering_resolution(state.cur_nimg))}

    def export(module: nn.Module, directory: Path) -> None:
        state = current["state"]
        module.is_random_init = False  # type: ignore[assignment]  # trained weights
        name = f"step-{state.step:08d}"
        card, facts = model_card(repo_id=config.push_to_hub or str(directory.parent / name), recipe=r, config=config,
                                 step=state.step, kimg=state.kimg, smoke=smoke)
        module.save_pretrained(directory)  # type: ignore[operator]
        (directory / "README.md").write_text(card, encoding="utf-8")
        (directory / "training.json").write_text(json.dumps(facts, indent=2, default=str), encoding="utf-8")

    push = hub_push(config.push_to_hub, private=config.hub_private) if config.push_to_hub else None
    result = trainer.fit(phases, data=dataset, ema=ema,
                         hooks=Hooks(prepare_batch=prepare_batch, images=images, export=export, push=push))
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        batch, init = _pre_parse(argv)
        config = parse_config(GenHeadTrainConfig, argv, prog="train/genhead.py", description=__doc__,
                              defaults=default_config(batch, init))
        return run(config)
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
