"""Speed of the two face backends per frame: MediaPipe (real weights) against the official detector and landmarks.

    python -m avatar.bench face [--video VIDEO] [--frames 60] [--device cpu|cuda] [--repeats 3] [--json OUT]

Rows, each in ms per frame (median over ``--repeats`` passes over the same frames):

* **mediapipe**: both detectors, the mesh on the largest face, the five points and head pose, the selfie matte,
  and ``detect`` as the pipeline calls it (detectors + mesh of every face);
* **official**: RetinaFace and H3R (and 3DFAN, which both backends run for PD-FGC) at official size with random
  weights (the work per frame does not depend on the weight values; the detector is set to report one face),
  one frame at a time and the whole clip as one batch, on ``--device``.

MediaPipe runs on the CPU only here (its legacy API has no GPU path in the Python wheels) and uses the threads it
chooses; run under ``taskset -c 0,1`` to measure on two cores. The frames come from ``--video`` (default: the
first talking-head video of ``../shared/media`` when it is there, else the public-domain astronaut photo of
scikit-image moved and turned a little per frame), since MediaPipe's mesh runs only where there is a face.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from avatar.errors import InputError, NoFaceError

DEFAULT_VIDEO = Path(__file__).resolve().parents[3] / "shared" / "media" / "videos" / "talk1.mp4"


@dataclass
class FaceTiming:
    backend: str
    what: str
    ms_per_frame: float
    frames: int


def _frames(video: Path | None, count: int) -> tuple[list[np.ndarray], str]:
    from avatar.io.video import VideoReader

    path = video or (DEFAULT_VIDEO if DEFAULT_VIDEO.is_file() else None)
    if path is not None:
        frames = list(VideoReader(path, max_frames=count))
        if not frames:
            raise InputError(f"{path} has no frames")
        return frames, str(path)
    try:
        import skimage.data
    except ImportError:
        raise InputError("give --video VIDEO (a video with a face): without ../shared/media the default frames "
                         "come from scikit-image's astronaut photo, and scikit-image is not installed") from None
    photo = skimage.data.astronaut()
    h, w = photo.shape[:2]
    out = []
    for i in range(count):
        m = cv2.getRotationMatrix2D((w / 2, h / 3), 8 * np.sin(i / 5), 1.0)
        m[:, 2] += (6 * np.sin(i / 7), 4 * np.cos(i / 9))
        out.append(cv2.warpAffine(photo, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    return out, "scikit-image astronaut, moved per frame"


def _median_ms_per_frame(fn: Callable[[], object], frames: int, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3 / frames


def mediapipe_rows(frames: list[np.ndarray], repeats: int) -> list[FaceTiming]:
    from avatar.face.mediapipe_face import MediaPipeFaceBackend, five_points_from_mesh, head_pose_from_mesh

    backend = MediaPipeFaceBackend()
    boxes = [backend.detect_boxes(f) for f in frames]  # warm-up: graphs are built on first use
    if not all(boxes):
        raise NoFaceError(f"MediaPipe found no face in {sum(not b for b in boxes)} of {len(frames)} frames; "
                          "give a --video that shows one face throughout")
    meshes = [backend.mesh(f, b[0].box) for f, b in zip(frames, boxes, strict=True)]
    backend.matte(frames[0])
    n = len(frames)
    cpu = torch.device("cpu")
    stages: dict[str, Callable[[], object]] = {
        "detection (full- and short-range)": lambda: [backend.detect_boxes(f) for f in frames],
        "mesh of the largest face (478 points)": lambda: [backend.mesh(f, b[0].box)
                                                          for f, b in zip(frames, boxes, strict=True)],
        "five points + head pose": lambda: [(five_points_from_mesh(m), head_pose_from_mesh(m))
                                            for m in meshes if m is not None],
        "selfie matte": lambda: [backend.matte(f) for f in frames],
        "detect() as the pipeline calls it": lambda: backend.detect_batch(frames),
    }
    return [FaceTiming("mediapipe", what, _median_ms_per_frame(fn, n, repeats, cpu), n) for what, fn in stages.items()]


def official_rows(frames: list[np.ndarray], repeats: int, device: torch.device) -> list[FaceTiming]:
    from avatar.face.fan3d import FAN3DLandmarker
    from avatar.face.h3r import H3R, H3RLandmarker
    from avatar.face.retinaface import RetinaFace, rig_for_random_weights

    torch.manual_seed(0)
    detector = rig_for_random_weights(RetinaFace(RetinaFace.config_class()).eval(), 2, 0, top_k=5).to(device)
    h3r = H3RLandmarker(H3R(H3R.config_class()).eval().to(device))
    fan = FAN3DLandmarker(FAN3DLandmarker.config_class()).eval().to(device)
    n = len(frames)
    faces = detector.detect_batch(frames)  # warm-up
    boxes = [[f[0].box] if f else [np.array([0, 0, 64, 64], np.float32)] for f in faces]
    h3r.landmarks_batch(frames, boxes)
    fan.landmarks_batch(frames, boxes)
    rows = []
    with torch.inference_mode():
        for label, batch in (("one frame at a time", 1), (f"batch of {n}", n)):
            chunks = [slice(i, i + batch) for i in range(0, n, batch)]
            stages: dict[str, Callable[[], object]] = {
                f"RetinaFace, {label}": lambda c=chunks: [detector.detect_batch(frames[s]) for s in c],
                f"H3R 98 points, {label}": lambda c=chunks: [h3r.landmarks_batch(frames[s], boxes[s]) for s in c],
                f"3DFAN 68 points (both backends), {label}": lambda c=chunks: [fan.landmarks_batch(frames[s], boxes[s])
                                                                               for s in c],
            }
            rows += [FaceTiming("official", what, _median_ms_per_frame(fn, n, repeats, device), n)
                     for what, fn in stages.items()]
    return rows


def format_table(rows: list[FaceTiming]) -> str:
    lines = ["| backend | stage | ms / frame | frames/s |", "|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.what} | {r.ms_per_frame:.1f} | {1e3 / r.ms_per_frame:.0f} |" for r in rows]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import POSITIVE_INT

    parser.add_argument("--video", type=Path, help="video with a face (default: see the module docstring)")
    parser.add_argument("--frames", type=POSITIVE_INT, default=60, help="frames timed per pass (default 60)")
    parser.add_argument("--repeats", type=POSITIVE_INT, default=3, help="timed passes (median; default 3)")
    parser.add_argument("--device", default="cpu", help="device of the official networks (MediaPipe: CPU)")
    parser.add_argument("--skip-official", action="store_true", help="time MediaPipe only")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.repeats < 1:
        raise InputError("--frames and --repeats must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device} asked for, but no CUDA device is available; use --device cpu")
    frames, source = _frames(args.video, args.frames)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", official networks on {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"frames: {len(frames)} of {source}, {frames[0].shape[1]}x{frames[0].shape[0]}; CPU cores usable: {cores}; "
          f"torch threads: {torch.get_num_threads()}{gpu}\n", flush=True)
    rows = mediapipe_rows(frames, args.repeats)
    if not args.skip_official:
        rows += official_rows(frames, args.repeats, device)
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
