"""From the toolkit's 25-number camera labels to the Gaussian rasteriser's cameras.

A label is ``cam2world`` (4x4, OpenGL-like camera: looks down ``-z``, ``y`` up) + intrinsics normalised by the
image size (:mod:`avatar.render.camera`). The rasteriser takes world-to-camera matrices in the OpenCV convention
(looks down ``+z``, ``y`` down) and intrinsics in pixels, pixel ``(row i, col j)`` centred at ``(j + 0.5, i + 0.5)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatar.errors import InputError
from avatar.render.camera import invert_rigid, split_label

__all__ = ["label_to_viewmat_K"]


def label_to_viewmat_K(label: Tensor, width: int, height: int | None = None) -> tuple[Tensor, Tensor]:  # noqa: N802
    """``(B, 25)`` labels -> ``viewmats (B, 4, 4)`` (world -> OpenCV camera) and ``Ks (B, 3, 3)`` in pixels for an
    image of ``width x height`` (``height`` defaults to ``width``).

    ``viewmat = diag(1, -1, -1, 1) @ inverse(cam2world)``; ``K = diag(W, H, 1) @ K_normalised`` (a normalised
    skew ``s`` becomes ``s W``: with ``y`` flipped, the label's ``u = cx + (fx x - s y) / Z`` is OpenCV's
    ``u = cx + (fx x' + s y') / z'``).

    Raises:
        InputError: the label is not ``(B, 25)`` (or longer), or the size is not positive.
    """
    if label.dim() != 2 or label.shape[-1] < 25:
        raise InputError(f"camera labels are (B, 25) [cam2world 16 + normalised intrinsics 9], got "
                         f"{tuple(label.shape)}")
    height = width if height is None else height
    if width <= 0 or height <= 0:
        raise InputError(f"the render size must be positive, got {width}x{height}")
    cam2world, intrinsics = split_label(label)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=label.dtype, device=label.device))
    viewmats = flip @ invert_rigid(cam2world)
    scale = torch.diag(torch.tensor([float(width), float(height), 1.0], dtype=label.dtype, device=label.device))
    ks = scale @ intrinsics
    return viewmats, ks
