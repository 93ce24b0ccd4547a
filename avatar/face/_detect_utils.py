"""Shared pieces of the face detector (:mod:`avatar.face.retinaface`) and the landmark network
(:mod:`avatar.face.h3r`): image conversion, a ResNet bottleneck block, and the NMS of the official code.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Bottleneck",
    "as_uint8_rgb",
    "greedy_nms_plus_one",
    "nms_plus_one",
]


# --------------------------------------------------------------------------------------------------------
# images


def as_uint8_rgb(image: np.ndarray | Tensor) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``(H, W, 3)`` uint8 RGB array.

    Accepted inputs: a numpy ``(H, W, 3)`` uint8 array; a torch tensor ``(H, W, 3)`` or ``(3, H, W)`` that is
    either uint8 (0..255) or floating point in [0, 1] (rounded to 0..255). A ``(3, 3, 3)`` tensor is read as
    channels-last.
    """
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim != 3:
            raise ValueError(f"expected an image tensor (H, W, 3) or (3, H, W), got shape {tuple(t.shape)}")
        if t.shape[-1] != 3 and t.shape[0] == 3:
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = (t.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
        elif t.dtype != torch.uint8:
            raise TypeError(f"integer image tensors must be uint8, got {t.dtype}")
        array = t.numpy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8 (H, W, 3) RGB, got dtype {image.dtype}")
        array = image
    else:
        raise TypeError(f"expected a numpy array or a torch tensor, got {type(image).__name__}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"empty image of shape {array.shape}")
    return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------------------------
# layers


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (1x1 -> 3x3 with the stride -> 1x1 x4, residual, ReLU), torchvision's names.

    Shapes: ``(N, in_channels, H, W) -> (N, 4 * planes, ceil(H / stride), ceil(W / stride))``.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @staticmethod
    def make_layer(in_channels: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        """``blocks`` bottlenecks; the first one gets a 1x1 conv + BN shortcut when the shape changes."""
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        layers = [Bottleneck(in_channels, planes, stride, downsample)]
        layers += [Bottleneck(out_channels, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


# --------------------------------------------------------------------------------------------------------
# non-maximum suppression


def greedy_nms_plus_one(boxes: np.ndarray, order: np.ndarray, threshold: float) -> np.ndarray:
    """The greedy NMS every detector here uses (RetinaFace's ``py_cpu_nms``, face_alignment's ``bbox.nms``,
    InsightFace's ``SCRFD.nms``), each caller giving its own visiting order and float type.

    A box ``(x1, y1, x2, y2)`` covers ``(x2 - x1 + 1) x (y2 - y1 + 1)`` pixels; boxes are visited in ``order``
    and a box is dropped when its IoU with a kept one is above ``threshold``. All arithmetic is in ``boxes``'
    dtype (the constants too), as the official loops compute it.

    Args:
        boxes: ``(K, 4)`` corners (float32 or float64).
        order: ``(K,)`` the visiting order (indices into ``boxes``).
    Returns:
        ``(M,)`` int64 indices of the kept boxes, in visiting order.
    """
    one, zero = boxes.dtype.type(1), boxes.dtype.type(0)
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1 + one) * (y2 - y1 + one)
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    for rank, i in enumerate(order):
        if not alive[rank]:
            continue
        keep.append(int(i))
        rest = order[rank + 1:]
        w = np.maximum(zero, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(zero, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        alive[rank + 1:] &= inter / (areas[i] + areas[rest] - inter) <= threshold
    return np.asarray(keep, dtype=np.int64)


def nms_plus_one(boxes: Tensor | np.ndarray, scores: Tensor | np.ndarray, iou_threshold: float) -> Tensor:
    """Greedy NMS with the official "+1 pixel" box convention, in float32 like the official ``py_cpu_nms``.

    A box ``(x1, y1, x2, y2)`` covers ``(x2 - x1 + 1) x (y2 - y1 + 1)`` pixels and two boxes overlap by
    ``max(0, min(x2) - max(x1) + 1)`` in x (same in y). Boxes are visited by decreasing score (ties keep their
    input order); a box is kept when its IoU with every kept box is ``<= iou_threshold``.

    Args:
        boxes: ``(K, 4)`` corners in pixels.
        scores: ``(K,)``.
    Returns:
        ``(M,)`` int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    b = (boxes.detach().cpu().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes)).astype(np.float32)
    s = (scores.detach().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)).astype(np.float32)
    if b.ndim != 2 or b.shape[1] != 4 or s.shape != (b.shape[0],):
        raise ValueError(f"expected boxes (K, 4) and scores (K,), got {b.shape} and {s.shape}")
    keep = greedy_nms_plus_one(b, np.argsort(-s, kind="stable"), iou_threshold)
    device = boxes.device if isinstance(boxes, Tensor) else None
    return torch.from_numpy(keep).to(device) if device is not None else torch.from_numpy(keep)


# --------------------------------------------------------------------------------------------------------
# loading official weights
