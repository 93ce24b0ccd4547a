"""Image grids of a training run, saved as PNG (the official ``reals.png`` / ``fakes{kimg}.png`` snapshots)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avatar.io.files import create_partial

__all__ = ["image_grid", "save_image_grid"]


def image_grid(images: torch.Tensor, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
               padding: int = 0) -> np.ndarray:
    """``(N, C, H, W)`` images (C = 1, 3 or 4; float in ``value_range``, or uint8) -> one ``(rows*H, nrow*W, C)``
    uint8 array, row by row; ``nrow`` (images per row) defaults to ``ceil(sqrt(N))``."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"expected (N, C, H, W) images with C in (1, 3, 4), got shape {tuple(images.shape)}")
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        low, high = value_range
        images = ((images.float() - low) * (255 / (high - low))).round().clamp(0, 255).to(torch.uint8)
    n, c, h, w = images.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * (h + padding) - padding, nrow * (w + padding) - padding, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * (h + padding):r * (h + padding) + h, col * (w + padding):col * (w + padding) + w] = images[i]
    return grid.permute(1, 2, 0).numpy()


def save_image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Save :func:`image_grid` of ``images`` as a PNG at ``path`` (written under a partial name, then moved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, nrow, value_range)
    partial = create_partial(path)
    try:
        Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(partial, format="PNG")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path
