"""The training discriminator of Portrait4D (v1, v2) and GenHead: EG3D's dual discriminator, with uv and seg.

A port of the official ``training/discriminator/dual_discriminator.py::DualDiscriminatorDeform`` of
YuDeng/Portrait-4D and of the StyleGAN2 discriminator layers it uses
(``models/stylegan/networks_stylegan2.py``: ``Conv2dLayer``, ``MappingNetwork``, ``DiscriminatorBlock``,
``MinibatchStdLayer``, ``DiscriminatorEpilogue``). Parameter and buffer names are the official ones, so the
``D`` of an EG3D persistence pickle (``avatar convert FILE --network D``) loads strictly
(:meth:`DualDiscriminator.from_official`); the released snapshots' discriminators are registered model ids
(``DualDiscriminator.from_pretrained("portrait4d-static-D")``, ``portrait4d-v2-D``, ``portrait4d-v1-D``).

Input (:meth:`DualDiscriminator.forward`): a dict of images in [-1, 1] and the 25-number camera label ``c``:

======== =================== =========================================================================
key      shape               what
======== =================== =========================================================================
image_sr ``[N, 3, R, R]``    the super-resolved image, ``R = img_resolution`` (512)
image    ``[N, 3, r, r]``    the raw neural rendering at the neural rendering resolution ``r`` (64..128);
                             resized to the size of ``image_sr`` (:func:`filtered_resizing`)
uv       ``[N, 3, h, w]``    the FLAME correspondence map; resized to ``R`` when ``w != R``
seg      ``[N, 1, h, w]``    the head mask; resized to ``R`` when ``w != R``
======== =================== =========================================================================

They are concatenated as ``[image_sr 3, image 3, uv 3, seg 1]`` = 10 channels at ``R`` and run through a
StyleGAN2 ``resnet`` discriminator: blocks at ``R, R/2, ..., 8`` (``fromrgb`` 1x1 on the first, each block a
3x3 ``conv0``, a 3x3 ``conv1`` with FIR ``[1, 3, 3, 1]`` 2x down-sampling and a 1x1 down-sampling ``skip``
without bias, both branches scaled by ``sqrt(0.5)``), then the 4x4 epilogue (minibatch standard deviation over
groups of ``mbstd_group_size`` = 2, 3x3 conv, two fully connected layers) projected on the conditioning
embedding ``cmap = mapping(c)`` (an embedding FC 25 -> 512, second-moment normalisation, 8 FC layers with
learning-rate multiplier 0.01): ``logit = sum(x * cmap) / sqrt(cmap_dim)``, one per sample ``[N, 1]``.
Official configuration (:class:`DiscriminatorConfig` defaults): 31.36 M parameters.

Precision: as upstream, the ``num_fp16_res`` highest-resolution blocks (``res >= 64`` at 512) run in float16
*only on CUDA* (a block on any other device, or called with ``force_fp32=True``, runs in float32), with their
convolution outputs clamped to ``+-conv_clamp`` (256; clamping is also applied in float32, as upstream); the
mapping network and the epilogue always run in float32. ``num_fp16_res=0`` keeps everything in float32. On CPU
everything is float32. (One extension: float64 inputs to a ``.double()`` network stay float64 throughout, for
gradient checks; upstream would cast them to float32.)

The losses that use this network (non-saturating logistic loss, R1 with per-input gammas, the image blur of
the GenHead schedule) are in :mod:`avatar.losses.adversarial`.

>>> D = DualDiscriminator.tiny()
>>> img = {"image_sr": torch.zeros(2, 3, 64, 64), "image": torch.zeros(2, 3, 16, 16),
...        "uv": torch.zeros(2, 3, 64, 64), "seg": torch.zeros(2, 1, 16, 16)}
>>> D(img, torch.zeros(2, 25)).shape
torch.Size([2, 1])
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar.configuration import Config
from avatar.errors import ConfigError, ModelNotFoundError
from avatar.modeling import ModelMixin
from avatar.nn.mapping import MappingNetwork, normalize_2nd_moment
from avatar.nn.mapping import fp32_or_f64 as _fp32
from avatar.nn.stylegan2 import FullyConnectedLayer
from avatar.nn.upfirdn import ACTIVATIONS, bias_act, conv2d_resample, downsample2d, setup_filter, upsample2d

__all__ = [
    "IMAGE_KEYS",
    "Conv2dLayer",
    "DiscriminatorBlock",
    "DiscriminatorConfig",
    "DiscriminatorEpilogue",
    "DualDiscriminator",
    "MappingNetwork",
    "MinibatchStdLayer",
    "filtered_resizing",
    "normalize_2nd_moment",
]

IMAGE_KEYS = ("image_sr", "image", "uv", "seg")
"""The keys of the discriminator's input dict, in the order of their channels."""

ARCHITECTURES = ("orig", "skip", "resnet")
FILTER_MODES = ("antialiased", "classic", "none")
OFFICIAL_CLASS = "DualDiscriminatorDeform"


# ----------------------------------------------------------------------------------------------------------
# Functional pieces.


def filtered_resizing(
    image: Tensor, size: int, filter_mode: str | float = "antialiased", f: Tensor | None = None
) -> Tensor:
    """Resize ``[N, C, H, W] -> [N, C, size, size]`` as the official ``dual_discriminator.filtered_resizing``.

    Modes: ``'antialiased'`` (bilinear, ``align_corners=False``, ``antialias=True``: the only mode Portrait4D
    and GenHead use), ``'none'`` (plain bilinear), ``'classic'`` (FIR 2x up-sampling with ``f``, bilinear to
    ``2 * size + 2``, FIR 2x down-sampling with the flipped filter and padding -1) or a float ``a`` in (0, 1)
    (``(1 - a) * plain + a * antialiased``). ``f`` defaults to the ``[1, 3, 3, 1]`` filter.
    """
    if filter_mode == "antialiased":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if filter_mode == "none":
        return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
    if filter_mode == "classic":
        f = setup_filter([1, 3, 3, 1], device=image.device) if f is None else f
        x = upsample2d(image, f, up=2)
        x = F.interpolate(x, size=(size * 2 + 2, size * 2 + 2), mode="bilinear", align_corners=False)
        return downsample2d(x, f, down=2, flip_filter=True, padding=-1)
    if isinstance(filter_mode, float) and not isinstance(filter_mode, bool):
        if not 0 < filter_mode < 1:
            raise ValueError(f"a float filter_mode must lie in (0, 1), got {filter_mode}")
        filtered = F.interpolate(
            image, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        aliased = F.interpolate(
            image, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
        return (1 - filter_mode) * aliased + filter_mode * filtered
    raise ValueError(f"filter_mode must be one of {FILTER_MODES} or a float in (0, 1), got {filter_mode!r}")


# ----------------------------------------------------------------------------------------------------------
# Configuration.


@dataclass(frozen=True)
class DiscriminatorConfig(Config):
    """Constructor arguments of :class:`DualDiscriminator`; the defaults are the official configuration of
    Portrait4D v1/v2 and GenHead (``train_recon_v1.py``, ``train_recon_v2.py``, ``train_genhead.py`` with
    ``configs/default.yaml``: ``cbase 32768``, ``cmax 512``, ``mbstd_group 2``, ``d_num_fp16_res 4``, conv
    clamp 256, ``disc_c_noise 0``, ``freezed 0``; ``c_dim 25``, ``img_resolution 512``, ``img_channels 3``
    from the training loops; ``d_has_superresolution``, ``d_has_uv``, ``d_has_seg`` all true in every config).

    Attributes:
        c_dim: conditioning label size (the 25-number camera); 0 = unconditional (no mapping network).
        img_resolution: side of ``image_sr`` (and of the concatenated input).
        img_channels: channels of one image (3); the input has ``2 * 3 + 3 + 1 = 10`` with every flag on.
        architecture: ``'resnet'`` (official), ``'skip'`` or ``'orig'``.
        channel_base, channel_max: block ``res`` has ``min(channel_base // res, channel_max)`` channels.
        num_fp16_res: the number of highest-resolution blocks that run in float16 on CUDA.
        conv_clamp: clamp of the convolution outputs (``None``: no clamping).
        cmap_dim: size of the conditioning embedding; ``None`` = the channels at 4x4.
        disc_c_noise: std of the noise added to ``c`` (in units of its batch std) before the mapping.
        has_superresolution, has_uv, has_seg: which images are concatenated (see the module docstring).
        mbstd_group_size: minibatch-std group size (``None``: the whole batch); the batch must be divisible
            by it.
        mbstd_num_channels: minibatch-std feature channels (0 disables the layer).
        mapping_layers, mapping_lr_multiplier: depth and learning-rate multiplier of the conditioning mapping.
        freeze_layers: the first ``freeze_layers`` layers of the blocks get ``requires_grad=False``
            (Freeze-D; upstream makes them buffers, with the same names).
    """

    c_dim: int = 25
    img_resolution: int = 512
    img_channels: int = 3
    architecture: str = "resnet"
    channel_base: int = 32768
    channel_max: int = 512
    num_fp16_res: int = 4
    conv_clamp: float | None = 256
    cmap_dim: int | None = None
    disc_c_noise: float = 0.0
    has_superresolution: bool = True
    has_uv: bool = True
    has_seg: bool = True
    mbstd_group_size: int | None = 2
    mbstd_num_channels: int = 1
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    freeze_layers: int = 0

    def __post_init__(self) -> None:
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise ConfigError(f"DiscriminatorConfig.img_resolution must be a power of two >= 8, got {res}")
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"DiscriminatorConfig.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"
            )
        if self.c_dim < 0 or self.img_channels < 1 or self.channel_base < 1 or self.channel_max < 1:
            raise ConfigError(
                "DiscriminatorConfig: c_dim must be >= 0; img_channels, channel_base and channel_max >= 1"
            )
        if self.mbstd_group_size is not None and self.mbstd_group_size < 1:
            raise ConfigError(
                f"DiscriminatorConfig.mbstd_group_size must be >= 1 or None, got {self.mbstd_group_size}"
            )
        if self.mbstd_num_channels < 0 or self.mapping_layers < 1 or self.num_fp16_res < 0:
            raise ConfigError(
                "DiscriminatorConfig: mbstd_num_channels and num_fp16_res must be >= 0, mapping_layers >= 1"
            )
        if self.mbstd_num_channels > 0 and self.channels(4) % self.mbstd_num_channels:
            raise ConfigError(
                f"DiscriminatorConfig: the {self.channels(4)} channels at 4x4 are not divisible by "
                f"mbstd_num_channels={self.mbstd_num_channels}"
            )

    @classmethod
    def tiny(cls) -> DiscriminatorConfig:
        """Same structure (10-channel input, resnet, 8 mapping layers, minibatch std over 2), 64x64 input and
        4..32 channels: 66 thousand parameters, milliseconds on CPU."""
        return cls(img_resolution=64, channel_base=256, channel_max=32)

    # ---- derived sizes ---------------------------------------------------------------------------------

    def channels(self, res: int) -> int:
        """Channels at resolution ``res``: ``min(channel_base // res, channel_max)``."""
        return min(self.channel_base // res, self.channel_max)

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """``(R, R/2, ..., 8)``: one :class:`DiscriminatorBlock` each (``b512`` ... ``b8``)."""
        log2 = int(math.log2(self.img_resolution))
        return tuple(2**i for i in range(log2, 2, -1))

    @property
    def fp16_resolution(self) -> int:
        """Blocks at this resolution and above may run in float16:
        ``max(2 ** (log2 R + 1 - num_fp16_res), 8)``."""
        log2 = int(math.log2(self.img_resolution))
        return max(2 ** (log2 + 1 - self.num_fp16_res), 8)

    @property
    def input_channels(self) -> int:
        """Channels of the concatenated input (10 for the official configuration)."""
        n = self.img_channels * (2 if self.has_superresolution else 1)
        return n + 3 * self.has_uv + 1 * self.has_seg

    @property
    def resolved_cmap_dim(self) -> int:
        """The conditioning embedding size actually used (0 without conditioning)."""
        if self.c_dim == 0:
            return 0
        return self.channels(4) if self.cmap_dim is None else self.cmap_dim

    # ---- upstream ----------------------------------------------------------------------------------------

    @classmethod
    def from_official(cls, init_kwargs: Mapping[str, Any]) -> DiscriminatorConfig:
        """The config of an official ``DualDiscriminatorDeform`` from its recorded constructor arguments (the
        ``init_kwargs`` that ``avatar convert --network D`` keeps in its JSON sidecar).

        Raises:
            ConfigError: an argument this port does not implement (named).
        """
        kw = dict(init_kwargs)
        block = dict(kw.pop("block_kwargs", None) or {})
        mapping = dict(kw.pop("mapping_kwargs", None) or {})
        epilogue = dict(kw.pop("epilogue_kwargs", None) or {})
        own = {
            "c_dim",
            "img_resolution",
            "img_channels",
            "architecture",
            "channel_base",
            "channel_max",
            "num_fp16_res",
            "conv_clamp",
            "cmap_dim",
            "disc_c_noise",
            "has_superresolution",
            "has_uv",
            "has_seg",
        }
        values: dict[str, Any] = {k: kw.pop(k) for k in list(kw) if k in own}
        block.pop("fp16_channels_last", None)  # memory layout only: no numerical effect
        if "freeze_layers" in block:
            values["freeze_layers"] = int(block.pop("freeze_layers"))
        for src, dst in (("num_layers", "mapping_layers"), ("lr_multiplier", "mapping_lr_multiplier")):
            if src in mapping:
                values[dst] = mapping.pop(src)
        for src, dst in (
            ("mbstd_group_size", "mbstd_group_size"),
            ("mbstd_num_channels", "mbstd_num_channels"),
        ):
            if src in epilogue:
                values[dst] = epilogue.pop(src)
        defaults = {
            "activation": "lrelu",
            "resample_filter": [1, 3, 3, 1],
            "embed_features": None,
            "layer_features": None,
            "normalize": True,
        }
        for where, rest in (
            ("init_kwargs", kw),
            ("block_kwargs", block),
            ("mapping_kwargs", mapping),
            ("epilogue_kwargs", epilogue),
        ):
            for name, value in rest.items():
                expected = defaults.get(name, object())
                if _plain(value) != expected:
                    raise ConfigError(
                        f"the official discriminator's {where}['{name}'] = {value!r} is not "
                        "supported by this port"
                    )
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
        return cls(**values)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------------------------------------
# Layers (official names and shapes).


class Conv2dLayer(nn.Module):
    """Equalized-learning-rate convolution with optional FIR up/down-sampling, bias, activation and clamp
    (official ``networks_stylegan2.Conv2dLayer``).

    ``act(conv(x, weight / sqrt(in * k * k)) + bias) * act_gain * gain``, clamped to ``+-conv_clamp * gain``.
    Parameters/buffers: ``weight`` ``[O, I, k, k]``, ``bias`` ``[O]`` (optional), ``resample_filter``
    ``[4, 4]``. ``[N, I, H, W] -> [N, O, H * up / down, W * up / down]`` in the dtype of ``x``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.act_gain = ACTIVATIONS[activation].def_gain
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        self.weight = nn.Parameter(weight, requires_grad=trainable)
        self.bias = nn.Parameter(torch.zeros([out_channels]), requires_grad=trainable) if bias else None

    def forward(self, x: Tensor, gain: float = 1) -> Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(
            x,
            w,
            f=self.resample_filter,
            up=self.up,
            down=self.down,
            padding=self.padding,
            flip_weight=(self.up == 1),
        )
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"activation={self.activation}, "
            f"up={self.up}, down={self.down}"
        )


class MinibatchStdLayer(nn.Module):
    """Append the minibatch standard deviation as ``num_channels`` extra feature maps (official
    ``networks_stylegan2.MinibatchStdLayer``).

    The batch ``N`` is split into ``N / G`` groups of ``G = min(group_size, N)`` samples, sample ``i``
    belonging to group ``i mod (N / G)`` (upstream's ``reshape(G, -1, ...)``); the channels into
    ``num_channels`` slices. For each group and slice: the std over the group (``sqrt(var + 1e-8)``, biased
    variance) averaged over the slice's channels and pixels, broadcast to every member and pixel.
    ``[N, C, H, W] -> [N, C + F, H, W]``.
    """

    def __init__(self, group_size: int | None, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        if n % g:
            raise ValueError(f"minibatch std: the batch of {n} is not divisible by the group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


def _block_dtype(use_fp16: bool, ref: Tensor, force_fp32: bool) -> torch.dtype:
    """float16 only for an fp16 block on CUDA (upstream forces float32 on any other device)."""
    return torch.float16 if use_fp16 and not force_fp32 and ref.device.type == "cuda" else _fp32(ref.dtype)


class DiscriminatorBlock(nn.Module):
    """A StyleGAN2 discriminator block at ``resolution`` (official ``networks_stylegan2.DiscriminatorBlock``).

    ``fromrgb`` (1x1, first block or ``'skip'``), ``conv0`` (3x3), ``conv1`` (3x3, 2x down), and for
    ``'resnet'`` ``skip`` (1x1, 2x down, no bias): ``x = skip(x) * sqrt(.5) + conv1(conv0(x)) * sqrt(.5)``.
    ``(x [N, tmp, res, res] | None, img [N, img_channels, res, res] | None) ->
    (x [N, out, res/2, res/2], img at res/2 for 'skip' else None)``; ``x`` in float16 when the block runs
    in fp16.
    """

    def __init__(
        self,
        in_channels: int,
        tmp_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        first_layer_idx: int,
        architecture: str = "resnet",
        activation: str = "lrelu",
        resample_filter: Sequence[float] = (1, 3, 3, 1),
        conv_clamp: float | None = None,
        use_fp16: bool = False,
        freeze_layers: int = 0,
    ) -> None:
        if in_channels not in (0, tmp_channels):
            raise ValueError(f"in_channels must be 0 or tmp_channels ({tmp_channels}), got {in_channels}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable() -> bool:
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(
                img_channels,
                tmp_channels,
                kernel_size=1,
                activation=activation,
                trainable=trainable(),
                conv_clamp=conv_clamp,
            )
        self.conv0 = Conv2dLayer(
            tmp_channels,
            tmp_channels,
            kernel_size=3,
            activation=activation,
            trainable=trainable(),
            conv_clamp=conv_clamp,
        )
        self.conv1 = Conv2dLayer(
            tmp_channels,
            out_channels,
            kernel_size=3,
            activation=activation,
            down=2,
            trainable=trainable(),
            resample_filter=resample_filter,
            conv_clamp=conv_clamp,
        )
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                tmp_channels,
                out_channels,
                kernel_size=1,
                bias=False,
                down=2,
                trainable=trainable(),
                resample_filter=resample_filter,
            )

    def forward(
        self, x: Tensor | None, img: Tensor | None, force_fp32: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        ref = x if x is not None else img
        assert ref is not None
        dtype = _block_dtype(self.use_fp16, ref, force_fp32)
        res = self.resolution
        if x is not None:
            if tuple(x.shape[1:]) != (self.in_channels, res, res):
                raise ValueError(
                    f"block {res}: expected x [N, {self.in_channels}, {res}, {res}], got {tuple(x.shape)}"
                )
            x = x.to(dtype)
        if self.in_channels == 0 or self.architecture == "skip":
            if img is None or tuple(img.shape[1:]) != (self.img_channels, res, res):
                got = None if img is None else tuple(img.shape)
                raise ValueError(
                    f"block {res}: expected img [N, {self.img_channels}, {res}, {res}], got {got}"
                )
            img = img.to(dtype)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        assert x is not None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            x = y + x
        else:
            x = self.conv1(self.conv0(x))
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class DiscriminatorEpilogue(nn.Module):
    """The 4x4 head (official ``networks_stylegan2.DiscriminatorEpilogue``), always float32.

    ``fromrgb`` (``'skip'`` only), ``mbstd``, ``conv`` 3x3 ``(C + F) -> C``, ``fc`` ``C * 16 -> C``, ``out``
    ``C -> cmap_dim`` (1 when unconditional); with conditioning ``sum(out * cmap) / sqrt(cmap_dim)``.
    ``(x [N, C, 4, 4], img, cmap [N, cmap_dim] | None) -> [N, 1]``.
    """

    def __init__(
        self,
        in_channels: int,
        cmap_dim: int,
        resolution: int,
        img_channels: int,
        architecture: str = "resnet",
        mbstd_group_size: int | None = 4,
        mbstd_num_channels: int = 1,
        activation: str = "lrelu",
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = (
            MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        )
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels,
            in_channels,
            kernel_size=3,
            activation=activation,
            conv_clamp=conv_clamp,
        )
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x: Tensor, img: Tensor | None, cmap: Tensor | None) -> Tensor:
        res = self.resolution
        if tuple(x.shape[1:]) != (self.in_channels, res, res):
            raise ValueError(
                f"epilogue: expected x [N, {self.in_channels}, {res}, {res}], got {tuple(x.shape)}"
            )
        dtype = _fp32(x.dtype)
        x = x.to(dtype)
        if self.architecture == "skip":
            assert img is not None
            x = x + self.fromrgb(img.to(dtype))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            if cmap is None or tuple(cmap.shape) != (x.shape[0], self.cmap_dim):
                raise ValueError(
                    f"epilogue: expected cmap [N, {self.cmap_dim}], "
                    f"got {None if cmap is None else tuple(cmap.shape)}"
                )
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


# ----------------------------------------------------------------------------------------------------------
# The network.


class DualDiscriminator(ModelMixin):
    """Portrait4D's and GenHead's discriminator (official ``DualDiscriminatorDeform``); see the module doc.

    Submodules (official names): ``b{res}`` (:class:`DiscriminatorBlock`, ``res = R ... 8``), ``mapping``
    (:class:`MappingNetwork`, when ``c_dim > 0``), ``b4`` (:class:`DiscriminatorEpilogue`); buffer
    ``resample_filter`` (the ``[1, 3, 3, 1]`` filter of the ``'classic'`` resizing mode).
    """

    config_class = DiscriminatorConfig
    default_model_id = "portrait4d-v2-D"
    config: DiscriminatorConfig

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        config = config or DiscriminatorConfig()
        self.config = config
        cmap_dim = config.resolved_cmap_dim
        common = dict(
            img_channels=config.input_channels, architecture=config.architecture, conv_clamp=config.conv_clamp
        )
        layer_idx = 0
        for res in config.block_resolutions:
            block = DiscriminatorBlock(
                config.channels(res) if res < config.img_resolution else 0,
                config.channels(res),
                config.channels(res // 2),
                resolution=res,
                first_layer_idx=layer_idx,
                use_fp16=res >= config.fp16_resolution,
                freeze_layers=config.freeze_layers,
                **common,
            )
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if config.c_dim > 0:
            self.mapping = MappingNetwork(
                z_dim=0,
                c_dim=config.c_dim,
                w_dim=cmap_dim,
                num_ws=None,
                w_avg_beta=None,
                num_layers=config.mapping_layers,
                lr_multiplier=config.mapping_lr_multiplier,
            )
        self.b4 = DiscriminatorEpilogue(
            config.channels(4),
            cmap_dim=cmap_dim,
            resolution=4,
            mbstd_group_size=config.mbstd_group_size,
            mbstd_num_channels=config.mbstd_num_channels,
            **common,
        )
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.is_random_init = True

    # ---- loading ----------------------------------------------------------------------------------------

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.is_random_init = False
        return result

    @classmethod
    def from_official(
        cls,
        source: str | Path | Mapping[str, Tensor],
        *,
        config: DiscriminatorConfig | None = None,
        **kwargs: Any,
    ) -> DualDiscriminator:
        """Build and strictly load an official discriminator (in eval mode).

        Args:
            source: a state dict with the official names (the ``D`` of a training snapshot), a
                ``.safetensors`` file, or the folder ``avatar convert SNAPSHOT.pkl --network D --out DIR``
                wrote (its JSON sidecar's ``init_kwargs`` give the config).
            config: use this config (default: from the sidecar, else the official configuration).
        """
        if kwargs:
            raise TypeError(f"{cls.__name__}.from_official got unexpected options: {', '.join(kwargs)}")
        if isinstance(source, Mapping):
            return super().from_official(source, config=config)
        from avatar.hub.weights import read_weights

        path = Path(source)
        if config is None:
            meta = _official_metadata(path)
            if meta is not None:
                cls_name = str(meta.get("class_name", ""))
                if cls_name and not cls_name.endswith(OFFICIAL_CLASS):
                    raise ModelNotFoundError(
                        f"{path} holds a {cls_name}, not the discriminator {OFFICIAL_CLASS} "
                        "(convert the snapshot with --network D)"
                    )
                config = DiscriminatorConfig.from_official(meta.get("init_kwargs") or {})
        model = cls(config or DiscriminatorConfig())
        model.load_state_dict_strict(read_weights(path), what=str(path))
        return model.eval()

    @classmethod
    def from_registry(cls, spec: Any, *, local_dir: str | Path | None = None, **kwargs: Any) -> DualDiscriminator:
        """The ``D`` of a released training snapshot (``portrait4d-v2-D``, ``portrait4d-static-D``, ...): the pickle
        is fetched once (the same file as the generator's model id) and its ``D`` converted into the cache by the
        restricted unpickler; the recorded ``init_kwargs`` give the config."""
        from avatar.hub.download import download_model

        report = download_model(spec.model_id, local_dir=local_dir, only=[spec.checkpoint])
        return cls.from_official(report.folders[spec.checkpoint], **kwargs)

    # ---- forward ----------------------------------------------------------------------------------------

    def assemble_input(
        self,
        img: Mapping[str, Tensor],
        img_name: str = "image_sr",
        img_raw_name: str = "image",
        uv_name: str = "uv",
        seg_name: str = "seg",
    ) -> Tensor:
        """The concatenated input ``[N, input_channels, R, R]`` (official ``forward`` up to the blocks):
        ``image_sr``, ``image`` resized to the size of ``image_sr``, ``uv`` and ``seg`` resized to ``R`` when
        their width differs, all with :func:`filtered_resizing` (antialiased bilinear)."""
        cfg = self.config
        res = cfg.img_resolution
        missing = [
            k
            for k, on in (
                (img_name, True),
                (img_raw_name, cfg.has_superresolution),
                (uv_name, cfg.has_uv),
                (seg_name, cfg.has_seg),
            )
            if on and k not in img
        ]
        if missing:
            raise ValueError(f"the discriminator input lacks {', '.join(missing)} (it has {', '.join(img)})")
        main = img[img_name]  # (also without super-resolution, as upstream)
        if main.ndim != 4 or tuple(main.shape[1:]) != (cfg.img_channels, res, res):
            raise ValueError(
                f"the discriminator expects {img_name} of shape [N, {cfg.img_channels}, {res}, {res}], "
                f"got {tuple(main.shape)}"
            )
        parts = [main]
        if cfg.has_superresolution:
            parts.append(filtered_resizing(img[img_raw_name], size=main.shape[-1], f=self.resample_filter))
        for name, on in ((uv_name, cfg.has_uv), (seg_name, cfg.has_seg)):
            if on:
                t = img[name]
                parts.append(
                    t if t.shape[-1] == res else filtered_resizing(t, size=res, f=self.resample_filter)
                )
        try:
            x = torch.cat(parts, dim=1)
        except RuntimeError as exc:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in img.items())
            raise ValueError(f"the discriminator inputs do not fit together ({shapes}): {exc}") from exc
        if tuple(x.shape[1:]) != (cfg.input_channels, res, res):
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in img.items())
            raise ValueError(
                f"the discriminator expects {cfg.input_channels} channels at {res}x{res} after "
                f"resizing; got {tuple(x.shape)} from {shapes}"
            )
        return x

    def forward(
        self,
        img: Mapping[str, Tensor],
        c: Tensor,
        update_emas: bool = False,
        force_fp32: bool = False,
        img_name: str = "image_sr",
        img_raw_name: str = "image",
        uv_name: str = "uv",
        seg_name: str = "seg",
    ) -> Tensor:
        """Logits ``[N, 1]`` (float32) of the images ``img`` (keys and shapes in the module docstring) under
        the camera labels ``c`` ``[N, c_dim]``. ``update_emas`` is accepted and unused, as upstream;
        ``force_fp32`` runs the fp16 blocks in float32 (they only run in float16 on CUDA anyway)."""
        del update_emas  # unused upstream too
        cfg = self.config
        x_img: Tensor | None = self.assemble_input(img, img_name, img_raw_name, uv_name, seg_name)
        x: Tensor | None = None
        for res in cfg.block_resolutions:
            x, x_img = getattr(self, f"b{res}")(x, x_img, force_fp32=force_fp32)
        cmap = None
        if cfg.c_dim > 0:
            if c.ndim != 2 or c.shape[1] != cfg.c_dim:
                raise ValueError(f"expected c of shape [N, {cfg.c_dim}], got {tuple(c.shape)}")
            if cfg.disc_c_noise > 0:  # upstream adds it in place to the caller's c; here out of place
                c = c + torch.randn_like(c) * c.std(0) * cfg.disc_c_noise
            cmap = self.mapping(None, c)
        assert x is not None
        return self.b4(x, x_img, cmap)

    def extra_repr(self) -> str:
        cfg = self.config
        return f"c_dim={cfg.c_dim}, img_resolution={cfg.img_resolution}, img_channels={cfg.input_channels}"


def _official_metadata(path: Path) -> dict[str, Any] | None:
    """The JSON sidecar ``avatar convert`` wrote beside a converted ``.safetensors`` (``None`` if absent)."""
    candidates = sorted(path.glob("*.json")) if path.is_dir() else [path.with_suffix(".json")]
    for meta_path in candidates:
        if meta_path.name in ("config.json", "manifest.json") or not meta_path.is_file():
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and "init_kwargs" in meta:
            return meta
    return None
