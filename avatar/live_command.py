"""``avatar live PHOTO``: a camera (or a video played as one) drives the avatar in real time.

Frames go one at a time through :class:`~avatar.pipelines.live.LiveReenactor` (causal smoothing, a one-second
"hold still" calibration of the neutral pose). Where they go:

* a window (``cv2.imshow``) when the installed OpenCV has a GUI (``opencv-python``; the toolkit's default
  ``opencv-python-headless`` has none, so the window is off there): ``q``/Esc quits, ``c`` recalibrates;
* ``--virtual-camera``: a virtual camera device that video-call apps can pick, through ``pyvirtualcam`` (install
  it and its OS backend: v4l2loopback on Linux, OBS on Windows and macOS);
* ``--output FILE``: the frames are also written to a video file.

``--camera`` takes a camera index (OpenCV) or a video file, which is then played as the stream at its own frame
rate (frames are never dropped: each is answered, in order). At the end one line reports frames, frames/s and the
median and 95th-percentile latency per frame.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import InputError, MissingDependencyError

logger = logging.getLogger("avatar.live")

HELP = "a camera (or a video played as one) drives the avatar in real time"
__all__ = ["HELP", "add_arguments", "camera_frames", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from avatar.cli import FPS, POSITIVE_INT, _add_model_options

    p.add_argument("photo", help="portrait photo (or a saved .avatar.safetensors)")
    p.add_argument("--camera", default="0",
                   help="camera index (default 0) or a video file played as the camera stream")
    p.add_argument("--virtual-camera", action="store_true",
                   help="send the avatar to a virtual camera device (needs pyvirtualcam and its OS backend)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the live frames to this video file")
    p.add_argument("--no-window", action="store_true", help="no preview window")
    p.add_argument("--max-frames", type=POSITIVE_INT, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--absolute", action="store_true", help="absolute motion (no calibration)")
    p.add_argument("--calibration-seconds", type=float, default=1.0, metavar="S",
                   help="how long to hold still at the start, in relative mode (default 1)")
    p.add_argument("--no-smooth", action="store_true", help="no one-euro smoothing of crops and head poses")
    p.add_argument("--fps", type=FPS, default=25.0, help="frame rate of the --output file for a camera "
                   "(a video file keeps its own)")
    _add_model_options(p)


def _opencv_has_gui() -> bool:
    import cv2

    info = cv2.getBuildInformation()
    gui = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.strip().startswith("GUI:")),
               "NONE")
    return gui.upper() not in ("NONE", "")


def camera_frames(camera: str, max_frames: int | None) -> tuple[Iterator[tuple[np.ndarray, float | None]], float]:
    """``(frames, fps)``: RGB uint8 frames with their timestamps (a video file: its own; a camera: ``None``, the
    clock's), and the frame rate."""
    if not camera.isdigit():
        from avatar.io import VideoReader

        path = Path(camera)
        if not path.is_file():
            raise InputError(f"--camera {camera}: no such camera index or video file; give a camera index (0, 1, "
                             "...) or a video file")
        reader = VideoReader(path, max_frames=max_frames)
        fps = float(reader.fps)
        return ((frame, i / fps) for i, frame in enumerate(reader)), fps
    import cv2

    capture = cv2.VideoCapture(int(camera))
    if not capture.isOpened():
        raise InputError(f"cannot open camera {camera}; check that it is connected and not used by another "
                         "program, or give a video file with --camera FILE")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0

    def frames() -> Iterator[tuple[np.ndarray, float | None]]:
        try:
            n = 0
            while max_frames is None or n < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), None
                n += 1
        finally:
            capture.release()

    return frames(), fps


def _virtual_camera(size: int, fps: float) -> Any:
    try:
        import pyvirtualcam
    except ImportError:
        raise MissingDependencyError("--virtual-camera needs the pyvirtualcam package (pip install pyvirtualcam) and "
                                     "its OS backend (v4l2loopback on Linux, OBS on Windows/macOS)") from None
    try:
        return pyvirtualcam.Camera(width=size, height=size, fps=fps)
    except RuntimeError as exc:
        raise InputError(f"no virtual camera device could be opened ({exc}); install its backend "
                         "(v4l2loopback on Linux, OBS Virtual Camera on Windows/macOS)") from None


def run(args: argparse.Namespace) -> int:
    from avatar.cli import _avatar, _check_photo, _load_pipeline
    from avatar.io import VideoWriter
    from avatar.pipelines.live import LiveReenactor, latency_summary

    if not args.calibration_seconds >= 0:
        raise InputError(f"--calibration-seconds must be >= 0, got {args.calibration_seconds}")
    window = not args.no_window and _opencv_has_gui()
    if not (window or args.virtual_camera or args.output):
        raise InputError("nothing to show the avatar on: this OpenCV has no GUI for a window (opencv-python-headless); "
                         "give --output FILE or --virtual-camera, or install opencv-python for a window")
    _check_photo(args.photo)
    frames, fps = camera_frames(str(args.camera), args.max_frames)  # a missing camera fails before the networks load
    pipe = _load_pipeline(args)
    avatar = _avatar(pipe, Path(args.photo), args.aligned)
    if str(pipe.device).startswith("cpu"):
        logger.warning("live mode needs a GPU to keep up; on the CPU it runs at whatever rate it gets")
    fps = fps if not str(args.camera).isdigit() else args.fps
    latencies: list[float] = []
    t0 = time.perf_counter()
    live = LiveReenactor(pipe, avatar, relative=not args.absolute, smooth=not args.no_smooth,
                         calibration_seconds=args.calibration_seconds)
    cam = writer = None
    try:
        for frame, timestamp in frames:
            out = live.step(frame, timestamp)
            latencies.append(out.latency_ms)
            if cam is None and args.virtual_camera:
                cam = _virtual_camera(out.image.shape[0], fps)
            if writer is None and args.output:
                writer = VideoWriter(args.output, fps).__enter__()
            if writer is not None:
                writer.write(out.image)
            if cam is not None:
                cam.send(out.image)
            if window:
                import cv2

                cv2.imshow("avatar live (q: quit, c: recalibrate)", cv2.cvtColor(out.image, cv2.COLOR_RGB2BGR))
                key = cv2.waitKey(1) & 0xFF
                if key in (ord("q"), 27):
                    break
                if key == ord("c"):
                    live.recalibrate()
        if writer is not None:
            writer.__exit__(None, None, None)
            writer = None
    finally:
        if writer is not None:  # an error or Ctrl-C: the partial file is discarded
            writer.__exit__(RuntimeError, RuntimeError("stopped"), None)
        if cam is not None:
            cam.close()
        live.close()
        if window:
            import cv2

            cv2.destroyAllWindows()
    if not latencies:
        raise InputError(f"--camera {args.camera} gave no frames")
    wall = time.perf_counter() - t0
    median, p95 = latency_summary(latencies)
    print(f"{len(latencies)} frames in {wall:.1f} s ({len(latencies) / wall:.1f} frames/s on {pipe.device}); "
          f"latency per frame: median {median:.0f} ms, 95th percentile {p95:.0f} ms"
          + (f"; written to {args.output}" if args.output else ""))
    return 0
