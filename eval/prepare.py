"""Build the benchmark data layout from raw HDTF clips or CelebA images: ``DATA/<id>/<frame:06d>.png``.

    python -m eval.prepare hdtf   --raw RAW --out DATA [--ids test|test20|all|FILE|ID,ID] [--crop aligned|tube]
    python -m eval.prepare celeba --raw RAW --out DATA [--split test|all|FILE]
    python -m eval.prepare vfhq   RAW_CLIPS --out DATA [--ids test|all|FILE]
    python -m eval.prepare recrop SRC --out DST [--preprocess insightface]  # GAGAvatar's evaluation crop
    python -m eval.prepare hdtf   --list-sources [--ids ...]     # what to download and cut (nothing is fetched)
    avatar prepare ...                                           # the same command

Every output frame is a 512x512 RGB PNG. ``--crop aligned`` (default) is Portrait4D's own preprocessing, per
frame: RetinaFace (largest face) -> H3R 98 WFLW points -> the official 512 crop from five of them
(:func:`avatar.face.geometry.estimate_align_params` + :func:`~avatar.face.geometry.warp_to_aligned`, PIL Lanczos,
bit-identical to the official crop), i.e. what the model sees at inference; ``--smooth`` adds the official one-euro
crop smoothing (upstream ``use_smooth``, off by default as upstream). ``--crop tube`` is OTAvatar's HDTF crop
(``FaceCrop/crop_hdtf.py``): one fixed square box per video from the face detected in the **first** frame,
enlarged by ``--increase`` (0.1) on each side, resized to 512 (RetinaFace instead of face_alignment's SFD; parts
outside the frame are black where OTAvatar drops the video). See ``../shared/design/eval-protocols.md`` 1.2 and 1.5.

Frames are numbered from 0 in clip order (frame 0 is the source of the same-identity protocol). A frame in which no
face is found (or only one smaller than the preprocessor's ``min_face_size``) is not written: its index is a gap in
the numbering, reported on the console and listed in ``DATA/<id>/prepare.json`` (``no_face``). With the tube crop
only the first frame needs a face (if it has none, the first frame with one starts the clip).

Resumable: each id is written into ``DATA/.<id>.partial-*`` and renamed to ``DATA/<id>`` when complete; ids whose
folder exists are skipped (``--overwrite`` redoes them); stale partial folders are removed.

Networks: the official preprocessing weights from the cache (``avatar download``), or ``--model DIR`` for a
pipeline folder (``avatar tiny DIR`` writes one with tiny random networks, for tests).

Face backend: ``--preprocess official`` (default; RetinaFace + H3R) or ``mediapipe`` (MediaPipe's detector and the five
alignment points from its mesh: real weights that install with the ``[face]`` extra, nothing to download; the crop
differs from the official one by a few pixels).

Background: ``--background keep`` (default) or ``remove``: MODNet portrait matting (:mod:`avatar.face.modnet`, the
official image-demo preprocessing) on each 512 crop, composited on ``--background-color black`` (default; GOHA
multiplies by the matte) or ``white`` (OTAvatar). Weights: ``--matting-checkpoint FILE`` (any released MODNet
``.ckpt``, e.g. the webcam model OTAvatar used for HDTF), else a ``modnet/`` folder inside ``--model DIR``
(:meth:`~avatar.face.modnet.MODNet.save_pretrained`; tests put a tiny one there), else the photographic model from the
cache (registry key ``modnet-photographic``; it is on Google Drive only, so fetch it yourself and run
``avatar download --file modnet-photographic --from-dir DIR``). Without weights it stops before doing any work.
``--matting mediapipe`` uses MediaPipe's selfie segmentation instead (no download; not what the papers used).

Raw files expected (nothing is downloaded here; ``--list-sources`` prints the URLs and time ranges):

* HDTF, one of, for test id ``WRA_EricCantor_000`` (category ``WRA``, name ``EricCantor``, clip 0):
  ``RAW/WRA_EricCantor_000.mp4`` (the clip already cut, the common distribution name), or ``RAW/EricCantor_0.mp4``
  (HDTF's ``*_crop_wh.txt`` naming), or the full YouTube video ``RAW/EricCantor.mp4`` / ``RAW/WRA_EricCantor.mp4``,
  which is cut here to the clip's range of ``*_annotion_time.txt`` (range 0 for ``_000``, 1 for ``_001``...).
  Extensions ``.mp4 .mkv .webm .mov .avi`` are accepted.
* VFHQ (``RAW`` may also be given as the positional argument after ``vfhq``): one entry per clip, either a folder of
  frames (``RAW/<clip>/<anything with digits>.png|jpg``, the layout VFHQ distributes, e.g.
  ``Clip+G0DGRma_p48+P0+C0+F11208-11345/00000000.png``; frames in natural order of their names) or a video
  ``RAW/<clip>.mp4``. The id is the clip name. ``--ids test`` (default) takes every clip in RAW when RAW holds
  exactly the 50 clips of VFHQ's official test download (GAGAvatar issue #47, LAM issue #7: the test split
  GAGAvatar and LAM use); their names are in no repository, so any other RAW needs ``--ids FILE`` (the 50 clip
  names, one per line) or ``--ids all``.
* ``recrop``: ``SRC/<id>/<frame>.png|jpg`` (prepared ground truth or a method's frames) -> ``DST/<id>/<frame:06d>.png``
  cut with GAGAvatar's evaluation crop (:mod:`eval.protocols.crop`: five keypoints of the largest face, square box
  3x the keypoints' box, 512x512) and ``DST/recrop.json``; the GAGAvatar protocols of ``eval.run`` want it on both.
* CelebA: the CelebA-HQ images ``RAW/<hq_index>.jpg|png`` (also under ``RAW/CelebA-HQ-img/``, CelebAMask-HQ's
  layout), or the original CelebA file the HQ image was made from (``RAW/img_celeba/119614.jpg`` or
  ``RAW/119614.jpg``, via ``CelebA-HQ-to-CelebA-mapping.txt``). The id of HQ image ``i`` is ``hq<i:05d>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar.errors import (
    AssetNotFoundError,
    AvatarError,
    InputError,
    InputNotFoundError,
    UnknownNameError,
    UnknownOptionValueError,
)
from avatar.face.matting import MediaPipeMatting, load_modnet
from avatar.io.files import apply_umask

logger = logging.getLogger("eval.prepare")

__all__ = [
    "CROP_SIZE", "BackgroundRemover", "FaceCropper", "HDTFClip", "InputNotFoundError", "MattingUnavailableError",
    "MissingRawFilesError", "PrepareResult", "UnknownIdError",
    "celeba_sources", "hdtf_clips", "list_sources", "load_matting", "main", "prepare",
    "read_hdtf_lists",
]

CROP_SIZE = 512
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
HDTF_CATEGORIES = ("RD", "WDA", "WRA")


def _shared_lists() -> Path:
    env = os.environ.get("AVATAR_SHARED_MEDIA")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "media"
    return base / "lists"


DEFAULT_LISTS = _shared_lists()


UnknownIdError = UnknownNameError  # the name eval.prepare used first


class MissingRawFilesError(AvatarError, FileNotFoundError):
    """Some ids have no raw file; ``missing`` maps each id to the file names that were looked for."""

    def __init__(self, missing: dict[str, list[str]], raw: Path, hint: Callable[[str], str] | None = None) -> None:
        self.missing = missing
        lines = [f"{len(missing)} raw file(s) missing in {raw}:"]
        for key, names in missing.items():
            extra = f"  [{hint(key)}]" if hint else ""
            lines.append(f"  {key}: expected one of {', '.join(names)}{extra}")
        lines.append("(nothing is downloaded here; `python -m eval.prepare <dataset> --list-sources` prints where "
                     "each clip comes from; pass --skip-missing to prepare the others)")
        super().__init__("\n".join(lines))


class MattingUnavailableError(AssetNotFoundError):
    """``--background remove`` found no MODNet weights (nothing was written); a :class:`FileNotFoundError`."""


MATTING_MESSAGE = (
    "--background remove needs MODNet weights (ZHKKKe/MODNet, Apache-2.0; GOHA used "
    "`modnet_photographic_portrait_matting.ckpt`, OTAvatar `modnet_webcam_portrait_matting.ckpt` for HDTF). They "
    "are published on Google Drive only ({url}): download one, then pass it with --matting-checkpoint FILE, or "
    "put the photographic one into the cache once with `avatar download --file modnet-photographic --from-dir "
    "DIR`. ({reason})"
)
BACKGROUND_COLORS = ("black", "white")


# ---------------------------------------------------------------------------------------------------------
# HDTF lists


def _seconds(stamp: str) -> float:
    parts = [float(p) for p in stamp.strip().split(":")]
    total = 0.0
    for p in parts:
        total = total * 60 + p
    return total


@dataclass(frozen=True)
class HDTFClip:
    """One HDTF clip: ``id`` ``WRA_EricCantor_000`` = category, YouTube video name and clip index."""

    id: str
    category: str
    name: str
    index: int
    url: str | None
    start: float | None
    end: float | None
    resolution: int | None

    @property
    def time_range(self) -> str:
        if self.start is None or self.end is None:
            return "?"
        return f"{int(self.start // 60):02d}:{int(self.start % 60):02d}-{int(self.end // 60):02d}:{int(self.end % 60):02d}"

    def candidates(self) -> list[str]:
        """File stems looked for, in order: the cut clip (``<id>``, ``<Name>_<i>``), then the full video."""
        return [self.id, f"{self.name}_{self.index}", self.name, f"{self.category}_{self.name}"]


def _read_table(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts:
            out[parts[0]] = parts[1:]
    return out


def read_hdtf_lists(lists: Path | None = None) -> dict[str, HDTFClip]:
    """Every clip of HDTF's official lists (``*_video_url.txt``, ``*_annotion_time.txt``, ``*_resolution.txt``),
    by id (``<CATEGORY>_<Name>_<clip:03d>``)."""
    folder = (lists or DEFAULT_LISTS) / "hdtf"
    if not folder.is_dir():
        raise InputNotFoundError(f"HDTF lists not found in {folder} (pass --lists DIR holding hdtf/)")
    clips: dict[str, HDTFClip] = {}
    for cat in HDTF_CATEGORIES:
        urls = _read_table(folder / f"{cat}_video_url.txt")
        times = _read_table(folder / f"{cat}_annotion_time.txt")
        res = _read_table(folder / f"{cat}_resolution.txt")
        names = dict.fromkeys([*(Path(k).stem for k in times), *urls])
        for name in names:
            ranges = times.get(f"{name}.mp4", [])
            r = res.get(f"{name}.mp4")
            resolution = int(r[0]) if r and r[0].isdigit() else None
            url = urls[name][0] if urls.get(name) else None
            for i, rng in enumerate(ranges or [None]):  # type: ignore[list-item]
                start = end = None
                if rng:
                    a, b = rng.split("-")
                    start, end = _seconds(a), _seconds(b)
                cid = f"{cat}_{name}_{i:03d}"
                clips[cid] = HDTFClip(cid, cat, name, i, url, start, end, resolution)
    return clips


def _read_id_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def hdtf_clips(selection: str = "test", lists: Path | None = None) -> list[HDTFClip]:
    """Clips of a selection: ``test`` (the 19 of GOHA/OTAvatar/StyleHEAT, ``hdtf_test_19.txt``), ``test20``
    (OTAvatar's 20, with ``WRA_OlympiaSnowe_000``), ``all``, a file of ids, or comma-separated ids."""
    all_clips = read_hdtf_lists(lists)
    folder = (lists or DEFAULT_LISTS) / "hdtf"
    if selection == "all":
        return list(all_clips.values())
    if selection == "test":
        ids = _read_id_list(folder / "hdtf_test_19.txt")
    elif selection == "test20":
        ids = _read_id_list(folder / "hdtf_test_persons_OTAvatar_438826d.txt")
    elif Path(selection).is_file():
        ids = _read_id_list(Path(selection))
    else:
        ids = [s.strip() for s in selection.split(",") if s.strip()]
    unknown = [i for i in ids if i not in all_clips]
    if unknown:
        raise UnknownIdError(f"unknown HDTF id(s) {', '.join(unknown[:10])}; ids look like WRA_EricCantor_000 "
                             "(category, name in *_video_url.txt, clip index in *_annotion_time.txt)")
    return [all_clips[i] for i in ids]


@dataclass
class VideoSource:
    """A raw video and the part of it that is the clip (``start``/``end`` seconds, ``None``: the whole file)."""

    path: Path
    start: float | None = None
    end: float | None = None


def _find(raw: Path, stems: Sequence[str], extensions: Sequence[str], subdirs: Sequence[str] = ("",)) -> Path | None:
    for stem in stems:
        for sub in subdirs:
            for ext in extensions:
                p = raw / sub / f"{stem}{ext}"
                if p.is_file():
                    return p
    return None


def locate_hdtf(raw: Path, clip: HDTFClip) -> VideoSource | None:
    """The raw file of ``clip``: a cut clip (``<id>``, ``<Name>_<i>``) or a full video cut to the clip's range."""
    cut = _find(raw, [clip.id, f"{clip.name}_{clip.index}"], VIDEO_EXTENSIONS)
    if cut is not None:
        return VideoSource(cut)
    full = _find(raw, [clip.name, f"{clip.category}_{clip.name}"], VIDEO_EXTENSIONS)
    if full is not None:
        if clip.start is None:
            raise InputError(f"{clip.id}: found the full video {full} but the lists give no time range to cut")
        return VideoSource(full, clip.start, clip.end)
    return None


def list_sources(clips: Iterable[HDTFClip]) -> str:
    """A table of what to download and cut for each clip (tab-separated: id, url, range, resolution, file)."""
    lines = ["# id\turl\ttime range (mm:ss, cut the full video to it)\tresolution\tsave as (cut clip)"]
    for c in clips:
        lines.append(f"{c.id}\t{c.url or '?'}\t{c.time_range}\t{c.resolution or '?'}\t{c.id}.mp4")
    lines.append("# or save the full video as <Name>.mp4 (e.g. EricCantor.mp4): it is cut here to the range above")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# CelebA lists


def celeba_sources(selection: str = "test", lists: Path | None = None) -> list[tuple[str, int, str]]:
    """``(id, hq_index, celeba_file)`` of a selection: ``test`` (the 2,824 CelebA-HQ test images), ``all``
    (30,000), or a file of HQ indices."""
    folder = (lists or DEFAULT_LISTS) / "celeba"
    mapping_file = folder / "CelebA-HQ-to-CelebA-mapping.txt"
    if not mapping_file.is_file():
        raise InputNotFoundError(f"CelebA lists not found in {folder} (pass --lists DIR holding celeba/)")
    mapping: dict[int, str] = {}
    for line in mapping_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            mapping[int(parts[0])] = parts[2]
    if selection == "all":
        indices = sorted(mapping)
    elif selection == "test":
        indices = [int(x) for x in _read_id_list(folder / "celebahq_test_2824_hq_indices.txt")]
    elif Path(selection).is_file():
        indices = [int(x) for x in _read_id_list(Path(selection))]
    else:
        indices = [int(s) for s in selection.split(",") if s.strip()]
    bad = [i for i in indices if i not in mapping]
    if bad:
        raise UnknownIdError(f"CelebA-HQ indices not in the mapping: {bad[:10]}")
    return [(f"hq{i:05d}", i, mapping[i]) for i in indices]


def locate_celeba(raw: Path, hq_index: int, celeba_file: str) -> tuple[Path | None, list[str]]:
    stems = [str(hq_index), f"{hq_index:05d}"]
    found = _find(raw, stems, IMAGE_EXTENSIONS, ("", "CelebA-HQ-img", "CelebA-HQ"))
    orig = Path(celeba_file).stem
    if found is None:
        found = _find(raw, [orig], IMAGE_EXTENSIONS, ("", "img_celeba", "Img/img_celeba"))
    names = [f"{hq_index}.jpg", f"CelebA-HQ-img/{hq_index}.jpg", f"img_celeba/{celeba_file}", celeba_file]
    return found, names


# ---------------------------------------------------------------------------------------------------------
# VFHQ clips

VFHQ_TEST_MESSAGE = (
    "VFHQ: the test split GAGAvatar and LAM use is the 50 clips of VFHQ's official test download "
    "(https://liangbinxie.github.io/projects/vfhq/; xg-chu/GAGAvatar issue #47, aigc3d/LAM issue #7); no repository "
    "lists their names. {raw} holds {n} clip(s): point it at the VFHQ-Test clips, or pass --ids FILE with the 50 "
    "clip names (one per line), or --ids all for every clip in it.")


def _frame_images(folder: Path) -> list[Path]:
    from .data import natural_key

    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and any(ch.isdigit() for ch in p.stem)), key=lambda p: natural_key(p.name))


def vfhq_clips(raw: Path) -> dict[str, Path]:
    """Every clip in ``raw``: ``{clip name: folder of frames | video file}`` (natural order of the names)."""
    from .data import natural_key

    clips: dict[str, Path] = {}
    for p in sorted(raw.iterdir(), key=lambda q: natural_key(q.name)):
        if p.name.startswith("."):
            continue
        if p.is_dir() and _frame_images(p):
            clips[p.name] = p
        elif p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS:
            clips.setdefault(p.stem, p)
    return clips


def select_vfhq(raw: Path, ids: str = "test") -> tuple[dict[str, Path], dict[str, list[str]]]:
    """``(found {clip: path}, missing {clip: names looked for})`` of a selection: ``test`` (every clip, when RAW
    holds exactly the 50 of VFHQ-Test), ``all``, a file of clip names, or comma-separated names."""
    from .protocols import VFHQ_TEST_CLIPS

    clips = vfhq_clips(raw)
    if ids == "all":
        return clips, {}
    if ids == "test":
        if len(clips) != VFHQ_TEST_CLIPS:
            raise InputError(VFHQ_TEST_MESSAGE.format(raw=raw, n=len(clips)))
        return clips, {}
    wanted = _read_id_list(Path(ids)) if Path(ids).is_file() else [s.strip() for s in ids.split(",") if s.strip()]
    found = {c: clips[c] for c in wanted if c in clips}
    missing = {c: [f"{c}/<frames>.png", f"{c}.mp4"] for c in wanted if c not in clips}
    return found, missing


def iter_frame_folder(folder: Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    for i, path in enumerate(_frame_images(folder)):
        if max_frames is not None and i >= max_frames:
            break
        yield read_image(path)


# ---------------------------------------------------------------------------------------------------------
# frames


def iter_video(src: VideoSource, fps: float | None = None, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Frames of the clip (RGB uint8), cut to ``[start, end)`` seconds and resampled to ``fps`` when given
    (nearest earlier frame: frame ``k`` of the output is the last input frame at or before ``k / fps``)."""
    from avatar.io.video import VideoReader, probe_video

    info = probe_video(src.path)
    rate = float(info.fps) if info.fps else 25.0
    start = src.start or 0.0
    n_out = 0
    next_t = 0.0
    for i, frame in enumerate(VideoReader(src.path)):
        t = i / rate
        if t + 1e-6 < start:
            continue
        if src.end is not None and t >= src.end - 1e-6:
            break
        rel = t - start
        if fps is not None:
            if rel + 1e-6 < next_t:
                continue
            next_t += 1.0 / fps
            while next_t <= rel + 1e-6:  # the source is slower than fps: skip output slots, keep timing
                next_t += 1.0 / fps
        yield frame
        n_out += 1
        if max_frames is not None and n_out >= max_frames:
            break


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------------------------
# cropping


class FaceCropper:
    """512 crops of the largest face, with the networks of a :class:`~avatar.pipelines.preprocess.FacePreprocessor`.

    ``crop="aligned"``: per frame, RetinaFace + H3R + official 512 crop. ``crop="tube"``: one square box per clip
    from the first frame with a face, enlarged by ``increase`` on each side. :meth:`crop` takes a list of frames
    (one batch of one clip, in order) and returns a crop or a reason per frame; :meth:`start_clip` resets the
    per-clip state (tube box, smoothing).
    """

    def __init__(self, preprocessor: Any, crop: str = "aligned", smooth: bool = False, increase: float = 0.1,
                 size: int = CROP_SIZE) -> None:
        if crop not in ("aligned", "tube"):
            raise InputError(f"crop must be 'aligned' or 'tube', got {crop!r}")
        self.pre = preprocessor
        self.mode = crop
        self.smooth = smooth
        self.increase = increase
        self.size = size
        self.start_clip()

    def start_clip(self) -> None:
        from avatar.pipelines.preprocess import CropSmoother

        self._tube: np.ndarray | None = None
        self._smoother = CropSmoother() if self.smooth else None

    def _faces(self, frames: list[np.ndarray]) -> list[tuple[Any, str | None]]:
        """The largest usable face of each frame (a ``DetectedFace``), or ``None`` and the reason."""
        out: list[tuple[Any, str | None]] = []
        min_size = float(getattr(self.pre, "min_face_size", 0.0))
        for faces in self.pre.detect(frames):
            if not faces:
                out.append((None, "no face detected"))
            elif faces[0].size < min_size:
                out.append((None, f"face smaller than {min_size:.0f} px"))
            else:
                out.append((faces[0], None))
        return out

    def crop(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray | None, str | None]]:
        if not frames:
            return []
        if self.mode == "tube":
            return self._crop_tube(frames)
        return self._crop_aligned(frames)

    def _crop_aligned(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray | None, str | None]]:
        from avatar.pipelines.preprocess import align_crop

        faces = self._faces(frames)
        good = [i for i, (face, _) in enumerate(faces) if face is not None]
        five, _ = self.pre.alignment_points([frames[i] for i in good], [faces[i][0] for i in good])
        out: list[tuple[np.ndarray | None, str | None]] = [(None, reason) for _, reason in faces]
        for i, points in zip(good, five, strict=True):
            try:
                out[i] = (align_crop(frames[i], points, self._smoother, self.size)[1], None)
            except ValueError as exc:
                out[i] = (None, f"alignment failed: {exc}")
        return out

    def _tube_box(self, box: np.ndarray) -> np.ndarray:
        x1, y1, x2, y2 = box[:4]
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        side = max(x2 - x1, y2 - y1) * (1 + 2 * self.increase)
        return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])

    def _crop_tube(self, frames: list[np.ndarray]) -> list[tuple[np.ndarray | None, str | None]]:
        import cv2

        out: list[tuple[np.ndarray | None, str | None]] = []
        for f in frames:
            if self._tube is None:
                face, reason = self._faces([f])[0]
                box = None if face is None else np.asarray(face.box, dtype=np.float64)
                if box is None:
                    out.append((None, f"{reason} (no tube box yet)"))
                    continue
                self._tube = self._tube_box(box)
            x1, y1, x2, y2 = self._tube
            s = self.size / (x2 - x1)
            m = np.array([[s, 0, -x1 * s], [0, s, -y1 * s]], dtype=np.float64)
            crop = cv2.warpAffine(f, m, (self.size, self.size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
            out.append((crop, None))
        return out


class CropPreprocessor:
    """Only what the crop needs (no 3DFAN / Deep3D / PD-FGC weights): the face backend's detector and its
    alignment points. ``'official'``: RetinaFace + H3R from the cache; ``'mediapipe'``: MediaPipe's detector and
    mesh (weights inside the ``mediapipe`` wheel)."""

    min_face_size = 40.0

    def __init__(self, preprocess: str = "official", device: str = "cpu") -> None:
        from avatar.face.geometry import five_points_from_wflw98

        self.backend = preprocess
        self._five = five_points_from_wflw98
        if preprocess == "mediapipe":
            from avatar.face.mediapipe_face import MediaPipeFaceBackend

            self.detector: Any = MediaPipeFaceBackend()
            self.landmarker: Any = None
        elif preprocess == "official":
            from avatar.face.h3r import H3RLandmarker
            from avatar.face.retinaface import RetinaFace

            self.detector = RetinaFace.from_pretrained(device=device)
            self.landmarker = H3RLandmarker.from_pretrained(device=device)
        else:
            raise UnknownOptionValueError(f"preprocess must be 'official' or 'mediapipe', got {preprocess!r}")

    def detect(self, images: list[np.ndarray]) -> list[Any]:
        return self.detector.detect_batch(images)

    def alignment_points(self, images: list[np.ndarray], faces: list[Any]) -> tuple[list[np.ndarray], list[Any]]:
        if self.landmarker is None:
            return [np.asarray(f.landmarks, np.float64) for f in faces], [f.mesh for f in faces]
        lm98 = [lm[0] for lm in self.landmarker.landmarks_batch(images, [[f.box] for f in faces])]
        return [self._five(lm) for lm in lm98], lm98


def load_preprocessor(model: str | None, device: str, preprocess: str | None = None) -> Any:
    """The detector + alignment points: from a pipeline folder (``--model``), else the ``preprocess`` backend
    (``'official'``: the official weights in the cache, the default; ``'mediapipe'``)."""
    if model:
        from avatar.pipelines.auto import load_pipeline

        pipe = load_pipeline(model, device=device, preprocess=preprocess)
        pre = getattr(pipe, "preprocessor", None)
        if pre is None:
            raise InputError(f"--model {model}: its pipeline ({type(pipe).__name__}) has no face preprocessor to crop "
                             "with; leave --model out to use the official detector and landmarker")
        return pre
    return CropPreprocessor(preprocess or "official", device)


class BackgroundRemover:
    """Crops ``(512, 512, 3)`` uint8 RGB -> the same composited on a plain colour with MODNet's matte."""

    def __init__(self, net: Any, color: str = "black") -> None:
        if color not in BACKGROUND_COLORS:
            raise InputError(f"background colour must be one of {BACKGROUND_COLORS}, got {color!r}")
        self.net, self.color = net, color

    def __call__(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        from avatar.face.modnet import composite

        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
        alpha = self.net.matte(images).cpu().float()
        out = composite(images, alpha, self.color).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return list(out.permute(0, 2, 3, 1).numpy())


def load_matting(model: str | None, checkpoint: str | Path | None, device: str) -> tuple[Any, str]:
    """MODNet and where its weights came from (:func:`avatar.face.matting.load_modnet`). Raises
    :class:`MattingUnavailableError` when none has them."""
    from avatar.hub.registry import MODNET_DRIVE_FOLDER

    try:
        return load_modnet(model, checkpoint, device)
    except FileNotFoundError as exc:
        raise MattingUnavailableError(MATTING_MESSAGE.format(url=MODNET_DRIVE_FOLDER, reason=exc)) from exc


# ---------------------------------------------------------------------------------------------------------
# writing


@dataclass
class PrepareResult:
    """Per run: ids written, skipped (already there), missing (no raw file) and failed, frames written."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    no_face: dict[str, list[int]] = field(default_factory=dict)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _clean_partials(out: Path) -> None:
    for p in out.glob(".*.partial-*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def write_id(out: Path, item_id: str, frames: Iterable[np.ndarray], cropper: FaceCropper, batch_size: int,
             meta: dict[str, Any], progress: Any = None,
             background: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None,
             ) -> tuple[int, list[int], dict[int, str]]:
    """Crop and write one id atomically; returns ``(frames written, no-face frame indices, reasons)``.
    ``background`` (e.g. a :class:`BackgroundRemover`) maps the chunk's crops to the frames written."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{item_id}.partial-", dir=out))
    try:
        cropper.start_clip()
        written, no_face, reasons = 0, [], {}
        index = 0
        chunk: list[np.ndarray] = []

        def flush() -> None:
            nonlocal index, written
            crops = cropper.crop(chunk)
            if background is not None:
                found = [c for c, _ in crops if c is not None]
                done = iter(background(found) if found else [])
                crops = [(None if c is None else next(done), r) for c, r in crops]
            for crop, reason in crops:
                if crop is None:
                    no_face.append(index)
                    reasons[index] = reason or "no face"
                else:
                    _write_png(tmp / f"{index:06d}.png", crop)
                    written += 1
                index += 1
            if progress is not None:
                progress.update(len(chunk))
            chunk.clear()

        for frame in frames:
            chunk.append(frame)
            if len(chunk) >= batch_size:
                flush()
        flush()
        if index == 0:
            rng = (f" in the clip range {meta['start']:.0f}-{meta['end']:.0f} s of the full video"
                   if meta.get("start") is not None and meta.get("end") is not None else "")
            raise RuntimeError(f"no frame could be read{rng} (a shorter or different video?)")
        if written == 0:
            raise RuntimeError(f"no frame with a face among {index} frame(s)")
        info = {**meta, "id": item_id, "frames_in": index, "frames_written": written, "no_face": no_face,
                "no_face_reasons": {str(k): v for k, v in reasons.items()}}
        (tmp / "prepare.json").write_text(json.dumps(info, indent=1))
        final = out / item_id
        if final.exists():
            shutil.rmtree(final)
        apply_umask(tmp)  # mkdtemp's 0700 -> what mkdir would give
        os.replace(tmp, final)
        return written, no_face, reasons
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare(
    dataset: str,
    raw: Path,
    out: Path,
    *,
    ids: str = "test",
    preprocessor: Any = None,
    model: str | None = None,
    device: str = "cpu",
    crop: str = "aligned",
    smooth: bool = False,
    increase: float = 0.1,
    background: str = "keep",
    background_color: str = "black",
    matting: Any = None,
    matting_checkpoint: str | Path | None = None,
    preprocess: str | None = None,
    batch_size: int = 16,
    fps: float | None = None,
    max_frames: int | None = None,
    overwrite: bool = False,
    skip_missing: bool = False,
    lists: Path | None = None,
    show_progress: bool = True,
) -> PrepareResult:
    """Build ``out/<id>/<frame:06d>.png`` for ``dataset`` (``"hdtf"`` or ``"celeba"``); see the module docstring.

    Raises :class:`MissingRawFilesError` listing every id without a raw file (before any work) unless
    ``skip_missing``; :class:`MattingUnavailableError` for ``background="remove"`` without MODNet weights (both
    before any work). ``matting`` is a ready MODNet, or ``"mediapipe"`` (:class:`MediaPipeMatting`), else
    :func:`load_matting` finds MODNet weights. ``preprocess``: the face backend (``official``, ``mediapipe``).
    """
    if background not in ("keep", "remove"):
        raise InputError(f"background must be 'keep' or 'remove', got {background!r}")
    if background_color not in BACKGROUND_COLORS:
        raise InputError(f"background_color must be one of {BACKGROUND_COLORS}, got {background_color!r}")
    if dataset not in ("hdtf", "celeba", "vfhq"):
        raise InputError(f"dataset must be 'hdtf', 'celeba' or 'vfhq', got {dataset!r}")
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise InputNotFoundError(f"raw folder {raw} does not exist")

    # ---- what to do: locate every raw file first, so that missing ones are listed before any work
    todo: list[tuple[str, Any, int | None]] = []  # (id, source, frame count hint)
    missing: dict[str, list[str]] = {}
    hints: dict[str, str] = {}
    if dataset == "hdtf":
        for clip in hdtf_clips(ids, lists):
            src = locate_hdtf(raw, clip)
            if src is None:
                missing[clip.id] = [f"{s}.mp4" for s in clip.candidates()]
                hints[clip.id] = f"{clip.url or 'no url'} {clip.time_range}"
            else:
                todo.append((clip.id, src, None))
    elif dataset == "vfhq":
        found, missing = select_vfhq(raw, ids)
        todo += [(clip, path, None) for clip, path in found.items()]
    else:
        for item_id, hq, orig in celeba_sources(ids, lists):
            path, names = locate_celeba(raw, hq, orig)
            if path is None:
                missing[item_id] = names
            else:
                todo.append((item_id, path, 1))
    result = PrepareResult(missing=list(missing))
    if missing and not skip_missing:
        raise MissingRawFilesError(missing, raw, hints.get if hints else None)
    if missing:
        logger.warning("%d id(s) have no raw file and are skipped: %s", len(missing), ", ".join(list(missing)[:10]))

    out.mkdir(parents=True, exist_ok=True)
    _clean_partials(out)
    pending = []
    for item_id, src, hint in todo:
        if (out / item_id / "prepare.json").is_file() and not overwrite:
            result.skipped.append(item_id)
        else:
            pending.append((item_id, src, hint))
    if result.skipped:
        logger.info("%d id(s) already prepared, skipped (--overwrite to redo)", len(result.skipped))
    if not pending:
        return result

    remover, matting_source = None, None
    if background == "remove":
        if matting == "mediapipe":
            matting, matting_source = MediaPipeMatting(), "mediapipe selfie segmentation"
        elif matting is None:
            matting, matting_source = load_matting(model, matting_checkpoint, device)
        remover = BackgroundRemover(matting, background_color)
    if preprocessor is None:
        preprocessor = load_preprocessor(model, device, preprocess)
    cropper = FaceCropper(preprocessor, crop=crop, smooth=smooth, increase=increase)
    meta = {"dataset": dataset, "crop": crop, "smooth": smooth, "increase": increase if crop == "tube" else None,
            "background": background, "size": CROP_SIZE, "fps": fps, "max_frames": max_frames,
            "model": model or f"{preprocess or 'official'} preprocessing",
            "preprocess": getattr(preprocessor, "backend", preprocess or "official")}
    if remover is not None:
        meta.update(background_color=background_color, matting=matting_source or "given")

    from tqdm import tqdm

    videos = dataset in ("hdtf", "vfhq")
    bar = tqdm(total=None if videos else len(pending), unit="frame" if videos else "image",
               disable=not show_progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for n, (item_id, src, _) in enumerate(pending):
            bar.set_description(f"{item_id} ({n + 1}/{len(pending)})")
            if dataset == "hdtf":
                frames: Iterable[np.ndarray] = iter_video(src, fps=fps, max_frames=max_frames)
                source_meta = {"source": str(src.path), "start": src.start, "end": src.end}
            elif dataset == "vfhq" and Path(src).is_dir():
                frames = iter_frame_folder(Path(src), max_frames=max_frames)
                source_meta = {"source": str(src)}
            elif dataset == "vfhq":
                frames = iter_video(VideoSource(Path(src)), fps=fps, max_frames=max_frames)
                source_meta = {"source": str(src)}
            else:
                frames = [read_image(src)]
                source_meta = {"source": str(src)}
            try:
                written, no_face, reasons = write_id(out, item_id, frames, cropper, batch_size,
                                                     {**meta, **source_meta}, bar, background=remover)
            except (RuntimeError, OSError, ValueError) as exc:
                result.failed[item_id] = str(exc)
                bar.write(f"{item_id}: FAILED: {exc}")
                continue
            result.written.append(item_id)
            result.frames += written
            if no_face:
                result.no_face[item_id] = no_face
                first = ", ".join(f"{i:06d} ({reasons[i]})" for i in no_face[:5])
                bar.write(f"{item_id}: {len(no_face)} frame(s) without a usable face, not written: {first}"
                          + (" ..." if len(no_face) > 5 else ""))
    finally:
        bar.close()
    dt = time.perf_counter() - t0
    logger.info("prepared %d id(s), %d frame(s) in %.1f s", len(result.written), result.frames, dt)
    return result


def recrop(src: Path, out: Path, *, preprocessor: Any = None, model: str | None = None, device: str = "cpu",
           preprocess: str | None = None, batch_size: int = 16, show_progress: bool = True) -> Any:
    """GAGAvatar's evaluation crop (:mod:`eval.protocols.crop`) of every frame in ``src/<id>/`` into ``out``, with
    the detector of :func:`load_preprocessor` (or ``preprocessor``, anything with ``detect(images)``). Returns the
    :class:`eval.protocols.crop.RecropResult`."""
    from tqdm import tqdm

    from .protocols.crop import KeypointRecropper, recrop_folder

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputNotFoundError(f"recrop: {src} is not a folder")
    if src.resolve() == out.resolve():
        raise InputError("recrop: --out must be another folder than the input")
    if preprocessor is None and preprocess == "insightface":  # GAGAvatar's own keypoints: SCRFD (buffalo_l)
        from avatar.face.insightface_onnx import InsightFaceAnalysis

        preprocessor = InsightFaceAnalysis.from_pretrained(model, landmarks=False)
        name = "InsightFace SCRFD (buffalo_l det_10g) detector, its five keypoints"
    else:
        if preprocessor is None:
            preprocessor = load_preprocessor(model, device, preprocess)
        name = f"{getattr(preprocessor, 'backend', None) or model or 'given'} detector, its five keypoints"
    bar = tqdm(total=None, unit="frame", disable=not show_progress, dynamic_ncols=True, desc="recrop")
    try:
        result = recrop_folder(src, out, KeypointRecropper(preprocessor.detect), batch_size=batch_size,
                               detector_name=name, progress=bar)
    finally:
        bar.close()
    if result.fallback:
        logger.warning("%d frame(s) without a detected face took a neighbour's box (listed in %s/recrop.json)",
                       len(result.fallback), out)
    return result


# ---------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    from avatar.cli import FPS, POSITIVE_INT, ArgumentParser

    p = ArgumentParser(
        prog="python -m eval.prepare", description=__doc__.split("\n\n")[0],
        epilog="Raw files expected" + __doc__.split("Raw files expected", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=("hdtf", "celeba", "vfhq", "recrop"),
                   help="recrop: GAGAvatar's evaluation crop of a prepared or predicted frame folder")
    p.add_argument("raw_positional", nargs="?", type=Path, metavar="RAW",
                   help="the same as --raw (vfhq: the clips; recrop: the frame folder)")
    p.add_argument("--raw", type=Path, help="folder of downloaded clips / images (see below)")
    p.add_argument("--out", type=Path, help="output folder DATA (DATA/<id>/<frame:06d>.png)")
    p.add_argument("--ids", "--split", dest="ids", default="test",
                   help="hdtf: test (19, default) | test20 | all | FILE | ID,ID...; celeba: test (2,824 CelebA-HQ, "
                        "default) | all (30,000) | FILE of HQ indices | i,j,...; vfhq: test (RAW holds exactly "
                        "the 50 VFHQ-Test clips, default) | all | FILE of clip names | NAME,NAME...")
    p.add_argument("--crop", choices=("aligned", "tube"), default="aligned",
                   help="aligned: Portrait4D's per-frame 512 crop (default); tube: OTAvatar's first-frame box")
    p.add_argument("--smooth", action="store_true", help="one-euro smoothing of the aligned crops (upstream use_smooth)")
    p.add_argument("--increase", type=float, default=0.1, help="tube crop: box enlargement per side (OTAvatar 0.1/0.2)")
    p.add_argument("--background", choices=("keep", "remove"), default="keep",
                   help="remove: MODNet matting of each crop, composited on --background-color (see Background)")
    p.add_argument("--background-color", choices=BACKGROUND_COLORS, default="black",
                   help="with --background remove: black (default, GOHA) or white (OTAvatar)")
    p.add_argument("--preprocess", choices=("official", "mediapipe", "insightface"), default=None,
                   help="face backend of the aligned crop: official (RetinaFace + H3R, default) or mediapipe "
                        "(MediaPipe's detector and mesh, real weights inside the wheel; the [face] extra); recrop "
                        "only: insightface (SCRFD of InsightFace's buffalo_l, GAGAvatar's own keypoints; --model "
                        "the buffalo_l folder, else the cache; the [insightface] extra)")
    p.add_argument("--matting", choices=("modnet", "mediapipe"), default="modnet",
                   help="with --background remove: MODNet (default, the official choice) or MediaPipe's selfie "
                        "segmentation (no download)")
    p.add_argument("--matting-checkpoint", type=Path,
                   help="a released MODNet .ckpt (default: <--model>/modnet, else modnet-photographic in the cache)")
    p.add_argument("--model", help="pipeline folder for the networks (e.g. from `avatar tiny DIR`); default: the "
                                   "official preprocessing weights in the cache")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=16)
    p.add_argument("--fps", type=FPS, help="resample clips to this frame rate (default: keep every frame; "
                                             "OTAvatar wrote 20 fps)")
    p.add_argument("--max-frames", type=POSITIVE_INT, help="at most this many frames per clip")
    p.add_argument("--overwrite", action="store_true", help="redo ids that are already prepared")
    p.add_argument("--skip-missing", action="store_true", help="prepare the ids whose raw file exists, list the rest")
    p.add_argument("--lists", type=Path, help=f"folder with hdtf/ and celeba/ lists (default {DEFAULT_LISTS})")
    p.add_argument("--list-sources", action="store_true",
                   help="print, for each selected id, where to download it and what to save it as; then stop")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (debug; tracebacks of errors)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m eval.prepare`` / ``avatar prepare``: exit status 0 (done), 1 (the input cannot be used, or some
    ids failed: listed in the summary), 2 (a bug), 130 (interrupted)."""
    from avatar.cli import EXIT_ERROR, run_guarded
    from avatar.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    verbosity = -1 if args.quiet else args.verbose
    setup_logging(verbosity)
    if args.raw_positional is not None:
        if args.raw is not None and args.raw != args.raw_positional:
            parser.error("RAW given twice (positional and --raw) with different folders")
        args.raw = args.raw_positional
    if not args.list_sources and (args.raw is None or args.out is None):
        parser.error("--raw and --out are needed (or --list-sources)")

    def work() -> int:
        for option, value, low in (("--batch-size", args.batch_size, 1), ("--max-frames", args.max_frames, 1),
                                   ("--fps", args.fps, 1e-6), ("--increase", args.increase, 0.0)):
            if value is not None and value < low:
                raise InputError(f"{option} must be {'positive' if low == 1e-6 else f'at least {low:g}'}, got {value:g}")
        if args.preprocess == "insightface" and args.dataset != "recrop":
            raise InputError("--preprocess insightface is for recrop only (GAGAvatar's keypoints); prepare "
                             f"{args.dataset} with --preprocess official or mediapipe")
        if args.dataset == "recrop":
            res = recrop(args.raw, args.out, model=args.model, device=args.device, preprocess=args.preprocess,
                         batch_size=args.batch_size, show_progress=not args.no_progress)
            print(json.dumps({"folders": res.folders, "frames": res.frames, "fallback": len(res.fallback)}, indent=1))
            return 0
        if args.list_sources:
            if args.dataset == "vfhq":
                print("# " + VFHQ_TEST_MESSAGE.format(raw="RAW", n="?"))
                return 0
            if args.dataset == "hdtf":
                print(list_sources(hdtf_clips(args.ids, args.lists)))
            else:
                rows = celeba_sources(args.ids, args.lists)
                print("# id\tCelebA-HQ index\tCelebA file (img_celeba)")
                print("\n".join(f"{i}\t{hq}\t{orig}" for i, hq, orig in rows))
                print("# CelebA-HQ / CelebAMask-HQ: non-commercial research use only; download them yourself")
            return 0
        res = prepare(args.dataset, args.raw, args.out, ids=args.ids, model=args.model, device=args.device,
                      crop=args.crop, smooth=args.smooth, increase=args.increase, background=args.background,
                      background_color=args.background_color, matting_checkpoint=args.matting_checkpoint,
                      matting="mediapipe" if args.matting == "mediapipe" else None, preprocess=args.preprocess,
                      batch_size=args.batch_size, fps=args.fps, max_frames=args.max_frames,
                      overwrite=args.overwrite, skip_missing=args.skip_missing, lists=args.lists,
                      show_progress=not args.no_progress)
        summary = {k: v for k, v in asdict(res).items() if k != "no_face"}
        summary["ids_with_faceless_frames"] = {k: len(v) for k, v in res.no_face.items()}
        print(json.dumps(summary, indent=1))
        if res.failed:
            logger.error("%d id(s) failed (listed under \"failed\" above)", len(res.failed))
            return EXIT_ERROR
        return 0

    return run_guarded(work, verbosity=verbosity, log=logger, command="prepare")


if __name__ == "__main__":
    raise SystemExit(main())

