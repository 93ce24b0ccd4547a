"""GPHMv2's motion encoders: the facial expression encoder ``E_exp`` (face crops -> expression code) and the
non-face motion encoder ``E_nf`` (images with the face masked out -> non-face motion code).

Paper 3.4: each is 4 convolution blocks, a block being a stride-1 convolution then a stride-2 convolution, plus
an MLP. Paper silent on the rest (see :class:`~avatar.models.gphm.configuration.MotionEncoderConfig`): 3x3
kernels, LeakyReLU(0.2) after every convolution (chose it as the common activation of image encoders that must
keep negative responses), an adaptive average pool to ``pool_size^2`` then the MLP.
"""

from __future__ import annotations

from torch import Tensor, nn

from avatar.errors import InputError
from avatar.models.gphm.configuration import MotionEncoderConfig

__all__ = ["MotionEncoder"]


class MotionEncoder(nn.Module):
    """``forward(images (B, 3, H, W) in [-1, 1]) -> codes (B, out_dim)``; any ``H, W >= 2^blocks``."""

    def __init__(self, config: MotionEncoderConfig, out_dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        self.in_channels = in_channels
        pad = config.kernel_size // 2
        blocks: list[nn.Module] = []
        prev = in_channels
        for ch in config.channels:
            blocks += [nn.Conv2d(prev, ch, config.kernel_size, stride=1, padding=pad), nn.LeakyReLU(0.2),
                       nn.Conv2d(ch, ch, config.kernel_size, stride=2, padding=pad), nn.LeakyReLU(0.2)]
            prev = ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(config.pool_size)
        dims = [prev * config.pool_size**2] + [config.mlp_width] * config.mlp_hidden_layers
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(dims[-1], out_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        min_size = 2 ** len(self.config.channels)
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise InputError(f"the motion encoder takes (B, {self.in_channels}, H, W) images in [-1, 1], got "
                             f"{tuple(images.shape)}")
        if min(images.shape[-2:]) < min_size:
            raise InputError(f"the motion encoder needs images of at least {min_size}x{min_size}, got "
                             f"{images.shape[-2]}x{images.shape[-1]}")
        return self.mlp(self.pool(self.blocks(images)).flatten(1))
