"""Deep3DFaceRecon's coefficient regressor (ResNet-50 -> 257 BFM coefficients), in plain PyTorch.

Portrait4D's preprocessing runs ``FaceReconModel.net_recon`` (``data_preprocess/lib/models/facerecon/``) with the
``deep3d_2023`` checkpoint ``epoch_20.pth``. The network is a torchvision-layout ResNet-50 without its ``fc``
(``backbone.``), globally average-pooled, and seven 1x1 convolutions (``final_layers.0..6``) whose outputs are
concatenated into ``257 = 80 id + 64 exp + 80 tex + 3 angle + 27 gamma + 2 (tx, ty) + 1 tz``.

* Input: the 224x224 aligned crop, RGB, ``uint8 / 255`` (no mean/std normalisation) -> :func:`to_input`.
* Alignment: 5 landmarks (WFLW-98 indices ``[96, 97, 54, 76, 82]``, y flipped upwards) fitted to the BFM mean
  face by least squares (:func:`pos_fit`), then a PIL bilinear resize and a 224 crop (:func:`align_image`).
* Output: :func:`split_coefficients` -> ``id, exp, tex, angle, gamma, trans``.
* Weights: the checkpoint holds ``{'net_recon': state_dict, ...}``; after flattening, the keys under
  ``net_recon.`` are loaded strictly (:meth:`Deep3DReconNet.load_official`); anything else in the file
  (optimizer/scheduler state, epoch) is ignored.

The BFM face model, renderer and mesh export of the official model are not part of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avatar.face.fan3d import make_resnet_stages, read_converted_weights

__all__ = [
    "BFM_LANDMARKS_5",
    "COEFFICIENT_SPLIT",
    "Deep3DAlignment",
    "Deep3DConfig",
    "Deep3DReconNet",
    "WFLW_5_POINT_INDEX",
    "align_image",
    "official_state_from_checkpoint",
    "pos_fit",
    "split_coefficients",
    "to_input",
    "wflw98_to_5p",
]

COEFFICIENT_SPLIT: tuple[tuple[str, int], ...] = (
    ("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans", 3),
)
"""Name and width of each coefficient group, in output order (257 in total)."""

HEAD_WIDTHS: tuple[int, ...] = (80, 64, 80, 3, 27, 2, 1)
"""Output channels of ``final_layers.0..6`` (translation is split into (tx, ty) and tz)."""

WFLW_5_POINT_INDEX: tuple[int, ...] = (96, 97, 54, 76, 82)
"""WFLW-98 indices of the 5 alignment points: eye centres, nose tip, mouth corners."""

BFM_LANDMARKS_5 = np.array(
    [
        [-0.31148657, 0.09036078, 0.13377953],
        [0.30979887, 0.08972035, 0.13179526],
        [0.0032535, -0.24617933, 0.55244243],
        [-0.25216928, -0.5813392, 0.22405732],
        [0.2484662, -0.5812824, 0.22235769],
    ]
)
"""3D positions of the 5 alignment points on the BFM mean face (``facerecon/cropping.py``)."""

CHECKPOINT_PREFIX = "net_recon."


@dataclass(frozen=True)
class Deep3DConfig:
    """Sizes of the regressor. Defaults are the released ResNet-50 model."""

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_channels: int = 64
    head_widths: tuple[int, ...] = HEAD_WIDTHS
    input_size: int = 224

    @property
    def num_coefficients(self) -> int:
        return sum(self.head_widths)

    @classmethod
    def tiny(cls) -> Deep3DConfig:
        """Same code path and output layout (257), narrow and shallow."""
        return replace(cls(), layers=(1, 1, 1, 1), widths=(4, 8, 8, 16), stem_channels=8)


class ResNetBackbone(nn.Module):
    """torchvision ResNet (Bottleneck) without ``fc``: ``(B, 3, H, W)`` -> pooled ``(B, C, 1, 1)``."""

    def __init__(self, config: Deep3DConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, config.stem_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages, self.out_channels = make_resnet_stages(config.stem_channels, config.layers, config.widths)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


class Deep3DReconNet(nn.Module):
    """``ReconNetWrapper`` (``use_last_fc=False``): image ``(B, 3, 224, 224)`` RGB in [0, 1] -> ``(B, 257)``."""

    def __init__(self, config: Deep3DConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or Deep3DConfig()
        self.backbone = ResNetBackbone(cfg)
        c = self.backbone.out_channels
        self.final_layers = nn.ModuleList([nn.Conv2d(c, n, kernel_size=1, bias=True) for n in cfg.head_widths])

    def forward(self, x: Tensor) -> Tensor:
        feat = self.backbone(x)
        return torch.flatten(torch.cat([head(feat) for head in self.final_layers], dim=1), 1)

    def load_official(self, state: Mapping[str, Tensor]) -> list[str]:
        """Load a flattened ``epoch_*.pth`` (or a bare ``net_recon`` state dict) with ``strict=True``.
        Returns the ignored keys of the file (those outside ``net_recon.``)."""
        own, ignored = official_state_from_checkpoint(state)
        self.load_state_dict(own, strict=True)
        return ignored

    @classmethod
    def from_pretrained(cls, local_dir: str | Path | None = None, device: torch.device | str = "cpu") -> Deep3DReconNet:
        """The official ``deep3d_2023`` model (registry key ``deep3d-recon``), in eval mode."""
        model = cls()
        model.load_official(read_converted_weights("deep3d-recon", local_dir))
        return model.eval().to(device)

    @torch.no_grad()
    def predict(self, image: np.ndarray | Tensor) -> dict[str, Tensor]:
        """Aligned crop(s) (see :func:`to_input`) -> coefficient groups (:func:`split_coefficients`)."""
        x = to_input(image).to(next(self.parameters()).device)
        return split_coefficients(self(x))


def official_state_from_checkpoint(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Keys under ``net_recon.`` with the prefix stripped (all keys when none has it), and the ignored rest."""
    if not any(k.startswith(CHECKPOINT_PREFIX) for k in state):
        return dict(state), []
    own = {k[len(CHECKPOINT_PREFIX):]: v for k, v in state.items() if k.startswith(CHECKPOINT_PREFIX)}
    return own, sorted(k for k in state if not k.startswith(CHECKPOINT_PREFIX))


def split_coefficients(coeffs: Tensor) -> dict[str, Tensor]:
    """``(B, 257)`` -> ``id (B, 80)``, ``exp (B, 64)``, ``tex (B, 80)``, ``angle (B, 3)``, ``gamma (B, 27)``,
    ``trans (B, 3)``."""
    total = sum(n for _, n in COEFFICIENT_SPLIT)
    if coeffs.ndim != 2 or coeffs.shape[1] != total:
        raise ValueError(f"expected coefficients (B, {total}), got {tuple(coeffs.shape)}")
    parts = torch.split(coeffs, [n for _, n in COEFFICIENT_SPLIT], dim=1)
    return {name: part for (name, _), part in zip(COEFFICIENT_SPLIT, parts, strict=True)}


def to_input(image: np.ndarray | Tensor) -> Tensor:
    """Aligned RGB crop(s) -> network input ``(B, 3, H, W)`` float32 in [0, 1].

    Accepts ``(H, W, 3)`` / ``(B, H, W, 3)`` uint8 (divided by 255, as upstream) or float tensors ``(3, H, W)`` /
    ``(B, 3, H, W)`` already in [0, 1] (passed through).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"numpy images must be uint8, got {image.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)
        t = t[None] if t.ndim == 3 else t
        return t.permute(0, 3, 1, 2).contiguous()
    if image.dtype == torch.uint8:
        t = image.float().div(255.0)
        t = t[None] if t.ndim == 3 else t
        return t.permute(0, 3, 1, 2).contiguous()
    return image[None] if image.ndim == 3 else image


# --------------------------------------------------------------------------------------------------------
# alignment (facerecon/cropping.py)


def wflw98_to_5p(landmarks: np.ndarray, height: int) -> np.ndarray:
    """WFLW-98 landmarks ``(98, 2)`` (y down) -> the 5 alignment points ``(5, 2)`` with y up
    (``height - 1 - y``)."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)[list(WFLW_5_POINT_INDEX)].copy()
    lm[:, 1] = height - 1 - lm[:, 1]
    return lm


def pos_fit(points_2d: np.ndarray, points_3d: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares scaled orthographic fit of ``points_2d (N, 2)`` to ``points_3d (N, 3)``.

    Solves the 8 unknowns of ``x = r1 . X + tx``, ``y = r2 . X + ty``; returns ``t = (tx, ty)`` and
    ``s = (|r1| + |r2|) / 2``.
    """
    xp = np.asarray(points_2d, dtype=np.float64)
    x3 = np.asarray(points_3d, dtype=np.float64)
    n = xp.shape[0]
    a = np.zeros((2 * n, 8))
    a[0::2, 0:3] = x3
    a[0::2, 3] = 1.0
    a[1::2, 4:7] = x3
    a[1::2, 7] = 1.0
    k = np.linalg.lstsq(a, xp.reshape(-1), rcond=None)[0]
    scale = (np.linalg.norm(k[0:3]) + np.linalg.norm(k[4:7])) / 2.0
    return np.array([k[3], k[7]]), float(scale)


@dataclass
class Deep3DAlignment:
    """Result of :func:`align_image`.

    Attributes:
        image: the ``(S, S, 3)`` uint8 crop.
        landmarks: the input landmarks in crop pixels, y up, ``(N, 2)``.
        trans_params: ``(w0, h0, s, tx, ty)`` as upstream returns them (to map results back).
    """

    image: np.ndarray
    landmarks: np.ndarray
    trans_params: np.ndarray


def align_image(
    image: Any, landmarks_5p: np.ndarray, target_size: float = 224.0, rescale_factor: float = 102.0
) -> Deep3DAlignment:
    """The official Deep3D crop: ``image`` (PIL image or ``(H, W, 3)`` uint8 RGB) and 5 points ``(5, 2)``
    (y up, :func:`wflw98_to_5p`) -> a ``target_size`` crop.

    The image is resized by ``s = rescale_factor / s_fit`` (PIL bilinear, integer size) and cropped so the
    fitted face centre ``t`` lands in the middle (corners truncated towards zero; outside is black).
    """
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    lm = np.asarray(landmarks_5p, dtype=np.float64)
    w0, h0 = img.size
    t, s_fit = pos_fit(lm, BFM_LANDMARKS_5)
    s = rescale_factor / s_fit
    w, h = int(np.int32(w0 * s)), int(np.int32(h0 * s))
    left = int(np.int32(w / 2 - target_size / 2 + (t[0] - w0 / 2) * s))
    up = int(np.int32(h / 2 - target_size / 2 + (h0 / 2 - t[1]) * s))
    resized = img.resize((w, h), resample=Image.BILINEAR)
    crop = resized.crop((left, up, int(round(left + target_size)), int(round(up + target_size))))
    lm_new = np.stack([lm[:, 0] - t[0] + w0 / 2, lm[:, 1] - t[1] + h0 / 2], axis=1) * s
    lm_new = lm_new - np.array([[w / 2 - target_size / 2, h / 2 - target_size / 2]])
    params = np.array([w0, h0, s, t[0], t[1]])
    return Deep3DAlignment(np.asarray(crop.convert("RGB")), lm_new, params)
