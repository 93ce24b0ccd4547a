"""GenHead's part-wise FLAME deformation: separate canonical points for the face, the eyes and the mouth.

Official source: ``training/deformer/deformation.py::FlameDeformationModule.closest_point_deformation_separate``
(called with ``mouth=True``, ``eye_blink_params=None``) and ``FlameDeformationModule.forward`` with ``part=True``
and its defaults ``grid_approx=True, simplify=True, only_headpose=True, return_offset=True,
smooth_headpose=True`` (the head-pose warp of :class:`~avatar.flame.deformation.FlameHeadPoseDeformer`, then the
part field with the neck rotation zeroed). The volume renderer reads the results as ``canonical_eye / _face /
_mouth``, ``dist_to_*_surface`` and ``inside_bbox_eye`` (``DeformationModule.forward``).

What :meth:`FlamePartDeformer.parts` computes for points ``x (B, P, 3)`` (already free of head pose):

1. Meshes: *target* ``T = FLAME(shape, exp, pose, eye_pose)`` and *mouth target* ``M = FLAME(shape, 0, pose,
   0)`` (expression and gaze zeroed "to model teeth movement"), both ``(B, V, 3)``; the canonical mesh ``C`` is
   the ``canonical_shape`` buffer (zero shape/expression, jaw 0.3).
2. Per part, the nearest vertex (squared distance ``d``) among ``T[:, eye_idxs]``, ``T[:, face_idxs]`` and
   ``M[:, lips_idxs]``. The nearest index ``n`` (into the *subset*) is mapped to a FLAME vertex with the
   official quirks: eye ``n + eye_idxs[0]`` (right only for a contiguous ``eye_idxs``), face ``n`` itself
   (right only when ``face_idxs`` starts with ``0, 1, 2, ...``), mouth ``lips_idxs[n]``.
3. Its neighbourhood ``R = vertices_region_idxs[vertex]`` (10 indices; index ``V`` pads short regions and
   points at an extra vertex ``(1e3, 1e3, 1e3)`` appended to both meshes, whose weight is then ~0).
4. Inverse-squared-distance weights ``w_k = 1 / (|x - T_k|^2 + 1e-10)``, normalised; ``x_part = x +
   sum_k w_k (C_k - T_k)`` (``M`` replaces ``T`` for the mouth).
5. ``dist_part = sqrt(d + 1e-12)`` of step 2, and ``inside_bbox_eye``: 1 where ``x`` lies strictly inside the
   box of the first half of ``T[:, eye_idxs]`` (centre = mean, size = 1.2 (max - min)) or of the second half.

pytorch3d's ``knn_points(K=1)`` / ``knn_gather`` are replaced by :func:`nearest_vertex` (exact, chunked, same
``sum((p - v)^2)`` distances, ties to the lowest index) and plain indexing; on CUDA by
:func:`fused_nearest_vertex`, a Triton kernel with bitwise the same results and no ``points x vertices``
temporaries (``FlamePartDeformer.vertex_search`` chooses another). Not reproduced: the unused
``eye_blink_params`` path (GenHead never passes it) and the ``closest_vts_region`` / ``weights`` outputs (the
renderer does not read them). Everything runs under ``no_grad`` and returns detached tensors, as upstream.

Shapes: ``B`` batch, ``P`` points, ``V`` FLAME vertices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from avatar.errors import StateDictMismatchError

from .deformation import DEFAULT_BOX_WARP, FlameHeadPoseDeformer
from .geometry import DEFAULT_MIN_TRIANGLE_AREA

__all__ = [
    "DEFAULT_MAX_PAIRS",
    "FlamePartDeformer",
    "PartDeformation",
    "PartMeshes",
    "eye_bbox_inside",
    "fused_nearest_vertex",
    "nearest_vertex",
]

DEFAULT_MAX_PAIRS = 1 << 24
"""(point, vertex) pairs per chunk of :func:`nearest_vertex` when no chunk is given (64 MB per float32 temp)."""
FAR_POINT = 1e3
"""Coordinate of the padding vertex appended at index ``V`` (upstream's "infinite point")."""
EYE_BOX_SCALE = 1.2
_PART_BUFFERS = ("canonical_shape", "eye_idxs", "face_idxs", "lips_idxs", "vertices_region_idxs")


def _sq_dists(points: Tensor, vertices: Tensor) -> Tensor:
    """``(B, C, 3)`` x ``(B, V, 3)`` -> ``(B, C, V)`` squared distances ``(dx^2 + dy^2) + dz^2`` (knn_points' order)."""
    diff = points[:, :, None, 0] - vertices[:, None, :, 0]
    out = diff * diff
    for axis in (1, 2):
        diff = points[:, :, None, axis] - vertices[:, None, :, axis]
        out = out + diff * diff
    return out


@torch.no_grad()
def nearest_vertex(points: Tensor, vertices: Tensor, chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact nearest vertex of every point (pytorch3d ``knn_points(points, vertices, K=1)``).

    Args:
        points: ``(B, P, 3)``.
        vertices: ``(B, V, 3)``, ``V >= 1``.
        chunk: points per chunk (memory ``~ B * chunk * V`` elements per temporary); default from
            :data:`DEFAULT_MAX_PAIRS`.

    Returns:
        ``sq_dist (B, P)`` squared distances ``sum((p - v)^2)`` and ``index (B, P)`` int64; ties go to the
        lowest vertex index.
    """
    batch, num_points = points.shape[0], points.shape[1]
    num_vertices = vertices.shape[1]
    if num_vertices == 0:
        raise ValueError("nearest_vertex needs at least one vertex")
    if chunk is None:
        chunk = max(1, DEFAULT_MAX_PAIRS // max(1, batch * num_vertices))
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dists, idxs = [], []
    for start in range(0, num_points, chunk):
        sq = _sq_dists(points[:, start:start + chunk], vertices)
        idx = sq.argmin(dim=-1)  # first minimum on ties
        dists.append(sq.gather(-1, idx.unsqueeze(-1)).squeeze(-1))
        idxs.append(idx)
    if not idxs:
        return points.new_zeros(batch, 0), torch.zeros(batch, 0, dtype=torch.int64, device=points.device)
    return torch.cat(dists, dim=1), torch.cat(idxs, dim=1)


@torch.no_grad()
def fused_nearest_vertex(points: Tensor, vertices: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`nearest_vertex` by the Triton kernel of :mod:`avatar.flame.triton_search` (CUDA, or CPU under
    Triton's interpreter): one pass over the vertices per block of points, nothing of size points x vertices in
    memory. Same arguments (no chunk) and the same results, bit for bit: the kernel runs the reference's float
    operations in its order without multiply-add contraction."""
    from avatar.flame import triton_search

    batch, num_points = points.shape[0], points.shape[1]
    num_vertices = vertices.shape[1]
    if num_vertices == 0:
        raise ValueError("nearest_vertex needs at least one vertex")
    dists = torch.empty(batch, num_points, device=points.device)
    idxs = torch.empty(batch, num_points, dtype=torch.long, device=points.device)
    if num_points == 0:
        return dists, idxs
    block = 128
    triton_search.nearest_vertex_kernel[(-(-num_points // block), batch)](
        points.float().contiguous(), vertices.float().contiguous(), dists, idxs, num_points, num_vertices,
        BLOCK_P=block, enable_fp_fusion=False)
    return dists.to(points.dtype), idxs


def default_vertex_search(device: torch.device | str) -> Callable[..., tuple[Tensor, Tensor]]:
    """The nearest-vertex search for ``device``: the Triton kernel where it runs (CUDA with Triton), else the
    chunked PyTorch search :func:`nearest_vertex`."""
    from avatar.render.fused import fused_available

    return fused_nearest_vertex if fused_available(device) else nearest_vertex


def _inside_box(points: Tensor, box_vertices: Tensor) -> Tensor:
    """``(B, P)`` bool: strictly inside the 1.2x bounding box of ``box_vertices (B, N, 3)`` (centre = mean)."""
    center = box_vertices.mean(dim=1, keepdim=True)
    size = (box_vertices.max(dim=1, keepdim=True)[0] - box_vertices.min(dim=1, keepdim=True)[0]) * EYE_BOX_SCALE
    return ((points - center).abs() < (size * 0.5)).all(dim=-1)


@torch.no_grad()
def eye_bbox_inside(points: Tensor, eye_vertices: Tensor) -> Tensor:
    """Upstream ``inside_bbox_eye``: ``(B, P)`` float, 1 inside the box of the first half of ``eye_vertices
    (B, E, 3)`` (left eye) or of the second half (right eye), else 0 (never 2: the boolean sum is an *or*)."""
    half = eye_vertices.shape[1] // 2
    left = _inside_box(points, eye_vertices[:, :half])
    right = _inside_box(points, eye_vertices[:, half:])
    return (left | right).to(points.dtype)


def _augment(vertices: Tensor) -> Tensor:
    """``(B, V, 3)`` -> ``(B, V + 1, 3)`` with the far padding vertex at index ``V``."""
    return torch.cat([vertices, torch.full_like(vertices[:, :1], FAR_POINT)], dim=1)


def _region_offset(points: Tensor, region: Tensor, target_aug: Tensor, canonical_aug: Tensor) -> Tensor:
    """Inverse-squared-distance blend of ``canonical - target`` over ``region (B, P, K)`` -> ``(B, P, 3)``."""
    batch = torch.arange(points.shape[0], device=points.device).view(-1, 1, 1)
    target = target_aug[batch, region]  # (B, P, K, 3)
    canonical = canonical_aug[batch, region]
    inv = 1 / (torch.sum((points.unsqueeze(-2) - target) ** 2, dim=-1) + 1e-10)
    weights = (inv / torch.sum(inv, dim=-1, keepdim=True)).unsqueeze(-1)
    return torch.sum((canonical - target) * weights, dim=-2)


class PartMeshes(NamedTuple):
    """FLAME meshes of one parameter set: target ``(B, V, 3)`` and mouth target ``(B, V, 3)`` (expression and
    eye pose zeroed; ``None`` without the mouth part)."""

    target: Tensor
    mouth_target: Tensor | None


class PartDeformation(NamedTuple):
    """Upstream ``closest_point_deformation_separate`` outputs (all detached).

    eye / face / mouth: ``(B, P, 3)`` canonical points (``x_c_eye``, ``x_c_face``, ``x_c_mouth``; the mouth is
    zeros without the mouth part); dist_eye / dist_face / dist_mouth: ``(B, P)`` ``sqrt(d^2 + 1e-12)`` to the
    nearest part vertex (``1e-6`` for the mouth without the mouth part); inside_bbox_eye: ``(B, P)`` float 0/1.
    """

    eye: Tensor
    face: Tensor
    mouth: Tensor
    dist_eye: Tensor
    dist_face: Tensor
    dist_mouth: Tensor
    inside_bbox_eye: Tensor


class FlamePartDeformer(FlameHeadPoseDeformer):
    """GenHead's deformer (``FlameDeformationModule`` with ``part=True``): head-pose warp, then part fields.

    Args: as :class:`~avatar.flame.deformation.FlameHeadPoseDeformer`, plus ``chunk``: points per chunk of the
    nearest-vertex search (``None``: from :data:`DEFAULT_MAX_PAIRS`). The buffers must include
    ``canonical_shape``, ``eye_idxs``, ``face_idxs``, ``lips_idxs`` and ``vertices_region_idxs`` (built with the
    FLAME masks and the addition info).
    """

    canonical_shape: Tensor
    eye_idxs: Tensor
    face_idxs: Tensor
    lips_idxs: Tensor
    vertices_region_idxs: Tensor

    def __init__(
        self,
        buffers: Mapping[str, Any],
        box_warp: float = DEFAULT_BOX_WARP,
        min_triangle_area: float = DEFAULT_MIN_TRIANGLE_AREA,
        max_pairs: int | None = None,
        chunk: int | None = None,
    ) -> None:
        super().__init__(buffers, box_warp, min_triangle_area, max_pairs)
        missing = [k for k in _PART_BUFFERS if k not in buffers]
        if missing:
            raise StateDictMismatchError(f"part deformer buffers missing: {missing}")
        self.chunk = chunk
        # the nearest-vertex search; None: by device (default_vertex_search: the Triton kernel on CUDA)
        self.vertex_search: Callable[..., tuple[Tensor, Tensor]] | None = None

    @torch.no_grad()
    def part_meshes(
        self,
        shape: Tensor,
        exp: Tensor,
        pose: Tensor | None,
        eye_pose: Tensor | None,
        use_rotation_limits: bool = False,
        mouth: bool = True,
    ) -> PartMeshes:
        """Target mesh ``FLAME(shape, exp, pose, eye_pose)`` and mouth target ``FLAME(shape, 0, pose, 0)``."""
        target = self.flame_model(shape, exp, pose, eye_pose, use_rotation_limits, with_landmarks=False).vertices
        mouth_target = None
        if mouth:
            zero_eye = None if eye_pose is None else torch.zeros_like(eye_pose)  # None is zeros in Flame
            mouth_target = self.flame_model(shape, torch.zeros_like(exp), pose, zero_eye, use_rotation_limits,
                                            with_landmarks=False).vertices
        return PartMeshes(target, mouth_target)

    def _part(self, points: Tensor, subset: Tensor, vertex_of: Callable[[Tensor], Tensor], target: Tensor,
              canonical_aug: Tensor) -> tuple[Tensor, Tensor]:
        """One part: nearest vertex of ``target[:, subset]``, mapped through ``vertex_of`` (nearest -> FLAME
        vertex, see the module docstring), blended over its region. Returns ``(x_part, sq_dist)``."""
        search = self.vertex_search if self.vertex_search is not None else default_vertex_search(points.device)
        if search is nearest_vertex or points.dtype != torch.float32:  # the kernel computes in float32
            sq, nearest = nearest_vertex(points, target[:, subset], self.chunk)
        else:
            sq, nearest = search(points, target[:, subset])
        region = self.vertices_region_idxs[vertex_of(nearest)]  # (B, P, K)
        return points + _region_offset(points, region, _augment(target), canonical_aug), sq

    @torch.no_grad()
    def parts_from_meshes(self, x_c: Tensor, meshes: PartMeshes) -> PartDeformation:
        """Part fields of head-pose-free points ``x_c (B, P, 3)`` for precomputed :class:`PartMeshes`."""
        target = meshes.target
        canonical_aug = _augment(self.canonical_shape.to(target).expand(target.shape[0], -1, -1))
        eye_start = self.eye_idxs[0]
        eye, sq_eye = self._part(x_c, self.eye_idxs, lambda n: n + eye_start, target, canonical_aug)
        face, sq_face = self._part(x_c, self.face_idxs, lambda n: n, target, canonical_aug)
        if meshes.mouth_target is not None:
            mouth, sq_mouth = self._part(x_c, self.lips_idxs, lambda n: self.lips_idxs[n], meshes.mouth_target,
                                         canonical_aug)
        else:
            mouth, sq_mouth = torch.zeros_like(x_c), torch.zeros_like(sq_eye)
        inside = eye_bbox_inside(x_c, target[:, self.eye_idxs])
        out = PartDeformation(eye, face, mouth, torch.sqrt(sq_eye + 1e-12), torch.sqrt(sq_face + 1e-12),
                              torch.sqrt(sq_mouth + 1e-12), inside)
        return PartDeformation(*(t.detach() for t in out))

    @torch.no_grad()
    def parts(
        self,
        x_c: Tensor,
        shape: Tensor,
        exp: Tensor,
        pose: Tensor | None,
        eye_pose: Tensor | None,
        use_rotation_limits: bool = False,
        mouth: bool = True,
    ) -> PartDeformation:
        """Upstream ``closest_point_deformation_separate`` of ``x_c (B, P, 3)``.

        Args:
            shape ``(B, S)``, exp ``(B, E)``, pose ``(B, 6)`` neck + jaw (pass the neck zeroed, as upstream's
            ``forward`` does; ``None``: zeros), eye_pose ``(B, 6)`` (``None``: zeros); mouth: compute the mouth
            part (GenHead: always).
        """
        return self.parts_from_meshes(x_c, self.part_meshes(shape, exp, pose, eye_pose, use_rotation_limits, mouth))

    @torch.no_grad()
    def forward_parts(
        self,
        x_t: Tensor,
        shape: Tensor,
        exp: Tensor,
        pose: Tensor | None,
        eye_pose: Tensor | None,
        use_rotation_limits: bool = False,
        mouth: bool = True,
    ) -> PartDeformation:
        """Upstream ``FlameDeformationModule.forward(part=True)``: the head-pose warp of ``x_t (B, P, 3)``
        (:meth:`FlameHeadPoseDeformer.forward` with its defaults), then :meth:`parts` with the neck pose zeroed."""
        x_c = self.forward(x_t, shape, exp, pose, eye_pose, use_rotation_limits)
        no_neck = None if pose is None else torch.cat([torch.zeros_like(pose[..., :3]), pose[..., 3:]], dim=-1)
        return self.parts(x_c, shape, exp, no_neck, eye_pose, use_rotation_limits, mouth)
