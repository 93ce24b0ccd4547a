"""A driving video -> the per-frame signals that drive a fitted GPHM avatar (:mod:`avatar.fitting.gphm_fit`),
without storing crops or mattes.

:func:`prepare_video` (:mod:`avatar.fitting.video_data`) stores every crop and matte, which fitting needs and
driving does not. :func:`extract_driving_signals` runs the same steps with the same functions and keeps only
what the avatar reads: per frame the expression input ``(1434,)`` (the unposed MediaPipe mesh minus the
canonical face, centimetres) and the head pose ``world_to_camera (4, 4)`` in the fixed crop's pinhole camera
(world = MediaPipe's canonical face in metres). Steps, as in :func:`~avatar.fitting.video_data.prepare_video`:
pass 1 finds the largest face of every frame (:func:`~avatar.fitting.video_data.crop_box` makes the one fixed
crop), pass 2 runs the face mesh in the crop at ``resolution`` (the avatar's) and turns it into a pose
(:func:`~avatar.fitting.video_data.pinhole_pose`) and an expression input
(:func:`~avatar.fitting.video_data.expression_points`). Unlike the preparation, a driving video may show other
faces or lose the face: frames without one **hold the last good signals** (those before the first face take
the first face's), as ``avatar reenact`` does for the other models, and are listed in
:attr:`DrivingSignals.frames_without_face`; only a video with no face at all is refused.

:func:`map_to_avatar` turns the signals into the avatar's inputs:

* ``relative=False`` (absolute): as they are - what the held-out frames of the monocular benchmark get
  (``scripts/gphm_monocular_eval.py``): the avatar's signal encoder subtracts its training neutral itself. Right
  for the person the avatar was fitted to, filmed the same way.
* ``relative=True`` (default): the driving video's changes from its first frame with a face are applied to the
  avatar's own neutral and mean pose: expression ``e_i - e_0 + neutral`` (``neutral``: the training frames'
  median expression input), rotation ``(R_i R_0^T) R_ref`` and translation ``t_ref + (t_i - t_0) z_ref / z_0``
  (``R_ref, t_ref``: the training frames' mean pose; the translation change is scaled by the depth ratio, so the
  head moves across the picture as much as the driver's does). Another person's face shape and another
  framing then do not leak into the avatar.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avatar.errors import InputError, NoFaceError, UnknownOptionValueError
from avatar.fitting import video_data as vd
from avatar.io.video import VideoReader

__all__ = ["DrivingSignals", "extract_driving_signals", "map_to_avatar"]

logger = logging.getLogger(__name__)


@dataclass
class DrivingSignals:
    """Per-frame driving signals of a video (module docstring); one entry per source frame read."""

    expressions: Tensor
    """``(F, 1434)`` float32 expression inputs."""
    world_to_camera: Tensor
    """``(F, 4, 4)`` float32 head poses (world -> camera, OpenCV axes, metres)."""
    face_found: np.ndarray
    """``(F,)`` bool: whether the frame had its own face (else it holds the last good signals)."""
    fps: Fraction
    """The video's frame rate."""
    resolution: int = 512
    """Side of the crop the mesh ran on."""
    crop: tuple[int, int, int] = (0, 0, 0)
    """The fixed crop ``(x0, y0, side)`` in source pixels."""
    source: Path | None = None
    """The video."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.expressions)
        if self.expressions.shape != (n, vd.EXPRESSION_DIM) or self.world_to_camera.shape != (n, 4, 4) \
                or len(self.face_found) != n:
            raise InputError(f"driving signals are expressions (F, {vd.EXPRESSION_DIM}), world_to_camera (F, 4, 4) "
                             f"and face_found (F,) with the same F, got {tuple(self.expressions.shape)}, "
                             f"{tuple(self.world_to_camera.shape)} and {len(self.face_found)}")
        if n == 0:
            raise InputError("driving signals need at least one frame")
        if not np.asarray(self.face_found, dtype=bool).any():
            raise NoFaceError("the driving signals have no frame with a face")

    def __len__(self) -> int:
        return int(self.expressions.shape[0])

    @property
    def frames_without_face(self) -> list[int]:
        """Frames that held the last good signals."""
        return [int(i) for i in np.flatnonzero(~np.asarray(self.face_found, dtype=bool))]

    @property
    def reference_index(self) -> int:
        """The first frame with a face (the reference of relative driving)."""
        return int(np.flatnonzero(np.asarray(self.face_found, dtype=bool))[0])


def _face_backend(backend: Any) -> Any:
    if isinstance(backend, str):
        if backend not in vd.BACKENDS:
            raise UnknownOptionValueError(f"backend must be one of {vd.BACKENDS}, got {backend!r}")
        from avatar.face.mediapipe_face import MediaPipeFaceBackend

        return MediaPipeFaceBackend()
    if not all(hasattr(backend, m) for m in ("detect_boxes", "detect")):
        raise InputError("a face backend object needs detect_boxes and detect methods (as MediaPipeFaceBackend has)")
    return backend


def _frame_signals(frame: np.ndarray, crop: tuple[int, int, int], resolution: int, k: np.ndarray,
                   backend: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One frame's ``(points (478, 3) cm, rotation (3, 3), translation (3,))``, or ``None`` without a mesh in the
    crop (the steps of the preparation's frame processing, without the matte)."""
    from avatar.face.mediapipe_face import head_pose_from_mesh

    x0, y0, side = crop
    image = np.ascontiguousarray(vd._resize(frame[y0:y0 + side, x0:x0 + side], resolution))
    faces = [f for f in backend.detect(image) if getattr(f, "mesh", None) is not None]
    if not faces:
        return None
    mesh = np.asarray(max(faces, key=lambda f: vd._size(f.box)).mesh, dtype=np.float64)
    pose = head_pose_from_mesh(mesh)
    rot, trans, _ = vd.pinhole_pose(pose, mesh, k)
    return vd.expression_points(mesh, pose), rot, trans


def extract_driving_signals(video: str | Path, *, resolution: int = 512, max_frames: int | None = None,
                            backend: Any = "mediapipe", progress: bool = True) -> DrivingSignals:
    """The driving signals of every frame of ``video`` (module docstring).

    Args:
        video: the driving video (anything PyAV reads).
        resolution: side of the crop the mesh runs on (the avatar's fitting resolution; the pose is in metres
            and the intrinsics scale with it, so any size gives the same camera).
        max_frames: use only the first frames (``None``: all).
        backend: ``'mediapipe'`` or an object with ``detect_boxes`` and ``detect`` like
            :class:`~avatar.face.mediapipe_face.MediaPipeFaceBackend`.
        progress: progress bars.

    Raises:
        VideoReadError: the video is missing, empty or unreadable.
        NoFaceError: no face in any frame.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise InputError(f"resolution must be a whole number of pixels, at least 16, got {resolution!r}")
    path = Path(video)
    reader = VideoReader(path, max_frames=max_frames)  # checks the file now
    face = _face_backend(backend)
    det = vd._detect_all(reader, face, progress)
    n = len(det["counts"])
    has_face = det["counts"] > 0
    if not has_face.any():
        raise NoFaceError(f"{path}: no face in any of its {n} frames; give a driving video of a face")
    crop = vd.crop_box(det["boxes"][has_face], reader.info.width, reader.info.height)
    k = vd.intrinsics(resolution)
    points = np.zeros((n, vd.NUM_POINTS, 3))
    poses = np.tile(np.eye(4), (n, 1, 1))
    found = np.zeros(n, dtype=bool)
    bar = vd._bar(n, "driving signals", progress)
    try:
        for i, frame in enumerate(vd._frames(reader, n)):
            result = _frame_signals(frame, crop, resolution, k, face) if has_face[i] else None
            if result is not None:
                points[i], poses[i, :3, :3], poses[i, :3, 3] = result
                found[i] = True
            bar.update(1)
    finally:
        bar.close()
    if not found.any():
        raise NoFaceError(f"{path}: the face mesh was found in none of the {n} frames of the crop; give a video "
                          "where the face is seen clearly")
    # frames without a face hold the last good signals; those before the first face take the first face's
    last = int(np.flatnonzero(found)[0])
    for i in range(n):
        if found[i]:
            last = i
        else:
            points[i], poses[i] = points[last], poses[last]
    if (~found).any():
        logger.info("%s: %d of %d frames without a face hold the last good signals", path, int((~found).sum()), n)
    return DrivingSignals(torch.from_numpy(vd.expression_input(points)), torch.from_numpy(poses).float(), found,
                          Fraction(reader.fps), resolution, crop, path,
                          {"width": reader.info.width, "height": reader.info.height})


@torch.no_grad()
def map_to_avatar(signals: DrivingSignals, avatar: Any, *, relative: bool = True) -> tuple[Tensor, Tensor]:
    """The avatar's inputs ``(expressions (F, 1434), world_to_camera (F, 4, 4))`` on the CPU from driving signals
    (module docstring: absolute or relative to the avatar's training neutral and mean pose).

    ``avatar``: a :class:`~avatar.fitting.gphm_fit.FittedGPHMAvatar`."""
    expressions = signals.expressions.float()
    poses = signals.world_to_camera.float()
    if not relative:
        return expressions.clone(), poses.clone()
    enc = avatar.signals
    neutral = enc.neutral.detach().float().cpu()
    ref_rot = enc.reference_rotation.detach().float().cpu()
    ref_trans = enc.reference_translation.detach().float().cpu()
    r0 = signals.reference_index
    out_expr = expressions - expressions[r0] + neutral
    rot0, t0 = poses[r0, :3, :3], poses[r0, :3, 3]
    delta = poses[:, :3, :3] @ rot0.T
    depth_ratio = float(ref_trans[2] / t0[2]) if float(t0[2]) > 0 else 1.0
    out = torch.eye(4).repeat(len(poses), 1, 1)
    out[:, :3, :3] = delta @ ref_rot
    out[:, :3, 3] = ref_trans + (poses[:, :3, 3] - t0) * depth_ratio
    return out_expr, out
