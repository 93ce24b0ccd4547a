"""Point-to-triangle distances and closest-triangle search in plain PyTorch.

This replaces ``pytorch3d._C.point_face_dist_forward`` as Portrait4D calls it (one mesh per batch element,
``min_triangle_area = 5e-3``), with the same per-pair definition:

* the point ``p`` is projected on the triangle's plane (normal ``(v2 - v0) x (v1 - v0)``, normalised with a
  ``+1e-8`` in the denominator);
* if the triangle's area is at least ``min_triangle_area``, its normal is not degenerate and the projection's
  barycentric coordinates (denominator ``+1e-8``) all lie in ``[0, 1]``, the distance is the squared distance
  to the plane;
* otherwise it is the smallest squared distance to the three edges (segments; a segment shorter than
  ``1e-8`` squared is treated as its first end point).

Note the consequence of the area threshold: for a triangle smaller than ``min_triangle_area`` a point above
its interior gets the distance to the nearest edge, not to the plane. The closest triangle is the first one
with the smallest distance (``torch.min`` semantics); pytorch3d's CUDA reduction may break exact ties
differently.

Shapes: ``B`` batch, ``P`` points, ``V`` vertices, ``F`` faces. Distances are squared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_MIN_TRIANGLE_AREA",
    "closest_point_barycentric",
    "closest_triangles",
    "default_search",
    "face_normals",
    "fused_closest_triangles",
    "plane_barycentric",
    "point_segment_sq_dist",
    "point_to_face_coord",
    "point_triangle_sq_dist",
]

DEFAULT_MIN_TRIANGLE_AREA = 5e-3
_EPS = 1e-8


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def _segment_t(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Clamped parameter ``t in [0, 1]`` of the point of segment ``a + t (b - a)`` closest to ``p``."""
    ab = b - a
    t_bot = _dot(ab, ab)
    t_top = _dot(p - a, ab)
    small = t_bot < _EPS
    t = torch.where(small, torch.zeros_like(t_top), t_top / torch.where(small, torch.ones_like(t_bot), t_bot))
    return t.clamp(0.0, 1.0)


def point_segment_sq_dist(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Squared distance from ``p (..., 3)`` to segments ``[a, b]`` (``(..., 3)``, broadcast) -> ``(...)``."""
    t = _segment_t(p, a, b)
    diff = p - (a + t.unsqueeze(-1) * (b - a))
    return _dot(diff, diff)


def _bary_plane_pt3d(p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor) -> Tensor:
    """pytorch3d ``BarycentricCoords3Forward``: ``(w0, w1, w2)`` with ``+1e-8`` in the denominator."""
    e0, e1, e2 = v1 - v0, v2 - v0, p - v0
    d00, d01, d11 = _dot(e0, e0), _dot(e0, e1), _dot(e1, e1)
    d20, d21 = _dot(e2, e0), _dot(e2, e1)
    denom = d00 * d11 - d01 * d01 + _EPS
    w1 = (d11 * d20 - d01 * d21) / denom
    w2 = (d00 * d21 - d01 * d20) / denom
    return torch.stack([1.0 - w1 - w2, w1, w2], dim=-1)


def _projection(p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Signed plane offset ``t``, projected point ``p0`` and ``|normal|`` (un-normalised)."""
    normal = torch.cross(v2 - v0, v1 - v0, dim=-1)
    norm_normal = torch.linalg.vector_norm(normal, dim=-1)
    unit = normal / (norm_normal.unsqueeze(-1) + _EPS)
    t = _dot(v0 - p, unit)
    return t, p + t.unsqueeze(-1) * unit, norm_normal


def _inside(p0: Tensor, v0: Tensor, v1: Tensor, v2: Tensor, norm_normal: Tensor, min_area: float) -> Tensor:
    bary = _bary_plane_pt3d(p0, v0, v1, v2)
    in_range = ((bary >= 0.0) & (bary <= 1.0)).all(dim=-1)
    # area = |(v1 - v0) x (v2 - v0)| / 2 = |normal| / 2
    return in_range & (norm_normal / 2.0 >= min_area) & (norm_normal > _EPS)


def _edge_sq_dists(p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor) -> Tensor:
    """``(..., 3)`` squared distances to edges (v0 v1), (v0 v2), (v1 v2)."""
    return torch.stack(
        [point_segment_sq_dist(p, v0, v1), point_segment_sq_dist(p, v0, v2), point_segment_sq_dist(p, v1, v2)],
        dim=-1,
    )


def point_triangle_sq_dist(
    p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor, min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA
) -> Tensor:
    """Squared point-triangle distance with pytorch3d semantics (see module doc).

    Args:
        p: ``(..., 3)`` points; v0, v1, v2: ``(..., 3)`` triangle corners (all broadcast together).

    Returns:
        ``(...)`` squared distances.
    """
    t, p0, norm_normal = _projection(p, v0, v1, v2)
    inside = _inside(p0, v0, v1, v2, norm_normal, min_triangle_area)
    edge = _edge_sq_dists(p, v0, v1, v2).amin(dim=-1)
    return torch.where(inside, t * t, edge)


def closest_point_barycentric(
    p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor, min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA
) -> Tensor:
    """Barycentric coordinates ``(..., 3)`` of the point that realises :func:`point_triangle_sq_dist`.

    Inside: those of the plane projection; otherwise the closest point on the nearest edge (one coordinate
    is 0). With ``min_triangle_area = 0`` this is the exact closest point of the triangle.
    """
    _, p0, norm_normal = _projection(p, v0, v1, v2)
    inside = _inside(p0, v0, v1, v2, norm_normal, min_triangle_area)
    edge = _edge_sq_dists(p, v0, v1, v2).argmin(dim=-1)  # first minimum, like the reference's comparisons
    t01, t02, t12 = _segment_t(p, v0, v1), _segment_t(p, v0, v2), _segment_t(p, v1, v2)
    zero = torch.zeros_like(t01)
    candidates = torch.stack(
        [torch.stack([1 - t01, t01, zero], -1), torch.stack([1 - t02, zero, t02], -1),
         torch.stack([zero, 1 - t12, t12], -1)], dim=-2)  # (..., 3 edges, 3)
    on_edge = torch.gather(candidates, -2, edge[..., None, None].expand(*edge.shape, 1, 3)).squeeze(-2)
    return torch.where(inside.unsqueeze(-1), _bary_plane_pt3d(p0, v0, v1, v2), on_edge)


def _as_batched_faces(faces: Tensor, batch: int) -> Tensor:
    return faces.unsqueeze(0).expand(batch, -1, -1) if faces.dim() == 2 else faces


def nearest_in_chunk(p: Tensor, v0: Tensor, v1: Tensor, v2: Tensor, min_triangle_area: float) -> tuple[Tensor, Tensor]:
    """Smallest :func:`point_triangle_sq_dist` of points ``(B, n, 1, 3)`` over triangles ``(B, 1, F, 3)`` and its
    triangle index: ``(B, n)``, ``(B, n)``. One chunk of :func:`closest_triangles` (the unit ``torch.compile``
    fuses)."""
    return point_triangle_sq_dist(p, v0, v1, v2, min_triangle_area).min(dim=2)


@torch.no_grad()
def fused_closest_triangles(points: Tensor, verts: Tensor, faces: Tensor,
                            min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA) -> tuple[Tensor, Tensor]:
    """:func:`closest_triangles` by the Triton kernel of :mod:`avatar.flame.triton_search` (CUDA, or CPU under
    Triton's interpreter): one pass over the triangles per block of points, nothing of size points x
    triangles in memory. Same arguments (``faces`` ``(F, 3)`` or ``(B, F, 3)``) and results."""
    from avatar.flame import triton_search

    batch, num_points = points.shape[:2]
    faces = _as_batched_faces(faces, batch)
    tris = verts.float()[torch.arange(batch, device=verts.device)[:, None, None], faces].contiguous()  # (B, F, 3, 3)
    dists = torch.empty(batch, num_points, device=points.device)
    idxs = torch.empty(batch, num_points, dtype=torch.long, device=points.device)
    block = 128
    grid = (-(-num_points // block), batch)
    triton_search.closest_triangle_kernel[grid](points.float().contiguous(), tris, dists, idxs, num_points,
                                                faces.shape[1], float(min_triangle_area), BLOCK_P=block)
    return dists, idxs


def default_search(device: torch.device | str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The closest-triangle search for ``device``: the Triton kernel where it runs (CUDA with Triton), else the
    chunked PyTorch search :func:`nearest_in_chunk`."""
    from avatar.render.fused import fused_available

    return fused_closest_triangles if fused_available(device) else nearest_in_chunk


@torch.no_grad()
def closest_triangles(
    points: Tensor,
    verts: Tensor,
    faces: Tensor,
    min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA,
    max_pairs: int | None = None,
    search: Callable[..., tuple[Tensor, Tensor]] = nearest_in_chunk,
) -> tuple[Tensor, Tensor]:
    """Closest triangle of each point (equivalent to ``point_face_dist_forward``, one mesh per item).

    Args:
        points: ``(B, P, 3)``.
        verts: ``(B, V, 3)``.
        faces: ``(F, 3)`` or ``(B, F, 3)`` int64 vertex indices.
        min_triangle_area: see module doc (Portrait4D: 5e-3).
        max_pairs: at most this many point-triangle pairs (over the whole batch) are evaluated at once (memory
            bound; about ``max_pairs * 100`` bytes of temporaries); ``None``: 2^22 on the CPU, 2^25 on a GPU.
        search: the per-chunk search (:func:`nearest_in_chunk`, or a compiled version of it), or
            :func:`fused_closest_triangles` (the Triton kernel: no chunks; see :func:`default_search`).

    Returns:
        squared distances ``(B, P)`` and face indices ``(B, P)`` (int64, local to each mesh).
    """
    batch, num_points = points.shape[:2]
    faces = _as_batched_faces(faces, batch)
    if search is fused_closest_triangles:
        return fused_closest_triangles(points, verts, faces, min_triangle_area)
    if max_pairs is None:  # GPUs have room for larger chunks: fewer, longer kernels
        max_pairs = 1 << 25 if points.is_cuda else 1 << 22
    chunk = max(1, max_pairs // max(1, batch * faces.shape[1]))
    dists = points.new_empty(batch, num_points)
    idxs = torch.empty(batch, num_points, dtype=torch.long, device=points.device)
    tris = verts[torch.arange(batch, device=verts.device)[:, None, None], faces]  # (B, F, 3, 3)
    v0, v1, v2 = (tris[:, None, :, k] for k in range(3))  # (B, 1, F, 3)
    for start in range(0, num_points, chunk):
        p = points[:, start:start + chunk, None]  # (B, n, 1, 3)
        best, arg = search(p, v0, v1, v2, min_triangle_area)  # (B, n)
        dists[:, start:start + chunk] = best
        idxs[:, start:start + chunk] = arg
    return dists, idxs


def plane_barycentric(points: Tensor, tris: Tensor) -> Tensor:
    """Unclamped barycentric coordinates of the orthogonal projection of ``points`` on the triangles' planes.

    The formula of Portrait4D's ``get_barycentric`` (determinant clamped to ``>= 1e-12``, no epsilon added).

    Args:
        points: ``(..., 3)``; tris: ``(..., 3, 3)`` corners.

    Returns:
        ``(..., 3)``; may be negative or above 1 when the projection falls outside the triangle.
    """
    v1, v2, v3 = tris[..., 0, :], tris[..., 1, :], tris[..., 2, :]
    vq = points - v1
    r31, r21 = v3 - v1, v2 - v1
    r31r31, r21r21, r21r31 = _dot(r31, r31), _dot(r21, r21), _dot(r21, r31)
    r31vq, r21vq = _dot(r31, vq), _dot(r21, vq)
    d = torch.clamp(r31r31 * r21r21 - r21r31**2, 1e-12)
    bary3 = (r21r21 * r31vq - r21r31 * r21vq) / d
    bary2 = (r31r31 * r21vq - r21r31 * r31vq) / d
    return torch.stack([1.0 - bary2 - bary3, bary2, bary3], dim=-1)


def face_normals(tris: Tensor) -> Tensor:
    """Unit normals ``(..., 3)`` of triangles ``(..., 3, 3)``: ``normalize((v1 - v0) x (v2 - v0))``."""
    normals = torch.cross(tris[..., 1, :] - tris[..., 0, :], tris[..., 2, :] - tris[..., 0, :], dim=-1)
    return torch.nn.functional.normalize(normals, dim=-1)


@torch.no_grad()
def point_to_face_coord(
    points: Tensor,
    verts: Tensor,
    faces: Tensor,
    min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA,
    max_pairs: int | None = None,
    search: Callable[..., tuple[Tensor, Tensor]] = nearest_in_chunk,
) -> tuple[Tensor, Tensor, Tensor]:
    """Portrait4D's ``point_to_face_coord`` without pytorch3d.

    Args:
        points: ``(B, P, 3)``; verts: ``(B, V, 3)``; faces: ``(F, 3)`` or ``(B, F, 3)``.

    Returns:
        squared distances ``(B, P)``, closest face indices ``(B, P)`` and the *plane-projection*
        barycentric coordinates ``(B, P, 3)`` on that face (:func:`plane_barycentric`, unclamped, as the
        reference; use :func:`closest_point_barycentric` for the clamped closest point).
    """
    dists, idxs = closest_triangles(points, verts, faces, min_triangle_area, max_pairs, search)
    faces_b = _as_batched_faces(faces, points.shape[0])
    tri_idx = torch.gather(faces_b, 1, idxs.unsqueeze(-1).expand(-1, -1, 3))  # (B, P, 3)
    tris = torch.gather(verts, 1, tri_idx.reshape(points.shape[0], -1, 1).expand(-1, -1, 3))
    tris = tris.reshape(*idxs.shape, 3, 3)
    return dists, idxs, plane_barycentric(points, tris)
