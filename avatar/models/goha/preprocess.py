"""GOHA's input preprocessing in one call: EG3D's "in-the-wild" 512 crop, its 25-number camera and the MODNet matte.

GOHA (``NVlabs/GOHA``, ``docs/dataset_preprocessing.md``) prepares every photo with EG3D's
``dataset_preprocessing/ffhq/preprocess_in_the_wild.py`` (NVlabs/eg3d), then MODNet. Per image, that script runs:

1. ``batch_mtcnn.py``: MTCNN five points (eyes, nose tip, mouth corners, image-left first) of the biggest face
   (``box w + h``) with confidence > 0.9, written as ``detections/<name>.txt``.
2. Deep3DFaceRecon_pytorch (EG3D's submodule, commit ``6ba3d22``) ``test.py --name=pretrained --epoch=20``:
   ``read_data`` flips the points to y-up (``H - 1 - y``, float32) and ``util/preprocess.py::align_img`` (default
   ``target_size=224``, ``rescale_factor=102``) crops the photo: ``POS`` fits the five points to the five 3D
   points of ``util/load_mats.py::load_lm3d`` (from ``BFM/similarity_Lm3D_all.mat``,
   :data:`DEEP3D_LM3D_FIVE_POINTS`) under a scaled orthographic projection; ``resize_n_crop_img`` resizes the
   photo by ``s = rescale_factor / fitted scale`` to ``(int(W s), int(H s))`` with **PIL BICUBIC** and crops
   ``target_size`` around the fitted centre (black outside). The network gives 257 coefficients
   (:func:`avatar.face.deep3d.split_coefficients`); ``angle`` and ``trans`` are saved to ``<name>.mat``.
3. ``crop_images_in_the_wild.py``: the same ``align_img`` (``preprocess.py`` there is a symlink to
   Deep3DFaceRecon's ``util/preprocess.py``) with ``target_size=1024``, ``rescale_factor=300`` on the photo, then
   the centre ``700 x 700`` (``left = upper = int(1024 / 2 - 700 / 2) = 162``) resized to ``512 x 512`` with
   **PIL LANCZOS** -> ``crop/<name>.png`` (:func:`eg3d_crop`).
4. ``3dface2idr_mat.py``: ``R = ParametricFaceModel.compute_rotation(angle)`` (which returns ``(Rz Ry Rx)^T``),
   ``trans[2] += -10``, ``c = -R trans``, ``c *= 0.27``, (``c[1] += 0.006; c[2] += 0.161``, the "additional offset
   used in submission": **GOHA comments these two lines out**, :data:`EG3D_SUBMISSION_OFFSET`), ``pose = [R diag(1,
   -1, -1) | c]`` (:func:`eg3d_cam2world`).
5. ``preprocess_face_cameras.py --mode orig``: ``fix_pose_orig`` puts the camera at radius 2.7 along its own
   direction (:func:`fix_pose_orig`); ``fix_intrinsics`` sets ``fx = fy = 2985.29 / 700``, ``cx = cy = 1 / 2``
   (:func:`eg3d_intrinsics`); the label is ``pose.reshape(-1)`` followed by ``intrinsics.reshape(-1)``: 25 floats,
   the layout of :func:`avatar.render.camera.make_label` (cam2world row-major, then the normalised intrinsics),
   in EG3D's OpenCV camera convention (x right, y down, looking down ``+z``; a frontal camera has rotation
   ``diag(1, -1, -1)`` and sits at ``(0, 0, 2.7)``), which is what GOHA's renderer reads.

Then MODNet (``ZHKKKe/MODNet`` ``demo/image_matting/colab/inference.py``, photographic model) mattes the 512 crop and
saves ``(matte * 255).astype('uint8')`` (truncation); GOHA's ``dataset/Dataset.py`` reads it back ``/ 255`` and
multiplies the uint8 crop by it (float64); ``demo.py`` casts to float32 and maps ``/ 127.5 - 1``. :class:`GOHACrop`
holds the result, :class:`GOHAPreprocessor` runs all of it on the toolkit's networks.

Deviations from the official chain (the arithmetic of every step above is the official one):

* **Five points**: RetinaFace's five points (:mod:`avatar.face.retinaface`, the same order as MTCNN's) or
  MediaPipe's (:mod:`avatar.face.mediapipe_face`) instead of MTCNN's; the largest face by the toolkit's size
  measure (mean of box width and height, threshold 0.8 for RetinaFace) instead of MTCNN's ``w + h`` with
  confidence > 0.9. MTCNN points are integers; ours are not.
* **Deep3DFaceRecon weights**: the registry's ``deep3d-recon`` is the 2023 model (Portrait4D's
  ``deep3d_2023/epoch_20.pth``), not the older ``pretrained`` ``epoch_20`` EG3D used; same architecture, input and
  output layout, different training. It is fed the crop EG3D's pipeline builds (``load_lm3d`` template, bicubic),
  not Portrait4D's (other template, bilinear).
* **Photos** are read by :func:`avatar.io.load_image` (EXIF orientation applied, any PIL mode, no downscaling);
  EG3D opens them with ``PIL .convert('RGB')`` for the crop and ``cv2.imread`` for MTCNN.
* **Landmarks** are kept in float64 (the official reads them as float32).
* Several faces: the largest is used with a warning (as the toolkit's Portrait4D preprocessing does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from avatar.errors import FaceTooSmallError, InputError, NoFaceError
from avatar.face.bfm import DEEP3D_CAMERA_DISTANCE
from avatar.face.deep3d import (
    DEEP3D_RESCALE_FACTOR,
    DEEP3D_TARGET_SIZE,
    Deep3DReconNet,
    align_image,
    split_coefficients,
    to_input,
)
from avatar.face.geometry import AlignParams, bfm_angles_to_rotation, transform_landmarks
from avatar.face.matting import MediaPipeMatting
from avatar.face.mediapipe_face import MediaPipeFaceBackend
from avatar.face.modnet import MODNet
from avatar.face.retinaface import DetectedFace, RetinaFace
from avatar.render.camera import make_label

__all__ = [
    "DEEP3D_LM3D_FIVE_POINTS",
    "EG3D_CAMERA_RADIUS",
    "EG3D_CAMERA_SCALE",
    "EG3D_CENTER_CROP_SIZE",
    "EG3D_FOCAL",
    "EG3D_RESCALE_FACTOR",
    "EG3D_SUBMISSION_OFFSET",
    "EG3D_TARGET_SIZE",
    "GOHA_BACKENDS",
    "GOHA_IMAGE_SIZE",
    "GOHA_MATTING",
    "GOHACrop",
    "GOHACropTransform",
    "GOHAPreprocessor",
    "deep3d_align",
    "eg3d_cam2world",
    "eg3d_camera_label",
    "eg3d_crop",
    "eg3d_intrinsics",
    "fix_pose_orig",
    "mask_image",
    "quantize_matte",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# official constants (file:line of NVlabs/eg3d @ HEAD unless said otherwise)

DEEP3D_LM3D_FIVE_POINTS: np.ndarray = np.array([
    [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
    [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
    [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
    [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
    [0.24846619367599487, -0.38128235936164856, 0.22235769033432007],
])
"""``(5, 3)`` template of Deep3DFaceRecon's ``util/load_mats.py::load_lm3d`` (commit 6ba3d22): of the 68 points in
``BFM/similarity_Lm3D_all.mat``, the nose tip 31, the eye centres (37+40)/2 and (43+46)/2 and the mouth corners 49,
55, reordered (eyes, nose, mouth); float32 values, written exactly. It equals
:data:`avatar.face.geometry.BFM_FIVE_POINTS_3D` (Portrait4D's hard-coded template) plus ``0.2`` in ``y``."""

EG3D_TARGET_SIZE: int = 1024
"""``crop_images_in_the_wild.py:46`` ``target_size = 1024.``"""
EG3D_RESCALE_FACTOR: float = 300.0
"""``crop_images_in_the_wild.py:47`` ``rescale_factor = 300``."""
EG3D_CENTER_CROP_SIZE: int = 700
"""``crop_images_in_the_wild.py:48`` ``center_crop_size = 700``."""
GOHA_IMAGE_SIZE: int = 512
"""``crop_images_in_the_wild.py:49`` ``output_size = 512``."""
EG3D_CAMERA_SCALE: float = 0.27
"""``3dface2idr_mat.py:47`` ``c *= 0.27``."""
EG3D_SUBMISSION_OFFSET: tuple[float, float, float] = (0.0, 0.006, 0.161)
"""``3dface2idr_mat.py:48-49`` ``c[1] += 0.006``, ``c[2] += 0.161``: EG3D's; **not** applied by GOHA."""
EG3D_CAMERA_RADIUS: float = 2.7
"""``preprocess_face_cameras.py:58`` (``fix_pose_orig``) ``pose[:3, 3] / radius * 2.7``."""
EG3D_FOCAL: float = 2985.29 / 700
"""``preprocess_face_cameras.py:33-34`` (``fix_intrinsics``) ``2985.29/700`` = 4.26470 (normalised by the 700 crop;
``3dface2idr_mat.py:54`` ``focal = 2985.29 # = 1015*1024/224*(300/466.285)``)."""

GOHA_BACKENDS: tuple[str, ...] = ("official", "mediapipe")
"""Face detectors :meth:`GOHAPreprocessor.from_pretrained` can use: RetinaFace or MediaPipe."""
GOHA_MATTING: tuple[str, ...] = ("modnet", "mediapipe")
"""Matting networks :meth:`GOHAPreprocessor.from_pretrained` can use: MODNet (GOHA's) or MediaPipe's selfie model."""

_CENTER_CROP_OFFSET = int(EG3D_TARGET_SIZE / 2 - EG3D_CENTER_CROP_SIZE / 2)  # 162, crop_images_in_the_wild.py:53-54

ArrayLike = Any  # numpy array, torch tensor or nested sequence


# ---------------------------------------------------------------------------------------------------------
# alignment


def deep3d_align(image: np.ndarray, five_points: ArrayLike, target_size: int = DEEP3D_TARGET_SIZE,
                 rescale_factor: float = DEEP3D_RESCALE_FACTOR) -> tuple[np.ndarray, AlignParams]:
    """Deep3DFaceRecon's ``util/preprocess.py::align_img`` at commit 6ba3d22, as EG3D runs it.

    The five points are flipped to y-up (``H - 1 - y``, ``read_data`` / ``crop_images_in_the_wild.py:44``), fitted by
    ``POS`` to :data:`DEEP3D_LM3D_FIVE_POINTS`; the photo is resized by ``rescale_factor / fitted scale`` to
    ``(int(W s), int(H s))`` with PIL BICUBIC (``resize_n_crop_img``) and cropped to ``target_size`` (black outside).
    Defaults: Deep3D's own 224 crop (``test.py``); :func:`eg3d_crop` calls it with ``1024, 300``. This is
    :func:`avatar.face.deep3d.align_image` with the 6ba3d22 template and filter.

    Args:
        image: ``(H, W, 3)`` uint8 RGB photo.
        five_points: ``(5, 2)`` points in photo pixels (y down): eyes, nose tip, mouth corners, image-left first.

    Returns:
        The ``(target_size, target_size, 3)`` uint8 crop and its :class:`~avatar.face.geometry.AlignParams`
        (``params.to_array()`` is the official ``trans_params`` ``(W, H, s, tx, ty)``, ``ty`` y-up).
    """
    five = np.asarray(five_points, dtype=np.float64).reshape(5, 2)
    aligned = align_image(image, five, target_size, rescale_factor, resample="bicubic",
                          template=DEEP3D_LM3D_FIVE_POINTS)
    return aligned.image, aligned.params


def eg3d_crop(image: np.ndarray, five_points: ArrayLike) -> tuple[np.ndarray, GOHACropTransform]:
    """``crop_images_in_the_wild.py``: the ``(512, 512, 3)`` uint8 crop GOHA's model takes, and where it lies.

    ``align_img(target_size=1024, rescale_factor=300)`` (:func:`deep3d_align`: PIL BICUBIC resize, black padding),
    then the centre ``700 x 700`` box ``(162, 162, 862, 862)`` resized to 512 with PIL's own LANCZOS filter
    (``Image.resize(..., Image.LANCZOS)``: the same call as the official, so the PNG is bit-identical for the same
    Pillow). ``image``: ``(H, W, 3)`` uint8 RGB; ``five_points``: ``(5, 2)`` photo pixels (see :func:`deep3d_align`).
    """
    high, params = deep3d_align(image, five_points, EG3D_TARGET_SIZE, EG3D_RESCALE_FACTOR)
    transform = GOHACropTransform(params)
    left, upper, right, lower = transform.center_crop_box
    crop = Image.fromarray(np.ascontiguousarray(high[upper:lower, left:right]))
    out = crop.resize((transform.output_size, transform.output_size), resample=Image.LANCZOS)
    return np.asarray(out), transform


@dataclass(frozen=True)
class GOHACropTransform:
    """Where :func:`eg3d_crop`'s 512 crop lies in the photo.

    The crop is, per axis, a scale and a shift of the photo: PIL's resize to ``(w, h) = params.resized_size`` maps
    pixel-edge coordinates by ``w / W`` and ``h / H`` (not exactly ``s``: ``w`` is truncated), the 1024 crop starts at
    ``params.crop_box[:2]``, the centre crop at ``(162, 162)``, and the 700 -> 512 resize scales by ``512 / 700``.
    :meth:`to_crop` / :meth:`to_photo` use that exact map in pixel-centre coordinates (y down).

    Attributes:
        align: the 1024 crop (``target_size=1024``; ``to_array()`` is the official ``trans_params``).
        center_crop_size: 700.
        output_size: 512.
    """

    align: AlignParams
    center_crop_size: int = EG3D_CENTER_CROP_SIZE
    output_size: int = GOHA_IMAGE_SIZE

    @property
    def center_crop_box(self) -> tuple[int, int, int, int]:
        """``(left, upper, right, lower)`` of the centre crop in the 1024 image (``crop_images_in_the_wild.py:53-56``)."""
        left = int(self.align.target_size / 2 - self.center_crop_size / 2)
        upper = int(self.align.target_size / 2 - self.center_crop_size / 2)
        return left, upper, left + self.center_crop_size, upper + self.center_crop_size

    def photo_to_crop(self) -> np.ndarray:
        """``(2, 3)`` float64 affine map from photo pixels to crop pixels (pixel centres, y down)."""
        w, h = self.align.resized_size
        left, top, _, _ = self.align.crop_box
        cl, cu, _, _ = self.center_crop_box
        k = self.output_size / self.center_crop_size
        sx, sy = w / self.align.width * k, h / self.align.height * k
        return np.array([[sx, 0.0, (0.5 * w / self.align.width - left - cl) * k - 0.5],
                         [0.0, sy, (0.5 * h / self.align.height - top - cu) * k - 0.5]])

    def to_crop(self, points: ArrayLike) -> np.ndarray:
        """``(..., N, >=2)`` photo pixels -> ``(..., N, 2)`` float64 crop pixels."""
        m = self.photo_to_crop()
        pts = np.asarray(points, dtype=np.float64)[..., :2]
        return pts @ m[:, :2].T + m[:, 2]

    def to_photo(self, points: ArrayLike) -> np.ndarray:
        """Inverse of :meth:`to_crop`: ``(..., N, >=2)`` crop pixels -> ``(..., N, 2)`` photo pixels."""
        m = self.photo_to_crop()
        pts = np.asarray(points, dtype=np.float64)[..., :2]
        return (pts - m[:, 2]) / np.diag(m)

    def as_align_params(self) -> AlignParams:
        """The crop as an :class:`~avatar.face.geometry.AlignParams` with ``target_size=512`` for the toolkit's
        paste-back (:class:`avatar.pipelines.paste_back.PasteBack`) and landmark maps
        (:func:`~avatar.face.geometry.transform_landmarks`): one scale ``s * 512 / 700`` for both axes, and the
        translation that makes the crop's centre map exactly. It agrees with :meth:`to_crop` to a few hundredths
        of a pixel over the crop (the two axes' truncated sizes differ by less than one resized pixel); warping
        with it does not reproduce the crop bit for bit (use :func:`eg3d_crop`)."""
        a = self.align
        scale = a.scale * self.output_size / self.center_crop_size
        zero = AlignParams(a.width, a.height, scale, 0.0, 0.0, self.output_size)
        centre = (self.output_size - 1) / 2
        photo = self.to_photo(np.array([[centre, centre]]))
        got = transform_landmarks(photo, zero)[0]
        # transform_landmarks: x_out decreases by tx * scale, y_out (flipped back to y down) increases by ty * scale
        return AlignParams(a.width, a.height, scale, float((got[0] - centre) / scale),
                           float((centre - got[1]) / scale), self.output_size)


# ---------------------------------------------------------------------------------------------------------
# camera


def eg3d_cam2world(angle: Tensor, trans: Tensor, submission_offsets: bool = False) -> Tensor:
    """``3dface2idr_mat.py:39-71``: Deep3D ``angle (B, 3)`` and ``trans (B, 3)`` -> ``(B, 4, 4)`` float64 pose.

    ``R = compute_rotation(angle) = (Rz Ry Rx)^T`` (``models/bfm.py``, which returns the transpose for its row-vector
    convention; :func:`~avatar.face.geometry.bfm_angles_to_rotation` is ``Rz Ry Rx``); ``trans[2] += -10`` (the
    Deep3D camera distance); ``c = -R trans * 0.27``; with ``submission_offsets`` (EG3D's, not GOHA's)
    ``c += (0, 0.006, 0.161)``; ``pose = [R diag(1, -1, -1) | c; 0 0 0 1]``. The radius is not yet 2.7
    (:func:`fix_pose_orig`).
    """
    angle = torch.as_tensor(angle).double().reshape(-1, 3)
    t = torch.as_tensor(trans).double().reshape(-1, 3).clone()
    rot = bfm_angles_to_rotation(angle).transpose(-1, -2)
    t[:, 2] -= DEEP3D_CAMERA_DISTANCE
    c = -(rot @ t[..., None])[..., 0] * EG3D_CAMERA_SCALE
    if submission_offsets:
        c = c + c.new_tensor(EG3D_SUBMISSION_OFFSET)
    pose = torch.eye(4, dtype=torch.float64).repeat(angle.shape[0], 1, 1)
    pose[:, :3, :3] = rot @ torch.diag(rot.new_tensor([1.0, -1.0, -1.0]))
    pose[:, :3, 3] = c
    return pose


def fix_pose_orig(pose: Tensor, radius: float = EG3D_CAMERA_RADIUS) -> Tensor:
    """``preprocess_face_cameras.py:54-59``: ``(B, 4, 4)`` cam2world with its position scaled to ``radius`` (2.7)
    along its own direction from the origin (``--mode orig``; the rotation is kept)."""
    out = pose.clone()
    location = out[:, :3, 3]
    out[:, :3, 3] = location / torch.linalg.norm(location, dim=-1, keepdim=True) * radius
    return out


def eg3d_intrinsics(batch_size: int = 1) -> Tensor:
    """``preprocess_face_cameras.py:30-42`` ``fix_intrinsics``: ``(B, 3, 3)`` float64
    ``[[2985.29 / 700, 0, 1 / 2], [0, 2985.29 / 700, 1 / 2], [0, 0, 1]]``."""
    k = torch.tensor([[EG3D_FOCAL, 0.0, 0.5], [0.0, EG3D_FOCAL, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return k.repeat(batch_size, 1, 1)


def eg3d_camera_label(angle: Tensor, trans: Tensor, submission_offsets: bool = False) -> Tensor:
    """Deep3D ``angle (B, 3)``, ``trans (B, 3)`` -> ``(B, 25)`` float32 GOHA camera label: :func:`eg3d_cam2world`,
    :func:`fix_pose_orig`, then ``concatenate([pose.reshape(-1), intrinsics.reshape(-1)])``
    (``preprocess_face_cameras.py:110``; :func:`avatar.render.camera.make_label`), read as ``.float()`` by GOHA.
    ``submission_offsets=False`` is GOHA's choice (design notes section 4); ``True`` gives EG3D's FFHQ cameras."""
    pose = fix_pose_orig(eg3d_cam2world(angle, trans, submission_offsets))
    return make_label(pose, eg3d_intrinsics(pose.shape[0])).float()


# ---------------------------------------------------------------------------------------------------------
# matte


def quantize_matte(matte: Tensor) -> Tensor:
    """MODNet's ``(B, 1, H, W)`` matte in [0, 1] -> the value GOHA reads back from the saved PNG, float32:
    ``(matte * 255).astype('uint8') / 255`` (truncation, as ``demo/image_matting/colab/inference.py`` saves it)."""
    return torch.floor(matte.detach().float().cpu().clamp(0, 1) * 255).div(255)


def mask_image(crop: np.ndarray, matte: Tensor) -> Tensor:
    """GOHA's model input: ``(512, 512, 3)`` uint8 crop times the ``(1, 512, 512)`` matte (float64, as
    ``dataset/Dataset.py`` multiplies them), cast to float32 and mapped ``/ 127.5 - 1`` (``demo.py``) ->
    ``(3, 512, 512)`` float32 in [-1, 1]; exactly -1 where the matte is 0."""
    image = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).double()
    mask = torch.round(matte.double() * 255) / 255  # the PNG's k / 255.0 in float64, as Dataset.py
    return (image * mask).float() / 127.5 - 1


# ---------------------------------------------------------------------------------------------------------
# results and the preprocessor


@dataclass
class GOHACrop:
    """One photo prepared for GOHA (one ``images/*.png`` + ``matting/*.png`` + ``dataset.json`` entry).

    Attributes:
        image: ``(3, 512, 512)`` float32 in [-1, 1], RGB, background -1 (the crop times the matte).
        camera: ``(25,)`` float32 label: cam2world 4x4 (EG3D/OpenCV), then the normalised intrinsics 3x3.
        matte: ``(1, 512, 512)`` float32 in [0, 1], quantised to ``k / 255`` as the saved PNG.
        crop: ``(512, 512, 3)`` uint8 RGB, the official ``crop/<name>.png`` (before the matte).
        landmarks5: ``(5, 2)`` float32, the five alignment points in crop pixels.
        box: ``(4,)`` float32 face box ``x1, y1, x2, y2`` in photo pixels.
        coefficients: ``(257,)`` float32 Deep3D coefficients of the face (from Deep3D's own 224 crop of the photo).
        transform: where the crop lies in the photo (:class:`GOHACropTransform`; ``transform.as_align_params()``
            for :class:`~avatar.pipelines.paste_back.PasteBack`); ``None`` when the photo was given already
            cropped (:meth:`GOHAPreprocessor.process_aligned`).
    """

    image: Tensor
    camera: Tensor
    matte: Tensor
    crop: np.ndarray
    landmarks5: np.ndarray
    box: np.ndarray
    coefficients: Tensor
    transform: GOHACropTransform | None

    @property
    def align(self) -> AlignParams | None:
        """The crop as :class:`~avatar.face.geometry.AlignParams` (paste-back), see
        :meth:`GOHACropTransform.as_align_params`; ``None`` for a crop given as such."""
        return None if self.transform is None else self.transform.as_align_params()


PhotoInput = str | Path | np.ndarray | Image.Image


class GOHAPreprocessor:
    """Detector, Deep3DFaceRecon and matting network chained as GOHA's preprocessing (module docstring).

    Args:
        detector: RetinaFace (``'official'``) or :class:`~avatar.face.mediapipe_face.MediaPipeFaceBackend`: faces with
            their five points, largest first.
        face_recon: Deep3DFaceRecon coefficient regressor.
        matting: MODNet (GOHA's) or :class:`~avatar.face.matting.MediaPipeMatting`: ``matte((B, 3, H, W) in [0, 1])``.
        min_face_size: faces whose box (mean of width and height) is smaller, in photo pixels, are refused.
    """

    def __init__(self, detector: RetinaFace | MediaPipeFaceBackend, face_recon: Deep3DReconNet,
                 matting: MODNet | MediaPipeMatting, min_face_size: float = 40.0) -> None:
        self.detector = detector
        self.face_recon = face_recon.eval()
        self.matting = matting
        self.min_face_size = min_face_size
        if isinstance(detector, torch.nn.Module):
            detector.eval()
        if isinstance(matting, torch.nn.Module):
            matting.eval()

    @classmethod
    def from_pretrained(cls, preprocess: str = "official", matting: str = "modnet",
                        local_dir: str | Path | None = None, device: torch.device | str = "cpu",
                        ) -> GOHAPreprocessor:
        """The networks from the asset cache (``avatar download`` fetches them): registry ids ``retinaface-r50``
        (``preprocess='official'``; ``'mediapipe'`` uses MediaPipe's detector), ``deep3d-recon`` and
        ``modnet-photographic`` (``matting='modnet'``; ``'mediapipe'`` uses MediaPipe's selfie segmentation).
        ``local_dir``: take the upstream files from this folder instead of the network."""
        if preprocess not in GOHA_BACKENDS:
            raise InputError(f"preprocess must be one of {', '.join(GOHA_BACKENDS)}, got {preprocess!r}")
        if matting not in GOHA_MATTING:
            raise InputError(f"matting must be one of {', '.join(GOHA_MATTING)}, got {matting!r}")
        detector = (MediaPipeFaceBackend() if preprocess == "mediapipe"
                    else RetinaFace.from_pretrained("retinaface-r50", local_dir=local_dir, device=device))
        face_recon = Deep3DReconNet.from_pretrained("deep3d-recon", local_dir=local_dir, device=device)
        matte = (MediaPipeMatting() if matting == "mediapipe"
                 else MODNet.from_pretrained("modnet-photographic", local_dir=local_dir, device=device))
        return cls(detector, face_recon, matte)

    def to(self, device: torch.device | str) -> GOHAPreprocessor:
        for module in (self.detector, self.face_recon, self.matting):
            if isinstance(module, torch.nn.Module):
                module.to(device)
        return self

    # ---- steps ------------------------------------------------------------------------------------------
    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        """Faces of each ``(H, W, 3)`` uint8 RGB image, largest first (batched for images of one size)."""
        return self.detector.detect_batch(images)

    @torch.no_grad()
    def coefficients(self, images: list[np.ndarray], five_points: list[np.ndarray]) -> Tensor:
        """``(B, 257)`` float32 Deep3D coefficients (CPU) from Deep3D's own 224 crops (:func:`deep3d_align`)."""
        crops = np.stack([deep3d_align(im, pts)[0] for im, pts in zip(images, five_points, strict=True)])
        device = next(self.face_recon.parameters()).device
        return self.face_recon(to_input(crops).to(device)).float().cpu()

    @torch.no_grad()
    def mattes(self, crops: np.ndarray) -> Tensor:
        """``(B, 512, 512, 3)`` uint8 crops -> ``(B, 1, 512, 512)`` float32 mattes as GOHA reads them
        (:func:`quantize_matte`)."""
        images = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255
        return quantize_matte(self.matting.matte(images))

    def process(self, images: list[np.ndarray], faces: list[DetectedFace]) -> list[GOHACrop]:
        """GOHA's inputs for one face per image (networks batched).

        Args:
            images: ``(H, W, 3)`` uint8 RGB photos or frames.
            faces: one detected face per image (with its five points), from :meth:`detect`.
        """
        if not images:
            return []
        five = self._five_points(faces)
        coeffs = self.coefficients(images, five)
        crops, transforms = zip(*(eg3d_crop(im, pts) for im, pts in zip(images, five, strict=True)), strict=True)
        stacked = np.stack(crops)
        mattes = self.mattes(stacked)
        groups = split_coefficients(coeffs)
        cameras = eg3d_camera_label(groups["angle"], groups["trans"])
        out = []
        for i, face in enumerate(faces):
            out.append(GOHACrop(
                image=mask_image(stacked[i], mattes[i]), camera=cameras[i], matte=mattes[i], crop=stacked[i],
                landmarks5=transforms[i].to_crop(five[i]).astype(np.float32),
                box=np.asarray(face.box, dtype=np.float32), coefficients=coeffs[i], transform=transforms[i]))
        return out

    def process_aligned(self, crops: list[np.ndarray], faces: list[DetectedFace]) -> list[GOHACrop]:
        """GOHA's inputs for photos that already are GOHA's 512 EG3D crops (a prepared benchmark, a saved
        ``crop/<name>.png``): no new crop; the camera comes from the face's five points on the crop, as for a
        photo (a second EG3D crop of an EG3D crop is the same crop up to landmark noise), and the matte from the
        crop itself.

        Args:
            crops: ``(512, 512, 3)`` uint8 RGB crops.
            faces: one detected face per crop (with its five points, in crop pixels).
        """
        if not crops:
            return []
        bad = [c.shape for c in crops if c.shape != (GOHA_IMAGE_SIZE, GOHA_IMAGE_SIZE, 3)]
        if bad:
            raise InputError(f"an aligned GOHA crop must be {GOHA_IMAGE_SIZE}x{GOHA_IMAGE_SIZE} RGB, got {bad[0]}")
        five = self._five_points(faces)
        coeffs = self.coefficients(crops, five)
        stacked = np.stack(crops)
        mattes = self.mattes(stacked)
        groups = split_coefficients(coeffs)
        cameras = eg3d_camera_label(groups["angle"], groups["trans"])
        return [GOHACrop(image=mask_image(stacked[i], mattes[i]), camera=cameras[i], matte=mattes[i],
                         crop=stacked[i], landmarks5=five[i].astype(np.float32),
                         box=np.asarray(face.box, dtype=np.float32), coefficients=coeffs[i], transform=None)
                for i, face in enumerate(faces)]

    @staticmethod
    def _five_points(faces: list[DetectedFace]) -> list[np.ndarray]:
        five = [np.asarray(f.landmarks, dtype=np.float64) for f in faces]
        if any(p.shape != (5, 2) for p in five):
            raise InputError("GOHA's crop needs the five alignment points of each face (RetinaFace, or "
                             "MediaPipeFaceBackend(mesh=True)); got points of shape "
                             f"{[p.shape for p in five if p.shape != (5, 2)][0]}")
        if not all(np.isfinite(p).all() for p in five):
            raise InputError("the face's five alignment points are not finite numbers; the detector failed on it")
        return five

    def process_batches(self, frames: Iterable[np.ndarray], batch_size: int, max_frames: int | None = None,
                        ) -> Iterator[tuple[list[np.ndarray], list[int], list[GOHACrop]]]:
        """Video frames in batches -> ``(frames, indices of the frames with a usable face, their crops)``: the
        largest face of each frame, refused below ``min_face_size`` (each frame on its own, as EG3D's script)."""
        from avatar.pipelines.prefetch import batched_frames

        for chunk in batched_frames(frames, batch_size, max_frames):
            faces = self.detect(chunk)
            good = [i for i, f in enumerate(faces) if f and f[0].size >= self.min_face_size]
            yield chunk, good, self.process([chunk[i] for i in good], [faces[i][0] for i in good])

    def __call__(self, image: PhotoInput, name: str | None = None) -> GOHACrop:
        """One photo (path, PIL image or ``(H, W, 3)`` uint8 RGB array) -> :class:`GOHACrop` of its largest face.

        Raises:
            ImageReadError: the photo cannot be read. NoFaceError: no face found. FaceTooSmallError: the largest
            face is smaller than ``min_face_size``. InputError: its five points are degenerate.
        """
        from avatar.io.image import load_image

        rgb = load_image(image, max_side=None)
        name = name or (str(image) if isinstance(image, str | Path) else "the photo")
        faces = self.detect([rgb])[0]
        if not faces:
            raise NoFaceError(f"no face found in {name}; use a photo with one clearly visible, roughly frontal face")
        if len(faces) > 1:
            logger.warning("%d faces found in %s; using the largest", len(faces), name)
        if faces[0].size < self.min_face_size:
            raise FaceTooSmallError(
                f"the face in {name} is only {faces[0].size:.0f} pixels across; use a photo where it is at least "
                f"{self.min_face_size:.0f} pixels (closer or higher resolution)")
        return self.process([rgb], [faces[0]])[0]
