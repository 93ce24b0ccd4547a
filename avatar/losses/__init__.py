"""Losses and the networks behind them, shared by training (``train/``) and the benchmark (``eval/``).

* :mod:`avatar.losses.arcface` - ArcFace iresnet-18 (``arcface-r18``) and the InsightFace five-point alignment:
  the identity loss and the CSIM metric
* :mod:`avatar.losses.lpips` - LPIPS v0.1 (``lpips-alex``, ``lpips-vgg``): the ``lpips`` package's network with
  the toolkit's weight loading
* :mod:`avatar.losses.inception` - the FID Inception (``fid-inception``), for the FID metric
* :mod:`avatar.losses.perceptual` - the loss functions training calls: :func:`identity_loss` /
  :class:`IdentityLoss` and :func:`lpips_loss` / :class:`LPIPSLoss`
* :mod:`avatar.losses.discriminator` - the training discriminator of Portrait4D and GenHead
  (:class:`DualDiscriminator`, official ``DualDiscriminatorDeform``) and :func:`filtered_resizing`
* :mod:`avatar.losses.adversarial` - its losses: :func:`generator_loss`, :func:`discriminator_loss`,
  :func:`r1_penalty` (per-input gammas), the blur of :func:`run_discriminator` and :func:`blur_sigma_schedule`
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avatar.losses.adversarial import (
    R1Penalty,
    blur_filter,
    blur_images,
    blur_sigma_schedule,
    discriminator_loss,
    generator_loss,
    r1_inputs,
    r1_penalty,
    run_discriminator,
)
from avatar.losses.arcface import ArcFaceConfig, IResNet, align_faces
from avatar.losses.discriminator import DiscriminatorConfig, DualDiscriminator, filtered_resizing
from avatar.losses.perceptual import IdentityLoss, LPIPSLoss, identity_loss, lpips_loss

if TYPE_CHECKING:
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet

__all__ = [
    "ArcFaceConfig",
    "DiscriminatorConfig",
    "DualDiscriminator",
    "IResNet",
    "IdentityLoss",
    "LPIPSConfig",
    "LPIPSLoss",
    "LPIPSNet",
    "R1Penalty",
    "align_faces",
    "blur_filter",
    "blur_images",
    "blur_sigma_schedule",
    "discriminator_loss",
    "filtered_resizing",
    "generator_loss",
    "identity_loss",
    "lpips_loss",
    "r1_inputs",
    "r1_penalty",
    "run_discriminator",
]


def __getattr__(name: str) -> Any:
    # LPIPS imports the lpips package and torchvision (about a second): only when asked for
    if name in ("LPIPSConfig", "LPIPSNet"):
        from avatar.losses import lpips

        return getattr(lpips, name)
    raise AttributeError(f"module 'avatar.losses' has no attribute {name!r}")
