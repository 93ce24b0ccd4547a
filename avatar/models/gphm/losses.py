"""GPHM's training losses (paper 3.3), with every weight a config field.

Guiding geometry model (Eq. 17-18), :func:`guiding_losses` with :class:`GuidingLossConfig`:

* ``rgb`` - L1 between the refined image and the image (Eq. 12);
* ``silhouette`` - L1 between the rendered mask and the matting mask (Eq. 13);
* ``raw`` - L1 between the feature map's first three channels and the image at the feature resolution (Eq. 14);
* ``landmark`` - squared distance between the deformed, posed canonical landmarks and the data's 3D landmarks
  (Eq. 15);
* ``deformation`` - the magnitude of the (weighted) expression and non-face displacements (Eq. 16);
* ``laplacian`` - the uniform Laplacian of the deformed mesh ("a Laplacian smooth term to penalise surface noise
  or breaks");
* ``eikonal`` - ``(|grad sdf| - 1)^2`` at sample points. Not in the paper's objective (weight 0 by default,
  which is the paper's loss); offered because a DMTet SDF that is not kept close to a distance field can
  develop flat regions where marching tetrahedra becomes ill-conditioned.

Gaussian model (Eq. 19-20), :func:`gphm_losses` with :class:`GPHMLossConfig`: ``rgb``, ``perceptual`` (LPIPS,
the paper cites Zhang et al.; pass :class:`avatar.losses.LPIPSLoss`, e.g. ``LPIPSLoss.from_pretrained(
"lpips-vgg")``), ``raw``, ``landmark``, ``deformation``; ``silhouette`` between the splatted alpha and the mask is
available with weight 0 (the paper does not list it for this stage). :meth:`GPHMLossConfig.fitting` is the
monocular fitting objective of 3.5 ("only the photometric loss and the perceptual loss").

The paper has no SSIM / D-SSIM term, so there is none here. Our copy of the paper lost every number
(weights included): each default says "Paper silent" and why it was chosen.

Images are ``(B, 3, H, W)`` in [-1, 1]; masks ``(B, 1, H, W)`` in [0, 1]; landmarks ``(B, K, 3)`` world.
Each function returns the unweighted terms whose weight is not zero, and ``"total"``, their weighted sum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.configuration import Config
from avatar.errors import ConfigError, InputError
from avatar.models.gphm.gaussians import GPHMOutput
from avatar.models.gphm.modeling import GuidingRenderOutput

__all__ = [
    "GPHMLossConfig",
    "GuidingLossConfig",
    "deformation_loss",
    "eikonal_loss",
    "gphm_losses",
    "guiding_losses",
    "landmark_loss",
    "laplacian_loss",
    "photometric_loss",
    "silhouette_loss",
    "weighted_total",
]


def _check_weights(owner: str, config: object) -> None:
    for name, value in vars(config).items():
        if name.startswith("weight_") and not value >= 0:
            raise ConfigError(f"{owner}.{name} must be >= 0 (0 switches the term off), got {value}")


@dataclass(frozen=True)
class GuidingLossConfig(Config):
    """Weights of the guiding geometry model's loss (paper Eq. 18). Paper silent on the values (lost in our
    copy); the choices are explained per field."""

    weight_rgb: float = 1.0
    """Eq. 12. Chose 1: the reference the other weights are relative to."""
    weight_silhouette: float = 0.1
    """Eq. 13. Chose 0.1: the mask fixes the outline early, then colour takes over (a full-weight mask fights
    the colour term at hair boundaries where matting is soft)."""
    weight_raw: float = 1.0
    """Eq. 14. Chose 1, the same as the refined image: both should show the same head."""
    weight_landmark: float = 10.0
    """Eq. 15 (squared distances in canonical units, about 1e-3 for a few-percent error). Chose 10 so a 3%
    landmark error weighs about as much as a 1% photometric error."""
    weight_deformation: float = 1.0
    """Eq. 16 (squared displacements). Chose 1: small next to the landmark term, so expressions still move the
    mouth, large enough to keep identity out of the motion fields."""
    weight_laplacian: float = 10.0
    """The Laplacian smooth term (squared uniform Laplacian, about ``h^2`` curvature-sized for a grid of spacing
    ``h``). Chose 10: it must dominate only on spikes, whose Laplacian is of the order of the grid spacing."""
    weight_eikonal: float = 0.0
    """Not in the paper: 0 keeps the paper's objective; 0.1 is the usual value when switched on."""

    def __post_init__(self) -> None:
        _check_weights("GuidingLossConfig", self)

    @classmethod
    def tiny(cls) -> GuidingLossConfig:
        return cls(weight_eikonal=0.1)


@dataclass(frozen=True)
class GPHMLossConfig(Config):
    """Weights of the Gaussian model's loss (paper Eq. 20). Paper silent on the values (lost in our copy)."""

    weight_rgb: float = 1.0
    """Eq. 12 on the refined image. Chose 1 (the reference)."""
    weight_perceptual: float = 0.1
    """LPIPS on the refined image. Chose 0.1, the usual weight next to an L1 term in neural head avatars (LPIPS
    values are about 10x the L1 of the same images)."""
    weight_raw: float = 1.0
    """Eq. 14. Chose 1, as for the guiding model."""
    weight_landmark: float = 10.0
    """Eq. 15. As :attr:`GuidingLossConfig.weight_landmark`."""
    weight_deformation: float = 1.0
    """Eq. 16. As :attr:`GuidingLossConfig.weight_deformation`."""
    weight_silhouette: float = 0.0
    """Not listed by the paper for this stage: 0 (the guiding mesh already fixed the outline)."""

    def __post_init__(self) -> None:
        _check_weights("GPHMLossConfig", self)

    @classmethod
    def tiny(cls) -> GPHMLossConfig:
        return cls(weight_silhouette=0.1)

    @classmethod
    def fitting(cls, weight_perceptual: float = 0.1) -> GPHMLossConfig:
        """The fitting / fine-tuning objective of paper 3.5: only the photometric and perceptual terms."""
        return cls(weight_rgb=1.0, weight_perceptual=weight_perceptual, weight_raw=0.0, weight_landmark=0.0,
                   weight_deformation=0.0, weight_silhouette=0.0)


# ---------------------------------------------------------------------------------------------------------
# terms


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="area")


def photometric_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 of ``pred`` and ``target (B, 3, H', W')``, the target resized (area) to ``pred``'s size."""
    if pred.dim() != 4 or target.dim() != 4 or pred.shape[:2] != target.shape[:2]:
        raise InputError(f"images are (B, C, H, W) with equal B and C, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return (pred - _resize(target.to(pred), tuple(pred.shape[-2:]))).abs().mean()


def silhouette_loss(mask: Tensor, target: Tensor) -> Tensor:
    """Mean L1 of a rendered ``mask (B, 1, H, W)`` and a target mask (resized by area to ``H, W``).
    Paper silent on the norm: chose L1, as for the images."""
    return photometric_loss(mask, target)


def landmark_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared distance of ``pred`` and ``target (B, K, 3)`` (mean over landmarks; sum over coordinates).
    Paper silent on the norm: chose squared L2, smooth at zero, so the term does not jitter once converged."""
    if pred.shape != target.shape:
        raise InputError(f"3D landmarks must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}; "
                         f"the model has {pred.shape[1]} landmarks")
    return (pred - target.to(pred)).square().sum(-1).mean()


def deformation_loss(expression_offsets: Tensor, non_face_offsets: Tensor) -> Tensor:
    """Eq. 16: mean squared length of the (weighted) expression plus non-face displacements ``(B, N, 3)``."""
    return expression_offsets.square().sum(-1).mean() + non_face_offsets.square().sum(-1).mean()


def laplacian_loss(vertices: Tensor, faces: Tensor) -> Tensor:
    """Mean squared uniform Laplacian ``|v - mean(neighbours)|^2`` of meshes ``vertices (B, V, 3)`` sharing
    ``faces (F, 3)`` (vertices on no face are skipped)."""
    faces = faces.long()
    nv = vertices.shape[1]
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = torch.unique(torch.sort(torch.cat([edges, edges.flip(1)]), dim=1).values, dim=0)
    src = torch.cat([edges[:, 0], edges[:, 1]])
    dst = torch.cat([edges[:, 1], edges[:, 0]])
    degree = torch.zeros(nv, dtype=vertices.dtype, device=vertices.device).index_add(
        0, src, torch.ones_like(src, dtype=vertices.dtype))
    summed = torch.zeros_like(vertices).index_add(1, src, vertices[:, dst])
    used = degree > 0
    lap = vertices[:, used] - summed[:, used] / degree[used, None]
    return lap.square().sum(-1).mean()


def eikonal_loss(gradients: Tensor) -> Tensor:
    """``mean (|grad|_2 - 1)^2`` of SDF gradients ``(..., 3)`` (from
    :meth:`~avatar.models.gphm.geometry.MeanShapeSDF.sdf_and_gradient`)."""
    return (gradients.norm(dim=-1) - 1.0).square().mean()


def weighted_total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum_k weights[k] * terms[k]``."""
    total = None
    for name, value in terms.items():
        part = weights[name] * value
        total = part if total is None else total + part
    if total is None:
        raise ConfigError("every loss weight is 0: nothing to optimise")
    return total


def _need(value: Tensor | None, what: str, weight_name: str) -> Tensor:
    if value is None:
        raise InputError(f"the {what} term needs its target: pass {what} data, or set {weight_name} = 0")
    return value


# ---------------------------------------------------------------------------------------------------------
# objectives


def guiding_losses(out: GuidingRenderOutput, images: Tensor, masks: Tensor | None = None, landmarks: Tensor | None = None, *,
                   config: GuidingLossConfig | None = None, sdf_gradients: Tensor | None = None) -> dict[str, Tensor]:
    """The guiding geometry model's loss (Eq. 17-18).

    Args:
        out: a :class:`~avatar.models.gphm.modeling.GuidingRenderOutput`.
        images: ``(B, 3, H u, W u)`` target images in [-1, 1] (also resized for the ``raw`` term).
        masks: ``(B, 1, H', W')`` target masks (needed when ``weight_silhouette > 0``).
        landmarks: ``(B, K, 3)`` world 3D landmarks (needed when ``weight_landmark > 0``).
        config: the weights (default :class:`GuidingLossConfig`).
        sdf_gradients: ``(..., 3)`` SDF gradients at sample points (needed when ``weight_eikonal > 0``).

    Returns:
        ``{name: unweighted term}`` for every term with a non-zero weight, and ``"total"``.
    """
    c = GuidingLossConfig() if config is None else config
    w = {"rgb": c.weight_rgb, "silhouette": c.weight_silhouette, "raw": c.weight_raw, "landmark": c.weight_landmark,
         "deformation": c.weight_deformation, "laplacian": c.weight_laplacian, "eikonal": c.weight_eikonal}
    mesh = out.mesh
    compute: dict[str, Callable[[], Tensor]] = {
        "rgb": lambda: photometric_loss(out.image, images),
        "silhouette": lambda: silhouette_loss(out.mask, _need(masks, "silhouette", "weight_silhouette")),
        "raw": lambda: photometric_loss(out.image_raw, images),
        "landmark": lambda: landmark_loss(out.landmarks, _need(landmarks, "landmark", "weight_landmark")),
        "deformation": lambda: deformation_loss(mesh.expression_offsets, mesh.non_face_offsets),
        "laplacian": lambda: laplacian_loss(mesh.vertices, mesh.faces),
        "eikonal": lambda: eikonal_loss(_need(sdf_gradients, "eikonal", "weight_eikonal")),
    }
    terms = {name: fn() for name, fn in compute.items() if w[name] != 0}
    return {**terms, "total": weighted_total(terms, w)}


def gphm_losses(out: GPHMOutput, images: Tensor, masks: Tensor | None = None, landmarks: Tensor | None = None, *,
                config: GPHMLossConfig | None = None,
                perceptual: Callable[[Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """The Gaussian model's loss (Eq. 19-20), also the fitting loss of 3.5 with :meth:`GPHMLossConfig.fitting`.

    Args:
        out: a :class:`~avatar.models.gphm.gaussians.GPHMOutput` (from :class:`GPHM` or :class:`GPHMAvatar`).
        images: ``(B, 3, H u, W u)`` target images in [-1, 1].
        masks: ``(B, 1, H', W')`` target masks (needed when ``weight_silhouette > 0``).
        landmarks: ``(B, K, 3)`` world 3D landmarks (needed when ``weight_landmark > 0``).
        config: the weights (default :class:`GPHMLossConfig`).
        perceptual: ``perceptual(pred, target) -> scalar`` on [-1, 1] images, e.g.
            :class:`avatar.losses.LPIPSLoss` (needed when ``weight_perceptual > 0``).

    Returns:
        ``{name: unweighted term}`` for every term with a non-zero weight, and ``"total"``.
    """
    c = GPHMLossConfig() if config is None else config
    w = {"rgb": c.weight_rgb, "perceptual": c.weight_perceptual, "raw": c.weight_raw, "landmark": c.weight_landmark,
         "deformation": c.weight_deformation, "silhouette": c.weight_silhouette}

    def perceptual_term() -> Tensor:
        if perceptual is None:
            raise InputError("the perceptual term needs a network: pass perceptual=LPIPSLoss.from_pretrained("
                             "'lpips-vgg') (avatar.losses), or set weight_perceptual = 0")
        return perceptual(out.image, _resize(images.to(out.image), tuple(out.image.shape[-2:])))

    gs = out.gaussians
    compute: dict[str, Callable[[], Tensor]] = {
        "rgb": lambda: photometric_loss(out.image, images),
        "perceptual": perceptual_term,
        "raw": lambda: photometric_loss(out.image_raw, images),
        "landmark": lambda: landmark_loss(out.landmarks, _need(landmarks, "landmark", "weight_landmark")),
        "deformation": lambda: deformation_loss(gs.expression_offsets, gs.non_face_offsets),
        "silhouette": lambda: silhouette_loss(out.alpha, _need(masks, "silhouette", "weight_silhouette")),
    }
    terms = {name: fn() for name, fn in compute.items() if w[name] != 0}
    return {**terms, "total": weighted_total(terms, w)}
