"""Relative driving: the change of motion and head pose since a reference driving frame, applied to the source.

Every reenacting family drives an avatar either with the driving frame's own values (absolute) or with their
change since the first driving frame that had a face (relative, the default of Portrait4D's demo and of
LivePortrait): expression-like vectors add their difference (``src + x_t - x_0``), rotations compose
(``R_t R_0^T R_src``).

FLAME labels are ``(N, 437)``: camera 25, shape ``[25:325]``, expression ``[325:425]``, neck (global) rotation
``[425:428]``, jaw ``[428:431]``, eye pose ``[431:437]``.
"""

from __future__ import annotations

from torch import Tensor

from avatar.face.geometry import matrix_to_axis_angle
from avatar.flame.lbs import batch_rodrigues

__all__ = ["relative_flame_labels", "relative_motion", "relative_rotation"]

_ADDITIVE = (slice(325, 425), slice(428, 431), slice(431, 437))  # expression, jaw, eyes
_NECK = slice(425, 428)
_SHAPE = slice(25, 325)


def relative_rotation(rot_t: Tensor, rot_0: Tensor, rot_src: Tensor) -> Tensor:
    """Axis-angle ``(N, 3)`` of ``R_t R_0^T R_src``: the driving rotation change applied to the source pose."""
    r = batch_rodrigues(rot_t.float()) @ batch_rodrigues(rot_0.float()).transpose(1, 2) @ batch_rodrigues(
        rot_src.float())
    return matrix_to_axis_angle(r.double()).float()


def relative_motion(motion: Tensor, motion_0: Tensor, source_motion: Tensor) -> Tensor:
    """``source + (motion - motion_0)`` for motion vectors ``(N, D)`` (``motion_0``: ``(D,)`` or ``(1, D)``)."""
    return source_motion + (motion - motion_0)


def relative_flame_labels(labels: Tensor, label_0: Tensor, source_label: Tensor) -> Tensor:
    """FLAME labels ``(N, 437)`` relative to ``label_0`` ``(437,)`` applied to ``source_label`` ``(1, 437)``:
    neck rotation composed, expression / jaw / eyes as differences, the source's identity kept; the camera
    entries are the driving frame's."""
    n = labels.shape[0]
    out = labels.clone()
    src = source_label.expand(n, -1)
    ref = label_0.reshape(1, -1).expand(n, -1)
    out[:, _NECK] = relative_rotation(labels[:, _NECK], ref[:, _NECK], src[:, _NECK])
    for sl in _ADDITIVE:
        out[:, sl] = src[:, sl] + labels[:, sl] - ref[:, sl]
    out[:, _SHAPE] = src[:, _SHAPE]
    return out
