"""Triton kernel of GOHA's nearest-point lifting (:func:`avatar.models.goha.planes.fused_nearest_point_indices`).

Each program takes ``BLOCK_G`` grid cells of one batch element and walks over all ``N`` projected points, keeping
the smallest squared distance ``dx^2 + dy^2`` and the first point that reaches it: nothing of size
``cells x points`` is stored (the PyTorch path writes and reads a ``chunk x N`` distance block per ``cdist``: at
the released size 3 x 16384 x 16384 distances a frame).

The distance is the direct one, not ``torch.cdist``'s ``|a|^2 + |b|^2 - 2 a.b`` matrix product, so the chosen
point can differ from the reference only where two points are equally near to within float32 rounding (the
reference's own formula loses more there; see :func:`~avatar.models.goha.planes.nearest_point_indices`).

Like :mod:`avatar.render.triton_kernels`, it uses only Triton's built-in operations, so that it also runs under
the interpreter (``TRITON_INTERPRET=1``) in the CPU tests.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["nearest_point_kernel"]


@triton.jit
def nearest_point_kernel(grid_ptr, points_ptr, index_ptr, G, N, grid_batch_stride, BLOCK_G: tl.constexpr):
    """Grid ``(cdiv(G, BLOCK_G), B)``. ``grid`` ``(B or 1, G, 2)`` (``grid_batch_stride`` 0 for a shared grid),
    ``points`` ``(B, N, 2)``, float32; writes ``(B, G)`` int64 indices of the nearest point."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs = pid * BLOCK_G + tl.arange(0, BLOCK_G)
    mask = offs < G
    cell = grid_ptr + b * grid_batch_stride + offs.to(tl.int64) * 2
    gx = tl.load(cell, mask=mask, other=0.0)
    gy = tl.load(cell + 1, mask=mask, other=0.0)
    best = tl.full((BLOCK_G,), float("inf"), tl.float32)
    best_index = tl.full((BLOCK_G,), 0, tl.int32)
    point = points_ptr + b * N * 2
    for n in range(N):
        dx = gx - tl.load(point + n * 2)
        dy = gy - tl.load(point + n * 2 + 1)
        dist = dx * dx + dy * dy
        better = dist < best
        best = tl.where(better, dist, best)
        best_index = tl.where(better, n, best_index)
    tl.store(index_ptr + b * G + offs, best_index.to(tl.int64), mask=mask)
