"""MODNet portrait matting (Ke et al., AAAI 2022; ``ZHKKKe/MODNet``) in plain PyTorch.

GOHA and OTAvatar remove the backgrounds of their evaluation frames with MODNet; ``eval.prepare --background
remove`` uses this port. The network carries the official parameter names, so the released checkpoints
(``modnet_photographic_portrait_matting.ckpt``, ``modnet_webcam_portrait_matting.ckpt``: state dicts saved from
``nn.DataParallel``) load strictly once their ``module.`` prefix is removed:

* ``backbone.model.features.{0..18}.*`` - MobileNetV2 (width 1.0, expansion 6, no classifier): ``features.0`` is
  the 3x3 stride-2 stem (conv, BN, ReLU6), ``1..17`` the inverted residual blocks, ``18`` the 1x1 conv to 1280;
* ``lr_branch.backbone.*`` - the *same* backbone module registered a second time (the upstream low-resolution
  branch keeps a reference to it), so every backbone tensor appears under both names;
* ``lr_branch.{se_block, conv_lr16x, conv_lr8x, conv_lr}``, ``hr_branch.{tohr_enc2x, conv_enc2x, tohr_enc4x,
  conv_enc4x, conv_hr4x.{0,1,2}, conv_hr2x.{0..3}, conv_hr.{0,1}}``, ``f_branch.{conv_lr4x, conv_f2x,
  conv_f.{0,1}}``; each conv block is ``layers.0`` (conv with bias) + ``layers.1.bnorm`` (BatchNorm over the first
  half of the channels; the other half goes through an affine-free InstanceNorm, which has no tensors).

Inference follows the official image demo (``demo/image_matting/colab/inference.py``): RGB in [0, 1] normalised
to [-1, 1]; if the longer side is below 512 or the shorter side above 512 the image is resized so that its shorter
side is 512 (the other side ``int(long / short * 512)``), otherwise its size is kept; both sides are then rounded
down to a multiple of 32 (:func:`inference_size`); 'area' resampling; the network runs in inference mode (BatchNorm
running statistics, the semantic and detail heads skipped) and the fusion branch's matte is resized back to the
input size, again with 'area'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.errors import InputError
from avatar.hub.weights import strip_key_prefixes
from avatar.modeling import ModelMixin

__all__ = [
    "BACKGROUND_COLORS",
    "HUB_FILE_KEY",
    "MODNet",
    "MODNetConfig",
    "composite",
    "inference_size",
]

HUB_FILE_KEY = "modnet-photographic"
CHECKPOINT_PREFIXES = ("module.",)
BACKBONE_ALIAS = "lr_branch.backbone."
BACKBONE_NAME = "backbone."

BACKGROUND_COLORS: dict[str, tuple[float, float, float]] = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}
"""Named backgrounds: GOHA multiplies the frame by the matte (black); OTAvatar composites on white."""

# (expansion t, output channels c, repeats n, first stride s) of the official MobileNetV2 backbone
MOBILENETV2_BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


# --------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class MODNetConfig(Config):
    """Sizes and inference constants. The defaults are the released MODNet (MobileNetV2 backbone).

    Attributes:
        in_channels: image channels.
        hr_channels: width of the high-resolution and fusion branches (32; must equal the stride-8 width).
        stem_channels: output channels of the backbone's first conv (32).
        blocks: ``(t, c, n, s)`` rows of the inverted residual groups (the encoder features are taken after
            groups 0, 1, 2 and 4 and after the last 1x1 conv, i.e. at strides 2, 4, 8, 16 and 32).
        last_channels: output channels of the backbone's last 1x1 conv (1280).
        se_reduction: channel reduction of the squeeze-excitation block (4).
        ref_size: reference size of the inference resize rule (512).
        multiple: both network input sides are rounded down to a multiple of this (32).
    """

    in_channels: int = 3
    hr_channels: int = 32
    stem_channels: int = 32
    blocks: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_BLOCKS
    last_channels: int = 1280
    se_reduction: int = 4
    ref_size: int = 512
    multiple: int = 32

    @classmethod
    def tiny(cls) -> MODNetConfig:
        """Same code path (19 backbone stages, same strides and skips), a few channels wide."""
        narrow = tuple((min(t, 2), c, n, s) for (t, _, n, s), c in
                       zip(MOBILENETV2_BLOCKS, (4, 4, 8, 8, 8, 8, 8), strict=True))
        return replace(cls(), hr_channels=8, stem_channels=4, blocks=narrow, last_channels=16, se_reduction=2,
                       ref_size=64)

    @property
    def enc_channels(self) -> tuple[int, int, int, int, int]:
        """Channels of the encoder features at strides 2, 4, 8, 16, 32 (16, 24, 32, 96, 1280 officially)."""
        c = [row[1] for row in self.blocks]
        return c[0], c[1], c[2], c[4], self.last_channels


def inference_size(height: int, width: int, ref_size: int = 512, multiple: int = 32) -> tuple[int, int]:
    """The network input size ``(h, w)`` of the official demo for an ``height x width`` image.

    If the longer side is below ``ref_size`` or the shorter side above it, the shorter side becomes ``ref_size``
    and the longer one ``int(long / short * ref_size)``; otherwise the size is kept. Both sides are then rounded
    down to a multiple of ``multiple``. E.g. 720x1280 -> 512x896, 300x400 -> 512x672, 500x600 -> 480x576.
    """
    if max(height, width) < ref_size or min(height, width) > ref_size:
        if width >= height:
            rh, rw = ref_size, int(width / height * ref_size)
        else:
            rh, rw = int(height / width * ref_size), ref_size
    else:
        rh, rw = height, width
    rh, rw = rh - rh % multiple, rw - rw % multiple
    if rh <= 0 or rw <= 0:
        raise InputError(f"a {height}x{width} image is too thin for MODNet (network input {rh}x{rw})")
    return rh, rw


def composite(images: Tensor, alpha: Tensor, color: str | Sequence[float] = "black") -> Tensor:
    """``images * alpha + color * (1 - alpha)``: ``(B, 3, H, W)`` in [0, 1], ``alpha (B, 1, H, W)``; ``color`` a
    name of :data:`BACKGROUND_COLORS` or an RGB triple in [0, 1]. Black is GOHA's multiplication by the matte."""
    if isinstance(color, str):
        try:
            color = BACKGROUND_COLORS[color]
        except KeyError:
            raise InputError(f"unknown background colour {color!r}; known: {', '.join(BACKGROUND_COLORS)}") from None
    background = torch.as_tensor(color, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return images * alpha + background * (1 - alpha)


# --------------------------------------------------------------------------------------------------------
# building blocks


class IBNorm(nn.Module):
    """BatchNorm on the first ``C // 2`` channels, affine-free InstanceNorm on the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.split = channels // 2
        self.bnorm = nn.BatchNorm2d(self.split, affine=True)
        self.inorm = nn.InstanceNorm2d(channels - self.split, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        head, tail = x[:, : self.split].contiguous(), x[:, self.split:].contiguous()
        return torch.cat([self.bnorm(head), self.inorm(tail)], dim=1)


class ConvIBNormReLU(nn.Module):
    """``layers = Sequential(conv (bias), [IBNorm], [ReLU])``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 norm: bool = True, relu: bool = True) -> None:
        super().__init__()
        parts: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=True)]
        if norm:
            parts.append(IBNorm(cout))
        if relu:
            parts.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*parts)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class SqueezeExcite(nn.Module):
    """Channel gate: global average -> ``fc.0`` (C -> C / r, no bias) -> ReLU -> ``fc.2`` (-> C) -> sigmoid."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = channels // reduction
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.pool(x).view(b, c)).view(b, c, 1, 1)


def _conv_bn_relu6(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand, BN, ReLU6] (absent for expansion 1), 3x3 depthwise, BN, ReLU6, 1x1
    project, BN; identity skip when the stride is 1 and the widths match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = round(cin * expansion)
        self.residual = stride == 1 and cin == cout
        parts: list[nn.Module] = []
        if expansion != 1:
            parts += [nn.Conv2d(cin, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        parts += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*parts)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """``features``: stem, the inverted residual groups, last 1x1 conv (no classifier)."""

    def __init__(self, config: MODNetConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu6(config.in_channels, config.stem_channels, 3, 2)]
        cin = config.stem_channels
        ends = []
        for t, c, n, s in config.blocks:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
            ends.append(len(layers) - 1)
        layers.append(_conv_bn_relu6(cin, config.last_channels, 1, 1))
        self.features = nn.Sequential(*layers)
        # indices after which the stride-2, 4, 8, 16 and 32 features are taken (1, 3, 6, 13, 18 officially)
        self.taps = (ends[0], ends[1], ends[2], ends[4], len(layers) - 1)


class Backbone(nn.Module):
    """Wrapper holding the MobileNetV2 as ``model`` (official name); returns the five encoder features."""

    def __init__(self, config: MODNetConfig) -> None:
        super().__init__()
        self.model = MobileNetV2(config)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps, feats = self.model.taps, []
        for i, layer in enumerate(self.model.features):
            x = layer(x)
            if i in taps:
                feats.append(x)
        return feats


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class LowResolutionBranch(nn.Module):
    """Semantic branch: backbone, SE gate on the stride-32 features, two 5x5 blocks up to stride 8."""

    def __init__(self, backbone: Backbone, config: MODNetConfig) -> None:
        super().__init__()
        enc = config.enc_channels
        self.backbone = backbone
        self.se_block = SqueezeExcite(enc[4], config.se_reduction)
        self.conv_lr16x = ConvIBNormReLU(enc[4], enc[3], 5, 1, 2)
        self.conv_lr8x = ConvIBNormReLU(enc[3], enc[2], 5, 1, 2)
        self.conv_lr = ConvIBNormReLU(enc[2], 1, 3, 2, 1, norm=False, relu=False)

    def forward(self, img: Tensor, inference: bool) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        enc2x, enc4x, _, _, enc32x = self.backbone(img)
        lr16x = self.conv_lr16x(_up2(self.se_block(enc32x)))
        lr8x = self.conv_lr8x(_up2(lr16x))
        semantic = None if inference else torch.sigmoid(self.conv_lr(lr8x))
        return semantic, lr8x, enc2x, enc4x


class HighResolutionBranch(nn.Module):
    """Detail branch at strides 4 and 2, fed by the image, the stride-2/4 encoder features and ``lr8x``."""

    def __init__(self, config: MODNetConfig) -> None:
        super().__init__()
        h, enc, cin = config.hr_channels, config.enc_channels, config.in_channels
        if enc[2] != h:  # upstream sizes conv_hr4x as 3 * hr_channels + 3, which assumes this (32 == 32)
            raise ValueError(f"the stride-8 encoder width ({enc[2]}) must equal hr_channels ({h})")
        self.tohr_enc2x = ConvIBNormReLU(enc[0], h, 1)
        self.conv_enc2x = ConvIBNormReLU(h + cin, h, 3, 2, 1)
        self.tohr_enc4x = ConvIBNormReLU(enc[1], h, 1)
        self.conv_enc4x = ConvIBNormReLU(2 * h, 2 * h, 3, 1, 1)
        self.conv_hr4x = nn.Sequential(
            ConvIBNormReLU(3 * h + cin, 2 * h, 3, 1, 1),
            ConvIBNormReLU(2 * h, 2 * h, 3, 1, 1),
            ConvIBNormReLU(2 * h, h, 3, 1, 1),
        )
        self.conv_hr2x = nn.Sequential(
            ConvIBNormReLU(2 * h, 2 * h, 3, 1, 1),
            ConvIBNormReLU(2 * h, h, 3, 1, 1),
            ConvIBNormReLU(h, h, 3, 1, 1),
            ConvIBNormReLU(h, h, 3, 1, 1),
        )
        self.conv_hr = nn.Sequential(
            ConvIBNormReLU(h + cin, h, 3, 1, 1),
            ConvIBNormReLU(h, 1, 1, norm=False, relu=False),
        )

    def forward(self, img: Tensor, enc2x: Tensor, enc4x: Tensor, lr8x: Tensor,
                inference: bool) -> tuple[Tensor | None, Tensor]:
        img2x = F.interpolate(img, scale_factor=1 / 2, mode="bilinear", align_corners=False)
        img4x = F.interpolate(img, scale_factor=1 / 4, mode="bilinear", align_corners=False)
        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat([img2x, enc2x], dim=1))
        hr4x = self.conv_enc4x(torch.cat([hr4x, self.tohr_enc4x(enc4x)], dim=1))
        hr4x = self.conv_hr4x(torch.cat([hr4x, _up2(lr8x), img4x], dim=1))
        hr2x = self.conv_hr2x(torch.cat([_up2(hr4x), enc2x], dim=1))
        detail = None
        if not inference:
            detail = torch.sigmoid(self.conv_hr(torch.cat([_up2(hr2x), img], dim=1)))
        return detail, hr2x


class FusionBranch(nn.Module):
    """Fuses ``lr8x`` (upsampled to stride 2) with ``hr2x``, then a full-resolution head -> matte."""

    def __init__(self, config: MODNetConfig) -> None:
        super().__init__()
        h, enc = config.hr_channels, config.enc_channels
        self.conv_lr4x = ConvIBNormReLU(enc[2], h, 5, 1, 2)
        self.conv_f2x = ConvIBNormReLU(2 * h, h, 3, 1, 1)
        self.conv_f = nn.Sequential(
            ConvIBNormReLU(h + config.in_channels, h // 2, 3, 1, 1),
            ConvIBNormReLU(h // 2, 1, 1, norm=False, relu=False),
        )

    def forward(self, img: Tensor, lr8x: Tensor, hr2x: Tensor) -> Tensor:
        lr2x = _up2(self.conv_lr4x(_up2(lr8x)))
        f2x = self.conv_f2x(torch.cat([lr2x, hr2x], dim=1))
        return torch.sigmoid(self.conv_f(torch.cat([_up2(f2x), img], dim=1)))


# --------------------------------------------------------------------------------------------------------
# the network


def _with_backbone_alias(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Fill in whichever of the two names of the shared backbone is absent (a file saved without duplicates)."""
    out = dict(state_dict)
    for src, dst in ((BACKBONE_NAME, BACKBONE_ALIAS), (BACKBONE_ALIAS, BACKBONE_NAME)):
        if not any(k.startswith(dst) for k in out):
            out.update({dst + k[len(src):]: v for k, v in state_dict.items() if k.startswith(src)})
    return out


class MODNet(ModelMixin):
    """MODNet: normalised image ``(B, 3, H, W)`` (``H, W`` multiples of 32) -> ``(semantic, detail, matte)``.

    :meth:`matte` is the inference entry point (RGB in [0, 1], any size -> alpha in [0, 1]).

    Loading (:class:`ModelMixin`): ``MODNet.from_pretrained()`` is the official photographic model from the asset
    cache (registry id ``modnet-photographic``); the checkpoint lives on Google Drive: download it yourself and
    pass its folder as ``local_dir`` (or run ``avatar download --file modnet-photographic --from-dir DIR`` once).
    ``MODNet.from_pretrained(path)`` also takes any released checkpoint file (``.ckpt``/``.pth``, e.g. the webcam
    model) or a folder written by :meth:`save_pretrained` (the shared backbone is stored once there).
    """

    config_class = MODNetConfig
    default_model_id = HUB_FILE_KEY
    config: MODNetConfig

    def __init__(self, config: MODNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or MODNetConfig()
        self.backbone = Backbone(self.config)
        self.lr_branch = LowResolutionBranch(self.backbone, self.config)
        self.hr_branch = HighResolutionBranch(self.config)
        self.f_branch = FusionBranch(self.config)

    # ----------------------------------------------------------------------------------------------------
    # weights

    def load_official(self, state: Mapping[str, Any]) -> None:
        """Strictly load an official state dict (``module.`` prefix allowed; either name of the shared backbone
        may be absent; BatchNorm step counters may be absent)."""
        state = _with_backbone_alias(strip_key_prefixes(state, CHECKPOINT_PREFIXES))
        self.load_state_dict_strict(state, what="MODNet", optional_suffixes=("num_batches_tracked",))

    def _state_to_save(self) -> dict[str, Tensor]:
        """The shared backbone once (under ``backbone.``; its ``lr_branch.backbone.`` alias is left out)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(BACKBONE_ALIAS)}

    def _state_from_saved(self, state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        return _with_backbone_alias(state)

    # ----------------------------------------------------------------------------------------------------
    # network

    def forward(self, img: Tensor, inference: bool = True) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """``img (B, 3, H, W)`` normalised to [-1, 1] -> ``(semantic (B, 1, H/16, W/16) | None, detail (B, 1, H, W)
        | None, matte (B, 1, H, W))``; with ``inference`` the semantic and detail heads are skipped."""
        semantic, lr8x, enc2x, enc4x = self.lr_branch(img, inference)
        detail, hr2x = self.hr_branch(img, enc2x, enc4x, lr8x, inference)
        return semantic, detail, self.f_branch(img, lr8x, hr2x)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return inference_size(height, width, self.config.ref_size, self.config.multiple)

    @torch.inference_mode()
    def matte(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] -> alpha ``(B, 1, H, W)`` in [0, 1] (the official demo's pre- and
        post-processing; the module is switched to eval mode)."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (B, {self.config.in_channels}, H, W) images, got {tuple(images.shape)}")
        self.eval()
        param = next(self.parameters())
        h, w = images.shape[-2:]
        x = (images.to(device=param.device, dtype=param.dtype) - 0.5) / 0.5
        rh, rw = self.input_size(h, w)
        x = F.interpolate(x, size=(rh, rw), mode="area")
        alpha = self(x, True)[2]
        return F.interpolate(alpha, size=(h, w), mode="area").clamp_(0, 1)
