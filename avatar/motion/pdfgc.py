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

Input crop: :func:`avatar.face.geometry.pdfgc_crop` (the similarity transform taking the centres of landmarks
36-41, 42-47 and 60-67 to ``(87, 59), (137, 59), (112, 120)``, a 224 warp, the ``[:192, 16:208]`` cut, resized
back to 224 and clamped to [-1, 1]); :meth:`PDFGCEncoder.motion_from_image` runs it and the encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.face.fan3d import ConvBlock, HourGlass
from avatar.face.geometry import pdfgc_crop
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

__all__ = ["FanFeatureExtractor", "MotionOutputs", "PDFGCConfig", "PDFGCEncoder"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PDFGCConfig(Config):
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


class PDFGCEncoder(ModelMixin):
    """Upstream ``FanEncoder``: crop ``(B, 3, 224, 224)`` in [-1, 1] -> :class:`MotionOutputs`;
    :meth:`motion` gives Portrait4D's ``(B, 548)`` vector. ``PDFGCEncoder.from_pretrained()`` loads the official
    ``motion_model.pth`` (registry id ``pdfgc-motion``)."""

    config_class = PDFGCConfig
    default_model_id = "pdfgc-motion"
    config: PDFGCConfig

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

    def motion_from_image(self, images: Tensor, landmarks: Tensor | np.ndarray, reverse_y: bool = False) -> Tensor:
        """``get_motion_feature``: images ``(B, 3, H, W)`` in [-1, 1] and 68 landmarks ``(B, 68, >=2)`` in
        pixels (y down; ``reverse_y``: y up, as the training losses' projected FLAME landmarks) -> ``(B, 548)``.
        The crop is :func:`avatar.face.geometry.pdfgc_crop`."""
        lms = torch.as_tensor(np.asarray(landmarks)) if not isinstance(landmarks, Tensor) else landmarks
        crops = pdfgc_crop(images, lms[:, :68].to(images.device), reverse_y=reverse_y)
        size = self.config.input_size
        if crops.shape[-1] != size:  # reduced test configs only; the official input is the 224 crop
            crops = F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False)
        return self.motion(crops)

    # ---- weights ------------------------------------------------------------------------------------
    def load_official(self, state: Mapping[str, Tensor]) -> list[str]:
        """Load ``motion_model.pth``: every module key must be present with its shape (``strict=True`` on the
        module's keys; a ``module.`` prefix on all keys is dropped). Returns the checkpoint keys that the module
        does not have, which upstream's ``strict=False`` drops silently."""
        given = strip_key_prefixes(state, ("module.",))
        own = set(self.state_dict())
        ignored = sorted(k for k in given if k not in own)
        if ignored:
            logger.info("PD-FGC checkpoint: %d keys not used by FanEncoder: %s", len(ignored), ignored[:8])
        self.load_state_dict_strict({k: v for k, v in given.items() if k in own})
        return ignored
