"""Multi-view training data of the Gaussian parametric head model (GPHM): NeRSemble captures and the synthetic
multi-view renders of GenHead (``python -m train.synthesize``), as PyTorch datasets with one item per (frame,
camera) image.

Every item is a dict of:

===================  ========================================================================================
``image``            ``(3, H, W)`` float32 RGB in ``[0, 1]``
``mask``             ``(1, H, W)`` float32 foreground in ``[0, 1]`` (all ones when the dataset has no matte;
                     ``has_mask`` says which)
``K``                ``(3, 3)`` float32 pinhole intrinsics in pixels of this image (pixel centres at ``i + 0.5``,
                     the convention of gsplat and of :mod:`avatar.render.rays`)
``world_to_camera``  ``(4, 4)`` float32, OpenCV camera (``x`` right, ``y`` down, looking along ``+z``)
``head_pose``        ``(4, 4)`` float32 similarity from the head's canonical (model) space to the world,
                     ``X_world = s R X + t`` (identity where the head pose lives in the camera)
``identity``         int64 index of the person (:attr:`identities` names them)
``expression``       float32 expression input, FLAME ``cat(expression 100, jaw 3, eyes 6)`` = 109 values
                     (empty ``(0,)`` for NeRSemble sequences without tracking, ``expression='none'``)
``frame_id``         str naming the image (participant/sequence/frame/camera, or clip/frame)
===================  ========================================================================================

plus ``has_mask`` (bool), ``view`` (int64 camera index) and, for the synthetic data, ``motion`` (its PD-FGC
embedding). GPHM's own expression encoder reads face images, which ``image`` provides.

**NeRSemble** (:class:`NeRSembleDataset`; Kirschstein et al. 2023). The capture is not redistributable (it is
requested from the authors), so it is read in place, in either of its two published layouts:

* v1, as the ``NeRSembleDataManager`` of ``tobias-kirschstein/nersemble``
  (``src/nersemble/data_manager/multi_view_data.py``) documents it::

      ROOT/<pid:03d>/camera_params.json
      ROOT/<pid>/sequences/<SEQ>/frame_<t:05d>/images-2x/cam_<serial>.png|jpg   (or images/, images-2x-73fps/)
      ROOT/<pid>/sequences/<SEQ>/frame_<t:05d>/alpha_map/cam_<serial>.png       (optional; or alpha_map-73fps/)

* v2, the download tool of ``tobias-kirschstein/nersemble-data`` (``constants.ASSETS``: ``<pid>/calibration/
  camera_params.json``, ``<pid>/sequences/<SEQ>/images/cam_<serial>.mp4``) and the FLAME tracking of
  ``tobias-kirschstein/nersemble-benchmark`` (``<pid>/sequences/<SEQ>/tracking/flame2023_tracking.npz``),
  with each video's frames extracted to a folder of the same name (``ffmpeg -i cam_X.mp4 -start_number 0
  cam_X/frame_%05d.png``; decoding video per item would be far too slow for training)::

      ROOT/<pid:03d>/calibration/camera_params.json
      ROOT/<pid>/sequences/<SEQ>/images/cam_<serial>/frame_<t:05d>.png|jpg
      ROOT/<pid>/sequences/<SEQ>/alpha_maps/cam_<serial>/frame_<t:05d>.png|jpg   (optional)
      ROOT/<pid>/sequences/<SEQ>/tracking/flame2023_tracking.npz                  (optional)

``camera_params.json`` holds ``world_2_cam`` (per camera serial a 4x4 world-to-camera matrix in the OpenCV
convention, as both repositories' loaders declare) and ``intrinsics`` (one 3x3 matrix shared by the cameras,
or one per serial), for the full-resolution images (``calibration_size``, 2200 x 3208 pixels, width x height:
the cameras stand upright); images of another size (``images-2x`` is half) get ``K`` scaled by their width
ratio (the height ratio must agree). The tracking file (keys ``shape (1, 300)``, ``expression (T, 100)``,
``jaw (T, 3)``, ``eyes (T, 6)``, ``rotation_matrices (T, 3, 3)``, ``translation (T, 3)``, ``scale (1, 1)``,
``frames (T,)``) gives the expression input and ``head_pose`` (``model_to_world`` of its ``FlameProvider``:
``scale * R`` and ``translation``), row ``frames == t`` for timestep ``t``. World units are metres.

By default every image is cropped to a centred square of side ``min(W, H)`` and resized to ``resolution``
(512, GPHM's: "we resize the images to 512 resolution and adjust the camera parameters"), with ``K`` adjusted;
``resolution=None`` keeps the images as they are.

**Synthetic GenHead renders** (:class:`SyntheticMultiViewDataset`): the Parquet ``clips`` dataset of
:mod:`train.synthesize` (:mod:`train.data.parquet_format`). Row ``i`` (clip ``id-<seed>``, identity ``i`` in
sorted shard order) holds ``E V`` frames, expression-major: frame ``k`` shows expression ``k // V`` from
camera ``k % V`` (``V`` = the shard's ``views`` setting). Its 437-float label gives the camera (``cam2world``
in the Portrait4D OpenGL convention, ``y`` up, looking down ``-z``, and intrinsics normalised by the image
size): ``world_to_camera = diag(1, -1, -1, 1) inverse(cam2world)``, ``K = diag(W, H, 1) K_normalised``. The head
pose is in the camera (the neck rotation is zero), so ``head_pose`` is the identity; the world is Portrait4D's,
FLAME units times 3 (``world_scale=1/3`` gives FLAME's metres, as NeRSemble's tracking).

:func:`open_gphm_data` picks the reader from the folder's layout.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from avatar.errors import InputError, InputNotFoundError, UnknownOptionValueError
from train.data.errors import TrainDataError
from train.data.records import EXPRESSION, EYE_POSE, JAW_POSE, decode_image, decode_seg

__all__ = ["CALIBRATION_SIZE", "FLAME_EXPRESSION_DIM", "NeRSembleDataset", "SyntheticMultiViewDataset",
           "gl_to_cv_world_to_camera", "open_gphm_data"]

logger = logging.getLogger(__name__)

CALIBRATION_SIZE = (2200, 3208)
"""Width and height of the full-resolution NeRSemble images, for which ``camera_params.json`` is given."""
FLAME_EXPRESSION_DIM = 109
"""FLAME ``cat(expression 100, jaw 3, eyes 6)``."""
V1_IMAGE_DIRS = ("images-2x", "images", "images-2x-73fps")
V1_ALPHA_DIRS = ("alpha_map", "alpha_map-73fps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
EXPRESSION_MODES = ("auto", "flame", "none")
_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
_CAM = re.compile(r"cam_(\w+?)$")
_FRAME = re.compile(r"frame_(\d+)$")


def gl_to_cv_world_to_camera(cam2world_gl: np.ndarray) -> np.ndarray:
    """A ``(..., 4, 4)`` cam2world of the Portrait4D/OpenGL convention (``y`` up, looking down ``-z``) -> the
    OpenCV world-to-camera matrix ``diag(1, -1, -1, 1) inverse(cam2world)``."""
    return _GL_TO_CV @ np.linalg.inv(np.asarray(cam2world_gl, dtype=np.float64))


def _square_resize(image: np.ndarray, k: np.ndarray, resolution: int | None, interp: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Centred square crop of side ``min(H, W)`` resized to ``resolution``, with ``K`` adjusted (pixel centres
    at ``i + 0.5``: cropping shifts the principal point, resizing scales the whole first two rows)."""
    if resolution is None:
        return image, k
    h, w = image.shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    image = image[y0:y0 + side, x0:x0 + side]
    k = k.copy()
    k[0, 2] -= x0
    k[1, 2] -= y0
    if side != resolution:
        flag = cv2.INTER_AREA if side > resolution else interp
        image = cv2.resize(image, (resolution, resolution), interpolation=flag)
        k[:2] *= resolution / side
    return image, k


def _item(image: np.ndarray, mask: np.ndarray | None, k: np.ndarray, w2c: np.ndarray, head: np.ndarray,
          identity: int, expression: np.ndarray, frame_id: str, view: int) -> dict[str, Any]:
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if mask is None:
        m = torch.ones(1, *img.shape[1:])
    else:
        m = torch.from_numpy(np.ascontiguousarray(mask))[None].float() / 255.0
    return {"image": img, "mask": m, "has_mask": torch.tensor(mask is not None),
            "K": torch.from_numpy(k.astype(np.float32)), "world_to_camera": torch.from_numpy(w2c.astype(np.float32)),
            "head_pose": torch.from_numpy(head.astype(np.float32)), "identity": torch.tensor(identity),
            "expression": torch.from_numpy(np.asarray(expression, dtype=np.float32)), "frame_id": frame_id,
            "view": torch.tensor(view)}


def _read_rgb(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise TrainDataError(f"{path} is not an image OpenCV can decode (corrupt or truncated)", path)
    return np.ascontiguousarray(image[:, :, ::-1])


def _read_grey(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise TrainDataError(f"{path} is not an image OpenCV can decode (corrupt or truncated)", path)
    if image.ndim == 3:
        image = image[:, :, 0] if image.shape[2] < 3 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    return image


# ----------------------------------------------------------------------------------------------------------
# NeRSemble


@dataclass(frozen=True)
class _NeRSembleImage:
    participant: int
    sequence: str
    timestep: int
    serial: str
    image: Path
    alpha: Path | None


@dataclass
class _Participant:
    world_2_cam: dict[str, np.ndarray]
    intrinsics: dict[str, np.ndarray] | np.ndarray


@dataclass
class _Tracking:
    expression: np.ndarray
    head_pose: np.ndarray
    rows: dict[int, int]


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None


class NeRSembleDataset(torch.utils.data.Dataset):
    """NeRSemble images, one item per (participant, sequence, timestep, camera) (module docstring for the
    layouts and the items).

    Args:
        root: the NeRSemble folder (participants ``017``, ``018``, ... under it).
        participants, sequences, cameras: keep only these participant ids, sequence names and camera serials
            (``None``: all found).
        resolution: side of the square crop the images are resized to (``None``: as stored).
        frame_step: keep the timesteps that are multiples of this.
        expression: ``'flame'`` (the tracking's 109 values; every sequence needs a tracking file), ``'none'``
            (empty), ``'auto'`` (``'flame'`` when every sequence has tracking, else ``'none'``).
        calibration_size: ``(width, height)`` of the images the calibration's intrinsics are for.

    Raises:
        InputNotFoundError: ``root`` does not exist.
        TrainDataError: no participant with a calibration and images, a calibration without a camera that has
            images, unreadable JSON, or a tracking file without a timestep that has images.
    """

    def __init__(self, root: str | Path, *, participants: list[int] | None = None,
                 sequences: list[str] | None = None, cameras: list[str] | None = None, resolution: int | None = 512,
                 frame_step: int = 1, expression: str = "auto",
                 calibration_size: tuple[int, int] = CALIBRATION_SIZE) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputNotFoundError(f"{self.root} is not a folder; give the NeRSemble folder (participants 017, "
                                     "018, ... in it)")
        if expression not in EXPRESSION_MODES:
            raise UnknownOptionValueError(f"expression must be one of {EXPRESSION_MODES}, got {expression!r}")
        if frame_step < 1:
            raise InputError(f"frame_step must be at least 1, got {frame_step}")
        self.resolution, self.calibration_size = resolution, tuple(calibration_size)
        self._participants: dict[int, _Participant] = {}
        self._tracking: dict[tuple[int, str], _Tracking | None] = {}
        self.items: list[_NeRSembleImage] = []
        pids = sorted(int(p.name) for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        for pid in pids:
            if participants is not None and pid not in participants:
                continue
            folder = self.root / f"{pid:03d}" if (self.root / f"{pid:03d}").is_dir() else self.root / str(pid)
            calib = next((p for p in (folder / "camera_params.json", folder / "calibration" / "camera_params.json")
                          if p.is_file()), None)
            if calib is None:
                logger.warning("%s has no camera_params.json (nor calibration/camera_params.json); skipped", folder)
                continue
            self._participants[pid] = self._load_calibration(calib)
            seq_root = folder / "sequences"
            for seq in sorted(p.name for p in seq_root.iterdir() if p.is_dir()) if seq_root.is_dir() else []:
                if sequences is not None and seq not in sequences:
                    continue
                found = self._scan_sequence(pid, seq_root / seq, cameras, frame_step)
                if found:
                    self.items += found
                    self._tracking[(pid, seq)] = self._load_tracking(seq_root / seq / "tracking" /
                                                                     "flame2023_tracking.npz")
        if not self.items:
            raise TrainDataError(f"{self.root} holds no NeRSemble images in a known layout (see "
                                 "train.data.gphm: <pid>/sequences/<SEQ>/frame_<t>/images-2x/cam_<serial>.png or "
                                 "<pid>/sequences/<SEQ>/images/cam_<serial>/frame_<t>.png, with camera_params.json)",
                                 self.root)
        self.identities = sorted({it.participant for it in self.items})
        self._identity = {pid: i for i, pid in enumerate(self.identities)}
        self.cameras = sorted({it.serial for it in self.items})
        tracked = [t is not None for t in self._tracking.values()]
        if expression == "flame" and not all(tracked):
            missing = [f"{p:03d}/{s}" for (p, s), t in self._tracking.items() if t is None]
            raise TrainDataError(f"expression='flame' needs tracking/flame2023_tracking.npz in every sequence; "
                                 f"{len(missing)} have none ({', '.join(missing[:5])})", self.root)
        self.expression_mode = "flame" if all(tracked) and expression != "none" else "none"
        if expression == "auto" and self.expression_mode == "none" and any(tracked):
            logger.warning("some NeRSemble sequences have no FLAME tracking: the expression input is left empty")
        if self.expression_mode == "flame":  # only timesteps the tracking covers
            self.items = [it for it in self.items if it.timestep in self._tracking[(it.participant, it.sequence)].rows]
            if not self.items:
                raise TrainDataError(f"{self.root}: the FLAME tracking covers none of the timesteps with images",
                                     self.root)

    @staticmethod
    def _load_calibration(path: Path) -> _Participant:
        try:
            data = json.loads(path.read_text())
            w2c = {str(s): np.asarray(m, dtype=np.float64).reshape(4, 4) for s, m in data["world_2_cam"].items()}
            intr = data["intrinsics"]
            intrinsics = ({str(s): np.asarray(m, dtype=np.float64).reshape(3, 3) for s, m in intr.items()}
                          if isinstance(intr, dict) else np.asarray(intr, dtype=np.float64).reshape(3, 3))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainDataError(f"{path} is not a NeRSemble camera_params.json (world_2_cam and intrinsics): "
                                 f"{type(exc).__name__}: {exc}", path) from None
        return _Participant(w2c, intrinsics)

    @staticmethod
    def _load_tracking(path: Path) -> _Tracking | None:
        if not path.is_file():
            return None
        try:
            with np.load(path) as d:
                expr = np.concatenate([d["expression"], d["jaw"], d["eyes"]], axis=1).astype(np.float32)
                rot = d["rotation_matrices"].astype(np.float64)
                trans = d["translation"].astype(np.float64)
                scale = float(np.asarray(d["scale"]).reshape(-1)[0]) if "scale" in d.files else 1.0
                frames = d["frames"].astype(np.int64).reshape(-1) if "frames" in d.files else np.arange(len(expr))
        except (OSError, ValueError, KeyError) as exc:
            raise TrainDataError(f"{path} is not a NeRSemble FLAME tracking file: {type(exc).__name__}: {exc}",
                                 path) from None
        head = np.tile(np.eye(4), (len(expr), 1, 1))
        head[:, :3, :3] = scale * rot
        head[:, :3, 3] = trans
        return _Tracking(expr, head, {int(t): i for i, t in enumerate(frames)})

    def _scan_sequence(self, pid: int, seq: Path, cameras: list[str] | None, step: int) -> list[_NeRSembleImage]:
        known = self._participants[pid].world_2_cam
        found: list[_NeRSembleImage] = []

        def keep(serial: str) -> bool:
            return serial in known and (cameras is None or serial in cameras)

        timestep_dirs = sorted((int(m.group(1)), p) for p in seq.iterdir() if p.is_dir()
                               and (m := _FRAME.match(p.name)))
        if timestep_dirs:  # v1: frame_<t>/images-2x/cam_<serial>.png
            for t, tdir in timestep_dirs:
                if t % step:
                    continue
                images = next((tdir / d for d in V1_IMAGE_DIRS if (tdir / d).is_dir()), None)
                alphas = next((tdir / d for d in V1_ALPHA_DIRS if (tdir / d).is_dir()), None)
                if images is None:
                    continue
                for path in sorted(images.iterdir()):
                    m = _CAM.match(path.stem)
                    if m and path.suffix.lower() in IMAGE_SUFFIXES and keep(m.group(1)):
                        alpha = _find_image(alphas, path.stem) if alphas is not None else None
                        found.append(_NeRSembleImage(pid, seq.name, t, m.group(1), path, alpha))
            return found
        images = seq / "images"
        if not images.is_dir():
            return found
        for cam_dir in sorted(p for p in images.iterdir() if p.is_dir()):  # v2: images/cam_<serial>/frame_<t>
            m = _CAM.match(cam_dir.name)
            if not m or not keep(m.group(1)):
                continue
            frames = sorted((int(f.group(1)), p) for p in cam_dir.iterdir()
                            if p.suffix.lower() in IMAGE_SUFFIXES and (f := _FRAME.match(p.stem)))
            alphas = seq / "alpha_maps" / cam_dir.name
            for t, path in frames:
                if t % step:
                    continue
                alpha = _find_image(alphas, path.stem) if alphas.is_dir() else None
                found.append(_NeRSembleImage(pid, seq.name, t, m.group(1), path, alpha))
        return found

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"NeRSembleDataset({str(self.root)!r}, images={len(self)}, participants={len(self.identities)}, "
                f"cameras={len(self.cameras)}, resolution={self.resolution}, expression={self.expression_mode!r})")

    def intrinsics_for(self, participant: int, serial: str, width: int, height: int) -> np.ndarray:
        """``K`` of camera ``serial`` for its stored images of ``width x height`` (before any crop)."""
        intr = self._participants[participant].intrinsics
        k = (intr[serial] if isinstance(intr, dict) else intr).copy()
        cw, ch = self.calibration_size
        sx, sy = width / cw, height / ch
        if abs(sx - sy) > 0.01 * max(sx, sy):
            raise TrainDataError(f"images of participant {participant:03d} camera {serial} are {width}x{height}, "
                                 f"not a scaled copy of the {cw}x{ch} images the intrinsics are for; pass "
                                 "calibration_size=(width, height) of the calibrated images", self.root)
        k[:2] *= sx
        return k

    def __getitem__(self, index: int) -> dict[str, Any]:
        it = self.items[index]
        image = _read_rgb(it.image)
        h, w = image.shape[:2]
        mask = _read_grey(it.alpha) if it.alpha is not None else None
        if mask is not None and mask.shape != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
        k = self.intrinsics_for(it.participant, it.serial, w, h)
        image, k2 = _square_resize(image, k, self.resolution, cv2.INTER_CUBIC)
        if mask is not None:
            mask, _ = _square_resize(mask, k, self.resolution, cv2.INTER_LINEAR)
        track = self._tracking.get((it.participant, it.sequence))
        if self.expression_mode == "flame" and track is not None:
            row = track.rows[it.timestep]
            expression, head = track.expression[row], track.head_pose[row]
        else:
            expression, head = np.zeros(0, np.float32), np.eye(4)
        w2c = self._participants[it.participant].world_2_cam[it.serial]
        frame_id = f"{it.participant:03d}/{it.sequence}/frame_{it.timestep:05d}/cam_{it.serial}"
        return _item(image, mask, k2, w2c, head, self._identity[it.participant], expression, frame_id,
                     self.cameras.index(it.serial))


# ----------------------------------------------------------------------------------------------------------
# GenHead's synthetic multi-view data


class SyntheticMultiViewDataset(torch.utils.data.Dataset):
    """The synthetic multi-view dataset of ``python -m train.synthesize`` (module docstring), one item per
    rendered image.

    Args:
        root: the dataset folder (``DATA/data/train-id-*.parquet``) or a Hub dataset repo id.
        resolution: resize the (square) images to this side (``None``: as stored, 512).
        world_scale: multiply world lengths by this (``1/3``: FLAME metres instead of Portrait4D's FLAME x 3).
        cache_rows: decoded rows kept per process (a row holds one identity's ``E V`` encoded frames).

    Raises:
        TrainDataError: not a ``clips`` dataset, or a row whose frame count is not ``expressions x views``.
    """

    def __init__(self, root: str | Path, *, resolution: int | None = None, world_scale: float = 1.0,
                 cache_rows: int = 2) -> None:
        from train.data.parquet_format import ParquetTrainData, read_shard_meta

        self.data = ParquetTrainData(root)
        self.root = self.data.root
        if self.data.kind != "clips":
            raise TrainDataError(f"{self.root} holds {self.data.kind}, not the clips that train.synthesize writes",
                                 self.root)
        self.resolution, self.world_scale, self.cache_rows = resolution, float(world_scale), int(cache_rows)
        counts, views, clip_ids = [], [], []
        for shard in self.data.shards:
            meta, md = read_shard_meta(shard)
            table = _read_columns(shard, ["clip_id", "num_frames"])
            v = int(meta.get("views") or 1)
            for clip_id, n in zip(table["clip_id"], table["num_frames"], strict=True):
                if n % v:
                    raise TrainDataError(f"{shard}: clip {clip_id} has {n} frames, not a multiple of its {v} views",
                                         shard)
                counts.append(int(n))
                views.append(v)
                clip_ids.append(str(clip_id))
        self.clip_ids, self.views = clip_ids, views
        self.identities = clip_ids
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (f"SyntheticMultiViewDataset({str(self.root)!r}, images={len(self)}, identities={len(self.clip_ids)}, "
                f"resolution={self.resolution})")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict()}

    def _row(self, row: int) -> Any:
        if self._pid != os.getpid():
            self._cache, self._pid = OrderedDict(), os.getpid()
        record = self._cache.get(row)
        if record is None:
            record = self.data.read(row)
            self._cache[row] = record
            while len(self._cache) > max(self.cache_rows, 1):
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(row)
        return record

    def locate(self, index: int) -> tuple[int, int]:
        """Item ``index`` -> ``(row, frame in the row)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range: {self.root} has {len(self)} images")
        row = int(np.searchsorted(self._starts, index, side="right") - 1)
        return row, int(index - self._starts[row])

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, k = self.locate(index)
        rec = self._row(row)
        image = decode_image(rec.images[k], f"{rec.where}, frame {k}", rec.path, rec.key)
        seg = decode_seg(rec.segs[k], f"{rec.where}, segmentation {k}", rec.path, rec.key)[:, :, 0]
        label = rec.labels[k].astype(np.float64)
        h, w = image.shape[:2]
        k_pix = np.diag([w, h, 1.0]) @ label[16:25].reshape(3, 3)
        w2c = gl_to_cv_world_to_camera(label[:16].reshape(4, 4))
        w2c[:3, 3] *= self.world_scale
        image, k2 = _square_resize(image, k_pix, self.resolution, cv2.INTER_CUBIC)
        seg, _ = _square_resize(seg, k_pix, self.resolution, cv2.INTER_LINEAR)
        expression = np.concatenate([label[EXPRESSION], label[JAW_POSE], label[EYE_POSE]])
        v = self.views[row]
        item = _item(image, seg, k2, w2c, np.eye(4), row, expression, f"{self.clip_ids[row]}/{k:04d}", k % v)
        item["expression_index"] = torch.tensor(k // v)
        item["motion"] = torch.from_numpy(np.array(rec.motions[k], dtype=np.float32))
        return item


def _read_columns(path: Path, columns: list[str]) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path), columns=columns)
    except Exception as exc:  # noqa: BLE001 - a damaged shard
        raise TrainDataError(f"{path}: columns {columns} cannot be read ({exc})", path) from None
    return {c: table.column(c).to_pylist() for c in columns}


def open_gphm_data(root: str | Path, **kwargs: Any) -> NeRSembleDataset | SyntheticMultiViewDataset:
    """The dataset in ``root``: :class:`SyntheticMultiViewDataset` for a Parquet dataset (``data/*.parquet``),
    :class:`NeRSembleDataset` for a folder of participants; ``kwargs`` go to the reader."""
    path = Path(root)
    if path.is_dir() and (path / "data").is_dir() and any((path / "data").glob("*.parquet")):
        return SyntheticMultiViewDataset(path, **kwargs)
    if path.is_dir():
        return NeRSembleDataset(path, **kwargs)
    if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", str(root)):
        return SyntheticMultiViewDataset(str(root), **kwargs)  # a Hub dataset repo
    raise InputNotFoundError(f"{root} is neither a NeRSemble folder nor a synthetic dataset (folder or Hub repo)")
