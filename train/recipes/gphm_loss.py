"""GPHM's training steps: a batch of :class:`~train.recipes.gphm_data.ExpressionViews` items made into the
models' inputs (:func:`prepare_batch`), and the loss of each stage as a phase loss of :mod:`train.core.phases`
(:class:`GuidingLoss`, :class:`GaussianLoss`).

Inputs (:class:`GPHMBatch`):

* targets: the images in [-1, 1]; where the data has a matte and ``composite_background`` is on, put on 0 (the
  colour of an empty feature map, so that the raw term, Eq. 14, does not fight the background; paper silent on the
  background colour, its data is matted);
* expression / non-face inputs: the frontal-most view of the frame in [-1, 1] (or ``None`` for the non-face
  encoder with ``non_face_input="none"``);
* head pose: the data's ``head_pose`` (canonical -> world similarity) times ``canonical_scale`` (world units per
  canonical unit);
* camera: ``world_to_camera`` and ``K`` scaled from the data's image size to the model's feature map.

Silhouette targets of samples without a matte (``has_mask`` false) are replaced by the rendered mask itself
(detached), so those samples add nothing to the silhouette term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import InputError
from avatar.models.gphm.losses import gphm_losses, guiding_losses
from train.core.phases import PhaseContext

__all__ = ["GPHMBatch", "GaussianLoss", "GuidingLoss", "prepare_batch"]


@dataclass
class GPHMBatch:
    """One step's inputs (see the module docstring); ``B`` samples."""

    image: Tensor
    """``(B, 3, H, W)`` targets in [-1, 1]."""
    mask: Tensor
    """``(B, 1, H, W)`` mattes in [0, 1] (ones where there is none)."""
    has_mask: Tensor
    """``(B,)`` bool."""
    identity: Tensor
    """``(B,)`` long indices into the identity codes."""
    expression: Tensor
    """``(B, 3, H', W')`` expression encoder input in [-1, 1]."""
    non_face: Tensor | None
    """Non-face encoder input, or None (zero codes)."""
    pose: Tensor
    """``(B, 4, 4)`` canonical -> world similarity."""
    viewmats: Tensor
    """``(B, 4, 4)`` world -> camera (OpenCV)."""
    Ks: Tensor  # noqa: N815
    """``(B, 3, 3)`` intrinsics of the feature map."""


def prepare_batch(batch: dict[str, Tensor], *, feature_resolution: int, canonical_scale: float,
                  composite_background: bool, non_face_input: str) -> GPHMBatch:
    """A collated batch of :class:`~train.recipes.gphm_data.ExpressionViews` items -> :class:`GPHMBatch`."""
    image = batch["image"].float()
    mask = batch["mask"].float()
    has_mask = batch["has_mask"].bool().reshape(-1)
    target = image * 2 - 1
    if composite_background:
        keep = mask * has_mask[:, None, None, None] + (~has_mask)[:, None, None, None].float()
        target = target * keep
    expression = batch["expression_image"].float() * 2 - 1
    height, width = image.shape[-2:]
    if height != width:
        raise InputError(f"GPHM trains on square images, got {width}x{height}: read the data with a resolution")
    ks = batch["K"].float().clone()
    ks[:, :2] *= feature_resolution / width
    scale = torch.diag(torch.tensor([canonical_scale] * 3 + [1.0], dtype=image.dtype, device=image.device))
    pose = batch["head_pose"].float() @ scale
    return GPHMBatch(image=target, mask=mask, has_mask=has_mask, identity=batch["identity"].long().reshape(-1),
                     expression=expression, non_face=expression if non_face_input == "image" else None, pose=pose,
                     viewmats=batch["world_to_camera"].float(), Ks=ks)


def _silhouette_target(b: GPHMBatch, rendered: Tensor) -> Tensor:
    """The data's masks at the rendered mask's size, the rendered mask (detached) where there is no matte."""
    target = b.mask
    if tuple(target.shape[-2:]) != tuple(rendered.shape[-2:]):
        target = F.interpolate(target, size=tuple(rendered.shape[-2:]), mode="area")
    return torch.where(b.has_mask[:, None, None, None], target.to(rendered), rendered.detach())


def _log_terms(ctx: PhaseContext, terms: dict[str, Tensor]) -> None:
    for name, value in terms.items():
        if name != "total":
            ctx.log(f"Loss/{ctx.phase}/{name}", value.detach())


class GuidingLoss:
    """Stage 1's phase loss: the guiding geometry model's forward pass and :func:`guiding_losses` (Eq. 17-18),
    plus the eikonal term at random points of the grid cube when its weight is not 0."""

    def __init__(self, model: nn.Module, stage: Any) -> None:
        self.model = model
        self.stage = stage

    def forward(self, b: GPHMBatch) -> tuple[Any, dict[str, Tensor]]:
        model, cfg = self.model, self.stage.loss
        out = model(b.identity, b.expression, b.non_face, b.pose, b.Ks, viewmats=b.viewmats)
        gradients = None
        if cfg.weight_eikonal > 0:
            bound = model.config.grid_bound
            points = (torch.rand(self.stage.eikonal_points, 3, device=b.image.device) * 2 - 1) * bound
            _, gradients = model.sdf.sdf_and_gradient(points)
        masks = _silhouette_target(b, out.mask) if cfg.weight_silhouette > 0 else None
        return out, guiding_losses(out, b.image, masks, None, config=cfg, sdf_gradients=gradients)

    def __call__(self, b: GPHMBatch, ctx: PhaseContext) -> Tensor:
        _, terms = self.forward(b)
        _log_terms(ctx, terms)
        return terms["total"]


class GaussianLoss:
    """Stage 2's phase loss: the Gaussian model's forward pass and :func:`gphm_losses` (Eq. 19-20).

    Args:
        model: the :class:`~avatar.models.gphm.GPHM`.
        stage: :class:`~train.recipes.gphm.GaussianStage`.
        perceptual: ``(pred, target) -> scalar`` on [-1, 1] images (LPIPS), or None when its weight is 0.
        backend: the rasteriser (``"auto"``, ``"reference"``, ``"gsplat"``).
    """

    def __init__(self, model: nn.Module, stage: Any, perceptual: Callable[[Tensor, Tensor], Tensor] | None,
                 backend: str = "auto") -> None:
        self.model = model
        self.stage = stage
        self.perceptual = perceptual
        self.backend = backend

    def forward(self, b: GPHMBatch) -> tuple[Any, dict[str, Tensor]]:
        cfg = self.stage.loss
        out = self.model(b.identity, b.expression, b.non_face, b.pose, b.Ks, viewmats=b.viewmats,
                         backend=self.backend)
        masks = _silhouette_target(b, out.alpha) if cfg.weight_silhouette > 0 else None
        return out, gphm_losses(out, b.image, masks, None, config=cfg, perceptual=self.perceptual)

    def __call__(self, b: GPHMBatch, ctx: PhaseContext) -> Tensor:
        _, terms = self.forward(b)
        _log_terms(ctx, terms)
        return terms["total"]
