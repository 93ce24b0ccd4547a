"""Portrait4D v1's online training data: GenHead renders drawn from the FLAME parameter pools at every step.

Official source: ``training/training_loop_recon_v1.py`` (``fetch_random_params``, the pools, the per-step block
that slices ``gen_data_by_G_syn``'s output into the loss's inputs) and ``training/loss/loss_recon_v1.py``
(``gen_data_by_G_syn``, ``get_motion_feature``); design note ``portrait4d-training.md`` sections 4 and 6.3. The
formulas and the sequence of operations are upstream's; nothing is copied.

Per step and process, ``B`` subjects x 3 views (source, driving, target):

1. :func:`draw_flame_params` (``fetch_random_params``): one identity row (FLAME shape) per subject; ``3 B``
   independent dataset cameras; a VFHQ clip and two of its frames (source, driving) whose jaw opening is replaced
   by ``U(0, 0.2)`` with probability 0.5 each, the target reusing the driving motion; two independent VFHQ eye
   poses; ``static_dataset`` (the static recipe): every view takes the source motion; ``half_static`` (v1): the
   second half of the batch gets one FFHQ (static) motion for its 3 views, without jaw randomisation; one latent
   ``z`` per subject, shared by its views and used as the background latent too.
2. :func:`render_cameras` (``gen_data_by_G_syn``): each of the ``3 B`` images keeps a random LookAt camera (the
   official ranges, :func:`~train.recipes.portrait4d_loss.regularizer_cameras`) with probability 0.5, else its
   dataset camera; the camera is decomposed (the identity: the neck rotation is always zero).
3. GenHead, in eval mode as upstream's ``G_syn`` but with **stochastic** ray sampling (upstream's renderer jitters
   its samples in eval mode too): styles from the source view's *dataset* camera and the shape (truncation 0.95,
   cutoff 14), synthesis at the recipe's initial rendering resolution (64, upstream's constant) with
   ``noise_mode='const'``; the FLAME uv map and 70 landmarks at the same camera; PD-FGC motions of all ``3 B``
   super-resolved images (crops aligned by the y-up landmarks, ``reverse_y``).
4. The batch: source / driving / target images, the target's matte (``1 - T_bg``), depth, feature image,
   background and triplane samples (:func:`select_triplane_samples`), its uv map and camera, the source shape, the
   driving expression / pose / eye poses, source and driving motions.

The batch is what :meth:`~train.recipes.portrait4d_loss.Portrait4DLoss.prepare` takes (the keys and layouts of a
collated :class:`~train.data.GenHeadTripleDataset` batch, already float on the device, plus ``uv``); use
:func:`prepare_genhead_batch` instead of ``prepare``: it keeps the 64 x 64 matte that the depth term masks with as
upstream does (``prepare`` would resize it to 512 and back).

**Random draws.** Upstream draws everything from the global generators of each GPU process, one stream for the
whole run. Here every draw of a step comes from a CPU :class:`torch.Generator` seeded with ``(seed, rank,
position)`` (:meth:`GenHeadDataEngine.step_generator`; ``position`` = the step's first global sample, the loop's
``data_position``), so a step's batch is a pure function of the run's seed and its position and a resumed run sees
the batches of an uninterrupted one; GenHead's own stochastic sampling (global ``torch.rand``) runs inside
:func:`~train.core.rng.isolated_rng` seeded from that generator, so it is reproducible and leaves the loss's
global random stream alone. Within a step the draws are upstream's, in upstream's order (shape, camera,
static-expression, static-eye, clip, frame and eye-pose indices, the jaw values then the jaw coins, ``z``, the 8
camera values and the sampler's 3 normal draws, the swap coins, the render, the triplane permutations):
:func:`draw_flame_params` equals the official ``fetch_random_params`` followed by ``torch.randn`` of ``z`` bit for
bit when both run on the CPU from the same seed (``tests/test_genhead_data.py``, with an official checkout). What
differs: all come from one CPU generator (upstream, on a GPU: the jaw draws, ``z``, the cameras and the coins from
the CUDA generator); the unused ``c_cond_syn`` coin of ``gen_data_by_G_syn`` is not drawn (the render's seed is
drawn in its place); the triplane permutations are drawn for the ``B`` target images only (upstream draws them for
all ``3 B`` images and keeps the targets').

Other differences, none of which changes a value upstream computes:

* With an odd batch, ``half_static`` gives the static motion to the last ``B - B // 2`` subjects (upstream's
  concatenation only works for an even batch; the loss switches motion off for exactly those).
* An image with fewer than 4000 eligible triplane samples (the tiny test configurations) draws them with
  replacement (upstream's ``torch.stack`` would fail); at the official 64 x 64 x 48 samples this never happens.
* ``ws_super`` (``psi = 0`` styles) is not computed: GenHead's super-resolution uses constant styles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError
from avatar.flame.camera_pose import decompose_camera_pose
from avatar.models.genhead import GenHead
from avatar.models.genhead.pools import FlameParameterPools
from train.core.rng import isolated_rng, split_seed
from train.recipes.portrait4d_loss import Portrait4DLoss, ReconBatch, regularizer_cameras

__all__ = ["BATCH_KEYS", "ENGINE_SEED_TAG", "SWAP_PROBABILITY", "TRIPLANE_POINTS", "GenHeadDataEngine", "GenHeadDraw",
           "check_render_resolution", "draw_flame_params", "prepare_genhead_batch", "render_cameras",
           "select_triplane_samples"]

TRIPLANE_POINTS = 4000
"""Triplane samples kept per target image (upstream's ``randperm(...)[:4000]``)."""
SWAP_PROBABILITY = 0.5
"""Probability that an image keeps its random LookAt camera instead of its dataset camera."""
JAW_PROBABILITY, JAW_MAX = 0.5, 0.2
"""A dynamic frame's jaw opening is replaced by ``U(0, JAW_MAX)`` with probability ``JAW_PROBABILITY``."""
ENGINE_SEED_TAG = 0x6E4D
"""Mixed into the step seeds, so the engine's stream differs from the other streams seeded by the run's seed."""
BATCH_KEYS = ("source_image", "driving_image", "target_image", "target_seg", "seg_render", "depth", "feature",
              "feature_bg", "triplane", "uv", "c", "shape", "exp", "pose", "eye", "source_motion", "driving_motion")
"""The keys of an engine batch (those of a collated GenHeadTripleDataset batch that the loss reads, plus ``uv``)."""

_SOURCE, _DRIVING, _TARGET = 0, 1, 2


@dataclass
class GenHeadDraw:
    """The random inputs of one step (upstream ``fetch_random_params`` + ``phase_gen_z``), views in the order
    source, driving, target.

    Attributes:
        shape: ``(B, 3, 300)`` (one row per subject, repeated); ``exp`` ``(B, 3, 100)``; ``pose`` ``(B, 3, 6)``
            (neck zero, jaw); ``eye`` ``(B, 3, 6)``; ``c`` ``(B, 3, 25)`` dataset cameras; ``z`` ``(B, z_dim)``.
        shape_index: ``(B,)`` the identity rows; ``static``: ``(B,)`` bool, subjects with a static (FFHQ) motion.
    """

    shape: Tensor
    exp: Tensor
    pose: Tensor
    eye: Tensor
    c: Tensor
    z: Tensor
    shape_index: Tensor
    static: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.shape.shape[0])


def _randint(high: int, size: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, high, size, generator=generator)


def draw_flame_params(pools: FlameParameterPools, batch_size: int, z_dim: int, generator: torch.Generator, *,
                      static_dataset: bool = False, half_static: bool = False) -> GenHeadDraw:
    """One step's FLAME parameters, dataset cameras and latents (upstream ``fetch_random_params`` then ``z``),
    drawn from ``generator`` (a CPU generator) in upstream's order; the tensors are on the pools' device."""
    b = int(batch_size)
    if b < 1:
        raise InputError(f"the batch needs at least one subject, got {b}")
    dev = pools.shape_n_c.device
    n_static = b - b // 2  # drawn in every mode, as upstream (which draws b // 2: the same for an even batch)
    clips, frames = pools.dynamic_motion.shape[:2]
    shape_index = _randint(len(pools.shape_n_c), (b,), generator)
    c_index = _randint(len(pools.shape_n_c), (b * 3,), generator)
    static_exp_index = _randint(len(pools.static_motion), (n_static,), generator)
    static_eye_index = _randint(len(pools.static_motion), (n_static,), generator)
    if not half_static:
        n_static = 0
    clip_index = _randint(clips, (b,), generator)
    frame_index = _randint(frames, (b, 2), generator)
    eye_index = _randint(len(pools.dynamic_eye), (b, 2), generator)
    jaw_random = torch.rand((b, 2, 1), generator=generator) * JAW_MAX
    jaw_coin = torch.rand((b, 2, 1), generator=generator)
    z = torch.randn((b, z_dim), generator=generator)

    def on(t: Tensor) -> Tensor:
        return t.to(dev)

    def views(pair: Tensor) -> Tensor:  # (B, 2, D) -> (B, 3, D): the target repeats the driving frame
        return pair[:, [_SOURCE, _SOURCE, _SOURCE]] if static_dataset else pair[:, [_SOURCE, _DRIVING, _DRIVING]]

    shape = pools.shapes[on(shape_index)].unsqueeze(1).repeat(1, 3, 1)
    c = pools.cameras[on(c_index)].reshape(b, 3, -1)
    rows, cols = on(clip_index)[:, None], on(frame_index)
    exp = views(pools.dynamic_expression[rows, cols])
    pose = pools.dynamic_pose[rows, cols]  # (B, 2, 6)
    jaw = torch.where(on(jaw_coin) < JAW_PROBABILITY, pose[..., 3:4], on(jaw_random))
    pose = views(torch.cat([pose[..., :3], jaw, pose[..., 4:]], dim=-1))
    eye = views(pools.dynamic_eye[on(eye_index)])
    if n_static:
        keep = b - n_static

        def static_views(t: Tensor) -> Tensor:
            return t.unsqueeze(1).repeat(1, 3, 1)

        exp = torch.cat([exp[:keep], static_views(pools.static_expression[on(static_exp_index)])])
        pose = torch.cat([pose[:keep], static_views(pools.static_pose[on(static_exp_index)])])
        eye = torch.cat([eye[:keep], static_views(pools.static_eye[on(static_eye_index)])])
    static = torch.arange(b) >= b - n_static
    return GenHeadDraw(shape, exp, pose, eye, c, on(z), shape_index, static)


def render_cameras(c: Tensor, generator: torch.Generator, swap_probability: float = SWAP_PROBABILITY
                   ) -> tuple[Tensor, Tensor]:
    """The render cameras of ``gen_data_by_G_syn``: for each dataset camera ``c (N, 25)``, a random LookAt camera
    (:func:`~train.recipes.portrait4d_loss.regularizer_cameras`: yaw ``pi/2 + U(-0.78, 0.78)``, pitch
    ``pi/2 - U(-0.25, 0.65)``, roll ``U(-0.25, 0.25)``, pivot ``3 (U(-.01, .01), U(-.01, .01), U(.02, .04))``,
    radius ``U(3.65, 4.45)``, the dataset intrinsics) kept with probability ``swap_probability``, else ``c``.
    Draws on the CPU ``generator``; returns ``(cameras (N, 25), random (N,) bool)`` on ``c``'s device."""
    c_cpu = c.detach().float().cpu()
    random_cams = regularizer_cameras(c_cpu, generator)
    coin = torch.rand((c_cpu.shape[0], 1), generator=generator)
    keep = coin < swap_probability
    return torch.where(keep, random_cams, c_cpu).to(c.device), keep[:, 0].to(c.device)


def select_triplane_samples(points: Tensor, features: Tensor, eye_mask: Tensor, mouth_mask: Tensor, count: int,
                            generator: torch.Generator) -> Tensor:
    """Upstream's triplane targets of one batch of images: the coarse samples whose eye (eye mask x eye box) and
    mouth masks are both exactly zero, ``count`` of them at random (``randperm``) per image.

    Args:
        points: ``(N, R * S, 3)`` coarse sample points; features ``(N, R * S, C)`` face-triplane features there.
        eye_mask, mouth_mask: ``(N, R, S)`` GenHead's per-sample masks.
        generator: CPU generator of the permutations.

    Returns:
        ``(N, count, 3 + C)`` rows of xyz + features.
    """
    rows = torch.cat([points, features], dim=-1)
    eligible = ((eye_mask + mouth_mask) == 0).reshape(rows.shape[0], -1)
    out = []
    for i in range(rows.shape[0]):
        index = torch.nonzero(eligible[i], as_tuple=False)[:, 0].cpu()
        if len(index) == 0:  # nothing eligible (degenerate tiny renders): every sample is a candidate
            index = torch.arange(rows.shape[1])
        if len(index) >= count:
            chosen = index[torch.randperm(len(index), generator=generator)[:count]]
        else:  # too few: with replacement (see the module docstring)
            chosen = index[torch.randint(0, len(index), (count,), generator=generator)]
        out.append(rows[i, chosen.to(rows.device)])
    return torch.stack(out)


def check_render_resolution(recipe: Any, resolution: int) -> None:
    """The depth and feature targets (``resolution`` square) are compared with the reconstructor's raw render as
    they are: it must render at that size until ``distill_end_kimg``."""
    if recipe.distill_end_kimg <= 0:
        return
    sizes = sorted({recipe.neural_rendering_resolution(n) for n in (0.0, recipe.distill_end_kimg * 1e3 - 1)})
    if sizes != [resolution]:
        raise ConfigError(f"GenHead renders {resolution}x{resolution} depth and feature targets, but recipe "
                          f"{recipe.name} renders at {'/'.join(map(str, sizes))} before distill_end_kimg "
                          f"({recipe.distill_end_kimg:g}); keep nr_fade_start_kimg at or after distill_end_kimg "
                          "or set distill_end_kimg=0")


class GenHeadDataEngine:
    """Portrait4D v1's online data (module docstring): ``engine.batch(B, generator)`` renders one step's batch.

    Args:
        genhead: the frozen generator (put in eval mode, gradients off); its device is the batch's device.
        pools: the FLAME parameter pools (moved to GenHead's device).
        pdfgc: the PD-FGC motion encoder (eval mode).
        static_dataset: the static recipe's data (one motion for all 3 views).
        half_static: v1's static second half of the batch.
        truncation_psi, truncation_cutoff: of the mapping (upstream 0.95 and 14).
        neural_rendering_resolution: GenHead's raw render size (upstream 64).
        triplane_points: triplane samples per target image (upstream 4000).
        deterministic: deterministic ray sampling (tests only; upstream samples at random).
    """

    def __init__(self, genhead: GenHead, pools: FlameParameterPools, pdfgc: nn.Module, *,
                 static_dataset: bool = False, half_static: bool = True, truncation_psi: float = 0.95,
                 truncation_cutoff: int = 14, neural_rendering_resolution: int = 64,
                 triplane_points: int = TRIPLANE_POINTS, deterministic: bool = False) -> None:
        if not genhead.can_render:
            raise ConfigError("the GenHead model has no FLAME assets, so it cannot render training data; load it "
                              "with GenHead.from_pretrained('genhead-ffhq512')")
        if static_dataset and half_static:
            raise ConfigError("static_dataset and half_static exclude each other (static recipe: static_dataset; "
                              "v1: half_static)")
        self.genhead = genhead.eval().requires_grad_(False)
        self.device = next(genhead.parameters()).device
        self.pools = pools.to(self.device)
        self.pdfgc = pdfgc.eval().requires_grad_(False)
        self.static_dataset, self.half_static = bool(static_dataset), bool(half_static)
        self.truncation_psi, self.truncation_cutoff = float(truncation_psi), int(truncation_cutoff)
        self.resolution = int(neural_rendering_resolution)
        self.triplane_points = int(triplane_points)
        self.deterministic = bool(deterministic)
        shape_dim = int(genhead.config.shape_dim)
        if shape_dim != self.pools.shapes.shape[1]:
            raise ConfigError(f"GenHead takes {shape_dim} shape coefficients, the pools hold "
                              f"{self.pools.shapes.shape[1]}")

    @property
    def motion_dim(self) -> int:
        return int(self.pdfgc.config.motion_dim)  # type: ignore[union-attr]

    # ---- random streams ----------------------------------------------------------------------------------
    @staticmethod
    def step_generator(seed: int, position: int, rank: int = 0) -> torch.Generator:
        """The CPU generator of the step whose first global sample is ``position``, on process ``rank``."""
        return torch.Generator().manual_seed(split_seed(seed, ENGINE_SEED_TAG, rank, position)[0])

    def batches(self, seed: int, batch_per_process: int, rank: int = 0, global_batch: int | None = None
                ) -> Callable[[int], Iterator[dict[str, Tensor]]]:
        """``start_position -> endless iterator of this process's batches`` (what :meth:`train.core.Trainer.fit`
        takes as data): the step at global position ``p`` draws from :meth:`step_generator` ``(seed, p, rank)``;
        positions advance by ``global_batch`` (default ``batch_per_process``) per step."""
        step = int(global_batch or batch_per_process)

        def stream(start: int) -> Iterator[dict[str, Tensor]]:
            position = int(start)
            while True:
                yield self.batch(batch_per_process, self.step_generator(seed, position, rank))
                position += step

        return stream

    # ---- one step ----------------------------------------------------------------------------------------
    def draw(self, batch_size: int, generator: torch.Generator) -> GenHeadDraw:
        """The step's FLAME parameters, dataset cameras and latents (:func:`draw_flame_params`)."""
        return draw_flame_params(self.pools, batch_size, int(self.genhead.config.z_dim), generator,
                                 static_dataset=self.static_dataset, half_static=self.half_static)

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """One step's batch (:data:`BATCH_KEYS`) of ``batch_size`` subjects, all draws from ``generator``."""
        return self.render(self.draw(batch_size, generator), generator)

    @torch.no_grad()
    def render(self, draw: GenHeadDraw, generator: torch.Generator) -> dict[str, Tensor]:
        """``gen_data_by_G_syn`` and the loop's slicing for ``draw`` (see the module docstring). Shapes, with
        ``B`` subjects, ``NR`` the render size and ``S`` GenHead's output size (512): images ``(B, 3, S, S)``
        in about [-1, 1]; ``target_seg`` and ``seg_render`` ``(B, 3, NR, NR)`` in [-1, 1]; ``depth`` ``(B, 1, NR,
        NR)``; ``feature`` and ``feature_bg`` ``(B, C, NR, NR)``; ``triplane`` ``(B, 4000, 3 + C_plane)``; ``uv``
        ``(B, 3, S, S)``; ``c`` ``(B, 25)``; ``shape`` ``(B, 300)``, ``exp`` ``(B, 100)``, ``pose`` and ``eye``
        ``(B, 6)``; motions ``(B, D)``. Everything float32 on GenHead's device."""
        G, b = self.genhead, draw.batch_size

        def flat(t: Tensor) -> Tensor:  # (B, 3, ...) -> (3B, ...)
            return t.reshape(b * 3, *t.shape[2:]).to(self.device)

        shape, exp, pose, eye, c = (flat(t) for t in (draw.shape, draw.exp, draw.pose, draw.eye, draw.c))
        z = draw.z.to(self.device).unsqueeze(1).repeat(1, 3, 1).reshape(b * 3, -1)
        c_syn, _ = render_cameras(c, generator)
        flame = G.deformer.flame_deform.flame_model  # type: ignore[union-attr]
        c_render = decompose_camera_pose(flame, c_syn, shape, exp, pose)
        c_cond = flat(draw.c[:, [_SOURCE, _SOURCE, _SOURCE]])
        ws = G.mapping(z, c_cond, shape, truncation_psi=self.truncation_psi, truncation_cutoff=self.truncation_cutoff)
        render_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with isolated_rng(render_seed):
            out = G.synthesis(ws, z, c_render, shape, exp, pose, eye, neural_rendering_resolution=self.resolution,
                              noise_mode="const", deterministic=self.deterministic)
        corr = G.uv_map(c_syn, shape, exp, pose, eye)
        if corr.landmarks_2d is None:
            raise ConfigError("GenHead's FLAME has no landmark embedding: PD-FGC needs the 70 landmarks")
        motions = self.pdfgc.motion_from_image(out.image, corr.landmarks_2d, reverse_y=True)  # type: ignore[operator]

        def views(t: Tensor) -> Tensor:  # (3B, ...) -> (B, 3, ...)
            return t.reshape(b, 3, *t.shape[1:])

        target = torch.arange(b, device=self.device) * 3 + _TARGET
        r = out.render
        triplane = select_triplane_samples(r.coarse_points[target], r.coarse_face_features[target],
                                           r.eye_mask_coarse[target], r.mouth_mask_samples[target],
                                           self.triplane_points, generator)
        images, seg = views(out.image), views(out.seg)[:, _TARGET].repeat(1, 3, 1, 1)
        batch = {
            "source_image": images[:, _SOURCE], "driving_image": images[:, _DRIVING],
            "target_image": images[:, _TARGET], "target_seg": seg, "seg_render": seg.clone(),
            "depth": views(out.depth)[:, _TARGET], "feature": views(out.features)[:, _TARGET],
            "feature_bg": views(out.background)[:, _TARGET], "triplane": triplane,
            "uv": views(corr.uv)[:, _TARGET], "c": views(c_syn)[:, _TARGET],
            "shape": views(shape)[:, _SOURCE], "exp": views(exp)[:, _DRIVING], "pose": views(pose)[:, _DRIVING],
            "eye": views(eye)[:, _DRIVING], "source_motion": views(motions)[:, _SOURCE],
            "driving_motion": views(motions)[:, _DRIVING],
        }
        return {k: v.float().contiguous() for k, v in batch.items()}


def prepare_genhead_batch(loss: Portrait4DLoss, batch: Mapping[str, Any]) -> ReconBatch:
    """``loss.prepare`` for an engine batch: the same, except that ``target_seg`` stays GenHead's matte at its
    render size, as upstream's depth term reads it (``prepare`` resizes mattes to 512, and 64 -> 512 -> 64 is not
    the identity); the depth term resizes it to the reconstructor's resolution (the identity at 64)."""
    prepared = loss.prepare(batch)
    prepared.target_seg = batch["target_seg"].float()
    return prepared

