"""Talking-head videos -> Portrait4D-v2 training data (our Parquet format), with this toolkit's preprocessing.

    python -m train.prepare VIDEOS_DIR --out DATA [--preprocess official|mediapipe] [--frames-per-clip 50]
                            [--sampling uniform|random|first] [--model ID_OR_PIPELINE_DIR]
                            [--matting modnet|mediapipe] [--matting-checkpoint FILE] [--device cuda]

Every video under ``VIDEOS_DIR`` (``.mp4 .mkv .webm .mov .avi``, sub-folders included) becomes one clip: one row
of ``DATA/data/train-<clip id>.parquet`` (:mod:`train.data.parquet_format`, kind ``clips``). Per sampled frame,
the pipeline's face preprocessing (``FacePreprocessor.detect`` -> ``analyze``: the largest face, the official
aligned 512 crop, the 437-float FLAME label) and its PD-FGC motion encoder (``FacePreprocessor.motion``: the
548-d motion the reconstructor is driven with), and a foreground matte of the crop as the segmentation: MODNet
(``--matting modnet``, default; weights from ``--matting-checkpoint``, else a ``modnet/`` folder inside
``--model``, else the cache: ``avatar download --file modnet-photographic --from-dir DIR``) or MediaPipe's selfie
segmentation (``--matting mediapipe``, weights inside the ``mediapipe`` wheel). The official VFHQ segs came from
an unnamed Mask2Former model and are used only as a foreground matte (``portrait4d-training.md`` 3.5); a soft
MODNet matte is stored as it is (0-255).

**Which frames.** The official ``generate_lmdb/vfhq/generate_lmdb.py`` takes, per clip folder, the sorted frame
indices of ``select_index_50.txt`` when the folder has one (the README: "each video clip contains 50 random
frames"; the script that chose them is not released), else the first 50 frames; frames without a label or motion
are dropped, so a clip can have fewer. Here ``--sampling uniform`` (default) takes ``--frames-per-clip`` frames
evenly spaced over the whole video (deterministic, and like random frames it spans the clip's range of poses and
expressions), ``random`` takes that many random frames, sorted (seeded by ``--seed`` and the clip id), ``first``
the first ones (the official fallback). A sampled frame without a usable face (none found, or smaller than the
preprocessor's ``min_face_size``) is skipped, as upstream drops unlabelled frames, and counted.

**Report.** ``DATA/prepare_report.json`` lists, per video, the frames sampled and written and the face-less
ones, the videos that failed and why (unreadable files, no face in any sampled frame), and the totals.

**Resumable.** Each video's shard is written under a hidden partial name and renamed when complete; a rerun skips
the videos whose shard exists (``--overwrite`` redoes them) and removes partial files that killed runs left.
For many thousands of videos, re-shard the result with ``python -m train.data.convert DATA --out DATA2``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import AssetNotFoundError, AvatarError, InputError, InputNotFoundError
from avatar.face.matting import MATTING_BACKENDS, load_matting, mattes_uint8
from avatar.io.files import create_partial
from train.data.errors import TrainDataError
from train.data.parquet_format import (
    DATA_DIR,
    ParquetShardWriter,
    clip_row,
    read_shard_meta,
    write_dataset_card,
)
from train.data.records import IMAGE_FORMATS, encode_image, encode_seg

__all__ = ["MATTING_BACKENDS", "SAMPLING", "VIDEO_EXTENSIONS", "PrepareReport", "list_videos", "main", "prepare",
           "sample_indices"]

logger = logging.getLogger("train.prepare")

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
SAMPLING = ("uniform", "random", "first")
REPORT_FILE = "prepare_report.json"
SETTINGS_KEYS = ("frames_per_clip", "sampling", "seed", "preprocess", "matting", "image_format")


# ---------------------------------------------------------------------------------------------------------
# videos and frames


def list_videos(videos_dir: str | Path) -> list[tuple[str, Path]]:
    """``(clip id, path)`` of every video under ``videos_dir``, sorted by path. The clip id is the path relative
    to the folder without its extension, ``/`` as ``--`` and other characters outside ``[A-Za-z0-9._-]`` as
    ``_``; two videos with the same id (``a.mp4``, ``a.mov``) keep their extension in it."""
    root = Path(videos_dir)
    if not root.is_dir():
        raise InputNotFoundError(f"videos folder {root} does not exist (or is not a folder)")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))

    def name(p: Path, ext: bool) -> str:
        rel = p.relative_to(root)
        text = "--".join((rel if ext else rel.with_suffix("")).parts)
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)

    ids = [name(p, False) for p in paths]
    dup = {i for i in ids if ids.count(i) > 1}
    return [(name(p, True) if i in dup else i, p) for i, p in zip(ids, paths, strict=True)]


def count_frames(path: Path) -> int:
    """The number of video frames, by demuxing (no decoding); the file is checked first (its first frame is
    decoded: :class:`~avatar.errors.VideoReadError` for a missing, empty, non-video or undecodable file)."""
    import av

    from avatar.io.video import probe_video, unreadable_video

    info = probe_video(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n = sum(1 for packet in container.demux(stream) if packet.size)
    except av.FFmpegError as exc:
        raise unreadable_video(path, exc, "open") from None
    return n or info.num_frames


def sample_indices(num_frames: int, k: int, sampling: str = "uniform", seed: int = 0, clip_id: str = "") -> list[int]:
    """Which frames of a ``num_frames`` video to use (module docstring): at most ``k``, sorted."""
    if sampling not in SAMPLING:
        raise InputError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if k < 1:
        raise InputError(f"frames per clip must be at least 1, got {k}")
    if num_frames <= k:
        return list(range(num_frames))
    if sampling == "first":
        return list(range(k))
    if sampling == "uniform":
        return [int(i) for i in np.rint(np.linspace(0, num_frames - 1, k)).astype(np.int64)]
    rng = np.random.default_rng([seed, zlib.crc32(clip_id.encode())])
    return sorted(int(i) for i in rng.choice(num_frames, size=k, replace=False))


# ---------------------------------------------------------------------------------------------------------
# matting


class Matting:
    """Crops ``(512, 512, 3)`` uint8 RGB -> mattes ``(512, 512)`` uint8 (0 background, 255 foreground), from
    :mod:`avatar.face.matting` (MODNet or MediaPipe's selfie segmentation)."""

    def __init__(self, backend: str, net: Any = None, source: str = "") -> None:
        self.backend, self.net, self.source = backend, net, source

    @classmethod
    def load(cls, backend: str, model: str | None = None, checkpoint: str | Path | None = None,
             device: str = "cpu") -> Matting:
        """:class:`~avatar.errors.AssetNotFoundError` when MODNet has no weights (before any work)."""
        try:
            net, source = load_matting(backend, model, checkpoint, device)
        except FileNotFoundError as exc:
            raise AssetNotFoundError(
                "--matting modnet needs MODNet weights: pass --matting-checkpoint FILE (a released MODNet .ckpt), "
                "put a modnet/ folder inside --model, or cache the photographic model once with `avatar download "
                "--file modnet-photographic --from-dir DIR`; or use --matting mediapipe (no download). "
                f"({exc})") from None
        return cls(backend, net, source)

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        return mattes_uint8(self.net, crops)


# ---------------------------------------------------------------------------------------------------------
# one video


@dataclass
class ClipResult:
    """What one video gave: the row and its facts (stored in the shard's metadata, and in the report)."""

    row: dict[str, Any] | None
    info: dict[str, Any]


def process_video(path: Path, clip_id: str, preprocessor: Any, matting: Matting, *, frames_per_clip: int = 50,
                  sampling: str = "uniform", seed: int = 0, batch_size: int = 16, image_format: str = "png",
                  quality: int = 95, progress: Any = None) -> ClipResult:
    """Sample, preprocess and matte one video's frames. ``row`` is ``None`` when no sampled frame has a usable
    face. Raises :class:`~avatar.errors.VideoReadError` for an unreadable video."""
    from avatar.io.video import VideoReader

    n = count_frames(path)
    wanted = sample_indices(n, frames_per_clip, sampling, seed, clip_id)
    wanted_set = set(wanted)
    frames_out, segs_out, labels, motions, kept, no_face, seen = [], [], [], [], [], [], set()
    size: list[int] = []
    batch: list[np.ndarray] = []
    batch_idx: list[int] = []

    def flush() -> None:
        if not batch:
            return
        faces = preprocessor.detect(batch)
        good = [j for j, f in enumerate(faces) if f and f[0].size >= preprocessor.min_face_size]
        no_face.extend(batch_idx[j] for j in range(len(batch)) if j not in set(good))
        if good:
            analyses = preprocessor.analyze([batch[j] for j in good], [faces[j][0] for j in good])
            motion = preprocessor.motion(analyses)
            if motion is None:  # checked before any work; kept as a guard
                raise InputError("the pipeline has no motion encoder")
            mattes = matting([a.crop for a in analyses])
            for j, analysis, m, matte in zip(good, analyses, motion.cpu().numpy(), mattes, strict=True):
                size[:] = np.asarray(analysis.crop).shape[:2]
                frames_out.append(encode_image(np.asarray(analysis.crop, dtype=np.uint8), image_format, quality))
                segs_out.append(encode_seg(matte))
                labels.append(np.asarray(analysis.label.cpu(), dtype=np.float32))
                motions.append(np.asarray(m, dtype=np.float32))
                kept.append(batch_idx[j])
        if progress is not None:
            progress.update(len(batch))
        batch.clear()
        batch_idx.clear()

    if wanted:
        last = wanted[-1]
        for i, frame in enumerate(VideoReader(path)):
            if i in wanted_set:
                batch.append(frame)
                batch_idx.append(i)
                seen.add(i)
                if len(batch) >= batch_size:
                    flush()
            if i >= last:
                break
        flush()
    unreadable = sorted(wanted_set - seen)
    info = {"clip_id": clip_id, "video": str(path), "frames_in_video": n, "sampled": len(wanted),
            "written": len(kept), "no_face": sorted(no_face), "unreadable": unreadable, "source_frames": kept}
    if not kept:
        return ClipResult(None, info)
    row = clip_row(frames_out, segs_out, np.stack(labels), np.stack(motions), clip_id, size[0], size[1], kept)
    return ClipResult(row, info)


# ---------------------------------------------------------------------------------------------------------
# a folder


@dataclass
class PrepareReport:
    """Per run (``DATA/prepare_report.json``): videos written now, skipped (done before), failed (why); per
    video its facts; totals."""

    out: str
    videos: int = 0
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    frames_sampled: int = 0
    frames_written: int = 0
    faceless_frames: int = 0
    faceless: dict[str, list[int]] = field(default_factory=dict)
    clips: dict[str, dict[str, Any]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, info: dict[str, Any]) -> None:
        cid = info["clip_id"]
        self.clips[cid] = {k: v for k, v in info.items() if k != "clip_id"}
        self.frames_sampled += int(info["sampled"])
        self.frames_written += int(info["written"])
        self.faceless_frames += len(info["no_face"])
        if info["no_face"]:
            self.faceless[cid] = list(info["no_face"])


def shard_path(out: Path, clip_id: str) -> Path:
    return out / DATA_DIR / f"train-{clip_id}.parquet"


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = create_partial(path)
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def finished_shard_info(path: Path, key: str = "clip", redo: str = "preparing its video again"
                        ) -> dict[str, Any] | None:
    """The facts (metadata entry ``key``) of a finished shard; ``None`` when it is absent or unreadable, so its
    work is done again (``redo`` says what, in the warning)."""
    if not path.is_file():
        return None
    try:
        meta, _ = read_shard_meta(path)
    except TrainDataError as exc:
        logger.warning("%s; %s", exc, redo)
        return None
    return meta.get(key)


def prepare(videos_dir: str | Path, out: str | Path, *, model: str = "portrait4d-v2", preprocess: str | None = None,
            matting: str = "modnet", matting_checkpoint: str | Path | None = None, frames_per_clip: int = 50,
            sampling: str = "uniform", seed: int = 0, device: str = "cpu", batch_size: int = 16,
            image_format: str = "png", quality: int = 95, overwrite: bool = False, pipeline: Any = None,
            show_progress: bool = True) -> PrepareReport:
    """Make the training data of every video under ``videos_dir`` in ``out`` (module docstring).

    ``pipeline``: a loaded pipeline to use instead of ``load_pipeline(model, device=device, preprocess=...)``.
    Raises before any work when the options, the folder, the pipeline (it needs a face preprocessor with the
    PD-FGC motion encoder) or the MODNet weights cannot be used; a video that cannot be used is listed under
    ``failed`` and the others go on.
    """
    if sampling not in SAMPLING:
        raise InputError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    if image_format not in IMAGE_FORMATS:
        raise InputError(f"image format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if frames_per_clip < 1 or batch_size < 1 or seed < 0:
        raise InputError("frames per clip and batch size must be at least 1, the seed non-negative")
    videos = list_videos(videos_dir)
    if not videos:
        raise InputError(f"no video ({', '.join(VIDEO_EXTENSIONS)}) under {videos_dir}")
    out = Path(out)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    settings = {"frames_per_clip": frames_per_clip, "sampling": sampling, "seed": seed, "matting": matting,
                "image_format": image_format, "model": str(model), "videos_dir": str(videos_dir)}
    report = PrepareReport(out=str(out), videos=len(videos))
    pending = []
    for clip_id, path in videos:
        info = None if overwrite else finished_shard_info(shard_path(out, clip_id))
        if info is None:
            pending.append((clip_id, path))
            continue
        report.skipped.append(clip_id)
        report.add(info)
    if report.skipped:
        logger.info("%d video(s) already prepared, skipped (--overwrite to redo)", len(report.skipped))

    t0 = time.perf_counter()
    motion_dim = None
    if pending:
        if pipeline is None:
            from avatar.pipelines import load_pipeline

            pipeline = load_pipeline(model, device=device, preprocess=preprocess)
        pre = getattr(pipeline, "preprocessor", None)
        if pre is None or not hasattr(pre, "analyze"):
            raise InputError(f"--model {model}: its pipeline ({type(pipeline).__name__}) has no Portrait4D face "
                             "preprocessor; use a Portrait4D pipeline (portrait4d-v2 or a pipeline folder)")
        if pre.motion_encoder is None:
            raise InputError(f"--model {model} has no PD-FGC motion encoder (the static model's pipeline); use "
                             "portrait4d-v2 or portrait4d-v1, whose motions the training data needs")
        motion_dim = int(pre.motion_encoder.config.motion_dim)
        mat = Matting.load(matting, str(model) if model else None, matting_checkpoint,
                           str(getattr(pipeline, "device", device)))
        settings.update(preprocess=pre.backend, matting_source=mat.source, motion_dim=motion_dim,
                        random_weights=bool(getattr(pipeline, "random_init", False)))
        _check_settings(out, report, settings)

        from tqdm import tqdm

        bar = tqdm(total=None, unit="frame", disable=not show_progress, dynamic_ncols=True)
        try:
            for n, (clip_id, path) in enumerate(pending):
                bar.set_description(f"{clip_id} ({n + 1}/{len(pending)})")
                try:
                    result = process_video(path, clip_id, pre, mat, frames_per_clip=frames_per_clip,
                                           sampling=sampling, seed=seed, batch_size=batch_size,
                                           image_format=image_format, quality=quality, progress=bar)
                except AvatarError as exc:  # unreadable video, ...
                    report.failed[clip_id] = str(exc)
                    logger.error("%s: FAILED: %s", clip_id, exc)
                    continue
                info = result.info
                if result.row is None:
                    report.failed[clip_id] = (f"no usable face in any of the {info['sampled']} sampled frame(s) of "
                                              f"{path}")
                    logger.error("%s: FAILED: %s", clip_id, report.failed[clip_id])
                    continue
                writer = ParquetShardWriter(shard_path(out, clip_id), "clips", motion_dim,
                                            {**settings, "clip": info}, rows_per_group=1)
                try:
                    writer.add(result.row)
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
                report.written.append(clip_id)
                report.add(info)
                if info["no_face"]:
                    logger.info("%s: %d of %d sampled frame(s) without a usable face, skipped", clip_id,
                                len(info["no_face"]), info["sampled"])
        finally:
            bar.close()
    report.seconds = round(time.perf_counter() - t0, 2)
    report.settings = settings
    write_json(out / REPORT_FILE, asdict(report))
    if report.written or report.skipped:
        dim = motion_dim if motion_dim is not None else _any_motion_dim(out)
        write_dataset_card(out, "clips", dim, {k: v for k, v in settings.items() if k != "videos_dir"},
                           extra="\nMade by `python -m train.prepare` from talking-head videos; "
                                 f"`{REPORT_FILE}` lists the frames used and skipped.\n")
    logger.info("prepared %d video(s) (%d skipped, %d failed): %d frames written, %d face-less frames skipped, "
                "in %.1f s", len(report.written), len(report.skipped), len(report.failed), report.frames_written,
                report.faceless_frames, report.seconds)
    return report


def _any_motion_dim(out: Path) -> int:
    for path in sorted((out / DATA_DIR).glob("*.parquet")):
        try:
            return int(read_shard_meta(path)[0]["motion_dim"])
        except TrainDataError:
            continue
    return 548


def _check_settings(out: Path, report: PrepareReport, settings: dict[str, Any]) -> None:
    """Warn when videos prepared before used other settings (they are kept: one dataset, mixed settings)."""
    for clip_id in report.skipped:
        try:
            meta, _ = read_shard_meta(shard_path(out, clip_id))
        except TrainDataError:
            continue
        diff = {k: (meta.get(k), settings.get(k)) for k in SETTINGS_KEYS if meta.get(k) != settings.get(k)}
        if diff:
            logger.warning("%s was prepared with other settings (%s); --overwrite redoes every video", clip_id,
                           ", ".join(f"{k}: {a} now {b}" for k, (a, b) in diff.items()))
            return


# ---------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import NON_NEGATIVE_INT, POSITIVE_INT, ArgumentParser

    p = ArgumentParser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", type=Path, help="folder of talking-head videos (sub-folders included)")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder DATA (DATA/data/train-<id>.parquet)")
    p.add_argument("--model", default="portrait4d-v2",
                   help="model id or pipeline folder whose preprocessing and motion encoder are used (default "
                        "portrait4d-v2; `avatar tiny DIR` writes a tiny random one for tests)")
    p.add_argument("--preprocess", choices=("official", "mediapipe"), default=None,
                   help="face backend: official (RetinaFace + H3R) or mediapipe; default: the pipeline's own")
    p.add_argument("--frames-per-clip", type=POSITIVE_INT, default=50, help="frames sampled per video (default 50)")
    p.add_argument("--sampling", choices=SAMPLING, default="uniform",
                   help="uniform: evenly spaced over the video (default); random: random frames, sorted; first: "
                        "the first ones")
    p.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="seed of --sampling random")
    p.add_argument("--matting", choices=MATTING_BACKENDS, default="modnet",
                   help="foreground matte used as the segmentation: modnet (default) or mediapipe")
    p.add_argument("--matting-checkpoint", type=Path, help="a released MODNet .ckpt (default: <--model>/modnet, "
                                                            "else modnet-photographic in the cache)")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png", help="frame encoding (default png)")
    p.add_argument("--jpeg-quality", type=POSITIVE_INT, default=95)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--overwrite", action="store_true", help="redo videos that are already prepared")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug; tracebacks of errors)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m train.prepare``: exit status 0 (done), 1 (the input cannot be used, or some videos failed:
    listed in the summary and the report), 2 (a bug), 130 (interrupted)."""
    from avatar.cli import EXIT_ERROR, run_guarded
    from avatar.logs import setup_logging

    args = build_parser().parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)

    def work() -> int:
        if args.jpeg_quality > 100:
            raise InputError(f"--jpeg-quality must be at most 100, got {args.jpeg_quality}")
        rep = prepare(args.videos, args.out, model=args.model, preprocess=args.preprocess, matting=args.matting,
                      matting_checkpoint=args.matting_checkpoint, frames_per_clip=args.frames_per_clip,
                      sampling=args.sampling, seed=args.seed, device=args.device, batch_size=args.batch_size,
                      image_format=args.image_format, quality=args.jpeg_quality, overwrite=args.overwrite,
                      show_progress=not args.no_progress)
        summary = {"out": rep.out, "videos": rep.videos, "written": len(rep.written), "skipped": len(rep.skipped),
                   "failed": rep.failed, "frames_written": rep.frames_written,
                   "faceless_frames": rep.faceless_frames, "report": str(Path(rep.out) / REPORT_FILE)}
        print(json.dumps(summary, indent=1))
        if rep.failed:
            logger.error("%d video(s) failed (listed under \"failed\" above)", len(rep.failed))
            return EXIT_ERROR
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="train.prepare")


if __name__ == "__main__":
    raise SystemExit(main())
