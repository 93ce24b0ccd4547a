"""3DFAN: 68 facial landmarks in 3D (face-alignment's FAN-4 heatmaps + ResNetDepth), in plain PyTorch.

Portrait4D's preprocessing (``data_preprocess/lib/models/ldmk/ldmk.py::ldmk3dDetector``) runs two TorchScript
archives of the ``face-alignment`` package (``landmark3d/3DFAN4-4a694010b9.zip`` and ``depth-6c4283c0e0.zip``).
This module re-implements both networks with the same attribute names, so the tensors read out of the archives by
:func:`avatar.hub.formats.read_torchscript_archive` (no archive code is run) load with ``strict=True``:

* :class:`FAN`: 7x7/2 stem conv + 3 :class:`ConvBlock`, then ``num_modules`` stacked hourglasses
  (``m{i}``, ``top_m_{i}``, ``conv_last{i}``, ``bn_end{i}``, ``l{i}`` and, between stacks, ``bl{i}``/``al{i}``).
  Input ``(B, 3, 256, 256)`` RGB in [0, 1]; output the last stack's heatmaps ``(B, 68, 64, 64)``.
* :class:`ResNetDepth`: a ResNet-152 layout (Bottleneck ``[3, 8, 36, 3]``) whose stem takes ``3 + 68`` channels
  (the crop and 68 Gaussian heatmaps) and whose ``fc`` gives one depth per landmark. Its pooling is
  ``AvgPool2d(7)`` on an 8x8 map, i.e. only the top-left 7x7 window is averaged.

Pre/post-processing follows the official detector (same integer rounding):

1. :func:`crop_params_from_box`: centre of the detector box moved up by ``0.12 * box height``; scale
   ``(box width + box height) / 192`` (the detector's reference scale: 195 for face_alignment's SFD, see
   :mod:`avatar.face.fan2d`, which runs the same FAN and crop for 2DFAN4).
2. :func:`crop_face`: the 256x256 crop (integer corners, zero padding, OpenCV bilinear resize).
3. FAN -> :func:`decode_heatmaps` (arg-max, a quarter-pixel step towards the larger neighbour, minus 0.5)
   -> :func:`heatmap_to_image` (inverse crop transform, truncated to integers).
4. :func:`draw_landmark_heatmaps` at 256x256 (points x4, sigma 2) -> ResNetDepth -> ``z = depth * 200 * scale
   / 256``.

The blocks :class:`ConvBlock` and :class:`HourGlass` are shared with PD-FGC's motion encoder
(:mod:`avatar.motion.pdfgc`), which uses a one-stack variant with max pooling and bilinear upsampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

__all__ = [
    "REFERENCE_SCALE",
    "Bottleneck",
    "ConvBlock",
    "DepthConfig",
    "FAN",
    "FAN3DConfig",
    "FAN3DLandmarker",
    "FANConfig",
    "HourGlass",
    "ResNetDepth",
    "crop_face",
    "crop_params_from_box",
    "decode_heatmaps",
    "draw_landmark_heatmaps",
    "gaussian_kernel",
    "heatmap_to_image",
    "make_resnet_stages",
    "official_state",
]

DEPTH_FILE_KEY = "fan3d-depth"
"""Upstream file key of the ResNetDepth TorchScript archive (the FAN archive is the ``fan3d`` spec's checkpoint)."""

REFERENCE_SCALE = 192.0
"""Box size (pixels) that maps to ``scale = 1`` in the official 3DFAN crop (face-alignment's SFD uses 195)."""
CENTER_SHIFT = 0.12
"""The crop centre is moved up by this fraction of the detector box height."""
CROP_BASE = 200.0
"""A crop of ``scale = 1`` covers ``200`` source pixels."""


# --------------------------------------------------------------------------------------------------------
# building blocks (face-alignment names)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, bias=False)


class ConvBlock(nn.Module):
    """Pre-activation multi-scale residual block: three BN-ReLU-3x3 convs giving ``out/2``, ``out/4`` and
    ``out/4`` channels, concatenated; the shortcut is BN-ReLU-1x1 when ``cin != cout``.
    ``(B, cin, H, W)`` -> ``(B, cout, H, W)``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        if cout % 4:
            raise ValueError(f"ConvBlock output channels must be divisible by 4, got {cout}")
        half, quarter = cout // 2, cout // 4
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv3x3(cin, half)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = _conv3x3(half, quarter)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = _conv3x3(quarter, quarter)
        self.downsample: nn.Sequential | None = None
        if cin != cout:
            self.downsample = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(True), nn.Conv2d(cin, cout, kernel_size=1, bias=False)
            )

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.cat((a, b, c), dim=1) + shortcut


class HourGlass(nn.Module):
    """Recursive hourglass of :class:`ConvBlock` s, named ``b1_{level}``, ``b2_{level}``, ``b3_{level}`` and
    ``b2_plus_1`` at the bottom. ``(B, C, H, W)`` -> ``(B, C, H, W)``.

    Args:
        depth: number of levels (4 in both official networks).
        features: channels ``C``.
        pool: ``"avg"`` (face-alignment FAN) or ``"max"`` (PD-FGC), 2x2 stride 2, floor.
        upsample: ``"nearest"`` x2 (FAN) or ``"bilinear"`` to the upper branch's size (PD-FGC,
            ``align_corners=False``; works for odd sizes).
        dropout: probability of the dropout applied to the upper branch (PD-FGC: 0.5; inactive in eval).
    """

    def __init__(
        self,
        depth: int,
        features: int,
        pool: Literal["avg", "max"] = "avg",
        upsample: Literal["nearest", "bilinear"] = "nearest",
        dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.pool = pool
        self.upsample = upsample
        self.dropout = nn.Dropout(dropout) if dropout is not None else None
        for level in range(depth, 0, -1):  # registration order of the official recursion
            self.add_module(f"b1_{level}", ConvBlock(features, features))
            self.add_module(f"b2_{level}", ConvBlock(features, features))
        self.add_module("b2_plus_1", ConvBlock(features, features))
        for level in range(1, depth + 1):
            self.add_module(f"b3_{level}", ConvBlock(features, features))

    def _level(self, level: int, x: Tensor) -> Tensor:
        upper = self.get_submodule(f"b1_{level}")(x)
        if self.dropout is not None:
            upper = self.dropout(upper)
        lower = F.avg_pool2d(x, 2, stride=2) if self.pool == "avg" else F.max_pool2d(x, 2, stride=2)
        lower = self.get_submodule(f"b2_{level}")(lower)
        lower = self._level(level - 1, lower) if level > 1 else self.get_submodule("b2_plus_1")(lower)
        lower = self.get_submodule(f"b3_{level}")(lower)
        if self.upsample == "nearest":
            lower = F.interpolate(lower, scale_factor=2, mode="nearest")
        else:
            lower = F.interpolate(lower, size=upper.shape[-2:], mode="bilinear", align_corners=False)
        return upper + lower

    def forward(self, x: Tensor) -> Tensor:
        return self._level(self.depth, x)


# --------------------------------------------------------------------------------------------------------
# FAN


@dataclass(frozen=True)
class FANConfig(Config):
    """Sizes of the face-alignment FAN. Defaults are ``3DFAN4`` (4 stacks, 256 features, 68 points)."""

    num_modules: int = 4
    hourglass_depth: int = 4
    features: int = 256
    stem_channels: int = 64
    mid_channels: int = 128
    num_landmarks: int = 68
    input_size: int = 256
    """Crop side; the heatmaps are ``input_size / 4``."""

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 4

    @classmethod
    def tiny(cls) -> FANConfig:
        """Same code path (2 stacks, so the inter-stack branch runs), narrow and shallow; 256 input kept."""
        return replace(cls(), num_modules=2, hourglass_depth=2, features=16, stem_channels=8, mid_channels=8)


class FAN(nn.Module):
    """Stacked-hourglass landmark network. ``(B, 3, S, S)`` RGB in [0, 1] -> heatmaps ``(B, N, S/4, S/4)``
    of the last stack (what the TorchScript archive returns); :meth:`forward_all` gives every stack's."""

    def __init__(self, config: FANConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or FANConfig()
        self.conv1 = nn.Conv2d(3, cfg.stem_channels, kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(cfg.stem_channels)
        self.conv2 = ConvBlock(cfg.stem_channels, cfg.mid_channels)
        self.conv3 = ConvBlock(cfg.mid_channels, cfg.mid_channels)
        self.conv4 = ConvBlock(cfg.mid_channels, cfg.features)
        f, n = cfg.features, cfg.num_landmarks
        for i in range(cfg.num_modules):
            self.add_module(f"m{i}", HourGlass(cfg.hourglass_depth, f, pool="avg", upsample="nearest"))
            self.add_module(f"top_m_{i}", ConvBlock(f, f))
            self.add_module(f"conv_last{i}", nn.Conv2d(f, f, kernel_size=1))
            self.add_module(f"bn_end{i}", nn.BatchNorm2d(f))
            self.add_module(f"l{i}", nn.Conv2d(f, n, kernel_size=1))
            if i < cfg.num_modules - 1:
                self.add_module(f"bl{i}", nn.Conv2d(f, f, kernel_size=1))
                self.add_module(f"al{i}", nn.Conv2d(n, f, kernel_size=1))

    def forward_all(self, x: Tensor) -> list[Tensor]:
        """Heatmaps of every stack, ``num_modules`` tensors ``(B, N, S/4, S/4)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))
        previous = x
        outputs: list[Tensor] = []
        for i in range(self.config.num_modules):
            y = self.get_submodule(f"top_m_{i}")(self.get_submodule(f"m{i}")(previous))
            y = F.relu(self.get_submodule(f"bn_end{i}")(self.get_submodule(f"conv_last{i}")(y)))
            heatmaps = self.get_submodule(f"l{i}")(y)
            outputs.append(heatmaps)
            if i < self.config.num_modules - 1:
                previous = previous + self.get_submodule(f"bl{i}")(y) + self.get_submodule(f"al{i}")(heatmaps)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_all(x)[-1]


# --------------------------------------------------------------------------------------------------------
# ResNetDepth


@dataclass(frozen=True)
class DepthConfig(Config):
    """Sizes of face-alignment's ResNetDepth. Defaults are the released ``depth`` network."""

    layers: tuple[int, int, int, int] = (3, 8, 36, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_channels: int = 64
    num_landmarks: int = 68
    pool_kernel: int = 7
    """``AvgPool2d`` kernel (= stride) on the last map; 7 on an 8x8 map keeps only the top-left 7x7 window."""
    input_size: int = 256

    @property
    def in_channels(self) -> int:
        return 3 + self.num_landmarks

    @classmethod
    def tiny(cls) -> DepthConfig:
        """Same code path and input size (8x8 last map, 7x7 pooling), narrow and shallow."""
        return replace(cls(), layers=(1, 1, 2, 1), widths=(4, 8, 8, 16), stem_channels=8)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), expansion 4, torchvision names."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def make_resnet_stages(
    stem_channels: int, layers: Sequence[int], widths: Sequence[int]
) -> tuple[list[nn.Sequential], int]:
    """The four torchvision-style ``layer{1..4}`` stages of Bottleneck blocks (strides 1, 2, 2, 2).
    Returns the stages and the output channels."""
    stages: list[nn.Sequential] = []
    cin = stem_channels
    for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
        blocks = [Bottleneck(cin, width, stride=1 if i == 0 else 2)]
        cin = width * Bottleneck.expansion
        blocks += [Bottleneck(cin, width) for _ in range(1, n)]
        stages.append(nn.Sequential(*blocks))
    return stages, cin


class ResNetDepth(nn.Module):
    """Per-landmark depth from the crop and its landmark heatmaps.
    ``(B, 3 + N, 256, 256)`` (RGB in [0, 1], then N heatmaps in [0, 1]) -> ``(B, N)``."""

    def __init__(self, config: DepthConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or DepthConfig()
        self.conv1 = nn.Conv2d(cfg.in_channels, cfg.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, cout = make_resnet_stages(cfg.stem_channels, cfg.layers, cfg.widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AvgPool2d(cfg.pool_kernel)
        self.fc = nn.Linear(cout, cfg.num_landmarks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --------------------------------------------------------------------------------------------------------
# crop geometry


def crop_params_from_box(box: Sequence[float] | np.ndarray, reference_scale: float = REFERENCE_SCALE,
                         dtype: torch.dtype = torch.float32) -> tuple[np.ndarray, float]:
    """Crop centre ``(2,)`` and scale from a detector box ``(x1, y1, x2, y2, ...)`` in pixels.

    ``dtype`` is the precision face_alignment's ``torch.tensor([...])`` gives the centre: float32 for boxes of
    Python floats (Portrait4D's detector, the default), float64 for the float64 NumPy rows of face_alignment's own
    SFD detector. :func:`crop_face` and :func:`heatmap_to_image` then compute in the centre's precision, as
    upstream does. ``reference_scale``: the box size of ``scale = 1`` (:data:`REFERENCE_SCALE`; SFD: 195).
    """
    x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
    center = torch.tensor([x2 - (x2 - x1) / 2.0, y2 - (y2 - y1) / 2.0], dtype=dtype)
    center[1] = center[1] - (y2 - y1) * CENTER_SHIFT
    return center.numpy(), (x2 - x1 + y2 - y1) / reference_scale


def _center_array(center: np.ndarray | Sequence[float]) -> np.ndarray:
    """The crop centre in the precision upstream computes with: float64 kept, anything else as float32."""
    c = np.asarray(center)
    return c if c.dtype == np.float64 else c.astype(np.float32)


def _crop_corner(point: tuple[float, float], center: np.ndarray, scale: float, resolution: float) -> tuple[int, int]:
    """Crop pixel (1-based) -> source pixel, through the inverse of the float32 crop matrix, truncated (its entries
    computed in the centre's precision, float32 or float64, and stored as float32, as upstream's torch code)."""
    size = CROP_BASE * scale
    c = torch.as_tensor(_center_array(center))
    m = torch.eye(3)
    m[0, 0] = m[1, 1] = resolution / size
    m[0, 2] = resolution * (-c[0] / size + 0.5)
    m[1, 2] = resolution * (-c[1] / size + 0.5)
    p = torch.linalg.inv(m) @ torch.tensor([point[0], point[1], 1.0])
    xy = p[:2].int()
    return int(xy[0]), int(xy[1])


def crop_face(image: np.ndarray, center: np.ndarray, scale: float, resolution: int = 256) -> np.ndarray:
    """The official FAN input crop: ``image (H, W, C)`` uint8 -> ``(resolution, resolution, C)`` uint8.

    The square ``[ul, br)`` with ``ul``/``br`` the (truncated) source positions of crop pixels 1 and
    ``resolution`` is copied into a zero canvas (parts outside the image stay black) and resized with OpenCV's
    bilinear filter. Channel order is kept.
    """
    import cv2

    if image.ndim != 3:
        raise ValueError(f"expected an (H, W, C) image, got shape {image.shape}")
    ul = _crop_corner((1.0, 1.0), center, scale, float(resolution))
    br = _crop_corner((float(resolution), float(resolution)), center, scale, float(resolution))
    h, w = image.shape[:2]
    canvas = np.zeros((br[1] - ul[1], br[0] - ul[0], image.shape[2]), dtype=np.uint8)
    # 1-based inclusive ranges, converted to 0-based slices below
    dst_x = (max(1, -ul[0] + 1), min(br[0], w) - ul[0])
    dst_y = (max(1, -ul[1] + 1), min(br[1], h) - ul[1])
    src_x = (max(1, ul[0] + 1), min(br[0], w))
    src_y = (max(1, ul[1] + 1), min(br[1], h))
    if src_x[1] >= src_x[0] and src_y[1] >= src_y[0]:  # the official code assumes an overlap
        canvas[dst_y[0] - 1:dst_y[1], dst_x[0] - 1:dst_x[1]] = image[src_y[0] - 1:src_y[1], src_x[0] - 1:src_x[1]]
    out = cv2.resize(canvas, dsize=(resolution, resolution), interpolation=cv2.INTER_LINEAR)
    return out.reshape(resolution, resolution, image.shape[2])


# --------------------------------------------------------------------------------------------------------
# heatmap decoding and encoding


def decode_heatmaps(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Heatmaps ``(B, N, H, W)`` -> points ``(B, N, 2)`` (x, y) in heatmap pixels, scores ``(B, N)``.

    The arg-max (first one on ties) is moved by 0.25 pixel along each axis towards the larger of its two
    neighbours (sign of their difference, so not at all when they are equal) unless it lies on the border, and
    0.5 is subtracted: a peak at integer pixel ``p`` decodes to ``p + 0.5 +- 0.25`` (or ``p + 0.5``).
    """
    b, n, h, w = heatmaps.shape
    hm = heatmaps.detach().float().reshape(b, n, h * w)
    scores, idx = hm.max(dim=-1)
    px, py = idx % w, idx // w
    inner = (px > 0) & (px < w - 1) & (py > 0) & (py < h - 1)

    def at(x: Tensor, y: Tensor) -> Tensor:
        flat = y.clamp(0, h - 1) * w + x.clamp(0, w - 1)
        return hm.gather(-1, flat.unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(px + 1, py) - at(px - 1, py))
    dy = torch.sign(at(px, py + 1) - at(px, py - 1))
    step = torch.stack([dx, dy], dim=-1) * 0.25 * inner.unsqueeze(-1)
    points = torch.stack([px, py], dim=-1).float() + 1.0 + step - 0.5
    return points, scores


def heatmap_to_image(
    points: Tensor | np.ndarray, center: np.ndarray, scale: float, resolution: int = 64
) -> np.ndarray:
    """Heatmap points ``(N, 2)`` -> source-image pixels ``(N, 2)`` float32 holding integers (the official
    code truncates towards zero after the inverse crop transform, computed in float64 with a pseudo-inverse,
    which NumPy 1.x promotion gives for a float32 centre; a float64 centre, face_alignment's SFD path, is used
    as it is)."""
    p = np.asarray(points, dtype=np.float32).astype(np.float64)
    c = _center_array(center)
    size = CROP_BASE * float(scale)
    m = np.eye(3)
    m[0, 0] = m[1, 1] = resolution / size
    m[0, 2] = resolution * (-float(c[0]) / size + 0.5)
    m[1, 2] = resolution * (-float(c[1]) / size + 0.5)
    inv = np.ascontiguousarray(np.linalg.pinv(m))
    out = np.empty((p.shape[0], 2), dtype=np.float32)
    for i, (x, y) in enumerate(p):  # one matrix-vector product per point, as upstream (same rounding)
        out[i] = np.dot(inv, np.array([x, y, 1.0]))[:2].astype(np.int32)
    return out


def gaussian_kernel(size: int = 13, sigma: float = 0.25) -> np.ndarray:
    """The official ``size x size`` float32 Gaussian: peak 1 at index ``size // 2`` and a standard
    deviation of ``sigma * size`` pixels."""
    c = 0.5 * size + 0.5
    r = (np.arange(size, dtype=np.float64) + 1.0 - c) / (sigma * size)
    g = np.exp(-(r[None, :] ** 2 / 2.0 + r[:, None] ** 2 / 2.0))
    return g.astype(np.float32)


def draw_landmark_heatmaps(points: Tensor | np.ndarray, size: int = 256, sigma: int = 2) -> np.ndarray:
    """One Gaussian per landmark, as the depth network was trained: ``points (N, 2)`` in crop pixels ->
    ``(N, size, size)`` float32.

    The kernel (:func:`gaussian_kernel` of side ``6 * sigma + 1``) is pasted with the official 1-based
    arithmetic, so its peak lands on pixel ``floor(p) - 1``; points with a coordinate <= 0 give an empty map;
    near the borders the kernel is clipped exactly as upstream does it.
    """
    pts = np.asarray(points, dtype=np.float32)
    out = np.zeros((pts.shape[0], size, size), dtype=np.float32)
    g = gaussian_kernel(6 * sigma + 1)
    for i, (x, y) in enumerate(pts):
        if not (x > 0 and y > 0):
            continue
        ul = (math.floor(x - 3 * sigma), math.floor(y - 3 * sigma))
        br = (math.floor(x + 3 * sigma), math.floor(y + 3 * sigma))
        if ul[0] > size or ul[1] > size or br[0] < 1 or br[1] < 1:
            continue
        gx0, ix0 = max(1, -ul[0]), max(1, ul[0])
        gy0, iy0 = max(1, -ul[1]), max(1, ul[1])
        ix1, iy1 = min(br[0], size), min(br[1], size)
        gx1, gy1 = ix1 - ix0 + gx0, iy1 - iy0 + gy0
        region = out[i, iy0 - 1:iy1, ix0 - 1:ix1]
        region += g[gy0 - 1:gy1, gx0 - 1:gx1]
        np.minimum(region, 1.0, out=region)
    return out


def draw_landmark_heatmaps_torch(points: Tensor, size: int = 256, sigma: int = 2) -> Tensor:
    """:func:`draw_landmark_heatmaps` for a batch, built on ``points``' device: ``(B, N, 2)`` -> ``(B, N, size,
    size)`` float32 (the same values; no per-landmark Python loop and no copy of the maps to the device).

    Only the ``k x k`` window of each kernel (``k = 6 * sigma + 1``) is computed and scattered into zeroed maps
    (a window never overlaps another in its own map, so ``scatter_add`` on zeros writes each value exactly;
    clipped taps add 0), instead of gathering the kernel at every pixel of every map."""
    pts = points.float()
    b, n, _ = pts.shape
    g = torch.from_numpy(gaussian_kernel(6 * sigma + 1)).to(pts.device).clamp(max=1.0)
    k = g.shape[0]
    x, y = pts[..., 0], pts[..., 1]
    ul_x, ul_y = torch.floor(x - 3 * sigma).long(), torch.floor(y - 3 * sigma).long()
    br_x, br_y = torch.floor(x + 3 * sigma).long(), torch.floor(y + 3 * sigma).long()
    drawn = (x > 0) & (y > 0) & (ul_x <= size) & (ul_y <= size) & (br_x >= 1) & (br_y >= 1)
    gx0, ix0 = torch.clamp(-ul_x, min=1), torch.clamp(ul_x, min=1)
    gy0, iy0 = torch.clamp(-ul_y, min=1), torch.clamp(ul_y, min=1)
    ix1, iy1 = torch.clamp(br_x, max=size), torch.clamp(br_y, max=size)
    taps = torch.arange(k, device=pts.device)
    # kernel entry t lands on pixel p = t + i0 - g0 (0-based), kept when i0 - 1 <= p < i1 (and inside the map)
    px = taps + (ix0 - gx0)[..., None]  # (B, N, k)
    py = taps + (iy0 - gy0)[..., None]
    in_x = (px >= ix0[..., None] - 1) & (px < ix1[..., None]) & (px >= 0) & (px < size)
    in_y = (py >= iy0[..., None] - 1) & (py < iy1[..., None]) & (py >= 0) & (py < size)
    keep = in_y[..., :, None] & in_x[..., None, :] & drawn[..., None, None]  # (B, N, k, k)
    index = py.clamp(0, size - 1)[..., :, None] * size + px.clamp(0, size - 1)[..., None, :]
    values = torch.where(keep, g.expand(b, n, k, k), torch.zeros((), device=pts.device))
    maps = torch.zeros(b * n, size * size, device=pts.device)
    maps.scatter_add_(1, index.reshape(b * n, k * k), values.reshape(b * n, k * k))
    return maps.reshape(b, n, size, size)


# --------------------------------------------------------------------------------------------------------
# the full detector


@dataclass(frozen=True)
class FAN3DConfig(Config):
    """The two networks of :class:`FAN3DLandmarker`. Defaults are the released ``3DFAN4`` and ``depth``."""

    fan: FANConfig = field(default_factory=FANConfig)
    depth: DepthConfig = field(default_factory=DepthConfig)

    @classmethod
    def tiny(cls) -> FAN3DConfig:
        return cls(fan=FANConfig.tiny(), depth=DepthConfig.tiny())


def official_state(fan_state: Mapping[str, Tensor], depth_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of the two TorchScript archives (names as :func:`read_torchscript_archive` gives them; a
    ``module.`` prefix is dropped) as one state dict of :class:`FAN3DLandmarker` (keys ``fan.*``, ``depth.*``)."""
    return {
        **{f"fan.{k}": v for k, v in strip_key_prefixes(fan_state, ("module.",)).items()},
        **{f"depth.{k}": v for k, v in strip_key_prefixes(depth_state, ("module.",)).items()},
    }


class FAN3DLandmarker(ModelMixin):
    """68 3D landmarks from a detector box: :class:`FAN` (``fan.``) + :class:`ResNetDepth` (``depth.``).

    The networks are held as ``fan`` and ``depth``; the official weights are two separate archives
    (``fan3d-landmarks`` and ``fan3d-depth``): :meth:`from_pretrained` reads both, :func:`official_state` joins
    them into the one state dict :meth:`load_official` / :meth:`from_official` take.
    """

    config_class = FAN3DConfig
    default_model_id = "fan3d"
    config: FAN3DConfig

    def __init__(self, config: FAN3DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FAN3DConfig()
        self.fan = FAN(config.fan)
        self.depth = ResNetDepth(config.depth)
        if self.depth.config.num_landmarks != self.fan.config.num_landmarks:
            raise ValueError("FAN and ResNetDepth must agree on the number of landmarks")
        if self.depth.config.input_size != self.fan.config.input_size:
            raise ValueError("FAN and ResNetDepth must agree on the crop size")

    # ---- weights ------------------------------------------------------------------------------------
    def load_official(self, state: Mapping[str, Tensor]) -> None:
        """Load one state dict with keys ``fan.*`` and ``depth.*`` (:func:`official_state` builds it from the two
        archives; a ``module.`` prefix after ``fan.`` / ``depth.`` is dropped) strictly."""
        fan = {k[len("fan."):]: v for k, v in state.items() if k.startswith("fan.")}
        depth = {k[len("depth."):]: v for k, v in state.items() if k.startswith("depth.")}
        rest = {k: v for k, v in state.items() if not k.startswith(("fan.", "depth."))}
        self.load_state_dict_strict({**official_state(fan, depth), **rest})

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> FAN3DLandmarker:
        """Both upstream archives (``fan3d-landmarks`` and ``fan3d-depth``), fetched into the cache or taken from
        ``local_dir``."""
        from avatar.hub.weights import read_converted_weights

        state = official_state(read_converted_weights(spec.checkpoint, local_dir),
                               read_converted_weights(DEPTH_FILE_KEY, local_dir))
        return cls.from_official(state, **kwargs)

    @classmethod
    def _config_from_saved(cls, values: Any) -> FAN3DConfig:
        # pipeline folders written before FAN3DConfig hold the two configs as a list [fan, depth]
        if isinstance(values, list) and len(values) == 2:
            return FAN3DConfig(fan=FANConfig.from_dict(values[0]), depth=DepthConfig.from_dict(values[1]))
        return super()._config_from_saved(values)

    # ---- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def landmarks_from_crops(self, crops: Tensor, centers: np.ndarray, scales: Sequence[float]) -> Tensor:
        """Crops ``(B, 3, S, S)`` RGB in [0, 1] (from :func:`crop_face`), their centres ``(B, 2)`` and scales
        ``(B,)`` -> landmarks ``(B, N, 3)``: x, y in source pixels (integers), z in source-pixel units."""
        cfg = self.fan.config
        heatmaps = self.fan(crops).float().cpu()
        points, _ = decode_heatmaps(heatmaps)
        factor = cfg.input_size / heatmaps.shape[-1]
        maps = draw_landmark_heatmaps_torch((points * factor).to(crops.device), size=cfg.input_size)
        depth_in = torch.cat([crops, maps.to(crops.dtype)], dim=1)
        depth = self.depth(depth_in).float().cpu().reshape(crops.shape[0], -1, 1)
        result = []
        for i in range(crops.shape[0]):
            xy = heatmap_to_image(points[i], centers[i], float(scales[i]), resolution=heatmaps.shape[-1])
            z = depth[i] * (1.0 / (cfg.input_size / (CROP_BASE * float(scales[i]))))
            result.append(torch.cat([torch.from_numpy(xy), z], dim=1))
        return torch.stack(result)

    @torch.no_grad()
    def forward(self, image: np.ndarray, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """``image (H, W, 3)`` uint8 **RGB** and detector boxes ``(K, >=4)`` (x1, y1, x2, y2) -> landmarks
        ``(K, N, 3)`` float32 (x, y in image pixels with y down, z)."""
        return self.landmarks_batch([image], [boxes])[0]

    @torch.no_grad()
    def landmarks_batch(self, images: Sequence[np.ndarray],
                        boxes: Sequence[np.ndarray | Sequence[Sequence[float]]]) -> list[np.ndarray]:
        """:meth:`forward` for several images in one network batch (e.g. video frames): one ``(K_i, N, 3)``
        array per image."""
        device = next(self.parameters()).device
        size = self.fan.config.input_size
        crops, centers, scales, counts = [], [], [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            counts.append(len(image_boxes))
            for box in image_boxes:
                center, scale = crop_params_from_box(box)
                crop = crop_face(image, center, scale, resolution=size)
                crops.append(torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))).float().div(255.0))
                centers.append(center)
                scales.append(scale)
        empty = np.zeros((0, self.fan.config.num_landmarks, 3), np.float32)
        if not crops:
            return [empty for _ in counts]
        points = self.landmarks_from_crops(torch.stack(crops).to(device), np.stack(centers), scales).numpy()
        out, start = [], 0
        for n in counts:
            out.append(points[start:start + n] if n else empty)
            start += n
        return out
