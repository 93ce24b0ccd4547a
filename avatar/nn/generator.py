"""StyleGAN2 generator: synthesis network and mapping + synthesis (official ``models/stylegan/networks_stylegan2.py``
``SynthesisNetwork`` and ``Generator``, as Portrait4D's GenHead builds them).

GenHead uses two of these: the triplane backbone (``z 512``, ``c 325``, 2 mapping layers, 256^2 output with
``6 x 32`` channels, float32, no clamping, ``fused_modconv_default='inference_only'``) and the background
generator (``c 0``, 8 mapping layers, 64^2 with 32 channels, ``channel_base 16384``, float16 blocks at
``res >= 8`` on CUDA with ``conv_clamp 256``, the upstream defaults).

Names are the official ones (``synthesis.b4.const``, ``synthesis.b8.conv0.weight``, ``mapping.fc0.weight``,
``mapping.w_avg`` ...), so the sub-state of a converted checkpoint loads strictly.

Shapes: ``ws (N, num_ws, w_dim)``; block ``b{res}`` takes ``num_conv + num_torgb`` consecutive styles starting at
the sum of the previous blocks' ``num_conv`` (consecutive blocks share one style: the ``torgb`` of one block and
the ``conv0`` of the next), and ``num_ws = sum(num_conv) + num_torgb(last)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from avatar.nn.mapping import MappingNetwork
from avatar.nn.stylegan2 import SynthesisBlock

__all__ = ["StyleGAN2Generator", "SynthesisNetwork", "block_resolutions", "channels_per_resolution"]


def block_resolutions(img_resolution: int) -> list[int]:
    """``[4, 8, ..., img_resolution]`` (a power of two, at least 4)."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return [2**i for i in range(2, img_resolution.bit_length())]


def channels_per_resolution(img_resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """``min(channel_base // res, channel_max)`` per block resolution."""
    return {res: min(channel_base // res, channel_max) for res in block_resolutions(img_resolution)}


class SynthesisNetwork(nn.Module):
    """StyleGAN2 synthesis network (``skip`` architecture by default).

    Args:
        w_dim: style size.
        img_resolution: output side (power of two).
        img_channels: output channels.
        channel_base, channel_max: channel widths, see :func:`channels_per_resolution`.
        num_fp16_res: the ``num_fp16_res`` highest resolutions (and at least from 8) run in float16 on CUDA.
        **block_kwargs: :class:`~avatar.nn.stylegan2.SynthesisBlock` arguments (``conv_clamp``,
            ``fused_modconv_default``, ``architecture``, ...).

    ``forward(ws (N, num_ws, w_dim)) -> (img (N, img_channels, R, R) float32, x (N, C_last, R, R))``: upstream's
    Portrait4D variant returns the last feature map beside the image.
    """

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 32768,
        channel_max: int = 512,
        num_fp16_res: int = 4,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        if block_kwargs.pop("add_block", False):
            raise ValueError("add_block (GenHead's patch super-resolution, patch_scale < 1) is not supported")
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = block_resolutions(img_resolution)
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        fp16_resolution = max(2 ** (img_resolution.bit_length() - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                img_channels=img_channels, is_last=res == img_resolution, use_fp16=res >= fp16_resolution,
                **block_kwargs,
            )
            self.num_ws += block.num_conv + (block.num_torgb if res == img_resolution else 0)
            setattr(self, f"b{res}", block)

    def block_ws(self, ws: Tensor) -> list[Tensor]:
        """Split ``ws (N, num_ws, w_dim)`` into each block's ``(N, num_conv + num_torgb, w_dim)`` window."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"expected ws of shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32) if ws.dtype != torch.float64 else ws
        out, start = [], 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            out.append(ws.narrow(1, start, block.num_conv + block.num_torgb))
            start += block.num_conv
        return out

    def forward(self, ws: Tensor, **block_kwargs: Any) -> tuple[Tensor, Tensor]:
        block_kwargs.pop("update_emas", None)  # accepted for the upstream signature; nothing to update here
        x = img = None
        for res, cur_ws in zip(self.block_resolutions, self.block_ws(ws), strict=True):
            x, img = getattr(self, f"b{res}")(x, img, cur_ws, **block_kwargs)
        assert x is not None and img is not None
        return img, x

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


class StyleGAN2Generator(nn.Module):
    """Mapping network + synthesis network (official ``networks_stylegan2.Generator``).

    Args:
        z_dim, c_dim, w_dim: latent, conditioning and style sizes (``c_dim = 0``: unconditional).
        img_resolution, img_channels: output.
        mapping_kwargs: :class:`~avatar.nn.mapping.MappingNetwork` arguments (``num_layers``, ...).
        **synthesis_kwargs: :class:`SynthesisNetwork` arguments.

    ``forward(z (N, z_dim), c (N, c_dim) | None, truncation_psi, truncation_cutoff) -> img (N, C, R, R)``.
    """

    def __init__(
        self,
        z_dim: int,
        c_dim: int,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        mapping_kwargs: dict[str, Any] | None = None,
        **synthesis_kwargs: Any,
    ) -> None:
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **dict(mapping_kwargs or {}))

    def forward(
        self,
        z: Tensor,
        c: Tensor | None,
        truncation_psi: float = 1,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        **synthesis_kwargs: Any,
    ) -> Tensor:
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        img, _ = self.synthesis(ws, **synthesis_kwargs)
        return img
