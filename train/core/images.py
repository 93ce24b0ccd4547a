"""Image grids of a training run, saved as PNG (the official ``reals.png`` / ``fakes{kimg}.png`` snapshots)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image

from avatar.io.files import create_partial
from avatar.pipelines.frames import image_grid

__all__ = ["image_grid", "save_image_grid"]


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
