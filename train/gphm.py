"""Train GPHM, the Gaussian parametric head model, on multi-view video data, in two stages (paper 3.2-3.4):
``accelerate launch train/gphm.py --data DATA --stage guiding|gaussian``.

1. ``--stage guiding`` trains the guiding geometry model (:class:`~avatar.models.gphm.GuidingGeometryModel`: mean
   SDF, marching tetrahedra, deformation and colour fields, mesh rendering, refine network), losses Eq. 17-18.
2. ``--stage gaussian --guiding STAGE1`` builds the Gaussian model from the stage-1 model
   (:meth:`GPHM.from_guiding <avatar.models.gphm.GPHM.from_guiding>`: points on its mean mesh, its codes, fields,
   encoders and refine network) and trains it, losses Eq. 19-20 (LPIPS-VGG for the perceptual term).
   ``STAGE1`` is a stage-1 export folder, a stage-1 run's output folder (its newest export) or a Hub repo.

The recipe (learning-rate groups, loss weights, lengths, the expression input) is ``train/recipes/gphm.py``;
``--set KEY=VALUE`` changes it (e.g. ``--set guiding.lr_networks=5e-4 gaussian.loss.weight_perceptual=0``).

Data (``--data``, :mod:`train.data.gphm`): a NeRSemble folder (v1 or v2 layout) or the synthetic multi-view
dataset of ``python -m train.synthesize`` (a folder or a Hub dataset repo). One code per identity of the data
(its count sizes the models' ``nn.Embedding``; both stages must read data with the same identities). The
expression (and non-face) encoders read the **frontal-most view of the same frame** (the image itself when the
dataset cannot tell which images show one frame): :mod:`train.recipes.gphm_data` says how it is chosen and why.

Every run can be stopped (Ctrl-C, SIGTERM) and continued exactly with ``--resume latest``. The moving average of
the weights (``--no-use-ema``: the weights themselves) is exported in the ``save_pretrained`` format with a model
card (``OUT/export/step-*``; ``GuidingGeometryModel.from_pretrained`` / ``GPHM.from_pretrained`` read it) and,
with ``--push-to-hub REPO``, uploaded in the background. Losses go to the trackers (``OUT/logs``) every tick;
image grids (target | refined | raw | expression input) to ``OUT/images``.

Examples::

    accelerate launch --num_processes 8 train/gphm.py --data nersemble/ --stage guiding --out-dir runs/gphm-1
    accelerate launch --num_processes 8 train/gphm.py --data nersemble/ --stage gaussian \\
        --guiding runs/gphm-1 --out-dir runs/gphm-2 --push-to-hub me/gphm
    python train/gphm.py --data synthetic/ --stage guiding --size tiny --max-steps 20 --cpu --out-dir /tmp/g1
"""

from __future__ import annotations

import json
import logging
import platform
import re
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

if __package__ in (None, ""):  # run as a script (accelerate launch train/gphm.py): import from the repo root
    _root = str(Path(__file__).resolve().parent.parent)
    sys.path[:] = [_root] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import AvatarError, ConfigError
from train.core import (
    EMA,
    ExportConfig,
    Hooks,
    LogConfig,
    Phase,
    TrainConfig,
    Trainer,
    apply_overrides,
    hub_push,
    parse_config,
)
from train.core.state import LoopState
from train.recipes.gphm import GPHM_RECIPE, GPHMRecipe

__all__ = ["GPHMTrainConfig", "build_model", "build_optimizer", "default_config", "main", "open_dataset",
           "resolve_guiding", "run"]

logger = logging.getLogger("train.gphm")

NERSEMBLE_CANONICAL_SCALE = 0.25
"""World units (metres) per canonical unit for NeRSemble: a head is about 0.25 m chin to crown, 1 canonical unit."""
SYNTHETIC_CANONICAL_SCALE = 0.75
"""The same in Portrait4D's world (FLAME x 3), GenHead's synthetic renders at ``world_scale`` 1."""


@dataclass(frozen=True)
class GPHMTrainConfig(TrainConfig):
    """Options of a GPHM training run."""

    data_path: str | None = field(default=None, metadata={"aliases": ("--data",)})
    """Training data: a NeRSemble folder, or the synthetic multi-view dataset of train.synthesize (folder or Hub
    dataset repo)."""
    stage: Literal["guiding", "gaussian"] = "guiding"
    """Which model to train: the guiding geometry model (stage 1) or the Gaussian model (stage 2, needs
    --guiding or --init)."""
    guiding: str | None = None
    """Stage 2's starting point: a stage-1 export folder, a stage-1 run's output folder (its newest export) or a
    Hub repo of a GuidingGeometryModel."""
    init: str | None = None
    """Start this stage's model from these weights (a save_pretrained folder or Hub repo of the stage's model class)
    instead of new weights (stage 1) or the --guiding model (stage 2)."""
    size: Literal["full", "tiny"] = "full"
    """Architecture of new models: the paper's, or the tiny test configuration."""
    resolution: int | None = None
    """Side of the square images read from --data (default: the model's image resolution, 512 for the paper's)."""
    calibration_size: tuple[int, int] = (2200, 3208)
    """NeRSemble: width and height of the images camera_params.json's intrinsics are for."""
    world_scale: float = 1.0
    """Synthetic data: multiply its world lengths by this (1/3: FLAME metres)."""
    use_ema: bool = True
    """Export the moving average of the weights (--ema.kimg half-life); --no-use-ema exports the weights. Paper
    silent (it mentions no average): on by default, as in the toolkit's other recipes."""
    loss_networks: Literal["pretrained", "random"] = "pretrained"
    """Stage 2's LPIPS-VGG: the official weights (asset cache), or random (smoke tests only)."""
    backend: Literal["auto", "reference", "gsplat"] = "auto"
    """Stage 2's Gaussian rasteriser: gsplat on CUDA when installed ('auto'), or the pure-PyTorch reference."""
    local_dir: str | None = None
    """Take upstream weight files (LPIPS) from this folder instead of the network."""
    push_to_hub: str | None = None
    """Upload every export (weights, config, model card) to this Hub model repo, in the background."""
    hub_private: bool = False
    """Create the Hub repo private."""
    grid_samples: int = 4
    """Rows of the image grids (the first samples of --data)."""
    set: tuple[str, ...] = ()
    """Recipe values to change, as KEY=VALUE (fields of train/recipes/gphm.py, nested ones dotted), e.g.
    --set guiding.lr_networks=5e-4 gaussian.loss.weight_perceptual=0 expression_input=same."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.resolution is not None and (self.resolution < 4 or self.resolution % 4):
            raise ConfigError(f"--resolution must be a positive multiple of 4, got {self.resolution}")
        if self.grid_samples < 0:
            raise ConfigError(f"--grid-samples must be at least 0, got {self.grid_samples}")
        if not self.world_scale > 0:
            raise ConfigError(f"--world-scale must be above 0, got {self.world_scale}")


def default_config() -> GPHMTrainConfig:
    """The recipe's batch (8), ticks of 100 steps, image grids every 1,000 steps, exports every 5,000."""
    batch = GPHM_RECIPE.batch
    return GPHMTrainConfig(batch_size=batch, run_name="gphm", out_dir="runs/gphm",
                           log=LogConfig(tick_kimg=batch * 100 / 1000, image_every_steps=1000),
                           export=ExportConfig(every_steps=5000))


# ----------------------------------------------------------------------------------------------------------
# data


def _is_synthetic(path: str) -> bool:
    """The rule of :func:`train.data.gphm.open_gphm_data`: a Parquet dataset folder or a Hub dataset repo."""
    p = Path(path)
    if p.is_dir():
        return (p / "data").is_dir() and any((p / "data").glob("*.parquet"))
    return not p.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None


def open_dataset(config: GPHMTrainConfig, resolution: int, r: GPHMRecipe) -> tuple[Any, float]:
    """``--data`` wrapped in :class:`~train.recipes.gphm_data.ExpressionViews`, and the canonical scale to use."""
    from train.data.gphm import open_gphm_data
    from train.recipes.gphm_data import ExpressionViews

    assert config.data_path is not None
    synthetic = _is_synthetic(config.data_path)
    kwargs: dict[str, Any] = ({"resolution": resolution, "world_scale": config.world_scale} if synthetic else
                              {"resolution": resolution, "calibration_size": tuple(config.calibration_size)})
    base = open_gphm_data(config.data_path, **kwargs)
    dataset = ExpressionViews(base, r.expression_input)
    scale = r.canonical_scale
    if scale is None:
        scale = SYNTHETIC_CANONICAL_SCALE * config.world_scale if synthetic else NERSEMBLE_CANONICAL_SCALE
    logger.info("training data: %r, %d identities; expression input: %s; %.4g world units per canonical unit",
                base, len(dataset.identities),
                "the frontal-most view of each frame" if dataset.kind != "same" else "the image itself", scale)
    if not dataset.identities:
        raise ConfigError(f"{config.data_path} names no identities: GPHM needs one code per identity")
    return dataset, float(scale)


# ----------------------------------------------------------------------------------------------------------
# models


def resolve_guiding(source: str) -> str:
    """``--guiding``: a ``save_pretrained`` folder as it is, a run's output folder -> its newest export, else
    (a Hub repo id) as it is."""
    path = Path(source).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        exports = sorted(p for p in (path / "export").glob("step-*") if (p / "config.json").is_file())
        if not exports:
            raise ConfigError(f"--guiding {source}: neither a model folder (config.json) nor a run folder with "
                              "exports (OUT/export/step-*); train stage 1 first (--stage guiding)")
        logger.info("stage 1 model: %s (the newest export of %s)", exports[-1], source)
        return str(exports[-1])
    return source


def _check_identities(model: nn.Module, count: int, where: str) -> None:
    have = int(model.config.num_identities)
    if have != count:
        raise ConfigError(f"{where} has {have} identity codes but the data has {count} identities: train every stage "
                          "on the same identities")


def build_model(config: GPHMTrainConfig, num_identities: int, device: torch.device) -> nn.Module:
    """The stage's model in train mode on ``device`` (see the module docstring)."""
    from avatar.models.gphm import GPHM, GPHMConfig, GuidingGeometryConfig, GuidingGeometryModel

    if config.stage == "guiding":
        if config.init is not None:
            model: nn.Module = GuidingGeometryModel.from_pretrained(config.init)
            _check_identities(model, num_identities, f"--init {config.init}")
        elif config.size == "tiny":
            model = GuidingGeometryModel.tiny(config.seed, num_identities=num_identities)
        else:
            model = GuidingGeometryModel(GuidingGeometryConfig(num_identities=num_identities))
    elif config.init is not None:
        model = GPHM.from_pretrained(config.init)
        _check_identities(model, num_identities, f"--init {config.init}")
    else:
        assert config.guiding is not None
        guiding = GuidingGeometryModel.from_pretrained(resolve_guiding(config.guiding))
        _check_identities(guiding, num_identities, f"the stage 1 model {config.guiding}")
        tiny = GPHMConfig.tiny()
        changes = ({"attribute_width": tiny.attribute_width, "attribute_hidden_layers": tiny.attribute_hidden_layers}
                   if config.size == "tiny" else {})
        model = GPHM.from_guiding(guiding.to(device), **changes)
        logger.info("Gaussian model initialised from the stage 1 model: %d points on its mean mesh",
                    model.num_points)
    return model.to(device).train().requires_grad_(False)


def build_optimizer(model: nn.Module, learning_rates: dict[str, float], r: GPHMRecipe) -> torch.optim.Adam:
    """Adam over the model's ``parameter_groups()``, each group with its recipe learning rate (empty groups left
    out)."""
    groups = []
    for name, params in model.parameter_groups().items():  # type: ignore[operator]
        if name not in learning_rates:
            raise ConfigError(f"the recipe has no learning rate for the parameter group {name!r}")
        if params:
            groups.append({"params": params, "name": name, "lr": learning_rates[name], "lr_scale": 1.0})
    return torch.optim.Adam(groups, betas=r.betas, eps=r.eps)


def _perceptual(config: GPHMTrainConfig, weight: float, device: torch.device) -> Any:
    if weight == 0:
        return None
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet
    from avatar.losses.perceptual import LPIPSLoss

    if config.loss_networks == "random":
        network = LPIPSNet(LPIPSConfig.tiny() if config.size == "tiny" else LPIPSConfig(net="vgg"))
    else:
        network = LPIPSNet.from_pretrained("lpips-vgg", local_dir=config.local_dir)
    return LPIPSLoss(network).to(device)


# ----------------------------------------------------------------------------------------------------------
# images and exports


def _fit(x: Tensor, size: int) -> Tensor:
    x = x.float()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) if x.shape[-1] != size else x


@torch.no_grad()
def grid_images(loss: Any, module: nn.Module, batch: Any) -> tuple[Tensor, int]:
    """One row per sample: the target, the refined image, the raw image (the feature map's first 3 channels) and
    the expression input; images in [-1, 1]; 4 columns."""
    model = loss.model
    loss.model = module
    try:
        out, _ = loss.forward(batch)
    finally:
        loss.model = model
    size = batch.image.shape[-1]
    columns = [batch.image, out.image.clamp(-1, 1), out.image_raw.clamp(-1, 1), batch.expression]
    return torch.stack([_fit(c, size) for c in columns], dim=1).flatten(0, 1), len(columns)


_CARD = """---
library_name: avatar4d
tags:
- gphm
- gaussian-splatting
- 3d-head
- parametric-head-model
---

# {model_id}

{caveat}{what} trained with `train/gphm.py --stage {stage}` (avatar4d) on `{data}` ({identities} identities), from
{init}: {step} steps ({kimg} kimg) at a global batch of {batch_size} on {hardware} (Python {python}, PyTorch
{torch}). {ema}

GPHM is the Gaussian Parametric Head Model (Xu et al., ECCV 2024 / TPAMI 2025, "GPHMv2"), built from the paper's
text: no official code or weights exist. Our copy of the paper lost its numbers, so the learning rates, loss
weights and lengths are choices (each explained in `train/recipes/gphm.py`).

## Use

```python
from avatar.models.gphm import {cls}

model = {cls}.from_pretrained("{model_id}")
```
{next_step}
## Training

| setting | value |
|---|---|
{settings_table}

Loss weights (paper Eq. {equations}):

| term | weight |
|---|---|
{loss_table}

Deviations from the paper: no 3D landmark term (the multi-view data has no 3D landmarks); the expression encoder
reads {expression}; the non-face encoder reads {non_face}; head poses are not optimised.

## Licence

The training code is avatar4d's. Check the licence of your training data (NeRSemble is released for
non-commercial research on request; GenHead's synthetic renders follow GenHead's and FLAME's terms).
"""


def model_card(*, repo_id: str, r: GPHMRecipe, config: GPHMTrainConfig, identities: int, step: int, kimg: float,
               smoke: bool) -> tuple[str, dict[str, Any]]:
    """The export's ``README.md`` and its ``training.json`` facts."""
    hardware = "CPU"
    if torch.cuda.is_available() and not config.cpu:
        hardware = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    stage = r.stage(config.stage)
    guiding = config.stage == "guiding"
    settings = {f"lr {name}": f"{lr:g}" for name, lr in stage.learning_rates().items()}
    settings["Adam betas / eps"] = f"({r.betas[0]:g}, {r.betas[1]:g}) / {r.eps:g}"
    settings["EMA half-life (kimg) / ramp-up"] = (f"{config.ema.kimg:g} / {config.ema.rampup}" if config.use_ema
                                                  else "off")
    settings["canonical scale (world units per unit)"] = f"{r.canonical_scale}"
    losses = {k.removeprefix("weight_"): v for k, v in asdict(stage.loss).items()}
    start = config.init or (f"the stage 1 model `{config.guiding}`" if not guiding else "new weights")
    facts: dict[str, Any] = {
        "model_id": repo_id, "stage": config.stage, "data": config.data_path, "identities": identities,
        "init": start, "step": step, "kimg": f"{kimg:.3f}", "batch_size": config.batch_size, "hardware": hardware,
        "python": platform.python_version(), "torch": torch.__version__,
    }
    caveat = ("**This export comes from a smoke-test configuration (tiny networks or random loss networks): it is "
              "not a model.**\n\n" if smoke else "")
    next_step = (f"\nStage 2 starts from it: `accelerate launch train/gphm.py --data DATA --stage gaussian --guiding "
                 f"{repo_id}`.\n" if guiding else "")
    text = _CARD.format(
        **facts, caveat=caveat, cls="GuidingGeometryModel" if guiding else "GPHM",
        what=("A GPHM guiding geometry model (stage 1: SDF mesh, deformation and colour fields, refine network)"
              if guiding else "A GPHM Gaussian parametric head model (stage 2)"),
        ema=("This is the moving average of the weights." if config.use_ema else "These are the trained weights."),
        next_step=next_step, equations="17-18" if guiding else "19-20",
        settings_table="\n".join(f"| {k} | {v} |" for k, v in settings.items()),
        loss_table="\n".join(f"| {k} | {v:g} |" for k, v in losses.items()),
        expression=("the frontal-most view of the same frame" if r.expression_input == "frontal"
                    else "the target image itself"),
        non_face=("the same image" if r.non_face_input == "image" else "nothing (zero codes)"))
    return text, {**facts, "recipe_values": r.to_dict(), "config": asdict(config)}


# ----------------------------------------------------------------------------------------------------------
# the run


def run(config: GPHMTrainConfig) -> int:
    """Train with ``config``; returns the process exit status (0 done, 128 + signal when stopped)."""
    from torch.utils.data import default_collate

    from avatar.models.gphm import GuidingGeometryModel
    from train.portrait4d import check_hub_access
    from train.recipes.gphm_loss import GaussianLoss, GuidingLoss, prepare_batch

    if config.data_path is None:
        raise ConfigError("--data is required: a NeRSemble folder or the synthetic multi-view dataset of "
                          "train.synthesize")
    if config.stage == "gaussian" and config.guiding is None and config.init is None:
        raise ConfigError("--stage gaussian starts from the stage 1 model: pass --guiding (a stage-1 export or run "
                          "folder), or --init (a GPHM to continue)")
    if config.stage == "guiding" and config.guiding is not None:
        raise ConfigError("--guiding is stage 2's starting point; --stage guiding trains that model itself (use "
                          "--init to continue one)")
    r = apply_overrides(GPHM_RECIPE, config.set, exclude=("batch",))  # the batch is --batch-size
    stage = r.stage(config.stage)
    if config.push_to_hub:
        check_hub_access(config.push_to_hub, config.hub_private)
    if config.kimg is None and config.max_steps is None:
        config = replace(config, kimg=float(stage.kimg))

    trainer = Trainer(config)
    resolution = config.resolution
    if resolution is None:  # the model's image resolution: read the config before building
        from avatar.models.gphm import GuidingGeometryConfig

        if config.stage == "guiding" and config.init is None:
            resolution = (GuidingGeometryConfig.tiny() if config.size == "tiny" else GuidingGeometryConfig()
                          ).image_resolution
        else:
            from avatar.models.gphm import GPHM

            source = config.init or resolve_guiding(str(config.guiding))
            cls = GuidingGeometryModel if config.stage == "guiding" or config.init is None else GPHM
            resolution = int(cls.config_class.from_dict(_read_config(source, cls)).image_resolution)
    dataset, canonical_scale = open_dataset(config, resolution, r)
    r = replace(r, canonical_scale=canonical_scale)
    identities = len(dataset.identities)
    model = build_model(config, identities, trainer.device)
    if config.stage == "gaussian":
        _match_checkpoint_points(model, trainer, config.resume)
    smoke = config.size == "tiny" or config.loss_networks == "random"
    if smoke and trainer.is_main_process:
        logger.warning("tiny networks or random loss networks: this run is a smoke test, not a model")
    if config.stage == "guiding":
        loss: Any = GuidingLoss(model, stage)
    else:
        perceptual = _perceptual(config, stage.loss.weight_perceptual, trainer.device)  # type: ignore[union-attr]
        loss = GaussianLoss(model, stage, perceptual, backend=config.backend)
    optimizer = build_optimizer(model, stage.learning_rates(), r)
    phases = [Phase(config.stage, model, optimizer, 1, loss, group=config.stage)]
    ema = EMA(model, config.ema) if config.use_ema else None
    feature_resolution = int(model.config.feature_resolution)

    def prepare(batch: Any) -> Any:
        return prepare_batch(batch, feature_resolution=feature_resolution, canonical_scale=canonical_scale,
                             composite_background=r.composite_background, non_face_input=r.non_face_input)

    n_grid = min(config.grid_samples, len(dataset))
    grid_batch = None
    if n_grid and config.log.image_every_steps and trainer.is_main_process:
        raw = default_collate([dataset[i] for i in range(n_grid)])
        grid_batch = prepare({k: v.to(trainer.device) for k, v in raw.items()})
    current: dict[str, LoopState] = {"state": LoopState()}

    def on_batch(batch: Any, state: LoopState) -> Any:
        current["state"] = state
        return prepare(batch)

    def images(module: nn.Module, state: LoopState) -> Any:
        if grid_batch is None:
            return {}
        return {"grid": grid_images(loss, module, grid_batch)}

    def export(module: nn.Module, directory: Path) -> None:
        state = current["state"]
        module.is_random_init = False  # type: ignore[assignment]  # trained weights
        name = f"step-{state.step:08d}"
        card, facts = model_card(repo_id=config.push_to_hub or str(directory.parent / name), r=r, config=config,
                                 identities=identities, step=state.step, kimg=state.kimg, smoke=smoke)
        module.save_pretrained(directory)  # type: ignore[operator]
        (directory / "README.md").write_text(card, encoding="utf-8")
        (directory / "training.json").write_text(json.dumps(facts, indent=2, default=str), encoding="utf-8")

    push = hub_push(config.push_to_hub, private=config.hub_private) if config.push_to_hub else None
    result = trainer.fit(phases, data=dataset, ema=ema,
                         hooks=Hooks(prepare_batch=on_batch, images=images, export=export, push=push))
    return result.exit_code


def _match_checkpoint_points(model: nn.Module, trainer: Trainer, resume: str | None) -> None:
    """Give a stage-2 model the point count of the checkpoint it resumes from (its mean mesh, re-extracted from the
    stage-1 model, may differ by a few vertices when the SDF is evaluated with other kernels), so that the
    checkpoint loads; its values then overwrite the new points. Call before building the optimizer."""
    from safetensors import safe_open

    path = trainer.checkpoints.resolve(resume)
    weights = path / "model.safetensors" if path is not None else None
    if weights is None or not weights.is_file():
        return
    with safe_open(str(weights), framework="pt") as f:
        names = set(f.keys())
        if "points.means" not in names:
            return
        n = int(f.get_slice("points.means").get_shape()[0])
    if n != model.num_points:  # type: ignore[attr-defined]
        logger.info("the checkpoint has %d Gaussians, the stage 1 mesh now gives %d: taking the checkpoint's", n,
                    model.num_points)
        model.points.resize(n)  # type: ignore[operator, union-attr]
        model.config = model.config.replace(num_points=n)  # type: ignore[operator, union-attr]


def _read_config(source: str, cls: type) -> dict[str, Any]:
    """``config.json`` of a model folder or Hub repo (the image resolution decides the data's)."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source} is not a {cls.__name__} folder (config.json: {exc})") from exc
    model = cls.from_pretrained(source)  # type: ignore[attr-defined]
    return model.config.to_dict()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = parse_config(GPHMTrainConfig, argv, prog="train/gphm.py", description=__doc__,
                              defaults=default_config())
        return run(config)
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
