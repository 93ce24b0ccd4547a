"""Linear blend skinning for FLAME, numerically matching the DECA/EMOCA ``lbs.py`` used by Portrait4D.

Conventions (all float32 unless stated):

* ``B`` batch, ``V`` vertices, ``J`` joints (5 for FLAME: global, neck, jaw, left eye, right eye),
  ``K`` blend-shape coefficients, ``P = 9 * (J - 1)`` pose-corrective features.
* Axis-angle vectors are in radians; rotation matrices act on column vectors (``x' = R @ x``).

The operation order follows the reference so that float32 results agree to rounding: the axis-angle norm
is taken of ``rot_vecs + 1e-8``, pose correctives are detached by default, and the skinning matrices are
blended as flattened 4x4 matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "batch_rigid_transform",
    "batch_rodrigues",
    "blend_shapes",
    "lbs",
    "transform_mat",
    "vertices2joints",
    "vertices2landmarks",
]


def batch_rodrigues(rot_vecs: Tensor, epsilon: float = 1e-8) -> Tensor:
    """Axis-angle vectors ``(N, 3)`` -> rotation matrices ``(N, 3, 3)`` (Rodrigues' formula).

    As in the reference, the angle is ``||rot_vecs + epsilon||`` (the epsilon is added to every component),
    so a zero vector gives the identity without a division by zero.
    """
    n = rot_vecs.shape[0]
    angle = torch.norm(rot_vecs + epsilon, dim=1, keepdim=True)  # (N, 1)
    axis = rot_vecs / angle  # (N, 3)
    cos = torch.cos(angle).unsqueeze(1)  # (N, 1, 1)
    sin = torch.sin(angle).unsqueeze(1)
    rx, ry, rz = torch.split(axis, 1, dim=1)  # (N, 1) each
    zeros = torch.zeros((n, 1), dtype=rot_vecs.dtype, device=rot_vecs.device)
    skew = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(n, 3, 3)
    ident = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device).unsqueeze(0)
    return ident + sin * skew + (1 - cos) * torch.bmm(skew, skew)


def blend_shapes(betas: Tensor, shape_disps: Tensor) -> Tensor:
    """Blend-shape offsets: ``betas (B, K)`` x ``shape_disps (V, 3, K)`` -> ``(B, V, 3)``."""
    return torch.einsum("bl,mkl->bmk", betas, shape_disps)


def vertices2joints(j_regressor: Tensor, vertices: Tensor) -> Tensor:
    """Joint locations: ``j_regressor (J, V)`` applied to ``vertices (B, V, 3)`` -> ``(B, J, 3)``."""
    return torch.einsum("bik,ji->bjk", vertices, j_regressor)


def transform_mat(rot: Tensor, trans: Tensor) -> Tensor:
    """Stack ``rot (N, 3, 3)`` and ``trans (N, 3, 1)`` into homogeneous transforms ``(N, 4, 4)``."""
    return torch.cat([F.pad(rot, [0, 0, 0, 1]), F.pad(trans, [0, 0, 0, 1], value=1)], dim=2)


def _parent_list(parents: Tensor | list[int]) -> list[int]:
    return [int(p) for p in (parents.tolist() if isinstance(parents, Tensor) else parents)]


def batch_rigid_transform(
    rot_mats: Tensor, joints: Tensor, parents: Tensor | list[int]
) -> tuple[Tensor, Tensor]:
    """Chain per-joint rotations along the kinematic tree.

    Args:
        rot_mats: ``(B, J, 3, 3)`` local joint rotations.
        joints: ``(B, J, 3)`` rest-pose joint locations.
        parents: ``(J,)`` parent index of each joint (``parents[0]`` is the root and ignored).

    Returns:
        posed_joints ``(B, J, 3)`` and the rest-to-posed transforms ``(B, J, 4, 4)`` (each one maps a rest
        point skinned to that joint to its posed position).
    """
    par = _parent_list(parents)
    num_joints = joints.shape[1]
    joints = joints.unsqueeze(-1)  # (B, J, 3, 1)
    rel_joints = joints.clone()
    rel_joints[:, 1:] -= joints[:, par[1:]]
    local = transform_mat(rot_mats.reshape(-1, 3, 3), rel_joints.reshape(-1, 3, 1))
    local = local.reshape(-1, num_joints, 4, 4)
    chain = [local[:, 0]]
    for i in range(1, len(par)):
        chain.append(torch.matmul(chain[par[i]], local[:, i]))
    transforms = torch.stack(chain, dim=1)  # (B, J, 4, 4)
    posed_joints = transforms[:, :, :3, 3]
    joints_homogen = F.pad(joints, [0, 0, 0, 1])  # (B, J, 4, 1)
    rel_transforms = transforms - F.pad(torch.matmul(transforms, joints_homogen), [3, 0, 0, 0, 0, 0, 0, 0])
    return posed_joints, rel_transforms


def lbs(
    betas: Tensor,
    pose: Tensor,
    v_template: Tensor,
    shapedirs: Tensor,
    posedirs: Tensor,
    j_regressor: Tensor,
    parents: Tensor | list[int],
    lbs_weights: Tensor,
    pose2rot: bool = True,
    detach_pose_correctives: bool = True,
) -> tuple[Tensor, Tensor]:
    """Shape and pose a template mesh with linear blend skinning.

    Args:
        betas: ``(B, K)`` shape + expression coefficients.
        pose: ``(B, J * 3)`` axis-angle per joint, or ``(B, J, 3, 3)`` / ``(B, J * 9)`` rotation matrices
            when ``pose2rot`` is False.
        v_template: ``(B, V, 3)`` (or ``(V, 3)``) template vertices.
        shapedirs: ``(V, 3, K)`` blend shapes.
        posedirs: ``(P, V * 3)`` pose-corrective blend shapes, ``P = 9 * (J - 1)``.
        j_regressor: ``(J, V)`` joint regressor.
        parents: ``(J,)`` kinematic tree.
        lbs_weights: ``(V, J)`` skinning weights.
        pose2rot: whether ``pose`` is axis-angle.
        detach_pose_correctives: detach the pose-corrective offsets (the reference default).

    Returns:
        vertices ``(B, V, 3)`` and posed joints ``(B, J, 3)``.
    """
    batch_size = max(betas.shape[0], pose.shape[0])
    dtype, device = betas.dtype, betas.device
    v_shaped = v_template + blend_shapes(betas, shapedirs)  # (B, V, 3)
    joints = vertices2joints(j_regressor, v_shaped)  # (B, J, 3)
    ident = torch.eye(3, dtype=dtype, device=device)
    if pose2rot:
        rot_mats = batch_rodrigues(pose.reshape(-1, 3)).view(batch_size, -1, 3, 3)
        pose_feature = (rot_mats[:, 1:, :, :] - ident).view(batch_size, -1)
    else:
        rot_mats = pose.view(batch_size, -1, 3, 3)
        pose_feature = (rot_mats[:, 1:] - ident).view(batch_size, -1)
    pose_offsets = torch.matmul(pose_feature, posedirs).view(batch_size, -1, 3)  # (B, V, 3)
    if detach_pose_correctives:
        pose_offsets = pose_offsets.detach()
    v_posed = pose_offsets + v_shaped
    posed_joints, rel_transforms = batch_rigid_transform(rot_mats, joints, parents)
    num_joints = j_regressor.shape[0]
    weights = lbs_weights.unsqueeze(0).expand(batch_size, -1, -1)  # (B, V, J)
    skin = torch.matmul(weights, rel_transforms.view(batch_size, num_joints, 16)).view(batch_size, -1, 4, 4)
    ones = torch.ones((batch_size, v_posed.shape[1], 1), dtype=dtype, device=device)
    v_homo = torch.matmul(skin, torch.cat([v_posed, ones], dim=2).unsqueeze(-1))  # (B, V, 4, 1)
    return v_homo[:, :, :3, 0], posed_joints


def vertices2landmarks(vertices: Tensor, faces: Tensor, lmk_faces_idx: Tensor, lmk_bary_coords: Tensor) -> Tensor:
    """Barycentric landmarks.

    Args:
        vertices: ``(B, V, 3)``.
        faces: ``(F, 3)`` int64.
        lmk_faces_idx: ``(B, L)`` face index per landmark.
        lmk_bary_coords: ``(B, L, 3)`` barycentric weights.

    Returns:
        ``(B, L, 3)`` landmark positions.
    """
    batch_size, num_verts = vertices.shape[:2]
    lmk_faces = torch.index_select(faces, 0, lmk_faces_idx.reshape(-1)).view(batch_size, -1, 3)
    offsets = torch.arange(batch_size, dtype=torch.long, device=vertices.device).view(-1, 1, 1) * num_verts
    lmk_vertices = vertices.reshape(-1, 3)[lmk_faces + offsets].view(batch_size, -1, 3, 3)
    return torch.einsum("blfi,blf->bli", lmk_vertices, lmk_bary_coords)
