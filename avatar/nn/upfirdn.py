"""Resampling and bias/activation ops of StyleGAN2, in plain PyTorch (no CUDA extensions).

These follow the *reference* maths of NVIDIA's ``upfirdn2d``, ``bias_act`` and ``conv2d_resample`` ops,
which the official Portrait4D / EG3D code falls back to on CPU. Everything here works on any device
and supports autograd of any order.

Shape conventions: images are ``[N, C, H, W]``; a FIR filter is ``[fh, fw]`` (non-separable) or
``[taps]`` (separable, applied along x then y); convolution weights are ``[O, I // groups, kh, kw]``.

Padding arguments accept an ``int`` (all sides), ``(px, py)`` or ``(x_before, x_after, y_before, y_after)``;
scaling arguments accept an ``int`` or ``(sx, sy)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "bias_act",
    "conv2d_resample",
    "depthwise_fir",
    "depthwise_fir_reference",
    "downsample2d",
    "filter2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]

Scaling = int | Sequence[int]
Padding = int | Sequence[int]
FilterLike = torch.Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]] | float | None


# ----------------------------------------------------------------------------------------------------------
# Argument parsing.


def _parse_scaling(scaling: Scaling) -> tuple[int, int]:
    """``int | (sx, sy)`` -> ``(sx, sy)``, both >= 1."""
    if isinstance(scaling, int):
        scaling = (scaling, scaling)
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f"scaling factors must be >= 1, got {scaling}")
    return sx, sy


def _parse_padding(padding: Padding) -> tuple[int, int, int, int]:
    """``int | (px, py) | (x0, x1, y0, y1)`` -> ``(x0, x1, y0, y1)``."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    pads = [int(p) for p in padding]
    if len(pads) == 2:
        return pads[0], pads[0], pads[1], pads[1]
    if len(pads) == 4:
        return pads[0], pads[1], pads[2], pads[3]
    raise ValueError(f"padding must have 1, 2 or 4 entries, got {padding}")


def _filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """Width and height ``(fw, fh)`` of a filter; ``(1, 1)`` for ``None``."""
    if f is None:
        return 1, 1
    if f.ndim not in (1, 2):
        raise ValueError(f"filter must be 1-D or 2-D, got shape {tuple(f.shape)}")
    return int(f.shape[-1]), int(f.shape[0])


# ----------------------------------------------------------------------------------------------------------
# FIR filters.


def setup_filter(
    f: FilterLike,
    device: torch.device | str | None = None,
    normalize: bool = True,
    flip_filter: bool = False,
    gain: float = 1,
    separable: bool | None = None,
) -> torch.Tensor:
    """Prepare a FIR filter for :func:`upfirdn2d`.

    Args:
        f: taps ``[n]``, a 2-D filter ``[fh, fw]``, a scalar (impulse) or ``None`` (identity).
        device: device of the result.
        normalize: scale so that the taps sum to 1 (keeps a constant signal's magnitude).
        flip_filter: flip the filter along every axis.
        gain: overall signal gain (applied as ``gain ** (ndim / 2)`` to the taps).
        separable: keep a 1-D filter separable; default: only when it has 8 or more taps.

    Returns:
        float32 tensor ``[n]`` (separable) or ``[fh, fw]``; ``[1, 3, 3, 1]`` gives a ``[4, 4]`` filter.
    """
    t = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if t.ndim == 0:
        t = t.reshape(1)
    if t.ndim not in (1, 2) or t.numel() == 0:
        raise ValueError(f"bad filter shape {tuple(t.shape)}")
    if separable is None:
        separable = t.ndim == 1 and t.numel() >= 8
    if t.ndim == 1 and not separable:
        t = torch.outer(t, t)
    if t.ndim != (1 if separable else 2):
        raise ValueError("a 2-D filter cannot be made separable")
    if normalize:
        t = t / t.sum()
    if flip_filter:
        t = t.flip(list(range(t.ndim)))
    t = t * (gain ** (t.ndim / 2))
    return t if device is None else t.to(device=device)


def _zero_upsample(x: torch.Tensor, upx: int, upy: int) -> torch.Tensor:
    """Insert ``up - 1`` zeros after every pixel: ``[N, C, H, W] -> [N, C, H * upy, W * upx]``."""
    if upx == 1 and upy == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    return x.reshape(n, c, h * upy, w * upx)


def _pad_or_crop(x: torch.Tensor, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Zero-pad positive entries of ``(x0, x1, y0, y1)`` and crop negative ones."""
    x0, x1, y0, y1 = pads
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    h, w = x.shape[2], x.shape[3]
    return x[:, :, max(-y0, 0) : h - max(-y1, 0), max(-x0, 0) : w - max(-x1, 0)]


def depthwise_fir_reference(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """'valid' depthwise correlation of every channel with ``f`` (``[fh, fw]`` or separable ``[n]``), as grouped
    convolutions differentiated by autograd (upstream's reference maths; :func:`depthwise_fir` is the fast path)."""
    c = x.shape[1]
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)


def _conv_input_grad(grad: torch.Tensor, weight: torch.Tensor, input_shape: torch.Size) -> torch.Tensor:
    """The input gradient of ``F.conv2d(x, weight, groups=C)`` for an ``x`` of ``input_shape``: the very call
    autograd makes (``convolution_backward`` with only the input gradient asked for), so the same numbers."""
    groups = weight.shape[0]
    stand_in = grad.new_empty(1).expand(input_shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(grad, stand_in, weight, None, [1, 1], [0, 0], [1, 1], False, [0, 0],
                                               groups, [True, False, False])[0]


class _GroupedFIR(torch.autograd.Function):
    """``F.conv2d(x, weight, groups=C)`` with a constant one-channel-per-group ``weight``, whose backward is
    :class:`_GroupedFIRAdjoint` (and whose adjoint's backward is this again): gradients of any order, each one
    convolution.

    Why: PyTorch's double backward of a grouped convolution runs one small convolution per group, which made the
    discriminator's R1 pass (``Dreg``: gradients of gradients through every FIR filter of every block) launch
    thousands of tiny kernels (7 s per Dreg of the official v2 at batch 4 on an H200; 0.2 s on an H100 with
    the first version of this fix). The first-order numbers are
    autograd's own (the same ``convolution_backward`` call); upstream's CUDA ``upfirdn2d`` is built the same way.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.input_shape = x.shape
        return F.conv2d(x, weight, groups=weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return _GroupedFIRAdjoint.apply(grad, weight, ctx.input_shape), None


class _GroupedFIRAdjoint(torch.autograd.Function):
    """The input gradient of :class:`_GroupedFIR` (a linear map of the gradient); its backward is the filter."""

    @staticmethod
    def forward(ctx: Any, grad: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                input_shape: torch.Size) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _conv_input_grad(grad, weight, input_shape)

    @staticmethod
    def backward(ctx: Any, grad_grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        return _GroupedFIR.apply(grad_grad, weight), None, None


def depthwise_fir(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """'valid' depthwise correlation of every channel of ``x`` ``[N, C, H, W]`` with the constant filter ``f``
    (``[fh, fw]``, or separable ``[n]`` applied along W then H): ``[N, C, H - fh + 1, W - fw + 1]``. The same
    grouped convolutions as :func:`depthwise_fir_reference`, with backward passes of any order that are one
    convolution each (:class:`_GroupedFIR`); values and first-order gradients are bit for bit the reference's."""
    if f.requires_grad:  # a learned filter: autograd's own path (none of upstream's filters is learned)
        return depthwise_fir_reference(x, f)
    c = x.shape[1]
    if f.ndim == 2:
        return _GroupedFIR.apply(x, f[None, None].repeat(c, 1, 1, 1))
    x = _GroupedFIR.apply(x, f[None, None, None, :].repeat(c, 1, 1, 1))
    return _GroupedFIR.apply(x, f[None, None, :, None].repeat(c, 1, 1, 1))


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 1,
    down: Scaling = 1,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample (decimation) a batch of images.

    Per channel: insert ``up - 1`` zeros after each pixel, pad by ``padding`` (negative = crop), convolve
    with ``f`` keeping only fully-covered outputs ("valid"), then keep every ``down``-th pixel.

    Args:
        x: ``[N, C, H, W]``.
        f: float32 filter ``[fh, fw]`` or separable ``[n]`` (see :func:`setup_filter`), or ``None``.
        up: upsampling factor(s).
        down: downsampling factor(s).
        padding: padding in the upsampled image.
        flip_filter: ``False`` = true convolution, ``True`` = correlation.
        gain: overall signal gain.

    Returns:
        ``[N, C, H_out, W_out]`` with ``W_out = (W * upx + x0 + x1 - fw) // downx + 1`` (same for H).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [N, C, H, W], got shape {tuple(x.shape)}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    pads = _parse_padding(padding)
    fw, fh = _filter_size(f)
    if x.shape[3] * upx + pads[0] + pads[1] < fw or x.shape[2] * upy + pads[2] + pads[3] < fh:
        raise ValueError("the padded, upsampled image is smaller than the filter")

    x = _pad_or_crop(_zero_upsample(x, upx, upy), pads)
    f = (f * (gain ** (f.ndim / 2))).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    x = depthwise_fir(x, f)
    return x[:, :, ::downy, ::downx]


def filter2d(
    x: torch.Tensor, f: torch.Tensor | None, padding: Padding = 0, flip_filter: bool = False, gain: float = 1
) -> torch.Tensor:
    """FIR-filter ``[N, C, H, W]`` keeping its size (plus ``padding``, relative to the output)."""
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pads = [x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pads, flip_filter=flip_filter, gain=gain)


def upsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    up: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Upsample ``[N, C, H, W] -> [N, C, H * upy, W * upx]`` with FIR filter ``f`` (``padding`` on the output)."""
    upx, upy = _parse_scaling(up)
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pads = [
        x0 + (fw + upx - 1) // 2,
        x1 + (fw - upx) // 2,
        y0 + (fh + upy - 1) // 2,
        y1 + (fh - upy) // 2,
    ]
    return upfirdn2d(x, f, up=(upx, upy), padding=pads, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(
    x: torch.Tensor,
    f: torch.Tensor | None,
    down: Scaling = 2,
    padding: Padding = 0,
    flip_filter: bool = False,
    gain: float = 1,
) -> torch.Tensor:
    """Downsample ``[N, C, H, W] -> [N, C, H // downy, W // downx]`` with FIR filter ``f`` (``padding`` on the input)."""
    downx, downy = _parse_scaling(down)
    x0, x1, y0, y1 = _parse_padding(padding)
    fw, fh = _filter_size(f)
    pads = [
        x0 + (fw - downx + 1) // 2,
        x1 + (fw - downx) // 2,
        y0 + (fh - downy + 1) // 2,
        y1 + (fh - downy) // 2,
    ]
    return upfirdn2d(x, f, down=(downx, downy), padding=pads, flip_filter=flip_filter, gain=gain)


# ----------------------------------------------------------------------------------------------------------
# Convolution with up/downsampling.


def _conv(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int = 1,
    padding: Sequence[int] = (0, 0),
    groups: int = 1,
    transpose: bool = False,
    flip_weight: bool = True,
) -> torch.Tensor:
    """``conv2d`` / ``conv_transpose2d``; ``flip_weight=False`` turns correlation into true convolution."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=tuple(padding), groups=groups)


def _resample_padding(padding: Padding, fw: int, fh: int, up: int, down: int) -> tuple[int, int, int, int]:
    """Padding of :func:`conv2d_resample` widened for the FIR filter used when resampling."""
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1:
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    return px0, px1, py0, py1


def _transposed_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``[O, I/g, kh, kw] -> [I, O/g, kh, kw]``, the layout ``conv_transpose2d`` expects."""
    o, ipg, kh, kw = w.shape
    if groups == 1:
        return w.transpose(0, 1)
    w = w.reshape(groups, o // groups, ipg, kh, kw).transpose(1, 2)
    return w.reshape(groups * ipg, o // groups, kh, kw)


def _conv2d_up(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None,
    up: int,
    down: int,
    pads: tuple[int, int, int, int],
    groups: int,
    flip_weight: bool,
    flip_filter: bool,
) -> torch.Tensor:
    """Upsampling branch of :func:`conv2d_resample`: strided transposed conv, then FIR filter."""
    kh, kw = w.shape[2], w.shape[3]
    px0, px1, py0, py1 = pads
    px0, px1 = px0 - (kw - 1), px1 - (kw - up)
    py0, py1 = py0 - (kh - 1), py1 - (kh - up)
    pxt = max(min(-px0, -px1), 0)
    pyt = max(min(-py0, -py1), 0)
    wt = _transposed_weight(w, groups)
    x = _conv(
        x, wt, stride=up, padding=(pyt, pxt), groups=groups, transpose=True, flip_weight=not flip_weight
    )
    fir_pads = [px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt]
    x = upfirdn2d(x, f, padding=fir_pads, gain=up**2, flip_filter=flip_filter)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    padding: Padding = 0,
    groups: int = 1,
    flip_weight: bool = True,
    flip_filter: bool = False,
) -> torch.Tensor:
    """2-D convolution with optional FIR up/downsampling; padding is applied once, up front.

    Args:
        x: ``[N, I, H, W]``.
        w: ``[O, I // groups, kh, kw]``, same dtype as ``x``.
        f: float32 low-pass filter from :func:`setup_filter` (``None`` = identity).
        up: integer upsampling factor.
        down: integer downsampling factor.
        padding: padding with respect to the upsampled image.
        groups: grouped convolution.
        flip_weight: ``True`` = correlation (like ``F.conv2d``), ``False`` = true convolution.
        flip_filter: ``True`` = correlate with ``f`` instead of convolving.

    Returns:
        ``[N, O, H', W']``; for ``kh = 3``, ``padding = 1``: ``H' = H * up // down``.
    """
    if w.dtype != x.dtype:
        raise ValueError(f"weight dtype {w.dtype} != input dtype {x.dtype}")
    kh, kw = int(w.shape[2]), int(w.shape[3])
    fw, fh = _filter_size(f)
    pads = _resample_padding(padding, fw, fh, up, down)
    px0, px1, py0, py1 = pads
    if kw == 1 and kh == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=pads, flip_filter=flip_filter)
        return _conv(x, w, groups=groups, flip_weight=flip_weight)
    if kw == 1 and kh == 1 and up > 1 and down == 1:
        x = _conv(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=pads, gain=up**2, flip_filter=flip_filter)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pads, flip_filter=flip_filter)
        return _conv(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        return _conv2d_up(x, w, f, up, down, pads, groups, flip_weight, flip_filter)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv(x, w, padding=(py0, px0), groups=groups, flip_weight=flip_weight)
    x = upfirdn2d(x, None, padding=pads)
    return _conv(x, w, groups=groups, flip_weight=flip_weight)


# ----------------------------------------------------------------------------------------------------------
# Bias + activation.


@dataclass(frozen=True)
class Activation:
    """An activation of :func:`bias_act`: ``func(x, alpha)``, its default ``alpha`` and default output gain."""

    func: Callable[[torch.Tensor, float], torch.Tensor]
    def_alpha: float
    def_gain: float


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(lambda x, a: x, 0.0, 1.0),
    "relu": Activation(lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": Activation(lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": Activation(lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": Activation(lambda x, a: torch.sigmoid(x), 0.0, 1.0),
    "elu": Activation(lambda x, a: F.elu(x), 0.0, 1.0),
    "selu": Activation(lambda x, a: F.selu(x), 0.0, 1.0),
    "softplus": Activation(lambda x, a: F.softplus(x), 0.0, 1.0),
    "swish": Activation(lambda x, a: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def bias_act(
    x: torch.Tensor,
    b: torch.Tensor | None = None,
    dim: int = 1,
    act: str = "linear",
    alpha: float | None = None,
    gain: float | None = None,
    clamp: float | None = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain, -clamp, clamp)``, each step optional.

    Args:
        x: any shape.
        b: ``[x.shape[dim]]`` bias, broadcast along ``dim``; ``None`` = no bias.
        dim: axis of ``x`` that ``b`` runs along.
        act: one of :data:`ACTIVATIONS` (``'linear'``, ``'relu'``, ``'lrelu'``, ...).
        alpha: activation shape parameter (leaky slope for ``'lrelu'``); ``None`` = default (0.2).
        gain: output scale; ``None`` = the activation's default (``sqrt(2)`` for relu/lrelu/swish, else 1).
        clamp: clamp the output to ``[-clamp, clamp]``; ``None`` = no clamping.

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    spec = ACTIVATIONS[act]
    alpha = float(spec.def_alpha if alpha is None else alpha)
    gain = float(spec.def_gain if gain is None else gain)
    if clamp is not None and clamp < 0:
        raise ValueError("clamp must be >= 0")
    if b is not None:
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias of shape {tuple(b.shape)} does not match x.shape[{dim}]")
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)])
    x = spec.func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-float(clamp), float(clamp))
    return x
