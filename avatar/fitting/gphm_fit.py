"""A person-specific GPHM Gaussian head avatar from a monocular video (GPHM paper, section 3.5).

:func:`fit_gphm_avatar` takes a prepared video (:func:`avatar.fitting.video_data.prepare_video`: fixed crop,
matte, MediaPipe face mesh, head pose, fixed intrinsics) and writes an avatar folder that
:func:`load_gphm_avatar` reads and :func:`render_frames` renders.

The paper's two stages
----------------------
1. **GPHM fitting** (``identity_steps``): a fresh identity code is optimised so that the GPHM renders the
   frames (paper: 100 iterations, one frame each, photometric + perceptual loss).
2. **Fine-tuning** (``finetune_steps``): :meth:`GPHM.personalise` bakes the code into per-Gaussian positions,
   colours and attributes (:class:`~avatar.models.gphm.GPHMAvatar`, with the tiny dynamic MLP ``F_dyn``), which
   are optimised with ``F_exp``, ``F_dyn`` and the refine network (paper: 2000 iterations).

Both stages stop at their step count or when the wall-clock budget (``time_budget_s``, 300 s = the paper's 5
minutes of training) is spent: stage 1 may use ``identity_budget_fraction`` of it. The budget counts the
optimisation only (frames are loaded onto the device first; that time is reported apart).

What is ours (the paper is silent or its setting cannot be had here)
--------------------------------------------------------------------
* **No pretrained GPHM exists.** Given none, the model starts from the paper's FLAME-based initialisation
  (ablation 4.2: points sampled on a template head, zero features), with MediaPipe's canonical face mesh (shipped
  with the toolkit, :func:`avatar.face.mediapipe_face.canonical_face`) as the face, completed by GPHM's head
  ellipsoid for the back of the head and hair and by a neck and shoulder ellipsoid pair (the crop shows the
  shoulders and the matte keeps them): :func:`head_template`. Points get small random bound features so that
  their colours can differ from the first step. An untrained GPHM's identity code alone moves nothing useful, so
  in that case stage 1 trains the whole model (networks, points, code) on the video - the paper's prior
  training collapsed to one person - and the raw-image term (Eq. 14, weight 1) is on in both stages, because an
  untrained refine network gives the Gaussians' colours no direct target otherwise. With a pretrained model
  (``model=``) stage 1 optimises only the code, as the paper does, and the raw term is off.
* **Driving signals** - *the mesh landmarks as the expression input*: the prepared ``expression`` vector (478
  unposed MediaPipe mesh points, centimetres) minus the training frames' median, through a small MLP that is
  fitted with the avatar, gives the expression code (the paper's face-crop encoder has no pretrained weights).
  The non-face code (neck, shoulders) comes from the head pose relative to the training frames' mean pose,
  through another small MLP (:mod:`avatar.models.gphm.signals`). In the template case ``F_nf`` is fine-tuned too
  (it was trained in stage 1 only otherwise), so the shoulders can counter the head's rotation.
* **Head pose and scale.** The prepared poses map MediaPipe's canonical face in **metres** to the camera; GPHM's
  canonical head is about 1 unit long. Chosen: 1 canonical unit = :data:`CANONICAL_SCALE_M` (0.25 m) and the
  canonical origin at :data:`CANONICAL_ORIGIN_M` ``(0, 0.018, -0.024)`` m of MediaPipe's frame (about the centre
  of the head: its origin is 7.5 cm behind the nose tip, the head's centre some 10 cm), so that GPHM's
  ellipsoid ``(0.32, 0.5, 0.4)`` wraps a head of 16 x 25 x 20 cm. The head pose handed to GPHM is the
  similarity ``[s R_c | R_c o + t_c]`` (canonical -> world) and the camera ``viewmats`` is the frame's
  ``world_to_camera``. A small learnable per-frame correction ``(R_c, t_c)`` (axis-angle, centimetres; L2
  penalty ``pose_weight``) absorbs MediaPipe's pose jitter on the training frames (``pose_correction``);
  held-out and driving frames use the prepared pose as is.
* **Background**: the targets are ``image * mask + background * (1 - mask)`` with the prepared matte and a
  uniform ``background`` (white by default, as INSTA and FlashAvatar evaluate); the rasteriser's background
  feature has that colour in its RGB channels and 0 elsewhere.
* **Losses**: L1 on the refined image (Eq. 19) + ``weight_ssim`` x D-SSIM (3D Gaussian Splatting's 0.2; not
  in the paper) + the raw term (above) + LPIPS-VGG x ``weight_perceptual`` **only when its weights are
  available offline** (``perceptual="auto"``; they are not on the machines this was built on, so the default
  objective is L1 + D-SSIM). The loss terms are :func:`avatar.models.gphm.losses.gphm_losses`'s.
* **Learning rates** (the paper's numbers are lost in our copy): per Gaussian attribute those of 3D Gaussian
  Splatting (positions 1.6e-4 in a scene of about 1 unit, decayed x0.01 over stage 2, by its steps or its time
  budget, whichever runs out first; colours 2.5e-3; scales 5e-3; rotations 1e-3; opacities 2.5e-2), networks
  1e-4 when fine-tuning a pretrained model, 5e-4 in both stages from the template (its refine network starts
  untrained), the code 1e-3, the signal MLPs 1e-3, pose corrections 1e-4.

Resumable: ``out_dir/checkpoint.pt`` holds the stage, step, model, signal encoder, pose corrections, optimiser,
sampling order and random-number states; it is written atomically every ``checkpoint_every`` steps, at the
end of a stage and when interrupted (Ctrl-C is deferred to the end of the running step). Running again
continues where it stopped, bit for bit on the same device (same seed, same config). A finished fit is
returned at once; ``resume=False`` starts again.

The avatar folder (``out_dir``): ``avatar.json`` (format, intrinsics, resolution, canonical scale and origin,
background, fit summary), ``gphm_avatar/`` (:meth:`GPHMAvatar.save_pretrained`), ``signals/`` (the driving
MLPs, :class:`~avatar.models.gphm.signals.DrivingSignalEncoder`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import ConfigError, InputError, InputNotFoundError

__all__ = [
    "AVATAR_FORMAT",
    "CANONICAL_ORIGIN_M",
    "CANONICAL_SCALE_M",
    "FitConfig",
    "FitResult",
    "FittedGPHMAvatar",
    "fit_gphm_avatar",
    "head_template",
    "is_gphm_avatar_dir",
    "load_gphm_avatar",
    "render_frames",
]

logger = logging.getLogger(__name__)

AVATAR_FORMAT = "avatar4d-gphm-avatar"
AVATAR_VERSION = 1
AVATAR_MANIFEST = "avatar.json"
AVATAR_MODEL_DIR = "gphm_avatar"
SIGNALS_DIR = "signals"
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1

CANONICAL_SCALE_M = 0.25
"""Metres per GPHM canonical unit (module docstring)."""
CANONICAL_ORIGIN_M = (0.0, 0.018, -0.024)
"""The canonical origin in MediaPipe's canonical-face frame, metres (module docstring)."""

_STRUCTURAL = ("resolution", "num_points", "seed", "batch_size", "tiny_model", "pose_correction", "background")
"""FitConfig fields a resumed fit must share with its checkpoint (the others may change between runs)."""


# ----------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_gphm_avatar` (module docstring for the choices)."""

    identity_steps: int = 300
    """Stage 1 steps (paper: 100 with a pretrained model; more from the template, which trains the model)."""
    finetune_steps: int = 30_000
    """Stage 2 steps at most (paper: 2000); the time budget usually ends it first."""
    time_budget_s: float | None = 300.0
    """Wall-clock seconds of optimisation for both stages (``None``: steps only)."""
    identity_budget_fraction: float = 0.15
    """Stage 1 ends when it has used this fraction of the budget."""
    batch_size: int = 1
    """Frames per step (paper: one)."""
    resolution: int = 512
    """Image resolution (the feature map is ``resolution / refine.upsample``)."""
    num_points: int = 100_000
    """Gaussians of a template-initialised model (paper's FLAME ablation: 100,000)."""
    seed: int = 0
    checkpoint_every: int = 2000
    """Steps between checkpoints (also at each stage's end and on interruption)."""
    lr_identity: float = 1e-3
    lr_model: float = 5e-4
    lr_point_features: float = 1e-3
    lr_means: float = 1.6e-4
    lr_colors: float = 2.5e-3
    lr_scales: float = 5e-3
    lr_rotations: float = 1e-3
    lr_opacities: float = 2.5e-2
    lr_networks: float = 1e-4
    """Networks when fine-tuning a pretrained model's avatar (from the template they keep ``lr_model``)."""
    lr_signals: float = 1e-3
    lr_pose: float = 1e-4
    means_lr_final_factor: float = 0.01
    """Positions' learning rate decays exponentially to this factor over stage 2 (3DGS; :attr:`lr_final_factor`
    says how the stage's progress is counted)."""
    lr_final_factor: float = 1.0
    """Every other stage-2 learning rate decays exponentially to this factor over the stage (1: constant, as
    3DGS keeps its non-position rates). Progress is the larger of ``step / finetune_steps`` and the fraction of
    the stage's time budget spent, so that a fit that the budget ends still reaches the final rates."""
    pose_correction: bool = True
    """Learn a small per-frame head-pose correction on the training frames."""
    pose_weight: float = 0.1
    """L2 penalty on the corrections (radians, centimetres)."""
    weight_ssim: float = 0.2
    weight_raw: float | None = None
    """``None``: 1 from the template, 0 with a pretrained model."""
    perceptual: str = "auto"
    """``auto`` (LPIPS-VGG when its weights load offline, else none), ``off``, or ``lpips-vgg`` (required)."""
    weight_perceptual: float = 0.1
    background: float = 1.0
    """Background grey level in [0, 1] (1: white)."""
    train_model_in_identity_stage: bool | None = None
    """``None``: True from the template, False with a pretrained model (paper: only the code)."""
    tiny_model: bool = False
    """A template model of :meth:`GPHMConfig.tiny` sizes (tests)."""
    log_every: int = 50

    def __post_init__(self) -> None:
        ints = {"identity_steps": 0, "finetune_steps": 0, "batch_size": 1, "resolution": 8, "num_points": 16,
                "checkpoint_every": 1, "log_every": 1, "seed": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"FitConfig.{name} must be a whole number of at least {low}, got {value!r}")
        if self.identity_steps + self.finetune_steps == 0:
            raise ConfigError("FitConfig needs identity_steps or finetune_steps above 0: nothing to fit")
        if self.time_budget_s is not None and not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise ConfigError(f"FitConfig.time_budget_s must be a positive number of seconds or None, got "
                              f"{self.time_budget_s!r}")
        if not 0 < self.identity_budget_fraction <= 1:
            raise ConfigError(f"FitConfig.identity_budget_fraction must be in (0, 1], got {self.identity_budget_fraction}")
        for f in dataclasses.fields(self):
            if f.name.startswith(("lr_", "weight_")) or f.name in ("pose_weight", "means_lr_final_factor"):
                value = getattr(self, f.name)
                if value is not None and not (math.isfinite(value) and value >= 0):
                    raise ConfigError(f"FitConfig.{f.name} must be a number >= 0, got {value!r}")
        if not 0 <= self.background <= 1:
            raise ConfigError(f"FitConfig.background must be a grey level in [0, 1], got {self.background}")
        if self.perceptual not in ("auto", "off", "lpips-vgg"):
            raise ConfigError(f"FitConfig.perceptual must be 'auto', 'off' or 'lpips-vgg', got {self.perceptual!r}")

    @classmethod
    def tiny(cls, **changes: Any) -> FitConfig:
        """A few steps of a tiny model at 32x32 (tests; CPU)."""
        base = cls(identity_steps=3, finetune_steps=6, time_budget_s=None, batch_size=2, resolution=32,
                   num_points=200, checkpoint_every=2, perceptual="off", tiny_model=True, log_every=1)
        return dataclasses.replace(base, **changes)

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FitConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown FitConfig field(s) {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass
class FitResult:
    """What :func:`fit_gphm_avatar` did."""

    avatar_dir: Path
    avatar: FittedGPHMAvatar
    identity_steps: int
    finetune_steps: int
    fit_seconds: float
    """Optimisation wall-clock time (all runs of a resumed fit)."""
    load_seconds: float
    """This run's time to put the frames on the device."""
    final_loss: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    """``{"stage": 1|2, "step", "loss", "time"}`` every ``log_every`` steps."""
    resumed: bool = False
    stopped_by: str = "steps"
    """``"steps"``, ``"time"`` (the budget) or ``"finished"`` (an already finished fit was returned)."""
    perceptual: bool = False
    """Whether the LPIPS term was used."""
    pose_corrections: Tensor | None = None
    """``(F, 6)`` the per-frame head-pose corrections the fit learned for its training frames (``pose_correction``;
    axis-angle radians, translation centimetres, :func:`_similarity`), in the prepared video's frame order;
    ``None`` when the fit had them off or the finished record predates them."""


# ----------------------------------------------------------------------------------------------------------
# the template head


def _face_points(vertices: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` points on the surface spanned by a dense face point set: random triangles of a vertex and two of
    its 6 nearest neighbours (no triangle list is needed, so this runs where mediapipe is not installed)."""
    d = torch.cdist(vertices, vertices)
    nn_idx = d.topk(7, largest=False).indices[:, 1:]  # (V, 6)
    v = vertices.shape[0]
    a = torch.randint(v, (n,), generator=generator)
    pick = torch.rand(n, 6, generator=generator).argsort(dim=1)[:, :2]
    b, c = nn_idx[a, pick[:, 0]], nn_idx[a, pick[:, 1]]
    u, w = torch.rand(2, n, 1, generator=generator, dtype=vertices.dtype)
    fold = (u + w) > 1
    u, w = torch.where(fold, 1 - u, u), torch.where(fold, 1 - w, w)
    pa, pb, pc = vertices[a], vertices[b], vertices[c]
    return pa + u * (pb - pa) + w * (pc - pa)


def _ellipsoid_mesh(semi_axes: tuple[float, float, float], centre: tuple[float, float, float],
                    subdivisions: int = 4) -> tuple[Tensor, Tensor]:
    from avatar.flame.synthetic import icosphere

    v, f = icosphere(subdivisions)
    verts = torch.from_numpy(v).float() * torch.tensor(semi_axes) + torch.tensor(centre)
    return verts, torch.from_numpy(np.asarray(f)).long()


def _farthest_points(points: Tensor, k: int, first: int) -> Tensor:
    chosen = [first]
    dist = (points - points[first]).norm(dim=-1)
    for _ in range(1, k):
        i = int(dist.argmax())
        chosen.append(i)
        dist = torch.minimum(dist, (points - points[i]).norm(dim=-1))
    return points[torch.tensor(chosen)]


def head_template(num_points: int, num_landmarks: int, *, generator: torch.Generator | None = None,
                  semi_axes: tuple[float, float, float] = (0.32, 0.5, 0.4)) -> tuple[Tensor, Tensor]:
    """The template head in GPHM canonical units (module docstring): ``(points (num_points, 3), landmarks
    (num_landmarks, 3))``.

    Points: 45 % on MediaPipe's canonical face, 35 % on the head ellipsoid ``semi_axes`` (its front part, where
    the face is, removed), 20 % on a neck and a shoulder ellipsoid. Landmarks: farthest-point samples of the
    face's 468 vertices, starting at the nose tip (they decide where expressions move points, Eq. 5).
    """
    from avatar.face.mediapipe_face import canonical_face
    from avatar.models.gphm.sampling import sample_surface

    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    origin = torch.tensor(CANONICAL_ORIGIN_M)
    face = (torch.from_numpy(canonical_face().vertices).float() / 100.0 - origin) / CANONICAL_SCALE_M
    n_face = int(round(0.45 * num_points))
    n_body = int(round(0.20 * num_points))
    n_head = num_points - n_face - n_body
    face_pts = _face_points(face, n_face, gen)
    head_v, head_f = _ellipsoid_mesh(semi_axes, (0.0, 0.0, 0.0))
    centroids = head_v[head_f].mean(1)
    xy_dist = torch.cdist(centroids[:, :2], face[:, :2]).min(dim=1).values
    keep = ~((centroids[:, 2] > 0) & (xy_dist < 0.04))
    head_pts = sample_surface(head_v, head_f[keep], n_head, generator=gen)
    neck_v, neck_f = _ellipsoid_mesh((0.22, 0.4, 0.22), (0.0, -0.5, -0.1), 3)
    body_v, body_f = _ellipsoid_mesh((1.1, 0.45, 0.45), (0.0, -1.05, -0.2), 3)
    n_neck = n_body // 3
    body_pts = torch.cat([sample_surface(neck_v, neck_f, max(n_neck, 1), generator=gen),
                          sample_surface(body_v, body_f, max(n_body - n_neck, 1), generator=gen)])
    points = torch.cat([face_pts, head_pts, body_pts])[:num_points]
    landmarks = _farthest_points(face, num_landmarks, int(face[:, 2].argmax()))
    return points, landmarks


# ----------------------------------------------------------------------------------------------------------
# the fitted avatar


def _similarity(corrections: Tensor | None, batch: int, device: torch.device | str) -> Tensor:
    """``(B, 4, 4)`` canonical -> world similarities ``[s R_c | R_c o + t_c]`` (``corrections (B, 6)``:
    axis-angle radians, translation centimetres; ``None``: no correction)."""
    from avatar.models.gphm.pose import axis_angle_to_matrix

    # a small copy without the stream synchronisation of a blocking host-to-device copy (per render call)
    origin = torch.tensor(CANONICAL_ORIGIN_M).to(device, non_blocking=True)
    m = torch.eye(4, device=device).repeat(batch, 1, 1)
    if corrections is None:
        m[:, :3, :3] *= CANONICAL_SCALE_M
        m[:, :3, 3] = origin
        return m
    rot = axis_angle_to_matrix(corrections[:, :3])
    top = torch.cat([rot * CANONICAL_SCALE_M, (rot @ origin + corrections[:, 3:] / 100.0).unsqueeze(-1)], dim=-1)
    return torch.cat([top, m[:, 3:]], dim=1)


class FittedGPHMAvatar:
    """A fitted avatar: the :class:`~avatar.models.gphm.GPHMAvatar`, its driving-signal MLPs and its camera.

    ``render(expressions (B, 1434), world_to_camera (B, 4, 4))`` -> :class:`~avatar.models.gphm.GPHMOutput`
    (images in [-1, 1]); :meth:`render_images` gives ``(B, 3, R, R)`` in [0, 1].
    """

    def __init__(self, avatar: Any, signals: Any, K: Tensor, resolution: int, background: float = 1.0,  # noqa: N803
                 manifest: dict[str, Any] | None = None) -> None:
        self.avatar = avatar
        self.signals = signals
        self.K = K.float().cpu()
        self.resolution = int(resolution)
        self.background = float(background)
        self.manifest = manifest or {}

    @property
    def device(self) -> torch.device:
        return self.avatar.means.device

    def to(self, device: torch.device | str) -> FittedGPHMAvatar:
        self.avatar.to(device)
        self.signals.to(device)
        return self

    def eval(self) -> FittedGPHMAvatar:
        self.avatar.eval()
        self.signals.eval()
        return self

    def enable_fast_inference(self, dtype: torch.dtype | None = torch.bfloat16, *,
                              cuda_graphs: bool = False) -> FittedGPHMAvatar:
        """:meth:`GPHMAvatar.enable_fast_inference` (used only without gradients). Returns ``self``."""
        self.avatar.enable_fast_inference(dtype, cuda_graphs=cuda_graphs)
        return self

    def feature_intrinsics(self, batch: int, resolution: int | None = None) -> tuple[Tensor, int]:
        """``Ks (B, 3, 3)`` of the feature map for an image of ``resolution`` (default the avatar's), and its size."""
        res = self.resolution if resolution is None else int(resolution)
        up = self.avatar.config.refine.upsample
        if res % (4 * up):
            raise InputError(f"the image resolution must be a multiple of {4 * up}, got {res}")
        k = self.K.clone()
        k[:2] *= res / self.resolution / up
        return k.to(self.device, non_blocking=True).expand(batch, 3, 3), res // up  # (no stream synchronisation)

    def background_feature(self) -> Tensor:
        c = self.avatar.config.fields.color_dim
        bg = torch.zeros(c, device=self.device)
        bg[:3] = 2.0 * self.background - 1.0
        return bg

    def render(self, expressions: Tensor, world_to_camera: Tensor, *, corrections: Tensor | None = None,
               resolution: int | None = None, backend: str = "auto") -> Any:
        b = expressions.shape[0]
        if world_to_camera.shape != (b, 4, 4):
            raise InputError(f"poses are ({b}, 4, 4) world -> camera matrices, one per expression, got "
                             f"{tuple(world_to_camera.shape)}")
        dev = self.device
        expressions, world_to_camera = expressions.to(dev).float(), world_to_camera.to(dev).float()
        z_exp, z_nf = self.signals(expressions, world_to_camera)
        ks, size = self.feature_intrinsics(b, resolution)
        return self.avatar(z_exp, z_nf, _similarity(corrections, b, dev), ks, size, viewmats=world_to_camera,
                           background=self.background_feature(), backend=backend)

    @torch.no_grad()
    def render_images(self, expressions: Tensor, world_to_camera: Tensor, **kwargs: Any) -> Tensor:
        out = self.render(expressions, world_to_camera, **kwargs)
        return ((out.image + 1.0) / 2.0).clamp(0.0, 1.0)

    def reference_pose(self) -> Tensor:
        """``(4, 4)`` world -> camera: the training frames' mean head pose (the signal encoder's reference)."""
        pose = torch.eye(4, device=self.device)
        pose[:3, :3] = self.signals.reference_rotation
        pose[:3, 3] = self.signals.reference_translation
        return pose

    @torch.no_grad()
    def neutral_gaussians(self) -> Any:
        """The canonical Gaussians (:class:`~avatar.models.gphm.gaussians.GaussianSet`, batch 1) at the neutral
        expression (the training frames' median expression input) and the reference head pose (the training
        frames' mean pose, so the non-face code is the one of a zero pose change): the avatar as it looks on an
        average training frame, before the head pose and the camera."""
        z_exp = self.signals.encode_expression(self.signals.neutral[None])
        z_nf = self.signals.encode_non_face(self.reference_pose()[None])
        return self.avatar.gaussians(z_exp, z_nf)

    @staticmethod
    def canonical_to_world() -> Tensor:
        """``(4, 4)`` the similarity canonical units -> world metres (:data:`CANONICAL_SCALE_M`,
        :data:`CANONICAL_ORIGIN_M`; no rotation: the axes are MediaPipe's canonical face's)."""
        return _similarity(None, 1, "cpu")[0]

    def save(self, out_dir: str | Path, fit: dict[str, Any] | None = None) -> Path:
        """Write the avatar folder (module docstring)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.avatar.save_pretrained(out / AVATAR_MODEL_DIR)
        self.signals.save_pretrained(out / SIGNALS_DIR)
        manifest = {
            "format": AVATAR_FORMAT, "version": AVATAR_VERSION, "resolution": self.resolution,
            "K": self.K.tolist(), "canonical_scale_m": CANONICAL_SCALE_M, "canonical_origin_m": list(CANONICAL_ORIGIN_M),
            "background": self.background,
            "camera": "OpenCV pinhole K of the image; poses are world -> camera (4, 4), world = MediaPipe's "
                      "canonical face in metres (avatar.fitting.video_data)",
            "expression_input": "the mesh landmarks as the expression input: 478 unposed MediaPipe mesh points "
                                "minus the canonical face, centimetres, flattened (1434,)",
            "non_face_input": "the head pose relative to the training frames' mean pose",
            "fit": fit if fit is not None else self.manifest.get("fit", {}),
        }
        _atomic_write(out / AVATAR_MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
        self.manifest = manifest
        return out


def is_gphm_avatar_dir(path: str | Path) -> bool:
    """Whether ``path`` is a fitted GPHM avatar folder: a folder whose ``avatar.json`` is a manifest of this
    format (what :func:`fit_gphm_avatar` writes). Reads only the manifest; never raises."""
    manifest = Path(path) / AVATAR_MANIFEST
    try:
        return manifest.is_file() and json.loads(manifest.read_text()).get("format") == AVATAR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_gphm_avatar(avatar_dir: str | Path, *, device: torch.device | str = "cpu") -> FittedGPHMAvatar:
    """Read an avatar folder written by :func:`fit_gphm_avatar` (in eval mode, on ``device``)."""
    from avatar.models.gphm import GPHMAvatar
    from avatar.models.gphm.signals import DrivingSignalEncoder

    root = Path(avatar_dir)
    path = root / AVATAR_MANIFEST
    if not path.is_file():
        raise InputNotFoundError(f"{root} is not a fitted GPHM avatar folder (no {AVATAR_MANIFEST}); fit one with "
                                 "`avatar fit VIDEO -o DIR`")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); fit the avatar again") from None
    if manifest.get("format") != AVATAR_FORMAT:
        raise InputError(f"{path} is not a GPHM avatar manifest (format {manifest.get('format')!r})")
    avatar = GPHMAvatar.from_pretrained(root / AVATAR_MODEL_DIR, device=device)
    signals = DrivingSignalEncoder.from_pretrained(root / SIGNALS_DIR, device=device)
    return FittedGPHMAvatar(avatar, signals, torch.tensor(manifest["K"]), manifest["resolution"],
                            manifest.get("background", 1.0), manifest).eval()


@torch.no_grad()
def render_frames(avatar: FittedGPHMAvatar | str | Path, expressions: Tensor, poses: Tensor, *,
                  batch_size: int = 8, device: torch.device | str | None = None, resolution: int | None = None,
                  backend: str = "auto", progress: bool = False, corrections: Tensor | None = None) -> Tensor:
    """Render ``expressions (F, 1434)`` (the prepared expression input) with head poses ``poses (F, 4, 4)``
    (world -> camera, the prepared ``world_to_camera``) -> ``(F, 3, R, R)`` float images in [0, 1] on the CPU.
    ``corrections (F, 6)``: per-frame pose corrections (:func:`refine_poses`); ``None``: the poses as given.

    ``avatar``: a :class:`FittedGPHMAvatar` or its folder (loaded on ``device``, default CUDA when available).
    """
    if not isinstance(avatar, FittedGPHMAvatar):
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        avatar = load_gphm_avatar(avatar, device=dev)
    elif device is not None:
        avatar.to(device)
    if expressions.dim() != 2 or poses.dim() != 3 or len(expressions) != len(poses):
        raise InputError(f"expressions (F, 1434) and poses (F, 4, 4) with the same F, got {tuple(expressions.shape)} "
                         f"and {tuple(poses.shape)}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if corrections is not None and corrections.shape != (len(expressions), 6):
        raise InputError(f"corrections are (F, 6) = ({len(expressions)}, 6), got {tuple(corrections.shape)}")
    out = []
    for i in _bar(range(0, len(expressions), batch_size), progress, "render", "batch"):
        corr = None if corrections is None else corrections[i:i + batch_size].to(avatar.device)
        out.append(avatar.render_images(expressions[i:i + batch_size], poses[i:i + batch_size],
                                        resolution=resolution, backend=backend, corrections=corr).cpu())
    res = avatar.resolution if resolution is None else resolution
    return torch.cat(out) if out else torch.zeros(0, 3, res, res)


# ----------------------------------------------------------------------------------------------------------
# helpers


def refine_poses(avatar: FittedGPHMAvatar, images: Tensor, expressions: Tensor, poses: Tensor, *, steps: int = 100,
                 lr_rotation: float = 1e-3, lr_translation: float = 1e-2, weight_ssim: float = 0.2,
                 pose_weight: float = 0.1, batch_size: int = 8, progress: bool = False) -> Tensor:
    """Per-frame head-pose corrections ``(F, 6)`` for frames the avatar was not fitted on: the fit's own
    ``pose_correction`` (axis-angle radians, translation centimetres; :func:`_similarity`) optimised for each
    frame with the avatar frozen, so that the render of ``expressions (F, 1434)`` with ``poses (F, 4, 4)`` (the
    prepared world -> camera) matches ``images (F, 3, R, R)`` in [0, 1] (``R`` = the avatar's resolution; the
    matted targets).

    The objective is the fit's photometric one on these frames: L1 on [-1, 1] images + ``weight_ssim`` x D-SSIM
    + ``pose_weight`` x the squared correction (the same L2 penalty as in fitting); Adam, ``steps`` per batch of
    ``batch_size`` frames (each frame's correction depends only on its own image), ``lr_rotation`` (radians) and
    ``lr_translation`` (centimetres): Adam moves each by about its rate a step, so 100 steps reach about 6 degrees
    and 1 cm. Used to measure how
    much of a held-out error is MediaPipe's pose rather than the avatar (``scripts/gphm_monocular_eval.py
    --test-pose-steps``); the expression input is not changed. Returns the corrections on the CPU; render with
    ``avatar.render(..., corrections=...)``.
    """
    n = len(expressions)
    if images.dim() != 4 or len(images) != n or poses.shape != (n, 4, 4):
        raise InputError(f"images (F, 3, R, R), expressions (F, D) and poses (F, 4, 4) with one F, got "
                         f"{tuple(images.shape)}, {tuple(expressions.shape)} and {tuple(poses.shape)}")
    if steps < 0 or batch_size < 1 or not (lr_rotation > 0 and lr_translation > 0):
        raise InputError(f"need steps >= 0, batch_size >= 1 and positive learning rates, got {steps}, {batch_size}, "
                         f"{lr_rotation} and {lr_translation}")
    from avatar.models.gphm.losses import photometric_loss

    dev = avatar.device
    out = torch.zeros(n, 6)
    params = [p for m in (avatar.avatar, avatar.signals) for p in m.parameters()]
    was_trainable = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        for start in _bar(range(0, n, batch_size), progress, "pose", "batch"):
            sl = slice(start, start + batch_size)
            target01 = images[sl].to(dev).float()
            rot = torch.zeros(len(target01), 3, device=dev, requires_grad=True)
            trans = torch.zeros(len(target01), 3, device=dev, requires_grad=True)
            opt = torch.optim.Adam([{"params": [rot], "lr": lr_rotation}, {"params": [trans], "lr": lr_translation}])
            with torch.enable_grad():
                for _ in range(steps):
                    corr = torch.cat([rot, trans], dim=1)
                    image = avatar.render(expressions[sl], poses[sl], corrections=corr).image
                    loss = photometric_loss(image, target01 * 2.0 - 1.0)
                    if weight_ssim > 0:
                        loss = loss + weight_ssim * ssim_loss((image + 1.0) / 2.0, target01)
                    loss = loss + pose_weight * corr.square().sum(-1).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            out[sl] = torch.cat([rot, trans], dim=1).detach().cpu()
    finally:
        for p, flag in zip(params, was_trainable, strict=True):
            p.requires_grad_(flag)
    return out


def _bar(iterable: Any, progress: bool, desc: str, unit: str, total: int | None = None) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the toolkit
        return iterable
    return tqdm(iterable, total=total, disable=not progress, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def ssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - SSIM`` (Gaussian window of 11 taps, sigma 1.5, images in [0, 1], 'same' padding as 3DGS)."""
    c = pred.shape[1]
    x = torch.arange(11, dtype=pred.dtype, device=pred.device) - 5
    g = torch.exp(-0.5 * (x / 1.5) ** 2)
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).expand(c, 1, 11, 11).contiguous()

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=5, groups=c)

    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return 1.0 - s.mean()


@dataclass
class _Frames:
    images: Tensor  # (N, 3, R, R) uint8
    masks: Tensor  # (N, 1, R, R) uint8
    poses: Tensor  # (N, 4, 4) world -> camera
    expressions: Tensor  # (N, 1434)
    K: Tensor  # (3, 3) at resolution

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def targets(self, idx: Tensor, background: float) -> Tensor:
        img = self.images[idx].float() / 255.0
        mask = self.masks[idx].float() / 255.0
        return img * mask + background * (1.0 - mask)


def _to_uint8(x: Tensor) -> Tensor:
    return (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)


def load_frames(prepared: Any, resolution: int, device: torch.device | str, progress: bool = False) -> _Frames:
    """Every item of a prepared video (or a compatible dataset) at ``resolution``, on ``device`` (uint8 images)."""
    n = len(prepared)
    if n == 0:
        raise InputError("the prepared video has no frames to fit")
    images, masks, poses, exprs = [], [], [], []
    k = None
    for i in _bar(range(n), progress, "load frames", "frame"):
        item = prepared[i]
        img, mask = item["image"], item["mask"]
        src = img.shape[-1]
        if img.shape[-2:] != (resolution, resolution):
            img = F.interpolate(img[None], size=(resolution, resolution), mode="area")[0]
            mask = F.interpolate(mask[None], size=(resolution, resolution), mode="area")[0]
        images.append(_to_uint8(img).to(device))
        masks.append(_to_uint8(mask).to(device))
        poses.append(item["world_to_camera"].float())
        exprs.append(item["expression"].float())
        if k is None:
            k = item["K"].double().clone()
            k[:2] *= resolution / src
    assert k is not None
    return _Frames(torch.stack(images), torch.stack(masks), torch.stack(poses).to(device),
                   torch.stack(exprs).to(device), k.float())


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C sets a flag (checked between steps) instead of raising at once."""
    hit = {"flag": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        if hit["flag"]:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        hit["flag"] = True
        logger.warning("interrupted: saving a checkpoint at the end of this step (Ctrl-C again to stop at once)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hit["flag"]
    finally:
        signal.signal(signal.SIGINT, old)


def _perceptual(config: FitConfig, device: torch.device | str) -> Any:
    if config.perceptual == "off" or config.weight_perceptual == 0:
        return None
    from avatar.losses import LPIPSLoss

    try:
        return LPIPSLoss.from_pretrained("lpips-vgg", device=device)
    except Exception as exc:  # noqa: BLE001 - weights missing offline, no lpips package...
        if config.perceptual == "lpips-vgg":
            raise InputError(f"perceptual='lpips-vgg' but its network does not load here ({exc})") from exc
        logger.info("LPIPS-VGG is not available offline (%s); fitting with L1 + D-SSIM only", type(exc).__name__)
        return None


def _template_model(config: FitConfig, device: torch.device | str, generator: torch.Generator) -> Any:
    from avatar.models.gphm import GPHM, GPHMConfig

    base = GPHMConfig.tiny() if config.tiny_model else GPHMConfig()
    up = base.refine.upsample
    if config.resolution % (4 * up):
        raise ConfigError(f"FitConfig.resolution must be a multiple of {4 * up} for this model, got {config.resolution}")
    gconf = base.replace(num_identities=0, num_points=config.num_points, feature_resolution=config.resolution // up)
    model = GPHM(gconf)
    points, landmarks = head_template(config.num_points, gconf.fields.num_landmarks, generator=generator)
    model.initialise_from_mesh(points)
    with torch.no_grad():
        model.points.point_features.normal_(0.0, 0.1, generator=generator)
    model.set_landmarks(landmarks)
    return model.to(device)


# ----------------------------------------------------------------------------------------------------------
# the fit


@dataclass
class _State:
    stage: int  # 1, 2, or 3 (done)
    step: int  # within the stage
    elapsed: float
    history: list[dict[str, float]]
    order: Tensor  # the current epoch's frame order
    cursor: int
    identity_done: int = 0  # stage-1 steps, once stage 1 is over
    stage2_start: float = 0.0  # elapsed seconds when stage 2 began (its learning-rate schedule's clock)


class _Fitter:
    def __init__(self, frames: _Frames, config: FitConfig, out: Path, device: torch.device, pretrained: bool,
                 progress: bool, on_step: Callable[[int, int, float], None] | None) -> None:
        self.frames, self.config, self.out, self.device = frames, config, out, device
        self.pretrained, self.progress, self.on_step = pretrained, progress, on_step
        self.perceptual = _perceptual(config, device)
        self.weight_raw = config.weight_raw if config.weight_raw is not None else (0.0 if pretrained else 1.0)
        train_model = config.train_model_in_identity_stage
        self.train_model = (not pretrained) if train_model is None else train_model
        self.gen = torch.Generator().manual_seed(config.seed)
        self.gphm: Any = None
        self.code: nn.Parameter | None = None
        self.avatar: Any = None
        self.signals: Any = None
        self.corrections = nn.Parameter(torch.zeros(len(frames), 6, device=device))
        self.optimizer: torch.optim.Optimizer | None = None
        self.base_lrs: list[float] = []  # stage 2: each group's starting rate (set_stage2_lrs)

    # ---- models and optimisers ---------------------------------------------------------------------------
    def _color_dim(self) -> int:
        model = self.gphm if self.gphm is not None else self.avatar
        return model.config.fields.color_dim

    def background(self) -> Tensor:
        bg = torch.zeros(self._color_dim(), device=self.device)
        bg[:3] = 2.0 * self.config.background - 1.0
        return bg

    def make_signals(self, fields: Any) -> None:
        from avatar.models.gphm.signals import DrivingSignalConfig, DrivingSignalEncoder

        base = DrivingSignalConfig.tiny() if self.config.tiny_model else DrivingSignalConfig()
        conf = base.replace(expression_dim=fields.expression_dim, non_face_dim=fields.non_face_dim)
        self.signals = DrivingSignalEncoder(conf).to(self.device)
        self.signals.set_reference(self.frames.expressions, self.frames.poses)

    def stage1_optimizer(self) -> None:
        c = self.config
        assert self.code is not None and self.signals is not None
        groups: list[dict[str, Any]] = [{"params": [self.code], "lr": c.lr_identity},
                                        {"params": list(self.signals.parameters()), "lr": c.lr_signals}]
        if c.pose_correction:
            groups.append({"params": [self.corrections], "lr": c.lr_pose})
        if self.train_model:
            pg = self.gphm.parameter_groups()
            lrs = {"means": c.lr_means, "point_features": c.lr_point_features, "scales": c.lr_scales,
                   "rotations": c.lr_rotations, "opacities": c.lr_opacities, "networks": c.lr_model}
            groups += [{"params": pg[k], "lr": lr} for k, lr in lrs.items() if pg[k]]
        self.gphm.requires_grad_(self.train_model)
        self.optimizer = torch.optim.Adam(groups, eps=1e-15)
        self.base_lrs = []

    def stage2_optimizer(self) -> None:
        c = self.config
        a = self.avatar
        groups: list[dict[str, Any]] = [
            {"params": [a.means], "lr": c.lr_means}, {"params": [a.colors], "lr": c.lr_colors},
            {"params": [a.log_scales], "lr": c.lr_scales}, {"params": [a.rotations], "lr": c.lr_rotations},
            {"params": [a.opacity_logits], "lr": c.lr_opacities},
        ]
        networks = list(a.finetune_parameters()["networks"])
        if not self.pretrained:
            networks += list(a.non_face_deform.parameters())
        groups.append({"params": networks, "lr": c.lr_networks if self.pretrained else c.lr_model})
        groups.append({"params": list(self.signals.parameters()), "lr": c.lr_signals})
        if c.pose_correction:
            groups.append({"params": [self.corrections], "lr": c.lr_pose})
        a.requires_grad_(False)
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(groups, eps=1e-15)
        self.base_lrs = [g["lr"] for g in groups]

    def stage2_progress(self, state: _State) -> float:
        """How far stage 2 is, in [0, 1]: the larger of its step fraction and its time-budget fraction."""
        c = self.config
        p = state.step / max(c.finetune_steps, 1)
        if c.time_budget_s is not None:
            left = c.time_budget_s - state.stage2_start
            p = max(p, (state.elapsed - state.stage2_start) / left if left > 0 else 1.0)
        return min(max(p, 0.0), 1.0)

    def set_stage2_lrs(self, state: _State) -> None:
        """Positions (group 0) at ``means_lr_final_factor ** progress`` of their rate, every other group at
        ``lr_final_factor ** progress`` (:meth:`stage2_progress`)."""
        assert self.optimizer is not None
        c = self.config
        p = self.stage2_progress(state)
        for i, (group, base) in enumerate(zip(self.optimizer.param_groups, self.base_lrs, strict=True)):
            final = c.means_lr_final_factor if i == 0 else c.lr_final_factor
            group["lr"] = base * max(final, 1e-12) ** p

    def personalise(self) -> None:
        assert self.code is not None
        self.avatar = self.gphm.personalise(self.code.detach()).to(self.device).train()
        self.gphm, self.code = None, None

    # ---- one step ----------------------------------------------------------------------------------------
    def next_batch(self, state: _State) -> Tensor:
        b = self.config.batch_size
        n = len(self.frames)
        idx = []
        while len(idx) < b:
            if state.cursor >= len(state.order):
                state.order = torch.randperm(n, generator=self.gen)
                state.cursor = 0
            idx.append(int(state.order[state.cursor]))
            state.cursor += 1
        return torch.tensor(idx, device=self.device)

    def loss(self, idx: Tensor) -> Tensor:
        from avatar.models.gphm.losses import GPHMLossConfig, gphm_losses

        c, fr = self.config, self.frames
        b = idx.shape[0]
        poses, expr = fr.poses[idx], fr.expressions[idx]
        z_exp, z_nf = self.signals(expr, poses)
        corr = self.corrections[idx] if c.pose_correction else None
        head = _similarity(corr, b, self.device)
        model = self.gphm if self.gphm is not None else self.avatar
        up = model.config.refine.upsample
        ks = fr.K.clone()
        ks[:2] /= up
        ks = ks.to(self.device).expand(b, 3, 3)
        size = c.resolution // up
        if self.gphm is not None:
            assert self.code is not None
            out = self.gphm(self.code.expand(b, -1), z_exp, z_nf, head, ks, size, viewmats=poses,
                            background=self.background())
        else:
            out = self.avatar(z_exp, z_nf, head, ks, size, viewmats=poses, background=self.background())
        target01 = fr.targets(idx, c.background)
        weight_p = c.weight_perceptual if self.perceptual is not None else 0.0
        lc = GPHMLossConfig.fitting(weight_perceptual=weight_p).replace(weight_raw=self.weight_raw)
        total = gphm_losses(out, target01 * 2.0 - 1.0, config=lc, perceptual=self.perceptual)["total"]
        if c.weight_ssim > 0:
            total = total + c.weight_ssim * ssim_loss((out.image + 1.0) / 2.0, target01)
        if corr is not None and c.pose_weight > 0:
            total = total + c.pose_weight * corr.square().sum(-1).mean()
        return total

    def step(self, state: _State) -> float:
        assert self.optimizer is not None
        if state.stage == 2:
            self.set_stage2_lrs(state)
        idx = self.next_batch(state)
        loss = self.loss(idx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.code is not None:
            from avatar.models.gphm.codes import project_to_unit_ball

            with torch.no_grad():
                self.code.copy_(project_to_unit_ball(self.code))
        return float(loss.detach())

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save_checkpoint(self, state: _State) -> None:
        """Everything to continue; once finished (stage 3) only the record (the avatar folder holds the rest)."""
        model = self.gphm if state.stage == 1 else self.avatar
        if state.stage == 3:
            slim = {"version": CHECKPOINT_VERSION, "stage": 3, "step": state.step, "elapsed": state.elapsed,
                    "history": state.history, "fit_config": self.config.to_dict(), "pretrained": self.pretrained,
                    "identity_done": state.identity_done, "corrections": self.corrections.detach().cpu()}
            _atomic_write(self.out / CHECKPOINT, lambda f: torch.save(slim, f))
            return
        ckpt = {
            "version": CHECKPOINT_VERSION, "stage": state.stage, "step": state.step, "elapsed": state.elapsed,
            "history": state.history, "order": state.order.cpu(), "cursor": state.cursor,
            "identity_done": state.identity_done, "stage2_start": state.stage2_start,
            "fit_config": self.config.to_dict(), "pretrained": self.pretrained,
            "model_config": json.loads(model.config.to_json()) if model is not None else None,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()} if model is not None else None,
            "code": self.code.detach().cpu() if self.code is not None else None,
            "signals_config": self.signals.config.to_dict(),
            "signals": {k: v.detach().cpu() for k, v in self.signals.state_dict().items()},
            "corrections": self.corrections.detach().cpu(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "generator": self.gen.get_state(),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.out / CHECKPOINT, lambda f: torch.save(ckpt, f))

    def load_checkpoint(self, ckpt: dict[str, Any]) -> _State:
        from avatar.models.gphm import GPHM, GPHMAvatar, GPHMAvatarConfig, GPHMConfig
        from avatar.models.gphm.signals import DrivingSignalConfig, DrivingSignalEncoder

        stage = int(ckpt["stage"])
        conf = {k: v for k, v in (ckpt["model_config"] or {}).items() if not k.startswith("_")}
        if stage == 1:
            self.gphm = GPHM(GPHMConfig.from_dict(conf))
            self.gphm.load_state_dict_strict(ckpt["model"], what="the checkpoint's GPHM")
            self.gphm.to(self.device).train()
            self.code = nn.Parameter(ckpt["code"].to(self.device))
        else:
            self.avatar = GPHMAvatar(GPHMAvatarConfig.from_dict(conf))
            self.avatar.load_state_dict_strict(ckpt["model"], what="the checkpoint's avatar")
            self.avatar.to(self.device).train()
        self.signals = DrivingSignalEncoder(DrivingSignalConfig.from_dict(ckpt["signals_config"])).to(self.device)
        self.signals.load_state_dict_strict(ckpt["signals"], what="the checkpoint's signal encoder")
        with torch.no_grad():
            self.corrections.copy_(ckpt["corrections"].to(self.device))
        if stage == 1:
            self.stage1_optimizer()
        elif stage == 2:
            self.stage2_optimizer()
        if stage < 3 and ckpt["optimizer"] is not None:
            assert self.optimizer is not None
            self.optimizer.load_state_dict(ckpt["optimizer"])  # its rates are set again before each step
        self.gen.set_state(ckpt["generator"])
        return _State(stage, int(ckpt["step"]), float(ckpt["elapsed"]), list(ckpt["history"]), ckpt["order"],
                      int(ckpt["cursor"]), int(ckpt.get("identity_done", 0)), float(ckpt.get("stage2_start", 0.0)))

    # ---- the loop ----------------------------------------------------------------------------------------
    def run(self, state: _State) -> tuple[_State, str]:
        c = self.config
        budget = c.time_budget_s
        stopped = "steps"
        done_before = state.step if state.stage == 1 else c.identity_steps + (state.step if state.stage == 2 else 0)
        bar = _bar(None, self.progress, "fit", "step", total=c.identity_steps + c.finetune_steps)
        if hasattr(bar, "update"):
            bar.update(min(done_before, c.identity_steps + c.finetune_steps))
        last = None
        try:
            with _deferred_interrupt() as interrupted:
                while state.stage < 3:
                    limit = c.identity_steps if state.stage == 1 else c.finetune_steps
                    stage_budget = None if budget is None else (
                        budget * c.identity_budget_fraction if state.stage == 1 else budget)
                    if state.step >= limit or (stage_budget is not None and state.elapsed >= stage_budget):
                        if state.stage == 2 and stage_budget is not None and state.elapsed >= stage_budget \
                                and state.step < limit:
                            stopped = "time"
                        self._next_stage(state)
                        continue
                    t0 = time.perf_counter()
                    last = self.step(state)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    state.elapsed += time.perf_counter() - t0
                    state.step += 1
                    if state.step % c.log_every == 0 or state.step == limit:
                        state.history.append({"stage": state.stage, "step": state.step, "loss": last,
                                              "time": round(state.elapsed, 3)})
                    if hasattr(bar, "update"):
                        bar.update(1)
                        bar.set_postfix(stage=state.stage, loss=f"{last:.4f}", refresh=False)
                    if self.on_step is not None:
                        self.on_step(state.stage, state.step, last)
                    if state.step % c.checkpoint_every == 0:
                        self.save_checkpoint(state)
                    if interrupted():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.save_checkpoint(state)
            logger.warning("fit interrupted at stage %d step %d; run again to continue from %s", state.stage,
                           state.step, self.out / CHECKPOINT)
            raise
        finally:
            if hasattr(bar, "close"):
                bar.close()
        return state, stopped

    def _next_stage(self, state: _State) -> None:
        if state.stage == 1:
            state.identity_done = state.step
            state.stage2_start = state.elapsed
            self.personalise()
            self.stage2_optimizer()
            state.stage, state.step = 2, 0
            logger.info("stage 1 (GPHM fitting) done after %.1f s; fine-tuning the Gaussians", state.elapsed)
            self.save_checkpoint(state)
        else:
            state.stage = 3  # recorded once the avatar folder is written (fit_gphm_avatar)


def _warm_up_inputs(device: torch.device) -> tuple[tuple[Tensor, ...], int, int]:
    """The arguments of the warm-up call: one camera, 4 Gaussians in front of it, a 16x16 image."""
    n = 4
    means = torch.tensor([[0.0, 0.0, 3.0]], device=device).repeat(1, n, 1)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).repeat(1, n, 1)
    k = torch.tensor([[[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]]], device=device)
    tensors = (means, quats, torch.full((1, n, 3), 0.1, device=device), torch.full((1, n), 0.5, device=device),
               torch.ones(1, n, 3, device=device), torch.eye(4, device=device)[None], k)
    return tensors, 16, 16


def _warm_up_rasterizer(device: torch.device) -> None:
    """One tiny gsplat call on CUDA, so that the extension's JIT build (1-2 minutes on a fresh machine or after a
    change of ``TORCH_CUDA_ARCH_LIST``) happens before the time budget starts. No-op on CPU or without gsplat."""
    from avatar.render.gaussians import gsplat_available, rasterize_gaussians

    if device.type != "cuda" or not gsplat_available(device):
        return
    tensors, width, height = _warm_up_inputs(device)
    rasterize_gaussians(*tensors, width, height, backend="gsplat")


def fit_gphm_avatar(prepared: Any, out_dir: str | Path, *, config: FitConfig | None = None, model: Any = None,
                    device: torch.device | str = "cuda", progress: bool = True, resume: bool = True,
                    on_step: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Fit a person's GPHM avatar to a prepared monocular video (paper 3.5; module docstring).

    Args:
        prepared: a :class:`~avatar.fitting.video_data.PreparedVideo` (or a dataset with the same items: image,
            mask, world_to_camera, K, expression), e.g. the training part of ``prepared.split(0.8)``.
        out_dir: the avatar folder (checkpoints go there too).
        config: :class:`FitConfig` (default: 5 minutes at 512x512, 100k Gaussians).
        model: a pretrained :class:`~avatar.models.gphm.GPHM` to start from (``None``: the template head).
        device: ``"cuda"``, ``"cpu"``...
        progress: a progress bar.
        resume: continue from ``out_dir/checkpoint.pt`` when present (else start again).
        on_step: called as ``on_step(stage, step, loss)`` after every step (tests, logging).

    Returns:
        :class:`FitResult`; the avatar is saved in ``out_dir`` (:func:`load_gphm_avatar`).

    Raises:
        InputError: no frames, a checkpoint of another config, a bad option.
    """
    c = FitConfig() if config is None else config
    if not isinstance(c, FitConfig):
        raise InputError(f"config must be a FitConfig, got {type(c).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; give a folder for the avatar")
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but no CUDA device is available; use cpu")
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if resume and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged file: say so
            raise InputError(f"{ckpt_path} cannot be read ({type(exc).__name__}: {exc}); delete it or pass "
                             "resume=False to start again") from exc
        _check_resumable(ckpt, c, model is not None, ckpt_path)
    elif not resume:
        ckpt_path.unlink(missing_ok=True)

    if ckpt is not None and int(ckpt["stage"]) == 3 and not (out / AVATAR_MANIFEST).is_file():
        raise InputError(f"{ckpt_path} records a finished fit but {out / AVATAR_MANIFEST} is missing; pass "
                         "resume=False (`--restart`) to fit again")
    if ckpt is not None and int(ckpt["stage"]) == 3:
        avatar = load_gphm_avatar(out, device=dev)
        fit = avatar.manifest.get("fit", {})
        logger.info("%s holds a finished fit; returning it (resume=False, `avatar fit --restart`, fits again)", out)
        return FitResult(out, avatar, int(fit.get("identity_steps", 0)), int(fit.get("finetune_steps", 0)),
                         float(ckpt["elapsed"]), 0.0, fit.get("final_loss"), list(ckpt["history"]), True,
                         "finished", bool(fit.get("perceptual", False)),
                         ckpt.get("corrections") if c.pose_correction else None)

    t0 = time.perf_counter()
    _warm_up_rasterizer(dev)  # gsplat's first call builds its CUDA extension: not part of the fitting budget
    frames = load_frames(prepared, c.resolution, dev, progress)
    load_seconds = time.perf_counter() - t0
    torch.manual_seed(c.seed)
    fitter = _Fitter(frames, c, out, dev, model is not None, progress, on_step)
    if ckpt is not None:
        if int(ckpt["corrections"].shape[0]) != len(frames):
            raise InputError(f"{ckpt_path} was made from {ckpt['corrections'].shape[0]} frames, this video has "
                             f"{len(frames)}; use another folder or resume=False")
        state = fitter.load_checkpoint(ckpt)
        logger.info("resuming the fit in %s at stage %d step %d (%.1f s done)", out, state.stage, state.step,
                    state.elapsed)
    else:
        if model is None:
            fitter.gphm = _template_model(c, dev, fitter.gen)
        else:
            fitter.gphm = model.to(dev)
        fitter.gphm.train()
        fitter.code = nn.Parameter(fitter.gphm.new_identity_code(1, generator=fitter.gen).detach())
        fitter.make_signals(fitter.gphm.config.fields)
        fitter.stage1_optimizer()
        state = _State(1, 0, 0.0, [], torch.zeros(0, dtype=torch.long), 0)
    resumed = ckpt is not None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        state, stopped = fitter.run(state)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    steps2 = state.step if state.stage >= 2 else 0
    steps1 = state.identity_done
    final = state.history[-1]["loss"] if state.history else None
    fit_info = {"identity_steps": steps1, "finetune_steps": steps2, "fit_seconds": round(state.elapsed, 3),
                "final_loss": final, "stopped_by": stopped, "frames": len(frames), "config": c.to_dict(),
                "pretrained_model": model is not None, "perceptual": fitter.perceptual is not None,
                "losses": _loss_names(c, fitter.weight_raw, fitter.perceptual is not None)}
    fitted = FittedGPHMAvatar(fitter.avatar.eval(), fitter.signals.eval(), frames.K, c.resolution, c.background)
    fitted.save(out, fit_info)
    fitter.save_checkpoint(state)  # the slim 'finished' record, after the avatar folder is complete
    return FitResult(out, fitted, steps1, steps2, state.elapsed, load_seconds, final, state.history, resumed,
                     stopped, fitter.perceptual is not None,
                     fitter.corrections.detach().cpu() if c.pose_correction else None)


def _loss_names(c: FitConfig, weight_raw: float, perceptual: bool) -> str:
    names = ["L1"]
    if c.weight_ssim:
        names.append(f"{c.weight_ssim:g} D-SSIM")
    if weight_raw:
        names.append(f"{weight_raw:g} raw L1")
    if perceptual:
        names.append(f"{c.weight_perceptual:g} LPIPS-VGG")
    return " + ".join(names)


def _check_resumable(ckpt: Any, config: FitConfig, pretrained: bool, path: Path) -> None:
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path} is not a checkpoint of this fitting (version {ckpt.get('version') if isinstance(ckpt, dict) else '?'}); "
                         "delete it or pass resume=False")
    old = ckpt["fit_config"]
    diff = [k for k in _STRUCTURAL if old.get(k) != getattr(config, k)]
    if diff:
        what = ", ".join(f"{k} {old.get(k)!r} -> {getattr(config, k)!r}" for k in diff)
        raise InputError(f"{path} was made with other settings ({what}); use another folder, the same settings, "
                         "or resume=False to start again")
    if bool(ckpt.get("pretrained")) != pretrained and int(ckpt["stage"]) == 1:
        raise InputError(f"{path} was started {'from a pretrained model' if ckpt.get('pretrained') else 'from the template'}; "
                         "give the same starting model or resume=False")
