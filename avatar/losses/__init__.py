"""Losses and the networks behind them, shared by training (``train/``) and the benchmark (``eval/``).

* :mod:`avatar.losses.arcface` - ArcFace iresnet-18 (``arcface-r18``) and the InsightFace five-point alignment:
  the identity loss and the CSIM metric
* :mod:`avatar.losses.lpips` - LPIPS v0.1 (``lpips-alex``, ``lpips-vgg``): the ``lpips`` package's network with
  the toolkit's weight loading
* :mod:`avatar.losses.inception` - the FID Inception (``fid-inception``), for the FID metric
* :mod:`avatar.losses.perceptual` - the loss functions training calls: :func:`identity_loss` /
  :class:`IdentityLoss` and :func:`lpips_loss` / :class:`LPIPSLoss`
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avatar.losses.arcface import ArcFaceConfig, IResNet, align_faces
from avatar.losses.perceptual import IdentityLoss, LPIPSLoss, identity_loss, lpips_loss

if TYPE_CHECKING:
    from avatar.losses.lpips import LPIPSConfig, LPIPSNet

__all__ = [
    "ArcFaceConfig",
    "IResNet",
    "IdentityLoss",
    "LPIPSConfig",
    "LPIPSLoss",
    "LPIPSNet",
    "align_faces",
    "identity_loss",
    "lpips_loss",
]


def __getattr__(name: str) -> Any:
    # LPIPS imports the lpips package and torchvision (about a second): only when asked for
    if name in ("LPIPSConfig", "LPIPSNet"):
        from avatar.losses import lpips

        return getattr(lpips, name)
    raise AttributeError(f"module 'avatar.losses' has no attribute {name!r}")
