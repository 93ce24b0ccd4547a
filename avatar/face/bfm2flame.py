"""Portrait4D's fast BFM -> FLAME conversion (``data_preprocess/bfm2flame_simplified.py``), in plain PyTorch.

* :class:`BFM2FLAMEMapper`: the MLP ``Mapper(in 144, hidden 512, out 403, layers 2)`` =
  ``Linear(144, 512) -> LeakyReLU(0.01) -> Linear(512, 403)``, parameters ``maps.0.*`` and ``maps.2.*``
  (checkpoint ``data_preprocess/assets/bfm2flame_mapper/model-iter200000.pth``, a plain state dict).
  Input ``cat(id (80), exp (64))`` of Deep3DFaceRecon, raw (no normalisation); output
  ``shape (300) | exp (100) | jaw pose (3)``, raw.
* :func:`bfm_angles_to_flame_pose`: Deep3D's Euler angles -> FLAME global rotation vector, rectified by a fixed
  rotation (Euler ``xyz`` = ``(0.08489475, 0.002882, 0.00353599)``, the mean offset measured on FFHQ upstream).
* :func:`flame_label`: the 437-d label of ``bfm2flame_params_simplified/*.npy``: camera (25) | shape (300) |
  exp (100) | global pose (3) | jaw (3) | eye pose (6, zeros), with the fixed 12-degree intrinsics and the
  extrinsics ``R = rodrigues(-pose)``, ``t = R @ (0, 0.01, 4.2)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from avatar.face.fan3d import read_converted_weights
from avatar.flame.lbs import batch_rodrigues

__all__ = [
    "BFM2FLAMEMapper",
    "MapperConfig",
    "LABEL_LAYOUT",
    "POSE_RECTIFY_EULER",
    "bfm_angles_to_flame_pose",
    "bfm_angles_to_rotation",
    "euler_xyz_to_matrix",
    "flame_camera_label",
    "flame_label",
    "matrix_to_rotvec",
]

POSE_RECTIFY_EULER = (0.08489475, 0.002882, 0.00353599)
"""Extrinsic ``xyz`` Euler angles (radians) of the rotation applied after the BFM -> FLAME pose conversion."""
FOV_DEGREES = 12.0
CAMERA_TRANSLATION = (0.0, 0.01, 4.2)
LABEL_LAYOUT: tuple[tuple[str, int], ...] = (
    ("camera", 25), ("shape", 300), ("exp", 100), ("pose", 3), ("jaw", 3), ("eye", 6),
)
"""Slices of the 437-d FLAME label, in order."""


@dataclass(frozen=True)
class MapperConfig:
    """Sizes of the mapper MLP. Defaults are the released checkpoint (``layers=2``, hidden 512)."""

    id_dim: int = 80
    exp_dim: int = 64
    hidden_dim: int = 512
    shape_dim: int = 300
    flame_exp_dim: int = 100
    jaw_dim: int = 3
    layers: int = 2

    @property
    def in_dim(self) -> int:
        return self.id_dim + self.exp_dim

    @property
    def out_dim(self) -> int:
        return self.shape_dim + self.flame_exp_dim + self.jaw_dim

    @classmethod
    def tiny(cls) -> MapperConfig:
        """Same layout (144 -> 403), small hidden layer."""
        return replace(cls(), hidden_dim=16)


class BFM2FLAMEMapper(nn.Module):
    """``cat(id, exp) (B, 144)`` -> ``cat(shape, exp, jaw) (B, 403)``. Hidden layers use LeakyReLU(0.01)."""

    def __init__(self, config: MapperConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or MapperConfig()
        self.maps = nn.ModuleList()
        for i in range(cfg.layers):
            cin = cfg.in_dim if i == 0 else cfg.hidden_dim
            cout = cfg.out_dim if i == cfg.layers - 1 else cfg.hidden_dim
            self.maps.append(nn.Linear(cin, cout))
            if i < cfg.layers - 1:
                self.maps.append(nn.LeakyReLU(negative_slope=0.01))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.maps:
            x = layer(x)
        return x

    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load the ``model-iter200000.pth`` state dict (``maps.0.*``, ``maps.2.*``) with ``strict=True``."""
        self.load_state_dict(dict(state), strict=True)

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, device: torch.device | str = "cpu") -> BFM2FLAMEMapper:
        """The official mapper (registry key ``bfm2flame-mapper``), in eval mode."""
        model = cls()
        model.load_official(read_converted_weights("bfm2flame-mapper", local_dir))
        return model.eval().to(device)

    def map(self, bfm_id: Tensor, bfm_exp: Tensor) -> dict[str, Tensor]:
        """``id (B, 80)``, ``exp (B, 64)`` -> ``shape (B, 300)``, ``exp (B, 100)``, ``jaw (B, 3)``."""
        cfg = self.config
        out = self(torch.cat([bfm_id, bfm_exp], dim=-1))
        shape, exp, jaw = torch.split(out, [cfg.shape_dim, cfg.flame_exp_dim, cfg.jaw_dim], dim=-1)
        return {"shape": shape, "exp": exp, "jaw": jaw}


# --------------------------------------------------------------------------------------------------------
# rotations


def _axis_rotations(angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Elementary rotations about x, y, z for ``angles (B, 3)`` -> three ``(B, 3, 3)``."""
    ax, ay, az = angles.unbind(-1)
    one, zero = torch.ones_like(ax), torch.zeros_like(ax)
    rx = torch.stack([one, zero, zero, zero, ax.cos(), -ax.sin(), zero, ax.sin(), ax.cos()], -1)
    ry = torch.stack([ay.cos(), zero, ay.sin(), zero, one, zero, -ay.sin(), zero, ay.cos()], -1)
    rz = torch.stack([az.cos(), -az.sin(), zero, az.sin(), az.cos(), zero, zero, zero, one], -1)
    return rx.view(-1, 3, 3), ry.view(-1, 3, 3), rz.view(-1, 3, 3)


def bfm_angles_to_rotation(angles: Tensor) -> Tensor:
    """Deep3D head rotation from its angles ``(B, 3)`` (about x, y, z): ``Rz @ Ry @ Rx``, ``(B, 3, 3)``."""
    rx, ry, rz = _axis_rotations(angles)
    return rz @ ry @ rx


def euler_xyz_to_matrix(angles: Tensor) -> Tensor:
    """Extrinsic ``xyz`` Euler angles (scipy's lowercase ``'xyz'``) -> ``Rz @ Ry @ Rx``, ``(B, 3, 3)``."""
    return bfm_angles_to_rotation(angles)


def matrix_to_rotvec(rot: Tensor) -> Tensor:
    """Rotation matrices ``(B, 3, 3)`` -> rotation vectors ``(B, 3)`` with angle in ``[0, pi]``.

    Goes through a unit quaternion (largest-component branch, so it is stable near 180 degrees) with a
    non-negative scalar part, then ``angle = 2 atan2(|v|, w)``.
    """
    m = rot
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = torch.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2], trace], dim=-1)
    choice = cand.argmax(dim=-1)
    quats = []
    for i in range(3):  # x, y or z component is the largest
        j, k = (i + 1) % 3, (i + 2) % 3
        q = torch.empty(m.shape[0], 4, dtype=m.dtype, device=m.device)  # (x, y, z, w)
        q[:, i] = 1 - trace + 2 * m[:, i, i]
        q[:, j] = m[:, j, i] + m[:, i, j]
        q[:, k] = m[:, k, i] + m[:, i, k]
        q[:, 3] = m[:, k, j] - m[:, j, k]
        quats.append(q)
    qw = torch.stack([m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1], 1 + trace], -1)
    quats.append(qw)
    q = torch.stack(quats, dim=1)[torch.arange(m.shape[0], device=m.device), choice]
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, 3:] < 0, -q, q)
    v, w = q[:, :3], q[:, 3]
    sin_half = v.norm(dim=-1)
    angle = 2 * torch.atan2(sin_half, w)
    small = angle.abs() <= 1e-3
    safe = torch.where(small, torch.ones_like(angle), angle)
    factor = torch.where(
        small, 2 + angle**2 / 12 + 7 * angle**4 / 2880, safe / torch.sin(safe / 2)
    )
    return v * factor.unsqueeze(-1)


def bfm_angles_to_flame_pose(angles: Tensor, rectify: bool = True) -> Tensor:
    """Deep3D angles ``(B, 3)`` -> FLAME global pose (rotation vector) ``(B, 3)``, computed in float64.

    With ``rectify`` the fixed rotation :data:`POSE_RECTIFY_EULER` is applied on the left, as the official
    fast path does.
    """
    rot = bfm_angles_to_rotation(angles.double())
    if rectify:
        fix = euler_xyz_to_matrix(torch.tensor([POSE_RECTIFY_EULER], dtype=torch.float64, device=angles.device))
        rot = fix @ rot
    return matrix_to_rotvec(rot).to(angles.dtype)


def flame_camera_label(pose: Tensor) -> Tensor:
    """25-d camera label ``(B, 25)`` for a global pose ``(B, 3)``: 4x4 extrinsics with ``R =
    rodrigues(-pose)`` and ``t = R @ (0, 0.01, 4.2)``, then the normalised 12-degree intrinsics."""
    b = pose.shape[0]
    rot = batch_rodrigues(-pose.float())
    t = rot @ torch.tensor(CAMERA_TRANSLATION, dtype=torch.float32, device=pose.device)
    ext = torch.eye(4, dtype=torch.float32, device=pose.device).repeat(b, 1, 1)
    ext[:, :3, :3] = rot
    ext[:, :3, 3] = t
    focal = 1.0 / (2.0 * math.tan(math.radians(FOV_DEGREES) / 2.0))
    intr = torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], device=pose.device)
    return torch.cat([ext.reshape(b, 16), intr.reshape(1, 9).expand(b, 9)], dim=1)


def flame_label(
    mapper: BFM2FLAMEMapper | None, bfm_id: Tensor, bfm_exp: Tensor, bfm_angle: Tensor
) -> Tensor:
    """Deep3D ``id (B, 80)``, ``exp (B, 64)``, ``angle (B, 3)`` -> the 437-d FLAME label ``(B, 437)`` float32.

    ``mapper=None`` reproduces ``--use_mapper False`` (zero shape, expression and jaw).
    """
    b = bfm_id.shape[0]
    pose = bfm_angles_to_flame_pose(bfm_angle.double()).float()
    if mapper is not None:
        with torch.no_grad():
            mapped = mapper.map(bfm_id.float(), bfm_exp.float())
        shape, exp, jaw = mapped["shape"], mapped["exp"], mapped["jaw"]
    else:
        shape, exp, jaw = (torch.zeros(b, n, device=bfm_id.device) for n in (300, 100, 3))
    eye = torch.zeros(b, 6, device=bfm_id.device)
    return torch.cat([flame_camera_label(pose), shape.float(), exp.float(), pose, jaw.float(), eye], dim=1)
