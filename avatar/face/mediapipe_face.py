"""Face detection, 478-point mesh, head pose and a foreground matte from the models inside ``mediapipe==0.10.14``.

Everything here runs with **real pretrained weights that install from PyPI** (the ``[face]`` extra), offline,
under the Apache-2.0 licence of MediaPipe: the other face networks of the toolkit need research checkpoints
that must be downloaded and are licensed for non-commercial use only.

Provenance (files inside the ``mediapipe-0.10.14`` wheels, read through MediaPipe's legacy "solutions" API,
which loads them from the installed package and never downloads anything; later MediaPipe releases fetch their
models at run time and are not supported here):

=====================  =======================================================================  ==============
what                   file in the wheel (``mediapipe/modules/...``)                             SHA-256 prefix
=====================  =======================================================================  ==============
face detection         ``face_detection/face_detection_full_range_sparse.tflite`` (BlazeFace,     ``2c3728e6``
                       full range: faces up to about 5 m, ``model_selection=1``) and
                       ``face_detection/face_detection_short_range.tflite`` (close-ups, within   ``bbff11ce``
                       about 2 m, ``model_selection=0``)
face mesh with iris    ``face_landmark/face_landmark_with_attention.tflite`` (468 points + 10     ``e06a804e``
                       iris points, ``refine_landmarks=True``); its own ROI detector is
                       ``face_detection/face_detection_short_range.tflite``                       ``bbff11ce``
selfie segmentation    ``selfie_segmentation/selfie_segmentation.tflite`` (256x256 general       ``9ee168ec``
                       model, ``model_selection=0``)
=====================  =======================================================================  ==============

The canonical face model for the head pose is not in the wheel. Its 468 vertices and the 33 weighted
"Procrustes basis" landmarks are taken from MediaPipe's ``mediapipe/modules/face_geometry/data/
canonical_face_model.obj`` and ``geometry_pipeline_metadata_landmarks.pbtxt`` (Apache-2.0; read from the
mirror ``jim-jiang-github/mediapipe`` @ 0242147) and stored as data in ``avatar/face/data/
mediapipe_canonical_face.npz`` (float32, centimetres; x to the image's right, y up, z towards the viewer).

Choices of this module (MediaPipe leaves them to the caller):

* **Detection** runs both detectors and merges their faces (greedy non-maximum suppression at IoU
  ``DETECTION_MERGE_IOU`` = 0.3, the higher score kept): the full-range model alone misses some close-ups (3 of
  the 60 portraits of ``../shared/media``, among them 2 official 512 aligned crops), the short-range one small
  faces. It keeps every face above ``min_confidence`` (0.5, MediaPipe's default) and sorts them by the official
  size measure (mean of box width and height), largest first, as :class:`~avatar.face.retinaface.RetinaFace`
  does. Boxes are clipped to the image.
* **Mesh**: for each detected box the image is cropped to a square of side ``MESH_CROP_SCALE`` (2.0) times the
  box's larger side around its centre (zero padding outside the image; downscaled to at most 512 pixels), so
  that MediaPipe's own short-range ROI detector sees a large face; of the meshes found in the crop the one
  whose centre is nearest the box centre is kept. Points come back in source pixels; ``z`` is MediaPipe's
  relative depth (smaller is nearer the camera) in the same pixel scale as ``x``. A detection without a mesh is
  not a face.
* **The five alignment points** of the Portrait4D crop (the official fit uses WFLW points 96, 97, 54, 76, 82)
  are means of mesh vertices, :data:`MESH_FIVE_POINTS`: the two iris centres 468 and 473 (the WFLW pupils), the
  midpoint of vertex 4 (end of the nose ridge) and vertex 1 (lowest point of the tip) for the nose tip, and the
  outer lip corners 61 and 291. On the 32 official aligned examples the mean distances to the official points
  are 1.7, 1.6, 4.4, 3.8 and 2.6 pixels of 512 (vertex 4 alone: 6.6, vertex 1 alone: 7.2, for the nose); the
  least-squares weight of vertex 1 against vertex 4 on those examples is 0.47, rounded to one half.
* **Head pose**: weighted orthogonal Procrustes with scale (Umeyama 1991) of the 33 basis landmarks of the
  canonical model onto the mesh, in a camera frame with x to the image's right, y up and z towards the viewer
  (the mesh's ``y`` and ``z`` negated). The fitted ``R = R_z(roll) @ R_y(yaw) @ R_x(pitch)`` gives the angles in
  degrees: **yaw > 0** the face turns towards the image's right (the subject's left), **pitch > 0** the face
  tilts down, **roll > 0** the face rotates counter-clockwise on screen. ``scale`` is pixels per canonical
  centimetre (weak perspective: MediaPipe's perspective camera model is not used).
* **Matte**: the selfie segmentation's person probability at the image's own size (MediaPipe resizes back).

Shapes: images are ``(H, W, 3)`` uint8 RGB; boxes ``(4,)`` ``x1, y1, x2, y2``; meshes ``(478, 3)`` float32.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar.errors import InputError, MissingDependencyError
from avatar.face.retinaface import DetectedFace

__all__ = [
    "MEDIAPIPE_VERSION",
    "MESH_FIVE_POINTS",
    "CanonicalFace",
    "HeadPoseEstimate",
    "MediaPipeFaceBackend",
    "canonical_face",
    "five_points_from_mesh",
    "head_pose_from_mesh",
    "mediapipe_available",
    "rotation_from_angles",
]

logger = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.14"
"""The one MediaPipe release supported: the last whose wheels bundle the face models."""

INSTALL_HINT = ('pip install "avatar4d[face]" (mediapipe==0.10.14, Python 3.9 to 3.12; later mediapipe '
                "releases download their models at run time)")

MESH_FIVE_POINTS: tuple[tuple[int, ...], ...] = ((468,), (473,), (1, 4), (61,), (291,))
"""Mesh vertices averaged into each of the five alignment points, in the official order: image-left eye centre,
image-right eye centre, nose tip, image-left and image-right mouth corners (see the module docstring)."""

DETECTION_MERGE_IOU = 0.3
"""Faces of the two detectors that overlap more than this are one face."""

MESH_CROP_SCALE = 2.0
"""Side of the square crop the mesh model is run on, in units of the detected box's larger side."""

MESH_CROP_MAX_SIDE = 512
"""Crops larger than this are downscaled (area interpolation) before MediaPipe sees them."""

NUM_MESH_POINTS = 478

_CANONICAL_FILE = Path(__file__).with_name("data") / "mediapipe_canonical_face.npz"


def mediapipe_available() -> bool:
    """Whether ``mediapipe`` can be imported (without importing it)."""
    return importlib.util.find_spec("mediapipe") is not None


@lru_cache(maxsize=1)
def _mediapipe() -> Any:
    """Import MediaPipe once, quietly (its C++ logging and a protobuf deprecation warning), or explain how to
    install it."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    # protobuf 4 warns on every graph run that MediaPipe uses a deprecated call; nothing for users to act on
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp
            from mediapipe.python.solutions import face_detection, face_mesh, selfie_segmentation  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"the mediapipe face backend needs mediapipe: {INSTALL_HINT} ({exc})") from None
    version = getattr(mp, "__version__", "?")
    if version != MEDIAPIPE_VERSION:
        logger.warning("mediapipe %s is installed; the face backend is tested with %s only", version,
                       MEDIAPIPE_VERSION)
    return mp


# ----------------------------------------------------------------------------------------------------------
# geometry on meshes (no MediaPipe needed)


@dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face model (see the module docstring).

    Attributes:
        vertices: ``(468, 3)`` float64, centimetres, x right, y up, z towards the viewer.
        basis_ids: ``(33,)`` vertex indices of the Procrustes basis.
        basis_weights: ``(33,)`` their weights.
    """

    vertices: np.ndarray
    basis_ids: np.ndarray
    basis_weights: np.ndarray


@lru_cache(maxsize=1)
def canonical_face() -> CanonicalFace:
    """The canonical face model shipped with this package."""
    with np.load(_CANONICAL_FILE) as data:
        return CanonicalFace(data["vertices"].astype(np.float64), data["procrustes_ids"].astype(np.int64),
                             data["procrustes_weights"].astype(np.float64))


@dataclass(frozen=True)
class HeadPoseEstimate:
    """The similarity that maps the canonical face onto a mesh (see the module docstring for the conventions).

    Attributes:
        rotation: ``(3, 3)`` ``R``; ``mesh ~ scale * R @ canonical + translation`` in the camera frame.
        yaw, pitch, roll: degrees, ``R = R_z(roll) @ R_y(yaw) @ R_x(pitch)``.
        scale: pixels per canonical centimetre.
        translation: ``(3,)`` in pixels of the camera frame (x right, y up: ``y = -row``).
        residual: weighted RMS distance of the fitted basis points, in pixels.
    """

    rotation: np.ndarray
    yaw: float
    pitch: float
    roll: float
    scale: float
    translation: np.ndarray
    residual: float

    @property
    def angles(self) -> np.ndarray:
        """``(3,)`` ``yaw, pitch, roll`` in degrees."""
        return np.array([self.yaw, self.pitch, self.roll])


def rotation_from_angles(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``R_z(roll) @ R_y(yaw) @ R_x(pitch)`` from degrees (the inverse of the angles of
    :func:`head_pose_from_mesh`)."""
    y, p, r = np.deg2rad([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _umeyama(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted least squares ``target ~ s R source + t`` over proper rotations ``R`` (Umeyama 1991)."""
    w = weights / weights.sum()
    mu_s, mu_t = w @ source, w @ target
    s0, t0 = source - mu_s, target - mu_t
    cov = (t0 * w[:, None]).T @ s0
    u, sing, vt = np.linalg.svd(cov)
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rot = u @ np.diag(d) @ vt
    var_s = float(w @ (s0**2).sum(1))
    scale = float((sing * d).sum() / var_s)
    return rot, scale, mu_t - scale * rot @ mu_s


def head_pose_from_mesh(mesh: np.ndarray) -> HeadPoseEstimate:
    """Head pose of a ``(478 or 468, 3)`` mesh in pixels (MediaPipe's axes: x right, y down, z away from the
    viewer) by a weighted Procrustes fit of the canonical face (module docstring)."""
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.ndim != 2 or mesh.shape[0] < 468 or mesh.shape[1] != 3:
        raise InputError(f"a face mesh is (478, 3) points, got {mesh.shape}")
    canon = canonical_face()
    target = mesh[canon.basis_ids] * np.array([1.0, -1.0, -1.0])
    source = canon.vertices[canon.basis_ids]
    rot, scale, trans = _umeyama(source, target, canon.basis_weights)
    yaw = float(np.degrees(np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0))))
    pitch = float(np.degrees(np.arctan2(rot[2, 1], rot[2, 2])))
    roll = float(np.degrees(np.arctan2(rot[1, 0], rot[0, 0])))
    fitted = scale * source @ rot.T + trans
    w = canon.basis_weights / canon.basis_weights.sum()
    residual = float(np.sqrt(w @ ((fitted - target) ** 2).sum(1)))
    return HeadPoseEstimate(rot, yaw, pitch, roll, scale, trans, residual)


def five_points_from_mesh(mesh: np.ndarray) -> np.ndarray:
    """``(..., 478, >=2)`` mesh points -> ``(..., 5, 2)`` float64 alignment points in the official order."""
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.shape[-2] != NUM_MESH_POINTS:
        raise InputError(f"the five alignment points need the 478-point mesh with iris, got shape {mesh.shape}")
    return np.stack([mesh[..., list(ids), :2].mean(-2) for ids in MESH_FIVE_POINTS], axis=-2)


def _face_size(box: np.ndarray) -> float:
    return float(((box[2] - box[0]) + (box[3] - box[1])) / 2)


# ----------------------------------------------------------------------------------------------------------
# the backend


class MediaPipeFaceBackend:
    """MediaPipe's detector, mesh and selfie segmentation behind one object (module docstring for the steps).

    The MediaPipe graphs are built on first use and reused; calls are serialised by a lock (a graph runs one
    image at a time), so one backend can serve several threads (the app).

    Args:
        min_confidence: detection score threshold (0.5, MediaPipe's default).
        mesh: also run the mesh on every detection (``detect`` then returns only faces with a mesh, with the five
            alignment points from the mesh as ``landmarks`` and the mesh itself as ``mesh``).
    """

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.5, mesh: bool = True) -> None:
        if not 0.0 < min_confidence < 1.0:
            raise InputError(f"min_confidence must be between 0 and 1, got {min_confidence}")
        self.min_confidence = float(min_confidence)
        self.use_mesh = mesh
        self._lock = threading.Lock()
        self._graphs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"MediaPipeFaceBackend(min_confidence={self.min_confidence}, mesh={self.use_mesh})"

    # graphs ------------------------------------------------------------------------------------------
    def _graph(self, kind: str) -> Any:
        graph = self._graphs.get(kind)
        if graph is None:
            sol = _mediapipe().solutions
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind in ("full_range", "short_range"):
                    graph = sol.face_detection.FaceDetection(model_selection=int(kind == "full_range"),
                                                             min_detection_confidence=self.min_confidence)
                elif kind == "mesh":
                    graph = sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2, refine_landmarks=True,
                                                   min_detection_confidence=0.5)
                else:
                    graph = sol.selfie_segmentation.SelfieSegmentation(model_selection=0)
            self._graphs[kind] = graph
        return graph

    def close(self) -> None:
        """Free the MediaPipe graphs (they are rebuilt on the next call)."""
        with self._lock:
            for graph in self._graphs.values():
                graph.close()
            self._graphs.clear()

    def __getstate__(self) -> dict[str, Any]:  # graphs and locks do not pickle (and need not be copied)
        return {"min_confidence": self.min_confidence, "use_mesh": self.use_mesh}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["min_confidence"], state["use_mesh"])  # type: ignore[misc]

    # detection ----------------------------------------------------------------------------------------
    def detect_boxes(self, image: np.ndarray) -> list[DetectedFace]:
        """Every face the detector finds, largest first; ``landmarks`` are its six keypoints ``(6, 2)``
        (MediaPipe's order: the subject's right eye, left eye, nose tip, mouth centre, right and left ear)."""
        image = _rgb(image)
        h, w = image.shape[:2]
        with self._lock:
            detections = [d for kind in ("full_range", "short_range")
                          for d in (self._graph(kind).process(image).detections or [])]
        faces: list[DetectedFace] = []
        for det in detections:
            rel = det.location_data.relative_bounding_box
            box = np.array([rel.xmin * w, rel.ymin * h, (rel.xmin + rel.width) * w, (rel.ymin + rel.height) * h],
                           dtype=np.float32)
            box = np.clip(box, 0, [w, h, w, h]).astype(np.float32)
            keypoints = np.array([[k.x * w, k.y * h] for k in det.location_data.relative_keypoints],
                                 dtype=np.float32).reshape(-1, 2)
            if box[2] - box[0] > 1 and box[3] - box[1] > 1:
                faces.append(DetectedFace(box, float(det.score[0]), keypoints))
        kept: list[DetectedFace] = []
        for face in sorted(faces, key=lambda f: -f.score):
            if all(_iou(face.box, k.box) <= DETECTION_MERGE_IOU for k in kept):
                kept.append(face)
        return sorted(kept, key=lambda f: -f.size)

    def mesh(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """The ``(478, 3)`` float32 mesh of the face in ``box`` (source pixels), or ``None`` if the mesh model
        finds no face there."""
        image = _rgb(image)
        box = np.asarray(box, dtype=np.float64)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * MESH_CROP_SCALE
        x0, y0 = cx - side / 2, cy - side / 2
        out = min(int(round(side)), MESH_CROP_MAX_SIDE)
        if out < 8:
            return None
        k = out / side  # source pixels -> crop pixels
        affine = np.array([[k, 0, -k * x0], [0, k, -k * y0]])
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(image, affine, (out, out), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        with self._lock:
            result = self._graph("mesh").process(crop)
        if not result.multi_face_landmarks:
            return None
        meshes = [np.array([[p.x, p.y, p.z] for p in lm.landmark], dtype=np.float64) * out
                  for lm in result.multi_face_landmarks]
        centre = np.array([out / 2, out / 2])
        best = min(meshes, key=lambda m: float(np.linalg.norm(m[:, :2].mean(0) - centre)))
        points = best / k
        points[:, 0] += x0
        points[:, 1] += y0
        return points.astype(np.float32)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces of one image, largest first. With ``mesh=True`` (default) each face carries its mesh and the
        five alignment points as ``landmarks``; detections where the mesh model sees no face are dropped."""
        faces = self.detect_boxes(image)
        if not self.use_mesh:
            return faces
        out = []
        for face in faces:
            mesh = self.mesh(image, face.box)
            if mesh is not None:
                five = five_points_from_mesh(mesh).astype(np.float32)
                out.append(DetectedFace(face.box, face.score, five, mesh))
        return out

    def detect_batch(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """:meth:`detect` of each image (MediaPipe runs one image at a time)."""
        return [self.detect(im) for im in images]

    # matte ------------------------------------------------------------------------------------------
    def matte(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 person probability in ``[0, 1]`` from the selfie segmentation."""
        image = _rgb(image)
        with self._lock:
            result = self._graph("selfie").process(image)
        mask = np.asarray(result.segmentation_mask, dtype=np.float32)
        return np.clip(mask, 0.0, 1.0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
    return np.ascontiguousarray(arr)
