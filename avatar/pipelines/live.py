"""Live reenactment: one camera frame in, one avatar frame out, with causal smoothing and a neutral-pose calibration.

:class:`LiveReenactor` drives an avatar from frames that arrive one at a time (a webcam, the app's streaming
input, a video played as a stream). It is built on the pipeline's own ``iter_reenact`` with a batch of one, fed
by a one-slot source, so every step runs exactly the offline path on exactly one frame: the same preprocessing,
motion encoding, relative motion and rendering, and the same one-euro smoothing of crops and head poses, which is
causal (each output depends only on the frames before it). Nothing is buffered: a frame's output is returned by
the call that received it, so frames are answered in order, one for one.

Calibration ("hold still"). In relative mode the driving motion is applied as a change from a reference frame,
so the reference should show the user's neutral face, looking at the camera. Calibration lasts
``calibration_seconds`` from the first frame with a face; meanwhile the output already follows the face (its
reference is that first frame). When the time is over the reference becomes the last calibration frame with a
face (the user has held still for that long), and the stream restarts from it. :meth:`LiveReenactor.recalibrate` starts a new calibration.
Absolute mode needs no reference: there is no calibration phase then.

Timing: ``latency_ms`` is the time the step took on this machine (preprocessing + rendering; the transport to
and from a browser comes on top); ``fps`` is the rate of steps over the last ``fps_window`` steps.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from avatar.errors import InputError
from avatar.pipelines.base import AvatarPipeline, HeadPoseMode
from avatar.pipelines.results import ReenactStream

__all__ = ["LiveFrame", "LiveReenactor", "latency_summary"]


@dataclass
class LiveFrame:
    """The answer to one live frame.

    Attributes:
        index: the number of this frame in the session (0, 1, ...), in the order the frames were given.
        image: ``(r, r, 3)`` uint8 avatar frame.
        face_found: whether this frame had a usable face (otherwise the last good motion was held).
        calibrating: whether the neutral-pose calibration was still running for this frame.
        latency_ms: time this step took here (preprocessing + rendering).
        fps: steps per second over the recent steps (0 until there are two).
    """

    index: int
    image: np.ndarray
    face_found: bool
    calibrating: bool
    latency_ms: float
    fps: float


class _OneSlot(Iterator[np.ndarray]):
    """An iterator that hands out the frame put into it, one per ``next`` (the stream pulls exactly one per step)."""

    def __init__(self) -> None:
        self.frame: np.ndarray | None = None

    def __next__(self) -> np.ndarray:
        frame, self.frame = self.frame, None
        if frame is None:  # the stream asked for a frame that was not given: a bug, never silent
            raise RuntimeError("the live stream pulled a frame that was not given")
        return frame


class LiveReenactor:
    """Drive ``avatar`` with frames given one at a time (module docstring).

    Args:
        pipeline: any :class:`~avatar.pipelines.base.AvatarPipeline`.
        avatar: the pipeline's avatar of the source photo.
        relative: relative motion from a calibrated neutral frame (default), or absolute motion.
        head_pose: as in ``iter_reenact``.
        smooth: causal one-euro smoothing of crops and head poses.
        calibration_seconds: how long the user holds still at the start (relative mode only; 0: no calibration).
        clock: the time source for calibration and frames/s when a step gets no ``timestamp``.
        fps_window: steps over which ``fps`` is measured.
    """

    def __init__(self, pipeline: AvatarPipeline, avatar: Any, *, relative: bool = True,
                 head_pose: HeadPoseMode = "neck", smooth: bool = True, calibration_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, fps_window: int = 30) -> None:
        if not calibration_seconds >= 0:
            raise InputError(f"calibration_seconds must be >= 0, got {calibration_seconds}")
        if fps_window < 2:
            raise InputError(f"fps_window must be >= 2, got {fps_window}")
        self.pipeline, self.avatar = pipeline, avatar
        self.relative, self.head_pose, self.smooth = relative, head_pose, smooth
        self.calibration_seconds = float(calibration_seconds) if relative else 0.0
        self._clock = clock
        self._times: deque[float] = deque(maxlen=fps_window)
        self._index = 0
        self._slot = _OneSlot()
        self._stream: ReenactStream | None = None
        self._calibration_start: float | None = None
        self._neutral: np.ndarray | None = None  # the last calibration frame with a face
        self.calibrated = self.calibration_seconds == 0.0

    # ---- life cycle ----------------------------------------------------------------------------------------
    def _open(self) -> ReenactStream:
        return self.pipeline.iter_reenact(self.avatar, self._slot, relative=self.relative, head_pose=self.head_pose,
                                          smooth=self.smooth, batch_size=1)

    def _run(self, frame: np.ndarray) -> Any:
        if self._stream is None:
            self._stream = self._open()
        self._slot.frame = frame
        return next(self._stream)

    def recalibrate(self) -> None:
        """Start a new neutral-pose calibration with the next frame (relative mode)."""
        if self.relative and self.calibration_seconds > 0:
            self.calibrated = False
            self._calibration_start = None
            self._neutral = None

    def close(self) -> None:
        """Stop the underlying stream (the reenactor can still be used: the next step opens a new one)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> LiveReenactor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- one frame -----------------------------------------------------------------------------------------
    def step(self, frame: np.ndarray, timestamp: float | None = None) -> LiveFrame:
        """Answer one ``(H, W, 3)`` uint8 RGB frame; ``timestamp`` (seconds) is the frame's time when known (a
        recorded video played as a stream), else the clock's time of the call."""
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"a live frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
        started = time.perf_counter()
        now = self._clock() if timestamp is None else float(timestamp)
        calibrating = not self.calibrated
        out = self._run(frame)
        if calibrating:
            if out.face_found:
                if self._calibration_start is None:  # the second of holding still starts with a face
                    self._calibration_start = now
                self._neutral = frame
            if (self._calibration_start is not None
                    and now - self._calibration_start >= self.calibration_seconds - 1e-6):
                # the neutral frame becomes the reference of a fresh stream; its own output is not shown
                self.close()
                self._run(self._neutral)
                self.calibrated = True
        self._times.append(now)
        span = self._times[-1] - self._times[0]
        fps = (len(self._times) - 1) / span if len(self._times) > 1 and span > 0 else 0.0
        result = LiveFrame(self._index, out.image, out.face_found, calibrating,
                           (time.perf_counter() - started) * 1e3, fps)
        self._index += 1
        return result


def latency_summary(latencies_ms: list[float]) -> tuple[float, float]:
    """``(median, 95th percentile)`` of per-frame latencies (the nearest-rank percentile), for reports."""
    if not latencies_ms:
        raise InputError("no latencies to summarise")
    ordered = sorted(latencies_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
