"""Marching tetrahedra in plain PyTorch (the mesh extraction of DMTet, Shen et al. 2021), on a cube grid split
into tetrahedra.

* :func:`grid_points` - the ``(R + 1)^3`` corner positions of an ``R^3`` cube grid over ``[-bound, bound]^3``;
* :func:`grid_tetrahedra` - the Kuhn (Freudenthal) split of cubes into 6 tetrahedra along the main diagonal:
  neighbouring cubes split their shared faces the same way, so the extracted surface is watertight;
* :func:`surface_cells` - the cubes whose corners' SDF values change sign (only those can hold surface);
* :func:`marching_tetrahedra` - per tetrahedron, one triangle (1 or 3 corners inside) or two (2 inside), on
  vertices interpolated linearly along the crossing edges: ``p = a + t (b - a)``, ``t = s_a / (s_a - s_b)``.
  Differentiable with respect to the corner positions, SDF values and features (the topology is not).

Triangles are wound counter-clockwise seen from outside (normals point towards increasing SDF).
Inside is ``sdf < 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import torch
from torch import Tensor

from avatar.errors import InputError

__all__ = ["ExtractedMesh", "grid_points", "grid_tetrahedra", "marching_tetrahedra", "surface_cells"]

# the 6 edges of a tetrahedron (corner pairs)
_TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))


def _triangle_table() -> tuple[Tensor, Tensor]:
    """``(16, 2, 3)`` edge slots of up to two triangles per inside-pattern (bit k: corner k inside), and counts."""
    edge_slot = {frozenset(e): i for i, e in enumerate(_TET_EDGES)}
    table = torch.full((16, 2, 3), -1, dtype=torch.long)
    counts = torch.zeros(16, dtype=torch.long)
    for pattern in range(16):
        inside = [k for k in range(4) if pattern >> k & 1]
        outside = [k for k in range(4) if not pattern >> k & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[pattern, 0] = torch.tensor([edge_slot[frozenset((lone, o))] for o in others])
            counts[pattern] = 1
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # the crossing edges ac, ad, bd, bc form a cycle around the quad; split it along ac-bd
            ac, ad, bd, bc = (edge_slot[frozenset(p)] for p in ((a, c), (a, d), (b, d), (b, c)))
            table[pattern, 0] = torch.tensor([ac, ad, bd])
            table[pattern, 1] = torch.tensor([ac, bd, bc])
            counts[pattern] = 2
    return table, counts


_TRI_TABLE, _TRI_COUNT = _triangle_table()


def grid_points(resolution: int, bound: float, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """``((R + 1)^3, 3)`` corners of an ``R^3`` grid over ``[-bound, bound]^3``; corner ``(i, j, k)`` (along x, y,
    z) has index ``(i (R + 1) + j) (R + 1) + k``."""
    axis = torch.linspace(-bound, bound, resolution + 1, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)


def _kuhn_offsets() -> Tensor:
    """``(6, 4, 3)`` corner offsets of the 6 tetrahedra of a unit cube: paths 0 -> e_a -> e_a + e_b -> 111."""
    tets = []
    for perm in permutations(range(3)):
        corner = [0, 0, 0]
        path = [tuple(corner)]
        for axis in perm:
            corner[axis] = 1
            path.append(tuple(corner))
        tets.append(path)
    return torch.tensor(tets, dtype=torch.long)


_KUHN = _kuhn_offsets()


def grid_tetrahedra(resolution: int, cells: Tensor | None = None) -> Tensor:
    """``(6 M, 4)`` corner indices (into :func:`grid_points`) of the tetrahedra of ``cells (M, 3)`` (integer cube
    coordinates in ``[0, R)``; default: all ``R^3`` cubes)."""
    if cells is None:
        axis = torch.arange(resolution)
        cells = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    corners = cells[:, None, None, :] + _KUHN.to(cells.device)[None]  # (M, 6, 4, 3)
    n = resolution + 1
    index = (corners[..., 0] * n + corners[..., 1]) * n + corners[..., 2]
    return index.reshape(-1, 4)


def surface_cells(sdf: Tensor) -> Tensor:
    """``sdf ((R + 1)^3,)`` or ``(R + 1, R + 1, R + 1)`` on :func:`grid_points` -> ``(M, 3)`` cubes with corners on
    both sides of the surface (inside: ``sdf < 0``)."""
    n = round(sdf.numel() ** (1 / 3))
    if n**3 != sdf.numel() or n < 2:
        raise InputError(f"a grid SDF has (R + 1)^3 values, got {sdf.numel()}")
    inside = (sdf.reshape(n, n, n) < 0).to(torch.int8)
    count = torch.zeros((n - 1,) * 3, dtype=torch.int8, device=sdf.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                count += inside[dx:n - 1 + dx, dy:n - 1 + dy, dz:n - 1 + dz]
    return torch.nonzero((count > 0) & (count < 8))


@dataclass
class ExtractedMesh:
    """A triangle mesh from :func:`marching_tetrahedra`."""

    vertices: Tensor
    """``(V, 3)``."""
    faces: Tensor
    """``(F, 3)`` long, counter-clockwise seen from outside."""
    features: Tensor | None
    """``(V, C)`` interpolated like the positions, or ``None``."""


def marching_tetrahedra(vertices: Tensor, tets: Tensor, sdf: Tensor, features: Tensor | None = None, *,
                        inside: Tensor | None = None) -> ExtractedMesh:
    """Extract the ``sdf = 0`` surface of a tetrahedral mesh.

    Args:
        vertices: ``(V, 3)`` corner positions.
        tets: ``(T, 4)`` corner indices.
        sdf: ``(V,)`` signed distances (negative inside).
        features: optional ``(V, C)`` per-corner features, interpolated onto the surface vertices.
        inside: optional ``(V,)`` bool deciding the topology (default ``sdf < 0``); pass the signs a first,
            gradient-free evaluation chose, so a second evaluation's rounding cannot change which tets are cut.

    Returns:
        :class:`ExtractedMesh`, one vertex per cut edge (shared by the tetrahedra around it).
    """
    if vertices.dim() != 2 or vertices.shape[1] != 3 or tets.dim() != 2 or tets.shape[1] != 4:
        raise InputError(f"marching_tetrahedra needs vertices (V, 3) and tets (T, 4), got {tuple(vertices.shape)} "
                         f"and {tuple(tets.shape)}")
    sdf = sdf.reshape(-1)
    if sdf.shape[0] != vertices.shape[0]:
        raise InputError(f"marching_tetrahedra: {sdf.shape[0]} SDF values for {vertices.shape[0]} vertices")
    device = vertices.device
    inside = (sdf < 0) if inside is None else inside.reshape(-1).bool()
    occ = inside[tets]  # (T, 4)
    count = occ.sum(-1)
    keep = (count > 0) & (count < 4)
    tets, occ = tets[keep], occ[keep]
    empty_feat = None if features is None else features[:0]
    if tets.shape[0] == 0:
        return ExtractedMesh(vertices[:0], torch.zeros(0, 3, dtype=torch.long, device=device), empty_feat)

    edge_pairs = torch.tensor(_TET_EDGES, dtype=torch.long, device=device)
    edges = tets[:, edge_pairs]  # (T, 6, 2) global corner ids
    edges = torch.sort(edges, dim=-1).values
    unique, slot_to_edge = torch.unique(edges.reshape(-1, 2), dim=0, return_inverse=True)
    crossing = inside[unique[:, 0]] != inside[unique[:, 1]]
    edge_to_vertex = torch.full((unique.shape[0],), -1, dtype=torch.long, device=device)
    edge_to_vertex[crossing] = torch.arange(int(crossing.sum()), device=device)
    cut = unique[crossing]  # (M, 2)

    sa, sb = sdf[cut[:, 0]], sdf[cut[:, 1]]
    denom = sa - sb
    denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
    t = (sa / denom).clamp(0.0, 1.0).unsqueeze(-1)  # (M, 1)
    pa, pb = vertices[cut[:, 0]], vertices[cut[:, 1]]
    out_vertices = pa + t * (pb - pa)
    out_features = None
    if features is not None:
        fa, fb = features[cut[:, 0]], features[cut[:, 1]]
        out_features = fa + t * (fb - fa)

    tet_vertex = edge_to_vertex[slot_to_edge].reshape(-1, 6)  # (T, 6) surface vertex of each edge slot (or -1)
    pattern = (occ.long() * (2 ** torch.arange(4, device=device))).sum(-1)
    table, counts = _TRI_TABLE.to(device), _TRI_COUNT.to(device)
    tri_slots = table[pattern]  # (T, 2, 3)
    faces = [torch.gather(tet_vertex, 1, tri_slots[:, 0]),  # every kept tet has a first triangle
             torch.gather(tet_vertex[counts[pattern] == 2], 1, tri_slots[counts[pattern] == 2, 1])]
    owner = torch.cat([torch.arange(tets.shape[0], device=device),
                       torch.nonzero(counts[pattern] == 2).reshape(-1)])
    faces_t = torch.cat(faces, dim=0)

    # wind every triangle so its normal points from the tet's inside corners to its outside corners; decided on
    # the edge midpoints (the same winding as any crossing inside the edges), so that a triangle made degenerate by
    # SDF values of exactly 0 at grid corners still gets its neighbours' winding
    with torch.no_grad():
        corner_pos = vertices[tets[owner]]  # (F, 4, 3)
        w_in = occ[owner].to(corner_pos.dtype).unsqueeze(-1)
        towards_out = ((corner_pos * (1 - w_in)).sum(1) / (1 - w_in).sum(1)
                       - (corner_pos * w_in).sum(1) / w_in.sum(1))
        tri = (0.5 * (pa + pb))[faces_t]
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
        flip = (normal * towards_out).sum(-1) < 0
    faces_t = torch.where(flip.unsqueeze(-1), faces_t[:, [0, 2, 1]], faces_t)
    return ExtractedMesh(out_vertices, faces_t, out_features)
