"""Deep3DFaceRecon's coefficient regressor (ResNet-50 -> 257 BFM coefficients), in plain PyTorch.

Portrait4D's preprocessing runs ``FaceReconModel.net_recon`` (``data_preprocess/lib/models/facerecon/``) with the
``deep3d_2023`` checkpoint ``epoch_20.pth``. The network is a torchvision-layout ResNet-50 without its ``fc``
(``backbone.``), globally average-pooled, and seven 1x1 convolutions (``final_layers.0..6``) whose outputs are
concatenated into ``257 = 80 id + 64 exp + 80 tex + 3 angle + 27 gamma + 2 (tx, ty) + 1 tz``.

* Input: the 224x224 aligned crop, RGB, ``uint8 / 255`` (no mean/std normalisation) -> :func:`to_input`.
* Alignment: 5 landmarks (WFLW-98 indices ``[96, 97, 54, 76, 82]``, y flipped upwards) fitted to the BFM mean
  face by least squares (:func:`avatar.face.geometry.pos_fit`, rescale 102 instead of the 512 crop's 180), then a
  PIL bilinear resize and a 224 crop with black outside (:func:`align_image`).
* Output: :func:`split_coefficients` -> ``id, exp, tex, angle, gamma, trans``.
* Weights: the checkpoint holds ``{'net_recon': state_dict, ...}``; after flattening, the keys under
  ``net_recon.`` are loaded strictly (:meth:`Deep3DReconNet.load_official`); anything else in the file
  (optimizer/scheduler state, epoch) is ignored.

The BFM face model, renderer and mesh export of the official model are not part of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.face.fan3d import make_resnet_stages
from avatar.face.geometry import (
    BFM_FIVE_POINTS_3D,
    AlignParams,
    estimate_align_params,
    five_points_from_68,
    five_points_from_wflw98,
    transform_landmarks,
    warp_to_aligned,
)
from avatar.modeling import ModelMixin

__all__ = [
    "COEFFICIENT_SPLIT",
    "DEEP3D_RESCALE_FACTOR",
    "DEEP3D_TARGET_SIZE",
    "Deep3DAlignment",
    "Deep3DConfig",
    "Deep3DReconNet",
    "align_image",
    "official_state_from_checkpoint",
    "split_coefficients",
    "to_input",
]

COEFFICIENT_SPLIT: tuple[tuple[str, int], ...] = (
    ("id", 80), ("exp", 64), ("tex", 80), ("angle", 3), ("gamma", 27), ("trans", 3),
)
"""Name and width of each coefficient group, in output order (257 in total)."""

HEAD_WIDTHS: tuple[int, ...] = (80, 64, 80, 3, 27, 2, 1)
"""Output channels of ``final_layers.0..6`` (translation is split into (tx, ty) and tz)."""

CHECKPOINT_PREFIX = "net_recon."


@dataclass(frozen=True)
class Deep3DConfig(Config):
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


class Deep3DReconNet(ModelMixin):
    """``ReconNetWrapper`` (``use_last_fc=False``): image ``(B, 3, 224, 224)`` RGB in [0, 1] -> ``(B, 257)``.

    ``Deep3DReconNet.from_pretrained()`` loads the official ``deep3d_2023`` model (registry id ``deep3d-recon``).
    """

    config_class = Deep3DConfig
    default_model_id = "deep3d-recon"
    config: Deep3DConfig

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
        self.load_state_dict_strict(own)
        return ignored

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
# alignment (facerecon/cropping.py): the fit of :mod:`avatar.face.geometry` with Deep3DFaceRecon's constants

DEEP3D_TARGET_SIZE = 224
"""Side of Deep3DFaceRecon's crop."""
DEEP3D_RESCALE_FACTOR = 102.0
"""Projected template scale in Deep3DFaceRecon's crop (the Portrait4D 512 crop uses 180)."""


@dataclass
class Deep3DAlignment:
    """Result of :func:`align_image`.

    Attributes:
        image: the ``(S, S, 3)`` uint8 crop.
        landmarks: the five alignment points in crop pixels, **y up** (as upstream returns them), ``(5, 2)``.
        params: the crop (:class:`~avatar.face.geometry.AlignParams`); ``params.to_array()`` is upstream's
            ``trans_params`` ``(w0, h0, s, tx, ty)``.
    """

    image: np.ndarray
    landmarks: np.ndarray
    params: AlignParams

    @property
    def trans_params(self) -> np.ndarray:
        return self.params.to_array()


def align_image(
    image: Any,
    landmarks: np.ndarray,
    target_size: int = DEEP3D_TARGET_SIZE,
    rescale_factor: float = DEEP3D_RESCALE_FACTOR,
    resample: str = "bilinear",
    template: np.ndarray | None = None,
) -> Deep3DAlignment:
    """The official Deep3D crop of ``image`` (PIL image or ``(H, W, 3)`` uint8 RGB).

    ``landmarks`` are WFLW-98, iBUG-68 or five points ``(N, 2)`` in image pixels (y down). The five points are
    fitted to the plain BFM template (:data:`~avatar.face.geometry.BFM_FIVE_POINTS_3D`, no offset) by
    :func:`~avatar.face.geometry.estimate_align_params`; the image is resized by ``rescale_factor / fitted scale``
    (PIL bilinear, integer size) and cropped to ``target_size`` around the fitted centre (black outside).

    ``resample``: the PIL filter of that resize (see :func:`~avatar.face.geometry.warp_to_aligned`):
    ``'bilinear'`` as Portrait4D's ``facerecon/cropping.py``; ``'bicubic'`` as Deep3DFaceRecon_pytorch's own
    ``util/preprocess.py`` (commit 6ba3d22, the one EG3D and GOHA use). ``template``: the ``(5, 3)`` 3D points of
    the fit, default :data:`~avatar.face.geometry.BFM_FIVE_POINTS_3D` (Portrait4D's); Deep3DFaceRecon's own
    ``load_lm3d`` gives other ones (:data:`avatar.models.goha.preprocess.DEEP3D_LM3D_FIVE_POINTS`).
    """
    from PIL import Image

    img = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image, dtype=np.uint8)
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    five = {98: five_points_from_wflw98, 68: five_points_from_68}.get(lm.shape[0], lambda x: x)(lm)
    size = (img.shape[1], img.shape[0])
    params = estimate_align_params(five, size, target_size, rescale_factor,
                                   template=BFM_FIVE_POINTS_3D if template is None else template)
    crop = warp_to_aligned(np.ascontiguousarray(img), params, resample=resample, padding="zeros")
    landmarks_crop = transform_landmarks(five, params, y_down=True)
    landmarks_crop[:, 1] = target_size - landmarks_crop[:, 1]  # y up, upstream's convention
    assert isinstance(crop, np.ndarray)
    return Deep3DAlignment(crop, landmarks_crop, params)
