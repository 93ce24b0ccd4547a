"""PD-FGC motion encoder (Portrait4D's ``models/pdfgc``: ``FanEncoder`` + ``FAN_use``), in plain PyTorch.

Portrait4D describes the driving motion by a 548-d vector: ``eye (6) | emotion (30) | mouth (512)`` from
PD-FGC's ``FanEncoder`` run on a 224x224 crop (``gen_images_portrait4d.py::get_motion_feature``).

Network (:class:`PDFGCEncoder`, attribute names as upstream so ``motion_model.pth`` loads by name):

* ``model`` (:class:`FanFeatureExtractor`, upstream ``FAN_use``): 7x7/2 conv + BN + ReLU, ConvBlock 64->128,
  2x2 max pool, ConvBlocks 128->128->256, one hourglass (depth 4, max pooling, bilinear upsampling, dropout 0.5
  on the upper branch), ``top_m_0``, ``conv_last0``, ``bn_end0``, ReLU, ``l0`` (68 heatmaps at 56x56), then
  ReLU(``bn5``), ``conv6`` (68->1, 3x3 stride 2 -> 28x28), flatten, ReLU, ``fc`` (784 -> 512).
* Heads ``to_mouth``, ``to_headpose``, ``to_eye``, ``to_emo``: ``Linear(512, 512), ReLU, BatchNorm1d(512),
  Linear(512, 512)``; embeddings ``headpose_embed`` (6), ``eye_embed`` (6), ``emo_embed`` (30): ``ReLU, Linear``.
  ``mouth_embed`` (``ReLU, Linear(512, 500)``) has parameters but is not used by the forward pass: the mouth
  part of the motion is the 512-d ``to_mouth`` feature itself. The head-pose output is unused by Portrait4D.

Weights: upstream loads ``motion_model.pth`` with ``strict=False``, so any checkpoint key that the module does not
have is silently dropped (and any missing key would keep its random init). :meth:`PDFGCEncoder.load_official`
requires every module key (shapes checked) and returns the checkpoint keys it ignored.

Input crop (:func:`motion_crop`): the similarity transform taking the centres of landmarks 36-41, 42-47 and
60-67 (68-point layout, pixels, y down) to ``(87, 59), (137, 59), (112, 120)`` warps the [-1, 1] RGB image to
224x224 (bilinear, zeros outside, pixel-corner-aligned as ``kornia.warp_affine``); rows ``[0, 192)`` and columns
``[16, 208)`` are cut out, resized back to 224x224 (bilinear) and clamped to [-1, 1].
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.face.fan3d import ConvBlock, HourGlass, read_converted_weights, strip_common_prefix

__all__ = [
    "MOTION_TEMPLATE_224",
    "FanFeatureExtractor",
    "MotionOutputs",
    "PDFGCConfig",
    "PDFGCEncoder",
    "motion_alignment_matrix",
    "motion_crop",
    "similarity_transform",
    "three_point_landmarks",
    "warp_affine",
]

logger = logging.getLogger(__name__)

MOTION_TEMPLATE_224 = np.array([[87.0, 59.0], [137.0, 59.0], [112.0, 120.0]], dtype=np.float32)
"""Targets (224-pixel frame) of the left-eye, right-eye and inner-mouth centres."""
CROP_SIZE = 224
CROP_MARGIN = 16


@dataclass(frozen=True)
class PDFGCConfig:
    """Sizes of the motion encoder. Defaults are the released ``motion_model.pth``."""

    stem_channels: int = 64
    mid_channels: int = 128
    features: int = 256
    hourglass_depth: int = 4
    num_landmarks: int = 68
    feature_dim: int = 512
    pose_dim: int = 6
    eye_dim: int = 6
    emo_dim: int = 30
    input_size: int = 224
    dropout: float = 0.5

    @property
    def pooled_size(self) -> int:
        """Side of the map entering ``fc``: input / 8 (stride-2 conv, max pool, stride-2 ``conv6``)."""
        return self.input_size // 8

    @property
    def motion_dim(self) -> int:
        """Width of the Portrait4D motion vector, ``eye + emotion + feature`` (548)."""
        return self.eye_dim + self.emo_dim + self.feature_dim

    @classmethod
    def tiny(cls) -> PDFGCConfig:
        """Same code path and input size (56x56 heatmaps, odd sizes inside the hourglass), narrow."""
        return replace(cls(), stem_channels=8, mid_channels=8, features=16, feature_dim=24)


def _head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.BatchNorm1d(dim), nn.Linear(dim, dim))


def _embed(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.ReLU(), nn.Linear(dim, out))


class FanFeatureExtractor(nn.Module):
    """Upstream ``FAN_use``: image ``(B, 3, 224, 224)`` in [-1, 1] -> feature ``(B, 512)``."""

    def __init__(self, config: PDFGCConfig) -> None:
        super().__init__()
        c = self.config = config
        self.conv1 = nn.Conv2d(3, c.stem_channels, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(c.stem_channels)
        self.conv2 = ConvBlock(c.stem_channels, c.mid_channels)
        self.conv3 = ConvBlock(c.mid_channels, c.mid_channels)
        self.conv4 = ConvBlock(c.mid_channels, c.features)
        self.m0 = HourGlass(c.hourglass_depth, c.features, pool="max", upsample="bilinear", dropout=c.dropout)
        self.top_m_0 = ConvBlock(c.features, c.features)
        self.conv_last0 = nn.Conv2d(c.features, c.features, kernel_size=1)
        self.l0 = nn.Conv2d(c.features, c.num_landmarks, kernel_size=1)
        self.bn_end0 = nn.BatchNorm2d(c.features)
        self.conv6 = nn.Conv2d(c.num_landmarks, 1, kernel_size=3, stride=2, padding=1)
        self.fc = nn.Linear(c.pooled_size**2, c.feature_dim)
        self.bn5 = nn.BatchNorm2d(c.num_landmarks)

    def heatmaps(self, x: Tensor) -> Tensor:
        """The 68 landmark heatmaps ``(B, 68, 56, 56)`` (before ``bn5``)."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(self.conv2(x), 2)
        x = self.conv4(self.conv3(x))
        y = self.top_m_0(self.m0(x))
        y = self.bn_end0(self.conv_last0(y))
        return self.l0(F.relu(y))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv6(F.relu(self.bn5(self.heatmaps(x))))
        return self.fc(F.relu(torch.flatten(y, 1)))


class MotionOutputs(NamedTuple):
    """Outputs of :class:`PDFGCEncoder`, in upstream order."""

    headpose: Tensor
    """``(B, 6)``; not used by Portrait4D."""
    eye: Tensor
    """``(B, 6)``."""
    emotion: Tensor
    """``(B, 30)``."""
    mouth: Tensor
    """``(B, 512)`` (the ``to_mouth`` feature; ``mouth_embed`` is not applied)."""


class PDFGCEncoder(nn.Module):
    """Upstream ``FanEncoder``: crop ``(B, 3, 224, 224)`` in [-1, 1] -> :class:`MotionOutputs`;
    :meth:`motion` gives Portrait4D's ``(B, 548)`` vector."""

    def __init__(self, config: PDFGCConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or PDFGCConfig()
        d = c.feature_dim
        self.model = FanFeatureExtractor(c)
        self.to_mouth = _head(d)
        self.mouth_embed = _embed(d, d - c.pose_dim - c.eye_dim)
        self.to_headpose = _head(d)
        self.headpose_embed = _embed(d, c.pose_dim)
        self.to_eye = _head(d)
        self.eye_embed = _embed(d, c.eye_dim)
        self.to_emo = _head(d)
        self.emo_embed = _embed(d, c.emo_dim)

    def forward(self, x: Tensor) -> MotionOutputs:
        f = self.model(x)
        return MotionOutputs(
            headpose=self.headpose_embed(self.to_headpose(f)),
            eye=self.eye_embed(self.to_eye(f)),
            emotion=self.emo_embed(self.to_emo(f)),
            mouth=self.to_mouth(f),
        )

    def motion(self, x: Tensor) -> Tensor:
        """Crop ``(B, 3, 224, 224)`` -> ``cat(eye, emotion, mouth)`` ``(B, 548)``."""
        out = self(x)
        return torch.cat([out.eye, out.emotion, out.mouth], dim=-1)

    def motion_from_image(self, images: Tensor, landmarks: Tensor) -> Tensor:
        """``get_motion_feature``: images ``(B, 3, H, W)`` in [-1, 1] and 68 landmarks ``(B, 68, >=2)`` in
        pixels (y down) -> ``(B, 548)``."""
        return self.motion(motion_crop(images, landmarks))

    # ---- weights ------------------------------------------------------------------------------------
    def load_official(self, state: Mapping[str, Tensor]) -> list[str]:
        """Load ``motion_model.pth``: every module key must be present with its shape (``strict=True`` on the
        module's keys; a ``module.`` prefix on all keys is dropped). Returns the checkpoint keys that the module
        does not have, which upstream's ``strict=False`` drops silently."""
        given = strip_common_prefix(state, "module.")
        own = set(self.state_dict())
        ignored = sorted(k for k in given if k not in own)
        if ignored:
            logger.info("PD-FGC checkpoint: %d keys not used by FanEncoder: %s", len(ignored), ignored[:8])
        self.load_state_dict({k: v for k, v in given.items() if k in own}, strict=True)
        return ignored

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, device: torch.device | str = "cpu") -> PDFGCEncoder:
        """The official encoder (registry key ``pdfgc-motion``), in eval mode."""
        model = cls()
        model.load_official(read_converted_weights("pdfgc-motion", local_dir))
        return model.eval().to(device)


# --------------------------------------------------------------------------------------------------------
# input crop


def three_point_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """68-point landmarks ``(68, >=2)`` -> ``(3, 2)``: means of points 36-41 (left eye), 42-47 (right eye) and
    60-67 (inner mouth)."""
    lm = np.asarray(landmarks)[:, :2]
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[60:68].mean(0)], axis=0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; reflections excluded) mapping
    ``src (N, 2)`` onto ``dst (N, 2)`` (Umeyama 1991, as ``skimage.transform.SimilarityTransform.estimate``).
    Returns the ``(3, 3)`` float64 matrix; ``NaN`` when ``src`` is a single repeated point."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    t = np.eye(dim + 1)
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            t[:dim, :dim] = u @ vt
        else:
            keep = d[-1]
            d[-1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ vt
            d[-1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ vt
    scale = (s @ d) / src_c.var(axis=0).sum()
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean)
    t[:dim, :dim] *= scale
    return t


def motion_alignment_matrix(landmarks: Tensor | np.ndarray) -> Tensor:
    """Landmarks ``(B, 68, >=2)`` (pixels, y down) -> affine matrices ``(B, 2, 3)`` float32 taking image pixels
    to the 224 motion frame (identity when the fit is singular, as upstream)."""
    lms = landmarks.detach().cpu().numpy() if isinstance(landmarks, Tensor) else np.asarray(landmarks)
    mats = []
    for lm in lms:
        m = similarity_transform(three_point_landmarks(lm), MOTION_TEMPLATE_224)
        if np.linalg.det(m) == 0:
            m = np.eye(3)
        mats.append(m[:2])
    device = landmarks.device if isinstance(landmarks, Tensor) else None
    return torch.tensor(np.array(mats), dtype=torch.float32, device=device)


def warp_affine(images: Tensor, matrices: Tensor, size: tuple[int, int]) -> Tensor:
    """``kornia.geometry.warp_affine`` with its defaults (bilinear, zero padding, ``align_corners=True``):
    output pixel ``p`` takes the input at ``M^-1 p`` (pixel centres at integer positions).
    ``images (B, C, H, W)``, ``matrices (B, 2, 3)``, ``size = (h, w)`` -> ``(B, C, h, w)``."""
    b, _, h_in, w_in = images.shape
    h_out, w_out = size
    full = torch.eye(3, dtype=torch.float64, device=images.device).repeat(b, 1, 1)
    full[:, :2] = matrices.double()
    inv = torch.linalg.inv(full)
    ys, xs = torch.meshgrid(
        torch.arange(h_out, dtype=torch.float64, device=images.device),
        torch.arange(w_out, dtype=torch.float64, device=images.device),
        indexing="ij",
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)
    src = pix @ inv.transpose(1, 2)  # (B, h*w, 3)
    gx = src[..., 0] * (2.0 / max(w_in - 1, 1e-14)) - 1.0
    gy = src[..., 1] * (2.0 / max(h_in - 1, 1e-14)) - 1.0
    grid = torch.stack([gx, gy], dim=-1).reshape(b, h_out, w_out, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def motion_crop(images: Tensor, landmarks: Tensor | np.ndarray) -> Tensor:
    """Images ``(B, 3, H, W)`` in [-1, 1] and 68 landmarks ``(B, 68, >=2)`` (pixels, y down) -> the encoder
    input ``(B, 3, 224, 224)``."""
    m = motion_alignment_matrix(landmarks).to(images.device)
    warped = warp_affine(images, m, (CROP_SIZE, CROP_SIZE))
    cut = warped[:, :, : CROP_SIZE - 2 * CROP_MARGIN, CROP_MARGIN : CROP_SIZE - CROP_MARGIN]
    return torch.clamp(F.interpolate(cut, size=[CROP_SIZE, CROP_SIZE], mode="bilinear"), -1, 1)
