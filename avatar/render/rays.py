"""Pixel rays in the Portrait4D camera convention (camera looks down ``-z``, ``y`` up).

Pixel ``(row i, col j)`` of an ``R x R`` image is sampled at its centre, normalised to
``u = (j + 0.5) / R`` (x, to the right) and ``v = (i + 0.5) / R`` (y, downwards); ray index ``m = i R + j``
(row-major), so ``rays.reshape(B, R, R, ...)`` is an image. The point on the ``z = -1`` camera plane is
``((u - cx + cy s / fy - s v / fy) / fx, -(v - cy) / fy, -1)`` with skew ``s``; directions are unit length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pixel_uv", "sample_rays"]


def pixel_uv(
    resolution: int,
    batch_size: int,
    full_resolution: int | None = None,
    patch_offsets: Sequence[tuple[int, int]] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Normalised pixel-centre coordinates.

    Args:
        resolution: side ``R`` of the (patch) image that is rendered.
        batch_size: ``B``.
        full_resolution: side of the full image; defaults to ``R``. When larger, ``patch_offsets`` gives
            each batch element's ``(top, left)`` crop of size ``R`` in the full image (upstream patch mode).
        patch_offsets: ``B`` pairs ``(top, left)``; required iff ``full_resolution > resolution``.

    Returns:
        ``(B, R*R, 2)`` with ``[..., 0] = u`` (column, x) and ``[..., 1] = v`` (row, y), both in ``(0, 1)``.
    """
    full = resolution if full_resolution is None else full_resolution
    idx = torch.arange(full, dtype=dtype, device=device)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    grid = torch.stack((cols, rows)) * (1.0 / full) + (0.5 / full)  # (2, full, full): (u, v)
    if full > resolution:
        if patch_offsets is None or len(patch_offsets) != batch_size:
            raise ValueError("patch mode needs one (top, left) offset per batch element")
        crops = [grid[:, t : t + resolution, lft : lft + resolution] for t, lft in patch_offsets]
        grid = torch.stack(crops)
    else:
        grid = grid.unsqueeze(0).expand(batch_size, -1, -1, -1)
    return grid.reshape(batch_size, 2, -1).transpose(1, 2)


def sample_rays(
    cam2world: Tensor,
    intrinsics: Tensor,
    resolution: int,
    full_resolution: int | None = None,
    patch_offsets: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """World-space rays through the pixel centres (upstream ``RaySampler``).

    Args:
        cam2world: ``(B, 4, 4)`` camera-to-world matrices.
        intrinsics: ``(B, 3, 3)`` intrinsics normalised by the image size.
        resolution, full_resolution, patch_offsets: see :func:`pixel_uv`.

    Returns:
        ``origins`` ``(B, R*R, 3)`` (the camera centre, repeated) and unit ``directions`` ``(B, R*R, 3)``.
    """
    b = cam2world.shape[0]
    intrinsics = intrinsics.to(cam2world)
    uv = pixel_uv(resolution, b, full_resolution, patch_offsets, cam2world.device, cam2world.dtype)
    x_cam, y_cam = uv[..., 0], uv[..., 1]
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    z_cam = -torch.ones_like(x_cam)
    # Unproject onto the z = -1 plane; written as upstream does (depth factor -z_cam) for identical rounding.
    x_lift = -(x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    cam_points = torch.stack((x_lift, y_lift, z_cam, torch.ones_like(z_cam)), dim=-1)
    world_points = torch.bmm(cam2world, cam_points.transpose(1, 2)).transpose(1, 2)[..., :3]
    cam_pos = cam2world[:, :3, 3]
    directions = F.normalize(world_points - cam_pos[:, None, :], dim=2)
    origins = cam_pos.unsqueeze(1).repeat(1, directions.shape[1], 1)
    return origins, directions
