"""Rigid head pose: axis-angle and matrices, quaternions (wxyz), and applying ``R, T`` to Gaussians.

A head pose is either a ``(B, 6)`` tensor ``[axis-angle (3, radians), translation (3)]`` or a ``(B, 4, 4)``
rigid matrix; canonical points ``x`` go to the world as ``R x + T`` (paper 3.2: the last step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatar.errors import InputError

__all__ = [
    "apply_pose",
    "axis_angle_to_matrix",
    "matrix_to_quaternion",
    "pose_to_rt",
    "quaternion_multiply",
    "quaternion_to_matrix",
]


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: ``(..., 3)`` axis-angle (radians) -> ``(..., 3, 3)``; exact identity for a zero vector."""
    angle = rotvec.norm(dim=-1, keepdim=True)  # (..., 1)
    small = angle < 1e-6
    safe = torch.where(small, torch.ones_like(angle), angle)
    # sin(a)/a and (1 - cos a)/a^2 with their Taylor limits near 0
    a = torch.where(small, 1.0 - angle**2 / 6.0, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - angle**2 / 24.0, (1.0 - torch.cos(safe)) / safe**2)
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*rotvec.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(k)
    return eye + a.unsqueeze(-1) * k + b.unsqueeze(-1) * (k @ k)


def matrix_to_quaternion(matrix: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation -> ``(..., 4)`` unit quaternion ``wxyz`` with ``w >= 0`` (Shepperd's method)."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates = torch.stack([
        torch.stack([1 + m00 + m11 + m22, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m00 - m11 - m22, m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], 1 - m00 + m11 - m22,
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m00 - m11 + m22], -1),
    ], dim=-2)  # (..., 4, 4): row k is 4 q_k q scaled; the largest diagonal is the best conditioned
    diag = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    best = diag.argmax(dim=-1, keepdim=True)
    q = torch.gather(candidates, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """``(..., 4)`` quaternion ``wxyz`` (normalised here) -> ``(..., 3, 3)``."""
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*q.shape[:-1], 3, 3)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of ``wxyz`` quaternions (broadcast): the rotation ``b`` then ``a``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def pose_to_rt(pose: Tensor, batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """``(B, 6)`` [axis-angle, translation] or ``(B, 4, 4)`` rigid matrix -> ``R (B, 3, 3)``, ``T (B, 3)``.

    Raises:
        InputError: another shape, or a batch size other than ``batch_size`` (when given).
    """
    if pose.dim() == 2 and pose.shape[1] == 6:
        rot, trans = axis_angle_to_matrix(pose[:, :3]), pose[:, 3:]
    elif pose.dim() == 3 and pose.shape[1:] == (4, 4):
        rot, trans = pose[:, :3, :3], pose[:, :3, 3]
    else:
        raise InputError(f"a head pose is (B, 6) [axis-angle, translation] or (B, 4, 4), got {tuple(pose.shape)}")
    if batch_size is not None and rot.shape[0] != batch_size:
        raise InputError(f"the head pose has batch size {rot.shape[0]}, the codes have {batch_size}; pass one pose "
                         f"per sample")
    return rot, trans


def apply_pose(rot: Tensor, trans: Tensor, points: Tensor, quats: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Canonical -> world: ``points (B, N, 3) -> R points + T``; ``quats (B, N, 4)`` wxyz -> ``q_R * quats``.

    Scales are unchanged by a rigid motion.
    """
    world = points @ rot.transpose(1, 2) + trans.unsqueeze(1)
    if quats is None:
        return world, None
    q_rot = matrix_to_quaternion(rot).unsqueeze(1)  # (B, 1, 4)
    return world, quaternion_multiply(q_rot, quats)
