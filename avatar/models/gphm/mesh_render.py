"""Differentiable rendering of the guiding mesh in plain PyTorch (paper 3.2: "we render the mesh into a 32-channel
feature map and a mask through differentiable rasterisation").

Visibility comes from the toolkit's rasteriser (:func:`avatar.render.rasterize.rasterize_mesh`: which face is seen
at each pixel centre, piecewise constant, no gradient). On top of it this module adds the two gradient paths a
mesh needs to learn its geometry from images:

* **Interior**: the barycentrics of each covered pixel in its face are recomputed with autograd from the
  projected vertices (perspective-correct), so interpolated features and depth are differentiable w.r.t. the
  vertex positions, not only w.r.t. the vertex features.
* **Silhouette** (an edge antialiasing step in the spirit of nvdiffrast's ``antialias``; our own formulation):
  for every pair of horizontally or vertically adjacent pixels of which exactly one is covered, the covered
  pixel's face is extended (its screen barycentrics are linear) to find where its silhouette edge crosses the
  segment between the two pixel centres, at fraction ``t`` from the covered centre (``t = w_k(A) / (w_k(A) -
  w_k(B))``, ``k`` the silhouette edge (exactly one front-facing face on it) that the uncovered centre ``B`` lies
  furthest beyond; pairs whose face has no such edge are skipped: the silhouette is on a neighbouring face). The pixel-wide box around the
  boundary then covers ``t - 1/2`` of the uncovered pixel (when ``t > 1/2``: it gains coverage and the face's
  feature) or leaves ``1/2 - t`` of the covered pixel uncovered (when ``t < 1/2``: it loses coverage towards the
  background). The mask and the features are differentiable w.r.t. ``t``, hence w.r.t. the silhouette's
  vertices, so a silhouette loss can move the boundary. A boundary crossed by both horizontal and vertical pairs
  would count twice (moving an edge of normal ``n`` by ``d`` changes the horizontal pairs' coverage by
  ``d |edge|`` and the vertical pairs' by ``d |edge|`` again), so each pair's change is weighted by its axis'
  share ``|n_x| / (|n_x| + |n_y|)`` (``|n_y| / ...`` for vertical pairs): the mask's total changes by
  ``d |edge|``, the area the edge sweeps, at every orientation.

Camera: world -> camera ``viewmats (B, 4, 4)`` in the OpenCV convention and pixel intrinsics ``Ks (B, 3, 3)``, as
for the Gaussian rasteriser (:func:`avatar.render.gaussians.rasterize_gaussians`), so both GPHM stages take the
same cameras; they are converted here to the OpenGL camera space and normalised intrinsics of the rasteriser.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avatar.errors import InputError
from avatar.render.rasterize import ndc_pixel_centers, project_to_ndc, rasterize_mesh

__all__ = ["MeshFeatureRender", "render_mesh_features"]

_OPENCV_TO_OPENGL = (1.0, -1.0, -1.0)


@dataclass
class MeshFeatureRender:
    """What :func:`render_mesh_features` returns (channels first)."""

    features: Tensor
    """``(B, C, H, W)`` interpolated vertex features, background 0, antialiased at the silhouette."""
    mask: Tensor
    """``(B, 1, H, W)`` coverage in [0, 1] (hard inside, fractional at the silhouette; differentiable there)."""
    depth: Tensor
    """``(B, 1, H, W)`` camera depth ``z`` of the visible surface, 0 for background (differentiable inside)."""
    pix_to_face: Tensor
    """``(B, H, W)`` long index of the visible face, -1 for background."""


def _edge(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def _screen_barycentrics(px: Tensor, py: Tensor, tri: Tensor) -> Tensor:
    """Screen-space (affine) barycentrics ``(M, 3)`` of points ``(px, py) (M,)`` in triangles ``tri (M, 3, >=2)``;
    outside points get negative entries (the face's linear extension)."""
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    x1, y1 = tri[:, 1, 0], tri[:, 1, 1]
    x2, y2 = tri[:, 2, 0], tri[:, 2, 1]
    area = _edge(x2, y2, x0, y0, x1, y1)
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    w0 = _edge(px, py, x1, y1, x2, y2) / area
    w1 = _edge(px, py, x2, y2, x0, y0) / area
    w2 = _edge(px, py, x0, y0, x1, y1) / area
    return torch.stack([w0, w1, w2], dim=-1)


def _antialias_pairs(covered: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Flat pixel indices ``(A, B)`` of adjacent pairs along ``dim`` (2: rows, horizontal neighbours; 1: columns)
    where ``A`` is covered and ``B`` is not."""
    b, h, w = covered.shape
    index = torch.arange(b * h * w, device=covered.device).view(b, h, w)
    if dim == 2:
        first, second = covered[:, :, :-1], covered[:, :, 1:]
        i_first, i_second = index[:, :, :-1], index[:, :, 1:]
    else:
        first, second = covered[:, :-1, :], covered[:, 1:, :]
        i_first, i_second = index[:, :-1, :], index[:, 1:, :]
    a = torch.cat([i_first[first & ~second], i_second[second & ~first]])
    bb = torch.cat([i_second[first & ~second], i_first[second & ~first]])
    return a, bb


def _face_adjacency(faces: Tensor) -> tuple[Tensor, Tensor]:
    """``edge_id (F, 3)``: the undirected edge opposite corner ``k`` of each face; ``neighbour (F, 3)``: the other
    face on that edge (-1 on an open boundary)."""
    slots = torch.stack([faces[:, [1, 2]], faces[:, [2, 0]], faces[:, [0, 1]]], dim=1)  # (F, 3, 2)
    _, edge_id = torch.unique(torch.sort(slots.reshape(-1, 2), dim=1).values, dim=0, return_inverse=True)
    order = torch.argsort(edge_id, stable=True)
    sorted_id = edge_id[order]
    pair = torch.nonzero(sorted_id[1:] == sorted_id[:-1]).squeeze(1)
    neighbour = torch.full_like(edge_id, -1)
    first, second = order[pair], order[pair + 1]
    neighbour[first] = second // 3
    neighbour[second] = first // 3
    return edge_id.view(-1, 3), neighbour.view(-1, 3)


def _silhouette_slots(ndc: Tensor, faces: Tensor, edge_id: Tensor) -> Tensor:
    """``(B, F, 3)`` bool: whether the edge opposite corner ``k`` of each face is a silhouette edge on screen (exactly
    one front-facing face on it: a front / back fold or an open boundary). ``ndc (B, V, 3)`` from
    :func:`~avatar.render.rasterize.project_to_ndc`; front faces are those the rasteriser keeps when culling."""
    tri = ndc[:, faces]  # (B, F, 3, 3)
    area = _edge(tri[..., 0, 0], tri[..., 0, 1], tri[..., 1, 0], tri[..., 1, 1], tri[..., 2, 0], tri[..., 2, 1])
    front = (area > 0).to(ndc.dtype)  # (B, F)
    count = ndc.new_zeros(ndc.shape[0], int(edge_id.max()) + 1)
    count = count.index_add(1, edge_id.reshape(-1), front.repeat_interleave(3, dim=1))
    return count[:, edge_id] == 1


SILHOUETTE_SEARCH_STEPS = 16
"""Faces walked from a boundary pixel's face towards the uncovered neighbour to find the silhouette edge."""


def _find_silhouette(ndc: Tensor, faces: Tensor, neighbour: Tensor, silhouette: Tensor, batch: Tensor,
                     start: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
    """Walk from face ``start (P,)`` across the edge each face's barycentrics say the point ``(px, py)`` lies beyond
    (the most negative one) until that edge is a silhouette edge. Returns the face ``(P,)`` and corner ``(P,)`` of
    the silhouette edge, face -1 where none was found within :data:`SILHOUETTE_SEARCH_STEPS` faces."""
    cur = start.clone()
    found_face = torch.full_like(start, -1)
    found_k = torch.zeros_like(start)
    active = torch.ones_like(start, dtype=torch.bool)
    for _ in range(SILHOUETTE_SEARCH_STEPS):
        idx = torch.nonzero(active).squeeze(1)
        if idx.numel() == 0:
            break
        f = cur[idx]
        w = _screen_barycentrics(px[idx], py[idx], ndc[batch[idx, None], faces[f]])
        k = w.argmin(-1)
        beyond = w.gather(1, k[:, None]).squeeze(1) < 0
        sil = silhouette[batch[idx], f, k] & beyond
        found_face[idx[sil]] = f[sil]
        found_k[idx[sil]] = k[sil]
        nxt = neighbour[f, k]
        go_on = beyond & ~sil & (nxt >= 0)
        cur[idx[go_on]] = nxt[go_on]
        active[idx[~go_on]] = False
    return found_face, found_k


def render_mesh_features(vertices: Tensor, faces: Tensor, features: Tensor, viewmats: Tensor, Ks: Tensor,
                         image_size: int | tuple[int, int], *, cull_backfaces: bool = True,
                         antialias: bool = True) -> MeshFeatureRender:
    """Rasterise ``B`` meshes (one camera each) into feature maps, differentiably (see the module docstring).

    Args:
        vertices: ``(B, V, 3)`` world positions.
        faces: ``(F, 3)`` long, shared by the batch, counter-clockwise seen from outside.
        features: ``(B, V, C)`` per-vertex features.
        viewmats: ``(B, 4, 4)`` world -> camera, OpenCV axes (``x`` right, ``y`` down, ``z`` forward).
        Ks: ``(B, 3, 3)`` intrinsics in pixels (pixel ``(i, j)`` centred at ``(j + 0.5, i + 0.5)``).
        image_size: ``S`` or ``(H, W)``.
        cull_backfaces: skip faces turned away from the camera.
        antialias: add the silhouette gradients (off: a hard mask without geometry gradient at the boundary).

    Returns:
        :class:`MeshFeatureRender`.
    """
    h, w = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise InputError(f"mesh vertices are (B, V, 3), got {tuple(vertices.shape)}")
    bsz, nv = vertices.shape[:2]
    if features.shape[:2] != (bsz, nv):
        raise InputError(f"vertex features are ({bsz}, {nv}, C), got {tuple(features.shape)}")
    if viewmats.shape != (bsz, 4, 4) or Ks.shape != (bsz, 3, 3):
        raise InputError(f"cameras are viewmats ({bsz}, 4, 4) and Ks ({bsz}, 3, 3), got {tuple(viewmats.shape)} and "
                         f"{tuple(Ks.shape)}")
    flip = vertices.new_tensor(_OPENCV_TO_OPENGL)
    cam = vertices @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # OpenCV camera space
    cam_gl = cam * flip
    scale = torch.stack([vertices.new_full((bsz,), float(w)), vertices.new_full((bsz,), float(h)),
                         vertices.new_ones(bsz)], dim=-1)
    intrinsics = Ks.to(vertices) / scale[:, :, None]
    frags = rasterize_mesh(cam_gl.detach(), faces, (h, w), intrinsics.detach(), cull_backfaces=cull_backfaces)
    ndc = project_to_ndc(cam_gl, (h, w), intrinsics)  # (B, V, 3): NDC x, NDC y, depth; differentiable
    xs, ys = ndc_pixel_centers((h, w), ndc.dtype, ndc.device)

    p2f = frags.pix_to_face.reshape(-1)
    covered = p2f >= 0
    pix = torch.nonzero(covered).squeeze(1)
    batch_of = pix // (h * w)
    row, col = (pix % (h * w)) // w, pix % w
    faces = faces.long()
    corner = faces[p2f[pix]]  # (M, 3)
    tri = ndc[batch_of[:, None], corner]  # (M, 3, 3)
    bary = _screen_barycentrics(xs[col], ys[row], tri)
    inv_z = 1.0 / tri[..., 2].clamp_min(1e-8)
    persp = bary * inv_z
    persp = persp / persp.sum(-1, keepdim=True).clamp_min(1e-12)
    attrs = torch.cat([features, ndc[..., 2:3]], dim=-1)  # depth rides along as one more channel
    vals = attrs[batch_of[:, None], corner]  # (M, 3, C + 1)
    interp = (persp.unsqueeze(-1) * vals).sum(1)  # (M, C + 1)
    c = features.shape[-1]
    flat = attrs.new_zeros(bsz * h * w, c + 1)
    flat = flat.index_put((pix,), interp)
    mask = covered.to(attrs.dtype)

    if antialias and pix.numel():
        cov_map = covered.view(bsz, h, w)
        edge_id, neighbour = _face_adjacency(faces)
        ndc_d = ndc.detach()
        silhouette = _silhouette_slots(ndc_d, faces, edge_id)  # (B, F, 3)
        delta_mask = attrs.new_zeros(bsz * h * w)
        delta_feat = attrs.new_zeros(bsz * h * w, c + 1)
        for dim in (2, 1):
            a, b = _antialias_pairs(cov_map, dim)
            if a.numel() == 0:
                continue
            bi = a // (h * w)
            rb, cb = (b % (h * w)) // w, b % w
            with torch.no_grad():
                face, k = _find_silhouette(ndc_d, faces, neighbour, silhouette, bi, p2f[a], xs[cb], ys[rb])
            keep = face >= 0
            a, b, bi, face, k, rb, cb = a[keep], b[keep], bi[keep], face[keep], k[keep], rb[keep], cb[keep]
            if a.numel() == 0:
                continue
            ra, ca = (a % (h * w)) // w, a % w
            face_tri = ndc[bi[:, None], faces[face]]  # (P, 3, 3), differentiable
            k = k[:, None]
            wa_k = _screen_barycentrics(xs[ca], ys[ra], face_tri).gather(1, k).squeeze(1)
            wb_k = _screen_barycentrics(xs[cb], ys[rb], face_tri).gather(1, k).squeeze(1)
            denom = wa_k - wb_k
            denom = torch.where(denom.abs() < 1e-12, torch.full_like(denom, 1e-12), denom)
            t = (wa_k / denom).clamp(0.0, 1.0)
            with torch.no_grad():  # the crossing edge's share of this axis (see the module docstring)
                ends = torch.stack([(k.squeeze(1) + 1) % 3, (k.squeeze(1) + 2) % 3], dim=1)
                edge = face_tri.gather(1, ends[..., None].expand(-1, -1, 3))
                ex, ey = (edge[:, 1, 0] - edge[:, 0, 0]).abs(), (edge[:, 1, 1] - edge[:, 0, 1]).abs()
                share = (ey if dim == 2 else ex) / (ex + ey).clamp_min(1e-12)
            gain = share * (t - 0.5).clamp_min(0.0)  # coverage the uncovered pixel B gains
            loss_a = share * (0.5 - t).clamp_min(0.0)  # coverage the covered pixel A loses
            feat_a = flat[a]
            delta_mask = delta_mask.index_add(0, b, gain).index_add(0, a, -loss_a)
            delta_feat = delta_feat.index_add(0, b, gain[:, None] * feat_a).index_add(0, a, -loss_a[:, None] * feat_a)
        mask = (mask + delta_mask).clamp(0.0, 1.0)
        feats = flat[:, :c] + delta_feat[:, :c]
    else:
        feats = flat[:, :c]
    depth = flat[:, c:]
    return MeshFeatureRender(features=feats.view(bsz, h, w, c).permute(0, 3, 1, 2),
                             mask=mask.view(bsz, 1, h, w), depth=depth.view(bsz, h, w, 1).permute(0, 3, 1, 2),
                             pix_to_face=frags.pix_to_face)
