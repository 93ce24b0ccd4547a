"""GenHead from seeds to pictures and videos: random identities, sample grids, animation by a driving video.

What the official ``gen_images_genhead.py`` does, and the choices made where it has none:

* **Identity of a seed** ``s``: ``z = RandomState(s).randn(1, z_dim)`` (upstream's draw); the FLAME shape is row
  ``s`` (mod the pool size) of the FFHQ+VFHQ ``shape_n_c`` pool when pools are given, else zeros (the mean
  FLAME shape: the model is conditioned on it, so pools give more varied heads). Styles ``w`` come from the
  mapping conditioned on the frontal camera and that shape, truncated with ``psi`` (default 0.7) up to layer 14,
  upstream's defaults. The background latent is ``z`` (as upstream).
* **Cameras**: the toolkit's frontal camera (:func:`avatar.render.camera.inference_label`: 4.2 units in front,
  12 degree field of view); upstream uses 4.0 units with the FFHQ row's intrinsics, a few percent larger.
* **Expression of a sample**: row ``s`` of the FFHQ motion pool with the neck zeroed, else neutral (zeros).
* **Animation** (:func:`animate`): each driving frame's FLAME expression, jaw and eye poses drive the held
  identity; its head rotation either turns the FLAME neck with the camera fixed (``'neck'``, what upstream's
  script shows), moves the camera (``'camera'``, the way GenHead saw head poses in training) or is dropped
  (``'fixed'``); an orbit (:func:`avatar.render.camera.orbit_labels`) replaces the camera when given. Frames
  without a face hold the last good parameters (neutral before the first one).

Rendering is at 64^2 (GenHead's training and upstream's inference resolution), super-resolved to 512^2.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError, NoFaceError
from avatar.face.geometry import FlameLabel, camera_label_from_pose
from avatar.face.smoothing import POSE_FILTER, OneEuroFilter
from avatar.models.genhead import GenHead
from avatar.pipelines.frames import to_uint8
from avatar.pipelines.preprocess import CropSmoother, FacePreprocessor
from avatar.render.camera import inference_label

__all__ = ["GenHeadIdentity", "animate", "driving_flame", "identity_from_seed", "sample_grid", "seed_motion"]

logger = logging.getLogger(__name__)

AnimatePose = Literal["neck", "camera", "fixed"]


@dataclass
class GenHeadIdentity:
    """One generated identity, held while its expression and camera change."""

    seed: int
    ws: Tensor
    """``(1, num_ws, w_dim)``."""
    z_bg: Tensor
    """``(1, z_dim)``."""
    shape: Tensor
    """``(1, 300)``."""


def _pool_row(pool: Tensor | None, index: int) -> Tensor | None:
    return None if pool is None or pool.shape[0] == 0 else pool[index % pool.shape[0]]


def identity_from_seed(model: GenHead, seed: int, pools: Any = None, truncation_psi: float = 0.7,
                       truncation_cutoff: int | None = 14) -> GenHeadIdentity:
    """The identity of ``seed`` (module docstring); ``pools``: a :class:`~avatar.models.genhead.pools.
    FlameParameterPools` or ``None``."""
    device = next(model.parameters()).device
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, model.config.z_dim)).float().to(device)
    row = _pool_row(getattr(pools, "shape_n_c", None), seed)
    shape = torch.zeros(1, model.config.shape_dim, device=device) if row is None else row[25:].reshape(1, -1).float().to(device)
    with torch.no_grad():
        ws = model.mapping(z, inference_label(1, device=device), shape, truncation_psi, truncation_cutoff)
    return GenHeadIdentity(seed, ws, z, shape)


def seed_motion(model: GenHead, seed: int, pools: Any = None) -> tuple[Tensor, Tensor, Tensor]:
    """``(expression (1, 100), pose (1, 6), eye_pose (1, 6))`` of a sample: the FFHQ motion row of ``seed`` with the
    neck zeroed, or neutral."""
    device = next(model.parameters()).device
    row = _pool_row(getattr(pools, "static_motion", None), seed)
    if row is None:
        return (torch.zeros(1, model.config.exp_dim, device=device), torch.zeros(1, 6, device=device),
                torch.zeros(1, 6, device=device))
    row = row.float().to(device).reshape(1, -1)
    pose = row[:, 100:106].clone()
    pose[:, :3] = 0
    return row[:, :100], pose, row[:, 106:112]


@torch.no_grad()
def sample_grid(model: GenHead, seeds: Sequence[int], pools: Any = None, truncation_psi: float = 0.7,
                camera: Tensor | None = None, batch_size: int = 4) -> np.ndarray:
    """Render one 512^2 image per seed (its identity and sample expression) -> ``(N, 512, 512, 3)`` uint8."""
    device = next(model.parameters()).device
    cam = inference_label(1, device=device) if camera is None else camera.to(device).reshape(1, 25)
    out = []
    for start in range(0, len(seeds), batch_size):
        chunk = list(seeds[start:start + batch_size])
        ids = [identity_from_seed(model, s, pools, truncation_psi) for s in chunk]
        motions = [seed_motion(model, s, pools) for s in chunk]
        exp, pose, eye = (torch.cat([m[k] for m in motions]) for k in range(3))
        res = model.synthesis(torch.cat([i.ws for i in ids]), torch.cat([i.z_bg for i in ids]),
                              cam.expand(len(chunk), -1), torch.cat([i.shape for i in ids]), exp, pose, eye)
        out.append(to_uint8(res.image))
    return np.concatenate(out)


def driving_flame(preprocessor: FacePreprocessor, frames: Iterable[np.ndarray], batch_size: int = 8,
                  max_frames: int | None = None, smooth: bool = True) -> Iterator[tuple[FlameLabel, bool]]:
    """Per driving frame: its FLAME label (``(437,)`` split, expression / jaw / eyes / head rotation) and whether a
    face was found; a frame without a usable face holds the last good label (neutral before the first).
    ``smooth``: one-euro filtering of the crops and head rotations. Raises :class:`NoFaceError` at the end when no
    frame had a face."""
    pose_filter = OneEuroFilter.from_params(POSE_FILTER) if smooth else None
    last: Tensor | None = None
    seen = missing = 0
    for chunk, good, analyses in preprocessor.analyze_batches(frames, batch_size, max_frames,
                                                              CropSmoother() if smooth else None):
        by_frame = {i: k for k, i in enumerate(good)}
        for i in range(len(chunk)):
            k = by_frame.get(i)
            if k is not None:
                label = analyses[k].label.float().clone()
                if pose_filter is not None:
                    label[425:431] = torch.as_tensor(pose_filter(label[425:431].numpy().astype(np.float64)),
                                                     dtype=torch.float32)
                last = label
            else:
                missing += 1
            yield FlameLabel.from_label(last if last is not None else torch.zeros(437)), k is not None
            seen += 1
    if seen and missing == seen:
        raise NoFaceError(f"no face found in any of the {seen} driving frames; use a driving video that shows one "
                          "clearly visible face")
    if missing:
        logger.warning("no usable face in %d of %d driving frames; their motion was held", missing, seen)


@torch.no_grad()
def animate(model: GenHead, identity: GenHeadIdentity, labels: Iterable[FlameLabel], pose: AnimatePose = "neck",
            orbit: Tensor | None = None, batch_size: int = 4) -> Iterator[np.ndarray]:
    """Render the held ``identity`` with each driving label (module docstring) -> ``(512, 512, 3)`` uint8 frames.

    Args:
        orbit: ``(K, 25)`` cameras cycled over the frames (the neck is then zeroed), or ``None``.
    """
    if pose not in ("neck", "camera", "fixed"):
        raise InputError(f"pose must be 'neck', 'camera' or 'fixed', got {pose!r}")
    device = next(model.parameters()).device
    index = 0
    batch: list[FlameLabel] = []

    def render(items: list[FlameLabel], first: int) -> np.ndarray:
        n = len(items)
        exp = torch.stack([f.expression for f in items]).float().to(device)
        fl_pose = torch.stack([f.pose for f in items]).float().to(device)
        eye = torch.stack([f.eye_pose for f in items]).float().to(device)
        if orbit is not None:
            cams = orbit.to(device)[torch.arange(first, first + n, device=device) % orbit.shape[0]]
            fl_pose[:, :3] = 0
        elif pose == "camera":
            cams = camera_label_from_pose(fl_pose)
            fl_pose[:, :3] = 0
        else:
            cams = inference_label(n, device=device)
            if pose == "fixed":
                fl_pose[:, :3] = 0
        out = model.synthesis(identity.ws.expand(n, -1, -1), identity.z_bg.expand(n, -1), cams,
                              identity.shape.expand(n, -1), exp, fl_pose, eye)
        return to_uint8(out.image)

    for label in labels:
        batch.append(label)
        if len(batch) == batch_size:
            yield from render(batch, index)
            index += len(batch)
            batch = []
    if batch:
        yield from render(batch, index)
