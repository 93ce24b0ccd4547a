"""Moving FLAME's head rotation out of a camera label (Portrait4D's ``decompose_camera_pose``).

Official source: ``training/deformer/deformation.py::FlameDeformationModule.decompose_camera_pose`` (also on the
reconstructor's ``FlameDeformationModuleOnlyHead``), called by the training loops on every batch
(``c_recon = G.deformer.flame_deform.decompose_camera_pose(c_compose, shape, exp, pose)``) and by v1's GenHead
data path.

The dataset's camera ``c_compose`` carries the whole head rotation (the preprocessing renders FLAME with a zero
neck). Given FLAME parameters whose neck pose ``pose[:, :3]`` is a rotation ``R`` to be applied by the head-pose
deformation instead, the returned camera is rotated by ``R^-1`` and translated so that the neck joint stays where
``c_compose`` sees it:

* ``j0``: the neck joint (FLAME joint 1) of ``FLAME(shape, exp, [0, jaw], eyes = 0)`` in ``c_compose``'s camera
  space (``world2cam = [R_c^T, -R_c^T t_c]``);
* ``world2cam' = [R_w2c R^T, j0 - R_w2c R^T j1]`` with ``j1`` the neck joint of ``FLAME(shape, exp, pose, 0)``;
* the result is ``[inverse(world2cam') (16), c_compose[16:25]]``.

With ``pose[:, :3] == 0`` it returns ``c_compose`` (up to rounding). No gradients (labels are data).
"""

from __future__ import annotations

import torch
from torch import Tensor

from avatar.render.camera import invert_rigid

from .flame import Flame
from .lbs import batch_rodrigues

__all__ = ["decompose_camera_pose"]

NECK_JOINT = 1
"""Index of FLAME's neck joint in ``FlameOutput.joints``."""


@torch.no_grad()
def decompose_camera_pose(flame: Flame, c_compose: Tensor, shape: Tensor, expression: Tensor, pose: Tensor,
                          use_rotation_limits: bool = False) -> Tensor:
    """The camera label ``c_recon`` ``(B, 25)`` for FLAME parameters whose neck rotation is applied to the head.

    Args:
        flame: the deformer's FLAME (scaled x3, re-centred), e.g. ``model.deformer.flame_deform.flame_model``.
        c_compose: ``(B, 25)`` labels carrying the whole head rotation.
        shape: ``(B, 300)``; expression ``(B, 100)``; pose ``(B, 6)`` neck + jaw axis-angles.
        use_rotation_limits: FLAME's tanh rotation limits (official default off).
    """
    c_compose = c_compose.float()
    eyes = torch.zeros_like(pose)
    no_neck = torch.cat([torch.zeros_like(pose[:, :3]), pose[:, 3:]], dim=1)
    joint_rest = flame(shape, expression, no_neck, eyes, use_rotation_limits, with_landmarks=False).joints
    joint_rest = joint_rest[:, NECK_JOINT:NECK_JOINT + 1]  # (B, 1, 3)
    world2cam = invert_rigid(c_compose[:, :16].reshape(-1, 4, 4))
    homo = torch.cat([joint_rest, torch.ones_like(joint_rest[..., :1])], dim=-1)
    cam_joint = torch.bmm(world2cam, homo.permute(0, 2, 1)).permute(0, 2, 1)  # (B, 1, 4)
    joint_posed = flame(shape, expression, pose, eyes, use_rotation_limits, with_landmarks=False).joints
    head_rot = batch_rodrigues(pose[:, :3].reshape(-1, 3)).reshape(-1, 3, 3)
    rot = world2cam[:, :3, :3] @ head_rot.permute(0, 2, 1)
    trans = cam_joint[:, :, :3].permute(0, 2, 1) - torch.bmm(rot, joint_posed[:, NECK_JOINT:NECK_JOINT + 1].permute(0, 2, 1))
    cam2world = torch.eye(4, device=c_compose.device).unsqueeze(0).repeat(c_compose.shape[0], 1, 1)
    cam2world[:, :3, :3] = rot.permute(0, 2, 1)
    cam2world[:, :3, 3:] = -rot.permute(0, 2, 1) @ trans
    return torch.cat([cam2world.reshape(-1, 16), c_compose[:, 16:25]], dim=-1)
