"""Speed of the whole Portrait4D pipeline: photo -> avatar, and driving video -> reenacted frames.

    python -m avatar.bench pipeline [--device cuda] [--model ID_OR_DIR] [--frames 240] [--batch-sizes 8 16]
                                    [--photo PHOTO] [--video VIDEO] [--write] [--live] [--json OUT]

Two tables:

* **avatar creation**: a photo file -> :class:`~avatar.pipelines.Avatar` (:meth:`Portrait4DPipeline.create_avatar`:
  decoding the photo, RetinaFace, H3R, 3DFAN, the 512 crop, Deep3DFaceRecon, BFM->FLAME, PD-FGC and the source
  encoding), median over ``--repeats`` calls, then the same stages timed one at a time;
* **reenactment**: a driving video file -> reenacted frames (:meth:`Portrait4DPipeline.iter_reenact`: decoding,
  detection, landmarks, crops, FLAME labels and PD-FGC motions of every driving frame, smoothing, relative
  motion and rendering with the FLAME neck field), frames/s of a whole pass (median of ``--passes``), per batch
  size; ``--write`` adds a row that also encodes the result to H.264 with the driving audio; ``--live`` a row
  of live reenactment (frames one at a time through ``LiveReenactor``: its latency per frame). Then the stages
  of one batch timed one at a time (ms per frame).

Without ``--model`` every network has the official architecture and random weights (the work per frame does
not depend on the weight values; the detector is set to report a face so that every stage runs), and the
reconstructor gets a FLAME head-pose field built on a synthetic head of 1280 triangles (the official simplified
mesh has 1394). Without ``--photo``/``--video`` a synthetic 512x512 photo and 25 frames/s H.264 video are made
in a temporary folder, so the figures do not depend on local media.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avatar.bench.timing import sync as _sync
from avatar.bench.timing import time_calls
from avatar.errors import InputError
from avatar.face.geometry import FlameLabel
from avatar.io.image import load_image
from avatar.io.video import VideoReader, VideoWriter
from avatar.models.portrait4d import HeadPose
from avatar.pipelines import Portrait4DPipeline
from avatar.pipelines.preprocess import crop_to_model_input

CREATION_GOAL_S = 0.3
DETECT_STAGE = {"official": "RetinaFace", "mediapipe": "MediaPipe detection + mesh"}
ANALYZE_STAGE = {"official": "H3R + 3DFAN + crop + Deep3D + BFM->FLAME", "mediapipe": "3DFAN + crop + Deep3D + BFM->FLAME"}
REENACT_GOAL_FPS = 30.0


@dataclass
class Timing:
    """One table row: ``what`` took ``ms`` (median) per ``unit``."""

    table: str
    what: str
    batch: int | None
    ms: float
    per_second: float | None = None
    runs: int = 0


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, int]:
    return statistics.median(time_calls(fn, device, repeats)) * 1e3, repeats


def synthetic_media(folder: Path, frames: int, size: int = 512, fps: int = 25) -> tuple[Path, Path]:
    """A PNG photo and an H.264 video of smooth moving patterns with noise (work for the codec)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    def frame(t: float) -> np.ndarray:
        base = np.stack([np.sin(6 * xx + t), np.cos(5 * yy - t), np.sin(4 * (xx + yy) + 2 * t)], -1)
        noise = rng.normal(0, 0.05, size=(size, size, 3))
        return np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)

    photo = folder / "photo.png"
    Image.fromarray(frame(0.0)).save(photo)
    video = folder / "driving.mp4"
    with VideoWriter(video, fps) as writer:
        for i in range(frames):
            writer.write(frame(i / fps))
    return photo, video


def build_pipeline(args: argparse.Namespace, device: torch.device) -> Portrait4DPipeline:
    if args.model:
        pipe = Portrait4DPipeline.from_pretrained(args.model, preprocess=args.preprocess)
    else:
        pipe = Portrait4DPipeline.random("tiny" if args.tiny else "official", head_pose_field=not args.tiny,
                                         preprocess=args.preprocess)
    pipe.to(device)
    if args.dtype == "bf16":
        pipe.enable_fast_inference(torch.bfloat16)
    if args.compile_field:
        pipe.compile_head_pose_field()
    return pipe


def creation(pipe: Portrait4DPipeline, photo: Path, device: torch.device, repeats: int) -> list[Timing]:
    """Photo file -> avatar, whole and per stage."""
    pipe.create_avatar(photo)  # warm-up (kernel selection, lazy initialisation)
    ms, runs = _median_ms(lambda: pipe.create_avatar(photo), device, repeats)
    rows = [Timing("creation", "photo -> avatar (all of it)", 1, ms, 1e3 / ms, runs)]
    pre = pipe.preprocessor
    image = load_image(photo)
    faces = pre.detect([image])
    analysis = pre.analyze([image], [faces[0][0]])[0]
    motion = pipe._motion_or_zeros([analysis]).to(pipe.device)
    r = pipe.reconstructor.config.img_resolution
    x = crop_to_model_input(analysis.crop[None], r, pipe.device)
    shape = analysis.label[None, 25:325].to(pipe.device).float()
    stages: dict[str, Callable[[], object]] = {
        "read the photo": lambda: load_image(photo),
        DETECT_STAGE[pre.backend]: lambda: pre.detect([image]),
        ANALYZE_STAGE[pre.backend]: lambda: pre.analyze([image], [faces[0][0]]),
        "PD-FGC motion": lambda: pipe._motion_or_zeros([analysis]),
        "source encoding (Portrait4D.encode)": lambda: pipe.reconstructor.encode(x, motion, shape),
    }
    for name, fn in stages.items():
        ms, runs = _median_ms(fn, device, repeats)
        rows.append(Timing("creation", f"  {name}", 1, ms, None, runs))
    return rows


def reenactment(pipe: Portrait4DPipeline, photo: Path, video: Path, device: torch.device, batch_sizes: list[int],
                frames: int, passes: int, write: bool, prefetch: list[bool]) -> list[Timing]:
    """Driving video file -> frames, frames/s of whole passes; then one batch stage by stage."""
    avatar = pipe.create_avatar(photo)
    rows: list[Timing] = []

    def run_pass(batch: int, out: Path | None, ahead: bool) -> int:
        n = 0
        if out is None:
            for _ in pipe.iter_reenact(avatar, video, batch_size=batch, max_frames=frames, prefetch=ahead):
                n += 1
            return n
        with VideoWriter(out, VideoReader(video).fps, audio_from=video) as writer:
            for f in pipe.iter_reenact(avatar, video, batch_size=batch, max_frames=frames, prefetch=ahead):
                writer.write(f.image)
                n += 1
        return n

    with tempfile.TemporaryDirectory(prefix="avatar-bench-") as tmp:
        for batch in batch_sizes:
            if device.type == "cuda":
                run_pass(batch, None, False)  # warm-up pass on the GPU
            for ahead in prefetch:
                variants: list[tuple[str, Path | None]] = [("video -> frames", None)]
                if write:
                    variants.append(("video -> frames -> H.264 file", Path(tmp) / "out.mp4"))
                for what, out in variants:
                    per_frame = []
                    count = 0
                    for _ in range(passes):
                        _sync(device)
                        t = time.perf_counter()
                        count = run_pass(batch, out, ahead)
                        _sync(device)
                        per_frame.append((time.perf_counter() - t) / count)
                    ms = statistics.median(per_frame) * 1e3
                    label = f"{what} ({count} frames{', prefetch' if ahead else ''})"
                    rows.append(Timing("reenactment", label, batch, ms, 1e3 / ms, passes))

    # one batch, stage by stage
    batch = max(batch_sizes)
    reader = VideoReader(video, max_frames=batch)
    chunk = list(reader)
    batch = len(chunk)
    pre = pipe.preprocessor
    faces = pre.detect(chunk)
    first = [f[0] for f in faces]
    analyses = pre.analyze(chunk, first)
    motion = pipe._motion_or_zeros(analyses).to(pipe.device)
    labels = torch.stack([a.label for a in analyses]).float()
    mode = pipe._resolve_pose_mode("neck")
    stages: dict[str, Callable[[], object]] = {
        "decode the driving frames": lambda: list(VideoReader(video, max_frames=batch)),
        DETECT_STAGE[pre.backend]: lambda: pre.detect(chunk),
        ANALYZE_STAGE[pre.backend]: lambda: pre.analyze(chunk, first),
        "PD-FGC motion": lambda: pipe._motion_or_zeros(analyses),
        f"render ({mode} head pose)": lambda: pipe._drive(avatar, motion, labels, mode),
    }
    if pipe.reconstructor.deformer.available:
        fl = FlameLabel.from_label(labels.to(pipe.device))
        head = HeadPose(pose=fl.pose, expression=fl.expression, eye_pose=fl.eye_pose)
        shape = avatar.state.to(pipe.device).flame_shape
        stages["  of which the FLAME head-pose field"] = lambda: pipe.reconstructor.head_pose_field(head, shape, batch)
    repeats = 5 if device.type == "cuda" else 2
    for name, fn in stages.items():
        fn()
        ms, runs = _median_ms(fn, device, repeats)
        rows.append(Timing("reenactment", f"  {name}", batch, ms / batch, batch * 1e3 / ms, runs))
    return rows


def live(pipe: Portrait4DPipeline, photo: Path, video: Path, device: torch.device, frames: int) -> list[Timing]:
    """The driving frames given one at a time to :class:`~avatar.pipelines.live.LiveReenactor` (what ``avatar
    live`` and the app's Live tab run): the median and 95th-percentile latency per frame, after a warm-up."""
    from avatar.pipelines.live import LiveReenactor, latency_summary

    avatar = pipe.create_avatar(photo)
    chunk = list(VideoReader(video, max_frames=frames))
    live = LiveReenactor(pipe, avatar)
    for frame in chunk[:3]:  # warm-up (and the first steps of the calibration)
        live.step(frame)
    latencies = []
    for frame in chunk:
        _sync(device)
        t = time.perf_counter()
        live.step(frame)
        _sync(device)
        latencies.append((time.perf_counter() - t) * 1e3)
    live.close()
    ms, p95 = latency_summary(latencies)
    return [Timing("reenactment", f"live: one frame at a time, latency (95th percentile {p95:.1f} ms)", 1, ms,
                   1e3 / ms, len(latencies))]


def format_table(rows: list[Timing], table: str) -> str:
    unit = "ms" if table == "creation" else "ms / frame"
    rate = "per second" if table == "creation" else "frames/s"
    lines = [f"| {table} | batch | {unit} | {rate} |", "|---|---|---|---|"]
    for r in rows:
        if r.table == table:
            per = "-" if r.per_second is None else f"{r.per_second:.1f}"
            lines.append(f"| {r.what} | {r.batch if r.batch is not None else '-'} | {r.ms:.1f} | {per} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from avatar.cli import POSITIVE_INT

    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", help="model id or pipeline folder (default: random weights, official sizes)")
    parser.add_argument("--tiny", action="store_true", help="tiny random networks (smoke test)")
    parser.add_argument("--photo", type=Path, help="source photo (default: a synthetic 512x512 image)")
    parser.add_argument("--video", type=Path, help="driving video (default: a synthetic 512x512 H.264 video)")
    parser.add_argument("--frames", type=POSITIVE_INT, default=None,
                        help="driving frames per pass (default 240 on a GPU, 16 on the CPU)")
    parser.add_argument("--batch-sizes", type=POSITIVE_INT, nargs="+", default=[8, 16])
    parser.add_argument("--passes", type=POSITIVE_INT, default=None, help="timed passes over the video (default 3 GPU, 1 CPU)")
    parser.add_argument("--repeats", type=POSITIVE_INT, default=None, help="timed avatar creations (default 10 GPU, 3 CPU)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="reconstructor precision")
    parser.add_argument("--preprocess", choices=["official", "mediapipe"], default="official",
                        help="face backend: RetinaFace + H3R (official) or MediaPipe's detector and mesh; with "
                             "mediapipe the photo and video must show a real face")
    parser.add_argument("--write", action="store_true", help="also time writing the result video (H.264 + audio)")
    parser.add_argument("--compile-field", action="store_true",
                        help="torch.compile the head-pose field's closest-triangle search")
    parser.add_argument("--prefetch", choices=["on", "off", "both"], default="both",
                        help="preprocess the next batch in a background thread (iter_reenact's prefetch)")
    parser.add_argument("--live", action="store_true",
                        help="also time live reenactment: frames one at a time (LiveReenactor), latency per frame")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")


def main(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device} asked for, but no CUDA device is available; use --device cpu")
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    frames = args.frames or (240 if gpu else 16)
    passes = args.passes or (3 if gpu else 1)
    repeats = args.repeats or (10 if gpu else 3)
    torch.backends.cudnn.benchmark = gpu
    pipe = build_pipeline(args, device)
    with tempfile.TemporaryDirectory(prefix="avatar-bench-media-") as tmp, torch.inference_mode():
        photo, video = args.photo, args.video
        if photo is None or video is None:
            synth_photo, synth_video = synthetic_media(Path(tmp), frames)
            photo, video = photo or synth_photo, video or synth_video
        what = "given" if args.model else ("random tiny" if args.tiny else "random, official architectures")
        name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
        print(f"pipeline: {what}; preprocessing {pipe.preprocess}; reconstructor {args.dtype}; device: {name}\n"
              f"photo: {photo}\nvideo: {video}\n",
              flush=True)
        rows = creation(pipe, photo, device, repeats)
        print(format_table(rows, "creation") + "\n", flush=True)
        ahead = {"on": [True], "off": [False], "both": [False, True]}[args.prefetch]
        rows += reenactment(pipe, photo, video, device, args.batch_sizes, frames, passes, args.write, ahead)
        if args.live:
            rows += live(pipe, photo, video, device, frames)
    print(format_table(rows, "reenactment"))
    total = rows[0].ms / 1e3
    best = max((r for r in rows if r.table == "reenactment" and not r.what.startswith(" ")),
               key=lambda r: r.per_second or 0.0)
    print(f"\navatar creation {total:.3f} s (goal < {CREATION_GOAL_S} s: {'met' if total < CREATION_GOAL_S else 'NOT met'}); "
          f"reenactment {best.per_second:.1f} frames/s at batch {best.batch} (goal >= {REENACT_GOAL_FPS:.0f}: "
          f"{'met' if (best.per_second or 0) >= REENACT_GOAL_FPS else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0
