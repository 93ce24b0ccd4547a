"""GAGAvatar's evaluation re-crop: a square box from five face keypoints, enlarged 3x, resized to 512.

Why: GAGAvatar (Chu & Harada, NeurIPS 2024) re-crops the driving images and every method's results the same way
before scoring, so that methods whose own crops differ are compared on the same framing. What is stated, and where:

* the paper (as quoted in xg-chu/GAGAvatar issue #39, 2025-02-15): "we detect landmarks and crop the head region at
  the same size for all driving images and results, and then resize the results to 512x512 for evaluation";
* the author in that issue (2025-02-18): "I detect the 5 kps of the images, and then enlarged (ratio=3) the box to
  include the entire face based on 5 kps"; the detector: "Insightface" (SCRFD ``ins_scrfd_10g_bnkps``, the one in
  xg-chu/GAGAvatar_track ``engines/emica_encoder/utils_insight_detector.py``, which keeps the largest face by box
  area).

What is ours (not stated anywhere), and why:

* **Box formula** (:func:`keypoint_box`). With the five keypoints ``(x_k, y_k)``: the keypoints' bounding box
  ``x0 = min x_k, x1 = max x_k, y0 = min y_k, y1 = max y_k``; its centre ``cx = (x0 + x1) / 2, cy = (y0 + y1) / 2``;
  a square of side ``s = ratio * sqrt((x1 - x0) * (y1 - y0))`` (``ratio = 3``) centred there:
  ``(cx - s/2, cy - s/2, cx + s/2, cy + s/2)``. The geometric-mean side and the centring are those of the same
  author's ``expand_bbox`` (xg-chu/GAGAvatar_track ``engines/engine_core.py``), which his data pipeline applies to
  a detector box; using it on the keypoint box is our reading of "enlarged (ratio=3) the box ... based on 5 kps".
* **Pixels** (:func:`crop_to_box`): the box is rounded to whole pixels (left/top rounded, side rounded), the part
  outside the image is black (as ``torchvision.transforms.functional.crop`` pads), and the square is resized to
  512 with OpenCV area interpolation when shrinking, cubic when enlarging.
* **Detector**: this toolkit's RetinaFace (``avatar/face/retinaface.py``, the Portrait4D preprocessing detector) or
  the MediaPipe backend, through :func:`eval.prepare.load_preprocessor`; both give the same five points as
  InsightFace (eyes, nose tip, mouth corners), but they are not SCRFD: boxes differ by a few pixels.
* **Every image gets its own box** (ground truth from its own keypoints, each result from its own): the point of
  the re-crop is to re-align methods whose framings differ, which a box copied from the ground truth would not do.
* **No face found**: the previous frame's box in the same folder (the next one's for a leading frame), else the
  whole image (a centred square); listed in ``recrop.json``. GAGAvatar's metric code instead scores a pair whose
  face is not detected as 0 (issue #43), which is a metric option, not a crop.

The crop is applied to files (``python -m eval.prepare recrop SRC --out DST``) so that any folder, ground truth or
a method's frames, can be scored by the unchanged metrics; :data:`RECROP_MARKER` in DST records what was done.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GAGAVATAR_CROP", "GAGAVATAR_CROP_RATIO", "GAGAVATAR_CROP_SIZE", "KeypointRecropper", "RECROP_MARKER",
    "RecropResult", "crop_to_box", "keypoint_box", "read_recrop_marker", "recrop_folder",
]

GAGAVATAR_CROP = "gagavatar-kps3"   # the name protocols use (Protocol.crop)
GAGAVATAR_CROP_RATIO = 3.0          # issue #39: "enlarged (ratio=3)"
GAGAVATAR_CROP_SIZE = 512           # issue #39 (paper): "resize the results to 512x512"
RECROP_MARKER = "recrop.json"       # written into the re-cropped folder


def keypoint_box(points: Any, ratio: float = GAGAVATAR_CROP_RATIO) -> np.ndarray:
    """The square crop box ``(x1, y1, x2, y2)`` (float64) of five (or more) keypoints ``(N, 2)``: centred on the
    keypoints' bounding box, side ``ratio * sqrt(width * height)`` of that box (see the module docstring)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 2 or not np.isfinite(pts).all():
        raise ValueError(f"need at least two finite keypoints, got {pts.tolist()}")
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    side = ratio * math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))
    if not side > 0:
        raise ValueError(f"degenerate keypoints (their box has no area): {pts.tolist()}")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], dtype=np.float64)


def crop_to_box(image: np.ndarray, box: Any, size: int = GAGAVATAR_CROP_SIZE) -> np.ndarray:
    """``image`` ``(H, W, 3)`` uint8 cut to the square ``box`` (rounded to whole pixels: ``left = round(x1)``,
    ``top = round(y1)``, ``side = round(x2 - x1)``; outside the image is black) and resized to ``size``."""
    import cv2

    x1, y1, x2, _ = (float(v) for v in np.asarray(box, dtype=np.float64)[:4])
    left, top, side = int(round(x1)), int(round(y1)), int(round(x2 - x1))
    if side < 1:
        raise ValueError(f"crop box {box} is smaller than a pixel")
    h, w = image.shape[:2]
    square = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        square[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = image[sy0:sy1, sx0:sx1]
    if side == size:
        return square
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interp)


def _largest(faces: Sequence[Any]) -> Any:
    """The face with the largest box area (GAGAvatar_track's ``InsightDetector.get`` keeps that one)."""
    return max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))


@dataclass
class KeypointRecropper:
    """Detect five keypoints per image (``detect``: ``list[image] -> list[list[face]]`` with ``face.box`` and
    ``face.landmarks``, e.g. :meth:`eval.prepare.CropPreprocessor.detect`) and cut the GAGAvatar box."""

    detect: Callable[[list[np.ndarray]], list[list[Any]]]
    ratio: float = GAGAVATAR_CROP_RATIO
    size: int = GAGAVATAR_CROP_SIZE

    def boxes(self, images: list[np.ndarray]) -> list[np.ndarray | None]:
        """The box of each image, or ``None`` where no face (or no usable keypoints) was found."""
        out: list[np.ndarray | None] = []
        for faces in self.detect(images):
            if not faces:
                out.append(None)
                continue
            points = np.asarray(_largest(faces).landmarks, dtype=np.float64).reshape(-1, 2)[:5]
            try:
                out.append(keypoint_box(points, self.ratio))
            except ValueError:
                out.append(None)
        return out


@dataclass
class RecropResult:
    """Per folder: frames written, and the frames whose box came from a neighbour or the whole image."""

    folders: int = 0
    frames: int = 0
    fallback: dict[str, list[str]] = field(default_factory=dict)  # "<id>/<frame>" -> how


def _whole_image_box(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = float(max(h, w))
    cx, cy = w / 2, h / 2
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


def read_recrop_marker(folder: str | Path) -> dict[str, Any] | None:
    """The :data:`RECROP_MARKER` of a re-cropped folder, or ``None``."""
    path = Path(folder) / RECROP_MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def recrop_folder(src: str | Path, dst: str | Path, recropper: KeypointRecropper, *, batch_size: int = 16,
                  detector_name: str = "", progress: Any = None) -> RecropResult:
    """Re-crop every ``src/<id>/<frame>.png|jpg`` into ``dst/<id>/<frame:06d>.png`` (see the module docstring);
    each id is written atomically; ``dst/recrop.json`` records the crop, the detector and the fallbacks."""
    from PIL import Image

    from avatar.io.files import apply_umask

    from ..data import list_ids, natural_key

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("recrop: --out must be another folder than the input")
    dst.mkdir(parents=True, exist_ok=True)
    result = RecropResult()
    for item in list_ids(src):
        files = sorted((p for p in (src / item).iterdir()
                        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.stem.isdigit()),
                       key=lambda p: natural_key(p.name))
        if not files:
            continue
        tmp = Path(tempfile.mkdtemp(prefix=f".{item}.partial-", dir=dst))
        try:
            images: list[np.ndarray] = []
            for p in files:
                with Image.open(p) as im:
                    images.append(np.asarray(im.convert("RGB")))
            boxes: list[np.ndarray | None] = []
            for i in range(0, len(images), batch_size):
                boxes += recropper.boxes(images[i:i + batch_size])
                if progress is not None:
                    progress.update(len(images[i:i + batch_size]))
            found = [i for i, b in enumerate(boxes) if b is not None]
            for i, (path, image) in enumerate(zip(files, images, strict=True)):
                box = boxes[i]
                if box is None:
                    before = [j for j in found if j < i]
                    after = [j for j in found if j > i]
                    if before or after:
                        j = before[-1] if before else after[0]
                        box, how = boxes[j], f"no face: box of frame {files[j].stem}"
                    else:
                        box, how = _whole_image_box(image), "no face in the folder: whole image"
                    result.fallback[f"{item}/{int(path.stem):06d}"] = how
                crop = crop_to_box(image, box, recropper.size)
                Image.fromarray(crop).save(tmp / f"{int(path.stem):06d}.png", compress_level=3)
            final = dst / item
            if final.exists():
                shutil.rmtree(final)
            apply_umask(tmp)  # mkdtemp's 0700 -> what mkdir would give
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        result.folders += 1
        result.frames += len(files)
    marker = {"crop": GAGAVATAR_CROP, "ratio": recropper.ratio, "size": recropper.size,
              "box": "square, centre of the 5-keypoint box, side ratio*sqrt(w*h) (eval/protocols/crop.py)",
              "detector": detector_name, "source": str(src.resolve()), "folders": result.folders,
              "frames": result.frames, "fallback": result.fallback}
    (dst / RECROP_MARKER).write_text(json.dumps(marker, indent=1))
    return result
