"""GOHA's super-resolution network: GFPGAN v1 "clean" (U-Net + StyleGAN2 decoder with SFT), in plain PyTorch.

GOHA renders a 224x224 image from its tri-plane (the first 3 of 32 feature channels) and passes it through
``neural_layers`` (a ``GFPUpsampler``), whose result ``[0]`` is the 512x512 output::

    img (b, 3, h, w) in [-1, 1]
      -> bilinear resize to (out_size, out_size), align_corners=True
      -> U-Net encoder: conv_body_first (1x1) + LReLU, log2(out_size)-2 ResBlocks down to 4x4, final_conv + LReLU
      -> final_linear: (b, C4*16) -> (b, num_latent * num_style_feat), the per-layer latents w (different_w)
      -> U-Net decoder: per level r = 8 .. out_size, feat + skip, ResBlock up, condition_scale / condition_shift
         convs (SFT scale and shift), toRGB (intermediate images, not used by GOHA)
      -> StyleGAN2 decoder (input_is_latent): constant 4x4, style_conv1, to_rgb1, then per level an upsampling
         StyleConv, SFT on the second half of the channels (sft_half), a StyleConv and a ToRGB added to the
         upsampled skip image
    -> image (b, 3, out_size, out_size), unclamped

State-dict names are the official ones (``src/GFPGAN/GFPUpsampler.py``, ``gfpganv1_clean_arch.py``,
``stylegan2_clean_arch.py``). Placed as ``GOHA.neural_layers``, this module loads the official checkpoint's
``model_state_dict`` entries under ``neural_layers.gfpgan.`` strictly:

* ``neural_layers.gfpgan.conv_body_first``, ``.conv_body_down.{0..6}.{conv1,conv2,skip}``, ``.final_conv``,
  ``.conv_body_up.{0..6}.{conv1,conv2,skip}``, ``.toRGB.{0..6}``, ``.final_linear``,
  ``.condition_scale.{0..6}.{0,2}``, ``.condition_shift.{0..6}.{0,2}``;
* ``neural_layers.gfpgan.stylegan_decoder.`` + ``style_mlp.{1,3,..,15}`` (built, unused with latent input),
  ``constant_input.weight``, ``style_conv1.{modulated_conv.{modulation,weight},weight,bias}``,
  ``to_rgb1.{modulated_conv.{modulation,weight},bias}``, ``style_convs.{0..13}.*``, ``to_rgbs.{0..6}.*`` and
  the buffers ``noises.noise{0..14}`` (shape (1, 1, r, r)).

(indices for out_size 512; 86,444,252 parameters + 15 noise buffers).

Noise. The official StyleConvs draw fresh ``normal_()`` noise on every call (GOHA never passes ``noise``), so
its output is random. Ours is deterministic by default: ``noise_mode="const"`` feeds the checkpoint's stored
``noises.noise{i}`` buffers, i.e. one fixed draw from the same N(0, 1) distribution the official samples from,
so the default output is exactly what the official network returns for that noise (``GFPUpsampler(img,
noise=[buffers])``), is reproducible across runs and machines, and does not depend on the batch or on the
global RNG. ``"random"`` is the official behaviour (fresh noise drawn as the official draws it, in the same
order and shapes, so the same RNG state gives the same output); ``"none"`` leaves noise out (zero noise); an
explicit ``noise`` list overrides the mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config

__all__ = [
    "NOISE_MODES",
    "GFPGANv1Clean",
    "GOHASuperResolution",
    "GOHASuperResolutionConfig",
    "ModulatedConv2d",
    "ResBlock",
    "StyleConv",
    "StyleGAN2DecoderSFT",
    "ToRGB",
    "official_kwargs",
]

NoiseMode = Literal["const", "random", "none"]
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")
_SLOPE = 0.2


def _channels(width: float, channel_multiplier: int) -> dict[int, int]:
    """Channels per resolution, GFPGAN's table scaled by ``width`` (``narrow`` or ``narrow / 2``)."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
             256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: int(base * width) for res, base in table.items()}


@dataclass(frozen=True)
class GOHASuperResolutionConfig(Config):
    """Constructor arguments of :class:`GOHASuperResolution`; the defaults are GOHA's ``GFPUpsampler``.

    ``out_size`` is also the size the input is resized to. ``narrow`` scales all channels (the U-Net uses half
    of them). ``noise_mode`` is the default of :meth:`GOHASuperResolution.forward` (see the module docstring).
    The official ``decoder_load_path`` / ``fix_decoder`` arguments only load or freeze weights and are left out.
    """

    out_size: int = 512
    num_style_feat: int = 512
    channel_multiplier: int = 2
    num_mlp: int = 8
    narrow: float = 1.0
    sft_half: bool = True
    different_w: bool = True
    input_is_latent: bool = True
    noise_mode: str = "const"

    def __post_init__(self) -> None:
        if self.out_size < 8 or self.out_size & (self.out_size - 1):
            raise ValueError(f"out_size must be a power of two >= 8, got {self.out_size}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}")

    @classmethod
    def tiny(cls) -> GOHASuperResolutionConfig:
        """A few-ten-thousand-parameter config for tests: 64x64 output, U-Net 8/4 and decoder 16/8 channels."""
        return cls(out_size=64, num_style_feat=16, channel_multiplier=1, num_mlp=2, narrow=1 / 32)

    def build(self) -> GOHASuperResolution:
        """Construct the module (random init; downloads nothing)."""
        return GOHASuperResolution(self)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size))

    @property
    def num_layers(self) -> int:
        """Number of StyleConvs (= noise inputs): 15 for 512."""
        return 2 * (self.log_size - 2) + 1

    @property
    def num_latent(self) -> int:
        """Number of latents w the decoder reads: 16 for 512."""
        return 2 * self.log_size - 2

    def unet_channels(self) -> dict[int, int]:
        return _channels(self.narrow * 0.5, self.channel_multiplier)

    def decoder_channels(self) -> dict[int, int]:
        return _channels(self.narrow, self.channel_multiplier)

    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes of the stored noise buffers ``noise{i}``: (1, 1, r, r) with r = 4, 8, 8, 16, 16, ..."""
        return [(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(self.num_layers)]


# ----------------------------------------------------------------------------------------------------------
# StyleGAN2 decoder ("clean": plain convolutions, bilinear resampling)


class NormStyleCode(nn.Module):
    """``x / sqrt(mean(x^2, dim 1) + 1e-8)``: the first stage of the style MLP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Per-sample modulated (and optionally demodulated) convolution without bias.

    Parameters: ``modulation`` (Linear ``num_style_feat -> in_channels``), ``weight`` (1, out, in, k, k).
    ``upsample`` first resizes the input by 2 (bilinear, align_corners=False).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.modulation = nn.Linear(num_style_feat, in_channels)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(fan_in))

    def forward(self, x: Tensor, style: Tensor, fused: bool = True) -> Tensor:
        """``x`` (b, in, h, w), ``style`` (b, num_style_feat) -> (b, out, h', w') with h' = 2h if upsampling.

        ``fused`` (upstream's only form): per-sample modulated weights, one grouped convolution over the batch.
        ``fused=False``: the same function with the modulation moved onto the input and the demodulation onto
        the output, ``conv(x * s, W) * d`` (StyleGAN2's non-fused form), so one convolution with the shared
        weight covers the batch; equal up to float rounding.
        """
        b, c = x.shape[:2]
        k = self.weight.shape[-1]
        if not fused:
            return self._input_modulated(x, self.modulation(style))
        w = self.weight * self.modulation(style).view(b, 1, c, 1, 1)  # (b, out, in, k, k)
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum(dim=(2, 3, 4)) + self.eps).view(b, self.out_channels, 1, 1, 1)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, wd = x.shape[-2:]
        y = F.conv2d(x.reshape(1, b * c, h, wd), w.reshape(b * self.out_channels, c, k, k), padding=k // 2, groups=b)
        return y.view(b, self.out_channels, *y.shape[-2:])

    def _input_modulated(self, x: Tensor, s: Tensor) -> Tensor:
        """``conv(x * s, W) * d``, ``s`` (b, in) the styles and ``d = rsqrt(sum_{i,kh,kw} (W s)^2 + eps)``
        (b, out), computed as ``s^2 @ sum_{kh,kw} W^2``."""
        weight = self.weight[0]  # (out, in, k, k)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = F.conv2d(x * s.to(x.dtype)[:, :, None, None], weight.to(x.dtype), padding=weight.shape[-1] // 2)
        if self.demodulate:
            d = torch.rsqrt(s.pow(2) @ weight.pow(2).sum(dim=(2, 3)).t() + self.eps)  # (b, out)
            y = y * d.to(y.dtype)[:, :, None, None]
        return y


class StyleConv(nn.Module):
    """Modulated 3x3 conv * sqrt(2), + ``weight`` * noise, + ``bias``, leaky ReLU 0.2.

    Parameters: ``modulated_conv``, ``weight`` (1,) noise strength, ``bias`` (1, out, 1, 1).
    """

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool) -> None:
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None, noise_mode: str,
                fused_modconv: bool = True) -> Tensor:
        """``noise`` (broadcastable to (b, 1, h, w)) is used when given; otherwise ``noise_mode`` decides
        between a fresh draw (``"random"``) and no noise (anything else). ``fused_modconv``: see
        :meth:`ModulatedConv2d.forward`."""
        out = self.modulated_conv(x, style, fused_modconv)
        if noise is None and noise_mode == "random":
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        if not torch.is_grad_enabled() and out.dtype == self.bias.dtype:
            # inference: the same operations in place on the fresh convolution output, so that one (b, out, h, w)
            # tensor is alive instead of three (bit-identical: each step rounds as its out-of-place twin; under a
            # lower-precision autocast the out-of-place sums promote to the parameters' float32, so they stay)
            out.mul_(math.sqrt(2.0))
            if noise is not None:
                out.add_(self.weight * noise)
            return F.leaky_relu_(out.add_(self.bias), _SLOPE)
        out = out * math.sqrt(2.0)
        if noise is not None:
            out = out + self.weight * noise
        return F.leaky_relu(out + self.bias, _SLOPE)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + ``bias``, plus the 2x-upsampled previous image."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None, fused_modconv: bool = True) -> Tensor:
        out = self.modulated_conv(x, style, fused_modconv) + self.bias
        if skip is None:
            return out
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        return out + skip


class ConstantInput(nn.Module):
    """The learned 4x4 start, ``weight`` (1, C, 4, 4), repeated over the batch."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.weight.repeat(batch, 1, 1, 1)


class StyleGAN2DecoderSFT(nn.Module):
    """StyleGAN2 generator whose features are modulated by the U-Net's SFT conditions (``stylegan_decoder``).

    Parameters: ``style_mlp`` (NormStyleCode + ``num_mlp`` x (Linear, LReLU), indices 1, 3, ...),
    ``constant_input``, ``style_conv1``, ``to_rgb1``, ``style_convs`` (2 per level 8 .. out_size),
    ``to_rgbs`` (1 per level); buffers ``noises.noise{i}``.
    """

    def __init__(self, config: GOHASuperResolutionConfig) -> None:
        super().__init__()
        nsf = config.num_style_feat
        self.sft_half = config.sft_half
        self.num_latent = config.num_latent
        self.num_layers = config.num_layers
        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(config.num_mlp):
            linear = nn.Linear(nsf, nsf)
            nn.init.kaiming_normal_(linear.weight, a=_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            mlp += [linear, nn.LeakyReLU(_SLOPE)]
        self.style_mlp = nn.Sequential(*mlp)

        ch = config.decoder_channels()
        self.constant_input = ConstantInput(ch[4])
        self.style_conv1 = StyleConv(ch[4], ch[4], nsf, upsample=False)
        self.to_rgb1 = ToRGB(ch[4], nsf, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i, shape in enumerate(config.noise_shapes()):
            self.noises.register_buffer(f"noise{i}", torch.randn(shape))
        in_ch = ch[4]
        for level in range(3, config.log_size + 1):
            out_ch = ch[2**level]
            self.style_convs.append(StyleConv(in_ch, out_ch, nsf, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, nsf, upsample=False))
            self.to_rgbs.append(ToRGB(out_ch, nsf))
            in_ch = out_ch

    def stored_noise(self) -> list[Tensor]:
        """The buffers ``noise0 .. noise{num_layers-1}``, each (1, 1, r, r)."""
        return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

    def forward(self, style: Tensor, conditions: Sequence[Tensor], input_is_latent: bool,
                noise: Sequence[Tensor | None], noise_mode: str, fused_modconv: bool = True) -> Tensor:
        """``style``: (b, num_latent, nsf) per-layer latents or (b, nsf) one latent; ``conditions``: SFT
        [scale_8, shift_8, scale_16, shift_16, ...]; ``noise``: one entry per StyleConv (``None``: per
        ``noise_mode``); ``fused_modconv``: see :meth:`ModulatedConv2d.forward`. Returns the image (b, 3,
        out_size, out_size)."""
        fm = fused_modconv
        if not input_is_latent:
            style = self.style_mlp(style)
        latent = style if style.ndim >= 3 else style.unsqueeze(1).repeat(1, self.num_latent, 1)
        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noise[0], noise_mode, fm)
        image = self.to_rgb1(out, latent[:, 1], fused_modconv=fm)
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1  # latent / noise index of this level's first StyleConv
            out = self.style_convs[2 * k](out, latent[:, i], noise[i], noise_mode, fm)
            if i < len(conditions):
                scale, shift = conditions[i - 1], conditions[i]
                if not torch.is_grad_enabled() and torch.result_type(out, scale) == torch.result_type(out, shift) \
                        == out.dtype:
                    # inference: in place on the StyleConv's fresh output (bit-identical where no dtype promotes;
                    # no concatenated copy, and no split view keeping the old tensor alive through the next
                    # convolution)
                    (out[:, out.shape[1] // 2:] if self.sft_half else out).mul_(scale).add_(shift)
                elif self.sft_half:
                    kept, modulated = torch.split(out, out.shape[1] // 2, dim=1)
                    out = torch.cat([kept, modulated * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * k + 1](out, latent[:, i + 1], noise[i + 1], noise_mode, fm)
            image = to_rgb(out, latent[:, i + 2], image, fused_modconv=fm)
        return image


# ----------------------------------------------------------------------------------------------------------
# U-Net with SFT condition heads


class ResBlock(nn.Module):
    """conv1 3x3 + LReLU, bilinear resize by ``scale`` (align_corners=False), conv2 3x3 + LReLU, plus a
    resized 1x1 bias-free ``skip``. Parameters: ``conv1``, ``conv2``, ``skip``."""

    def __init__(self, in_channels: int, out_channels: int, scale: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale = scale

    def _resize(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.conv2(self._resize(F.leaky_relu(self.conv1(x), _SLOPE))), _SLOPE)
        return out + self.skip(self._resize(x))


def _sft_head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(_SLOPE),
                         nn.Conv2d(channels, out_channels, 3, 1, 1))


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1 clean: U-Net encoder -> latents + SFT conditions -> :class:`StyleGAN2DecoderSFT` (``gfpgan``)."""

    def __init__(self, config: GOHASuperResolutionConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.unet_channels()
        levels = range(3, config.log_size + 1)  # decoder levels 8 .. out_size
        self.conv_body_first = nn.Conv2d(3, ch[config.out_size], 1)
        self.conv_body_down = nn.ModuleList(
            ResBlock(ch[2**i], ch[2 ** (i - 1)], 0.5) for i in range(config.log_size, 2, -1))
        self.final_conv = nn.Conv2d(ch[4], ch[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(ResBlock(ch[2 ** (i - 1)], ch[2**i], 2.0) for i in levels)
        self.toRGB = nn.ModuleList(nn.Conv2d(ch[2**i], 3, 1) for i in levels)
        n_w = config.num_latent if config.different_w else 1
        self.final_linear = nn.Linear(ch[4] * 16, n_w * config.num_style_feat)
        self.stylegan_decoder = StyleGAN2DecoderSFT(config)
        sft = 1 if config.sft_half else 2
        self.condition_scale = nn.ModuleList(_sft_head(ch[2**i], sft * ch[2**i]) for i in levels)
        self.condition_shift = nn.ModuleList(_sft_head(ch[2**i], sft * ch[2**i]) for i in levels)

    def forward(self, x: Tensor, noise: Sequence[Tensor | None], noise_mode: str,
                return_rgbs: bool = False, fused_modconv: bool = True) -> tuple[Tensor, list[Tensor]]:
        """``x`` (b, 3, out_size, out_size) -> image (b, 3, out_size, out_size) and, if ``return_rgbs``, the
        U-Net's images at 8, 16, ..., out_size (else an empty list). ``fused_modconv``: see
        :meth:`ModulatedConv2d.forward`."""
        cfg = self.config
        feat = F.leaky_relu(self.conv_body_first(x), _SLOPE)
        skips: list[Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), _SLOPE)  # (b, C4, 4, 4)
        style = self.final_linear(feat.reshape(feat.shape[0], -1))
        if cfg.different_w:
            style = style.view(style.shape[0], -1, cfg.num_style_feat)  # (b, num_latent, nsf)
        conditions: list[Tensor] = []
        rgbs: list[Tensor] = []
        for k, up in enumerate(self.conv_body_up):
            feat = up(feat + skips[-1 - k])
            conditions += [self.condition_scale[k](feat), self.condition_shift[k](feat)]
            if return_rgbs:
                rgbs.append(self.toRGB[k](feat))
        del feat, skips  # the U-Net's features are not needed by the decoder: free them before its largest layers
        image = self.stylegan_decoder(style, conditions, cfg.input_is_latent, noise, noise_mode, fused_modconv)
        return image, rgbs


class GOHASuperResolution(nn.Module):
    """GOHA's ``neural_layers`` (official ``GFPUpsampler``): resize to ``out_size`` + :class:`GFPGANv1Clean`.

    Loads the official ``neural_layers.*`` entries strictly (prefix stripped: ``gfpgan.*``).
    """

    def __init__(self, config: GOHASuperResolutionConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else GOHASuperResolutionConfig()
        self.gfpgan = GFPGANv1Clean(self.config)

    @classmethod
    def tiny(cls) -> GOHASuperResolution:
        """Tiny random module for tests, see :meth:`GOHASuperResolutionConfig.tiny`."""
        return cls(GOHASuperResolutionConfig.tiny())

    def stored_noise(self) -> list[Tensor]:
        """The checkpoint's fixed noise, one (1, 1, r, r) tensor per StyleConv (what ``"const"`` uses)."""
        return self.gfpgan.stylegan_decoder.stored_noise()

    @overload
    def forward(self, img: Tensor, *, noise_mode: str | None = ..., noise: Sequence[Tensor] | None = ...,
                return_rgbs: Literal[False] = ..., fused_modconv: bool = ...) -> Tensor: ...

    @overload
    def forward(self, img: Tensor, *, noise_mode: str | None = ..., noise: Sequence[Tensor] | None = ...,
                return_rgbs: Literal[True], fused_modconv: bool = ...) -> tuple[Tensor, list[Tensor]]: ...

    def forward(self, img: Tensor, *, noise_mode: str | None = None, noise: Sequence[Tensor] | None = None,
                return_rgbs: bool = False, fused_modconv: bool = True) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Super-resolve ``img`` (b, 3, h, w) in [-1, 1] (GOHA: the 224x224 render) to (b, 3, S, S), S = out_size.

        Args:
            noise_mode: ``"const"`` (the stored buffers), ``"random"`` (the official fresh draws) or
                ``"none"``; ``None`` takes ``config.noise_mode`` (``"const"``).
            noise: ``config.num_layers`` tensors broadcastable to (b, 1, r, r) (r = 4, 8, 8, 16, 16, ...), used
                instead of ``noise_mode`` (the official ``noise`` argument).
            return_rgbs: also return the U-Net's intermediate images at 8, 16, ..., S (the official second output).
            fused_modconv: ``True`` (upstream): per-sample modulated weights in grouped convolutions; ``False``:
                the modulation on the inputs and one shared-weight convolution over the batch (equal up to
                rounding; see :meth:`ModulatedConv2d.forward`).
        """
        mode = self.config.noise_mode if noise_mode is None else noise_mode
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        n = self.config.num_layers
        layers: Sequence[Tensor | None]
        if noise is not None:
            if len(noise) != n:
                raise ValueError(f"noise must hold {n} tensors (one per StyleConv), got {len(noise)}")
            layers = noise
        elif mode == "const":
            layers = self.stored_noise()
        else:
            layers = [None] * n
        size = self.config.out_size
        x = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=True)
        image, rgbs = self.gfpgan(x, layers, mode, return_rgbs=return_rgbs, fused_modconv=fused_modconv)
        return (image, rgbs) if return_rgbs else image

    def extra_repr(self) -> str:
        c = self.config
        return f"out_size={c.out_size}, num_style_feat={c.num_style_feat}, noise_mode={c.noise_mode!r}"


def official_kwargs(config: GOHASuperResolutionConfig) -> dict[str, object]:
    """The config as the official ``GFPGANv1Clean`` keyword arguments (for comparisons)."""
    d = asdict(config)
    d.pop("noise_mode")
    return {**d, "decoder_load_path": None, "fix_decoder": False}
