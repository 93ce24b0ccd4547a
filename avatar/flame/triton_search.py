"""Triton kernels of the FLAME searches: the closest triangle (:func:`avatar.flame.geometry.closest_triangles` on
CUDA) and the nearest vertex (:func:`avatar.flame.parts.nearest_vertex` on CUDA, GenHead's part fields).

Each program takes ``BLOCK_P`` points of one mesh and walks over all its triangles, keeping the smallest squared
distance and the first triangle that reaches it, so nothing of size ``points x triangles`` is ever stored (the
PyTorch search materialises ~60 such tensors per chunk). The per-pair maths is
:func:`avatar.flame.geometry.point_triangle_sq_dist` (pytorch3d's semantics, see that module), written with the
same operations in the same order; results match it to float32 rounding (the compiler may contract
multiply-adds), and the chosen triangle can differ only where two distances tie to within that rounding.

Like :mod:`avatar.render.triton_kernels`, it uses only Triton's built-in operations, so that it also runs under
the interpreter (``TRITON_INTERPRET=1``) in the CPU tests.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["closest_triangle_kernel", "nearest_vertex_kernel"]

EPS = 1e-8


@triton.jit
def _segment_sq_dist(px, py, pz, ax, ay, az, bx, by, bz):
    abx = bx - ax
    aby = by - ay
    abz = bz - az
    t_bot = abx * abx + aby * aby + abz * abz
    t_top = (px - ax) * abx + (py - ay) * aby + (pz - az) * abz
    small = t_bot < 1e-8
    t = tl.where(small, 0.0, t_top / tl.where(small, 1.0, t_bot))
    t = tl.minimum(tl.maximum(t, 0.0), 1.0)
    dx = px - (ax + t * abx)
    dy = py - (ay + t * aby)
    dz = pz - (az + t * abz)
    return dx * dx + dy * dy + dz * dz


@triton.jit
def _point_block(points_ptr, P, BLOCK_P: tl.constexpr):
    """This program's ``BLOCK_P`` points of ``(B, P, 3)`` float32 ``points``: batch index ``b`` (int64),
    offsets, mask and the coordinates (0 past ``P``)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask = offs < P
    point = points_ptr + b * P * 3 + offs.to(tl.int64) * 3
    px = tl.load(point, mask=mask, other=0.0)
    py = tl.load(point + 1, mask=mask, other=0.0)
    pz = tl.load(point + 2, mask=mask, other=0.0)
    return b, offs, mask, px, py, pz


@triton.jit
def _keep_nearer(dist, index, best, best_index):
    """The running minimum: ``dist`` replaces ``best`` (and ``index`` ``best_index``) where strictly smaller, so
    the first index reaching the minimum is kept."""
    better = dist < best
    return tl.where(better, dist, best), tl.where(better, index, best_index)


@triton.jit
def closest_triangle_kernel(points_ptr, tris_ptr, dist_ptr, index_ptr, P, F, min_area, BLOCK_P: tl.constexpr):
    """Grid ``(cdiv(P, BLOCK_P), B)``. ``points`` ``(B, P, 3)``, ``tris`` ``(B, F, 3, 3)`` corners, float32;
    writes squared distances ``(B, P)`` float32 and triangle indices ``(B, P)`` int64."""
    b, offs, mask, px, py, pz = _point_block(points_ptr, P, BLOCK_P)
    best = tl.full((BLOCK_P,), float("inf"), tl.float32)
    best_index = tl.full((BLOCK_P,), 0, tl.int32)
    tri = tris_ptr + b * F * 9
    for f in range(F):
        ax = tl.load(tri + f * 9)
        ay = tl.load(tri + f * 9 + 1)
        az = tl.load(tri + f * 9 + 2)
        bx = tl.load(tri + f * 9 + 3)
        by = tl.load(tri + f * 9 + 4)
        bz = tl.load(tri + f * 9 + 5)
        cx = tl.load(tri + f * 9 + 6)
        cy = tl.load(tri + f * 9 + 7)
        cz = tl.load(tri + f * 9 + 8)
        # plane: normal = (v2 - v0) x (v1 - v0), unit = normal / (|normal| + eps)
        e1x = cx - ax
        e1y = cy - ay
        e1z = cz - az
        e0x = bx - ax
        e0y = by - ay
        e0z = bz - az
        nx = e1y * e0z - e1z * e0y
        ny = e1z * e0x - e1x * e0z
        nz = e1x * e0y - e1y * e0x
        norm = tl.sqrt(nx * nx + ny * ny + nz * nz)
        ux = nx / (norm + 1e-8)
        uy = ny / (norm + 1e-8)
        uz = nz / (norm + 1e-8)
        t = (ax - px) * ux + (ay - py) * uy + (az - pz) * uz
        qx = px + t * ux
        qy = py + t * uy
        qz = pz + t * uz
        # barycentric coordinates of the projection (pytorch3d's BarycentricCoords3Forward)
        d00 = e0x * e0x + e0y * e0y + e0z * e0z
        d01 = e0x * e1x + e0y * e1y + e0z * e1z
        d11 = e1x * e1x + e1y * e1y + e1z * e1z
        wx = qx - ax
        wy = qy - ay
        wz = qz - az
        d20 = wx * e0x + wy * e0y + wz * e0z
        d21 = wx * e1x + wy * e1y + wz * e1z
        denom = d00 * d11 - d01 * d01 + 1e-8
        w1 = (d11 * d20 - d01 * d21) / denom
        w2 = (d00 * d21 - d01 * d20) / denom
        w0 = 1.0 - w1 - w2
        in_range = (w0 >= 0.0) & (w0 <= 1.0) & (w1 >= 0.0) & (w1 <= 1.0) & (w2 >= 0.0) & (w2 <= 1.0)
        # in range, area >= min_area and a non-degenerate normal (nested where: the interpreter cannot `&` a
        # vector with a scalar condition)
        inside = tl.where(norm / 2.0 >= min_area, tl.where(norm > 1e-8, in_range, False), False)
        edge = tl.minimum(
            tl.minimum(_segment_sq_dist(px, py, pz, ax, ay, az, bx, by, bz),
                       _segment_sq_dist(px, py, pz, ax, ay, az, cx, cy, cz)),
            _segment_sq_dist(px, py, pz, bx, by, bz, cx, cy, cz))
        dist = tl.where(inside, t * t, edge)
        best, best_index = _keep_nearer(dist, f, best, best_index)
    tl.store(dist_ptr + b * P + offs, best, mask=mask)
    tl.store(index_ptr + b * P + offs, best_index.to(tl.int64), mask=mask)


@triton.jit
def nearest_vertex_kernel(points_ptr, verts_ptr, dist_ptr, index_ptr, P, V, BLOCK_P: tl.constexpr):
    """Grid ``(cdiv(P, BLOCK_P), B)``. ``points`` ``(B, P, 3)``, ``verts`` ``(B, V, 3)``, float32; writes the
    smallest squared distance ``(dx^2 + dy^2) + dz^2`` ``(B, P)`` float32 and the first vertex reaching it ``(B, P)``
    int64 (the reference's operations in its order: launched without multiply-add contraction, the distances are
    bitwise the reference's, so the indices are too, ties included)."""
    b, offs, mask, px, py, pz = _point_block(points_ptr, P, BLOCK_P)
    best = tl.full((BLOCK_P,), float("inf"), tl.float32)
    best_index = tl.full((BLOCK_P,), 0, tl.int32)
    vert = verts_ptr + b * V * 3
    for v in range(V):
        dx = px - tl.load(vert + v * 3)
        dist = dx * dx
        dy = py - tl.load(vert + v * 3 + 1)
        dist = dist + dy * dy
        dz = pz - tl.load(vert + v * 3 + 2)
        dist = dist + dz * dz
        best, best_index = _keep_nearer(dist, v, best, best_index)
    tl.store(dist_ptr + b * P + offs, best, mask=mask)
    tl.store(index_ptr + b * P + offs, best_index.to(tl.int64), mask=mask)
