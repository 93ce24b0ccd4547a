"""Perceptual losses for training: ArcFace identity and LPIPS, differentiable with respect to the prediction.

Both take ``(B, 3, H, W)`` images in [-1, 1] (the generators' range; ``normalize=True``: in [0, 1]), keep their
network frozen and in eval mode (also under ``loss.train()``), and reduce with the mean over the batch
(``reduction="none"`` gives the ``(B,)`` values)::

    id_loss = IdentityLoss.from_pretrained(device="cuda")           # ArcFace iresnet-18 (arcface-r18)
    lp_loss = LPIPSLoss.from_pretrained("lpips-vgg", device="cuda")  # LPIPS v0.1, VGG16 trunk
    loss = lp_loss(fake, real) + 0.1 * id_loss(fake, real, target_landmarks=lm68)

* :func:`identity_loss` / :class:`IdentityLoss`: ``1 - cos(ArcFace(crop(pred)), ArcFace(crop(target)))``. The
  crops are the InsightFace 112x112 alignment of five of the 68 landmarks
  (:func:`~avatar.losses.arcface.align_faces`): each image with its own landmarks when both are given, both with the one set given otherwise
  (same-identity training pairs share the pose of the ground truth), or, with no landmarks, the images are
  already aligned crops (resized to the network's input size when they are not). The target's embedding carries
  no gradient.
* :func:`lpips_loss` / :class:`LPIPSLoss`: the LPIPS distance (:class:`avatar.losses.lpips.LPIPSNet`).

The CSIM and LPIPS metrics of ``eval`` run the same networks (``eval.metrics.csim`` / ``eval.metrics.lpips``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.losses.arcface import IResNet, align_faces

if TYPE_CHECKING:  # the lpips package (and torchvision) load only when LPIPS is used
    from avatar.losses.lpips import LPIPSNet

__all__ = ["IdentityLoss", "LPIPSLoss", "identity_loss", "lpips_loss"]

REDUCTIONS = ("mean", "none")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not one of {', '.join(map(repr, REDUCTIONS))}")
    return values.mean() if reduction == "mean" else values


def _check_pair(pred: Tensor, target: Tensor, what: str) -> None:
    if pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(f"{what}: expected pred of shape (B, 3, H, W), got {tuple(pred.shape)}")
    if target.shape[0] != pred.shape[0] or target.shape[1] != 3 or target.ndim != 4:
        raise ValueError(f"{what}: pred {tuple(pred.shape)} and target {tuple(target.shape)} do not pair up")


# ---------------------------------------------------------------------------------------------------------
# identity


def arcface_crops(images: Tensor, landmarks: Tensor | None, size: int) -> Tensor:
    """The network input of :func:`identity_loss`: aligned ``size`` crops (see the module docstring)."""
    if landmarks is not None:
        return align_faces(images, landmarks, size)
    if images.shape[-2:] != (size, size):
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return images


def identity_loss(
    network: nn.Module,
    pred: Tensor,
    target: Tensor,
    pred_landmarks: Tensor | None = None,
    target_landmarks: Tensor | None = None,
    *,
    normalize: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """``1 - cos(e_pred, e_target)`` of ArcFace embeddings of aligned crops (see the module docstring).

    Args:
        network: the identity network (:class:`~avatar.losses.arcface.IResNet`); its input size comes from
            ``network.config.input_size`` (112 otherwise).
        pred, target: ``(B, 3, H, W)`` in [-1, 1] (``normalize``: in [0, 1]); gradients flow into ``pred``.
        pred_landmarks, target_landmarks: ``(B, 68, 2)`` iBUG landmarks in pixels of the images; one of them
            aligns both images; neither: the images are aligned crops already.
        reduction: ``"mean"`` (a scalar) or ``"none"`` (``(B,)``).
    """
    _check_pair(pred, target, "identity_loss")
    size = int(getattr(getattr(network, "config", None), "input_size", 112))
    if normalize:
        pred, target = pred * 2 - 1, target * 2 - 1
    lm_pred = pred_landmarks if pred_landmarks is not None else target_landmarks
    lm_target = target_landmarks if target_landmarks is not None else pred_landmarks
    e_pred = network(arcface_crops(pred, lm_pred, size))
    with torch.no_grad():
        e_target = network(arcface_crops(target, lm_target, size))
    values = 1 - F.cosine_similarity(e_pred.float(), e_target.float(), dim=1, eps=1e-8)
    return _reduce(values, reduction)


class _FrozenLoss(nn.Module):
    """A loss around a frozen network that stays in eval mode under ``train()``."""

    network: nn.Module

    def train(self, mode: bool = True) -> _FrozenLoss:
        super().train(mode)
        self.network.eval()
        return self


class IdentityLoss(_FrozenLoss):
    """:func:`identity_loss` with its network: ``loss(pred, target, pred_landmarks=None, target_landmarks=None)``."""

    def __init__(self, network: IResNet, *, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        _reduce(torch.zeros(1), reduction)  # check it now
        self.network = network.requires_grad_(False).eval()
        self.normalize = normalize
        self.reduction = reduction

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, device: torch.device | str = "cpu",
                        local_dir: str | Path | None = None, **kwargs: Any) -> IdentityLoss:
        """The official ArcFace iresnet-18 (``arcface-r18``), or any name :meth:`IResNet.from_pretrained` takes."""
        return cls(IResNet.from_pretrained(name_or_path, device=device, local_dir=local_dir), **kwargs)

    def forward(self, pred: Tensor, target: Tensor, pred_landmarks: Tensor | None = None,
                target_landmarks: Tensor | None = None) -> Tensor:
        return identity_loss(self.network, pred, target, pred_landmarks, target_landmarks,
                             normalize=self.normalize, reduction=self.reduction)


# ---------------------------------------------------------------------------------------------------------
# LPIPS


def lpips_loss(network: nn.Module, pred: Tensor, target: Tensor, *, normalize: bool = False,
               reduction: str = "mean") -> Tensor:
    """The LPIPS distance of ``pred`` and ``target`` ``(B, 3, H, W)`` in [-1, 1] (``normalize``: in [0, 1]),
    mean over the batch (``reduction="none"``: ``(B,)``); gradients flow into both images."""
    _check_pair(pred, target, "lpips_loss")
    if pred.shape != target.shape:
        raise ValueError(f"lpips_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return _reduce(network(pred, target, normalize=normalize).reshape(pred.shape[0]), reduction)


class LPIPSLoss(_FrozenLoss):
    """:func:`lpips_loss` with its network: ``loss(pred, target)``."""

    def __init__(self, network: LPIPSNet, *, normalize: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        _reduce(torch.zeros(1), reduction)
        self.network = network.requires_grad_(False).eval()
        self.normalize = normalize
        self.reduction = reduction

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = "lpips-vgg", *, device: torch.device | str = "cpu",
                        local_dir: str | Path | None = None, **kwargs: Any) -> LPIPSLoss:
        """LPIPS v0.1 with the VGG16 trunk (``lpips-vgg``, the registry's training-loss LPIPS) unless another name is given
        (``lpips-alex``, a folder of :meth:`LPIPSNet.save_pretrained` ...)."""
        from avatar.losses.lpips import LPIPSNet

        return cls(LPIPSNet.from_pretrained(name_or_path, device=device, local_dir=local_dir), **kwargs)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        return lpips_loss(self.network, pred, target, normalize=self.normalize, reduction=self.reduction)
