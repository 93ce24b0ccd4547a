"""The refine network ``Psi`` (paper 3.2/3.4): the rendered 32-channel feature map -> an RGB image.

Paper: "a very simple U-Net with 2 convolutional layers for downsampling and 2 for upsampling"; GPHMv2 keeps the
resolution (512 -> 512), the ECCV version doubles it (256 -> 512). Paper silent on the rest; chose: two 3x3
convolutions at full resolution, stride-2 3x3 convolutions down (``w -> 2w -> 4w``), bilinear x2 + 3x3
convolution up with the skip connection concatenated (the usual U-Net), one more (bilinear x2, 3x3 conv) stage
per factor 2 of ``upsample``, LeakyReLU(0.2), a 1x1 output convolution and ``tanh`` (images are in [-1, 1]
inside the toolkit's networks; GHA's sigmoid gives [0, 1]).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.errors import InputError
from avatar.models.gphm.configuration import RefineConfig

__all__ = ["RefineNet"]


def _conv(a: int, b: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.LeakyReLU(0.2))


class RefineNet(nn.Module):
    """``forward(features (B, C, H, W)) -> image (B, 3, H * upsample, W * upsample)`` in [-1, 1]; ``H, W``
    multiples of 4."""

    def __init__(self, config: RefineConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.inc = nn.Sequential(_conv(config.in_channels, w), _conv(w, w))
        self.down1 = _conv(w, 2 * w, stride=2)
        self.down2 = _conv(2 * w, 4 * w, stride=2)
        self.up1 = _conv(4 * w + 2 * w, 2 * w)
        self.up2 = _conv(2 * w + w, w)
        self.extra = nn.ModuleList(_conv(w, w) for _ in range({1: 0, 2: 1, 4: 2}[config.upsample]))
        self.out = nn.Conv2d(w, 3, 1)

    @staticmethod
    def _up(x: Tensor) -> Tensor:
        """Bilinear x2 in ``x``'s own dtype. CUDA autocast would run it in float32: its input cast up, its output
        and the skip concatenation after it in float32, cast down again by the next convolution. On an H100 the
        float32 upsampling kernels alone took 3.6 ms of the 25.9 ms of GPU time of a batch-8 fast-bf16 render
        call (``scripts/gpu_bench/profile_gphm.py``). Same result: the interpolation accumulates in float32 for
        a bf16 input too, and the convolution reading it rounds to bf16 either way."""
        own_dtype = x.is_cuda and torch.is_autocast_enabled("cuda")
        with torch.autocast("cuda", enabled=False) if own_dtype else contextlib.nullcontext():
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.config.in_channels:
            raise InputError(f"the refine network takes (B, {self.config.in_channels}, H, W) feature maps, got "
                             f"{tuple(features.shape)}")
        if features.shape[-1] % 4 or features.shape[-2] % 4:
            raise InputError(f"the refine network needs H and W multiples of 4, got {tuple(features.shape[-2:])}")
        x0 = self.inc(features)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        y = self.up1(torch.cat([self._up(x2), x1], dim=1))
        y = self.up2(torch.cat([self._up(y), x0], dim=1))
        for stage in self.extra:
            y = stage(self._up(y))
        return torch.tanh(self.out(y))
