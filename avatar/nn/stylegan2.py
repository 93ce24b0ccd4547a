"""StyleGAN2 synthesis layers and the EG3D/Portrait4D super-resolution module, in plain PyTorch.

Parameter and buffer names and shapes follow the official code so that its state dicts load strictly:
``SuperresolutionHybrid8XDC`` holds ``block0`` (``channels -> 256`` at 256^2) and ``block1``
(``256 -> 128`` at 512^2), each a :class:`SynthesisBlock` with ``conv0`` (2x up), ``conv1`` and ``torgb``.

Numerics follow the official reference path: weight demodulation with ``eps = 1e-8``, fused (grouped)
or non-fused modulation, transposed-conv upsampling followed by the ``[1, 3, 3, 1]`` FIR filter, leaky
ReLU with gain ``sqrt(2)``, and optional fp16 execution on CUDA with ``conv_clamp = 256``.

Shapes: ``N`` batch, ``w_dim`` style width (512 in Portrait4D), images ``[N, C, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avatar.configuration import Config

from .upfirdn import ACTIVATIONS, bias_act, conv2d_resample, setup_filter, upsample2d

__all__ = [
    "FullyConnectedLayer",
    "SRConfig",
    "SuperresolutionHybrid8XDC",
    "SynthesisBlock",
    "SynthesisLayer",
    "ToRGBLayer",
    "constant_ws",
    "modulated_conv2d",
]

FusedModconv = bool | str  # True, False or "inference_only" (= fused when not training)
NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------------------------------------
# Functional pieces.


def _prenormalize_fp16(weight: torch.Tensor, styles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale weight (per output channel) and styles (per sample) by their max-abs to avoid fp16 overflow.

    Both scalings cancel under demodulation, so only rounding changes.
    """
    _, i, kh, kw = weight.shape
    w_max = weight.abs().amax(dim=[1, 2, 3], keepdim=True)
    weight = weight * (1 / math.sqrt(i * kh * kw) / w_max)
    styles = styles / styles.abs().amax(dim=1, keepdim=True)
    return weight, styles


def _modulate(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Per-sample modulated weight: ``[O, I, kh, kw] x [N, I] -> [N, O, I, kh, kw]``."""
    return weight.unsqueeze(0) * styles.reshape(styles.shape[0], 1, -1, 1, 1)


def _demod_coefs(w: torch.Tensor) -> torch.Tensor:
    """Demodulation coefficients ``[N, O]`` of modulated weights ``[N, O, I, kh, kw]``."""
    return (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()


def _modconv_unfused(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    dcoefs: torch.Tensor | None,
    noise: torch.Tensor | None,
    conv_kwargs: dict,
) -> torch.Tensor:
    """Modulate activations, convolve with the shared weight, then demodulate and add noise."""
    x = x * styles.to(x.dtype).reshape(styles.shape[0], -1, 1, 1)  # (styles of batch 1 broadcast)
    x = conv2d_resample(x, weight.to(x.dtype), **conv_kwargs)
    if dcoefs is not None and noise is not None:
        return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(dcoefs.shape[0], -1, 1, 1))
    if dcoefs is not None:
        return x * dcoefs.to(x.dtype).reshape(dcoefs.shape[0], -1, 1, 1)
    if noise is not None:
        return x + noise.to(x.dtype)
    return x


def _modconv_fused(
    x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None, conv_kwargs: dict
) -> torch.Tensor:
    """One grouped convolution with per-sample weights ``w`` ``[N, O, I, kh, kw]``; with ``N = 1`` and a larger
    batch of ``x``, one plain convolution of the whole batch with that weight (the same per-sample maths)."""
    n, _, i, kh, kw = w.shape
    if n == 1 and x.shape[0] > 1:
        x = conv2d_resample(x, w[0].to(x.dtype), **conv_kwargs)
        return (x + noise).to(x.dtype) if noise is not None else x
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, i, kh, kw)
    x = conv2d_resample(x, w.to(x.dtype), groups=n, **conv_kwargs)
    x = x.reshape(n, -1, *x.shape[2:])
    return (x + noise).to(x.dtype) if noise is not None else x  # fp32 add, result kept in x.dtype


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    ``y[n] = conv(x[n], weight * styles[n][None, :, None, None]) * d[n]`` where the demodulation
    ``d[n, o] = 1 / sqrt(sum_{i,k} (weight[o, i, k] * styles[n, i])^2 + 1e-8)`` (if ``demodulate``).

    Args:
        x: ``[N, I, H, W]``.
        weight: ``[O, I, kh, kw]``.
        styles: ``[N, I]``, or ``[1, I]``: one style for every sample (Portrait4D's SR runs on the constant
            ``w_avg``), which modulates the weight once and convolves the batch with it.
        noise: broadcastable to the output ``[N, O, H', W']`` (e.g. ``[N, 1, H', W']`` or ``[H', W']``).
        up: integer upsampling factor (FIR ``resample_filter`` after a transposed conv).
        down: integer downsampling factor.
        padding: padding with respect to the upsampled image.
        resample_filter: float32 filter from :func:`~avatar.nn.upfirdn.setup_filter`.
        demodulate: apply weight demodulation.
        flip_weight: ``True`` = correlation (as ``F.conv2d``), ``False`` = true convolution.
        fused_modconv: one grouped conv with per-sample weights, else scale activations around a shared conv.

    Returns:
        ``[N, O, H * up // down, W * up // down]`` (for ``padding = kh // 2``), dtype of ``x``.
    """
    n = x.shape[0]
    o, i, kh, kw = weight.shape
    if x.shape[1] != i or styles.ndim != 2 or styles.shape[1] != i or styles.shape[0] not in (1, n):
        raise ValueError(
            f"shape mismatch: x {tuple(x.shape)}, weight {tuple(weight.shape)}, styles {tuple(styles.shape)}"
        )
    if x.dtype == torch.float16 and demodulate:
        weight, styles = _prenormalize_fp16(weight, styles)

    w = _modulate(weight, styles) if (demodulate or fused_modconv) else None
    dcoefs = _demod_coefs(w) if (demodulate and w is not None) else None
    conv_kwargs = dict(f=resample_filter, up=up, down=down, padding=padding, flip_weight=flip_weight)
    if not fused_modconv:
        return _modconv_unfused(x, weight, styles, dcoefs, noise, conv_kwargs)
    assert w is not None
    if dcoefs is not None:
        w = w * dcoefs.reshape(w.shape[0], -1, 1, 1, 1)
    return _modconv_fused(x, w, noise, conv_kwargs)


def _resolve_fused(fused_modconv: FusedModconv, training: bool) -> bool:
    """``'inference_only'`` -> fused when not training."""
    if fused_modconv == "inference_only":
        return not training
    return bool(fused_modconv)


def constant_ws(w_avg: torch.Tensor, batch_size: int, num_ws: int = 1) -> torch.Tensor:
    """Broadcast the reconstructor's ``w_avg`` buffer ``[w_dim]`` to ``ws`` ``[N, num_ws, w_dim]``."""
    return w_avg.reshape(1, 1, -1).repeat(batch_size, num_ws, 1)


# ----------------------------------------------------------------------------------------------------------
# Layers.


class FullyConnectedLayer(nn.Module):
    """Equalized-learning-rate linear layer: ``act(x @ (W * lr / sqrt(in)).T + b * lr)``.

    Parameters: ``weight`` ``[out, in]``, ``bias`` ``[out]`` (optional).
    Input ``[N, in]`` -> output ``[N, out]``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, in] -> [N, out]``."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"
        )


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x upsampling) + noise + bias + leaky ReLU.

    Parameters/buffers: ``weight`` ``[O, I, k, k]``, ``noise_strength`` ``[]``, ``bias`` ``[O]``,
    ``resample_filter`` ``[4, 4]``, ``noise_const`` ``[res, res]``, ``affine`` (``w_dim -> I``).
    Input ``[N, I, res / up, res / up]`` and ``w`` ``[N, w_dim]`` -> ``[N, O, res, res]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATIONS[activation].def_gain
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def _noise(self, x: torch.Tensor, noise_mode: str) -> torch.Tensor | None:
        """Per-pixel noise ``[N, 1, res, res]`` (random) or ``[res, res]`` (const), scaled; or ``None``."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if not self.use_noise or noise_mode == "none":
            return None
        if noise_mode == "random":
            shape = [x.shape[0], 1, self.resolution, self.resolution]
            return torch.randn(shape, device=x.device) * self.noise_strength
        return self.noise_const * self.noise_strength

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        gain: float = 1,
    ) -> torch.Tensor:
        """``x`` ``[N, I, res / up, res / up]``, ``w`` ``[N, w_dim]`` -> ``[N, O, res, res]`` (dtype of ``x``)."""
        styles = self.affine(w)
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            noise=self._noise(x, noise_mode),
            up=self.up,
            padding=self.padding,
            resample_filter=self.resample_filter,
            flip_weight=(self.up == 1),
            fused_modconv=fused_modconv,
        )
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(
            x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp
        )

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated (not demodulated) 1x1 conv to image channels, plus bias.

    Parameters: ``weight`` ``[C_img, I, k, k]``, ``bias`` ``[C_img]``, ``affine`` (``w_dim -> I``).
    Input ``[N, I, H, W]`` and ``w`` ``[N, w_dim]`` -> ``[N, C_img, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int = 1,
        conv_clamp: float | None = None,
        zero_weight: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        shape = [out_channels, in_channels, kernel_size, kernel_size]
        self.weight = nn.Parameter(torch.zeros(shape) if zero_weight else torch.randn(shape))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        """``[N, I, H, W]``, ``[N, w_dim]`` -> ``[N, C_img, H, W]`` (dtype of ``x``)."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


class SynthesisBlock(nn.Module):
    """StyleGAN2 synthesis block ('skip' or 'orig'): ``conv0`` (``up``x) -> ``conv1`` -> ``torgb`` added to the
    FIR-upsampled incoming image.

    Takes ``num_conv + num_torgb`` styles (3 for a block with input): ``ws`` ``[N, 3, w_dim]``.
    ``x`` ``[N, I, res / up, res / up]``, ``img`` ``[N, C_img, res / up, res / up]`` or ``None``
    -> ``x`` ``[N, O, res, res]``, ``img`` float32 ``[N, C_img, res, res]``.
    ``in_channels = 0`` starts from a learned constant (``const`` ``[O, res, res]``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        is_last: bool,
        up: int = 2,
        architecture: str = "skip",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = 256,
        use_fp16: bool = False,
        fused_modconv_default: FusedModconv = True,
        zero_torgb: bool = False,
        **layer_kwargs: Any,
    ) -> None:
        super().__init__()
        if architecture not in ("skip", "orig"):
            raise ValueError(f"architecture {architecture!r} is not supported (only 'skip' and 'orig')")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.fused_modconv_default = fused_modconv_default
        self.up = up
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim=w_dim,
                resolution=resolution,
                up=up,
                resample_filter=resample_filter,
                conv_clamp=conv_clamp,
                **layer_kwargs,
            )
            self.num_conv += 1
        self.conv1 = SynthesisLayer(
            out_channels,
            out_channels,
            w_dim=w_dim,
            resolution=resolution,
            conv_clamp=conv_clamp,
            **layer_kwargs,
        )
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(
                out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp, zero_weight=zero_torgb
            )
            self.num_torgb += 1

    def _dtype(self, device: torch.device, force_fp32: bool) -> torch.dtype:
        """fp16 only for fp16 blocks on CUDA (as upstream: CPU always runs in float32)."""
        if self.use_fp16 and not force_fp32 and device.type == "cuda":
            return torch.float16
        return torch.float32

    def _input(self, x: torch.Tensor | None, ws: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The block's input activations ``[N, I, res / up, res / up]`` in ``dtype``."""
        if self.in_channels == 0:
            return self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
        side = self.resolution // self.up
        if x is None or tuple(x.shape[1:]) != (self.in_channels, side, side):
            got = None if x is None else tuple(x.shape)
            raise ValueError(f"expected x of shape [N, {self.in_channels}, {side}, {side}], got {got}")
        return x.to(dtype)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        force_fp32: bool = False,
        fused_modconv: FusedModconv | None = None,
        noise_mode: str = "random",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x, img, ws [N, num_conv + num_torgb, w_dim]) -> (x [N, O, res, res], img [N, C_img, res, res])``."""
        n_ws = self.num_conv + self.num_torgb
        if ws.ndim != 3 or ws.shape[1] != n_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"expected ws of shape [N, {n_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        w_iter = iter(ws.unbind(dim=1))
        dtype = self._dtype(ws.device, force_fp32)
        fused = _resolve_fused(
            self.fused_modconv_default if fused_modconv is None else fused_modconv, self.training
        )

        x = self._input(x, ws, dtype)
        if self.in_channels != 0:
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)
        x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused)

        if img is not None and self.up > 1:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused).to(torch.float32)
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


# ----------------------------------------------------------------------------------------------------------
# Super-resolution.


@dataclass(frozen=True)
class SRConfig(Config):
    """Constructor arguments of :class:`SuperresolutionHybrid8XDC`.

    The defaults are Portrait4D's (``channels=32`` feature input, 256/128 block widths, ``w_dim=512``,
    fp16 on CUDA since ``sr_num_fp16_res=4``, antialiased resize, ``fused_modconv='inference_only'``).
    """

    channels: int = 32
    block0_channels: int = 256
    block1_channels: int = 128
    w_dim: int = 512
    sr_num_fp16_res: int = 4
    sr_antialias: bool = True
    use_ws_ones: bool = False
    fused_modconv_default: FusedModconv = "inference_only"

    @classmethod
    def tiny(cls) -> SRConfig:
        """A few-kilo-parameter config for tests (resolutions stay 128 -> 256 -> 512)."""
        return cls(channels=8, block0_channels=8, block1_channels=4, w_dim=16, sr_num_fp16_res=0)

    def build(self) -> SuperresolutionHybrid8XDC:
        """Construct the module (random init; downloads nothing)."""
        return SuperresolutionHybrid8XDC(**asdict(self))


class SuperresolutionHybrid8XDC(nn.Module):
    """EG3D-style 4x super-resolution used by Portrait4D: 128^2 features -> 512^2 RGB.

    ``block0``: ``SynthesisBlock(channels -> block0_channels, res 256)``;
    ``block1``: ``SynthesisBlock(block0_channels -> block1_channels, res 512, is_last)``.
    Both blocks use the same three styles, ``ws[:, -1]`` repeated (all ones if ``use_ws_ones``).
    Inputs not at 128^2 are first resized to 128^2 (bilinear, ``align_corners=False``, antialias
    ``sr_antialias``). With ``sr_num_fp16_res > 0`` the blocks run in fp16 on CUDA with ``conv_clamp=256``.
    """

    input_resolution = 128
    img_resolution = 512

    def __init__(
        self,
        channels: int = 32,
        block0_channels: int = 256,
        block1_channels: int = 128,
        w_dim: int = 512,
        sr_num_fp16_res: int = 4,
        sr_antialias: bool = True,
        use_ws_ones: bool = False,
        fused_modconv_default: FusedModconv = "inference_only",
    ) -> None:
        super().__init__()
        use_fp16 = sr_num_fp16_res > 0
        conv_clamp = 256 if use_fp16 else None
        self.w_dim = w_dim
        self.use_ws_ones = use_ws_ones
        self.sr_antialias = sr_antialias
        block_kwargs = dict(
            w_dim=w_dim,
            img_channels=3,
            use_fp16=use_fp16,
            conv_clamp=conv_clamp,
            fused_modconv_default=fused_modconv_default,
        )
        self.block0 = SynthesisBlock(channels, block0_channels, resolution=256, is_last=False, **block_kwargs)
        self.block1 = SynthesisBlock(
            block0_channels, block1_channels, resolution=512, is_last=True, **block_kwargs
        )

    @classmethod
    def tiny(cls) -> SuperresolutionHybrid8XDC:
        """Tiny random module for tests, see :meth:`SRConfig.tiny`."""
        return SRConfig.tiny().build()

    def _styles(self, ws: torch.Tensor, ws_super: torch.Tensor | None) -> torch.Tensor:
        """``[N, K, w_dim] -> [N, 3, w_dim]``: the last style repeated, or ones."""
        src = ws if ws_super is None else ws_super
        styles = src[:, -1:, :].repeat(1, 3, 1)
        return torch.ones_like(styles) if self.use_ws_ones else styles

    def _resize(self, t: torch.Tensor) -> torch.Tensor:
        """Bilinear resize ``[N, C, H, W] -> [N, C, 128, 128]`` (antialiased if ``sr_antialias``)."""
        size = (self.input_resolution, self.input_resolution)
        return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=self.sr_antialias)

    def forward(
        self,
        rgb: torch.Tensor,
        x: torch.Tensor,
        ws: torch.Tensor,
        ws_super: torch.Tensor | None = None,
        noise_mode: str = "none",
        force_fp32: bool = False,
        fused_modconv: FusedModconv | None = None,
    ) -> torch.Tensor:
        """Upsample raw renders to 512^2.

        Args:
            rgb: ``[N, 3, h, w]`` raw RGB in [-1, 1] (usually ``x[:, :3]``).
            x: ``[N, channels, h, w]`` raw feature image; ``h = w = 128`` at Portrait4D inference.
            ws: ``[N, K, w_dim]``; only ``ws[:, -1]`` is used (Portrait4D passes ``w_avg``, ``K = 1``).
            ws_super: optional replacement for ``ws`` (same shape).
            noise_mode: ``'none'`` (Portrait4D's setting), ``'const'`` or ``'random'``.
            force_fp32: run fp16 blocks in float32.
            fused_modconv: override the blocks' default (``'inference_only'``).

        Returns:
            ``[N, 3, 512, 512]`` float32 RGB.
        """
        styles = self._styles(ws, ws_super)
        if x.shape[-1] != self.input_resolution:
            x = self._resize(x)
            rgb = self._resize(rgb)
        kwargs = dict(force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode)
        x, img = self.block0(x, rgb, styles, **kwargs)
        _, img = self.block1(x, img, styles, **kwargs)
        assert img is not None
        return img
