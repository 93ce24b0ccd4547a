"""Point sets GPHM starts from: spheres, points on a mesh surface, and 3DGS's nearest-neighbour scale init."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from avatar.errors import InputError

__all__ = ["fibonacci_sphere", "front_cap", "knn_mean_sq_distance", "sample_surface"]


def fibonacci_sphere(n: int, radius: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, 3)`` nearly uniform points on a sphere of ``radius`` around the origin (golden-angle spiral)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - y * y).clamp(min=0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return (torch.stack([r * torch.cos(phi), y, r * torch.sin(phi)], dim=-1) * radius).to(dtype)


def front_cap(n: int, radius: float, half_angle_deg: float = 40.0, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(n, 3)`` points on the cap of a sphere around ``+z`` (where the face is): a stand-in for the canonical
    landmarks until the mean of the dataset's landmarks is set (paper 3.3)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    cos_max = math.cos(math.radians(half_angle_deg))
    z = 1.0 - (1.0 - cos_max) * i / n
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return (torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1) * radius).to(dtype)


def sample_surface(vertices: Tensor, faces: Tensor, num_points: int, *,
                   generator: torch.Generator | None = None) -> Tensor:
    """``num_points`` points uniformly on the surface of a triangle mesh (faces chosen by area, uniform
    barycentrics): ``vertices (V, 3)``, ``faces (F, 3)`` -> ``(num_points, 3)``."""
    if vertices.dim() != 2 or vertices.shape[1] != 3 or faces.dim() != 2 or faces.shape[1] != 3:
        raise InputError(f"a mesh is vertices (V, 3) and faces (F, 3), got {tuple(vertices.shape)} and "
                         f"{tuple(faces.shape)}")
    if num_points <= 0:
        raise InputError(f"num_points must be positive, got {num_points}")
    tri = vertices[faces.long()].to(torch.float64)  # (F, 3, 3)
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)
    if not bool(area.sum() > 0):
        raise InputError("the mesh has no area to sample points on")
    device = vertices.device
    face = torch.multinomial(area.cpu(), num_points, replacement=True, generator=generator).to(device)
    u, v = torch.rand(2, num_points, 1, generator=generator, dtype=torch.float64).to(device)
    fold = (u + v) > 1  # reflect into the triangle
    u, v = torch.where(fold, 1 - u, u), torch.where(fold, 1 - v, v)
    t = tri[face]
    return (t[:, 0] + u * (t[:, 1] - t[:, 0]) + v * (t[:, 2] - t[:, 0])).to(vertices.dtype)


def knn_mean_sq_distance(points: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """``(N,)`` mean squared distance of each point to its ``k`` nearest other points (3DGS's scale init uses
    ``log(sqrt(.))`` of it with ``k = 3``), computed in chunks of rows."""
    n = points.shape[0]
    if n < 2:
        raise InputError("the nearest-neighbour scale needs at least 2 points")
    k = min(k, n - 1)
    out = []
    for start in range(0, n, chunk):
        rows = points[start:start + chunk]
        d2 = torch.cdist(rows, points).square()
        d2[torch.arange(rows.shape[0]), torch.arange(start, start + rows.shape[0])] = float("inf")
        out.append(d2.topk(k, dim=-1, largest=False).values.mean(-1))
    return torch.cat(out)
