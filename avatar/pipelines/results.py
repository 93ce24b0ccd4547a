"""What a reenactment call returns: its frames and the facts of that call (never stored on the pipeline).

:class:`ReenactStream` is returned by ``iter_reenact``: iterate it for :class:`ReenactedFrame` s; its attributes
(``frames_without_face``, ``frames_done``, ``head_pose``, ``fps``) belong to that one call, so concurrent
calls on one cached pipeline (the app) never see each other's counts. ``reenact`` collects a whole stream into a
:class:`ReenactResult`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from avatar.errors import VideoReadError

__all__ = ["ReenactResult", "ReenactStream", "ReenactedFrame"]


@dataclass
class ReenactedFrame:
    """One output frame.

    Attributes:
        index: driving frame index.
        image: ``(r, r, 3)`` uint8 rendered frame (``r`` = the model's output resolution, 512 officially).
        driving: ``(512, 512, 3)`` uint8 aligned crop of the driving frame (the raw frame, resized, without a face).
        face_found: whether the driving frame had a usable face (otherwise the last good motion was held).
    """

    index: int
    image: np.ndarray
    driving: np.ndarray
    face_found: bool


@dataclass
class ReenactResult:
    """All frames of one reenactment call.

    Attributes:
        frames: ``(N, r, r, 3)`` uint8.
        driving: ``(N, 512, 512, 3)`` uint8 driving crops.
        fps: the driving video's frame rate.
        frames_without_face: indices of driving frames whose motion was held from the last good one.
        head_pose: the head-pose mode that was used (it may differ from the one asked for; see the pipeline).
    """

    frames: np.ndarray
    driving: np.ndarray
    fps: Fraction
    frames_without_face: list[int]
    head_pose: str = ""


@dataclass
class ReenactStream(Iterator[ReenactedFrame]):
    """The frames of one ``iter_reenact`` call, as they are made, and that call's facts.

    Attributes:
        total: number of driving frames when known in advance (a video file), else ``None``.
        fps: the driving video's frame rate (25 for frames given in memory).
        head_pose: the head-pose mode used for this call.
        frames_done: frames yielded so far.
        frames_without_face: indices of the frames yielded so far whose driving frame had no usable face.
    """

    frames: Iterator[ReenactedFrame]
    total: int | None = None
    fps: Fraction = Fraction(25)
    head_pose: str = ""
    frames_done: int = 0
    frames_without_face: list[int] = field(default_factory=list)

    def __iter__(self) -> ReenactStream:
        return self

    def __next__(self) -> ReenactedFrame:
        frame = next(self.frames)
        self.frames_done += 1
        if not frame.face_found:
            self.frames_without_face.append(frame.index)
        return frame

    def close(self) -> None:
        """Stop early: closes the video and any prefetching thread."""
        close = getattr(self.frames, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> ReenactStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self) -> ReenactResult:
        """Run the rest of the stream and return every frame it made (memory: all frames)."""
        images, driving = [], []
        for frame in self:
            images.append(frame.image)
            driving.append(frame.driving)
        if not images:
            raise VideoReadError("the driving video gave no frames; use a video with at least one frame")
        return ReenactResult(np.stack(images), np.stack(driving), self.fps, list(self.frames_without_face),
                             self.head_pose)
