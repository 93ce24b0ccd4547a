"""Face-alignment geometry of the official Portrait4D preprocessing, in numpy / PyTorch.

Three pieces, each matching ``YuDeng/Portrait-4D`` ``data_preprocess`` and ``portrait4d`` code:

* **512 crop** (``lib/inferencer.py`` + ``cropping/crop_images_portrait_model.py``). Five points (WFLW-98
  indices 96, 97, 54, 76, 82: eye centres, nose tip, mouth corners) are fitted by least squares to a
  standard 3D five-point BFM template under a scaled orthographic projection (Deep3DFaceRecon's ``POS``).
  The fitted scale ``scale_fit`` and translation ``t`` give the resize factor ``s = 180 / scale_fit``; the
  whole image is resized (Lanczos) to ``(int(W s), int(H s))``, edge-padded if needed and cropped to
  ``512 x 512`` around ``t``. :class:`AlignParams` holds ``(W, H, s, tx, ty)``, the official
  ``trans_params``.
* **PD-FGC crop** (``get_motion_feature`` of ``gen_images_portrait4d.py`` / ``extract_pdfgc.py``). A
  similarity transform (Umeyama, as ``skimage.transform.SimilarityTransform``) maps the eye centres and the
  inner-mouth centre of the 68 3D landmarks to ``(87, 59), (137, 59), (112, 120)`` in a 224 frame; the image
  is warped (bilinear, zero padding, ``align_corners=True`` pixel mapping as ``kornia.warp_affine``), its top
  ``192`` rows and central ``192`` columns are kept and resized back to ``224`` (bilinear), then clamped to
  ``[-1, 1]``.
* **Head pose and camera label** (``bfm2flame_simplified.py``). Deep3DFaceRecon Euler angles become a FLAME
  neck rotation vector (``Rz Ry Rx``, then a fixed rectifying rotation); the label's camera is
  ``cam2world = [R | R (0, 0.01, 4.2)]`` with ``R = rodrigues(-neck_pose)`` and 12 degree intrinsics.
  :class:`FlameLabel` splits / packs the 437-float label.

Coordinate conventions:

* *Image coordinates*: ``x`` = column, ``y`` = row (pointing down), in pixels, as landmark detectors output
  them and as the official ``2dldmks_align`` / ``3dldmks_align`` files store them.
* The official crop code works in *y-up* coordinates: it flips the input as ``y_up = H - 1 - y`` and flips
  the output back as ``y = 512 - y_up`` (note: ``512``, not ``511``). :func:`transform_landmarks` reproduces
  both flips, so its output is directly comparable with the official ``*ldmks_align`` files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from avatar.errors import InputError
from avatar.flame.lbs import batch_rodrigues
from avatar.render.camera import (
    INFERENCE_TRANSLATION,
    PORTRAIT4D_FOV_DEG,
    focal_from_fov,
    make_intrinsics,
    make_label,
)

__all__ = [
    "ALIGN_RESCALE_FACTOR",
    "ALIGN_TARGET_SIZE",
    "BFM_FIVE_POINTS_3D",
    "BFM_TEMPLATE_OFFSET",
    "BFM_TO_FLAME_EULER",
    "FLAME_LABEL_DIM",
    "PDFGC_CROP_LEN",
    "PDFGC_CROP_SIZE",
    "PDFGC_TEMPLATE",
    "WFLW_FIVE_POINT_INDICES",
    "AlignParams",
    "FlameLabel",
    "align_face",
    "alignment_template",
    "bfm_angles_to_flame_pose",
    "bfm_angles_to_rotation",
    "camera_label_from_pose",
    "estimate_align_params",
    "euler_xyz_to_matrix",
    "five_points_from_68",
    "five_points_from_wflw98",
    "inverse_transform_landmarks",
    "matrix_to_axis_angle",
    "pdfgc_affine",
    "pdfgc_crop",
    "pdfgc_keypoints",
    "pos_fit",
    "similarity_matrix",
    "transform_landmarks",
    "warp_affine",
    "warp_to_aligned",
]

# ----------------------------------------------------------------------------------------------------------
# Constants (sources: see the module docstring and the report of the face-geometry issue)

WFLW_FIVE_POINT_INDICES: tuple[int, ...] = (96, 97, 54, 76, 82)
"""WFLW-98 indices of the five alignment points: left eye centre, right eye centre, nose tip, mouth corners."""

ALIGN_TARGET_SIZE: int = 512
"""Side of the aligned crop."""

ALIGN_RESCALE_FACTOR: float = 180.0
"""Projected template scale in the crop: the resize factor is ``180 / fitted scale``."""

BFM_FIVE_POINTS_3D: np.ndarray = np.array(
    [
        [-0.31148657, 0.09036078, 0.13377953],
        [0.30979887, 0.08972035, 0.13179526],
        [0.0032535, -0.24617933, 0.55244243],
        [-0.25216928, -0.5813392, 0.22405732],
        [0.2484662, -0.5812824, 0.22235769],
    ]
)
"""The five 3D points of the BFM mean face (Deep3DFaceRecon), same order as :data:`WFLW_FIVE_POINT_INDICES`."""

BFM_TEMPLATE_OFFSET: tuple[float, float, float] = (0.0, 0.1, 0.4)
"""Shift added to :data:`BFM_FIVE_POINTS_3D` by the Portrait4D crop (it moves the crop centre)."""

PDFGC_TEMPLATE: tuple[tuple[float, float], ...] = ((87.0, 59.0), (137.0, 59.0), (112.0, 120.0))
"""Targets of the left-eye, right-eye and inner-mouth centres in the 224 PD-FGC frame (x, y down)."""

PDFGC_CROP_SIZE: int = 224
PDFGC_CROP_LEN: int = 16

BFM_TO_FLAME_EULER: tuple[float, float, float] = (0.08489475, 0.002882, 0.00353599)
"""Extrinsic x-y-z Euler angles (radians) of the rotation applied after the BFM rotation (FFHQ-calibrated)."""

FLAME_LABEL_DIM: int = 437

ArrayLike = Any  # numpy array, torch tensor or nested sequence


def _np(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# Five points


def five_points_from_wflw98(landmarks: ArrayLike) -> np.ndarray:
    """``(..., 98, >=2)`` WFLW landmarks -> ``(..., 5, 2)`` alignment points (float64, same coordinates)."""
    lm = _np(landmarks)
    if lm.shape[-2] != 98:
        raise ValueError(f"expected 98 landmarks, got shape {lm.shape}")
    return lm[..., list(WFLW_FIVE_POINT_INDICES), :2]


def five_points_from_68(landmarks: ArrayLike) -> np.ndarray:
    """``(..., 68, >=2)`` iBUG-68 landmarks -> ``(..., 5, 2)`` alignment points.

    The official fallback for non-5-point input: eye centres are the means of points 36/39 and 42/45 (outer
    and inner corners), then the nose tip 30 and the mouth corners 48 and 54.
    """
    lm = _np(landmarks)[..., :2]
    if lm.shape[-2] != 68:
        raise ValueError(f"expected 68 landmarks, got shape {lm.shape}")
    left_eye = lm[..., [36, 39], :].mean(-2)
    right_eye = lm[..., [42, 45], :].mean(-2)
    return np.stack([left_eye, right_eye, lm[..., 30, :], lm[..., 48, :], lm[..., 54, :]], axis=-2)


# ----------------------------------------------------------------------------------------------------------
# 512 crop: parameters


def alignment_template() -> np.ndarray:
    """``(5, 3)`` 3D template used by the Portrait4D crop (:data:`BFM_FIVE_POINTS_3D` + offset)."""
    return BFM_FIVE_POINTS_3D + np.asarray(BFM_TEMPLATE_OFFSET)


def pos_fit(points_yup: ArrayLike, template: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares scaled-orthographic fit of 2D points to a 3D template (Deep3DFaceRecon ``POS``).

    Solves ``u_k ~ r1 . X_k + tx`` and ``v_k ~ r2 . X_k + ty`` independently for the two image axes. Both
    share the design matrix ``[X, 1]``, so the solution is one pseudo-inverse applied to each axis.

    Args:
        points_yup: ``(..., N, 2)`` points, y pointing *up* (the official convention for this fit).
        template: ``(N, 3)`` 3D points; defaults to :func:`alignment_template`.

    Returns:
        ``translation (..., 2)`` = ``(tx, ty)`` and ``scale (...)`` = ``(|r1| + |r2|) / 2`` (float64).
    """
    xp = _np(points_yup)
    x3 = alignment_template() if template is None else _np(template)
    design = np.concatenate([x3, np.ones((x3.shape[0], 1))], axis=1)  # (N, 4)
    coeffs = np.einsum("kn,...nc->...ck", np.linalg.pinv(design), xp)  # (..., 2, 4): rows (r1|tx), (r2|ty)
    scale = 0.5 * (np.linalg.norm(coeffs[..., 0, :3], axis=-1) + np.linalg.norm(coeffs[..., 1, :3], axis=-1))
    return coeffs[..., 3], scale


@dataclass(frozen=True)
class AlignParams:
    """Parameters of the official 512 crop of one image (the official ``trans_params`` plus output size).

    Attributes:
        width, height: size ``(W, H)`` of the source image in pixels.
        scale: resize factor ``s`` (``rescale_factor / fitted scale``).
        tx, ty: fitted translation in source pixels, **y-up** (``ty`` counts from the bottom row).
        target_size: side of the crop (512).
    """

    width: int
    height: int
    scale: float
    tx: float
    ty: float
    target_size: int = ALIGN_TARGET_SIZE

    @property
    def resized_size(self) -> tuple[int, int]:
        """``(w, h)`` of the resized image: ``W s`` and ``H s`` truncated to integers."""
        return int(self.width * self.scale), int(self.height * self.scale)

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` of the crop in the resized image (may extend past its borders).

        ``left``/``top`` are truncated toward zero, as numpy's ``astype(int32)`` does.
        """
        w, h = self.resized_size
        half = self.target_size / 2
        left = int(w / 2 - half + (self.tx - self.width / 2) * self.scale)
        top = int(h / 2 - half + (self.height / 2 - self.ty) * self.scale)
        return left, top, left + self.target_size, top + self.target_size

    def to_array(self) -> np.ndarray:
        """The official ``trans_params`` ``[W, H, s, tx, ty]`` (float64, shape ``(5,)``)."""
        return np.array([self.width, self.height, self.scale, self.tx, self.ty], dtype=np.float64)

    @classmethod
    def from_array(cls, trans_params: ArrayLike, target_size: int = ALIGN_TARGET_SIZE) -> AlignParams:
        """Inverse of :meth:`to_array`."""
        w, h, s, tx, ty = (float(v) for v in _np(trans_params).reshape(5))
        return cls(int(w), int(h), s, tx, ty, target_size)


def estimate_align_params(
    five_points: ArrayLike,
    image_size: tuple[int, int],
    target_size: int = ALIGN_TARGET_SIZE,
    rescale_factor: float = ALIGN_RESCALE_FACTOR,
    y_down: bool = True,
    template: ArrayLike | None = None,
) -> AlignParams:
    """Crop parameters from five points (see :func:`five_points_from_wflw98`).

    The same fit serves Deep3DFaceRecon's own 224 crop with its constants (``target_size=224``,
    ``rescale_factor=102``, ``template=BFM_FIVE_POINTS_3D``, see :func:`avatar.face.deep3d.align_image`).

    Args:
        five_points: ``(5, 2)`` points; image coordinates (y down) when ``y_down``, else already y-up.
        image_size: ``(W, H)`` of the source image.
        target_size: crop side (512).
        rescale_factor: projected template scale in the crop (180).
        y_down: flip the points as ``H - 1 - y`` first, as the official pipeline does.
        template: ``(5, 3)`` 3D points of the fit; default :func:`alignment_template` (the Portrait4D crop).
    """
    width, height = int(image_size[0]), int(image_size[1])
    pts = _np(five_points).reshape(5, 2).copy()
    if y_down:
        pts[:, 1] = height - 1 - pts[:, 1]
    t, fitted_scale = pos_fit(pts, template)
    if not np.isfinite(fitted_scale) or fitted_scale <= 0:
        raise InputError("the five alignment points are degenerate (zero fitted scale)")
    return AlignParams(
        width, height, float(rescale_factor / fitted_scale), float(t[0]), float(t[1]), target_size
    )


# ----------------------------------------------------------------------------------------------------------
# 512 crop: landmarks


def transform_landmarks(points: ArrayLike, params: AlignParams, y_down: bool = True) -> np.ndarray:
    """Map source landmarks into the aligned crop exactly as the official code maps them.

    Args:
        points: ``(..., N, >=2)`` source points; only x and y are used (the official code drops z).
        params: the crop.
        y_down: input in image coordinates (flipped as ``H - 1 - y``) and output flipped back as
            ``target_size - y``; ``False`` keeps both in y-up coordinates.

    Returns:
        ``(..., N, 2)`` float64 points in crop pixels, the convention of ``2dldmks_align``/``3dldmks_align``.
        The official image warp truncates sizes and offsets to integers while this map does not, so a point
        and the image content under it can disagree by up to about one pixel (as in the official data).
    """
    pts = _np(points)[..., :2].copy()
    if y_down:
        pts[..., 1] = params.height - 1 - pts[..., 1]
    w, h = params.resized_size
    half = params.target_size / 2
    out = np.empty_like(pts)
    out[..., 0] = (pts[..., 0] - params.tx + params.width / 2) * params.scale - (w / 2 - half)
    out[..., 1] = (pts[..., 1] - params.ty + params.height / 2) * params.scale - (h / 2 - half)
    if y_down:
        out[..., 1] = params.target_size - out[..., 1]
    return out


def inverse_transform_landmarks(points: ArrayLike, params: AlignParams, y_down: bool = True) -> np.ndarray:
    """Inverse of :func:`transform_landmarks`: ``(..., N, >=2)`` crop points -> ``(..., N, 2)`` source points."""
    pts = _np(points)[..., :2].copy()
    if y_down:
        pts[..., 1] = params.target_size - pts[..., 1]
    w, h = params.resized_size
    half = params.target_size / 2
    out = np.empty_like(pts)
    out[..., 0] = (pts[..., 0] + (w / 2 - half)) / params.scale + params.tx - params.width / 2
    out[..., 1] = (pts[..., 1] + (h / 2 - half)) / params.scale + params.ty - params.height / 2
    if y_down:
        out[..., 1] = params.height - 1 - out[..., 1]
    return out


# ----------------------------------------------------------------------------------------------------------
# 512 crop: image

_MAX_FULL_RESIZE_PIXELS = 4096 * 4096


def _crop_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start + length - 1`` clamped to ``[0, size)`` (edge padding + crop)."""
    return np.clip(np.arange(start, start + length), 0, size - 1)


_RESAMPLE = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _warp_numpy(
    image: np.ndarray, params: AlignParams, max_full_resize_pixels: int, resample: str, padding: str
) -> np.ndarray:
    """PIL path: resize, pad, crop (the official steps)."""
    if resample not in _RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    if padding not in ("edge", "zeros"):
        raise ValueError(f"padding must be 'edge' or 'zeros', got {padding!r}")
    crop = _warp_numpy_edge(image, params, max_full_resize_pixels, _RESAMPLE[resample])
    if padding == "zeros":  # PIL's crop outside the image (Deep3DFaceRecon): black
        w, h = params.resized_size
        left, top, _, _ = params.crop_box
        n = params.target_size
        rows, cols = np.arange(top, top + n), np.arange(left, left + n)
        crop = crop.copy()
        crop[(rows < 0) | (rows >= h)] = 0
        crop[:, (cols < 0) | (cols >= w)] = 0
    return crop


def _warp_numpy_edge(image: np.ndarray, params: AlignParams, max_full_resize_pixels: int, resample: int) -> np.ndarray:
    """Resize with ``resample``, edge padding, crop."""
    if image.dtype != np.uint8:
        raise TypeError(f"numpy images must be uint8, got {image.dtype}")
    if image.shape[:2] != (params.height, params.width):
        raise ValueError(
            f"image is {image.shape[:2]} (H, W) but params are for {(params.height, params.width)}"
        )
    pil = Image.fromarray(image)
    w, h = params.resized_size
    left, top, _, _ = params.crop_box
    n = params.target_size
    if w * h <= max_full_resize_pixels:
        resized = np.asarray(pil.resize((w, h), resample=resample))
        return resized[_crop_indices(top, n, h)][:, _crop_indices(left, n, w)]
    # Very large resized image: resample only the visible part. PIL's box resize uses the same sample
    # positions and filter support; fixed-point rounding differs from a full resize by at most one level.
    x0, x1 = max(left, 0), min(left + n, w)
    y0, y1 = max(top, 0), min(top + n, h)
    if x0 >= x1 or y0 >= y1:  # crop entirely outside: only the nearest edge pixels are visible
        x0, x1 = min(max(left, 0), w - 1), min(max(left, 0), w - 1) + 1
        y0, y1 = min(max(top, 0), h - 1), min(max(top, 0), h - 1) + 1
    box = (x0 * params.width / w, y0 * params.height / h, x1 * params.width / w, y1 * params.height / h)
    part = np.asarray(pil.resize((x1 - x0, y1 - y0), resample=resample, box=box))
    rows = _crop_indices(top, n, h).clip(y0, y1 - 1) - y0
    cols = _crop_indices(left, n, w).clip(x0, x1 - 1) - x0
    return part[rows][:, cols]


def _warp_torch_one(image: Tensor, params: AlignParams) -> Tensor:
    """``(C, H, W)`` float -> ``(C, n, n)``: same integer geometry, bicubic (antialiased when shrinking)."""
    w, h = params.resized_size
    left, top, _, _ = params.crop_box
    n = params.target_size
    dev = image.device
    rows = torch.from_numpy(_crop_indices(top, n, h)).to(dev)
    cols = torch.from_numpy(_crop_indices(left, n, w)).to(dev)
    if params.scale < 1.0:
        resized = F.interpolate(
            image[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False
        )[0]
        return resized[:, rows][:, :, cols]
    # Upsampling: sample the source directly at the resized pixel centres (no need to build the big image).
    src_x = (cols.to(image.dtype) + 0.5) * (params.width / w) - 0.5
    src_y = (rows.to(image.dtype) + 0.5) * (params.height / h) - 0.5
    gx = (2 * src_x + 1) / params.width - 1
    gy = (2 * src_y + 1) / params.height - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]  # (1, n, n, 2) as (x, y)
    return F.grid_sample(image[None], grid, mode="bicubic", padding_mode="border", align_corners=False)[0]


def warp_to_aligned(
    image: np.ndarray | Tensor,
    params: AlignParams | Sequence[AlignParams],
    max_full_resize_pixels: int = _MAX_FULL_RESIZE_PIXELS,
    resample: str = "lanczos",
    padding: str = "edge",
) -> np.ndarray | Tensor:
    """Warp an image to its aligned crop.

    Args:
        image: numpy ``(H, W, 3)`` / ``(H, W)`` uint8 (PIL Lanczos, the official resampling: bit-identical
            to the official crop), or a torch ``(C, H, W)`` / ``(B, C, H, W)`` tensor, float or uint8 (bicubic,
            antialiased when shrinking; same integer geometry, a few grey levels from Lanczos).
        params: one :class:`AlignParams`, or ``B`` of them for a batch tensor.
        max_full_resize_pixels: numpy path only; above this resized size only the visible region is
            resampled (at most one grey level from the full resize, on very few pixels).
        resample: numpy path only: ``'lanczos'`` (the Portrait4D crop), ``'bilinear'`` (Portrait4D's
            Deep3DFaceRecon crop) or ``'bicubic'`` (Deep3DFaceRecon @ 6ba3d22 and EG3D's crop, used by GOHA).
        padding: numpy path only: ``'edge'`` (the Portrait4D crop) or ``'zeros'`` (Deep3DFaceRecon).

    Returns:
        ``(n, n, 3)`` uint8 for numpy input; ``(C, n, n)`` / ``(B, C, n, n)`` of the input dtype for tensors.
    """
    if isinstance(image, np.ndarray):
        if not isinstance(params, AlignParams):
            raise TypeError("a numpy image takes a single AlignParams")
        return _warp_numpy(image, params, max_full_resize_pixels, resample, padding)
    batched = image.dim() == 4
    images = image if batched else image[None]
    plist = [params] * images.shape[0] if isinstance(params, AlignParams) else list(params)
    if len(plist) != images.shape[0]:
        raise ValueError(f"{len(plist)} params for a batch of {images.shape[0]}")
    is_uint8 = images.dtype == torch.uint8
    work = images.float() if is_uint8 or not images.is_floating_point() else images
    out = torch.stack([_warp_torch_one(img, p) for img, p in zip(work, plist, strict=True)])
    if is_uint8:
        out = out.round().clamp(0, 255).to(torch.uint8)
    return out if batched else out[0]


def align_face(
    image: np.ndarray | Tensor,
    landmarks: ArrayLike,
    target_size: int = ALIGN_TARGET_SIZE,
    rescale_factor: float = ALIGN_RESCALE_FACTOR,
) -> tuple[np.ndarray | Tensor, AlignParams, np.ndarray]:
    """Official 512 crop of one face from its WFLW-98 (or 5-point, or iBUG-68) landmarks.

    Args:
        image: numpy ``(H, W, 3)`` uint8 or torch ``(C, H, W)``.
        landmarks: ``(98, 2)``, ``(68, 2)`` or ``(5, 2)`` in image coordinates.

    Returns:
        The crop, its :class:`AlignParams`, and the landmarks mapped into the crop ``(N, 2)``.
    """
    lm = _np(landmarks)
    n_points = lm.shape[-2]
    five = {98: five_points_from_wflw98, 68: five_points_from_68}.get(n_points, lambda x: x)(lm)
    if isinstance(image, np.ndarray):
        size = (image.shape[1], image.shape[0])
    else:
        size = (image.shape[-1], image.shape[-2])
    params = estimate_align_params(five, size, target_size, rescale_factor)
    return warp_to_aligned(image, params), params, transform_landmarks(lm, params)


# ----------------------------------------------------------------------------------------------------------
# PD-FGC crop


def pdfgc_keypoints(landmarks68: Tensor) -> Tensor:
    """``(B, 68, >=2)`` -> ``(B, 3, 2)``: left-eye (36-41), right-eye (42-47) and inner-mouth (60-67) centres."""
    lm = landmarks68[..., :2]
    return torch.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1), lm[:, 60:68].mean(1)], dim=1)


def similarity_matrix(src: Tensor, dst: Tensor) -> Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama's closed form, as ``skimage.transform.SimilarityTransform.estimate``; computed in float64.

    Args:
        src: ``(B, N, 2)`` points.
        dst: ``(B, N, 2)`` or ``(N, 2)`` targets.

    Returns:
        ``(B, 3, 3)`` float64 homogeneous matrices ``M`` with ``dst ~ M [src; 1]``. A degenerate fit (zero
        determinant) gives the identity, as in the official ``estimate_norm_pdfgc``.
    """
    src = src.double()
    dst = dst.double().to(src.device).expand_as(src)
    b, n, d = src.shape
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.transpose(1, 2) @ src_c / n  # (B, 2, 2)
    u, sing, vh = torch.linalg.svd(cov)
    sign = torch.ones(b, d, dtype=src.dtype, device=src.device)
    sign[:, -1] = torch.where(torch.linalg.det(cov) < 0, -1.0, 1.0)
    rank = (sing > 1e-12 * sing[:, :1].clamp_min(1e-300)).sum(-1)
    # Rank-deficient covariance: skimage keeps the rotation proper through det(U) det(V) instead.
    det_uv = torch.linalg.det(u) * torch.linalg.det(vh)
    sign_deficient = torch.ones_like(sign)
    sign_deficient[:, -1] = torch.where(det_uv > 0, 1.0, -1.0)
    sign = torch.where((rank == d - 1)[:, None], sign_deficient, sign)
    rot = u @ torch.diag_embed(sign) @ vh
    var_src = src_c.pow(2).sum((1, 2)) / n
    scale = (sing * sign).sum(-1) / var_src
    m = torch.eye(3, dtype=src.dtype, device=src.device).repeat(b, 1, 1)
    m[:, :2, :2] = scale[:, None, None] * rot
    m[:, :2, 2] = dst_mean[:, 0] - (m[:, :2, :2] @ src_mean.transpose(1, 2))[..., 0]
    degenerate = (rank == 0) | (torch.linalg.det(m) == 0)
    return torch.where(degenerate[:, None, None], torch.eye(3, dtype=m.dtype, device=m.device), m)


def pdfgc_affine(landmarks68: Tensor, image_size: int, reverse_y: bool = False) -> Tensor:
    """``(B, 2, 3)`` float32 matrices from image pixels to the 224 PD-FGC frame (``estimate_norm_pdfgc``).

    Args:
        landmarks68: ``(B, 68, >=2)`` landmarks of the aligned image.
        image_size: the size used for ``reverse_y`` (the official code passes the image *width*).
        reverse_y: flip the landmarks as ``image_size - 1 - y`` first. ``False`` (the default of
            ``get_motion_feature``) for the y-down ``3dldmks_align`` landmarks; the training losses use
            ``True`` for y-up projected FLAME landmarks.
    """
    keypoints = pdfgc_keypoints(landmarks68).double()
    if reverse_y:
        keypoints = torch.stack([keypoints[..., 0], image_size - 1 - keypoints[..., 1]], dim=-1)
    template = torch.tensor(PDFGC_TEMPLATE, dtype=torch.float64, device=keypoints.device)
    return similarity_matrix(keypoints, template)[:, :2].float()


def warp_affine(
    images: Tensor, matrices: Tensor, dsize: tuple[int, int], padding_mode: str = "zeros"
) -> Tensor:
    """Bilinear affine warp with pixel-index coordinates (``kornia.geometry.warp_affine`` defaults).

    Output pixel ``(x, y)`` samples the input at ``M^-1 (x, y, 1)``, pixel centres at integer positions
    (``align_corners=True``), zeros outside.

    Args:
        images: ``(B, C, H, W)`` float.
        matrices: ``(B, 2, 3)`` source-pixel -> destination-pixel maps.
        dsize: output ``(height, width)``.

    Returns:
        ``(B, C, dsize[0], dsize[1])``.
    """
    b, _, h, w = images.shape
    dev = images.device
    m = torch.eye(3, dtype=torch.float64, device=dev).repeat(b, 1, 1)
    m[:, :2] = matrices.to(device=dev, dtype=torch.float64)
    inv = torch.linalg.inv(m)[:, :2]  # (B, 2, 3)
    ys, xs = torch.meshgrid(
        torch.arange(dsize[0], dtype=torch.float64, device=dev),
        torch.arange(dsize[1], dtype=torch.float64, device=dev),
        indexing="ij",
    )
    dst = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # (1, P, 3)
    src = dst @ inv.transpose(1, 2)  # (B, P, 2) source pixels
    norm = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64, device=dev)
    grid = (src * norm - 1).reshape(b, dsize[0], dsize[1], 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def pdfgc_crop(
    images: Tensor,
    landmarks68: Tensor,
    crop_size: int = PDFGC_CROP_SIZE,
    crop_len: int = PDFGC_CROP_LEN,
    reverse_y: bool = False,
) -> Tensor:
    """PD-FGC motion-encoder input from aligned images and their 68 3D landmarks (``get_motion_feature``).

    Args:
        images: ``(B, 3, H, W)`` float in ``[-1, 1]`` (the aligned 512 crops).
        landmarks68: ``(B, 68, >=2)`` landmarks in image pixels (y down unless ``reverse_y``).
        crop_size: output side and warp size (224; the official warp is always 224).
        crop_len: border trimmed before the resize: rows ``[0, crop_size - 2 crop_len)`` and columns
            ``[crop_len, crop_size - crop_len)`` are kept.
        reverse_y: see :func:`pdfgc_affine`.

    Returns:
        ``(B, 3, crop_size, crop_size)`` clamped to ``[-1, 1]``.
    """
    matrices = pdfgc_affine(landmarks68, images.shape[-1], reverse_y=reverse_y)
    warped = warp_affine(images, matrices, (PDFGC_CROP_SIZE, PDFGC_CROP_SIZE))
    warped = warped[:, :, : crop_size - 2 * crop_len, crop_len : crop_size - crop_len]
    resized = F.interpolate(warped, size=(crop_size, crop_size), mode="bilinear", align_corners=False)
    return resized.clamp(-1, 1)


# ----------------------------------------------------------------------------------------------------------
# Rotations, head pose, camera label


def _axis_rotation(angle: Tensor, axis: int) -> Tensor:
    """``(...,)`` angles -> ``(..., 3, 3)`` right-handed rotations about ``x`` (0), ``y`` (1) or ``z`` (2)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == 1:
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def euler_xyz_to_matrix(euler: Tensor) -> Tensor:
    """Extrinsic x-y-z Euler angles ``(..., 3)`` -> ``Rz(c) Ry(b) Rx(a)`` ``(..., 3, 3)``.

    This is scipy's ``Rotation.from_euler('xyz', ...)`` (lower case: extrinsic) and also Deep3DFaceRecon's
    head rotation from its three ``angle`` coefficients.
    """
    return (
        _axis_rotation(euler[..., 2], 2) @ _axis_rotation(euler[..., 1], 1) @ _axis_rotation(euler[..., 0], 0)
    )


def bfm_angles_to_rotation(angles: Tensor) -> Tensor:
    """Deep3DFaceRecon ``angle`` coefficients ``(..., 3)`` (x, y, z) -> head rotation ``(..., 3, 3)``."""
    return euler_xyz_to_matrix(angles)


def matrix_to_axis_angle(rot: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation matrices -> ``(..., 3)`` rotation vectors, angle in ``[0, pi]``.

    Goes through a unit quaternion built from its largest component (stable for every angle) with a
    non-negative real part, like scipy's ``as_rotvec``.
    """
    m = rot
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 |q_i|^2 for q = (w, x, y, z)
    four_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )
    big = four_sq.argmax(-1, keepdim=True)  # (..., 1)
    root = torch.sqrt(four_sq.gather(-1, big).clamp_min(0))  # 2 |q_big|
    wx, wy, wz = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    xy, xz, yz = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    # Each row is 4 q_big * q (up to the common factor), for q_big = w, x, y, z respectively.
    cand = torch.stack(
        [
            torch.stack([four_sq[..., 0], wx, wy, wz], -1),
            torch.stack([wx, four_sq[..., 1], xy, xz], -1),
            torch.stack([wy, xy, four_sq[..., 2], yz], -1),
            torch.stack([wz, xz, yz, four_sq[..., 3]], -1),
        ],
        dim=-2,
    )  # (..., 4, 4)
    q = cand.gather(-2, big[..., None].expand(*big.shape[:-1], 1, 4))[..., 0, :] / (2 * root)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., :1] < 0, -q, q)
    vec, w = q[..., 1:], q[..., 0]
    vnorm = vec.norm(dim=-1)
    angle = 2 * torch.atan2(vnorm, w)
    factor = torch.where(vnorm > 1e-7, angle / vnorm.clamp_min(1e-30), 2 / w.clamp_min(1e-30))
    return vec * factor[..., None]


def bfm_angles_to_flame_pose(angles: Tensor, rectify: bool = True) -> Tensor:
    """Deep3DFaceRecon angles ``(..., 3)`` -> FLAME global/neck rotation vectors ``(..., 3)``.

    The BFM rotation ``Rz Ry Rx`` is used as is; with ``rectify`` (the official default) it is pre-multiplied
    by the fixed rotation :data:`BFM_TO_FLAME_EULER` that aligns the two canonical head poses.
    """
    rot = bfm_angles_to_rotation(angles)
    if rectify:
        offset = torch.tensor(BFM_TO_FLAME_EULER, dtype=rot.dtype, device=rot.device)
        rot = euler_xyz_to_matrix(offset) @ rot
    return matrix_to_axis_angle(rot)


def camera_label_from_pose(
    pose: Tensor,
    translation: Sequence[float] = INFERENCE_TRANSLATION,
    fov_deg: float = PORTRAIT4D_FOV_DEG,
) -> Tensor:
    """The camera part ``(B, 25)`` of a ``bfm2flame_params_simplified`` label from its head pose.

    ``cam2world = [[R, R t], [0, 1]]`` with ``R = rodrigues(-neck_pose)`` and ``t = (0, 0.01, 4.2)``: the
    inference camera rotated by the inverse head rotation. In the ``flame_optim_params`` labels the rotation
    is the same but the translation is optimised, so only ``cam2world[:3, :3]`` can be recomputed there.

    Args:
        pose: ``(B, 3)`` neck rotation vectors or ``(B, 6)`` FLAME pose (neck + jaw); float32 recommended.
        translation: camera position before the rotation.
        fov_deg: full field of view of the normalised intrinsics.
    """
    neck = pose[:, :3]
    rot = batch_rodrigues(-neck)  # (B, 3, 3)
    t = torch.tensor(translation, dtype=rot.dtype, device=rot.device)
    cam2world = torch.eye(4, dtype=rot.dtype, device=rot.device).repeat(rot.shape[0], 1, 1)
    cam2world[:, :3, :3] = rot
    cam2world[:, :3, 3] = rot @ t
    k = make_intrinsics(focal_from_fov(fov_deg), rot.shape[0], device=rot.device, dtype=rot.dtype)
    return make_label(cam2world, k)


@dataclass
class FlameLabel:
    """The 437-float Portrait4D FLAME label, split into its parts (leading batch dimensions ``...`` kept).

    Attributes:
        camera: ``(..., 25)`` row-major cam2world 4x4 (16) + normalised intrinsics 3x3 (9).
        shape: ``(..., 300)`` identity coefficients.
        expression: ``(..., 100)`` expression coefficients.
        pose: ``(..., 6)`` neck (global) rotation vector + jaw rotation vector.
        eye_pose: ``(..., 6)`` left + right eye rotation vectors.
    """

    camera: Tensor
    shape: Tensor
    expression: Tensor
    pose: Tensor
    eye_pose: Tensor

    SLICES: ClassVar[dict[str, slice]] = {
        "camera": slice(0, 25),
        "shape": slice(25, 325),
        "expression": slice(325, 425),
        "pose": slice(425, 431),
        "eye_pose": slice(431, 437),
    }

    @classmethod
    def from_label(cls, label: ArrayLike) -> FlameLabel:
        """Split a ``(..., 437)`` label (numpy or torch; numpy becomes a torch tensor of the same dtype)."""
        t = label if isinstance(label, Tensor) else torch.from_numpy(np.asarray(label))
        if t.shape[-1] != FLAME_LABEL_DIM:
            raise ValueError(f"expected a (..., {FLAME_LABEL_DIM}) label, got {tuple(t.shape)}")
        return cls(**{name: t[..., sl] for name, sl in cls.SLICES.items()})

    def to_label(self) -> Tensor:
        """Concatenate back into ``(..., 437)``."""
        return torch.cat([self.camera, self.shape, self.expression, self.pose, self.eye_pose], dim=-1)

    @property
    def cam2world(self) -> Tensor:
        """``(..., 4, 4)``."""
        return self.camera[..., :16].reshape(*self.camera.shape[:-1], 4, 4)

    @property
    def intrinsics(self) -> Tensor:
        """``(..., 3, 3)`` normalised intrinsics."""
        return self.camera[..., 16:25].reshape(*self.camera.shape[:-1], 3, 3)

    @property
    def neck_pose(self) -> Tensor:
        """``(..., 3)``."""
        return self.pose[..., :3]

    @property
    def jaw_pose(self) -> Tensor:
        """``(..., 3)``."""
        return self.pose[..., 3:6]

    def with_camera_from_pose(self) -> FlameLabel:
        """A copy whose camera is recomputed from the neck pose (:func:`camera_label_from_pose`)."""
        lead = self.pose.shape[:-1]
        cam = camera_label_from_pose(self.pose.reshape(-1, 6)).reshape(*lead, 25).to(self.camera.dtype)
        return FlameLabel(cam, self.shape, self.expression, self.pose, self.eye_pose)
