"""Training-mode forward of the Portrait4D reconstructor Psi (official ``TriPlaneReconstructorNeutralize``).

The official training losses (``loss_recon_v1.py`` / ``loss_recon_v2.py``) call ``G.synthesis`` with
gradients and read more outputs than inference returns; the v1 density regulariser calls ``G.sample_mixed``
for densities at arbitrary points. This module is that computation, on the modules of
:class:`~avatar.models.portrait4d.Portrait4D` (its encoders, renderer, NeRF decoder and super-resolution;
nothing is copied), in float32 and without ``torch.no_grad``:

* :func:`train_forward` (also :meth:`Portrait4D.train_forward`) - every encoder recomputed from the source
  image, volume rendering at a given neural rendering resolution with the official (stochastic) ray sampling
  or the deterministic one, background compositing and super-resolution; returns the official output dict;
* :func:`sample_density` (also :meth:`Portrait4D.sample_density`) - ``sample_mixed``: sigma (and features) at
  given points, after the optional head-pose deformation;
* :func:`plane_features` - the triplane features at points (``renderer.run_model(planes, None, ...)``, the v1
  triplane distillation loss);
* :func:`motion_scale_tensor`, :func:`half_static_motion_scale`, :func:`training_conditioning` - the per-sample
  motion scale of the loss's ``run_G`` (the v1 "half-static" batches: the second half of the batch is static
  data rendered with motion scale 0; optional source/driving swapping).

Differences from the official code, none of which changes a number:

* ``planes`` is one ``(B, 3, 32, 256, 256)`` tensor (the official returns a list holding it);
* ``head_pose=None`` is the identity warp. The official "zero FLAME parameters" deformer (the v2 multi-view
  regulariser, G_fix) is ``HeadPose`` with all zeros (:func:`zero_head_pose`): target and canonical meshes then
  coincide and the surface field is the identity up to rounding (not exactly);
* the FLAME correspondence map ``uv`` and the landmarks come from the FLAME renderer in the training loop,
  not from this network; the patch branch (``patch_scale < 1``) and the ``> 128`` branch, unused by any
  Portrait4D training config, are not implemented.

Randomness: with ``deterministic=False`` the stratified depths are jittered (one jitter per depth index and
batch element, shared by all rays, as upstream's ``'auto-plane'`` mode) and the importance samples drawn with
``torch.rand``, in the same order and shapes as upstream, so the same seed gives the same samples.
``deterministic=True`` uses ``linspace`` depths and ``det=True`` importance sampling (the project's
inference convention), for comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.checkpoint
from torch import Tensor

from avatar.errors import InputError
from avatar.flame.deformation import FlameHeadPoseDeformer, HeadPoseField
from avatar.nn.stylegan2 import constant_ws
from avatar.render.camera import camera_z, split_label
from avatar.render.rays import sample_rays
from avatar.render.triplane import composite_background, rays_to_image, sample_from_planes

if TYPE_CHECKING:
    from avatar.models.portrait4d.modeling import HeadPose, Portrait4D

__all__ = [
    "TRAIN_OUTPUTS",
    "half_static_motion_scale",
    "motion_scale_tensor",
    "plane_features",
    "sample_density",
    "train_forward",
    "training_conditioning",
    "zero_head_pose",
]

TRAIN_OUTPUTS = (
    "image", "image_sr", "image_wobg", "image_feature", "image_feature_wobg", "background_feature", "rgb_bg",
    "image_depth", "T_bg", "seg", "planes", "interval", "all_weights",
)
"""Keys of :func:`train_forward` (``rgb_bg`` only with a background), as the official ``synthesis()``."""


# ----------------------------------------------------------------------------------------------------------
# motion scale and conditioning (the loss's run_G)


def motion_scale_tensor(motion_scale: float | Tensor, batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """A motion scale as the ``(B, 1, 1)`` float tensor the official ``run_G`` passes to ``synthesis``.

    Args:
        motion_scale: a number (every sample), or a tensor of ``B`` values (shape ``(B,)``, ``(B, 1)`` or
            ``(B, 1, 1)``; one value broadcasts).
    """
    if isinstance(motion_scale, Tensor):
        scale = motion_scale.to(device=device, dtype=torch.float32)
        if scale.numel() == 1:
            return scale.reshape(1, 1, 1).expand(batch_size, 1, 1)
        if scale.numel() != batch_size:
            raise InputError(f"motion_scale must have 1 or {batch_size} values, got shape {tuple(scale.shape)}")
        return scale.reshape(batch_size, 1, 1)
    return torch.full((batch_size, 1, 1), float(motion_scale), device=device)


def half_static_motion_scale(batch_size: int, motion_scale: float = 1.0,
                             device: torch.device | str | None = None) -> Tensor:
    """v1 ``half_static`` (without swapping): the first ``B // 2`` samples keep ``motion_scale``, the rest
    (the static half of the batch) get 0. Returns ``(B, 1, 1)``."""
    scale = motion_scale_tensor(motion_scale, batch_size, device)
    n = batch_size // 2
    return torch.cat([scale[:n], scale[n:] * 0], dim=0)


def training_conditioning(
    source_image: Tensor,
    driving_image: Tensor,
    source_motion: Tensor,
    driving_motion: Tensor,
    motion_scale: float = 1.0,
    swapping_prob: float | None = None,
    half_static: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The conditioning of the official ``run_G`` / ``Greg``: source image, source motion and per-sample
    motion scale actually given to the network.

    With ``swapping_prob`` a sample whose ``U(0, 1)`` draw is below it uses the driving image and motion as
    its source, with motion scale 0. With ``half_static`` the second half of the batch is static data: motion
    scale 0 (with swapping: 0 when a second draw is below ``1 - swapping_prob``, else the unswapped scale, as
    upstream). Both official launchers use ``swapping_prob=None``; v1 uses ``half_static=True``.

    Returns:
        ``(source_image, source_motion, motion_scale (B, 1, 1))``.
    """
    b = source_image.shape[0]
    dev = source_image.device
    scale = motion_scale_tensor(motion_scale, b, dev)
    image, motion_app, scale_c = source_image, source_motion, scale
    if swapping_prob is not None:
        prob = torch.rand((b, 1), device=dev, generator=generator)
        image = torch.where(prob.reshape(b, 1, 1, 1) < swapping_prob, driving_image, source_image)
        scale_c = torch.where(prob.reshape(b, 1, 1) < swapping_prob, torch.zeros_like(scale), scale)
        motion_app = torch.where(prob < swapping_prob, driving_motion, source_motion)
    if half_static:
        n = b // 2
        if swapping_prob is None:
            scale_c = torch.cat([scale[:n], scale[n:] * 0], dim=0)
        else:
            if b - n != n:
                raise InputError(f"half_static with swapping needs an even batch (upstream), got {b}")
            prob = torch.rand((n, 1), device=dev, generator=generator)
            static = torch.where(prob.reshape(n, 1, 1) < 1 - swapping_prob, torch.zeros_like(scale[n:]), scale[n:])
            scale_c = torch.cat([scale_c[:n], static], dim=0)
    return image, motion_app, scale_c


def zero_head_pose(batch_size: int, device: torch.device | str | None = None) -> HeadPose:
    """All FLAME parameters zero: the official v2 multi-view regulariser's deformer (``params * 0``)."""
    from avatar.models.portrait4d.modeling import HeadPose

    z = torch.zeros
    return HeadPose(pose=z(batch_size, 6, device=device), expression=z(batch_size, 100, device=device),
                    eye_pose=z(batch_size, 6, device=device), shape=z(batch_size, 300, device=device))


# ----------------------------------------------------------------------------------------------------------
# helpers


def _checkpointed(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, through a non-reentrant activation checkpoint when ``enabled`` and gradients are on."""
    if enabled and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=True)
    return fn(*args)


def _field(model: Portrait4D, head_pose: HeadPose | HeadPoseField | None, batch: int) -> HeadPoseField | None:
    if head_pose is None or isinstance(head_pose, HeadPoseField):
        return head_pose
    return model.head_pose_field(head_pose, None, batch)


def _box_warp_scale(box_warp_scale: float | Tensor, batch: int, device: torch.device) -> float | Tensor:
    if not isinstance(box_warp_scale, Tensor):
        return float(box_warp_scale)
    if box_warp_scale.numel() not in (1, batch):
        raise InputError(f"box_warp_scale must have 1 or {batch} values, got shape {tuple(box_warp_scale.shape)}")
    return box_warp_scale.to(device=device, dtype=torch.float32).reshape(-1, 1, 1)


def _inputs(model: Portrait4D, source_image: Tensor, source_motion: Tensor | None, driving_motion: Tensor | None,
            motion_scale: float | Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    model._check_image(source_image)
    b = source_image.shape[0]
    source_motion = model._check_motion(source_motion, b, "source_motion")
    driving_motion = model._check_motion(driving_motion, b, "driving_motion")
    scale = model.config.motion_scale if motion_scale is None else motion_scale
    return source_motion, driving_motion, motion_scale_tensor(scale, b, source_image.device)


# ----------------------------------------------------------------------------------------------------------
# the training forward


def train_forward(
    model: Portrait4D,
    source_image: Tensor,
    source_motion: Tensor | None,
    driving_motion: Tensor | None,
    camera: Tensor,
    neural_rendering_resolution: int | None = None,
    head_pose: HeadPose | HeadPoseField | None = None,
    motion_scale: float | Tensor | None = None,
    deterministic: bool = False,
    box_warp_scale: float | Tensor = 1.0,
    gradient_checkpointing: bool = False,
) -> dict[str, Tensor]:
    """The official ``synthesis()`` as the training losses call it (with gradients, float32).

    Args:
        model: the reconstructor (train or eval mode: only the super-resolution's modulated convolutions
            depend on it, fused in eval as upstream's ``'inference_only'``).
        source_image: ``(B, 3, 512, 512)`` in ``[-1, 1]`` (the official ``imgs_app``).
        source_motion, driving_motion: ``(B, 548)`` PD-FGC motions (``motions_app``, ``motions``); ``None`` gives
            zeros for a static config.
        camera: ``(B, 25)`` or ``(1, 25)`` labels.
        neural_rendering_resolution: raw render side NR, 1..128 (v1 trains at 64 -> 128, v2 at 128); default
            ``config.neural_rendering_resolution``.
        head_pose: FLAME parameters of the head-pose deformation (``HeadPose``, with ``shape`` the source FLAME
            shape as upstream passes ``shape_params_app``; missing parts are zeros), a precomputed
            :class:`~avatar.flame.deformation.HeadPoseField`, or ``None`` for no deformation.
        motion_scale: scale of every motion cross-attention: a number or ``B`` values (the v1 half-static
            batches, :func:`half_static_motion_scale`); 0 for G_fix / the static model. ``None`` uses
            ``config.motion_scale``. Always applied as a ``(B, 1, 1)`` tensor as upstream's ``run_G`` does, so
            the cross-attention runs (and gets zero gradients) even at scale 0.
        deterministic: un-jittered stratified depths and ``det=True`` importance samples instead of the
            official random ones.
        box_warp_scale: number or ``B`` values; scales the triplane box and the depth range (v2's G_fix
            with ``g_fix_reg_img_aug``).
        gradient_checkpointing: keep no activations of the encoders, the volume rendering and the
            super-resolution for the backward pass: each is recomputed there (``torch.utils.checkpoint``,
            non-reentrant, random state restored, so the same samples are drawn): less memory, about one more
            forward pass of time; the same numbers.

    Returns:
        The official keys (``NR = neural_rendering_resolution``, ``C = 32`` features, ``S`` samples per ray):
        ``image`` ``(B, 3, NR, NR)`` raw RGB composited with the background; ``image_sr`` ``(B, 3, 512, 512)``;
        ``image_wobg`` raw RGB without background; ``image_feature`` / ``image_feature_wobg`` ``(B, C, NR, NR)``;
        ``background_feature`` ``(B, C, NR, NR)`` (``2 sigmoid(bg) - 1``, all -1 without background);
        ``rgb_bg`` ``(B, 3, NR, NR)`` (with a background only); ``image_depth`` ``(B, 1, NR, NR)``; ``T_bg``
        ``(B, 1, NR, NR)`` background transmittance; ``seg`` ``(1 - T_bg) * 2 - 1``; ``planes``
        ``(B, 3, 32, 256, 256)``; ``interval`` ``(B, NR*NR, S)`` sorted sample depths; ``all_weights``
        ``(B, NR*NR, S - 1)`` compositing weights. Images are in ``[-1, 1]`` space (raw ones can exceed 1:
        features plus ``T_bg`` times background).
    """
    source_motion, driving_motion, scale = _inputs(model, source_image, source_motion, driving_motion, motion_scale)
    b = source_image.shape[0]
    camera = model._check_camera(camera, b)
    r = model.config.neural_rendering_resolution if neural_rendering_resolution is None else neural_rendering_resolution
    if not 0 < r <= 128:
        raise InputError(f"neural_rendering_resolution must be in 1..128, got {r}")
    bws = _box_warp_scale(box_warp_scale, b, source_image.device)

    planes = _checkpointed(gradient_checkpointing, model.planes, source_image, driving_motion, source_motion, scale)
    field = _field(model, head_pose, b)
    deformer = None
    if field is not None:
        def deformer(points: Tensor) -> Tensor:
            return FlameHeadPoseDeformer.warp(field, points)

    cam2world, intrinsics = split_label(camera)
    origins, directions = sample_rays(cam2world, intrinsics, r)
    def render(planes: Tensor) -> Any:
        return model.renderer(planes, model.decoder, origins, directions, cam_z=camera_z(cam2world),
                              deformer=deformer, box_warp_scale=bws, deterministic=deterministic)

    out = _checkpointed(gradient_checkpointing, render, planes)
    features = rays_to_image(out.features, r, r).contiguous()
    depth = rays_to_image(out.depth, r, r).contiguous()
    t_bg = rays_to_image(out.t_bg, r, r).contiguous()
    result: dict[str, Tensor] = {}
    if model.background is not None:
        background = model.background_image(source_image, r)
        composited = composite_background(features, t_bg, background)
        result["rgb_bg"] = 2 * background[:, :3] - 1
        result["background_feature"] = 2 * background - 1
    else:
        composited = features + t_bg * 0
        result["background_feature"] = torch.full_like(features, -1.0)
    feature_image = 2 * composited - 1
    feature_wobg = 2 * features - 1
    rgb = feature_image[:, :3]
    if model.superresolution is not None:
        ws = constant_ws(model.w_avg, b)
        def upsample(rgb: Tensor, feature_image: Tensor, ws: Tensor) -> Tensor:
            return model.superresolution(rgb, feature_image, ws, noise_mode=model.config.superresolution_noise_mode)

        image_sr = _checkpointed(gradient_checkpointing, upsample, rgb, feature_image, ws)
    else:
        image_sr = rgb
    result.update({
        "image": rgb,
        "image_sr": image_sr,
        "image_wobg": feature_wobg[:, :3],
        "image_feature": feature_image,
        "image_feature_wobg": feature_wobg,
        "image_depth": depth,
        "T_bg": t_bg,
        "seg": (1 - t_bg) * 2 - 1,
        "planes": planes,
        "interval": out.all_depths.squeeze(-1),
        "all_weights": out.weights.squeeze(-1),
    })
    return result


# ----------------------------------------------------------------------------------------------------------
# densities and features at points


def _canonical(model: Portrait4D, points: Tensor, head_pose: HeadPose | HeadPoseField | None) -> Tensor:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise InputError(f"points must have shape (B, M, 3), got {tuple(points.shape)}")
    field = _field(model, head_pose, points.shape[0])
    return points if field is None else FlameHeadPoseDeformer.warp(field, points)


def plane_features(model: Portrait4D, planes: Tensor, points: Tensor,
                   head_pose: HeadPose | HeadPoseField | None = None) -> Tensor:
    """Mean of the three planes' features at ``points`` ``(B, M, 3)`` (after the optional head-pose
    deformation): the official ``renderer.run_model(planes, None, ...)['triplane_feature']`` of the v1 triplane
    distillation loss. Returns ``(B, M, 32)``."""
    canonical = _canonical(model, points, head_pose)
    return sample_from_planes(planes, canonical, model.renderer.options.box_warp).mean(1)


def sample_density(
    model: Portrait4D,
    source_image: Tensor,
    source_motion: Tensor | None,
    driving_motion: Tensor | None,
    points: Tensor,
    head_pose: HeadPose | HeadPoseField | None = None,
    motion_scale: float | Tensor | None = None,
    directions: Tensor | None = None,
) -> dict[str, Tensor]:
    """The official ``sample_mixed``: encoders recomputed from the source image, then the field at ``points``.

    Args:
        points: ``(B, M, 3)`` world (target-space) points, e.g. the v1 density regulariser's 1000 uniform
            points in ``[-1, 1]^3`` and their perturbed copies.
        head_pose: as :func:`train_forward` (the official default ``use_deform=True`` with the FLAME
            parameters of the batch); ``None``: no deformation.
        motion_scale: as :func:`train_forward` (the half-static scale applies here too).
        directions: ``(B, M, 3)``; unused by the decoder (upstream passes random ones).

    Returns:
        ``sigma`` ``(B, M, 1)`` raw density (before the ray marcher's ``softplus(sigma - 1)``), ``rgb``
        ``(B, M, 32)`` decoded features, ``triplane_feature`` ``(B, M, 32)`` and ``canonical`` ``(B, M, 3)``
        (the deformed points).
    """
    source_motion, driving_motion, scale = _inputs(model, source_image, source_motion, driving_motion, motion_scale)
    if points.shape[0] != source_image.shape[0]:
        raise InputError(f"points have batch {points.shape[0]}, expected {source_image.shape[0]}")
    planes = model.planes(source_image, driving_motion, source_motion, scale)
    canonical = _canonical(model, points, head_pose)
    feats = sample_from_planes(planes, canonical, model.renderer.options.box_warp)
    rgb, sigma = model.decoder(feats, directions)
    return {"sigma": sigma, "rgb": rgb, "triplane_feature": feats.mean(1), "canonical": canonical}
