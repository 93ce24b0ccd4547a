"""Output frames: network images to uint8, panels side by side, and image grids."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["image_grid", "side_by_side", "to_uint8"]


def to_uint8(images: Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` in ``[-1, 1]`` -> ``(N, H, W, 3)`` uint8 (the official ``x * 127.5 + 128``, clamped)."""
    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    """Concatenate ``(H, W, 3)`` uint8 images left to right, each resized to the height of the last one's size.

    The usual order is ``side_by_side(source, result, driving)``; panels are resized (Lanczos) to the size of
    ``panels[1]`` when there are several, else kept.
    """
    ref = panels[1] if len(panels) > 1 else panels[0]
    h, w = ref.shape[:2]
    out = [p if p.shape[:2] == (h, w) else np.asarray(Image.fromarray(p).resize((w, h), Image.LANCZOS))
           for p in panels]
    return np.concatenate(out, axis=1)


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
