"""``avatar reenact AVATAR_DIR DRIVING.mp4 -o out.mp4``: a fitted GPHM avatar (:mod:`avatar.fitting.gphm_fit`)
driven by a video.

:func:`reenact_video` extracts the driving video's signals with MediaPipe (:mod:`avatar.fitting.driving`: the
expression input and head pose of every frame, no crops stored), maps them onto the avatar (relative to its
training neutral and mean pose by default, or as they are), renders every frame in batches (signals ->
Gaussians -> splatting -> refine network, :meth:`FittedGPHMAvatar.render_images`) and writes the video with the
toolkit's :class:`~avatar.io.VideoWriter`: the driving video's frame rate, and its audio unless ``audio=False``
(copied, or re-encoded to AAC when the container needs it), as ``avatar reenact`` does for the other models.
One output frame per driving frame; frames without a face hold the last good motion.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avatar.errors import InputError

__all__ = ["ReenactResult", "iter_reenact_frames", "reenact_video"]

logger = logging.getLogger(__name__)

MIN_SIGNAL_RESOLUTION = 256
"""The driving crop the face mesh runs on has the avatar's fitting resolution (as its training frames had), but
at least this many pixels: the pose is in metres and the intrinsics scale with the crop, so only the mesh's
accuracy depends on it, and the mesh needs a face of some size."""


@dataclass
class ReenactResult:
    """What :func:`reenact_video` wrote."""

    path: Path
    frames: int
    fps: Fraction
    resolution: int
    frames_without_face: list[int] = field(default_factory=list)
    audio_mode: str | None = None
    """``'copy'``, ``'aac'`` or ``None`` (no audio)."""
    codec: str = ""
    signal_seconds: float = 0.0
    """Time to extract the driving signals (MediaPipe, on the CPU)."""
    render_seconds: float = 0.0
    """Time to render the frames (without the video encoding)."""
    device: str = "cpu"

    @property
    def render_fps(self) -> float:
        return self.frames / self.render_seconds if self.render_seconds > 0 else float("inf")


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` in [0, 1] -> ``(B, H, W, 3)`` uint8."""
    return (images.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def iter_reenact_frames(avatar: Any, expressions: torch.Tensor, poses: torch.Tensor, *, batch_size: int = 8,
                        resolution: int | None = None, progress: bool = False,
                        timer: dict[str, float] | None = None) -> Iterator[np.ndarray]:
    """Render ``expressions (F, 1434)`` and ``poses (F, 4, 4)`` (the avatar's inputs, :func:`map_to_avatar`) in
    batches of ``batch_size``, yielding ``(R, R, 3)`` uint8 frames in order. ``timer['render']`` accumulates the
    rendering time (CUDA-synchronised)."""
    from avatar.fitting.gphm_fit import _bar

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if expressions.dim() != 2 or poses.dim() != 3 or len(expressions) != len(poses):
        raise InputError(f"expressions (F, 1434) and poses (F, 4, 4) with the same F, got "
                         f"{tuple(expressions.shape)} and {tuple(poses.shape)}")
    cuda = avatar.device.type == "cuda"
    for i in _bar(range(0, len(expressions), batch_size), progress, "render", "batch"):
        t0 = time.perf_counter()
        images = avatar.render_images(expressions[i:i + batch_size], poses[i:i + batch_size], resolution=resolution)
        if cuda:
            torch.cuda.synchronize(avatar.device)
        frames = _to_uint8(images)
        if timer is not None:
            timer["render"] = timer.get("render", 0.0) + time.perf_counter() - t0
        yield from frames


def reenact_video(avatar_dir: str | Path | Any, driving: str | Path, out: str | Path, *, relative: bool = True,
                  batch_size: int = 8, device: str | torch.device | None = None, resolution: int | None = None,
                  max_frames: int | None = None, audio: bool = True, backend: Any = "mediapipe",
                  signals: Any = None, progress: bool = True, fast: bool = True) -> ReenactResult:
    """Drive a fitted GPHM avatar with a video and write the result (module docstring).

    Args:
        avatar_dir: the avatar folder (``avatar fit``) or a loaded :class:`FittedGPHMAvatar`.
        driving: the driving video (its frame rate and audio are kept).
        out: the output video (.mp4, ...), written atomically.
        relative: apply the driving changes from its first frame with a face to the avatar's neutral and mean
            pose (default); ``False``: the driving signals as they are (self-reenactment, the benchmark's way).
        batch_size: frames rendered together.
        device: ``cuda``, ``cpu``, ... (``None``: CUDA when available).
        resolution: output size (default the avatar's; a multiple of 4 x the refine network's upsampling).
        max_frames: use only the first driving frames.
        audio: copy the driving video's audio.
        backend: the face backend of :func:`~avatar.fitting.driving.extract_driving_signals`.
        signals: precomputed :class:`~avatar.fitting.driving.DrivingSignals` of ``driving`` (skips extraction;
            ``max_frames`` then cuts them).
        progress: progress bars.
        fast: render through :meth:`GPHMAvatar.enable_fast_inference` (the code-free first layers computed once;
            on CUDA the MLPs and the refine network under bf16 autocast, on other devices float32, where the
            output equals the reference path's up to rounding); ``False``: the reference path.

    Raises:
        InputNotFoundError / InputError: not an avatar folder, bad options.
        VideoReadError, NoFaceError: the driving video cannot be read or shows no face.
    """
    from avatar.fitting.gphm_fit import FittedGPHMAvatar, load_gphm_avatar

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} was asked for but no CUDA device is available; use cpu")
    if isinstance(avatar_dir, FittedGPHMAvatar):
        avatar = avatar_dir.to(dev).eval()
    else:
        avatar = load_gphm_avatar(avatar_dir, device=dev)
    caller_setting = avatar.avatar.fast_inference  # a passed-in avatar gets its own setting back at the end
    if fast:
        avatar.enable_fast_inference(torch.bfloat16 if dev.type == "cuda" else None)
    else:
        avatar.avatar.disable_fast_inference()
    try:
        return _reenact(avatar, driving, out, dev, relative=relative, batch_size=batch_size, resolution=resolution,
                        max_frames=max_frames, audio=audio, backend=backend, signals=signals, progress=progress)
    finally:
        if caller_setting is None:
            avatar.avatar.disable_fast_inference()
        else:
            avatar.avatar.enable_fast_inference(caller_setting.dtype, cuda_graphs=caller_setting.cuda_graphs)


def _reenact(avatar: Any, driving: str | Path, out: str | Path, dev: torch.device, *, relative: bool,
             batch_size: int, resolution: int | None, max_frames: int | None, audio: bool, backend: Any,
             signals: Any, progress: bool) -> ReenactResult:
    from avatar.fitting.driving import DrivingSignals, extract_driving_signals, map_to_avatar
    from avatar.io import VideoWriter

    res = avatar.resolution if resolution is None else int(resolution)
    avatar.feature_intrinsics(1, res)  # a bad resolution fails now, before the driving video is processed
    t0 = time.perf_counter()
    if signals is None:
        signals = extract_driving_signals(driving, resolution=max(avatar.resolution, MIN_SIGNAL_RESOLUTION),
                                          max_frames=max_frames, backend=backend, progress=progress)
    elif not isinstance(signals, DrivingSignals):
        raise InputError(f"signals must be DrivingSignals, got {type(signals).__name__}")
    elif max_frames is not None and max_frames < len(signals):
        signals = DrivingSignals(signals.expressions[:max_frames], signals.world_to_camera[:max_frames],
                                 signals.face_found[:max_frames], signals.fps, signals.resolution, signals.crop,
                                 signals.source, signals.meta)
    signal_seconds = time.perf_counter() - t0
    expressions, poses = map_to_avatar(signals, avatar, relative=relative)
    timer: dict[str, float] = {}
    frames = iter_reenact_frames(avatar, expressions, poses, batch_size=batch_size, resolution=res,
                                 progress=progress, timer=timer)
    with VideoWriter(out, signals.fps, audio_from=driving if audio else None) as writer:
        for frame in frames:
            writer.write(frame)
    result = ReenactResult(Path(out), writer.frames_written, Fraction(writer.fps), res,
                           signals.frames_without_face, writer.audio_mode, writer.codec, signal_seconds,
                           timer.get("render", 0.0), str(dev))
    logger.info("rendered %d frames at %dx%d on %s: %.1f frames/s (driving signals: %.1f s)", result.frames, res,
                res, dev, result.render_fps, signal_seconds)
    return result
