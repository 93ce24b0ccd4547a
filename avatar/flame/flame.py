"""FLAME head model (DECA variant used by Portrait4D), built from arrays instead of a pickle path.

Two ways in:

* :meth:`Flame.from_generic_model` takes the raw fields of FLAME's ``generic_model.pkl`` (as returned by
  ``avatar.hub.formats.read_asset``: ``f``, ``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``,
  ``kintree_table``, ``weights``) plus, optionally, the landmark embedding, and builds the buffers exactly as
  the reference constructor does (same names, dtypes and layouts).
* ``Flame(buffers)`` takes those buffers directly, e.g. from a converted Portrait4D checkpoint
  (``deformer.flame_deform.flame_model.*``), where they are already scaled x3 and re-centred.

Buffers (V = 5023 vertices, F = 9976 faces, J = 5 joints for the real model; K = 400 with ``flame_full``):

=========================== ================ =========== ==============================================
name                        shape            dtype       content
=========================== ================ =========== ==============================================
faces_tensor                (F, 3)           int64       triangle vertex indices
v_template                  (V, 3)           float32     template mesh
shapedirs                   (V, 3, K)        float32     shape (first 300 / n_shape) + expression dirs
posedirs                    (9 * (J-1), 3V)  float32     pose correctives, transposed
J_regressor                 (J, V)           float32     joint regressor
parents                     (J,)             int64       kinematic tree, ``parents[0] = -1``
lbs_weights                 (V, J)           float32     skinning weights
eye_pose (parameter)        (1, 6)           float32     zeros, default eye pose (and default pose)
neck_pose (parameter)       (1, 3)           float32     zeros, unused
lmk_faces_idx               (51|53,)         int64       static landmark faces            [optional]
lmk_bary_coords             (51|53, 3)       float32     static landmark barycentrics     [optional]
dynamic_lmk_faces_idx       (79, 17)         int64       contour landmark LUT faces       [optional]
dynamic_lmk_bary_coords     (79, 17, 3)      float32     contour landmark LUT barycentrics[optional]
full_lmk_faces_idx          (1, 68|70)       int64       3D landmark faces                [optional]
full_lmk_bary_coords        (1, 68|70, 3)    float32     3D landmark barycentrics         [optional]
neck_kin_chain              (2,)             int64       [1, 0]
global/neck/jaw/eye_limits  (3, 2)           float32     rotation limits in radians
=========================== ================ =========== ==============================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from avatar.errors import StateDictMismatchError

from .lbs import batch_rodrigues, lbs, vertices2landmarks

__all__ = ["FLAME_CORE_BUFFERS", "FLAME_LANDMARK_BUFFERS", "Flame", "FlameOutput", "flame_buffers_from_generic"]

FLAME_CORE_BUFFERS = ("faces_tensor", "v_template", "shapedirs", "posedirs", "J_regressor", "parents", "lbs_weights")
FLAME_LANDMARK_BUFFERS = (
    "lmk_faces_idx",
    "lmk_bary_coords",
    "dynamic_lmk_faces_idx",
    "dynamic_lmk_bary_coords",
    "full_lmk_faces_idx",
    "full_lmk_bary_coords",
)
_LIMIT_BUFFERS = ("global_limits", "neck_limits", "jaw_limits", "eye_limits")
# Rotation limits in degrees, (x, y, z) rows of (min, max), as in the reference.
_LIMITS_DEG = {
    "global_limits": ((-20, 20), (-90, 90), (-20, 20)),
    "neck_limits": ((-90, 90), (-60, 60), (-80, 80)),
    "jaw_limits": ((-5, 60), (-0.1, 0.1), (-0.1, 0.1)),
    "eye_limits": ((-50, 50), (-50, 50), (-0.1, 0.1)),
}
_INT_BUFFERS = {"faces_tensor", "parents", "lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx",
                "neck_kin_chain"}
NECK_IDX = 1


class FlameOutput(NamedTuple):
    """FLAME forward result.

    vertices ``(B, V, 3)``; landmarks2d ``(B, 17 + L, 3)`` (dynamic contour + static) or ``None``;
    landmarks3d ``(B, L3, 3)`` or ``None`` (``None`` when the landmark buffers are absent);
    joints ``(B, J, 3)`` posed joints.
    """

    vertices: Tensor
    landmarks2d: Tensor | None
    landmarks3d: Tensor | None
    joints: Tensor


def _f32(array: Any) -> Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32))


def _i64(array: Any) -> Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64))


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def flame_buffers_from_generic(
    model: Mapping[str, Any],
    landmarks: Mapping[str, Any] | None = None,
    flame_full: bool = True,
    n_shape: int = 100,
    n_exp: int = 50,
) -> dict[str, Tensor]:
    """Turn ``generic_model.pkl`` fields (and the landmark embedding) into :class:`Flame` buffers.

    ``model['shapedirs']`` is ``(V, 3, 400)`` (300 shape + 100 expression); with ``flame_full`` all 400 are
    kept, otherwise the first ``n_shape`` shape and ``n_exp`` expression columns. ``posedirs (V, 3, P)`` is
    reshaped to ``(V * 3, P)`` and transposed. Float fields go through float32 first, like the reference.
    """
    shapedirs = _f32(_as_numpy(model["shapedirs"]))
    if flame_full:
        shapedirs = torch.cat([shapedirs[:, :, :300], shapedirs[:, :, 300:400]], 2)
    else:
        shapedirs = torch.cat([shapedirs[:, :, :n_shape], shapedirs[:, :, 300:300 + n_exp]], 2)
    posedirs = _as_numpy(model["posedirs"])
    posedirs = np.reshape(posedirs, [-1, posedirs.shape[-1]]).T
    kintree = np.asarray(_as_numpy(model["kintree_table"])[0], dtype=np.float32)
    parents = torch.as_tensor(kintree).long()
    parents[0] = -1
    buffers = {
        "faces_tensor": _i64(_as_numpy(model["f"])),
        "v_template": _f32(_as_numpy(model["v_template"])),
        "shapedirs": shapedirs.contiguous(),
        "posedirs": _f32(posedirs).contiguous(),
        "J_regressor": _f32(_as_numpy(model["J_regressor"])),
        "parents": parents,
        "lbs_weights": _f32(_as_numpy(model["weights"])),
    }
    if landmarks is not None:
        for name in FLAME_LANDMARK_BUFFERS:
            key = "static_" + name if name.startswith("lmk_") else name
            value = _as_numpy(landmarks[key])
            buffers[name] = _i64(value) if name in _INT_BUFFERS else _f32(value)
    return buffers


def _neck_kin_chain(parents: Tensor) -> Tensor:
    chain, idx = [], NECK_IDX
    while idx != -1:
        chain.append(idx)
        idx = int(parents[idx])
    return torch.tensor(chain, dtype=torch.long)


def _rot_mat_to_euler_y(rot_mats: Tensor) -> Tensor:
    """Rotation about y (radians) of ``(B, 3, 3)`` matrices, as the reference's ``rot_mat_to_euler``."""
    sy = torch.sqrt(rot_mats[:, 0, 0] * rot_mats[:, 0, 0] + rot_mats[:, 1, 0] * rot_mats[:, 1, 0])
    return torch.atan2(-rot_mats[:, 2, 0], sy)


class Flame(nn.Module):
    """FLAME with zero global rotation: ``pose = [neck (3), jaw (3)]`` and ``eye_pose = [left (3), right (3)]``.

    Args:
        buffers: name -> tensor/array with at least :data:`FLAME_CORE_BUFFERS`; the landmark buffers are
            optional (landmarks are then not computed); ``parents``-derived ``neck_kin_chain`` and the
            rotation limits are filled in when absent.
    """

    faces_tensor: Tensor
    v_template: Tensor
    shapedirs: Tensor
    posedirs: Tensor
    J_regressor: Tensor
    parents: Tensor
    lbs_weights: Tensor
    neck_kin_chain: Tensor

    def __init__(self, buffers: Mapping[str, Any]) -> None:
        super().__init__()
        missing = [k for k in FLAME_CORE_BUFFERS if k not in buffers]
        if missing:
            raise StateDictMismatchError(f"FLAME buffers missing: {missing}")
        for name in FLAME_CORE_BUFFERS:
            self.register_buffer(name, self._convert(name, buffers[name]))
        self.eye_pose = nn.Parameter(torch.zeros([1, 6]), requires_grad=False)
        self.neck_pose = nn.Parameter(torch.zeros([1, 3]), requires_grad=False)
        self.has_landmarks = all(k in buffers for k in FLAME_LANDMARK_BUFFERS)
        if self.has_landmarks:
            for name in FLAME_LANDMARK_BUFFERS:
                self.register_buffer(name, self._convert(name, buffers[name]))
        chain = buffers.get("neck_kin_chain")
        self.register_buffer("neck_kin_chain", _neck_kin_chain(self.parents) if chain is None else _i64(chain))
        for name in _LIMIT_BUFFERS:
            value = buffers.get(name)
            default = torch.tensor(_LIMITS_DEG[name]).float() / 180 * np.pi
            self.register_buffer(name, default if value is None else _f32(_as_numpy(value)))
        self._parent_list = [int(p) for p in self.parents.tolist()]

    @staticmethod
    def _convert(name: str, value: Any) -> Tensor:
        array = _as_numpy(value)
        return _i64(array) if name in _INT_BUFFERS else _f32(array)

    @classmethod
    def from_generic_model(
        cls,
        model: Mapping[str, Any],
        landmarks: Mapping[str, Any] | None = None,
        flame_full: bool = True,
        n_shape: int = 100,
        n_exp: int = 50,
    ) -> Flame:
        """Build from ``generic_model.pkl`` fields; see :func:`flame_buffers_from_generic`."""
        return cls(flame_buffers_from_generic(model, landmarks, flame_full, n_shape, n_exp))

    @property
    def num_betas(self) -> int:
        """Number of shape + expression coefficients (``K``)."""
        return int(self.shapedirs.shape[-1])

    # ---------------------------------------------------------------------------------------------------
    # In-place re-parameterisation used by the deformer.

    @torch.no_grad()
    def rescale_(self, factor: float) -> None:
        """Scale template, shape and pose blend shapes by ``factor`` (Portrait4D uses 3)."""
        self.v_template.mul_(factor)
        self.shapedirs.mul_(factor)
        self.posedirs.mul_(factor)

    @torch.no_grad()
    def translate_(self, offset: Tensor) -> None:
        """Subtract ``offset (3,)`` (or ``(1, 3)``) from the template."""
        self.v_template.copy_(self.v_template - offset.reshape(1, 3).to(self.v_template))

    # ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _apply_rotation_limit(rotation: Tensor, limit: Tensor) -> Tensor:
        r_min, r_max = limit[:, 0].view(1, 3), limit[:, 1].view(1, 3)
        return r_min + (torch.tanh(rotation) + 1) / 2 * (r_max - r_min)

    def _limited(self, pose: Tensor, eye_pose: Tensor) -> tuple[Tensor, Tensor]:
        neck = self._apply_rotation_limit(pose[:, :3], self.neck_limits)
        jaw = self._apply_rotation_limit(pose[:, 3:], self.jaw_limits)
        eyes = torch.cat(
            [self._apply_rotation_limit(eye_pose[:, :3], self.eye_limits),
             self._apply_rotation_limit(eye_pose[:, 3:], self.eye_limits)], dim=1)
        return torch.cat([neck, jaw], dim=-1), eyes

    def full_pose(
        self, batch_size: int, pose: Tensor | None, eye_pose: Tensor | None, use_rotation_limits: bool = False
    ) -> Tensor:
        """``(B, 15)`` axis-angle for [global = 0, neck, jaw, left eye, right eye]."""
        if pose is None:
            pose = self.eye_pose.expand(batch_size, -1)
        if eye_pose is None:
            eye_pose = self.eye_pose.expand(batch_size, -1)
        if use_rotation_limits:
            pose, eye_pose = self._limited(pose, eye_pose)
        return torch.cat([torch.zeros_like(pose[:, :3]), pose[:, :3], pose[:, 3:], eye_pose], dim=1)

    def _dynamic_landmarks(self, full_pose: Tensor) -> tuple[Tensor, Tensor]:
        """Contour landmark faces ``(B, 17)`` and barycentrics ``(B, 17, 3)`` from the neck-chain y angle."""
        batch_size = full_pose.shape[0]
        aa_pose = torch.index_select(full_pose.view(batch_size, -1, 3), 1, self.neck_kin_chain)
        rot_mats = batch_rodrigues(aa_pose.reshape(-1, 3)).view(batch_size, -1, 3, 3)
        rel = torch.eye(3, device=full_pose.device, dtype=full_pose.dtype).unsqueeze(0).expand(batch_size, -1, -1)
        for idx in range(len(self.neck_kin_chain)):
            rel = torch.bmm(rot_mats[:, idx], rel)
        angle = torch.round(torch.clamp(_rot_mat_to_euler_y(rel) * 180.0 / math.pi, max=39)).long()
        neg_mask = angle.lt(0).long()
        mask = angle.lt(-39).long()
        neg_vals = mask * 78 + (1 - mask) * (39 - angle)
        angle = neg_mask * neg_vals + (1 - neg_mask) * angle
        faces = torch.index_select(self.dynamic_lmk_faces_idx, 0, angle)
        bary = torch.index_select(self.dynamic_lmk_bary_coords, 0, angle)
        return faces, bary

    def _landmarks(self, vertices: Tensor, full_pose: Tensor) -> tuple[Tensor, Tensor]:
        batch_size = vertices.shape[0]
        dyn_faces, dyn_bary = self._dynamic_landmarks(full_pose)
        faces = torch.cat([dyn_faces, self.lmk_faces_idx.unsqueeze(0).expand(batch_size, -1)], 1)
        bary = torch.cat([dyn_bary, self.lmk_bary_coords.unsqueeze(0).expand(batch_size, -1, -1)], 1)
        lmk2d = vertices2landmarks(vertices, self.faces_tensor, faces, bary)
        lmk3d = vertices2landmarks(vertices, self.faces_tensor, self.full_lmk_faces_idx.repeat(batch_size, 1),
                                   self.full_lmk_bary_coords.repeat(batch_size, 1, 1))
        return lmk2d, lmk3d

    def forward(
        self,
        shape_params: Tensor,
        expression_params: Tensor,
        pose_params: Tensor | None = None,
        eye_pose_params: Tensor | None = None,
        use_rotation_limits: bool = False,
        with_landmarks: bool = True,
    ) -> FlameOutput:
        """Posed FLAME mesh.

        Args:
            shape_params: ``(B, n_shape)`` (300 with ``flame_full``).
            expression_params: ``(B, n_exp)`` (100 with ``flame_full``); ``n_shape + n_exp == K``.
            pose_params: ``(B, 6)`` neck (used as head rotation) + jaw axis-angle; ``None`` -> zeros.
            eye_pose_params: ``(B, 6)`` eyes axis-angle; ``None`` -> zeros.
            use_rotation_limits: squash the angles through ``tanh`` into the limits (reference option).
            with_landmarks: compute landmarks (needs the landmark buffers).
        """
        batch_size = shape_params.shape[0]
        betas = torch.cat([shape_params, expression_params], dim=1)
        full_pose = self.full_pose(batch_size, pose_params, eye_pose_params, use_rotation_limits)
        template = self.v_template.unsqueeze(0).expand(batch_size, -1, -1)
        vertices, joints = lbs(betas, full_pose, template, self.shapedirs, self.posedirs, self.J_regressor,
                               self._parent_list, self.lbs_weights)
        if with_landmarks and self.has_landmarks:
            lmk2d, lmk3d = self._landmarks(vertices, full_pose)
            return FlameOutput(vertices, lmk2d, lmk3d, joints)
        return FlameOutput(vertices, None, None, joints)
