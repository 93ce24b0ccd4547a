"""In-memory records shared by every on-disk format: a clip of video frames, one image, the GenHead renders of one
subject (frames x views, official offline v1 data); the label layout; codecs.

A record keeps its frames as they are stored (raw ``uint8`` arrays for the official VFHQ LMDB, encoded PNG/JPEG
bytes for the FFHQ LMDB and for our Parquet shards) and decodes one frame when asked, so that a dataset that needs
two frames of a fifty-frame clip decodes two.

Label layout (437 float32 per frame, ``portrait4d-training.md`` 3.2): camera 0:25 (cam2world 16 + normalised
intrinsics 9), shape 25:325, expression 325:425, pose 425:431 (neck/head rotation vector 425:428 + jaw 428:431),
eye poses 431:437. Motions: the PD-FGC embedding ``cat(eye 6, emotion 30, mouth 512)`` = 548 floats (3.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from train.data.errors import TrainDataError

__all__ = [
    "CAMERA", "EXPRESSION", "EYE_POSE", "HEAD_ROTATION", "IMAGE_FORMATS", "JAW_POSE", "LABEL_DIM", "MOTION_DIM",
    "POSE", "RENDER_SIZE", "SHAPE", "TRIPLANE_CHANNELS", "VIEWS_PER_FRAME", "ClipRecord", "GenHead4DRecord",
    "ImageRecord", "decode_image", "decode_seg", "encode_image", "encode_seg",
]

LABEL_DIM = 437
MOTION_DIM = 548
CAMERA = slice(0, 25)
SHAPE = slice(25, 325)
EXPRESSION = slice(325, 425)
POSE = slice(425, 431)
HEAD_ROTATION = slice(425, 428)
JAW_POSE = slice(428, 431)
EYE_POSE = slice(431, 437)

VIEWS_PER_FRAME = 5
"""Views (cameras) GenHead renders per frame (expression) in the official offline v1 data: ``num // 5`` frames."""
RENDER_SIZE = 64
"""Side of the official GenHead depth, feature, rendered-seg and background maps (GenHead's raw 64 x 64 render)."""
TRIPLANE_CHANNELS = 32
"""Features per sampled point of the official triplane targets: rows of 3 + 32 = 35 float16 (xyz, features)."""

IMAGE_FORMATS = ("png", "jpeg")
"""How frames are encoded in our Parquet shards (``png``: lossless, the default)."""

PNG_COMPRESSION = 3
"""cv2 PNG level. On the 32 official aligned 512 crops: 339 kB a frame at level 3 against 319 kB at level 9 (6 %
more) for a tenth of the encoding time (31 against 335 ms on one core); decoding takes the same."""


def encode_image(rgb: np.ndarray, image_format: str = "png", quality: int = 95) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> PNG (lossless) or JPEG bytes."""
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
    bgr = np.ascontiguousarray(arr[:, :, ::-1])
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    elif image_format == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not ok:  # pragma: no cover - cv2 encodes any uint8 array
        raise RuntimeError("cv2 could not encode the image")
    return buf.tobytes()


def encode_seg(seg: np.ndarray) -> bytes:
    """A ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 matte -> PNG bytes (always lossless: a matte's edges
    are what the segmentation loss looks at)."""
    arr = np.asarray(seg)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) uint8 segmentation, got {arr.shape} {arr.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:  # pragma: no cover
        raise RuntimeError("cv2 could not encode the segmentation")
    return buf.tobytes()


def _decode(data: bytes | memoryview, flags: int, what: str, where: str, path: str | None, key: str | None,
            ) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, flags) if buf.size else None
    if image is None:
        raise TrainDataError(f"{where}: the {what} ({buf.size} bytes) is not an image file OpenCV can decode "
                             "(corrupt or truncated record)", path, key)
    return image


def decode_image(data: bytes | memoryview, where: str = "record", path: str | None = None,
                 key: str | None = None) -> np.ndarray:
    """Encoded PNG/JPEG -> ``(H, W, 3)`` uint8 RGB (``cv2.imdecode`` in colour, BGR -> RGB, as the official
    ``PortraitSynthesisSegLmdbFolderDatasetV2``). ``where``, ``path``, ``key`` name the record in errors."""
    return np.ascontiguousarray(_decode(data, cv2.IMREAD_COLOR, "image", where, path, key)[:, :, ::-1])


def decode_seg(data: bytes | memoryview, where: str = "record", path: str | None = None,
               key: str | None = None) -> np.ndarray:
    """Encoded segmentation -> ``(H, W, 3)`` uint8: ``cv2.imdecode`` in colour as the official loader (a grey
    PNG comes back with its value in the three channels; a colour one in OpenCV's BGR order, unswapped)."""
    return _decode(data, cv2.IMREAD_COLOR, "segmentation", where, path, key)


def _tile3(seg: np.ndarray) -> np.ndarray:
    if seg.ndim == 2:
        seg = seg[:, :, None]
    if seg.shape[2] == 1:
        seg = np.repeat(seg, 3, axis=2)
    return seg


@dataclass
class ClipRecord:
    """One clip: ``num_frames`` frames of one video with their labels and motions.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB, or N encoded PNG/JPEG images.
        segs: ``(N, H, W)`` / ``(N, H, W, C)`` uint8 mattes, or N encoded images.
        labels: ``(N, 437)`` float32 (layout in the module docstring), every frame of the clip.
        motions: ``(N, D)`` float32 (D = 548 for the official PD-FGC embedding).
        height, width: frame size.
        where: names the record in error messages (file and key / row).
        clip_id: a name for the clip (our Parquet shards; ``None`` for LMDB records).
        source_frames: index of each frame in its source video, when known.
        path, key: the file and the record (LMDB key or shard row), for :class:`TrainDataError`.
    """

    images: np.ndarray | Sequence[bytes]
    segs: np.ndarray | Sequence[bytes]
    labels: np.ndarray
    motions: np.ndarray
    height: int
    width: int
    where: str = "record"
    clip_id: str | None = None
    source_frames: np.ndarray | None = field(default=None)
    path: str | None = None
    key: str | None = None

    @property
    def num_frames(self) -> int:
        return int(self.labels.shape[0])

    def image(self, k: int) -> np.ndarray:
        """Frame ``k`` as ``(H, W, 3)`` uint8 RGB (a view for raw records: copy before changing it)."""
        if isinstance(self.images, np.ndarray):
            return self.images[k]
        image = decode_image(self.images[k], f"{self.where}, frame {k}", self.path, self.key)
        self._check_size(image, k, "frame")
        return image

    def seg(self, k: int) -> np.ndarray:
        """Segmentation of frame ``k`` as ``(H, W, 3)`` uint8 (one channel is tiled to three, as upstream)."""
        if isinstance(self.segs, np.ndarray):
            return _tile3(self.segs[k])
        seg = decode_seg(self.segs[k], f"{self.where}, segmentation {k}", self.path, self.key)
        self._check_size(seg, k, "segmentation")
        return seg

    def _check_size(self, image: np.ndarray, k: int, what: str) -> None:
        if image.shape[:2] != (self.height, self.width):
            raise TrainDataError(f"{self.where}: {what} {k} is {image.shape[1]}x{image.shape[0]} but the record says "
                                 f"{self.width}x{self.height}", self.path, self.key)


@dataclass
class ImageRecord:
    """One image (the FFHQ / GenHead data): encoded image and segmentation, one label, one motion.

    Attributes:
        image: encoded PNG/JPEG bytes (or an ``(H, W, 3)`` uint8 RGB array).
        seg: encoded PNG bytes (or an ``(H, W[, C])`` uint8 array).
        label: ``(437,)`` float32.
        motion: ``(D,)`` float32.
        height, width: image size as the record states it (0: unknown, not checked).
    """

    image: bytes | np.ndarray
    seg: bytes | np.ndarray
    label: np.ndarray
    motion: np.ndarray
    height: int = 0
    width: int = 0
    where: str = "record"
    image_id: str | None = None
    path: str | None = None
    key: str | None = None

    def decode_image(self) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        image = (self.image if isinstance(self.image, np.ndarray)
                 else decode_image(self.image, self.where, self.path, self.key))
        self._check_size(image, "image")
        return image

    def decode_seg(self) -> np.ndarray:
        """``(H, W, 3)`` uint8."""
        seg = (_tile3(self.seg) if isinstance(self.seg, np.ndarray)
               else decode_seg(self.seg, self.where, self.path, self.key))
        self._check_size(seg, "segmentation")
        return seg

    def _check_size(self, image: np.ndarray, what: str) -> None:
        if self.height and self.width and image.shape[:2] != (self.height, self.width):
            raise TrainDataError(f"{self.where}: the {what} is {image.shape[1]}x{image.shape[0]} but the record says "
                                 f"{self.width}x{self.height}", self.path, self.key)


@dataclass
class GenHead4DRecord:
    """GenHead's renders of one subject: ``num_frames`` frames (expressions) x :data:`VIEWS_PER_FRAME` views
    (cameras) with v1's distillation targets (the official ``Datum_new``, read by
    ``GenHeadReconSegLmdbFolderDatasetV2New``). Arrays are as stored (views into the LMDB map or copies).

    Attributes:
        images: ``(F, 5, H, W, 3)`` uint8 RGB.
        segs: ``(F, 5, H, W, C)`` uint8 mattes (C 1 or 3).
        segs_render: ``(F, 5, 64, 64, C)`` uint8: GenHead's own matte at its raw resolution (C 1 or 3).
        depths: ``(F, 5, 64, 64, C)`` float16 raw depth; ``features``: ``(F, 5, 64, 64, C)`` float16 feature
            images before the super-resolution (32 channels upstream).
        triplanes: ``(F, P)`` float16: per frame, the sampled points' rows of xyz + plane features, flattened
            (:meth:`triplane` reshapes them).
        labels: ``(F, 5, 437)`` float32 (layout in the module docstring); ``motions``: ``(F, 5, D)`` float32.
        background: ``(64, 64, C)`` float16, GenHead's background feature image (one per subject).
        height, width: image size; ``where``, ``path``, ``key``: the record, for :class:`TrainDataError`.
    """

    images: np.ndarray
    segs: np.ndarray
    segs_render: np.ndarray
    depths: np.ndarray
    features: np.ndarray
    triplanes: np.ndarray
    labels: np.ndarray
    motions: np.ndarray
    background: np.ndarray
    height: int
    width: int
    where: str = "record"
    path: str | None = None
    key: str | None = None

    @property
    def num_frames(self) -> int:
        return int(self.labels.shape[0])

    def image(self, frame: int, view: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB (a view: copy before changing it)."""
        return self.images[frame, view]

    def seg(self, frame: int, view: int) -> np.ndarray:
        """``(H, W, 3)`` uint8 (one channel tiled to three, as upstream)."""
        return _tile3(self.segs[frame, view])

    def seg_render(self, frame: int, view: int) -> np.ndarray:
        """``(64, 64, 3)`` uint8 (one channel tiled to three, as upstream)."""
        return _tile3(self.segs_render[frame, view])

    def triplane(self, frame: int, channels: int = TRIPLANE_CHANNELS) -> np.ndarray:
        """The triplane targets of ``frame``: ``(N, 3 + channels)`` float16 rows (upstream ``reshape(-1, 35)``)."""
        flat = self.triplanes[frame]
        width = 3 + int(channels)
        if flat.size % width:
            raise TrainDataError(f"{self.where}: 'triplanes' holds {flat.size} float16 per frame, not a whole number "
                                 f"of rows of {width} (xyz + {channels} plane features)", self.path, self.key)
        return flat.reshape(-1, width)
