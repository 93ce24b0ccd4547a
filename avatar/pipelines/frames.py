"""Output frames: network images to uint8, and panels side by side."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = ["side_by_side", "to_uint8"]


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
