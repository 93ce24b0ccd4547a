"""A talking-head video -> per-frame training data for fitting a person-specific Gaussian head avatar (GPHM
section 3.5), with the real-weights mediapipe backend (:mod:`avatar.face.mediapipe_face`).

:func:`prepare_video` writes a folder; :class:`PreparedVideo` reads it as a dataset. Per kept frame:

=================  ==========================================================================================
``image``          the RGB crop, ``(3, R, R)`` float in ``[0, 1]`` (stored as uint8)
``mask``           the selfie-segmentation matte of the crop, ``(1, R, R)`` float in ``[0, 1]`` (stored as uint8)
``landmarks``      the 478 face-mesh points (468 + 10 iris) in crop pixels, ``(478, 3)``: ``x`` right, ``y``
                   down, ``z`` MediaPipe's relative depth in the same pixel scale (smaller is nearer)
``R``, ``t``       the rigid head pose, ``(3, 3)`` and ``(3,)``: ``X_cam = R X_world + t`` in the OpenCV camera
                   frame (``x`` right, ``y`` down, ``z`` forward), world = MediaPipe's canonical face model in
                   **metres** (``x`` to the subject's left, ``y`` up, ``z`` out of the face; origin on the
                   face's midline about 7.5 cm behind the nose tip); ``world_to_camera`` is the same, ``(4, 4)``
``K``              the fixed pinhole intrinsics of the crop, ``(3, 3)`` (same for every frame)
``expression``     the expression input, ``(1434,)``: the mesh with the head pose removed (below)
``frame_index``    the frame's index in the source video; ``time`` its time in seconds; ``index`` its position
=================  ==========================================================================================

Choices (the paper preprocesses with BackgroundMattingV2/RobustVideoMatting, face-alignment landmarks and a
BFM fit, whose weights are not available here; every step below runs with weights that install from PyPI):

* **One fixed crop for the whole video.** Pass 1 runs the face detector (no mesh) on every frame. The square
  crop is centred on the median centre of the largest face's box, moved up by :data:`CROP_UP` (0.15) box sizes
  so that hair fits, with side ``max(CROP_SCALE * median box size, UNION_MARGIN * larger side of the union of
  the boxes)`` (2.4 and 1.15): big enough for the head, hair and some shoulders, and for every position the
  face takes. It is clipped to the frame (at most the frame's shorter side, shifted inside it: no padding), in
  whole pixels, and resized to ``resolution`` (area interpolation when shrinking, cubic when enlarging). The
  camera is therefore static and the head motion is in the pose, as in a multi-view capture.
* **Intrinsics.** ``fx = fy = 4.7572 * resolution`` (Portrait4D's 12 degree field of view, the toolkit's
  camera, :func:`avatar.render.camera.focal_from_fov`), ``cx = cy = resolution / 2`` with pixel centres at
  ``i + 0.5`` (the convention of gsplat and of MediaPipe's normalised coordinates). Why this focal: the head
  pose comes from MediaPipe's mesh, which is a *weak-perspective* fit (its depth is relative, with no camera
  distance in it), so the pinhole camera should be close to orthographic for the fitted head to project where
  the mesh is. Measured on ``../shared/media`` (mean distance over the 468 vertices between the pinhole
  projection of the fitted canonical face and its weak-perspective fit, 512 crops): 1.4 px (talk3) and 2.5 px
  (drive_d9) at 12 degrees, the head 1.8 and 1.35 m away; 3.7 / 6.7 px at 30 degrees; 8.7 / 16.1 px at 60
  degrees (a phone's field of view over the whole frame, the head 0.3 m away), where the head would be bent.
  It is also the camera of the toolkit's other models, and GPHM gives monocular videos "a global default
  camera".
* **Head pose.** :func:`avatar.face.mediapipe_face.head_pose_from_mesh` (weighted Procrustes of MediaPipe's
  33 rigid basis points of the canonical face, scale ``s`` pixels per centimetre, ``target ~ s R X + t`` in
  a frame with ``y`` up) is turned into the pinhole camera exactly at the canonical origin: ``R_cv = diag(1,
  -1, -1) R``, depth ``Z = f / (100 s)`` metres, ``t_cv = (Z (u0 - cx) / f, Z (v0 - cy) / f, Z)`` with
  ``(u0, v0)`` the pixel of the canonical origin; then refined by Levenberg-Marquardt on the basis points'
  reprojection (``cv2.solvePnPRefineLM``, from that start, so it cannot jump to another solution). The RMS
  reprojection error of the basis points is kept (:attr:`PreparedVideo.reprojection_px`; 3 to 7 px of 512 on
  the videos of ``../shared/media``, mostly because the canonical face is not the person's face).
* **Expression input** (the "mesh landmarks as the expression input" option of the issue; GPHM's own
  expression encoder takes face images, which the ``image`` and ``landmarks`` allow too): the 478 mesh points
  taken back to the canonical frame with the inverse of the Procrustes similarity (``X = R^T (target - t) /
  s``, centimetres, MediaPipe's depth included), minus MediaPipe's canonical face (for the 10 iris points,
  the midpoint of their eye's corners, vertices 33/133 and 263/362), in centimetres, flattened x, y, z per
  point: about 0 for an average neutral face, a few units for expressions; identity shape stays in it (a
  fitting can subtract the video's median, :meth:`PreparedVideo.median_expression`).
* **Faces.** The largest face of each frame is the subject. A frame without a face (in pass 1, or without a
  mesh in its crop) is skipped and recorded in the manifest with the reason. Errors: no face in any frame,
  or in more than half of the frames (:class:`~avatar.errors.NoFaceError`, saying how many), or a second face
  at least half as big as the subject in more than 20 % of the frames (:class:`~avatar.errors.InputError`:
  several people). Unreadable, corrupt or empty files raise :class:`~avatar.errors.VideoReadError` from
  :mod:`avatar.io.video`.

On disk (``out_dir``)::

    manifest.json              format, settings, video facts, crop, K, chunks done, skipped frames, status
    detections.npz             pass 1 (per frame: the largest box, face count, second face's relative size)
    chunks/chunk_00000.npz     frames [0, chunk_size) of the video: image_0000.., matte_0000.. (uint8, one
                               member per kept frame so one can be read alone), frame_index, landmarks,
                               rotation, translation, points (unposed mesh, cm), pose_scale, reprojection_px,
                               skipped; np.savez_compressed

Every file is written under a partial name and moved into place; the manifest is rewritten (atomically) after
each chunk. **Resumable**: a rerun with the same video and settings keeps the detections and finished chunks
and continues with the next chunk; a finished folder is returned at once. Other settings or another video in
the same folder raise :class:`~avatar.errors.InputError` unless ``overwrite=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar.errors import InputError, NoFaceError, UnknownOptionValueError
from avatar.io.files import create_partial, remove_stale_partials
from avatar.io.video import VideoReader
from avatar.render.camera import PORTRAIT4D_FOV_DEG, focal_from_fov

__all__ = [
    "CHUNK_SIZE", "CROP_SCALE", "EXPRESSION_DIM", "FOCAL_NORMALISED", "FORMAT_NAME", "MANIFEST", "PreparedVideo",
    "crop_box", "expression_points", "intrinsics", "pinhole_pose", "prepare_video",
]

logger = logging.getLogger(__name__)

FORMAT_NAME = "avatar4d-fitting-video"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DETECTIONS = "detections.npz"
CHUNKS_DIR = "chunks"

CHUNK_SIZE = 64
"""Source frames per chunk file (a chunk is the unit of resumption)."""
CROP_SCALE = 2.4
"""Crop side in units of the median face box size (mean of its width and height)."""
UNION_MARGIN = 1.15
"""The crop holds the union of the face boxes enlarged by this."""
CROP_UP = 0.15
"""The crop centre is moved up by this many median box sizes (the detector's box ends at the brows)."""
FOCAL_NORMALISED = float(focal_from_fov(PORTRAIT4D_FOV_DEG))
"""``fx / resolution`` of :func:`intrinsics`: Portrait4D's 12 degree field of view (4.7572)."""
MIN_FACE_FRACTION = 0.5
"""A video needs a face in at least this fraction of its frames."""
SECOND_FACE_RATIO = 0.5
"""A second face at least this big relative to the largest counts as another person..."""
SEVERAL_FACES_FRACTION = 0.2
"""...and more than this fraction of the face frames with one makes the video refused."""
NUM_POINTS = 478
EXPRESSION_DIM = NUM_POINTS * 3
BACKENDS = ("mediapipe",)
_F = np.array([1.0, -1.0, -1.0])
_IRIS_EYE_CORNERS = ((468, 473, (33, 133)), (473, 478, (263, 362)))


# ----------------------------------------------------------------------------------------------------------
# geometry


def intrinsics(resolution: int) -> np.ndarray:
    """The fixed ``(3, 3)`` pinhole intrinsics of a ``resolution`` crop (module docstring): focal
    :data:`FOCAL_NORMALISED` ``* resolution``, principal point at the centre (pixel centres at ``i + 0.5``)."""
    f = FOCAL_NORMALISED * resolution
    return np.array([[f, 0.0, resolution / 2], [0.0, f, resolution / 2], [0.0, 0.0, 1.0]])


def crop_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int]:
    """The fixed square crop ``(x0, y0, side)`` in whole source pixels from the ``(N, 4)`` face boxes
    ``x1, y1, x2, y2`` of the frames with a face (module docstring)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        raise ValueError("crop_box needs at least one face box")
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2
    size = float(np.median(sizes))
    cx, cy = np.median(centres, axis=0)
    cy -= CROP_UP * size
    union = max(boxes[:, 2].max() - boxes[:, 0].min(), boxes[:, 3].max() - boxes[:, 1].min())
    side = max(CROP_SCALE * size, UNION_MARGIN * union)
    side = int(min(round(side), width, height))
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return x0, y0, side


def pinhole_pose(pose: Any, mesh: np.ndarray, k: np.ndarray, refine: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, float]:
    """The OpenCV ``(R, t)`` (world = canonical face in metres) and the RMS reprojection error in pixels of the
    Procrustes basis points, from a :class:`~avatar.face.mediapipe_face.HeadPoseEstimate` of ``mesh`` (module
    docstring)."""
    from avatar.face.mediapipe_face import canonical_face

    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    rot = _F[:, None] * pose.rotation  # diag(1, -1, -1) @ R
    u0, v0 = pose.translation[0], -pose.translation[1]
    depth = f / (100.0 * pose.scale)
    trans = np.array([depth * (u0 - cx) / f, depth * (v0 - cy) / f, depth])
    canon = canonical_face()
    obj = canon.vertices[canon.basis_ids] / 100.0
    img = np.asarray(mesh, dtype=np.float64)[canon.basis_ids, :2]
    if refine:
        rvec, _ = cv2.Rodrigues(rot)
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, None, rvec, trans.reshape(3, 1).copy())
        rot, trans = cv2.Rodrigues(rvec)[0], tvec.reshape(3)
    proj = obj @ rot.T + trans
    err = proj[:, :2] / proj[:, 2:] * f + np.array([cx, cy]) - img
    return rot, trans, float(np.sqrt((err**2).sum(1).mean()))


def expression_points(mesh: np.ndarray, pose: Any) -> np.ndarray:
    """The ``(478, 3)`` mesh taken back to the canonical frame (centimetres) by the inverse of the pose's
    similarity: ``X = R^T (target - t) / s`` with ``target`` the mesh in the pose's ``y``-up frame."""
    target = np.asarray(mesh, dtype=np.float64) * _F
    return (target - pose.translation) @ pose.rotation / pose.scale


def _expression_template() -> np.ndarray:
    from avatar.face.mediapipe_face import canonical_face

    v = canonical_face().vertices
    template = np.zeros((NUM_POINTS, 3))
    template[: len(v)] = v
    for start, stop, (a, b) in _IRIS_EYE_CORNERS:
        template[start:stop] = (v[a] + v[b]) / 2
    return template


def expression_input(points: np.ndarray) -> np.ndarray:
    """``(..., 478, 3)`` unposed points (cm) -> ``(..., 1434)`` float32: minus the canonical template, flattened
    (module docstring)."""
    points = np.asarray(points, dtype=np.float64)
    return (points - _expression_template()).reshape(*points.shape[:-2], EXPRESSION_DIM).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# files


def _atomic(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    remove_stale_partials(path)
    tmp = create_partial(path)
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _atomic(path, lambda f: f.write(json.dumps(data, indent=1)), "w")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _atomic(path, lambda f: np.savez_compressed(f, **arrays))


def _chunk_name(c: int) -> str:
    return f"{CHUNKS_DIR}/chunk_{c:05d}.npz"


# ----------------------------------------------------------------------------------------------------------
# the preparation


def _backend(backend: Any) -> Any:
    if isinstance(backend, str):
        if backend not in BACKENDS:
            raise UnknownOptionValueError(f"backend must be one of {BACKENDS} (the face backend with real weights "
                                          f"here), got {backend!r}")
        from avatar.face.mediapipe_face import MediaPipeFaceBackend

        return MediaPipeFaceBackend()
    if not all(hasattr(backend, m) for m in ("detect_boxes", "detect", "matte")):
        raise InputError("a face backend object needs detect_boxes, detect and matte methods (as "
                         "MediaPipeFaceBackend has)")
    return backend


def _settings(video: Path, resolution: int, max_frames: int | None, backend: Any, chunk_size: int) -> dict[str, Any]:
    return {"video": video.name, "video_bytes": video.stat().st_size, "resolution": resolution,
            "max_frames": max_frames, "backend": getattr(backend, "name", type(backend).__name__),
            "chunk_size": chunk_size}


def _bar(total: int, desc: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=not progress, dynamic_ncols=True, leave=False)


def _detect_all(reader: VideoReader, backend: Any, progress: bool) -> dict[str, np.ndarray]:
    """Pass 1: the largest face's box, the face count and the second face's size relative to the largest."""
    boxes, counts, second = [], [], []
    bar = _bar(len(reader), "detect faces", progress)
    try:
        for frame in reader:
            faces = backend.detect_boxes(frame)
            counts.append(len(faces))
            if faces:
                sizes = sorted((_size(f.box) for f in faces), reverse=True)
                boxes.append(np.asarray(max(faces, key=lambda f: _size(f.box)).box, dtype=np.float64))
                second.append(sizes[1] / sizes[0] if len(sizes) > 1 and sizes[0] > 0 else 0.0)
            else:
                boxes.append(np.full(4, np.nan))
                second.append(0.0)
            bar.update(1)
    finally:
        bar.close()
    return {"boxes": np.stack(boxes), "counts": np.asarray(counts, np.int32), "second": np.asarray(second)}


def _size(box: np.ndarray) -> float:
    return float(((box[2] - box[0]) + (box[3] - box[1])) / 2)


def _check_faces(det: dict[str, np.ndarray], video: Path) -> None:
    n = len(det["counts"])
    with_face = int((det["counts"] > 0).sum())
    if with_face == 0:
        raise NoFaceError(f"{video}: no face in any of its {n} frames; give a video of one person's face, "
                          "looking roughly at the camera")
    if with_face < MIN_FACE_FRACTION * n:
        raise NoFaceError(f"{video}: no face in {n - with_face} of its {n} frames (a face is needed in at least "
                          f"{MIN_FACE_FRACTION:.0%} of them); trim the video to the part that shows the face")
    several = int((det["second"] >= SECOND_FACE_RATIO).sum())
    if several > SEVERAL_FACES_FRACTION * with_face:
        raise InputError(f"{video}: several faces ({several} of the {with_face} frames with a face show a second "
                         f"face at least {SECOND_FACE_RATIO:.0%} the size of the largest); an avatar is fitted to "
                         "one person: crop the video to that person")


def _resize(crop: np.ndarray, resolution: int) -> np.ndarray:
    interp = cv2.INTER_AREA if crop.shape[0] > resolution else cv2.INTER_CUBIC
    return crop if crop.shape[0] == resolution else cv2.resize(crop, (resolution, resolution), interpolation=interp)


def _process_frame(frame: np.ndarray, crop: tuple[int, int, int], resolution: int, k: np.ndarray,
                   backend: Any) -> dict[str, np.ndarray] | None:
    """One frame's crop, matte, mesh, pose and unposed points; ``None`` when the crop shows no face mesh."""
    from avatar.face.mediapipe_face import head_pose_from_mesh

    x0, y0, side = crop
    image = np.ascontiguousarray(_resize(frame[y0:y0 + side, x0:x0 + side], resolution))
    faces = [f for f in backend.detect(image) if getattr(f, "mesh", None) is not None]
    if not faces:
        return None
    mesh = np.asarray(max(faces, key=lambda f: _size(f.box)).mesh, dtype=np.float64)
    pose = head_pose_from_mesh(mesh)
    rot, trans, err = pinhole_pose(pose, mesh, k)
    matte = np.clip(np.asarray(backend.matte(image), dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return {"image": image, "matte": matte, "landmarks": mesh.astype(np.float32),
            "rotation": rot.astype(np.float32), "translation": trans.astype(np.float32),
            "points": expression_points(mesh, pose).astype(np.float32), "pose_scale": np.float32(pose.scale),
            "reprojection_px": np.float32(err)}


_SMALL = {"landmarks": (NUM_POINTS, 3), "rotation": (3, 3), "translation": (3,), "points": (NUM_POINTS, 3),
          "pose_scale": (), "reprojection_px": ()}


def _chunk_arrays(results: list[tuple[int, dict[str, np.ndarray] | None]]) -> tuple[dict[str, np.ndarray], list[int]]:
    kept = [(i, r) for i, r in results if r is not None]
    skipped = [i for i, r in results if r is None]
    arrays: dict[str, np.ndarray] = {"frame_index": np.asarray([i for i, _ in kept], dtype=np.int64),
                                     "skipped": np.asarray(skipped, dtype=np.int64)}
    for key, shape in _SMALL.items():
        arrays[key] = (np.stack([r[key] for _, r in kept]) if kept else np.zeros((0, *shape))).astype(np.float32)
    for j, (_, r) in enumerate(kept):
        arrays[f"image_{j:04d}"] = r["image"]
        arrays[f"matte_{j:04d}"] = r["matte"]
    return arrays, skipped


def prepare_video(
    video_path: str | Path,
    out_dir: str | Path,
    *,
    resolution: int = 512,
    max_frames: int | None = None,
    backend: Any = "mediapipe",
    progress: bool = True,
    chunk_size: int = CHUNK_SIZE,
    overwrite: bool = False,
) -> PreparedVideo:
    """Turn a talking-head video into per-frame training data in ``out_dir`` (module docstring), resumably.

    Args:
        video_path: the video (anything PyAV reads).
        out_dir: the folder to write (created); a finished one for the same video and settings is reused.
        resolution: side of the square crop in pixels (512, GPHM's).
        max_frames: use only the first frames (``None``: all).
        backend: ``'mediapipe'`` or an object with ``detect_boxes``, ``detect`` and ``matte`` like
            :class:`~avatar.face.mediapipe_face.MediaPipeFaceBackend`.
        progress: show progress bars.
        chunk_size: source frames per chunk file.
        overwrite: remove what ``out_dir`` holds from another video or other settings and start again
            (otherwise that is an error).

    Raises:
        VideoReadError: the video is missing, empty, corrupt or not a video.
        NoFaceError: no face in any frame, or in more than half of them (the message says how many).
        InputError: several people, bad options, or ``out_dir`` prepared from another video or settings.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 16:
        raise InputError(f"resolution must be a whole number of pixels, at least 16, got {resolution!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a whole number of at least 1, got {chunk_size!r}")
    video, out = Path(video_path), Path(out_dir)
    reader = VideoReader(video, max_frames=max_frames)  # checks the file now (first frame decoded)
    face = _backend(backend)
    settings = _settings(video, resolution, max_frames, face, chunk_size)
    manifest = _load_manifest(out, settings, overwrite)
    if manifest is not None and manifest["status"] == "complete":
        logger.info("%s is already prepared in %s; reusing it", video, out)
        return PreparedVideo(out)
    (out / CHUNKS_DIR).mkdir(parents=True, exist_ok=True)

    det_path = out / DETECTIONS
    det = _load_detections(det_path) if manifest is not None else None
    if det is None:
        det = _detect_all(reader, face, progress)
        _write_npz(det_path, det)
    _check_faces(det, video)
    n = len(det["counts"])
    has_face = det["counts"] > 0
    crop = crop_box(det["boxes"][has_face], reader.info.width, reader.info.height)
    k = intrinsics(resolution)
    if manifest is None:
        fps = Fraction(reader.fps)
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "status": "processing", "settings": settings,
            "video": {"name": video.name, "width": reader.info.width, "height": reader.info.height,
                      "fps": f"{fps.numerator}/{fps.denominator}", "num_frames": n},
            "crop": {"x0": crop[0], "y0": crop[1], "side": crop[2]},
            "resolution": resolution, "K": k.tolist(), "focal_normalised": FOCAL_NORMALISED,
            "world": "MediaPipe canonical face, metres; OpenCV camera (x right, y down, z forward)",
            "expression": "unposed 478-point mesh minus the canonical face, centimetres, flattened",
            "chunks": [], "skipped": {},
        }
        _write_json(out / MANIFEST, manifest)
    done = {c["index"] for c in manifest["chunks"]}
    num_chunks = math.ceil(n / chunk_size)
    if len(done) < num_chunks:
        _process_chunks(reader, out, manifest, done, det, crop, k, face, progress)
    manifest["status"] = "complete"
    kept = sum(c["frames"] for c in manifest["chunks"])
    manifest["frames"] = kept
    if kept == 0:
        _write_json(out / MANIFEST, manifest)
        raise NoFaceError(f"{video}: the face mesh was found in none of the {n} frames of the crop; give a video "
                          "where the face is seen clearly")
    _write_json(out / MANIFEST, manifest)
    logger.info("prepared %d of %d frames of %s into %s (%d skipped)", kept, n, video, out, n - kept)
    return PreparedVideo(out)


def _process_chunks(reader: VideoReader, out: Path, manifest: dict[str, Any], done: set[int],
                    det: dict[str, np.ndarray], crop: tuple[int, int, int], k: np.ndarray, face: Any,
                    progress: bool) -> None:
    chunk_size = int(manifest["settings"]["chunk_size"])
    n = len(det["counts"])
    bar = _bar(n, "prepare frames", progress)
    bar.update(sum(c["last"] - c["first"] for c in manifest["chunks"]))
    results: list[tuple[int, dict[str, np.ndarray] | None]] = []
    try:
        for i, frame in enumerate(_frames(reader, n)):
            c = i // chunk_size
            if c in done:
                continue
            if det["counts"][i] > 0:
                results.append((i, _process_frame(frame, crop, int(manifest["resolution"]), k, face)))
            else:
                results.append((i, None))
                manifest["skipped"][str(i)] = "no face detected"
            bar.update(1)
            if i == n - 1 or (i + 1) % chunk_size == 0:
                arrays, skipped = _chunk_arrays(results)
                for s in skipped:
                    manifest["skipped"].setdefault(str(s), "no face mesh in the crop")
                _write_npz(out / _chunk_name(c), arrays)
                manifest["chunks"].append({"index": c, "file": _chunk_name(c), "first": c * chunk_size,
                                           "last": i + 1, "frames": len(arrays["frame_index"])})
                manifest["chunks"].sort(key=lambda e: e["index"])
                _write_json(out / MANIFEST, manifest)
                results = []
    finally:
        bar.close()


def _frames(reader: VideoReader, n: int) -> Iterator[np.ndarray]:
    count = 0
    for frame in reader:
        if count >= n:
            return
        count += 1
        yield frame
    if count != n:
        raise InputError(f"{reader.path} gave {count} frames now and {n} before; was the file changed?")


def _load_manifest(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == FORMAT_NAME and manifest.get("version") == FORMAT_VERSION
    except (OSError, ValueError):
        manifest, ok = None, False
    if ok and manifest["settings"] == settings:
        present = [c for c in manifest["chunks"] if (out / c["file"]).is_file()]
        if len(present) < len(manifest["chunks"]):  # chunk files removed by hand: make them again
            logger.warning("%s: %d chunk file(s) are missing; preparing them again", out,
                           len(manifest["chunks"]) - len(present))
            manifest["chunks"], manifest["status"] = present, "processing"
        return manifest
    if not overwrite:
        what = "another video or other settings" if ok else "something that is not a prepared video"
        raise InputError(f"{out} holds {what} ({path}); choose another folder, or pass overwrite=True to start "
                         "again there")
    for name in (MANIFEST, DETECTIONS):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / CHUNKS_DIR, ignore_errors=True)
    return None


def _load_detections(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in ("boxes", "counts", "second")}
    except (OSError, KeyError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------------
# the dataset


@dataclass(frozen=True)
class _Frame:
    chunk: int
    member: int


class PreparedVideo(torch.utils.data.Dataset):
    """The frames of a folder written by :func:`prepare_video` (module docstring for the items).

    Small arrays (landmarks, poses, expressions) are read when this is made; an item's image and matte are
    read from its chunk file when asked (one compressed member each; file handles are cached per process, so
    DataLoader workers are fine).

    Args:
        root: the folder.
        indices: positions of the frames to keep (``None``: all), used by :meth:`split` / :meth:`subset`.
    """

    def __init__(self, root: str | Path, indices: np.ndarray | list[int] | None = None) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        try:
            self.manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            raise InputError(f"{self.root} is not a prepared video folder (no readable {MANIFEST}); run "
                             "prepare_video first") from None
        if self.manifest.get("format") != FORMAT_NAME or self.manifest.get("status") != "complete":
            raise InputError(f"{self.root} holds no finished preparation (status "
                             f"{self.manifest.get('status')!r}); run prepare_video again to finish it")
        self.resolution = int(self.manifest["resolution"])
        self.fps_fraction = Fraction(self.manifest["video"]["fps"])
        self.fps = float(self.fps_fraction)
        self.num_source_frames = int(self.manifest["video"]["num_frames"])
        self.K = torch.tensor(self.manifest["K"], dtype=torch.float32)
        small: dict[str, list[np.ndarray]] = {k: [] for k in ("frame_index", *_SMALL)}
        locs: list[_Frame] = []
        for c in self.manifest["chunks"]:
            with np.load(self.root / c["file"]) as data:
                for key in small:
                    small[key].append(data[key])
                locs += [_Frame(int(c["index"]), j) for j in range(len(data["frame_index"]))]
        arrays = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in small.items()}
        order = np.argsort(arrays["frame_index"], kind="stable")
        self._all = {k: v[order] for k, v in arrays.items()}
        self._locs = [locs[i] for i in order]
        self.indices = np.arange(len(self._locs)) if indices is None else np.asarray(indices, dtype=np.int64)
        self._files: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    # ---- sizes and views ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return (f"PreparedVideo({str(self.root)!r}, frames={len(self)} of {self.num_source_frames}, "
                f"resolution={self.resolution}, fps={self.fps:g})")

    @property
    def frame_indices(self) -> np.ndarray:
        """Source-video index of each item."""
        return self._all["frame_index"][self.indices]

    @property
    def reprojection_px(self) -> np.ndarray:
        """RMS reprojection error (pixels) of the head pose's basis points, per item."""
        return self._all["reprojection_px"][self.indices]

    @property
    def skipped(self) -> dict[int, str]:
        """Source frames left out, with the reason."""
        return {int(k): v for k, v in self.manifest["skipped"].items()}

    def subset(self, positions: np.ndarray | list[int]) -> PreparedVideo:
        """The items at ``positions`` of this view (a new view on the same folder)."""
        view = object.__new__(PreparedVideo)
        view.__dict__.update(self.__dict__)
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        view._files = OrderedDict()
        return view

    def split(self, train_fraction: float = 0.8) -> tuple[PreparedVideo, PreparedVideo]:
        """The frames of the first ``train_fraction`` of the video's time and those of the rest (time order;
        the cut is at source frame ``floor(train_fraction * num_source_frames)``, so skipped frames do not
        move it)."""
        if not 0.0 < train_fraction < 1.0:
            raise InputError(f"train_fraction must be between 0 and 1, got {train_fraction}")
        cut = math.floor(train_fraction * self.num_source_frames)
        first = np.flatnonzero(self.frame_indices < cut)
        rest = np.flatnonzero(self.frame_indices >= cut)
        return self.subset(first), self.subset(rest)

    def expressions(self) -> torch.Tensor:
        """``(len, 1434)`` every item's expression input."""
        return torch.from_numpy(expression_input(self._all["points"][self.indices]))

    def median_expression(self) -> torch.Tensor:
        """``(1434,)`` the median expression input of the items (roughly the person's neutral face)."""
        return self.expressions().median(dim=0).values

    # ---- items -------------------------------------------------------------------------------------------
    def _chunk_file(self, chunk: int) -> Any:
        if self._pid != os.getpid():
            self._files, self._pid = OrderedDict(), os.getpid()
        handle = self._files.get(chunk)
        if handle is None:
            handle = np.load(self.root / _chunk_name(chunk))
            self._files[chunk] = handle
            while len(self._files) > 4:
                self._files.popitem(last=False)[1].close()
        else:
            self._files.move_to_end(chunk)
        return handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": OrderedDict()}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range: {len(self)} frames")
        pos = int(self.indices[i])
        loc = self._locs[pos]
        data = self._chunk_file(loc.chunk)
        image = data[f"image_{loc.member:04d}"]
        matte = data[f"matte_{loc.member:04d}"]
        rot = torch.from_numpy(self._all["rotation"][pos].astype(np.float32))
        trans = torch.from_numpy(self._all["translation"][pos].astype(np.float32))
        w2c = torch.eye(4)
        w2c[:3, :3], w2c[:3, 3] = rot, trans
        frame = int(self._all["frame_index"][pos])
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float() / 255.0,
            "mask": torch.from_numpy(matte)[None].float() / 255.0,
            "landmarks": torch.from_numpy(self._all["landmarks"][pos].astype(np.float32)),
            "R": rot, "t": trans, "world_to_camera": w2c, "K": self.K.clone(),
            "expression": torch.from_numpy(expression_input(self._all["points"][pos])),
            "frame_index": torch.tensor(frame), "index": torch.tensor(pos),
            "time": torch.tensor(frame / self.fps),
        }
